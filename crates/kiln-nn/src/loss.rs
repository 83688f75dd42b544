//! Loss modules (`nn.MSELoss`, `nn.CrossEntropyLoss`, ...): configuration holders that call
//! [`crate::functional`].

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};
#[cfg(doc)]
use kiln_tensor::{Indices, Labels};

use crate::functional::{self as F, ClassTargets, CrossEntropyOptions, Reduction};
use crate::NnError;

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
/// Class targets are [`Indices`] or, to write PyTorch's padding label `-100` (the default
/// `ignore_index`), signed [`Labels`]. [`try_forward`](Self::try_forward) returns bad targets
/// (out of range, wrong batch size) as an [`NnError`] instead of panicking.
///
/// ```
/// use kiln_nn::CrossEntropyLoss;
/// use kiln_autograd::Var;
/// use kiln_tensor::{Indices, Labels, Tensor};
/// let loss_fn = CrossEntropyLoss::default();
/// let logits = Var::param(Tensor::<f32>::zeros(&[3, 5]));
/// let loss = loss_fn.forward(&logits, &Indices::from_vec(vec![0, 4, 2]));
/// loss.backward();
/// assert!((loss.item() - 5f32.ln()).abs() < 1e-6);
/// // a padded position (-100) is ignored, as in PyTorch
/// let padded = loss_fn.forward(&logits, &Labels::from_vec(vec![0, -100, 2]));
/// assert!((padded.item() - 5f32.ln()).abs() < 1e-6);
/// // a bad label from a file is an error a pipeline can catch
/// let err = loss_fn.try_forward(&logits, &Labels::from_vec(vec![0, 7, 2])).unwrap_err();
/// assert_eq!(err.to_string(), "cross_entropy: target 7 at [1] is out of range for 5 classes (ignore_index -100)");
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
    ///
    /// **Panics** where [`try_forward`](Self::try_forward) returns an error, with its message
    /// (`cross_entropy: target 7 at [1] is out of range for 5 classes (ignore_index -100)`).
    pub fn forward<T: ClassTargets + ?Sized>(&self, input: &Var<E>, target: &T) -> Var<E> {
        F::cross_entropy(input, target, &self.options)
    }
    /// The loss against class indices, or an error for targets that do not fit the input.
    ///
    /// # Errors
    /// [`NnError::TargetShape`] when the targets are not `[N, *]` for an input `[N, C, *]`,
    /// [`NnError::TargetOutOfRange`] for a target outside `[0, C)` other than `ignore_index`.
    pub fn try_forward<T: ClassTargets + ?Sized>(&self, input: &Var<E>, target: &T) -> Result<Var<E>, NnError> {
        F::try_cross_entropy(input, target, &self.options)
    }
    /// The loss against class probabilities (same shape as `input`).
    pub fn forward_probs(&self, input: &Var<E>, target: &Tensor<E>) -> Var<E> {
        F::cross_entropy_probs(input, target, &self.options)
    }
}

