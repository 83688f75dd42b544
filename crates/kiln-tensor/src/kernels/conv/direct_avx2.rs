//! Direct `f32` convolution for unit stride on AVX2 + FMA: an implicit GEMM that reads the
//! input where it lies instead of unrolling it into an im2col buffer.
//!
//! For a group with input `xp` (`[c, H', W']`, a zero-bordered copy when the convolution pads)
//! and taps `t = (ci, ki, kj)` at offsets `off[t] = ci·H'·W' + ki·dh·W' + kj·dw`,
//!
//! ```text
//! out[o, oy, ox] = bias[o] + Σ_t w[o, t] · xp[off[t] + oy·W' + ox]
//! ```
//!
//! With unit stride, the values tap `t` reads for a run of consecutive outputs of one row are
//! consecutive input values, so the micro-kernel loads them straight from `xp`: a tile of 4
//! output channels × 24 positions keeps 12 accumulators in registers and, per tap, loads 3
//! vectors of input and broadcasts 4 weights (packed once per call as `[o / 4][t][4]`). The
//! bias (and, when asked, ReLU) is applied as the tile is stored, so the output is written
//! once. Compared with im2col + a packed GEMM this saves writing and packing the unrolled
//! matrix (`k · oh · ow` values per sample) and the separate bias pass.
//!
//! Sums run over the taps in order, one accumulator per output: the results equal the
//! im2col path's up to `f32` rounding order.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::geometry::Geom;
use crate::alloc::{self, Buffer};
use crate::parallel;

/// Output channels per tile.
const MR: usize = 4;
/// Output positions per tile (three AVX vectors).
const NR: usize = 24;
/// Largest `c · kh · kw` the direct path takes: one tile's input strip (`k · NR` values) stays
/// within L2 as every group of output channels reuses it.
const MAX_K: usize = 4096;
/// Below this many taps the output is written one block of channels at a time (see [`rows`]):
/// W3's first convolution (9 taps) ran 1.1–1.9 ms per batch of 64 that way against 1.6–2.6 ms
/// with every block per tile, in alternating runs on the noisy 2-core machine.
const SMALL_K: usize = 64;

/// Whether this CPU runs the kernel (AVX2 and FMA).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the direct kernel computes the convolution of `g`: unit stride, a kernel that
/// stays inside the (padded) input for every output position, `k` up to [`MAX_K`], and an
/// AVX2 + FMA CPU.
pub(super) fn applies(g: &Geom) -> bool {
    let fits = |out: usize, k: usize, dil: usize, len: usize, pad: usize| {
        out == 0 || (out - 1) + (k - 1) * dil < len + 2 * pad
    };
    g.stride == [1, 1]
        && g.k() > 0
        && g.k() <= MAX_K
        && g.oc > 0
        && fits(g.oh, g.kh, g.dil[0], g.h, g.pad[0])
        && fits(g.ow, g.kw, g.dil[1], g.w, g.pad[1])
        && available()
}

/// The weights of every group packed as `[group][o / MR][t][MR]` (rows past `oc` zero), the
/// bias per group padded to a multiple of `MR`, and the tap offsets in the padded input.
struct Packed {
    w: Vec<f32>,
    bias: Vec<f32>,
    offs: Vec<usize>,
    /// Padded input height and width.
    hp: usize,
    wp: usize,
    blocks: usize,
}

