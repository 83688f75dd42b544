//! Batch normalisation: `BatchNorm1d` and `BatchNorm2d`,
//! `y = (x - E[x]) / √(Var[x] + ε) · γ + β` per channel, with running statistics.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::channel_norm::{
    channel_norm_output, channel_norm_state, check_channel_norm_config, describe_channel_norm, momentum_arg,
    reset_affine, reset_running_stats, update_batch_norm_stats, visit_channel_norm,
};
use super::norm::{channel_shape, standardize};
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

/// Configuration of a batch-norm layer (PyTorch's defaults: eps 1e-5, momentum 0.1, learnable
/// weight and bias, running statistics tracked). Build a [`BatchNorm1d`] or a [`BatchNorm2d`]
/// from it by naming the type: `let bn: BatchNorm2d = BatchNormConfig::new(16).build()?`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Channels `C` of the input.
    pub num_features: usize,
    /// Added to the variance for numerical stability.
    pub eps: f64,
    /// Weight of the new batch in the running statistics,
    /// `running = (1 - momentum) running + momentum batch`; `None` gives the cumulative
    /// average of all batches so far (factor `1 / num_batches_tracked`).
    pub momentum: Option<f64>,
    /// Whether to learn per-channel `weight` and `bias`.
    pub affine: bool,
    /// Whether to keep running statistics (used in eval mode); without them, batch
    /// statistics are used in both modes.
    pub track_running_stats: bool,
}

impl BatchNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> Self {
        BatchNormConfig { num_features, eps: 1e-5, momentum: Some(0.1), affine: true, track_running_stats: true }
    }

    /// Builds the layer (`BatchNorm1d` or `BatchNorm2d`, from the type asked for), in training
    /// mode, with weight 1, bias 0, running mean 0 and running variance 1.
    ///
    /// # Errors
    /// [`NnError::Config`] when `num_features` is zero, `eps` is negative or not finite, or
    /// `momentum` is outside `[0, 1]`.
    pub fn build<E: Float, const D: usize>(&self) -> Result<BatchNorm<E, D>, NnError> {
        check_channel_norm_config(BatchNorm::<E, D>::NAME, self.num_features, self.eps, self.momentum)?;
        let [weight, bias, running_mean, running_var, num_batches_tracked] =
            channel_norm_state(self.num_features, self.affine, self.track_running_stats);
        let bn = BatchNorm {
            config: self.clone(),
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            training: true,
        };
        bn.reset_parameters();
        Ok(bn)
    }
}

