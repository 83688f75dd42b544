//! The [`Optimizer`] trait, parameter groups, state dicts, and [`RuleOptimizer`], the driver
//! every optimiser of this crate shares: it owns the groups and the per-parameter state and
//! calls an [`UpdateRule`] for each parameter that has a gradient.

use std::collections::BTreeMap;
use std::fmt::Debug;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::OptimError;

/// The hyper-parameters of one parameter group (`SGDConfig`, `AdamConfig`, ...): what
/// schedulers read and write, and the check run when an optimiser is built or loaded.
pub trait GroupConfig: Clone + Debug + PartialEq + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate.
    fn set_lr(&mut self, lr: f64);
    /// The momentum a scheduler may cycle: SGD's and RMSprop's `momentum`, Adam's `beta1`;
    /// `None` when the optimiser has none (Adagrad).
    fn momentum(&self) -> Option<f64> {
        None
    }
    /// Sets the momentum (ignored by optimisers without one).
    fn set_momentum(&mut self, _momentum: f64) {}
    /// Checks every value against PyTorch's constraints.
    ///
    /// # Errors
    /// A message naming the field, the allowed range and the value found.
    fn validate(&self) -> Result<(), String>;
}

/// A set of parameters sharing hyper-parameters, like one dict of PyTorch's
/// `optimizer.param_groups`.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{Optimizer, ParamGroup, SGDConfig, SGD};
/// use kiln_tensor::Tensor;
/// let body = Var::param(Tensor::<f32>::zeros(&[3]));
/// let head = Var::param(Tensor::<f32>::zeros(&[2]));
/// let mut opt = SGD::new(vec![body], SGDConfig { lr: 0.01, ..Default::default() });
/// opt.add_param_group(ParamGroup::new(vec![head], SGDConfig { lr: 0.1, ..opt.defaults().clone() }));
/// assert_eq!(opt.param_groups()[1].config.lr, 0.1);
/// ```
#[derive(Clone, Debug)]
pub struct ParamGroup<E: Float, C> {
    /// The parameters (leaf `Var`s).
    pub params: Vec<Var<E>>,
    /// Their hyper-parameters.
    pub config: C,
    /// The learning rate when the first scheduler was attached (PyTorch's
    /// `group['initial_lr']`); `None` until then.
    pub initial_lr: Option<f64>,
}

impl<E: Float, C> ParamGroup<E, C> {
    /// A group of `params` with `config`.
    pub fn new(params: impl IntoIterator<Item = Var<E>>, config: C) -> Self {
        ParamGroup { params: params.into_iter().collect(), config, initial_lr: None }
    }
}

/// What a learning-rate scheduler reads and writes on an optimiser: the learning rate (and
/// momentum) of each parameter group. Object-safe, so one scheduler type serves every
/// optimiser (`sched.step(&mut opt)`).
pub trait LrGroups {
    /// The number of parameter groups.
    fn num_param_groups(&self) -> usize;
    /// The learning rate of group `group`.
    fn group_lr(&self, group: usize) -> f64;
    /// Sets the learning rate of group `group`.
    fn set_group_lr(&mut self, group: usize, lr: f64);
    /// PyTorch's `group['initial_lr']`, set by the first scheduler attached.
    fn group_initial_lr(&self, group: usize) -> Option<f64>;
    /// Sets `group['initial_lr']`.
    fn set_group_initial_lr(&mut self, group: usize, lr: f64);
    /// The group's momentum (SGD/RMSprop `momentum`, Adam `beta1`), `None` without one.
    fn group_momentum(&self, group: usize) -> Option<f64>;
    /// Sets the group's momentum.
    fn set_group_momentum(&mut self, group: usize, momentum: f64);
}

/// An optimiser: updates its parameters from their gradients, in place.
///
/// Implemented by [`SGD`](crate::SGD), [`Adam`](crate::Adam), [`AdamW`](crate::AdamW),
/// [`RMSprop`](crate::RMSprop) and [`Adagrad`](crate::Adagrad) (all [`RuleOptimizer`]s).
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_optim::{Adam, AdamConfig, Optimizer};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::from_vec(vec![1.0f64, -1.0], &[2]));
/// let mut opt = Adam::new(vec![w.clone()], AdamConfig::default());
/// w.set_grad(Some(Tensor::from_vec(vec![0.5, -0.5], &[2])));
/// opt.step();
/// // Adam's first step moves every coordinate by lr against the gradient's sign
/// let v = w.value().to_vec();
/// assert!((v[0] - (1.0 - 1e-3)).abs() < 1e-9 && (v[1] - (-1.0 + 1e-3)).abs() < 1e-9);
/// opt.zero_grad();
/// assert!(w.grad().is_none());
/// ```
pub trait Optimizer<E: Float> {
    /// The hyper-parameters of one group.
    type Config: GroupConfig;

