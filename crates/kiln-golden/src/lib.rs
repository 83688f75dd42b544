//! # kiln-golden
//!
//! Test support (not published): the one reader of the golden fixtures that PyTorch and
//! scikit-learn produced in `../shared/golden/` (see that folder's README for the layout).
//!
//! The policy every golden test follows through this crate:
//! - the fixture folder is absent: [`load`] prints `skipped: ...` and returns `None`, so the
//!   test returns; with `KILN_REQUIRE_GOLDEN=1` (`.ci/run` sets it) it panics instead;
//! - a case the test names is missing, unreadable or unparsable, or lacks a field or tensor the
//!   test asks for: always a panic naming the file.
//!
//! The folder is `KILN_GOLDEN_DIR` when set, else `shared/golden` beside the checkout.
//!
//! ```no_run
//! let Some(c) = kiln_golden::load("layers/linear") else { return }; // skipped
//! let in_features = c.usize("constructor_kwargs/in_features");
//! let w = c.t("param.weight");
//! assert_eq!(w.shape()[1], in_features);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_tensor::Tensor;
use serde_json::Value;

/// The variable that points the tests at another fixture folder (a holdout set, say).
pub const DIR_VAR: &str = "KILN_GOLDEN_DIR";
/// The variable that turns an absent fixture folder from a skip into a failure.
pub const REQUIRE_VAR: &str = "KILN_REQUIRE_GOLDEN";

/// The default folder: `shared/golden` beside the checkout (this crate sits in `crates/`).
fn default_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden"))
}

/// What to do about the fixture folder, from the two variables' values (`None` when unset):
/// `Ok(Some(dir))` to read it, `Ok(None)` to skip with the reason, `Err` to fail.
///
/// A folder named by `KILN_GOLDEN_DIR` that does not exist is always an error: the user asked
/// for it. `KILN_REQUIRE_GOLDEN` takes `1`/`true`/`yes` (require) or `0`/`false`/`no`/empty.
pub fn resolve(env_dir: Option<&str>, require: Option<&str>, default: &Path) -> Result<Option<PathBuf>, String> {
    let required = match require.map(str::trim) {
        None | Some("" | "0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(other) => return Err(format!("{REQUIRE_VAR}={other:?}: expected 1 or 0")),
    };
    if let Some(d) = env_dir.filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        return if d.is_dir() { Ok(Some(d)) } else { Err(format!("{DIR_VAR}={}: not a folder", d.display())) };
    }
    if default.is_dir() {
        Ok(Some(default.to_path_buf()))
    } else if required {
        Err(format!(
            "golden fixtures not found at {} and {REQUIRE_VAR}=1: the golden tests cannot check anything",
            default.display()
        ))
    } else {
        Ok(None)
    }
}

