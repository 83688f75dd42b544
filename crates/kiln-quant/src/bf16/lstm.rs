//! `Bf16LSTM`: an LSTM with bfloat16 weights and bfloat16 hidden and cell states.

use std::fmt;

use half::bf16;

use kiln_autograd::Var;
use kiln_nn::{Forward, LSTMConfig, Module, TensorKind, LSTM};
use kiln_tensor::{sigmoid_scalar, Bf16Tensor, Tensor};

use super::{round, widen, Bf16Linear};

/// One layer and direction: `W_ih x + b_ih` and `W_hh h + b_hh`.
#[derive(Clone, Debug)]
struct Cell {
    ih: Bf16Linear,
    hh: Bf16Linear,
}

/// An [`LSTM`] in bfloat16 (`lstm.to(torch.bfloat16)` run on a bfloat16 sequence); inference
/// only, from zero initial states.
///
/// Every weight and bias is stored as bfloat16, and so are the input, the output sequence and
/// the states `h_t` and `c_t` carried from step to step. Per layer and direction, the input
/// projection `W_ih x_t` of every step is one bfloat16 GEMM; at each step `W_hh h_{t-1}` is
/// another, added to it in `f32` (both with `f32` sums), with `b_ih + b_hh` added in `f32`.
/// The gate equations run in `f32` with PyTorch's gate order (i, f, g, o; see [`LSTM`]):
///
/// ```text
/// i, f, g, o = σ(·), σ(·), tanh(·), σ(·)  of  W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
/// c_t = bf16(f ⊙ c_{t-1} + i ⊙ g)
/// h_t = bf16(o ⊙ tanh(c_t))
/// ```
///
/// Differs from PyTorch: PyTorch's native CPU cell computes each of these elementwise
/// operations as a separate bfloat16 op (rounding the gate pre-activations and every
/// intermediate); here only what is stored (`c_t`, `h_t`) is rounded.
///
/// Supports `num_layers`, `bidirectional`, `batch_first`, with or without bias; inter-layer
/// dropout and `recurrent_dropout` are inference no-ops and are ignored; `lengths` (packed
/// sequences) are not supported.
///
/// # Shapes
/// As [`LSTM::forward`]: input `[seq_len, batch, input_size]` (batch first when configured)
/// or unbatched `[seq_len, input_size]`; output `[seq_len, batch, num_directions ·
/// hidden_size]` (batch first when configured); `h_n`, `c_n` `[num_layers · num_directions,
/// batch, hidden_size]`, ordered `l0, l0_reverse, l1, ...`.
///
/// ```
/// use kiln_nn::{LSTMConfig, Module, LSTM};
/// use kiln_quant::Bf16LSTM;
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let lstm: LSTM = LSTMConfig { num_layers: 2, bidirectional: true, batch_first: true, ..LSTMConfig::new(8, 16) }.build().unwrap();
/// let h = Bf16LSTM::from_lstm(&lstm);
/// assert_eq!(h.param_bytes(), lstm.num_parameters() * 2);
/// let x = Tensor::uniform(&[3, 5, 8], -1.0, 1.0, &mut Rng::new(0)); // [batch, seq_len, input_size]
/// let (want, (want_h, _)) = lstm.forward(&Var::constant(x.clone()));
/// let (out, h_n, c_n) = h.forward_bf16(&x.to_bf16());
/// assert_eq!(out.shape(), &[3, 5, 32]);
/// assert_eq!(h_n.shape(), &[4, 3, 16]);
/// assert_eq!(c_n.shape(), &[4, 3, 16]);
/// assert!(want.value().sub(&out.to_f32()).abs().max_all() < 0.03);
/// assert!(want_h.value().sub(&h_n.to_f32()).abs().max_all() < 0.03);
/// ```
#[derive(Clone, Debug)]
pub struct Bf16LSTM {
    config: LSTMConfig,
    cells: Vec<Cell>,
}

