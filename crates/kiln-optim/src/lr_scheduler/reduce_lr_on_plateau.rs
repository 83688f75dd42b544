//! [`ReduceLROnPlateau`]: cut the learning rate when a metric stops improving.

use std::collections::BTreeMap;

use super::{check_base, len_mismatch, SchedulerBase, SchedulerStateDict};
use crate::error::OptimError;
use crate::optimizer::LrGroups;

/// Whether the monitored metric should fall or rise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlateauMode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How `threshold` defines a significant improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdMode {
    /// Relative: better than `best · (1 ∓ threshold)`.
    Rel,
    /// Absolute: better than `best ∓ threshold`.
    Abs,
}

/// The arguments of [`ReduceLROnPlateau`], with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceLROnPlateauConfig {
    /// Minimise or maximise the metric (default `Min`).
    pub mode: PlateauMode,
    /// `new_lr = lr · factor` (default 0.1); must be < 1.
    pub factor: f64,
    /// Epochs without improvement tolerated before a cut (default 10).
    pub patience: usize,
    /// Smallest change that counts as an improvement (default 1e-4).
    pub threshold: f64,
    /// Relative or absolute threshold (default `Rel`).
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a cut before counting bad epochs again (default 0).
    pub cooldown: usize,
    /// Lower bound of every group's learning rate (default 0), unless `min_lrs` is given.
    pub min_lr: f64,
    /// One lower bound per group; empty to use `min_lr` for all (default empty).
    pub min_lrs: Vec<f64>,
    /// Cuts smaller than this are skipped (default 1e-8).
    pub eps: f64,
}

impl Default for ReduceLROnPlateauConfig {
    fn default() -> Self {
        ReduceLROnPlateauConfig {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            min_lrs: Vec::new(),
            eps: 1e-8,
        }
    }
}

/// Multiplies the learning rates by `factor` when a metric has not improved for more than
/// `patience` epochs, like `torch.optim.lr_scheduler.ReduceLROnPlateau`.
///
/// Each [`step`](Self::step) takes the epoch's metric: if it beats `best` by the threshold, it
/// becomes `best` and the bad-epoch count resets, else the count grows; during a cooldown bad
/// epochs are not counted; when the count exceeds `patience`, every group's learning rate
/// becomes `max(lr · factor, min_lr)` (unless that changes it by less than `eps`) and a
/// cooldown starts. It is not an [`LRScheduler`](super::LRScheduler): its step needs the
/// metric.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{ReduceLROnPlateau, ReduceLROnPlateauConfig};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 0.1, ..Default::default() });
/// let mut sched = ReduceLROnPlateau::new(&mut opt, ReduceLROnPlateauConfig { patience: 1, factor: 0.5, ..Default::default() });
/// for loss in [1.0, 0.9, 0.9, 0.9] {
///     sched.step(&mut opt, loss);
/// }
/// assert_eq!(opt.lr(), 0.05); // two epochs without improvement > patience 1
/// ```
#[derive(Clone, Debug)]
pub struct ReduceLROnPlateau {
    config: ReduceLROnPlateauConfig,
    min_lrs: Vec<f64>,
    best: f64,
    num_bad_epochs: usize,
    cooldown_counter: usize,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl ReduceLROnPlateau {
    /// Attaches to `opt`; the learning rates are not changed.
    ///
    /// **Panics** if `factor >= 1` or `min_lrs` is neither empty nor one per group.
    pub fn new(opt: &mut dyn LrGroups, config: ReduceLROnPlateauConfig) -> Self {
        assert!(config.factor < 1.0, "ReduceLROnPlateau: factor should be < 1.0, got {}", config.factor);
        let n = opt.num_param_groups();
        let min_lrs = if config.min_lrs.is_empty() {
            vec![config.min_lr; n]
        } else {
            assert_eq!(
                config.min_lrs.len(),
                n,
                "ReduceLROnPlateau: expected {n} min_lrs, got {}",
                config.min_lrs.len()
            );
            config.min_lrs.clone()
        };
        let last_lr = super::current_lrs(opt);
        let best = Self::worse(config.mode);
        ReduceLROnPlateau { config, min_lrs, best, num_bad_epochs: 0, cooldown_counter: 0, last_epoch: 0, last_lr }
    }

    fn worse(mode: PlateauMode) -> f64 {
        match mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        }
    }

