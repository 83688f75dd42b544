//! The Transformer of "Attention is all you need" (Vaswani et al., 2017), as PyTorch builds
//! it: `TransformerEncoderLayer`, `TransformerEncoder`, `TransformerDecoderLayer`,
//! `TransformerDecoder` and `Transformer`, with post-norm (the paper's) or pre-norm
//! (`norm_first`) residual blocks.
//!
//! Parameter names are PyTorch's (`layers.0.self_attn.in_proj_weight`,
//! `decoder.layers.1.multihead_attn.out_proj.bias`, `encoder.norm.weight`, ...), so a PyTorch
//! `state_dict` loads unchanged. Boolean masks follow [`MultiheadAttention`]'s convention:
//! **true = masked out**.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::error::NnError;
use crate::init;
use crate::layers::attention::{causal_mask, AttnMask, MultiheadAttention, MultiheadAttentionConfig};
use crate::layers::dropout::Dropout;
use crate::layers::linear::{Linear, LinearConfig};
use crate::layers::norm::{LayerNorm, LayerNormConfig};
use crate::module::{Forward, Module, TensorKind};

/// The feed-forward activation of a Transformer layer (PyTorch's `activation="relu"|"gelu"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransformerActivation {
    /// `max(0, x)` (PyTorch's default).
    #[default]
    Relu,
    /// GELU, exact erf form (`F.gelu`).
    Gelu,
}

impl TransformerActivation {
    fn apply<E: Float>(self, x: &Var<E>) -> Var<E> {
        match self {
            TransformerActivation::Relu => x.relu(),
            TransformerActivation::Gelu => x.gelu(),
        }
    }
}

impl fmt::Display for TransformerActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransformerActivation::Relu => "relu",
            TransformerActivation::Gelu => "gelu",
        })
    }
}

/// The hyper-parameters every Transformer layer shares, checked once.
fn check_layer(
    layer: &str,
    d_model: usize,
    nhead: usize,
    dim_feedforward: usize,
    dropout: f64,
    eps: f64,
) -> Result<(), NnError> {
    for (what, v) in [("d_model", d_model), ("nhead", nhead), ("dim_feedforward", dim_feedforward)] {
        if v == 0 {
            return Err(NnError::Config(format!("{layer}: {what} must be > 0, got 0")));
        }
    }
    if d_model % nhead != 0 {
        return Err(NnError::Config(format!(
            "{layer}: d_model must be divisible by nhead, got d_model={d_model}, nhead={nhead}"
        )));
    }
    if !(0.0..=1.0).contains(&dropout) {
        return Err(NnError::Config(format!("{layer}: dropout must be in [0, 1], got {dropout}")));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(NnError::Config(format!("{layer}: layer_norm_eps must be finite and >= 0, got {eps}")));
    }
    Ok(())
}

/// The pieces every layer is made of, from the shared hyper-parameters.
struct Parts {
    d_model: usize,
    nhead: usize,
    dim_feedforward: usize,
    dropout: f64,
    eps: f64,
    batch_first: bool,
    bias: bool,
}

impl Parts {
    fn attention<E: Float>(&self) -> Result<MultiheadAttention<E>, NnError> {
        MultiheadAttentionConfig {
            dropout: self.dropout,
            bias: self.bias,
            batch_first: self.batch_first,
            ..MultiheadAttentionConfig::new(self.d_model, self.nhead)
        }
        .build()
    }
    fn linear<E: Float>(&self, i: usize, o: usize) -> Result<Linear<E>, NnError> {
        LinearConfig { bias: self.bias, ..LinearConfig::new(i, o) }.build()
    }
    fn norm<E: Float>(&self) -> Result<LayerNorm<E>, NnError> {
        LayerNormConfig { eps: self.eps, bias: self.bias, ..LayerNormConfig::new(&[self.d_model]) }.build()
    }
    fn dropout(&self) -> Result<Dropout, NnError> {
        Dropout::try_new(self.dropout)
    }
}

/// Writes the shared hyper-parameters as PyTorch-like `key=value` pairs.
fn write_hyper(
    f: &mut fmt::Formatter<'_>,
    d_model: usize,
    nhead: usize,
    dim_feedforward: usize,
    dropout: f64,
    activation: TransformerActivation,
    eps: f64,
    batch_first: bool,
    norm_first: bool,
) -> fmt::Result {
    write!(
        f,
        "d_model={d_model}, nhead={nhead}, dim_feedforward={dim_feedforward}, dropout={dropout:?}, \
         activation={activation}, layer_norm_eps={eps:?}, batch_first={batch_first}, norm_first={norm_first}"
    )
}

/// A fresh copy of `layer` with the same parameter values (PyTorch's `copy.deepcopy` in
/// `_get_clones`): built from its configuration, then loaded with its state.
fn deep_copy<E: Float, L: Module<E>>(layer: &L, build: impl Fn() -> Result<L, NnError>) -> Result<L, NnError> {
    let mut copy = build()?;
    copy.load_state_dict(&layer.state_dict(), true)?;
    copy.set_training(layer.is_training());
    Ok(copy)
}

