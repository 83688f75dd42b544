//! The int8 GEMM: `C[m, n] = Σ_k A[m, k] · B[k, n]` in exact `i32`, with `A` the activations
//! (`u8` or `i8`, row-major) and `B` the weights (`i8`, packed once by [`PackedB`]).
//!
//! One micro-kernel per instruction set, chosen at run time ([`Isa::detect`], with
//! `is_x86_feature_detected!`):
//!
//! | [`Isa`]               | instruction                 | tile (rows x columns) | B panel layout        |
//! |-----------------------|-----------------------------|-----------------------|-----------------------|
//! | `Avx512Vnni`          | `_mm512_dpbusd_epi32`       | 8 x 32                | `[k/4][32][4]`        |
//! | `Avx2`                | `_mm256_madd_epi16` on i16  | 6 x 16                | `[k/2][16][2]` (i16)  |
//! | `Portable`            | scalar (auto-vectorised)    | 4 x 16                | `[k][16]`             |
//!
//! Every path gives the same `i32` results bit for bit (sums wrap like `wrapping_add`, so the
//! result is exact whenever the true sum fits an `i32`, which `k <= 65536` guarantees).
//! The driver walks `MR x NR` tiles and hands each finished tile to an epilogue: a plain
//! store for [`gemm_u8i8`] / [`gemm_i8i8`], or the requantisation to `f32` with per-channel
//! scales, zero-point correction and bias of the quantised layers ([`gemm_requant`]).
//! Products of at least `kiln_tensor::parallel::gemm_min_flops()` multiply-adds are split
//! across kiln's thread pool by row blocks (or by column panels when there are few rows).

mod avx2;
mod avx512;
mod portable;

use std::sync::OnceLock;

use rayon::prelude::*;

const NR_PORTABLE: usize = 16;
const NR_AVX2: usize = 16;
const NR_VNNI: usize = 32;
/// The largest tile any kernel produces (`8 x 32`).
const MAX_TILE: usize = 8 * 32;

/// How many int8 multiply-adds weigh as much as one `f32` multiply-add when deciding whether a
/// product is worth splitting across threads (see [`drive`]).
const INT8_FANOUT_FACTOR: usize = 4;

/// The largest inner dimension for which every sum is guaranteed to fit an `i32`
/// (`255 · 128 · k < 2^31`).
pub const MAX_K: usize = 65536;

/// An instruction set the int8 GEMM has a kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 (`vpmaddwd` on sign/zero-extended 16-bit values).
    Avx2,
    /// x86-64 AVX-512 VNNI (`vpdpbusd`, with AVX-512F and AVX-512BW).
    Avx512Vnni,
}

impl Isa {
    /// Whether this CPU can run the kernel.
    #[must_use]
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, fastest last.
    #[must_use]
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest kernel this CPU can run (detected once). The environment variable
    /// `KILN_QUANT_ISA` (`portable`, `avx2`, `avx512vnni`) forces a slower one, for
    /// benchmarks; an unknown or unavailable name is ignored.
    #[must_use]
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let forced =
                std::env::var("KILN_QUANT_ISA").ok().and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "portable" => Some(Isa::Portable),
                    "avx2" => Some(Isa::Avx2),
                    "avx512vnni" | "vnni" => Some(Isa::Avx512Vnni),
                    _ => None,
                });
            match forced {
                Some(i) if i.is_available() => i,
                _ => *Isa::available().last().expect("the portable kernel is always there"),
            }
        })
    }

    /// `(rows, columns, k group)` of the kernel's tile and panel layout.
    fn geometry(self) -> (usize, usize, usize) {
        match self {
            Isa::Portable => (4, NR_PORTABLE, 1),
            Isa::Avx2 => (avx2::MR, NR_AVX2, 2),
            Isa::Avx512Vnni => (8, NR_VNNI, 4),
        }
    }
}

