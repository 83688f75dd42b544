//! Quantising a whole [`Sequential`]: [`quantize_sequential`] (static, calibrated),
//! [`quantize_dynamic`], and the [`QuantSequential`] they return.
//!
//! The converter takes the model by value ([`Sequential::into_layers`]) and recognises each
//! layer by downcasting it ([`Layer::downcast`](kiln_nn::Layer)): a `Linear` (and, for static
//! quantisation, a `Conv2d`) has its configuration and weights read from its fields and is
//! replaced by a quantised layer; every other layer is moved into the result as it is, in a
//! [`FloatLayer`], with its parameters and buffers.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use kiln_autograd::{no_grad, Var};
use kiln_nn::serialize::sequential_from_json;
use kiln_nn::{
    Conv2d, Dropout, Flatten, Forward, Layer, Linear, MaxPool2d, MaxPool2dConfig, Module, ReLU, Sequential, TensorKind,
};
use kiln_tensor::Tensor;

use crate::codes::{Act, Codes};
use crate::conv::QuantConv2d;
use crate::error::QuantError;
use crate::gemm::MAX_K;
use crate::linear::{ActQuant, QuantLinear};
use crate::observer::{Observer, ObserverKind, QParams, QuantDtype};

/// Options of [`quantize_sequential`] and [`quantize_dynamic`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantConfig {
    /// The code type of activations (default `UInt8`, PyTorch's `quint8`).
    pub activation_dtype: QuantDtype,
    /// The observer that calibrates each quantised layer's input (default min-max).
    pub observer: ObserverKind,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig { activation_dtype: QuantDtype::UInt8, observer: ObserverKind::MinMax }
    }
}

/// A layer left in `f32` (activations, pooling, flatten, dropout, normalisation, or any
/// user-defined layer), held as it was taken from the model, always in evaluation mode.
///
/// Any layer runs; [`QuantSequential::save`] can write the kiln-nn layers that
/// [`sequential_from_json`] can rebuild (see [`spec`](FloatLayer::spec)) and refuses others
/// with a typed error.
pub struct FloatLayer {
    inner: Box<dyn Layer<f32>>,
}

impl FloatLayer {
    /// Wraps `layer`, switching it to evaluation mode.
    #[must_use]
    pub fn new(mut layer: Box<dyn Layer<f32>>) -> Self {
        layer.set_training(false);
        FloatLayer { inner: layer }
    }

    /// Rebuilds a layer from a spec read from a file (its state is loaded by the caller).
    pub(crate) fn from_spec(spec: &Value) -> Result<Self, String> {
        let model: Sequential =
            sequential_from_json(&Value::Array(vec![spec.clone()]).to_string()).map_err(|e| e.to_string())?;
        let layer = model.into_layers().pop().ok_or("the description gives no layer")?;
        Ok(FloatLayer::new(layer))
    }

    /// The layer's description in [`sequential_from_json`]'s format
    /// (`{"layer": "MaxPool2d", "args": {...}}`), read from its fields, or `None` when it is
    /// not one of the kiln-nn layers that function rebuilds (a user-defined layer, an `LSTM`,
    /// a nested `Sequential`...): such a model runs but cannot be saved.
    #[must_use]
    pub fn spec(&self) -> Option<Value> {
        crate::serialize::float_spec(&*self.inner)
    }

    /// The layer.
    #[must_use]
    pub fn layer(&self) -> &dyn Layer<f32> {
        &*self.inner
    }

    /// The layer, mutably (to load weights into it).
    #[must_use]
    pub fn layer_mut(&mut self) -> &mut dyn Layer<f32> {
        &mut *self.inner
    }

    /// The layer, by value.
    #[must_use]
    pub fn into_inner(self) -> Box<dyn Layer<f32>> {
        self.inner
    }
}

impl Forward<f32> for FloatLayer {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        self.inner.forward(x)
    }
}

impl Module<f32> for FloatLayer {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        self.inner.visit(prefix, f)
    }
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for FloatLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

/// One layer of a [`QuantSequential`].
pub enum QuantLayer {
    /// A quantised `Linear`.
    Linear(QuantLinear),
    /// A quantised `Conv2d`.
    Conv2d(QuantConv2d),
    /// A layer kept in `f32` (activations, pooling, flatten, dropout, normalisation...).
    Float(FloatLayer),
}

