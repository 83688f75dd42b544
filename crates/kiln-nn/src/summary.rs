//! [`summary`]: a table of a [`Sequential`] model's layers, like Keras' `model.summary()` and
//! torchinfo's `summary`.

use std::fmt;

use kiln_autograd::{no_grad, Var};
use kiln_tensor::{Float, Tensor};

use crate::layers::Sequential;
use crate::module::{Layer, TensorKind};

/// One layer of a [`ModelSummary`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// The layer's `state_dict` prefix (`0`, `3.1`), nested layers indented under their parent.
    pub name: String,
    /// The layer's type (`Conv2d`, `Linear`, ...), the first word of its `Display`.
    pub kind: String,
    /// Nesting depth (0 for the model's own layers).
    pub depth: usize,
    /// The shape of its output for the summary's input.
    pub output_shape: Vec<usize>,
    /// Its own parameters (elements), nested layers' included.
    pub params: usize,
    /// Its multiply-adds, counted as torchinfo counts them (below).
    pub mult_adds: u64,
}

/// What [`summary`] returns: print it (`Display`) or read its figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    /// The input shape.
    pub input_shape: Vec<usize>,
    /// Every layer, depth first.
    pub layers: Vec<LayerSummary>,
    /// Parameter elements that require gradients.
    pub trainable_params: usize,
    /// Parameter elements that do not (frozen).
    pub frozen_params: usize,
    /// Multiply-adds of one forward pass on the input.
    pub mult_adds: u64,
    /// Bytes of the parameters and buffers.
    pub param_bytes: usize,
    /// Bytes of the input and of every layer's output (the activations a forward pass keeps).
    pub activation_bytes: usize,
}

impl ModelSummary {
    /// Parameter elements, trainable and frozen.
    pub fn total_params(&self) -> usize {
        self.trainable_params + self.frozen_params
    }
}

/// torchinfo's count: for each `weight` and `bias` directly held by a layer, its element count
/// times the output's positions (the output's elements over its channels: `N·H·W` for a
/// convolution's `[N, C, H, W]` weight of rank > 2, the product of all but the last dimension
/// otherwise).
fn mult_adds<E: Float>(layer: &dyn Layer<E>, out: &[usize]) -> u64 {
    let mut total = 0u64;
    let mut conv = false;
    layer.visit("", &mut |name, v, _| {
        if name == "weight" && v.value().shape().len() > 2 {
            conv = true;
        }
    });
    layer.visit("", &mut |name, v, kind| {
        if kind == TensorKind::Parameter && (name == "weight" || name == "bias") {
            let n = v.value().to_vec().len() as u64;
            let positions: usize = if conv && out.len() >= 2 {
                out[0] * out[2..].iter().product::<usize>()
            } else {
                out[..out.len().saturating_sub(1)].iter().product()
            };
            total += n * positions as u64;
        }
    });
    total
}

fn walk<E: Float>(
    seq: &Sequential<E>,
    prefix: &str,
    depth: usize,
    x: Var<E>,
    rows: &mut Vec<LayerSummary>,
    act: &mut usize,
) -> Var<E> {
    let mut x = x;
    for (i, layer) in seq.iter().enumerate() {
        let name = format!("{prefix}{i}");
        let at = rows.len();
        let text = layer.to_string();
        let kind = text.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or("").to_string();
        let mut params = 0;
        layer.visit("", &mut |_, v, k| {
            if k == TensorKind::Parameter {
                params += v.value().to_vec().len();
            }
        });
        rows.push(LayerSummary { name: name.clone(), kind, depth, output_shape: vec![], params, mult_adds: 0 });
        // Nested Sequential models are summarised layer by layer (kiln-nn has no forward hooks).
        let y = match layer.downcast_ref::<Sequential<E>>() {
            Some(inner) => walk(inner, &format!("{name}."), depth + 1, x.clone(), rows, act),
            None => layer.forward(&x),
        };
        let shape = y.value().shape().to_vec();
        rows[at].mult_adds = if layer.is::<Sequential<E>>() {
            rows[at + 1..].iter().filter(|r| r.depth == depth + 1).map(|r| r.mult_adds).sum()
        } else {
            *act += shape.iter().product::<usize>() * std::mem::size_of::<E>();
            mult_adds(layer, &shape)
        };
        rows[at].output_shape = shape;
        x = y;
    }
    x
}

