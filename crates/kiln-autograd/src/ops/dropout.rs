//! Dropout: elementwise (`dropout`) and whole channels (`dropout2d`), with the mask drawn from
//! an explicit [`Rng`] so that runs are reproducible.

use kiln_tensor::{Float, Rng, Tensor};

use super::unary_op;
use crate::var::Var;

/// Inverted-dropout mask of `shape`: `1 / (1 - p)` where kept (probability `1 - p`), 0
/// elsewhere; all zeros when `p == 1`.
fn mask<E: Float>(shape: &[usize], p: f64, rng: &mut Rng) -> Tensor<E> {
    if p >= 1.0 {
        Tensor::zeros(shape)
    } else {
        Tensor::bernoulli(shape, 1.0 - p, rng).mul_scalar(E::from_f64(1.0 / (1.0 - p)))
    }
}

fn check_p(op: &str, p: f64) {
    assert!((0.0..=1.0).contains(&p), "{op}: p must be in [0, 1], got {p}");
}

/// Records `x * mask` (the mask broadcasting to `x`), the mask being a constant.
// d (x m)/dx = m
fn apply_mask<E: Float>(x: &Var<E>, name: &'static str, m: Tensor<E>) -> Var<E> {
    let m2 = m.clone();
    unary_op(x, name, move |v| v.mul(&m), move |_, _, g| g.mul(&Var::constant(m2.clone())))
}

impl<E: Float> Var<E> {
    /// Inverted dropout, as `torch.nn.functional.dropout`: while `training`, each element is
    /// zeroed with probability `p` and the kept ones are scaled by `1 / (1 - p)`, so that the
    /// expected value is unchanged; otherwise (or when `p == 0`) `self` is returned as it is.
    /// `p == 1` gives zeros. The mask is drawn from `rng`.
    ///
    /// **Panics** if `p` is outside `[0, 1]`.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::{Rng, Tensor};
    /// let x = Var::param(Tensor::<f64>::ones(&[1000]));
    /// let y = x.dropout(0.5, true, &mut Rng::new(0));
    /// assert!(y.value().to_vec().iter().all(|&v| v == 0.0 || v == 2.0));
    /// let eval = x.dropout(0.5, false, &mut Rng::new(0));
    /// assert!(eval.same(&x));
    /// ```
    #[must_use]
    pub fn dropout(&self, p: f64, training: bool, rng: &mut Rng) -> Var<E> {
        check_p("dropout", p);
        if !training || p == 0.0 {
            return self.clone();
        }
        apply_mask(self, "dropout", mask(&self.shape(), p, rng))
    }

    /// Channel dropout, as `torch.nn.functional.dropout2d`: while `training`, each whole
    /// channel of `[N, C, H, W]` (or `[N, C, L]`, as PyTorch treats a 3-d input) is zeroed with
    /// probability `p` and the kept ones scaled by `1 / (1 - p)`. Identity when not training
    /// or `p == 0`; zeros when `p == 1`. The mask is drawn from `rng`.
    ///
    /// **Panics** if `p` is outside `[0, 1]`, or the input is neither 4-d nor 3-d.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::{Rng, Tensor};
    /// let x = Var::param(Tensor::<f64>::ones(&[2, 8, 3, 3]));
    /// let y = x.dropout2d(0.5, true, &mut Rng::new(1)).value();
    /// for n in 0..2 {
    ///     for c in 0..8 {
    ///         let plane = y.select(0, n).select(0, c).to_vec();
    ///         assert!(plane.iter().all(|&v| v == plane[0])); // a channel is kept or dropped whole
    ///     }
    /// }
    /// ```
    #[must_use]
    pub fn dropout2d(&self, p: f64, training: bool, rng: &mut Rng) -> Var<E> {
        check_p("dropout2d", p);
        let shape = self.shape();
        assert!(
            shape.len() == 4 || shape.len() == 3,
            "dropout2d: input must be [N, C, H, W] or [N, C, L], got {:?}",
            shape.as_slice()
        );
        if !training || p == 0.0 {
            return self.clone();
        }
        let mut mshape = vec![1; shape.len()];
        mshape[..2].copy_from_slice(&shape[..2]);
        apply_mask(self, "dropout2d", mask(&mshape, p, rng))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, values};
    use crate::var::Var;
    use kiln_tensor::{Rng, Tensor};
    use proptest::prelude::*;

