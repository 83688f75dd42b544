//! `kiln convert` to PyTorch `.pt` files, and `kiln inspect` / `kiln diff` of ONNX models
//! (one exported by kiln-onnx in the test, one made by PyTorch in kiln-onnx's fixtures).

use std::path::PathBuf;
use std::process::{Command, Output};

use kiln_autograd::Var;
use kiln_nn::serialize::{Dtype, PtFile, PtFormat};
use kiln_nn::{
    load, BatchNorm2d, Conv2d, Flatten, Forward, Linear, MaxPool2d, Module, ReLU, SafetensorsFile, Sequential,
};
use kiln_onnx::{export, ExportOptions};
use kiln_tensor::Tensor;

fn golden(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/pt")).join(name);
    assert!(p.is_file(), "PyTorch checkpoint fixture missing: {}", p.display());
    p
}

fn onnx_fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../kiln-onnx/tests/fixtures")).join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-pt-onnx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kiln(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args.iter().map(|a| a.as_ref())).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cnn() -> Sequential {
    Sequential::new()
        .add(Conv2d::new(1, 4, 3))
        .add(BatchNorm2d::new(4))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(4 * 13 * 13, 10))
}

#[test]
fn convert_to_pt_from_every_format_keeps_dtypes_and_values() {
    let dir = temp_dir("convert");
    // safetensors -> .pt, then the .pt loaded into kiln reproduces PyTorch's logits.
    let out = dir.join("cnn.pt");
    let o = kiln(&[&"convert", &golden("cnn_state_dict.safetensors"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("(pytorch): 9 tensors, 6826 parameters"), "{}", stdout(&o));
    let f = PtFile::open(&out).unwrap();
    assert_eq!(f.format(), &PtFormat::Zip { prefix: "archive/".into() });
    let counter = f.state_dict_tensors().into_iter().find(|(k, _)| k == "1.num_batches_tracked").unwrap().1.clone();
    assert_eq!(counter.dtype, Dtype::I64);
    let mut model = cnn();
    load(&mut model, &out, true).unwrap();
    model.eval();
    let io = SafetensorsFile::open(golden("cnn_io.safetensors")).unwrap();
    let x: Tensor<f32> = io.tensor("input.images").unwrap();
    let expected: Tensor<f32> = io.tensor("output.logits").unwrap();
    let logits = model.forward(&Var::constant(x)).value();
    for (a, b) in logits.to_vec().into_iter().zip(expected.to_vec()) {
        assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "{a} vs {b}");
    }
    let o = kiln(&[&"diff", &out, &golden("cnn_state_dict.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    // .pt -> .pt (views, f16/bf16/int/bool dtypes, the legacy format, a checkpoint dict's
    // weights): exactly the same tensors as PyTorch's safetensors twin.
    for (pt, twin) in [
        ("dtypes.pt", "dtypes.safetensors"),
        ("views.pt", "views_expected.safetensors"),
        ("legacy_format.pt", "cnn_state_dict.safetensors"),
        ("checkpoint_dict.pt", "cnn_state_dict.safetensors"),
    ] {
        let out = dir.join(format!("re-{pt}"));
        let o = kiln(&[&"convert", &"--json", &golden(pt), &out]);
        assert_eq!(o.status.code(), Some(0), "{pt}: {}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["to"], "pytorch", "{pt}");
        let o = kiln(&[&"diff", &out, &golden(twin)]);
        assert_eq!(o.status.code(), Some(0), "{pt}: {}", stdout(&o));
        let o = kiln(&[&"inspect", &out]);
        assert!(stdout(&o).contains("pytorch (zip)"), "{pt}: {}", stdout(&o));
    }

    // A kiln training checkpoint -> .pt.
    let model = cnn();
    let ckpt_path = dir.join("run.ckpt");
    kiln_train::save_checkpoint(&ckpt_path, &kiln_train::Checkpoint::new(1, &model)).unwrap();
    let out = dir.join("from-ckpt.pth");
    let o = kiln(&[&"convert", &ckpt_path, &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut reread = cnn();
    load(&mut reread, &out, true).unwrap();
    assert_eq!(reread.state_dict(), model.state_dict());

    // Converting over an existing file replaces it atomically: no temporary is left behind.
    let before: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    let o = kiln(&[&"convert", &golden("cnn_state_dict.pt"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let after: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before.len(), after.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_onnx_lists_initializers_inputs_outputs_and_ops() {
    let dir = temp_dir("onnx");
    let model = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 3));
    let path = dir.join("mlp.onnx");
    export(&model, &Tensor::zeros(&[1, 4]), &path, ExportOptions::default()).unwrap();

    let o = kiln(&[&"inspect", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    eprintln!("{out}");
    assert!(out.contains("onnx, 4 tensors"), "{out}");
    assert!(out.contains("opset ai.onnx 17"), "{out}");
    assert!(out.contains("input   input: float32 [batch, 4]"), "{out}");
    assert!(out.contains("output  output: float32 [batch, 3]"), "{out}");
    assert!(out.ends_with("parameters: 67 (268 bytes of tensor data)\n"), "{out}");
    let o = kiln(&[&"inspect", &"--json", &path]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["format"], "onnx");
    assert_eq!(j["parameters"], 67);
    assert_eq!(j["onnx"]["inputs"][0]["dims"], serde_json::json!(["batch", "4"]));
    assert_eq!(j["onnx"]["opsets"][0]["version"], 17);
    let nodes = j["onnx"]["nodes"].as_u64().unwrap();
    assert_eq!(j["onnx"]["ops"]["Relu"], 1);
    assert_eq!(j["onnx"]["ops"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>(), nodes);
    // Every initializer carries the model's values under its state_dict key.
    let sd = model.state_dict();
    for t in j["tensors"].as_array().unwrap() {
        let key = t["key"].as_str().unwrap();
        assert_eq!(t["shape"], serde_json::json!(sd[key].shape()), "{key}");
    }

    // PyTorch's export (torch.onnx) of kiln-onnx's fixture.
    let fixture = onnx_fixture("mlp.onnx");
    let o = kiln(&[&"inspect", &fixture]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    eprintln!("{out}");
    assert!(out.contains("onnx, 8 tensors") && out.contains("producer pytorch"), "{out}");
    assert!(out.contains("input   input: float32 [batch, 20]"), "{out}");
    assert!(out.contains("Gemm 3") && out.contains("LayerNormalization 1"), "{out}");
    assert!(out.contains("fc1.weight"), "{out}");

    // diff of two ONNX files' initializers; convert of an ONNX model's weights.
    let o = kiln(&[&"diff", &fixture, &fixture]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let other = dir.join("mlp2.onnx");
    let changed = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 3));
    export(&changed, &Tensor::zeros(&[1, 4]), &other, ExportOptions::default()).unwrap();
    let o = kiln(&[&"diff", &path, &other]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("4 common tensors, 4 differ"), "{}", stdout(&o));
    let st = dir.join("mlp.safetensors");
    let o = kiln(&[&"convert", &path, &st]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut back = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 3));
    load(&mut back, &st, true).unwrap();
    assert_eq!(back.state_dict(), sd);

    // A file that is not ONNX: one line naming it, exit code 1.
    let bad = dir.join("bad.onnx");
    std::fs::write(&bad, b"\xff\xff\xff not protobuf").unwrap();
    let o = kiln(&[&"inspect", &bad]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("bad.onnx: not an ONNX model") && err.lines().count() == 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
