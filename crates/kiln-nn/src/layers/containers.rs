//! Containers: `Sequential` (a chain of layers), `ModuleList` (an indexed list of modules) and
//! `Identity`, as `torch.nn.Sequential`, `torch.nn.ModuleList` and `torch.nn.Identity`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::error::NnError;
use crate::layers::activation::stateless_module;
use crate::module::{Forward, Layer, Module, TensorKind};
use crate::registry::{Args, LayerSpec};
use serde_json::{Map, Value};

/// Writes `Name(\n  (key): child\n  ...\n) [N parameters]`, indenting a child's later lines
/// by two spaces as PyTorch's `_addindent` does.
fn write_children(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    children: impl Iterator<Item = (String, String)>,
    num_parameters: usize,
) -> fmt::Result {
    let mut children = children.peekable();
    if children.peek().is_none() {
        return write!(f, "{name}() [{num_parameters} parameters]");
    }
    writeln!(f, "{name}(")?;
    for (key, child) in children {
        writeln!(f, "  ({key}): {}", child.replace('\n', "\n  "))?;
    }
    write!(f, ") [{num_parameters} parameters]")
}

/// A chain of layers applied in order, like `torch.nn.Sequential`: the output of each is the
/// input of the next.
///
/// Children are named by position, so the keys are PyTorch's (`0.weight`, `0.bias`,
/// `2.weight`, ...) and weights move between the two by name. The
/// [`sequential!`](crate::sequential!) macro builds one from a list.
///
/// # Shapes
/// - Input: what the first layer takes
/// - Output: what the last layer gives (the input itself when empty)
///
/// ```
/// use kiln_nn::{Forward, Linear, Module, ReLU, Sequential};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let model: Sequential = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 2));
/// let y = model.forward(&Var::constant(Tensor::ones(&[16, 4])));
/// assert_eq!(y.shape().as_slice(), &[16, 2]);
/// let keys: Vec<String> = model.named_parameters().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["0.weight", "0.bias", "2.weight", "2.bias"]);
/// assert_eq!(
///     model.to_string(),
///     "Sequential(
///   (0): Linear(in_features=4, out_features=8, bias=true) [40 parameters]
///   (1): ReLU()
///   (2): Linear(in_features=8, out_features=2, bias=true) [18 parameters]
/// ) [58 parameters]"
/// );
/// ```
pub struct Sequential<E: Float = f32> {
    layers: Vec<Box<dyn Layer<E>>>,
    training: bool,
}

impl Sequential<f32> {
    /// An empty chain, in training mode.
    ///
    /// In `f32`; any element type through [`Sequential::new_generic`].
    pub fn new() -> Self {
        Self::new_generic()
    }
}

impl<E: Float> Sequential<E> {
    /// [`Sequential::new`] in any element type: `Sequential::<f64>::new_generic()`.
    pub fn new_generic() -> Self {
        Sequential { layers: Vec::new(), training: true }
    }

    /// The chain with `layer` appended (a builder).
    // Not `std::ops::Add`: `model + layer` would read as arithmetic on outputs.
    #[allow(clippy::should_implement_trait)]
    #[must_use]
    pub fn add<L: Layer<E> + 'static>(mut self, layer: L) -> Self {
        self.push(layer);
        self
    }

    /// Appends `layer`, like `Sequential.append`. It takes the chain's mode.
    pub fn push<L: Layer<E> + 'static>(&mut self, mut layer: L) {
        layer.set_training(self.training);
        self.layers.push(Box::new(layer));
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layer at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&dyn Layer<E>> {
        self.layers.get(index).map(|l| &**l)
    }

    /// The layer at `index`, mutably, if any.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut (dyn Layer<E> + 'static)> {
        self.layers.get_mut(index).map(|l| &mut **l)
    }

    /// The layers in order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Layer<E>> + '_ {
        self.layers.iter().map(|l| &**l)
    }

    /// The layers in order, by value (the inverse of collecting boxed layers into a
    /// `Sequential`). With [`Layer::downcast`](crate::Layer) a converter can take the layers
    /// it knows apart and keep the others as they are.
    ///
    /// ```
    /// use kiln_nn::{Layer, Linear, ReLU, Sequential};
    /// let model: Sequential = Sequential::new().add(Linear::new(4, 8)).add(ReLU);
    /// let layers: Vec<Box<dyn Layer>> = model.into_layers();
    /// assert_eq!(layers.len(), 2);
    /// assert!(layers[0].is::<Linear>());
    /// let again: Sequential = layers.into_iter().collect();
    /// assert_eq!(again.len(), 2);
    /// ```
    pub fn into_layers(self) -> Vec<Box<dyn Layer<E>>> {
        self.layers
    }
}

