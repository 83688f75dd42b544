//! The program `tests/mpirun.rs` starts under `mpirun` to check data-parallel training: each
//! mode runs on every rank and exits 0 only when its checks hold (a failed check panics, which
//! aborts the whole job).
//!
//! Modes (`kiln-ddp-worker MODE [STEPS]`):
//! * `mlp-sgd`, `mlp-sgd-no-sync`, `cnn-adam-syncbn`, `cnn-adam-bn`: train with
//!   `DistributedDataParallel` for STEPS steps, each rank on its share (rows `r::world`) of a
//!   global batch, and compare with a single-process run on the whole global batch: the
//!   parameters must be bit-identical on every rank and equal to the single-process ones
//!   within 1e-6 relative.
//! * `trainer`: `Trainer::fit` on a `DistributedDataParallel` model with
//!   `DistributedDataLoader`s: every rank's history must be identical, the validation loss
//!   that of the whole validation set, and a `RankZero` callback must run on rank 0 only.
//! * `unused`: `find_unused_parameters`: gradients of a branch used on rank 0 only are
//!   averaged, a never-used parameter keeps no gradient.
//! * `mismatch`: rank 1 builds a different layer; construction must fail naming it.
//! * `panic`: rank 1 panics mid-training (the job must end, not hang).
//! * `train-forever`: trains slowly for a minute, writing each rank's pid to
//!   `$KILN_DDP_PID_DIR/rank<r>.pid` (the test kills one with SIGKILL).
//! * `stall`: rank 1 sleeps instead of joining a collective (the others must time out).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_autograd::Var;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_data::VecDataset;
use kiln_distributed::{
    init, DdpConfig, DistributedDataLoader, DistributedDataParallel, DistributedSampler, DistributedTrainer,
    ProcessGroup, RankZero, SyncBatchNorm,
};
use kiln_nn::{
    BatchNorm2d, Conv2dConfig, CrossEntropyLoss, Flatten, Forward, Layer, Linear, MaxPool2d, Module, Padding, ReLU,
    Sequential, TensorKind,
};
use kiln_optim::{Adam, AdamConfig, Optimizer, SGDConfig, SGD};
use kiln_tensor::{Indices, Rng, Tensor};
use kiln_train::{Callback, EpochContext, Trainer, Verbosity};

const SEED: u64 = 1234;
const IN: usize = 8;
const CLASSES: usize = 3;
/// Samples per rank per step.
const PER_RANK: usize = 4;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Mlp,
    CnnSync,
    CnnLocal,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let pg = match init() {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("kiln-ddp-worker: {e}");
            std::process::exit(2);
        }
    };
    match mode.as_str() {
        "mlp-sgd" => check_training(&pg, Kind::Mlp, steps, false),
        "mlp-sgd-no-sync" => check_training(&pg, Kind::Mlp, steps, true),
        "cnn-adam-syncbn" => check_training(&pg, Kind::CnnSync, steps, false),
        "cnn-adam-bn" => check_training(&pg, Kind::CnnLocal, steps, false),
        "trainer" => check_trainer(&pg),
        "unused" => check_unused(&pg),
        "mismatch" => check_mismatch(&pg),
        "panic" => train_until(&pg, Duration::from_secs(60), Some(2)),
        "train-forever" => train_until(&pg, Duration::from_secs(60), None),
        "stall" => stall(&pg),
        other => panic!("kiln-ddp-worker: unknown mode {other:?}"),
    }
}

fn cross_entropy() -> CrossEntropyLoss {
    CrossEntropyLoss::default()
}

fn mlp() -> Sequential {
    Sequential::new().add(Linear::new(IN, 16)).add(ReLU).add(Linear::new(16, CLASSES))
}

fn cnn(norm: impl Layer + 'static) -> Sequential {
    // No bias before BatchNorm (as in ResNets): BatchNorm removes it, so its gradient is
    // rounding noise that Adam would scale up to full steps of random sign.
    let conv = Conv2dConfig { padding: Padding::Explicit([1, 1]), bias: false, ..Conv2dConfig::new(1, 4, 3) }
        .build::<f32>()
        .expect("valid conv");
    Sequential::new()
        .add(conv)
        .add(norm)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(4 * 4 * 4, CLASSES))
}

/// The model, initialised from `SEED` (the same on every rank before DDP's broadcast, which
/// then changes nothing; the single-process reference uses plain BatchNorm).
fn build(kind: Kind, pg: Option<&Arc<ProcessGroup>>) -> Sequential {
    kiln_nn::init::manual_seed(SEED);
    match (kind, pg) {
        (Kind::Mlp, _) => mlp(),
        (Kind::CnnSync, Some(pg)) => cnn(SyncBatchNorm::from_batch_norm(BatchNorm2d::new(4), pg)),
        _ => cnn(BatchNorm2d::<f32>::new(4)),
    }
}

