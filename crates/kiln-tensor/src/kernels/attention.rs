//! Multi-head scaled dot-product attention without mask or dropout, one head at a time.
//!
//! For every batch index `n` and head `h` (head `h` being columns `h·D..(h+1)·D` of the
//! `[N, T, E]` inputs, `D = E / H`):
//! `P = softmax(Q_h K_hᵀ / √D)` and `O_h = P V_h`.
//! The per-head products read their operands in place through strides and write their results
//! straight into the head's columns of `[N, T, E]` outputs, so the split into heads and the merge
//! back cost no copies; the softmax and its backward run on a head's `L x S` block while it is in
//! cache; and the `N·H` heads are the unit of parallel work (each head's products run
//! single-threaded, so threads never nest).

use rayon::prelude::*;

use crate::element::Float;
use crate::parallel;
use crate::tensor::Tensor;

/// A raw pointer that may cross threads: every head writes its own disjoint block.
#[derive(Clone, Copy)]
struct SendPtr<E>(*mut E);
// SAFETY: each head writes a disjoint set of elements through it (see the callers).
unsafe impl<E: Send> Send for SendPtr<E> {}
unsafe impl<E: Send> Sync for SendPtr<E> {}

/// A `[N, T, E]` operand read in place: base pointer (at its offset) and strides.
#[derive(Clone, Copy)]
struct View<E> {
    ptr: *const E,
    s0: isize,
    s1: isize,
    s2: isize,
}
// SAFETY: only read, while the tensor it comes from is borrowed by the caller.
unsafe impl<E: Sync> Send for View<E> {}
unsafe impl<E: Sync> Sync for View<E> {}

impl<E: Float> View<E> {
    fn of(t: &Tensor<E>) -> Self {
        // SAFETY: the offset is inside the storage (the tensor's invariant).
        let ptr = unsafe { t.storage.as_ptr().add(t.offset) };
        View { ptr, s0: t.strides[0], s1: t.strides[1], s2: t.strides[2] }
    }
    /// Head `h` of batch `n` as a `T x D` matrix: (row stride, column stride, pointer).
    fn head(&self, n: usize, h: usize, d: usize) -> (*const E, isize, isize) {
        // SAFETY: (n, 0, h·d) is inside the tensor.
        let p = unsafe { self.ptr.offset(n as isize * self.s0 + (h * d) as isize * self.s2) };
        (p, self.s1, self.s2)
    }
}

/// `Σ a_i b_i` with eight partial sums: independent adds, so that the loop pipelines (one
/// chain of dependent adds over a 128-long row cost 4 cycles per element).
fn dot8<E: Float>(a: &[E], b: &[E]) -> E {
    let mut acc = [E::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = ra.iter().zip(rb).fold(E::zero(), |s, (&x, &y)| s + x * y);
    acc.iter().fold(E::zero(), |s, &v| s + v) + tail
}

/// The largest element (`-inf` for an empty slice; NaNs ignored, as `Float::max` does), with
/// eight independent running maxima.
fn max8<E: Float>(a: &[E]) -> E {
    let mut acc = [E::neg_infinity(); 8];
    let c = a.chunks_exact(8);
    let tail = c.remainder().iter().copied().fold(E::neg_infinity(), E::max);
    for x in c {
        for i in 0..8 {
            acc[i] = acc[i].max(x[i]);
        }
    }
    acc.iter().copied().fold(tail, E::max)
}

/// Runs `f(n, h)` for every head, on kiln's pool when the work is large enough.
fn for_each_head(n: usize, heads: usize, flops: usize, f: impl Fn(usize, usize) + Sync + Send) {
    if n * heads > 1 && flops >= parallel::gemm_min_flops() && parallel::get_num_threads() > 1 {
        parallel::install(|_| (0..n * heads).into_par_iter().for_each(|i| f(i / heads, i % heads)));
    } else {
        (0..n * heads).for_each(|i| f(i / heads, i % heads));
    }
}

/// `C = alpha · A·B` through `Float::gemm_raw` (single-threaded), C row-major with row stride
/// `rsc`.
///
/// # Safety
/// As `Float::gemm_raw`.
unsafe fn product<E: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: (*const E, isize, isize),
    b: (*const E, isize, isize),
    c: *mut E,
    rsc: isize,
) {
    // SAFETY: forwarded contract.
    unsafe { E::gemm_raw(m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, E::zero(), c, rsc, 1) }
}

