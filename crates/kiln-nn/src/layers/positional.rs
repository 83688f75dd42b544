//! Positional information for attention models, which are otherwise blind to order:
//! `SinusoidalPositionalEncoding` (fixed, "Attention is all you need" §3.5) and
//! `LearnedPositionalEmbedding` (a trained table, as in BERT/GPT), both `y = x + P[:L]`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};

use crate::error::NnError;
use crate::init;
use crate::{Forward, Module};

/// The sinusoidal table `[max_len, d_model]` of Vaswani et al. (2017), §3.5:
///
/// `PE(pos, 2i) = sin(pos / 10000^(2i / d_model))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))`
///
/// computed as in PyTorch's Transformer tutorial (`div_term = exp(2i · -ln(10000) / d_model)`),
/// in f64 and rounded once. An odd `d_model` ends with a sine column.
///
/// ```
/// use kiln_nn::sinusoidal_encoding;
/// let pe = sinusoidal_encoding::<f64>(4, 6);
/// assert_eq!(pe.shape(), &[4, 6]);
/// assert_eq!(pe.get(&[0, 0]), 0.0); // sin(0)
/// assert_eq!(pe.get(&[0, 1]), 1.0); // cos(0)
/// assert!((pe.get(&[3, 0]) - 3f64.sin()).abs() < 1e-15);
/// assert!((pe.get(&[2, 3]) - (2.0 / 10000f64.powf(2.0 / 6.0)).cos()).abs() < 1e-15);
/// ```
pub fn sinusoidal_encoding<E: Float>(max_len: usize, d_model: usize) -> Tensor<E> {
    let mut data = Vec::with_capacity(max_len * d_model);
    for pos in 0..max_len {
        for j in 0..d_model {
            let i2 = (j - j % 2) as f64;
            let angle = pos as f64 * (i2 * -(10000f64.ln()) / d_model as f64).exp();
            data.push(E::from_f64(if j % 2 == 0 { angle.sin() } else { angle.cos() }));
        }
    }
    Tensor::from_vec(data, &[max_len, d_model])
}

/// Checks `x`'s shape (`[L, N, d]`, `[N, L, d]` with `batch_first`, or `[L, d]`) and returns
/// its length `L` and whether the table's `[L, d]` rows need a batch axis inserted
/// (`[L, 1, d]`, for a sequence-first 3-D input) to broadcast against it.
fn positions_for(layer: &str, x_shape: &[usize], max_len: usize, d_model: usize, batch_first: bool) -> (usize, bool) {
    assert!(
        (x_shape.len() == 3 || x_shape.len() == 2) && x_shape[x_shape.len() - 1] == d_model,
        "{layer}: input {x_shape:?} must be [L, N, {d_model}], [N, L, {d_model}] (batch_first) or [L, {d_model}]"
    );
    let seq_dim = if x_shape.len() == 3 && batch_first { 1 } else { 0 };
    let l = x_shape[seq_dim];
    assert!(l <= max_len, "{layer}: input {x_shape:?} has sequence length {l} > max_len {max_len}");
    // seq-first 3-D input needs [L, 1, d]; the others broadcast [L, d] as it is
    (l, x_shape.len() == 3 && !batch_first)
}

