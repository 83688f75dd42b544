//! Learning-rate schedulers, like `torch.optim.lr_scheduler`: [`StepLR`], [`MultiStepLR`],
//! [`ExponentialLR`], [`CosineAnnealingLR`], [`LinearLR`], [`OneCycleLR`], [`LambdaLR`],
//! [`SequentialLR`] and [`ReduceLROnPlateau`].
//!
//! A scheduler is built on an optimiser (it sets the first learning rate at once, as PyTorch's
//! constructors do) and then stepped with it, after the optimiser's step:
//!
//! ```
//! use kiln_autograd::Var;
//! use kiln_optim::lr_scheduler::{LRScheduler, StepLR};
//! use kiln_optim::{Optimizer, SGDConfig, SGD};
//! use kiln_tensor::Tensor;
//! let w = Var::param(Tensor::<f32>::zeros(&[2]));
//! let mut opt = SGD::new(vec![w], SGDConfig { lr: 0.1, ..Default::default() });
//! let mut sched = StepLR::new(&mut opt, 2, 0.5);
//! let mut lrs = vec![];
//! for _epoch in 0..5 {
//!     lrs.push(opt.lr());
//!     opt.step();
//!     sched.step(&mut opt);
//! }
//! assert_eq!(lrs, vec![0.1, 0.1, 0.05, 0.05, 0.025]);
//! assert_eq!(sched.get_last_lr(), &[0.025]); // epoch 5 keeps epoch 4's rate
//! ```
//!
//! The schedulers use PyTorch's chainable (recursive) forms in `step`, and its closed forms
//! where PyTorch does (a jump to an epoch, [`LRScheduler::set_epoch`], as `SequentialLR` does
//! at a milestone), so the learning rates agree with PyTorch's to the last bit or nearly.
//!
//! **Differs from PyTorch**: the optimiser is passed to `step` instead of being held (Rust's
//! borrows); constructors have no `last_epoch` argument (resume with `load_state_dict`); a
//! scheduler's state dict holds its counters, not its hyper-parameters (rebuild it with the
//! same arguments, then load).

mod cosine_annealing_lr;
mod exponential_lr;
mod lambda_lr;
mod linear_lr;
mod multi_step_lr;
mod one_cycle_lr;
mod reduce_lr_on_plateau;
mod sequential_lr;
mod step_lr;
mod swalr;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::OptimError;
use crate::optimizer::LrGroups;

pub use cosine_annealing_lr::CosineAnnealingLR;
pub use exponential_lr::ExponentialLR;
pub use lambda_lr::LambdaLR;
pub use linear_lr::LinearLR;
pub use multi_step_lr::MultiStepLR;
pub use one_cycle_lr::{AnnealStrategy, OneCycleLR, OneCycleLRConfig};
pub use reduce_lr_on_plateau::{PlateauMode, ReduceLROnPlateau, ReduceLROnPlateauConfig, ThresholdMode};
pub use sequential_lr::SequentialLR;
pub use step_lr::StepLR;
pub use swalr::SWALR;

/// The bookkeeping of PyTorch's `LRScheduler` base class, shared by every scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerBase {
    /// Each group's `initial_lr` when the scheduler was built.
    pub base_lrs: Vec<f64>,
    /// The epoch (or batch) index of the last step; -1 before the constructor's first step.
    pub last_epoch: i64,
    /// `step` calls so far, the constructor's included (PyTorch's `_step_count`).
    pub step_count: u64,
    /// The learning rates after the last step (`get_last_lr()`).
    pub last_lr: Vec<f64>,
}

impl SchedulerBase {
    /// Attaches to an optimiser as PyTorch's `LRScheduler.__init__` does with `last_epoch=-1`:
    /// each group's `initial_lr` is set to its `lr` unless a scheduler set it already, and the
    /// base learning rates are the `initial_lr`s.
    pub fn attach(opt: &mut dyn LrGroups) -> Self {
        let base_lrs = (0..opt.num_param_groups())
            .map(|i| match opt.group_initial_lr(i) {
                Some(lr) => lr,
                None => {
                    let lr = opt.group_lr(i);
                    opt.set_group_initial_lr(i, lr);
                    lr
                }
            })
            .collect();
        SchedulerBase { base_lrs, last_epoch: -1, step_count: 0, last_lr: Vec::new() }
    }
}

