//! [`MultiStepLR`]: decay by `gamma` at each milestone.

use std::collections::BTreeMap;

use super::{current_lrs, LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// Multiplies each group's learning rate by `gamma` each time the epoch reaches a milestone,
/// like `torch.optim.lr_scheduler.MultiStepLR`.
///
/// Chainable form: `lr ← lr · γ^count(last_epoch)` where `count` is how often `last_epoch` is
/// listed among the milestones; closed form: `lr = base_lr · γ^(milestones ≤ last_epoch)`.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{LRScheduler, MultiStepLR};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 1.0, ..Default::default() });
/// let mut sched = MultiStepLR::new(&mut opt, &[2, 4], 0.5);
/// let mut lrs = vec![];
/// for _ in 0..5 {
///     lrs.push(opt.lr());
///     sched.step(&mut opt);
/// }
/// assert_eq!(lrs, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
/// ```
pub struct MultiStepLR {
    base: SchedulerBase,
    /// milestone -> how often it is listed (PyTorch's `Counter`)
    milestones: BTreeMap<i64, u32>,
    gamma: f64,
}

impl MultiStepLR {
    /// Attaches to `opt` and sets epoch 0's learning rates.
    pub fn new(opt: &mut dyn LrGroups, milestones: &[usize], gamma: f64) -> Self {
        let mut counts = BTreeMap::new();
        for &m in milestones {
            *counts.entry(m as i64).or_insert(0) += 1;
        }
        let mut s = MultiStepLR { base: SchedulerBase::attach(opt), milestones: counts, gamma };
        s.initial_step(opt);
        s
    }
}

impl LRScheduler for MultiStepLR {
    fn name(&self) -> &'static str {
        "MultiStepLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, _is_initial: bool) -> Vec<f64> {
        let lrs = current_lrs(opt);
        match self.milestones.get(&self.base.last_epoch) {
            None => lrs,
            Some(&n) => lrs.into_iter().map(|lr| lr * self.gamma.powf(n as f64)).collect(),
        }
    }
    fn closed_form_lr(&self) -> Option<Vec<f64>> {
        let passed: u32 = self.milestones.range(..=self.base.last_epoch).map(|(_, n)| n).sum();
        Some(self.base.base_lrs.iter().map(|b| b * self.gamma.powf(passed as f64)).collect())
    }
}
