//! [`ModelCheckpoint`]: save the model (and the training state) after epochs, atomically.

use std::path::{Path, PathBuf};

use kiln_nn::Module;

use super::{Callback, EpochContext, Mode};
use crate::checkpoint::{save_checkpoint, Checkpoint};
use crate::history::EpochLogs;

/// Saves a [`Checkpoint`] after every epoch, or only when a monitored figure improves, like
/// Keras' `ModelCheckpoint`.
///
/// The file is written atomically (temporary file in the same folder, fsync, rename), so a
/// crash mid-save leaves the previous checkpoint intact, and read back with
/// [`load_checkpoint`](crate::checkpoint::load_checkpoint). By default it holds the full
/// training state — model, optimiser, the trainer's scheduler, epoch, RNG state, history — to
/// resume from; with [`save_weights_only`](Self::save_weights_only) only the model's state dict
/// (with the epoch and history).
///
/// The path may hold placeholders filled in at each save: `{epoch}` (1-based, as Keras; `{epoch:03}`
/// pads with zeros) and any key of the epoch logs (`{val_loss}`, `{val_loss:.4}` with that many
/// decimals), so `ckpt-{epoch:02}-{val_loss:.3}.kiln` keeps one file per epoch while a plain
/// path keeps the last (or, with [`save_best_only`](Self::save_best_only), the best).
///
/// It never saves a model that has diverged: when the monitored figure or the loss is NaN or
/// infinite, or a parameter or buffer holds a NaN or an infinity, it prints why and leaves the
/// previous checkpoint as it was.
///
/// **Panics** (ending `fit`, as Keras raises) when a file cannot be written or the path names a
/// log key the epoch does not have: a run that cannot save its checkpoints should not go on
/// unnoticed.
///
/// ```
/// use kiln_train::callbacks::{ModelCheckpoint, Mode};
/// let best = ModelCheckpoint::new("runs/best.kiln").monitor("val_accuracy").save_best_only(true);
/// assert_eq!(best.resolved_mode(), Mode::Max);
/// ```
pub struct ModelCheckpoint {
    path: PathBuf,
    monitor: String,
    mode: Mode,
    save_best_only: bool,
    save_weights_only: bool,
    verbose: bool,
    best: f64,
    warned: bool,
}

impl ModelCheckpoint {
    /// Saves to `path` after every epoch, the full training state, monitoring `val_loss` (for
    /// [`save_best_only`](Self::save_best_only)) in mode `Auto`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelCheckpoint {
            path: path.into(),
            monitor: "val_loss".into(),
            mode: Mode::Auto,
            save_best_only: false,
            save_weights_only: false,
            verbose: false,
            best: f64::INFINITY,
            warned: false,
        }
    }

    /// The figure that decides which epoch is best (default `val_loss`).
    #[must_use]
    pub fn monitor(mut self, monitor: &str) -> Self {
        self.monitor = monitor.to_string();
        self
    }

    /// Whether lower or higher is better (default [`Mode::Auto`]).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Save only when the monitored figure beats the best so far (default false: every epoch).
    #[must_use]
    pub fn save_best_only(mut self, yes: bool) -> Self {
        self.save_best_only = yes;
        self
    }

    /// Save only the model's state dict, epoch and history, not the optimiser and scheduler
    /// states (default false).
    #[must_use]
    pub fn save_weights_only(mut self, yes: bool) -> Self {
        self.save_weights_only = yes;
        self
    }

    /// Print a line at each save (default false).
    #[must_use]
    pub fn verbose(mut self, yes: bool) -> Self {
        self.verbose = yes;
        self
    }

    /// The resolved mode (`Min` or `Max`).
    pub fn resolved_mode(&self) -> Mode {
        self.mode.resolve(&self.monitor)
    }

    fn save(&self, ctx: &EpochContext<'_>, path: &Path) {
        let mut ckpt = Checkpoint::new(ctx.epoch + 1, ctx.model).with_history(ctx.history.clone());
        if !self.save_weights_only {
            if let Some(state) = ctx.training_state {
                ckpt = ckpt.with_training_state(state);
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("ModelCheckpoint: cannot create the folder {}: {e}", dir.display()));
        }
        save_checkpoint(path, &ckpt).unwrap_or_else(|e| panic!("ModelCheckpoint: {e}"));
        if self.verbose {
            eprintln!("Epoch {}: saved {}", ctx.epoch + 1, path.display());
        }
    }
}

