//! The ONNX operators import runs, each written with kiln's autograd ops (so gradients flow),
//! integer shape arithmetic computed eagerly. Semantics from <https://onnx.ai/onnx/operators/>.

use std::collections::HashMap;

use kiln_autograd::Var;
use kiln_tensor::{Conv1dParams, Conv2dParams, ConvTranspose2dParams, Indices, PadMode, Tensor};

use crate::import::{tensor_data, Data, Val};
use crate::proto::{data_type, AttributeProto};

/// What an op sees of its node.
pub(crate) struct NodeView<'a> {
    pub op: &'a str,
    pub attrs: &'a HashMap<String, AttributeProto>,
}

type R<T> = Result<T, String>;

impl NodeView<'_> {
    fn i(&self, name: &str, default: i64) -> i64 {
        self.attrs.get(name).and_then(|a| a.i).unwrap_or(default)
    }
    fn f(&self, name: &str, default: f32) -> f32 {
        self.attrs.get(name).and_then(|a| a.f).unwrap_or(default)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attrs.get(name).map(|a| a.ints.clone())
    }
    fn s(&self, name: &str) -> Option<String> {
        self.attrs.get(name).and_then(|a| a.s.as_ref()).map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

fn arg(args: &[Option<Val>], i: usize) -> R<&Val> {
    args.get(i).and_then(|a| a.as_ref()).ok_or_else(|| format!("input {i} is missing"))
}

fn opt_arg(args: &[Option<Val>], i: usize) -> Option<&Val> {
    args.get(i).and_then(|a| a.as_ref())
}

fn to_float(v: &Val) -> Var<f32> {
    match v {
        Val::F(x) => x.clone(),
        Val::I(d, s) => Var::constant(Tensor::from_vec(d.iter().map(|&x| x as f32).collect(), s)),
        Val::B(t) => Var::constant(t.clone()),
    }
}

fn fl(args: &[Option<Val>], i: usize) -> R<Var<f32>> {
    Ok(to_float(arg(args, i)?))
}

fn ints(args: &[Option<Val>], i: usize) -> R<Vec<i64>> {
    match arg(args, i)? {
        Val::I(d, _) => Ok(d.clone()),
        _ => Err(format!("input {i} must be an integer tensor (shape data), got floats")),
    }
}

fn axis(a: i64, nd: usize) -> R<usize> {
    let r = if a < 0 { a + nd as i64 } else { a };
    if r < 0 || r >= nd.max(1) as i64 {
        return Err(format!("axis {a} is out of range for {nd} dimensions"));
    }
    Ok(r as usize)
}

fn shape_of(v: &Val) -> Vec<usize> {
    match v {
        Val::F(x) => x.shape().to_vec(),
        Val::I(_, s) => s.clone(),
        Val::B(t) => t.shape().to_vec(),
    }
}

fn usz(v: &[i64], what: &str) -> R<Vec<usize>> {
    v.iter().map(|&x| usize::try_from(x).map_err(|_| format!("{what} {v:?} holds a negative value"))).collect()
}

/// Elementwise integer arithmetic with scalar broadcasting (shape computations).
fn int_binary(a: &Val, b: &Val, f: fn(i64, i64) -> Option<i64>) -> R<Val> {
    let (Val::I(x, xs), Val::I(y, ys)) = (a, b) else { unreachable!("checked by the caller") };
    let n = x.len().max(y.len());
    let pick = |v: &Vec<i64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
    if !(x.len() == y.len() || x.len() == 1 || y.len() == 1) {
        return Err(format!("integer operands {xs:?} and {ys:?} do not broadcast"));
    }
    let out: Option<Vec<i64>> = (0..n).map(|i| f(pick(x, i), pick(y, i))).collect();
    let shape = if x.len() >= y.len() { xs.clone() } else { ys.clone() };
    Ok(Val::I(out.ok_or("integer overflow or division by zero")?, shape))
}

fn mask(v: &Tensor<f32>, f: impl Fn(f32) -> bool) -> Tensor<f32> {
    Tensor::from_vec(v.to_vec().into_iter().map(|x| if f(x) { 1.0 } else { 0.0 }).collect(), v.shape())
}

/// `erf(z) = 2 gelu(√2 z) / (√2 z) - 1` (gelu(u) = u Φ(u), Φ(u) = (1 + erf(u/√2)) / 2), with
/// z = 0 routed away from the division so no NaN reaches the gradient.
fn erf(z: &Var<f32>) -> Var<f32> {
    let u = z.mul_scalar(std::f32::consts::SQRT_2);
    let zero = mask(&u.value(), |v| v == 0.0);
    let safe = u.add(&Var::constant(zero.clone()));
    let e = safe.gelu().div(&safe).mul_scalar(2.0).sub_scalar(1.0);
    Var::constant(Tensor::zeros(&[1])).broadcast_to(&e.shape()).where_(&zero, &e)
}

fn channel_shape(c: usize, nd: usize) -> Vec<usize> {
    let mut s = vec![1; nd.saturating_sub(1).max(1)];
    s[0] = c;
    s
}

fn pads_of(
    n: &NodeView,
    spatial: usize,
    in_sizes: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dil: &[usize],
) -> R<Vec<(usize, usize)>> {
    let auto = n.s("auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" => {
            let p = usz(&n.ints("pads").unwrap_or_else(|| vec![0; 2 * spatial]), "pads")?;
            if p.len() != 2 * spatial {
                return Err(format!("pads {p:?} should have {} entries", 2 * spatial));
            }
            Ok((0..spatial).map(|i| (p[i], p[i + spatial])).collect())
        }
        "VALID" => Ok(vec![(0, 0); spatial]),
        "SAME_UPPER" | "SAME_LOWER" => Ok((0..spatial)
            .map(|i| {
                let out = in_sizes[i].div_ceil(strides[i]);
                let need = ((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1).saturating_sub(in_sizes[i]);
                let small = need / 2;
                if auto == "SAME_UPPER" {
                    (small, need - small)
                } else {
                    (need - small, small)
                }
            })
            .collect()),
        other => Err(format!("auto_pad {other:?} is not supported")),
    }
}

/// Symmetric pads as one value per axis, or the input padded explicitly (with `fill`) and
/// zero pads when a side differs.
fn symmetric(x: Var<f32>, pads: &[(usize, usize)], fill: f64) -> (Var<f32>, Vec<usize>) {
    if pads.iter().all(|(a, b)| a == b) {
        return (x, pads.iter().map(|p| p.0).collect());
    }
    let rev: Vec<(usize, usize)> = pads.iter().rev().copied().collect();
    (x.pad(&rev, PadMode::Constant(fill)), vec![0; pads.len()])
}

fn spatial_attrs(n: &NodeView, spatial: usize, kernel: Option<Vec<usize>>) -> R<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let kernel = match kernel {
        Some(k) => k,
        None => usz(&n.ints("kernel_shape").ok_or("kernel_shape is required")?, "kernel_shape")?,
    };
    let strides = usz(&n.ints("strides").unwrap_or_else(|| vec![1; spatial]), "strides")?;
    let dil = usz(&n.ints("dilations").unwrap_or_else(|| vec![1; spatial]), "dilations")?;
    if kernel.len() != spatial || strides.len() != spatial || dil.len() != spatial {
        return Err(format!("kernel {kernel:?}, strides {strides:?}, dilations {dil:?} must have {spatial} entries"));
    }
    if kernel.contains(&0) || strides.contains(&0) || dil.contains(&0) {
        return Err("kernel, strides and dilations must be > 0".into());
    }
    Ok((kernel, strides, dil))
}

fn conv(n: &NodeView, args: &[Option<Val>]) -> R<Var<f32>> {
    let x = fl(args, 0)?;
    let w = fl(args, 1)?;
    let b = opt_arg(args, 2).map(to_float);
    let ws = w.shape().to_vec();
    let spatial = ws.len().checked_sub(2).ok_or("the weight needs at least 3 dimensions")?;
    let xs = x.shape().to_vec();
    if xs.len() != spatial + 2 {
        return Err(format!("input {xs:?} does not match weight {ws:?}"));
    }
    let (k, s, d) = spatial_attrs(n, spatial, Some(ws[2..].to_vec()))?;
    let pads = pads_of(n, spatial, &xs[2..], &k, &s, &d)?;
    let groups = usize::try_from(n.i("group", 1)).map_err(|_| "negative group")?;
    if groups == 0 || xs[1] != ws[1] * groups || ws[0] % groups != 0 {
        return Err(format!("input {xs:?}, weight {ws:?} and group {groups} do not fit"));
    }
    let (x, p) = symmetric(x, &pads, 0.0);
    match spatial {
        1 => Ok(x.conv1d(&w, b.as_ref(), &Conv1dParams { stride: s[0], padding: p[0], dilation: d[0], groups })),
        2 => Ok(x.conv2d(
            &w,
            b.as_ref(),
            &Conv2dParams { stride: [s[0], s[1]], padding: [p[0], p[1]], dilation: [d[0], d[1]], groups },
        )),
        3 => {
            // kiln's Conv3d layer around the imported weight and bias (the same Vars, so they
            // still train)
            let config = kiln_nn::Conv3dConfig {
                kernel_size: [k[0], k[1], k[2]],
                stride: [s[0], s[1], s[2]],
                padding: kiln_nn::Padding::Explicit([p[0], p[1], p[2]]),
                dilation: [d[0], d[1], d[2]],
                groups,
                bias: b.is_some(),
                ..kiln_nn::Conv3dConfig::new(xs[1], ws[0], 1)
            };
            let layer = kiln_nn::Conv3d { config, weight: w, bias: b };
            Ok(kiln_nn::Forward::forward(&layer, &x))
        }
        _ => Err(format!("{spatial}-d convolution is not supported (1-d, 2-d and 3-d are)")),
    }
}

fn conv_transpose(n: &NodeView, args: &[Option<Val>]) -> R<Var<f32>> {
    let x = fl(args, 0)?;
    let w = fl(args, 1)?;
    let b = opt_arg(args, 2).map(to_float);
    let ws = w.shape().to_vec();
    if ws.len() != 4 || x.ndim() != 4 {
        return Err(format!("only 2-d ConvTranspose is supported, weight {ws:?}"));
    }
    if n.ints("output_shape").is_some() {
        return Err("the output_shape attribute is not supported (use pads and output_padding)".into());
    }
    let (k, s, d) = spatial_attrs(n, 2, Some(ws[2..].to_vec()))?;
    let _ = k;
    let p = usz(&n.ints("pads").unwrap_or_else(|| vec![0; 4]), "pads")?;
    if p.len() != 4 || p[0] != p[2] || p[1] != p[3] {
        return Err(format!("pads {p:?}: only symmetric padding is supported"));
    }
    let op = usz(&n.ints("output_padding").unwrap_or_else(|| vec![0; 2]), "output_padding")?;
    let groups = usize::try_from(n.i("group", 1)).map_err(|_| "negative group")?;
    if groups == 0 || x.shape()[1] != ws[0] || ws[0] % groups != 0 || op.len() != 2 {
        return Err(format!("input {:?}, weight {ws:?} and group {groups} do not fit", x.shape().as_slice()));
    }
    Ok(x.conv_transpose2d(
        &w,
        b.as_ref(),
        &ConvTranspose2dParams {
            stride: [s[0], s[1]],
            padding: [p[0], p[1]],
            output_padding: [op[0], op[1]],
            dilation: [d[0], d[1]],
            groups,
        },
    ))
}

fn pool(n: &NodeView, args: &[Option<Val>], max: bool) -> R<Var<f32>> {
    let x = fl(args, 0)?;
    let xs = x.shape().to_vec();
    let spatial = xs.len().checked_sub(2).ok_or("the input needs at least 3 dimensions")?;
    let (k, s, d) = spatial_attrs(n, spatial, None)?;
    let pads = pads_of(n, spatial, &xs[2..], &k, &s, &d)?;
    let ceil = n.i("ceil_mode", 0) != 0;
    if max {
        if n.i("storage_order", 0) != 0 {
            return Err("storage_order=1 is not supported".into());
        }
        let (x, p) = symmetric(x, &pads, f64::NEG_INFINITY);
        match spatial {
            1 => Ok(x.max_pool1d(k[0], s[0], p[0], d[0], ceil)),
            2 => Ok(x.max_pool2d([k[0], k[1]], [s[0], s[1]], [p[0], p[1]], [d[0], d[1]], ceil)),
            _ => Err(format!("{spatial}-d pooling is not supported")),
        }
    } else {
        if d.iter().any(|&v| v != 1) {
            return Err("AveragePool with dilations is not supported".into());
        }
        if pads.iter().any(|(a, b)| a != b) {
            return Err(format!("pads {pads:?}: only symmetric AveragePool padding is supported"));
        }
        let include = n.i("count_include_pad", 0) != 0;
        match spatial {
            1 => Ok(x.avg_pool1d(k[0], s[0], pads[0].0, ceil, include)),
            2 => Ok(x.avg_pool2d([k[0], k[1]], [s[0], s[1]], [pads[0].0, pads[1].0], ceil, include, None)),
            _ => Err(format!("{spatial}-d pooling is not supported")),
        }
    }
}

fn slice_range(start: i64, end: i64, len: usize) -> (usize, usize) {
    let clamp = |v: i64| -> usize {
        let v = if v < 0 { v + len as i64 } else { v };
        v.clamp(0, len as i64) as usize
    };
    let (a, b) = (clamp(start), clamp(end));
    (a, b.max(a))
}

/// The positions a `Slice` with a negative `step` takes along an axis of `len`: from `start`
/// down to (not including) `end`, both clamped as ONNX defines for negative steps.
fn backward_slice(start: i64, end: i64, step: i64, len: usize) -> Vec<usize> {
    let n = len as i64;
    let start = (if start < 0 { start.saturating_add(n) } else { start }).clamp(0, n - 1);
    let end = (if end < 0 { end.saturating_add(n) } else { end }).clamp(-1, n - 1);
    let mut out = Vec::new();
    let mut i = start;
    while i > end {
        out.push(i as usize);
        i = i.saturating_add(step);
    }
    out
}

fn reshape_target(shape_in: &[usize], target: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let numel: usize = shape_in.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if !allowzero => {
                out.push(*shape_in.get(i).ok_or_else(|| {
                    format!("shape {target:?}: 0 copies axis {i} of {shape_in:?}, which does not exist")
                })?)
            }
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            t if t >= 0 => out.push(t as usize),
            _ => return Err(format!("shape {target:?} is invalid")),
        }
    }
    let known: usize = out.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or("shape overflows")?;
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(format!("cannot reshape {shape_in:?} to {target:?}"));
        }
        out[i] = numel / known;
    } else if known != numel {
        return Err(format!("cannot reshape {shape_in:?} ({numel} elements) to {target:?}"));
    }
    Ok(out)
}

