//! # kiln-metrics
//!
//! Evaluation metrics for kiln, usable without the trainer: each is a stateful [`Metric`]
//! (`update` per batch, `compute`, `reset`, and `merge` to combine workers' partial results)
//! with a stateless counterpart in [`functional`]. Definitions, averaging and edge cases
//! (ties, empty classes, zero division) follow scikit-learn, and are tested against its values.
//!
//! | metric | kept state | scikit-learn |
//! | --- | --- | --- |
//! | [`Accuracy`] (multiclass, binary with threshold, top-k) | counts | `accuracy_score`, `top_k_accuracy_score` |
//! | [`Precision`], [`Recall`], [`F1Score`], [`FBeta`] | per-class counts | `precision_score`, ... with [`Average`] |
//! | [`ConfusionMatrix`] | counts matrix | `confusion_matrix` with [`Normalize`] |
//! | [`RocAuc`] (binary, one-vs-rest) | every score | `roc_auc_score` |
//! | [`AveragePrecision`] (binary, one-vs-rest) | every score | `average_precision_score` |
//! | [`MeanSquaredError`], [`MeanAbsoluteError`], [`R2Score`] | sums | `mean_squared_error`, ... |
//! | [`Perplexity`] | NLL sum, token count | `exp` of PyTorch's `cross_entropy` |
//!
//! Arguments come in PyTorch's order, **predictions first, then targets** (scikit-learn's is
//! the reverse). [`Metric::update`] reads tensors: class indices are floating tensors of whole
//! numbers, and class scores have the class axis at 1 (`[N, C]` or `[N, C, d...]`, as PyTorch's
//! `cross_entropy`). Shape mismatches and invalid class indices panic with a message naming the
//! metric and the shapes. The `update_*` methods take slices directly.
//!
//! ```
//! use kiln_metrics::{Accuracy, Average, F1Score, Metric, RocAuc};
//! use kiln_tensor::Tensor;
//!
//! let probs = Tensor::from_vec(vec![0.7f32, 0.2, 0.1, 0.1, 0.3, 0.6, 0.5, 0.2, 0.3], &[3, 3]);
//! let labels = Tensor::from_vec(vec![0.0f32, 2.0, 1.0], &[3]);
//!
//! let mut acc = Accuracy::multiclass(3);
//! let mut f1 = F1Score::multiclass(3, Average::Macro);
//! let mut auc = RocAuc::multiclass(3, Average::Macro);
//! let metrics: [&mut dyn Metric<Output = f64>; 3] = [&mut acc, &mut f1, &mut auc];
//! for m in metrics {
//!     m.update(&probs, &labels); // once per batch
//! }
//! assert!((acc.compute() - 2.0 / 3.0).abs() < 1e-12);
//! assert!((f1.compute() - 5.0 / 9.0).abs() < 1e-12); // per class: 2/3, 0, 1
//! assert_eq!(auc.compute(), 0.75); // per class: 1, 1/4 (a tie), 1
//! //! ```

mod accuracy;
mod average;
mod average_precision;
mod class_stats;
mod compensated_sum;
mod confusion_matrix;
mod fbeta;
pub mod functional;
mod input;
mod mean_absolute_error;
mod mean_error;
mod mean_squared_error;
mod metric;
mod perplexity;
mod precision;
mod r2_score;
mod ranking;
mod recall;
mod roc_auc;

pub use accuracy::{batch_accuracy as accuracy, Accuracy};
pub use average::Average;
pub use average_precision::{AveragePrecision, PrecisionRecallCurve};
pub use confusion_matrix::{ConfusionMatrix, Normalize};
pub use fbeta::{F1Score, FBeta};
pub use mean_absolute_error::MeanAbsoluteError;
pub use mean_squared_error::MeanSquaredError;
pub use metric::{Metric, MetricInput};
pub use perplexity::Perplexity;
pub use precision::Precision;
pub use r2_score::R2Score;
pub use recall::Recall;
pub use roc_auc::{RocAuc, RocCurve};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
