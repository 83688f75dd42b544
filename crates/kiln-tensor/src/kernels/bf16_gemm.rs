//! bfloat16 GEMM with `f32` accumulation: `C = alpha * A·B + beta * C` where A and B are read
//! as bfloat16 (an `f32` operand is rounded to bfloat16, to nearest even, while it is packed)
//! and C is `f32`.
//!
//! One micro-kernel per instruction set, chosen at run time ([`Bf16Isa::detect`]):
//!
//! | [`Bf16Isa`]   | instruction                          | tile (rows x columns) |
//! |---------------|--------------------------------------|-----------------------|
//! | `Avx512Bf16`  | `vdpbf16ps` (`_mm512_dpbf16_ps`)     | 16 x 16               |
//! | `Avx2`        | `vfmadd` on bf16 widened to f32      | 4 x 16                |
//! | `Portable`    | scalar (auto-vectorised)             | 4 x 16                |
//!
//! The blocking is the f32 kernel's (Goto's): B is packed in `KC x NC` panels of 16-column
//! strips, A in `MC x KC` blocks of row strips. Both are packed in `vdpbf16ps`'s layout, k in
//! pairs: one 32-bit word holds the bfloat16 values of steps `2q` and `2q + 1` (odd `k` is
//! padded with a zero). Each path adds, per pair and per output, the product of the odd step
//! and then the product of the even step to an `f32` accumulator, as `vdpbf16ps` is specified;
//! a product of two bfloat16 values is exact in `f32`, so every path rounds the same sums the
//! same way and the three give bit-identical results on normal numbers (`vdpbf16ps` flushes
//! subnormal inputs and outputs to zero, the others do not). The `Avx2` path brings no
//! arithmetic speed-up over `f32` (the CPU has no bfloat16 instruction), only the halved
//! packed panels; it is there so that autocast code runs, and is tested, on such CPUs.
//!
//! [`gemm_bf16`] splits large products across kiln's pool exactly as the `f32`
//! [`gemm`](super::gemm::gemm) does. Under [`autocast`](crate::autocast) every `f32` product of
//! kiln (matmul, linear, convolution through im2col, the LSTM's and attention's products) runs
//! through this kernel.

use std::cell::RefCell;
use std::sync::OnceLock;

use super::gemm::MatRef;
use crate::parallel;

/// Columns of the register tile (one 512-bit vector of `f32`, two 256-bit ones).
const NR: usize = 16;
/// Depth of one packed panel (k); even, so that pairs never straddle panels.
const KC: usize = 256;
/// Rows of A packed at a time (a multiple of every kernel's tile height).
const MC: usize = 128;
/// Columns of B packed at a time.
const NC: usize = 2048;
/// The largest tile height of any kernel.
const MAX_MR: usize = 16;

/// Rounds an `f32` to the nearest bfloat16 (ties to even), returned as its bits; NaN stays a
/// (quiet) NaN of the same sign, infinities stay infinite and large finite values round to
/// infinity, as `half::bf16::from_f32` and PyTorch do.
///
/// ```
/// use kiln_tensor::kernels::bf16_gemm::{bf16_bits_to_f32, f32_to_bf16_bits};
/// assert_eq!(bf16_bits_to_f32(f32_to_bf16_bits(1.0)), 1.0);
/// // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
/// assert_eq!(bf16_bits_to_f32(f32_to_bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
/// assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
/// ```
#[inline]
#[must_use]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = (bits & 0x7FFF_FFFF) > 0x7F80_0000;
    if nan {
        ((bits >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

/// The `f32` value of a bfloat16 given by its bits (exact).
#[inline]
#[must_use]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// An element type the bfloat16 GEMM reads: `f32` (rounded while packed) or `half::bf16`.
pub trait Bf16Operand: Copy + Send + Sync + 'static {
    /// The bfloat16 bits this element is multiplied as.
    fn bf16_bits(self) -> u16;
}

impl Bf16Operand for f32 {
    #[inline]
    fn bf16_bits(self) -> u16 {
        f32_to_bf16_bits(self)
    }
}

impl Bf16Operand for half::bf16 {
    #[inline]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

/// An instruction set the bfloat16 GEMM has a micro-kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 with FMA: bfloat16 widened to `f32` (a shift) and fused multiply-adds.
    Avx2,
    /// x86-64 AVX-512 BF16 (`vdpbf16ps`, with AVX-512F).
    Avx512Bf16,
}

impl Bf16Isa {
    /// Whether this CPU (and this build: the AVX-512 kernel needs rustc >= 1.89) can run the
    /// kernel.
    #[must_use]
    pub fn is_available(self) -> bool {
        match self {
            Bf16Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Bf16Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(kiln_avx512)]
            Bf16Isa::Avx512Bf16 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, fastest last.
    #[must_use]
    pub fn available() -> Vec<Bf16Isa> {
        [Bf16Isa::Portable, Bf16Isa::Avx2, Bf16Isa::Avx512Bf16].into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest kernel this CPU can run (detected once). The environment variable
    /// `KILN_BF16_ISA` (`portable`, `avx2`, `avx512bf16`) forces a slower one, for benchmarks;
    /// an unknown or unavailable name is ignored.
    #[must_use]
    pub fn detect() -> Bf16Isa {
        static ISA: OnceLock<Bf16Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let forced =
                std::env::var("KILN_BF16_ISA").ok().and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "portable" => Some(Bf16Isa::Portable),
                    "avx2" => Some(Bf16Isa::Avx2),
                    "avx512bf16" | "avx512_bf16" => Some(Bf16Isa::Avx512Bf16),
                    _ => None,
                });
            match forced {
                Some(i) if i.is_available() => i,
                _ => *Bf16Isa::available().last().expect("the portable kernel is always there"),
            }
        })
    }

    /// Rows of the kernel's register tile.
    fn mr(self) -> usize {
        match self {
            Bf16Isa::Avx512Bf16 => 16,
            Bf16Isa::Portable | Bf16Isa::Avx2 => 4,
        }
    }
}

