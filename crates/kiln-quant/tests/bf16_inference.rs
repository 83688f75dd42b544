//! bfloat16 inference against the `f32` kiln-nn layers it is converted from.
//!
//! Each layer is checked two ways: against its `f32` layer run on the bfloat16-rounded weights
//! and input (only the `f32` summation order and the final rounding may differ:
//! `|got - ref| <= u |ref| + γ Σ|a||b|`, `u = 2^-8` the unit roundoff of bfloat16's 8
//! significant bits), and against the `f32` layer itself (each product of two rounded values is
//! off by at most `(2u + u²) |a||b|`, the output by one more rounding).

use kiln_autograd::Var;
use kiln_nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Embedding, EmbeddingConfig, Flatten, Forward, LSTMConfig, Linear,
    LinearConfig, LogSoftmax, MaxPool2d, Module, Padding, ReLU, Sequential, LSTM,
};
use kiln_quant::{bf16_sequential, Bf16Conv2d, Bf16Embedding, Bf16LSTM, Bf16Layer, Bf16Linear};
use kiln_tensor::{Bf16Tensor, Indices, Rng, Tensor};
use proptest::prelude::*;

/// bfloat16's unit roundoff: rounding moves a value by at most `2^-8` of itself.
const EPS: f32 = 1.0 / 256.0;

fn round(t: &Tensor<f32>) -> Tensor<f32> {
    t.to_bf16().to_f32()
}

fn run(layer: &dyn Forward<f32>, x: &Tensor<f32>) -> Tensor<f32> {
    layer.forward(&Var::constant(x.clone())).value()
}

/// Checks both bounds elementwise. `sums` is `Σ|a||b| + |bias|` per output, `k` the number of
/// products summed; `exact` the `f32` layer's output, `reference` the `f32` layer's output on
/// the rounded weights and input.
fn check(got: &Tensor<f32>, reference: &Tensor<f32>, exact: &Tensor<f32>, sums: &Tensor<f32>, k: usize) {
    assert_eq!(got.shape(), exact.shape());
    let gamma = (k + 2) as f32 * f32::EPSILON;
    let (g, r, e, s) = (got.to_vec(), reference.to_vec(), exact.to_vec(), sums.to_vec());
    for i in 0..g.len() {
        let tight = EPS * (r[i].abs() + gamma * s[i]) + gamma * s[i] + 1e-30;
        assert!(
            (g[i] - r[i]).abs() <= tight,
            "element {i}: {} against the rounded-weight layer's {}, bound {tight}",
            g[i],
            r[i]
        );
        let products = 1.01 * 2.0 * EPS * s[i];
        let loose = products + EPS * (e[i].abs() + products) + gamma * s[i] + 1e-30;
        assert!((g[i] - e[i]).abs() <= loose, "element {i}: {} against the f32 layer's {}, bound {loose}", g[i], e[i]);
    }
}

/// Draws every parameter of `m` from U(-0.5, 0.5) with a generator of its own (kiln-nn's
/// process-wide one is shared by the tests running in parallel, so not reproducible here).
fn seeded<M: Module<f32>>(m: M, seed: u64) -> M {
    let mut rng = Rng::new(seed);
    for p in m.parameters() {
        let shape = p.shape().to_vec();
        p.set_value(Tensor::uniform(&shape, -0.5, 0.5, &mut rng));
    }
    m
}

fn bits(t: &Bf16Tensor) -> Vec<u16> {
    t.as_slice().iter().map(|h| h.to_bits()).collect()
}

