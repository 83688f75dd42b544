//! The error type of kiln-nn.

use std::path::PathBuf;

/// What can go wrong when feeding a model data from outside (state dicts, configs, model
/// files). Errors about a file name the file and, where there is one, the tensor key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NnError {
    /// A state dict that does not fit the model; nothing was loaded.
    #[error(
        "load_state_dict: missing keys {missing:?}, unexpected keys {unexpected:?}, shape mismatches {mismatched:?}"
    )]
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

    // ----------------------------------------------------------------- loss targets
    /// Class targets whose shape does not fit the input: `[N, *]` for an input `[N, C, *]`
    /// (a batch-size mismatch, say). Names the loss that was called (`cross_entropy`,
    /// `nll_loss`).
    #[error("{loss}: input {input:?} needs targets of shape {expected:?}, got {found:?}")]
    TargetShape {
        /// The loss that was called.
        loss: String,
        /// The input's shape `[N, C, *]`.
        input: Vec<usize>,
        /// The target shape the input needs, `[N, *]`.
        expected: Vec<usize>,
        /// The targets' shape.
        found: Vec<usize>,
    },
    /// A class target outside `[0, C)` that is not the loss's `ignore_index`.
    #[error("{loss}: target {target} at {at:?} is out of range for {classes} classes (ignore_index {ignore_index})")]
    TargetOutOfRange {
        /// The loss that was called.
        loss: String,
        /// The offending target value.
        target: i64,
        /// Its position in the targets (`[n]`, or `[n, d1, ...]` for `[N, d1, ...]` targets).
        at: Vec<usize>,
        /// The number of classes `C` (the input's dim 1).
        classes: usize,
        /// The loss's `ignore_index`.
        ignore_index: i64,
    },

    // ----------------------------------------------------------------- model files
    /// The operating system refused a read or a write of a model file.
    #[error("{}: {action}: {message}", path.display())]
    Io {
        /// The file (for a failed save, the target, not the temporary file).
        path: PathBuf,
        /// What was being done (`open`, `write temporary file .m.safetensors.1234.0.tmp`, `rename`).
        action: String,
        /// The kind of the underlying I/O error (`NotFound`, `PermissionDenied`, ...).
        kind: std::io::ErrorKind,
        /// The underlying I/O error's message.
        message: String,
    },
    /// The file is shorter than the 8-byte header length that opens every safetensors file.
    #[error("{}: {len} bytes, too short for the 8-byte header length of a safetensors file (truncated file?)", path.display())]
    FileTooShort {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// The header length (the little-endian `u64` at offset 0) runs past the end of the file.
    #[error("{}: header length {header_len} (u64 at offset 0) runs past the end of the file of {file_len} bytes (truncated file, or not safetensors?)", path.display())]
    HeaderLength {
        /// The file.
        path: PathBuf,
        /// The header length the file claims.
        header_len: u64,
        /// The file's length in bytes.
        file_len: u64,
    },
    /// The header (bytes `8..8 + header_len`) is not a JSON object.
    #[error("{}: the header is not a JSON object: {message}", path.display())]
    HeaderNotJson {
        /// The file.
        path: PathBuf,
        /// The JSON parser's message, with the line and column inside the header.
        message: String,
    },
    /// One entry of the header is malformed: a missing or mistyped field, an unknown dtype,
    /// `data_offsets` with begin > end, a duplicate key, a non-string metadata value.
    #[error("{}: header entry `{key}`: {message}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// The tensor name (or `__metadata__`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor's `data_offsets` reach past the end of the data section.
    #[error("{}: tensor `{key}`: data_offsets [{begin}, {end}) lie outside the data section of {data_len} bytes (truncated file?)", path.display())]
    OffsetsOutOfRange {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// Start of its bytes, relative to the data section.
        begin: u64,
        /// End of its bytes (exclusive).
        end: u64,
        /// The length of the data section.
        data_len: u64,
    },
    /// Two tensors claim some of the same bytes.
    #[error("{}: tensors `{key}` [{begin}, {end}) and `{other}` [{other_begin}, {other_end}) overlap", path.display())]
    OffsetsOverlap {
        /// The file.
        path: PathBuf,
        /// One tensor.
        key: String,
        /// Start of its bytes.
        begin: u64,
        /// End of its bytes (exclusive).
        end: u64,
        /// The tensor it overlaps.
        other: String,
        /// Start of the other's bytes.
        other_begin: u64,
        /// End of the other's bytes (exclusive).
        other_end: u64,
    },
    /// Bytes of the data section that belong to no tensor (the format forbids holes, so
    /// that a file cannot hide a second payload).
    #[error("{}: bytes [{begin}, {end}) of the data section belong to no tensor (the safetensors format allows no holes)", path.display())]
    DataGap {
        /// The file.
        path: PathBuf,
        /// Start of the unclaimed bytes, relative to the data section.
        begin: u64,
        /// End of the unclaimed bytes (exclusive).
        end: u64,
    },
    /// A tensor's byte range does not hold `shape`'s element count in its dtype.
    #[error("{}: tensor `{key}`: {dtype} {shape:?} needs {} bytes but its data_offsets span {found}", path.display(), expected.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()))]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// Its dtype as written in the header (`F32`).
        dtype: String,
        /// Its shape as written in the header.
        shape: Vec<u64>,
        /// The bytes the shape needs (`None` when that overflows 64 bits).
        expected: Option<u64>,
        /// The bytes its `data_offsets` span.
        found: u64,
    },
    /// A tensor whose dtype cannot become what is asked for (`I64` where a float is needed).
    #[error("{}: tensor `{key}` has dtype {found}, expected {expected}", path.display())]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// What would have been accepted.
        expected: String,
        /// The dtype in the file.
        found: String,
    },
    /// A tensor whose shape differs from the model's parameter or buffer of the same key.
    #[error("{}: tensor `{key}` has shape {file:?} in the file but {model:?} in the model", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The key (the model's, after any key mapping).
        key: String,
        /// The shape the model has.
        model: Vec<usize>,
        /// The shape in the file.
        file: Vec<usize>,
    },
    /// A strict load whose file and model keys differ; nothing was loaded.
    #[error("{}: keys do not match the model: missing {missing:?}, unexpected {unexpected:?}", path.display())]
    KeyMismatch {
        /// The file.
        path: PathBuf,
        /// Model keys the file lacks.
        missing: Vec<String>,
        /// File keys (as named in the file) the model lacks.
        unexpected: Vec<String>,
    },
    /// A tensor asked for by name that the file does not have.
    #[error("{}: no tensor `{key}`", path.display())]
    NoSuchTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        key: String,
    },
    /// A key map sends two source keys to the same target key.
    #[error("key map: `{first}` and `{second}` both map to `{target}`")]
    KeyCollision {
        /// The key both map to.
        target: String,
        /// One source key.
        first: String,
        /// The other source key.
        second: String,
    },
    /// A PyTorch checkpoint whose pickle names a global outside the allow-list
    /// ([`ALLOWED_GLOBALS`](crate::serialize::ALLOWED_GLOBALS)): refused when it is named,
    /// before anything could use it, and the whole file with it.
    #[error("{}: {record}: global {global} is not allowed (kiln reads checkpoints as torch.load(weights_only=True) does and never runs pickled code; byte {offset})", path.display())]
    ForbiddenGlobal {
        /// The file.
        path: PathBuf,
        /// The pickle (`archive/data.pkl`).
        record: String,
        /// The refused global (`os.system`, `builtins.eval`).
        global: String,
        /// The byte offset of the opcode in the pickle.
        offset: u64,
    },
    /// A PyTorch checkpoint that is malformed or holds what the reader does not rebuild.
    #[error("{}: {}{message}", path.display(), if record.is_empty() { String::new() } else { format!("{record}: ") })]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// The zip record or legacy section (`archive/data.pkl`, `archive/data/3`), or empty.
        record: String,
        /// What is wrong, with the byte offset where there is one.
        message: String,
    },
}
