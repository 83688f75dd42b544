//! LIME: a weighted linear surrogate of the model around one input.

use kiln_tensor::{Float, Rng, Tensor};

use crate::linalg::weighted_ridge;
use crate::model::{Model, DEFAULT_BATCH_SIZE};
use crate::segments::Segmented;

/// Options of [`lime`], with the `lime` package's defaults for images.
#[derive(Clone, Debug, PartialEq)]
pub struct LimeConfig {
    /// Perturbed samples, the unperturbed input among them (default 1000).
    pub n_samples: usize,
    /// Width σ of the exponential kernel on the cosine distance (default 0.25).
    pub kernel_width: f64,
    /// Ridge penalty α of the surrogate (default 1, scikit-learn's `Ridge()`); 0 is ordinary
    /// weighted least squares.
    pub alpha: f64,
    /// Seed of the perturbations (default 0).
    pub seed: u64,
    /// Composed inputs per forward pass (default 128).
    pub batch_size: usize,
}

impl Default for LimeConfig {
    fn default() -> Self {
        LimeConfig { n_samples: 1000, kernel_width: 0.25, alpha: 1.0, seed: 0, batch_size: DEFAULT_BATCH_SIZE }
    }
}

/// What [`lime`] returns: the local linear surrogate `g(z) = intercept + Σ values_j z_j`.
#[derive(Clone, Debug)]
pub struct LimeExplanation<E: Float> {
    /// One coefficient per segment: how much showing the segment adds to the output.
    pub values: Vec<f64>,
    /// The surrogate's intercept (its output with every segment hidden).
    pub intercept: f64,
    /// The surrogate's weighted R² on the samples: how faithful it is locally.
    pub score: f64,
    /// The surrogate at the input itself, `intercept + Σ values`.
    pub local_prediction: f64,
    /// `f(x)`, the explained output.
    pub prediction: f64,
    /// The coefficients drawn onto the input: each element holds its segment's value.
    pub attributions: Tensor<E>,
}

impl<E: Float> LimeExplanation<E> {
    /// The `k` segments with the largest absolute coefficients, as `(segment, value)`, largest
    /// first.
    pub fn top(&self, k: usize) -> Vec<(usize, f64)> {
        let mut v: Vec<(usize, f64)> = self.values.iter().copied().enumerate().collect();
        v.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        v.truncate(k);
        v
    }
}

/// LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?"): fits a weighted ridge
/// regression of the model's output on which segments of `input` are shown.
///
/// The first sample is the input itself; each of the others shows every segment with
/// probability ½ (hidden segments take the background's values, averaged over background
/// samples). A sample `z` weighs `sqrt(exp(−d² / σ²))`, `d` the cosine distance between `z`
/// and the all-shown vector, `σ` the [`kernel_width`](LimeConfig::kernel_width) — the `lime`
/// package's kernel. The surrogate has an unpenalised intercept and a ridge penalty `α`.
///
/// **Panics** if `n_samples == 0`, `kernel_width <= 0`, or the model's output does not have the
/// shape [`Model`] describes.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_explain::{lime, LimeConfig, Segmented};
/// use kiln_tensor::Tensor;
/// let w = Var::constant(Tensor::from_vec(vec![3.0f64, -1.0, 0.0], &[3, 1]));
/// let model = |x: &Var<f64>| x.matmul(&w);
/// let input = Segmented::tabular(&Tensor::ones(&[3]), &Tensor::zeros(&[3]));
/// let exp = lime(&model, &input, 0, &LimeConfig { alpha: 0.0, ..Default::default() });
/// // A linear model is its own surrogate.
/// assert!((exp.values[0] - 3.0).abs() < 1e-9 && (exp.values[1] + 1.0).abs() < 1e-9);
/// assert!((exp.score - 1.0).abs() < 1e-9);
/// ```
#[must_use]
pub fn lime<E: Float, V>(
    model: &(impl Model<E, V> + ?Sized),
    input: &Segmented<E>,
    target: usize,
    config: &LimeConfig,
) -> LimeExplanation<E> {
    assert!(config.n_samples > 0, "lime: n_samples must be > 0");
    assert!(config.kernel_width > 0.0, "lime: kernel_width must be > 0, got {}", config.kernel_width);
    let f = |v: &kiln_autograd::Var<E>| model.predict(v);
    let d = input.segments().len();
    let mut rng = Rng::new(config.seed);
    let mut masks = vec![vec![true; d]];
    for _ in 1..config.n_samples {
        masks.push((0..d).map(|_| rng.next_u64() >> 63 == 1).collect());
    }
    let ys = input.evaluate_masks(&f, &masks, target, config.batch_size, "lime");
    let width2 = config.kernel_width * config.kernel_width;
    let weights: Vec<f64> = masks
        .iter()
        .map(|z| {
            let on = z.iter().filter(|&&b| b).count();
            // Cosine distance to the all-ones vector (1 for the empty coalition, as sklearn).
            let dist = if on == 0 { 1.0 } else { 1.0 - (on as f64 / d as f64).sqrt() };
            (-dist * dist / width2).exp().sqrt()
        })
        .collect();
    let x: Vec<f64> = masks.iter().flat_map(|z| z.iter().map(|&b| if b { 1.0 } else { 0.0 })).collect();
    let fit = weighted_ridge(&x, d, &ys, &weights, config.alpha, true);
    LimeExplanation {
        attributions: input.segments().expand(&fit.coefficients, input.input().shape()),
        local_prediction: fit.intercept + fit.coefficients.iter().sum::<f64>(),
        prediction: ys[0],
        intercept: fit.intercept,
        score: fit.score,
        values: fit.coefficients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::Var;

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn lime_on_a_linear_model_is_proportional_to_its_weights() {
        let w = vec![0.5, -2.0, 1.5, 3.0, -1.0, 0.25];
        let wv = Var::constant(Tensor::from_vec(w.clone(), &[6, 1]));
        let model = |x: &Var<f64>| x.matmul(&wv).add_scalar(0.7);
        let x = Tensor::ones(&[6]);
        let input = Segmented::tabular(&x, &Tensor::zeros(&[6]));
        // The default ridge shrinks a little: the direction is w's, the size slightly smaller.
        let exp = lime(&model, &input, 0, &LimeConfig::default());
        assert!(cosine(&exp.values, &w) > 0.9999, "{:?}", exp.values);
        for (v, w) in exp.values.iter().zip(&w) {
            assert!((v - w).abs() < 0.05 * w.abs(), "{v} vs {w}");
        }
        assert!((exp.prediction - 2.95).abs() < 1e-12);
        // Without the ridge the surrogate is the model.
        let exact = lime(&model, &input, 0, &LimeConfig { alpha: 0.0, n_samples: 200, ..Default::default() });
        for (v, w) in exact.values.iter().zip(&w) {
            assert!((v - w).abs() < 1e-9);
        }
        assert!((exact.intercept - 0.7).abs() < 1e-9);
        assert!((exact.local_prediction - exact.prediction).abs() < 1e-9);
        assert_eq!(exact.top(2)[0].0, 3);
    }

    #[test]
    fn lime_on_a_patch_model_finds_the_patch() {
        let model = |x: &Var<f64>| x.narrow(2, 4, 4).narrow(3, 0, 4).sum(&[1, 2, 3], false).tanh();
        let x = Tensor::full(&[1, 8, 8], 0.1);
        let exp = lime(&model, &Segmented::image(&x, [4, 4], 0.0), 0, &LimeConfig::default());
        let best = exp.top(1)[0].0;
        assert_eq!(best, 2); // the bottom-left cell of the 2x2 grid
        assert!(exp.attributions.get(&[0, 6, 1]) > 0.0);
    }
}
