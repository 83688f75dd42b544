//! `LSTM`: a multi-layer long short-term memory recurrence, weights laid out as PyTorch's.

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::recurrence::CellKind;
use super::recurrent::{Recurrent, RecurrentConfig, Spec};
use crate::error::NnError;

/// Configuration of an [`LSTM`] (PyTorch's defaults: one layer, with biases, time-major,
/// no dropout, one direction; and no recurrent dropout, fused kernels).
#[derive(Clone, Debug, PartialEq)]
pub struct LSTMConfig {
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the hidden and cell states.
    pub hidden_size: usize,
    /// Stacked layers; layer `l > 0` reads the output of layer `l - 1`.
    pub num_layers: usize,
    /// Whether the layers have `bias_ih` and `bias_hh`.
    pub bias: bool,
    /// Input and output are `[batch, seq_len, features]` instead of `[seq_len, batch, features]`
    /// (the states `h_n`, `c_n` never are).
    pub batch_first: bool,
    /// Dropout probability on the output of every layer but the last, while training.
    pub dropout: f64,
    /// Whether each layer also runs backwards over the sequence, outputs concatenated.
    pub bidirectional: bool,
    /// Keras' `recurrent_dropout`: the probability of zeroing a unit of the hidden state fed
    /// to the recurrent product `W_hh h`, with one mask per sequence (the same at every step),
    /// while training. Not in PyTorch; 0 gives PyTorch's LSTM.
    pub recurrent_dropout: f64,
    /// Run each layer and direction as one fused op ([`Var::lstm_sequence`]: one input
    /// projection, one recurrent GEMM per step, hand-written backward through time) instead
    /// of composing every step from `Var` ops. Both compute the same values and gradients; the
    /// fused path is several times faster; a `create_graph` backward (higher-order gradients)
    /// through the fused op differentiates the composed recurrence instead. Not in PyTorch
    /// (whose LSTM is always fused); default `true`.
    pub fused: bool,
}

impl LSTMConfig {
    /// PyTorch's defaults for the given sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        LSTMConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            recurrent_dropout: 0.0,
            fused: true,
        }
    }

    /// Builds the layer, initialised from the init generator (see [`crate::init::manual_seed`]), in training mode.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size or `num_layers` is zero, or a dropout probability is
    /// outside `[0, 1]` (`LSTM: hidden_size must be > 0, got 0`).
    pub fn build<E: Float>(&self) -> Result<LSTM<E>, NnError> {
        Recurrent::from_config(self)
    }
}

impl RecurrentConfig for LSTMConfig {
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self {
        Self::new(input_size, hidden_size)
    }
    fn spec(&self) -> Spec {
        Spec {
            kind: CellKind::Lstm,
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            bias: self.bias,
            batch_first: self.batch_first,
            dropout: self.dropout,
            bidirectional: self.bidirectional,
            recurrent_dropout: self.recurrent_dropout,
            fused: self.fused,
        }
    }
    super::recurrent::options_mut!();
}

