//! Every recipe of `examples/` run on a tiny slice of its data (a few hundred samples, one
//! epoch): the code paths of the real runs, in seconds. A recipe whose data set is not found
//! (`KILN_DATA_DIR`, default `../shared/data`) is skipped with a message. The figures the full
//! runs reach are in the examples' docs and the closing notes, not asserted here.
// cnn_mnist.rs and common.rs are included as modules by several binaries, on purpose.
#![allow(clippy::duplicate_mod)]

use kiln::data::DataError;

#[path = "../../../examples/autoencoder_mnist.rs"]
#[allow(dead_code)]
mod autoencoder_mnist;
#[path = "../../../examples/bf16_inference.rs"]
#[allow(dead_code)]
mod bf16_inference;
#[path = "../../../examples/cifar10_cnn.rs"]
#[allow(dead_code)]
mod cifar10_cnn;
#[path = "../../../examples/cifar10_resnet.rs"]
#[allow(dead_code)]
mod cifar10_resnet;
#[path = "../../../examples/cnn_mnist.rs"]
#[allow(dead_code)]
mod cnn_mnist;
#[path = "../../../examples/cross_validation.rs"]
#[allow(dead_code)]
mod cross_validation;
#[path = "../../../examples/distill_mnist.rs"]
#[allow(dead_code)]
mod distill_mnist;
#[path = "../../../examples/fashion_mnist_cnn.rs"]
#[allow(dead_code)]
mod fashion_mnist_cnn;
#[path = "../../../examples/imdb_lstm.rs"]
#[allow(dead_code)]
mod imdb_lstm;
#[path = "../../../examples/logistic_regression.rs"]
#[allow(dead_code)]
mod logistic_regression;
#[path = "../../../examples/lora_imdb.rs"]
#[allow(dead_code)]
mod lora_imdb;
#[path = "../../../examples/mlp_mnist.rs"]
#[allow(dead_code)]
mod mlp_mnist;
#[path = "../../../examples/pretrain_finetune.rs"]
#[allow(dead_code)]
mod pretrain_finetune;
#[path = "../../../examples/ptb_language_model.rs"]
#[allow(dead_code)]
mod ptb_language_model;
#[path = "../../../examples/quantize_mnist.rs"]
#[allow(dead_code)]
mod quantize_mnist;

/// The report, or `None` (with a message) when the recipe's data set is not there; any other
/// error fails the test.
fn unless_missing<T>(example: &str, result: Result<T, DataError>) -> Option<T> {
    match result {
        Ok(report) => Some(report),
        Err(e @ DataError::NotFound { .. }) => {
            eprintln!("skipped {example}: {e} (set KILN_DATA_DIR to the shared data folder)");
            None
        }
        Err(e) => panic!("{example}: {e}"),
    }
}

