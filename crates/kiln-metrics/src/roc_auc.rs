//! [`RocAuc`]: area under the ROC curve, binary and one-vs-rest; and [`roc_curve`].

use kiln_tensor::Float;

use crate::average::Average;
use crate::metric::{Metric, MetricInput};
use crate::ranking::{ranking_metric, ClfCurve, Ranking};

/// Area under the ROC curve of one class against the rest: the trapezoid through the points
/// `(fps/N, tps/P)` of every distinct threshold, from `(0, 0)`, so tied scores count half
/// (scikit-learn's `roc_auc_score`). The area is summed in integers and divided once, so it
/// is exact up to that division. NaN when the targets hold only one class.
fn roc_auc_of(curve: &ClfCurve) -> f64 {
    let (p, n) = (curve.positives(), curve.negatives());
    if p == 0 || n == 0 {
        return f64::NAN;
    }
    let (mut area2, mut fp0, mut tp0) = (0u128, 0u64, 0u64);
    for (&fp, &tp) in curve.fps.iter().zip(&curve.tps) {
        area2 += u128::from(fp - fp0) * u128::from(tp + tp0);
        (fp0, tp0) = (fp, tp);
    }
    area2 as f64 / (2.0 * p as f64 * n as f64)
}

/// Area under the ROC curve (scikit-learn's `roc_auc_score`): binary, or one-vs-rest over
/// `C` classes with macro, weighted (by support) or micro averaging.
///
/// Ties are handled exactly as scikit-learn's trapezoid over distinct thresholds: a positive
/// and a negative with the same score count half a correctly ordered pair. The metric keeps
/// every score it is given (memory grows with the data; [`merge`](Metric::merge) concatenates),
/// and [`compute`](Metric::compute) sorts them. It is NaN before any update, and when the
/// targets hold a single class (binary), or a class never occurs (one-vs-rest macro; the
/// weighted average gives such a class weight 0), as in scikit-learn.
///
/// For one-vs-rest, pass probabilities (softmax outputs) to match scikit-learn, which rejects
/// rows that do not sum to 1; the per-class areas of raw logits differ.
///
/// # Inputs of [`Metric::update`]
///
/// - binary: scores of the targets' shape (size-1 axes aside), targets 0/1;
/// - one-vs-rest: scores `[N, C, ...]` for targets `[N, ...]` (class axis 1).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Metric, RocAuc};
/// use kiln_tensor::Tensor;
///
/// let mut auc = RocAuc::binary();
/// let scores = Tensor::from_vec(vec![0.1f64, 0.4, 0.35, 0.8], &[4]);
/// auc.update(&scores, &Tensor::from_vec(vec![0.0f64, 0.0, 1.0, 1.0], &[4]));
/// assert_eq!(auc.compute(), 0.75);
///
/// // a tie between a positive and a negative counts half
/// let mut tied = RocAuc::binary();
/// tied.update_scores(&[0.5f32, 0.5, 0.9], &[0, 1, 1]);
/// assert_eq!(tied.compute(), 0.75);
/// ```
#[derive(Clone, Debug)]
pub struct RocAuc {
    ranking: Ranking,
}

impl RocAuc {
    /// Binary ROC AUC: one score per sample (higher means class 1), targets 0/1.
    #[must_use]
    pub fn binary() -> RocAuc {
        RocAuc { ranking: Ranking::binary() }
    }

    /// One-vs-rest ROC AUC over `num_classes` classes, from `[N, num_classes]` scores.
    ///
    /// **Panics** if `num_classes` is 0 or `average` is [`Average::Binary`].
    #[must_use]
    pub fn multiclass(num_classes: usize, average: Average) -> RocAuc {
        RocAuc { ranking: Ranking::multiclass("RocAuc", num_classes, average) }
    }
}

ranking_metric!(RocAuc, "RocAuc", "roc_auc", roc_auc_of);

/// Binary ROC AUC of scores against 0/1 targets (scikit-learn's `roc_auc_score`); NaN when
/// only one class is present.
///
/// **Panics** if the lengths differ, a target is not 0 or 1, or a score is NaN.
///
/// ```
/// use kiln_metrics::functional::roc_auc;
/// assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), 0.75);
/// ```
#[must_use]
pub fn roc_auc<E: Float>(scores: &[E], targets: &[usize]) -> f64 {
    let mut m = RocAuc::binary();
    m.update_scores(scores, targets);
    m.compute()
}

