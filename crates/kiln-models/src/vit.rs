//! The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), as
//! torchvision builds it (`torchvision/models/vision_transformer.py`), with its `state_dict`
//! keys and every size configurable.

use std::fmt;

use kiln_autograd::Var;
use kiln_nn::init;
use kiln_nn::{
    Conv2d, Conv2dConfig, Dropout, Forward, Layer, LayerNorm, LayerNormConfig, Linear, Module, MultiheadAttention,
    MultiheadAttentionConfig, Sequential, TensorKind, GELU,
};
use kiln_tensor::{Float, Tensor};

use crate::ModelsError;

/// The sizes of a [`VisionTransformer`]; [`vit_b_16`](Self::vit_b_16) is torchvision's.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the square input image.
    pub image_size: usize,
    /// Side of a square patch (`image_size` must be a multiple).
    pub patch_size: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads (`hidden_dim` must be a multiple).
    pub num_heads: usize,
    /// Width of the token embeddings.
    pub hidden_dim: usize,
    /// Hidden width of each block's MLP.
    pub mlp_dim: usize,
    /// Outputs of the head.
    pub num_classes: usize,
    /// Dropout after the position embedding, in the MLPs and after attention (torchvision: 0).
    pub dropout: f64,
    /// Dropout on the attention weights (torchvision: 0).
    pub attention_dropout: f64,
}

impl VitConfig {
    /// ViT-B/16: 224×224 images in 16×16 patches, 12 blocks of 12 heads, width 768, MLP 3072,
    /// 1000 classes (86,567,656 parameters).
    pub fn vit_b_16() -> Self {
        VitConfig {
            image_size: 224,
            patch_size: 16,
            num_layers: 12,
            num_heads: 12,
            hidden_dim: 768,
            mlp_dim: 3072,
            num_classes: 1000,
            dropout: 0.0,
            attention_dropout: 0.0,
        }
    }

