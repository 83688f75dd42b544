//! Unary functions and activations.

use kiln_tensor::{Float, Tensor};

use super::unary_op;
use crate::trace::float;
use crate::var::Var;

/// A constant holding `f` applied to `x`'s value (masks and other non-differentiable factors
/// of a derivative).
fn const_of<E: Float>(x: &Var<E>, f: impl Fn(E) -> E + Sync + Send) -> Var<E> {
    Var::constant(x.with_value(|v| v.map(f)))
}

impl<E: Float> Var<E> {
    /// `e^x`.
    // d exp(x)/dx = exp(x)
    #[must_use]
    pub fn exp(&self) -> Var<E> {
        unary_op(self, "exp", Tensor::exp, |_, out, g| g.mul(out))
    }
    /// `e^x - 1`.
    // d expm1(x)/dx = exp(x)
    #[must_use]
    pub fn expm1(&self) -> Var<E> {
        unary_op(self, "expm1", Tensor::expm1, |_, out, g| g.mul(&out.add_scalar(E::one())))
    }
    /// Natural logarithm.
    // d ln(x)/dx = 1/x
    #[must_use]
    pub fn log(&self) -> Var<E> {
        unary_op(self, "log", Tensor::log, |x, _, g| g.div(x))
    }
    /// `ln(1 + x)`.
    // d ln(1+x)/dx = 1/(1+x)
    #[must_use]
    pub fn log1p(&self) -> Var<E> {
        unary_op(self, "log1p", Tensor::log1p, |x, _, g| g.div(&x.add_scalar(E::one())))
    }
    /// Square root.
    // d sqrt(x)/dx = 1/(2 sqrt(x))
    #[must_use]
    pub fn sqrt(&self) -> Var<E> {
        unary_op(self, "sqrt", Tensor::sqrt, |_, out, g| g.div(&out.mul_scalar(E::from_f64(2.0))))
    }
    /// `1 / sqrt(x)`.
    // d x^(-1/2)/dx = -1/2 x^(-3/2) = -out^3 / 2
    #[must_use]
    pub fn rsqrt(&self) -> Var<E> {
        unary_op(self, "rsqrt", Tensor::rsqrt, |_, out, g| g.mul(&out.mul(out).mul(out)).mul_scalar(E::from_f64(-0.5)))
    }
    /// `x^2`.
    // d x^2/dx = 2x
    #[must_use]
    pub fn square(&self) -> Var<E> {
        unary_op(self, "square", Tensor::square, |x, _, g| g.mul(x).mul_scalar(E::from_f64(2.0)))
    }
    /// `1 / x`.
    // d (1/x)/dx = -1/x^2 = -out^2
    #[must_use]
    pub fn reciprocal(&self) -> Var<E> {
        unary_op(self, "reciprocal", Tensor::reciprocal, |_, out, g| g.mul(&out.mul(out)).neg())
    }
    /// `|x|` (gradient 0 at 0, as PyTorch).
    // d|x|/dx = sign(x)
    #[must_use]
    pub fn abs(&self) -> Var<E> {
        unary_op(self, "abs", Tensor::abs, |x, _, g| g.mul(&Var::constant(x.with_value(|v| v.sign()))))
    }
    /// The sign (-1, 0, 1); its gradient is zero.
    // d sign(x)/dx = 0
    #[must_use]
    pub fn sign(&self) -> Var<E> {
        unary_op(self, "sign", Tensor::sign, |_, _, g| g.mul_scalar(E::zero()))
    }
    /// Sine.
    // d sin(x)/dx = cos(x)
    #[must_use]
    pub fn sin(&self) -> Var<E> {
        unary_op(self, "sin", Tensor::sin, |x, _, g| g.mul(&x.cos()))
    }
    /// Cosine.
    // d cos(x)/dx = -sin(x)
    #[must_use]
    pub fn cos(&self) -> Var<E> {
        unary_op(self, "cos", Tensor::cos, |x, _, g| g.mul(&x.sin()).neg())
    }
    /// Hyperbolic tangent.
    // d tanh(x)/dx = 1 - tanh(x)^2
    #[must_use]
    pub fn tanh(&self) -> Var<E> {
        unary_op(self, "tanh", Tensor::tanh, |_, out, g| g.mul(&out.mul(out).rsub_scalar(E::one())))
    }
    /// Logistic sigmoid.
    // d sigmoid(x)/dx = s (1 - s)
    #[must_use]
    pub fn sigmoid(&self) -> Var<E> {
        unary_op(self, "sigmoid", Tensor::sigmoid, |_, out, g| g.mul(&out.mul(&out.rsub_scalar(E::one()))))
    }
    /// `max(x, 0)` (gradient 0 at 0, as PyTorch).
    // d relu(x)/dx = [x > 0]
    #[must_use]
    pub fn relu(&self) -> Var<E> {
        unary_op(self, "relu", Tensor::relu, |x, _, g| {
            g.mul(&const_of(x, |v| if v > E::zero() { E::one() } else { E::zero() }))
        })
    }
    /// Leaky ReLU with the given negative slope (PyTorch's default is 0.01).
    // d lrelu(x)/dx = 1 if x > 0 else slope
    #[must_use]
    pub fn leaky_relu(&self, slope: f64) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("alpha", float(slope))]);
        let s = E::from_f64(slope);
        unary_op(
            self,
            "leaky_relu",
            |x| x.leaky_relu(slope),
            move |x, _, g| g.mul(&const_of(x, move |v| if v > E::zero() { E::one() } else { s })),
        )
    }
    /// ELU with the given alpha (PyTorch's default is 1).
    // d elu(x)/dx = 1 if x > 0 else alpha e^x
    #[must_use]
    pub fn elu(&self, alpha: f64) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("alpha", float(alpha))]);
        let a = E::from_f64(alpha);
        unary_op(
            self,
            "elu",
            |x| x.elu(alpha),
            move |x, _, g| {
                let pos = const_of(x, |v| if v > E::zero() { E::one() } else { E::zero() });
                // alpha e^x on the negative side, written with Var ops for higher order
                let neg = x.exp().mul_scalar(a).mul(&pos.rsub_scalar(E::one()));
                g.mul(&pos.add(&neg))
            },
        )
    }
    /// GELU, exact erf form.
    // d gelu(x)/dx = Phi(x) + x phi(x)
    #[must_use]
    pub fn gelu(&self) -> Var<E> {
        unary_op(self, "gelu", Tensor::gelu, |x, _, g| {
            let inv_sqrt2 = E::from_f64(std::f64::consts::FRAC_1_SQRT_2);
            let inv_sqrt_2pi = E::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt());
            let cdf =
                Var::constant(x.with_value(|v| v.map(move |t| E::from_f64(0.5) * (E::one() + (t * inv_sqrt2).erf()))));
            // phi(x) = e^(-x^2/2) / sqrt(2 pi), differentiable in x
            let pdf = x.mul(x).mul_scalar(E::from_f64(-0.5)).exp().mul_scalar(inv_sqrt_2pi);
            let cdf_part = if crate::is_grad_enabled() {
                // Phi(x) with its own derivative phi(x) for higher orders
                unary_op(
                    x,
                    "normal_cdf",
                    move |v| v.map(move |t| E::from_f64(0.5) * (E::one() + (t * inv_sqrt2).erf())),
                    move |y, _, gg| gg.mul(&y.mul(y).mul_scalar(E::from_f64(-0.5)).exp().mul_scalar(inv_sqrt_2pi)),
                )
            } else {
                cdf
            };
            g.mul(&cdf_part.add(&x.mul(&pdf)))
        })
    }
    /// GELU, tanh approximation (`approximate='tanh'`).
    // u = k (x + c x^3), gelu = x/2 (1 + tanh u); d/dx = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) k (1 + 3c x^2)
    #[must_use]
    pub fn gelu_tanh(&self) -> Var<E> {
        unary_op(self, "gelu_tanh", Tensor::gelu_tanh, |x, _, g| {
            let k = E::from_f64((2.0 / std::f64::consts::PI).sqrt());
            let c = E::from_f64(0.044715);
            let half = E::from_f64(0.5);
            let x2 = x.mul(x);
            let th = x.add(&x2.mul(x).mul_scalar(c)).mul_scalar(k).tanh();
            let left = th.add_scalar(E::one()).mul_scalar(half);
            let right = x
                .mul_scalar(half)
                .mul(&th.mul(&th).rsub_scalar(E::one()))
                .mul(&x2.mul_scalar(E::from_f64(3.0) * c).add_scalar(E::one()))
                .mul_scalar(k);
            g.mul(&left.add(&right))
        })
    }
    /// SiLU: `x sigmoid(x)`.
    // d silu(x)/dx = s (1 + x (1 - s))
    #[must_use]
    pub fn silu(&self) -> Var<E> {
        unary_op(self, "silu", Tensor::silu, |x, _, g| {
            let s = x.sigmoid();
            g.mul(&s.mul(&x.mul(&s.rsub_scalar(E::one())).add_scalar(E::one())))
        })
    }
    /// Softplus `ln(1 + e^(beta x)) / beta`, linear above `threshold` (defaults 1, 20).
    // d softplus(x)/dx = sigmoid(beta x) (1 above the threshold)
    #[must_use]
    pub fn softplus(&self, beta: f64, threshold: f64) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("beta", float(beta)), ("threshold", float(threshold))]);
        let (b, t) = (E::from_f64(beta), E::from_f64(threshold));
        unary_op(
            self,
            "softplus",
            |x| x.softplus(beta, threshold),
            move |x, _, g| {
                let lin = const_of(x, move |v| if v * b > t { E::one() } else { E::zero() });
                let s = x.mul_scalar(b).sigmoid();
                g.mul(&s.mul(&lin.rsub_scalar(E::one())).add(&lin))
            },
        )
    }
    /// Clamps to `[min, max]` (gradient 1 inside, 0 where clamped; bounds included inside).
    // d clamp(x)/dx = [min <= x <= max]
    #[must_use]
    pub fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![("min", float(min.unwrap_or(f64::NEG_INFINITY))), ("max", float(max.unwrap_or(f64::INFINITY)))]
        });
        let lo = min.map(E::from_f64).unwrap_or(E::neg_infinity());
        let hi = max.map(E::from_f64).unwrap_or(E::infinity());
        unary_op(
            self,
            "clamp",
            |x| x.clamp(min, max),
            move |x, _, g| g.mul(&const_of(x, move |v| if v >= lo && v <= hi { E::one() } else { E::zero() })),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, tensor_strategy};
    use crate::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    type F = fn(&Var<f64>) -> Var<f64>;

    /// Moves values away from the kinks of piecewise functions (finite differences there
    /// are meaningless).
    fn off_kinks(x: &Tensor<f64>) -> Tensor<f64> {
        x.map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gradcheck_unary(x in tensor_strategy(), nc: bool) {
            let x = if nc { noncontiguous(&x) } else { x };
            let pos = x.abs().add_scalar(0.3);
            let smooth: Vec<(&str, F, &Tensor<f64>)> = vec![
                ("exp", |v| v.exp(), &x), ("expm1", |v| v.expm1(), &x), ("log", |v| v.log(), &pos),
                ("log1p", |v| v.log1p(), &pos), ("sqrt", |v| v.sqrt(), &pos), ("rsqrt", |v| v.rsqrt(), &pos),
                ("square", |v| v.square(), &x), ("reciprocal", |v| v.reciprocal(), &pos),
                ("sin", |v| v.sin(), &x), ("cos", |v| v.cos(), &x), ("tanh", |v| v.tanh(), &x),
                ("sigmoid", |v| v.sigmoid(), &x), ("gelu", |v| v.gelu(), &x), ("gelu_tanh", |v| v.gelu_tanh(), &x),
                ("silu", |v| v.silu(), &x), ("softplus", |v| v.softplus(1.0, 20.0), &x),
                ("softplus_beta", |v| v.softplus(2.0, 1.0), &pos),
            ];
            for (name, f, inp) in &smooth {
                let r = check(|v| f(&v[0]), std::slice::from_ref(*inp));
                prop_assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
                let r = check2(|v| f(&v[0]), std::slice::from_ref(*inp));
                prop_assert!(r.is_ok(), "{name} (second order): {}", r.unwrap_err());
            }
            let k = off_kinks(&x);
            let piecewise: Vec<(&str, F)> = vec![
                ("abs", |v| v.abs()), ("relu", |v| v.relu()), ("leaky_relu", |v| v.leaky_relu(0.1)),
                ("elu", |v| v.elu(1.3)), ("clamp", |v| v.clamp(Some(-0.5), Some(0.7))), ("sign", |v| v.sign()),
            ];
            for (name, f) in &piecewise {
                let kk = k.map(|v| if (v + 0.5).abs() < 0.02 || (v - 0.7).abs() < 0.02 { v + 0.05 } else { v });
                let r = check(|v| f(&v[0]), std::slice::from_ref(&kk));
                prop_assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
            }
        }
    }

    #[test]
    fn activation_values() {
        let x = Var::constant(Tensor::from_vec(vec![-1.0f64, 0.0, 2.0], &[3]));
        assert_eq!(x.relu().value().to_vec(), vec![0.0, 0.0, 2.0]);
        let g = x.gelu().value().to_vec();
        assert!((g[0] - -0.158_655_253_931_457_05).abs() < 1e-12);
        assert!((g[2] - 1.954_499_736_103_642).abs() < 1e-12);
    }
}
