//! Single-threaded f32 GEMM for x86-64 CPUs with AVX2 and FMA: the kernel behind `f32`'s
//! [`Float::gemm_raw`](crate::Float::gemm_raw) where the CPU has them but not AVX-512F (the
//! AVX-512 kernel of `sgemm.rs` is preferred where both are available).
//!
//! The design is `sgemm.rs`'s, for 256-bit vectors: Goto's blocking (B packed in `KC x NC`
//! panels of 16-column strips, A in `MC x KC` blocks of 6-row strips) around a 6 x 16
//! micro-kernel (12 ymm accumulators, two vectors of B and one broadcast of A per row and step).
//! Packing fills a strip with 8-wide vector loads when the operand is contiguous across the
//! strip, with 8 x 8 in-register transposes when it is contiguous along k, and with element
//! copies otherwise (broadcast zero strides, general views); it prefetches ahead as `sgemm.rs`
//! does. The packing buffers are thread-local and reused across calls.
//!
//! Products with one row or one column (`m == 1` or `n == 1`, e.g. a Linear layer at batch 1)
//! are matrix-vector products: packing a whole weight matrix to use it once would cost more
//! than the product, so they run without packing, as dot products when the matrix is
//! contiguous along k and as column updates (axpy) when it is contiguous along the output.
//!
//! # Choosing the kernel
//!
//! The environment variable `KILN_SGEMM`, read once (at the first `f32` product), selects the
//! kernel of `f32` products on x86-64, for comparisons:
//! - `KILN_SGEMM=matrixmultiply`: matrixmultiply's `sgemm` for every product (kiln's kernels
//!   off);
//! - `KILN_SGEMM=avx2`: this kernel for every product, even where AVX-512F is available;
//! - unset, empty or `auto`: the AVX-512 kernel if the CPU has AVX-512F; else, on a CPU with
//!   AVX2 and FMA, this kernel for the matrix-vector products and matrixmultiply for the rest
//!   (on the 2-core AMD EPYC it was measured on, this kernel's blocked path ran level with
//!   matrixmultiply's: 66-73 against 68-80 GFLOP/s on squares and convolution shapes, so the
//!   default keeps matrixmultiply there, while its matrix-vector path ran 29 against 3 GFLOP/s);
//! - any other value panics at the first `f32` product, naming the variable and its value.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows of the register tile of C (one broadcast of A each).
const MR: usize = 6;
/// Columns of the register tile of C (two 8-float vectors).
const NR: usize = 16;
/// Depth of one packed panel (k): a `KC x 16` strip of B is 16 KiB, half of L1d.
const KC: usize = 256;
/// Rows of A packed at a time (a multiple of `MR`): the `MC x KC` block (144 KiB) stays in the
/// 512 KiB L2 while the B strips stream through L1.
const MC: usize = 144;
/// Columns of B packed at a time (a multiple of `NR`): the `KC x NC` panel (4 MiB) stays in L3.
const NC: usize = 4080;
/// Floats of slack after packed A: a 6-float step is stored with an 8-float vector store, whose
/// last two floats land in the next step (rewritten right after) or, at the very end, here.
const A_SLACK: usize = 8;

/// A 32-byte aligned block of 8 floats, the unit of the packing buffers.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Block([f32; 8]);

thread_local! {
    /// Packed A (`MC x KC` at most) followed by packed B (`KC x NC` at most), reused across
    /// calls.
    static PACK: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// The `f32` GEMM kernel selected by the environment variable `KILN_SGEMM` (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SgemmChoice {
    /// The fastest kernel the CPU runs (the default).
    Auto,
    /// This AVX2 kernel even where AVX-512F is available (`KILN_SGEMM=avx2`).
    Avx2,
    /// matrixmultiply's `sgemm` for every product (`KILN_SGEMM=matrixmultiply`).
    MatrixMultiply,
}

/// The kernel selected by `KILN_SGEMM`, read once per process.
pub(crate) fn sgemm_choice() -> SgemmChoice {
    static CHOICE: OnceLock<SgemmChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("KILN_SGEMM").as_deref().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("matrixmultiply") => SgemmChoice::MatrixMultiply,
        Ok(v) if v.eq_ignore_ascii_case("avx2") => SgemmChoice::Avx2,
        Ok("") | Ok("auto") | Err(std::env::VarError::NotPresent) => SgemmChoice::Auto,
        // A setting the user made is not ignored (as KILN_NUM_THREADS).
        Ok(v) => panic!("KILN_SGEMM={v:?}: expected auto, avx2 or matrixmultiply (or leave it unset)"),
        Err(std::env::VarError::NotUnicode(v)) => {
            panic!("KILN_SGEMM={v:?}: expected auto, avx2 or matrixmultiply (or leave it unset)")
        }
    })
}

