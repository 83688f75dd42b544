//! An imported [`OnnxModel`]: its graph written back, with the current values of its
//! parameters (after fine-tuning) under their ONNX names, so export -> import -> export keeps
//! the same operators and initializers.

use std::collections::HashMap;

use kiln_nn::Layer;

use super::{unsupported, Exporter, Value};
use crate::error::OnnxError;
use crate::import::OnnxModel;
use crate::proto::NodeProto;

register_export!(OnnxModel => onnx_model);

/// `OnnxModel` -> its own nodes, values renamed into the graph being built.
pub fn onnx_model(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let m = layer.downcast_ref::<OnnxModel>()?;
    if m.inputs.len() != 1 || m.outputs.len() != 1 {
        return Some(Err(unsupported(
            layer,
            prefix,
            "only graphs with one input and one output can be nested in an export",
        )));
    }
    if m.opset() > ex.opset {
        return Some(Err(unsupported(
            layer,
            prefix,
            format!("the graph uses opset {}, newer than the {} being exported", m.opset(), ex.opset),
        )));
    }
    let mut rename: HashMap<String, String> = HashMap::new();
    rename.insert(m.inputs[0].clone(), x.name.clone());
    for (name, var, _) in &m.tensors {
        let n = ex.param(&format!("{prefix}{name}"), var);
        rename.insert(name.clone(), n);
    }
    for (name, v, dims) in &m.int_consts {
        let n = ex.initializer_i64(&format!("{prefix}{name}"), v, dims);
        rename.insert(name.clone(), n);
    }
    for node in &m.protos {
        let mut node: NodeProto = node.clone();
        for i in node.input.iter_mut() {
            if !i.is_empty() {
                *i = rename.get(i.as_str()).cloned().unwrap_or_else(|| i.clone());
            }
        }
        for o in node.output.iter_mut() {
            if !o.is_empty() {
                let fresh = ex.fresh(&format!("{}_output", node.op_type));
                rename.insert(o.clone(), fresh.clone());
                *o = fresh;
            }
        }
        node.name = ex.fresh(&node.op_type);
        ex.push_node(node);
    }
    Some(Ok(rename[&m.outputs[0]].clone()))
}