    /// One update of every parameter that requires grad and has a gradient; the others are
    /// skipped (PyTorch skips `p.grad is None`).
    fn step(&mut self);

    /// The parameter groups.
    fn param_groups(&self) -> &[ParamGroup<E, Self::Config>];

    /// The parameter groups, to change their hyper-parameters (`for g in opt.param_groups:
    /// g['lr'] = ...`).
    fn param_groups_mut(&mut self) -> &mut [ParamGroup<E, Self::Config>];

    /// Adds a group (fine-tuning: unfreeze more layers with their own learning rate).
    ///
    /// **Panics** if the group is empty, its config is invalid, or one of its parameters is
    /// already in a group.
    fn add_param_group(&mut self, group: ParamGroup<E, Self::Config>);

    /// The optimiser's state (hyper-parameters, step counts, buffers), deep-copied.
    fn state_dict(&self) -> OptimizerStateDict<E, Self::Config>;

    /// Restores a state dict saved by [`state_dict`](Optimizer::state_dict) of an optimiser
    /// of the same kind over parameters of the same shapes, in the same groups.
    ///
    /// # Errors
    /// An [`OptimError`] naming the group, parameter and key that do not match; on error
    /// nothing has been changed.
    fn load_state_dict(&mut self, state_dict: &OptimizerStateDict<E, Self::Config>) -> Result<(), OptimError>;

    /// Saves the optimiser's state to a file on its own, like `torch.save(opt.state_dict(),
    /// path)`: safetensors with the buffers and step counts as tensors and the groups'
    /// hyper-parameters in the metadata (see [`state_file`](crate::state_file)), written
    /// atomically (a failed save leaves the previous file intact).
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_optim::{Adam, AdamConfig, Optimizer};
    /// use kiln_tensor::Tensor;
    /// let path = std::env::temp_dir().join(format!("kiln-doc-adam-{}.safetensors", std::process::id()));
    /// let w = Var::param(Tensor::from_vec(vec![1.0f32, -1.0], &[2]));
    /// let mut opt = Adam::new(vec![w.clone()], AdamConfig::default());
    /// w.mul(&w).sum_all().backward();
    /// opt.step();
    /// opt.save(&path).unwrap();
    ///
    /// // A fresh optimiser over the same parameters resumes where this one stopped.
    /// let mut resumed = Adam::new(vec![w.clone()], AdamConfig::default());
    /// resumed.load(&path).unwrap();
    /// assert_eq!(resumed.state_dict(), opt.state_dict());
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`OptimError::File`] naming the file when it cannot be written.
    fn save(&self, path: impl AsRef<std::path::Path>) -> Result<(), OptimError>
    where
        Self: Sized,
    {
        crate::state_file::save(&self.state_dict(), path.as_ref())
    }

    /// Loads a state saved by [`save`](Optimizer::save), like
    /// `opt.load_state_dict(torch.load(path))`. The whole file is read and checked before the
    /// optimiser is touched: on error nothing has changed.
    ///
    /// # Errors
    /// [`OptimError::File`] (unreadable or malformed file), [`OptimError::FileField`] (a
    /// missing or malformed field, naming it), and every error of
    /// [`load_state_dict`](Optimizer::load_state_dict) (another optimiser, other groups or
    /// shapes).
    fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<(), OptimError>
    where
        Self: Sized,
    {
        let sd = crate::state_file::load(path.as_ref())?;
        self.load_state_dict(&sd)
    }

    /// Clears every parameter's gradient (PyTorch's `zero_grad(set_to_none=True)`, its
    /// default). To zero the tensors in place instead, use `p.update_grad(|g| g.zero_())`.
    fn zero_grad(&self) {
        for g in self.param_groups() {
            for p in &g.params {
                p.zero_grad();
            }
        }
    }

    /// The learning rate of the first group.
    fn lr(&self) -> f64 {
        self.param_groups()[0].config.lr()
    }

    /// Sets the learning rate of every group.
    fn set_lr(&mut self, lr: f64) {
        for g in self.param_groups_mut() {
            g.config.set_lr(lr);
        }
    }
}

