//! Shared machinery of the ranking metrics ([`RocAuc`](crate::RocAuc),
//! [`AveragePrecision`](crate::AveragePrecision)): the kept scores, the counts at each
//! distinct threshold, and one-vs-rest averaging.

use kiln_tensor::Float;

use crate::average::Average;
use crate::input::{
    check_labels, check_same_len, check_score_rows, class_axis_last, is_score_layout, labels_from_f64, squeezed, Task,
};
use crate::metric::MetricInput;

/// Cumulative counts at each distinct score, highest score first (scikit-learn's
/// `_binary_clf_curve`): predicting positive every sample whose score is `>= thresholds[k]`
/// gives `tps[k]` true and `fps[k]` false positives.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClfCurve {
    pub(crate) fps: Vec<u64>,
    pub(crate) tps: Vec<u64>,
    pub(crate) thresholds: Vec<f64>,
}

impl ClfCurve {
    /// Builds the curve of `scores` against `positive` flags.
    ///
    /// **Panics** if a score is NaN.
    pub(crate) fn new(op: &str, scores: &[f64], positive: &[bool]) -> ClfCurve {
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            panic!("{op}: scores[{i}] is NaN");
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut curve = ClfCurve { fps: Vec::new(), tps: Vec::new(), thresholds: Vec::new() };
        let (mut tp, mut fp) = (0u64, 0u64);
        for (k, &i) in order.iter().enumerate() {
            if positive[i] {
                tp += 1;
            } else {
                fp += 1;
            }
            // -0.0 and 0.0 are one threshold, as in NumPy
            let last_of_value = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
            if last_of_value {
                curve.fps.push(fp);
                curve.tps.push(tp);
                curve.thresholds.push(scores[i]);
            }
        }
        curve
    }

    /// The number of positive samples.
    pub(crate) fn positives(&self) -> u64 {
        self.tps.last().copied().unwrap_or(0)
    }

    /// The number of negative samples.
    pub(crate) fn negatives(&self) -> u64 {
        self.fps.last().copied().unwrap_or(0)
    }
}

/// One-vs-rest averaging as scikit-learn's `_average_binary_score`: macro is the plain mean
/// (a NaN class makes it NaN); weighted weighs by support, forcing classes of zero support to
/// 0 and returning 0 when no class has support.
pub(crate) fn ovr_average(per_class: &[f64], support: &[u64], average: Average) -> f64 {
    match average {
        Average::Macro => per_class.iter().sum::<f64>() / per_class.len() as f64,
        Average::Weighted => {
            let total: u64 = support.iter().sum();
            if total == 0 {
                return 0.0;
            }
            let sum: f64 = per_class.iter().zip(support).map(|(&s, &w)| if w == 0 { 0.0 } else { s * w as f64 }).sum();
            sum / total as f64
        }
        Average::Micro | Average::Binary => unreachable!("handled by the caller"),
    }
}

/// Scores and targets kept by a ranking metric, with its configuration.
#[derive(Clone, Debug)]
pub(crate) struct Ranking {
    /// `Binary` (threshold unused) or `Multiclass`.
    pub(crate) task: Task,
    /// `Binary` for a binary metric; `Micro`, `Macro` or `Weighted` for one-vs-rest.
    pub(crate) average: Average,
    /// One score per sample (binary) or `[N, C]` row-major.
    pub(crate) scores: Vec<f64>,
    pub(crate) targets: Vec<usize>,
}

impl Ranking {
    pub(crate) fn binary() -> Ranking {
        Ranking {
            task: Task::Binary { threshold: 0.5 },
            average: Average::Binary,
            scores: Vec::new(),
            targets: Vec::new(),
        }
    }

    pub(crate) fn multiclass(op: &str, num_classes: usize, average: Average) -> Ranking {
        assert!(
            average != Average::Binary,
            "{op}: Average::Binary is for the binary metric; one-vs-rest takes Micro, Macro or Weighted"
        );
        Ranking { task: Task::multiclass(op, num_classes), average, scores: Vec::new(), targets: Vec::new() }
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.task.num_classes()
    }

    pub(crate) fn update_scores<E: Float>(&mut self, op: &str, scores: &[E], targets: &[usize]) {
        let c = self.num_classes();
        match self.task {
            Task::Binary { .. } => check_same_len(op, scores.len(), targets.len()),
            Task::Multiclass { .. } => check_score_rows(op, scores.len(), c, targets.len()),
        }
        check_labels(op, "targets", targets, c);
        self.scores.extend(scores.iter().map(|&s| Float::to_f64(s)));
        self.targets.extend_from_slice(targets);
    }

    pub(crate) fn update(&mut self, op: &str, preds: &dyn MetricInput, targets: &dyn MetricInput) {
        let (ps, ts) = (preds.shape(), targets.shape());
        let c = self.num_classes();
        let labels = labels_from_f64(op, "targets", &targets.to_f64_vec(), c);
        match self.task {
            Task::Binary { .. } => {
                assert!(
                    squeezed(&ps) == squeezed(&ts),
                    "{op}: binary scores {ps:?} and targets {ts:?} must have the same shape"
                );
                self.update_scores(op, &preds.to_f64_vec(), &labels);
            }
            Task::Multiclass { .. } => {
                assert!(
                    is_score_layout(&ps, &ts, c),
                    "{op}: scores {ps:?} do not fit targets {ts:?}: expected [N, {c}, ...] scores \
                     with the class axis at 1 (class indices cannot be ranked)"
                );
                self.update_scores(op, &class_axis_last(preds.to_f64_vec(), &ps), &labels);
            }
        }
    }

