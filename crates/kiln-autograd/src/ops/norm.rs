//! `standardize_trailing`: `(x − mean) / √(var + eps)` over the trailing dimensions as one op,
//! the core of layer and group normalisation.
//!
//! The composition (`mean`, `var`, `sub`, `add_scalar`, `rsqrt`, `mul`) records six nodes and
//! makes about a dozen passes over the data forward and backward; this op makes two passes
//! each way with kiln-tensor's kernels ([`kiln_tensor::Tensor::standardize_trailing`] and its
//! backward). That kernel backward is the op's one backward; the composition
//! (`standardize_trailing_composed`) is its test oracle and, differentiated by the engine, its
//! path for higher-order gradients (see `fused_op` in `ops`).

use kiln_tensor::Float;
use smallvec::smallvec;

use super::fused_op;
use crate::trace::{float, int};
use crate::var::{Grads, Var};

/// The axes of the last `ndim` dimensions of a rank-`rank` tensor.
fn trailing_axes(rank: usize, ndim: usize) -> Vec<isize> {
    (rank - ndim..rank).map(|d| d as isize).collect()
}

/// [`Var::standardize_trailing`] composed of primitive ops (biased variance).
fn standardize_trailing_composed<E: Float>(x: &Var<E>, ndim: usize, eps: f64) -> Var<E> {
    let axes = trailing_axes(x.ndim(), ndim);
    x.sub(&x.mean(&axes, true)).mul(&x.var(&axes, 0, true).add_scalar(E::from_f64(eps)).rsqrt())
}

impl<E: Float> Var<E> {
    /// Standardises over the last `ndim` dimensions with the biased variance:
    /// `(x − mean) / √(var + eps)`, what `torch.nn.functional.layer_norm` computes before
    /// its weight and bias.
    ///
    /// **Panics** if `ndim` exceeds the rank.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let x = Var::param(Tensor::from_vec(vec![1.0f64, 3.0], &[1, 2]));
    /// let y = x.standardize_trailing(1, 0.0);
    /// assert_eq!(y.value().to_vec(), vec![-1.0, 1.0]);
    /// ```
    // x̂ = (x - μ) r with r = (σ² + eps)^(-1/2); dx = r (g - mean(g) - x̂ mean(g x̂))
    #[must_use]
    pub fn standardize_trailing(&self, ndim: usize, eps: f64) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("ndim", int(ndim as i64)), ("eps", float(eps))]);
        let (xhat, rstd) = self.with_value(|x| x.standardize_trailing(ndim, eps));
        fused_op(
            "standardize_trailing",
            xhat,
            smallvec![self.clone()],
            move |g: &Var<E>, _: &[Var<E>], out: &Var<E>| -> Grads<E> {
                let gx = out.with_value(|xh| g.with_value(|g| xh.standardize_trailing_backward(&rstd, g)));
                smallvec![Some(Var::constant(gx))]
            },
            move |x: &[Var<E>]| standardize_trailing_composed(&x[0], ndim, eps),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::standardize_trailing_composed as oracle;
    use crate::testing::{assert_same_second_order, check, check2, noncontiguous, tensor_strategy};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn standardize_trailing_matches_the_composition(x in tensor_strategy(), k: u8, nc: bool) {
            let ndim = 1 + k as usize % x.ndim();
            let x = if nc { noncontiguous(&x) } else { x };
            let eps = 1e-3;
            // gradients against finite differences, first and second order
            let inp = std::slice::from_ref(&x);
            let r = check(|v| v[0].standardize_trailing(ndim, eps), inp);
            prop_assert!(r.is_ok(), "ndim {ndim} of {:?}: {}", x.shape(), r.unwrap_err());
            let r = check2(|v| v[0].standardize_trailing(ndim, eps), inp);
            prop_assert!(r.is_ok(), "(second order) ndim {ndim} of {:?}: {}", x.shape(), r.unwrap_err());
            // values and first-order gradients (the fused backward) against the composition
            let w = Var::constant(x.map(|v| v * v - 0.5));
            let (a, b) = (Var::param(x.clone()), Var::param(x.clone()));
            let (ya, yb) = (a.standardize_trailing(ndim, eps), oracle(&b, ndim, eps));
            prop_assert!(close(&ya.value().to_vec(), &yb.value().to_vec(), 1e-12));
            ya.mul(&w).sum_all().backward();
            yb.mul(&w).sum_all().backward();
            prop_assert!(close(&a.grad().unwrap().to_vec(), &b.grad().unwrap().to_vec(), 1e-10));
        }
    }

    #[test]
    fn rows_have_zero_mean_and_unit_variance() {
        let x = Var::constant(Tensor::from_vec((0..24).map(|i| (i * i) as f32).collect(), &[2, 3, 4]));
        let y = x.standardize_trailing(2, 0.0).value();
        for row in y.to_vec().chunks(12) {
            let m: f32 = row.iter().sum::<f32>() / 12.0;
            let v: f32 = row.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / 12.0;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "{m} {v}");
        }
    }

    #[test]
    fn second_order_equals_the_composition() {
        let x = Tensor::from_vec((0..24).map(|i| ((i * 5) % 7) as f64 - 3.0).collect(), &[2, 3, 4]);
        for ndim in 1..=3 {
            assert_same_second_order(
                |v| v[0].standardize_trailing(ndim, 1e-3),
                |v| oracle(&v[0], ndim, 1e-3),
                std::slice::from_ref(&x),
                1e-12,
            );
        }
    }
}
