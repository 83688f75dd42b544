//! The generic recurrent stack: [`Recurrent`], which [`RNN`](crate::RNN), [`GRU`](crate::GRU)
//! and [`LSTM`](crate::LSTM) are (one type, three configurations), with the weights of one
//! layer and direction ([`RNNWeights`]), the multi-layer bidirectional driver with length
//! masks, dropout between layers and recurrent dropout, and [`last_valid_output`].
//!
//! The driver does, per layer and direction, one input projection for the whole sequence
//! (`x[T*B, in] · W_ihᵀ + b_ih`), then per step one recurrent product for all gates
//! (`h · W_hhᵀ + b_hh`), whose columns are cut into gates by the recurrence's step
//! ([`CellKind`](super::recurrence::CellKind)). Variable lengths are per-step masks:
//! `h = m ? h_new : h_old`, the output is 0 where `m` is 0, so padded steps neither change a
//! sequence's state nor receive gradient (what PyTorch's packed sequences give).
//!
//! An LSTM can instead run each layer and direction as one fused op
//! ([`Var::lstm_sequence`]): the same input projection, then one node for the whole
//! recurrence (its own forward and BPTT kernels, one recurrent GEMM per step, no allocation
//! per step). The composed driver stays as its test oracle and as the path that supports
//! higher-order gradients.

use std::fmt;
use std::sync::Mutex;

use kiln_autograd::Var;
use kiln_tensor::{Float, Rng, Tensor};

use super::recurrence::{cell_step, unbind, CellKind};
use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Module, TensorKind};

/// The configuration of a recurrent stack: [`RNNConfig`](crate::RNNConfig),
/// [`GRUConfig`](crate::GRUConfig) or [`LSTMConfig`](crate::LSTMConfig). It tells the one
/// [`Recurrent`] type which recurrence to run with which sizes and options; the three layers
/// are `Recurrent<RNNConfig>`, `Recurrent<GRUConfig>` and `Recurrent<LSTMConfig>`.
///
/// Implemented by kiln-nn's configurations only.
pub trait RecurrentConfig: Clone + fmt::Debug + Send + Sync + 'static {
    /// PyTorch's defaults for the given sizes (`RNNConfig::new`, ...).
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self;

    /// The recurrence, sizes and options, in the driver's terms.
    #[doc(hidden)]
    fn spec(&self) -> Spec;

    /// The options every recurrent configuration has, for [`Recurrent`]'s builder setters.
    #[doc(hidden)]
    fn options_mut(&mut self) -> Options<'_>;
}

/// The options of a [`RecurrentConfig`] that [`Recurrent`]'s builder setters change.
#[doc(hidden)]
pub struct Options<'a> {
    /// Stacked layers.
    pub num_layers: &'a mut usize,
    /// Whether the layers have biases.
    pub bias: &'a mut bool,
    /// `[batch, seq_len, features]` input and output.
    pub batch_first: &'a mut bool,
    /// Dropout between layers.
    pub dropout: &'a mut f64,
    /// Both directions.
    pub bidirectional: &'a mut bool,
}

/// [`RecurrentConfig::options_mut`] for a configuration whose option fields have [`Options`]'s
/// names (inside its `impl RecurrentConfig`).
macro_rules! options_mut {
    () => {
        fn options_mut(&mut self) -> $crate::layers::recurrent::Options<'_> {
            $crate::layers::recurrent::Options {
                num_layers: &mut self.num_layers,
                bias: &mut self.bias,
                batch_first: &mut self.batch_first,
                dropout: &mut self.dropout,
                bidirectional: &mut self.bidirectional,
            }
        }
    };
}
pub(super) use options_mut;