fn rounded_bits(t: &Tensor<f32>) -> Vec<u16> {
    t.to_vec().iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn linear_matches_the_f32_layer(
        m in 1usize..5, k in 1usize..40, n in 1usize..9, bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let fc: Linear = LinearConfig { bias, ..LinearConfig::new(k, n) }.build().unwrap();
        fc.weight.set_value(Tensor::uniform(&[n, k], -1.0, 1.0, &mut rng));
        if let Some(b) = &fc.bias {
            b.set_value(Tensor::uniform(&[n], -1.0, 1.0, &mut rng));
        }
        let x = Tensor::uniform(&[m, k], -2.0, 2.0, &mut rng);
        let h = Bf16Linear::from_linear(&fc);
        // stored weights: exactly the bfloat16 rounding, half the bytes
        prop_assert_eq!(bits(h.weight()), rounded_bits(&fc.weight.value()));
        if let (Some(hb), Some(b)) = (h.bias(), &fc.bias) {
            prop_assert_eq!(bits(hb), rounded_bits(&b.value()));
        }
        prop_assert_eq!(h.param_bytes() * 2, 4 * fc.num_parameters());
        let got = h.forward_bf16(&x.to_bf16()).to_f32();
        prop_assert_eq!(got.shape(), &[m, n]);
        let exact = run(&fc, &x);
        // the f32 layer on the rounded weights and input
        let reference = {
            let r: Linear = LinearConfig { bias, ..LinearConfig::new(k, n) }.build().unwrap();
            r.weight.set_value(round(&fc.weight.value()));
            if let (Some(rb), Some(b)) = (&r.bias, &fc.bias) {
                rb.set_value(round(&b.value()));
            }
            run(&r, &round(&x))
        };
        let sums = {
            let a: Linear = LinearConfig { bias, ..LinearConfig::new(k, n) }.build().unwrap();
            a.weight.set_value(fc.weight.value().abs());
            if let (Some(ab), Some(b)) = (&a.bias, &fc.bias) {
                ab.set_value(b.value().abs());
            }
            run(&a, &x.abs())
        };
        check(&got, &reference, &exact, &sums, k);
        // the f32 convenience path is the same computation
        prop_assert_eq!(h.forward_tensor(&x).to_vec(), got.to_vec());
    }

    #[test]
    fn conv2d_matches_the_f32_layer(
        n in 1usize..3, cg in 1usize..3, og in 1usize..3, groups in 1usize..3,
        kh in 1usize..4, kw in 1usize..4, stride in 1usize..3, pad in 0usize..3, same in any::<bool>(),
        dilation in 1usize..3, h in 3usize..8, w in 3usize..8, bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let padding = if same && stride == 1 { Padding::Same } else { Padding::Explicit([pad, pad.saturating_sub(1)]) };
        let config = Conv2dConfig {
            kernel_size: [kh, kw], stride: [stride, stride], padding, dilation: [dilation, 1], groups, bias,
            ..Conv2dConfig::new(cg * groups, og * groups, 1)
        };
        let Ok(conv) = config.build::<f32>() else { return Ok(()) };
        // the kernel must fit the padded input
        prop_assume!(h + 2 * pad > dilation * (kh - 1) && w + 2 * pad.saturating_sub(1) >= kw);
        let mut rng = Rng::new(seed);
        let shape = conv.weight.shape().to_vec();
        conv.weight.set_value(Tensor::uniform(&shape, -1.0, 1.0, &mut rng));
        if let Some(b) = &conv.bias {
            b.set_value(Tensor::uniform(&[og * groups], -1.0, 1.0, &mut rng));
        }
        let x = Tensor::uniform(&[n, cg * groups, h, w], -1.0, 2.0, &mut rng);
        let hc = Bf16Conv2d::from_conv2d(&conv);
        prop_assert_eq!(bits(hc.weight()), rounded_bits(&conv.weight.value()));
        prop_assert_eq!(hc.param_bytes() * 2, 4 * conv.num_parameters());
        let exact = run(&conv, &x);
        let got = hc.forward_bf16(&x.to_bf16()).to_f32();
        let with = |wv: Tensor<f32>, bv: Option<Tensor<f32>>, input: &Tensor<f32>| {
            let c: Conv2d = config.build().unwrap();
            c.weight.set_value(wv);
            if let (Some(cb), Some(b)) = (&c.bias, bv) {
                cb.set_value(b);
            }
            run(&c, input)
        };
        let reference = with(round(&conv.weight.value()), conv.bias.as_ref().map(|b| round(&b.value())), &round(&x));
        let sums = with(conv.weight.value().abs(), conv.bias.as_ref().map(|b| b.value().abs()), &x.abs());
        check(&got, &reference, &exact, &sums, cg * kh * kw);
        // unbatched
        let one = hc.forward_bf16(&x.narrow(0, 0, 1).contiguous().reshape(&[cg * groups, h, w]).to_bf16());
        prop_assert_eq!(one.to_f32().to_vec(), got.narrow(0, 0, 1).contiguous().to_vec());
        prop_assert_eq!(one.shape(), &got.shape()[1..]);
    }
}

