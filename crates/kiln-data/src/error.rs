//! The one error type of kiln-data.
//!
//! Everything read from outside the program (data files, archives, CSV tables, downloads) returns
//! a [`DataError`] that names the file (or URL), the place in it (byte offset, line, column, record)
//! and what was expected against what was found.

use std::path::PathBuf;

/// Errors from reading, parsing and downloading data sets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An operating-system error while opening, reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A required file or folder is not there.
    #[error("{}: not found ({what})", path.display())]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
        /// What it should have held, e.g. "MNIST training images".
        what: String,
    },

    /// A folder stands where a file should be.
    #[error("{}: is a folder, expected a file ({what})", path.display())]
    NotAFile {
        /// The folder.
        path: PathBuf,
        /// What the file should have held, e.g. "MNIST training images".
        what: String,
    },

    /// A compressed (gzip) stream is damaged or cut short: a corrupted byte, a checksum that
    /// does not match, a file truncated in the middle of the stream.
    #[error("{}: corrupt gzip stream after {offset} bytes of decompressed data: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Decompressed bytes read before the damage was detected.
        offset: u64,
        /// What the decompressor found.
        reason: String,
    },

    /// A file's magic number is not the one its format has.
    #[error("{}: bad magic number at offset 0: expected {expected:#010x}, found {found:#010x}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number of the format.
        expected: u32,
        /// The number read from the file.
        found: u32,
    },

    /// A file ends before the data its header or format promises.
    #[error("{}: truncated: expected {expected} bytes of data, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header or format requires (after decompression for `.gz`).
        expected: u64,
        /// Bytes actually there.
        found: u64,
    },

    /// A structural value in a file (a header field, a record, a label) is not what the format allows.
    #[error("{}: at byte offset {offset}: expected {expected}, found {found}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad value (after decompression for `.gz`).
        offset: u64,
        /// What the format allows there.
        expected: String,
        /// What the file holds.
        found: String,
    },

    /// Two files that must agree on a count (images and labels) do not.
    #[error("{} has {left} {what}, but {} has {right}", left_path.display(), right_path.display())]
    CountMismatch {
        /// What is counted ("items").
        what: String,
        /// First file.
        left_path: PathBuf,
        /// Count in the first file.
        left: u64,
        /// Second file.
        right_path: PathBuf,
        /// Count in the second file.
        right: u64,
    },

    /// A text file (CSV, TSV, vocabulary) has a value that does not parse.
    #[error("{}: line {line}, column {column}: expected {expected}, found {found:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// 1-based column (field) number.
        column: u64,
        /// What was expected there.
        expected: String,
        /// The text found.
        found: String,
    },

    /// An archive (`.npz`) has no member of the name asked for.
    #[error("{}: no member {member:?} in the archive (members: {members})", path.display())]
    MissingMember {
        /// The archive.
        path: PathBuf,
        /// The member that was looked for, e.g. `"x_test.npy"`.
        member: String,
        /// The members that are there, comma-separated.
        members: String,
    },

    /// A JSON file does not parse or has the wrong shape.
    #[error("{}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column) or what was wrong with the shape.
        message: String,
    },

    /// An image file could not be decoded.
    #[error("{}: cannot decode image: {message}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },

    /// An argument given by the caller (a column name, a split fraction) is not valid for this data.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An environment variable holds a value it must not (`KILN_EPOCHS=1O`, a `KILN_DATA_DIR`
    /// without the data set).
    #[error("environment variable {key}={value:?}: expected {expected}")]
    Env {
        /// The variable.
        key: String,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: String,
    },

    /// A network or HTTP failure while downloading.
    #[error("downloading {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong (status line, connection error).
        message: String,
    },

    /// A downloaded or existing file does not have the expected checksum.
    #[error("{}: checksum mismatch: expected {algorithm} {expected}, found {found}", path.display())]
    Checksum {
        /// The file (or the URL it came from, for a download that was removed).
        path: PathBuf,
        /// "SHA-256" or "MD5".
        algorithm: &'static str,
        /// The hex digest expected.
        expected: String,
        /// The hex digest computed.
        found: String,
    },

    /// A data-set name that [`crate::download::download_dataset`] does not know.
    #[error("unknown data set {name:?}; known: {known}")]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The names accepted, comma-separated.
        known: String,
    },
}

/// `Result` with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    /// A [`DataError::Format`] for `path` at `offset`.
    pub fn format(
        path: impl Into<PathBuf>,
        offset: u64,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        DataError::Format { path: path.into(), offset, expected: expected.into(), found: found.into() }
    }
}
