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
//! Large batches are split across kiln's pool (see [`crate::parallel`]), one sample per task,
//! each task with its own im2col buffer and a single-threaded GEMM; a lone large sample instead
//! lets [`gemm_slices`] split its product.

use rayon::prelude::*;

use crate::element::Float;
use crate::kernels::gemm::gemm_slices;
use crate::parallel;

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

/// `conv2d`: `out[n, o] = bias[o] + sum over the group's input channels c of
/// cross-correlate(input[n, c], weight[o, c])`, with zero padding, stride and dilation.
///
/// `input` is `[N, C, H, W]`, `weight` is `[O, C / groups, kh, kw]`, `bias` has `O` elements.
/// Returns the output and its shape `[N, O, out_h, out_w]` (see [`conv2d_out_size`]).
///
/// **Panics** if the channel counts do not match (`conv2d: input [2, 3, 8, 8] has 3 channels
/// but weight [4, 2, 3, 3] expects 2 x groups 1`), `groups` does not divide the output channels,
/// the input is smaller than the kernel, a slice's length differs from its shape, or a
/// stride, dilation or `groups` is 0.
///
/// ```
/// use kiln_tensor::kernels::conv::{conv2d_forward, Conv2dParams};
/// // one 3x3 image, one 2x2 kernel of ones: every output is a 2x2 window sum
/// let x: Vec<f64> = (0..9).map(f64::from).collect();
/// let (y, shape) = conv2d_forward(&x, [1, 1, 3, 3], &[1.0; 4], [1, 1, 2, 2], None, &Conv2dParams::default());
/// assert_eq!(shape, [1, 1, 2, 2]);
/// assert_eq!(y, vec![8.0, 12.0, 20.0, 24.0]);
/// ```
#[must_use]
pub fn conv2d_forward<E: Float>(
    input: &[E],
    in_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    bias: Option<&[E]>,
    p: &Conv2dParams,
) -> (Vec<E>, [usize; 4]) {
    let op = "conv2d";
    let (g, out_shape) = conv_geom(op, in_shape, w_shape, p);
    check_len(op, "input", input, &in_shape);
    check_len(op, "weight", weight, &w_shape);
    if let Some(b) = bias {
        check_bias(op, b, w_shape[0], &w_shape);
    }
    let mut out = forward_impl(input, weight, in_shape[0], &g);
    if let Some(b) = bias {
        add_bias(&mut out, b, g.out_plane());
    }
    (out, out_shape)
}

/// Gradient of [`conv2d_forward`] with respect to its input: the transposed convolution of
/// `grad_out` (col2im of `weight^T · grad_out`).
///
/// `grad_out` has the forward output's shape `out_shape`; returns a buffer of `in_shape`.
///
/// **Panics** if the shapes do not fit together (as in [`conv2d_forward`]), `out_shape` is not
/// the output shape of `in_shape` under `w_shape` and `p`, or a slice's length differs from its
/// shape.
#[must_use]
pub fn conv2d_backward_input<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    in_shape: [usize; 4],
    p: &Conv2dParams,
) -> Vec<E> {
    let op = "conv2d_backward_input";
    let (g, expect) = conv_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "weight", weight, &w_shape);
    backward_input_impl(grad_out, weight, in_shape[0], &g)
}

/// Gradient of [`conv2d_forward`] with respect to its weight: for each group,
/// `grad_out · im2col(input)^T` summed over the batch.
///
/// Returns a buffer of `w_shape`.
///
/// **Panics** if the shapes do not fit together (as in [`conv2d_forward`]), `out_shape` is not
/// the output shape of `in_shape` under `w_shape` and `p`, or a slice's length differs from its
/// shape.
#[must_use]
pub fn conv2d_backward_weight<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    input: &[E],
    in_shape: [usize; 4],
    w_shape: [usize; 4],
    p: &Conv2dParams,
) -> Vec<E> {
    let op = "conv2d_backward_weight";
    let (g, expect) = conv_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "input", input, &in_shape);
    backward_weight_impl(grad_out, input, in_shape[0], &g)
}

/// Gradient of [`conv2d_forward`] (or [`conv_transpose2d_forward`]) with respect to its bias:
/// `grad_out` summed over the batch and both spatial axes, one value per output channel.
///
/// **Panics** if `grad_out` does not hold `out_shape`'s element count.
#[must_use]
pub fn conv2d_backward_bias<E: Float>(grad_out: &[E], out_shape: [usize; 4]) -> Vec<E> {
    check_len("conv2d_backward_bias", "grad_out", grad_out, &out_shape);
    channel_sums(grad_out, out_shape[0], out_shape[1], out_shape[2] * out_shape[3])
}

/// `conv_transpose2d`: the gradient of a `conv2d` with respect to its input, applied to `input`,
/// plus `bias` — PyTorch's `ConvTranspose2d` ("fractionally strided convolution").
///
/// `input` is `[N, C, H, W]`, `weight` is `[C, O / groups, kh, kw]`, `bias` has `O` elements.
/// Returns the output and its shape `[N, O, out_h, out_w]` where
/// `out = (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`.
///
/// **Panics** if the channel counts do not match (`conv_transpose2d: input [1, 3, 4, 4] has 3
/// channels but weight [4, 2, 3, 3] expects 4`), `groups` does not divide the input channels, an
/// `output_padding` is not smaller than its stride or dilation, the output would be empty, a
/// slice's length differs from its shape, or a stride, dilation or `groups` is 0.
#[must_use]
pub fn conv_transpose2d_forward<E: Float>(
    input: &[E],
    in_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    bias: Option<&[E]>,
    p: &ConvTranspose2dParams,
) -> (Vec<E>, [usize; 4]) {
    let op = "conv_transpose2d";
    let (g, out_shape) = transpose_geom(op, in_shape, w_shape, p);
    check_len(op, "input", input, &in_shape);
    check_len(op, "weight", weight, &w_shape);
    if let Some(b) = bias {
        check_bias(op, b, out_shape[1], &w_shape);
    }
    // The transposed convolution's input plays the convolution's output gradient.
    let mut out = backward_input_impl(input, weight, in_shape[0], &g);
    if let Some(b) = bias {
        add_bias(&mut out, b, g.in_plane());
    }
    (out, out_shape)
}

