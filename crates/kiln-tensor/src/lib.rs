//! # kiln-tensor
//!
//! n-dimensional arrays of `f32`/`f64` for the kiln deep-learning framework: shared storage with
//! copy-on-write, strided views (permute, slice, expand) that never copy, NumPy/PyTorch
//! broadcasting, reductions, an explicit seedable [`Rng`], and the CPU kernels (GEMM,
//! convolution, pooling) every layer above is built on.

pub mod element;
pub mod kernels;
pub mod parallel;
pub mod rng;

pub use element::{DType, Float};
pub use parallel::{get_num_threads, set_num_threads};
pub use rng::Rng;
