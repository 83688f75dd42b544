//! `GRU`: a multi-layer gated recurrent unit recurrence, weights laid out as PyTorch's.

use kiln_tensor::Float;

use super::recurrence::CellKind;
use super::recurrent::{HiddenStateOnly, Recurrent, RecurrentConfig, Spec};
use crate::error::NnError;

/// Configuration of a [`GRU`] (PyTorch's defaults: one layer, with biases, time-major,
/// no dropout, one direction; and no recurrent dropout).
#[derive(Clone, Debug, PartialEq)]
pub struct GRUConfig {
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers; layer `l > 0` reads the output of layer `l - 1`.
    pub num_layers: usize,
    /// Whether the layers have `bias_ih` and `bias_hh`.
    pub bias: bool,
    /// Input and output are `[batch, seq_len, features]` instead of `[seq_len, batch, features]`
    /// (the state `h_n` never is).
    pub batch_first: bool,
    /// Dropout probability on the output of every layer but the last, while training.
    pub dropout: f64,
    /// Whether each layer also runs backwards over the sequence, outputs concatenated.
    pub bidirectional: bool,
    /// Keras' `recurrent_dropout`: the probability of zeroing a unit of the hidden state fed
    /// to the recurrent product `W_hh h`, with one mask per sequence (the same at every step),
    /// while training. Not in PyTorch; 0 gives PyTorch's GRU.
    pub recurrent_dropout: f64,
}

impl GRUConfig {
    /// PyTorch's defaults for the given sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        GRUConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            recurrent_dropout: 0.0,
        }
    }

    /// Builds the layer, initialised from the init generator (see [`crate::init::manual_seed`]), in training mode.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size or `num_layers` is zero, or a dropout probability is
    /// outside `[0, 1]` (`GRU: num_layers must be > 0, got 0`).
    pub fn build<E: Float>(&self) -> Result<GRU<E>, NnError> {
        Recurrent::from_config(self)
    }
}

impl RecurrentConfig for GRUConfig {
    fn with_sizes(input_size: usize, hidden_size: usize) -> Self {
        Self::new(input_size, hidden_size)
    }
    fn spec(&self) -> Spec {
        Spec {
            kind: CellKind::Gru,
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            bias: self.bias,
            batch_first: self.batch_first,
            dropout: self.dropout,
            bidirectional: self.bidirectional,
            recurrent_dropout: self.recurrent_dropout,
            fused: false,
        }
    }
    super::recurrent::options_mut!();
}

impl HiddenStateOnly for GRUConfig {}

/// A multi-layer GRU, like `torch.nn.GRU`. For each layer and step:
///
/// ```text
/// r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
/// z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
/// n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
/// h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
/// ```
///
/// Layer `l > 0` reads layer `l - 1`'s output (with dropout `p = dropout` while training);
/// a bidirectional layer also runs from the last step to the first and concatenates the two
/// outputs `[forward, backward]` on the feature dimension.
///
/// With `lengths` ([`forward_with`](GRU::forward_with)), sequence `b` is `x[0..lengths[b], b]`
/// and the rest is padding: padded steps do not change its state, get zero gradient, and its
/// output there is 0; `h_n` is its state after its own last step (the reverse direction starts
/// at that step), as PyTorch's packed sequences give. [`last_valid_output`](crate::last_valid_output)
/// picks the output at each last step.
///
/// With `recurrent_dropout` (Keras'), while training, `h_{t-1}` in the `W_h· h_{t-1}` products
/// (not in the `z_t ⊙ h_{t-1}` term) is multiplied by one inverted-dropout mask per sequence
/// and direction, drawn once per forward from the layer's own generator.
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
/// [`all_weights`](GRU::all_weights), gate blocks r, z, n stacked on the rows; every one
/// U(-1/√hidden_size, 1/√hidden_size):
/// - `weight_ih_l{k}`: `[3 * hidden_size, input_size]` for k = 0, else
///   `[3 * hidden_size, num_directions * hidden_size]`
/// - `weight_hh_l{k}`: `[3 * hidden_size, hidden_size]`
/// - `bias_ih_l{k}`, `bias_hh_l{k}`: `[3 * hidden_size]`
///
/// A PyTorch `state_dict` loads unchanged.
///
/// ```
/// use kiln_nn::{GRUConfig, Module};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let gru = GRUConfig { batch_first: true, ..GRUConfig::new(8, 16) }.build::<f32>().unwrap();
/// let x = Var::constant(Tensor::zeros(&[4, 7, 8])); // [batch, seq_len, input_size]
/// let (output, h_n) = gru.forward(&x);
/// assert_eq!(output.shape().as_slice(), &[4, 7, 16]);
/// assert_eq!(h_n.shape().as_slice(), &[1, 4, 16]);
/// assert_eq!(gru.to_string(), "GRU(8, 16, batch_first=true) [1248 parameters]");
/// ```
pub type GRU<E = f32> = Recurrent<GRUConfig, E>;

