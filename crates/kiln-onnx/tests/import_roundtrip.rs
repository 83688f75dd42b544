//! Import: kiln's exports come back as models computing the same function (export -> import
//! -> export keeps the operators and initializers), PyTorch's exports reproduce PyTorch's
//! outputs, imported models train, and bad files are typed errors.

mod support;

use std::path::{Path, PathBuf};

use kiln_autograd::Var;
use kiln_nn::{Forward, Module};
use kiln_onnx::{export, export_model, import, import_bytes, ExportOptions, OnnxError};
use kiln_tensor::{Rng, Tensor};
use prost::Message;
use support::models::{all_models, randomise_buffers};
use support::{assert_close, temp_dir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn read_bin(stem: &str) -> Tensor<f32> {
    let bytes = std::fs::read(fixture(&format!("{stem}.bin"))).unwrap();
    let shape: Vec<usize> = std::fs::read_to_string(fixture(&format!("{stem}.shape")))
        .unwrap()
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    Tensor::from_vec(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(), &shape)
}

#[test]
fn kiln_exports_import_as_the_same_function_and_reexport_stably() {
    let dir = temp_dir("import_roundtrip");
    let mut rng = Rng::new(11);
    for (name, mut model, shape, make) in all_models() {
        randomise_buffers(&model, &mut rng);
        model.eval();
        let path = dir.join(format!("{name}.onnx"));
        let example = make(&shape, &mut rng);
        let (first, _) = export_model(&model, &example, &ExportOptions::default()).unwrap();
        std::fs::write(&path, first.encode_to_vec()).unwrap();
        let imported = import(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // the initializers are the parameters and buffers, under their state_dict keys
        let mut keys: Vec<String> = imported.state_dict().into_keys().collect();
        let mut model_keys: Vec<String> =
            model.state_dict().into_keys().filter(|k| !k.ends_with("num_batches_tracked")).collect();
        keys.retain(|k| model_keys.contains(k));
        keys.sort();
        model_keys.sort();
        assert_eq!(keys, model_keys, "{name}");
        let mut s = shape.clone();
        s[0] = 7;
        let x = Var::constant(make(&s, &mut rng));
        let want = kiln_autograd::no_grad(|| model.forward(&x).value());
        let got = kiln_autograd::no_grad(|| imported.forward(&x).value());
        assert_close(&format!("{name}: import"), &got, &want, 1e-5);
        // export -> import -> export: the same operators, attributes and initializers
        let (second, _) = export_model(&imported, &example, &ExportOptions::default()).unwrap();
        let (g1, g2) = (first.graph.as_ref().unwrap(), second.graph.as_ref().unwrap());
        let ops = |g: &kiln_onnx::proto::GraphProto| -> Vec<(String, Vec<kiln_onnx::proto::AttributeProto>)> {
            g.node.iter().map(|n| (n.op_type.clone(), n.attribute.clone())).collect()
        };
        assert_eq!(ops(g1), ops(g2), "{name}: re-export changed the operators");
        let inits = |g: &kiln_onnx::proto::GraphProto| -> Vec<(String, Vec<i64>, Vec<u8>)> {
            let mut v: Vec<_> =
                g.initializer.iter().map(|t| (t.name.clone(), t.dims.clone(), t.raw_data.clone())).collect();
            v.sort();
            v
        };
        let (i1, i2) = (inits(g1), inits(g2));
        let names = |v: &Vec<(String, Vec<i64>, Vec<u8>)>| -> Vec<String> {
            v.iter().filter(|(n, ..)| !n.starts_with('/')).map(|(n, ..)| n.clone()).collect()
        };
        assert_eq!(names(&i1), names(&i2), "{name}: re-export renamed the initializers");
        let data = |v: &Vec<(String, Vec<i64>, Vec<u8>)>| -> Vec<(Vec<i64>, Vec<u8>)> {
            let mut d: Vec<_> = v.iter().map(|(_, s, r)| (s.clone(), r.clone())).collect();
            d.sort();
            d
        };
        assert_eq!(data(&i1), data(&i2), "{name}: re-export changed initializer values");
        assert_eq!(g1.input, g2.input);
        assert_eq!(g1.output, g2.output);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pytorch_exports_reproduce_pytorch_outputs() {
    // gru_classifier and rnn_regressor: tests/fixtures/make_recurrent_fixtures.py (PyTorch's
    // GRU and ReLU/tanh RNN exported as ONNX GRU/RNN, gate order z, r, h, linear_before_reset)
    for name in ["mlp", "mnist_cnn", "lstm_classifier", "gru_classifier", "rnn_regressor"] {
        let model = import(fixture(&format!("{name}.onnx"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = read_bin(&format!("{name}.input"));
        let want = read_bin(&format!("{name}.output"));
        let got = kiln_autograd::no_grad(|| model.forward(&Var::constant(x)).value());
        assert_close(&format!("{name} (PyTorch)"), &got, &want, 1e-5);
    }
    let cnn = import(fixture("mnist_cnn.onnx")).unwrap();
    let names: Vec<String> = cnn.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"fc1.weight".to_string()) && names.contains(&"conv2.bias".to_string()), "{names:?}");
}

#[test]
fn an_imported_pytorch_model_fine_tunes_with_a_frozen_body() {
    let model = import(fixture("mlp.onnx")).unwrap();
    // freeze everything but the head, as for fine-tuning
    model.requires_grad_(false);
    assert_eq!(model.requires_grad_prefix("fc3.", true), 2);
    let x = Var::constant(read_bin("mlp.input"));
    let target = Tensor::from_vec([0.0, 1.0, 0.0, 0.0, 0.0].repeat(3), &[3, 5]);
    let loss_of = |m: &kiln_onnx::OnnxModel| m.forward(&x).sub(&Var::constant(target.clone())).square().sum_all();
    let before = loss_of(&model).item();
    let fc1_before = model.state_dict()["fc1.weight"].clone();
    for _ in 0..30 {
        model.zero_grad();
        let loss = loss_of(&model);
        loss.backward();
        for (_, p) in model.named_parameters() {
            if let Some(g) = p.grad() {
                p.update_value(|v| *v = v.sub(&g.mul_scalar(0.5)));
            }
        }
    }
    let after = loss_of(&model).item();
    assert!(after < before * 0.5, "loss {before} -> {after}");
    assert_eq!(model.state_dict()["fc1.weight"].to_vec(), fc1_before.to_vec(), "a frozen weight moved");
}

#[test]
fn unsupported_ops_and_opsets_are_typed_errors_naming_the_node() {
    let mut proto = kiln_onnx::proto::ModelProto::decode(&*std::fs::read(fixture("mlp.onnx")).unwrap()).unwrap();
    let good = proto.clone();
    proto.graph.as_mut().unwrap().node[1].op_type = "Celu".into();
    let node_name = proto.graph.as_ref().unwrap().node[1].name.clone();
    match import_bytes(&proto.encode_to_vec(), "mlp.onnx") {
        Err(OnnxError::UnsupportedOp { node, op_type, opset, .. }) => {
            assert_eq!((node, op_type.as_str(), opset), (node_name, "Celu", 17));
        }
        other => panic!("expected UnsupportedOp, got {:?}", other.map(|_| ())),
    }
    let mut old = good.clone();
    old.opset_import[0].version = 7;
    assert!(matches!(import_bytes(&old.encode_to_vec(), "m"), Err(OnnxError::UnsupportedOpset { opset: 7, .. })));
    // a forged size: dims claim far more elements than the data holds
    let mut forged = good.clone();
    forged.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 20];
    let err = import_bytes(&forged.encode_to_vec(), "forged.onnx").err().unwrap();
    assert!(err.to_string().contains("fc1.weight"), "{err}");
    assert!(matches!(import_bytes(b"not a model", "junk"), Err(OnnxError::Decode { .. })));
    assert!(matches!(import(fixture("absent.onnx")), Err(OnnxError::Io { .. })));
}

#[test]
fn unexportable_layers_and_options_are_typed_errors() {
    let mut model: kiln_nn::Sequential =
        kiln_nn::Sequential::new().add(kiln_nn::Linear::new(3, 3)).add(kiln_nn::Dropout::new(0.5));
    let x = Tensor::ones(&[1, 3]);
    let path = std::env::temp_dir().join(format!("kiln_onnx_unexportable_{}.onnx", std::process::id()));
    match export(&model, &x, &path, ExportOptions::default()) {
        Err(OnnxError::UnsupportedLayer { path, reason, .. }) => {
            assert_eq!(path, "1");
            assert!(reason.contains("eval"), "{reason}");
        }
        other => panic!("expected UnsupportedLayer, got {:?}", other.map(|_| ())),
    }
    model.eval();
    let bad = ExportOptions { opset: 9, ..Default::default() };
    assert!(matches!(export(&model, &x, &path, bad), Err(OnnxError::Options(_))));
    let emb: kiln_nn::Sequential = kiln_nn::Sequential::new().add(
        kiln_nn::AvgPool2dConfig { divisor_override: Some(2), ..kiln_nn::AvgPool2dConfig::new(2) }.build().unwrap(),
    );
    let err = export(&emb, &Tensor::ones(&[1, 1, 4, 4]), &path, ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("divisor_override"), "{err}");
    assert!(!path.exists());
}