/// The weights `B` of an int8 GEMM, packed once into the panel layout of one kernel, with
/// their column sums (for the zero-point correction).
///
/// Built from the weight as PyTorch stores it: `[n, k]` row-major (`[out_features,
/// in_features]`), i.e. `B` transposed.
///
/// ```
/// use kiln_quant::gemm::{gemm_i8i8, PackedB};
/// // A = [[1, 2, 3]], W = [[1, 0, -1], [2, 2, 2]] (two output columns)
/// let w: Vec<i8> = vec![1, 0, -1, 2, 2, 2];
/// let packed = PackedB::pack(&w, 2, 3);
/// let mut c = vec![0i32; 2];
/// gemm_i8i8(1, &[1, 2, 3], 3, &packed, &mut c, 2);
/// assert_eq!(c, vec![1 - 3, 2 + 4 + 6]);
/// ```
#[derive(Clone, Debug)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    panel_len: usize,
    data: Vec<i8>,
    /// The AVX2 kernel's panels: `data` widened to `i16` (empty for the other kernels).
    wide: Vec<i16>,
    col_sums: Vec<i32>,
    weight: Vec<i8>,
}

impl PackedB {
    /// Packs `w` (`[n, k]` row-major) for the kernel [`Isa::detect`] picks.
    ///
    /// **Panics** if `w.len() != n * k` or `k > MAX_K`.
    #[must_use]
    pub fn pack(w: &[i8], n: usize, k: usize) -> Self {
        Self::pack_for(Isa::detect(), w, n, k)
    }

    /// Packs `w` (`[n, k]` row-major) for the kernel of `isa`.
    ///
    /// **Panics** if `isa` is not available on this CPU, `w.len() != n * k` or `k > MAX_K`.
    #[must_use]
    pub fn pack_for(isa: Isa, w: &[i8], n: usize, k: usize) -> Self {
        assert!(isa.is_available(), "PackedB::pack_for: {isa:?} is not available on this CPU");
        assert_eq!(w.len(), n * k, "PackedB::pack: weight holds {} values, expected [{n}, {k}]", w.len());
        assert!(k <= MAX_K, "PackedB::pack: k = {k} exceeds {MAX_K}, beyond which int32 sums may overflow");
        let (_, nr, kg) = isa.geometry();
        let kp = k.div_ceil(kg) * kg;
        let panels = n.div_ceil(nr);
        let panel_len = kp * nr;
        let mut data = vec![0i8; panels * panel_len];
        for col in 0..n {
            let (p, j) = (col / nr, col % nr);
            for kk in 0..k {
                let (q, t) = (kk / kg, kk % kg);
                data[p * panel_len + q * nr * kg + j * kg + t] = w[col * k + kk];
            }
        }
        let col_sums = (0..n).map(|c| w[c * k..(c + 1) * k].iter().map(|&v| v as i32).sum()).collect();
        let wide = if isa == Isa::Avx2 { data.iter().map(|&v| i16::from(v)).collect() } else { Vec::new() };
        PackedB { isa, k, n, panel_len, data, wide, col_sums, weight: w.to_vec() }
    }

    /// The kernel the panels are laid out for.
    #[must_use]
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The inner dimension.
    #[must_use]
    pub fn k(&self) -> usize {
        self.k
    }

    /// The number of output columns.
    #[must_use]
    pub fn n(&self) -> usize {
        self.n
    }

    /// `Σ_k w[n, k]` for every column.
    #[must_use]
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// The weight as it was given, `[n, k]` row-major (what a model file stores).
    #[must_use]
    pub fn weight(&self) -> &[i8] {
        &self.weight
    }
}

/// A raw output pointer the tiles of a parallel GEMM write through.
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);
// SAFETY: every tile writes a disjoint part of the output (see `drive`).
unsafe impl<T> Send for OutPtr<T> {}
unsafe impl<T> Sync for OutPtr<T> {}

/// Computes one tile: `(m0, rows, panel, out)`.
type Tile<'a> = dyn Fn(usize, usize, usize, &mut [i32]) + Sync + 'a;

/// Receives each finished tile: `(m0, n0, rows, cols, tile, nr)`.
type Sink<'a> = dyn Fn(usize, usize, usize, usize, &[i32], usize) + Sync + 'a;