/// Whether this CPU runs the AVX2 kernel (AVX2 and FMA).
#[inline]
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// `C = alpha * A·B + beta * C` (A `m x k`, B `k x n`, any strides) when the CPU has AVX2 and
/// FMA and C has a unit stride in one direction (any strides when `m == 1` or `n == 1`);
/// returns `false` (doing nothing) otherwise, so that the caller falls back to another kernel.
/// With `beta == 0` C is never read.
///
/// # Safety
/// Same contract as [`Float::gemm_raw`](crate::Float::gemm_raw): the pointers address `m x k`,
/// `k x n` and `m x n` matrices under their strides, C's elements are distinct and C does not
/// alias A or B.
pub(crate) unsafe fn try_sgemm_avx2(
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
    if m == 1 {
        // C's row j = alpha * (row of A)·(column j of B): the matrix is Bᵀ (n x k).
        // SAFETY: AVX2 and FMA checked above; forwarded contract.
        unsafe { gemv(n, k, alpha, b, csb, rsb, a, csa, beta, c, csc) };
    } else if n == 1 {
        // SAFETY: as above.
        unsafe { gemv(m, k, alpha, a, rsa, csa, b, rsb, beta, c, rsc) };
    } else if csc == 1 {
        // SAFETY: as above.
        unsafe { sgemm_avx2(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc) };
    } else if rsc == 1 {
        // Cᵀ = Bᵀ·Aᵀ, with Cᵀ's rows contiguous.
        // SAFETY: as above, with the operands' roles and strides swapped.
        unsafe { sgemm_avx2(n, k, m, alpha, b, csb, rsb, a, csa, rsa, beta, c, csc) };
    } else {
        return false;
    }
    true
}

/// `y = alpha * M·x + beta * y` for an `l x k` matrix M (element `(i, p)` at
/// `mat[i*rs + p*cs]`), x of length k (stride `sx`) and y of length l (stride `sy`), without
/// packing. With `beta == 0` y is never read.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the pointers address M, x and y under their strides, y's
/// elements are distinct and y aliases neither M nor x.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv(
    l: usize,
    k: usize,
    alpha: f32,
    mat: *const f32,
    rs: isize,
    cs: isize,
    x: *const f32,
    sx: isize,
    beta: f32,
    y: *mut f32,
    sy: isize,
) {
    if cs == 1 && k > 1 {
        // Rows of M contiguous along k: dot products, x made contiguous first if it is not.
        if sx == 1 {
            // SAFETY: forwarded contract.
            unsafe { gemv_dot(l, k, alpha, mat, rs, x, beta, y, sy) };
        } else {
            // SAFETY: x has k elements under stride sx.
            let xs: Vec<f32> = (0..k).map(|p| unsafe { *x.offset(p as isize * sx) }).collect();
            // SAFETY: forwarded contract; xs is contiguous.
            unsafe { gemv_dot(l, k, alpha, mat, rs, xs.as_ptr(), beta, y, sy) };
        }
    } else if rs == 1 && l > 1 {
        // Columns of M contiguous along the output: column updates.
        // SAFETY: forwarded contract.
        unsafe { gemv_axpy(l, k, alpha, mat, cs, x, sx, beta, y, sy) };
    } else {
        for i in 0..l {
            let mut s = 0.0f32;
            for p in 0..k {
                // SAFETY: (i, p) is inside M, p inside x.
                s += unsafe { *mat.offset(i as isize * rs + p as isize * cs) * *x.offset(p as isize * sx) };
            }
            // SAFETY: i is inside y.
            unsafe { store_scaled(y.offset(i as isize * sy), alpha, s, beta) };
        }
    }
}

/// `*out = alpha * s + beta * *out`, not reading `*out` when `beta == 0`.
///
/// # Safety
/// `out` is valid for writes, and for reads when `beta != 0`.
#[inline(always)]
unsafe fn store_scaled(out: *mut f32, alpha: f32, s: f32, beta: f32) {
    // SAFETY: by the caller's contract.
    unsafe { *out = if beta == 0.0 { alpha * s } else { alpha * s + beta * *out } };
}

