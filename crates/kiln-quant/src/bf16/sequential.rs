//! Converting a whole [`Sequential`] to bfloat16: [`bf16_sequential`] and the
//! [`Bf16Sequential`] it returns.

use std::fmt;

use kiln_autograd::{no_grad, Var};
use kiln_nn::{Conv2d, Embedding, Forward, Layer, Linear, Module, Sequential, TensorKind};
use kiln_tensor::{Bf16Tensor, Tensor};

use super::{Bf16Conv2d, Bf16Embedding, Bf16Linear};
use crate::sequential::FloatLayer;

/// One layer of a [`Bf16Sequential`].
pub enum Bf16Layer {
    /// A `Linear` in bfloat16.
    Linear(Bf16Linear),
    /// A `Conv2d` in bfloat16.
    Conv2d(Bf16Conv2d),
    /// An `Embedding` in bfloat16.
    Embedding(Bf16Embedding),
    /// Any other layer, run in `f32` on the widened input with its parameters and buffers
    /// rounded to bfloat16 values, its output rounded back to bfloat16.
    Float(FloatLayer),
}

impl Bf16Layer {
    fn as_layer(&self) -> &dyn Layer<f32> {
        match self {
            Bf16Layer::Linear(l) => l,
            Bf16Layer::Conv2d(c) => c,
            Bf16Layer::Embedding(e) => e,
            Bf16Layer::Float(f) => f,
        }
    }

    /// Bytes of the layer's parameters: 2 per bfloat16 value; a float layer's parameters
    /// (bfloat16 values held in `f32` variables) count 4 bytes each, buffers not at all.
    #[must_use]
    pub fn param_bytes(&self) -> usize {
        match self {
            Bf16Layer::Linear(l) => l.param_bytes(),
            Bf16Layer::Conv2d(c) => c.param_bytes(),
            Bf16Layer::Embedding(e) => e.param_bytes(),
            Bf16Layer::Float(f) => 4 * f.num_parameters(),
        }
    }

    /// Applies the layer to bfloat16 activations.
    ///
    /// **Panics** when the layer does (shape mismatch).
    #[must_use]
    pub fn forward_bf16(&self, x: &Bf16Tensor) -> Bf16Tensor {
        match self {
            Bf16Layer::Linear(l) => l.forward_bf16(x),
            Bf16Layer::Conv2d(c) => c.forward_bf16(x),
            Bf16Layer::Embedding(e) => e.forward_bf16(x),
            Bf16Layer::Float(f) => no_grad(|| f.forward(&Var::constant(x.to_f32())).value().to_bf16()),
        }
    }
}

/// A model converted to bfloat16 by [`bf16_sequential`]: `model.to(torch.bfloat16)` run on
/// bfloat16 input. Inference only (always in evaluation mode: dropout is off).
///
/// Activations between layers are [`Bf16Tensor`]s; [`forward_bf16`](Self::forward_bf16) takes
/// and returns them, [`forward_tensor`](Self::forward_tensor) rounds an `f32` input and widens
/// the output. It is a kiln-nn [`Layer`] itself ([`Module`] + [`Forward`] + `Display`), so it
/// runs wherever a model does (`Trainer::evaluate`, `predict`); as a `Module` it lists the
/// `f32` parameters and buffers of its float layers (keys `i.name`, as in a `Sequential`), not
/// the bfloat16 tensors, as kiln-quant's int8 layers do. [`param_bytes`](Self::param_bytes)
/// tells how much its parameters hold.
pub struct Bf16Sequential {
    layers: Vec<Bf16Layer>,
}

impl Bf16Sequential {
    /// A chain of the given layers.
    #[must_use]
    pub fn from_layers(layers: Vec<Bf16Layer>) -> Self {
        Bf16Sequential { layers }
    }

    /// The layers in order.
    #[must_use]
    pub fn layers(&self) -> &[Bf16Layer] {
        &self.layers
    }

    /// The number of layers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Bytes held by the parameters: 2 per value of a converted layer's weights and biases,
    /// 4 per parameter of a float layer (see [`Bf16Layer::param_bytes`]). For a model whose
    /// parameters all sit in converted layers it is half the `f32` model's.
    #[must_use]
    pub fn param_bytes(&self) -> usize {
        self.layers.iter().map(Bf16Layer::param_bytes).sum()
    }

    /// Applies every layer in order to bfloat16 activations.
    ///
    /// **Panics** when a layer does (shape mismatch).
    #[must_use]
    pub fn forward_bf16(&self, x: &Bf16Tensor) -> Bf16Tensor {
        self.layers.iter().fold(x.clone(), |x, l| l.forward_bf16(&x))
    }

    /// Rounds `x` to bfloat16, applies every layer, widens the output to `f32` (exactly).
    /// When the first layer is an embedding, `x` holds ids and is read as it is (ids above 256
    /// are not bfloat16 values; PyTorch passes them as integers).
    ///
    /// **Panics** when a layer does (shape mismatch).
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> Tensor<f32> {
        match self.layers.split_first() {
            Some((Bf16Layer::Embedding(e), rest)) => {
                rest.iter().fold(e.forward_tensor(x), |x, l| l.forward_bf16(&x)).to_f32()
            }
            _ => self.forward_bf16(&x.to_bf16()).to_f32(),
        }
    }
}

