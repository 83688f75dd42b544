//! The [`Module`] trait: parameters, buffers, train/eval, freezing and state dicts.

use std::collections::BTreeMap;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};

use crate::error::NnError;

/// Whether a visited tensor is a trainable parameter or a buffer (running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A trainable parameter (`named_parameters`).
    Parameter,
    /// A buffer: state that is saved and loaded but not trained (`running_mean`, ...).
    Buffer,
}

/// A model's tensors by PyTorch `state_dict` key (`0.weight`, `layers.1.self_attn.in_proj_weight`).
pub type StateDict<E = f32> = BTreeMap<String, Tensor<E>>;

/// What [`Module::load_state_dict`] matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys loaded into the model.
    pub loaded: Vec<String>,
    /// Model keys the state dict lacks (only allowed when not strict).
    pub missing: Vec<String>,
    /// State-dict keys the model lacks (only allowed when not strict).
    pub unexpected: Vec<String>,
}

/// A building block of a network: it owns parameters and buffers (as leaf [`Var`]s), possibly
/// through sub-modules, and knows whether it is training.
///
/// Implement [`visit`](Module::visit) (or `#[derive(Module)]` from `kiln-derive`, which writes it
/// from the struct's fields) and everything else comes with it: `parameters`,
/// `named_parameters` with PyTorch's key names, `train`/`eval`, `zero_grad`, freezing,
/// `state_dict`/`load_state_dict`.
///
/// ```
/// use kiln_nn::{Forward, Linear, Module};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let layer: Linear = Linear::new(3, 2);
/// let names: Vec<String> = layer.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["weight", "bias"]);
/// assert_eq!(layer.num_parameters(), 3 * 2 + 2);
/// let y = layer.forward(&Var::constant(Tensor::ones(&[4, 3])));
/// assert_eq!(y.shape().as_slice(), &[4, 2]);
/// ```
pub trait Module<E: Float = f32>: Send + Sync {
    /// Calls `f(key, var, kind)` for every parameter and buffer, keys prefixed with `prefix`
    /// (which is empty or ends with `.`), in registration order.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind));

    /// Switches training mode (dropout, batch statistics) here and in every sub-module.
    fn set_training(&mut self, training: bool) {
        let _ = training;
    }

    /// Whether the module is in training mode (modules without a mode say `true`).
    fn is_training(&self) -> bool {
        true
    }

    /// Every parameter, in registration order.
    fn parameters(&self) -> Vec<Var<E>> {
        let mut v = Vec::new();
        self.visit("", &mut |_, p, k| {
            if k == TensorKind::Parameter {
                v.push(p.clone())
            }
        });
        v
    }

    /// Every parameter with its PyTorch `state_dict` key.
    fn named_parameters(&self) -> Vec<(String, Var<E>)> {
        let mut v = Vec::new();
        self.visit("", &mut |n, p, k| {
            if k == TensorKind::Parameter {
                v.push((n.to_string(), p.clone()))
            }
        });
        v
    }

    /// Every buffer with its key.
    fn named_buffers(&self) -> Vec<(String, Var<E>)> {
        let mut v = Vec::new();
        self.visit("", &mut |n, p, k| {
            if k == TensorKind::Buffer {
                v.push((n.to_string(), p.clone()))
            }
        });
        v
    }

    /// The number of parameter elements.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }

    /// The number of parameter elements that require grad (not frozen).
    fn num_trainable_parameters(&self) -> usize {
        self.parameters().iter().filter(|p| p.requires_grad()).map(|p| p.numel()).sum()
    }

    /// Clears every parameter's gradient.
    fn zero_grad(&self) {
        for p in self.parameters() {
            p.zero_grad();
        }
    }

    /// Training mode, like `model.train()`.
    fn train(&mut self) {
        self.set_training(true)
    }

    /// Evaluation mode, like `model.eval()`.
    fn eval(&mut self) {
        self.set_training(false)
    }

    /// Turns gradient tracking of every parameter on or off (freezing), like
    /// `model.requires_grad_(False)`.
    fn requires_grad_(&self, on: bool) {
        for p in self.parameters() {
            p.set_requires_grad(on);
        }
    }

    /// Turns gradient tracking on or off for the parameters whose key starts with `prefix`
    /// (`"encoder."` freezes an encoder for fine-tuning). Returns how many were changed.
    fn requires_grad_prefix(&self, prefix: &str, on: bool) -> usize {
        let mut n = 0;
        for (k, p) in self.named_parameters() {
            if k.starts_with(prefix) {
                p.set_requires_grad(on);
                n += 1;
            }
        }
        n
    }

    /// Copies of every parameter and buffer value by key, like `state_dict()`.
    fn state_dict(&self) -> StateDict<E> {
        let mut sd = StateDict::new();
        self.visit("", &mut |n, p, _| {
            sd.insert(n.to_string(), p.value());
        });
        sd
    }

