//! `RNN`: a multi-layer Elman recurrence with tanh or ReLU, weights laid out as PyTorch's.

use std::fmt;

use kiln_tensor::Float;

use super::recurrence::CellKind;
use super::recurrent::{HiddenStateOnly, Recurrent, RecurrentConfig, Spec};
use crate::error::NnError;

/// The non-linearity of an [`RNN`] or [`RNNCell`](crate::RNNCell) (PyTorch's `nonlinearity`
/// argument, `"tanh"` by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RNNNonlinearity {
    /// `tanh` (the default).
    #[default]
    Tanh,
    /// `relu`.
    Relu,
}

impl fmt::Display for RNNNonlinearity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RNNNonlinearity::Tanh => "tanh",
            RNNNonlinearity::Relu => "relu",
        })
    }
}

impl RNNNonlinearity {
    pub(crate) fn kind(self) -> CellKind {
        match self {
            RNNNonlinearity::Tanh => CellKind::RnnTanh,
            RNNNonlinearity::Relu => CellKind::RnnRelu,
        }
    }
}

/// Configuration of an [`RNN`] (PyTorch's defaults: one layer, tanh, with biases, time-major,
/// no dropout, one direction).
#[derive(Clone, Debug, PartialEq)]
pub struct RNNConfig {
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers; layer `l > 0` reads the output of layer `l - 1`.
    pub num_layers: usize,
    /// `tanh` or `relu`.
    pub nonlinearity: RNNNonlinearity,
    /// Whether the layers have `bias_ih` and `bias_hh`.
    pub bias: bool,
    /// Input and output are `[batch, seq_len, features]` instead of `[seq_len, batch, features]`
    /// (the state `h_n` never is).
    pub batch_first: bool,
    /// Dropout probability on the output of every layer but the last, while training.
    pub dropout: f64,
    /// Whether each layer also runs backwards over the sequence, outputs concatenated.
    pub bidirectional: bool,
}

impl RNNConfig {
    /// PyTorch's defaults for the given sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        RNNConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            nonlinearity: RNNNonlinearity::Tanh,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
        }
    }

    /// Builds the layer, initialised from the init generator (see [`crate::init::manual_seed`]), in training mode.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size or `num_layers` is zero, or `dropout` is outside
    /// `[0, 1]` (`RNN: input_size must be > 0, got 0`).
    pub fn build<E: Float>(&self) -> Result<RNN<E>, NnError> {
        Recurrent::from_config(self)
    }
}

impl RecurrentConfig for RNNConfig {
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self {
        Self::new(input_size, hidden_size)
    }
    fn spec(&self) -> Spec {
        Spec {
            kind: self.nonlinearity.kind(),
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            bias: self.bias,
            batch_first: self.batch_first,
            dropout: self.dropout,
            bidirectional: self.bidirectional,
            recurrent_dropout: 0.0,
            fused: false,
        }
    }
    super::recurrent::options_mut!();
}

impl HiddenStateOnly for RNNConfig {}