#[test]
fn embedding_rows_are_the_rounded_rows() {
    let emb: Embedding = EmbeddingConfig { padding_idx: Some(0), ..EmbeddingConfig::new(300, 5) }.build().unwrap();
    let h = Bf16Embedding::from_embedding(&emb);
    assert_eq!(bits(h.weight()), rounded_bits(&emb.weight.value()));
    assert_eq!(h.param_bytes(), 300 * 5 * 2);
    let ids = Indices::new(vec![0, 299, 7, 7, 256, 1], &[3, 2]);
    let got = h.forward_ids(&ids);
    assert_eq!(got.shape(), &[3, 2, 5]);
    let want = emb.forward_ids(&ids).value();
    assert_eq!(bits(&got), rounded_bits(&want));
    // ids as floats (exact at any size), and as bfloat16 values (exact up to 256)
    let as_f32 = Tensor::from_vec(ids.as_slice().iter().map(|&i| i as f32).collect(), &[3, 2]);
    assert_eq!(bits(&h.forward_tensor(&as_f32)), bits(&got));
    let small = Tensor::from_vec(vec![3.0f32, 256.0], &[2]);
    assert_eq!(bits(&h.forward_bf16(&small.to_bf16())), bits(&h.forward_tensor(&small)));
    assert_eq!(h.to_string(), "Bf16Embedding(300, 5, padding_idx=0) [3000 bytes]");
}

#[test]
#[should_panic(expected = "Bf16Embedding: id 300 out of range for num_embeddings = 300")]
fn embedding_out_of_range_panics() {
    let _ = Bf16Embedding::from_embedding(&Embedding::new(300, 2)).forward_ids(&Indices::new(vec![300], &[1]));
}

#[test]
#[should_panic(expected = "Bf16Linear: input [2, 5] does not end in in_features = 4 (weight [3, 4])")]
fn linear_shape_mismatch_names_both_shapes() {
    let _ = Bf16Linear::from_linear(&Linear::new(4, 3)).forward_tensor(&Tensor::zeros(&[2, 5]));
}

#[test]
#[should_panic(expected = "Bf16Conv2d: input [1, 3, 2, 2] is smaller than the kernel [3, 3] after padding")]
fn conv_too_small_input_panics() {
    let _ = Bf16Conv2d::from_conv2d(&Conv2d::new(3, 2, 3)).forward_tensor(&Tensor::zeros(&[1, 3, 2, 2]));
}

/// The LSTM with its weights replaced by their bfloat16 roundings.
fn rounded_lstm(lstm: &LSTM) -> LSTM {
    let r: LSTM = lstm.config.build().unwrap();
    for (a, b) in r.parameters().iter().zip(lstm.parameters()) {
        a.set_value(round(&b.value()));
    }
    r
}

#[test]
fn lstm_one_step_is_one_rounding_of_the_f32_cell() {
    // One step of one layer: the gates are the f32 layer's up to summation order; c and h are
    // rounded once each (h from the rounded c).
    let lstm: LSTM = seeded(LSTMConfig::new(6, 8).build().unwrap(), 4);
    let x = Tensor::uniform(&[1, 3, 6], -1.0, 1.0, &mut Rng::new(5));
    let (want, (_, want_c)) = rounded_lstm(&lstm).forward(&Var::constant(round(&x)));
    let (got, h_n, c_n) = Bf16LSTM::from_lstm(&lstm).forward_bf16(&x.to_bf16());
    assert_eq!(bits(&h_n), bits(&got.reshape(&[1, 3, 8])));
    let (want, want_c) = (want.value().to_vec(), want_c.value().to_vec());
    for (i, (g, c)) in got.to_f32().to_vec().iter().zip(c_n.to_f32().to_vec()).enumerate() {
        let c_bound = EPS * want_c[i].abs() + 1e-6;
        assert!((c - want_c[i]).abs() <= c_bound, "c {c} against {}", want_c[i]);
        // h = bf16(o tanh(c)): c's rounding moves tanh(c) by at most |dc|, then one rounding
        let h_bound = c_bound + EPS * want[i].abs() * 1.01 + 1e-6;
        assert!((g - want[i]).abs() <= h_bound, "h {g} against {}", want[i]);
    }
}

