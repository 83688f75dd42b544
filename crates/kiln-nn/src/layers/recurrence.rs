//! One step of each recurrence ([`CellKind`]: Elman tanh/relu, LSTM, GRU, with PyTorch's gate
//! orders), the math that the recurrent stacks ([`Recurrent`](super::recurrent::Recurrent))
//! and the single-step cells ([`RecurrentCell`](super::recurrent_cell::RecurrentCell)) share,
//! and the cheap cutting of a `Var` into steps and gates that they use.

use std::sync::{Arc, Mutex};

use kiln_autograd::ops::OpFn;
use kiln_autograd::{is_grad_enabled, Grads, Inputs, Var};
use kiln_tensor::{Float, Tensor};

/// Which recurrence a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`.
    RnnTanh,
    /// `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`.
    RnnRelu,
    /// Gates i, f, g, o.
    Lstm,
    /// Gates r, z, n.
    Gru,
}

impl CellKind {
    /// How many `hidden_size` row blocks the weights stack.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// The layer's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }
}

// ------------------------------------------------------------------------- cutting a Var

/// What the pieces of one [`pieces`] call hand to their hub during a backward pass.
struct Gathered<E: Float> {
    grads: Vec<Option<Var<E>>>,
    pending: bool,
}

/// Cuts `v` along `dim` into `n` pieces (`select` when `squeeze`, else `narrow` of equal
/// `len`), recorded so that their backward costs one `stack`/`cat` instead of one full-size
/// scatter per piece.
///
/// Every piece hangs off one identity "hub" node on `v`. A piece's backward parks its gradient
/// with the hub and returns nothing (the first one of a pass returns zeros of `v`'s shape, so
/// that the engine visits the hub); the hub, which the engine processes after all of its
/// consumers, joins the parked gradients (zeros for pieces that got none) into `v`'s gradient.
/// Cutting a `[T, B, 4H]` projection into `T` steps with `select` would otherwise cost
/// O(T² B H) in the backward. The join is recorded with `Var` ops, so higher-order gradients
/// flow as usual.
// d piece_k(v)/dv = the k-th block; the hub joins the blocks: stack (select) or cat (narrow)
fn pieces<E: Float>(v: &Var<E>, dim: usize, n: usize, len: usize, squeeze: bool) -> Vec<Var<E>> {
    let cut = move |t: &Tensor<E>, k: usize| {
        if squeeze {
            t.select(dim as isize, k)
        } else {
            t.narrow(dim as isize, k * len, len)
        }
    };
    if !is_grad_enabled() || !v.requires_grad() {
        return v.with_value(|t| (0..n).map(|k| Var::constant(cut(t, k))).collect());
    }
    let full: Vec<usize> = v.shape().to_vec();
    let mut piece_shape = full.clone();
    if squeeze {
        piece_shape.remove(dim);
    } else {
        piece_shape[dim] = len;
    }
    let state = Arc::new(Mutex::new(Gathered { grads: vec![None; n], pending: false }));
    let st = state.clone();
    let hub = Var::from_op(
        v.value(),
        std::iter::once(v.clone()).collect::<Inputs<E>>(),
        OpFn {
            name: "rnn_pieces_join",
            f: move |_: &Var<E>, _: &[Var<E>], _: &Var<E>| -> Grads<E> {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                s.pending = false;
                let gs: Vec<Var<E>> = s
                    .grads
                    .iter_mut()
                    .map(|g| g.take().unwrap_or_else(|| Var::constant(Tensor::zeros(&piece_shape))))
                    .collect();
                let joined = if squeeze { Var::stack(&gs, dim as isize) } else { Var::cat(&gs, dim as isize) };
                std::iter::once(Some(joined)).collect()
            },
        },
    );
    let hub_value = hub.value();
    (0..n)
        .map(|k| {
            let st = state.clone();
            let full = full.clone();
            Var::from_op(
                cut(&hub_value, k),
                std::iter::once(hub.clone()).collect::<Inputs<E>>(),
                OpFn {
                    name: "rnn_piece",
                    f: move |g: &Var<E>, _: &[Var<E>], _: &Var<E>| -> Grads<E> {
                        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                        if s.grads[k].is_some() {
                            // A piece runs once per pass: this is left over from a pass that
                            // never reached the hub (it panicked); start afresh.
                            s.grads.iter_mut().for_each(|g| *g = None);
                            s.pending = false;
                        }
                        s.grads[k] = Some(g.clone());
                        let wake_hub = !s.pending;
                        s.pending = true;
                        std::iter::once(wake_hub.then(|| Var::constant(Tensor::zeros(&full)))).collect()
                    },
                },
            )
        })
        .collect()
}