impl QuantLayer {
    fn as_layer(&self) -> &dyn Layer<f32> {
        match self {
            QuantLayer::Linear(l) => l,
            QuantLayer::Conv2d(c) => c,
            QuantLayer::Float(f) => f,
        }
    }

    fn into_boxed(self) -> Box<dyn Layer<f32>> {
        match self {
            QuantLayer::Linear(l) => Box::new(l),
            QuantLayer::Conv2d(c) => Box::new(c),
            QuantLayer::Float(f) => f.into_inner(),
        }
    }
}

/// A chain of quantised and float layers, what [`quantize_sequential`] and
/// [`quantize_dynamic`] return; inference only (always in evaluation mode: dropout is off).
///
/// It is a kiln-nn [`Layer`] itself ([`Module`] + [`Forward`] + `Display`), so it runs
/// wherever a model does (`Trainer::evaluate`, `predict`), can be saved with
/// [`save`](QuantSequential::save) and read back with [`load`](QuantSequential::load), or
/// turned into a plain [`Sequential`] of the same layers with
/// [`into_sequential`](QuantSequential::into_sequential).
pub struct QuantSequential {
    layers: Vec<QuantLayer>,
}

impl QuantSequential {
    /// A chain of the given layers.
    #[must_use]
    pub fn from_layers(layers: Vec<QuantLayer>) -> Self {
        QuantSequential { layers }
    }

    /// The layers in order.
    #[must_use]
    pub fn layers(&self) -> &[QuantLayer] {
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

    /// Applies every layer in order to a tensor.
    ///
    /// Between quantised layers the activations stay int8 codes wherever only `ReLU`,
    /// `MaxPool2d`, `Dropout` and `Flatten` stand between them (see the crate's `codes`
    /// module): a quantised layer then writes the next one's input codes directly. The result
    /// is the same, bit for bit, as running each layer on its own in `f32`
    /// ([`into_sequential`](QuantSequential::into_sequential)).
    ///
    /// **Panics** when a layer does (shape mismatch).
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> Tensor<f32> {
        no_grad(|| {
            let mut act = Act::F32(x.clone());
            let mut i = 0;
            while i < self.layers.len() {
                let (out, skip) = self.codes_out(i);
                act = match &self.layers[i] {
                    QuantLayer::Conv2d(c) => match (act, c.input_qparams()) {
                        (Act::Codes(x), Some(q)) if x.nhwc && x.q == q => c.forward_codes(&x, out),
                        (Act::F32(x), Some(q)) if x.ndim() == 4 => c.forward_codes(&Codes::from_nchw(&x, q), out),
                        (act, _) => Act::F32(c.forward_tensor(&act.into_tensor())),
                    },
                    QuantLayer::Linear(l) => match (act, l.input_qparams()) {
                        (Act::Codes(x), Some(q)) if !x.nhwc && x.q == q => l.forward_codes(&x, out),
                        (Act::F32(x), Some(q)) => l.forward_codes(&Codes::from_tensor(&x, q), out),
                        (act, _) => Act::F32(l.forward_tensor(&act.into_tensor())),
                    },
                    QuantLayer::Float(f) => match (act, CodeOp::of(f)) {
                        (Act::Codes(mut x), Some(CodeOp::Relu)) => {
                            x.relu();
                            Act::Codes(x)
                        }
                        (Act::Codes(x), Some(CodeOp::MaxPool2d(cfg))) if x.nhwc => Act::Codes(x.max_pool2d(cfg)),
                        (Act::Codes(x), Some(CodeOp::Identity)) => Act::Codes(x),
                        (Act::Codes(x), Some(CodeOp::Flatten)) if x.shape.len() >= 2 => Act::Codes(x.flatten()),
                        (act, _) => Act::F32(f.forward(&Var::constant(act.into_tensor())).value()),
                    },
                };
                i += 1 + skip;
            }
            act.into_tensor()
        })
    }

    /// Where quantised layer `i` should send its output: as codes for the next quantised
    /// layer (its static input parameters, and whether a `ReLU` right after `i` is folded in,
    /// which skips that layer) when only layers that run on codes stand between them.
    fn codes_out(&self, i: usize) -> (Option<(QParams, bool)>, usize) {
        if matches!(self.layers[i], QuantLayer::Float(_)) {
            return (None, 0);
        }
        for layer in &self.layers[i + 1..] {
            match layer {
                QuantLayer::Float(f) if CodeOp::of(f).is_some() => continue,
                QuantLayer::Float(_) => return (None, 0),
                QuantLayer::Conv2d(c) => return self.fold_relu(i, c.input_qparams()),
                QuantLayer::Linear(l) => return self.fold_relu(i, l.input_qparams()),
            }
        }
        (None, 0)
    }

    fn fold_relu(&self, i: usize, next: Option<QParams>) -> (Option<(QParams, bool)>, usize) {
        let relu = matches!(self.layers.get(i + 1), Some(QuantLayer::Float(f)) if f.layer().is::<ReLU>());
        match next {
            Some(q) => (Some((q, relu)), usize::from(relu)),
            None => (None, 0),
        }
    }

    /// The same layers in a kiln-nn [`Sequential`] (which cannot be saved with
    /// [`save`](QuantSequential::save) any more).
    #[must_use]
    pub fn into_sequential(self) -> Sequential {
        let mut s: Sequential = self.layers.into_iter().map(QuantLayer::into_boxed).collect();
        s.eval();
        s
    }
}

/// A float layer that runs on codes as well.
enum CodeOp<'a> {
    Relu,
    MaxPool2d(&'a MaxPool2dConfig),
    /// `Dropout` in evaluation mode.
    Identity,
    /// `Flatten` from dimension 1 to the last.
    Flatten,
}

impl<'a> CodeOp<'a> {
    fn of(f: &'a FloatLayer) -> Option<CodeOp<'a>> {
        let l = f.layer();
        if l.is::<ReLU>() {
            Some(CodeOp::Relu)
        } else if let Some(p) = l.downcast_ref::<MaxPool2d>() {
            Some(CodeOp::MaxPool2d(&p.config))
        } else if l.is::<Dropout>() {
            Some(CodeOp::Identity)
        } else {
            l.downcast_ref::<Flatten>().filter(|f| f.start_dim == 1 && f.end_dim == -1).map(|_| CodeOp::Flatten)
        }
    }
}

/// Inference only: the output carries no gradient (see
/// [`forward_tensor`](QuantSequential::forward_tensor)).
impl Forward<f32> for QuantSequential {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v)))
    }
}

