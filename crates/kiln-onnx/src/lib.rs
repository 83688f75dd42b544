//! # kiln-onnx
//!
//! ONNX export and import for kiln models.
//!
//! - [`export`] writes a model built from kiln layers as an ONNX file that ONNX Runtime (and
//!   `onnx.checker`) accept, with a dynamic batch axis; parameters keep their `state_dict` keys.
//! - [`export_traced`] writes a model whose `forward` is arbitrary Rust over kiln ops, by
//!   recording the ops of one forward pass ([`kiln_autograd::trace`]), as `torch.onnx.export`
//!   traces; an op without a conversion is [`OnnxError::Traced`] naming it.
//! - [`import`] reads an ONNX file (from kiln or from `torch.onnx.export`) as an
//!   [`OnnxModel`]: a kiln [`Module`](kiln_nn::Module) that runs the graph with kiln's autograd
//!   ops, so it is trainable; initializers become its parameters under their ONNX names.
//!
//! The ONNX schema is a hand-written subset of `onnx.proto` in [`proto`] (prost derives; no
//! `protoc` at build time).

mod error;
pub mod export;
mod import;
mod ops;
pub mod proto;

pub use error::OnnxError;
pub use export::{export, export_model, export_traced, trace_model, ExportOptions};
pub use import::{import, import_bytes, OnnxModel, IMPORT_OPSETS, SUPPORTED_OPS};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
