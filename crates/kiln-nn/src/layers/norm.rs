//! Per-sample normalisation: `LayerNorm` (over the trailing dims) and `GroupNorm` (over groups
//! of channels), `y = (x - E[x]) / √(Var[x] + ε) · γ + β`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};

use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

/// `(x - mean) / sqrt(var + eps)` over `axes`, with the biased variance; also returns the
/// mean and the variance (kept dims) for callers that track statistics.
pub(crate) fn standardize<E: Float>(x: &Var<E>, axes: &[isize], eps: f64) -> (Var<E>, Var<E>, Var<E>) {
    let mean = x.mean(axes, true);
    let var = x.var(axes, 0, true);
    let y = x.sub(&mean).mul(&var.add_scalar(E::from_f64(eps)).rsqrt());
    (y, mean, var)
}

/// `[1, c, 1, ..]` of rank `ndim`: how a per-channel vector broadcasts over `[N, C, *]`.
pub(crate) fn channel_shape(c: usize, ndim: usize) -> Vec<usize> {
    let mut s = vec![1; ndim];
    s[1] = c;
    s
}

fn check_eps(layer: &str, eps: f64) -> Result<(), NnError> {
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(NnError::Config(format!("{layer}: eps must be finite and >= 0, got {eps}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// Configuration of a [`LayerNorm`] layer (PyTorch's defaults: eps 1e-5, learnable weight and
/// bias).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormConfig {
    /// The trailing dims normalised over, e.g. `[features]` or `[seq, features]`.
    pub normalized_shape: Vec<usize>,
    /// Added to the variance for numerical stability.
    pub eps: f64,
    /// Whether to learn the elementwise `weight` (and `bias`).
    pub elementwise_affine: bool,
    /// Whether to learn the `bias` (only with `elementwise_affine`).
    pub bias: bool,
}

impl LayerNormConfig {
    /// PyTorch's defaults over the trailing dims `normalized_shape`.
    pub fn new(normalized_shape: &[usize]) -> Self {
        LayerNormConfig { normalized_shape: normalized_shape.to_vec(), eps: 1e-5, elementwise_affine: true, bias: true }
    }

    /// Builds the layer with weight 1 and bias 0.
    ///
    /// # Errors
    /// [`NnError::Config`] when `normalized_shape` is empty or holds a zero, or `eps` is
    /// negative or not finite.
    pub fn build<E: Float>(&self) -> Result<LayerNorm<E>, NnError> {
        if self.normalized_shape.is_empty() || self.normalized_shape.contains(&0) {
            return Err(NnError::Config(format!(
                "LayerNorm: normalized_shape must be non-empty with sizes > 0, got {:?}",
                self.normalized_shape
            )));
        }
        check_eps("LayerNorm", self.eps)?;
        let affine = self.elementwise_affine;
        let weight = affine.then(|| Var::param(Tensor::zeros(&self.normalized_shape)));
        let bias = (affine && self.bias).then(|| Var::param(Tensor::zeros(&self.normalized_shape)));
        let l = LayerNorm { config: self.clone(), weight, bias };
        l.reset_parameters();
        Ok(l)
    }
}

/// Layer normalisation over the trailing `normalized_shape` dims of each sample, like
/// `torch.nn.LayerNorm` (Ba et al., 2016):
/// `y = (x - E[x]) / √(Var[x] + ε) · γ + β`, mean and biased variance taken over those dims.
///
/// # Shapes
/// - Input: `[*, normalized_shape...]`
/// - Output: the input's shape
///
/// # Parameters
/// - `weight` (γ): `normalized_shape`, ones (with `elementwise_affine`)
/// - `bias` (β): `normalized_shape`, zeros (with `elementwise_affine` and `bias`)
///
/// **Panics** in `forward` when the input's trailing dims are not `normalized_shape`.
///
/// ```
/// use kiln_nn::{Forward, LayerNorm};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let ln: LayerNorm<f64> = LayerNorm::new_generic(&[4]);
/// let x = Var::constant(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, -1.0, -1.0, 1.0, 1.0], &[2, 4]));
/// let y = ln.forward(&x).value();
/// // each row now has mean 0 and (biased) variance 1, up to eps
/// assert!(y.mean(&[1], false).to_vec().iter().all(|m| m.abs() < 1e-12));
/// assert!((y.var(&[1], 0, false).get(&[1]) - 1.0).abs() < 1e-4);
/// assert_eq!(ln.to_string(), "LayerNorm([4], eps=1e-5, elementwise_affine=true) [8 parameters]");
/// ```
pub struct LayerNorm<E: Float = f32> {
    /// The configuration it was built with.
    pub config: LayerNormConfig,
    /// γ, `normalized_shape`, when `elementwise_affine`.
    pub weight: Option<Var<E>>,
    /// β, `normalized_shape`, when `elementwise_affine` and `bias`.
    pub bias: Option<Var<E>>,
}

impl LayerNorm<f32> {
    /// A layer with PyTorch's defaults over the trailing dims `normalized_shape`.
    ///
    /// **Panics** if `normalized_shape` is empty or holds a zero (use
    /// [`LayerNormConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`LayerNorm::new_generic`].
    pub fn new(normalized_shape: &[usize]) -> Self {
        Self::new_generic(normalized_shape)
    }
}

impl<E: Float> LayerNorm<E> {
    /// [`LayerNorm::new`] in any element type: `LayerNorm::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`LayerNorm::new`] does.
    pub fn new_generic(normalized_shape: &[usize]) -> Self {
        LayerNormConfig::new(normalized_shape).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Resets γ to ones and β to zeros, as PyTorch does.
    pub fn reset_parameters(&self) {
        if let Some(w) = &self.weight {
            init::ones_(w);
        }
        if let Some(b) = &self.bias {
            init::zeros_(b);
        }
    }
}

impl<E: Float> Forward<E> for LayerNorm<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let ns = &self.config.normalized_shape;
        let shape = x.shape();
        assert!(
            shape.len() >= ns.len() && shape[shape.len() - ns.len()..] == ns[..],
            "LayerNorm: input {:?} does not end in normalized_shape {ns:?}",
            shape.as_slice()
        );
        let mut y = x.standardize_trailing(ns.len(), self.config.eps);
        if let Some(w) = &self.weight {
            y = y.mul(w);
        }
        if let Some(b) = &self.bias {
            y = y.add(b);
        }
        y
    }
}

impl<E: Float> Module<E> for LayerNorm<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        if let Some(w) = &self.weight {
            visit_param(prefix, "weight", w, f);
        }
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

impl<E: Float> fmt::Display for LayerNorm<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(f, "LayerNorm({:?}, eps={:?}, elementwise_affine={}", c.normalized_shape, c.eps, c.elementwise_affine)?;
        if c.elementwise_affine && !c.bias {
            write!(f, ", bias=false")?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm

/// Configuration of a [`GroupNorm`] layer (PyTorch's defaults: eps 1e-5, learnable per-channel
/// weight and bias).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNormConfig {
    /// Groups the channels are split into; divides `num_channels`.
    pub num_groups: usize,
    /// Channels `C` of the input.
    pub num_channels: usize,
    /// Added to the variance for numerical stability.
    pub eps: f64,
    /// Whether to learn per-channel `weight` and `bias`.
    pub affine: bool,
}

impl GroupNormConfig {
    /// PyTorch's defaults.
    pub fn new(num_groups: usize, num_channels: usize) -> Self {
        GroupNormConfig { num_groups, num_channels, eps: 1e-5, affine: true }
    }

    /// Builds the layer with weight 1 and bias 0.
    ///
    /// # Errors
    /// [`NnError::Config`] when a count is zero, `num_groups` does not divide `num_channels`,
    /// or `eps` is negative or not finite.
    pub fn build<E: Float>(&self) -> Result<GroupNorm<E>, NnError> {
        for (what, v) in [("num_groups", self.num_groups), ("num_channels", self.num_channels)] {
            if v == 0 {
                return Err(NnError::Config(format!("GroupNorm: {what} must be > 0, got 0")));
            }
        }
        if !self.num_channels.is_multiple_of(self.num_groups) {
            return Err(NnError::Config(format!(
                "GroupNorm: num_channels must be divisible by num_groups, got num_channels={}, num_groups={}",
                self.num_channels, self.num_groups
            )));
        }
        check_eps("GroupNorm", self.eps)?;
        let weight = self.affine.then(|| Var::param(Tensor::zeros(&[self.num_channels])));
        let bias = self.affine.then(|| Var::param(Tensor::zeros(&[self.num_channels])));
        let l = GroupNorm { config: self.clone(), weight, bias };
        l.reset_parameters();
        Ok(l)
    }
}

/// Group normalisation, like `torch.nn.GroupNorm` (Wu & He, 2018): the channels of each sample
/// are split into `num_groups` groups and each group is normalised over its channels and all
/// spatial positions, `y = (x - E[x]) / √(Var[x] + ε) · γ + β` (biased variance), with γ and
/// β per channel. Independent of the batch size; `num_groups = 1` is a layer norm over
/// `[C, *]`, `num_groups = C` an instance norm.
///
/// # Shapes
/// - Input: `[N, C, *]`
/// - Output: the input's shape
///
/// # Parameters
/// - `weight` (γ): `[num_channels]`, ones (with `affine`)
/// - `bias` (β): `[num_channels]`, zeros (with `affine`)
///
/// **Panics** in `forward` when the input is not `[N, num_channels, *]`.
///
/// ```
/// use kiln_nn::{Forward, GroupNorm};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let gn: GroupNorm<f64> = GroupNorm::new_generic(2, 4);
/// let x = Var::constant(Tensor::uniform(&[3, 4, 5, 5], -2.0, 5.0, &mut Rng::new(0)));
/// let y = gn.forward(&x).value();
/// assert_eq!(y.shape(), &[3, 4, 5, 5]);
/// // channels 0-1 of sample 0 form one group: mean 0
/// assert!(y.narrow(0, 0, 1).narrow(1, 0, 2).mean(&[], false).item().abs() < 1e-12);
/// assert_eq!(gn.to_string(), "GroupNorm(2, 4, eps=1e-5, affine=true) [8 parameters]");
/// ```
pub struct GroupNorm<E: Float = f32> {
    /// The configuration it was built with.
    pub config: GroupNormConfig,
    /// γ, `[num_channels]`, when `affine`.
    pub weight: Option<Var<E>>,
    /// β, `[num_channels]`, when `affine`.
    pub bias: Option<Var<E>>,
}

impl GroupNorm<f32> {
    /// A layer with PyTorch's defaults.
    ///
    /// **Panics** if a count is zero or `num_groups` does not divide `num_channels` (use
    /// [`GroupNormConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`GroupNorm::new_generic`].
    pub fn new(num_groups: usize, num_channels: usize) -> Self {
        Self::new_generic(num_groups, num_channels)
    }
}

impl<E: Float> GroupNorm<E> {
    /// [`GroupNorm::new`] in any element type: `GroupNorm::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`GroupNorm::new`] does.
    pub fn new_generic(num_groups: usize, num_channels: usize) -> Self {
        GroupNormConfig::new(num_groups, num_channels).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Resets γ to ones and β to zeros, as PyTorch does.
    pub fn reset_parameters(&self) {
        if let Some(w) = &self.weight {
            init::ones_(w);
        }
        if let Some(b) = &self.bias {
            init::zeros_(b);
        }
    }
}

impl<E: Float> Forward<E> for GroupNorm<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let (g, c) = (self.config.num_groups, self.config.num_channels);
        let shape = x.shape();
        assert!(shape.len() >= 2 && shape[1] == c, "GroupNorm: expected input [N, {c}, *], got {:?}", shape.as_slice());
        let per_group = shape[1..].iter().product::<usize>() / g;
        let y = x.reshape(&[shape[0], g, per_group]).standardize_trailing(1, self.config.eps);
        let mut y = y.reshape(&shape);
        let cs = channel_shape(c, shape.len());
        if let Some(w) = &self.weight {
            y = y.mul(&w.reshape(&cs));
        }
        if let Some(b) = &self.bias {
            y = y.add(&b.reshape(&cs));
        }
        y
    }
}

impl<E: Float> Module<E> for GroupNorm<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        if let Some(w) = &self.weight {
            visit_param(prefix, "weight", w, f);
        }
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

impl<E: Float> fmt::Display for GroupNorm<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "GroupNorm({}, {}, eps={:?}, affine={}) [{} parameters]",
            c.num_groups,
            c.num_channels,
            c.eps,
            c.affine,
            self.num_parameters()
        )
    }
}