impl Bf16LSTM {
    /// Rounds every weight and bias of `lstm` to bfloat16.
    #[must_use]
    pub fn from_lstm(lstm: &LSTM) -> Self {
        let c = &lstm.config;
        let nd = if c.bidirectional { 2 } else { 1 };
        let mut cells = Vec::with_capacity(c.num_layers * nd);
        for layer in 0..c.num_layers {
            for d in 0..nd {
                let w = lstm.weights(layer, d == 1);
                let (b_ih, b_hh) = (w.bias_ih.as_ref().map(Var::value), w.bias_hh.as_ref().map(Var::value));
                cells.push(Cell {
                    ih: Bf16Linear::from_weight(&w.weight_ih.value(), b_ih.as_ref()),
                    hh: Bf16Linear::from_weight(&w.weight_hh.value(), b_hh.as_ref()),
                });
            }
        }
        Bf16LSTM { config: c.clone(), cells }
    }

    /// The configuration of the LSTM it was made from.
    #[must_use]
    pub fn config(&self) -> &LSTMConfig {
        &self.config
    }

    /// The input projection `(W_ih, b_ih)` of `layer` (the backward direction's when
    /// `reverse`), `[4 · hidden_size, layer input]`, as a [`Bf16Linear`].
    ///
    /// **Panics** if `layer` is out of range, or `reverse` without `bidirectional`.
    #[must_use]
    pub fn input_projection(&self, layer: usize, reverse: bool) -> &Bf16Linear {
        &self.cell(layer, reverse).ih
    }

    /// The recurrent projection `(W_hh, b_hh)` of `layer` (the backward direction's when
    /// `reverse`), `[4 · hidden_size, hidden_size]`.
    ///
    /// **Panics** as [`input_projection`](Self::input_projection).
    #[must_use]
    pub fn recurrent_projection(&self, layer: usize, reverse: bool) -> &Bf16Linear {
        &self.cell(layer, reverse).hh
    }

    fn cell(&self, layer: usize, reverse: bool) -> &Cell {
        let c = &self.config;
        assert!(layer < c.num_layers, "Bf16LSTM: layer {layer} out of range for num_layers {}", c.num_layers);
        assert!(!reverse || c.bidirectional, "Bf16LSTM: no reverse direction (bidirectional=false)");
        &self.cells[layer * if c.bidirectional { 2 } else { 1 } + usize::from(reverse)]
    }

    /// Bytes of every weight and bias (2 per value).
    #[must_use]
    pub fn param_bytes(&self) -> usize {
        self.cells.iter().map(|c| c.ih.param_bytes() + c.hh.param_bytes()).sum()
    }

