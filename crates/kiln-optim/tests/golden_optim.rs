//! Optimiser trajectories against PyTorch: every case of `shared/golden/optim/`.
//!
//! Each case: two parameters `p0 [5,3]`, `p1 [3]`; ten steps with given gradients; the
//! parameters after every step and the state after the last (`state_after.p<i>.<key>`). The
//! hyper-parameters come from the JSON's resolved param group, so another variant of the
//! fixtures (other values) is checked the same way. Run in f64 at the JSON's float64 tolerance
//! and in f32 at its float32 tolerance.

use std::collections::{BTreeMap, BTreeSet};

use kiln_autograd::Var;
use kiln_golden::{assert_close_slice as assert_close, Case};
use kiln_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, RMSprop, RMSpropConfig, SGDConfig, SGD,
};
use kiln_tensor::{Float, Tensor};
use serde_json::Value;

/// The cases this file knows; `every_case_file_is_covered` fails on any other.
const CASES: [&str; 10] = [
    "adagrad_lr_decay",
    "adam",
    "adam_amsgrad_wd",
    "adamw",
    "rmsprop",
    "rmsprop_centered_momentum",
    "sgd",
    "sgd_momentum",
    "sgd_momentum_dampening_wd",
    "sgd_nesterov",
];

fn tensor<E: Float>(c: &Case, name: &str) -> Tensor<E> {
    c.t(name).cast()
}

/// The parameter names `p0`, `p1`, ... of a case, from its `param.*` tensors, in index order
/// (state is keyed `state_after.p<i>.*` by the index).
fn param_names(c: &Case) -> Vec<String> {
    let n = c.tensors.keys().filter(|k| k.starts_with("param.")).count();
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for name in &names {
        assert!(c.has(&format!("param.{name}")), "{}: params are not p0..p{}", c.name, n - 1);
    }
    names
}

fn f(group: &Value, key: &str) -> f64 {
    group[key].as_f64().unwrap_or_else(|| panic!("resolved_param_group.{key} missing"))
}

fn b(group: &Value, key: &str) -> bool {
    group[key].as_bool().unwrap_or(false)
}

fn betas(group: &Value) -> (f64, f64) {
    let b = group["betas"].as_array().expect("betas");
    (b[0].as_f64().unwrap(), b[1].as_f64().unwrap())
}

/// Runs the steps with `opt` and checks every parameter after every step and the final
/// state.
fn run<E: Float, O: Optimizer<E>>(case: &str, mut opt: O, params: &[Var<E>], c: &Case, tol: (f64, f64)) {
    let names = param_names(c);
    let mut worst = 0.0f64;
    let steps = c.usize("steps");
    assert!(steps > 0, "{case}: no steps");
    for k in 1..=steps {
        for (p, name) in params.iter().zip(&names) {
            p.set_grad(Some(tensor(c, &format!("grads.{k}.{name}"))));
        }
        opt.step();
        for (p, name) in params.iter().zip(&names) {
            let want = c.t(&format!("params_after.{k}.{name}"));
            let got: Vec<f64> = p.value().to_vec().iter().map(|&x| Float::to_f64(x)).collect();
            assert_eq!(p.shape().as_slice(), want.shape());
            worst = worst.max(assert_close(&format!("{case}: params_after.{k}.{name}"), &got, &want.to_vec(), tol));
        }
    }
    let sd = opt.state_dict();
    for (i, name) in names.iter().enumerate() {
        let prefix = format!("state_after.p{i}.");
        let want: BTreeMap<&str, Tensor<f64>> =
            c.tensors.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|key| (key, v.clone()))).collect();
        let ours = sd.state.get(&i);
        let mut our_keys: BTreeSet<&str> = BTreeSet::new();
        if let Some(s) = ours {
            our_keys.extend(s.buffers.keys().map(String::as_str));
            if s.step.is_some() {
                our_keys.insert("step");
            }
        }
        let want_keys: BTreeSet<&str> = want.keys().copied().collect();
        assert_eq!(our_keys, want_keys, "{case}: state keys of {name}");
        for (key, g) in want {
            let s = ours.unwrap();
            let got: Vec<f64> = if key == "step" {
                vec![s.step.unwrap() as f64]
            } else {
                s.buffers[key].to_vec().iter().map(|&x| Float::to_f64(x)).collect()
            };
            worst = worst.max(assert_close(&format!("{case}: state_after.p{i}.{key}"), &got, &g.to_vec(), tol));
        }
    }
    eprintln!(
        "{case} ({}): {steps} steps, largest relative difference from PyTorch {worst:.2e}",
        std::any::type_name::<E>()
    );
}

