//! Arithmetic: `+ - * /`, powers, maximum/minimum, scalar forms, and `sum_to` (the one helper
//! every broadcasting backward reduces its gradient with).

use std::ops::{Add, Div, Mul, Neg, Sub};

use kiln_tensor::{Float, Tensor};
use smallvec::smallvec;

use super::{binary_op, unary_op, OpFn};
use crate::trace::float;
use crate::var::{Grads, Var};

impl<E: Float> Var<E> {
    /// Sums a broadcast gradient back to `shape`: over the leading dimensions `shape` lacks
    /// and over the dimensions where `shape` has size 1. A no-op when the shapes match.
    #[must_use]
    pub fn sum_to(&self, shape: &[usize]) -> Var<E> {
        let own = self.shape();
        if own.as_slice() == shape {
            return self.clone();
        }
        let lead = own.len() - shape.len();
        let mut axes: Vec<isize> = (0..lead as isize).collect();
        for (i, &s) in shape.iter().enumerate() {
            if s == 1 && own[lead + i] != 1 {
                axes.push((lead + i) as isize);
            }
        }
        let summed = if axes.is_empty() { self.clone() } else { self.sum(&axes, true) };
        // drop the leading (now size-1) dims
        summed.reshape(shape)
    }

    /// `self + other` with broadcasting.
    // d(a+b)/da = 1, d(a+b)/db = 1
    #[must_use]
    pub fn add(&self, other: &Var<E>) -> Var<E> {
        binary_op(self, other, "add", |a, b| a.add(b), |_, _, _, g| g.clone(), |_, _, _, g| g.clone())
    }

    /// `self - other` with broadcasting.
    // d(a-b)/da = 1, d(a-b)/db = -1
    #[must_use]
    pub fn sub(&self, other: &Var<E>) -> Var<E> {
        binary_op(self, other, "sub", |a, b| a.sub(b), |_, _, _, g| g.clone(), |_, _, _, g| g.neg())
    }

    /// `self * other` with broadcasting.
    // d(ab)/da = b, d(ab)/db = a
    #[must_use]
    pub fn mul(&self, other: &Var<E>) -> Var<E> {
        binary_op(self, other, "mul", |a, b| a.mul(b), |_, b, _, g| g.mul(b), |a, _, _, g| g.mul(a))
    }

    /// `self / other` with broadcasting.
    // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
    #[must_use]
    pub fn div(&self, other: &Var<E>) -> Var<E> {
        binary_op(
            self,
            other,
            "div",
            |a, b| a.div(b),
            |_, b, _, g| g.div(b),
            |a, b, _, g| g.mul(a).div(&b.mul(b)).neg(),
        )
    }

    /// `self ^ other` elementwise with broadcasting (base > 0 for a gradient in the exponent).
    // d(a^b)/da = b a^(b-1), d(a^b)/db = a^b ln a
    #[must_use]
    pub fn pow(&self, other: &Var<E>) -> Var<E> {
        binary_op(
            self,
            other,
            "pow",
            |a, b| a.pow(b),
            |a, b, _, g| g.mul(b).mul(&a.pow(&b.add_scalar(-E::one()))),
            |a, _, out, g| g.mul(out).mul(&a.log()),
        )
    }

    /// Elementwise maximum; where equal, the gradient is split evenly (as PyTorch does).
    // d max(a,b)/da = [a > b] + [a == b]/2
    #[must_use]
    pub fn maximum(&self, other: &Var<E>) -> Var<E> {
        binary_op(
            self,
            other,
            "maximum",
            |a, b| a.maximum(b),
            |a, b, _, g| g.mul(&Var::constant(select_weight(a, b, true))),
            |a, b, _, g| g.mul(&Var::constant(select_weight(b, a, true))),
        )
    }

    /// Elementwise minimum; where equal, the gradient is split evenly.
    // d min(a,b)/da = [a < b] + [a == b]/2
    #[must_use]
    pub fn minimum(&self, other: &Var<E>) -> Var<E> {
        binary_op(
            self,
            other,
            "minimum",
            |a, b| a.minimum(b),
            |a, b, _, g| g.mul(&Var::constant(select_weight(a, b, false))),
            |a, b, _, g| g.mul(&Var::constant(select_weight(b, a, false))),
        )
    }

