//! The `kiln` binary run on PyTorch's fixtures (`../shared/golden/pt/`, required) and on files
//! kiln writes: its output, exit codes and written files.

use std::path::PathBuf;
use std::process::{Command, Output};

use kiln_autograd::Var;
use kiln_nn::{
    load, load_mapped, save, BatchNorm2d, Conv2d, Flatten, Forward, KeyMap, Linear, MaxPool2d, Module, ReLU,
    SafetensorsFile, Sequential,
};
use kiln_tensor::Tensor;

fn golden(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/pt")).join(name);
    assert!(p.is_file(), "PyTorch checkpoint fixture missing: {}", p.display());
    p
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{name}-{}", std::process::id()));
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
fn inspect_lists_tensors_of_every_format() {
    let o = kiln(&[&"inspect", &golden("cnn_state_dict.pt")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("pytorch (zip), 9 tensors"), "{out}");
    assert!(out.contains("1.num_batches_tracked  I64   []"), "{out}");
    assert!(out.contains("5.weight               F32   [10, 676]"), "{out}");
    // 36 + 4 + 4 * 4 + 6760 + 10 float elements (4 bytes each) and the 8-byte counter.
    assert!(out.ends_with("parameters: 6826 (27312 bytes of tensor data)\n"), "{out}");

    let o = kiln(&[&"inspect", &"--json", &golden("checkpoint_dict.pt")]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["format"], "pytorch (zip)");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 27);
    assert_eq!(j["metadata"]["epoch"], "3");
    assert_eq!(j["metadata"]["optimizer.param_groups.0.lr"], "0.01");
    assert_eq!(j["tensors"][9]["key"], "optimizer.state.0.step");

    let o = kiln(&[&"inspect", &"--json", &golden("cnn_state_dict.safetensors")]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["format"], "safetensors");
    assert_eq!(j["metadata"]["format"], "pt");
    assert_eq!(j["parameters"], 6826);

    // A kiln training checkpoint.
    let dir = temp_dir("inspect");
    let model = cnn();
    let ckpt = kiln_train::Checkpoint::new(2, &model);
    let path = dir.join("run.ckpt");
    kiln_train::save_checkpoint(&path, &ckpt).unwrap();
    let o = kiln(&[&"inspect", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("kiln checkpoint, 9 tensors") && out.contains("epoch = 2"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_pt_then_load_reproduces_pytorch_logits() {
    let dir = temp_dir("convert");
    let out = dir.join("cnn.safetensors");
    let o = kiln(&[&"convert", &golden("cnn_state_dict.pt"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Same bytes and dtypes as PyTorch's own safetensors copy.
    let (mine, theirs) =
        (SafetensorsFile::open(&out).unwrap(), SafetensorsFile::open(golden("cnn_state_dict.safetensors")).unwrap());
    assert_eq!(mine.tensors().keys().collect::<Vec<_>>(), theirs.tensors().keys().collect::<Vec<_>>());
    for k in theirs.keys() {
        assert_eq!(mine.info(k).unwrap().dtype, theirs.info(k).unwrap().dtype);
        assert_eq!(mine.raw_bytes(k).unwrap(), theirs.raw_bytes(k).unwrap(), "{k}");
    }
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
    // The other fixtures convert too, with their dtypes (and `diff` finds them equal).
    for (pt, twin) in [
        ("dtypes.pt", "dtypes.safetensors"),
        ("views.pt", "views_expected.safetensors"),
        ("legacy_format.pt", "cnn_state_dict.safetensors"),
        ("checkpoint_dict.pt", "cnn_state_dict.safetensors"),
    ] {
        let out = dir.join(format!("{pt}.safetensors"));
        let o = kiln(&[&"convert", &golden(pt), &out]);
        assert_eq!(o.status.code(), Some(0), "{pt}: {}", stderr(&o));
        let o = kiln(&[&"diff", &out, &golden(twin)]);
        assert_eq!(o.status.code(), Some(0), "{pt}: {}", stdout(&o));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diff_reports_differences_missing_keys_and_shapes() {
    let dir = temp_dir("diff");
    let same = kiln(&[&"diff", &golden("cnn_state_dict.pt"), &golden("cnn_state_dict.safetensors")]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    assert!(stdout(&same).ends_with("9 common tensors, 0 differ; 0 only in A, 0 only in B\n"));

    // A kiln model with one weight changed by 0.5 and another layer shape.
    let mut model: Sequential = Sequential::new().add(Conv2d::new(1, 4, 3)).add(Linear::new(4, 3));
    let skip = KeyMap::new().skip_prefix("1.").skip_prefix("5.");
    load_mapped(&mut model, golden("cnn_state_dict.pt"), &skip, false).unwrap_or_else(|e| panic!("{e}"));
    let w = model.state_dict()["0.weight"].to_vec();
    let mut changed = w.clone();
    changed[5] += 0.5;
    model.named_parameters()[0].1.set_value(Tensor::from_vec(changed, &[4, 1, 3, 3]));
    let path = dir.join("m.safetensors");
    save(&model, &path, &Default::default()).unwrap();
    let o = kiln(&[&"diff", &"--json", &path, &golden("cnn_state_dict.pt")]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["same"], false);
    assert_eq!(j["only_a"], serde_json::json!([]));
    let only_b = serde_json::json!(["1.running_mean", "1.running_var", "1.num_batches_tracked", "5.weight", "5.bias"]);
    assert_eq!(j["only_b"], only_b);
    let t = j["tensors"].as_array().unwrap();
    let w0 = t.iter().find(|x| x["key"] == "0.weight").unwrap();
    assert!((w0["max_abs"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{w0}");
    assert_eq!(w0["within"], false);
    let w1 = t.iter().find(|x| x["key"] == "1.weight").unwrap();
    assert_eq!(w1["shape"], serde_json::json!([[3, 4], [4]]));
    assert_eq!((w1["max_abs"].is_null(), w1["within"].as_bool()), (true, Some(false)));
    let b0 = t.iter().find(|x| x["key"] == "0.bias").unwrap();
    assert_eq!((b0["max_abs"].as_f64(), b0["within"].as_bool()), (Some(0.0), Some(true)));
    // With a tolerance above 0.5 the changed weight passes; the missing keys still differ.
    let o = kiln(&[&"diff", &"--atol", &"0.6", &path, &golden("cnn_state_dict.pt")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("+ 5.weight  only in B"), "{}", stdout(&o));
    assert!(stdout(&o).contains("! 1.weight  shape [3, 4] vs [4]"), "{}", stdout(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_are_one_line_with_exit_codes() {
    let o = kiln(&[&"inspect", &golden("malicious.pt")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kiln: ") && err.contains("malicious.pt") && err.contains("global os.system is not allowed"),
        "{err}"
    );
    // Refused by convert too, and nothing written.
    let dir = temp_dir("errors");
    let out = dir.join("x.safetensors");
    let o = kiln(&[&"convert", &golden("malicious_eval.pt"), &out]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("global builtins.eval is not allowed"));
    assert!(!out.exists());
    // A missing file, a truncated one.
    let o = kiln(&[&"inspect", &dir.join("nope.pt")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope.pt"), "{}", stderr(&o));
    let cut = dir.join("cut.pt");
    std::fs::write(&cut, &std::fs::read(golden("legacy_format.pt")).unwrap()[..5000]).unwrap();
    let o = kiln(&[&"inspect", &cut]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1);
    assert!(stderr(&o).contains("cut.pt"), "{}", stderr(&o));
    // Usage errors: 2. Help documents the exit codes.
    assert_eq!(kiln(&[&"frobnicate"]).status.code(), Some(2));
    assert_eq!(kiln(&[&"convert", &"only-one-arg"]).status.code(), Some(2));
    let help = kiln(&[&"--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("2  usage error"), "{}", stdout(&help));
    std::fs::remove_dir_all(&dir).unwrap();
}
