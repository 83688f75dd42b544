//! `ClassStats`: per-class true/false positive and false negative counts, and the precision,
//! recall and F-beta scores computed from them. Shared by [`Precision`](crate::Precision),
//! [`Recall`](crate::Recall), [`FBeta`](crate::FBeta) and [`F1Score`](crate::F1Score).

use kiln_tensor::Float;

use crate::average::{nan_average, Average};
use crate::input::{check_labels, check_same_len, Prediction, Task};
use crate::metric::MetricInput;

/// Which score to compute from the counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Score {
    Precision,
    Recall,
    /// F-beta with this beta (`>= 0`; 0 is precision, infinity is recall).
    FBeta(f64),
}

/// The score of one class (or of the summed counts, for micro averaging), with scikit-learn's
/// definitions: `precision = tp / (tp + fp)`, `recall = tp / (tp + fn)`,
/// `F = (1 + b²) tp / (b² (tp + fn) + (tp + fp))`, each `zero_division` when its
/// denominator is 0 (F-beta written on counts, as scikit-learn >= 1.3 does, so a class with
/// no predictions but some support scores F = 0, not `zero_division`).
fn score_of(score: Score, tp: u64, fp: u64, fn_: u64, zero_division: f64) -> f64 {
    let divide = |num: f64, den: f64| if den == 0.0 { zero_division } else { num / den };
    let (tp_f, pred_sum, true_sum) = (tp as f64, (tp + fp) as f64, (tp + fn_) as f64);
    match score {
        Score::Precision => divide(tp_f, pred_sum),
        Score::Recall => divide(tp_f, true_sum),
        Score::FBeta(beta) if beta == f64::INFINITY => divide(tp_f, true_sum),
        Score::FBeta(0.0) => divide(tp_f, pred_sum),
        Score::FBeta(beta) => {
            let beta2 = beta * beta;
            divide((1.0 + beta2) * tp_f, beta2 * true_sum + pred_sum)
        }
    }
}

/// Configuration and counts of a precision/recall/F-score metric.
#[derive(Clone, Debug)]
pub(crate) struct ClassStats {
    pub(crate) task: Task,
    pub(crate) average: Average,
    pub(crate) zero_division: f64,
    tp: Vec<u64>,
    fp: Vec<u64>,
    fn_: Vec<u64>,
}

impl ClassStats {
    pub(crate) fn new(op: &str, task: Task, average: Average) -> ClassStats {
        let c = task.num_classes();
        average.check(op, c);
        ClassStats { task, average, zero_division: 0.0, tp: vec![0; c], fp: vec![0; c], fn_: vec![0; c] }
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.tp.len()
    }

    pub(crate) fn update_labels(&mut self, op: &str, preds: &[usize], targets: &[usize]) {
        check_same_len(op, preds.len(), targets.len());
        let c = self.num_classes();
        check_labels(op, "predictions", preds, c);
        check_labels(op, "targets", targets, c);
        for (&p, &t) in preds.iter().zip(targets) {
            if p == t {
                self.tp[p] += 1;
            } else {
                self.fp[p] += 1;
                self.fn_[t] += 1;
            }
        }
    }

    pub(crate) fn update_scores<E: Float>(&mut self, op: &str, scores: &[E], targets: &[usize]) {
        let preds = self.task.predict(op, scores, targets.len());
        self.update_labels(op, &preds, targets);
    }

    pub(crate) fn update(&mut self, op: &str, preds: &dyn MetricInput, targets: &dyn MetricInput) {
        match self.task.read(op, preds, targets) {
            (Prediction::Labels(p), t) => self.update_labels(op, &p, &t),
            (Prediction::Scores(s), t) => self.update_scores(op, &s, &t),
        }
    }

    pub(crate) fn reset(&mut self) {
        for v in [&mut self.tp, &mut self.fp, &mut self.fn_] {
            v.iter_mut().for_each(|x| *x = 0);
        }
    }