fn check_shapes<E: Float>(what: &str, q: &Tensor<E>, k: &Tensor<E>, v: &Tensor<E>, heads: usize) {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    assert!(
        qs.len() == 3 && ks.len() == 3 && vs.len() == 3,
        "{what}: q {qs:?}, k {ks:?} and v {vs:?} must be [N, T, E]"
    );
    assert!(
        ks == vs && qs[0] == ks[0] && qs[2] == ks[2],
        "{what}: q {qs:?}, k {ks:?} and v {vs:?} disagree (k and v must match, and all share N and E)"
    );
    assert!(heads > 0 && qs[2] % heads == 0, "{what}: embedding size {} is not divisible by {heads} heads", qs[2]);
}

impl<E: Float> Tensor<E> {
    /// Multi-head attention without mask or dropout: for each batch index and head,
    /// `softmax(Q_h K_hᵀ / √D) V_h`, heads concatenated along the last dimension.
    ///
    /// `self` is the projected query `[N, L, E]`, `k` and `v` the projected key and value
    /// `[N, S, E]`; head `h` is columns `h·D..(h+1)·D` with `D = E / heads` (the layout of
    /// `torch.nn.MultiheadAttention`). Returns the output `[N, L, E]` and the attention
    /// probabilities `[N, heads, L, S]` (what the backward needs).
    ///
    /// **Panics** if the shapes are not `[N, L, E]`, `[N, S, E]`, `[N, S, E]` or `E` is not a
    /// multiple of `heads`.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let q = Tensor::<f64>::zeros(&[1, 2, 4]);
    /// let kv = Tensor::from_vec((0..8).map(f64::from).collect(), &[1, 2, 4]);
    /// let (out, p) = q.multi_head_attention(&kv, &kv, 2);
    /// // equal scores: every query averages the values
    /// assert_eq!(p.shape(), &[1, 2, 2, 2]);
    /// assert_eq!(out.to_vec()[..4], [2.0, 3.0, 4.0, 5.0]);
    /// ```
    #[must_use]
    pub fn multi_head_attention(&self, k: &Tensor<E>, v: &Tensor<E>, heads: usize) -> (Tensor<E>, Tensor<E>) {
        check_shapes("multi_head_attention", self, k, v, heads);
        let (n, l, e) = (self.shape[0], self.shape[1], self.shape[2]);
        let s = k.shape[1];
        let d = e / heads;
        let scale = E::from_f64(1.0 / (d as f64).sqrt());
        let (qv, kv, vv) = (View::of(self), View::of(k), View::of(v));
        let mut out: Vec<E> = crate::alloc::take(n * l * e);
        let mut probs: Vec<E> = crate::alloc::take(n * heads * l * s);
        let (po, pp) = (SendPtr(out.as_mut_ptr()), SendPtr(probs.as_mut_ptr()));
        for_each_head(n, heads, 2 * n * heads * l * s * d, |b, h| {
            let (po, pp) = (po, pp);
            // SAFETY: head (b, h) writes its own L x S block of `probs` and its own columns
            // h·D..(h+1)·D of rows b·L..(b+1)·L of `out`; both buffers have that capacity, and
            // every element is written (the scores before being read by the softmax).
            unsafe {
                let p = pp.0.add((b * heads + h) * l * s);
                let kh = kv.head(b, h, d);
                // P = scale · Q_h K_hᵀ
                product(l, d, s, scale, qv.head(b, h, d), (kh.0, kh.2, kh.1), p, s as isize);
                let mut row = vec![E::zero(); s];
                for i in 0..l {
                    let pr = std::slice::from_raw_parts_mut(p.add(i * s), s);
                    row.copy_from_slice(pr);
                    let m = max8(&row);
                    let m = if m.is_finite() { m } else { E::zero() };
                    let inv = E::exp_shifted_sum(&row, m, pr).recip();
                    pr.iter_mut().for_each(|x| *x *= inv);
                }
                // O_h = P V_h
                product(
                    l,
                    s,
                    d,
                    E::one(),
                    (p, s as isize, 1),
                    vv.head(b, h, d),
                    po.0.add(b * l * e + h * d),
                    e as isize,
                );
            }
        });
        // SAFETY: every element of both buffers was written above.
        unsafe {
            out.set_len(n * l * e);
            probs.set_len(n * heads * l * s);
        }
        (Tensor::from_vec(out, &[n, l, e]), Tensor::from_vec(probs, &[n, heads, l, s]))
    }

