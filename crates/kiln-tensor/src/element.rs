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
    /// bfloat16 (8-bit exponent, 8-bit mantissa): the storage of
    /// [`Bf16Tensor`](crate::Bf16Tensor) and the precision of [`autocast`](crate::autocast).
    BF16,
}

impl Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
        })
    }
}

/// Keeps [`Float`] closed to `f32` and `f64`.
mod sealed {
    /// Implemented for `f32` and `f64` only; not nameable outside this crate.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type: implemented for `f32` and `f64`, and sealed (it cannot be
/// implemented outside kiln-tensor): its supertraits and [`gemm_raw`](Float::gemm_raw) are
/// what kiln's kernels rely on, not an extension point.
///
/// Besides the arithmetic of [`num_traits::Float`] it carries the GEMM kernel for the type
/// (so that [`Tensor::matmul`](crate::Tensor::matmul) can dispatch without a runtime check)
/// and the functions PyTorch has but `std` lacks (`erf`).
pub trait Float:
    sealed::Sealed
    + num_traits::Float
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

    /// `dst[i] = exp(src[i] - shift)` for every element, returning `Σ dst` (the inner loop of
    /// softmax). `f32` uses a branch-free polynomial `exp` that the compiler vectorises
    /// ([`exp_f32`], within 2 ulp of `f32::exp`); `f64` uses `f64::exp`.
    ///
    /// **Panics** if the slices differ in length.
    fn exp_shifted_sum(src: &[Self], shift: Self, dst: &mut [Self]) -> Self {
        assert_eq!(src.len(), dst.len(), "exp_shifted_sum: source and destination lengths differ");
        let mut s = Self::zero();
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = (x - shift).exp();
            s += *d;
        }
        s
    }

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
            2.844_236_833_439_171e3,
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
            2.986_351_381_974_001e2,
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
            5.371_811_018_620_099e2,
            1.176_939_508_913_125e2,
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

/// `exp(x)` for `f32` within 2 ulp of `f32::exp` (Cephes' `expf`: `x = n ln 2 + r`,
/// `|r| <= ln 2 / 2`, a degree-7 polynomial for `exp(r)`, the exponent added to the bits),
/// written without branches or calls so that loops over it vectorise. `exp(-inf) = 0`,
/// `exp(+inf) = +inf`, NaN stays NaN; results below `f32::MIN_POSITIVE` flush to 0.
///
/// ```
/// let x = 1.5f32;
/// assert!((kiln_tensor::element::exp_f32(x) - x.exp()).abs() <= 2.0 * f32::EPSILON * x.exp());
/// assert_eq!(kiln_tensor::element::exp_f32(f32::NEG_INFINITY), 0.0);
/// ```
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAX: f32 = 88.376_26; // ln(f32::MAX)
    const MIN: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(MIN, MAX);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    // r = x - n ln 2, ln 2 split in two for accuracy
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e = p * r * r + r + 1.0;
    // 2^n from the integer held in t's low mantissa bits (n in [-126, 127])
    let k = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let y = e * f32::from_bits(((k + 127) << 23) as u32);
    let y = if x < MIN { 0.0 } else { y };
    let y = if x > MAX { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// The body of `f32`'s [`Float::exp_shifted_sum`].
#[inline(always)]
fn exp_shifted_sum_f32(src: &[f32], shift: f32, dst: &mut [f32]) -> f32 {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = exp_f32(x - shift);
    }
    // eight partial sums, so that the adds vectorise too
    let mut acc = [0.0f32; 8];
    let mut chunks = dst.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// [`exp_shifted_sum_f32`] compiled for AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(kiln_avx512)]
#[allow(clippy::incompatible_msrv)] // compiled only on rustc >= 1.89 (see build.rs)
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_sum_avx512(src: &[f32], shift: f32, dst: &mut [f32]) -> f32 {
    exp_shifted_sum_f32(src, shift, dst)
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
    fn exp_shifted_sum(src: &[f32], shift: f32, dst: &mut [f32]) -> f32 {
        assert_eq!(src.len(), dst.len(), "exp_shifted_sum: source and destination lengths differ");
        // The same code compiled for 16-wide vectors where the CPU has them (the default
        // target only has SSE2); the results are identical (no contraction, same sum order).
        #[cfg(kiln_avx512)]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present.
            return unsafe { exp_shifted_sum_avx512(src, shift, dst) };
        }
        exp_shifted_sum_f32(src, shift, dst)
    }
    /// # Safety
    /// As [`Float::gemm_raw`]: the pointers address the three matrices under their strides,
    /// and `c` aliases neither operand.
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
        if crate::autocast::bf16_gemm() {
            use crate::kernels::{bf16_gemm, gemm::MatRef};
            // SAFETY: forwarded contract.
            unsafe {
                bf16_gemm::gemm_bf16_raw(
                    bf16_gemm::Bf16Isa::detect(),
                    m,
                    k,
                    n,
                    alpha,
                    MatRef { ptr: a, rs: rsa, cs: csa },
                    MatRef { ptr: b, rs: rsb, cs: csb },
                    beta,
                    c,
                    rsc,
                    csc,
                )
            };
            return;
        }
        // kiln's AVX-512 kernel, else its AVX2 one for matrix-vector products, else
        // matrixmultiply; `KILN_SGEMM` (read once, see kernels/sgemm_avx2.rs) can force the
        // AVX2 kernel or matrixmultiply.
        // SAFETY (every call): forwarded contract.
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::sgemm_avx2::{sgemm_choice, try_sgemm_avx2, SgemmChoice};
            let choice = sgemm_choice();
            #[cfg(kiln_avx512)]
            if choice == SgemmChoice::Auto
                && unsafe {
                    crate::kernels::sgemm::try_sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
                }
            {
                return;
            }
            let use_avx2 = match choice {
                SgemmChoice::Avx2 => true,
                // Only the matrix-vector path beats matrixmultiply (see sgemm_avx2.rs).
                SgemmChoice::Auto => m == 1 || n == 1,
                SgemmChoice::MatrixMultiply => false,
            };
            if use_avx2 && unsafe { try_sgemm_avx2(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) } {
                return;
            }
        }
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
    /// # Safety
    /// As [`Float::gemm_raw`]: the pointers address the three matrices under their strides,
    /// and `c` aliases neither operand.
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

#[cfg(test)]
mod exp_tests {
    use super::{exp_f32, Float};

    /// Distance in units in the last place between two finite positive floats.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_f32_is_within_two_ulp_of_std() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.3 {
            let (got, want) = (exp_f32(x), x.exp());
            worst = worst.max(ulps(got, want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_f32_special_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn exp_shifted_sum_matches_the_plain_loop() {
        let src: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let mut d32 = vec![0.0f32; 37];
        let s32 = f32::exp_shifted_sum(&src, 2.0, &mut d32);
        let src64: Vec<f64> = src.iter().map(|&v| v as f64).collect();
        let mut d64 = vec![0.0f64; 37];
        let s64 = f64::exp_shifted_sum(&src64, 2.0, &mut d64);
        for (a, b) in d32.iter().zip(&d64) {
            // x - shift rounds in f32 (|x - shift| <= 11: up to 11 * 2^-24 relative), then 2 ulp
            assert!((*a as f64 - b).abs() <= 1e-6 * b, "{a} vs {b}");
        }
        assert!((s32 as f64 - s64).abs() <= 1e-6 * s64);
    }
}
