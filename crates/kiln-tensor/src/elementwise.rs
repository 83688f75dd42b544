//! Elementwise operations: broadcasting binary ops, comparisons, unary functions and the
//! in-place forms optimisers use.

use std::ops::{Add, Div, Mul, Neg, Sub};

use ndarray::{ArrayViewMutD, IxDyn, Zip};
use rayon::prelude::*;

use crate::alloc;
use crate::element::Float;
use crate::parallel;
use crate::tensor::{Shape, Tensor};

/// The shape two shapes broadcast to (NumPy/PyTorch rules: align right, sizes equal or 1).
///
/// **Panics** naming the op and both shapes when they are incompatible.
///
/// ```
/// use kiln_tensor::broadcast_shapes;
/// assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1], "add").as_slice(), &[2, 4, 3]);
/// ```
pub fn broadcast_shapes(a: &[usize], b: &[usize], op: &str) -> Shape {
    let nd = a.len().max(b.len());
    let mut out: Shape = smallvec::smallvec![0; nd];
    for i in 0..nd {
        let da = if i + a.len() >= nd { a[i + a.len() - nd] } else { 1 };
        let db = if i + b.len() >= nd { b[i + b.len() - nd] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            panic!("{op}: shapes {a:?} and {b:?} cannot be broadcast (dim {i}: {da} vs {db})")
        };
    }
    out
}

const CHUNK: usize = 1 << 13;

/// When `full` has the broadcast result's `shape` and `part`'s shape (leading 1s dropped) is a
/// non-empty tail of it, both contiguous: their elements and the lane length (`part`'s size).
fn trailing_lanes<'a, E: Float>(
    full: &'a Tensor<E>,
    part: &'a Tensor<E>,
    shape: &[usize],
) -> Option<(&'a [E], &'a [E], usize)> {
    if full.shape.as_slice() != shape {
        return None;
    }
    let ps = part.shape();
    let ps = &ps[ps.iter().position(|&d| d != 1).unwrap_or(ps.len())..];
    let lane: usize = ps.iter().product();
    if ps.len() > shape.len() || shape[shape.len() - ps.len()..] != *ps || lane == 0 {
        return None;
    }
    Some((full.as_slice()?, part.as_slice()?, lane))
}

impl<E: Float> Tensor<E> {
    /// Applies `f` to every element, giving a new contiguous tensor.
    #[must_use]
    pub fn map(&self, f: impl Fn(E) -> E + Sync + Send) -> Self {
        let n = self.numel();
        if let Some(x) = self.as_slice() {
            if n < parallel::elementwise_min() || parallel::get_num_threads() == 1 {
                // collect: no zero-fill before the write (the loop vectorises as well)
                return Self::from_vec(alloc::take_collect(n, x.iter().map(|&v| f(v))), &self.shape);
            }
        }
        if let Some(x) = self.as_slice() {
            let out = parallel::filled(n, CHUNK, true, |i, o| {
                for (o, &x) in o.iter_mut().zip(&x[i * CHUNK..]) {
                    *o = f(x);
                }
            });
            return Self::from_vec(out, &self.shape);
        }
        let mut out = alloc::take_filled(n, E::zero());
        {
            let mut o = out.iter_mut();
            let st = &self.storage;
            self.for_each_offset(|off| *o.next().expect("sized") = f(st[off]));
        }
        Self::from_vec(out, &self.shape)
    }

