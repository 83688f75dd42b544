//! Pooling methods of [`Tensor`]: max, average and adaptive-average pooling in 1-d and 2-d and
//! their gradients, as thin wrappers over the slice kernels of [`crate::kernels::pool`].
//!
//! As in PyTorch, 2-d pooling takes `[N, C, H, W]` or unbatched `[C, H, W]`, 1-d pooling
//! `[N, C, L]` or `[C, L]`, and the result keeps the input's batching. Inputs of any layout are
//! accepted; non-contiguous ones are copied to row-major first.

use crate::conv::{batched, finish, slice_of};
use crate::element::Float;
use crate::kernels::pool as kernel;
use crate::tensor::{Indices, Tensor};

const IN2: &str = "[N, C, H, W] or [C, H, W]";
const IN1: &str = "[N, C, L] or [C, L]";

fn check_indices(op: &str, indices: &Indices, grad_out: &[usize]) {
    assert!(
        indices.shape() == grad_out,
        "{op}: indices {:?} and grad_out {grad_out:?} differ in shape",
        indices.shape()
    );
}

impl<E: Float> Tensor<E> {
    /// 2-d max pooling, as `torch.nn.functional.max_pool2d(..., return_indices=True)`.
    ///
    /// `self` is `[N, C, H, W]` (or `[C, H, W]`), implicitly padded with `-inf`. Returns the
    /// pooled tensor and, for each of its elements, the flat position `h * W + w` of the maximum
    /// inside its own `(n, c)` input plane (the first maximum wins; NaN wins over numbers).
    /// Pairs are `[height, width]`; PyTorch's default stride is the kernel size.
    ///
    /// **Panics** if `self` is not 4-d or 3-d, a kernel size, stride or dilation is 0, a padding
    /// exceeds half its kernel size, or the output would be empty.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f64>::arange(0.0, 16.0, 1.0).reshape(&[1, 1, 4, 4]);
    /// let (y, idx) = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
    /// assert_eq!(y.to_vec(), vec![5.0, 7.0, 13.0, 15.0]);
    /// assert_eq!(idx.as_slice(), [5, 7, 13, 15]);
    /// let g = Tensor::<f64>::ones(&[1, 1, 2, 2]).max_pool2d_backward(&idx, x.shape());
    /// assert_eq!(g.get(&[0, 0, 1, 1]), 1.0);
    /// assert_eq!(g.sum_all().item(), 4.0);
    /// ```
    #[must_use]
    pub fn max_pool2d(
        &self,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil_mode: bool,
    ) -> (Tensor<E>, Indices) {
        let (xs, unbatched) = batched::<4>("max_pool2d", "input", self.shape(), IN2);
        let x = self.contiguous();
        let (out, os, idx) =
            kernel::max_pool2d_forward(slice_of(&x), xs, kernel_size, stride, padding, dilation, ceil_mode);
        let y = finish(out, &os, unbatched);
        let idx = Indices::new(idx, y.shape());
        (y, idx)
    }

