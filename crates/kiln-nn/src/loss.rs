//! Loss modules (`nn.MSELoss`, `nn.CrossEntropyLoss`, ...): configuration holders that call
//! [`crate::functional`].

use kiln_autograd::Var;
use kiln_tensor::{Float, Indices, Tensor};

use crate::functional::{self as F, CrossEntropyOptions, Reduction};

/// `nn.MSELoss`: mean squared error.
#[derive(Clone, Debug, Default)]
pub struct MSELoss {
    /// The reduction (default mean).
    pub reduction: Reduction,
}
impl MSELoss {
    /// A mean-reduced loss.
    pub fn new() -> Self {
        Self::default()
    }
    /// The loss of `input` against `target` (same shapes).
    pub fn forward<E: Float>(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::mse_loss(input, target, self.reduction)
    }
}

/// `nn.L1Loss`: mean absolute error.
#[derive(Clone, Debug, Default)]
pub struct L1Loss {
    /// The reduction (default mean).
    pub reduction: Reduction,
}
impl L1Loss {
    /// A mean-reduced loss.
    pub fn new() -> Self {
        Self::default()
    }
    /// The loss of `input` against `target`.
    pub fn forward<E: Float>(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::l1_loss(input, target, self.reduction)
    }
}

/// `nn.SmoothL1Loss` (beta default 1).
#[derive(Clone, Debug)]
pub struct SmoothL1Loss {
    /// The reduction (default mean).
    pub reduction: Reduction,
    /// Where the loss turns from quadratic to linear.
    pub beta: f64,
}
impl Default for SmoothL1Loss {
    fn default() -> Self {
        SmoothL1Loss { reduction: Reduction::Mean, beta: 1.0 }
    }
}
impl SmoothL1Loss {
    /// The loss of `input` against `target`.
    pub fn forward<E: Float>(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::smooth_l1_loss(input, target, self.beta, self.reduction)
    }
}

/// `nn.HuberLoss` (delta default 1).
#[derive(Clone, Debug)]
pub struct HuberLoss {
    /// The reduction (default mean).
    pub reduction: Reduction,
    /// Where the loss turns from quadratic to linear.
    pub delta: f64,
}
impl Default for HuberLoss {
    fn default() -> Self {
        HuberLoss { reduction: Reduction::Mean, delta: 1.0 }
    }
}
impl HuberLoss {
    /// The loss of `input` against `target`.
    pub fn forward<E: Float>(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::huber_loss(input, target, self.delta, self.reduction)
    }
}

/// `nn.CrossEntropyLoss`: raw scores `[N, C, *]` against class indices or probabilities.
///
/// ```
/// use kiln_nn::CrossEntropyLoss;
/// use kiln_autograd::Var;
/// use kiln_tensor::{Indices, Tensor};
/// let loss_fn = CrossEntropyLoss::default();
/// let logits = Var::param(Tensor::<f32>::zeros(&[3, 5]));
/// let loss = loss_fn.forward(&logits, &Indices::from_vec(vec![0, 4, 2]));
/// loss.backward();
/// assert!((loss.item() - 5f32.ln()).abs() < 1e-6);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CrossEntropyLoss<E: Float = f32> {
    /// Weights, ignore_index, label smoothing, reduction.
    pub options: CrossEntropyOptions<E>,
}
impl<E: Float> CrossEntropyLoss<E> {
    /// With the given options.
    pub fn new(options: CrossEntropyOptions<E>) -> Self {
        CrossEntropyLoss { options }
    }
    /// The loss against class indices.
    pub fn forward(&self, input: &Var<E>, target: &Indices) -> Var<E> {
        F::cross_entropy(input, target, &self.options)
    }
    /// The loss against class probabilities (same shape as `input`).
    pub fn forward_probs(&self, input: &Var<E>, target: &Tensor<E>) -> Var<E> {
        F::cross_entropy_probs(input, target, &self.options)
    }
}

/// `nn.NLLLoss`: log-probabilities `[N, C, *]` against class indices.
#[derive(Clone, Debug, Default)]
pub struct NLLLoss<E: Float = f32> {
    /// Weights, ignore_index, reduction (label smoothing is not used).
    pub options: CrossEntropyOptions<E>,
}
impl<E: Float> NLLLoss<E> {
    /// The loss against class indices.
    pub fn forward(&self, log_probs: &Var<E>, target: &Indices) -> Var<E> {
        F::nll_loss(log_probs, target, &self.options)
    }
}

/// `nn.BCELoss`: probabilities against binary targets.
#[derive(Clone, Debug, Default)]
pub struct BCELoss<E: Float = f32> {
    /// A weight per element (broadcast), if any.
    pub weight: Option<Tensor<E>>,
    /// The reduction (default mean).
    pub reduction: Reduction,
}
impl<E: Float> BCELoss<E> {
    /// The loss of probabilities `input` against `target`.
    pub fn forward(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::binary_cross_entropy(input, target, self.weight.as_ref(), self.reduction)
    }
}