/// A 64-byte aligned block of 32 bfloat16 values, the unit of the packing buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u16; 32]);

thread_local! {
    /// Packed A (`MC x KC`) followed by packed B (`KC x NC`), reused across calls.
    static PACK: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// `C = alpha * A·B + beta * C` with A (`m x k`) and B (`k x n`) read as bfloat16 and the sums
/// kept in `f32`, single-threaded, on the kernel of `isa`. Any strides (zero included); with
/// `beta == 0` C is never read.
///
/// **Panics** if `isa` is not available on this CPU.
///
/// # Safety
/// `a` and `b` must address valid `m x k` and `k x n` matrices under their strides; `c` must
/// address a valid `m x n` matrix under `(rsc, csc)` whose elements are distinct and which does
/// not alias `a` or `b`.
pub unsafe fn gemm_bf16_raw<A: Bf16Operand, B: Bf16Operand>(
    isa: Bf16Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: MatRef<A>,
    b: MatRef<B>,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    assert!(isa.is_available(), "gemm_bf16: the {isa:?} kernel is not available on this CPU");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) is inside C.
                unsafe {
                    let p = c.offset(i as isize * rsc + j as isize * csc);
                    *p = if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
        return;
    }
    let a_blocks = MC * KC / 32;
    let b_blocks = KC * NC / 32;
    let run = |buf: &mut Vec<Block>| {
        if buf.len() < a_blocks + b_blocks {
            buf.resize(a_blocks + b_blocks, Block([0; 32]));
        }
        let (ap, bp) = buf.split_at_mut(a_blocks);
        // SAFETY: the buffers hold MC x KC and KC x NC values, 64-byte aligned; forwarded
        // contract for the matrices; `isa` checked above.
        unsafe {
            blocked(isa, m, k, n, alpha, a, b, beta, c, rsc, csc, ap.as_mut_ptr().cast(), bp.as_mut_ptr().cast())
        };
    };
    PACK.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        // Re-entered on this thread: use a buffer of its own.
        Err(_) => run(&mut Vec::new()),
    });
}

