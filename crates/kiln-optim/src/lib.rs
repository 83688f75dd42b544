//! # kiln-optim
//!
//! Optimisers, learning-rate schedulers and gradient clipping for kiln, with PyTorch's update
//! rules, defaults and names: [`SGD`], [`Adam`], [`AdamW`], [`RMSprop`], [`Adagrad`]; the
//! schedulers of [`lr_scheduler`]; [`clip_grad_norm_`] and [`clip_grad_value_`].
//!
//! An optimiser takes its parameters as `Vec<Var<E>>` (leaf [`Var`]s made with
//! [`Var::param`]), in one or more [`ParamGroup`]s with their own hyper-parameters. `step`
//! updates every parameter that requires grad and has a gradient, in place; its state
//! (momentum buffers, moment estimates) is created on the first step and then updated in place,
//! so no step after the first allocates.
//!
//! ```
//! use kiln_autograd::Var;
//! use kiln_optim::{Optimizer, SGDConfig, SGD};
//! use kiln_tensor::Tensor;
//!
//! // minimise (w - 3)^2
//! let w = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
//! let mut opt = SGD::new(vec![w.clone()], SGDConfig { lr: 0.1, momentum: 0.5, ..Default::default() });
//! for _ in 0..100 {
//!     opt.zero_grad();
//!     let loss = w.sub_scalar(3.0).powf(2.0).sum_all();
//!     loss.backward();
//!     opt.step();
//! }
//! assert!((w.item() - 3.0).abs() < 1e-6);
//! ```
//!
//! Every optimiser here is a [`RuleOptimizer`] driven by a per-parameter [`UpdateRule`]; a new
//! optimiser is one file holding its config, its state and its rule. A rule updates a
//! parameter and its state in one fused pass over their elements (split across kiln's thread
//! pool for long tensors), so it makes no temporary tensor.
//!
//! # Agreement with PyTorch
//!
//! The update rules are PyTorch's implementation (`_single_tensor_*`, what runs on CPU), with
//! its operation order, its `lerp`, and Python's f64 arithmetic for the scalar factors. PyTorch's
//! vectorised CPU kernels fuse some multiply-adds (`add_(x, alpha=a)` is one FMA); kiln rounds
//! each operation, so f64 trajectories agree to about 1e-14 relative rather than bit for bit.
//! The tests check ten steps of every optimiser in `shared/golden/optim/` against PyTorch, in f64
//! and in f32; the schedulers reproduce PyTorch's learning-rate sequences exactly.
//!
//! # Performance
//!
//! Every optimiser's state is created on a parameter's first step and updated in place after
//! that, in one vectorised pass per parameter: no step after the first allocates a tensor, and
//! below kiln's parallel threshold (`kiln_tensor::parallel::elementwise_min()` elements) a step
//! allocates nothing at all (a test counts the allocations). This holds while nothing else
//! holds a reference to a parameter's value tensor (copy on write would then copy it). On one
//! core of the development machine a step costs about 0.1 ns per f32 element for SGD, 0.3 for
//! SGD with Nesterov momentum, 0.85 for Adam and AdamW, 0.6 for RMSprop and Adagrad.

mod adagrad;
mod adam;
mod adamw;
mod clip;
mod elementwise;
mod error;
pub mod lr_scheduler;
mod optimizer;
mod rmsprop;
mod sgd;
pub mod state_file;

pub use adagrad::{Adagrad, AdagradConfig, AdagradRule, AdagradState};
pub use adam::{Adam, AdamConfig, AdamRule, AdamState};
pub use adamw::{AdamW, AdamWConfig, AdamWRule};
pub use clip::{clip_grad_norm_, clip_grad_value_, try_clip_grad_norm_};
pub use error::OptimError;
pub use optimizer::{
    GroupConfig, GroupState, LrGroups, MissingKey, Optimizer, OptimizerStateDict, ParamGroup, ParamState,
    RuleOptimizer, UpdateRule,
};
pub use rmsprop::{RMSprop, RMSpropConfig, RMSpropRule, RMSpropState};
pub use sgd::{SGDConfig, SGDRule, SGDState, SGD};

#[doc(no_inline)]
pub use kiln_autograd::Var;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
