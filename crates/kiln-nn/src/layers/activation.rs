//! Activations as modules: `ReLU`, `LeakyReLU`, `ELU`, `GELU`, `SiLU`, `Sigmoid`, `Tanh`,
//! `Softplus`, `Softmax`, `LogSoftmax`, with PyTorch's defaults.
//!
//! They have no parameters, so each struct is its own configuration (public fields, `Default`
//! where PyTorch has defaults) and works for every element type: `ReLU` is a
//! `Module<f32>` and a `Module<f64>`. The maths, with its backward, is in
//! `kiln_autograd::ops` (`Var::relu`, `Var::gelu`, ...).
//!
//! # Shapes
//! - Input: `[*]`, any shape
//! - Output: `[*]`, the input's shape
//!
//! ```
//! use kiln_nn::{Forward, LeakyReLU, ReLU};
//! use kiln_autograd::Var;
//! use kiln_tensor::Tensor;
//! let x = Var::constant(Tensor::from_vec(vec![-2.0f32, 0.5], &[2]));
//! assert_eq!(ReLU.forward(&x).value().to_vec(), vec![0.0, 0.5]);
//! assert_eq!(LeakyReLU::default().forward(&x).value().to_vec(), vec![-0.02, 0.5]);
//! assert_eq!(LeakyReLU::default().to_string(), "LeakyReLU(negative_slope=0.01)");
//! ```

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

/// Implements `Module<E>` (no parameters, no mode) for parameter-free modules.
macro_rules! stateless_module {
    ($($t:ty),* $(,)?) => {$(
        impl<E: Float> Module<E> for $t {
            fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
        }
    )*};
}
pub(crate) use stateless_module;

stateless_module!(ReLU, LeakyReLU, ELU, GELU, SiLU, Sigmoid, Tanh, Softplus, Softmax, LogSoftmax);

/// `ReLU(x) = max(0, x)`, like `torch.nn.ReLU` (gradient 0 at 0).
///
/// ```
/// use kiln_nn::{Forward, ReLU};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let y = ReLU.forward(&Var::constant(Tensor::from_vec(vec![-1.0f64, 0.0, 3.0], &[3])));
/// assert_eq!(y.value().to_vec(), vec![0.0, 0.0, 3.0]);
/// assert_eq!(ReLU.to_string(), "ReLU()");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReLU;

impl<E: Float> Forward<E> for ReLU {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.relu()
    }
}

impl fmt::Display for ReLU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReLU()")
    }
}

/// `LeakyReLU(x) = x` for `x > 0`, `negative_slope * x` otherwise, like `torch.nn.LeakyReLU`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyReLU {
    /// The slope for negative inputs (PyTorch's default 0.01).
    pub negative_slope: f64,
}

impl LeakyReLU {
    /// A leaky ReLU with the given negative slope.
    pub fn new(negative_slope: f64) -> Self {
        LeakyReLU { negative_slope }
    }
}

impl Default for LeakyReLU {
    /// `negative_slope = 0.01`, PyTorch's default.
    fn default() -> Self {
        LeakyReLU { negative_slope: 0.01 }
    }
}

impl<E: Float> Forward<E> for LeakyReLU {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.leaky_relu(self.negative_slope)
    }
}

impl fmt::Display for LeakyReLU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeakyReLU(negative_slope={:?})", self.negative_slope)
    }
}

/// `ELU(x) = x` for `x > 0`, `alpha (eˣ - 1)` otherwise, like `torch.nn.ELU`
/// ([Clevert et al., 2015](https://arxiv.org/abs/1511.07289)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ELU {
    /// The saturation value for negative inputs is `-alpha` (PyTorch's default 1.0).
    pub alpha: f64,
}

impl ELU {
    /// An ELU with the given alpha.
    pub fn new(alpha: f64) -> Self {
        ELU { alpha }
    }
}

impl Default for ELU {
    /// `alpha = 1.0`, PyTorch's default.
    fn default() -> Self {
        ELU { alpha: 1.0 }
    }
}

impl<E: Float> Forward<E> for ELU {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.elu(self.alpha)
    }
}

impl fmt::Display for ELU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ELU(alpha={:?})", self.alpha)
    }
}

/// Which formula [`GELU`] uses, PyTorch's `approximate` argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApproximate {
    /// The exact `x Φ(x)` with the normal CDF (`approximate='none'`, the default).
    #[default]
    None,
    /// `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))` (`approximate='tanh'`).
    Tanh,
}

