//! The built-in callbacks, end to end through `fit` and driven directly with crafted logs.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{bit_equal, blob_batches, flipped_blob_batches, mlp};
use kiln_nn::{CrossEntropyLoss, Module, StateDict};
use kiln_optim::{LrGroups, SGDConfig, SGD};
use kiln_train::callbacks::{CsvLogger, EarlyStopping, LambdaCallback, Mode, ModelCheckpoint, ReduceLROnPlateau};
use kiln_train::checkpoint::load_checkpoint;
use kiln_train::{Callback, EpochContext, EpochLogs, History, Trainer, Verbosity};

fn sgd(model: &dyn Module<f32>, lr: f64) -> SGD<f32> {
    SGD::new(model.parameters(), SGDConfig { lr, momentum: 0.9, ..Default::default() })
}

/// Fits the 2-8-2 MLP on blobs, validating on the same inputs with flipped labels (so
/// `val_loss` rises as the model learns), recording every epoch's weights.
fn overfit_run(epochs: usize, callback: impl Callback + 'static) -> (History, Vec<StateDict<f32>>, StateDict<f32>) {
    let train = blob_batches(32, 1, 8);
    let val = flipped_blob_batches(32, 1, 8);
    let mut model = mlp(0);
    let mut opt = sgd(&model, 0.1);
    let weights = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&weights);
    let history = Trainer::new(epochs)
        .verbosity(Verbosity::Silent)
        .callback(LambdaCallback::new().on_epoch_end(move |ctx| sink.borrow_mut().push(ctx.model.state_dict())))
        .callback(callback)
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &train, Some(&val))
        .unwrap();
    let w = weights.borrow().clone();
    (history, w, model.state_dict())
}

fn argmin(v: &[f64]) -> usize {
    (0..v.len()).min_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn early_stopping_stops_and_restores_the_best_weights() {
    let (history, weights, final_state) =
        overfit_run(30, EarlyStopping::new("val_loss").patience(2).restore_best_weights(true));
    let val = history.get("val_loss");
    assert!(history.len() < 30, "did not stop: {val:?}");
    let best = argmin(&val);
    // stopped `patience` epochs after the best one
    assert_eq!(history.len(), best + 2 + 1, "{val:?}");
    assert!(bit_equal(&final_state, &weights[best]), "the final weights are not those of epoch {best}");
    assert!(!bit_equal(&final_state, weights.last().unwrap()));
}

#[test]
fn early_stopping_without_restore_keeps_the_last_weights() {
    let (history, weights, final_state) = overfit_run(30, EarlyStopping::new("val_loss").patience(1));
    assert!(history.len() < 30);
    assert!(bit_equal(&final_state, weights.last().unwrap()));
}

/// Drives a callback through epochs whose only figures are `monitor` = each of `values`, with
/// an SGD optimiser at lr 1 and a one-parameter model whose weight is set to the epoch number
/// before each epoch's end. Returns (stopped after epoch, lr after each epoch, final weight).
fn drive(cb: &mut dyn Callback, monitor: &str, values: &[f64]) -> (Option<usize>, Vec<f64>, f32) {
    let mut model = common::linear(1, 1, 0);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 1.0, ..Default::default() });
    let mut history = History::default();
    let mut lrs = Vec::new();
    let mut stopped = None;
    cb.on_train_begin(&model);
    for (epoch, &v) in values.iter().enumerate() {
        model.weight.set_value(kiln_tensor::Tensor::from_vec(vec![epoch as f32], &[1, 1]));
        let logs: EpochLogs = [(monitor.to_string(), v)].into_iter().collect();
        history.epochs.push(logs.clone());
        let mut ctx = EpochContext {
            epoch,
            logs: &logs,
            history: &history,
            model: &model,
            optimizer: &mut opt,
            stop: false,
            training_state: None,
        };
        cb.on_epoch_end(&mut ctx);
        let stop = ctx.stop;
        lrs.push(opt.group_lr(0));
        if stop {
            stopped = Some(epoch);
            break;
        }
    }
    cb.on_train_end(&mut model, &history);
    (stopped, lrs, model.weight.value().to_vec()[0])
}

