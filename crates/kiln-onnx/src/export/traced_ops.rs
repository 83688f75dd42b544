//! The conversions of traced ops (by the name kiln records, `Var::op_name`) to ONNX nodes,
//! one function (or one line) each, listed in [`CONVERSIONS`]. An op missing here is a typed
//! error of [`export_traced`](super::export_traced) naming it.

use kiln_autograd::TraceAttr;
use kiln_tensor::Tensor;

use super::activation::{gelu_nodes, softplus_nodes};
use super::traced::{TracedConverter, TracedNode, TracedValue};
use super::{attr_f, attr_i, attr_ints, attr_s, Exporter};
use crate::error::OnnxError;
use crate::proto::data_type;

type R = Result<String, OnnxError>;

macro_rules! unary {
    ($onnx:literal) => {
        |ex: &mut Exporter, n: &TracedNode<'_>| -> R { Ok(ex.node($onnx, &[n.input(0)], vec![])) }
    };
}
macro_rules! binary {
    ($onnx:literal) => {
        |ex: &mut Exporter, n: &TracedNode<'_>| -> R { Ok(ex.node($onnx, &[n.input(0), n.input(1)], vec![])) }
    };
}

/// Every traced op kiln can export, by its recorded name.
static CONVERSIONS: &[(&str, TracedConverter)] = &[
    ("add", binary!("Add")),
    ("sub", binary!("Sub")),
    ("mul", binary!("Mul")),
    ("div", binary!("Div")),
    ("pow", binary!("Pow")),
    ("maximum", binary!("Max")),
    ("minimum", binary!("Min")),
    ("matmul", binary!("MatMul")),
    ("neg", unary!("Neg")),
    ("exp", unary!("Exp")),
    ("log", unary!("Log")),
    ("sqrt", unary!("Sqrt")),
    ("abs", unary!("Abs")),
    ("sign", unary!("Sign")),
    ("sin", unary!("Sin")),
    ("cos", unary!("Cos")),
    ("tanh", unary!("Tanh")),
    ("sigmoid", unary!("Sigmoid")),
    ("relu", unary!("Relu")),
    ("reciprocal", unary!("Reciprocal")),
    ("rsqrt", rsqrt),
    ("square", |ex, n| Ok(ex.node("Mul", &[n.input(0), n.input(0)], vec![]))),
    ("expm1", expm1),
    ("log1p", log1p),
    ("silu", silu),
    ("gelu", |ex, n| Ok(gelu_nodes(ex, n.input(0), false))),
    ("gelu_tanh", |ex, n| Ok(gelu_nodes(ex, n.input(0), true))),
    ("softplus", |ex, n| Ok(softplus_nodes(ex, n.input(0), n.float("beta")?, n.float("threshold")?))),
    ("leaky_relu", |ex, n| Ok(ex.node("LeakyRelu", &[n.input(0)], vec![attr_f("alpha", n.float("alpha")? as f32)]))),
    ("elu", |ex, n| Ok(ex.node("Elu", &[n.input(0)], vec![attr_f("alpha", n.float("alpha")? as f32)]))),
    ("clamp", clamp),
    ("add_scalar", |ex, n| scalar(ex, n, "Add")),
    ("mul_scalar", |ex, n| scalar(ex, n, "Mul")),
    ("rdiv_scalar", rdiv_scalar),
    ("powf", powf),
    ("softmax", |ex, n| along(ex, n, "Softmax")),
    ("log_softmax", |ex, n| along(ex, n, "LogSoftmax")),
    ("reshape", reshape),
    ("flatten", reshape),
    ("squeeze", reshape),
    ("squeeze_dim", reshape),
    ("unsqueeze", reshape),
    ("contiguous", |_, n| Ok(n.input(0).to_string())),
    ("expand", expand),
    ("permute", permute),
    ("transpose", transpose),
    ("t", t),
    ("slice", slice),
    ("select", select),
    ("flip", flip),
    ("cat", cat),
    ("stack", stack),
    ("sum", |ex, n| reduce_op(ex, n, "ReduceSum")),
    ("max", |ex, n| reduce_op(ex, n, "ReduceMax")),
    ("min", |ex, n| reduce_op(ex, n, "ReduceMin")),
    ("logsumexp", |ex, n| reduce_op(ex, n, "ReduceLogSumExp")),
    ("var", var),
    ("linear", linear),
    ("conv1d", |ex, n| conv(ex, n, "Conv")),
    ("conv2d", |ex, n| conv(ex, n, "Conv")),
    ("conv_transpose2d", |ex, n| conv(ex, n, "ConvTranspose")),
    ("max_pool1d", max_pool),
    ("max_pool2d", max_pool),
    ("avg_pool1d", avg_pool),
    ("avg_pool2d", avg_pool),
    ("adaptive_avg_pool1d", adaptive_avg_pool),
    ("adaptive_avg_pool2d", adaptive_avg_pool),
    ("standardize_trailing", standardize_trailing),
    ("embedding", embedding),
    ("index_select", index_select),
    ("gather", gather),
    ("masked_fill", masked_fill),
    ("where_", where_),
    ("pad", pad),
    ("repeat", repeat),
    ("norm", norm),
    ("multi_head_attention", multi_head_attention),
    ("packed_self_attention", packed_self_attention),
    ("lstm_sequence", lstm_sequence),
];

