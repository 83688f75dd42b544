//! Convolution methods of [`Tensor`]: `conv1d`, `conv2d`, `conv_transpose2d` and their
//! gradients, as thin wrappers over the slice kernels of [`crate::kernels::conv`].
//!
//! Shapes follow PyTorch (`[N, C, H, W]` inputs, `[out, in / groups, kh, kw]` conv weights,
//! `[in, out / groups, kh, kw]` transposed-conv weights); as in PyTorch an input may also be
//! unbatched (`[C, H, W]` for 2-d, `[C, L]` for 1-d), which gives an unbatched result. Inputs
//! of any layout are accepted; non-contiguous ones are copied to row-major first.

use crate::element::Float;
use crate::kernels::conv::{self as kernel, Conv1dParams, Conv2dParams, ConvTranspose2dParams};
use crate::tensor::Tensor;

/// `shape` as an `N`-d batched shape, adding a batch of 1 to an unbatched `(N-1)`-d one; the
/// flag says whether it was unbatched.
pub(crate) fn batched<const N: usize>(op: &str, what: &str, shape: &[usize], layout: &str) -> ([usize; N], bool) {
    if shape.len() == N {
        (shape.try_into().expect("length checked"), false)
    } else if shape.len() + 1 == N {
        let mut s = [1; N];
        s[1..].copy_from_slice(shape);
        (s, true)
    } else {
        panic!("{op}: {what} must be {layout}, got {shape:?}")
    }
}

/// `shape` as an `N`-d shape, which it must be.
pub(crate) fn exact<const N: usize>(op: &str, what: &str, shape: &[usize], layout: &str) -> [usize; N] {
    shape.try_into().unwrap_or_else(|_| panic!("{op}: {what} must be {layout}, got {shape:?}"))
}

/// A tensor of `data` with the batched `shape`, dropping the batch axis again if the input was
/// unbatched.
pub(crate) fn finish<E: Float>(data: Vec<E>, shape: &[usize], unbatched: bool) -> Tensor<E> {
    Tensor::from_vec(data, if unbatched { &shape[1..] } else { shape })
}

/// The row-major elements of a contiguous tensor.
pub(crate) fn slice_of<E: Float>(t: &Tensor<E>) -> &[E] {
    t.as_slice().expect("contiguous tensor")
}

const IN2: &str = "[N, C, H, W] or [C, H, W]";
const IN1: &str = "[N, C, L] or [C, L]";
const W2: &str = "[out_channels, in_channels / groups, kh, kw]";
const WT2: &str = "[in_channels, out_channels / groups, kh, kw]";
const W1: &str = "[out_channels, in_channels / groups, k]";

/// The contiguous bias, checked to be 1-d.
fn bias_of<E: Float>(op: &str, bias: Option<&Tensor<E>>) -> Option<Tensor<E>> {
    bias.map(|b| {
        assert!(b.ndim() == 1, "{op}: bias must be [out_channels], got {:?}", b.shape());
        b.contiguous()
    })
}

