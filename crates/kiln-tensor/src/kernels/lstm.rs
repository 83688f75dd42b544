//! Fused LSTM recurrence: one layer and direction over a whole sequence, forward and
//! backward through time, with every buffer allocated once per call (none per time step).
//!
//! This module is the kernel behind kiln-autograd's `Var::lstm_sequence` op (which records
//! it in the graph and keeps the same recurrence composed of primitive ops as its test oracle
//! and its path for higher-order gradients); layers should use that op rather than these
//! functions.
//!
//! The input projection `xp = X·W_ihᵀ + b_ih + b_hh` (`[T, B, 4H]`, gate blocks i, f, g, o as
//! PyTorch's) is computed outside, by one matrix product for the whole sequence. Per step,
//! [`lstm_forward`] does one GEMM `(h_{t-1} ⊙ m)·W_hhᵀ` for all four gates into a `[B, 4H]`
//! slot of its tape, then one elementwise pass adds `xp_t`, applies the gate nonlinearities
//! and updates the cell:
//!
//! ```text
//! i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o)       (a = xp_t + (h_{t-1} ⊙ m)·W_hhᵀ)
//! c_t = f ⊙ c_{t-1} + i ⊙ g
//! h_t = o ⊙ tanh(c_t)
//! ```
//!
//! where `m` is an optional recurrent-dropout mask. [`lstm_backward`] runs the steps in
//! reverse with one GEMM per step for `∂h_{t-1}`, and gets `∂W_hh` from one GEMM over all
//! steps at the end (`∂W_hh = Σ_t ∂a_tᵀ (h_{t-1} ⊙ m)`), from what the forward kept in its
//! [`LstmTape`].
//!
//! Variable lengths follow PyTorch's packed sequences: sequence `b` is steps
//! `0..lengths[b]`; at a padded step its state is carried over unchanged and its output is
//! 0; in reverse it starts from its own last step.
//!
//! Speed notes (each measured on the W4 benchmark): in f32 the nonlinearities are branch-free
//! polynomial forms that vectorize (libm's `tanhf` alone cost more than the GEMMs), compiled
//! for AVX2 when the CPU has it; `xp` from a batch-first input is read in place; the buffers
//! of dropped tapes are reused (fresh memory of that size page-faults at every step). f64
//! keeps `std`'s functions, so that it agrees with the composed ops to rounding.

use std::any::{Any, TypeId};
use std::mem::{size_of, transmute_copy};
use std::sync::{Mutex, PoisonError};

use crate::element::Float;
use crate::elementwise::sigmoid_scalar;
use crate::kernels::gemm::{gemm, gemm_slices, MatRef};
use crate::parallel;
use crate::tensor::Tensor;

// ------------------------------------------------------------------------- activations

/// `e^x` in f32 without branches, so that loops over slices vectorize: Cephes' `expf`
/// (range reduction by ln 2 in two parts, degree-5 minimax polynomial; relative error about
/// 1e-7), with `x` clamped to `[-87, 88]` so that `2^n` stays a normal number.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((k + 127) as u32) << 23)
}

/// `1 / (1 + e^-x)` in f32, branch-free.
#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `tanh x` in f32, branch-free: Cephes' `tanhf` (an odd polynomial below |x| = 0.625,
/// `1 - 2 / (e^{2|x|} + 1)` above; relative error about 2e-7).
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 3.333_328e-1) * z * a
            + a;
    let big = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    (if a < 0.625 { small } else { big }).copysign(x)
}

/// σ(x): the vectorizable f32 form for `f32`, the exact scalar one otherwise (f64 keeps
/// agreeing with the composed ops to the last bits).
#[inline(always)]
fn sigmoid<E: Float>(x: E) -> E {
    if TypeId::of::<E>() == TypeId::of::<f32>() {
        // SAFETY: E is f32, checked just above.
        unsafe { transmute_copy(&sigmoid_f32(transmute_copy::<E, f32>(&x))) }
    } else {
        sigmoid_scalar(x)
    }
}

/// tanh(x), chosen as [`sigmoid`] is.
#[inline(always)]
fn tanh<E: Float>(x: E) -> E {
    if TypeId::of::<E>() == TypeId::of::<f32>() {
        // SAFETY: E is f32, checked just above.
        unsafe { transmute_copy(&tanh_f32(transmute_copy::<E, f32>(&x))) }
    } else {
        x.tanh()
    }
}

// ------------------------------------------------------------------------- buffer reuse

/// Buffers of dropped tapes, handed to the next forward. A tape holds about `7·T·B·H`
/// elements; allocated afresh at every training step, that much memory costs a page fault per
/// 4 KiB (the allocator returns large freed blocks to the system), which measured as much as
/// the recurrence itself.
static SPARE: Mutex<Vec<(usize, Box<dyn Any + Send>)>> = Mutex::new(Vec::new());
/// At most this many spare buffers...
const MAX_SPARE: usize = 32;
/// ... holding at most this many bytes.
const MAX_SPARE_BYTES: usize = 256 << 20;

/// A buffer of `n` elements, reused when a spare one is large enough. Its contents are
/// unspecified (zeros or a previous tape's values): every element the forward reads back, or
/// the backward reads, is written first.
fn take_buffer<E: Float>(n: usize) -> Vec<E> {
    let reused = {
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        let best = spare
            .iter()
            .enumerate()
            .filter_map(|(k, (_, b))| {
                b.downcast_ref::<Vec<E>>().filter(|v| v.capacity() >= n).map(|v| (k, v.capacity()))
            })
            .min_by_key(|&(_, cap)| cap);
        best.map(|(k, _)| spare.swap_remove(k).1)
    };
    match reused.map(|b| b.downcast::<Vec<E>>()) {
        Some(Ok(mut v)) => {
            v.resize(n, E::zero());
            *v
        }
        _ => crate::alloc::take_filled(n, E::zero()),
    }
}

