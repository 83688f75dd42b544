//! Training that diverges never costs a good model: the trainer stops at the first non-finite
//! loss with an error naming the epoch and batch, `ModelCheckpoint` never writes non-finite
//! weights, `EarlyStopping` never remembers them, and empty data is an error, not a perfect 0.

mod common;

use common::{blob_batches, mlp};
use kiln_data::Batch;
use kiln_nn::{CrossEntropyLoss, Module};
use kiln_optim::{LrGroups, SGDConfig, SGD};
use kiln_train::callbacks::{EarlyStopping, LambdaCallback, ModelCheckpoint};
use kiln_train::{TrainError, Trainer, Verbosity};

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-train-diverge-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn finite(model: &dyn Module<f32>) -> bool {
    model.parameters().iter().all(|p| p.value().to_vec().iter().all(|v| v.is_finite()))
}

#[test]
fn a_huge_learning_rate_stops_training_and_keeps_the_good_checkpoint() {
    let dir = temp_dir("ckpt");
    let path = dir.join("model.kiln");
    let data = blob_batches(64, 3, 8);
    let mut model = mlp(1);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.1, momentum: 0.9, ..Default::default() });
    Trainer::new(2)
        .verbosity(Verbosity::Silent)
        .callback(ModelCheckpoint::new(&path))
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, Some(&data))
        .unwrap();
    let good = std::fs::read(&path).unwrap();

    // The same run goes on at lr = 1e20: the default trainer stops with a typed error.
    opt.set_group_lr(0, 1e20);
    let err = Trainer::new(6)
        .initial_epoch(2)
        .verbosity(Verbosity::Silent)
        .callback(ModelCheckpoint::new(&path))
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, Some(&data))
        .unwrap_err();
    let TrainError::NonFiniteLoss { epoch, batch, loss } = err else { panic!("expected NonFiniteLoss, got {err:?}") };
    assert_eq!(epoch, 3, "the first epoch of this run");
    assert!(batch >= 2 && !loss.is_finite(), "batch {batch}, loss {loss}");
    assert_eq!(
        err.to_string(),
        format!("training diverged: the loss is {loss} at epoch 3, batch {batch} (1-based); training stopped before this batch's update. Lower the learning rate, clip gradients, or check the data for NaN/infinite values")
    );
    assert_eq!(std::fs::read(&path).unwrap(), good, "the good checkpoint was overwritten");

    // With the check turned off, training runs on through NaN, and the checkpoint still holds.
    let history = Trainer::new(6)
        .initial_epoch(2)
        .terminate_on_nan(false)
        .verbosity(Verbosity::Silent)
        .callback(ModelCheckpoint::new(&path))
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, Some(&data))
        .unwrap();
    assert_eq!(history.len(), 4);
    assert!(!finite(&model), "lr = 1e20 was meant to diverge");
    assert_eq!(std::fs::read(&path).unwrap(), good, "ModelCheckpoint saved non-finite weights");
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 1, "litter in the folder: {entries:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn early_stopping_never_restores_diverged_weights() {
    let data = blob_batches(64, 4, 8);
    for terminate in [true, false] {
        let mut model = mlp(2);
        let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.1, ..Default::default() });
        let best = std::rc::Rc::new(std::cell::RefCell::new(None));
        let sink = std::rc::Rc::clone(&best);
        // Two good epochs, then the learning rate explodes.
        let explode = LambdaCallback::new().on_epoch_end(move |ctx| {
            if ctx.epoch == 1 {
                *sink.borrow_mut() = Some(ctx.model.state_dict());
                ctx.optimizer.set_group_lr(0, 1e20);
            }
        });
        let result = Trainer::new(6)
            .terminate_on_nan(terminate)
            .verbosity(Verbosity::Silent)
            .callback(explode)
            .callback(EarlyStopping::new("loss").patience(10).restore_best_weights(true))
            .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, None);
        assert_eq!(result.is_err(), terminate);
        assert!(finite(&model), "terminate_on_nan({terminate}): the restored weights are not finite");
        assert_eq!(model.state_dict(), best.borrow().clone().unwrap(), "not the best (last finite) epoch");
    }
}

#[test]
fn empty_data_is_an_error_not_a_perfect_score() {
    let data = blob_batches(16, 5, 8);
    let empty: Vec<Batch> = Vec::new();
    let mut model = mlp(3);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.1, ..Default::default() });
    let trainer = || Trainer::new(2).verbosity(Verbosity::Silent);
    let err = trainer().fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &empty, None).unwrap_err();
    assert_eq!(err.to_string(), "the training data yielded no samples in epoch 1");
    let err = trainer().fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, Some(&empty)).unwrap_err();
    assert_eq!(err.to_string(), "the validation data yielded no samples in epoch 1");
    let err = trainer().evaluate(&mut model, &CrossEntropyLoss::default(), &empty).unwrap_err();
    assert_eq!(err.to_string(), "the evaluation data yielded no samples");
}
