//! `TransformerDecoder`: a stack of decoder layers and an optional final norm, as PyTorch's
//! `nn.TransformerDecoder`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::transformer::{check_stack, deep_copy, write_hyper};
use super::transformer_decoder_layer::TransformerDecoderLayer;
use crate::error::NnError;
use crate::layers::attention::AttnMask;
use crate::layers::norm::LayerNorm;
use crate::{Forward, Module};

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
#[derive(Module)]
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