#[test]
fn lstm_two_layers_bidirectional_batch_first_matches_kiln_nn() {
    let (t_len, batch, hidden) = (6, 3, 8);
    let cfg = LSTMConfig { num_layers: 2, bidirectional: true, batch_first: true, ..LSTMConfig::new(5, hidden) };
    let lstm: LSTM = seeded(cfg.build().unwrap(), 6);
    let h = Bf16LSTM::from_lstm(&lstm);
    for layer in 0..2 {
        for reverse in [false, true] {
            let w = lstm.weights(layer, reverse);
            assert_eq!(bits(h.input_projection(layer, reverse).weight()), rounded_bits(&w.weight_ih.value()));
            assert_eq!(bits(h.recurrent_projection(layer, reverse).weight()), rounded_bits(&w.weight_hh.value()));
            let b = h.recurrent_projection(layer, reverse).bias().expect("bias");
            assert_eq!(bits(b), rounded_bits(&w.bias_hh.as_ref().expect("bias").value()));
        }
    }
    assert_eq!(h.param_bytes() * 2, 4 * lstm.num_parameters());
    let x = Tensor::uniform(&[batch, t_len, 5], -1.0, 1.0, &mut Rng::new(7));
    let (out, h_n, c_n) = h.forward_bf16(&x.to_bf16());
    let (want, (want_h, want_c)) = rounded_lstm(&lstm).forward(&Var::constant(round(&x)));
    let (want_exact, _) = lstm.forward(&Var::constant(x.clone()));
    assert_eq!(out.shape(), &[batch, t_len, 2 * hidden]);
    assert_eq!(h_n.shape(), &[4, batch, hidden]);
    assert_eq!(c_n.shape(), &[4, batch, hidden]);
    // conventions, exactly: h_n of the top layer is its output at the last step (forward)
    // and at the first step (reverse)
    let (o, hn) = (out.to_f32(), h_n.to_f32());
    assert_eq!(hn.select(0, 2).to_vec(), o.select(1, t_len - 1).narrow(1, 0, hidden).contiguous().to_vec());
    assert_eq!(hn.select(0, 3).to_vec(), o.select(1, 0).narrow(1, hidden, hidden).contiguous().to_vec());
    // h and c are rounded once per step and layer; the error of earlier steps is damped (the
    // forget gate is below 1, σ's slope at most 1/4), so it stays within about one rounding
    // (2^-8 of values near 1) per layer
    let bound = 2.0 * EPS;
    for (name, a, b) in [
        ("output", &want.value(), &o),
        ("output (f32 weights)", &want_exact.value(), &o),
        ("h_n", &want_h.value(), &hn),
        ("c_n", &want_c.value(), &c_n.to_f32()),
    ] {
        let e = a.sub(b).abs().max_all();
        assert!(e <= bound, "{name}: max error {e} > {bound}");
    }
    let (o2, _, _) = h.forward_tensor(&x);
    assert_eq!(o2.to_vec(), o.to_vec());
    assert_eq!(
        h.to_string(),
        "Bf16LSTM(5, 8, num_layers=2, bias=true, batch_first=true, bidirectional=true) [5248 bytes]"
    );
    // unbatched
    let one = Bf16LSTM::from_lstm(&LSTM::new(3, 4)).forward_tensor(&Tensor::ones(&[5, 3]));
    assert_eq!((one.0.shape(), one.1.shape()), (&[5, 4][..], &[1, 4][..]));
}

fn tiny_cnn() -> Sequential {
    let conv = |i, o, stride| {
        Conv2dConfig { padding: Padding::Explicit([1, 1]), stride: [stride, stride], ..Conv2dConfig::new(i, o, 3) }
            .build::<f32>()
            .unwrap()
    };
    Sequential::new()
        .add(conv(1, 6, 1))
        .add(BatchNorm2d::new(6))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv(6, 8, 2))
        .add(ReLU)
        .add(Dropout::new(0.5))
        .add(Flatten::default())
        .add(Linear::new(8 * 2 * 2, 16))
        .add(ReLU)
        .add(Linear::new(16, 5))
        .add(LogSoftmax { dim: 1 })
}

#[test]
fn converted_cnn_agrees_with_the_f32_model_and_halves_its_bytes() {
    let mut rng = Rng::new(11);
    let mut model = seeded(tiny_cnn(), 10);
    // give BatchNorm statistics of its own
    model.train();
    let _ = run(&model, &Tensor::uniform(&[32, 1, 8, 8], 0.0, 1.0, &mut rng));
    model.eval();
    let mut copy = tiny_cnn();
    copy.load_state_dict(&model.state_dict(), true).unwrap();
    let half = bf16_sequential(copy);
    let kinds: String = half
        .layers()
        .iter()
        .map(|l| match l {
            Bf16Layer::Linear(_) => 'L',
            Bf16Layer::Conv2d(_) => 'C',
            Bf16Layer::Embedding(_) => 'E',
            Bf16Layer::Float(_) => 'f',
        })
        .collect();
    assert_eq!(kinds, "CfffCfffLfLf");
    // BatchNorm's parameters and statistics were rounded; its counter was not
    let state = model.state_dict();
    let buffers = half.named_buffers();
    for (name, v) in half.named_parameters().into_iter().chain(buffers.iter().cloned()) {
        let original = state.get(&name).unwrap_or_else(|| panic!("{name} missing"));
        if name.ends_with("num_batches_tracked") {
            assert_eq!(v.value().to_vec(), original.to_vec());
        } else {
            assert_eq!(rounded_bits(&v.value()), rounded_bits(original), "{name}");
            assert_eq!(v.value().to_vec(), round(original).to_vec(), "{name}");
        }
    }
    assert!(buffers.iter().any(|(k, _)| k == "1.running_mean"));
    assert!(!half.is_training());
    // bytes: the converted layers in half, BatchNorm's 12 parameters still f32
    let bn = 4 * 12;
    assert_eq!(half.param_bytes(), (4 * model.num_parameters() - bn) / 2 + bn);

    let x = Tensor::uniform(&[64, 1, 8, 8], 0.0, 1.0, &mut rng);
    let want = run(&model, &x);
    let got = half.forward_tensor(&x);
    assert_eq!(got.shape(), &[64, 5]);
    // the roundings of the ~10 layers do not add up in the same direction: within two
    // roundings of the largest output
    let e = want.sub(&got).abs().max_all();
    assert!(e <= 2.0 * EPS * want.abs().max_all(), "max error {e}");
    let (wa, ga) = (want.argmax(1, false), got.argmax(1, false));
    let same = wa.as_slice().iter().zip(ga.as_slice()).filter(|(a, b)| a == b).count();
    assert!(same >= 62, "{same}/64 predictions kept");
    // as a layer, through Forward, the same values
    assert_eq!(run(&half, &x).to_vec(), got.to_vec());
}

