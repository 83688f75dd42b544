//! Single-threaded f32 GEMM for x86-64 CPUs with AVX-512F: the kernel behind `f32`'s
//! [`Float::gemm_raw`](crate::Float::gemm_raw) where the CPU has it (`sgemm_avx2.rs` or
//! matrixmultiply elsewhere).
//!
//! The blocking is Goto's (as in matrixmultiply and BLIS): B is packed in `KC x NC` panels of
//! 16-column strips, A in `MC x KC` blocks of 16-row strips, and a 16 x 16 micro-kernel
//! accumulates one tile of C in registers. What differs from matrixmultiply 0.3 is the packing:
//! its generic path copies one element at a time whenever the operand is not already laid out
//! along the strip, which is the case for a row-major A and for a transposed B (`x·Wᵀ`,
//! `q·kᵀ`), so on W5 (the Transformer benchmark) packing took 15 % of the step. Here a strip is
//! filled with 16-wide vector loads when it is contiguous across the strip, and with 16 x 16
//! in-register transposes when it is contiguous along k; other strides (broadcast zeros,
//! general views) fall back to element copies. The packing buffers live in thread-local storage
//! instead of being allocated per call.

// Compiled only where build.rs found rustc >= 1.89 (the AVX-512 intrinsics' release), hence
// the MSRV lint's allowance.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows and columns of the register tile of C.
const MR: usize = 16;
const NR: usize = 16;
/// Depth of one packed panel (k).
const KC: usize = 256;
/// Rows of A packed at a time (the A block stays in L2 while the B strips stream through L1).
const MC: usize = 128;
/// Columns of B packed at a time (`KC x NC` floats = 2 MiB). Wide enough that the products of
/// W5 (n <= 1024) pack A once: streaming the B panel from L3 for each A block costs less than
/// packing A again (x·W1ᵀ 2048x256x1024 and dW2 256x2048x1024 2-3 % faster than with 512).
const NC: usize = 2048;

/// A 64-byte aligned block of 16 floats, the unit of the packing buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([f32; 16]);

thread_local! {
    /// Packed A (`MC x KC`) followed by packed B (`KC x NC`), reused across calls.
    static PACK: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Whether this CPU runs the AVX-512 kernel.
#[inline]
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// `C = alpha * A·B + beta * C` (A `m x k`, B `k x n`, any strides) when the CPU has AVX-512F
/// and C has a unit stride in one direction; returns `false` (doing nothing) otherwise, so that
/// the caller falls back to another kernel. With `beta == 0` C is never read.
///
/// # Safety
/// Same contract as [`Float::gemm_raw`](crate::Float::gemm_raw): the pointers address `m x k`,
/// `k x n` and `m x n` matrices under their strides, C's elements are distinct and C does not
/// alias A or B.
pub(crate) unsafe fn try_sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) -> bool {
    if !available() {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    if csc == 1 || n == 1 {
        // SAFETY: AVX-512F checked above; forwarded contract.
        unsafe { sgemm_avx512(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc) };
        true
    } else if rsc == 1 || m == 1 {
        // Cᵀ = Bᵀ·Aᵀ, with Cᵀ's rows contiguous.
        // SAFETY: as above, with the operands' roles and strides swapped.
        unsafe { sgemm_avx512(n, k, m, alpha, b, csb, rsb, a, csa, rsa, beta, c, csc) };
        true
    } else {
        false
    }
}

/// The blocked product; C is `m x n` with row stride `rsc` and column stride 1.
///
/// # Safety
/// The CPU must have AVX-512F; the pointers must address `m x k`, `k x n` and `m x n` matrices
/// under the given strides, and `c` must not alias `a` or `b`.
#[target_feature(enable = "avx512f")]
unsafe fn sgemm_avx512(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) is inside C.
                unsafe {
                    let p = c.offset(i as isize * rsc + j as isize);
                    *p = if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
        return;
    }
    let a_blocks = MC * KC / 16;
    let b_blocks = KC * NC / 16;
    let run = |buf: &mut Vec<Block>| {
        if buf.len() < a_blocks + b_blocks {
            buf.resize(a_blocks + b_blocks, Block([0.0; 16]));
        }
        let (ap, bp) = buf.split_at_mut(a_blocks);
        // SAFETY: the buffers hold MC x KC and KC x NC floats, 64-byte aligned; forwarded
        // contract for the matrices; AVX-512F checked by the caller.
        unsafe {
            blocked(
                m,
                k,
                n,
                alpha,
                a,
                rsa,
                csa,
                b,
                rsb,
                csb,
                beta,
                c,
                rsc,
                ap.as_mut_ptr().cast(),
                bp.as_mut_ptr().cast(),
            )
        };
    };
    PACK.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        // Re-entered on this thread (not done by kiln itself): use a buffer of its own.
        Err(_) => run(&mut Vec::new()),
    });
}

