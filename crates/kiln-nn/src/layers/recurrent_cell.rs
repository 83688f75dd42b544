//! The single-step cells `RNNCell`, `GRUCell` and `LSTMCell`: one type, [`RecurrentCell`],
//! generic over its configuration, for loops written by hand (decoders, custom unrolling).
//! The step is the same code as the stacks' ([`cell_step`]).

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};

use super::recurrence::{cell_step, CellKind};
use super::recurrent::{HiddenStateOnly, RNNWeights};
use super::rnn::RNNNonlinearity;
use crate::error::NnError;
use crate::{init, Module};

/// The configuration of a single-step cell: [`RNNCellConfig`], [`GRUCellConfig`] or
/// [`LSTMCellConfig`]. Implemented by kiln-nn's configurations only.
pub trait CellConfig: Clone + fmt::Debug + Send + Sync + 'static {
    /// PyTorch's defaults for the given sizes (`LSTMCellConfig::new`, ...).
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self;

    /// The recurrence and sizes, in the step's terms.
    #[doc(hidden)]
    fn cell_spec(&self) -> CellSpec;
}

/// What a cell runs: the recurrence, sizes and whether it has biases.
#[derive(Clone, Copy, Debug)]
pub struct CellSpec {
    /// The recurrence.
    pub kind: CellKind,
    /// Features of the input.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` and `bias_hh`.
    pub bias: bool,
}

/// One step of a recurrence, generic over its configuration `C`; use it as [`RNNCell`],
/// [`GRUCell`] or [`LSTMCell`], whose docs give the equations, shapes and parameters.
///
/// Parameters (PyTorch's keys), gate blocks stacked on the rows in PyTorch's order, every one
/// U(-1/√hidden_size, 1/√hidden_size): `weight_ih` `[gates * hidden_size, input_size]`,
/// `weight_hh` `[gates * hidden_size, hidden_size]`, `bias_ih`, `bias_hh`
/// `[gates * hidden_size]`.
#[derive(Module)]
pub struct RecurrentCell<C: CellConfig, E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: C,
    /// `[gates * hidden_size, input_size]`.
    pub weight_ih: Var<E>,
    /// `[gates * hidden_size, hidden_size]`.
    pub weight_hh: Var<E>,
    /// `[gates * hidden_size]`, when configured.
    pub bias_ih: Option<Var<E>>,
    /// `[gates * hidden_size]`, when configured.
    pub bias_hh: Option<Var<E>>,
}

impl<C: CellConfig, E: Float> RecurrentCell<C, E> {
    /// Builds the cell of `config`, initialised from the init generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero (`GRUCell: hidden_size must be > 0, got 0`).
    pub fn from_config(config: &C) -> Result<Self, NnError> {
        let s = config.cell_spec();
        for (what, v) in [("input_size", s.input_size), ("hidden_size", s.hidden_size)] {
            if v == 0 {
                return Err(NnError::Config(format!("{}Cell: {what} must be > 0, got 0", s.kind.name())));
            }
        }
        let w = RNNWeights::zeros(s.kind.gates() * s.hidden_size, s.input_size, s.hidden_size, s.bias);
        init::with_rng(|rng| w.reset(s.hidden_size, rng));
        Ok(RecurrentCell {
            config: config.clone(),
            weight_ih: w.weight_ih,
            weight_hh: w.weight_hh,
            bias_ih: w.bias_ih,
            bias_hh: w.bias_hh,
        })
    }

    /// Re-draws every weight and bias from U(-1/√hidden_size, 1/√hidden_size), as PyTorch.
    pub fn reset_parameters(&self) {
        let k = 1.0 / (self.config.cell_spec().hidden_size as f64).sqrt();
        let params = [Some(&self.weight_ih), Some(&self.weight_hh), self.bias_ih.as_ref(), self.bias_hh.as_ref()];
        init::with_rng(|rng| params.into_iter().flatten().for_each(|p| init::uniform_(p, -k, k, rng)));
    }

