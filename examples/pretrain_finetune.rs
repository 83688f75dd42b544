//! Unsupervised pre-training, then fine-tuning on few labels: an autoencoder learns an encoder
//! from all 60,000 MNIST training images without their labels; a new classification head on
//! that encoder, frozen, is then trained on 1 % of the labels (600 images, 60 of each digit).
//! For comparison, the same classifier (encoder and head) is trained from scratch on the same
//! 600 labelled images (MNIST read from `KILN_DATA_DIR/mnist`, default `../shared/data/mnist`).
//!
//! ```text
//! autoencoder: x -> encoder Linear(784, 256) -> ReLU -> decoder Linear(256, 784) -> sigmoid
//!              binary cross-entropy, Adam, batches of 256
//! classifier:  x -> encoder Linear(784, 256) -> ReLU -> head Linear(256, 10)
//!              cross-entropy, Adam, batches of 32
//! ```
//!
//! Pre-training is denoising (Vincent et al. 2008): half of the input pixels are zeroed at random
//! (the others scaled by 2, as dropout does, so that clean images look the same on average) and
//! the clean image is the target. A plain autoencoder's code is close to a copy of the pixels and
//! does not help the head (it reached 86.6 % against 86.8 % from scratch); the denoising one
//! does.
//! Fine-tuning freezes the pre-trained encoder (`requires_grad_(false)`) and trains only the
//! head; the baseline trains both layers from a random start, with the same optimiser, epochs
//! and weight decay.
//!
//!     cargo run --release --example pretrain_finetune

use std::sync::Arc;
use std::time::Instant;

use kiln::autograd::Var;
use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt, Image, VecDataset};
use kiln::metrics::Accuracy;
use kiln::nn::{BCELoss, CrossEntropyLoss, Forward, Linear, Module};
use kiln::optim::{Adam, AdamConfig};
use kiln::tensor::Rng;
use kiln::train::{Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, first, OrStop};

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Pre-train on the first this many training images (`None`: all 60,000).
    pub pretrain_samples: Option<usize>,
    /// Labelled images per digit for fine-tuning (60 = 1 % of MNIST's training set).
    pub labels_per_class: usize,
    /// Use the first this many test images (`None`: all 10,000).
    pub test_samples: Option<usize>,
    /// Autoencoder epochs.
    pub pretrain_epochs: usize,
    /// Epochs on the labelled images (the same for the fine-tuned and the scratch classifier).
    pub finetune_epochs: usize,
    /// Print one line per epoch.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the pre-training epochs).
    pub fn full() -> Self {
        Opts {
            pretrain_samples: None,
            labels_per_class: 60,
            test_samples: None,
            pretrain_epochs: env_usize("KILN_EPOCHS").unwrap_or(10),
            finetune_epochs: 100,
            verbose: true,
        }
    }

    /// A few hundred images, one or two epochs, silent.
    pub fn smoke() -> Self {
        Opts {
            pretrain_samples: Some(512),
            labels_per_class: 5,
            test_samples: Some(256),
            pretrain_epochs: 1,
            finetune_epochs: 2,
            verbose: false,
        }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Test accuracy of the head on the frozen pre-trained encoder.
    pub finetuned_accuracy: f64,
    /// Test accuracy of the same classifier trained from scratch on the same labels.
    pub scratch_accuracy: f64,
    /// Test binary cross-entropy of the autoencoder.
    pub autoencoder_bce: f64,
    /// Labelled training images used.
    pub labelled: usize,
    /// Wall time of everything, seconds.
    pub seconds: f64,
}

/// The autoencoder whose encoder is reused.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct Autoencoder {
    /// 784 -> 256.
    pub encoder: Linear,
    /// 256 -> 784.
    pub decoder: Linear,
}

impl Forward<f32> for Autoencoder {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        self.decoder.forward(&self.encoder.forward(x).relu()).sigmoid()
    }
}

/// Encoder + classification head.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct Classifier {
    /// 784 -> 256, pre-trained or not.
    pub encoder: Linear,
    /// 256 -> 10.
    pub head: Linear,
}

impl Forward<f32> for Classifier {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        self.head.forward(&self.encoder.forward(x).relu())
    }
}

/// The fraction of input pixels the denoising autoencoder zeroes.
const MASKING: f32 = 0.5;

/// 784 pixels in [0, 1].
fn pixels(img: Image, _: &mut Rng) -> Vec<f32> {
    img.data
}

/// `per_class` random training images of each digit (seeded).
fn labelled_subset(labels: &[u8], per_class: usize, seed: u64) -> Vec<usize> {
    let mut taken = [0usize; 10];
    let mut picked: Vec<usize> = Rng::new(seed)
        .permutation(labels.len())
        .into_iter()
        .filter(|&i| {
            let c = labels[i] as usize;
            taken[c] += 1;
            taken[c] <= per_class
        })
        .collect();
    picked.sort_unstable();
    picked
}