/// Visits the `f32` parameters and buffers of the float layers (keys `i.name`, as in a
/// `Sequential`); the int8 weights are not variables.
impl Module<f32> for QuantSequential {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.as_layer().visit(&format!("{prefix}{i}."), f);
        }
    }
    /// Quantised models are inference only: the mode stays evaluation.
    fn set_training(&mut self, _training: bool) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for QuantSequential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "QuantSequential(")?;
        for (i, l) in self.layers.iter().enumerate() {
            writeln!(f, "  ({i}): {}", l.as_layer().to_string().replace('\n', "\n  "))?;
        }
        write!(f, ")")
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion

enum Plan {
    Linear(Box<Linear>),
    Conv2d(Box<Conv2d>),
    Float(FloatLayer),
}

/// Takes `model` apart: each `Linear` (and `Conv2d` when `quantize_conv`) found by
/// downcasting, the other layers kept as they are.
fn plan(mut model: Sequential, quantize_conv: bool) -> Result<Vec<Plan>, QuantError> {
    model.eval();
    model
        .into_layers()
        .into_iter()
        .enumerate()
        .map(|(i, mut layer)| {
            // `Sequential::push(boxed_layer)` boxes a box: look inside.
            while layer.is::<Box<dyn Layer<f32>>>() {
                layer = *layer.downcast::<Box<dyn Layer<f32>>>().ok().expect("checked by `is`");
            }
            let refuse = |layer: &dyn Layer<f32>, reason: String| QuantError::Unsupported {
                index: i,
                layer: layer.to_string(),
                reason,
            };
            let too_long = |k: usize| format!("{k} inputs per output, the int8 GEMM takes at most {MAX_K}");
            let layer = match layer.downcast::<Linear>() {
                Ok(l) if l.config.in_features > MAX_K => return Err(refuse(&*l, too_long(l.config.in_features))),
                Ok(l) => return Ok(Plan::Linear(l)),
                Err(other) => other,
            };
            if quantize_conv {
                if let Some(c) = layer.downcast_ref::<Conv2d>() {
                    let cfg = &c.config;
                    if cfg.groups != 1 {
                        let reason = format!("QuantConv2d supports groups = 1 only, got groups = {}", cfg.groups);
                        return Err(refuse(c, reason));
                    }
                    let k = cfg.in_channels * cfg.kernel_size[0] * cfg.kernel_size[1];
                    if k > MAX_K {
                        return Err(refuse(c, too_long(k)));
                    }
                    return Ok(Plan::Conv2d(layer.downcast::<Conv2d>().ok().expect("checked by `downcast_ref`")));
                }
            }
            Ok(Plan::Float(FloatLayer::new(layer)))
        })
        .collect()
}

