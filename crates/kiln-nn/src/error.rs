//! The error type of kiln-nn.

/// What can go wrong when feeding a model data from outside (state dicts, configs).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NnError {
    /// A state dict that does not fit the model; nothing was loaded.
    #[error("load_state_dict: missing keys {missing:?}, unexpected keys {unexpected:?}, shape mismatches {mismatched:?}")]
    StateDict {
        /// Model keys the state dict lacks.
        missing: Vec<String>,
        /// State-dict keys the model lacks.
        unexpected: Vec<String>,
        /// `key: model [..], state dict [..]` for each shape mismatch.
        mismatched: Vec<String>,
    },
    /// A layer configuration that is out of range (`Linear: out_features must be > 0, got 0`).
    #[error("{0}")]
    Config(String),
}
