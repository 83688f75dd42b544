//! [`OneCycleLR`]: the 1cycle policy, with momentum cycling.

use std::f64::consts::PI;

use super::{LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// How [`OneCycleLR`] moves between two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnealStrategy {
    /// `end + (start - end) / 2 · (1 + cos(π · pct))` (PyTorch's default).
    Cos,
    /// `(end - start) · pct + start`.
    Linear,
}

/// The optional arguments of [`OneCycleLR`], with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleLRConfig {
    /// Fraction of the cycle spent raising the learning rate (default 0.3).
    pub pct_start: f64,
    /// Annealing shape (default cosine).
    pub anneal_strategy: AnnealStrategy,
    /// Cycle the momentum (SGD/RMSprop `momentum`, Adam `beta1`) inversely to the learning
    /// rate (default true).
    pub cycle_momentum: bool,
    /// Lowest momentum, at the peak learning rate (default 0.85).
    pub base_momentum: f64,
    /// Highest momentum, at the start (default 0.95).
    pub max_momentum: f64,
    /// `initial_lr = max_lr / div_factor` (default 25).
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor` (default 1e4).
    pub final_div_factor: f64,
    /// Three phases (up, down to `initial_lr`, down to `min_lr`) as in the paper, instead of
    /// fastai's two (default false).
    pub three_phase: bool,
}

impl Default for OneCycleLRConfig {
    fn default() -> Self {
        OneCycleLRConfig {
            pct_start: 0.3,
            anneal_strategy: AnnealStrategy::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Level {
    InitialLr,
    MaxLr,
    MinLr,
    MaxMomentum,
    BaseMomentum,
}

#[derive(Clone, Copy, Debug)]
struct Phase {
    end_step: f64,
    start_lr: Level,
    end_lr: Level,
    start_momentum: Level,
    end_momentum: Level,
}

/// The 1cycle policy (Smith & Topin, "Super-Convergence"), like
/// `torch.optim.lr_scheduler.OneCycleLR`: the learning rate rises from `max_lr / div_factor`
/// to `max_lr` over `pct_start` of `total_steps`, then falls to `initial_lr /
/// final_div_factor`; the momentum moves the other way between `max_momentum` and
/// `base_momentum`. Step it after every batch.
///
/// At step `t` in a phase from step `a` to `b`, `pct = (t - a) / (b - a)` and each value is
/// `anneal(start, end, pct)`. The constructor sets every group's `initial_lr` and, with
/// `cycle_momentum`, its momentum to `max_momentum`. Stepping past `total_steps` panics, as
/// PyTorch raises (`total_steps` steps after the constructor's are allowed; the last one
/// extrapolates).
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{LRScheduler, OneCycleLR, OneCycleLRConfig};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 0.1, momentum: 0.9, ..Default::default() });
/// let mut sched = OneCycleLR::new(&mut opt, 1.0, 10, OneCycleLRConfig::default());
/// assert!((opt.lr() - 0.04).abs() < 1e-15); // max_lr / 25
/// assert_eq!(opt.param_groups()[0].config.momentum, 0.95);
/// for _ in 0..2 {
///     sched.step(&mut opt);
/// }
/// assert!((opt.lr() - 1.0).abs() < 1e-15); // the peak, at step pct_start * 10 - 1
/// assert!((opt.param_groups()[0].config.momentum - 0.85).abs() < 1e-15);
/// ```
pub struct OneCycleLR {
    base: SchedulerBase,
    total_steps: usize,
    phases: Vec<Phase>,
    anneal: AnnealStrategy,
    cycle_momentum: bool,
    initial_lrs: Vec<f64>,
    max_lrs: Vec<f64>,
    min_lrs: Vec<f64>,
    max_momentum: f64,
    base_momentum: f64,
}

impl OneCycleLR {
    /// The same `max_lr` for every group.
    ///
    /// **Panics** as [`with_max_lrs`](Self::with_max_lrs).
    pub fn new(opt: &mut dyn LrGroups, max_lr: f64, total_steps: usize, config: OneCycleLRConfig) -> Self {
        let n = opt.num_param_groups();
        Self::with_max_lrs(opt, vec![max_lr; n], total_steps, config)
    }

