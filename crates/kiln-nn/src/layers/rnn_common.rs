//! What `RNN`, `LSTM`, `GRU` and their cells share: the weights of one layer and direction
//! ([`RNNWeights`]), one cell step of each kind, the multi-layer bidirectional driver with
//! length masks and recurrent dropout, and [`last_valid_output`].
//!
//! The driver does, per layer and direction, one input projection for the whole sequence
//! (`x[T*B, in] · W_ihᵀ + b_ih`), then per step one recurrent product for all gates
//! (`h · W_hhᵀ + b_hh`), whose columns are cut into gates. Variable lengths are per-step
//! masks: `h = m ? h_new : h_old`, the output is 0 where `m` is 0, so padded steps neither
//! change a sequence's state nor receive gradient (what PyTorch's packed sequences give).
//!
//! An LSTM can instead run each layer and direction as one fused op
//! ([`Var::lstm_sequence`]): the same input projection, then one node for the whole
//! recurrence (its own forward and BPTT kernels, one recurrent GEMM per step, no allocation
//! per step). The composed driver stays as its test oracle and as the path that supports
//! higher-order gradients.

use std::sync::{Arc, Mutex};

use kiln_autograd::ops::OpFn;
use kiln_autograd::{is_grad_enabled, Grads, Inputs, Var};
use kiln_tensor::{Float, Rng, Tensor};

use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, TensorKind};

/// Which recurrence a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CellKind {
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
    pub(crate) fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// The layer's name, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }
}

/// The weights of one layer and direction of an [`RNN`](crate::RNN), [`LSTM`](crate::LSTM) or
/// [`GRU`](crate::GRU): one entry of their `all_weights`, like one inner list of PyTorch's
/// `all_weights`. Gate blocks of `hidden_size` rows are stacked on the rows in PyTorch's order
/// (LSTM i, f, g, o; GRU r, z, n).
///
/// ```
/// use kiln_nn::LSTM;
/// let lstm: LSTM = LSTM::new(3, 5);
/// let w = lstm.weights(0, false);
/// assert_eq!(w.weight_ih.shape().as_slice(), &[20, 3]); // 4 gates x 5 rows
/// assert_eq!(w.weight_hh.shape().as_slice(), &[20, 5]);
/// assert_eq!(w.bias_hh.as_ref().unwrap().shape().as_slice(), &[20]);
/// ```
pub struct RNNWeights<E: Float = f32> {
    /// `weight_ih_l{k}[_reverse]`: `[gates * hidden_size, layer_input]`, where `layer_input` is
    /// `input_size` for layer 0 and `num_directions * hidden_size` above.
    pub weight_ih: Var<E>,
    /// `weight_hh_l{k}[_reverse]`: `[gates * hidden_size, hidden_size]`.
    pub weight_hh: Var<E>,
    /// `bias_ih_l{k}[_reverse]`: `[gates * hidden_size]`, when configured with a bias.
    pub bias_ih: Option<Var<E>>,
    /// `bias_hh_l{k}[_reverse]`: `[gates * hidden_size]`, when configured with a bias.
    pub bias_hh: Option<Var<E>>,
}

impl<E: Float> RNNWeights<E> {
    /// Zero weights of the given sizes (to be initialised by `reset`).
    pub(crate) fn zeros(rows: usize, input: usize, hidden: usize, bias: bool) -> Self {
        RNNWeights {
            weight_ih: Var::param(Tensor::zeros(&[rows, input])),
            weight_hh: Var::param(Tensor::zeros(&[rows, hidden])),
            bias_ih: bias.then(|| Var::param(Tensor::zeros(&[rows]))),
            bias_hh: bias.then(|| Var::param(Tensor::zeros(&[rows]))),
        }
    }

