//! Reductions: sum, mean, var/std, max/min, logsumexp and vector norms.

use kiln_tensor::{Float, Norm, Tensor};

use super::unary_op;
use crate::trace::{int, signed};
use crate::var::Var;

/// Normalised reduction axes of a shape (all when empty).
pub(crate) fn axes_of(shape: &[usize], axes: &[isize]) -> Vec<usize> {
    let n = shape.len() as isize;
    if axes.is_empty() {
        return (0..shape.len()).collect();
    }
    let mut v: Vec<usize> = axes.iter().map(|&a| (if a < 0 { a + n } else { a }) as usize).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The shape of a reduction's result with the reduced dims kept as size 1.
pub(crate) fn keepdim_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n }).collect()
}

impl<E: Float> Var<E> {
    /// Sum over `axes` (all when empty), like `x.sum(dim, keepdim)`.
    // d sum(x)/dx = 1 (the gradient broadcast back over the reduced axes)
    #[must_use]
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("axes", signed(axes)), ("keepdim", int(keepdim as i64))]);
        let axes_v = axes.to_vec();
        unary_op(
            self,
            "sum",
            |x| x.sum(axes, keepdim),
            move |x, _, g| {
                let shape = x.shape();
                let kept = keepdim_shape(&shape, &axes_of(&shape, &axes_v));
                g.reshape(&kept).expand(&shape)
            },
        )
    }

    /// Sum of all elements (a 0-d `Var`).
    #[must_use]
    pub fn sum_all(&self) -> Var<E> {
        self.sum(&[], false)
    }

    /// Mean over `axes` (all when empty).
    // d mean(x)/dx = 1/n
    #[must_use]
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let shape = self.shape();
        let n: usize = axes_of(&shape, axes).iter().map(|&d| shape[d]).product();
        self.sum(axes, keepdim).mul_scalar(E::from_usize(n).recip())
    }

    /// Variance over `axes` (all when empty) with Bessel's `correction` (1 = unbiased,
    /// PyTorch's default; 0 = population), like `x.var(dim, correction=c, keepdim)`. The value
    /// comes from the two-pass kernel. NaN where a lane has no more than `correction` elements.
    // d var(x)/dx = 2 (x - mean(x)) / (n - correction)
    #[must_use]
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![("axes", signed(axes)), ("correction", int(correction as i64)), ("keepdim", int(keepdim as i64))]
        });
        let axes_v = axes.to_vec();
        unary_op(
            self,
            "var",
            |x| x.var(axes, correction, keepdim),
            move |x, _, g| {
                let shape = x.shape();
                let ax = axes_of(&shape, &axes_v);
                let n: usize = ax.iter().map(|&d| shape[d]).product();
                let scale = if n > correction { E::from_usize(2) / E::from_usize(n - correction) } else { E::nan() };
                x.sub(&x.mean(&axes_v, true)).mul(&g.reshape(&keepdim_shape(&shape, &ax))).mul_scalar(scale)
            },
        )
    }

    /// Standard deviation over `axes` with Bessel's `correction`: `sqrt(var)`. Its gradient is
    /// NaN where the variance is 0, as in PyTorch.
    // d std(x)/dx = d var(x)/dx / (2 std(x))
    #[must_use]
    pub fn std(&self, axes: &[isize], correction: usize, keepdim: bool) -> Var<E> {
        self.var(axes, correction, keepdim).sqrt()
    }

    /// Maximum over `axes` (all when empty), like `torch.amax(x, dim, keepdim)`.
    ///
    /// The gradient goes to the positions holding the maximum and is split evenly among ties
    /// (in every case: PyTorch does so for the full reduction `max()` and for `amax`, while
    /// `max(dim)` sends it all to the one index it returns).
    ///
    /// **Panics** when a reduced dimension is empty.
    // d max(x)/dx_i = [x_i = max(x)] / #{j : x_j = max(x)}
    #[must_use]
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("axes", signed(axes)), ("keepdim", int(keepdim as i64))]);
        self.extremum(axes, keepdim, true)
    }

    /// Minimum over `axes` (all when empty), like `torch.amin(x, dim, keepdim)`; the gradient
    /// is split evenly among ties, as for [`max`](Var::max).
    ///
    /// **Panics** when a reduced dimension is empty.
    // d min(x)/dx_i = [x_i = min(x)] / #{j : x_j = min(x)}
    #[must_use]
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("axes", signed(axes)), ("keepdim", int(keepdim as i64))]);
        self.extremum(axes, keepdim, false)
    }

    fn extremum(&self, axes: &[isize], keepdim: bool, max: bool) -> Var<E> {
        let axes_v = axes.to_vec();
        let name = if max { "max" } else { "min" };
        let forward = |x: &Tensor<E>| if max { x.max(axes, keepdim) } else { x.min(axes, keepdim) };
        unary_op(self, name, forward, move |x, out, g| {
            let shape = x.shape();
            let kept = keepdim_shape(&shape, &axes_of(&shape, &axes_v));
            let w = x.with_value(|xv| out.with_value(|o| tie_weights(xv, &o.reshape(&kept), &axes_v, name)));
            g.reshape(&kept).mul(&Var::constant(w))
        })
    }

    /// `log(sum(exp(x)))` over `axes` (all when empty), computed stably by the kernel, like
    /// `torch.logsumexp`.
    // d logsumexp(x)/dx = exp(x - logsumexp(x)) (the softmax over the reduced axes)
    #[must_use]
    pub fn logsumexp(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("axes", signed(axes)), ("keepdim", int(keepdim as i64))]);
        let axes_v = axes.to_vec();
        unary_op(
            self,
            "logsumexp",
            |x| x.logsumexp(axes, keepdim),
            move |x, out, g| {
                let shape = x.shape();
                let kept = keepdim_shape(&shape, &axes_of(&shape, &axes_v));
                x.sub(&out.reshape(&kept)).exp().mul(&g.reshape(&kept))
            },
        )
    }

    /// The vector norm over `axes` (all when empty), like `torch.linalg.vector_norm(x, p, dim,
    /// keepdim)`: `Norm::P(p)` is `(sum |x|^p)^(1/p)`, `Norm::Inf` is `max |x|`.
    ///
    /// Subgradients where the norm is not differentiable, as in PyTorch: 0 for a lane whose
    /// norm is 0 (`p = 2` and every `p`), `sign(x)` with `sign(0) = 0` for `p = 1`, and for
    /// `Inf` the gradient is split evenly among the positions of the largest `|x|`.
    ///
    /// **Panics** if `p <= 0`.
    // d ||x||_p/dx = sign(x) |x|^(p-1) / ||x||_p^(p-1)   (p = 2: x / ||x||; p = 1: sign(x))
    // d ||x||_inf/dx_i = sign(x_i) [|x_i| = ||x||_inf] / #ties
    #[must_use]
    pub fn norm(&self, p: Norm, axes: &[isize], keepdim: bool) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            let order = match p {
                Norm::P(p) => p,
                Norm::Inf => f64::INFINITY,
            };
            vec![("p", crate::trace::float(order)), ("axes", signed(axes)), ("keepdim", int(keepdim as i64))]
        });
        let axes_v = axes.to_vec();
        unary_op(
            self,
            "norm",
            |x| x.norm(p, axes, keepdim),
            move |x, out, g| {
                let shape = x.shape();
                let kept = keepdim_shape(&shape, &axes_of(&shape, &axes_v));
                let gk = g.reshape(&kept);
                let sign = || Var::constant(x.with_value(|v| v.sign()));
                // the norm with 1 put in where it is 0, so that lanes of zeros divide 0 by 1
                let safe_norm = || {
                    let o = out.reshape(&kept);
                    let zeros = Var::constant(o.with_value(|v| v.eq_scalar(E::zero())));
                    o.add(&zeros)
                };
                match p {
                    Norm::Inf => {
                        let w = x.with_value(|xv| {
                            let a = xv.abs();
                            out.with_value(|o| tie_weights(&a, &o.reshape(&kept), &axes_v, "norm")).mul(&xv.sign())
                        });
                        gk.mul(&Var::constant(w))
                    }
                    Norm::P(1.0) => gk.mul(&sign()),
                    Norm::P(2.0) => x.div(&safe_norm()).mul(&gk),
                    Norm::P(p) => {
                        // |x| + [x = 0] keeps |x|^(p-1) finite for p < 1; sign(0) = 0 zeroes it
                        let zeros = Var::constant(x.with_value(|v| v.eq_scalar(E::zero())));
                        let num = x.abs().add(&zeros).powf(p - 1.0).mul(&sign());
                        num.div(&safe_norm().powf(p - 1.0)).mul(&gk)
                    }
                }
            },
        )
    }
}