/// `GELU(x) = x Φ(x)`, Φ the standard normal CDF, like `torch.nn.GELU`
/// ([Hendrycks & Gimpel, 2016](https://arxiv.org/abs/1606.08415)); or its tanh approximation.
///
/// ```
/// use kiln_nn::{Forward, GeluApproximate, GELU};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::from_vec(vec![1.0f64], &[1]));
/// let exact = GELU::default().forward(&x).item();
/// assert!((exact - 0.841_344_746_068_543).abs() < 1e-12); // Φ(1)
/// let tanh = GELU::new(GeluApproximate::Tanh);
/// assert!((tanh.forward(&x).item() - exact).abs() < 1e-3);
/// assert_eq!(tanh.to_string(), "GELU(approximate='tanh')");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GELU {
    /// Exact or tanh form (PyTorch's default: exact).
    pub approximate: GeluApproximate,
}

impl GELU {
    /// A GELU with the given formula.
    pub fn new(approximate: GeluApproximate) -> Self {
        GELU { approximate }
    }
}

impl<E: Float> Forward<E> for GELU {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        match self.approximate {
            GeluApproximate::None => x.gelu(),
            GeluApproximate::Tanh => x.gelu_tanh(),
        }
    }
}

impl fmt::Display for GELU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.approximate {
            GeluApproximate::None => "none",
            GeluApproximate::Tanh => "tanh",
        };
        write!(f, "GELU(approximate='{a}')")
    }
}

/// `SiLU(x) = x σ(x)` (swish), like `torch.nn.SiLU`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiLU;

impl<E: Float> Forward<E> for SiLU {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.silu()
    }
}

impl fmt::Display for SiLU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiLU()")
    }
}

/// `Sigmoid(x) = 1 / (1 + e⁻ˣ)`, like `torch.nn.Sigmoid`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sigmoid;

impl<E: Float> Forward<E> for Sigmoid {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.sigmoid()
    }
}

impl fmt::Display for Sigmoid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sigmoid()")
    }
}

/// `Tanh(x) = (eˣ - e⁻ˣ) / (eˣ + e⁻ˣ)`, like `torch.nn.Tanh`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tanh;

impl<E: Float> Forward<E> for Tanh {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.tanh()
    }
}

impl fmt::Display for Tanh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tanh()")
    }
}

/// `Softplus(x) = ln(1 + e^(βx)) / β`, and `x` itself where `βx > threshold` (for numerical
/// stability), like `torch.nn.Softplus`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Softplus {
    /// β (PyTorch's default 1.0).
    pub beta: f64,
    /// Above `βx > threshold` the function is linear (PyTorch's default 20.0).
    pub threshold: f64,
}

impl Softplus {
    /// A softplus with the given β and threshold.
    pub fn new(beta: f64, threshold: f64) -> Self {
        Softplus { beta, threshold }
    }
}

impl Default for Softplus {
    /// `beta = 1.0, threshold = 20.0`, PyTorch's defaults.
    fn default() -> Self {
        Softplus { beta: 1.0, threshold: 20.0 }
    }
}

impl<E: Float> Forward<E> for Softplus {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.softplus(self.beta, self.threshold)
    }
}

impl fmt::Display for Softplus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Softplus(beta={:?}, threshold={:?})", self.beta, self.threshold)
    }
}

/// `Softmax(x)ᵢ = exp(xᵢ) / Σⱼ exp(xⱼ)` along `dim`, like `torch.nn.Softmax(dim)`.
///
/// `dim` has no default: PyTorch's implicit choice is deprecated.
///
/// **Panics** in `forward` if `dim` is out of range for the input.
///
/// ```
/// use kiln_nn::{Forward, Softmax};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let p = Softmax::new(-1).forward(&Var::constant(Tensor::from_vec(vec![0.0f64, 0.0, 0.0, 0.0], &[2, 2])));
/// assert_eq!(p.value().to_vec(), vec![0.5; 4]);
/// assert_eq!(Softmax::new(-1).to_string(), "Softmax(dim=-1)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax {
    /// The dimension that sums to one (negative counts from the end).
    pub dim: isize,
}

impl Softmax {
    /// A softmax along `dim`.
    pub fn new(dim: isize) -> Self {
        Softmax { dim }
    }
}

impl<E: Float> Forward<E> for Softmax {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.softmax(self.dim)
    }
}

impl fmt::Display for Softmax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Softmax(dim={})", self.dim)
    }
}