fn axes_arg(n: &NodeView, args: &[Option<Val>], opset: i64, from: i64) -> R<Option<Vec<i64>>> {
    if opset >= from {
        match opt_arg(args, 1) {
            Some(Val::I(v, _)) => Ok(Some(v.clone())),
            Some(_) => Err("axes must be integers".into()),
            None => Ok(None),
        }
    } else {
        Ok(n.ints("axes"))
    }
}

fn constant(n: &NodeView) -> R<Val> {
    if let Some(t) = n.attrs.get("value").and_then(|a| a.t.as_ref()) {
        return match tensor_data("Constant", t).map_err(|e| e.to_string())? {
            (Data::F(v), s) => Ok(Val::F(Var::constant(Tensor::from_vec(v, &s)))),
            (Data::I(v), s) => Ok(Val::I(v, s)),
        };
    }
    if let Some(a) = n.attrs.get("value_float").and_then(|a| a.f) {
        return Ok(Val::F(Var::constant(Tensor::scalar(a))));
    }
    if let Some(a) = n.attrs.get("value_floats") {
        return Ok(Val::F(Var::constant(Tensor::from_vec(a.floats.clone(), &[a.floats.len()]))));
    }
    if let Some(a) = n.attrs.get("value_int").and_then(|a| a.i) {
        return Ok(Val::I(vec![a], vec![]));
    }
    if let Some(a) = n.attrs.get("value_ints") {
        return Ok(Val::I(a.ints.clone(), vec![a.ints.len()]));
    }
    Err("Constant needs value, value_float(s) or value_int(s)".into())
}