/// The loops of [`gemm_bf16_raw`] over packed blocks.
///
/// # Safety
/// As [`gemm_bf16_raw`]; `ap` holds `MC x KC` and `bp` `KC x NC` values, 64-byte aligned.
unsafe fn blocked<A: Bf16Operand, B: Bf16Operand>(
    isa: Bf16Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: MatRef<A>,
    b: MatRef<B>,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    ap: *mut u16,
    bp: *mut u16,
) {
    let mr = isa.mr();
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kp = kc.div_ceil(2) * 2;
            // SAFETY: the block lies inside B; bp holds KC x NC values.
            unsafe { pack_pairs(kc, nc, NR, b.ptr.offset(pc as isize * b.rs + jc as isize * b.cs), b.rs, b.cs, bp) };
            let beta_p = if pc == 0 { beta } else { 1.0 };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                // SAFETY: the block lies inside A (packed as the strips of Aᵀ).
                unsafe {
                    pack_pairs(kc, mc, mr, a.ptr.offset(ic as isize * a.rs + pc as isize * a.cs), a.cs, a.rs, ap)
                };
                for jr in (0..nc).step_by(NR) {
                    let nr = NR.min(nc - jr);
                    for ir in (0..mc).step_by(mr) {
                        let mrr = mr.min(mc - ir);
                        let mut tile = [0.0f32; MAX_MR * NR];
                        // SAFETY: strips inside the packed buffers; `isa` is available.
                        unsafe { kernel(isa, kp / 2, ap.add(ir * kp), bp.add(jr * kp), &mut tile) };
                        let cij = c.wrapping_offset((ic + ir) as isize * rsc + (jc + jr) as isize * csc);
                        // SAFETY: the mrr x nr tile lies inside C.
                        unsafe { store_tile(&tile, mrr, nr, alpha, beta_p, cij, rsc, csc) };
                    }
                }
            }
        }
    }
}

/// `C[i, j] = alpha * tile[i][j] + beta * C[i, j]` for the `mr x nr` corner of a tile (rows of
/// `NR` values); C is read only when `beta != 0`. Shared by every kernel so that they round the
/// same way.
///
/// # Safety
/// The `mr x nr` block at `c` under `(rsc, csc)` is valid.
#[inline]
unsafe fn store_tile(
    tile: &[f32; MAX_MR * NR],
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    for i in 0..mr {
        for j in 0..nr {
            let v = alpha * tile[i * NR + j];
            // SAFETY: (i, j) inside the block.
            unsafe {
                let p = c.offset(i as isize * rsc + j as isize * csc);
                *p = if beta == 0.0 { v } else { v + beta * *p };
            }
        }
    }
}

/// Packs a `kc x w` block (element `(p, j)` at `src[p*sk + j*sw]`) into `ceil(w / width)`
/// strips; strip `s` (at `dst + s * kp * width`, `kp` = `kc` rounded up to even) holds, for
/// each pair `q` and column `j`, the bfloat16 values of steps `2q` and `2q + 1` side by side.
/// Columns past `w` and the step past an odd `kc` are zero.
///
/// # Safety
/// The block must be readable under the strides and `dst` must hold `ceil(w/width)*width*kp`
/// values.
unsafe fn pack_pairs<T: Bf16Operand>(
    kc: usize,
    w: usize,
    width: usize,
    src: *const T,
    sk: isize,
    sw: isize,
    dst: *mut u16,
) {
    let kp = kc.div_ceil(2) * 2;
    // SAFETY (whole function): reads inside the block, writes inside the buffer.
    unsafe {
        for (s, j0) in (0..w).step_by(width).enumerate() {
            let jw = width.min(w - j0);
            let out = dst.add(s * kp * width);
            let base = src.offset(j0 as isize * sw);
            if sk == 1 && sw != 1 {
                // Column j is contiguous along p: walk each column in order.
                for j in 0..width {
                    if j < jw {
                        let col = base.offset(j as isize * sw);
                        for p in 0..kc {
                            *out.add((p / 2) * 2 * width + 2 * j + (p & 1)) = (*col.add(p)).bf16_bits();
                        }
                        if kc < kp {
                            *out.add((kc / 2) * 2 * width + 2 * j + 1) = 0;
                        }
                    } else {
                        for p in 0..kp {
                            *out.add((p / 2) * 2 * width + 2 * j + (p & 1)) = 0;
                        }
                    }
                }
            } else {
                // Row p is contiguous across the strip (or a general stride): walk rows.
                for p in 0..kp {
                    let row = out.add((p / 2) * 2 * width + (p & 1));
                    if p < kc {
                        let srow = base.offset(p as isize * sk);
                        for j in 0..jw {
                            *row.add(2 * j) = (*srow.offset(j as isize * sw)).bf16_bits();
                        }
                    } else {
                        for j in 0..jw {
                            *row.add(2 * j) = 0;
                        }
                    }
                    for j in jw..width {
                        *row.add(2 * j) = 0;
                    }
                }
            }
        }
    }
}