fn optimizer(kind: Kind, params: Vec<Var<f32>>) -> Box<dyn FnMut()> {
    // Boxed step-and-zero so both optimiser types fit one loop.
    if kind == Kind::Mlp {
        let mut o = SGD::new(params, SGDConfig { lr: 0.05, momentum: 0.9, ..Default::default() });
        Box::new(move || {
            o.step();
            o.zero_grad();
        })
    } else {
        let mut o = Adam::new(params, AdamConfig { lr: 0.01, ..Default::default() });
        Box::new(move || {
            o.step();
            o.zero_grad();
        })
    }
}

/// The global batch of `step`: `world * PER_RANK` samples.
fn global_batch(kind: Kind, step: usize, world: usize) -> (Tensor<f32>, Vec<usize>) {
    let n = world * PER_RANK;
    let shape: Vec<usize> = if kind == Kind::Mlp { vec![n, IN] } else { vec![n, 1, 8, 8] };
    let x = Tensor::uniform(&shape, -1.0, 1.0, &mut Rng::new(100 + step as u64));
    let y = (0..n).map(|i| (i * 7 + step * 5 + i / 3) % CLASSES).collect();
    (x, y)
}

/// Rows `rank, rank + world, ...` of a batch (what a DistributedSampler gives rank `rank`).
fn shard(x: &Tensor<f32>, y: &[usize], rank: usize, world: usize) -> (Tensor<f32>, Vec<usize>) {
    let n = y.len();
    let per = x.numel() / n;
    let v = x.to_vec();
    let rows: Vec<usize> = (rank..n).step_by(world).collect();
    let data: Vec<f32> = rows.iter().flat_map(|&i| v[i * per..(i + 1) * per].iter().copied()).collect();
    let mut shape = x.shape().to_vec();
    shape[0] = rows.len();
    (Tensor::from_vec(data, &shape), rows.iter().map(|&i| y[i]).collect())
}

fn rows(x: &Tensor<f32>, y: &[usize], from: usize, len: usize) -> (Tensor<f32>, Vec<usize>) {
    (x.narrow(0, from, len).contiguous(), y[from..from + len].to_vec())
}

fn loss_of(model: &dyn Fn(&Var<f32>) -> Var<f32>, x: &Tensor<f32>, y: &[usize], scale: f32) -> Var<f32> {
    let out = model(&Var::constant(x.clone()));
    cross_entropy().forward(&out, &Indices::from_vec(y.to_vec())).mul_scalar(scale)
}

fn check_training(pg: &Arc<ProcessGroup>, kind: Kind, steps: usize, no_sync: bool) {
    let (rank, world) = (pg.rank(), pg.world_size());
    // Small buckets, so that several all-reduces overlap backward.
    let config = DdpConfig { bucket_cap_mb: 0.0004, ..Default::default() };
    let ddp = DistributedDataParallel::new(build(kind, Some(pg)), pg, config).expect("same model on every rank");
    assert!(ddp.bucket_names().len() > 1, "expected several buckets, got {:?}", ddp.bucket_names());
    let mut step_ddp = optimizer(kind, ddp.parameters());
    for step in 0..steps {
        let (x, y) = global_batch(kind, step, world);
        let (xs, ys) = shard(&x, &y, rank, world);
        let f = |v: &Var<f32>| ddp.forward(v);
        if no_sync {
            // Two micro-batches: the first accumulates locally, the second averages the sum.
            let half = PER_RANK / 2;
            let (x0, y0) = rows(&xs, &ys, 0, half);
            let (x1, y1) = rows(&xs, &ys, half, half);
            ddp.no_sync(|| loss_of(&f, &x0, &y0, 0.5).backward());
            loss_of(&f, &x1, &y1, 0.5).backward();
        } else {
            loss_of(&f, &xs, &ys, 1.0).backward();
        }
        // Every parameter is used, so every bucket starts from a gradient hook, before the
        // end of backward (the last one when the first layer's gradients are done).
        let buckets = ddp.bucket_names().len();
        assert_eq!(ddp.buckets_started_during_backward(), buckets, "buckets started during backward");
        step_ddp();
    }

    // The same training in one process on the whole global batch.
    let reference = build(kind, None);
    let mut step_ref = optimizer(kind, reference.parameters());
    for step in 0..steps {
        let (x, y) = global_batch(kind, step, world);
        let f = |v: &Var<f32>| reference.forward(v);
        if kind == Kind::CnnLocal {
            // Per-rank BatchNorm statistics: the global step is the mean of the ranks' losses.
            for r in 0..world {
                let (xs, ys) = shard(&x, &y, r, world);
                loss_of(&f, &xs, &ys, 1.0 / world as f32).backward();
            }
        } else {
            loss_of(&f, &x, &y, 1.0).backward();
        }
        step_ref();
    }

    // Bit-identical on every rank.
    let mine: Vec<u64> =
        ddp.parameters().iter().flat_map(|p| p.value().to_vec()).map(|v| u64::from(v.to_bits())).collect();
    let all = pg.all_gather_varlen_u64(&mine);
    for (r, theirs) in all.iter().enumerate() {
        assert!(theirs == &mine, "rank {r}'s parameters differ from rank {rank}'s after {steps} steps");
    }
    // Equal to the single-process run.
    let mut worst = 0.0f64;
    for ((name, p), (_, q)) in ddp.named_parameters().iter().zip(reference.named_parameters()) {
        for (a, b) in p.value().to_vec().iter().zip(q.value().to_vec()) {
            let (a, b) = (*a as f64, b as f64);
            let rel = (a - b).abs() / b.abs().max(1e-2);
            worst = worst.max(rel);
            assert!(rel <= 1e-6, "{name}: distributed {a} vs single-process {b} (relative {rel:.2e})");
        }
    }
    if kind == Kind::CnnSync {
        // Running statistics over the global batch, as one process computes them.
        for ((name, p), (_, q)) in ddp.named_buffers().iter().zip(reference.named_buffers()) {
            for (a, b) in p.value().to_vec().iter().zip(q.value().to_vec()) {
                let rel = (*a as f64 - b as f64).abs() / (b as f64).abs().max(1e-2);
                assert!(rel <= 1e-5, "{name}: distributed {a} vs single-process {b}");
            }
        }
    }
    println!(
        "rank {rank}: OK after {steps} steps: parameters bit-identical on {world} ranks, \
         max relative difference to one process {worst:.2e}"
    );
}