impl<E: Float> GRU<E> {
    /// Sets Keras' `recurrent_dropout` (see [`GRUConfig::recurrent_dropout`]), keeping the
    /// parameters (a builder: `GRU::new(8, 16).batch_first(true).recurrent_dropout(0.2)`).
    ///
    /// **Panics** on a combination [`GRUConfig::build`] rejects
    /// (`GRU: recurrent_dropout must be in [0, 1], got 1.5`).
    #[must_use]
    pub fn recurrent_dropout(self, recurrent_dropout: f64) -> Self {
        self.with_config(|c| c.recurrent_dropout = recurrent_dropout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::recurrent::testing;
    use crate::Module;
    use kiln_autograd::{gradcheck, Var};
    use kiln_tensor::{Rng, Tensor};

    fn seeded(cfg: &GRUConfig, seed: u64) -> GRU<f64> {
        let g: GRU<f64> = cfg.build().unwrap();
        let mut rng = Rng::new(seed);
        for w in &g.all_weights {
            w.reset(cfg.hidden_size, &mut rng);
        }
        g
    }

    fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn builder_setters_equal_the_config_build() {
        crate::init::manual_seed(33);
        let a = GRU::<f64>::new_generic(3, 4).bias(false).num_layers(2).dropout(0.5).bidirectional(true);
        let a = a.batch_first(true).recurrent_dropout(0.25);
        crate::init::manual_seed(33);
        let b: GRU<f64> = GRUConfig {
            num_layers: 2,
            bidirectional: true,
            batch_first: true,
            dropout: 0.5,
            bias: false,
            recurrent_dropout: 0.25,
            ..GRUConfig::new(3, 4)
        }
        .build()
        .unwrap();
        assert_eq!(a.config, b.config);
        assert_eq!(crate::Module::state_dict(&a), crate::Module::state_dict(&b));
        assert_eq!(*a.rng.lock().unwrap(), *b.rng.lock().unwrap());
    }

    #[test]
    #[should_panic(expected = "GRU: dropout must be in [0, 1], got -0.5")]
    fn setter_panics_with_the_config_message() {
        let _ = GRU::new(3, 4).dropout(-0.5);
    }

    #[test]
    fn output_shapes_and_keys() {
        let cfg = GRUConfig { num_layers: 3, bidirectional: true, ..GRUConfig::new(3, 4) };
        let g = seeded(&cfg, 1);
        let (out, h) = g.forward(&Var::constant(rand(&[5, 2, 3], 2)));
        assert_eq!(out.shape().as_slice(), &[5, 2, 8]);
        assert_eq!(h.shape().as_slice(), &[6, 2, 4]);
        let (ou, hu) = g.forward(&Var::constant(rand(&[5, 3], 3)));
        assert_eq!((ou.shape().as_slice(), hu.shape().as_slice()), (&[5usize, 8][..], &[6usize, 4][..]));
        assert_eq!(g.named_parameters().len(), 24);
        assert_eq!(g.named_parameters()[23].0, "bias_hh_l2_reverse");
        assert_eq!(g.weights(2, true).weight_ih.shape().as_slice(), &[12, 8]);
    }

    #[test]
    fn config_errors_and_display() {
        let e = |c: GRUConfig| c.build::<f32>().err().unwrap().to_string();
        assert_eq!(e(GRUConfig { num_layers: 0, ..GRUConfig::new(3, 4) }), "GRU: num_layers must be > 0, got 0");
        assert_eq!(e(GRUConfig { dropout: -0.5, ..GRUConfig::new(3, 4) }), "GRU: dropout must be in [0, 1], got -0.5");
        let g: GRU = GRU::new(40, 24);
        // 72 x 40 + 72 x 24 + 2 x 72
        assert_eq!(g.to_string(), "GRU(40, 24) [4752 parameters]");
        let g: GRU = GRUConfig { num_layers: 2, bidirectional: true, recurrent_dropout: 0.2, ..GRUConfig::new(4, 5) }
            .build()
            .unwrap();
        assert_eq!(
            g.to_string(),
            "GRU(4, 5, num_layers=2, bidirectional=true, recurrent_dropout=0.2) [840 parameters]"
        );
    }

    #[test]
    #[should_panic(
        expected = "GRU: input of shape [2, 5, 3, 1] does not match the expected [seq_len, batch, input_size] = [*, *, 3]"
    )]
    fn wrong_rank_panics_with_both_shapes() {
        let g: GRU<f64> = GRUConfig::new(3, 2).build().unwrap();
        let _ = g.forward(&Var::constant(Tensor::zeros(&[2, 5, 3, 1])));
    }

