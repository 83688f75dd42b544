//! [`Precision`]: of the samples predicted as a class, the fraction that belong to it.

use kiln_tensor::Float;

use crate::average::Average;
use crate::class_stats::{class_stats_metric, stats_of, ClassStats, Score};
use crate::input::Task;
use crate::metric::{Metric, MetricInput};

/// Precision, `tp / (tp + fp)` per class, averaged as [`Average`] says (scikit-learn's
/// `precision_score`).
///
/// A class that is never predicted has precision 0/0, which takes the zero-division value
/// (default 0, see [`with_zero_division`](Precision::with_zero_division)); it still counts in
/// the macro and weighted averages.
///
/// # Inputs of [`Metric::update`]
///
/// - binary: scores (probabilities, or logits with threshold 0) of the targets' shape;
/// - multiclass: class indices of the targets' shape, or scores `[N, C, ...]` for targets
///   `[N, ...]` (argmax over axis 1).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Average, Metric, Precision};
///
/// let mut p = Precision::multiclass(3, Average::Macro);
/// p.update_labels(&[0, 1, 1, 2], &[0, 1, 2, 2]);
/// assert_eq!(p.compute_per_class(), vec![1.0, 0.5, 1.0]);
/// assert!((p.compute() - 2.5 / 3.0).abs() < 1e-15);
///
/// let mut b = Precision::binary(); // class 1 is positive, threshold 0.5
/// b.update_scores(&[0.9f32, 0.6, 0.2], &[1, 0, 0]);
/// assert_eq!(b.compute(), 0.5);
/// ```
#[derive(Clone, Debug)]
pub struct Precision {
    stats: ClassStats,
}

impl Precision {
    /// Binary precision of class 1 (threshold 0.5, [`Average::Binary`]).
    #[must_use]
    pub fn binary() -> Precision {
        Precision { stats: ClassStats::new("Precision", Task::Binary { threshold: 0.5 }, Average::Binary) }
    }

    /// Multiclass precision over `num_classes` classes.
    ///
    /// **Panics** if `num_classes` is 0, or `average` is [`Average::Binary`] and
    /// `num_classes != 2`.
    #[must_use]
    pub fn multiclass(num_classes: usize, average: Average) -> Precision {
        let task = Task::multiclass("Precision", num_classes);
        Precision { stats: ClassStats::new("Precision", task, average) }
    }

    fn score(&self) -> Score {
        Score::Precision
    }

    fn base_name(&self) -> String {
        "precision".to_string()
    }
}

class_stats_metric!(Precision, "Precision");

/// Precision of hard predictions (scikit-learn's
/// `precision_score(targets, preds, labels=range(num_classes), average=..., zero_division=...)`).
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
///
/// ```
/// use kiln_metrics::{functional::precision, Average};
/// assert_eq!(precision(&[1, 1, 0], &[1, 0, 0], 2, Average::Binary, 0.0), 0.5);
/// ```
#[must_use]
pub fn precision(preds: &[usize], targets: &[usize], num_classes: usize, average: Average, zero_division: f64) -> f64 {
    stats_of("precision", preds, targets, num_classes, average, zero_division).compute(Score::Precision)
}

/// Precision of every class (scikit-learn's `average=None`).
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
#[must_use]
pub fn precision_per_class(preds: &[usize], targets: &[usize], num_classes: usize, zero_division: f64) -> Vec<f64> {
    stats_of("precision", preds, targets, num_classes, Average::Macro, zero_division).per_class(Score::Precision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn hand_checked_multiclass() {
        // class 0: predicted 3 times, right twice; class 1: predicted once, right;
        // class 2: never predicted (0/0)
        let preds = [0, 0, 0, 1, 1];
        let targets = [0, 0, 2, 1, 2];
        let per = precision_per_class(&preds, &targets, 3, 0.0);
        assert_eq!(per, vec![2.0 / 3.0, 0.5, 0.0]);
        assert_eq!(precision(&preds, &targets, 3, Average::Micro, 0.0), 3.0 / 5.0);
        assert_eq!(precision(&preds, &targets, 3, Average::Macro, 0.0), (2.0 / 3.0 + 0.5) / 3.0);
        // supports 2, 1, 2
        let weighted = (2.0 * 2.0 / 3.0 + 0.5) / 5.0;
        assert!((precision(&preds, &targets, 3, Average::Weighted, 0.0) - weighted).abs() < 1e-15);
        // zero_division = 1 and NaN
        assert_eq!(precision_per_class(&preds, &targets, 3, 1.0)[2], 1.0);
        let nan_macro = precision(&preds, &targets, 3, Average::Macro, f64::NAN);
        assert!((nan_macro - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn empty_input_gives_zero_division() {
        let p = Precision::multiclass(3, Average::Macro);
        assert_eq!(p.compute(), 0.0);
        assert_eq!(p.clone().with_zero_division(1.0).compute(), 1.0);
        let w = Precision::multiclass(3, Average::Weighted).with_zero_division(1.0);
        assert_eq!(w.compute(), 1.0);
        assert_eq!(Precision::binary().compute(), 0.0);
    }

    #[test]
    fn binary_threshold_is_inclusive() {
        let mut p = Precision::binary();
        p.update_scores(&[0.5f64, 0.49], &[0, 1]);
        assert_eq!(p.compute(), 0.0); // 0.5 predicts 1 (a false positive)
        let mut logits = Precision::binary().with_threshold(0.0);
        logits.update(&Shaped(vec![2.0, -1.0, 0.3], vec![3, 1]), &Shaped(vec![1.0, 1.0, 0.0], vec![3]));
        assert_eq!(logits.compute(), 0.5);
        assert_eq!(logits.name(), "precision");
    }

    #[test]
    fn merge_equals_single_pass() {
        let preds = [0, 2, 1, 1, 0, 2, 2, 0];
        let targets = [0, 1, 1, 2, 0, 2, 0, 0];
        let mut whole = Precision::multiclass(3, Average::Weighted);
        whole.update_labels(&preds, &targets);
        let mut a = Precision::multiclass(3, Average::Weighted);
        let mut b = a.clone();
        a.update_labels(&preds[..3], &targets[..3]);
        b.update_labels(&preds[3..], &targets[3..]);
        a.merge(&b);
        assert_eq!(a.compute(), whole.compute());
        assert_eq!(a.compute_per_class(), whole.compute_per_class());
        a.reset();
        assert_eq!(a.support(), vec![0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "Precision::merge: configurations differ")]
    fn merge_rejects_other_average() {
        Precision::multiclass(3, Average::Macro).merge(&Precision::multiclass(3, Average::Micro));
    }

    #[test]
    #[should_panic(expected = "Precision: Average::Binary needs 2 classes, got 3")]
    fn binary_average_needs_two_classes() {
        let _ = Precision::multiclass(3, Average::Binary);
    }

    #[test]
    #[should_panic(expected = "Precision: a threshold applies to binary metrics only")]
    fn threshold_is_binary_only() {
        let _ = Precision::multiclass(3, Average::Macro).with_threshold(0.3);
    }
}
