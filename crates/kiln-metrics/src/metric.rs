//! The [`Metric`] trait every stateful metric implements, and [`MetricInput`], what it reads.

use kiln_tensor::{Float, Indices, Tensor};

/// Something a metric can read: a shape and its values in row-major (logical) order.
///
/// Implemented for [`Tensor<f32>`], [`Tensor<f64>`] and [`Indices`], so [`Metric::update`]
/// takes any of them (`&tensor` coerces to `&dyn MetricInput`). Class indices may come as
/// [`Indices`] or as floating tensors whose values are whole numbers in `0..num_classes`.
pub trait MetricInput {
    /// The shape, outermost axis first.
    fn shape(&self) -> Vec<usize>;
    /// The values in row-major order, converted to `f64` (exactly, for `f32` and `f64`).
    fn to_f64_vec(&self) -> Vec<f64>;
}

impl<E: Float> MetricInput for Tensor<E> {
    fn shape(&self) -> Vec<usize> {
        Tensor::shape(self).to_vec()
    }

    fn to_f64_vec(&self) -> Vec<f64> {
        self.to_vec().into_iter().map(Float::to_f64).collect()
    }
}

impl MetricInput for Indices {
    fn shape(&self) -> Vec<usize> {
        Indices::shape(self).to_vec()
    }

    fn to_f64_vec(&self) -> Vec<f64> {
        self.as_slice().iter().map(|&i| i as f64).collect()
    }
}

/// A metric that accumulates over batches: `update` per batch, `compute` at the end, `reset`
/// for the next epoch, and `merge` to combine partial results computed by several workers.
///
/// Every metric also has slice-level `update_*` methods (`update_labels`, `update_scores`,
/// `update_values`, ...) that this trait's `update` calls after reading the tensors; use them
/// directly when predictions are already plain Rust vectors.
///
/// Merging is exact: updating one metric with batches `a` then `b` gives the same state as
/// updating one copy with `a`, another with `b`, and merging the second into the first
/// (counting metrics add their counts; [`RocAuc`](crate::RocAuc) and
/// [`AveragePrecision`](crate::AveragePrecision) concatenate the scores they keep).
///
/// The trait is object safe apart from `merge` (which needs `Self: Sized`), so a trainer can
/// keep a `Vec<Box<dyn Metric<Output = f64>>>`.
///
/// # Example
///
/// ```
/// use kiln_metrics::{Accuracy, Metric};
/// use kiln_tensor::Tensor;
///
/// // Two workers, each sees half of the data.
/// let mut a = Accuracy::multiclass(3);
/// let mut b = a.clone();
/// let logits = Tensor::from_vec(vec![2.0f32, 0.1, 0.3, 0.2, 0.1, 3.0], &[2, 3]);
/// a.update(&logits, &Tensor::from_vec(vec![0.0f32, 1.0], &[2]));
/// b.update(&Tensor::from_vec(vec![1.0f32, 1.0], &[2]), &Tensor::from_vec(vec![1.0f32, 1.0], &[2]));
/// a.merge(&b);
/// assert_eq!(a.compute(), 0.75);
/// a.reset();
/// assert!(a.compute().is_nan()); // nothing seen yet
/// ```
pub trait Metric {
    /// What [`compute`](Metric::compute) returns: `f64` for every metric except
    /// [`ConfusionMatrix`](crate::ConfusionMatrix).
    type Output;

    /// A short name for logs and history columns, e.g. `"accuracy"`, `"f1_macro"`, `"mse"`.
    fn name(&self) -> String;

    /// Accumulates one batch of predictions and targets.
    ///
    /// **Panics** if the shapes do not fit the metric (the message names the metric and both
    /// shapes), or a target is not a valid class index.
    fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput);

    /// The metric over everything accumulated since the last [`reset`](Metric::reset).
    fn compute(&self) -> Self::Output;

    /// Forgets everything accumulated; the configuration is kept.
    fn reset(&mut self);

    /// Adds the state of `other` (same configuration, e.g. another worker's copy) to `self`.
    ///
    /// **Panics** if the two metrics are configured differently.
    fn merge(&mut self, other: &Self)
    where
        Self: Sized;
}
