//! The error type of kiln-pickle.

/// What can be wrong with a pickle or a zip archive. Offsets count bytes from the start of the
/// slice that was given to the reader; the caller, who knows the file, adds its path (and the
/// slice's position in the file).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickleError {
    /// The data ends before what its format promises.
    #[error("truncated: expected {expected} bytes of data, found {found}")]
    Truncated {
        /// Bytes the format requires (saturating at `u64::MAX` for forged lengths).
        expected: u64,
        /// Bytes actually there.
        found: u64,
    },
    /// A value the format does not allow at `offset`.
    #[error("at byte {offset}: expected {expected}, found {found}")]
    Format {
        /// Byte offset of the bad value.
        offset: u64,
        /// What the format allows there.
        expected: String,
        /// What the data holds.
        found: String,
    },
    /// The data does not start with the format's magic number (a zip local header).
    #[error("not a zip archive: expected magic number {expected:#010x}, found {found:#010x}")]
    BadMagic {
        /// The magic number of the format.
        expected: u32,
        /// The number read.
        found: u32,
    },
    /// A `GLOBAL` (or `STACK_GLOBAL`) naming something outside the caller's allow-list:
    /// refused when it is met, before any later opcode could use it.
    #[error("at byte {offset}: global {module}.{name} is not allowed")]
    ForbiddenGlobal {
        /// Byte offset of the opcode.
        offset: u64,
        /// The module (`os`, `builtins`).
        module: String,
        /// The name inside it (`system`, `eval`).
        name: String,
    },
}

impl PickleError {
    /// A [`PickleError::Format`] at `offset`.
    pub fn format(offset: u64, expected: impl Into<String>, found: impl Into<String>) -> Self {
        PickleError::Format { offset, expected: expected.into(), found: found.into() }
    }
}

/// `Result` with [`PickleError`].
pub type Result<T, E = PickleError> = std::result::Result<T, E>;
