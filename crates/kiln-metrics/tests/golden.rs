//! Golden tests: every value in `../shared/golden/metrics/*.json` (computed by scikit-learn on
//! the inputs stored beside it) is recomputed here, through the functional forms, the slice
//! updates and the tensor updates split over workers and merged. Perplexity is checked against
//! `exp` of PyTorch's cross-entropy losses in `../shared/golden/losses/`.
//!
//! Skipped, with a message, when the golden folder is absent.

use std::collections::BTreeMap;

use kiln_metrics::functional as F;
use kiln_metrics::{
    Accuracy, Average, AveragePrecision, ConfusionMatrix, F1Score, FBeta, MeanAbsoluteError, MeanSquaredError, Metric,
    Perplexity, Precision, R2Score, Recall, RocAuc,
};
use kiln_tensor::{Float, Tensor};
use serde_json::Value;

/// One golden case: its JSON and its tensors (floats as f64, integers as i64), read by the
/// shared reader (`kiln-golden`).
struct Case {
    name: String,
    json: Value,
    floats: BTreeMap<String, (Vec<f64>, Vec<usize>)>,
    ints: BTreeMap<String, (Vec<i64>, Vec<usize>)>,
    golden: kiln_golden::Case,
}

impl Case {
    fn results(&self) -> &serde_json::Map<String, Value> {
        self.golden.field("results").as_object().expect("results")
    }

    fn tolerance(&self) -> (f64, f64) {
        self.golden.tol("float64")
    }

    fn float(&self, name: &str) -> &[f64] {
        &self.floats.get(name).unwrap_or_else(|| panic!("{}: no float tensor {name}", self.name)).0
    }

    fn shape(&self, name: &str) -> &[usize] {
        match self.floats.get(name) {
            Some((_, s)) => s,
            None => &self.ints[name].1,
        }
    }

    fn labels(&self, name: &str) -> Vec<usize> {
        let v = &self.ints.get(name).unwrap_or_else(|| panic!("{}: no int tensor {name}", self.name)).0;
        v.iter().map(|&x| usize::try_from(x).expect("non-negative label")).collect()
    }

    fn ints(&self, name: &str) -> &[i64] {
        &self.ints.get(name).unwrap_or_else(|| panic!("{}: no int tensor {name}", self.name)).0
    }

    /// `|got - want| <= atol + rtol * |want|`, with the case's float64 tolerance.
    fn check(&self, what: &str, got: f64, want: f64) {
        let (rtol, atol) = self.tolerance();
        assert!(
            (got - want).abs() <= atol + rtol * want.abs(),
            "{} {what}: got {got:.17}, scikit-learn {want:.17}",
            self.name
        );
    }

    fn check_all(&self, what: &str, got: &[f64], want: &Value) {
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len(), "{} {what}: length", self.name);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            self.check(&format!("{what}[{i}]"), g, w);
        }
    }
}

/// Loads `group/case`, or `None` (the test is skipped with a printed reason) when the golden
/// folder is absent; a missing or unreadable case fails, naming the file.
fn load(group: &str, case: &str) -> Option<Case> {
    let golden = kiln_golden::load(&format!("{group}/{case}"))?;
    let mut floats = BTreeMap::new();
    for (name, t) in &golden.tensors {
        if !golden.ints.contains_key(name) {
            floats.insert(name.clone(), (t.to_vec(), t.shape().to_vec()));
        }
    }
    Some(Case { name: golden.name.clone(), json: golden.json.clone(), floats, ints: golden.ints.clone(), golden })
}