/// `nn.BCEWithLogitsLoss`: raw logits against binary targets, computed stably.
#[derive(Clone, Debug, Default)]
pub struct BCEWithLogitsLoss<E: Float = f32> {
    /// A weight per element (broadcast), if any.
    pub weight: Option<Tensor<E>>,
    /// A weight of the positive term per class (broadcast over the last dim).
    pub pos_weight: Option<Tensor<E>>,
    /// The reduction (default mean).
    pub reduction: Reduction,
}
impl<E: Float> BCEWithLogitsLoss<E> {
    /// The loss of logits `input` against `target`.
    pub fn forward(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::binary_cross_entropy_with_logits(
            input,
            target,
            self.weight.as_ref(),
            self.pos_weight.as_ref(),
            self.reduction,
        )
    }
}

/// `nn.KLDivLoss`: log-probabilities against probabilities (or log-probabilities).
#[derive(Clone, Debug, Default)]
pub struct KLDivLoss {
    /// The reduction (PyTorch's default is mean over elements; `BatchMean` is the true KL).
    pub reduction: Reduction,
    /// Whether the target is given as log-probabilities.
    pub log_target: bool,
}
impl KLDivLoss {
    /// The divergence of `target` from `input`.
    pub fn forward<E: Float>(&self, input: &Var<E>, target: &Var<E>) -> Var<E> {
        F::kl_div(input, target, self.reduction, self.log_target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use kiln_autograd::gradcheck;

    fn red(j: &serde_json::Value) -> Reduction {
        match j["constructor_kwargs"]["reduction"].as_str().unwrap_or("mean") {
            "sum" => Reduction::Sum,
            "none" => Reduction::None,
            "batchmean" => Reduction::BatchMean,
            _ => Reduction::Mean,
        }
    }

    fn indices(c: &golden::Case, name: &str) -> Indices {
        let (v, s) = c.ints.get(name).unwrap_or_else(|| panic!("{name} is not an integer tensor")).clone();
        Indices::new(v.into_iter().map(|x| x as usize).collect(), &s)
    }

    /// Runs one golden loss case: `f(input, case)` builds the loss.
    fn run(case: &str, f: impl Fn(&Var<f64>, &golden::Case) -> Var<f64>) {
        let Some(c) = golden::load(&format!("losses/{case}")) else { return };
        let x = Var::param(c.t("input.input"));
        let out = f(&x, &c);
        let tol = c.tol("float64");
        golden::assert_close(&format!("{case} output"), &out.value(), &c.t("output.output"), tol);
        let up = c.tensors.get("upstream.output").cloned().unwrap_or_else(|| out.value().ones_like());
        out.backward_with(&up);
        golden::assert_close(&format!("{case} grad"), &x.grad().unwrap(), &c.t("grad_input.input"), tol);
    }

    #[test]
    fn golden_regression_losses() {
        for case in ["mse_mean", "mse_sum", "mse_none"] {
            run(case, |x, c| MSELoss { reduction: red(&c.json) }.forward(x, &Var::constant(c.t("input.target"))));
        }
        run("l1", |x, c| L1Loss { reduction: red(&c.json) }.forward(x, &Var::constant(c.t("input.target"))));
        run("smooth_l1", |x, c| {
            let beta = c.json["constructor_kwargs"]["beta"].as_f64().unwrap();
            SmoothL1Loss { reduction: red(&c.json), beta }.forward(x, &Var::constant(c.t("input.target")))
        });
        run("huber", |x, c| {
            let delta = c.json["constructor_kwargs"]["delta"].as_f64().unwrap();
            HuberLoss { reduction: red(&c.json), delta }.forward(x, &Var::constant(c.t("input.target")))
        });
    }

    #[test]
    fn golden_classification_losses() {
        for case in [
            "cross_entropy",
            "cross_entropy_3d",
            "cross_entropy_ignore_index",
            "cross_entropy_label_smoothing",
            "cross_entropy_weight",
        ] {
            run(case, |x, c| {
                let k = &c.json["constructor_kwargs"];
                let opts = CrossEntropyOptions {
                    weight: c.tensors.get("param.weight").cloned(),
                    ignore_index: k["ignore_index"].as_u64().map(|v| v as usize),
                    label_smoothing: k["label_smoothing"].as_f64().unwrap_or(0.0),
                    reduction: red(&c.json),
                };
                CrossEntropyLoss::new(opts).forward(x, &indices(c, "input.target"))
            });
        }
        run("cross_entropy_prob_targets", |x, c| CrossEntropyLoss::default().forward_probs(x, &c.t("input.target")));
        run("nll_loss", |x, c| NLLLoss::default().forward(x, &indices(c, "input.target")));
        run("bce", |x, c| BCELoss::default().forward(x, &Var::constant(c.t("input.target"))));
        run("bce_with_logits_pos_weight", |x, c| {
            BCEWithLogitsLoss { pos_weight: Some(c.t("param.pos_weight")), ..Default::default() }
                .forward(x, &Var::constant(c.t("input.target")))
        });
        for case in ["kl_div_batchmean", "kl_div_batchmean_log_target"] {
            run(case, |x, c| {
                let log_target = c.json["constructor_kwargs"]["log_target"].as_bool().unwrap_or(false);
                KLDivLoss { reduction: red(&c.json), log_target }.forward(x, &Var::constant(c.t("input.target")))
            });
        }
    }

    #[test]
    fn gradchecks() {
        let mut rng = kiln_tensor::Rng::new(4);
        let x: Tensor<f64> = Tensor::randn(&[3, 4], &mut rng);
        let y: Tensor<f64> = Tensor::randn(&[3, 4], &mut rng);
        let p: Tensor<f64> = Tensor::uniform(&[3, 4], 0.1, 0.9, &mut rng);
        let t = Indices::from_vec(vec![0, 3, 1]);
        let w = Tensor::from_vec(vec![0.5, 1.0, 2.0, 1.5], &[4]);
        let checks: Vec<(&str, Box<dyn Fn(&[Var<f64>]) -> Var<f64>>, Tensor<f64>)> = vec![
            (
                "mse",
                Box::new(|v: &[Var<f64>]| F::mse_loss(&v[0], &Var::constant(y.clone()), Reduction::Mean)),
                x.clone(),
            ),
            (
                "smooth_l1",
                Box::new(|v: &[Var<f64>]| F::smooth_l1_loss(&v[0], &Var::constant(y.clone()), 0.3, Reduction::Sum)),
                x.clone(),
            ),
            (
                "huber",
                Box::new(|v: &[Var<f64>]| F::huber_loss(&v[0], &Var::constant(y.clone()), 0.7, Reduction::Mean)),
                x.clone(),
            ),
            (
                "cross_entropy",
                Box::new(|v: &[Var<f64>]| {
                    F::cross_entropy(
                        &v[0],
                        &t,
                        &CrossEntropyOptions {
                            weight: Some(w.clone()),
                            label_smoothing: 0.2,
                            ignore_index: Some(1),
                            reduction: Reduction::Mean,
                        },
                    )
                }),
                x.clone(),
            ),
            (
                "bce",
                Box::new(|v: &[Var<f64>]| {
                    F::binary_cross_entropy(&v[0], &Var::constant(p.clone()), None, Reduction::Mean)
                }),
                p.clone(),
            ),
            (
                "bce_logits",
                Box::new(|v: &[Var<f64>]| {
                    F::binary_cross_entropy_with_logits(
                        &v[0],
                        &Var::constant(p.clone()),
                        None,
                        Some(&w),
                        Reduction::Mean,
                    )
                }),
                x.clone(),
            ),
            (
                "kl",
                Box::new(|v: &[Var<f64>]| {
                    F::kl_div(&v[0].log_softmax(1), &Var::constant(p.clone()), Reduction::BatchMean, false)
                }),
                x.clone(),
            ),
        ];
        for (name, f, inp) in checks {
            let r = gradcheck(|v| f(v), &[inp], 1e-6, 1e-7, 1e-5);
            assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
        }
    }

    #[test]
    fn bce_is_finite_at_the_edges() {
        let x = Var::constant(Tensor::<f64>::from_vec(vec![0.0, 1.0], &[2]));
        let t = Var::constant(Tensor::from_vec(vec![1.0, 0.0], &[2]));
        assert_eq!(F::binary_cross_entropy(&x, &t, None, Reduction::Mean).item(), 100.0);
        let big = Var::constant(Tensor::<f64>::from_vec(vec![1000.0, -1000.0], &[2]));
        // confidently right: zero loss; confidently wrong: |x| each, no overflow
        assert_eq!(F::binary_cross_entropy_with_logits(&big, &t, None, None, Reduction::Sum).item(), 0.0);
        let wrong = Var::constant(Tensor::from_vec(vec![0.0, 1.0], &[2]));
        assert_eq!(F::binary_cross_entropy_with_logits(&big, &wrong, None, None, Reduction::Sum).item(), 2000.0);
    }

    #[test]
    fn penalties() {
        let a = Var::param(Tensor::<f64>::from_vec(vec![1.0, -2.0], &[2]));
        let b = Var::param(Tensor::<f64>::from_vec(vec![3.0], &[1]));
        assert_eq!(F::l1_penalty(&[a.clone(), b.clone()]).item(), 6.0);
        let l2 = F::l2_penalty(&[a.clone(), b.clone()]);
        assert_eq!(l2.item(), 14.0);
        l2.backward();
        assert_eq!(a.grad().unwrap().to_vec(), vec![2.0, -4.0]);
    }

    #[test]
    #[should_panic(expected = "mse_loss: input [2] and target [3] must have the same shape")]
    fn shape_mismatch_panics() {
        let _ = F::mse_loss(
            &Var::constant(Tensor::<f32>::zeros(&[2])),
            &Var::constant(Tensor::zeros(&[3])),
            Reduction::Mean,
        );
    }
}