    /// `-self`.
    // d(-x)/dx = -1
    #[must_use]
    pub fn neg(&self) -> Var<E> {
        unary_op(self, "neg", |x| x.neg(), |_, _, g| g.neg())
    }

    /// `self + s`.
    // d(x+s)/dx = 1
    #[must_use]
    pub fn add_scalar(&self, s: E) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("scalar", float(s.to_f64()))]);
        Var::from_op(
            self.with_value(|x| x.add_scalar(s)),
            smallvec![self.clone()],
            OpFn {
                name: "add_scalar",
                f: |g: &Var<E>, _: &[Var<E>], _: &Var<E>| -> Grads<E> { smallvec![Some(g.clone())] },
            },
        )
    }

    /// `self - s`.
    #[must_use]
    pub fn sub_scalar(&self, s: E) -> Var<E> {
        self.add_scalar(-s)
    }

    /// `self * s`.
    // d(xs)/dx = s
    #[must_use]
    pub fn mul_scalar(&self, s: E) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("scalar", float(s.to_f64()))]);
        Var::from_op(
            self.with_value(|x| x.mul_scalar(s)),
            smallvec![self.clone()],
            OpFn {
                name: "mul_scalar",
                f: move |g: &Var<E>, _: &[Var<E>], _: &Var<E>| -> Grads<E> { smallvec![Some(g.mul_scalar(s))] },
            },
        )
    }

    /// `self / s`.
    #[must_use]
    pub fn div_scalar(&self, s: E) -> Var<E> {
        self.mul_scalar(s.recip())
    }

    /// `s - self`.
    // d(s-x)/dx = -1
    #[must_use]
    pub fn rsub_scalar(&self, s: E) -> Var<E> {
        self.neg().add_scalar(s)
    }

    /// `s / self`.
    // d(s/x)/dx = -s/x^2
    #[must_use]
    pub fn rdiv_scalar(&self, s: E) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("scalar", float(s.to_f64()))]);
        unary_op(self, "rdiv_scalar", |x| x.rdiv_scalar(s), move |x, _, g| g.mul_scalar(-s).div(&x.mul(x)))
    }

    /// `self ^ e` with a scalar exponent.
    // d(x^e)/dx = e x^(e-1)
    #[must_use]
    pub fn powf(&self, e: f64) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("exponent", float(e))]);
        unary_op(
            self,
            "powf",
            |x| x.powf(e),
            move |x, _, g| {
                if e == 2.0 {
                    g.mul(x).mul_scalar(E::from_f64(2.0))
                } else {
                    g.mul(&x.powf(e - 1.0)).mul_scalar(E::from_f64(e))
                }
            },
        )
    }
}

/// Weight of `a` in max (or min) with `b`: 1 where `a` wins, 1/2 on ties, 0 elsewhere, at
/// the broadcast shape.
fn select_weight<E: Float>(a: &Var<E>, b: &Var<E>, max: bool) -> Tensor<E> {
    let half = E::from_f64(0.5);
    a.with_value(|x| {
        b.with_value(|y| {
            x.zip_map(y, "maximum", move |p, q| {
                if p == q {
                    half
                } else if (p > q) == max {
                    E::one()
                } else {
                    E::zero()
                }
            })
        })
    })
}

macro_rules! std_ops {
    ($($trait:ident, $method:ident;)*) => {$(
        impl<E: Float> $trait<&Var<E>> for &Var<E> {
            type Output = Var<E>;
            fn $method(self, rhs: &Var<E>) -> Var<E> { Var::$method(self, rhs) }
        }
        impl<E: Float> $trait<Var<E>> for Var<E> {
            type Output = Var<E>;
            fn $method(self, rhs: Var<E>) -> Var<E> { Var::$method(&self, &rhs) }
        }
        impl<E: Float> $trait<&Var<E>> for Var<E> {
            type Output = Var<E>;
            fn $method(self, rhs: &Var<E>) -> Var<E> { Var::$method(&self, rhs) }
        }
    )*};
}
std_ops! { Add, add; Sub, sub; Mul, mul; Div, div; }

