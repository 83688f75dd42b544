//! Cross-validation: folds, a fresh model per fold, and the report.

mod common;

use std::cell::RefCell;

use common::{blobs, mlp};
use kiln_data::Targets;
use kiln_metrics::Accuracy;
use kiln_nn::{CrossEntropyLoss, Module};
use kiln_optim::{SGDConfig, SGD};
use kiln_train::{cross_validate, CrossValidation, EpochLogs, Trainer, Verbosity};

#[test]
fn stratified_five_fold_trains_a_fresh_model_per_fold() {
    let (x, labels) = blobs(60, 8);
    let y = Targets::from(labels.clone());
    let made = RefCell::new(Vec::new());
    let seen_val = RefCell::new(Vec::new());
    let report = cross_validate(
        5,
        true,
        42,
        &labels,
        |fold| {
            made.borrow_mut().push(fold);
            mlp(fold as u64)
        },
        |model, fold| {
            // a fresh, untrained model: no fold sees another's weights
            assert_eq!(model.state_dict(), mlp(fold.fold as u64).state_dict());
            seen_val.borrow_mut().extend(fold.val.iter().copied());
            // stratified: each validation fold holds 6 of each class
            let ones = fold.val.iter().filter(|&&i| labels[i] == 1).count();
            assert_eq!((fold.val.len(), ones), (12, 6));
            assert_eq!(fold.train.len(), 48);
            let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.1, momentum: 0.9, ..Default::default() });
            let mut trainer =
                Trainer::new(10).verbosity(Verbosity::Silent).metric("accuracy", || Accuracy::multiclass(2));
            trainer.fit(model, &mut opt, &CrossEntropyLoss::default(), &fold.train_batches(&x, &y, 16), None).unwrap();
            trainer.evaluate(model, &CrossEntropyLoss::default(), &fold.val_batches(&x, &y, 16)).unwrap()
        },
    );
    assert_eq!(*made.borrow(), vec![0, 1, 2, 3, 4]);
    let mut all = seen_val.into_inner();
    all.sort();
    assert_eq!(all, (0..60).collect::<Vec<_>>(), "the validation folds partition the samples");

    assert_eq!(report.folds.len(), 5);
    assert_eq!(report.keys(), ["accuracy", "loss"]);
    assert!(report.mean("accuracy") >= 0.9, "{report}");
    let acc = report.values("accuracy");
    let mean = acc.iter().sum::<f64>() / 5.0;
    let std = (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
    assert!((report.mean("accuracy") - mean).abs() < 1e-12 && (report.std("accuracy") - std).abs() < 1e-12);

    let text = report.to_string();
    assert!(text.starts_with("5-fold cross-validation (stratified)\n"), "{text}");
    assert!(text.contains("fold 5") && text.contains(" ± "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("accuracy")), "{text}");
}

#[test]
fn report_mean_and_std_and_plain_kfold() {
    let cv = CrossValidation::new(4);
    let folds = cv.folds(&[0; 10]);
    // consecutive, unshuffled, the first 10 % 4 folds one longer (as scikit-learn)
    assert_eq!(folds[0].val, vec![0, 1, 2]);
    assert_eq!(folds[3].val, vec![8, 9]);
    let report =
        cv.run(&[0; 10], |fold| fold as f64, |m, _| -> EpochLogs { [("score".to_string(), *m)].into_iter().collect() });
    assert_eq!(report.values("score"), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(report.mean("score"), 1.5);
    assert!((report.std("score") - 1.25f64.sqrt()).abs() < 1e-12);
    assert!(report.to_string().starts_with("4-fold cross-validation\n"));
    // shuffled folds differ from the plain ones but still partition the samples
    let shuffled = CrossValidation::new(4).shuffle(3).folds(&[0; 10]);
    assert_ne!(shuffled, folds);
    let mut all: Vec<usize> = shuffled.iter().flat_map(|f| f.val.clone()).collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
}