/// Static post-training quantisation of a [`Sequential`], like PyTorch's
/// `prepare` → calibrate → `convert`: every `Linear` and `Conv2d` (with `groups = 1`) becomes
/// a [`QuantLinear`] / [`QuantConv2d`] with per-output-channel int8 weights and an input
/// quantised with fixed parameters, chosen by `config.observer` from the values that reach
/// the layer when the calibration batches run through the float model (in evaluation mode);
/// every other layer (ReLU, MaxPool2d, Flatten, Dropout, LogSoftmax, BatchNorm, a layer of
/// your own...) is moved into the result as it is, in `f32` and evaluation mode. Outputs of
/// quantised layers are dequantised to `f32`.
///
/// Layers are recognised by their type (downcasting), so only kiln-nn's `Linear` and `Conv2d`
/// themselves are quantised; a `Sequential` nested inside is kept in `f32` as a whole.
///
/// The model is taken **by value**: the layers that stay `f32` move into the result (kiln-nn
/// layers cannot be cloned). To keep the float model as well, quantise a copy: build the same
/// architecture again and [`load_state_dict`](Module::load_state_dict) the original's
/// [`state_dict`](Module::state_dict) into it.
///
/// ```
/// use kiln_nn::{Conv2d, Conv2dConfig, Flatten, Forward, Linear, MaxPool2d, Padding, ReLU, Sequential};
/// use kiln_quant::{quantize_sequential, QuantConfig};
/// use kiln_tensor::{Rng, Tensor};
/// let model: Sequential = Sequential::new()
///     .add(Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(1, 4, 3) }.build::<f32>().unwrap())
///     .add(ReLU)
///     .add(MaxPool2d::new(2))
///     .add(Flatten::default())
///     .add(Linear::new(4 * 4 * 4, 10));
/// let mut rng = Rng::new(0);
/// let batches: Vec<Tensor> = (0..4).map(|_| Tensor::uniform(&[8, 1, 8, 8], 0.0, 1.0, &mut rng)).collect();
/// let x = Tensor::uniform(&[2, 1, 8, 8], 0.0, 1.0, &mut rng);
/// let want = model.forward(&kiln_autograd::Var::constant(x.clone())).value();
///
/// let q = quantize_sequential(model, &batches, QuantConfig::default()).unwrap();
/// assert!(q.to_string().contains("QuantConv2d(1, 4"));
/// let got = q.forward_tensor(&x);
/// assert_eq!(got.shape(), &[2, 10]);
/// assert!(want.sub(&got).abs().max_all() < 0.05 * want.abs().max_all());
/// ```
///
/// # Errors
/// [`QuantError::NoCalibrationData`] without batches; [`QuantError::Unsupported`] naming the
/// layer's index for a `Conv2d` with `groups > 1`, or a layer with more than
/// [`MAX_K`](crate::gemm::MAX_K) inputs per output.
pub fn quantize_sequential(
    model: Sequential,
    calibration: &[Tensor<f32>],
    config: QuantConfig,
) -> Result<QuantSequential, QuantError> {
    if calibration.is_empty() {
        return Err(QuantError::NoCalibrationData);
    }
    let plans = plan(model, true)?;
    let mut observers: BTreeMap<usize, Box<dyn Observer>> = BTreeMap::new();
    for (i, p) in plans.iter().enumerate() {
        if matches!(p, Plan::Linear(_) | Plan::Conv2d(_)) {
            observers.insert(i, config.observer.build());
        }
    }
    no_grad(|| {
        for batch in calibration {
            let mut x = Var::constant(batch.clone());
            for (i, p) in plans.iter().enumerate() {
                if let Some(obs) = observers.get_mut(&i) {
                    x.with_value(|v| obs.observe(v.contiguous().as_slice().expect("contiguous")));
                }
                x = match p {
                    Plan::Linear(l) => l.forward(&x),
                    Plan::Conv2d(c) => c.forward(&x),
                    Plan::Float(f) => f.forward(&x),
                };
            }
        }
    });
    let dtype = config.activation_dtype;
    let layers = plans
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let act = || ActQuant::Static(observers[&i].qparams(dtype));
            Ok(match p {
                Plan::Linear(l) => QuantLayer::Linear(QuantLinear::from_linear(&l, act())),
                Plan::Conv2d(c) => QuantLayer::Conv2d(QuantConv2d::from_conv2d(&c, act()).map_err(|e| at(e, i))?),
                Plan::Float(f) => QuantLayer::Float(f),
            })
        })
        .collect::<Result<_, QuantError>>()?;
    Ok(QuantSequential { layers })
}

