//! Normalisations: `BatchNorm1d/2d` (eval) -> `BatchNormalization`, `LayerNorm` ->
//! `LayerNormalization` (opset 17), `GroupNorm` -> `InstanceNormalization` over the groups
//! plus the per-channel affine (as `torch.onnx.export` writes it).

use kiln_nn::{BatchNorm, GroupNorm, Layer, LayerNorm, Module};
use kiln_tensor::Tensor;

use super::{attr_f, attr_i, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(
    BatchNorm<f32, 1> => batch_norm1d,
    BatchNorm<f32, 2> => batch_norm2d,
    LayerNorm => layer_norm,
    GroupNorm => group_norm,
);

fn batch_norm<const D: usize>(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<BatchNorm<f32, D>>()?;
    if l.is_training() {
        return Some(Err(unsupported(
            layer,
            prefix,
            "the layer is in training mode (batch statistics); call model.eval() before exporting",
        )));
    }
    let (Some(mean), Some(var)) = (&l.running_mean, &l.running_var) else {
        return Some(Err(unsupported(
            layer,
            prefix,
            "track_running_stats=false normalises with batch statistics even in eval mode, which ONNX BatchNormalization cannot express",
        )));
    };
    let c = l.config.num_features;
    let scale = match &l.weight {
        Some(w) => ex.param(&format!("{prefix}weight"), w),
        None => ex.initializer(&format!("{prefix}weight"), &Tensor::ones(&[c])),
    };
    let bias = match &l.bias {
        Some(b) => ex.param(&format!("{prefix}bias"), b),
        None => ex.initializer(&format!("{prefix}bias"), &Tensor::zeros(&[c])),
    };
    let mean = ex.param(&format!("{prefix}running_mean"), mean);
    let var = ex.param(&format!("{prefix}running_var"), var);
    let attrs = vec![attr_f("epsilon", l.config.eps as f32), attr_f("momentum", 0.9)];
    Some(Ok(ex.node("BatchNormalization", &[&x.name, &scale, &bias, &mean, &var], attrs)))
}

/// `BatchNorm1d` (eval) -> `BatchNormalization`.
pub fn batch_norm1d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    batch_norm::<1>(layer, ex, prefix, x)
}

/// `BatchNorm2d` (eval) -> `BatchNormalization`.
pub fn batch_norm2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    batch_norm::<2>(layer, ex, prefix, x)
}

/// `LayerNorm` -> `LayerNormalization(axis = -len(normalized_shape))`, opset 17 and up.
pub fn layer_norm(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<LayerNorm>()?;
    if ex.opset < 17 {
        return Some(Err(unsupported(
            layer,
            prefix,
            format!("LayerNormalization needs opset >= 17, exporting {}", ex.opset),
        )));
    }
    let ns = &l.config.normalized_shape;
    let scale = match &l.weight {
        Some(w) => ex.param(&format!("{prefix}weight"), w),
        None => ex.initializer(&format!("{prefix}weight"), &Tensor::ones(ns)),
    };
    let mut inputs = vec![x.name.clone(), scale];
    if let Some(b) = &l.bias {
        inputs.push(ex.param(&format!("{prefix}bias"), b));
    }
    let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    let attrs = vec![attr_i("axis", -(ns.len() as i64)), attr_f("epsilon", l.config.eps as f32)];
    Some(Ok(ex.node("LayerNormalization", &inputs, attrs)))
}

/// `GroupNorm` -> `Reshape [N, G, -1]`, `InstanceNormalization` (unit scale), `Reshape` back to
/// the input's shape, then `Mul` / `Add` by the per-channel weight and bias.
pub fn group_norm(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<GroupNorm>()?;
    let (g, c) = (l.config.num_groups, l.config.num_channels);
    let nd = x.example.ndim();
    let shape_g = ex.const_i64("group_shape", &[0, g as i64, -1]);
    let xr = ex.node("Reshape", &[&x.name, &shape_g], vec![]);
    let ones = ex.initializer(&format!("{prefix}group_scale"), &Tensor::ones(&[g]));
    let zeros = ex.initializer(&format!("{prefix}group_bias"), &Tensor::zeros(&[g]));
    let y = ex.node("InstanceNormalization", &[&xr, &ones, &zeros], vec![attr_f("epsilon", l.config.eps as f32)]);
    let in_shape = ex.node("Shape", &[&x.name], vec![]);
    let mut y = ex.node("Reshape", &[&y, &in_shape], vec![]);
    let mut cs = vec![1usize; nd - 1];
    cs[0] = c;
    if let Some(w) = &l.weight {
        let w = ex.initializer(&format!("{prefix}weight"), &w.value().reshape(&cs));
        y = ex.node("Mul", &[&y, &w], vec![]);
    }
    if let Some(b) = &l.bias {
        let b = ex.initializer(&format!("{prefix}bias"), &b.value().reshape(&cs));
        y = ex.node("Add", &[&y, &b], vec![]);
    }
    Some(Ok(y))
}