/// `nn.NLLLoss`: log-probabilities `[N, C, *]` against class indices ([`Indices`], or
/// [`Labels`] for PyTorch's `-100` padding).
#[derive(Clone, Debug, Default)]
pub struct NLLLoss<E: Float = f32> {
    /// Weights, ignore_index, reduction (label smoothing is not used).
    pub options: CrossEntropyOptions<E>,
}
impl<E: Float> NLLLoss<E> {
    /// With the given options.
    pub fn new(options: CrossEntropyOptions<E>) -> Self {
        NLLLoss { options }
    }
    /// The loss against class indices.
    ///
    /// **Panics** where [`try_forward`](Self::try_forward) returns an error, with its message.
    pub fn forward<T: ClassTargets + ?Sized>(&self, log_probs: &Var<E>, target: &T) -> Var<E> {
        F::nll_loss(log_probs, target, &self.options)
    }
    /// The loss against class indices, or an error for targets that do not fit the input.
    ///
    /// # Errors
    /// [`NnError::TargetShape`] when the targets are not `[N, *]` for an input `[N, C, *]`,
    /// [`NnError::TargetOutOfRange`] for a target outside `[0, C)` other than `ignore_index`.
    pub fn try_forward<T: ClassTargets + ?Sized>(&self, log_probs: &Var<E>, target: &T) -> Result<Var<E>, NnError> {
        F::try_nll_loss(log_probs, target, &self.options)
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
    use kiln_tensor::{Indices, Labels};

    fn red(c: &golden::Case) -> Reduction {
        match c.str_or("constructor_kwargs/reduction", "mean") {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            "none" => Reduction::None,
            "batchmean" => Reduction::BatchMean,
            other => panic!("{}: unknown reduction {other}", c.json_path.display()),
        }
    }

    /// An int64 golden tensor as signed labels, exactly as PyTorch was given them.
    fn labels(c: &golden::Case, name: &str) -> Labels {
        let (v, s) = c.int(name);
        Labels::new(v.to_vec(), s)
    }

    /// The case's class-loss options, every one read from its constructor arguments (PyTorch's
    /// defaults where absent).
    fn ce_options(c: &golden::Case) -> CrossEntropyOptions<f64> {
        CrossEntropyOptions {
            weight: c.get("param.weight"),
            ignore_index: c
                .opt("constructor_kwargs/ignore_index")
                .map_or(-100, |_| c.i64("constructor_kwargs/ignore_index")),
            label_smoothing: c.f64_or("constructor_kwargs/label_smoothing", 0.0),
            reduction: red(c),
        }
    }

    /// Checks `f(input)` against the case's output and `grad_input.input`.
    fn check(c: &golden::Case, what: &str, f: impl Fn(&Var<f64>) -> Var<f64>) {
        let x = Var::param(c.t("input.input"));
        let out = f(&x);
        let tol = c.tol("float64");
        golden::assert_close(&format!("{} {what} output", c.name), &out.value(), &c.t("output.output"), tol);
        let up = c.get("upstream.output").unwrap_or_else(|| out.value().ones_like());
        out.backward_with(&up);
        golden::assert_close(&format!("{} {what} grad", c.name), &x.grad().unwrap(), &c.t("grad_input.input"), tol);
    }

    /// Runs one golden loss case: `f(input, case)` builds the loss.
    fn run(case: &str, f: impl Fn(&Var<f64>, &golden::Case) -> Var<f64>) {
        let Some(c) = golden::load(&format!("losses/{case}")) else { return };
        check(&c, "", |x| f(x, &c));
    }

    #[test]
    fn golden_regression_losses() {
        for case in ["mse_mean", "mse_sum", "mse_none"] {
            run(case, |x, c| MSELoss { reduction: red(c) }.forward(x, &Var::constant(c.t("input.target"))));
        }
        run("l1", |x, c| L1Loss { reduction: red(c) }.forward(x, &Var::constant(c.t("input.target"))));
        run("smooth_l1", |x, c| {
            let beta = c.f64_or("constructor_kwargs/beta", 1.0);
            SmoothL1Loss { reduction: red(c), beta }.forward(x, &Var::constant(c.t("input.target")))
        });
        run("huber", |x, c| {
            let delta = c.f64_or("constructor_kwargs/delta", 1.0);
            HuberLoss { reduction: red(c), delta }.forward(x, &Var::constant(c.t("input.target")))
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
            run(case, |x, c| CrossEntropyLoss::new(ce_options(c)).forward(x, &labels(c, "input.target")));
        }
        run("cross_entropy_prob_targets", |x, c| {
            CrossEntropyLoss::new(ce_options(c)).forward_probs(x, &c.t("input.target"))
        });
        run("nll_loss", |x, c| NLLLoss::new(ce_options(c)).forward(x, &labels(c, "input.target")));
        run("bce", |x, c| {
            BCELoss { weight: c.get("param.weight"), reduction: red(c) }.forward(x, &Var::constant(c.t("input.target")))
        });
        run("bce_with_logits_pos_weight", |x, c| {
            BCEWithLogitsLoss {
                weight: c.get("param.weight"),
                pos_weight: c.get("param.pos_weight"),
                reduction: red(c),
            }
            .forward(x, &Var::constant(c.t("input.target")))
        });
        for case in ["kl_div_batchmean", "kl_div_batchmean_log_target"] {
            run(case, |x, c| {
                let log_target = c.bool_or("constructor_kwargs/log_target", false);
                KLDivLoss { reduction: red(c), log_target }.forward(x, &Var::constant(c.t("input.target")))
            });
        }
    }

    /// The golden ignore_index case, whichever padding value it uses (the public set ignores
    /// class 2, the holdout set PyTorch's default -100), also gives PyTorch's numbers with its
    /// padded positions written as -100 under the default options, and as a positive padding
    /// value beyond the classes: the loss sees only which positions are padding.
    #[test]
    fn golden_ignore_index_as_minus_100_and_as_a_positive_value() {
        let Some(c) = golden::load("losses/cross_entropy_ignore_index") else { return };
        let opts = ce_options(&c);
        let target = labels(&c, "input.target");
        assert!(target.data.contains(&opts.ignore_index), "{}: no position is padding", c.name);
        let classes = c.t("input.input").shape()[1] as i64;
        for pad in [-100, classes + 3] {
            let data = target.data.iter().map(|&t| if t == opts.ignore_index { pad } else { t }).collect();
            let repadded = Labels::new(data, target.shape());
            let o = CrossEntropyOptions { ignore_index: pad, ..opts.clone() };
            check(&c, &format!("padded with {pad}"), |x| CrossEntropyLoss::new(o.clone()).forward(x, &repadded));
            if pad == -100 {
                let defaults = CrossEntropyOptions { weight: opts.weight.clone(), ..CrossEntropyOptions::default() };
                check(&c, "default options", |x| CrossEntropyLoss::new(defaults.clone()).forward(x, &repadded));
            }
        }
        // NLLLoss on log_softmax of the same input ignores the same positions
        check(&c, "nll_loss", |x| NLLLoss::new(opts.clone()).forward(&x.log_softmax(1), &target));
    }

    /// Ignoring a real class (a positive ignore_index) equals the loss over the other rows.
    #[test]
    fn ignoring_a_class_equals_dropping_its_rows() {
        let mut rng = kiln_tensor::Rng::new(8);
        let x: Tensor<f64> = Tensor::randn(&[6, 4], &mut rng);
        let t = Indices::from_vec(vec![1, 3, 1, 0, 2, 1]);
        let keep = [1usize, 3, 4];
        let kept = Tensor::from_vec(keep.iter().flat_map(|&i| x.select(0, i).to_vec()).collect(), &[3, 4]);
        let kept_t = Indices::from_vec(keep.iter().map(|&i| t.as_slice()[i]).collect());
        let w = Tensor::from_vec(vec![0.5, 2.0, 1.0, 3.0], &[4]);
        for weight in [None, Some(w)] {
            for label_smoothing in [0.0, 0.3] {
                let o = CrossEntropyOptions { weight: weight.clone(), label_smoothing, ..Default::default() };
                let ignoring = CrossEntropyLoss::new(CrossEntropyOptions { ignore_index: 1, ..o.clone() });
                let a = ignoring.forward(&Var::constant(x.clone()), &t).item();
                let b = CrossEntropyLoss::new(o).forward(&Var::constant(kept.clone()), &kept_t).item();
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_targets_name_the_loss_the_user_called() {
        let logits = Var::constant(Tensor::<f32>::zeros(&[3, 5]));
        let ce = CrossEntropyLoss::default();
        let nll = NLLLoss::default();
        let msg = |r: Result<Var<f32>, NnError>| r.unwrap_err().to_string();
        let out_of_range = Labels::from_vec(vec![0, 7, 2]);
        assert_eq!(
            msg(ce.try_forward(&logits, &out_of_range)),
            "cross_entropy: target 7 at [1] is out of range for 5 classes (ignore_index -100)"
        );
        assert_eq!(
            msg(nll.try_forward(&logits, &out_of_range)),
            "nll_loss: target 7 at [1] is out of range for 5 classes (ignore_index -100)"
        );
        assert_eq!(
            msg(ce.try_forward(&logits, &Indices::from_vec(vec![0, 1, 5]))),
            "cross_entropy: target 5 at [2] is out of range for 5 classes (ignore_index -100)"
        );
        // a negative label that is not the ignore_index
        assert_eq!(
            msg(ce.try_forward(&logits, &Labels::from_vec(vec![-1, 0, 0]))),
            "cross_entropy: target -1 at [0] is out of range for 5 classes (ignore_index -100)"
        );
        // batch-size mismatch
        assert_eq!(
            ce.try_forward(&logits, &Indices::from_vec(vec![0, 1, 2, 3])).unwrap_err(),
            NnError::TargetShape { loss: "cross_entropy".into(), input: vec![3, 5], expected: vec![3], found: vec![4] }
        );
        assert_eq!(
            msg(nll.try_forward(&logits, &Indices::from_vec(vec![0, 1]))),
            "nll_loss: input [3, 5] needs targets of shape [3], got [2]"
        );
        // [N, C, L]: the position is [n, l]; with label smoothing and weights the same checks
        let seq = Var::constant(Tensor::<f32>::zeros(&[2, 3, 4]));
        let smoothing = CrossEntropyLoss::new(CrossEntropyOptions {
            label_smoothing: 0.1,
            weight: Some(Tensor::ones(&[3])),
            ..Default::default()
        });
        let t = Labels::new(vec![0, 1, 2, -100, 2, 1, 3, 0], &[2, 4]);
        assert_eq!(
            smoothing.try_forward(&seq, &t).unwrap_err(),
            NnError::TargetOutOfRange {
                loss: "cross_entropy".into(),
                target: 3,
                at: vec![1, 2],
                classes: 3,
                ignore_index: -100
            }
        );
        assert!(smoothing.try_forward(&seq, &Labels::new(vec![0, 1, 2, -100, 2, 1, 1, 0], &[2, 4])).is_ok());
    }

    #[test]
    #[should_panic(expected = "cross_entropy: target 7 at [1] is out of range for 5 classes (ignore_index -100)")]
    fn cross_entropy_loss_panics_naming_cross_entropy() {
        let _ = CrossEntropyLoss::<f32>::default()
            .forward(&Var::constant(Tensor::zeros(&[3, 5])), &Indices::from_vec(vec![0, 7, 2]));
    }

    #[test]
    #[should_panic(expected = "cross_entropy: input [3, 5] needs targets of shape [3], got [2]")]
    fn cross_entropy_batch_mismatch_panics_naming_cross_entropy() {
        let _ = CrossEntropyLoss::<f32>::default()
            .forward(&Var::constant(Tensor::zeros(&[3, 5])), &Indices::from_vec(vec![0, 1]));
    }

    #[test]
    #[should_panic(expected = "nll_loss: target 9 at [0] is out of range for 5 classes (ignore_index 2)")]
    fn nll_loss_panics_naming_nll_loss() {
        let o = CrossEntropyOptions { ignore_index: 2, ..Default::default() };
        let _ = NLLLoss::<f32>::new(o).forward(&Var::constant(Tensor::zeros(&[1, 5])), &Labels::from_vec(vec![9]));
    }

    #[test]
    fn minus_100_is_ignored_by_default() {
        // every padded row contributes nothing: neither loss, nor gradient, nor count
        let mut rng = kiln_tensor::Rng::new(2);
        let x = Var::param(Tensor::<f64>::randn(&[4, 3], &mut rng));
        let l = CrossEntropyLoss::default().forward(&x, &Labels::from_vec(vec![2, -100, 0, -100]));
        l.backward();
        let g = x.grad().unwrap();
        assert_eq!(g.select(0, 1).to_vec(), vec![0.0; 3]);
        assert_eq!(g.select(0, 3).to_vec(), vec![0.0; 3]);
        let sub = Var::constant(Tensor::from_vec(
            [x.value().select(0, 0).to_vec(), x.value().select(0, 2).to_vec()].concat(),
            &[2, 3],
        ));
        let want = CrossEntropyLoss::default().forward(&sub, &Indices::from_vec(vec![2, 0])).item();
        assert!((l.item() - want).abs() < 1e-12);
    }

    #[test]
    #[allow(clippy::type_complexity)]
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
                            ignore_index: 1,
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