/// Gradient of [`conv_transpose2d_forward`] with respect to its input: the ordinary `conv2d` of
/// `grad_out` with the same weight (read as `[C, O / groups, kh, kw]` = a conv2d weight from O
/// to C channels).
///
/// Returns a buffer of `in_shape`.
///
/// **Panics** if the shapes do not fit together (as in [`conv_transpose2d_forward`]),
/// `out_shape` is not the output shape of `in_shape` under `w_shape` and `p`, or a slice's length
/// differs from its shape.
#[must_use]
pub fn conv_transpose2d_backward_input<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    in_shape: [usize; 4],
    p: &ConvTranspose2dParams,
) -> Vec<E> {
    let op = "conv_transpose2d_backward_input";
    let (g, expect) = transpose_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "weight", weight, &w_shape);
    forward_impl(grad_out, weight, in_shape[0], &g)
}

/// Gradient of [`conv_transpose2d_forward`] with respect to its weight: the `conv2d` weight
/// gradient with the roles of input and output gradient exchanged.
///
/// Returns a buffer of `w_shape`. The bias gradient is [`conv2d_backward_bias`] of `grad_out`.
///
/// **Panics** if the shapes do not fit together (as in [`conv_transpose2d_forward`]),
/// `out_shape` is not the output shape of `in_shape` under `w_shape` and `p`, or a slice's length
/// differs from its shape.
#[must_use]
pub fn conv_transpose2d_backward_weight<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    input: &[E],
    in_shape: [usize; 4],
    w_shape: [usize; 4],
    p: &ConvTranspose2dParams,
) -> Vec<E> {
    let op = "conv_transpose2d_backward_weight";
    let (g, expect) = transpose_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "input", input, &in_shape);
    backward_weight_impl(input, grad_out, in_shape[0], &g)
}

/// `conv1d`: [`conv2d_forward`] over a height-1 input.
///
/// `input` is `[N, C, L]`, `weight` is `[O, C / groups, k]`; returns the output and its shape
/// `[N, O, out_l]`.
///
/// **Panics** as [`conv2d_forward`] does, naming `conv1d` and the 3-d shapes.
#[must_use]
pub fn conv1d_forward<E: Float>(
    input: &[E],
    in_shape: [usize; 3],
    weight: &[E],
    w_shape: [usize; 3],
    bias: Option<&[E]>,
    p: &Conv1dParams,
) -> (Vec<E>, [usize; 3]) {
    let op = "conv1d";
    let out_shape = conv1d_shape_check(op, in_shape, w_shape, p);
    check_len(op, "input", input, &in_shape);
    check_len(op, "weight", weight, &w_shape);
    if let Some(b) = bias {
        check_bias(op, b, w_shape[0], &w_shape);
    }
    let (out, _) = conv2d_forward(input, lift(in_shape), weight, lift(w_shape), bias, &p.to_2d());
    (out, out_shape)
}

/// Gradient of [`conv1d_forward`] with respect to its input; returns a buffer of `in_shape`.
///
/// **Panics** as [`conv2d_backward_input`] does.
#[must_use]
pub fn conv1d_backward_input<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 3],
    weight: &[E],
    w_shape: [usize; 3],
    in_shape: [usize; 3],
    p: &Conv1dParams,
) -> Vec<E> {
    let op = "conv1d_backward_input";
    let expect = conv1d_shape_check(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "weight", weight, &w_shape);
    conv2d_backward_input(grad_out, lift(out_shape), weight, lift(w_shape), lift(in_shape), &p.to_2d())
}

/// Gradient of [`conv1d_forward`] with respect to its weight; returns a buffer of `w_shape`.
///
/// **Panics** as [`conv2d_backward_weight`] does.
#[must_use]
pub fn conv1d_backward_weight<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 3],
    input: &[E],
    in_shape: [usize; 3],
    w_shape: [usize; 3],
    p: &Conv1dParams,
) -> Vec<E> {
    let op = "conv1d_backward_weight";
    let expect = conv1d_shape_check(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "input", input, &in_shape);
    conv2d_backward_weight(grad_out, lift(out_shape), input, lift(in_shape), lift(w_shape), &p.to_2d())
}

/// Gradient of [`conv1d_forward`] with respect to its bias: `grad_out` summed over the batch
/// and the length axis.
///
/// **Panics** if `grad_out` does not hold `out_shape`'s element count.
#[must_use]
pub fn conv1d_backward_bias<E: Float>(grad_out: &[E], out_shape: [usize; 3]) -> Vec<E> {
    check_len("conv1d_backward_bias", "grad_out", grad_out, &out_shape);
    channel_sums(grad_out, out_shape[0], out_shape[1], out_shape[2])
}

// ---------------------------------------------------------------------------------------------
// Shape checking

fn check_params(op: &str, p: &Conv2dParams) {
    assert!(p.groups > 0, "{op}: groups must be > 0, got 0");
    assert!(p.stride[0] > 0 && p.stride[1] > 0, "{op}: stride must be > 0, got {:?}", p.stride);
    assert!(p.dilation[0] > 0 && p.dilation[1] > 0, "{op}: dilation must be > 0, got {:?}", p.dilation);
}

fn check_len<E>(op: &str, what: &str, data: &[E], shape: &[usize]) {
    let want: usize = shape.iter().product();
    assert!(data.len() == want, "{op}: {what} holds {} elements but its shape {shape:?} needs {want}", data.len());
}

fn check_bias<E>(op: &str, bias: &[E], channels: usize, w_shape: &[usize]) {
    assert!(
        bias.len() == channels,
        "{op}: bias has {} elements but weight {w_shape:?} gives {channels} output channels",
        bias.len()
    );
}

fn check_out_shape(
    op: &str,
    got: impl AsRef<[usize]>,
    want: impl AsRef<[usize]>,
    x: impl AsRef<[usize]>,
    w: impl AsRef<[usize]>,
) {
    let (got, want) = (got.as_ref(), want.as_ref());
    assert!(
        got == want,
        "{op}: grad_out {got:?} is not the output shape {want:?} of input {:?} with weight {:?}",
        x.as_ref(),
        w.as_ref()
    );
}

fn lift(s: [usize; 3]) -> [usize; 4] {
    [s[0], s[1], 1, s[2]]
}