    pub(crate) fn merge(&mut self, op: &str, other: &ClassStats) {
        assert!(
            self.task == other.task
                && self.average == other.average
                && self.zero_division.to_bits() == other.zero_division.to_bits(),
            "{op}::merge: configurations differ: {:?}/{:?}/{} and {:?}/{:?}/{}",
            self.task,
            self.average,
            self.zero_division,
            other.task,
            other.average,
            other.zero_division
        );
        for (a, b) in [(&mut self.tp, &other.tp), (&mut self.fp, &other.fp), (&mut self.fn_, &other.fn_)] {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    }

    /// The number of true samples of each class.
    pub(crate) fn support(&self) -> Vec<u64> {
        self.tp.iter().zip(&self.fn_).map(|(t, f)| t + f).collect()
    }

    pub(crate) fn per_class(&self, score: Score) -> Vec<f64> {
        (0..self.num_classes())
            .map(|c| score_of(score, self.tp[c], self.fp[c], self.fn_[c], self.zero_division))
            .collect()
    }

    pub(crate) fn compute(&self, score: Score) -> f64 {
        match self.average {
            Average::Binary => self.per_class(score)[1],
            Average::Micro => {
                let sum = |v: &[u64]| v.iter().sum::<u64>();
                score_of(score, sum(&self.tp), sum(&self.fp), sum(&self.fn_), self.zero_division)
            }
            Average::Macro => nan_average(&self.per_class(score), None),
            Average::Weighted => {
                let weights: Vec<f64> = self.support().iter().map(|&s| s as f64).collect();
                nan_average(&self.per_class(score), Some(&weights))
            }
        }
    }
}

/// Checks a beta for F-beta: a number `>= 0` (infinity allowed).
pub(crate) fn check_beta(op: &str, beta: f64) {
    assert!(beta >= 0.0, "{op}: beta must be >= 0, got {beta}");
}

/// Counts of a whole set of hard predictions, for the functional forms.
pub(crate) fn stats_of(
    op: &str,
    preds: &[usize],
    targets: &[usize],
    num_classes: usize,
    average: Average,
    zero_division: f64,
) -> ClassStats {
    let mut stats = ClassStats::new(op, Task::multiclass(op, num_classes), average);
    stats.zero_division = zero_division;
    stats.update_labels(op, preds, targets);
    stats
}

/// The methods Precision, Recall, FBeta and F1Score share: each is a [`ClassStats`] (field
/// `stats`) plus a `fn score(&self) -> Score` and a `fn base_name(&self) -> String`.
macro_rules! class_stats_metric {
    ($T:ident, $op:literal) => {
        impl $T {
            /// Sets the value a score takes when its denominator is 0 (scikit-learn's
            /// `zero_division`; default 0). `f64::NAN` leaves such classes out of the
            /// macro and weighted averages, as scikit-learn's `zero_division=np.nan` does.
            #[must_use]
            pub fn with_zero_division(mut self, value: f64) -> Self {
                self.stats.zero_division = value;
                self
            }

            /// Sets how per-class scores are averaged, e.g. a binary metric's macro average
            /// over both classes instead of the score of class 1.
            ///
            /// **Panics** if `average` is [`Average::Binary`] and there are not 2 classes.
            #[must_use]
            pub fn with_average(mut self, average: Average) -> Self {
                average.check($op, self.stats.num_classes());
                self.stats.average = average;
                self
            }

            /// Sets the threshold of a binary metric: a score `>= threshold` predicts class 1
            /// (default 0.5; use 0.0 for logits).
            ///
            /// **Panics** if the metric is multiclass.
            #[must_use]
            pub fn with_threshold(mut self, threshold: f64) -> Self {
                self.stats.task.set_threshold($op, threshold);
                self
            }

            /// The number of classes (2 for a binary metric).
            #[must_use]
            pub fn num_classes(&self) -> usize {
                self.stats.num_classes()
            }

            /// How per-class scores are averaged by [`compute`](crate::Metric::compute).
            #[must_use]
            pub fn average(&self) -> Average {
                self.stats.average
            }

            /// Accumulates hard predictions (class indices).
            ///
            /// **Panics** if the lengths differ or an index is `>= num_classes`.
            pub fn update_labels(&mut self, preds: &[usize], targets: &[usize]) {
                self.stats.update_labels($op, preds, targets);
            }

            /// Accumulates scores: one per sample for a binary metric (thresholded), or
            /// `[N, num_classes]` row-major rows for a multiclass one (argmax, first on ties).
            ///
            /// **Panics** if the number of scores does not fit the targets.
            pub fn update_scores<E: Float>(&mut self, scores: &[E], targets: &[usize]) {
                self.stats.update_scores($op, scores, targets);
            }

            /// The score of every class, unaveraged (scikit-learn's `average=None`).
            #[must_use]
            pub fn compute_per_class(&self) -> Vec<f64> {
                self.stats.per_class(self.score())
            }

            /// The number of true samples of each class seen so far.
            #[must_use]
            pub fn support(&self) -> Vec<u64> {
                self.stats.support()
            }
        }

        impl Metric for $T {
            type Output = f64;

            fn name(&self) -> String {
                format!("{}{}", self.base_name(), self.stats.average.suffix())
            }

            fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
                self.stats.update($op, preds, targets);
            }

            fn compute(&self) -> f64 {
                self.stats.compute(self.score())
            }

            fn reset(&mut self) {
                self.stats.reset();
            }

            fn merge(&mut self, other: &Self) {
                assert!(
                    self.score() == other.score(),
                    "{}::merge: {:?} and {:?} differ",
                    $op,
                    self.score(),
                    other.score()
                );
                self.stats.merge($op, &other.stats);
            }
        }
    };
}
pub(crate) use class_stats_metric;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_definitions() {
        // tp 2, fp 1, fn 3
        assert_eq!(score_of(Score::Precision, 2, 1, 3, 0.0), 2.0 / 3.0);
        assert_eq!(score_of(Score::Recall, 2, 1, 3, 0.0), 2.0 / 5.0);
        assert_eq!(score_of(Score::FBeta(1.0), 2, 1, 3, 0.0), 4.0 / 8.0);
        assert_eq!(score_of(Score::FBeta(2.0), 2, 1, 3, 0.0), 10.0 / 23.0);
        assert_eq!(score_of(Score::FBeta(0.0), 2, 1, 3, 0.0), 2.0 / 3.0);
        assert_eq!(score_of(Score::FBeta(f64::INFINITY), 2, 1, 3, 0.0), 2.0 / 5.0);
    }

    #[test]
    fn zero_division_cases() {
        // no predictions, no support: everything is the zero-division value
        for s in [Score::Precision, Score::Recall, Score::FBeta(1.0)] {
            assert_eq!(score_of(s, 0, 0, 0, 1.0), 1.0);
            assert!(score_of(s, 0, 0, 0, f64::NAN).is_nan());
        }
        // never predicted but present: precision is 0/0, F is a true 0
        assert_eq!(score_of(Score::Precision, 0, 0, 4, 1.0), 1.0);
        assert_eq!(score_of(Score::Recall, 0, 0, 4, 1.0), 0.0);
        assert_eq!(score_of(Score::FBeta(1.0), 0, 0, 4, 1.0), 0.0);
        // predicted but absent: recall is 0/0
        assert_eq!(score_of(Score::Recall, 0, 3, 0, 1.0), 1.0);
        assert_eq!(score_of(Score::FBeta(0.5), 0, 3, 0, 1.0), 0.0);
    }
}
