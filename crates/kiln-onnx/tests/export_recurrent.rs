//! LSTM, GRU and RNN export (`kiln_onnx::export::recurrent`): one-layer and stacked,
//! bidirectional, batch-first and time-major, with and without biases, checked by
//! `onnx.checker` and ONNX Runtime against kiln's forward pass — the output sequence, the last
//! hidden states and the LSTM's cell states — so the gate reordering (PyTorch's i, f, g, o to
//! ONNX's i, o, f, c; r, z, n to z, r, h with `linear_before_reset`) is checked by a runtime kiln
//! did not write. The exported LSTMs, GRUs and RNNs also go back through `kiln_onnx::import`.

mod support;

use std::fmt;

use kiln_autograd::Var;
use kiln_nn::{Forward, GRUConfig, LSTMConfig, Layer, Module, RNNConfig, RNNNonlinearity, TensorKind, GRU, LSTM, RNN};
use kiln_onnx::export::recurrent::{recurrent, RecurrentKind};
use kiln_onnx::export::{attr_ints, Exporter, Value};
use kiln_onnx::{export, import, ExportOptions, OnnxError};
use kiln_tensor::{Rng, Tensor};
use support::{assert_close, run_ort, temp_dir, Case};

enum Net {
    Lstm(LSTM),
    Gru(GRU),
    Rnn(RNN),
}

/// What the model returns: the output sequence, or one of the final states laid out as
/// `[batch, layers * dirs * H]` (a classifier's usual input).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Take {
    Output,
    HiddenState,
    CellState,
}

/// A recurrent layer and which of its results the model returns.
struct Recurrent {
    net: Net,
    take: Take,
}

impl Recurrent {
    fn module(&self) -> &dyn Module<f32> {
        match &self.net {
            Net::Lstm(l) => l,
            Net::Gru(g) => g,
            Net::Rnn(r) => r,
        }
    }

    fn kind_and_layout(&self) -> (RecurrentKind, bool) {
        match &self.net {
            Net::Lstm(l) => (RecurrentKind::Lstm, l.config.batch_first),
            Net::Gru(g) => (RecurrentKind::Gru, g.config.batch_first),
            Net::Rnn(r) => (
                match r.config.nonlinearity {
                    RNNNonlinearity::Tanh => RecurrentKind::RnnTanh,
                    RNNNonlinearity::Relu => RecurrentKind::RnnRelu,
                },
                r.config.batch_first,
            ),
        }
    }
}

impl Module for Recurrent {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        self.module().visit(prefix, f);
    }
    fn set_training(&mut self, training: bool) {
        match &mut self.net {
            Net::Lstm(l) => l.set_training(training),
            Net::Gru(g) => g.set_training(training),
            Net::Rnn(r) => r.set_training(training),
        }
    }
    fn is_training(&self) -> bool {
        self.module().is_training()
    }
}

/// `[layers * dirs, batch, H]` -> `[batch, layers * dirs * H]`.
fn flatten_state(s: &Var<f32>) -> Var<f32> {
    let t = s.transpose(0, 1);
    let shape = t.shape();
    t.reshape(&[shape[0], shape[1] * shape[2]])
}

impl Forward for Recurrent {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        let (out, h_n, c_n) = match &self.net {
            Net::Lstm(l) => {
                let (o, (h, c)) = l.forward(x);
                (o, h, Some(c))
            }
            Net::Gru(g) => {
                let (o, h) = g.forward(x);
                (o, h, None)
            }
            Net::Rnn(r) => {
                let (o, h) = r.forward(x);
                (o, h, None)
            }
        };
        match self.take {
            Take::Output => out,
            Take::HiddenState => flatten_state(&h_n),
            Take::CellState => flatten_state(&c_n.expect("an LSTM")),
        }
    }
}

impl Recurrent {
    /// `forward` over sequences of the given lengths (PyTorch's packed sequences).
    fn forward_lengths(&self, x: &Var<f32>, lengths: &[usize]) -> Var<f32> {
        let (out, h_n, c_n) = match &self.net {
            Net::Lstm(l) => {
                let (o, (h, c)) = l.forward_with(x, None, Some(lengths));
                (o, h, Some(c))
            }
            Net::Gru(g) => {
                let (o, h) = g.forward_with(x, None, Some(lengths));
                (o, h, None)
            }
            Net::Rnn(r) => {
                let (o, h) = r.forward_with(x, None, Some(lengths));
                (o, h, None)
            }
        };
        match self.take {
            Take::Output => out,
            Take::HiddenState => flatten_state(&h_n),
            Take::CellState => flatten_state(&c_n.expect("an LSTM")),
        }
    }
}

impl fmt::Display for Recurrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = match &self.net {
            Net::Lstm(l) => l.to_string(),
            Net::Gru(g) => g.to_string(),
            Net::Rnn(r) => r.to_string(),
        };
        write!(f, "Recurrent({inner}, {:?})", self.take)
    }
}

