//! Explaining a small MNIST CNN: trains it for two epochs on 12,000 training images (read from
//! `KILN_DATA_DIR/mnist`, default `../shared/data/mnist`), then, for a few test digits, writes a
//! heat map of each method's attributions for the predicted class over the digit:
//!
//! ```text
//! saliency | gradient x input | SmoothGrad | Integrated Gradients | occlusion | Kernel SHAP | LIME
//! ```
//!
//! one PNG per digit and method, and one panel per digit with the input and all seven side by
//! side (red raises the class score, blue lowers it). The PNGs go to the folder given as the
//! first argument (default `target/explain_mnist`); their paths are printed.
//!
//!     cargo run --release --example explain_mnist [-- OUT_DIR]
//!
//! `KILN_TRAIN_SAMPLES` and `KILN_EPOCHS` change the training set size and the epochs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::autograd::Var;
use kiln::data::datasets::{Mnist, Split};
use kiln::explain::{
    gradient_x_input, integrated_gradients, kernel_shap, lime, occlusion, render_heatmap, saliency, smooth_grad,
    Heatmap, HeatmapOptions, KernelShapConfig, LimeConfig, Segmented,
};
use kiln::nn::functional::{cross_entropy, CrossEntropyOptions};
use kiln::nn::{Conv2d, Conv2dConfig, Flatten, Forward, Linear, MaxPool2d, Module, Padding, ReLU, Sequential};
use kiln::optim::{Adam, AdamConfig, Optimizer};
use kiln::tensor::{Indices, Rng, Tensor};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize};

const MEAN: f32 = 0.1307;
const STD: f32 = 0.3081;

/// Conv(1→8, 3x3) → ReLU → MaxPool(2) → Conv(8→16, 3x3) → ReLU → MaxPool(2) → Linear(784→10).
fn network() -> Sequential {
    let conv = |i, o| -> Conv2d {
        Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(i, o, 3) }.build().expect("valid sizes")
    };
    Sequential::new()
        .add(conv(1, 8))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv(8, 16))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(16 * 7 * 7, 10))
}

/// The MNIST images at `indices`, as `[n, 1, 28, 28]` values in [0, 1], and their labels.
fn images(set: &Mnist, indices: &[usize]) -> (Tensor, Vec<usize>) {
    let mut data = Vec::with_capacity(indices.len() * 784);
    for &i in indices {
        data.extend(set.image_bytes(i).iter().map(|&b| f32::from(b) / 255.0));
    }
    let labels = indices.iter().map(|&i| usize::from(set.labels()[i])).collect();
    (Tensor::from_vec(data, &[indices.len(), 1, 28, 28]), labels)
}

