//! Loader throughput over MNIST's training set (shuffled, batch 64, default collate), with 0 and
//! 2 workers: `cargo run --release -p kiln-data --example loader_throughput`.

use std::time::Instant;

use kiln_data::datasets::{Mnist, Split};
use kiln_data::DataLoader;

fn main() -> Result<(), kiln_data::DataError> {
    let start = Instant::now();
    let train = std::sync::Arc::new(Mnist::from_data_dir(Split::Train)?);
    println!("read {} MNIST training images in {:.2} s", train.images().len() / 784, start.elapsed().as_secs_f64());
    for workers in [0, 2] {
        let loader = DataLoader::from_arc(train.clone(), 64).shuffle(true).seed(0).num_workers(workers);
        let start = Instant::now();
        let mut n = 0;
        for batch in &loader {
            n += batch.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{workers} workers: {n} samples in {secs:.3} s = {:.0} samples/s", n as f64 / secs);
    }
    Ok(())
}