    /// Checks the input and states, runs one step. `x` is `[batch, input_size]` or unbatched
    /// `[input_size]`; each state must then be `[batch, hidden_size]` or `[hidden_size]`
    /// (zeros when `None`).
    fn step(&self, x: &Var<E>, h: Option<&Var<E>>, c: Option<&Var<E>>) -> (Var<E>, Option<Var<E>>) {
        let CellSpec { kind, input_size, hidden_size, .. } = self.config.cell_spec();
        let name = format!("{}Cell", kind.name());
        let xs = x.shape();
        assert!(
            (xs.len() == 2 || xs.len() == 1) && xs[xs.len() - 1] == input_size,
            "{name}: input of shape {:?} does not match the expected [batch, {input_size}] (or unbatched [{input_size}])",
            xs.as_slice()
        );
        let state_shape: Vec<usize> = if xs.len() == 2 { vec![xs[0], hidden_size] } else { vec![hidden_size] };
        let state = |s: Option<&Var<E>>, what: &str| -> Var<E> {
            match s {
                Some(s) => {
                    assert!(
                        s.shape().as_slice() == state_shape.as_slice(),
                        "{name}: {what} of shape {:?} does not match the expected {state_shape:?} for input {:?}",
                        s.shape().as_slice(),
                        xs.as_slice()
                    );
                    s.clone()
                }
                None => Var::constant(Tensor::zeros(&state_shape)),
            }
        };
        let h = state(h, "h");
        let c = (kind == CellKind::Lstm).then(|| state(c, "c"));
        let gi = x.linear(&self.weight_ih, self.bias_ih.as_ref());
        cell_step(kind, &gi, &h, &h, c.as_ref(), &self.weight_hh, self.bias_hh.as_ref())
    }
}

impl<C: CellConfig> RecurrentCell<C, f32> {
    /// A cell with PyTorch's defaults, in `f32` (`LSTMCell::new(input_size, hidden_size)`);
    /// other element types through `new_generic`, options through the configuration
    /// (`LSTMCellConfig::new(3, 5).build::<f64>()`).
    ///
    /// **Panics** if a size is zero (use the configuration's `build` for a `Result`).
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self::new_generic(input_size, hidden_size)
    }
}

