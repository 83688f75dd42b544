//! K-fold cross-validation: train a fresh model on each fold, report each fold's figures and
//! their mean ± standard deviation.
//!
//! ```
//! use kiln_data::Targets;
//! use kiln_nn::{CrossEntropyLoss, Linear, Module};
//! use kiln_optim::{SGDConfig, SGD};
//! use kiln_tensor::Tensor;
//! use kiln_train::{cross_validate, Trainer, Verbosity};
//! // two well-separated classes on a line
//! let xs: Vec<f32> = (0..20).map(|i| if i % 2 == 0 { -1.0 - i as f32 / 20.0 } else { 1.0 + i as f32 / 20.0 }).collect();
//! let labels: Vec<usize> = (0..20).map(|i| i % 2).collect();
//! let x = Tensor::from_vec(xs, &[20, 1]);
//! let y = Targets::from(labels.clone());
//! let report = cross_validate(4, true, 0, &labels,
//!     |_fold| Linear::<f32>::new(1, 2),
//!     |model, fold| {
//!         let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.5, ..Default::default() });
//!         let mut trainer = Trainer::new(30).verbosity(Verbosity::Silent);
//!         trainer.fit(model, &mut opt, &CrossEntropyLoss::default(), &fold.train_batches(&x, &y, 8), None).unwrap();
//!         trainer.evaluate(model, &CrossEntropyLoss::default(), &fold.val_batches(&x, &y, 8)).unwrap()
//!     });
//! assert_eq!(report.folds.len(), 4);
//! assert!(report.mean("loss") < 0.5);
//! println!("{report}");
//! ```

use std::fmt;

use kiln_data::split::{KFold, StratifiedKFold};
use kiln_data::{Batch, Targets};
use kiln_tensor::Tensor;

use crate::history::EpochLogs;
use crate::trainer::tensor_batches;

/// One fold: its number and the sample indices to train and to validate on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CvFold {
    /// The fold's number (0-based).
    pub fold: usize,
    /// Indices of the training samples (ascending).
    pub train: Vec<usize>,
    /// Indices of the validation samples.
    pub val: Vec<usize>,
}

impl CvFold {
    /// The training samples of in-memory `inputs` / `targets` (rows along dim 0) in batches.
    ///
    /// **Panics** if an index is out of range or `batch_size == 0`.
    pub fn train_batches(&self, inputs: &Tensor<f32>, targets: &Targets, batch_size: usize) -> Vec<Batch> {
        select_batches(inputs, targets, &self.train, batch_size)
    }

    /// The validation samples of in-memory `inputs` / `targets` in batches.
    ///
    /// **Panics** if an index is out of range or `batch_size == 0`.
    pub fn val_batches(&self, inputs: &Tensor<f32>, targets: &Targets, batch_size: usize) -> Vec<Batch> {
        select_batches(inputs, targets, &self.val, batch_size)
    }
}

/// The rows `indices` of `inputs` and `targets`, in batches of `batch_size` (in that order).
///
/// **Panics** if an index is out of range or `batch_size == 0`.
pub fn select_batches(inputs: &Tensor<f32>, targets: &Targets, indices: &[usize], batch_size: usize) -> Vec<Batch> {
    let x = inputs.index_select(0, indices);
    let t = match targets {
        Targets::Classes(c) => Targets::from(indices.iter().map(|&i| c.as_slice()[i]).collect::<Vec<_>>()),
        Targets::Values(v) => Targets::Values(v.index_select(0, indices)),
    };
    tensor_batches(&x, &t, batch_size)
}

/// How to cut the samples into folds: k-fold or stratified k-fold, shuffled or not.
///
/// ```
/// use kiln_train::CrossValidation;
/// let cv = CrossValidation::new(3).stratified(true).shuffle(42);
/// let folds = cv.folds(&[0, 0, 0, 1, 1, 1]);
/// assert_eq!(folds.len(), 3);
/// assert!(folds.iter().all(|f| f.val.len() == 2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossValidation {
    k: usize,
    stratified: bool,
    seed: Option<u64>,
}

impl CrossValidation {
    /// `k` folds of consecutive samples ([`KFold`]), not shuffled.
    ///
    /// **Panics** if `k < 2`.
    pub fn new(k: usize) -> Self {
        assert!(k >= 2, "CrossValidation: k must be >= 2, got {k}");
        CrossValidation { k, stratified: false, seed: None }
    }

    /// Keep each class's share in every fold ([`StratifiedKFold`]; default false).
    #[must_use]
    pub fn stratified(mut self, yes: bool) -> Self {
        self.stratified = yes;
        self
    }

