//! [`Recall`]: of the samples of a class, the fraction predicted as it.

use kiln_tensor::Float;

use crate::average::Average;
use crate::class_stats::{class_stats_metric, stats_of, ClassStats, Score};
use crate::input::Task;
use crate::metric::{Metric, MetricInput};

/// Recall, `tp / (tp + fn)` per class, averaged as [`Average`] says (scikit-learn's
/// `recall_score`). Macro recall is the balanced accuracy.
///
/// A class absent from the targets has recall 0/0, which takes the zero-division value
/// (default 0, see [`with_zero_division`](Recall::with_zero_division)).
/// Inputs of [`Metric::update`] are read as for [`Precision`](crate::Precision).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Average, Metric, Recall};
///
/// let mut r = Recall::multiclass(3, Average::Macro);
/// r.update_labels(&[0, 1, 1, 2], &[0, 1, 2, 2]);
/// assert_eq!(r.compute_per_class(), vec![1.0, 1.0, 0.5]);
/// assert!((r.compute() - 2.5 / 3.0).abs() < 1e-15);
/// ```
#[derive(Clone, Debug)]
pub struct Recall {
    stats: ClassStats,
}

impl Recall {
    /// Binary recall of class 1 (threshold 0.5, [`Average::Binary`]).
    #[must_use]
    pub fn binary() -> Recall {
        Recall { stats: ClassStats::new("Recall", Task::Binary { threshold: 0.5 }, Average::Binary) }
    }

    /// Multiclass recall over `num_classes` classes.
    ///
    /// **Panics** if `num_classes` is 0, or `average` is [`Average::Binary`] and
    /// `num_classes != 2`.
    #[must_use]
    pub fn multiclass(num_classes: usize, average: Average) -> Recall {
        let task = Task::multiclass("Recall", num_classes);
        Recall { stats: ClassStats::new("Recall", task, average) }
    }

    fn score(&self) -> Score {
        Score::Recall
    }

    fn base_name(&self) -> String {
        "recall".to_string()
    }
}

class_stats_metric!(Recall, "Recall");

/// Recall of hard predictions (scikit-learn's
/// `recall_score(targets, preds, labels=range(num_classes), average=..., zero_division=...)`).
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
///
/// ```
/// use kiln_metrics::{functional::recall, Average};
/// assert_eq!(recall(&[1, 0, 0], &[1, 1, 0], 2, Average::Binary, 0.0), 0.5);
/// ```
#[must_use]
pub fn recall(preds: &[usize], targets: &[usize], num_classes: usize, average: Average, zero_division: f64) -> f64 {
    stats_of("recall", preds, targets, num_classes, average, zero_division).compute(Score::Recall)
}

/// Recall of every class (scikit-learn's `average=None`).
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
#[must_use]
pub fn recall_per_class(preds: &[usize], targets: &[usize], num_classes: usize, zero_division: f64) -> Vec<f64> {
    stats_of("recall", preds, targets, num_classes, Average::Macro, zero_division).per_class(Score::Recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_multiclass() {
        let preds = [0, 0, 0, 1, 1];
        let targets = [0, 0, 2, 1, 2];
        // class 0: 2 of 2; class 1: 1 of 1; class 2: 0 of 2; class 3: absent (0/0)
        assert_eq!(recall_per_class(&preds, &targets, 4, 0.0), vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(recall_per_class(&preds, &targets, 4, 1.0), vec![1.0, 1.0, 0.0, 1.0]);
        assert_eq!(recall(&preds, &targets, 4, Average::Macro, 0.0), 0.5);
        assert_eq!(recall(&preds, &targets, 4, Average::Micro, 0.0), 3.0 / 5.0);
        // weighted recall equals accuracy for single-label data
        assert_eq!(recall(&preds, &targets, 4, Average::Weighted, 0.0), 3.0 / 5.0);
        // NaN zero-division leaves the absent class out of the macro average
        assert_eq!(recall(&preds, &targets, 4, Average::Macro, f64::NAN), 2.0 / 3.0);
    }

    #[test]
    fn binary_without_positives() {
        let mut r = Recall::binary();
        r.update_labels(&[1, 0], &[0, 0]);
        assert_eq!(r.compute(), 0.0);
        assert_eq!(r.clone().with_zero_division(1.0).compute(), 1.0);
        assert_eq!(r.name(), "recall");
        assert_eq!(Recall::multiclass(2, Average::Weighted).name(), "recall_weighted");
    }

    #[test]
    fn merge_equals_single_pass() {
        let preds = [0, 2, 1, 1, 0, 2, 2, 0];
        let targets = [0, 1, 1, 2, 0, 2, 0, 0];
        let mut whole = Recall::multiclass(3, Average::Macro);
        whole.update_labels(&preds, &targets);
        let mut parts = Recall::multiclass(3, Average::Macro);
        for (p, t) in preds.chunks(3).zip(targets.chunks(3)) {
            let mut worker = Recall::multiclass(3, Average::Macro);
            worker.update_labels(p, t);
            parts.merge(&worker);
        }
        assert_eq!(parts.compute(), whole.compute());
    }
}