fn check_sizes(layer: &str, max_len: usize, d_model: usize) -> Result<(), NnError> {
    for (what, v) in [("max_len", max_len), ("d_model", d_model)] {
        if v == 0 {
            return Err(NnError::Config(format!("{layer}: {what} must be > 0, got 0")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sinusoidal

/// Configuration of a [`SinusoidalPositionalEncoding`] (defaults of PyTorch's tutorial:
/// `max_len` 5000, sequence-first inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct SinusoidalPositionalEncodingConfig {
    /// The longest sequence the table covers.
    pub max_len: usize,
    /// Model size (the input's last dimension).
    pub d_model: usize,
    /// Inputs are `[N, L, d_model]` when true, `[L, N, d_model]` otherwise.
    pub batch_first: bool,
}

impl SinusoidalPositionalEncodingConfig {
    /// A sequence-first configuration with `max_len` 5000.
    pub fn new(d_model: usize) -> Self {
        SinusoidalPositionalEncodingConfig { max_len: 5000, d_model, batch_first: false }
    }

    /// Builds the layer (computing its table).
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero.
    pub fn build<E: Float>(&self) -> Result<SinusoidalPositionalEncoding<E>, NnError> {
        check_sizes("SinusoidalPositionalEncoding", self.max_len, self.d_model)?;
        Ok(SinusoidalPositionalEncoding { config: self.clone(), pe: sinusoidal_encoding(self.max_len, self.d_model) })
    }
}

/// Adds the fixed sinusoidal encoding of each position ([`sinusoidal_encoding`]):
/// `y[pos] = x[pos] + PE(pos)`, as the `PositionalEncoding` of PyTorch's Transformer tutorial
/// (without its dropout: follow it with a [`Dropout`](crate::Dropout) for that). Scaling the
/// embeddings by `√d_model` first, as the paper does, is up to the caller.
///
/// The table is computed, not learned or saved: the layer has no parameters and no
/// `state_dict` entries.
///
/// # Shapes
/// - Input: `[L, N, d_model]`, `[N, L, d_model]` with `batch_first`, or `[L, d_model]`,
///   with `L <= max_len`
/// - Output: the input's shape
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` when the input is longer than `max_len` or does not end in
/// `d_model`.
///
/// ```
/// use kiln_nn::{Forward, SinusoidalPositionalEncoding, SinusoidalPositionalEncodingConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let pe: SinusoidalPositionalEncoding<f64> = SinusoidalPositionalEncodingConfig::new(16).build().unwrap();
/// let x = Var::constant(Tensor::zeros(&[10, 3, 16])); // [L, N, d_model]
/// let y = pe.forward(&x).value();
/// assert_eq!(y.shape(), &[10, 3, 16]);
/// assert!((y.get(&[2, 1, 0]) - 2f64.sin()).abs() < 1e-15); // every batch element gets PE(pos)
/// assert_eq!(pe.to_string(), "SinusoidalPositionalEncoding(max_len=5000, d_model=16, batch_first=false) [0 parameters]");
/// ```
#[derive(Module)]
pub struct SinusoidalPositionalEncoding<E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: SinusoidalPositionalEncodingConfig,
    /// The table `[max_len, d_model]` (a constant: neither a parameter nor saved, as PyTorch's
    /// non-persistent buffer).
    #[module(skip)]
    pub pe: Tensor<E>,
}

impl SinusoidalPositionalEncoding<f32> {
    /// A sequence-first layer for `d_model` features and sequences up to 5000 long.
    ///
    /// **Panics** if `d_model` is zero (use [`SinusoidalPositionalEncodingConfig::build`] for a
    /// `Result`).
    ///
    /// In `f32`; any element type through [`SinusoidalPositionalEncoding::new_generic`].
    pub fn new(d_model: usize) -> Self {
        Self::new_generic(d_model)
    }
}

impl<E: Float> SinusoidalPositionalEncoding<E> {
    /// [`SinusoidalPositionalEncoding::new`] in any element type: `SinusoidalPositionalEncoding::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`SinusoidalPositionalEncoding::new`] does.
    pub fn new_generic(d_model: usize) -> Self {
        SinusoidalPositionalEncodingConfig::new(d_model).build().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<E: Float> Forward<E> for SinusoidalPositionalEncoding<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let (l, seq_first) =
            positions_for("SinusoidalPositionalEncoding", &x.shape(), c.max_len, c.d_model, c.batch_first);
        let p = self.pe.narrow(0, 0, l);
        let p = if seq_first { p.unsqueeze(1) } else { p };
        x.add(&Var::constant(p))
    }
}

impl<E: Float> fmt::Display for SinusoidalPositionalEncoding<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "SinusoidalPositionalEncoding(max_len={}, d_model={}, batch_first={}) [0 parameters]",
            c.max_len, c.d_model, c.batch_first
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Learned

/// Configuration of a [`LearnedPositionalEmbedding`] (sequence-first by default, as PyTorch's
/// Transformer layers).
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedPositionalEmbeddingConfig {
    /// The longest sequence (rows of the table).
    pub max_len: usize,
    /// Model size (the input's last dimension).
    pub d_model: usize,
    /// Inputs are `[N, L, d_model]` when true, `[L, N, d_model]` otherwise.
    pub batch_first: bool,
}

impl LearnedPositionalEmbeddingConfig {
    /// A sequence-first configuration.
    pub fn new(max_len: usize, d_model: usize) -> Self {
        LearnedPositionalEmbeddingConfig { max_len, d_model, batch_first: false }
    }

    /// Builds the layer, initialised from the init generator (see [`crate::init::manual_seed`]).
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero.
    pub fn build<E: Float>(&self) -> Result<LearnedPositionalEmbedding<E>, NnError> {
        check_sizes("LearnedPositionalEmbedding", self.max_len, self.d_model)?;
        let l = LearnedPositionalEmbedding {
            config: self.clone(),
            weight: Var::param(Tensor::zeros(&[self.max_len, self.d_model])),
        };
        l.reset_parameters();
        Ok(l)
    }
}

/// Adds a learned vector per position: `y[pos] = x[pos] + W[pos]`, the table being an
/// `nn.Embedding(max_len, d_model)` looked up with `0..L` (BERT's and GPT's position
/// embeddings). Only the first `L` rows receive gradient.
///
/// # Shapes
/// - Input: `[L, N, d_model]`, `[N, L, d_model]` with `batch_first`, or `[L, d_model]`,
///   with `L <= max_len`
/// - Output: the input's shape
///
/// # Parameters
/// - `weight`: `[max_len, d_model]`, N(0, 1) (as `nn.Embedding`'s)
///
/// **Panics** in `forward` when the input is longer than `max_len` or does not end in
/// `d_model`.
///
/// ```
/// use kiln_nn::{Forward, LearnedPositionalEmbedding, LearnedPositionalEmbeddingConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let pos: LearnedPositionalEmbedding<f64> =
///     LearnedPositionalEmbeddingConfig { batch_first: true, ..LearnedPositionalEmbeddingConfig::new(32, 8) }.build().unwrap();
/// let x = Var::constant(Tensor::zeros(&[2, 5, 8])); // [N, L, d_model]
/// let y = pos.forward(&x);
/// assert_eq!(y.value().select(0, 1).to_vec(), pos.weight.value().narrow(0, 0, 5).to_vec());
/// y.sum_all().backward();
/// let g = pos.weight.grad().unwrap();
/// assert_eq!(g.get(&[4, 0]), 2.0); // both batch elements used position 4
/// assert_eq!(g.get(&[5, 0]), 0.0); // position 5 was not used
/// assert_eq!(pos.to_string(), "LearnedPositionalEmbedding(max_len=32, d_model=8, batch_first=true) [256 parameters]");
/// ```
#[derive(Module)]
pub struct LearnedPositionalEmbedding<E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: LearnedPositionalEmbeddingConfig,
    /// `[max_len, d_model]`: row `pos` is added at position `pos`.
    pub weight: Var<E>,
}

impl LearnedPositionalEmbedding<f32> {
    /// A sequence-first layer.
    ///
    /// **Panics** if a size is zero (use [`LearnedPositionalEmbeddingConfig::build`] for a
    /// `Result`).
    ///
    /// In `f32`; any element type through [`LearnedPositionalEmbedding::new_generic`].
    pub fn new(max_len: usize, d_model: usize) -> Self {
        Self::new_generic(max_len, d_model)
    }
}

impl<E: Float> LearnedPositionalEmbedding<E> {
    /// [`LearnedPositionalEmbedding::new`] in any element type: `LearnedPositionalEmbedding::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`LearnedPositionalEmbedding::new`] does.
    pub fn new_generic(max_len: usize, d_model: usize) -> Self {
        LearnedPositionalEmbeddingConfig::new(max_len, d_model).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Re-draws the table from N(0, 1), as `nn.Embedding` does.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::normal_(&self.weight, 0.0, 1.0, rng));
    }
}

impl<E: Float> Forward<E> for LearnedPositionalEmbedding<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let (l, seq_first) =
            positions_for("LearnedPositionalEmbedding", &x.shape(), c.max_len, c.d_model, c.batch_first);
        let p = self.weight.narrow(0, 0, l);
        let p = if seq_first { p.unsqueeze(1) } else { p };
        x.add(&p)
    }
}

