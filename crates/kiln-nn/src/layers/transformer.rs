//! The Transformer of "Attention is all you need" (Vaswani et al., 2017), as PyTorch builds
//! it: [`Transformer`] (an encoder and a decoder stack) and what the family shares
//! ([`TransformerActivation`], the checks and pieces of a layer). The layers and stacks have a
//! file each: [`TransformerEncoderLayer`](crate::TransformerEncoderLayer),
//! [`TransformerEncoder`](crate::TransformerEncoder),
//! [`TransformerDecoderLayer`](crate::TransformerDecoderLayer),
//! [`TransformerDecoder`](crate::TransformerDecoder), with post-norm (the paper's) or pre-norm
//! (`norm_first`) residual blocks.
//!
//! Parameter names are PyTorch's (`layers.0.self_attn.in_proj_weight`,
//! `decoder.layers.1.multihead_attn.out_proj.bias`, `encoder.norm.weight`, ...), so a PyTorch
//! `state_dict` loads unchanged. Boolean masks follow [`MultiheadAttention`]'s convention:
//! **true = masked out**.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::transformer_decoder::TransformerDecoder;
use super::transformer_decoder_layer::TransformerDecoderLayerConfig;
use super::transformer_encoder::TransformerEncoder;
use super::transformer_encoder_layer::TransformerEncoderLayerConfig;
use crate::error::NnError;
use crate::init;
use crate::layers::attention::{causal_mask, AttnMask, MultiheadAttention, MultiheadAttentionConfig};
use crate::layers::dropout::Dropout;
use crate::layers::linear::{Linear, LinearConfig};
use crate::layers::norm::{LayerNorm, LayerNormConfig};
use crate::lora::LoraMultiheadAttention;
use crate::Module;

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
    pub(crate) fn apply<E: Float>(self, x: &Var<E>) -> Var<E> {
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
pub(crate) fn check_layer(
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
    if !d_model.is_multiple_of(nhead) {
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
pub(crate) struct Parts {
    pub d_model: usize,
    pub nhead: usize,
    pub dim_feedforward: usize,
    pub dropout: f64,
    pub eps: f64,
    pub batch_first: bool,
    pub bias: bool,
}

impl Parts {
    pub(crate) fn attention<E: Float>(&self) -> Result<MultiheadAttention<E>, NnError> {
        MultiheadAttentionConfig {
            dropout: self.dropout,
            bias: self.bias,
            batch_first: self.batch_first,
            ..MultiheadAttentionConfig::new(self.d_model, self.nhead)
        }
        .build()
    }
    pub(crate) fn linear<E: Float>(&self, i: usize, o: usize) -> Result<Linear<E>, NnError> {
        LinearConfig { bias: self.bias, ..LinearConfig::new(i, o) }.build()
    }
    pub(crate) fn norm<E: Float>(&self) -> Result<LayerNorm<E>, NnError> {
        LayerNormConfig { eps: self.eps, bias: self.bias, ..LayerNormConfig::new(&[self.d_model]) }.build()
    }
    pub(crate) fn dropout(&self) -> Result<Dropout, NnError> {
        Dropout::try_new(self.dropout)
    }
}

/// Writes the shared hyper-parameters as PyTorch-like `key=value` pairs.
pub(crate) fn write_hyper(
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

/// Sets what `attn` reads at run time from its configuration (dropout, layout) to a
/// Transformer layer's options.
///
/// **Panics** when `attn` has LoRA adapters, whose runner copied the options when they were
/// attached.
pub(crate) fn set_attention_options<E: Float>(
    layer: &str,
    attn: &mut LoraMultiheadAttention<E>,
    dropout: f64,
    batch_first: bool,
) {
    assert!(
        attn.in_proj_lora.is_none() && attn.out_proj_lora.is_none(),
        "{layer}: set dropout and batch_first before attaching LoRA adapters"
    );
    attn.base.config.dropout = dropout;
    attn.base.config.batch_first = batch_first;
}

/// The builder setters both Transformer layers have, inside `impl<E: Float> $layer<E>` (whose
/// configuration is `$config`): `dim_feedforward` (which draws the parameters again),
/// `dropout`, `batch_first`, `norm_first` and `activation`, given the layer's dropouts and its
/// attentions; and the private `check` they run.
macro_rules! layer_setters {
    ($layer:ident, $config:ident; dropouts: $($drop:ident),+; attentions: $($attn:ident),+) => {
        #[doc = "Sets the width of the feed-forward block (a builder:"]
        #[doc = concat!("`", stringify!($layer), "::new(512, 8).dim_feedforward(1024)`).")]
        #[doc = ""]
        #[doc = "The parameters change shape, so the layer is built again (without LoRA adapters) and"]
        #[doc = "every parameter is drawn again, from the init generator's state when the layer was first"]
        #[doc = concat!("built: the result equals [`", stringify!($config), "::build`] with the same options")]
        #[doc = "after the same [`init::manual_seed`](crate::init::manual_seed). The mode is kept."]
        #[doc = ""]
        #[doc = concat!("**Panics** on a combination [`", stringify!($config), "::build`] rejects")]
        #[doc = concat!("(`", stringify!($layer), ": dim_feedforward must be > 0, got 0`).")]
        #[must_use]
        pub fn dim_feedforward(self, dim_feedforward: usize) -> Self {
            use $crate::Module as _;
            let config = $config { dim_feedforward, ..self.config.clone() };
            Self::check(&config);
            let mut layer = self.drawn.redo(|| config.build::<E>()).unwrap_or_else(|e| panic!("{e}"));
            layer.set_training(self.is_training());
            layer
        }

        #[doc = "Sets the dropout probability of every dropout in the layer and of the attention"]
        #[doc = concat!("weights, keeping the parameters (a builder: `", stringify!($layer), "::new(512, 8).dropout(0.2)`).")]
        #[doc = ""]
        #[doc = concat!("**Panics** on a combination [`", stringify!($config), "::build`] rejects")]
        #[doc = concat!("(`", stringify!($layer), ": dropout must be in [0, 1], got 1.5`), or once LoRA adapters are")]
        #[doc = "attached to the attention (set options first)."]
        #[must_use]
        pub fn dropout(mut self, dropout: f64) -> Self {
            self.config.dropout = dropout;
            Self::check(&self.config);
            $(self.$drop.p = dropout;)+
            $($crate::layers::transformer::set_attention_options(
                stringify!($layer),
                &mut self.$attn,
                dropout,
                self.config.batch_first,
            );)+
            self
        }

        #[doc = "Sets the `[N, T, E]` layout of inputs and outputs, keeping the parameters (a builder:"]
        #[doc = concat!("`", stringify!($layer), "::new(512, 8).batch_first(true)`).")]
        #[doc = ""]
        #[doc = "**Panics** once LoRA adapters are attached to the attention (set options first)."]
        #[must_use]
        pub fn batch_first(mut self, batch_first: bool) -> Self {
            self.config.batch_first = batch_first;
            $($crate::layers::transformer::set_attention_options(
                stringify!($layer),
                &mut self.$attn,
                self.config.dropout,
                batch_first,
            );)+
            self
        }

        #[doc = "Sets pre-norm (`true`) or post-norm (`false`) residual blocks, keeping the parameters"]
        #[doc = concat!("(a builder: `", stringify!($layer), "::new(512, 8).norm_first(true)`).")]
        #[must_use]
        pub fn norm_first(mut self, norm_first: bool) -> Self {
            self.config.norm_first = norm_first;
            self
        }

        #[doc = "Sets the feed-forward activation, keeping the parameters (a builder:"]
        #[doc = concat!("`", stringify!($layer), "::new(512, 8).activation(TransformerActivation::Gelu)`).")]
        #[must_use]
        pub fn activation(mut self, activation: $crate::layers::transformer::TransformerActivation) -> Self {
            self.config.activation = activation;
            self
        }

        #[doc = concat!("Runs the checks of [`", stringify!($config), "::build`] on `c`.")]
        fn check(c: &$config) {
            $crate::layers::transformer::check_layer(
                stringify!($layer),
                c.d_model,
                c.nhead,
                c.dim_feedforward,
                c.dropout,
                c.layer_norm_eps,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    };
}
pub(crate) use layer_setters;

/// A fresh copy of `layer` with the same parameter values (PyTorch's `copy.deepcopy` in
/// `_get_clones`): built from its configuration, then loaded with its state.
pub(crate) fn deep_copy<E: Float, L: Module<E>>(
    layer: &L,
    build: impl Fn() -> Result<L, NnError>,
) -> Result<L, NnError> {
    let mut copy = build()?;
    copy.load_state_dict(&layer.state_dict(), true)?;
    copy.set_training(layer.is_training());
    Ok(copy)
}

/// Which dimension of a `[N, T, E]` (`batch_first`) or `[T, N, E]` input is the batch's
/// (0 for an unbatched `[T, E]` one).
pub(crate) fn batch_dim(batch_first: bool, ndim: usize) -> usize {
    if ndim == 3 && !batch_first {
        1
    } else {
        0
    }
}

/// Checks a stack's layer count and final norm.
pub(crate) fn check_stack<E: Float>(
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
#[derive(Module)]
pub struct Transformer<E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: TransformerConfig,
    /// The encoder stack (with its final norm).
    pub encoder: TransformerEncoder<E>,
    /// The decoder stack (with its final norm).
    pub decoder: TransformerDecoder<E>,
}

impl Transformer<f32> {
    /// A model with PyTorch's defaults for the given `d_model` and `nhead`.
    ///
    /// **Panics** on an invalid configuration (use [`TransformerConfig::build`] for a
    /// `Result`).
    ///
    /// In `f32`; any element type through [`Transformer::new_generic`].
    pub fn new(d_model: usize, nhead: usize) -> Self {
        Self::new_generic(d_model, nhead)
    }
}

impl<E: Float> Transformer<E> {
    /// [`Transformer::new`] in any element type: `Transformer::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`Transformer::new`] does.
    pub fn new_generic(d_model: usize, nhead: usize) -> Self {
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
pub(crate) mod testing {
    //! What the Transformer family's tests share: small configurations, random tensors,
    //! numerical gradient checks and golden-case plumbing.

    use kiln_autograd::{no_grad, Var};
    use kiln_tensor::{Indices, Rng, Tensor};

    use super::TransformerActivation;
    use crate::golden;
    use crate::layers::attention::tests::{assert_param_grads, golden_state_dict};
    use crate::layers::attention::AttnMask;
    use crate::{Module, TransformerDecoderLayerConfig, TransformerEncoderLayer, TransformerEncoderLayerConfig};

    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    pub(crate) fn enc_cfg(d: usize, h: usize, ff: usize) -> TransformerEncoderLayerConfig {
        TransformerEncoderLayerConfig {
            dim_feedforward: ff,
            dropout: 0.0,
            batch_first: true,
            ..TransformerEncoderLayerConfig::new(d, h)
        }
    }

    pub(crate) fn dec_cfg(d: usize, h: usize, ff: usize) -> TransformerDecoderLayerConfig {
        TransformerDecoderLayerConfig {
            dim_feedforward: ff,
            dropout: 0.0,
            batch_first: true,
            ..TransformerDecoderLayerConfig::new(d, h)
        }
    }

    /// Checks every parameter's gradient of `u · f()` against central differences.
    pub(crate) fn check_param_grads<M: Module<f64>>(m: &M, f: impl Fn() -> Var<f64>) {
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
    pub(crate) fn perturb<M: Module<f64>>(m: &M, seed: u64) {
        let mut rng = Rng::new(seed);
        for p in m.parameters() {
            let noise = Tensor::uniform(&p.shape(), -0.1, 0.1, &mut rng);
            p.update_value(|v| *v = v.add(&noise));
        }
    }

    pub(crate) fn mask(c: &golden::Case, name: &str) -> Option<AttnMask<f64>> {
        let t = c.tensors.get(&format!("input.{name}"))?.clone();
        Some(if c.json["tensors"][format!("input.{name}")]["dtype"] == "bool" {
            AttnMask::Bool(t)
        } else {
            AttnMask::Float(t)
        })
    }

    /// The activation a case names (PyTorch's default relu where absent).
    pub(crate) fn activation(c: &golden::Case, path: &str) -> TransformerActivation {
        match c.str_or(path, "relu") {
            "relu" => TransformerActivation::Relu,
            "gelu" => TransformerActivation::Gelu,
            other => panic!("{}: activation {other} is not supported", c.name),
        }
    }

    /// An encoder layer from the case's keyword arguments under `kw` (`constructor_kwargs`,
    /// or `encoder_layer_kwargs` for a stack), PyTorch's defaults where absent. The layer-norm
    /// epsilon is a constructor argument, which the single-layer cases also state beside it.
    pub(crate) fn enc_layer_from(c: &golden::Case, kw: &str) -> TransformerEncoderLayer<f64> {
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
    pub(crate) fn golden_check<M: Module<f64>>(
        name: &str,
        c: &golden::Case,
        m: &mut M,
        run: impl Fn(&M, &[Var<f64>]) -> Var<f64>,
    ) {
        m.load_state_dict(&golden_state_dict(c), true).unwrap();
        let tol = c.tol("float64");
        let names: Vec<&str> = c.json["grad_inputs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let xs: Vec<Var<f64>> = names.iter().map(|n| Var::param(c.t(&format!("input.{n}")))).collect();
        let y = run(m, &xs);
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

    /// `[n, len, vocab]` one-hot rows of `ids` (row-major `[n, len]`).
    pub(crate) fn one_hot(ids: &[usize], n: usize, len: usize, vocab: usize) -> Tensor<f64> {
        Tensor::one_hot(&Indices::new(ids.to_vec(), &[n, len]), vocab)
    }

    pub(crate) fn cross_entropy(logits: &Var<f64>, target: &Tensor<f64>) -> Var<f64> {
        let n = (target.numel() / target.size(-1)) as f64;
        logits.log_softmax(-1).mul(&Var::constant(target.clone())).sum_all().mul_scalar(-1.0 / n)
    }

    pub(crate) fn accuracy(logits: &Tensor<f64>, ids: &[usize]) -> f64 {
        let pred = logits.argmax(-1, false).into_vec();
        pred.iter().zip(ids).filter(|(a, b)| a == b).count() as f64 / ids.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::layers::attention::tests::adam_step;
    use crate::layers::positional::sinusoidal_encoding;
    use crate::{Forward, TransformerDecoderLayer, TransformerEncoderLayer, TransformerEncoderLayerConfig};
    use kiln_autograd::no_grad;
    use kiln_tensor::{Rng, Tensor};

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
        let src_embed: Linear<f64> = LinearConfig::new(vocab, d).build().unwrap();
        let tgt_embed: Linear<f64> = LinearConfig::new(vocab + 1, d).build().unwrap();
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
        let head: Linear<f64> = LinearConfig::new(d, vocab).build().unwrap();
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
            let next = logits.select(1, t - 1).argmax(-1, false).into_vec();
            for (seq, &tok) in decoded.iter_mut().zip(&next) {
                seq.push(tok);
            }
        }
        let out: Vec<usize> = decoded.iter().flat_map(|s| s[1..].to_vec()).collect();
        assert_eq!(out, tgt);
    }
}
