//! Gradient methods: saliency, gradient × input, SmoothGrad and Integrated Gradients, computed
//! with kiln's own autograd.

use kiln_tensor::{Float, Rng, Tensor};

use crate::model::{gradients, Model, DEFAULT_BATCH_SIZE};

/// The vanilla gradient ("saliency map", Simonyan et al. 2014): `∂ f_target(x) / ∂ x`, with the
/// shape of `x`.
///
/// `x` is one input without a batch dimension (see [`Model`] for the calling convention). Take
/// `.abs()` for the classic saliency map, which shows magnitude only.
///
/// **Panics** if the model's output is not `[1, C]` with `target < C` (or `[1]` with
/// `target == 0`).
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let w = Var::constant(Tensor::from_vec(vec![2.0f64, -1.0, 0.5], &[3, 1]));
/// let model = |x: &Var<f64>| x.matmul(&w); // f(x) = w . x
/// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3]);
/// let g = kiln_explain::saliency(&model, &x, 0);
/// assert_eq!(g.to_vec(), vec![2.0, -1.0, 0.5]);
/// ```
#[must_use]
pub fn saliency<E: Float, V>(model: &(impl Model<E, V> + ?Sized), x: &Tensor<E>, target: usize) -> Tensor<E> {
    let f = |v: &kiln_autograd::Var<E>| model.predict(v);
    let (g, _) = gradients(&f, &x.to_vec(), x.shape(), target, 1, "saliency");
    Tensor::from_vec(g, x.shape())
}

/// Gradient × input (Shrikumar et al. 2016): `x ⊙ ∂ f_target(x) / ∂ x`, with the shape of `x`.
///
/// For a linear model `f(x) = w · x + b` this is `w ⊙ x`, each feature's share of `f(x) − b`.
///
/// **Panics** as [`saliency`].
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let w = Var::constant(Tensor::from_vec(vec![2.0f64, -1.0], &[2, 1]));
/// let model = |x: &Var<f64>| x.matmul(&w);
/// let x = Tensor::from_vec(vec![3.0, 4.0], &[2]);
/// assert_eq!(kiln_explain::gradient_x_input(&model, &x, 0).to_vec(), vec![6.0, -4.0]);
/// ```
#[must_use]
pub fn gradient_x_input<E: Float, V>(model: &(impl Model<E, V> + ?Sized), x: &Tensor<E>, target: usize) -> Tensor<E> {
    saliency(model, x, target).mul(x)
}

/// SmoothGrad (Smilkov et al. 2017): the gradient averaged over `n_samples` noisy copies
/// `x + ε`, `ε ~ N(0, noise_std²)` elementwise, drawn from [`Rng::new(seed)`](Rng::new).
///
/// `noise_std` is absolute; the paper's advice is 10–20 % of the input's range
/// (`0.15 * (x.max_all() - x.min_all())`). The noisy copies go through the model in batches.
///
/// **Panics** if `n_samples == 0`, `noise_std` is negative, or as [`saliency`].
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// // f(x) = x0^2: the gradient 2 x0 averages to 2 x0 under zero-mean noise.
/// let model = |x: &Var<f64>| x.select(1, 0).square();
/// let x = Tensor::from_vec(vec![3.0, 1.0], &[2]);
/// let g = kiln_explain::smooth_grad(&model, &x, 0, 2000, 0.1, 7);
/// assert!((g.get(&[0]) - 6.0).abs() < 0.05);
/// assert_eq!(g.get(&[1]), 0.0);
/// ```
#[must_use]
pub fn smooth_grad<E: Float, V>(
    model: &(impl Model<E, V> + ?Sized),
    x: &Tensor<E>,
    target: usize,
    n_samples: usize,
    noise_std: f64,
    seed: u64,
) -> Tensor<E> {
    assert!(n_samples > 0, "smooth_grad: n_samples must be > 0");
    assert!(noise_std >= 0.0, "smooth_grad: noise_std must be >= 0, got {noise_std}");
    let f = |v: &kiln_autograd::Var<E>| model.predict(v);
    let mut rng = Rng::new(seed);
    let base = x.to_vec();
    let numel = base.len();
    let mut sum = vec![0.0f64; numel];
    // Draw and differentiate one batch at a time, so memory stays at one batch.
    let mut done = 0;
    while done < n_samples {
        let n = DEFAULT_BATCH_SIZE.min(n_samples - done);
        let mut data = Vec::with_capacity(n * numel);
        for _ in 0..n {
            data.extend(base.iter().map(|&v| v + E::from_f64(noise_std * rng.normal_f64())));
        }
        let (g, _) = gradients(&f, &data, x.shape(), target, DEFAULT_BATCH_SIZE, "smooth_grad");
        for row in g.chunks(numel.max(1)) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v.to_f64();
            }
        }
        done += n;
    }
    let scale = 1.0 / n_samples as f64;
    Tensor::from_vec(sum.into_iter().map(|s| E::from_f64(s * scale)).collect(), x.shape())
}