/// Batch normalisation over the batch and spatial dims of each channel, like
/// `torch.nn.BatchNorm1d`/`BatchNorm2d` (Ioffe & Szegedy, 2015):
/// `y = (x - E[x]) / √(Var[x] + ε) · γ + β`.
///
/// Use it through the aliases [`BatchNorm1d`] (`D = 1`: input `[N, C]` or `[N, C, L]`) and
/// [`BatchNorm2d`] (`D = 2`: input `[N, C, H, W]`).
///
/// In training mode the mean and the **biased** variance of the batch (per channel, over
/// every dim but 1) normalise the input, and the running statistics are updated with the
/// batch mean and the **unbiased** variance:
/// `running = (1 - momentum) running + momentum batch`, `num_batches_tracked += 1`.
/// In eval mode the running statistics normalise and nothing changes. Without
/// `track_running_stats`, batch statistics are used in both modes.
///
/// # Shapes
/// - Input: `[N, C]` or `[N, C, L]` (`BatchNorm1d`); `[N, C, H, W]` (`BatchNorm2d`)
/// - Output: the input's shape
///
/// # Parameters
/// - `weight` (γ): `[C]`, ones (with `affine`)
/// - `bias` (β): `[C]`, zeros (with `affine`)
///
/// # Buffers (with `track_running_stats`)
/// - `running_mean`: `[C]`, zeros
/// - `running_var`: `[C]`, ones
/// - `num_batches_tracked`: `[]`, 0 (a count, stored as a float)
///
/// **Panics** in `forward` when the input has the wrong rank or channel count, or, in
/// training mode, holds a single value per channel.
///
/// ```
/// use kiln_nn::{BatchNorm2d, Forward, Module};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let mut bn: BatchNorm2d = BatchNorm2d::new(3);
/// let x = Var::constant(Tensor::<f32>::arange(0.0, 48.0, 1.0).reshape(&[2, 3, 2, 4]));
/// let y = bn.forward(&x).value();
/// assert!(y.mean(&[0, 2, 3], false).abs().max_all() < 1e-5);
/// // channel 0 holds 0..8 and 24..32: mean 15.5 enters the running mean with momentum 0.1
/// assert!((bn.running_mean.as_ref().unwrap().value().to_vec()[0] - 1.55).abs() < 1e-5);
/// bn.eval();
/// assert_eq!(bn.forward(&x).shape().as_slice(), &[2, 3, 2, 4]);
/// assert_eq!(
///     bn.to_string(),
///     "BatchNorm2d(3, eps=1e-5, momentum=0.1, affine=true, track_running_stats=true) [6 parameters]"
/// );
/// ```
pub struct BatchNorm<E: Float, const D: usize> {
    /// The configuration it was built with.
    pub config: BatchNormConfig,
    /// γ, `[C]`, when `affine`.
    pub weight: Option<Var<E>>,
    /// β, `[C]`, when `affine`.
    pub bias: Option<Var<E>>,
    /// `[C]`, when tracking running statistics.
    pub running_mean: Option<Var<E>>,
    /// `[C]` (unbiased estimates), when tracking running statistics.
    pub running_var: Option<Var<E>>,
    /// `[]`, how many training batches updated the statistics, when tracking them.
    pub num_batches_tracked: Option<Var<E>>,
    training: bool,
}

/// Batch normalisation of `[N, C]` or `[N, C, L]` (statistics over `N` and `L`), like
/// `torch.nn.BatchNorm1d`. See [`BatchNorm`].
///
/// ```
/// use kiln_nn::{BatchNorm1d, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let bn: BatchNorm1d = BatchNorm1d::new(2);
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![1.0, 10.0, 3.0, 30.0], &[2, 2]));
/// let y = bn.forward(&x).value().to_vec();
/// assert!((y[0] + 1.0).abs() < 1e-4 && (y[3] - 1.0).abs() < 1e-4);
/// ```
pub type BatchNorm1d<E = f32> = BatchNorm<E, 1>;

/// Batch normalisation of `[N, C, H, W]` (statistics over `N`, `H` and `W`), like
/// `torch.nn.BatchNorm2d`. See [`BatchNorm`].
pub type BatchNorm2d<E = f32> = BatchNorm<E, 2>;

impl<const D: usize> BatchNorm<f32, D> {
    /// A layer with PyTorch's defaults for `num_features` channels, in training mode.
    ///
    /// **Panics** if `num_features` is zero (use [`BatchNormConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`BatchNorm::new_generic`].
    pub fn new(num_features: usize) -> Self {
        Self::new_generic(num_features)
    }
}

impl<E: Float, const D: usize> BatchNorm<E, D> {
    /// `BatchNorm1d` or `BatchNorm2d`, for messages and `Display`.
    pub const NAME: &'static str = match D {
        1 => "BatchNorm1d",
        2 => "BatchNorm2d",
        3 => "BatchNorm3d",
        _ => "BatchNorm",
    };

    /// [`BatchNorm::new`] in any element type: `BatchNorm2d::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`BatchNorm::new`] does.
    pub fn new_generic(num_features: usize) -> Self {
        BatchNormConfig::new(num_features).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Resets the running statistics: mean 0, variance 1, no batches tracked.
    pub fn reset_running_stats(&self) {
        reset_running_stats([&self.running_mean, &self.running_var, &self.num_batches_tracked]);
    }

    /// Resets the running statistics, γ to ones and β to zeros, as PyTorch does.
    pub fn reset_parameters(&self) {
        self.reset_running_stats();
        reset_affine([&self.weight, &self.bias]);
    }

    /// Its state in [`visit_channel_norm`]'s order.
    fn state(&self) -> [&Option<Var<E>>; 5] {
        [&self.weight, &self.bias, &self.running_mean, &self.running_var, &self.num_batches_tracked]
    }

    fn check_input(&self, shape: &[usize]) {
        let c = self.config.num_features;
        let (ok_rank, want) = if D == 1 {
            (shape.len() == 2 || shape.len() == 3, format!("[N, {c}] or [N, {c}, L]"))
        } else {
            let dims = if D <= 3 { ["D", "H", "W"][3 - D..].join(", ") } else { format!("{D} dims") };
            (shape.len() == D + 2, format!("[N, {c}, {dims}]"))
        };
        assert!(ok_rank && shape[1] == c, "{}: expected input {want}, got {shape:?}", Self::NAME);
    }
}