/// The state of a scheduler, serialisable with serde.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStateDict {
    /// The scheduler's (PyTorch class) name.
    pub scheduler: String,
    /// `last_epoch`.
    pub last_epoch: i64,
    /// `_step_count`.
    pub step_count: u64,
    /// `base_lrs`.
    pub base_lrs: Vec<f64>,
    /// `get_last_lr()`.
    pub last_lr: Vec<f64>,
    /// Other counters by PyTorch's names (`ReduceLROnPlateau`: `best`, `num_bad_epochs`,
    /// `cooldown_counter`).
    pub values: BTreeMap<String, f64>,
    /// The wrapped schedulers' states (`SequentialLR`).
    pub schedulers: Vec<SchedulerStateDict>,
}

/// Sets the learning rates for the next epoch: PyTorch's `_update_lr`.
fn update_lr<S: LRScheduler + ?Sized>(s: &mut S, opt: &mut dyn LrGroups, epoch: Option<i64>, is_initial: bool) {
    let n = opt.num_param_groups();
    assert_eq!(
        n,
        s.base().base_lrs.len(),
        "{}: the optimizer has {n} parameter groups, the scheduler was built for {}",
        s.name(),
        s.base().base_lrs.len()
    );
    let values = match epoch {
        None => {
            s.base_mut().last_epoch += 1;
            s.get_lr(opt, is_initial)
        }
        Some(e) => {
            s.base_mut().last_epoch = e;
            match s.closed_form_lr() {
                Some(v) => v,
                None => s.get_lr(opt, is_initial),
            }
        }
    };
    for (i, lr) in values.into_iter().enumerate() {
        opt.set_group_lr(i, lr);
    }
    let last = &mut s.base_mut().last_lr;
    last.clear();
    last.extend((0..n).map(|i| opt.group_lr(i)));
}

/// The current learning rate of every group.
pub(crate) fn current_lrs(opt: &dyn LrGroups) -> Vec<f64> {
    (0..opt.num_param_groups()).map(|i| opt.group_lr(i)).collect()
}

/// A learning-rate scheduler stepped once per epoch (or batch), like PyTorch's `LRScheduler`.
///
/// A scheduler implements [`get_lr`](LRScheduler::get_lr) (PyTorch's chainable form: the next
/// learning rates from the current ones) and, where PyTorch has one,
/// [`closed_form_lr`](LRScheduler::closed_form_lr); the rest is provided.
/// [`ReduceLROnPlateau`] steps on a metric and is not an `LRScheduler`, as in PyTorch's
/// `SequentialLR`, which refuses it.
pub trait LRScheduler: Send {
    /// PyTorch's class name (`"StepLR"`), written into state dicts.
    fn name(&self) -> &'static str;
    /// The shared bookkeeping.
    fn base(&self) -> &SchedulerBase;
    /// The shared bookkeeping, mutably.
    fn base_mut(&mut self) -> &mut SchedulerBase;

    /// The learning rates for epoch `base().last_epoch` (already advanced), from the
    /// optimiser's current ones; `is_initial` during the constructor's step. May also set
    /// other hyper-parameters (OneCycleLR's momentum).
    fn get_lr(&mut self, opt: &mut dyn LrGroups, is_initial: bool) -> Vec<f64>;

    /// The learning rates at `base().last_epoch` computed from the base learning rates alone,
    /// when the schedule has such a form.
    fn closed_form_lr(&self) -> Option<Vec<f64>> {
        None
    }

    /// Advances one epoch and writes the new learning rates into the optimiser. Call it after
    /// the optimiser's `step`.
    fn step(&mut self, opt: &mut dyn LrGroups) {
        self.base_mut().step_count += 1;
        update_lr(self, opt, None, false);
    }

    /// Jumps to `epoch`, with the closed form where there is one (PyTorch's `_update_lr(epoch)`,
    /// what its deprecated `step(epoch)` does). Does not count as a step.
    fn set_epoch(&mut self, opt: &mut dyn LrGroups, epoch: i64) {
        update_lr(self, opt, Some(epoch), false);
    }