/// One-vs-rest ROC AUC of `[N, num_classes]` row-major scores (scikit-learn's
/// `roc_auc_score(targets, scores, multi_class='ovr', average=..., labels=range(num_classes))`,
/// and `average='micro'`).
///
/// **Panics** if the scores do not form `[targets.len(), num_classes]`, a target is out of
/// range, a score is NaN, or `average` is [`Average::Binary`].
#[must_use]
pub fn roc_auc_ovr<E: Float>(scores: &[E], targets: &[usize], num_classes: usize, average: Average) -> f64 {
    let mut m = RocAuc::multiclass(num_classes, average);
    m.update_scores(scores, targets);
    m.compute()
}

/// ROC AUC of every class against the rest (scikit-learn's `average=None`).
///
/// **Panics** as [`roc_auc_ovr`].
#[must_use]
pub fn roc_auc_ovr_per_class<E: Float>(scores: &[E], targets: &[usize], num_classes: usize) -> Vec<f64> {
    let mut m = RocAuc::multiclass(num_classes, Average::Macro);
    m.update_scores(scores, targets);
    m.compute_per_class()
}

/// The points of a ROC curve, as returned by [`roc_curve`].
#[derive(Clone, Debug, PartialEq)]
pub struct RocCurve {
    /// False positive rate at each threshold, from 0 up to 1.
    pub fpr: Vec<f64>,
    /// True positive rate at each threshold, from 0 up to 1.
    pub tpr: Vec<f64>,
    /// The thresholds, decreasing; the first is `+inf` (nothing predicted positive).
    pub thresholds: Vec<f64>,
}