/// The conversion of the traced op `op`, if kiln has one.
pub(super) fn converter(op: &str) -> Option<TracedConverter> {
    CONVERSIONS.iter().find(|(name, _)| *name == op).map(|&(_, f)| f)
}

/// The names of every traced op [`export_traced`](super::export_traced) converts.
pub fn traced_ops() -> impl Iterator<Item = &'static str> {
    CONVERSIONS.iter().map(|&(name, _)| name)
}

/// `d` (negative from the end) as an axis of a rank-`nd` value.
fn axis(d: i64, nd: usize) -> usize {
    (if d < 0 { d + nd as i64 } else { d }) as usize
}

fn rsqrt(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let s = ex.node("Sqrt", &[n.input(0)], vec![]);
    Ok(ex.node("Reciprocal", &[&s], vec![]))
}

fn expm1(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let e = ex.node("Exp", &[n.input(0)], vec![]);
    let one = ex.const_f32("one", 1.0);
    Ok(ex.node("Sub", &[&e, &one], vec![]))
}

fn log1p(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let one = ex.const_f32("one", 1.0);
    let s = ex.node("Add", &[n.input(0), &one], vec![]);
    Ok(ex.node("Log", &[&s], vec![]))
}

fn silu(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let s = ex.node("Sigmoid", &[n.input(0)], vec![]);
    Ok(ex.node("Mul", &[n.input(0), &s], vec![]))
}

fn clamp(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let (lo, hi) = (n.float("min")?, n.float("max")?);
    let lo = if lo.is_finite() { ex.const_f32("clamp_min", lo as f32) } else { String::new() };
    let hi = if hi.is_finite() { ex.const_f32("clamp_max", hi as f32) } else { String::new() };
    let mut inputs = vec![n.input(0), lo.as_str()];
    if !hi.is_empty() {
        inputs.push(&hi);
    }
    Ok(ex.node("Clip", &inputs, vec![]))
}

fn scalar(ex: &mut Exporter, n: &TracedNode<'_>, op: &str) -> R {
    let s = ex.const_f32("scalar", n.float("scalar")? as f32);
    Ok(ex.node(op, &[n.input(0), &s], vec![]))
}

fn rdiv_scalar(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let s = ex.const_f32("scalar", n.float("scalar")? as f32);
    Ok(ex.node("Div", &[&s, n.input(0)], vec![]))
}

fn powf(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let e = n.float("exponent")?;
    if e == 2.0 {
        return Ok(ex.node("Mul", &[n.input(0), n.input(0)], vec![]));
    }
    let e = ex.const_f32("exponent", e as f32);
    Ok(ex.node("Pow", &[n.input(0), &e], vec![]))
}

/// Softmax and log-softmax: along one axis (opset 13 semantics).
fn along(ex: &mut Exporter, n: &TracedNode<'_>, op: &str) -> R {
    let d = axis(n.int("dim")?, n.inputs[0].ndim());
    Ok(ex.node(op, &[n.input(0)], vec![attr_i("axis", d as i64)]))
}

/// The target shape of a `Reshape` of `x` to the node's output: the example's sizes, with the
/// batch-dependent axes copied from `x` (`0`) where they line up, else inferred (`-1`, once).
fn target_shape(n: &TracedNode<'_>, x: &TracedValue) -> Result<Vec<i64>, OnnxError> {
    let out = &n.output;
    let mut t: Vec<i64> = out.shape.iter().map(|&d| d as i64).collect();
    if let Some(&z) = out.shape.iter().find(|&&d| d == 0) {
        return Err(n.error(format!("a reshape to {:?} has an axis of size {z}", out.shape)));
    }
    let (Some(s2), Some(x2)) = (&out.shape2, &x.shape2) else { return Ok(t) };
    let mut infer = vec![];
    for j in 0..t.len() {
        if s2[j] == out.shape[j] {
            continue;
        }
        if j < x.ndim() && x.shape[j] == out.shape[j] && x2[j] == s2[j] {
            t[j] = 0;
        } else {
            infer.push(j);
        }
    }
    match infer[..] {
        [] => {}
        [j] => t[j] = -1,
        _ => {
            return Err(n.error(format!(
                "the reshape of {:?} to {:?} has several axes that depend on the batch ({infer:?}); export with dynamic_batch: false",
                x.shape, out.shape
            )))
        }
    }
    Ok(t)
}

