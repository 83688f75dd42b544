//! [`MeanSquaredError`]: the mean of squared differences.

use kiln_tensor::Float;

use crate::compensated_sum::CompensatedSum;
use crate::input::{check_same_len, read_regression};
use crate::mean_error::mean_error_metric;
use crate::metric::{Metric, MetricInput};

/// Mean squared error, `mean((pred - target)²)` over every element (scikit-learn's
/// `mean_squared_error`; PyTorch's `MSELoss` with `reduction='mean'`).
///
/// Keeps a compensated sum and a count, so merging adds them. NaN before any update.
/// [`Metric::update`] takes predictions and targets of one shape (size-1 axes aside, so
/// `[N, 1]` fits `[N]`); all elements are pooled.
///
/// # Example
///
/// ```
/// use kiln_metrics::{MeanSquaredError, Metric};
/// use kiln_tensor::Tensor;
///
/// let mut mse = MeanSquaredError::new();
/// let preds = Tensor::from_vec(vec![2.5f32, 0.0, 2.0, 8.0], &[4, 1]);
/// mse.update(&preds, &Tensor::from_vec(vec![3.0f32, -0.5, 2.0, 7.0], &[4]));
/// assert_eq!(mse.compute(), 0.375);
/// assert_eq!(mse.compute().sqrt(), 0.375f64.sqrt()); // RMSE
/// ```
#[derive(Clone, Debug, Default)]
pub struct MeanSquaredError {
    sum: CompensatedSum,
    count: u64,
}

mean_error_metric!(MeanSquaredError, "MeanSquaredError", "mse", "mean squared error", |d| d * d);

/// Mean squared error of predictions against targets (scikit-learn's `mean_squared_error`);
/// NaN for empty input.
///
/// **Panics** if the lengths differ.
///
/// ```
/// use kiln_metrics::functional::mean_squared_error;
/// assert_eq!(mean_squared_error(&[2.5, 0.0, 2.0, 8.0], &[3.0, -0.5, 2.0, 7.0]), 0.375);
/// ```
#[must_use]
pub fn mean_squared_error<E: Float>(preds: &[E], targets: &[E]) -> f64 {
    let mut m = MeanSquaredError::new();
    m.update_values(preds, targets);
    m.compute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn hand_checked() {
        assert_eq!(mean_squared_error(&[1.0f32, 2.0], &[1.0, 4.0]), 2.0);
        assert!(mean_squared_error::<f64>(&[], &[]).is_nan());
    }

    #[test]
    fn merge_equals_single_pass() {
        let p: Vec<f64> = (0..20).map(|i| (i as f64 * 0.37).sin()).collect();
        let t: Vec<f64> = (0..20).map(|i| (i as f64 * 0.11).cos()).collect();
        let mut whole = MeanSquaredError::new();
        whole.update_values(&p, &t);
        let mut a = MeanSquaredError::new();
        let mut b = MeanSquaredError::new();
        a.update_values(&p[..7], &t[..7]);
        b.update(&Shaped(p[7..].to_vec(), vec![13, 1]), &Shaped(t[7..].to_vec(), vec![13]));
        a.merge(&b);
        assert!((a.compute() - whole.compute()).abs() < 1e-15);
        assert_eq!(a.count(), 20);
        a.reset();
        assert_eq!(a.count(), 0);
    }

    #[test]
    #[should_panic(expected = "MeanSquaredError: predictions [3, 2] and targets [3] must have the same shape")]
    fn shape_mismatch() {
        MeanSquaredError::new().update(&Shaped(vec![0.0; 6], vec![3, 2]), &Shaped(vec![0.0; 3], vec![3]));
    }
}