fn run_case_as<E: Float>(case: &str, dtype: &str) {
    let Some(c) = kiln_golden::load(&format!("optim/{case}")) else { return };
    let cfg = &c.json;
    let tol = c.tol(dtype);
    let params: Vec<Var<E>> = param_names(&c).iter().map(|n| Var::param(tensor(&c, &format!("param.{n}")))).collect();
    let g = &cfg["resolved_param_group"];
    let optimizer = c.str("optimizer").trim_start_matches("torch.optim.");
    let ps = params.clone();
    let t = &c;
    match optimizer {
        "SGD" => {
            let c = SGDConfig {
                lr: f(g, "lr"),
                momentum: f(g, "momentum"),
                dampening: f(g, "dampening"),
                weight_decay: f(g, "weight_decay"),
                nesterov: b(g, "nesterov"),
                maximize: b(g, "maximize"),
            };
            run(case, SGD::new(ps, c), &params, t, tol)
        }
        "Adam" | "AdamW" if b(g, "decoupled_weight_decay") || optimizer == "AdamW" => {
            let c = AdamWConfig {
                lr: f(g, "lr"),
                betas: betas(g),
                eps: f(g, "eps"),
                weight_decay: f(g, "weight_decay"),
                amsgrad: b(g, "amsgrad"),
                maximize: b(g, "maximize"),
            };
            run(case, AdamW::new(ps, c), &params, t, tol)
        }
        "Adam" => {
            let c = AdamConfig {
                lr: f(g, "lr"),
                betas: betas(g),
                eps: f(g, "eps"),
                weight_decay: f(g, "weight_decay"),
                amsgrad: b(g, "amsgrad"),
                maximize: b(g, "maximize"),
            };
            run(case, Adam::new(ps, c), &params, t, tol)
        }
        "RMSprop" => {
            let c = RMSpropConfig {
                lr: f(g, "lr"),
                alpha: f(g, "alpha"),
                eps: f(g, "eps"),
                weight_decay: f(g, "weight_decay"),
                momentum: f(g, "momentum"),
                centered: b(g, "centered"),
                maximize: b(g, "maximize"),
            };
            run(case, RMSprop::new(ps, c), &params, t, tol)
        }
        "Adagrad" => {
            let c = AdagradConfig {
                lr: f(g, "lr"),
                lr_decay: f(g, "lr_decay"),
                weight_decay: f(g, "weight_decay"),
                initial_accumulator_value: f(g, "initial_accumulator_value"),
                eps: f(g, "eps"),
                maximize: b(g, "maximize"),
            };
            run(case, Adagrad::new(ps, c), &params, t, tol)
        }
        other => panic!("{case}: no kiln optimizer for {other}"),
    }
}

fn run_case(case: &str) {
    run_case_as::<f64>(case, "float64");
    run_case_as::<f32>(case, "float32");
}

#[test]
fn every_case_file_is_covered() {
    let Some(names) = kiln_golden::case_names("optim") else { return };
    for name in names {
        assert!(CASES.contains(&name.as_str()), "optim/{name}.json has no test in golden_optim.rs");
    }
}

macro_rules! golden_cases {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_case(stringify!($name));
        }
    )*};
}

golden_cases!(
    adagrad_lr_decay,
    adam,
    adam_amsgrad_wd,
    adamw,
    rmsprop,
    rmsprop_centered_momentum,
    sgd,
    sgd_momentum,
    sgd_momentum_dampening_wd,
    sgd_nesterov,
);
