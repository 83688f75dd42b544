//! Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
//! Network", 2015): [`distillation_loss`] and its module form [`DistillationLoss`].
//!
//! The loss is a composition of [`kl_div`](crate::functional::kl_div), `log_softmax`,
//! `softmax` and [`cross_entropy`](crate::functional::cross_entropy), so its gradient comes for
//! free.

use kiln_autograd::Var;
use kiln_tensor::{Float, Indices};

use crate::functional::{cross_entropy, kl_div, CrossEntropyOptions, Reduction};

/// **Panics** unless `temperature` is finite and positive and `alpha` is in `[0, 1]`.
fn check_hyperparameters(op: &str, temperature: f64, alpha: f64) {
    assert!(
        temperature.is_finite() && temperature > 0.0,
        "{op}: temperature must be finite and > 0, got {temperature}"
    );
    assert!((0.0..=1.0).contains(&alpha), "{op}: alpha must be in [0, 1], got {alpha}");
}

/// The knowledge-distillation loss of a student's raw scores `[N, C]` against a teacher's and
/// the class indices `[N]`:
///
/// `alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * cross_entropy(s, targets)`
///
/// The KL term is PyTorch's `F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1),
/// reduction="batchmean")`; the factor `T^2` keeps its gradient on the scale of the hard-label
/// term's as the temperature changes (Hinton et al., section 2). The cross-entropy is
/// mean-reduced, with PyTorch's defaults. The teacher's scores are detached: no gradient
/// reaches the teacher. Log-probabilities work as scores too (`log_softmax` of log-probabilities
/// is themselves), so a teacher ending in `LogSoftmax` needs no change.
///
/// `alpha = 0` is exactly the cross-entropy and `alpha = 1` exactly the scaled KL term (the
/// other term is not computed).
///
/// **Panics** if `temperature` is not finite and positive, if `alpha` is outside `[0, 1]`, if
/// the two score tensors differ in shape, or (from `cross_entropy`) if the targets do not fit.
///
/// ```
/// use kiln_nn::distillation_loss;
/// use kiln_nn::functional::{cross_entropy, CrossEntropyOptions};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Indices, Tensor};
/// let student = Var::param(Tensor::from_vec(vec![1.0f64, 0.0, -1.0, 0.5, 0.5, 0.0], &[2, 3]));
/// let teacher = Var::constant(Tensor::from_vec(vec![3.0f64, 1.0, 0.0, 0.0, 2.0, 0.0], &[2, 3]));
/// let targets = Indices::from_vec(vec![0, 1]);
/// let loss = distillation_loss(&student, &teacher, &targets, 4.0, 0.9);
/// loss.backward();
/// assert!(loss.item() > 0.0 && student.grad().is_some());
/// // alpha = 0: the plain cross-entropy
/// let hard = distillation_loss(&student, &teacher, &targets, 4.0, 0.0);
/// assert_eq!(hard.item(), cross_entropy(&student, &targets, &CrossEntropyOptions::default()).item());
/// ```
pub fn distillation_loss<E: Float>(
    student_logits: &Var<E>,
    teacher_logits: &Var<E>,
    targets: &Indices,
    temperature: f64,
    alpha: f64,
) -> Var<E> {
    check_hyperparameters("distillation_loss", temperature, alpha);
    assert!(
        student_logits.shape() == teacher_logits.shape(),
        "distillation_loss: student logits {:?} and teacher logits {:?} must have the same shape",
        student_logits.shape().as_slice(),
        teacher_logits.shape().as_slice()
    );
    let hard = || cross_entropy(student_logits, targets, &CrossEntropyOptions::default());
    if alpha == 0.0 {
        return hard();
    }
    let t = E::from_f64(temperature);
    let soft_targets = teacher_logits.detach().div_scalar(t).softmax(1);
    let kl = kl_div(&student_logits.div_scalar(t).log_softmax(1), &soft_targets, Reduction::BatchMean, false);
    let soft = kl.mul_scalar(E::from_f64(alpha * temperature * temperature));
    if alpha == 1.0 {
        return soft;
    }
    soft.add(&hard().mul_scalar(E::from_f64(1.0 - alpha)))
}

