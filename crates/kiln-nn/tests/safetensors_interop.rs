//! PyTorch interop, both directions:
//! - a PyTorch-trained model from `../shared/golden/interop/` (its architecture in the JSON,
//!   built with `sequential_from_json`) is loaded, run, and matches PyTorch's outputs;
//! - a file kiln writes is read by Python's `safetensors` package with the same bytes, loads
//!   strictly into the same PyTorch architecture and computes kiln's outputs; a file PyTorch
//!   writes (BatchNorm's I64 counter, F16/BF16 tensors) loads into kiln and computes PyTorch's.
//!
//! The golden part skips (with a printed reason) where the fixtures are absent, and fails there
//! when `KILN_REQUIRE_GOLDEN=1` (see kiln-golden); the Python part
//! where `python3 -c "import safetensors, torch"` fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_autograd::Var;
use kiln_nn::serialize::sequential_from_json;
use kiln_nn::{
    load, save, save_state_dict, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Forward, Linear, Metadata, Module, ReLU,
    SafetensorsFile, Sequential, StateDict, Tanh,
};
use kiln_tensor::{Float, Tensor};
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-st-interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_close<E: Float>(what: &str, a: &Tensor<E>, b: &Tensor<E>, rtol: f64, atol: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    for (i, (x, y)) in a.to_vec().into_iter().zip(b.to_vec()).enumerate() {
        let (x, y) = (Float::to_f64(x), Float::to_f64(y));
        assert!((x - y).abs() <= atol + rtol * y.abs(), "{what}[{i}]: {x} vs {y}");
    }
}

fn argmax_rows<E: Float>(t: &Tensor<E>) -> Vec<usize> {
    t.argmax(-1, false).into_vec()
}

// ------------------------------------------------------------------ golden: PyTorch → kiln

/// Every model of `interop/` (the public set's CNN, another set's MLP, ...): built from its
/// JSON architecture, loaded from its safetensors, run on its `_io` inputs.
fn golden_models_match_pytorch<E: Float>() {
    let Some(names) = kiln_golden::case_names("interop") else { return };
    let dir = kiln_golden::group_dir("interop").unwrap();
    for name in names {
        golden_model_matches_pytorch::<E>(&dir, &name);
    }
}

fn golden_model_matches_pytorch<E: Float>(dir: &Path, name: &str) {
    let c = kiln_golden::read_case(dir.parent().unwrap(), &format!("interop/{name}"));
    let json = &c.json;
    let mut model: Sequential<E> = sequential_from_json(&json.to_string()).unwrap();
    // The JSON's key list is exactly the model's.
    let keys: Vec<String> = model.state_dict().into_keys().collect();
    let mut want: Vec<String> = c.field("state_dict_keys").as_object().unwrap().keys().cloned().collect();
    want.sort();
    assert_eq!(keys, want, "{name}");

    let report = load(&mut model, dir.join(format!("{name}.safetensors")), true).unwrap();
    assert_eq!(report.loaded.len(), want.len(), "{name}");
    model.eval();

    let io_path = dir.join(format!("{name}_io.safetensors"));
    let io = SafetensorsFile::open(&io_path).unwrap_or_else(|e| panic!("{}: {e}", io_path.display()));
    let x: Tensor<E> = io.tensor("input.images").unwrap();
    let expected: Tensor<E> = io.tensor("output.logits").unwrap();
    let (labels, _) = io.tensor_i64("input.labels").unwrap();
    let logits = model.forward(&Var::constant(x)).value();
    let (rtol, atol) = c.tol("float32");
    assert_close(&format!("{name} logits"), &logits, &expected, rtol, atol);

    let predicted = argmax_rows(&logits);
    assert_eq!(predicted, argmax_rows(&expected), "{name}: kiln and PyTorch predict the same classes");
    let correct = predicted.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    let accuracy = correct as f64 / labels.len() as f64;
    let golden_accuracy = c.f64("io_first64_accuracy");
    assert!((accuracy - golden_accuracy).abs() < 1e-12, "{name}: accuracy {accuracy} vs PyTorch's {golden_accuracy}");
}

#[test]
fn pytorch_trained_model_runs_in_kiln_f32() {
    golden_models_match_pytorch::<f32>();
}

#[test]
fn pytorch_trained_model_runs_in_kiln_f64() {
    // The f32 file converts on load; f64 arithmetic stays within the f32 tolerance.
    golden_models_match_pytorch::<f64>();
}

// ------------------------------------------------------------------ Python: both directions

fn python_with_safetensors() -> bool {
    match Command::new("python3").args(["-c", "import safetensors, torch"]).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "skipped: python3 cannot import safetensors and torch (pip install safetensors torch): {}",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            false
        }
        Err(e) => {
            eprintln!("skipped: python3 not found: {e}");
            false
        }
    }
}

const PYTHON: &str = r#"
import json, sys, torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

d = sys.argv[1]

def arch():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(48, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 5))

def raw(t):
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).tolist()).hex()

# kiln -> Python: the bytes, the metadata, a strict load and a forward pass.
sd = load_file(f"{d}/kiln_model.safetensors")
with safe_open(f"{d}/kiln_model.safetensors", "pt") as f:
    metadata = f.metadata()
m = arch()
m.load_state_dict(sd, strict=True)
m.eval()
x = load_file(f"{d}/input.safetensors")["x"]
with torch.no_grad():
    y = m(x)
