//! [`Model`]: what every method explains, a closure or a [`Forward`] module, and the batched
//! evaluation the methods share.

use kiln_autograd::{no_grad, Var};
use kiln_nn::Forward;
use kiln_tensor::{Float, Tensor};

/// How many inputs the methods put in one forward pass when the caller does not say.
pub const DEFAULT_BATCH_SIZE: usize = 128;

/// Marks the [`Model`] implementation of closures (`Fn(&Var<E>) -> Var<E>`).
pub enum ViaFn {}
/// Marks the [`Model`] implementation of [`Forward`] modules.
pub enum ViaForward {}

/// A model to explain: a closure `Fn(&Var<E>) -> Var<E>` or any [`Forward`] module
/// (`Sequential`, `Linear`, a `Box<dyn Layer>`, a user's struct).
///
/// Every method calls it on a **batch**: the explained input `x` has no batch dimension, and the
/// model receives `[N, ...x.shape()]` and returns `[N, C]` (one score per class, logits or
/// probabilities as the caller prefers) or `[N]` (one score). The explained output is column
/// `target` of `[N, C]` (`target` must be 0 for `[N]`). The rows of a batch must not influence
/// each other, so put the model in evaluation mode (`model.eval()`) first (batch statistics and
/// dropout would).
///
/// The second type parameter only tells the two implementations apart; it is inferred.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_explain::Model;
/// use kiln_nn::Linear;
/// use kiln_tensor::Tensor;
/// fn score<V>(model: &(impl Model<f32, V> + ?Sized), x: &Var<f32>) -> f32 {
///     model.predict(x).sum_all().item()
/// }
/// let x = Var::constant(Tensor::ones(&[1, 3]));
/// assert_eq!(score(&|x: &Var<f32>| x.mul_scalar(2.0), &x), 6.0); // a closure
/// let fc: Linear = Linear::new(3, 2);
/// assert!(score(&fc, &x).is_finite()); // a module
/// ```
pub trait Model<E: Float, Via = ViaFn> {
    /// Runs the model on a batch.
    fn predict(&self, x: &Var<E>) -> Var<E>;
}

impl<E: Float, F: Fn(&Var<E>) -> Var<E> + ?Sized> Model<E, ViaFn> for F {
    fn predict(&self, x: &Var<E>) -> Var<E> {
        self(x)
    }
}

impl<E: Float, M: Forward<E> + ?Sized> Model<E, ViaForward> for M {
    fn predict(&self, x: &Var<E>) -> Var<E> {
        self.forward(x)
    }
}

/// The model as a plain function object, so that the methods' bodies are compiled once per
/// element type rather than once per model type.
pub(crate) type DynModel<'a, E> = &'a dyn Fn(&Var<E>) -> Var<E>;

/// Column `target` of a `[N, C]` output, or the `[N]` output itself (then `target` must be 0).
///
/// **Panics** if the output has another shape, a different batch size or too few columns.
pub(crate) fn target_column<E: Float>(out: &Var<E>, n: usize, target: usize, method: &str) -> Var<E> {
    let shape = out.shape();
    match shape.as_slice() {
        [m] if *m == n => {
            assert!(target == 0, "{method}: target {target} for a model with one output per input (shape [{m}])");
            out.clone()
        }
        [m, c] if *m == n => {
            assert!(target < *c, "{method}: target {target} out of range for a model output of shape [{m}, {c}]");
            out.select(1, target)
        }
        s => panic!("{method}: the model must map a batch of {n} inputs to [{n}, classes] or [{n}], got {s:?}"),
    }
}

/// `[N, ...shape]` from `N` flattened inputs.
pub(crate) fn batch_shape(n: usize, shape: &[usize]) -> Vec<usize> {
    let mut s = Vec::with_capacity(shape.len() + 1);
    s.push(n);
    s.extend_from_slice(shape);
    s
}

/// The explained output for each of `rows` inputs of shape `shape` (stored one after another in
/// `data`), with recording off, `batch_size` inputs per forward pass.
pub(crate) fn evaluate<E: Float>(
    model: DynModel<'_, E>,
    data: &[E],
    shape: &[usize],
    target: usize,
    batch_size: usize,
    method: &str,
) -> Vec<f64> {
    let numel: usize = shape.iter().product();
    let rows = data.len().checked_div(numel).unwrap_or(0);
    assert!(batch_size > 0, "{method}: batch_size must be > 0");
    let mut out = Vec::with_capacity(rows);
    no_grad(|| {
        for start in (0..rows).step_by(batch_size) {
            let n = batch_size.min(rows - start);
            let chunk = &data[start * numel..(start + n) * numel];
            let x = Var::constant(Tensor::from_slice(chunk, &batch_shape(n, shape)));
            let y = target_column(&model(&x), n, target, method);
            out.extend(y.value().to_vec().into_iter().map(|v| v.to_f64()));
        }
    });
    out
}

/// The gradient of the explained output with respect to each of `rows` inputs (stored one after
/// another in `data`), with the outputs themselves; `batch_size` inputs per pass.
///
/// The model's parameters are not touched: gradients are captured with
/// [`kiln_autograd::grad`], not accumulated into `.grad()`.
pub(crate) fn gradients<E: Float>(
    model: DynModel<'_, E>,
    data: &[E],
    shape: &[usize],
    target: usize,
    batch_size: usize,
    method: &str,
) -> (Vec<E>, Vec<f64>) {
    let numel: usize = shape.iter().product();
    let rows = data.len().checked_div(numel).unwrap_or(0);
    assert!(batch_size > 0, "{method}: batch_size must be > 0");
    let mut grads = Vec::with_capacity(data.len());
    let mut outputs = Vec::with_capacity(rows);
    for start in (0..rows).step_by(batch_size) {
        let n = batch_size.min(rows - start);
        let chunk = &data[start * numel..(start + n) * numel];
        let x = Var::param(Tensor::from_slice(chunk, &batch_shape(n, shape)));
        let _on = kiln_autograd::set_grad_enabled(true);
        let y = target_column(&model(&x), n, target, method);
        outputs.extend(y.value().to_vec().into_iter().map(|v| v.to_f64()));
        // The rows are independent, so d(sum of outputs)/d(row i) is d(output i)/d(row i).
        let total = y.sum_all();
        let g =
            if total.requires_grad() { kiln_autograd::grad(&[total], &[x], None, false).pop().flatten() } else { None };
        match g {
            Some(g) => grads.extend(g.value().to_vec()),
            // The output does not depend on the input: a zero gradient.
            None => grads.extend(std::iter::repeat_n(E::zero(), n * numel)),
        }
    }
    (grads, outputs)
}