/// Keeps `v` for a later [`take_buffer`], within the limits.
fn give_back<E: Float>(v: Vec<E>) {
    let bytes = v.capacity() * size_of::<E>();
    if bytes == 0 {
        return;
    }
    let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
    let held: usize = spare.iter().map(|(b, _)| b).sum();
    if spare.len() < MAX_SPARE && held + bytes <= MAX_SPARE_BYTES {
        spare.push((bytes, Box::new(v)));
    }
}

// ------------------------------------------------------------------------- the recurrence

/// What [`lstm_forward`] keeps for [`lstm_backward`]: activated gates, the cell state before
/// each step, `tanh` of the cell state after it, and the recurrent input `h_{t-1} ⊙ m`, all
/// indexed by time step.
#[derive(Debug)]
pub struct LstmTape<E: Float> {
    rows: Rows,
    hidden: usize,
    max_len: usize,
    reverse: bool,
    lengths: Option<Vec<usize>>,
    mask: Option<Vec<E>>,
    /// `[T, B, 4H]`: i, f, g, o after their nonlinearities (rows of padded steps: unused).
    gates: Vec<E>,
    /// `[T, B, H]`: the cell state the step at time `t` started from.
    c_prev: Vec<E>,
    /// `[T, B, H]`: `tanh(c_t)`.
    tanh_c: Vec<E>,
    /// `[T, B, H]` in `rows` order: `h_{t-1} ⊙ m`, the left operand of the step's recurrent
    /// product.
    h_rec: Vec<E>,
}

impl<E: Float> Drop for LstmTape<E> {
    fn drop(&mut self) {
        for v in [&mut self.gates, &mut self.c_prev, &mut self.tanh_c, &mut self.h_rec] {
            give_back(std::mem::take(v));
        }
    }
}

/// The gradients [`lstm_backward`] returns, one per differentiable input of [`lstm_forward`].
#[derive(Clone, Debug)]
pub struct LstmGrads<E: Float> {
    /// `[T, B, 4H]`, the gradient of the pre-activations (zero at padded steps), laid out as
    /// `xp` was.
    pub xp: Tensor<E>,
    /// `[4H, H]`.
    pub w_hh: Tensor<E>,
    /// `[B, H]`.
    pub h0: Tensor<E>,
    /// `[B, H]`.
    pub c0: Tensor<E>,
}

/// Whether step `t` is inside sequence `b`.
#[inline]
fn active(lengths: Option<&[usize]>, t: usize, b: usize) -> bool {
    lengths.is_none_or(|l| t < l[b])
}

/// The time index of the `s`-th step processed.
#[inline]
fn time_of(s: usize, max_len: usize, reverse: bool) -> usize {
    if reverse {
        max_len - 1 - s
    } else {
        s
    }
}

/// Where row `(t, b)` of a `[T, B, ·]` operand sits: `xp` comes time-major (`[T, B, 4H]`
/// contiguous) or batch-major (a `[B, T, 4H]` buffer seen through `transpose(0, 1)`, what a
/// batch-first input projects to); its gradient and the tape's `h_rec` use the same order,
/// so that `∂W_hh` is one product over all rows.
#[derive(Clone, Copy, Debug)]
struct Rows {
    t_len: usize,
    batch: usize,
    batch_major: bool,
}

impl Rows {
    /// The row index of `(t, b)`.
    #[inline]
    fn at(self, t: usize, b: usize) -> usize {
        if self.batch_major {
            b * self.t_len + t
        } else {
            t * self.batch + b
        }
    }
    /// How many rows apart `(t, b)` and `(t, b + 1)` are.
    #[inline]
    fn batch_stride(self) -> usize {
        if self.batch_major {
            self.t_len
        } else {
            1
        }
    }
    /// A `[T, B, cols]` tensor over a buffer in this order.
    fn tensor<E: Float>(self, data: Vec<E>, cols: usize) -> Tensor<E> {
        if self.batch_major {
            Tensor::from_vec(data, &[self.batch, self.t_len, cols]).transpose(0, 1)
        } else {
            Tensor::from_vec(data, &[self.t_len, self.batch, cols])
        }
    }
}

/// `C = A·B + beta C` for `m x k` row-strided `A` (rows `rs_a` apart, unit column stride)
/// read from `a`, `B` given with its strides, `C` a contiguous `m x n` slice; on kiln's pool
/// unless `single_thread` (inside a batch chunk, which already has its thread).
#[inline]
fn gemm_rows<E: Float>(
    m: usize,
    k: usize,
    n: usize,
    a: &[E],
    rs_a: usize,
    b: &[E],
    (rs_b, cs_b): (usize, usize),
    beta: E,
    c: &mut [E],
    single_thread: bool,
) {
    if m == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * rs_a + k, "gemm_rows: A too short");
    assert!(b.len() > (k.max(1) - 1) * rs_b + (n.max(1) - 1) * cs_b, "gemm_rows: B too short");
    assert!(c.len() >= m * n, "gemm_rows: C too short");
    let ar = MatRef { ptr: a.as_ptr(), rs: rs_a as isize, cs: 1 };
    let br = MatRef { ptr: b.as_ptr(), rs: rs_b as isize, cs: cs_b as isize };
    // SAFETY: the extents of A, B and C were checked against their slices above; C is a
    // distinct &mut slice, so it aliases neither operand.
    unsafe {
        if single_thread {
            E::gemm_raw(
                m,
                k,
                n,
                E::one(),
                ar.ptr,
                ar.rs,
                ar.cs,
                br.ptr,
                br.rs,
                br.cs,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        } else {
            gemm(m, k, n, E::one(), ar, br, beta, c.as_mut_ptr(), n as isize, 1);
        }
    }
}

// ------------------------------------------------------------------------- batch chunks

/// Sequences never interact, so the recurrence runs in chunks of the batch, one per thread
/// of kiln's pool, with no synchronisation per step (a step's GEMM is too small to split).
/// A chunk gets at least this many sequences.
const MIN_CHUNK: usize = 8;

