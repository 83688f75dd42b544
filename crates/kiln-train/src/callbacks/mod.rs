//! Callbacks: code the trainer runs at the start and end of training, of each epoch and of
//! each batch (`EarlyStopping`, `ModelCheckpoint`, `ReduceLROnPlateau`, `CsvLogger`,
//! `LambdaCallback`, `TensorBoardLogger`, or your own [`Callback`]).

use kiln_nn::Module;
use kiln_optim::LrGroups;

use crate::checkpoint::TrainingState;
use crate::history::{EpochLogs, History};

mod csv_logger;
mod early_stopping;
mod lambda_callback;
mod model_checkpoint;
mod reduce_lr_on_plateau;
mod tensorboard_logger;

pub use csv_logger::CsvLogger;
pub use early_stopping::{EarlyStopping, Mode};
pub use lambda_callback::LambdaCallback;
pub use model_checkpoint::ModelCheckpoint;
pub use reduce_lr_on_plateau::ReduceLROnPlateau;
pub use tensorboard_logger::TensorBoardLogger;

/// The name of the first parameter or buffer of `model` holding a NaN or an infinity, if any:
/// a model in that state must never replace a saved or remembered good one.
pub(crate) fn non_finite_tensor(model: &dyn Module<f32>) -> Option<String> {
    let mut found = None;
    model.visit("", &mut |name, var, _| {
        if found.is_none() && var.value().to_vec().iter().any(|v| !v.is_finite()) {
            found = Some(name.to_string());
        }
    });
    found
}

/// What a callback sees and may change at the end of an epoch.
pub struct EpochContext<'a> {
    /// The epoch just finished (0-based).
    pub epoch: usize,
    /// Its figures (`loss`, `val_loss`, metrics, `lr`).
    pub logs: &'a EpochLogs,
    /// Every epoch so far, this one included.
    pub history: &'a History,
    /// The model, to read (its `state_dict`, for a checkpoint); a callback that loads weights
    /// back does it in [`Callback::on_train_end`], which gets the model mutably.
    pub model: &'a dyn Module<f32>,
    /// The optimiser's learning rates (and momenta).
    pub optimizer: &'a mut dyn LrGroups,
    /// Set to `true` to end training after this epoch.
    pub stop: bool,
    /// The optimiser's and the scheduler's states after this epoch, captured only when a
    /// callback [asks for them](Callback::wants_training_state) (for full checkpoints).
    pub training_state: Option<&'a TrainingState>,
}

/// What a callback sees at the end of a batch.
pub struct BatchContext<'a> {
    /// The current epoch (0-based).
    pub epoch: usize,
    /// The batch within the epoch (0-based).
    pub batch: usize,
    /// This batch's loss.
    pub loss: f64,
    /// The optimiser's learning rates.
    pub optimizer: &'a mut dyn LrGroups,
}

/// What a callback sees just before an optimiser step, with the gradients accumulated.
pub struct StepContext<'a> {
    /// The current epoch (0-based).
    pub epoch: usize,
    /// The batch within the epoch whose backward pass completed the gradients (0-based).
    pub batch: usize,
    /// The number of batches in the epoch.
    pub batches: usize,
    /// The model, its parameters' gradients set (read them with `Var::grad`).
    pub model: &'a dyn Module<f32>,
}

/// Hooks into the training loop. Every method has an empty default.
pub trait Callback {
    /// Before the first epoch.
    fn on_train_begin(&mut self, model: &dyn Module<f32>) {
        let _ = model;
    }
    /// Before every optimiser step, once the gradients are accumulated (after the last batch
    /// of a [gradient accumulation](crate::Trainer::gradient_accumulation) group) and before
    /// they are clipped, like Lightning's `on_before_optimizer_step`.
    fn on_before_optimizer_step(&mut self, ctx: &StepContext<'_>) {
        let _ = ctx;
    }
    /// After every batch's optimiser step.
    fn on_batch_end(&mut self, ctx: &mut BatchContext<'_>) {
        let _ = ctx;
    }
    /// After every epoch's figures (training and validation) are computed, before they are
    /// printed, recorded in the [`History`] and passed to any [`on_epoch_end`](Self::on_epoch_end):
    /// a callback may change them (a data-parallel run averages them over its processes, so
    /// every process logs, checkpoints and stops early on the same figures). Every
    /// callback's `on_epoch_logs` runs before the first `on_epoch_end`.
    fn on_epoch_logs(&mut self, epoch: usize, logs: &mut EpochLogs) {
        let _ = (epoch, logs);
    }
    /// After every epoch (training and validation), with its figures.
    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        let _ = ctx;
    }
    /// Whether this callback needs [`EpochContext::training_state`] (the optimiser's and the
    /// scheduler's states, which cost a copy of the optimiser's buffers to capture). Default
    /// `false`.
    fn wants_training_state(&self) -> bool {
        false
    }
    /// After the last epoch (or an early stop).
    fn on_train_end(&mut self, model: &mut dyn Module<f32>, history: &History) {
        let _ = (model, history);
    }
}