/// Runs one kernel tile: `rows <= MR` rows of `a` against panel `p`.
///
/// # Safety
/// `a` must address `rows` rows of `k` bytes `lda` apart; the CPU must support `b.isa`.
unsafe fn run_tile(b: &PackedB, signed: bool, a: *const u8, lda: usize, rows: usize, p: usize, out: &mut [i32]) {
    let panel = b.data[p * b.panel_len..].as_ptr();
    let k = b.k;
    macro_rules! dispatch {
        ($module:ident, $($r:literal)*) => {
            match (rows, signed) {
                $(
                    ($r, false) => unsafe { $module::tile::<$r, false>(a, lda, k, panel, out) },
                    ($r, true) => unsafe { $module::tile::<$r, true>(a, lda, k, panel, out) },
                )*
                _ => unreachable!("tile of {rows} rows"),
            }
        };
    }
    match b.isa {
        Isa::Portable => dispatch!(portable, 1 2 3 4),
        Isa::Avx2 => unreachable!("the AVX2 kernel runs on widened rows (run_tile_avx2)"),
        Isa::Avx512Vnni => dispatch!(avx512, 1 2 3 4 5 6 7 8),
    }
    if signed && b.isa == Isa::Avx512Vnni {
        // The kernel computed Σ (a + 128) b.
        let nr = NR_VNNI;
        for r in 0..rows {
            for j in 0..nr.min(b.n - p * nr) {
                let v = &mut out[r * nr + j];
                *v = v.wrapping_sub(128 * b.col_sums[p * nr + j]);
            }
        }
    }
}

/// Runs one AVX2 tile: `rows <= 6` rows of widened activations (`kp` values apart) against
/// panel `p`.
///
/// # Safety
/// `a` must address `rows` rows of `kp` values; the CPU must support AVX2 (`b.isa` is `Avx2`).
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile_avx2(b: &PackedB, a: *const i16, kp: usize, rows: usize, p: usize, out: &mut [i32]) {
    let panel = b.wide[p * b.panel_len..].as_ptr();
    let pairs = kp / 2;
    // SAFETY (every arm): forwarded contract; the panel holds `pairs * 32` values.
    match rows {
        1 => unsafe { avx2::tile::<1>(a, kp, pairs, panel, out) },
        2 => unsafe { avx2::tile::<2>(a, kp, pairs, panel, out) },
        3 => unsafe { avx2::tile::<3>(a, kp, pairs, panel, out) },
        4 => unsafe { avx2::tile::<4>(a, kp, pairs, panel, out) },
        5 => unsafe { avx2::tile::<5>(a, kp, pairs, panel, out) },
        6 => unsafe { avx2::tile::<6>(a, kp, pairs, panel, out) },
        _ => unreachable!("tile of {rows} rows"),
    }
}

thread_local! {
    /// The activations widened to `i16` for the AVX2 kernel, reused across products.
    static WIDE_A: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Walks the `m x n` output in tiles and calls `sink(m0, n0, rows, cols, tile, nr)` for each
/// (`tile[r * nr + j]` is `C[m0 + r, n0 + j]`), on kiln's pool when the product is large and
/// `may_split` (a caller that already runs one product per thread passes `false`).
fn drive(m: usize, a: &[u8], lda: usize, signed: bool, b: &PackedB, may_split: bool, sink: &Sink<'_>) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k, "int8 gemm: lda {lda} < k {k}");
    assert!(a.len() >= (m - 1) * lda + k, "int8 gemm: A holds {} values, needs {m} x {k} (lda {lda})", a.len());
    #[cfg(target_arch = "x86_64")]
    if b.isa == Isa::Avx2 {
        let kp = k.div_ceil(2) * 2;
        let run = |wide: &mut Vec<i16>| {
            avx2::widen_rows(a, lda, m, k, kp, signed, wide);
            let wide: &[i16] = wide;
            // SAFETY: `wide` holds m rows of kp values; the ISA was checked when B was packed.
            let tile = |m0: usize, r: usize, p: usize, out: &mut [i32]| unsafe {
                run_tile_avx2(b, wide[m0 * kp..].as_ptr(), kp, r, p, out)
            };
            walk(m, n, k, avx2::MR, NR_AVX2, may_split, &tile, sink);
        };
        WIDE_A.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => run(&mut buf),
            Err(_) => run(&mut Vec::new()),
        });
        return;
    }
    let (mr, nr, _) = b.isa.geometry();
    // SAFETY: rows m0..m0 + r of A are in bounds (checked above); the ISA was checked
    // available when B was packed.
    let tile = |m0: usize, r: usize, p: usize, out: &mut [i32]| unsafe {
        run_tile(b, signed, a[m0 * lda..].as_ptr(), lda, r, p, out)
    };
    walk(m, n, k, mr, nr, may_split, &tile, sink);
}

