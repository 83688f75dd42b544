//! Max, average and adaptive-average pooling on contiguous NCHW buffers, with PyTorch's
//! semantics (`torch.nn.MaxPool2d`, `AvgPool2d`, `AdaptiveAvgPool2d` and their 1-d forms).
//!
//! Every `(n, c)` plane is pooled on its own, so large inputs are split across kiln's pool one
//! run of planes per task (see [`crate::parallel`]). The 1-d kernels are the 2-d ones over a
//! height-1 input.
//!
//! Output sizes follow PyTorch's `pooling_output_shape`:
//! `out = floor_or_ceil((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1`, where in
//! ceil mode the last window is dropped if it would start past the input and its left padding
//! (see [`pool_out_len`]).

use std::any::TypeId;

use rayon::prelude::*;

use crate::element::Float;
use crate::parallel;

/// Index a max-pool window that covers no input element gets (possible only with dilation and
/// padding on tiny inputs, where PyTorch outputs `-inf` too); [`max_pool2d_backward`] drops the
/// gradient of such windows.
pub const NO_INDEX: usize = usize::MAX;

/// Output length of one pooled axis, PyTorch's `pooling_output_shape`.
///
/// `floor((input + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1`, or with `ceil_mode`
/// the ceiling of the division, less one if the last window would then start at or after
/// `input + padding` (it must start inside the input or its left padding). Returns `None`
/// when the result is below 1 or `stride` or `kernel` is 0.
///
/// ```
/// use kiln_tensor::kernels::pool::pool_out_len;
/// assert_eq!(pool_out_len(5, 2, 2, 0, 1, false), Some(2));
/// assert_eq!(pool_out_len(5, 2, 2, 0, 1, true), Some(3));
/// // with padding 1 the ceil-mode window at 6 would start past 5 + 1
/// assert_eq!(pool_out_len(5, 2, 2, 1, 1, true), Some(3));
/// ```
#[must_use]
pub fn pool_out_len(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    if stride == 0 || kernel == 0 || dilation == 0 {
        return None;
    }
    let (input, kernel, stride, padding, dilation) =
        (input as i64, kernel as i64, stride as i64, padding as i64, dilation as i64);
    let span = dilation * (kernel - 1) + 1;
    let numer = input + 2 * padding - span + if ceil_mode { stride - 1 } else { 0 };
    let mut out = numer.div_euclid(stride) + 1;
    if ceil_mode && (out - 1) * stride >= input + padding {
        out -= 1;
    }
    (out >= 1).then_some(out as usize)
}

