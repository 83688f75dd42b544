//! Kernel SHAP: Shapley values of the segments by weighted linear regression over coalitions.

use std::collections::HashMap;

use kiln_tensor::{Float, Rng, Tensor};

use crate::linalg::weighted_ridge;
use crate::model::{Model, DEFAULT_BATCH_SIZE};
use crate::segments::Segmented;

/// Options of [`kernel_shap`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelShapConfig {
    /// How many coalitions to evaluate when sampling; `None` is the `shap` package's "auto",
    /// `2 M + 2048` for `M` segments.
    pub n_samples: Option<usize>,
    /// Up to this many (varying) segments every coalition is enumerated — `2^M − 2` model
    /// evaluations per background sample — and the values are the exact Shapley values
    /// (default 12).
    pub exact_max_segments: usize,
    /// Seed of the coalition sampling (default 0).
    pub seed: u64,
    /// Composed inputs per forward pass (default 128).
    pub batch_size: usize,
}

impl Default for KernelShapConfig {
    fn default() -> Self {
        KernelShapConfig { n_samples: None, exact_max_segments: 12, seed: 0, batch_size: DEFAULT_BATCH_SIZE }
    }
}

/// What [`kernel_shap`] returns.
#[derive(Clone, Debug)]
pub struct ShapValues<E: Float> {
    /// One Shapley value per segment. They add up to `prediction − expected_value` exactly
    /// (the efficiency constraint is built into the regression).
    pub values: Vec<f64>,
    /// `E[f(background)]`: the output with every segment hidden, averaged over the background
    /// samples (`φ₀`).
    pub expected_value: f64,
    /// `f(x)`, the explained output.
    pub prediction: f64,
    /// The values drawn onto the input: each element holds its segment's value
    /// ([`Segments::expand`](crate::Segments::expand)).
    pub attributions: Tensor<E>,
    /// Whether every coalition was enumerated (the values are then exact, not estimates).
    pub exact: bool,
    /// How many coalitions were evaluated, besides the full and the empty one.
    pub n_coalitions: usize,
}

impl<E: Float> ShapValues<E> {
    /// The sum of the values.
    pub fn sum(&self) -> f64 {
        self.values.iter().sum()
    }

    /// `|sum − (prediction − expected_value)|`, 0 up to rounding.
    pub fn efficiency_error(&self) -> f64 {
        (self.sum() - (self.prediction - self.expected_value)).abs()
    }
}