/// Runs the micro-kernel of `isa` over `pairs` packed k-pairs: `a` is a strip of `isa.mr()`
/// rows, `b` one of `NR` columns; the sums land in `tile` (rows of `NR`).
///
/// # Safety
/// The strips hold `pairs` pairs each, 64-byte aligned for `b`; `isa` is available.
unsafe fn kernel(isa: Bf16Isa, pairs: usize, a: *const u16, b: *const u16, tile: &mut [f32; MAX_MR * NR]) {
    match isa {
        // SAFETY: forwarded contract (and the feature checks behind `is_available`).
        Bf16Isa::Portable => unsafe { kernel_portable(pairs, a, b, tile) },
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Avx2 => unsafe { kernel_avx2(pairs, a, b, tile) },
        #[cfg(kiln_avx512)]
        Bf16Isa::Avx512Bf16 => unsafe { kernel_avx512bf16(pairs, a, b, tile) },
        #[allow(unreachable_patterns)]
        _ => unreachable!("gemm_bf16: {isa:?} is not compiled into this build"),
    }
}

/// 4 x 16 tile in plain Rust.
///
/// # Safety
/// As [`kernel`] with `mr = 4`.
unsafe fn kernel_portable(pairs: usize, a: *const u16, b: *const u16, tile: &mut [f32; MAX_MR * NR]) {
    const MR: usize = 4;
    let mut acc = [[0.0f32; NR]; MR];
    // SAFETY: inside the strips.
    let (a, b) =
        unsafe { (std::slice::from_raw_parts(a, pairs * 2 * MR), std::slice::from_raw_parts(b, pairs * 2 * NR)) };
    for q in 0..pairs {
        let bq = &b[q * 2 * NR..(q + 1) * 2 * NR];
        let mut b0 = [0.0f32; NR];
        let mut b1 = [0.0f32; NR];
        for j in 0..NR {
            b0[j] = bf16_bits_to_f32(bq[2 * j]);
            b1[j] = bf16_bits_to_f32(bq[2 * j + 1]);
        }
        for i in 0..MR {
            let a0 = bf16_bits_to_f32(a[q * 2 * MR + 2 * i]);
            let a1 = bf16_bits_to_f32(a[q * 2 * MR + 2 * i + 1]);
            for j in 0..NR {
                // The products are exact in f32, so these are the fused adds of vdpbf16ps.
                acc[i][j] += a1 * b1[j];
                acc[i][j] += a0 * b0[j];
            }
        }
    }
    for i in 0..MR {
        tile[i * NR..(i + 1) * NR].copy_from_slice(&acc[i]);
    }
}

/// 4 x 16 tile with AVX2 and FMA: a 32-bit word holding a pair gives the even step's `f32` by
/// a left shift of 16 and the odd step's by masking the low half.
///
/// # Safety
/// As [`kernel`] with `mr = 4`; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(pairs: usize, a: *const u16, b: *const u16, tile: &mut [f32; MAX_MR * NR]) {
    use std::arch::x86_64::*;
    const MR: usize = 4;
    let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let a32 = a.cast::<u32>();
    // SAFETY: inside the strips (32-bit reads of pairs at even offsets of 2-byte aligned
    // buffers are unaligned-safe through read_unaligned / loadu).
    unsafe {
        for q in 0..pairs {
            let bq = b.add(q * 2 * NR).cast::<__m256i>();
            let v0 = _mm256_loadu_si256(bq);
            let v1 = _mm256_loadu_si256(bq.add(1));
            let b1 = [_mm256_castsi256_ps(_mm256_and_si256(v0, hi)), _mm256_castsi256_ps(_mm256_and_si256(v1, hi))];
            let b0 =
                [_mm256_castsi256_ps(_mm256_slli_epi32::<16>(v0)), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v1))];
            for i in 0..MR {
                let pair = a32.add(q * MR + i).read_unaligned();
                let a1 = _mm256_set1_ps(f32::from_bits(pair & 0xFFFF_0000));
                let a0 = _mm256_set1_ps(f32::from_bits(pair << 16));
                for h in 0..2 {
                    acc[i][h] = _mm256_fmadd_ps(a1, b1[h], acc[i][h]);
                    acc[i][h] = _mm256_fmadd_ps(a0, b0[h], acc[i][h]);
                }
            }
        }
        for i in 0..MR {
            for h in 0..2 {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8 * h), acc[i][h]);
            }
        }
    }
}

