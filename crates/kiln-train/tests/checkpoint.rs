//! Checkpoint files: round trip, typed errors for bad files, and a resumed run that ends
//! bit for bit where an uninterrupted one does.

mod common;

use std::path::Path;

use common::{bit_equal, blob_batches, linear, mlp, rng_lock};
use kiln_nn::{CrossEntropyLoss, Linear, Module};
use kiln_optim::lr_scheduler::{LRScheduler, StepLR};
use kiln_optim::{Adam, AdamConfig, OptimError, Optimizer, SGDConfig, SGD};
use kiln_tensor::Rng;
use kiln_train::callbacks::ModelCheckpoint;
use kiln_train::checkpoint::{load_checkpoint, save_checkpoint, Checkpoint, FORMAT_VERSION};
use kiln_train::{History, SchedulerInterval, TrainError, Trainer, Verbosity};

fn sgd(model: &dyn Module<f32>) -> SGD<f32> {
    SGD::new(model.parameters(), SGDConfig { lr: 0.2, momentum: 0.9, ..Default::default() })
}

/// A run's trainer: 6 epochs over shuffled-looking but fixed batches, StepLR every 2 epochs.
fn trainer(opt: &mut SGD<f32>, scheduler: Option<StepLR>) -> Trainer {
    let sched = scheduler.unwrap_or_else(|| StepLR::new(opt, 2, 0.5));
    Trainer::new(6).verbosity(Verbosity::Silent).scheduler(sched, SchedulerInterval::Epoch)
}

fn without_time(h: &History) -> Vec<Vec<(String, u64)>> {
    h.epochs
        .iter()
        .map(|e| e.iter().filter(|(k, _)| *k != "time_s").map(|(k, v)| (k.clone(), v.to_bits())).collect())
        .collect()
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let data = blob_batches(48, 4, 8);
    let val = blob_batches(16, 5, 8);
    let loss = CrossEntropyLoss::default();

    // A: six epochs straight
    let mut a = mlp(0);
    let mut opt_a = sgd(&a);
    let hist_a = trainer(&mut opt_a, None).fit(&mut a, &mut opt_a, &loss, &data, Some(&val)).unwrap();

    // B: the same run, checkpointing every epoch
    let dir = tempfile::tempdir().unwrap();
    let mut b = mlp(0);
    let mut opt_b = sgd(&b);
    let hist_b = trainer(&mut opt_b, None)
        .callback(ModelCheckpoint::new(dir.path().join("ep{epoch}.kiln")))
        .fit(&mut b, &mut opt_b, &loss, &data, Some(&val))
        .unwrap();
    assert!(bit_equal(&a.state_dict(), &b.state_dict()), "checkpointing changed the run");
    assert_eq!(without_time(&hist_a), without_time(&hist_b));

    // C: a fresh process would rebuild everything (other initial weights here), restore the
    // checkpoint of epoch 3 and run epochs 3..6
    let ckpt = load_checkpoint(dir.path().join("ep3.kiln")).unwrap();
    assert_eq!(ckpt.epoch, 3);
    assert_eq!(ckpt.history.len(), 3);
    let mut c = mlp(123);
    assert!(!bit_equal(&c.state_dict(), &ckpt.model));
    let mut opt_c = sgd(&c);
    let mut sched_c = StepLR::new(&mut opt_c, 2, 0.5);
    {
        let _guard = rng_lock(); // restore() sets the process-wide generator other tests seed
        ckpt.restore(&mut c, &mut opt_c).unwrap();
    }
    ckpt.restore_scheduler(&mut sched_c).unwrap();
    assert_eq!(opt_c.lr(), hist_a.epochs[3]["lr"]);
    let hist_c = trainer(&mut opt_c, Some(sched_c))
        .initial_epoch(ckpt.epoch)
        .fit(&mut c, &mut opt_c, &loss, &data, Some(&val))
        .unwrap();
    assert!(bit_equal(&a.state_dict(), &c.state_dict()), "the resumed run's weights differ");
    assert_eq!(without_time(&hist_c), without_time(&hist_a)[3..].to_vec());

    // control: the same resume without the optimiser state (fresh momentum, lr) ends elsewhere
    let mut d = mlp(123);
    let mut opt_d = sgd(&d);
    ckpt.restore_model(&mut d).unwrap();
    trainer(&mut opt_d, None).initial_epoch(3).fit(&mut d, &mut opt_d, &loss, &data, Some(&val)).unwrap();
    assert!(!bit_equal(&a.state_dict(), &d.state_dict()));
}

fn full_checkpoint() -> (Checkpoint, Linear) {
    let model = linear(3, 2, 7);
    let mut opt = sgd(&model);
    let mut sched = StepLR::new(&mut opt, 1, 0.5);
    for _ in 0..2 {
        let y = kiln_nn::Forward::forward(&model, &kiln_autograd::Var::constant(kiln_tensor::Tensor::ones(&[4, 3])));
        y.sum_all().backward();
        opt.step();
        opt.zero_grad();
        sched.step(&mut opt);
    }
    let mut h = History::default();
    h.epochs.push([("loss".to_string(), 0.25), ("val_loss".to_string(), f64::NAN)].into_iter().collect());
    let ckpt = Checkpoint::new(2, &model).with_optimizer(&opt).with_scheduler(&sched).with_history(h);
    (ckpt, model)
}

