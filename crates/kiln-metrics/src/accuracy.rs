//! [`Accuracy`]: the fraction of samples predicted correctly (or, top-k, within the k best).

use kiln_tensor::Float;

use crate::input::{check_labels, check_same_len, check_score_rows, in_top_k, Prediction, Task};
use crate::metric::{Metric, MetricInput};

/// Accuracy: correct predictions over all predictions (scikit-learn's `accuracy_score`, and
/// `top_k_accuracy_score` with [`with_top_k`](Accuracy::with_top_k)).
///
/// Predictions come as class indices, as scores `[N, C]` whose argmax is the prediction (the
/// first maximum on ties), or, for a binary metric, as one score per sample compared with a
/// threshold (`score >= threshold` predicts 1). With top-k, a sample counts as correct when
/// its target is among the `k` highest scores, ties broken toward the lower class index (so
/// top-1 equals argmax accuracy). [`compute`](Metric::compute) is NaN before any update.
///
/// # Inputs of [`Metric::update`]
///
/// - binary: scores of the targets' shape (size-1 axes aside: `[N, 1]` fits `[N]`);
/// - multiclass: class indices of the targets' shape, or scores `[N, C, ...]` for targets
///   `[N, ...]` (class axis 1, as in PyTorch's `cross_entropy`).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Accuracy, Metric};
/// use kiln_tensor::Tensor;
///
/// let logits = Tensor::from_vec(vec![0.1f32, 2.0, 0.3, 1.5, 0.2, 0.1, 0.3, 0.4, 0.1], &[3, 3]);
/// let labels = Tensor::from_vec(vec![1.0f32, 0.0, 0.0], &[3]);
///
/// let mut acc = Accuracy::multiclass(3);
/// acc.update(&logits, &labels);
/// assert!((acc.compute() - 2.0 / 3.0).abs() < 1e-12);
///
/// let mut top2 = Accuracy::multiclass(3).with_top_k(2);
/// top2.update(&logits, &labels);
/// assert_eq!(top2.compute(), 1.0);
///
/// let mut binary = Accuracy::binary(); // threshold 0.5
/// binary.update_scores(&[0.8f64, 0.4, 0.5], &[1, 1, 1]);
/// assert!((binary.compute() - 2.0 / 3.0).abs() < 1e-12);
/// ```
#[derive(Clone, Debug)]
pub struct Accuracy {
    task: Task,
    top_k: usize,
    correct: u64,
    total: u64,
}

impl Accuracy {
    /// Multiclass accuracy over `num_classes` classes (top-1).
    ///
    /// **Panics** if `num_classes` is 0.
    #[must_use]
    pub fn multiclass(num_classes: usize) -> Accuracy {
        Accuracy { task: Task::multiclass("Accuracy", num_classes), top_k: 1, correct: 0, total: 0 }
    }

    /// Binary accuracy with threshold 0.5 (see [`with_threshold`](Accuracy::with_threshold)).
    #[must_use]
    pub fn binary() -> Accuracy {
        Accuracy { task: Task::Binary { threshold: 0.5 }, top_k: 1, correct: 0, total: 0 }
    }

    /// Sets the threshold of a binary accuracy: a score `>= threshold` predicts class 1
    /// (default 0.5; use 0.0 for logits).
    ///
    /// **Panics** if the metric is multiclass.
    #[must_use]
    pub fn with_threshold(mut self, threshold: f64) -> Accuracy {
        self.task.set_threshold("Accuracy", threshold);
        self
    }

    /// Counts a sample as correct when its target is among the `k` highest scores.
    ///
    /// **Panics** if the metric is binary, or `k` is 0 or more than the number of classes.
    #[must_use]
    pub fn with_top_k(mut self, k: usize) -> Accuracy {
        let c = match self.task {
            Task::Binary { .. } => panic!("Accuracy: top-k applies to multiclass accuracy only"),
            Task::Multiclass { num_classes } => num_classes,
        };
        assert!(k >= 1 && k <= c, "Accuracy: top_k must be in 1..={c}, got {k}");
        self.top_k = k;
        self
    }

    /// The `k` of top-k accuracy (1 for plain accuracy).
    #[must_use]
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// The number of samples counted as correct so far.
    #[must_use]
    pub fn correct(&self) -> u64 {
        self.correct
    }