/// 16 x 16 tile with `vdpbf16ps`: one vector of B pairs per step, A's pair broadcast per row.
///
/// # Safety
/// As [`kernel`] with `mr = 16`; the CPU has AVX-512F and AVX-512 BF16.
#[cfg(kiln_avx512)]
#[allow(clippy::incompatible_msrv)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_avx512bf16(pairs: usize, a: *const u16, b: *const u16, tile: &mut [f32; MAX_MR * NR]) {
    use std::arch::x86_64::*;
    const MR: usize = 16;
    let mut acc = [_mm512_setzero_ps(); MR];
    let a32 = a.cast::<u32>();
    // SAFETY: inside the strips; `b` is 64-byte aligned (a packing buffer block).
    unsafe {
        for q in 0..pairs {
            let bv: __m512bh = std::mem::transmute(_mm512_load_si512(b.add(q * 2 * NR).cast()));
            for i in 0..MR {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(a32.add(q * MR + i).read_unaligned() as i32));
                acc[i] = _mm512_dpbf16_ps(acc[i], av, bv);
            }
        }
        for i in 0..MR {
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), acc[i]);
        }
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the blocks each thread writes are disjoint (see `gemm_bf16`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `C = alpha * A·B + beta * C` with A and B read as bfloat16 and `f32` sums, on the fastest
/// kernel ([`Bf16Isa::detect`]), split across kiln's pool like the `f32`
/// [`gemm`](super::gemm::gemm) when the product is large enough.
///
/// # Safety
/// As [`gemm_bf16_raw`].
pub unsafe fn gemm_bf16<A: Bf16Operand, B: Bf16Operand>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: MatRef<A>,
    b: MatRef<B>,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let isa = Bf16Isa::detect();
    if m == 0 || n == 0 {
        return;
    }
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    if work < parallel::gemm_min_flops() || parallel::get_num_threads() == 1 {
        // SAFETY: caller's contract.
        unsafe { gemm_bf16_raw(isa, m, k, n, alpha, a, b, beta, c, rsc, csc) };
        return;
    }
    let cp = OutPtr(c);
    parallel::install(|threads| {
        let split_rows = m >= n || n < 32;
        let len = if split_rows { m } else { n };
        let parts = threads.min(len.div_ceil(16)).max(1);
        let step = len.div_ceil(parts).div_ceil(16) * 16;
        rayon::scope(|s| {
            let mut start = 0;
            while start < len {
                let end = (start + step).min(len);
                s.spawn(move |_| {
                    let (a, b, cp) = (a, b, cp);
                    let sz = end - start;
                    // SAFETY: each block writes a disjoint set of rows (or columns) of C.
                    unsafe {
                        if split_rows {
                            let ab = MatRef { ptr: a.ptr.offset(start as isize * a.rs), ..a };
                            gemm_bf16_raw(
                                isa,
                                sz,
                                k,
                                n,
                                alpha,
                                ab,
                                b,
                                beta,
                                cp.0.offset(start as isize * rsc),
                                rsc,
                                csc,
                            );
                        } else {
                            let bb = MatRef { ptr: b.ptr.offset(start as isize * b.cs), ..b };
                            gemm_bf16_raw(
                                isa,
                                m,
                                k,
                                sz,
                                alpha,
                                a,
                                bb,
                                beta,
                                cp.0.offset(start as isize * csc),
                                rsc,
                                csc,
                            );
                        }
                    }
                });
                start = end;
            }
        });
    });
}