    /// The gradients of [`multi_head_attention`](Tensor::multi_head_attention) with respect
    /// to `q` (`self`), `k` and `v`, given its probabilities `probs` and the output gradient `g`
    /// `[N, L, E]`. Per head, with `G_h` the head's columns of `g`:
    /// `dV_h = Pᵀ G_h`, `dP = G_h V_hᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √D`,
    /// `dQ_h = dS K_h`, `dK_h = dSᵀ Q_h`.
    ///
    /// **Panics** if the shapes disagree with the forward's.
    #[must_use]
    pub fn multi_head_attention_backward(
        &self,
        k: &Tensor<E>,
        v: &Tensor<E>,
        probs: &Tensor<E>,
        g: &Tensor<E>,
        heads: usize,
    ) -> (Tensor<E>, Tensor<E>, Tensor<E>) {
        check_shapes("multi_head_attention_backward", self, k, v, heads);
        let (n, l, e, s) = (self.shape[0], self.shape[1], self.shape[2], k.shape[1]);
        let mut dq: Vec<E> = crate::alloc::take(n * l * e);
        let mut dk: Vec<E> = crate::alloc::take(n * s * e);
        let mut dv: Vec<E> = crate::alloc::take(n * s * e);
        let outs = [(&mut dq, l), (&mut dk, s), (&mut dv, s)].map(|(b, t)| Out {
            ptr: SendPtr(b.as_mut_ptr()),
            s0: t * e,
            s1: e,
        });
        // SAFETY: each buffer has the capacity of its [N, T, E] layout.
        unsafe { attention_backward(self, k, v, probs, g, heads, outs) };
        // SAFETY: every element of the three buffers was written.
        unsafe {
            dq.set_len(n * l * e);
            dk.set_len(n * s * e);
            dv.set_len(n * s * e);
        }
        (Tensor::from_vec(dq, &[n, l, e]), Tensor::from_vec(dk, &[n, s, e]), Tensor::from_vec(dv, &[n, s, e]))
    }

    /// Self-attention from packed projections: `self` is `[N, L, 3E]` holding the query, key
    /// and value projections side by side (the output of one product with PyTorch's packed
    /// `in_proj_weight`); the same as [`multi_head_attention`](Tensor::multi_head_attention) on
    /// the three `[N, L, E]` column blocks, read in place.
    ///
    /// **Panics** if `self` is not 3-D with a last dimension divisible by `3 * heads`.
    #[must_use]
    pub fn packed_self_attention(&self, heads: usize) -> (Tensor<E>, Tensor<E>) {
        let e = packed_embed(self, heads, "packed_self_attention");
        self.narrow(2, 0, e).multi_head_attention(&self.narrow(2, e, e), &self.narrow(2, 2 * e, e), heads)
    }

    /// The gradient of [`packed_self_attention`](Tensor::packed_self_attention) with respect
    /// to the packed projections `self` (`[N, L, 3E]`), written as one tensor: the query, key
    /// and value gradients side by side.
    ///
    /// **Panics** if the shapes disagree with the forward's.
    #[must_use]
    pub fn packed_self_attention_backward(&self, probs: &Tensor<E>, g: &Tensor<E>, heads: usize) -> Tensor<E> {
        let e = packed_embed(self, heads, "packed_self_attention_backward");
        let (q, k, v) = (self.narrow(2, 0, e), self.narrow(2, e, e), self.narrow(2, 2 * e, e));
        check_shapes("packed_self_attention_backward", &q, &k, &v, heads);
        let (n, l) = (self.shape[0], self.shape[1]);
        let mut d: Vec<E> = crate::alloc::take(n * l * 3 * e);
        let base = d.as_mut_ptr();
        // SAFETY: column block b of the [N, L, 3E] buffer starts b·E elements in.
        let outs = [0, 1, 2].map(|b| Out { ptr: SendPtr(unsafe { base.add(b * e) }), s0: l * 3 * e, s1: 3 * e });
        // SAFETY: the three blocks tile the buffer's capacity exactly.
        unsafe { attention_backward(&q, &k, &v, probs, g, heads, outs) };
        // SAFETY: every element was written (the three column blocks cover each row).
        unsafe { d.set_len(n * l * 3 * e) };
        Tensor::from_vec(d, &[n, l, 3 * e])
    }
}

