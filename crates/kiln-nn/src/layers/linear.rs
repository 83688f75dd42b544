//! `Linear`: y = x Wᵀ + b.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};

use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

/// Configuration of a [`Linear`] layer (PyTorch's defaults: with bias).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearConfig {
    /// Size of each input sample.
    pub in_features: usize,
    /// Size of each output sample.
    pub out_features: usize,
    /// Whether to learn an additive bias.
    pub bias: bool,
}

impl LinearConfig {
    /// A configuration with a bias.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        LinearConfig { in_features, out_features, bias: true }
    }

    /// Builds the layer, initialised from the init generator (see [`crate::init::manual_seed`]).
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero.
    pub fn build<E: Float>(&self) -> Result<Linear<E>, NnError> {
        if self.in_features == 0 {
            return Err(NnError::Config(format!("Linear: in_features must be > 0, got {}", self.in_features)));
        }
        if self.out_features == 0 {
            return Err(NnError::Config(format!("Linear: out_features must be > 0, got {}", self.out_features)));
        }
        let weight = Var::param(Tensor::zeros(&[self.out_features, self.in_features]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_features])));
        let l = Linear { config: self.clone(), weight, bias };
        l.reset_parameters();
        Ok(l)
    }
}

/// Applies an affine map to the last dimension: `y = x Wᵀ + b`, like `torch.nn.Linear`.
///
/// # Shapes
/// - Input: `[*, in_features]`
/// - Output: `[*, out_features]`
///
/// # Parameters
/// - `weight`: `[out_features, in_features]`, U(-1/√in_features, 1/√in_features)
///   (`kaiming_uniform_` with a = √5)
/// - `bias`: `[out_features]`, U(-1/√in_features, 1/√in_features)
///
/// ```
/// use kiln_nn::{Forward, Linear};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let layer = Linear::new(784, 10);
/// let x = Var::constant(Tensor::<f32>::zeros(&[32, 784]));
/// let y = layer.forward(&x);
/// assert_eq!(y.shape().as_slice(), &[32, 10]);
/// assert_eq!(layer.to_string(), "Linear(in_features=784, out_features=10, bias=true) [7850 parameters]");
/// ```
pub struct Linear<E: Float = f32> {
    /// The configuration it was built with.
    pub config: LinearConfig,
    /// `[out_features, in_features]`.
    pub weight: Var<E>,
    /// `[out_features]`, when configured.
    pub bias: Option<Var<E>>,
}

impl Linear<f32> {
    /// A layer with a bias, initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`LinearConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`Linear::new_generic`].
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self::new_generic(in_features, out_features)
    }
}

impl<E: Float> Linear<E> {
    /// [`Linear::new`] in any element type: `Linear::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`Linear::new`] does.
    pub fn new_generic(in_features: usize, out_features: usize) -> Self {
        LinearConfig::new(in_features, out_features).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Re-draws the parameters with PyTorch's default init.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::default_weight_bias(&self.weight, self.bias.as_ref(), rng));
    }
}

impl<E: Float> Forward<E> for Linear<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

impl<E: Float> Module<E> for Linear<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

impl<E: Float> fmt::Display for Linear<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Linear(in_features={}, out_features={}, bias={}) [{} parameters]",
            self.config.in_features,
            self.config.out_features,
            self.config.bias,
            self.num_parameters()
        )
    }
}

impl<E: Float> LayerSpec for Linear<E> {
    const TYPE_NAME: &'static str = "Linear";
    const EXAMPLE: &'static str = r#"{"in_features": 3, "out_features": 2, "bias": false}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"in_features": c.in_features, "out_features": c.out_features, "bias": c.bias}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let (i, o) = (a.usize("in_features", None)?, a.usize("out_features", None)?);
        LinearConfig { bias: a.bool("bias", true)?, ..LinearConfig::new(i, o) }.build()
    }
}