/// Safe form of [`gemm_bf16`] for contiguous row-major slices, with optional transposition of
/// either operand (`trans_a`: `a` holds A stored as `k x m`).
///
/// **Panics** if a slice is shorter than its matrix.
///
/// ```
/// use kiln_tensor::kernels::bf16_gemm::gemm_bf16_slices;
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // 2 x 2
/// let b = [half::bf16::from_f32(0.5), half::bf16::from_f32(-1.0)]; // 2 x 1
/// let mut c = [0.0f32; 2];
/// gemm_bf16_slices(2, 2, 1, 1.0, &a, false, &b, false, 0.0, &mut c);
/// assert_eq!(c, [-1.5, -2.5]);
/// ```
pub fn gemm_bf16_slices<A: Bf16Operand, B: Bf16Operand>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    trans_a: bool,
    b: &[B],
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k, "gemm_bf16: A holds {} elements, needs {m} x {k}", a.len());
    assert!(b.len() >= k * n, "gemm_bf16: B holds {} elements, needs {k} x {n}", b.len());
    assert!(c.len() >= m * n, "gemm_bf16: C holds {} elements, needs {m} x {n}", c.len());
    let ar = if trans_a {
        MatRef { ptr: a.as_ptr(), rs: 1, cs: m as isize }
    } else {
        MatRef { ptr: a.as_ptr(), rs: k as isize, cs: 1 }
    };
    let br = if trans_b {
        MatRef { ptr: b.as_ptr(), rs: 1, cs: k as isize }
    } else {
        MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 }
    };
    // SAFETY: lengths checked above; `c` is a distinct &mut slice.
    unsafe { gemm_bf16(m, k, n, alpha, ar, br, beta, c.as_mut_ptr(), n as isize, 1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(x: f32) -> f32 {
        bf16_bits_to_f32(f32_to_bf16_bits(x))
    }

    /// Runs one product on `isa` with A and B in the given layouts (`true` = transposed
    /// storage) and C row- or column-major; returns C and, per element, the f64 sum on the
    /// bf16-rounded inputs, the f64 sum on the exact inputs and `Σ|a||b|`.
    #[allow(clippy::type_complexity)]
    fn run(
        isa: Bf16Isa,
        (m, k, n): (usize, usize, usize),
        (ta, tb, tc): (bool, bool, bool),
        alpha: f32,
        beta: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<(f64, f64, f64)>) {
        let mut rng = crate::Rng::new(seed);
        let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
        let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
        let (rsc, csc) = if tc { (1, m) } else { (n, 1) };
        let mut want = vec![(0.0, 0.0, 0.0); m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut r, mut x, mut s) = (0.0f64, 0.0f64, 0.0f64);
                for p in 0..k {
                    let (av, bv) = (a[i * rsa + p * csa], b[p * rsb + j * csb]);
                    r += round(av) as f64 * round(bv) as f64;
                    x += av as f64 * bv as f64;
                    s += (av as f64 * bv as f64).abs();
                }
                let cv = if beta == 0.0 { 0.0 } else { beta as f64 * c0[i * rsc + j * csc] as f64 };
                want[i * rsc + j * csc] = (alpha as f64 * r + cv, alpha as f64 * x + cv, alpha.abs() as f64 * s);
            }
        }
        let mut c = c0;
        // SAFETY: the buffers hold the matrices under these strides.
        unsafe {
            gemm_bf16_raw(
                isa,
                m,
                k,
                n,
                alpha,
                MatRef { ptr: a.as_ptr(), rs: rsa as isize, cs: csa as isize },
                MatRef { ptr: b.as_ptr(), rs: rsb as isize, cs: csb as isize },
                beta,
                c.as_mut_ptr(),
                rsc as isize,
                csc as isize,
            )
        };
        (c, want)
    }

    /// Checks C against both references: f32 accumulation error on the rounded inputs, and
    /// bf16 rounding error on the exact ones (bfloat16's unit roundoff is u = 2^-8, so each
    /// product of two rounded values is within 2u + u^2 of the exact one, relatively).
    fn check(
        isa: Bf16Isa,
        dims: (usize, usize, usize),
        lay: (bool, bool, bool),
        alpha: f32,
        beta: f32,
        seed: u64,
    ) -> Vec<f32> {
        let (c, want) = run(isa, dims, lay, alpha, beta, seed);
        let k = dims.1 as f64;
        for (idx, (&got, &(r, x, s))) in c.iter().zip(&want).enumerate() {
            let g = got as f64;
            let acc_tol = (k + 2.0) * 2f64.powi(-23) * (s + r.abs()) + 1e-30;
            assert!((g - r).abs() <= acc_tol, "{isa:?} {dims:?} {lay:?} [{idx}]: {g} vs rounded-input sum {r}");
            let bf16_tol = 2.01 * 2f64.powi(-8) * s + acc_tol;
            assert!((g - x).abs() <= bf16_tol, "{isa:?} {dims:?} {lay:?} [{idx}]: {g} vs exact {x} (bound {bf16_tol})");
        }
        c
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        // halfway cases: ties to even, both directions
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7F80); // rounds up to infinity
        assert_eq!(f32_to_bf16_bits(f32::NEG_INFINITY), 0xFF80);
        assert!(bf16_bits_to_f32(f32_to_bf16_bits(-f32::NAN)).is_nan());
        for x in [0.1f32, -3.75e-3, 6.0e4, 1.0e-30, -0.0] {
            assert_eq!(f32_to_bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn every_available_path_crosses_block_boundaries() {
        assert!(Bf16Isa::available().contains(&Bf16Isa::Portable));
        for isa in Bf16Isa::available() {
            for lay in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
                check(isa, (MC + 7, KC + 37, 45), lay, 1.0, 0.0, 1);
            }
            check(isa, (19, 2 * KC + 1, NC + 5), (false, true, false), 0.5, -1.5, 2);
            check(isa, (3, 5, 2), (false, false, false), 1.0, 1.0, 3);
        }
    }

    #[test]
    fn zero_depth_scales_c() {
        for isa in Bf16Isa::available() {
            let c = check(isa, (5, 0, 7), (false, false, false), 1.0, 2.0, 4);
            assert!(c.iter().all(|x| x.abs() <= 1.0));
        }
    }

    #[test]
    fn bf16_operands_read_as_they_are() {
        // B given as bf16 gives the same result as the same values given as f32.
        let (m, k, n) = (9, 21, 17);
        let mut rng = crate::Rng::new(9);
        let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let bh: Vec<half::bf16> = b.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let mut c1 = vec![0.0f32; m * n];
        let mut c2 = vec![0.0f32; m * n];
        gemm_bf16_slices(m, k, n, 1.0, &a, false, &b, false, 0.0, &mut c1);
        gemm_bf16_slices(m, k, n, 1.0, &a, false, &bh, false, 0.0, &mut c2);
        assert_eq!(c1, c2);
    }

    #[test]
    fn broadcast_operand_with_zero_stride() {
        let (m, k, n) = (20, 33, 18);
        let a: Vec<f32> = (0..k).map(|p| p as f32 * 0.25 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|x| (x % 7) as f32 - 3.0).collect();
        for isa in Bf16Isa::available() {
            let mut c = vec![f32::NAN; m * n];
            // SAFETY: A is 1 x k read with row stride 0; B and C are contiguous.
            unsafe {
                gemm_bf16_raw(
                    isa,
                    m,
                    k,
                    n,
                    1.0,
                    MatRef { ptr: a.as_ptr(), rs: 0, cs: 1 },
                    MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 },
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            };
            for i in 0..m {
                for j in 0..n {
                    // every value here is exact in bf16 and every partial sum exact in f32
                    let want: f32 = (0..k).map(|p| a[p] * b[p * n + j]).sum();
                    assert_eq!(c[i * n + j], want, "{isa:?}");
                }
            }
        }
    }

    #[test]
    fn threaded_split_matches_single_thread() {
        let (m, k, n) = (97, 64, 300);
        let mut rng = crate::Rng::new(5);
        let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32).collect();
        let mut want = vec![0.0f32; m * n];
        // SAFETY: contiguous buffers of the stated sizes.
        unsafe {
            gemm_bf16_raw(
                Bf16Isa::detect(),
                m,
                k,
                n,
                1.0,
                MatRef { ptr: a.as_ptr(), rs: k as isize, cs: 1 },
                MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 },
                0.0,
                want.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        parallel::with_gemm_threshold(0, || {
            for threads in [1, 2, 3] {
                crate::set_num_threads(threads);
                let mut c = vec![0.0f32; m * n];
                gemm_bf16_slices(m, k, n, 1.0, &a, false, &b, false, 0.0, &mut c);
                assert_eq!(c, want, "{threads} threads");
                // wide and short: column split
                let mut c2 = vec![0.0f32; 4 * n];
                gemm_bf16_slices(4, k, n, 1.0, &a[..4 * k], false, &b, false, 0.0, &mut c2);
                assert_eq!(c2[..], want[..4 * n], "{threads} threads, column split");
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_path_within_bf16_bound_and_identical(m in 1usize..40, k in 1usize..70, n in 1usize..40,
                ta: bool, tb: bool, tc: bool, beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]), seed in 0u64..1000) {
            let reference = check(Bf16Isa::Portable, (m, k, n), (ta, tb, tc), 0.75, beta, seed);
            for isa in Bf16Isa::available() {
                let c = check(isa, (m, k, n), (ta, tb, tc), 0.75, beta, seed);
                // Same sums in the same order (products exact): bit for bit, except where
                // vdpbf16ps flushes subnormals, which these magnitudes never reach.
                prop_assert_eq!(&c, &reference, "{:?} differs from the portable kernel", isa);
            }
        }
    }
}