fn reshape(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let t = target_shape(n, &n.inputs[0])?;
    if n.output.shape == n.inputs[0].shape && t.iter().all(|&d| d >= 0) {
        let same = n.output.shape2 == n.inputs[0].shape2;
        if same {
            return Ok(n.input(0).to_string());
        }
    }
    let c = ex.const_i64("shape", &t);
    Ok(ex.node("Reshape", &[n.input(0), &c], vec![]))
}

fn expand(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let x = &n.inputs[0];
    let out = &n.output;
    let lead = out.ndim() - x.ndim();
    let mut t: Vec<i64> = out.shape.iter().map(|&d| d as i64).collect();
    for (j, td) in t.iter_mut().enumerate() {
        if out.is_dynamic(j) {
            // 1 broadcasts to whatever the input has there, if the input carries the batch
            if j >= lead && x.is_dynamic(j - lead) {
                *td = 1;
            } else {
                return Err(n.error(format!(
                    "expanding {:?} to {:?} sizes axis {j} by the batch, which the input does not carry; export with dynamic_batch: false",
                    x.shape, out.shape
                )));
            }
        }
    }
    let c = ex.const_i64("expand_shape", &t);
    Ok(ex.node("Expand", &[n.input(0), &c], vec![]))
}

fn perm_node(ex: &mut Exporter, n: &TracedNode<'_>, perm: &[i64]) -> R {
    if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
        return Ok(n.input(0).to_string());
    }
    Ok(ex.node("Transpose", &[n.input(0)], vec![attr_ints("perm", perm)]))
}

fn permute(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let nd = n.inputs[0].ndim();
    let perm: Vec<i64> = n.ints("dims")?.iter().map(|&d| axis(d, nd) as i64).collect();
    perm_node(ex, n, &perm)
}

fn transpose(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let nd = n.inputs[0].ndim();
    let (a, b) = (axis(n.int("dim0")?, nd), axis(n.int("dim1")?, nd));
    let mut perm: Vec<i64> = (0..nd as i64).collect();
    perm.swap(a, b);
    perm_node(ex, n, &perm)
}

fn t(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    if n.inputs[0].ndim() < 2 {
        return Ok(n.input(0).to_string());
    }
    perm_node(ex, n, &[1, 0])
}

/// A `Slice` of input 0 along `axes`.
fn slice_node(
    ex: &mut Exporter,
    n: &TracedNode<'_>,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> String {
    let s = ex.const_i64("starts", starts);
    let e = ex.const_i64("ends", ends);
    let a = ex.const_i64("axes", axes);
    let st = ex.const_i64("steps", steps);
    ex.node("Slice", &[n.input(0), &s, &e, &a, &st], vec![])
}

fn slice(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let x = &n.inputs[0];
    let d = axis(n.int("dim")?, x.ndim());
    let (start, step) = (n.int("start")?, n.int("step")?);
    let size = x.shape[d] as i64;
    let end = n.int("end")?.min(size);
    if start == 0 && end == size && step == 1 {
        return Ok(n.input(0).to_string());
    }
    if x.is_dynamic(d) {
        return Err(n.error(format!(
            "slicing {start}..{end} of axis {d}, whose size depends on the batch; export with dynamic_batch: false"
        )));
    }
    Ok(slice_node(ex, n, &[start], &[end], &[d as i64], &[step]))
}

fn select(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let x = &n.inputs[0];
    let d = axis(n.int("dim")?, x.ndim());
    if x.is_dynamic(d) {
        return Err(n.error(format!(
            "selecting from axis {d}, whose size depends on the batch; export with dynamic_batch: false"
        )));
    }
    let name = ex.fresh("index");
    let i = ex.initializer_i64(&name, &[n.int("index")?], &[]);
    Ok(ex.node("Gather", &[n.input(0), &i], vec![attr_i("axis", d as i64)]))
}

