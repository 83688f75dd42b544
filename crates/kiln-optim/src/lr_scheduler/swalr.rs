//! [`SWALR`]: the learning rate of stochastic weight averaging, annealed to a constant.

use std::f64::consts::PI;

use super::{current_lrs, AnnealStrategy, LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// Anneals each group's learning rate from its current value to `swa_lr` over `anneal_epochs`
/// epochs, then keeps it there, like `torch.optim.swa_utils.SWALR` (Izmailov et al. 2018,
/// "Averaging Weights Leads to Wider Optima and Better Generalization").
///
/// PyTorch's chainable form, with `s` the number of steps taken (0 in the constructor; at
/// least 1 when `anneal_epochs = 0`), `T = max(1, anneal_epochs)` and the anneal function
/// `f(t) = (1 - cos(π t)) / 2` (cosine) or `f(t) = t` (linear):
///
/// ```text
/// α' = f(clamp((s - 1) / T, 0, 1))                 the previous step's weight
/// η₀ = swa_lr               if α' = 1
///      (η - α' swa_lr) / (1 - α')   otherwise      the learning rate the anneal started from
/// α  = f(clamp(s / T, 0, 1))
/// η ← swa_lr · α + η₀ · (1 - α)
/// ```
///
/// The start value is recovered from the current learning rate each step, so SWALR takes over
/// from whatever schedule ran before it (build it at the epoch SWA starts).
///
/// **Differs from PyTorch**: `swa_lr` is one value per group given as a slice (PyTorch takes
/// a float or a list); it lives in the scheduler, not in the optimiser's groups.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{AnnealStrategy, LRScheduler, SWALR};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 1.0, ..Default::default() });
/// let mut sched = SWALR::new(&mut opt, &[0.1], 2, AnnealStrategy::Linear);
/// assert_eq!(opt.lr(), 1.0); // epoch 0: the anneal starts at the current rate
/// sched.step(&mut opt);
/// assert!((opt.lr() - 0.55).abs() < 1e-12); // half way
/// sched.step(&mut opt);
/// sched.step(&mut opt);
/// assert!((opt.lr() - 0.1).abs() < 1e-12); // then constant
/// ```
pub struct SWALR {
    base: SchedulerBase,
    swa_lrs: Vec<f64>,
    anneal_epochs: usize,
    strategy: AnnealStrategy,
}

impl SWALR {
    /// Attaches to `opt` and sets epoch 0's learning rates (unchanged, unless
    /// `anneal_epochs = 0`, which jumps to `swa_lr` at once). `swa_lrs` holds one rate for
    /// every group, or a single rate for all. PyTorch's defaults are `anneal_epochs = 10` and
    /// the cosine strategy.
    ///
    /// **Panics** if `swa_lrs` has neither one element nor one per group, or a rate is
    /// negative or not finite.
    pub fn new(opt: &mut dyn LrGroups, swa_lrs: &[f64], anneal_epochs: usize, strategy: AnnealStrategy) -> Self {
        let n = opt.num_param_groups();
        let swa_lrs = match swa_lrs.len() {
            1 => vec![swa_lrs[0]; n],
            len if len == n => swa_lrs.to_vec(),
            len => panic!("SWALR: expected 1 or {n} values for swa_lr (one per group), got {len}"),
        };
        for lr in &swa_lrs {
            assert!(lr.is_finite() && *lr >= 0.0, "SWALR: swa_lr must be finite and >= 0, got {lr}");
        }
        let mut s = SWALR { base: SchedulerBase::attach(opt), swa_lrs, anneal_epochs, strategy };
        s.initial_step(opt);
        s
    }

    /// The rates annealed to, one per group.
    pub fn swa_lrs(&self) -> &[f64] {
        &self.swa_lrs
    }

    fn anneal(&self, t: f64) -> f64 {
        match self.strategy {
            AnnealStrategy::Cos => (1.0 - (PI * t).cos()) / 2.0,
            AnnealStrategy::Linear => t,
        }
    }
}

impl LRScheduler for SWALR {
    fn name(&self) -> &'static str {
        "SWALR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, _is_initial: bool) -> Vec<f64> {
        let mut step = self.base.step_count as i64 - 1;
        if self.anneal_epochs == 0 {
            step = step.max(1);
        }
        let t_max = self.anneal_epochs.max(1) as f64;
        let prev_alpha = self.anneal(((step - 1) as f64 / t_max).clamp(0.0, 1.0));
        let alpha = self.anneal((step as f64 / t_max).clamp(0.0, 1.0));
        current_lrs(opt)
            .into_iter()
            .zip(&self.swa_lrs)
            .map(|(lr, &swa_lr)| {
                let start = if prev_alpha == 1.0 { swa_lr } else { (lr - prev_alpha * swa_lr) / (1.0 - prev_alpha) };
                swa_lr * alpha + start * (1.0 - alpha)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Optimizer, SGDConfig, SGD};
    use kiln_autograd::Var;
    use kiln_tensor::Tensor;

    fn sgd(lr: f64) -> SGD<f64> {
        SGD::new(vec![Var::param(Tensor::zeros(&[1]))], SGDConfig { lr, ..Default::default() })
    }

    #[test]
    fn cosine_reaches_swa_lr_and_stays() {
        let mut opt = sgd(0.5);
        let mut s = SWALR::new(&mut opt, &[0.05], 4, AnnealStrategy::Cos);
        let mut lrs = vec![opt.lr()];
        for _ in 0..8 {
            s.step(&mut opt);
            lrs.push(opt.lr());
        }
        // closed form: 0.05 α(t) + 0.5 (1 - α(t)), t = e / 4
        for (e, lr) in lrs.iter().enumerate() {
            let t = (e as f64 / 4.0).min(1.0);
            let a = (1.0 - (PI * t).cos()) / 2.0;
            assert!((lr - (0.05 * a + 0.5 * (1.0 - a))).abs() < 1e-14, "epoch {e}: {lr}");
        }
        assert_eq!(lrs[4..], [0.05; 5]);
        assert_eq!(s.get_last_lr(), &[0.05]);
    }

    #[test]
    fn zero_anneal_epochs_jump_at_once() {
        let mut opt = sgd(0.5);
        let mut s = SWALR::new(&mut opt, &[0.01], 0, AnnealStrategy::Linear);
        assert_eq!(opt.lr(), 0.01);
        s.step(&mut opt);
        assert_eq!(opt.lr(), 0.01);
    }

    #[test]
    #[should_panic(expected = "SWALR: expected 1 or 1 values for swa_lr (one per group), got 2")]
    fn wrong_number_of_rates() {
        let _ = SWALR::new(&mut sgd(0.5), &[0.1, 0.2], 3, AnnealStrategy::Cos);
    }
}