/// `a(x) + b(x)` where `b` runs on rank 0 only and `c` never.
struct Branches {
    a: Linear,
    b: Linear,
    c: Linear,
    use_b: bool,
}

impl Module<f32> for Branches {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        self.a.visit(&format!("{prefix}a."), f);
        self.b.visit(&format!("{prefix}b."), f);
        self.c.visit(&format!("{prefix}c."), f);
    }
}

impl Forward<f32> for Branches {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        let y = self.a.forward(x);
        if self.use_b {
            y.add(&self.b.forward(x))
        } else {
            y
        }
    }
}

fn check_unused(pg: &Arc<ProcessGroup>) {
    let (rank, world) = (pg.rank(), pg.world_size());
    kiln_nn::init::manual_seed(SEED);
    let model = Branches { a: Linear::new(IN, 2), b: Linear::new(IN, 2), c: Linear::new(IN, 2), use_b: rank == 0 };
    let config = DdpConfig { find_unused_parameters: true, bucket_cap_mb: 0.00001, ..Default::default() };
    let ddp = DistributedDataParallel::new(model, pg, config).expect("same model");
    // d sum(W x + b) / dW = sum over the batch of x = 2 for a batch of two rows of ones.
    ddp.forward(&Var::constant(Tensor::ones(&[2, IN]))).sum_all().backward();
    // The buckets of `c` (registered last, so reduced first) wait for the end of backward,
    // and buckets start in order: none starts early.
    assert_eq!(ddp.buckets_started_during_backward(), 0);
    let m = ddp.module();
    let all = |v: &Var<f32>, want: f32| v.grad().expect("a gradient").to_vec().iter().all(|&g| g == want);
    assert!(all(&m.a.weight, 2.0) && all(m.a.bias.as_ref().unwrap(), 2.0), "branch a");
    let b = 2.0 / world as f32;
    assert!(all(&m.b.weight, b) && all(m.b.bias.as_ref().unwrap(), b), "branch b: rank 0's gradient / world");
    assert!(m.c.weight.grad().is_none() && m.c.bias.as_ref().unwrap().grad().is_none(), "branch c has no gradient");
    println!("rank {rank}: OK unused parameters");
}

fn check_mismatch(pg: &Arc<ProcessGroup>) {
    let rank = pg.rank();
    let out = if rank == 1 { 5 } else { 3 };
    let err = DistributedDataParallel::new(Linear::new(IN, out), pg, DdpConfig::default())
        .err()
        .expect("different shapes must be refused");
    let msg = err.to_string();
    assert!(msg.contains("`weight` has shape [3, 8] on rank 0 but [5, 8] on rank 1"), "message: {msg}");
    println!("rank {rank}: OK refused: {msg}");
}

