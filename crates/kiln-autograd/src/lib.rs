//! # kiln-autograd
//!
//! Define-by-run reverse-mode automatic differentiation on [`kiln_tensor::Tensor`]:
//! [`Var`] records the operations applied to it; [`Var::backward`] accumulates gradients into
//! the leaves, as `loss.backward()` does in PyTorch; [`grad`] gives gradients of gradients
//! (every backward is written with `Var` ops, so it is itself differentiable); [`no_grad`]
//! turns recording off; [`Var::register_post_accumulate_grad_hook`] and [`queue_callback`]
//! hook into backward (data-parallel gradient synchronisation); [`autocast`] runs the matrix
//! products of a region (and of their backward) in bfloat16 with `f32` sums; [`gradcheck`] and
//! [`gradgradcheck`] check any function's gradients
//! against finite differences.
//!
//! ```
//! use kiln_autograd::Var;
//! use kiln_tensor::Tensor;
//! let w = Var::param(Tensor::from_vec(vec![0.5f32, -1.0], &[2]));
//! let x = Var::constant(Tensor::from_vec(vec![2.0f32, 3.0], &[2]));
//! let loss = w.mul(&x).sum_all().powf(2.0); // (w.x)^2 = 4
//! loss.backward();
//! assert_eq!(w.grad().unwrap().to_vec(), vec![-8.0, -12.0]); // 2 (w.x) x
//! ```

mod checkpoint;
mod engine;
mod gradcheck;
mod hooks;
mod mode;
pub mod ops;
#[cfg(test)]
pub(crate) mod testing;
mod trace;
mod var;

pub use checkpoint::{checkpoint, checkpoint_sequential, SequentialLayer};
pub use engine::grad;
pub use gradcheck::{gradcheck, gradgradcheck, GradcheckError, GradcheckReport};
pub use hooks::{queue_callback, HookHandle};
/// Mixed precision (`torch.autocast`): kiln-tensor's scope, re-exported beside [`no_grad`].
pub use kiln_tensor::autocast::{autocast, is_autocast_enabled, set_autocast, AutocastGuard};
pub use mode::{
    anomaly_enabled, detect_anomaly, is_grad_enabled, no_grad, set_detect_anomaly, set_grad_enabled, NoGradGuard,
};
pub use ops::{binary_op, unary_op, OpFn};
pub use trace::{trace, Trace, TraceAttr, TraceOp};
pub use var::{Backward, Grads, Inputs, Var, WeakVar};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