impl<E: Float> LayerSpec for LayerNorm<E> {
    const TYPE_NAME: &'static str = "LayerNorm";
    const EXAMPLE: &'static str = r#"{"normalized_shape": [2, 3], "eps": 0.01, "bias": false}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"normalized_shape": c.normalized_shape, "eps": c.eps,
            "elementwise_affine": c.elementwise_affine, "bias": c.bias}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let shape = match a.take("normalized_shape") {
            Some(Value::Array(v)) => {
                v.iter().map(|d| a.as_usize("normalized_shape", d)).collect::<Result<Vec<_>, _>>()?
            }
            Some(v) => vec![a.as_usize("normalized_shape", &v)?],
            None => return Err(a.err("normalized_shape is required")),
        };
        LayerNormConfig {
            eps: a.f64("eps", 1e-5)?,
            elementwise_affine: a.bool("elementwise_affine", true)?,
            bias: a.bool("bias", true)?,
            ..LayerNormConfig::new(&shape)
        }
        .build()
    }
}

crate::register_layer!(LayerNorm<E>);

impl<E: Float> LayerSpec for GroupNorm<E> {
    const TYPE_NAME: &'static str = "GroupNorm";
    const EXAMPLE: &'static str = r#"{"num_groups": 2, "num_channels": 4, "eps": 0.001}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"num_groups": c.num_groups, "num_channels": c.num_channels, "eps": c.eps, "affine": c.affine}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let (g, c) = (a.usize("num_groups", None)?, a.usize("num_channels", None)?);
        GroupNormConfig { eps: a.f64("eps", 1e-5)?, affine: a.bool("affine", true)?, ..GroupNormConfig::new(g, c) }
            .build()
    }
}