    /// The parameters in PyTorch's order: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    pub(crate) fn params(&self) -> impl Iterator<Item = &Var<E>> {
        [Some(&self.weight_ih), Some(&self.weight_hh), self.bias_ih.as_ref(), self.bias_hh.as_ref()]
            .into_iter()
            .flatten()
    }

    /// Visits `weight_ih{suffix}`, `weight_hh{suffix}`, `bias_ih{suffix}`, `bias_hh{suffix}`.
    pub(crate) fn visit(&self, prefix: &str, suffix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, &format!("weight_ih{suffix}"), &self.weight_ih, f);
        visit_param(prefix, &format!("weight_hh{suffix}"), &self.weight_hh, f);
        if let Some(b) = &self.bias_ih {
            visit_param(prefix, &format!("bias_ih{suffix}"), b, f);
        }
        if let Some(b) = &self.bias_hh {
            visit_param(prefix, &format!("bias_hh{suffix}"), b, f);
        }
    }

    /// PyTorch's init of every recurrent weight and bias: U(-1/√hidden, 1/√hidden)
    /// (`RNNBase.reset_parameters`).
    pub(crate) fn reset(&self, hidden: usize, rng: &mut Rng) {
        let k = 1.0 / (hidden as f64).sqrt();
        for p in self.params() {
            init::uniform_(p, -k, k, rng);
        }
    }
}

/// The configuration of a multi-layer recurrent layer, whatever its kind.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub kind: CellKind,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
    pub dropout: f64,
    pub bidirectional: bool,
    pub recurrent_dropout: f64,
}

impl Spec {
    pub(crate) fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Checks the sizes and probabilities, with PyTorch's conditions.
    pub(crate) fn check(&self) -> Result<(), NnError> {
        let name = self.kind.name();
        for (what, v) in
            [("input_size", self.input_size), ("hidden_size", self.hidden_size), ("num_layers", self.num_layers)]
        {
            if v == 0 {
                return Err(NnError::Config(format!("{name}: {what} must be > 0, got 0")));
            }
        }
        for (what, p) in [("dropout", self.dropout), ("recurrent_dropout", self.recurrent_dropout)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(NnError::Config(format!("{name}: {what} must be in [0, 1], got {p}")));
            }
        }
        Ok(())
    }

    /// Zero weights for every layer and direction, ordered `l0, l0_reverse, l1, ...`.
    pub(crate) fn zero_weights<E: Float>(&self) -> Vec<RNNWeights<E>> {
        let (d, h) = (self.num_directions(), self.hidden_size);
        let rows = self.kind.gates() * h;
        (0..self.num_layers * d)
            .map(|k| RNNWeights::zeros(rows, if k < d { self.input_size } else { d * h }, h, self.bias))
            .collect()
    }

    /// PyTorch's `extra_repr`: sizes, then the options that differ from the defaults.
    pub(crate) fn extra_repr(&self) -> String {
        let mut s = format!("{}, {}", self.input_size, self.hidden_size);
        if self.num_layers != 1 {
            s += &format!(", num_layers={}", self.num_layers);
        }
        if self.kind == CellKind::RnnRelu {
            s += ", nonlinearity=relu";
        }
        if !self.bias {
            s += ", bias=false";
        }
        if self.batch_first {
            s += ", batch_first=true";
        }
        if self.dropout != 0.0 {
            s += &format!(", dropout={}", self.dropout);
        }
        if self.bidirectional {
            s += ", bidirectional=true";
        }
        if self.recurrent_dropout != 0.0 {
            s += &format!(", recurrent_dropout={}", self.recurrent_dropout);
        }
        s
    }
}

/// A layer's own generator for dropout masks, forked from the init generator.
pub(crate) fn fork_rng() -> Mutex<Rng> {
    Mutex::new(init::with_rng(|r| r.fork()))
}

/// The weights of layer `layer`, direction `reverse`, with a clear panic when out of range.
pub(crate) fn weights_at<'a, E: Float>(
    spec: &Spec,
    all: &'a [RNNWeights<E>],
    layer: usize,
    reverse: bool,
) -> &'a RNNWeights<E> {
    assert!(
        layer < spec.num_layers,
        "{}: layer {layer} out of range for num_layers {}",
        spec.kind.name(),
        spec.num_layers
    );
    assert!(!reverse || spec.bidirectional, "{}: no reverse direction (bidirectional=false)", spec.kind.name());
    &all[layer * spec.num_directions() + usize::from(reverse)]
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

// ------------------------------------------------------------------------- the driver

/// Inverted-dropout mask of `shape`: `1 / (1 - p)` where kept, 0 elsewhere.
fn dropout_mask<E: Float>(shape: &[usize], p: f64, rng: &mut Rng) -> Tensor<E> {
    if p >= 1.0 {
        Tensor::zeros(shape)
    } else {
        Tensor::bernoulli(shape, 1.0 - p, rng).mul_scalar(E::from_f64(1.0 / (1.0 - p)))
    }
}