/// Sum of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// A mask for `_mm256_maskload_ps` selecting the first `n` (at most 8) lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lanes(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// The first `n` floats at `at` (all 8 if `n >= 8`), the other lanes zero; reads nothing
/// when `n == 0`.
///
/// # Safety
/// The first `min(n, 8)` floats at `at` are readable; the CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load8(at: *const f32, n: usize) -> __m256 {
    // SAFETY: only the first min(n, 8) floats are read (masked lanes are not accessed).
    unsafe {
        if n >= 8 {
            _mm256_loadu_ps(at)
        } else if n > 0 {
            _mm256_maskload_ps(at, lanes(n))
        } else {
            _mm256_setzero_ps()
        }
    }
}

/// [`gemv`] with M's rows contiguous (`cs == 1`) and x contiguous: four rows at a time share
/// the loads of x, each with two accumulators.
///
/// # Safety
/// As [`gemv`], with `cs == 1` and `sx == 1`.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_dot(
    l: usize,
    k: usize,
    alpha: f32,
    mat: *const f32,
    rs: isize,
    x: *const f32,
    beta: f32,
    y: *mut f32,
    sy: isize,
) {
    let k16 = k / 16 * 16;
    let k8 = k / 8 * 8;
    let tail = lanes(k - k8);
    let mut i = 0;
    // SAFETY (whole loop): rows i..i+4 (or i) are inside M and their first k elements
    // contiguous; masked loads read only the first k - k8 elements of the tail; y's element i
    // is inside y.
    unsafe {
        while i + 4 <= l {
            let rows: [*const f32; 4] = std::array::from_fn(|r| mat.offset((i + r) as isize * rs));
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            let mut p = 0;
            while p < k16 {
                let x0 = _mm256_loadu_ps(x.add(p));
                let x1 = _mm256_loadu_ps(x.add(p + 8));
                for r in 0..4 {
                    acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[r].add(p)), x0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[r].add(p + 8)), x1, acc[r][1]);
                }
                p += 16;
            }
            if p < k8 {
                let x0 = _mm256_loadu_ps(x.add(p));
                for r in 0..4 {
                    acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[r].add(p)), x0, acc[r][0]);
                }
            }
            if k8 < k {
                let x0 = _mm256_maskload_ps(x.add(k8), tail);
                for r in 0..4 {
                    acc[r][1] = _mm256_fmadd_ps(_mm256_maskload_ps(rows[r].add(k8), tail), x0, acc[r][1]);
                }
            }
            for r in 0..4 {
                let s = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
                store_scaled(y.offset((i + r) as isize * sy), alpha, s, beta);
            }
            i += 4;
        }
        while i < l {
            let row = mat.offset(i as isize * rs);
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut p = 0;
            while p < k16 {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(p)), _mm256_loadu_ps(x.add(p)), acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(p + 8)), _mm256_loadu_ps(x.add(p + 8)), acc[1]);
                p += 16;
            }
            if p < k8 {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(p)), _mm256_loadu_ps(x.add(p)), acc[0]);
            }
            if k8 < k {
                let v = _mm256_maskload_ps(row.add(k8), tail);
                acc[1] = _mm256_fmadd_ps(v, _mm256_maskload_ps(x.add(k8), tail), acc[1]);
            }
            store_scaled(y.offset(i as isize * sy), alpha, hsum(_mm256_add_ps(acc[0], acc[1])), beta);
            i += 1;
        }
    }
}

/// [`gemv`] with M's columns contiguous (`rs == 1`): y is computed 64 (then 8) elements at a
/// time in registers, adding `x[p]` times the matching piece of every column p.
///
/// # Safety
/// As [`gemv`], with `rs == 1`.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_axpy(
    l: usize,
    k: usize,
    alpha: f32,
    mat: *const f32,
    cs: isize,
    x: *const f32,
    sx: isize,
    beta: f32,
    y: *mut f32,
    sy: isize,
) {
    /// Writes `alpha * acc + beta * y` to the `8 * W` elements of y from `i`.
    ///
    /// # Safety
    /// Those elements are inside y; the CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn flush<const W: usize>(acc: &[__m256; W], i: usize, alpha: f32, beta: f32, y: *mut f32, sy: isize) {
        let mut out = [0.0f32; 64];
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: out holds 64 >= 8 * W floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), *a) };
        }
        for (e, s) in out.iter().enumerate().take(8 * W) {
            // SAFETY: element i + e is inside y by the caller's contract.
            unsafe { store_scaled(y.offset((i + e) as isize * sy), alpha, *s, beta) };
        }
    }
    let mut i = 0;
    // SAFETY (whole loop): elements i..i+64 (or i..i+8) of every column p < k are inside M
    // (columns contiguous), x[p] inside x, and the flushed elements inside y.
    unsafe {
        while i + 64 <= l {
            let mut acc = [_mm256_setzero_ps(); 8];
            for p in 0..k {
                let xp = _mm256_set1_ps(*x.offset(p as isize * sx));
                let col = mat.offset(p as isize * cs).add(i);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(col.add(8 * v)), xp, *a);
                }
            }
            flush(&acc, i, alpha, beta, y, sy);
            i += 64;
        }
        while i + 8 <= l {
            let mut acc = [_mm256_setzero_ps(); 1];
            for p in 0..k {
                let xp = _mm256_set1_ps(*x.offset(p as isize * sx));
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(mat.offset(p as isize * cs).add(i)), xp, acc[0]);
            }
            flush(&acc, i, alpha, beta, y, sy);
            i += 8;
        }
        if i < l {
            let mask = lanes(l - i);
            let mut acc = [_mm256_setzero_ps(); 1];
            for p in 0..k {
                let xp = _mm256_set1_ps(*x.offset(p as isize * sx));
                acc[0] = _mm256_fmadd_ps(_mm256_maskload_ps(mat.offset(p as isize * cs).add(i), mask), xp, acc[0]);
            }
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            for (e, s) in out.iter().enumerate().take(l - i) {
                store_scaled(y.offset((i + e) as isize * sy), alpha, *s, beta);
            }
        }
    }
}

