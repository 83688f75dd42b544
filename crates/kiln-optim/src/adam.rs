//! Adam: [`Adam`], and the update it shares with [`AdamW`](crate::AdamW).

use kiln_tensor::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::elementwise::{dispatch, for_chunks, grad_of, lerp, lerp_small, maximum, sign, with_slice};
use crate::optimizer::{check, GroupConfig, MissingKey, ParamState, RuleOptimizer, UpdateRule};

/// The hyper-parameters of [`Adam`], with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// (β₁, β₂): decay rates of the moment estimates (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty λ, added to the gradient (default 0). For decoupled decay use
    /// [`AdamW`](crate::AdamW).
    pub weight_decay: f64,
    /// The AMSGrad variant: normalise by the running maximum of v (default false).
    pub amsgrad: bool,
    /// Maximise the objective (default false).
    pub maximize: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, amsgrad: false, maximize: false }
    }
}

/// Checks shared by Adam and AdamW.
pub(crate) fn validate_adam(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64) -> Result<(), String> {
    check(lr >= 0.0, "lr", ">= 0", lr)?;
    check(eps >= 0.0, "eps", ">= 0", eps)?;
    check((0.0..1.0).contains(&betas.0), "betas.0", "in [0, 1)", betas.0)?;
    check((0.0..1.0).contains(&betas.1), "betas.1", "in [0, 1)", betas.1)?;
    check(weight_decay >= 0.0, "weight_decay", ">= 0", weight_decay)
}

impl GroupConfig for AdamConfig {
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn momentum(&self) -> Option<f64> {
        Some(self.betas.0)
    }
    fn set_momentum(&mut self, momentum: f64) {
        self.betas.0 = momentum;
    }
    fn validate(&self) -> Result<(), String> {
        validate_adam(self.lr, self.betas, self.eps, self.weight_decay)
    }
}

/// The state of one parameter under [`Adam`] or [`AdamW`](crate::AdamW), with PyTorch's names.
#[derive(Clone, Debug)]
pub struct AdamState<E: Float> {
    /// Updates done, t.
    pub step: u64,
    /// First moment m (`exp_avg`).
    pub exp_avg: Tensor<E>,
    /// Second moment v (`exp_avg_sq`).
    pub exp_avg_sq: Tensor<E>,
    /// Running maximum of v (`max_exp_avg_sq`), with AMSGrad.
    pub max_exp_avg_sq: Option<Tensor<E>>,
}

/// What one Adam update needs, whichever config it came from.
pub(crate) struct AdamHyper {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
    /// AdamW: `θ ← θ (1 - γλ)` instead of `g ← g + λθ`.
    pub decoupled: bool,
}

pub(crate) fn init_adam<E: Float>(amsgrad: bool, param: &Tensor<E>) -> AdamState<E> {
    AdamState {
        step: 0,
        exp_avg: Tensor::zeros(param.shape()),
        exp_avg_sq: Tensor::zeros(param.shape()),
        max_exp_avg_sq: amsgrad.then(|| Tensor::zeros(param.shape())),
    }
}

/// The per-step scalars of an Adam update, in the parameter's type.
struct AdamScalars<E> {
    /// `1 - γλ` for AdamW's decoupled decay, else 1 (multiplying by 1 is exact).
    shrink: E,
    sign: E,
    l2: E,
    one_minus_b1: E,
    b2: E,
    one_minus_b2: E,
    step_size: E,
    bc2_sqrt: E,
    eps: E,
}