    /// The step a constructor takes (PyTorch's `_initial_step`): epoch -1 to 0.
    fn initial_step(&mut self, opt: &mut dyn LrGroups) {
        self.base_mut().step_count = 1;
        update_lr(self, opt, None, true);
    }

    /// Takes back the constructor's epoch count (PyTorch's `recursive_undo`, used by
    /// [`SequentialLR`]).
    fn undo(&mut self) {
        self.base_mut().last_epoch -= 1;
    }

    /// The learning rates the last step set, one per group.
    fn get_last_lr(&self) -> &[f64] {
        &self.base().last_lr
    }

    /// The index of the last epoch.
    fn last_epoch(&self) -> i64 {
        self.base().last_epoch
    }

    /// The scheduler's counters.
    fn state_dict(&self) -> SchedulerStateDict {
        let b = self.base();
        SchedulerStateDict {
            scheduler: self.name().to_string(),
            last_epoch: b.last_epoch,
            step_count: b.step_count,
            base_lrs: b.base_lrs.clone(),
            last_lr: b.last_lr.clone(),
            values: BTreeMap::new(),
            schedulers: Vec::new(),
        }
    }

    /// Checks that `state_dict` fits this scheduler, changing nothing.
    ///
    /// # Errors
    /// [`OptimError::SchedulerMismatch`] or [`OptimError::SchedulerLenMismatch`].
    fn check_state_dict(&self, state_dict: &SchedulerStateDict) -> Result<(), OptimError> {
        check_base(self.name(), self.base(), state_dict)?;
        if !state_dict.schedulers.is_empty() {
            return Err(len_mismatch(self.name(), "wrapped schedulers", 0, state_dict.schedulers.len()));
        }
        Ok(())
    }

    /// Applies a state dict that [`check_state_dict`](LRScheduler::check_state_dict) accepted.
    fn apply_state_dict(&mut self, state_dict: &SchedulerStateDict) {
        let b = self.base_mut();
        b.last_epoch = state_dict.last_epoch;
        b.step_count = state_dict.step_count;
        b.base_lrs = state_dict.base_lrs.clone();
        b.last_lr = state_dict.last_lr.clone();
    }

    /// Restores the counters saved by [`state_dict`](LRScheduler::state_dict) (together with
    /// the optimiser's own state dict, which holds the learning rates).
    ///
    /// # Errors
    /// An [`OptimError`] when the state dict is for another scheduler or another number of
    /// groups; nothing is changed then.
    fn load_state_dict(&mut self, state_dict: &SchedulerStateDict) -> Result<(), OptimError> {
        self.check_state_dict(state_dict)?;
        self.apply_state_dict(state_dict);
        Ok(())
    }
}

pub(crate) fn len_mismatch(scheduler: &str, what: &str, expected: usize, found: usize) -> OptimError {
    OptimError::SchedulerLenMismatch { scheduler: scheduler.into(), what: what.into(), expected, found }
}