/// A multi-layer LSTM, like `torch.nn.LSTM`. For each layer and step:
///
/// ```text
/// i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
/// f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
/// g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
/// o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
/// c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
/// h_t = o_t ⊙ tanh(c_t)
/// ```
///
/// Layer `l > 0` reads layer `l - 1`'s output (with dropout `p = dropout` while training);
/// a bidirectional layer also runs from the last step to the first and concatenates the two
/// outputs `[forward, backward]` on the feature dimension.
///
/// With `lengths` ([`forward_with`](LSTM::forward_with)), sequence `b` is
/// `x[0..lengths[b], b]` and the rest is padding: padded steps do not change its state, get
/// zero gradient, and its output there is 0; `h_n`/`c_n` are its state after its own last
/// step (the reverse direction starts at that step): PyTorch's `pack_padded_sequence` →
/// LSTM → `pad_packed_sequence`, without sorting. [`last_valid_output`](crate::last_valid_output)
/// picks the output at each last step.
///
/// With `recurrent_dropout` (Keras'), while training, `h_{t-1}` in the `W_h· h_{t-1}` products
/// is multiplied by one inverted-dropout mask per sequence and direction, drawn once per
/// forward from the layer's own generator (forked from [`init`](crate::init)'s at build).
///
/// By default (`fused`) each layer and direction is one input-projection GEMM for the whole
/// sequence, then one [`Var::lstm_sequence`] node: one recurrent GEMM per step for all four
/// gates, a hand-written backward through time, no allocation per step. Higher-order
/// gradients (`create_graph`) go through the same recurrence composed from `Var` ops, which
/// `fused: false` uses throughout.
///
/// # Shapes
/// - Input `x`: `[seq_len, batch, input_size]` (`[batch, seq_len, input_size]` when
///   `batch_first`), or unbatched `[seq_len, input_size]`
/// - `h_0`, `c_0` (optional, zeros by default): `[num_layers * num_directions, batch, hidden_size]`
///   (`[num_layers * num_directions, hidden_size]` unbatched)
/// - Output: `[seq_len, batch, num_directions * hidden_size]` (batch first when `batch_first`)
/// - `h_n`, `c_n`: `[num_layers * num_directions, batch, hidden_size]`, ordered
///   `l0, l0_reverse, l1, ...`, never batch first
///
/// # Parameters
/// For each layer `k` and direction (suffix `_reverse` for the backward one), in
/// [`all_weights`](LSTM::all_weights), gate blocks i, f, g, o stacked on the rows; every one
/// U(-1/√hidden_size, 1/√hidden_size):
/// - `weight_ih_l{k}`: `[4 * hidden_size, input_size]` for k = 0, else
///   `[4 * hidden_size, num_directions * hidden_size]`
/// - `weight_hh_l{k}`: `[4 * hidden_size, hidden_size]`
/// - `bias_ih_l{k}`, `bias_hh_l{k}`: `[4 * hidden_size]` (both are added, as in PyTorch)
///
/// A PyTorch `state_dict` loads unchanged. PyTorch's `proj_size` is not supported.
///
/// ```
/// use kiln_nn::{LSTMConfig, Module};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let lstm = LSTMConfig { num_layers: 2, bidirectional: true, ..LSTMConfig::new(10, 20) }.build::<f32>().unwrap();
/// let x = Var::constant(Tensor::zeros(&[5, 3, 10])); // [seq_len, batch, input_size]
/// let (output, (h_n, c_n)) = lstm.forward(&x);
/// assert_eq!(output.shape().as_slice(), &[5, 3, 40]);
/// assert_eq!(h_n.shape().as_slice(), &[4, 3, 20]);
/// assert_eq!(c_n.shape().as_slice(), &[4, 3, 20]);
/// assert_eq!(lstm.named_parameters()[4].0, "weight_ih_l0_reverse");
/// assert_eq!(lstm.to_string(), "LSTM(10, 20, num_layers=2, bidirectional=true) [15040 parameters]");
/// ```
pub type LSTM<E = f32> = Recurrent<LSTMConfig, E>;

impl<E: Float> LSTM<E> {
    /// Sets Keras' `recurrent_dropout` (see [`LSTMConfig::recurrent_dropout`]), keeping the
    /// parameters (a builder: `LSTM::new(8, 16).batch_first(true).recurrent_dropout(0.2)`).
    ///
    /// **Panics** on a combination [`LSTMConfig::build`] rejects
    /// (`LSTM: recurrent_dropout must be in [0, 1], got 1.5`).
    #[must_use]
    pub fn recurrent_dropout(self, recurrent_dropout: f64) -> Self {
        self.with_config(|c| c.recurrent_dropout = recurrent_dropout)
    }

    /// Runs the whole sequence from zero states: `(output, (h_n, c_n))`, like `lstm(x)`.
    ///
    /// **Panics** if `x` is not `[seq_len, batch, input_size]` (or its batch-first or unbatched
    /// form), naming both shapes.
    #[must_use]
    pub fn forward(&self, x: &Var<E>) -> (Var<E>, (Var<E>, Var<E>)) {
        self.forward_with(x, None, None)
    }