    /// Tokens of the sequence: one per patch and the class token.
    pub fn seq_length(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// Builds the model with torchvision's initialisation where it differs from the layers'
    /// defaults: position embedding N(0, 0.02²), class token and head zero, MLP weights
    /// Xavier-uniform with biases N(0, 10⁻¹²), the patch projection's weight N(0, 1/fan_in)
    /// (torchvision truncates it at 2σ) and bias zero.
    ///
    /// # Errors
    /// [`ModelsError::Config`] for a zero size, an image size that is not a multiple of the
    /// patch size, or a width that is not a multiple of the heads.
    pub fn build<E: Float>(&self) -> Result<VisionTransformer<E>, ModelsError> {
        let bad = |field, message: String| ModelsError::Config { config: "VitConfig", field, message };
        for (field, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("hidden_dim", self.hidden_dim),
            ("mlp_dim", self.mlp_dim),
            ("num_classes", self.num_classes),
        ] {
            if v == 0 {
                return Err(bad(field, "must be > 0, got 0".into()));
            }
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(bad(
                "image_size",
                format!("must be a multiple of patch_size {}, got {}", self.patch_size, self.image_size),
            ));
        }
        let d = self.hidden_dim;
        let conv_proj =
            Conv2dConfig { stride: [self.patch_size; 2], ..Conv2dConfig::new(3, d, self.patch_size) }.build::<E>()?;
        let layers = (0..self.num_layers).map(|_| EncoderBlock::new(self)).collect::<Result<Vec<_>, _>>()?;
        let model = VisionTransformer {
            config: self.clone(),
            class_token: Var::param(Tensor::zeros(&[1, 1, d])),
            conv_proj,
            encoder: Encoder {
                pos_embedding: Var::param(Tensor::zeros(&[1, self.seq_length(), d])),
                dropout: Dropout::try_new(self.dropout)?,
                layers: EncoderLayers(layers),
                ln: layer_norm(d)?,
            },
            heads: Heads { head: Linear::new_generic(d, self.num_classes) },
        };
        init::with_rng(|rng| {
            init::normal_(&model.encoder.pos_embedding, 0.0, 0.02, rng);
            let fan_in = 3 * self.patch_size * self.patch_size;
            init::normal_(&model.conv_proj.weight, 0.0, (1.0 / fan_in as f64).sqrt(), rng);
            if let Some(b) = &model.conv_proj.bias {
                init::zeros_(b);
            }
            for block in &model.encoder.layers.0 {
                for l in [&block.mlp[0], &block.mlp[3]] {
                    if let Some(l) = l.downcast_ref::<Linear<E>>() {
                        init::xavier_uniform_(&l.weight, 1.0, rng);
                        if let Some(b) = &l.bias {
                            init::normal_(b, 0.0, 1e-6, rng);
                        }
                    }
                }
            }
        });
        for p in model.heads.head.parameters() {
            init::zeros_(&p);
        }
        Ok(model)
    }
}

fn layer_norm<E: Float>(d: usize) -> Result<LayerNorm<E>, ModelsError> {
    Ok(LayerNormConfig { eps: 1e-6, ..LayerNormConfig::new(&[d]) }.build()?)
}

/// torchvision's `EncoderBlock`: pre-norm self-attention and MLP, each with a residual,
/// `x = x + dropout(self_attention(ln_1(x)))`, then `x + mlp(ln_2(x))`.
///
/// # Shapes
/// - Input and output: `[N, S, hidden_dim]`
///
/// # Parameters
/// `ln_1.*`, `self_attention.in_proj_weight` `[3·hidden_dim, hidden_dim]`,
/// `self_attention.in_proj_bias`, `self_attention.out_proj.*`, `ln_2.*`, `mlp.0.*`
/// (`hidden_dim` to `mlp_dim`) and `mlp.3.*` (back), the MLP being
/// `Linear, GELU, Dropout, Linear, Dropout` as torchvision's `MLPBlock`.
#[derive(Module)]
pub struct EncoderBlock<E: Float = f32> {
    /// Before attention (eps 10⁻⁶).
    pub ln_1: LayerNorm<E>,
    /// Batch-first multi-head self-attention.
    pub self_attention: MultiheadAttention<E>,
    /// After attention.
    pub dropout: Dropout,
    /// Before the MLP (eps 10⁻⁶).
    pub ln_2: LayerNorm<E>,
    /// `Linear, GELU, Dropout, Linear, Dropout`.
    pub mlp: Sequential<E>,
}

impl<E: Float> EncoderBlock<E> {
    /// A block of `config`'s sizes.
    ///
    /// # Errors
    /// [`ModelsError::Nn`] when `hidden_dim` is not a multiple of `num_heads` or a dropout
    /// probability is outside `[0, 1]`.
    pub fn new(config: &VitConfig) -> Result<Self, ModelsError> {
        let (d, p) = (config.hidden_dim, config.dropout);
        let self_attention = MultiheadAttentionConfig {
            dropout: config.attention_dropout,
            batch_first: true,
            ..MultiheadAttentionConfig::new(d, config.num_heads)
        }
        .build()?;
        let mlp = Sequential::new_generic()
            .add(Linear::<E>::new_generic(d, config.mlp_dim))
            .add(GELU::default())
            .add(Dropout::try_new(p)?)
            .add(Linear::<E>::new_generic(config.mlp_dim, d))
            .add(Dropout::try_new(p)?);
        Ok(EncoderBlock {
            ln_1: layer_norm(d)?,
            self_attention,
            dropout: Dropout::try_new(p)?,
            ln_2: layer_norm(d)?,
            mlp,
        })
    }
}

impl<E: Float> Forward<E> for EncoderBlock<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let y = self.ln_1.call(x);
        // MultiheadAttention takes (query, key, value, masks...), not one input: a plain call.
        let (y, _) = self.self_attention.forward(&y, &y, &y, None, false, None, true);
        let x = self.dropout.call(&y).add(x);
        let y = self.mlp.call(&self.ln_2.call(&x));
        x.add(&y)
    }
}

impl<E: Float> fmt::Display for EncoderBlock<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.self_attention.config;
        write!(
            f,
            "EncoderBlock(hidden_dim={}, num_heads={}) [{} parameters]",
            c.embed_dim,
            c.num_heads,
            self.num_parameters()
        )
    }
}

/// The blocks, named `encoder_layer_0`, `encoder_layer_1`, ... as torchvision's `OrderedDict`.
struct EncoderLayers<E: Float>(Vec<EncoderBlock<E>>);

impl<E: Float> Module<E> for EncoderLayers<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        for (i, b) in self.0.iter().enumerate() {
            b.visit(&format!("{prefix}encoder_layer_{i}."), f);
        }
    }
    fn set_training(&mut self, training: bool) {
        self.0.set_training(training)
    }
    fn is_training(&self) -> bool {
        self.0.is_training()
    }
}

/// torchvision's `Encoder`: position embedding, dropout, the blocks, a final layer norm.
#[derive(Module)]
struct Encoder<E: Float> {
    pos_embedding: Var<E>,
    dropout: Dropout,
    layers: EncoderLayers<E>,
    ln: LayerNorm<E>,
}

/// torchvision's `heads` (`Sequential(OrderedDict(head=Linear))`).
#[derive(Module)]
struct Heads<E: Float> {
    head: Linear<E>,
}

