//! [`FBeta`] and [`F1Score`]: weighted harmonic means of precision and recall.

use kiln_tensor::Float;

use crate::average::Average;
use crate::class_stats::{check_beta, class_stats_metric, stats_of, ClassStats, Score};
use crate::input::Task;
use crate::metric::{Metric, MetricInput};

/// F-beta score, `(1 + β²) · P · R / (β² · P + R)` per class, averaged as [`Average`] says
/// (scikit-learn's `fbeta_score`). β > 1 weighs recall more, β < 1 precision.
///
/// It is computed from counts, `(1 + β²) tp / ((1 + β²) tp + β² fn + fp)`, as scikit-learn
/// does since 1.3: the zero-division value (default 0) is used only when a class is neither
/// present nor predicted. β = 0 gives precision, β = ∞ recall.
/// Inputs of [`Metric::update`] are read as for [`Precision`](crate::Precision).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Average, FBeta, Metric};
///
/// let mut f2 = FBeta::binary(2.0);
/// f2.update_labels(&[1, 1, 0, 0], &[1, 0, 1, 1]); // tp 1, fp 1, fn 2
/// assert_eq!(f2.compute(), 5.0 / 14.0);
/// assert_eq!(f2.name(), "f2");
/// ```
#[derive(Clone, Debug)]
pub struct FBeta {
    stats: ClassStats,
    beta: f64,
}

impl FBeta {
    /// Binary F-beta of class 1 (threshold 0.5, [`Average::Binary`]).
    ///
    /// **Panics** if `beta` is negative or NaN.
    #[must_use]
    pub fn binary(beta: f64) -> FBeta {
        check_beta("FBeta", beta);
        FBeta { stats: ClassStats::new("FBeta", Task::Binary { threshold: 0.5 }, Average::Binary), beta }
    }

    /// Multiclass F-beta over `num_classes` classes.
    ///
    /// **Panics** if `beta` is negative or NaN, `num_classes` is 0, or `average` is
    /// [`Average::Binary`] and `num_classes != 2`.
    #[must_use]
    pub fn multiclass(beta: f64, num_classes: usize, average: Average) -> FBeta {
        check_beta("FBeta", beta);
        let task = Task::multiclass("FBeta", num_classes);
        FBeta { stats: ClassStats::new("FBeta", task, average), beta }
    }

    /// The β this metric was built with.
    #[must_use]
    pub fn beta(&self) -> f64 {
        self.beta
    }

    fn score(&self) -> Score {
        Score::FBeta(self.beta)
    }

    fn base_name(&self) -> String {
        format!("f{}", self.beta)
    }
}

class_stats_metric!(FBeta, "FBeta");

/// F1 score, the harmonic mean of precision and recall: [`FBeta`] with β = 1
/// (scikit-learn's `f1_score`).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Average, F1Score, Metric};
///
/// let mut f1 = F1Score::multiclass(3, Average::Macro);
/// f1.update_labels(&[0, 1, 1, 2], &[0, 1, 2, 2]);
/// // per class: 1, 2/3, 2/3
/// assert!((f1.compute() - 7.0 / 9.0).abs() < 1e-15);
/// assert_eq!(f1.name(), "f1_macro");
/// ```
#[derive(Clone, Debug)]
pub struct F1Score {
    stats: ClassStats,
}

impl F1Score {
    /// Binary F1 of class 1 (threshold 0.5, [`Average::Binary`]).
    #[must_use]
    pub fn binary() -> F1Score {
        F1Score { stats: ClassStats::new("F1Score", Task::Binary { threshold: 0.5 }, Average::Binary) }
    }

    /// Multiclass F1 over `num_classes` classes.
    ///
    /// **Panics** if `num_classes` is 0, or `average` is [`Average::Binary`] and
    /// `num_classes != 2`.
    #[must_use]
    pub fn multiclass(num_classes: usize, average: Average) -> F1Score {
        let task = Task::multiclass("F1Score", num_classes);
        F1Score { stats: ClassStats::new("F1Score", task, average) }
    }

    fn score(&self) -> Score {
        Score::FBeta(1.0)
    }

    fn base_name(&self) -> String {
        "f1".to_string()
    }
}

class_stats_metric!(F1Score, "F1Score");

/// F-beta score of hard predictions (scikit-learn's
/// `fbeta_score(targets, preds, beta=beta, labels=range(num_classes), average=..., zero_division=...)`).
///
/// **Panics** if the lengths differ, an index is `>= num_classes`, or `beta` is negative.
///
/// ```
/// use kiln_metrics::{functional::fbeta_score, Average};
/// assert_eq!(fbeta_score(&[1, 1, 0, 0], &[1, 0, 1, 1], 2, 2.0, Average::Binary, 0.0), 5.0 / 14.0);
/// ```
#[must_use]
pub fn fbeta_score(
    preds: &[usize],
    targets: &[usize],
    num_classes: usize,
    beta: f64,
    average: Average,
    zero_division: f64,
) -> f64 {
    check_beta("fbeta_score", beta);
    stats_of("fbeta_score", preds, targets, num_classes, average, zero_division).compute(Score::FBeta(beta))
}