/// Which dimension of a `[N, T, E]` (`batch_first`) or `[T, N, E]` input is the batch's
/// (0 for an unbatched `[T, E]` one).
fn batch_dim(batch_first: bool, ndim: usize) -> usize {
    if ndim == 3 && !batch_first {
        1
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// TransformerEncoderLayer

/// Configuration of a [`TransformerEncoderLayer`] (PyTorch's defaults: `dim_feedforward`
/// 2048, dropout 0.1, ReLU, `layer_norm_eps` 1e-5, sequence-first, post-norm, biases).
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerEncoderLayerConfig {
    /// Model size `E`.
    pub d_model: usize,
    /// Number of attention heads (must divide `d_model`).
    pub nhead: usize,
    /// Width of the feed-forward block.
    pub dim_feedforward: usize,
    /// Dropout after attention, inside and after the feed-forward block, and on the attention
    /// weights (training only).
    pub dropout: f64,
    /// The feed-forward activation.
    pub activation: TransformerActivation,
    /// The layer norms' ε.
    pub layer_norm_eps: f64,
    /// Inputs are `[N, S, E]` when true, `[S, N, E]` otherwise.
    pub batch_first: bool,
    /// Pre-norm (`x + SA(norm1(x))`) when true, post-norm (`norm1(x + SA(x))`) otherwise.
    pub norm_first: bool,
    /// Whether linear layers and layer norms have biases.
    pub bias: bool,
}

impl TransformerEncoderLayerConfig {
    /// PyTorch's defaults for `d_model` and `nhead`.
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerEncoderLayerConfig {
            d_model,
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: TransformerActivation::Relu,
            layer_norm_eps: 1e-5,
            batch_first: false,
            norm_first: false,
            bias: true,
        }
    }

    fn parts(&self) -> Parts {
        Parts {
            d_model: self.d_model,
            nhead: self.nhead,
            dim_feedforward: self.dim_feedforward,
            dropout: self.dropout,
            eps: self.layer_norm_eps,
            batch_first: self.batch_first,
            bias: self.bias,
        }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero, `d_model` is not divisible by `nhead`,
    /// `dropout` is outside `[0, 1]` or `layer_norm_eps` is negative.
    pub fn build<E: Float>(&self) -> Result<TransformerEncoderLayer<E>, NnError> {
        check_layer(
            "TransformerEncoderLayer",
            self.d_model,
            self.nhead,
            self.dim_feedforward,
            self.dropout,
            self.layer_norm_eps,
        )?;
        let p = self.parts();
        Ok(TransformerEncoderLayer {
            config: self.clone(),
            self_attn: p.attention()?,
            linear1: p.linear(self.d_model, self.dim_feedforward)?,
            dropout: p.dropout()?,
            linear2: p.linear(self.dim_feedforward, self.d_model)?,
            norm1: p.norm()?,
            norm2: p.norm()?,
            dropout1: p.dropout()?,
            dropout2: p.dropout()?,
        })
    }
}

/// One encoder block, like `torch.nn.TransformerEncoderLayer`: self-attention then a
/// feed-forward network, each in a residual branch with a layer norm:
///
/// - post-norm (default, the paper's): `x = norm1(x + SA(x)); x = norm2(x + FF(x))`
/// - pre-norm (`norm_first`): `x = x + SA(norm1(x)); x = x + FF(norm2(x))`
///
/// with `SA(x) = dropout1(self_attn(x, x, x))` and
/// `FF(x) = dropout2(linear2(dropout(activation(linear1(x)))))`.
///
/// [`Forward::forward`] runs without masks; [`forward_with`](Self::forward_with) takes
/// `src_mask` and `src_key_padding_mask` (boolean: **true = masked out**).
///
/// # Shapes
/// - `src`: `[S, N, E]`, `[N, S, E]` with `batch_first`, or `[S, E]` unbatched
/// - `src_mask`: `[S, S]` or `[N·nhead, S, S]`; `src_key_padding_mask`: `[N, S]`
/// - Output: the shape of `src`
///
/// # Parameters
/// - `self_attn.*`: a [`MultiheadAttention`] (`in_proj_weight` `[3E, E]` Glorot uniform,
///   `in_proj_bias` zeros, `out_proj` `[E, E]` U(-1/√E, 1/√E), zero bias)
/// - `linear1.weight`: `[F, E]`, `linear1.bias`: `[F]`, U(-1/√E, 1/√E)
/// - `linear2.weight`: `[E, F]`, `linear2.bias`: `[E]`, U(-1/√F, 1/√F)
/// - `norm1.*`, `norm2.*`: `[E]`, ones and zeros
///
/// ```
/// use kiln_nn::{Forward, Module, TransformerEncoderLayer, TransformerEncoderLayerConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let layer: TransformerEncoderLayer<f64> = TransformerEncoderLayerConfig {
///     dim_feedforward: 16,
///     batch_first: true,
///     ..TransformerEncoderLayerConfig::new(8, 2)
/// }
/// .build()
/// .unwrap();
/// let src = Var::constant(Tensor::ones(&[3, 5, 8])); // [N, S, E]
/// let y = layer.forward(&src);
/// assert_eq!(y.shape().as_slice(), &[3, 5, 8]);
/// // post-norm: every position comes out of norm2 (weight 1, bias 0), so it has mean 0
/// assert!(y.value().mean(&[2], false).to_vec().iter().all(|m| m.abs() < 1e-12));
/// assert_eq!(
///     layer.to_string(),
///     "TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1, activation=relu, \
///      layer_norm_eps=1e-5, batch_first=true, norm_first=false) [600 parameters]"
/// );
/// assert_eq!(layer.named_parameters()[0].0, "self_attn.in_proj_weight");
/// ```
pub struct TransformerEncoderLayer<E: Float = f32> {
    /// The configuration it was built with.
    pub config: TransformerEncoderLayerConfig,
    /// Self-attention.
    pub self_attn: MultiheadAttention<E>,
    /// Feed-forward expansion `E → F`.
    pub linear1: Linear<E>,
    /// Dropout inside the feed-forward block.
    pub dropout: Dropout,
    /// Feed-forward projection `F → E`.
    pub linear2: Linear<E>,
    /// The norm around self-attention.
    pub norm1: LayerNorm<E>,
    /// The norm around the feed-forward block.
    pub norm2: LayerNorm<E>,
    /// Dropout on the self-attention branch.
    pub dropout1: Dropout,
    /// Dropout on the feed-forward branch.
    pub dropout2: Dropout,
}

impl<E: Float> TransformerEncoderLayer<E> {
    /// A layer with PyTorch's defaults.
    ///
    /// **Panics** on an invalid configuration (use [`TransformerEncoderLayerConfig::build`]
    /// for a `Result`).
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerEncoderLayerConfig::new(d_model, nhead).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Re-draws every parameter with its sub-module's PyTorch init.
    pub fn reset_parameters(&self) {
        self.self_attn.reset_parameters();
        self.linear1.reset_parameters();
        self.linear2.reset_parameters();
        self.norm1.reset_parameters();
        self.norm2.reset_parameters();
    }

    /// The layer with masks, like PyTorch's `forward(src, src_mask, src_key_padding_mask)`.
    ///
    /// **Panics** when `src` or a mask has the wrong shape (see [`MultiheadAttention`]).
    #[must_use]
    pub fn forward_with(
        &self,
        src: &Var<E>,
        src_mask: Option<&AttnMask<E>>,
        src_key_padding_mask: Option<&AttnMask<E>>,
    ) -> Var<E> {
        let sa = |x: &Var<E>| {
            let (y, _) = self.self_attn.forward(x, x, x, src_key_padding_mask, false, src_mask, true);
            self.dropout1.forward(&y)
        };
        let ff = |x: &Var<E>| {
            let h = self.dropout.forward(&self.config.activation.apply(&self.linear1.forward(x)));
            self.dropout2.forward(&self.linear2.forward(&h))
        };
        if self.config.norm_first {
            let x = src.add(&sa(&self.norm1.forward(src)));
            x.add(&ff(&self.norm2.forward(&x)))
        } else {
            let x = self.norm1.forward(&src.add(&sa(src)));
            self.norm2.forward(&x.add(&ff(&x)))
        }
    }
}

impl<E: Float> Forward<E> for TransformerEncoderLayer<E> {
    fn forward(&self, src: &Var<E>) -> Var<E> {
        self.forward_with(src, None, None)
    }
}

impl<E: Float> Module<E> for TransformerEncoderLayer<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.self_attn.visit(&format!("{prefix}self_attn."), f);
        self.linear1.visit(&format!("{prefix}linear1."), f);
        self.linear2.visit(&format!("{prefix}linear2."), f);
        self.norm1.visit(&format!("{prefix}norm1."), f);
        self.norm2.visit(&format!("{prefix}norm2."), f);
    }

    fn set_training(&mut self, training: bool) {
        Module::<E>::set_training(&mut self.self_attn, training);
        for d in [&mut self.dropout, &mut self.dropout1, &mut self.dropout2] {
            Module::<E>::set_training(d, training);
        }
    }

    fn is_training(&self) -> bool {
        Module::<E>::is_training(&self.self_attn)
    }
}

impl<E: Float> fmt::Display for TransformerEncoderLayer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(f, "TransformerEncoderLayer(")?;
        write_hyper(
            f,
            c.d_model,
            c.nhead,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.layer_norm_eps,
            c.batch_first,
            c.norm_first,
        )?;
        if !c.bias {
            write!(f, ", bias=false")?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

// ---------------------------------------------------------------------------------------------
// TransformerEncoder

/// A stack of `num_layers` copies of a [`TransformerEncoderLayer`] and an optional final
/// norm, like `torch.nn.TransformerEncoder(encoder_layer, num_layers, norm)`:
/// `x = layer_{n-1}(… layer_0(src)); y = norm(x)`.
///
/// As in PyTorch the layers start as exact copies of the given layer (same initial weights)
/// and are trained independently.
///
/// # Shapes
/// As [`TransformerEncoderLayer`].
///
/// # Parameters
/// - `layers.{i}.*`: each layer's (`layers.0.self_attn.in_proj_weight`, ...)
/// - `norm.weight`, `norm.bias`: `[E]`, when a final norm is given
///
/// ```
/// use kiln_nn::{Forward, LayerNorm, Module, TransformerEncoder, TransformerEncoderLayerConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let layer = TransformerEncoderLayerConfig { dim_feedforward: 16, ..TransformerEncoderLayerConfig::new(8, 2) }
///     .build::<f32>()
///     .unwrap();
/// let enc = TransformerEncoder::new(layer, 3, Some(LayerNorm::new(&[8])));
/// let y = enc.forward(&Var::constant(Tensor::ones(&[5, 2, 8]))); // [S, N, E]
/// assert_eq!(y.shape().as_slice(), &[5, 2, 8]);
/// assert_eq!(enc.num_parameters(), 3 * 600 + 16);
/// let keys: Vec<String> = enc.named_parameters().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys[12], "layers.1.self_attn.in_proj_weight");
/// assert_eq!(keys.last().unwrap(), "norm.bias");
/// // the copies start equal
/// assert_eq!(enc.layers[0].linear1.weight.value().to_vec(), enc.layers[2].linear1.weight.value().to_vec());
/// ```
pub struct TransformerEncoder<E: Float = f32> {
    /// The layers, applied in order.
    pub layers: Vec<TransformerEncoderLayer<E>>,
    /// The final norm, if any.
    pub norm: Option<LayerNorm<E>>,
}

impl<E: Float> TransformerEncoder<E> {
    /// `num_layers` copies of `encoder_layer` and an optional final norm.
    ///
    /// **Panics** if `num_layers` is zero or `norm` does not normalise `[d_model]` (use
    /// [`try_new`](Self::try_new) for a `Result`).
    pub fn new(encoder_layer: TransformerEncoderLayer<E>, num_layers: usize, norm: Option<LayerNorm<E>>) -> Self {
        Self::try_new(encoder_layer, num_layers, norm).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `num_layers` copies of `encoder_layer` and an optional final norm.
    ///
    /// # Errors
    /// [`NnError::Config`] when `num_layers` is zero or `norm` does not normalise
    /// `[d_model]`.
    pub fn try_new(
        encoder_layer: TransformerEncoderLayer<E>,
        num_layers: usize,
        norm: Option<LayerNorm<E>>,
    ) -> Result<Self, NnError> {
        check_stack("TransformerEncoder", num_layers, encoder_layer.config.d_model, norm.as_ref())?;
        let mut layers = Vec::with_capacity(num_layers);
        for _ in 1..num_layers {
            layers.push(deep_copy(&encoder_layer, || encoder_layer.config.build())?);
        }
        layers.insert(0, encoder_layer);
        Ok(TransformerEncoder { layers, norm })
    }

    /// The stack with masks, like PyTorch's `forward(src, mask, src_key_padding_mask)`;
    /// every layer gets the same masks (boolean: **true = masked out**).
    ///
    /// **Panics** when `src` or a mask has the wrong shape.
    #[must_use]
    pub fn forward_with(
        &self,
        src: &Var<E>,
        mask: Option<&AttnMask<E>>,
        src_key_padding_mask: Option<&AttnMask<E>>,
    ) -> Var<E> {
        let mut x = src.clone();
        for layer in &self.layers {
            x = layer.forward_with(&x, mask, src_key_padding_mask);
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => x,
        }
    }
}

fn check_stack<E: Float>(
    what: &str,
    num_layers: usize,
    d_model: usize,
    norm: Option<&LayerNorm<E>>,
) -> Result<(), NnError> {
    if num_layers == 0 {
        return Err(NnError::Config(format!("{what}: num_layers must be > 0, got 0")));
    }
    if let Some(n) = norm {
        if n.config.normalized_shape != [d_model] {
            return Err(NnError::Config(format!(
                "{what}: norm must normalise [d_model] = [{d_model}], got {:?}",
                n.config.normalized_shape
            )));
        }
    }
    Ok(())
}

impl<E: Float> Forward<E> for TransformerEncoder<E> {
    fn forward(&self, src: &Var<E>) -> Var<E> {
        self.forward_with(src, None, None)
    }
}

impl<E: Float> Module<E> for TransformerEncoder<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.layers.visit(&format!("{prefix}layers."), f);
        self.norm.visit(&format!("{prefix}norm."), f);
    }

    fn set_training(&mut self, training: bool) {
        self.layers.set_training(training);
    }

    fn is_training(&self) -> bool {
        self.layers.is_training()
    }
}