impl<C: CellConfig, E: Float> RecurrentCell<C, E> {
    /// `new` in any element type: `LSTMCell::<f64>::new_generic(3, 5)`.
    ///
    /// **Panics** if a size is zero (use the configuration's `build` for a `Result`).
    pub fn new_generic(input_size: usize, hidden_size: usize) -> Self {
        Self::from_config(&C::with_sizes(input_size, hidden_size)).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<C: CellConfig + HiddenStateOnly, E: Float> RecurrentCell<C, E> {
    /// One step from `h` (zeros when `None`): returns `h'`.
    ///
    /// **Panics** if `x` or `h` has the wrong shape, naming both shapes.
    #[must_use]
    pub fn forward(&self, x: &Var<E>, h: Option<&Var<E>>) -> Var<E> {
        self.step(x, h, None).0
    }
}

impl<E: Float> RecurrentCell<LSTMCellConfig, E> {
    /// One step from `(h, c)` (zeros when `None`): returns `(h', c')`.
    ///
    /// **Panics** if `x`, `h` or `c` has the wrong shape, naming both shapes.
    #[must_use]
    pub fn forward(&self, x: &Var<E>, state: Option<(&Var<E>, &Var<E>)>) -> (Var<E>, Var<E>) {
        let (h, c) = state.map_or((None, None), |(h, c)| (Some(h), Some(c)));
        let (h, c) = self.step(x, h, c);
        (h, c.expect("an LSTM cell has a cell state"))
    }
}

impl<C: CellConfig, E: Float> fmt::Display for RecurrentCell<C, E> {
    /// `LSTMCell(input_size, hidden_size[, bias=false][, nonlinearity=relu]) [N parameters]`,
    /// as PyTorch's repr.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.config.cell_spec();
        write!(f, "{}Cell({}, {}", s.kind.name(), s.input_size, s.hidden_size)?;
        if !s.bias {
            write!(f, ", bias=false")?;
        }
        if s.kind == CellKind::RnnRelu {
            write!(f, ", nonlinearity=relu")?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

// ------------------------------------------------------------------------------- RNNCell

/// Configuration of an [`RNNCell`] (PyTorch's defaults: with biases, tanh).
#[derive(Clone, Debug, PartialEq)]
pub struct RNNCellConfig {
    /// Features of the input.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` and `bias_hh`.
    pub bias: bool,
    /// `tanh` or `relu`.
    pub nonlinearity: RNNNonlinearity,
}

impl RNNCellConfig {
    /// PyTorch's defaults for the given sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        RNNCellConfig { input_size, hidden_size, bias: true, nonlinearity: RNNNonlinearity::Tanh }
    }

    /// Builds the cell, initialised from the init generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero (`RNNCell: hidden_size must be > 0, got 0`).
    pub fn build<E: Float>(&self) -> Result<RNNCell<E>, NnError> {
        RecurrentCell::from_config(self)
    }
}

impl CellConfig for RNNCellConfig {
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self {
        Self::new(input_size, hidden_size)
    }
    fn cell_spec(&self) -> CellSpec {
        let (input_size, hidden_size, bias) = (self.input_size, self.hidden_size, self.bias);
        CellSpec { kind: self.nonlinearity.kind(), input_size, hidden_size, bias }
    }
}

impl HiddenStateOnly for RNNCellConfig {}

/// One step of an Elman RNN, like `torch.nn.RNNCell`:
///
/// ```text
/// h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu
/// ```
///
/// # Shapes
/// - Input `x`: `[batch, input_size]` or unbatched `[input_size]`
/// - `h` (optional, zeros by default) and output `h'`: `[batch, hidden_size]` (`[hidden_size]`)
///
/// # Parameters
/// Every one U(-1/√hidden_size, 1/√hidden_size):
/// - `weight_ih`: `[hidden_size, input_size]`, `weight_hh`: `[hidden_size, hidden_size]`
/// - `bias_ih`, `bias_hh`: `[hidden_size]`
///
/// ```
/// use kiln_nn::RNNCell;
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let cell = RNNCell::new(10, 20);
/// let mut h = Var::constant(Tensor::zeros(&[3, 20]));
/// for _ in 0..6 {
///     h = cell.forward(&Var::constant(Tensor::ones(&[3, 10])), Some(&h));
/// }
/// assert_eq!(h.shape().as_slice(), &[3, 20]);
/// assert_eq!(cell.to_string(), "RNNCell(10, 20) [640 parameters]");
/// ```
pub type RNNCell<E = f32> = RecurrentCell<RNNCellConfig, E>;

// ------------------------------------------------------------------------------ LSTMCell

/// Configuration of an [`LSTMCell`] (PyTorch's default: with biases).
#[derive(Clone, Debug, PartialEq)]
pub struct LSTMCellConfig {
    /// Features of the input.
    pub input_size: usize,
    /// Features of the hidden and cell states.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` and `bias_hh`.
    pub bias: bool,
}

impl LSTMCellConfig {
    /// PyTorch's defaults for the given sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        LSTMCellConfig { input_size, hidden_size, bias: true }
    }

    /// Builds the cell, initialised from the init generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero (`LSTMCell: input_size must be > 0, got 0`).
    pub fn build<E: Float>(&self) -> Result<LSTMCell<E>, NnError> {
        RecurrentCell::from_config(self)
    }
}

impl CellConfig for LSTMCellConfig {
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self {
        Self::new(input_size, hidden_size)
    }
    fn cell_spec(&self) -> CellSpec {
        CellSpec { kind: CellKind::Lstm, input_size: self.input_size, hidden_size: self.hidden_size, bias: self.bias }
    }
}

/// One step of an LSTM, like `torch.nn.LSTMCell`:
///
/// ```text
/// i = σ(W_ii x + b_ii + W_hi h + b_hi)     f = σ(W_if x + b_if + W_hf h + b_hf)
/// g = tanh(W_ig x + b_ig + W_hg h + b_hg)  o = σ(W_io x + b_io + W_ho h + b_ho)
/// c' = f ⊙ c + i ⊙ g
/// h' = o ⊙ tanh(c')
/// ```
///
/// # Shapes
/// - Input `x`: `[batch, input_size]` or unbatched `[input_size]`
/// - `(h, c)` (optional, zeros by default) and `(h', c')`: `[batch, hidden_size]` each
///   (`[hidden_size]` unbatched)
///
/// # Parameters
/// Gate blocks i, f, g, o stacked on the rows; every one U(-1/√hidden_size, 1/√hidden_size):
/// - `weight_ih`: `[4 * hidden_size, input_size]`, `weight_hh`: `[4 * hidden_size, hidden_size]`
/// - `bias_ih`, `bias_hh`: `[4 * hidden_size]`
///
/// ```
/// use kiln_nn::{LSTMCell, LSTMCellConfig, Module};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let cell: LSTMCell<f64> = LSTMCellConfig::new(3, 5).build().unwrap();
/// let (h, c) = cell.forward(&Var::constant(Tensor::ones(&[2, 3])), None);
/// let (h, c) = cell.forward(&Var::constant(Tensor::ones(&[2, 3])), Some((&h, &c)));
/// assert_eq!(h.shape().as_slice(), &[2, 5]);
/// assert_eq!(c.shape().as_slice(), &[2, 5]);
/// assert!(h.value().abs().max_all() < 1.0); // |o tanh(c)| < 1
/// assert_eq!(cell.named_parameters()[1].0, "weight_hh");
/// assert_eq!(cell.to_string(), "LSTMCell(3, 5) [200 parameters]");
/// ```
pub type LSTMCell<E = f32> = RecurrentCell<LSTMCellConfig, E>;

// ------------------------------------------------------------------------------- GRUCell

/// Configuration of a [`GRUCell`] (PyTorch's default: with biases).
#[derive(Clone, Debug, PartialEq)]
pub struct GRUCellConfig {
    /// Features of the input.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` and `bias_hh`.
    pub bias: bool,
}

impl GRUCellConfig {
    /// PyTorch's defaults for the given sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        GRUCellConfig { input_size, hidden_size, bias: true }
    }

    /// Builds the cell, initialised from the init generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero (`GRUCell: hidden_size must be > 0, got 0`).
    pub fn build<E: Float>(&self) -> Result<GRUCell<E>, NnError> {
        RecurrentCell::from_config(self)
    }
}

impl CellConfig for GRUCellConfig {
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self {
        Self::new(input_size, hidden_size)
    }
    fn cell_spec(&self) -> CellSpec {
        CellSpec { kind: CellKind::Gru, input_size: self.input_size, hidden_size: self.hidden_size, bias: self.bias }
    }
}

impl HiddenStateOnly for GRUCellConfig {}

/// One step of a GRU, like `torch.nn.GRUCell`:
///
/// ```text
/// r = σ(W_ir x + b_ir + W_hr h + b_hr)
/// z = σ(W_iz x + b_iz + W_hz h + b_hz)
/// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
/// h' = (1 - z) ⊙ n + z ⊙ h
/// ```
///
/// # Shapes
/// - Input `x`: `[batch, input_size]` or unbatched `[input_size]`
/// - `h` (optional, zeros by default) and output `h'`: `[batch, hidden_size]` (`[hidden_size]`)
///
/// # Parameters
/// Gate blocks r, z, n stacked on the rows; every one U(-1/√hidden_size, 1/√hidden_size):
/// - `weight_ih`: `[3 * hidden_size, input_size]`, `weight_hh`: `[3 * hidden_size, hidden_size]`
/// - `bias_ih`, `bias_hh`: `[3 * hidden_size]`
///
/// ```
/// use kiln_nn::{GRUCell, GRUCellConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let cell: GRUCell<f64> = GRUCellConfig::new(4, 2).build().unwrap();
/// let h = cell.forward(&Var::constant(Tensor::ones(&[4])), None); // unbatched
/// assert_eq!(h.shape().as_slice(), &[2]);
/// assert_eq!(cell.to_string(), "GRUCell(4, 2) [48 parameters]");
/// ```
pub type GRUCell<E = f32> = RecurrentCell<GRUCellConfig, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::recurrent::testing;
    use crate::{GRUConfig, LSTMConfig, RNNConfig, RNNNonlinearity};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    fn close(a: &Tensor<f64>, b: &Tensor<f64>) {
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.to_vec().iter().zip(b.to_vec()) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }

    #[test]
    fn golden_lstmcell() {
        let Some(c) = golden::load("rnn/lstmcell") else { return };
        let mut cell: LSTMCell<f64> = LSTMCellConfig {
            bias: testing::kw_bool(&c, "bias", true),
            ..LSTMCellConfig::new(c.usize("constructor_kwargs/input_size"), c.usize("constructor_kwargs/hidden_size"))
        }
        .build()
        .unwrap();
        cell.load_state_dict(&testing::state_dict(&c), true).unwrap();
        let (x, h0, c0) =
            (testing::input(&c, "x").unwrap(), testing::input(&c, "h0").unwrap(), testing::input(&c, "c0").unwrap());
        let (h1, c1) = cell.forward(&x, Some((&h0, &c0)));
        testing::check(&c, &[("h_1", &h1), ("c_1", &c1)], &[("x", &x), ("h0", &h0), ("c0", &c0)], &cell);
    }

    #[test]
    fn golden_grucell() {
        let Some(c) = golden::load("rnn/grucell") else { return };
        let mut cell: GRUCell<f64> = GRUCellConfig {
            bias: testing::kw_bool(&c, "bias", true),
            ..GRUCellConfig::new(c.usize("constructor_kwargs/input_size"), c.usize("constructor_kwargs/hidden_size"))
        }
        .build()
        .unwrap();
        cell.load_state_dict(&testing::state_dict(&c), true).unwrap();
        let (x, h0) = (testing::input(&c, "x").unwrap(), testing::input(&c, "h0").unwrap());
        let h1 = cell.forward(&x, Some(&h0));
        testing::check(&c, &[("h_1", &h1)], &[("x", &x), ("h0", &h0)], &cell);
    }