/// The Vision Transformer, torchvision's `VisionTransformer` (classification by the class
/// token, no pre-logits layer).
///
/// The image is cut into `patch_size`² patches by a strided convolution (`conv_proj`), the
/// patches become tokens after a learned `class_token`, `encoder.pos_embedding` is added, the
/// [`EncoderBlock`]s and a layer norm run, and `heads.head` maps the class token to logits.
/// Keys are torchvision's (`class_token`, `conv_proj.weight`, `encoder.pos_embedding`,
/// `encoder.layers.encoder_layer_0.self_attention.in_proj_weight`, `encoder.ln.weight`,
/// `heads.head.weight`, ...).
///
/// # Shapes
/// - Input: `[N, 3, image_size, image_size]`
/// - Output: `[N, num_classes]`
///
/// ```
/// use kiln_models::VitConfig;
/// use kiln_nn::{Forward, Module, Tensor, Var};
/// let config = VitConfig { image_size: 32, patch_size: 8, num_layers: 2, num_heads: 2, hidden_dim: 16, mlp_dim: 32, num_classes: 10, ..VitConfig::vit_b_16() };
/// let model = config.build::<f32>()?;
/// let y = model.forward(&Var::constant(Tensor::zeros(&[2, 3, 32, 32])));
/// assert_eq!(y.shape().as_slice(), &[2, 10]);
/// assert_eq!(model.state_dict()["encoder.pos_embedding"].shape(), &[1, 17, 16]);
/// # Ok::<(), kiln_models::ModelsError>(())
/// ```
#[derive(Module)]
pub struct VisionTransformer<E: Float = f32> {
    /// The sizes it was built with.
    #[module(skip)]
    pub config: VitConfig,
    /// The learned class token, `[1, 1, hidden_dim]` (first, as PyTorch lists a module's own
    /// parameters before its sub-modules').
    pub class_token: Var<E>,
    /// Patch embedding: `hidden_dim` filters of `patch_size`², stride `patch_size`.
    pub conv_proj: Conv2d<E>,
    encoder: Encoder<E>,
    heads: Heads<E>,
}

impl<E: Float> VisionTransformer<E> {
    /// The position embedding, `[1, seq_length, hidden_dim]`.
    pub fn pos_embedding(&self) -> &Var<E> {
        &self.encoder.pos_embedding
    }

    /// The encoder blocks.
    pub fn blocks(&self) -> &[EncoderBlock<E>] {
        &self.encoder.layers.0
    }

    /// The classifier (`heads.head`).
    pub fn head(&self) -> &Linear<E> {
        &self.heads.head
    }
}

impl<E: Float> Forward<E> for VisionTransformer<E> {
    /// **Panics** when the input is not `[N, 3, image_size, image_size]`.
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let s = x.shape();
        assert!(
            s.len() == 4 && s[2] == c.image_size && s[3] == c.image_size,
            "VisionTransformer: input {:?}, expected [N, 3, {}, {}]",
            s.as_slice(),
            c.image_size,
            c.image_size
        );
        let n = s[0];
        let patches = (c.image_size / c.patch_size).pow(2);
        let x = self.conv_proj.call(x).reshape(&[n, c.hidden_dim, patches]).permute(&[0, 2, 1]);
        let cls = self.class_token.expand(&[n, 1, c.hidden_dim]);
        let x = Var::cat(&[cls, x], 1);
        let e = &self.encoder;
        let mut x = e.dropout.call(&x.add(&e.pos_embedding));
        for block in &e.layers.0 {
            x = block.call(&x);
        }
        let x = e.ln.call(&x).select(1, 0);
        self.heads.head.call(&x)
    }
}

impl<E: Float> fmt::Display for VisionTransformer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "VisionTransformer(image_size={}, patch_size={}, num_layers={}, num_heads={}, hidden_dim={}, mlp_dim={}, \
             num_classes={}) [{} parameters]",
            c.image_size,
            c.patch_size,
            c.num_layers,
            c.num_heads,
            c.hidden_dim,
            c.mlp_dim,
            c.num_classes,
            self.num_parameters()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VitConfig {
        VitConfig {
            image_size: 8,
            patch_size: 4,
            num_layers: 1,
            num_heads: 2,
            hidden_dim: 8,
            mlp_dim: 16,
            num_classes: 3,
            ..VitConfig::vit_b_16()
        }
    }

    #[test]
    fn shapes_gradients_and_errors() {
        let m = tiny().build::<f32>().unwrap();
        let x = Var::constant(Tensor::ones(&[2, 3, 8, 8]));
        let y = m.forward(&x);
        assert_eq!(y.shape().as_slice(), &[2, 3]);
        y.sum_all().backward();
        // the head starts at zero, so only it gets a gradient through its bias and weight
        assert!(m.head().bias.as_ref().unwrap().grad().is_some());
        assert!(m.to_string().starts_with("VisionTransformer(image_size=8, patch_size=4"));
        let e = VitConfig { image_size: 10, ..tiny() }.build::<f32>().err().unwrap();
        assert_eq!(e.to_string(), "VitConfig: image_size must be a multiple of patch_size 4, got 10");
    }
}