    /// Runs the whole sequence from the given states `(h_0, c_0)` (zeros when `None`), over
    /// each sequence's first `lengths[b]` steps when `lengths` is given (see the type's doc).
    /// Returns `(output, (h_n, c_n))`.
    ///
    /// **Panics** on shapes that do not match (naming both), on `lengths` that are not one per
    /// sequence or exceed `seq_len`. A length of 0 leaves that sequence's states at `h_0`, `c_0`.
    ///
    /// ```
    /// use kiln_nn::{LSTMConfig, LSTM};
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let lstm: LSTM<f64> = LSTMConfig::new(2, 3).build().unwrap();
    /// let x = Var::constant(Tensor::ones(&[4, 2, 2]));
    /// let h0 = Var::constant(Tensor::zeros(&[1, 2, 3]));
    /// let c0 = Var::constant(Tensor::zeros(&[1, 2, 3]));
    /// let (out, (h_n, _)) = lstm.forward_with(&x, Some((&h0, &c0)), Some(&[4, 1]));
    /// // sequence 1 stops after one step: its output is 0 afterwards, h_n is its step-0 output
    /// assert_eq!(out.value().select(0, 3).select(0, 1).to_vec(), vec![0.0; 3]);
    /// assert_eq!(h_n.value().select(1, 1).to_vec(), out.value().select(0, 0).select(0, 1).to_vec());
    /// ```
    #[must_use]
    pub fn forward_with(
        &self,
        x: &Var<E>,
        state: Option<(&Var<E>, &Var<E>)>,
        lengths: Option<&[usize]>,
    ) -> (Var<E>, (Var<E>, Var<E>)) {
        let (h0, c0) = state.map_or((None, None), |(h, c)| (Some(h), Some(c)));
        let (out, h_n, c_n) = self.run(x, h0, c0, lengths);
        (out, (h_n, c_n.expect("an LSTM has a cell state")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::recurrent::testing;
    use crate::Module;
    use kiln_autograd::{gradcheck, gradgradcheck};
    use kiln_tensor::{Rng, Tensor};

    /// An f64 LSTM whose parameters are drawn from a local generator (tests run in parallel,
    /// so the process-wide one is not reproducible here).
    fn seeded(cfg: &LSTMConfig, seed: u64) -> LSTM<f64> {
        let l: LSTM<f64> = cfg.build().unwrap();
        let mut rng = Rng::new(seed);
        for w in &l.all_weights {
            w.reset(cfg.hidden_size, &mut rng);
        }
        l
    }

    fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn builder_setters_equal_the_config_build() {
        crate::init::manual_seed(31);
        let mut a = LSTM::<f64>::new_generic(3, 4);
        a.eval();
        let a = a.num_layers(2).bidirectional(true).batch_first(true).dropout(0.25).bias(false).recurrent_dropout(0.1);
        let next_a = crate::init::with_rng(|g| g.next_u64());
        crate::init::manual_seed(31);
        let b: LSTM<f64> = LSTMConfig {
            num_layers: 2,
            bidirectional: true,
            batch_first: true,
            dropout: 0.25,
            bias: false,
            recurrent_dropout: 0.1,
            ..LSTMConfig::new(3, 4)
        }
        .build()
        .unwrap();
        let next_b = crate::init::with_rng(|g| g.next_u64());
        assert_eq!(a.config, b.config);
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(a.state_dict(), b.state_dict());
        assert_eq!(*a.rng.lock().unwrap(), *b.rng.lock().unwrap());
        assert_eq!(next_a, next_b, "what is built next draws the same");
        assert!(!a.is_training(), "the mode is kept");
        let mut b = b;
        b.eval();
        let x = Var::constant(rand(&[2, 3, 3], 1));
        assert_eq!(a.forward(&x).0.value(), b.forward(&x).0.value());
    }

    #[test]
    fn rebuilding_setter_leaves_later_draws_alone() {
        // something drew between the constructor and the setter: the setter still gives the
        // seeded build, and does not move this thread's generator back
        crate::init::manual_seed(32);
        let a = LSTM::<f64>::new_generic(3, 4);
        let linear: crate::Linear = crate::Linear::new(2, 2);
        let state = crate::init::with_rng(|g| g.clone());
        let a = a.num_layers(2);
        assert_eq!(crate::init::with_rng(|g| g.clone()), state);
        crate::init::manual_seed(32);
        let b: LSTM<f64> = LSTMConfig { num_layers: 2, ..LSTMConfig::new(3, 4) }.build().unwrap();
        assert_eq!(a.state_dict(), b.state_dict());
        assert_eq!(linear.weight.value().shape(), &[2, 2]);
    }

    #[test]
    #[should_panic(expected = "LSTM: num_layers must be > 0, got 0")]
    fn rebuilding_setter_panics_with_the_config_message() {
        let _ = LSTM::new(3, 4).num_layers(0);
    }

    #[test]
    #[should_panic(expected = "LSTM: dropout must be in [0, 1], got 1.5")]
    fn setter_panics_with_the_config_message() {
        let _ = LSTM::new(3, 4).num_layers(2).dropout(1.5);
    }

    #[test]
    fn output_shapes_batch_first_and_unbatched() {
        let cfg = LSTMConfig { num_layers: 2, bidirectional: true, batch_first: true, ..LSTMConfig::new(3, 4) };
        let l = seeded(&cfg, 1);
        let (out, (h, c)) = l.forward(&Var::constant(rand(&[2, 5, 3], 2)));
        assert_eq!(out.shape().as_slice(), &[2, 5, 8]);
        assert_eq!(h.shape().as_slice(), &[4, 2, 4]);
        assert_eq!(c.shape().as_slice(), &[4, 2, 4]);
        // unbatched [seq_len, input] equals a batch of one
        let x = rand(&[5, 3], 3);
        let (ou, (hu, cu)) = l.forward(&Var::constant(x.clone()));
        assert_eq!(ou.shape().as_slice(), &[5, 8]);
        assert_eq!(hu.shape().as_slice(), &[4, 4]);
        let (ob, (hb, cb)) = l.forward(&Var::constant(x.unsqueeze(0)));
        assert_eq!(ou.value().to_vec(), ob.value().to_vec());
        assert_eq!(hu.value().to_vec(), hb.value().to_vec());
        assert_eq!(cu.value().to_vec(), cb.value().to_vec());
    }

    #[test]
    fn config_errors_and_display() {
        let e = |c: LSTMConfig| c.build::<f32>().err().unwrap().to_string();
        assert_eq!(e(LSTMConfig::new(3, 0)), "LSTM: hidden_size must be > 0, got 0");
        assert_eq!(e(LSTMConfig::new(0, 3)), "LSTM: input_size must be > 0, got 0");
        assert_eq!(e(LSTMConfig { num_layers: 0, ..LSTMConfig::new(3, 4) }), "LSTM: num_layers must be > 0, got 0");
        assert_eq!(e(LSTMConfig { dropout: 1.5, ..LSTMConfig::new(3, 4) }), "LSTM: dropout must be in [0, 1], got 1.5");
        assert_eq!(
            e(LSTMConfig { recurrent_dropout: -0.1, ..LSTMConfig::new(3, 4) }),
            "LSTM: recurrent_dropout must be in [0, 1], got -0.1"
        );
        let l: LSTM = LSTM::new(128, 64);
        assert_eq!(l.to_string(), "LSTM(128, 64) [49664 parameters]");
        let l: LSTM = LSTMConfig { fused: false, ..LSTMConfig::new(128, 64) }.build().unwrap();
        assert_eq!(l.to_string(), "LSTM(128, 64, fused=false) [49664 parameters]");
        let l: LSTM = LSTMConfig {
            num_layers: 2,
            bias: false,
            batch_first: true,
            dropout: 0.2,
            bidirectional: true,
            recurrent_dropout: 0.2,
            ..LSTMConfig::new(4, 5)
        }
        .build()
        .unwrap();
        // 2 dirs x (20x4 + 20x5) + 2 dirs x (20x10 + 20x5)
        assert_eq!(
            l.to_string(),
            "LSTM(4, 5, num_layers=2, bias=false, batch_first=true, dropout=0.2, bidirectional=true, \
             recurrent_dropout=0.2) [960 parameters]"
        );
        let names: Vec<String> = l.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "weight_ih_l0",
                "weight_hh_l0",
                "weight_ih_l0_reverse",
                "weight_hh_l0_reverse",
                "weight_ih_l1",
                "weight_hh_l1",
                "weight_ih_l1_reverse",
                "weight_hh_l1_reverse"
            ]
        );
    }

    #[test]
    #[should_panic(
        expected = "LSTM: input of shape [5, 3, 7] does not match the expected [seq_len, batch, input_size] = [*, *, 4]"
    )]
    fn wrong_input_size_panics_with_both_shapes() {
        let l: LSTM<f64> = LSTMConfig::new(4, 2).build().unwrap();
        let _ = l.forward(&Var::constant(Tensor::zeros(&[5, 3, 7])));
    }

    #[test]
    #[should_panic(expected = "LSTM: c0 of shape [1, 2, 2] does not match the expected [1, 3, 2]")]
    fn wrong_state_shape_panics_with_both_shapes() {
        let l: LSTM<f64> = LSTMConfig::new(4, 2).build().unwrap();
        let h0 = Var::constant(Tensor::zeros(&[1, 3, 2]));
        let c0 = Var::constant(Tensor::zeros(&[1, 2, 2]));
        let _ = l.forward_with(&Var::constant(Tensor::zeros(&[5, 3, 4])), Some((&h0, &c0)), None);
    }

    #[test]
    #[should_panic(expected = "LSTM: lengths [2, 6] exceed seq_len 5 of the input of shape [5, 2, 4]")]
    fn lengths_longer_than_the_sequence_panic() {
        let l: LSTM<f64> = LSTMConfig::new(4, 2).build().unwrap();
        let _ = l.forward_with(&Var::constant(Tensor::zeros(&[5, 2, 4])), None, Some(&[2, 6]));
    }

    #[test]
    fn init_bounds_match_pytorch() {
        let Some(c) = golden::load("init/lstm") else { return };
        for fused in [true, false] {
            crate::layers::conv::testing::check_init(&c, &lstm_from::<f64>(&c, fused));
        }
    }

    /// An LSTM from the case's constructor arguments (PyTorch's defaults where absent).
    fn lstm_from<E: kiln_tensor::Float>(c: &golden::Case, fused: bool) -> LSTM<E> {
        assert_eq!(c.usize_or("constructor_kwargs/proj_size", 0), 0, "{}: proj_size is not supported", c.name);
        LSTMConfig {
            fused,
            num_layers: c.usize_or("constructor_kwargs/num_layers", 1),
            bias: c.bool_or("constructor_kwargs/bias", true),
            batch_first: c.bool_or("constructor_kwargs/batch_first", false),
            bidirectional: c.bool_or("constructor_kwargs/bidirectional", false),
            ..LSTMConfig::new(c.usize("constructor_kwargs/input_size"), c.usize("constructor_kwargs/hidden_size"))
        }
        .build()
        .unwrap()
    }

    /// Checks the case on both paths: fused and composed.
    fn golden_case(name: &str) {
        golden_case_on(name, true);
        golden_case_on(name, false);
    }

    fn golden_case_on(name: &str, fused: bool) {
        let Some(c) = golden::load(&format!("rnn/{name}")) else { return };
        let mut l: LSTM<f64> = lstm_from(&c, fused);
        l.load_state_dict(&testing::state_dict(&c), true).unwrap();
        let x = testing::input(&c, "x").unwrap();
        let (h0, c0) = (testing::input(&c, "h0"), testing::input(&c, "c0"));
        let lengths = testing::lengths(&c);
        let state = h0.as_ref().zip(c0.as_ref());
        let (out, (h_n, c_n)) = l.forward_with(&x, state, lengths.as_deref());
        let mut inputs = vec![("x", &x)];
        if let (Some(h), Some(cc)) = (&h0, &c0) {
            inputs.push(("h0", h));
            inputs.push(("c0", cc));
        }
        testing::check(&c, &[("output", &out), ("h_n", &h_n), ("c_n", &c_n)], &inputs, &l);
        if let Some(len) = &lengths {
            // padded input steps got exactly zero gradient
            let g = x.grad().unwrap();
            for (b, &n) in len.iter().enumerate() {
                for t in n..g.shape()[1] {
                    assert!(
                        g.select(0, b).select(0, t).to_vec().iter().all(|&v| v == 0.0),
                        "{name} (fused {fused}): grad at padded ({b}, {t})"
                    );
                }
            }
        }
    }

    #[test]
    fn golden_lstm_1layer() {
        golden_case("lstm_1layer");
    }

    #[test]
    fn golden_lstm_2layer_bidir_batch_first_h0c0() {
        golden_case("lstm_2layer_bidir_batch_first_h0c0");
    }

    #[test]
    fn golden_lstm_packed() {
        golden_case("lstm_packed");
    }

    #[test]
    fn golden_lstm_packed_bidir() {
        golden_case("lstm_packed_bidir");
    }

    #[test]
    fn golden_in_f32_within_the_float32_tolerance() {
        let Some(c) = golden::load("rnn/lstm_packed_bidir") else { return };
        let mut l: LSTM<f32> = lstm_from(&c, true);
        let sd: crate::StateDict<f32> = testing::state_dict(&c).into_iter().map(|(k, v)| (k, v.cast())).collect();
        l.load_state_dict(&sd, true).unwrap();
        let x = Var::param(c.t("input.x").cast::<f32>());
        let (out, (h_n, c_n)) = l.forward_with(&x, None, testing::lengths(&c).as_deref());
        let tol = c.tol("float32");
        for (name, v) in [("output", &out), ("h_n", &h_n), ("c_n", &c_n)] {
            golden::assert_close(name, &v.value().cast(), &c.t(&format!("output.{name}")), tol);
        }
    }

    #[test]
    fn gradcheck_tiny_bidirectional_two_layers_with_lengths() {
        let cfg = LSTMConfig { num_layers: 2, bidirectional: true, ..LSTMConfig::new(2, 2) };
        let base = seeded(&cfg, 5);
        let mut inputs = vec![rand(&[3, 2, 2], 6), rand(&[4, 2, 2], 7), rand(&[4, 2, 2], 8)];
        inputs.extend(base.parameters().iter().map(|p| p.value()));
        let f = |v: &[Var<f64>]| {
            let mut l: LSTM<f64> = cfg.build().unwrap();
            let mut ps = v[3..].iter();
            for w in &mut l.all_weights {
                w.weight_ih = ps.next().unwrap().clone();
                w.weight_hh = ps.next().unwrap().clone();
                w.bias_ih = Some(ps.next().unwrap().clone());
                w.bias_hh = Some(ps.next().unwrap().clone());
            }
            let (o, (h, c)) = l.forward_with(&v[0], Some((&v[1], &v[2])), Some(&[3, 2]));
            Var::cat(&[o.reshape(&[24]), h.reshape(&[16]), c.reshape(&[16])], 0)
        };
        let r = gradcheck(f, &inputs, 1e-6, 1e-8, 1e-6);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn second_derivatives_flow_through_both_paths() {
        for fused in [false, true] {
            second_derivatives_flow(LSTMConfig { fused, ..LSTMConfig::new(1, 2) });
        }
    }

    fn second_derivatives_flow(cfg: LSTMConfig) {
        let base = seeded(&cfg, 9);
        let mut inputs = vec![rand(&[2, 1, 1], 10)];
        inputs.extend(base.parameters().iter().map(|p| p.value()));
        let f = |v: &[Var<f64>]| {
            let mut l: LSTM<f64> = cfg.build().unwrap();
            let w = &mut l.all_weights[0];
            (w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh) =
                (v[1].clone(), v[2].clone(), Some(v[3].clone()), Some(v[4].clone()));
            let (o, (_, c)) = l.forward(&v[0]);
            o.sum_all().add(&c.sum_all())
        };
        let r = gradgradcheck(f, &inputs, 1e-5, 1e-6, 1e-4);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    /// Runs the fused and the composed layer (same weights, same dropout generator state) on
    /// the same inputs; asserts equal outputs, states and gradients of every input and
    /// parameter, for `sum(out ⊙ u) + sum(h_n ⊙ v) + sum(c_n ⊙ w)`.
    fn assert_fused_matches_composed(
        cfg: &LSTMConfig,
        x_shape: &[usize],
        with_state: bool,
        lengths: Option<&[usize]>,
        training: bool,
        seed: u64,
    ) {
        let what = format!("{cfg:?} x {x_shape:?} state {with_state} lengths {lengths:?} training {training}");
        let mut layers = [true, false].map(|fused| seeded(&LSTMConfig { fused, ..cfg.clone() }, seed));
        for l in &mut layers {
            l.set_training(training);
            *l.rng.lock().unwrap() = Rng::new(seed + 1);
        }
        let nld = cfg.num_layers * if cfg.bidirectional { 2 } else { 1 };
        let unbatched = x_shape.len() == 2;
        let batch = if unbatched { 0 } else { x_shape[usize::from(!cfg.batch_first)] };
        let state_shape: Vec<usize> =
            if unbatched { vec![nld, cfg.hidden_size] } else { vec![nld, batch, cfg.hidden_size] };
        let x = rand(x_shape, seed + 2);
        let (h0, c0) = (rand(&state_shape, seed + 3), rand(&state_shape, seed + 4));
        let mut results = Vec::new();
        for l in &layers {
            let mut inputs = vec![Var::param(x.clone())];
            if with_state {
                inputs.extend([Var::param(h0.clone()), Var::param(c0.clone())]);
            }
            let state = with_state.then(|| (&inputs[1], &inputs[2]));
            let (o, (h, c)) = l.forward_with(&inputs[0], state, lengths);
            let mut r = Rng::new(seed + 5);
            let mut proj =
                |v: &Var<f64>| v.mul(&Var::constant(Tensor::uniform(&v.shape(), -1.0, 1.0, &mut r))).sum_all();
            let loss = proj(&o).add(&proj(&h)).add(&proj(&c));
            inputs.extend(l.parameters());
            // (with every length 0 nothing depends on the inputs: no gradient counts as zeros)
            let grads = if loss.requires_grad() {
                kiln_autograd::grad(&[loss], &inputs, None, false)
            } else {
                vec![None; inputs.len()]
            };
            let mut vals = vec![o.value().to_vec(), h.value().to_vec(), c.value().to_vec()];
            vals.extend(
                grads
                    .into_iter()
                    .zip(&inputs)
                    .map(|(g, v)| g.map_or_else(|| vec![0.0; v.numel()], |g| g.value().to_vec())),
            );
            results.push(vals);
        }
        let (fused, composed) = (&results[0], &results[1]);
        for (k, (a, b)) in fused.iter().zip(composed).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: result {k}");
            for (p, q) in a.iter().zip(b) {
                assert!(
                    (p - q).abs() < 1e-10 * (1.0 + q.abs()),
                    "{what}: result {k} (0-2: out, h_n, c_n; then grads): {p} vs {q}"
                );
            }
        }
    }

    #[test]
    fn fused_matches_composed_on_every_option() {
        let base = LSTMConfig::new(3, 4);
        let mut seed = 100;
        for num_layers in [1, 2] {
            for bidirectional in [false, true] {
                for batch_first in [false, true] {
                    let cfg = LSTMConfig { num_layers, bidirectional, batch_first, ..base.clone() };
                    let x_shape = if batch_first { [3, 5, 3] } else { [5, 3, 3] };
                    for lengths in [None, Some(&[5usize, 2, 3][..]), Some(&[1, 0, 4][..])] {
                        for with_state in [false, true] {
                            seed += 10;
                            assert_fused_matches_composed(&cfg, &x_shape, with_state, lengths, false, seed);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fused_matches_composed_with_dropout_no_bias_and_unbatched() {
        // recurrent and inter-layer dropout while training: both paths draw the same masks
        let cfg = LSTMConfig {
            num_layers: 2,
            bidirectional: true,
            dropout: 0.3,
            recurrent_dropout: 0.4,
            ..LSTMConfig::new(3, 4)
        };
        for batch_first in [false, true] {
            let cfg = LSTMConfig { batch_first, ..cfg.clone() };
            let x_shape = if batch_first { [3, 5, 3] } else { [5, 3, 3] };
            assert_fused_matches_composed(&cfg, &x_shape, true, Some(&[5, 2, 4]), true, 7);
            assert_fused_matches_composed(&cfg, &x_shape, false, None, true, 8);
            assert_fused_matches_composed(&cfg, &[5, 3], true, None, true, 9);
        }
        let no_bias = LSTMConfig { bias: false, num_layers: 2, ..LSTMConfig::new(3, 4) };
        assert_fused_matches_composed(&no_bias, &[4, 2, 3], true, Some(&[4, 3]), false, 10);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        #[test]
        fn fused_matches_composed_on_random_shapes(
            input in 1usize..4, hidden in 1usize..4, t_len in 1usize..5, batch in 1usize..4,
            num_layers in 1usize..3, bidirectional: bool, batch_first: bool, with_state: bool,
            use_lengths: bool, rec_dropout: bool, seed in 0u64..10_000,
        ) {
            let cfg = LSTMConfig {
                num_layers,
                bidirectional,
                batch_first,
                recurrent_dropout: if rec_dropout { 0.5 } else { 0.0 },
                ..LSTMConfig::new(input, hidden)
            };
            let x_shape = if batch_first { [batch, t_len, input] } else { [t_len, batch, input] };
            let mut r = Rng::new(seed);
            let lengths: Vec<usize> = (0..batch).map(|_| r.below(t_len as u64 + 1) as usize).collect();
            let lengths = use_lengths.then_some(lengths.as_slice());
            assert_fused_matches_composed(&cfg, &x_shape, with_state, lengths, rec_dropout, seed);
        }
    }

    #[test]
    fn fused_layer_gives_the_composed_second_derivatives() {
        // a gradient penalty Σ ‖∂loss/∂p‖² differentiated through the fused default layer
        // (whose recorded backward differentiates the composed recurrence) and the composed one
        let cfg = LSTMConfig { num_layers: 2, bidirectional: true, ..LSTMConfig::new(2, 3) };
        let second = |fused: bool| -> Vec<Vec<f64>> {
            let l = seeded(&LSTMConfig { fused, ..cfg.clone() }, 9);
            let x = Var::param(rand(&[3, 2, 2], 10));
            let (o, (h, _)) = l.forward_with(&x, None, Some(&[3, 1]));
            let loss = o.mul(&o).sum_all().add(&h.sum_all());
            let mut wrt = vec![x.clone()];
            wrt.extend(l.parameters());
            let g = kiln_autograd::grad(&[loss], &wrt, None, true);
            let penalty = g.iter().flatten().map(|d| d.mul(d).sum_all()).reduce(|a, b| a.add(&b)).unwrap();
            let g2 = kiln_autograd::grad(&[penalty], &wrt, None, false);
            g2.iter()
                .zip(&wrt)
                .map(|(d, v)| d.as_ref().map_or_else(|| vec![0.0; v.numel()], |d| d.value().to_vec()))
                .collect()
        };
        let (fused, composed) = (second(true), second(false));
        for (k, (a, b)) in fused.iter().zip(&composed).enumerate() {
            assert!(a.iter().any(|&v| v != 0.0), "input {k}: no second-order gradient");
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-10 * (1.0 + q.abs()), "input {k}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn lengths_match_running_each_sequence_alone() {
        let cfg = LSTMConfig { bidirectional: true, num_layers: 2, batch_first: true, ..LSTMConfig::new(3, 4) };
        let l = seeded(&cfg, 11);
        let x = rand(&[3, 5, 3], 12);
        let lengths = [5, 2, 3];
        let (out, (h, c)) = l.forward_with(&Var::constant(x.clone()), None, Some(&lengths));
        for (b, &n) in lengths.iter().enumerate() {
            let xb = Var::constant(x.select(0, b).narrow(0, 0, n).unsqueeze(0).contiguous());
            let (ob, (hb, cb)) = l.forward(&xb);
            let got = out.value().select(0, b);
            for (a, e) in got.narrow(0, 0, n).to_vec().iter().zip(ob.value().to_vec()) {
                assert!((a - e).abs() < 1e-12);
            }
            assert!(got.narrow(0, n, 5 - n).to_vec().iter().all(|&v| v == 0.0));
            for (a, e) in h.value().select(1, b).to_vec().iter().zip(hb.value().to_vec()) {
                assert!((a - e).abs() < 1e-12);
            }
            for (a, e) in c.value().select(1, b).to_vec().iter().zip(cb.value().to_vec()) {
                assert!((a - e).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn recurrent_dropout_masks_the_recurrent_input_only_while_training() {
        let cfg = LSTMConfig { recurrent_dropout: 1.0, ..LSTMConfig::new(2, 3) };
        let mut l = seeded(&cfg, 13);
        let x = Var::constant(rand(&[4, 2, 2], 14));
        // p = 1 zeroes h in W_hh h: the same as a zero W_hh (but c still carries over)
        let (o1, (h1, c1)) = l.forward(&x);
        let plain = seeded(&LSTMConfig::new(2, 3), 13);
        plain.all_weights[0].weight_hh.set_value(Tensor::zeros(&[12, 3]));
        let (o2, (h2, c2)) = plain.forward(&x);
        assert_eq!(o1.value().to_vec(), o2.value().to_vec());
        assert_eq!(h1.value().to_vec(), h2.value().to_vec());
        assert_eq!(c1.value().to_vec(), c2.value().to_vec());
        // eval: no dropout, same as PyTorch's LSTM with the same weights
        l.eval();
        let (o3, _) = l.forward(&x);
        let (o4, _) = seeded(&LSTMConfig::new(2, 3), 13).forward(&x);
        assert_eq!(o3.value().to_vec(), o4.value().to_vec());
    }

    #[test]
    fn recurrent_dropout_uses_one_mask_per_sequence() {
        let cfg = LSTMConfig { recurrent_dropout: 0.5, ..LSTMConfig::new(2, 3) };
        let l = seeded(&cfg, 15);
        let x = rand(&[4, 2, 2], 16);
        // the same draw as the layer's: one [batch, hidden] mask for the whole sequence
        let mut r = l.rng.lock().unwrap().clone();
        let m: Tensor<f64> = Tensor::bernoulli(&[2, 3], 0.5, &mut r).mul_scalar(2.0);
        let (out, _) = l.forward(&Var::constant(x.clone()));
        let w = &l.all_weights[0];
        let (mut h, mut c) =
            (Var::constant(Tensor::<f64>::zeros(&[2, 3])), Var::constant(Tensor::<f64>::zeros(&[2, 3])));
        let mv = Var::constant(m);
        for t in 0..4 {
            let gi = Var::constant(x.select(0, t)).linear(&w.weight_ih, w.bias_ih.as_ref());
            let gates = gi.add(&h.mul(&mv).linear(&w.weight_hh, w.bias_hh.as_ref()));
            let g: Vec<Var<f64>> = (0..4).map(|k| gates.narrow(1, 3 * k, 3)).collect();
            c = g[1].sigmoid().mul(&c).add(&g[0].sigmoid().mul(&g[2].tanh()));
            h = g[3].sigmoid().mul(&c.tanh());
            for (a, e) in out.value().select(0, t).to_vec().iter().zip(h.value().to_vec()) {
                assert!((a - e).abs() < 1e-12, "step {t}");
            }
        }
    }

    #[test]
    fn interlayer_dropout_only_while_training() {
        let cfg = LSTMConfig { num_layers: 2, dropout: 0.5, ..LSTMConfig::new(2, 3) };
        let mut l = seeded(&cfg, 17);
        let x = Var::constant(rand(&[3, 2, 2], 18));
        let (a, _) = l.forward(&x);
        let (b, _) = l.forward(&x);
        assert_ne!(a.value().to_vec(), b.value().to_vec(), "fresh masks each forward");
        l.eval();
        let (c, _) = l.forward(&x);
        let (d, _) = l.forward(&x);
        assert_eq!(c.value().to_vec(), d.value().to_vec());
        let nodrop = seeded(&LSTMConfig { num_layers: 2, ..LSTMConfig::new(2, 3) }, 17);
        assert_eq!(c.value().to_vec(), nodrop.forward(&x).0.value().to_vec());
    }

    #[test]
    fn tiny_overfit_reverses_a_sequence() {
        // bidirectional LSTM + linear read-out learns y_t = x_{T-1-t} on 8 fixed sequences
        let cfg = LSTMConfig { bidirectional: true, ..LSTMConfig::new(1, 8) };
        let l = seeded(&cfg, 19);
        let head = crate::LinearConfig::new(16, 1).build::<f64>().unwrap();
        let mut rng = Rng::new(20);
        head.weight.set_value(Tensor::uniform(&[1, 16], -0.25, 0.25, &mut rng));
        head.bias.as_ref().unwrap().set_value(Tensor::zeros(&[1]));
        let (t_len, batch) = (4, 8);
        let x = Tensor::<f64>::uniform(&[t_len, batch, 1], -1.0, 1.0, &mut rng);
        let y = Var::constant(x.flip(&[0]).contiguous());
        let x = Var::constant(x);
        let mut params = l.parameters();
        params.extend(head.parameters());
        let mut state = Vec::new();
        let mut first = 0.0;
        let mut loss = 0.0;
        for step in 1..=300 {
            params.iter().for_each(|p| p.zero_grad());
            let (out, _) = l.forward(&x);
            let pred = crate::Forward::forward(&head, &out);
            let d = pred.sub(&y);
            let lv = d.mul(&d).mean(&[], false);
            loss = lv.item();
            if step == 1 {
                first = loss;
            }
            lv.backward();
            testing::adam_step(&params, &mut state, step, 0.03);
        }
        assert!(loss < first / 50.0 && loss < 5e-3, "loss {first} -> {loss}");
    }
}
