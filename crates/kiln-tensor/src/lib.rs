//! # kiln-tensor
//!
//! n-dimensional arrays of `f32`/`f64` for the kiln deep-learning framework: shared storage with
//! copy-on-write, strided views (permute, slice, expand, flip) that never copy, NumPy/PyTorch
//! broadcasting, reductions, an explicit seedable [`Rng`], and the CPU kernels (GEMM,
//! convolution, pooling) every layer above is built on; bfloat16 storage ([`Bf16Tensor`]) and
//! mixed precision ([`autocast`]) on a bfloat16 GEMM.
//!
//! ```
//! use kiln_tensor::{Rng, Tensor};
//! let mut rng = Rng::new(0);
//! let x: Tensor = Tensor::randn(&[4, 3], &mut rng);
//! let w = Tensor::ones(&[3, 2]);
//! let y = x.matmul(&w).relu();
//! assert_eq!(y.shape(), &[4, 2]);
//! assert!(y.min_all() >= 0.0);
//! ```

pub mod alloc;
pub mod autocast;
mod bf16;
mod conv;
mod einsum;
pub mod element;
mod elementwise;
pub mod fs;
mod indexing;
pub mod kernels;
mod matmul;
pub mod parallel;
mod pool;
mod reduce;
pub mod rng;
mod tensor;

pub use autocast::{autocast, autocast_dtype, is_autocast_enabled, set_autocast, AutocastGuard};
pub use bf16::Bf16Tensor;
pub use einsum::{einsum_with, EinsumOperand};
pub use element::{DType, Float};
pub use elementwise::{broadcast_shapes, sigmoid_scalar};
pub use indexing::PadMode;
pub use kernels::conv::{Conv1dParams, Conv2dParams, ConvTranspose2dParams};
pub use parallel::{get_num_threads, set_num_threads};
pub use reduce::Norm;
pub use rng::Rng;
pub use tensor::{Indices, Labels, Shape, Strides, Tensor};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
