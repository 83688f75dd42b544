//! `InstanceNorm1d` / `InstanceNorm2d`: each channel of each sample normalised over its
//! spatial positions, `y = (x - E[x]) / √(Var[x] + ε) · γ + β`.

use std::fmt;

use kiln_autograd::{no_grad, Var};
use kiln_tensor::{Float, Tensor};
use serde_json::{json, Map, Value};

use super::channel_norm::{
    channel_norm_output, channel_norm_state, check_channel_norm_config, describe_channel_norm, momentum_arg,
    reset_affine, reset_running_stats, visit_channel_norm,
};
use super::norm::{channel_shape, standardize};
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of an [`InstanceNorm`] layer (PyTorch's defaults: eps 1e-5, momentum 0.1, no
/// affine parameters, no running statistics). Build an [`InstanceNorm1d`] or an
/// [`InstanceNorm2d`] from it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNormConfig {
    /// Channels `C` of the input.
    pub num_features: usize,
    /// Added to the variance for numerical stability.
    pub eps: f64,
    /// Weight of a new batch in the running statistics,
    /// `running = (1 - momentum) running + momentum batch`; `None` is 0, as in PyTorch's
    /// `InstanceNorm` (the statistics then never move).
    pub momentum: Option<f64>,
    /// Whether to learn per-channel `weight` and `bias`.
    pub affine: bool,
    /// Whether to keep running statistics (used instead of the instance's in eval mode).
    pub track_running_stats: bool,
}

impl InstanceNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> Self {
        InstanceNormConfig { num_features, eps: 1e-5, momentum: Some(0.1), affine: false, track_running_stats: false }
    }

    /// Builds the layer (`InstanceNorm1d` or `InstanceNorm2d`, from the type asked for), in
    /// training mode, with weight 1, bias 0, running mean 0 and running variance 1.
    ///
    /// # Errors
    /// [`NnError::Config`] when `num_features` is zero, `eps` is negative or not finite, or
    /// `momentum` is outside `[0, 1]`.
    pub fn build<E: Float, const D: usize>(&self) -> Result<InstanceNorm<E, D>, NnError> {
        check_channel_norm_config(InstanceNorm::<E, D>::NAME, self.num_features, self.eps, self.momentum)?;
        let [weight, bias, running_mean, running_var, num_batches_tracked] =
            channel_norm_state(self.num_features, self.affine, self.track_running_stats);
        let l = InstanceNorm {
            config: self.clone(),
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            training: true,
        };
        l.reset_parameters();
        Ok(l)
    }
}

/// Instance normalisation over the `D` spatial dims of each channel of each sample, like
/// `torch.nn.InstanceNorm1d` / `InstanceNorm2d` (Ulyanov et al., 2016):
/// `y = (x - E[x]) / √(Var[x] + ε) · γ + β`, mean and biased variance per `(n, c)`.
///
/// With `track_running_stats`, training mode also folds the batch's statistics into running
/// ones (`running = (1 - momentum) running + momentum s`, with `s` the mean over the batch of
/// each instance's mean and **unbiased** variance), and eval mode normalises with them;
/// otherwise the instance's own statistics are used in both modes. As in PyTorch,
/// `num_batches_tracked` is kept (for state_dict compatibility) but never counted.
///
/// # Shapes
/// - Input: `[N, C, *spatial]` (`D` spatial dims) or unbatched `[C, *spatial]`
/// - Output: the input's shape
///
/// # Parameters
/// - `weight` (γ): `[C]`, ones (with `affine`)
/// - `bias` (β): `[C]`, zeros (with `affine`)
///
/// # Buffers (with `track_running_stats`)
/// - `running_mean`: `[C]`, zeros; `running_var`: `[C]`, ones; `num_batches_tracked`: `[]`, 0
///
/// **Panics** in `forward` when the input has neither `D + 1` nor `D + 2` dims, when its
/// channels differ from `num_features` with `affine` or `track_running_stats`, or when it has a
/// single spatial position and the instance's statistics are used.
///
/// ```
/// use kiln_nn::{Forward, InstanceNorm2d};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let norm: InstanceNorm2d<f64> = InstanceNorm2d::new_generic(3);
/// let x = Var::constant(Tensor::uniform(&[2, 3, 4, 5], -2.0, 5.0, &mut Rng::new(0)));
/// let y = norm.forward(&x).value();
/// // every (sample, channel) plane has mean 0 and variance 1 (up to eps)
/// assert!(y.mean(&[2, 3], false).abs().max_all() < 1e-12);
/// assert!((y.var(&[2, 3], 0, false).get(&[1, 2]) - 1.0).abs() < 1e-3);
/// assert_eq!(norm.to_string(), "InstanceNorm2d(3, eps=1e-5, momentum=0.1, affine=false, track_running_stats=false) [0 parameters]");
/// ```
pub struct InstanceNorm<E: Float = f32, const D: usize = 2> {
    /// The configuration it was built with.
    pub config: InstanceNormConfig,
    /// γ, `[C]`, when `affine`.
    pub weight: Option<Var<E>>,
    /// β, `[C]`, when `affine`.
    pub bias: Option<Var<E>>,
    /// `[C]`, when tracking running statistics.
    pub running_mean: Option<Var<E>>,
    /// `[C]` (unbiased estimates), when tracking running statistics.
    pub running_var: Option<Var<E>>,
    /// `[]`, kept for PyTorch's state_dict keys, when tracking running statistics.
    pub num_batches_tracked: Option<Var<E>>,
    training: bool,
}

