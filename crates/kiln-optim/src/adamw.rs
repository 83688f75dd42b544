//! Adam with decoupled weight decay: [`AdamW`].

use kiln_tensor::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::adam::{adam_update, init_adam, load_adam, save_adam, validate_adam, AdamHyper, AdamState};
use crate::optimizer::{GroupConfig, MissingKey, ParamState, RuleOptimizer, UpdateRule};

/// The hyper-parameters of [`AdamW`], with PyTorch's defaults (note `weight_decay = 1e-2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// (β₁, β₂) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay λ: `θ ← θ (1 - γλ)` each step (default 1e-2).
    pub weight_decay: f64,
    /// The AMSGrad variant (default false).
    pub amsgrad: bool,
    /// Maximise the objective (default false).
    pub maximize: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2, amsgrad: false, maximize: false }
    }
}

impl GroupConfig for AdamWConfig {
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

/// The update rule of [`AdamW`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamWRule;

/// Adam with decoupled weight decay (Loshchilov & Hutter), like `torch.optim.AdamW`.
///
/// ```text
/// input: γ (lr), β₁, β₂ (betas), θ₀ (params), f(θ) (objective), ε (epsilon),
///        λ (weight decay), amsgrad, maximize
/// initialize: m₀ ← 0 (first moment), v₀ ← 0 (second moment), v₀^max ← 0
/// for t = 1 to ... do
///     if maximize: g_t ← -∇_θ f_t(θ_{t-1})
///     else:        g_t ←  ∇_θ f_t(θ_{t-1})
///     θ_t ← θ_{t-1} - γ λ θ_{t-1}
///     m_t ← β₁ m_{t-1} + (1 - β₁) g_t
///     v_t ← β₂ v_{t-1} + (1 - β₂) g_t²
///     m̂_t ← m_t / (1 - β₁^t)
///     if amsgrad:
///         v_t^max ← max(v_{t-1}^max, v_t)
///         v̂_t ← v_t^max / (1 - β₂^t)
///     else:
///         v̂_t ← v_t / (1 - β₂^t)
///     θ_t ← θ_t - γ m̂_t / (√v̂_t + ε)
/// return θ_t
/// ```
///
/// **Differs from PyTorch**: only in rounding (see [the crate docs](crate#agreement-with-pytorch));
/// the update is [`Adam`](crate::Adam)'s single pass with the decay `θ ← θ (1 - γλ)` applied
/// first, as PyTorch's AdamW (an `Adam` with `decoupled_weight_decay=True`) does. The state has
/// Adam's names.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{AdamW, AdamWConfig, Optimizer};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::from_vec(vec![1.0f64], &[1]));
/// let mut opt = AdamW::new(vec![w.clone()], AdamWConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() });
/// w.set_grad(Some(Tensor::from_vec(vec![0.0], &[1])));
/// opt.step();
/// // a zero gradient leaves only the decay: 1 - 0.1 * 0.5
/// assert!((w.item() - 0.95).abs() < 1e-12);
/// ```
pub type AdamW<E = f32> = RuleOptimizer<E, AdamWRule>;

impl<E: Float> UpdateRule<E> for AdamWRule {
    const NAME: &'static str = "AdamW";
    type Config = AdamWConfig;
    type State = AdamState<E>;

    fn init_state(c: &AdamWConfig, param: &Tensor<E>) -> AdamState<E> {
        init_adam(c.amsgrad, param)
    }

    fn update(c: &AdamWConfig, param: &mut Tensor<E>, grad: &Tensor<E>, state: &mut AdamState<E>) {
        let h = AdamHyper {
            lr: c.lr,
            betas: c.betas,
            eps: c.eps,
            weight_decay: c.weight_decay,
            amsgrad: c.amsgrad,
            maximize: c.maximize,
            decoupled: true,
        };
        adam_update(&h, param, grad, state)
    }

    fn save_state(s: &AdamState<E>) -> ParamState<E> {
        save_adam(s)
    }

    fn load_state(c: &AdamWConfig, s: &mut ParamState<E>) -> Result<AdamState<E>, MissingKey> {
        load_adam(c.amsgrad, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adam, AdamConfig, Optimizer};
    use kiln_autograd::Var;

    #[test]
    fn without_decay_adamw_is_adam() {
        let a = Var::param(Tensor::from_vec(vec![0.3f64, -0.7], &[2]));
        let b = Var::param(a.value().contiguous());
        let mut adam = Adam::new(vec![a.clone()], AdamConfig::default());
        let mut adamw = AdamW::new(vec![b.clone()], AdamWConfig { weight_decay: 0.0, ..Default::default() });
        for k in 0..5 {
            let g = Tensor::from_vec(vec![0.1 * k as f64, -1.0], &[2]);
            a.set_grad(Some(g.clone()));
            b.set_grad(Some(g));
            adam.step();
            adamw.step();
        }
        assert_eq!(a.value().to_vec(), b.value().to_vec());
    }
}