crate::register_layer!(Linear<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;

    #[test]
    fn output_shape_and_config_errors() {
        let l: Linear = Linear::new(3, 4);
        let y = l.forward(&Var::constant(Tensor::ones(&[2, 5, 3])));
        assert_eq!(y.shape().as_slice(), &[2, 5, 4]);
        assert_eq!(
            LinearConfig::new(3, 0).build::<f32>().err().unwrap().to_string(),
            "Linear: out_features must be > 0, got 0"
        );
        let nb: Linear = LinearConfig { bias: false, ..LinearConfig::new(3, 4) }.build().unwrap();
        assert_eq!(nb.named_parameters().len(), 1);
        assert_eq!(nb.to_string(), "Linear(in_features=3, out_features=4, bias=false) [12 parameters]");
    }

    #[test]
    fn init_bounds_match_pytorch() {
        let l: Linear = Linear::new(784, 256);
        let bound = 1.0 / 784f32.sqrt();
        let w = l.weight.value();
        assert!(w.abs().max_all() <= bound && w.abs().max_all() > 0.99 * bound);
        let std = w.std(&[], 1, false).item() as f64;
        // U(-b, b) has std b / sqrt(3) (the golden `documented.std` 0.0206...)
        assert!((std - 0.020_619_652_471_058_063).abs() < 2e-4, "{std}");
        let Some(c) = golden::load("init/linear") else { return };
        let l: Linear<f64> = LinearConfig {
            bias: c.bool_or("constructor_kwargs/bias", true),
            ..LinearConfig::new(c.usize("constructor_kwargs/in_features"), c.usize("constructor_kwargs/out_features"))
        }
        .build()
        .unwrap();
        crate::layers::conv::testing::check_init(&c, &l);
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        let l: Linear<f64> = Linear::new_generic(3, 2);
        let (w, b) = (l.weight.value(), l.bias.as_ref().unwrap().value());
        let x = Tensor::<f64>::from_vec(vec![0.1, -0.2, 0.3, 0.4, 0.5, -0.6], &[2, 3]);
        let r = gradcheck(
            |v| {
                let m = Linear { config: l.config.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) };
                m.forward(&v[0])
            },
            &[x, w, b],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        crate::init::manual_seed(3);
        let l: Linear<f64> = Linear::new_generic(2, 1);
        let x = Var::constant(Tensor::from_vec(vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], &[4, 2]));
        let y = Var::constant(Tensor::from_vec(vec![3.0, -1.0, 2.0, 0.0], &[4, 1]));
        let mut loss = f64::MAX;
        for _ in 0..500 {
            l.zero_grad();
            let d = l.forward(&x).sub(&y);
            let lv = d.mul(&d).mean(&[], false);
            loss = lv.item();
            lv.backward();
            for p in l.parameters() {
                let g = p.grad().unwrap();
                p.update_value(|v| v.axpy_(-0.3, &g));
            }
        }
        // y = 3*x1 - x0 + 0 fits exactly: (0,1)->3, (1,0)->-1, (1,1)->2, (0,0)->0
        assert!(loss < 1e-8, "{loss}");
    }

    fn golden_case(name: &str) {
        let Some(c) = golden::load(name) else { return };
        let w = c.t("param.weight");
        let has_bias = c.bool_or("constructor_kwargs/bias", true);
        let mut l: Linear<f64> = LinearConfig {
            bias: has_bias,
            ..LinearConfig::new(c.usize("constructor_kwargs/in_features"), c.usize("constructor_kwargs/out_features"))
        }
        .build()
        .unwrap();
        let mut sd = crate::StateDict::new();
        sd.insert("weight".into(), w);
        if has_bias {
            sd.insert("bias".into(), c.t("param.bias"));
        }
        l.load_state_dict(&sd, true).unwrap();
        let x = Var::param(c.t("input.x"));
        let y = l.forward(&x);
        let tol = c.tol("float64");
        golden::assert_close("output", &y.value(), &c.t("output.output"), tol);
        y.backward_with(&c.t("upstream.output"));
        golden::assert_close("grad x", &x.grad().unwrap(), &c.t("grad_input.x"), tol);
        golden::assert_close("grad weight", &l.weight.grad().unwrap(), &c.t("grad_param.weight"), tol);
        if has_bias {
            golden::assert_close("grad bias", &l.bias.as_ref().unwrap().grad().unwrap(), &c.t("grad_param.bias"), tol);
        }
    }

    #[test]
    fn golden_linear() {
        golden_case("layers/linear");
        golden_case("layers/linear_nobias");
    }
}
