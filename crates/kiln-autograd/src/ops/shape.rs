//! Shape ops: reshape, expand (more view ops join this file).

use kiln_tensor::Float;

use super::unary_op;
use crate::var::Var;

impl<E: Float> Var<E> {
    /// The same elements with a new shape (a view when possible), like `torch.reshape`.
    // d reshape(x)/dx: reshape the gradient back
    #[must_use]
    pub fn reshape(&self, shape: &[usize]) -> Var<E> {
        unary_op(self, "reshape", |x| x.reshape(shape), |x, _, g| g.reshape(&x.shape()))
    }

    /// Broadcasts to `shape` without copying, like `expand`.
    // d expand(x)/dx: sum the gradient back to x's shape
    #[must_use]
    pub fn expand(&self, shape: &[usize]) -> Var<E> {
        unary_op(self, "expand", |x| x.expand(shape), |x, _, g| g.sum_to(&x.shape()))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, tensor_strategy};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn gradcheck_reshape_expand(x in tensor_strategy()) {
            let n = x.numel();
            let r = check(|v| v[0].reshape(&[n]), std::slice::from_ref(&x));
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            let mut big = vec![2usize];
            big.extend_from_slice(x.shape());
            let r = check(|v| v[0].expand(&big), std::slice::from_ref(&x));
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            let r = check2(|v| v[0].mul(&v[0]).expand(&big), std::slice::from_ref(&x));
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}