impl<E: Float> fmt::Display for TransformerEncoder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.layers[0].config;
        write!(f, "TransformerEncoder(num_layers={}, ", self.layers.len())?;
        write_hyper(
            f,
            c.d_model,
            c.nhead,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.layer_norm_eps,
            c.batch_first,
            c.norm_first,
        )?;
        write!(f, ", norm={}) [{} parameters]", self.norm.is_some(), self.num_parameters())
    }
}

// ---------------------------------------------------------------------------------------------
// TransformerDecoderLayer

/// Configuration of a [`TransformerDecoderLayer`] (PyTorch's defaults: `dim_feedforward`
/// 2048, dropout 0.1, ReLU, `layer_norm_eps` 1e-5, sequence-first, post-norm, biases).
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerDecoderLayerConfig {
    /// Model size `E`.
    pub d_model: usize,
    /// Number of attention heads (must divide `d_model`).
    pub nhead: usize,
    /// Width of the feed-forward block.
    pub dim_feedforward: usize,
    /// Dropout on every branch and on the attention weights (training only).
    pub dropout: f64,
    /// The feed-forward activation.
    pub activation: TransformerActivation,
    /// The layer norms' ε.
    pub layer_norm_eps: f64,
    /// Inputs are `[N, T, E]` when true, `[T, N, E]` otherwise.
    pub batch_first: bool,
    /// Pre-norm when true, post-norm otherwise.
    pub norm_first: bool,
    /// Whether linear layers and layer norms have biases.
    pub bias: bool,
}

impl TransformerDecoderLayerConfig {
    /// PyTorch's defaults for `d_model` and `nhead`.
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerDecoderLayerConfig {
            d_model,
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: TransformerActivation::Relu,
            layer_norm_eps: 1e-5,
            batch_first: false,
            norm_first: false,
            bias: true,
        }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero, `d_model` is not divisible by `nhead`,
    /// `dropout` is outside `[0, 1]` or `layer_norm_eps` is negative.
    pub fn build<E: Float>(&self) -> Result<TransformerDecoderLayer<E>, NnError> {
        check_layer(
            "TransformerDecoderLayer",
            self.d_model,
            self.nhead,
            self.dim_feedforward,
            self.dropout,
            self.layer_norm_eps,
        )?;
        let p = Parts {
            d_model: self.d_model,
            nhead: self.nhead,
            dim_feedforward: self.dim_feedforward,
            dropout: self.dropout,
            eps: self.layer_norm_eps,
            batch_first: self.batch_first,
            bias: self.bias,
        };
        Ok(TransformerDecoderLayer {
            config: self.clone(),
            self_attn: p.attention()?,
            multihead_attn: p.attention()?,
            linear1: p.linear(self.d_model, p.dim_feedforward)?,
            dropout: p.dropout()?,
            linear2: p.linear(p.dim_feedforward, self.d_model)?,
            norm1: p.norm()?,
            norm2: p.norm()?,
            norm3: p.norm()?,
            dropout1: p.dropout()?,
            dropout2: p.dropout()?,
            dropout3: p.dropout()?,
        })
    }
}

/// One decoder block, like `torch.nn.TransformerDecoderLayer`: masked self-attention,
/// attention over the encoder's output (`memory`), then a feed-forward network, each in a
/// residual branch with a layer norm:
///
/// - post-norm (default): `x = norm1(x + SA(x)); x = norm2(x + MHA(x, mem)); x = norm3(x + FF(x))`
/// - pre-norm (`norm_first`): `x = x + SA(norm1(x)); x = x + MHA(norm2(x), mem); x = x + FF(norm3(x))`
///
/// with `SA(x) = dropout1(self_attn(x, x, x))`, `MHA(x, m) = dropout2(multihead_attn(x, m, m))`,
/// `FF(x) = dropout3(linear2(dropout(activation(linear1(x)))))`.
///
/// Boolean masks are **true = masked out**; pass [`causal_mask`] as `tgt_mask` for
/// autoregressive decoding.
///
/// # Shapes
/// - `tgt`: `[T, N, E]` (`[N, T, E]` with `batch_first`, `[T, E]` unbatched);
///   `memory`: `[S, N, E]` likewise
/// - `tgt_mask`: `[T, T]` or `[N·nhead, T, T]`; `memory_mask`: `[T, S]` or `[N·nhead, T, S]`
/// - `tgt_key_padding_mask`: `[N, T]`; `memory_key_padding_mask`: `[N, S]`
/// - Output: the shape of `tgt`
///
/// # Parameters
/// - `self_attn.*`, `multihead_attn.*`: two [`MultiheadAttention`]s
///   (Glorot-uniform `in_proj_weight`, zero biases, `out_proj` as a [`Linear`])
/// - `linear1.*` `[F, E]`/`[F]`, `linear2.*` `[E, F]`/`[E]`: U(-1/√fan_in, 1/√fan_in)
/// - `norm1.*`, `norm2.*`, `norm3.*`: `[E]`, ones and zeros
///
/// ```
/// use kiln_nn::{causal_mask, Module, TransformerDecoderLayer, TransformerDecoderLayerConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let layer: TransformerDecoderLayer<f64> =
///     TransformerDecoderLayerConfig { dim_feedforward: 16, ..TransformerDecoderLayerConfig::new(8, 2) }.build().unwrap();
/// let tgt = Var::constant(Tensor::ones(&[4, 2, 8])); // [T, N, E]
/// let memory = Var::constant(Tensor::ones(&[6, 2, 8])); // [S, N, E]
/// let y = layer.forward_with(&tgt, &memory, Some(&causal_mask(4)), None, None, None);
/// assert_eq!(y.shape().as_slice(), &[4, 2, 8]);
/// assert_eq!(layer.num_parameters(), 2 * 288 + (16 * 8 + 16) + (8 * 16 + 8) + 3 * 16);
/// assert_eq!(layer.named_parameters()[4].0, "multihead_attn.in_proj_weight");
/// ```
pub struct TransformerDecoderLayer<E: Float = f32> {
    /// The configuration it was built with.
    pub config: TransformerDecoderLayerConfig,
    /// Self-attention over the target.
    pub self_attn: MultiheadAttention<E>,
    /// Attention from the target to the memory.
    pub multihead_attn: MultiheadAttention<E>,
    /// Feed-forward expansion `E → F`.
    pub linear1: Linear<E>,
    /// Dropout inside the feed-forward block.
    pub dropout: Dropout,
    /// Feed-forward projection `F → E`.
    pub linear2: Linear<E>,
    /// The norm around self-attention.
    pub norm1: LayerNorm<E>,
    /// The norm around cross-attention.
    pub norm2: LayerNorm<E>,
    /// The norm around the feed-forward block.
    pub norm3: LayerNorm<E>,
    /// Dropout on the self-attention branch.
    pub dropout1: Dropout,
    /// Dropout on the cross-attention branch.
    pub dropout2: Dropout,
    /// Dropout on the feed-forward branch.
    pub dropout3: Dropout,
}

impl<E: Float> TransformerDecoderLayer<E> {
    /// A layer with PyTorch's defaults.
    ///
    /// **Panics** on an invalid configuration (use [`TransformerDecoderLayerConfig::build`]
    /// for a `Result`).
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerDecoderLayerConfig::new(d_model, nhead).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Re-draws every parameter with its sub-module's PyTorch init.
    pub fn reset_parameters(&self) {
        self.self_attn.reset_parameters();
        self.multihead_attn.reset_parameters();
        self.linear1.reset_parameters();
        self.linear2.reset_parameters();
        self.norm1.reset_parameters();
        self.norm2.reset_parameters();
        self.norm3.reset_parameters();
    }