/// Instance normalisation of `[N, C, L]` or unbatched `[C, L]`, like `torch.nn.InstanceNorm1d`.
/// See [`InstanceNorm`].
pub type InstanceNorm1d<E = f32> = InstanceNorm<E, 1>;

/// Instance normalisation of `[N, C, H, W]` or unbatched `[C, H, W]`, like
/// `torch.nn.InstanceNorm2d`. See [`InstanceNorm`].
pub type InstanceNorm2d<E = f32> = InstanceNorm<E, 2>;

impl<const D: usize> InstanceNorm<f32, D> {
    /// A layer with PyTorch's defaults for `num_features` channels, in training mode.
    ///
    /// **Panics** if `num_features` is zero (use [`InstanceNormConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`InstanceNorm::new_generic`].
    pub fn new(num_features: usize) -> Self {
        Self::new_generic(num_features)
    }
}

impl<E: Float, const D: usize> InstanceNorm<E, D> {
    /// `InstanceNorm1d` or `InstanceNorm2d`, for messages and `Display`.
    pub const NAME: &'static str = match D {
        1 => "InstanceNorm1d",
        2 => "InstanceNorm2d",
        3 => "InstanceNorm3d",
        _ => "InstanceNorm",
    };

    /// [`InstanceNorm::new`] in any element type: `InstanceNorm::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`InstanceNorm::new`] does.
    pub fn new_generic(num_features: usize) -> Self {
        InstanceNormConfig::new(num_features).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Resets the running statistics (mean 0, variance 1), γ to ones and β to zeros.
    pub fn reset_parameters(&self) {
        reset_running_stats([&self.running_mean, &self.running_var, &self.num_batches_tracked]);
        reset_affine([&self.weight, &self.bias]);
    }

    /// Its state in [`visit_channel_norm`]'s order.
    fn state(&self) -> [&Option<Var<E>>; 5] {
        [&self.weight, &self.bias, &self.running_mean, &self.running_var, &self.num_batches_tracked]
    }

    /// Folds the per-instance means and biased variances (`[N, C, 1..]`, over `count`
    /// positions each) into the running statistics.
    fn update_running_stats(&self, mean: &Tensor<E>, var: &Tensor<E>, count: usize) {
        let (Some(rm), Some(rv)) = (&self.running_mean, &self.running_var) else { return };
        let c = self.config.num_features;
        let n = mean.shape()[0];
        let factor = self.config.momentum.unwrap_or(0.0);
        let (keep, new) = (E::from_f64(1.0 - factor), E::from_f64(factor));
        let batch_mean = mean.reshape(&[n, c]).mean(&[0], false);
        let unbiased = var.reshape(&[n, c]).mul_scalar(E::from_f64(count as f64 / (count - 1) as f64));
        let batch_var = unbiased.mean(&[0], false);
        no_grad(|| {
            rm.update_value(|r| *r = r.mul_scalar(keep).add(&batch_mean.mul_scalar(new)));
            rv.update_value(|r| *r = r.mul_scalar(keep).add(&batch_var.mul_scalar(new)));
        });
    }

    fn forward_batched(&self, x: &Var<E>) -> Var<E> {
        let shape = x.shape();
        let c = shape[1];
        let cs = channel_shape(c, shape.len());
        let eps = self.config.eps;
        let use_input_stats = self.training || self.running_mean.is_none();
        let normalized = use_input_stats.then(|| {
            let count: usize = shape[2..].iter().product();
            assert!(
                count > 1,
                "{}: expected more than 1 spatial element when training, got input {:?}",
                Self::NAME,
                shape.as_slice()
            );
            let axes: Vec<isize> = (2..shape.len() as isize).collect();
            let (y, mean, var) = standardize(x, &axes, eps);
            if self.training {
                self.update_running_stats(&mean.value(), &var.value(), count);
            }
            y
        });
        channel_norm_output(normalized, x, self.state(), eps, &cs)
    }
}