/// One parameter's state in a state dict: PyTorch's `state[p]` with its key names
/// (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `square_avg`, `grad_avg`,
/// `sum`) and the step count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = ""))]
pub struct ParamState<E: Float> {
    /// Updates done (`None` for optimisers that do not count, like SGD).
    pub step: Option<u64>,
    /// The state tensors by PyTorch's names; each has its parameter's shape.
    pub buffers: BTreeMap<String, Tensor<E>>,
}

/// A required state entry that a [`ParamState`] lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingKey(pub &'static str);

impl<E: Float> ParamState<E> {
    /// A state with a step count and no buffers.
    pub fn new(step: Option<u64>) -> Self {
        ParamState { step, buffers: BTreeMap::new() }
    }
    /// Adds a deep copy of `t` under `key` (a copy, so that the optimiser's buffer stays
    /// unshared and its next in-place update does not copy).
    #[must_use]
    pub fn with(mut self, key: &str, t: &Tensor<E>) -> Self {
        self.buffers.insert(key.to_string(), Tensor::from_vec(t.to_vec(), t.shape()));
        self
    }
    /// Adds `t` under `key` when present.
    #[must_use]
    pub fn with_opt(self, key: &str, t: Option<&Tensor<E>>) -> Self {
        match t {
            Some(t) => self.with(key, t),
            None => self,
        }
    }
    /// Removes and returns the buffer `key`.
    ///
    /// # Errors
    /// [`MissingKey`] when absent.
    pub fn take(&mut self, key: &'static str) -> Result<Tensor<E>, MissingKey> {
        self.buffers.remove(key).ok_or(MissingKey(key))
    }
    /// The step count.
    ///
    /// # Errors
    /// [`MissingKey`]`("step")` when absent.
    pub fn take_step(&mut self) -> Result<u64, MissingKey> {
        self.step.take().ok_or(MissingKey("step"))
    }
}

/// One parameter group in a state dict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupState<C> {
    /// The group's hyper-parameters.
    pub config: C,
    /// PyTorch's `initial_lr`, when a scheduler set one.
    pub initial_lr: Option<f64>,
    /// The ids of the group's parameters: positions counted across all groups, in order (as
    /// PyTorch numbers them).
    pub params: Vec<usize>,
}

/// The state of an optimiser, serialisable with serde: PyTorch's `{'state': ..., 'param_groups':
/// ...}` plus the optimiser's name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "C: Serialize", deserialize = "C: DeserializeOwned"))]
pub struct OptimizerStateDict<E: Float, C> {
    /// The optimiser's (PyTorch class) name: `"SGD"`, `"Adam"`, ...
    pub optimizer: String,
    /// The groups, in order.
    pub param_groups: Vec<GroupState<C>>,
    /// Per-parameter state by parameter id; parameters never updated have none.
    pub state: BTreeMap<usize, ParamState<E>>,
}

/// The update of one parameter: what makes an optimiser. A [`RuleOptimizer`] calls it for each
/// parameter that has a gradient.
pub trait UpdateRule<E: Float>: Send + Sync + 'static {
    /// PyTorch's class name, written into state dicts and panic messages.
    const NAME: &'static str;
    /// The hyper-parameters of one group.
    type Config: GroupConfig;
    /// The state of one parameter.
    type State: Clone + Debug + Send + Sync;

    /// The state before the first update (PyTorch's lazy initialisation).
    fn init_state(config: &Self::Config, param: &Tensor<E>) -> Self::State;

    /// Updates `param` in place from `grad` (same shape) and `state`.
    fn update(config: &Self::Config, param: &mut Tensor<E>, grad: &Tensor<E>, state: &mut Self::State);

    /// The state as named tensors (deep copies).
    fn save_state(state: &Self::State) -> ParamState<E>;

    /// Rebuilds a state from named tensors whose shapes the caller has checked; entries left
    /// in `state` afterwards are reported as unexpected.
    ///
    /// # Errors
    /// The first required entry that is missing.
    fn load_state(config: &Self::Config, state: &mut ParamState<E>) -> Result<Self::State, MissingKey>;
}