    /// The layer without masks.
    #[must_use]
    pub fn forward(&self, tgt: &Var<E>, memory: &Var<E>) -> Var<E> {
        self.forward_with(tgt, memory, None, None, None, None)
    }

    /// The layer with masks, like PyTorch's `forward(tgt, memory, tgt_mask, memory_mask,
    /// tgt_key_padding_mask, memory_key_padding_mask)`.
    ///
    /// **Panics** when an input or a mask has the wrong shape (see [`MultiheadAttention`]).
    #[must_use]
    pub fn forward_with(
        &self,
        tgt: &Var<E>,
        memory: &Var<E>,
        tgt_mask: Option<&AttnMask<E>>,
        memory_mask: Option<&AttnMask<E>>,
        tgt_key_padding_mask: Option<&AttnMask<E>>,
        memory_key_padding_mask: Option<&AttnMask<E>>,
    ) -> Var<E> {
        let sa = |x: &Var<E>| {
            let (y, _) = self.self_attn.forward(x, x, x, tgt_key_padding_mask, false, tgt_mask, true);
            self.dropout1.forward(&y)
        };
        let mha = |x: &Var<E>| {
            let (y, _) =
                self.multihead_attn.forward(x, memory, memory, memory_key_padding_mask, false, memory_mask, true);
            self.dropout2.forward(&y)
        };
        let ff = |x: &Var<E>| {
            let h = self.dropout.forward(&self.config.activation.apply(&self.linear1.forward(x)));
            self.dropout3.forward(&self.linear2.forward(&h))
        };
        if self.config.norm_first {
            let x = tgt.add(&sa(&self.norm1.forward(tgt)));
            let x = x.add(&mha(&self.norm2.forward(&x)));
            x.add(&ff(&self.norm3.forward(&x)))
        } else {
            let x = self.norm1.forward(&tgt.add(&sa(tgt)));
            let x = self.norm2.forward(&x.add(&mha(&x)));
            self.norm3.forward(&x.add(&ff(&x)))
        }
    }
}

impl<E: Float> Module<E> for TransformerDecoderLayer<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.self_attn.visit(&format!("{prefix}self_attn."), f);
        self.multihead_attn.visit(&format!("{prefix}multihead_attn."), f);
        self.linear1.visit(&format!("{prefix}linear1."), f);
        self.linear2.visit(&format!("{prefix}linear2."), f);
        self.norm1.visit(&format!("{prefix}norm1."), f);
        self.norm2.visit(&format!("{prefix}norm2."), f);
        self.norm3.visit(&format!("{prefix}norm3."), f);
    }

    fn set_training(&mut self, training: bool) {
        Module::<E>::set_training(&mut self.self_attn, training);
        Module::<E>::set_training(&mut self.multihead_attn, training);
        for d in [&mut self.dropout, &mut self.dropout1, &mut self.dropout2, &mut self.dropout3] {
            Module::<E>::set_training(d, training);
        }
    }

    fn is_training(&self) -> bool {
        Module::<E>::is_training(&self.self_attn)
    }
}

impl<E: Float> fmt::Display for TransformerDecoderLayer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(f, "TransformerDecoderLayer(")?;
        write_hyper(
            f,
            c.d_model,
            c.nhead,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.layer_norm_eps,
            c.batch_first,
            c.norm_first,
        )?;
        if !c.bias {
            write!(f, ", bias=false")?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

// ---------------------------------------------------------------------------------------------
// TransformerDecoder

/// A stack of `num_layers` copies of a [`TransformerDecoderLayer`] and an optional final
/// norm, like `torch.nn.TransformerDecoder(decoder_layer, num_layers, norm)`; every layer
/// attends to the same `memory`.
///
/// # Shapes
/// As [`TransformerDecoderLayer`].
///
/// # Parameters
/// - `layers.{i}.*`: each layer's (`layers.0.multihead_attn.in_proj_weight`, ...)
/// - `norm.weight`, `norm.bias`: `[E]`, when a final norm is given
///
/// ```
/// use kiln_nn::{causal_mask, Module, TransformerDecoder, TransformerDecoderLayerConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let layer = TransformerDecoderLayerConfig { dim_feedforward: 16, batch_first: true, ..TransformerDecoderLayerConfig::new(8, 2) }
///     .build::<f32>()
///     .unwrap();
/// let dec = TransformerDecoder::new(layer, 2, None);
/// let tgt = Var::constant(Tensor::ones(&[2, 4, 8])); // [N, T, E]
/// let memory = Var::constant(Tensor::ones(&[2, 7, 8])); // [N, S, E]
/// let y = dec.forward_with(&tgt, &memory, Some(&causal_mask(4)), None, None, None);
/// assert_eq!(y.shape().as_slice(), &[2, 4, 8]);
/// assert_eq!(dec.named_parameters().len(), 2 * 18);
/// ```
pub struct TransformerDecoder<E: Float = f32> {
    /// The layers, applied in order.
    pub layers: Vec<TransformerDecoderLayer<E>>,
    /// The final norm, if any.
    pub norm: Option<LayerNorm<E>>,
}

impl<E: Float> TransformerDecoder<E> {
    /// `num_layers` copies of `decoder_layer` and an optional final norm.
    ///
    /// **Panics** if `num_layers` is zero or `norm` does not normalise `[d_model]` (use
    /// [`try_new`](Self::try_new) for a `Result`).
    pub fn new(decoder_layer: TransformerDecoderLayer<E>, num_layers: usize, norm: Option<LayerNorm<E>>) -> Self {
        Self::try_new(decoder_layer, num_layers, norm).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `num_layers` copies of `decoder_layer` and an optional final norm.
    ///
    /// # Errors
    /// [`NnError::Config`] when `num_layers` is zero or `norm` does not normalise
    /// `[d_model]`.
    pub fn try_new(
        decoder_layer: TransformerDecoderLayer<E>,
        num_layers: usize,
        norm: Option<LayerNorm<E>>,
    ) -> Result<Self, NnError> {
        check_stack("TransformerDecoder", num_layers, decoder_layer.config.d_model, norm.as_ref())?;
        let mut layers = Vec::with_capacity(num_layers);
        for _ in 1..num_layers {
            layers.push(deep_copy(&decoder_layer, || decoder_layer.config.build())?);
        }
        layers.insert(0, decoder_layer);
        Ok(TransformerDecoder { layers, norm })
    }

    /// The stack without masks.
    #[must_use]
    pub fn forward(&self, tgt: &Var<E>, memory: &Var<E>) -> Var<E> {
        self.forward_with(tgt, memory, None, None, None, None)
    }

    /// The stack with masks, like PyTorch's `forward(tgt, memory, tgt_mask, memory_mask,
    /// tgt_key_padding_mask, memory_key_padding_mask)`; every layer gets the same masks.
    ///
    /// **Panics** when an input or a mask has the wrong shape.
    #[must_use]
    pub fn forward_with(
        &self,
        tgt: &Var<E>,
        memory: &Var<E>,
        tgt_mask: Option<&AttnMask<E>>,
        memory_mask: Option<&AttnMask<E>>,
        tgt_key_padding_mask: Option<&AttnMask<E>>,
        memory_key_padding_mask: Option<&AttnMask<E>>,
    ) -> Var<E> {
        let mut x = tgt.clone();
        for layer in &self.layers {
            x = layer.forward_with(&x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask);
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => x,
        }
    }
}

impl<E: Float> Module<E> for TransformerDecoder<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.layers.visit(&format!("{prefix}layers."), f);
        self.norm.visit(&format!("{prefix}norm."), f);
    }

    fn set_training(&mut self, training: bool) {
        self.layers.set_training(training);
    }

    fn is_training(&self) -> bool {
        self.layers.is_training()
    }
}

impl<E: Float> fmt::Display for TransformerDecoder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.layers[0].config;
        write!(f, "TransformerDecoder(num_layers={}, ", self.layers.len())?;
        write_hyper(
            f,
            c.d_model,
            c.nhead,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.layer_norm_eps,
            c.batch_first,
            c.norm_first,
        )?;
        write!(f, ", norm={}) [{} parameters]", self.norm.is_some(), self.num_parameters())
    }
}

// ---------------------------------------------------------------------------------------------
// Transformer

/// Configuration of a [`Transformer`] (PyTorch's defaults: `d_model` 512, 8 heads, 6 + 6
/// layers, `dim_feedforward` 2048, dropout 0.1, ReLU, `layer_norm_eps` 1e-5, sequence-first,
/// post-norm, biases).
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Model size `E`.
    pub d_model: usize,
    /// Number of attention heads (must divide `d_model`).
    pub nhead: usize,
    /// Encoder layers.
    pub num_encoder_layers: usize,
    /// Decoder layers.
    pub num_decoder_layers: usize,
    /// Width of the feed-forward blocks.
    pub dim_feedforward: usize,
    /// Dropout everywhere (training only).
    pub dropout: f64,
    /// The feed-forward activation.
    pub activation: TransformerActivation,
    /// The layer norms' ε.
    pub layer_norm_eps: f64,
    /// Inputs are `[N, L, E]` when true, `[L, N, E]` otherwise.
    pub batch_first: bool,
    /// Pre-norm layers when true, post-norm otherwise.
    pub norm_first: bool,
    /// Whether linear layers and layer norms have biases.
    pub bias: bool,
}

