//! Gradient clipping: [`clip_grad_norm_`] and [`clip_grad_value_`], PyTorch's
//! `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_`.

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::elementwise::with_slice;
use crate::error::OptimError;

/// The norm of order `norm_type` of all gradients together (as if concatenated into one
/// vector), accumulated in f64.
fn total_norm<E: Float>(params: &[Var<E>], norm_type: f64) -> f64 {
    assert!(
        norm_type > 0.0 || norm_type == f64::INFINITY,
        "clip_grad_norm_: norm_type must be > 0 or infinity, got {norm_type}"
    );
    let mut acc = 0.0f64;
    for p in params {
        let Some(g) = p.grad() else { continue };
        with_slice(&g, |g| {
            if norm_type == f64::INFINITY {
                for &x in g {
                    let a = x.to_f64().abs();
                    // NaN propagates, as in PyTorch
                    acc = if a.is_nan() || acc.is_nan() { f64::NAN } else { acc.max(a) };
                }
            } else if norm_type == 2.0 {
                acc += g.iter().map(|&x| x.to_f64() * x.to_f64()).sum::<f64>();
            } else if norm_type == 1.0 {
                acc += g.iter().map(|&x| x.to_f64().abs()).sum::<f64>();
            } else {
                acc += g.iter().map(|&x| x.to_f64().abs().powf(norm_type)).sum::<f64>();
            }
        });
    }
    if norm_type == f64::INFINITY || norm_type == 1.0 {
        acc
    } else if norm_type == 2.0 {
        acc.sqrt()
    } else {
        acc.powf(1.0 / norm_type)
    }
}

/// Scales all gradients in place so that their joint norm is at most `max_norm`, and returns
/// the norm they had (the norm of the vector of all gradient elements), like
/// `torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)`.
///
/// The factor is PyTorch's: `min(max_norm / (total_norm + 1e-6), 1)`, applied to every
/// gradient. `norm_type` is any `p > 0` or `f64::INFINITY` (the largest absolute value).
/// Parameters without a gradient are skipped; with none at all the result is 0. A non-finite
/// norm is applied as PyTorch does with `error_if_nonfinite=False` (an infinite norm makes the
/// factor 0, a NaN norm makes every gradient NaN); [`try_clip_grad_norm_`] reports it instead.
///
/// **Differs from PyTorch**: the norm is accumulated in f64 over all elements at once instead
/// of as a norm of per-tensor norms in the gradients' dtype (the same value up to rounding).
///
/// **Panics** if `norm_type` is not positive.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::clip_grad_norm_;
/// use kiln_tensor::Tensor;
/// let a = Var::param(Tensor::from_vec(vec![3.0f64], &[1]));
/// let b = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
/// a.set_grad(Some(Tensor::from_vec(vec![3.0], &[1])));
/// b.set_grad(Some(Tensor::from_vec(vec![4.0], &[1])));
/// let norm = clip_grad_norm_(&[a.clone(), b.clone()], 1.0, 2.0);
/// assert_eq!(norm, 5.0);
/// let (ga, gb) = (a.grad().unwrap().item(), b.grad().unwrap().item());
/// assert!((ga - 0.6).abs() < 1e-6 && (gb - 0.8).abs() < 1e-6);
/// ```
pub fn clip_grad_norm_<E: Float>(params: &[Var<E>], max_norm: f64, norm_type: f64) -> f64 {
    let total = total_norm(params, norm_type);
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    // NaN must reach the gradients, as PyTorch's clamp lets it through
    let coef = if total.is_nan() { f64::NAN } else { coef };
    let c = E::from_f64(coef);
    for p in params {
        p.update_grad(|g| g.mul_scalar_(c));
    }
    total
}

/// [`clip_grad_norm_`] that leaves the gradients alone and returns
/// [`OptimError::NonFiniteNorm`] when their norm is NaN or infinite (PyTorch's
/// `error_if_nonfinite=True`).
///
/// # Errors
/// [`OptimError::NonFiniteNorm`] with the norm found.
pub fn try_clip_grad_norm_<E: Float>(params: &[Var<E>], max_norm: f64, norm_type: f64) -> Result<f64, OptimError> {
    let total = total_norm(params, norm_type);
    if !total.is_finite() {
        return Err(OptimError::NonFiniteNorm { norm_type, total_norm: total });
    }
    Ok(clip_grad_norm_(params, max_norm, norm_type))
}