    /// Loads values by key, like `load_state_dict(strict)`.
    ///
    /// Everything is checked before anything is written, so a failed load leaves the model
    /// as it was.
    ///
    /// # Errors
    /// [`NnError::StateDict`] listing the missing keys and the unexpected keys (when `strict`)
    /// and every key whose shape differs.
    fn load_state_dict(&mut self, state: &StateDict<E>, strict: bool) -> Result<LoadReport, NnError> {
        let mut targets: Vec<(String, Var<E>)> = Vec::new();
        self.visit("", &mut |n, p, _| targets.push((n.to_string(), p.clone())));
        let mut report = LoadReport::default();
        let mut mismatched = Vec::new();
        for (k, p) in &targets {
            match state.get(k) {
                None => report.missing.push(k.clone()),
                Some(t) => {
                    let shape = p.shape();
                    if t.shape() != shape.as_slice() {
                        mismatched.push(format!("{k}: model {:?}, state dict {:?}", shape.as_slice(), t.shape()));
                    }
                }
            }
        }
        for k in state.keys() {
            if !targets.iter().any(|(n, _)| n == k) {
                report.unexpected.push(k.clone());
            }
        }
        if !mismatched.is_empty() || (strict && (!report.missing.is_empty() || !report.unexpected.is_empty())) {
            return Err(NnError::StateDict {
                missing: if strict { report.missing } else { vec![] },
                unexpected: if strict { report.unexpected } else { vec![] },
                mismatched,
            });
        }
        for (k, p) in &targets {
            if let Some(t) = state.get(k) {
                p.set_value(t.contiguous());
                report.loaded.push(k.clone());
            }
        }
        Ok(report)
    }
}

/// A module with one input and one output, the kind [`Sequential`](crate::Sequential) chains.
pub trait Forward<E: Float = f32> {
    /// Applies the module.
    fn forward(&self, x: &Var<E>) -> Var<E>;
}

/// A [`Module`] that is also [`Forward`]: what containers hold as `Box<dyn Layer<E>>`.
///
/// Every `'static` type that is a `Module`, a `Forward` and `Display` is a `Layer` (a blanket
/// impl), and a `Layer` can be downcast back to its concrete type, as `Box<dyn Any>` can:
/// [`downcast_ref`](Self::downcast_ref) / [`downcast_mut`](Self::downcast_mut) on a
/// `dyn Layer`, [`downcast`](Self::downcast) on a `Box<dyn Layer>` (which gives the box back
/// when the type differs), or [`as_any`](Layer::as_any) / [`into_any`](Layer::into_any) for
/// [`std::any::Any`] itself. This is how code that converts models (quantisation, export)
/// recognises a layer and reads its fields.
///
/// ```
/// use kiln_nn::{Layer, Linear, ReLU, Sequential};
/// let seq: Sequential = Sequential::new().add(Linear::new(4, 3)).add(ReLU);
/// let fc = seq[0].as_any().downcast_ref::<Linear>().expect("a Linear");
/// assert_eq!(fc.config.out_features, 3);
/// assert!(seq[1].downcast_ref::<Linear>().is_none());
/// assert!(seq[1].is::<ReLU>());
///
/// // by value: take the layers out and unbox the one wanted
/// let mut layers = seq.into_layers();
/// let relu: Box<dyn Layer> = layers.pop().unwrap();
/// let not_linear = relu.downcast::<Linear>().err().unwrap(); // the box comes back
/// assert_eq!(not_linear.to_string(), "ReLU()");
/// let fc: Box<Linear> = layers.pop().unwrap().downcast::<Linear>().ok().unwrap();
/// assert_eq!(fc.config.in_features, 4);
/// ```
///
/// **Boxes**: `Box<dyn Layer<E>>` is itself a `Layer` (through the blanket impl), so calling
/// the trait methods `as_any` / `into_any` through an extra level of indirection — on a
/// `&Box<dyn Layer<E>>`, or a `Box<Box<dyn Layer<E>>>` — sees the *box* as the type. The
/// inherent [`downcast_ref`](Self::downcast_ref), [`is`](Self::is) and
/// [`downcast`](Self::downcast) always see the layer inside; otherwise deref first
/// (`(**boxed).as_any()`).
pub trait Layer<E: Float = f32>: Module<E> + Forward<E> + std::fmt::Display {
    /// The layer as [`Any`](std::any::Any), to downcast by reference.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The layer as mutable [`Any`](std::any::Any), to downcast by mutable reference.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
    /// The boxed layer as a boxed [`Any`](std::any::Any), to downcast by value.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
    /// The layer as a `dyn Layer` (what a forward hook is given).
    fn as_layer(&self) -> &dyn Layer<E>;

