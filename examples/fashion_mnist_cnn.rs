//! A convolutional network with batch normalisation on Fashion-MNIST (60,000 training and
//! 10,000 test images of clothing in 10 classes, read from `KILN_DATA_DIR/fashion-mnist`,
//! default `../shared/data/fashion-mnist`).
//!
//! ```text
//! Conv2d(1, 32, 3, padding=1) -> MaxPool2d(2) -> BatchNorm2d(32) -> ReLU    [32, 14, 14]
//! Conv2d(32, 64, 3, padding=1) -> MaxPool2d(2) -> BatchNorm2d(64) -> ReLU   [64, 7, 7]
//! Flatten -> Dropout(0.3) -> Linear(3136, 128) -> BatchNorm1d(128) -> ReLU -> Dropout(0.3)
//! Linear(128, 10)                                                            cross-entropy
//! ```
//!
//! Each block pools before it normalises: max pooling commutes with ReLU, and normalising the
//! pooled map costs a quarter of normalising the full one (kiln's batch norm is a composition of
//! broadcast ops, slower than a convolution on the same input). Convolutions without bias (the
//! batch norm after them has one); Adam (lr 1e-3) on shuffled
//! batches of 64 with a random horizontal flip (clothes are left-right symmetric), the learning
//! rate annealed to zero along a cosine over the epochs.
//!
//!     cargo run --release --example fashion_mnist_cnn

use std::time::Instant;

use kiln::data::datasets::{FashionMnist, Split};
use kiln::data::transforms::{Compose, Normalize, RandomHorizontalFlip};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt};
use kiln::metrics::Accuracy;
use kiln::nn::{
    BatchNorm1d, BatchNorm2d, Conv2d, Conv2dConfig, CrossEntropyLoss, Dropout, Flatten, Linear, MaxPool2d, Module,
    Padding, ReLU, Sequential,
};
use kiln::optim::lr_scheduler::CosineAnnealingLR;
use kiln::optim::{Adam, AdamConfig};
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
        Opts { train_samples: None, test_samples: None, epochs: env_usize("KILN_EPOCHS").unwrap_or(3), verbose: true }
    }

    /// A few hundred images, one epoch, silent.
    pub fn smoke() -> Self {
        Opts { train_samples: Some(256), test_samples: Some(128), epochs: 1, verbose: false }
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

// ANCHOR: model
/// A 3x3 convolution that keeps the image size (padding 1), without bias.
fn conv3x3(in_channels: usize, out_channels: usize) -> Conv2d {
    Conv2dConfig { padding: Padding::Explicit([1, 1]), bias: false, ..Conv2dConfig::new(in_channels, out_channels, 3) }
        .build()
        .expect("valid sizes")
}

/// The network of the module doc.
pub fn model() -> Sequential {
    Sequential::new()
        .add(conv3x3(1, 32))
        .add(MaxPool2d::new(2))
        .add(BatchNorm2d::new(32))
        .add(ReLU)
        .add(conv3x3(32, 64))
        .add(MaxPool2d::new(2))
        .add(BatchNorm2d::new(64))
        .add(ReLU)
        .add(Flatten::default())
        .add(Dropout::new(0.3))
        .add(Linear::new(64 * 7 * 7, 128))
        .add(BatchNorm1d::new(128))
        .add(ReLU)
        .add(Dropout::new(0.3))
        .add(Linear::new(128, 10))
}
// ANCHOR_END: model

/// Trains and evaluates; `Err` when the Fashion-MNIST files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("fashion-mnist");
    // Fashion-MNIST's pixel mean and standard deviation over the training set.
    // ANCHOR: augment
    let normalize = || Normalize::new(vec![0.2860], vec![0.3530]);
    let train = first(FashionMnist::new(&dir, Split::Train)?, opts.train_samples)
        .map_input(Compose::new(RandomHorizontalFlip::new(0.5), normalize()));
    let test = first(FashionMnist::new(&dir, Split::Test)?, opts.test_samples).map_input(normalize());
    // ANCHOR_END: augment
    if opts.verbose {
        println!("Fashion-MNIST: {} training and {} test images", train.len(), test.len());
    }
    let train = DataLoader::new(train, 64).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);

    let mut model = model();
    if opts.verbose {
        println!("{model}");
    }
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let schedule = CosineAnnealingLR::new(&mut opt, opts.epochs, 0.0);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = CrossEntropyLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    let eval = trainer.evaluate(&mut model, &loss, &test).or_stop();
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
            "CNN with batch norm on Fashion-MNIST: test accuracy {:.2}% (loss {:.4}) after {} epochs, {:.1} s",
            100.0 * r.test_accuracy,
            r.test_loss,
            r.epochs,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read Fashion-MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