fn flip(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let nd = n.inputs[0].ndim();
    let axes: Vec<i64> = n.ints("dims")?.iter().map(|&d| axis(d, nd) as i64).collect();
    let k = axes.len();
    Ok(slice_node(ex, n, &vec![-1; k], &vec![i64::MIN; k], &axes, &vec![-1; k]))
}

fn cat(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let d = axis(n.int("dim")?, n.output.ndim());
    let inputs: Vec<&str> = n.inputs.iter().map(|v| v.name.as_str()).collect();
    Ok(ex.node("Concat", &inputs, vec![attr_i("axis", d as i64)]))
}

fn stack(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let d = axis(n.int("dim")?, n.output.ndim()) as i64;
    let mut parts = vec![];
    for v in &n.inputs {
        let a = ex.const_i64("axes", &[d]);
        parts.push(ex.node("Unsqueeze", &[&v.name, &a], vec![]));
    }
    let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(ex.node("Concat", &inputs, vec![attr_i("axis", d)]))
}

/// A `Reduce*` over `axes` (all when empty): the axes are an input for `ReduceSum` from opset
/// 13 and for the others from opset 18, an attribute before.
fn reduce(ex: &mut Exporter, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
    let mut attrs = vec![attr_i("keepdims", keepdims as i64)];
    let as_input = op == "ReduceSum" || ex.opset >= 18;
    if axes.is_empty() {
        return ex.node(op, &[x], attrs);
    }
    if as_input {
        let a = ex.const_i64("axes", axes);
        ex.node(op, &[x, &a], attrs)
    } else {
        attrs.push(attr_ints("axes", axes));
        ex.node(op, &[x], attrs)
    }
}

fn reduce_op(ex: &mut Exporter, n: &TracedNode<'_>, op: &str) -> R {
    let nd = n.inputs[0].ndim();
    let mut axes: Vec<i64> = n.ints("axes")?.iter().map(|&d| axis(d, nd) as i64).collect();
    axes.sort_unstable();
    axes.dedup();
    if nd == 0 {
        return Ok(n.input(0).to_string());
    }
    Ok(reduce(ex, op, n.input(0), &axes, n.int("keepdim")? != 0))
}

/// `linear(x, w, b)`: `Gemm` for a 2-d input, else `MatMul` by the transposed weight plus the
/// bias (as `torch.onnx.export` writes `F.linear`).
fn linear(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    if n.inputs[0].ndim() == 2 && n.inputs[1].ndim() == 2 {
        let inputs: Vec<&str> = n.inputs.iter().map(|v| v.name.as_str()).collect();
        return Ok(ex.node("Gemm", &inputs, vec![attr_i("transB", 1)]));
    }
    let wt = ex.node("Transpose", &[n.input(1)], vec![attr_ints("perm", &[1, 0])]);
    let y = ex.node("MatMul", &[n.input(0), &wt], vec![]);
    Ok(match n.inputs.get(2) {
        Some(b) => ex.node("Add", &[&y, &b.name], vec![]),
        None => y,
    })
}

fn conv(ex: &mut Exporter, n: &TracedNode<'_>, op: &str) -> R {
    let w = &n.inputs[1];
    let kernel: Vec<i64> = w.shape[2..].iter().map(|&d| d as i64).collect();
    let pad = n.ints("padding")?;
    let pads: Vec<i64> = pad.iter().chain(&pad).copied().collect();
    let mut attrs = vec![
        attr_ints("kernel_shape", &kernel),
        attr_ints("strides", &n.ints("stride")?),
        attr_ints("pads", &pads),
        attr_ints("dilations", &n.ints("dilation")?),
        attr_i("group", n.int("groups")?),
    ];
    if op == "ConvTranspose" {
        attrs.push(attr_ints("output_padding", &n.ints("output_padding")?));
    }
    let inputs: Vec<&str> = n.inputs.iter().map(|v| v.name.as_str()).collect();
    Ok(ex.node(op, &inputs, attrs))
}

fn max_pool(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let pad = n.ints("padding")?;
    let pads: Vec<i64> = pad.iter().chain(&pad).copied().collect();
    let attrs = vec![
        attr_ints("kernel_shape", &n.ints("kernel")?),
        attr_ints("strides", &n.ints("stride")?),
        attr_ints("pads", &pads),
        attr_ints("dilations", &n.ints("dilation")?),
        attr_i("ceil_mode", n.int("ceil_mode")?),
    ];
    Ok(ex.node("MaxPool", &[n.input(0)], attrs))
}