impl Default for TransformerConfig {
    /// `nn.Transformer()`'s defaults (`d_model` 512, 8 heads).
    fn default() -> Self {
        TransformerConfig::new(512, 8)
    }
}

impl TransformerConfig {
    /// PyTorch's defaults with the given `d_model` and `nhead`.
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerConfig {
            d_model,
            nhead,
            num_encoder_layers: 6,
            num_decoder_layers: 6,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: TransformerActivation::Relu,
            layer_norm_eps: 1e-5,
            batch_first: false,
            norm_first: false,
            bias: true,
        }
    }

    /// Builds the model, initialised from the process-wide generator as PyTorch does:
    /// every parameter with more than one dimension is redrawn Glorot-uniform.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size or a layer count is zero, `d_model` is not divisible
    /// by `nhead`, `dropout` is outside `[0, 1]` or `layer_norm_eps` is negative.
    pub fn build<E: Float>(&self) -> Result<Transformer<E>, NnError> {
        let enc_layer = TransformerEncoderLayerConfig {
            d_model: self.d_model,
            nhead: self.nhead,
            dim_feedforward: self.dim_feedforward,
            dropout: self.dropout,
            activation: self.activation,
            layer_norm_eps: self.layer_norm_eps,
            batch_first: self.batch_first,
            norm_first: self.norm_first,
            bias: self.bias,
        };
        let dec_layer = TransformerDecoderLayerConfig {
            d_model: self.d_model,
            nhead: self.nhead,
            dim_feedforward: self.dim_feedforward,
            dropout: self.dropout,
            activation: self.activation,
            layer_norm_eps: self.layer_norm_eps,
            batch_first: self.batch_first,
            norm_first: self.norm_first,
            bias: self.bias,
        };
        check_layer("Transformer", self.d_model, self.nhead, self.dim_feedforward, self.dropout, self.layer_norm_eps)?;
        for (what, n) in
            [("num_encoder_layers", self.num_encoder_layers), ("num_decoder_layers", self.num_decoder_layers)]
        {
            if n == 0 {
                return Err(NnError::Config(format!("Transformer: {what} must be > 0, got 0")));
            }
        }
        let norm = || {
            LayerNormConfig { eps: self.layer_norm_eps, bias: self.bias, ..LayerNormConfig::new(&[self.d_model]) }
                .build()
        };
        let encoder = TransformerEncoder::try_new(enc_layer.build()?, self.num_encoder_layers, Some(norm()?))?;
        let decoder = TransformerDecoder::try_new(dec_layer.build()?, self.num_decoder_layers, Some(norm()?))?;
        let t = Transformer { config: self.clone(), encoder, decoder };
        t.reset_parameters();
        Ok(t)
    }
}

/// The masks of a [`Transformer`] call, PyTorch's keyword arguments of
/// `nn.Transformer.forward` (boolean masks: **true = masked out**). `Default` is no masks.
///
/// ```
/// use kiln_nn::{causal_mask, TransformerMasks};
/// let tgt_mask = causal_mask::<f32>(5);
/// let masks = TransformerMasks { tgt_mask: Some(&tgt_mask), ..Default::default() };
/// assert!(masks.src_mask.is_none());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TransformerMasks<'a, E: Float = f32> {
    /// Encoder self-attention mask, `[S, S]` or `[N·nhead, S, S]`.
    pub src_mask: Option<&'a AttnMask<E>>,
    /// Decoder self-attention mask, `[T, T]` or `[N·nhead, T, T]` (usually [`causal_mask`]).
    pub tgt_mask: Option<&'a AttnMask<E>>,
    /// Decoder-to-memory mask, `[T, S]` or `[N·nhead, T, S]`.
    pub memory_mask: Option<&'a AttnMask<E>>,
    /// Padded source positions, `[N, S]`.
    pub src_key_padding_mask: Option<&'a AttnMask<E>>,
    /// Padded target positions, `[N, T]`.
    pub tgt_key_padding_mask: Option<&'a AttnMask<E>>,
    /// Padded memory positions, `[N, S]` (usually the source's padding).
    pub memory_key_padding_mask: Option<&'a AttnMask<E>>,
}

impl<E: Float> Default for TransformerMasks<'_, E> {
    fn default() -> Self {
        TransformerMasks {
            src_mask: None,
            tgt_mask: None,
            memory_mask: None,
            src_key_padding_mask: None,
            tgt_key_padding_mask: None,
            memory_key_padding_mask: None,
        }
    }
}

/// The encoder-decoder Transformer, like `torch.nn.Transformer`:
///
/// `memory = encoder(src)`, `y = decoder(tgt, memory)`
///
/// both stacks ending in a layer norm. Embeddings, positional encodings
/// ([`SinusoidalPositionalEncoding`](crate::SinusoidalPositionalEncoding)) and the output
/// projection are the caller's, as in PyTorch.
///
/// # Shapes
/// - `src`: `[S, N, E]` (`[N, S, E]` with `batch_first`, `[S, E]` unbatched)
/// - `tgt`: `[T, N, E]` likewise
/// - masks: see [`TransformerMasks`]
/// - Output: `[T, N, E]` (the shape of `tgt`)
///
/// # Parameters
/// - `encoder.layers.{i}.*`, `encoder.norm.*`, `decoder.layers.{i}.*`, `decoder.norm.*`
/// - every parameter with more than one dimension is Glorot uniform
///   (`_reset_parameters`: `xavier_uniform_`); biases as in the layers (attention biases
///   zero, linear biases U(-1/√fan_in, 1/√fan_in)); norms ones and zeros
///
/// ```
/// use kiln_nn::{Module, Transformer, TransformerConfig, TransformerMasks};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let model: Transformer = TransformerConfig {
///     num_encoder_layers: 2,
///     num_decoder_layers: 1,
///     dim_feedforward: 32,
///     ..TransformerConfig::new(16, 4)
/// }
/// .build()
/// .unwrap();
/// let src = Var::constant(Tensor::ones(&[7, 3, 16])); // [S, N, E]
/// let tgt = Var::constant(Tensor::ones(&[5, 3, 16])); // [T, N, E]
/// let tgt_mask = Transformer::<f32>::generate_square_subsequent_mask(5);
/// let y = model.forward_with(&src, &tgt, &TransformerMasks { tgt_mask: Some(&tgt_mask), ..Default::default() });
/// assert_eq!(y.shape().as_slice(), &[5, 3, 16]);
/// assert!(model.state_dict().contains_key("decoder.layers.0.multihead_attn.in_proj_weight"));
/// assert!(model.state_dict().contains_key("encoder.norm.weight"));
/// ```
pub struct Transformer<E: Float = f32> {
    /// The configuration it was built with.
    pub config: TransformerConfig,
    /// The encoder stack (with its final norm).
    pub encoder: TransformerEncoder<E>,
    /// The decoder stack (with its final norm).
    pub decoder: TransformerDecoder<E>,
}

impl<E: Float> Transformer<E> {
    /// A model with PyTorch's defaults for the given `d_model` and `nhead`.
    ///
    /// **Panics** on an invalid configuration (use [`TransformerConfig::build`] for a
    /// `Result`).
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerConfig::new(d_model, nhead).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// PyTorch's `_reset_parameters`: Glorot uniform on every parameter with more than one
    /// dimension, the others left as the layers initialised them.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| {
            for p in self.parameters() {
                if p.ndim() > 1 {
                    init::xavier_uniform_(&p, 1.0, rng);
                }
            }
        });
    }

    /// The causal mask `[n, n]` (0 on and below the diagonal, `-inf` above), like
    /// `nn.Transformer.generate_square_subsequent_mask`; the same as [`causal_mask`].
    pub fn generate_square_subsequent_mask(n: usize) -> AttnMask<E> {
        causal_mask(n)
    }

    /// Encodes `src` and decodes `tgt` against it, without masks.
    ///
    /// **Panics** as [`forward_with`](Self::forward_with).
    #[must_use]
    pub fn forward(&self, src: &Var<E>, tgt: &Var<E>) -> Var<E> {
        self.forward_with(src, tgt, &TransformerMasks::default())
    }

    /// Encodes `src` and decodes `tgt` against it, like PyTorch's `forward(src, tgt,
    /// src_mask, tgt_mask, memory_mask, src_key_padding_mask, tgt_key_padding_mask,
    /// memory_key_padding_mask)`.
    ///
    /// **Panics** when `src` and `tgt` differ in batch size or do not end in `d_model`
    /// (naming both shapes), or a mask has the wrong shape.
    #[must_use]
    pub fn forward_with(&self, src: &Var<E>, tgt: &Var<E>, masks: &TransformerMasks<'_, E>) -> Var<E> {
        let (ss, ts) = (src.shape(), tgt.shape());
        let d = self.config.d_model;
        assert!(
            ss.len() == ts.len() && ss.last() == Some(&d) && ts.last() == Some(&d),
            "Transformer: src {:?} and tgt {:?} must have the same number of dims and end in d_model {d}",
            ss.as_slice(),
            ts.as_slice()
        );
        let b = batch_dim(self.config.batch_first, ss.len());
        assert!(
            ss.len() == 2 || ss[b] == ts[b],
            "Transformer: src {:?} and tgt {:?}: batch sizes {} and {} differ",
            ss.as_slice(),
            ts.as_slice(),
            ss[b],
            ts[b]
        );
        let memory = self.encoder.forward_with(src, masks.src_mask, masks.src_key_padding_mask);
        self.decoder.forward_with(
            tgt,
            &memory,
            masks.tgt_mask,
            masks.memory_mask,
            masks.tgt_key_padding_mask,
            masks.memory_key_padding_mask,
        )
    }
}