/// ONNX `LSTM` (gate order i, o, f, c; `B` = `[Wb; Rb]`), forward, reverse or
/// bidirectional, as a step loop of autograd ops. Returns `Y`, `Y_h`, `Y_c`. With
/// `sequence_lens`, a sequence past its length keeps its state and outputs zeros (the reverse
/// direction starts at its last step), as ONNX Runtime computes it.
fn lstm(n: &NodeView, args: &[Option<Val>]) -> R<Vec<Val>> {
    let mut x = fl(args, 0)?;
    let (w, r) = (fl(args, 1)?, fl(args, 2)?);
    let layout = n.i("layout", 0);
    if layout == 1 {
        x = x.transpose(0, 1);
    }
    let xs = x.shape().to_vec();
    let ws = w.shape().to_vec();
    if xs.len() != 3 || ws.len() != 3 {
        return Err(format!("X {xs:?} and W {ws:?} must be 3-d"));
    }
    let hidden = usize::try_from(n.i("hidden_size", (ws[1] / 4) as i64)).map_err(|_| "negative hidden_size")?;
    let dirs = match n.s("direction").as_deref().unwrap_or("forward") {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return Err(format!("direction {other:?} is not supported")),
    };
    if ws[0] != dirs.len()
        || ws[1] != 4 * hidden
        || ws[2] != xs[2]
        || r.shape().as_slice() != [dirs.len(), 4 * hidden, hidden]
    {
        return Err(format!("W {ws:?} / R {:?} do not fit X {xs:?}, hidden {hidden}", r.shape().as_slice()));
    }
    if let Some(a) = n.attrs.get("activations") {
        let acts: Vec<String> = a.strings.iter().map(|s| String::from_utf8_lossy(s).to_lowercase()).collect();
        if acts.chunks(3).any(|c| c != ["sigmoid", "tanh", "tanh"]) {
            return Err(format!("activations {acts:?}: only the defaults (Sigmoid, Tanh, Tanh) are supported"));
        }
    }
    if n.attrs.contains_key("clip") || n.i("input_forget", 0) != 0 {
        return Err("clip and input_forget are not supported".into());
    }
    if opt_arg(args, 7).is_some() {
        return Err("peephole weights (P) are not supported".into());
    }
    let (seq, batch) = (xs[0], xs[1]);
    let masks = step_masks(opt_arg(args, 4), seq, batch)?;
    let state = |i: usize, d: usize| -> R<Var<f32>> {
        Ok(match opt_arg(args, i) {
            Some(v) => to_float(v).select(0, d),
            None => Var::constant(Tensor::zeros(&[batch, hidden])),
        })
    };
    let (mut ys, mut hs, mut cs) = (Vec::new(), Vec::new(), Vec::new());
    for (d, &reverse) in dirs.iter().enumerate() {
        let wd = w.select(0, d);
        let rt = r.select(0, d).t();
        let mut xw = x.matmul(&wd.t());
        if let Some(b) = opt_arg(args, 3) {
            let b = to_float(b).select(0, d);
            xw = xw.add(&b.narrow(0, 0, 4 * hidden).add(&b.narrow(0, 4 * hidden, 4 * hidden)));
        }
        let (mut h, mut c) = (state(5, d)?, state(6, d)?);
        let mut out = vec![None; seq];
        let steps: Vec<usize> = if reverse { (0..seq).rev().collect() } else { (0..seq).collect() };
        for t in steps {
            let g = xw.select(0, t).add(&h.matmul(&rt));
            let i = g.narrow(1, 0, hidden).sigmoid();
            let o = g.narrow(1, hidden, hidden).sigmoid();
            let f = g.narrow(1, 2 * hidden, hidden).sigmoid();
            let cand = g.narrow(1, 3 * hidden, hidden).tanh();
            let c_next = f.mul(&c).add(&i.mul(&cand));
            let h_next = o.mul(&c_next.tanh());
            out[t] = Some(match &masks {
                None => {
                    (h, c) = (h_next.clone(), c_next);
                    h_next
                }
                Some(m) => {
                    // past its length a sequence keeps its state and outputs zeros
                    c = held(&c_next, &c, &m[t]);
                    h = held(&h_next, &h, &m[t]);
                    h_next.mul(&m[t].0)
                }
            });
        }
        let out: Vec<Var<f32>> = out.into_iter().map(|v| v.expect("every step ran")).collect();
        ys.push(if seq == 0 { Var::constant(Tensor::zeros(&[0, batch, hidden])) } else { Var::stack(&out, 0) });
        hs.push(h);
        cs.push(c);
    }
    let mut y = Var::stack(&ys, 1); // [seq, dirs, batch, hidden]
    if layout == 1 {
        y = y.permute(&[2, 0, 1, 3]);
    }
    let (mut yh, mut yc) = (Var::stack(&hs, 0), Var::stack(&cs, 0));
    if layout == 1 {
        yh = yh.transpose(0, 1);
        yc = yc.transpose(0, 1);
    }
    Ok(vec![Val::F(y), Val::F(yh), Val::F(yc)])
}