/// The knowledge-distillation loss as a module: the temperature and the weight `alpha` of the
/// soft (teacher) term, applied by [`distillation_loss`].
///
/// ```
/// use kiln_nn::DistillationLoss;
/// use kiln_autograd::Var;
/// use kiln_tensor::{Indices, Tensor};
/// let loss_fn = DistillationLoss::new(2.0, 1.0);
/// let logits = Var::param(Tensor::<f32>::zeros(&[2, 4]));
/// // a student that already matches its teacher has nothing left to learn from it
/// let loss = loss_fn.forward(&logits, &Var::constant(Tensor::zeros(&[2, 4])), &Indices::from_vec(vec![1, 3]));
/// assert!(loss.item().abs() < 1e-6);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct DistillationLoss {
    /// The softmax temperature `T` of both score sets (> 0).
    pub temperature: f64,
    /// The weight of the soft term; the hard-label cross-entropy gets `1 - alpha` (in `[0, 1]`).
    pub alpha: f64,
}

impl DistillationLoss {
    /// A loss with temperature `temperature` and soft-term weight `alpha`.
    ///
    /// **Panics** if `temperature` is not finite and positive or `alpha` is outside `[0, 1]`.
    pub fn new(temperature: f64, alpha: f64) -> Self {
        check_hyperparameters("DistillationLoss", temperature, alpha);
        DistillationLoss { temperature, alpha }
    }