impl<E: Float, const D: usize> Forward<E> for BatchNorm<E, D> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let shape = x.shape();
        self.check_input(&shape);
        let c = self.config.num_features;
        let cs = channel_shape(c, shape.len());
        let eps = self.config.eps;
        let use_batch_stats = self.training || self.running_mean.is_none();
        let normalized = use_batch_stats.then(|| {
            let count = shape.iter().product::<usize>() / c;
            if self.training {
                assert!(
                    count > 1,
                    "{}: expected more than 1 value per channel when training, got input {:?}",
                    Self::NAME,
                    shape.as_slice()
                );
            }
            let axes: Vec<isize> = (0..shape.len()).filter(|&d| d != 1).map(|d| d as isize).collect();
            let (y, mean, var) = standardize(x, &axes, eps);
            if self.training {
                let stats = [&self.running_mean, &self.running_var, &self.num_batches_tracked];
                update_batch_norm_stats(stats, self.config.momentum, &mean.value(), &var.value(), count as f64);
            }
            y
        });
        channel_norm_output(normalized, x, self.state(), eps, &cs)
    }
}

impl<E: Float, const D: usize> Module<E> for BatchNorm<E, D> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_channel_norm(prefix, self.state(), f);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn is_training(&self) -> bool {
        self.training
    }
}

impl<E: Float, const D: usize> fmt::Display for BatchNorm<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let head =
            describe_channel_norm(Self::NAME, c.num_features, c.eps, c.momentum, c.affine, c.track_running_stats);
        write!(f, "{head}) [{} parameters]", self.num_parameters())
    }
}

impl<E: Float, const D: usize> LayerSpec for BatchNorm<E, D> {
    const TYPE_NAME: &'static str = if D == 1 { "BatchNorm1d" } else { "BatchNorm2d" };
    const EXAMPLE: &'static str = r#"{"num_features": 3, "eps": 0.001, "momentum": null, "affine": false}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"num_features": c.num_features, "eps": c.eps, "momentum": c.momentum, "affine": c.affine,
            "track_running_stats": c.track_running_stats}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let momentum = momentum_arg(a)?;
        BatchNormConfig {
            eps: a.f64("eps", 1e-5)?,
            momentum,
            affine: a.bool("affine", true)?,
            track_running_stats: a.bool("track_running_stats", true)?,
            ..BatchNormConfig::new(a.usize("num_features", None)?)
        }
        .build()
    }
}

crate::register_layer!(BatchNorm<E, 1>);
crate::register_layer!(BatchNorm<E, 2>);

#[cfg(test)]
mod tests {
    use super::super::conv::testing::{descend, int, run_golden};
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    /// The layer with `weight`/`bias` replaced (for gradcheck) and the given mode.
    fn with_affine<const D: usize>(
        bn: &BatchNorm<f64, D>,
        w: &Var<f64>,
        b: &Var<f64>,
        training: bool,
    ) -> BatchNorm<f64, D> {
        BatchNorm {
            config: bn.config.clone(),
            weight: Some(w.clone()),
            bias: Some(b.clone()),
            running_mean: bn.running_mean.as_ref().map(|v| Var::constant(v.value())),
            running_var: bn.running_var.as_ref().map(|v| Var::constant(v.value())),
            num_batches_tracked: bn.num_batches_tracked.as_ref().map(|v| Var::constant(v.value())),
            training,
        }
    }