/// `LogSoftmax(x)ᵢ = xᵢ - log Σⱼ exp(xⱼ)` along `dim`, like `torch.nn.LogSoftmax(dim)`.
///
/// **Panics** in `forward` if `dim` is out of range for the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSoftmax {
    /// The dimension normalised over (negative counts from the end).
    pub dim: isize,
}

impl LogSoftmax {
    /// A log-softmax along `dim`.
    pub fn new(dim: isize) -> Self {
        LogSoftmax { dim }
    }
}

impl<E: Float> Forward<E> for LogSoftmax {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.log_softmax(self.dim)
    }
}

impl fmt::Display for LogSoftmax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogSoftmax(dim={})", self.dim)
    }
}

/// The description of an activation without arguments that accepts `inplace` (which changes
/// nothing kiln computes).
macro_rules! no_arg_spec {
    ($($t:ident: $inplace:expr),* $(,)?) => {$(
        impl LayerSpec for $t {
            const TYPE_NAME: &'static str = stringify!($t);
            const EXAMPLE: &'static str = "{}";

            fn config(&self) -> Map<String, Value> {
                Map::new()
            }

            fn from_config(a: &mut Args) -> Result<Self, NnError> {
                if $inplace {
                    a.not_inplace()?;
                }
                Ok($t)
            }
        }

        crate::register_layer!($t);
    )*};
}

no_arg_spec!(ReLU: true, SiLU: true, Sigmoid: false, Tanh: false);

impl LayerSpec for LeakyReLU {
    const TYPE_NAME: &'static str = "LeakyReLU";
    const EXAMPLE: &'static str = r#"{"negative_slope": 0.2}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"negative_slope": self.negative_slope}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.not_inplace()?;
        Ok(LeakyReLU::new(a.f64("negative_slope", 0.01)?))
    }
}

crate::register_layer!(LeakyReLU);

impl LayerSpec for ELU {
    const TYPE_NAME: &'static str = "ELU";
    const EXAMPLE: &'static str = r#"{"alpha": 0.5}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"alpha": self.alpha}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.not_inplace()?;
        Ok(ELU::new(a.f64("alpha", 1.0)?))
    }
}

crate::register_layer!(ELU);

impl LayerSpec for GELU {
    const TYPE_NAME: &'static str = "GELU";
    const EXAMPLE: &'static str = r#"{"approximate": "tanh"}"#;

    fn config(&self) -> Map<String, Value> {
        let approximate = match self.approximate {
            GeluApproximate::None => "none",
            GeluApproximate::Tanh => "tanh",
        };
        object(json!({"approximate": approximate}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let approximate = match a.take("approximate") {
            None => GeluApproximate::None,
            Some(Value::String(s)) if s == "none" => GeluApproximate::None,
            Some(Value::String(s)) if s == "tanh" => GeluApproximate::Tanh,
            Some(v) => return Err(a.err(&format!("approximate must be \"none\" or \"tanh\", got {v}"))),
        };
        Ok(GELU::new(approximate))
    }
}

crate::register_layer!(GELU);

impl LayerSpec for Softplus {
    const TYPE_NAME: &'static str = "Softplus";
    const EXAMPLE: &'static str = r#"{"beta": 2.0, "threshold": 10.0}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"beta": self.beta, "threshold": self.threshold}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        Ok(Softplus::new(a.f64("beta", 1.0)?, a.f64("threshold", 20.0)?))
    }
}

crate::register_layer!(Softplus);

impl LayerSpec for Softmax {
    const TYPE_NAME: &'static str = "Softmax";
    const EXAMPLE: &'static str = r#"{"dim": 1}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"dim": self.dim}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        Ok(Softmax::new(a.isize("dim", -1)?))
    }
}

crate::register_layer!(Softmax);

impl LayerSpec for LogSoftmax {
    const TYPE_NAME: &'static str = "LogSoftmax";
    const EXAMPLE: &'static str = r#"{"dim": -1}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"dim": self.dim}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        Ok(LogSoftmax::new(a.isize("dim", -1)?))
    }
}

