//! Multi-head attention core as one op: `softmax(Q_h K_hᵀ / √D) V_h` for every head, heads
//! concatenated (what `MultiheadAttention` computes between its projections when there is no
//! mask and no dropout).
//!
//! The composition (reshape/permute into heads, `mul_scalar`, `matmul`, `softmax`, `matmul`,
//! permute/reshape back) records seven nodes, copies the head-merged output forward and the three
//! input gradients backward, and makes separate passes over the `[N, H, L, S]` scores; this op
//! runs per head with kiln-tensor's kernel ([`kiln_tensor::Tensor::multi_head_attention`] and
//! its backward). A backward that is itself recorded (`create_graph`) is written with `Var` ops,
//! so higher orders work; the composition is the test oracle.

use kiln_tensor::{Float, Tensor};
use smallvec::smallvec;

use super::OpFn;
use crate::mode::is_grad_enabled;
use crate::var::{Grads, Var};

/// `[N, T, E]` -> `[N, H, T, D]`, a view.
fn split_heads<E: Float>(x: &Var<E>, heads: usize) -> Var<E> {
    let (n, t, e) = (x.size(0), x.size(1), x.size(2));
    x.reshape(&[n, t, heads, e / heads]).permute(&[0, 2, 1, 3])
}

/// `[N, H, T, D]` -> `[N, T, E]`.
fn merge_heads<E: Float>(x: &Var<E>) -> Var<E> {
    let (n, h, t, d) = (x.size(0), x.size(1), x.size(2), x.size(3));
    x.permute(&[0, 2, 1, 3]).reshape(&[n, t, h * d])
}

impl<E: Float> Var<E> {
    /// Multi-head scaled dot-product attention without mask or dropout: `self` is the projected
    /// query `[N, L, E]`, `k` and `v` the projected key and value `[N, S, E]`, head `h` is
    /// columns `h·D..(h+1)·D` (`D = E / heads`); returns
    /// `concat_h softmax(Q_h K_hᵀ / √D) V_h`, `[N, L, E]`.
    ///
    /// **Panics** if the shapes are not `[N, L, E]`, `[N, S, E]`, `[N, S, E]` or `E` is not a
    /// multiple of `heads`.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let q = Var::param(Tensor::<f64>::zeros(&[1, 2, 4]));
    /// let kv = Var::param(Tensor::from_vec((0..8).map(f64::from).collect(), &[1, 2, 4]));
    /// let y = q.multi_head_attention(&kv, &kv, 2);
    /// assert_eq!(y.value().to_vec()[..4], [2.0, 3.0, 4.0, 5.0]); // the mean of the values
    /// y.sum_all().backward();
    /// assert_eq!(kv.grad().unwrap().shape(), &[1, 2, 4]);
    /// ```
    // with S = Q_h K_hᵀ / √D, P = softmax(S), O_h = P V_h and G_h the head's output gradient:
    // dV_h = Pᵀ G_h, dP = G_h V_hᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ_h = dS K_h / √D,
    // dK_h = dSᵀ Q_h / √D
    #[must_use]
    pub fn multi_head_attention(&self, k: &Var<E>, v: &Var<E>, heads: usize) -> Var<E> {
        let (out, probs) =
            self.with_value(|q| k.with_value(|kt| v.with_value(|vt| q.multi_head_attention(kt, vt, heads))));
        Var::from_op(
            out,
            smallvec![self.clone(), k.clone(), v.clone()],
            OpFn {
                name: "multi_head_attention",
                f: move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    let (q, k, v) = (&i[0], &i[1], &i[2]);
                    if is_grad_enabled() {
                        // recorded: the same formulas in Var ops, differentiable again
                        let [dq, dk, dv] = recorded_backward(q, k, v, g, heads);
                        smallvec![Some(dq), Some(dk), Some(dv)]
                    } else {
                        let (dq, dk, dv): (Tensor<E>, Tensor<E>, Tensor<E>) = q.with_value(|qt| {
                            k.with_value(|kt| {
                                v.with_value(|vt| {
                                    g.with_value(|gt| qt.multi_head_attention_backward(kt, vt, &probs, gt, heads))
                                })
                            })
                        });
                        smallvec![Some(Var::constant(dq)), Some(Var::constant(dk)), Some(Var::constant(dv))]
                    }
                },
            },
        )
    }

    /// Self-attention from packed projections: `self` is `[N, L, 3E]`, the query, key and value
    /// projections side by side (one product with PyTorch's packed `in_proj_weight`); the same
    /// as [`multi_head_attention`](Var::multi_head_attention) on its three column blocks, with
    /// the gradient written as one `[N, L, 3E]` tensor (no slicing backward).
    ///
    /// **Panics** if `self` is not 3-D with a last dimension divisible by `3 * heads`.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let qkv = Var::param(Tensor::<f64>::zeros(&[1, 2, 12]));
    /// let y = qkv.packed_self_attention(2);
    /// assert_eq!(y.shape().as_slice(), &[1, 2, 4]);
    /// y.sum_all().backward();
    /// assert_eq!(qkv.grad().unwrap().shape(), &[1, 2, 12]);
    /// ```
    #[must_use]
    pub fn packed_self_attention(&self, heads: usize) -> Var<E> {
        let (out, probs) = self.with_value(|x| x.packed_self_attention(heads));
        Var::from_op(
            out,
            smallvec![self.clone()],
            OpFn {
                name: "packed_self_attention",
                f: move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    let x = &i[0];
                    let d = if is_grad_enabled() {
                        // recorded: the same formulas in Var ops on the three column blocks
                        let e = x.size(2) / 3;
                        let (q, k, v) = (x.narrow(2, 0, e), x.narrow(2, e, e), x.narrow(2, 2 * e, e));
                        Var::cat(&recorded_backward(&q, &k, &v, g, heads), 2)
                    } else {
                        Var::constant(
                            x.with_value(|xt| g.with_value(|gt| xt.packed_self_attention_backward(&probs, gt, heads))),
                        )
                    };
                    smallvec![Some(d)]
                },
            },
        )
    }
}