/// `max_pool2d`: the largest element of each window, and where it is.
///
/// `input` is `[N, C, H, W]`; windows are `kernel` taps spaced by `dilation`, stepped by
/// `stride`, over the input padded with `-inf` by `padding` on each side. Returns the output,
/// its shape `[N, C, out_h, out_w]`, and for each output element the flat position `h * W + w`
/// of its maximum inside its own `(n, c)` input plane, as PyTorch's `return_indices=True` gives.
/// As in PyTorch, the first maximum in row-major window order wins, and a NaN wins over any
/// number (the last NaN of the window). A window that covers no input element gives `-inf` and
/// [`NO_INDEX`].
///
/// **Panics** if a kernel size, stride or dilation is 0, a padding exceeds half its kernel
/// size, the output would be empty, or `input` does not hold `shape`'s element count.
///
/// ```
/// use kiln_tensor::kernels::pool::max_pool2d_forward;
/// let x: Vec<f64> = (0..16).map(f64::from).collect();
/// let (y, shape, idx) = max_pool2d_forward(&x, [1, 1, 4, 4], [2, 2], [2, 2], [0, 0], [1, 1], false);
/// assert_eq!(shape, [1, 1, 2, 2]);
/// assert_eq!(y, vec![5.0, 7.0, 13.0, 15.0]);
/// assert_eq!(idx, vec![5, 7, 13, 15]);
/// ```
#[must_use]
pub fn max_pool2d_forward<E: Float>(
    input: &[E],
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> (Vec<E>, [usize; 4], Vec<usize>) {
    let g = geom("max_pool2d", shape, kernel, stride, padding, dilation, ceil_mode, &shape);
    check_len("max_pool2d", "input", input, &shape);
    max_pool_impl(input, &g, true)
}

/// [`max_pool2d_forward`] without the indices, for inference: the values and their shape.
/// The common 2x2 / stride-2 windows then skip computing and writing an index per output.
///
/// ```
/// use kiln_tensor::kernels::pool::max_pool2d_forward_values;
/// let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
/// let (y, shape) = max_pool2d_forward_values(&x, [1, 1, 4, 4], [2, 2], [2, 2], [0, 0], [1, 1], false);
/// assert_eq!((y, shape), (vec![5.0, 7.0, 13.0, 15.0], [1, 1, 2, 2]));
/// ```
///
/// **Panics** as [`max_pool2d_forward`] does.
#[must_use]
pub fn max_pool2d_forward_values<E: Float>(
    input: &[E],
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> (Vec<E>, [usize; 4]) {
    let g = geom("max_pool2d", shape, kernel, stride, padding, dilation, ceil_mode, &shape);
    check_len("max_pool2d", "input", input, &shape);
    let (out, s, _) = max_pool_impl(input, &g, false);
    (out, s)
}

/// Gradient of [`max_pool2d_forward`]: each output gradient is added to the input element its
/// index points at (inside the same `(n, c)` plane).
///
/// `indices` are those the forward returned, `in_shape` and `out_shape` the forward's input and
/// output shapes. Returns a buffer of `in_shape`.
///
/// **Panics** if `grad_out` or `indices` does not hold `out_shape`'s element count, the shapes
/// differ in `N` or `C`, or an index other than [`NO_INDEX`] lies outside the input plane.
#[must_use]
pub fn max_pool2d_backward<E: Float>(
    grad_out: &[E],
    indices: &[usize],
    in_shape: [usize; 4],
    out_shape: [usize; 4],
) -> Vec<E> {
    max_pool_backward_impl("max_pool2d_backward", grad_out, indices, &in_shape, &out_shape)
}

/// `avg_pool2d`: the mean of each window, as `torch.nn.functional.avg_pool2d`.
///
/// `input` is `[N, C, H, W]`, zero-padded by `padding`. The divisor is `divisor_override` when
/// given; otherwise, with `count_include_pad`, the number of window positions inside the padded
/// input (a ceil-mode window hanging past the padding counts only its part inside), and without
/// it the number of positions inside the unpadded input. Returns the output and its shape
/// `[N, C, out_h, out_w]` (see [`pool_out_len`], dilation 1).
///
/// **Panics** if a kernel size or stride is 0, a padding exceeds half its kernel size, the
/// output would be empty, `divisor_override` is `Some(0)`, or `input` does not hold `shape`'s
/// element count.
///
/// ```
/// use kiln_tensor::kernels::pool::avg_pool2d_forward;
/// let x = vec![1.0f64; 4];
/// // 2x2 input, 2x2 windows, padding 1: each window sees one input element and three zeros
/// let (y, _) = avg_pool2d_forward(&x, [1, 1, 2, 2], [2, 2], [2, 2], [1, 1], false, true, None);
/// assert_eq!(y, vec![0.25; 4]);
/// let (y, _) = avg_pool2d_forward(&x, [1, 1, 2, 2], [2, 2], [2, 2], [1, 1], false, false, None);
/// assert_eq!(y, vec![1.0; 4]);
/// ```
#[must_use]
pub fn avg_pool2d_forward<E: Float>(
    input: &[E],
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<usize>,
) -> (Vec<E>, [usize; 4]) {
    let op = "avg_pool2d";
    let g = geom(op, shape, kernel, stride, padding, [1, 1], ceil_mode, &shape);
    check_divisor(op, divisor_override);
    check_len(op, "input", input, &shape);
    let out = avg_pool_impl(input, &g, count_include_pad, divisor_override);
    (out, g.out_shape())
}

/// Gradient of [`avg_pool2d_forward`]: each output gradient, divided by its window's divisor, is
/// added to every input element of the window.
///
/// Takes the forward's arguments (with `out_shape` for checking); returns a buffer of `in_shape`.
///
/// **Panics** as [`avg_pool2d_forward`] does, and if `out_shape` is not the forward's output
/// shape or `grad_out` does not hold its element count.
#[must_use]
pub fn avg_pool2d_backward<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    in_shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<usize>,
) -> Vec<E> {
    let op = "avg_pool2d_backward";
    let g = geom(op, in_shape, kernel, stride, padding, [1, 1], ceil_mode, &in_shape);
    check_divisor(op, divisor_override);
    check_out_shape(op, &out_shape, &g.out_shape(), &in_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    avg_pool_backward_impl(grad_out, &g, count_include_pad, divisor_override)
}

/// `adaptive_avg_pool2d`: averages over `output_size[0] x output_size[1]` bins that tile the
/// input, as `torch.nn.functional.adaptive_avg_pool2d`.
///
/// Bin `i` of an axis of input length `In` and output length `Out` spans
/// `[floor(i * In / Out), ceil((i + 1) * In / Out))`, so neighbouring bins overlap when `Out`
/// does not divide `In`. Returns the output and its shape `[N, C, out_h, out_w]`.
///
/// **Panics** if an output size is positive while the input axis is empty, or `input` does not
/// hold `shape`'s element count.
///
/// ```
/// use kiln_tensor::kernels::pool::adaptive_avg_pool2d_forward;
/// let x: Vec<f64> = (0..3).map(f64::from).collect(); // [0, 1, 2] as a 1x3 image
/// let (y, shape) = adaptive_avg_pool2d_forward(&x, [1, 1, 1, 3], [1, 2]);
/// assert_eq!(shape, [1, 1, 1, 2]);
/// assert_eq!(y, vec![0.5, 1.5]); // bins [0, 2) and [1, 3)
/// ```
#[must_use]
pub fn adaptive_avg_pool2d_forward<E: Float>(
    input: &[E],
    shape: [usize; 4],
    output_size: [usize; 2],
) -> (Vec<E>, [usize; 4]) {
    let op = "adaptive_avg_pool2d";
    check_adaptive(op, &shape, &output_size);
    check_len(op, "input", input, &shape);
    let out_shape = [shape[0], shape[1], output_size[0], output_size[1]];
    (adaptive_impl(input, &shape, &out_shape), out_shape)
}

/// Gradient of [`adaptive_avg_pool2d_forward`]: each output gradient, divided by its bin's size,
/// is added to every input element of the bin. Returns a buffer of `in_shape`.
///
/// **Panics** if the shapes differ in `N` or `C`, an output size is positive while the input
/// axis is empty, or `grad_out` does not hold `out_shape`'s element count.
#[must_use]
pub fn adaptive_avg_pool2d_backward<E: Float>(grad_out: &[E], out_shape: [usize; 4], in_shape: [usize; 4]) -> Vec<E> {
    let op = "adaptive_avg_pool2d_backward";
    check_adaptive(op, &in_shape, &out_shape[2..]);
    check_out_shape(op, &out_shape[..2], &in_shape[..2], &in_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    adaptive_backward_impl(grad_out, &in_shape, &out_shape)
}

/// `max_pool1d` on `[N, C, L]`: [`max_pool2d_forward`] over a height-1 input. Indices are
/// positions along `L`.
///
/// **Panics** as [`max_pool2d_forward`] does, naming `max_pool1d` and the 3-d shape.
#[must_use]
pub fn max_pool1d_forward<E: Float>(
    input: &[E],
    shape: [usize; 3],
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> (Vec<E>, [usize; 3], Vec<usize>) {
    let g = geom("max_pool1d", lift(shape), [1, kernel], [1, stride], [0, padding], [1, dilation], ceil_mode, &shape);
    check_len("max_pool1d", "input", input, &shape);
    let (out, s, idx) = max_pool_impl(input, &g, true);
    (out, drop_h(s), idx)
}

/// Gradient of [`max_pool1d_forward`]; returns a buffer of `in_shape`.
///
/// **Panics** as [`max_pool2d_backward`] does.
#[must_use]
pub fn max_pool1d_backward<E: Float>(
    grad_out: &[E],
    indices: &[usize],
    in_shape: [usize; 3],
    out_shape: [usize; 3],
) -> Vec<E> {
    max_pool_backward_impl("max_pool1d_backward", grad_out, indices, &in_shape, &out_shape)
}

/// `avg_pool1d` on `[N, C, L]`: [`avg_pool2d_forward`] over a height-1 input (PyTorch's
/// `avg_pool1d` has no divisor override).
///
/// **Panics** as [`avg_pool2d_forward`] does, naming `avg_pool1d` and the 3-d shape.
#[must_use]
pub fn avg_pool1d_forward<E: Float>(
    input: &[E],
    shape: [usize; 3],
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
    count_include_pad: bool,
) -> (Vec<E>, [usize; 3]) {
    let op = "avg_pool1d";
    let g = geom(op, lift(shape), [1, kernel], [1, stride], [0, padding], [1, 1], ceil_mode, &shape);
    check_len(op, "input", input, &shape);
    (avg_pool_impl(input, &g, count_include_pad, None), drop_h(g.out_shape()))
}

/// Gradient of [`avg_pool1d_forward`]; returns a buffer of `in_shape`.
///
/// **Panics** as [`avg_pool2d_backward`] does.
#[must_use]
pub fn avg_pool1d_backward<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 3],
    in_shape: [usize; 3],
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
    count_include_pad: bool,
) -> Vec<E> {
    let op = "avg_pool1d_backward";
    let g = geom(op, lift(in_shape), [1, kernel], [1, stride], [0, padding], [1, 1], ceil_mode, &in_shape);
    check_out_shape(op, &out_shape, &drop_h(g.out_shape()), &in_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    avg_pool_backward_impl(grad_out, &g, count_include_pad, None)
}

/// `adaptive_avg_pool1d` on `[N, C, L]`: [`adaptive_avg_pool2d_forward`] over a height-1 input.
///
/// **Panics** as [`adaptive_avg_pool2d_forward`] does.
#[must_use]
pub fn adaptive_avg_pool1d_forward<E: Float>(
    input: &[E],
    shape: [usize; 3],
    output_size: usize,
) -> (Vec<E>, [usize; 3]) {
    let op = "adaptive_avg_pool1d";
    check_adaptive(op, &shape, &[output_size]);
    check_len(op, "input", input, &shape);
    let out_shape = [shape[0], shape[1], output_size];
    (adaptive_impl(input, &lift(shape), &lift(out_shape)), out_shape)
}

/// Gradient of [`adaptive_avg_pool1d_forward`]; returns a buffer of `in_shape`.
///
/// **Panics** as [`adaptive_avg_pool2d_backward`] does.
#[must_use]
pub fn adaptive_avg_pool1d_backward<E: Float>(grad_out: &[E], out_shape: [usize; 3], in_shape: [usize; 3]) -> Vec<E> {
    let op = "adaptive_avg_pool1d_backward";
    check_adaptive(op, &in_shape, &out_shape[2..]);
    check_out_shape(op, &out_shape[..2], &in_shape[..2], &in_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    adaptive_backward_impl(grad_out, &lift(in_shape), &lift(out_shape))
}

// ---------------------------------------------------------------------------------------------
// Shape checking

fn lift(s: [usize; 3]) -> [usize; 4] {
    [s[0], s[1], 1, s[2]]
}

fn drop_h(s: [usize; 4]) -> [usize; 3] {
    [s[0], s[1], s[3]]
}

fn check_len<E>(op: &str, what: &str, data: &[E], shape: &[usize]) {
    let want: usize = shape.iter().product();
    assert!(data.len() == want, "{op}: {what} holds {} elements but its shape {shape:?} needs {want}", data.len());
}

fn check_out_shape(op: &str, got: &[usize], want: &[usize], input: &[usize]) {
    assert!(got == want, "{op}: grad_out shape {got:?} does not fit input {input:?} (expected {want:?})");
}

fn check_divisor(op: &str, divisor_override: Option<usize>) {
    assert!(divisor_override != Some(0), "{op}: divisor_override must be > 0, got 0");
}

fn check_adaptive(op: &str, shape: &[usize], output_size: &[usize]) {
    for (i, o) in shape[2..].iter().zip(output_size) {
        assert!(
            *o == 0 || *i > 0,
            "{op}: input {shape:?} has an empty spatial axis but the output size is {output_size:?}"
        );
    }
}

/// Geometry of one pooling: `n * c` planes of `h x w` pooled to `oh x ow`.
#[derive(Clone, Copy, Debug)]
struct Geom {
    planes: usize,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
}

impl Geom {
    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }
    fn in_plane(&self) -> usize {
        self.h * self.w
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    /// Whether to split the planes across the pool: there must be several, and enough work.
    fn parallel(&self) -> bool {
        let work = self.planes * self.out_plane() * self.kernel[0] * self.kernel[1];
        self.planes > 1
            && work.max(self.planes * self.in_plane()) >= parallel::elementwise_min()
            && parallel::get_num_threads() > 1
    }
}

/// Checks the pooling hyper-parameters as PyTorch's `pool2d_shape_check` does; `shown` is the
/// caller's own shape for messages (3-d for the 1-d ops).
fn geom(
    op: &str,
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
    shown: &[usize],
) -> Geom {
    // The 1-d ops show only the width entries.
    let sel = |a: [usize; 2]| -> String {
        if shown.len() == 3 {
            format!("{}", a[1])
        } else {
            format!("{a:?}")
        }
    };
    assert!(kernel[0] > 0 && kernel[1] > 0, "{op}: kernel size must be > 0, got {}", sel(kernel));
    assert!(stride[0] > 0 && stride[1] > 0, "{op}: stride must be > 0, got {}", sel(stride));
    assert!(dilation[0] > 0 && dilation[1] > 0, "{op}: dilation must be > 0, got {}", sel(dilation));
    assert!(
        padding[0] <= kernel[0] / 2 && padding[1] <= kernel[1] / 2,
        "{op}: padding {} must be at most half of kernel size {}",
        sel(padding),
        sel(kernel)
    );
    let f = |a: usize| {
        pool_out_len(shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode).unwrap_or_else(|| {
            panic!(
                "{op}: input {shown:?} is too small for kernel {} with stride {}, padding {}, dilation {}",
                sel(kernel),
                sel(stride),
                sel(padding),
                sel(dilation)
            )
        })
    };
    let (oh, ow) = (f(0), f(1));
    Geom {
        planes: shape[0] * shape[1],
        n: shape[0],
        c: shape[1],
        h: shape[2],
        w: shape[3],
        oh,
        ow,
        kernel,
        stride,
        pad: padding,
        dil: dilation,
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels

/// Runs `f(plane_index, out_plane)` over the consecutive `chunk`-element planes of `out`, on
/// kiln's pool when `parallel`.
fn for_each_plane<T: Send>(out: &mut [T], chunk: usize, parallel: bool, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if out.is_empty() || chunk == 0 {
        return;
    }
    if parallel {
        parallel::install(|threads| {
            if threads > 1 {
                out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
            } else {
                out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
            }
        });
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    }
}

/// First and one-past-last input row (or column) of output position `o`'s window clipped to
/// the input, before stepping over taps: `(start, end)` with `start` moved forward by whole
/// dilation steps until it is not negative, as PyTorch's CPU kernel does.
#[inline]
fn max_window(o: usize, stride: usize, pad: usize, kernel: usize, dil: usize, len: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + ((kernel - 1) * dil + 1) as isize).min(len as isize);
    let start = if start < 0 { start + (start.unsigned_abs().div_ceil(dil) * dil) as isize } else { start };
    (start as usize, end.max(0) as usize)
}

/// The common case of non-overlapping 2x2 windows (kernel 2, stride 2, no padding, dilation 1,
/// every window inside the input): no clipping, values and indices written straight to their
/// buffers. Same results as the general loop (the first maximum wins, a NaN wins, the last one
/// if several, as in PyTorch).
fn max_pool_2x2<E: Float>(x: &[E], g: &Geom, with_idx: bool) -> (Vec<E>, [usize; 4], Vec<usize>) {
    let (hw, ohw, w) = (g.in_plane(), g.out_plane(), g.w);
    let mut vals = crate::alloc::take_filled(g.planes * ohw, E::zero());
    let mut idx = if with_idx { vec![0usize; g.planes * ohw] } else { Vec::new() };
    // `idx` is empty when the indices are not wanted.
    let plane = |p: usize, vals: &mut [E], idx: &mut [usize]| {
        let src = &x[p * hw..(p + 1) * hw];
        for oy in 0..g.oh {
            let (top, bottom) = (2 * oy * w, (2 * oy + 1) * w);
            let (r0, r1) = (&src[top..top + 2 * g.ow], &src[bottom..bottom + 2 * g.ow]);
            let vrow = &mut vals[oy * g.ow..(oy + 1) * g.ow];
            let irow = if idx.is_empty() { &mut [][..] } else { &mut idx[oy * g.ow..(oy + 1) * g.ow] };
            let done = as_f32(r0)
                .zip(as_f32(r1))
                .zip(as_f32_mut(vrow))
                .map_or(0, |((r0, r1), vrow)| super::pool_avx2::max_pool_2x2_rows(r0, r1, top, bottom, vrow, irow));
            let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
            for (ox, (v, (a, b))) in vrow.iter_mut().zip(pairs).enumerate().skip(done) {
                // selects rather than branches: on real data the winner is unpredictable
                let (mut best, mut at) = (a[0], top + 2 * ox);
                for (c, j) in [(a[1], top + 2 * ox + 1), (b[0], bottom + 2 * ox), (b[1], bottom + 2 * ox + 1)] {
                    let take = c > best || c.is_nan();
                    best = if take { c } else { best };
                    at = if take { j } else { at };
                }
                *v = best;
                if let Some(i) = irow.get_mut(ox) {
                    *i = at;
                }
            }
        }
    };
    if ohw == 0 {
        return (vals, g.out_shape(), idx);
    }
    match (g.parallel(), with_idx) {
        (true, true) => parallel::install(|_| {
            vals.par_chunks_mut(ohw).zip(idx.par_chunks_mut(ohw)).enumerate().for_each(|(p, (v, i))| plane(p, v, i));
        }),
        (true, false) => parallel::install(|_| {
            vals.par_chunks_mut(ohw).enumerate().for_each(|(p, v)| plane(p, v, &mut []));
        }),
        (false, true) => {
            vals.chunks_mut(ohw).zip(idx.chunks_mut(ohw)).enumerate().for_each(|(p, (v, i))| plane(p, v, i))
        }
        (false, false) => vals.chunks_mut(ohw).enumerate().for_each(|(p, v)| plane(p, v, &mut [])),
    }
    (vals, g.out_shape(), idx)
}

/// `x` as `&[f32]` when `E` is `f32`.
fn as_f32<E: Float>(x: &[E]) -> Option<&[f32]> {
    (TypeId::of::<E>() == TypeId::of::<f32>()).then(|| {
        // SAFETY: E is f32 (checked above): same layout, same length.
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
    })
}

/// `x` as `&mut [f32]` when `E` is `f32`.
fn as_f32_mut<E: Float>(x: &mut [E]) -> Option<&mut [f32]> {
    (TypeId::of::<E>() == TypeId::of::<f32>()).then(|| {
        // SAFETY: E is f32 (checked above): same layout, same length, the borrow moves.
        unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
    })
}

/// The pooled values and, when `with_idx`, the indices (empty otherwise; the general loop
/// computes them either way).
fn max_pool_impl<E: Float>(x: &[E], g: &Geom, with_idx: bool) -> (Vec<E>, [usize; 4], Vec<usize>) {
    let simple = g.kernel == [2, 2] && g.stride == [2, 2] && g.pad == [0, 0] && g.dil == [1, 1];
    if simple && 2 * g.oh <= g.h && 2 * g.ow <= g.w {
        return max_pool_2x2(x, g, with_idx);
    }
    max_pool_general(x, g)
}

fn max_pool_general<E: Float>(x: &[E], g: &Geom) -> (Vec<E>, [usize; 4], Vec<usize>) {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    // Value and index side by side, so that one plane of each is one chunk.
    let mut out = vec![(E::zero(), 0usize); g.planes * ohw];
    for_each_plane(&mut out, ohw, g.parallel(), |p, out| {
        let plane = &x[p * hw..(p + 1) * hw];
        for oy in 0..g.oh {
            let (y0, y1) = max_window(oy, g.stride[0], g.pad[0], g.kernel[0], g.dil[0], g.h);
            for ox in 0..g.ow {
                let (x0, x1) = max_window(ox, g.stride[1], g.pad[1], g.kernel[1], g.dil[1], g.w);
                let mut best = E::neg_infinity();
                let mut at = if y0 < y1 && x0 < x1 { y0 * g.w + x0 } else { NO_INDEX };
                for iy in (y0..y1).step_by(g.dil[0]) {
                    for ix in (x0..x1).step_by(g.dil[1]) {
                        let i = iy * g.w + ix;
                        let v = plane[i];
                        if v > best || v.is_nan() {
                            best = v;
                            at = i;
                        }
                    }
                }
                out[oy * g.ow + ox] = (best, at);
            }
        }
    });
    let (vals, idx) = out.into_iter().unzip();
    (vals, g.out_shape(), idx)
}

fn max_pool_backward_impl<E: Float>(
    op: &str,
    gy: &[E],
    idx: &[usize],
    in_shape: &[usize],
    out_shape: &[usize],
) -> Vec<E> {
    assert!(in_shape[..2] == out_shape[..2], "{op}: grad_out shape {out_shape:?} does not fit input {in_shape:?}");
    check_len(op, "grad_out", gy, out_shape);
    check_len(op, "indices", idx, out_shape);
    let hw: usize = in_shape[2..].iter().product();
    let ohw: usize = out_shape[2..].iter().product();
    let planes = in_shape[0] * in_shape[1];
    let mut gx = crate::alloc::take_filled(planes * hw, E::zero());
    let par = planes > 1 && planes * hw.max(ohw) >= parallel::elementwise_min() && parallel::get_num_threads() > 1;
    for_each_plane(&mut gx, hw, par, |p, gx| {
        for (g, &i) in gy[p * ohw..(p + 1) * ohw].iter().zip(&idx[p * ohw..(p + 1) * ohw]) {
            if i == NO_INDEX {
                continue;
            }
            assert!(i < hw, "{op}: index {i} lies outside the input plane {:?} of {in_shape:?}", &in_shape[2..]);
            gx[i] += *g;
        }
    });
    gx
}

/// Clipped average-pool window of output position `o` along one axis: the input range it
/// covers, and the length it counts with `count_include_pad` (clipped to the padded input only).
#[inline]
fn avg_window(o: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min((len + pad) as isize);
    let padded_len = (end - start) as usize;
    (start.max(0) as usize, end.clamp(0, len as isize) as usize, padded_len)
}

/// The divisor of one average-pool window.
#[inline]
fn avg_divisor<E: Float>(
    rows: (usize, usize, usize),
    cols: (usize, usize, usize),
    include_pad: bool,
    over: Option<usize>,
) -> E {
    E::from_usize(match over {
        Some(d) => d,
        None if include_pad => rows.2 * cols.2,
        None => (rows.1 - rows.0) * (cols.1 - cols.0),
    })
}

fn avg_pool_impl<E: Float>(x: &[E], g: &Geom, include_pad: bool, over: Option<usize>) -> Vec<E> {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    let mut out = crate::alloc::take_filled(g.planes * ohw, E::zero());
    for_each_plane(&mut out, ohw, g.parallel(), |p, out| {
        let plane = &x[p * hw..(p + 1) * hw];
        for oy in 0..g.oh {
            let rows = avg_window(oy, g.stride[0], g.pad[0], g.kernel[0], g.h);
            for ox in 0..g.ow {
                let cols = avg_window(ox, g.stride[1], g.pad[1], g.kernel[1], g.w);
                if rows.0 >= rows.1 || cols.0 >= cols.1 {
                    continue; // a window wholly in the padding averages nothing: 0, as PyTorch
                }
                let mut sum = E::zero();
                for iy in rows.0..rows.1 {
                    sum += plane[iy * g.w + cols.0..iy * g.w + cols.1].iter().copied().sum::<E>();
                }
                out[oy * g.ow + ox] = sum / avg_divisor::<E>(rows, cols, include_pad, over);
            }
        }
    });
    out
}

fn avg_pool_backward_impl<E: Float>(gy: &[E], g: &Geom, include_pad: bool, over: Option<usize>) -> Vec<E> {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    let mut gx = crate::alloc::take_filled(g.planes * hw, E::zero());
    for_each_plane(&mut gx, hw, g.parallel(), |p, gx| {
        let gyp = &gy[p * ohw..(p + 1) * ohw];
        for oy in 0..g.oh {
            let rows = avg_window(oy, g.stride[0], g.pad[0], g.kernel[0], g.h);
            for ox in 0..g.ow {
                let cols = avg_window(ox, g.stride[1], g.pad[1], g.kernel[1], g.w);
                if rows.0 >= rows.1 || cols.0 >= cols.1 {
                    continue;
                }
                let v = gyp[oy * g.ow + ox] / avg_divisor::<E>(rows, cols, include_pad, over);
                for iy in rows.0..rows.1 {
                    for d in &mut gx[iy * g.w + cols.0..iy * g.w + cols.1] {
                        *d += v;
                    }
                }
            }
        }
    });
    gx
}

/// Bin `[floor(i * len / out), ceil((i + 1) * len / out))` of an adaptive pooling axis.
#[inline]
fn adaptive_bin(i: usize, out: usize, len: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

fn adaptive_parallel(planes: usize, in_plane: usize) -> bool {
    planes > 1 && planes * in_plane >= parallel::elementwise_min() && parallel::get_num_threads() > 1
}

fn adaptive_impl<E: Float>(x: &[E], s: &[usize; 4], o: &[usize; 4]) -> Vec<E> {
    let (planes, hw, ohw) = (s[0] * s[1], s[2] * s[3], o[2] * o[3]);
    let mut out = crate::alloc::take_filled(planes * ohw, E::zero());
    for_each_plane(&mut out, ohw, adaptive_parallel(planes, hw), |p, out| {
        let plane = &x[p * hw..(p + 1) * hw];
        for oy in 0..o[2] {
            let (y0, y1) = adaptive_bin(oy, o[2], s[2]);
            for ox in 0..o[3] {
                let (x0, x1) = adaptive_bin(ox, o[3], s[3]);
                let mut sum = E::zero();
                for iy in y0..y1 {
                    sum += plane[iy * s[3] + x0..iy * s[3] + x1].iter().copied().sum::<E>();
                }
                out[oy * o[3] + ox] = sum / E::from_usize((y1 - y0) * (x1 - x0));
            }
        }
    });
    out
}

fn adaptive_backward_impl<E: Float>(gy: &[E], s: &[usize; 4], o: &[usize; 4]) -> Vec<E> {
    let (planes, hw, ohw) = (s[0] * s[1], s[2] * s[3], o[2] * o[3]);
    let mut gx = crate::alloc::take_filled(planes * hw, E::zero());
    for_each_plane(&mut gx, hw, adaptive_parallel(planes, hw), |p, gx| {
        let gyp = &gy[p * ohw..(p + 1) * ohw];
        for oy in 0..o[2] {
            let (y0, y1) = adaptive_bin(oy, o[2], s[2]);
            for ox in 0..o[3] {
                let (x0, x1) = adaptive_bin(ox, o[3], s[3]);
                let v = gyp[oy * o[3] + ox] / E::from_usize((y1 - y0) * (x1 - x0));
                for iy in y0..y1 {
                    for d in &mut gx[iy * s[3] + x0..iy * s[3] + x1] {
                        *d += v;
                    }
                }
            }
        }
    });
    gx
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rand_vec(rng: &mut crate::Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Window count along one axis, by walking the windows: in floor mode a window must end
    /// inside the padded input; in ceil mode it may hang past the right padding as long as the
    /// previous window (at `-stride` for the first) did not reach the end and it starts inside
    /// the input or left padding.
    fn ref_out_len(len: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
        let span = d * (k - 1) + 1;
        let mut n = 0;
        loop {
            let start = n * s; // in padded coordinates
            let fits = start + span <= len + 2 * p;
            let prev_end = (n * s + span) as isize - s as isize; // end of window n - 1
            let ceil_ok = ceil && start < len + p && prev_end < (len + 2 * p) as isize;
            if fits || ceil_ok {
                n += 1;
            } else {
                return n;
            }
        }
    }

    /// The window taps of output `(oy, ox)` in padded coordinates, row-major, with `None` for
    /// the ones in the padding or past the input.
    fn taps(
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        d: [usize; 2],
    ) -> Vec<Option<usize>> {
        let mut t = vec![];
        for ki in 0..k[0] {
            for kj in 0..k[1] {
                let iy = (oy * s[0] + ki * d[0]) as isize - p[0] as isize;
                let ix = (ox * s[1] + kj * d[1]) as isize - p[1] as isize;
                let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                t.push(inside.then(|| iy as usize * w + ix as usize));
            }
        }
        t
    }

    #[derive(Clone, Debug)]
    struct Case {
        shape: [usize; 4],
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        d: [usize; 2],
        ceil: bool,
        seed: u64,
    }

    fn case(max_dil: usize) -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..3, [1usize..5, 1usize..5], [1usize..4, 1usize..4]),
            ([0usize..3, 0usize..3], [1usize..=max_dil, 1usize..=max_dil], [0usize..5, 0usize..5]),
            (any::<bool>(), 0u64..1 << 20),
        )
            .prop_map(|((n, c, k, s), (p, d, extra), (ceil, seed))| {
                let p = [p[0].min(k[0] / 2), p[1].min(k[1] / 2)];
                let size = |a: usize| (d[a] * (k[a] - 1) + 1).saturating_sub(2 * p[a]).max(1) + extra[a];
                Case { shape: [n, c, size(0), size(1)], k, s, p, d, ceil, seed }
            })
    }

    /// The 2x2 fast path (with and without indices) against the general loop: same shape,
    /// indices and bits (any NaN for a NaN).
    fn check_2x2_fast_path<E: Float>(x: &[E], shape: [usize; 4]) -> Result<(), TestCaseError> {
        let same = |a: &[E], b: &[E]| {
            a.iter()
                .zip(b)
                .all(|(a, b)| Float::to_f64(*a).to_bits() == Float::to_f64(*b).to_bits() || (a.is_nan() && b.is_nan()))
        };
        let g = geom("max_pool2d", shape, [2, 2], [2, 2], [0, 0], [1, 1], false, &shape);
        let (fv, fs, fi) = max_pool_2x2(x, &g, true);
        let (gv, gs, gi) = max_pool_general(x, &g);
        prop_assert_eq!(fs, gs);
        prop_assert_eq!(&fi, &gi);
        prop_assert!(same(&fv, &gv));
        let (ov, os) = max_pool2d_forward_values(x, shape, [2, 2], [2, 2], [0, 0], [1, 1], false);
        prop_assert_eq!(os, gs);
        prop_assert!(same(&ov, &gv));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn max_pool_2x2_fast_path_matches_the_general_loop(
            n in 1usize..3, c in 1usize..4, h in 2usize..9, w in 2usize..45, seed in 0u64..1 << 20, kind in 0u8..3,
        ) {
            // f64 takes the scalar loop, f32 the vector row kernel where the CPU has it
            let mut rng = crate::Rng::new(seed);
            // ties (small integers), NaNs, or plain values
            let x: Vec<f64> = (0..n * c * h * w)
                .map(|_| match kind {
                    0 => (rng.below(3) as f64) - 1.0,
                    1 if rng.below(4) == 0 => f64::NAN,
                    _ => rng.next_f64() * 2.0 - 1.0,
                })
                .collect();
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            check_2x2_fast_path(&x, [n, c, h, w])?;
            check_2x2_fast_path(&x32, [n, c, h, w])?;
        }

        #[test]
        fn max_pool2d_matches_direct_loops(c in case(3), small_ints: bool) {
            let mut rng = crate::Rng::new(c.seed);
            let len = c.shape.iter().product();
            // Small integers make ties, which must go to the first maximum.
            let x: Vec<f64> = if small_ints {
                (0..len).map(|_| (rng.next_f64() * 3.0).floor()).collect()
            } else {
                rand_vec(&mut rng, len)
            };
            let (y, ys, idx) = max_pool2d_forward(&x, c.shape, c.k, c.s, c.p, c.d, c.ceil);
            let [n, ch, h, w] = c.shape;
            let oh = ref_out_len(h, c.k[0], c.s[0], c.p[0], c.d[0], c.ceil);
            let ow = ref_out_len(w, c.k[1], c.s[1], c.p[1], c.d[1], c.ceil);
            prop_assert_eq!(ys, [n, ch, oh, ow]);
            let mut want_gx = vec![0.0; len];
            let gy = rand_vec(&mut rng, y.len());
            for pl in 0..n * ch {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let o = pl * oh * ow + oy * ow + ox;
                        let mut best: Option<(f64, usize)> = None;
                        for t in taps(oy, ox, h, w, c.k, c.s, c.p, c.d).into_iter().flatten() {
                            let v = x[pl * h * w + t];
                            if best.is_none_or(|(b, _)| v > b) {
                                best = Some((v, t));
                            }
                        }
                        match best {
                            Some((v, t)) => {
                                prop_assert_eq!(y[o], v);
                                prop_assert_eq!(idx[o], t);
                                want_gx[pl * h * w + t] += gy[o];
                            }
                            None => {
                                prop_assert_eq!(y[o], f64::NEG_INFINITY);
                                prop_assert_eq!(idx[o], NO_INDEX);
                            }
                        }
                    }
                }
            }
            let gx = max_pool2d_backward(&gy, &idx, c.shape, ys);
            for (a, b) in gx.iter().zip(&want_gx) {
                prop_assert!((a - b).abs() < 1e-12);
            }
        }

        #[test]
        fn avg_pool2d_matches_direct_loops(c in case(1), include_pad: bool, over in proptest::option::of(1usize..7)) {
            let mut rng = crate::Rng::new(c.seed);
            let len = c.shape.iter().product();
            let x = rand_vec(&mut rng, len);
            let (y, ys) = avg_pool2d_forward(&x, c.shape, c.k, c.s, c.p, c.ceil, include_pad, over);
            let [n, ch, h, w] = c.shape;
            let oh = ref_out_len(h, c.k[0], c.s[0], c.p[0], 1, c.ceil);
            let ow = ref_out_len(w, c.k[1], c.s[1], c.p[1], 1, c.ceil);
            prop_assert_eq!(ys, [n, ch, oh, ow]);
            let gy = rand_vec(&mut rng, y.len());
            let mut want_gx = vec![0.0; len];
            for pl in 0..n * ch {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let o = pl * oh * ow + oy * ow + ox;
                        let t = taps(oy, ox, h, w, c.k, c.s, c.p, [1, 1]);
                        let inside: Vec<usize> = t.iter().flatten().copied().collect();
                        // Taps inside the padded input [-p, len + p) on both axes.
                        let mut in_padded = 0;
                        for ki in 0..c.k[0] {
                            for kj in 0..c.k[1] {
                                if oy * c.s[0] + ki < h + 2 * c.p[0] && ox * c.s[1] + kj < w + 2 * c.p[1] {
                                    in_padded += 1;
                                }
                            }
                        }
                        let div = match over {
                            Some(d) => d,
                            None if include_pad => in_padded,
                            None => inside.len(),
                        } as f64;
                        let want = inside.iter().map(|&i| x[pl * h * w + i]).sum::<f64>() / div;
                        prop_assert!((y[o] - want).abs() < 1e-12, "y[{}] = {} want {}", o, y[o], want);
                        for &i in &inside {
                            want_gx[pl * h * w + i] += gy[o] / div;
                        }
                    }
                }
            }
            let gx = avg_pool2d_backward(&gy, ys, c.shape, c.k, c.s, c.p, c.ceil, include_pad, over);
            for (a, b) in gx.iter().zip(&want_gx) {
                prop_assert!((a - b).abs() < 1e-12);
            }
            // linear, so <gy, pool(x)> = <pool_backward(gy), x>
            prop_assert!((dot(&gy, &y) - dot(&gx, &x)).abs() < 1e-10);
        }

        #[test]
        fn adaptive_avg_pool2d_matches_direct_loops(n in 1usize..3, ch in 1usize..3, h in 1usize..9, w in 1usize..9,
                                                    oh in 1usize..6, ow in 1usize..6, seed in 0u64..1000) {
            let mut rng = crate::Rng::new(seed);
            let shape = [n, ch, h, w];
            let x = rand_vec(&mut rng, shape.iter().product());
            let (y, ys) = adaptive_avg_pool2d_forward(&x, shape, [oh, ow]);
            prop_assert_eq!(ys, [n, ch, oh, ow]);
            let bin = |i: usize, o: usize, len: usize| {
                let lo = ((i * len) as f64 / o as f64).floor() as usize;
                let hi = (((i + 1) * len) as f64 / o as f64).ceil() as usize;
                lo..hi
            };
            let gy = rand_vec(&mut rng, y.len());
            let mut want_gx = vec![0.0; x.len()];
            for pl in 0..n * ch {
                for i in 0..oh {
                    for j in 0..ow {
                        let cells: Vec<usize> = bin(i, oh, h).flat_map(|a| bin(j, ow, w).map(move |b| a * w + b)).collect();
                        let want = cells.iter().map(|&c| x[pl * h * w + c]).sum::<f64>() / cells.len() as f64;
                        let o = pl * oh * ow + i * ow + j;
                        prop_assert!((y[o] - want).abs() < 1e-12);
                        for &c in &cells {
                            want_gx[pl * h * w + c] += gy[o] / cells.len() as f64;
                        }
                    }
                }
            }
            let gx = adaptive_avg_pool2d_backward(&gy, ys, shape);
            for (a, b) in gx.iter().zip(&want_gx) {
                prop_assert!((a - b).abs() < 1e-12);
            }
        }

        #[test]
        fn pool1d_is_pool2d_over_height_one(n in 1usize..3, ch in 1usize..3, l in 1usize..12, k in 1usize..4, s in 1usize..4,
                                           p in 0usize..2, d in 1usize..3, ceil: bool, include_pad: bool, o in 1usize..5, seed in 0u64..1000) {
            let p = p.min(k / 2);
            prop_assume!(pool_out_len(l, k, s, p, d, ceil).is_some());
            let mut rng = crate::Rng::new(seed);
            let x = rand_vec(&mut rng, n * ch * l);
            let (y1, s1, i1) = max_pool1d_forward(&x, [n, ch, l], k, s, p, d, ceil);
            let (y2, s2, i2) = max_pool2d_forward(&x, [n, ch, 1, l], [1, k], [1, s], [0, p], [1, d], ceil);
            prop_assert_eq!((&y1, &i1, s1), (&y2, &i2, [s2[0], s2[1], s2[3]]));
            let gy = rand_vec(&mut rng, y1.len());
            prop_assert_eq!(max_pool1d_backward(&gy, &i1, [n, ch, l], s1), max_pool2d_backward(&gy, &i2, [n, ch, 1, l], s2));
            if pool_out_len(l, k, s, p, 1, ceil).is_some() {
                let (y1, s1) = avg_pool1d_forward(&x, [n, ch, l], k, s, p, ceil, include_pad);
                let (y2, s2) = avg_pool2d_forward(&x, [n, ch, 1, l], [1, k], [1, s], [0, p], ceil, include_pad, None);
                prop_assert_eq!((&y1, s1), (&y2, [s2[0], s2[1], s2[3]]));
                let gy = rand_vec(&mut rng, y1.len());
                prop_assert_eq!(
                    avg_pool1d_backward(&gy, s1, [n, ch, l], k, s, p, ceil, include_pad),
                    avg_pool2d_backward(&gy, s2, [n, ch, 1, l], [1, k], [1, s], [0, p], ceil, include_pad, None)
                );
            }
            let (y1, s1) = adaptive_avg_pool1d_forward(&x, [n, ch, l], o);
            let (y2, s2) = adaptive_avg_pool2d_forward(&x, [n, ch, 1, l], [1, o]);
            prop_assert_eq!((&y1, s1), (&y2, [s2[0], s2[1], s2[3]]));
            let gy = rand_vec(&mut rng, y1.len());
            prop_assert_eq!(adaptive_avg_pool1d_backward(&gy, s1, [n, ch, l]), adaptive_avg_pool2d_backward(&gy, s2, [n, ch, 1, l]));
        }
    }

    #[test]
    fn output_lengths_follow_pytorch() {
        // Values from torch.nn.MaxPool2d / AvgPool2d output shapes.
        assert_eq!(pool_out_len(8, 2, 2, 0, 1, false), Some(4));
        assert_eq!(pool_out_len(9, 3, 2, 1, 1, false), Some(5));
        assert_eq!(pool_out_len(8, 3, 2, 1, 1, false), Some(4));
        assert_eq!(pool_out_len(6, 3, 2, 0, 1, false), Some(2));
        assert_eq!(pool_out_len(6, 3, 2, 0, 1, true), Some(3));
        assert_eq!(pool_out_len(6, 3, 2, 1, 1, true), Some(4));
        assert_eq!(pool_out_len(10, 3, 2, 1, 2, false), Some(4));
        assert_eq!(pool_out_len(2, 3, 1, 0, 1, false), None);
        for len in 1..12 {
            for k in 1..5 {
                for s in 1..4 {
                    for p in 0..=k / 2 {
                        for d in 1..3 {
                            for ceil in [false, true] {
                                let want = ref_out_len(len, k, s, p, d, ceil);
                                assert_eq!(
                                    pool_out_len(len, k, s, p, d, ceil),
                                    (want > 0).then_some(want),
                                    "{len} {k} {s} {p} {d} {ceil}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn max_pool_propagates_nan_and_handles_empty_windows() {
        let x = [1.0, f64::NAN, 3.0, f64::NAN, 0.5, 2.0];
        let (y, _, idx) = max_pool1d_forward(&x, [1, 1, 6], 6, 1, 0, 1, false);
        assert!(y[0].is_nan());
        assert_eq!(idx, vec![3]); // PyTorch keeps the last NaN
                                  // width 1, kernel 2, dilation 2, padding 1: taps at -1 and 1, neither inside
        let (y, s, idx) = max_pool1d_forward(&[5.0f64], [1, 1, 1], 2, 1, 1, 2, false);
        assert_eq!((y, s, idx.clone()), (vec![f64::NEG_INFINITY], [1, 1, 1], vec![NO_INDEX]));
        assert_eq!(max_pool1d_backward(&[1.0f64], &idx, [1, 1, 1], s), vec![0.0]);
    }

    #[test]
    fn large_input_takes_the_parallel_path_and_agrees() {
        let shape = [4, 8, 40, 40]; // 51200 elements: the split is forced below
        let mut rng = crate::Rng::new(9);
        let x = rand_vec(&mut rng, shape.iter().product());
        let run = || {
            let (m, ms, i) = max_pool2d_forward(&x, shape, [3, 3], [2, 2], [1, 1], [1, 1], true);
            let gm = max_pool2d_backward(&m, &i, shape, ms);
            let (a, as_) = avg_pool2d_forward(&x, shape, [3, 3], [2, 2], [1, 1], true, false, None);
            let ga = avg_pool2d_backward(&a, as_, shape, [3, 3], [2, 2], [1, 1], true, false, None);
            let (q, qs) = adaptive_avg_pool2d_forward(&x, shape, [7, 5]);
            let gq = adaptive_avg_pool2d_backward(&q, qs, shape);
            (m, i, gm, a, ga, q, gq)
        };
        crate::set_num_threads(1);
        let one = run();
        crate::set_num_threads(2);
        assert!(crate::parallel::with_elementwise_threshold(1, run) == one);
    }

    #[test]
    fn f32_pools_match_f64() {
        let shape = [2, 3, 7, 6];
        let mut rng = crate::Rng::new(4);
        let x = rand_vec(&mut rng, shape.iter().product());
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let (a, _, ia) = max_pool2d_forward(&x, shape, [3, 2], [2, 2], [1, 1], [1, 2], true);
        let (b, _, ib) = max_pool2d_forward(&x32, shape, [3, 2], [2, 2], [1, 1], [1, 2], true);
        assert_eq!(ia, ib);
        assert!(a.iter().zip(&b).all(|(a, b)| (a - f64::from(*b)).abs() < 1e-6));
        let (a, _) = avg_pool2d_forward(&x, shape, [3, 3], [2, 1], [1, 0], false, true, None);
        let (b, _) = avg_pool2d_forward(&x32, shape, [3, 3], [2, 1], [1, 0], false, true, None);
        assert!(a.iter().zip(&b).all(|(a, b)| (a - f64::from(*b)).abs() < 1e-6));
        let (a, _) = adaptive_avg_pool2d_forward(&x, shape, [4, 4]);
        let (b, _) = adaptive_avg_pool2d_forward(&x32, shape, [4, 4]);
        assert!(a.iter().zip(&b).all(|(a, b)| (a - f64::from(*b)).abs() < 1e-6));
    }

    #[test]
    #[should_panic(expected = "max_pool2d: padding [2, 0] must be at most half of kernel size [3, 3]")]
    fn padding_beyond_half_the_kernel_panics() {
        let _ = max_pool2d_forward(&[0.0f64; 16], [1, 1, 4, 4], [3, 3], [1, 1], [2, 0], [1, 1], false);
    }

    #[test]
    #[should_panic(
        expected = "avg_pool1d: input [1, 2, 2] is too small for kernel 3 with stride 1, padding 0, dilation 1"
    )]
    fn too_small_input_names_the_1d_shape() {
        let _ = avg_pool1d_forward(&[0.0f64; 4], [1, 2, 2], 3, 1, 0, false, true);
    }

    #[test]
    #[should_panic(expected = "max_pool2d_backward: grad_out holds 3 elements but its shape [1, 1, 2, 2] needs 4")]
    fn backward_checks_lengths() {
        let _ = max_pool2d_backward(&[0.0f64; 3], &[0; 4], [1, 1, 4, 4], [1, 1, 2, 2]);
    }
}