    /// Runs the whole sequence from zero states: `(output, h_n, c_n)`, all bfloat16.
    ///
    /// **Panics** if `x` is not `[seq_len, batch, input_size]` (or its batch-first or
    /// unbatched form).
    #[must_use]
    pub fn forward_bf16(&self, x: &Bf16Tensor) -> (Bf16Tensor, Bf16Tensor, Bf16Tensor) {
        let cfg = &self.config;
        let (input, hidden) = (cfg.input_size, cfg.hidden_size);
        let unbatched = x.shape().len() == 2;
        assert!(
            (x.shape().len() == 3 || unbatched) && x.shape().last() == Some(&input),
            "Bf16LSTM: input must be [seq_len, batch, {input}] (or batch first, or [seq_len, {input}]), got {:?}",
            x.shape()
        );
        // Time-major [T, B, I].
        let (t_len, batch) = match *x.shape() {
            [t, _] => (t, 1),
            [a, b, _] if cfg.batch_first => (b, a),
            [t, b, _] => (t, b),
            _ => unreachable!("checked above"),
        };
        let mut layer_in = if cfg.batch_first && !unbatched {
            swap01(x.as_slice(), batch, t_len, input)
        } else {
            x.as_slice().to_vec()
        };
        let nd = if cfg.bidirectional { 2 } else { 1 };
        let g4 = 4 * hidden;
        let mut h_n = Vec::with_capacity(cfg.num_layers * nd * batch * hidden);
        let mut c_n = Vec::with_capacity(cfg.num_layers * nd * batch * hidden);
        for layer in 0..cfg.num_layers {
            let mut out = vec![bf16::ZERO; t_len * batch * nd * hidden];
            for d in 0..nd {
                let cell = &self.cells[layer * nd + d];
                // The input projection of every step at once, both biases added: [T·B, 4H].
                let mut gi = vec![0f32; t_len * batch * g4];
                cell.ih.product_rows(&layer_in, t_len * batch, 0.0, &mut gi);
                let bias: Vec<f32> = match (cell.ih.bias_f32(), cell.hh.bias_f32()) {
                    (Some(a), Some(b)) => a.iter().zip(&b).map(|(a, b)| a + b).collect(),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => vec![0.0; g4],
                };
                for row in gi.chunks_exact_mut(g4) {
                    row.iter_mut().zip(&bias).for_each(|(g, b)| *g += b);
                }
                let (mut h, mut c) = (vec![bf16::ZERO; batch * hidden], vec![bf16::ZERO; batch * hidden]);
                let mut gates = vec![0f32; batch * g4];
                for step in 0..t_len {
                    let t = if d == 1 { t_len - 1 - step } else { step };
                    gates.copy_from_slice(&gi[t * batch * g4..(t + 1) * batch * g4]);
                    cell.hh.product_rows(&h, batch, 1.0, &mut gates);
                    for b in 0..batch {
                        let gb = &gates[b * g4..(b + 1) * g4];
                        for u in 0..hidden {
                            let g = |k: usize| gb[k * hidden + u];
                            let (i, f, gg, o) =
                                (sigmoid_scalar(g(0)), sigmoid_scalar(g(1)), g(2).tanh(), sigmoid_scalar(g(3)));
                            let cv = round(f * widen(c[b * hidden + u]) + i * gg);
                            let hv = round(o * widen(cv).tanh());
                            c[b * hidden + u] = cv;
                            h[b * hidden + u] = hv;
                            out[(t * batch + b) * nd * hidden + d * hidden + u] = hv;
                        }
                    }
                }
                h_n.extend_from_slice(&h);
                c_n.extend_from_slice(&c);
            }
            layer_in = out;
        }
        let width = nd * hidden;
        let states = [cfg.num_layers * nd, batch, hidden];
        let (h_n, c_n) = (Bf16Tensor::from_vec(h_n, &states), Bf16Tensor::from_vec(c_n, &states));
        if unbatched {
            let s = [cfg.num_layers * nd, hidden];
            (Bf16Tensor::from_vec(layer_in, &[t_len, width]), h_n.reshape(&s), c_n.reshape(&s))
        } else if cfg.batch_first {
            (Bf16Tensor::from_vec(swap01(&layer_in, t_len, batch, width), &[batch, t_len, width]), h_n, c_n)
        } else {
            (Bf16Tensor::from_vec(layer_in, &[t_len, batch, width]), h_n, c_n)
        }
    }

    /// [`forward_bf16`](Self::forward_bf16) on an `f32` sequence: the input is rounded to
    /// bfloat16, the outputs `(output, h_n, c_n)` widened back (exactly).
    ///
    /// **Panics** as [`forward_bf16`](Self::forward_bf16).
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> (Tensor<f32>, Tensor<f32>, Tensor<f32>) {
        let (o, h, c) = self.forward_bf16(&x.to_bf16());
        (o.to_f32(), h.to_f32(), c.to_f32())
    }

    /// [`forward_tensor`](Self::forward_tensor) on a `Var`: `(output, (h_n, c_n))`, like
    /// [`LSTM::forward`] (without gradients).
    ///
    /// **Panics** as [`forward_bf16`](Self::forward_bf16).
    #[must_use]
    pub fn forward_with_state(&self, x: &Var<f32>) -> (Var<f32>, (Var<f32>, Var<f32>)) {
        let (o, h, c) = x.with_value(|v| self.forward_tensor(v));
        (Var::constant(o), (Var::constant(h), Var::constant(c)))
    }
}

/// `[a, b, n]` row-major to `[b, a, n]`.
fn swap01(x: &[bf16], a: usize, b: usize, n: usize) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; x.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * n..(j * a + i + 1) * n].copy_from_slice(&x[(i * b + j) * n..(i * b + j + 1) * n]);
        }
    }
    out
}

/// The output sequence, widened to `f32` (the states are dropped; see
/// [`forward_with_state`](Bf16LSTM::forward_with_state)).
impl Forward<f32> for Bf16LSTM {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        self.forward_with_state(x).0
    }
}

/// No `f32` parameters or buffers: the bfloat16 weights are not variables.
impl Module<f32> for Bf16LSTM {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for Bf16LSTM {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "Bf16LSTM({}, {}, num_layers={}, bias={}, batch_first={}, bidirectional={}) [{} bytes]",
            c.input_size,
            c.hidden_size,
            c.num_layers,
            c.bias,
            c.batch_first,
            c.bidirectional,
            self.param_bytes()
        )
    }
}
