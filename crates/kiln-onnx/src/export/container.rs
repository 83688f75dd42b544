//! Containers: `Sequential` (its layers in order, keyed `0.`, `1.`, ...) and `Identity`.

use kiln_nn::{Identity, Layer, Sequential};

use super::{Exporter, Value};
use crate::error::OnnxError;

register_export!(Sequential => sequential, Identity => identity);

/// `Sequential`: each layer converted in turn under the key prefix `{prefix}{index}.`.
pub fn sequential(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let seq = layer.downcast_ref::<Sequential>()?;
    let mut v = x.clone();
    for (i, child) in seq.iter().enumerate() {
        v = match ex.convert(child, &format!("{prefix}{i}."), &v) {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
    }
    ex.last_example = Some(v.example);
    Some(Ok(v.name))
}

/// `Identity` -> `Identity`.
pub fn identity(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    _prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    layer.downcast_ref::<Identity>()?;
    Some(Ok(ex.node("Identity", &[&x.name], vec![])))
}
