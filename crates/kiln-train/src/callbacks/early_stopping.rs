//! [`EarlyStopping`]: stop training when a monitored figure stops improving.

use kiln_nn::{Module, StateDict};

use super::{Callback, EpochContext};
use crate::history::History;

/// Whether a monitored figure should fall or rise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Lower is better (losses, errors).
    Min,
    /// Higher is better (accuracy, F1, AUC, R²).
    Max,
    /// Inferred from the figure's name: `Max` when it (without its `val_` prefix) names a
    /// score — contains `acc`, `auc`, `f1`, `fbeta`, `precision`, `recall`, `r2` or is
    /// `average_precision` / `ap` — and `Min` otherwise (losses, `mse`, `mae`, `perplexity`).
    #[default]
    Auto,
}

impl Mode {
    /// `Min` or `Max` for the figure `monitor` (`Auto` resolved from the name).
    #[must_use]
    pub fn resolve(self, monitor: &str) -> Mode {
        match self {
            Mode::Auto => {
                let name = monitor.strip_prefix("val_").unwrap_or(monitor).to_ascii_lowercase();
                let scores = ["acc", "auc", "f1", "fbeta", "precision", "recall", "r2"];
                if scores.iter().any(|s| name.contains(s)) || name == "ap" || name == "average_precision" {
                    Mode::Max
                } else {
                    Mode::Min
                }
            }
            m => m,
        }
    }

    /// The worst possible value (the starting `best`).
    pub(crate) fn worst(self) -> f64 {
        match self {
            Mode::Max => f64::NEG_INFINITY,
            _ => f64::INFINITY,
        }
    }

    /// Whether `current` beats `reference` by more than `min_delta` (a resolved mode).
    pub(crate) fn improves(self, current: f64, reference: f64, min_delta: f64) -> bool {
        match self {
            Mode::Max => current - min_delta > reference,
            _ => current + min_delta < reference,
        }
    }
}

/// Stops training when a monitored figure has stopped improving, like Keras' `EarlyStopping`.
///
/// After each epoch the figure `monitor` (default `val_loss`) is compared with the best so
/// far: an improvement must beat it by more than `min_delta`. After `patience` epochs in a row
/// without one, training stops. With `restore_best_weights`, the model's state dict of the
/// best epoch is kept and loaded back when training ends, whether it stopped early or ran all
/// its epochs (Keras 3's behaviour). An epoch whose logs lack `monitor` is skipped with a
/// warning on stderr.
///
/// ```
/// use kiln_train::callbacks::{EarlyStopping, Mode};
/// let es = EarlyStopping::new("val_accuracy").patience(3).min_delta(1e-3).restore_best_weights(true);
/// assert_eq!(es.resolved_mode(), Mode::Max); // inferred from the name
/// ```
pub struct EarlyStopping {
    monitor: String,
    mode: Mode,
    patience: usize,
    min_delta: f64,
    baseline: Option<f64>,
    restore_best_weights: bool,
    verbose: bool,
    best: f64,
    wait: usize,
    best_epoch: Option<usize>,
    stopped_epoch: Option<usize>,
    best_weights: Option<StateDict<f32>>,
    warned: bool,
}

impl EarlyStopping {
    /// Monitors `monitor` (a key of the epoch logs, `val_loss` say) with patience 0, no
    /// `min_delta`, mode `Auto`, and no restoring.
    pub fn new(monitor: &str) -> Self {
        EarlyStopping {
            monitor: monitor.to_string(),
            mode: Mode::Auto,
            patience: 0,
            min_delta: 0.0,
            baseline: None,
            restore_best_weights: false,
            verbose: false,
            best: f64::INFINITY,
            wait: 0,
            best_epoch: None,
            stopped_epoch: None,
            best_weights: None,
            warned: false,
        }
    }

    /// Epochs without improvement to wait before stopping (default 0: stop at the first).
    #[must_use]
    pub fn patience(mut self, patience: usize) -> Self {
        self.patience = patience;
        self
    }