fn at(e: QuantError, i: usize) -> QuantError {
    match e {
        QuantError::Unsupported { layer, reason, .. } => QuantError::Unsupported { index: i, layer, reason },
        other => other,
    }
}

/// Dynamic quantisation of a [`Sequential`], like `torch.ao.quantization.quantize_dynamic`:
/// every `Linear` becomes a [`QuantLinear`] whose input is quantised on the fly from each
/// batch's own range; everything else (convolutions included, as in PyTorch) stays `f32`.
/// No calibration needed. For an [`LSTM`](kiln_nn::LSTM), see
/// [`QuantLSTM::dynamic`](crate::QuantLSTM::dynamic).
///
/// Takes the model by value, as [`quantize_sequential`] does (and for the same reason).
///
/// ```
/// use kiln_nn::{Forward, Linear, ReLU, Sequential};
/// use kiln_quant::{quantize_dynamic, QuantConfig};
/// use kiln_tensor::{Rng, Tensor};
/// let model: Sequential = Sequential::new().add(Linear::new(32, 16)).add(ReLU).add(Linear::new(16, 4));
/// let x = Tensor::uniform(&[5, 32], -1.0, 1.0, &mut Rng::new(1));
/// let want = model.forward(&kiln_autograd::Var::constant(x.clone())).value();
/// let q = quantize_dynamic(model, QuantConfig::default()).unwrap();
/// assert!(want.sub(&q.forward_tensor(&x)).abs().max_all() < 0.05 * want.abs().max_all());
/// ```
///
/// # Errors
/// [`QuantError::Unsupported`] naming the layer's index for a `Linear` with more than
/// [`MAX_K`](crate::gemm::MAX_K) inputs.
pub fn quantize_dynamic(model: Sequential, config: QuantConfig) -> Result<QuantSequential, QuantError> {
    let act = ActQuant::Dynamic(config.activation_dtype);
    let layers = plan(model, false)?
        .into_iter()
        .map(|p| match p {
            Plan::Linear(l) => QuantLayer::Linear(QuantLinear::from_linear(&l, act)),
            Plan::Conv2d(_) => unreachable!("convolutions are not quantised dynamically"),
            Plan::Float(f) => QuantLayer::Float(f),
        })
        .collect();
    Ok(QuantSequential { layers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_nn::{BatchNorm2d, Conv2dConfig, Dropout, Flatten, LogSoftmax, MaxPool2d, Padding, ReLU};
    use kiln_tensor::Rng;

    fn tiny_cnn() -> Sequential {
        Sequential::new()
            .add(
                Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(1, 6, 3) }
                    .build::<f32>()
                    .unwrap(),
            )
            .add(BatchNorm2d::new(6))
            .add(ReLU)
            .add(MaxPool2d::new(2))
            .add(Conv2dConfig { stride: [2, 2], ..Conv2dConfig::new(6, 8, 3) }.build::<f32>().unwrap())
            .add(ReLU)
            .add(Dropout::new(0.5))
            .add(Flatten::default())
            .add(Linear::new(8, 16))
            .add(ReLU)
            .add(Linear::new(16, 5))
            .add(LogSoftmax { dim: 1 })
    }

    #[test]
    fn tiny_model_keeps_its_predictions_and_layers() {
        let mut model = tiny_cnn();
        model.eval();
        let mut rng = Rng::new(12);
        let batches: Vec<Tensor<f32>> = (0..3).map(|_| Tensor::uniform(&[16, 1, 8, 8], 0.0, 1.0, &mut rng)).collect();
        for config in [
            QuantConfig::default(),
            QuantConfig { activation_dtype: QuantDtype::Int8, observer: ObserverKind::Percentile(99.99) },
        ] {
            let mut copy = tiny_cnn();
            copy.load_state_dict(&model.state_dict(), true).unwrap();
            let q = quantize_sequential(copy, &batches, config).unwrap();
            let kinds: Vec<&str> = q
                .layers()
                .iter()
                .map(|l| match l {
                    QuantLayer::Linear(_) => "L",
                    QuantLayer::Conv2d(_) => "C",
                    QuantLayer::Float(_) => "f",
                })
                .collect();
            assert_eq!(kinds.concat(), "CfffCfffLfLf");
            let x = Tensor::uniform(&[64, 1, 8, 8], 0.0, 1.0, &mut rng);
            let want = model.forward(&Var::constant(x.clone())).value();
            let got = q.forward_tensor(&x);
            let (wa, ga) = (want.argmax(1, false), got.argmax(1, false));
            let same = wa.as_slice().iter().zip(ga.as_slice()).filter(|(a, b)| a == b).count();
            assert!(same >= 58, "{config:?}: {same}/64 predictions kept");
            // BatchNorm's statistics came along as buffers of the float layer
            assert!(q.named_buffers().iter().any(|(k, _)| k == "1.running_mean"));
        }
    }

    fn mnist_like(batchnorm: bool) -> Sequential {
        let conv = |i, o| {
            Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(i, o, 3) }.build::<f32>().unwrap()
        };
        let mut s = Sequential::new().add(conv(1, 4)).add(ReLU).add(MaxPool2d::new(2)).add(conv(4, 8));
        if batchnorm {
            s = s.add(BatchNorm2d::new(8));
        }
        s.add(ReLU)
            .add(MaxPool2d::new(2))
            .add(Dropout::new(0.25))
            .add(Flatten::default())
            .add(Linear::new(8 * 3 * 3, 16))
            .add(ReLU)
            .add(Dropout::new(0.5))
            .add(Linear::new(16, 5))
            .add(LogSoftmax { dim: 1 })
    }

    #[test]
    fn codes_between_layers_give_exactly_the_layer_by_layer_result() {
        let mut rng = Rng::new(21);
        for (batchnorm, dtype) in [(false, QuantDtype::UInt8), (false, QuantDtype::Int8), (true, QuantDtype::UInt8)] {
            let batches: Vec<Tensor<f32>> =
                (0..2).map(|_| Tensor::uniform(&[8, 1, 12, 12], 0.0, 1.0, &mut rng)).collect();
            let config = QuantConfig { activation_dtype: dtype, observer: ObserverKind::MinMax };
            let q = quantize_sequential(mnist_like(batchnorm), &batches, config).unwrap();
            // wider than the calibration range, so that clamping happens too
            let x = Tensor::uniform(&[5, 1, 12, 12], -0.2, 1.3, &mut rng);
            let fused = q.forward_tensor(&x);
            let one = q.forward_tensor(&x.narrow(0, 2, 1).contiguous());
            let by_layer = q.into_sequential().forward(&Var::constant(x)).value();
            assert_eq!(fused.shape(), &[5, 5]);
            assert_eq!(fused.to_vec(), by_layer.to_vec(), "batchnorm {batchnorm}, {dtype:?}");
            assert_eq!(one.to_vec(), by_layer.narrow(0, 2, 1).contiguous().to_vec(), "batch of one");
        }
    }

    #[test]
    fn dynamic_quantises_linear_only_and_fits_in_a_sequential() {
        let q = quantize_dynamic(tiny_cnn(), QuantConfig::default()).unwrap();
        assert!(matches!(q.layers()[0], QuantLayer::Float(_)));
        assert!(matches!(q.layers()[8], QuantLayer::Linear(_)));
        let x = Tensor::uniform(&[4, 1, 8, 8], 0.0, 1.0, &mut Rng::new(1));
        let direct = q.forward_tensor(&x);
        // the quantised layers are kiln-nn layers: a plain Sequential holds them
        let s = q.into_sequential();
        assert_eq!(s.len(), 12);
        assert!(s[8].to_string().starts_with("QuantLinear(in_features=8,"));
        let via = s.forward(&Var::constant(x)).value();
        assert_eq!(via.to_vec(), direct.to_vec());
    }

    #[test]
    fn refusals_are_typed_and_name_the_layer() {
        let grouped = Sequential::new()
            .add(ReLU)
            .add(Conv2dConfig { groups: 2, ..Conv2dConfig::new(2, 2, 1) }.build::<f32>().unwrap());
        let b = [Tensor::ones(&[1, 2, 3, 3])];
        match quantize_sequential(grouped, &b, QuantConfig::default()) {
            Err(e @ QuantError::Unsupported { index: 1, .. }) => {
                assert!(e.to_string().starts_with("layer 1 (Conv2d(2, 2, kernel_size=(1, 1)"), "{e}");
                assert!(e.to_string().contains("groups = 1 only, got groups = 2"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted groups = 2"),
        }
        assert!(matches!(
            quantize_sequential(Sequential::new().add(ReLU), &[], QuantConfig::default()),
            Err(QuantError::NoCalibrationData)
        ));
        // dynamic quantisation leaves convolutions alone, grouped or not
        let grouped =
            Sequential::new().add(Conv2dConfig { groups: 2, ..Conv2dConfig::new(2, 2, 1) }.build::<f32>().unwrap());
        let q = quantize_dynamic(grouped, QuantConfig::default()).unwrap();
        assert!(matches!(q.layers()[0], QuantLayer::Float(_)));
    }

    /// A layer kiln-quant knows nothing about, displaying itself like a `Linear` (which the
    /// old description-parsing converter would have mistaken for one).
    struct Doubler;
    impl Forward<f32> for Doubler {
        fn forward(&self, x: &Var<f32>) -> Var<f32> {
            x.add(x)
        }
    }
    impl Module<f32> for Doubler {
        fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    }
    impl fmt::Display for Doubler {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Linear(in_features=4, out_features=4, bias=true)")
        }
    }

    #[test]
    fn layers_are_recognised_by_type_and_others_kept_as_they_are() {
        let fc: Linear = Linear::new(4, 3);
        let mut model: Sequential = Sequential::new().add(Doubler);
        // a boxed layer pushed as a layer is boxed again; the converter looks inside
        model.push(Box::new(fc) as Box<dyn Layer<f32>>);
        model.push(Sequential::new().add(ReLU).add(Dropout::new(0.5)));
        let x = Tensor::uniform(&[6, 4], -1.0, 1.0, &mut Rng::new(3));
        model.eval();
        let want = model.forward(&Var::constant(x.clone())).value();
        let mut rng = Rng::new(4);
        let batches: Vec<Tensor<f32>> = (0..2).map(|_| Tensor::uniform(&[8, 4], -1.0, 1.0, &mut rng)).collect();
        let q = quantize_sequential(model, &batches, QuantConfig::default()).unwrap();
        assert!(matches!(q.layers()[0], QuantLayer::Float(_)), "a Doubler stays a Doubler");
        assert!(matches!(q.layers()[1], QuantLayer::Linear(_)));
        let QuantLayer::Float(nested) = &q.layers()[2] else { panic!("the nested Sequential is kept") };
        assert!(nested.layer().is::<Sequential>());
        assert!(!nested.layer().is_training(), "kept layers are in evaluation mode");
        let got = q.forward_tensor(&x);
        assert!(want.sub(&got).abs().max_all() < 0.05 * want.abs().max_all());
        // it runs, but a file cannot describe a layer of our own: a typed error naming it
        let path = std::env::temp_dir().join(format!("kiln-quant-doubler-{}.safetensors", std::process::id()));
        match q.save(&path) {
            Err(e @ QuantError::Unsupported { index: 0, .. }) => {
                assert!(e.to_string().contains("cannot be saved"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(()) => panic!("saved a layer it cannot read back"),
        }
        assert!(!path.exists());
    }
}