/// The tile loops of [`drive`]: `tile(m0, rows, panel, out)` computes one tile into `out`,
/// then `sink` receives it; on kiln's pool when the product is large and `may_split`.
#[allow(clippy::too_many_arguments)]
fn walk(m: usize, n: usize, k: usize, mr: usize, nr: usize, may_split: bool, tile: &Tile<'_>, sink: &Sink<'_>) {
    let panels = n.div_ceil(nr);
    let block = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let mut buf = [0i32; MAX_TILE];
        for p in cols {
            let mut m0 = rows.start;
            while m0 < rows.end {
                let r = (rows.end - m0).min(mr);
                tile(m0, r, p, &mut buf);
                sink(m0, p * nr, r, nr.min(n - p * nr), &buf, nr);
                m0 += r;
            }
        }
    };
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    // An int8 multiply-add costs about a quarter of an f32 one (VNNI: 64 per instruction
    // against 16 FMAs), so the f32 GEMM's fan-out threshold is scaled by 4.
    let min_work = kiln_tensor::parallel::gemm_min_flops().saturating_mul(INT8_FANOUT_FACTOR);
    if !may_split || work < min_work || kiln_tensor::get_num_threads() == 1 {
        block(0..m, 0..panels);
        return;
    }
    kiln_tensor::parallel::install(|threads| {
        let row_blocks = m.div_ceil(mr);
        if row_blocks >= 2 * threads || row_blocks >= panels {
            // Split the rows: each task reads all of B once per MR rows, like the serial loop.
            let parts = threads.min(row_blocks);
            let step = row_blocks.div_ceil(parts) * mr;
            (0..m.div_ceil(step)).into_par_iter().for_each(|i| block(i * step..((i + 1) * step).min(m), 0..panels));
        } else {
            let parts = threads.min(panels);
            let step = panels.div_ceil(parts);
            (0..panels.div_ceil(step))
                .into_par_iter()
                .for_each(|i| block(0..m, i * step..((i + 1) * step).min(panels)));
        }
    });
}

fn store_sink(
    c: &mut [i32],
    ldc: usize,
    m: usize,
    n: usize,
) -> impl Fn(usize, usize, usize, usize, &[i32], usize) + Sync {
    assert!(ldc >= n, "int8 gemm: ldc {ldc} < n {n}");
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "int8 gemm: C holds {} values, needs {m} x {n}", c.len());
    let out = OutPtr(c.as_mut_ptr());
    move |m0, n0, rows, cols, tile: &[i32], nr| {
        let out = out;
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: in bounds (checked above); tiles are disjoint.
                unsafe { *out.0.add((m0 + r) * ldc + n0 + j) = tile[r * nr + j] };
            }
        }
    }
}

/// `C = A · Bᵀ` for unsigned activations `a` (`m x k`, row stride `lda`) and packed signed
/// weights, into `c` (`m x n`, row stride `ldc`), exactly in `i32`.
///
/// **Panics** if a slice is shorter than its matrix or a stride is shorter than its row.
pub fn gemm_u8i8(m: usize, a: &[u8], lda: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
    let sink = store_sink(c, ldc, m, b.n);
    drive(m, a, lda, false, b, true, &sink);
}

/// `C = A · Bᵀ` for signed activations `a` (`m x k`, row stride `lda`) and packed signed
/// weights, into `c` (`m x n`, row stride `ldc`), exactly in `i32`.
///
/// **Panics** if a slice is shorter than its matrix or a stride is shorter than its row.
pub fn gemm_i8i8(m: usize, a: &[i8], lda: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
    let sink = store_sink(c, ldc, m, b.n);
    // SAFETY: i8 and u8 have the same size and alignment; the kernels reinterpret the bits.
    let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr() as *const u8, a.len()) };
    drive(m, bytes, lda, true, b, true, &sink);
}

