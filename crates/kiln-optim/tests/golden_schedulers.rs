//! Learning-rate sequences against PyTorch: every case of `shared/golden/schedulers/`.
//!
//! Each case: `SGD(lr=base)` plus a scheduler, 30 iterations of "read the lr, `opt.step()`,
//! `sched.step()`, read `get_last_lr()`". The scheduler and its arguments are built from the
//! JSON (PyTorch's defaults for the arguments it leaves out), so another variant of the
//! fixtures is checked the same way. `LambdaLR`'s lambda is given as Python source; a small
//! evaluator of Python arithmetic in `epoch` runs it.

use kiln_autograd::Var;
use kiln_golden::assert_close_slice as assert_close;
use kiln_optim::lr_scheduler::{
    AnnealStrategy, CosineAnnealingLR, ExponentialLR, LRScheduler, LambdaLR, LinearLR, MultiStepLR, OneCycleLR,
    OneCycleLRConfig, PlateauMode, ReduceLROnPlateau, ReduceLROnPlateauConfig, SequentialLR, StepLR, ThresholdMode,
};
use kiln_optim::{Optimizer, SGDConfig, SGD};
use kiln_tensor::Tensor;
use serde_json::Value;

/// The cases this file knows; `every_case_file_is_covered` fails on any other.
const CASES: [&str; 9] = [
    "cosine_annealing_lr",
    "exponential_lr",
    "lambda_lr",
    "linear_lr",
    "multistep_lr",
    "one_cycle_lr",
    "reduce_lr_on_plateau",
    "sequential_lr",
    "step_lr",
];