#[test]
fn without_float_parameters_the_bytes_are_exactly_half() {
    let model: Sequential =
        Sequential::new().add(Conv2d::new(2, 3, 3)).add(ReLU).add(Flatten::default()).add(Linear::new(3 * 2 * 2, 4));
    let f32_bytes = 4 * model.num_parameters();
    let half = bf16_sequential(model);
    assert_eq!(half.param_bytes() * 2, f32_bytes);
    assert_eq!(half.num_parameters(), 0, "bfloat16 tensors are not listed as f32 parameters");
    assert!(half.to_string().ends_with(&format!(") [{} parameter bytes]", f32_bytes / 2)), "{half}");
}

#[test]
fn sequential_with_embedding_reads_large_ids_exactly() {
    let (t_len, dim) = (4, 4);
    let build =
        || Sequential::new().add(Embedding::new(600, dim)).add(Flatten::default()).add(Linear::new(t_len * dim, 3));
    let model = seeded(build(), 12);
    let mut copy = build();
    copy.load_state_dict(&model.state_dict(), true).unwrap();
    let half = bf16_sequential(copy);
    assert!(matches!(half.layers()[0], Bf16Layer::Embedding(_)));
    // 257 and 599 are not bfloat16 values: forward_tensor must read them as they are
    let ids = Tensor::from_vec(vec![1.0f32, 257.0, 599.0, 3.0, 0.0, 598.0, 300.0, 5.0], &[2, t_len]);
    let want = run(&model, &ids);
    let got = half.forward_tensor(&ids);
    assert_eq!(got.shape(), &[2, 3]);
    // one Linear on exactly rounded rows: the Linear's bound, with Σ|a||b| <= 16 · max|a| · max|b|
    let fc = model[2].downcast_ref::<Linear>().unwrap();
    let words = run(&model[0], &ids).abs().max_all();
    let s = (t_len * dim) as f32 * words * fc.weight.value().abs().max_all()
        + fc.bias.as_ref().unwrap().value().abs().max_all();
    let e = want.sub(&got).abs().max_all();
    assert!(e <= 1.01 * 2.0 * EPS * s + EPS * (want.abs().max_all() + 2.0 * EPS * s), "max error {e}");
    // the same rows as looked up one by one
    let Bf16Layer::Embedding(emb) = &half.layers()[0] else { unreachable!() };
    let rows = emb.forward_ids(&Indices::new(vec![599], &[1])).to_f32();
    let original = model[0].downcast_ref::<Embedding>().unwrap().weight.value().select(0, 599);
    assert_eq!(rows.to_vec(), round(&original).to_vec());
}

#[test]
fn layers_display_their_configuration_and_bytes() {
    let fc = Bf16Linear::from_linear(&LinearConfig { bias: false, ..LinearConfig::new(6, 2) }.build().unwrap());
    assert_eq!(fc.to_string(), "Bf16Linear(in_features=6, out_features=2, bias=false) [24 bytes]");
    let conv: Conv2d =
        Conv2dConfig { padding: Padding::Same, dilation: [2, 1], groups: 2, ..Conv2dConfig::new(4, 2, 3) }
            .build()
            .unwrap();
    assert_eq!(
        Bf16Conv2d::from_conv2d(&conv).to_string(),
        "Bf16Conv2d(4, 2, kernel_size=(3, 3), stride=(1, 1), padding=(2, 1), dilation=(2, 1), groups=2, bias=true) \
         [76 bytes]"
    );
}
