//! The functional API: losses and regularisation penalties as plain functions of `Var`s
//! (`torch.nn.functional`). The loss modules in [`crate::loss`] call these.
//!
//! Every loss is a composition of autograd's primitive ops, so its gradient (and gradient of
//! gradient) comes for free.

use kiln_autograd::Var;
use kiln_tensor::{Float, Indices, Labels, Tensor};

use crate::NnError;

pub use crate::layers::upsample::{interpolate, InterpolateMode, InterpolateOptions, Resize};

/// How a loss reduces its per-element values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean (PyTorch's default; weighted losses divide by the total weight).
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// No reduction: one value per element (or per sample for class losses).
    None,
    /// The sum divided by the batch size (KL divergence's mathematically correct mean).
    BatchMean,
}

fn reduce<E: Float>(l: Var<E>, r: Reduction, op: &str) -> Var<E> {
    match r {
        Reduction::Mean => l.mean(&[], false),
        Reduction::Sum => l.sum_all(),
        Reduction::None => l,
        Reduction::BatchMean => panic!("{op}: reduction BatchMean is only defined for kl_div"),
    }
}

fn check_same_shape<E: Float>(op: &str, a: &Var<E>, b: &Var<E>) {
    assert!(
        a.shape() == b.shape(),
        "{op}: input {:?} and target {:?} must have the same shape",
        a.shape().as_slice(),
        b.shape().as_slice()
    );
}

/// Mean squared error `(x - y)^2`, like `F.mse_loss`.
///
/// ```
/// use kiln_nn::functional::{mse_loss, Reduction};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::from_vec(vec![1.0f32, 2.0], &[2]));
/// let y = Var::constant(Tensor::from_vec(vec![0.0f32, 4.0], &[2]));
/// assert_eq!(mse_loss(&x, &y, Reduction::Mean).item(), 2.5);
/// ```
pub fn mse_loss<E: Float>(input: &Var<E>, target: &Var<E>, r: Reduction) -> Var<E> {
    check_same_shape("mse_loss", input, target);
    let d = input.sub(target);
    reduce(d.mul(&d), r, "mse_loss")
}

/// Mean absolute error `|x - y|`, like `F.l1_loss`.
pub fn l1_loss<E: Float>(input: &Var<E>, target: &Var<E>, r: Reduction) -> Var<E> {
    check_same_shape("l1_loss", input, target);
    reduce(input.sub(target).abs(), r, "l1_loss")
}

/// `0.5 d^2 / beta` where `|d| < beta`, `|d| - beta/2` elsewhere, like `F.smooth_l1_loss`
/// (default beta 1; beta 0 is the L1 loss).
pub fn smooth_l1_loss<E: Float>(input: &Var<E>, target: &Var<E>, beta: f64, r: Reduction) -> Var<E> {
    check_same_shape("smooth_l1_loss", input, target);
    let d = input.sub(target);
    if beta == 0.0 {
        return reduce(d.abs(), r, "smooth_l1_loss");
    }
    let b = E::from_f64(beta);
    let inside = Var::constant(d.with_value(|v| v.abs().lt_scalar(b)));
    let quad = d.mul(&d).mul_scalar(E::from_f64(0.5 / beta));
    let lin = d.abs().sub_scalar(E::from_f64(0.5 * beta));
    reduce(quad.mul(&inside).add(&lin.mul(&inside.rsub_scalar(E::one()))), r, "smooth_l1_loss")
}

/// `0.5 d^2` where `|d| <= delta`, `delta (|d| - delta/2)` elsewhere, like `F.huber_loss`
/// (default delta 1).
pub fn huber_loss<E: Float>(input: &Var<E>, target: &Var<E>, delta: f64, r: Reduction) -> Var<E> {
    check_same_shape("huber_loss", input, target);
    let d = input.sub(target);
    let de = E::from_f64(delta);
    let inside = Var::constant(d.with_value(|v| v.abs().le_scalar(de)));
    let quad = d.mul(&d).mul_scalar(E::from_f64(0.5));
    let lin = d.abs().sub_scalar(E::from_f64(0.5 * delta)).mul_scalar(de);
    reduce(quad.mul(&inside).add(&lin.mul(&inside.rsub_scalar(E::one()))), r, "huber_loss")
}

