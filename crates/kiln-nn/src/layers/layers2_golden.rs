//! Test support for the golden cases of `tests/fixtures/layers2/` (written by PyTorch through
//! `make_fixtures.py` there): each case names the layer and its constructor arguments as the
//! registry describes them, so that every size and option comes from the file.

use std::path::PathBuf;

use kiln_autograd::Var;
use kiln_tensor::Tensor;
use serde_json::{json, Value};

use crate::golden;
use crate::module::{Layer, StateDict};

/// A `{"shape": [..], "data": [..]}` object as a tensor.
pub(crate) fn tensor(v: &Value) -> Tensor<f64> {
    let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data: Vec<f64> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    Tensor::from_vec(data, &shape)
}

/// The cases of `tests/fixtures/layers2/<file>`; a missing or empty file fails the test.
pub(crate) fn cases(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layers2").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases = v["cases"].as_array().unwrap_or_else(|| panic!("{}: no cases", path.display())).clone();
    assert!(!cases.is_empty(), "{}: no cases", path.display());
    cases
}

/// Builds each case's layer from its description, loads `params`, sets the mode, and compares
/// the output, the input gradient, every parameter gradient and every buffer afterwards with
/// PyTorch's (`|a - b| <= 1e-12 + 1e-9 |b|`). Returns how many cases ran.
pub(crate) fn run_file(file: &str) -> usize {
    let cases = cases(file);
    for case in &cases {
        let what = format!("{file}: {} {}", case["layer"], case["args"]);
        let mut layer: Box<dyn Layer<f64>> =
            crate::registry::build(&json!({"layer": case["layer"], "args": case["args"]}))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        let sd: StateDict<f64> =
            case["params"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), tensor(v))).collect();
        layer.load_state_dict(&sd, true).unwrap_or_else(|e| panic!("{what}: {e}"));
        layer.set_training(case["mode"].as_str() == Some("train"));
        let x = Var::param(tensor(&case["input"]));
        let y = layer.forward(&x);
        let tol = (1e-9, 1e-12);
        golden::assert_close(&format!("{what} output"), &y.value(), &tensor(&case["output"]), tol);
        y.backward_with(&tensor(&case["upstream"]));
        golden::assert_close(&format!("{what} grad input"), &x.grad().unwrap(), &tensor(&case["grad_input"]), tol);
        let grads = case["grad_params"].as_object().unwrap();
        let params = layer.named_parameters();
        assert_eq!(params.len(), grads.len(), "{what}: parameter count");
        for (k, p) in params {
            let g = p.grad().unwrap_or_else(|| Tensor::zeros(&p.shape()));
            let want = grads.get(&k).unwrap_or_else(|| panic!("{what}: PyTorch has no parameter {k}"));
            golden::assert_close(&format!("{what} grad {k}"), &g, &tensor(want), tol);
        }
        let buffers = case["buffers_after"].as_object().unwrap();
        let ours = layer.named_buffers();
        assert_eq!(ours.len(), buffers.len(), "{what}: buffer count");
        for (k, b) in ours {
            let want = buffers.get(&k).unwrap_or_else(|| panic!("{what}: PyTorch has no buffer {k}"));
            golden::assert_close(&format!("{what} buffer {k}"), &b.value(), &tensor(want), tol);
        }
    }
    cases.len()
}