fn avg_pool(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    if n.attrs()?.int("divisor_override").is_some_and(|d| d >= 0) {
        return Err(n.error("divisor_override has no ONNX AveragePool equivalent"));
    }
    let pad = n.ints("padding")?;
    let pads: Vec<i64> = pad.iter().chain(&pad).copied().collect();
    let attrs = vec![
        attr_ints("kernel_shape", &n.ints("kernel")?),
        attr_ints("strides", &n.ints("stride")?),
        attr_ints("pads", &pads),
        attr_i("ceil_mode", n.int("ceil_mode")?),
        attr_i("count_include_pad", n.int("count_include_pad")?),
    ];
    Ok(ex.node("AveragePool", &[n.input(0)], attrs))
}

/// Adaptive average pooling: `GlobalAveragePool` to size 1, an `AveragePool` when every input
/// size is a multiple of the output's (the bins do not overlap), otherwise not exportable.
fn adaptive_avg_pool(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let out = n.ints("output_size")?;
    if out.iter().all(|&o| o == 1) {
        return Ok(ex.node("GlobalAveragePool", &[n.input(0)], vec![]));
    }
    let x = &n.inputs[0];
    let spatial = &x.shape[x.ndim() - out.len()..];
    if spatial.iter().zip(&out).any(|(&i, &o)| o <= 0 || !(i as u64).is_multiple_of(o as u64)) {
        return Err(
            n.error(format!("input size {spatial:?} is not a multiple of the output size {out:?}: the bins overlap"))
        );
    }
    let k: Vec<i64> = spatial.iter().zip(&out).map(|(&i, &o)| i as i64 / o).collect();
    Ok(ex.node("AveragePool", &[n.input(0)], vec![attr_ints("kernel_shape", &k), attr_ints("strides", &k)]))
}

/// `(x - mean) / sqrt(var + eps)` over the trailing `ndim` axes: `LayerNormalization` with a
/// unit scale from opset 17, the formula in reductions before.
fn standardize_trailing(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let x = &n.inputs[0];
    let k = n.int("ndim")? as usize;
    let eps = n.float("eps")?;
    let nd = x.ndim();
    if (nd - k..nd).any(|d| x.is_dynamic(d)) {
        return Err(n.error("a normalised axis depends on the batch; export with dynamic_batch: false"));
    }
    if ex.opset >= 17 {
        let scale = ex.const_tensor("layer_norm_scale", &Tensor::ones(&x.shape[nd - k..]));
        return Ok(ex.node(
            "LayerNormalization",
            &[n.input(0), &scale],
            vec![attr_i("axis", -(k as i64)), attr_f("epsilon", eps as f32)],
        ));
    }
    let axes: Vec<i64> = (nd - k..nd).map(|d| d as i64).collect();
    let mean = reduce(ex, "ReduceMean", n.input(0), &axes, true);
    let d = ex.node("Sub", &[n.input(0), &mean], vec![]);
    let sq = ex.node("Mul", &[&d, &d], vec![]);
    let var = reduce(ex, "ReduceMean", &sq, &axes, true);
    let e = ex.const_f32("eps", eps as f32);
    let ve = ex.node("Add", &[&var, &e], vec![]);
    let sd = ex.node("Sqrt", &[&ve], vec![]);
    Ok(ex.node("Div", &[&d, &sd], vec![]))
}

/// The ids an embedding recorded, as `(shape, values)`.
fn ids_of(attrs: Option<&kiln_autograd::TraceOp>) -> Option<(&[usize], &[f64])> {
    match attrs?.get("ids")? {
        TraceAttr::Tensor { shape, data } => Some((shape, data)),
        _ => None,
    }
}

fn same_values(ids: (&[usize], &[f64]), t: &Tensor<f32>) -> bool {
    ids.0 == t.shape() && ids.1.iter().zip(t.to_vec()).all(|(&a, b)| a == b as f64)
}

/// An embedding lookup: `Gather` of the table's rows. The ids come either from the graph
/// input (an `Embedding` layer reads them from the input's values, so they are matched by
/// value, in both traces when the batch is dynamic: they are then fed as floats and cast), or
/// are a constant of the forward (positions), the same in both traces.
fn embedding(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let ids = ids_of(n.attrs).ok_or_else(|| n.error("the op recorded no ids"))?;
    let (input_name, x, x2) = n.graph_input;
    let from_input = same_values(ids, x)
        && match x2 {
            Some(x2) => ids_of(n.attrs2).is_some_and(|i2| same_values(i2, x2)),
            None => true,
        };
    let index = if from_input {
        ex.node("Cast", &[input_name], vec![attr_i("to", data_type::INT64 as i64)])
    } else {
        if x2.is_some() && ids_of(n.attrs2) != Some(ids) {
            return Err(n.error(
                "the ids are neither the graph input nor a constant (they change with the batch); pass them as the input",
            ));
        }
        let name = ex.fresh("ids");
        let v: Vec<i64> = ids.1.iter().map(|&i| i as i64).collect();
        ex.initializer_i64(&name, &v, ids.0)
    };
    Ok(ex.node("Gather", &[n.input(0), &index], vec![attr_i("axis", 0)]))
}