/// The number a result key carries after its metric's name: `k` of `top2_accuracy`, `beta` of
/// `fbeta2`.
fn key_number(case: &Case, key: &str, prefix: &str) -> f64 {
    let digits: String = key[prefix.len()..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    digits.parse().unwrap_or_else(|_| panic!("{}: result key {key} carries no number after {prefix}", case.name))
}

/// The decision threshold the case states for `y_pred` (`"(y_score >= 0.5)"`).
fn threshold(case: &Case) -> f64 {
    let desc = case.golden.str("inputs/y_pred");
    let after = desc.split(">=").nth(1).unwrap_or_else(|| panic!("{}: inputs/y_pred states no threshold", case.name));
    let num: String = after.trim().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().unwrap_or_else(|_| panic!("{}: inputs/y_pred threshold {after:?}", case.name))
}

/// A tensor of element type `E` from f64 values.
fn tensor<E: Float>(values: &[f64], shape: &[usize]) -> Tensor<E> {
    Tensor::from_vec(values.iter().map(|&x| E::from_f64(x)).collect(), shape)
}

/// Labels as a floating tensor, the way a trainer holds targets.
fn label_tensor<E: Float>(labels: &[usize]) -> Tensor<E> {
    Tensor::from_vec(labels.iter().map(|&x| E::from_usize(x)).collect(), &[labels.len()])
}

/// Feeds `[N, ...]` scores and `[N]` labels to fresh copies of `metric`, 64 rows per worker,
/// merges the workers and returns the result (the tensor path with merging).
fn by_workers<M: Metric + Clone, E: Float>(metric: &M, scores: &[f64], shape: &[usize], labels: &[usize]) -> M {
    let n = shape[0];
    let row: usize = shape[1..].iter().product();
    let mut total = metric.clone();
    total.reset();
    for start in (0..n).step_by(64) {
        let end = (start + 64).min(n);
        let mut worker = metric.clone();
        worker.reset();
        let mut s = shape.to_vec();
        s[0] = end - start;
        worker.update(&tensor::<E>(&scores[start * row..end * row], &s), &label_tensor::<E>(&labels[start..end]));
        total.merge(&worker);
    }
    total
}

fn average(name: &str) -> Average {
    match name {
        "micro" => Average::Micro,
        "macro" => Average::Macro,
        "weighted" => Average::Weighted,
        other => panic!("unknown average {other}"),
    }
}

fn counts(value: &Value) -> Vec<Vec<u64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect())
        .collect()
}

#[test]
fn golden_binary() {
    let Some(case) = load("metrics", "binary") else { return };
    let y_true = case.labels("input.y_true");
    let y_pred = case.labels("input.y_pred");
    let y_score = case.float("input.y_score");
    let n = y_true.len();
    // y_pred was made as y_score >= threshold: the binary threshold rule
    let th = threshold(&case);
    let thresholded: Vec<usize> = y_score.iter().map(|&s| usize::from(s >= th)).collect();
    assert_eq!(thresholded, y_pred);

    for (key, want) in case.results() {
        match key.as_str() {
            "accuracy" => {
                let want = want.as_f64().unwrap();
                case.check("accuracy", F::accuracy(&y_pred, &y_true), want);
                case.check("binary_accuracy", F::binary_accuracy(y_score, &y_true, th), want);
                case.check(
                    "Accuracy f64",
                    by_workers::<_, f64>(&Accuracy::binary().with_threshold(th), y_score, &[n], &y_true).compute(),
                    want,
                );
                case.check(
                    "Accuracy f32",
                    by_workers::<_, f32>(&Accuracy::binary().with_threshold(th), y_score, &[n], &y_true).compute(),
                    want,
                );
            }
            k if ["precision", "recall", "f1"].contains(&k) || k.starts_with("fbeta") => {
                let want = want.as_f64().unwrap();
                let beta = if k.starts_with("fbeta") { key_number(&case, k, "fbeta") } else { 0.0 };
                let (functional, stateful) = match key.as_str() {
                    "precision" => (
                        F::precision(&y_pred, &y_true, 2, Average::Binary, 0.0),
                        by_workers::<_, f32>(&Precision::binary().with_threshold(th), y_score, &[n], &y_true).compute(),
                    ),
                    "recall" => (
                        F::recall(&y_pred, &y_true, 2, Average::Binary, 0.0),
                        by_workers::<_, f32>(&Recall::binary().with_threshold(th), y_score, &[n], &y_true).compute(),
                    ),
                    "f1" => (
                        F::f1_score(&y_pred, &y_true, 2, Average::Binary, 0.0),
                        by_workers::<_, f64>(&F1Score::binary().with_threshold(th), y_score, &[n], &y_true).compute(),
                    ),
                    _ => (
                        F::fbeta_score(&y_pred, &y_true, 2, beta, Average::Binary, 0.0),
                        by_workers::<_, f64>(&FBeta::binary(beta).with_threshold(th), y_score, &[n], &y_true).compute(),
                    ),
                };
                case.check(key, functional, want);
                case.check(&format!("{key} (stateful)"), stateful, want);
            }
            "confusion_matrix" => {
                let want = counts(want);
                assert_eq!(F::confusion_matrix(&y_pred, &y_true, 2), want, "binary confusion_matrix");
                let cm = by_workers::<_, f32>(&ConfusionMatrix::binary().with_threshold(th), y_score, &[n], &y_true);
                assert_eq!(cm.counts(), want, "binary ConfusionMatrix");
            }
            "roc_auc" => {
                let want = want.as_f64().unwrap();
                case.check("roc_auc", F::roc_auc(y_score, &y_true), want);
                case.check(
                    "RocAuc f64",
                    by_workers::<_, f64>(&RocAuc::binary(), y_score, &[n], &y_true).compute(),
                    want,
                );
                // f32 keeps the order and the ties of 2-decimal scores, so the area is the same
                case.check(
                    "RocAuc f32",
                    by_workers::<_, f32>(&RocAuc::binary(), y_score, &[n], &y_true).compute(),
                    want,
                );
                // the area under roc_curve's points, by trapezoid
                let c = F::roc_curve(y_score, &y_true);
                let trapezoid: f64 =
                    (1..c.fpr.len()).map(|i| (c.fpr[i] - c.fpr[i - 1]) * (c.tpr[i] + c.tpr[i - 1]) / 2.0).sum();
                case.check("trapezoid of roc_curve", trapezoid, want);
            }
            "average_precision" => {
                let want = want.as_f64().unwrap();
                case.check("average_precision", F::average_precision(y_score, &y_true), want);
                let ap = by_workers::<_, f32>(&AveragePrecision::binary(), y_score, &[n], &y_true);
                case.check("AveragePrecision", ap.compute(), want);
                let c = F::precision_recall_curve(y_score, &y_true);
                let steps: f64 =
                    -(1..c.recall.len()).map(|i| (c.recall[i] - c.recall[i - 1]) * c.precision[i - 1]).sum::<f64>();
                case.check("steps of precision_recall_curve", steps, want);
            }
            other => panic!("{}: golden metric {other} is not checked", case.name),
        }
    }
}