/// The ROC curve of binary scores (scikit-learn's `roc_curve` with `drop_intermediate=True`):
/// one point per distinct score, highest first, after `(0, 0)` at threshold `+inf`, with points
/// on a straight segment between their neighbours dropped. The rates are NaN when the targets
/// have no negatives (`fpr`) or no positives (`tpr`).
///
/// **Panics** if the lengths differ, a target is not 0 or 1, or a score is NaN.
///
/// ```
/// use kiln_metrics::functional::roc_curve;
/// let c = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
/// assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
/// assert_eq!(c.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
/// assert_eq!(c.thresholds, vec![f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
/// ```
#[must_use]
pub fn roc_curve<E: Float>(scores: &[E], targets: &[usize]) -> RocCurve {
    let mut r = Ranking::binary();
    r.update_scores("roc_curve", scores, targets);
    let positive: Vec<bool> = r.targets.iter().map(|&t| t == 1).collect();
    let curve = ClfCurve::new("roc_curve", &r.scores, &positive);
    let m = curve.fps.len();
    let bend = |k: usize| {
        let second = |v: &[u64]| i128::from(v[k + 1]) - 2 * i128::from(v[k]) + i128::from(v[k - 1]);
        second(&curve.fps) != 0 || second(&curve.tps) != 0
    };
    let keep: Vec<usize> = (0..m).filter(|&k| m <= 2 || k == 0 || k == m - 1 || bend(k)).collect();
    let rate = |v: u64, total: u64| {
        if total == 0 {
            f64::NAN
        } else {
            v as f64 / total as f64
        }
    };
    let (p, n) = (curve.positives(), curve.negatives());
    let mut out = RocCurve { fpr: vec![rate(0, n)], tpr: vec![rate(0, p)], thresholds: vec![f64::INFINITY] };
    for k in keep {
        out.fpr.push(rate(curve.fps[k], n));
        out.tpr.push(rate(curve.tps[k], p));
        out.thresholds.push(curve.thresholds[k]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    /// The probability that a random positive outscores a random negative, ties half.
    fn pairwise_auc(scores: &[f64], targets: &[usize]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if targets[i] == 1 && targets[j] == 0 {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn ties_match_pairwise_definition() {
        let scores = [0.2, 0.5, 0.5, 0.5, 0.9, 0.1, 0.2, 0.7, 0.7, 0.5];
        let targets = [0, 1, 0, 1, 1, 0, 1, 0, 1, 0];
        assert!((roc_auc(&scores, &targets) - pairwise_auc(&scores, &targets)).abs() < 1e-15);
        // all scores equal: 0.5
        assert_eq!(roc_auc(&[0.3; 4], &[0, 1, 0, 1]), 0.5);
        // perfectly inverted
        assert_eq!(roc_auc(&[0.9, 0.1], &[0, 1]), 0.0);
    }

    #[test]
    fn single_class_is_nan() {
        assert!(roc_auc(&[0.1, 0.2], &[1, 1]).is_nan());
        assert!(roc_auc(&[0.1, 0.2], &[0, 0]).is_nan());
        assert!(RocAuc::binary().compute().is_nan());
    }

    #[test]
    fn one_vs_rest_with_absent_class() {
        // class 2 never occurs
        let scores = [0.7, 0.2, 0.1, /**/ 0.3, 0.6, 0.1, /**/ 0.5, 0.4, 0.1, /**/ 0.2, 0.2, 0.6];
        let targets = [0, 1, 0, 1];
        let per = roc_auc_ovr_per_class(&scores, &targets, 3);
        assert_eq!(per[0], 1.0);
        assert_eq!(per[1], 0.625);
        assert!(per[2].is_nan());
        assert!(roc_auc_ovr(&scores, &targets, 3, Average::Macro).is_nan());
        // weighted: the absent class has weight 0
        assert_eq!(roc_auc_ovr(&scores, &targets, 3, Average::Weighted), (2.0 * 1.0 + 2.0 * 0.625) / 4.0);
    }

    #[test]
    fn micro_flattens_one_vs_rest() {
        let scores = [0.7, 0.2, 0.1, /**/ 0.3, 0.6, 0.1, /**/ 0.5, 0.4, 0.1];
        let targets = [0, 1, 2];
        let flat_targets: Vec<usize> = targets.iter().flat_map(|&t| (0..3).map(move |c| usize::from(c == t))).collect();
        assert_eq!(roc_auc_ovr(&scores, &targets, 3, Average::Micro), roc_auc(&scores, &flat_targets));
    }

    #[test]
    fn merge_equals_single_pass() {
        let scores = [
            0.7, 0.2, 0.1, /**/ 0.3, 0.6, 0.1, /**/ 0.5, 0.4, 0.1, /**/ 0.2, 0.2, 0.6, /**/ 0.1,
            0.1, 0.8,
        ];
        let targets = [0, 1, 2, 1, 2];
        let mut whole = RocAuc::multiclass(3, Average::Weighted);
        whole.update_scores(&scores, &targets);
        let mut a = RocAuc::multiclass(3, Average::Weighted);
        let mut b = a.clone();
        a.update_scores(&scores[..6], &targets[..2]);
        b.update(&Shaped(scores[6..].to_vec(), vec![3, 3]), &Shaped(vec![2.0, 1.0, 2.0], vec![3]));
        a.merge(&b);
        assert_eq!(a.compute(), whole.compute());
        assert_eq!(a.len(), 5);
        assert_eq!(a.name(), "roc_auc_weighted");
        a.reset();
        assert!(a.is_empty());
    }

    #[test]
    fn curve_drops_collinear_points() {
        // three positives in a row above the negatives: the middle points lie on x = 0
        let c = roc_curve(&[0.9, 0.8, 0.7, 0.2, 0.1], &[1, 1, 1, 0, 0]);
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 1.0 / 3.0, 1.0, 1.0]);
        assert_eq!(c.thresholds, vec![f64::INFINITY, 0.9, 0.7, 0.1]);
        let no_negatives = roc_curve(&[0.2, 0.1], &[1, 1]);
        assert!(no_negatives.fpr.iter().all(|x| x.is_nan()));
    }

    #[test]
    #[should_panic(expected = "RocAuc: scores [2] do not fit targets [2]")]
    fn one_vs_rest_needs_scores() {
        RocAuc::multiclass(3, Average::Macro)
            .update(&Shaped(vec![0.0, 1.0], vec![2]), &Shaped(vec![0.0, 1.0], vec![2]));
    }
}
