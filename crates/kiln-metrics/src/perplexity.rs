//! [`Perplexity`]: the exponential of the mean negative log-likelihood.

use kiln_tensor::Float;

use crate::compensated_sum::CompensatedSum;
use crate::input::{check_score_rows, class_axis_last};
use crate::metric::{Metric, MetricInput};

/// Perplexity, `exp(mean NLL)` over every predicted token: `exp` of PyTorch's
/// `cross_entropy(logits, targets)` (with its `ignore_index`), the usual language-model figure.
///
/// Scores may be logits or log-probabilities: each row goes through `log_softmax`, which leaves
/// log-probabilities unchanged. Models that already report a mean loss can feed it with
/// [`update_nll`](Perplexity::update_nll). Keeps a compensated NLL sum and a token count,
/// so merging adds them. NaN before any update.
///
/// # Inputs of [`Metric::update`]
///
/// Scores `[N, C, ...]` for class-index targets `[N, ...]` (class axis 1, as in PyTorch's
/// `cross_entropy`; reshape `[B, T, V]` language-model logits to `[B * T, V]`).
///
/// # Example
///
/// ```
/// use kiln_metrics::{Metric, Perplexity};
/// use kiln_tensor::Tensor;
///
/// // a uniform model over 4 tokens has perplexity 4
/// let mut ppl = Perplexity::new();
/// ppl.update(&Tensor::from_vec(vec![0.0f32; 12], &[3, 4]), &Tensor::from_vec(vec![0.0f32, 3.0, 1.0], &[3]));
/// assert!((ppl.compute() - 4.0).abs() < 1e-12);
///
/// // padding (token 0) ignored; an accumulated loss of 2 tokens
/// let mut ppl = Perplexity::new().with_ignore_index(0);
/// ppl.update_log_probs(&[0.5f64.ln(), 0.5f64.ln(), 0.0, f64::NEG_INFINITY], 2, &[1, 0]);
/// ppl.update_nll(2.0 * 0.25f64.ln().abs(), 2);
/// assert!((ppl.compute() - (2.0f64 * 4.0 * 4.0).cbrt()).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Perplexity {
    ignore_index: Option<i64>,
    nll: CompensatedSum,
    count: u64,
}

impl Perplexity {
    /// An empty perplexity that counts every target.
    #[must_use]
    pub fn new() -> Perplexity {
        Perplexity::default()
    }

    /// Skips targets equal to `index` (padding), like PyTorch's `ignore_index` (which is -100
    /// by default there; here nothing is skipped unless this is set).
    #[must_use]
    pub fn with_ignore_index(mut self, index: i64) -> Perplexity {
        self.ignore_index = Some(index);
        self
    }

    /// Accumulates `[N, num_classes]` row-major logits or log-probabilities against class
    /// indices (`-log_softmax(row)[target]` per row).
    ///
    /// **Panics** if the scores do not form `[targets.len(), num_classes]`, or a target is out
    /// of range and not the ignore index.
    pub fn update_log_probs<E: Float>(&mut self, scores: &[E], num_classes: usize, targets: &[usize]) {
        check_score_rows("Perplexity", scores.len(), num_classes, targets.len());
        let targets = targets.iter().map(|&t| i64::try_from(t).unwrap_or(i64::MAX));
        self.add_rows(scores, num_classes, targets);
    }

    /// Adds the NLL of every row whose target is not the ignore index.
    fn add_rows<E: Float>(&mut self, scores: &[E], num_classes: usize, targets: impl Iterator<Item = i64>) {
        for (i, (row, t)) in scores.chunks_exact(num_classes).zip(targets).enumerate() {
            if self.ignore_index == Some(t) {
                continue;
            }
            let class = usize::try_from(t).ok().filter(|&c| c < num_classes);
            let Some(class) = class else {
                panic!("Perplexity: targets[{i}] = {t} is not a class index in 0..{num_classes}");
            };
            self.nll.add(nll_of(row, class));
            self.count += 1;
        }
    }

    /// Accumulates an already computed negative log-likelihood: `total_nll` summed over
    /// `count` tokens (a mean loss times its token count).
    pub fn update_nll(&mut self, total_nll: f64, count: u64) {
        self.nll.add(total_nll);
        self.count += count;
    }

    /// The mean negative log-likelihood so far (the cross-entropy loss), whose `exp` is the
    /// perplexity.
    #[must_use]
    pub fn mean_nll(&self) -> f64 {
        self.nll.value() / self.count as f64
    }

    /// The number of tokens counted.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// `-log_softmax(row)[target]`, computed stably: `logsumexp(row) - row[target]`.
fn nll_of<E: Float>(row: &[E], target: usize) -> f64 {
    let max = row.iter().map(|&x| Float::to_f64(x)).fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::INFINITY;
    }
    let sum: f64 = row.iter().map(|&x| (Float::to_f64(x) - max).exp()).sum();
    max + sum.ln() - Float::to_f64(row[target])
}

impl Metric for Perplexity {
    type Output = f64;

    fn name(&self) -> String {
        "perplexity".to_string()
    }

    fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
        let (ps, ts) = (preds.shape(), targets.shape());
        assert!(
            ps.len() == ts.len() + 1 && !ts.is_empty() && ps[0] == ts[0] && ps[2..] == ts[1..],
            "Perplexity: scores {ps:?} do not fit targets {ts:?}: expected [N, C, ...] scores for \
             [N, ...] targets (class axis 1)"
        );
        let values = targets.to_f64_vec();
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.fract() != 0.0) {
            panic!("Perplexity: targets[{i}] = {v} is not a class index");
        }
        let rows = class_axis_last(preds.to_f64_vec(), &ps);
        self.add_rows(&rows, ps[1], values.iter().map(|&v| v as i64));
    }

    fn compute(&self) -> f64 {
        self.mean_nll().exp()
    }

    fn reset(&mut self) {
        *self = Perplexity { ignore_index: self.ignore_index, ..Perplexity::default() };
    }

    fn merge(&mut self, other: &Perplexity) {
        assert!(
            self.ignore_index == other.ignore_index,
            "Perplexity::merge: ignore indices {:?} and {:?} differ",
            self.ignore_index,
            other.ignore_index
        );
        self.nll.merge(&other.nll);
        self.count += other.count;
    }
}

/// Perplexity of `[N, num_classes]` row-major logits or log-probabilities against class
/// indices: `exp(cross_entropy)`.
///
/// **Panics** if the scores do not form `[targets.len(), num_classes]` or a target is out of
/// range.
///
/// ```
/// use kiln_metrics::functional::perplexity;
/// let log_probs = [0.5f64.ln(), 0.25f64.ln(), 0.25f64.ln()];
/// assert!((perplexity(&log_probs, 3, &[1]) - 4.0).abs() < 1e-12);
/// ```
#[must_use]
pub fn perplexity<E: Float>(scores: &[E], num_classes: usize, targets: &[usize]) -> f64 {
    let mut m = Perplexity::new();
    m.update_log_probs(scores, num_classes, targets);
    m.compute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::tests::Shaped;

    #[test]
    fn logits_and_log_probs_agree() {
        let logits = [1.0f64, 2.0, 0.5, /**/ -1.0, 0.0, 3.0];
        let targets = [1, 2];
        let mut log_probs = Vec::new();
        for row in logits.chunks(3) {
            let lse = row.iter().map(|x: &f64| x.exp()).sum::<f64>().ln();
            log_probs.extend(row.iter().map(|x| x - lse));
        }
        let a = perplexity(&logits, 3, &targets);
        let b = perplexity(&log_probs, 3, &targets);
        assert!((a - b).abs() < 1e-12);
        let expected = ((-log_probs[1] - log_probs[5]) / 2.0).exp();
        assert!((a - expected).abs() < 1e-12);
    }

    #[test]
    fn large_logits_are_stable() {
        assert!((perplexity(&[1000.0f32, 1000.0], 2, &[0]) - 2.0).abs() < 1e-6);
        // a certain wrong prediction: infinite perplexity
        assert_eq!(perplexity(&[0.0f64, f64::NEG_INFINITY], 2, &[1]), f64::INFINITY);
    }

    #[test]
    fn ignore_index_negative_and_positive() {
        let scores = Shaped(vec![0.0; 8], vec![4, 2]);
        let mut m = Perplexity::new().with_ignore_index(-100);
        m.update(&scores, &Shaped(vec![0.0, -100.0, 1.0, -100.0], vec![4]));
        assert_eq!(m.count(), 2);
        assert!((m.compute() - 2.0).abs() < 1e-12);
        let mut pad = Perplexity::new().with_ignore_index(1);
        pad.update(&scores, &Shaped(vec![0.0, 1.0, 1.0, 1.0], vec![4]));
        assert_eq!(pad.count(), 1);
    }

    #[test]
    fn class_axis_one() {
        // [N=1, C=2, L=2]; position 0 logits (0, 0), position 1 logits (ln 3, 0)
        let scores = Shaped(vec![0.0, 3f64.ln(), 0.0, 0.0], vec![1, 2, 2]);
        let mut m = Perplexity::new();
        m.update(&scores, &Shaped(vec![1.0, 0.0], vec![1, 2]));
        let expected = ((2f64.ln() + (4.0f64 / 3.0).ln()) / 2.0).exp();
        assert!((m.compute() - expected).abs() < 1e-12);
    }

    #[test]
    fn merge_equals_single_pass() {
        let scores: Vec<f64> = (0..30).map(|i| (i as f64 * 0.9).sin() * 2.0).collect();
        let targets: Vec<usize> = (0..10).map(|i| (i * 7) % 3).collect();
        let whole = perplexity(&scores, 3, &targets);
        let mut a = Perplexity::new();
        let mut b = Perplexity::new();
        a.update_log_probs(&scores[..12], 3, &targets[..4]);
        b.update_log_probs(&scores[12..], 3, &targets[4..]);
        a.merge(&b);
        assert!((a.compute() - whole).abs() < 1e-12);
        a.reset();
        assert!(a.compute().is_nan());
    }

    #[test]
    #[should_panic(expected = "Perplexity: targets[0] = -1 is not a class index in 0..2")]
    fn negative_target_without_ignore_index() {
        Perplexity::new().update(&Shaped(vec![0.0; 2], vec![1, 2]), &Shaped(vec![-1.0], vec![1]));
    }
}
