//! [`Trainer`]: Keras-like `fit`, `evaluate` and `predict` for kiln models.

pub(crate) mod lr_finder;

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_autograd::{no_grad, Var};
use kiln_data::{Batch, Targets};
use kiln_metrics::Metric;
use kiln_nn::{Forward, Module};
use kiln_optim::lr_scheduler::LRScheduler;
use kiln_optim::{clip_grad_norm_, clip_grad_value_, LrGroups, Optimizer};
use kiln_tensor::Tensor;

use crate::callbacks::{BatchContext, Callback, EpochContext, StepContext};
use crate::checkpoint::TrainingState;
use crate::error::TrainError;
use crate::history::{EpochLogs, History};
use crate::source::{BatchSource, TrainLoss};

/// A metric factory: the trainer makes a fresh metric for training and one for validation
/// every epoch.
type MetricFactory = Box<dyn Fn() -> Box<dyn Metric<Output = f64>>>;

/// When a learning-rate scheduler steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerInterval {
    /// After every optimiser step (OneCycleLR, warm-up schedules).
    Batch,
    /// After every epoch (StepLR, CosineAnnealingLR over epochs, ...).
    Epoch,
}

/// How much the trainer prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing.
    Silent,
    /// One line per epoch.
    Epochs,
    /// A progress bar per epoch (on a terminal; one line per epoch otherwise), like Keras'
    /// `verbose=1`.
    ProgressBar,
}

/// Trains and evaluates models: the loop a PyTorch user writes by hand, with Keras' `fit`
/// conveniences (metrics, validation, callbacks, progress bars, gradient accumulation and
/// clipping, LR schedulers).
///
/// ```
/// use kiln_data::{Batch, Targets};
/// use kiln_nn::{Linear, MSELoss};
/// use kiln_optim::{SGD, SGDConfig};
/// use kiln_tensor::Tensor;
/// use kiln_train::{Trainer, Verbosity};
/// kiln_nn::init::manual_seed(0);
/// // y = 2x - 1 on four points
/// let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0], &[4, 1]);
/// let y = Tensor::from_vec(vec![-1.0f32, 1.0, 3.0, 5.0], &[4, 1]);
/// let data = vec![Batch { inputs: x, targets: Targets::Values(y) }];
/// let mut model: Linear = Linear::new(1, 1);
/// let mut opt = SGD::new(model_params(&model), SGDConfig { lr: 0.1, ..Default::default() });
/// # fn model_params(m: &Linear) -> Vec<kiln_autograd::Var> { use kiln_nn::Module; m.parameters() }
/// let history = Trainer::new(300).verbosity(Verbosity::Silent).fit(&mut model, &mut opt, &MSELoss::new(), &data, None)?;
/// assert!(history.last().unwrap()["loss"] < 1e-4);
/// # Ok::<(), kiln_train::TrainError>(())
/// ```
pub struct Trainer {
    epochs: usize,
    initial_epoch: usize,
    accumulation: usize,
    clip_norm: Option<f64>,
    clip_value: Option<f64>,
    verbosity: Verbosity,
    metrics: Vec<(String, MetricFactory)>,
    scheduler: Option<(Box<dyn LRScheduler>, SchedulerInterval)>,
    callbacks: Vec<Box<dyn Callback>>,
    terminate_on_nan: bool,
}

impl Trainer {
    /// A trainer for `epochs` epochs, printing a progress bar.
    pub fn new(epochs: usize) -> Self {
        Trainer {
            epochs,
            initial_epoch: 0,
            accumulation: 1,
            clip_norm: None,
            clip_value: None,
            verbosity: Verbosity::ProgressBar,
            metrics: Vec::new(),
            scheduler: None,
            callbacks: Vec::new(),
            terminate_on_nan: true,
        }
    }

