//! `RMSNorm`: `y = x / √(mean(x²) + ε) · γ` over the trailing dims.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};
use serde_json::{json, Map, Value};

use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of an [`RMSNorm`] layer (PyTorch's defaults: `eps=None`, a learnable weight).
#[derive(Clone, Debug, PartialEq)]
pub struct RMSNormConfig {
    /// The trailing dims normalised over, e.g. `[features]`.
    pub normalized_shape: Vec<usize>,
    /// Added to the mean square; `None` takes the machine epsilon of the element type
    /// (`torch.finfo(x.dtype).eps`, as PyTorch does).
    pub eps: Option<f64>,
    /// Whether to learn the elementwise `weight`.
    pub elementwise_affine: bool,
}

impl RMSNormConfig {
    /// PyTorch's defaults over the trailing dims `normalized_shape`.
    pub fn new(normalized_shape: &[usize]) -> Self {
        RMSNormConfig { normalized_shape: normalized_shape.to_vec(), eps: None, elementwise_affine: true }
    }

    /// Builds the layer with weight 1.
    ///
    /// # Errors
    /// [`NnError::Config`] when `normalized_shape` is empty or holds a zero, or `eps` is
    /// negative or not finite.
    pub fn build<E: Float>(&self) -> Result<RMSNorm<E>, NnError> {
        if self.normalized_shape.is_empty() || self.normalized_shape.contains(&0) {
            return Err(NnError::Config(format!(
                "RMSNorm: normalized_shape must be non-empty with sizes > 0, got {:?}",
                self.normalized_shape
            )));
        }
        if let Some(eps) = self.eps {
            if !(eps >= 0.0 && eps.is_finite()) {
                return Err(NnError::Config(format!("RMSNorm: eps must be finite and >= 0, got {eps}")));
            }
        }
        let weight = self.elementwise_affine.then(|| Var::param(Tensor::zeros(&self.normalized_shape)));
        let l = RMSNorm { config: self.clone(), weight };
        l.reset_parameters();
        Ok(l)
    }
}

/// Root-mean-square layer normalisation over the trailing `normalized_shape` dims, like
/// `torch.nn.RMSNorm` (Zhang & Sennrich, 2019):
/// `y = x / √(mean(x²) + ε) · γ`, the mean taken over those dims. Unlike
/// [`LayerNorm`](crate::LayerNorm) it neither centres nor adds a bias.
///
/// # Shapes
/// - Input: `[*, normalized_shape...]`
/// - Output: the input's shape
///
/// # Parameters
/// - `weight` (γ): `normalized_shape`, ones (with `elementwise_affine`)
///
/// **Panics** in `forward` when the input's trailing dims are not `normalized_shape`.
///
/// ```
/// use kiln_nn::{Forward, RMSNorm};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let norm: RMSNorm<f64> = RMSNorm::new_generic(&[2]);
/// let x = Var::constant(Tensor::from_vec(vec![3.0, 4.0, -1.0, 1.0], &[2, 2]));
/// let y = norm.forward(&x).value().to_vec();
/// // row 0: rms = √((9 + 16) / 2); row 1: rms = 1
/// let rms = (12.5f64).sqrt();
/// assert!((y[0] - 3.0 / rms).abs() < 1e-12 && (y[3] - 1.0).abs() < 1e-12);
/// assert_eq!(norm.to_string(), "RMSNorm([2], eps=None, elementwise_affine=true) [2 parameters]");
/// ```
pub struct RMSNorm<E: Float = f32> {
    /// The configuration it was built with.
    pub config: RMSNormConfig,
    /// γ, `normalized_shape`, when `elementwise_affine`.
    pub weight: Option<Var<E>>,
}

impl RMSNorm<f32> {
    /// A layer with PyTorch's defaults over the trailing dims `normalized_shape`.
    ///
    /// **Panics** if `normalized_shape` is empty or holds a zero (use
    /// [`RMSNormConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`RMSNorm::new_generic`].
    pub fn new(normalized_shape: &[usize]) -> Self {
        Self::new_generic(normalized_shape)
    }
}

impl<E: Float> RMSNorm<E> {
    /// [`RMSNorm::new`] in any element type: `RMSNorm::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`RMSNorm::new`] does.
    pub fn new_generic(normalized_shape: &[usize]) -> Self {
        RMSNormConfig::new(normalized_shape).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Resets γ to ones, as PyTorch does.
    pub fn reset_parameters(&self) {
        if let Some(w) = &self.weight {
            init::ones_(w);
        }
    }
}

impl<E: Float> Forward<E> for RMSNorm<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let ns = &self.config.normalized_shape;
        let shape = x.shape();
        assert!(
            shape.len() >= ns.len() && shape[shape.len() - ns.len()..] == ns[..],
            "RMSNorm: input {:?} does not end in normalized_shape {ns:?}",
            shape.as_slice()
        );
        let eps = self.config.eps.map_or(E::epsilon(), E::from_f64);
        let axes: Vec<isize> = (1..=ns.len() as isize).map(|d| -d).collect();
        let y = x.mul(&x.square().mean(&axes, true).add_scalar(eps).rsqrt());
        match &self.weight {
            Some(w) => y.mul(w),
            None => y,
        }
    }
}