/// The weight of each element of `x` in the gradient of its lane's extremum `m` (given with
/// kept dims): `1/k` at each of the `k` positions equal to `m` (NaN matching NaN), 0 elsewhere.
fn tie_weights<E: Float>(x: &Tensor<E>, m: &Tensor<E>, axes: &[isize], op: &str) -> Tensor<E> {
    let hits = x.zip_map(m, op, |a, b| if a == b || (a.is_nan() && b.is_nan()) { E::one() } else { E::zero() });
    let count = hits.sum(axes, true);
    hits.div(&count)
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, tensor_strategy};
    use crate::var::Var;
    use kiln_tensor::{Norm, Tensor};
    use proptest::prelude::*;

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    /// The gradient of `f(x).sum_all()` at `x`.
    fn grad_of(x: &[f64], s: &[usize], f: impl Fn(&Var<f64>) -> Var<f64>) -> Vec<f64> {
        let v = Var::param(t(x, s));
        f(&v).sum_all().backward();
        v.grad().unwrap().to_vec()
    }

    /// Axes chosen by the low bits (empty means all), and the number of elements each reduced
    /// lane holds.
    fn pick_axes(shape: &[usize], bits: u8) -> (Vec<isize>, usize) {
        let nd = shape.len();
        // a negative axis now and then
        let axes: Vec<isize> = (0..nd)
            .filter(|d| bits >> d & 1 == 1)
            .map(|d| if bits & 0x80 != 0 { d as isize - nd as isize } else { d as isize })
            .collect();
        let lane = if axes.is_empty() {
            shape.iter().product()
        } else {
            axes.iter().map(|&a| shape[(a + nd as isize) as usize % nd]).product()
        };
        (axes, lane)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20))]
        #[test]
        fn gradcheck_var_std_logsumexp(x in tensor_strategy(), bits: u8, keepdim: bool, correction in 0usize..=1, nc: bool) {
            let (axes, lane) = pick_axes(x.shape(), bits);
            let x = if nc { noncontiguous(&x) } else { x };
            let inp = std::slice::from_ref(&x);
            if lane > correction {
                let r = check(|v| v[0].var(&axes, correction, keepdim), inp);
                prop_assert!(r.is_ok(), "var {axes:?} c={correction}: {}", r.unwrap_err());
                let r = check2(|v| v[0].var(&axes, correction, keepdim), inp);
                prop_assert!(r.is_ok(), "var (second order) {axes:?}: {}", r.unwrap_err());
            }
            if lane > 1 {
                let r = check(|v| v[0].std(&axes, correction, keepdim), inp);
                prop_assert!(r.is_ok(), "std {axes:?} c={correction}: {}", r.unwrap_err());
            }
            let r = check(|v| v[0].logsumexp(&axes, keepdim), inp);
            prop_assert!(r.is_ok(), "logsumexp {axes:?}: {}", r.unwrap_err());
            let r = check2(|v| v[0].logsumexp(&axes, keepdim), inp);
            prop_assert!(r.is_ok(), "logsumexp (second order) {axes:?}: {}", r.unwrap_err());
        }

        #[test]
        fn gradcheck_max_min(x in tensor_strategy(), bits: u8, keepdim: bool, nc: bool) {
            let (axes, _) = pick_axes(x.shape(), bits);
            let x = if nc { noncontiguous(&x) } else { x };
            let inp = std::slice::from_ref(&x);
            let r = check(|v| v[0].max(&axes, keepdim), inp);
            prop_assert!(r.is_ok(), "max {axes:?}: {}", r.unwrap_err());
            let r = check(|v| v[0].min(&axes, keepdim), inp);
            prop_assert!(r.is_ok(), "min {axes:?}: {}", r.unwrap_err());
            // the gradient of the square of the max is differentiable again: 2 max [argmax]
            let r = check2(|v| v[0].max(&axes, keepdim).square(), inp);
            prop_assert!(r.is_ok(), "max (second order) {axes:?}: {}", r.unwrap_err());
        }

        #[test]
        fn gradcheck_norm(x in tensor_strategy(), bits: u8, keepdim: bool, nc: bool) {
            let (axes, _) = pick_axes(x.shape(), bits);
            // away from the kink at 0 of |x|
            let x = x.map(|v| if v.abs() < 0.05 { v + 0.1 } else { v });
            let x = if nc { noncontiguous(&x) } else { x };
            let inp = std::slice::from_ref(&x);
            for p in [Norm::P(2.0), Norm::P(1.0), Norm::P(3.0), Norm::P(0.5), Norm::Inf] {
                let r = check(|v| v[0].norm(p, &axes, keepdim), inp);
                prop_assert!(r.is_ok(), "norm {p:?} {axes:?}: {}", r.unwrap_err());
            }
            for p in [Norm::P(2.0), Norm::P(3.0)] {
                let r = check2(|v| v[0].norm(p, &axes, keepdim), inp);
                prop_assert!(r.is_ok(), "norm {p:?} (second order) {axes:?}: {}", r.unwrap_err());
            }
        }
    }

    #[test]
    fn var_std_values_and_grads() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let v = Var::constant(t(&x, &[4]));
        assert!(close(&v.var(&[], 1, false).value().to_vec(), &[5.0 / 3.0]));
        assert!(close(&v.var(&[0], 0, true).value().to_vec(), &[1.25]));
        assert_eq!(v.var(&[0], 0, true).shape().as_slice(), &[1]);
        // 2 (x - 2.5) / 3
        assert!(close(&grad_of(&x, &[4], |v| v.var(&[], 1, false)), &[-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0]));
        // d std = d var / (2 std), std = sqrt(1.25)
        let s = 1.25f64.sqrt();
        let want: Vec<f64> = [-1.5, -0.5, 0.5, 1.5].iter().map(|c| 2.0 * c / 4.0 / (2.0 * s)).collect();
        assert!(close(&grad_of(&x, &[4], |v| v.std(&[0], 0, false)), &want));
        // per row of a matrix
        let m = [1.0, 3.0, 2.0, 2.0];
        assert!(close(&grad_of(&m, &[2, 2], |v| v.var(&[1], 0, false)), &[-1.0, 1.0, 0.0, 0.0]));
    }

    #[test]
    fn max_min_split_ties_evenly() {
        let x = [1.0, 3.0, 3.0, 2.0, 0.0, 2.0];
        let v = Var::constant(t(&x, &[2, 3]));
        assert_eq!(v.max(&[1], false).value().to_vec(), vec![3.0, 2.0]);
        assert_eq!(v.min(&[0], true).value().to_vec(), vec![1.0, 0.0, 2.0]);
        assert_eq!(grad_of(&x, &[2, 3], |v| v.max(&[1], false)), vec![0.0, 0.5, 0.5, 0.5, 0.0, 0.5]);
        assert_eq!(grad_of(&x, &[2, 3], |v| v.min(&[0], true)), vec![1.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(grad_of(&[2.0, 1.0, 1.0], &[1, 3], |v| v.min(&[1], false)), vec![0.0, 0.5, 0.5]);
        // the full reduction: the two 3s share the gradient
        assert_eq!(grad_of(&x, &[2, 3], |v| v.max(&[], false)), vec![0.0, 0.5, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(grad_of(&x, &[2, 3], |v| v.min(&[-1, 0], false)), vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn logsumexp_values_and_grads() {
        let x = [0.0, 3f64.ln()];
        let v = Var::constant(t(&x, &[2]));
        assert!(close(&v.logsumexp(&[], false).value().to_vec(), &[4f64.ln()]));
        assert!(close(&grad_of(&x, &[2], |v| v.logsumexp(&[0], false)), &[0.25, 0.75]));
        // large values stay finite (the kernel shifts by the maximum)
        let big = Var::param(t(&[1000.0, 1000.0], &[1, 2]));
        let y = big.logsumexp(&[1], true);
        assert!(close(&y.value().to_vec(), &[1000.0 + 2f64.ln()]));
        y.sum_all().backward();
        assert!(close(&big.grad().unwrap().to_vec(), &[0.5, 0.5]));
    }

    #[test]
    fn norm_values_and_subgradients() {
        let x = [3.0, -4.0];
        let v = Var::constant(t(&x, &[2]));
        assert_eq!(v.norm(Norm::P(2.0), &[], false).item(), 5.0);
        assert_eq!(v.norm(Norm::P(1.0), &[], false).item(), 7.0);
        assert_eq!(v.norm(Norm::Inf, &[], false).item(), 4.0);
        assert!(close(&grad_of(&x, &[2], |v| v.norm(Norm::P(2.0), &[], false)), &[0.6, -0.8]));
        assert!(close(&grad_of(&x, &[2], |v| v.norm(Norm::P(1.0), &[], false)), &[1.0, -1.0]));
        assert!(close(&grad_of(&x, &[2], |v| v.norm(Norm::Inf, &[], false)), &[0.0, -1.0]));
        // p = 3: x |x| / ||x||^2
        let n3 = 91f64.cbrt();
        assert!(close(&grad_of(&x, &[2], |v| v.norm(Norm::P(3.0), &[], false)), &[9.0 / (n3 * n3), -16.0 / (n3 * n3)]));
        // ties of |x| in the inf-norm share the gradient, with the sign of x
        assert_eq!(grad_of(&[-3.0, 1.0, 3.0], &[3], |v| v.norm(Norm::Inf, &[], false)), vec![-0.5, 0.0, 0.5]);
        // a lane of zeros gets the subgradient 0, not NaN, for every p
        let z = [0.0, 0.0, 1.0, 0.0];
        for p in [Norm::P(2.0), Norm::P(1.0), Norm::P(3.0), Norm::P(0.5), Norm::Inf] {
            assert_eq!(grad_of(&z, &[2, 2], |v| v.norm(p, &[1], false)), vec![0.0, 0.0, 1.0, 0.0], "{p:?}");
        }
    }

    #[test]
    #[should_panic(expected = "norm: p must be > 0, got -1")]
    fn norm_rejects_nonpositive_p() {
        let _ = Var::param(t(&[1.0, 2.0], &[2])).norm(Norm::P(-1.0), &[], false);
    }

    #[test]
    #[should_panic(expected = "var: dim 2 out of range for a tensor of shape [2, 2]")]
    fn var_rejects_a_bad_axis() {
        let _ = Var::param(t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])).var(&[2], 1, false);
    }

    #[test]
    #[should_panic(expected = "max: cannot reduce an empty dimension")]
    fn max_of_an_empty_dimension_panics() {
        let _ = Var::param(Tensor::<f64>::zeros(&[0])).max(&[0], false);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn gradcheck_sum_mean(x in tensor_strategy(), axis_bits in 0u8..8, keepdim: bool) {
            let nd = x.ndim();
            let axes: Vec<isize> = (0..nd).filter(|d| axis_bits >> d & 1 == 1).map(|d| d as isize).collect();
            let xn = noncontiguous(&x);
            for inp in [x.clone(), xn] {
                let r = check(|v| v[0].sum(&axes, keepdim), std::slice::from_ref(&inp));
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
                let r = check(|v| v[0].mean(&axes, keepdim), std::slice::from_ref(&inp));
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
                let r = check2(|v| v[0].mul(&v[0]).sum(&axes, keepdim), std::slice::from_ref(&inp));
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            }
        }
    }
}