    /// The epoch (0-based) to start from, like Keras' `initial_epoch`: `fit` runs epochs
    /// `initial_epoch..epochs`. Used to resume from a [`Checkpoint`](crate::checkpoint::Checkpoint)
    /// (`initial_epoch(ckpt.epoch)`).
    #[must_use]
    pub fn initial_epoch(mut self, epoch: usize) -> Self {
        self.initial_epoch = epoch;
        self
    }

    /// Adds a metric computed on training and validation batches each epoch (logged as
    /// `name` and `val_name`).
    #[must_use]
    pub fn metric<M: Metric<Output = f64> + 'static>(mut self, name: &str, make: impl Fn() -> M + 'static) -> Self {
        self.metrics.push((name.to_string(), Box::new(move || Box::new(make()))));
        self
    }

    /// Sums gradients over `steps` batches before each optimiser step (the loss of each
    /// batch is divided by `steps`, so the step equals one on a batch `steps` times larger).
    ///
    /// **Panics** if `steps == 0`.
    #[must_use]
    pub fn gradient_accumulation(mut self, steps: usize) -> Self {
        assert!(steps > 0, "gradient_accumulation: steps must be > 0");
        self.accumulation = steps;
        self
    }

    /// Clips the total gradient norm (2-norm over all parameters) before each step.
    #[must_use]
    pub fn clip_grad_norm(mut self, max_norm: f64) -> Self {
        self.clip_norm = Some(max_norm);
        self
    }

    /// Clips every gradient element to `[-value, value]` before each step.
    #[must_use]
    pub fn clip_grad_value(mut self, value: f64) -> Self {
        self.clip_value = Some(value);
        self
    }

    /// How much to print.
    #[must_use]
    pub fn verbosity(mut self, v: Verbosity) -> Self {
        self.verbosity = v;
        self
    }

    /// A learning-rate scheduler stepped per batch or per epoch.
    #[must_use]
    pub fn scheduler(mut self, s: impl LRScheduler + 'static, interval: SchedulerInterval) -> Self {
        self.scheduler = Some((Box::new(s), interval));
        self
    }

    /// Whether a NaN or infinite training loss stops `fit` with
    /// [`TrainError::NonFiniteLoss`] (default `true`, Keras' `TerminateOnNaN` always on). The
    /// check runs on every batch before its backward pass, so the parameters keep the values
    /// of the last finite step and callbacks' `on_train_end` still runs (an
    /// [`EarlyStopping`](crate::callbacks::EarlyStopping) with `restore_best_weights` restores
    /// the best epoch). With `false`, training goes on through non-finite losses (and
    /// [`ModelCheckpoint`](crate::callbacks::ModelCheckpoint) still refuses to save
    /// non-finite weights).
    #[must_use]
    pub fn terminate_on_nan(mut self, yes: bool) -> Self {
        self.terminate_on_nan = yes;
        self
    }

    /// Adds a callback.
    #[must_use]
    pub fn callback(mut self, c: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(c));
        self
    }

    /// Trains `model` on `train` for the configured epochs, validating on `val` after each
    /// epoch, and returns the per-epoch figures (Keras' `model.fit`).
    ///
    /// ```
    /// use kiln_data::{Batch, Targets};
    /// use kiln_metrics::Accuracy;
    /// use kiln_nn::{CrossEntropyLoss, Linear, Module};
    /// use kiln_optim::{Adam, AdamConfig};
    /// use kiln_tensor::Tensor;
    /// use kiln_train::{tensor_batches, TrainError, Trainer, Verbosity};
    /// // Two classes on a line: x < 0 is class 0, x > 0 class 1.
    /// let x = Tensor::from_vec((0..32).map(|i| (i as f32 - 15.5) / 8.0).collect(), &[32, 1]);
    /// let y = Targets::from((0..32).map(|i| usize::from(i >= 16)).collect::<Vec<_>>());
    /// let data = tensor_batches(&x, &y, 8);
    /// kiln_nn::init::manual_seed(0);
    /// let mut model: Linear = Linear::new(1, 2);
    /// let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 0.1, ..Default::default() });
    /// let mut trainer =
    ///     Trainer::new(30).verbosity(Verbosity::Silent).metric("accuracy", || Accuracy::multiclass(2));
    /// let loss = CrossEntropyLoss::default();
    /// let history = trainer.fit(&mut model, &mut opt, &loss, &data, Some(&data)).unwrap();
    /// assert_eq!(history.get("val_accuracy").last(), Some(&1.0));
    /// let train_loss = history.get("loss");
    /// assert!(train_loss[29] < train_loss[0] / 2.0);
    ///
    /// // No training data is an error, not an empty history.
    /// let empty: Vec<Batch> = Vec::new();
    /// let err = trainer.fit(&mut model, &mut opt, &loss, &empty, None).unwrap_err();
    /// assert!(matches!(err, TrainError::EmptyData { .. }), "{err}");
    /// ```
    ///
    /// # Errors
    /// [`TrainError::NonFiniteLoss`] naming the epoch and batch where the training loss became
    /// NaN or infinite (unless [`terminate_on_nan`](Self::terminate_on_nan) is off);
    /// [`TrainError::EmptyData`] when the training or validation source yields no sample.
    ///
    /// **Panics** where a callback panics (a [`ModelCheckpoint`](crate::callbacks::ModelCheckpoint)
    /// that cannot write its file) and on tensor-shape errors in the model or the loss.
    pub fn fit<M, O>(
        &mut self,
        model: &mut M,
        optimizer: &mut O,
        loss: &dyn TrainLoss,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
    ) -> Result<History, TrainError>
    where
        M: Module<f32> + Forward<f32>,
        O: Optimizer<f32> + LrGroups,
    {
        let mut step = |model: &M, batch: &Batch| {
            let out = model.forward(&Var::constant(batch.inputs.clone()));
            let l = loss.loss(&out, &batch.targets);
            (out, l)
        };
        self.fit_with(model, optimizer, &mut step, loss, train, val)
    }

    /// [`fit`](Trainer::fit) with a custom training step: `step(model, batch)` returns the
    /// model's output (what the metrics see) and the loss to minimise, for losses that need
    /// more than the output and the targets (a teacher's outputs in
    /// [`Distiller`](crate::Distiller), a penalty on intermediate activations, ...).
    /// Validation and [`evaluate`](Trainer::evaluate) use `val_loss` on the model's output.
    ///
    /// # Errors
    /// As [`fit`](Trainer::fit).
    // The closure type reads better in the docs spelt out than behind an alias.
    #[allow(clippy::type_complexity)]
    pub fn fit_with<M, O>(
        &mut self,
        model: &mut M,
        optimizer: &mut O,
        step: &mut dyn FnMut(&M, &Batch) -> (Var<f32>, Var<f32>),
        val_loss: &dyn TrainLoss,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
    ) -> Result<History, TrainError>
    where
        M: Module<f32> + Forward<f32>,
        O: Optimizer<f32> + LrGroups,
    {
        let mut history = History::default();
        let params = model.parameters();
        for c in &mut self.callbacks {
            c.on_train_begin(model);
        }
        for epoch in self.initial_epoch..self.epochs {
            model.train();
            let started = Instant::now();
            let n = train.num_batches();
            let bar = self.bar(n as u64, epoch);
            let mut metrics: Vec<Box<dyn Metric<Output = f64>>> = self.metrics.iter().map(|(_, f)| f()).collect();
            let (mut loss_sum, mut samples) = (0.0f64, 0usize);
            let mut pending = 0usize;
            for (i, batch) in train.batches().enumerate() {
                let (out, l) = step(model, &batch);
                let lv = l.item() as f64;
                if !lv.is_finite() && self.terminate_on_nan {
                    if let Some(b) = bar {
                        b.abandon();
                    }
                    optimizer.zero_grad();
                    for c in &mut self.callbacks {
                        c.on_train_end(model, &history);
                    }
                    model.eval();
                    return Err(TrainError::NonFiniteLoss { epoch: epoch + 1, batch: i + 1, loss: lv });
                }
                let scaled = if self.accumulation > 1 { l.div_scalar(self.accumulation as f32) } else { l };
                scaled.backward();
                pending += 1;
                let bs = batch.len();
                loss_sum += lv * bs as f64;
                samples += bs;
                update_metrics(&mut metrics, &out.value(), &batch.targets);
                if pending == self.accumulation || i + 1 == n {
                    for c in &mut self.callbacks {
                        c.on_before_optimizer_step(&StepContext { epoch, batch: i, batches: n, model: &*model });
                    }
                    if let Some(v) = self.clip_value {
                        clip_grad_value_(&params, v);
                    }
                    if let Some(m) = self.clip_norm {
                        clip_grad_norm_(&params, m, 2.0);
                    }
                    optimizer.step();
                    optimizer.zero_grad();
                    pending = 0;
                    if let Some((s, SchedulerInterval::Batch)) = &mut self.scheduler {
                        s.step(optimizer);
                    }
                }
                for c in &mut self.callbacks {
                    c.on_batch_end(&mut BatchContext { epoch, batch: i, loss: lv, optimizer });
                }
                if let Some(b) = &bar {
                    b.set_message(format!("loss {:.4}", loss_sum / samples.max(1) as f64));
                    b.inc(1);
                }
            }
            if samples == 0 {
                return Err(TrainError::EmptyData { what: "training data", epoch: epoch + 1 });
            }
            let mut logs = EpochLogs::new();
            logs.insert("lr".into(), optimizer.group_lr(0));
            logs.insert("loss".into(), loss_sum / samples as f64);
            for ((name, _), m) in self.metrics.iter().zip(&metrics) {
                logs.insert(name.clone(), m.compute());
            }
            if let Some((s, SchedulerInterval::Epoch)) = &mut self.scheduler {
                s.step(optimizer);
            }
            if let Some(v) = val {
                let vl = self.evaluate_source(model, val_loss, v, "validation data", epoch + 1)?;
                for (k, x) in vl {
                    logs.insert(format!("val_{k}"), x);
                }
                model.train();
            }
            logs.insert("time_s".into(), started.elapsed().as_secs_f64());
            for c in &mut self.callbacks {
                c.on_epoch_logs(epoch, &mut logs);
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if self.verbosity != Verbosity::Silent {
                eprintln!("{}", epoch_line(epoch, self.epochs, &logs));
            }
            history.epochs.push(logs.clone());
            let mut stop = false;
            let state = if self.callbacks.iter().any(|c| c.wants_training_state()) {
                Some(TrainingState::capture(&*optimizer, self.scheduler.as_ref().map(|(s, _)| &**s)))
            } else {
                None
            };
            for c in &mut self.callbacks {
                let mut ctx = EpochContext {
                    epoch,
                    logs: &logs,
                    history: &history,
                    model,
                    optimizer,
                    stop: false,
                    training_state: state.as_ref(),
                };
                c.on_epoch_end(&mut ctx);
                stop |= ctx.stop;
            }
            if stop {
                break;
            }
        }
        for c in &mut self.callbacks {
            c.on_train_end(model, &history);
        }
        model.eval();
        Ok(history)
    }

    /// The loss and metrics of `model` on `data` in evaluation mode, without recording a
    /// graph (keys `loss` and each metric's name).
    ///
    /// # Errors
    /// [`TrainError::EmptyData`] when `data` yields no sample.
    pub fn evaluate<M>(
        &self,
        model: &mut M,
        loss: &dyn TrainLoss,
        data: &dyn BatchSource,
    ) -> Result<EpochLogs, TrainError>
    where
        M: Module<f32> + Forward<f32>,
    {
        self.evaluate_source(model, loss, data, "evaluation data", 0)
    }

    fn evaluate_source<M>(
        &self,
        model: &mut M,
        loss: &dyn TrainLoss,
        data: &dyn BatchSource,
        what: &'static str,
        epoch: usize,
    ) -> Result<EpochLogs, TrainError>
    where
        M: Module<f32> + Forward<f32>,
    {
        model.eval();
        let mut metrics: Vec<Box<dyn Metric<Output = f64>>> = self.metrics.iter().map(|(_, f)| f()).collect();
        let (mut loss_sum, mut samples) = (0.0f64, 0usize);
        no_grad(|| {
            for batch in data.batches() {
                let out = model.forward(&Var::constant(batch.inputs.clone()));
                let l = loss.loss(&out, &batch.targets).item() as f64;
                loss_sum += l * batch.len() as f64;
                samples += batch.len();
                update_metrics(&mut metrics, &out.value(), &batch.targets);
            }
        });
        if samples == 0 {
            return Err(TrainError::EmptyData { what, epoch });
        }
        let mut logs = EpochLogs::new();
        logs.insert("loss".into(), loss_sum / samples as f64);
        for ((name, _), m) in self.metrics.iter().zip(&metrics) {
            logs.insert(name.clone(), m.compute());
        }
        Ok(logs)
    }

    fn bar(&self, len: u64, epoch: usize) -> Option<ProgressBar> {
        if self.verbosity != Verbosity::ProgressBar || !std::io::stderr().is_terminal() {
            return None;
        }
        let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
        Some(b)
    }
}