impl<E: Float> Default for Sequential<E> {
    fn default() -> Self {
        Self::new_generic()
    }
}

impl<E: Float> FromIterator<Box<dyn Layer<E>>> for Sequential<E> {
    fn from_iter<I: IntoIterator<Item = Box<dyn Layer<E>>>>(iter: I) -> Self {
        Sequential { layers: iter.into_iter().collect(), training: true }
    }
}

impl<E: Float> Index<usize> for Sequential<E> {
    type Output = dyn Layer<E>;
    /// **Panics** if `index` is out of range.
    fn index(&self, index: usize) -> &Self::Output {
        let n = self.layers.len();
        self.layers
            .get(index)
            .map(|l| &**l)
            .unwrap_or_else(|| panic!("Sequential: index {index} out of range for {n} layers"))
    }
}

impl<E: Float> Forward<E> for Sequential<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let mut y = x.clone();
        for l in &self.layers {
            // `call`, not `forward`: the layers' forward hooks run (see `Layer::call`).
            y = (**l).call(&y);
        }
        y
    }
}

impl<E: Float> Module<E> for Sequential<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.layers.visit(prefix, f)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
        self.layers.set_training(training);
    }
    fn is_training(&self) -> bool {
        self.training
    }
}

impl<E: Float> fmt::Display for Sequential<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let children = self.layers.iter().enumerate().map(|(i, l)| (i.to_string(), l.to_string()));
        write_children(f, "Sequential", children, self.num_parameters())
    }
}

/// Builds a [`Sequential`] from layers: `sequential![Linear::new(4, 8), ReLU, Linear::new(8, 2)]`.
///
/// ```
/// use kiln_nn::{sequential, Forward, Linear, Module, Sequential, Tanh};
/// let model: Sequential<f64> = sequential![Linear::new_generic(3, 5), Tanh, Linear::new_generic(5, 1)];
/// assert_eq!(model.len(), 3);
/// assert_eq!(model.num_parameters(), (3 * 5 + 5) + (5 + 1));
/// ```
#[macro_export]
macro_rules! sequential {
    ($($layer:expr),* $(,)?) => {
        $crate::Sequential::new_generic()$(.add($layer))*
    };
}

/// An indexed list of modules, like `torch.nn.ModuleList`: it registers its elements
/// (keys `0.`, `1.`, ... before theirs) and passes train/eval on, but has no `forward` of its
/// own; the owner decides how to call them.
///
/// `ModuleList<E, M>` holds modules of one type `M` (`ModuleList<f32, Linear>`); the default
/// `M = Box<dyn Layer<E>>` holds any layers ([`push_layer`](ModuleList::push_layer)).
///
/// ```
/// use kiln_nn::{Forward, Linear, Module, ModuleList};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let blocks: ModuleList<f32, Linear> = (0..3).map(|_| Linear::new(4, 4)).collect();
/// let mut x = Var::constant(Tensor::ones(&[2, 4]));
/// for b in &blocks {
///     x = b.forward(&x).relu().add(&x); // a residual stack
/// }
/// assert_eq!(blocks.len(), 3);
/// assert_eq!(blocks.named_parameters()[2].0, "1.weight");
/// assert!(blocks.to_string().starts_with("ModuleList(\n  (0-2): 3 x Linear(in_features=4"));
/// ```
pub struct ModuleList<E: Float = f32, M = Box<dyn Layer<E>>> {
    modules: Vec<M>,
    training: bool,
    _elem: PhantomData<fn() -> E>,
}

impl<E: Float, M: Module<E>> ModuleList<E, M> {
    /// An empty list, in training mode.
    pub fn new() -> Self {
        ModuleList { modules: Vec::new(), training: true, _elem: PhantomData }
    }

    /// Appends a module, like `ModuleList.append`. It takes the list's mode.
    pub fn push(&mut self, mut module: M) {
        module.set_training(self.training);
        self.modules.push(module);
    }