    /// The loss of the student's scores against the teacher's and the class indices.
    pub fn forward<E: Float>(&self, student_logits: &Var<E>, teacher_logits: &Var<E>, targets: &Indices) -> Var<E> {
        distillation_loss(student_logits, teacher_logits, targets, self.temperature, self.alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functional::kl_div;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Tensor;

    const S: [f64; 6] = [1.0, 0.0, -1.0, 0.5, 0.5, 0.0];
    const T: [f64; 6] = [3.0, 1.0, 0.0, 0.0, 2.0, 0.0];

    fn vars() -> (Var<f64>, Var<f64>, Indices) {
        (
            Var::param(Tensor::from_vec(S.to_vec(), &[2, 3])),
            Var::constant(Tensor::from_vec(T.to_vec(), &[2, 3])),
            Indices::from_vec(vec![0, 2]),
        )
    }

    fn softmax(row: &[f64], temperature: f64) -> Vec<f64> {
        let e: Vec<f64> = row.iter().map(|v| (v / temperature).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    }

    /// The loss from its definition, by scalar arithmetic on rows of 3.
    fn reference(temperature: f64, alpha: f64, targets: [usize; 2]) -> f64 {
        let (mut kl, mut ce) = (0.0, 0.0);
        for i in 0..2 {
            let (s, t) = (&S[3 * i..3 * i + 3], &T[3 * i..3 * i + 3]);
            let (p, q) = (softmax(t, temperature), softmax(s, temperature));
            kl += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
            ce -= softmax(s, 1.0)[targets[i]].ln();
        }
        alpha * temperature * temperature * kl / 2.0 + (1.0 - alpha) * ce / 2.0
    }

    #[test]
    fn distillation_value_matches_hand_computation() {
        let (s, t, y) = vars();
        for (temperature, alpha) in [(1.0, 0.5), (4.0, 0.9), (2.5, 0.3)] {
            let got = distillation_loss(&s, &t, &y, temperature, alpha).item();
            let want = reference(temperature, alpha, [0, 2]);
            assert!((got - want).abs() < 1e-12, "T={temperature} alpha={alpha}: {got} vs {want}");
        }
        // PyTorch 2.x, float64: 0.9 * 16 * F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1),
        // reduction="batchmean") + 0.1 * F.cross_entropy(s, y)
        let torch = 0.325_313_333_317_345_5;
        assert!((distillation_loss(&s, &t, &y, 4.0, 0.9).item() - torch).abs() < 1e-12);
    }

    #[test]
    fn distillation_gradcheck_wrt_student() {
        let mut rng = kiln_tensor::Rng::new(11);
        let s: Tensor<f64> = Tensor::randn(&[4, 5], &mut rng);
        let teacher = Var::constant(Tensor::randn(&[4, 5], &mut rng));
        let targets = Indices::from_vec(vec![4, 0, 2, 2]);
        for (temperature, alpha) in [(1.0, 0.5), (3.0, 0.9), (0.5, 1.0), (2.0, 0.0)] {
            let r = gradcheck(
                |v| distillation_loss(&v[0], &teacher, &targets, temperature, alpha),
                std::slice::from_ref(&s),
                1e-6,
                1e-7,
                1e-5,
            );
            assert!(r.is_ok(), "T={temperature} alpha={alpha}: {}", r.unwrap_err());
        }
    }

    #[test]
    fn distillation_teacher_gets_no_gradient() {
        let (s, _, y) = vars();
        let teacher = Var::param(Tensor::from_vec(T.to_vec(), &[2, 3]));
        distillation_loss(&s, &teacher, &y, 2.0, 0.7).backward();
        assert!(s.grad().is_some());
        assert!(teacher.grad().is_none(), "the teacher's scores are detached");
    }

    #[test]
    fn distillation_alpha_zero_is_cross_entropy() {
        let (s, t, y) = vars();
        let ce = cross_entropy(&s, &y, &CrossEntropyOptions::default()).item();
        for temperature in [0.5, 1.0, 7.0] {
            assert_eq!(distillation_loss(&s, &t, &y, temperature, 0.0).item(), ce);
        }
    }

    #[test]
    fn distillation_temperature_one_alpha_one_is_kl() {
        let (s, t, y) = vars();
        let kl = kl_div(&s.log_softmax(1), &t.softmax(1), Reduction::BatchMean, false).item();
        assert_eq!(distillation_loss(&s, &t, &y, 1.0, 1.0).item(), kl);
        assert_eq!(DistillationLoss::new(1.0, 1.0).forward(&s, &t, &y).item(), kl);
    }

    #[test]
    fn distillation_scales_the_softened_kl_by_t_squared() {
        let (s, t, y) = vars();
        for temperature in [0.5, 2.0, 5.0] {
            let tt = temperature;
            let kl =
                kl_div(&s.div_scalar(tt).log_softmax(1), &t.div_scalar(tt).softmax(1), Reduction::BatchMean, false)
                    .item();
            let got = distillation_loss(&s, &t, &y, temperature, 1.0).item();
            assert!(
                (got - tt * tt * kl).abs() < 1e-12 * got.abs().max(1.0),
                "T={temperature}: {got} vs {}",
                tt * tt * kl
            );
        }
        // The T^2 factor keeps the soft term's gradient on one scale: T (softmax(s/T) - softmax(t/T)) / N
        // tends to (s - t) / (C N) for row-centred scores as T grows, where without it the
        // gradient would shrink as 1/T^2.
        let s0: [f64; 6] = [0.1, -0.2, 0.1, 0.0, 0.2, -0.2];
        for temperature in [10.0, 100.0] {
            let s = Var::param(Tensor::from_vec(s0.to_vec(), &[2, 3]));
            distillation_loss(&s, &Var::constant(Tensor::zeros(&[2, 3])), &y, temperature, 1.0).backward();
            for (g, s) in s.grad().unwrap().to_vec().iter().zip(s0) {
                assert!((g - s / 6.0).abs() < 5e-4, "T={temperature}: gradient {g} vs limit {}", s / 6.0);
            }
        }
    }

    #[test]
    #[should_panic(expected = "distillation_loss: temperature must be finite and > 0, got 0")]
    fn distillation_rejects_zero_temperature() {
        let (s, t, y) = vars();
        let _ = distillation_loss(&s, &t, &y, 0.0, 0.5);
    }

    #[test]
    #[should_panic(expected = "DistillationLoss: alpha must be in [0, 1], got 1.5")]
    fn distillation_rejects_alpha_above_one() {
        let _ = DistillationLoss::new(2.0, 1.5);
    }

    #[test]
    #[should_panic(
        expected = "distillation_loss: student logits [2, 3] and teacher logits [2, 4] must have the same shape"
    )]
    fn distillation_rejects_mismatched_logits() {
        let (s, _, y) = vars();
        let _ = distillation_loss(&s, &Var::constant(Tensor::zeros(&[2, 4])), &y, 2.0, 0.5);
    }
}