/// The loops of [`sgemm_avx512`] over packed blocks, with `ap` (`MC x KC` floats) and `bp`
/// (`KC x NC` floats) as packing buffers.
///
/// # Safety
/// As [`sgemm_avx512`]; the buffers are 64-byte aligned and as large as stated.
#[target_feature(enable = "avx512f")]
unsafe fn blocked(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    ap: *mut f32,
    bp: *mut f32,
) {
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // SAFETY: the block lies inside B; bp holds KC x NC floats.
            unsafe { pack(kc, nc, b.offset(pc as isize * rsb + jc as isize * csb), rsb, csb, bp) };
            let beta_p = if pc == 0 { beta } else { 1.0 };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                // SAFETY: the block lies inside A (packed as the strips of Aᵀ); ap holds
                // MC x KC floats.
                unsafe { pack(kc, mc, a.offset(ic as isize * rsa + pc as isize * csa), csa, rsa, ap) };
                for jr in (0..nc).step_by(NR) {
                    let nr = NR.min(nc - jr);
                    for ir in (0..mc).step_by(MR) {
                        let mr = MR.min(mc - ir);
                        // SAFETY: strips inside the packed buffers; the tile inside C.
                        unsafe {
                            kernel(
                                kc,
                                alpha,
                                ap.add(ir * kc),
                                bp.add(jr * kc),
                                beta_p,
                                c.offset((ic + ir) as isize * rsc + (jc + jr) as isize),
                                rsc,
                                mr,
                                nr,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Packs a `kc x w` block of a matrix (element `(p, j)` at `src[p*sk + j*sw]`) into
/// `ceil(w / 16)` strips of `kc x 16` floats, strip `s` at `dst + s*kc*16` holding columns
/// `16s..16s+16` row by row, zero-padded past `w`.
///
/// # Safety
/// The block must be readable under the strides and `dst` must hold `ceil(w/16)*16*kc` floats,
/// 64-byte aligned.
#[target_feature(enable = "avx512f")]
unsafe fn pack(kc: usize, w: usize, src: *const f32, sk: isize, sw: isize, dst: *mut f32) {
    // The operands are activations of several MiB read once: the loops below read memory in
    // long contiguous runs and prefetch ahead, since hardware prefetchers lose track of rows
    // that start on a new page every few hundred bytes (packing was memory-latency bound).
    let mask_of = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            (1u16 << n) - 1
        }
    };
    // SAFETY (whole function): every address read lies inside the block and every address
    // written inside the buffer, by the caller's contract; prefetches may point past the block,
    // which is harmless (they never fault) and computed with wrapping arithmetic.
    unsafe {
        if sw == 1 {
            // Row p of the block is contiguous: walk the rows in order, each row giving one
            // vector to every strip.
            const AHEAD: isize = 8;
            for p in 0..kc {
                let row = src.offset(p as isize * sk);
                let next = src.wrapping_offset((p as isize + AHEAD) * sk);
                for j0 in (0..w).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(j0).cast());
                    let v = _mm512_maskz_loadu_ps(mask_of(w - j0), row.add(j0));
                    _mm512_store_ps(dst.add(j0 * kc + p * 16), v);
                }
            }
            return;
        }
        for (s, j0) in (0..w).step_by(16).enumerate() {
            let jw = 16.min(w - j0);
            let out = dst.add(s * kc * 16);
            let base = src.offset(j0 as isize * sw);
            if sk == 1 {
                // Columns are contiguous along p: transpose 16 x 16 blocks in registers, the
                // 16 rows read as 16 streams while the next strip's rows are prefetched.
                for p0 in (0..kc).step_by(16) {
                    let pw = 16.min(kc - p0);
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (j, rj) in r.iter_mut().enumerate().take(jw) {
                        let at = base.offset(j as isize * sw + p0 as isize);
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_offset(16 * sw).cast());
                        *rj = _mm512_maskz_loadu_ps(mask_of(pw), at);
                    }
                    let t = transpose16(r);
                    for (q, tq) in t.iter().enumerate().take(pw) {
                        _mm512_store_ps(out.add((p0 + q) * 16), *tq);
                    }
                }
            } else {
                for p in 0..kc {
                    let row = out.add(p * 16);
                    for j in 0..16 {
                        *row.add(j) = if j < jw { *base.offset(p as isize * sk + j as isize * sw) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Transposes the 16 x 16 matrix whose rows are `r` (row `i` in `r[i]`).
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // 1: interleave row pairs within 128-bit lanes.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // 2: u[4g + q], lane l = rows 4g..4g+4 of column 4l + q.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * g + 1], t[4 * g + 3]);
    }
    // 3 and 4: gather lane l of u[q], u[4 + q], u[8 + q], u[12 + q] into column 4l + q.
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        out[8 + q] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
        out[4 + q] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
    }
    out
}

/// One 16 x 16 tile: `C[..mr, ..nr] = alpha * Ap·Bp + beta * C` over `kc` packed steps.
///
/// # Safety
/// `a` and `b` address `kc` packed steps of 16 floats (64-byte aligned); C's `mr x nr` tile at
/// `c` (row stride `rsc`, column stride 1) is valid, and read only when `beta != 0`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn kernel(
    kc: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    mr: usize,
    nr: usize,
) {
    let mut ab = [_mm512_setzero_ps(); MR];
    // SAFETY: inside the packed strips by the caller's contract.
    unsafe {
        for p in 0..kc {
            let bv = _mm512_load_ps(b.add(p * NR));
            let ap = a.add(p * MR);
            for i in 0..MR {
                ab[i] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i)), bv, ab[i]);
            }
        }
    }
    let alphav = _mm512_set1_ps(alpha);
    let betav = _mm512_set1_ps(beta);
    let mask: __mmask16 = if nr == 16 { 0xFFFF } else { (1u16 << nr) - 1 };
    // A constant trip count keeps `ab` indexed by constants (in registers).
    for i in 0..MR {
        if i >= mr {
            break;
        }
        // SAFETY: row i < mr of the tile, columns masked to nr.
        unsafe {
            let row = c.offset(i as isize * rsc);
            let v = if beta == 0.0 {
                _mm512_mul_ps(alphav, ab[i])
            } else {
                _mm512_fmadd_ps(alphav, ab[i], _mm512_mul_ps(betav, _mm512_maskz_loadu_ps(mask, row)))
            };
            _mm512_mask_storeu_ps(row, mask, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `C = alpha*A·B + beta*C` in f64, element by element.
    fn naive(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &[f32],
        (rsc, csc): (usize, usize),
    ) -> Vec<f64> {
        let mut out = c.iter().map(|&x| x as f64).collect::<Vec<_>>();
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                }
                let o = &mut out[i * rsc + j * csc];
                *o = alpha as f64 * s + if beta == 0.0 { 0.0 } else { beta as f64 * *o };
            }
        }
        out
    }

    /// Runs one product with A and B in the given layouts (`true` = transposed storage) and C
    /// row-major (or column-major), and compares with `naive`.
    fn check(m: usize, k: usize, n: usize, ta: bool, tb: bool, tc: bool, alpha: f32, beta: f32, seed: u64) {
        if !available() {
            return;
        }
        let mut rng = crate::Rng::new(seed);
        let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let sa = if ta { (1, m) } else { (k, 1) };
        let sb = if tb { (1, k) } else { (n, 1) };
        let sc = if tc { (1, m) } else { (n, 1) };
        let want = naive(m, k, n, alpha, &a, sa, &b, sb, beta, &c0, sc);
        let mut c = c0.clone();
        // SAFETY: the buffers hold the matrices under these strides.
        let done = unsafe {
            try_sgemm(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                sa.0 as isize,
                sa.1 as isize,
                b.as_ptr(),
                sb.0 as isize,
                sb.1 as isize,
                beta,
                c.as_mut_ptr(),
                sc.0 as isize,
                sc.1 as isize,
            )
        };
        assert!(done);
        let tol = 1e-5 * (k as f64).max(1.0);
        for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
            assert!((*x as f64 - y).abs() <= tol, "{m}x{k}x{n} ta={ta} tb={tb} tc={tc} [{idx}]: {x} vs {y}");
        }
    }

    #[test]
    fn transpose16_transposes() {
        if !available() {
            return;
        }
        let src: Vec<f32> = (0..256).map(|x| x as f32).collect();
        // SAFETY: AVX-512F checked; 16 rows of 16 floats.
        let out = unsafe {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                *ri = _mm512_loadu_ps(src.as_ptr().add(16 * i));
            }
            let t = transpose16(r);
            let mut out = vec![0.0f32; 256];
            for (i, ti) in t.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *ti);
            }
            out
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * i + j], src[16 * j + i]);
            }
        }
    }

    #[test]
    fn crosses_every_block_boundary() {
        // k > KC, n > NC, m > MC, ragged edges in every direction.
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check(MC + 19, KC + 37, NC + 21, ta, tb, false, 1.0, 0.0, 1);
        }
        check(MC + 3, KC + 5, 40, false, true, false, 0.5, -1.5, 2);
        check(37, KC * 2, NC + 3, true, false, true, 1.0, 1.0, 3);
    }

    #[test]
    fn zero_depth_scales_c() {
        check(5, 0, 7, false, false, false, 1.0, 0.0, 4);
        check(5, 0, 7, false, false, false, 1.0, 2.0, 5);
    }

    #[test]
    fn broadcast_operand_with_zero_stride() {
        if !available() {
            return;
        }
        // A's rows all the same row (row stride 0), as an expanded tensor gives.
        let (m, k, n) = (20, 33, 18);
        let a: Vec<f32> = (0..k).map(|p| p as f32 * 0.25 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|x| (x % 7) as f32 - 3.0).collect();
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: A is 1 x k read with row stride 0; B and C are contiguous.
        unsafe {
            assert!(try_sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                0,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1
            ));
        }
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-4);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_naive(m in 1usize..50, k in 1usize..70, n in 1usize..50, ta: bool, tb: bool, tc: bool,
                         beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]), seed in 0u64..1000) {
            check(m, k, n, ta, tb, tc, 0.75, beta, seed);
        }
    }
}
