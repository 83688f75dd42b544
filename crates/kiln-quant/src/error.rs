//! The error type of kiln-quant.

use std::path::PathBuf;

/// What can go wrong when quantising a model or reading and writing a quantised model file.
/// Errors about a file name the file and the field or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A layer the converter cannot quantise (`Conv2d` with `groups > 1`), or a float layer
    /// that a model file cannot describe (when saving).
    #[error("layer {index} ({layer}): {reason}")]
    Unsupported {
        /// Position of the layer in the `Sequential`.
        index: usize,
        /// The layer as it displays itself.
        layer: String,
        /// Why it is refused.
        reason: String,
    },
    /// Calibration needs at least one batch for static quantisation.
    #[error("quantize_sequential: static quantisation needs at least one calibration batch")]
    NoCalibrationData,
    /// A model file could not be read or written.
    #[error("{}: {action}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`read`, `write`).
        action: String,
        /// The operating system's message.
        message: String,
    },
    /// The file is not a well-formed safetensors file (truncated, bad header, overlapping
    /// tensors...).
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the safetensors reader found wrong.
        message: String,
    },
    /// A field of the file (a tensor or an entry of the JSON layer list) is missing or has the
    /// wrong type, dtype, shape or value.
    #[error("{}: field `{field}`: expected {expected}, found {found}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The tensor name or JSON path (`layers[3].kind`, `0.weight`).
        field: String,
        /// What was expected.
        expected: String,
        /// What is there.
        found: String,
    },
    /// A float layer of the file that kiln-nn cannot rebuild.
    #[error("{}: layer {index}: {message}", path.display())]
    Layer {
        /// The file.
        path: PathBuf,
        /// Position of the layer.
        index: usize,
        /// kiln-nn's message.
        message: String,
    },
}
