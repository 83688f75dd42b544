//! A convolutional network with batch normalisation, dropout, flip/crop augmentation and a
//! cosine learning-rate schedule on CIFAR-10 (32x32 colour images in 10 classes, read from
//! `KILN_DATA_DIR/cifar10`, default `../shared/data/cifar10`), trained twice, with and without
//! augmentation, to show what augmentation buys.
//!
//! Data: with the full set present (50,000 training and 10,000 test images) it trains and tests
//! on those; with the shared subset (the first 4,000 training images, 20 test images) it trains
//! on the first 3,500 of the 4,000 and tests on the other 500.
//!
//! ```text
//! [Conv2d(3, 32, 3, padding=1)  -> MaxPool2d(2) -> BatchNorm2d(32)  -> ReLU]   [32, 16, 16]
//! [Conv2d(32, 64, 3, padding=1) -> MaxPool2d(2) -> BatchNorm2d(64)  -> ReLU]   [64, 8, 8]
//! [Conv2d(64, 128, 3, padding=1) -> MaxPool2d(2) -> BatchNorm2d(128) -> ReLU]  [128, 4, 4]
//! Flatten -> Linear(2048, 256) -> ReLU -> Dropout(0.5) -> Linear(256, 10)        cross-entropy
//! ```
//!
//! Each block pools before it normalises (max pooling commutes with ReLU; normalising the pooled
//! map costs a quarter as much). Augmentation: `RandomCrop(32, padding=4)` and
//! `RandomHorizontalFlip(0.5)`, then per-channel normalisation. SGD with Nesterov momentum 0.9,
//! weight decay 5e-4, lr 0.05 annealed to 0 along a cosine over the epochs, batches of 64.
//!
//!     cargo run --release --example cifar10_cnn

use std::time::Instant;

use kiln::data::datasets::{Cifar10, Split};
use kiln::data::transforms::{Normalize, RandomCrop, RandomHorizontalFlip, Transform};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt, Image};
use kiln::metrics::Accuracy;
use kiln::nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, CrossEntropyLoss, Dropout, Flatten, Linear, MaxPool2d, Module, Padding, ReLU,
    Sequential,
};
use kiln::optim::lr_scheduler::CosineAnnealingLR;
use kiln::optim::{SGDConfig, SGD};
use kiln::tensor::Rng;
use kiln::train::{SchedulerInterval, Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, OrStop};

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// With the shared subset: how many of its images to train on (the rest, up to
    /// `test_samples`, are the test set).
    pub train_samples: usize,
    /// With the shared subset: how many images to test on.
    pub test_samples: usize,
    /// Training epochs of each of the two runs.
    pub epochs: usize,
    /// Print one line per epoch (or a progress bar on a terminal).
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts { train_samples: 3500, test_samples: 500, epochs: env_usize("KILN_EPOCHS").unwrap_or(30), verbose: true }
    }

    /// A few hundred images, one epoch, silent.
    pub fn smoke() -> Self {
        Opts { train_samples: 192, test_samples: 64, epochs: 1, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Test accuracy of the run with augmentation.
    pub augmented_accuracy: f64,
    /// Test accuracy of the run without augmentation.
    pub plain_accuracy: f64,
    /// Training and test images used.
    pub train_images: usize,
    /// Test images used.
    pub test_images: usize,
    /// Epochs of each run.
    pub epochs: usize,
    /// Wall time of loading and both runs, seconds.
    pub seconds: f64,
}

// ANCHOR: model
/// A 3x3 convolution that keeps the image size (padding 1), without bias (batch norm follows).
fn conv3x3(in_channels: usize, out_channels: usize) -> Conv2d {
    Conv2dConfig { padding: Padding::Explicit([1, 1]), bias: false, ..Conv2dConfig::new(in_channels, out_channels, 3) }
        .build()
        .expect("valid sizes")
}

/// The network of the module doc.
pub fn model() -> Sequential {
    let mut net = Sequential::new();
    for (i, o) in [(3, 32), (32, 64), (64, 128)] {
        net = net.add(conv3x3(i, o)).add(MaxPool2d::new(2)).add(BatchNorm2d::new(o)).add(ReLU);
    }
    net.add(Flatten::default())
        .add(Linear::new(128 * 4 * 4, 256))
        .add(ReLU)
        .add(Dropout::new(0.5))
        .add(Linear::new(256, 10))
}
// ANCHOR_END: model

/// CIFAR-10's per-channel mean and standard deviation over the training set.
fn normalize() -> Normalize {
    Normalize::new(vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])
}

