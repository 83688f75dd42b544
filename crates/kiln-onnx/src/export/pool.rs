//! Pools: `MaxPool1d/2d` -> `MaxPool`, `AvgPool1d/2d` -> `AveragePool`, `AdaptiveAvgPool2d` ->
//! `GlobalAveragePool` or an `AveragePool` when the input size is a multiple of the output's.

use kiln_nn::{AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, Layer, MaxPool1d, MaxPool2d};

use super::{attr_i, attr_ints, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(
    MaxPool1d => max_pool1d,
    MaxPool2d => max_pool2d,
    AvgPool1d => avg_pool1d,
    AvgPool2d => avg_pool2d,
    AdaptiveAvgPool2d => adaptive_avg_pool2d,
);

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

/// `MaxPool1d` -> `MaxPool`.
pub fn max_pool1d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let c = &layer.downcast_ref::<MaxPool1d>()?.config;
    let attrs = vec![
        attr_ints("kernel_shape", &[c.kernel_size as i64]),
        attr_ints("strides", &[c.stride.unwrap_or(c.kernel_size) as i64]),
        attr_ints("pads", &[c.padding as i64; 2]),
        attr_ints("dilations", &[c.dilation as i64]),
        attr_i("ceil_mode", c.ceil_mode as i64),
    ];
    Some(Ok(ex.node("MaxPool", &[&x.name], attrs)))
}

/// `MaxPool2d` -> `MaxPool`.
pub fn max_pool2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let c = &layer.downcast_ref::<MaxPool2d>()?.config;
    let [ph, pw] = c.padding;
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(&c.kernel_size)),
        attr_ints("strides", &i64s(&c.stride.unwrap_or(c.kernel_size))),
        attr_ints("pads", &i64s(&[ph, pw, ph, pw])),
        attr_ints("dilations", &i64s(&c.dilation)),
        attr_i("ceil_mode", c.ceil_mode as i64),
    ];
    Some(Ok(ex.node("MaxPool", &[&x.name], attrs)))
}

/// `AvgPool1d` -> `AveragePool`.
pub fn avg_pool1d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let c = &layer.downcast_ref::<AvgPool1d>()?.config;
    let attrs = vec![
        attr_ints("kernel_shape", &[c.kernel_size as i64]),
        attr_ints("strides", &[c.stride.unwrap_or(c.kernel_size) as i64]),
        attr_ints("pads", &[c.padding as i64; 2]),
        attr_i("ceil_mode", c.ceil_mode as i64),
        attr_i("count_include_pad", c.count_include_pad as i64),
    ];
    Some(Ok(ex.node("AveragePool", &[&x.name], attrs)))
}

/// `AvgPool2d` -> `AveragePool` (a `divisor_override` has no ONNX form).
pub fn avg_pool2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let c = &layer.downcast_ref::<AvgPool2d>()?.config;
    if c.divisor_override.is_some() {
        return Some(Err(unsupported(layer, prefix, "divisor_override has no ONNX AveragePool equivalent")));
    }
    let [ph, pw] = c.padding;
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(&c.kernel_size)),
        attr_ints("strides", &i64s(&c.stride.unwrap_or(c.kernel_size))),
        attr_ints("pads", &i64s(&[ph, pw, ph, pw])),
        attr_i("ceil_mode", c.ceil_mode as i64),
        attr_i("count_include_pad", c.count_include_pad as i64),
    ];
    Some(Ok(ex.node("AveragePool", &[&x.name], attrs)))
}

/// `AdaptiveAvgPool2d` -> `GlobalAveragePool` for a `[1, 1]` output; otherwise an
/// `AveragePool` with kernel = stride = input / output, which needs the input's spatial size
/// (taken from the example input) to be a multiple of the output size.
pub fn adaptive_avg_pool2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let out = layer.downcast_ref::<AdaptiveAvgPool2d>()?.output_size;
    if out == [1, 1] {
        return Some(Ok(ex.node("GlobalAveragePool", &[&x.name], vec![])));
    }
    let s = x.example.shape();
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    if h % out[0] != 0 || w % out[1] != 0 {
        return Some(Err(unsupported(
            layer,
            prefix,
            format!("input {h}x{w} is not a multiple of the output size {}x{}: the bins overlap", out[0], out[1]),
        )));
    }
    let k = [(h / out[0]) as i64, (w / out[1]) as i64];
    let attrs = vec![attr_ints("kernel_shape", &k), attr_ints("strides", &k)];
    Some(Ok(ex.node("AveragePool", &[&x.name], attrs)))
}
