//! Data-parallel training of a small CNN on MNIST over MPI: every process trains on its share
//! of each epoch (a `DistributedSampler`), gradients are averaged during backward
//! (`DistributedDataParallel`), and rank 0 prints the figures, averaged over the processes.
//!
//! ```text
//! cargo build --release -p kiln-distributed --example ddp_mnist
//! mpirun -np 2 target/release/examples/ddp_mnist            # add --allow-run-as-root as root
//! ```
//!
//! Reads MNIST from `KILN_DATA_DIR/mnist` (default `../shared/data/mnist`); `KILN_EPOCHS` sets
//! the epochs (default 3), `KILN_TRAIN_SAMPLES` uses only the first images. Each process
//! takes batches of 64, so the global batch is `64 * processes`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_data::datasets::{Mnist, Split};
use kiln_data::{Dataset, DatasetExt, Image};
use kiln_distributed::DistributedTrainer;
use kiln_distributed::{init, DdpConfig, DistributedDataLoader, DistributedDataParallel, DistributedSampler};
use kiln_metrics::Accuracy;
use kiln_nn::{Conv2dConfig, Flatten, Linear, LogSoftmax, MaxPool2d, Module, NLLLoss, Padding, ReLU, Sequential};
use kiln_optim::{Adam, AdamConfig};
use kiln_tensor::Rng;
use kiln_train::Trainer;

/// `KILN_DATA_DIR/mnist` when `KILN_DATA_DIR` is set (a folder without MNIST stops the run,
/// naming the variable), else the default data folder or the shared one beside the repository.
fn data_folder() -> PathBuf {
    match kiln_data::env::dataset_dir_var("mnist") {
        Ok(Some(dir)) => return dir,
        Ok(None) => {}
        Err(e) => stop(&e.to_string()),
    }
    let dir = kiln_data::data_dir().join("mnist");
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    if dir.is_dir() || !shared.is_dir() {
        dir
    } else {
        shared
    }
}

/// A count from the environment; a value that is not a whole number stops the run.
fn env_usize(key: &str) -> Option<usize> {
    kiln_data::env::usize_var(key).unwrap_or_else(|e| stop(&e.to_string()))
}

fn stop(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

fn normalise(mut img: Image, _: &mut Rng) -> Image {
    img.data.iter_mut().for_each(|v| *v = (*v - 0.1307) / 0.3081);
    img
}

fn model() -> Sequential {
    let conv = |i, o| {
        Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(i, o, 3) }.build().expect("valid sizes")
    };
    Sequential::new()
        .add(conv(1, 16))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv(16, 32))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(32 * 7 * 7, 64))
        .add(ReLU)
        .add(Linear::new(64, 10))
        .add(LogSoftmax { dim: 1 })
}

fn main() {
    let pg = match init() {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("ddp_mnist: {e}");
            std::process::exit(2);
        }
    };
    let (rank, world) = (pg.rank(), pg.world_size());
    let dir = data_folder();
    let (train, test) = match (Mnist::new(&dir, Split::Train), Mnist::new(&dir, Split::Test)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            // Every rank fails alike; returning lets each finalise MPI cleanly.
            if rank == 0 {
                eprintln!("cannot read MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            }
            return;
        }
    };
    let n = env_usize("KILN_TRAIN_SAMPLES").unwrap_or(train.len()).min(train.len());
    let train = Arc::new(train.subset((0..n).collect()).map_input(normalise));
    let test = Arc::new(test.map_input(normalise));
    let train_loader =
        DistributedDataLoader::new(train.clone(), DistributedSampler::new(train.len(), world, rank).seed(1), 64);
    let test_loader =
        DistributedDataLoader::new(test.clone(), DistributedSampler::new(test.len(), world, rank).shuffle(false), 500);

    // ANCHOR: ddp
    kiln_nn::init::manual_seed(0);
    let mut ddp =
        DistributedDataParallel::new(model(), &pg, DdpConfig::default()).expect("every rank builds the same model");
    let mut opt = Adam::new(ddp.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    if rank == 0 {
        println!(
            "MNIST: {n} training images over {world} processes ({} each per epoch), global batch {}",
            train_loader.sampler().num_samples(),
            64 * world
        );
    }
    let started = Instant::now();
    let epochs = env_usize("KILN_EPOCHS").unwrap_or(3);
    let mut trainer = Trainer::new(epochs).metric("accuracy", || Accuracy::multiclass(10)).distributed(&pg);
    let history = trainer
        .fit(&mut ddp, &mut opt, &NLLLoss::default(), &train_loader, Some(&test_loader))
        .unwrap_or_else(|e| stop(&e.to_string()));
    // ANCHOR_END: ddp
    if rank == 0 {
        let last = history.epochs.last().expect("at least one epoch");
        println!(
            "DDP CNN on MNIST, {world} processes: test accuracy {:.2}% (NLL {:.4}) after {epochs} epochs, {:.1} s",
            100.0 * last["val_accuracy"],
            last["val_loss"],
            started.elapsed().as_secs_f64()
        );
    }
}