crate::register_layer!(LogSoftmax);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Tensor;

    /// Every activation, boxed, with the name its golden case has.
    fn all() -> Vec<(&'static str, Box<dyn crate::Layer<f64>>)> {
        vec![
            ("relu", Box::new(ReLU)),
            ("leaky_relu", Box::new(LeakyReLU::default())),
            ("elu", Box::new(ELU::default())),
            ("gelu", Box::new(GELU::default())),
            ("gelu_tanh", Box::new(GELU::new(GeluApproximate::Tanh))),
            ("silu", Box::new(SiLU)),
            ("sigmoid", Box::new(Sigmoid)),
            ("tanh", Box::new(Tanh)),
            ("softplus", Box::new(Softplus::default())),
            ("softmax", Box::new(Softmax::new(-1))),
            ("log_softmax", Box::new(LogSoftmax::new(1))),
        ]
    }

    #[test]
    fn shape_display_and_no_parameters() {
        let x = Var::constant(Tensor::<f64>::ones(&[2, 3, 4]));
        for (name, m) in all() {
            assert_eq!(m.forward(&x).shape().as_slice(), &[2, 3, 4], "{name}");
            assert_eq!(m.num_parameters(), 0, "{name}");
            assert!(m.state_dict().is_empty(), "{name}");
        }
        let shown: Vec<String> = all().iter().map(|(_, m)| m.to_string()).collect();
        assert_eq!(
            shown,
            [
                "ReLU()",
                "LeakyReLU(negative_slope=0.01)",
                "ELU(alpha=1.0)",
                "GELU(approximate='none')",
                "GELU(approximate='tanh')",
                "SiLU()",
                "Sigmoid()",
                "Tanh()",
                "Softplus(beta=1.0, threshold=20.0)",
                "Softmax(dim=-1)",
                "LogSoftmax(dim=1)",
            ]
        );
    }

    #[test]
    fn pytorch_defaults() {
        assert_eq!(LeakyReLU::default().negative_slope, 0.01);
        assert_eq!(ELU::default().alpha, 1.0);
        assert_eq!(GELU::default().approximate, GeluApproximate::None);
        assert_eq!(Softplus::default(), Softplus::new(1.0, 20.0));
    }

    #[test]
    fn works_in_f32_too() {
        let x = Var::param(Tensor::<f32>::from_vec(vec![-1.0, 2.0], &[1, 2]));
        let y = Forward::<f32>::forward(&Softmax::new(1), &x);
        assert!((y.value().sum_all().item() - 1.0).abs() < 1e-6);
        ELU::default().forward(&x).sum_all().backward();
        assert!(x.grad().is_some());
    }

    #[test]
    fn gradients_flow() {
        // Values away from the kinks at 0 (finite differences are meaningless there), and one
        // above softplus's threshold.
        let x = Tensor::<f64>::from_vec(vec![-1.7, -0.4, 0.3, 1.1, 2.5, -2.2, 0.8, 21.0], &[2, 4]);
        for (name, m) in all() {
            let r = gradcheck(|v| m.forward(&v[0]), std::slice::from_ref(&x), 1e-6, 1e-7, 1e-5);
            assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
        }
    }

    /// Builds the module a golden case describes, from its `constructor_kwargs`.
    fn from_golden(case: &str, kw: &serde_json::Value) -> Box<dyn crate::Layer<f64>> {
        let f = |k: &str| kw[k].as_f64().unwrap_or_else(|| panic!("{case}: constructor_kwargs.{k} missing"));
        let dim = || kw["dim"].as_i64().unwrap_or_else(|| panic!("{case}: constructor_kwargs.dim missing")) as isize;
        match case {
            "relu" => Box::new(ReLU),
            "leaky_relu" => Box::new(LeakyReLU::new(f("negative_slope"))),
            "elu" => Box::new(ELU::new(f("alpha"))),
            "gelu" | "gelu_tanh" => Box::new(GELU::new(match kw["approximate"].as_str() {
                Some("tanh") => GeluApproximate::Tanh,
                Some("none") | None => GeluApproximate::None,
                Some(other) => panic!("{case}: unknown approximate {other:?}"),
            })),
            "silu" => Box::new(SiLU),
            "sigmoid" => Box::new(Sigmoid),
            "tanh" => Box::new(Tanh),
            "softplus" => Box::new(Softplus::new(f("beta"), f("threshold"))),
            "softmax" => Box::new(Softmax::new(dim())),
            "log_softmax" => Box::new(LogSoftmax::new(dim())),
            _ => unreachable!(),
        }
    }

    #[test]
    fn golden_activations() {
        for (case, _) in all() {
            let Some(c) = golden::load(&format!("layers/{case}")) else { return };
            let m = from_golden(case, &c.json["constructor_kwargs"]);
            let x = Var::param(c.t("input.x"));
            let y = m.forward(&x);
            let tol = c.tol("float64");
            golden::assert_close(&format!("{case} output"), &y.value(), &c.t("output.output"), tol);
            y.backward_with(&c.t("upstream.output"));
            golden::assert_close(&format!("{case} grad x"), &x.grad().unwrap(), &c.t("grad_input.x"), tol);
        }
    }
}
