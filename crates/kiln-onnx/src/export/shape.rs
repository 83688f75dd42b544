//! Shape layers: `Flatten` -> `Flatten` (to the last axis) or `Reshape`; `Unflatten` ->
//! `Reshape`. Batch axes are copied (`0` in a `Reshape` shape) so a dynamic batch survives.

use kiln_nn::{Flatten, Layer, Unflatten};

use super::{attr_i, Exporter, Value};
use crate::error::OnnxError;

register_export!(Flatten => flatten, Unflatten => unflatten);

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
