//! `PReLU`: the leaky ReLU whose negative slope is learnt.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};
use serde_json::{json, Map, Value};

use crate::error::NnError;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// `max(0, x) + a * min(0, x)` with a learnt slope `a`, like `torch.nn.PReLU` (He et al. 2015).
///
/// `num_parameters` is 1 (one slope shared by every channel, PyTorch's default) or the number
/// of channels (dimension 1 of the input; an input of fewer than 2 dimensions has one channel,
/// as in PyTorch); every slope starts at
/// `init` (0.25 by default). The slopes are a parameter (`weight`, PyTorch's key) and are
/// usually trained without weight decay.
///
/// # Shapes
/// - Input: `[N, C, *]`, any number of trailing dimensions (or any shape with one slope)
/// - Output: the input's shape
///
/// # Parameters
/// - `weight`: `[num_parameters]`, filled with `init`.
///
/// **Panics** in `forward` when `num_parameters` is neither 1 nor the input's channel count.
///
/// ```
/// use kiln_nn::{Forward, Module, PReLU};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let act = PReLU::new(1);
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![-2.0, -1.0, 0.0, 3.0], &[2, 2]));
/// assert_eq!(act.forward(&x).value().to_vec(), vec![-0.5, -0.25, 0.0, 3.0]);
/// assert_eq!(act.to_string(), "PReLU(num_parameters=1)");
/// assert_eq!(act.state_dict()["weight"].to_vec(), vec![0.25]);
/// ```
pub struct PReLU<E: Float = f32> {
    /// The number of slopes: 1, or the input's channel count.
    pub num_parameters: usize,
    /// The value every slope starts at.
    pub init: f64,
    /// The slopes, `[num_parameters]`.
    pub weight: Var<E>,
}

impl PReLU<f32> {
    /// `num_parameters` slopes starting at 0.25 (`nn.PReLU(num_parameters)`).
    ///
    /// **Panics** if `num_parameters` is 0 (use [`PReLU::try_new`] for a `Result`).
    pub fn new(num_parameters: usize) -> Self {
        Self::new_generic(num_parameters)
    }
}

impl<E: Float> PReLU<E> {
    /// [`PReLU::new`] in any element type: `PReLU::<f64>::new_generic(3)`.
    pub fn new_generic(num_parameters: usize) -> Self {
        Self::try_new(num_parameters, 0.25).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `num_parameters` slopes starting at `init` (`nn.PReLU(num_parameters, init)`).
    ///
    /// # Errors
    /// [`NnError::Config`] when `num_parameters` is 0 or `init` is not finite.
    pub fn try_new(num_parameters: usize, init: f64) -> Result<Self, NnError> {
        if num_parameters == 0 {
            return Err(NnError::Config("PReLU: num_parameters must be at least 1".into()));
        }
        if !init.is_finite() {
            return Err(NnError::Config(format!("PReLU: init must be finite, got {init}")));
        }
        let weight = Var::param(Tensor::full(&[num_parameters], E::from_f64(init)));
        Ok(PReLU { num_parameters, init, weight })
    }

    /// Sets every slope back to `init`.
    pub fn reset_parameters(&self) {
        self.weight.set_value(Tensor::full(&[self.num_parameters], E::from_f64(self.init)));
    }
}

impl<E: Float> Forward<E> for PReLU<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let shape = x.shape();
        let slope = if self.num_parameters == 1 {
            self.weight.clone()
        } else {
            // as PyTorch: the channels are dimension 1; an input of fewer than 2 dimensions has
            // one channel
            let channels = if shape.len() >= 2 { shape[1] } else { 1 };
            assert!(
                channels == self.num_parameters,
                "PReLU: {} slopes for an input of shape {:?} with {channels} channel(s) (dimension 1)",
                self.num_parameters,
                shape.as_slice()
            );
            // [C] -> [C, 1, ..., 1] so that it broadcasts over the dimensions after the channel
            let mut view = vec![1; shape.len() - 1];
            view[0] = self.num_parameters;
            self.weight.reshape(&view)
        };
        // max(0, x) + a * min(0, x), with min(0, x) = x - max(0, x)
        let pos = x.relu();
        pos.add(&slope.mul(&x.sub(&pos)))
    }
}

impl<E: Float> Module<E> for PReLU<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
    }
}

impl<E: Float> fmt::Display for PReLU<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PReLU(num_parameters={})", self.num_parameters)
    }
}

impl<E: Float> LayerSpec for PReLU<E> {
    const TYPE_NAME: &'static str = "PReLU";
    const EXAMPLE: &'static str = r#"{"num_parameters": 3, "init": 0.1}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"num_parameters": self.num_parameters, "init": self.init}))
    }

    /// `num_parameters` (default 1) and `init` (default 0.25), as `nn.PReLU` takes them.
    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let n = match a.take("num_parameters") {
            None => 1,
            Some(v) => a.as_usize("num_parameters", &v)?,
        };
        let init = match a.take("init") {
            None => 0.25,
            Some(v) => v.as_f64().ok_or_else(|| a.err(&format!("init must be a number, got {v}")))?,
        };
        Self::try_new(n, init)
    }
}

