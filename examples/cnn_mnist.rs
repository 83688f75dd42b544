//! A convolutional network on MNIST, after PyTorch's `examples/mnist`: two 3x3 convolutions
//! (32 and 64 channels) with max pooling, dropout, two linear layers, `log_softmax` and the
//! negative log-likelihood loss (60,000 training and 10,000 test images, read from
//! `KILN_DATA_DIR/mnist`, default `../shared/data/mnist`).
//!
//! ```text
//! Conv2d(1, 32, 3, padding=1) -> ReLU -> MaxPool2d(2)      [32, 14, 14]
//! Conv2d(32, 64, 3, padding=1) -> ReLU -> MaxPool2d(2)     [64, 7, 7]
//! Dropout(0.25) -> Flatten -> Linear(3136, 128) -> ReLU -> Dropout(0.5)
//! Linear(128, 10) -> LogSoftmax                             NLLLoss
//! ```
//!
//! Pooling after each convolution (PyTorch's example pools once, after both) keeps an epoch
//! affordable on two CPU cores. Adam (lr 1e-3), batches of 64, the learning rate multiplied by
//! 0.7 every epoch as in PyTorch's example (StepLR).
//!
//!     cargo run --release --example cnn_mnist
//!
//! `KILN_AUTOCAST=bf16` runs it under `autocast(DType::BF16, ..)` (matrix products in bfloat16
//! with f32 sums, parameters and gradients f32); another value is refused. Measured on the
//! 2-core AMD EPYC (2026-12-07, other work beside it): f32 99.24 % test accuracy in 219 s,
//! bf16 99.21 % in 544 s (this CPU has no AVX-512 BF16: the bfloat16 products run on the
//! AVX2 path, which rounds operands to bfloat16 and multiplies in f32).

use std::time::Instant;

use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt, Image};
use kiln::metrics::Accuracy;
use kiln::nn::{
    Conv2d, Conv2dConfig, Dropout, Flatten, Linear, LogSoftmax, MaxPool2d, Module, NLLLoss, Padding, ReLU, Sequential,
};
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
        Opts { train_samples: None, test_samples: None, epochs: env_usize("KILN_EPOCHS").unwrap_or(5), verbose: true }
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
    /// Mean negative log-likelihood on them.
    pub test_loss: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of loading and training, seconds.
    pub seconds: f64,
}

/// Normalises with MNIST's mean and standard deviation, keeping the `[1, 28, 28]` shape.
pub fn normalise(mut img: Image, _: &mut Rng) -> Image {
    img.data.iter_mut().for_each(|v| *v = (*v - 0.1307) / 0.3081);
    img
}

// ANCHOR: model
/// A 3x3 convolution that keeps the image size (padding 1).
fn conv3x3(in_channels: usize, out_channels: usize) -> Conv2d {
    Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(in_channels, out_channels, 3) }
        .build()
        .expect("valid sizes")
}

/// The network of the module doc.
pub fn model() -> Sequential {
    Sequential::new()
        .add(conv3x3(1, 32))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv3x3(32, 64))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Dropout::new(0.25))
        .add(Flatten::default())
        .add(Linear::new(64 * 7 * 7, 128))
        .add(ReLU)
        .add(Dropout::new(0.5))
        .add(Linear::new(128, 10))
        .add(LogSoftmax { dim: 1 })
}
// ANCHOR_END: model

/// Trains and evaluates; `Err` when the MNIST files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("mnist");
    let train = first(Mnist::new(&dir, Split::Train)?, opts.train_samples).map_input(normalise);
    let test = first(Mnist::new(&dir, Split::Test)?, opts.test_samples).map_input(normalise);
    if opts.verbose {
        println!("MNIST: {} training and {} test images", train.len(), test.len());
    }
    let train = DataLoader::new(train, 64).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);

    let mut model = model();
    if opts.verbose {
        println!("{model}");
    }
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let schedule = StepLR::new(&mut opt, 1, 0.7);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = NLLLoss::default();
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
    // KILN_AUTOCAST=bf16: train and evaluate with the matrix products in bfloat16 (f32 sums).
    // ANCHOR: autocast
    let precision = kiln::tensor::autocast::autocast_from_env("KILN_AUTOCAST").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    if let Some(p) = precision {
        println!("autocast: matrix products in {p}");
    }
    match kiln::tensor::autocast(precision.unwrap_or(kiln::tensor::DType::F32), || run(&Opts::full())) {
        // ANCHOR_END: autocast
        Ok(r) => println!(
            "CNN on MNIST: test accuracy {:.2}% (NLL {:.4}) after {} epochs, {:.1} s",
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
