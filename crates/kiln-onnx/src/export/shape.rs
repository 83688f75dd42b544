//! Shape layers: `Flatten` -> `Flatten` (to the last axis) or `Reshape`; `Unflatten` ->
//! `Reshape`; `ZeroPad2d` -> `Pad`. Batch axes are copied (`0` in a `Reshape` shape) so a
//! dynamic batch survives.

use kiln_nn::{Flatten, Layer, Unflatten, ZeroPad2d};

use super::{attr_i, attr_s, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(Flatten => flatten, Unflatten => unflatten, ZeroPad2d => zero_pad2d);

fn axis(d: isize, nd: usize) -> usize {
    if d < 0 {
        (nd as isize + d) as usize
    } else {
        d as usize
    }
}

/// `Flatten(start, end)`: ONNX `Flatten(axis=start)` when `start == 1` and `end` is the last
/// axis, else a `Reshape` keeping the leading axes (`0`), `-1` for the merged run, and the
/// trailing sizes.
pub fn flatten(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Flatten>()?;
    let s = x.example.shape();
    let nd = s.len().max(1);
    let (a, b) = (axis(l.start_dim, nd), axis(l.end_dim, nd));
    if a == 1 && b == nd - 1 {
        return Some(Ok(ex.node("Flatten", &[&x.name], vec![attr_i("axis", 1)])));
    }
    let mut shape: Vec<i64> = (0..a).map(|_| 0).collect();
    shape.push(-1);
    shape.extend(s[b + 1..].iter().map(|&d| d as i64));
    let c = ex.const_i64("flatten_shape", &shape);
    Some(Ok(ex.node("Reshape", &[&x.name, &c], vec![])))
}

/// `Unflatten(dim, sizes)` -> `Reshape` with the leading axes copied.
pub fn unflatten(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Unflatten>()?;
    let s = x.example.shape();
    let d = axis(l.dim, s.len());
    let mut shape: Vec<i64> = (0..d).map(|_| 0).collect();
    shape.extend(l.unflattened_size.iter().map(|&v| v as i64));
    shape.extend(s[d + 1..].iter().map(|&v| v as i64));
    let c = ex.const_i64("unflatten_shape", &shape);
    Some(Ok(ex.node("Reshape", &[&x.name, &c], vec![])))
}

/// `ZeroPad2d` -> `Pad(mode="constant")`, the last two axes padded (ONNX's `pads` lists every
/// axis's begin, then every axis's end).
pub fn zero_pad2d(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<ZeroPad2d>()?;
    let nd = x.example.ndim();
    if nd < 2 {
        return Some(Err(unsupported(layer, prefix, format!("needs an input of at least 2 axes, got {nd}"))));
    }
    let [left, right, top, bottom] = l.padding.map(|p| p as i64);
    let mut pads = vec![0i64; 2 * nd];
    pads[nd - 2] = top;
    pads[nd - 1] = left;
    pads[2 * nd - 2] = bottom;
    pads[2 * nd - 1] = right;
    let p = ex.const_i64("pads", &pads);
    Some(Ok(ex.node("Pad", &[&x.name, &p], vec![attr_s("mode", "constant")])))
}
