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