#[test]
fn golden_multiclass() {
    let Some(case) = load("metrics", "multiclass") else { return };
    let y_true = case.labels("input.y_true");
    let y_pred = case.labels("input.y_pred");
    let y_score = case.float("input.y_score");
    let shape = case.shape("input.y_score").to_vec();
    let c = case.json["num_classes"].as_u64().unwrap() as usize;
    assert_eq!(shape, vec![y_true.len(), c]);

    for (key, want) in case.results() {
        let parts: Vec<&str> = key.split('_').collect();
        match parts.as_slice() {
            ["accuracy"] => {
                let want = want.as_f64().unwrap();
                case.check("accuracy", F::accuracy(&y_pred, &y_true), want);
                let acc = by_workers::<_, f32>(&Accuracy::multiclass(c), y_score, &shape, &y_true);
                case.check("Accuracy (argmax of scores)", acc.compute(), want);
            }
            [top, "accuracy"] if top.starts_with("top") => {
                let want = want.as_f64().unwrap();
                let k = key_number(&case, top, "top") as usize;
                case.check("top_k_accuracy", F::top_k_accuracy(y_score, &y_true, c, k), want);
                let acc = by_workers::<_, f64>(&Accuracy::multiclass(c).with_top_k(k), y_score, &shape, &y_true);
                case.check("Accuracy top-2", acc.compute(), want);
            }
            [metric @ ("precision" | "recall" | "f1"), "per", "class"] => {
                let got = match *metric {
                    "precision" => F::precision_per_class(&y_pred, &y_true, c, 0.0),
                    "recall" => F::recall_per_class(&y_pred, &y_true, c, 0.0),
                    _ => F::f1_score_per_class(&y_pred, &y_true, c, 0.0),
                };
                case.check_all(key, &got, want);
                let stateful = match *metric {
                    "precision" => {
                        by_workers::<_, f32>(&Precision::multiclass(c, Average::Macro), y_score, &shape, &y_true)
                            .compute_per_class()
                    }
                    "recall" => by_workers::<_, f32>(&Recall::multiclass(c, Average::Macro), y_score, &shape, &y_true)
                        .compute_per_class(),
                    _ => by_workers::<_, f32>(&F1Score::multiclass(c, Average::Macro), y_score, &shape, &y_true)
                        .compute_per_class(),
                };
                case.check_all(&format!("{key} (stateful)"), &stateful, want);
            }
            [metric @ ("precision" | "recall" | "f1"), avg] => {
                let want = want.as_f64().unwrap();
                let avg = average(avg);
                let (functional, stateful) = match *metric {
                    "precision" => (
                        F::precision(&y_pred, &y_true, c, avg, 0.0),
                        by_workers::<_, f64>(&Precision::multiclass(c, avg), y_score, &shape, &y_true).compute(),
                    ),
                    "recall" => (
                        F::recall(&y_pred, &y_true, c, avg, 0.0),
                        by_workers::<_, f64>(&Recall::multiclass(c, avg), y_score, &shape, &y_true).compute(),
                    ),
                    _ => (
                        F::f1_score(&y_pred, &y_true, c, avg, 0.0),
                        by_workers::<_, f64>(&F1Score::multiclass(c, avg), y_score, &shape, &y_true).compute(),
                    ),
                };
                case.check(key, functional, want);
                case.check(&format!("{key} (stateful)"), stateful, want);
            }
            [fbeta, avg] if fbeta.starts_with("fbeta") => {
                let want = want.as_f64().unwrap();
                let avg = average(avg);
                let beta = key_number(&case, fbeta, "fbeta");
                case.check(key, F::fbeta_score(&y_pred, &y_true, c, beta, avg, 0.0), want);
                let f2 = by_workers::<_, f32>(&FBeta::multiclass(beta, c, avg), y_score, &shape, &y_true);
                case.check(&format!("{key} (stateful)"), f2.compute(), want);
            }
            ["confusion", "matrix"] => {
                let want = counts(want);
                assert_eq!(F::confusion_matrix(&y_pred, &y_true, c), want, "multiclass confusion_matrix");
                let cm = by_workers::<_, f64>(&ConfusionMatrix::multiclass(c), y_score, &shape, &y_true);
                assert_eq!(cm.counts(), want, "multiclass ConfusionMatrix");
                // the never-predicted class is an all-zero column
                let never = case.json["never_predicted_class"].as_u64().unwrap() as usize;
                assert!(want.iter().all(|row| row[never] == 0));
            }
            ["roc", "auc", "ovr", avg] => {
                let want = want.as_f64().unwrap();
                let avg = average(avg);
                case.check(key, F::roc_auc_ovr(y_score, &y_true, c, avg), want);
                let auc = by_workers::<_, f64>(&RocAuc::multiclass(c, avg), y_score, &shape, &y_true);
                case.check(&format!("{key} (stateful)"), auc.compute(), want);
            }
            _ => panic!("{}: golden metric {key} is not checked", case.name),
        }
    }
}