/// Options of [`cross_entropy`] and [`nll_loss`], with PyTorch's defaults.
#[derive(Clone, Debug)]
pub struct CrossEntropyOptions<E: Float = f32> {
    /// A weight per class (`[C]`), or `None` for equal weights.
    pub weight: Option<Tensor<E>>,
    /// A target value to skip (no loss, no gradient, not counted in the mean); PyTorch's
    /// default `-100`, the padding label of sequence-labelling recipes (write targets as
    /// [`Labels`] to use a negative value). Unused with probability targets.
    pub ignore_index: i64,
    /// Mix the one-hot target with the uniform distribution: `(1 - eps) onehot + eps / C`.
    pub label_smoothing: f64,
    /// The reduction.
    pub reduction: Reduction,
}

impl<E: Float> Default for CrossEntropyOptions<E> {
    fn default() -> Self {
        CrossEntropyOptions { weight: None, ignore_index: -100, label_smoothing: 0.0, reduction: Reduction::Mean }
    }
}

/// Class targets a class loss reads: [`Indices`] (non-negative) or [`Labels`] (signed, as
/// PyTorch's int64 targets, so `-100` padding can be written).
pub trait ClassTargets {
    /// The shape (`[N, *]` for an input `[N, C, *]`).
    fn shape(&self) -> &[usize];
    /// The class at row-major position `i`.
    fn class(&self, i: usize) -> i64;
}

impl ClassTargets for Indices {
    fn shape(&self) -> &[usize] {
        Indices::shape(self)
    }
    fn class(&self, i: usize) -> i64 {
        i64::try_from(self.as_slice()[i]).unwrap_or(i64::MAX)
    }
}

impl ClassTargets for Labels {
    fn shape(&self) -> &[usize] {
        Labels::shape(self)
    }
    fn class(&self, i: usize) -> i64 {
        self.data[i]
    }
}

/// What a class loss needs from its targets: the per-position weight mask of the input's
/// shape (`w[target]` at the target class, 0 at ignored positions), the per-position weights
/// and the per-position 0/1 "not ignored" flags.
struct ClassMask<E: Float> {
    mask: Tensor<E>,
    per: Vec<E>,
    keep: Vec<E>,
}

/// Checks `target` against the input `shape` (`[N, C, *]`) and builds the [`ClassMask`]:
/// targets of the wrong shape, or outside `[0, C)` and not `ignore`, are errors naming `op`.
/// A missing class dim or a weight of the wrong size is a programming error and panics.
fn class_mask<E: Float, T: ClassTargets + ?Sized>(
    shape: &[usize],
    target: &T,
    weight: Option<&Tensor<E>>,
    ignore: i64,
    op: &str,
) -> Result<ClassMask<E>, NnError> {
    assert!(shape.len() >= 2, "{op}: input needs a class dim: got {shape:?}");
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let mut want: Vec<usize> = vec![n];
    want.extend_from_slice(&shape[2..]);
    if target.shape() != want.as_slice() {
        return Err(NnError::TargetShape {
            loss: op.to_string(),
            input: shape.to_vec(),
            expected: want,
            found: target.shape().to_vec(),
        });
    }
    if let Some(w) = weight {
        assert!(w.shape() == [c], "{op}: weight {:?} should have one entry per class ({c})", w.shape());
    }
    let wv = weight.map(|w| w.to_vec());
    let mut mask = vec![E::zero(); n * c * inner];
    let mut per = vec![E::zero(); n * inner];
    let mut keep = vec![E::zero(); n * inner];
    for i in 0..n {
        for j in 0..inner {
            let pos = i * inner + j;
            let t = target.class(pos);
            if t == ignore {
                continue;
            }
            let Some(t) = usize::try_from(t).ok().filter(|&t| t < c) else {
                let mut at = vec![i];
                let mut rest = j;
                for &d in shape[2..].iter().rev() {
                    at.insert(1, rest % d);
                    rest /= d;
                }
                return Err(NnError::TargetOutOfRange {
                    loss: op.to_string(),
                    target: t,
                    at,
                    classes: c,
                    ignore_index: ignore,
                });
            };
            let w = wv.as_ref().map_or(E::one(), |w| w[t]);
            mask[(i * c + t) * inner + j] = w;
            per[pos] = w;
            keep[pos] = E::one();
        }
    }
    Ok(ClassMask { mask: Tensor::from_vec(mask, shape), per, keep })
}

