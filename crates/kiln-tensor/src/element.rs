//! The element types a [`Tensor`](crate::Tensor) can hold.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// Runtime tag of an element type, as written in checkpoints and safetensors headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
}

impl Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

/// A floating-point element type: implemented for `f32` and `f64`.
///
/// Besides the arithmetic of [`num_traits::Float`] it carries the GEMM kernel for the type
/// (so that [`Tensor::matmul`](crate::Tensor::matmul) can dispatch without a runtime check)
/// and the functions PyTorch has but `std` lacks (`erf`).
pub trait Float:
    num_traits::Float
    + num_traits::NumAssign
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + serde::Serialize
    + serde::de::DeserializeOwned
    + 'static
{
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Converts from `usize` (rounding where needed).
    #[inline]
    fn from_usize(x: usize) -> Self {
        Self::from_f64(x as f64)
    }
    /// The Gauss error function.
    fn erf(self) -> Self;

    /// `C = alpha * A * B + beta * C` for one row-major-or-strided matrix product,
    /// single-threaded. Strides are in elements and may be any value, zero included.
    ///
    /// # Safety
    /// The pointers must address `m x k`, `k x n` and `m x n` matrices under the given strides,
    /// and `c` must not alias `a` or `b`.
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

/// erf by Abramowitz-Stegun 7.1.26 is too coarse for gradient checks, so this is the
/// Numerical Recipes `erfc` Chebyshev fit (relative error < 1.2e-7), refined in f64.
fn erf_f64(x: f64) -> f64 {
    // W. J. Cody's rational approximations (as in many libm's), accurate to ~1e-16.
    let ax = x.abs();
    let r = if ax < 0.5 {
        let t = x * x;
        let p = [
            3.209_377_589_138_469_4e3,
            3.774_852_376_853_02e2,
            1.138_641_541_510_501_6e2,
            3.161_123_743_870_565_5,
            1.857_777_061_846_031_5e-1,
        ];
        let q = [
            2.844_236_833_439_170_6e3,
            1.282_616_526_077_372_3e3,
            2.440_246_379_344_441_7e2,
            2.360_129_095_234_412_2e1,
            1.0,
        ];
        let num = p[0] + t * (p[1] + t * (p[2] + t * (p[3] + t * p[4])));
        let den = q[0] + t * (q[1] + t * (q[2] + t * (q[3] + t * q[4])));
        return x * num / den;
    } else if ax < 4.0 {
        let p = [
            1.230_339_354_797_997_2e3,
            2.051_078_377_826_071_6e3,
            1.712_047_612_634_070_7e3,
            8.819_522_212_417_69e2,
            2.986_351_381_974_001_3e2,
            6.611_919_063_714_163e1,
            8.883_149_794_388_376,
            5.641_884_969_886_701e-1,
            2.153_115_354_744_038_3e-8,
        ];
        let q = [
            1.230_339_354_803_749_4e3,
            3.439_367_674_143_721_6e3,
            4.362_619_090_143_247e3,
            3.290_799_235_733_459_7e3,
            1.621_389_574_566_690_3e3,
            5.371_811_018_620_098_5e2,
            1.176_939_508_913_124_9e2,
            1.574_492_611_070_983_5e1,
            1.0,
        ];
        let mut num = p[8];
        for i in (0..8).rev() {
            num = num * ax + p[i];
        }
        let mut den = q[8];
        for i in (0..8).rev() {
            den = den * ax + q[i];
        }
        let erfc = (-ax * ax).exp() * num / den;
        1.0 - erfc
    } else {
        let t = 1.0 / (ax * ax);
        let p = [
            -6.587_491_615_298_378e-4,
            -1.608_378_514_874_227_5e-2,
            -1.257_817_261_112_292_6e-1,
            -3.603_448_999_498_044_5e-1,
            -3.053_266_349_612_323_4e-1,
            -1.631_538_713_730_709_7e-2,
        ];
        let q = [
            2.335_204_976_268_691_8e-3,
            6.051_834_131_244_132e-2,
            5.279_051_029_514_284e-1,
            1.872_952_849_923_460_4,
            2.568_520_192_289_822,
            1.0,
        ];
        let mut num = p[5];
        for i in (0..5).rev() {
            num = num * t + p[i];
        }
        let mut den = q[5];
        for i in (0..5).rev() {
            den = den * t + q[i];
        }
        let frac_1_sqrt_pi = 0.564_189_583_547_756_3;
        let erfc = (-ax * ax).exp() / ax * (frac_1_sqrt_pi + t * num / den);
        1.0 - erfc
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn erf(self) -> Self {
        erf_f64(self as f64) as f32
    }
    #[inline]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn erf(self) -> Self {
        erf_f64(self)
    }
    #[inline]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun table 7.1 / high-precision references.
        let cases = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (5.0, 0.999_999_999_998_462_5),
        ];
        for (x, want) in cases {
            assert!((erf_f64(x) - want).abs() < 1e-14, "erf({x}) = {} want {want}", erf_f64(x));
            assert!((erf_f64(-x) + want).abs() < 1e-14);
        }
    }
}
