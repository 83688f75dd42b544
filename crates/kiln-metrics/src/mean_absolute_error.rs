//! [`MeanAbsoluteError`]: the mean of absolute differences.

use kiln_tensor::Float;

use crate::compensated_sum::CompensatedSum;
use crate::input::{check_same_len, read_regression};
use crate::mean_error::mean_error_metric;
use crate::metric::{Metric, MetricInput};

/// Mean absolute error, `mean(|pred - target|)` over every element (scikit-learn's
/// `mean_absolute_error`; PyTorch's `L1Loss` with `reduction='mean'`).
///
/// Keeps a compensated sum and a count, so merging adds them. NaN before any update.
/// [`Metric::update`] takes predictions and targets of one shape (size-1 axes aside, so
/// `[N, 1]` fits `[N]`); all elements are pooled.
///
/// # Example
///
/// ```
/// use kiln_metrics::{MeanAbsoluteError, Metric};
/// use kiln_tensor::Tensor;
///
/// let mut mae = MeanAbsoluteError::new();
/// let preds = Tensor::from_vec(vec![2.5f32, 0.0, 2.0, 8.0], &[4, 1]);
/// mae.update(&preds, &Tensor::from_vec(vec![3.0f32, -0.5, 2.0, 7.0], &[4]));
/// assert_eq!(mae.compute(), 0.5);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MeanAbsoluteError {
    sum: CompensatedSum,
    count: u64,
}

mean_error_metric!(MeanAbsoluteError, "MeanAbsoluteError", "mae", "mean absolute error", |d| d.abs());

/// Mean absolute error of predictions against targets (scikit-learn's `mean_absolute_error`);
/// NaN for empty input.
///
/// **Panics** if the lengths differ.
///
/// ```
/// use kiln_metrics::functional::mean_absolute_error;
/// assert_eq!(mean_absolute_error(&[2.5, 0.0, 2.0, 8.0], &[3.0, -0.5, 2.0, 7.0]), 0.5);
/// ```
#[must_use]
pub fn mean_absolute_error<E: Float>(preds: &[E], targets: &[E]) -> f64 {
    let mut m = MeanAbsoluteError::new();
    m.update_values(preds, targets);
    m.compute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn hand_checked() {
        assert_eq!(mean_absolute_error(&[1.0f32, 2.0], &[1.0, 4.0]), 1.0);
        assert!(mean_absolute_error::<f64>(&[], &[]).is_nan());
    }

    #[test]
    fn merge_equals_single_pass() {
        let p: Vec<f64> = (0..20).map(|i| (i as f64 * 0.37).sin()).collect();
        let t: Vec<f64> = (0..20).map(|i| (i as f64 * 0.11).cos()).collect();
        let mut whole = MeanAbsoluteError::new();
        whole.update_values(&p, &t);
        let mut a = MeanAbsoluteError::new();
        let mut b = MeanAbsoluteError::new();
        a.update_values(&p[..7], &t[..7]);
        b.update(&Shaped(p[7..].to_vec(), vec![13, 1]), &Shaped(t[7..].to_vec(), vec![13]));
        a.merge(&b);
        assert!((a.compute() - whole.compute()).abs() < 1e-15);
        assert_eq!(a.count(), 20);
        a.reset();
        assert_eq!(a.count(), 0);
    }

    #[test]
    #[should_panic(expected = "MeanAbsoluteError: predictions [3, 2] and targets [3] must have the same shape")]
    fn shape_mismatch() {
        MeanAbsoluteError::new().update(&Shaped(vec![0.0; 6], vec![3, 2]), &Shaped(vec![0.0; 3], vec![3]));
    }
}