impl<E: Float> Tensor<E> {
    /// 2-d convolution (cross-correlation) of `self` with `weight`, plus `bias`, as
    /// `torch.nn.functional.conv2d`.
    ///
    /// `self` is `[N, C, H, W]` (or unbatched `[C, H, W]`), `weight` is
    /// `[O, C / groups, kh, kw]`, `bias` is `[O]`. The result is `[N, O, out_h, out_w]` with
    /// `out = floor((in + 2 * padding - dilation * (k - 1) - 1) / stride) + 1`.
    ///
    /// **Panics** with the op and shapes if a tensor has the wrong rank, the channel counts do
    /// not match, `groups` does not divide the channels, or the padded input is smaller than
    /// the dilated kernel.
    ///
    /// ```
    /// use kiln_tensor::kernels::conv::Conv2dParams;
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f64>::ones(&[2, 3, 8, 8]);
    /// let w = Tensor::<f64>::ones(&[4, 3, 3, 3]);
    /// let b = Tensor::from_vec(vec![0.0, 1.0, 2.0, 3.0], &[4]);
    /// let y = x.conv2d(&w, Some(&b), &Conv2dParams { stride: [2, 2], padding: [1, 1], ..Default::default() });
    /// assert_eq!(y.shape(), &[2, 4, 4, 4]);
    /// assert_eq!(y.get(&[0, 1, 1, 1]), 27.0 + 1.0); // a full 3x3x3 window of ones
    /// assert_eq!(y.get(&[0, 0, 0, 0]), 12.0); // the corner window overlaps 2x2 of the input
    /// ```
    #[must_use]
    pub fn conv2d(&self, weight: &Tensor<E>, bias: Option<&Tensor<E>>, p: &Conv2dParams) -> Tensor<E> {
        let op = "conv2d";
        let (xs, unbatched) = batched::<4>(op, "input", self.shape(), IN2);
        let ws = exact::<4>(op, "weight", weight.shape(), W2);
        let (x, w, b) = (self.contiguous(), weight.contiguous(), bias_of(op, bias));
        let (out, os) = kernel::conv2d_forward(slice_of(&x), xs, slice_of(&w), ws, b.as_ref().map(slice_of), p);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`conv2d`](Tensor::conv2d) with respect to its input, with `self` the
    /// gradient of the output: `grad_out.conv2d_backward_input(&weight, x.shape(), &p)`.
    ///
    /// Returns a tensor of `input_shape` (batched or not, as the forward input was).
    ///
    /// **Panics** if the shapes are not those of a `conv2d` forward pass with these parameters.
    #[must_use]
    pub fn conv2d_backward_input(&self, weight: &Tensor<E>, input_shape: &[usize], p: &Conv2dParams) -> Tensor<E> {
        let op = "conv2d_backward_input";
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, unbatched) = batched::<4>(op, "input shape", input_shape, IN2);
        let ws = exact::<4>(op, "weight", weight.shape(), W2);
        let (g, w) = (self.contiguous(), weight.contiguous());
        finish(kernel::conv2d_backward_input(slice_of(&g), gs, slice_of(&w), ws, xs, p), &xs, unbatched)
    }

    /// Gradient of [`conv2d`](Tensor::conv2d) with respect to its weight, with `self` the
    /// gradient of the output: `grad_out.conv2d_backward_weight(&x, weight.shape(), &p)`.
    ///
    /// Returns a tensor of `weight_shape`.
    ///
    /// **Panics** if the shapes are not those of a `conv2d` forward pass with these parameters.
    #[must_use]
    pub fn conv2d_backward_weight(&self, input: &Tensor<E>, weight_shape: &[usize], p: &Conv2dParams) -> Tensor<E> {
        let op = "conv2d_backward_weight";
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, _) = batched::<4>(op, "input", input.shape(), IN2);
        let ws = exact::<4>(op, "weight shape", weight_shape, W2);
        let (g, x) = (self.contiguous(), input.contiguous());
        Tensor::from_vec(kernel::conv2d_backward_weight(slice_of(&g), gs, slice_of(&x), xs, ws, p), &ws)
    }

    /// Gradient of [`conv2d`](Tensor::conv2d) or [`conv_transpose2d`](Tensor::conv_transpose2d)
    /// with respect to its bias, with `self` the gradient of the output (`[N, O, H, W]` or
    /// `[O, H, W]`): the sum over every axis but the channel one, shape `[O]`.
    ///
    /// **Panics** if `self` is neither 4-d nor 3-d.
    #[must_use]
    pub fn conv2d_backward_bias(&self) -> Tensor<E> {
        let (gs, _) = batched::<4>("conv2d_backward_bias", "grad_out", self.shape(), IN2);
        let g = self.contiguous();
        Tensor::from_vec(kernel::conv2d_backward_bias(slice_of(&g), gs), &[gs[1]])
    }

    /// 2-d transposed convolution of `self` with `weight`, plus `bias`, as
    /// `torch.nn.functional.conv_transpose2d`: the gradient of a `conv2d` with respect to its
    /// input, applied to `self`.
    ///
    /// `self` is `[N, C, H, W]` (or unbatched `[C, H, W]`), `weight` is `[C, O / groups, kh, kw]`,
    /// `bias` is `[O]`. The result is `[N, O, out_h, out_w]` with
    /// `out = (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`.
    ///
    /// **Panics** with the op and shapes if a tensor has the wrong rank, the channel counts do
    /// not match, `groups` does not divide the channels, an `output_padding` is not smaller than
    /// its stride or dilation, or the output would be empty.
    ///
    /// ```
    /// use kiln_tensor::kernels::conv::ConvTranspose2dParams;
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f64>::ones(&[1, 3, 5, 4]);
    /// let w = Tensor::<f64>::ones(&[3, 4, 3, 3]);
    /// let p = ConvTranspose2dParams { stride: [2, 2], padding: [1, 1], output_padding: [1, 1], ..Default::default() };
    /// assert_eq!(x.conv_transpose2d(&w, None, &p).shape(), &[1, 4, 10, 8]);
    /// ```
    #[must_use]
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor<E>,
        bias: Option<&Tensor<E>>,
        p: &ConvTranspose2dParams,
    ) -> Tensor<E> {
        let op = "conv_transpose2d";
        let (xs, unbatched) = batched::<4>(op, "input", self.shape(), IN2);
        let ws = exact::<4>(op, "weight", weight.shape(), WT2);
        let (x, w, b) = (self.contiguous(), weight.contiguous(), bias_of(op, bias));
        let (out, os) =
            kernel::conv_transpose2d_forward(slice_of(&x), xs, slice_of(&w), ws, b.as_ref().map(slice_of), p);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`conv_transpose2d`](Tensor::conv_transpose2d) with respect to its input,
    /// with `self` the gradient of the output: a `conv2d` of `self` with the same weight.
    ///
    /// Returns a tensor of `input_shape` (batched or not, as the forward input was).
    ///
    /// **Panics** if the shapes are not those of a `conv_transpose2d` forward pass with these
    /// parameters.
    #[must_use]
    pub fn conv_transpose2d_backward_input(
        &self,
        weight: &Tensor<E>,
        input_shape: &[usize],
        p: &ConvTranspose2dParams,
    ) -> Tensor<E> {
        let op = "conv_transpose2d_backward_input";
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, unbatched) = batched::<4>(op, "input shape", input_shape, IN2);
        let ws = exact::<4>(op, "weight", weight.shape(), WT2);
        let (g, w) = (self.contiguous(), weight.contiguous());
        finish(kernel::conv_transpose2d_backward_input(slice_of(&g), gs, slice_of(&w), ws, xs, p), &xs, unbatched)
    }

    /// Gradient of [`conv_transpose2d`](Tensor::conv_transpose2d) with respect to its weight,
    /// with `self` the gradient of the output. Returns a tensor of `weight_shape`; the bias
    /// gradient is [`conv2d_backward_bias`](Tensor::conv2d_backward_bias).
    ///
    /// **Panics** if the shapes are not those of a `conv_transpose2d` forward pass with these
    /// parameters.
    #[must_use]
    pub fn conv_transpose2d_backward_weight(
        &self,
        input: &Tensor<E>,
        weight_shape: &[usize],
        p: &ConvTranspose2dParams,
    ) -> Tensor<E> {
        let op = "conv_transpose2d_backward_weight";
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, _) = batched::<4>(op, "input", input.shape(), IN2);
        let ws = exact::<4>(op, "weight shape", weight_shape, WT2);
        let (g, x) = (self.contiguous(), input.contiguous());
        Tensor::from_vec(kernel::conv_transpose2d_backward_weight(slice_of(&g), gs, slice_of(&x), xs, ws, p), &ws)
    }

    /// 1-d convolution of `self` with `weight`, plus `bias`, as `torch.nn.functional.conv1d`.
    ///
    /// `self` is `[N, C, L]` (or unbatched `[C, L]`), `weight` is `[O, C / groups, k]`, `bias` is
    /// `[O]`; the result is `[N, O, out_l]`.
    ///
    /// **Panics** as [`conv2d`](Tensor::conv2d) does, naming `conv1d`.
    #[must_use]
    pub fn conv1d(&self, weight: &Tensor<E>, bias: Option<&Tensor<E>>, p: &Conv1dParams) -> Tensor<E> {
        let op = "conv1d";
        let (xs, unbatched) = batched::<3>(op, "input", self.shape(), IN1);
        let ws = exact::<3>(op, "weight", weight.shape(), W1);
        let (x, w, b) = (self.contiguous(), weight.contiguous(), bias_of(op, bias));
        let (out, os) = kernel::conv1d_forward(slice_of(&x), xs, slice_of(&w), ws, b.as_ref().map(slice_of), p);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`conv1d`](Tensor::conv1d) with respect to its input, with `self` the
    /// gradient of the output. Returns a tensor of `input_shape`.
    ///
    /// **Panics** if the shapes are not those of a `conv1d` forward pass with these parameters.
    #[must_use]
    pub fn conv1d_backward_input(&self, weight: &Tensor<E>, input_shape: &[usize], p: &Conv1dParams) -> Tensor<E> {
        let op = "conv1d_backward_input";
        let (gs, _) = batched::<3>(op, "grad_out", self.shape(), IN1);
        let (xs, unbatched) = batched::<3>(op, "input shape", input_shape, IN1);
        let ws = exact::<3>(op, "weight", weight.shape(), W1);
        let (g, w) = (self.contiguous(), weight.contiguous());
        finish(kernel::conv1d_backward_input(slice_of(&g), gs, slice_of(&w), ws, xs, p), &xs, unbatched)
    }

    /// Gradient of [`conv1d`](Tensor::conv1d) with respect to its weight, with `self` the
    /// gradient of the output. Returns a tensor of `weight_shape`.
    ///
    /// **Panics** if the shapes are not those of a `conv1d` forward pass with these parameters.
    #[must_use]
    pub fn conv1d_backward_weight(&self, input: &Tensor<E>, weight_shape: &[usize], p: &Conv1dParams) -> Tensor<E> {
        let op = "conv1d_backward_weight";
        let (gs, _) = batched::<3>(op, "grad_out", self.shape(), IN1);
        let (xs, _) = batched::<3>(op, "input", input.shape(), IN1);
        let ws = exact::<3>(op, "weight shape", weight_shape, W1);
        let (g, x) = (self.contiguous(), input.contiguous());
        Tensor::from_vec(kernel::conv1d_backward_weight(slice_of(&g), gs, slice_of(&x), xs, ws, p), &ws)
    }

    /// Gradient of [`conv1d`](Tensor::conv1d) with respect to its bias, with `self` the gradient
    /// of the output (`[N, O, L]` or `[O, L]`): the sum over every axis but the channel one.
    ///
    /// **Panics** if `self` is neither 3-d nor 2-d.
    #[must_use]
    pub fn conv1d_backward_bias(&self) -> Tensor<E> {
        let (gs, _) = batched::<3>("conv1d_backward_bias", "grad_out", self.shape(), IN1);
        let g = self.contiguous();
        Tensor::from_vec(kernel::conv1d_backward_bias(slice_of(&g), gs), &[gs[1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn randn(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
        Tensor::randn(shape, rng)
    }

    /// A non-contiguous tensor equal to `t`: `t`'s data stored with the last two axes swapped,
    /// viewed back.
    fn strided(t: &Tensor<f64>) -> Tensor<f64> {
        let nd = t.ndim() as isize;
        let v = t.transpose(nd - 2, nd - 1).contiguous().transpose(nd - 2, nd - 1);
        assert!(!v.is_contiguous() && v == *t);
        v
    }

    fn close(a: &Tensor<f64>, b: &Tensor<f64>) {
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.to_vec().iter().zip(b.to_vec()) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }

    #[test]
    fn conv2d_methods_match_the_kernels_on_strided_and_unbatched_inputs() {
        let mut rng = Rng::new(1);
        let p = Conv2dParams { stride: [2, 1], padding: [1, 1], dilation: [1, 2], groups: 2 };
        let (x, w, b) = (randn(&[2, 4, 7, 6], &mut rng), randn(&[6, 2, 3, 2], &mut rng), randn(&[6], &mut rng));
        let (want, ys) =
            kernel::conv2d_forward(&x.to_vec(), [2, 4, 7, 6], &w.to_vec(), [6, 2, 3, 2], Some(&b.to_vec()), &p);
        let y = strided(&x).conv2d(&strided(&w), Some(&b), &p);
        assert_eq!(y.shape(), &ys);
        close(&y, &Tensor::from_vec(want, &ys));

        let gy = randn(y.shape(), &mut rng);
        let gx = strided(&gy).conv2d_backward_input(&strided(&w), x.shape(), &p);
        let want = kernel::conv2d_backward_input(&gy.to_vec(), ys, &w.to_vec(), [6, 2, 3, 2], [2, 4, 7, 6], &p);
        close(&gx, &Tensor::from_vec(want, x.shape()));
        let gw = strided(&gy).conv2d_backward_weight(&strided(&x), w.shape(), &p);
        let want = kernel::conv2d_backward_weight(&gy.to_vec(), ys, &x.to_vec(), [2, 4, 7, 6], [6, 2, 3, 2], &p);
        close(&gw, &Tensor::from_vec(want, w.shape()));
        close(&gy.conv2d_backward_bias(), &gy.sum(&[0, 2, 3], false));

        // unbatched [C, H, W] is the batch of one, without the batch axis
        let x0 = x.select(0, 0);
        let y0 = x0.conv2d(&w, Some(&b), &p);
        close(&y0, &y.select(0, 0));
        let gy0 = gy.select(0, 0);
        close(
            &gy0.conv2d_backward_input(&w, x0.shape(), &p),
            &gy.narrow(0, 0, 1).conv2d_backward_input(&w, &[1, 4, 7, 6], &p).select(0, 0),
        );
        close(
            &gy0.conv2d_backward_weight(&x0, w.shape(), &p),
            &gy.narrow(0, 0, 1).conv2d_backward_weight(&x.narrow(0, 0, 1), w.shape(), &p),
        );
        close(&gy0.conv2d_backward_bias(), &gy0.sum(&[1, 2], false));
    }

    #[test]
    fn conv_transpose2d_methods_are_the_conv2d_adjoints() {
        let mut rng = Rng::new(2);
        let p = Conv2dParams { stride: [2, 2], padding: [1, 0], groups: 2, ..Default::default() };
        let tp = ConvTranspose2dParams { stride: p.stride, padding: p.padding, groups: 2, ..Default::default() };
        // conv2d [2, 4, 7, 6] -> [2, 6, 4, 2] with weight [6, 2, 3, 3]; its transpose goes back.
        let w = randn(&[6, 2, 3, 3], &mut rng);
        let t = randn(&[2, 6, 4, 2], &mut rng);
        let b = randn(&[4], &mut rng);
        let z = strided(&t).conv_transpose2d(&strided(&w), Some(&b), &tp);
        assert_eq!(z.shape(), &[2, 4, 7, 5]);
        let no_bias = t.conv_transpose2d(&w, None, &tp);
        close(&z, &(&no_bias + &b.reshape(&[4, 1, 1])));
        close(&no_bias, &t.conv2d_backward_input(&w, &[2, 4, 7, 5], &p));

        let gz = randn(z.shape(), &mut rng);
        close(&strided(&gz).conv_transpose2d_backward_input(&w, t.shape(), &tp), &gz.conv2d(&w, None, &p));
        close(
            &strided(&gz).conv_transpose2d_backward_weight(&strided(&t), w.shape(), &tp),
            &t.conv2d_backward_weight(&gz, w.shape(), &p),
        );
        let t0 = t.select(0, 0);
        close(&t0.conv_transpose2d(&w, Some(&b), &tp), &z.select(0, 0));
        close(
            &gz.select(0, 0).conv_transpose2d_backward_input(&w, t0.shape(), &tp),
            &gz.conv2d(&w, None, &p).select(0, 0),
        );
    }

    #[test]
    fn conv1d_methods_are_conv2d_over_height_one() {
        let mut rng = Rng::new(3);
        let p = Conv1dParams { stride: 2, padding: 1, dilation: 2, groups: 1 };
        let (x, w, b) = (randn(&[2, 3, 11], &mut rng), randn(&[4, 3, 3], &mut rng), randn(&[4], &mut rng));
        let y = strided(&x).conv1d(&w, Some(&b), &p);
        let y2 = x.unsqueeze(2).conv2d(&w.unsqueeze(2), Some(&b), &p.to_2d());
        close(&y, &y2.squeeze_dim(2));
        let gy = randn(y.shape(), &mut rng);
        close(
            &gy.conv1d_backward_input(&w, x.shape(), &p),
            &gy.unsqueeze(2).conv2d_backward_input(&w.unsqueeze(2), &[2, 3, 1, 11], &p.to_2d()).squeeze_dim(2),
        );
        close(
            &gy.conv1d_backward_weight(&x, w.shape(), &p),
            &gy.unsqueeze(2).conv2d_backward_weight(&x.unsqueeze(2), &[4, 3, 1, 3], &p.to_2d()).squeeze_dim(2),
        );
        close(&gy.conv1d_backward_bias(), &gy.sum(&[0, 2], false));
        let x0 = x.select(0, 0);
        close(&x0.conv1d(&w, Some(&b), &p), &y.select(0, 0));
        close(
            &gy.select(0, 0).conv1d_backward_input(&w, x0.shape(), &p),
            &gy.conv1d_backward_input(&w, x.shape(), &p).select(0, 0),
        );
    }

    #[test]
    fn f32_conv2d_runs() {
        let x = Tensor::<f32>::ones(&[1, 2, 4, 4]);
        let w = Tensor::<f32>::ones(&[3, 2, 3, 3]);
        let y = x.conv2d(&w, None, &Conv2dParams { padding: [1, 1], ..Default::default() });
        assert_eq!(y.shape(), &[1, 3, 4, 4]);
        assert_eq!(y.get(&[0, 2, 1, 1]), 18.0);
        assert_eq!(y.get(&[0, 2, 0, 0]), 8.0);
    }

    #[test]
    #[should_panic(expected = "conv2d: input must be [N, C, H, W] or [C, H, W], got [5, 5]")]
    fn conv2d_rejects_a_2d_input() {
        let _ = Tensor::<f64>::ones(&[5, 5]).conv2d(&Tensor::ones(&[1, 1, 3, 3]), None, &Conv2dParams::default());
    }

    #[test]
    #[should_panic(expected = "conv2d: input [1, 3, 8, 8] has 3 channels but weight [4, 2, 3, 3] expects 2 x groups 1")]
    fn conv2d_channel_mismatch_names_both_shapes() {
        let _ = Tensor::<f64>::ones(&[1, 3, 8, 8]).conv2d(&Tensor::ones(&[4, 2, 3, 3]), None, &Conv2dParams::default());
    }

    #[test]
    #[should_panic(expected = "conv1d: bias must be [out_channels], got [4, 1]")]
    fn conv1d_checks_the_bias_rank() {
        let b = Tensor::<f64>::ones(&[4, 1]);
        let _ = Tensor::<f64>::ones(&[1, 3, 8]).conv1d(&Tensor::ones(&[4, 3, 3]), Some(&b), &Conv1dParams::default());
    }
}
