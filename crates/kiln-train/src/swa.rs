//! Stochastic weight averaging and exponential moving averages in the training loop:
//! [`update_bn`] (`torch.optim.swa_utils.update_bn`), and the callbacks [`SwaCallback`]
//! (Lightning's `StochasticWeightAveraging`) and [`EmaCallback`].

use std::any::Any;
use std::collections::BTreeMap;

use kiln_autograd::{no_grad, Var};
use kiln_nn::{BatchNorm, BatchNormConfig, Forward, Layer, Module, ModuleList, Sequential, StateDict, TensorKind};
use kiln_optim::lr_scheduler::{AnnealStrategy, LRScheduler, SWALR};
use kiln_optim::LrGroups;
use kiln_tensor::{Float, Tensor};

use crate::callbacks::{BatchContext, Callback, EpochContext, StepContext};
use crate::history::{EpochLogs, History};
use crate::source::BatchSource;
use crate::weight_averaging::{AveragedModel, ExponentialMovingAverage};

/// Calls `f(prefix, config)` for every batch-norm layer reachable by value from `node`: the
/// node itself, and the layers of `Sequential`s, `ModuleList`s and boxed layers, recursively.
/// `prefix` is the layer's `state_dict` key prefix (`"1."`, `"block.0."` is out of reach).
fn walk_batch_norms<E: Float + 'static>(
    node: &mut dyn Any,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut BatchNormConfig),
) {
    if let Some(bn) = node.downcast_mut::<BatchNorm<E, 1>>() {
        f(prefix, &mut bn.config);
    } else if let Some(bn) = node.downcast_mut::<BatchNorm<E, 2>>() {
        f(prefix, &mut bn.config);
    } else if let Some(bn) = node.downcast_mut::<BatchNorm<E, 3>>() {
        f(prefix, &mut bn.config);
    } else if let Some(seq) = node.downcast_mut::<Sequential<E>>() {
        for i in 0..seq.len() {
            let layer = seq.get_mut(i).expect("index below len");
            walk_batch_norms::<E>(layer.as_any_mut(), &format!("{prefix}{i}."), f);
        }
    } else if let Some(list) = node.downcast_mut::<ModuleList<E>>() {
        for (i, layer) in list.iter_mut().enumerate() {
            walk_batch_norms::<E>((**layer).as_any_mut(), &format!("{prefix}{i}."), f);
        }
    } else if let Some(layers) = node.downcast_mut::<Vec<Box<dyn Layer<E>>>>() {
        for (i, layer) in layers.iter_mut().enumerate() {
            walk_batch_norms::<E>((**layer).as_any_mut(), &format!("{prefix}{i}."), f);
        }
    } else if let Some(layer) = node.downcast_mut::<Box<dyn Layer<E>>>() {
        walk_batch_norms::<E>((**layer).as_any_mut(), prefix, f);
    }
}

/// Recomputes the running statistics of every batch-norm layer of `model` from the inputs of
/// `loader` (the first element of each batch), as `torch.optim.swa_utils.update_bn` does for
/// a model whose weights were averaged: the statistics are reset, each layer's momentum is
/// set to `None` (a cumulative average over the batches), one training-mode forward pass is
/// made per batch without recording a graph, then the momenta and the model's mode are
/// restored. A model without batch norm is left as it is.
///
/// **Panics** if a batch-norm layer cannot be reached to switch its momentum (see
/// [`update_bn_inputs`]), or on the model's own shape errors.
pub fn update_bn<M: Module<f32> + Forward<f32> + 'static>(loader: &dyn BatchSource, model: &mut M) {
    update_bn_inputs(loader.batches().map(|b| b.inputs), model);
}

