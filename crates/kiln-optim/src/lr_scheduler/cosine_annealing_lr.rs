//! [`CosineAnnealingLR`]: cosine annealing from the base learning rate to `eta_min`.

use std::f64::consts::PI;

use super::{current_lrs, LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// Anneals each group's learning rate along a cosine from its base value to `eta_min` over
/// `t_max` epochs (SGDR without restarts), like `torch.optim.lr_scheduler.CosineAnnealingLR`.
///
/// Chainable form (PyTorch's):
///
/// ```text
/// η_{t+1} = η_min + (η_t - η_min) · (1 + cos((t + 1) π / T_max)) / (1 + cos(t π / T_max))
/// ```
///
/// and, where the cosine restarts its rise (`(t - 1 - T_max) mod 2T_max = 0`),
/// `η ← η + (η_base - η_min)(1 - cos(π / T_max)) / 2`; closed form
/// `η_t = η_min + (η_base - η_min)(1 + cos(t π / T_max)) / 2`. Past `T_max` the learning rate
/// rises again, as PyTorch's does.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{CosineAnnealingLR, LRScheduler};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 1.0, ..Default::default() });
/// let mut sched = CosineAnnealingLR::new(&mut opt, 4, 0.0);
/// for _ in 0..2 {
///     sched.step(&mut opt);
/// }
/// assert!((opt.lr() - 0.5).abs() < 1e-12); // half way down
/// ```
pub struct CosineAnnealingLR {
    base: SchedulerBase,
    t_max: usize,
    eta_min: f64,
}

impl CosineAnnealingLR {
    /// Attaches to `opt` and sets epoch 0's learning rates (unchanged).
    ///
    /// **Panics** if `t_max` is 0.
    pub fn new(opt: &mut dyn LrGroups, t_max: usize, eta_min: f64) -> Self {
        assert!(t_max > 0, "CosineAnnealingLR: T_max must be > 0, got 0");
        let mut s = CosineAnnealingLR { base: SchedulerBase::attach(opt), t_max, eta_min };
        s.initial_step(opt);
        s
    }
}

impl LRScheduler for CosineAnnealingLR {
    fn name(&self) -> &'static str {
        "CosineAnnealingLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, is_initial: bool) -> Vec<f64> {
        let lrs = current_lrs(opt);
        let (e, t_max, eta_min) = (self.base.last_epoch, self.t_max as i64, self.eta_min);
        let tm = self.t_max as f64;
        if is_initial {
            return lrs;
        }
        if self.base.step_count == 1 && e > 0 {
            return self
                .base
                .base_lrs
                .iter()
                .map(|b| eta_min + (b - eta_min) * (1.0 + (e as f64 * PI / tm).cos()) / 2.0)
                .collect();
        }
        if (e - 1 - t_max).rem_euclid(2 * t_max) == 0 {
            return lrs
                .iter()
                .zip(&self.base.base_lrs)
                .map(|(lr, b)| lr + (b - eta_min) * (1.0 - (PI / tm).cos()) / 2.0)
                .collect();
        }
        let ratio = (1.0 + (PI * e as f64 / tm).cos()) / (1.0 + (PI * (e - 1) as f64 / tm).cos());
        lrs.into_iter().map(|lr| ratio * (lr - eta_min) + eta_min).collect()
    }
    fn closed_form_lr(&self) -> Option<Vec<f64>> {
        let e = self.base.last_epoch as f64;
        let tm = self.t_max as f64;
        let eta_min = self.eta_min;
        Some(self.base.base_lrs.iter().map(|b| eta_min + (b - eta_min) * (1.0 + (PI * e / tm).cos()) / 2.0).collect())
    }
}