#[test]
fn early_stopping_keras_semantics() {
    // patience 2: epochs 2 and 3 fail to beat 0.8, so training stops after epoch 3
    let mut es = EarlyStopping::new("val_loss").patience(2).restore_best_weights(true);
    let (stopped, _, w) = drive(&mut es, "val_loss", &[1.0, 0.8, 0.9, 0.95, 0.5]);
    assert_eq!(stopped, Some(3));
    assert_eq!(w, 1.0, "restored the weights of epoch 1");

    // min_delta: 0.79 does not beat 0.8 by more than 0.05
    let mut es = EarlyStopping::new("val_loss").patience(1).min_delta(0.05);
    assert_eq!(drive(&mut es, "val_loss", &[1.0, 0.8, 0.79, 0.7]).0, Some(2));

    // max mode inferred from the name
    let mut es = EarlyStopping::new("val_accuracy").patience(1).restore_best_weights(true);
    let (stopped, _, w) = drive(&mut es, "val_accuracy", &[0.5, 0.9, 0.8, 0.95]);
    assert_eq!((stopped, w), (Some(2), 1.0));

    // restore also when training runs to its end without stopping
    let mut es = EarlyStopping::new("val_loss").patience(10).restore_best_weights(true);
    let (stopped, _, w) = drive(&mut es, "val_loss", &[1.0, 0.3, 0.5, 0.6]);
    assert_eq!((stopped, w), (None, 1.0));

    // baseline: never reached, so the count is never reset although the figure improves
    // (epoch 0 counts 1, epoch 1 counts 2 = patience: stop, as Keras does)
    let mut es = EarlyStopping::new("loss").mode(Mode::Min).patience(2).baseline(0.1);
    assert_eq!(drive(&mut es, "loss", &[1.0, 0.9, 0.8, 0.7]).0, Some(1));

    // a missing figure is skipped
    let mut es = EarlyStopping::new("val_loss").patience(0);
    assert_eq!(drive(&mut es, "loss", &[1.0, 2.0, 3.0]).0, None);
}

#[test]
fn reduce_lr_on_plateau_cuts_the_learning_rate() {
    let mut cb = ReduceLROnPlateau::new("val_loss").factor(0.5).patience(1);
    let (_, lrs, _) = drive(&mut cb, "val_loss", &[1.0, 0.9, 0.95, 0.97, 0.99, 0.5, 0.6]);
    // bad epochs: 2 (count 1), 3 (count 2 > 1: cut), 4 (1), 5 improves, 6 (1)
    assert_eq!(lrs, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]);

    let mut cb = ReduceLROnPlateau::new("val_accuracy").factor(0.1).patience(0).min_lr(0.05);
    let (_, lrs, _) = drive(&mut cb, "val_accuracy", &[0.5, 0.4, 0.3]);
    assert_eq!(lrs, vec![1.0, 0.1, 0.05]);
}

#[test]
fn reduce_lr_on_plateau_through_fit_shows_in_the_lr_log() {
    let (history, _, _) = overfit_run(4, ReduceLROnPlateau::new("val_loss").factor(0.5).patience(0));
    let val = history.get("val_loss");
    assert!(val.windows(2).all(|w| w[1] > w[0]), "val_loss should rise: {val:?}");
    assert_eq!(history.get("lr"), vec![0.1, 0.1, 0.05, 0.025]);
}