/// The blocked product; C is `m x n` with row stride `rsc` and column stride 1.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the pointers must address `m x k`, `k x n` and `m x n`
/// matrices under the given strides, and `c` must not alias `a` or `b`.
#[target_feature(enable = "avx2,fma")]
unsafe fn sgemm_avx2(
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
                unsafe { store_scaled(c.offset(i as isize * rsc + j as isize), 0.0, 0.0, beta) };
            }
        }
        return;
    }
    // Buffers sized for this product (at most MC x KC and KC x NC), in whole blocks.
    let kc_max = panel_depth(k);
    let a_blocks = (MC.min(m.next_multiple_of(MR)) * kc_max + A_SLACK).div_ceil(8);
    let b_blocks = (NC.min(n.next_multiple_of(NR)) * kc_max).div_ceil(8);
    let run = |buf: &mut Vec<Block>| {
        if buf.len() < a_blocks + b_blocks {
            buf.resize(a_blocks + b_blocks, Block([0.0; 8]));
        }
        let (ap, bp) = buf.split_at_mut(a_blocks);
        // SAFETY: the buffers hold the packed blocks of this product (A's with its slack),
        // 32-byte aligned; forwarded contract for the matrices; AVX2 and FMA checked by the
        // caller.
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

/// The depth of the packed panels for a product of depth `k > 0`: `k` split evenly into
/// `ceil(k / KC)` panels (rounded up to a multiple of 8, so at most `KC`), so that e.g.
/// `k = 288` (a 3x3 convolution of 32 channels) runs as 2 x 144 rather than 256 + 32, the
/// short panel paying for C's loads and stores and the kernel's set-up over few steps.
fn panel_depth(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC)).next_multiple_of(8).min(KC)
}

/// The loops of [`sgemm_avx2`] over packed blocks, with `ap` and `bp` as packing buffers.
///
/// # Safety
/// As [`sgemm_avx2`]; `ap` holds `min(MC, m rounded up to MR) * panel_depth(k) + A_SLACK`
/// floats and `bp` `min(NC, n rounded up to NR) * panel_depth(k)` floats, both 32-byte aligned.
#[target_feature(enable = "avx2,fma")]
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
        let kc_step = panel_depth(k);
        for pc in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - pc);
            // SAFETY: the block lies inside B; bp holds the packed panel.
            unsafe { pack_b(kc, nc, b.offset(pc as isize * rsb + jc as isize * csb), rsb, csb, bp) };
            let beta_p = if pc == 0 { beta } else { 1.0 };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                // SAFETY: the block lies inside A; ap holds the packed block and its slack.
                unsafe { pack_a(kc, mc, a.offset(ic as isize * rsa + pc as isize * csa), csa, rsa, ap) };
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