/// The user's converter for `Recurrent`: the recurrent layer through `recurrent`, then the
/// state flattened as in `flatten_state`.
fn convert_recurrent(
    layer: &dyn Layer<f32>,
    ex: &mut Exporter,
    prefix: &str,
    x: &Value,
) -> Option<Result<String, OnnxError>> {
    let r = layer.downcast_ref::<Recurrent>()?;
    let (kind, batch_first) = r.kind_and_layout();
    let run = |ex: &mut Exporter| -> Result<String, OnnxError> {
        let outs = recurrent(ex, r.module(), kind, batch_first, prefix, x)?;
        let state = match r.take {
            Take::Output => return Ok(outs.output),
            Take::HiddenState => outs.h_n,
            Take::CellState => outs.c_n.expect("an LSTM has a cell state"),
        };
        let t = ex.node("Transpose", &[&state], vec![attr_ints("perm", &[1, 0, 2])]);
        let shape = ex.const_i64("state_shape", &[0, -1]);
        Ok(ex.node("Reshape", &[&t, &shape], vec![]))
    };
    Some(run(ex))
}

fn lstm(c: LSTMConfig) -> Net {
    Net::Lstm(c.build().unwrap())
}
fn gru(c: GRUConfig) -> Net {
    Net::Gru(c.build().unwrap())
}
fn rnn(c: RNNConfig) -> Net {
    Net::Rnn(c.build().unwrap())
}

/// `(name, model, example shape)`: batch-first models vary the batch in ONNX Runtime, the
/// time-major ones the sequence length (axis 0 is the dynamic one either way).
fn cases() -> Vec<(&'static str, Recurrent, Vec<usize>)> {
    let bf = |net, take| Recurrent { net, take };
    vec![
        ("lstm", bf(lstm(LSTMConfig::new(3, 5)), Take::Output), vec![1, 2, 3]),
        (
            "lstm_2layer_bidirectional_batch_first",
            bf(
                lstm(LSTMConfig {
                    num_layers: 2,
                    bidirectional: true,
                    batch_first: true,
                    dropout: 0.3,
                    ..LSTMConfig::new(4, 6)
                }),
                Take::Output,
            ),
            vec![1, 5, 4],
        ),
        (
            "lstm_h_n",
            bf(
                lstm(LSTMConfig { num_layers: 2, bidirectional: true, batch_first: true, ..LSTMConfig::new(4, 3) }),
                Take::HiddenState,
            ),
            vec![1, 6, 4],
        ),
        (
            "lstm_c_n",
            bf(lstm(LSTMConfig { num_layers: 2, batch_first: true, ..LSTMConfig::new(4, 3) }), Take::CellState),
            vec![1, 6, 4],
        ),
        ("lstm_no_bias", bf(lstm(LSTMConfig { bias: false, ..LSTMConfig::new(3, 4) }), Take::Output), vec![1, 2, 3]),
        ("gru", bf(gru(GRUConfig::new(3, 5)), Take::Output), vec![1, 2, 3]),
        (
            "gru_2layer_bidirectional_batch_first",
            bf(
                gru(GRUConfig { num_layers: 2, bidirectional: true, batch_first: true, ..GRUConfig::new(4, 6) }),
                Take::Output,
            ),
            vec![1, 5, 4],
        ),
        (
            "gru_h_n",
            bf(
                gru(GRUConfig { num_layers: 3, bidirectional: true, batch_first: true, ..GRUConfig::new(2, 3) }),
                Take::HiddenState,
            ),
            vec![1, 4, 2],
        ),
        ("gru_no_bias", bf(gru(GRUConfig { bias: false, ..GRUConfig::new(3, 4) }), Take::Output), vec![1, 2, 3]),
        (
            "rnn_tanh_2layer_bidirectional",
            bf(rnn(RNNConfig { num_layers: 2, bidirectional: true, ..RNNConfig::new(3, 5) }), Take::Output),
            vec![1, 2, 3],
        ),
        (
            "rnn_relu_h_n",
            bf(
                rnn(RNNConfig {
                    nonlinearity: RNNNonlinearity::Relu,
                    num_layers: 2,
                    batch_first: true,
                    ..RNNConfig::new(3, 4)
                }),
                Take::HiddenState,
            ),
            vec![1, 5, 3],
        ),
    ]
}

