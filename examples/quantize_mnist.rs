//! Post-training int8 quantisation of the MNIST CNN of `cnn_mnist.rs`: train it briefly in
//! `f32`, calibrate on ten training batches, quantise (int8 weights per output channel,
//! `quint8` activations calibrated with min-max observers, exact int8 GEMM), and compare
//! accuracy, file size and inference speed (read from `KILN_DATA_DIR/mnist`, default
//! `../shared/data/mnist`).
//!
//! ```text
//! Conv2d(1, 32, 3, padding=1) -> ReLU -> MaxPool2d(2)      -> QuantConv2d
//! Conv2d(32, 64, 3, padding=1) -> ReLU -> MaxPool2d(2)     -> QuantConv2d
//! Dropout(0.25) -> Flatten -> Linear(3136, 128) -> ReLU    -> QuantLinear
//! Dropout(0.5) -> Linear(128, 10) -> LogSoftmax            -> QuantLinear
//! ```
//!
//! One epoch of training by default (`KILN_EPOCHS` overrides); times are wall clock on the
//! machine that runs it, the median of several runs, per image.
//!
//!     cargo run --release --example quantize_mnist
// cnn_mnist.rs and common.rs are included as modules by several binaries, on purpose.
#![allow(clippy::duplicate_mod)]

use std::path::Path;
use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt};
use kiln::metrics::Accuracy;
use kiln::nn::{Forward, Module, NLLLoss};
use kiln::optim::lr_scheduler::StepLR;
use kiln::optim::{Adam, AdamConfig};
use kiln::quant::gemm::Isa;
use kiln::quant::{quantize_sequential, QuantConfig, QuantSequential};
use kiln::tensor::Tensor;
use kiln::train::{BatchSource, SchedulerInterval, Trainer, Verbosity};

// The MNIST CNN of `cnn_mnist` (model and input normalisation).
#[path = "cnn_mnist.rs"]
#[allow(dead_code)]
mod cnn_mnist;
use cnn_mnist::{model, normalise};
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
    /// Calibration batches of 64 training images.
    pub calibration_batches: usize,
    /// Timed runs per measurement (the median is reported).
    pub timing_runs: usize,
    /// Print progress and the figures.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the one epoch).
    pub fn full() -> Self {
        Opts {
            train_samples: None,
            test_samples: None,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(1),
            calibration_batches: 10,
            timing_runs: 7,
            verbose: true,
        }
    }

    /// A few hundred images, one epoch, two calibration batches, silent.
    pub fn smoke() -> Self {
        Opts {
            train_samples: Some(256),
            test_samples: Some(128),
            epochs: 1,
            calibration_batches: 2,
            timing_runs: 1,
            verbose: false,
        }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Test accuracy of the `f32` model.
    pub f32_accuracy: f64,
    /// Test accuracy of the int8 model.
    pub int8_accuracy: f64,
    /// Size of the `f32` safetensors file (kiln-nn's `save`), bytes.
    pub f32_file_bytes: u64,
    /// Size of the int8 file (`QuantSequential::save`), bytes.
    pub int8_file_bytes: u64,
    /// Whether the int8 model read back from its file gives identical outputs.
    pub reload_identical: bool,
    /// Milliseconds per image at batch 1: `[f32, int8]`.
    pub ms_per_image_batch1: [f64; 2],
    /// Milliseconds per image at batch 64: `[f32, int8]`.
    pub ms_per_image_batch64: [f64; 2],
    /// The int8 GEMM kernel this machine runs.
    pub kernel: String,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
}