    /// Applies the layer and runs its forward hooks, like calling a module in PyTorch
    /// (`module(x)`, where `module.forward(x)` runs no hooks): a model's `forward` that applies
    /// its sub-modules with `call` can be hooked and [`summary`](crate::summary)-ed layer by layer.
    /// Costs one relaxed atomic load over [`forward`](Forward::forward) when no hook is
    /// registered. See [`crate::hooks`].
    ///
    /// ```
    /// use kiln_nn::{Forward, Layer, Linear, Module, ReLU, Tensor, Var};
    /// #[derive(Module)]
    /// struct Net { fc1: Linear, act: ReLU, fc2: Linear }
    /// impl Forward for Net {
    ///     fn forward(&self, x: &Var) -> Var {
    ///         self.fc2.call(&self.act.call(&self.fc1.call(x)))
    ///     }
    /// }
    /// impl std::fmt::Display for Net {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "Net") }
    /// }
    /// let net = Net { fc1: Linear::new(4, 8), act: ReLU, fc2: Linear::new(8, 2) };
    /// let shapes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    /// let s = shapes.clone();
    /// let handle = net.fc1.register_forward_hook(move |c| s.lock().unwrap().push(c.output.shape().to_vec()));
    /// let y = net.call(&Var::constant(Tensor::ones(&[3, 4])));
    /// assert_eq!(y.shape().as_slice(), &[3, 2]);
    /// assert_eq!(*shapes.lock().unwrap(), vec![vec![3, 8]]);
    /// drop(handle); // removes the hook
    /// ```
    fn call(&self, x: &Var<E>) -> Var<E> {
        crate::hooks::call(self.as_layer(), x)
    }

    /// Registers `hook`, run with this layer, its input and its output after each
    /// [`call`](Layer::call) of it, like PyTorch's `register_forward_hook`. The layer is known by
    /// its address: it must not move while the hook is registered. The hook stays until the
    /// handle is dropped or [`remove`](crate::hooks::ForwardHookHandle::remove)d. For a layer
    /// held as `dyn Layer` (`model[2]`), [`register_forward_hook`](crate::register_forward_hook).
    fn register_forward_hook(
        &self,
        hook: impl Fn(&crate::hooks::ForwardCall<'_, E>) + Send + Sync + 'static,
    ) -> crate::hooks::ForwardHookHandle
    where
        Self: Sized,
    {
        crate::hooks::register_forward_hook(self, hook)
    }
}

impl<E: Float, T: Module<E> + Forward<E> + std::fmt::Display + 'static> Layer<E> for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
    fn as_layer(&self) -> &dyn Layer<E> {
        self
    }
}

impl<E: Float> dyn Layer<E> + '_ {
    /// Whether the layer is a `T`.
    pub fn is<T: 'static>(&self) -> bool {
        self.as_any().is::<T>()
    }

    /// The layer as a `T`, if it is one.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }

    /// The layer as a mutable `T`, if it is one.
    pub fn downcast_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.as_any_mut().downcast_mut::<T>()
    }

    /// The boxed layer as a `Box<T>`, or the box unchanged (`Err`) if it is not a `T`.
    ///
    /// # Errors
    /// The original box when the layer is not a `T`.
    pub fn downcast<T: 'static>(self: Box<Self>) -> Result<Box<T>, Box<Self>> {
        if self.is::<T>() {
            Ok(self.into_any().downcast::<T>().unwrap_or_else(|_| unreachable!("checked by `is`")))
        } else {
            Err(self)
        }
    }
}

impl<E: Float, M: Module<E> + ?Sized> Module<E> for Box<M> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        (**self).visit(prefix, f)
    }
    fn set_training(&mut self, training: bool) {
        (**self).set_training(training)
    }
    fn is_training(&self) -> bool {
        (**self).is_training()
    }
}

impl<E: Float, M: Forward<E> + ?Sized> Forward<E> for Box<M> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        (**self).forward(x)
    }
}

impl<E: Float, M: Module<E>> Module<E> for Vec<M> {
    /// Elements are named by position (`0.weight`, `1.weight`, ...), as in `nn.ModuleList`.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        for (i, m) in self.iter().enumerate() {
            m.visit(&format!("{prefix}{i}."), f);
        }
    }
    fn set_training(&mut self, training: bool) {
        for m in self.iter_mut() {
            m.set_training(training);
        }
    }
    /// Whether every element is training (an empty list says `true`): one element in
    /// evaluation mode makes the list not training, whichever it is.
    fn is_training(&self) -> bool {
        self.iter().all(|m| m.is_training())
    }
}

impl<E: Float, M: Module<E>> Module<E> for Option<M> {
    /// An absent module has no parameters.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        if let Some(m) = self {
            m.visit(prefix, f)
        }
    }
    fn set_training(&mut self, training: bool) {
        if let Some(m) = self {
            m.set_training(training)
        }
    }
    fn is_training(&self) -> bool {
        self.as_ref().is_none_or(|m| m.is_training())
    }
}

/// Visits one parameter under `prefix + name` (what `#[derive(Module)]` emits for a `Var`
/// field).
pub fn visit_param<E: Float>(prefix: &str, name: &str, p: &Var<E>, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
    f(&format!("{prefix}{name}"), p, TensorKind::Parameter)
}

/// Visits one buffer under `prefix + name`.
pub fn visit_buffer<E: Float>(prefix: &str, name: &str, b: &Var<E>, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
    f(&format!("{prefix}{name}"), b, TensorKind::Buffer)
}