fn main() {
    let out_dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/explain_mnist".into()));
    let dir = data_folder("mnist");
    let (train, test) = match (Mnist::new(&dir, Split::Train), Mnist::new(&dir, Split::Test)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot read MNIST ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    };

    // Train. The model takes images in [0, 1] and normalises inside, so that the explanations'
    // baseline 0 is a black image.
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let mut net = network();
    let model = |x: &Var| net.forward(&x.sub_scalar(MEAN).div_scalar(STD));
    let n_train = env_usize("KILN_TRAIN_SAMPLES").unwrap_or(12_000).min(train.labels().len());
    let epochs = env_usize("KILN_EPOCHS").unwrap_or(2);
    let mut opt = Adam::new(net.parameters(), AdamConfig { lr: 2e-3, ..Default::default() });
    let mut rng = Rng::new(1);
    for epoch in 0..epochs {
        let order = rng.permutation(n_train);
        let mut total = 0.0;
        for batch in order.chunks(64) {
            let (x, y) = images(&train, batch);
            opt.zero_grad();
            let loss = cross_entropy(&model(&Var::constant(x)), &Indices::from_vec(y), &CrossEntropyOptions::default());
            loss.backward();
            opt.step();
            total += f64::from(loss.item()) * batch.len() as f64;
        }
        println!("epoch {}: training loss {:.4}", epoch + 1, total / n_train as f64);
    }
    net.eval();
    let model = |x: &Var| net.forward(&x.sub_scalar(MEAN).div_scalar(STD));
    let test_idx: Vec<usize> = (0..2000).collect();
    let (tx, ty) = images(&test, &test_idx);
    let logits = kiln::autograd::no_grad(|| model(&Var::constant(tx)).value());
    let test_accuracy = kiln::metrics::accuracy(&logits, &Indices::from_vec(ty.clone()));
    println!(
        "CNN trained on {n_train} images for {epochs} epochs in {:.1} s: test accuracy {:.2}% on {} images",
        started.elapsed().as_secs_f64(),
        100.0 * test_accuracy,
        ty.len()
    );

    // Explain a few test digits.
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
    let opts = HeatmapOptions { scale: Some(8), ..Default::default() };
    for &i in &[0usize, 1, 2, 3] {
        let (x, y) = images(&test, &[i]);
        let x = x.reshape(&[1, 28, 28]);
        let scores = kiln::autograd::no_grad(|| model(&Var::constant(x.unsqueeze(0))).value());
        let target = scores.argmax(1, false).as_slice()[0];
        println!("\ntest digit {i}: label {}, predicted {target} (logit {:.2})", y[0], scores.get(&[0, target]));
        let started = Instant::now();
        let black = Tensor::zeros(&[1, 28, 28]);
        let ig = integrated_gradients(&model, &x, target, &black, 64);
        println!(
            "  Integrated Gradients: sum {:.4}, f(x) - f(black) {:.4}, completeness error {:.2e} ({:.3}%)",
            ig.sum,
            ig.delta(),
            ig.error,
            100.0 * ig.relative_error()
        );
        let patches = Segmented::image(&x, [4, 4], 0.0);
        let shap = kernel_shap(
            &model,
            &patches,
            target,
            &KernelShapConfig { n_samples: Some(2048), seed: i as u64, ..Default::default() },
        );
        println!(
            "  Kernel SHAP over {} 4x4 patches ({} coalitions): values sum {:.4} = f(x) {:.4} - E[f(black)] {:.4}",
            patches.segments().len(),
            shap.n_coalitions,
            shap.sum(),
            shap.prediction,
            shap.expected_value
        );
        let lime_exp = lime(&model, &patches, target, &LimeConfig { seed: i as u64, ..Default::default() });
        println!("  LIME: surrogate R² {:.3}, top patches {:?}", lime_exp.score, lime_exp.top(3));
        // ANCHOR: methods
        let methods: Vec<(&str, Tensor)> = vec![
            ("saliency", saliency(&model, &x, target).abs()),
            ("gradient_x_input", gradient_x_input(&model, &x, target)),
            ("smooth_grad", smooth_grad(&model, &x, target, 50, 0.15, i as u64).abs()),
            ("integrated_gradients", ig.attributions),
            ("occlusion", occlusion(&model, &x, target, &[4, 4], &[2, 2], 0.0)),
            ("kernel_shap", shap.attributions),
            ("lime", lime_exp.attributions),
        ];
        // ANCHOR_END: methods
        println!("  seven methods in {:.2} s", started.elapsed().as_secs_f64());
        let mut panel = vec![render_heatmap(&x, &Tensor::zeros(&[1, 28, 28]), &opts)];
        for (name, attr) in &methods {
            let path = out_dir.join(format!("digit{i}_label{}_{name}.png", y[0]));
            let map = render_heatmap(&x, attr, &opts);
            save(&map, &path);
            panel.push(map);
        }
        save(&Heatmap::hstack(&panel, 8), &out_dir.join(format!("digit{i}_label{}_panel.png", y[0])));
    }
}

fn save(map: &Heatmap, path: &Path) {
    map.save_png(path).unwrap_or_else(|e| panic!("{e}"));
    println!("  wrote {}", path.display());
}
