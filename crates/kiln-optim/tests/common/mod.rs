//! Reading the PyTorch golden fixtures of `../shared/golden/` (see its README).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// The golden folder, or `None` (with the reason printed) when it is absent.
pub fn golden_dir(group: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden")).join(group);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: golden fixtures not found at {} (generate them with make_golden.py)", dir.display());
        None
    }
}

/// The case names (JSON files) of a group, sorted.
pub fn case_names(group: &str) -> Vec<String> {
    let Some(dir) = golden_dir(group) else { return vec![] };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

/// A case's JSON config.
pub fn config(group: &str, case: &str) -> Option<Value> {
    let path = golden_dir(group)?.join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A float64 tensor: shape and row-major data.
#[derive(Clone, Debug)]
pub struct Golden {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Every float64 tensor of a case's safetensors file, by name.
pub fn tensors(group: &str, case: &str) -> BTreeMap<String, Golden> {
    let path = golden_dir(group).unwrap().join(format!("{case}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F64, "{}: {name} is not float64", path.display());
        let data = view.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
        out.insert(name, Golden { shape: view.shape().to_vec(), data });
    }
    out
}

/// `(rtol, atol)` of a case for `dtype` ("float64" / "float32").
pub fn tolerance(cfg: &Value, dtype: &str) -> (f64, f64) {
    let t = &cfg["tolerance"][dtype];
    (t["rtol"].as_f64().unwrap(), t["atol"].as_f64().unwrap())
}

/// Asserts `|a - b| <= atol + rtol |b|` elementwise, naming `what` and the failing element;
/// returns the largest relative difference `|a - b| / max(|b|, tiny)`.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], (rtol, atol): (f64, f64)) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: {} values, expected {}", a.len(), b.len());
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        worst = worst.max((x - y).abs() / y.abs().max(1e-300));
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: got {x:e}, PyTorch {y:e} (diff {:e}, rtol {rtol:e}, atol {atol:e})",
            (x - y).abs()
        );
    }
    worst
}
