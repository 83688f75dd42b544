//! The AVX-512 VNNI micro-kernel: `_mm512_dpbusd_epi32` multiplies 4 unsigned activation bytes
//! by 4 signed weight bytes and adds the 4 products to each `i32` lane in one instruction
//! (no intermediate saturation; the non-saturating form, so sums wrap like `wrapping_add`).
//! Signed (`i8`) activations are made unsigned by flipping their sign bit (`a + 128`); the
//! caller subtracts `128 · Σ_k b[k, j]` afterwards.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::NR_VNNI as NR;

/// Four activation bytes of row `r` starting at column `k0` (`n <= 4` of them real, the rest
/// zero), as one little-endian `i32`, sign bits flipped when `SIGNED`.
///
/// # Safety
/// `p` must point to `n` readable bytes (`n <= 4`).
#[inline(always)]
unsafe fn quad<const SIGNED: bool>(p: *const u8, n: usize) -> i32 {
    let flip: u32 = if SIGNED { 0x8080_8080 } else { 0 };
    if n == 4 {
        // SAFETY: the caller guarantees 4 readable bytes.
        (unsafe { (p as *const u32).read_unaligned() } ^ flip) as i32
    } else {
        let mut w = 0u32;
        for t in 0..n {
            // SAFETY: the caller guarantees n readable bytes.
            w |= (unsafe { *p.add(t) } as u32 ^ (flip & 0xff)) << (8 * t);
        }
        w as i32
    }
}

/// `out[r][j] = Σ_k a'[r, k] · b[k, j]` for `R` rows and one packed panel of 32 columns,
/// laid out `[k / 4][32 columns][4]` (k padded to a multiple of 4 with zeros), where `a'` is
/// `a` (unsigned) or `a + 128` (`SIGNED`).
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI. `a` must address `R` rows of
/// `k` readable bytes `lda` apart; `panel` must address `ceil(k / 4) * 128` bytes; `out` must
/// have room for `R * 32` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile<const R: usize, const SIGNED: bool>(
    a: *const u8,
    lda: usize,
    k: usize,
    panel: *const i8,
    out: &mut [i32],
) {
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    let quads = k.div_ceil(4);
    for q in 0..quads {
        let n = (k - 4 * q).min(4);
        // SAFETY: in bounds by the contract.
        let (b0, b1) = unsafe {
            let p = panel.add(q * 128);
            (_mm512_loadu_si512(p as *const _), _mm512_loadu_si512(p.add(64) as *const _))
        };
        for r in 0..R {
            // SAFETY: n bytes of row r from column 4q are in bounds.
            let va = _mm512_set1_epi32(unsafe { quad::<SIGNED>(a.add(r * lda + 4 * q), n) });
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], va, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], va, b1);
        }
    }
    for r in 0..R {
        // SAFETY: `out` holds R * 32 values.
        unsafe {
            _mm512_storeu_si512(out.as_mut_ptr().add(r * NR) as *mut _, acc[r][0]);
            _mm512_storeu_si512(out.as_mut_ptr().add(r * NR + 16) as *mut _, acc[r][1]);
        }
    }
}