    /// One `max_lr` per group. For `epochs` of `steps_per_epoch` batches, `total_steps =
    /// epochs * steps_per_epoch`.
    ///
    /// **Panics** if `total_steps` is 0, `pct_start` is outside [0, 1], there is not one
    /// `max_lr` per group, or `cycle_momentum` is set for an optimiser without momentum
    /// (Adagrad).
    pub fn with_max_lrs(
        opt: &mut dyn LrGroups,
        max_lrs: Vec<f64>,
        total_steps: usize,
        config: OneCycleLRConfig,
    ) -> Self {
        assert!(total_steps > 0, "OneCycleLR: expected positive integer total_steps, got 0");
        assert!(
            (0.0..=1.0).contains(&config.pct_start),
            "OneCycleLR: expected pct_start between 0 and 1, got {}",
            config.pct_start
        );
        let n = opt.num_param_groups();
        assert_eq!(
            max_lrs.len(),
            n,
            "OneCycleLR: max_lr must have one value per parameter group: {} values, {n} groups",
            max_lrs.len()
        );
        let total = total_steps as f64;
        let p = config.pct_start;
        use Level::*;
        let phases = if config.three_phase {
            vec![
                Phase {
                    end_step: p * total - 1.0,
                    start_lr: InitialLr,
                    end_lr: MaxLr,
                    start_momentum: MaxMomentum,
                    end_momentum: BaseMomentum,
                },
                Phase {
                    end_step: 2.0 * p * total - 2.0,
                    start_lr: MaxLr,
                    end_lr: InitialLr,
                    start_momentum: BaseMomentum,
                    end_momentum: MaxMomentum,
                },
                Phase {
                    end_step: total - 1.0,
                    start_lr: InitialLr,
                    end_lr: MinLr,
                    start_momentum: MaxMomentum,
                    end_momentum: MaxMomentum,
                },
            ]
        } else {
            vec![
                Phase {
                    end_step: p * total - 1.0,
                    start_lr: InitialLr,
                    end_lr: MaxLr,
                    start_momentum: MaxMomentum,
                    end_momentum: BaseMomentum,
                },
                Phase {
                    end_step: total - 1.0,
                    start_lr: MaxLr,
                    end_lr: MinLr,
                    start_momentum: BaseMomentum,
                    end_momentum: MaxMomentum,
                },
            ]
        };
        let initial_lrs: Vec<f64> = max_lrs.iter().map(|m| m / config.div_factor).collect();
        let min_lrs = initial_lrs.iter().map(|i| i / config.final_div_factor).collect();
        for (i, &lr) in initial_lrs.iter().enumerate() {
            opt.set_group_initial_lr(i, lr);
        }
        if config.cycle_momentum {
            for i in 0..n {
                assert!(
                    opt.group_momentum(i).is_some(),
                    "OneCycleLR: optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
                );
                opt.set_group_momentum(i, config.max_momentum);
            }
        }
        let mut s = OneCycleLR {
            base: SchedulerBase::attach(opt),
            total_steps,
            phases,
            anneal: config.anneal_strategy,
            cycle_momentum: config.cycle_momentum,
            initial_lrs,
            max_lrs,
            min_lrs,
            max_momentum: config.max_momentum,
            base_momentum: config.base_momentum,
        };
        s.initial_step(opt);
        s
    }

    fn level(&self, group: usize, l: Level) -> f64 {
        match l {
            Level::InitialLr => self.initial_lrs[group],
            Level::MaxLr => self.max_lrs[group],
            Level::MinLr => self.min_lrs[group],
            Level::MaxMomentum => self.max_momentum,
            Level::BaseMomentum => self.base_momentum,
        }
    }

    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        match self.anneal {
            AnnealStrategy::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }
}