impl<E: Float, const D: usize> Forward<E> for InstanceNorm<E, D> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let shape = x.shape();
        let cfg = &self.config;
        let spatial = if D <= 3 { ["D", "H", "W"][3 - D..].join(", ") } else { format!("{D} dims") };
        assert!(
            shape.len() == D + 1 || shape.len() == D + 2,
            "{}: expected input [N, C, {spatial}] or [C, {spatial}], got {:?}",
            Self::NAME,
            shape.as_slice()
        );
        let unbatched = shape.len() == D + 1;
        let c = shape[usize::from(!unbatched)];
        assert!(
            c == cfg.num_features || !(cfg.affine || cfg.track_running_stats),
            "{}: expected {} channels, got input {:?}",
            Self::NAME,
            cfg.num_features,
            shape.as_slice()
        );
        if unbatched {
            self.forward_batched(&x.unsqueeze(0)).squeeze_dim(0)
        } else {
            self.forward_batched(x)
        }
    }
}

impl<E: Float, const D: usize> Module<E> for InstanceNorm<E, D> {
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

impl<E: Float, const D: usize> fmt::Display for InstanceNorm<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let head =
            describe_channel_norm(Self::NAME, c.num_features, c.eps, c.momentum, c.affine, c.track_running_stats);
        write!(f, "{head}) [{} parameters]", self.num_parameters())
    }
}

impl<E: Float, const D: usize> LayerSpec for InstanceNorm<E, D> {
    const TYPE_NAME: &'static str = if D == 1 { "InstanceNorm1d" } else { "InstanceNorm2d" };
    const EXAMPLE: &'static str = r#"{"num_features": 3, "eps": 0.001, "affine": true, "track_running_stats": true}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"num_features": c.num_features, "eps": c.eps, "momentum": c.momentum, "affine": c.affine,
            "track_running_stats": c.track_running_stats}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let momentum = momentum_arg(a)?;
        InstanceNormConfig {
            eps: a.f64("eps", 1e-5)?,
            momentum,
            affine: a.bool("affine", false)?,
            track_running_stats: a.bool("track_running_stats", false)?,
            ..InstanceNormConfig::new(a.usize("num_features", None)?)
        }
        .build()
    }
}