/// ONNX `GRU` (gates z, r, h; `linear_before_reset` 0 or 1, PyTorch exports 1) and `RNN`
/// (`Tanh` or `Relu` per direction), forward, reverse or bidirectional, with the same layouts
/// and restrictions as [`lstm`]: `Y` `[seq, dirs, batch, hidden]` and `Y_h` `[dirs, batch, hidden]`.
fn gru_or_rnn(n: &NodeView, args: &[Option<Val>], gru: bool) -> R<Vec<Val>> {
    let gates = if gru { 3 } else { 1 };
    let mut x = fl(args, 0)?;
    let (w, r) = (fl(args, 1)?, fl(args, 2)?);
    let layout = n.i("layout", 0);
    if layout == 1 {
        x = x.transpose(0, 1);
    }
    let xs = x.shape().to_vec();
    let ws = w.shape().to_vec();
    if xs.len() != 3 || ws.len() != 3 {
        return Err(format!("X {xs:?} and W {ws:?} must be 3-d"));
    }
    let hidden = usize::try_from(n.i("hidden_size", (ws[1] / gates) as i64)).map_err(|_| "negative hidden_size")?;
    let dirs = match n.s("direction").as_deref().unwrap_or("forward") {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return Err(format!("direction {other:?} is not supported")),
    };
    if ws[0] != dirs.len()
        || ws[1] != gates * hidden
        || ws[2] != xs[2]
        || r.shape().as_slice() != [dirs.len(), gates * hidden, hidden]
    {
        return Err(format!("W {ws:?} / R {:?} do not fit X {xs:?}, hidden {hidden}", r.shape().as_slice()));
    }
    // RNN: one activation per direction; GRU: (f, g) per direction, only the defaults
    let acts: Vec<String> = match n.attrs.get("activations") {
        Some(a) => a.strings.iter().map(|s| String::from_utf8_lossy(s).to_lowercase()).collect(),
        None if gru => ["sigmoid", "tanh"].repeat(dirs.len()).into_iter().map(String::from).collect(),
        None => vec!["tanh".to_string(); dirs.len()],
    };
    if gru && acts.chunks(2).any(|c| c != ["sigmoid", "tanh"]) {
        return Err(format!("activations {acts:?}: only the defaults (Sigmoid, Tanh) are supported"));
    }
    if !gru && (acts.len() != dirs.len() || acts.iter().any(|a| a != "tanh" && a != "relu")) {
        return Err(format!("activations {acts:?}: one of Tanh or Relu per direction is supported"));
    }
    if n.attrs.contains_key("clip") {
        return Err("clip is not supported".into());
    }
    let before_reset = n.i("linear_before_reset", 0) != 0;
    let (seq, batch) = (xs[0], xs[1]);
    let masks = step_masks(opt_arg(args, 4), seq, batch)?;
    let gh = gates * hidden;
    let (mut ys, mut hs) = (Vec::new(), Vec::new());
    for (d, &reverse) in dirs.iter().enumerate() {
        let wd = w.select(0, d);
        let rt = r.select(0, d).t();
        let mut xw = x.matmul(&wd.t());
        let mut rb = None;
        if let Some(b) = opt_arg(args, 3) {
            let b = to_float(b).select(0, d);
            xw = xw.add(&b.narrow(0, 0, gh));
            rb = Some(b.narrow(0, gh, gh));
        }
        let mut h = match opt_arg(args, 5) {
            Some(v) => to_float(v).select(0, d),
            None => Var::constant(Tensor::zeros(&[batch, hidden])),
        };
        let mut out = vec![None; seq];
        let steps: Vec<usize> = if reverse { (0..seq).rev().collect() } else { (0..seq).collect() };
        for t in steps {
            let h_prev = h.clone();
            let xt = xw.select(0, t);
            let mut hr = h.matmul(&rt);
            if let Some(rb) = &rb {
                hr = hr.add(rb);
            }
            h = if gru {
                let z = xt.narrow(1, 0, hidden).add(&hr.narrow(1, 0, hidden)).sigmoid();
                let rg = xt.narrow(1, hidden, hidden).add(&hr.narrow(1, hidden, hidden)).sigmoid();
                let cand = if before_reset {
                    xt.narrow(1, 2 * hidden, hidden).add(&rg.mul(&hr.narrow(1, 2 * hidden, hidden)))
                } else {
                    let rh = rg.mul(&h).matmul(&rt.narrow(1, 2 * hidden, hidden));
                    let rh = match &rb {
                        Some(rb) => rh.add(&rb.narrow(0, 2 * hidden, hidden)),
                        None => rh,
                    };
                    xt.narrow(1, 2 * hidden, hidden).add(&rh)
                }
                .tanh();
                // h' = (1 - z) cand + z h
                z.rsub_scalar(1.0).mul(&cand).add(&z.mul(&h))
            } else {
                let pre = xt.add(&hr);
                if acts[d] == "relu" {
                    pre.relu()
                } else {
                    pre.tanh()
                }
            };
            out[t] = Some(match &masks {
                None => h.clone(),
                Some(m) => {
                    // past its length a sequence keeps its state and outputs zeros
                    let y = h.mul(&m[t].0);
                    h = held(&h, &h_prev, &m[t]);
                    y
                }
            });
        }
        let out: Vec<Var<f32>> = out.into_iter().map(|v| v.expect("every step ran")).collect();
        ys.push(if seq == 0 { Var::constant(Tensor::zeros(&[0, batch, hidden])) } else { Var::stack(&out, 0) });
        hs.push(h);
    }
    let mut y = Var::stack(&ys, 1); // [seq, dirs, batch, hidden]
    let mut yh = Var::stack(&hs, 0);
    if layout == 1 {
        y = y.permute(&[2, 0, 1, 3]);
        yh = yh.transpose(0, 1);
    }
    Ok(vec![Val::F(y), Val::F(yh)])
}

/// A step's `(m, 1 - m)` masks, `[batch, 1]` each (see [`step_masks`]).
type StepMask = (Var<f32>, Var<f32>);