/// Trains a fresh model for `epochs` and returns its test accuracy.
fn train_and_test<D>(train: D, test: D, augment: bool, opts: &Opts) -> f64
where
    D: Dataset<Item = (Image, usize)> + Clone + 'static,
{
    kiln::nn::init::manual_seed(0);
    // ANCHOR: augment
    let (crop, flip, norm) = (RandomCrop::new(32, 32).padding(4), RandomHorizontalFlip::new(0.5), normalize());
    let train = train.map_input(move |img: Image, rng: &mut Rng| {
        let img = if augment { flip.apply(crop.apply(img, rng), rng) } else { img };
        norm.apply(img, rng)
    });
    let norm = normalize();
    let test = test.map_input(move |img: Image, rng: &mut Rng| norm.apply(img, rng));
    let train = DataLoader::new(train, 64).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);

    let mut model = model();
    let mut opt = SGD::new(
        model.parameters(),
        SGDConfig { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5e-4, ..Default::default() },
    );
    let schedule = CosineAnnealingLR::new(&mut opt, opts.epochs, 0.0);
    // ANCHOR_END: augment
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = CrossEntropyLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    trainer.evaluate(&mut model, &loss, &test).or_stop()["accuracy"]
}

/// Trains with and without augmentation and tests both; `Err` when the CIFAR-10 files cannot
/// be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    let dir = data_folder("cifar10");
    // The full upstream batches when they are there; else the shared folder's subsets, whose
    // names Cifar10::new does not read by guess.
    let subset = dir.join("data_batch_1_first4000.bin");
    let (train_set, test_set) = if !dir.join("data_batch_1.bin").exists() && subset.is_file() {
        let meta = dir.join("batches.meta.txt");
        let meta = meta.is_file().then_some(meta);
        (
            Cifar10::from_files(&[subset], meta.as_deref())?,
            Cifar10::from_files(&[dir.join("test_batch_first20.bin")], meta.as_deref())?,
        )
    } else {
        (Cifar10::new(&dir, Split::Train)?, Cifar10::new(&dir, Split::Test)?)
    };
    let (train_set, test_set) = (std::sync::Arc::new(train_set), std::sync::Arc::new(test_set));
    let (train, test) = if train_set.len() >= 50_000 && test_set.len() >= 10_000 {
        (
            train_set.clone().subset((0..train_set.len()).collect()),
            test_set.clone().subset((0..test_set.len()).collect()),
        )
    } else {
        let n_train = opts.train_samples.min(train_set.len());
        let n_test = opts.test_samples.min(train_set.len() - n_train);
        (
            train_set.clone().subset((0..n_train).collect()),
            train_set.clone().subset((n_train..n_train + n_test).collect()),
        )
    };
    if opts.verbose {
        println!("CIFAR-10: {} training and {} test images", train.len(), test.len());
        println!("{}", model());
        println!("with augmentation (random crop with 4-pixel padding, horizontal flip):");
    }
    let augmented_accuracy = train_and_test(train.clone(), test.clone(), true, opts);
    if opts.verbose {
        println!("test accuracy with augmentation: {:.2}%", 100.0 * augmented_accuracy);
        println!("without augmentation:");
    }
    let plain_accuracy = train_and_test(train.clone(), test.clone(), false, opts);
    Ok(Report {
        augmented_accuracy,
        plain_accuracy,
        train_images: train.len(),
        test_images: test.len(),
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "CIFAR-10 CNN, {} training / {} test images, {} epochs each: test accuracy {:.2}% with augmentation, {:.2}% without; {:.1} s",
            r.train_images,
            r.test_images,
            r.epochs,
            100.0 * r.augmented_accuracy,
            100.0 * r.plain_accuracy,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read CIFAR-10 ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