    /// Combines two tensors elementwise with broadcasting; `op` names the operation in shape
    /// errors.
    ///
    /// **Panics** if the shapes cannot be broadcast.
    #[must_use]
    pub fn zip_map(&self, other: &Tensor<E>, op: &str, f: impl Fn(E, E) -> E + Sync + Send) -> Self {
        if self.shape == other.shape {
            if let (Some(a), Some(b)) = (self.as_slice(), other.as_slice()) {
                if a.len() < parallel::elementwise_min() || parallel::get_num_threads() == 1 {
                    return Self::from_vec(
                        alloc::take_collect(a.len(), a.iter().zip(b).map(|(&x, &y)| f(x, y))),
                        &self.shape,
                    );
                }
                let out = parallel::filled(a.len(), CHUNK, true, |i, o| {
                    for ((o, &x), &y) in o.iter_mut().zip(&a[i * CHUNK..]).zip(&b[i * CHUNK..]) {
                        *o = f(x, y);
                    }
                });
                return Self::from_vec(out, &self.shape);
            }
        }
        let shape = broadcast_shapes(&self.shape, &other.shape, op);
        if other.numel() == 1 && self.shape == shape {
            let b = other.storage[other.offset];
            return self.map(move |a| f(a, b));
        }
        if self.numel() == 1 && other.shape == shape {
            let a = self.storage[self.offset];
            return other.map(move |b| f(a, b));
        }
        let n: usize = shape.iter().product();
        let par = n >= parallel::elementwise_min() && parallel::get_num_threads() > 1;
        // One contiguous operand of the result's shape and one contiguous operand broadcast along
        // the leading dims (`x̂ * weight + bias` in the normalisation layers): lane by lane.
        if let Some((a, b, lane)) = trailing_lanes(self, other, &shape) {
            let out = parallel::filled(n, lane, par, |r, o| {
                for ((o, &x), &y) in o.iter_mut().zip(&a[r * lane..]).zip(b) {
                    *o = f(x, y);
                }
            });
            return Self::from_vec(out, &shape);
        }
        if let Some((b, a, lane)) = trailing_lanes(other, self, &shape) {
            let out = parallel::filled(n, lane, par, |r, o| {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(&b[r * lane..]) {
                    *o = f(x, y);
                }
            });
            return Self::from_vec(out, &shape);
        }
        let a = self.expand(&shape);
        let b = other.expand(&shape);
        let mut out = alloc::take_filled(n, E::zero());
        {
            let av = a.view_nd();
            let bv = b.view_nd();
            let ov = ArrayViewMutD::from_shape(IxDyn(&shape), &mut out).expect("sized");
            let z = Zip::from(ov).and(&av).and(&bv);
            if n >= parallel::elementwise_min() && parallel::get_num_threads() > 1 {
                parallel::install(|_| z.par_for_each(|o, &a, &b| *o = f(a, b)));
            } else {
                z.for_each(|o, &a, &b| *o = f(a, b));
            }
        }
        Self::from_vec(out, &shape)
    }

    /// Makes `self` contiguous and the sole owner of its storage (copy on write), then returns
    /// its elements.
    fn unique_slice_mut(&mut self) -> &mut [E] {
        self.as_mut_slice()
    }

    /// Applies `f` to every element in place.
    pub fn map_inplace(&mut self, f: impl Fn(E) -> E + Sync + Send) {
        let s = self.unique_slice_mut();
        if s.len() >= parallel::elementwise_min() && parallel::get_num_threads() > 1 {
            parallel::install(|_| s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x = f(*x))));
        } else {
            s.iter_mut().for_each(|x| *x = f(*x));
        }
    }

    /// `self[i] = f(self[i], other[i])` in place, `other` broadcast to `self`'s shape.
    ///
    /// **Panics** if `other` cannot be broadcast to `self`'s shape.
    pub fn zip_map_inplace(&mut self, other: &Tensor<E>, op: &str, f: impl Fn(E, E) -> E + Sync + Send) {
        let shape = self.shape.clone();
        let out_shape = broadcast_shapes(&shape, &other.shape, op);
        assert!(
            out_shape == shape,
            "{op}: in-place result of shape {shape:?} cannot hold the broadcast of {shape:?} and {:?}",
            other.shape()
        );
        if other.numel() == 1 {
            let b = other.storage[other.offset];
            return self.map_inplace(move |a| f(a, b));
        }
        let same = other.shape == shape && other.is_contiguous();
        let par = self.numel() >= parallel::elementwise_min() && parallel::get_num_threads() > 1;
        if !same {
            // A contiguous operand broadcast along the leading dims (a bias): row by row.
            let ps = other.shape();
            let ps = &ps[ps.iter().position(|&d| d != 1).unwrap_or(ps.len())..];
            let lane: usize = ps.iter().product();
            if let (true, Some(bs)) =
                (ps.len() <= shape.len() && shape[shape.len() - ps.len()..] == *ps && lane > 0, other.as_slice())
            {
                let s = self.unique_slice_mut();
                let rows = |a: &mut [E]| {
                    for row in a.chunks_mut(lane) {
                        for (a, &b) in row.iter_mut().zip(bs) {
                            *a = f(*a, b);
                        }
                    }
                };
                if par {
                    let chunk = CHUNK.div_ceil(lane) * lane;
                    parallel::install(|_| s.par_chunks_mut(chunk).for_each(rows));
                } else {
                    rows(s);
                }
                return;
            }
        }
        let b = if same { other.clone() } else { other.expand(&shape) };
        let s = self.unique_slice_mut();
        if same {
            let bs = b.as_slice().expect("contiguous");
            if par {
                parallel::install(|_| {
                    s.par_chunks_mut(CHUNK).zip(bs.par_chunks(CHUNK)).for_each(|(a, b)| {
                        for (a, &b) in a.iter_mut().zip(b) {
                            *a = f(*a, b);
                        }
                    })
                });
            } else {
                for (a, &b) in s.iter_mut().zip(bs) {
                    *a = f(*a, b);
                }
            }
        } else {
            let bv = b.view_nd();
            let av = ArrayViewMutD::from_shape(IxDyn(&shape), s).expect("sized");
            Zip::from(av).and(&bv).for_each(|a, &b| *a = f(*a, b));
        }
    }
}

macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident, $scalar:ident, $f:expr;)*) => {
        impl<E: Float> Tensor<E> {
            $(
                $(#[$doc])*
                ///
                /// Broadcasts; **panics** naming both shapes when they are incompatible.
                #[must_use]
                pub fn $name(&self, other: &Tensor<E>) -> Self {
                    self.zip_map(other, stringify!($name), $f)
                }
                $(#[$doc])*
                /// (with a scalar on the right).
                #[must_use]
                pub fn $scalar(&self, s: E) -> Self {
                    let f = $f;
                    self.map(move |a| f(a, s))
                }
            )*
        }
    };
}

binary_ops! {
    /// Elementwise `self + other`
    add, add_scalar, |a: E, b: E| a + b;
    /// Elementwise `self - other`
    sub, sub_scalar, |a: E, b: E| a - b;
    /// Elementwise `self * other`
    mul, mul_scalar, |a: E, b: E| a * b;
    /// Elementwise `self / other`
    div, div_scalar, |a: E, b: E| a / b;
    /// Elementwise `self ^ other`
    pow, pow_scalar, |a: E, b: E| a.powf(b);
    /// Elementwise maximum (NaN-propagating like `torch.maximum`)
    maximum, maximum_scalar, |a: E, b: E| if a.is_nan() || b.is_nan() { E::nan() } else if a > b { a } else { b };
    /// Elementwise minimum (NaN-propagating like `torch.minimum`)
    minimum, minimum_scalar, |a: E, b: E| if a.is_nan() || b.is_nan() { E::nan() } else if a < b { a } else { b };
    /// Mask (1 or 0) of `self == other`
    eq, eq_scalar, |a: E, b: E| if a == b { E::one() } else { E::zero() };
    /// Mask (1 or 0) of `self != other`
    ne, ne_scalar, |a: E, b: E| if a != b { E::one() } else { E::zero() };
    /// Mask (1 or 0) of `self < other`
    lt, lt_scalar, |a: E, b: E| if a < b { E::one() } else { E::zero() };
    /// Mask (1 or 0) of `self <= other`
    le, le_scalar, |a: E, b: E| if a <= b { E::one() } else { E::zero() };
    /// Mask (1 or 0) of `self > other`
    gt, gt_scalar, |a: E, b: E| if a > b { E::one() } else { E::zero() };
    /// Mask (1 or 0) of `self >= other`
    ge, ge_scalar, |a: E, b: E| if a >= b { E::one() } else { E::zero() };
}

impl<E: Float> Tensor<E> {
    /// `s - self` elementwise (scalar on the left).
    #[must_use]
    pub fn rsub_scalar(&self, s: E) -> Self {
        self.map(move |a| s - a)
    }
    /// `s / self` elementwise (scalar on the left).
    #[must_use]
    pub fn rdiv_scalar(&self, s: E) -> Self {
        self.map(move |a| s / a)
    }
    /// `self ^ e` elementwise with a scalar exponent, like `torch.pow(x, e)`.
    #[must_use]
    pub fn powf(&self, e: f64) -> Self {
        let ee = E::from_f64(e);
        if e == 2.0 {
            return self.map(|a| a * a);
        }
        self.map(move |a| a.powf(ee))
    }
}

/// A numerically stable logistic function.
#[inline]
pub fn sigmoid_scalar<E: Float>(x: E) -> E {
    if x >= E::zero() {
        E::one() / (E::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (E::one() + e)
    }
}

macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident => $f:expr;)*) => {
        impl<E: Float> Tensor<E> {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(&self) -> Self {
                    self.map($f)
                }
            )*
        }
    };
}