    #[test]
    fn cells_unrolled_equal_the_layers() {
        let x = rand(&[4, 2, 3], 1);
        // RNN, both non-linearities
        for nl in [RNNNonlinearity::Tanh, RNNNonlinearity::Relu] {
            let layer = RNNConfig { nonlinearity: nl, ..RNNConfig::new(3, 5) }.build::<f64>().unwrap();
            let mut cell = RNNCellConfig { nonlinearity: nl, ..RNNCellConfig::new(3, 5) }.build::<f64>().unwrap();
            let sd: crate::StateDict<f64> =
                layer.state_dict().into_iter().map(|(k, v)| (k.trim_end_matches("_l0").to_string(), v)).collect();
            cell.load_state_dict(&sd, true).unwrap();
            let (out, _) = layer.forward(&Var::constant(x.clone()));
            let mut h: Option<Var<f64>> = None;
            for t in 0..4 {
                let hn = cell.forward(&Var::constant(x.select(0, t)), h.as_ref());
                close(&hn.value(), &out.value().select(0, t));
                h = Some(hn);
            }
        }
        // LSTM
        let layer = LSTMConfig::new(3, 5).build::<f64>().unwrap();
        let mut cell = LSTMCellConfig::new(3, 5).build::<f64>().unwrap();
        let sd: crate::StateDict<f64> =
            layer.state_dict().into_iter().map(|(k, v)| (k.trim_end_matches("_l0").to_string(), v)).collect();
        cell.load_state_dict(&sd, true).unwrap();
        let (out, (_, c_n)) = layer.forward(&Var::constant(x.clone()));
        let mut s: Option<(Var<f64>, Var<f64>)> = None;
        for t in 0..4 {
            let (h, c) = cell.forward(&Var::constant(x.select(0, t)), s.as_ref().map(|(h, c)| (h, c)));
            close(&h.value(), &out.value().select(0, t));
            s = Some((h, c));
        }
        close(&s.unwrap().1.value(), &c_n.value().select(0, 0));
        // GRU
        let layer = GRUConfig::new(3, 5).build::<f64>().unwrap();
        let mut cell = GRUCellConfig::new(3, 5).build::<f64>().unwrap();
        let sd: crate::StateDict<f64> =
            layer.state_dict().into_iter().map(|(k, v)| (k.trim_end_matches("_l0").to_string(), v)).collect();
        cell.load_state_dict(&sd, true).unwrap();
        let (out, _) = layer.forward(&Var::constant(x.clone()));
        let mut h: Option<Var<f64>> = None;
        for t in 0..4 {
            let hn = cell.forward(&Var::constant(x.select(0, t)), h.as_ref());
            close(&hn.value(), &out.value().select(0, t));
            h = Some(hn);
        }
    }