/// [`update_bn`] over input tensors of any element type.
///
/// The layers are found by value from the model: the model itself when it is a
/// [`BatchNorm`], and the layers of [`Sequential`], [`ModuleList`] and `Box<dyn Layer>`
/// containers, recursively. A batch-norm layer inside a struct of your own (a
/// `#[derive(Module)]` field) is not reachable that way: keep it in a `Sequential` (or call
/// `update_bn` on the sub-model that holds it).
///
/// **Panics** when the model has batch-norm buffers (`*.running_mean`) that the walk did not
/// reach, naming them (silently averaging them with the wrong momentum would be worse).
///
/// ```
/// use kiln_nn::{BatchNorm1d, BatchNormConfig, Layer, Module, Sequential};
/// use kiln_tensor::Tensor;
/// use kiln_train::update_bn_inputs;
/// let bn: BatchNorm1d<f64> = BatchNormConfig::new(1).build().unwrap();
/// let mut model: Sequential<f64> = Sequential::new_generic().add(bn);
/// let batches = vec![
///     Tensor::from_vec(vec![1.0, 3.0], &[2, 1]), // mean 2, unbiased variance 2
///     Tensor::from_vec(vec![4.0, 8.0], &[2, 1]), // mean 6, unbiased variance 8
/// ];
/// model.eval();
/// update_bn_inputs(batches, &mut model);
/// let sd = model.state_dict();
/// assert_eq!(sd["0.running_mean"].to_vec(), vec![4.0]); // the plain average, not momentum 0.1
/// assert_eq!(sd["0.running_var"].to_vec(), vec![5.0]);
/// let bn = model[0].downcast_ref::<BatchNorm1d<f64>>().unwrap();
/// assert_eq!(bn.config.momentum, Some(0.1)); // restored
/// assert!(!model.is_training()); // so is the mode
/// ```
pub fn update_bn_inputs<E, M, I>(inputs: I, model: &mut M)
where
    E: Float + 'static,
    M: Module<E> + Forward<E> + 'static,
    I: IntoIterator<Item = Tensor<E>>,
{
    let mut momenta: BTreeMap<String, Option<f64>> = BTreeMap::new();
    walk_batch_norms::<E>(&mut *model, "", &mut |prefix, config| {
        momenta.insert(prefix.to_string(), config.momentum);
    });
    let unreached: Vec<String> = model
        .named_buffers()
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix("running_mean").map(str::to_string))
        .filter(|p| !momenta.contains_key(p))
        .map(|p| p.trim_end_matches('.').to_string())
        .collect();
    assert!(
        unreached.is_empty(),
        "update_bn: cannot reach the batch-norm layer(s) {unreached:?} to switch their momentum: update_bn walks \
         the model and its Sequential, ModuleList and Box<dyn Layer> children; hold these layers in one of those"
    );
    if momenta.is_empty() {
        return;
    }
    // reset_running_stats(), through the buffers: mean 0, variance 1, no batch tracked
    let buffers: BTreeMap<String, Var<E>> = model.named_buffers().into_iter().collect();
    for prefix in momenta.keys() {
        for (name, value) in [("running_mean", 0.0), ("running_var", 1.0), ("num_batches_tracked", 0.0)] {
            if let Some(v) = buffers.get(&format!("{prefix}{name}")) {
                v.set_value(Tensor::zeros(&v.shape()).add_scalar(E::from_f64(value)));
            }
        }
    }
    let was_training = model.is_training();
    model.train();
    walk_batch_norms::<E>(&mut *model, "", &mut |_, config| config.momentum = None);
    no_grad(|| {
        for x in inputs {
            let _ = model.forward(&Var::constant(x));
        }
    });
    walk_batch_norms::<E>(&mut *model, "", &mut |prefix, config| {
        config.momentum = momenta[prefix];
    });
    model.set_training(was_training);
}

/// The parameters and buffers of a model, held by handle: the trainer's callbacks see the
/// model only at some hooks, but a handle reads and writes the same tensors at any time.
struct Handles(Vec<(String, Var<f32>, TensorKind)>);

impl Handles {
    fn of(model: &dyn Module<f32>) -> Self {
        let mut v = Vec::new();
        model.visit("", &mut |k, var, kind| v.push((k.to_string(), var.clone(), kind)));
        Handles(v)
    }
}

impl Module<f32> for Handles {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        for (k, v, kind) in &self.0 {
            f(&format!("{prefix}{k}"), v, *kind);
        }
    }
}

/// Writes `state` into `model` by key (the state was taken from the same model).
fn load_all(model: &mut dyn Module<f32>, state: &StateDict<f32>) {
    model.load_state_dict(state, false).expect("the state comes from the same model");
}

type BnUpdate = Box<dyn FnMut(&StateDict<f32>) -> StateDict<f32>>;

