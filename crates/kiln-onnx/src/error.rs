//! [`OnnxError`]: everything export and import can report.

use std::path::PathBuf;

/// An error of kiln-onnx. Import errors name the file, the node, its op type and the opset.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf.
    #[error("{path}: not a valid ONNX model: {reason}")]
    Decode {
        /// The file (or `<memory>`).
        path: String,
        /// What the protobuf decoder reported.
        reason: String,
    },
    /// The model's structure is invalid or inconsistent (a missing graph, a tensor whose data
    /// does not match its dims, an input nobody produces, ...).
    #[error("{path}: {what}")]
    Invalid {
        /// The file (or `<memory>`).
        path: String,
        /// What is wrong, naming the node or tensor.
        what: String,
    },
    /// A node's op type is not supported by the importer.
    #[error("{path}: node {node:?}: op {op_type:?} (opset {opset}) is not supported: {reason}")]
    UnsupportedOp {
        /// The file (or `<memory>`).
        path: String,
        /// The node's name (or its first output when unnamed).
        node: String,
        /// The op type, `domain:op` outside the default `ai.onnx` domain.
        op_type: String,
        /// The opset version the model imports for that domain.
        opset: i64,
        /// Why (unknown op, unsupported attribute value, ...).
        reason: String,
    },
    /// The model imports an opset kiln does not handle.
    #[error("{path}: opset {opset} of domain {domain:?} is not supported (supported: {supported})")]
    UnsupportedOpset {
        /// The file (or `<memory>`).
        path: String,
        /// The domain.
        domain: String,
        /// The version asked for.
        opset: i64,
        /// The supported range.
        supported: String,
    },
    /// A layer cannot be exported (an unknown layer type, or an option ONNX cannot express).
    #[error("export: layer {path:?} ({layer}): {reason}")]
    UnsupportedLayer {
        /// The layer's key prefix in the model (`"features.3"`; `""` for the root).
        path: String,
        /// The layer as displayed.
        layer: String,
        /// Why it cannot be exported.
        reason: String,
    },
    /// A traced forward pass cannot be exported: an op without an ONNX conversion (named), an
    /// attribute ONNX cannot express, a panic of the forward, or a shape that a dynamic batch
    /// cannot follow.
    #[error("export_traced: op {op:?}: {reason}")]
    Traced {
        /// The op's name as kiln records it (`Var::op_name`: `"dropout"`, `"lstm_sequence"`).
        op: String,
        /// Why it cannot be exported.
        reason: String,
    },
    /// Writing the exported file failed (the atomic save of kiln-nn).
    #[error(transparent)]
    Save(Box<kiln_nn::NnError>),
    /// The export options are inconsistent.
    #[error("export options: {0}")]
    Options(String),
    /// The inputs given to an imported model do not match its graph.
    #[error("run: {0}")]
    Run(String),
}

impl From<kiln_nn::NnError> for OnnxError {
    fn from(e: kiln_nn::NnError) -> Self {
        OnnxError::Save(Box::new(e))
    }
}