/// Runs `f(b0, b1, in_chunk)` over `[0, batch)` cut into chunks, in parallel on kiln's pool
/// when there is more than one (`in_chunk` is then true).
fn for_batch_chunks(batch: usize, f: impl Fn(usize, usize, bool) + Sync) {
    let n = parallel::get_num_threads().min(batch / MIN_CHUNK).max(1);
    if n == 1 {
        f(0, batch, false);
        return;
    }
    parallel::install(|_| {
        rayon::scope(|s| {
            for k in 0..n {
                let f = &f;
                s.spawn(move |_| f(k * batch / n, (k + 1) * batch / n, true));
            }
        });
    });
}

/// A buffer written by the batch chunks at the same time. Every row of every buffer belongs
/// to one sequence, and a chunk only takes slices of its own sequences' rows, so the slices
/// live at one time never overlap.
#[derive(Clone, Copy)]
struct Shared<E> {
    ptr: *mut E,
    len: usize,
}

// SAFETY: the chunks write disjoint parts (see `Shared::slice`); E is a plain float.
unsafe impl<E: Send> Send for Shared<E> {}
// SAFETY: as above.
unsafe impl<E: Send> Sync for Shared<E> {}

impl<E> Shared<E> {
    fn new(v: &mut [E]) -> Self {
        Shared { ptr: v.as_mut_ptr(), len: v.len() }
    }

    /// Elements `start..start + n`.
    ///
    /// # Safety
    /// No other slice of these elements may be alive (in this thread or another) while the
    /// returned one is; the buffer must outlive it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(self, start: usize, n: usize) -> &'a mut [E] {
        assert!(start + n <= self.len, "rnn: rows {start}..{} out of a buffer of {}", start + n, self.len);
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}

/// One step's elementwise work, for every active row `b`: the gate nonlinearities in place on
/// `gates` (`[B, 4H]`, holding `(h ⊙ m)·W_hhᵀ`) plus the step's input projection (row `b` of
/// it at `xp[b * xp_stride..]`), then `c ← f c + i g`, `h ← o tanh c`, the output row, and
/// (with `saved`) the previous `c` and `tanh c` into the tape.
#[inline(always)]
fn cells_forward_body<E: Float>(
    gates: &mut [E],
    xp: &[E],
    xp_stride: usize,
    h: &mut [E],
    c: &mut [E],
    out: &mut [E],
    mut saved: Option<(&mut [E], &mut [E])>,
    hidden: usize,
    active: &dyn Fn(usize) -> bool,
) {
    let g4 = 4 * hidden;
    for b in 0..h.len() / hidden {
        if !active(b) {
            continue; // state carried over, output stays 0
        }
        // one pass per nonlinearity over contiguous gate blocks, one for the cell: simple
        // loops over zipped slices (no bounds checks), which vectorize
        let row = &mut gates[b * g4..(b + 1) * g4];
        let (ifg, ro) = row.split_at_mut(3 * hidden);
        let (rif, rg) = ifg.split_at_mut(2 * hidden);
        let (xif, rest) = xp[b * xp_stride..b * xp_stride + g4].split_at(2 * hidden);
        let (xg, xo) = rest.split_at(hidden);
        // (plain loops: an iterator adapter's `fold` may stay out of line, compiled without
        // the caller's vector extensions)
        for (v, &x) in rif.iter_mut().zip(xif) {
            *v = sigmoid(*v + x);
        }
        for (v, &x) in ro.iter_mut().zip(xo) {
            *v = sigmoid(*v + x);
        }
        for (v, &x) in rg.iter_mut().zip(xg) {
            *v = tanh(*v + x);
        }
        let (ri, rf) = rif.split_at(hidden);
        let (o0, o1) = (b * hidden, (b + 1) * hidden);
        let (hb, cb) = (&mut h[o0..o1], &mut c[o0..o1]);
        let gates = ri.iter().zip(rf.iter()).zip(rg.iter().zip(ro.iter()));
        match saved.as_mut() {
            Some((c_prev, tanh_c)) => {
                c_prev[o0..o1].copy_from_slice(cb);
                let tcb = &mut tanh_c[o0..o1];
                for (((cv, hv), tv), ((&i, &f), (&g, &o))) in cb.iter_mut().zip(hb.iter_mut()).zip(tcb).zip(gates) {
                    *cv = f * *cv + i * g;
                    *tv = tanh(*cv);
                    *hv = o * *tv;
                }
            }
            None => {
                for ((cv, hv), ((&i, &f), (&g, &o))) in cb.iter_mut().zip(hb.iter_mut()).zip(gates) {
                    *cv = f * *cv + i * g;
                    *hv = o * tanh(*cv);
                }
            }
        }
        out[o0..o1].copy_from_slice(hb);
    }
}

/// [`cells_forward_body`] compiled for AVX2 (8 lanes instead of SSE2's 4).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cells_forward_avx2<E: Float>(
    gates: &mut [E],
    xp: &[E],
    xp_stride: usize,
    h: &mut [E],
    c: &mut [E],
    out: &mut [E],
    saved: Option<(&mut [E], &mut [E])>,
    hidden: usize,
    active: &dyn Fn(usize) -> bool,
) {
    cells_forward_body(gates, xp, xp_stride, h, c, out, saved, hidden, active);
}

/// [`cells_forward_body`] with the widest vectors the CPU has.
fn cells_forward<E: Float>(
    gates: &mut [E],
    xp: &[E],
    xp_stride: usize,
    h: &mut [E],
    c: &mut [E],
    out: &mut [E],
    saved: Option<(&mut [E], &mut [E])>,
    hidden: usize,
    active: &dyn Fn(usize) -> bool,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected just above.
        unsafe { cells_forward_avx2(gates, xp, xp_stride, h, c, out, saved, hidden, active) };
        return;
    }
    cells_forward_body(gates, xp, xp_stride, h, c, out, saved, hidden, active);
}