    #[test]
    fn output_shapes_and_keys() {
        let bn: BatchNorm1d<f64> = BatchNorm1d::new_generic(4);
        assert_eq!(bn.forward(&Var::constant(t(&[3, 4], 1))).shape().as_slice(), &[3, 4]);
        assert_eq!(bn.forward(&Var::constant(t(&[3, 4, 5], 2))).shape().as_slice(), &[3, 4, 5]);
        let bn2: BatchNorm2d<f64> = BatchNorm2d::new_generic(2);
        assert_eq!(bn2.forward(&Var::constant(t(&[2, 2, 3, 3], 3))).shape().as_slice(), &[2, 2, 3, 3]);
        let keys: Vec<String> = bn2.state_dict().into_keys().collect();
        assert_eq!(keys, ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"]); // sorted map
        let names: Vec<String> = bn2.named_buffers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["running_mean", "running_var", "num_batches_tracked"]);
        assert_eq!(bn2.named_parameters().len(), 2);
        let plain: BatchNorm2d =
            BatchNormConfig { affine: false, track_running_stats: false, ..BatchNormConfig::new(2) }.build().unwrap();
        assert!(plain.state_dict().is_empty());
    }

    #[test]
    #[should_panic(expected = "BatchNorm2d: expected input [N, 3, H, W], got [2, 3, 4]")]
    fn batchnorm2d_rejects_3d_input() {
        let bn: BatchNorm2d = BatchNorm2d::new(3);
        let _ = bn.forward(&Var::constant(Tensor::zeros(&[2, 3, 4])));
    }

    #[test]
    #[should_panic(expected = "BatchNorm1d: expected more than 1 value per channel when training, got input [1, 3]")]
    fn training_needs_more_than_one_value_per_channel() {
        let bn: BatchNorm1d = BatchNorm1d::new(3);
        let _ = bn.forward(&Var::constant(Tensor::zeros(&[1, 3])));
    }

    #[test]
    fn config_errors_and_display() {
        let e = BatchNormConfig::new(0).build::<f32, 2>().err().unwrap();
        assert_eq!(e.to_string(), "BatchNorm2d: num_features must be > 0, got 0");
        let e = BatchNormConfig { momentum: Some(1.5), ..BatchNormConfig::new(3) }.build::<f32, 1>().err().unwrap();
        assert_eq!(e.to_string(), "BatchNorm1d: momentum must be in [0, 1], got 1.5");
        let bn: BatchNorm1d =
            BatchNormConfig { momentum: None, affine: false, ..BatchNormConfig::new(5) }.build().unwrap();
        assert_eq!(
            bn.to_string(),
            "BatchNorm1d(5, eps=1e-5, momentum=None, affine=false, track_running_stats=true) [0 parameters]"
        );
        let bn: BatchNorm2d = BatchNorm2d::new(16);
        assert_eq!(
            bn.to_string(),
            "BatchNorm2d(16, eps=1e-5, momentum=0.1, affine=true, track_running_stats=true) [32 parameters]"
        );
    }

