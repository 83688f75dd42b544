//! Numeric kernels, one module per family, each with its tests: GEMM (f32/f64, and bfloat16
//! with f32 sums), convolution (im2col + GEMM), pooling, normalisation, multi-head attention and
//! the fused LSTM recurrence.
//!
//! The slice kernels (`gemm`, `conv`, `pool`) take plain slices plus sizes, so that they can be
//! tested against direct loops and reused by any layer; [`Tensor`](crate::Tensor) methods wrap
//! them (`Tensor::conv2d`, `Tensor::max_pool2d`, ...). The fused kernels (`norm`, `attention`)
//! are [`Tensor`](crate::Tensor) methods defined here, forward and backward side by side;
//! [`lstm`] is the one module kiln-autograd's `lstm_sequence` op calls.

mod attention;
pub mod bf16_gemm;
pub mod conv;
pub mod gemm;
pub mod lstm;
mod norm;
pub mod pool;
mod pool_avx2;
#[cfg(kiln_avx512)]
pub(crate) mod sgemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod sgemm_avx2;