impl<E: Float> Neg for &Var<E> {
    type Output = Var<E>;
    fn neg(self) -> Var<E> {
        Var::neg(self)
    }
}

#[cfg(test)]
mod tests {
    // Not `super::*`: that would bring std::ops::Mul into scope, and `v.mul(..)` on an owned
    // Var would then pick the by-value operator.
    use crate::testing::{broadcast_pair, check, check2, noncontiguous, tensor_strategy};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }

    #[test]
    fn values_and_simple_grads() {
        let a = Var::param(t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]));
        let b = Var::param(t(&[10.0, 20.0, 30.0], &[3]));
        let y = (&a * &b).sum_all();
        assert_eq!(y.item(), 10.0 + 40.0 + 90.0 + 40.0 + 100.0 + 180.0);
        y.backward();
        assert_eq!(a.grad().unwrap().to_vec(), vec![10.0, 20.0, 30.0, 10.0, 20.0, 30.0]);
        assert_eq!(b.grad().unwrap().to_vec(), vec![5.0, 7.0, 9.0]);
    }

    #[test]
    fn maximum_splits_ties() {
        let a = Var::param(t(&[1.0, 2.0, 3.0], &[3]));
        let b = Var::param(t(&[2.0, 2.0, 1.0], &[3]));
        a.maximum(&b).sum_all().backward();
        assert_eq!(a.grad().unwrap().to_vec(), vec![0.0, 0.5, 1.0]);
        assert_eq!(b.grad().unwrap().to_vec(), vec![1.0, 0.5, 0.0]);
    }

    fn check_binary(
        f: impl Fn(&Var<f64>, &Var<f64>) -> Var<f64>,
        a: Tensor<f64>,
        b: Tensor<f64>,
    ) -> Result<(), TestCaseError> {
        let r = check(|v| f(&v[0], &v[1]), &[a.clone(), b.clone()]);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn gradcheck_binary_broadcasting((a, b) in broadcast_pair(), nc in any::<bool>()) {
            let (a, b) = if nc { (noncontiguous(&a), b) } else { (a, b) };
            check_binary(|x, y| x.add(y), a.clone(), b.clone())?;
            check_binary(|x, y| x.sub(y), a.clone(), b.clone())?;
            check_binary(|x, y| x.mul(y), a.clone(), b.clone())?;
            // keep denominators and bases away from 0
            let bpos = b.abs().add_scalar(0.5);
            let apos = a.abs().add_scalar(0.5);
            check_binary(|x, y| x.div(y), a.clone(), bpos.clone())?;
            check_binary(|x, y| x.pow(y), apos, b.clone())?;
            check_binary(|x, y| x.maximum(y), a.clone(), b.add_scalar(0.25))?;
            check_binary(|x, y| x.minimum(y), a.clone(), b.add_scalar(0.25))?;
        }

        #[test]
        fn gradcheck_scalar_forms(x in tensor_strategy()) {
            let xp = x.abs().add_scalar(0.5);
            for r in [
                check(|v| v[0].add_scalar(1.5), std::slice::from_ref(&x)),
                check(|v| v[0].mul_scalar(-2.5), std::slice::from_ref(&x)),
                check(|v| v[0].rsub_scalar(2.0), std::slice::from_ref(&x)),
                check(|v| v[0].neg(), std::slice::from_ref(&x)),
                check(|v| v[0].rdiv_scalar(2.0), std::slice::from_ref(&xp)),
                check(|v| v[0].powf(3.0), std::slice::from_ref(&x)),
                check(|v| v[0].powf(2.0), std::slice::from_ref(&x)),
                check(|v| v[0].powf(-1.5), std::slice::from_ref(&xp)),
                check2(|v| v[0].mul(&v[0]).mul(&v[0]), std::slice::from_ref(&x)),
                check2(|v| v[0].div(&v[0].add_scalar(5.0)), std::slice::from_ref(&xp)),
            ] {
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            }
        }
    }
}