    #[test]
    #[should_panic(expected = "GRU: h0 of shape [1, 2, 2] does not match the expected [2, 2, 2]")]
    fn wrong_h0_panics_with_both_shapes() {
        let g: GRU<f64> = GRUConfig { bidirectional: true, ..GRUConfig::new(3, 2) }.build().unwrap();
        let h0 = Var::constant(Tensor::zeros(&[1, 2, 2]));
        let _ = g.forward_with(&Var::constant(Tensor::zeros(&[4, 2, 3])), Some(&h0), None);
    }

    #[test]
    fn init_bounds_match_pytorch() {
        let Some(c) = golden::load("init/gru") else { return };
        crate::layers::conv::testing::check_init(&c, &gru_from(&c));
    }

    /// A GRU from the case's constructor arguments (PyTorch's defaults where absent).
    fn gru_from(c: &golden::Case) -> GRU<f64> {
        GRUConfig {
            num_layers: c.usize_or("constructor_kwargs/num_layers", 1),
            bias: c.bool_or("constructor_kwargs/bias", true),
            batch_first: c.bool_or("constructor_kwargs/batch_first", false),
            bidirectional: c.bool_or("constructor_kwargs/bidirectional", false),
            ..GRUConfig::new(c.usize("constructor_kwargs/input_size"), c.usize("constructor_kwargs/hidden_size"))
        }
        .build()
        .unwrap()
    }

    #[test]
    fn golden_gru_2layer_bidir() {
        let Some(c) = golden::load("rnn/gru_2layer_bidir") else { return };
        let mut g = gru_from(&c);
        g.load_state_dict(&testing::state_dict(&c), true).unwrap();
        let x = testing::input(&c, "x").unwrap();
        let h0 = testing::input(&c, "h0");
        let (out, h_n) = g.forward_with(&x, h0.as_ref(), testing::lengths(&c).as_deref());
        let mut inputs = vec![("x", &x)];
        if let Some(h) = &h0 {
            inputs.push(("h0", h));
        }
        testing::check(&c, &[("output", &out), ("h_n", &h_n)], &inputs, &g);
    }