/// Per-column requantisation factors of a tile: `a_scale · w_scale`, the zero-point offset
/// `a_zero_point · Σ_k w` and the bias.
struct Columns<'a> {
    mult: &'a [f32],
    offset: &'a [i32],
    bias: &'a [f32],
}

/// Output quantisation of [`gemm_requant_codes`]: `clamp(round(y / scale) + zero_point, lo, hi)`.
#[derive(Clone, Copy)]
struct CodeParams {
    scale: f32,
    zero_point: f32,
    lo: f32,
    hi: f32,
}

/// One tile row: `row[j] = code(y)` with `y = (t[j] - offset[j]) · mult[j] + bias[j]`; a
/// straight loop over equal-length slices that the compiler vectorises (at the width of the
/// target features of the function it is inlined into).
#[inline(always)]
fn requant_row(t: &[i32], c: &Columns<'_>, q: &CodeParams, row: &mut [u8]) {
    let n = row.len();
    let (t, mult, offset, bias) = (&t[..n], &c.mult[..n], &c.offset[..n], &c.bias[..n]);
    for j in 0..n {
        let v = t[j].wrapping_sub(offset[j]) as f32 * mult[j] + bias[j];
        // `QParams::quantize`, with the ReLU's floor
        let code = (crate::observer::round_half_even(v / q.scale) + q.zero_point).max(q.lo).min(q.hi);
        // SAFETY: `code` is a number in `lo..=hi` within the code range (max/min turn NaN into `lo`).
        row[j] = unsafe { code.to_int_unchecked::<i32>() } as u8;
    }
}

/// [`requant_row`] compiled for AVX-512 (16 lanes).
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn requant_row_avx512(t: &[i32], c: &Columns<'_>, q: &CodeParams, row: &mut [u8]) {
    requant_row(t, c, q, row)
}

/// [`requant_row`] compiled for AVX2 (8 lanes).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requant_row_avx2(t: &[i32], c: &Columns<'_>, q: &CodeParams, row: &mut [u8]) {
    requant_row(t, c, q, row)
}

/// The textbook triple loop over the unpacked weight `w` (`[n, k]`), in `i64`: the oracle the
/// kernels are tested against. Unsigned activations.
#[must_use]
pub fn reference_u8i8(m: usize, k: usize, n: usize, a: &[u8], w: &[i8]) -> Vec<i32> {
    reference(m, k, n, |i| a[i] as i64, w)
}

/// [`reference_u8i8`] for signed activations.
#[must_use]
pub fn reference_i8i8(m: usize, k: usize, n: usize, a: &[i8], w: &[i8]) -> Vec<i32> {
    reference(m, k, n, |i| a[i] as i64, w)
}

fn reference(m: usize, k: usize, n: usize, a: impl Fn(usize) -> i64, w: &[i8]) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: i64 = (0..k).map(|kk| a(i * k + kk) * w[j * k + kk] as i64).sum();
            c[i * n + j] = i32::try_from(s).expect("reference gemm: sum overflows i32");
        }
    }
    c
}

/// The activations of a quantised GEMM: row-major `m x k`, unsigned or signed.
#[derive(Clone, Copy, Debug)]
pub enum QuantizedRows<'a> {
    /// `quint8` codes.
    U8(&'a [u8]),
    /// `qint8` codes.
    I8(&'a [i8]),
}

/// How [`gemm_requant`] turns `i32` sums into `f32` outputs:
/// `y[m, n] = a_scale · w_scale[n] · (C[m, n] - a_zero_point · Σ_k w[n, k]) + bias[n]`.
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    /// Scale of the activations (per tensor).
    pub a_scale: f32,
    /// Zero point of the activations (per tensor), in the activations' code space.
    pub a_zero_point: i32,
    /// Scale of each output channel's weights (symmetric, zero point 0).
    pub w_scales: &'a [f32],
    /// Optional bias in `f32`, one per output channel.
    pub bias: Option<&'a [f32]>,
}