/// The fixture folder, or `None` after printing `skipped: <reason>` when it is absent.
///
/// **Panics** when it is absent and `KILN_REQUIRE_GOLDEN=1`, or when `KILN_GOLDEN_DIR`
/// names something that is not a folder.
pub fn dir() -> Option<PathBuf> {
    let env_dir = std::env::var(DIR_VAR).ok();
    let require = std::env::var(REQUIRE_VAR).ok();
    match resolve(env_dir.as_deref(), require.as_deref(), &default_dir()) {
        Ok(Some(d)) => Some(d),
        Ok(None) => {
            eprintln!(
                "skipped: golden fixtures not found at {} (set {DIR_VAR}, or {REQUIRE_VAR}=1 to fail instead)",
                default_dir().display()
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The folder of one group (`optim`, `layers`, ...), or `None` when the fixtures are absent.
///
/// **Panics** when the fixture folder exists but the group folder does not.
pub fn group_dir(group: &str) -> Option<PathBuf> {
    let d = dir()?.join(group);
    assert!(d.is_dir(), "golden group folder {} is missing", d.display());
    Some(d)
}

/// The case names (JSON file stems) of a group, sorted, or `None` when the fixtures are absent.
///
/// **Panics** when the group folder is missing, unreadable, or holds no case.
pub fn case_names(group: &str) -> Option<Vec<String>> {
    let d = group_dir(group)?;
    let mut names: Vec<String> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .filter_map(|e| {
            let p = e.unwrap_or_else(|e| panic!("{}: {e}", d.display())).path();
            (p.extension()? == "json").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "golden group folder {} holds no case (*.json)", d.display());
    Some(names)
}

/// Loads `group/case` (`"layers/linear"`), or returns `None` when the fixtures are absent
/// (see [`dir`]).
///
/// **Panics**, naming the file, when the case's JSON is missing or unparsable, or its
/// safetensors file (present whenever the JSON lists `tensors`) is missing, unparsable or
/// disagrees with the JSON's list.
pub fn load(group_case: &str) -> Option<Case> {
    Some(read_case(&dir()?, group_case))
}

/// Reads `group/case` from `root`; see [`load`].
pub fn read_case(root: &Path, group_case: &str) -> Case {
    let json_path = root.join(format!("{group_case}.json"));
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("golden case {group_case}: cannot read {}: {e}", json_path.display()));
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden case {group_case}: {} is not valid JSON: {e}", json_path.display()));
    let mut case = Case {
        name: group_case.to_string(),
        json_path: json_path.clone(),
        json,
        tensors: BTreeMap::new(),
        ints: BTreeMap::new(),
    };
    let Some(listed) = case.json.get("tensors").cloned() else { return case };
    let st_path = root.join(format!("{group_case}.safetensors"));
    let file = read_tensors(&st_path);
    let listed =
        listed.as_object().unwrap_or_else(|| panic!("{}: `tensors` is not an object", json_path.display())).clone();
    for (name, spec) in &listed {
        let shape: Vec<usize> = spec["shape"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: tensors/{name}/shape is not a list", json_path.display()))
            .iter()
            .map(|d| d.as_u64().unwrap_or_else(|| panic!("{}: tensors/{name}/shape", json_path.display())) as usize)
            .collect();
        let found = file
            .shapes
            .get(name)
            .unwrap_or_else(|| panic!("{}: tensor {name} (listed in the JSON) is missing", st_path.display()));
        assert_eq!(found, &shape, "{}: tensor {name} has shape {found:?}, the JSON says {shape:?}", st_path.display());
    }
    case.tensors = file.floats;
    case.ints = file.ints;
    case
}

/// Every tensor of one safetensors file, as read by [`read_tensors`].
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Floating and bool tensors (bool as 0/1, integers converted too), by name.
    pub floats: BTreeMap<String, Tensor<f64>>,
    /// Integer tensors exactly: row-major values and shape, by name.
    pub ints: BTreeMap<String, (Vec<i64>, Vec<usize>)>,
    /// Every tensor's shape, by name.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

/// Reads a safetensors file of F64/F32/I64/BOOL tensors.
///
/// **Panics**, naming the file, when it is missing, unparsable or holds another dtype.
pub fn read_tensors(path: &Path) -> TensorFile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("golden: cannot read {}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("golden: {} is not a valid safetensors file: {e}", path.display()));
    let mut out = TensorFile::default();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let vals: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F64 => {
                data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
            }
            safetensors::Dtype::F32 => {
                data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect()
            }
            safetensors::Dtype::I64 => {
                let v: Vec<i64> = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                out.ints.insert(name.clone(), (v.clone(), shape.clone()));
                v.iter().map(|&x| x as f64).collect()
            }
            safetensors::Dtype::BOOL => data.iter().map(|&b| f64::from(b)).collect(),
            other => panic!("golden: {}: tensor {name} has unexpected dtype {other:?}", path.display()),
        };
        out.shapes.insert(name.clone(), shape.clone());
        out.floats.insert(name, Tensor::from_vec(vals, &shape));
    }
    out
}

/// One golden case: its JSON config and its tensors.
#[derive(Clone, Debug)]
pub struct Case {
    /// `group/case`.
    pub name: String,
    /// The JSON file it was read from (named in every panic).
    pub json_path: PathBuf,
    /// The JSON config.
    pub json: Value,
    /// Every tensor as f64 (floating ones, bool masks as 0/1, integers converted), by full
    /// name (`param.weight`, `input.x`, ...).
    pub tensors: BTreeMap<String, Tensor<f64>>,
    /// Integer (int64) tensors exactly: row-major values and shape.
    pub ints: BTreeMap<String, (Vec<i64>, Vec<usize>)>,
}

impl Case {
    /// A tensor by full name (`param.weight`, `input.x`, ...).
    ///
    /// **Panics**, naming the file, when the case has no such tensor.
    #[must_use]
    pub fn t(&self, name: &str) -> Tensor<f64> {
        self.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor {name}", self.json_path.display())).clone()
    }

    /// A tensor by full name, or `None`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Tensor<f64>> {
        self.tensors.get(name).cloned()
    }

    /// Whether the case has a tensor of that name.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// An integer tensor exactly: its values and shape.
    ///
    /// **Panics**, naming the file, when the case has no integer tensor of that name.
    pub fn int(&self, name: &str) -> (&[i64], &[usize]) {
        let (v, s) =
            self.ints.get(name).unwrap_or_else(|| panic!("{}: no int64 tensor {name}", self.json_path.display()));
        (v, s)
    }

    /// A bool tensor (a mask) as row-major values and its shape.
    ///
    /// **Panics**, naming the file, when the case has no tensor of that name.
    pub fn bools(&self, name: &str) -> (Vec<bool>, Vec<usize>) {
        let t = self.t(name);
        (t.to_vec().iter().map(|&v| v != 0.0).collect(), t.shape().to_vec())
    }

    /// The `(rtol, atol)` the case suggests for `dtype` (`"float64"` or `"float32"`).
    ///
    /// **Panics**, naming the file, when the JSON has none.
    pub fn tol(&self, dtype: &str) -> (f64, f64) {
        (self.f64(&format!("tolerance/{dtype}/rtol")), self.f64(&format!("tolerance/{dtype}/atol")))
    }

    /// A JSON field by `/`-separated path (`constructor_kwargs/embed_dim`; list positions are
    /// numbers: `metrics/3`), or `None` when it is absent or null.
    pub fn opt(&self, path: &str) -> Option<&Value> {
        let mut v = &self.json;
        for part in path.split('/') {
            v = match v {
                Value::Object(m) => m.get(part)?,
                Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        (!v.is_null()).then_some(v)
    }

    /// A JSON field by path (see [`Case::opt`]).
    ///
    /// **Panics**, naming the file, when it is absent.
    pub fn field(&self, path: &str) -> &Value {
        self.opt(path).unwrap_or_else(|| panic!("{}: no field {path}", self.json_path.display()))
    }

    fn bad(&self, path: &str, what: &str) -> ! {
        panic!("{}: field {path} should be {what}, found {}", self.json_path.display(), self.field(path))
    }

    /// A non-negative integer field.
    pub fn usize(&self, path: &str) -> usize {
        self.field(path).as_u64().unwrap_or_else(|| self.bad(path, "a non-negative integer")) as usize
    }

    /// A non-negative integer field, or `default` when absent.
    pub fn usize_or(&self, path: &str, default: usize) -> usize {
        if self.opt(path).is_some() {
            self.usize(path)
        } else {
            default
        }
    }

    /// An integer field.
    pub fn i64(&self, path: &str) -> i64 {
        self.field(path).as_i64().unwrap_or_else(|| self.bad(path, "an integer"))
    }

    /// A number field.
    pub fn f64(&self, path: &str) -> f64 {
        self.field(path).as_f64().unwrap_or_else(|| self.bad(path, "a number"))
    }

    /// A number field, or `default` when absent.
    pub fn f64_or(&self, path: &str, default: f64) -> f64 {
        if self.opt(path).is_some() {
            self.f64(path)
        } else {
            default
        }
    }

    /// A bool field, or `default` when absent.
    pub fn bool_or(&self, path: &str, default: bool) -> bool {
        match self.opt(path) {
            None => default,
            Some(v) => v.as_bool().unwrap_or_else(|| self.bad(path, "true or false")),
        }
    }

    /// A string field.
    pub fn str(&self, path: &str) -> &str {
        self.field(path).as_str().unwrap_or_else(|| self.bad(path, "a string"))
    }

    /// A string field, or `default` when absent.
    pub fn str_or<'a>(&'a self, path: &str, default: &'a str) -> &'a str {
        if self.opt(path).is_some() {
            self.str(path)
        } else {
            default
        }
    }

    /// A list of numbers.
    pub fn f64s(&self, path: &str) -> Vec<f64> {
        let a = self.field(path).as_array().unwrap_or_else(|| self.bad(path, "a list"));
        a.iter().map(|v| v.as_f64().unwrap_or_else(|| self.bad(path, "a list of numbers"))).collect()
    }

    /// A list of non-negative integers, or a single one as a list of one.
    pub fn usizes(&self, path: &str) -> Vec<usize> {
        match self.field(path) {
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_u64().unwrap_or_else(|| self.bad(path, "a list of non-negative integers")) as usize)
                .collect(),
            _ => vec![self.usize(path)],
        }
    }

    /// Checks parameter `key` of a freshly built module against the `init/` case's documented
    /// distribution (`documented/<key>`) and the shape of PyTorch's draw (`empirical/<key>/shape`):
    /// a uniform draw lies in `[low, high]`, reaches close to both ends and has the documented
    /// standard deviation; a normal draw has the documented mean and deviation; a constant is
    /// exactly its value. The statistical bounds are six standard errors wide.
    ///
    /// **Panics**, naming the parameter and the file, when a check fails.
    pub fn check_init(&self, key: &str, shape: &[usize], values: &[f64]) {
        let what = format!("{} {key}", self.json_path.display());
        let want_shape = self.usizes(&format!("empirical/{key}/shape"));
        assert_eq!(shape, want_shape.as_slice(), "{what}: shape");
        let doc = format!("documented/{key}");
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        match self.str(&format!("{doc}/distribution")) {
            "uniform" => {
                let (lo, hi) = (self.f64(&format!("{doc}/low")), self.f64(&format!("{doc}/high")));
                let want_std = self.f64(&format!("{doc}/std"));
                assert!(min >= lo && max <= hi, "{what}: values in [{min}, {max}], outside U({lo}, {hi})");
                // The chance that n uniform draws all miss the outer 12/n of the range is e^-12.
                let reach = (hi - lo) * (12.0 / n).min(1.0);
                assert!(min <= lo + reach && max >= hi - reach, "{what}: [{min}, {max}] does not fill U({lo}, {hi})");
                // the sample std of a uniform has standard error ~0.45 sigma / sqrt(n)
                assert!(
                    (std - want_std).abs() <= 6.0 * 0.45 * want_std / n.sqrt(),
                    "{what}: std {std}, documented {want_std}"
                );
            }
            "normal" => {
                let (want_mean, want_std) = (self.f64(&format!("{doc}/mean")), self.f64(&format!("{doc}/std")));
                assert!(
                    (mean - want_mean).abs() <= 6.0 * want_std / n.sqrt(),
                    "{what}: mean {mean}, documented {want_mean}"
                );
                // the sample std of a normal has standard error ~0.71 sigma / sqrt(n)
                assert!(
                    (std - want_std).abs() <= 6.0 * 0.71 * want_std / n.sqrt(),
                    "{what}: std {std}, documented {want_std}"
                );
            }
            "constant" => {
                let v = self.f64(&format!("{doc}/value"));
                assert!(values.iter().all(|&x| x == v), "{what}: not all {v} (range [{min}, {max}])");
            }
            other => panic!("{what}: unknown documented distribution {other}"),
        }
    }
}

/// Asserts `|a - b| <= atol + rtol |b|` elementwise and equal shapes, naming the quantity and
/// the first failing element.
pub fn assert_close(what: &str, a: &Tensor<f64>, b: &Tensor<f64>, tol: (f64, f64)) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape {:?} vs golden {:?}", a.shape(), b.shape());
    assert_close_slice(what, &a.to_vec(), &b.to_vec(), tol);
}

/// Asserts `|a - b| <= atol + rtol |b|` elementwise, naming the quantity and the first failing
/// element; returns the largest relative difference `|a - b| / max(|b|, tiny)`.
pub fn assert_close_slice(what: &str, a: &[f64], b: &[f64], (rtol, atol): (f64, f64)) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: {} values, golden {}", a.len(), b.len());
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let same_inf = x == y; // -inf == -inf
        assert!(
            same_inf || (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: got {x:e}, golden {y:e} (diff {:e}, rtol {rtol:e}, atol {atol:e})",
            (x - y).abs()
        );
        if !same_inf {
            worst = worst.max((x - y).abs() / y.abs().max(1e-300));
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-golden-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn absent_folder_skips_unless_required() {
        let missing = Path::new("/nonexistent/kiln-golden");
        assert_eq!(resolve(None, None, missing), Ok(None));
        assert_eq!(resolve(None, Some("0"), missing), Ok(None));
        assert_eq!(
            resolve(None, Some("1"), missing),
            Err("golden fixtures not found at /nonexistent/kiln-golden and KILN_REQUIRE_GOLDEN=1: \
                 the golden tests cannot check anything"
                .into())
        );
        assert_eq!(resolve(None, Some("maybe"), missing), Err("KILN_REQUIRE_GOLDEN=\"maybe\": expected 1 or 0".into()));
        let here = scratch("resolve");
        assert_eq!(resolve(None, Some("1"), &here), Ok(Some(here.clone())));
        assert_eq!(resolve(Some(here.to_str().unwrap()), None, missing), Ok(Some(here.clone())));
        assert_eq!(
            resolve(Some("/nonexistent/elsewhere"), None, &here),
            Err("KILN_GOLDEN_DIR=/nonexistent/elsewhere: not a folder".into())
        );
    }

    #[test]
    fn a_missing_case_fails_naming_the_file() {
        let root = scratch("missing");
        std::fs::create_dir_all(root.join("layers")).unwrap();
        let err = std::panic::catch_unwind(|| read_case(&root, "layers/linear")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.starts_with("golden case layers/linear: cannot read "), "{msg}");
        assert!(msg.contains("layers/linear.json"), "{msg}");
    }

    #[test]
    fn an_unparsable_case_fails_naming_the_file() {
        let root = scratch("bad");
        std::fs::create_dir_all(root.join("g")).unwrap();
        std::fs::write(root.join("g/c.json"), "{ not json").unwrap();
        let err = std::panic::catch_unwind(|| read_case(&root, "g/c")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("g/c.json is not valid JSON"), "{msg}");
        // a JSON that lists tensors needs its safetensors file
        std::fs::write(root.join("g/c.json"), r#"{"tensors": {"input.x": {"dtype": "float64", "shape": [2]}}}"#)
            .unwrap();
        let err = std::panic::catch_unwind(|| read_case(&root, "g/c")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("cannot read") && msg.contains("g/c.safetensors"), "{msg}");
        std::fs::write(root.join("g/c.safetensors"), b"garbage!").unwrap();
        let err = std::panic::catch_unwind(|| read_case(&root, "g/c")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("g/c.safetensors is not a valid safetensors file"), "{msg}");
    }

    #[test]
    fn reads_tensors_and_fields() {
        let root = scratch("ok");
        std::fs::create_dir_all(root.join("g")).unwrap();
        let x: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t: Vec<u8> = [-100i64, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            ("input.x", safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &x).unwrap()),
            ("input.target", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &t).unwrap()),
        ];
        safetensors::serialize_to_file(views, &None, &root.join("g/c.safetensors")).unwrap();
        std::fs::write(
            root.join("g/c.json"),
            r#"{"constructor_kwargs": {"n": 3, "w": null, "k": [2, 4]},
                "tolerance": {"float64": {"rtol": 1e-10, "atol": 1e-12}},
                "tensors": {"input.x": {"dtype": "float64", "shape": [2]},
                            "input.target": {"dtype": "int64", "shape": [2]}}}"#,
        )
        .unwrap();
        let c = read_case(&root, "g/c");
        assert_eq!(c.t("input.x").to_vec(), vec![1.5, -2.0]);
        assert_eq!(c.int("input.target"), (&[-100i64, 3][..], &[2usize][..]));
        assert_eq!(c.usize("constructor_kwargs/n"), 3);
        assert_eq!(c.usizes("constructor_kwargs/k"), vec![2, 4]);
        assert_eq!(c.usize_or("constructor_kwargs/w", 7), 7);
        assert_eq!(c.tol("float64"), (1e-10, 1e-12));
        let err = std::panic::catch_unwind(|| c.tol("float32")).unwrap_err();
        assert!(err.downcast_ref::<String>().unwrap().ends_with("g/c.json: no field tolerance/float32/rtol"));
        // a tensor the JSON lists but the file lacks
        std::fs::write(root.join("g/c.json"), r#"{"tensors": {"input.y": {"dtype": "float64", "shape": [2]}}}"#)
            .unwrap();
        let err = std::panic::catch_unwind(|| read_case(&root, "g/c")).unwrap_err();
        assert!(err.downcast_ref::<String>().unwrap().contains("tensor input.y (listed in the JSON) is missing"));
    }

    #[test]
    fn assert_close_names_the_element() {
        assert_close_slice("x", &[1.0, 2.0], &[1.0, 2.0 + 1e-13], (1e-12, 0.0));
        let err = std::panic::catch_unwind(|| assert_close_slice("x", &[1.0, 2.0], &[1.0, 2.1], (1e-12, 0.0)));
        assert!(err.unwrap_err().downcast_ref::<String>().unwrap().starts_with("x[1]: got 2e0, golden 2.1e0"));
        assert_close_slice("mask", &[f64::NEG_INFINITY], &[f64::NEG_INFINITY], (0.0, 0.0));
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
