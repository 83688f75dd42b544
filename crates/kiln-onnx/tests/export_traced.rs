//! Tracing export of `#[derive(Module)]` structs whose `forward` is hand-written Rust over kiln
//! ops (residual adds, concatenation, a hand-made attention with matmul and softmax, slices,
//! reshapes by the batch, an embedding fed by the input): exported at batch 1 with a dynamic
//! batch, checked by `onnx.checker.check_model(full_check=True)` and run by ONNX Runtime at
//! batch 1 and 7 against kiln; parameters keep their `state_dict` keys. An op that cannot be
//! exported is a typed error naming it.

mod support;

use kiln_autograd::Var;
use kiln_nn::{
    Conv2d, ConvTranspose2d, ConvTranspose2dConfig, Embedding, Forward, GroupNorm, LayerNorm, Linear, Module,
    MultiheadAttention, Sequential, TransformerEncoderLayer, LSTM,
};
use kiln_onnx::{export_traced, import, ExportOptions, OnnxError};
use kiln_tensor::Norm;
use kiln_tensor::{Indices, PadMode, Rng, Tensor};
use support::{assert_close, run_ort, temp_dir, Case};

/// Self-attention written by hand, a residual join, layer norm, a concatenation, a slice, a
/// mean over time and a classifier head.
#[derive(Module)]
struct HandAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    proj: Linear,
    norm: LayerNorm,
    head: Linear,
}

impl HandAttention {
    fn new() -> Self {
        HandAttention {
            q: Linear::new(8, 8),
            k: Linear::new(8, 8),
            v: Linear::new(8, 8),
            proj: Linear::new(8, 8),
            norm: LayerNorm::new(&[8]),
            head: Linear::new(12, 3),
        }
    }
}

impl Forward for HandAttention {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        // x: [N, T, 8]
        let (q, k, v) = (self.q.forward(x), self.k.forward(x), self.v.forward(x));
        let scores = q.matmul(&k.transpose(-2, -1)).mul_scalar(1.0 / 8f32.sqrt());
        let ctx = scores.softmax(-1).matmul(&v);
        let y = self.norm.forward(&x.add(&self.proj.forward(&ctx)));
        let both = Var::cat(&[y.gelu(), x.narrow(-1, 2, 4).sigmoid()], -1); // [N, T, 12]
        let pooled = both.mean(&[1], false); // [N, 12]
        self.head.forward(&pooled).tanh().log_softmax(-1)
    }
}

/// A small CNN written as a forward function: convolution, ReLU, max pool, a flatten by the
/// batch size, a skip of the pooled features, a linear head.
#[derive(Module)]
struct HandCnn {
    conv: Conv2d,
    fc: Linear,
}

impl Forward for HandCnn {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        let h = self.conv.forward(x).relu(); // [N, 4, 6, 6]
        let p = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false); // [N, 4, 3, 3]
        let a = h.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None);
        let z = p.add(&a).permute(&[0, 2, 3, 1]); // [N, 3, 3, 4]
        let n = z.size(0);
        let flat = z.reshape(&[n, 36]);
        self.fc.forward(&flat).sub(&flat.sum(&[-1], true).mul_scalar(0.01)).div(&flat.max(&[1], true).add_scalar(1.0))
    }
}

/// Token embedding plus a learned position embedding looked up with constant positions,
/// summed over time, then a linear layer.
#[derive(Module)]
struct HandEmbed {
    tokens: Embedding,
    positions: Embedding,
    out: Linear,
}

impl Forward for HandEmbed {
    fn forward(&self, ids: &Var<f32>) -> Var<f32> {
        let t = ids.size(1);
        let tok = self.tokens.forward(ids); // [N, T, 6]
        let pos = Var::embedding(&self.positions.weight, &Indices::new((0..t).collect(), &[t]), None); // [T, 6]
        let h = tok.add(&pos).relu();
        let s = Var::stack(&[h.sum(&[1], false), h.max(&[1], false)], 1); // [N, 2, 6]
        self.out.forward(&s.flatten(1, 2))
    }
}

/// Many more ops in one forward: flip, leaky ReLU, ELU, a transposed convolution, adaptive
/// pooling, group norm, select, clamp, softplus, index_select, unsqueeze + expand by the batch,
/// logsumexp, SiLU, rsqrt, powf, a reciprocal.
#[derive(Module)]
struct HandOps {
    deconv: ConvTranspose2d,
    norm: GroupNorm,
}

