//! Test support: reading PyTorch's golden fixtures from `../shared/golden` (see its README).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_tensor::Tensor;

/// The golden folder, or `None` (tests then skip with a printed reason).
pub(crate) fn dir() -> Option<PathBuf> {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden"));
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("skipped: golden fixtures not found at {}", d.display());
        None
    }
}

/// One golden case: its JSON config and its tensors (floating ones as f64, integer ones
/// converted to f64 as well; `ints` keeps integer tensors exactly).
pub(crate) struct Case {
    pub json: serde_json::Value,
    pub tensors: BTreeMap<String, Tensor<f64>>,
    pub ints: BTreeMap<String, (Vec<i64>, Vec<usize>)>,
}

impl Case {
    /// A tensor by full name (`param.weight`, `input.x`, ...).
    pub fn t(&self, name: &str) -> Tensor<f64> {
        self.tensors.get(name).unwrap_or_else(|| panic!("golden case has no tensor {name}")).clone()
    }
    /// Tolerance `(rtol, atol)` for a dtype (`float64` or `float32`).
    pub fn tol(&self, dtype: &str) -> (f64, f64) {
        let t = &self.json["tolerance"][dtype];
        (t["rtol"].as_f64().unwrap_or(1e-10), t["atol"].as_f64().unwrap_or(1e-12))
    }
}

/// Loads `group/case` (`layers/linear`).
pub(crate) fn load(group_case: &str) -> Option<Case> {
    let d = dir()?;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join(format!("{group_case}.json"))).ok()?).ok()?;
    let bytes = std::fs::read(d.join(format!("{group_case}.safetensors"))).unwrap_or_default();
    let mut tensors = BTreeMap::new();
    let mut ints = BTreeMap::new();
    if !bytes.is_empty() {
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden safetensors parse");
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let vals: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F64 => {
                    data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::F32 => {
                    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::I64 => {
                    let v: Vec<i64> = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                    ints.insert(name.clone(), (v.clone(), shape.clone()));
                    v.iter().map(|&x| x as f64).collect()
                }
                safetensors::Dtype::BOOL => data.iter().map(|&b| b as f64).collect(),
                other => panic!("golden: unexpected dtype {other:?} for {name}"),
            };
            tensors.insert(name, Tensor::from_vec(vals, &shape));
        }
    }
    Some(Case { json, tensors, ints })
}

/// Asserts `|a - b| <= atol + rtol |b|` elementwise, naming the quantity.
pub(crate) fn assert_close(what: &str, a: &Tensor<f64>, b: &Tensor<f64>, (rtol, atol): (f64, f64)) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape {:?} vs golden {:?}", a.shape(), b.shape());
    for (i, (x, y)) in a.to_vec().iter().zip(b.to_vec()).enumerate() {
        assert!((x - y).abs() <= atol + rtol * y.abs(), "{what}[{i}]: {x} vs golden {y}");
    }
}