crate::register_layer!(GroupNorm<E>);

#[cfg(test)]
mod tests {
    use super::super::conv::testing::{descend, int, run_golden};
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn output_shapes_and_statistics() {
        let ln: LayerNorm<f64> = LayerNorm::new_generic(&[3, 4]);
        let y = ln.forward(&Var::constant(t(&[2, 5, 3, 4], 1))).value();
        assert_eq!(y.shape(), &[2, 5, 3, 4]);
        let m = y.mean(&[2, 3], false);
        assert!(m.abs().max_all() < 1e-12);
        let v = y.var(&[2, 3], 0, false);
        assert!(v.sub_scalar(1.0).abs().max_all() < 1e-3);
        let gn: GroupNorm<f64> = GroupNorm::new_generic(3, 6);
        let x = t(&[2, 6, 4], 2);
        let y = gn.forward(&Var::constant(x.clone())).value();
        assert_eq!(y.shape(), &[2, 6, 4]);
        let grouped = y.reshape(&[2, 3, 8]);
        assert!(grouped.mean(&[2], false).abs().max_all() < 1e-12);
        // num_groups = 1 is a layer norm over [C, *]
        let g1: GroupNorm<f64> = GroupNorm::new_generic(1, 6);
        let l1: LayerNorm<f64> = LayerNorm::new_generic(&[6, 4]);
        let (a, b) = (g1.forward(&Var::constant(x.clone())).value(), l1.forward(&Var::constant(x)).value());
        assert!(a.sub(&b).abs().max_all() < 1e-12);
    }