/// The negative log-likelihood given a checked [`ClassMask`].
fn nll_from_mask<E: Float>(log_probs: &Var<E>, m: &ClassMask<E>, r: Reduction, op: &str) -> Var<E> {
    let picked = log_probs.mul(&Var::constant(m.mask.clone())).sum(&[1], false).neg(); // [N, *]
    match r {
        Reduction::None => picked,
        Reduction::Sum => picked.sum_all(),
        Reduction::Mean => {
            let total: E = m.per.iter().copied().sum();
            picked.sum_all().div_scalar(total)
        }
        Reduction::BatchMean => panic!("{op}: reduction BatchMean is only defined for kl_div"),
    }
}

/// Negative log-likelihood of class indices given log-probabilities `[N, C, *]`, like
/// `F.nll_loss` (weights, ignore_index and reduction from `opts`; label smoothing unused).
///
/// **Panics** where [`try_nll_loss`] returns an error, with the same message.
pub fn nll_loss<E: Float, T: ClassTargets + ?Sized>(
    log_probs: &Var<E>,
    target: &T,
    opts: &CrossEntropyOptions<E>,
) -> Var<E> {
    try_nll_loss(log_probs, target, opts).unwrap_or_else(|e| panic!("{e}"))
}

/// [`nll_loss`], returning bad targets as an error: a data pipeline can catch a label file's
/// mistakes.
///
/// # Errors
/// [`NnError::TargetShape`] when the targets are not `[N, *]` for an input `[N, C, *]`;
/// [`NnError::TargetOutOfRange`] for a target outside `[0, C)` that is not `ignore_index`.
/// Both name `nll_loss`.
pub fn try_nll_loss<E: Float, T: ClassTargets + ?Sized>(
    log_probs: &Var<E>,
    target: &T,
    opts: &CrossEntropyOptions<E>,
) -> Result<Var<E>, NnError> {
    let m = class_mask(&log_probs.shape(), target, opts.weight.as_ref(), opts.ignore_index, "nll_loss")?;
    Ok(nll_from_mask(log_probs, &m, opts.reduction, "nll_loss"))
}

/// Cross-entropy of raw scores `[N, C, *]` against class indices, like `F.cross_entropy`:
/// `log_softmax` over dim 1 then [`nll_loss`], with PyTorch's label smoothing
/// (`(1 - eps) nll + eps/C * smooth`, the smooth term weighted and normalised like the nll).
/// Targets equal to `ignore_index` (PyTorch's `-100` by default) are skipped.
///
/// **Panics** where [`try_cross_entropy`] returns an error, with the same message.
///
/// ```
/// use kiln_nn::functional::{cross_entropy, CrossEntropyOptions};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Indices, Labels, Tensor};
/// let logits = Var::param(Tensor::<f64>::zeros(&[2, 4]));
/// let loss = cross_entropy(&logits, &Indices::from_vec(vec![1, 3]), &CrossEntropyOptions::default());
/// assert!((loss.item() - 4f64.ln()).abs() < 1e-12);
/// // PyTorch's padding label: the second row is ignored
/// let padded = cross_entropy(&logits, &Labels::from_vec(vec![1, -100]), &CrossEntropyOptions::default());
/// assert!((padded.item() - 4f64.ln()).abs() < 1e-12);
/// ```
pub fn cross_entropy<E: Float, T: ClassTargets + ?Sized>(
    input: &Var<E>,
    target: &T,
    opts: &CrossEntropyOptions<E>,
) -> Var<E> {
    try_cross_entropy(input, target, opts).unwrap_or_else(|e| panic!("{e}"))
}

