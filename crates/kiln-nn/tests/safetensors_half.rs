//! Half-precision model files: kiln writes `BF16` and `F16` on request (`save_as`), rounding as
//! PyTorch does, reads them back into a model of any element type, reads the ones PyTorch
//! writes (committed fixtures from `fixtures/make_half_fixtures.py`), and Python's reference
//! reader with numpy reads kiln's (run for real; skipped with a printed reason on a machine
//! without `python3`, `safetensors` and `numpy`, a failure when `CI=true`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use half::{bf16, f16};
use kiln_autograd::Var;
use kiln_nn::serialize::{save_as, save_raw, save_state_dict_as, Dtype, RawTensor};
use kiln_nn::{
    load, save_state_dict, BatchNorm1d, Forward, Linear, Metadata, Module, SafetensorsFile, Sequential, StateDict, Tanh,
};
use kiln_tensor::{Bf16Tensor, Float, Tensor};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-st-half-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn bits32(t: &Tensor<f32>) -> Vec<u32> {
    t.to_vec().iter().map(|x| x.to_bits()).collect()
}

/// Values that exercise the rounding: ties (to even, both ways), values just above a tie,
/// overflow of `F16`'s range, `F16` subnormals, signed zeros and infinities.
fn edge_values() -> Vec<f32> {
    vec![
        1.0,
        1.0 + 2f32.powi(-8),                   // bf16 tie, rounds down to the even 1.0
        1.0 + 3.0 * 2f32.powi(-8),             // bf16 tie, rounds up to the even 1.0 + 2^-6
        1.0 + 2f32.powi(-11),                  // f16 tie, rounds down to the even 1.0
        1.0 + 2f32.powi(-11) + 2f32.powi(-20), // just above the f16 tie: rounds up
        -std::f32::consts::PI,
        65504.0, // f16's largest
        70000.0, // beyond f16: inf
        -1e30,   // beyond f16: -inf; fine in bf16
        6.0e-8,  // f16 subnormal
        1e-10,   // below f16's smallest subnormal: 0
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.1,
        -2.5e-3,
    ]
}

fn model<E: Float>() -> Sequential<E> {
    Sequential::new_generic()
        .add(Linear::new_generic(4, 3))
        .add(BatchNorm1d::new_generic(3))
        .add(Tanh)
        .add(Linear::new_generic(3, 2))
}

/// A state dict with the edge values and a trained-looking model's tensors.
fn state() -> StateDict<f32> {
    kiln_nn::init::manual_seed(11);
    let m = model::<f32>();
    m.forward(&Var::constant(Tensor::from_vec((0..20).map(|i| (i as f32 * 0.7).sin()).collect(), &[5, 4])));
    let mut sd = m.state_dict();
    let edge = edge_values();
    let n = edge.len();
    sd.insert("edge".to_string(), Tensor::from_vec(edge, &[2, n / 2]));
    sd
}

