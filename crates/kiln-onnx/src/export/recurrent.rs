//! LSTM, GRU and RNN -> ONNX's `LSTM`, `GRU` and `RNN` operators: one node per layer (both
//! directions in one node, `direction = "bidirectional"`), stacked layers chained as
//! `torch.onnx.export` chains them (`Y [seq, dirs, batch, H]` -> `Transpose` -> `Reshape` to
//! `[seq, batch, dirs * H]`), the final states concatenated over the layers.
//!
//! Gate order: PyTorch (and kiln) stack the LSTM gates as (i, f, g, o), ONNX as (i, o, f, c)
//! with c = g; the GRU gates as (r, z, n), ONNX as (z, r, h), and PyTorch's
//! `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))` is ONNX's `linear_before_reset = 1`. The
//! rows of every weight and bias are reordered here, once, into the initializers
//! `{prefix}W_l{k}`, `{prefix}R_l{k}`, `{prefix}B_l{k}` (`[dirs, gates * H, in]`,
//! `[dirs, gates * H, H]`, `[dirs, 2 * gates * H]`).
//!
//! kiln's recurrent layers return `(output, states)`, not one value, so they are not
//! [`Layer`](kiln_nn::Layer)s the registry converts on their own: a model that holds one (a
//! `#[derive(Module)]` struct whose `forward` keeps the output, or the last hidden state) exports
//! through a converter of its own that calls [`recurrent`] for the recurrent field and converts
//! the rest as usual (see `tests/export_recurrent.rs`). The layer is read through its
//! parameters' `state_dict` keys (`weight_ih_l0`, `bias_hh_l1_reverse`, ...), so any module with
//! PyTorch's recurrent layout exports.

use std::collections::HashMap;

use kiln_autograd::Var;
use kiln_nn::Module;
use kiln_tensor::Tensor;

use super::{attr_i, attr_ints, attr_s, attr_strings, Exporter, Value};
use crate::error::OnnxError;

/// Which recurrence, as PyTorch's `nn.LSTM`, `nn.GRU` and `nn.RNN(nonlinearity=...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecurrentKind {
    /// `LSTM` (four gates; a cell state).
    Lstm,
    /// `GRU` (three gates).
    Gru,
    /// `RNN` with `tanh`.
    RnnTanh,
    /// `RNN` with `relu`.
    RnnRelu,
}

impl RecurrentKind {
    /// The ONNX operator.
    fn op(self) -> &'static str {
        match self {
            RecurrentKind::Lstm => "LSTM",
            RecurrentKind::Gru => "GRU",
            RecurrentKind::RnnTanh | RecurrentKind::RnnRelu => "RNN",
        }
    }

    /// For each ONNX gate block, the PyTorch gate block it comes from.
    fn onnx_order(self) -> &'static [usize] {
        match self {
            // PyTorch i, f, g, o -> ONNX i, o, f, c
            RecurrentKind::Lstm => &[0, 3, 1, 2],
            // PyTorch r, z, n -> ONNX z, r, h
            RecurrentKind::Gru => &[1, 0, 2],
            RecurrentKind::RnnTanh | RecurrentKind::RnnRelu => &[0],
        }
    }
}

/// The ONNX value names of a converted recurrent layer, as PyTorch's `(output, h_n)` or
/// `(output, (h_n, c_n))`.
#[derive(Clone, Debug)]
pub struct RecurrentOutputs {
    /// `[seq, batch, dirs * H]` (`[batch, seq, dirs * H]` when batch-first).
    pub output: String,
    /// `[layers * dirs, batch, H]`, ordered `l0, l0_reverse, l1, ...` as PyTorch's.
    pub h_n: String,
    /// The LSTM's cell state, shaped as `h_n`; `None` for GRU and RNN.
    pub c_n: Option<String>,
}

/// The rows of `t` (`[gates * h, cols]` or `[gates * h]`) with the gate blocks in `order`.
fn reorder_gates(t: &Tensor<f32>, order: &[usize], h: usize) -> Vec<f32> {
    let v = t.contiguous().to_vec();
    let block = v.len() / order.len();
    debug_assert_eq!(block % h, 0);
    order.iter().flat_map(|&g| v[g * block..(g + 1) * block].iter().copied()).collect()
}

