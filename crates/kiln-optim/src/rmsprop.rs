//! RMSprop: [`RMSprop`].

use kiln_tensor::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::elementwise::{dispatch, for_chunks, grad_of, lerp, lerp_small, sign, with_slice};
use crate::optimizer::{check, GroupConfig, MissingKey, ParamState, RuleOptimizer, UpdateRule};

/// The hyper-parameters of [`RMSprop`], with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RMSpropConfig {
    /// Learning rate γ (default 1e-2).
    pub lr: f64,
    /// Smoothing constant α of the square average (default 0.99).
    pub alpha: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty λ (default 0).
    pub weight_decay: f64,
    /// Momentum μ (default 0).
    pub momentum: f64,
    /// Normalise by an estimate of the gradient's variance instead of its second moment
    /// (default false).
    pub centered: bool,
    /// Maximise the objective (default false).
    pub maximize: bool,
}

impl Default for RMSpropConfig {
    fn default() -> Self {
        RMSpropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

impl GroupConfig for RMSpropConfig {
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn momentum(&self) -> Option<f64> {
        Some(self.momentum)
    }
    fn set_momentum(&mut self, momentum: f64) {
        self.momentum = momentum;
    }
    fn validate(&self) -> Result<(), String> {
        check(self.lr >= 0.0, "lr", ">= 0", self.lr)?;
        check(self.eps >= 0.0, "eps", ">= 0", self.eps)?;
        check(self.momentum >= 0.0, "momentum", ">= 0", self.momentum)?;
        check(self.weight_decay >= 0.0, "weight_decay", ">= 0", self.weight_decay)?;
        check(self.alpha >= 0.0, "alpha", ">= 0", self.alpha)
    }
}

/// The state of one parameter under [`RMSprop`], with PyTorch's names.
#[derive(Clone, Debug)]
pub struct RMSpropState<E: Float> {
    /// Updates done.
    pub step: u64,
    /// v, the running average of g² (`square_avg`).
    pub square_avg: Tensor<E>,
    /// b, the momentum buffer (`momentum_buffer`), when `momentum > 0`.
    pub momentum_buffer: Option<Tensor<E>>,
    /// g^ave, the running average of g (`grad_avg`), when `centered`.
    pub grad_avg: Option<Tensor<E>>,
}

/// The update rule of [`RMSprop`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RMSpropRule;

/// RMSprop (Hinton's lecture 6e; centered form from Graves 2013), like `torch.optim.RMSprop`.
///
/// ```text
/// input: α (alpha), γ (lr), θ₀ (params), f(θ) (objective), λ (weight decay),
///        μ (momentum), centered, ε (epsilon), maximize
/// initialize: v₀ ← 0 (square average), b₀ ← 0 (buffer), g₀^ave ← 0
/// for t = 1 to ... do
///     g_t ← ∇_θ f_t(θ_{t-1})
///     if maximize: g_t ← -g_t
///     if λ ≠ 0: g_t ← g_t + λ θ_{t-1}
///     v_t ← α v_{t-1} + (1 - α) g_t²
///     ṽ_t ← v_t
///     if centered:
///         g_t^ave ← α g_{t-1}^ave + (1 - α) g_t
///         ṽ_t ← ṽ_t - (g_t^ave)²
///     if μ > 0:
///         b_t ← μ b_{t-1} + g_t / (√ṽ_t + ε)
///         θ_t ← θ_{t-1} - γ b_t
///     else:
///         θ_t ← θ_{t-1} - γ g_t / (√ṽ_t + ε)
/// return θ_t
/// ```
///
/// **Differs from PyTorch**: in rounding only (see [the crate docs](crate#agreement-with-pytorch);
/// `g^ave` is updated with PyTorch's `lerp`, the rest in its operation order). PyTorch makes
/// the momentum buffer only when `momentum > 0` at the first step and fails if momentum is
/// raised later (a scheduler cycling it); kiln creates a zero buffer then. The whole update is one pass over (θ, g, v[, g^ave][, b]): no
/// step after the first allocates.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{Optimizer, RMSprop, RMSpropConfig};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::from_vec(vec![1.0f64], &[1]));
/// let mut opt = RMSprop::new(vec![w.clone()], RMSpropConfig { lr: 0.01, alpha: 0.0, eps: 0.0, ..Default::default() });
/// w.set_grad(Some(Tensor::from_vec(vec![-4.0], &[1])));
/// opt.step();
/// // α = 0: v = g², so θ moves by γ g / |g|
/// assert!((w.item() - 1.01).abs() < 1e-12);
/// ```
pub type RMSprop<E = f32> = RuleOptimizer<E, RMSpropRule>;

/// The per-step scalars of an RMSprop update, in the parameter's type.
struct Scalars<E> {
    lr: E,
    alpha: E,
    one_minus_alpha: E,
    eps: E,
    wd: E,
    mu: E,
    sign: E,
}

/// The RMSprop update of one element; `ga` and `b` are present when centered / with momentum
/// (each call site passes literal `Some`/`None`, so the matches fold away).
#[inline(always)]
fn rmsprop_elem<E: Float, const L2: bool, const SMALL: bool>(
    k: &Scalars<E>,
    p: &mut E,
    v: &mut E,
    ga: Option<&mut E>,
    b: Option<&mut E>,
    g: E,
) {
    let g = grad_of::<E, L2>(g, *p, k.sign, k.wd);
    *v = *v * k.alpha + k.one_minus_alpha * g * g;
    let avg = match ga {
        Some(ga) => {
            *ga = lerp::<E, SMALL>(*ga, g, k.one_minus_alpha);
            (*v + (-E::one()) * *ga * *ga).sqrt()
        }
        None => v.sqrt(),
    } + k.eps;
    match b {
        Some(b) => {
            *b = *b * k.mu + g / avg;
            *p += -k.lr * *b;
        }
        None => *p += -k.lr * g / avg,
    }
}

fn rmsprop_pass<E: Float, const L2: bool, const SMALL: bool>(
    k: &Scalars<E>,
    p: &mut [E],
    v: &mut [E],
    ga: Option<&mut [E]>,
    b: Option<&mut [E]>,
    g: &[E],
) {
    let e = rmsprop_elem::<E, L2, SMALL>;
    match (ga, b) {
        (Some(ga), Some(b)) => for_chunks([p, v, ga, b], g, &|[p, v, ga, b], g| {
            for ((((p, v), ga), b), &g) in p.iter_mut().zip(v).zip(ga).zip(b).zip(g) {
                e(k, p, v, Some(ga), Some(b), g);
            }
        }),
        (Some(ga), None) => for_chunks([p, v, ga], g, &|[p, v, ga], g| {
            for (((p, v), ga), &g) in p.iter_mut().zip(v).zip(ga).zip(g) {
                e(k, p, v, Some(ga), None, g);
            }
        }),
        (None, Some(b)) => for_chunks([p, v, b], g, &|[p, v, b], g| {
            for (((p, v), b), &g) in p.iter_mut().zip(v).zip(b).zip(g) {
                e(k, p, v, None, Some(b), g);
            }
        }),
        (None, None) => for_chunks([p, v], g, &|[p, v], g| {
            for ((p, v), &g) in p.iter_mut().zip(v).zip(g) {
                e(k, p, v, None, None, g);
            }
        }),
    }
}

impl<E: Float> UpdateRule<E> for RMSpropRule {
    const NAME: &'static str = "RMSprop";
    type Config = RMSpropConfig;
    type State = RMSpropState<E>;

    fn init_state(c: &RMSpropConfig, param: &Tensor<E>) -> RMSpropState<E> {
        RMSpropState {
            step: 0,
            square_avg: Tensor::zeros(param.shape()),
            momentum_buffer: (c.momentum > 0.0).then(|| Tensor::zeros(param.shape())),
            grad_avg: c.centered.then(|| Tensor::zeros(param.shape())),
        }
    }

    fn update(c: &RMSpropConfig, param: &mut Tensor<E>, grad: &Tensor<E>, s: &mut RMSpropState<E>) {
        s.step += 1;
        if c.momentum > 0.0 && s.momentum_buffer.is_none() {
            s.momentum_buffer = Some(Tensor::zeros(param.shape()));
        }
        if c.centered && s.grad_avg.is_none() {
            s.grad_avg = Some(Tensor::zeros(param.shape()));
        }
        let k = Scalars {
            lr: E::from_f64(c.lr),
            alpha: E::from_f64(c.alpha),
            one_minus_alpha: E::from_f64(1.0 - c.alpha),
            eps: E::from_f64(c.eps),
            wd: E::from_f64(c.weight_decay),
            mu: E::from_f64(c.momentum),
            sign: sign(c.maximize),
        };
        let p = param.as_mut_slice();
        let v = s.square_avg.as_mut_slice();
        let ga = if c.centered { s.grad_avg.as_mut().map(|t| t.as_mut_slice()) } else { None };
        let b = if c.momentum > 0.0 { s.momentum_buffer.as_mut().map(|t| t.as_mut_slice()) } else { None };
        let (l2, small) = (c.weight_decay != 0.0, lerp_small(1.0 - c.alpha));
        with_slice(grad, |g| dispatch!(rmsprop_pass(&k, p, v, ga, b, g); [l2, small]))
    }

    fn save_state(s: &RMSpropState<E>) -> ParamState<E> {
        ParamState::new(Some(s.step))
            .with("square_avg", &s.square_avg)
            .with_opt("momentum_buffer", s.momentum_buffer.as_ref())
            .with_opt("grad_avg", s.grad_avg.as_ref())
    }

    fn load_state(c: &RMSpropConfig, s: &mut ParamState<E>) -> Result<RMSpropState<E>, MissingKey> {
        let step = s.take_step()?;
        let square_avg = s.take("square_avg")?;
        let momentum_buffer =
            if c.momentum > 0.0 { Some(s.take("momentum_buffer")?) } else { s.buffers.remove("momentum_buffer") };
        let grad_avg = if c.centered { Some(s.take("grad_avg")?) } else { s.buffers.remove("grad_avg") };
        Ok(RMSpropState { step, square_avg, momentum_buffer, grad_avg })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Optimizer;
    use kiln_autograd::Var;

    #[test]
    fn centered_momentum_by_hand() {
        // α = 0.5, g = 2: v = 2, g^ave = 1, ṽ = 1, b = 2 / (1 + 0) = 2, θ = 1 - 0.1 * 2
        let w = Var::param(Tensor::from_vec(vec![1.0f64], &[1]));
        let cfg = RMSpropConfig { lr: 0.1, alpha: 0.5, eps: 0.0, momentum: 0.9, centered: true, ..Default::default() };
        let mut opt = RMSprop::new(vec![w.clone()], cfg);
        w.set_grad(Some(Tensor::from_vec(vec![2.0], &[1])));
        opt.step();
        assert!((w.item() - 0.8).abs() < 1e-15);
        let s = opt.state(&w).unwrap();
        assert_eq!(s.square_avg.item(), 2.0);
        assert_eq!(s.grad_avg.as_ref().unwrap().item(), 1.0);
        assert_eq!(s.momentum_buffer.as_ref().unwrap().item(), 2.0);
    }
}