impl Forward for HandOps {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        // x: [N, 3, 4, 4]
        let a = x.flip(&[-1]).leaky_relu(0.1).elu(1.0);
        let b = self.deconv.forward(x).adaptive_avg_pool2d([4, 4]); // [N, 2, 4, 4]
        let c = self.norm.forward(&b);
        let d = Var::cat(&[a, c], 1); // [N, 5, 4, 4]
        let e = d.select(2, 1).clamp(Some(-1.0), Some(1.0)).softplus(1.0, 20.0); // [N, 5, 4]
        let f = e.index_select(1, &[0, 2, 4]); // [N, 3, 4]
        let n = f.size(0);
        let g = f.unsqueeze(1).expand(&[n, 2, 3, 4]).mul(&f.unsqueeze(1).t_last()); // [N, 2, 3, 4]
        let h = g.logsumexp(&[1], false); // [N, 3, 4]
        h.silu().add_scalar(2.0).rsqrt().powf(1.5).rdiv_scalar(1.0).flatten(1, 2)
    }
}

/// Variance and standard deviation, constant masks (`masked_fill`, `where_`), the three pad
/// modes, `repeat`, and elementwise ops whose ONNX nodes import needs too (`Exp`, `Log`, `Abs`,
/// `Sign`, `Sin`, `Cos`, `Max`, `Min`): exported with a dynamic batch.
#[derive(Module)]
struct HandStats {
    fc: Linear,
}

impl Forward for HandStats {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        // x: [N, 4, 6]
        let h = self.fc.forward(x);
        let z = h.sub(&h.mean(&[-1], true)).div(&h.std(&[-1], 1, true).add_scalar(1e-3));
        let spread = h.var(&[1, 2], 0, false).unsqueeze(1); // [N, 1]
        let upper = Tensor::from_vec((0..24).map(|i| f32::from(u8::from(i % 6 > i / 6))).collect(), &[4, 6]);
        let every_other = Tensor::from_vec((0..6).map(|i| (i % 2) as f32).collect(), &[1, 6]);
        let m = z.masked_fill(&upper, -2.5).where_(&every_other, &h.neg()); // [N, 4, 6]
        let e = m.exp().add(&m.abs().add_scalar(1.0).log()).add(&m.sign().mul(&m.sin())).maximum(&m.cos()).minimum(&h);
        let p = e
            .pad(&[(1, 2)], PadMode::Constant(0.5))
            .pad(&[(2, 1), (1, 0)], PadMode::Reflect)
            .pad(&[(1, 1)], PadMode::Replicate); // [N, 5, 14]
        let r = p.repeat(&[1, 2, 1]); // [N, 10, 14]
        Var::cat(&[r.flatten(1, 2), spread], 1)
    }
}

/// `gather` with an index made for the batch at hand and `repeat` adding leading axes: the
/// index is a constant of the trace, so this one is exported at a fixed batch.
#[derive(Module)]
struct HandGather {
    fc: Linear,
}

impl Forward for HandGather {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        // x: [N, 3, 5]
        let n = x.size(0);
        let h = self.fc.forward(x);
        let index = Indices::new((0..n * 6).map(|i| (i * 7) % 5).collect(), &[n, 3, 2]);
        h.gather(2, &index).repeat(&[2, 1, 2, 3]) // [2, N, 6, 6]
    }
}

/// kiln's fused attention kernels inside a hand-written forward: a Transformer encoder layer
/// (packed self-attention), a cross-attention from a second projection (separate q, k, v), and
/// vector norms (L1, L2, L3, ∞).
#[derive(Module)]
struct HandTransformer {
    layer: TransformerEncoderLayer,
    memory: Linear,
    cross: MultiheadAttention,
}

impl Forward for HandTransformer {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        // x: [N, 5, 8]
        let h = self.layer.forward(x);
        let m = self.memory.forward(x).tanh();
        let (c, _) = self.cross.forward(&h, &m, &m, None, false, None, false);
        let scale = c.norm(Norm::P(2.0), &[-1], true).add(&c.norm(Norm::P(1.0), &[-1], true)).add_scalar(1.0);
        let y = c.div(&scale);
        let extremes = y.norm(Norm::Inf, &[1], false).add(&y.norm(Norm::P(3.0), &[1], false)); // [N, 8]
        Var::cat(&[y.flatten(1, 2), extremes], 1)
    }
}