/// Converts the recurrent layer `module` (an LSTM, GRU or RNN with PyTorch's parameter names,
/// keyed `prefix` in the model, `""` or ending in `.`) applied to `x` (`[seq, batch, input]`, or
/// `[batch, seq, input]` when `batch_first`) from zero initial states. The layer must be in
/// evaluation mode (its dropout between layers is then the identity).
///
/// # Errors
/// [`OnnxError::UnsupportedLayer`] when the parameters are not a recurrent layer's of this
/// kind (names, shapes), the module is training, or `x` is not 3-d.
pub fn recurrent(
    ex: &mut Exporter,
    module: &dyn Module<f32>,
    kind: RecurrentKind,
    batch_first: bool,
    prefix: &str,
    x: &Value,
) -> Result<RecurrentOutputs, OnnxError> {
    let op = kind.op();
    let fail = |reason: String| OnnxError::UnsupportedLayer {
        path: prefix.trim_end_matches('.').to_string(),
        layer: op.to_string(),
        reason,
    };
    if module.is_training() {
        return Err(fail("the layer is in training mode; call eval() before exporting".into()));
    }
    if x.example.ndim() != 3 {
        return Err(fail(format!(
            "the input must be 3-d ([seq, batch, input] or batch-first), got {:?}",
            x.example.shape()
        )));
    }
    let params: HashMap<String, Var<f32>> = module.named_parameters().into_iter().collect();
    if let Some(extra) = params.keys().find(|k| !k.starts_with("weight_") && !k.starts_with("bias_")) {
        return Err(fail(format!("unexpected parameter {extra:?} for a plain {op}")));
    }
    if params.keys().any(|k| k.starts_with("weight_hr")) {
        return Err(fail("LSTM projections (proj_size) have no ONNX LSTM equivalent".into()));
    }
    let hh = params.get("weight_hh_l0").ok_or_else(|| fail("no parameter weight_hh_l0".into()))?;
    let gates = kind.onnx_order().len();
    let (rows, h) = (hh.shape()[0], hh.shape()[1]);
    if rows != gates * h {
        return Err(fail(format!("weight_hh_l0 is {:?}, not [{gates} * hidden, hidden] as a {op}'s", hh.shape())));
    }
    let layers = (0..).take_while(|k| params.contains_key(&format!("weight_ih_l{k}"))).count();
    let bidirectional = params.contains_key("weight_ih_l0_reverse");
    let dirs: &[&str] = if bidirectional { &["", "_reverse"] } else { &[""] };
    let has_bias = params.contains_key("bias_ih_l0");
    let expected = layers * dirs.len() * if has_bias { 4 } else { 2 };
    if params.len() != expected {
        return Err(fail(format!(
            "{} parameters, expected {expected} for {layers} layer(s), {} direction(s){}",
            params.len(),
            dirs.len(),
            if has_bias { " with biases" } else { "" }
        )));
    }

    let mut input = if batch_first {
        ex.node("Transpose", &[&x.name], vec![attr_ints("perm", &[1, 0, 2])])
    } else {
        x.name.clone()
    };
    let (mut hs, mut cs) = (vec![], vec![]);
    for k in 0..layers {
        let get = |name: String| params.get(&name).ok_or_else(|| fail(format!("no parameter {name}")));
        let (mut w, mut r, mut b) = (vec![], vec![], vec![]);
        let mut in_features = 0;
        for d in dirs {
            let wi = get(format!("weight_ih_l{k}{d}"))?.value();
            let wh = get(format!("weight_hh_l{k}{d}"))?.value();
            if wi.ndim() != 2 || wi.shape()[0] != gates * h || wh.shape() != [gates * h, h] {
                return Err(fail(format!("layer {k}{d}: weight_ih {:?}, weight_hh {:?}", wi.shape(), wh.shape())));
            }
            in_features = wi.shape()[1];
            w.extend(reorder_gates(&wi, kind.onnx_order(), h));
            r.extend(reorder_gates(&wh, kind.onnx_order(), h));
            if has_bias {
                let bi = get(format!("bias_ih_l{k}{d}"))?.value();
                let bh = get(format!("bias_hh_l{k}{d}"))?.value();
                b.extend(reorder_gates(&bi, kind.onnx_order(), h));
                b.extend(reorder_gates(&bh, kind.onnx_order(), h));
            }
        }
        let nd = dirs.len();
        let w = ex.initializer(&format!("{prefix}W_l{k}"), &Tensor::from_vec(w, &[nd, gates * h, in_features]));
        let r = ex.initializer(&format!("{prefix}R_l{k}"), &Tensor::from_vec(r, &[nd, gates * h, h]));
        let mut inputs = vec![input.as_str(), w.as_str(), r.as_str()];
        let b =
            has_bias.then(|| ex.initializer(&format!("{prefix}B_l{k}"), &Tensor::from_vec(b, &[nd, 2 * gates * h])));
        if let Some(b) = &b {
            inputs.push(b);
        }
        let mut attrs = vec![
            attr_i("hidden_size", h as i64),
            attr_s("direction", if bidirectional { "bidirectional" } else { "forward" }),
        ];
        match kind {
            RecurrentKind::Gru => attrs.push(attr_i("linear_before_reset", 1)),
            RecurrentKind::RnnTanh => attrs.push(attr_strings("activations", &["Tanh", "Tanh"][..nd])),
            RecurrentKind::RnnRelu => attrs.push(attr_strings("activations", &["Relu", "Relu"][..nd])),
            RecurrentKind::Lstm => {}
        }
        let outs = ex.node_n(op, &inputs, attrs, if kind == RecurrentKind::Lstm { 3 } else { 2 });
        // Y [seq, dirs, batch, H] -> [seq, batch, dirs * H]
        let y = ex.node("Transpose", &[&outs[0]], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let shape = ex.const_i64("rnn_output_shape", &[0, 0, -1]);
        input = ex.node("Reshape", &[&y, &shape], vec![]);
        hs.push(outs[1].clone());
        if kind == RecurrentKind::Lstm {
            cs.push(outs[2].clone());
        }
    }
    let output = if batch_first { ex.node("Transpose", &[&input], vec![attr_ints("perm", &[1, 0, 2])]) } else { input };
    let mut concat = |parts: &[String]| -> String {
        if parts.len() == 1 {
            parts[0].clone()
        } else {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            ex.node("Concat", &refs, vec![attr_i("axis", 0)])
        }
    };
    let h_n = concat(&hs);
    let c_n = (!cs.is_empty()).then(|| concat(&cs));
    Ok(RecurrentOutputs { output, h_n, c_n })
}
