//! Pooling: max (1-d, 2-d), average (1-d, 2-d) and adaptive average (1-d, 2-d).
//!
//! Every pooling gradient is linear in the output gradient, and is recorded as a `Var` op
//! backed by kiln-tensor's kernel whose own backward is its adjoint, so second derivatives
//! flow through:
//!
//! - average and adaptive pooling are linear maps `P`: the backward of `P x` is `P^T g` (the
//!   kernel's backward), and the backward of `P^T g` is `P u` (the forward again);
//! - max pooling routes `g` to the positions saved by the forward (a scatter-add, the kernel's
//!   backward); the backward of that scatter is a gather of the cotangent at the same
//!   positions, recorded with [`Var::gather`] (whose own backward is a scatter-add again). The
//!   positions are constants, so the second derivative with respect to the pooled input is
//!   zero, as in PyTorch.

use std::sync::Arc;

use kiln_tensor::kernels::pool::NO_INDEX;
use kiln_tensor::{Float, Indices, Shape, Tensor};
use smallvec::smallvec;

use super::OpFn;
use crate::trace::{int, ints};
use crate::var::{Grads, Var};

/// A pooling that is a linear map of its input, with its hyper-parameters.
#[derive(Clone, Copy, Debug)]
enum LinearPool {
    Avg1d {
        kernel: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
        count_include_pad: bool,
    },
    Avg2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: Option<usize>,
    },
    Adaptive1d(usize),
    Adaptive2d([usize; 2]),
}

impl LinearPool {
    fn names(self) -> [&'static str; 2] {
        match self {
            LinearPool::Avg1d { .. } => ["avg_pool1d", "avg_pool1d_backward"],
            LinearPool::Avg2d { .. } => ["avg_pool2d", "avg_pool2d_backward"],
            LinearPool::Adaptive1d(_) => ["adaptive_avg_pool1d", "adaptive_avg_pool1d_backward"],
            LinearPool::Adaptive2d(_) => ["adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"],
        }
    }

    /// `P x`.
    fn apply<E: Float>(self, x: &Tensor<E>) -> Tensor<E> {
        match self {
            LinearPool::Avg1d { kernel, stride, padding, ceil_mode, count_include_pad } => {
                x.avg_pool1d(kernel, stride, padding, ceil_mode, count_include_pad)
            }
            LinearPool::Avg2d { kernel, stride, padding, ceil_mode, count_include_pad, divisor_override } => {
                x.avg_pool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
            }
            LinearPool::Adaptive1d(size) => x.adaptive_avg_pool1d(size),
            LinearPool::Adaptive2d(size) => x.adaptive_avg_pool2d(size),
        }
    }

    /// `P^T g`, of shape `x_shape`.
    fn adjoint<E: Float>(self, g: &Tensor<E>, x_shape: &[usize]) -> Tensor<E> {
        match self {
            LinearPool::Avg1d { kernel, stride, padding, ceil_mode, count_include_pad } => {
                g.avg_pool1d_backward(x_shape, kernel, stride, padding, ceil_mode, count_include_pad)
            }
            LinearPool::Avg2d { kernel, stride, padding, ceil_mode, count_include_pad, divisor_override } => {
                g.avg_pool2d_backward(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
            }
            LinearPool::Adaptive1d(_) => g.adaptive_avg_pool1d_backward(x_shape),
            LinearPool::Adaptive2d(_) => g.adaptive_avg_pool2d_backward(x_shape),
        }
    }
}

/// Records `P x`.
// d (P x)/dx = P^T g
fn pool_op<E: Float>(pool: LinearPool, x: &Var<E>) -> Var<E> {
    let value = x.with_value(|v| pool.apply(v));
    let f = move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
        smallvec![Some(pool_adjoint_op(pool, g, i[0].shape()))]
    };
    Var::from_op(value, smallvec![x.clone()], OpFn { name: pool.names()[0], f })
}

/// Records `P^T g`, of shape `x_shape`.
// d (P^T g)/dg = P u
fn pool_adjoint_op<E: Float>(pool: LinearPool, g: &Var<E>, x_shape: Shape) -> Var<E> {
    let value = g.with_value(|v| pool.adjoint(v, &x_shape));
    let f = move |u: &Var<E>, _: &[Var<E>], _: &Var<E>| -> Grads<E> { smallvec![Some(pool_op(pool, u))] };
    Var::from_op(value, smallvec![g.clone()], OpFn { name: pool.names()[1], f })
}

