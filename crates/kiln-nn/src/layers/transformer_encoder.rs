//! `TransformerEncoder`: a stack of encoder layers and an optional final norm, as PyTorch's
//! `nn.TransformerEncoder`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::transformer::{check_stack, deep_copy, write_hyper};
use super::transformer_encoder_layer::TransformerEncoderLayer;
use crate::error::NnError;
use crate::layers::attention::AttnMask;
use crate::layers::norm::LayerNorm;
use crate::{Forward, Module};

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
#[derive(Module)]
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

impl<E: Float> Forward<E> for TransformerEncoder<E> {
    fn forward(&self, src: &Var<E>) -> Var<E> {
        self.forward_with(src, None, None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::init;
    use crate::layers::attention::tests::adam_step;
    use crate::layers::linear::{Linear, LinearConfig};
    use crate::layers::positional::sinusoidal_encoding;
    use crate::layers::transformer::testing::*;
    use kiln_tensor::Rng;

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
    fn golden_encoder_two_layers_key_padding() {
        let name = "transformer_encoder_2layers_key_padding";
        let Some(c) = golden::load(&format!("attention/{name}")) else {
            return;
        };
        let layer = enc_layer_from(&c, "encoder_layer_kwargs");
        assert!(c.str("constructor").contains("norm=None"), "{name}: a final norm is not built here");
        let mut enc = TransformerEncoder::new(layer, c.usize("num_layers"), None);
        let (src_mask, pad) = (mask(&c, "mask"), mask(&c, "src_key_padding_mask"));
        golden_check(name, &c, &mut enc, |enc, x| enc.forward_with(&x[0], src_mask.as_ref(), pad.as_ref()));
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
        let embed: Linear<f64> = LinearConfig::new(vocab, d).build().unwrap();
        let layer = enc_cfg(d, 2, 32).build::<f64>().unwrap();
        let head: Linear<f64> = LinearConfig::new(d, vocab).build().unwrap();
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
}
