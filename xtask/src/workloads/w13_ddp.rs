//! W13: W2's and W3's training steps under data parallelism, 2 processes x 1 thread, per-rank
//! batch 128 / 64, rank r's batch drawn from data seed SEED + r; `DistributedDataParallel`
//! with its defaults (25 MiB buckets, all-reduce overlapped with backward) over Open MPI on
//! one machine. Before each step every rank meets in an all-reduce of one number that carries
//! rank 0's decision whether another step follows; timing rules as the others, on rank 0's
//! clock. `run` starts `mpirun -np 2` on this program's `__w13` command. After the steps, one
//! all-reduce of as many floats as the model's gradients is timed alone by the same rules
//! (variant `allreduce W2 grads (0.94 MB)`, unit ms): the per-step communication a model of
//! more machines starts from.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use kiln_autograd::Var;
use kiln_distributed::{DdpConfig, DistributedDataParallel, ProcessGroup};
use kiln_nn::{CrossEntropyLoss, Forward, Module, Sequential};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};

/// The two variants: (model, per-rank batch, variant name).
const VARIANTS: [(&str, usize, &str); 2] = [("W2", 128, "ranks=2,batch=128x2"), ("W3", 64, "ranks=2,batch=64x2")];

/// The model a W13 variant trains (W2's or W3's).
pub fn model_of(variant: &str) -> &'static str {
    VARIANTS.iter().find(|v| v.2 == variant).map_or("?", |v| v.0)
}

pub fn run(timer: &Timer) -> Vec<Figure> {
    let exe = std::env::current_exe().expect("the xtask executable");
    let mut figures = Vec::new();
    for (model, _, variant) in VARIANTS {
        let out = Command::new("mpirun")
            .args([
                "--allow-run-as-root",
                "--oversubscribe",
                "--bind-to",
                "none",
                "-np",
                "2",
                "-x",
                "RAYON_NUM_THREADS=1",
            ])
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .arg(&exe)
            .args(["__w13", model])
            .args([timer.warmup, timer.min_reps, timer.max_reps].map(|n| n.to_string()))
            .arg(timer.min_time.to_string())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                eprintln!("W13: cannot run mpirun ({e}); install openmpi-bin (see crates/kiln-distributed/README.md)");
                return Vec::new();
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find_map(|l| l.strip_prefix("W13 "));
        match (out.status.success(), line) {
            (true, Some(l)) => {
                let mut it = l.split_whitespace();
                let ms: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                let reps: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                figures.push(Figure { variant: variant.into(), value: ms, unit: "ms/step", reps });
                // the all-reduce of one step's gradients on its own: "W13comm <bytes> <ms> <reps>"
                if let Some(c) = stdout.lines().find_map(|l| l.strip_prefix("W13comm ")) {
                    let v: Vec<f64> = c.split_whitespace().filter_map(|v| v.parse().ok()).collect();
                    if let [bytes, ms, reps] = v[..] {
                        figures.push(Figure {
                            variant: format!("allreduce {model} grads ({:.2} MB)", bytes / 1e6),
                            value: ms,
                            unit: "ms",
                            reps: reps as usize,
                        });
                    }
                }
            }
            _ => eprintln!(
                "W13 {model}: mpirun failed ({})\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    figures
}

/// W3's network (as `w3_cnn.rs`).
fn w3_model() -> Sequential<f32> {
    super::w3_cnn::network()
}

/// One rank of a W13 job: `__w13 MODEL WARMUP MIN_REPS MAX_REPS MIN_TIME`. Rank 0 prints
/// `W13 <median ms> <reps>`.
pub fn rank(args: &[String]) -> Result<(), String> {
    let model = args.first().map(String::as_str).unwrap_or("W2");
    let num = |i: usize, d: f64| args.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(d);
    let timer = Timer {
        warmup: num(1, 5.0) as usize,
        min_reps: num(2, 20.0) as usize,
        max_reps: num(3, 1000.0) as usize,
        min_time: num(4, 1.0),
    };
    kiln_tensor::set_num_threads(1);
    let pg = kiln_distributed::init().map_err(|e| e.to_string())?;
    let r = pg.rank() as u64;
    let (net, batch, seed) = match model {
        "W2" => {
            kiln_nn::init::manual_seed(2);
            (super::w2_mlp::model(), 128, 2)
        }
        "W3" => {
            kiln_nn::init::manual_seed(3);
            (w3_model(), 64, 3)
        }
        other => return Err(format!("__w13: unknown model {other}")),
    };
    let mut rng = Rng::new(seed + r);
    let shape: Vec<usize> = if model == "W2" { vec![batch, 784] } else { vec![batch, 1, 28, 28] };
    let x = Var::constant(Tensor::<f32>::randn(&shape, &mut rng));
    let y = Indices::from_vec((0..batch).map(|_| rng.below(10) as usize).collect());
    let ddp = DistributedDataParallel::new(net, &pg, DdpConfig::default()).map_err(|e| e.to_string())?;
    let loss = CrossEntropyLoss::default();
    let (ms, reps) = if model == "W2" {
        let mut opt = super::w2_mlp::optimizer(ddp.module());
        timed(&pg, &timer, || {
            opt.zero_grad();
            loss.forward(&ddp.forward(&x), &y).backward();
            opt.step();
        })
    } else {
        let mut opt = Adam::new(ddp.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
        timed(&pg, &timer, || {
            opt.zero_grad();
            loss.forward(&ddp.forward(&x), &y).backward();
            opt.step();
        })
    };
    // The communication alone: one all-reduce of as many floats as the model has gradients
    // (what DDP sends per step), timed by the same rules.
    let floats: usize = ddp.parameters().iter().map(|p| p.shape().iter().product::<usize>()).sum();
    let grads = vec![1.0f32; floats];
    let (comm, comm_reps) = timed(&pg, &timer, || {
        std::hint::black_box(pg.all_reduce_sum_f32(grads.clone()));
    });
    if pg.is_main() {
        println!("W13 {} {reps}", ms * 1e3);
        println!("W13comm {} {} {comm_reps}", floats * 4, comm * 1e3);
    }
    Ok(())
}

/// The timing rules of [`Timer::median`], with rank 0 deciding for every rank whether another
/// step follows (an all-reduce before each step, which is also the barrier).
fn timed(pg: &Arc<ProcessGroup>, t: &Timer, mut step: impl FnMut()) -> (f64, usize) {
    let (mut warm, mut times, mut total) = (0usize, Vec::new(), 0.0f64);
    loop {
        let more = warm < t.warmup || times.len() < t.min_reps || (total < t.min_time && times.len() < t.max_reps);
        let want = if pg.is_main() && more { 1.0 } else { 0.0 };
        if pg.all_reduce_sum_f32(vec![want])[0] == 0.0 {
            break;
        }
        let t0 = Instant::now();
        step();
        let dt = t0.elapsed().as_secs_f64();
        if warm < t.warmup {
            warm += 1;
        } else {
            times.push(dt);
            total += dt;
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    let n = times.len();
    let med = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    };
    (med, n)
}
