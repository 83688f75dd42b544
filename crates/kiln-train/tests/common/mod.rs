//! Small deterministic problems shared by the integration tests.
#![allow(dead_code)]

use kiln_data::{Batch, Targets};
use kiln_nn::{sequential, Linear, Module, ReLU, Sequential, StateDict};
use kiln_tensor::{Rng, Tensor};
use kiln_train::tensor_batches;

/// Two Gaussian blobs in 2-D, centred at (-1.5, -1.5) (class 0) and (1.5, 1.5) (class 1),
/// classes alternating; `n` samples.
pub fn blobs(n: usize, seed: u64) -> (Tensor<f32>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let mut xs = Vec::with_capacity(n * 2);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 2;
        let centre = if c == 0 { -1.5 } else { 1.5 };
        xs.push((centre + 0.5 * rng.normal_f64()) as f32);
        xs.push((centre + 0.5 * rng.normal_f64()) as f32);
        labels.push(c);
    }
    (Tensor::from_vec(xs, &[n, 2]), labels)
}

/// `blobs` as in-memory class batches.
pub fn blob_batches(n: usize, seed: u64, batch_size: usize) -> Vec<Batch> {
    let (x, y) = blobs(n, seed);
    tensor_batches(&x, &Targets::from(y), batch_size)
}

/// The same inputs with every label flipped: training on `blob_batches` makes the loss on
/// these rise epoch after epoch.
pub fn flipped_blob_batches(n: usize, seed: u64, batch_size: usize) -> Vec<Batch> {
    let (x, y) = blobs(n, seed);
    tensor_batches(&x, &Targets::from(y.iter().map(|c| 1 - c).collect::<Vec<_>>()), batch_size)
}

/// Held while seeding kiln-nn's process-wide generator and drawing from it: the tests of one
/// binary run in parallel and would otherwise reseed it under each other.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 2-8-2 MLP with weights from `seed`.
pub fn mlp(seed: u64) -> Sequential<f32> {
    let _guard = rng_lock();
    kiln_nn::init::manual_seed(seed);
    sequential![Linear::new(2, 8), ReLU, Linear::new(8, 2)]
}

/// A `Linear` with weights from `seed`.
pub fn linear(in_features: usize, out_features: usize, seed: u64) -> Linear {
    let _guard = rng_lock();
    kiln_nn::init::manual_seed(seed);
    Linear::new(in_features, out_features)
}

/// Whether two state dicts hold the same keys with bit-identical values.
pub fn bit_equal(a: &StateDict<f32>, b: &StateDict<f32>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, ta), (kb, tb))| {
            ka == kb
                && ta.shape() == tb.shape()
                && ta.to_vec().iter().zip(tb.to_vec()).all(|(x, y)| x.to_bits() == y.to_bits())
        })
}

/// The largest absolute difference between two state dicts with the same keys.
pub fn max_abs_diff(a: &StateDict<f32>, b: &StateDict<f32>) -> f32 {
    a.iter()
        .map(|(k, ta)| {
            let tb = &b[k];
            ta.to_vec().iter().zip(tb.to_vec()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max)
}

/// The state dict of a model, for snapshotting.
pub fn snapshot(m: &dyn Module<f32>) -> StateDict<f32> {
    m.state_dict()
}