/// Kernel SHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions"):
/// the Shapley value of each segment of `input`, for output `target` of the model.
///
/// A coalition `z ∈ {0,1}^M` shows the segments with `z_j = 1` and hides the others (their
/// elements take the background's values; with several background samples the output is
/// averaged over them). The values solve the weighted least-squares problem
/// `min Σ π(z) (f(h(z)) − φ₀ − z·φ)²` with the Shapley kernel
/// `π(z) = (M − 1) / (C(M, |z|) |z| (M − |z|))` under the constraint `Σ φ = f(x) − φ₀`
/// (eliminating the last value, as the `shap` package does).
///
/// With at most [`exact_max_segments`](KernelShapConfig::exact_max_segments) varying segments,
/// or a budget that covers them all, every coalition is enumerated and the result is the exact
/// Shapley values. Otherwise coalitions are chosen as `shap`'s `KernelExplainer` does:
/// whole subset sizes (smallest and largest first, which carry most kernel weight) while the
/// budget covers them, then random coalitions of the remaining sizes drawn by kernel weight,
/// each with its complement; repeated draws add weight. Segments whose input equals the
/// background everywhere get 0.
///
/// **Panics** if the model's output does not have the shape [`Model`] describes.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_explain::{kernel_shap, KernelShapConfig, Segmented};
/// use kiln_tensor::Tensor;
/// // f(x) = x0 * x1 + x2: x0 and x1 share their interaction equally.
/// let model = |x: &Var<f64>| x.select(1, 0).mul(&x.select(1, 1)).add(&x.select(1, 2));
/// let x = Tensor::from_vec(vec![2.0, 3.0, 1.0], &[3]);
/// let input = Segmented::tabular(&x, &Tensor::zeros(&[3]));
/// let shap = kernel_shap(&model, &input, 0, &KernelShapConfig::default());
/// assert!(shap.exact);
/// for (v, want) in shap.values.iter().zip([3.0, 3.0, 1.0]) {
///     assert!((v - want).abs() < 1e-12);
/// }
/// assert!(shap.efficiency_error() < 1e-12); // sums to f(x) - f(0) = 7
/// ```
#[must_use]
pub fn kernel_shap<E: Float, V>(
    model: &(impl Model<E, V> + ?Sized),
    input: &Segmented<E>,
    target: usize,
    config: &KernelShapConfig,
) -> ShapValues<E> {
    let f = |v: &kiln_autograd::Var<E>| model.predict(v);
    let total = input.segments().len();
    let varying = input.varying();
    let players: Vec<usize> = (0..total).filter(|&s| varying[s]).collect();
    let m = players.len();

    let ends =
        input.evaluate_masks(&f, &[vec![true; total], vec![false; total]], target, config.batch_size, "kernel_shap");
    let (prediction, expected_value) = (ends[0], ends[1]);
    let delta = prediction - expected_value;
    let mut values = vec![0.0; total];
    let finish = |values: Vec<f64>, exact: bool, n: usize| ShapValues {
        attributions: input.segments().expand(&values, input.input().shape()),
        values,
        expected_value,
        prediction,
        exact,
        n_coalitions: n,
    };
    match m {
        0 => return finish(values, true, 0),
        1 => {
            values[players[0]] = delta;
            return finish(values, true, 0);
        }
        _ => {}
    }

    let all = if m < 63 { (1u64 << m) - 2 } else { u64::MAX };
    let budget = config.n_samples.unwrap_or(2 * m + 2048).max(2) as u64;
    let exact = m <= config.exact_max_segments || budget >= all;
    let (coalitions, weights) =
        if exact { enumerate_all(m) } else { sample_coalitions(m, budget as usize, &mut Rng::new(config.seed)) };

    // Coalitions over the players, widened to all segments (non-varying ones shown: it makes
    // no difference to the output).
    let masks: Vec<Vec<bool>> = coalitions
        .iter()
        .map(|z| {
            let mut mask = vec![true; total];
            for (k, &p) in players.iter().enumerate() {
                mask[p] = z[k];
            }
            mask
        })
        .collect();
    let ys = input.evaluate_masks(&f, &masks, target, config.batch_size, "kernel_shap");

    // Eliminate the last player with the constraint: φ_last = Δ − Σ_{j<last} φ_j, so
    // y − φ₀ − z_last Δ = Σ_{j<last} (z_j − z_last) φ_j.
    let d = m - 1;
    let mut x = Vec::with_capacity(coalitions.len() * d);
    let mut y = Vec::with_capacity(coalitions.len());
    for (z, &fz) in coalitions.iter().zip(&ys) {
        let last = if z[d] { 1.0 } else { 0.0 };
        x.extend((0..d).map(|j| if z[j] { 1.0 } else { 0.0 } - last));
        y.push(fz - expected_value - last * delta);
    }
    let fit = weighted_ridge(&x, d, &y, &weights, 0.0, false);
    let phi_last = delta - fit.coefficients.iter().sum::<f64>();
    for (k, &p) in players.iter().enumerate() {
        values[p] = if k < d { fit.coefficients[k] } else { phi_last };
    }
    finish(values, exact, coalitions.len())
}