    fn is_better(&self, a: f64, best: f64) -> bool {
        let t = self.config.threshold;
        match (self.config.mode, self.config.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }

    /// Records the epoch's metric and cuts the learning rates when it has plateaued.
    ///
    /// **Panics** if groups were added to the optimiser and `min_lrs` was given per group.
    pub fn step(&mut self, opt: &mut dyn LrGroups, metric: f64) {
        self.last_epoch += 1;
        if self.is_better(metric, self.best) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0; // bad epochs in cooldown do not count
        }
        if self.num_bad_epochs > self.config.patience {
            self.reduce_lr(opt);
            self.cooldown_counter = self.config.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lr = super::current_lrs(opt);
    }

    fn reduce_lr(&mut self, opt: &mut dyn LrGroups) {
        let n = opt.num_param_groups();
        if self.min_lrs.len() != n {
            assert!(
                self.config.min_lrs.is_empty(),
                "ReduceLROnPlateau: the optimizer has {n} parameter groups, min_lrs has {}; set min_lrs for the new groups",
                self.min_lrs.len()
            );
            self.min_lrs = vec![self.config.min_lr; n];
        }
        for i in 0..n {
            let old = opt.group_lr(i);
            let new = (old * self.config.factor).max(self.min_lrs[i]);
            if old - new > self.config.eps {
                opt.set_group_lr(i, new);
            }
        }
    }

    /// The learning rates after the last step.
    pub fn get_last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    /// The best metric so far (±infinity before the first step).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Epochs without improvement counted so far.
    pub fn num_bad_epochs(&self) -> usize {
        self.num_bad_epochs
    }

    /// The counters (`best` is left out while it is infinite, so that the dict stays JSON).
    pub fn state_dict(&self) -> SchedulerStateDict {
        let mut values = BTreeMap::new();
        if self.best.is_finite() {
            values.insert("best".to_string(), self.best);
        }
        values.insert("num_bad_epochs".to_string(), self.num_bad_epochs as f64);
        values.insert("cooldown_counter".to_string(), self.cooldown_counter as f64);
        SchedulerStateDict {
            scheduler: "ReduceLROnPlateau".into(),
            last_epoch: self.last_epoch,
            step_count: 0,
            base_lrs: self.min_lrs.clone(),
            last_lr: self.last_lr.clone(),
            values,
            schedulers: Vec::new(),
        }
    }

    /// Restores the counters saved by [`state_dict`](Self::state_dict).
    ///
    /// # Errors
    /// An [`OptimError`] when the dict is for another scheduler, another number of groups, or
    /// lacks a counter; nothing is changed then.
    pub fn load_state_dict(&mut self, sd: &SchedulerStateDict) -> Result<(), OptimError> {
        let me = SchedulerBase { base_lrs: self.min_lrs.clone(), last_epoch: 0, step_count: 0, last_lr: Vec::new() };
        check_base("ReduceLROnPlateau", &me, sd)?;
        if !sd.schedulers.is_empty() {
            return Err(len_mismatch("ReduceLROnPlateau", "wrapped schedulers", 0, sd.schedulers.len()));
        }
        let get = |key: &str| {
            sd.values.get(key).copied().ok_or_else(|| OptimError::SchedulerMissingValue {
                scheduler: "ReduceLROnPlateau".into(),
                key: key.into(),
            })
        };
        let num_bad_epochs = get("num_bad_epochs")? as usize;
        let cooldown_counter = get("cooldown_counter")? as usize;
        self.best = sd.values.get("best").copied().unwrap_or_else(|| Self::worse(self.config.mode));
        self.num_bad_epochs = num_bad_epochs;
        self.cooldown_counter = cooldown_counter;
        self.last_epoch = sd.last_epoch;
        self.min_lrs = sd.base_lrs.clone();
        self.last_lr = sd.last_lr.clone();
        Ok(())
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
    fn max_mode_abs_threshold_cooldown_and_min_lr() {
        let mut opt = sgd(1.0);
        let cfg = ReduceLROnPlateauConfig {
            mode: PlateauMode::Max,
            threshold_mode: ThresholdMode::Abs,
            threshold: 0.1,
            patience: 0,
            cooldown: 1,
            factor: 0.5,
            min_lr: 0.3,
            ..Default::default()
        };
        let mut s = ReduceLROnPlateau::new(&mut opt, cfg);
        let mut lrs = vec![];
        // 0.55 is not better than 0.5 + 0.1: bad
        for acc in [0.5, 0.55, 0.56, 0.57, 0.9, 0.9, 0.9] {
            s.step(&mut opt, acc);
            lrs.push(opt.lr());
        }
        // cut at 0.55, cooldown eats 0.56, cut at 0.57, 0.9 improves, cooldown eats the next
        // 0.9, then a cut to max(0.125, 0.3) = 0.3
        assert_eq!(lrs, vec![1.0, 0.5, 0.5, 0.25f64.max(0.3), 0.3, 0.3, 0.3]);
    }

    #[test]
    fn state_dict_round_trip() {
        let mut opt = sgd(1.0);
        let mut a = ReduceLROnPlateau::new(&mut opt, ReduceLROnPlateauConfig { patience: 2, ..Default::default() });
        let fresh = a.state_dict();
        assert!(!fresh.values.contains_key("best"));
        for m in [3.0, 2.0, 2.5, 2.5] {
            a.step(&mut opt, m);
        }
        let sd = a.state_dict();
        let json = serde_json::to_string(&sd).unwrap();
        let mut b =
            ReduceLROnPlateau::new(&mut sgd(1.0), ReduceLROnPlateauConfig { patience: 2, ..Default::default() });
        b.load_state_dict(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(b.best(), 2.0);
        assert_eq!(b.num_bad_epochs(), 2);
        let mut bad = sd.clone();
        bad.values.remove("cooldown_counter");
        assert!(matches!(b.load_state_dict(&bad), Err(OptimError::SchedulerMissingValue { .. })));
    }
}
