//! [`LambdaLR`]: the base learning rate times a function of the epoch.

use super::{LRScheduler, SchedulerBase};
use crate::optimizer::LrGroups;

/// A multiplicative factor of the epoch.
pub type LrLambda = Box<dyn Fn(usize) -> f64 + Send>;

enum Lambdas {
    /// The same factor for every group.
    One(LrLambda),
    /// One factor per group.
    PerGroup(Vec<LrLambda>),
}

/// Sets each group's learning rate to its base learning rate times `lr_lambda(epoch)`, like
/// `torch.optim.lr_scheduler.LambdaLR`, with a Rust closure for the lambda.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::lr_scheduler::{LRScheduler, LambdaLR};
/// use kiln_optim::{Optimizer, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let mut opt = SGD::new(vec![Var::param(Tensor::<f64>::zeros(&[1]))], SGDConfig { lr: 0.1, ..Default::default() });
/// let mut sched = LambdaLR::new(&mut opt, |epoch| 0.95f64.powi(epoch as i32));
/// sched.step(&mut opt);
/// assert!((opt.lr() - 0.095).abs() < 1e-15);
/// ```
///
/// **Differs from PyTorch**: the lambdas are not part of the state dict (PyTorch saves those
/// that are callable objects).
pub struct LambdaLR {
    base: SchedulerBase,
    lambdas: Lambdas,
}

impl LambdaLR {
    /// One factor for every group.
    pub fn new(opt: &mut dyn LrGroups, lr_lambda: impl Fn(usize) -> f64 + Send + 'static) -> Self {
        let mut s = LambdaLR { base: SchedulerBase::attach(opt), lambdas: Lambdas::One(Box::new(lr_lambda)) };
        s.initial_step(opt);
        s
    }

    /// One factor per group.
    ///
    /// **Panics** if there are not as many lambdas as groups.
    pub fn with_lambdas(opt: &mut dyn LrGroups, lambdas: Vec<LrLambda>) -> Self {
        assert_eq!(
            lambdas.len(),
            opt.num_param_groups(),
            "LambdaLR: expected {} lr_lambdas, one per parameter group, got {}",
            opt.num_param_groups(),
            lambdas.len()
        );
        let mut s = LambdaLR { base: SchedulerBase::attach(opt), lambdas: Lambdas::PerGroup(lambdas) };
        s.initial_step(opt);
        s
    }
}

impl LRScheduler for LambdaLR {
    fn name(&self) -> &'static str {
        "LambdaLR"
    }
    fn base(&self) -> &SchedulerBase {
        &self.base
    }
    fn base_mut(&mut self) -> &mut SchedulerBase {
        &mut self.base
    }
    fn get_lr(&mut self, _opt: &mut dyn LrGroups, _is_initial: bool) -> Vec<f64> {
        let e = self.base.last_epoch.max(0) as usize;
        self.base
            .base_lrs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let f = match &self.lambdas {
                    Lambdas::One(f) => f,
                    Lambdas::PerGroup(fs) => &fs[i],
                };
                b * f(e)
            })
            .collect()
    }
}
