//! 5-fold stratified cross-validation of a small MLP on the 8x8 handwritten digits embedded in
//! kiln-data (1,797 real samples, no download): every fold keeps each digit's share, a fresh
//! model is trained on four fifths and scored on the fifth, and the folds' accuracies are
//! reported with their mean ± standard deviation, as scikit-learn's `cross_val_score` does.
//!
//! Model: `Linear(64, 64) -> ReLU -> Linear(64, 10)`, cross-entropy, Adam (lr 1e-3), batches of
//! 32 (the fold's training samples shuffled once), pixels scaled from 0..16 to [0, 1].
//!
//!     cargo run --release --example cross_validation

use std::time::Instant;

use kiln::data::datasets::Digits;
use kiln::data::Targets;
use kiln::metrics::Accuracy;
use kiln::nn::{CrossEntropyLoss, Linear, Module, ReLU, Sequential};
use kiln::optim::{Adam, AdamConfig};
use kiln::tensor::{Rng, Tensor};
use kiln::train::cross_validation::select_batches;
use kiln::train::{CrossValidation, CrossValidationReport, Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{env_usize, OrStop};

/// What to run: the full recipe, or a shorter one for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Number of folds.
    pub folds: usize,
    /// Training epochs per fold.
    pub epochs: usize,
    /// Print each fold's result.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts { folds: 5, epochs: env_usize("KILN_EPOCHS").unwrap_or(50), verbose: true }
    }

    /// Two epochs per fold, silent.
    pub fn smoke() -> Self {
        Opts { folds: 5, epochs: 2, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every fold's validation figures (`loss`, `accuracy`), mean and standard deviation.
    pub cv: CrossValidationReport,
    /// Mean validation accuracy over the folds.
    pub mean_accuracy: f64,
    /// Its standard deviation over the folds.
    pub std_accuracy: f64,
    /// Epochs per fold.
    pub epochs: usize,
    /// Wall time of all folds, seconds.
    pub seconds: f64,
}

/// The small MLP, freshly initialised.
pub fn model() -> Sequential {
    Sequential::new().add(Linear::new(64, 64)).add(ReLU).add(Linear::new(64, 10))
}

/// Runs the cross-validation (the digits are embedded, so this cannot fail).
pub fn run(opts: &Opts) -> Report {
    let started = Instant::now();
    let digits = Digits::load();
    let n = digits.targets().len();
    let x = Tensor::from_vec(digits.features().iter().map(|v| v / 16.0).collect(), &[n, 64]);
    let labels = digits.targets().to_vec();
    let y = Targets::from(labels.clone());
    let loss = CrossEntropyLoss::default();

    // ANCHOR: cv
    let cv = CrossValidation::new(opts.folds).stratified(true).shuffle(0).run(
        &labels,
        |fold| {
            kiln::nn::init::manual_seed(fold as u64);
            model()
        },
        |model, fold| {
            let mut train_idx = fold.train.clone();
            Rng::new(fold.fold as u64).shuffle(&mut train_idx);
            let train = select_batches(&x, &y, &train_idx, 32);
            let val = fold.val_batches(&x, &y, 512);
            let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
            let mut trainer =
                Trainer::new(opts.epochs).metric("accuracy", || Accuracy::multiclass(10)).verbosity(Verbosity::Silent);
            trainer.fit(model, &mut opt, &loss, &train, None).or_stop();
            let logs = trainer.evaluate(model, &loss, &val).or_stop();
            if opts.verbose {
                println!(
                    "fold {}: trained on {}, validated on {}: accuracy {:.2}%",
                    fold.fold + 1,
                    fold.train.len(),
                    fold.val.len(),
                    100.0 * logs["accuracy"]
                );
            }
            logs
        },
    );
    // ANCHOR_END: cv
    Report {
        mean_accuracy: cv.mean("accuracy"),
        std_accuracy: cv.std("accuracy"),
        cv,
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn main() {
    let r = run(&Opts::full());
    print!("{}", r.cv);
    println!(
        "MLP 64-64-10 on the digits, 5-fold stratified cross-validation: accuracy {:.2}% ± {:.2}% after {} epochs per fold, {:.1} s",
        100.0 * r.mean_accuracy,
        100.0 * r.std_accuracy,
        r.epochs,
        r.seconds
    );
}