    #[test]
    fn dropout_keeps_the_expected_scale() {
        let mut rng = Rng::new(3);
        let x: Tensor<f64> = Tensor::uniform(&[100_000], 0.5, 1.5, &mut rng);
        let xv = Var::constant(x.clone());
        for p in [0.1, 0.5, 0.8] {
            let y = xv.dropout(p, true, &mut rng).value();
            let (mx, my) = (x.mean(&[], false).item(), y.mean(&[], false).item());
            assert!((my - mx).abs() < 0.02 * mx / (1.0 - p), "p {p}: mean {my} vs {mx}");
            let zeros = y.to_vec().iter().filter(|&&v| v == 0.0).count() as f64 / 100_000.0;
            assert!((zeros - p).abs() < 0.01, "p {p}: dropped fraction {zeros}");
            // kept elements are scaled by 1 / (1 - p)
            let (xs, ys) = (x.to_vec(), y.to_vec());
            assert!(xs.iter().zip(&ys).all(|(a, b)| *b == 0.0 || (b - a / (1.0 - p)).abs() < 1e-12));
        }
        let c = Var::constant(Tensor::<f64>::uniform(&[400, 100, 1, 1], 0.5, 1.5, &mut rng));
        let y = c.dropout2d(0.3, true, &mut rng).value();
        let zeros = y.to_vec().iter().filter(|&&v| v == 0.0).count() as f64 / 40_000.0;
        assert!((zeros - 0.3).abs() < 0.02, "dropout2d dropped fraction {zeros}");
        assert!((y.mean(&[], false).item() - c.value().mean(&[], false).item()).abs() < 0.03);
    }

    #[test]
    fn identity_when_not_training_or_p_zero_and_zeros_at_p_one() {
        let mut rng = Rng::new(4);
        let x = Var::param(Tensor::<f64>::uniform(&[2, 3, 4], -1.0, 1.0, &mut rng));
        assert!(x.dropout(0.0, true, &mut rng).same(&x));
        assert!(x.dropout(0.7, false, &mut rng).same(&x));
        assert!(x.dropout2d(0.0, true, &mut rng).same(&x));
        assert!(x.dropout2d(0.7, false, &mut rng).same(&x));
        let z = x.dropout(1.0, true, &mut rng);
        assert_eq!(z.value().to_vec(), vec![0.0; 24]);
        z.sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0; 24]);
        assert_eq!(x.dropout2d(1.0, true, &mut rng).value().to_vec(), vec![0.0; 24]);
    }

    #[test]
    fn the_same_seed_gives_the_same_mask() {
        let x = Var::param(Tensor::<f32>::ones(&[64]));
        let a = x.dropout(0.5, true, &mut Rng::new(9)).value().to_vec();
        let b = x.dropout(0.5, true, &mut Rng::new(9)).value().to_vec();
        assert_eq!(a, b);
        assert!(a.contains(&0.0) && a.contains(&2.0));
    }

    #[test]
    #[should_panic(expected = "dropout: p must be in [0, 1], got 1.5")]
    fn p_out_of_range_panics() {
        let _ = Var::param(Tensor::<f64>::ones(&[3])).dropout(1.5, true, &mut Rng::new(0));
    }

    #[test]
    #[should_panic(expected = "dropout2d: input must be [N, C, H, W] or [N, C, L], got [3, 4]")]
    fn dropout2d_rank_panics() {
        let _ = Var::param(Tensor::<f64>::ones(&[3, 4])).dropout2d(0.5, true, &mut Rng::new(0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gradcheck_dropout(x in prop::collection::vec(1usize..=3, 3..=4).prop_flat_map(values),
                             seed: u64, p in 0.0f64..0.9, nc: bool) {
            let x = if nc { noncontiguous(&x) } else { x };
            // a fresh Rng of the same seed in every evaluation: the same mask each time
            let r = check(|v| v[0].dropout(p, true, &mut Rng::new(seed)), std::slice::from_ref(&x));
            prop_assert!(r.is_ok(), "dropout p {p}: {}", r.unwrap_err());
            let r = check(|v| v[0].dropout2d(p, true, &mut Rng::new(seed)), std::slice::from_ref(&x));
            prop_assert!(r.is_ok(), "dropout2d p {p}: {}", r.unwrap_err());
            let r = check2(|v| v[0].dropout(p, true, &mut Rng::new(seed)).square(), std::slice::from_ref(&x));
            prop_assert!(r.is_ok(), "dropout p {p} (second order): {}", r.unwrap_err());
        }
    }
}
