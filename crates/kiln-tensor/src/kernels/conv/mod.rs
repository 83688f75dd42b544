//! 2-d and 1-d convolution on contiguous NCHW buffers, with PyTorch's semantics.
//!
//! The forward pass is im2col + GEMM: for each sample and group the input patches are unrolled
//! into a `[C/groups * kh * kw, out_h * out_w]` matrix that the group's weight rows multiply.
//! The input gradient is the transposed product followed by col2im (the adjoint of im2col), and
//! the weight gradient is the product of the output gradient with the unrolled input. A transposed
//! convolution is the input-gradient computation of the convolution it transposes, so the same
//! three routines serve both layers.
//!
//! Layouts follow PyTorch: input `[N, C, H, W]`; `conv2d` weight `[out_channels, C / groups, kh,
//! kw]`; `conv_transpose2d` weight `[C, out_channels / groups, kh, kw]`. Output sizes follow the
//! shape formulas on the `torch.nn.Conv2d` and `torch.nn.ConvTranspose2d` doc pages.
//!
//! On an x86-64 CPU with AVX2 and FMA, `f32` convolutions with unit stride skip the im2col
//! buffer: `direct_avx2.rs` reads each tap's inputs where they lie (an implicit GEMM, 4 output
//! channels × 24 positions per register tile) and adds the bias as it stores. `KILN_CONV=im2col`
//! turns it off (read once per process; any other value but `auto` panics).
//!
//! Large batches are split across kiln's pool (see [`crate::parallel`]), one sample per task,
//! each task with its own im2col buffer and a single-threaded GEMM; a lone large sample instead
//! lets [`gemm_slices`](crate::kernels::gemm::gemm_slices) split its product.
//!
//! One file per family: the hyper-parameters and output sizes here; `conv2d.rs`,
//! `conv_transpose2d.rs` and `conv1d.rs` (the entry points of each, re-exported here);
//! `im2col.rs` (the lowering to GEMM that all three share), `direct_avx2.rs` (the direct
//! forward kernel) and `geometry.rs` (shape checks).

mod conv1d;
mod conv2d;
mod conv_transpose2d;
mod direct_avx2;
mod geometry;
mod im2col;
#[cfg(test)]
mod reference;

pub use conv1d::{conv1d_backward_bias, conv1d_backward_input, conv1d_backward_weight, conv1d_forward};
pub use conv2d::{conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, conv2d_forward};
pub use conv_transpose2d::{
    conv_transpose2d_backward_input, conv_transpose2d_backward_weight, conv_transpose2d_forward,
};

use geometry::{check_params, conv_geom, transpose_geom};

/// Hyper-parameters of a 2-d convolution, as the arguments of `torch.nn.functional.conv2d`.
///
/// Pairs are `[height, width]`. The default is PyTorch's: stride 1, no padding, no dilation,
/// one group.
///
/// ```
/// use kiln_tensor::kernels::conv::Conv2dParams;
/// let p = Conv2dParams { stride: [2, 2], padding: [1, 1], ..Default::default() };
/// assert_eq!(p.dilation, [1, 1]);
/// assert_eq!(p.groups, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between neighbouring windows, `[sh, sw]`; each must be > 0.
    pub stride: [usize; 2],
    /// Implicit zero padding added on both sides of each axis, `[ph, pw]`.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, `[dh, dw]`; each must be > 0.
    pub dilation: [usize; 2],
    /// Number of blocked connections from input to output channels; must divide both.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

/// Hyper-parameters of a 1-d convolution, as the arguments of `torch.nn.functional.conv1d`.
///
/// The default is stride 1, no padding, no dilation, one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv1dParams {
    /// Step between neighbouring windows; must be > 0.
    pub stride: usize,
    /// Implicit zero padding added on both ends.
    pub padding: usize,
    /// Spacing between kernel taps; must be > 0.
    pub dilation: usize,
    /// Number of blocked connections from input to output channels; must divide both.
    pub groups: usize,
}