    pub(crate) fn reset(&mut self) {
        self.scores.clear();
        self.targets.clear();
    }

    pub(crate) fn merge(&mut self, op: &str, other: &Ranking) {
        assert!(
            self.task == other.task && self.average == other.average,
            "{op}::merge: configurations differ: {:?}/{:?} and {:?}/{:?}",
            self.task,
            self.average,
            other.task,
            other.average
        );
        self.scores.extend_from_slice(&other.scores);
        self.targets.extend_from_slice(&other.targets);
    }

    /// The binary metric of each class against the rest (binary: the one score, of class 1).
    pub(crate) fn per_class(&self, op: &str, binary_metric: fn(&ClfCurve) -> f64) -> Vec<f64> {
        match self.task {
            Task::Binary { .. } => {
                let positive: Vec<bool> = self.targets.iter().map(|&t| t == 1).collect();
                vec![binary_metric(&ClfCurve::new(op, &self.scores, &positive))]
            }
            Task::Multiclass { num_classes } => (0..num_classes)
                .map(|c| {
                    let column: Vec<f64> = self.scores.iter().skip(c).step_by(num_classes).copied().collect();
                    let positive: Vec<bool> = self.targets.iter().map(|&t| t == c).collect();
                    binary_metric(&ClfCurve::new(op, &column, &positive))
                })
                .collect(),
        }
    }

    /// The averaged metric; NaN before any update.
    pub(crate) fn compute(&self, op: &str, binary_metric: fn(&ClfCurve) -> f64) -> f64 {
        if self.targets.is_empty() {
            return f64::NAN;
        }
        match (self.task, self.average) {
            (Task::Binary { .. }, _) => self.per_class(op, binary_metric)[0],
            (Task::Multiclass { num_classes }, Average::Micro) => {
                let positive: Vec<bool> =
                    self.targets.iter().flat_map(|&t| (0..num_classes).map(move |c| c == t)).collect();
                binary_metric(&ClfCurve::new(op, &self.scores, &positive))
            }
            (Task::Multiclass { num_classes }, average) => {
                let mut support = vec![0u64; num_classes];
                self.targets.iter().for_each(|&t| support[t] += 1);
                ovr_average(&self.per_class(op, binary_metric), &support, average)
            }
        }
    }
}

/// The parts of a ranking metric (a struct with a `ranking: Ranking` field) that do not depend
/// on its area: scores in, per-class and averaged areas out through `$area`, the kept-sample
/// count, `Default` (binary) and [`Metric`](crate::Metric). `$op` names the metric in panic
/// messages, `$name` in [`Metric::name`](crate::Metric::name) (before the average's suffix).
macro_rules! ranking_metric {
    ($T:ident, $op:literal, $name:literal, $area:path) => {
        impl $T {
            /// Accumulates scores: one per sample (binary) or `[N, num_classes]` row-major rows.
            ///
            /// **Panics** if the number of scores does not fit the targets or a target is out
            /// of range.
            pub fn update_scores<E: Float>(&mut self, scores: &[E], targets: &[usize]) {
                self.ranking.update_scores($op, scores, targets);
            }

            /// The score of every class against the rest (one value for a binary metric).
            #[must_use]
            pub fn compute_per_class(&self) -> Vec<f64> {
                self.ranking.per_class($op, $area)
            }

            /// The number of samples kept.
            #[must_use]
            pub fn len(&self) -> usize {
                self.ranking.targets.len()
            }

            /// Whether no sample has been kept.
            #[must_use]
            pub fn is_empty(&self) -> bool {
                self.ranking.targets.is_empty()
            }
        }

        impl Default for $T {
            /// The binary metric.
            fn default() -> $T {
                $T::binary()
            }
        }

        impl Metric for $T {
            type Output = f64;

            fn name(&self) -> String {
                format!("{}{}", $name, self.ranking.average.suffix())
            }

            fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
                self.ranking.update($op, preds, targets);
            }

            fn compute(&self) -> f64 {
                self.ranking.compute($op, $area)
            }

            fn reset(&mut self) {
                self.ranking.reset();
            }

            fn merge(&mut self, other: &$T) {
                self.ranking.merge($op, &other.ranking);
            }
        }
    };
}
pub(crate) use ranking_metric;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_merges_ties() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4];
        let positive = [false, true, false, true, false];
        let c = ClfCurve::new("t", &scores, &positive);
        assert_eq!(c.thresholds, vec![0.8, 0.4, 0.35, 0.1]);
        assert_eq!(c.tps, vec![1, 2, 2, 2]);
        assert_eq!(c.fps, vec![0, 1, 2, 3]);
        assert_eq!((c.positives(), c.negatives()), (2, 3));
    }

    #[test]
    fn zero_signs_are_one_threshold() {
        let c = ClfCurve::new("t", &[0.0, -0.0, 1.0], &[true, false, true]);
        assert_eq!(c.thresholds.len(), 2);
        assert_eq!(c.tps, vec![1, 2]);
    }

    #[test]
    #[should_panic(expected = "t: scores[1] is NaN")]
    fn nan_scores_panic() {
        let _ = ClfCurve::new("t", &[0.0, f64::NAN], &[true, false]);
    }
}