#[test]
fn round_trip_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.kiln");
    let (ckpt, _) = full_checkpoint();
    save_checkpoint(&path, &ckpt).unwrap();
    let back = load_checkpoint(&path).unwrap();
    assert_eq!(back.epoch, 2);
    assert_eq!(back.model, ckpt.model);
    assert_eq!(back.optimizer, ckpt.optimizer);
    assert_eq!(back.scheduler, ckpt.scheduler);
    assert_eq!(back.rng, ckpt.rng);
    assert!(back.history.epochs[0]["val_loss"].is_nan());
    assert_eq!(back.history.epochs[0]["loss"], 0.25);
    // the optimiser state loads into a fresh optimiser and matches the saved one
    let mut model = linear(3, 2, 99);
    let mut opt = sgd(&model);
    {
        let _guard = rng_lock();
        back.restore(&mut model, &mut opt).unwrap();
    }
    let state = kiln_train::checkpoint::OptimizerState::capture(&opt);
    assert_eq!(&state, back.optimizer.as_ref().unwrap());
    assert_eq!(opt.lr(), 0.05);
}

#[test]
fn restore_puts_back_the_process_generator() {
    let _guard = rng_lock();
    kiln_nn::init::manual_seed(5);
    let model: Linear = Linear::new(2, 2);
    let after_init: Rng = kiln_nn::init::with_rng(|r| r.clone());
    let ckpt = Checkpoint::new(0, &model);
    assert_eq!(ckpt.rng.as_ref(), Some(&after_init));
    let next = kiln_nn::init::with_rng(|r| r.next_u64());
    kiln_nn::init::manual_seed(6);
    ckpt.restore_rng();
    assert_eq!(kiln_nn::init::with_rng(|r| r.next_u64()), next);
}

#[test]
fn restoring_into_the_wrong_optimizer_or_model_changes_nothing() {
    let (ckpt, _) = full_checkpoint();
    let mut model = linear(3, 2, 1);
    let before = model.state_dict();
    let mut adam = Adam::new(model.parameters(), AdamConfig::default());
    let err = ckpt.restore(&mut model, &mut adam).unwrap_err();
    assert!(
        matches!(&err, TrainError::Optimizer(OptimError::OptimizerMismatch { expected, found }) if expected == "Adam" && found == "SGD"),
        "{err}"
    );
    assert_eq!(model.state_dict(), before, "the model was half-loaded");

    let mut other = linear(4, 2, 2);
    let before = other.state_dict();
    let mut opt = sgd(&other);
    let err = ckpt.restore(&mut other, &mut opt).unwrap_err();
    assert!(matches!(err, TrainError::Model(_)), "{err}");
    assert!(err.to_string().contains("weight"), "{err}");
    assert_eq!(other.state_dict(), before);

    let weights_only = Checkpoint::new(1, &model);
    assert!(matches!(weights_only.restore_optimizer(&mut opt), Err(TrainError::Missing { .. })));
}

fn saved_bytes(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("c.kiln");
    save_checkpoint(&path, &full_checkpoint().0).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn load_err(path: &Path, bytes: &[u8]) -> TrainError {
    std::fs::write(path, bytes).unwrap();
    let e = load_checkpoint(path).unwrap_err();
    assert!(e.to_string().contains(&*path.to_string_lossy()), "the error names the file: {e}");
    e
}

#[test]
fn bad_files_give_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, good) = saved_bytes(dir.path());
    assert_eq!(&good[..8], b"KILNCKPT");
    assert_eq!(u32::from_le_bytes(good[8..12].try_into().unwrap()), FORMAT_VERSION);

    let mut b = good.clone();
    b[..8].copy_from_slice(b"PK\x03\x04junk");
    assert!(matches!(load_err(&path, &b), TrainError::BadMagic { found, .. } if found == b"PK\x03\x04junk"));

    assert!(matches!(load_err(&path, b""), TrainError::Truncated { expected: 24, found: 0, .. }));
    assert!(matches!(load_err(&path, &good[..5]), TrainError::Truncated { found: 5, .. }));

    let mut b = good.clone();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = load_err(&path, &b);
    assert!(matches!(e, TrainError::UnsupportedVersion { found: 7, supported: 1, .. }));
    assert!(e.to_string().contains("newer kiln"), "{e}");

    let e = load_err(&path, &good[..good.len() - 10]);
    assert!(
        matches!(e, TrainError::Truncated { expected, found, .. } if expected == good.len() as u64 && found == good.len() as u64 - 10),
        "{e}"
    );

    // a forged length far beyond the file: refused without allocating it
    let mut b = good.clone();
    b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(load_err(&path, &b), TrainError::Truncated { .. }));

    let mut b = good.clone();
    let mid = 24 + (good.len() - 24) / 2;
    b[mid] ^= 0x40;
    let e = load_err(&path, &b);
    assert!(matches!(e, TrainError::Corrupt { offset: 24, .. }), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");

    let mut b = good.clone();
    b.extend_from_slice(b"extra");
    assert!(matches!(load_err(&path, &b), TrainError::Corrupt { .. }));

    let e = load_checkpoint(dir.path().join("missing.kiln")).unwrap_err();
    assert!(matches!(e, TrainError::Io { .. }) && e.to_string().contains("missing.kiln"), "{e}");
}

#[test]
fn a_payload_that_does_not_decode_is_corrupt() {
    // a well-formed header and checksum around garbage
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.kiln");
    let payload = vec![0xFFu8; 40];
    let mut b = b"KILNCKPT".to_vec();
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    b.extend_from_slice(&payload);
    let e = load_err(&path, &b);
    assert!(matches!(e, TrainError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("does not decode"), "{e}");
}