    #[test]
    fn config_errors_and_display() {
        assert_eq!(
            GroupNormConfig::new(4, 6).build::<f32>().err().unwrap().to_string(),
            "GroupNorm: num_channels must be divisible by num_groups, got num_channels=6, num_groups=4"
        );
        assert_eq!(
            GroupNormConfig::new(0, 6).build::<f32>().err().unwrap().to_string(),
            "GroupNorm: num_groups must be > 0, got 0"
        );
        assert_eq!(
            LayerNormConfig::new(&[]).build::<f32>().err().unwrap().to_string(),
            "LayerNorm: normalized_shape must be non-empty with sizes > 0, got []"
        );
        assert_eq!(
            LayerNormConfig { eps: -1.0, ..LayerNormConfig::new(&[2]) }.build::<f32>().err().unwrap().to_string(),
            "LayerNorm: eps must be finite and >= 0, got -1"
        );
        let ln: LayerNorm = LayerNorm::new(&[4, 6]);
        assert_eq!(ln.to_string(), "LayerNorm([4, 6], eps=1e-5, elementwise_affine=true) [48 parameters]");
        let nb: LayerNorm = LayerNormConfig { bias: false, ..LayerNormConfig::new(&[5]) }.build().unwrap();
        assert_eq!(nb.to_string(), "LayerNorm([5], eps=1e-5, elementwise_affine=true, bias=false) [5 parameters]");
        let na: LayerNorm =
            LayerNormConfig { elementwise_affine: false, ..LayerNormConfig::new(&[5]) }.build().unwrap();
        assert_eq!(na.to_string(), "LayerNorm([5], eps=1e-5, elementwise_affine=false) [0 parameters]");
        let gn: GroupNorm = GroupNormConfig { eps: 1e-3, affine: false, ..GroupNormConfig::new(2, 4) }.build().unwrap();
        assert_eq!(gn.to_string(), "GroupNorm(2, 4, eps=0.001, affine=false) [0 parameters]");
        assert_eq!(GroupNorm::<f32>::new(3, 6).named_parameters().len(), 2);
    }