#[test]
fn model_checkpoint_writes_the_best_only() {
    let dir = tempfile::tempdir().unwrap();
    let best_path = dir.path().join("best.kiln");
    let per_epoch = dir.path().join("ckpts/ep{epoch:02}-{val_loss:.3}.kiln");
    let (history, weights, _) = overfit_run(
        6,
        LambdaCallbacks(vec![
            Box::new(ModelCheckpoint::new(&best_path).save_best_only(true)),
            Box::new(ModelCheckpoint::new(&per_epoch).monitor("val_loss").save_best_only(true).save_weights_only(true)),
        ]),
    );
    let val = history.get("val_loss");
    let best = argmin(&val);
    let ckpt = load_checkpoint(&best_path).unwrap();
    assert_eq!(ckpt.epoch, best + 1);
    assert!(bit_equal(&ckpt.model, &weights[best]));
    assert_eq!(ckpt.history.len(), best + 1);
    assert!(ckpt.optimizer.is_some(), "full training state by default");

    // one file per improvement, named from the template
    let mut improved = Vec::new();
    let mut running = f64::INFINITY;
    for (e, &v) in val.iter().enumerate() {
        if v < running {
            running = v;
            improved.push(format!("ep{:02}-{v:.3}.kiln", e + 1));
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("ckpts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, improved);
    let first = load_checkpoint(dir.path().join("ckpts").join(&improved[0])).unwrap();
    assert!(first.optimizer.is_none() && first.scheduler.is_none(), "weights only");
}

#[test]
fn model_checkpoint_every_epoch_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.kiln");
    let (_, weights, final_state) = overfit_run(3, ModelCheckpoint::new(&path));
    let ckpt = load_checkpoint(&path).unwrap();
    assert_eq!(ckpt.epoch, 3);
    assert!(bit_equal(&ckpt.model, &weights[2]) && bit_equal(&ckpt.model, &final_state));
}

#[test]
fn csv_logger_writes_one_row_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.csv");
    let (history, _, _) = overfit_run(3, CsvLogger::new(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "epoch,loss,lr,time_s,val_loss");
    assert_eq!(lines.len(), 4);
    for (e, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], e.to_string());
        // shortest round-trip form: the numbers read back exactly
        assert_eq!(f[1].parse::<f64>().unwrap(), history.epochs[e]["loss"]);
        assert_eq!(f[2].parse::<f64>().unwrap(), 0.1);
        assert_eq!(f[4].parse::<f64>().unwrap(), history.epochs[e]["val_loss"]);
    }

    // append: the old rows stay, no second header
    overfit_run(2, CsvLogger::new(&path).append(true));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert_eq!(text.lines().filter(|l| l.starts_with("epoch")).count(), 1);
    // without append the file starts over
    overfit_run(1, CsvLogger::new(&path).separator(';'));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next().unwrap(), "epoch;loss;lr;time_s;val_loss");
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn lambda_callback_runs_every_hook_and_can_stop() {
    #[derive(Default, Debug, PartialEq)]
    struct Counts {
        begin: usize,
        batches: usize,
        epochs: usize,
        end: usize,
        end_history_len: usize,
    }
    let counts = Rc::new(RefCell::new(Counts::default()));
    let (c1, c2, c3, c4) = (Rc::clone(&counts), Rc::clone(&counts), Rc::clone(&counts), Rc::clone(&counts));
    let cb = LambdaCallback::new()
        .on_train_begin(move |_| c1.borrow_mut().begin += 1)
        .on_batch_end(move |ctx| {
            assert!(ctx.loss.is_finite());
            c2.borrow_mut().batches += 1
        })
        .on_epoch_end(move |ctx| {
            c3.borrow_mut().epochs += 1;
            ctx.stop = ctx.epoch == 1;
        })
        .on_train_end(move |_, h| {
            let mut c = c4.borrow_mut();
            c.end += 1;
            c.end_history_len = h.len();
        });
    let (history, _, _) = overfit_run(10, cb);
    assert_eq!(history.len(), 2);
    // 32 samples in batches of 8: 4 batches per epoch
    assert_eq!(*counts.borrow(), Counts { begin: 1, batches: 8, epochs: 2, end: 1, end_history_len: 2 });
}

/// Several callbacks as one (to pass two checkpoints to `overfit_run`).
struct LambdaCallbacks(Vec<Box<dyn Callback>>);

impl Callback for LambdaCallbacks {
    fn on_train_begin(&mut self, model: &dyn Module<f32>) {
        self.0.iter_mut().for_each(|c| c.on_train_begin(model));
    }
    fn wants_training_state(&self) -> bool {
        self.0.iter().any(|c| c.wants_training_state())
    }
    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        self.0.iter_mut().for_each(|c| c.on_epoch_end(ctx));
    }
    fn on_train_end(&mut self, model: &mut dyn Module<f32>, history: &History) {
        self.0.iter_mut().for_each(|c| c.on_train_end(model, history));
    }
}
