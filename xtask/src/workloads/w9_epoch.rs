//! W9: W2's model for one epoch over 60,000 MNIST-shaped samples (random u8 images and
//! labels held in memory), batch 128: a fresh permutation per epoch, then per batch gather by
//! index, convert to f32 / 255, reshape to [B, 784], one W2 step. 1 warm-up epoch, median of
//! 5. Runs in a fresh child process (`xtask __w9`) so that its peak RSS is its own.

use std::process::Command;
use std::time::Instant;

use kiln_autograd::Var;
use kiln_nn::CrossEntropyLoss;
use kiln_tensor::{Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};
use crate::workloads::w2_mlp;

const N: usize = 60_000;
const BATCH: usize = 128;

/// Runs W9 in this process: returns (median s/epoch, peak RSS MiB, RSS before MiB).
pub fn child(epochs: usize) -> (f64, f64, f64) {
    let before = status_mib("VmRSS");
    let mut rng = Rng::new(9);
    let images: Vec<u8> = (0..N * 784).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<usize> = (0..N).map(|_| rng.below(10) as usize).collect();
    kiln_nn::init::manual_seed(9);
    let m = w2_mlp::model();
    let mut opt = w2_mlp::optimizer(&m);
    let loss = CrossEntropyLoss::default();
    let mut xb: Vec<f32> = Vec::with_capacity(BATCH * 784);
    let mut epoch = |rng: &mut Rng| {
        let perm = rng.permutation(N);
        for idx in perm.chunks(BATCH) {
            xb.clear();
            for &i in idx {
                xb.extend(images[i * 784..(i + 1) * 784].iter().map(|&p| p as f32 * (1.0 / 255.0)));
            }
            let x = Var::constant(Tensor::from_vec(std::mem::take(&mut xb), &[idx.len(), 784]));
            let y = Indices::from_vec(idx.iter().map(|&i| labels[i]).collect());
            w2_mlp::step(&m, &mut opt, &loss, &x, &y);
            xb = Vec::with_capacity(BATCH * 784);
        }
    };
    epoch(&mut rng);
    let mut times: Vec<f64> = (0..epochs)
        .map(|_| {
            let t0 = Instant::now();
            epoch(&mut rng);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (times[times.len() / 2], status_mib("VmHWM"), before)
}

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn run(timer: &Timer) -> Vec<Figure> {
    let epochs = if timer.min_reps < 20 { 1 } else { 5 };
    let exe = std::env::current_exe().expect("own executable");
    let out = Command::new(exe)
        .args(["__w9", &kiln_tensor::get_num_threads().to_string(), &epochs.to_string()])
        .output()
        .expect("spawn the W9 child process");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    assert!(out.status.success() && v.len() == 3, "W9 child failed: {}", String::from_utf8_lossy(&out.stderr));
    vec![
        Figure { variant: "batch=128".into(), value: v[0], unit: "s/epoch", reps: epochs },
        Figure { variant: "batch=128".into(), value: v[1], unit: "MiB", reps: epochs },
    ]
}
