//! The pictures and figures of one training run, on the 8x8 handwritten digits embedded in
//! kiln-data (1,797 real samples, no download): the MLP of `quickstart` (64-128-10, Adam,
//! cross-entropy) trained with a held-out fifth as validation data, then
//!
//! - its training curves (loss, accuracy and macro F1 per epoch, training in blue and
//!   validation in orange), drawn by `History::plot` to `training_curves.png`;
//! - the confusion matrix of its held-out predictions, drawn by `plot_confusion_matrix` to
//!   `confusion_matrix.png`, with per-class precision, recall and F1 printed.
//!
//! The PNGs go to `KILN_OUT_DIR` (default `target/examples-output/` of the workspace).
//!
//!     cargo run --release --example training_report

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::data::datasets::Digits;
use kiln::data::{random_split, DataLoader, Dataset, DatasetExt};
use kiln::metrics::functional::{f1_score_per_class, precision_per_class, recall_per_class};
use kiln::metrics::{Accuracy, Average, ConfusionMatrix, F1Score};
use kiln::nn::{CrossEntropyLoss, Linear, Module, ReLU, Sequential};
use kiln::optim::{Adam, AdamConfig};
use kiln::train::{plot_confusion_matrix, predict, BatchSource, Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::env_usize;

/// What to run: the full recipe, or a shorter one for the tests.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Training epochs.
    pub epochs: usize,
    /// Where the two PNGs go.
    pub out_dir: PathBuf,
    /// Print one line per epoch and the per-class figures.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs, `KILN_OUT_DIR` the folder
    /// of the pictures).
    pub fn full() -> Self {
        Opts {
            epochs: env_usize("KILN_EPOCHS").unwrap_or(30),
            out_dir: std::env::var_os("KILN_OUT_DIR")
                .map_or_else(|| workspace_root().join("target/examples-output"), PathBuf::from),
            verbose: true,
        }
    }

    /// A few epochs, silent, the pictures in a fresh folder of the system's temporary folder.
    pub fn smoke() -> Self {
        Opts {
            epochs: 3,
            out_dir: std::env::temp_dir().join(format!("kiln-training-report-{}", std::process::id())),
            verbose: false,
        }
    }
}

/// The figures reached and the pictures written.
#[derive(Clone, Debug)]
pub struct Report {
    /// Held-out accuracy after the last epoch.
    pub test_accuracy: f64,
    /// Held-out macro F1 after the last epoch.
    pub test_f1_macro: f64,
    /// The confusion matrix of the held-out predictions (row: true digit, column: predicted).
    pub confusion: Vec<Vec<u64>>,
    /// `training_curves.png`.
    pub curves_png: PathBuf,
    /// `confusion_matrix.png`.
    pub confusion_png: PathBuf,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Index of the largest value of each row of a `[N, K]` score matrix given row-major.
fn argmax_rows(scores: &[f32], k: usize) -> Vec<usize> {
    scores.chunks(k).map(|row| (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best })).collect()
}

/// Trains, evaluates and draws.
///
/// # Errors
/// The trainer's error, or the pictures' when they cannot be drawn or written.
pub fn run(opts: &Opts) -> Result<Report, Box<dyn std::error::Error>> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    // Pixels are 0..16; scale them to [0, 1].
    let digits = Digits::load()
        .map_input(|x: Vec<f32>, _: &mut kiln::tensor::Rng| x.into_iter().map(|v| v / 16.0).collect::<Vec<f32>>());
    let n = digits.len();
    let mut parts = random_split(digits, &[n - n / 5, n / 5], 42).into_iter();
    let (train, test) = (parts.next().expect("two parts"), parts.next().expect("two parts"));
    let train = DataLoader::new(train, 32).shuffle(true).seed(1);
    let test = DataLoader::new(test, 256);
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| format!("{}: {e}", opts.out_dir.display()))?;

    let mut model: Sequential = Sequential::new().add(Linear::new(64, 128)).add(ReLU).add(Linear::new(128, 10));
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let loss = CrossEntropyLoss::default();
    // ANCHOR: curves
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .metric("f1_macro", || F1Score::multiclass(10, Average::Macro))
        .verbosity(if opts.verbose { Verbosity::Epochs } else { Verbosity::Silent });
    let history = trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test))?;
    let curves_png = opts.out_dir.join("training_curves.png");
    history.plot(&curves_png)?;
    // ANCHOR_END: curves
    let last = history.last().expect("at least one epoch");

    // ANCHOR: confusion
    let scores = predict(&mut model, &test); // [N, 10] logits, in the loader's order
    let preds = argmax_rows(&scores.to_vec(), 10);
    let targets: Vec<usize> = test.batches().flat_map(|b| b.targets.classes().to_vec()).collect();
    let mut cm = ConfusionMatrix::multiclass(10);
    cm.update_labels(&preds, &targets);
    let confusion = cm.counts();
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let confusion_png = opts.out_dir.join("confusion_matrix.png");
    plot_confusion_matrix(&confusion, &names, &confusion_png)?;
    // ANCHOR_END: confusion

    if opts.verbose {
        let (p, r, f) = (
            precision_per_class(&preds, &targets, 10, 0.0),
            recall_per_class(&preds, &targets, 10, 0.0),
            f1_score_per_class(&preds, &targets, 10, 0.0),
        );
        println!("digit  precision  recall  F1");
        for d in 0..10 {
            println!("{d:>5}  {:>9.3}  {:>6.3}  {:.3}", p[d], r[d], f[d]);
        }
    }
    Ok(Report {
        test_accuracy: last["val_accuracy"],
        test_f1_macro: last["val_f1_macro"],
        confusion,
        curves_png,
        confusion_png,
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "MLP 64-128-10 on the digits: held-out accuracy {:.2}%, macro F1 {:.3} after {} epochs, {:.1} s; \
             pictures {} and {}",
            100.0 * r.test_accuracy,
            r.test_f1_macro,
            r.epochs,
            r.seconds,
            r.curves_png.display(),
            r.confusion_png.display()
        ),
        Err(e) => {
            eprintln!("training_report: {e}");
            std::process::exit(1);
        }
    }
}

/// The workspace folder (this file is in `examples/`, the manifest in `crates/kiln/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/kiln is two levels down").to_path_buf()
}