/// Summarises `model` for an input of `input_shape`: each layer's type, output shape,
/// parameter count and multiply-adds, and the totals, by running one forward pass on zeros
/// under `no_grad` (layer by layer, into nested `Sequential`s: kiln-nn has no forward hooks, so
/// only `Sequential` models are summarised). Multiply-adds are counted as torchinfo counts them:
/// each `weight` and `bias` times the output positions it is applied at.
///
/// ```
/// use kiln_nn::{sequential, summary, Linear, ReLU, Sequential};
/// let model: Sequential = sequential![Linear::new(4, 8), ReLU, Linear::new(8, 2)];
/// let s = summary(&model, &[3, 4]);
/// assert_eq!(s.total_params(), 4 * 8 + 8 + 8 * 2 + 2);
/// assert_eq!(s.layers[2].output_shape, vec![3, 2]);
/// assert_eq!(s.mult_adds, 3 * (4 * 8 + 8 + 8 * 2 + 2)); // torchinfo's count for a batch of 3
/// println!("{s}");
/// ```
///
/// **Panics** where the model's forward pass panics on that shape.
pub fn summary<E: Float>(model: &Sequential<E>, input_shape: &[usize]) -> ModelSummary {
    let (mut trainable, mut frozen, mut param_bytes) = (0, 0, 0);
    crate::Module::visit(model, "", &mut |_, v, k| {
        let n = v.value().to_vec().len();
        param_bytes += n * std::mem::size_of::<E>();
        if k == TensorKind::Parameter {
            if v.requires_grad() {
                trainable += n;
            } else {
                frozen += n;
            }
        }
    });
    let mut rows = Vec::new();
    let mut act = input_shape.iter().product::<usize>() * std::mem::size_of::<E>();
    no_grad(|| {
        let x = Var::constant(Tensor::<E>::zeros(input_shape));
        walk(model, "", 0, x, &mut rows, &mut act);
    });
    let mult_adds = rows.iter().filter(|r| r.depth == 0).map(|r| r.mult_adds).sum();
    ModelSummary {
        input_shape: input_shape.to_vec(),
        layers: rows,
        trainable_params: trainable,
        frozen_params: frozen,
        mult_adds,
        param_bytes,
        activation_bytes: act,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = |s: &[usize]| format!("{s:?}");
        let names: Vec<String> =
            self.layers.iter().map(|l| format!("{}{} ({})", "  ".repeat(l.depth), l.kind, l.name)).collect();
        let w0 = names.iter().map(String::len).max().unwrap_or(0).max(5);
        let w1 = self.layers.iter().map(|l| shape(&l.output_shape).len()).max().unwrap_or(0).max(12);
        let line = "=".repeat(w0 + w1 + 34);
        writeln!(f, "{line}")?;
        writeln!(f, "{:<w0$}  {:<w1$}  {:>14}  {:>14}", "Layer", "Output Shape", "Param #", "Mult-Adds")?;
        writeln!(f, "{line}")?;
        for (l, n) in self.layers.iter().zip(&names) {
            writeln!(f, "{n:<w0$}  {:<w1$}  {:>14}  {:>14}", shape(&l.output_shape), l.params, l.mult_adds)?;
        }
        writeln!(f, "{line}")?;
        writeln!(f, "Total params: {}", self.total_params())?;
        writeln!(f, "Trainable params: {}", self.trainable_params)?;
        writeln!(f, "Non-trainable params: {}", self.frozen_params)?;
        writeln!(f, "Total mult-adds: {}", self.mult_adds)?;
        writeln!(f, "Input shape: {}", shape(&self.input_shape))?;
        writeln!(f, "Parameter memory (MiB): {:.2}", mib(self.param_bytes))?;
        writeln!(f, "Activation memory (MiB): {:.2}", mib(self.activation_bytes))?;
        write!(f, "{line}")
    }
}
