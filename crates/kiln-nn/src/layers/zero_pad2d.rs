//! `ZeroPad2d`: zeros around the last two dimensions.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, PadMode};
use serde_json::{json, Map, Value};

use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Pads the last two dimensions with zeros, like `torch.nn.ZeroPad2d`:
/// `out[.., i + top, j + left] = x[.., i, j]`, zero elsewhere.
///
/// `padding` is `[left, right, top, bottom]` (PyTorch's order); [`ZeroPad2d::new`] pads all
/// four sides equally. Differs from PyTorch: negative padding (cropping) is not supported.
///
/// # Shapes
/// - Input: `[N, C, H_in, W_in]` or unbatched `[C, H_in, W_in]`
/// - Output: `[N, C, H_in + top + bottom, W_in + left + right]`
///
/// # Parameters
/// None. The gradient of the input is the interior of the output's gradient.
///
/// **Panics** in `forward` when the input is not 3-d or 4-d.
///
/// ```
/// use kiln_nn::{Forward, ZeroPad2d};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let pad = ZeroPad2d::with_sides([1, 0, 0, 1]); // left 1, bottom 1
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]));
/// let y = pad.forward(&x);
/// assert_eq!(y.shape().as_slice(), &[1, 1, 3, 3]);
/// assert_eq!(y.value().to_vec(), vec![0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0]);
/// assert_eq!(pad.to_string(), "ZeroPad2d((1, 0, 0, 1))");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroPad2d {
    /// `[left, right, top, bottom]`.
    pub padding: [usize; 4],
}

impl ZeroPad2d {
    /// `padding` zeros on each of the four sides (`nn.ZeroPad2d(2)`).
    #[must_use]
    pub fn new(padding: usize) -> Self {
        ZeroPad2d { padding: [padding; 4] }
    }

    /// `[left, right, top, bottom]` zeros (`nn.ZeroPad2d((1, 1, 2, 0))`).
    #[must_use]
    pub fn with_sides(padding: [usize; 4]) -> Self {
        ZeroPad2d { padding }
    }
}

impl<E: Float> Forward<E> for ZeroPad2d {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let shape = x.shape();
        assert!(
            matches!(shape.len(), 3 | 4),
            "ZeroPad2d: expected a 3-d [C, H, W] or 4-d [N, C, H, W] input, got {:?}",
            shape.as_slice()
        );
        let [left, right, top, bottom] = self.padding;
        x.pad(&[(left, right), (top, bottom)], PadMode::Constant(0.0))
    }
}

impl<E: Float> Module<E> for ZeroPad2d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for ZeroPad2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [l, r, t, b] = self.padding;
        write!(f, "ZeroPad2d(({l}, {r}, {t}, {b}))")
    }
}

impl LayerSpec for ZeroPad2d {
    const TYPE_NAME: &'static str = "ZeroPad2d";
    const EXAMPLE: &'static str = r#"{"padding": [1, 0, 2, 3]}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"padding": self.padding}))
    }

    /// `padding`: an int (all sides) or `(left, right, top, bottom)`.
    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let bad = |a: &Args, v: &Value| a.err(&format!("padding must be an integer or 4 integers, got {v}"));
        match a.take("padding") {
            None => Err(a.err("padding is required")),
            Some(Value::Array(v)) if v.len() == 4 => {
                let mut p = [0; 4];
                for (p, s) in p.iter_mut().zip(&v) {
                    *p = a.as_usize("padding", s)?;
                }
                Ok(ZeroPad2d::with_sides(p))
            }
            Some(v @ Value::Array(_)) => Err(bad(a, &v)),
            Some(v) => Ok(ZeroPad2d::new(a.as_usize("padding", &v)?)),
        }
    }
}

crate::register_layer!(ZeroPad2d);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::tensor;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    /// Cases made by PyTorch (`tests/fixtures/zero_pad2d.py`): each holds the constructor's
    /// `padding`, an input, `upstream` (the output's gradient), and PyTorch's output and input
    /// gradient. Every size is read from the file.
    const FIXTURE: &str = include_str!("../../tests/fixtures/zero_pad2d.json");

    #[test]
    fn matches_pytorch_values_and_gradients() {
        let cases: Value = serde_json::from_str(FIXTURE).unwrap();
        let cases = cases["cases"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            // the layer is built from the JSON description PyTorch's arguments give
            let layer: Box<dyn crate::Layer<f64>> =
                crate::registry::build(&json!({"layer": "ZeroPad2d", "args": {"padding": case["padding"]}})).unwrap();
            let x = Var::param(tensor(&case["input"]));
            let y = layer.forward(&x);
            let want = tensor(&case["output"]);
            assert_eq!(y.shape().as_slice(), want.shape(), "{}", case["padding"]);
            assert_eq!(y.value().to_vec(), want.to_vec(), "{}", case["padding"]);
            y.backward_with(&tensor(&case["upstream"]));
            assert_eq!(x.grad().unwrap().to_vec(), tensor(&case["grad_input"]).to_vec(), "{}", case["padding"]);
            assert_eq!(layer.to_string(), case["repr"].as_str().unwrap());
        }
    }

    #[test]
    fn shapes_and_errors() {
        let p = ZeroPad2d::with_sides([1, 2, 3, 4]);
        let y = p.forward(&Var::constant(Tensor::<f32>::ones(&[2, 5, 6])));
        assert_eq!(y.shape().as_slice(), &[2, 5 + 3 + 4, 6 + 1 + 2]);
        let e = crate::registry::build::<f32>(&json!({"layer": "ZeroPad2d", "args": {"padding": [1, 2]}}));
        assert_eq!(
            e.err().unwrap().to_string(),
            "registry::build (ZeroPad2d): padding must be an integer or 4 integers, got [1,2]"
        );
    }

    #[test]
    #[should_panic(expected = "ZeroPad2d: expected a 3-d [C, H, W] or 4-d [N, C, H, W] input, got [4, 4]")]
    fn a_2d_input_panics() {
        let _ = ZeroPad2d::new(1).forward(&Var::constant(Tensor::<f32>::ones(&[4, 4])));
    }

    #[test]
    fn gradient_flows() {
        let x = Tensor::<f64>::uniform(&[1, 2, 3, 2], -1.0, 1.0, &mut Rng::new(4));
        let r = gradcheck(|v| ZeroPad2d::with_sides([2, 0, 1, 1]).forward(&v[0]).tanh(), &[x], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