crate::register_layer!(PReLU<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::tensor;
    use crate::layers::testing::descend;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    /// Cases made by PyTorch (`tests/fixtures/prelu.py`): each holds the constructor's
    /// arguments, the slopes after a random update, an input, `upstream` (the output's
    /// gradient), and PyTorch's output and gradients. Every size is read from the file.
    const FIXTURE: &str = include_str!("../../tests/fixtures/prelu.json");

    fn close(what: &str, got: &Tensor<f64>, want: &Tensor<f64>) {
        assert_eq!(got.shape(), want.shape(), "{what}");
        for (g, w) in got.to_vec().iter().zip(want.to_vec()) {
            assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{what}: {g} vs {w}");
        }
    }

    #[test]
    fn matches_pytorch_values_and_gradients() {
        let cases: Value = serde_json::from_str(FIXTURE).unwrap();
        let cases = cases["cases"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let what = case["args"].to_string();
            // the layer is built from the JSON description PyTorch's arguments give
            let mut layer: Box<dyn crate::Layer<f64>> =
                crate::registry::build(&json!({"layer": "PReLU", "args": case["args"]})).unwrap();
            let init = case["args"]["init"].as_f64().unwrap_or(0.25);
            assert!(layer.state_dict()["weight"].to_vec().iter().all(|&w| w == init), "{what}: init");
            let sd = [("weight".to_string(), tensor(&case["weight"]))].into_iter().collect();
            layer.load_state_dict(&sd, true).unwrap();
            let x = Var::param(tensor(&case["input"]));
            let y = layer.forward(&x);
            close(&format!("{what} output"), &y.value(), &tensor(&case["output"]));
            y.backward_with(&tensor(&case["upstream"]));
            close(&format!("{what} grad input"), &x.grad().unwrap(), &tensor(&case["grad_input"]));
            let w = layer.parameters()[0].grad().unwrap();
            close(&format!("{what} grad weight"), &w, &tensor(&case["grad_weight"]));
            assert_eq!(layer.to_string(), case["repr"].as_str().unwrap());
        }
    }

    #[test]
    fn shapes_and_errors() {
        let p = PReLU::new(4);
        assert_eq!(p.forward(&Var::constant(Tensor::<f32>::ones(&[2, 4, 3, 5]))).shape().as_slice(), &[2, 4, 3, 5]);
        assert_eq!(PReLU::new(1).forward(&Var::constant(Tensor::<f32>::ones(&[4]))).shape().as_slice(), &[4]);
        assert_eq!(p.num_parameters(), 4);
        let e = PReLU::<f32>::try_new(0, 0.25).err().unwrap();
        assert_eq!(e.to_string(), "PReLU: num_parameters must be at least 1");
        let e = crate::registry::build::<f32>(&json!({"layer": "PReLU", "args": {"init": "x"}}));
        assert_eq!(e.err().unwrap().to_string(), "registry::build (PReLU): init must be a number, got \"x\"");
    }

    #[test]
    #[should_panic(expected = "PReLU: 3 slopes for an input of shape [2, 4, 5] with 4 channel(s)")]
    fn a_channel_count_mismatch_panics() {
        let _ = PReLU::new(3).forward(&Var::constant(Tensor::<f32>::ones(&[2, 4, 5])));
    }

    #[test]
    #[should_panic(expected = "PReLU: 4 slopes for an input of shape [4] with 1 channel(s)")]
    fn a_1d_input_has_one_channel_as_in_pytorch() {
        let _ = PReLU::new(4).forward(&Var::constant(Tensor::<f32>::ones(&[4])));
    }

    #[test]
    fn gradients_of_input_and_slopes() {
        // away from 0, where max(0, x) has no derivative
        let x = Tensor::<f64>::uniform(&[2, 3, 4], -1.0, 1.0, &mut Rng::new(5)).map(|v| v + 0.05f64.copysign(v));
        let w = Tensor::<f64>::uniform(&[3], -0.5, 0.5, &mut Rng::new(6));
        // the slopes are the layer's own weight Var, so both gradients go through `forward`
        let r = gradcheck(
            |v| PReLU { num_parameters: 3, init: 0.25, weight: v[1].clone() }.forward(&v[0]).tanh(),
            &[x.clone(), w],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
        let r = gradcheck(|v| PReLU::<f64>::new_generic(3).forward(&v[0]).tanh(), &[x], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // the slopes learn a target's per-channel leak
        let p = PReLU::<f64>::new_generic(2);
        let x = Var::constant(Tensor::uniform(&[8, 2, 3], -1.0, 1.0, &mut Rng::new(7)));
        let teacher = PReLU::<f64>::try_new(2, 0.0).unwrap();
        teacher.weight.set_value(Tensor::from_vec(vec![0.7, -0.3], &[2]));
        let target = Var::constant(teacher.forward(&x).value());
        let loss = descend(&p.parameters(), 0.5, 300, || {
            let d = p.forward(&x).sub(&target);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-10, "prelu {loss}");
        close("learnt slopes", &p.weight.value(), &Tensor::from_vec(vec![0.7, -0.3], &[2]));
    }
}