fn train_until(pg: &Arc<ProcessGroup>, limit: Duration, panic_at: Option<usize>) {
    let (rank, world) = (pg.rank(), pg.world_size());
    if let Ok(dir) = std::env::var("KILN_DDP_PID_DIR") {
        let path = std::path::Path::new(&dir).join(format!("rank{rank}.pid"));
        std::fs::write(&path, std::process::id().to_string()).expect("write the pid file");
    }
    let ddp = DistributedDataParallel::new(mlp(), pg, DdpConfig::default()).expect("same model");
    let mut step_ddp = optimizer(Kind::Mlp, ddp.parameters());
    let started = Instant::now();
    let mut step = 0;
    while started.elapsed() < limit {
        if panic_at == Some(step) && rank == 1 {
            panic!("deliberate panic on rank 1 at step {step}");
        }
        let (x, y) = global_batch(Kind::Mlp, step, world);
        let (xs, ys) = shard(&x, &y, rank, world);
        loss_of(&|v: &Var<f32>| ddp.forward(v), &xs, &ys, 1.0).backward();
        step_ddp();
        std::thread::sleep(Duration::from_millis(20));
        step += 1;
    }
    println!("rank {rank}: trained for {limit:?} without being stopped");
}

fn stall(pg: &Arc<ProcessGroup>) {
    if pg.rank() == 1 {
        std::thread::sleep(Duration::from_secs(60));
    }
    pg.all_reduce_sum_f32(vec![1.0]);
    println!("rank {}: the stalled collective completed", pg.rank());
}

/// Counts the epochs it sees.
struct CountEpochs(Arc<AtomicUsize>);

impl Callback for CountEpochs {
    fn on_epoch_end(&mut self, _ctx: &mut EpochContext<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Samples = VecDataset<(Tensor<f32>, usize)>;

fn samples(n: usize, seed: u64) -> Samples {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| (Tensor::uniform(&[IN], -1.0, 1.0, &mut rng), (i * 7 + i / 4) % CLASSES)).collect()
}

fn check_trainer(pg: &Arc<ProcessGroup>) {
    let (rank, world) = (pg.rank(), pg.world_size());
    // Sizes that every world size of the tests (2, 3) divides: no padding, so the averaged
    // figures are exact means over the data sets.
    let (train, val) = (Arc::new(samples(24, 1)), Arc::new(samples(12, 2)));
    let train_loader = DistributedDataLoader::new(train, DistributedSampler::new(24, world, rank).seed(5), 4);
    let val_loader =
        DistributedDataLoader::new(val.clone(), DistributedSampler::new(12, world, rank).shuffle(false), 3);
    let mut ddp = DistributedDataParallel::new(build(Kind::Mlp, None), pg, DdpConfig::default()).expect("same model");
    let mut opt = SGD::new(ddp.parameters(), SGDConfig { lr: 0.05, momentum: 0.9, ..Default::default() });
    let epochs = Arc::new(AtomicUsize::new(0));
    let mut trainer = Trainer::new(3)
        .verbosity(Verbosity::Silent)
        .callback(RankZero::new(pg, CountEpochs(epochs.clone())))
        .distributed(pg);
    let history =
        trainer.fit(&mut ddp, &mut opt, &cross_entropy(), &train_loader, Some(&val_loader)).expect("training");
    assert_eq!(history.epochs.len(), 3);

    // The same figures on every rank (time_s is each rank's own).
    let mine: Vec<u64> = history
        .epochs
        .iter()
        .flat_map(|e| e.iter().filter(|(k, _)| k.as_str() != "time_s").map(|(_, v)| v.to_bits()))
        .collect();
    for (r, theirs) in pg.all_gather_varlen_u64(&mine).iter().enumerate() {
        assert!(theirs == &mine, "rank {r}'s history differs from rank {rank}'s: {history:?}");
    }
    // The validation loss is the loss on the whole validation set.
    let items = val.items();
    let x = Tensor::stack(&items.iter().map(|(x, _)| x.clone()).collect::<Vec<_>>(), 0);
    let y: Vec<usize> = items.iter().map(|(_, y)| *y).collect();
    let whole = kiln_autograd::no_grad(|| loss_of(&|v: &Var<f32>| ddp.module().forward(v), &x, &y, 1.0).item()) as f64;
    let logged = history.epochs[2]["val_loss"];
    assert!((logged - whole).abs() <= 1e-5 * whole.abs(), "val_loss {logged} vs whole validation set {whole}");
    let seen = epochs.load(Ordering::SeqCst);
    assert_eq!(seen, if rank == 0 { 3 } else { 0 }, "RankZero callback on rank {rank}");
    println!("rank {rank}: OK trainer: identical histories, val_loss {logged:.6} = whole set {whole:.6}");
}
