//! [`AveragePrecision`]: the step-wise area under the precision-recall curve; and
//! [`precision_recall_curve`].

use kiln_tensor::Float;

use crate::average::Average;
use crate::metric::{Metric, MetricInput};
use crate::ranking::{ranking_metric, ClfCurve, Ranking};

/// Average precision of one class against the rest, scikit-learn's step definition
/// `AP = Σ_n (R_n − R_{n−1}) P_n` over the distinct thresholds, highest first, without
/// interpolation. 0 when there are no positives (scikit-learn sets recall to 1 then, which
/// leaves only a zero-precision step); NaN without any sample.
fn average_precision_of(curve: &ClfCurve) -> f64 {
    if curve.tps.is_empty() {
        return f64::NAN;
    }
    let p = curve.positives();
    if p == 0 {
        return 0.0;
    }
    let mut tp0 = 0u64;
    let mut ap = 0.0;
    for (&fp, &tp) in curve.fps.iter().zip(&curve.tps) {
        if tp > tp0 {
            ap += (tp - tp0) as f64 / p as f64 * (tp as f64 / (tp + fp) as f64);
        }
        tp0 = tp;
    }
    ap
}

/// Average precision, the step-wise area under the precision-recall curve (scikit-learn's
/// `average_precision_score`): binary, or one-vs-rest over `C` classes with macro, weighted
/// (by support) or micro averaging.
///
/// `AP = Σ_n (R_n − R_{n−1}) P_n` over the distinct score thresholds, highest first: tied
/// scores form one step, and there is no interpolation (unlike the trapezoid, which is
/// optimistic for this curve). The metric keeps every score it is given, like
/// [`RocAuc`](crate::RocAuc). It is NaN before any update; a class without positives scores 0.
///
/// Inputs of [`Metric::update`] are read as for [`RocAuc`](crate::RocAuc).
///
/// # Example
///
/// ```
/// use kiln_metrics::{AveragePrecision, Metric};
///
/// let mut ap = AveragePrecision::binary();
/// ap.update_scores(&[0.1f64, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
/// // steps: recall 0.5 at precision 1 (0.8), recall 1 at precision 2/3 (0.35)
/// assert!((ap.compute() - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-15);
/// ```
#[derive(Clone, Debug)]
pub struct AveragePrecision {
    ranking: Ranking,
}

impl AveragePrecision {
    /// Binary average precision: one score per sample (higher means class 1), targets 0/1.
    #[must_use]
    pub fn binary() -> AveragePrecision {
        AveragePrecision { ranking: Ranking::binary() }
    }

    /// One-vs-rest average precision over `num_classes` classes, from `[N, num_classes]`
    /// scores.
    ///
    /// **Panics** if `num_classes` is 0 or `average` is [`Average::Binary`].
    #[must_use]
    pub fn multiclass(num_classes: usize, average: Average) -> AveragePrecision {
        AveragePrecision { ranking: Ranking::multiclass("AveragePrecision", num_classes, average) }
    }
}

ranking_metric!(AveragePrecision, "AveragePrecision", "average_precision", average_precision_of);

/// Binary average precision of scores against 0/1 targets (scikit-learn's
/// `average_precision_score`).
///
/// **Panics** if the lengths differ, a target is not 0 or 1, or a score is NaN.
///
/// ```
/// use kiln_metrics::functional::average_precision;
/// let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
/// assert!((ap - 0.8333333333333333).abs() < 1e-15);
/// ```
#[must_use]
pub fn average_precision<E: Float>(scores: &[E], targets: &[usize]) -> f64 {
    let mut m = AveragePrecision::binary();
    m.update_scores(scores, targets);
    m.compute()
}

/// One-vs-rest average precision of `[N, num_classes]` row-major scores (scikit-learn's
/// `average_precision_score` on one-hot targets).
///
/// **Panics** if the scores do not form `[targets.len(), num_classes]`, a target is out of
/// range, a score is NaN, or `average` is [`Average::Binary`].
#[must_use]
pub fn average_precision_ovr<E: Float>(scores: &[E], targets: &[usize], num_classes: usize, average: Average) -> f64 {
    let mut m = AveragePrecision::multiclass(num_classes, average);
    m.update_scores(scores, targets);
    m.compute()
}

/// Average precision of every class against the rest (scikit-learn's `average=None`).
///
/// **Panics** as [`average_precision_ovr`].
#[must_use]
pub fn average_precision_ovr_per_class<E: Float>(scores: &[E], targets: &[usize], num_classes: usize) -> Vec<f64> {
    let mut m = AveragePrecision::multiclass(num_classes, Average::Macro);
    m.update_scores(scores, targets);
    m.compute_per_class()
}

/// The points of a precision-recall curve, as returned by [`precision_recall_curve`].
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionRecallCurve {
    /// Precision at each threshold, then a final 1.
    pub precision: Vec<f64>,
    /// Recall at each threshold (decreasing), then a final 0.
    pub recall: Vec<f64>,
    /// The distinct scores, increasing (one fewer than the points).
    pub thresholds: Vec<f64>,
}