report = {"metadata": metadata,
          "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "hex": raw(v)} for k, v in sd.items()}}
with open(f"{d}/report.json", "w") as f:
    json.dump(report, f)

# Python -> kiln: a model with trained BatchNorm statistics, saved the ordinary way.
torch.manual_seed(0)
m2 = arch()
m2.train()
with torch.no_grad():
    for _ in range(3):
        m2(torch.randn(8, 1, 6, 6))
m2.eval()
save_file(m2.state_dict(), f"{d}/torch_model.safetensors")
with torch.no_grad():
    y2 = m2(x)
h = torch.randn(3, 4)
save_file({"kiln_model_output": y, "torch_model_output": y2,
           "h16": h.half(), "h16_as_f32": h.half().float(), "bf16": h.bfloat16(), "bf16_as_f32": h.bfloat16().float()},
          f"{d}/torch_out.safetensors", metadata={"written_by": "torch"})
"#;

fn interop_model<E: Float>() -> Sequential<E> {
    Sequential::new_generic()
        .add(Conv2d::new_generic(1, 3, 3))
        .add(BatchNorm2d::new_generic(3))
        .add(ReLU)
        .add(Flatten::new(1, -1))
        .add(Linear::new_generic(48, 6))
        .add(BatchNorm1d::new_generic(6))
        .add(Tanh)
        .add(Linear::new_generic(6, 5))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn python_reads_kiln_files_and_kiln_reads_pytorch_files() {
    if !python_with_safetensors() {
        return;
    }
    kiln_nn::init::manual_seed(3);
    let dir = temp_dir("python");
    let mut model = interop_model::<f32>();
    // Training-mode passes give BatchNorm non-default running statistics and a count.
    for i in 0..3 {
        let x = Tensor::<f32>::from_vec(
            (0..8 * 36).map(|j| ((i * 7 + j) % 11) as f32 / 5.0 - 1.0).collect(),
            &[8, 1, 6, 6],
        );
        model.forward(&Var::constant(x));
    }
    model.eval();
    assert_eq!(model.state_dict()["1.num_batches_tracked"].item(), 3.0);
    let mut meta = Metadata::new();
    meta.insert("purpose".into(), "interop test".into());
    save(&model, dir.join("kiln_model.safetensors"), &meta).unwrap();
    let x = Tensor::<f32>::from_vec((0..4 * 36).map(|j| (j as f32 * 0.37).sin()).collect(), &[4, 1, 6, 6]);
    let mut input = StateDict::new();
    input.insert("x".to_string(), x.clone());
    save_state_dict(&input, dir.join("input.safetensors"), &Metadata::new()).unwrap();
    let y = model.forward(&Var::constant(x.clone())).value();

    std::fs::write(dir.join("interop.py"), PYTHON).unwrap();
    let out = Command::new("python3").arg(dir.join("interop.py")).arg(&dir).output().unwrap();
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));

    // Python saw the same tensors, bytes and all, and the metadata.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["metadata"]["kiln_version"], kiln_nn::serialize::KILN_VERSION);
    assert_eq!(report["metadata"]["purpose"], "interop test");
    let file = SafetensorsFile::open(dir.join("kiln_model.safetensors")).unwrap();
    let tensors = report["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), file.len());
    for (k, info) in file.tensors() {
        let t = &tensors[k];
        let want_dtype = if k.ends_with("num_batches_tracked") { "torch.int64" } else { "torch.float32" };
        assert_eq!(t["dtype"], want_dtype, "{k}");
        let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, info.shape, "{k}");
        assert_eq!(t["hex"].as_str().unwrap(), hex(file.raw_bytes(k).unwrap()), "{k}: bytes differ");
    }

    let torch_out = SafetensorsFile::open(dir.join("torch_out.safetensors")).unwrap();
    assert_eq!(torch_out.metadata()["written_by"], "torch");
    // PyTorch, running kiln's weights, computes kiln's outputs.
    assert_close("kiln weights in PyTorch", &torch_out.tensor::<f32>("kiln_model_output").unwrap(), &y, 1e-5, 1e-5);

    // kiln, running PyTorch's weights (BatchNorm counter as I64), computes PyTorch's outputs.
    let mut from_torch = interop_model::<f32>();
    let loaded = load(&mut from_torch, dir.join("torch_model.safetensors"), true).unwrap();
    assert_eq!(loaded.loaded.len(), 16);
    assert_eq!(from_torch.state_dict()["5.num_batches_tracked"].item(), 3.0);
    from_torch.eval();
    let y2 = from_torch.forward(&Var::constant(x.clone())).value();
    assert_close("PyTorch weights in kiln", &y2, &torch_out.tensor::<f32>("torch_model_output").unwrap(), 1e-5, 1e-5);
    // And in f64, converting on load.
    let mut from_torch64 = interop_model::<f64>();
    load(&mut from_torch64, dir.join("torch_model.safetensors"), true).unwrap();
    from_torch64.eval();
    let y2_64 = from_torch64.forward(&Var::constant(x.cast::<f64>())).value();
    assert_close(
        "PyTorch weights in kiln f64",
        &y2_64,
        &torch_out.tensor::<f64>("torch_model_output").unwrap(),
        1e-5,
        1e-5,
    );

    // Half-precision tensors PyTorch wrote decode exactly.
    for (half, exact) in [("h16", "h16_as_f32"), ("bf16", "bf16_as_f32")] {
        let a = torch_out.tensor::<f32>(half).unwrap();
        let b = torch_out.tensor::<f32>(exact).unwrap();
        assert_eq!(a.shape(), b.shape());
        assert_eq!(
            a.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{half}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