/// An LSTM classifier with its own forward, as `examples/imdb_lstm.rs` writes one: word ids
/// through an embedding, a 2-layer bidirectional LSTM (kiln's fused recurrence, zero first
/// states made from the batch size), the mean output over time beside the last layer's final
/// states, a linear head.
#[derive(Module)]
struct HandLstm {
    embedding: Embedding,
    lstm: LSTM,
    fc: Linear,
}

impl Forward for HandLstm {
    fn forward(&self, ids: &Var<f32>) -> Var<f32> {
        // ids: [N, 6]
        let words = self.embedding.forward(ids);
        let (out, (h_n, c_n)) = self.lstm.forward(&words); // out [N, 6, 10], h_n/c_n [4, N, 5]
        let last = Var::cat(&[h_n.select(0, 2), h_n.select(0, 3), c_n.select(0, 3)], 1); // [N, 15]
        self.fc.forward(&Var::cat(&[out.mean(&[1], false), last], 1))
    }
}

/// An LSTM over sequences of different lengths (a fixed batch of 3), forward and reverse.
#[derive(Module)]
struct HandLstmLengths {
    embedding: Embedding,
    lstm: LSTM,
    fc: Linear,
}

impl Forward for HandLstmLengths {
    fn forward(&self, ids: &Var<f32>) -> Var<f32> {
        // ids: [3, 6]; the sequences run 6, 3 and 1 steps
        let words = self.embedding.forward(ids);
        let (out, (h_n, c_n)) = self.lstm.forward_with(&words, None, Some(&[6, 3, 1]));
        let last = Var::cat(&[h_n.select(0, 2), h_n.select(0, 3), c_n.select(0, 1)], 1); // [3, 15]
        self.fc.forward(&Var::cat(&[out.sum(&[1], false), last], 1))
    }
}

/// A helper trait keeping the forward above readable: the last two axes swapped twice (two
/// transposes that cancel), to exercise transpose on a batch-carrying value.
trait TLast {
    fn t_last(&self) -> Var<f32>;
}

impl TLast for Var<f32> {
    fn t_last(&self) -> Var<f32> {
        self.transpose(-1, -2).transpose(-2, -1)
    }
}

type Make = fn(&[usize], &mut Rng) -> Tensor<f32>;

fn randn(shape: &[usize], rng: &mut Rng) -> Tensor<f32> {
    Tensor::randn(shape, rng)
}

fn ids(shape: &[usize], rng: &mut Rng) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.next_u64() % 11) as f32).collect();
    Tensor::from_vec(v, shape)
}