impl<E: Float> Module<E> for Transformer<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.encoder.visit(&format!("{prefix}encoder."), f);
        self.decoder.visit(&format!("{prefix}decoder."), f);
    }

    fn set_training(&mut self, training: bool) {
        self.encoder.set_training(training);
        self.decoder.set_training(training);
    }

    fn is_training(&self) -> bool {
        self.encoder.is_training()
    }
}

impl<E: Float> fmt::Display for Transformer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "Transformer(num_encoder_layers={}, num_decoder_layers={}, ",
            c.num_encoder_layers, c.num_decoder_layers
        )?;
        write_hyper(
            f,
            c.d_model,
            c.nhead,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.layer_norm_eps,
            c.batch_first,
            c.norm_first,
        )?;
        if !c.bias {
            write!(f, ", bias=false")?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::attention::tests::{adam_step, assert_param_grads, golden_state_dict};
    use crate::layers::positional::sinusoidal_encoding;
    use kiln_autograd::{gradcheck, no_grad};
    use kiln_tensor::{Indices, Rng, Tensor};

    fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    fn enc_cfg(d: usize, h: usize, ff: usize) -> TransformerEncoderLayerConfig {
        TransformerEncoderLayerConfig {
            dim_feedforward: ff,
            dropout: 0.0,
            batch_first: true,
            ..TransformerEncoderLayerConfig::new(d, h)
        }
    }

    fn dec_cfg(d: usize, h: usize, ff: usize) -> TransformerDecoderLayerConfig {
        TransformerDecoderLayerConfig {
            dim_feedforward: ff,
            dropout: 0.0,
            batch_first: true,
            ..TransformerDecoderLayerConfig::new(d, h)
        }
    }

    /// Checks every parameter's gradient of `u · f()` against central differences.
    fn check_param_grads<M: Module<f64>>(m: &M, f: impl Fn() -> Var<f64>) {
        let y = f();
        let u = rand(&y.shape(), 17);
        m.zero_grad();
        y.backward_with(&u);
        let eps = 1e-6;
        for (k, p) in m.named_parameters() {
            let g = p.grad().unwrap_or_else(|| p.value().zeros_like()).contiguous().to_vec();
            let orig = p.value().contiguous().to_vec();
            for j in 0..orig.len() {
                let at = |x: f64| {
                    p.update_value(|v| v.as_mut_slice()[j] = x);
                    no_grad(&f).with_value(|v| v.mul(&u).sum_all().item())
                };
                let num = (at(orig[j] + eps) - at(orig[j] - eps)) / (2.0 * eps);
                p.update_value(|v| v.as_mut_slice()[j] = orig[j]);
                assert!(
                    (g[j] - num).abs() <= 1e-7 + 1e-5 * num.abs(),
                    "{k}[{j}]: analytical {} vs numerical {num}",
                    g[j]
                );
            }
        }
    }

    /// Moves the zero-initialised biases and unit norms away from their defaults, so that
    /// the checks do not pass by symmetry (as the golden cases' `0.1 * randn`).
    fn perturb<M: Module<f64>>(m: &M, seed: u64) {
        let mut rng = Rng::new(seed);
        for p in m.parameters() {
            let noise = Tensor::uniform(&p.shape(), -0.1, 0.1, &mut rng);
            p.update_value(|v| *v = v.add(&noise));
        }
    }

    // ------------------------------------------------------------------ structure

    #[test]
    fn configs_displays_and_errors() {
        let l: TransformerEncoderLayer = TransformerEncoderLayer::new(8, 2);
        assert_eq!(
            l.to_string(),
            "TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=2048, dropout=0.1, activation=relu, \
             layer_norm_eps=1e-5, batch_first=false, norm_first=false) [35144 parameters]"
        );
        let d: TransformerDecoderLayer = TransformerDecoderLayerConfig {
            activation: TransformerActivation::Gelu,
            norm_first: true,
            bias: false,
            ..dec_cfg(4, 2, 8)
        }
        .build()
        .unwrap();
        assert_eq!(
            d.to_string(),
            "TransformerDecoderLayer(d_model=4, nhead=2, dim_feedforward=8, dropout=0.0, activation=gelu, \
             layer_norm_eps=1e-5, batch_first=true, norm_first=true, bias=false) [204 parameters]"
        );
        let enc = TransformerEncoder::new(enc_cfg(4, 2, 8).build::<f32>().unwrap(), 2, None);
        assert_eq!(
            enc.to_string(),
            "TransformerEncoder(num_layers=2, d_model=4, nhead=2, dim_feedforward=8, dropout=0.0, activation=relu, \
             layer_norm_eps=1e-5, batch_first=true, norm_first=false, norm=false) [344 parameters]"
        );
        let dec = TransformerDecoder::new(dec_cfg(4, 2, 8).build::<f32>().unwrap(), 1, Some(LayerNorm::new(&[4])));
        assert_eq!(dec.num_parameters(), 80 + 80 + 40 + 36 + 24 + 8);
        assert!(dec.to_string().starts_with("TransformerDecoder(num_layers=1, d_model=4,"));
        let t: Transformer = TransformerConfig {
            num_encoder_layers: 1,
            num_decoder_layers: 1,
            dim_feedforward: 8,
            ..TransformerConfig::new(4, 2)
        }
        .build()
        .unwrap();
        assert_eq!(
            t.to_string(),
            "Transformer(num_encoder_layers=1, num_decoder_layers=1, d_model=4, nhead=2, dim_feedforward=8, dropout=0.1, \
             activation=relu, layer_norm_eps=1e-5, batch_first=false, norm_first=false) [448 parameters]"
        );
        assert_eq!(TransformerConfig::default().d_model, 512);

        let err = |r: Result<(), NnError>| r.err().unwrap().to_string();
        assert_eq!(
            err(TransformerEncoderLayerConfig::new(6, 4).build::<f32>().map(|_| ())),
            "TransformerEncoderLayer: d_model must be divisible by nhead, got d_model=6, nhead=4"
        );
        assert_eq!(
            err(TransformerDecoderLayerConfig { dim_feedforward: 0, ..TransformerDecoderLayerConfig::new(4, 2) }
                .build::<f32>()
                .map(|_| ())),
            "TransformerDecoderLayer: dim_feedforward must be > 0, got 0"
        );
        assert_eq!(
            err(TransformerEncoderLayerConfig { dropout: -0.5, ..TransformerEncoderLayerConfig::new(4, 2) }
                .build::<f32>()
                .map(|_| ())),
            "TransformerEncoderLayer: dropout must be in [0, 1], got -0.5"
        );
        assert_eq!(
            err(TransformerConfig { num_decoder_layers: 0, ..TransformerConfig::new(4, 2) }.build::<f32>().map(|_| ())),
            "Transformer: num_decoder_layers must be > 0, got 0"
        );
        assert_eq!(
            err(TransformerEncoder::try_new(enc_cfg(4, 2, 8).build::<f32>().unwrap(), 0, None).map(|_| ())),
            "TransformerEncoder: num_layers must be > 0, got 0"
        );
        assert_eq!(
            err(TransformerDecoder::try_new(dec_cfg(4, 2, 8).build::<f32>().unwrap(), 1, Some(LayerNorm::new(&[3])))
                .map(|_| ())),
            "TransformerDecoder: norm must normalise [d_model] = [4], got [3]"
        );
    }

    #[test]
    fn keys_match_pytorch() {
        let t: Transformer = TransformerConfig {
            num_encoder_layers: 2,
            num_decoder_layers: 1,
            dim_feedforward: 8,
            ..TransformerConfig::new(4, 2)
        }
        .build()
        .unwrap();
        let keys: Vec<String> = t.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 2 * 12 + 2 + 18 + 2);
        assert_eq!(keys[0], "encoder.layers.0.self_attn.in_proj_weight");
        assert_eq!(keys[12], "encoder.layers.1.self_attn.in_proj_weight");
        assert_eq!(keys[24..26], ["encoder.norm.weight", "encoder.norm.bias"]);
        assert_eq!(keys[26 + 4], "decoder.layers.0.multihead_attn.in_proj_weight");
        assert_eq!(keys[26 + 17], "decoder.layers.0.norm3.bias");
        assert_eq!(keys.last().unwrap(), "decoder.norm.bias");
    }

    #[test]
    fn clones_start_equal_and_train_independently() {
        let enc = TransformerEncoder::new(enc_cfg(4, 2, 8).build::<f64>().unwrap(), 3, None);
        let sd0 = enc.layers[0].state_dict();
        for l in &enc.layers[1..] {
            assert_eq!(
                l.state_dict().values().map(|t| t.to_vec()).collect::<Vec<_>>(),
                sd0.values().map(|t| t.to_vec()).collect::<Vec<_>>()
            );
        }
        enc.layers[0].linear1.weight.update_value(|w| w.fill_(7.0));
        assert_ne!(enc.layers[1].linear1.weight.value().get(&[0, 0]), 7.0);
    }

    #[test]
    fn transformer_init_is_xavier_on_matrices() {
        init::manual_seed(1);
        let t: Transformer<f64> = TransformerConfig {
            num_encoder_layers: 1,
            num_decoder_layers: 1,
            dim_feedforward: 64,
            ..TransformerConfig::new(32, 4)
        }
        .build()
        .unwrap();
        for (k, p) in t.named_parameters() {
            let v = p.value();
            if p.ndim() == 2 {
                let (o, i) = (p.shape()[0], p.shape()[1]);
                let b = (6.0 / (o + i) as f64).sqrt();
                assert!(v.abs().max_all() <= b && v.abs().max_all() > 0.9 * b, "{k}");
            } else if k.ends_with("in_proj_bias") || k.ends_with("out_proj.bias") {
                assert_eq!(v.abs().max_all(), 0.0, "{k}");
            }
        }
    }

    #[test]
    fn layouts_agree() {
        // sequence-first, batch-first and unbatched inputs give the same numbers
        let bf = enc_cfg(4, 2, 8).build::<f64>().unwrap();
        perturb(&bf, 1);
        let sf = TransformerEncoderLayerConfig { batch_first: false, ..enc_cfg(4, 2, 8) }.build::<f64>().unwrap();
        sf.load_state_dict(&bf.state_dict(), true).unwrap();
        let x = rand(&[2, 3, 4], 2);
        let a = bf.forward(&Var::constant(x.clone())).value();
        let b = sf.forward(&Var::constant(x.transpose(0, 1))).value().transpose(0, 1);
        golden::assert_close("seq-first", &b.contiguous(), &a, (1e-12, 1e-14));
        let u = bf.forward(&Var::constant(x.select(0, 1))).value();
        golden::assert_close("unbatched", &u, &a.select(0, 1), (1e-12, 1e-14));
    }

    #[test]
    fn dropout_only_in_training() {
        init::manual_seed(3);
        let mut l: TransformerEncoderLayer<f64> =
            TransformerEncoderLayerConfig { dropout: 0.5, ..enc_cfg(4, 2, 8) }.build().unwrap();
        let x = Var::constant(rand(&[2, 3, 4], 1));
        assert_ne!(l.forward(&x).value().to_vec(), l.forward(&x).value().to_vec());
        l.eval();
        assert!(!l.dropout.is_training() && !l.dropout2.is_training() && !Module::<f64>::is_training(&l.self_attn));
        assert_eq!(l.forward(&x).value().to_vec(), l.forward(&x).value().to_vec());
        l.train();
        assert!(l.dropout1.is_training());
    }

    #[test]
    #[should_panic(expected = "Transformer: src [5, 2, 4] and tgt [3, 3, 4]: batch sizes 2 and 3 differ")]
    fn transformer_batch_mismatch_panics() {
        let t: Transformer = TransformerConfig {
            num_encoder_layers: 1,
            num_decoder_layers: 1,
            dim_feedforward: 8,
            ..TransformerConfig::new(4, 2)
        }
        .build()
        .unwrap();
        let _ = t.forward(&Var::constant(Tensor::zeros(&[5, 2, 4])), &Var::constant(Tensor::zeros(&[3, 3, 4])));
    }

    #[test]
    #[should_panic(expected = "key_padding_mask [2, 4] must be [N, S] = [2, 3]")]
    fn encoder_wrong_padding_mask_panics() {
        let l = enc_cfg(4, 2, 8).build::<f64>().unwrap();
        let _ =
            l.forward_with(&Var::constant(rand(&[2, 3, 4], 1)), None, Some(&AttnMask::Bool(Tensor::zeros(&[2, 4]))));
    }

    // ------------------------------------------------------------------ gradients

    #[test]
    fn gradcheck_encoder_layers() {
        for (norm_first, act) in [(false, TransformerActivation::Relu), (true, TransformerActivation::Gelu)] {
            init::manual_seed(7);
            let l: TransformerEncoderLayer<f64> =
                TransformerEncoderLayerConfig { norm_first, activation: act, ..enc_cfg(4, 2, 6) }.build().unwrap();
            perturb(&l, 8);
            let pad = AttnMask::from_bools(&[false, false, false, false, false, true], &[2, 3]);
            let mask = AttnMask::Float(rand(&[3, 3], 4));
            let x = rand(&[2, 3, 4], 5);
            let r = gradcheck(
                |v| l.forward_with(&v[0], Some(&mask), Some(&pad)),
                std::slice::from_ref(&x),
                1e-6,
                1e-8,
                1e-5,
            );
            assert!(r.is_ok(), "norm_first={norm_first}: {}", r.unwrap_err());
            let xv = Var::constant(x);
            check_param_grads(&l, || l.forward_with(&xv, Some(&mask), Some(&pad)));
        }
    }

    #[test]
    fn gradcheck_decoder_layers() {
        for norm_first in [false, true] {
            init::manual_seed(9);
            let l: TransformerDecoderLayer<f64> =
                TransformerDecoderLayerConfig { norm_first, ..dec_cfg(4, 2, 6) }.build().unwrap();
            perturb(&l, 10);
            let causal = causal_mask::<f64>(3);
            let mpad = AttnMask::from_bools(&[false, false, false, false, true, true], &[2, 3]);
            let (t, m) = (rand(&[2, 3, 4], 11), rand(&[2, 3, 4], 12));
            let r = gradcheck(
                |v| l.forward_with(&v[0], &v[1], Some(&causal), None, None, Some(&mpad)),
                &[t.clone(), m.clone()],
                1e-6,
                1e-8,
                1e-5,
            );
            assert!(r.is_ok(), "norm_first={norm_first}: {}", r.unwrap_err());
            let (tv, mv) = (Var::constant(t), Var::constant(m));
            check_param_grads(&l, || l.forward_with(&tv, &mv, Some(&causal), None, None, Some(&mpad)));
        }
    }

    // ------------------------------------------------------------------ golden

    fn mask(c: &golden::Case, name: &str) -> Option<AttnMask<f64>> {
        let t = c.tensors.get(&format!("input.{name}"))?.clone();
        Some(if c.json["tensors"][format!("input.{name}")]["dtype"] == "bool" {
            AttnMask::Bool(t)
        } else {
            AttnMask::Float(t)
        })
    }

    /// The activation a case names (PyTorch's default relu where absent).
    fn activation(c: &golden::Case, path: &str) -> TransformerActivation {
        match c.str_or(path, "relu") {
            "relu" => TransformerActivation::Relu,
            "gelu" => TransformerActivation::Gelu,
            other => panic!("{}: activation {other} is not supported", c.name),
        }
    }

    /// An encoder layer from the case's keyword arguments under `kw` (`constructor_kwargs`,
    /// or `encoder_layer_kwargs` for a stack), PyTorch's defaults where absent. The layer-norm
    /// epsilon is a constructor argument, which the single-layer cases also state beside it.
    fn enc_layer_from(c: &golden::Case, kw: &str) -> TransformerEncoderLayer<f64> {
        let eps = c.f64_or(&format!("{kw}/layer_norm_eps"), c.f64_or("layer_norm_eps", 1e-5));
        TransformerEncoderLayerConfig {
            dim_feedforward: c.usize_or(&format!("{kw}/dim_feedforward"), 2048),
            dropout: c.f64_or(&format!("{kw}/dropout"), 0.1),
            batch_first: c.bool_or(&format!("{kw}/batch_first"), false),
            norm_first: c.bool_or(&format!("{kw}/norm_first"), false),
            bias: c.bool_or(&format!("{kw}/bias"), true),
            activation: activation(c, &format!("{kw}/activation")),
            layer_norm_eps: eps,
            ..TransformerEncoderLayerConfig::new(c.usize(&format!("{kw}/d_model")), c.usize(&format!("{kw}/nhead")))
        }
        .build()
        .unwrap()
    }

    /// Loads the case's parameters, runs `run` on its `grad_inputs`, and checks the output
    /// and every gradient.
    fn golden_check<M: Module<f64>>(name: &str, c: &golden::Case, m: &M, run: impl Fn(&[Var<f64>]) -> Var<f64>) {
        m.load_state_dict(&golden_state_dict(c), true).unwrap();
        let tol = c.tol("float64");
        let names: Vec<&str> = c.json["grad_inputs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let xs: Vec<Var<f64>> = names.iter().map(|n| Var::param(c.t(&format!("input.{n}")))).collect();
        let y = run(&xs);
        golden::assert_close(&format!("{name} output"), &y.value(), &c.t("output.output"), tol);
        y.backward_with(&c.t("upstream.output"));
        for (n, x) in names.iter().zip(&xs) {
            golden::assert_close(
                &format!("{name} grad {n}"),
                &x.grad().unwrap(),
                &c.t(&format!("grad_input.{n}")),
                tol,
            );
        }
        assert_param_grads(name, m, c, tol);
    }

    #[test]
    fn golden_encoder_layers() {
        for name in ["transformer_encoder_layer_postnorm_relu", "transformer_encoder_layer_prenorm_gelu"] {
            let Some(c) = golden::load(&format!("attention/{name}")) else {
                return;
            };
            let l = enc_layer_from(&c, "constructor_kwargs");
            let (src_mask, pad) = (mask(&c, "src_mask"), mask(&c, "src_key_padding_mask"));
            golden_check(name, &c, &l, |x| l.forward_with(&x[0], src_mask.as_ref(), pad.as_ref()));
        }
    }

    #[test]
    fn golden_encoder_two_layers_key_padding() {
        let name = "transformer_encoder_2layers_key_padding";
        let Some(c) = golden::load(&format!("attention/{name}")) else {
            return;
        };
        let layer = enc_layer_from(&c, "encoder_layer_kwargs");
        assert!(c.str("constructor").contains("norm=None"), "{name}: a final norm is not built here");
        let enc = TransformerEncoder::new(layer, c.usize("num_layers"), None);
        let (src_mask, pad) = (mask(&c, "mask"), mask(&c, "src_key_padding_mask"));
        golden_check(name, &c, &enc, |x| enc.forward_with(&x[0], src_mask.as_ref(), pad.as_ref()));
    }

    #[test]
    fn golden_decoder_layer() {
        let name = "transformer_decoder_layer";
        let Some(c) = golden::load(&format!("attention/{name}")) else {
            return;
        };
        let kw = |k: &str| format!("constructor_kwargs/{k}");
        let l: TransformerDecoderLayer<f64> = TransformerDecoderLayerConfig {
            dim_feedforward: c.usize_or(&kw("dim_feedforward"), 2048),
            dropout: c.f64_or(&kw("dropout"), 0.1),
            batch_first: c.bool_or(&kw("batch_first"), false),
            norm_first: c.bool_or(&kw("norm_first"), false),
            bias: c.bool_or(&kw("bias"), true),
            activation: activation(&c, &kw("activation")),
            layer_norm_eps: c.f64_or(&kw("layer_norm_eps"), 1e-5),
            ..TransformerDecoderLayerConfig::new(c.usize(&kw("d_model")), c.usize(&kw("nhead")))
        }
        .build()
        .unwrap();
        let masks = ["tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"].map(|m| mask(&c, m));
        let [tgt_mask, memory_mask, tgt_pad, mem_pad] = &masks;
        golden_check(name, &c, &l, |x| {
            l.forward_with(&x[0], &x[1], tgt_mask.as_ref(), memory_mask.as_ref(), tgt_pad.as_ref(), mem_pad.as_ref())
        });
    }

    // ------------------------------------------------------------------ tiny overfit

    /// `[n, len, vocab]` one-hot rows of `ids` (row-major `[n, len]`).
    fn one_hot(ids: &[usize], n: usize, len: usize, vocab: usize) -> Tensor<f64> {
        Tensor::one_hot(&Indices::new(ids.to_vec(), &[n, len]), vocab)
    }

    fn cross_entropy(logits: &Var<f64>, target: &Tensor<f64>) -> Var<f64> {
        let n = (target.numel() / target.size(-1)) as f64;
        logits.log_softmax(-1).mul(&Var::constant(target.clone())).sum_all().mul_scalar(-1.0 / n)
    }

    fn accuracy(logits: &Tensor<f64>, ids: &[usize]) -> f64 {
        let pred = logits.argmax(-1, false).data;
        pred.iter().zip(ids).filter(|(a, b)| a == b).count() as f64 / ids.len() as f64
    }

    #[test]
    fn tiny_overfit_encoder_reverses_sequences() {
        // One encoder layer maps one-hot tokens (plus sinusoidal positions) to the tokens in
        // reverse order: only attention can move information between positions.
        init::manual_seed(11);
        let (n, len, vocab, d) = (24, 5, 4, 16);
        let mut rng = Rng::new(12);
        let src: Vec<usize> = (0..n * len).map(|_| rng.below(vocab as u64) as usize).collect();
        let tgt: Vec<usize> =
            (0..n).flat_map(|b| (0..len).rev().map(|t| src[b * len + t]).collect::<Vec<_>>()).collect();
        let x = Var::constant(one_hot(&src, n, len, vocab));
        let y = one_hot(&tgt, n, len, vocab);
        let pe = Var::constant(sinusoidal_encoding::<f64>(len, d));
        let embed: Linear<f64> = Linear::new(vocab, d);
        let layer = enc_cfg(d, 2, 32).build::<f64>().unwrap();
        let head: Linear<f64> = Linear::new(d, vocab);
        let forward = || head.forward(&layer.forward(&embed.forward(&x).add(&pe)));
        let params: Vec<Var<f64>> = [embed.parameters(), layer.parameters(), head.parameters()].concat();
        let mut state: Vec<_> = params.iter().map(|p| (p.value().zeros_like(), p.value().zeros_like())).collect();
        let mut loss = f64::MAX;
        for step in 1..=300 {
            params.iter().for_each(|p| p.zero_grad());
            let l = cross_entropy(&forward(), &y);
            loss = l.item();
            l.backward();
            adam_step(&params, &mut state, step, 0.01);
        }
        let acc = accuracy(&forward().value(), &tgt);
        assert!(acc == 1.0 && loss < 0.05, "accuracy {acc}, loss {loss}");
    }

    #[test]
    fn tiny_overfit_transformer_translates() {
        // A one-layer encoder-decoder learns a toy translation, "reverse the sentence and
        // shift every word" (t -> (t + 1) mod V), teacher-forced with a causal mask, then
        // decodes it greedily token by token.
        init::manual_seed(13);
        let (n, len, vocab, d) = (16, 4, 4, 16);
        let bos = vocab; // the decoder's extra start symbol
        let mut rng = Rng::new(14);
        let src: Vec<usize> = (0..n * len).map(|_| rng.below(vocab as u64) as usize).collect();
        let tgt: Vec<usize> =
            (0..n).flat_map(|b| (0..len).rev().map(|t| (src[b * len + t] + 1) % vocab).collect::<Vec<_>>()).collect();
        let dec_in: Vec<usize> = (0..n)
            .flat_map(|b| {
                std::iter::once(bos).chain(tgt[b * len..b * len + len - 1].iter().copied()).collect::<Vec<_>>()
            })
            .collect();
        let pe = Var::constant(sinusoidal_encoding::<f64>(len, d));
        let src_embed: Linear<f64> = Linear::new(vocab, d);
        let tgt_embed: Linear<f64> = Linear::new(vocab + 1, d);
        let model: Transformer<f64> = TransformerConfig {
            num_encoder_layers: 1,
            num_decoder_layers: 1,
            dim_feedforward: 32,
            dropout: 0.0,
            batch_first: true,
            ..TransformerConfig::new(d, 2)
        }
        .build()
        .unwrap();
        let head: Linear<f64> = Linear::new(d, vocab);
        let src_x = Var::constant(one_hot(&src, n, len, vocab));
        let run = |dec_ids: &[usize], t: usize| {
            let tgt_x = Var::constant(one_hot(dec_ids, n, t, vocab + 1));
            let mask = causal_mask(t);
            let masks = TransformerMasks { tgt_mask: Some(&mask), ..Default::default() };
            let s = src_embed.forward(&src_x).add(&pe);
            let q = tgt_embed.forward(&tgt_x).add(&pe.narrow(0, 0, t));
            head.forward(&model.forward_with(&s, &q, &masks))
        };
        let y = one_hot(&tgt, n, len, vocab);
        let params: Vec<Var<f64>> =
            [src_embed.parameters(), tgt_embed.parameters(), model.parameters(), head.parameters()].concat();
        let mut state: Vec<_> = params.iter().map(|p| (p.value().zeros_like(), p.value().zeros_like())).collect();
        let mut loss = f64::MAX;
        for step in 1..=300 {
            params.iter().for_each(|p| p.zero_grad());
            let l = cross_entropy(&run(&dec_in, len), &y);
            loss = l.item();
            l.backward();
            adam_step(&params, &mut state, step, 0.01);
        }
        assert!(loss < 0.05, "loss {loss}");
        // greedy decoding from the start symbol alone
        let mut decoded: Vec<Vec<usize>> = vec![vec![bos]; n];
        for t in 1..=len {
            let ids: Vec<usize> = decoded.iter().flatten().copied().collect();
            let logits = no_grad(|| run(&ids, t)).value();
            let next = logits.select(1, t - 1).argmax(-1, false).data;
            for (seq, &tok) in decoded.iter_mut().zip(&next) {
                seq.push(tok);
            }
        }
        let out: Vec<usize> = decoded.iter().flat_map(|s| s[1..].to_vec()).collect();
        assert_eq!(out, tgt);
    }
}