/// The model's outputs for every batch of `data`, concatenated along dim 0, in evaluation
/// mode and without a graph, like Keras' `predict`.
pub fn predict<M: Module<f32> + Forward<f32>>(model: &mut M, data: &dyn BatchSource) -> Tensor<f32> {
    model.eval();
    let outs: Vec<Tensor<f32>> =
        no_grad(|| data.batches().map(|b| model.forward(&Var::constant(b.inputs)).value()).collect());
    assert!(!outs.is_empty(), "predict: the data source yielded no batch");
    Tensor::cat(&outs, 0)
}

fn update_metrics(metrics: &mut [Box<dyn Metric<Output = f64>>], out: &Tensor<f32>, targets: &Targets) {
    if metrics.is_empty() {
        return;
    }
    match targets {
        Targets::Classes(_) => {
            let t = targets.class_indices();
            for m in metrics.iter_mut() {
                m.update(out, t);
            }
        }
        Targets::Values(v) => {
            let v = if v.shape() == out.shape() { v.clone() } else { v.reshape(out.shape()) };
            for m in metrics.iter_mut() {
                m.update(out, &v);
            }
        }
    }
}

fn epoch_line(epoch: usize, epochs: usize, logs: &EpochLogs) -> String {
    let mut s = format!("epoch {}/{}", epoch + 1, epochs);
    for (k, v) in logs {
        if k == "time_s" {
            continue;
        }
        s.push_str(&format!(" - {k}: {v:.4}"));
    }
    if let Some(t) = logs.get("time_s") {
        s.push_str(&format!(" - {t:.1}s"));
    }
    s
}

/// Batches of in-memory tensors, for small data sets and tests: splits `inputs` and
/// `targets` along dim 0 into batches of `batch_size` (in order).
pub fn tensor_batches(inputs: &Tensor<f32>, targets: &Targets, batch_size: usize) -> Vec<Batch> {
    assert!(batch_size > 0, "tensor_batches: batch_size must be > 0");
    let n = inputs.shape()[0];
    (0..n)
        .step_by(batch_size)
        .map(|s| {
            let len = batch_size.min(n - s);
            let t = match targets {
                Targets::Classes(c) => Targets::from(c.as_slice()[s..s + len].to_vec()),
                Targets::Values(v) => Targets::Values(v.narrow(0, s, len).contiguous()),
            };
            Batch { inputs: inputs.narrow(0, s, len).contiguous(), targets: t }
        })
        .collect()
}
