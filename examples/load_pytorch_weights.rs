//! Runs a model trained in PyTorch: builds the `nn.Sequential` its JSON describes from kiln
//! layers, loads the weights PyTorch saved with `safetensors.torch.save_file(model.state_dict())`,
//! checks kiln's logits against the ones PyTorch computed for the same images, and prints the
//! accuracy, on those images and (when MNIST is at hand) on the whole MNIST test set.
//!
//!     cargo run --release --example load_pytorch_weights
//!
//! The model is read from `$KILN_INTEROP_DIR`, else `../shared/golden/interop` beside the repo
//! (`mnist_cnn.json`, `mnist_cnn.safetensors`, `mnist_cnn_io.safetensors`); MNIST from
//! `$KILN_DATA_DIR/mnist`, else `../shared/data/mnist`.

use std::path::PathBuf;
use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Mnist, Split};
use kiln::nn::serialize::{sequential_from_json, SafetensorsFile};
use kiln::nn::{load, Forward, Module, Sequential};
use kiln::tensor::Tensor;

/// The repository's parent folder, where `shared/` lives.
fn beside_repo(rel: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../..")).join(rel);
    p.canonicalize().unwrap_or(p)
}

fn predictions(model: &Sequential, x: Tensor<f32>) -> (Tensor<f32>, Vec<usize>) {
    let logits = no_grad(|| model.forward(&Var::constant(x)).value());
    let classes = logits.argmax(-1, false).into_vec();
    (logits, classes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("KILN_INTEROP_DIR").map_or_else(|| beside_repo("shared/golden/interop"), PathBuf::from);
    let json_path = dir.join("mnist_cnn.json");
    let json = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("{}: {e} (set KILN_INTEROP_DIR to the folder with the fixtures)", json_path.display()))?;

    // ANCHOR: load
    // The architecture, from PyTorch's class names and constructor arguments.
    let mut model: Sequential = sequential_from_json(&json)?;
    println!("{model}");

    // The weights, by PyTorch's state_dict keys; strict: every key must match.
    let weights = dir.join("mnist_cnn.safetensors");
    let file = SafetensorsFile::open(&weights)?;
    let report = load(&mut model, &weights, true)?;
    println!(
        "loaded {} tensors ({} parameters) from {} (metadata {:?})",
        report.loaded.len(),
        model.num_parameters(),
        weights.display(),
        file.metadata()
    );
    model.eval();
    // ANCHOR_END: load

    // The images PyTorch ran, its logits, and the labels.
    let io = SafetensorsFile::open(dir.join("mnist_cnn_io.safetensors"))?;
    let images: Tensor<f32> = io.tensor("input.images")?;
    let torch_logits: Tensor<f32> = io.tensor("output.logits")?;
    let (labels, _) = io.tensor_i64("input.labels")?;
    let (logits, predicted) = predictions(&model, images);
    let max_diff = logits.to_vec().iter().zip(torch_logits.to_vec()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let torch_predicted = torch_logits.argmax(-1, false).into_vec();
    let agree = predicted.iter().zip(&torch_predicted).filter(|(a, b)| a == b).count();
    let correct = predicted.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    let torch_correct = torch_predicted.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    println!(
        "{} images from mnist_cnn_io: max |kiln - PyTorch| logit difference {max_diff:.2e}; predictions agree on {agree}/{}",
        labels.len(),
        labels.len()
    );
    println!(
        "accuracy on them: kiln {:.2}% ({correct}/{}), PyTorch {:.2}%",
        100.0 * correct as f64 / labels.len() as f64,
        labels.len(),
        100.0 * torch_correct as f64 / labels.len() as f64
    );

    // The whole MNIST test set, preprocessed as the JSON says: (x / 255 - 0.1307) / 0.3081.
    let mnist_dir = std::env::var_os("KILN_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| beside_repo("shared/data"), PathBuf::from)
        .join("mnist");
    match Mnist::new(&mnist_dir, Split::Test) {
        Err(e) => println!("MNIST test set not evaluated ({e}); set KILN_DATA_DIR to a folder with mnist/"),
        Ok(test) => {
            let started = Instant::now();
            let (n, pixels) = (test.labels().len(), 28 * 28);
            let mut correct = 0;
            for start in (0..n).step_by(500) {
                let end = (start + 500).min(n);
                let x: Vec<f32> = test.images()[start * pixels..end * pixels]
                    .iter()
                    .map(|&p| (f32::from(p) / 255.0 - 0.1307) / 0.3081)
                    .collect();
                let (_, predicted) = predictions(&model, Tensor::from_vec(x, &[end - start, 1, 28, 28]));
                correct +=
                    predicted.iter().zip(&test.labels()[start..end]).filter(|(p, l)| **p == usize::from(**l)).count();
            }
            println!(
                "MNIST test set: accuracy {:.2}% ({correct}/{n}) in {:.1} s (mnist_cnn.json records PyTorch's test_accuracy)",
                100.0 * correct as f64 / n as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
