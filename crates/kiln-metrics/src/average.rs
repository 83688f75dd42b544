//! [`Average`]: how per-class scores become one number.

/// How per-class scores are reduced to one number, as scikit-learn's `average` argument.
///
/// The unreduced scores (scikit-learn's `average=None`) come from the `compute_per_class`
/// methods and the `*_per_class` functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Average {
    /// The score of class 1 only (scikit-learn's `'binary'`, `pos_label=1`); two classes only.
    Binary,
    /// Counts (true positives, false positives, false negatives) are summed over classes first,
    /// then one score is computed. For single-label multiclass data, micro precision, recall
    /// and F-score all equal the accuracy.
    Micro,
    /// The unweighted mean of the per-class scores: every class counts the same, including
    /// classes that never occur (their score is the zero-division value).
    Macro,
    /// The mean of the per-class scores weighted by support (the number of true samples of
    /// each class).
    Weighted,
}

impl Average {
    /// The suffix used in metric names: `""` for binary, `"_micro"`, `"_macro"`, `"_weighted"`.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Average::Binary => "",
            Average::Micro => "_micro",
            Average::Macro => "_macro",
            Average::Weighted => "_weighted",
        }
    }

    /// Panics if this average cannot be used with `num_classes` classes.
    pub(crate) fn check(self, op: &str, num_classes: usize) {
        assert!(
            self != Average::Binary || num_classes == 2,
            "{op}: Average::Binary needs 2 classes, got {num_classes}"
        );
    }
}

/// Mean of `values` weighted by `weights` (all ones when `None`), skipping NaN values: the
/// scikit-learn `_nanaverage` rule. When the weights of the remaining values sum to zero the
/// plain mean is returned; when nothing remains, NaN.
pub(crate) fn nan_average(values: &[f64], weights: Option<&[f64]>) -> f64 {
    let kept: Vec<usize> = (0..values.len()).filter(|&i| !values[i].is_nan()).collect();
    if kept.is_empty() {
        return f64::NAN;
    }
    let plain = || kept.iter().map(|&i| values[i]).sum::<f64>() / kept.len() as f64;
    match weights {
        None => plain(),
        Some(w) => {
            let total: f64 = kept.iter().map(|&i| w[i]).sum();
            if total == 0.0 {
                plain()
            } else {
                kept.iter().map(|&i| values[i] * w[i]).sum::<f64>() / total
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_average_follows_sklearn() {
        assert_eq!(nan_average(&[1.0, 0.0, 0.5], None), 0.5);
        assert_eq!(nan_average(&[1.0, f64::NAN, 0.5], None), 0.75);
        assert_eq!(nan_average(&[1.0, 0.0], Some(&[3.0, 1.0])), 0.75);
        // all weights zero: plain mean
        assert_eq!(nan_average(&[1.0, 0.0], Some(&[0.0, 0.0])), 0.5);
        // NaN values drop out together with their weights
        assert_eq!(nan_average(&[1.0, f64::NAN], Some(&[1.0, 5.0])), 1.0);
        assert!(nan_average(&[f64::NAN], None).is_nan());
        assert!(nan_average(&[], None).is_nan());
    }
}
