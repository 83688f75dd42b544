//! AVX2 row kernel of the 2x2 / stride-2 max pool on `f32`: eight windows at a time with
//! compares and blends instead of the scalar loop's data-dependent branches (which the
//! compiler emits for `c > best || c.is_nan()` and which mispredict on real activations about
//! every other window). Same results as the scalar loop, bit for bit: the first maximum wins,
//! a NaN wins, the last NaN if several.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs [`max_pool_2x2_rows`].
#[inline]
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Pools the windows of one output row from input rows `r0` (top) and `r1` (bottom), each
/// holding at least `2 * vals.len()` values: `vals[ox]` gets the window's maximum and
/// `idx[ox]` its flat position in the plane, `top + 2 * ox (+ 1)` in `r0` or
/// `bottom + 2 * ox (+ 1)` in `r1`; an empty `idx` asks for the values only. Returns how many
/// windows it handled: all of them, or 0 where AVX2 is not available (the caller's scalar
/// loop then does the row).
pub(crate) fn max_pool_2x2_rows(
    r0: &[f32],
    r1: &[f32],
    top: usize,
    bottom: usize,
    vals: &mut [f32],
    idx: &mut [usize],
) -> usize {
    let len = vals.len();
    let with_idx = !idx.is_empty();
    assert!(
        (!with_idx || idx.len() == len) && r0.len() >= 2 * len && r1.len() >= 2 * len,
        "max_pool2d: row buffers do not fit"
    );
    if len == 0 || !available() {
        return 0;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let n = len / 8 * 8;
        let ip = if with_idx { idx.as_mut_ptr() } else { std::ptr::null_mut() };
        // SAFETY: AVX2 checked; the slices hold the 2n inputs and n outputs read and written.
        unsafe { rows_avx2(r0.as_ptr(), r1.as_ptr(), top, bottom, vals.as_mut_ptr(), ip, n) };
        let rest = len - n;
        if rest > 0 {
            // The last windows through the same kernel on a padded copy (the padding's results
            // are dropped), so that every window is decided by the same compares.
            let (mut t0, mut t1) = ([0f32; 16], [0f32; 16]);
            t0[..2 * rest].copy_from_slice(&r0[2 * n..2 * len]);
            t1[..2 * rest].copy_from_slice(&r1[2 * n..2 * len]);
            let (mut v, mut i) = ([0f32; 8], [0usize; 8]);
            // SAFETY: as above, on the local buffers of 16 inputs and 8 outputs.
            unsafe {
                rows_avx2(t0.as_ptr(), t1.as_ptr(), top + 2 * n, bottom + 2 * n, v.as_mut_ptr(), i.as_mut_ptr(), 8)
            };
            vals[n..].copy_from_slice(&v[..rest]);
            if with_idx {
                idx[n..].copy_from_slice(&i[..rest]);
            }
        }
    }
    len
}

/// # Safety
/// AVX2 must be available; `r0` and `r1` must address `2n` readable floats, `vals` and `idx`
/// `n` writable elements (`idx` may be null: no indices written); `n` is a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(
    r0: *const f32,
    r1: *const f32,
    top: usize,
    bottom: usize,
    vals: *mut f32,
    idx: *mut usize,
    n: usize,
) {
    // Deinterleaving with `shuffle_ps` leaves the windows in the order 0 1 4 5 2 3 6 7 (by
    // 128-bit lane); one 64-bit permute puts them back.
    let fix = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
    let fixi = |v: __m256i| _mm256_permute4x64_epi64::<0xD8>(v);
    // Which of the four taps won, as an offset code: 0 = top left, 1 = top right,
    // 2 = bottom left, 3 = bottom right.
    let codes = [_mm256_set1_epi32(1), _mm256_set1_epi32(2), _mm256_set1_epi32(3)];
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    // SAFETY (whole body): reads of 16 floats at 2·ox in each row and writes of 8 outputs at
    // ox, for ox < n, are inside the slices by the contract.
    unsafe {
        for ox in (0..n).step_by(8) {
            let a_lo = _mm256_loadu_ps(r0.add(2 * ox));
            let a_hi = _mm256_loadu_ps(r0.add(2 * ox + 8));
            let b_lo = _mm256_loadu_ps(r1.add(2 * ox));
            let b_hi = _mm256_loadu_ps(r1.add(2 * ox + 8));
            let taps = [
                _mm256_shuffle_ps::<0x88>(a_lo, a_hi),
                _mm256_shuffle_ps::<0xDD>(a_lo, a_hi),
                _mm256_shuffle_ps::<0x88>(b_lo, b_hi),
                _mm256_shuffle_ps::<0xDD>(b_lo, b_hi),
            ];
            let mut best = taps[0];
            let mut code = _mm256_setzero_si256();
            for (c, k) in taps[1..].iter().zip(codes) {
                let take = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(*c, best), _mm256_cmp_ps::<_CMP_UNORD_Q>(*c, *c));
                best = _mm256_blendv_ps(best, *c, take);
                code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(code), _mm256_castsi256_ps(k), take));
            }
            _mm256_storeu_ps(vals.add(ox), fix(best));
            if idx.is_null() {
                continue;
            }
            // position = (top or bottom) + 2·ox + lane offset + (code & 1)
            let code = fixi(code);
            let col = _mm256_add_epi32(
                _mm256_add_epi32(lanes, _mm256_set1_epi32(2 * ox as i32)),
                _mm256_and_si256(code, _mm256_set1_epi32(1)),
            );
            let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(col));
            let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(col));
            let (tops, bottoms) = (_mm256_set1_epi64x(top as i64), _mm256_set1_epi64x(bottom as i64));
            let row = |c: __m128i| {
                // codes 2 and 3 are in the bottom row
                let in_bottom =
                    _mm256_cmpeq_epi64(_mm256_cvtepi32_epi64(_mm_srli_epi32::<1>(c)), _mm256_set1_epi64x(1));
                _mm256_blendv_epi8(tops, bottoms, in_bottom)
            };
            let base_lo = row(_mm256_castsi256_si128(code));
            let base_hi = row(_mm256_extracti128_si256::<1>(code));
            _mm256_storeu_si256(idx.add(ox).cast(), _mm256_add_epi64(base_lo, lo));
            _mm256_storeu_si256(idx.add(ox + 4).cast(), _mm256_add_epi64(base_hi, hi));
        }
    }
}
