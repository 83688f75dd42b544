//! A fully connected autoencoder on MNIST, after Keras' "Building Autoencoders in Keras":
//! `784 -> 256 (ReLU) -> 784 (sigmoid)`, binary cross-entropy against the input pixels, Adam,
//! batches of 256 (60,000 training and 10,000 test images, read from `KILN_DATA_DIR/mnist`,
//! default `../shared/data/mnist`).
//!
//! Prints the test set's binary cross-entropy (the mean over pixels, as Keras reports it) and
//! writes a PNG of ten test digits (top row) above their reconstructions (bottom row) to
//! `KILN_OUT_DIR` (default `target/examples-output/` of the workspace).
//!
//!     cargo run --release --example autoencoder_mnist

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt, Image};
use kiln::nn::{BCELoss, Linear, Module, ReLU, Sequential, Sigmoid};
use kiln::optim::{Adam, AdamConfig};
use kiln::tensor::{Rng, Tensor};
use kiln::train::{predict, tensor_batches, Trainer, Verbosity};

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
    /// Where to write `autoencoder_mnist.png`.
    pub out_dir: PathBuf,
    /// Print one line per epoch (or a progress bar on a terminal).
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs, `KILN_OUT_DIR` the folder
    /// of the picture).
    pub fn full() -> Self {
        Opts {
            train_samples: None,
            test_samples: None,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(20),
            out_dir: std::env::var_os("KILN_OUT_DIR")
                .map_or_else(|| workspace_root().join("target/examples-output"), PathBuf::from),
            verbose: true,
        }
    }

    /// A few hundred images, one epoch, silent, the picture in the system's temporary folder.
    pub fn smoke() -> Self {
        Opts {
            train_samples: Some(512),
            test_samples: Some(256),
            epochs: 1,
            out_dir: std::env::temp_dir(),
            verbose: false,
        }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Binary cross-entropy on the test images used (mean over pixels).
    pub test_bce: f64,
    /// The picture of originals and reconstructions.
    pub png: PathBuf,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of loading and training, seconds.
    pub seconds: f64,
}

// ANCHOR: model
/// The autoencoder: `784 -> 256 -> 784`, ReLU code, sigmoid output.
pub fn model() -> Sequential {
    Sequential::new().add(Linear::new(784, 256)).add(ReLU).add(Linear::new(256, 784)).add(Sigmoid)
}
// ANCHOR_END: model

/// An image as `(input, target)`: its 784 pixels in [0, 1], twice.
fn to_pair(item: (Image, usize), _: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    (item.0.data.clone(), item.0.data)
}

/// Trains, evaluates and draws; `Err` when the MNIST files cannot be read or the picture cannot
/// be written.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("mnist");
    let train = first(Mnist::new(&dir, Split::Train)?, opts.train_samples).map(to_pair);
    let test = first(Mnist::new(&dir, Split::Test)?, opts.test_samples);
    // The first test image of each digit, for the picture.
    let picks = one_per_class(&test);
    let shown: Vec<f32> = picks.iter().flat_map(|&i| test.get(i).0.data).collect();
    let test = test.map(to_pair);
    if opts.verbose {
        println!("MNIST: {} training and {} test images", train.len(), test.len());
    }
    let train = DataLoader::new(train, 256).shuffle(true).seed(1);
    let test = DataLoader::new(test, 1000);

    // ANCHOR: train
    let mut model = model();
    if opts.verbose {
        println!("{model}");
    }
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let mut trainer =
        Trainer::new(opts.epochs).verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = BCELoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    let test_bce = trainer.evaluate(&mut model, &loss, &test).or_stop()["loss"];

    let originals = Tensor::from_vec(shown, &[picks.len(), 784]);
    let batch = tensor_batches(&originals, &kiln::data::Targets::from(vec![0usize; picks.len()]), picks.len());
    let reconstructions = predict(&mut model, &batch);
    let png = opts.out_dir.join("autoencoder_mnist.png");
    write_grid_png(&png, &[originals.to_vec(), reconstructions.to_vec()], picks.len(), 28, 3)
        .map_err(|source| DataError::Io { path: png.clone(), source })?;
    // ANCHOR_END: train
    Ok(Report { test_bce, png, epochs: opts.epochs, seconds: started.elapsed().as_secs_f64() })
}

/// Indices of the first image of each digit 0..9 (of those the data set has), in digit order.
fn one_per_class<D: Dataset<Item = (Image, usize)>>(ds: &D) -> Vec<usize> {
    let mut first = [None; 10];
    for i in 0..ds.len() {
        let label = ds.get(i).1;
        first[label].get_or_insert(i);
        if first.iter().all(Option::is_some) {
            break;
        }
    }
    first.into_iter().flatten().collect()
}

/// Writes rows of `count` square grey images of side `side` (values in [0, 1]), each pixel
/// drawn as a `scale` x `scale` block, as an 8-bit greyscale PNG; atomically (a temporary file
/// in the same folder, then a rename).
fn write_grid_png(path: &Path, rows: &[Vec<f32>], count: usize, side: usize, scale: usize) -> std::io::Result<()> {
    let gap = 2;
    let width = count * (side * scale + gap) + gap;
    let height = rows.len() * (side * scale + gap) + gap;
    let mut pixels = vec![128u8; width * height];
    for (r, row) in rows.iter().enumerate() {
        for k in 0..count {
            for y in 0..side * scale {
                for x in 0..side * scale {
                    let v = row[k * side * side + (y / scale) * side + x / scale];
                    let (py, px) = (gap + r * (side * scale + gap) + y, gap + k * (side * scale + gap) + x);
                    pixels[py * width + px] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("png.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(&file), width as u32, height as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(&pixels).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "autoencoder 784-256-784 on MNIST: test binary cross-entropy {:.4} after {} epochs, {:.1} s; reconstructions in {}",
            r.test_bce,
            r.epochs,
            r.seconds,
            r.png.display()
        ),
        Err(e) => {
            eprintln!("autoencoder_mnist: {e} (set KILN_DATA_DIR to the shared data folder)");
            std::process::exit(2);
        }
    }
}

/// The workspace folder (this file is in `examples/`, the manifest in `crates/kiln/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/kiln is two levels down").to_path_buf()
}
