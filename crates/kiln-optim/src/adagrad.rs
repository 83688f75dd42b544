//! Adagrad: [`Adagrad`].

use kiln_tensor::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::elementwise::{dispatch, for_chunks, grad_of, sign, with_slice};
use crate::optimizer::{check, GroupConfig, MissingKey, ParamState, RuleOptimizer, UpdateRule};

/// The hyper-parameters of [`Adagrad`], with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdagradConfig {
    /// Learning rate γ (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay η (default 0).
    pub lr_decay: f64,
    /// L2 penalty λ (default 0).
    pub weight_decay: f64,
    /// Starting value τ of the sum of squares (default 0).
    pub initial_accumulator_value: f64,
    /// ε added to the denominator (default 1e-10).
    pub eps: f64,
    /// Maximise the objective (default false).
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

impl GroupConfig for AdagradConfig {
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn validate(&self) -> Result<(), String> {
        check(self.lr >= 0.0, "lr", ">= 0", self.lr)?;
        check(self.lr_decay >= 0.0, "lr_decay", ">= 0", self.lr_decay)?;
        check(self.weight_decay >= 0.0, "weight_decay", ">= 0", self.weight_decay)?;
        check(
            self.initial_accumulator_value >= 0.0,
            "initial_accumulator_value",
            ">= 0",
            self.initial_accumulator_value,
        )?;
        check(self.eps >= 0.0, "eps", ">= 0", self.eps)
    }
}

/// The state of one parameter under [`Adagrad`], with PyTorch's names.
#[derive(Clone, Debug)]
pub struct AdagradState<E: Float> {
    /// Updates done.
    pub step: u64,
    /// The running sum of g² (`sum`), starting at `initial_accumulator_value`.
    pub sum: Tensor<E>,
}

/// The update rule of [`Adagrad`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AdagradRule;

/// Adagrad (Duchi et al. 2011), like `torch.optim.Adagrad`.
///
/// ```text
/// input: γ (lr), θ₀ (params), f(θ) (objective), λ (weight decay),
///        τ (initial accumulator value), η (lr decay), ε (eps), maximize
/// initialize: state_sum₀ ← τ
/// for t = 1 to ... do
///     g_t ← ∇_θ f_t(θ_{t-1})
///     if maximize: g_t ← -g_t
///     γ̃ ← γ / (1 + (t - 1) η)
///     if λ ≠ 0: g_t ← g_t + λ θ_{t-1}
///     state_sum_t ← state_sum_{t-1} + g_t²
///     θ_t ← θ_{t-1} - γ̃ g_t / (√state_sum_t + ε)
/// return θ_t
/// ```
///
/// **Differs from PyTorch**: PyTorch creates the state in the constructor, kiln on a
/// parameter's first step (same values). Sparse gradients are not supported. The update is one
/// pass over (θ, g, state_sum): no step after the first allocates.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{Adagrad, AdagradConfig, Optimizer};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
/// let mut opt = Adagrad::new(vec![w.clone()], AdagradConfig { lr: 1.0, eps: 0.0, ..Default::default() });
/// for g in [3.0, 4.0] {
///     w.set_grad(Some(Tensor::from_vec(vec![g], &[1])));
///     opt.step();
/// }
/// // -3/3 - 4/5
/// assert!((w.item() + 1.8).abs() < 1e-12);
/// ```
pub type Adagrad<E = f32> = RuleOptimizer<E, AdagradRule>;

impl<E: Float> UpdateRule<E> for AdagradRule {
    const NAME: &'static str = "Adagrad";
    type Config = AdagradConfig;
    type State = AdagradState<E>;

    fn init_state(c: &AdagradConfig, param: &Tensor<E>) -> AdagradState<E> {
        AdagradState { step: 0, sum: Tensor::full(param.shape(), E::from_f64(c.initial_accumulator_value)) }
    }

    fn update(c: &AdagradConfig, param: &mut Tensor<E>, grad: &Tensor<E>, s: &mut AdagradState<E>) {
        s.step += 1;
        let clr = E::from_f64(c.lr / (1.0 + (s.step as f64 - 1.0) * c.lr_decay));
        let k =
            AdagradScalars { clr, sign: sign(c.maximize), wd: E::from_f64(c.weight_decay), eps: E::from_f64(c.eps) };
        let p = param.as_mut_slice();
        let sum = s.sum.as_mut_slice();
        with_slice(grad, |g| dispatch!(adagrad_pass(&k, p, sum, g); [c.weight_decay != 0.0]))
    }

    fn save_state(s: &AdagradState<E>) -> ParamState<E> {
        ParamState::new(Some(s.step)).with("sum", &s.sum)
    }

    fn load_state(_: &AdagradConfig, s: &mut ParamState<E>) -> Result<AdagradState<E>, MissingKey> {
        Ok(AdagradState { step: s.take_step()?, sum: s.take("sum")? })
    }
}

/// The per-step scalars of an Adagrad update, in the parameter's type.
struct AdagradScalars<E> {
    clr: E,
    sign: E,
    wd: E,
    eps: E,
}

fn adagrad_pass<E: Float, const L2: bool>(k: &AdagradScalars<E>, p: &mut [E], sum: &mut [E], g: &[E]) {
    for_chunks([p, sum], g, &|[p, sum], g| {
        for ((p, sum), &g) in p.iter_mut().zip(sum).zip(g) {
            let g = grad_of::<E, L2>(g, *p, k.sign, k.wd);
            *sum += E::one() * g * g;
            let std = sum.sqrt() + k.eps;
            *p += -k.clr * g / std;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Optimizer;
    use kiln_autograd::Var;

    #[test]
    fn lr_decay_and_initial_accumulator_by_hand() {
        let w = Var::param(Tensor::from_vec(vec![0.0f64], &[1]));
        let cfg =
            AdagradConfig { lr: 1.0, lr_decay: 1.0, initial_accumulator_value: 7.0, eps: 0.0, ..Default::default() };
        let mut opt = Adagrad::new(vec![w.clone()], cfg);
        for _ in 0..2 {
            w.set_grad(Some(Tensor::from_vec(vec![3.0], &[1])));
            opt.step();
        }
        // step 1: sum 16, θ = -3/4; step 2: γ̃ = 1/2, sum 25, θ -= 0.5 * 3/5
        assert!((w.item() + 0.75 + 0.3).abs() < 1e-15);
        assert_eq!(opt.state(&w).unwrap().sum.item(), 25.0);
    }
}
