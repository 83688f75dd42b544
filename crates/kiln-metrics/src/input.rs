//! Reading predictions and targets: class indices, argmax, thresholds, shape checks.
//!
//! Everything here is shared by the metrics; none of it is public.

use kiln_tensor::Float;

use crate::metric::MetricInput;

/// What a classification metric is set up for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Task {
    /// Two classes; a score `>= threshold` predicts class 1.
    Binary { threshold: f64 },
    /// `num_classes` classes; scores are `[N, C]` rows and the prediction is their argmax.
    Multiclass { num_classes: usize },
}

impl Task {
    pub(crate) fn multiclass(op: &str, num_classes: usize) -> Task {
        assert!(num_classes > 0, "{op}: num_classes must be > 0, got 0");
        Task::Multiclass { num_classes }
    }

    pub(crate) fn num_classes(&self) -> usize {
        match *self {
            Task::Binary { .. } => 2,
            Task::Multiclass { num_classes } => num_classes,
        }
    }

    pub(crate) fn set_threshold(&mut self, op: &str, threshold: f64) {
        match self {
            Task::Binary { threshold: t } => *t = threshold,
            Task::Multiclass { .. } => {
                panic!("{op}: a threshold applies to binary metrics only, this one is multiclass")
            }
        }
    }

    /// Hard predictions from scores: thresholded (binary, one score per sample) or argmax
    /// (multiclass, `[N, C]` row-major).
    pub(crate) fn predict<E: Float>(&self, op: &str, scores: &[E], n: usize) -> Vec<usize> {
        match *self {
            Task::Binary { threshold } => {
                assert_eq!(scores.len(), n, "{op}: {} binary scores for {n} targets", scores.len());
                scores.iter().map(|&s| usize::from(Float::to_f64(s) >= threshold)).collect()
            }
            Task::Multiclass { num_classes } => {
                check_score_rows(op, scores.len(), num_classes, n);
                argmax_rows(scores, num_classes)
            }
        }
    }

    /// Reads one batch through the [`MetricInput`] interface (see [`read_classification`]).
    pub(crate) fn read(
        &self,
        op: &str,
        preds: &dyn MetricInput,
        targets: &dyn MetricInput,
    ) -> (Prediction, Vec<usize>) {
        read_classification(op, *self, preds, targets)
    }
}

/// Predictions as read from a tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Prediction {
    /// Hard class indices, one per target.
    Labels(Vec<usize>),
    /// Scores: one per target (binary), or `[N, C]` row-major rows (multiclass).
    Scores(Vec<f64>),
}

/// Panics unless `scores` holds `n` rows of `num_classes`.
pub(crate) fn check_score_rows(op: &str, len: usize, num_classes: usize, n: usize) {
    assert!(
        len == n * num_classes,
        "{op}: {len} scores do not form [{n}, {num_classes}] rows for {n} targets and {num_classes} classes"
    );
}

/// Index of the largest value of each row (the first one on ties, like `torch.argmax`).
pub(crate) fn argmax_rows<E: Float>(scores: &[E], num_classes: usize) -> Vec<usize> {
    scores
        .chunks_exact(num_classes)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate().skip(1) {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// Whether `target` is among the `k` best classes of `row`. Classes are ranked by score, ties
/// broken by the lower class index (so `k = 1` agrees with [`argmax_rows`]).
pub(crate) fn in_top_k<E: Float>(row: &[E], target: usize, k: usize) -> bool {
    let t = row[target];
    let ahead = row.iter().enumerate().filter(|&(j, &v)| v > t || (v == t && j < target)).count();
    ahead < k
}

/// Panics unless every label is a class index below `num_classes`.
pub(crate) fn check_labels(op: &str, what: &str, labels: &[usize], num_classes: usize) {
    if let Some((i, &c)) = labels.iter().enumerate().find(|&(_, &c)| c >= num_classes) {
        panic!("{op}: {what}[{i}] = {c} is not a class index in 0..{num_classes}");
    }
}

/// Panics unless predictions and targets have the same length.
pub(crate) fn check_same_len(op: &str, preds: usize, targets: usize) {
    assert!(preds == targets, "{op}: {preds} predictions and {targets} targets differ in length");
}

/// Converts floating class indices (as stored in a tensor) to `usize`.
///
/// **Panics** unless every value is a whole number in `0..num_classes`.
pub(crate) fn labels_from_f64(op: &str, what: &str, values: &[f64], num_classes: usize) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            assert!(
                v >= 0.0 && v.fract() == 0.0 && v < num_classes as f64,
                "{op}: {what}[{i}] = {v} is not a class index in 0..{num_classes}"
            );
            v as usize
        })
        .collect()
}

