//! [`ConfusionMatrix`]: counts of (true class, predicted class) pairs.

use kiln_tensor::Float;

use crate::input::{check_labels, check_same_len, Prediction, Task};
use crate::metric::{Metric, MetricInput};

/// How a confusion matrix is normalised (scikit-learn's `normalize` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Normalize {
    /// Each row (true class) sums to 1: the diagonal holds the per-class recall.
    True,
    /// Each column (predicted class) sums to 1: the diagonal holds the per-class precision.
    Pred,
    /// The whole matrix sums to 1.
    All,
}

/// Confusion matrix: entry `[i][j]` counts samples of true class `i` predicted as class `j`
/// (scikit-learn's `confusion_matrix(y_true, y_pred, labels=range(C))`; for a binary matrix,
/// `[[tn, fp], [fn, tp]]`).
///
/// [`compute`](Metric::compute) returns the matrix as `f64`, normalised if
/// [`with_normalize`](ConfusionMatrix::with_normalize) was set (rows or columns without any
/// sample stay 0, as in scikit-learn); [`counts`](ConfusionMatrix::counts) returns the raw
/// counts. Inputs of [`Metric::update`] are read as for [`Accuracy`](crate::Accuracy).
///
/// # Example
///
/// ```
/// use kiln_metrics::{ConfusionMatrix, Metric, Normalize};
///
/// let mut cm = ConfusionMatrix::multiclass(3);
/// cm.update_labels(&[0, 0, 2, 2, 0, 2], &[2, 0, 2, 2, 0, 1]);
/// assert_eq!(cm.counts(), vec![vec![2, 0, 0], vec![0, 0, 1], vec![1, 0, 2]]);
///
/// let rows = cm.clone().with_normalize(Normalize::True).compute();
/// assert_eq!(rows[2], vec![1.0 / 3.0, 0.0, 2.0 / 3.0]);
/// ```
#[derive(Clone, Debug)]
pub struct ConfusionMatrix {
    task: Task,
    normalize: Option<Normalize>,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// A `num_classes` x `num_classes` confusion matrix.
    ///
    /// **Panics** if `num_classes` is 0.
    #[must_use]
    pub fn multiclass(num_classes: usize) -> ConfusionMatrix {
        let task = Task::multiclass("ConfusionMatrix", num_classes);
        ConfusionMatrix { task, normalize: None, counts: vec![0; num_classes * num_classes] }
    }

    /// A 2 x 2 confusion matrix of binary scores thresholded at 0.5.
    #[must_use]
    pub fn binary() -> ConfusionMatrix {
        ConfusionMatrix { task: Task::Binary { threshold: 0.5 }, normalize: None, counts: vec![0; 4] }
    }

    /// Sets the threshold of a binary matrix: a score `>= threshold` predicts class 1.
    ///
    /// **Panics** if the matrix is multiclass.
    #[must_use]
    pub fn with_threshold(mut self, threshold: f64) -> ConfusionMatrix {
        self.task.set_threshold("ConfusionMatrix", threshold);
        self
    }

    /// Makes [`compute`](Metric::compute) normalise the matrix.
    #[must_use]
    pub fn with_normalize(mut self, normalize: Normalize) -> ConfusionMatrix {
        self.normalize = Some(normalize);
        self
    }

    /// The number of classes (rows and columns).
    #[must_use]
    pub fn num_classes(&self) -> usize {
        self.task.num_classes()
    }

    /// The raw counts, one row per true class.
    #[must_use]
    pub fn counts(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.num_classes()).map(<[u64]>::to_vec).collect()
    }

    /// Accumulates hard predictions (class indices).
    ///
    /// **Panics** if the lengths differ or an index is `>= num_classes`.
    pub fn update_labels(&mut self, preds: &[usize], targets: &[usize]) {
        check_same_len("ConfusionMatrix", preds.len(), targets.len());
        let c = self.num_classes();
        check_labels("ConfusionMatrix", "predictions", preds, c);
        check_labels("ConfusionMatrix", "targets", targets, c);
        for (&p, &t) in preds.iter().zip(targets) {
            self.counts[t * c + p] += 1;
        }
    }

    /// Accumulates scores: one per sample for a binary matrix (thresholded), or
    /// `[N, num_classes]` row-major rows (argmax, first on ties).
    ///
    /// **Panics** if the number of scores does not fit the targets.
    pub fn update_scores<E: Float>(&mut self, scores: &[E], targets: &[usize]) {
        let preds = self.task.predict("ConfusionMatrix", scores, targets.len());
        self.update_labels(&preds, targets);
    }
}

impl Metric for ConfusionMatrix {
    type Output = Vec<Vec<f64>>;

    fn name(&self) -> String {
        "confusion_matrix".to_string()
    }

    fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
        match self.task.read("ConfusionMatrix", preds, targets) {
            (Prediction::Labels(p), t) => self.update_labels(&p, &t),
            (Prediction::Scores(s), t) => self.update_scores(&s, &t),
        }
    }

    fn compute(&self) -> Vec<Vec<f64>> {
        let counts = self.counts();
        match self.normalize {
            Some(how) => normalize_confusion_matrix(&counts, how),
            None => counts.iter().map(|row| row.iter().map(|&x| x as f64).collect()).collect(),
        }
    }

    fn reset(&mut self) {
        self.counts.iter_mut().for_each(|x| *x = 0);
    }

    fn merge(&mut self, other: &ConfusionMatrix) {
        assert!(
            self.task == other.task && self.normalize == other.normalize,
            "ConfusionMatrix::merge: configurations differ: {:?}/{:?} and {:?}/{:?}",
            self.task,
            self.normalize,
            other.task,
            other.normalize
        );
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
    }
}

/// The confusion matrix of hard predictions, one row per true class (scikit-learn's
/// `confusion_matrix(targets, preds, labels=range(num_classes))`).
///
/// **Panics** if the lengths differ or an index is `>= num_classes`.
///
/// ```
/// use kiln_metrics::functional::confusion_matrix;
/// // binary: [[tn, fp], [fn, tp]]
/// assert_eq!(confusion_matrix(&[1, 1, 1, 0], &[0, 1, 0, 1], 2), vec![vec![0, 2], vec![1, 1]]);
/// ```
#[must_use]
pub fn confusion_matrix(preds: &[usize], targets: &[usize], num_classes: usize) -> Vec<Vec<u64>> {
    let mut cm = ConfusionMatrix::multiclass(num_classes);
    cm.update_labels(preds, targets);
    cm.counts()
}

/// Normalises a matrix of counts over rows ([`Normalize::True`]), columns
/// ([`Normalize::Pred`]) or everything ([`Normalize::All`]); a row, column or matrix without
/// any count becomes zeros (scikit-learn's `nan_to_num`).
///
/// ```
/// use kiln_metrics::{functional::normalize_confusion_matrix, Normalize};
/// let cm = vec![vec![3, 1], vec![0, 0]];
/// assert_eq!(normalize_confusion_matrix(&cm, Normalize::True), vec![vec![0.75, 0.25], vec![0.0, 0.0]]);
/// assert_eq!(normalize_confusion_matrix(&cm, Normalize::Pred), vec![vec![1.0, 1.0], vec![0.0, 0.0]]);
/// ```
#[must_use]
pub fn normalize_confusion_matrix(counts: &[Vec<u64>], how: Normalize) -> Vec<Vec<f64>> {
    let n = counts.len();
    let divide = |x: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            x as f64 / total as f64
        }
    };
    let row_sums: Vec<u64> = counts.iter().map(|r| r.iter().sum()).collect();
    let col_sums: Vec<u64> =
        (0..counts.first().map_or(0, Vec::len)).map(|j| counts.iter().map(|r| r[j]).sum()).collect();
    let all: u64 = row_sums.iter().sum();
    (0..n)
        .map(|i| {
            counts[i]
                .iter()
                .enumerate()
                .map(|(j, &x)| match how {
                    Normalize::True => divide(x, row_sums[i]),
                    Normalize::Pred => divide(x, col_sums[j]),
                    Normalize::All => divide(x, all),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn hand_checked_with_empty_class() {
        // class 3 never occurs and is never predicted
        let cm = confusion_matrix(&[0, 1, 1, 2, 0], &[0, 1, 2, 2, 1], 4);
        assert_eq!(cm, vec![vec![1, 0, 0, 0], vec![1, 1, 0, 0], vec![0, 1, 1, 0], vec![0, 0, 0, 0]]);
        let cols = normalize_confusion_matrix(&cm, Normalize::Pred);
        assert_eq!(cols[1], vec![0.5, 0.5, 0.0, 0.0]);
        assert_eq!(cols[3], vec![0.0; 4]);
        let all = normalize_confusion_matrix(&cm, Normalize::All);
        assert_eq!(all[2], vec![0.0, 0.2, 0.2, 0.0]);
        let empty = ConfusionMatrix::multiclass(2).with_normalize(Normalize::All);
        assert_eq!(empty.compute(), vec![vec![0.0; 2]; 2]);
    }

    #[test]
    fn binary_layout_and_scores() {
        let mut cm = ConfusionMatrix::binary().with_threshold(0.3);
        cm.update(&Shaped(vec![0.2, 0.3, 0.9, 0.1], vec![4]), &Shaped(vec![0.0, 0.0, 1.0, 1.0], vec![4]));
        // tn 1, fp 1, fn 1, tp 1
        assert_eq!(cm.counts(), vec![vec![1, 1], vec![1, 1]]);
        assert_eq!(cm.name(), "confusion_matrix");
    }

    #[test]
    fn merge_equals_single_pass() {
        let preds = [0, 2, 1, 1, 0, 2, 2, 0];
        let targets = [0, 1, 1, 2, 0, 2, 0, 0];
        let mut whole = ConfusionMatrix::multiclass(3);
        whole.update_labels(&preds, &targets);
        let mut a = ConfusionMatrix::multiclass(3);
        let mut b = a.clone();
        a.update_labels(&preds[..5], &targets[..5]);
        b.update_labels(&preds[5..], &targets[5..]);
        a.merge(&b);
        assert_eq!(a.counts(), whole.counts());
        a.reset();
        assert_eq!(a.counts(), vec![vec![0; 3]; 3]);
    }
}