/// [`cross_entropy`], returning bad targets as an error: a data pipeline can catch a label
/// file's mistakes.
///
/// # Errors
/// [`NnError::TargetShape`] when the targets are not `[N, *]` for an input `[N, C, *]`;
/// [`NnError::TargetOutOfRange`] for a target outside `[0, C)` that is not `ignore_index`.
/// Both name `cross_entropy`.
///
/// ```
/// use kiln_nn::functional::{try_cross_entropy, CrossEntropyOptions};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Labels, Tensor};
/// let logits = Var::param(Tensor::<f32>::zeros(&[2, 4]));
/// let err = try_cross_entropy(&logits, &Labels::from_vec(vec![1, 4]), &CrossEntropyOptions::default());
/// assert_eq!(
///     err.unwrap_err().to_string(),
///     "cross_entropy: target 4 at [1] is out of range for 4 classes (ignore_index -100)"
/// );
/// ```
pub fn try_cross_entropy<E: Float, T: ClassTargets + ?Sized>(
    input: &Var<E>,
    target: &T,
    opts: &CrossEntropyOptions<E>,
) -> Result<Var<E>, NnError> {
    const OP: &str = "cross_entropy";
    let shape = input.shape();
    let m = class_mask(&shape, target, opts.weight.as_ref(), opts.ignore_index, OP)?;
    let eps = opts.label_smoothing;
    assert!((0.0..=1.0).contains(&eps), "{OP}: label_smoothing must be in [0, 1], got {eps}");
    let logp = input.log_softmax(1);
    let nll = nll_from_mask(&logp, &m, opts.reduction, OP);
    if eps == 0.0 {
        return Ok(nll);
    }
    let c = shape[1];
    // smooth_i = -sum_c w_c logp_ic, zero at ignored positions
    let mut wshape = vec![1usize; shape.len()];
    wshape[1] = c;
    let w = opts.weight.clone().map(|w| w.reshape(&wshape)).unwrap_or_else(|| Tensor::ones(&wshape));
    let mut kshape = shape.to_vec();
    kshape[1] = 1;
    let keep_t = Tensor::from_vec(m.keep.clone(), &kshape);
    let smooth = logp.mul(&Var::constant(w.mul(&keep_t))).sum(&[1], false).neg();
    let smooth = match opts.reduction {
        Reduction::None => smooth,
        Reduction::Sum => smooth.sum_all(),
        Reduction::Mean => {
            let denom: E =
                if opts.weight.is_some() { m.per.iter().copied().sum() } else { m.keep.iter().copied().sum() };
            smooth.sum_all().div_scalar(denom)
        }
        Reduction::BatchMean => panic!("{OP}: reduction BatchMean is only defined for kl_div"),
    };
    Ok(nll.mul_scalar(E::from_f64(1.0 - eps)).add(&smooth.mul_scalar(E::from_f64(eps / c as f64))))
}

/// Cross-entropy of raw scores `[N, C, *]` against class probabilities of the same shape,
/// like `F.cross_entropy` with probability targets (weights per class, label smoothing;
/// the mean divides by the number of samples).
pub fn cross_entropy_probs<E: Float>(input: &Var<E>, target: &Tensor<E>, opts: &CrossEntropyOptions<E>) -> Var<E> {
    let shape = input.shape();
    assert!(
        target.shape() == shape.as_slice(),
        "cross_entropy: input {:?} and probability target {:?} differ",
        shape.as_slice(),
        target.shape()
    );
    let c = shape[1];
    let logp = input.log_softmax(1);
    let eps = E::from_f64(opts.label_smoothing);
    let t = target.mul_scalar(E::one() - eps).add_scalar(eps / E::from_usize(c));
    let mut wshape = vec![1usize; shape.len()];
    wshape[1] = c;
    let t = match &opts.weight {
        Some(w) => t.mul(&w.reshape(&wshape)),
        None => t,
    };
    let per = logp.mul(&Var::constant(t)).sum(&[1], false).neg();
    match opts.reduction {
        Reduction::None => per,
        Reduction::Sum => per.sum_all(),
        Reduction::Mean => {
            let n = per.numel();
            per.sum_all().div_scalar(E::from_usize(n))
        }
        Reduction::BatchMean => panic!("cross_entropy: reduction BatchMean is only defined for kl_div"),
    }
}

