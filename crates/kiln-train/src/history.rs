//! [`History`]: what `fit` returns, one row of named figures per epoch.

use std::collections::BTreeMap;

/// The figures of one epoch by name: `loss`, `val_loss`, `accuracy`, `val_accuracy`, `lr`, ...
pub type EpochLogs = BTreeMap<String, f64>;

/// Per-epoch losses and metrics of a training run, like Keras' `History`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// One entry per completed epoch.
    pub epochs: Vec<EpochLogs>,
}

impl History {
    /// The series of one figure over the epochs (`NaN` where an epoch lacks it).
    pub fn get(&self, key: &str) -> Vec<f64> {
        self.epochs.iter().map(|e| e.get(key).copied().unwrap_or(f64::NAN)).collect()
    }

    /// The names of every figure recorded.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.epochs.iter().flat_map(|e| e.keys().cloned()).collect();
        k.sort();
        k.dedup();
        k
    }

    /// The last epoch's figures, if any.
    pub fn last(&self) -> Option<&EpochLogs> {
        self.epochs.last()
    }

    /// The number of epochs recorded.
    pub fn len(&self) -> usize {
        self.epochs.len()
    }

    /// Whether no epoch was recorded.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }
}
