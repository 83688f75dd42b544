//! [`summary`]: a table of a model's layers, like Keras' `model.summary()` and torchinfo's
//! `summary`, made with forward hooks.

use std::fmt;
use std::sync::{Arc, Mutex};

use kiln_autograd::{no_grad, Var};
use kiln_tensor::{Float, Tensor};

use crate::hooks::{register_module_forward_hook, ForwardCall};
use crate::module::{Layer, TensorKind};

/// One layer of a [`ModelSummary`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// The layer's `state_dict` prefix (`0`, `3.1`, `layer1.0.conv1`; empty for a layer
    /// without tensors). Nested layers are indented under their parent.
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
    /// The modules whose `forward` applied sub-modules without [`Layer::call`], so that their
    /// layers are not in the table and their multiply-adds not counted (by `state_dict` prefix).
    pub unhooked: Vec<String>,
}

impl ModelSummary {
    /// Parameter elements, trainable and frozen.
    pub fn total_params(&self) -> usize {
        self.trainable_params + self.frozen_params
    }
}

/// torchinfo's count (`LayerInfo.calculate_macs`, torchinfo 1.8): for each `weight` and
/// `bias` directly held by a layer, its element count times `N·H·W…` (the batch times the
/// spatial positions) for a convolution (a `weight` of rank > 2), times the batch `N`
/// otherwise. So a layer applied along a sequence (`[N, S, D]`) is counted once per sample, as
/// torchinfo counts it, not once per position.
fn mult_adds<E: Float>(layer: &dyn Layer<E>, out: &[usize]) -> u64 {
    let mut total = 0u64;
    let mut conv = false;
    layer.visit("", &mut |name, v, _| {
        if name == "weight" && v.ndim() > 2 {
            conv = true;
        }
    });
    layer.visit("", &mut |name, v, kind| {
        if kind == TensorKind::Parameter && (name == "weight" || name == "bias") {
            let n = v.numel() as u64;
            let batch = out.first().copied().unwrap_or(1);
            let positions: usize =
                if conv && out.len() >= 2 { batch * out[2..].iter().product::<usize>() } else { batch };
            total += n * positions as u64;
        }
    });
    total
}

/// A hooked call, as the summary's hook records it.
struct Row<E: Float> {
    order: u64,
    depth: usize,
    kind: String,
    output_shape: Vec<usize>,
    params: usize,
    mult_adds: u64,
    /// The module's tensors under its own keys (`weight`, `conv1.weight`).
    tensors: Vec<(String, Var<E>)>,
}

