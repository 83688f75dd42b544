//! Strategies and helpers shared by the ops' property tests.

use kiln_tensor::Tensor;
use proptest::prelude::*;

use crate::gradcheck::{gradcheck, gradgradcheck, GradcheckError, GradcheckReport};
use crate::var::Var;

/// Default tolerances for f64 gradchecks of kiln's ops.
pub const EPS: f64 = 1e-6;
/// Absolute tolerance.
pub const ATOL: f64 = 1e-6;
/// Relative tolerance.
pub const RTOL: f64 = 1e-4;

/// `gradcheck` with the default tolerances.
pub fn check(f: impl Fn(&[Var<f64>]) -> Var<f64>, inputs: &[Tensor<f64>]) -> Result<GradcheckReport, GradcheckError> {
    gradcheck(f, inputs, EPS, ATOL, RTOL)
}

/// `gradgradcheck` with the default tolerances.
pub fn check2(f: impl Fn(&[Var<f64>]) -> Var<f64>, inputs: &[Tensor<f64>]) -> Result<GradcheckReport, GradcheckError> {
    gradgradcheck(f, inputs, EPS, ATOL, RTOL)
}

/// A shape of 1 to 3 dims with sizes 1 to 4.
pub fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, 1..=3)
}

/// Values in [-2, 2] of the given shape.
pub fn values(shape: Vec<usize>) -> impl Strategy<Value = Tensor<f64>> {
    let n: usize = shape.iter().product();
    prop::collection::vec(-2.0f64..2.0, n).prop_map(move |v| Tensor::from_vec(v, &shape))
}

/// A random small tensor.
pub fn tensor_strategy() -> impl Strategy<Value = Tensor<f64>> {
    shape_strategy().prop_flat_map(values)
}

/// Two tensors whose shapes broadcast together (some dims dropped or set to 1).
pub fn broadcast_pair() -> impl Strategy<Value = (Tensor<f64>, Tensor<f64>)> {
    (shape_strategy(), any::<u64>()).prop_flat_map(|(shape, bits)| {
        let mut b = shape.clone();
        for (i, d) in b.iter_mut().enumerate() {
            if bits >> i & 1 == 1 {
                *d = 1;
            }
        }
        let drop = (bits >> 8) as usize % b.len();
        let b: Vec<usize> = b[drop..].to_vec();
        let swap = bits >> 12 & 1 == 1;
        let (sa, sb) = if swap { (b, shape) } else { (shape, b) };
        (values(sa), values(sb))
    })
}

/// The same values laid out non-contiguously (a transposed copy transposed back, or flipped
/// twice), to exercise strided inputs.
pub fn noncontiguous(t: &Tensor<f64>) -> Tensor<f64> {
    let nd = t.ndim() as isize;
    if nd >= 2 {
        t.transpose(0, nd - 1).contiguous().transpose(0, nd - 1)
    } else {
        t.flip(&[0]).contiguous().flip(&[0])
    }
}

/// Asserts that `f` and `g` (a fused op and its composition) have the same second-order
/// gradients at `inputs`, within `tol` (relative to 1 + |value|): with fixed weights `u` of the
/// output and `v_k` of the first-order gradients, `∂/∂x_j Σ_k Σ v_k ⊙ ∂(Σ u ⊙ f)/∂x_k`,
/// the first-order gradients taken with `create_graph`.
///
/// **Panics** naming the input and element that differ.
pub fn assert_same_second_order(
    f: impl Fn(&[Var<f64>]) -> Var<f64>,
    g: impl Fn(&[Var<f64>]) -> Var<f64>,
    inputs: &[Tensor<f64>],
    tol: f64,
) {
    // deterministic weights in [-1, 1] that differ between elements
    let weights = |shape: &[usize], salt: usize| {
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|i| ((i * 7 + salt * 3) % 11) as f64 / 5.0 - 1.0).collect(), shape)
    };
    let second = |h: &dyn Fn(&[Var<f64>]) -> Var<f64>| -> Vec<Vec<f64>> {
        let xs: Vec<Var<f64>> = inputs.iter().map(|t| Var::param(t.clone())).collect();
        let y = h(&xs);
        let u = Var::constant(weights(&y.shape(), 0));
        let first = crate::grad(&[y.mul(&u).sum_all()], &xs, None, true);
        let mut s: Option<Var<f64>> = None;
        for (k, d) in first.iter().enumerate() {
            if let Some(d) = d {
                let term = d.mul(&Var::constant(weights(&d.shape(), k + 1))).sum_all();
                s = Some(match s {
                    Some(s) => s.add(&term),
                    None => term,
                });
            }
        }
        let s = s.expect("assert_same_second_order: no first-order gradient");
        assert!(s.requires_grad(), "assert_same_second_order: the first-order gradients are constants");
        let second = crate::grad(&[s], &xs, None, false);
        second
            .iter()
            .zip(inputs)
            .map(|(d, x)| d.as_ref().map_or_else(|| vec![0.0; x.numel()], |d| d.value().to_vec()))
            .collect()
    };
    let (a, b) = (second(&f), second(&g));
    for (k, (a, b)) in a.iter().zip(&b).enumerate() {
        for (e, (p, q)) in a.iter().zip(b).enumerate() {
            assert!((p - q).abs() <= tol * (1.0 + q.abs()), "second order, input {k} element {e}: {p} vs {q}");
        }
    }
}