#[test]
fn golden_regression() {
    let Some(case) = load("metrics", "regression") else { return };
    let y_true = case.float("input.y_true");
    let y_pred = case.float("input.y_pred");
    let n = y_true.len();
    // the tensor path over workers: predictions as [N, 1], targets [N]
    fn workers<M: Metric<Output = f64> + Clone + Default>(y_pred: &[f64], y_true: &[f64]) -> f64 {
        let mut total = M::default();
        for (p, t) in y_pred.chunks(64).zip(y_true.chunks(64)) {
            let mut worker = M::default();
            worker.update(&tensor::<f64>(p, &[p.len(), 1]), &tensor::<f64>(t, &[t.len()]));
            total.merge(&worker);
        }
        total.compute()
    }
    for (key, want) in case.results() {
        let want = want.as_f64().unwrap();
        match key.as_str() {
            "mse" => {
                case.check("mean_squared_error", F::mean_squared_error(y_pred, y_true), want);
                case.check("MeanSquaredError", workers::<MeanSquaredError>(y_pred, y_true), want);
            }
            "mae" => {
                case.check("mean_absolute_error", F::mean_absolute_error(y_pred, y_true), want);
                case.check("MeanAbsoluteError", workers::<MeanAbsoluteError>(y_pred, y_true), want);
            }
            "r2" => {
                case.check("r2_score", F::r2_score(y_pred, y_true), want);
                case.check("R2Score", workers::<R2Score>(y_pred, y_true), want);
                // one sample at a time, merged: the Chan update at its most fragmented
                let mut r2 = R2Score::new();
                for i in 0..n {
                    let mut one = R2Score::new();
                    one.update_values(&y_pred[i..=i], &y_true[i..=i]);
                    r2.merge(&one);
                }
                case.check("R2Score one by one", r2.compute(), want);
            }
            other => panic!("{}: golden metric {other} is not checked", case.name),
        }
    }
}

/// Perplexity is `exp` of PyTorch's mean cross-entropy: checked on the golden loss cases
/// (logits, log-probabilities for `nll_loss`, an ignore index, and a `[N, C, L]` input).
#[test]
fn golden_perplexity_is_exp_cross_entropy() {
    for name in ["cross_entropy", "nll_loss", "cross_entropy_ignore_index", "cross_entropy_3d"] {
        let Some(case) = load("losses", name) else { return };
        let input = case.float("input.input");
        let shape = case.shape("input.input").to_vec();
        let targets: Vec<f64> = case.ints("input.target").iter().map(|&t| t as f64).collect();
        let target_shape = case.shape("input.target").to_vec();
        let loss = case.float("output.output")[0];
        // PyTorch's default ignore_index is -100
        let ignore = case.golden.opt("constructor_kwargs/ignore_index").map_or(-100, |v| v.as_i64().unwrap());
        let mut ppl = Perplexity::new().with_ignore_index(ignore);
        ppl.update(&tensor::<f64>(input, &shape), &tensor::<f64>(&targets, &target_shape));
        case.check("mean NLL", ppl.mean_nll(), loss);
        case.check("perplexity", ppl.compute(), loss.exp());
    }
}
