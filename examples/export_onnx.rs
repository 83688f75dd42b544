//! Trains the MNIST CNN of `cnn_mnist.rs` briefly, exports it to ONNX (`mnist_cnn.onnx`, with a
//! dynamic batch axis), and checks the file with ONNX Runtime on the MNIST test set: its
//! accuracy must equal kiln's and every prediction must agree (read from
//! `KILN_DATA_DIR/mnist`, default `../shared/data/mnist`).
//!
//! One epoch by default (`KILN_EPOCHS` overrides); the file goes to `KILN_ONNX_OUT` (default
//! `mnist_cnn.onnx` in the current folder). The ONNX Runtime check runs
//! `examples/export_onnx_check.py` (`pip install onnxruntime`), and is skipped with a message
//! when Python or onnxruntime is missing.
//!
//!     cargo run --release -p kiln-onnx --example export_onnx
// cnn_mnist.rs and common.rs are included as modules by several binaries, on purpose.
#![allow(clippy::duplicate_mod)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt};
use kiln::metrics::Accuracy;
use kiln::nn::{Forward, Module, NLLLoss};
use kiln::optim::lr_scheduler::StepLR;
use kiln::optim::{Adam, AdamConfig};
use kiln::train::{BatchSource, SchedulerInterval, Trainer, Verbosity};
use kiln_onnx::{export, ExportOptions};

// The MNIST CNN of `cnn_mnist` (model and input normalisation).
#[path = "cnn_mnist.rs"]
#[allow(dead_code)]
mod cnn_mnist;
use cnn_mnist::{model, normalise};
#[path = "common.rs"]
#[allow(clippy::duplicate_mod)] // cnn_mnist includes it too
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
    /// Where the ONNX file goes.
    pub output: PathBuf,
    /// Print progress and the figures.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented.
    pub fn full() -> Self {
        Opts {
            train_samples: None,
            test_samples: None,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(1),
            output: std::env::var_os("KILN_ONNX_OUT").map_or_else(|| PathBuf::from("mnist_cnn.onnx"), PathBuf::from),
            verbose: true,
        }
    }

    /// A few hundred images, one epoch, silent, the file in a temporary folder.
    pub fn smoke() -> Self {
        Opts {
            train_samples: Some(256),
            test_samples: Some(200),
            epochs: 1,
            output: std::env::temp_dir().join(format!("kiln_export_onnx_smoke_{}.onnx", std::process::id())),
            verbose: false,
        }
    }
}

/// ONNX Runtime's figures on the exported file.
#[derive(Clone, Debug)]
pub struct RuntimeCheck {
    /// Test images ONNX Runtime classifies correctly.
    pub correct: usize,
    /// Test images where its prediction equals kiln's.
    pub agree: usize,
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Test images.
    pub test_images: usize,
    /// Test images kiln classifies correctly.
    pub kiln_correct: usize,
    /// ONNX Runtime's figures, `None` (with the reason) when it could not run.
    pub onnxruntime: Result<RuntimeCheck, String>,
    /// The ONNX file's size in bytes.
    pub file_bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

fn write_le<T: Copy>(path: &Path, values: &[T], to_bytes: impl Fn(T) -> Vec<u8>) -> Result<(), DataError> {
    let bytes: Vec<u8> = values.iter().flat_map(|&v| to_bytes(v)).collect();
    std::fs::write(path, bytes).map_err(|e| io_error(path, e))
}

/// Runs `export_onnx_check.py` on the exported file and the test set.
fn onnxruntime_check(
    model: &Path,
    images: &[f32],
    labels: &[i64],
    preds: &[i64],
) -> Result<Result<RuntimeCheck, String>, DataError> {
    let tmp = std::env::temp_dir().join(format!("kiln_export_onnx_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    let (fi, fl, fp) = (tmp.join("images.f32"), tmp.join("labels.i64"), tmp.join("preds.i64"));
    write_le(&fi, images, |v: f32| v.to_le_bytes().to_vec())?;
    write_le(&fl, labels, |v: i64| v.to_le_bytes().to_vec())?;
    write_le(&fp, preds, |v: i64| v.to_le_bytes().to_vec())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/export_onnx_check.py");
    let out = Command::new("python3").arg(&script).arg(model).arg(&fi).arg(&fl).arg(&fp).output();
    std::fs::remove_dir_all(&tmp).ok();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Ok(Err(format!("python3 cannot run: {e}"))),
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Ok(Err(format!("{}{}", text.trim(), String::from_utf8_lossy(&out.stderr).trim())));
    }
    let f: Vec<usize> = text.split_whitespace().skip(1).filter_map(|s| s.parse().ok()).collect();
    match f.as_slice() {
        [correct, agree, n] if *n == labels.len() => Ok(Ok(RuntimeCheck { correct: *correct, agree: *agree })),
        _ => Ok(Err(format!("unexpected output from the check script: {text}"))),
    }
}

/// Trains, exports and checks; `Err` when the MNIST files cannot be read or the file cannot be
/// written.
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
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let schedule = StepLR::new(&mut opt, 1, 0.7);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    trainer.fit(&mut model, &mut opt, &NLLLoss::default(), &train, None).or_stop();
    model.eval();

    // kiln's predictions on the test set, and the images as they were fed
    let (mut images, mut labels, mut preds) = (Vec::new(), Vec::new(), Vec::new());
    for batch in test.batches() {
        let out = no_grad(|| model.forward(&Var::constant(batch.inputs.clone())).value());
        let (n, k) = (out.shape()[0], out.shape()[1]);
        let v = out.to_vec();
        for i in 0..n {
            let row = &v[i * k..(i + 1) * k];
            let arg = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            preds.push(arg as i64);
        }
        labels.extend(batch.targets.classes().iter().map(|&c| c as i64));
        images.extend(batch.inputs.to_vec());
    }
    let kiln_correct = preds.iter().zip(&labels).filter(|(p, l)| p == l).count();

    // ANCHOR: export
    let example = kiln::tensor::Tensor::from_vec(images[..28 * 28].to_vec(), &[1, 1, 28, 28]);
    export(&model, &example, &opts.output, ExportOptions::default()).map_err(|e| io_error(&opts.output, e))?;
    let file_bytes = std::fs::metadata(&opts.output).map_err(|e| io_error(&opts.output, e))?.len();
    if opts.verbose {
        println!("wrote {} ({file_bytes} bytes)", opts.output.display());
    }
    let onnxruntime = onnxruntime_check(&opts.output, &images, &labels, &preds)?;
    // ANCHOR_END: export
    Ok(Report {
        test_images: labels.len(),
        kiln_correct,
        onnxruntime,
        file_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => {
            let pct = |c: usize| 100.0 * c as f64 / r.test_images as f64;
            println!("kiln:        test accuracy {:.2}% ({}/{})", pct(r.kiln_correct), r.kiln_correct, r.test_images);
            match &r.onnxruntime {
                Ok(c) => println!(
                    "onnxruntime: test accuracy {:.2}% ({}/{}); predictions equal to kiln's on {}/{}",
                    pct(c.correct),
                    c.correct,
                    r.test_images,
                    c.agree,
                    r.test_images
                ),
                Err(why) => println!("onnxruntime: not checked ({why}); pip install onnxruntime"),
            }
            println!("{:.1} s", r.seconds);
        }
        Err(e) => {
            eprintln!("export_onnx: {e}");
            std::process::exit(2);
        }
    }
}