    /// The smallest change that counts as an improvement (default 0; its sign is ignored).
    #[must_use]
    pub fn min_delta(mut self, min_delta: f64) -> Self {
        self.min_delta = min_delta.abs();
        self
    }

    /// Whether lower or higher is better (default [`Mode::Auto`]).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// A value the figure must beat: until it does, the patience count is not reset.
    #[must_use]
    pub fn baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }

    /// Whether to load the best epoch's weights back when training ends (default false).
    #[must_use]
    pub fn restore_best_weights(mut self, restore: bool) -> Self {
        self.restore_best_weights = restore;
        self
    }

    /// Whether to print a line when stopping and restoring (default false).
    #[must_use]
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// The resolved mode (`Min` or `Max`).
    pub fn resolved_mode(&self) -> Mode {
        self.mode.resolve(&self.monitor)
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, _model: &dyn Module<f32>) {
        self.best = self.resolved_mode().worst();
        self.wait = 0;
        self.best_epoch = None;
        self.stopped_epoch = None;
        self.best_weights = None;
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        let Some(&current) = ctx.logs.get(&self.monitor) else {
            if !self.warned {
                eprintln!(
                    "EarlyStopping: the epoch logs have no {:?} (they have {:?}); skipping",
                    self.monitor,
                    ctx.logs.keys().collect::<Vec<_>>()
                );
                self.warned = true;
            }
            return;
        };
        let mode = self.resolved_mode();
        // Weights with a NaN or an infinity are never remembered as "best": restoring them
        // would hand back a diverged model.
        let finite = current.is_finite() && super::non_finite_tensor(ctx.model).is_none();
        if self.restore_best_weights && self.best_weights.is_none() && finite {
            // Keras keeps the first epoch's weights at least, so there is always something to restore.
            self.best_weights = Some(ctx.model.state_dict());
        }
        self.wait += 1;
        if finite && mode.improves(current, self.best, self.min_delta) {
            self.best = current;
            self.best_epoch = Some(ctx.epoch);
            if self.restore_best_weights {
                self.best_weights = Some(ctx.model.state_dict());
            }
            if self.baseline.is_none_or(|b| mode.improves(current, b, self.min_delta)) {
                self.wait = 0;
                return;
            }
        }
        if self.wait >= self.patience && ctx.epoch > 0 {
            self.stopped_epoch = Some(ctx.epoch);
            ctx.stop = true;
            if self.verbose {
                eprintln!("Epoch {}: early stopping", ctx.epoch + 1);
            }
        }
    }

    fn on_train_end(&mut self, model: &mut dyn Module<f32>, _history: &History) {
        if !self.restore_best_weights {
            return;
        }
        if let Some(w) = &self.best_weights {
            if self.verbose {
                let best = self.best_epoch.map_or("the first".to_string(), |e| (e + 1).to_string());
                eprintln!("Restoring model weights from the end of epoch {best}");
            }
            model
                .load_state_dict(w, true)
                .unwrap_or_else(|e| panic!("EarlyStopping: cannot restore the best weights: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_from_names() {
        for (name, mode) in [
            ("val_loss", Mode::Min),
            ("loss", Mode::Min),
            ("val_accuracy", Mode::Max),
            ("f1_macro", Mode::Max),
            ("val_mse", Mode::Min),
            ("roc_auc", Mode::Max),
            ("perplexity", Mode::Min),
            ("r2", Mode::Max),
        ] {
            assert_eq!(Mode::Auto.resolve(name), mode, "{name}");
        }
        assert_eq!(Mode::Min.resolve("accuracy"), Mode::Min);
    }

    #[test]
    fn improvement_needs_more_than_min_delta() {
        assert!(Mode::Min.improves(0.89, 1.0, 0.1));
        assert!(!Mode::Min.improves(0.9, 1.0, 0.1));
        assert!(Mode::Max.improves(1.11, 1.0, 0.1));
        assert!(!Mode::Max.improves(1.1, 1.0, 0.1));
        assert!(Mode::Min.improves(0.5, f64::INFINITY, 0.0));
    }
}