/// `C(n, k)` as a float (infinite past `f64`'s range).
fn binomial(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Every coalition with `0 < |z| < m`, weighted by the Shapley kernel.
fn enumerate_all(m: usize) -> (Vec<Vec<bool>>, Vec<f64>) {
    let n = (1usize << m) - 2;
    let mut zs = Vec::with_capacity(n);
    let mut ws = Vec::with_capacity(n);
    for bits in 1..(1usize << m) - 1 {
        let z: Vec<bool> = (0..m).map(|j| bits >> j & 1 == 1).collect();
        let s = bits.count_ones() as usize;
        ws.push((m - 1) as f64 / (binomial(m, s) * (s * (m - s)) as f64));
        zs.push(z);
    }
    (zs, ws)
}

/// Calls `f` with each `k`-subset of `0..m` (lexicographic).
fn for_each_combination(m: usize, k: usize, mut f: impl FnMut(&[usize])) {
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        f(&idx);
        // Advance the rightmost index that can move.
        let Some(i) = (0..k).rev().find(|&i| idx[i] != i + m - k) else { return };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// The `shap` package's coalition sampling (`KernelExplainer.explain`): whole subset sizes
/// while the budget covers them, then weighted random draws with complements.
fn sample_coalitions(m: usize, budget: usize, rng: &mut Rng) -> (Vec<Vec<bool>>, Vec<f64>) {
    // Sizes 1..=ceil((m - 1) / 2); each but an unpaired middle size (m even) stands for
    // itself and its complement's size m - s.
    let num_sizes = m / 2;
    let num_paired = (m - 1) / 2;
    // Kernel weight of each subset size s (together with size m - s when paired).
    let mut weight: Vec<f64> = (1..=num_sizes).map(|s| (m - 1) as f64 / (s * (m - s)) as f64).collect();
    for w in weight.iter_mut().take(num_paired) {
        *w *= 2.0;
    }
    let norm: f64 = weight.iter().sum();
    weight.iter_mut().for_each(|w| *w /= norm);

    let mut zs: Vec<Vec<bool>> = Vec::new();
    let mut ws: Vec<f64> = Vec::new();
    let mut left = budget as f64;
    let mut remaining = weight.clone();
    let mut full = 0;
    for s in 1..=num_sizes {
        let paired = s <= num_paired;
        let count = binomial(m, s) * if paired { 2.0 } else { 1.0 };
        if left * remaining[s - 1] / count < 1.0 - 1e-8 {
            break;
        }
        full += 1;
        left -= count;
        if remaining[s - 1] < 1.0 {
            let r = 1.0 - remaining[s - 1];
            remaining.iter_mut().for_each(|w| *w /= r);
        }
        let w = weight[s - 1] / binomial(m, s) / if paired { 2.0 } else { 1.0 };
        for_each_combination(m, s, |idx| {
            let mut z = vec![false; m];
            idx.iter().for_each(|&i| z[i] = true);
            if paired {
                zs.push(z.iter().map(|b| !b).collect());
                ws.push(w);
            }
            zs.push(z);
            ws.push(w);
        });
    }
    let fixed = zs.len();
    if full < num_sizes {
        let mut left = budget.saturating_sub(fixed);
        // Draw sizes by kernel weight; paired sizes give two coalitions per draw.
        let mut p: Vec<f64> = weight[full..].to_vec();
        for (k, w) in p.iter_mut().enumerate() {
            if full + k < num_paired {
                *w /= 2.0;
            }
        }
        let psum: f64 = p.iter().sum();
        let cumulative: Vec<f64> = p
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / psum;
                Some(*acc)
            })
            .collect();
        let mut seen: HashMap<Vec<bool>, usize> = HashMap::new();
        let mut add = |z: Vec<bool>, zs: &mut Vec<Vec<bool>>, ws: &mut Vec<f64>, left: &mut usize| {
            if let Some(&i) = seen.get(&z) {
                ws[i] += 1.0;
            } else if *left > 0 {
                seen.insert(z.clone(), zs.len());
                zs.push(z);
                ws.push(1.0);
                *left -= 1;
            }
        };
        let mut draws = 4 * left;
        while left > 0 && draws > 0 {
            draws -= 1;
            let u = rng.next_f64();
            let k = cumulative.iter().position(|&c| u < c).unwrap_or(cumulative.len() - 1);
            let s = full + k + 1;
            let mut z = vec![false; m];
            for &i in &rng.permutation(m)[..s] {
                z[i] = true;
            }
            let complement: Vec<bool> = z.iter().map(|b| !b).collect();
            add(z, &mut zs, &mut ws, &mut left);
            if s <= num_paired {
                add(complement, &mut zs, &mut ws, &mut left);
            }
        }
        // The drawn coalitions share the kernel weight the enumerated sizes left over.
        let weight_left: f64 = weight[full..].iter().sum();
        let drawn: f64 = ws[fixed..].iter().sum();
        if drawn > 0.0 {
            ws[fixed..].iter_mut().for_each(|w| *w *= weight_left / drawn);
        }
    }
    (zs, ws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Segments;
    use kiln_autograd::Var;

    fn linear(w: &[f64], b: f64) -> impl Fn(&Var<f64>) -> Var<f64> {
        let wv = Var::constant(Tensor::from_vec(w.to_vec(), &[w.len(), 1]));
        move |x: &Var<f64>| x.matmul(&wv).add_scalar(b)
    }

    #[test]
    fn shap_of_a_linear_model_is_w_times_x_minus_baseline() {
        let w = [0.5, -2.0, 1.5, 3.0, -1.0];
        let x = Tensor::from_vec(vec![1.0, 2.0, -1.0, 0.5, 4.0], &[5]);
        let base = Tensor::from_vec(vec![0.5, -1.0, 0.0, 0.5, 1.0], &[5]);
        let shap = kernel_shap(&linear(&w, 0.3), &Segmented::tabular(&x, &base), 0, &KernelShapConfig::default());
        assert!(shap.exact);
        for (i, v) in shap.values.iter().enumerate() {
            let want = w[i] * (x.get(&[i]) - base.get(&[i]));
            assert!((v - want).abs() < 1e-12, "feature {i}: {v} vs {want}");
        }
        assert_eq!(shap.values[3], 0.0); // equal to the baseline: left out
    }

    #[test]
    fn sampled_shap_of_a_linear_model_is_still_exact() {
        // 30 features, far too many to enumerate: a linear model is fitted exactly by any design.
        let w: Vec<f64> = (0..30).map(|i| (i as f64 * 0.7).sin()).collect();
        let x = Tensor::from_vec((0..30).map(|i| 1.0 + i as f64 / 10.0).collect(), &[30]);
        let config = KernelShapConfig { n_samples: Some(300), seed: 3, ..Default::default() };
        let shap = kernel_shap(&linear(&w, -1.0), &Segmented::tabular(&x, &Tensor::zeros(&[30])), 0, &config);
        assert!(!shap.exact);
        assert_eq!(shap.n_coalitions, 300);
        for (i, v) in shap.values.iter().enumerate() {
            let want = w[i] * x.get(&[i]);
            assert!((v - want).abs() < 1e-9, "feature {i}: {v} vs {want}");
        }
    }

    #[test]
    fn shap_values_sum_to_prediction_minus_expected_value_over_a_background_set() {
        // A nonlinear model and three background rows.
        let model = |x: &Var<f64>| x.select(1, 0).mul(&x.select(1, 1)).tanh().add(&x.select(1, 2).square());
        let x = Tensor::from_vec(vec![1.0, -2.0, 0.5, 3.0], &[4]);
        let bg = Tensor::from_vec(vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0, 0.5, 2.0, 0.0], &[3, 4]);
        let shap = kernel_shap(&model, &Segmented::tabular(&x, &bg), 0, &KernelShapConfig::default());
        let expected: f64 = (0..3)
            .map(|r| {
                let b = |j: usize| bg.get(&[r, j]);
                (b(0) * b(1)).tanh() + b(2) * b(2)
            })
            .sum::<f64>()
            / 3.0;
        assert!((shap.expected_value - expected).abs() < 1e-12);
        assert!((shap.prediction - ((-2.0f64).tanh() + 0.25)).abs() < 1e-12);
        assert!(shap.efficiency_error() < 1e-12);
        // x3 is unused by the model: a dummy player.
        assert!(shap.values[3].abs() < 1e-12);
    }

    #[test]
    fn sampled_shap_is_close_to_exact_on_a_nonlinear_model() {
        let n = 14;
        let model = move |x: &Var<f64>| x.sin().sum(&[1], false).add(&x.select(1, 0).mul(&x.select(1, 1)));
        let x = Tensor::from_vec((0..n).map(|i| 0.3 * i as f64 - 1.0).collect(), &[n]);
        let input = Segmented::tabular(&x, &Tensor::zeros(&[n]));
        let exact = kernel_shap(&model, &input, 0, &KernelShapConfig { exact_max_segments: 14, ..Default::default() });
        let approx = kernel_shap(&model, &input, 0, &KernelShapConfig { n_samples: Some(2000), ..Default::default() });
        assert!(exact.exact && !approx.exact);
        // sin is additive, so only x0 and x1 interact.
        for i in 2..n {
            assert!((exact.values[i] - x.get(&[i]).sin()).abs() < 1e-10);
        }
        for (a, e) in approx.values.iter().zip(&exact.values) {
            assert!((a - e).abs() < 0.05, "{a} vs {e}");
        }
        assert!(approx.efficiency_error() < 1e-10);
    }

    #[test]
    fn image_shap_spreads_each_patch_value_over_its_pixels() {
        // f = sum of the pixels of the top-left 2x2 patch of a 4x4 image.
        let model = |x: &Var<f64>| x.narrow(1, 0, 2).narrow(2, 0, 2).sum(&[1, 2], false);
        let x = Tensor::ones(&[4, 4]);
        let shap = kernel_shap(&model, &Segmented::image(&x, [2, 2], 0.0), 0, &KernelShapConfig::default());
        assert!((shap.values[0] - 4.0).abs() < 1e-12);
        assert!(shap.values[1..].iter().all(|v| v.abs() < 1e-12));
        assert!((shap.attributions.get(&[1, 1]) - 4.0).abs() < 1e-12);
        assert!(shap.attributions.get(&[2, 2]).abs() < 1e-12);
    }

    #[test]
    fn superpixel_segments_group_features() {
        let w = [1.0, 2.0, 3.0, 4.0];
        let x = Tensor::ones(&[4]);
        let seg = Segments::from_labels(vec![Some(0), Some(1), Some(0), None]);
        let input = Segmented::new(&x, seg, &Tensor::zeros(&[4]));
        let shap = kernel_shap(&linear(&w, 0.0), &input, 0, &KernelShapConfig::default());
        assert_eq!(shap.values.len(), 2);
        assert!((shap.values[0] - 4.0).abs() < 1e-12 && (shap.values[1] - 2.0).abs() < 1e-12);
        // The fixed feature's contribution stays in both f(x) and E[f(b)].
        assert!((shap.prediction - shap.expected_value - 6.0).abs() < 1e-12);
    }

    #[test]
    fn enumerated_coalitions_cover_every_subset_once() {
        for m in [3, 4, 7] {
            let (zs, ws) = enumerate_all(m);
            assert_eq!(zs.len(), (1 << m) - 2);
            assert!(ws.iter().all(|&w| w > 0.0));
            let (zs2, _) = sample_coalitions(m, (1 << m) - 2, &mut Rng::new(0));
            let mut a: Vec<_> = zs.clone();
            let mut b: Vec<_> = zs2.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "m = {m}: a full budget enumerates every coalition");
        }
    }
}