/// Packs a `kc x w` block of B (element `(p, j)` at `src[p*sk + j*sw]`) into `ceil(w / 16)`
/// strips of `kc x 16` floats, strip `s` at `dst + s*kc*16` holding columns `16s..16s+16` row
/// by row, zero-padded past `w`.
///
/// # Safety
/// The block must be readable under the strides and `dst` must hold `ceil(w/16)*16*kc` floats,
/// 32-byte aligned; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(kc: usize, w: usize, src: *const f32, sk: isize, sw: isize, dst: *mut f32) {
    // As in sgemm.rs, the loops read memory in long contiguous runs and prefetch ahead, since
    // hardware prefetchers lose track of rows that start on a new page every few hundred bytes.
    // SAFETY (whole function): every address read lies inside the block (masked loads read only
    // the lanes inside it) and every address written inside the buffer, by the caller's
    // contract; prefetches may point past the block, which is harmless (they never fault) and
    // computed with wrapping arithmetic.
    unsafe {
        if sw == 1 {
            // Row p of the block is contiguous: walk the rows in order, each row giving two
            // vectors to every strip.
            const AHEAD: isize = 8;
            let full = w / NR * NR;
            for p in 0..kc {
                let row = src.offset(p as isize * sk);
                let next = src.wrapping_offset((p as isize + AHEAD) * sk);
                let out = dst.add(p * NR);
                for j0 in (0..full).step_by(NR) {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(j0).cast());
                    _mm256_store_ps(out.add(j0 * kc), _mm256_loadu_ps(row.add(j0)));
                    _mm256_store_ps(out.add(j0 * kc + 8), _mm256_loadu_ps(row.add(j0 + 8)));
                }
                if full < w {
                    let rem = w - full;
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(full).cast());
                    let v0 = _mm256_maskload_ps(row.add(full), lanes(rem));
                    let v1 = if rem > 8 {
                        _mm256_maskload_ps(row.add(full + 8), lanes(rem - 8))
                    } else {
                        _mm256_setzero_ps()
                    };
                    _mm256_store_ps(out.add(full * kc), v0);
                    _mm256_store_ps(out.add(full * kc + 8), v1);
                }
            }
            return;
        }
        for (s, j0) in (0..w).step_by(NR).enumerate() {
            let jw = NR.min(w - j0);
            let out = dst.add(s * kc * NR);
            let base = src.offset(j0 as isize * sw);
            if sk == 1 {
                // Columns are contiguous along p: transpose 8 x 8 blocks in registers, 16 steps
                // (a cache line of each column) at a time, since columns a multiple of 4 KiB
                // apart share an L1 set and a line read in two halves would be fetched twice;
                // each column is prefetched
                // `PREFETCH_AHEAD` steps ahead (then the next strip's).
                for p0 in (0..kc).step_by(16) {
                    let pw = 16.min(kc - p0);
                    let ahead_b = prefetch_offset(p0, kc, NR as isize * sw);
                    for h in 0..2 {
                        let mut lo = [_mm256_setzero_ps(); 8];
                        let mut hi = [_mm256_setzero_ps(); 8];
                        for j in 0..8.min(jw.saturating_sub(8 * h)) {
                            let at = base.offset((8 * h + j) as isize * sw + p0 as isize);
                            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_offset(ahead_b).cast());
                            lo[j] = load8(at, pw);
                            hi[j] = load8(at.wrapping_add(8), pw.saturating_sub(8));
                        }
                        for (q0, r) in [(0, lo), (8, hi)] {
                            let t = transpose8(r);
                            for (q, tq) in t.iter().enumerate().take(pw.saturating_sub(q0)) {
                                _mm256_store_ps(out.add((p0 + q0 + q) * NR + 8 * h), *tq);
                            }
                        }
                    }
                }
            } else {
                for p in 0..kc {
                    let row = out.add(p * NR);
                    for j in 0..NR {
                        *row.add(j) = if j < jw { *base.offset(p as isize * sk + j as isize * sw) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Packs a `kc x h` block of Aᵀ (element `(p, i)`, i.e. `A[i][p]`, at `src[p*sk + i*sh]`) into
/// `ceil(h / 6)` strips of `kc x 6` floats, strip `s` at `dst + s*kc*6` holding rows
/// `6s..6s+6` of A step by step, zero-padded past `h`.
///
/// # Safety
/// The block must be readable under the strides and `dst` must hold `ceil(h/6)*6*kc + A_SLACK`
/// floats; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(kc: usize, h: usize, src: *const f32, sk: isize, sh: isize, dst: *mut f32) {
    // SAFETY (whole function): as in `pack_b`; the 8-float stores of 6-float steps write two
    // floats past the step, into the next step (written afterwards, the loops going forwards)
    // or, for the last one, into the slack.
    unsafe {
        if sh == 1 {
            // Step p of the block is contiguous (A column-major): walk the steps in order.
            const AHEAD: isize = 8;
            let full = h / MR * MR;
            for p in 0..kc {
                let from = src.offset(p as isize * sk);
                let next = src.wrapping_offset((p as isize + AHEAD) * sk);
                for i0 in (0..h).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(i0).cast());
                }
                let out = dst.add(p * MR);
                for i0 in (0..full).step_by(MR) {
                    std::ptr::copy_nonoverlapping(from.add(i0), out.add(i0 * kc), MR);
                }
                if full < h {
                    let to = out.add(full * kc);
                    for i in 0..MR {
                        *to.add(i) = if full + i < h { *from.add(full + i) } else { 0.0 };
                    }
                }
            }
            return;
        }
        for (s, i0) in (0..h).step_by(MR).enumerate() {
            let iw = MR.min(h - i0);
            let out = dst.add(s * kc * MR);
            let base = src.offset(i0 as isize * sh);
            if sk == 1 {
                // Rows of A contiguous along p: 8 x 8 transposes of the strip's rows (and two
                // zero rows), 16 steps (a cache line of each row) at a time as in `pack_b`,
                // prefetching as `pack_b` does.
                for p0 in (0..kc).step_by(16) {
                    let pw = 16.min(kc - p0);
                    let ahead_a = prefetch_offset(p0, kc, MR as isize * sh);
                    let mut lo = [_mm256_setzero_ps(); 8];
                    let mut hi = [_mm256_setzero_ps(); 8];
                    for i in 0..iw {
                        let at = base.offset(i as isize * sh + p0 as isize);
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_offset(ahead_a).cast());
                        lo[i] = load8(at, pw);
                        hi[i] = load8(at.wrapping_add(8), pw.saturating_sub(8));
                    }
                    for (q0, r) in [(0, lo), (8, hi)] {
                        let t = transpose8(r);
                        for (q, tq) in t.iter().enumerate().take(pw.saturating_sub(q0)) {
                            _mm256_storeu_ps(out.add((p0 + q0 + q) * MR), *tq);
                        }
                    }
                }
            } else {
                for p in 0..kc {
                    let step = out.add(p * MR);
                    for i in 0..MR {
                        *step.add(i) = if i < iw { *base.offset(p as isize * sk + i as isize * sh) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Steps ahead (4 cache lines) at which the transposing packers prefetch a row or column.
const PREFETCH_AHEAD: usize = 64;

/// Offset from the element at step `p0` of a row (or column) contiguous along k to the one to
/// prefetch: `PREFETCH_AHEAD` steps further along it, or past the panel's `kc` steps, into
/// the row `next` elements away (the next strip's), so that the prefetches form one stream.
#[inline]
fn prefetch_offset(p0: usize, kc: usize, next: isize) -> isize {
    if p0 + PREFETCH_AHEAD < kc {
        PREFETCH_AHEAD as isize
    } else {
        next + PREFETCH_AHEAD as isize - kc as isize
    }
}

/// Transposes the 8 x 8 matrix whose rows are `r` (row `i` in `r[i]`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // 1: interleave row pairs within 128-bit lanes.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(x, y)
        } else {
            _mm256_unpackhi_ps(x, y)
        }
    });
    // 2: s[4g + q], lane l = rows 4g..4g+4 of column 4l + q.
    let mut s = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        s[4 * g] = _mm256_shuffle_ps::<0x44>(t[4 * g], t[4 * g + 2]);
        s[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * g], t[4 * g + 2]);
        s[4 * g + 2] = _mm256_shuffle_ps::<0x44>(t[4 * g + 1], t[4 * g + 3]);
        s[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * g + 1], t[4 * g + 3]);
    }
    // 3: column q from the low lanes of s[q] and s[4 + q], column 4 + q from the high ones.
    let mut out = [_mm256_setzero_ps(); 8];
    for q in 0..4 {
        out[q] = _mm256_permute2f128_ps::<0x20>(s[q], s[4 + q]);
        out[4 + q] = _mm256_permute2f128_ps::<0x31>(s[q], s[4 + q]);
    }
    out
}