/// Exports `model` by tracing at batch 1, checks the parameter names through `import`, and
/// queues ONNX Runtime cases at batch 1 and 7.
fn check_model<M: Module<f32> + Forward<f32>>(
    name: &str,
    model: &M,
    shape: &[usize],
    make: Make,
    dir: &std::path::Path,
    rng: &mut Rng,
    cases: &mut Vec<Case>,
    expected: &mut Vec<(String, Tensor<f32>)>,
) {
    let path = dir.join(format!("{name}.onnx"));
    let example = make(shape, rng);
    let y = export_traced(model, |x| model.forward(x), &example, &path, ExportOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = kiln_autograd::no_grad(|| model.forward(&Var::constant(example.clone())).value());
    assert_close(&format!("{name}: the traced output is kiln's"), &y, &want, 0.0);
    // every parameter is an initializer under its state_dict key, and import runs the graph
    let back = import(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut got: Vec<String> = back.named_parameters().into_iter().map(|(n, _)| n).collect();
    let mut keys: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    got.retain(|n| keys.contains(n));
    got.sort();
    keys.sort();
    assert_eq!(got, keys, "{name}: parameter names");
    for batch in [1usize, 7] {
        let mut s = shape.to_vec();
        s[0] = batch;
        let x = if batch == 1 { example.clone() } else { make(&s, rng) };
        let y = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
        let imported = back.forward(&Var::constant(x.clone())).value();
        assert_close(&format!("{name} imported at batch {batch}"), &imported, &y, 1e-5);
        cases.push(Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 });
        expected.push((format!("{name} at batch {batch}"), y));
    }
}

#[test]
fn traced_forwards_match_onnx_runtime_at_batch_1_and_7() {
    let dir = temp_dir("export_traced");
    let mut rng = Rng::new(11);
    let (mut cases, mut expected) = (vec![], vec![]);
    let mut attention = HandAttention::new();
    attention.eval();
    check_model("hand_attention", &attention, &[1, 5, 8], randn, &dir, &mut rng, &mut cases, &mut expected);
    let cnn = HandCnn { conv: Conv2d::new(2, 4, 3), fc: Linear::new(36, 5) };
    check_model("hand_cnn", &cnn, &[1, 2, 8, 8], randn, &dir, &mut rng, &mut cases, &mut expected);
    let embed = HandEmbed { tokens: Embedding::new(11, 6), positions: Embedding::new(4, 6), out: Linear::new(12, 2) };
    check_model("hand_embed", &embed, &[1, 4], ids, &dir, &mut rng, &mut cases, &mut expected);
    let Some(results) = run_ort(&dir, &cases) else { return };
    for (res, (what, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &got[0], &y, 1e-5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_traced_ops_match_onnx_runtime() {
    let dir = temp_dir("export_traced_ops");
    let mut rng = Rng::new(5);
    let deconv = ConvTranspose2dConfig { stride: [2, 2], ..ConvTranspose2dConfig::new(3, 2, 2) }.build().unwrap();
    let model = HandOps { deconv, norm: GroupNorm::new(1, 2) };
    let (mut cases, mut expected) = (vec![], vec![]);
    let path = dir.join("hand_ops.onnx");
    let example = randn(&[1, 3, 4, 4], &mut rng);
    export_traced(&model, |x| model.forward(x), &example, &path, ExportOptions::default()).unwrap();
    // Clip, Expand, ReduceLogSumExp, Reciprocal, ... come back through import
    let back = import(&path).unwrap();
    for batch in [1usize, 6] {
        let x = if batch == 1 { example.clone() } else { randn(&[batch, 3, 4, 4], &mut rng) };
        let y = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
        assert_close(
            &format!("hand_ops imported at batch {batch}"),
            &back.forward(&Var::constant(x.clone())).value(),
            &y,
            1e-5,
        );
        cases.push(Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 });
        expected.push((format!("hand_ops at batch {batch}"), y));
    }
    let Some(results) = run_ort(&dir, &cases) else { return };
    for (res, (what, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &got[0], &y, 1e-5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs the file at `path` in ONNX Runtime and through kiln's import on each input, against
/// `model`'s own outputs.
fn ort_and_import<M: Forward<f32>>(name: &str, model: &M, path: &std::path::Path, inputs: Vec<Tensor<f32>>) {
    let back = import(path).unwrap_or_else(|e| panic!("{name}: import: {e}"));
    let (mut cases, mut expected) = (vec![], vec![]);
    for x in inputs {
        let y = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
        let again = back.forward(&Var::constant(x.clone())).value();
        assert_close(&format!("{name} imported at {:?}", x.shape()), &again, &y, 1e-5);
        cases.push(Case { model: path.to_path_buf(), inputs: vec![("input".into(), x.clone(), false)], outputs: 1 });
        expected.push((format!("{name} at {:?}", x.shape()), y));
    }
    let Some(results) = run_ort(path.parent().unwrap(), &cases) else { return };
    for (res, (what, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &got[0], &y, 1e-5);
    }
}

#[test]
fn variance_masks_pads_and_repeats_match_onnx_runtime_and_import() {
    let dir = temp_dir("export_traced_stats");
    let mut rng = Rng::new(8);
    let model = HandStats { fc: Linear::new(6, 6) };
    let path = dir.join("hand_stats.onnx");
    let example = randn(&[1, 4, 6], &mut rng);
    export_traced(&model, |x| model.forward(x), &example, &path, ExportOptions::default()).unwrap();
    ort_and_import("hand_stats", &model, &path, vec![example, randn(&[5, 4, 6], &mut rng)]);

    let model = HandGather { fc: Linear::new(5, 5) };
    let path = dir.join("hand_gather.onnx");
    let example = randn(&[2, 3, 5], &mut rng);
    // with a dynamic batch the constant index cannot follow the batch: a typed error
    let err = export_traced(&model, |x| model.forward(x), &example, &path, ExportOptions::default()).unwrap_err();
    assert!(
        matches!(&err, OnnxError::Traced { op, reason } if op == "gather" && reason.contains("dynamic_batch")),
        "{err}"
    );
    let fixed = ExportOptions { dynamic_batch: false, ..Default::default() };
    export_traced(&model, |x| model.forward(x), &example, &path, fixed).unwrap();
    ort_and_import("hand_gather", &model, &path, vec![example]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fused_attention_and_norms_match_onnx_runtime_and_import() {
    let dir = temp_dir("export_traced_attention");
    let mut rng = Rng::new(21);
    let mut model = HandTransformer {
        layer: TransformerEncoderLayer::new(8, 2).dim_feedforward(16).batch_first(true),
        memory: Linear::new(8, 8),
        cross: MultiheadAttention::new(8, 4).batch_first(true),
    };
    model.eval();
    let path = dir.join("hand_transformer.onnx");
    let example = randn(&[1, 5, 8], &mut rng);
    export_traced(&model, |x| model.forward(x), &example, &path, ExportOptions::default()).unwrap();
    ort_and_import("hand_transformer", &model, &path, vec![example, randn(&[4, 5, 8], &mut rng)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fused_lstm_matches_onnx_runtime_and_import() {
    let dir = temp_dir("export_traced_lstm");
    let mut rng = Rng::new(3);
    let mut model = HandLstm {
        embedding: Embedding::new(11, 4),
        lstm: LSTM::new(4, 5).num_layers(2).bidirectional(true).batch_first(true),
        fc: Linear::new(25, 3),
    };
    model.eval();
    let path = dir.join("hand_lstm.onnx");
    let example = ids(&[1, 6], &mut rng);
    export_traced(&model, |x| model.forward(x), &example, &path, ExportOptions::default()).unwrap();
    ort_and_import("hand_lstm", &model, &path, vec![example, ids(&[3, 6], &mut rng)]);

    // sequence lengths: the LSTM's sequence_lens input, run by ONNX Runtime and by import
    let mut model = HandLstmLengths {
        embedding: Embedding::new(11, 4),
        lstm: LSTM::new(4, 5).num_layers(2).bidirectional(true).batch_first(true),
        fc: Linear::new(25, 3),
    };
    model.eval();
    let path = dir.join("hand_lstm_lengths.onnx");
    let example = ids(&[3, 6], &mut rng);
    // three lengths fix the batch: with a dynamic batch the trace at another batch fails, a
    // typed error
    let err = export_traced(&model, |x| model.forward(x), &example, &path, ExportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::Traced { reason, .. } if reason.contains("3 lengths for a batch")), "{err}");
    let fixed = ExportOptions { dynamic_batch: false, ..Default::default() };
    export_traced(&model, |x| model.forward(x), &example, &path, fixed).unwrap();
    let text = std::fs::read(&path).unwrap();
    assert!(text.windows(14).any(|w| w == b"sequence_lens_") || text.windows(13).any(|w| w == b"sequence_lens"));
    ort_and_import("hand_lstm_lengths", &model, &path, vec![example, ids(&[3, 6], &mut rng)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_op_without_an_onnx_conversion_is_a_typed_error_naming_it() {
    let model = Sequential::new().add(Linear::new(4, 4));
    let path = std::env::temp_dir().join(format!("kiln_onnx_traced_err_{}.onnx", std::process::id()));
    let x = Tensor::ones(&[1, 4]);
    // dropout in training mode is random: no ONNX graph computes it
    let err = export_traced(
        &model,
        |x| model.forward(x).dropout(0.5, true, &mut Rng::new(1)),
        &x,
        &path,
        ExportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(&err, OnnxError::Traced { op, .. } if op == "dropout"), "{err}");
    assert!(err.to_string().contains("\"dropout\""), "{err}");
    // a scatter-add has no conversion either
    let scatter = |x: &Var<f32>| {
        let y = model.forward(x);
        y.scatter_add(1, &Indices::new(vec![3, 0, 1, 2], &[1, 4]), &y)
    };
    let err = export_traced(&model, scatter, &x, &path, ExportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::Traced { op, .. } if op == "scatter_add"), "{err}");
    assert!(!path.exists());
}

#[test]
fn a_forward_that_hard_codes_the_batch_is_an_error_with_a_dynamic_batch_only() {
    let model = Sequential::new().add(Linear::new(4, 6));
    let path = std::env::temp_dir().join(format!("kiln_onnx_traced_batch_{}.onnx", std::process::id()));
    let x = Tensor::ones(&[1, 4]);
    let forward = |x: &Var<f32>| model.forward(x).reshape(&[1, 2, 3]);
    let err = export_traced(&model, forward, &x, &path, ExportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::Traced { op, reason } if op == "forward" && reason.contains("batch 2")), "{err}");
    let options = ExportOptions { dynamic_batch: false, ..Default::default() };
    let y = export_traced(&model, forward, &x, &path, options).unwrap();
    assert_eq!(y.shape(), &[1, 2, 3]);
    let back = import(&path).unwrap();
    assert_close("import", &back.forward(&Var::constant(x.clone())).value(), &y, 1e-6);
    std::fs::remove_file(&path).unwrap();
}