/// `v.select(dim, t)` for every `t`, with one cheap backward for all (see [`pieces`]).
pub(crate) fn unbind<E: Float>(v: &Var<E>, dim: usize) -> Vec<Var<E>> {
    let n = v.shape()[dim];
    pieces(v, dim, n, 1, true)
}

/// `v` cut into `n` equal blocks of its last dimension, with one cheap backward for all.
pub(crate) fn split_last<E: Float>(v: &Var<E>, n: usize) -> Vec<Var<E>> {
    let shape = v.shape();
    let dim = shape.len() - 1;
    pieces(v, dim, n, shape[dim] / n, false)
}

// ------------------------------------------------------------------------- one step

/// One step of a cell. `gi` is the input projection `W_ih x + b_ih` (all gates), `h` the
/// previous hidden state, `h_rec` what is fed to the recurrent product (`h`, or `h` times a
/// recurrent-dropout mask), `c` the previous cell state (LSTM only). Returns `(h', c')`.
pub(crate) fn cell_step<E: Float>(
    kind: CellKind,
    gi: &Var<E>,
    h: &Var<E>,
    h_rec: &Var<E>,
    c: Option<&Var<E>>,
    weight_hh: &Var<E>,
    bias_hh: Option<&Var<E>>,
) -> (Var<E>, Option<Var<E>>) {
    let gh = h_rec.linear(weight_hh, bias_hh);
    match kind {
        // h' = act(W_ih x + b_ih + W_hh h + b_hh)
        CellKind::RnnTanh => (gi.add(&gh).tanh(), None),
        CellKind::RnnRelu => (gi.add(&gh).relu(), None),
        CellKind::Lstm => {
            // i, f, o = σ(.), g = tanh(.); c' = f c + i g; h' = o tanh(c')
            let g = split_last(&gi.add(&gh), 4);
            let (i, f, gg, o) = (g[0].sigmoid(), g[1].sigmoid(), g[2].tanh(), g[3].sigmoid());
            let c = c.expect("LSTM step needs a cell state");
            let c_new = f.mul(c).add(&i.mul(&gg));
            let h_new = o.mul(&c_new.tanh());
            (h_new, Some(c_new))
        }
        CellKind::Gru => {
            // r, z = σ(.); n = tanh(W_in x + b_in + r (W_hn h + b_hn)); h' = (1 - z) n + z h
            let a = split_last(gi, 3);
            let b = split_last(&gh, 3);
            let r = a[0].add(&b[0]).sigmoid();
            let z = a[1].add(&b[1]).sigmoid();
            let n = a[2].add(&r.mul(&b[2])).tanh();
            (n.add(&z.mul(&h.sub(&n))), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::{gradcheck, gradgradcheck};

    #[test]
    fn pieces_join_gradients_like_select_and_narrow() {
        let x = Tensor::<f64>::from_vec((0..24).map(|v| (v as f64 * 0.37).sin()).collect(), &[4, 3, 2]);
        // weights make each piece's contribution distinct; piece 2 is unused (zero gradient)
        let r = gradcheck(
            |v| {
                let p = unbind(&v[0], 0);
                p[0].mul(&p[1]).add(&p[3].tanh()).sum_all()
            },
            std::slice::from_ref(&x),
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
        let r = gradcheck(
            |v| {
                let p = split_last(&v[0].reshape(&[4, 6]), 3);
                p[0].mul(&p[2]).sigmoid().sum_all()
            },
            std::slice::from_ref(&x),
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
        let r = gradgradcheck(
            |v| {
                let p = unbind(&v[0], 1);
                p[0].mul(&p[1]).mul(&p[2]).sum_all()
            },
            &[x],
            1e-5,
            1e-6,
            1e-4,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn pieces_survive_repeated_backward_passes() {
        let x = Var::param(Tensor::<f64>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]));
        let p = unbind(&x, 0);
        let y = p[0].mul(&p[1]).sum_all(); // x0 . x1
        y.backward_opts(&Tensor::scalar(1.0), true, false);
        y.backward_opts(&Tensor::scalar(1.0), true, false);
        // d/dx0 = x1, d/dx1 = x0, twice
        assert_eq!(x.grad().unwrap().to_vec(), vec![6.0, 8.0, 2.0, 4.0]);
        // a pass that reaches one piece only still reaches the hub
        x.zero_grad();
        let q = unbind(&x, 1);
        q[1].sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 1.0, 0.0, 1.0]);
    }
}