/// Checks a 1-d convolution's shapes with messages naming the 1-d op and shapes; returns the
/// output shape.
fn conv1d_shape_check(op: &str, x: [usize; 3], w: [usize; 3], p: &Conv1dParams) -> [usize; 3] {
    assert!(p.groups > 0, "{op}: groups must be > 0, got 0");
    assert!(p.stride > 0, "{op}: stride must be > 0, got 0");
    assert!(p.dilation > 0, "{op}: dilation must be > 0, got 0");
    assert!(w[2] > 0, "{op}: weight {w:?} has an empty kernel");
    assert!(
        x[1] == w[1] * p.groups,
        "{op}: input {x:?} has {} channels but weight {w:?} expects {} x groups {}",
        x[1],
        w[1],
        p.groups
    );
    assert!(
        w[0] % p.groups == 0,
        "{op}: weight {w:?} has {} output channels, not divisible by groups {}",
        w[0],
        p.groups
    );
    let l = conv_out_len(x[2], w[2], p.stride, p.padding, p.dilation).unwrap_or_else(|| {
        panic!("{op}: input {x:?} padded by {} is smaller than kernel {} dilated by {}", p.padding, w[2], p.dilation)
    });
    [x[0], w[0], l]
}

/// The geometry of one convolution as the kernels see it: a convolution from `groups * c`
/// input channels of `h x w` to `groups * oc` output channels of `oh x ow`. The output size is
/// stored, not derived, because a transposed convolution with `output_padding` runs the same
/// kernels with an "input" larger than the one the formula would give back.
#[derive(Clone, Copy, Debug)]
struct Geom {
    /// Input channels per group.
    c: usize,
    h: usize,
    w: usize,
    /// Output channels per group.
    oc: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    groups: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
}

impl Geom {
    /// Rows of the unrolled input of one group.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn in_plane(&self) -> usize {
        self.h * self.w
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    fn in_sample(&self) -> usize {
        self.groups * self.c * self.in_plane()
    }
    fn out_sample(&self) -> usize {
        self.groups * self.oc * self.out_plane()
    }
    /// A 1x1 kernel with unit stride and no padding reads the input as its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.oh == self.h
            && self.ow == self.w
    }
    fn col_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.k() * self.out_plane()
        }
    }
    /// Multiply-adds of one GEMM pass over the whole batch.
    fn flops(&self, n: usize) -> usize {
        n.saturating_mul(self.groups * self.oc).saturating_mul(self.k()).saturating_mul(self.out_plane())
    }
}

fn conv_geom(op: &str, x: [usize; 4], w: [usize; 4], p: &Conv2dParams) -> (Geom, [usize; 4]) {
    check_params(op, p);
    assert!(w[2] > 0 && w[3] > 0, "{op}: weight {w:?} has an empty kernel");
    assert!(
        x[1] == w[1] * p.groups,
        "{op}: input {x:?} has {} channels but weight {w:?} expects {} x groups {}",
        x[1],
        w[1],
        p.groups
    );
    assert!(
        w[0] % p.groups == 0,
        "{op}: weight {w:?} has {} output channels, not divisible by groups {}",
        w[0],
        p.groups
    );
    let f = |a: usize| {
        conv_out_len(x[2 + a], w[2 + a], p.stride[a], p.padding[a], p.dilation[a]).unwrap_or_else(|| {
            panic!(
                "{op}: input {x:?} padded by {:?} is smaller than kernel {:?} dilated by {:?}",
                p.padding,
                [w[2], w[3]],
                p.dilation
            )
        })
    };
    let (oh, ow) = (f(0), f(1));
    let g = Geom {
        c: w[1],
        h: x[2],
        w: x[3],
        oc: w[0] / p.groups,
        oh,
        ow,
        kh: w[2],
        kw: w[3],
        groups: p.groups,
        stride: p.stride,
        pad: p.padding,
        dil: p.dilation,
    };
    (g, [x[0], w[0], oh, ow])
}

/// Geometry of the convolution a transposed convolution is the input gradient of: its input is
/// the transposed convolution's output and vice versa.
fn transpose_geom(op: &str, x: [usize; 4], w: [usize; 4], p: &ConvTranspose2dParams) -> (Geom, [usize; 4]) {
    check_params(op, &p.conv());
    assert!(w[2] > 0 && w[3] > 0, "{op}: weight {w:?} has an empty kernel");
    assert!(x[1] == w[0], "{op}: input {x:?} has {} channels but weight {w:?} expects {}", x[1], w[0]);
    assert!(
        w[0] % p.groups == 0,
        "{op}: weight {w:?} has {} input channels, not divisible by groups {}",
        w[0],
        p.groups
    );
    for a in 0..2 {
        assert!(
            p.output_padding[a] < p.stride[a] || p.output_padding[a] < p.dilation[a],
            "{op}: output_padding {:?} must be smaller than either stride {:?} or dilation {:?}",
            p.output_padding,
            p.stride,
            p.dilation
        );
    }
    let f = |a: usize| {
        conv_transpose_out_len(x[2 + a], w[2 + a], p.stride[a], p.padding[a], p.output_padding[a], p.dilation[a])
            .unwrap_or_else(|| {
                panic!(
                    "{op}: input {x:?} with weight {w:?}, stride {:?}, padding {:?}, dilation {:?} \
                     gives an empty output",
                    p.stride, p.padding, p.dilation
                )
            })
    };
    let (oh, ow) = (f(0), f(1));
    let g = Geom {
        c: w[1],
        h: oh,
        w: ow,
        oc: w[0] / p.groups,
        oh: x[2],
        ow: x[3],
        kh: w[2],
        kw: w[3],
        groups: p.groups,
        stride: p.stride,
        pad: p.padding,
        dil: p.dilation,
    };
    (g, [x[0], w[1] * p.groups, oh, ow])
}

// ---------------------------------------------------------------------------------------------
// Kernels

/// Output positions `o` in `[lo, hi)` of an axis of length `out_len` whose input position
/// `o * stride + offset` falls inside `[0, in_len)`.
#[inline]
fn valid_range(out_len: usize, stride: usize, offset: isize, in_len: usize) -> (usize, usize) {
    let lo = if offset >= 0 { 0 } else { offset.unsigned_abs().div_ceil(stride) };
    let hi = if offset >= in_len as isize { 0 } else { ((in_len as isize - offset) as usize).div_ceil(stride) };
    let lo = lo.min(out_len);
    (lo, hi.min(out_len).max(lo))
}