unary_ops! {
    /// `-x`.
    neg => |x: E| -x;
    /// `e^x`.
    exp => |x: E| x.exp();
    /// `e^x - 1`, accurate near 0.
    expm1 => |x: E| x.exp_m1();
    /// Natural logarithm.
    log => |x: E| x.ln();
    /// `ln(1 + x)`, accurate near 0.
    log1p => |x: E| x.ln_1p();
    /// Square root.
    sqrt => |x: E| x.sqrt();
    /// `1 / sqrt(x)`.
    rsqrt => |x: E| x.sqrt().recip();
    /// `x^2`.
    square => |x: E| x * x;
    /// `1 / x`.
    reciprocal => |x: E| x.recip();
    /// `|x|`.
    abs => |x: E| x.abs();
    /// -1, 0 or 1 by the sign of x (0 for 0, like `torch.sign`).
    sign => |x: E| if x > E::zero() { E::one() } else if x < E::zero() { -E::one() } else { E::zero() };
    /// Sine.
    sin => |x: E| x.sin();
    /// Cosine.
    cos => |x: E| x.cos();
    /// Hyperbolic tangent.
    tanh => |x: E| x.tanh();
    /// Logistic sigmoid `1 / (1 + e^-x)`, stable for large |x|.
    sigmoid => sigmoid_scalar;
    /// `max(x, 0)`.
    relu => |x: E| if x < E::zero() { E::zero() } else { x };
    /// GELU with the exact erf form: `x/2 * (1 + erf(x / sqrt 2))`.
    gelu => |x: E| E::from_f64(0.5) * x * (E::one() + (x * E::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    /// GELU with PyTorch's `approximate='tanh'` form:
    /// `x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
    gelu_tanh => |x: E| {
        let k = E::from_f64((2.0 / std::f64::consts::PI).sqrt());
        E::from_f64(0.5) * x * (E::one() + (k * (x + E::from_f64(0.044715) * x * x * x)).tanh())
    };
    /// SiLU (swish): `x * sigmoid(x)`.
    silu => |x: E| x * sigmoid_scalar(x);
}

impl<E: Float> Tensor<E> {
    /// `x` where positive, `slope * x` elsewhere, like `F.leaky_relu(x, slope)` (PyTorch's
    /// default slope is 0.01).
    #[must_use]
    pub fn leaky_relu(&self, slope: f64) -> Self {
        let s = E::from_f64(slope);
        self.map(move |x| if x > E::zero() { x } else { s * x })
    }
    /// `x` where positive, `alpha * (e^x - 1)` elsewhere, like `F.elu` (default alpha 1).
    #[must_use]
    pub fn elu(&self, alpha: f64) -> Self {
        let a = E::from_f64(alpha);
        self.map(move |x| if x > E::zero() { x } else { a * x.exp_m1() })
    }
    /// `ln(1 + e^(beta x)) / beta`, linear where `beta x > threshold`, like `F.softplus`
    /// (defaults beta 1, threshold 20).
    #[must_use]
    pub fn softplus(&self, beta: f64, threshold: f64) -> Self {
        let (b, t) = (E::from_f64(beta), E::from_f64(threshold));
        self.map(move |x| {
            let bx = b * x;
            if bx > t {
                x
            } else {
                // log1p(e^bx) computed stably for very negative and positive bx
                (bx.max(E::zero()) + (-(bx.abs())).exp().ln_1p()) / b
            }
        })
    }
    /// Limits values to `[min, max]`; either bound may be `None`, like `torch.clamp`.
    #[must_use]
    pub fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Self {
        let lo = min.map(E::from_f64).unwrap_or(E::neg_infinity());
        let hi = max.map(E::from_f64).unwrap_or(E::infinity());
        // min(max(x, lo), hi) as PyTorch: hi wins when lo > hi, NaN stays NaN
        self.map(move |x| {
            let y = if x < lo { lo } else { x };
            if y > hi {
                hi
            } else {
                y
            }
        })
    }
    /// `mask ? self : other` elementwise (mask nonzero means true), with broadcasting of all
    /// three, like `torch.where(mask, self, other)`.
    #[must_use]
    pub fn where_(&self, mask: &Tensor<E>, other: &Tensor<E>) -> Self {
        let shape = broadcast_shapes(&broadcast_shapes(&mask.shape, &self.shape, "where_"), &other.shape, "where_");
        let (m, a, b) = (mask.expand(&shape), self.expand(&shape), other.expand(&shape));
        let mut out = alloc::take_filled(shape.iter().product(), E::zero());
        {
            let ov = ArrayViewMutD::from_shape(IxDyn(&shape), &mut out).expect("sized");
            Zip::from(ov)
                .and(&m.view_nd())
                .and(&a.view_nd())
                .and(&b.view_nd())
                .for_each(|o, &m, &a, &b| *o = if m != E::zero() { a } else { b });
        }
        Self::from_vec(out, &shape)
    }
    /// `value` where `mask` is nonzero, `self` elsewhere (mask broadcast to self), like
    /// `masked_fill`.
    #[must_use]
    pub fn masked_fill(&self, mask: &Tensor<E>, value: E) -> Self {
        let shape = broadcast_shapes(&self.shape, &mask.shape, "masked_fill");
        assert!(
            shape == self.shape,
            "masked_fill: mask {:?} does not broadcast to the tensor's shape {:?}",
            mask.shape(),
            self.shape()
        );
        self.zip_map(mask, "masked_fill", move |a, m| if m != E::zero() { value } else { a })
    }

    // ---------------------------------------------------------------- in place

    /// `self += other` in place (other broadcast to self).
    pub fn add_(&mut self, other: &Tensor<E>) {
        self.zip_map_inplace(other, "add_", |a, b| a + b)
    }
    /// `self -= other` in place (other broadcast to self).
    pub fn sub_(&mut self, other: &Tensor<E>) {
        self.zip_map_inplace(other, "sub_", |a, b| a - b)
    }
    /// `self *= other` in place (other broadcast to self).
    pub fn mul_(&mut self, other: &Tensor<E>) {
        self.zip_map_inplace(other, "mul_", |a, b| a * b)
    }
    /// `self /= other` in place (other broadcast to self).
    pub fn div_(&mut self, other: &Tensor<E>) {
        self.zip_map_inplace(other, "div_", |a, b| a / b)
    }
    /// `self += s` in place.
    pub fn add_scalar_(&mut self, s: E) {
        self.map_inplace(move |a| a + s)
    }
    /// `self *= s` in place.
    pub fn mul_scalar_(&mut self, s: E) {
        self.map_inplace(move |a| a * s)
    }
    /// `self += alpha * x` in place (BLAS axpy; `torch.Tensor.add_(x, alpha=alpha)`).
    pub fn axpy_(&mut self, alpha: E, x: &Tensor<E>) {
        self.zip_map_inplace(x, "axpy_", move |a, b| a + alpha * b)
    }
    /// `self = self * beta + alpha * x` in place (the momentum/EMA update,
    /// `torch.Tensor.mul_(beta).add_(x, alpha=alpha)`).
    pub fn scale_add_(&mut self, beta: E, alpha: E, x: &Tensor<E>) {
        self.zip_map_inplace(x, "scale_add_", move |a, b| a * beta + alpha * b)
    }
    /// `self += value * t1 * t2` in place (`addcmul_`).
    pub fn addcmul_(&mut self, value: E, t1: &Tensor<E>, t2: &Tensor<E>) {
        let p = t1.mul(t2);
        self.zip_map_inplace(&p, "addcmul_", move |a, b| a + value * b)
    }
    /// `self += value * t1 / t2` in place (`addcdiv_`).
    pub fn addcdiv_(&mut self, value: E, t1: &Tensor<E>, t2: &Tensor<E>) {
        let p = t1.div(t2);
        self.zip_map_inplace(&p, "addcdiv_", move |a, b| a + value * b)
    }
    /// Sets every element to `value`.
    pub fn fill_(&mut self, value: E) {
        self.map_inplace(move |_| value)
    }
    /// Sets every element to zero.
    pub fn zero_(&mut self) {
        self.fill_(E::zero())
    }
    /// Copies `src` (broadcast to self) into `self`.
    pub fn copy_(&mut self, src: &Tensor<E>) {
        self.zip_map_inplace(src, "copy_", |_, b| b)
    }
    /// Limits values to `[min, max]` in place.
    pub fn clamp_(&mut self, min: Option<f64>, max: Option<f64>) {
        let lo = min.map(E::from_f64).unwrap_or(E::neg_infinity());
        let hi = max.map(E::from_f64).unwrap_or(E::infinity());
        self.map_inplace(move |x| {
            let y = if x < lo { lo } else { x };
            if y > hi {
                hi
            } else {
                y
            }
        })
    }
}

macro_rules! std_ops {
    ($($trait:ident, $method:ident, $fn:ident, $scalar:ident;)*) => {$(
        impl<E: Float> $trait<&Tensor<E>> for &Tensor<E> {
            type Output = Tensor<E>;
            fn $method(self, rhs: &Tensor<E>) -> Tensor<E> { Tensor::$fn(&self, rhs) }
        }
        impl<E: Float> $trait<Tensor<E>> for Tensor<E> {
            type Output = Tensor<E>;
            fn $method(self, rhs: Tensor<E>) -> Tensor<E> { Tensor::$fn(&self, &rhs) }
        }
        impl<E: Float> $trait<&Tensor<E>> for Tensor<E> {
            type Output = Tensor<E>;
            fn $method(self, rhs: &Tensor<E>) -> Tensor<E> { Tensor::$fn(&self, rhs) }
        }
        impl<E: Float> $trait<Tensor<E>> for &Tensor<E> {
            type Output = Tensor<E>;
            fn $method(self, rhs: Tensor<E>) -> Tensor<E> { Tensor::$fn(&self, &rhs) }
        }
        std_ops!(@scalar $trait, $method, $scalar, f32);
        std_ops!(@scalar $trait, $method, $scalar, f64);
    )*};
    (@scalar $trait:ident, $method:ident, $scalar:ident, $t:ty) => {
        impl $trait<$t> for &Tensor<$t> {
            type Output = Tensor<$t>;
            fn $method(self, rhs: $t) -> Tensor<$t> { Tensor::$scalar(&self, rhs) }
        }
        impl $trait<$t> for Tensor<$t> {
            type Output = Tensor<$t>;
            fn $method(self, rhs: $t) -> Tensor<$t> { Tensor::$scalar(&self, rhs) }
        }
    };
}

std_ops! {
    Add, add, add, add_scalar;
    Sub, sub, sub, sub_scalar;
    Mul, mul, mul, mul_scalar;
    Div, div, div, div_scalar;
}

impl<E: Float> Neg for &Tensor<E> {
    type Output = Tensor<E>;
    fn neg(self) -> Tensor<E> {
        Tensor::neg(self)
    }
}
impl<E: Float> Neg for Tensor<E> {
    type Output = Tensor<E>;
    fn neg(self) -> Tensor<E> {
        Tensor::neg(&self)
    }
}
