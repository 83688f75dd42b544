//! Stateless forms of every metric, on plain slices (scikit-learn's `sklearn.metrics`
//! functions, with kiln's `(predictions, targets)` argument order).
//!
//! Hard predictions and targets are `&[usize]` class indices; scores are `&[f32]` or `&[f64]`,
//! one per sample (binary) or `[N, num_classes]` row-major.
//!
//! ```
//! use kiln_metrics::{functional as F, Average};
//!
//! let preds = [0, 2, 1, 1];
//! let targets = [0, 1, 1, 2];
//! assert_eq!(F::accuracy(&preds, &targets), 0.5);
//! assert_eq!(F::recall_per_class(&preds, &targets, 3, 0.0), vec![1.0, 0.5, 0.0]);
//! assert_eq!(F::f1_score(&preds, &targets, 3, Average::Micro, 0.0), 0.5);
//! ```

pub use crate::accuracy::{accuracy, binary_accuracy, top_k_accuracy};
pub use crate::average_precision::{
    average_precision, average_precision_ovr, average_precision_ovr_per_class, precision_recall_curve,
};
pub use crate::confusion_matrix::{confusion_matrix, normalize_confusion_matrix};
pub use crate::fbeta::{f1_score, f1_score_per_class, fbeta_score, fbeta_score_per_class};
pub use crate::mean_absolute_error::mean_absolute_error;
pub use crate::mean_squared_error::mean_squared_error;
pub use crate::perplexity::perplexity;
pub use crate::precision::{precision, precision_per_class};
pub use crate::r2_score::r2_score;
pub use crate::recall::{recall, recall_per_class};
pub use crate::roc_auc::{roc_auc, roc_auc_ovr, roc_auc_ovr_per_class, roc_curve};