/// Summarises `model` for an input of `input_shape`: each layer's type, output shape,
/// parameter count and multiply-adds, and the totals, by running one forward pass on zeros
/// under `no_grad` with a forward hook on every module ([`register_module_forward_hook`]).
///
/// Any model works whose `forward` applies its sub-modules with [`Layer::call`] (as
/// [`Sequential`](crate::Sequential) does, and as a `#[derive(Module)]` struct's own `forward`
/// writes `self.conv1.call(&x)`): the table lists every module called, nested ones indented
/// under their container, named by their `state_dict` prefix (`layer1.0.conv1`; empty for
/// modules without tensors). A module whose `forward` applies its sub-modules with a bare
/// `forward` is one row (listed in [`ModelSummary::unhooked`]) and its multiply-adds are
/// not counted. Multiply-adds are counted as torchinfo counts them: each `weight` and `bias`
/// of a layer times the output positions it is applied at; a container's are its layers'.
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
pub fn summary<E: Float, M: Layer<E> + ?Sized>(model: &M, input_shape: &[usize]) -> ModelSummary {
    let (mut trainable, mut frozen, mut param_bytes) = (0, 0, 0);
    let mut keys: Vec<(String, Var<E>)> = Vec::new();
    model.visit("", &mut |k, v, kind| {
        let n = v.numel();
        param_bytes += n * std::mem::size_of::<E>();
        if kind == TensorKind::Parameter {
            if v.requires_grad() {
                trainable += n;
            } else {
                frozen += n;
            }
        }
        keys.push((k.to_string(), v.clone()));
    });
    let recorded: Arc<Mutex<Vec<Row<E>>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = recorded.clone();
    let hook = register_module_forward_hook(move |c: &ForwardCall<'_, E>| {
        let output_shape = c.output.shape().to_vec();
        let text = c.module.to_string();
        let kind = text.split(|ch: char| ch == '(' || ch.is_whitespace()).next().unwrap_or("").to_string();
        let mut tensors = Vec::new();
        let mut params = 0;
        c.module.visit("", &mut |k, v, kind| {
            if kind == TensorKind::Parameter {
                params += v.numel();
            }
            tensors.push((k.to_string(), v.clone()));
        });
        let mult_adds = mult_adds(c.module, &output_shape);
        let row = Row { order: c.order, depth: c.depth, kind, output_shape, params, mult_adds, tensors };
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(row);
    });
    no_grad(|| {
        let x = Var::constant(Tensor::<E>::zeros(input_shape));
        model.call(&x);
    });
    drop(hook);
    let mut rows = std::mem::take(&mut *recorded.lock().unwrap_or_else(|e| e.into_inner()));
    rows.sort_by_key(|r| r.order);
    // The model itself is the outermost call; its modules are the table (a model that is
    // one layer is its own one row).
    if rows.len() > 1 {
        rows.remove(0);
        for r in &mut rows {
            r.depth -= 1;
        }
    }
    let leaf: Vec<bool> = (0..rows.len()).map(|i| rows.get(i + 1).is_none_or(|n| n.depth <= rows[i].depth)).collect();
    let mut layers: Vec<LayerSummary> = Vec::with_capacity(rows.len());
    let mut unhooked = Vec::new();
    let mut act = input_shape.iter().product::<usize>() * std::mem::size_of::<E>();
    for (i, r) in rows.iter().enumerate() {
        // The state_dict prefix: a tensor's key in the model less its key in the module.
        let name = r
            .tensors
            .first()
            .and_then(|(local, v)| {
                let (full, _) = keys.iter().find(|(_, w)| w.same(v))?;
                Some(full.strip_suffix(local.as_str())?.trim_end_matches('.').to_string())
            })
            .unwrap_or_default();
        let mult_adds = if leaf[i] {
            act += r.output_shape.iter().product::<usize>() * std::mem::size_of::<E>();
            if r.tensors.iter().any(|(k, _)| k.contains('.')) {
                unhooked.push(name.clone());
            }
            r.mult_adds
        } else {
            rows[i + 1..]
                .iter()
                .zip(&leaf[i + 1..])
                .take_while(|(n, _)| n.depth > r.depth)
                .filter(|(_, l)| **l)
                .map(|(n, _)| n.mult_adds)
                .sum()
        };
        layers.push(LayerSummary {
            name,
            kind: r.kind.clone(),
            depth: r.depth,
            output_shape: r.output_shape.clone(),
            params: r.params,
            mult_adds,
        });
    }
    let mult_adds = rows.iter().zip(&leaf).filter(|(_, l)| **l).map(|(r, _)| r.mult_adds).sum();
    ModelSummary {
        input_shape: input_shape.to_vec(),
        layers,
        trainable_params: trainable,
        frozen_params: frozen,
        mult_adds,
        param_bytes,
        activation_bytes: act,
        unhooked,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = |s: &[usize]| format!("{s:?}");
        let names: Vec<String> = self
            .layers
            .iter()
            .map(|l| match l.name.as_str() {
                "" => format!("{}{}", "  ".repeat(l.depth), l.kind),
                name => format!("{}{} ({name})", "  ".repeat(l.depth), l.kind),
            })
            .collect();
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
        if !self.unhooked.is_empty() {
            writeln!(
                f,
                "Not broken down (their forward applies sub-modules without `call`; mult-adds not counted): {}",
                self.unhooked.join(", ")
            )?;
        }
        write!(f, "{line}")
    }
}
