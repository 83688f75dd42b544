//! The TensorBoard event files, read back by TensorBoard's own reader (`EventAccumulator` of
//! the `tensorboard` Python package): skipped with a printed reason where it is not installed,
//! a failure when `CI=true`.

mod common;

use std::process::Command;

use common::{blob_batches, mlp};
use kiln_metrics::Accuracy;
use kiln_nn::{CrossEntropyLoss, Module};
use kiln_optim::{SGDConfig, SGD};
use kiln_train::callbacks::TensorBoardLogger;
use kiln_train::{plot_confusion_matrix, Trainer, Verbosity};

/// Whether `python3 -c "import tensorboard"` works; when not, panics under `CI=true`, else
/// prints why the test is skipped.
fn tensorboard_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the tensorboard Python package is not importable (run .ci/install.d/tensorboard.sh)"
        );
        eprintln!("skipped: `python3 -c \"import tensorboard\"` failed; pip install tensorboard to run this test");
    }
    ok
}

/// Prints, one per line, what TensorBoard reads from `dir`:
/// `scalar TAG STEP VALUE`, `histo TAG STEP NUM BUCKET_SUM MIN MAX`, `image TAG STEP WIDTH HEIGHT`.
const READER: &str = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0, 'histograms': 0, 'images': 0, 'tensors': 0, 'compressedHistograms': 0, 'audio': 0})
acc.Reload()
tags = acc.Tags()
for t in tags['scalars']:
    for e in acc.Scalars(t):
        print('scalar', t, e.step, repr(e.value))
for t in tags['histograms']:
    for e in acc.Histograms(t):
        h = e.histogram_value
        print('histo', t, e.step, h.num, sum(h.bucket), h.min, h.max)
for t in tags['images']:
    for e in acc.Images(t):
        print('image', t, e.step, e.width, e.height)
"#;

fn read_back(dir: &std::path::Path) -> Vec<Vec<String>> {
    let out = Command::new("python3").arg("-c").arg(READER).arg(dir).output().expect("running python3");
    assert!(out.status.success(), "the EventAccumulator script failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.split(' ').map(str::to_string).collect()).collect()
}

#[test]
fn tensorboard_reads_back_every_scalar_histogram_and_image() {
    if !tensorboard_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("runs").join("blobs");
    let train = blob_batches(32, 1, 8); // 4 batches per epoch
    let val = blob_batches(16, 2, 8);
    let mut model = mlp(0);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.1, ..Default::default() });
    let logger = TensorBoardLogger::new(&logdir).unwrap().batch_loss_every(3).bins(10);
    let handle = logger.clone();
    let epochs = 3;
    let history = Trainer::new(epochs)
        .verbosity(Verbosity::Silent)
        .metric("accuracy", || Accuracy::multiclass(2))
        .callback(logger)
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &train, Some(&val))
        .unwrap();

    // an image through each entry point: a confusion-matrix PNG file and raw RGB pixels
    let png = dir.path().join("cm.png");
    plot_confusion_matrix(&[vec![5u64, 1], vec![2, 7]], &["a", "b"], &png).unwrap();
    let (w, h) = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()))
        .read_info()
        .map(|r| (r.info().width, r.info().height))
        .unwrap();
    handle.log_image_file("confusion_matrix", 2, &png).unwrap();
    let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
    handle.log_rgb("pixels", 5, 4, 3, &rgb).unwrap();
    handle.flush().unwrap();

    let lines = read_back(&logdir);
    let scalars = |tag: &str| -> Vec<(i64, f32)> {
        lines
            .iter()
            .filter(|l| l[0] == "scalar" && l[1] == tag)
            .map(|l| (l[2].parse().unwrap(), l[3].parse().unwrap()))
            .collect()
    };
    // every figure of the History, at its epoch, with its value (f32 in the event format)
    let keys = history.keys();
    for k in ["loss", "val_loss", "accuracy", "val_accuracy", "lr", "time_s"] {
        assert!(keys.contains(&k.to_string()), "History lacks {k}: {keys:?}");
    }
    for key in &keys {
        let expected: Vec<(i64, f32)> =
            history.get(key).iter().enumerate().map(|(e, &v)| (e as i64, v as f32)).collect();
        assert_eq!(scalars(key), expected, "scalar {key}");
    }
    // batch losses: 12 batches in all, every 3rd logged at its global batch index
    let batch = scalars("batch_loss");
    assert_eq!(batch.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 3, 6, 9]);
    assert!(batch.iter().all(|s| s.1.is_finite() && s.1 > 0.0), "{batch:?}");

    // histograms: every parameter and its gradient, each epoch, counting every element
    let sizes: Vec<(String, usize)> =
        model.named_parameters().iter().map(|(n, p)| (n.clone(), p.value().to_vec().len())).collect();
    assert_eq!(sizes.len(), 4);
    for (name, size) in &sizes {
        for prefix in ["parameters", "gradients"] {
            let tag = format!("{prefix}/{name}");
            let h: Vec<&Vec<String>> = lines.iter().filter(|l| l[0] == "histo" && l[1] == tag).collect();
            assert_eq!(h.len(), epochs, "{tag}: {h:?}");
            for (e, l) in h.iter().enumerate() {
                assert_eq!(l[2], e.to_string(), "{tag} step");
                assert_eq!(l[3].parse::<f64>().unwrap(), *size as f64, "{tag} num");
                assert_eq!(l[4].parse::<f64>().unwrap(), *size as f64, "{tag} bucket counts");
                assert!(l[5].parse::<f64>().unwrap() <= l[6].parse::<f64>().unwrap(), "{tag} min <= max");
            }
        }
    }
    // the last epoch's parameter histogram spans the final weights
    let w0 = model.named_parameters()[0].1.value().to_vec();
    let last = lines.iter().rfind(|l| l[0] == "histo" && l[1] == format!("parameters/{}", sizes[0].0)).unwrap();
    let min = w0.iter().copied().fold(f32::INFINITY, f32::min);
    let max = w0.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!((last[5].parse::<f32>().unwrap(), last[6].parse::<f32>().unwrap()), (min, max));

    // images: tag, step and size
    let images: Vec<&Vec<String>> = lines.iter().filter(|l| l[0] == "image").collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(images.contains(&&vec![
        "image".into(),
        "confusion_matrix".into(),
        "2".into(),
        w.to_string(),
        h.to_string()
    ]));
    assert!(images.contains(&&vec!["image".into(), "pixels".into(), "5".into(), "4".into(), "3".into()]));
}

#[test]
fn a_second_logger_in_the_same_folder_gets_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = TensorBoardLogger::new(dir.path()).unwrap();
    let b = TensorBoardLogger::new(dir.path()).unwrap();
    assert_ne!(a.path(), b.path());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn an_image_that_is_not_png_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let logger = TensorBoardLogger::new(dir.path()).unwrap();
    let err = logger.log_image("x", 0, b"GIF89a not a png").unwrap_err();
    assert!(matches!(err, kiln_train::TrainError::Image { ref tag, .. } if tag == "x"), "{err}");
    assert!(err.to_string().contains("not a PNG"), "{err}");
}