/// Runs one LSTM layer and direction over a whole sequence.
///
/// - `xp`: `[T, B, 4H]`, the input projection with both biases (gate blocks i, f, g, o); read
///   in place when contiguous or the `transpose(0, 1)` of a contiguous `[B, T, 4H]`, copied
///   otherwise;
/// - `w_hh`: `[4H, H]`; `h0`, `c0`: `[B, H]`;
/// - `lengths`: one per sequence, each `<= T` (`None`: all `T`);
/// - `reverse`: run from each sequence's last step to its first;
/// - `rec_mask`: `[B, H]`, multiplies `h_{t-1}` in the recurrent product only;
/// - `keep_tape`: keep what [`lstm_backward`] needs (`7·T·B·H` elements; the buffers of
///   dropped tapes are reused by later calls).
///
/// Returns `[T + 2, B, H]`: the outputs `h_t` at rows `0..T` (0 at padded steps), then `h_n`
/// and `c_n` (each sequence's state after its last step), and the tape when asked for.
///
/// **Panics** if a shape does not match, naming it, or a length exceeds `T`.
///
/// ```
/// use kiln_tensor::kernels::lstm::lstm_forward;
/// use kiln_tensor::Tensor;
/// // H = 1, B = 1, T = 2, all pre-activations 0: i = f = o = 1/2, g = 0, so every state stays 0
/// let xp: Tensor<f64> = Tensor::zeros(&[2, 1, 4]);
/// let (w, z) = (Tensor::zeros(&[4, 1]), Tensor::zeros(&[1, 1]));
/// let (out, tape) = lstm_forward(&xp, &w, &z, &z, None, false, None, false);
/// assert_eq!(out.shape(), &[4, 1, 1]);
/// assert_eq!(out.to_vec(), vec![0.0; 4]);
/// assert!(tape.is_none());
/// ```
#[must_use]
pub fn lstm_forward<E: Float>(
    xp: &Tensor<E>,
    w_hh: &Tensor<E>,
    h0: &Tensor<E>,
    c0: &Tensor<E>,
    lengths: Option<&[usize]>,
    reverse: bool,
    rec_mask: Option<&Tensor<E>>,
    keep_tape: bool,
) -> (Tensor<E>, Option<LstmTape<E>>) {
    let xs = xp.shape();
    assert!(
        xs.len() == 3 && xs[2].is_multiple_of(4) && xs[2] > 0,
        "lstm_forward: xp must be [seq_len, batch, 4 * hidden_size], got {xs:?}"
    );
    let (t_len, batch, g4) = (xs[0], xs[1], xs[2]);
    let hidden = g4 / 4;
    assert!(
        w_hh.shape() == [g4, hidden],
        "lstm_forward: w_hh of shape {:?} does not match the expected [4 * hidden_size, hidden_size] = [{g4}, {hidden}] \
         for xp {xs:?}",
        w_hh.shape()
    );
    for (name, s) in [("h0", h0), ("c0", c0)].into_iter().chain(rec_mask.map(|m| ("rec_mask", m))) {
        assert!(
            s.shape() == [batch, hidden],
            "lstm_forward: {name} of shape {:?} does not match the expected [batch, hidden_size] = [{batch}, {hidden}] \
             for xp {xs:?}",
            s.shape()
        );
    }
    if let Some(l) = lengths {
        assert!(l.len() == batch, "lstm_forward: {} lengths for a batch of {batch} (xp {xs:?})", l.len());
        assert!(l.iter().all(|&n| n <= t_len), "lstm_forward: lengths {l:?} exceed seq_len {t_len} (xp {xs:?})");
    }
    let max_len = lengths.map_or(t_len, |l| l.iter().copied().max().unwrap_or(0));
    let (bh, bg) = (batch * hidden, batch * g4);

    let bm = xp.transpose(0, 1);
    let batch_major = !xp.is_contiguous() && bm.is_contiguous();
    let xp = if batch_major { bm } else { xp.contiguous() };
    let xv = xp.as_slice().expect("contiguous");
    let rows = Rows { t_len, batch, batch_major };
    let rsb = rows.batch_stride();
    // W_hhᵀ laid out [H, 4H] once: the GEMM packs its right operand at every step, which is
    // a plain row copy from this layout and a strided gather from W_hh's
    let wt = w_hh.t().contiguous();
    let wtv = wt.as_slice().expect("contiguous");
    let mask = rec_mask.map(Tensor::to_vec);

    let mut out = crate::alloc::take_filled((t_len + 2) * bh, E::zero());
    let mut h = h0.to_vec();
    let mut c = c0.to_vec();
    // Without a tape, one slot of each buffer is reused at every step.
    let slots = if keep_tape { t_len } else { 1 };
    let buffer = |n: usize| if keep_tape { take_buffer(n) } else { crate::alloc::take_filled(n, E::zero()) };
    let mut gates = buffer(slots * bg);
    let mut c_prev = if keep_tape { buffer(slots * bh) } else { Vec::new() };
    let mut tanh_c = if keep_tape { buffer(slots * bh) } else { Vec::new() };
    let need_h_rec = keep_tape || mask.is_some();
    let mut h_rec = if need_h_rec { buffer(slots * bh) } else { Vec::new() };
    if keep_tape && batch_major && max_len < t_len {
        // rows past every sequence's end enter the ∂W_hh product (times ∂a = 0): make them finite
        for b in 0..batch {
            h_rec[rows.at(max_len, b) * hidden..rows.at(t_len - 1, b) * hidden + hidden].fill(E::zero());
        }
    }

    let bufs = [&mut gates, &mut c_prev, &mut tanh_c, &mut h_rec, &mut out, &mut h, &mut c].map(|v| Shared::new(v));
    let [gates_s, c_prev_s, tanh_c_s, h_rec_s, out_s, h_s, c_s] = bufs;
    let mask_v = mask.as_deref();
    for_batch_chunks(batch, |b0, b1, in_chunk| {
        let nb = b1 - b0;
        if nb == 0 {
            return;
        }
        // SAFETY: chunks have disjoint [b0, b1); every slice below covers rows of sequences
        // b0..b1 only, and the mutable ones are dropped before the spans read by the GEMMs
        // are taken (those span rows of the same sequences).
        unsafe {
            let h = h_s.slice(b0 * hidden, nb * hidden);
            let c = c_s.slice(b0 * hidden, nb * hidden);
            for s in 0..max_len {
                let t = time_of(s, max_len, reverse);
                let slot = if keep_tape { t } else { 0 };
                // a = (h ⊙ m)·W_hhᵀ here, + xp_t in the elementwise pass
                let gt = gates_s.slice((slot * batch + b0) * g4, nb * g4);
                if need_h_rec {
                    let (base, stride) =
                        if keep_tape { (rows.at(t, b0) * hidden, rsb * hidden) } else { (b0 * hidden, hidden) };
                    for j in 0..nb {
                        let hr = h_rec_s.slice(base + j * stride, hidden);
                        let hb = &h[j * hidden..(j + 1) * hidden];
                        match mask_v {
                            Some(m) => {
                                let mb = &m[(b0 + j) * hidden..(b0 + j + 1) * hidden];
                                hr.iter_mut().zip(hb.iter().zip(mb)).for_each(|(r, (&hv, &mv))| *r = hv * mv);
                            }
                            None => hr.copy_from_slice(hb),
                        }
                    }
                    let a = h_rec_s.slice(base, (nb - 1) * stride + hidden);
                    gemm_rows(nb, hidden, g4, a, stride, wtv, (g4, 1), E::zero(), gt, in_chunk);
                } else {
                    gemm_rows(nb, hidden, g4, h, hidden, wtv, (g4, 1), E::zero(), gt, in_chunk);
                }
                let out_t = out_s.slice((t * batch + b0) * hidden, nb * hidden);
                let saved = keep_tape.then(|| {
                    let at = (slot * batch + b0) * hidden;
                    (c_prev_s.slice(at, nb * hidden), tanh_c_s.slice(at, nb * hidden))
                });
                let xp_t = &xv[rows.at(t, b0) * g4..];
                let active_rows = |j: usize| active(lengths, t, b0 + j);
                cells_forward(gt, xp_t, rsb * g4, h, c, out_t, saved, hidden, &active_rows);
            }
        }
    });
    out[t_len * bh..(t_len + 1) * bh].copy_from_slice(&h);
    out[(t_len + 1) * bh..].copy_from_slice(&c);
    let tape = keep_tape.then(|| LstmTape {
        rows,
        hidden,
        max_len,
        reverse,
        lengths: lengths.map(<[usize]>::to_vec),
        mask,
        gates,
        c_prev,
        tanh_c,
        h_rec,
    });
    (Tensor::from_vec(out, &[t_len + 2, batch, hidden]), tape)
}