    /// The number of modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The module at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&M> {
        self.modules.get(index)
    }

    /// The module at `index`, mutably, if any.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut M> {
        self.modules.get_mut(index)
    }

    /// The modules in order.
    pub fn iter(&self) -> std::slice::Iter<'_, M> {
        self.modules.iter()
    }

    /// The modules in order, mutably.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, M> {
        self.modules.iter_mut()
    }
}

impl<E: Float> ModuleList<E> {
    /// Appends any layer to a list of boxed layers.
    pub fn push_layer<L: Layer<E> + 'static>(&mut self, layer: L) {
        self.push(Box::new(layer));
    }
}

impl<E: Float, M: Module<E>> Default for ModuleList<E, M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Float, M: Module<E>> FromIterator<M> for ModuleList<E, M> {
    fn from_iter<I: IntoIterator<Item = M>>(iter: I) -> Self {
        ModuleList { modules: iter.into_iter().collect(), training: true, _elem: PhantomData }
    }
}

impl<E: Float, M: Module<E>> Extend<M> for ModuleList<E, M> {
    fn extend<I: IntoIterator<Item = M>>(&mut self, iter: I) {
        for m in iter {
            self.push(m);
        }
    }
}

impl<'a, E: Float, M: Module<E>> IntoIterator for &'a ModuleList<E, M> {
    type Item = &'a M;
    type IntoIter = std::slice::Iter<'a, M>;
    fn into_iter(self) -> Self::IntoIter {
        self.modules.iter()
    }
}

impl<E: Float, M: Module<E>> Index<usize> for ModuleList<E, M> {
    type Output = M;
    /// **Panics** if `index` is out of range.
    fn index(&self, index: usize) -> &M {
        let n = self.modules.len();
        self.modules.get(index).unwrap_or_else(|| panic!("ModuleList: index {index} out of range for {n} modules"))
    }
}

impl<E: Float, M: Module<E>> IndexMut<usize> for ModuleList<E, M> {
    /// **Panics** if `index` is out of range.
    fn index_mut(&mut self, index: usize) -> &mut M {
        let n = self.modules.len();
        self.modules.get_mut(index).unwrap_or_else(|| panic!("ModuleList: index {index} out of range for {n} modules"))
    }
}

impl<E: Float, M: Module<E>> Module<E> for ModuleList<E, M> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.modules.visit(prefix, f)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
        self.modules.set_training(training);
    }
    fn is_training(&self) -> bool {
        self.training
    }
}

impl<E: Float, M: Module<E> + fmt::Display> fmt::Display for ModuleList<E, M> {
    /// Runs of equal children are shown once, `(0-2): 3 x Linear(...)`, as PyTorch 2 does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.modules.iter().map(|m| m.to_string()).collect();
        let mut children = Vec::new();
        let mut start = 0;
        while start < shown.len() {
            let end = (start..shown.len()).take_while(|&j| shown[j] == shown[start]).last().unwrap_or(start);
            if end == start {
                children.push((start.to_string(), shown[start].clone()));
            } else {
                children.push((format!("{start}-{end}"), format!("{} x {}", end - start + 1, shown[start])));
            }
            start = end + 1;
        }
        write_children(f, "ModuleList", children.into_iter(), self.num_parameters())
    }
}

stateless_module!(Identity);

/// Returns its input unchanged, like `torch.nn.Identity`: a placeholder (a removed head, an
/// optional block).
///
/// # Shapes
/// - Input: `[*]`
/// - Output: `[*]`, the same `Var`
///
/// ```
/// use kiln_nn::{Forward, Identity};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::<f32>::ones(&[2, 3]));
/// assert!(Identity.forward(&x).same(&x));
/// assert_eq!(Identity.to_string(), "Identity()");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity;

impl<E: Float> Forward<E> for Identity {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.clone()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity()")
    }
}

impl LayerSpec for Identity {
    const TYPE_NAME: &'static str = "Identity";
    const EXAMPLE: &'static str = "{}";

    fn config(&self) -> Map<String, Value> {
        Map::new()
    }

    fn from_config(_: &mut Args) -> Result<Self, NnError> {
        Ok(Identity)
    }
}

