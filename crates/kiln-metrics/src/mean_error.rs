//! What [`MeanAbsoluteError`](crate::MeanAbsoluteError) and
//! [`MeanSquaredError`](crate::MeanSquaredError) share: a compensated sum of per-element
//! errors and their count, read, merged and averaged the same way.

/// The body of a mean-of-errors metric, a struct with fields `sum: CompensatedSum` and
/// `count: u64` that derives `Default`: `new`, `update_values` (adding `$error(pred -
/// target)` for each element, in `f64`), `count` and [`Metric`](crate::Metric). `$op` names
/// the metric in panic messages, `$name` in [`Metric::name`](crate::Metric::name).
macro_rules! mean_error_metric {
    ($T:ident, $op:literal, $name:literal, $what:literal, $error:expr) => {
        impl $T {
            #[doc = concat!("An empty ", $what, ".")]
            #[must_use]
            pub fn new() -> $T {
                $T::default()
            }

            /// Accumulates predictions and targets, element by element.
            ///
            /// **Panics** if the lengths differ.
            pub fn update_values<E: Float>(&mut self, preds: &[E], targets: &[E]) {
                check_same_len($op, preds.len(), targets.len());
                let error: fn(f64) -> f64 = $error;
                for (&p, &t) in preds.iter().zip(targets) {
                    self.sum.add(error(Float::to_f64(p) - Float::to_f64(t)));
                }
                self.count += targets.len() as u64;
            }

            /// The number of elements seen.
            #[must_use]
            pub fn count(&self) -> u64 {
                self.count
            }
        }

        impl Metric for $T {
            type Output = f64;

            fn name(&self) -> String {
                $name.to_string()
            }

            fn update(&mut self, preds: &dyn MetricInput, targets: &dyn MetricInput) {
                let (p, t) = read_regression($op, preds, targets);
                self.update_values(&p, &t);
            }

            fn compute(&self) -> f64 {
                self.sum.value() / self.count as f64
            }

            fn reset(&mut self) {
                *self = $T::default();
            }

            fn merge(&mut self, other: &$T) {
                self.sum.merge(&other.sum);
                self.count += other.count;
            }
        }
    };
}
pub(crate) use mean_error_metric;