/// One 6 x 16 tile: `C[..mr, ..nr] = alpha * Ap·Bp + beta * C` over `kc` packed steps.
///
/// # Safety
/// `a` addresses `kc` packed steps of 6 floats, `b` `kc` packed steps of 16 floats (32-byte
/// aligned); C's `mr x nr` tile at `c` (row stride `rsc`, column stride 1) is valid, and read
/// only when `beta != 0`; the CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
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
    let mut ab = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY: inside the packed strips by the caller's contract; the prefetches of C's rows
    // (read or written at the end) address the tile.
    unsafe {
        for i in 0..mr {
            let row = c.offset(i as isize * rsc);
            _mm_prefetch::<_MM_HINT_T0>(row.cast());
            _mm_prefetch::<_MM_HINT_T0>(row.add(nr - 1).cast());
        }
        let step = |ab: &mut [[__m256; 2]; MR], p: usize| {
            let b0 = _mm256_load_ps(b.add(p * NR));
            let b1 = _mm256_load_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for i in 0..MR {
                let ai = _mm256_set1_ps(*ap.add(i));
                ab[i][0] = _mm256_fmadd_ps(ai, b0, ab[i][0]);
                ab[i][1] = _mm256_fmadd_ps(ai, b1, ab[i][1]);
            }
        };
        let mut p = 0;
        while p + 4 <= kc {
            step(&mut ab, p);
            step(&mut ab, p + 1);
            step(&mut ab, p + 2);
            step(&mut ab, p + 3);
            p += 4;
        }
        while p < kc {
            step(&mut ab, p);
            p += 1;
        }
    }
    let alphav = _mm256_set1_ps(alpha);
    if mr == MR && nr == NR {
        let betav = _mm256_set1_ps(beta);
        for i in 0..MR {
            // SAFETY: row i of the full tile.
            unsafe {
                let row = c.offset(i as isize * rsc);
                for h in 0..2 {
                    let v = if beta == 0.0 {
                        _mm256_mul_ps(alphav, ab[i][h])
                    } else {
                        _mm256_fmadd_ps(alphav, ab[i][h], _mm256_mul_ps(betav, _mm256_loadu_ps(row.add(8 * h))))
                    };
                    _mm256_storeu_ps(row.add(8 * h), v);
                }
            }
        }
    } else {
        // An edge tile: through a buffer, element by element.
        let mut tile = [0.0f32; MR * NR];
        for i in 0..MR {
            for h in 0..2 {
                // SAFETY: inside `tile`.
                unsafe { _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8 * h), ab[i][h]) };
            }
        }
        for i in 0..mr {
            for j in 0..nr {
                // SAFETY: (i, j) is inside the tile of C.
                unsafe { store_scaled(c.offset(i as isize * rsc + j as isize), alpha, tile[i * NR + j], beta) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Storage of a `rows x cols` matrix: row-major, column-major, or a general view with both
    /// strides > 1 (rows or columns outermost).
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        RowMajor,
        ColMajor,
        StridedRows,
        StridedCols,
    }

    const LAYOUTS: [Layout; 4] = [Layout::RowMajor, Layout::ColMajor, Layout::StridedRows, Layout::StridedCols];

    impl Layout {
        /// (row stride, column stride, buffer length).
        fn strides(self, rows: usize, cols: usize) -> (usize, usize, usize) {
            let (rs, cs) = match self {
                Layout::RowMajor => (cols, 1),
                Layout::ColMajor => (1, rows),
                Layout::StridedRows => (2 * cols + 3, 2),
                Layout::StridedCols => (3, 3 * rows + 1),
            };
            let len = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
            (rs, cs, len)
        }
    }

    /// Runs one product and compares with an f64 reference, within f32 rounding relative to
    /// `|alpha| sum |a||b| + |beta c|`. With `beta == 0` C starts as NaN (it must not be read).
    /// Checks C's gaps (strided layouts) are left untouched.
    fn check(m: usize, k: usize, n: usize, la: Layout, lb: Layout, lc: Layout, alpha: f32, beta: f32, seed: u64) {
        if !available() {
            return;
        }
        let mut rng = crate::Rng::new(seed);
        let mut rand = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_f64() as f32 - 0.5).collect() };
        let (rsa, csa, la_len) = la.strides(m, k);
        let (rsb, csb, lb_len) = lb.strides(k, n);
        let (rsc, csc, lc_len) = lc.strides(m, n);
        let a = rand(la_len);
        let b = rand(lb_len);
        let c0 = if beta == 0.0 { vec![f32::NAN; lc_len] } else { rand(lc_len) };
        let mut c = c0.clone();
        // SAFETY: the buffers hold the matrices under these strides; C's are distinct.
        let done = unsafe {
            try_sgemm_avx2(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                beta,
                c.as_mut_ptr(),
                rsc as isize,
                csc as isize,
            )
        };
        let unit_c = rsc == 1 || csc == 1 || m <= 1 || n <= 1;
        assert_eq!(done, unit_c, "{m}x{k}x{n} {la:?} {lb:?} {lc:?}");
        if !done {
            assert!(c.iter().zip(&c0).all(|(x, y)| x.to_bits() == y.to_bits()));
            return;
        }
        let mut touched = vec![false; lc_len];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let x = a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                    s += x;
                    mag += x.abs();
                }
                let idx = i * rsc + j * csc;
                touched[idx] = true;
                let old = if beta == 0.0 { 0.0 } else { beta as f64 * c0[idx] as f64 };
                let want = alpha as f64 * s + old;
                let tol = 1e-5 * (alpha.abs() as f64 * mag + old.abs()) + 1e-30;
                let got = c[idx] as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{m}x{k}x{n} {la:?} {lb:?} {lc:?} alpha={alpha} beta={beta} ({i},{j}): {got} vs {want}"
                );
            }
        }
        for (idx, t) in touched.iter().enumerate() {
            if !t {
                assert_eq!(c[idx].to_bits(), c0[idx].to_bits(), "gap {idx} of C written");
            }
        }
    }

    #[test]
    fn transpose8_transposes() {
        if !available() {
            return;
        }
        let src: Vec<f32> = (0..64).map(|x| x as f32).collect();
        // SAFETY: AVX2 checked; 8 rows of 8 floats.
        let out = unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.as_ptr().add(8 * i)));
            let t = transpose8(r);
            let mut out = vec![0.0f32; 64];
            for (i, ti) in t.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *ti);
            }
            out
        };
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(out[8 * i + j], src[8 * j + i]);
            }
        }
    }

    #[test]
    fn crosses_every_block_boundary() {
        let mut seed = 0;
        for la in LAYOUTS {
            for lb in LAYOUTS {
                seed += 1;
                check(MC + 7, KC + 3, 2 * NR + 5, la, lb, Layout::RowMajor, 1.0, 0.0, seed);
                check(2 * NR + 5, KC + 3, MC + 7, la, lb, Layout::ColMajor, 0.5, -1.5, seed);
            }
        }
        check(MC + 19, 2 * KC + 1, NC + 21, Layout::RowMajor, Layout::ColMajor, Layout::RowMajor, 1.0, 1.0, 100);
        check(13, KC + 37, NC + 21, Layout::ColMajor, Layout::RowMajor, Layout::ColMajor, -1.0, 0.0, 101);
    }

    #[test]
    fn zero_depth_scales_c() {
        for lc in [Layout::RowMajor, Layout::ColMajor] {
            check(5, 0, 7, Layout::RowMajor, Layout::RowMajor, lc, 1.0, 0.0, 4);
            check(5, 0, 7, Layout::RowMajor, Layout::RowMajor, lc, 1.0, 2.0, 5);
            check(1, 0, 7, Layout::RowMajor, Layout::RowMajor, lc, 1.0, 0.0, 6);
            check(5, 0, 1, Layout::ColMajor, Layout::RowMajor, lc, 1.0, -1.0, 7);
        }
    }

    #[test]
    fn vector_products() {
        // m == 1 and n == 1 (the unpacked paths), lengths around their 64/16/8 steps, every
        // operand layout and a strided C.
        let mut seed = 1000;
        for len in [1, 3, 8, 13, 64, 65, 75, 130] {
            for k in [1, 2, 7, 8, 16, 17, 31, 300] {
                for la in LAYOUTS {
                    for lb in LAYOUTS {
                        seed += 1;
                        let beta = if seed % 2 == 0 { 0.0 } else { 0.5 };
                        let lc = if seed % 3 == 0 { Layout::StridedRows } else { Layout::RowMajor };
                        check(1, k, len, la, lb, lc, 1.25, beta, seed);
                        check(len, k, 1, la, lb, lc, -0.5, beta, seed + 7);
                    }
                }
            }
        }
    }

    #[test]
    fn strided_c_falls_back() {
        check(7, 5, 9, Layout::RowMajor, Layout::RowMajor, Layout::StridedRows, 1.0, 1.0, 8);
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
            assert!(try_sgemm_avx2(
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

    fn layout() -> impl Strategy<Value = Layout> {
        prop::sample::select(LAYOUTS.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]
        #[test]
        fn matches_naive(m in 0usize..80, k in 0usize..80, n in 0usize..80, la in layout(), lb in layout(),
                         tc: bool, alpha in prop::sample::select(vec![1.0f32, 0.75, -2.0]),
                         beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]), seed in 0u64..1000) {
            let lc = if tc { Layout::ColMajor } else { Layout::RowMajor };
            check(m, k, n, la, lb, lc, alpha, beta, seed);
        }

        #[test]
        fn matches_naive_across_blocks(m in 1usize..200, k in prop::sample::select(vec![KC - 1, KC, KC + 3, 2 * KC + 5]),
                                       n in 1usize..60, la in layout(), lb in layout(), tc: bool,
                                       beta in prop::sample::select(vec![0.0f32, 1.0]), seed in 0u64..1000) {
            let lc = if tc { Layout::ColMajor } else { Layout::RowMajor };
            check(m, k, n, la, lb, lc, 1.0, beta, seed);
        }
    }
}