/// Per step `t`, the `[batch, 1]` masks `(m, 1 - m)` with `m = 1` where sequence `b` is still
/// running (`t < sequence_lens[b]`), from the optional `sequence_lens` input of a recurrent
/// node; `None` when absent or when every sequence runs the whole length.
fn step_masks(lens: Option<&Val>, seq: usize, batch: usize) -> R<Option<Vec<StepMask>>> {
    let Some(lens) = lens else { return Ok(None) };
    let Val::I(lens, _) = lens else { return Err("sequence_lens must be an integer tensor".into()) };
    if lens.len() != batch {
        return Err(format!("sequence_lens has {} values for a batch of {batch}", lens.len()));
    }
    if let Some(l) = lens.iter().find(|&&l| l < 0 || l > seq as i64) {
        return Err(format!("sequence_lens {l} is outside 0..={seq} (the sequence length)"));
    }
    if lens.iter().all(|&l| l == seq as i64) {
        return Ok(None);
    }
    Ok(Some(
        (0..seq)
            .map(|t| {
                let m: Vec<f32> = lens.iter().map(|&l| if (t as i64) < l { 1.0 } else { 0.0 }).collect();
                let keep: Vec<f32> = m.iter().map(|v| 1.0 - v).collect();
                (Var::constant(Tensor::from_vec(m, &[batch, 1])), Var::constant(Tensor::from_vec(keep, &[batch, 1])))
            })
            .collect(),
    ))
}

/// `next` where the step's mask is 1, `prev` where it is 0.
fn held(next: &Var<f32>, prev: &Var<f32>, (m, keep): &StepMask) -> Var<f32> {
    next.mul(m).add(&prev.mul(keep))
}

/// Refuses an output larger than 2^28 elements (a forged size must not allocate).
fn bounded(shape: &[usize]) -> R<()> {
    match shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)) {
        Some(n) if n <= 1 << 28 => Ok(()),
        _ => Err(format!("an output of shape {shape:?} is too large")),
    }
}

/// The multidirectional broadcast of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let nd = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() < nd { 1 } else { s[i + s.len() - nd] };
    (0..nd)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(format!("shapes {a:?} and {b:?} do not broadcast ({x} against {y})")),
        })
        .collect()
}

/// `Pad` (opset 11+: pads, and the constant and axes as inputs): constant, reflect or edge.
fn pad(n: &NodeView, args: &[Option<Val>]) -> R<Var<f32>> {
    let x = fl(args, 0)?;
    let shape = x.shape();
    let nd = shape.len();
    let raw = ints(args, 1)?;
    let axes: Vec<usize> = match opt_arg(args, 3) {
        Some(Val::I(a, _)) => a.iter().map(|&a| axis(a, nd)).collect::<R<_>>()?,
        Some(_) => return Err("axes must be integers".into()),
        None => (0..nd).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes", raw.len(), axes.len()));
    }
    let raw = usz(&raw, "pads")?;
    let mut pairs = vec![(0usize, 0usize); nd];
    for (k, &a) in axes.iter().enumerate() {
        pairs[a] = (raw[k], raw[k + axes.len()]);
    }
    let out: Vec<usize> = shape.iter().zip(&pairs).map(|(&d, &(b, e))| d.saturating_add(b).saturating_add(e)).collect();
    bounded(&out)?;
    let mode = match n.s("mode").as_deref().unwrap_or("constant") {
        "constant" => {
            let value = match opt_arg(args, 2) {
                Some(v) => to_float(v).value().to_vec().first().copied().unwrap_or(0.0),
                None => 0.0,
            };
            PadMode::Constant(f64::from(value))
        }
        "reflect" => {
            if shape.iter().zip(&pairs).any(|(&d, &(b, e))| (b > 0 || e > 0) && (b >= d || e >= d)) {
                return Err(format!("reflect pads {pairs:?} must be smaller than the dimensions {shape:?}"));
            }
            PadMode::Reflect
        }
        "edge" => {
            if shape.iter().zip(&pairs).any(|(&d, &(b, e))| d == 0 && (b > 0 || e > 0)) {
                return Err(format!("edge padding of an empty dimension in {shape:?}"));
            }
            PadMode::Replicate
        }
        other => return Err(format!("mode {other:?} is not supported")),
    };
    // kiln lists (before, after) from the last axis
    let mut from_last: Vec<(usize, usize)> = pairs.into_iter().rev().collect();
    while from_last.last() == Some(&(0, 0)) {
        from_last.pop();
    }
    Ok(if from_last.is_empty() { x } else { x.pad(&from_last, mode) })
}