    #[test]
    fn gradcheck_tiny_bidirectional_with_lengths_and_h0() {
        let cfg = GRUConfig { num_layers: 2, bidirectional: true, batch_first: true, ..GRUConfig::new(2, 2) };
        let base = seeded(&cfg, 4);
        let mut inputs = vec![rand(&[2, 3, 2], 5), rand(&[4, 2, 2], 6)];
        inputs.extend(base.parameters().iter().map(|p| p.value()));
        let f = |v: &[Var<f64>]| {
            let mut g: GRU<f64> = cfg.build().unwrap();
            let mut ps = v[2..].iter();
            for w in &mut g.all_weights {
                w.weight_ih = ps.next().unwrap().clone();
                w.weight_hh = ps.next().unwrap().clone();
                w.bias_ih = Some(ps.next().unwrap().clone());
                w.bias_hh = Some(ps.next().unwrap().clone());
            }
            let (o, h) = g.forward_with(&v[0], Some(&v[1]), Some(&[1, 3]));
            Var::cat(&[o.reshape(&[24]), h.reshape(&[16])], 0)
        };
        let r = gradcheck(f, &inputs, 1e-6, 1e-8, 1e-6);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn lengths_match_running_each_sequence_alone() {
        let cfg = GRUConfig { bidirectional: true, ..GRUConfig::new(3, 4) };
        let g = seeded(&cfg, 7);
        let x = rand(&[5, 3, 3], 8);
        let h0 = rand(&[2, 3, 4], 9);
        let lengths = [2, 5, 0];
        let (out, h) = g.forward_with(&Var::constant(x.clone()), Some(&Var::constant(h0.clone())), Some(&lengths));
        for (b, &n) in lengths.iter().enumerate() {
            let hb0 = h0.select(1, b).unsqueeze(1).contiguous();
            if n == 0 {
                assert_eq!(h.value().select(1, b).to_vec(), hb0.to_vec(), "length 0 keeps h0");
                continue;
            }
            let xb = Var::constant(x.select(1, b).narrow(0, 0, n).unsqueeze(1).contiguous());
            let (ob, hb) = g.forward_with(&xb, Some(&Var::constant(hb0)), None);
            let got = out.value().select(1, b);
            for (a, e) in got.narrow(0, 0, n).to_vec().iter().zip(ob.value().to_vec()) {
                assert!((a - e).abs() < 1e-12);
            }
            for (a, e) in h.value().select(1, b).to_vec().iter().zip(hb.value().to_vec()) {
                assert!((a - e).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn recurrent_dropout_masks_the_recurrent_product_only_while_training() {
        let cfg = GRUConfig { recurrent_dropout: 1.0, ..GRUConfig::new(2, 3) };
        let mut g = seeded(&cfg, 10);
        let x = Var::constant(rand(&[4, 2, 2], 11));
        // p = 1 zeroes h in W_hh h (b_hh stays): the same as a zero W_hh
        let plain = seeded(&GRUConfig::new(2, 3), 10);
        plain.all_weights[0].weight_hh.set_value(Tensor::zeros(&[9, 3]));
        assert_eq!(g.forward(&x).0.value().to_vec(), plain.forward(&x).0.value().to_vec());
        g.eval();
        assert_eq!(g.forward(&x).0.value().to_vec(), seeded(&GRUConfig::new(2, 3), 10).forward(&x).0.value().to_vec());
    }

    #[test]
    fn tiny_overfit_sign_of_the_sum() {
        // GRU + linear read-out of h_n learns the sign of a sequence's sum on 16 sequences
        let g = seeded(&GRUConfig::new(1, 6), 12);
        let head = crate::LinearConfig::new(6, 1).build::<f64>().unwrap();
        let mut rng = Rng::new(13);
        head.weight.set_value(Tensor::uniform(&[1, 6], -0.4, 0.4, &mut rng));
        head.bias.as_ref().unwrap().set_value(Tensor::zeros(&[1]));
        let x = Tensor::<f64>::uniform(&[5, 16, 1], -1.0, 1.0, &mut rng);
        let sign: Vec<f64> = x.sum(&[0], false).to_vec().iter().map(|&s| if s > 0.0 { 1.0 } else { -1.0 }).collect();
        let y = Var::constant(Tensor::from_vec(sign.clone(), &[16, 1]));
        let x = Var::constant(x);
        let mut params = g.parameters();
        params.extend(head.parameters());
        let mut state = Vec::new();
        let mut pred = Vec::new();
        for step in 1..=300 {
            params.iter().for_each(|p| p.zero_grad());
            let (_, h_n) = g.forward(&x);
            let p = crate::Forward::forward(&head, &h_n.select(0, 0)).tanh();
            let d = p.sub(&y);
            let lv = d.mul(&d).mean(&[], false);
            pred = p.value().to_vec();
            lv.backward();
            testing::adam_step(&params, &mut state, step, 0.05);
        }
        let correct = pred.iter().zip(&sign).filter(|(p, s)| p.signum() == **s).count();
        assert_eq!(correct, 16, "{pred:?} vs {sign:?}");
    }
}
