//! Activations and the eval-mode identities: `Dropout`/`Dropout2d` (eval) -> `Identity`,
//! `ReLU`, `LeakyReLU`, `ELU`, `GELU`, `SiLU`, `Sigmoid`, `Tanh`, `Softplus`, `Softmax`,
//! `LogSoftmax`, `PReLU`.

use kiln_nn::{
    Dropout, Dropout2d, GeluApproximate, Layer, LeakyReLU, LogSoftmax, PReLU, ReLU, SiLU, Sigmoid, Softmax, Softplus,
    Tanh, ELU, GELU,
};

use super::{attr_f, attr_i, attr_s, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(
    Dropout => dropout,
    Dropout2d => dropout2d,
    ReLU => relu,
    LeakyReLU => leaky_relu,
    ELU => elu,
    GELU => gelu,
    SiLU => silu,
    Sigmoid => sigmoid,
    Tanh => tanh,
    Softplus => softplus,
    Softmax => softmax,
    LogSoftmax => log_softmax,
    PReLU => prelu,
);

const TRAINING: &str = "dropout is in training mode (random masks); call model.eval() before exporting";

/// `Dropout` in eval mode -> `Identity`.
pub fn dropout(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Dropout>()?;
    if l.is_training() && l.p > 0.0 {
        return Some(Err(unsupported(layer, prefix, TRAINING)));
    }
    Some(Ok(ex.node("Identity", &[&x.name], vec![])))
}

/// `Dropout2d` in eval mode -> `Identity`.
pub fn dropout2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Dropout2d>()?;
    if l.is_training() && l.p > 0.0 {
        return Some(Err(unsupported(layer, prefix, TRAINING)));
    }
    Some(Ok(ex.node("Identity", &[&x.name], vec![])))
}

/// `ReLU` -> `Relu`.
pub fn relu(layer: &dyn Layer<f32>, ex: &mut Exporter, _prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    layer.downcast_ref::<ReLU>()?;
    Some(Ok(ex.node("Relu", &[&x.name], vec![])))
}

/// `LeakyReLU` -> `LeakyRelu(alpha = negative_slope)`.
pub fn leaky_relu(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<LeakyReLU>()?;
    Some(Ok(ex.node("LeakyRelu", &[&x.name], vec![attr_f("alpha", l.negative_slope as f32)])))
}

/// `ELU` -> `Elu(alpha)`.
pub fn elu(layer: &dyn Layer<f32>, ex: &mut Exporter, _prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<ELU>()?;
    Some(Ok(ex.node("Elu", &[&x.name], vec![attr_f("alpha", l.alpha as f32)])))
}

/// `GELU` -> `Gelu(approximate)` from opset 20; before it, the formula in primitive ops:
/// `x/2 (1 + erf(x/√2))`, or `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))` for `'tanh'`.
pub fn gelu(layer: &dyn Layer<f32>, ex: &mut Exporter, _prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<GELU>()?;
    Some(Ok(gelu_nodes(ex, &x.name, l.approximate == GeluApproximate::Tanh)))
}

/// GELU of `x` in primitive ops (before opset 20): `x/2 (1 + erf(x/√2))`, or with `tanh`,
/// `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`; from opset 20, ONNX's `Gelu`.
pub(super) fn gelu_nodes(ex: &mut Exporter, x: &str, tanh: bool) -> String {
    if ex.opset >= 20 {
        let a = if tanh { "tanh" } else { "none" };
        return ex.node("Gelu", &[x], vec![attr_s("approximate", a)]);
    }
    let inner = if tanh {
        let c = ex.const_f32("gelu_cubic", 0.044715);
        let k = ex.const_f32("gelu_sqrt_2_over_pi", (2.0f64 / std::f64::consts::PI).sqrt() as f32);
        let x2 = ex.node("Mul", &[x, x], vec![]);
        let x3 = ex.node("Mul", &[&x2, x], vec![]);
        let t = ex.node("Mul", &[&x3, &c], vec![]);
        let s = ex.node("Add", &[x, &t], vec![]);
        let s = ex.node("Mul", &[&s, &k], vec![]);
        ex.node("Tanh", &[&s], vec![])
    } else {
        let r = ex.const_f32("gelu_sqrt2", std::f32::consts::SQRT_2);
        let s = ex.node("Div", &[x, &r], vec![]);
        ex.node("Erf", &[&s], vec![])
    };
    let one = ex.const_f32("gelu_one", 1.0);
    let half = ex.const_f32("gelu_half", 0.5);
    let p = ex.node("Add", &[&inner, &one], vec![]);
    let y = ex.node("Mul", &[x, &p], vec![]);
    ex.node("Mul", &[&y, &half], vec![])
}