/// Runs a multi-layer, possibly bidirectional recurrence composed step by step from `Var`
/// ops; returns `(output, h_n, c_n)`, `c_n` for LSTMs only. Shapes as PyTorch's (see the
/// layers' docs); every shape is checked with a panic naming the given and the expected shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<E: Float>(
    spec: &Spec,
    weights: &[RNNWeights<E>],
    x: &Var<E>,
    h0: Option<&Var<E>>,
    c0: Option<&Var<E>>,
    lengths: Option<&[usize]>,
    training: bool,
    rng: &Mutex<Rng>,
) -> (Var<E>, Var<E>, Option<Var<E>>) {
    run_with(spec, weights, x, h0, c0, lengths, training, rng, false)
}

/// [`run`], with each LSTM layer and direction as one fused [`Var::lstm_sequence`] op when
/// `fused` (ignored for other kinds). Both paths draw the same dropout masks from `rng` in the
/// same order, so that they agree exactly for the same generator state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_with<E: Float>(
    spec: &Spec,
    weights: &[RNNWeights<E>],
    x: &Var<E>,
    h0: Option<&Var<E>>,
    c0: Option<&Var<E>>,
    lengths: Option<&[usize]>,
    training: bool,
    rng: &Mutex<Rng>,
    fused: bool,
) -> (Var<E>, Var<E>, Option<Var<E>>) {
    let name = spec.kind.name();
    let (nd, hs) = (spec.num_directions(), spec.hidden_size);
    let nld = spec.num_layers * nd;
    let is_lstm = spec.kind == CellKind::Lstm;
    let fused = fused && is_lstm;
    let (bd, td) = if spec.batch_first { (0usize, 1usize) } else { (1, 0) };

    let xs = x.shape();
    let layout = if spec.batch_first { "[batch, seq_len, input_size]" } else { "[seq_len, batch, input_size]" };
    assert!(
        (xs.len() == 3 || xs.len() == 2) && xs[xs.len() - 1] == spec.input_size,
        "{name}: input of shape {:?} does not match the expected {layout} = [*, *, {}] (or unbatched [seq_len, {}])",
        xs.as_slice(),
        spec.input_size,
        spec.input_size
    );
    let unbatched = xs.len() == 2;
    let x = if unbatched { x.unsqueeze(bd as isize) } else { x.clone() };
    let (t_len, batch) = (x.shape()[td], x.shape()[bd]);
    assert!(t_len > 0, "{name}: input of shape {:?} has an empty sequence", xs.as_slice());
    // The fused op reads the projection of a batch-first input in place (batch-major) and
    // returns time-major outputs: layers above the first run time-major, and the output is
    // turned back at the end.
    let outputs_time_major = fused && spec.batch_first;
    let mut input_batch_major = spec.batch_first;

    let state_shape: Vec<usize> = if unbatched { vec![nld, hs] } else { vec![nld, batch, hs] };
    let initial = |s: Option<&Var<E>>, what: &str| -> Option<Vec<Var<E>>> {
        s.map(|s| {
            assert!(
                s.shape().as_slice() == state_shape.as_slice(),
                "{name}: {what} of shape {:?} does not match the expected {:?} \
                 (num_layers * num_directions, batch, hidden_size) for input {:?}",
                s.shape().as_slice(),
                state_shape,
                xs.as_slice()
            );
            let s = if unbatched { s.unsqueeze(1) } else { s.clone() };
            unbind(&s, 0)
        })
    };
    let h0 = initial(h0, "h0");
    let c0 = if is_lstm { initial(c0, "c0") } else { None };

    // masks[t]: [B, 1], 1 where step t is inside the sequence; None when all of them are
    let (masks, max_len): (Vec<Option<Tensor<E>>>, usize) = match lengths {
        None => (vec![None; t_len], t_len),
        Some(l) => {
            assert!(
                l.len() == batch,
                "{name}: {} lengths for a batch of {batch} (input of shape {:?})",
                l.len(),
                xs.as_slice()
            );
            assert!(
                l.iter().all(|&n| n <= t_len),
                "{name}: lengths {l:?} exceed seq_len {t_len} of the input of shape {:?}",
                xs.as_slice()
            );
            let max_len = l.iter().copied().max().unwrap_or(0);
            // (the fused op takes the lengths themselves)
            let masks = (0..if fused { 0 } else { max_len })
                .map(|t| {
                    (l.iter().any(|&n| t >= n)).then(|| {
                        let m: Vec<E> = l.iter().map(|&n| if t < n { E::one() } else { E::zero() }).collect();
                        Tensor::from_vec(m, &[batch, 1])
                    })
                })
                .collect();
            (masks, max_len)
        }
    };

    let zeros = Var::constant(Tensor::zeros(&[batch, hs]));
    // The generator is locked only while a mask is drawn, so that concurrent forwards of a
    // shared layer do not wait on each other.
    let lock = || rng.lock().unwrap_or_else(|e| e.into_inner());
    let use_rec_dropout =
        training && spec.recurrent_dropout > 0.0 && matches!(spec.kind, CellKind::Lstm | CellKind::Gru);
    let mut layer_in = x;
    let (mut h_n, mut c_n) = (Vec::with_capacity(nld), Vec::with_capacity(nld));
    for layer in 0..spec.num_layers {
        if layer > 0 && training && spec.dropout > 0.0 {
            layer_in = if outputs_time_major {
                // the mask drawn in the caller's layout, as the composed path draws it
                layer_in.transpose(0, 1).dropout(spec.dropout, true, &mut lock()).transpose(0, 1)
            } else {
                layer_in.dropout(spec.dropout, true, &mut lock())
            };
        }
        let mut dir_outs = Vec::with_capacity(nd);
        for dir in 0..nd {
            let k = layer * nd + dir;
            let w = &weights[k];
            let mut h = h0.as_ref().map_or_else(|| zeros.clone(), |v| v[k].clone());
            let mut c = is_lstm.then(|| c0.as_ref().map_or_else(|| zeros.clone(), |v| v[k].clone()));
            let rec_mask = use_rec_dropout.then(|| dropout_mask(&[batch, hs], spec.recurrent_dropout, &mut lock()));
            if fused {
                // xp = x W_ihᵀ + (b_ih + b_hh) for the whole sequence, then one op for the recurrence
                let bias = match (&w.bias_ih, &w.bias_hh) {
                    (Some(a), Some(b)) => Some(a.add(b)),
                    (a, b) => a.as_ref().or(b.as_ref()).cloned(),
                };
                let xp = layer_in.linear(&w.weight_ih, bias.as_ref());
                let xp = if input_batch_major { xp.transpose(0, 1) } else { xp };
                let c = c.expect("an LSTM has a cell state");
                let packed = xp.lstm_sequence(&w.weight_hh, &h, &c, lengths, dir == 1, rec_mask.as_ref());
                dir_outs.push(packed.narrow(0, 0, t_len));
                h_n.push(packed.select(0, t_len));
                c_n.push(packed.select(0, t_len + 1));
                continue;
            }
            let rec_mask = rec_mask.map(Var::constant);
            let steps = unbind(&layer_in.linear(&w.weight_ih, w.bias_ih.as_ref()), td);
            let mut outs: Vec<Var<E>> = vec![zeros.clone(); t_len];
            let order: Vec<usize> = if dir == 0 { (0..max_len).collect() } else { (0..max_len).rev().collect() };
            for t in order {
                let h_rec = rec_mask.as_ref().map_or_else(|| h.clone(), |m| h.mul(m));
                let (h_new, c_new) =
                    cell_step(spec.kind, &steps[t], &h, &h_rec, c.as_ref(), &w.weight_hh, w.bias_hh.as_ref());
                match &masks[t] {
                    None => {
                        outs[t] = h_new.clone();
                        h = h_new;
                        c = c_new;
                    }
                    Some(m) => {
                        outs[t] = h_new.where_(m, &zeros);
                        h = h_new.where_(m, &h);
                        c = c_new.map(|cn| cn.where_(m, c.as_ref().expect("LSTM cell state")));
                    }
                }
            }
            dir_outs.push(Var::stack(&outs, td as isize));
            h_n.push(h);
            c_n.extend(c);
        }
        layer_in = if nd == 1 { dir_outs.pop().expect("one direction") } else { Var::cat(&dir_outs, -1) };
        input_batch_major &= !fused;
    }
    let mut output = if outputs_time_major { layer_in.transpose(0, 1) } else { layer_in };
    let mut h_n = Var::stack(&h_n, 0);
    let mut c_n = is_lstm.then(|| Var::stack(&c_n, 0));
    if unbatched {
        output = output.squeeze_dim(bd as isize);
        h_n = h_n.squeeze_dim(1);
        c_n = c_n.map(|c| c.squeeze_dim(1));
    }
    (output, h_n, c_n)
}