/// An optimiser made of an [`UpdateRule`]: parameter groups, lazily created per-parameter
/// state, and the step loop. [`SGD`](crate::SGD), [`Adam`](crate::Adam), ... are aliases of it.
pub struct RuleOptimizer<E: Float, R: UpdateRule<E>> {
    defaults: R::Config,
    groups: Vec<ParamGroup<E, R::Config>>,
    /// `state[g][i]`: the state of `groups[g].params[i]`, created on its first update.
    state: Vec<Vec<Option<R::State>>>,
}

impl<E: Float, R: UpdateRule<E>> Clone for RuleOptimizer<E, R> {
    fn clone(&self) -> Self {
        RuleOptimizer { defaults: self.defaults.clone(), groups: self.groups.clone(), state: self.state.clone() }
    }
}

impl<E: Float, R: UpdateRule<E>> Debug for RuleOptimizer<E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(R::NAME)
            .field("defaults", &self.defaults)
            .field("param_groups", &self.groups.iter().map(|g| (&g.config, g.params.len())).collect::<Vec<_>>())
            .finish()
    }
}

fn check_config<C: GroupConfig>(name: &str, config: &C) {
    if let Err(m) = config.validate() {
        panic!("{name}: {m}");
    }
}

impl<E: Float, R: UpdateRule<E>> RuleOptimizer<E, R> {
    /// An optimiser over `params` in one group with `config` (also the defaults for groups
    /// added later).
    ///
    /// **Panics** if `params` is empty, lists a parameter twice, or `config` is invalid
    /// (`SGD: lr must be >= 0, got -1`).
    pub fn new(params: impl IntoIterator<Item = Var<E>>, config: R::Config) -> Self {
        check_config(R::NAME, &config);
        let mut opt = RuleOptimizer { defaults: config.clone(), groups: Vec::new(), state: Vec::new() };
        opt.add_param_group(ParamGroup::new(params, config));
        opt
    }

    /// An optimiser over several groups; the first group's config becomes the defaults.
    ///
    /// **Panics** as [`new`](Self::new), or if `groups` is empty.
    pub fn from_groups(groups: Vec<ParamGroup<E, R::Config>>) -> Self {
        assert!(!groups.is_empty(), "{}: optimizer got an empty list of parameter groups", R::NAME);
        let defaults = groups[0].config.clone();
        let mut opt = RuleOptimizer { defaults, groups: Vec::new(), state: Vec::new() };
        for g in groups {
            opt.add_param_group(g);
        }
        opt
    }

    /// The config given to the constructor (PyTorch's `optimizer.defaults`).
    pub fn defaults(&self) -> &R::Config {
        &self.defaults
    }

    /// The state of `param` (PyTorch's `optimizer.state[p]`), `None` before its first update
    /// or when `param` is not one of this optimiser's parameters.
    pub fn state(&self, param: &Var<E>) -> Option<&R::State> {
        for (g, states) in self.groups.iter().zip(&self.state) {
            for (p, s) in g.params.iter().zip(states) {
                if p.same(param) {
                    return s.as_ref();
                }
            }
        }
        None
    }

    /// Every parameter, group by group.
    pub fn parameters(&self) -> impl Iterator<Item = &Var<E>> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }
}

impl<E: Float, R: UpdateRule<E>> Optimizer<E> for RuleOptimizer<E, R> {
    type Config = R::Config;

    fn step(&mut self) {
        for (group, states) in self.groups.iter().zip(self.state.iter_mut()) {
            if states.len() != group.params.len() {
                // the user edited `params` through param_groups_mut: state follows positions
                states.resize_with(group.params.len(), || None);
            }
            for (p, st) in group.params.iter().zip(states.iter_mut()) {
                if !p.requires_grad() {
                    continue;
                }
                let Some(grad) = p.grad() else { continue };
                p.update_value(|value| {
                    assert!(
                        grad.shape() == value.shape(),
                        "{}: step: gradient of shape {:?} for a parameter of shape {:?}",
                        R::NAME,
                        grad.shape(),
                        value.shape()
                    );
                    let st = st.get_or_insert_with(|| R::init_state(&group.config, value));
                    R::update(&group.config, value, &grad, st);
                });
            }
        }
    }

    fn param_groups(&self) -> &[ParamGroup<E, R::Config>] {
        &self.groups
    }

    fn param_groups_mut(&mut self) -> &mut [ParamGroup<E, R::Config>] {
        &mut self.groups
    }

