//! Plugging a data-parallel run into [`kiln_train::Trainer`]: figures averaged over the
//! ranks ([`DistributedLogs`]), output and checkpoints on rank 0 only ([`RankZero`],
//! [`DistributedTrainer::distributed`]).

use std::sync::Arc;

use kiln_nn::Module;
use kiln_train::{BatchContext, Callback, EpochContext, EpochLogs, History, Trainer, Verbosity};

use crate::process_group::ProcessGroup;

/// Figures that are not averaged: the learning rate (the same on every rank) and the epoch's
/// wall time (each rank's own).
const NOT_AVERAGED: [&str; 2] = ["lr", "time_s"];

/// Averages an epoch's figures over every rank (one all-reduce), in place.
///
/// Every rank must hold the same keys (the same trainer configuration). The average of the
/// ranks' means is the mean over all their samples when every rank saw as many samples, which
/// [`DistributedSampler`](crate::DistributedSampler) guarantees: exact for the loss,
/// accuracy, MAE and MSE; for metrics that are not means over samples (F1, AUC) it is the
/// mean of the ranks' values, an approximation. `lr` and `time_s` are left as they are.
pub fn all_reduce_logs(pg: &ProcessGroup, logs: &mut EpochLogs) {
    if pg.world_size() == 1 {
        return;
    }
    let keys: Vec<String> = logs.keys().filter(|k| !NOT_AVERAGED.contains(&k.as_str())).cloned().collect();
    let sums = pg.all_reduce_sum_f64(keys.iter().map(|k| logs[k]).collect());
    for (k, s) in keys.into_iter().zip(sums) {
        logs.insert(k, s / pg.world_size() as f64);
    }
}

/// A callback that averages every epoch's figures (training and `val_`) over the ranks before
/// they are printed, recorded or seen by other callbacks, so every rank's history, early
/// stopping and checkpoint choice agree. Added by [`DistributedTrainer::distributed`].
pub struct DistributedLogs {
    pg: Arc<ProcessGroup>,
}

impl DistributedLogs {
    /// The callback for `pg`.
    pub fn new(pg: &Arc<ProcessGroup>) -> Self {
        DistributedLogs { pg: pg.clone() }
    }
}

impl Callback for DistributedLogs {
    fn on_epoch_logs(&mut self, _epoch: usize, logs: &mut EpochLogs) {
        all_reduce_logs(&self.pg, logs);
    }
}

/// Runs the wrapped callback on rank 0 only (`ModelCheckpoint`, `CsvLogger`, plots): one
/// process writes, the others skip.
///
/// Do not wrap callbacks that stop training or change the learning rate (`EarlyStopping`,
/// `ReduceLROnPlateau`): they must run on every rank, where the averaged figures make them
/// decide alike.
pub struct RankZero<C> {
    inner: C,
    active: bool,
}

impl<C: Callback> RankZero<C> {
    /// `callback`, run only when this process is rank 0 of `pg`.
    pub fn new(pg: &ProcessGroup, callback: C) -> Self {
        RankZero { inner: callback, active: pg.is_main() }
    }

    /// The wrapped callback.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Callback> Callback for RankZero<C> {
    fn on_train_begin(&mut self, model: &dyn Module<f32>) {
        if self.active {
            self.inner.on_train_begin(model)
        }
    }
    fn on_batch_end(&mut self, ctx: &mut BatchContext<'_>) {
        if self.active {
            self.inner.on_batch_end(ctx)
        }
    }
    fn on_epoch_logs(&mut self, epoch: usize, logs: &mut EpochLogs) {
        if self.active {
            self.inner.on_epoch_logs(epoch, logs)
        }
    }
    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        if self.active {
            self.inner.on_epoch_end(ctx)
        }
    }
    fn wants_training_state(&self) -> bool {
        self.active && self.inner.wants_training_state()
    }
    fn on_train_end(&mut self, model: &mut dyn Module<f32>, history: &History) {
        if self.active {
            self.inner.on_train_end(model, history)
        }
    }
}

/// Makes a [`Trainer`] data-parallel: `Trainer::new(epochs).distributed(&pg)`.
pub trait DistributedTrainer {
    /// Averages every epoch's figures over the ranks ([`DistributedLogs`]) and silences the
    /// progress bar and epoch lines on every rank but 0. Train a
    /// [`DistributedDataParallel`](crate::DistributedDataParallel) model on a
    /// [`DistributedDataLoader`](crate::DistributedDataLoader) with it, and wrap
    /// file-writing callbacks in [`RankZero`].
    #[must_use]
    fn distributed(self, pg: &Arc<ProcessGroup>) -> Trainer;
}

impl DistributedTrainer for Trainer {
    fn distributed(self, pg: &Arc<ProcessGroup>) -> Trainer {
        let t = self.callback(DistributedLogs::new(pg));
        if pg.is_main() {
            t
        } else {
            t.verbosity(Verbosity::Silent)
        }
    }
}
