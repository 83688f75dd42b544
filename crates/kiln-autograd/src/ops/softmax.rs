//! Softmax and log-softmax along one dimension.
//!
//! The values come from kiln-tensor's fused, max-shifted kernels (stable for large inputs);
//! the backward is written with `Var` ops on the saved output when it is recorded (`create_graph`,
//! so it is differentiable again), and is one fused pass per lane otherwise
//! ([`Tensor::softmax_backward`]). The composition `exp(x) / sum(exp(x))` is the test oracle.

use kiln_tensor::{Float, Tensor};

use super::unary_op;
use crate::mode::is_grad_enabled;
use crate::trace::int;
use crate::var::Var;

impl<E: Float> Var<E> {
    /// `exp(x) / sum(exp(x))` along `dim`, like `torch.softmax(x, dim)`; computed with the
    /// maximum subtracted first, so large inputs do not overflow.
    ///
    /// **Panics** if `dim` is out of range.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let x = Var::param(Tensor::from_vec(vec![0.0f64, 2.0_f64.ln(), 1000.0, 1000.0], &[2, 2]));
    /// let p = x.softmax(-1);
    /// let v = p.value().to_vec();
    /// assert!((v[0] - 1.0 / 3.0).abs() < 1e-12 && (v[1] - 2.0 / 3.0).abs() < 1e-12);
    /// assert_eq!(v[2..], [0.5, 0.5]); // no overflow
    /// // each row sums to 1 whatever x is, so the gradient of a row sum is 0
    /// p.sum_all().backward();
    /// assert!(x.grad().unwrap().to_vec().iter().all(|g| g.abs() < 1e-12));
    /// ```
    // d softmax(x)_i/dx_j = s_i (δ_ij - s_j), so the gradient is g s - s sum(g s)
    #[must_use]
    pub fn softmax(&self, dim: isize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64))]);
        unary_op(
            self,
            "softmax",
            |x: &Tensor<E>| x.softmax(dim),
            move |_, s, g| {
                if is_grad_enabled() {
                    // recorded for higher orders
                    let gs = g.mul(s);
                    gs.sub(&s.mul(&gs.sum(&[dim], true)))
                } else {
                    // the same in one fused pass
                    Var::constant(s.with_value(|s| g.with_value(|g| s.softmax_backward(g, dim))))
                }
            },
        )
    }

    /// `x - logsumexp(x)` along `dim`, like `torch.log_softmax(x, dim)`.
    ///
    /// **Panics** if `dim` is out of range.
    // d log_softmax(x)_i/dx_j = δ_ij - softmax(x)_j, so the gradient is g - exp(out) sum(g)
    #[must_use]
    pub fn log_softmax(&self, dim: isize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64))]);
        unary_op(
            self,
            "log_softmax",
            |x: &Tensor<E>| x.log_softmax(dim),
            move |_, out, g| {
                if is_grad_enabled() {
                    g.sub(&out.exp().mul(&g.sum(&[dim], true)))
                } else {
                    Var::constant(out.with_value(|y| g.with_value(|g| y.log_softmax_backward(g, dim))))
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, tensor_strategy};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < tol)
    }

    /// The composition the fused kernels must agree with.
    fn softmax_oracle(x: &Var<f64>, dim: isize) -> Var<f64> {
        let e = x.exp();
        e.div(&e.sum(&[dim], true))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20))]
        #[test]
        fn gradcheck_softmax(x in tensor_strategy(), bits: u8, nc: bool) {
            let nd = x.ndim() as isize;
            let dim = (bits as isize % nd) - if bits & 0x80 != 0 { nd } else { 0 };
            let x = if nc { noncontiguous(&x) } else { x };
            let inp = std::slice::from_ref(&x);
            for (name, f) in [
                ("softmax", (|v: &Var<f64>, d| v.softmax(d)) as fn(&Var<f64>, isize) -> Var<f64>),
                ("log_softmax", |v, d| v.log_softmax(d)),
            ] {
                let r = check(|v| f(&v[0], dim), inp);
                prop_assert!(r.is_ok(), "{name} dim {dim} of {:?}: {}", x.shape(), r.unwrap_err());
                let r = check2(|v| f(&v[0], dim), inp);
                prop_assert!(r.is_ok(), "{name} (second order) dim {dim} of {:?}: {}", x.shape(), r.unwrap_err());
            }
            // against the composition: values and gradients
            let w = Var::constant(x.map(|v| v * v - 0.5));
            let (a, b) = (Var::param(x.clone()), Var::param(x.clone()));
            let (ya, yb) = (a.softmax(dim), softmax_oracle(&b, dim));
            prop_assert!(close(&ya.value().to_vec(), &yb.value().to_vec(), 1e-12));
            ya.mul(&w).sum_all().backward();
            yb.mul(&w).sum_all().backward();
            prop_assert!(close(&a.grad().unwrap().to_vec(), &b.grad().unwrap().to_vec(), 1e-12));
            let (c, d) = (Var::param(x.clone()), Var::param(x.clone()));
            let (yc, yd) = (c.log_softmax(dim), softmax_oracle(&d, dim).log());
            prop_assert!(close(&yc.value().to_vec(), &yd.value().to_vec(), 1e-12));
            yc.mul(&w).sum_all().backward();
            yd.mul(&w).sum_all().backward();
            prop_assert!(close(&c.grad().unwrap().to_vec(), &d.grad().unwrap().to_vec(), 1e-12));
        }
    }

    #[test]
    fn softmax_values_and_grads() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let x = Var::param(Tensor::from_vec(vec![0.0f64, 3f64.ln()], &[1, 2]));
        let s = x.softmax(-1);
        assert!(close(&s.value().to_vec(), &[0.25, 0.75], 1e-15));
        // g = [1, 0]: g s - s sum(g s) = [1/4 - 1/16, -3/16]
        s.backward_with(&Tensor::from_vec(vec![1.0, 0.0], &[1, 2]));
        assert!(close(&x.grad().unwrap().to_vec(), &[0.1875, -0.1875], 1e-15));

        let y = Var::param(Tensor::from_vec(vec![0.0f64, 3f64.ln()], &[2, 1]));
        let l = y.log_softmax(0);
        assert!(close(&l.value().to_vec(), &[-(4f64.ln()), (0.75f64).ln()], 1e-15));
        // g = [1, 1]: g - s sum(g) = [1 - 1/2, 1 - 3/2]
        l.sum_all().backward();
        assert!(close(&y.grad().unwrap().to_vec(), &[0.5, -0.5], 1e-15));
    }

    #[test]
    fn large_inputs_stay_finite() {
        let x = Var::param(Tensor::from_vec(vec![1000.0f64, 1000.0, -1000.0], &[3]));
        let s = x.softmax(0);
        assert!(close(&s.value().to_vec(), &[0.5, 0.5, 0.0], 1e-15));
        let l = x.log_softmax(0);
        assert!(close(&l.value().to_vec()[..2], &[-(2f64.ln()), -(2f64.ln())], 1e-12));
        l.select(0, 0).backward();
        assert!(close(&x.grad().unwrap().to_vec(), &[0.5, -0.5, 0.0], 1e-12), "{:?}", x.grad());
    }

    #[test]
    #[should_panic(expected = "softmax: dim 2 out of range for a tensor of shape [2, 3]")]
    fn softmax_rejects_a_bad_dim() {
        let _ = Var::param(Tensor::<f64>::zeros(&[2, 3])).softmax(2);
    }
}