/// The precision-recall curve of binary scores (scikit-learn's `precision_recall_curve`):
/// one point per distinct score, lowest threshold first, and a last point (precision 1,
/// recall 0) without threshold. Without positives, recall is 1 everywhere (but the last
/// point), as in scikit-learn.
///
/// **Panics** if the lengths differ, a target is not 0 or 1, or a score is NaN.
///
/// ```
/// use kiln_metrics::functional::precision_recall_curve;
/// let c = precision_recall_curve(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
/// assert_eq!(c.precision, vec![0.5, 2.0 / 3.0, 0.5, 1.0, 1.0]);
/// assert_eq!(c.recall, vec![1.0, 1.0, 0.5, 0.5, 0.0]);
/// assert_eq!(c.thresholds, vec![0.1, 0.35, 0.4, 0.8]);
/// ```
#[must_use]
pub fn precision_recall_curve<E: Float>(scores: &[E], targets: &[usize]) -> PrecisionRecallCurve {
    let mut r = Ranking::binary();
    r.update_scores("precision_recall_curve", scores, targets);
    let positive: Vec<bool> = r.targets.iter().map(|&t| t == 1).collect();
    let curve = ClfCurve::new("precision_recall_curve", &r.scores, &positive);
    let p = curve.positives();
    let mut out = PrecisionRecallCurve { precision: Vec::new(), recall: Vec::new(), thresholds: Vec::new() };
    for k in (0..curve.tps.len()).rev() {
        let (tp, fp) = (curve.tps[k], curve.fps[k]);
        out.precision.push(if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 });
        out.recall.push(if p == 0 { 1.0 } else { tp as f64 / p as f64 });
        out.thresholds.push(curve.thresholds[k]);
    }
    out.precision.push(1.0);
    out.recall.push(0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Average precision straight from the curve, as scikit-learn writes it:
    /// `-Σ diff(recall) · precision[:-1]`.
    fn from_curve(scores: &[f64], targets: &[usize]) -> f64 {
        let c = precision_recall_curve(scores, targets);
        -(0..c.recall.len() - 1).map(|i| (c.recall[i + 1] - c.recall[i]) * c.precision[i]).sum::<f64>()
    }

    #[test]
    fn ties_form_one_step() {
        let scores = [0.5, 0.5, 0.5, 0.9, 0.1, 0.5];
        let targets = [1, 0, 0, 1, 1, 0];
        // thresholds 0.9 (tp 1, fp 0), 0.5 (tp 2, fp 3), 0.1 (tp 3, fp 3)
        let expected = (1.0 / 3.0) * 1.0 + (1.0 / 3.0) * (2.0 / 5.0) + (1.0 / 3.0) * 0.5;
        assert!((average_precision(&scores, &targets) - expected).abs() < 1e-15);
        assert!((average_precision(&scores, &targets) - from_curve(&scores, &targets)).abs() < 1e-15);
    }

    #[test]
    fn no_positives_and_no_samples() {
        assert_eq!(average_precision(&[0.3, 0.2], &[0, 0]), 0.0);
        assert_eq!(average_precision(&[0.3, 0.2], &[1, 1]), 1.0);
        assert!(AveragePrecision::binary().compute().is_nan());
        let c = precision_recall_curve(&[0.3, 0.2], &[0, 0]);
        assert_eq!(c.recall, vec![1.0, 1.0, 0.0]);
        assert_eq!(c.precision, vec![0.0, 0.0, 1.0]);
    }

    #[test]
    fn one_vs_rest() {
        let scores = [0.7, 0.2, 0.1, /**/ 0.3, 0.6, 0.1, /**/ 0.5, 0.4, 0.1, /**/ 0.2, 0.2, 0.6];
        let targets = [0, 1, 0, 1];
        let per = average_precision_ovr_per_class(&scores, &targets, 3);
        assert_eq!(per[0], 1.0);
        // class 1: 0.6 (pos), 0.4 (neg), 0.2 tie of one pos and one neg
        assert!((per[1] - (0.5 + 0.5 * 0.5)).abs() < 1e-15);
        assert_eq!(per[2], 0.0);
        let macro_ = average_precision_ovr(&scores, &targets, 3, Average::Macro);
        assert!((macro_ - (1.0 + 0.75) / 3.0).abs() < 1e-15);
        let weighted = average_precision_ovr(&scores, &targets, 3, Average::Weighted);
        assert!((weighted - 0.875).abs() < 1e-15);
        let flat_targets: Vec<usize> = targets.iter().flat_map(|&t| (0..3).map(move |c| usize::from(c == t))).collect();
        let micro = average_precision_ovr(&scores, &targets, 3, Average::Micro);
        assert_eq!(micro, average_precision(&scores, &flat_targets));
    }

    #[test]
    fn merge_equals_single_pass() {
        let scores = [0.5, 0.5, 0.5, 0.9, 0.1, 0.5, 0.3, 0.8];
        let targets = [1, 0, 0, 1, 1, 0, 0, 1];
        let mut whole = AveragePrecision::binary();
        whole.update_scores(&scores, &targets);
        let mut a = AveragePrecision::default();
        let mut b = a.clone();
        a.update_scores(&scores[..5], &targets[..5]);
        b.update_scores(&scores[5..], &targets[5..]);
        a.merge(&b);
        assert_eq!(a.compute(), whole.compute());
        assert_eq!(a.name(), "average_precision");
        assert_eq!(a.len(), 8);
    }
}