impl LRScheduler for OneCycleLR {
    fn name(&self) -> &'static str {
        "OneCycleLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, _is_initial: bool) -> Vec<f64> {
        let step_num = self.base.last_epoch;
        assert!(
            step_num <= self.total_steps as i64,
            "OneCycleLR: tried to step {step_num} times; the specified number of total steps is {}",
            self.total_steps
        );
        let t = step_num as f64;
        let mut lrs = Vec::with_capacity(opt.num_param_groups());
        for g in 0..opt.num_param_groups() {
            let mut start_step = 0.0;
            for (i, ph) in self.phases.iter().enumerate() {
                if t <= ph.end_step || i == self.phases.len() - 1 {
                    let pct = (t - start_step) / (ph.end_step - start_step);
                    lrs.push(self.anneal(self.level(g, ph.start_lr), self.level(g, ph.end_lr), pct));
                    if self.cycle_momentum {
                        let m = self.anneal(self.level(g, ph.start_momentum), self.level(g, ph.end_momentum), pct);
                        opt.set_group_momentum(g, m);
                    }
                    break;
                }
                start_step = ph.end_step;
            }
        }
        lrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adagrad, AdagradConfig, Adam, AdamConfig, Optimizer};
    use kiln_autograd::Var;
    use kiln_tensor::Tensor;

    fn adam() -> Adam<f64> {
        Adam::new(vec![Var::param(Tensor::zeros(&[1]))], AdamConfig::default())
    }

    #[test]
    fn cycles_adam_beta1_and_keeps_beta2() {
        let mut opt = adam();
        let cfg = OneCycleLRConfig { anneal_strategy: AnnealStrategy::Linear, ..Default::default() };
        let mut s = OneCycleLR::new(&mut opt, 1.0, 10, cfg);
        assert_eq!(opt.param_groups()[0].config.betas, (0.95, 0.999));
        // linear: phase 1 ends at step 2, so step 1 is half way
        s.step(&mut opt);
        let c = &opt.param_groups()[0].config;
        assert!((c.lr - (0.04 + 0.96 * 0.5)).abs() < 1e-15);
        assert!((c.betas.0 - 0.9).abs() < 1e-15);
        assert_eq!(c.betas.1, 0.999);
    }

    #[test]
    fn three_phases_by_hand() {
        let mut opt = adam();
        let cfg = OneCycleLRConfig {
            anneal_strategy: AnnealStrategy::Linear,
            three_phase: true,
            pct_start: 0.25,
            cycle_momentum: false,
            div_factor: 10.0,
            final_div_factor: 100.0,
            ..Default::default()
        };
        // phases end at steps 4 (max), 8 (back to initial), 19 (min)
        let mut s = OneCycleLR::new(&mut opt, 1.0, 20, cfg);
        let mut lrs = vec![opt.lr()];
        for _ in 0..19 {
            s.step(&mut opt);
            lrs.push(opt.lr());
        }
        let want = |t: usize| match t {
            0..=4 => 0.1 + 0.9 * t as f64 / 4.0,
            5..=8 => 1.0 - 0.9 * (t - 4) as f64 / 4.0,
            _ => 0.1 + (0.001 - 0.1) * (t - 8) as f64 / 11.0,
        };
        for (t, lr) in lrs.iter().enumerate() {
            assert!((lr - want(t)).abs() < 1e-12, "step {t}: {lr} vs {}", want(t));
        }
        assert_eq!(opt.param_groups()[0].config.betas.0, 0.9, "momentum untouched without cycling");
    }

    #[test]
    #[should_panic(expected = "OneCycleLR: tried to step 4 times; the specified number of total steps is 3")]
    fn stepping_past_total_steps_panics() {
        let mut opt = adam();
        let mut s = OneCycleLR::new(&mut opt, 1.0, 3, OneCycleLRConfig::default());
        for _ in 0..4 {
            s.step(&mut opt);
        }
    }

    #[test]
    #[should_panic(expected = "optimizer must support momentum or beta1")]
    fn cycling_momentum_needs_a_momentum() {
        let mut opt = Adagrad::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], AdagradConfig::default());
        let _ = OneCycleLR::new(&mut opt, 1.0, 3, OneCycleLRConfig::default());
    }
}