/// `SiLU` -> `x * Sigmoid(x)`.
pub fn silu(layer: &dyn Layer<f32>, ex: &mut Exporter, _prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    layer.downcast_ref::<SiLU>()?;
    let s = ex.node("Sigmoid", &[&x.name], vec![]);
    Some(Ok(ex.node("Mul", &[&x.name, &s], vec![])))
}

/// `Sigmoid` -> `Sigmoid`.
pub fn sigmoid(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    layer.downcast_ref::<Sigmoid>()?;
    Some(Ok(ex.node("Sigmoid", &[&x.name], vec![])))
}

/// `Tanh` -> `Tanh`.
pub fn tanh(layer: &dyn Layer<f32>, ex: &mut Exporter, _prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    layer.downcast_ref::<Tanh>()?;
    Some(Ok(ex.node("Tanh", &[&x.name], vec![])))
}

/// `Softplus(beta, threshold)` -> `Where(x β > threshold, x, Softplus(x β) / β)` (ONNX's
/// `Softplus` has neither parameter).
pub fn softplus(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Softplus>()?;
    Some(Ok(softplus_nodes(ex, &x.name, l.beta, l.threshold)))
}

/// `Softmax(dim)` -> `Softmax(axis = dim)` (opset 13 semantics: along one axis).
pub fn softmax(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Softmax>()?;
    Some(Ok(ex.node("Softmax", &[&x.name], vec![attr_i("axis", l.dim as i64)])))
}

/// `LogSoftmax(dim)` -> `LogSoftmax(axis = dim)`.
pub fn log_softmax(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<LogSoftmax>()?;
    Some(Ok(ex.node("LogSoftmax", &[&x.name], vec![attr_i("axis", l.dim as i64)])))
}

/// `Softplus(beta, threshold)` of `x` in ONNX ops.
pub(super) fn softplus_nodes(ex: &mut Exporter, x: &str, beta: f64, threshold: f64) -> String {
    let beta = ex.const_f32("softplus_beta", beta as f32);
    let xb = ex.node("Mul", &[x, &beta], vec![]);
    let sp = ex.node("Softplus", &[&xb], vec![]);
    let sp = ex.node("Div", &[&sp, &beta], vec![]);
    let th = ex.const_f32("softplus_threshold", threshold as f32);
    let over = ex.node("Greater", &[&xb, &th], vec![]);
    ex.node("Where", &[&over, x, &sp], vec![])
}

/// `PReLU` -> `PRelu(x, slope)`, as `torch.onnx.export` writes it: the slopes are the
/// initializer `weight` (`[C]`), reshaped to `[C, 1, ..., 1]` so that they broadcast over the
/// axes after the channel axis (a single slope broadcasts as it is).
pub fn prelu(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<PReLU>()?;
    let w = ex.param(&format!("{prefix}weight"), &l.weight);
    let nd = x.example.ndim();
    let slope = if l.num_parameters == 1 || nd < 3 {
        w
    } else {
        let mut shape = vec![1i64; nd - 1];
        shape[0] = l.num_parameters as i64;
        let s = ex.initializer_i64(&format!("{prefix}slope_shape"), &shape, &[shape.len()]);
        ex.node("Reshape", &[&w, &s], vec![])
    };
    Some(Ok(ex.node("PRelu", &[&x.name, &slope], vec![])))
}