/// The median wall time of `runs` calls of `f`, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Milliseconds per image of `forward` at batch 1 (over 16 images) and at batch 64.
fn per_image(runs: usize, images: &Tensor, forward: &dyn Fn(&Tensor) -> Tensor) -> (f64, f64) {
    let singles: Vec<Tensor> = (0..16).map(|i| images.narrow(0, i, 1).contiguous()).collect();
    let b1 = median_ms(runs, || singles.iter().for_each(|x| drop(forward(x)))) / 16.0;
    let batch = images.narrow(0, 0, 64).contiguous();
    let b64 = median_ms(runs, || drop(forward(&batch))) / 64.0;
    (b1, b64)
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

/// Trains, quantises, measures; `Err` when the MNIST files cannot be read (or a model file
/// cannot be written).
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("mnist");
    let train = first(Mnist::new(&dir, Split::Train)?, opts.train_samples).map_input(normalise);
    let test = first(Mnist::new(&dir, Split::Test)?, opts.test_samples).map_input(normalise);
    let calibration_set =
        first(Mnist::new(&dir, Split::Train)?, Some(64 * opts.calibration_batches)).map_input(normalise);
    if opts.verbose {
        println!("MNIST: {} training and {} test images", train.len(), test.len());
    }
    let train = DataLoader::new(train, 64).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);

    // 1. The f32 model, trained briefly as in cnn_mnist.rs.
    let mut model = model();
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let schedule = StepLR::new(&mut opt, 1, 0.7);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = NLLLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, None).or_stop();
    model.eval();
    let f32_accuracy = trainer.evaluate(&mut model, &loss, &test).or_stop()["accuracy"];

    // ANCHOR: quantize
    // 2. Calibrate on a few training batches and quantise. `quantize_sequential` takes the
    //    model by value (the layers that stay f32 move into the result), so it gets a copy and
    //    the f32 model stays here for the comparison.
    let calibration: Vec<Tensor> = DataLoader::new(calibration_set, 64).batches().map(|b| b.inputs).collect();
    let mut copy = self::model();
    copy.load_state_dict(&model.state_dict(), true).map_err(|e| io_error(&dir, e))?;
    let mut int8 = quantize_sequential(copy, &calibration, QuantConfig::default()).map_err(|e| io_error(&dir, e))?;
    if opts.verbose {
        println!("{int8}");
    }
    let int8_accuracy = trainer.evaluate(&mut int8, &loss, &test).or_stop()["accuracy"];
    // ANCHOR_END: quantize

    // ANCHOR: files
    // 3. Files: kiln-nn's f32 safetensors against the int8 one, and the int8 one read back.
    let tmp = std::env::temp_dir().join(format!("kiln-quantize-mnist-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| DataError::Io { path: tmp.clone(), source: e })?;
    let (f32_path, int8_path) = (tmp.join("cnn_f32.safetensors"), tmp.join("cnn_int8.safetensors"));
    kiln::nn::save(&model, &f32_path, &Default::default()).map_err(|e| io_error(&f32_path, e))?;
    int8.save(&int8_path).map_err(|e| io_error(&int8_path, e))?;
    let size = |p: &Path| {
        std::fs::metadata(p).map(|m| m.len()).map_err(|e| DataError::Io { path: p.to_path_buf(), source: e })
    };
    let (f32_file_bytes, int8_file_bytes) = (size(&f32_path)?, size(&int8_path)?);
    let reloaded = QuantSequential::load(&int8_path).map_err(|e| io_error(&int8_path, e))?;
    // ANCHOR_END: files
    let images = test.batches().next().expect("a test batch").inputs;
    let probe = images.narrow(0, 0, images.shape()[0].min(64)).contiguous();
    let reload_identical = reloaded.forward_tensor(&probe).to_vec() == int8.forward_tensor(&probe).to_vec();
    std::fs::remove_dir_all(&tmp).ok();

    // 4. Inference time per image (batch 1 needs 16 images, batch 64 needs 64).
    let images = if images.shape()[0] >= 64 { images } else { Tensor::cat(&vec![images; 64], 0) };
    let f32_forward = |x: &Tensor| no_grad(|| model.forward(&Var::constant(x.clone())).value());
    let int8_forward = |x: &Tensor| int8.forward_tensor(x);
    let (f1, f64_) = per_image(opts.timing_runs, &images, &f32_forward);
    let (q1, q64) = per_image(opts.timing_runs, &images, &int8_forward);

    Ok(Report {
        f32_accuracy,
        int8_accuracy,
        f32_file_bytes,
        int8_file_bytes,
        reload_identical,
        ms_per_image_batch1: [f1, q1],
        ms_per_image_batch64: [f64_, q64],
        kernel: format!("{:?}", Isa::detect()),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => {
            println!("CNN on MNIST, f32 against int8 (post-training static quantisation):");
            println!(
                "  test accuracy   f32 {:.2}%   int8 {:.2}%   ({:+.2} points)",
                100.0 * r.f32_accuracy,
                100.0 * r.int8_accuracy,
                100.0 * (r.int8_accuracy - r.f32_accuracy)
            );
            println!(
                "  model file      f32 {:.1} KiB   int8 {:.1} KiB   ({:.2}x smaller; read back identical: {})",
                r.f32_file_bytes as f64 / 1024.0,
                r.int8_file_bytes as f64 / 1024.0,
                r.f32_file_bytes as f64 / r.int8_file_bytes as f64,
                r.reload_identical
            );
            println!(
                "  inference, measured on this machine ({} threads, int8 kernel {}), median wall time per image:",
                kiln::tensor::get_num_threads(),
                r.kernel
            );
            for (name, [f, q]) in [("batch 1 ", r.ms_per_image_batch1), ("batch 64", r.ms_per_image_batch64)] {
                println!("    {name}   f32 {f:.3} ms   int8 {q:.3} ms   ({:.2}x)", f / q);
            }
            println!("  total {:.1} s", r.seconds);
        }
        Err(e) => {
            eprintln!("cannot read MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
