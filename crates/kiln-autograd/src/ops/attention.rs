//! Multi-head attention core as one op: `softmax(Q_h K_hᵀ / √D) V_h` for every head, heads
//! concatenated (what `MultiheadAttention` computes between its projections when there is no
//! mask and no dropout).
//!
//! The composition (reshape/permute into heads, `mul_scalar`, `matmul`, `softmax`, `matmul`,
//! permute/reshape back) records seven nodes, copies the head-merged output forward and the three
//! input gradients backward, and makes separate passes over the `[N, H, L, S]` scores; this op
//! runs per head with kiln-tensor's kernel ([`kiln_tensor::Tensor::multi_head_attention`] and
//! its backward). That kernel backward is the op's one backward; the composition
//! (`attention_composed`) is its test oracle and, differentiated by the engine, its path for
//! higher-order gradients (see `fused_op` in `ops`).

use kiln_tensor::{Float, Tensor};
use smallvec::smallvec;

use super::fused_op;
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

/// [`Var::multi_head_attention`] composed of primitive ops.
fn attention_composed<E: Float>(q: &Var<E>, k: &Var<E>, v: &Var<E>, heads: usize) -> Var<E> {
    let scale = E::from_f64(1.0 / (q.size(2) as f64 / heads as f64).sqrt());
    let s = split_heads(q, heads).matmul(&split_heads(k, heads).transpose(-2, -1)).mul_scalar(scale);
    merge_heads(&s.softmax(-1).matmul(&split_heads(v, heads)))
}

/// [`Var::packed_self_attention`] composed of primitive ops: attention on the three column
/// blocks of `[N, L, 3E]`.
fn packed_composed<E: Float>(x: &Var<E>, heads: usize) -> Var<E> {
    let e = x.size(2) / 3;
    attention_composed(&x.narrow(2, 0, e), &x.narrow(2, e, e), &x.narrow(2, 2 * e, e), heads)
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
        let _trace = crate::trace::attrs(|| vec![("heads", crate::trace::int(heads as i64))]);
        let (out, probs) =
            self.with_value(|q| k.with_value(|kt| v.with_value(|vt| q.multi_head_attention(kt, vt, heads))));
        fused_op(
            "multi_head_attention",
            out,
            smallvec![self.clone(), k.clone(), v.clone()],
            move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                let (q, k, v) = (&i[0], &i[1], &i[2]);
                let (dq, dk, dv): (Tensor<E>, Tensor<E>, Tensor<E>) = q.with_value(|qt| {
                    k.with_value(|kt| {
                        v.with_value(|vt| {
                            g.with_value(|gt| qt.multi_head_attention_backward(kt, vt, &probs, gt, heads))
                        })
                    })
                });
                smallvec![Some(Var::constant(dq)), Some(Var::constant(dk)), Some(Var::constant(dv))]
            },
            move |x: &[Var<E>]| attention_composed(&x[0], &x[1], &x[2], heads),
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
        let _trace = crate::trace::attrs(|| vec![("heads", crate::trace::int(heads as i64))]);
        let (out, probs) = self.with_value(|x| x.packed_self_attention(heads));
        fused_op(
            "packed_self_attention",
            out,
            smallvec![self.clone()],
            move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                let d = i[0].with_value(|xt| g.with_value(|gt| xt.packed_self_attention_backward(&probs, gt, heads)));
                smallvec![Some(Var::constant(d))]
            },
            move |x: &[Var<E>]| packed_composed(&x[0], heads),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{attention_composed as oracle, packed_composed};
    use crate::testing::{assert_same_second_order, check, check2, noncontiguous, values};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

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
            let w = Var::constant(q.map(|v| v * v - 0.5));
            let (a, b) = (Var::param(x.clone()), Var::param(x.clone()));
            let ya = a.packed_self_attention(h);
            let yb = packed_composed(&b, h);
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

    #[test]
    fn second_order_equals_the_composition_with_shared_inputs() {
        // q, k and v from one tensor (k through an op): the recorded backward must give each
        // slot its own partial gradient and leave the path from x to k to the engine
        let mut rng = kiln_tensor::Rng::new(3);
        let x = Tensor::<f64>::uniform(&[2, 3, 4], -1.0, 1.0, &mut rng);
        let y = Tensor::<f64>::uniform(&[2, 2, 4], -1.0, 1.0, &mut rng);
        let inputs = [x, y];
        assert_same_second_order(
            |v| v[0].multi_head_attention(&v[0].mul_scalar(0.5), &v[0], 2),
            |v| oracle(&v[0], &v[0].mul_scalar(0.5), &v[0], 2),
            &inputs,
            1e-12,
        );
        assert_same_second_order(
            |v| v[0].multi_head_attention(&v[1], &v[1].tanh(), 1),
            |v| oracle(&v[0], &v[1], &v[1].tanh(), 1),
            &inputs,
            1e-12,
        );
        let packed = [Tensor::<f64>::uniform(&[1, 3, 12], -1.0, 1.0, &mut rng)];
        assert_same_second_order(|v| v[0].packed_self_attention(2), |v| packed_composed(&v[0], 2), &packed, 1e-12);
    }
}
