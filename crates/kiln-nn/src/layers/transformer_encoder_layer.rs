//! `TransformerEncoderLayer`: self-attention and a feed-forward block, each in a residual
//! branch with a layer norm, as PyTorch's `nn.TransformerEncoderLayer`.

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
        let drawn = init::Drawn::start();
        let mut layer = TransformerEncoderLayer {
            config: self.clone(),
            self_attn: LoraMultiheadAttention::new(p.attention()?),
            linear1: LoraLinear::new(p.linear(self.d_model, self.dim_feedforward)?),
            dropout: p.dropout()?,
            linear2: LoraLinear::new(p.linear(self.dim_feedforward, self.d_model)?),
            norm1: p.norm()?,
            norm2: p.norm()?,
            dropout1: p.dropout()?,
            dropout2: p.dropout()?,
            drawn,
        };
        layer.drawn.finish();
        Ok(layer)
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
/// # LoRA
///
/// `self_attn`, `linear1` and `linear2` are held as [`LoraMultiheadAttention`] and [`LoraLinear`]:
/// the plain layers (same forward, same keys, their fields readable through `Deref`) until
/// [`lora::inject`](crate::lora::inject) gives them adapters. Targets as PEFT names them: the
/// attention module (`self_attn`: its packed q/k/v projection `in_proj_weight` and
/// `out_proj`), `out_proj` alone, `linear1`, `linear2`; adapter keys
/// `layers.0.self_attn.out_proj.lora_A.weight`, `layers.0.linear1.lora_B.weight`, ...
///
/// # Parameters
/// - `self_attn.*`: a [`MultiheadAttention`](crate::MultiheadAttention) (`in_proj_weight` `[3E, E]` Glorot uniform,
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
#[derive(Module)]
pub struct TransformerEncoderLayer<E: Float = f32> {
    /// The configuration it was built with.
    #[module(skip)]
    pub config: TransformerEncoderLayerConfig,
    /// Self-attention.
    pub self_attn: LoraMultiheadAttention<E>,
    /// Feed-forward expansion `E → F`.
    pub linear1: LoraLinear<E>,
    /// Dropout inside the feed-forward block.
    pub dropout: Dropout,
    /// Feed-forward projection `F → E`.
    pub linear2: LoraLinear<E>,
    /// The norm around self-attention.
    pub norm1: LayerNorm<E>,
    /// The norm around the feed-forward block.
    pub norm2: LayerNorm<E>,
    /// Dropout on the self-attention branch.
    pub dropout1: Dropout,
    /// Dropout on the feed-forward branch.
    pub dropout2: Dropout,
    /// Where the parameters were drawn from, for [`dim_feedforward`](Self::dim_feedforward),
    /// which changes their shapes.
    #[module(skip)]
    drawn: init::Drawn,
}

impl TransformerEncoderLayer<f32> {
    /// A layer with PyTorch's defaults.
    ///
    /// **Panics** on an invalid configuration (use [`TransformerEncoderLayerConfig::build`]
    /// for a `Result`).
    ///
    /// In `f32`; any element type through [`TransformerEncoderLayer::new_generic`].
    pub fn new(d_model: usize, nhead: usize) -> Self {
        Self::new_generic(d_model, nhead)
    }
}

impl<E: Float> TransformerEncoderLayer<E> {
    /// [`TransformerEncoderLayer::new`] in any element type: `TransformerEncoderLayer::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`TransformerEncoderLayer::new`] does.
    pub fn new_generic(d_model: usize, nhead: usize) -> Self {
        TransformerEncoderLayerConfig::new(d_model, nhead).build().unwrap_or_else(|e| panic!("{e}"))
    }

    super::transformer::layer_setters! {
        TransformerEncoderLayer, TransformerEncoderLayerConfig;
        dropouts: dropout, dropout1, dropout2;
        attentions: self_attn
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
    /// **Panics** when `src` or a mask has the wrong shape (see [`MultiheadAttention`](crate::MultiheadAttention)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::init;
    use crate::layers::attention::AttnMask;
    use crate::layers::transformer::testing::*;
    use kiln_autograd::{gradcheck, Var};
    use kiln_tensor::Tensor;

    #[test]
    fn builder_setters_equal_the_config_build() {
        init::manual_seed(51);
        let a = TransformerEncoderLayer::<f64>::new_generic(8, 2)
            .dropout(0.3)
            .dim_feedforward(16)
            .batch_first(true)
            .norm_first(true)
            .activation(TransformerActivation::Gelu);
        let next_a = init::with_rng(|g| g.next_u64());
        init::manual_seed(51);
        let b: TransformerEncoderLayer<f64> = TransformerEncoderLayerConfig {
            dim_feedforward: 16,
            dropout: 0.3,
            batch_first: true,
            norm_first: true,
            activation: TransformerActivation::Gelu,
            ..TransformerEncoderLayerConfig::new(8, 2)
        }
        .build()
        .unwrap();
        let next_b = init::with_rng(|g| g.next_u64());
        assert_eq!(a.config, b.config);
        assert_eq!(a.self_attn.config, b.self_attn.config);
        assert_eq!(a.state_dict(), b.state_dict());
        assert_eq!(next_a, next_b);
        // the same dropout generators: the same masks
        let x = Var::constant(rand(&[2, 3, 8], 1));
        assert_eq!(a.forward(&x).value(), b.forward(&x).value());
    }

    #[test]
    #[should_panic(expected = "TransformerEncoderLayer: dim_feedforward must be > 0, got 0")]
    fn rebuilding_setter_panics_with_the_config_message() {
        let _ = TransformerEncoderLayer::new(8, 2).dim_feedforward(0);
    }

    #[test]
    #[should_panic(expected = "TransformerEncoderLayer: dropout must be in [0, 1], got 1.5")]
    fn setter_panics_with_the_config_message() {
        let _ = TransformerEncoderLayer::new(8, 2).dropout(1.5);
    }

    #[test]
    fn layouts_agree() {
        // sequence-first, batch-first and unbatched inputs give the same numbers
        let bf = enc_cfg(4, 2, 8).build::<f64>().unwrap();
        perturb(&bf, 1);
        let mut sf = TransformerEncoderLayerConfig { batch_first: false, ..enc_cfg(4, 2, 8) }.build::<f64>().unwrap();
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
    #[should_panic(expected = "key_padding_mask [2, 4] must be [N, S] = [2, 3]")]
    fn encoder_wrong_padding_mask_panics() {
        let l = enc_cfg(4, 2, 8).build::<f64>().unwrap();
        let _ =
            l.forward_with(&Var::constant(rand(&[2, 3, 4], 1)), None, Some(&AttnMask::Bool(Tensor::zeros(&[2, 4]))));
    }

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
    fn golden_encoder_layers() {
        for name in ["transformer_encoder_layer_postnorm_relu", "transformer_encoder_layer_prenorm_gelu"] {
            let Some(c) = golden::load(&format!("attention/{name}")) else {
                return;
            };
            let mut l = enc_layer_from(&c, "constructor_kwargs");
            let (src_mask, pad) = (mask(&c, "src_mask"), mask(&c, "src_key_padding_mask"));
            golden_check(name, &c, &mut l, |l, x| l.forward_with(&x[0], src_mask.as_ref(), pad.as_ref()));
        }
    }
}