/// Name and per-group lengths of a state dict against a scheduler.
pub(crate) fn check_base(name: &str, base: &SchedulerBase, sd: &SchedulerStateDict) -> Result<(), OptimError> {
    if sd.scheduler != name {
        return Err(OptimError::SchedulerMismatch { expected: name.into(), found: sd.scheduler.clone() });
    }
    if sd.base_lrs.len() != base.base_lrs.len() {
        return Err(len_mismatch(name, "base_lrs", base.base_lrs.len(), sd.base_lrs.len()));
    }
    if sd.last_lr.len() != base.base_lrs.len() {
        return Err(len_mismatch(name, "last_lr", base.base_lrs.len(), sd.last_lr.len()));
    }
    Ok(())
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
    fn state_dict_round_trip_resumes_identically() {
        let mut a = sgd(1.0);
        let mut sa = CosineAnnealingLR::new(&mut a, 7, 0.01);
        for _ in 0..3 {
            sa.step(&mut a);
        }
        let (osd, ssd) = (a.state_dict(), sa.state_dict());
        let json = serde_json::to_string(&ssd).unwrap();
        let ssd2: SchedulerStateDict = serde_json::from_str(&json).unwrap();
        assert_eq!(ssd, ssd2);

        let mut b = sgd(1.0);
        let mut sb = CosineAnnealingLR::new(&mut b, 7, 0.01);
        b.load_state_dict(&osd).unwrap();
        sb.load_state_dict(&ssd2).unwrap();
        for _ in 0..10 {
            sa.step(&mut a);
            sb.step(&mut b);
            assert_eq!(a.lr(), b.lr());
            assert_eq!(sa.get_last_lr(), sb.get_last_lr());
        }
    }

    #[test]
    fn load_state_dict_rejects_another_scheduler_without_change() {
        let mut a = sgd(1.0);
        let mut s = ExponentialLR::new(&mut a, 0.5);
        s.step(&mut a);
        let mut other = StepLR::new(&mut sgd(1.0), 3, 0.1).state_dict();
        let before = s.state_dict();
        assert_eq!(
            s.load_state_dict(&other).unwrap_err(),
            OptimError::SchedulerMismatch { expected: "ExponentialLR".into(), found: "StepLR".into() }
        );
        other.scheduler = "ExponentialLR".into();
        other.base_lrs.push(1.0);
        assert!(matches!(s.load_state_dict(&other), Err(OptimError::SchedulerLenMismatch { .. })));
        assert_eq!(s.state_dict(), before);
    }

    /// Chainable and closed forms give the same schedule.
    #[test]
    fn closed_forms_agree_with_chainable_forms() {
        type Make = fn(&mut SGD<f64>) -> Box<dyn LRScheduler>;
        let makers: Vec<(&str, Make)> = vec![
            ("StepLR", |o| Box::new(StepLR::new(o, 3, 0.5))),
            ("MultiStepLR", |o| Box::new(MultiStepLR::new(o, &[2, 5, 5, 9], 0.5))),
            ("ExponentialLR", |o| Box::new(ExponentialLR::new(o, 0.8))),
            ("CosineAnnealingLR", |o| Box::new(CosineAnnealingLR::new(o, 6, 0.01))),
            ("LinearLR", |o| Box::new(LinearLR::new(o, 0.2, 0.9, 7))),
        ];
        for (name, make) in makers {
            let mut chained = sgd(0.3);
            let mut s = make(&mut chained);
            for e in 1..20 {
                s.step(&mut chained);
                let mut jumped = sgd(0.3);
                let mut j = make(&mut jumped);
                j.set_epoch(&mut jumped, e);
                assert!(
                    (chained.lr() - jumped.lr()).abs() < 1e-12,
                    "{name} epoch {e}: {} vs {}",
                    chained.lr(),
                    jumped.lr()
                );
            }
        }
    }

    #[test]
    fn sequential_state_dict_round_trip() {
        let make = |opt: &mut SGD<f64>| {
            let a = LinearLR::new(opt, 0.1, 1.0, 3);
            let b = CosineAnnealingLR::new(opt, 5, 0.0);
            SequentialLR::new(opt, vec![Box::new(a), Box::new(b)], vec![3])
        };
        let mut a = sgd(1.0);
        let mut sa = make(&mut a);
        for _ in 0..4 {
            sa.step(&mut a);
        }
        let (osd, ssd) = (a.state_dict(), sa.state_dict());
        assert_eq!(ssd.schedulers.len(), 2);
        let mut b = sgd(1.0);
        let mut sb = make(&mut b);
        b.load_state_dict(&osd).unwrap();
        let mut wrong = ssd.clone();
        wrong.schedulers[1].scheduler = "StepLR".into();
        let untouched = sb.state_dict();
        assert!(sb.load_state_dict(&wrong).is_err());
        assert_eq!(sb.state_dict(), untouched);
        sb.load_state_dict(&ssd).unwrap();
        for _ in 0..6 {
            sa.step(&mut a);
            sb.step(&mut b);
            assert_eq!(a.lr(), b.lr());
        }
    }

    #[test]
    fn second_scheduler_keeps_the_first_initial_lr() {
        // as in PyTorch, base_lrs come from group['initial_lr'], set by the first scheduler
        let mut opt = sgd(0.1);
        let _s1 = LinearLR::new(&mut opt, 0.5, 1.0, 4);
        assert!((opt.lr() - 0.05).abs() < 1e-15);
        let s2 = ExponentialLR::new(&mut opt, 0.9);
        assert_eq!(s2.base().base_lrs, vec![0.1]);
    }
}