/// Records a max pooling whose value and argmax positions (within each input plane of
/// `spatial` trailing dims) were computed by the kernel.
// d maxpool(x)/dx = g routed to the argmax positions
fn max_pool_op<E: Float>(x: &Var<E>, value: Tensor<E>, indices: Arc<Indices>, spatial: usize) -> Var<E> {
    let name = if spatial == 2 { "max_pool2d" } else { "max_pool1d" };
    let f = move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
        smallvec![Some(max_pool_backward_op(g, indices.clone(), i[0].shape(), spatial))]
    };
    Var::from_op(value, smallvec![x.clone()], OpFn { name, f })
}

/// Records the scatter of `g` into zeros of `x_shape` at the argmax positions.
// d scatter(g)/dg = the cotangent gathered at the argmax positions (0 for empty windows)
fn max_pool_backward_op<E: Float>(g: &Var<E>, indices: Arc<Indices>, x_shape: Shape, spatial: usize) -> Var<E> {
    let value = g.with_value(|v| {
        if spatial == 2 {
            v.max_pool2d_backward(&indices, &x_shape)
        } else {
            v.max_pool1d_backward(&indices, &x_shape)
        }
    });
    let name = if spatial == 2 { "max_pool2d_backward" } else { "max_pool1d_backward" };
    let f = move |u: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
        // Gather along one flattened plane axis: u as [planes, plane], indices as
        // [planes, out_plane].
        let nd = x_shape.len();
        let planes: usize = x_shape[..nd - spatial].iter().product();
        let plane: usize = x_shape[nd - spatial..].iter().product();
        let out_plane = indices.len() / planes.max(1);
        let empty = indices.as_slice().contains(&NO_INDEX);
        let data: Vec<usize> = indices.as_slice().iter().map(|&k| if k == NO_INDEX { 0 } else { k }).collect();
        let flat = Indices::new(data, &[planes, out_plane]);
        let gathered = u.reshape(&[planes, plane]).gather(1, &flat).reshape(&i[0].shape());
        let gathered = if empty {
            // windows that covered no input element got no gradient
            let keep: Vec<E> =
                indices.as_slice().iter().map(|&k| if k == NO_INDEX { E::zero() } else { E::one() }).collect();
            gathered.mul(&Var::constant(Tensor::from_vec(keep, indices.shape())))
        } else {
            gathered
        };
        smallvec![Some(gathered)]
    };
    Var::from_op(value, smallvec![g.clone()], OpFn { name, f })
}

