//! `QuantLSTM`: an LSTM with int8 weights and dynamically quantised activations, like
//! `torch.ao.nn.quantized.dynamic.LSTM`.

use std::fmt;

use kiln_autograd::Var;
use kiln_nn::{Forward, LSTMConfig, Module, TensorKind, LSTM};
use kiln_tensor::{sigmoid_scalar, Tensor};

use crate::linear::{ActQuant, QuantLinear};
use crate::observer::QuantDtype;

/// One layer and direction: the input and the recurrent projection, both quantised.
#[derive(Clone, Debug)]
struct Cell {
    /// `W_ih x + b_ih + b_hh` (the two biases folded into one).
    ih: QuantLinear,
    /// `W_hh h`, no bias.
    hh: QuantLinear,
}

/// A dynamically quantised [`LSTM`] (inference only). Every weight matrix is int8 with
/// per-row (per gate unit) symmetric scales; activations are quantised on the fly: the input
/// projection `W_ih x` once per layer for the whole sequence, the recurrent `W_hh h_{t-1}` at
/// every step from `h_{t-1}`'s own range. Gates, cell and hidden state stay `f32`, with
/// PyTorch's equations and gate order (i, f, g, o; see [`LSTM`]).
///
/// Supports `num_layers`, `bidirectional`, `batch_first`, with or without bias; inter-layer
/// dropout is an inference no-op and is ignored; `lengths` (packed sequences) are not
/// supported.
///
/// # Shapes
/// As [`LSTM::forward`]: input `[seq_len, batch, input_size]` (batch first when configured)
/// or unbatched `[seq_len, input_size]`; output `[seq_len, batch, num_directions ·
/// hidden_size]`; `h_n`, `c_n` `[num_layers · num_directions, batch, hidden_size]`.
///
/// ```
/// use kiln_nn::LSTM;
/// use kiln_quant::{QuantDtype, QuantLSTM};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let lstm: LSTM = LSTM::new(8, 16);
/// let q = QuantLSTM::dynamic(&lstm, QuantDtype::UInt8);
/// let x = Var::constant(Tensor::uniform(&[5, 3, 8], -1.0, 1.0, &mut Rng::new(0)));
/// let (want, _) = lstm.forward(&x);
/// let (got, (h_n, _)) = q.forward_with_state(&x);
/// assert_eq!(got.shape().as_slice(), &[5, 3, 16]);
/// assert_eq!(h_n.shape().as_slice(), &[1, 3, 16]);
/// assert!(want.value().sub(&got.value()).abs().max_all() < 0.02);
/// ```
#[derive(Clone, Debug)]
pub struct QuantLSTM {
    config: LSTMConfig,
    cells: Vec<Cell>,
}

impl QuantLSTM {
    /// Quantises every weight of `lstm`; activations of code type `dtype` at run time.
    #[must_use]
    pub fn dynamic(lstm: &LSTM, dtype: QuantDtype) -> Self {
        let c = &lstm.config;
        let nd = if c.bidirectional { 2 } else { 1 };
        let act = ActQuant::Dynamic(dtype);
        let mut cells = Vec::new();
        for layer in 0..c.num_layers {
            for d in 0..nd {
                let w = lstm.weights(layer, d == 1);
                let bias = match (&w.bias_ih, &w.bias_hh) {
                    (Some(a), Some(b)) => Some(a.value().add(&b.value()).to_vec()),
                    _ => None,
                };
                cells.push(Cell {
                    ih: QuantLinear::from_weight(&w.weight_ih.value(), bias, act),
                    hh: QuantLinear::from_weight(&w.weight_hh.value(), None, act),
                });
            }
        }
        QuantLSTM { config: c.clone(), cells }
    }

    /// A layer from its configuration and, for each layer and direction (forward first), the
    /// quantised input projection (with both biases folded in) and recurrent projection.
    pub(crate) fn from_parts(config: LSTMConfig, cells: Vec<(QuantLinear, QuantLinear)>) -> Self {
        QuantLSTM { config, cells: cells.into_iter().map(|(ih, hh)| Cell { ih, hh }).collect() }
    }

    /// For each layer and direction (forward first): the input and recurrent projections.
    pub(crate) fn cells(&self) -> impl Iterator<Item = (&QuantLinear, &QuantLinear)> {
        self.cells.iter().map(|c| (&c.ih, &c.hh))
    }

    /// The code type activations are quantised to.
    #[must_use]
    pub fn dtype(&self) -> QuantDtype {
        self.cells.first().map_or(QuantDtype::UInt8, |c| c.ih.act.dtype())
    }

    /// The configuration of the LSTM it was made from.
    #[must_use]
    pub fn config(&self) -> &LSTMConfig {
        &self.config
    }

    /// Runs the whole sequence from zero states: `(output, (h_n, c_n))`, like
    /// [`LSTM::forward`].
    ///
    /// **Panics** if `x` is not `[seq_len, batch, input_size]` (or its batch-first or
    /// unbatched form).
    #[must_use]
    pub fn forward_with_state(&self, x: &Var<f32>) -> (Var<f32>, (Var<f32>, Var<f32>)) {
        let (o, h, c) = x.with_value(|v| self.forward_tensor(v));
        (Var::constant(o), (Var::constant(h), Var::constant(c)))
    }