    #[test]
    #[should_panic(expected = "LayerNorm: input [2, 3] does not end in normalized_shape [4]")]
    fn layer_norm_rejects_other_trailing_dims() {
        let ln: LayerNorm = LayerNorm::new(&[4]);
        let _ = ln.forward(&Var::constant(Tensor::zeros(&[2, 3])));
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        let ln: LayerNorm<f64> = LayerNorm::new_generic(&[2, 3]);
        let r = gradcheck(
            |v| {
                LayerNorm { config: ln.config.clone(), weight: Some(v[1].clone()), bias: Some(v[2].clone()) }
                    .forward(&v[0])
            },
            &[t(&[2, 2, 3], 3), t(&[2, 3], 4), t(&[2, 3], 5)],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "LayerNorm: {}", r.unwrap_err());
        let gn: GroupNorm<f64> = GroupNorm::new_generic(2, 4);
        let r = gradcheck(
            |v| {
                GroupNorm { config: gn.config.clone(), weight: Some(v[1].clone()), bias: Some(v[2].clone()) }
                    .forward(&v[0])
            },
            &[t(&[2, 4, 3], 6), t(&[4], 7), t(&[4], 8)],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "GroupNorm: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // γ and β learn to put every normalised row at mean 0.5 and spread 2
        let x = Var::constant(t(&[4, 6], 9));
        let ln: LayerNorm<f64> = LayerNorm::new_generic(&[6]);
        let target = standardize(&x, &[1], 1e-5).0.mul_scalar(2.0).add_scalar(0.5).detach();
        let loss = descend(&ln.parameters(), 0.5, 300, || {
            let d = ln.forward(&x).sub(&target);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-10, "LayerNorm {loss}");
        let gn: GroupNorm<f64> = GroupNorm::new_generic(2, 4);
        let x = Var::constant(t(&[3, 4, 5], 10));
        let w = Var::constant(Tensor::from_vec(vec![2.0, -1.0, 0.5, 3.0], &[1, 4, 1]));
        let b = Var::constant(Tensor::from_vec(vec![0.1, 0.2, -0.3, 0.0], &[1, 4, 1]));
        let target = gn.forward(&x).mul(&w).add(&b).detach();
        let loss = descend(&gn.parameters(), 0.5, 300, || {
            let d = gn.forward(&x).sub(&target);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-10, "GroupNorm {loss}");
    }

    #[test]
    fn golden_norms() {
        for name in ["layernorm_last1", "layernorm_last2"] {
            let Some(c) = golden::load(&format!("layers/{name}")) else { return };
            let kw = &c.json["constructor_kwargs"];
            let ns: Vec<usize> = match &kw["normalized_shape"] {
                serde_json::Value::Array(a) => a.iter().map(|v| v.as_u64().unwrap() as usize).collect(),
                v => vec![int(v, 0)],
            };
            let mut l: LayerNorm<f64> = LayerNormConfig {
                eps: kw["eps"].as_f64().unwrap_or(1e-5),
                elementwise_affine: kw["elementwise_affine"].as_bool().unwrap_or(true),
                bias: kw["bias"].as_bool().unwrap_or(true),
                ..LayerNormConfig::new(&ns)
            }
            .build()
            .unwrap();
            run_golden(&c, &mut l);
        }
        if let Some(c) = golden::load("layers/groupnorm") {
            let kw = &c.json["constructor_kwargs"];
            let mut l: GroupNorm<f64> = GroupNormConfig {
                eps: kw["eps"].as_f64().unwrap_or(1e-5),
                affine: kw["affine"].as_bool().unwrap_or(true),
                ..GroupNormConfig::new(int(&kw["num_groups"], 0), int(&kw["num_channels"], 0))
            }
            .build()
            .unwrap();
            run_golden(&c, &mut l);
        }
    }
}