fn index_select(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let x = &n.inputs[0];
    let d = axis(n.int("dim")?, x.ndim());
    if x.is_dynamic(d) {
        return Err(n.error(format!(
            "selecting along axis {d}, whose size depends on the batch; export with dynamic_batch: false"
        )));
    }
    let index = n.ints("index")?;
    let name = ex.fresh("index");
    let i = ex.initializer_i64(&name, &index, &[index.len()]);
    Ok(ex.node("Gather", &[n.input(0), &i], vec![attr_i("axis", d as i64)]))
}

/// The constant tensor attribute `name` (a mask, an index) as `(shape, values)`; with a
/// dynamic batch it must be the same in both traces, or it cannot be a constant of the graph.
fn constant<'a>(n: &'a TracedNode<'_>, name: &str) -> Result<(&'a [usize], &'a [f64]), OnnxError> {
    let of = |op: Option<&'a kiln_autograd::TraceOp>| match op?.get(name)? {
        TraceAttr::Tensor { shape, data } => Some((shape.as_slice(), data.as_slice())),
        _ => None,
    };
    let value = of(n.attrs).ok_or_else(|| n.error(format!("attribute {name:?} missing")))?;
    if n.attrs2.is_some() && of(n.attrs2) != Some(value) {
        return Err(n.error(format!(
            "the {name} changes with the batch, so it cannot be a constant of the graph; export with dynamic_batch: false"
        )));
    }
    Ok(value)
}

/// A constant mask as an ONNX `BOOL` value (nonzero = true).
fn bool_mask(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let (shape, data) = constant(n, "mask")?;
    let mask = Tensor::from_vec(data.iter().map(|&v| if v != 0.0 { 1.0f32 } else { 0.0 }).collect(), shape);
    let m = ex.const_tensor("mask", &mask);
    Ok(ex.node("Cast", &[&m], vec![attr_i("to", data_type::BOOL as i64)]))
}

/// `var(axes, correction)`: the mean subtracted, the squares summed and divided by
/// `n - correction` (the two-pass formula kiln computes).
fn var(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let x = &n.inputs[0];
    let nd = x.ndim();
    let mut axes: Vec<i64> = n.ints("axes")?.iter().map(|&d| axis(d, nd) as i64).collect();
    if axes.is_empty() {
        axes = (0..nd as i64).collect();
    }
    axes.sort_unstable();
    axes.dedup();
    if axes.iter().any(|&d| x.is_dynamic(d as usize)) {
        return Err(n.error("the variance runs over the batch axis; export with dynamic_batch: false"));
    }
    let count: usize = axes.iter().map(|&d| x.shape[d as usize]).product();
    let correction = n.int("correction")? as usize;
    if count <= correction {
        return Err(n.error(format!("{count} elements per variance with correction {correction}: the result is NaN")));
    }
    let mean = reduce(ex, "ReduceMean", n.input(0), &axes, true);
    let d = ex.node("Sub", &[n.input(0), &mean], vec![]);
    let sq = ex.node("Mul", &[&d, &d], vec![]);
    let sum = reduce(ex, "ReduceSum", &sq, &axes, n.int("keepdim")? != 0);
    let divisor = ex.const_f32("dof", (count - correction) as f32);
    Ok(ex.node("Div", &[&sum, &divisor], vec![]))
}

/// `gather(dim, index)`: `GatherElements` with the index as a constant.
fn gather(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    if (0..n.output.ndim()).any(|d| n.output.is_dynamic(d)) {
        return Err(n.error(
            "the index is a constant of the trace but the output's size depends on the batch; export with dynamic_batch: false",
        ));
    }
    let (shape, data) = constant(n, "index")?;
    let d = axis(n.int("dim")?, n.inputs[0].ndim());
    let name = ex.fresh("gather_index");
    let values: Vec<i64> = data.iter().map(|&i| i as i64).collect();
    let index = ex.initializer_i64(&name, &values, shape);
    Ok(ex.node("GatherElements", &[n.input(0), &index], vec![attr_i("axis", d as i64)]))
}

