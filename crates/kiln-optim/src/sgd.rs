//! Stochastic gradient descent, optionally with momentum: [`SGD`].

use kiln_tensor::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::elementwise::{dispatch, for_chunks, grad_of, sign, with_slice};
use crate::optimizer::{check, GroupConfig, MissingKey, ParamState, RuleOptimizer, UpdateRule};

/// The hyper-parameters of [`SGD`], with PyTorch's defaults (`torch.optim.SGD` has no default
/// `lr`; kiln's is its usual 1e-3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SGDConfig {
    /// Learning rate γ.
    pub lr: f64,
    /// Momentum factor μ (default 0: plain SGD).
    pub momentum: f64,
    /// Dampening τ of the momentum (default 0).
    pub dampening: f64,
    /// L2 penalty λ (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false); needs `momentum > 0` and `dampening == 0`.
    pub nesterov: bool,
    /// Maximise the objective instead of minimising it (default false).
    pub maximize: bool,
}

impl Default for SGDConfig {
    fn default() -> Self {
        SGDConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, maximize: false }
    }
}

impl GroupConfig for SGDConfig {
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
        check(self.momentum >= 0.0, "momentum", ">= 0", self.momentum)?;
        check(self.weight_decay >= 0.0, "weight_decay", ">= 0", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(format!(
                "Nesterov momentum requires a momentum and zero dampening, got momentum {} and dampening {}",
                self.momentum, self.dampening
            ));
        }
        Ok(())
    }
}

/// The state of one parameter under [`SGD`].
#[derive(Clone, Debug)]
pub struct SGDState<E: Float> {
    /// The momentum buffer **b** (PyTorch's `momentum_buffer`), made on the first step with
    /// a nonzero momentum.
    pub momentum_buffer: Option<Tensor<E>>,
}

/// The update rule of [`SGD`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SGDRule;

/// Stochastic gradient descent, optionally with momentum (heavy ball or Nesterov), like
/// `torch.optim.SGD`.
///
/// ```text
/// input: γ (lr), θ₀ (params), f(θ) (objective), λ (weight decay),
///        μ (momentum), τ (dampening), nesterov, maximize
/// for t = 1 to ... do
///     g_t ← ∇_θ f_t(θ_{t-1})
///     if maximize: g_t ← -g_t
///     if λ ≠ 0:    g_t ← g_t + λ θ_{t-1}
///     if μ ≠ 0:
///         if t > 1: b_t ← μ b_{t-1} + (1 - τ) g_t
///         else:     b_t ← g_t
///         if nesterov: g_t ← g_t + μ b_t
///         else:        g_t ← b_t
///     θ_t ← θ_{t-1} - γ g_t
/// return θ_t
/// ```
///
/// **Differs from PyTorch**: only in rounding (see [the crate docs](crate#agreement-with-pytorch)).
/// PyTorch's documentation writes `maximize` as `θ_t ← θ_{t-1} + γ g_t` at the end; its
/// implementation (which this follows, and the golden tests check) negates the gradient first,
/// so weight decay still shrinks the weights when maximising. kiln's `SGDConfig::default()`
/// has `lr = 1e-3` where PyTorch requires an `lr`.
///
/// Every step after a parameter's first allocates nothing: the momentum buffer is updated in
/// place in the same pass that updates the parameter.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::from_vec(vec![1.0f64, 2.0], &[2]));
/// let cfg = SGDConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
/// let mut opt = SGD::new(vec![w.clone()], cfg);
/// for _ in 0..2 {
///     w.set_grad(Some(Tensor::from_vec(vec![1.0, -1.0], &[2])));
///     opt.step();
/// }
/// // b_1 = g, b_2 = 0.9 g + g = 1.9 g: θ = θ₀ - 0.1 (1 + 1.9) g
/// let v = w.value().to_vec();
/// assert!((v[0] - 0.71).abs() < 1e-12 && (v[1] - 2.29).abs() < 1e-12);
/// ```
pub type SGD<E = f32> = RuleOptimizer<E, SGDRule>;

impl<E: Float> UpdateRule<E> for SGDRule {
    const NAME: &'static str = "SGD";
    type Config = SGDConfig;
    type State = SGDState<E>;

    fn init_state(_: &SGDConfig, _: &Tensor<E>) -> SGDState<E> {
        SGDState { momentum_buffer: None }
    }

