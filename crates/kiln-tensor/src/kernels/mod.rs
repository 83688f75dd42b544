//! Numeric kernels on contiguous buffers: GEMM (f32/f64, and bfloat16 with f32 sums),
//! convolution (im2col), pooling.
//!
//! Kernels take plain slices plus sizes so that they can be tested against direct loops and
//! reused by any layer; [`Tensor`](crate::Tensor) methods wrap them.

pub mod bf16_gemm;
pub mod conv;
pub mod gemm;
pub mod pool;
#[cfg(kiln_avx512)]
pub(crate) mod sgemm;
