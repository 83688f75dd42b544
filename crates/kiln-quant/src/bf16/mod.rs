//! bfloat16 inference, PyTorch's `model.to(torch.bfloat16)` run on bfloat16 input.
//!
//! - **Storage**: weights and biases are [`Bf16Tensor`](kiln_tensor::Bf16Tensor)s (half the bytes of `f32`), and so
//!   are the activations between layers: every layer rounds its output to bfloat16 (to nearest,
//!   ties to even).
//! - **Arithmetic**: products read the bfloat16 values and are summed in `f32` by kiln's
//!   bfloat16 GEMM ([`gemm_bf16_slices`](kiln_tensor::kernels::bf16_gemm::gemm_bf16_slices):
//!   AVX-512 BF16, AVX2 or portable, chosen at run time), never in bfloat16; bias additions,
//!   activations and the LSTM's gate equations run in `f32` lanes, and only what is stored is
//!   rounded.
//! - **Layers**: [`Bf16Linear`], [`Bf16Conv2d`] (im2col + GEMM; stride, padding including
//!   `'same'`, dilation, groups), [`Bf16Embedding`], [`Bf16LSTM`] (layers, directions,
//!   `batch_first`), each made from its kiln-nn layer by reference.
//! - **Whole models**: [`bf16_sequential`] takes a `Sequential` by value, downcasts its
//!   `Linear`, `Conv2d` and `Embedding` layers, and keeps every other layer as a
//!   [`FloatLayer`](crate::FloatLayer) whose parameters and buffers are rounded to bfloat16
//!   values; the [`Bf16Sequential`] it returns reports its [`param_bytes`](Bf16Sequential::param_bytes).
//!   An LSTM is not a `Sequential` layer in kiln-nn (it returns states too): convert it with
//!   [`Bf16LSTM::from_lstm`] inside a model of your own, as the `bf16_inference` example does.
//!
//! Inference only: outputs carry no gradient and the layers list no `f32` parameters (the
//! bfloat16 tensors are not variables), as kiln-quant's int8 layers.

use half::bf16;

use kiln_tensor::kernels::bf16_gemm::{bf16_bits_to_f32, f32_to_bf16_bits};

mod conv2d;
mod embedding;
mod linear;
mod lstm;
mod sequential;

pub use conv2d::Bf16Conv2d;
pub use embedding::Bf16Embedding;
pub use linear::Bf16Linear;
pub use lstm::Bf16LSTM;
pub use sequential::{bf16_sequential, Bf16Layer, Bf16Sequential};

/// `x` rounded to the nearest bfloat16, ties to even (as [`Bf16Tensor::from_f32`] rounds).
///
/// [`Bf16Tensor::from_f32`]: kiln_tensor::Bf16Tensor::from_f32
#[inline]
pub(crate) fn round(x: f32) -> bf16 {
    bf16::from_bits(f32_to_bf16_bits(x))
}

/// The `f32` value of a bfloat16 (exact).
#[inline]
pub(crate) fn widen(h: bf16) -> f32 {
    bf16_bits_to_f32(h.to_bits())
}

/// Bytes held by a bfloat16 tensor of `numel` elements.
pub(crate) const BF16_BYTES: usize = 2;
