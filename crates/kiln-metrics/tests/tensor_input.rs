//! Metrics fed through `Metric::update` with kiln-tensor types: `Tensor<f32>`, `Tensor<f64>`
//! and `Indices`, as a trainer would.

use kiln_metrics::{Accuracy, Average, ConfusionMatrix, F1Score, Metric, Perplexity, Precision, RocAuc};
use kiln_tensor::{Indices, Tensor};

fn logits<E: kiln_tensor::Float>() -> Tensor<E> {
    let v = [2.0, 0.5, 0.1, 0.2, 0.3, 1.5, 0.1, 1.0, 0.9, 3.0, 0.0, 0.0];
    Tensor::from_vec(v.iter().map(|&x| E::from_f64(x)).collect(), &[4, 3])
}

#[test]
fn f32_f64_and_indices_agree() {
    let targets = Indices::from_vec(vec![0, 2, 2, 1]);
    let float_targets: Tensor<f32> = targets.to_tensor();
    let mut a = F1Score::multiclass(3, Average::Macro);
    let mut b = a.clone();
    let mut c = a.clone();
    a.update(&logits::<f32>(), &targets);
    b.update(&logits::<f64>(), &targets);
    c.update(&logits::<f32>(), &float_targets);
    assert_eq!(a.compute(), b.compute());
    assert_eq!(a.compute(), c.compute());
    // argmax predictions [0, 2, 1, 0] against [0, 2, 2, 1]
    assert_eq!(a.compute_per_class(), vec![2.0 / 3.0, 0.0, 2.0 / 3.0]);
}

#[test]
fn class_indices_as_predictions() {
    let preds = Indices::from_vec(vec![0, 2, 1, 0]);
    let targets = Indices::from_vec(vec![0, 2, 2, 1]);
    let mut cm = ConfusionMatrix::multiclass(3);
    cm.update(&preds, &targets);
    assert_eq!(cm.counts(), vec![vec![1, 0, 0], vec![1, 0, 0], vec![0, 1, 1]]);
    let mut acc = Accuracy::multiclass(3);
    acc.update(&preds, &targets);
    assert_eq!(acc.compute(), 0.5);
}

#[test]
fn binary_column_scores_fit_flat_targets() {
    let probs = Tensor::from_vec(vec![0.9f32, 0.2, 0.6, 0.4], &[4, 1]);
    let targets = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], &[4]);
    let mut p = Precision::binary();
    p.update(&probs, &targets);
    assert_eq!(p.compute(), 0.5);
    let mut auc = RocAuc::binary();
    auc.update(&probs, &targets);
    assert_eq!(auc.compute(), 0.75);
}

#[test]
fn boxed_metrics_for_a_trainer() {
    let mut metrics: Vec<Box<dyn Metric<Output = f64>>> = vec![
        Box::new(Accuracy::multiclass(3)),
        Box::new(Accuracy::multiclass(3).with_top_k(2)),
        Box::new(Perplexity::new()),
    ];
    let targets = Indices::from_vec(vec![0, 2, 2, 1]);
    for m in &mut metrics {
        m.update(&logits::<f32>(), &targets);
    }
    let names: Vec<String> = metrics.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["accuracy", "top_2_accuracy", "perplexity"]);
    assert_eq!(metrics[0].compute(), 0.5);
    // the last row ties classes 1 and 2 behind 0: top-2 takes the lower index, the target
    assert_eq!(metrics[1].compute(), 1.0);
    assert!(metrics[2].compute() > 1.0);
}

#[test]
#[should_panic(expected = "F1Score: predictions [4, 3] do not fit targets [3]")]
fn mismatched_batch_panics_with_shapes() {
    F1Score::multiclass(3, Average::Macro).update(&logits::<f32>(), &Indices::from_vec(vec![0, 1, 2]));
}
