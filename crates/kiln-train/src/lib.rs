//! # kiln-train
//!
//! The training loop of kiln: [`Trainer`] with Keras-like `fit` / `evaluate` and [`predict`],
//! a [`History`] of per-epoch figures, [`callbacks`], progress bars (indicatif, quiet when
//! stderr is not a terminal), gradient accumulation and clipping, and LR schedulers stepped per
//! batch or per epoch.
//!
//! Around it: [`checkpoint`]s of the whole training state (model, optimiser, scheduler, epoch,
//! RNG, history) that a run resumes from exactly; [`History::plot`] and
//! [`plot_confusion_matrix`] for PNG pictures; [`cross_validate`] for k-fold
//! cross-validation; [`Distiller`] for knowledge distillation of a teacher into a student;
//! and [`TrainError`], the error of everything that reads or writes files.

pub mod callbacks;
pub mod checkpoint;
pub mod cross_validation;
mod distill;
mod error;
mod history;
mod plot;
mod source;
mod swa;
mod trainer;
mod weight_averaging;

pub use callbacks::{BatchContext, Callback, EpochContext, StepContext};
pub use checkpoint::{load_checkpoint, save_checkpoint, Checkpoint};
pub use cross_validation::{cross_validate, CrossValidation, CrossValidationReport, CvFold};
pub use distill::{Distiller, Features};
pub use error::TrainError;
pub use history::{EpochLogs, History};
pub use plot::plot_confusion_matrix;
pub use source::{BatchSource, TrainLoss};
pub use swa::{update_bn, update_bn_inputs, EmaCallback, SwaCallback};
pub use trainer::lr_finder::{LrFinderConfig, LrFinderResult};
pub use trainer::{predict, tensor_batches, SchedulerInterval, Trainer, Verbosity};
pub use weight_averaging::{AveragedModel, ExponentialMovingAverage};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
