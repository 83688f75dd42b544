//! ResNet-18 (kiln-models, torchvision's architecture and keys) trained on CIFAR-10 (read from
//! `KILN_DATA_DIR/cifar10`, default `../shared/data/cifar10`), with flip/crop augmentation,
//! SGD with Nesterov momentum and a cosine learning rate; prints the model's summary (layer
//! table, parameters and mult-adds, as torchinfo counts them) before training.
//!
//! Data: with the full set present (50,000 training and 10,000 test images) it trains and tests
//! on those; with the shared subset (the first 4,000 training images) it trains on the first
//! 3,500 and tests on the other 500.
//!
//! The network is torchvision's `resnet18(num_classes=10)` at a reduced width (`KILN_WIDTH`,
//! default 16 channels in the first stage, 64 in torchvision): the 7×7 stride-2 stem and the
//! max pooling bring 32×32 images to 8×8 before the four stages (torchvision's ImageNet stem, not
//! the 3×3 stem of CIFAR-specific ResNets), so the weights stay loadable by torchvision's names.
//! SGD lr 0.05, momentum 0.9 (Nesterov), weight decay 5e-4, cosine to 0, batches of 64.
//!
//!     cargo run --release --example cifar10_resnet
//!
//! Measured on the 2-core development machine with the shared subset (one thread, other work
//! beside it): 49.40 % test accuracy after the 15 epochs, 176 s (703,386 parameters, 2.77 M
//! mult-adds per image). The ImageNet stem leaves an 8×8 map for four stages, so this network
//! sees less of each image than the plain CNN of `cifar10_cnn` (69.4 % on the same subset).

use std::time::Instant;

use kiln::data::datasets::{Cifar10, Split};
use kiln::data::transforms::{Normalize, RandomCrop, RandomHorizontalFlip, Transform};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt, Image};
use kiln::metrics::Accuracy;
use kiln::models::{ResNet, ResNetConfig};
use kiln::nn::{summary, CrossEntropyLoss, Module};
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
    /// With the shared subset: how many of its images to train on.
    pub train_samples: usize,
    /// With the shared subset: how many images to test on (after the training ones).
    pub test_samples: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Channels of the first stage (torchvision: 64).
    pub width: usize,
    /// Print the summary and one line per epoch.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS`, `KILN_WIDTH` override).
    pub fn full() -> Self {
        Opts {
            train_samples: 3500,
            test_samples: 500,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(15),
            width: env_usize("KILN_WIDTH").unwrap_or(16),
            verbose: true,
        }
    }

    /// A hundred-odd images, one epoch, a narrow network, silent.
    pub fn smoke() -> Self {
        Opts { train_samples: 128, test_samples: 64, epochs: 1, width: 4, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Test accuracy after training.
    pub test_accuracy: f64,
    /// Parameters of the network.
    pub parameters: usize,
    /// Mult-adds of one 32×32 image (torchinfo's count).
    pub mult_adds: u64,
    /// Training images used.
    pub train_images: usize,
    /// Test images used.
    pub test_images: usize,
    /// Wall time of loading and training, seconds.
    pub seconds: f64,
}

/// CIFAR-10's per-channel mean and standard deviation over the training set.
fn normalize() -> Normalize {
    Normalize::new(vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])
}

/// The network: torchvision's ResNet-18 for 10 classes at `width`.
pub fn model(width: usize) -> ResNet {
    ResNetConfig { width, num_classes: 10, ..ResNetConfig::resnet18() }.build().expect("valid sizes")
}

/// Trains ResNet-18 and tests it; `Err` when the CIFAR-10 files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    let dir = data_folder("cifar10");
    // The full upstream batches when they are there; else the shared folder's subset.
    let subset = dir.join("data_batch_1_first4000.bin");
    let train_set = if !dir.join("data_batch_1.bin").exists() && subset.is_file() {
        let meta = dir.join("batches.meta.txt");
        Cifar10::from_files(&[subset], meta.is_file().then_some(meta).as_deref())?
    } else {
        Cifar10::new(&dir, Split::Train)?
    };
    let train_set = std::sync::Arc::new(train_set);
    let (train, test) = if train_set.len() >= 50_000 {
        let test_set = std::sync::Arc::new(Cifar10::new(&dir, Split::Test)?);
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
    let (train_images, test_images) = (train.len(), test.len());

    kiln::nn::init::manual_seed(0);
    let mut model = model(opts.width);
    // The summary runs in evaluation mode (batch norm on one image needs the running statistics).
    model.eval();
    let table = summary(&model, &[1, 3, 32, 32]);
    model.train();
    if opts.verbose {
        println!("CIFAR-10: {train_images} training and {test_images} test images");
        println!("{table}");
    }

    let (crop, flip, norm) = (RandomCrop::new(32, 32).padding(4), RandomHorizontalFlip::new(0.5), normalize());
    let train =
        train.map_input(move |img: Image, rng: &mut Rng| norm.apply(flip.apply(crop.apply(img, rng), rng), rng));
    let norm = normalize();
    let test = test.map_input(move |img: Image, rng: &mut Rng| norm.apply(img, rng));
    let train = DataLoader::new(train, 64).shuffle(true).seed(1);
    let test = DataLoader::new(test, 250);

    let mut opt = SGD::new(
        model.parameters(),
        SGDConfig { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5e-4, ..Default::default() },
    );
    let schedule = CosineAnnealingLR::new(&mut opt, opts.epochs, 0.0);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = CrossEntropyLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    let test_accuracy = trainer.evaluate(&mut model, &loss, &test).or_stop()["accuracy"];
    Ok(Report {
        test_accuracy,
        parameters: table.total_params(),
        mult_adds: table.mult_adds,
        train_images,
        test_images,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "CIFAR-10 ResNet-18 ({} parameters, {} mult-adds per image), {} training / {} test images: test accuracy \
             {:.2}%; {:.1} s",
            r.parameters,
            r.mult_adds,
            r.train_images,
            r.test_images,
            100.0 * r.test_accuracy,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read CIFAR-10 ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