/// Trains `model`'s trainable parameters on the labelled images and returns its test accuracy.
fn train_classifier<D, T>(
    model: &mut Classifier,
    labelled: &DataLoader<D>,
    test: &DataLoader<T>,
    epochs: usize,
    verbose: bool,
) -> f64
where
    D: Dataset<Item = (Vec<f32>, usize)> + 'static,
    T: Dataset<Item = (Vec<f32>, usize)> + 'static,
{
    let trainable: Vec<Var<f32>> = model.parameters().into_iter().filter(|p| p.requires_grad()).collect();
    let mut opt = Adam::new(trainable, AdamConfig { lr: 1e-3, weight_decay: 1e-4, ..Default::default() });
    let mut trainer = Trainer::new(epochs).metric("accuracy", || Accuracy::multiclass(10)).verbosity(if verbose {
        Verbosity::Epochs
    } else {
        Verbosity::Silent
    });
    let loss = CrossEntropyLoss::default();
    let history = trainer.fit(model, &mut opt, &loss, labelled, None).or_stop();
    let eval = trainer.evaluate(model, &loss, test).or_stop();
    if verbose {
        let last = history.last().expect("trained at least one epoch");
        println!(
            "  after {epochs} epochs: training accuracy {:.2}%, test accuracy {:.2}%",
            100.0 * last["accuracy"],
            100.0 * eval["accuracy"]
        );
    }
    eval["accuracy"]
}

/// Pre-trains, fine-tunes, trains the baseline and compares; `Err` when the MNIST files cannot
/// be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("mnist");
    let train_all = Arc::new(Mnist::new(&dir, Split::Train)?);
    let labelled_idx = labelled_subset(train_all.labels(), opts.labels_per_class, 7);
    let test = first(Mnist::new(&dir, Split::Test)?, opts.test_samples).map_input(pixels);

    // ANCHOR: denoise
    // 1. Denoising autoencoder on unlabelled images.
    let unlabelled =
        first(Arc::clone(&train_all), opts.pretrain_samples).map(|(img, _): (Image, usize), rng: &mut Rng| {
            let clean = img.data;
            let noisy: Vec<f32> =
                clean.iter().map(|&v| if rng.next_f32() < MASKING { 0.0 } else { v / (1.0 - MASKING) }).collect();
            (noisy, clean)
        });
    let test_pairs = DataLoader::new(pairs(&test), 1000);
    // ANCHOR_END: denoise
    if opts.verbose {
        println!("pre-training a denoising autoencoder on {} unlabelled MNIST images", unlabelled.len());
    }
    let unlabelled = DataLoader::new(unlabelled, 256).shuffle(true).seed(1);
    let mut autoencoder = Autoencoder { encoder: Linear::new(784, 256), decoder: Linear::new(256, 784) };
    let mut opt = Adam::new(autoencoder.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let mut trainer =
        Trainer::new(opts.pretrain_epochs).verbosity(if opts.verbose { Verbosity::Epochs } else { Verbosity::Silent });
    trainer.fit(&mut autoencoder, &mut opt, &BCELoss::default(), &unlabelled, None).or_stop();
    let autoencoder_bce = trainer.evaluate(&mut autoencoder, &BCELoss::default(), &test_pairs).or_stop()["loss"];
    if opts.verbose {
        println!("autoencoder: test binary cross-entropy {autoencoder_bce:.4}");
    }

    // 2. The labelled 1 %.
    let labelled = train_all.subset(labelled_idx).map_input(pixels);
    let n_labelled = labelled.len();
    let labelled = DataLoader::new(labelled, 32).shuffle(true).seed(2);
    let test = DataLoader::new(test, 1000);

    // ANCHOR: freeze
    // 3. New head on the frozen pre-trained encoder.
    let mut finetuned = Classifier { encoder: autoencoder.encoder, head: Linear::new(256, 10) };
    finetuned.encoder.requires_grad_(false);
    if opts.verbose {
        println!(
            "head on the frozen pre-trained encoder, {n_labelled} labelled images ({} trainable parameters of {}):",
            finetuned.num_trainable_parameters(),
            finetuned.num_parameters()
        );
    }
    let finetuned_accuracy = train_classifier(&mut finetuned, &labelled, &test, opts.finetune_epochs, opts.verbose);
    // ANCHOR_END: freeze

    // 4. The same classifier from scratch.
    kiln::nn::init::manual_seed(1);
    let mut scratch = Classifier { encoder: Linear::new(784, 256), head: Linear::new(256, 10) };
    if opts.verbose {
        println!(
            "the same classifier from scratch, {n_labelled} labelled images (all {} parameters trained):",
            scratch.num_parameters()
        );
    }
    let scratch_accuracy = train_classifier(&mut scratch, &labelled, &test, opts.finetune_epochs, opts.verbose);
    Ok(Report {
        finetuned_accuracy,
        scratch_accuracy,
        autoencoder_bce,
        labelled: n_labelled,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Labelled images as autoencoder pairs `(pixels, pixels)`.
fn pairs<D: Dataset<Item = (Vec<f32>, usize)>>(ds: &D) -> VecDataset<(Vec<f32>, Vec<f32>)> {
    (0..ds.len()).map(|i| ds.get(i).0).map(|x| (x.clone(), x)).collect()
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "{} labels: frozen pre-trained encoder + new head {:.2}% test accuracy, same classifier from scratch {:.2}% ({:+.2} points); autoencoder test BCE {:.4}; {:.1} s",
            r.labelled,
            100.0 * r.finetuned_accuracy,
            100.0 * r.scratch_accuracy,
            100.0 * (r.finetuned_accuracy - r.scratch_accuracy),
            r.autoencoder_bce,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