fn is_fraction(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

#[test]
fn logistic_regression_smoke() {
    if let Some(r) =
        unless_missing("logistic_regression", logistic_regression::run(&logistic_regression::Opts::smoke()))
    {
        // A few epochs of logistic regression already separate most tumours.
        assert!(r.test_accuracy > 0.8, "{r:?}");
    }
}

#[test]
fn mlp_mnist_smoke() {
    if let Some(r) = unless_missing("mlp_mnist", mlp_mnist::run(&mlp_mnist::Opts::smoke())) {
        assert!(is_fraction(r.test_accuracy) && r.test_loss.is_finite(), "{r:?}");
        assert!(r.test_accuracy > 0.3, "one epoch on 512 images learns something: {r:?}");
    }
}

#[test]
fn cnn_mnist_smoke() {
    if let Some(r) = unless_missing("cnn_mnist", cnn_mnist::run(&cnn_mnist::Opts::smoke())) {
        assert!(is_fraction(r.test_accuracy) && r.test_loss.is_finite(), "{r:?}");
    }
}

#[test]
fn distill_mnist_smoke() {
    if let Some(r) = unless_missing("distill_mnist", distill_mnist::run(&distill_mnist::Opts::smoke())) {
        let accuracies = [r.teacher_accuracy, r.student_accuracy, r.distilled_accuracy];
        assert!(accuracies.into_iter().all(is_fraction), "{r:?}");
        assert_eq!((r.teacher_epochs, r.epochs), (1, 1));
    }
}

#[test]
fn fashion_mnist_cnn_smoke() {
    if let Some(r) = unless_missing("fashion_mnist_cnn", fashion_mnist_cnn::run(&fashion_mnist_cnn::Opts::smoke())) {
        assert!(is_fraction(r.test_accuracy) && r.test_loss.is_finite(), "{r:?}");
    }
}

#[test]
fn cifar10_cnn_smoke() {
    if let Some(r) = unless_missing("cifar10_cnn", cifar10_cnn::run(&cifar10_cnn::Opts::smoke())) {
        assert!(is_fraction(r.augmented_accuracy) && is_fraction(r.plain_accuracy), "{r:?}");
        assert_eq!((r.train_images, r.test_images), (192, 64));
    }
}

#[test]
fn cifar10_resnet_smoke() {
    if let Some(r) = unless_missing("cifar10_resnet", cifar10_resnet::run(&cifar10_resnet::Opts::smoke())) {
        assert!(is_fraction(r.test_accuracy), "{r:?}");
        assert_eq!((r.train_images, r.test_images), (128, 64));
        assert_eq!(r.parameters, kiln::nn::Module::num_parameters(&cifar10_resnet::model(4)));
        assert!(r.mult_adds > 0, "{r:?}");
    }
}

#[test]
fn autoencoder_mnist_smoke() {
    if let Some(r) = unless_missing("autoencoder_mnist", autoencoder_mnist::run(&autoencoder_mnist::Opts::smoke())) {
        assert!(r.test_bce.is_finite() && r.test_bce < 0.7, "{r:?}");
        let png = std::fs::read(&r.png).expect("the picture was written");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_file(&r.png).ok();
    }
}

#[test]
fn pretrain_finetune_smoke() {
    if let Some(r) = unless_missing("pretrain_finetune", pretrain_finetune::run(&pretrain_finetune::Opts::smoke())) {
        assert_eq!(r.labelled, 50);
        assert!(
            is_fraction(r.finetuned_accuracy) && is_fraction(r.scratch_accuracy) && r.autoencoder_bce.is_finite(),
            "{r:?}"
        );
    }
}

#[test]
fn imdb_lstm_smoke() {
    if let Some(r) = unless_missing("imdb_lstm", imdb_lstm::run(&imdb_lstm::Opts::smoke())) {
        assert!(is_fraction(r.test_accuracy) && r.test_loss.is_finite(), "{r:?}");
    }
}

#[test]
fn lora_imdb_smoke() {
    if let Some(r) = unless_missing("lora_imdb", lora_imdb::run(&lora_imdb::Opts::smoke())) {
        assert!(r.pretrain_loss.is_finite(), "{r:?}");
        assert!(is_fraction(r.full.test_accuracy) && is_fraction(r.lora.test_accuracy), "{r:?}");
        // the adapters and the head train, a small part of the model
        assert!(r.lora.trainable < r.full.trainable / 4, "{r:?}");
        assert!(r.lora.file_bytes < r.full.file_bytes / 4, "{r:?}");
        // merging folds the adapters into the weights without changing the predictions
        assert!((r.lora_merged_accuracy - r.lora.test_accuracy).abs() <= 1.0 / 64.0, "{r:?}");
    }
}

#[test]
fn ptb_language_model_smoke() {
    if let Some(r) = unless_missing("ptb_language_model", ptb_language_model::run(&ptb_language_model::Opts::smoke())) {
        // Below the 10,000 of a uniform guess after one short epoch.
        assert!(r.test_perplexity.is_finite() && r.test_perplexity < 10_000.0, "{r:?}");
        assert!(r.transformer_test_perplexity.is_finite() && r.transformer_test_perplexity < 10_000.0, "{r:?}");
    }
    // the full softmax (the recipe's default output layer)
    let full =
        ptb_language_model::Opts { cutoff: usize::MAX, transformer_epochs: 0, ..ptb_language_model::Opts::smoke() };
    if let Some(r) = unless_missing("ptb_language_model", ptb_language_model::run(&full)) {
        assert!(r.test_perplexity.is_finite() && r.test_perplexity < 10_000.0, "{r:?}");
    }
}

#[test]
fn ptb_language_model_schedules_are_zarembas() {
    use ptb_language_model::{Opts, PtbConfig};
    // Small: lr 1 (20 on the loss averaged over 20 words) for 4 epochs, then halved per epoch.
    let small = Opts::recipe(PtbConfig::Small);
    let lrs: Vec<f64> = (0..7).map(|e| small.epoch_lr(e)).collect();
    assert_eq!(lrs, [20.0, 20.0, 20.0, 20.0, 10.0, 5.0, 2.5]);
    assert_eq!((small.hidden, small.dropout, small.bptt, small.epochs, small.clip), (200, 0.0, 20, 13, 0.25));
    // Their output layer: a full softmax over the 10,000 words.
    assert_eq!(small.cutoff, usize::MAX);
    // Medium: lr 1 (35) for 6 epochs, then divided by 1.2 per epoch; 650 units, dropout 0.5.
    let medium = Opts::recipe(PtbConfig::Medium);
    assert_eq!(medium.epoch_lr(5), 35.0);
    assert!((medium.epoch_lr(7) - 35.0 / 1.44).abs() < 1e-12);
    assert_eq!((medium.hidden, medium.dropout, medium.bptt, medium.epochs), (650, 0.5, 35, 39));
}

#[test]
fn cross_validation_smoke() {
    let r = cross_validation::run(&cross_validation::Opts::smoke());
    assert_eq!(r.cv.folds.len(), 5);
    assert!(is_fraction(r.mean_accuracy) && r.std_accuracy >= 0.0, "{r:?}");
    assert!(r.mean_accuracy > 0.5, "two epochs on the digits: {r:?}");
}

#[test]
fn quantize_mnist_smoke() {
    if let Some(r) = unless_missing("quantize_mnist", quantize_mnist::run(&quantize_mnist::Opts::smoke())) {
        assert!(is_fraction(r.f32_accuracy) && is_fraction(r.int8_accuracy), "{r:?}");
        // int8 keeps the float model's predictions (a few points at most on 128 images)
        assert!((r.int8_accuracy - r.f32_accuracy).abs() <= 0.05, "{r:?}");
        assert!(r.reload_identical, "{r:?}");
        assert!(r.int8_file_bytes * 3 < r.f32_file_bytes, "{r:?}");
        assert!(
            r.ms_per_image_batch1.iter().chain(&r.ms_per_image_batch64).all(|t| t.is_finite() && *t > 0.0),
            "{r:?}"
        );
    }
}

#[test]
fn bf16_inference_smoke() {
    if let Some(r) = unless_missing("bf16_inference", bf16_inference::run(&bf16_inference::Opts::smoke())) {
        for c in [&r.cnn, &r.lstm] {
            assert!(is_fraction(c.f32_accuracy) && is_fraction(c.bf16_accuracy), "{r:?}");
            // bfloat16 keeps nearly every prediction of the f32 model
            assert!(c.agreement >= 0.9, "{r:?}");
            // every parameter of both models sits in a converted layer: exactly half the bytes
            assert_eq!(2 * c.param_bytes[1], c.param_bytes[0], "{r:?}");
            assert!(c.ms_per_sample.iter().flatten().all(|t| t.is_finite() && *t > 0.0), "{r:?}");
        }
    }
}

#[path = "../../../examples/lr_find_mnist.rs"]
#[allow(dead_code)]
mod lr_find_mnist;

#[test]
fn lr_find_mnist_smoke() {
    if let Some(r) = unless_missing("lr_find_mnist", lr_find_mnist::run(&lr_find_mnist::Opts::smoke())) {
        assert!(!r.lrs.is_empty() && r.lrs.len() == r.losses.len(), "{r:?}");
        assert!(r.lrs.windows(2).all(|w| w[0] < w[1]), "{r:?}");
    }
}
