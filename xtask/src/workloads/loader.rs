//! Loader throughput (issue 7): samples per second through kiln-data's `DataLoader` over
//! MNIST's 60,000 training images (shuffled, batch 64, default collate to f32 tensors), with
//! 0 and 2 worker threads. Needs MNIST under `KILN_DATA_DIR`; skipped (no records) otherwise.
//! Not one of workloads.md's W1..W9, so PyTorch has no row for it.

use std::sync::Arc;
use std::time::Instant;

use kiln_data::datasets::{Mnist, Split};
use kiln_data::DataLoader;

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    let train = match Mnist::from_data_dir(Split::Train) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("loader: skipped, MNIST not available: {e}");
            return vec![];
        }
    };
    let epochs = if timer.min_reps < 20 { 1 } else { 5 };
    [0usize, 2]
        .into_iter()
        .map(|workers| {
            let loader = DataLoader::from_arc(train.clone(), 64).shuffle(true).seed(0).num_workers(workers);
            let mut rates: Vec<f64> = (0..epochs)
                .map(|_| {
                    let t0 = Instant::now();
                    let n: usize = loader.iter().map(|b| b.len()).sum();
                    n as f64 / t0.elapsed().as_secs_f64()
                })
                .collect();
            rates.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            Figure {
                variant: format!("mnist,batch=64,workers={workers}"),
                value: rates[rates.len() / 2],
                unit: "samples/s",
                reps: epochs,
            }
        })
        .collect()
}