/// Clamps every gradient element to `[-clip_value, clip_value]` in place, like
/// `torch.nn.utils.clip_grad_value_`.
///
/// **Panics** if `clip_value` is negative.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::clip_grad_value_;
/// use kiln_tensor::Tensor;
/// let a = Var::param(Tensor::from_vec(vec![0.0f32; 3], &[3]));
/// a.set_grad(Some(Tensor::from_vec(vec![-5.0, 0.5, 2.0], &[3])));
/// clip_grad_value_(&[a.clone()], 1.0);
/// assert_eq!(a.grad().unwrap().to_vec(), vec![-1.0, 0.5, 1.0]);
/// ```
pub fn clip_grad_value_<E: Float>(params: &[Var<E>], clip_value: f64) {
    assert!(clip_value >= 0.0, "clip_grad_value_: clip_value must be >= 0, got {clip_value}");
    for p in params {
        p.update_grad(|g| g.clamp_(Some(-clip_value), Some(clip_value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tensor::Tensor;

    fn with_grads(gs: &[&[f64]]) -> Vec<Var<f64>> {
        gs.iter()
            .map(|g| {
                let p = Var::param(Tensor::zeros(&[g.len()]));
                p.set_grad(Some(Tensor::from_vec(g.to_vec(), &[g.len()])));
                p
            })
            .collect()
    }

    fn grads(ps: &[Var<f64>]) -> Vec<Vec<f64>> {
        ps.iter().map(|p| p.grad().unwrap().to_vec()).collect()
    }

    #[test]
    fn l2_norm_clips_by_hand() {
        let ps = with_grads(&[&[1.0, 2.0], &[2.0], &[4.0]]);
        // sqrt(1 + 4 + 4 + 16) = 5
        let n = clip_grad_norm_(&ps, 2.5, 2.0);
        assert_eq!(n, 5.0);
        let c = 2.5 / (5.0 + 1e-6);
        assert_eq!(grads(&ps), vec![vec![c, 2.0 * c], vec![2.0 * c], vec![4.0 * c]]);
    }

    #[test]
    fn under_the_limit_nothing_changes() {
        let ps = with_grads(&[&[0.3, -0.4]]);
        let n = clip_grad_norm_(&ps, 1.0, 2.0);
        assert!((n - 0.5).abs() < 1e-15);
        assert_eq!(grads(&ps), vec![vec![0.3, -0.4]]);
    }

    #[test]
    fn l1_inf_and_p3_norms() {
        let ps = with_grads(&[&[1.0, -2.0], &[-3.0]]);
        assert_eq!(clip_grad_norm_(&ps, 100.0, 1.0), 6.0);
        assert_eq!(clip_grad_norm_(&ps, 100.0, f64::INFINITY), 3.0);
        let n3 = clip_grad_norm_(&ps, 100.0, 3.0);
        assert!((n3 - 36f64.powf(1.0 / 3.0)).abs() < 1e-12);
        // inf norm clipping scales by max_norm / max|g|
        let n = clip_grad_norm_(&ps, 1.5, f64::INFINITY);
        assert_eq!(n, 3.0);
        let c = 1.5 / (3.0 + 1e-6);
        assert_eq!(grads(&ps), vec![vec![c, -2.0 * c], vec![-3.0 * c]]);
    }

    #[test]
    fn params_without_grad_are_skipped() {
        let mut ps = with_grads(&[&[3.0, 4.0]]);
        ps.push(Var::param(Tensor::zeros(&[2])));
        assert_eq!(clip_grad_norm_(&ps, 10.0, 2.0), 5.0);
        assert!(ps[1].grad().is_none());
        assert_eq!(clip_grad_norm_::<f64>(&[], 1.0, 2.0), 0.0);
    }

    #[test]
    fn non_finite_norm_is_reported_by_the_checked_form() {
        let ps = with_grads(&[&[f64::INFINITY, 1.0]]);
        let e = try_clip_grad_norm_(&ps, 1.0, 2.0).unwrap_err();
        assert_eq!(e, OptimError::NonFiniteNorm { norm_type: 2.0, total_norm: f64::INFINITY });
        assert_eq!(grads(&ps), vec![vec![f64::INFINITY, 1.0]]);
        let ps = with_grads(&[&[f64::NAN, 1.0]]);
        assert!(clip_grad_norm_(&ps, 1.0, 2.0).is_nan());
        assert!(grads(&ps)[0].iter().all(|g| g.is_nan()));
    }

    #[test]
    fn clip_value_clamps_both_sides() {
        let ps = with_grads(&[&[-3.0, -0.5, 0.0, 0.7, 9.0]]);
        clip_grad_value_(&ps, 0.6);
        assert_eq!(grads(&ps), vec![vec![-0.6, -0.5, 0.0, 0.6, 0.6]]);
    }
}
