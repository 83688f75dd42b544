//! `Embedding` -> `Gather(weight, Cast<int64>(ids))`: kiln feeds the ids as integer-valued
//! floats, so the graph input stays float and the cast sits inside the graph.

use kiln_nn::{Embedding, Layer};

use super::{attr_i, Exporter, Value};
use crate::error::OnnxError;
use crate::proto::data_type;

register_export!(Embedding => embedding);

/// `Embedding` -> `Cast(to=INT64)` then `Gather(axis=0)` on the table.
pub fn embedding(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Embedding>()?;
    let w = ex.param(&format!("{prefix}weight"), &l.weight);
    let ids = ex.node("Cast", &[&x.name], vec![attr_i("to", data_type::INT64 as i64)]);
    Some(Ok(ex.node("Gather", &[&w, &ids], vec![attr_i("axis", 0)])))
}