fn num(kw: &Value, key: &str, default: f64) -> f64 {
    kw.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn int(kw: &Value, key: &str) -> usize {
    kw[key].as_u64().unwrap_or_else(|| panic!("scheduler_kwargs.{key} missing")) as usize
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// A scheduler named as in PyTorch, with its kwargs.
fn build(class: &str, kw: &Value, opt: &mut SGD<f64>) -> Box<dyn LRScheduler> {
    match class {
        "StepLR" => Box::new(StepLR::new(opt, int(kw, "step_size"), num(kw, "gamma", 0.1))),
        "MultiStepLR" => {
            let m: Vec<usize> =
                kw["milestones"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            Box::new(MultiStepLR::new(opt, &m, num(kw, "gamma", 0.1)))
        }
        "ExponentialLR" => Box::new(ExponentialLR::new(opt, num(kw, "gamma", f64::NAN))),
        "CosineAnnealingLR" => Box::new(CosineAnnealingLR::new(opt, int(kw, "T_max"), num(kw, "eta_min", 0.0))),
        "LinearLR" => Box::new(LinearLR::new(
            opt,
            num(kw, "start_factor", 1.0 / 3.0),
            num(kw, "end_factor", 1.0),
            kw.get("total_iters").and_then(Value::as_u64).unwrap_or(5) as usize,
        )),
        "OneCycleLR" => {
            let d = OneCycleLRConfig::default();
            let config = OneCycleLRConfig {
                pct_start: num(kw, "pct_start", d.pct_start),
                anneal_strategy: match kw.get("anneal_strategy").and_then(Value::as_str).unwrap_or("cos") {
                    "cos" => AnnealStrategy::Cos,
                    "linear" => AnnealStrategy::Linear,
                    other => panic!("anneal_strategy {other:?}"),
                },
                cycle_momentum: kw.get("cycle_momentum").and_then(Value::as_bool).unwrap_or(true),
                base_momentum: num(kw, "base_momentum", d.base_momentum),
                max_momentum: num(kw, "max_momentum", d.max_momentum),
                div_factor: num(kw, "div_factor", d.div_factor),
                final_div_factor: num(kw, "final_div_factor", d.final_div_factor),
                three_phase: kw.get("three_phase").and_then(Value::as_bool).unwrap_or(false),
            };
            let total = match kw.get("total_steps").and_then(Value::as_u64) {
                Some(t) => t as usize,
                None => int(kw, "epochs") * int(kw, "steps_per_epoch"),
            };
            Box::new(OneCycleLR::new(opt, kw["max_lr"].as_f64().unwrap(), total, config))
        }
        "LambdaLR" => {
            let src = kw["lr_lambda"].as_str().unwrap().to_string();
            let f = lambda::parse(&src);
            Box::new(LambdaLR::new(opt, move |e| f.eval(e as f64)))
        }
        "SequentialLR" => {
            let subs: Vec<Box<dyn LRScheduler>> = kw["schedulers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| build(s["class"].as_str().unwrap(), &s["kwargs"], opt))
                .collect();
            let m = kw["milestones"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            Box::new(SequentialLR::new(opt, subs, m))
        }
        other => panic!("no kiln scheduler for {other}"),
    }
}

fn sgd(cfg: &Value) -> SGD<f64> {
    let lr = cfg["optimizer_kwargs"]["lr"].as_f64().unwrap();
    SGD::new(vec![Var::param(Tensor::zeros(&[2]))], SGDConfig { lr, ..Default::default() })
}

fn run_case(case: &str) {
    let Some(c) = kiln_golden::load(&format!("schedulers/{case}")) else { return };
    let tol = c.tol("float64");
    let cfg = &c.json;
    let n = cfg["num_steps"].as_u64().unwrap() as usize;
    let class = cfg["scheduler"].as_str().unwrap().trim_start_matches("torch.optim.lr_scheduler.");
    let kw = &cfg["scheduler_kwargs"];
    let mut opt = sgd(cfg);
    let (mut before, mut after, mut momenta) = (vec![], vec![], vec![]);
    if class == "ReduceLROnPlateau" {
        let r = &cfg["resolved_kwargs"];
        let config = ReduceLROnPlateauConfig {
            mode: if r["mode"] == "max" { PlateauMode::Max } else { PlateauMode::Min },
            factor: num(r, "factor", 0.1),
            patience: r["patience"].as_u64().unwrap() as usize,
            threshold: num(r, "threshold", 1e-4),
            threshold_mode: if r["threshold_mode"] == "abs" { ThresholdMode::Abs } else { ThresholdMode::Rel },
            cooldown: r["cooldown"].as_u64().unwrap() as usize,
            min_lrs: floats(&r["min_lrs"]),
            eps: num(r, "eps", 1e-8),
            ..Default::default()
        };
        let metrics = floats(&cfg["metrics"]);
        let mut sched = ReduceLROnPlateau::new(&mut opt, config);
        for &m in &metrics[..n] {
            before.push(opt.lr());
            opt.step();
            sched.step(&mut opt, m);
            after.push(sched.get_last_lr()[0]);
        }
    } else {
        let mut sched = build(class, kw, &mut opt);
        for _ in 0..n {
            before.push(opt.lr());
            momenta.push(opt.param_groups()[0].config.momentum);
            opt.step();
            sched.step(&mut opt);
            after.push(sched.get_last_lr()[0]);
        }
    }
    let mut worst = assert_close(&format!("{case}: lr_before_step"), &before, &floats(&cfg["lr_before_step"]), tol);
    worst = worst.max(assert_close(
        &format!("{case}: last_lr_after_step"),
        &after,
        &floats(&cfg["last_lr_after_step"]),
        tol,
    ));
    if let Some(m) = cfg.get("momentum_before_step") {
        worst = worst.max(assert_close(&format!("{case}: momentum_before_step"), &momenta, &floats(m), tol));
    }
    eprintln!("{case}: {n} steps, largest relative difference from PyTorch {worst:.2e}");
}

#[test]
fn every_case_file_is_covered() {
    let Some(names) = kiln_golden::case_names("schedulers") else { return };
    for name in names {
        assert!(CASES.contains(&name.as_str()), "schedulers/{name}.json has no test in golden_schedulers.rs");
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
    cosine_annealing_lr,
    exponential_lr,
    lambda_lr,
    linear_lr,
    multistep_lr,
    one_cycle_lr,
    reduce_lr_on_plateau,
    sequential_lr,
    step_lr,
);

/// Python arithmetic in one variable: `lambda epoch: <expr>` with numbers, `epoch`, `+ - * /
/// // % **`, unary signs and parentheses, evaluated in f64 as Python evaluates floats.
mod lambda {
    #[derive(Debug)]
    pub enum Expr {
        Num(f64),
        Var,
        Neg(Box<Expr>),
        Bin(char, Box<Expr>, Box<Expr>),
    }

    impl Expr {
        pub fn eval(&self, x: f64) -> f64 {
            match self {
                Expr::Num(v) => *v,
                Expr::Var => x,
                Expr::Neg(e) => -e.eval(x),
                Expr::Bin(op, a, b) => {
                    let (a, b) = (a.eval(x), b.eval(x));
                    match op {
                        '+' => a + b,
                        '-' => a - b,
                        '*' => a * b,
                        '/' => a / b,
                        'f' => (a / b).floor(),
                        '%' => a - b * (a / b).floor(),
                        '^' => a.powf(b),
                        _ => unreachable!(),
                    }
                }
            }
        }
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
        var: String,
    }

    /// Parses `lambda <name>: <expr>`.
    pub fn parse(src: &str) -> Expr {
        let src = src.trim();
        let rest = src.strip_prefix("lambda").unwrap_or_else(|| panic!("not a lambda: {src:?}"));
        let (var, body) = rest.split_once(':').unwrap();
        let mut p = P { s: body.as_bytes(), i: 0, var: var.trim().to_string() };
        let e = p.expr();
        p.ws();
        assert_eq!(p.i, p.s.len(), "unparsed rest in {src:?}");
        e
    }

    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && self.s[self.i] == b' ' {
                self.i += 1;
            }
        }
        fn eat(&mut self, t: &str) -> bool {
            self.ws();
            if self.s[self.i..].starts_with(t.as_bytes()) {
                self.i += t.len();
                true
            } else {
                false
            }
        }
        fn expr(&mut self) -> Expr {
            let mut e = self.term();
            loop {
                if self.eat("+") {
                    e = Expr::Bin('+', Box::new(e), Box::new(self.term()));
                } else if self.eat("-") {
                    e = Expr::Bin('-', Box::new(e), Box::new(self.term()));
                } else {
                    return e;
                }
            }
        }
        fn term(&mut self) -> Expr {
            let mut e = self.unary();
            loop {
                let op = if self.eat("**") {
                    // not a term operator: put it back
                    self.i -= 2;
                    return e;
                } else if self.eat("*") {
                    '*'
                } else if self.eat("//") {
                    'f'
                } else if self.eat("/") {
                    '/'
                } else if self.eat("%") {
                    '%'
                } else {
                    return e;
                };
                e = Expr::Bin(op, Box::new(e), Box::new(self.unary()));
            }
        }
        fn unary(&mut self) -> Expr {
            if self.eat("-") {
                Expr::Neg(Box::new(self.unary()))
            } else if self.eat("+") {
                self.unary()
            } else {
                self.power()
            }
        }
        fn power(&mut self) -> Expr {
            let base = self.atom();
            if self.eat("**") {
                // right-associative, and binds tighter than a unary minus on its left only
                Expr::Bin('^', Box::new(base), Box::new(self.unary()))
            } else {
                base
            }
        }
        fn atom(&mut self) -> Expr {
            self.ws();
            if self.eat("(") {
                let e = self.expr();
                assert!(self.eat(")"), "missing )");
                return e;
            }
            let start = self.i;
            while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || b"._".contains(&self.s[self.i])) {
                self.i += 1;
            }
            let tok = std::str::from_utf8(&self.s[start..self.i]).unwrap();
            if tok == self.var {
                Expr::Var
            } else {
                Expr::Num(tok.parse().unwrap_or_else(|_| panic!("unknown token {tok:?}")))
            }
        }
    }

    #[test]
    fn python_precedence() {
        assert_eq!(parse("lambda epoch: 0.95 ** epoch").eval(2.0), 0.95f64.powf(2.0));
        assert_eq!(parse("lambda epoch: 1.0 / (1.0 + 0.1 * epoch)").eval(3.0), 1.0 / (1.0 + 0.1 * 3.0));
        assert_eq!(parse("lambda e: -2 ** 2").eval(0.0), -4.0);
        assert_eq!(parse("lambda e: 2 ** 3 ** 2").eval(0.0), 512.0);
        assert_eq!(parse("lambda e: e // 30 + 7 % 4 - 1").eval(61.0), 2.0 + 3.0 - 1.0);
    }
}