/// A multi-layer, possibly bidirectional recurrence over a sequence, generic over its
/// configuration `C` (which recurrence: see [`RecurrentConfig`]); use it as
/// [`RNN`](crate::RNN), [`GRU`](crate::GRU) or [`LSTM`](crate::LSTM), whose docs give the
/// equations, shapes and parameters.
///
/// Every layer and direction `k` owns an [`RNNWeights`] in `all_weights`, visited under
/// PyTorch's flat names `weight_ih_l{layer}[_reverse]`, `weight_hh_l…`, `bias_ih_l…`,
/// `bias_hh_l…`, so a PyTorch `state_dict` loads unchanged.
pub struct Recurrent<C: RecurrentConfig, E: Float = f32> {
    /// The configuration it was built with.
    pub config: C,
    /// The weights of every layer and direction, ordered `l0, l0_reverse, l1, ...`.
    pub all_weights: Vec<RNNWeights<E>>,
    spec: Spec,
    training: bool,
    /// The layer's own generator for dropout masks, forked from the init generator at build.
    pub(crate) rng: Mutex<Rng>,
    /// Where the parameters were drawn from, for the setters that change their shapes.
    drawn: init::Drawn,
}

impl<C: RecurrentConfig, E: Float> Recurrent<C, E> {
    /// Builds the stack of `config`, initialised from the init generator (see
    /// [`crate::init::manual_seed`]), in training mode.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size or `num_layers` is zero, or a dropout probability is
    /// outside `[0, 1]` (`LSTM: hidden_size must be > 0, got 0`).
    pub fn from_config(config: &C) -> Result<Self, NnError> {
        let spec = config.spec();
        spec.check()?;
        let mut r = Recurrent {
            config: config.clone(),
            all_weights: spec.zero_weights(),
            spec,
            training: true,
            rng: Mutex::new(Rng::new(0)),
            drawn: init::Drawn::start(),
        };
        r.reset_parameters();
        // forked after the weights are drawn, as before the stacks were one type
        r.rng = Mutex::new(init::with_rng(|g| g.fork()));
        r.drawn.finish();
        Ok(r)
    }

    /// Sets the number of stacked layers (a builder: `LSTM::new(8, 16).num_layers(2)`).
    ///
    /// The parameters change shape, so all of them are drawn again, from the init generator's
    /// state when the layer was first built: the result equals the configuration's `build`
    /// with the same options after the same [`init::manual_seed`].
    ///
    /// **Panics** on a combination the configuration's `build` rejects
    /// (`LSTM: num_layers must be > 0, got 0`).
    #[must_use]
    pub fn num_layers(self, num_layers: usize) -> Self {
        self.rebuilt(|o| *o.num_layers = num_layers)
    }

    /// Sets whether each layer also runs backwards over the sequence (a builder:
    /// `LSTM::new(8, 16).bidirectional(true)`).
    ///
    /// The parameters change shape, so all of them are drawn again, as
    /// [`num_layers`](Self::num_layers) describes.
    ///
    /// **Panics** on a combination the configuration's `build` rejects.
    #[must_use]
    pub fn bidirectional(self, bidirectional: bool) -> Self {
        self.rebuilt(|o| *o.bidirectional = bidirectional)
    }

    /// Sets whether the layers have `bias_ih` and `bias_hh` (a builder:
    /// `GRU::new(8, 16).bias(false)`).
    ///
    /// The parameters change, so all of them are drawn again, as
    /// [`num_layers`](Self::num_layers) describes.
    ///
    /// **Panics** on a combination the configuration's `build` rejects.
    #[must_use]
    pub fn bias(self, bias: bool) -> Self {
        self.rebuilt(|o| *o.bias = bias)
    }

    /// Sets the `[batch, seq_len, features]` layout of the input and output, keeping the
    /// parameters (a builder: `LSTM::new(8, 16).batch_first(true)`).
    ///
    /// **Panics** on a combination the configuration's `build` rejects.
    #[must_use]
    pub fn batch_first(self, batch_first: bool) -> Self {
        self.with_options(|o| *o.batch_first = batch_first)
    }

    /// Sets the dropout probability on the output of every layer but the last, keeping the
    /// parameters (a builder: `LSTM::new(8, 16).num_layers(2).dropout(0.2)`).
    ///
    /// **Panics** on a combination the configuration's `build` rejects
    /// (`LSTM: dropout must be in [0, 1], got 1.5`).
    #[must_use]
    pub fn dropout(self, dropout: f64) -> Self {
        self.with_options(|o| *o.dropout = dropout)
    }

