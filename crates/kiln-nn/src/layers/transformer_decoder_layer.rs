//! `TransformerDecoderLayer`: masked self-attention, attention over the encoder's output and a
//! feed-forward block, each in a residual branch with a layer norm, as PyTorch's
//! `nn.TransformerDecoderLayer`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::transformer::{check_layer, write_hyper, Parts, TransformerActivation};
use crate::error::NnError;
use crate::init;
use crate::layers::attention::AttnMask;
use crate::layers::dropout::Dropout;
use crate::layers::norm::LayerNorm;
use crate::lora::{LoraLinear, LoraMultiheadAttention};
use crate::{Forward, Module};

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
        let drawn = init::Drawn::start();
        let mut layer = TransformerDecoderLayer {
            config: self.clone(),
            self_attn: LoraMultiheadAttention::new(p.attention()?),
            multihead_attn: LoraMultiheadAttention::new(p.attention()?),
            linear1: LoraLinear::new(p.linear(self.d_model, p.dim_feedforward)?),
            dropout: p.dropout()?,
            linear2: LoraLinear::new(p.linear(p.dim_feedforward, self.d_model)?),
            norm1: p.norm()?,
            norm2: p.norm()?,
            norm3: p.norm()?,
            dropout1: p.dropout()?,
            dropout2: p.dropout()?,
            dropout3: p.dropout()?,
            drawn,
        };
        layer.drawn.finish();
        Ok(layer)
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
/// # LoRA
///
/// `self_attn` and `multihead_attn`, `linear1` and `linear2` are held as [`LoraMultiheadAttention`] and [`LoraLinear`]:
/// the plain layers (same forward, same keys, their fields readable through `Deref`) until
/// [`lora::inject`](crate::lora::inject) gives them adapters. Targets as PEFT names them: the
/// attention module (`self_attn`: its packed q/k/v projection `in_proj_weight` and
/// `out_proj`), `out_proj` alone, `linear1`, `linear2`; adapter keys
/// `layers.0.self_attn.out_proj.lora_A.weight`, `layers.0.linear1.lora_B.weight`, ...
///
/// # Parameters
/// - `self_attn.*`, `multihead_attn.*`: two [`MultiheadAttention`](crate::MultiheadAttention)s
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
#[derive(Module)]
pub struct TransformerDecoderLayer<E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: TransformerDecoderLayerConfig,
    /// Self-attention over the target.
    pub self_attn: LoraMultiheadAttention<E>,
    /// Attention from the target to the memory.
    pub multihead_attn: LoraMultiheadAttention<E>,
    /// Feed-forward expansion `E → F`.
    pub linear1: LoraLinear<E>,
    /// Dropout inside the feed-forward block.
    pub dropout: Dropout,
    /// Feed-forward projection `F → E`.
    pub linear2: LoraLinear<E>,
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
    /// Where the parameters were drawn from, for [`dim_feedforward`](Self::dim_feedforward),
    /// which changes their shapes.
    #[module(skip)]
    drawn: init::Drawn,
}

impl TransformerDecoderLayer<f32> {
    /// A layer with PyTorch's defaults.
    ///
    /// **Panics** on an invalid configuration (use [`TransformerDecoderLayerConfig::build`]
    /// for a `Result`).
    ///
    /// In `f32`; any element type through [`TransformerDecoderLayer::new_generic`].
    pub fn new(d_model: usize, nhead: usize) -> Self {
        Self::new_generic(d_model, nhead)
    }
}

impl<E: Float> TransformerDecoderLayer<E> {
    /// [`TransformerDecoderLayer::new`] in any element type: `TransformerDecoderLayer::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`TransformerDecoderLayer::new`] does.
    pub fn new_generic(d_model: usize, nhead: usize) -> Self {
        TransformerDecoderLayerConfig::new(d_model, nhead).build().unwrap_or_else(|e| panic!("{e}"))
    }

    super::transformer::layer_setters! {
        TransformerDecoderLayer, TransformerDecoderLayerConfig;
        dropouts: dropout, dropout1, dropout2, dropout3;
        attentions: self_attn, multihead_attn
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
    /// **Panics** when an input or a mask has the wrong shape (see [`MultiheadAttention`](crate::MultiheadAttention)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::init;
    use crate::layers::attention::causal_mask;
    use crate::layers::transformer::testing::*;
    use kiln_autograd::gradcheck;

    #[test]
    fn builder_setters_equal_the_config_build() {
        init::manual_seed(52);
        let mut a = TransformerDecoderLayer::<f64>::new_generic(8, 2);
        a.eval();
        let a = a
            .dim_feedforward(12)
            .dropout(0.2)
            .batch_first(true)
            .norm_first(true)
            .activation(TransformerActivation::Gelu);
        let next_a = init::with_rng(|g| g.next_u64());
        init::manual_seed(52);
        let b: TransformerDecoderLayer<f64> = TransformerDecoderLayerConfig {
            dim_feedforward: 12,
            dropout: 0.2,
            batch_first: true,
            norm_first: true,
            activation: TransformerActivation::Gelu,
            ..TransformerDecoderLayerConfig::new(8, 2)
        }
        .build()
        .unwrap();
        let next_b = init::with_rng(|g| g.next_u64());
        assert_eq!(a.config, b.config);
        assert_eq!(a.multihead_attn.config, b.multihead_attn.config);
        assert_eq!(a.state_dict(), b.state_dict());
        assert_eq!(next_a, next_b);
        assert!(!a.is_training(), "the mode is kept");
        let mut b = b;
        b.eval();
        let (tgt, mem) = (Var::constant(rand(&[2, 3, 8], 1)), Var::constant(rand(&[2, 4, 8], 2)));
        assert_eq!(a.forward(&tgt, &mem).value(), b.forward(&tgt, &mem).value());
    }

    #[test]
    #[should_panic(expected = "TransformerDecoderLayer: dim_feedforward must be > 0, got 0")]
    fn rebuilding_setter_panics_with_the_config_message() {
        let _ = TransformerDecoderLayer::new(8, 2).dim_feedforward(0);
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

    #[test]
    fn golden_decoder_layer() {
        let name = "transformer_decoder_layer";
        let Some(c) = golden::load(&format!("attention/{name}")) else {
            return;
        };
        let kw = |k: &str| format!("constructor_kwargs/{k}");
        let mut l: TransformerDecoderLayer<f64> = TransformerDecoderLayerConfig {
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
        golden_check(name, &c, &mut l, |l, x| {
            l.forward_with(&x[0], &x[1], tgt_mask.as_ref(), memory_mask.as_ref(), tgt_pad.as_ref(), mem_pad.as_ref())
        });
    }
}