/// A multi-layer Elman RNN, like `torch.nn.RNN`. For each layer and step:
///
/// ```text
/// h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   act = tanh or relu
/// ```
///
/// Layer `l > 0` reads layer `l - 1`'s output (with dropout `p = dropout` while training);
/// a bidirectional layer also runs from the last step to the first and concatenates the two
/// outputs `[forward, backward]` on the feature dimension.
///
/// With `lengths` ([`forward_with`](RNN::forward_with)), sequence `b` is `x[0..lengths[b], b]`
/// and the rest is padding: padded steps do not change its state, get zero gradient, and its
/// output there is 0; `h_n` is its state after its own last step (the reverse direction starts
/// at that step), as PyTorch's packed sequences give.
///
/// # Shapes
/// - Input `x`: `[seq_len, batch, input_size]` (`[batch, seq_len, input_size]` when
///   `batch_first`), or unbatched `[seq_len, input_size]`
/// - `h_0` (optional, zeros by default): `[num_layers * num_directions, batch, hidden_size]`
///   (`[num_layers * num_directions, hidden_size]` unbatched)
/// - Output: `[seq_len, batch, num_directions * hidden_size]` (batch first when `batch_first`)
/// - `h_n`: `[num_layers * num_directions, batch, hidden_size]`, ordered
///   `l0, l0_reverse, l1, ...`, never batch first
///
/// # Parameters
/// For each layer `k` and direction (suffix `_reverse` for the backward one), in
/// [`all_weights`](RNN::all_weights); every one U(-1/√hidden_size, 1/√hidden_size):
/// - `weight_ih_l{k}`: `[hidden_size, input_size]` for k = 0, else
///   `[hidden_size, num_directions * hidden_size]`
/// - `weight_hh_l{k}`: `[hidden_size, hidden_size]`
/// - `bias_ih_l{k}`, `bias_hh_l{k}`: `[hidden_size]`
///
/// A PyTorch `state_dict` loads unchanged.
///
/// ```
/// use kiln_nn::{Module, RNNConfig, RNNNonlinearity};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let rnn = RNNConfig { nonlinearity: RNNNonlinearity::Relu, num_layers: 2, ..RNNConfig::new(3, 4) }
///     .build::<f64>()
///     .unwrap();
/// let x = Var::constant(Tensor::ones(&[6, 2, 3]));
/// let (output, h_n) = rnn.forward(&x);
/// assert_eq!(output.shape().as_slice(), &[6, 2, 4]);
/// assert_eq!(h_n.shape().as_slice(), &[2, 2, 4]);
/// assert!(output.value().min_all() >= 0.0); // relu
/// assert_eq!(rnn.to_string(), "RNN(3, 4, num_layers=2, nonlinearity=relu) [76 parameters]");
/// ```
pub type RNN<E = f32> = Recurrent<RNNConfig, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::recurrent::testing;
    use crate::Module;
    use kiln_autograd::{gradcheck, Var};
    use kiln_tensor::{Rng, Tensor};

    fn seeded(cfg: &RNNConfig, seed: u64) -> RNN<f64> {
        let r: RNN<f64> = cfg.build().unwrap();
        let mut rng = Rng::new(seed);
        for w in &r.all_weights {
            w.reset(cfg.hidden_size, &mut rng);
        }
        r
    }

    fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn builder_setters_equal_the_config_build() {
        crate::init::manual_seed(34);
        let a = RNN::<f64>::new_generic(3, 4).num_layers(3).batch_first(true).bidirectional(true).bias(false);
        crate::init::manual_seed(34);
        let b: RNN<f64> =
            RNNConfig { num_layers: 3, bidirectional: true, batch_first: true, bias: false, ..RNNConfig::new(3, 4) }
                .build()
                .unwrap();
        assert_eq!(a.config, b.config);
        assert_eq!(crate::Module::state_dict(&a), crate::Module::state_dict(&b));
    }

    #[test]
    #[should_panic(expected = "RNN: num_layers must be > 0, got 0")]
    fn setter_panics_with_the_config_message() {
        let _ = RNN::new(3, 4).num_layers(0);
    }

    #[test]
    fn output_shapes_and_display() {
        let r = seeded(&RNNConfig { bidirectional: true, batch_first: true, ..RNNConfig::new(3, 4) }, 1);
        let (out, h) = r.forward(&Var::constant(rand(&[2, 5, 3], 2)));
        assert_eq!(out.shape().as_slice(), &[2, 5, 8]);
        assert_eq!(h.shape().as_slice(), &[2, 2, 4]);
        let r: RNN = RNN::new(4, 6);
        assert_eq!(r.to_string(), "RNN(4, 6) [72 parameters]");
        let r: RNN = RNNConfig { bias: false, ..RNNConfig::new(4, 6) }.build().unwrap();
        assert_eq!(r.to_string(), "RNN(4, 6, bias=false) [60 parameters]");
        assert_eq!(
            RNNConfig::new(0, 6).build::<f32>().err().unwrap().to_string(),
            "RNN: input_size must be > 0, got 0"
        );
        assert_eq!(RNNNonlinearity::Relu.to_string(), "relu");
    }

    #[test]
    #[should_panic(
        expected = "RNN: input of shape [2, 5, 4] does not match the expected [batch, seq_len, input_size] = [*, *, 3]"
    )]
    fn wrong_input_size_panics_with_both_shapes() {
        let r: RNN<f64> = RNNConfig { batch_first: true, ..RNNConfig::new(3, 2) }.build().unwrap();
        let _ = r.forward(&Var::constant(Tensor::zeros(&[2, 5, 4])));
    }

    fn golden_case(name: &str) {
        let Some(c) = golden::load(&format!("rnn/{name}")) else { return };
        let nl = match c.json["constructor_kwargs"]["nonlinearity"].as_str().unwrap_or("tanh") {
            "relu" => RNNNonlinearity::Relu,
            _ => RNNNonlinearity::Tanh,
        };
        let cfg = RNNConfig {
            num_layers: testing::kw_usize(&c, "num_layers", 1),
            nonlinearity: nl,
            bias: testing::kw_bool(&c, "bias", true),
            batch_first: testing::kw_bool(&c, "batch_first", false),
            bidirectional: testing::kw_bool(&c, "bidirectional", false),
            ..RNNConfig::new(c.usize("constructor_kwargs/input_size"), c.usize("constructor_kwargs/hidden_size"))
        };
        let mut r: RNN<f64> = cfg.build().unwrap();
        r.load_state_dict(&testing::state_dict(&c), true).unwrap();
        let x = testing::input(&c, "x").unwrap();
        let h0 = testing::input(&c, "h0");
        let (out, h_n) = r.forward_with(&x, h0.as_ref(), testing::lengths(&c).as_deref());
        let mut inputs = vec![("x", &x)];
        if let Some(h) = &h0 {
            inputs.push(("h0", h));
        }
        testing::check(&c, &[("output", &out), ("h_n", &h_n)], &inputs, &r);
    }

    #[test]
    fn golden_rnn_tanh_1layer() {
        golden_case("rnn_tanh_1layer");
    }

    #[test]
    fn golden_rnn_relu_2layer_bidir_batch_first() {
        golden_case("rnn_relu_2layer_bidir_batch_first");
    }

    #[test]
    fn gradcheck_tiny_two_layers_bidirectional_with_lengths() {
        let cfg = RNNConfig { num_layers: 2, bidirectional: true, ..RNNConfig::new(2, 3) };
        let base = seeded(&cfg, 3);
        let mut inputs = vec![rand(&[3, 2, 2], 4), rand(&[4, 2, 3], 5)];
        inputs.extend(base.parameters().iter().map(|p| p.value()));
        let f = |v: &[Var<f64>]| {
            let mut r: RNN<f64> = cfg.build().unwrap();
            let mut ps = v[2..].iter();
            for w in &mut r.all_weights {
                w.weight_ih = ps.next().unwrap().clone();
                w.weight_hh = ps.next().unwrap().clone();
                w.bias_ih = Some(ps.next().unwrap().clone());
                w.bias_hh = Some(ps.next().unwrap().clone());
            }
            let (o, h) = r.forward_with(&v[0], Some(&v[1]), Some(&[3, 2]));
            Var::cat(&[o.reshape(&[36]), h.reshape(&[24])], 0)
        };
        let r = gradcheck(f, &inputs, 1e-6, 1e-8, 1e-6);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit_running_sum() {
        // a tanh RNN with a linear read-out learns y_t = (x_0 + ... + x_t) / 2
        let r = seeded(&RNNConfig::new(1, 8), 6);
        let head = crate::LinearConfig::new(8, 1).build::<f64>().unwrap();
        let mut rng = Rng::new(7);
        head.weight.set_value(Tensor::uniform(&[1, 8], -0.3, 0.3, &mut rng));
        head.bias.as_ref().unwrap().set_value(Tensor::zeros(&[1]));
        let xt = Tensor::<f64>::uniform(&[4, 8, 1], -1.0, 1.0, &mut rng);
        let mut acc = [0.0; 8];
        let mut ys = Vec::new();
        for t in 0..4 {
            for (b, a) in acc.iter_mut().enumerate() {
                *a += xt.get(&[t, b, 0]) / 2.0;
            }
            ys.extend(acc.iter().copied());
        }
        let y = Var::constant(Tensor::from_vec(ys, &[4, 8, 1]));
        let x = Var::constant(xt);
        let mut params = r.parameters();
        params.extend(head.parameters());
        let (mut state, mut first, mut loss) = (Vec::new(), 0.0, 0.0);
        for step in 1..=300 {
            params.iter().for_each(|p| p.zero_grad());
            let d = crate::Forward::forward(&head, &r.forward(&x).0).sub(&y);
            let lv = d.mul(&d).mean(&[], false);
            loss = lv.item();
            if step == 1 {
                first = loss;
            }
            lv.backward();
            testing::adam_step(&params, &mut state, step, 0.03);
        }
        assert!(loss < first / 30.0 && loss < 2e-3, "loss {first} -> {loss}");
    }
}