impl Requant<'_> {
    /// Per column: `a_scale · w_scale[n]`, `a_zero_point · Σ_k w[n, k]` and the bias.
    fn columns(&self, b: &PackedB) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
        let n = b.n;
        assert_eq!(self.w_scales.len(), n, "int8 gemm: {} weight scales for {n} columns", self.w_scales.len());
        if let Some(bias) = self.bias {
            assert_eq!(bias.len(), n, "int8 gemm: {} biases for {n} columns", bias.len());
        }
        let mult = self.w_scales.iter().map(|&s| s * self.a_scale).collect();
        let offset = b.col_sums.iter().map(|&s| s.wrapping_mul(self.a_zero_point)).collect();
        let bias = self.bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
        (mult, offset, bias)
    }
}

/// Runs [`drive`] over unsigned or signed activation rows.
fn drive_rows(m: usize, a: QuantizedRows<'_>, lda: usize, b: &PackedB, may_split: bool, sink: &Sink<'_>) {
    match a {
        QuantizedRows::U8(a) => drive(m, a, lda, false, b, may_split, sink),
        QuantizedRows::I8(a) => {
            // SAFETY: i8 and u8 have the same layout.
            let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr() as *const u8, a.len()) };
            drive(m, bytes, lda, true, b, may_split, sink)
        }
    }
}

/// The int8 GEMM with the requantisation fused into the output loop: each finished tile is
/// turned into `f32` ([`Requant`]) and written to `out[m * rs + n * cs]`.
///
/// `rs`/`cs` let a convolution write its `[pixels, channels]` product straight into NCHW
/// (`rs = 1`, `cs = pixels`). `may_split = false` keeps the product on the calling thread
/// (for callers that run one product per thread already).
///
/// **Panics** if `a` is shorter than `m x k` (row stride `lda`), `w_scales` or `bias` do not
/// have one value per column, or `out` is too short for the strides.
pub fn gemm_requant(
    m: usize,
    a: QuantizedRows<'_>,
    lda: usize,
    b: &PackedB,
    q: &Requant<'_>,
    out: &mut [f32],
    rs: usize,
    cs: usize,
    may_split: bool,
) {
    let n = b.n;
    let (mult, offset, bias) = q.columns(b);
    if m == 0 || n == 0 {
        return;
    }
    assert!(out.len() > (m - 1) * rs + (n - 1) * cs, "gemm_requant: output holds {} values, too few", out.len());
    let dst = OutPtr(out.as_mut_ptr());
    let sink = move |m0: usize, n0: usize, rows: usize, cols: usize, tile: &[i32], nr: usize| {
        let dst = dst;
        for j in 0..cols {
            let c = n0 + j;
            let (mul, off, bb) = (mult[c], offset[c], bias[c]);
            for r in 0..rows {
                let v = tile[r * nr + j].wrapping_sub(off) as f32 * mul + bb;
                // SAFETY: in bounds (checked above); tiles are disjoint.
                unsafe { *dst.0.add((m0 + r) * rs + c * cs) = v };
            }
        }
    };
    drive_rows(m, a, lda, b, may_split, &sink);
}

