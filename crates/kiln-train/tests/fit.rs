//! `fit`, `evaluate` and `predict` on tiny problems with kiln-nn's loss modules.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{blob_batches, blobs, linear, max_abs_diff, mlp};
use kiln_data::Targets;
use kiln_metrics::{Accuracy, MeanSquaredError};
use kiln_nn::{BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss, Module};
use kiln_optim::{SGDConfig, SGD};
use kiln_tensor::Tensor;
use kiln_train::callbacks::LambdaCallback;
use kiln_train::{predict, tensor_batches, Trainer, Verbosity};

fn sgd(model: &dyn Module<f32>, lr: f64, momentum: f64) -> SGD<f32> {
    SGD::new(model.parameters(), SGDConfig { lr, momentum, ..Default::default() })
}

#[test]
fn fit_classifies_blobs_with_cross_entropy() {
    let train = blob_batches(64, 1, 16);
    let val = blob_batches(32, 2, 16);
    let mut model = mlp(0);
    let mut opt = sgd(&model, 0.1, 0.9);
    let history = Trainer::new(15)
        .verbosity(Verbosity::Silent)
        .metric("accuracy", || Accuracy::multiclass(2))
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &train, Some(&val))
        .unwrap();
    assert_eq!(history.len(), 15);
    assert_eq!(history.keys(), ["accuracy", "loss", "lr", "time_s", "val_accuracy", "val_loss"]);
    let loss = history.get("loss");
    assert!(loss[14] < loss[0] / 4.0, "loss did not fall: {loss:?}");
    assert!(history.last().unwrap()["val_accuracy"] >= 0.95, "{:?}", history.last());
}

#[test]
fn fit_regresses_with_mse_and_l1() {
    // y = 3x - 2
    let x = Tensor::from_vec((0..16).map(|i| i as f32 / 8.0 - 1.0).collect(), &[16, 1]);
    let y = Tensor::from_vec(x.to_vec().iter().map(|v| 3.0 * v - 2.0).collect(), &[16, 1]);
    let data = tensor_batches(&x, &Targets::Values(y), 8);
    for (name, loss) in [("mse", &MSELoss::new() as &dyn kiln_train::TrainLoss), ("l1", &L1Loss::new())] {
        let mut model = linear(1, 1, 3);
        let mut opt = sgd(&model, 0.05, 0.9);
        let h = Trainer::new(150)
            .verbosity(Verbosity::Silent)
            .metric("mse", MeanSquaredError::new)
            .fit(&mut model, &mut opt, loss, &data, None)
            .unwrap();
        let w = model.weight.value().to_vec()[0];
        let b = model.bias.as_ref().unwrap().value().to_vec()[0];
        assert!((w - 3.0).abs() < 0.05 && (b + 2.0).abs() < 0.05, "{name}: w {w}, b {b}");
        assert!(h.last().unwrap()["mse"] < 1e-2, "{name}: {:?}", h.last());
    }
}

#[test]
fn fit_binary_with_bce_with_logits_and_flat_targets() {
    let (x, labels) = blobs(32, 5);
    // [N] targets for a [N, 1] output: the trainer reshapes them
    let t = Tensor::from_vec(labels.iter().map(|&c| c as f32).collect(), &[32]);
    let data = tensor_batches(&x, &Targets::Values(t), 8);
    let mut model = linear(2, 1, 1);
    let mut opt = sgd(&model, 0.5, 0.0);
    let h = Trainer::new(20)
        .verbosity(Verbosity::Silent)
        .fit(&mut model, &mut opt, &BCEWithLogitsLoss::default(), &data, None)
        .unwrap();
    assert!(h.last().unwrap()["loss"] < 0.1, "{:?}", h.get("loss"));
}

#[test]
fn gradient_accumulation_over_two_batches_of_4_equals_one_batch_of_8() {
    let x = Tensor::from_vec((0..16).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect(), &[8, 2]);
    let y = Tensor::from_vec((0..8).map(|i| (i as f32 * 0.37).sin()).collect(), &[8, 1]);
    let small = tensor_batches(&x, &Targets::Values(y.clone()), 4);
    let big = tensor_batches(&x, &Targets::Values(y), 8);
    assert_eq!((small.len(), big.len()), (2, 1));

    let mut a = linear(2, 1, 11);
    let mut b = linear(2, 1, 12);
    b.load_state_dict(&a.state_dict(), true).unwrap();
    let mut opt_a = sgd(&a, 0.1, 0.9);
    let mut opt_b = sgd(&b, 0.1, 0.9);
    let steps = Rc::new(RefCell::new(0));
    let counter = Rc::clone(&steps);
    let before = a.state_dict();
    // 3 epochs: 3 optimiser steps each way (momentum makes later steps depend on earlier ones)
    Trainer::new(3)
        .verbosity(Verbosity::Silent)
        .gradient_accumulation(2)
        .callback(LambdaCallback::new().on_batch_end(move |_| *counter.borrow_mut() += 1))
        .fit(&mut a, &mut opt_a, &MSELoss::new(), &small, None)
        .unwrap();
    Trainer::new(3).verbosity(Verbosity::Silent).fit(&mut b, &mut opt_b, &MSELoss::new(), &big, None).unwrap();
    assert_eq!(*steps.borrow(), 6, "on_batch_end runs per batch");
    assert!(max_abs_diff(&before, &a.state_dict()) > 1e-3, "the weights moved");
    let d = max_abs_diff(&a.state_dict(), &b.state_dict());
    assert!(d < 1e-6, "accumulated and big-batch weights differ by {d}");
}

#[test]
fn evaluate_and_predict_shapes() {
    let data = blob_batches(10, 3, 4);
    let mut model = mlp(2);
    let trainer = Trainer::new(1).verbosity(Verbosity::Silent).metric("accuracy", || Accuracy::multiclass(2));
    let logs = trainer.evaluate(&mut model, &CrossEntropyLoss::default(), &data).unwrap();
    assert_eq!(logs.keys().collect::<Vec<_>>(), ["accuracy", "loss"]);
    assert!(logs["loss"].is_finite() && (0.0..=1.0).contains(&logs["accuracy"]));
    let out = predict(&mut model, &data);
    assert_eq!(out.shape(), &[10, 2]);
    // predict is the model applied to every row, in order
    let (x, _) = blobs(10, 3);
    let direct = kiln_autograd::no_grad(|| kiln_nn::Forward::forward(&model, &kiln_autograd::Var::constant(x)).value());
    assert_eq!(out.to_vec(), direct.to_vec());
}

#[test]
fn initial_epoch_runs_only_the_remaining_epochs() {
    let data = blob_batches(16, 1, 8);
    let mut model = mlp(0);
    let mut opt = sgd(&model, 0.1, 0.0);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&seen);
    let h = Trainer::new(5)
        .initial_epoch(3)
        .verbosity(Verbosity::Silent)
        .callback(LambdaCallback::new().on_epoch_end(move |ctx| sink.borrow_mut().push(ctx.epoch)))
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, None)
        .unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(*seen.borrow(), vec![3, 4]);
}