/// The output at each sequence's last valid step: row `b` of the result is
/// `output[lengths[b] - 1, b]` (`output[b, lengths[b] - 1]` when `batch_first`), the usual
/// summary of a padded batch for a classifier.
///
/// For a bidirectional layer the second half of each row is the reverse direction's output at
/// that step, i.e. after seeing only the last valid element; take the reverse direction's
/// final state from `h_n` instead when that is what is wanted.
///
/// # Shapes
/// - `output`: `[seq_len, batch, features]` (`[batch, seq_len, features]` when `batch_first`)
/// - result: `[batch, features]`
///
/// **Panics** if `output` is not 3-D, the number of lengths is not the batch size, or a length
/// is 0 or longer than `seq_len`.
///
/// ```
/// use kiln_nn::{last_valid_output, LSTMConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let lstm = LSTMConfig { batch_first: true, ..LSTMConfig::new(2, 3) }.build::<f64>().unwrap();
/// let x = Var::constant(Tensor::ones(&[2, 4, 2]));
/// let lengths = [4, 2];
/// let (out, (h_n, _)) = lstm.forward_with(&x, None, Some(&lengths));
/// let last = last_valid_output(&out, &lengths, true);
/// assert_eq!(last.shape().as_slice(), &[2, 3]);
/// assert_eq!(last.value().to_vec(), h_n.value().to_vec()); // one layer, one direction
/// ```
#[must_use]
pub fn last_valid_output<E: Float>(output: &Var<E>, lengths: &[usize], batch_first: bool) -> Var<E> {
    let s = output.shape();
    assert!(s.len() == 3, "last_valid_output: output must be 3-D [seq_len, batch, features], got {:?}", s.as_slice());
    let (t_len, batch, f) = if batch_first { (s[1], s[0], s[2]) } else { (s[0], s[1], s[2]) };
    assert!(
        lengths.len() == batch,
        "last_valid_output: {} lengths for output of shape {:?} (batch {batch})",
        lengths.len(),
        s.as_slice()
    );
    assert!(
        lengths.iter().all(|&n| n >= 1 && n <= t_len),
        "last_valid_output: lengths {lengths:?} must be in 1..={t_len} for output of shape {:?}",
        s.as_slice()
    );
    let index: Vec<usize> = lengths
        .iter()
        .enumerate()
        .map(|(b, &n)| if batch_first { b * t_len + n - 1 } else { (n - 1) * batch + b })
        .collect();
    output.reshape(&[t_len * batch, f]).index_select(0, &index)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Golden-case plumbing shared by the recurrent layers' tests.

    use kiln_autograd::Var;

    use crate::golden::{self, Case};
    use crate::module::{Module, StateDict};

    /// The case's `param.*` tensors as a state dict.
    pub(crate) fn state_dict(c: &Case) -> StateDict<f64> {
        c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|k| (k.to_string(), v.clone()))).collect()
    }

    /// A tiny Adam, enough to overfit in a test (kiln-optim sits above this crate).
    pub(crate) fn adam_step(
        params: &[Var<f64>],
        state: &mut Vec<(kiln_tensor::Tensor<f64>, kiln_tensor::Tensor<f64>)>,
        t: i32,
        lr: f64,
    ) {
        if state.is_empty() {
            *state = params.iter().map(|p| (p.value().zeros_like(), p.value().zeros_like())).collect();
        }
        for (p, (m, v)) in params.iter().zip(state.iter_mut()) {
            let g = p.grad().unwrap();
            *m = m.mul_scalar(0.9).add(&g.mul_scalar(0.1));
            *v = v.mul_scalar(0.999).add(&g.mul(&g).mul_scalar(0.001));
            let mh = m.mul_scalar(1.0 / (1.0 - 0.9f64.powi(t)));
            let vh = v.mul_scalar(1.0 / (1.0 - 0.999f64.powi(t)));
            let step = mh.div(&vh.sqrt().add_scalar(1e-8)).mul_scalar(lr);
            p.update_value(|x| *x = x.sub(&step));
        }
    }

    /// A constructor argument, or its default (PyTorch's) when the case does not give it.
    pub(crate) fn kw_usize(c: &Case, key: &str, default: usize) -> usize {
        c.usize_or(&format!("constructor_kwargs/{key}"), default)
    }

    /// A boolean constructor argument, or its default (PyTorch's) when the case does not give it.
    pub(crate) fn kw_bool(c: &Case, key: &str, default: bool) -> bool {
        c.bool_or(&format!("constructor_kwargs/{key}"), default)
    }

    /// `input.<name>` as a Var that requires grad, when the case has it.
    pub(crate) fn input(c: &Case, name: &str) -> Option<Var<f64>> {
        c.tensors.get(&format!("input.{name}")).map(|t| Var::param(t.clone()))
    }

    /// `input.lengths`, when present.
    pub(crate) fn lengths(c: &Case) -> Option<Vec<usize>> {
        c.ints.get("input.lengths").map(|(v, _)| v.iter().map(|&n| n as usize).collect())
    }

    /// Compares every output, back-propagates `sum_o (o * upstream.o)` and compares the
    /// gradients of the listed inputs (those in the JSON `grad_inputs`) and of every parameter.
    pub(crate) fn check(
        c: &Case,
        outputs: &[(&str, &Var<f64>)],
        inputs: &[(&str, &Var<f64>)],
        model: &dyn Module<f64>,
    ) {
        let tol = c.tol("float64");
        let case = c.json["case"].as_str().unwrap_or("?");
        let mut scalar: Option<Var<f64>> = None;
        for (name, o) in outputs {
            golden::assert_close(&format!("{case} output.{name}"), &o.value(), &c.t(&format!("output.{name}")), tol);
            let term = o.mul(&Var::constant(c.t(&format!("upstream.{name}")))).sum_all();
            scalar = Some(match scalar {
                Some(s) => s.add(&term),
                None => term,
            });
        }
        let expected_outputs = c.json["outputs"].as_array().map_or(0, |a| a.len());
        assert_eq!(outputs.len(), expected_outputs, "{case}: every output is compared");
        scalar.expect("at least one output").backward();
        let grad_inputs: Vec<&str> =
            c.json["grad_inputs"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
        for g in &grad_inputs {
            let (_, v) = inputs.iter().find(|(n, _)| n == g).unwrap_or_else(|| panic!("{case}: input {g} not given"));
            let got = v.grad().unwrap_or_else(|| panic!("{case}: no gradient for input {g}"));
            golden::assert_close(&format!("{case} grad_input.{g}"), &got, &c.t(&format!("grad_input.{g}")), tol);
        }
        let params = model.named_parameters();
        assert!(!params.is_empty());
        for (k, p) in params {
            let got = p.grad().unwrap_or_else(|| panic!("{case}: no gradient for parameter {k}"));
            golden::assert_close(&format!("{case} grad_param.{k}"), &got, &c.t(&format!("grad_param.{k}")), tol);
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

    #[test]
    fn last_valid_output_picks_each_sequences_last_step() {
        // [T=3, B=2, F=1], value = 10 t + b
        let out = Var::param(Tensor::<f64>::from_vec(vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0], &[3, 2, 1]));
        let last = last_valid_output(&out, &[2, 3], false);
        assert_eq!(last.value().to_vec(), vec![10.0, 21.0]);
        last.sum_all().backward();
        assert_eq!(out.grad().unwrap().to_vec(), vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        let bf = Var::constant(out.value().transpose(0, 1).contiguous()); // [B, T, F]
        assert_eq!(last_valid_output(&bf, &[1, 3], true).value().to_vec(), vec![0.0, 21.0]);
    }

    #[test]
    #[should_panic(expected = "last_valid_output: lengths [0, 3] must be in 1..=3 for output of shape [3, 2, 1]")]
    fn last_valid_output_rejects_empty_sequences() {
        let out = Var::constant(Tensor::<f64>::zeros(&[3, 2, 1]));
        let _ = last_valid_output(&out, &[0, 3], false);
    }
}