    /// The number of samples seen so far.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Accumulates hard predictions (class indices).
    ///
    /// **Panics** if the lengths differ, an index is out of range, or top-k is set (it needs
    /// scores).
    pub fn update_labels(&mut self, preds: &[usize], targets: &[usize]) {
        assert!(self.top_k == 1, "Accuracy: top_k = {} needs scores, got class indices", self.top_k);
        check_same_len("Accuracy", preds.len(), targets.len());
        let c = self.task.num_classes();
        check_labels("Accuracy", "predictions", preds, c);
        check_labels("Accuracy", "targets", targets, c);
        self.correct += preds.iter().zip(targets).filter(|(p, t)| p == t).count() as u64;
        self.total += targets.len() as u64;
    }

    /// Accumulates scores: one per sample for a binary accuracy (thresholded), or
    /// `[N, num_classes]` row-major rows for a multiclass one (argmax, or top-k).
    ///
    /// **Panics** if the number of scores does not fit the targets or a target is out of range.
    pub fn update_scores<E: Float>(&mut self, scores: &[E], targets: &[usize]) {
        let c = self.task.num_classes();
        if self.top_k == 1 {
            let preds = self.task.predict("Accuracy", scores, targets.len());
            return self.update_labels(&preds, targets);
        }
        check_score_rows("Accuracy", scores.len(), c, targets.len());
        check_labels("Accuracy", "targets", targets, c);
        let hits = scores.chunks_exact(c).zip(targets).filter(|&(row, &t)| in_top_k(row, t, self.top_k));
        self.correct += hits.count() as u64;
        self.total += targets.len() as u64;
    }
}

impl Metric for Accuracy {
    type Output = f64;

    fn name(&self) -> String {
        if self.top_k == 1 {
            "accuracy".to_string()
        } else {
            format!("top_{}_accuracy", self.top_k)
        }
    }

    fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
        match self.task.read("Accuracy", preds, targets) {
            (Prediction::Labels(p), t) => self.update_labels(&p, &t),
            (Prediction::Scores(s), t) => self.update_scores(&s, &t),
        }
    }

    fn compute(&self) -> f64 {
        self.correct as f64 / self.total as f64
    }

    fn reset(&mut self) {
        self.correct = 0;
        self.total = 0;
    }

    fn merge(&mut self, other: &Accuracy) {
        assert!(
            self.task == other.task && self.top_k == other.top_k,
            "Accuracy::merge: configurations differ: {:?} top-{} and {:?} top-{}",
            self.task,
            self.top_k,
            other.task,
            other.top_k
        );
        self.correct += other.correct;
        self.total += other.total;
    }
}

/// The fraction of predictions equal to their targets (scikit-learn's `accuracy_score`);
/// NaN for empty input.
///
/// **Panics** if the lengths differ.
///
/// ```
/// use kiln_metrics::functional::accuracy;
/// assert_eq!(accuracy(&[0, 2, 1, 3], &[0, 1, 2, 3]), 0.5);
/// ```
#[must_use]
pub fn accuracy(preds: &[usize], targets: &[usize]) -> f64 {
    check_same_len("accuracy", preds.len(), targets.len());
    preds.iter().zip(targets).filter(|(p, t)| p == t).count() as f64 / targets.len() as f64
}

/// The accuracy of one batch in one call: the fraction of samples whose highest score is their
/// target class, PyTorch's `(scores.argmax(1) == targets).float().mean()` (exported at the
/// crate root as `kiln_metrics::accuracy`).
///
/// `scores` are `[N, C]` or `[N, C, d...]` (class axis 1, as `cross_entropy` takes them):
/// logits, probabilities or log-probabilities alike; `targets` are the class indices `[N]`
/// (`[N, d...]`) as [`Indices`](kiln_tensor::Indices) or a float tensor of whole numbers. A
/// tie counts the first maximum, as `argmax` does. NaN for an empty batch.
///
/// ```
/// use kiln_metrics::accuracy;
/// use kiln_tensor::{Indices, Tensor};
/// let logits = Tensor::from_vec(vec![2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0], &[2, 3]);
/// assert_eq!(accuracy(&logits, &Indices::from_vec(vec![0, 1])), 0.5);
/// assert_eq!(accuracy(&logits, &Indices::from_vec(vec![0, 2])), 1.0);
/// ```
///
/// **Panics** if `scores` has fewer than 2 dimensions, the shapes do not fit (`[N, C, d...]`
/// against `[N, d...]`), or a target is not a class index below `C`.
#[must_use]
pub fn batch_accuracy<E: Float>(scores: &kiln_tensor::Tensor<E>, targets: &dyn MetricInput) -> f64 {
    let shape = scores.shape();
    assert!(shape.len() >= 2, "accuracy: scores must be [N, C] or [N, C, d...], got {shape:?}");
    let mut acc = Accuracy::multiclass(shape[1]);
    acc.update(scores, targets);
    acc.compute()
}

