//! [`ReduceLROnPlateau`]: cut the learning rate when a monitored figure plateaus.

use kiln_nn::Module;
use kiln_optim::lr_scheduler::{self, PlateauMode, ReduceLROnPlateauConfig};

use super::{Callback, EpochContext, Mode};

/// Multiplies the optimiser's learning rates by `factor` when a monitored figure has not
/// improved for more than `patience` epochs, like Keras' `ReduceLROnPlateau`; the rule is
/// kiln-optim's (and PyTorch's) [`lr_scheduler::ReduceLROnPlateau`], stepped once per epoch with
/// the figure.
///
/// The scheduler is built on the optimiser at the first epoch's end of each `fit`, from the
/// learning rates then in force. The new rate applies from the next epoch; the epoch logs'
/// `lr` shows the rate each epoch trained with. An epoch whose logs lack `monitor` is skipped
/// with a warning on stderr.
///
/// ```
/// use kiln_train::callbacks::{Mode, ReduceLROnPlateau};
/// let cb = ReduceLROnPlateau::new("val_loss").factor(0.5).patience(2).min_lr(1e-5);
/// assert_eq!(cb.resolved_mode(), Mode::Min);
/// ```
pub struct ReduceLROnPlateau {
    monitor: String,
    mode: Mode,
    config: ReduceLROnPlateauConfig,
    verbose: bool,
    scheduler: Option<lr_scheduler::ReduceLROnPlateau>,
    warned: bool,
}

impl ReduceLROnPlateau {
    /// Monitors `monitor` with PyTorch's defaults (factor 0.1, patience 10, relative threshold
    /// 1e-4, no cooldown, min_lr 0) and the mode inferred from the name ([`Mode::Auto`]).
    pub fn new(monitor: &str) -> Self {
        ReduceLROnPlateau {
            monitor: monitor.to_string(),
            mode: Mode::Auto,
            config: ReduceLROnPlateauConfig::default(),
            verbose: false,
            scheduler: None,
            warned: false,
        }
    }

    /// Replaces every setting with `config`, its `mode` included.
    #[must_use]
    pub fn config(mut self, config: ReduceLROnPlateauConfig) -> Self {
        self.mode = match config.mode {
            PlateauMode::Min => Mode::Min,
            PlateauMode::Max => Mode::Max,
        };
        self.config = config;
        self
    }

    /// Whether lower or higher is better (default [`Mode::Auto`]).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// `new_lr = lr · factor` (default 0.1).
    ///
    /// **Panics** (when training starts) unless `factor < 1`.
    #[must_use]
    pub fn factor(mut self, factor: f64) -> Self {
        self.config.factor = factor;
        self
    }

    /// Epochs without improvement tolerated before a cut (default 10).
    #[must_use]
    pub fn patience(mut self, patience: usize) -> Self {
        self.config.patience = patience;
        self
    }

    /// Epochs to wait after a cut before counting again (default 0).
    #[must_use]
    pub fn cooldown(mut self, cooldown: usize) -> Self {
        self.config.cooldown = cooldown;
        self
    }

    /// The lower bound of every group's learning rate (default 0).
    #[must_use]
    pub fn min_lr(mut self, min_lr: f64) -> Self {
        self.config.min_lr = min_lr;
        self
    }

    /// Print a line at each cut (default false).
    #[must_use]
    pub fn verbose(mut self, yes: bool) -> Self {
        self.verbose = yes;
        self
    }

    /// The resolved mode (`Min` or `Max`).
    pub fn resolved_mode(&self) -> Mode {
        self.mode.resolve(&self.monitor)
    }
}

impl Callback for ReduceLROnPlateau {
    fn on_train_begin(&mut self, _model: &dyn Module<f32>) {
        self.scheduler = None;
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        let Some(&current) = ctx.logs.get(&self.monitor) else {
            if !self.warned {
                eprintln!("ReduceLROnPlateau: the epoch logs have no {:?}; skipping", self.monitor);
                self.warned = true;
            }
            return;
        };
        if self.scheduler.is_none() {
            let mut config = self.config.clone();
            config.mode = match self.resolved_mode() {
                Mode::Max => PlateauMode::Max,
                _ => PlateauMode::Min,
            };
            self.scheduler = Some(lr_scheduler::ReduceLROnPlateau::new(ctx.optimizer, config));
        }
        let before = ctx.optimizer.group_lr(0);
        self.scheduler.as_mut().expect("built above").step(ctx.optimizer, current);
        let after = ctx.optimizer.group_lr(0);
        if self.verbose && after != before {
            eprintln!("Epoch {}: ReduceLROnPlateau reducing learning rate to {after}", ctx.epoch + 1);
        }
    }
}
