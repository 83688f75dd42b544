//! Gradient checkpointing on the W5 Transformer training step (`../shared/bench/workloads.md`:
//! x[16, 128, 256] -> 2 x TransformerEncoderLayer(d_model 256, 8 heads, ffn 1024) -> mean over
//! the sequence -> Linear(256, 10) -> cross-entropy, Adam): peak heap bytes and time per step
//! with every layer run plainly, and with every layer a checkpointed segment
//! (`kiln::autograd::checkpoint`, as `torch.utils.checkpoint` non-reentrant).
//!
//! ```text
//! cargo run --release --example checkpoint_memory          # 5 timed steps each
//! KILN_CKPT_STEPS=2 cargo run --release --example checkpoint_memory
//! ```
//!
//! Peak heap is measured by a counting global allocator in this binary, with kiln's buffer pool
//! off (a pooled buffer is free for kiln but still allocated for the allocator). The gradients of
//! both runs are compared: checkpointing must not change them.

use std::sync::Arc;
use std::time::Instant;

use kiln::autograd::{checkpoint, Var};
use kiln::nn::{CrossEntropyLoss, Forward, Linear, Module, TransformerEncoderLayer};
use kiln::optim::{Adam, AdamConfig, Optimizer};
use kiln::tensor::{Indices, Rng, Tensor};

// the counting global allocator of kiln-autograd's checkpoint_memory test
#[path = "../crates/kiln-autograd/tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::peak_of;

/// The two encoder layers and the head of W5.
struct Model {
    layers: Vec<Arc<TransformerEncoderLayer>>,
    head: Linear,
}

impl Model {
    fn new() -> Self {
        kiln::nn::init::manual_seed(5);
        let layer =
            || Arc::new(TransformerEncoderLayer::new(256, 8).dim_feedforward(1024).dropout(0.0).batch_first(true));
        Model { layers: vec![layer(), layer()], head: Linear::new(256, 10) }
    }

    fn parameters(&self) -> Vec<Var<f32>> {
        let mut p: Vec<Var<f32>> = self.layers.iter().flat_map(|l| l.parameters()).collect();
        p.extend(self.head.parameters());
        p
    }

    fn loss(&self, x: &Var<f32>, y: &Indices, checkpointed: bool, rng: &mut Rng) -> Var<f32> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = if checkpointed {
                let layer = Arc::clone(layer);
                checkpoint(move |xs: &[Var<f32>], _rng: &mut Rng| layer.forward(&xs[0]), &[h], rng)
            } else {
                layer.forward(&h)
            };
        }
        CrossEntropyLoss::default().forward(&self.head.forward(&h.mean(&[1], false)), y)
    }
}

/// Peak heap bytes above the level before a step, the median step time, and the gradients of
/// the first step.
fn run(checkpointed: bool, steps: usize) -> (usize, f64, Vec<Vec<f32>>) {
    let model = Model::new();
    let mut rng = Rng::new(5);
    let x = Var::constant(Tensor::<f32>::randn(&[16, 128, 256], &mut rng));
    let y = Indices::from_vec((0..16).map(|_| rng.below(10) as usize).collect());
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let (mut peak, mut times, mut first) = (0, Vec::new(), Vec::new());
    for step in 0..steps + 1 {
        opt.zero_grad();
        let t = Instant::now();
        let step_peak = peak_of(|| {
            model.loss(&x, &y, checkpointed, &mut rng).backward();
            if step == 0 {
                first = model
                    .parameters()
                    .iter()
                    .map(|p| p.grad().expect("every parameter gets a gradient").to_vec())
                    .collect();
            }
            opt.step();
        });
        // the first step is a warm-up for the timing (and creates Adam's state)
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        peak = peak.max(step_peak);
    }
    times.sort_by(f64::total_cmp);
    (peak, times[times.len() / 2], first)
}

fn main() {
    let steps: usize = match std::env::var("KILN_CKPT_STEPS") {
        Err(_) => 5,
        Ok(s) => match s.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("KILN_CKPT_STEPS must be a positive integer, got {s:?}");
                std::process::exit(2);
            }
        },
    };
    // a pooled buffer is free for kiln but allocated for the counting allocator
    kiln::tensor::alloc::set_pool_limit(0);
    let (plain_peak, plain_t, plain_g) = run(false, steps);
    let (ckpt_peak, ckpt_t, ckpt_g) = run(true, steps);
    let max_diff = plain_g
        .iter()
        .zip(&ckpt_g)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(a, b)| (a - b).abs()))
        .fold(0.0f32, f32::max);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!("W5 training step (batch 16, seq 128, d_model 256, 2 layers), {steps} timed steps each, buffer pool off");
    println!("plain:        peak heap {:>7.1} MiB above the model, {:>6.1} ms/step", mib(plain_peak), plain_t * 1e3);
    println!("checkpointed: peak heap {:>7.1} MiB above the model, {:>6.1} ms/step", mib(ckpt_peak), ckpt_t * 1e3);
    println!(
        "checkpointing keeps {:.0} % of the peak at {:.2}x the time; max |gradient difference| {max_diff:e}",
        100.0 * ckpt_peak as f64 / plain_peak as f64,
        ckpt_t / plain_t
    );
    assert!(max_diff <= 1e-5, "checkpointing changed the gradients by {max_diff}");
}
