//! [`StepLR`]: decay by `gamma` every `step_size` epochs.

use super::{current_lrs, LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// Multiplies each group's learning rate by `gamma` every `step_size` epochs, like
/// `torch.optim.lr_scheduler.StepLR`.
///
/// Chainable form: `lr ← lr · γ` when `last_epoch > 0` and `last_epoch % step_size == 0`;
/// closed form: `lr = base_lr · γ^⌊last_epoch / step_size⌋`.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{LRScheduler, StepLR};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 0.05, ..Default::default() });
/// let mut sched = StepLR::new(&mut opt, 30, 0.1);
/// for _ in 0..30 {
///     sched.step(&mut opt);
/// }
/// assert!((opt.lr() - 0.005).abs() < 1e-15);
/// ```
pub struct StepLR {
    base: SchedulerBase,
    step_size: usize,
    gamma: f64,
}

impl StepLR {
    /// Attaches to `opt` and sets epoch 0's learning rates.
    ///
    /// **Panics** if `step_size` is 0.
    pub fn new(opt: &mut dyn LrGroups, step_size: usize, gamma: f64) -> Self {
        assert!(step_size > 0, "StepLR: step_size must be > 0, got 0");
        let mut s = StepLR { base: SchedulerBase::attach(opt), step_size, gamma };
        s.initial_step(opt);
        s
    }
}

impl LRScheduler for StepLR {
    fn name(&self) -> &'static str {
        "StepLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, _is_initial: bool) -> Vec<f64> {
        let e = self.base.last_epoch;
        let lrs = current_lrs(opt);
        if e == 0 || e % self.step_size as i64 != 0 {
            return lrs;
        }
        lrs.into_iter().map(|lr| lr * self.gamma).collect()
    }
    fn closed_form_lr(&self) -> Option<Vec<f64>> {
        let k = self.base.last_epoch.div_euclid(self.step_size as i64);
        Some(self.base.base_lrs.iter().map(|b| b * self.gamma.powf(k as f64)).collect())
    }
}
