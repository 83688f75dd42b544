//! A 784-256-128-10 multilayer perceptron on MNIST (60,000 training and 10,000 test images of
//! handwritten digits, read from `KILN_DATA_DIR/mnist`, default `../shared/data/mnist`).
//!
//! Pixels scaled to [0, 1] and normalised with MNIST's mean and standard deviation
//! (0.1307, 0.3081), flattened; ReLU between the layers; cross-entropy; Adam (lr 1e-3) on
//! shuffled batches of 128, the learning rate halved every 4 epochs.
//!
//!     cargo run --release --example mlp_mnist

use std::time::Instant;

use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt, Image};
use kiln::metrics::Accuracy;
use kiln::nn::{CrossEntropyLoss, Linear, Module, ReLU, Sequential};
use kiln::optim::lr_scheduler::StepLR;
use kiln::optim::{Adam, AdamConfig};
use kiln::tensor::Rng;
use kiln::train::{SchedulerInterval, Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, first, OrStop};

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Use the first this many training images (`None`: all 60,000).
    pub train_samples: Option<usize>,
    /// Use the first this many test images (`None`: all 10,000).
    pub test_samples: Option<usize>,
    /// Training epochs.
    pub epochs: usize,
    /// Print one line per epoch (or a progress bar on a terminal).
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts { train_samples: None, test_samples: None, epochs: env_usize("KILN_EPOCHS").unwrap_or(12), verbose: true }
    }

    /// A few hundred images, one epoch, silent.
    pub fn smoke() -> Self {
        Opts { train_samples: Some(512), test_samples: Some(256), epochs: 1, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Accuracy on the test images used.
    pub test_accuracy: f64,
    /// Mean cross-entropy on them.
    pub test_loss: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of loading and training, seconds.
    pub seconds: f64,
}

/// An MNIST image as the MLP's input: 784 normalised values.
fn flatten_normalised(img: Image, _: &mut Rng) -> Vec<f32> {
    img.data.into_iter().map(|v| (v - 0.1307) / 0.3081).collect()
}

/// Trains and evaluates; `Err` when the MNIST files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    // ANCHOR: data
    let dir = data_folder("mnist");
    let train = first(Mnist::new(&dir, Split::Train)?, opts.train_samples).map_input(flatten_normalised);
    let test = first(Mnist::new(&dir, Split::Test)?, opts.test_samples).map_input(flatten_normalised);
    if opts.verbose {
        println!("MNIST: {} training and {} test images", train.len(), test.len());
    }
    let train = DataLoader::new(train, 128).shuffle(true).seed(1);
    let test = DataLoader::new(test, 1000);
    // ANCHOR_END: data

    // ANCHOR: model
    let mut model = Sequential::new()
        .add(Linear::new(784, 256))
        .add(ReLU)
        .add(Linear::new(256, 128))
        .add(ReLU)
        .add(Linear::new(128, 10));
    // ANCHOR_END: model
    if opts.verbose {
        println!("{model}");
    }
    // ANCHOR: train
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let schedule = StepLR::new(&mut opt, 4, 0.5);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = CrossEntropyLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    let eval = trainer.evaluate(&mut model, &loss, &test).or_stop();
    // ANCHOR_END: train
    Ok(Report {
        test_accuracy: eval["accuracy"],
        test_loss: eval["loss"],
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "MLP 784-256-128-10 on MNIST: test accuracy {:.2}% (loss {:.4}) after {} epochs, {:.1} s",
            100.0 * r.test_accuracy,
            r.test_loss,
            r.epochs,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