crate::register_layer!(Identity);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Linear, LinearConfig, ReLU, StateDict, Tanh};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Tensor;

    /// A module that records its mode, to see train/eval arrive.
    #[derive(crate::Module)]
    #[module(elem = "f64")]
    struct ModeProbe {
        training: bool,
    }
    impl Forward<f64> for ModeProbe {
        fn forward(&self, x: &Var<f64>) -> Var<f64> {
            x.clone()
        }
    }
    impl fmt::Display for ModeProbe {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "ModeProbe(training={})", self.training)
        }
    }

    #[test]
    fn sequential_keys_shapes_and_display() {
        let m: Sequential = sequential![Linear::new(3, 4), ReLU, Linear::new(4, 2)];
        let keys: Vec<String> = m.state_dict().into_keys().collect();
        assert_eq!(keys, ["0.bias", "0.weight", "2.bias", "2.weight"]); // BTreeMap order
        let names: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
        assert_eq!(m.forward(&Var::constant(Tensor::ones(&[5, 3]))).shape().as_slice(), &[5, 2]);
        assert_eq!((m.len(), m.is_empty(), m[1].to_string()), (3, false, "ReLU()".to_string()));
        assert!(m.get(3).is_none());
        let empty: Sequential = Sequential::new();
        assert_eq!(empty.to_string(), "Sequential() [0 parameters]");
        let x = Var::constant(Tensor::ones(&[2]));
        assert!(empty.forward(&x).same(&x));
    }

    #[test]
    fn nested_sequential_names_and_indents_like_pytorch() {
        let inner: Sequential = sequential![Linear::new(2, 2), Tanh];
        let outer: Sequential =
            sequential![inner, Identity, LinearConfig { bias: false, ..LinearConfig::new(2, 1) }.build().unwrap()];
        let names: Vec<String> = outer.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["0.0.weight", "0.0.bias", "2.weight"]);
        assert_eq!(
            outer.to_string(),
            "Sequential(
  (0): Sequential(
    (0): Linear(in_features=2, out_features=2, bias=true) [6 parameters]
    (1): Tanh()
  ) [6 parameters]
  (1): Identity()
  (2): Linear(in_features=2, out_features=1, bias=false) [2 parameters]
) [8 parameters]"
        );
    }

    #[test]
    fn layers_downcast_and_come_out_by_value() {
        let mut model: Sequential<f64> =
            Sequential::new_generic().add(Linear::new_generic(3, 2)).add(Tanh).add(Linear::new_generic(2, 1));
        let w0 = model[0].downcast_ref::<Linear<f64>>().unwrap().weight.value().to_vec();
        assert!(model[1].is::<Tanh>() && !model[1].is::<Linear<f64>>());
        // through short-lived references too
        let kinds: Vec<bool> = model.iter().map(|l| l.is::<Linear<f64>>()).collect();
        assert_eq!(kinds, [true, false, true]);
        assert!(model.get(2).and_then(|l| l.downcast_ref::<Linear<f64>>()).is_some());
        assert!(model[0].downcast_ref::<Linear<f32>>().is_none(), "the element type is part of the type");
        model.get_mut(2).unwrap().downcast_mut::<Linear<f64>>().unwrap().bias = None;
        model.eval();
        let layers = model.into_layers();
        assert_eq!(layers.len(), 3);
        // the box itself is a Layer too; the inherent methods look through it
        assert!(layers[1].is::<Tanh>());
        assert!((*layers[1]).as_any().is::<Tanh>());
        let mut it = layers.into_iter();
        let first: Box<Linear<f64>> = it.next().unwrap().downcast().ok().unwrap();
        assert_eq!(first.weight.value().to_vec(), w0, "the same parameters, not a copy");
        let tanh = it.next().unwrap().downcast::<Linear<f64>>().err().unwrap();
        assert_eq!(tanh.to_string(), "Tanh()");
        let last = it.next().unwrap().into_any().downcast::<Linear<f64>>().unwrap();
        assert!(last.bias.is_none());
        let rebuilt: Sequential<f64> = [first as Box<dyn Layer<f64>>, tanh, last].into_iter().collect();
        assert_eq!(rebuilt.len(), 3);
        assert_eq!(rebuilt.named_parameters().len(), 3);
    }

    #[test]
    fn train_eval_reaches_every_child() {
        let mut m: Sequential<f64> = Sequential::new_generic().add(ModeProbe { training: true });
        let mut list: ModuleList<f64, Box<dyn Layer<f64>>> = ModuleList::new();
        list.push_layer(ModeProbe { training: true });
        m.eval();
        list.eval();
        assert!(!m.is_training() && !list.is_training());
        assert_eq!(m[0].to_string(), "ModeProbe(training=false)");
        assert_eq!(list[0].to_string(), "ModeProbe(training=false)");
        // A child added later takes the container's mode, as with `model.eval(); model.append(..)`
        // followed by a forward in PyTorch: here it is explicit.
        m.push(ModeProbe { training: true });
        assert_eq!(m[1].to_string(), "ModeProbe(training=false)");
        m.train();
        assert!(m.iter().all(|l| l.is_training()));
    }

    #[test]
    fn module_list_keys_index_and_display() {
        let mut l: ModuleList<f32, Linear> = ModuleList::new();
        l.push(Linear::new(2, 3));
        l.extend([Linear::new(2, 3), Linear::new(3, 1)]);
        let names: Vec<String> = l.named_parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]);
        assert_eq!(l[2].config.in_features, 3);
        assert_eq!(l.iter().count(), 3);
        assert_eq!(
            l.to_string(),
            "ModuleList(
  (0-1): 2 x Linear(in_features=2, out_features=3, bias=true) [9 parameters]
  (2): Linear(in_features=3, out_features=1, bias=true) [4 parameters]
) [22 parameters]"
        );
        let mut any: ModuleList = ModuleList::new();
        any.push_layer(Linear::new(2, 2));
        any.push_layer(ReLU);
        assert_eq!(any.num_parameters(), 6);
        assert_eq!(any[1].to_string(), "ReLU()");
        assert_eq!(ModuleList::<f32>::new().to_string(), "ModuleList() [0 parameters]");
    }

    #[test]
    fn state_dict_round_trip() {
        let a: Sequential = sequential![Linear::new(3, 4), ReLU, Linear::new(4, 2)];
        let mut b: Sequential = sequential![Linear::new(3, 4), ReLU, Linear::new(4, 2)];
        let sd: StateDict = a.state_dict();
        b.load_state_dict(&sd, true).unwrap();
        let x = Var::constant(Tensor::from_vec((0..6).map(|i| i as f32).collect(), &[2, 3]));
        assert_eq!(a.forward(&x).value().to_vec(), b.forward(&x).value().to_vec());
    }

    #[test]
    fn gradients_flow_through_the_chain() {
        let (l0, l2): (Linear<f64>, Linear<f64>) = (Linear::new_generic(3, 4), Linear::new_generic(4, 2));
        let x = Tensor::<f64>::from_vec(vec![0.1, -0.2, 0.3, 0.4, 0.5, -0.6], &[2, 3]);
        let inputs = [
            x,
            l0.weight.value(),
            l0.bias.as_ref().unwrap().value(),
            l2.weight.value(),
            l2.bias.as_ref().unwrap().value(),
        ];
        let r = gradcheck(
            |v| {
                let lin = |w: &Var<f64>, b: &Var<f64>, c: &LinearConfig| Linear {
                    config: c.clone(),
                    weight: w.clone(),
                    bias: Some(b.clone()),
                };
                let m: Sequential<f64> =
                    sequential![lin(&v[1], &v[2], &l0.config), Tanh, lin(&v[3], &v[4], &l2.config)];
                m.forward(&v[0])
            },
            &inputs,
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit_xor() {
        crate::init::manual_seed(7);
        let m: Sequential<f64> = sequential![Linear::new_generic(2, 8), Tanh, Linear::new_generic(8, 1)];
        let x = Var::constant(Tensor::from_vec(vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], &[4, 2]));
        let y = Var::constant(Tensor::from_vec(vec![0.0, 1.0, 1.0, 0.0], &[4, 1]));
        let mut loss = f64::MAX;
        for _ in 0..1000 {
            m.zero_grad();
            let d = m.forward(&x).sub(&y);
            let lv = d.mul(&d).mean(&[], false);
            loss = lv.item();
            lv.backward();
            for p in m.parameters() {
                let g = p.grad().unwrap();
                p.update_value(|v| v.axpy_(-0.2, &g));
            }
        }
        assert!(loss < 1e-3, "{loss}");
    }
}
