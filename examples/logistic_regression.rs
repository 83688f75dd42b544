//! Logistic regression on a real table: is a breast tumour malignant or benign, from 30
//! measurements of its cell nuclei (the 569 samples of the Wisconsin diagnostic set,
//! `sklearn-small/breast_cancer.csv`, read from `KILN_DATA_DIR`, default `../shared/data`).
//!
//! One `Linear(30, 1)` layer, its output a logit; `BCEWithLogitsLoss`; Adam on mini-batches;
//! features standardised with the training part's mean and standard deviation. Held out: a
//! random 20 %.
//!
//!     cargo run --release --example logistic_regression

use std::time::Instant;

use kiln::data::datasets::{CsvDataset, CsvOptions};
use kiln::data::split::train_test_split;
use kiln::data::{DataError, Targets};
use kiln::metrics::Accuracy;
use kiln::nn::{BCEWithLogitsLoss, Linear, Module};
use kiln::optim::{Adam, AdamConfig};
use kiln::tensor::Tensor;
use kiln::train::{tensor_batches, Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, OrStop};

/// What to run: the full recipe, or a smaller one for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Training epochs.
    pub epochs: usize,
    /// Print one line per epoch.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts { epochs: env_usize("KILN_EPOCHS").unwrap_or(100), verbose: true }
    }

    /// A few epochs, silent.
    pub fn smoke() -> Self {
        Opts { epochs: 3, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Accuracy on the held-out 20 %.
    pub test_accuracy: f64,
    /// Accuracy on the training part.
    pub train_accuracy: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of loading and training, seconds.
    pub seconds: f64,
}

/// Trains and evaluates; `Err` when the CSV file cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let table: CsvDataset<f32> =
        CsvDataset::new(data_folder("sklearn-small").join("breast_cancer.csv"), CsvOptions::default())?;
    let (n, d) = (table.targets().len(), table.n_features());
    let (train_idx, test_idx) = train_test_split(n, 0.2, 42);

    // Standardise with the training part's statistics only.
    let mut mean = vec![0.0f64; d];
    let mut var = vec![0.0f64; d];
    for &i in &train_idx {
        for (j, &v) in table.row(i).iter().enumerate() {
            mean[j] += f64::from(v) / train_idx.len() as f64;
        }
    }
    for &i in &train_idx {
        for (j, &v) in table.row(i).iter().enumerate() {
            var[j] += (f64::from(v) - mean[j]).powi(2) / train_idx.len() as f64;
        }
    }
    let part = |idx: &[usize]| {
        let x: Vec<f32> = idx
            .iter()
            .flat_map(|&i| {
                table
                    .row(i)
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| ((f64::from(v) - mean[j]) / var[j].sqrt().max(1e-12)) as f32)
            })
            .collect();
        let y: Vec<f32> = idx.iter().map(|&i| table.targets()[i]).collect();
        (Tensor::from_vec(x, &[idx.len(), d]), Targets::Values(Tensor::from_vec(y, &[idx.len()])))
    };
    let (x_train, y_train) = part(&train_idx);
    let (x_test, y_test) = part(&test_idx);
    if opts.verbose {
        println!("breast cancer: {} training and {} held-out samples, {d} features", train_idx.len(), test_idx.len());
    }

    // Shuffle the training rows once; mini-batches of 32.
    let perm = kiln::tensor::Rng::new(1).permutation(train_idx.len());
    let x_shuffled = x_train.index_select(0, &perm);
    let y_shuffled = Targets::Values(y_train.values().index_select(0, &perm));
    let train = tensor_batches(&x_shuffled, &y_shuffled, 32);
    let test = tensor_batches(&x_test, &y_test, 256);

    // ANCHOR: model
    let mut model: Linear = Linear::new(d, 1);
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-2, weight_decay: 1e-2, ..Default::default() });
    let loss = BCEWithLogitsLoss::default();
    // A logit >= 0 predicts class 1 (benign).
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::binary().with_threshold(0.0))
        .verbosity(if opts.verbose { Verbosity::Epochs } else { Verbosity::Silent });
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    // ANCHOR_END: model
    let train_eval = trainer.evaluate(&mut model, &loss, &train).or_stop();
    let test_eval = trainer.evaluate(&mut model, &loss, &test).or_stop();
    Ok(Report {
        test_accuracy: test_eval["accuracy"],
        train_accuracy: train_eval["accuracy"],
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "logistic regression: held-out accuracy {:.2}% (training {:.2}%) after {} epochs, {:.1} s",
            100.0 * r.test_accuracy,
            100.0 * r.train_accuracy,
            r.epochs,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read the data ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
