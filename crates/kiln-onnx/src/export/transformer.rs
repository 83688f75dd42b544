//! `TransformerEncoderLayer` and `TransformerEncoder` (opset 17, for LayerNormalization):
//! self-attention written out in primitive ops (MatMul, Reshape, Transpose, Softmax) with a
//! dynamic batch, then the feed-forward block and the norms through their own converters.

use kiln_nn::{Layer, Module, TransformerActivation, TransformerEncoder, TransformerEncoderLayer};
use kiln_tensor::Tensor;

use super::{attr_i, attr_ints, unsupported, Exporter, Value};
use crate::error::OnnxError;

register_export!(
    TransformerEncoderLayer => transformer_encoder_layer,
    TransformerEncoder => transformer_encoder,
);

/// A value of the given shape whose example only carries the shape (enough for the
/// converters, which read shapes and not values).
fn shaped(name: String, shape: &[usize]) -> Value {
    Value { name, example: Tensor::zeros(shape) }
}

/// `softmax(Q Kᵀ / √d) V` over `nhead` heads, then the output projection, for `x` as
/// `[N, L, E]`; returns the `[N, L, E]` result.
fn self_attention(
    l: &TransformerEncoderLayer,
    ex: &mut Exporter,
    prefix: &str,
    x: &str,
    shape: &[usize],
) -> Result<String, OnnxError> {
    let a = &l.self_attn;
    let (e, h) = (a.config.embed_dim, a.config.num_heads);
    let d = e / h;
    let w = ex.param(&format!("{prefix}self_attn.in_proj_weight"), &a.in_proj_weight);
    let wt = ex.node("Transpose", &[&w], vec![attr_ints("perm", &[1, 0])]);
    let mut qkv = ex.node("MatMul", &[x, &wt], vec![]);
    if let Some(b) = &a.in_proj_bias {
        let b = ex.param(&format!("{prefix}self_attn.in_proj_bias"), b);
        qkv = ex.node("Add", &[&qkv, &b], vec![]);
    }
    // [N, L, 3E] -> [N, L, 3, H, D] -> [3, N, H, L, D]
    let s5 = ex.const_i64("qkv_shape", &[0, 0, 3, h as i64, d as i64]);
    let qkv = ex.node("Reshape", &[&qkv, &s5], vec![]);
    let qkv = ex.node("Transpose", &[&qkv], vec![attr_ints("perm", &[2, 0, 3, 1, 4])]);
    let mut parts = Vec::new();
    for i in 0..3 {
        let idx = ex.initializer_i64(&format!("/{prefix}qkv_index_{i}"), &[i], &[]);
        parts.push(ex.node("Gather", &[&qkv, &idx], vec![attr_i("axis", 0)]));
    }
    let kt = ex.node("Transpose", &[&parts[1]], vec![attr_ints("perm", &[0, 1, 3, 2])]);
    let scores = ex.node("MatMul", &[&parts[0], &kt], vec![]);
    let scale = ex.const_f32("attn_scale", 1.0 / (d as f32).sqrt());
    let scores = ex.node("Mul", &[&scores, &scale], vec![]);
    let p = ex.node("Softmax", &[&scores], vec![attr_i("axis", -1)]);
    let o = ex.node("MatMul", &[&p, &parts[2]], vec![]);
    let o = ex.node("Transpose", &[&o], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let s3 = ex.const_i64("attn_out_shape", &[0, 0, e as i64]);
    let o = ex.node("Reshape", &[&o, &s3], vec![]);
    let v = ex.convert(&a.out_proj, &format!("{prefix}self_attn.out_proj."), &shaped(o, shape))?;
    Ok(v.name)
}

fn encoder_layer(l: &TransformerEncoderLayer, ex: &mut Exporter, prefix: &str, x: &Value) -> Result<String, OnnxError> {
    let layer: &dyn Layer<f32> = l;
    if ex.opset < 17 {
        return Err(unsupported(
            layer,
            prefix,
            format!("LayerNormalization needs opset >= 17, exporting {}", ex.opset),
        ));
    }
    if Module::<f32>::is_training(l) && l.config.dropout > 0.0 {
        return Err(unsupported(layer, prefix, "the layer is in training mode (dropout); call model.eval() first"));
    }
    if l.self_attn.has_unmerged_adapter() || l.linear1.has_unmerged_adapter() || l.linear2.has_unmerged_adapter() {
        return Err(unsupported(
            layer,
            prefix,
            "has unmerged LoRA adapters; call kiln_nn::lora::merge(&mut model) first",
        ));
    }
    let c = &l.config;
    let in_shape = x.example.shape().to_vec();
    if in_shape.len() != 3 {
        return Err(unsupported(
            layer,
            prefix,
            format!("exports batched [N, L, E] / [L, N, E] input, got {in_shape:?}"),
        ));
    }
    // work batch-first: [N, L, E]
    let (src, shape) = if c.batch_first {
        (x.name.clone(), in_shape.clone())
    } else {
        let t = ex.node("Transpose", &[&x.name], vec![attr_ints("perm", &[1, 0, 2])]);
        (t, vec![in_shape[1], in_shape[0], in_shape[2]])
    };
    let conv =
        |ex: &mut Exporter, sub: &dyn Layer<f32>, key: &str, v: &str, s: &[usize]| -> Result<String, OnnxError> {
            Ok(ex.convert(sub, &format!("{prefix}{key}."), &shaped(v.to_string(), s))?.name)
        };
    let ff = |ex: &mut Exporter, v: &str| -> Result<String, OnnxError> {
        let hdim = [shape[0], shape[1], c.dim_feedforward];
        let h = conv(ex, &l.linear1.base, "linear1", v, &shape)?;
        let h = match c.activation {
            TransformerActivation::Relu => ex.node("Relu", &[&h], vec![]),
            TransformerActivation::Gelu => ex.convert(&kiln_nn::GELU::default(), prefix, &shaped(h, &hdim))?.name,
        };
        conv(ex, &l.linear2.base, "linear2", &h, &hdim)
    };
    let out = if c.norm_first {
        let n1 = conv(ex, &l.norm1, "norm1", &src, &shape)?;
        let sa = self_attention(l, ex, prefix, &n1, &shape)?;
        let x1 = ex.node("Add", &[&src, &sa], vec![]);
        let n2 = conv(ex, &l.norm2, "norm2", &x1, &shape)?;
        let f = ff(ex, &n2)?;
        ex.node("Add", &[&x1, &f], vec![])
    } else {
        let sa = self_attention(l, ex, prefix, &src, &shape)?;
        let r1 = ex.node("Add", &[&src, &sa], vec![]);
        let x1 = conv(ex, &l.norm1, "norm1", &r1, &shape)?;
        let f = ff(ex, &x1)?;
        let r2 = ex.node("Add", &[&x1, &f], vec![]);
        conv(ex, &l.norm2, "norm2", &r2, &shape)?
    };
    Ok(if c.batch_first { out } else { ex.node("Transpose", &[&out], vec![attr_ints("perm", &[1, 0, 2])]) })
}

/// `TransformerEncoderLayer` (eval, no masks) -> self-attention + feed-forward subgraph.
pub fn transformer_encoder_layer(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let l = layer.downcast_ref::<TransformerEncoderLayer>()?;
    Some(encoder_layer(l, ex, prefix, x))
}

/// `TransformerEncoder` -> its layers (`layers.{i}.`) in turn, then the optional final norm.
pub fn transformer_encoder(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let enc = layer.downcast_ref::<TransformerEncoder>()?;
    let mut name = x.name.clone();
    for (i, l) in enc.layers.iter().enumerate() {
        let v = Value { name, example: x.example.clone() };
        name = match encoder_layer(l, ex, &format!("{prefix}layers.{i}."), &v) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
    }
    if let Some(norm) = &enc.norm {
        let v = Value { name, example: x.example.clone() };
        return Some(ex.convert(norm, &format!("{prefix}norm."), &v).map(|v| v.name));
    }
    Some(Ok(name))
}

#[cfg(test)]
mod tests {
    use kiln_nn::lora::{self, LoraConfig};
    use kiln_nn::{Module, Sequential, TransformerEncoder, TransformerEncoderLayerConfig};
    use kiln_tensor::Tensor;

    use crate::export::{export_model, ExportOptions};

    /// The exporter reads the base weights: an unmerged LoRA adapter is refused, a merged one
    /// exports.
    #[test]
    fn lora_adapters_export_once_merged() {
        let layer = TransformerEncoderLayerConfig { dim_feedforward: 12, ..TransformerEncoderLayerConfig::new(8, 2) };
        let mut model = Sequential::new().add(TransformerEncoder::new(layer.build().unwrap(), 1, None));
        let cfg = LoraConfig { r: 2, target_modules: vec!["linear1".into()], ..Default::default() };
        lora::inject(&mut model, &cfg).unwrap();
        model.eval();
        let x = Tensor::ones(&[3, 1, 8]);
        let err = export_model(&model, &x, &ExportOptions::default()).unwrap_err();
        assert!(err.to_string().contains("unmerged LoRA adapters"), "{err}");
        lora::merge(&mut model);
        export_model(&model, &x, &ExportOptions::default()).unwrap();
    }
}