/// Binary accuracy of scores against 0/1 targets, a score `>= threshold` predicting 1.
///
/// **Panics** if the lengths differ or a target is not 0 or 1.
///
/// ```
/// use kiln_metrics::functional::binary_accuracy;
/// assert_eq!(binary_accuracy(&[0.9f32, 0.2, 0.5, 0.4], &[1, 0, 0, 0], 0.5), 0.75);
/// ```
#[must_use]
pub fn binary_accuracy<E: Float>(scores: &[E], targets: &[usize], threshold: f64) -> f64 {
    let mut acc = Accuracy::binary().with_threshold(threshold);
    acc.update_scores(scores, targets);
    acc.compute()
}

/// Top-k accuracy of `[N, num_classes]` row-major scores (scikit-learn's
/// `top_k_accuracy_score`; ties toward the lower class index).
///
/// **Panics** if the scores do not form `[targets.len(), num_classes]`, a target is out of
/// range, or `k` is not in `1..=num_classes`.
///
/// ```
/// use kiln_metrics::functional::top_k_accuracy;
/// let scores = [0.1, 0.5, 0.4, /**/ 0.7, 0.2, 0.1];
/// assert_eq!(top_k_accuracy(&scores, &[2, 2], 3, 2), 0.5);
/// ```
#[must_use]
pub fn top_k_accuracy<E: Float>(scores: &[E], targets: &[usize], num_classes: usize, k: usize) -> f64 {
    let mut acc = Accuracy::multiclass(num_classes).with_top_k(k);
    acc.update_scores(scores, targets);
    acc.compute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn batch_accuracy_takes_scores_and_class_targets_in_one_call() {
        use kiln_tensor::{Indices, Tensor};
        // [N=2, C=3, d=2]: argmax over axis 1 at each position; ties count the first maximum.
        let scores = Tensor::from_vec(vec![1.0f64, 0.0, 2.0, 0.0, 0.5, 3.0, 2.0, 2.0, 0.0, 5.0, 2.0, 1.0], &[2, 3, 2]);
        // Predictions: sample 0 -> [1, 2]; sample 1 -> [0 (classes 0 and 2 tie at 2.0), 1].
        let preds = [1usize, 2, 0, 1];
        let hits = |t: &[usize]| preds.iter().zip(t).filter(|(p, t)| p == t).count() as f64 / 4.0;
        for targets in [[1usize, 2, 0, 1], [1, 0, 0, 1], [0, 0, 2, 2]] {
            let want = hits(&targets);
            assert_eq!(batch_accuracy(&scores, &Indices::new(targets.to_vec(), &[2, 2])), want, "{targets:?}");
            let as_floats = Tensor::from_vec(targets.iter().map(|&t| t as f32).collect(), &[2, 2]);
            assert_eq!(batch_accuracy(&scores, &as_floats), want, "{targets:?}");
        }
        let tie = Tensor::from_vec(vec![1.0f32, 1.0], &[1, 2]);
        assert_eq!(batch_accuracy(&tie, &Indices::from_vec(vec![0])), 1.0);
        assert!(batch_accuracy(&Tensor::<f32>::zeros(&[0, 3]), &Indices::from_vec(vec![])).is_nan());
    }

    #[test]
    #[should_panic(expected = "accuracy: scores must be [N, C]")]
    fn batch_accuracy_needs_a_class_axis() {
        let _ = batch_accuracy(
            &kiln_tensor::Tensor::from_vec(vec![1.0f32, 2.0], &[2]),
            &kiln_tensor::Indices::from_vec(vec![0, 1]),
        );
    }

    #[test]
    fn hand_checked() {
        assert_eq!(accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]), 0.75);
        assert!(accuracy(&[], &[]).is_nan());
        let scores = [0.2f64, 0.5, 0.3, /**/ 0.6, 0.3, 0.1, /**/ 0.1, 0.1, 0.8];
        let targets = [2, 0, 1];
        assert_eq!(top_k_accuracy(&scores, &targets, 3, 1), 1.0 / 3.0);
        assert_eq!(top_k_accuracy(&scores, &targets, 3, 2), 2.0 / 3.0);
        assert_eq!(top_k_accuracy(&scores, &targets, 3, 3), 1.0);
    }

    #[test]
    fn ties() {
        // argmax takes the first maximum, and so does top-1
        let scores = [0.4f32, 0.4, 0.2, /**/ 0.3, 0.3, 0.3];
        let mut acc = Accuracy::multiclass(3);
        acc.update_scores(&scores, &[1, 0]);
        assert_eq!(acc.correct(), 1);
        assert_eq!(top_k_accuracy(&scores, &[1, 0], 3, 1), 0.5);
        // top-2 of a three-way tie holds classes 0 and 1 only
        assert_eq!(top_k_accuracy(&scores[3..], &[2], 3, 2), 0.0);
        assert_eq!(top_k_accuracy(&scores[3..], &[1], 3, 2), 1.0);
    }

    #[test]
    fn binary_threshold() {
        assert_eq!(binary_accuracy(&[0.5f64, 0.49999], &[1, 0], 0.5), 1.0);
        assert_eq!(binary_accuracy(&[-0.1f64, 0.0, 3.0], &[0, 0, 1], 0.0), 2.0 / 3.0);
        let mut acc = Accuracy::binary().with_threshold(0.7);
        acc.update(&Shaped(vec![0.6, 0.8], vec![2, 1]), &Shaped(vec![0.0, 1.0], vec![2]));
        assert_eq!(acc.compute(), 1.0);
    }

    #[test]
    fn class_axis_one_for_sequences() {
        // [N=1, C=2, L=3] scores with [1, 3] targets
        let scores = Shaped(vec![0.9, 0.1, 0.4, /**/ 0.1, 0.9, 0.6], vec![1, 2, 3]);
        let mut acc = Accuracy::multiclass(2);
        acc.update(&scores, &Shaped(vec![0.0, 1.0, 0.0], vec![1, 3]));
        assert_eq!(acc.correct(), 2);
        assert_eq!(acc.total(), 3);
    }

    #[test]
    fn merge_equals_single_pass_and_reset() {
        let scores: Vec<f64> = (0..40).map(|i| ((i * 37) % 11) as f64).collect();
        let targets: Vec<usize> = (0..10).map(|i| (i * 3) % 4).collect();
        let mut whole = Accuracy::multiclass(4).with_top_k(2);
        whole.update_scores(&scores, &targets);
        let mut a = Accuracy::multiclass(4).with_top_k(2);
        let mut b = a.clone();
        a.update_scores(&scores[..16], &targets[..4]);
        b.update_scores(&scores[16..], &targets[4..]);
        a.merge(&b);
        assert_eq!((a.correct(), a.total()), (whole.correct(), whole.total()));
        assert_eq!(a.name(), "top_2_accuracy");
        a.reset();
        assert_eq!(a.total(), 0);
        assert!(a.compute().is_nan());
    }

    #[test]
    #[should_panic(expected = "Accuracy: top_k = 2 needs scores, got class indices")]
    fn top_k_needs_scores() {
        Accuracy::multiclass(3).with_top_k(2).update_labels(&[0], &[0]);
    }

    #[test]
    #[should_panic(expected = "Accuracy: top_k must be in 1..=3, got 4")]
    fn top_k_bounded() {
        let _ = Accuracy::multiclass(3).with_top_k(4);
    }

    #[test]
    #[should_panic(expected = "Accuracy::merge: configurations differ")]
    fn merge_rejects_other_config() {
        Accuracy::multiclass(3).merge(&Accuracy::multiclass(4));
    }

    #[test]
    #[should_panic(expected = "Accuracy: targets[1] = 3 is not a class index in 0..3")]
    fn target_out_of_range() {
        Accuracy::multiclass(3).update_labels(&[0, 1], &[0, 3]);
    }
}
