//! The error type of kiln-models.

use kiln_nn::NnError;

/// What building a model can go wrong with.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// A configuration field out of range: `ResNetConfig: width must be > 0, got 0`.
    #[error("{config}: {field} {message}")]
    Config {
        /// The configuration type.
        config: &'static str,
        /// The field.
        field: &'static str,
        /// What was wrong, with the value found.
        message: String,
    },
    /// A layer refused its configuration.
    #[error(transparent)]
    Nn(#[from] NnError),
}