/// Stochastic weight averaging in [`Trainer::fit`](crate::Trainer::fit), as PyTorch
/// Lightning's `StochasticWeightAveraging` callback does it (Izmailov et al. 2018):
///
/// - from epoch `swa_start` (0-based) on, the model's parameters after each epoch enter an
///   equal-weight running mean ([`AveragedModel`]);
/// - with [`swa_lr`](Self::swa_lr), a [`SWALR`] schedule takes the learning rate over at epoch
///   `swa_start` (annealing from the current rate to `swa_lr`, then constant); it overrides
///   the trainer's own scheduler from then on;
/// - when training ends, the averaged weights are written into the model, and with
///   [`update_bn`](Self::update_bn) its batch-norm statistics are recomputed for them
///   ([`update_bn`]) on a copy of the model, then copied in too.
///
/// ```
/// use kiln_data::{Batch, Targets};
/// use kiln_nn::{Linear, MSELoss, Module};
/// use kiln_optim::{SGD, SGDConfig};
/// use kiln_optim::lr_scheduler::AnnealStrategy;
/// use kiln_tensor::Tensor;
/// use kiln_train::{SwaCallback, Trainer, Verbosity};
/// kiln_nn::init::manual_seed(0);
/// let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[4, 1]);
/// let data = vec![Batch { inputs: x.clone(), targets: Targets::Values(x.mul_scalar(2.0)) }];
/// let mut model: Linear = Linear::new(1, 1);
/// let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.05, ..Default::default() });
/// let swa = SwaCallback::new(5).swa_lr(&[0.01], 2, AnnealStrategy::Cos);
/// let history = Trainer::new(10).verbosity(Verbosity::Silent).callback(swa)
///     .fit(&mut model, &mut opt, &MSELoss::new(), &data, None)?;
/// assert!((history.epochs[9]["lr"] - 0.01).abs() < 1e-9); // SWALR annealed to swa_lr
/// # Ok::<(), kiln_train::TrainError>(())
/// ```
pub struct SwaCallback {
    swa_start: usize,
    swa_lr: Option<(Vec<f64>, usize, AnnealStrategy)>,
    averaged: Option<AveragedModel<f32>>,
    scheduler: Option<SWALR>,
    bn_update: Option<BnUpdate>,
}

impl SwaCallback {
    /// Averages the weights after every epoch from `swa_start` (0-based) on.
    pub fn new(swa_start: usize) -> Self {
        SwaCallback { swa_start, swa_lr: None, averaged: None, scheduler: None, bn_update: None }
    }

    /// Anneals the learning rate to `swa_lrs` (one value, or one per parameter group) over
    /// `anneal_epochs` epochs from epoch `swa_start` on, with [`SWALR`] (Lightning's defaults:
    /// 10 epochs, cosine).
    #[must_use]
    pub fn swa_lr(mut self, swa_lrs: &[f64], anneal_epochs: usize, strategy: AnnealStrategy) -> Self {
        self.swa_lr = Some((swa_lrs.to_vec(), anneal_epochs, strategy));
        self
    }

    /// Recomputes the batch-norm statistics of the averaged weights at the end of training,
    /// with [`update_bn`] over `loader`, on `copy`: a second instance of the model's
    /// architecture (the trainer lends callbacks its model for reading only), like the
    /// deep copy PyTorch's `AveragedModel` holds.
    #[must_use]
    pub fn update_bn<M: Module<f32> + Forward<f32> + 'static>(
        mut self,
        mut copy: M,
        loader: impl BatchSource + 'static,
    ) -> Self {
        self.bn_update = Some(Box::new(move |avg: &StateDict<f32>| {
            copy.load_state_dict(avg, true).unwrap_or_else(|e| {
                panic!("SwaCallback::update_bn: the copy does not have the trained model's architecture: {e}")
            });
            update_bn(&loader, &mut copy);
            copy.state_dict()
        }));
        self
    }

    /// How many epochs' weights are in the average so far.
    pub fn n_averaged(&self) -> u64 {
        self.averaged.as_ref().map_or(0, AveragedModel::n_averaged)
    }

    fn start_schedule(&mut self, opt: &mut dyn LrGroups) {
        if self.scheduler.is_none() {
            if let Some((lrs, epochs, strategy)) = &self.swa_lr {
                self.scheduler = Some(SWALR::new(opt, lrs, *epochs, *strategy));
            }
        }
    }

    /// Puts SWALR's learning rates back where another scheduler moved them.
    fn impose(&self, opt: &mut dyn LrGroups) {
        if let Some(s) = &self.scheduler {
            for (i, &lr) in s.get_last_lr().iter().enumerate() {
                opt.set_group_lr(i, lr);
            }
        }
    }
}

impl Callback for SwaCallback {
    fn on_batch_end(&mut self, ctx: &mut BatchContext<'_>) {
        if ctx.epoch >= self.swa_start {
            // swa_start = 0: no epoch end came before, start on the first batch
            self.start_schedule(ctx.optimizer);
            self.impose(ctx.optimizer);
        }
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        if ctx.epoch >= self.swa_start {
            self.averaged.get_or_insert_with(|| AveragedModel::new(ctx.model)).update_parameters(ctx.model);
            self.impose(ctx.optimizer);
            if let Some(s) = &mut self.scheduler {
                s.step(ctx.optimizer);
            }
        } else if ctx.epoch + 1 == self.swa_start {
            self.start_schedule(ctx.optimizer);
        }
    }

