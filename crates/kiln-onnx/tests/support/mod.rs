//! Shared by the integration tests: runs ONNX Runtime (through `ort_run.py`) on many models
//! in one Python process and reads back its outputs.

#![allow(dead_code)]

pub mod models;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tensor::Tensor;

/// One model to run: its file, named inputs, and how many outputs to read back.
pub struct Case {
    /// The `.onnx` file.
    pub model: PathBuf,
    /// `(input name, value)`; an `int64` input is passed as f32 values and cast in Python.
    pub inputs: Vec<(String, Tensor<f32>, bool)>,
    /// The number of graph outputs.
    pub outputs: usize,
}

/// A fresh temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln_onnx_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_f32(path: &Path, t: &Tensor<f32>) {
    let bytes: Vec<u8> = t.to_vec().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f32(path: &Path) -> Tensor<f32> {
    let bytes = std::fs::read(path).unwrap();
    let shape_text = std::fs::read_to_string(format!("{}.shape", path.display())).unwrap();
    let shape: Vec<usize> =
        shape_text.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::from_vec(data, &shape)
}

/// Whether a missing ONNX Runtime must fail the test (in CI) rather than skip it.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Runs every case through `onnx.checker.check_model(full_check=True)` and ONNX Runtime.
/// `None` (after printing why) when Python, onnx or onnxruntime is missing outside CI; in CI
/// that is a panic. Each case gives its outputs or the error text.
pub fn run_ort(dir: &Path, cases: &[Case]) -> Option<Vec<Result<Vec<Tensor<f32>>, String>>> {
    let mut manifest = String::from("[");
    for (i, c) in cases.iter().enumerate() {
        let inputs: Vec<String> = c
            .inputs
            .iter()
            .enumerate()
            .map(|(j, (name, t, int))| {
                let f = dir.join(format!("case{i}_in{j}.bin"));
                write_f32(&f, t);
                format!(
                    "{{\"name\": {name:?}, \"shape\": {:?}, \"file\": {:?}, \"dtype\": \"{}\"}}",
                    t.shape(),
                    f.display().to_string(),
                    if *int { "int64" } else { "float32" }
                )
            })
            .collect();
        let outputs: Vec<String> = (0..c.outputs)
            .map(|j| format!("{{\"file\": {:?}}}", dir.join(format!("case{i}_out{j}.bin")).display().to_string()))
            .collect();
        if i > 0 {
            manifest.push(',');
        }
        manifest.push_str(&format!(
            "{{\"model\": {:?}, \"inputs\": [{}], \"outputs\": [{}]}}",
            c.model.display().to_string(),
            inputs.join(","),
            outputs.join(",")
        ));
    }
    manifest.push(']');
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, manifest).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ort_run.py");
    let out = match Command::new("python3").arg(&script).arg(&manifest_path).output() {
        Ok(o) => o,
        Err(e) => {
            assert!(!required(), "CI=true and python3 cannot run: {e}");
            eprintln!("skipping the ONNX Runtime check: python3 cannot run: {e}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.code() == Some(3) {
        assert!(!required(), "CI=true and onnx/onnxruntime are not installed: {stdout}");
        eprintln!("skipping the ONNX Runtime check ({}); pip install onnx onnxruntime", stdout.trim());
        return None;
    }
    assert!(out.status.success(), "ort_run.py failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.len(), "ort_run.py output: {stdout}");
    Some(
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                if line.starts_with("ok ") {
                    Ok((0..cases[i].outputs).map(|j| read_f32(&dir.join(format!("case{i}_out{j}.bin")))).collect())
                } else {
                    Err(line.to_string())
                }
            })
            .collect(),
    )
}

/// Asserts `max |a - b| <= tol * max(1, max |b|)` and equal shapes.
pub fn assert_close(what: &str, a: &Tensor<f32>, b: &Tensor<f32>, tol: f32) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let (av, bv) = (a.to_vec(), b.to_vec());
    let scale = bv.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = av.iter().zip(&bv).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff <= tol * scale, "{what}: max |diff| {diff} > {tol} x scale {scale}");
}
