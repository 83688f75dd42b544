//! The AVX2 micro-kernel: `u8`/`i8` activations and `i8` weights widened to `i16`, multiplied
//! and summed in pairs with `_mm256_madd_epi16` (exact: a pair of `255 · -128` products fits
//! an `i32`). `_mm256_maddubs_epi16` would be twice as fast but saturates at `i16`
//! (`2 · 255 · 127 > 32767`), which is why fbgemm needs `reduce_range`; kiln stays exact.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::NR_AVX2 as NR;

/// The 32-bit lane holding activation bytes `(a0, a1)` widened to `i16` each.
#[inline(always)]
fn pair<const SIGNED: bool>(a0: u8, a1: u8) -> i32 {
    let w = |b: u8| if SIGNED { b as i8 as i16 as u16 as u32 } else { b as u32 };
    (w(a0) | (w(a1) << 16)) as i32
}

/// `out[r][j] = Σ_k a[r, k] · b[k, j]` for `R` rows and one packed panel of 16 columns,
/// laid out `[k / 2][16 columns][2]` (k padded to even with zeros).
///
/// # Safety
/// The CPU must support AVX2. `a` must address `R` rows of `k` readable bytes `lda` apart;
/// `panel` must address `ceil(k / 2) * 32` bytes; `out` must have room for `R * 16` values.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tile<const R: usize, const SIGNED: bool>(
    a: *const u8,
    lda: usize,
    k: usize,
    panel: *const i8,
    out: &mut [i32],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let pairs = k / 2;
    for q in 0..pairs {
        // SAFETY: in bounds by the contract.
        let (b0, b1) = unsafe {
            let p = panel.add(q * 32);
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i)),
            )
        };
        for r in 0..R {
            // SAFETY: in bounds by the contract.
            let (x0, x1) = unsafe { (*a.add(r * lda + 2 * q), *a.add(r * lda + 2 * q + 1)) };
            let va = _mm256_set1_epi32(pair::<SIGNED>(x0, x1));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(va, b0));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(va, b1));
        }
    }
    if k % 2 == 1 {
        // The last column of an odd k: its partner in the pair is a zero weight.
        // SAFETY: in bounds by the contract.
        let (b0, b1) = unsafe {
            let p = panel.add(pairs * 32);
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i)),
            )
        };
        for r in 0..R {
            // SAFETY: in bounds by the contract.
            let x0 = unsafe { *a.add(r * lda + 2 * pairs) };
            let va = _mm256_set1_epi32(pair::<SIGNED>(x0, 0));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(va, b0));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(va, b1));
        }
    }
    for r in 0..R {
        // SAFETY: `out` holds R * 16 values.
        unsafe {
            _mm256_storeu_si256(out.as_mut_ptr().add(r * NR) as *mut __m256i, acc[r][0]);
            _mm256_storeu_si256(out.as_mut_ptr().add(r * NR + 8) as *mut __m256i, acc[r][1]);
        }
    }
}
