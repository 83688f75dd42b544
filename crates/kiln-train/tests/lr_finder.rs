//! `Trainer::lr_find`: the sweep, the divergence stop, the suggestion, the plot, and the model
//! and optimiser restored bit for bit.

mod common;

use kiln_data::Batch;
use kiln_nn::{sequential, BatchNorm1d, CrossEntropyLoss, Linear, Module, ReLU, Sequential};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_train::{LrFinderConfig, TrainError, Trainer, Verbosity};

fn bn_mlp(seed: u64) -> Sequential<f32> {
    let _g = common::rng_lock();
    kiln_nn::init::manual_seed(seed);
    sequential![Linear::new(2, 16), BatchNorm1d::new(16), ReLU, Linear::new(16, 2)]
}

#[test]
fn sweep_restores_model_and_optimizer_bit_for_bit() {
    let data = common::blob_batches(64, 7, 16);
    let mut model = bn_mlp(3);
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    // a little training first, so that Adam has moments and step counts to restore
    let mut trainer = Trainer::new(1).verbosity(Verbosity::Silent).clip_grad_norm(5.0);
    trainer.fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, None).unwrap();
    model.train();
    let (weights, state) = (model.state_dict(), opt.state_dict());
    assert!(!state.state.is_empty());

    let config = LrFinderConfig { start_lr: 1e-5, end_lr: 100.0, num_iter: 60, ..Default::default() };
    let found = trainer.lr_find(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, &config).unwrap();

    assert!(common::bit_equal(&model.state_dict(), &weights), "parameters or buffers changed");
    assert_eq!(opt.state_dict(), state, "optimizer state changed");
    assert_eq!(opt.lr(), 1e-3);
    assert!(model.is_training());
    assert!(model.parameters().iter().all(|p| p.grad().is_none()));

    // the sweep: exponential rates, one smoothed loss per step, stopped when the loss blew up
    let n = found.lrs.len();
    assert!(n > 20 && n <= 60, "{n} steps");
    assert_eq!((found.losses.len(), found.raw_losses.len()), (n, n));
    for (i, lr) in found.lrs.iter().enumerate() {
        assert!((lr / config.lr_at(i) - 1.0).abs() < 1e-12);
    }
    assert!(found.diverged, "a rate of 100 should make Adam diverge: {:?}", found.raw_losses);
    // the first smoothed loss is the first loss (debiased average)
    assert!((found.losses[0] - found.raw_losses[0]).abs() < 1e-9);
    let lr = found.suggestion().expect("a suggestion");
    assert!(lr > config.start_lr && lr < found.lrs[n - 1], "suggested {lr}");
    let i = found.suggestion_index.unwrap();
    assert!(i >= config.skip_begin && i < n - config.skip_end);

    let path = std::env::temp_dir().join(format!("kiln-lr-find-{}.png", std::process::id()));
    found.plot(&path).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn short_data_is_read_again_and_eval_mode_is_restored() {
    let data = common::blob_batches(32, 1, 16); // two batches
    let mut model = common::mlp(4);
    model.eval();
    let mut opt = Adam::new(model.parameters(), AdamConfig::default());
    let config =
        LrFinderConfig { start_lr: 1e-4, end_lr: 1e-2, num_iter: 9, diverge_th: f64::INFINITY, ..Default::default() };
    let found = Trainer::new(1).lr_find(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, &config).unwrap();
    assert_eq!(found.lrs.len(), 9);
    assert!(!found.diverged);
    assert!(!model.is_training());
    assert!(opt.state_dict().state.is_empty(), "the optimizer had no state before the sweep");
}

#[test]
fn empty_data_is_an_error_and_changes_nothing() {
    let mut model = common::mlp(5);
    let before = model.state_dict();
    let mut opt = Adam::new(model.parameters(), AdamConfig::default());
    let empty: Vec<Batch> = Vec::new();
    let err = Trainer::new(1)
        .lr_find(&mut model, &mut opt, &CrossEntropyLoss::default(), &empty, &LrFinderConfig::default())
        .unwrap_err();
    assert!(matches!(err, TrainError::EmptyData { what: "training data", .. }), "{err}");
    assert!(common::bit_equal(&model.state_dict(), &before));
}
