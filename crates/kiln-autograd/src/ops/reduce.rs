//! Reductions: sum, mean (more reductions join this file).

use kiln_tensor::Float;

use super::unary_op;
use crate::var::Var;

/// Normalised reduction axes of a shape (all when empty).
pub(crate) fn axes_of(shape: &[usize], axes: &[isize]) -> Vec<usize> {
    let n = shape.len() as isize;
    if axes.is_empty() {
        return (0..shape.len()).collect();
    }
    let mut v: Vec<usize> = axes.iter().map(|&a| (if a < 0 { a + n } else { a }) as usize).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The shape of a reduction's result with the reduced dims kept as size 1.
pub(crate) fn keepdim_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n }).collect()
}

impl<E: Float> Var<E> {
    /// Sum over `axes` (all when empty), like `x.sum(dim, keepdim)`.
    // d sum(x)/dx = 1 (the gradient broadcast back over the reduced axes)
    #[must_use]
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let axes_v = axes.to_vec();
        unary_op(self, "sum", |x| x.sum(axes, keepdim), move |x, _, g| {
            let shape = x.shape();
            let kept = keepdim_shape(&shape, &axes_of(&shape, &axes_v));
            g.reshape(&kept).expand(&shape)
        })
    }

    /// Sum of all elements (a 0-d `Var`).
    #[must_use]
    pub fn sum_all(&self) -> Var<E> {
        self.sum(&[], false)
    }

    /// Mean over `axes` (all when empty).
    // d mean(x)/dx = 1/n
    #[must_use]
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Var<E> {
        let shape = self.shape();
        let n: usize = axes_of(&shape, axes).iter().map(|&d| shape[d]).product();
        self.sum(axes, keepdim).mul_scalar(E::from_usize(n).recip())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, tensor_strategy};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn gradcheck_sum_mean(x in tensor_strategy(), axis_bits in 0u8..8, keepdim: bool) {
            let nd = x.ndim();
            let axes: Vec<isize> = (0..nd).filter(|d| axis_bits >> d & 1 == 1).map(|d| d as isize).collect();
            let xn = noncontiguous(&x);
            for inp in [x.clone(), xn] {
                let r = check(|v| v[0].sum(&axes, keepdim), std::slice::from_ref(&inp));
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
                let r = check(|v| v[0].mean(&axes, keepdim), std::slice::from_ref(&inp));
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
                let r = check2(|v| v[0].mul(&v[0]).sum(&axes, keepdim), std::slice::from_ref(&inp));
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            }
        }
    }
}
