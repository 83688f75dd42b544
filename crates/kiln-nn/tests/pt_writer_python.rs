//! `.pt` files written by kiln ([`save_pt_tensors`], [`save_pt`]) read by Python: with the
//! standard library alone (`pt_writer/check_stdlib.py`: zip layout, alignment, a restricted
//! unpickler allowing only torch's state-dict globals, every value; runs in CI, where
//! `python3` is required under `CI=true`), and with real PyTorch
//! (`pt_writer/check_torch.py`: `torch.load(weights_only=True)`, also with `mmap=True`),
//! which skips with a printed reason when torch is not importable unless
//! `KILN_REQUIRE_TORCH` is set (CI cannot install torch).

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_nn::serialize::{save_pt, save_pt_tensors, Dtype, RawTensor};
use kiln_nn::{Linear, Module};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-pt-python-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pt_writer").join(name)
}

fn raw(dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> RawTensor {
    RawTensor { dtype, shape: shape.to_vec(), data: bytes }
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// A checkpoint with one tensor of each dtype, and the JSON of what Python must read
/// (`{key: {"dtype", "shape", "values"}}`, values as Python's `tolist()` gives them).
fn every_dtype() -> (Vec<(String, RawTensor)>, String) {
    let f32s = [1.5f32, -2.0, 0.0, 3.25, 1e-8, -7.0];
    let f64s = [0.1f64, -1e300, 2.0, 1.0 / 3.0];
    let t = vec![
        ("layer.f32".to_string(), raw(Dtype::F32, &[2, 3], le(&f32s, f32::to_le_bytes))),
        ("f64".into(), raw(Dtype::F64, &[2, 2], le(&f64s, f64::to_le_bytes))),
        ("f16".into(), raw(Dtype::F16, &[3], vec![0x00, 0x38, 0xff, 0x7b, 0x00, 0xc0])),
        ("bf16".into(), raw(Dtype::BF16, &[2, 1], vec![0x80, 0x3f, 0x49, 0xc0])),
        ("count.i64".into(), raw(Dtype::I64, &[], le(&[-(1i64 << 40)], i64::to_le_bytes))),
        ("i32".into(), raw(Dtype::I32, &[3], le(&[7i32, -9, i32::MAX], i32::to_le_bytes))),
        ("u8".into(), raw(Dtype::U8, &[1, 4], vec![0, 1, 128, 255])),
        ("mask".into(), raw(Dtype::Bool, &[3], vec![1, 0, 1])),
        ("empty".into(), raw(Dtype::F32, &[0, 3], vec![])),
    ];
    let values: Vec<String> = vec![
        f32s.iter().map(|&x| format!("{:?}", f64::from(x))).collect::<Vec<_>>().join(","),
        f64s.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(","),
        "0.5,65504.0,-2.0".into(),
        "1.0,-3.140625".into(),
        format!("{}", -(1i64 << 40)),
        format!("7,-9,{}", i32::MAX),
        "0,1,128,255".into(),
        "true,false,true".into(),
        String::new(),
    ];
    let dtypes = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool", "float32"];
    let json =
        expected_json(t.iter().zip(dtypes).zip(values).map(|(((k, r), d), v)| (k.as_str(), d, r.shape.clone(), v)));
    (t, json)
}

fn expected_json<'a>(items: impl Iterator<Item = (&'a str, &'a str, Vec<usize>, String)>) -> String {
    let entries: Vec<String> = items
        .map(|(k, dtype, shape, values)| {
            let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("{k:?}: {{\"dtype\": \"{dtype}\", \"shape\": [{}], \"values\": [{values}]}}", shape.join(","))
        })
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// Writes both checkpoints into `dir`; returns (file, expected JSON file) pairs.
fn write_checkpoints(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let (tensors, json) = every_dtype();
    let a = dir.join("every_dtype.pt");
    save_pt_tensors(&tensors, &a).unwrap();
    std::fs::write(dir.join("every_dtype.json"), json).unwrap();

    let model: Linear = Linear::new(3, 2);
    let b = dir.join("linear.pt");
    save_pt(&model, &b).unwrap();
    let sd = model.state_dict();
    let json = expected_json(sd.iter().map(|(k, t)| {
        let v = t.to_vec().iter().map(|&x| format!("{:?}", f64::from(x))).collect::<Vec<_>>().join(",");
        (k.as_str(), "float32", t.shape().to_vec(), v)
    }));
    std::fs::write(dir.join("linear.json"), json).unwrap();
    vec![(a, dir.join("every_dtype.json")), (b, dir.join("linear.json"))]
}

fn python_works(import: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {import}")]).output().is_ok_and(|o| o.status.success())
}

fn run_check(script_name: &str, pairs: &[(PathBuf, PathBuf)]) {
    for (pt, json) in pairs {
        let o = Command::new("python3").arg(script(script_name)).arg(pt).arg(json).output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{script_name} {}:\n{out}\n{err}", pt.display());
        assert!(out.contains("check ok"), "{out}");
        eprintln!("{}", out.trim());
    }
}

#[test]
fn python_standard_library_reads_every_tensor() {
    if !python_works("zipfile, pickle") {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but python3 is not available");
        eprintln!("skipped: python3 is not available");
        return;
    }
    let dir = temp_dir("stdlib");
    run_check("check_stdlib.py", &write_checkpoints(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pytorch_loads_with_weights_only() {
    if !python_works("torch") {
        assert!(
            std::env::var_os("KILN_REQUIRE_TORCH").is_none(),
            "KILN_REQUIRE_TORCH is set but `python3 -c 'import torch'` fails"
        );
        eprintln!("skipped: torch is not importable by python3 (set KILN_REQUIRE_TORCH=1 to make this a failure)");
        return;
    }
    let dir = temp_dir("torch");
    run_check("check_torch.py", &write_checkpoints(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}