    /// [`max_pool2d`](Tensor::max_pool2d) without the indices, for inference (PyTorch's
    /// `max_pool2d` with `return_indices=False`): same values, and the common 2x2 / stride-2
    /// windows skip computing an index per output.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f32>::arange(0.0, 16.0, 1.0).reshape(&[1, 1, 4, 4]);
    /// let y = x.max_pool2d_values([2, 2], [2, 2], [0, 0], [1, 1], false);
    /// assert_eq!(y.to_vec(), vec![5.0, 7.0, 13.0, 15.0]);
    /// ```
    ///
    /// **Panics** as [`max_pool2d`](Tensor::max_pool2d) does.
    #[must_use]
    pub fn max_pool2d_values(
        &self,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil_mode: bool,
    ) -> Tensor<E> {
        let (xs, unbatched) = batched::<4>("max_pool2d", "input", self.shape(), IN2);
        let x = self.contiguous();
        let (out, os) =
            kernel::max_pool2d_forward_values(slice_of(&x), xs, kernel_size, stride, padding, dilation, ceil_mode);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`max_pool2d`](Tensor::max_pool2d), with `self` the gradient of its output:
    /// each element is added to the input position its index names. Returns a tensor of
    /// `input_shape`.
    ///
    /// **Panics** if `indices` and `self` differ in shape, `self` and `input_shape` are not a
    /// pooling's output and input, or an index lies outside its input plane.
    #[must_use]
    pub fn max_pool2d_backward(&self, indices: &Indices, input_shape: &[usize]) -> Tensor<E> {
        let op = "max_pool2d_backward";
        check_indices(op, indices, self.shape());
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, unbatched) = batched::<4>(op, "input shape", input_shape, IN2);
        let g = self.contiguous();
        finish(kernel::max_pool2d_backward(slice_of(&g), &indices.data, xs, gs), &xs, unbatched)
    }

    /// 1-d max pooling of `[N, C, L]` (or `[C, L]`), as
    /// `torch.nn.functional.max_pool1d(..., return_indices=True)`; indices are positions along
    /// `L`.
    ///
    /// **Panics** as [`max_pool2d`](Tensor::max_pool2d) does.
    #[must_use]
    pub fn max_pool1d(
        &self,
        kernel_size: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        ceil_mode: bool,
    ) -> (Tensor<E>, Indices) {
        let (xs, unbatched) = batched::<3>("max_pool1d", "input", self.shape(), IN1);
        let x = self.contiguous();
        let (out, os, idx) =
            kernel::max_pool1d_forward(slice_of(&x), xs, kernel_size, stride, padding, dilation, ceil_mode);
        let y = finish(out, &os, unbatched);
        let idx = Indices::new(idx, y.shape());
        (y, idx)
    }

    /// Gradient of [`max_pool1d`](Tensor::max_pool1d), with `self` the gradient of its output.
    /// Returns a tensor of `input_shape`.
    ///
    /// **Panics** as [`max_pool2d_backward`](Tensor::max_pool2d_backward) does.
    #[must_use]
    pub fn max_pool1d_backward(&self, indices: &Indices, input_shape: &[usize]) -> Tensor<E> {
        let op = "max_pool1d_backward";
        check_indices(op, indices, self.shape());
        let (gs, _) = batched::<3>(op, "grad_out", self.shape(), IN1);
        let (xs, unbatched) = batched::<3>(op, "input shape", input_shape, IN1);
        let g = self.contiguous();
        finish(kernel::max_pool1d_backward(slice_of(&g), &indices.data, xs, gs), &xs, unbatched)
    }

    /// 2-d average pooling, as `torch.nn.functional.avg_pool2d`.
    ///
    /// `self` is `[N, C, H, W]` (or `[C, H, W]`), zero-padded. Each window's sum is divided by
    /// `divisor_override` when given, else by the number of its positions inside the padded
    /// input (`count_include_pad`) or inside the input. Pairs are `[height, width]`.
    ///
    /// **Panics** if `self` is not 4-d or 3-d, a kernel size or stride is 0, a padding exceeds
    /// half its kernel size, the output would be empty, or `divisor_override` is `Some(0)`.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f64>::ones(&[1, 4, 4]);
    /// let y = x.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None);
    /// assert_eq!(y.shape(), &[1, 2, 2]);
    /// assert_eq!(y.get(&[0, 0, 0]), 4.0 / 9.0); // 4 of the 9 taps are inside
    /// ```
    #[must_use]
    pub fn avg_pool2d(
        &self,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: Option<usize>,
    ) -> Tensor<E> {
        let (xs, unbatched) = batched::<4>("avg_pool2d", "input", self.shape(), IN2);
        let x = self.contiguous();
        let (out, os) = kernel::avg_pool2d_forward(
            slice_of(&x),
            xs,
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
            divisor_override,
        );
        finish(out, &os, unbatched)
    }

    /// Gradient of [`avg_pool2d`](Tensor::avg_pool2d), with `self` the gradient of its output
    /// and the forward's arguments. Returns a tensor of `input_shape`.
    ///
    /// **Panics** as [`avg_pool2d`](Tensor::avg_pool2d) does, and if `self` is not the forward's
    /// output shape.
    #[must_use]
    pub fn avg_pool2d_backward(
        &self,
        input_shape: &[usize],
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: Option<usize>,
    ) -> Tensor<E> {
        let op = "avg_pool2d_backward";
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, unbatched) = batched::<4>(op, "input shape", input_shape, IN2);
        let g = self.contiguous();
        let gx = kernel::avg_pool2d_backward(
            slice_of(&g),
            gs,
            xs,
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
            divisor_override,
        );
        finish(gx, &xs, unbatched)
    }

    /// 1-d average pooling of `[N, C, L]` (or `[C, L]`), as `torch.nn.functional.avg_pool1d`.
    ///
    /// **Panics** as [`avg_pool2d`](Tensor::avg_pool2d) does.
    #[must_use]
    pub fn avg_pool1d(
        &self,
        kernel_size: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
        count_include_pad: bool,
    ) -> Tensor<E> {
        let (xs, unbatched) = batched::<3>("avg_pool1d", "input", self.shape(), IN1);
        let x = self.contiguous();
        let (out, os) =
            kernel::avg_pool1d_forward(slice_of(&x), xs, kernel_size, stride, padding, ceil_mode, count_include_pad);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`avg_pool1d`](Tensor::avg_pool1d), with `self` the gradient of its output
    /// and the forward's arguments. Returns a tensor of `input_shape`.
    ///
    /// **Panics** as [`avg_pool2d_backward`](Tensor::avg_pool2d_backward) does.
    #[must_use]
    pub fn avg_pool1d_backward(
        &self,
        input_shape: &[usize],
        kernel_size: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
        count_include_pad: bool,
    ) -> Tensor<E> {
        let op = "avg_pool1d_backward";
        let (gs, _) = batched::<3>(op, "grad_out", self.shape(), IN1);
        let (xs, unbatched) = batched::<3>(op, "input shape", input_shape, IN1);
        let g = self.contiguous();
        let gx = kernel::avg_pool1d_backward(
            slice_of(&g),
            gs,
            xs,
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
        );
        finish(gx, &xs, unbatched)
    }

    /// 2-d adaptive average pooling to `output_size = [out_h, out_w]`, as
    /// `torch.nn.functional.adaptive_avg_pool2d`: bin `i` of an axis spans
    /// `[floor(i * In / Out), ceil((i + 1) * In / Out))`.
    ///
    /// **Panics** if `self` is not 4-d or 3-d, or an output size is positive while the input
    /// axis is empty.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f64>::arange(0.0, 12.0, 1.0).reshape(&[1, 1, 3, 4]);
    /// let y = x.adaptive_avg_pool2d([1, 1]); // global average pooling
    /// assert_eq!(y.shape(), &[1, 1, 1, 1]);
    /// assert_eq!(y.item(), 5.5);
    /// ```
    #[must_use]
    pub fn adaptive_avg_pool2d(&self, output_size: [usize; 2]) -> Tensor<E> {
        let (xs, unbatched) = batched::<4>("adaptive_avg_pool2d", "input", self.shape(), IN2);
        let x = self.contiguous();
        let (out, os) = kernel::adaptive_avg_pool2d_forward(slice_of(&x), xs, output_size);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`adaptive_avg_pool2d`](Tensor::adaptive_avg_pool2d), with `self` the
    /// gradient of its output. Returns a tensor of `input_shape`.
    ///
    /// **Panics** if `self` and `input_shape` differ in batch or channel sizes, or a shape has
    /// the wrong rank.
    #[must_use]
    pub fn adaptive_avg_pool2d_backward(&self, input_shape: &[usize]) -> Tensor<E> {
        let op = "adaptive_avg_pool2d_backward";
        let (gs, _) = batched::<4>(op, "grad_out", self.shape(), IN2);
        let (xs, unbatched) = batched::<4>(op, "input shape", input_shape, IN2);
        let g = self.contiguous();
        finish(kernel::adaptive_avg_pool2d_backward(slice_of(&g), gs, xs), &xs, unbatched)
    }

    /// 1-d adaptive average pooling of `[N, C, L]` (or `[C, L]`) to `output_size`, as
    /// `torch.nn.functional.adaptive_avg_pool1d`.
    ///
    /// **Panics** as [`adaptive_avg_pool2d`](Tensor::adaptive_avg_pool2d) does.
    #[must_use]
    pub fn adaptive_avg_pool1d(&self, output_size: usize) -> Tensor<E> {
        let (xs, unbatched) = batched::<3>("adaptive_avg_pool1d", "input", self.shape(), IN1);
        let x = self.contiguous();
        let (out, os) = kernel::adaptive_avg_pool1d_forward(slice_of(&x), xs, output_size);
        finish(out, &os, unbatched)
    }

    /// Gradient of [`adaptive_avg_pool1d`](Tensor::adaptive_avg_pool1d), with `self` the
    /// gradient of its output. Returns a tensor of `input_shape`.
    ///
    /// **Panics** as [`adaptive_avg_pool2d_backward`](Tensor::adaptive_avg_pool2d_backward) does.
    #[must_use]
    pub fn adaptive_avg_pool1d_backward(&self, input_shape: &[usize]) -> Tensor<E> {
        let op = "adaptive_avg_pool1d_backward";
        let (gs, _) = batched::<3>(op, "grad_out", self.shape(), IN1);
        let (xs, unbatched) = batched::<3>(op, "input shape", input_shape, IN1);
        let g = self.contiguous();
        finish(kernel::adaptive_avg_pool1d_backward(slice_of(&g), gs, xs), &xs, unbatched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// A non-contiguous copy of `t` (data stored with the last two axes swapped).
    fn strided(t: &Tensor<f64>) -> Tensor<f64> {
        let nd = t.ndim() as isize;
        let v = t.transpose(nd - 2, nd - 1).contiguous().transpose(nd - 2, nd - 1);
        assert!(!v.is_contiguous() && v == *t);
        v
    }

    #[test]
    fn max_pool2d_methods_match_the_kernels_on_strided_and_unbatched_inputs() {
        let mut rng = Rng::new(1);
        let x: Tensor<f64> = Tensor::randn(&[2, 3, 7, 6], &mut rng);
        let (y, idx) = strided(&x).max_pool2d([3, 2], [2, 2], [1, 1], [1, 2], true);
        let (want, ys, want_idx) =
            kernel::max_pool2d_forward(&x.to_vec(), [2, 3, 7, 6], [3, 2], [2, 2], [1, 1], [1, 2], true);
        assert_eq!((y.shape(), y.to_vec(), &idx.data), (&ys[..], want, &want_idx));
        assert_eq!(idx.shape(), y.shape());
        let gy: Tensor<f64> = Tensor::randn(y.shape(), &mut rng);
        let gx = strided(&gy).max_pool2d_backward(&idx, x.shape());
        assert_eq!(gx.to_vec(), kernel::max_pool2d_backward(&gy.to_vec(), &idx.data, [2, 3, 7, 6], ys));

        let x0 = x.select(0, 0);
        let (y0, i0) = x0.max_pool2d([3, 2], [2, 2], [1, 1], [1, 2], true);
        assert_eq!(y0, y.select(0, 0));
        assert_eq!(i0.shape(), y0.shape());
        assert_eq!(gy.select(0, 0).max_pool2d_backward(&i0, x0.shape()), gx.select(0, 0));

        let x1 = x.select(2, 0); // [2, 3, 6] as a 1-d input
        let (y1, i1) = x1.max_pool1d(2, 1, 1, 2, false);
        let (y2, i2) = x1.unsqueeze(2).max_pool2d([1, 2], [1, 1], [0, 1], [1, 2], false);
        assert_eq!((y1.clone(), &i1.data), (y2.squeeze_dim(2), &i2.data));
        let g1: Tensor<f64> = Tensor::randn(y1.shape(), &mut rng);
        assert_eq!(
            g1.max_pool1d_backward(&i1, x1.shape()),
            g1.unsqueeze(2).max_pool2d_backward(&i2, &[2, 3, 1, 6]).squeeze_dim(2)
        );
    }

    #[test]
    fn avg_and_adaptive_pool_methods_match_the_kernels() {
        let mut rng = Rng::new(2);
        let x: Tensor<f64> = Tensor::randn(&[2, 3, 7, 6], &mut rng);
        let y = strided(&x).avg_pool2d([3, 3], [2, 2], [1, 1], true, false, None);
        let (want, ys) =
            kernel::avg_pool2d_forward(&x.to_vec(), [2, 3, 7, 6], [3, 3], [2, 2], [1, 1], true, false, None);
        assert_eq!((y.shape(), y.to_vec()), (&ys[..], want));
        let gy: Tensor<f64> = Tensor::randn(y.shape(), &mut rng);
        let gx = strided(&gy).avg_pool2d_backward(x.shape(), [3, 3], [2, 2], [1, 1], true, false, None);
        let want =
            kernel::avg_pool2d_backward(&gy.to_vec(), ys, [2, 3, 7, 6], [3, 3], [2, 2], [1, 1], true, false, None);
        assert_eq!(gx.to_vec(), want);
        let x0 = x.select(0, 0);
        assert_eq!(x0.avg_pool2d([3, 3], [2, 2], [1, 1], true, false, None), y.select(0, 0));

        let a = strided(&x).adaptive_avg_pool2d([3, 4]);
        let (want, as_) = kernel::adaptive_avg_pool2d_forward(&x.to_vec(), [2, 3, 7, 6], [3, 4]);
        assert_eq!((a.shape(), a.to_vec()), (&as_[..], want));
        let ga: Tensor<f64> = Tensor::randn(a.shape(), &mut rng);
        assert_eq!(
            strided(&ga).adaptive_avg_pool2d_backward(x.shape()).to_vec(),
            kernel::adaptive_avg_pool2d_backward(&ga.to_vec(), as_, [2, 3, 7, 6])
        );
        assert_eq!(
            ga.select(0, 0).adaptive_avg_pool2d_backward(x0.shape()),
            ga.adaptive_avg_pool2d_backward(x.shape()).select(0, 0)
        );

        let x1 = x.select(2, 0); // [2, 3, 6]
        let y1 = x1.avg_pool1d(3, 2, 1, false, true);
        assert_eq!(y1, x1.unsqueeze(2).avg_pool2d([1, 3], [1, 2], [0, 1], false, true, None).squeeze_dim(2));
        let g1: Tensor<f64> = Tensor::randn(y1.shape(), &mut rng);
        assert_eq!(
            g1.avg_pool1d_backward(x1.shape(), 3, 2, 1, false, true),
            g1.unsqueeze(2)
                .avg_pool2d_backward(&[2, 3, 1, 6], [1, 3], [1, 2], [0, 1], false, true, None)
                .squeeze_dim(2)
        );
        let q1 = x1.adaptive_avg_pool1d(4);
        assert_eq!(q1, x1.unsqueeze(2).adaptive_avg_pool2d([1, 4]).squeeze_dim(2));
        let gq: Tensor<f64> = Tensor::randn(q1.shape(), &mut rng);
        assert_eq!(
            gq.adaptive_avg_pool1d_backward(x1.shape()),
            gq.unsqueeze(2).adaptive_avg_pool2d_backward(&[2, 3, 1, 6]).squeeze_dim(2)
        );
        assert_eq!(x1.select(0, 0).adaptive_avg_pool1d(4), q1.select(0, 0));
    }

    #[test]
    fn f32_pools_run() {
        let x = Tensor::<f32>::arange(0.0, 16.0, 1.0).reshape(&[1, 4, 4]);
        let (m, _) = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        assert_eq!(m.to_vec(), vec![5.0, 7.0, 13.0, 15.0]);
        assert_eq!(x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None).to_vec(), vec![2.5, 4.5, 10.5, 12.5]);
        assert_eq!(x.adaptive_avg_pool2d([1, 1]).to_vec(), vec![7.5]);
    }

    #[test]
    #[should_panic(expected = "max_pool2d_backward: indices [1, 1, 2, 2] and grad_out [1, 1, 2, 1] differ in shape")]
    fn max_pool_backward_checks_the_indices_shape() {
        let idx = Indices::new(vec![0; 4], &[1, 1, 2, 2]);
        let _ = Tensor::<f64>::ones(&[1, 1, 2, 1]).max_pool2d_backward(&idx, &[1, 1, 4, 4]);
    }

    #[test]
    #[should_panic(expected = "avg_pool1d: input must be [N, C, L] or [C, L], got [4]")]
    fn pool1d_rejects_a_1d_input() {
        let _ = Tensor::<f64>::ones(&[4]).avg_pool1d(2, 2, 0, false, true);
    }
}