/// `masked_fill(mask, value)`: `Where(mask, value, x)`.
fn masked_fill(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let mask = bool_mask(ex, n)?;
    let value = ex.const_f32("fill", n.float("value")? as f32);
    Ok(ex.node("Where", &[&mask, &value, n.input(0)], vec![]))
}

/// `a.where_(mask, b)`: `Where(mask, a, b)`.
fn where_(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let mask = bool_mask(ex, n)?;
    Ok(ex.node("Where", &[&mask, n.input(0), n.input(1)], vec![]))
}

/// `pad`: `Pad` with every axis's begin and end (kiln lists `(before, after)` pairs from the
/// last axis); constant, reflect or edge (kiln's replicate) mode.
fn pad(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let nd = n.inputs[0].ndim();
    let flat = n.ints("pads")?;
    let (mut begins, mut ends) = (vec![0i64; nd], vec![0i64; nd]);
    for (k, pair) in flat.chunks(2).enumerate() {
        begins[nd - 1 - k] = pair[0];
        ends[nd - 1 - k] = pair[1];
    }
    begins.extend(ends);
    let pads = ex.const_i64("pads", &begins);
    match n.int("mode")? {
        0 => {
            let value = ex.const_f32("pad_value", n.float("value")? as f32);
            Ok(ex.node("Pad", &[n.input(0), &pads, &value], vec![attr_s("mode", "constant")]))
        }
        1 => Ok(ex.node("Pad", &[n.input(0), &pads], vec![attr_s("mode", "reflect")])),
        2 => Ok(ex.node("Pad", &[n.input(0), &pads], vec![attr_s("mode", "edge")])),
        m => Err(n.error(format!("unknown pad mode {m}"))),
    }
}

/// `repeat(repeats)`: `Tile`, after `Unsqueeze` when there are more repeats than axes.
fn repeat(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let reps = n.ints("repeats")?;
    let lead = reps.len() - n.inputs[0].ndim();
    let x = if lead > 0 {
        let axes: Vec<i64> = (0..lead as i64).collect();
        let a = ex.const_i64("axes", &axes);
        ex.node("Unsqueeze", &[n.input(0), &a], vec![])
    } else {
        n.input(0).to_string()
    };
    let r = ex.const_i64("repeats", &reps);
    Ok(ex.node("Tile", &[&x, &r], vec![]))
}

/// `norm(p, axes)`: `ReduceL1` / `ReduceL2` for p = 1 / 2, `ReduceMax` of `Abs` for p = ∞,
/// `(Σ |x|^p)^(1/p)` otherwise.
fn norm(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let nd = n.inputs[0].ndim();
    let mut axes: Vec<i64> = n.ints("axes")?.iter().map(|&d| axis(d, nd) as i64).collect();
    if axes.is_empty() {
        axes = (0..nd as i64).collect();
    }
    axes.sort_unstable();
    axes.dedup();
    let keep = n.int("keepdim")? != 0;
    let p = n.float("p")?;
    Ok(if p == 1.0 {
        reduce(ex, "ReduceL1", n.input(0), &axes, keep)
    } else if p == 2.0 {
        reduce(ex, "ReduceL2", n.input(0), &axes, keep)
    } else {
        let a = ex.node("Abs", &[n.input(0)], vec![]);
        if p.is_infinite() {
            reduce(ex, "ReduceMax", &a, &axes, keep)
        } else {
            let pe = ex.const_f32("norm_p", p as f32);
            let powered = ex.node("Pow", &[&a, &pe], vec![]);
            let sum = reduce(ex, "ReduceSum", &powered, &axes, keep);
            let inv = ex.const_f32("norm_inv_p", (1.0 / p) as f32);
            ex.node("Pow", &[&sum, &inv], vec![])
        }
    })
}