crate::register_layer!(InstanceNorm<E, 1>);
crate::register_layer!(InstanceNorm<E, 2>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::run_file;
    use crate::layers::testing::descend;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn matches_pytorch() {
        assert!(run_file("instance_norm1d.json") >= 1);
        assert!(run_file("instance_norm2d.json") >= 1);
    }

    #[test]
    fn output_shapes_and_modes() {
        let n: InstanceNorm1d<f64> =
            InstanceNormConfig { track_running_stats: true, ..InstanceNormConfig::new(3) }.build().unwrap();
        assert_eq!(n.forward(&Var::constant(t(&[2, 3, 5], 1))).shape().as_slice(), &[2, 3, 5]);
        assert_eq!(n.forward(&Var::constant(t(&[3, 5], 2))).shape().as_slice(), &[3, 5]);
        // running statistics moved in training mode only
        let before = n.running_mean.as_ref().unwrap().value();
        assert_ne!(before.to_vec(), vec![0.0; 3]);
        let mut n = n;
        n.set_training(false);
        let _ = n.forward(&Var::constant(t(&[2, 3, 5], 3)));
        assert_eq!(n.running_mean.as_ref().unwrap().value(), before);
        assert_eq!(n.named_buffers().len(), 3);
        assert_eq!(
            n.to_string(),
            "InstanceNorm1d(3, eps=1e-5, momentum=0.1, affine=false, track_running_stats=true) [0 parameters]"
        );
    }

    #[test]
    #[should_panic(
        expected = "InstanceNorm2d: expected more than 1 spatial element when training, got input [2, 3, 1, 1]"
    )]
    fn a_single_position_panics() {
        let _ = InstanceNorm2d::<f64>::new_generic(3).forward(&Var::constant(t(&[2, 3, 1, 1], 0)));
    }

    #[test]
    #[should_panic(expected = "InstanceNorm2d: expected 4 channels, got input [2, 3, 2, 2]")]
    fn affine_needs_matching_channels() {
        let n: InstanceNorm2d<f64> = InstanceNormConfig { affine: true, ..InstanceNormConfig::new(4) }.build().unwrap();
        let _ = n.forward(&Var::constant(t(&[2, 3, 2, 2], 0)));
    }

    #[test]
    fn config_errors() {
        let e = InstanceNormConfig { momentum: Some(2.0), ..InstanceNormConfig::new(2) }.build::<f32, 2>();
        assert_eq!(e.err().unwrap().to_string(), "InstanceNorm2d: momentum must be in [0, 1], got 2");
    }

    #[test]
    fn tiny_overfit() {
        // γ and β learn to map normalised planes onto a per-channel scale and shift
        let n: InstanceNorm2d<f64> = InstanceNormConfig { affine: true, ..InstanceNormConfig::new(2) }.build().unwrap();
        let x = Var::constant(t(&[3, 2, 3, 3], 4));
        let target = InstanceNorm2d::<f64>::new_generic(2)
            .forward(&x)
            .value()
            .mul(&Tensor::from_vec(vec![2.0, -0.5], &[1, 2, 1, 1]))
            .add(&Tensor::from_vec(vec![0.3, 1.0], &[1, 2, 1, 1]));
        let target = Var::constant(target);
        let loss = descend(&n.parameters(), 0.5, 300, || n.forward(&x).sub(&target).square().mean(&[], false));
        assert!(loss < 1e-10, "instance_norm {loss}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        #[test]
        fn gradcheck_random_shapes(n in 1usize..3, c in 1usize..3, h in 1usize..4, w in 2usize..4, two_d: bool,
                                   track: bool, eval: bool, seed in 0u64..1000) {
            let cfg = InstanceNormConfig { affine: true, track_running_stats: track, ..InstanceNormConfig::new(c) };
            let mut rng = Rng::new(seed);
            let shape: Vec<usize> = if two_d { vec![n, c, h, w] } else { vec![n, c, w] };
            let x = Tensor::uniform(&shape, -2.0, 2.0, &mut rng);
            let (g, b) = (Tensor::uniform(&[c], 0.5, 1.5, &mut rng), Tensor::uniform(&[c], -0.5, 0.5, &mut rng));
            let run = |v: &[Var<f64>]| -> Var<f64> {
                macro_rules! go {
                    ($d:literal) => {{
                        let mut l: InstanceNorm<f64, $d> = cfg.build().unwrap();
                        l.weight = Some(v[1].clone());
                        l.bias = Some(v[2].clone());
                        l.set_training(!eval);
                        l.forward(&v[0])
                    }};
                }
                if two_d { go!(2) } else { go!(1) }
            };
            let r = gradcheck(run, &[x, g, b], 1e-6, 1e-7, 1e-5);
            proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}
