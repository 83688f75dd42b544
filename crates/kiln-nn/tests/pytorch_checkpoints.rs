//! PyTorch checkpoints written by real `torch.save` (`../shared/golden/pt/`, see its README):
//! every file is read (or, for the malicious ones, refused) and compared with the safetensors
//! copies PyTorch wrote and with `manifest.json` (dtype, shape, stride, storage offset and
//! storage of every tensor, and every other value), and the CNN's weights loaded into the
//! equivalent kiln model reproduce PyTorch's eval-mode logits.
//!
//! The fixtures are required: a missing file is a failure.

use std::path::PathBuf;

use kiln_autograd::Var;
use kiln_nn::serialize::{PtFormat, PtValue};
use kiln_nn::{
    load, load_mapped, BatchNorm2d, Conv2d, Flatten, Forward, KeyMap, Linear, MaxPool2d, Module, NnError, PtFile, ReLU,
    SafetensorsFile, Sequential,
};
use kiln_tensor::Tensor;
use serde_json::Value;

fn dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/pt"));
    assert!(d.join("manifest.json").is_file(), "PyTorch checkpoint fixtures missing at {}", d.display());
    d
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn safetensors_dtype(torch: &str) -> &'static str {
    match torch {
        "float16" => "F16",
        "bfloat16" => "BF16",
        "float32" => "F32",
        "float64" => "F64",
        "int64" => "I64",
        "int32" => "I32",
        "uint8" => "U8",
        "bool" => "BOOL",
        other => panic!("unexpected dtype {other}"),
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// Every tensor of the manifest is where the manifest says, and every other value equals it.
#[test]
fn every_file_matches_the_manifest() {
    let m = manifest();
    for f in m["files"].as_array().unwrap() {
        let name = f["file"].as_str().unwrap();
        let ckpt = PtFile::open(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        match (f["format"].as_str().unwrap(), ckpt.format()) {
            ("zip", PtFormat::Zip { prefix }) => {
                assert_eq!(prefix, &format!("{}/", name.trim_end_matches(".pt")));
            }
            ("legacy", PtFormat::Legacy { protocol_version }) => assert_eq!(*protocol_version, 1001),
            (want, got) => panic!("{name}: format {want} read as {got:?}"),
        }
        let all = ckpt.root().tensors();
        let want = f["tensors"].as_array().unwrap();
        assert_eq!(all.len(), want.len(), "{name}: number of tensors");
        for (w, (key, t)) in want.iter().zip(&all) {
            let path = w["path"].as_str().unwrap().replace('/', ".");
            assert_eq!(key, &path, "{name}: tensor order");
            let got = ckpt.get(&path).and_then(PtValue::as_tensor).unwrap_or_else(|| panic!("{name}: {path}"));
            assert_eq!(got, *t);
            assert_eq!(t.dtype.as_str(), safetensors_dtype(w["dtype"].as_str().unwrap()), "{name}: {path}");
            assert_eq!(t.shape, usizes(&w["shape"]), "{name}: {path} shape");
            assert_eq!(t.stride, usizes(&w["stride"]), "{name}: {path} stride");
            assert_eq!(t.storage_offset, w["storage_offset"].as_u64().unwrap() as usize, "{name}: {path} offset");
            assert_eq!(t.storage, w["storage"].as_u64().unwrap() as usize, "{name}: {path} storage");
            let s = &ckpt.storages()[t.storage];
            assert_eq!((s.numel * s.dtype.size()) as u64, w["storage_bytes"].as_u64().unwrap(), "{name}: {path}");
        }
        for (path, want) in f["other_values"].as_object().unwrap() {
            let path = path.replace('/', ".");
            let got = ckpt.get(&path).unwrap_or_else(|| panic!("{name}: no value at {path}"));
            let ok = match want {
                Value::Null => *got == PtValue::None,
                Value::Bool(b) => *got == PtValue::Bool(*b),
                Value::Number(n) if n.is_i64() => *got == PtValue::Int(n.as_i64().unwrap()),
                Value::Number(n) => *got == PtValue::Float(n.as_f64().unwrap()),
                Value::String(s) => got.as_str() == Some(s),
                other => panic!("unexpected manifest value {other}"),
            };
            assert!(ok, "{name}: {path} is {got:?}, manifest says {want}");
        }
    }
}

/// Each `.pt` file's tensors equal its safetensors twin: dtype, shape and every byte.
#[test]
fn tensors_equal_the_safetensors_copies() {
    for (pt, st, at) in [
        ("cnn_state_dict.pt", "cnn_state_dict.safetensors", ""),
        ("legacy_format.pt", "cnn_state_dict.safetensors", ""),
        ("checkpoint_dict.pt", "cnn_state_dict.safetensors", "model"),
        ("dtypes.pt", "dtypes.safetensors", ""),
        ("views.pt", "views_expected.safetensors", ""),
    ] {
        let ckpt = PtFile::open(dir().join(pt)).unwrap();
        let twin = SafetensorsFile::open(dir().join(st)).unwrap();
        let tensors = ckpt.tensors_at(at).unwrap();
        assert_eq!(tensors.len(), twin.len(), "{pt}");
        for (key, t) in &tensors {
            let info = twin.info(key).unwrap_or_else(|| panic!("{pt}: {key} not in {st}"));
            assert_eq!(t.dtype, info.dtype, "{pt}: {key}");
            assert_eq!(t.shape, info.shape, "{pt}: {key}");
            assert_eq!(ckpt.contiguous_bytes(t), twin.raw_bytes(key).unwrap(), "{pt}: {key}");
        }
    }
    // The state dict's key order is PyTorch's.
    let ckpt = PtFile::open(dir().join("cnn_state_dict.pt")).unwrap();
    let keys: Vec<String> = ckpt.state_dict_tensors().into_iter().map(|(k, _)| k).collect();
    let want = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"];
    assert_eq!(keys[..6], want);
    assert_eq!(keys[6..], ["1.num_batches_tracked", "5.weight", "5.bias"]);
}

#[test]
fn dtypes_read_with_their_values() {
    let ckpt = PtFile::open(dir().join("dtypes.pt")).unwrap();
    let t = |k: &str| ckpt.get(k).and_then(PtValue::as_tensor).unwrap().clone();
    let f16: Tensor<f32> = ckpt.tensor("float16", &t("float16")).unwrap();
    assert_eq!(f16.to_vec(), [0.5, -1.25, 65504.0, 2f32.powi(-14), -0.0, 3.0]);
    assert!(f16.to_vec()[4].is_sign_negative());
    let bf16: Tensor<f32> = ckpt.tensor("bfloat16", &t("bfloat16")).unwrap();
    assert_eq!(bf16.to_vec(), [1.0, -2.5, 2f32.powi(127), 2f32.powi(-126), 0.0078125, -7.0]);
    let f64t: Tensor<f64> = ckpt.tensor("float64", &t("float64")).unwrap();
    assert_eq!(f64t.to_vec(), [std::f64::consts::PI, -1e-300, 1e300]);
    assert_eq!(ckpt.tensor_i64("int64", &t("int64")).unwrap(), [(1 << 40) + 1, -(1 << 40) - 3, i64::MAX, i64::MIN]);
    assert_eq!(ckpt.tensor_i64("int32", &t("int32")).unwrap(), [0, -1, i32::MAX as i64, i32::MIN as i64]);
    assert_eq!(ckpt.tensor_i64("uint8", &t("uint8")).unwrap(), [0, 1, 127, 128, 254, 255]);
    assert_eq!(ckpt.tensor_i64("bool", &t("bool")).unwrap(), [1, 0, 0, 1, 1]);
    assert!(matches!(ckpt.tensor::<f32>("int64", &t("int64")), Err(NnError::WrongDtype { .. })));
}

#[test]
fn views_read_through_offsets_and_strides_of_one_storage() {
    let ckpt = PtFile::open(dir().join("views.pt")).unwrap();
    assert_eq!(ckpt.storages().len(), 1);
    assert_eq!(ckpt.storages()[0].numel, 24);
    let t = |k: &str| ckpt.get(k).and_then(PtValue::as_tensor).unwrap().clone();
    let read = |k: &str| ckpt.tensor::<f32>(k, &t(k)).unwrap().to_vec();
    assert_eq!(read("base"), (0..24).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(read("rows_2_to_3"), (12..24).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(read("block"), [8.0, 9.0, 10.0, 14.0, 15.0, 16.0]);
    assert!(!t("block").is_contiguous());
    assert_eq!((t("block").storage_offset, t("block").stride.clone()), (8, vec![6, 1]));
    assert_eq!(t("transposed").shape, [6, 4]);
    assert_eq!(read("transposed")[..5], [0.0, 6.0, 12.0, 18.0, 1.0]);
    // `alias` is the same tensor object as `base`; the others are other tensors.
    assert_eq!(t("alias").id, t("base").id);
    assert_ne!(t("block").id, t("base").id);
}

#[test]
fn checkpoint_dict_values_come_through() {
    let ckpt = PtFile::open(dir().join("checkpoint_dict.pt")).unwrap();
    assert_eq!(ckpt.state_dict_path(), "model");
    assert_eq!(ckpt.get("epoch"), Some(&PtValue::Int(3)));
    assert_eq!(ckpt.get("best_acc").and_then(PtValue::as_f64), Some(0.91));
    let group = ckpt.get("optimizer.param_groups.0").unwrap();
    assert_eq!(group.get("betas"), Some(&PtValue::Tuple(vec![PtValue::Float(0.9), PtValue::Float(0.999)])));
    assert_eq!(group.get("params"), Some(&PtValue::List((0..6).map(PtValue::Int).collect())));
    assert_eq!(group.get("foreach"), Some(&PtValue::None));
    let step = ckpt.get("optimizer.state.5.step").and_then(PtValue::as_tensor).unwrap();
    assert_eq!(step.shape, Vec::<usize>::new());
    assert_eq!(ckpt.tensor::<f32>("step", step).unwrap().to_vec(), [3.0]);
    let sd = ckpt.state_dict::<f32>().unwrap();
    assert_eq!(sd.len(), 9);
    assert_eq!(sd["1.num_batches_tracked"].to_vec(), [3.0]);
}

#[test]
fn malicious_files_are_refused_naming_the_global() {
    for (file, global) in [("malicious.pt", "os.system"), ("malicious_eval.pt", "builtins.eval")] {
        let path = dir().join(file);
        let err = PtFile::open(&path).unwrap_err();
        match &err {
            NnError::ForbiddenGlobal { path: p, record, global: g, .. } => {
                assert_eq!(p, &path);
                assert_eq!(record, &format!("{}/data.pkl", file.trim_end_matches(".pt")));
                assert_eq!(g, global);
            }
            other => panic!("{file}: {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(file) && msg.contains(&format!("global {global} is not allowed")), "{msg}");
        // Loading into a model refuses the file too, and leaves the model alone.
        let mut model = Linear::<f32>::new(6, 1);
        let before = model.weight.value().to_vec();
        assert!(matches!(load(&mut model, &path, false), Err(NnError::ForbiddenGlobal { .. })));
        assert_eq!(model.weight.value().to_vec(), before);
    }
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

/// `torch.load` + `load_state_dict` + `eval()` in kiln: the logits PyTorch computed.
#[test]
fn cnn_loaded_from_pt_reproduces_pytorch_logits() {
    let io = SafetensorsFile::open(dir().join("cnn_io.safetensors")).unwrap();
    let x: Tensor<f32> = io.tensor("input.images").unwrap();
    let expected: Tensor<f32> = io.tensor("output.logits").unwrap();
    for file in ["cnn_state_dict.pt", "legacy_format.pt", "checkpoint_dict.pt"] {
        let mut model = cnn();
        let report = load(&mut model, dir().join(file), true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.loaded.len(), 9, "{file}");
        assert!(report.missing.is_empty() && report.unexpected.is_empty());
        model.eval();
        let logits = model.forward(&Var::constant(x.clone())).value();
        assert_eq!(logits.shape(), expected.shape());
        for (i, (a, b)) in logits.to_vec().into_iter().zip(expected.to_vec()).enumerate() {
            assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "{file}: logits[{i}] {a} vs {b}");
        }
    }
}

/// A model that does not fit is reported and left as it was, never half-loaded.
#[test]
fn mismatched_model_is_not_touched() {
    let path = dir().join("cnn_state_dict.pt");
    let mut model: Sequential = Sequential::new()
        .add(Conv2d::new(1, 4, 3))
        .add(BatchNorm2d::new(4))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(4 * 13 * 13, 5));
    let before = model.state_dict();
    match load(&mut model, &path, true) {
        Err(NnError::ShapeMismatch { key, model: m, file, .. }) => {
            assert_eq!((key.as_str(), m, file), ("5.weight", vec![5, 676], vec![10, 676]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(model.state_dict(), before);
    // Missing and unexpected keys, with and without strictness.
    let mut small: Sequential = Sequential::new().add(Conv2d::new(1, 4, 3));
    match load(&mut small, &path, true) {
        Err(NnError::KeyMismatch { missing, unexpected, .. }) => {
            assert!(missing.is_empty());
            assert_eq!(unexpected.len(), 7);
        }
        other => panic!("{other:?}"),
    }
    let report = load_mapped(&mut small, &path, &KeyMap::new().skip_prefix("1.").skip_prefix("5."), true).unwrap();
    assert_eq!(report.matched.len(), 2);
    assert_eq!(report.skipped.len(), 7);
}
