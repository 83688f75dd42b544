//! `lstm_sequence`: one LSTM layer and direction over a whole sequence as one op, forward and
//! backward through time by kiln-tensor's fused kernels ([`lstm_forward`],
//! [`lstm_backward`] in `kiln_tensor::kernels::lstm`).
//!
//! The same recurrence composed from `Var` ops records about a dozen nodes per step; this op
//! records one node for the whole sequence, keeps its intermediate values in buffers allocated
//! once, and does one recurrent GEMM per step each way.
//!
//! The engine gives each node one output, so the op's result packs the outputs and both final
//! states: `[T + 2, B, H]` = outputs `h_1..h_T` (rows `0..T`), then `h_n`, then `c_n`.
//!
//! The kernel's backward through time is the op's one backward. The recurrence composed of
//! primitive ops (`lstm_composed`) is its test oracle and its path for higher-order gradients:
//! a backward with `create_graph` differentiates the composition instead (see `fused_op` in
//! `ops`), so double backward through the fused LSTM works, at the composed path's cost.

use kiln_tensor::kernels::lstm::{lstm_backward, lstm_forward};
use kiln_tensor::{Float, Tensor};
use smallvec::smallvec;

use super::fused_op;
use crate::mode::is_grad_enabled;
use crate::var::{Grads, Var};

/// [`Var::lstm_sequence`] composed of primitive ops, step by step: the same packed
/// `[T + 2, B, H]` result, padded steps masked with `where_`.
fn lstm_composed<E: Float>(
    xp: &Var<E>,
    w_hh: &Var<E>,
    h0: &Var<E>,
    c0: &Var<E>,
    lengths: Option<&[usize]>,
    reverse: bool,
    rec_mask: Option<&Tensor<E>>,
) -> Var<E> {
    let s = xp.shape();
    let (t_len, batch, hs) = (s[0], s[1], s[2] / 4);
    let zeros = Var::constant(Tensor::zeros(&[batch, hs]));
    let (mut h, mut c) = (h0.clone(), c0.clone());
    let mut outs = vec![zeros.clone(); t_len];
    let w_t = w_hh.transpose(0, 1);
    let mask = rec_mask.map(|m| Var::constant(m.clone()));
    let order: Vec<usize> = if reverse { (0..t_len).rev().collect() } else { (0..t_len).collect() };
    for t in order {
        let hr = mask.as_ref().map_or_else(|| h.clone(), |m| h.mul(m));
        let a = xp.select(0, t).add(&hr.matmul(&w_t));
        let gate = |k: usize| a.narrow(1, k * hs, hs);
        let (i, f, g, o) = (gate(0).sigmoid(), gate(1).sigmoid(), gate(2).tanh(), gate(3).sigmoid());
        let cn = f.mul(&c).add(&i.mul(&g));
        let hn = o.mul(&cn.tanh());
        let active: Vec<E> =
            (0..batch).map(|b| if lengths.is_none_or(|l| t < l[b]) { E::one() } else { E::zero() }).collect();
        let am = Tensor::from_vec(active, &[batch, 1]);
        outs[t] = hn.where_(&am, &zeros);
        h = hn.where_(&am, &h);
        c = cn.where_(&am, &c);
    }
    outs.push(h);
    outs.push(c);
    Var::stack(&outs, 0)
}

