//! [`ExplainError`]: what can go wrong writing an explanation to disk.

use std::path::PathBuf;

/// The errors of kiln-explain: only writing files can fail (shape mistakes are programming
/// errors and panic).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// A file or folder could not be created, written, synced or renamed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done (`"creating the temporary file"`, ...).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The image could not be encoded.
    #[error("{}: encoding the PNG: {message}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
}