/// The shape without its size-1 axes, so that `[N, 1]` predictions match `[N]` targets.
pub(crate) fn squeezed(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

/// Moves the class axis (axis 1, PyTorch's convention) of `[N, C, d1, ...]` scores last and
/// flattens the rest, giving `[N * d1 * ..., C]` rows in the order of the `[N, d1, ...]` targets.
pub(crate) fn class_axis_last(values: Vec<f64>, shape: &[usize]) -> Vec<f64> {
    if shape.len() <= 2 {
        return values;
    }
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let mut out = Vec::with_capacity(values.len());
    for b in 0..n {
        for s in 0..inner {
            for j in 0..c {
                out.push(values[(b * c + j) * inner + s]);
            }
        }
    }
    out
}

/// Whether `preds` has the layout of class scores for `targets`: `[N, C, d...]` against
/// `[N, d...]`, with `C = num_classes`.
pub(crate) fn is_score_layout(preds: &[usize], targets: &[usize], num_classes: usize) -> bool {
    !targets.is_empty()
        && preds.len() == targets.len() + 1
        && preds[0] == targets[0]
        && preds[1] == num_classes
        && preds[2..] == targets[1..]
}

/// Reads a classification batch.
///
/// - binary: predictions of the target's shape (size-1 axes aside) are scores, thresholded;
/// - multiclass: predictions of the target's shape are class indices; `[N, C, d...]`
///   predictions for `[N, d...]` targets are scores (class axis 1, as in PyTorch).
///
/// **Panics** on any other pair of shapes and on targets that are not class indices.
pub(crate) fn read_classification(
    op: &str,
    task: Task,
    preds: &dyn MetricInput,
    targets: &dyn MetricInput,
) -> (Prediction, Vec<usize>) {
    let (ps, ts) = (preds.shape(), targets.shape());
    let num_classes = task.num_classes();
    let target_values = labels_from_f64(op, "targets", &targets.to_f64_vec(), num_classes);
    match task {
        Task::Binary { .. } => {
            assert!(
                squeezed(&ps) == squeezed(&ts),
                "{op}: binary predictions {ps:?} and targets {ts:?} must have the same shape"
            );
            (Prediction::Scores(preds.to_f64_vec()), target_values)
        }
        Task::Multiclass { .. } => {
            if ps == ts {
                let labels = labels_from_f64(op, "predictions", &preds.to_f64_vec(), num_classes);
                (Prediction::Labels(labels), target_values)
            } else if is_score_layout(&ps, &ts, num_classes) {
                (Prediction::Scores(class_axis_last(preds.to_f64_vec(), &ps)), target_values)
            } else {
                panic!(
                    "{op}: predictions {ps:?} do not fit targets {ts:?}: expected class indices of \
                     shape {ts:?} or scores of shape [N, {num_classes}, ...] with the class axis at 1"
                )
            }
        }
    }
}

/// Reads a regression batch: predictions and targets of one shape (size-1 axes aside).
///
/// **Panics** if the shapes differ.
pub(crate) fn read_regression(op: &str, preds: &dyn MetricInput, targets: &dyn MetricInput) -> (Vec<f64>, Vec<f64>) {
    let (ps, ts) = (preds.shape(), targets.shape());
    assert!(squeezed(&ps) == squeezed(&ts), "{op}: predictions {ps:?} and targets {ts:?} must have the same shape");
    (preds.to_f64_vec(), targets.to_f64_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal [`MetricInput`] for tests that do not need a tensor.
    pub(crate) struct Shaped(pub Vec<f64>, pub Vec<usize>);

    impl MetricInput for Shaped {
        fn shape(&self) -> Vec<usize> {
            self.1.clone()
        }
        fn to_f64_vec(&self) -> Vec<f64> {
            self.0.clone()
        }
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax_rows(&[1.0, 3.0, 3.0, 0.0, 0.0, 0.0], 3), vec![1, 0]);
    }

    #[test]
    fn top_k_breaks_ties_by_lower_index() {
        let row = [0.5f64, 0.2, 0.5, 0.1];
        assert!(in_top_k(&row, 0, 1));
        assert!(!in_top_k(&row, 2, 1));
        assert!(in_top_k(&row, 2, 2));
        assert!(!in_top_k(&row, 1, 2));
        assert!(in_top_k(&row, 3, 4));
    }

    #[test]
    fn class_axis_moves_last() {
        // [N=1, C=2, L=3]: class 0 = [0, 1, 2], class 1 = [10, 11, 12]
        let v = vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0];
        assert_eq!(class_axis_last(v, &[1, 2, 3]), vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
    }

    #[test]
    fn reads_labels_and_scores() {
        let task = Task::Multiclass { num_classes: 3 };
        let t = Shaped(vec![0.0, 2.0], vec![2]);
        let (p, y) = task.read("t", &Shaped(vec![1.0, 2.0], vec![2]), &t);
        assert_eq!(p, Prediction::Labels(vec![1, 2]));
        assert_eq!(y, vec![0, 2]);
        let (p, _) = task.read("t", &Shaped(vec![0.0; 6], vec![2, 3]), &t);
        assert_eq!(p, Prediction::Scores(vec![0.0; 6]));
        let binary = Task::Binary { threshold: 0.5 };
        let (p, _) = binary.read("t", &Shaped(vec![0.2, 0.7], vec![2, 1]), &Shaped(vec![0.0, 1.0], vec![2]));
        assert_eq!(p, Prediction::Scores(vec![0.2, 0.7]));
    }

    #[test]
    #[should_panic(expected = "t: targets[1] = 1.5 is not a class index in 0..3")]
    fn rejects_fractional_targets() {
        let task = Task::Multiclass { num_classes: 3 };
        task.read("t", &Shaped(vec![0.0, 1.0], vec![2]), &Shaped(vec![0.0, 1.5], vec![2]));
    }

    #[test]
    #[should_panic(expected = "predictions [2, 4] do not fit targets [2]")]
    fn rejects_wrong_class_count() {
        let task = Task::Multiclass { num_classes: 3 };
        task.read("t", &Shaped(vec![0.0; 8], vec![2, 4]), &Shaped(vec![0.0, 1.0], vec![2]));
    }
}
