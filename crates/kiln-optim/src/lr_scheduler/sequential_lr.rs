//! [`SequentialLR`]: schedulers one after another, switching at milestones.

use super::{check_base, len_mismatch, LRScheduler, SchedulerBase, SchedulerStateDict};
use crate::error::OptimError;
use crate::optimizer::LrGroups;

/// Runs `schedulers[0]` until the first milestone, then `schedulers[1]`, ..., like
/// `torch.optim.lr_scheduler.SequentialLR` (typically a [`LinearLR`](super::LinearLR) warm-up
/// followed by a decay).
///
/// Build the wrapped schedulers on the optimiser first, in order, as in PyTorch; the
/// constructor then resets the learning rates to their `initial_lr`, takes back the wrapped
/// schedulers' first steps and lets the first one start again. At a milestone the next
/// scheduler jumps to its epoch 0 with its closed form (PyTorch's `_update_lr(0)`), so it
/// starts from the base learning rate.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{ExponentialLR, LRScheduler, LinearLR, SequentialLR};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 1.0, ..Default::default() });
/// let warmup = LinearLR::new(&mut opt, 0.5, 1.0, 2);
/// let decay = ExponentialLR::new(&mut opt, 0.5);
/// let mut sched = SequentialLR::new(&mut opt, vec![Box::new(warmup), Box::new(decay)], vec![2]);
/// let mut lrs = vec![];
/// for _ in 0..5 {
///     lrs.push(opt.lr());
///     sched.step(&mut opt);
/// }
/// assert_eq!(lrs, vec![0.5, 0.75, 1.0, 0.5, 0.25]);
/// ```
pub struct SequentialLR {
    base: SchedulerBase,
    schedulers: Vec<Box<dyn LRScheduler>>,
    milestones: Vec<usize>,
}

impl SequentialLR {
    /// Chains `schedulers`, switching at `milestones` (one fewer than schedulers).
    ///
    /// **Panics** if `schedulers` is empty or the counts do not match.
    pub fn new(opt: &mut dyn LrGroups, mut schedulers: Vec<Box<dyn LRScheduler>>, milestones: Vec<usize>) -> Self {
        assert!(!schedulers.is_empty(), "SequentialLR: expects at least one scheduler, but got no scheduler");
        assert_eq!(
            milestones.len(),
            schedulers.len() - 1,
            "SequentialLR: expects one more scheduler than milestones, got {} schedulers and {} milestones",
            schedulers.len(),
            milestones.len()
        );
        // reset the learning rates to the initial ones, undo the wrapped schedulers' first
        // steps, and start the first scheduler again
        let mut base_lrs = Vec::with_capacity(opt.num_param_groups());
        for i in 0..opt.num_param_groups() {
            let lr = opt.group_initial_lr(i).unwrap_or_else(|| opt.group_lr(i));
            opt.set_group_initial_lr(i, lr);
            opt.set_group_lr(i, lr);
            base_lrs.push(lr);
        }
        for s in &mut schedulers {
            s.undo();
        }
        schedulers[0].initial_step(opt);
        let last_lr = schedulers[0].get_last_lr().to_vec();
        SequentialLR { base: SchedulerBase { base_lrs, last_epoch: 0, step_count: 0, last_lr }, schedulers, milestones }
    }

    /// The wrapped schedulers.
    pub fn schedulers(&self) -> &[Box<dyn LRScheduler>] {
        &self.schedulers
    }
}

impl LRScheduler for SequentialLR {
    fn name(&self) -> &'static str {
        "SequentialLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, opt: &mut dyn LrGroups, _is_initial: bool) -> Vec<f64> {
        super::current_lrs(opt)
    }

    fn step(&mut self, opt: &mut dyn LrGroups) {
        self.base.last_epoch += 1;
        let e = self.base.last_epoch;
        let idx = self.milestones.partition_point(|&m| m as i64 <= e);
        let s = &mut self.schedulers[idx];
        if idx > 0 && self.milestones[idx - 1] as i64 == e {
            s.set_epoch(opt, 0);
        } else {
            s.step(opt);
        }
        self.base.last_lr.clear();
        self.base.last_lr.extend_from_slice(s.get_last_lr());
    }

    fn initial_step(&mut self, opt: &mut dyn LrGroups) {
        // PyTorch's _initial_step calls SequentialLR.step, which does not count steps
        self.base.step_count = 0;
        self.step(opt);
    }

    fn undo(&mut self) {
        for s in &mut self.schedulers {
            s.undo();
        }
    }

    fn state_dict(&self) -> SchedulerStateDict {
        let b = &self.base;
        SchedulerStateDict {
            scheduler: self.name().to_string(),
            last_epoch: b.last_epoch,
            step_count: b.step_count,
            base_lrs: b.base_lrs.clone(),
            last_lr: b.last_lr.clone(),
            values: Default::default(),
            schedulers: self.schedulers.iter().map(|s| s.state_dict()).collect(),
        }
    }

    fn check_state_dict(&self, sd: &SchedulerStateDict) -> Result<(), OptimError> {
        check_base(self.name(), &self.base, sd)?;
        if sd.schedulers.len() != self.schedulers.len() {
            return Err(len_mismatch(self.name(), "wrapped schedulers", self.schedulers.len(), sd.schedulers.len()));
        }
        for (s, d) in self.schedulers.iter().zip(&sd.schedulers) {
            s.check_state_dict(d)?;
        }
        Ok(())
    }

    fn apply_state_dict(&mut self, sd: &SchedulerStateDict) {
        self.base.last_epoch = sd.last_epoch;
        self.base.step_count = sd.step_count;
        self.base.base_lrs = sd.base_lrs.clone();
        self.base.last_lr = sd.last_lr.clone();
        for (s, d) in self.schedulers.iter_mut().zip(&sd.schedulers) {
            s.apply_state_dict(d);
        }
    }
}