    #[test]
    fn gradcheck_every_cell() {
        let (x, h, c) = (rand(&[2, 3], 2), rand(&[2, 2], 3), rand(&[2, 2], 4));
        let rnn =
            RNNCellConfig { nonlinearity: RNNNonlinearity::Tanh, ..RNNCellConfig::new(3, 2) }.build::<f64>().unwrap();
        let lstm = LSTMCellConfig::new(3, 2).build::<f64>().unwrap();
        let gru = GRUCellConfig::new(3, 2).build::<f64>().unwrap();
        let params = |m: &dyn Module<f64>| m.parameters().iter().map(|p| p.value()).collect::<Vec<_>>();
        let mut inputs = vec![x.clone(), h.clone()];
        inputs.extend(params(&rnn));
        let r = gradcheck(
            |v| {
                let cell = RNNCell {
                    config: rnn.config.clone(),
                    weight_ih: v[2].clone(),
                    weight_hh: v[3].clone(),
                    bias_ih: Some(v[4].clone()),
                    bias_hh: Some(v[5].clone()),
                };
                cell.forward(&v[0], Some(&v[1]))
            },
            &inputs,
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "RNNCell {}", r.unwrap_err());
        let mut inputs = vec![x.clone(), h.clone(), c];
        inputs.extend(params(&lstm));
        let r = gradcheck(
            |v| {
                let cell = LSTMCell {
                    config: lstm.config.clone(),
                    weight_ih: v[3].clone(),
                    weight_hh: v[4].clone(),
                    bias_ih: Some(v[5].clone()),
                    bias_hh: Some(v[6].clone()),
                };
                let (h, c) = cell.forward(&v[0], Some((&v[1], &v[2])));
                Var::cat(&[h, c], 1)
            },
            &inputs,
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "LSTMCell {}", r.unwrap_err());
        let mut inputs = vec![x, h];
        inputs.extend(params(&gru));
        let r = gradcheck(
            |v| {
                let cell = GRUCell {
                    config: gru.config.clone(),
                    weight_ih: v[2].clone(),
                    weight_hh: v[3].clone(),
                    bias_ih: Some(v[4].clone()),
                    bias_hh: Some(v[5].clone()),
                };
                cell.forward(&v[0], Some(&v[1]))
            },
            &inputs,
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "GRUCell {}", r.unwrap_err());
    }

    #[test]
    fn config_errors_display_and_keys() {
        assert_eq!(
            LSTMCellConfig::new(0, 3).build::<f32>().err().unwrap().to_string(),
            "LSTMCell: input_size must be > 0, got 0"
        );
        assert_eq!(
            GRUCellConfig::new(3, 0).build::<f32>().err().unwrap().to_string(),
            "GRUCell: hidden_size must be > 0, got 0"
        );
        let r: RNNCell = RNNCellConfig { bias: false, nonlinearity: RNNNonlinearity::Relu, ..RNNCellConfig::new(4, 6) }
            .build()
            .unwrap();
        assert_eq!(r.to_string(), "RNNCell(4, 6, bias=false, nonlinearity=relu) [60 parameters]");
        let names: Vec<String> = r.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight_ih", "weight_hh"]);
        let l: LSTMCell = LSTMCell::new(4, 6);
        assert_eq!(l.to_string(), "LSTMCell(4, 6) [288 parameters]");
        let names: Vec<String> = l.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]);
        let g: GRUCell = GRUCellConfig { bias: false, ..GRUCellConfig::new(4, 5) }.build().unwrap();
        assert_eq!(g.to_string(), "GRUCell(4, 5, bias=false) [135 parameters]");
        // init bound 1/sqrt(hidden)
        let big: LSTMCell = LSTMCell::new(64, 100);
        assert!(big.weight_ih.value().abs().max_all() <= 0.1 && big.weight_ih.value().abs().max_all() > 0.099);
    }

    #[test]
    #[should_panic(
        expected = "LSTMCell: input of shape [2, 5] does not match the expected [batch, 4] (or unbatched [4])"
    )]
    fn wrong_input_panics_with_both_shapes() {
        let l: LSTMCell<f64> = LSTMCellConfig::new(4, 3).build().unwrap();
        let _ = l.forward(&Var::constant(Tensor::zeros(&[2, 5])), None);
    }

    #[test]
    #[should_panic(expected = "GRUCell: h of shape [3, 3] does not match the expected [2, 3] for input [2, 4]")]
    fn wrong_state_panics_with_both_shapes() {
        let g: GRUCell<f64> = GRUCellConfig::new(4, 3).build().unwrap();
        let _ = g.forward(&Var::constant(Tensor::zeros(&[2, 4])), Some(&Var::constant(Tensor::zeros(&[3, 3]))));
    }
}