#[test]
fn recurrent_layers_match_onnx_runtime() {
    let dir = temp_dir("export_recurrent");
    let mut rng = Rng::new(11);
    let (mut runs, mut expected) = (vec![], vec![]);
    for (name, mut model, shape) in cases() {
        model.eval();
        let path = dir.join(format!("{name}.onnx"));
        let example = Tensor::randn(&shape, &mut rng);
        let options = ExportOptions { converters: vec![convert_recurrent], ..Default::default() };
        let y = export(&model, &example, &path, options).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(y.shape(), model.forward(&Var::constant(example.clone())).shape().as_slice(), "{name}");
        // kiln's own importer runs the exported LSTMs, GRUs and RNNs too.
        let back = import(&path).unwrap_or_else(|e| panic!("{name}: import: {e}"));
        let x = Tensor::randn(&shape, &mut rng);
        let want = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
        let got = kiln_autograd::no_grad(|| back.forward(&Var::constant(x)).value());
        assert_close(&format!("{name}: export -> import"), &got, &want, 1e-5);
        for axis0 in [1usize, 7] {
            let mut s = shape.clone();
            s[0] = axis0;
            let x = Tensor::randn(&s, &mut rng);
            let want = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
            runs.push(Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 });
            expected.push((format!("{name} with axis 0 = {axis0}"), want));
        }
    }
    let Some(results) = run_ort(&dir, &runs) else { return };
    for (res, (what, want)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &got[0], &want, 1e-5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Gives every LSTM/GRU/RNN node of the file at `path` the `sequence_lens` input `lengths`
/// (an int32 initializer), as exporters write for padded batches.
fn with_sequence_lens(path: &std::path::Path, lengths: &[usize]) {
    use kiln_onnx::proto::{data_type, ModelProto, TensorProto};
    use prost::Message;
    let mut m = ModelProto::decode(&*std::fs::read(path).unwrap()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let mut patched = 0;
    for node in g.node.iter_mut().filter(|n| ["LSTM", "GRU", "RNN"].contains(&n.op_type.as_str())) {
        node.input.resize(node.input.len().max(5), String::new());
        node.input[4] = "test_sequence_lens".into();
        patched += 1;
    }
    assert!(patched > 0, "{}: no recurrent node", path.display());
    g.initializer.push(TensorProto {
        name: "test_sequence_lens".into(),
        data_type: data_type::INT32,
        dims: vec![lengths.len() as i64],
        int32_data: lengths.iter().map(|&l| l as i32).collect(),
        ..Default::default()
    });
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

#[test]
fn sequence_lens_match_onnx_runtime_and_import() {
    // The exported recurrent nodes given sequence_lens: ONNX Runtime and kiln's importer both
    // compute what kiln's layers compute over packed sequences of those lengths (outputs zero
    // past a sequence's end, final states at its last step, the reverse direction starting
    // there).
    let dir = temp_dir("export_recurrent_lengths");
    let mut rng = Rng::new(12);
    let lengths = [5usize, 2, 1];
    let (mut runs, mut expected) = (vec![], vec![]);
    let names = [
        "lstm_2layer_bidirectional_batch_first",
        "lstm_h_n",
        "lstm_c_n",
        "gru_2layer_bidirectional_batch_first",
        "gru_h_n",
        "rnn_tanh_2layer_bidirectional",
        "rnn_relu_h_n",
    ];
    for (name, mut model, shape) in cases().into_iter().filter(|(n, ..)| names.contains(n)) {
        model.eval();
        let path = dir.join(format!("{name}.onnx"));
        let batch_first = model.kind_and_layout().1;
        // batch 3 with 5 steps, on the model's own layout
        let shape = if batch_first { vec![3, 5, shape[2]] } else { vec![5, 3, shape[2]] };
        let x = Tensor::randn(&shape, &mut rng);
        let options = ExportOptions { converters: vec![convert_recurrent], dynamic_batch: false, ..Default::default() };
        export(&model, &x, &path, options).unwrap_or_else(|e| panic!("{name}: {e}"));
        with_sequence_lens(&path, &lengths);
        let want = kiln_autograd::no_grad(|| model.forward_lengths(&Var::constant(x.clone()), &lengths).value());
        let full = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
        assert!(want.to_vec() != full.to_vec(), "{name}: the lengths change the result");
        let back = import(&path).unwrap_or_else(|e| panic!("{name}: import: {e}"));
        assert_close(&format!("{name}: import"), &back.forward(&Var::constant(x.clone())).value(), &want, 1e-5);
        runs.push(Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 });
        expected.push((name, want));
    }
    assert_eq!(expected.len(), names.len());
    if let Some(results) = run_ort(&dir, &runs) {
        for (res, (name, want)) in results.into_iter().zip(expected) {
            let got = res.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_close(&format!("{name}: ONNX Runtime"), &got[0], &want, 1e-5);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_training_recurrent_layer_or_a_2d_input_is_a_typed_error() {
    let dir = temp_dir("export_recurrent_errors");
    let options = || ExportOptions { converters: vec![convert_recurrent], ..Default::default() };
    let model = Recurrent {
        net: lstm(LSTMConfig { dropout: 0.2, num_layers: 2, ..LSTMConfig::new(3, 4) }),
        take: Take::Output,
    };
    let err = export(&model, &Tensor::zeros(&[2, 1, 3]), dir.join("t.onnx"), options()).unwrap_err();
    assert!(matches!(&err, OnnxError::UnsupportedLayer { reason, .. } if reason.contains("eval()")), "{err}");
    let mut model = model;
    model.eval();
    let err = export(&model, &Tensor::zeros(&[2, 3]), dir.join("u.onnx"), options()).unwrap_err();
    assert!(matches!(&err, OnnxError::UnsupportedLayer { reason, .. } if reason.contains("3-d")), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