/// `Resize` as kiln's `interpolate` computes it: nearest with asymmetric coordinates and
/// `floor` rounding (what `torch.onnx.export` writes for `mode='nearest'`), or linear with
/// `align_corners` or (pytorch_)half_pixel coordinates, on the spatial axes of a 3-d or 4-d
/// input, from scales or sizes.
fn resize(n: &NodeView, args: &[Option<Val>]) -> R<Var<f32>> {
    use kiln_nn::functional::{interpolate, InterpolateMode, InterpolateOptions, Resize};
    let x = fl(args, 0)?;
    let shape = x.shape();
    let nd = shape.len();
    if !(3..=4).contains(&nd) {
        return Err(format!("needs a 3-d or 4-d input, got {shape:?}"));
    }
    let ctm = n.s("coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
    let (mode, align_corners) = match n.s("mode").as_deref().unwrap_or("nearest") {
        "nearest" => {
            let rounding = n.s("nearest_mode").unwrap_or_else(|| "round_prefer_floor".into());
            if ctm != "asymmetric" || rounding != "floor" {
                return Err(format!(
                    "nearest with coordinate_transformation_mode {ctm:?} and nearest_mode {rounding:?} is not supported (asymmetric, floor is)"
                ));
            }
            (InterpolateMode::Nearest, None)
        }
        "linear" => {
            let align = match ctm.as_str() {
                "align_corners" => true,
                "half_pixel" | "pytorch_half_pixel" => false,
                other => return Err(format!("linear with coordinate_transformation_mode {other:?} is not supported")),
            };
            (if nd == 3 { InterpolateMode::Linear } else { InterpolateMode::Bilinear }, Some(align))
        }
        other => return Err(format!("mode {other:?} is not supported")),
    };
    let sizes = match opt_arg(args, 3) {
        Some(Val::I(v, _)) if !v.is_empty() => Some(usz(v, "sizes")?),
        _ => None,
    };
    let resize = match sizes {
        Some(sz) => {
            if sz.len() != nd || sz[..2] != shape[..2] || sz.contains(&0) {
                return Err(format!("sizes {sz:?} must keep the batch and channels of {shape:?}"));
            }
            bounded(&sz)?;
            Resize::Size(sz[2..].to_vec())
        }
        None => {
            let scales = opt_arg(args, 2).map(|v| to_float(v).value().to_vec()).unwrap_or_default();
            if scales.len() != nd || scales[0] != 1.0 || scales[1] != 1.0 {
                return Err(format!("scales {scales:?} must be 1 on the batch and channels and given for each axis"));
            }
            if scales[2..].iter().any(|&f| !(f.is_finite() && f > 0.0)) {
                return Err(format!("scales {scales:?} must be positive"));
            }
            let out: Vec<usize> = shape
                .iter()
                .zip(&scales)
                .map(|(&d, &f)| (d as f64 * f64::from(f)).floor().min(1e12) as usize)
                .collect();
            if out.contains(&0) {
                return Err(format!("scales {scales:?} give an empty output {out:?}"));
            }
            bounded(&out)?;
            Resize::ScaleFactor(scales[2..].iter().map(|&f| f64::from(f)).collect())
        }
    };
    let options = InterpolateOptions { mode, align_corners, recompute_scale_factor: false };
    Ok(interpolate(&x, &resize, &options))
}

/// Runs one node on its inputs (`None` for an omitted optional input).
pub(crate) fn run_node(n: NodeView, args: &[Option<Val>], opset: i64) -> R<Vec<Val>> {
    let one = |v: Var<f32>| Ok(vec![Val::F(v)]);
    match n.op {
        "Identity" | "Dropout" => Ok(vec![arg(args, 0)?.clone()]),
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (arg(args, 0)?, arg(args, 1)?);
            if let (Val::I(..), Val::I(..)) = (a, b) {
                let f: fn(i64, i64) -> Option<i64> = match n.op {
                    "Add" => i64::checked_add,
                    "Sub" => i64::checked_sub,
                    "Mul" => i64::checked_mul,
                    _ => i64::checked_div,
                };
                return Ok(vec![int_binary(a, b, f)?]);
            }
            let (a, b) = (to_float(a), to_float(b));
            one(match n.op {
                "Add" => a.add(&b),
                "Sub" => a.sub(&b),
                "Mul" => a.mul(&b),
                _ => a.div(&b),
            })
        }
        "Pow" => {
            let (a, b) = (fl(args, 0)?, fl(args, 1)?);
            if b.numel() == 1 {
                return one(a.powf(b.value().to_vec()[0] as f64));
            }
            one(a.pow(&b))
        }
        "Neg" => one(fl(args, 0)?.neg()),
        "Sqrt" => one(fl(args, 0)?.sqrt()),
        "Relu" => one(fl(args, 0)?.relu()),
        "Sigmoid" => one(fl(args, 0)?.sigmoid()),
        "Tanh" => one(fl(args, 0)?.tanh()),
        "Softplus" => one(fl(args, 0)?.softplus(1.0, 20.0)),
        "LeakyRelu" => one(fl(args, 0)?.leaky_relu(n.f("alpha", 0.01) as f64)),
        "PRelu" => {
            // max(0, x) + slope * min(0, x); the slope broadcasts onto x
            let (x, slope) = (fl(args, 0)?, fl(args, 1)?);
            let pos = x.relu();
            one(pos.add(&slope.mul(&x.sub(&pos))))
        }
        "Elu" => one(fl(args, 0)?.elu(n.f("alpha", 1.0) as f64)),
        "Erf" => one(erf(&fl(args, 0)?)),
        "Gelu" => match n.s("approximate").as_deref().unwrap_or("none") {
            "none" => one(fl(args, 0)?.gelu()),
            "tanh" => one(fl(args, 0)?.gelu_tanh()),
            other => Err(format!("approximate={other:?} is not supported")),
        },
        "Greater" | "Less" => {
            let d = fl(args, 0)?.sub(&fl(args, 1)?).value();
            let m = if n.op == "Greater" { mask(&d, |v| v > 0.0) } else { mask(&d, |v| v < 0.0) };
            Ok(vec![Val::B(m)])
        }
        "Where" => {
            let cond = match arg(args, 0)? {
                Val::B(t) => t.clone(),
                Val::I(v, s) => Tensor::from_vec(v.iter().map(|&b| (b != 0) as i32 as f32).collect(), s),
                Val::F(v) => mask(&v.value(), |x| x != 0.0),
            };
            let (x, y) = (fl(args, 1)?, fl(args, 2)?);
            let shape = kiln_tensor::broadcast_shapes(&x.shape(), &y.shape(), "Where");
            let shape = kiln_tensor::broadcast_shapes(&shape, cond.shape(), "Where");
            one(x.broadcast_to(&shape).where_(&cond, &y.broadcast_to(&shape)))
        }
        "MatMul" => one(fl(args, 0)?.matmul(&fl(args, 1)?)),
        "Gemm" => {
            let mut a = fl(args, 0)?;
            let mut b = fl(args, 1)?;
            if a.ndim() != 2 || b.ndim() != 2 {
                return Err(format!(
                    "Gemm needs 2-d inputs, got {:?} and {:?}",
                    a.shape().as_slice(),
                    b.shape().as_slice()
                ));
            }
            if n.i("transA", 0) != 0 {
                a = a.t();
            }
            if n.i("transB", 0) != 0 {
                b = b.t();
            }
            let (alpha, beta) = (n.f("alpha", 1.0), n.f("beta", 1.0));
            let mut y = a.matmul(&b);
            if alpha != 1.0 {
                y = y.mul_scalar(alpha);
            }
            if let Some(c) = opt_arg(args, 2) {
                let c = to_float(c);
                y = y.add(&if beta != 1.0 { c.mul_scalar(beta) } else { c });
            }
            one(y)
        }
        "Conv" => one(conv(&n, args)?),
        "LSTM" => lstm(&n, args),
        "GRU" => gru_or_rnn(&n, args, true),
        "RNN" => gru_or_rnn(&n, args, false),
        "ConvTranspose" => one(conv_transpose(&n, args)?),
        "MaxPool" => one(pool(&n, args, true)?),
        "AveragePool" => one(pool(&n, args, false)?),
        "GlobalAveragePool" => {
            let x = fl(args, 0)?;
            let axes: Vec<isize> = (2..x.ndim() as isize).collect();
            one(x.mean(&axes, true))
        }
        "BatchNormalization" => {
            let x = fl(args, 0)?;
            let (scale, bias, mean, var) = (fl(args, 1)?, fl(args, 2)?, fl(args, 3)?, fl(args, 4)?);
            let c = *x.shape().get(1).ok_or("the input needs a channel axis")?;
            if [&scale, &bias, &mean, &var].iter().any(|t| t.numel() != c) {
                return Err(format!("the statistics must have {c} elements"));
            }
            let cs = channel_shape(c, x.ndim());
            let inv = var.add_scalar(n.f("epsilon", 1e-5)).rsqrt().mul(&scale).reshape(&cs);
            one(x.sub(&mean.reshape(&cs)).mul(&inv).add(&bias.reshape(&cs)))
        }
        "InstanceNormalization" => {
            let x = fl(args, 0)?;
            let s = x.shape().to_vec();
            if s.len() < 3 {
                return Err(format!("the input {s:?} needs [N, C, D1, ...]"));
            }
            let rest: usize = s[2..].iter().product();
            let y = x.reshape(&[s[0], s[1], rest]).standardize_trailing(1, n.f("epsilon", 1e-5) as f64).reshape(&s);
            let cs = channel_shape(s[1], s.len());
            one(y.mul(&fl(args, 1)?.reshape(&cs)).add(&fl(args, 2)?.reshape(&cs)))
        }
        "LayerNormalization" => {
            let x = fl(args, 0)?;
            let a = axis(n.i("axis", -1), x.ndim())?;
            let mut y = x.standardize_trailing(x.ndim() - a, n.f("epsilon", 1e-5) as f64);
            y = y.mul(&fl(args, 1)?);
            if let Some(b) = opt_arg(args, 2) {
                y = y.add(&to_float(b));
            }
            one(y)
        }
        "Softmax" | "LogSoftmax" => {
            let x = fl(args, 0)?;
            let default = if opset >= 13 { -1 } else { 1 };
            let a = axis(n.i("axis", default), x.ndim())?;
            if opset < 13 && a != x.ndim() - 1 {
                return Err(format!("opset {opset} {} over axes {a}.. is only supported on the last axis", n.op));
            }
            one(if n.op == "Softmax" { x.softmax(a as isize) } else { x.log_softmax(a as isize) })
        }
        "Flatten" => {
            let x = fl(args, 0)?;
            let s = x.shape().to_vec();
            let a = if n.i("axis", 1) == s.len() as i64 { s.len() } else { axis(n.i("axis", 1), s.len())? };
            let outer: usize = s[..a].iter().product();
            let inner: usize = s[a..].iter().product();
            one(x.reshape(&[outer, inner]))
        }
        "Reshape" => {
            let target = ints(args, 1)?;
            let v = arg(args, 0)?;
            let out = reshape_target(&shape_of(v), &target, n.i("allowzero", 0) != 0)?;
            match v {
                Val::I(d, _) => Ok(vec![Val::I(d.clone(), out)]),
                _ => one(to_float(v).reshape(&out)),
            }
        }
        "Transpose" => {
            let v = arg(args, 0)?;
            let nd = shape_of(v).len();
            let perm = n.ints("perm").unwrap_or_else(|| (0..nd as i64).rev().collect());
            if perm.len() != nd {
                return Err(format!("perm {perm:?} does not fit {nd} dimensions"));
            }
            let p: Vec<isize> = perm.iter().map(|&a| axis(a, nd).map(|a| a as isize)).collect::<R<_>>()?;
            one(to_float(v).permute(&p))
        }
        "Shape" => {
            let s: Vec<i64> = shape_of(arg(args, 0)?).iter().map(|&d| d as i64).collect();
            let nd = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + nd } else { v }).clamp(0, nd) as usize;
            let (a, b) = (clamp(n.i("start", 0)), clamp(n.i("end", nd)));
            let out = s[a..b.max(a)].to_vec();
            let len = out.len();
            Ok(vec![Val::I(out, vec![len])])
        }
        "Constant" => Ok(vec![constant(&n)?]),
        "ConstantOfShape" => {
            let shape = usz(&ints(args, 0)?, "shape")?;
            let numel = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or("shape overflows")?;
            if numel > 1 << 28 {
                return Err(format!("shape {shape:?} is too large"));
            }
            let value = match n.attrs.get("value").and_then(|a| a.t.as_ref()) {
                None => Data::F(vec![0.0]),
                Some(t) => tensor_data("ConstantOfShape", t).map_err(|e| e.to_string())?.0,
            };
            match value {
                Data::F(v) if v.len() == 1 => one(Var::constant(Tensor::full(&shape, v[0]))),
                Data::I(v) if v.len() == 1 => Ok(vec![Val::I(vec![v[0]; numel], shape)]),
                _ => Err("value must hold one element".into()),
            }
        }
        "Cast" => {
            let to = n.i("to", 0) as i32;
            let v = arg(args, 0)?;
            match (to, v) {
                (data_type::FLOAT | data_type::DOUBLE, _) => one(to_float(v)),
                (data_type::INT64 | data_type::INT32, Val::I(..)) => Ok(vec![v.clone()]),
                (data_type::INT64 | data_type::INT32, _) => {
                    let t = to_float(v).value();
                    Ok(vec![Val::I(t.to_vec().iter().map(|&x| x as i64).collect(), t.shape().to_vec())])
                }
                (data_type::BOOL, _) => Ok(vec![Val::B(mask(&to_float(v).value(), |x| x != 0.0))]),
                _ => Err(format!("Cast to data type {to} is not supported")),
            }
        }
        "Gather" => {
            let data = arg(args, 0)?;
            let (idx, ishape) = match arg(args, 1)? {
                Val::I(v, s) => (v.clone(), s.clone()),
                Val::F(v) => {
                    let t = v.value();
                    (t.to_vec().iter().map(|&x| x as i64).collect(), t.shape().to_vec())
                }
                Val::B(_) => return Err("indices must be integers".into()),
            };
            let ds = shape_of(data);
            let a = axis(n.i("axis", 0), ds.len())?;
            let len = ds[a] as i64;
            let idx: Vec<usize> = idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + len } else { i };
                    if j < 0 || j >= len {
                        Err(format!("index {i} is out of range for axis {a} of size {len}"))
                    } else {
                        Ok(j as usize)
                    }
                })
                .collect::<R<_>>()?;
            match data {
                Val::I(d, _) if ds.len() == 1 => Ok(vec![Val::I(idx.iter().map(|&i| d[i]).collect(), ishape)]),
                Val::I(..) => Err("Gather on integer data needs 1-d data".into()),
                _ => {
                    let x = to_float(data);
                    let picked = x.index_select(a as isize, &idx);
                    let mut out: Vec<usize> = ds[..a].to_vec();
                    out.extend(&ishape);
                    out.extend(&ds[a + 1..]);
                    one(picked.reshape(&out))
                }
            }
        }
        "Unsqueeze" => {
            let v = arg(args, 0)?;
            let axes = axes_arg(&n, args, opset, 13)?.ok_or("Unsqueeze needs axes")?;
            let mut s = shape_of(v);
            let nd = s.len() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, nd)).collect::<R<_>>()?;
            ax.sort_unstable();
            for a in ax {
                s.insert(a, 1);
            }
            match v {
                Val::I(d, _) => Ok(vec![Val::I(d.clone(), s)]),
                _ => one(to_float(v).reshape(&s)),
            }
        }
        "Squeeze" => {
            let v = arg(args, 0)?;
            let s = shape_of(v);
            let axes = axes_arg(&n, args, opset, 13)?;
            let drop: Vec<usize> = match axes {
                Some(a) => a.iter().map(|&a| axis(a, s.len())).collect::<R<_>>()?,
                None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
            };
            let out: Vec<usize> = s.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &d)| d).collect();
            match v {
                Val::I(d, _) => Ok(vec![Val::I(d.clone(), out)]),
                _ => one(to_float(v).reshape(&out)),
            }
        }
        "Concat" => {
            let vals: Vec<&Val> = args.iter().flatten().collect();
            if vals.is_empty() {
                return Err("Concat needs inputs".into());
            }
            if vals.iter().all(|v| matches!(v, Val::I(..))) {
                let mut out = Vec::new();
                for v in &vals {
                    if let Val::I(d, s) = v {
                        if s.len() > 1 {
                            return Err("Concat of integer tensors needs 1-d inputs".into());
                        }
                        out.extend(d);
                    }
                }
                let len = out.len();
                return Ok(vec![Val::I(out, vec![len])]);
            }
            let vars: Vec<Var<f32>> = vals.iter().map(|v| to_float(v)).collect();
            let nd = vars[0].ndim();
            one(Var::cat(&vars, axis(n.i("axis", 0), nd)? as isize))
        }
        "Slice" => {
            let v = arg(args, 0)?;
            let s = shape_of(v);
            let starts = ints(args, 1)?;
            let ends = ints(args, 2)?;
            let axes = match opt_arg(args, 3) {
                Some(_) => ints(args, 3)?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match opt_arg(args, 4) {
                Some(_) => ints(args, 4)?,
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return Err("starts, ends, axes and steps must have equal lengths".into());
            }
            if steps.contains(&0) {
                return Err(format!("steps {steps:?}: a step of 0 is invalid"));
            }
            match v {
                Val::I(d, _) if s.len() == 1 && steps[0] < 0 => {
                    let out: Vec<i64> =
                        backward_slice(starts[0], ends[0], steps[0], s[0]).iter().map(|&i| d[i]).collect();
                    let len = out.len();
                    Ok(vec![Val::I(out, vec![len])])
                }
                Val::I(d, _) if s.len() == 1 => {
                    let (a, b) = slice_range(starts[0], ends[0], s[0]);
                    let out: Vec<i64> = d[a..b].iter().step_by(steps[0] as usize).copied().collect();
                    let len = out.len();
                    Ok(vec![Val::I(out, vec![len])])
                }
                _ => {
                    let mut x = to_float(v);
                    for i in 0..starts.len() {
                        let a = axis(axes[i], s.len())?;
                        if steps[i] < 0 {
                            x = x.index_select(a as isize, &backward_slice(starts[i], ends[i], steps[i], s[a]));
                            continue;
                        }
                        let (lo, hi) = slice_range(starts[i], ends[i], s[a]);
                        x = x.slice(a as isize, lo, hi, steps[i] as usize);
                    }
                    one(x)
                }
            }
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceLogSumExp" | "ReduceL1" | "ReduceL2" => {
            let x = fl(args, 0)?;
            let keep = n.i("keepdims", 1) != 0;
            // ReduceSum takes its axes as an input from opset 13, the others from 18
            let from = if n.op == "ReduceSum" { 13 } else { 18 };
            let axes = axes_arg(&n, args, opset, from)?.unwrap_or_else(|| (0..x.ndim() as i64).collect());
            let ax: Vec<isize> = axes.iter().map(|&a| axis(a, x.ndim()).map(|a| a as isize)).collect::<R<_>>()?;
            one(match n.op {
                "ReduceMean" => x.mean(&ax, keep),
                "ReduceSum" => x.sum(&ax, keep),
                "ReduceMax" => x.max(&ax, keep),
                "ReduceMin" => x.min(&ax, keep),
                "ReduceLogSumExp" => x.logsumexp(&ax, keep),
                "ReduceL1" => x.norm(kiln_tensor::Norm::P(1.0), &ax, keep),
                _ => x.norm(kiln_tensor::Norm::P(2.0), &ax, keep),
            })
        }
        "Exp" => one(fl(args, 0)?.exp()),
        "Log" => one(fl(args, 0)?.log()),
        "Abs" => one(fl(args, 0)?.abs()),
        "Sign" => one(fl(args, 0)?.sign()),
        "Sin" => one(fl(args, 0)?.sin()),
        "Cos" => one(fl(args, 0)?.cos()),
        "Reciprocal" => one(fl(args, 0)?.reciprocal()),
        "Max" | "Min" => {
            let mut acc = fl(args, 0)?;
            for i in 1..args.len() {
                let v = fl(args, i)?;
                let shape = broadcast(&acc.shape(), &v.shape())?;
                let (a, v) = (acc.broadcast_to(&shape), v.broadcast_to(&shape));
                acc = if n.op == "Max" { a.maximum(&v) } else { a.minimum(&v) };
            }
            one(acc)
        }
        "Clip" => {
            let bound = |i: usize| -> R<Option<f64>> {
                match opt_arg(args, i) {
                    None => Ok(None),
                    Some(v) => {
                        let t = to_float(v).value();
                        if t.numel() != 1 {
                            return Err(format!("Clip's bound {i} must hold one value, got shape {:?}", t.shape()));
                        }
                        Ok(Some(f64::from(t.to_vec()[0])))
                    }
                }
            };
            one(fl(args, 0)?.clamp(bound(1)?, bound(2)?))
        }
        "Expand" => {
            let x = fl(args, 0)?;
            let target = usz(&ints(args, 1)?, "shape")?;
            let shape = broadcast(&x.shape(), &target)?;
            bounded(&shape)?;
            one(x.broadcast_to(&shape))
        }
        "Tile" => {
            let x = fl(args, 0)?;
            let reps = usz(&ints(args, 1)?, "repeats")?;
            if reps.len() != x.ndim() {
                return Err(format!("{} repeats for {} dimensions", reps.len(), x.ndim()));
            }
            let out: Vec<usize> = x.shape().iter().zip(&reps).map(|(&d, &r)| d.saturating_mul(r)).collect();
            bounded(&out)?;
            one(x.repeat(&reps))
        }
        "Pad" => one(pad(&n, args)?),
        "GatherElements" => {
            let x = fl(args, 0)?;
            let (idx, ishape) = match arg(args, 1)? {
                Val::I(v, s) => (v.clone(), s.clone()),
                _ => return Err("indices must be integers".into()),
            };
            let xs = x.shape();
            let a = axis(n.i("axis", 0), xs.len())?;
            if ishape.len() != xs.len() || ishape.iter().zip(&xs).enumerate().any(|(d, (&i, &s))| d != a && i > s) {
                return Err(format!("indices of shape {ishape:?} do not fit data of shape {xs:?} along axis {a}"));
            }
            let len = xs[a] as i64;
            let idx: Vec<usize> = idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + len } else { i };
                    if (0..len).contains(&j) {
                        Ok(j as usize)
                    } else {
                        Err(format!("index {i} is out of range for axis {a} of size {len}"))
                    }
                })
                .collect::<R<_>>()?;
            one(x.gather(a as isize, &Indices::new(idx, &ishape)))
        }
        "DepthToSpace" => {
            let x = fl(args, 0)?;
            let s = x.shape();
            let b = usize::try_from(n.i("blocksize", 0)).ok().filter(|&b| b > 0).ok_or("blocksize must be positive")?;
            let bb = b.checked_mul(b).ok_or("blocksize is too large")?;
            if s.len() != 4 || s[1] % bb != 0 {
                return Err(format!("needs [N, C, H, W] with C a multiple of {bb}, got {s:?}"));
            }
            let (nb, c, h, w) = (s[0], s[1] / (b * b), s[2], s[3]);
            let y = match n.s("mode").as_deref().unwrap_or("DCR") {
                "DCR" => x.reshape(&[nb, b, b, c, h, w]).permute(&[0, 3, 4, 1, 5, 2]),
                "CRD" => x.reshape(&[nb, c, b, b, h, w]).permute(&[0, 1, 4, 2, 5, 3]),
                other => return Err(format!("mode {other:?} is not supported")),
            };
            one(y.reshape(&[nb, c, h * b, w * b]))
        }
        "Resize" => one(resize(&n, args)?),
        other => Err(format!("op {other} has no implementation")),
    }
}