/// The fused multi-head attention: per head `softmax(Q Kᵀ / √D) V` on `[N, H, L, D]` views of
/// `q` `[N, L, E]` and `k`, `v` `[N, S, E]` (`MatMul`, `Softmax`, `MatMul`, as
/// `torch.onnx.export` writes `scaled_dot_product_attention`).
fn attention_nodes(ex: &mut Exporter, q: &str, k: &str, v: &str, e: usize, heads: usize) -> String {
    let d = e / heads;
    let split = ex.const_i64("heads_shape", &[0, 0, heads as i64, d as i64]);
    let mut per_head = |x: &str, perm: &[i64]| {
        let r = ex.node("Reshape", &[x, &split], vec![]);
        ex.node("Transpose", &[&r], vec![attr_ints("perm", perm)])
    };
    let qh = per_head(q, &[0, 2, 1, 3]);
    let kt = per_head(k, &[0, 2, 3, 1]);
    let vh = per_head(v, &[0, 2, 1, 3]);
    let scores = ex.node("MatMul", &[&qh, &kt], vec![]);
    let scale = ex.const_f32("attention_scale", 1.0 / (d as f32).sqrt());
    let scaled = ex.node("Mul", &[&scores, &scale], vec![]);
    let probs = ex.node("Softmax", &[&scaled], vec![attr_i("axis", 3)]);
    let out = ex.node("MatMul", &[&probs, &vh], vec![]);
    let out = ex.node("Transpose", &[&out], vec![attr_ints("perm", &[0, 2, 1, 3])]);
    let merged = ex.const_i64("merged_shape", &[0, 0, e as i64]);
    ex.node("Reshape", &[&out, &merged], vec![])
}

fn multi_head_attention(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let heads = n.int("heads")? as usize;
    let e = n.inputs[0].shape[2];
    Ok(attention_nodes(ex, n.input(0), n.input(1), n.input(2), e, heads))
}

/// Self-attention from packed `[N, L, 3E]` projections: three `Slice`s, then the attention.
fn packed_self_attention(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    let heads = n.int("heads")? as usize;
    let e = n.inputs[0].shape[2] / 3;
    let [q, k, v] = [0, 1, 2].map(|i| slice_node(ex, n, &[(i * e) as i64], &[((i + 1) * e) as i64], &[2], &[1]));
    Ok(attention_nodes(ex, &q, &k, &v, e, heads))
}

/// kiln's fused LSTM recurrence (`xp.lstm_sequence(w_hh, h0, c0, ..)`, the input projection
/// `xp` `[T, B, 4H]` already applied): ONNX's `LSTM` on `xp` with an input weight that only
/// reorders the gates from kiln's (i, f, g, o) to ONNX's (i, o, f, c), the recurrent weight
/// gathered into that order, and the outputs stacked as kiln's `[T + 2, B, H]` (outputs,
/// `h_n`, `c_n`).
fn lstm_sequence(ex: &mut Exporter, n: &TracedNode<'_>) -> R {
    if n.int("rec_mask")? != 0 {
        return Err(n.error("recurrent dropout (training mode) has no ONNX equivalent; export the model in eval mode"));
    }
    let h = n.inputs[1].shape[1];
    let g4 = 4 * h;
    let order: Vec<i64> = [0usize, 3, 1, 2].iter().flat_map(|&k| (k * h..(k + 1) * h).map(|r| r as i64)).collect();
    let mut w = vec![0.0f32; g4 * g4];
    for (row, &src) in order.iter().enumerate() {
        w[row * g4 + src as usize] = 1.0;
    }
    let w = ex.const_tensor("lstm_gate_order_w", &Tensor::from_vec(w, &[1, g4, g4]));
    let idx = ex.const_i64("lstm_gate_order", &order);
    let r = ex.node("Gather", &[n.input(1), &idx], vec![attr_i("axis", 0)]);
    let zero = ex.const_i64("axes", &[0]);
    let r = ex.node("Unsqueeze", &[&r, &zero], vec![]);
    let h0 = ex.node("Unsqueeze", &[n.input(2), &zero], vec![]);
    let c0 = ex.node("Unsqueeze", &[n.input(3), &zero], vec![]);
    let lens = match n.attrs()?.ints("lengths") {
        None => String::new(),
        Some(lengths) => {
            if n.inputs[0].is_dynamic(1) {
                return Err(n.error(
                    "the sequence lengths are a constant of the trace but the batch is dynamic; export with dynamic_batch: false",
                ));
            }
            let name = ex.fresh("sequence_lens");
            let l = ex.initializer_i64(&name, lengths, &[lengths.len()]);
            ex.node("Cast", &[&l], vec![attr_i("to", data_type::INT32 as i64)])
        }
    };
    let direction = if n.int("reverse")? != 0 { "reverse" } else { "forward" };
    let outs = ex.node_n(
        "LSTM",
        &[n.input(0), &w, &r, "", &lens, &h0, &c0],
        vec![attr_i("hidden_size", h as i64), attr_s("direction", direction)],
        3,
    );
    let one = ex.const_i64("axes", &[1]);
    let y = ex.node("Squeeze", &[&outs[0], &one], vec![]);
    Ok(ex.node("Concat", &[&y, &outs[1], &outs[2]], vec![attr_i("axis", 0)]))
}
