//! [`TrainError`]: what can go wrong with files the training code reads and writes
//! (checkpoints, CSV logs, plots) and with state loaded into a model or an optimiser.

use std::path::PathBuf;

use kiln_nn::NnError;
use kiln_optim::OptimError;

/// The error of everything in kiln-train that touches the outside world: saving and loading
/// [checkpoints](crate::checkpoint), writing CSV logs and PNG plots, and loading the state a
/// checkpoint holds into a model, an optimiser or a scheduler.
///
/// Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading, writing, syncing or renaming a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the checkpoint magic bytes `KILNCKPT`.
    #[error("{}: not a kiln checkpoint: expected the magic bytes \"KILNCKPT\" at offset 0, found {found:?}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes of the file (at most 8).
        found: Vec<u8>,
    },
    /// The checkpoint was written in a format version this kiln does not read.
    #[error("{}: checkpoint format version {found} is not supported (this kiln reads version {supported}{})", path.display(), if *found > *supported { "; it was written by a newer kiln" } else { "" })]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file's header.
        found: u32,
        /// The version this kiln reads.
        supported: u32,
    },
    /// The file ends before the length its header announces.
    #[error("{}: truncated checkpoint: {what} needs {expected} bytes, the file has {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The part that is cut short (`header`, `payload`).
        what: &'static str,
        /// The length the file should have (bytes).
        expected: u64,
        /// Its length (bytes).
        found: u64,
    },
    /// The file is long enough but its content is damaged: checksum mismatch, trailing bytes, or
    /// a payload that does not decode.
    #[error("{}: corrupt checkpoint at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage was found (bytes from the start of the file).
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },
    /// A value could not be encoded for writing.
    #[error("{}: cannot encode {what}: {reason}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// Drawing a plot failed.
    #[error("{}: cannot draw the plot: {reason}", path.display())]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// The drawing backend's message.
        reason: String,
    },
    /// An image given to the [`TensorBoardLogger`](crate::callbacks::TensorBoardLogger) is not
    /// a PNG it can read.
    #[error("image {tag:?}: {reason}")]
    Image {
        /// The image's tag.
        tag: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A checkpoint lacks a part it was asked to restore (an optimiser state from a
    /// weights-only checkpoint, say).
    #[error("the checkpoint has no {what}")]
    Missing {
        /// The missing part (`optimizer state`, `scheduler state`).
        what: &'static str,
    },
    /// The training loss became NaN or infinite (Keras' `TerminateOnNaN`, on by default; see
    /// [`Trainer::terminate_on_nan`](crate::Trainer::terminate_on_nan)). Training stopped at
    /// that batch, before its backward pass and optimiser step.
    #[error("training diverged: the loss is {loss} at epoch {epoch}, batch {batch} (1-based); training stopped before this batch's update. Lower the learning rate, clip gradients, or check the data for NaN/infinite values")]
    NonFiniteLoss {
        /// The epoch (1-based, as the progress line prints it).
        epoch: usize,
        /// The batch within that epoch (1-based).
        batch: usize,
        /// The loss value (NaN or ±infinity).
        loss: f64,
    },
    /// A data source yielded no sample: a loss over it would be meaningless (0 / 0).
    #[error("the {what} yielded no samples{}", if *epoch > 0 { format!(" in epoch {epoch}") } else { String::new() })]
    EmptyData {
        /// Which source (`training data`, `validation data`, `evaluation data`).
        what: &'static str,
        /// The epoch (1-based), or 0 outside `fit`.
        epoch: usize,
    },
    /// The model state does not fit the model (missing, unexpected or mis-shaped keys).
    #[error("loading the model state: {0}")]
    Model(#[from] NnError),
    /// The optimiser or scheduler state does not fit the optimiser or scheduler.
    #[error("loading the optimizer or scheduler state: {0}")]
    Optimizer(#[from] OptimError),
}

impl TrainError {
    /// An [`Io`](TrainError::Io) error for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}
