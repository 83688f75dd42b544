//! # kiln-nn
//!
//! Modules, layers, PyTorch's initialisation, losses and the functional API of kiln.
//!
//! ```
//! use kiln_nn::{Forward, Linear, Module, Tensor, Var};
//! kiln_nn::init::manual_seed(0);
//! let fc: Linear = Linear::new(4, 2);
//! let x = Var::constant(Tensor::ones(&[8, 4]));
//! let loss = fc.forward(&x).relu().sum_all();
//! loss.backward();
//! assert!(fc.weight.grad().is_some());
//! ```

// Lets `#[derive(Module)]`'s `::kiln_nn::...` paths resolve inside this crate too.
extern crate self as kiln_nn;

pub mod distillation;
mod error;
pub mod functional;
pub mod hooks;
#[cfg(test)]
pub(crate) use kiln_golden as golden;
pub mod init;
pub mod layers;
pub mod lora;
mod loss;
mod module;
pub mod registry;
pub mod serialize;
mod summary;

pub use distillation::{distillation_loss, DistillationLoss};
pub use error::NnError;
pub use functional::{ClassTargets, CrossEntropyOptions, Reduction};
pub use hooks::{register_forward_hook, register_module_forward_hook, ForwardCall, ForwardHookHandle};
pub use layers::*;
pub use loss::{
    BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss, NLLLoss, SmoothL1Loss,
};
pub use module::{visit_buffer, visit_param, Forward, Layer, LoadReport, Module, StateDict, TensorKind};
pub use serialize::{
    load, load_mapped, load_state_dict_file, save, save_state_dict, KeyMap, KeyMapReport, Metadata, PtFile,
    SafetensorsFile,
};
pub use summary::{summary, LayerSummary, ModelSummary};

// What kiln-nn's API takes and returns, so that a crate depending on kiln-nn (and kiln-optim)
// alone writes a training loop: tensors, indices and labels for class targets, `Var`, the
// no-grad scope and the element trait.
#[doc(no_inline)]
pub use kiln_autograd::{grad, no_grad, Var};
#[doc(no_inline)]
pub use kiln_tensor::{DType, Float, Indices, Labels, Rng, Tensor};

/// `#[derive(Module)]`: writes [`Module`]'s `visit` and train/eval from a struct's fields
/// (the derive and the trait share the name, as serde's `Serialize` does).
pub use kiln_derive::Module;

/// What `#[derive(Module)]`'s generated code names, so that a crate depending on kiln-nn
/// alone can use it. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use kiln_autograd::Var;
    pub use kiln_tensor::Float;
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