impl Callback for ModelCheckpoint {
    fn on_train_begin(&mut self, _model: &dyn Module<f32>) {
        self.best = self.resolved_mode().worst();
    }

    fn wants_training_state(&self) -> bool {
        !self.save_weights_only
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        // A diverged model never replaces a saved one: check the monitored figure, the loss
        // and every parameter and buffer before touching the file.
        let bad_figure = [self.monitor.as_str(), "loss"]
            .into_iter()
            .find_map(|k| ctx.logs.get(k).filter(|v| !v.is_finite()).map(|v| format!("{k} is {v}")));
        let bad = bad_figure.or_else(|| {
            super::non_finite_tensor(ctx.model).map(|name| format!("the model's {name} holds NaN or infinite values"))
        });
        if let Some(reason) = bad {
            eprintln!(
                "ModelCheckpoint: epoch {}: not saving {}: {reason}; the previous checkpoint is kept",
                ctx.epoch + 1,
                self.path.display()
            );
            return;
        }
        let path = PathBuf::from(format_path(&self.path.to_string_lossy(), ctx.epoch + 1, ctx.logs));
        if !self.save_best_only {
            self.save(ctx, &path);
            return;
        }
        let Some(&current) = ctx.logs.get(&self.monitor) else {
            if !self.warned {
                eprintln!(
                    "ModelCheckpoint: can save the best model only with {:?} in the epoch logs; skipping",
                    self.monitor
                );
                self.warned = true;
            }
            return;
        };
        if self.resolved_mode().improves(current, self.best, 0.0) {
            if self.verbose {
                eprintln!("Epoch {}: {} improved from {} to {current}", ctx.epoch + 1, self.monitor, self.best);
            }
            self.best = current;
            self.save(ctx, &path);
        } else if self.verbose {
            eprintln!("Epoch {}: {} did not improve from {}", ctx.epoch + 1, self.monitor, self.best);
        }
    }
}

/// Fills `{epoch}`, `{epoch:0N}`, `{key}` and `{key:.N}` in a path template.
///
/// **Panics** if a key is not in `logs` or a brace is not closed.
fn format_path(template: &str, epoch: usize, logs: &EpochLogs) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close =
            rest[open..].find('}').unwrap_or_else(|| panic!("ModelCheckpoint: unclosed '{{' in the path {template:?}"))
                + open;
        let field = &rest[open + 1..close];
        let (name, spec) = field.split_once(':').unwrap_or((field, ""));
        if name == "epoch" {
            let width = spec.trim_start_matches('0').parse::<usize>().unwrap_or(0);
            out.push_str(&format!("{epoch:0width$}"));
        } else {
            let v = logs.get(name).unwrap_or_else(|| {
                panic!(
                    "ModelCheckpoint: the path {template:?} names {name:?}, which the epoch logs lack (they have {:?})",
                    logs.keys().collect::<Vec<_>>()
                )
            });
            match spec.strip_prefix('.').and_then(|p| p.trim_end_matches('f').parse::<usize>().ok()) {
                Some(prec) => out.push_str(&format!("{v:.prec$}")),
                None => out.push_str(&v.to_string()),
            }
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_placeholders() {
        let logs: EpochLogs = [("val_loss".to_string(), 0.123456)].into_iter().collect();
        assert_eq!(format_path("a/ckpt-{epoch:03}-{val_loss:.2}.kiln", 7, &logs), "a/ckpt-007-0.12.kiln");
        assert_eq!(format_path("e{epoch}_{val_loss}", 12, &logs), "e12_0.123456");
        assert_eq!(format_path("plain.kiln", 1, &logs), "plain.kiln");
        assert_eq!(format_path("{val_loss:.3f}", 1, &logs), "0.123");
    }

    #[test]
    #[should_panic(expected = "lack")]
    fn unknown_key_panics() {
        format_path("{val_accuracy}", 1, &EpochLogs::new());
    }
}