    fn add_param_group(&mut self, group: ParamGroup<E, R::Config>) {
        assert!(!group.params.is_empty(), "{}: optimizer got an empty parameter list", R::NAME);
        check_config(R::NAME, &group.config);
        for (i, p) in group.params.iter().enumerate() {
            let twice = group.params[..i].iter().any(|q| q.same(p)) || self.parameters().any(|q| q.same(p));
            assert!(!twice, "{}: some parameters appear in more than one parameter group", R::NAME);
        }
        self.state.push(vec![None; group.params.len()]);
        self.groups.push(group);
    }

    fn state_dict(&self) -> OptimizerStateDict<E, R::Config> {
        let mut param_groups = Vec::with_capacity(self.groups.len());
        let mut state = BTreeMap::new();
        let mut id = 0;
        for (g, states) in self.groups.iter().zip(&self.state) {
            let ids: Vec<usize> = (id..id + g.params.len()).collect();
            for (i, s) in states.iter().enumerate().take(g.params.len()) {
                if let Some(s) = s {
                    state.insert(id + i, R::save_state(s));
                }
            }
            id += g.params.len();
            param_groups.push(GroupState { config: g.config.clone(), initial_lr: g.initial_lr, params: ids });
        }
        OptimizerStateDict { optimizer: R::NAME.to_string(), param_groups, state }
    }

    fn load_state_dict(&mut self, sd: &OptimizerStateDict<E, R::Config>) -> Result<(), OptimError> {
        if sd.optimizer != R::NAME {
            return Err(OptimError::OptimizerMismatch { expected: R::NAME.into(), found: sd.optimizer.clone() });
        }
        if sd.param_groups.len() != self.groups.len() {
            return Err(OptimError::GroupCountMismatch { expected: self.groups.len(), found: sd.param_groups.len() });
        }
        // saved id -> (group, position)
        let mut where_is = BTreeMap::new();
        for (gi, (saved, ours)) in sd.param_groups.iter().zip(&self.groups).enumerate() {
            if saved.params.len() != ours.params.len() {
                return Err(OptimError::GroupSizeMismatch {
                    group: gi,
                    expected: ours.params.len(),
                    found: saved.params.len(),
                });
            }
            saved.config.validate().map_err(|message| OptimError::InvalidConfig { group: gi, message })?;
            for (pi, &id) in saved.params.iter().enumerate() {
                if where_is.insert(id, (gi, pi)).is_some() {
                    return Err(OptimError::DuplicateParam { id });
                }
            }
        }
        // build the whole new state before touching anything
        let mut new_state: Vec<Vec<Option<R::State>>> =
            self.groups.iter().map(|g| vec![None; g.params.len()]).collect();
        for (&id, saved) in &sd.state {
            let &(gi, pi) = where_is.get(&id).ok_or(OptimError::UnknownParam { id })?;
            let shape = self.groups[gi].params[pi].shape();
            for (key, t) in &saved.buffers {
                if t.shape() != shape.as_slice() {
                    return Err(OptimError::StateShapeMismatch {
                        id,
                        key: key.clone(),
                        expected: shape.to_vec(),
                        found: t.shape().to_vec(),
                    });
                }
            }
            // deep copies: the optimiser's buffers must not share storage with the dict
            let mut ps = ParamState {
                step: saved.step,
                buffers: saved
                    .buffers
                    .iter()
                    .map(|(k, t)| (k.clone(), Tensor::from_vec(t.to_vec(), t.shape())))
                    .collect(),
            };
            let config = &sd.param_groups[gi].config;
            let st = R::load_state(config, &mut ps)
                .map_err(|MissingKey(key)| OptimError::MissingState { id, key: key.into() })?;
            if ps.step.is_some() {
                return Err(OptimError::UnexpectedState { id, key: "step".into() });
            }
            if let Some(key) = ps.buffers.keys().next() {
                return Err(OptimError::UnexpectedState { id, key: key.clone() });
            }
            new_state[gi][pi] = Some(st);
        }
        for (g, saved) in self.groups.iter_mut().zip(&sd.param_groups) {
            g.config = saved.config.clone();
            g.initial_lr = saved.initial_lr;
        }
        self.state = new_state;
        Ok(())
    }
}