/// F-beta score of every class (scikit-learn's `average=None`).
///
/// **Panics** as [`fbeta_score`].
#[must_use]
pub fn fbeta_score_per_class(
    preds: &[usize],
    targets: &[usize],
    num_classes: usize,
    beta: f64,
    zero_division: f64,
) -> Vec<f64> {
    check_beta("fbeta_score", beta);
    stats_of("fbeta_score", preds, targets, num_classes, Average::Macro, zero_division).per_class(Score::FBeta(beta))
}

/// F1 score of hard predictions (scikit-learn's `f1_score`): [`fbeta_score`] with β = 1.
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
///
/// ```
/// use kiln_metrics::{functional::f1_score, Average};
/// assert_eq!(f1_score(&[1, 1, 0, 0], &[1, 0, 1, 1], 2, Average::Binary, 0.0), 0.4);
/// ```
#[must_use]
pub fn f1_score(preds: &[usize], targets: &[usize], num_classes: usize, average: Average, zero_division: f64) -> f64 {
    fbeta_score(preds, targets, num_classes, 1.0, average, zero_division)
}

/// F1 score of every class (scikit-learn's `average=None`).
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
#[must_use]
pub fn f1_score_per_class(preds: &[usize], targets: &[usize], num_classes: usize, zero_division: f64) -> Vec<f64> {
    fbeta_score_per_class(preds, targets, num_classes, 1.0, zero_division)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functional::{precision_per_class, recall_per_class};

    #[test]
    fn f1_is_harmonic_mean_of_precision_and_recall() {
        let preds = [0, 2, 1, 1, 0, 2, 2, 0, 1];
        let targets = [0, 1, 1, 2, 0, 2, 0, 0, 1];
        let p = precision_per_class(&preds, &targets, 3, 0.0);
        let r = recall_per_class(&preds, &targets, 3, 0.0);
        let f = f1_score_per_class(&preds, &targets, 3, 0.0);
        for c in 0..3 {
            assert!((f[c] - 2.0 * p[c] * r[c] / (p[c] + r[c])).abs() < 1e-15);
        }
        let micro = f1_score(&preds, &targets, 3, Average::Micro, 0.0);
        assert!((micro - 6.0 / 9.0).abs() < 1e-15); // = accuracy
    }

    #[test]
    fn beta_limits() {
        let preds = [0, 2, 1, 1, 0];
        let targets = [0, 1, 1, 2, 2];
        let p = precision_per_class(&preds, &targets, 3, 0.0);
        let r = recall_per_class(&preds, &targets, 3, 0.0);
        assert_eq!(fbeta_score_per_class(&preds, &targets, 3, 0.0, 0.0), p);
        assert_eq!(fbeta_score_per_class(&preds, &targets, 3, f64::INFINITY, 0.0), r);
    }

    #[test]
    fn zero_division_only_when_absent_and_never_predicted() {
        // class 2 is present but never predicted: F = 0 even with zero_division = 1;
        // class 3 is neither: F = zero_division
        let preds = [0, 1, 1];
        let targets = [0, 1, 2];
        assert_eq!(f1_score_per_class(&preds, &targets, 4, 1.0), vec![1.0, 2.0 / 3.0, 0.0, 1.0]);
        let mut f = F1Score::multiclass(4, Average::Weighted).with_zero_division(1.0);
        f.update_labels(&preds, &targets);
        // weights 1, 1, 1, 0
        assert!((f.compute() - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
        // nothing at all: zero_division
        assert_eq!(F1Score::binary().compute(), 0.0);
        assert_eq!(FBeta::binary(0.5).with_zero_division(1.0).compute(), 1.0);
    }

    #[test]
    fn merge_equals_single_pass() {
        let preds = [0, 2, 1, 1, 0, 2, 2, 0, 1, 1];
        let targets = [0, 1, 1, 2, 0, 2, 0, 0, 1, 2];
        let mut whole = FBeta::multiclass(0.5, 3, Average::Weighted);
        whole.update_labels(&preds, &targets);
        let mut a = FBeta::multiclass(0.5, 3, Average::Weighted);
        let mut b = a.clone();
        a.update_labels(&preds[..4], &targets[..4]);
        b.update_labels(&preds[4..], &targets[4..]);
        a.merge(&b);
        assert_eq!(a.compute(), whole.compute());
        assert_eq!(a.name(), "f0.5_weighted");
    }

    #[test]
    #[should_panic(expected = "FBeta::merge: FBeta(2.0) and FBeta(1.0) differ")]
    fn merge_rejects_other_beta() {
        FBeta::binary(2.0).merge(&FBeta::binary(1.0));
    }

    #[test]
    #[should_panic(expected = "FBeta: beta must be >= 0, got -1")]
    fn negative_beta_panics() {
        let _ = FBeta::binary(-1.0);
    }
}