impl<E: Float> fmt::Display for LearnedPositionalEmbedding<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "LearnedPositionalEmbedding(max_len={}, d_model={}, batch_first={}) [{} parameters]",
            c.max_len,
            c.d_model,
            c.batch_first,
            self.num_parameters()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    #[test]
    fn table_matches_the_paper() {
        let d = 8;
        let pe = sinusoidal_encoding::<f64>(50, d);
        for pos in [0usize, 1, 7, 49] {
            for i in 0..d / 2 {
                let a = pos as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
                assert!((pe.get(&[pos, 2 * i]) - a.sin()).abs() < 1e-12);
                assert!((pe.get(&[pos, 2 * i + 1]) - a.cos()).abs() < 1e-12);
            }
        }
        // odd d_model: the last column is a sine
        let odd = sinusoidal_encoding::<f64>(3, 5);
        assert!((odd.get(&[2, 4]) - (2.0 / 10000f64.powf(4.0 / 5.0)).sin()).abs() < 1e-12);
    }

    #[test]
    fn layouts_agree_and_errors() {
        let sf: SinusoidalPositionalEncoding<f64> = SinusoidalPositionalEncodingConfig::new(4).build().unwrap();
        let bf: SinusoidalPositionalEncoding<f64> =
            SinusoidalPositionalEncodingConfig { batch_first: true, ..SinusoidalPositionalEncodingConfig::new(4) }
                .build()
                .unwrap();
        let x = Tensor::<f64>::uniform(&[2, 3, 4], -1.0, 1.0, &mut Rng::new(1)); // [N, L, d]
        let a = bf.forward(&Var::constant(x.clone())).value();
        let b = sf.forward(&Var::constant(x.transpose(0, 1))).value().transpose(0, 1);
        assert_eq!(a.to_vec(), b.contiguous().to_vec());
        let u = sf.forward(&Var::constant(x.select(0, 1))).value(); // unbatched [L, d]
        assert_eq!(u.to_vec(), a.select(0, 1).to_vec());
        assert!(Module::<f64>::named_parameters(&sf).is_empty());
        assert_eq!(
            LearnedPositionalEmbeddingConfig::new(0, 4).build::<f32>().err().unwrap().to_string(),
            "LearnedPositionalEmbedding: max_len must be > 0, got 0"
        );
        assert_eq!(
            SinusoidalPositionalEncodingConfig::new(0).build::<f32>().err().unwrap().to_string(),
            "SinusoidalPositionalEncoding: d_model must be > 0, got 0"
        );
    }

    #[test]
    #[should_panic(expected = "LearnedPositionalEmbedding: input [6, 2, 4] has sequence length 6 > max_len 5")]
    fn too_long_panics() {
        let p: LearnedPositionalEmbedding = LearnedPositionalEmbedding::new(5, 4);
        let _ = p.forward(&Var::constant(Tensor::zeros(&[6, 2, 4])));
    }

    #[test]
    #[should_panic(expected = "SinusoidalPositionalEncoding: input [6, 2, 3] must be [L, N, 4]")]
    fn wrong_width_panics() {
        let p: SinusoidalPositionalEncoding = SinusoidalPositionalEncoding::new(4);
        let _ = p.forward(&Var::constant(Tensor::zeros(&[6, 2, 3])));
    }

    #[test]
    fn learned_gradcheck_and_init() {
        init::manual_seed(1);
        let p: LearnedPositionalEmbedding<f64> = LearnedPositionalEmbeddingConfig::new(4, 3).build().unwrap();
        let w = p.weight.value();
        let (mean, std) = (w.mean(&[], false).item(), w.std(&[], 1, false).item());
        assert!(mean.abs() < 1.0 && std > 0.4 && std < 1.8, "{mean} {std}"); // N(0, 1), 12 draws
        let cfg = p.config.clone();
        let x = Tensor::uniform(&[3, 2, 3], -1.0, 1.0, &mut Rng::new(2));
        let r = gradcheck(
            |v| LearnedPositionalEmbedding { config: cfg.clone(), weight: v[1].clone() }.forward(&v[0]).powf(2.0),
            &[x, w],
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn learned_tiny_overfit() {
        // The table alone can store any per-position target.
        init::manual_seed(4);
        let p: LearnedPositionalEmbedding<f64> = LearnedPositionalEmbeddingConfig::new(6, 2).build().unwrap();
        let target = Var::constant(Tensor::uniform(&[5, 1, 2], -2.0, 2.0, &mut Rng::new(3)));
        let x = Var::constant(Tensor::zeros(&[5, 3, 2]));
        let mut loss = f64::MAX;
        for _ in 0..200 {
            p.zero_grad();
            let d = p.forward(&x).sub(&target);
            let l = d.mul(&d).mean(&[], false);
            loss = l.item();
            l.backward();
            let g = p.weight.grad().unwrap();
            p.weight.update_value(|w| w.axpy_(-2.0, &g));
        }
        assert!(loss < 1e-10, "{loss}");
    }
}