impl<E: Float> Var<E> {
    /// 2-d max pooling, as `torch.nn.functional.max_pool2d`; see
    /// [`max_pool2d_with_indices`](Var::max_pool2d_with_indices).
    #[must_use]
    pub fn max_pool2d(
        &self,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil_mode: bool,
    ) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("kernel", ints(&kernel_size)),
                ("stride", ints(&stride)),
                ("padding", ints(&padding)),
                ("dilation", ints(&dilation)),
                ("ceil_mode", int(ceil_mode as i64)),
            ]
        });
        if !crate::mode::is_grad_enabled() || !self.requires_grad() {
            // Nothing will ask for the gradient (inference): the values alone, without an
            // index per output. Same values; no node to record, as `from_op` would make none.
            let value = self.with_value(|x| x.max_pool2d_values(kernel_size, stride, padding, dilation, ceil_mode));
            if crate::mode::anomaly_enabled() {
                crate::mode::check_finite(&value, "max_pool2d", "forward", std::slice::from_ref(self));
            }
            return Var::constant(value);
        }
        self.max_pool2d_with_indices(kernel_size, stride, padding, dilation, ceil_mode).0
    }

    /// 2-d max pooling of `[N, C, H, W]` (or `[C, H, W]`), as
    /// `torch.nn.functional.max_pool2d(..., return_indices=True)`: also returns, for each
    /// output element, the flat position `h * W + w` of its maximum in its input plane.
    ///
    /// Pairs are `[height, width]`; PyTorch's default stride is the kernel size. The gradient
    /// goes to the position of each window's maximum (the first one on ties).
    ///
    /// **Panics** (from the kernel) if the input is not 4-d or 3-d, a kernel size, stride or
    /// dilation is 0, a padding exceeds half its kernel size, or the output would be empty.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let x = Var::param(Tensor::<f64>::arange(0.0, 16.0, 1.0).reshape(&[1, 1, 4, 4]));
    /// let (y, idx) = x.max_pool2d_with_indices([2, 2], [2, 2], [0, 0], [1, 1], false);
    /// assert_eq!(y.value().to_vec(), vec![5.0, 7.0, 13.0, 15.0]);
    /// assert_eq!(idx.as_slice(), [5, 7, 13, 15]);
    /// y.sum_all().backward();
    /// assert_eq!(x.grad().unwrap().sum_all().item(), 4.0);
    /// ```
    #[must_use]
    pub fn max_pool2d_with_indices(
        &self,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil_mode: bool,
    ) -> (Var<E>, Indices) {
        let (value, idx) = self.with_value(|x| x.max_pool2d(kernel_size, stride, padding, dilation, ceil_mode));
        let idx = Arc::new(idx);
        (max_pool_op(self, value, idx.clone(), 2), Arc::unwrap_or_clone(idx))
    }

    /// 1-d max pooling of `[N, C, L]` (or `[C, L]`), as `torch.nn.functional.max_pool1d`.
    ///
    /// **Panics** as [`max_pool2d`](Var::max_pool2d) does.
    #[must_use]
    pub fn max_pool1d(
        &self,
        kernel_size: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        ceil_mode: bool,
    ) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("kernel", ints(&[kernel_size])),
                ("stride", ints(&[stride])),
                ("padding", ints(&[padding])),
                ("dilation", ints(&[dilation])),
                ("ceil_mode", int(ceil_mode as i64)),
            ]
        });
        self.max_pool1d_with_indices(kernel_size, stride, padding, dilation, ceil_mode).0
    }

    /// 1-d max pooling that also returns each maximum's position along `L`, as
    /// `torch.nn.functional.max_pool1d(..., return_indices=True)`.
    ///
    /// **Panics** as [`max_pool2d`](Var::max_pool2d) does.
    #[must_use]
    pub fn max_pool1d_with_indices(
        &self,
        kernel_size: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        ceil_mode: bool,
    ) -> (Var<E>, Indices) {
        let (value, idx) = self.with_value(|x| x.max_pool1d(kernel_size, stride, padding, dilation, ceil_mode));
        let idx = Arc::new(idx);
        (max_pool_op(self, value, idx.clone(), 1), Arc::unwrap_or_clone(idx))
    }

    /// 2-d average pooling of `[N, C, H, W]` (or `[C, H, W]`), as
    /// `torch.nn.functional.avg_pool2d`.
    ///
    /// Zero padding; each window's sum is divided by `divisor_override` when given, else by the
    /// number of its positions inside the padded input (`count_include_pad`, PyTorch's default)
    /// or inside the input. Pairs are `[height, width]`.
    ///
    /// **Panics** (from the kernel) if the input is not 4-d or 3-d, a kernel size or stride is
    /// 0, a padding exceeds half its kernel size, the output would be empty, or
    /// `divisor_override` is `Some(0)`.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let x = Var::param(Tensor::<f64>::arange(0.0, 16.0, 1.0).reshape(&[1, 4, 4]));
    /// let y = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None);
    /// assert_eq!(y.value().to_vec(), vec![2.5, 4.5, 10.5, 12.5]);
    /// y.sum_all().backward();
    /// assert_eq!(x.grad().unwrap().to_vec(), vec![0.25; 16]);
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
    ) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("kernel", ints(&kernel_size)),
                ("stride", ints(&stride)),
                ("padding", ints(&padding)),
                ("ceil_mode", int(ceil_mode as i64)),
                ("count_include_pad", int(count_include_pad as i64)),
                ("divisor_override", int(divisor_override.map_or(-1, |d| d as i64))),
            ]
        });
        let pool =
            LinearPool::Avg2d { kernel: kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override };
        pool_op(pool, self)
    }

    /// 1-d average pooling of `[N, C, L]` (or `[C, L]`), as `torch.nn.functional.avg_pool1d`.
    ///
    /// **Panics** as [`avg_pool2d`](Var::avg_pool2d) does.
    #[must_use]
    pub fn avg_pool1d(
        &self,
        kernel_size: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
        count_include_pad: bool,
    ) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("kernel", ints(&[kernel_size])),
                ("stride", ints(&[stride])),
                ("padding", ints(&[padding])),
                ("ceil_mode", int(ceil_mode as i64)),
                ("count_include_pad", int(count_include_pad as i64)),
            ]
        });
        pool_op(LinearPool::Avg1d { kernel: kernel_size, stride, padding, ceil_mode, count_include_pad }, self)
    }

    /// 2-d adaptive average pooling of `[N, C, H, W]` (or `[C, H, W]`) to
    /// `output_size = [out_h, out_w]`, as `torch.nn.functional.adaptive_avg_pool2d`: bin `i`
    /// of an axis spans `[floor(i In / Out), ceil((i + 1) In / Out))`.
    ///
    /// **Panics** (from the kernel) if the input is not 4-d or 3-d.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let x = Var::param(Tensor::<f64>::arange(0.0, 12.0, 1.0).reshape(&[1, 1, 3, 4]));
    /// let y = x.adaptive_avg_pool2d([1, 1]); // global average pooling
    /// assert_eq!(y.item(), 5.5);
    /// y.sum_all().backward();
    /// assert_eq!(x.grad().unwrap().to_vec(), vec![1.0 / 12.0; 12]);
    /// ```
    #[must_use]
    pub fn adaptive_avg_pool2d(&self, output_size: [usize; 2]) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("output_size", ints(&output_size))]);
        pool_op(LinearPool::Adaptive2d(output_size), self)
    }

    /// 1-d adaptive average pooling of `[N, C, L]` (or `[C, L]`) to `output_size`, as
    /// `torch.nn.functional.adaptive_avg_pool1d`.
    ///
    /// **Panics** as [`adaptive_avg_pool2d`](Var::adaptive_avg_pool2d) does.
    #[must_use]
    pub fn adaptive_avg_pool1d(&self, output_size: usize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("output_size", ints(&[output_size]))]);
        pool_op(LinearPool::Adaptive1d(output_size), self)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous};
    use crate::var::Var;
    use kiln_tensor::{Rng, Tensor};
    use proptest::prelude::*;

    type F = Box<dyn Fn(&Var<f64>) -> Var<f64>>;

    /// `(kernel, stride, padding, dilation)` for one axis of length `len`: padding at most half
    /// the kernel, and the dilated kernel fitting the padded input.
    fn axis(len: usize, bits: u64, dilate: bool) -> (usize, usize, usize, usize) {
        let d = if dilate { 1 + (bits & 1) as usize } else { 1 };
        let s = 1 + (bits >> 1 & 1) as usize;
        for k in (1..=1 + (bits >> 2) as usize % 3).rev() {
            let p = (bits >> 4 & 1) as usize * (k / 2);
            if d * (k - 1) < len + 2 * p {
                return (k, s, p, d);
            }
        }
        (1, s, 0, d)
    }

    /// A random input with `spatial` trailing dims, batched or not; distinct values spread
    /// apart so that no two are within the finite-difference step of each other (max pooling
    /// is not differentiable at ties).
    fn input(seed: u64, spatial: &[usize], n: usize, c: usize, unbatched: bool) -> Tensor<f64> {
        let mut rng = Rng::new(seed);
        let mut shape = if unbatched { vec![c] } else { vec![n, c] };
        shape.extend_from_slice(spatial);
        let count: usize = shape.iter().product();
        let perm = rng.permutation(count);
        Tensor::from_vec(perm.into_iter().map(|i| i as f64 * 0.02 - 1.0).collect(), &shape)
    }

    fn run_all(x: &Tensor<f64>, ops: Vec<(String, F)>) -> Result<(), TestCaseError> {
        for (name, f) in ops {
            let r = check(|v| f(&v[0]), std::slice::from_ref(x));
            prop_assert!(r.is_ok(), "{name} on {:?}: {}", x.shape(), r.unwrap_err());
            // squared after, so that the second-order pass goes through the backward op's
            // own backward
            let r = check2(|v| f(&v[0]).square(), std::slice::from_ref(x));
            prop_assert!(r.is_ok(), "{name} (second order) on {:?}: {}", x.shape(), r.unwrap_err());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gradcheck_pool2d(seed: u64, n in 1usize..=2, c in 1usize..=2, h in 1usize..=5, w in 1usize..=5,
                            bh: u64, bw: u64, ceil: bool, incl: bool, unbatched: bool, nc: bool) {
            let x = input(seed, &[h, w], n, c, unbatched);
            let x = if nc { noncontiguous(&x) } else { x };
            let (kh, sh, ph, dh) = axis(h, bh, true);
            let (kw, sw, pw, dw) = axis(w, bw, true);
            let (akh, ash, aph, _) = axis(h, bh >> 20, false);
            let (akw, asw, apw, _) = axis(w, bw >> 20, false);
            let div = (bh >> 8 & 1 == 1).then_some(1 + (bw >> 8) as usize % 4);
            let (oh, ow) = (1 + (bh >> 12) as usize % (h + 1), 1 + (bw >> 12) as usize % (w + 1));
            let ops: Vec<(String, F)> = vec![
                (format!("max_pool2d k {kh}x{kw} s {sh}x{sw} p {ph}x{pw} d {dh}x{dw} ceil {ceil}"),
                 Box::new(move |v: &Var<f64>| v.max_pool2d([kh, kw], [sh, sw], [ph, pw], [dh, dw], ceil))),
                (format!("avg_pool2d k {akh}x{akw} s {ash}x{asw} p {aph}x{apw} ceil {ceil} incl {incl} div {div:?}"),
                 Box::new(move |v: &Var<f64>| v.avg_pool2d([akh, akw], [ash, asw], [aph, apw], ceil, incl, div))),
                (format!("adaptive_avg_pool2d {oh}x{ow}"), Box::new(move |v: &Var<f64>| v.adaptive_avg_pool2d([oh, ow]))),
            ];
            run_all(&x, ops)?;
        }

        #[test]
        fn gradcheck_pool1d(seed: u64, n in 1usize..=2, c in 1usize..=3, l in 1usize..=6,
                            bits: u64, ceil: bool, incl: bool, unbatched: bool, nc: bool) {
            let x = input(seed, &[l], n, c, unbatched);
            let x = if nc { noncontiguous(&x) } else { x };
            let (k, s, p, d) = axis(l, bits, true);
            let (ak, as_, ap, _) = axis(l, bits >> 20, false);
            let o = 1 + (bits >> 40) as usize % (l + 1);
            let ops: Vec<(String, F)> = vec![
                (format!("max_pool1d k {k} s {s} p {p} d {d} ceil {ceil}"),
                 Box::new(move |v: &Var<f64>| v.max_pool1d(k, s, p, d, ceil))),
                (format!("avg_pool1d k {ak} s {as_} p {ap} ceil {ceil} incl {incl}"),
                 Box::new(move |v: &Var<f64>| v.avg_pool1d(ak, as_, ap, ceil, incl))),
                (format!("adaptive_avg_pool1d {o}"), Box::new(move |v: &Var<f64>| v.adaptive_avg_pool1d(o))),
            ];
            run_all(&x, ops)?;
        }
    }

    #[test]
    fn max_pool_gradient_goes_to_the_maximum_and_double_backward_gathers() {
        let x = Var::param(Tensor::from_vec(vec![1.0f64, 5.0, 2.0, 0.0, 3.0, 4.0], &[1, 1, 6]));
        let y = x.max_pool1d(3, 3, 0, 1, false);
        assert_eq!(y.value().to_vec(), vec![5.0, 4.0]);
        // z = sum(y^2): dz/dx = 2 y at the maxima; d/dx of sum((dz/dx)^2) = 8 y there
        let gx = crate::grad(&[y.square().sum_all()], std::slice::from_ref(&x), None, true)[0].clone().unwrap();
        assert_eq!(gx.value().to_vec(), vec![0.0, 10.0, 0.0, 0.0, 0.0, 8.0]);
        let ggx = crate::grad(&[gx.square().sum_all()], std::slice::from_ref(&x), None, false)[0].clone().unwrap();
        assert_eq!(ggx.value().to_vec(), vec![0.0, 40.0, 0.0, 0.0, 0.0, 32.0]);
    }

    #[test]
    fn empty_max_pool_windows_get_no_gradient() {
        // width 1, kernel 2, dilation 2, padding 1: taps at -1 and 1, neither inside
        let x = Var::param(Tensor::from_vec(vec![5.0f64], &[1, 1, 1]));
        let y = x.max_pool1d(2, 1, 1, 2, false);
        assert_eq!(y.value().to_vec(), vec![f64::NEG_INFINITY]);
        let u = Var::param(Tensor::from_vec(vec![1.0f64], &[1, 1, 1]));
        let gx = crate::grad(std::slice::from_ref(&y), std::slice::from_ref(&x), Some(std::slice::from_ref(&u)), true)
            [0]
        .clone()
        .unwrap();
        assert_eq!(gx.value().to_vec(), vec![0.0]);
        let gu = crate::grad(&[gx.sum_all()], &[u], None, false)[0].clone().unwrap();
        assert_eq!(gu.value().to_vec(), vec![0.0]);
    }
}