    /// The layer with options changed by `f` and its parameters kept, checked as `build`
    /// checks them.
    fn with_options(self, f: impl FnOnce(Options<'_>)) -> Self {
        self.with_config(|c| f(c.options_mut()))
    }

    /// The layer with its configuration changed by `f` (not in parameter shapes) and its
    /// parameters kept, checked as `build` checks it.
    pub(super) fn with_config(mut self, f: impl FnOnce(&mut C)) -> Self {
        f(&mut self.config);
        self.spec = self.config.spec();
        self.spec.check().unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// The layer built again with options changed by `f` (which change parameter shapes),
    /// from the init generator's state when this one was built; in the same mode.
    fn rebuilt(self, f: impl FnOnce(Options<'_>)) -> Self {
        let mut config = self.config.clone();
        f(config.options_mut());
        config.spec().check().unwrap_or_else(|e| panic!("{e}"));
        let mut r = self.drawn.redo(|| Self::from_config(&config)).unwrap_or_else(|e| panic!("{e}"));
        r.training = self.training;
        r
    }

    /// Re-draws every weight and bias from U(-1/√hidden_size, 1/√hidden_size), as PyTorch.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| self.all_weights.iter().for_each(|w| w.reset(self.spec.hidden_size, rng)));
    }

    /// The weights of layer `layer`, forward or reverse direction.
    ///
    /// **Panics** if `layer >= num_layers`, or `reverse` for a unidirectional layer.
    #[must_use]
    pub fn weights(&self, layer: usize, reverse: bool) -> &RNNWeights<E> {
        let s = &self.spec;
        let name = s.kind.name();
        assert!(layer < s.num_layers, "{name}: layer {layer} out of range for num_layers {}", s.num_layers);
        assert!(!reverse || s.bidirectional, "{name}: no reverse direction (bidirectional=false)");
        &self.all_weights[layer * s.num_directions() + usize::from(reverse)]
    }

    /// Runs the stack: `(output, h_n, c_n)`, `c_n` for LSTMs only.
    pub(crate) fn run(
        &self,
        x: &Var<E>,
        h0: Option<&Var<E>>,
        c0: Option<&Var<E>>,
        lengths: Option<&[usize]>,
    ) -> (Var<E>, Var<E>, Option<Var<E>>) {
        run_with(&self.spec, &self.all_weights, x, h0, c0, lengths, self.training, &self.rng, self.spec.fused)
    }
}

impl<C: RecurrentConfig> Recurrent<C, f32> {
    /// A one-layer stack with PyTorch's defaults, in `f32` (`LSTM::new(input_size,
    /// hidden_size)`); other element types through `new_generic`, options through the builder
    /// setters (`LSTM::new(8, 16).num_layers(2).batch_first(true)`) or the configuration
    /// (`LSTMConfig { .. }.build::<f64>()`).
    ///
    /// **Panics** if a size is zero (use the configuration's `build` for a `Result`).
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self::new_generic(input_size, hidden_size)
    }
}

impl<C: RecurrentConfig, E: Float> Recurrent<C, E> {
    /// `new` in any element type: `LSTM::<f64>::new_generic(3, 5)`.
    ///
    /// **Panics** if a size is zero (use the configuration's `build` for a `Result`).
    pub fn new_generic(input_size: usize, hidden_size: usize) -> Self {
        Self::from_config(&C::with_sizes(input_size, hidden_size)).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A recurrence whose only state is `h`: [`RNN`](crate::RNN) and [`GRU`](crate::GRU) (and
/// their cells), not the LSTM, which also carries `c`. Their layers share
/// `forward(x) -> (output, h_n)`.
pub trait HiddenStateOnly {}

impl<C: RecurrentConfig + HiddenStateOnly, E: Float> Recurrent<C, E> {
    /// Runs the whole sequence from a zero state: `(output, h_n)`, like `rnn(x)` / `gru(x)`.
    ///
    /// **Panics** if `x` is not `[seq_len, batch, input_size]` (or its batch-first or unbatched
    /// form), naming both shapes.
    #[must_use]
    pub fn forward(&self, x: &Var<E>) -> (Var<E>, Var<E>) {
        self.forward_with(x, None, None)
    }

    /// Runs the whole sequence from `h_0` (zeros when `None`), over each sequence's first
    /// `lengths[b]` steps when `lengths` is given (see the type's doc). Returns `(output, h_n)`.
    ///
    /// **Panics** on shapes that do not match (naming both), on `lengths` that are not one per
    /// sequence or exceed `seq_len`. A length of 0 leaves that sequence's state at `h_0`.
    ///
    /// ```
    /// use kiln_nn::{last_valid_output, GRUConfig, RNNConfig, GRU, RNN};
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let rnn: RNN<f64> = RNNConfig::new(1, 2).build().unwrap();
    /// let h0 = Var::constant(Tensor::full(&[1, 2, 2], 0.5));
    /// let (out, h_n) = rnn.forward_with(&Var::constant(Tensor::ones(&[3, 2, 1])), Some(&h0), Some(&[3, 0]));
    /// assert_eq!(h_n.value().select(1, 1).to_vec(), vec![0.5, 0.5]); // length 0 keeps h_0
    /// assert_eq!(out.value().select(1, 1).to_vec(), vec![0.0; 6]);
    ///
    /// let gru: GRU<f64> = GRUConfig::new(2, 3).build().unwrap();
    /// let x = Var::constant(Tensor::ones(&[5, 2, 2]));
    /// let (out, h_n) = gru.forward_with(&x, None, Some(&[5, 3]));
    /// let last = last_valid_output(&out, &[5, 3], false);
    /// assert_eq!(last.value().to_vec(), h_n.value().select(0, 0).to_vec());
    /// ```
    #[must_use]
    pub fn forward_with(&self, x: &Var<E>, h0: Option<&Var<E>>, lengths: Option<&[usize]>) -> (Var<E>, Var<E>) {
        let (out, h_n, _) = self.run(x, h0, None, lengths);
        (out, h_n)
    }
}

impl<C: RecurrentConfig, E: Float> Module<E> for Recurrent<C, E> {
    /// PyTorch's flat names: `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`,
    /// `weight_ih_l0_reverse`, ..., `weight_ih_l1`, ...
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        let nd = self.spec.num_directions();
        for (k, w) in self.all_weights.iter().enumerate() {
            let suffix = format!("_l{}{}", k / nd, if k % nd == 1 { "_reverse" } else { "" });
            w.visit(prefix, &suffix, f);
        }
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn is_training(&self) -> bool {
        self.training
    }
}

impl<C: RecurrentConfig, E: Float> fmt::Display for Recurrent<C, E> {
    /// PyTorch's repr with the parameter count: `LSTM(10, 20, num_layers=2) [… parameters]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}) [{} parameters]", self.spec.kind.name(), self.spec.extra_repr(), self.num_parameters())
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

/// The configuration of a multi-layer recurrent layer, whatever its kind: what the driver
/// reads (see [`RecurrentConfig::spec`]).
#[derive(Clone, Debug)]
pub struct Spec {
    /// The recurrence.
    pub kind: CellKind,
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers.
    pub num_layers: usize,
    /// Whether the layers have biases.
    pub bias: bool,
    /// `[batch, seq_len, features]` input and output.
    pub batch_first: bool,
    /// Dropout between layers.
    pub dropout: f64,
    /// Both directions.
    pub bidirectional: bool,
    /// Keras' recurrent dropout (LSTM and GRU).
    pub recurrent_dropout: f64,
    /// Each LSTM layer and direction as one fused op (LSTM only).
    pub fused: bool,
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
        if self.kind == CellKind::Lstm && !self.fused {
            s += ", fused=false";
        }
        s
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
/// ops, or with each LSTM layer and direction as one fused [`Var::lstm_sequence`] op when
/// `fused` (ignored for other kinds); returns `(output, h_n, c_n)`, `c_n` for LSTMs only.
/// Both paths draw the same dropout masks from `rng` in the same order, so that they agree
/// exactly for the same generator state. Shapes as PyTorch's (see the layers' docs); every
/// shape is checked with a panic naming the given and the expected shape.
fn run_with<E: Float>(
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