/// [`gemm_requant`] whose outputs are quantised again, with `out_q`, into codes (`u8`, or the
/// bits of `i8` codes for [`QuantDtype::Int8`](crate::QuantDtype)), row-major `m x n` with row
/// stride `ldc`: the output of a quantised layer feeding the next one without leaving the
/// integers. Each code is `out_q.quantize(y)` of the `f32` value `y` [`gemm_requant`] would
/// write, so the two agree exactly (for every `y` but NaN, which gives the lowest code here);
/// with `relu` codes below `out_q`'s zero point (negative values) are raised to it, which is
/// `ReLU` applied before quantising.
///
/// ```
/// use kiln_quant::gemm::{gemm_requant, gemm_requant_codes, PackedB, QuantizedRows, Requant};
/// use kiln_quant::{QParams, QuantDtype};
/// let packed = PackedB::pack(&[1, -2, 3, 4, 5, -6], 2, 3);
/// let req = Requant { a_scale: 0.1, a_zero_point: 2, w_scales: &[0.05, 0.02], bias: Some(&[0.1, -0.3]) };
/// let a = [7u8, 0, 255, 3, 4, 5];
/// let mut y = [0f32; 4];
/// gemm_requant(2, QuantizedRows::U8(&a), 3, &packed, &req, &mut y, 2, 1, true);
/// let out_q = QParams::affine(-1.0, 4.0, QuantDtype::UInt8);
/// let mut codes = [0u8; 4];
/// gemm_requant_codes(2, QuantizedRows::U8(&a), 3, &packed, &req, &out_q, false, &mut codes, 2, true);
/// assert_eq!(codes.map(i32::from), y.map(|v| out_q.quantize(v)));
/// ```
///
/// **Panics** as [`gemm_requant`] does, or if `ldc < n`.
pub fn gemm_requant_codes(
    m: usize,
    a: QuantizedRows<'_>,
    lda: usize,
    b: &PackedB,
    q: &Requant<'_>,
    out_q: &crate::QParams,
    relu: bool,
    out: &mut [u8],
    ldc: usize,
    may_split: bool,
) {
    let n = b.n;
    let (mult, offset, bias) = q.columns(b);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm_requant_codes: ldc {ldc} < n {n}");
    assert!(out.len() >= (m - 1) * ldc + n, "gemm_requant_codes: output holds {} codes, too few", out.len());
    let (qmin, qmax) = out_q.dtype.range();
    let lo = if relu { out_q.zero_point } else { qmin } as f32;
    let codes = CodeParams { scale: out_q.scale, zero_point: out_q.zero_point as f32, lo, hi: qmax as f32 };
    let isa = b.isa;
    let dst = OutPtr(out.as_mut_ptr());
    let sink = move |m0: usize, n0: usize, rows: usize, cols: usize, tile: &[i32], nr: usize| {
        let dst = dst;
        let (mult, offset, bias) = (&mult[n0..n0 + cols], &offset[n0..n0 + cols], &bias[n0..n0 + cols]);
        for r in 0..rows {
            // SAFETY: in bounds (checked above); tiles are disjoint.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.0.add((m0 + r) * ldc + n0), cols) };
            let t = &tile[r * nr..r * nr + cols];
            let cols = Columns { mult, offset, bias };
            match isa {
                // SAFETY: the CPU has the features (the kernel of this ISA was checked available).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => unsafe { requant_row_avx512(t, &cols, &codes, row) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { requant_row_avx2(t, &cols, &codes, row) },
                _ => requant_row(t, &cols, &codes, row),
            }
        }
    };
    drive_rows(m, a, lda, b, may_split, &sink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(n: usize, seed: u64, extremes: bool) -> Vec<u8> {
        let mut rng = kiln_tensor::Rng::new(seed);
        (0..n)
            .map(|i| {
                if extremes && i % 3 == 0 {
                    if rng.below(2) == 0 {
                        0x80
                    } else {
                        0x7f
                    }
                } else {
                    rng.below(256) as u8
                }
            })
            .collect()
    }

    fn as_i8(v: &[u8]) -> Vec<i8> {
        v.iter().map(|&b| b as i8).collect()
    }

    fn check_all_isas(m: usize, k: usize, n: usize, seed: u64, extremes: bool) {
        let a = bytes(m * k, seed, extremes);
        let w = as_i8(&bytes(n * k, seed + 1, extremes));
        let want_u = reference_u8i8(m, k, n, &a, &w);
        let a_i = as_i8(&a);
        let want_i = reference_i8i8(m, k, n, &a_i, &w);
        for isa in Isa::available() {
            let b = PackedB::pack_for(isa, &w, n, k);
            let mut c = vec![0; m * n];
            gemm_u8i8(m, &a, k, &b, &mut c, n);
            assert_eq!(c, want_u, "{isa:?} u8 x i8, m {m} k {k} n {n}");
            let mut c = vec![0; m * n];
            gemm_i8i8(m, &a_i, k, &b, &mut c, n);
            assert_eq!(c, want_i, "{isa:?} i8 x i8, m {m} k {k} n {n}");
        }
    }

    #[test]
    fn extremes_saturate_nothing() {
        // All -128 x -128 and 255 x -128: the cases maddubs would saturate.
        for (av, wv) in [(0x80u8, -128i8), (0xff, -128), (0xff, 127), (0x7f, 127)] {
            for (m, k, n) in [(1, 1, 1), (9, 67, 33), (3, 300, 17)] {
                let a = vec![av; m * k];
                let w = vec![wv; n * k];
                for isa in Isa::available() {
                    let b = PackedB::pack_for(isa, &w, n, k);
                    let mut c = vec![0; m * n];
                    gemm_u8i8(m, &a, k, &b, &mut c, n);
                    assert_eq!(c, reference_u8i8(m, k, n, &a, &w), "{isa:?} u8 {av} x {wv}");
                    let ai = as_i8(&a);
                    gemm_i8i8(m, &ai, k, &b, &mut c, n);
                    assert_eq!(c, reference_i8i8(m, k, n, &ai, &w), "{isa:?} i8 {av} x {wv}");
                }
            }
        }
    }

    #[test]
    fn large_product_splits_across_threads_identically() {
        // Above the parallel threshold in both directions (rows, then columns).
        kiln_tensor::parallel::with_gemm_threshold(1, || {
            check_all_isas(37, 45, 70, 5, true);
            check_all_isas(2, 45, 200, 6, false);
        });
    }

    #[test]
    fn strided_output_and_requant() {
        let (m, k, n) = (5, 7, 3);
        let a = bytes(m * k, 1, false);
        let w = as_i8(&bytes(n * k, 2, false));
        let c = reference_u8i8(m, k, n, &a, &w);
        let b = PackedB::pack(&w, n, k);
        let scales = [0.5f32, 0.25, 2.0];
        let bias = [1.0f32, -1.0, 0.0];
        let q = Requant { a_scale: 0.1, a_zero_point: 3, w_scales: &scales, bias: Some(&bias) };
        // Transposed output: out[n][m].
        let mut out = vec![0f32; m * n];
        gemm_requant(m, QuantizedRows::U8(&a), k, &b, &q, &mut out, 1, m, true);
        for i in 0..m {
            for j in 0..n {
                let s: i32 = (0..k).map(|kk| (a[i * k + kk] as i32 - 3) * w[j * k + kk] as i32).sum();
                let want = 0.1 * scales[j] * s as f32 + bias[j];
                assert!((out[j * m + i] - want).abs() <= 1e-5 * want.abs().max(1.0), "{i} {j}");
            }
        }
        assert_eq!(c.len(), m * n);
    }

    #[test]
    fn codes_out_are_the_float_out_quantised_on_every_isa() {
        use crate::{QParams, QuantDtype};
        let (m, k, n) = (13, 21, 45);
        let a = bytes(m * k, 7, false);
        let w = as_i8(&bytes(n * k, 8, true));
        let scales: Vec<f32> = (0..n).map(|j| 0.001 + 0.0007 * j as f32).collect();
        let bias: Vec<f32> = (0..n).map(|j| (j as f32 - 20.0) * 0.05).collect();
        let req = Requant { a_scale: 0.02, a_zero_point: 100, w_scales: &scales, bias: Some(&bias) };
        for isa in Isa::available() {
            let b = PackedB::pack_for(isa, &w, n, k);
            let mut y = vec![0f32; m * n];
            gemm_requant(m, QuantizedRows::U8(&a), k, &b, &req, &mut y, n, 1, true);
            for dtype in [QuantDtype::UInt8, QuantDtype::Int8] {
                // a narrow range, so that codes clamp at both ends
                let out_q = QParams::affine(-0.8, 0.6, dtype);
                for relu in [false, true] {
                    let mut codes = vec![0u8; m * n];
                    gemm_requant_codes(m, QuantizedRows::U8(&a), k, &b, &req, &out_q, relu, &mut codes, n, true);
                    for (i, (&c, &v)) in codes.iter().zip(&y).enumerate() {
                        let got = if dtype == QuantDtype::Int8 { i32::from(c as i8) } else { i32::from(c) };
                        let want = out_q.quantize(if relu { v.max(0.0) } else { v });
                        assert_eq!(got, want, "{isa:?} {dtype:?} relu {relu} at {i}: y = {v}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_isa_matches_the_reference(m in 1usize..20, k in 1usize..80, n in 1usize..70, seed in 0u64..1000, extremes: bool) {
            check_all_isas(m, k, n, seed, extremes);
        }
    }
}
