//! The learning-rate range test (Smith 2017) on the MNIST CNN of `cnn_mnist`, with Adam: the
//! learning rate grows exponentially from 1e-6 to 1 over 100 steps of batches of 64 on the first
//! 6,400 training images, the smoothed loss is recorded until it diverges, and the steepest
//! descent of the curve is suggested. The model and the optimiser are restored afterwards.
//! Prints the suggestion and writes the curve to `lr_find_mnist.png` (`KILN_PLOT` overrides the
//! path). Reads `KILN_DATA_DIR/mnist` (default `../shared/data/mnist`).
//!
//!     cargo run --release --example lr_find_mnist
// cnn_mnist.rs and common.rs are included as modules by several binaries, on purpose.
#![allow(clippy::duplicate_mod)]

use std::path::PathBuf;
use std::time::Instant;

use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataError, DataLoader, DatasetExt};
use kiln::nn::Module;
use kiln::optim::{Adam, AdamConfig};
use kiln::train::{LrFinderConfig, LrFinderResult, Trainer};

#[path = "cnn_mnist.rs"]
#[allow(dead_code)]
mod cnn_mnist;
use cnn_mnist::{model, normalise};
#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, first, OrStop};

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Training images to draw batches from.
    pub train_samples: usize,
    /// Steps of the sweep.
    pub num_iter: usize,
    /// Where to write the plot (`None`: no plot).
    pub plot: Option<PathBuf>,
}

impl Opts {
    /// The recipe as documented (`KILN_LR_FIND_ITERS` overrides the steps).
    pub fn full() -> Self {
        let plot = std::env::var_os("KILN_PLOT").map_or_else(|| PathBuf::from("lr_find_mnist.png"), PathBuf::from);
        Opts { train_samples: 6400, num_iter: env_usize("KILN_LR_FIND_ITERS").unwrap_or(100), plot: Some(plot) }
    }

    /// A few batches, no plot.
    pub fn smoke() -> Self {
        Opts { train_samples: 128, num_iter: 12, plot: None }
    }
}

/// Runs the sweep; `Err` when the MNIST files cannot be read.
pub fn run(opts: &Opts) -> Result<LrFinderResult, DataError> {
    kiln::nn::init::manual_seed(0);
    let train = first(Mnist::new(data_folder("mnist"), Split::Train)?, Some(opts.train_samples)).map_input(normalise);
    let loader = DataLoader::new(train, 64).shuffle(true).seed(1);
    let mut net = model();
    let mut opt = Adam::new(net.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let config = LrFinderConfig { start_lr: 1e-6, end_lr: 1.0, num_iter: opts.num_iter, ..Default::default() };
    let found = Trainer::new(1).lr_find(&mut net, &mut opt, &kiln::nn::NLLLoss::default(), &loader, &config).or_stop();
    if let Some(path) = &opts.plot {
        found.plot(path).or_stop();
    }
    Ok(found)
}

fn main() {
    let opts = Opts::full();
    let started = Instant::now();
    match run(&opts) {
        Ok(r) => {
            println!(
                "LR finder on the MNIST CNN (Adam): {} steps from {:.1e} to {:.1e}{}, {:.1} s",
                r.lrs.len(),
                r.lrs[0],
                r.lrs[r.lrs.len() - 1],
                if r.diverged { " (stopped: the loss diverged)" } else { "" },
                started.elapsed().as_secs_f64()
            );
            match r.suggestion() {
                Some(lr) => println!("suggested learning rate: {lr:.2e}"),
                None => println!("no suggestion: too few points (raise KILN_LR_FIND_ITERS)"),
            }
            if let Some(p) = &opts.plot {
                println!("plot: {}", p.display());
            }
        }
        Err(e) => {
            eprintln!("cannot read MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