/// The gradients of q, k and v in `Var` ops (differentiable again), for a recorded backward.
fn recorded_backward<E: Float>(q: &Var<E>, k: &Var<E>, v: &Var<E>, g: &Var<E>, heads: usize) -> [Var<E>; 3] {
    let (qh, kh, vh, gh) = (split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), split_heads(g, heads));
    let scale = E::from_f64(1.0 / (q.size(2) as f64 / heads as f64).sqrt());
    let p = qh.matmul(&kh.transpose(-2, -1)).mul_scalar(scale).softmax(-1);
    let dv = p.transpose(-2, -1).matmul(&gh);
    let dp = gh.matmul(&vh.transpose(-2, -1));
    let ds = p.mul(&dp.sub(&p.mul(&dp).sum(&[-1], true))).mul_scalar(scale);
    let dq = ds.matmul(&kh);
    let dk = ds.transpose(-2, -1).matmul(&qh);
    [merge_heads(&dq), merge_heads(&dk), merge_heads(&dv)]
}

#[cfg(test)]
mod tests {
    use super::{merge_heads, split_heads};
    use crate::testing::{check, check2, noncontiguous, values};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    /// The composition the fused op must agree with.
    fn oracle(q: &Var<f64>, k: &Var<f64>, v: &Var<f64>, heads: usize) -> Var<f64> {
        let d = q.size(2) / heads;
        let s =
            split_heads(q, heads).matmul(&split_heads(k, heads).transpose(-2, -1)).mul_scalar(1.0 / (d as f64).sqrt());
        merge_heads(&s.softmax(-1).matmul(&split_heads(v, heads)))
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    /// (heads, query, key, value) with N, L, S in 1..=3, D in 1..=2 and heads in 1..=3.
    fn inputs() -> impl Strategy<Value = (usize, Tensor<f64>, Tensor<f64>, Tensor<f64>)> {
        (1usize..=2, 1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3).prop_flat_map(|(n, l, s, d, h)| {
            let e = h * d;
            (Just(h), values(vec![n, l, e]), values(vec![n, s, e]), values(vec![n, s, e]))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn gradcheck_packed_self_attention((h, q, _, _) in inputs(), nc: bool) {
            // [N, L, 3E]: three blocks of the query's size side by side
            let x = Tensor::cat(&[q.clone(), q.map(|v| 0.5 - v), q.map(|v| v * v - 1.0)], 2);
            let x = if nc { noncontiguous(&x) } else { x };
            let inp = std::slice::from_ref(&x);
            let f = |v: &[Var<f64>]| v[0].packed_self_attention(h);
            let r = check(f, inp);
            prop_assert!(r.is_ok(), "heads {h}, x {:?}: {}", x.shape(), r.unwrap_err());
            let r = check2(f, inp);
            prop_assert!(r.is_ok(), "(second order) heads {h}, x {:?}: {}", x.shape(), r.unwrap_err());
            // against the composition on the three column blocks
            let e = x.shape()[2] / 3;
            let w = Var::constant(q.map(|v| v * v - 0.5));
            let (a, b) = (Var::param(x.clone()), Var::param(x.clone()));
            let ya = a.packed_self_attention(h);
            let yb = oracle(&b.narrow(2, 0, e), &b.narrow(2, e, e), &b.narrow(2, 2 * e, e), h);
            prop_assert!(close(&ya.value().to_vec(), &yb.value().to_vec(), 1e-12));
            ya.mul(&w).sum_all().backward();
            yb.mul(&w).sum_all().backward();
            prop_assert!(close(&a.grad().unwrap().to_vec(), &b.grad().unwrap().to_vec(), 1e-12));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gradcheck_multi_head_attention((h, q, k, v) in inputs(), nc: bool) {
            let k = if nc { noncontiguous(&k) } else { k };
            let inp = [q.clone(), k.clone(), v.clone()];
            let f = |x: &[Var<f64>]| x[0].multi_head_attention(&x[1], &x[2], h);
            let r = check(f, &inp);
            prop_assert!(r.is_ok(), "heads {h}, q {:?}, k {:?}: {}", q.shape(), k.shape(), r.unwrap_err());
            let r = check2(f, &inp);
            prop_assert!(r.is_ok(), "(second order) heads {h}, q {:?}, k {:?}: {}", q.shape(), k.shape(), r.unwrap_err());
            // values and first-order gradients (the fused backward) against the composition
            let w = Var::constant(q.map(|x| x * x - 0.5));
            let a: Vec<Var<f64>> = inp.iter().map(|t| Var::param(t.clone())).collect();
            let b: Vec<Var<f64>> = inp.iter().map(|t| Var::param(t.clone())).collect();
            let (ya, yb) = (a[0].multi_head_attention(&a[1], &a[2], h), oracle(&b[0], &b[1], &b[2], h));
            prop_assert!(close(&ya.value().to_vec(), &yb.value().to_vec(), 1e-12));
            ya.mul(&w).sum_all().backward();
            yb.mul(&w).sum_all().backward();
            for (x, y) in a.iter().zip(&b) {
                prop_assert!(close(&x.grad().unwrap().to_vec(), &y.grad().unwrap().to_vec(), 1e-12));
            }
        }
    }
}
