//! [`LinearLR`]: a linear change of the learning-rate factor (warm-up).

use super::{current_lrs, LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// Multiplies each group's base learning rate by a factor that moves linearly from
/// `start_factor` to `end_factor` over `total_iters` epochs, then stays, like
/// `torch.optim.lr_scheduler.LinearLR` (a warm-up when `start_factor < 1`).
///
/// Chainable form: at epoch 0 `lr ← lr · s`; for `0 < t ≤ T`,
/// `lr ← lr · (1 + (e - s) / (T s + (t - 1)(e - s)))`; closed form
/// `lr = base_lr · (s + (e - s) · min(T, t) / T)`.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{LRScheduler, LinearLR};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 0.1, ..Default::default() });
/// let mut sched = LinearLR::new(&mut opt, 0.5, 1.0, 2);
/// assert!((opt.lr() - 0.05).abs() < 1e-15);
/// sched.step(&mut opt);
/// assert!((opt.lr() - 0.075).abs() < 1e-15);
/// sched.step(&mut opt);
/// sched.step(&mut opt);
/// assert!((opt.lr() - 0.1).abs() < 1e-15);
/// ```
pub struct LinearLR {
    base: SchedulerBase,
    start_factor: f64,
    end_factor: f64,
    total_iters: usize,
}

impl LinearLR {
    /// Attaches to `opt` and sets epoch 0's learning rates (`base_lr · start_factor`).
    /// PyTorch's defaults are `start_factor = 1/3`, `end_factor = 1`, `total_iters = 5`.
    ///
    /// **Panics** unless `0 < start_factor <= 1` and `0 <= end_factor <= 1`, or if
    /// `total_iters` is 0.
    pub fn new(opt: &mut dyn LrGroups, start_factor: f64, end_factor: f64, total_iters: usize) -> Self {
        assert!(
            start_factor > 0.0 && start_factor <= 1.0,
            "LinearLR: start_factor must be in (0, 1], got {start_factor}"
        );
        assert!((0.0..=1.0).contains(&end_factor), "LinearLR: end_factor must be in [0, 1], got {end_factor}");
        assert!(total_iters > 0, "LinearLR: total_iters must be > 0, got 0");
        let mut s = LinearLR { base: SchedulerBase::attach(opt), start_factor, end_factor, total_iters };
        s.initial_step(opt);
        s
    }
}

impl LRScheduler for LinearLR {
    fn name(&self) -> &'static str {
        "LinearLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, is_initial: bool) -> Vec<f64> {
        let lrs = current_lrs(opt);
        let (s, e, t) = (self.start_factor, self.end_factor, self.total_iters as f64);
        let epoch = self.base.last_epoch;
        if epoch == 0 {
            return lrs.into_iter().map(|lr| lr * s).collect();
        }
        if is_initial || epoch > self.total_iters as i64 {
            return lrs;
        }
        let factor = 1.0 + (e - s) / (t * s + (epoch - 1) as f64 * (e - s));
        lrs.into_iter().map(|lr| lr * factor).collect()
    }
    fn closed_form_lr(&self) -> Option<Vec<f64>> {
        let (s, e) = (self.start_factor, self.end_factor);
        let t = self.total_iters as i64;
        let done = t.min(self.base.last_epoch) as f64;
        Some(self.base.base_lrs.iter().map(|b| b * (s + (e - s) * done / t as f64)).collect())
    }
}