/// What [`integrated_gradients`] returns: the attributions and their completeness check.
#[derive(Clone, Debug)]
pub struct IntegratedGradients<E: Float> {
    /// `(x − baseline) ⊙ ∫₀¹ ∂f(baseline + α (x − baseline))/∂x dα`, with the shape of `x`.
    pub attributions: Tensor<E>,
    /// `f(x)`, the explained output at the input.
    pub prediction: f64,
    /// `f(baseline)`.
    pub baseline_prediction: f64,
    /// The sum of the attributions.
    pub sum: f64,
    /// The completeness error `|sum − (f(x) − f(baseline))|`; it goes to 0 as `steps` grows.
    pub error: f64,
}

impl<E: Float> IntegratedGradients<E> {
    /// `f(x) − f(baseline)`, what the attributions should add up to.
    pub fn delta(&self) -> f64 {
        self.prediction - self.baseline_prediction
    }

    /// The completeness error relative to `|f(x) − f(baseline)|` (the error itself when that
    /// difference is 0).
    pub fn relative_error(&self) -> f64 {
        let d = self.delta().abs();
        if d > 0.0 {
            self.error / d
        } else {
            self.error
        }
    }
}

/// Integrated Gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks"):
/// the gradient integrated along the straight line from `baseline` to `x`, times `x − baseline`.
///
/// The integral is the trapezoidal rule over `steps` intervals (`steps + 1` gradients, taken in
/// batches), exact for a linear model and with an error falling as `1/steps²` for a smooth one.
/// Completeness — attributions adding up to `f(x) − f(baseline)` — is the method's axiom; the
/// returned [`IntegratedGradients::error`] measures how far the quadrature is from it
/// (the paper suggests raising `steps` until it is within 5 %).
///
/// **Panics** if `steps == 0`, the baseline's shape differs from `x`'s, or as [`saliency`].
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let w = Var::constant(Tensor::from_vec(vec![2.0f64, -1.0, 0.5], &[3, 1]));
/// let model = |x: &Var<f64>| x.matmul(&w).add_scalar(1.0); // f(x) = w . x + 1
/// let x = Tensor::from_vec(vec![1.0, 2.0, 4.0], &[3]);
/// let ig = kiln_explain::integrated_gradients(&model, &x, 0, &Tensor::zeros(&[3]), 8);
/// assert_eq!(ig.attributions.to_vec(), vec![2.0, -2.0, 2.0]); // w ⊙ x
/// assert!(ig.error < 1e-12); // sums to f(x) - f(0) = 2
/// ```
#[must_use]
pub fn integrated_gradients<E: Float, V>(
    model: &(impl Model<E, V> + ?Sized),
    x: &Tensor<E>,
    target: usize,
    baseline: &Tensor<E>,
    steps: usize,
) -> IntegratedGradients<E> {
    assert!(steps > 0, "integrated_gradients: steps must be > 0");
    assert!(
        baseline.shape() == x.shape(),
        "integrated_gradients: baseline of shape {:?} for an input of shape {:?}",
        baseline.shape(),
        x.shape()
    );
    let f = |v: &kiln_autograd::Var<E>| model.predict(v);
    let xs: Vec<f64> = x.to_vec().into_iter().map(|v| v.to_f64()).collect();
    let bs: Vec<f64> = baseline.to_vec().into_iter().map(|v| v.to_f64()).collect();
    let numel = xs.len();
    let mut avg = vec![0.0f64; numel];
    let (mut f_x, mut f_b) = (0.0, 0.0);
    // The points k/steps, k = 0..=steps, a batch at a time.
    let points: Vec<usize> = (0..=steps).collect();
    for chunk in points.chunks(DEFAULT_BATCH_SIZE) {
        let mut data = Vec::with_capacity(chunk.len() * numel);
        for &k in chunk {
            let alpha = k as f64 / steps as f64;
            data.extend(bs.iter().zip(&xs).map(|(&b, &v)| E::from_f64(b + alpha * (v - b))));
        }
        let (g, out) = gradients(&f, &data, x.shape(), target, DEFAULT_BATCH_SIZE, "integrated_gradients");
        for (i, &k) in chunk.iter().enumerate() {
            // Trapezoidal weights: 1/(2 steps) at the ends, 1/steps inside.
            let w = if k == 0 || k == steps { 0.5 / steps as f64 } else { 1.0 / steps as f64 };
            for (a, gv) in avg.iter_mut().zip(&g[i * numel..(i + 1) * numel]) {
                *a += w * (*gv).to_f64();
            }
            if k == 0 {
                f_b = out[i];
            }
            if k == steps {
                f_x = out[i];
            }
        }
    }
    let attr: Vec<f64> = avg.iter().zip(xs.iter().zip(&bs)).map(|(a, (v, b))| a * (v - b)).collect();
    let sum: f64 = attr.iter().sum();
    IntegratedGradients {
        attributions: Tensor::from_vec(attr.into_iter().map(E::from_f64).collect(), x.shape()),
        prediction: f_x,
        baseline_prediction: f_b,
        sum,
        error: (sum - (f_x - f_b)).abs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::Var;

    fn linear() -> (Vec<f64>, f64, impl Fn(&Var<f64>) -> Var<f64>) {
        let w = vec![0.5, -2.0, 1.5, 3.0];
        let b = 0.25;
        let wv = Var::constant(Tensor::from_vec(w.clone(), &[4, 1]));
        (w, b, move |x: &Var<f64>| x.matmul(&wv).add_scalar(b))
    }

    fn x() -> Tensor<f64> {
        Tensor::from_vec(vec![1.0, 2.0, -1.0, 0.5], &[4])
    }

    #[test]
    fn saliency_of_a_linear_model_is_its_weights() {
        let (w, _, model) = linear();
        assert_eq!(saliency(&model, &x(), 0).to_vec(), w);
    }

    #[test]
    fn gradient_x_input_of_a_linear_model_is_w_times_x() {
        let (w, _, model) = linear();
        let want: Vec<f64> = w.iter().zip(x().to_vec()).map(|(w, x)| w * x).collect();
        assert_eq!(gradient_x_input(&model, &x(), 0).to_vec(), want);
    }

    #[test]
    fn smooth_grad_of_a_linear_model_is_its_weights() {
        let (w, _, model) = linear();
        let g = smooth_grad(&model, &x(), 0, 300, 0.5, 1).to_vec();
        for (g, w) in g.iter().zip(&w) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
    }

    #[test]
    fn integrated_gradients_of_a_linear_model_with_zero_baseline_is_w_times_x() {
        let (w, b, model) = linear();
        let ig = integrated_gradients(&model, &x(), 0, &Tensor::zeros(&[4]), 1);
        let want: Vec<f64> = w.iter().zip(x().to_vec()).map(|(w, x)| w * x).collect();
        assert_eq!(ig.attributions.to_vec(), want);
        let fx: f64 = want.iter().sum::<f64>() + b;
        assert!((ig.prediction - fx).abs() < 1e-12);
        assert!((ig.baseline_prediction - b).abs() < 1e-12);
        assert!(ig.error < 1e-12);
    }

    #[test]
    fn a_multi_class_output_is_explained_by_its_target_column() {
        // Two outputs: column 0 = x0 + x1, column 1 = x0 - 3 x1.
        let w = Var::constant(Tensor::from_vec(vec![1.0f64, 1.0, 1.0, -3.0], &[2, 2]));
        let model = |x: &Var<f64>| x.matmul(&w);
        let x = Tensor::from_vec(vec![1.0, 1.0], &[2]);
        assert_eq!(saliency(&model, &x, 1).to_vec(), vec![1.0, -3.0]);
        assert_eq!(saliency(&model, &x, 0).to_vec(), vec![1.0, 1.0]);
    }

    #[test]
    fn an_output_that_ignores_the_input_has_zero_gradient() {
        let model = |x: &Var<f64>| Var::constant(Tensor::ones(&[x.size(0)]));
        assert_eq!(saliency(&model, &x(), 0).to_vec(), vec![0.0; 4]);
    }

    #[test]
    #[should_panic(expected = "target 2 out of range")]
    fn a_target_past_the_classes_panics() {
        let w = Var::constant(Tensor::<f64>::ones(&[4, 2]));
        let _ = saliency(&|x: &Var<f64>| x.matmul(&w), &x(), 2);
    }

    #[test]
    fn parameters_keep_no_gradient() {
        let w = Var::param(Tensor::<f64>::ones(&[4, 1]));
        let _ = saliency(&|x: &Var<f64>| x.matmul(&w), &x(), 0);
        assert!(w.grad().is_none());
    }
}