    fn update(c: &SGDConfig, param: &mut Tensor<E>, grad: &Tensor<E>, state: &mut SGDState<E>) {
        let k = SGDScalars {
            lr: E::from_f64(c.lr),
            sign: sign(c.maximize),
            wd: E::from_f64(c.weight_decay),
            mu: E::from_f64(c.momentum),
            // b_1 = g_1: from a zero buffer, 0 · μ + 1 · g is exactly g
            one_minus_tau: E::from_f64(if state.momentum_buffer.is_none() { 1.0 } else { 1.0 - c.dampening }),
        };
        let l2 = c.weight_decay != 0.0;
        if c.momentum != 0.0 && state.momentum_buffer.is_none() {
            state.momentum_buffer = Some(Tensor::zeros(param.shape()));
        }
        let p = param.as_mut_slice();
        with_slice(grad, |g| match state.momentum_buffer.as_mut().filter(|_| c.momentum != 0.0) {
            None => dispatch!(sgd_pass(&k, p, g); [l2]),
            Some(b) => dispatch!(sgd_momentum_pass(&k, p, b.as_mut_slice(), g); [l2, c.nesterov]),
        })
    }

    fn save_state(s: &SGDState<E>) -> ParamState<E> {
        ParamState::new(None).with_opt("momentum_buffer", s.momentum_buffer.as_ref())
    }

    fn load_state(_: &SGDConfig, s: &mut ParamState<E>) -> Result<SGDState<E>, MissingKey> {
        Ok(SGDState { momentum_buffer: s.buffers.remove("momentum_buffer") })
    }
}

/// The per-step scalars of an SGD update, in the parameter's type.
struct SGDScalars<E> {
    lr: E,
    sign: E,
    wd: E,
    mu: E,
    one_minus_tau: E,
}

fn sgd_pass<E: Float, const L2: bool>(k: &SGDScalars<E>, p: &mut [E], g: &[E]) {
    for_chunks([p], g, &|[p], g| {
        for (p, &g) in p.iter_mut().zip(g) {
            let g = grad_of::<E, L2>(g, *p, k.sign, k.wd);
            *p += -k.lr * g;
        }
    })
}

fn sgd_momentum_pass<E: Float, const L2: bool, const NESTEROV: bool>(
    k: &SGDScalars<E>,
    p: &mut [E],
    b: &mut [E],
    g: &[E],
) {
    for_chunks([p, b], g, &|[p, b], g| {
        for ((p, b), &g) in p.iter_mut().zip(b).zip(g) {
            let g = grad_of::<E, L2>(g, *p, k.sign, k.wd);
            *b = *b * k.mu + k.one_minus_tau * g;
            let d = if NESTEROV { g + k.mu * *b } else { *b };
            *p += -k.lr * d;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Optimizer;
    use kiln_autograd::Var;

    fn var(v: &[f64]) -> Var<f64> {
        Var::param(Tensor::from_vec(v.to_vec(), &[v.len()]))
    }

    #[test]
    fn plain_sgd_is_theta_minus_lr_grad() {
        let w = var(&[1.0, 2.0]);
        let mut opt = SGD::new(vec![w.clone()], SGDConfig { lr: 0.5, ..Default::default() });
        w.set_grad(Some(Tensor::from_vec(vec![2.0, -4.0], &[2])));
        opt.step();
        assert_eq!(w.value().to_vec(), vec![0.0, 4.0]);
        assert!(opt.state(&w).unwrap().momentum_buffer.is_none());
    }

    #[test]
    fn nesterov_weight_decay_and_maximize_by_hand() {
        // θ=1, g=2, λ=0.5, μ=0.5, nesterov; maximize flips g to -2, then -2 + 0.5 = -1.5
        let w = var(&[1.0]);
        let cfg = SGDConfig {
            lr: 0.1,
            momentum: 0.5,
            weight_decay: 0.5,
            nesterov: true,
            maximize: true,
            ..Default::default()
        };
        let mut opt = SGD::new(vec![w.clone()], cfg);
        w.set_grad(Some(Tensor::from_vec(vec![2.0], &[1])));
        opt.step();
        // b = -1.5, d = -1.5 + 0.5 * -1.5 = -2.25, θ = 1 + 0.225
        assert!((w.item() - 1.225).abs() < 1e-15);
    }

    #[test]
    #[should_panic(expected = "SGD: Nesterov momentum requires a momentum and zero dampening")]
    fn nesterov_without_momentum_panics() {
        let _ = SGD::new(vec![var(&[1.0])], SGDConfig { nesterov: true, ..Default::default() });
    }

    #[test]
    #[should_panic(expected = "SGD: lr must be >= 0, got -1")]
    fn negative_lr_panics() {
        let _ = SGD::new(vec![var(&[1.0])], SGDConfig { lr: -1.0, ..Default::default() });
    }
}