impl Packed {
    fn new(wt: &[f32], bias: Option<&[f32]>, g: &Geom) -> Self {
        let (k, blocks) = (g.k(), g.oc.div_ceil(MR));
        let mut w = alloc::take_filled(g.groups * blocks * k * MR, 0.0f32);
        for grp in 0..g.groups {
            for o in 0..g.oc {
                let src = &wt[(grp * g.oc + o) * k..(grp * g.oc + o + 1) * k];
                let base = (grp * blocks + o / MR) * k * MR + o % MR;
                for (t, &v) in src.iter().enumerate() {
                    w[base + t * MR] = v;
                }
            }
        }
        let mut b = vec![0.0f32; g.groups * blocks * MR];
        if let Some(bias) = bias {
            for grp in 0..g.groups {
                b[grp * blocks * MR..grp * blocks * MR + g.oc].copy_from_slice(&bias[grp * g.oc..(grp + 1) * g.oc]);
            }
        }
        let (hp, wp) = (g.h + 2 * g.pad[0], g.w + 2 * g.pad[1]);
        let mut offs = Vec::with_capacity(k);
        for ci in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    offs.push(ci * hp * wp + ki * g.dil[0] * wp + kj * g.dil[1]);
                }
            }
        }
        Packed { w, bias: b, offs, hp, wp, blocks }
    }

    fn padded(&self, g: &Geom) -> bool {
        g.pad != [0, 0]
    }

    /// Copies one group's input `[c, h, w]` into the middle of `dst` (`[c, hp, wp]`, borders 0).
    fn pad_into(&self, x: &[f32], g: &Geom, dst: &mut [f32]) {
        dst.fill(0.0);
        for ci in 0..g.c {
            for y in 0..g.h {
                let s = &x[(ci * g.h + y) * g.w..(ci * g.h + y + 1) * g.w];
                let d = (ci * self.hp + y + g.pad[0]) * self.wp + g.pad[1];
                dst[d..d + g.w].copy_from_slice(s);
            }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (distinct output rows), and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// The convolution of `n` samples of `x` (`[n, groups · c, h, w]`) with `wt`
/// (`[groups · oc, c, kh, kw]`) into `out` (`[n, groups · oc, oh, ow]`, every element
/// written, so it may start uninitialised), plus `bias`, then ReLU when `relu` is set (NaN
/// stays NaN, as `relu` keeps it).
///
/// **Panics** unless [`applies`] holds for `g` and the slices have the geometry's lengths.
pub(super) fn forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    n: usize,
    g: &Geom,
    out: &mut [MaybeUninit<f32>],
) {
    assert!(applies(g), "conv2d (direct): geometry {g:?} is not one the direct kernel computes");
    assert!(
        x.len() == n * g.in_sample() && wt.len() == g.groups * g.oc * g.k() && out.len() == n * g.out_sample(),
        "conv2d (direct): buffers of {} / {} / {} values do not fit {n} samples of {g:?}",
        x.len(),
        wt.len(),
        out.len()
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), g.groups * g.oc, "conv2d (direct): bias length");
    }
    if out.is_empty() {
        return;
    }
    let p = Packed::new(wt, bias, g);
    let pad_len = if p.padded(g) { g.c * p.hp * p.wp } else { 0 };
    let threads = parallel::get_num_threads();
    let parallel_ok = threads > 1 && g.flops(n) >= parallel::gemm_min_flops();
    let (in_s, out_s) = (g.in_sample(), g.out_sample());
    let sample = |xs: &[f32], os: &mut [MaybeUninit<f32>], scratch: &mut [f32]| {
        let op = OutPtr(os.as_mut_ptr().cast());
        for grp in 0..g.groups {
            let xg = group_input(&p, g, xs, grp, scratch);
            // SAFETY: `os` is this sample's output, exclusively borrowed; all rows are written.
            unsafe { rows(&p, g, xg, grp, op, 0..g.oh, relu) };
        }
    };
    if !parallel_ok {
        let mut scratch = Buffer::new(alloc::take_filled(pad_len, 0.0f32));
        for (xs, os) in x.chunks_exact(in_s).zip(out.chunks_exact_mut(out_s)) {
            sample(xs, os, &mut scratch);
        }
        return;
    }
    parallel::install(|threads| {
        if n >= threads {
            out.par_chunks_mut(out_s).enumerate().for_each_init(
                || Buffer::new(alloc::take_filled(pad_len, 0.0f32)),
                |scratch, (i, os)| sample(&x[i * in_s..(i + 1) * in_s], os, scratch),
            );
            return;
        }
        // Fewer samples than threads: split each sample's output rows.
        let mut scratch = Buffer::new(alloc::take_filled(pad_len, 0.0f32));
        let chunk = g.oh.div_ceil(threads).max(1);
        for (xs, os) in x.chunks_exact(in_s).zip(out.chunks_exact_mut(out_s)) {
            let op = OutPtr(os.as_mut_ptr().cast());
            for grp in 0..g.groups {
                let xg = group_input(&p, g, xs, grp, &mut scratch);
                (0..g.oh.div_ceil(chunk)).into_par_iter().for_each(|c| {
                    let r = c * chunk..((c + 1) * chunk).min(g.oh);
                    // SAFETY: the tasks write disjoint row ranges of this sample's output.
                    unsafe { rows(&p, g, xg, grp, op, r, relu) };
                });
            }
        }
    });
}