    /// [`forward_with_state`](Self::forward_with_state) on tensors.
    ///
    /// **Panics** as [`forward_with_state`](Self::forward_with_state).
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> (Tensor<f32>, Tensor<f32>, Tensor<f32>) {
        let cfg = &self.config;
        let (input, hidden) = (cfg.input_size, cfg.hidden_size);
        let unbatched = x.ndim() == 2;
        assert!(
            (x.ndim() == 3 || unbatched) && x.shape().last() == Some(&input),
            "QuantLSTM: input must be [seq_len, batch, {input}] (or batch first, or [seq_len, {input}]), got {:?}",
            x.shape()
        );
        // Time-major [T, B, I].
        let xt = if unbatched {
            x.unsqueeze(1)
        } else if cfg.batch_first {
            x.transpose(0, 1)
        } else {
            x.clone()
        };
        let (t_len, batch) = (xt.shape()[0], xt.shape()[1]);
        let nd = if cfg.bidirectional { 2 } else { 1 };
        let mut layer_in = xt.contiguous().into_vec();
        let mut width = input;
        let mut h_n = Vec::with_capacity(cfg.num_layers * nd * batch * hidden);
        let mut c_n = Vec::with_capacity(cfg.num_layers * nd * batch * hidden);
        for layer in 0..cfg.num_layers {
            let mut out = vec![0f32; t_len * batch * nd * hidden];
            for d in 0..nd {
                let cell = &self.cells[layer * nd + d];
                let g4 = 4 * hidden;
                // Input projection for every step at once: [T·B, 4H].
                let mut gi = vec![0f32; t_len * batch * g4];
                cell.ih.apply_rows(&layer_in, t_len * batch, &mut gi);
                let (mut h, mut c) = (vec![0f32; batch * hidden], vec![0f32; batch * hidden]);
                let mut gh = vec![0f32; batch * g4];
                for step in 0..t_len {
                    let t = if d == 1 { t_len - 1 - step } else { step };
                    cell.hh.apply_rows(&h, batch, &mut gh);
                    for b in 0..batch {
                        let gates_i = &gi[(t * batch + b) * g4..(t * batch + b + 1) * g4];
                        let gates_h = &gh[b * g4..(b + 1) * g4];
                        for u in 0..hidden {
                            let g = |k: usize| gates_i[k * hidden + u] + gates_h[k * hidden + u];
                            let (i, f, gg, o) =
                                (sigmoid_scalar(g(0)), sigmoid_scalar(g(1)), g(2).tanh(), sigmoid_scalar(g(3)));
                            let cv = f * c[b * hidden + u] + i * gg;
                            c[b * hidden + u] = cv;
                            let hv = o * cv.tanh();
                            h[b * hidden + u] = hv;
                            out[(t * batch + b) * nd * hidden + d * hidden + u] = hv;
                        }
                    }
                }
                h_n.extend_from_slice(&h);
                c_n.extend_from_slice(&c);
            }
            layer_in = out;
            width = nd * hidden;
        }
        let out = Tensor::from_vec(layer_in, &[t_len, batch, width]);
        let states = [cfg.num_layers * nd, batch, hidden];
        let (h_n, c_n) = (Tensor::from_vec(h_n, &states), Tensor::from_vec(c_n, &states));
        if unbatched {
            (out.squeeze_dim(1), h_n.squeeze_dim(1), c_n.squeeze_dim(1))
        } else if cfg.batch_first {
            (out.transpose(0, 1).contiguous(), h_n, c_n)
        } else {
            (out, h_n, c_n)
        }
    }
}

/// The output sequence (the states are dropped; see
/// [`forward_with_state`](QuantLSTM::forward_with_state)).
impl Forward<f32> for QuantLSTM {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        self.forward_with_state(x).0
    }
}

/// No parameters or buffers: the int8 weights are not `f32` variables.
impl Module<f32> for QuantLSTM {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for QuantLSTM {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "QuantLSTM({}, {}, num_layers={}, bias={}, batch_first={}, bidirectional={}, weight=qint8 per-channel, {})",
            c.input_size,
            c.hidden_size,
            c.num_layers,
            c.bias,
            c.batch_first,
            c.bidirectional,
            self.cells[0].ih.act.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tensor::Rng;

    #[test]
    fn close_to_the_float_lstm_on_every_option() {
        let mut rng = Rng::new(21);
        for (num_layers, bidirectional, batch_first, bias) in
            [(1, false, false, true), (2, true, false, true), (2, false, true, false), (1, true, true, true)]
        {
            let cfg = LSTMConfig { num_layers, bidirectional, batch_first, bias, ..LSTMConfig::new(6, 10) };
            let lstm: LSTM = cfg.build().unwrap();
            let shape = if batch_first { [3, 7, 6] } else { [7, 3, 6] };
            let x = Var::constant(Tensor::uniform(&shape, -1.0, 1.0, &mut rng));
            let (want, (wh, wc)) = lstm.forward(&x);
            for dtype in [QuantDtype::UInt8, QuantDtype::Int8] {
                let q = QuantLSTM::dynamic(&lstm, dtype);
                let (got, (h, c)) = q.forward_with_state(&x);
                assert_eq!(got.shape(), want.shape());
                assert_eq!(h.shape(), wh.shape());
                for (a, b) in [(&want, &got), (&wh, &h), (&wc, &c)] {
                    let e = a.value().sub(&b.value()).abs().max_all();
                    assert!(e < 0.02, "{cfg:?} {dtype:?}: max error {e}");
                }
            }
        }
        // unbatched
        let lstm: LSTM = LSTM::new(3, 4);
        let x = Tensor::uniform(&[5, 3], -1.0, 1.0, &mut rng);
        let q = QuantLSTM::dynamic(&lstm, QuantDtype::UInt8);
        let (o, h, _) = q.forward_tensor(&x);
        assert_eq!((o.shape(), h.shape()), (&[5, 4][..], &[1, 4][..]));
        assert!(q.to_string().starts_with("QuantLSTM(3, 4, num_layers=1"), "{q}");
    }
}
