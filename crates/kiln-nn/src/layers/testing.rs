//! Test support shared by the layer files of this folder: reading golden constructor
//! arguments, running a golden layer case, and a tiny gradient-descent loop.

use kiln_autograd::Var;
use kiln_tensor::Tensor;
use serde_json::Value;

use crate::golden::{self, Case};
use crate::module::{Layer, StateDict};

/// A constructor argument that PyTorch accepts as `int` or `(int, int)`, as a pair.
pub(crate) fn pair(v: &Value, default: [usize; 2]) -> [usize; 2] {
    match v {
        Value::Null => default,
        Value::Number(n) => {
            let n = n.as_u64().expect("non-negative int") as usize;
            [n, n]
        }
        Value::Array(a) => [a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize],
        other => panic!("expected int or pair, got {other}"),
    }
}

/// An integer constructor argument (or its first element when given as a list).
pub(crate) fn int(v: &Value, default: usize) -> usize {
    match v {
        Value::Null => default,
        Value::Number(n) => n.as_u64().expect("non-negative int") as usize,
        Value::Array(a) => a[0].as_u64().unwrap() as usize,
        other => panic!("expected int, got {other}"),
    }
}

/// Runs a golden layer case on `layer` (already built from the case's constructor
/// arguments): loads `param.*` (parameters and buffers), switches to the case's mode,
/// applies the layer to `input.x`, back-propagates `upstream.output` and compares the
/// output, `grad_input.x`, every `grad_param.*` and every `buffer_after.*`.
pub(crate) fn run_golden(c: &Case, layer: &mut dyn Layer<f64>) {
    let mut sd = StateDict::new();
    for (k, t) in &c.tensors {
        if let Some(key) = k.strip_prefix("param.") {
            sd.insert(key.to_string(), t.clone());
        }
    }
    layer.load_state_dict(&sd, true).unwrap();
    layer.set_training(c.json["mode"].as_str() != Some("eval"));
    let x = Var::param(c.t("input.x"));
    let y = layer.forward(&x);
    let tol = c.tol("float64");
    let case = c.json["case"].as_str().unwrap_or("?");
    golden::assert_close(&format!("{case} output"), &y.value(), &c.t("output.output"), tol);
    y.backward_with(&c.t("upstream.output"));
    golden::assert_close(&format!("{case} grad x"), &x.grad().unwrap(), &c.t("grad_input.x"), tol);
    let params = layer.named_parameters();
    let expected = c.tensors.keys().filter(|k| k.starts_with("grad_param.")).count();
    assert_eq!(params.len(), expected, "{case}: parameter count");
    for (k, p) in params {
        let g = p.grad().unwrap_or_else(|| Tensor::zeros(&p.shape()));
        golden::assert_close(&format!("{case} grad {k}"), &g, &c.t(&format!("grad_param.{k}")), tol);
    }
    for (k, b) in layer.named_buffers() {
        golden::assert_close(&format!("{case} buffer {k}"), &b.value(), &c.t(&format!("buffer_after.{k}")), tol);
    }
}

/// Checks a freshly built module's parameters against an `init/` case: every documented
/// key is one of the module's parameters and follows PyTorch's documented distribution
/// (see [`Case::check_init`]), and the module has no undocumented parameter.
pub(crate) fn check_init(c: &Case, m: &dyn crate::module::Module<f64>) {
    let params = m.named_parameters();
    let documented = c.field("documented").as_object().expect("documented is an object");
    for (k, _) in &params {
        assert!(documented.contains_key(k), "{}: parameter {k} is not documented", c.json_path.display());
    }
    for key in documented.keys() {
        let (_, p) = params
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{}: the module has no parameter {key}", c.json_path.display()));
        c.check_init(key, &p.shape(), &p.value().to_vec());
    }
}

/// Plain gradient descent on `loss()` for `steps` steps; returns the last loss.
pub(crate) fn descend(params: &[Var<f64>], lr: f64, steps: usize, loss: impl Fn() -> Var<f64>) -> f64 {
    let mut last = f64::MAX;
    for _ in 0..steps {
        for p in params {
            p.zero_grad();
        }
        let l = loss();
        last = l.item();
        l.backward();
        for p in params {
            if let Some(g) = p.grad() {
                p.update_value(|v| v.axpy_(-lr, &g));
            }
        }
    }
    last
}