/// Group `grp`'s input of sample `xs`: the slice itself, or its zero-bordered copy in `scratch`.
fn group_input<'a>(p: &Packed, g: &Geom, xs: &'a [f32], grp: usize, scratch: &'a mut [f32]) -> &'a [f32] {
    let xg = &xs[grp * g.c * g.in_plane()..(grp + 1) * g.c * g.in_plane()];
    if p.padded(g) {
        p.pad_into(xg, g, scratch);
        scratch
    } else {
        xg
    }
}

/// Computes output rows `rows` of group `grp` of one sample whose output starts at `out`.
///
/// # Safety
/// `out` must address the sample's `groups · oc · oh · ow` outputs, with rows `rows` of this
/// group written by no one else meanwhile; `xg` must be the group's (padded) input and the CPU
/// must have AVX2 and FMA ([`applies`]).
unsafe fn rows(p: &Packed, g: &Geom, xg: &[f32], grp: usize, out: OutPtr, rows: std::ops::Range<usize>, relu: bool) {
    let (k, ohw) = (g.k(), g.out_plane());
    // The last input value a tile may read, for the debug bound below.
    debug_assert!(p.offs.last().copied().unwrap_or(0) + (g.oh - 1) * p.wp + g.ow <= xg.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; every tile reads inside `xg` (the geometry check of
    // `applies`) and writes inside this group's rows `rows`.
    unsafe {
        // Small kernels (few taps per output) are bound by writing the output: one block
        // of output channels at a time keeps the stores in 4 sequential streams. Larger ones
        // run every block over a tile's inputs while they are in L1.
        let chunk = if k < SMALL_K { 1 } else { p.blocks };
        for first in (0..p.blocks).step_by(chunk) {
            let blocks = first..(first + chunk).min(p.blocks);
            for oy in rows.clone() {
                let mut ox0 = 0;
                while ox0 < g.ow {
                    let left = g.ow - ox0;
                    // 24 + 8 as 16 + 16: a lone 8-wide tile has 4 accumulators, too few to
                    // hide the multiply-add latency.
                    let width = if left == NR + 8 { 16 } else { left.min(NR) };
                    let xb = xg.as_ptr().add(oy * p.wp + ox0);
                    for blk in blocks.clone() {
                        let o0 = blk * MR;
                        let mr = (g.oc - o0).min(MR);
                        let w = p.w.as_ptr().add((grp * p.blocks + blk) * k * MR);
                        let b = p.bias.as_ptr().add((grp * p.blocks + blk) * MR);
                        let o = out.0.add((grp * g.oc + o0) * ohw + oy * g.ow + ox0);
                        match width.div_ceil(8) {
                            3 => tile::<3>(xb, &p.offs, w, b, o, ohw, mr, width, relu),
                            2 => tile::<2>(xb, &p.offs, w, b, o, ohw, mr, width, relu),
                            _ => tile::<1>(xb, &p.offs, w, b, o, ohw, mr, width, relu),
                        }
                    }
                    ox0 += width;
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, ohw, xg, grp, out, rows, relu);
        unreachable!("conv2d (direct): AVX2 kernel on a non-x86 target");
    }
}

/// One tile: `mr` output channels (rows `ohw` apart from `out`) × `width` positions
/// (`NV` vectors, the last one masked when `width` is not `8 · NV`).
///
/// # Safety
/// AVX2 and FMA available; for every tap `t`, `xb + offs[t] .. + width` readable; `w` holds
/// `offs.len() · MR` packed weights, `b` `MR` biases; the `mr` output rows writable for `width`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const NV: usize>(
    xb: *const f32,
    offs: &[usize],
    w: *const f32,
    b: *const f32,
    out: *mut f32,
    ohw: usize,
    mr: usize,
    width: usize,
    relu: bool,
) {
    // SAFETY: the caller's contract (see above).
    unsafe {
        let rem = width - 8 * (NV - 1);
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        if NV == 3 && rem == 8 {
            acc_full_4x24(xb, offs, w, &mut acc);
        } else if rem == 8 {
            let mut wt = w;
            for &off in offs {
                let xp = xb.add(off);
                let mut v = [_mm256_setzero_ps(); NV];
                for (j, vj) in v.iter_mut().enumerate() {
                    *vj = _mm256_loadu_ps(xp.add(8 * j));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*wt.add(r));
                    for (j, aj) in row.iter_mut().enumerate() {
                        *aj = _mm256_fmadd_ps(a, v[j], *aj);
                    }
                }
                wt = wt.add(MR);
            }
        } else {
            let mask = tail_mask(rem);
            let mut wt = w;
            for &off in offs {
                let xp = xb.add(off);
                let mut v = [_mm256_setzero_ps(); NV];
                for (j, vj) in v.iter_mut().enumerate() {
                    *vj = if j + 1 == NV {
                        _mm256_maskload_ps(xp.add(8 * j), mask)
                    } else {
                        _mm256_loadu_ps(xp.add(8 * j))
                    };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*wt.add(r));
                    for (j, aj) in row.iter_mut().enumerate() {
                        *aj = _mm256_fmadd_ps(a, v[j], *aj);
                    }
                }
                wt = wt.add(MR);
            }
        }
        let zero = _mm256_setzero_ps();
        let mask = tail_mask(rem);
        for (r, row) in acc.iter().enumerate().take(mr) {
            let bias = _mm256_broadcast_ss(&*b.add(r));
            let o = out.add(r * ohw);
            for (j, aj) in row.iter().enumerate() {
                let mut y = _mm256_add_ps(*aj, bias);
                if relu {
                    y = _mm256_max_ps(zero, y);
                }
                if j + 1 == NV && rem != 8 {
                    _mm256_maskstore_ps(o.add(8 * j), mask, y);
                } else {
                    _mm256_storeu_ps(o.add(8 * j), y);
                }
            }
        }
    }
}

/// The sums of a full 4 × 24 tile into `acc` (rows of `NV` vectors; `NV` is 3 here). The tap
/// loop is written in assembly: it needs all 16 vector registers (12 accumulators, 3 input
/// vectors, 1 broadcast weight), and LLVM, given exactly 16, spills and shuffles accumulators
/// on every tap (measured: slower than im2col + matrixmultiply).
///
/// # Safety
/// As [`tile`], for `width == 24`; `offs` must not be empty.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn acc_full_4x24<const NV: usize>(xb: *const f32, offs: &[usize], w: *const f32, acc: &mut [[__m256; NV]; MR]) {
    debug_assert!(NV == 3 && !offs.is_empty());
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c02, mut c10, mut c11, mut c12) = (z, z, z, z, z, z);
    let (mut c20, mut c21, mut c22, mut c30, mut c31, mut c32) = (z, z, z, z, z, z);
    // SAFETY: the caller's contract: 24 values readable at `xb + off` for every tap, 4
    // weights per tap at `w`; the loop runs `offs.len() >= 1` times and touches no memory
    // but those reads.
    unsafe {
        std::arch::asm!(
            "2:",
            "mov {off}, qword ptr [{offs}]",
            "vmovups ymm12, ymmword ptr [{xb} + 4*{off}]",
            "vmovups ymm13, ymmword ptr [{xb} + 4*{off} + 32]",
            "vmovups ymm14, ymmword ptr [{xb} + 4*{off} + 64]",
            "vbroadcastss ymm15, dword ptr [{w}]",
            "vfmadd231ps ymm0, ymm15, ymm12",
            "vfmadd231ps ymm1, ymm15, ymm13",
            "vfmadd231ps ymm2, ymm15, ymm14",
            "vbroadcastss ymm15, dword ptr [{w} + 4]",
            "vfmadd231ps ymm3, ymm15, ymm12",
            "vfmadd231ps ymm4, ymm15, ymm13",
            "vfmadd231ps ymm5, ymm15, ymm14",
            "vbroadcastss ymm15, dword ptr [{w} + 8]",
            "vfmadd231ps ymm6, ymm15, ymm12",
            "vfmadd231ps ymm7, ymm15, ymm13",
            "vfmadd231ps ymm8, ymm15, ymm14",
            "vbroadcastss ymm15, dword ptr [{w} + 12]",
            "vfmadd231ps ymm9, ymm15, ymm12",
            "vfmadd231ps ymm10, ymm15, ymm13",
            "vfmadd231ps ymm11, ymm15, ymm14",
            "add {offs}, 8",
            "add {w}, 16",
            "dec {k}",
            "jnz 2b",
            off = out(reg) _,
            offs = inout(reg) offs.as_ptr() => _,
            xb = in(reg) xb,
            w = inout(reg) w => _,
            k = inout(reg) offs.len() => _,
            inout("ymm0") c00,
            inout("ymm1") c01,
            inout("ymm2") c02,
            inout("ymm3") c10,
            inout("ymm4") c11,
            inout("ymm5") c12,
            inout("ymm6") c20,
            inout("ymm7") c21,
            inout("ymm8") c22,
            inout("ymm9") c30,
            inout("ymm10") c31,
            inout("ymm11") c32,
            out("ymm12") _,
            out("ymm13") _,
            out("ymm14") _,
            out("ymm15") _,
            options(nostack, readonly),
        );
    }
    let rows = [[c00, c01, c02], [c10, c11, c12], [c20, c21, c22], [c30, c31, c32]];
    for (dst, src) in acc.iter_mut().zip(rows) {
        dst.copy_from_slice(&src[..NV]);
    }
}