impl<E: Float, R: UpdateRule<E>> LrGroups for RuleOptimizer<E, R> {
    fn num_param_groups(&self) -> usize {
        self.groups.len()
    }
    fn group_lr(&self, group: usize) -> f64 {
        self.groups[group].config.lr()
    }
    fn set_group_lr(&mut self, group: usize, lr: f64) {
        self.groups[group].config.set_lr(lr)
    }
    fn group_initial_lr(&self, group: usize) -> Option<f64> {
        self.groups[group].initial_lr
    }
    fn set_group_initial_lr(&mut self, group: usize, lr: f64) {
        self.groups[group].initial_lr = Some(lr)
    }
    fn group_momentum(&self, group: usize) -> Option<f64> {
        self.groups[group].config.momentum()
    }
    fn set_group_momentum(&mut self, group: usize, momentum: f64) {
        self.groups[group].config.set_momentum(momentum)
    }
}

/// `Ok(())` when `value` lies in the range, else the message `"{name} must be {range}, got
/// {value}"` (shared by the configs' `validate`).
pub(crate) fn check(ok: bool, name: &str, range: &str, value: f64) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{name} must be {range}, got {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adam, AdamConfig, RMSprop, RMSpropConfig, SGDConfig, SGD};

    fn param(v: &[f64]) -> Var<f64> {
        Var::param(Tensor::from_vec(v.to_vec(), &[v.len()]))
    }

    fn grad(p: &Var<f64>, g: &[f64]) {
        p.set_grad(Some(Tensor::from_vec(g.to_vec(), &[g.len()])));
    }

    fn ptr(t: &Tensor<f64>) -> *const f64 {
        t.as_slice().unwrap().as_ptr()
    }

    #[test]
    fn zero_grad_clears_every_group() {
        let (a, b) = (param(&[1.0]), param(&[2.0]));
        let mut opt = SGD::new(vec![a.clone()], SGDConfig::default());
        opt.add_param_group(ParamGroup::new(vec![b.clone()], SGDConfig::default()));
        grad(&a, &[1.0]);
        grad(&b, &[1.0]);
        opt.zero_grad();
        assert!(a.grad().is_none() && b.grad().is_none());
        // a step without gradients changes nothing and makes no state
        opt.step();
        assert_eq!((a.item(), b.item()), (1.0, 2.0));
        assert!(opt.state(&a).is_none());
    }

    #[test]
    fn frozen_and_gradless_params_are_skipped() {
        let (a, b, c) = (param(&[1.0]), param(&[1.0]), param(&[1.0]));
        let mut opt = Adam::new(vec![a.clone(), b.clone(), c.clone()], AdamConfig { lr: 0.1, ..Default::default() });
        b.set_requires_grad(false);
        grad(&a, &[1.0]);
        grad(&b, &[1.0]); // frozen: ignored even with a gradient
        opt.step();
        assert!(a.item() < 1.0);
        assert_eq!(b.item(), 1.0);
        assert_eq!(c.item(), 1.0);
        assert!(opt.state(&b).is_none() && opt.state(&c).is_none());
        assert_eq!(opt.state(&a).unwrap().step, 1);
    }

    #[test]
    fn param_groups_use_their_own_lr() {
        let (a, b) = (param(&[0.0]), param(&[0.0]));
        let mut opt = SGD::from_groups(vec![
            ParamGroup::new(vec![a.clone()], SGDConfig { lr: 0.1, ..Default::default() }),
            ParamGroup::new(vec![b.clone()], SGDConfig { lr: 0.01, ..Default::default() }),
        ]);
        grad(&a, &[1.0]);
        grad(&b, &[1.0]);
        opt.step();
        assert_eq!((a.item(), b.item()), (-0.1, -0.01));
        assert_eq!(opt.lr(), 0.1);
        // set_lr sets every group, as a scheduler would through LrGroups
        opt.set_lr(1.0);
        opt.set_group_lr(1, 2.0);
        opt.step();
        assert_eq!((a.item(), b.item()), (-1.1, -2.01));
        assert_eq!(opt.group_lr(0), 1.0);
    }

    #[test]
    #[should_panic(expected = "SGD: some parameters appear in more than one parameter group")]
    fn a_param_in_two_groups_panics() {
        let a = param(&[0.0]);
        let mut opt = SGD::new(vec![a.clone()], SGDConfig::default());
        opt.add_param_group(ParamGroup::new(vec![a], SGDConfig::default()));
    }

    #[test]
    #[should_panic(expected = "SGD: optimizer got an empty parameter list")]
    fn empty_params_panic() {
        let _ = SGD::<f64>::new(vec![], SGDConfig::default());
    }

    #[test]
    #[should_panic(expected = "Adam: step: gradient of shape [3] for a parameter of shape [2]")]
    fn wrong_gradient_shape_panics() {
        let a = param(&[0.0, 0.0]);
        let mut opt = Adam::new(vec![a.clone()], AdamConfig::default());
        grad(&a, &[1.0, 2.0, 3.0]);
        opt.step();
    }

    /// The state and the parameter keep their buffers from the second step on.
    #[test]
    fn steps_after_the_first_do_not_reallocate() {
        let a = param(&[1.0, 2.0, 3.0]);
        let cfg = RMSpropConfig { momentum: 0.9, centered: true, ..Default::default() };
        let mut rms = RMSprop::new(vec![a.clone()], cfg);
        let b = param(&[1.0, 2.0, 3.0]);
        let mut adam =
            Adam::new(vec![b.clone()], AdamConfig { amsgrad: true, weight_decay: 0.1, ..Default::default() });
        let c = param(&[1.0, 2.0, 3.0]);
        let mut sgd = SGD::new(vec![c.clone()], SGDConfig { momentum: 0.9, nesterov: true, ..Default::default() });
        let step_all = |rms: &mut RMSprop<f64>, adam: &mut Adam<f64>, sgd: &mut SGD<f64>| {
            for p in [&a, &b, &c] {
                grad(p, &[0.5, -1.0, 2.0]);
            }
            rms.step();
            adam.step();
            sgd.step();
        };
        step_all(&mut rms, &mut adam, &mut sgd);
        let ptrs = |rms: &RMSprop<f64>, adam: &Adam<f64>, sgd: &SGD<f64>| {
            let r = rms.state(&a).unwrap();
            let m = adam.state(&b).unwrap();
            let s = sgd.state(&c).unwrap();
            vec![
                ptr(&r.square_avg),
                ptr(r.grad_avg.as_ref().unwrap()),
                ptr(r.momentum_buffer.as_ref().unwrap()),
                ptr(&m.exp_avg),
                ptr(&m.exp_avg_sq),
                ptr(m.max_exp_avg_sq.as_ref().unwrap()),
                ptr(s.momentum_buffer.as_ref().unwrap()),
                a.with_value(ptr),
                b.with_value(ptr),
                c.with_value(ptr),
            ]
        };
        let before = ptrs(&rms, &adam, &sgd);
        for _ in 0..3 {
            step_all(&mut rms, &mut adam, &mut sgd);
        }
        assert_eq!(ptrs(&rms, &adam, &sgd), before);
        assert_eq!(adam.state(&b).unwrap().step, 4);
    }

    #[test]
    fn state_dict_round_trip_resumes_identically() {
        let make = || {
            let ps = vec![param(&[1.0, -2.0]), param(&[0.5])];
            let mut opt = Adam::new(ps.clone(), AdamConfig { lr: 0.05, amsgrad: true, ..Default::default() });
            opt.add_param_group(ParamGroup::new(
                vec![param(&[3.0, 3.0, 3.0])],
                AdamConfig { lr: 0.2, ..Default::default() },
            ));
            opt
        };
        let feed = |opt: &mut Adam<f64>, k: usize| {
            for (i, p) in opt.parameters().enumerate() {
                let n = p.numel();
                p.set_grad(Some(Tensor::from_vec((0..n).map(|j| ((i + j + k) as f64).sin()).collect(), &[n])));
            }
            opt.step();
        };
        let mut a = make();
        for k in 0..3 {
            feed(&mut a, k);
        }
        let sd = a.state_dict();
        assert_eq!(sd.optimizer, "Adam");
        assert_eq!(sd.param_groups[1].params, vec![2]);
        assert_eq!(sd.state[&0].step, Some(3));
        let json = serde_json::to_string(&sd).unwrap();
        let sd2: OptimizerStateDict<f64, AdamConfig> = serde_json::from_str(&json).unwrap();
        assert_eq!(sd, sd2);

        // a fresh optimiser over parameters with the same values, loaded, follows exactly
        let mut b = make();
        for (p, q) in a.parameters().zip(b.parameters()) {
            q.set_value(p.value().contiguous());
        }
        b.param_groups_mut()[1].config.lr = 123.0; // overwritten by the load
        b.load_state_dict(&sd2).unwrap();
        assert_eq!(b.param_groups()[1].config.lr, 0.2);
        for k in 3..6 {
            feed(&mut a, k);
            feed(&mut b, k);
        }
        for (p, q) in a.parameters().zip(b.parameters()) {
            assert_eq!(p.value().to_vec(), q.value().to_vec());
        }
        assert_eq!(a.state_dict(), b.state_dict());
    }

    #[test]
    fn bad_state_dicts_are_rejected_without_change() {
        let ps = vec![param(&[1.0, 2.0]), param(&[3.0])];
        let mut opt = Adam::new(ps.clone(), AdamConfig::default());
        for p in &ps {
            p.set_grad(Some(p.value().contiguous()));
        }
        opt.step();
        let good = opt.state_dict();
        let check = |opt: &mut Adam<f64>, sd: &OptimizerStateDict<f64, AdamConfig>, want: OptimError| {
            assert_eq!(opt.load_state_dict(sd).unwrap_err(), want);
            assert_eq!(opt.state_dict(), good, "a failed load changed the optimizer");
        };

        let mut sd = good.clone();
        sd.optimizer = "SGD".into();
        check(&mut opt, &sd, OptimError::OptimizerMismatch { expected: "Adam".into(), found: "SGD".into() });

        let mut sd = good.clone();
        sd.param_groups.push(sd.param_groups[0].clone());
        check(&mut opt, &sd, OptimError::GroupCountMismatch { expected: 1, found: 2 });

        let mut sd = good.clone();
        sd.param_groups[0].params.pop();
        check(&mut opt, &sd, OptimError::GroupSizeMismatch { group: 0, expected: 2, found: 1 });

        let mut sd = good.clone();
        sd.param_groups[0].config.betas.0 = 1.5;
        sd.param_groups[0].config.lr = 9.0;
        check(
            &mut opt,
            &sd,
            OptimError::InvalidConfig { group: 0, message: "betas.0 must be in [0, 1), got 1.5".into() },
        );

        let mut sd = good.clone();
        sd.param_groups[0].params = vec![0, 0];
        check(&mut opt, &sd, OptimError::DuplicateParam { id: 0 });

        let mut sd = good.clone();
        let s1 = sd.state.remove(&1).unwrap();
        sd.state.insert(7, s1);
        check(&mut opt, &sd, OptimError::UnknownParam { id: 7 });

        // the second parameter's state is bad: the first must not have been loaded either
        let mut sd = good.clone();
        sd.state.get_mut(&0).unwrap().buffers.get_mut("exp_avg").unwrap().fill_(42.0);
        sd.state.get_mut(&1).unwrap().buffers.remove("exp_avg_sq");
        check(&mut opt, &sd, OptimError::MissingState { id: 1, key: "exp_avg_sq".into() });

        let mut sd = good.clone();
        sd.state.get_mut(&1).unwrap().buffers.insert("momentum_buffer".into(), Tensor::zeros(&[1]));
        check(&mut opt, &sd, OptimError::UnexpectedState { id: 1, key: "momentum_buffer".into() });

        let mut sd = good.clone();
        sd.state.get_mut(&0).unwrap().buffers.insert("exp_avg".into(), Tensor::zeros(&[3]));
        check(
            &mut opt,
            &sd,
            OptimError::StateShapeMismatch { id: 0, key: "exp_avg".into(), expected: vec![2], found: vec![3] },
        );

        let mut sd = good.clone();
        sd.state.get_mut(&0).unwrap().step = None;
        check(&mut opt, &sd, OptimError::MissingState { id: 0, key: "step".into() });
    }

    #[test]
    fn loaded_state_does_not_share_storage_with_the_dict() {
        let a = param(&[1.0, 2.0]);
        let mut opt = SGD::new(vec![a.clone()], SGDConfig { momentum: 0.9, ..Default::default() });
        grad(&a, &[1.0, 1.0]);
        opt.step();
        let sd = opt.state_dict();
        opt.load_state_dict(&sd).unwrap();
        let buf = opt.state(&a).unwrap().momentum_buffer.as_ref().unwrap();
        assert!(!buf.shares_storage(&sd.state[&0].buffers["momentum_buffer"]));
    }
}