    #[test]
    fn running_statistics() {
        // momentum None: the running mean is the plain average of the batch means
        let bn: BatchNorm1d<f64> = BatchNormConfig { momentum: None, ..BatchNormConfig::new(1) }.build().unwrap();
        let batch = |v: Vec<f64>| Var::constant(Tensor::from_vec(v, &[4, 1]));
        let _ = bn.forward(&batch(vec![1.0, 2.0, 3.0, 6.0])); // mean 3, unbiased var 14/3
        let _ = bn.forward(&batch(vec![0.0, 0.0, 1.0, 3.0])); // mean 1, unbiased var 2
        assert!((bn.running_mean.as_ref().unwrap().item() - 2.0).abs() < 1e-12);
        assert!((bn.running_var.as_ref().unwrap().item() - (14.0 / 3.0 + 2.0) / 2.0).abs() < 1e-12);
        assert_eq!(bn.num_batches_tracked.as_ref().unwrap().item(), 2.0);
        // eval: running statistics, buffers untouched
        let mut bn = bn;
        bn.eval();
        assert!(!bn.is_training());
        let y = bn.forward(&batch(vec![2.0, 2.0, 2.0, 2.0 + (10.0f64 / 3.0 + 1e-5).sqrt()])).value().to_vec();
        assert!(y[0].abs() < 1e-12 && (y[3] - 1.0).abs() < 1e-12);
        assert_eq!(bn.num_batches_tracked.as_ref().unwrap().item(), 2.0);
        // without running statistics, eval mode still normalises with the batch
        let mut plain: BatchNorm1d<f64> =
            BatchNormConfig { track_running_stats: false, ..BatchNormConfig::new(1) }.build().unwrap();
        plain.eval();
        let y = plain.forward(&batch(vec![1.0, 2.0, 3.0, 6.0])).value();
        assert!(y.mean(&[], false).item().abs() < 1e-12);
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        let bn: BatchNorm2d<f64> = BatchNorm2d::new_generic(2);
        for training in [true, false] {
            let r = gradcheck(
                |v| with_affine(&bn, &v[1], &v[2], training).forward(&v[0]),
                &[t(&[3, 2, 2, 2], 4), t(&[2], 5), t(&[2], 6)],
                1e-6,
                1e-7,
                1e-5,
            );
            assert!(r.is_ok(), "BatchNorm2d training={training}: {}", r.unwrap_err());
        }
        let bn1: BatchNorm1d<f64> = BatchNorm1d::new_generic(3);
        let r = gradcheck(
            |v| with_affine(&bn1, &v[1], &v[2], true).forward(&v[0]),
            &[t(&[4, 3], 7), t(&[3], 8), t(&[3], 9)],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "BatchNorm1d: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // γ and β learn a per-channel scale and shift of the normalised batch
        let bn: BatchNorm2d<f64> = BatchNorm2d::new_generic(3);
        let x = Var::constant(t(&[4, 3, 2, 2], 10));
        let (y0, _, _) = standardize(&x, &[0, 2, 3], 1e-5);
        let w = Var::constant(Tensor::from_vec(vec![2.0, -0.5, 1.5], &[1, 3, 1, 1]));
        let b = Var::constant(Tensor::from_vec(vec![0.3, 0.0, -1.0], &[1, 3, 1, 1]));
        let target = y0.mul(&w).add(&b).detach();
        let loss = descend(&bn.parameters(), 0.5, 300, || {
            let d = bn.forward(&x).sub(&target);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-10, "{loss}");
        assert_eq!(bn.num_batches_tracked.as_ref().unwrap().item(), 300.0);
    }

    fn golden_case(name: &str) {
        let Some(c) = golden::load(name) else { return };
        let kw = &c.json["constructor_kwargs"];
        let momentum = match &kw["momentum"] {
            serde_json::Value::Null if kw.get("momentum").is_some() => None,
            v => Some(v.as_f64().unwrap_or(0.1)),
        };
        let cfg = BatchNormConfig {
            eps: kw["eps"].as_f64().unwrap_or(1e-5),
            momentum,
            affine: kw["affine"].as_bool().unwrap_or(true),
            track_running_stats: kw["track_running_stats"].as_bool().unwrap_or(true),
            ..BatchNormConfig::new(int(&kw["num_features"], 0))
        };
        match c.json["module"].as_str().unwrap_or_default() {
            m if m.ends_with("BatchNorm1d") => run_golden(&c, &mut cfg.build::<f64, 1>().unwrap()),
            m if m.ends_with("BatchNorm2d") => run_golden(&c, &mut cfg.build::<f64, 2>().unwrap()),
            m => panic!("{name}: module {m}"),
        }
    }

    #[test]
    fn golden_batchnorm() {
        for name in [
            "batchnorm1d_eval",
            "batchnorm1d_train_2d",
            "batchnorm1d_train_3d",
            "batchnorm2d_eval",
            "batchnorm2d_train",
        ] {
            golden_case(&format!("layers/{name}"));
        }
    }
}