/// Binary cross-entropy of probabilities, like `F.binary_cross_entropy`: logs are clamped
/// at -100 as PyTorch does, so a probability of 0 or 1 gives a finite loss.
pub fn binary_cross_entropy<E: Float>(
    input: &Var<E>,
    target: &Var<E>,
    weight: Option<&Tensor<E>>,
    r: Reduction,
) -> Var<E> {
    check_same_shape("binary_cross_entropy", input, target);
    let log_p = input.log().clamp(Some(-100.0), None);
    let log_q = input.rsub_scalar(E::one()).log().clamp(Some(-100.0), None);
    let l = target.mul(&log_p).add(&target.rsub_scalar(E::one()).mul(&log_q)).neg();
    let l = match weight {
        Some(w) => l.mul(&Var::constant(w.clone())),
        None => l,
    };
    reduce(l, r, "binary_cross_entropy")
}

/// Binary cross-entropy of raw logits, computed stably, like
/// `F.binary_cross_entropy_with_logits`: `(1 - t) x + (1 + (pw - 1) t) (log(1 + e^-|x|) + max(-x, 0))`.
/// `pos_weight` weights the positive term per class (broadcast over the last dim).
pub fn binary_cross_entropy_with_logits<E: Float>(
    input: &Var<E>,
    target: &Var<E>,
    weight: Option<&Tensor<E>>,
    pos_weight: Option<&Tensor<E>>,
    r: Reduction,
) -> Var<E> {
    check_same_shape("binary_cross_entropy_with_logits", input, target);
    let softplus_neg = input.abs().neg().exp().log1p().add(&input.neg().relu()); // log(1 + e^-x)
    let one_minus_t = target.rsub_scalar(E::one());
    let l = match pos_weight {
        Some(pw) => {
            let lw = target.mul(&Var::constant(pw.add_scalar(-E::one()))).add_scalar(E::one());
            one_minus_t.mul(input).add(&lw.mul(&softplus_neg))
        }
        None => one_minus_t.mul(input).add(&softplus_neg),
    };
    let l = match weight {
        Some(w) => l.mul(&Var::constant(w.clone())),
        None => l,
    };
    reduce(l, r, "binary_cross_entropy_with_logits")
}

/// Kullback-Leibler divergence with log-probabilities as input, like `F.kl_div`:
/// `t (ln t - x)` (0 where t = 0), or `e^t (t - x)` when `log_target`.
/// PyTorch's `reduction='mean'` averages over elements; `BatchMean` divides by the batch size.
pub fn kl_div<E: Float>(input: &Var<E>, target: &Var<E>, r: Reduction, log_target: bool) -> Var<E> {
    check_same_shape("kl_div", input, target);
    let l = if log_target {
        target.exp().mul(&target.sub(input))
    } else {
        // xlogy(t, t): 0 where t == 0
        let pos = Var::constant(target.with_value(|t| t.gt_scalar(E::zero())));
        let safe_t = target.add(&pos.rsub_scalar(E::one())); // 1 where t == 0, so ln = 0
        target.mul(&safe_t.log()).mul(&pos).sub(&target.mul(input))
    };
    match r {
        Reduction::BatchMean => {
            let n = input.shape().first().copied().unwrap_or(1);
            l.sum_all().div_scalar(E::from_usize(n))
        }
        other => reduce(l, other, "kl_div"),
    }
}

/// `sum |p|` over all parameters: add `lambda * l1_penalty(&params)` to a loss for L1
/// regularisation (sparse weights).
///
/// **Panics** if `params` is empty.
pub fn l1_penalty<E: Float>(params: &[Var<E>]) -> Var<E> {
    assert!(!params.is_empty(), "l1_penalty: no parameters");
    params.iter().map(|p| p.abs().sum_all()).reduce(|a, b| a.add(&b)).expect("non-empty")
}

/// `sum p^2` over all parameters: add `lambda * l2_penalty(&params)` to a loss for L2
/// regularisation (weight decay by another name: SGD's `weight_decay = 2 lambda`).
///
/// **Panics** if `params` is empty.
pub fn l2_penalty<E: Float>(params: &[Var<E>]) -> Var<E> {
    assert!(!params.is_empty(), "l2_penalty: no parameters");
    params.iter().map(|p| p.mul(p).sum_all()).reduce(|a, b| a.add(&b)).expect("non-empty")
}
