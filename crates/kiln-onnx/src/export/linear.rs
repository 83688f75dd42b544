//! `Linear`: `Gemm` for a 2-d input, `MatMul` + `Add` for more axes (as `torch.onnx.export`).

use kiln_nn::{Layer, Linear};

use super::{attr_i, attr_ints, Exporter, Value};
use crate::error::OnnxError;

register_export!(Linear => linear);

/// `Linear` -> `Gemm(x, W, b, transB=1)` for `[N, in]`, else `MatMul(x, Transpose(W)) + b`.
pub fn linear(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<Linear>()?;
    let w = ex.param(&format!("{prefix}weight"), &l.weight);
    let b = l.bias.as_ref().map(|b| ex.param(&format!("{prefix}bias"), b));
    let out = if x.example.ndim() == 2 {
        let mut inputs = vec![x.name.as_str(), w.as_str()];
        if let Some(b) = &b {
            inputs.push(b);
        }
        ex.node("Gemm", &inputs, vec![attr_i("transB", 1)])
    } else {
        let wt = ex.node("Transpose", &[&w], vec![attr_ints("perm", &[1, 0])]);
        let y = ex.node("MatMul", &[&x.name, &wt], vec![]);
        match &b {
            Some(b) => ex.node("Add", &[&y, b], vec![]),
            None => y,
        }
    };
    Some(Ok(out))
}