    fn on_train_end(&mut self, model: &mut dyn Module<f32>, _history: &History) {
        let Some(avg) = &self.averaged else { return };
        let mut state = avg.state_dict();
        if let Some(f) = &mut self.bn_update {
            state = f(&state);
        }
        load_all(model, &state);
    }
}

/// An exponential moving average of the weights in [`Trainer::fit`](crate::Trainer::fit):
/// [`ExponentialMovingAverage`] updated after every optimiser step, with the averaged weights
/// swapped in for each epoch's validation and written into the model when training ends (as
/// timm's `ModelEmaV2` is used for evaluation).
///
/// ```
/// use kiln_data::{Batch, Targets};
/// use kiln_nn::{Linear, MSELoss, Module};
/// use kiln_optim::{SGD, SGDConfig};
/// use kiln_tensor::Tensor;
/// use kiln_train::{EmaCallback, Trainer, Verbosity};
/// kiln_nn::init::manual_seed(0);
/// let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[4, 1]);
/// let data = vec![Batch { inputs: x.clone(), targets: Targets::Values(x.mul_scalar(2.0)) }];
/// let mut model: Linear = Linear::new(1, 1);
/// let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.05, ..Default::default() });
/// let history = Trainer::new(200).verbosity(Verbosity::Silent).callback(EmaCallback::new(0.9))
///     .fit(&mut model, &mut opt, &MSELoss::new(), &data, Some(&data))?;
/// assert!(history.last().unwrap()["val_loss"] < 1e-3); // the average converged too
/// # Ok::<(), kiln_train::TrainError>(())
/// ```
pub struct EmaCallback {
    decay: f64,
    warmup: bool,
    validate_with_ema: bool,
    handles: Option<Handles>,
    ema: Option<ExponentialMovingAverage<f32>>,
    /// Set before an optimiser step: whether it ends the epoch.
    stepping: Option<bool>,
    /// The live weights while the average is swapped in.
    live: Option<StateDict<f32>>,
}

impl EmaCallback {
    /// An average with `decay` (torch-ema's and timm's 0.999 or 0.9999 are usual), without
    /// warm-up, used for validation.
    ///
    /// **Panics** if `decay` is outside `[0, 1]`.
    pub fn new(decay: f64) -> Self {
        assert!((0.0..=1.0).contains(&decay), "EmaCallback: decay must be in [0, 1], got {decay}");
        EmaCallback {
            decay,
            warmup: false,
            validate_with_ema: true,
            handles: None,
            ema: None,
            stepping: None,
            live: None,
        }
    }

    /// torch-ema's warm-up: update `t` uses `min(decay, (1 + t) / (10 + t))`.
    #[must_use]
    pub fn warmup(mut self, on: bool) -> Self {
        self.warmup = on;
        self
    }

    /// Whether each epoch's validation runs on the averaged weights (default `true`); with
    /// `false` it runs on the live ones, and the average is only written in at the end.
    #[must_use]
    pub fn validate_with_ema(mut self, on: bool) -> Self {
        self.validate_with_ema = on;
        self
    }

    /// The average, once training has begun.
    pub fn average(&self) -> Option<&ExponentialMovingAverage<f32>> {
        self.ema.as_ref()
    }

    fn restore_live(&mut self) {
        if let (Some(live), Some(h)) = (self.live.take(), &mut self.handles) {
            load_all(h, &live);
        }
    }
}

impl Callback for EmaCallback {
    fn on_train_begin(&mut self, model: &dyn Module<f32>) {
        self.ema = Some(ExponentialMovingAverage::new(model, self.decay).with_warmup(self.warmup));
        self.handles = Some(Handles::of(model));
        self.stepping = None;
        self.live = None;
    }

    fn on_before_optimizer_step(&mut self, ctx: &StepContext<'_>) {
        self.stepping = Some(ctx.batch + 1 == ctx.batches);
    }

    fn on_batch_end(&mut self, _ctx: &mut BatchContext<'_>) {
        let Some(last) = self.stepping.take() else { return };
        let (Some(ema), Some(h)) = (&mut self.ema, &self.handles) else { return };
        ema.update(h);
        if last && self.validate_with_ema {
            self.live = Some(h.state_dict());
            ema.copy_to(h);
        }
    }

    fn on_epoch_logs(&mut self, _epoch: usize, _logs: &mut EpochLogs) {
        self.restore_live();
    }

    fn on_train_end(&mut self, model: &mut dyn Module<f32>, _history: &History) {
        self.restore_live();
        if let Some(ema) = &self.ema {
            ema.copy_to(model);
        }
    }
}