/// Lanes `0..rem` of a vector set (`rem` in `1..=8`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tail_mask(rem: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::geometry::conv_geom;
    use crate::kernels::conv::reference::ref_conv;
    use crate::kernels::conv::{conv2d_forward, Conv2dParams};
    use proptest::prelude::*;

    /// A unit-stride problem wide enough for full, masked and several tiles per row, with
    /// output-channel counts that leave partial blocks of 4.
    fn unit_stride_case() -> impl Strategy<Value = ([usize; 4], [usize; 4], Conv2dParams, u64)> {
        (
            (1usize..4, 1usize..3, 1usize..4, 1usize..11),
            ([1usize..4, 1usize..4], [0usize..3, 0usize..3], [1usize..3, 1usize..3]),
            ([0usize..6, 0usize..60], 0u64..1 << 20),
        )
            .prop_map(|((n, groups, cg, ocg), (k, pad, d), (extra, seed))| {
                let size = |a: usize| (d[a] * (k[a] - 1) + 1).saturating_sub(2 * pad[a]).max(1) + extra[a];
                (
                    [n, groups * cg, size(0), size(1)],
                    [groups * ocg, cg, k[0], k[1]],
                    Conv2dParams { stride: [1, 1], padding: pad, dilation: d, groups },
                    seed,
                )
            })
    }

    /// `forward` on `f32` values, with the reference in `f64` from the same values; the bound
    /// is `f32` rounding of a sum of `k + 1` terms, relative to the sum of their magnitudes.
    fn check(x: [usize; 4], w: [usize; 4], p: &Conv2dParams, seed: u64, relu: bool, with_bias: bool) {
        let mut rng = crate::Rng::new(seed);
        let xs: Vec<f32> = (0..x.iter().product()).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let ws: Vec<f32> = (0..w.iter().product()).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let bs: Vec<f32> = (0..w[0]).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        let (g, ys) = conv_geom("test", x, w, p);
        assert!(applies(&g), "{g:?}");
        let wide = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let abs = |v: &[f32]| v.iter().map(|&a| f64::from(a.abs())).collect::<Vec<f64>>();
        let mut want = ref_conv(&wide(&xs), x, &wide(&ws), w, ys, p);
        let mut mag = ref_conv(&abs(&xs), x, &abs(&ws), w, ys, p);
        let plane = ys[2] * ys[3];
        for (i, (v, m)) in want.iter_mut().zip(&mut mag).enumerate() {
            if with_bias {
                *v += f64::from(bs[(i / plane) % w[0]]);
                *m += f64::from(bs[(i / plane) % w[0]].abs());
            }
            if relu {
                *v = v.max(0.0);
            }
        }
        let mut out = vec![MaybeUninit::new(f32::NAN); ys.iter().product()];
        forward(&xs, &ws, with_bias.then_some(&bs[..]), relu, x[0], &g, &mut out);
        let tol = (g.k() + 2) as f64 * f64::from(f32::EPSILON);
        for (i, ((o, wv), m)) in out.iter().zip(&want).zip(&mag).enumerate() {
            // SAFETY: `out` was initialised (to NaN) before the call.
            let o = f64::from(unsafe { o.assume_init() });
            assert!((o - wv).abs() <= tol * m + 1e-30, "{x:?} * {w:?} {p:?} relu {relu}: out[{i}] = {o}, want {wv}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn direct_conv_matches_direct_loops(c in unit_stride_case(), relu: bool, with_bias: bool, two_threads: bool) {
            prop_assume!(available());
            let (x, w, p, seed) = c;
            // Two threads with the split forced: samples in parallel, or rows of one sample.
            let threads = if two_threads { 2 } else { 1 };
            let prev = crate::get_num_threads();
            crate::set_num_threads(threads);
            crate::parallel::with_gemm_threshold(0, || check(x, w, &p, seed, relu, with_bias));
            crate::set_num_threads(prev);
        }
    }

    #[test]
    fn the_w3_layers_agree_with_the_loops() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        // W3's convolutions: 1 -> 32 on 28x28 (row tail of 2) and 32 -> 64 on 26x26 (rows of 24).
        check([2, 1, 28, 28], [32, 1, 3, 3], &Conv2dParams::default(), 1, true, true);
        check([1, 32, 26, 26], [64, 32, 3, 3], &Conv2dParams::default(), 2, false, true);
    }

    #[test]
    fn relu_keeps_nan_and_the_public_entry_point_uses_the_kernel() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        let (g, _) = conv_geom("test", [1, 1, 3, 3], [1, 1, 1, 1], &Conv2dParams::default());
        let x = [1.0f32, -2.0, f32::NAN, 0.5, -0.5, 3.0, 0.0, -1.0, 2.0];
        let mut out = [MaybeUninit::new(0.0f32); 9];
        forward(&x, &[2.0], Some(&[0.25]), true, 1, &g, &mut out);
        // SAFETY: initialised above.
        let got: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(got[..2], [2.25, 0.0]);
        assert!(got[2].is_nan());
        assert_eq!(got[3..], [1.25, 0.0, 6.25, 0.25, 0.0, 4.25]);
        // conv2d_forward on f32 goes through the kernel (bias fused) and agrees with f64
        let (y, _) = conv2d_forward(&x, [1, 1, 3, 3], &[2.0], [1, 1, 1, 1], Some(&[0.25]), &Conv2dParams::default());
        assert_eq!(y[..2], [2.25, -3.75]);
    }

    #[test]
    fn geometries_it_does_not_compute_are_left_to_im2col() {
        let strided = Conv2dParams { stride: [2, 1], ..Default::default() };
        assert!(!applies(&conv_geom("test", [1, 2, 9, 9], [3, 2, 3, 3], &strided).0));
        // a transposed convolution's "output" taller than the input allows: reads would leave it
        let (mut g, _) = conv_geom("test", [1, 2, 9, 9], [3, 2, 3, 3], &Conv2dParams::default());
        g.oh += 1;
        assert!(!applies(&g));
    }
}