impl<E: Float> Module<E> for RMSNorm<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        if let Some(w) = &self.weight {
            visit_param(prefix, "weight", w, f);
        }
    }
}

impl<E: Float> fmt::Display for RMSNorm<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let eps = c.eps.map_or("None".to_string(), |e| format!("{e:?}"));
        write!(
            f,
            "RMSNorm({:?}, eps={eps}, elementwise_affine={}) [{} parameters]",
            c.normalized_shape,
            c.elementwise_affine,
            self.num_parameters()
        )
    }
}

impl<E: Float> LayerSpec for RMSNorm<E> {
    const TYPE_NAME: &'static str = "RMSNorm";
    const EXAMPLE: &'static str = r#"{"normalized_shape": [2, 3], "eps": 0.001}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"normalized_shape": c.normalized_shape, "eps": c.eps,
            "elementwise_affine": c.elementwise_affine}))
    }

    /// `normalized_shape`: an int or a list; `eps`: a number or `null` (None).
    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let shape = match a.take("normalized_shape") {
            Some(Value::Array(v)) => {
                v.iter().map(|d| a.as_usize("normalized_shape", d)).collect::<Result<Vec<_>, _>>()?
            }
            Some(v) => vec![a.as_usize("normalized_shape", &v)?],
            None => return Err(a.err("normalized_shape is required")),
        };
        let eps = match a.take_raw("eps") {
            None | Some(Value::Null) => None,
            Some(v) => Some(a.as_f64("eps", &v)?),
        };
        RMSNormConfig { eps, elementwise_affine: a.bool("elementwise_affine", true)?, ..RMSNormConfig::new(&shape) }
            .build()
    }
}

crate::register_layer!(RMSNorm<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::run_file;
    use crate::layers::testing::descend;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    #[test]
    fn matches_pytorch() {
        assert!(run_file("rms_norm.json") >= 1);
    }

    #[test]
    fn output_shape_and_unit_rms() {
        let n: RMSNorm<f64> = RMSNormConfig { eps: Some(0.0), ..RMSNormConfig::new(&[3, 4]) }.build().unwrap();
        let x = Tensor::uniform(&[2, 5, 3, 4], -3.0, 3.0, &mut Rng::new(1));
        let y = n.forward(&Var::constant(x)).value();
        assert_eq!(y.shape(), &[2, 5, 3, 4]);
        let ms = y.square().mean(&[2, 3], false);
        assert!(ms.sub_scalar(1.0).abs().max_all() < 1e-12);
        // eps None is the element type's machine epsilon (torch.finfo(dtype).eps)
        let f: RMSNorm = RMSNorm::new(&[4]);
        let y = f.forward(&Var::constant(Tensor::zeros(&[1, 4]))).value();
        assert_eq!(y.to_vec(), vec![0.0; 4]);
    }

    #[test]
    fn config_errors() {
        let e = |c: RMSNormConfig| c.build::<f32>().err().unwrap().to_string();
        assert_eq!(e(RMSNormConfig::new(&[])), "RMSNorm: normalized_shape must be non-empty with sizes > 0, got []");
        assert_eq!(
            e(RMSNormConfig { eps: Some(-1.0), ..RMSNormConfig::new(&[2]) }),
            "RMSNorm: eps must be finite and >= 0, got -1"
        );
    }

    #[test]
    #[should_panic(expected = "RMSNorm: input [2, 3] does not end in normalized_shape [4]")]
    fn wrong_trailing_dims_panic() {
        let _ = RMSNorm::<f32>::new(&[4]).forward(&Var::constant(Tensor::zeros(&[2, 3])));
    }

    #[test]
    fn tiny_overfit() {
        // the weight learns to scale unit-rms rows onto a target
        let n: RMSNorm<f64> = RMSNorm::new_generic(&[3]);
        let x = Var::constant(Tensor::uniform(&[6, 3], -1.0, 1.0, &mut Rng::new(3)));
        let target =
            RMSNorm::<f64>::new_generic(&[3]).forward(&x).value().mul(&Tensor::from_vec(vec![2.0, -1.0, 0.5], &[3]));
        let target = Var::constant(target);
        let loss = descend(&n.parameters(), 0.5, 300, || {
            let d = n.forward(&x).sub(&target);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-10, "rms_norm {loss}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        #[test]
        fn gradcheck_random_shapes(lead in 1usize..4, a in 1usize..4, b in 1usize..4, two_dims: bool, seed in 0u64..1000) {
            let ns: Vec<usize> = if two_dims { vec![a, b] } else { vec![b] };
            let mut shape = vec![lead, a, b];
            if !two_dims {
                shape.remove(1);
            }
            let mut rng = Rng::new(seed);
            let x = Tensor::uniform(&shape, -2.0, 2.0, &mut rng);
            let w = Tensor::uniform(&ns, 0.5, 1.5, &mut rng);
            let cfg = RMSNormConfig { eps: Some(1e-3), ..RMSNormConfig::new(&ns) };
            let r = gradcheck(
                |v| RMSNorm { config: cfg.clone(), weight: Some(v[1].clone()) }.forward(&v[0]),
                &[x, w],
                1e-6,
                1e-7,
                1e-5,
            );
            proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}
