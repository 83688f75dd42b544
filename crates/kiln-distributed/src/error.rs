//! [`DistributedError`]: what can go wrong starting MPI or agreeing on a model across ranks.

use thiserror::Error;

/// The error of everything in this crate that can fail because of the environment (MPI, the
/// other ranks, environment variables) rather than a programming error.
#[derive(Debug, Error)]
pub enum DistributedError {
    /// MPI could not be initialised (or was initialised before, by another library).
    #[error("MPI initialisation failed: {0}")]
    Init(String),
    /// [`init`](crate::init) was called a second time in this process.
    #[error("kiln-distributed is already initialised in this process (call init() once and share the ProcessGroup)")]
    AlreadyInitialized,
    /// An environment variable this crate reads has a value it cannot use.
    #[error("environment variable {name}: expected {expected}, found {found:?}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What a valid value looks like.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// The ranks' models do not have the same parameters and buffers.
    #[error("DistributedDataParallel: rank 0 has {rank0} parameters and buffers, rank {rank} has {other}; every rank must build the same model")]
    TensorCount {
        /// How many tensors rank 0's model has.
        rank0: usize,
        /// The rank that differs.
        rank: usize,
        /// How many tensors that rank's model has.
        other: usize,
    },
    /// A parameter or buffer has a different shape on another rank.
    #[error("DistributedDataParallel: `{name}` has shape {rank0_shape:?} on rank 0 but {other_shape:?} on rank {rank}; every rank must build the same model")]
    ShapeMismatch {
        /// The parameter's or buffer's `state_dict` key (as this rank names it).
        name: String,
        /// Its shape on rank 0.
        rank0_shape: Vec<usize>,
        /// The rank that differs.
        rank: usize,
        /// Its shape on that rank.
        other_shape: Vec<usize>,
    },
}