/// Inference only: the output carries no gradient (see
/// [`forward_tensor`](Bf16Sequential::forward_tensor)).
impl Forward<f32> for Bf16Sequential {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v)))
    }
}

/// Visits the `f32` parameters and buffers of the float layers (keys `i.name`, as in a
/// `Sequential`); the bfloat16 tensors are not variables.
impl Module<f32> for Bf16Sequential {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.as_layer().visit(&format!("{prefix}{i}."), f);
        }
    }
    /// bfloat16 models are inference only: the mode stays evaluation.
    fn set_training(&mut self, _training: bool) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for Bf16Sequential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Bf16Sequential(")?;
        for (i, l) in self.layers.iter().enumerate() {
            writeln!(f, "  ({i}): {}", l.as_layer().to_string().replace('\n', "\n  "))?;
        }
        write!(f, ") [{} parameter bytes]", self.param_bytes())
    }
}

/// Converts a [`Sequential`] to bfloat16, like `model.to(torch.bfloat16)`: every `Linear`,
/// `Conv2d` and `Embedding` (recognised by downcasting) becomes a [`Bf16Linear`],
/// [`Bf16Conv2d`] or [`Bf16Embedding`] with bfloat16 weights; every other layer
/// (ReLU, MaxPool2d, Flatten, Dropout, BatchNorm, LogSoftmax, a nested `Sequential`, a layer of
/// your own...) is moved into the result in evaluation mode with its parameters and buffers
/// rounded to bfloat16 values (`num_batches_tracked`, a count PyTorch keeps as an integer, is
/// left alone), and runs in `f32` on the widened activations, its output rounded back.
///
/// The model is taken **by value** (kiln-nn layers cannot be cloned), as
/// [`quantize_sequential`](crate::quantize_sequential) takes it; to keep the `f32` model,
/// convert a copy built with the same architecture and loaded with
/// [`load_state_dict`](Module::load_state_dict).
///
/// ```
/// use kiln_nn::{BatchNorm2d, Conv2dConfig, Flatten, Forward, Linear, MaxPool2d, Module, Padding, ReLU, Sequential};
/// use kiln_quant::bf16_sequential;
/// use kiln_tensor::{Rng, Tensor};
/// let mut model: Sequential = Sequential::new()
///     .add(Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(1, 4, 3) }.build::<f32>().unwrap())
///     .add(BatchNorm2d::new(4))
///     .add(ReLU)
///     .add(MaxPool2d::new(2))
///     .add(Flatten::default())
///     .add(Linear::new(4 * 4 * 4, 10));
/// model.eval();
/// let f32_bytes = 4 * model.num_parameters();
/// let x = Tensor::uniform(&[2, 1, 8, 8], 0.0, 1.0, &mut Rng::new(0));
/// let want = model.forward(&kiln_autograd::Var::constant(x.clone())).value();
///
/// let half = bf16_sequential(model); // by value
/// assert!(half.to_string().contains("Bf16Conv2d(1, 4"));
/// let got = half.forward_tensor(&x);
/// assert_eq!(got.shape(), &[2, 10]);
/// assert!(want.sub(&got).abs().max_all() < 0.02 * want.abs().max_all());
/// // the BatchNorm's 8 parameters stay f32 variables (holding bfloat16 values)
/// assert_eq!(half.param_bytes(), (f32_bytes - 4 * 8) / 2 + 4 * 8);
/// ```
#[must_use]
pub fn bf16_sequential(mut model: Sequential) -> Bf16Sequential {
    model.eval();
    let layers = model
        .into_layers()
        .into_iter()
        .map(|mut layer| {
            // `Sequential::push(boxed_layer)` boxes a box: look inside.
            while layer.is::<Box<dyn Layer<f32>>>() {
                layer = *layer.downcast::<Box<dyn Layer<f32>>>().ok().expect("checked by `is`");
            }
            if let Some(l) = layer.downcast_ref::<Linear>() {
                Bf16Layer::Linear(Bf16Linear::from_linear(l))
            } else if let Some(c) = layer.downcast_ref::<Conv2d>() {
                Bf16Layer::Conv2d(Bf16Conv2d::from_conv2d(c))
            } else if let Some(e) = layer.downcast_ref::<Embedding>() {
                Bf16Layer::Embedding(Bf16Embedding::from_embedding(e))
            } else {
                let float = FloatLayer::new(layer);
                float.visit("", &mut |name, v, _| {
                    if !name.ends_with("num_batches_tracked") {
                        v.update_value(|t| *t = t.to_bf16().to_f32());
                    }
                });
                Bf16Layer::Float(float)
            }
        })
        .collect();
    Bf16Sequential { layers }
}
