//! `RMSNorm` -> `x / √(ReduceMean(x²) + ε) · γ` (ONNX's `RMSNormalization` needs opset 23);
//! `InstanceNorm1d/2d` -> `InstanceNormalization`, or `BatchNormalization` over the running
//! statistics in eval mode with `track_running_stats`.

use kiln_nn::{InstanceNorm, Layer, Module, RMSNorm};
use kiln_tensor::Tensor;

use super::{attr_f, attr_i, attr_ints, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(
    RMSNorm => rms_norm,
    InstanceNorm<f32, 1> => instance_norm1d,
    InstanceNorm<f32, 2> => instance_norm2d,
);

/// `RMSNorm` -> `Mul(x, x)`, `ReduceMean` over the trailing dims (axes as an attribute before
/// opset 18, an input from 18), `Add ε`, `Sqrt`, `Div`, `Mul γ`.
pub fn rms_norm(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<RMSNorm>()?;
    let k = l.config.normalized_shape.len() as i64;
    let axes: Vec<i64> = (1..=k).map(|d| -d).collect();
    let sq = ex.node("Mul", &[&x.name, &x.name], vec![]);
    let ms = if ex.opset >= 18 {
        let a = ex.const_i64("rms_axes", &axes);
        ex.node("ReduceMean", &[&sq, &a], vec![attr_i("keepdims", 1)])
    } else {
        ex.node("ReduceMean", &[&sq], vec![attr_ints("axes", &axes), attr_i("keepdims", 1)])
    };
    // eps None is the element type's machine epsilon (the export is f32)
    let eps = ex.const_f32("rms_eps", l.config.eps.map_or(f32::EPSILON, |e| e as f32));
    let ms = ex.node("Add", &[&ms, &eps], vec![]);
    let rms = ex.node("Sqrt", &[&ms], vec![]);
    let mut y = ex.node("Div", &[&x.name, &rms], vec![]);
    if let Some(w) = &l.weight {
        let w = ex.param(&format!("{prefix}weight"), w);
        y = ex.node("Mul", &[&y, &w], vec![]);
    }
    Some(Ok(y))
}

fn instance_norm<const D: usize>(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<InstanceNorm<f32, D>>()?;
    let s = x.example.shape();
    if s.len() != D + 2 {
        return Some(Err(unsupported(layer, prefix, format!("needs a batched {}-d input, got {s:?}", D + 2))));
    }
    let c = s[1];
    let scale = match &l.weight {
        Some(w) => ex.param(&format!("{prefix}weight"), w),
        None => ex.initializer(&format!("{prefix}weight"), &Tensor::ones(&[c])),
    };
    let bias = match &l.bias {
        Some(b) => ex.param(&format!("{prefix}bias"), b),
        None => ex.initializer(&format!("{prefix}bias"), &Tensor::zeros(&[c])),
    };
    let eps = attr_f("epsilon", l.config.eps as f32);
    match (&l.running_mean, &l.running_var) {
        (Some(m), Some(v)) if !l.is_training() => {
            let m = ex.param(&format!("{prefix}running_mean"), m);
            let v = ex.param(&format!("{prefix}running_var"), v);
            Some(Ok(ex.node("BatchNormalization", &[&x.name, &scale, &bias, &m, &v], vec![eps])))
        }
        _ => Some(Ok(ex.node("InstanceNormalization", &[&x.name, &scale, &bias], vec![eps]))),
    }
}

/// `InstanceNorm1d` -> `InstanceNormalization` (or `BatchNormalization` over the running
/// statistics in eval mode with `track_running_stats`).
pub fn instance_norm1d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    instance_norm::<1>(layer, ex, prefix, x)
}

/// `InstanceNorm2d` -> `InstanceNormalization` (or `BatchNormalization` over the running
/// statistics in eval mode with `track_running_stats`).
pub fn instance_norm2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    instance_norm::<2>(layer, ex, prefix, x)
}
