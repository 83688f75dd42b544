//! The AVX2 micro-kernel: activations and weights as `i16` (sign- or zero-extended once, the
//! weights when they are packed, the activations once per product), multiplied and summed in
//! pairs with `_mm256_madd_epi16` (exact: a pair of `255 · -128` products fits an `i32`).
//! `_mm256_maddubs_epi16` would be twice as fast but saturates at `i16`
//! (`2 · 255 · 127 > 32767`), which is why fbgemm needs `reduce_range`; kiln stays exact.
//!
//! Each step of the inner loop loads two vectors of packed weights (16 columns × one pair of
//! k) and, per row, broadcasts one pair of activations from memory: 6 rows × 16 columns in 12
//! accumulators.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::NR_AVX2 as NR;

/// Rows of one tile.
pub(super) const MR: usize = 6;

/// Widens `rows` rows of `k` activation bytes (`lda` apart) to `i16`, `kp` (= `k` rounded up
/// to even) values per row with a zero in the padding, into `out`.
pub(super) fn widen_rows(a: &[u8], lda: usize, rows: usize, k: usize, kp: usize, signed: bool, out: &mut Vec<i16>) {
    out.clear();
    out.reserve(rows * kp);
    for r in 0..rows {
        let row = &a[r * lda..r * lda + k];
        if signed {
            out.extend(row.iter().map(|&b| i16::from(b as i8)));
        } else {
            out.extend(row.iter().map(|&b| i16::from(b)));
        }
        out.extend(std::iter::repeat_n(0, kp - k));
    }
}

/// `out[r][j] = Σ_k a[r, k] · b[k, j]` for `R` rows of widened activations (`lda` values
/// apart, `2 * pairs` values each) and one packed panel of 16 columns laid out
/// `[pairs][16 columns][2]` in `i16`.
///
/// # Safety
/// The CPU must support AVX2. `a` must address `R` rows of `2 * pairs` readable values `lda`
/// apart; `panel` must address `pairs * 32` values; `out` must have room for `R * 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tile<const R: usize>(a: *const i16, lda: usize, pairs: usize, panel: *const i16, out: &mut [i32]) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for q in 0..pairs {
        // SAFETY: in bounds by the contract.
        let (b0, b1) = unsafe {
            let p = panel.add(q * 32);
            (_mm256_loadu_si256(p as *const __m256i), _mm256_loadu_si256(p.add(16) as *const __m256i))
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the contract (one pair of i16 read as an i32).
            let va = _mm256_set1_epi32(unsafe { (a.add(r * lda + 2 * q) as *const i32).read_unaligned() });
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(va, b0));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(va, b1));
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: `out` holds R * 16 values.
        unsafe {
            _mm256_storeu_si256(out.as_mut_ptr().add(r * NR) as *mut __m256i, acc[0]);
            _mm256_storeu_si256(out.as_mut_ptr().add(r * NR + 8) as *mut __m256i, acc[1]);
        }
    }
}