impl<E: Float> Var<E> {
    /// Runs one LSTM layer and direction over a whole sequence, `self` being the input
    /// projection `xp = x·W_ihᵀ + b_ih + b_hh` of every step (one matrix product outside).
    /// Per step, with gate blocks in PyTorch's order i, f, g, o:
    ///
    /// ```text
    /// a_t = xp_t + (h_{t-1} ⊙ m)·W_hhᵀ
    /// i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
    /// c_t = f ⊙ c_{t-1} + i ⊙ g;  h_t = o ⊙ tanh(c_t)
    /// ```
    ///
    /// - `self` (`xp`): `[T, B, 4H]`; `w_hh`: `[4H, H]`; `h0`, `c0`: `[B, H]`;
    /// - `lengths`: per sequence, each `<= T`: sequence `b` is steps `0..lengths[b]`, its state
    ///   is carried over the padded steps, where its output is 0 and `xp` gets no gradient
    ///   (PyTorch's packed sequences); `None`: every sequence has `T` steps;
    /// - `reverse`: run from each sequence's last step back to step 0;
    /// - `rec_mask`: `[B, H]` constant, Keras' recurrent dropout: multiplies `h_{t-1}` in the
    ///   recurrent product only.
    ///
    /// Returns `[T + 2, B, H]`: `narrow(0, 0, T)` is the output, `select(0, T)` is `h_n`,
    /// `select(0, T + 1)` is `c_n`.
    ///
    /// Gradients flow to `xp`, `w_hh`, `h0` and `c0`, by the fused backward through time; a
    /// backward with `create_graph` differentiates the same recurrence composed of primitive
    /// ops instead, so that higher-order gradients work (at that path's speed).
    ///
    /// **Panics** if a shape does not match (naming it) or a length exceeds `T`.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// // T = 3, B = 2, H = 1: a large input-gate/g pre-activation and a closed forget gate
    /// let xp = Var::param(Tensor::from_vec([0.0f64, -50.0, 50.0, 50.0].repeat(6), &[3, 2, 4]));
    /// let w_hh = Var::param(Tensor::zeros(&[4, 1]));
    /// let zeros = Var::constant(Tensor::zeros(&[2, 1]));
    /// let y = xp.lstm_sequence(&w_hh, &zeros, &zeros, Some(&[3, 1]), false, None);
    /// assert_eq!(y.shape().as_slice(), &[5, 2, 1]);
    /// let c_n = y.select(0, 4).value().to_vec(); // i = 1/2, g = 1, f = 0: c = 1/2
    /// assert!((c_n[0] - 0.5).abs() < 1e-12 && (c_n[1] - 0.5).abs() < 1e-12);
    /// assert_eq!(y.value().select(0, 2).to_vec()[1], 0.0); // past sequence 1's end
    /// y.sum_all().backward();
    /// assert_eq!(xp.grad().unwrap().select(0, 2).select(0, 1).to_vec(), vec![0.0; 4]);
    /// ```
    #[must_use]
    pub fn lstm_sequence(
        &self,
        w_hh: &Var<E>,
        h0: &Var<E>,
        c0: &Var<E>,
        lengths: Option<&[usize]>,
        reverse: bool,
        rec_mask: Option<&Tensor<E>>,
    ) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            use crate::trace::{int, ints};
            let mut attrs =
                vec![("reverse", int(i64::from(reverse))), ("rec_mask", int(i64::from(rec_mask.is_some())))];
            if let Some(l) = lengths {
                attrs.push(("lengths", ints(l)));
            }
            attrs
        });
        let inputs = [self, w_hh, h0, c0];
        let record = is_grad_enabled() && inputs.iter().any(|v| v.requires_grad());
        let (value, tape) = self.with_value(|x| {
            w_hh.with_value(|w| {
                h0.with_value(|h| c0.with_value(|c| lstm_forward(x, w, h, c, lengths, reverse, rec_mask, record)))
            })
        });
        let Some(tape) = tape else { return Var::constant(value) };
        let (lengths, rec_mask) = (lengths.map(<[usize]>::to_vec), rec_mask.cloned());
        fused_op(
            "lstm_sequence",
            value,
            smallvec![self.clone(), w_hh.clone(), h0.clone(), c0.clone()],
            // ∂ through the whole recurrence by the fused BPTT kernel (see kiln_tensor::kernels::lstm)
            move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                let d = i[1].with_value(|w| g.with_value(|gv| lstm_backward(&tape, w, gv)));
                let keep = |k: usize, t: Tensor<E>| i[k].requires_grad().then(|| Var::constant(t));
                smallvec![keep(0, d.xp), keep(1, d.w_hh), keep(2, d.h0), keep(3, d.c0)]
            },
            move |x: &[Var<E>]| {
                lstm_composed(&x[0], &x[1], &x[2], &x[3], lengths.as_deref(), reverse, rec_mask.as_ref())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::lstm_composed as composed;
    use crate::engine::grad;
    use crate::testing::{assert_same_second_order, check, check2, noncontiguous};
    use crate::var::Var;
    use kiln_tensor::{Rng, Tensor};
    use proptest::prelude::*;

    fn rand(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
        Tensor::uniform(shape, -1.5, 1.5, rng)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn gradcheck_and_composition(
            t_len in 1usize..4, batch in 1usize..4, hs in 1usize..3, seed in 0u64..1000,
            use_len: bool, reverse: bool, use_mask: bool, nc: bool,
        ) {
            let mut rng = Rng::new(seed);
            let xp = rand(&[t_len, batch, 4 * hs], &mut rng);
            let xp = if nc { noncontiguous(&xp) } else { xp };
            let inputs = [xp, rand(&[4 * hs, hs], &mut rng), rand(&[batch, hs], &mut rng), rand(&[batch, hs], &mut rng)];
            let lengths: Option<Vec<usize>> = use_len.then(|| (0..batch).map(|_| rng.below(t_len as u64 + 1) as usize).collect());
            let mask = use_mask.then(|| Tensor::bernoulli(&[batch, hs], 0.5, &mut rng).mul_scalar(2.0));
            let (l, m) = (lengths.as_deref(), mask.as_ref());
            let fused = |v: &[Var<f64>]| v[0].lstm_sequence(&v[1], &v[2], &v[3], l, reverse, m);
            let r = check(fused, &inputs);
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            // values and every gradient equal the composition's
            let vs: Vec<Var<f64>> = inputs.iter().map(|t| Var::param(t.clone())).collect();
            let u = Var::constant(rand(&[t_len + 2, batch, hs], &mut rng));
            let (a, b) = (fused(&vs), composed(&vs[0], &vs[1], &vs[2], &vs[3], l, reverse, m));
            for (x, y) in a.value().to_vec().iter().zip(b.value().to_vec()) {
                prop_assert!((x - y).abs() < 1e-12);
            }
            let ga = grad(&[a.mul(&u).sum_all()], &vs, None, false);
            let gb = grad(&[b.mul(&u).sum_all()], &vs, None, false);
            for (k, (x, y)) in ga.iter().zip(&gb).enumerate() {
                let (x, y) = (x.as_ref().unwrap().value().to_vec(), y.as_ref().unwrap().value().to_vec());
                for (p, q) in x.iter().zip(&y) {
                    prop_assert!((p - q).abs() < 1e-12, "input {k}: {p} vs {q}");
                }
            }
        }
    }

    #[test]
    fn records_nothing_without_grad() {
        let xp = Var::param(Tensor::<f64>::zeros(&[2, 1, 4]));
        let w = Var::param(Tensor::zeros(&[4, 1]));
        let z = Var::constant(Tensor::zeros(&[1, 1]));
        let y = crate::no_grad(|| xp.lstm_sequence(&w, &z, &z, None, false, None));
        assert!(!y.requires_grad());
        assert!(xp.lstm_sequence(&w, &z, &z, None, false, None).requires_grad());
    }

    #[test]
    fn double_backward_equals_the_composition() {
        // second-order gradients through the fused op (whose recorded backward differentiates
        // the composition) and through the composition itself, with padding, reverse order and
        // a recurrent mask; and against finite differences of the first-order gradients
        let (t_len, batch, hs) = (3, 2, 2);
        let mut rng = Rng::new(9);
        let inputs = [
            rand(&[t_len, batch, 4 * hs], &mut rng),
            rand(&[4 * hs, hs], &mut rng),
            rand(&[batch, hs], &mut rng),
            rand(&[batch, hs], &mut rng),
        ];
        let mask = Tensor::bernoulli(&[batch, hs], 0.5, &mut rng).mul_scalar(2.0);
        for (lengths, reverse, m) in [(None, false, None), (Some(vec![3, 1]), true, Some(&mask))] {
            let l = lengths.as_deref();
            let fused = |v: &[Var<f64>]| v[0].lstm_sequence(&v[1], &v[2], &v[3], l, reverse, m);
            let comp = |v: &[Var<f64>]| composed(&v[0], &v[1], &v[2], &v[3], l, reverse, m);
            assert_same_second_order(fused, comp, &inputs, 1e-12);
        }
        let small =
            [rand(&[2, 1, 4], &mut rng), rand(&[4, 1], &mut rng), rand(&[1, 1], &mut rng), rand(&[1, 1], &mut rng)];
        let r = check2(|v| v[0].lstm_sequence(&v[1], &v[2], &v[3], None, false, None), &small);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