/// Back-propagates through a [`lstm_forward`] call: `grad` is the gradient of its packed
/// `[T + 2, B, H]` result (outputs, `h_n`, `c_n`), `w_hh` the weight it ran with.
///
/// ```text
/// ∂c_t += ∂h_t ⊙ o ⊙ (1 - tanh²c_t)
/// ∂a_i = ∂c_t ⊙ g ⊙ i(1 - i)      ∂a_f = ∂c_t ⊙ c_{t-1} ⊙ f(1 - f)
/// ∂a_g = ∂c_t ⊙ i ⊙ (1 - g²)      ∂a_o = ∂h_t ⊙ tanh c_t ⊙ o(1 - o)
/// ∂c_{t-1} = ∂c_t ⊙ f             ∂h_{t-1} = (∂a_t · W_hh) ⊙ m
/// ∂W_hh = Σ_t ∂a_tᵀ · (h_{t-1} ⊙ m)
/// ```
///
/// The gradient of `xp` is laid out as `xp` was (a batch-major `xp` gets a batch-major one).
///
/// **Panics** if `grad` or `w_hh` do not have the shapes of that call.
#[must_use]
pub fn lstm_backward<E: Float>(tape: &LstmTape<E>, w_hh: &Tensor<E>, grad: &Tensor<E>) -> LstmGrads<E> {
    let rows = tape.rows;
    let (t_len, batch, hidden) = (rows.t_len, rows.batch, tape.hidden);
    let g4 = 4 * hidden;
    assert!(
        grad.shape() == [t_len + 2, batch, hidden],
        "lstm_backward: grad of shape {:?} does not match the forward's result [{}, {batch}, {hidden}]",
        grad.shape(),
        t_len + 2
    );
    assert!(
        w_hh.shape() == [g4, hidden],
        "lstm_backward: w_hh of shape {:?} does not match the forward's [{g4}, {hidden}]",
        w_hh.shape()
    );
    let (bh, bg) = (batch * hidden, batch * g4);
    let lengths = tape.lengths.as_deref();
    let grad = grad.contiguous();
    let gv = grad.as_slice().expect("contiguous");
    let w = w_hh.contiguous();
    let wv = w.as_slice().expect("contiguous");
    let rsb = rows.batch_stride();

    let mut dxp = crate::alloc::take_filled(t_len * bg, E::zero());
    let mut dh = gv[t_len * bh..(t_len + 1) * bh].to_vec();
    let mut dc = gv[(t_len + 1) * bh..].to_vec();
    let mut tmp = if tape.mask.is_some() { crate::alloc::take_filled(bh, E::zero()) } else { Vec::new() };
    let one = E::one();

    let [dxp_s, dh_s, dc_s, tmp_s] = [&mut dxp, &mut dh, &mut dc, &mut tmp].map(|v| Shared::new(v));
    for_batch_chunks(batch, |b0, b1, in_chunk| {
        let nb = b1 - b0;
        if nb == 0 {
            return;
        }
        // SAFETY: as in `lstm_forward`: chunks own the rows of their sequences b0..b1.
        unsafe {
            let dh = dh_s.slice(b0 * hidden, nb * hidden);
            let dc = dc_s.slice(b0 * hidden, nb * hidden);
            for s in (0..tape.max_len).rev() {
                let t = time_of(s, tape.max_len, tape.reverse);
                for j in 0..nb {
                    let b = b0 + j;
                    if !active(lengths, t, b) {
                        continue; // ∂a = 0; ∂h, ∂c carried over to the step before
                    }
                    let (o0, o1) = (j * hidden, (j + 1) * hidden);
                    let row = &tape.gates[(t * batch + b) * g4..(t * batch + b + 1) * g4];
                    let (ri, rest) = row.split_at(hidden);
                    let (rf, rest) = rest.split_at(hidden);
                    let (rg, ro) = rest.split_at(hidden);
                    let drow = dxp_s.slice(rows.at(t, b) * g4, g4);
                    let (di, rest) = drow.split_at_mut(hidden);
                    let (df, rest) = rest.split_at_mut(hidden);
                    let (dg, dout) = rest.split_at_mut(hidden);
                    let at = (t * batch + b) * hidden;
                    let cp = &tape.c_prev[at..at + hidden];
                    let tcs = &tape.tanh_c[at..at + hidden];
                    let gob = &gv[at..at + hidden];
                    let (dhb, dcb) = (&mut dh[o0..o1], &mut dc[o0..o1]);
                    for k in 0..hidden {
                        let (i, f, g, o) = (ri[k], rf[k], rg[k], ro[k]);
                        let tc = tcs[k];
                        let dhk = dhb[k] + gob[k];
                        let dck = dcb[k] + dhk * o * (one - tc * tc);
                        di[k] = dck * g * i * (one - i);
                        df[k] = dck * cp[k] * f * (one - f);
                        dg[k] = dck * i * (one - g * g);
                        dout[k] = dhk * tc * o * (one - o);
                        dcb[k] = dck * f;
                        dhb[k] = E::zero();
                    }
                }
                // ∂h_{t-1} = (∂a_t · W_hh) ⊙ m on the active rows (∂a is 0 on the others)
                let da = dxp_s.slice(rows.at(t, b0) * g4, (nb - 1) * rsb * g4 + g4);
                match &tape.mask {
                    Some(m) => {
                        let tmp = tmp_s.slice(b0 * hidden, nb * hidden);
                        gemm_rows(nb, g4, hidden, da, rsb * g4, wv, (hidden, 1), E::zero(), tmp, in_chunk);
                        let mb = &m[b0 * hidden..b1 * hidden];
                        dh.iter_mut().zip(tmp.iter().zip(mb)).for_each(|(d, (&v, &mv))| *d += v * mv);
                    }
                    None => gemm_rows(nb, g4, hidden, da, rsb * g4, wv, (hidden, 1), one, dh, in_chunk),
                }
            }
        }
    });
    // ∂W_hh = ∂aᵀ · h_rec over every step at once (rows of padded steps: ∂a = 0)
    let n_rows = if rows.batch_major { t_len * batch } else { tape.max_len * batch };
    let mut dw = crate::alloc::take_filled(g4 * hidden, E::zero());
    gemm_slices(
        g4,
        n_rows,
        hidden,
        one,
        &dxp[..n_rows * g4],
        true,
        &tape.h_rec[..n_rows * hidden],
        false,
        E::zero(),
        &mut dw,
    );
    LstmGrads {
        xp: rows.tensor(dxp, g4),
        w_hh: Tensor::from_vec(dw, &[g4, hidden]),
        h0: Tensor::from_vec(dh, &[batch, hidden]),
        c0: Tensor::from_vec(dc, &[batch, hidden]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The recurrence written step by step, one sequence and unit at a time.
    fn naive(
        xp: &[f64],
        w: &[f64],
        h0: &[f64],
        c0: &[f64],
        (t_len, batch, hidden): (usize, usize, usize),
        lengths: &[usize],
        reverse: bool,
        mask: Option<&[f64]>,
    ) -> Vec<f64> {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let g4 = 4 * hidden;
        let mut out = vec![0.0; (t_len + 2) * batch * hidden];
        for b in 0..batch {
            let mut h = h0[b * hidden..(b + 1) * hidden].to_vec();
            let mut c = c0[b * hidden..(b + 1) * hidden].to_vec();
            let steps: Vec<usize> = if reverse { (0..lengths[b]).rev().collect() } else { (0..lengths[b]).collect() };
            for t in steps {
                let hr: Vec<f64> = (0..hidden).map(|k| h[k] * mask.map_or(1.0, |m| m[b * hidden + k])).collect();
                let a: Vec<f64> = (0..g4)
                    .map(|r| xp[(t * batch + b) * g4 + r] + (0..hidden).map(|k| w[r * hidden + k] * hr[k]).sum::<f64>())
                    .collect();
                for j in 0..hidden {
                    let (i, f, g, o) =
                        (sig(a[j]), sig(a[hidden + j]), a[2 * hidden + j].tanh(), sig(a[3 * hidden + j]));
                    c[j] = f * c[j] + i * g;
                    h[j] = o * c[j].tanh();
                    out[(t * batch + b) * hidden + j] = h[j];
                }
            }
            for j in 0..hidden {
                out[(t_len * batch + b) * hidden + j] = h[j];
                out[((t_len + 1) * batch + b) * hidden + j] = c[j];
            }
        }
        out
    }

    fn rand(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, rng)
    }

    #[test]
    fn forward_matches_the_step_by_step_recurrence() {
        let (t_len, batch, hidden) = (5, 3, 2);
        let mut rng = Rng::new(1);
        let xp = rand(&[t_len, batch, 4 * hidden], &mut rng);
        let w = rand(&[4 * hidden, hidden], &mut rng);
        let h0 = rand(&[batch, hidden], &mut rng);
        let c0 = rand(&[batch, hidden], &mut rng);
        let m = Tensor::bernoulli(&[batch, hidden], 0.5, &mut rng).mul_scalar(2.0);
        // batch-major: what a batch-first input projects to, read in place
        let xp_bm = xp.transpose(0, 1).contiguous().transpose(0, 1);
        for lengths in [None, Some(vec![4, 0, 2])] {
            for reverse in [false, true] {
                for mask in [None, Some(&m)] {
                    for (keep, xp_in) in [(false, &xp), (true, &xp), (true, &xp_bm), (false, &xp_bm)] {
                        let (out, tape) = lstm_forward(xp_in, &w, &h0, &c0, lengths.as_deref(), reverse, mask, keep);
                        assert_eq!(tape.is_some(), keep);
                        let l = lengths.clone().unwrap_or(vec![t_len; batch]);
                        let want = naive(
                            &xp.to_vec(),
                            &w.to_vec(),
                            &h0.to_vec(),
                            &c0.to_vec(),
                            (t_len, batch, hidden),
                            &l,
                            reverse,
                            mask.map(|m| m.to_vec()).as_deref(),
                        );
                        for (a, e) in out.to_vec().iter().zip(&want) {
                            assert!((a - e).abs() < 1e-12, "{lengths:?} reverse {reverse} mask {}", mask.is_some());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (t_len, batch, hidden) = (4, 3, 2);
        let mut rng = Rng::new(2);
        let xp = rand(&[t_len, batch, 4 * hidden], &mut rng);
        let w = rand(&[4 * hidden, hidden], &mut rng);
        let h0 = rand(&[batch, hidden], &mut rng);
        let c0 = rand(&[batch, hidden], &mut rng);
        let u = rand(&[t_len + 2, batch, hidden], &mut rng);
        let m = Tensor::bernoulli(&[batch, hidden], 0.5, &mut rng).mul_scalar(2.0);
        let xp_bm = xp.transpose(0, 1).contiguous().transpose(0, 1);
        for (lengths, reverse, mask, bm) in [
            (None, false, None, false),
            (Some(vec![3, 1, 0]), true, Some(&m), false),
            (Some(vec![2, 4, 1]), false, Some(&m), true),
            (Some(vec![2, 3, 1]), true, None, true),
            (None, true, Some(&m), true),
        ] {
            let l = lengths.as_deref();
            let (_, tape) = lstm_forward(if bm { &xp_bm } else { &xp }, &w, &h0, &c0, l, reverse, mask, true);
            let g = lstm_backward(&tape.unwrap(), &w, &u);
            // the gradient comes in the layout xp came in
            assert_eq!(g.xp.is_contiguous(), !bm);
            let f = |xp: &Tensor<f64>, w: &Tensor<f64>, h0: &Tensor<f64>, c0: &Tensor<f64>| {
                lstm_forward(xp, w, h0, c0, l, reverse, mask, false).0.mul(&u).sum_all().item()
            };
            let inputs = [&xp, &w, &h0, &c0];
            let grads = [&g.xp, &g.w_hh, &g.h0, &g.c0];
            for k in 0..4 {
                let mut plus: Vec<Tensor<f64>> = inputs.iter().map(|t| (*t).clone()).collect();
                for e in 0..inputs[k].numel() {
                    let eps = 1e-6;
                    let orig = inputs[k].to_vec()[e];
                    plus[k].as_mut_slice()[e] = orig + eps;
                    let fp = f(&plus[0], &plus[1], &plus[2], &plus[3]);
                    plus[k].as_mut_slice()[e] = orig - eps;
                    let fm = f(&plus[0], &plus[1], &plus[2], &plus[3]);
                    plus[k].as_mut_slice()[e] = orig;
                    let num = (fp - fm) / (2.0 * eps);
                    let ana = grads[k].to_vec()[e];
                    assert!((num - ana).abs() < 1e-8, "input {k} element {e}: {ana} vs {num} ({lengths:?})");
                }
            }
        }
    }

    #[test]
    fn fast_f32_activations_match_std() {
        let ulp = |x: f32| f32::EPSILON * x.abs();
        let mut xs: Vec<f32> = (-20_000..=20_000).map(|k| k as f32 * 0.005).collect();
        xs.extend([-1e3, -100.0, -88.5, -87.0, 1e-30, -1e-30, 1e-6, 0.0, -0.0, 0.624, 0.625, 0.626, 88.0, 89.0, 1e3]);
        for &x in &xs {
            let x64 = f64::from(x);
            if (-87.0..=88.0).contains(&x) {
                let (got, want) = (exp_f32(x), x64.exp() as f32);
                assert!((got - want).abs() <= 4.0 * ulp(want), "exp({x}): {got} vs {want}");
            }
            let (got, want) = (sigmoid_f32(x), (1.0 / (1.0 + (-x64).exp())) as f32);
            assert!((got - want).abs() <= 4.0 * ulp(want) + 1e-37, "sigmoid({x}): {got} vs {want}");
            let (got, want) = (tanh_f32(x), x64.tanh() as f32);
            assert!((got - want).abs() <= 4.0 * ulp(want) + 1e-37, "tanh({x}): {got} vs {want}");
            assert_eq!(tanh_f32(x).is_sign_negative(), x.is_sign_negative(), "tanh({x}) keeps the sign");
        }
        assert!(sigmoid_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan());
        assert_eq!((tanh_f32(f32::INFINITY), tanh_f32(f32::NEG_INFINITY)), (1.0, -1.0));
        assert_eq!((sigmoid_f32(f32::INFINITY), sigmoid_f32(f32::NEG_INFINITY) < 1e-37), (1.0, true));
    }

    #[test]
    fn f32_matches_f64() {
        // f32 takes the vectorised activations (and AVX2 where the CPU has it)
        let (t_len, batch, hidden) = (6, 5, 9);
        let mut rng = Rng::new(3);
        let xp = Tensor::<f64>::uniform(&[t_len, batch, 4 * hidden], -3.0, 3.0, &mut rng);
        let w = rand(&[4 * hidden, hidden], &mut rng);
        let (h0, c0) = (rand(&[batch, hidden], &mut rng), rand(&[batch, hidden], &mut rng));
        let u = rand(&[t_len + 2, batch, hidden], &mut rng);
        let m = Tensor::bernoulli(&[batch, hidden], 0.5, &mut rng).mul_scalar(2.0);
        let lengths = [6, 2, 0, 5, 3];
        let xp_bm = xp.transpose(0, 1).contiguous().transpose(0, 1);
        for (xp, mask, reverse) in [(&xp, None, false), (&xp_bm, Some(&m), true)] {
            let (o64, t64) = lstm_forward(xp, &w, &h0, &c0, Some(&lengths), reverse, mask, true);
            let g64 = lstm_backward(&t64.unwrap(), &w, &u);
            let c = |t: &Tensor<f64>| t.cast::<f32>();
            let mask32 = mask.map(c);
            let (o32, t32) =
                lstm_forward(&c(xp), &c(&w), &c(&h0), &c(&c0), Some(&lengths), reverse, mask32.as_ref(), true);
            let g32 = lstm_backward(&t32.unwrap(), &c(&w), &c(&u));
            for (name, a, b) in [
                ("out", &o32, &o64),
                ("xp", &g32.xp, &g64.xp),
                ("w_hh", &g32.w_hh, &g64.w_hh),
                ("h0", &g32.h0, &g64.h0),
                ("c0", &g32.c0, &g64.c0),
            ] {
                for (p, q) in a.to_vec().iter().zip(b.to_vec()) {
                    assert!((f64::from(*p) - q).abs() < 2e-5 * (1.0 + q.abs()), "{name}: {p} vs {q}");
                }
            }
        }
    }

    #[test]
    fn reused_tape_buffers_hold_no_stale_values() {
        // a tape full of NaN goes back to the spare buffers...
        let (t_len, batch, hidden) = (5, 3, 2);
        let nan = Tensor::<f64>::full(&[t_len, batch, 4 * hidden], f64::NAN);
        let w = Tensor::zeros(&[4 * hidden, hidden]);
        let z = Tensor::zeros(&[batch, hidden]);
        for _ in 0..4 {
            drop(lstm_forward(&nan, &w, &z, &z, None, false, None, true));
        }
        // ... and later tapes of the same size, padded and batch-major, give clean gradients
        let mut rng = Rng::new(4);
        let xp = rand(&[t_len, batch, 4 * hidden], &mut rng);
        let xp_bm = xp.transpose(0, 1).contiguous().transpose(0, 1);
        let w = rand(&[4 * hidden, hidden], &mut rng);
        let u = rand(&[t_len + 2, batch, hidden], &mut rng);
        let run = |xp: &Tensor<f64>| {
            let (o, tape) = lstm_forward(xp, &w, &z, &z, Some(&[2, 3, 1]), true, None, true);
            (o, lstm_backward(&tape.unwrap(), &w, &u))
        };
        let (o1, g1) = run(&xp_bm);
        let (o2, g2) = run(&xp);
        for (a, b) in [(&o1, &o2), (&g1.xp, &g2.xp), (&g1.w_hh, &g2.w_hh), (&g1.h0, &g2.h0), (&g1.c0, &g2.c0)] {
            for (p, q) in a.to_vec().iter().zip(b.to_vec()) {
                assert!(p.is_finite() && (p - q).abs() < 1e-14, "{p} vs {q}");
            }
        }
    }

    #[test]
    fn batch_chunks_on_several_threads_match_one() {
        let (t_len, batch, hidden) = (5, 26, 3);
        let mut rng = Rng::new(5);
        let xp = rand(&[t_len, batch, 4 * hidden], &mut rng);
        let xp_bm = xp.transpose(0, 1).contiguous().transpose(0, 1);
        let w = rand(&[4 * hidden, hidden], &mut rng);
        let (h0, c0) = (rand(&[batch, hidden], &mut rng), rand(&[batch, hidden], &mut rng));
        let u = rand(&[t_len + 2, batch, hidden], &mut rng);
        let m = Tensor::bernoulli(&[batch, hidden], 0.5, &mut rng).mul_scalar(2.0);
        let lengths: Vec<usize> = (0..batch).map(|b| (b * 7) % (t_len + 1)).collect();
        let before = crate::get_num_threads();
        for (xp, mask, reverse, l) in [(&xp, None, false, None), (&xp_bm, Some(&m), true, Some(lengths.as_slice()))] {
            let run = |threads: usize| {
                // (other tests may set the thread count meanwhile: the results may not differ anyway)
                crate::set_num_threads(threads);
                let (o, tape) = lstm_forward(xp, &w, &h0, &c0, l, reverse, mask, true);
                let g = lstm_backward(&tape.unwrap(), &w, &u);
                [o, g.xp, g.w_hh, g.h0, g.c0].map(|t| t.to_vec())
            };
            let (one, three) = (run(1), run(3));
            for (a, b) in one.iter().zip(&three) {
                for (p, q) in a.iter().zip(b) {
                    assert!((p - q).abs() < 1e-14, "{p} vs {q}");
                }
            }
        }
        crate::set_num_threads(before);
    }

    #[test]
    #[should_panic(
        expected = "lstm_forward: c0 of shape [2, 3] does not match the expected [batch, hidden_size] = [3, 2]"
    )]
    fn wrong_state_shape_panics() {
        let xp: Tensor<f64> = Tensor::zeros(&[2, 3, 8]);
        let _ = lstm_forward(
            &xp,
            &Tensor::zeros(&[8, 2]),
            &Tensor::zeros(&[3, 2]),
            &Tensor::zeros(&[2, 3]),
            None,
            false,
            None,
            false,
        );
    }
}
