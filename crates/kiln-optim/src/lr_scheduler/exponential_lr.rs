//! [`ExponentialLR`]: decay by `gamma` every epoch.

use super::{current_lrs, LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// Multiplies each group's learning rate by `gamma` every epoch, like
/// `torch.optim.lr_scheduler.ExponentialLR`.
///
/// Chainable form: `lr ← lr · γ`; closed form: `lr = base_lr · γ^last_epoch`.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{ExponentialLR, LRScheduler};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 1.0, ..Default::default() });
/// let mut sched = ExponentialLR::new(&mut opt, 0.5);
/// sched.step(&mut opt);
/// sched.step(&mut opt);
/// assert_eq!(opt.lr(), 0.25);
/// ```
pub struct ExponentialLR {
    base: SchedulerBase,
    gamma: f64,
}

impl ExponentialLR {
    /// Attaches to `opt` and sets epoch 0's learning rates (unchanged).
    pub fn new(opt: &mut dyn LrGroups, gamma: f64) -> Self {
        let mut s = ExponentialLR { base: SchedulerBase::attach(opt), gamma };
        s.initial_step(opt);
        s
    }
}

impl LRScheduler for ExponentialLR {
    fn name(&self) -> &'static str {
        "ExponentialLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, is_initial: bool) -> Vec<f64> {
        let lrs = current_lrs(opt);
        if is_initial {
            return lrs;
        }
        lrs.into_iter().map(|lr| lr * self.gamma).collect()
    }
    fn closed_form_lr(&self) -> Option<Vec<f64>> {
        Some(self.base.base_lrs.iter().map(|b| b * self.gamma.powf(self.base.last_epoch as f64)).collect())
    }
}