    /// Shuffle the samples (within each class when stratified) with this seed first.
    #[must_use]
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The folds of the samples whose classes are `labels` (for plain k-fold only their
    /// number counts: regression targets can pass `&vec![0; n]`).
    ///
    /// **Panics** if there are fewer samples than folds.
    pub fn folds(&self, labels: &[usize]) -> Vec<CvFold> {
        let splits = if self.stratified {
            let s = StratifiedKFold::new(self.k);
            match self.seed {
                Some(seed) => s.shuffle(seed).split(labels),
                None => s.split(labels),
            }
        } else {
            let s = KFold::new(self.k);
            match self.seed {
                Some(seed) => s.shuffle(seed).split(labels.len()),
                None => s.split(labels.len()),
            }
        };
        splits.into_iter().enumerate().map(|(fold, (train, val))| CvFold { fold, train, val }).collect()
    }

    /// Runs every fold in turn: `make_model(fold)` builds a fresh model, `train_fn(&mut model,
    /// &fold)` trains it on `fold.train` and returns its figures on `fold.val` (typically
    /// [`Trainer::evaluate`](crate::Trainer::evaluate)'s logs).
    pub fn run<M, Make, Train>(
        &self,
        labels: &[usize],
        mut make_model: Make,
        mut train_fn: Train,
    ) -> CrossValidationReport
    where
        Make: FnMut(usize) -> M,
        Train: FnMut(&mut M, &CvFold) -> EpochLogs,
    {
        let folds = self
            .folds(labels)
            .iter()
            .map(|f| {
                let mut model = make_model(f.fold);
                train_fn(&mut model, f)
            })
            .collect();
        CrossValidationReport { stratified: self.stratified, folds }
    }
}

/// Runs `k`-fold cross-validation (stratified by `labels` when `stratified`, samples shuffled
/// with `seed`): a fresh model per fold from `make_model(fold)`, trained and evaluated by
/// `train_fn(&mut model, &fold)`, which returns the fold's validation figures.
///
/// The short form of [`CrossValidation`]`::new(k).stratified(stratified).shuffle(seed).run(...)`.
///
/// **Panics** if `k < 2` or there are fewer samples than folds.
pub fn cross_validate<M, Make, Train>(
    k: usize,
    stratified: bool,
    seed: u64,
    labels: &[usize],
    make_model: Make,
    train_fn: Train,
) -> CrossValidationReport
where
    Make: FnMut(usize) -> M,
    Train: FnMut(&mut M, &CvFold) -> EpochLogs,
{
    CrossValidation::new(k).stratified(stratified).shuffle(seed).run(labels, make_model, train_fn)
}

/// The figures of every fold, with their mean and standard deviation; `Display` prints a table.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossValidationReport {
    /// Whether the folds were stratified.
    pub stratified: bool,
    /// Each fold's figures, in fold order.
    pub folds: Vec<EpochLogs>,
}

impl CrossValidationReport {
    /// The names of every figure reported by some fold, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.folds.iter().flat_map(|f| f.keys().cloned()).collect();
        k.sort();
        k.dedup();
        k
    }

    /// One figure across the folds (`NaN` where a fold lacks it).
    pub fn values(&self, key: &str) -> Vec<f64> {
        self.folds.iter().map(|f| f.get(key).copied().unwrap_or(f64::NAN)).collect()
    }

    /// The mean of a figure across the folds.
    pub fn mean(&self, key: &str) -> f64 {
        let v = self.values(key);
        v.iter().sum::<f64>() / v.len() as f64
    }

    /// The standard deviation of a figure across the folds: the population form (divided by
    /// k, as NumPy's `std` and scikit-learn's reports).
    pub fn std(&self, key: &str) -> f64 {
        let v = self.values(key);
        let m = self.mean(key);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
    }
}

impl fmt::Display for CrossValidationReport {
    /// ```text
    /// 5-fold cross-validation (stratified)
    /// metric      fold 1  fold 2  fold 3  fold 4  fold 5  mean ± std
    /// accuracy    0.9500  0.9400  ...                     0.9460 ± 0.0049
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.folds.len();
        writeln!(f, "{k}-fold cross-validation{}", if self.stratified { " (stratified)" } else { "" })?;
        let keys = self.keys();
        let w = keys.iter().map(String::len).max().unwrap_or(0).max("metric".len());
        write!(f, "{:<w$}", "metric")?;
        for i in 0..k {
            write!(f, "  {:>8}", format!("fold {}", i + 1))?;
        }
        writeln!(f, "  mean ± std")?;
        for key in &keys {
            write!(f, "{key:<w$}")?;
            for v in self.values(key) {
                write!(f, "  {v:>8.4}")?;
            }
            writeln!(f, "  {:.4} ± {:.4}", self.mean(key), self.std(key))?;
        }
        Ok(())
    }
}