/// One Adam/AdamW update of one parameter, in one pass over (θ, g, m, v[, v_max]).
pub(crate) fn adam_update<E: Float>(h: &AdamHyper, param: &mut Tensor<E>, grad: &Tensor<E>, s: &mut AdamState<E>) {
    s.step += 1;
    let t = s.step as f64;
    let (b1, b2) = h.betas;
    // the scalars in f64, as PyTorch computes them in Python
    let bias_correction1 = 1.0 - b1.powf(t);
    let bias_correction2 = 1.0 - b2.powf(t);
    let k = AdamScalars {
        shrink: E::from_f64(if h.decoupled && h.weight_decay != 0.0 { 1.0 - h.lr * h.weight_decay } else { 1.0 }),
        sign: sign(h.maximize),
        l2: E::from_f64(h.weight_decay),
        one_minus_b1: E::from_f64(1.0 - b1),
        b2: E::from_f64(b2),
        one_minus_b2: E::from_f64(1.0 - b2),
        step_size: E::from_f64(h.lr / bias_correction1),
        bc2_sqrt: E::from_f64(bias_correction2.powf(0.5)),
        eps: E::from_f64(h.eps),
    };
    if h.amsgrad && s.max_exp_avg_sq.is_none() {
        s.max_exp_avg_sq = Some(Tensor::zeros(param.shape()));
    }
    let p = param.as_mut_slice();
    let vmax = if h.amsgrad { s.max_exp_avg_sq.as_mut().map(|t| t.as_mut_slice()) } else { None };
    let (m, v) = (s.exp_avg.as_mut_slice(), s.exp_avg_sq.as_mut_slice());
    let l2 = !h.decoupled && h.weight_decay != 0.0;
    with_slice(grad, |g| dispatch!(adam_pass(&k, p, m, v, vmax, g); [l2, lerp_small(1.0 - b1)]))
}

#[inline(always)]
fn adam_moments<E: Float, const L2: bool, const SMALL: bool>(
    k: &AdamScalars<E>,
    p: &mut E,
    m: &mut E,
    v: &mut E,
    g: E,
) {
    *p *= k.shrink;
    let g = grad_of::<E, L2>(g, *p, k.sign, k.l2);
    *m = lerp::<E, SMALL>(*m, g, k.one_minus_b1);
    *v = *v * k.b2 + k.one_minus_b2 * g * g;
}

fn adam_pass<E: Float, const L2: bool, const SMALL: bool>(
    k: &AdamScalars<E>,
    p: &mut [E],
    m: &mut [E],
    v: &mut [E],
    vmax: Option<&mut [E]>,
    g: &[E],
) {
    match vmax {
        Some(vmax) => for_chunks([p, m, v, vmax], g, &|[p, m, v, vmax], g| {
            for ((((p, m), v), vmax), &g) in p.iter_mut().zip(m).zip(v).zip(vmax).zip(g) {
                adam_moments::<E, L2, SMALL>(k, p, m, v, g);
                *vmax = maximum(*vmax, *v);
                let denom = vmax.sqrt() / k.bc2_sqrt + k.eps;
                *p += -k.step_size * *m / denom;
            }
        }),
        None => for_chunks([p, m, v], g, &|[p, m, v], g| {
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                adam_moments::<E, L2, SMALL>(k, p, m, v, g);
                let denom = v.sqrt() / k.bc2_sqrt + k.eps;
                *p += -k.step_size * *m / denom;
            }
        }),
    }
}

pub(crate) fn save_adam<E: Float>(s: &AdamState<E>) -> ParamState<E> {
    ParamState::new(Some(s.step))
        .with("exp_avg", &s.exp_avg)
        .with("exp_avg_sq", &s.exp_avg_sq)
        .with_opt("max_exp_avg_sq", s.max_exp_avg_sq.as_ref())
}

pub(crate) fn load_adam<E: Float>(amsgrad: bool, s: &mut ParamState<E>) -> Result<AdamState<E>, MissingKey> {
    Ok(AdamState {
        step: s.take_step()?,
        exp_avg: s.take("exp_avg")?,
        exp_avg_sq: s.take("exp_avg_sq")?,
        max_exp_avg_sq: if amsgrad { Some(s.take("max_exp_avg_sq")?) } else { s.buffers.remove("max_exp_avg_sq") },
    })
}

/// The update rule of [`Adam`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamRule;