/// `E` of packed `[N, L, 3E]` projections.
fn packed_embed<E: Float>(x: &Tensor<E>, heads: usize, what: &str) -> usize {
    let s = x.shape();
    assert!(
        s.len() == 3 && heads > 0 && s[2].is_multiple_of(3 * heads),
        "{what}: packed projections {s:?} must be [N, L, 3E] with E divisible by {heads} heads"
    );
    s[2] / 3
}

/// Where a gradient `[N, T, E]` is written: base pointer, batch stride and row stride (the
/// column stride is 1).
#[derive(Clone, Copy)]
struct Out<E> {
    ptr: SendPtr<E>,
    s0: usize,
    s1: usize,
}

/// The backward of the per-head attention, writing the gradients of q, k and v into `outs`.
///
/// # Safety
/// Each of `outs` must address a writable `[N, T, E]` layout (T = L for q, S for k and v) that
/// does not overlap the others' elements nor the inputs; every element of it is written.
unsafe fn attention_backward<E: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    probs: &Tensor<E>,
    g: &Tensor<E>,
    heads: usize,
    outs: [Out<E>; 3],
) {
    let (n, l, e) = (q.shape[0], q.shape[1], q.shape[2]);
    let s = k.shape[1];
    let d = e / heads;
    assert!(
        probs.shape() == [n, heads, l, s] && g.shape() == q.shape(),
        "multi_head_attention_backward: probabilities {:?} and gradient {:?} must be {:?} and {:?}",
        probs.shape(),
        g.shape(),
        [n, heads, l, s],
        q.shape()
    );
    let probs = probs.contiguous();
    let scale = E::from_f64(1.0 / (d as f64).sqrt());
    let (qv, kv, vv, gv) = (View::of(q), View::of(k), View::of(v), View::of(g));
    let probs = probs.reshape(&[n * heads, l, s]);
    let pv = View::of(&probs);
    let [oq, ok, ov] = outs;
    for_each_head(n, heads, 4 * n * heads * l * s * d, |b, h| {
        // Name the whole structs so that the closure captures them (they are Sync), not their
        // raw-pointer fields.
        let (oq, ok, ov, pv) = (oq, ok, ov, &pv);
        // (scratch: goes back to the pool when dropped)
        let mut ds = crate::alloc::Buffer::new(crate::alloc::take_filled(l * s, E::zero()));
        let at = |o: Out<E>| {
            // SAFETY: (b, 0, h·d) is inside the output layout.
            unsafe { o.ptr.0.add(b * o.s0 + h * d) }
        };
        // SAFETY: `probs` is contiguous and alive for the call; head (b, h) reads its own
        // L x S block of it and writes only columns h·D..(h+1)·D of batch b of each output,
        // every element of which is written.
        unsafe {
            let p = pv.ptr.offset((b * heads + h) as isize * pv.s0);
            let (gh, vh, kh, qh) = (gv.head(b, h, d), vv.head(b, h, d), kv.head(b, h, d), qv.head(b, h, d));
            // dV_h = Pᵀ G_h
            product(s, l, d, E::one(), (p, 1, s as isize), gh, at(ov), ov.s1 as isize);
            // dP = G_h V_hᵀ
            product(l, d, s, E::one(), gh, (vh.0, vh.2, vh.1), ds.as_mut_ptr(), s as isize);
            // dS = P ⊙ (dP − rowsum(P ⊙ dP)), scaled in the products below
            for i in 0..l {
                let pr = std::slice::from_raw_parts(p.add(i * s), s);
                let dr = &mut ds[i * s..(i + 1) * s];
                let dot = dot8(pr, dr);
                for (x, &p) in dr.iter_mut().zip(pr) {
                    *x = p * (*x - dot);
                }
            }
            // dQ_h = scale · dS K_h, dK_h = scale · dSᵀ Q_h
            product(l, s, d, scale, (ds.as_ptr(), s as isize, 1), kh, at(oq), oq.s1 as isize);
            product(s, l, d, scale, (ds.as_ptr(), 1, s as isize), qh, at(ok), ok.s1 as isize);
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::{Rng, Tensor};
    use proptest::prelude::*;

    /// The same attention from kiln-tensor's general ops: heads split by reshape/permute.
    fn composed(q: &Tensor<f64>, k: &Tensor<f64>, v: &Tensor<f64>, heads: usize) -> (Tensor<f64>, Tensor<f64>) {
        let (n, l, e) = (q.shape()[0], q.shape()[1], q.shape()[2]);
        let s = k.shape()[1];
        let d = e / heads;
        let split = |x: &Tensor<f64>, t: usize| x.reshape(&[n, t, heads, d]).permute(&[0, 2, 1, 3]);
        let scores = split(q, l).matmul(&split(k, s).transpose(-2, -1)).mul_scalar(1.0 / (d as f64).sqrt());
        let p = scores.softmax(-1);
        let out = p.matmul(&split(v, s)).permute(&[0, 2, 1, 3]).reshape(&[n, l, e]);
        (out, p)
    }

    fn close(a: &Tensor<f64>, b: &Tensor<f64>) -> bool {
        a.shape() == b.shape() && a.to_vec().iter().zip(b.to_vec()).all(|(x, y)| (x - y).abs() < 1e-10)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn forward_matches_the_composition(n in 1usize..3, l in 1usize..6, s in 1usize..6, heads in 1usize..4,
                                           d in 1usize..4, transposed: bool, threads in 1usize..3, seed in 0u64..500) {
            crate::set_num_threads(threads);
            let mut rng = Rng::new(seed);
            let e = heads * d;
            let q = Tensor::<f64>::randn(&[n, l, e], &mut rng);
            // a non-contiguous key: a transposed view of [S, N, E]
            let k = if transposed { Tensor::<f64>::randn(&[s, n, e], &mut rng).transpose(0, 1) } else { Tensor::randn(&[n, s, e], &mut rng) };
            let v = Tensor::<f64>::randn(&[n, s, e], &mut rng);
            let (out, p) = q.multi_head_attention(&k, &v, heads);
            let (want_out, want_p) = composed(&q, &k, &v, heads);
            prop_assert!(close(&out, &want_out));
            prop_assert!(close(&p, &want_p));
        }
    }

    #[test]
    fn parallel_heads_agree_with_one_thread() {
        // big enough for the per-head split at 2 threads
        let mut rng = Rng::new(7);
        let (q, k, v) = (
            Tensor::<f32>::randn(&[4, 64, 64], &mut rng),
            Tensor::randn(&[4, 64, 64], &mut rng),
            Tensor::randn(&[4, 64, 64], &mut rng),
        );
        let g = Tensor::<f32>::randn(&[4, 64, 64], &mut rng);
        let run = |threads| {
            crate::set_num_threads(threads);
            crate::parallel::with_gemm_threshold(0, || {
                let (o, p) = q.multi_head_attention(&k, &v, 4);
                let (a, b, c) = q.multi_head_attention_backward(&k, &v, &p, &g, 4);
                [o, p, a, b, c].map(|t| t.to_vec())
            })
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn packed_self_attention_matches_the_three_blocks() {
        let mut rng = Rng::new(11);
        let (n, l, e, heads) = (2, 5, 6, 3);
        let qkv = Tensor::<f64>::randn(&[n, l, 3 * e], &mut rng);
        let g = Tensor::<f64>::randn(&[n, l, e], &mut rng);
        let (q, k, v) = (qkv.narrow(2, 0, e), qkv.narrow(2, e, e), qkv.narrow(2, 2 * e, e));
        let (out, p) = qkv.packed_self_attention(heads);
        let (want_out, want_p) = q.multi_head_attention(&k, &v, heads);
        assert!(close(&out, &want_out) && close(&p, &want_p));
        let d = qkv.packed_self_attention_backward(&p, &g, heads);
        let (dq, dk, dv) = q.multi_head_attention_backward(&k, &v, &p, &g, heads);
        assert!(close(&d, &Tensor::cat(&[dq, dk, dv], 2)));
    }

    #[test]
    #[should_panic(expected = "multi_head_attention: embedding size 6 is not divisible by 4 heads")]
    fn heads_must_divide_the_embedding() {
        let x = Tensor::<f64>::zeros(&[1, 2, 6]);
        let _ = x.multi_head_attention(&x, &x, 4);
    }
}
