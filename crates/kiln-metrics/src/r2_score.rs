//! [`R2Score`]: the coefficient of determination.

use kiln_tensor::Float;

use crate::compensated_sum::CompensatedSum;
use crate::input::{check_same_len, read_regression};
use crate::metric::{Metric, MetricInput};

/// Coefficient of determination, `R² = 1 − SS_res / SS_tot` with `SS_res = Σ (target − pred)²`
/// and `SS_tot = Σ (target − mean(target))²` (scikit-learn's `r2_score`). 1 is a perfect fit,
/// 0 is no better than predicting the mean, and it can be negative.
///
/// As in scikit-learn (`force_finite=True`): NaN with fewer than two samples; when all targets
/// are equal (`SS_tot = 0`), 1 for a perfect fit and 0 otherwise. All elements are pooled into
/// one output (for several outputs, keep one metric per output).
///
/// The target variance is accumulated with Chan's parallel update of (count, mean, M2) on
/// targets shifted by the first one seen, which stays exact to rounding where
/// `Σt² − (Σt)²/n` would cancel (large offsets), and merges two workers' states as if one had
/// seen all the data.
///
/// # Example
///
/// ```
/// use kiln_metrics::{Metric, R2Score};
///
/// let mut r2 = R2Score::new();
/// r2.update_values(&[2.5f64, 0.0, 2.0, 8.0], &[3.0, -0.5, 2.0, 7.0]);
/// assert!((r2.compute() - 0.9486081370449679).abs() < 1e-15);
/// ```
#[derive(Clone, Debug)]
pub struct R2Score {
    count: u64,
    /// The targets' origin for `mean` (the first target seen), so that a large common offset
    /// does not eat the digits of the mean.
    shift: f64,
    /// The mean of `target - shift`.
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    ss_res: CompensatedSum,
}

impl Default for R2Score {
    fn default() -> R2Score {
        R2Score {
            count: 0,
            shift: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ss_res: CompensatedSum::default(),
        }
    }
}

impl R2Score {
    /// An empty R² score.
    #[must_use]
    pub fn new() -> R2Score {
        R2Score::default()
    }

    /// Accumulates predictions and targets, element by element.
    ///
    /// **Panics** if the lengths differ.
    pub fn update_values<E: Float>(&mut self, preds: &[E], targets: &[E]) {
        check_same_len("R2Score", preds.len(), targets.len());
        if targets.is_empty() {
            return;
        }
        let shift = if self.count == 0 { Float::to_f64(targets[0]) } else { self.shift };
        let mut batch = R2Score { shift, ..R2Score::default() };
        let mut sum = CompensatedSum::default();
        for (&p, &t) in preds.iter().zip(targets) {
            let (p, t) = (Float::to_f64(p), Float::to_f64(t));
            sum.add(t - batch.shift);
            batch.ss_res.add((t - p) * (t - p));
            batch.min = batch.min.min(t);
            batch.max = batch.max.max(t);
        }
        batch.count = targets.len() as u64;
        batch.mean = sum.value() / batch.count as f64;
        let mut m2 = CompensatedSum::default();
        for &t in targets {
            let d = (Float::to_f64(t) - batch.shift) - batch.mean;
            m2.add(d * d);
        }
        batch.m2 = m2.value();
        self.merge(&batch);
    }

    /// The number of elements seen.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Metric for R2Score {
    type Output = f64;

    fn name(&self) -> String {
        "r2".to_string()
    }

    fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
        let (p, t) = read_regression("R2Score", preds, targets);
        self.update_values(&p, &t);
    }

    fn compute(&self) -> f64 {
        if self.count < 2 {
            return f64::NAN;
        }
        let ss_res = self.ss_res.value();
        if self.min == self.max || self.m2 == 0.0 {
            return if ss_res == 0.0 { 1.0 } else { 0.0 };
        }
        1.0 - ss_res / self.m2
    }

    fn reset(&mut self) {
        *self = R2Score::default();
    }

    fn merge(&mut self, other: &R2Score) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        // Chan, Golub & LeVeque (1979): combining (n, mean, M2) of two parts
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = (other.mean + (other.shift - self.shift)) - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.ss_res.merge(&other.ss_res);
    }
}

/// R² of predictions against targets (scikit-learn's `r2_score(targets, preds)`).
///
/// **Panics** if the lengths differ.
///
/// ```
/// use kiln_metrics::functional::r2_score;
/// assert_eq!(r2_score(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
/// assert_eq!(r2_score(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]), 0.0);
/// ```
#[must_use]
pub fn r2_score<E: Float>(preds: &[E], targets: &[E]) -> f64 {
    let mut m = R2Score::new();
    m.update_values(preds, targets);
    m.compute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn degenerate_cases() {
        assert!(r2_score(&[1.0], &[2.0]).is_nan());
        assert!(r2_score::<f32>(&[], &[]).is_nan());
        // constant targets: 1 if predicted exactly, else 0
        assert_eq!(r2_score(&[0.1, 0.1, 0.1], &[0.1, 0.1, 0.1]), 1.0);
        assert_eq!(r2_score(&[0.1, 0.2, 0.1], &[0.1, 0.1, 0.1]), 0.0);
        // worse than the mean
        assert_eq!(r2_score(&[3.0, 2.0, 1.0], &[1.0, 2.0, 3.0]), -3.0);
    }

    #[test]
    fn large_offset_does_not_cancel() {
        let t: Vec<f64> = (0..100).map(|i| 1e9 + (i % 7) as f64).collect();
        let p: Vec<f64> = t.iter().enumerate().map(|(i, x)| x + if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
        let mean = t.iter().sum::<f64>() / 100.0;
        let ss_tot: f64 = t.iter().map(|x| (x - mean) * (x - mean)).sum();
        let expected = 1.0 - 25.0 / ss_tot;
        let mut r2 = R2Score::new();
        for (pc, tc) in p.chunks(9).zip(t.chunks(9)) {
            r2.update_values(pc, tc);
        }
        assert!((r2.compute() - expected).abs() < 1e-12);
    }

    #[test]
    fn merge_equals_single_pass() {
        let t: Vec<f64> = (0..30).map(|i| (i as f64 * 0.7).sin() * 3.0 + 1.0).collect();
        let p: Vec<f64> = t.iter().enumerate().map(|(i, x)| x + (i as f64 * 1.3).cos() * 0.4).collect();
        let whole = r2_score(&p, &t);
        let mut a = R2Score::new();
        let mut b = R2Score::new();
        a.update_values(&p[..11], &t[..11]);
        b.update(&Shaped(p[11..].to_vec(), vec![19]), &Shaped(t[11..].to_vec(), vec![19, 1]));
        a.merge(&b);
        assert!((a.compute() - whole).abs() < 1e-14);
        let mut empty = R2Score::new();
        empty.merge(&a);
        assert_eq!(empty.compute(), a.compute());
        assert_eq!(a.name(), "r2");
    }
}