/// Unrolls one group's input `x` (`[c, h, w]`) into `col` (`[c * kh * kw, oh * ow]`): row
/// `(ci, ki, kj)` holds the input value each output position reads through that tap, or 0 where
/// the tap falls in the padding.
fn im2col<E: Float>(x: &[E], g: &Geom, col: &mut [E]) {
    let (ohw, hw) = (g.out_plane(), g.in_plane());
    let mut rows = col.chunks_exact_mut(ohw.max(1));
    for ci in 0..g.c {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            let off_y = (ki * g.dil[0]) as isize - g.pad[0] as isize;
            let (ylo, yhi) = valid_range(g.oh, g.stride[0], off_y, g.h);
            for kj in 0..g.kw {
                let off_x = (kj * g.dil[1]) as isize - g.pad[1] as isize;
                let (xlo, xhi) = valid_range(g.ow, g.stride[1], off_x, g.w);
                let row = rows.next().expect("im2col: col buffer too short");
                row[..ylo * g.ow].fill(E::zero());
                row[yhi * g.ow..].fill(E::zero());
                for oy in ylo..yhi {
                    let iy = ((oy * g.stride[0]) as isize + off_y) as usize;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    dst[..xlo].fill(E::zero());
                    dst[xhi..].fill(E::zero());
                    if xlo == xhi {
                        continue;
                    }
                    let ix0 = ((xlo * g.stride[1]) as isize + off_x) as usize;
                    if g.stride[1] == 1 {
                        dst[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                    } else {
                        for (d, s) in dst[xlo..xhi].iter_mut().zip(src[ix0..].iter().step_by(g.stride[1])) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each entry of `col` to the input position it was read from.
fn col2im<E: Float>(col: &[E], g: &Geom, x: &mut [E]) {
    let (ohw, hw) = (g.out_plane(), g.in_plane());
    let mut rows = col.chunks_exact(ohw.max(1));
    for ci in 0..g.c {
        let plane = &mut x[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            let off_y = (ki * g.dil[0]) as isize - g.pad[0] as isize;
            let (ylo, yhi) = valid_range(g.oh, g.stride[0], off_y, g.h);
            for kj in 0..g.kw {
                let off_x = (kj * g.dil[1]) as isize - g.pad[1] as isize;
                let (xlo, xhi) = valid_range(g.ow, g.stride[1], off_x, g.w);
                let row = rows.next().expect("col2im: col buffer too short");
                for oy in ylo..yhi {
                    let iy = ((oy * g.stride[0]) as isize + off_y) as usize;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let src = &row[oy * g.ow + xlo..oy * g.ow + xhi];
                    if src.is_empty() {
                        continue;
                    }
                    let ix0 = ((xlo * g.stride[1]) as isize + off_x) as usize;
                    if g.stride[1] == 1 {
                        for (d, s) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in dst[ix0..].iter_mut().step_by(g.stride[1]).zip(src) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `C = alpha * op(A) · op(B) + beta * C`, either on the calling thread only (inside a
/// region that is already parallel over samples) or through [`gemm_slices`], which may split it.
fn matmul<E: Float>(
    serial: bool,
    m: usize,
    k: usize,
    n: usize,
    a: &[E],
    trans_a: bool,
    b: &[E],
    trans_b: bool,
    beta: E,
    c: &mut [E],
) {
    if !serial {
        gemm_slices(m, k, n, E::one(), a, trans_a, b, trans_b, beta, c);
        return;
    }
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "conv: GEMM operand too short");
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the lengths are checked above, the strides describe row-major (or transposed)
    // matrices within them, and `c` is an exclusive borrow distinct from `a` and `b`.
    unsafe {
        E::gemm_raw(m, k, n, E::one(), a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1)
    }
}

/// Runs `f(sample, chunk, col_buffer, serial)` over the `n` samples whose results are the
/// consecutive `chunk`-element pieces of `out`: in parallel on kiln's pool (each task with its own
/// im2col buffer of `col_len`) when there are several samples and `flops` is large enough.
fn for_each_sample<E: Float>(
    out: &mut [E],
    chunk: usize,
    n: usize,
    flops: usize,
    col_len: usize,
    f: impl Fn(usize, &mut [E], &mut Vec<E>, bool) + Sync + Send,
) {
    if out.is_empty() || chunk == 0 {
        return;
    }
    let serial_loop = |out: &mut [E]| {
        let mut col = vec![E::zero(); col_len];
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, &mut col, false);
        }
    };
    if n < 2 || flops < parallel::gemm_min_flops() || parallel::get_num_threads() == 1 {
        serial_loop(out);
        return;
    }
    parallel::install(|threads| {
        if threads < 2 {
            serial_loop(out);
        } else {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each_init(|| vec![E::zero(); col_len], |col, (i, o)| f(i, o, col, true));
        }
    });
}

/// Convolution forward without bias, for the geometry `g` (output `[n, groups * oc, oh, ow]`).
fn forward_impl<E: Float>(x: &[E], wt: &[E], n: usize, g: &Geom) -> Vec<E> {
    let (k, ohw, cg_len, og_len, wg_len) =
        (g.k(), g.out_plane(), g.c * g.in_plane(), g.oc * g.out_plane(), g.oc * g.k());
    let mut out = vec![E::zero(); n * g.out_sample()];
    for_each_sample(&mut out, g.out_sample(), n, g.flops(n), g.col_len(), |i, out, col, serial| {
        let xs = &x[i * g.in_sample()..(i + 1) * g.in_sample()];
        for grp in 0..g.groups {
            let xg = &xs[grp * cg_len..(grp + 1) * cg_len];
            let wg = &wt[grp * wg_len..(grp + 1) * wg_len];
            let og = &mut out[grp * og_len..(grp + 1) * og_len];
            let colm: &[E] = if g.pointwise() {
                xg
            } else {
                im2col(xg, g, col);
                col
            };
            // out_g [oc, ohw] = W_g [oc, k] · col [k, ohw]
            matmul(serial, g.oc, k, ohw, wg, false, colm, false, E::zero(), og);
        }
    });
    out
}

/// Input gradient for the geometry `g`: `gy` is `[n, groups * oc, oh, ow]`, the result
/// `[n, groups * c, h, w]`.
fn backward_input_impl<E: Float>(gy: &[E], wt: &[E], n: usize, g: &Geom) -> Vec<E> {
    let (k, ohw, cg_len, og_len, wg_len) =
        (g.k(), g.out_plane(), g.c * g.in_plane(), g.oc * g.out_plane(), g.oc * g.k());
    let mut gx = vec![E::zero(); n * g.in_sample()];
    for_each_sample(&mut gx, g.in_sample(), n, g.flops(n), g.col_len(), |i, gx, col, serial| {
        let gys = &gy[i * g.out_sample()..(i + 1) * g.out_sample()];
        for grp in 0..g.groups {
            let gyg = &gys[grp * og_len..(grp + 1) * og_len];
            let wg = &wt[grp * wg_len..(grp + 1) * wg_len];
            let gxg = &mut gx[grp * cg_len..(grp + 1) * cg_len];
            // col [k, ohw] = W_g^T [k, oc] · gy_g [oc, ohw]
            if g.pointwise() {
                matmul(serial, k, g.oc, ohw, wg, true, gyg, false, E::zero(), gxg);
            } else {
                matmul(serial, k, g.oc, ohw, wg, true, gyg, false, E::zero(), col);
                col2im(col, g, gxg);
            }
        }
    });
    gx
}

/// Weight gradient for the geometry `g`: `sum over samples of gy_g · im2col(x_g)^T`, returned
/// as `[groups * oc, c, kh, kw]`.
fn backward_weight_impl<E: Float>(gy: &[E], x: &[E], n: usize, g: &Geom) -> Vec<E> {
    let (k, ohw, cg_len, og_len, wg_len) =
        (g.k(), g.out_plane(), g.c * g.in_plane(), g.oc * g.out_plane(), g.oc * g.k());
    let w_len = g.groups * wg_len;
    // Accumulates sample i into `gw` (beta = 1).
    let sample = |i: usize, gw: &mut [E], col: &mut Vec<E>, serial: bool| {
        let xs = &x[i * g.in_sample()..(i + 1) * g.in_sample()];
        let gys = &gy[i * g.out_sample()..(i + 1) * g.out_sample()];
        for grp in 0..g.groups {
            let xg = &xs[grp * cg_len..(grp + 1) * cg_len];
            let gyg = &gys[grp * og_len..(grp + 1) * og_len];
            let gwg = &mut gw[grp * wg_len..(grp + 1) * wg_len];
            let colm: &[E] = if g.pointwise() {
                xg
            } else {
                im2col(xg, g, col);
                col
            };
            // gW_g [oc, k] += gy_g [oc, ohw] · col^T [ohw, k]
            matmul(serial, g.oc, ohw, k, gyg, false, colm, true, E::one(), gwg);
        }
    };
    let serial_all = || {
        let mut gw = vec![E::zero(); w_len];
        let mut col = vec![E::zero(); g.col_len()];
        for i in 0..n {
            sample(i, &mut gw, &mut col, false);
        }
        gw
    };
    if n < 2 || w_len == 0 || g.flops(n) < parallel::gemm_min_flops() || parallel::get_num_threads() == 1 {
        return serial_all();
    }
    parallel::install(|threads| {
        if threads < 2 {
            return serial_all();
        }
        // One partial sum per thread's run of samples, then a sum of the partials.
        (0..n)
            .into_par_iter()
            .with_min_len(n.div_ceil(threads))
            .fold(
                || (vec![E::zero(); w_len], vec![E::zero(); g.col_len()]),
                |(mut gw, mut col), i| {
                    sample(i, &mut gw, &mut col, true);
                    (gw, col)
                },
            )
            .map(|(gw, _)| gw)
            .reduce_with(|mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += *y;
                }
                a
            })
            .unwrap_or_else(|| vec![E::zero(); w_len])
    })
}

/// Adds `bias[c]` to every element of each `[plane]`-sized channel block of `out`.
fn add_bias<E: Float>(out: &mut [E], bias: &[E], plane: usize) {
    if plane == 0 || bias.is_empty() {
        return;
    }
    for (i, block) in out.chunks_exact_mut(plane).enumerate() {
        let b = bias[i % bias.len()];
        for v in block {
            *v += b;
        }
    }
}

/// Sums `[n, c, plane]` over the first and last axes.
fn channel_sums<E: Float>(x: &[E], n: usize, c: usize, plane: usize) -> Vec<E> {
    let mut sums = vec![E::zero(); c];
    for i in 0..n {
        for (ch, s) in sums.iter_mut().enumerate() {
            let start = (i * c + ch) * plane;
            *s += x[start..start + plane].iter().copied().sum::<E>();
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rand_vec(rng: &mut crate::Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: got {a}, want {b}");
        }
    }

    /// Calls `visit(x_index, w_index, y_index)` for every product term of the convolution
    /// `y[b, o, oy, ox] += x[b, c, iy, ix] * w[o, c % cg, ki, kj]`, straight from the definition on
    /// the `torch.nn.Conv2d` page. The forward, input-gradient and weight-gradient references
    /// are all this one sum read in different directions.
    fn conv_terms(
        x: [usize; 4],
        w: [usize; 4],
        y: [usize; 4],
        p: &Conv2dParams,
        mut visit: impl FnMut(usize, usize, usize),
    ) {
        let (ocg, cg) = (w[0] / p.groups, w[1]);
        for b in 0..x[0] {
            for o in 0..w[0] {
                let grp = o / ocg;
                for c in 0..cg {
                    let ci = grp * cg + c;
                    for ki in 0..w[2] {
                        for kj in 0..w[3] {
                            for oy in 0..y[2] {
                                for ox in 0..y[3] {
                                    let iy = (oy * p.stride[0] + ki * p.dilation[0]) as isize - p.padding[0] as isize;
                                    let ix = (ox * p.stride[1] + kj * p.dilation[1]) as isize - p.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= x[2] as isize || ix >= x[3] as isize {
                                        continue;
                                    }
                                    let xi = ((b * x[1] + ci) * x[2] + iy as usize) * x[3] + ix as usize;
                                    let wi = ((o * cg + c) * w[2] + ki) * w[3] + kj;
                                    let yi = ((b * y[1] + o) * y[2] + oy) * y[3] + ox;
                                    visit(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Direct-loop forward, input gradient and weight gradient of `conv2d` on explicit shapes
    /// (`y` may be taller or wider than the formula gives, as a transposed convolution needs).
    fn ref_conv(xs: &[f64], x: [usize; 4], ws: &[f64], w: [usize; 4], y: [usize; 4], p: &Conv2dParams) -> Vec<f64> {
        let mut out = vec![0.0; y.iter().product()];
        conv_terms(x, w, y, p, |xi, wi, yi| out[yi] += xs[xi] * ws[wi]);
        out
    }
    fn ref_conv_bwd_input(
        gy: &[f64],
        x: [usize; 4],
        ws: &[f64],
        w: [usize; 4],
        y: [usize; 4],
        p: &Conv2dParams,
    ) -> Vec<f64> {
        let mut gx = vec![0.0; x.iter().product()];
        conv_terms(x, w, y, p, |xi, wi, yi| gx[xi] += gy[yi] * ws[wi]);
        gx
    }
    fn ref_conv_bwd_weight(
        gy: &[f64],
        xs: &[f64],
        x: [usize; 4],
        w: [usize; 4],
        y: [usize; 4],
        p: &Conv2dParams,
    ) -> Vec<f64> {
        let mut gw = vec![0.0; w.iter().product()];
        conv_terms(x, w, y, p, |xi, wi, yi| gw[wi] += gy[yi] * xs[xi]);
        gw
    }

    /// A random convolution problem whose output is at least 1x1.
    #[derive(Clone, Debug)]
    struct Case {
        x: [usize; 4],
        w: [usize; 4],
        p: Conv2dParams,
        seed: u64,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..3, 1usize..3, 1usize..4),
            ([1usize..4, 1usize..4], [1usize..3, 1usize..3], [0usize..3, 0usize..3], [1usize..3, 1usize..3]),
            ([0usize..5, 0usize..5], 0u64..1 << 20),
        )
            .prop_map(|((n, groups, cg, ocg), (k, s, pad, d), (extra, seed))| {
                let size = |a: usize| (d[a] * (k[a] - 1) + 1).saturating_sub(2 * pad[a]).max(1) + extra[a];
                Case {
                    x: [n, groups * cg, size(0), size(1)],
                    w: [groups * ocg, cg, k[0], k[1]],
                    p: Conv2dParams { stride: s, padding: pad, dilation: d, groups },
                    seed,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn conv2d_matches_direct_loops(c in case(), with_bias: bool) {
            let mut rng = crate::Rng::new(c.seed);
            let x = rand_vec(&mut rng, c.x.iter().product());
            let w = rand_vec(&mut rng, c.w.iter().product());
            let b = rand_vec(&mut rng, c.w[0]);
            let (y, ys) = conv2d_forward(&x, c.x, &w, c.w, with_bias.then_some(&b[..]), &c.p);
            let [oh, ow] = conv2d_out_size([c.x[2], c.x[3]], [c.w[2], c.w[3]], &c.p);
            prop_assert_eq!(ys, [c.x[0], c.w[0], oh, ow]);
            let mut want = ref_conv(&x, c.x, &w, c.w, ys, &c.p);
            if with_bias {
                for (i, v) in want.iter_mut().enumerate() {
                    *v += b[(i / (oh * ow)) % c.w[0]];
                }
            }
            assert_close(&y, &want, 1e-12, "conv2d");
        }

        #[test]
        fn conv2d_backward_matches_direct_adjoint(c in case()) {
            let mut rng = crate::Rng::new(c.seed);
            let x = rand_vec(&mut rng, c.x.iter().product());
            let w = rand_vec(&mut rng, c.w.iter().product());
            let ys = conv2d_out_shape(c.x, c.w, &c.p);
            let gy = rand_vec(&mut rng, ys.iter().product());

            let gx = conv2d_backward_input(&gy, ys, &w, c.w, c.x, &c.p);
            assert_close(&gx, &ref_conv_bwd_input(&gy, c.x, &w, c.w, ys, &c.p), 1e-12, "grad input");
            // <gy, conv(x)> = <conv_backward_input(gy), x>
            let (y, _) = conv2d_forward(&x, c.x, &w, c.w, None, &c.p);
            prop_assert!((dot(&gy, &y) - dot(&gx, &x)).abs() < 1e-10);

            let gw = conv2d_backward_weight(&gy, ys, &x, c.x, c.w, &c.p);
            assert_close(&gw, &ref_conv_bwd_weight(&gy, &x, c.x, c.w, ys, &c.p), 1e-12, "grad weight");

            let gb = conv2d_backward_bias(&gy, ys);
            let plane = ys[2] * ys[3];
            for (o, g) in gb.iter().enumerate() {
                let want: f64 = (0..ys[0]).map(|b| gy[(b * ys[1] + o) * plane..][..plane].iter().sum::<f64>()).sum();
                prop_assert!((g - want).abs() < 1e-12);
            }
        }

        #[test]
        fn conv_transpose2d_is_the_adjoint_of_conv2d(c in case(), op in [0usize..3, 0usize..3], with_bias: bool) {
            // A transposed convolution maps the conv's output shape back to its input shape;
            // `output_padding` (kept below stride or dilation) picks a larger one.
            let tp = ConvTranspose2dParams {
                stride: c.p.stride,
                padding: c.p.padding,
                output_padding: [0, 1].map(|a| op[a] % c.p.stride[a].max(c.p.dilation[a])),
                dilation: c.p.dilation,
                groups: c.p.groups,
            };
            let ys = conv2d_out_shape(c.x, c.w, &c.p);
            // The conv drops the (x + 2p - span) % stride rows its last window cannot reach.
            let want_hw = [0, 1].map(|a| {
                let span = c.p.dilation[a] * (c.w[2 + a] - 1) + 1;
                let rem = (c.x[2 + a] + 2 * c.p.padding[a] - span) % c.p.stride[a];
                (c.x[2 + a] + tp.output_padding[a]) as isize - rem as isize
            });
            prop_assume!(want_hw[0] > 0 && want_hw[1] > 0);
            // Input of the transposed conv: [n, conv out channels, oh, ow]; weight as is.
            let t_in = ys;
            let t_out = conv_transpose2d_out_shape(t_in, c.w, &tp);
            prop_assert_eq!(t_out, [c.x[0], c.x[1], want_hw[0] as usize, want_hw[1] as usize]);
            let mut rng = crate::Rng::new(c.seed);
            let t = rand_vec(&mut rng, t_in.iter().product());
            let w = rand_vec(&mut rng, c.w.iter().product());
            let b = rand_vec(&mut rng, t_out[1]);
            let (z, zs) = conv_transpose2d_forward(&t, t_in, &w, c.w, with_bias.then_some(&b[..]), &tp);
            prop_assert_eq!(zs, t_out);
            let mut want = ref_conv_bwd_input(&t, t_out, &w, c.w, t_in, &c.p);
            if with_bias {
                let plane = t_out[2] * t_out[3];
                for (i, v) in want.iter_mut().enumerate() {
                    *v += b[(i / plane) % t_out[1]];
                }
            }
            assert_close(&z, &want, 1e-12, "conv_transpose2d");

            let gz = rand_vec(&mut rng, t_out.iter().product());
            let gt = conv_transpose2d_backward_input(&gz, t_out, &w, c.w, t_in, &tp);
            assert_close(&gt, &ref_conv(&gz, t_out, &w, c.w, t_in, &c.p), 1e-12, "conv_transpose2d grad input");
            let gw = conv_transpose2d_backward_weight(&gz, t_out, &t, t_in, c.w, &tp);
            assert_close(&gw, &ref_conv_bwd_weight(&t, &gz, t_out, c.w, t_in, &c.p), 1e-12, "conv_transpose2d grad weight");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn conv2d_weight_gradient_matches_finite_differences(c in case()) {
            let mut rng = crate::Rng::new(c.seed);
            let x = rand_vec(&mut rng, c.x.iter().product());
            let mut w = rand_vec(&mut rng, c.w.iter().product());
            let ys = conv2d_out_shape(c.x, c.w, &c.p);
            let gy = rand_vec(&mut rng, ys.iter().product());
            let gw = conv2d_backward_weight(&gy, ys, &x, c.x, c.w, &c.p);
            let loss = |w: &[f64]| dot(&gy, &conv2d_forward(&x, c.x, w, c.w, None, &c.p).0);
            let h = 1e-6;
            for i in 0..w.len() {
                let w0 = w[i];
                w[i] = w0 + h;
                let up = loss(&w);
                w[i] = w0 - h;
                let down = loss(&w);
                w[i] = w0;
                let fd = (up - down) / (2.0 * h);
                prop_assert!((fd - gw[i]).abs() < 1e-6 * (1.0 + fd.abs()), "w[{}]: fd {} analytic {}", i, fd, gw[i]);
            }
        }

        #[test]
        fn conv1d_matches_direct_loops(n in 1usize..3, groups in 1usize..3, cg in 1usize..3, ocg in 1usize..3,
                                       k in 1usize..4, s in 1usize..3, pad in 0usize..3, d in 1usize..3,
                                       extra in 0usize..6, seed in 0u64..1000) {
            let l = (d * (k - 1) + 1).saturating_sub(2 * pad).max(1) + extra;
            let (xs, ws) = ([n, groups * cg, l], [groups * ocg, cg, k]);
            let p = Conv1dParams { stride: s, padding: pad, dilation: d, groups };
            let mut rng = crate::Rng::new(seed);
            let x = rand_vec(&mut rng, xs.iter().product());
            let w = rand_vec(&mut rng, ws.iter().product());
            let b = rand_vec(&mut rng, ws[0]);
            let (y, ys) = conv1d_forward(&x, xs, &w, ws, Some(&b), &p);
            let ol = (l + 2 * pad - d * (k - 1) - 1) / s + 1;
            prop_assert_eq!(ys, [n, ws[0], ol]);
            for bi in 0..n {
                for o in 0..ws[0] {
                    for t in 0..ol {
                        let grp = o / ocg;
                        let mut want = b[o];
                        for c in 0..cg {
                            for j in 0..k {
                                let i = (t * s + j * d) as isize - pad as isize;
                                if i >= 0 && (i as usize) < l {
                                    want += x[(bi * xs[1] + grp * cg + c) * l + i as usize] * w[(o * cg + c) * k + j];
                                }
                            }
                        }
                        prop_assert!((y[(bi * ws[0] + o) * ol + t] - want).abs() < 1e-12);
                    }
                }
            }
            let gy = rand_vec(&mut rng, ys.iter().product());
            let gx = conv1d_backward_input(&gy, ys, &w, ws, xs, &p);
            let y0 = conv1d_forward(&x, xs, &w, ws, None, &p).0;
            prop_assert!((dot(&gy, &y0) - dot(&gx, &x)).abs() < 1e-10);
            let gw = conv1d_backward_weight(&gy, ys, &x, xs, ws, &p);
            prop_assert!((dot(&gy, &y0) - dot(&gw, &w)).abs() < 1e-10);
            let gb = conv1d_backward_bias(&gy, ys);
            prop_assert!((gb.iter().sum::<f64>() - gy.iter().sum::<f64>()).abs() < 1e-10);
        }
    }

    #[test]
    fn large_batch_takes_the_parallel_path_and_agrees() {
        // 4 x 8 x 72 x 256 multiply-adds > 2^18, so the batch is split when threads > 1.
        let (xs, ws) = ([4, 8, 16, 16], [8, 4, 3, 3]);
        let p = Conv2dParams { padding: [1, 1], groups: 2, ..Default::default() };
        let mut rng = crate::Rng::new(7);
        let x = rand_vec(&mut rng, xs.iter().product());
        let w = rand_vec(&mut rng, ws.iter().product());
        let ys = conv2d_out_shape(xs, ws, &p);
        let gy = rand_vec(&mut rng, ys.iter().product());
        let want_y = ref_conv(&x, xs, &w, ws, ys, &p);
        let want_gx = ref_conv_bwd_input(&gy, xs, &w, ws, ys, &p);
        let want_gw = ref_conv_bwd_weight(&gy, &x, xs, ws, ys, &p);
        for threads in [1, 2] {
            crate::set_num_threads(threads);
            assert_close(&conv2d_forward(&x, xs, &w, ws, None, &p).0, &want_y, 1e-12, "forward");
            assert_close(&conv2d_backward_input(&gy, ys, &w, ws, xs, &p), &want_gx, 1e-12, "grad input");
            assert_close(&conv2d_backward_weight(&gy, ys, &x, xs, ws, &p), &want_gw, 1e-12, "grad weight");
        }
    }

    #[test]
    fn taps_that_never_reach_the_input_read_zeros() {
        // 1x1 input, taps at x = -2, 0, 2: only the middle one reads the input, and the first
        // and last rows of im2col are all padding.
        let (xs, ws) = ([1, 1, 1, 1], [1, 1, 1, 3]);
        let p = Conv2dParams { padding: [0, 2], dilation: [1, 2], ..Default::default() };
        let (x, w) = ([3.0], [1.0, 10.0, 100.0]);
        let (y, ys) = conv2d_forward(&x, xs, &w, ws, None, &p);
        assert_eq!((y, ys), (vec![30.0], [1, 1, 1, 1]));
        assert_eq!(conv2d_backward_input(&[2.0], ys, &w, ws, xs, &p), vec![20.0]);
        assert_eq!(conv2d_backward_weight(&[2.0], ys, &x, xs, ws, &p), vec![0.0, 6.0, 0.0]);
    }

    #[test]
    fn pointwise_conv_skips_im2col_and_agrees() {
        let (xs, ws) = ([2, 4, 3, 5], [6, 2, 1, 1]);
        let p = Conv2dParams { groups: 2, ..Default::default() };
        let mut rng = crate::Rng::new(11);
        let x = rand_vec(&mut rng, xs.iter().product());
        let w = rand_vec(&mut rng, ws.iter().product());
        let (y, ys) = conv2d_forward(&x, xs, &w, ws, None, &p);
        assert_close(&y, &ref_conv(&x, xs, &w, ws, ys, &p), 1e-12, "forward");
        let gy = rand_vec(&mut rng, ys.iter().product());
        assert_close(
            &conv2d_backward_input(&gy, ys, &w, ws, xs, &p),
            &ref_conv_bwd_input(&gy, xs, &w, ws, ys, &p),
            1e-12,
            "grad input",
        );
        assert_close(
            &conv2d_backward_weight(&gy, ys, &x, xs, ws, &p),
            &ref_conv_bwd_weight(&gy, &x, xs, ws, ys, &p),
            1e-12,
            "grad weight",
        );
    }

    #[test]
    fn f32_conv_matches_f64() {
        let (xs, ws) = ([2, 4, 7, 6], [6, 2, 3, 2]);
        let p = Conv2dParams { stride: [2, 1], padding: [1, 2], dilation: [1, 2], groups: 2 };
        let mut rng = crate::Rng::new(5);
        let x = rand_vec(&mut rng, xs.iter().product());
        let w = rand_vec(&mut rng, ws.iter().product());
        let b = rand_vec(&mut rng, ws[0]);
        let (y64, ys) = conv2d_forward(&x, xs, &w, ws, Some(&b), &p);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (y32, ys32) = conv2d_forward(&f(&x), xs, &f(&w), ws, Some(&f(&b)), &p);
        assert_eq!(ys, ys32);
        for (a, b) in y32.iter().zip(&y64) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
        let gy = rand_vec(&mut rng, ys.iter().product());
        let gx64 = conv2d_backward_input(&gy, ys, &w, ws, xs, &p);
        let gx32 = conv2d_backward_input(&f(&gy), ys, &f(&w), ws, xs, &p);
        let gw64 = conv2d_backward_weight(&gy, ys, &x, xs, ws, &p);
        let gw32 = conv2d_backward_weight(&f(&gy), ys, &f(&x), xs, ws, &p);
        for (a, b) in gx32.iter().zip(&gx64).chain(gw32.iter().zip(&gw64)) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

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

    #[test]
    #[should_panic(expected = "conv2d: input [2, 3, 8, 8] has 3 channels but weight [4, 2, 3, 3] expects 2 x groups 1")]
    fn channel_mismatch_names_both_shapes() {
        let _ = conv2d_forward(&[0.0f64; 384], [2, 3, 8, 8], &[0.0; 72], [4, 2, 3, 3], None, &Conv2dParams::default());
    }

    #[test]
    #[should_panic(
        expected = "conv2d: input [1, 1, 2, 2] padded by [0, 0] is smaller than kernel [3, 3] dilated by [1, 1]"
    )]
    fn too_small_input_panics() {
        let _ = conv2d_forward(&[0.0f64; 4], [1, 1, 2, 2], &[0.0; 9], [1, 1, 3, 3], None, &Conv2dParams::default());
    }

    #[test]
    #[should_panic(expected = "conv2d: weight [3, 2, 1, 1] has 3 output channels, not divisible by groups 2")]
    fn groups_must_divide_output_channels() {
        let p = Conv2dParams { groups: 2, ..Default::default() };
        let _ = conv2d_forward(&[0.0f64; 4], [1, 4, 1, 1], &[0.0; 6], [3, 2, 1, 1], None, &p);
    }

    #[test]
    #[should_panic(expected = "conv2d_backward_input: grad_out [1, 1, 3, 3] is not the output shape [1, 1, 2, 2]")]
    fn backward_checks_the_output_shape() {
        let _ = conv2d_backward_input(
            &[0.0f64; 9],
            [1, 1, 3, 3],
            &[0.0; 4],
            [1, 1, 2, 2],
            [1, 1, 3, 3],
            &Conv2dParams::default(),
        );
    }

    #[test]
    #[should_panic(
        expected = "conv_transpose2d: output_padding [2, 0] must be smaller than either stride [2, 2] or dilation [1, 1]"
    )]
    fn transpose_output_padding_is_bounded() {
        let tp = ConvTranspose2dParams { stride: [2, 2], output_padding: [2, 0], ..Default::default() };
        let _ = conv_transpose2d_forward(&[0.0f64; 4], [1, 1, 2, 2], &[0.0; 9], [1, 1, 3, 3], None, &tp);
    }

    #[test]
    #[should_panic(expected = "conv1d: input [1, 2, 5] has 2 channels but weight [1, 3, 2] expects 3 x groups 1")]
    fn conv1d_names_the_1d_shapes() {
        let _ = conv1d_forward(&[0.0f64; 10], [1, 2, 5], &[0.0; 6], [1, 3, 2], None, &Conv1dParams::default());
    }
}