impl Default for Conv1dParams {
    fn default() -> Self {
        Conv1dParams { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl Conv1dParams {
    /// The same convolution as a 2-d one over a height-1 input.
    #[must_use]
    pub fn to_2d(&self) -> Conv2dParams {
        Conv2dParams {
            stride: [1, self.stride],
            padding: [0, self.padding],
            dilation: [1, self.dilation],
            groups: self.groups,
        }
    }
}

/// Hyper-parameters of a 2-d transposed convolution, as the arguments of
/// `torch.nn.functional.conv_transpose2d`.
///
/// `padding` removes `dilation * (kernel - 1) - padding` rows and columns of zero padding, as in
/// PyTorch; `output_padding` adds that many rows/columns to one side of the output to select
/// among the input sizes a strided convolution maps to the same output size, and must be
/// smaller than either the stride or the dilation of its axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvTranspose2dParams {
    /// Stride of the convolution this one transposes, `[sh, sw]`; each must be > 0.
    pub stride: [usize; 2],
    /// Padding of the convolution this one transposes, `[ph, pw]`.
    pub padding: [usize; 2],
    /// Extra size added to the bottom/right of the output, `[oph, opw]`.
    pub output_padding: [usize; 2],
    /// Spacing between kernel taps, `[dh, dw]`; each must be > 0.
    pub dilation: [usize; 2],
    /// Number of blocked connections from input to output channels; must divide both.
    pub groups: usize,
}

impl Default for ConvTranspose2dParams {
    fn default() -> Self {
        ConvTranspose2dParams { stride: [1, 1], padding: [0, 0], output_padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

impl ConvTranspose2dParams {
    /// The parameters of the convolution this one transposes (`output_padding` dropped).
    #[must_use]
    pub fn conv(&self) -> Conv2dParams {
        Conv2dParams { stride: self.stride, padding: self.padding, dilation: self.dilation, groups: self.groups }
    }
}

/// Output length of one convolved axis:
/// `floor((input + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1`.
///
/// Returns `None` when the padded input is shorter than the dilated kernel (PyTorch's "kernel
/// size can't be greater than actual input size"), or when `stride` is 0.
#[must_use]
pub fn conv_out_len(input: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    if stride == 0 || kernel == 0 {
        return None;
    }
    let span = dilation * (kernel - 1) + 1;
    let padded = input + 2 * padding;
    if padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// Output length of one axis of a transposed convolution:
/// `(input - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`.
///
/// Returns `None` when that is not positive (or `input` or `kernel` is 0).
#[must_use]
pub fn conv_transpose_out_len(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
) -> Option<usize> {
    if input == 0 || kernel == 0 {
        return None;
    }
    let full = (input - 1) * stride + dilation * (kernel - 1) + output_padding + 1;
    full.checked_sub(2 * padding).filter(|&n| n > 0)
}

/// Spatial output size `[out_h, out_w]` of a 2-d convolution of an `[h, w]` input with a
/// `[kh, kw]` kernel.
///
/// **Panics** if the padded input is smaller than the dilated kernel, or a stride, dilation or
/// kernel size is 0.
#[must_use]
pub fn conv2d_out_size(input: [usize; 2], kernel: [usize; 2], p: &Conv2dParams) -> [usize; 2] {
    check_params("conv2d", p);
    let f = |a: usize| {
        conv_out_len(input[a], kernel[a], p.stride[a], p.padding[a], p.dilation[a]).unwrap_or_else(|| {
            panic!(
                "conv2d: input {:?} padded by {:?} is smaller than kernel {:?} dilated by {:?}",
                input, p.padding, kernel, p.dilation
            )
        })
    };
    [f(0), f(1)]
}

/// Output shape `[N, out_channels, out_h, out_w]` of `conv2d(input, weight)`, after checking
/// that the shapes fit together.
///
/// **Panics** with a message naming both shapes if they do not (see [`conv2d_forward`]).
#[must_use]
pub fn conv2d_out_shape(in_shape: [usize; 4], w_shape: [usize; 4], p: &Conv2dParams) -> [usize; 4] {
    conv_geom("conv2d", in_shape, w_shape, p).1
}

/// Output shape `[N, out_channels, out_h, out_w]` of `conv_transpose2d(input, weight)`, after
/// checking that the shapes fit together.
///
/// **Panics** with a message naming both shapes if they do not (see
/// [`conv_transpose2d_forward`]).
#[must_use]
pub fn conv_transpose2d_out_shape(in_shape: [usize; 4], w_shape: [usize; 4], p: &ConvTranspose2dParams) -> [usize; 4] {
    transpose_geom("conv_transpose2d", in_shape, w_shape, p).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_pytorch() {
        // torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2) on 9x8 gives 4x3
        let p = Conv2dParams { stride: [2, 2], padding: [1, 1], dilation: [2, 2], groups: 2 };
        assert_eq!(conv2d_out_shape([2, 4, 9, 8], [6, 2, 3, 3], &p), [2, 6, 4, 3]);
        // torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1) on 5x4 gives 10x8
        let tp =
            ConvTranspose2dParams { stride: [2, 2], padding: [1, 1], output_padding: [1, 1], ..Default::default() };
        assert_eq!(conv_transpose2d_out_shape([2, 3, 5, 4], [3, 4, 3, 3], &tp), [2, 4, 10, 8]);
        assert_eq!(conv_out_len(2, 3, 1, 0, 1), None);
        assert_eq!(conv_out_len(2, 3, 1, 1, 1), Some(2));
        assert_eq!(conv_transpose_out_len(1, 1, 1, 1, 0, 1), None);
    }
}