#[test]
fn bf16_and_f16_files_round_like_pytorch_and_load_into_any_element_type() {
    let dir = temp_dir("roundtrip");
    let sd = state();
    for (dtype, round) in [
        (Dtype::BF16, (|x: f32| bf16::from_f32(x).to_f32()) as fn(f32) -> f32),
        (Dtype::F16, |x: f32| f16::from_f32(x).to_f32()),
    ] {
        let path = dir.join(format!("m-{dtype}.safetensors"));
        save_state_dict_as(&sd, &path, &Metadata::new(), dtype).unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        for (k, info) in file.tensors() {
            let want = if k.ends_with("num_batches_tracked") { Dtype::I64 } else { dtype };
            assert_eq!(info.dtype, want, "{k}");
            assert_eq!(info.shape, sd[k].shape(), "{k}");
        }
        // Half the bytes of F32 (plus the one I64 count).
        let f32_path = dir.join("m-f32.safetensors");
        save_state_dict(&sd, &f32_path, &Metadata::new()).unwrap();
        let data = |p: &Path| {
            let f = SafetensorsFile::open(p).unwrap();
            f.keys().map(|k| f.raw_bytes(k).unwrap().len()).sum::<usize>()
        };
        assert_eq!(data(&path) - 8, (data(&f32_path) - 8) / 2, "{dtype}");

        let back: StateDict<f32> = kiln_nn::load_state_dict_file(&path).unwrap();
        let back64: StateDict<f64> = kiln_nn::load_state_dict_file(&path).unwrap();
        for (k, t) in &sd {
            let want: Vec<u32> = t.to_vec().iter().map(|&x| round(x).to_bits()).collect();
            assert_eq!(bits32(&back[k]), want, "{dtype} {k}");
            let want64: Vec<u64> = t.to_vec().iter().map(|&x| f64::from(round(x)).to_bits()).collect();
            assert_eq!(back64[k].to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want64, "{dtype} {k}");
        }
    }
    // The ties went to even, and F16 overflowed to infinity, as in PyTorch.
    let edge = |dtype: Dtype| {
        let p = dir.join(format!("m-{dtype}.safetensors"));
        SafetensorsFile::open(p).unwrap().tensor::<f32>("edge").unwrap().to_vec()
    };
    let (b, h) = (edge(Dtype::BF16), edge(Dtype::F16));
    assert_eq!((b[1], b[2]), (1.0, 1.0 + 2f32.powi(-6)));
    assert_eq!((h[3], h[4]), (1.0, 1.0 + 2f32.powi(-10)));
    assert_eq!((h[6], h[7], h[8]), (65504.0, f32::INFINITY, f32::NEG_INFINITY));
    assert_eq!(b[7], 70144.0); // bf16 has f32's range
    assert!(b[8].is_finite() && b[8] < -9.9e29);
    assert_eq!(h[10], 0.0);
    assert!(h[11].is_sign_negative() && h[11] == 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_model_saves_as_bf16_and_loads_back_f32_and_f64() {
    let dir = temp_dir("model");
    kiln_nn::init::manual_seed(5);
    let m = model::<f64>();
    let path = dir.join("m.safetensors");
    save_as(&m, &path, &Metadata::new(), Dtype::BF16).unwrap();
    let mut m32 = model::<f32>();
    let report = load(&mut m32, &path, true).unwrap();
    assert_eq!(report.loaded.len(), 9);
    let mut m64 = model::<f64>();
    load(&mut m64, &path, true).unwrap();
    let (sd, sd32, sd64) = (m.state_dict(), m32.state_dict(), m64.state_dict());
    for (k, t) in &sd {
        for (i, &x) in t.to_vec().iter().enumerate() {
            // f64 -> bf16 directly (no double rounding through f32), then widened exactly.
            let want = bf16::from_f64(x).to_f32();
            assert_eq!(sd32[k].to_vec()[i].to_bits(), want.to_bits(), "{k}[{i}]");
            assert_eq!(sd64[k].to_vec()[i], f64::from(want), "{k}[{i}]");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_storage_round_trips_bit_for_bit_without_widening() {
    let dir = temp_dir("storage");
    let x = Tensor::from_vec(edge_values(), &[4, 4]);
    let h = Bf16Tensor::from_f32(&x);
    let mut tensors = BTreeMap::new();
    tensors.insert("h".to_string(), RawTensor::from_bf16(&h));
    let path = dir.join("h.safetensors");
    save_raw(&path, &tensors, &Metadata::new()).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.info("h").unwrap().dtype, Dtype::BF16);
    assert_eq!(file.tensor_bf16("h").unwrap(), h);
    assert_eq!(file.raw_tensor("h").unwrap(), tensors["h"]);
    // Other float dtypes round into bf16 storage as Bf16Tensor::from_f32 does.
    let mut sd = StateDict::new();
    sd.insert("x".to_string(), x.clone());
    save_state_dict(&sd, &path, &Metadata::new()).unwrap();
    assert_eq!(SafetensorsFile::open(&path).unwrap().tensor_bf16("x").unwrap(), h);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------ files PyTorch wrote

#[test]
fn pytorch_bf16_and_f16_files_load_exactly() {
    for name in ["bf16", "f16"] {
        let file = |suffix: &str| fixtures().join(format!("torch_{name}{suffix}.safetensors"));
        let half = SafetensorsFile::open(file("")).unwrap();
        let want_dtype = if name == "bf16" { Dtype::BF16 } else { Dtype::F16 };
        assert_eq!(half.info("0.weight").unwrap().dtype, want_dtype);
        assert_eq!(half.info("1.num_batches_tracked").unwrap().dtype, Dtype::I64);
        assert!(half.metadata()["written_by"].starts_with("torch "), "{:?}", half.metadata());

        let mut m = model::<f32>();
        load(&mut m, file(""), true).unwrap();
        let widened: StateDict<f32> = kiln_nn::load_state_dict_file(file("_as_f32")).unwrap();
        let sd = m.state_dict();
        assert_eq!(sd.len(), widened.len());
        for (k, t) in &widened {
            assert_eq!(bits32(&sd[k]), bits32(t), "{name} {k}: decoded differently from PyTorch's .float()");
        }
        assert_eq!(sd["1.num_batches_tracked"].item(), 2.0);

        // The loaded model computes what PyTorch computed with the same rounded weights.
        let mut m = m;
        m.eval();
        let io = SafetensorsFile::open(file("_io")).unwrap();
        let y = m.forward(&Var::constant(io.tensor::<f32>("x").unwrap())).value();
        let want = io.tensor::<f32>("y").unwrap();
        assert_eq!(y.shape(), want.shape());
        for (a, b) in y.to_vec().iter().zip(want.to_vec()) {
            assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "{name}: kiln {a}, PyTorch {b}");
        }
        // And a model in f64 reads the same file.
        let mut m64 = model::<f64>();
        load(&mut m64, file(""), true).unwrap();
        let sd64 = m64.state_dict();
        for (k, t) in &widened {
            let want: Vec<f64> = t.to_vec().iter().map(|&x| f64::from(x)).collect();
            assert_eq!(sd64[k].to_vec(), want, "{name} {k}");
        }
    }
}

// ------------------------------------------------------------------ Python reads kiln's files

/// Whether `python3` can import safetensors and numpy; without them the test is skipped with
/// the reason printed, or fails when `CI=true`.
fn python_ready() -> bool {
    let why = match Command::new("python3").args(["-c", "import safetensors, numpy"]).output() {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "python3 cannot import safetensors and numpy (pip install safetensors numpy): {}",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        ),
        Err(e) => format!("python3 not found: {e}"),
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and {why}");
    eprintln!("skipped: {why}");
    false
}

const PYTHON: &str = r#"
import json, struct, sys
import numpy as np
import safetensors
from safetensors import safe_open
from safetensors.numpy import load_file

d = sys.argv[1]
ref = load_file(f"{d}/ref.safetensors")  # the float32 originals

def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        return head, f.read()

# F16: the reference reader gives numpy float16 arrays equal, bit for bit, to numpy's own
# rounding of the float32 originals.
h = load_file(f"{d}/kiln_f16.safetensors")
assert sorted(h) == sorted(ref), (sorted(h), sorted(ref))
for k, v in ref.items():
    if k.endswith("num_batches_tracked"):
        assert h[k].dtype == np.int64 and v.dtype == np.int64 and np.array_equal(h[k], v), k
        continue
    assert h[k].dtype == np.float16, (k, h[k].dtype)
    want = v.astype(np.float16)
    assert h[k].shape == want.shape, k
    assert np.array_equal(h[k].view(np.uint16), want.view(np.uint16)), (k, h[k], want)

# BF16: numpy has no bfloat16, so the reference reader checks the header and lists the keys and
# metadata, and the bits are decoded here and compared with the float32 originals rounded to
# nearest, ties to even (what torch's .bfloat16() does).
with safe_open(f"{d}/kiln_bf16.safetensors", framework="numpy") as f:
    assert sorted(f.keys()) == sorted(ref), sorted(f.keys())
    meta = f.metadata()
assert meta["format"] == "pt" and "kiln_version" in meta, meta
head, data = header(f"{d}/kiln_bf16.safetensors")
for k, v in ref.items():
    e = head[k]
    b, end = e["data_offsets"]
    if k.endswith("num_batches_tracked"):
        assert e["dtype"] == "I64", e
        continue
    assert e["dtype"] == "BF16" and e["shape"] == list(v.shape), (k, e)
    got = np.frombuffer(data[b:end], dtype="<u2").reshape(v.shape)
    u = v.astype("<f4").view("<u4").astype(np.uint64)
    want = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(got, want), (k, got, want)

# With torch at hand, torch itself loads both files and agrees.
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    from safetensors.torch import load_file as load_torch
    for name, dtype in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
        t = load_torch(f"{d}/kiln_{name}.safetensors")
        for k, v in ref.items():
            if k.endswith("num_batches_tracked"):
                continue
            assert t[k].dtype == dtype, (k, t[k].dtype)
            want = torch.from_numpy(v).to(dtype)
            assert torch.equal(t[k].view(torch.int16), want.view(torch.int16)), (name, k)
print("ok", "with torch" if torch is not None else "without torch")
"#;

#[test]
fn python_reads_kiln_bf16_and_f16_files() {
    if !python_ready() {
        return;
    }
    let dir = temp_dir("python");
    let sd = state();
    save_state_dict(&sd, dir.join("ref.safetensors"), &Metadata::new()).unwrap();
    save_state_dict_as(&sd, dir.join("kiln_bf16.safetensors"), &Metadata::new(), Dtype::BF16).unwrap();
    save_state_dict_as(&sd, dir.join("kiln_f16.safetensors"), &Metadata::new(), Dtype::F16).unwrap();
    std::fs::write(dir.join("check.py"), PYTHON).unwrap();
    let out = Command::new("python3").arg(dir.join("check.py")).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    std::fs::remove_dir_all(&dir).unwrap();
}