/// Adam, like `torch.optim.Adam` (with `decoupled_weight_decay=False`).
///
/// ```text
/// input: γ (lr), β₁, β₂ (betas), θ₀ (params), f(θ) (objective),
///        λ (weight decay), amsgrad, maximize, ε (eps)
/// initialize: m₀ ← 0 (first moment), v₀ ← 0 (second moment), v₀^max ← 0
/// for t = 1 to ... do
///     if maximize: g_t ← -∇_θ f_t(θ_{t-1})
///     else:        g_t ←  ∇_θ f_t(θ_{t-1})
///     if λ ≠ 0: g_t ← g_t + λ θ_{t-1}
///     m_t ← β₁ m_{t-1} + (1 - β₁) g_t
///     v_t ← β₂ v_{t-1} + (1 - β₂) g_t²
///     m̂_t ← m_t / (1 - β₁^t)
///     if amsgrad:
///         v_t^max ← max(v_{t-1}^max, v_t)
///         v̂_t ← v_t^max / (1 - β₂^t)
///     else:
///         v̂_t ← v_t / (1 - β₂^t)
///     θ_t ← θ_{t-1} - γ m̂_t / (√v̂_t + ε)
/// return θ_t
/// ```
///
/// **Differs from PyTorch**: only in rounding (see [the crate docs](crate#agreement-with-pytorch)).
/// The first moment is updated as PyTorch's implementation does, `m ← lerp(m, g, 1 - β₁)`, and
/// the step as `θ ← θ - (γ / (1 - β₁^t)) m / (√v / √(1 - β₂^t) + ε)`, the same operations in
/// the same order; the whole update is one pass over (θ, g, m, v), so no temporary tensor (not
/// even for `√v`) is made and no step after the first
/// allocates. `capturable`, `differentiable`, `foreach` and `fused` do not apply.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{Adam, AdamConfig, Optimizer};
/// use kiln_tensor::Tensor;
/// // minimise (w - 2)^2 from 0
/// let w = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
/// let mut opt = Adam::new(vec![w.clone()], AdamConfig { lr: 0.1, ..Default::default() });
/// for _ in 0..300 {
///     opt.zero_grad();
///     w.sub_scalar(2.0).powf(2.0).sum_all().backward();
///     opt.step();
/// }
/// assert!((w.item() - 2.0).abs() < 1e-2);
/// assert_eq!(opt.state(&w).unwrap().step, 300);
/// ```
pub type Adam<E = f32> = RuleOptimizer<E, AdamRule>;

impl<E: Float> UpdateRule<E> for AdamRule {
    const NAME: &'static str = "Adam";
    type Config = AdamConfig;
    type State = AdamState<E>;

    fn init_state(c: &AdamConfig, param: &Tensor<E>) -> AdamState<E> {
        init_adam(c.amsgrad, param)
    }

    fn update(c: &AdamConfig, param: &mut Tensor<E>, grad: &Tensor<E>, state: &mut AdamState<E>) {
        let h = AdamHyper {
            lr: c.lr,
            betas: c.betas,
            eps: c.eps,
            weight_decay: c.weight_decay,
            amsgrad: c.amsgrad,
            maximize: c.maximize,
            decoupled: false,
        };
        adam_update(&h, param, grad, state)
    }

    fn save_state(s: &AdamState<E>) -> ParamState<E> {
        save_adam(s)
    }

    fn load_state(c: &AdamConfig, s: &mut ParamState<E>) -> Result<AdamState<E>, MissingKey> {
        load_adam(c.amsgrad, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Optimizer;
    use kiln_autograd::Var;

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // m̂_1 = g, v̂_1 = g², so the step is γ g / (|g| + ε)
        let w = Var::param(Tensor::from_vec(vec![0.0f64, 0.0, 0.0], &[3]));
        let mut opt = Adam::new(vec![w.clone()], AdamConfig { lr: 0.5, eps: 0.0, ..Default::default() });
        w.set_grad(Some(Tensor::from_vec(vec![3.0, -0.25, 7.0], &[3])));
        opt.step();
        let v = w.value().to_vec();
        for (a, b) in v.iter().zip([-0.5, 0.5, -0.5]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
    }

    #[test]
    fn amsgrad_keeps_the_running_max() {
        let w = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
        let mut opt = Adam::new(vec![w.clone()], AdamConfig { amsgrad: true, ..Default::default() });
        for g in [10.0, 0.0, 0.0] {
            w.set_grad(Some(Tensor::from_vec(vec![g], &[1])));
            opt.step();
        }
        let s = opt.state(&w).unwrap();
        let vmax = s.max_exp_avg_sq.as_ref().unwrap().item();
        // v_1 = 0.001 * 100 = 0.1 is the max; v_3 = 0.999² v_1
        assert!((vmax - 0.1).abs() < 1e-12);
        assert!(s.exp_avg_sq.item() < vmax);
    }

    #[test]
    #[should_panic(expected = "Adam: betas.1 must be in [0, 1), got 1")]
    fn beta_out_of_range_panics() {
        let w = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
        let _ = Adam::new(vec![w], AdamConfig { betas: (0.9, 1.0), ..Default::default() });
    }
}
