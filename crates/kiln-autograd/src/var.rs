//! [`Var`]: a tensor plus what reverse-mode differentiation needs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use kiln_tensor::{Float, Shape, Tensor};
use smallvec::SmallVec;

use crate::engine;
use crate::mode::{anomaly_enabled, is_grad_enabled};

/// The inputs an op records: two inline, more on the heap.
pub type Inputs<E> = SmallVec<[Var<E>; 2]>;
/// The gradients a backward returns: one per input, `None` where an input gets none.
pub type Grads<E> = SmallVec<[Option<Var<E>>; 2]>;

/// The backward of one recorded operation.
///
/// `backward` gets the gradient of the output, the op's inputs (in the order they were
/// recorded) and the output itself, and returns one gradient per input, in input order. It is
/// written with [`Var`] operations, so the same code gives first- and higher-order gradients:
/// the engine runs it under no-grad unless `create_graph` was asked for.
pub trait Backward<E: Float>: Send + Sync + 'static {
    /// The op's name, for anomaly reports and error messages.
    fn name(&self) -> &'static str;
    /// One gradient per input, in input order.
    fn backward(&self, grad: &Var<E>, inputs: &[Var<E>], output: &Var<E>) -> Grads<E>;
}

/// The op of a leaf: never called.
pub(crate) struct Leaf;
impl<E: Float> Backward<E> for Leaf {
    fn name(&self) -> &'static str {
        "leaf"
    }
    fn backward(&self, _: &Var<E>, _: &[Var<E>], _: &Var<E>) -> Grads<E> {
        unreachable!("a leaf has no backward")
    }
}

/// One node of the graph. The op is stored inline (the last, unsized field), so recording an
/// op costs one allocation for the node.
pub(crate) struct Node<E: Float, B: ?Sized + Backward<E> = dyn Backward<E>> {
    pub(crate) is_leaf: bool,
    pub(crate) requires_grad: AtomicBool,
    pub(crate) value: RwLock<Tensor<E>>,
    /// Accumulated gradient (leaves only).
    pub(crate) grad: Mutex<Option<Tensor<E>>>,
    /// The recorded inputs; emptied after backward unless the graph is retained.
    pub(crate) inputs: Mutex<Inputs<E>>,
    pub(crate) freed: AtomicBool,
    /// Backward-pass bookkeeping: pass number (high 32 bits) and slot (low 32 bits).
    pub(crate) mark: AtomicU64,
    /// Post-accumulate-grad hooks by id (leaves only).
    pub(crate) hooks: Mutex<Vec<(u64, crate::hooks::GradHook<E>)>>,
    /// The autocast mode the op was recorded under; its backward runs in the same mode, so
    /// that the gradient products of a bfloat16 product are bfloat16 too (as in PyTorch).
    pub(crate) autocast: Option<kiln_tensor::DType>,
    pub(crate) op: B,
}

/// A tensor that records the operations applied to it, so that gradients can flow back.
///
/// Leaves are made with [`Var::param`] (requires grad) or [`Var::constant`]; every operation
/// on `Var`s returns a new `Var` that remembers its inputs while any input requires grad and
/// gradient mode is on (see [`no_grad`](crate::no_grad)). [`backward`](Var::backward) then
/// accumulates `d output / d leaf` into each leaf's [`grad`](Var::grad), as in PyTorch.
///
/// `Var` is cheap to clone (an `Arc`), `Send + Sync`, and frees its graph when the last
/// reference drops (or right after `backward`, unless `retain_graph`).
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::param(Tensor::from_vec(vec![2.0f64, 3.0], &[2]));
/// let y = x.mul(&x).sum_all(); // y = x0^2 + x1^2
/// y.backward();
/// assert_eq!(x.grad().unwrap().to_vec(), vec![4.0, 6.0]);
/// ```
pub struct Var<E: Float = f32> {
    pub(crate) node: Arc<Node<E>>,
}

impl<E: Float> Clone for Var<E> {
    fn clone(&self) -> Self {
        Var { node: self.node.clone() }
    }
}

/// A weak reference to a [`Var`]'s node, to observe that a graph was freed.
pub struct WeakVar<E: Float = f32>(Weak<Node<E>>);

impl<E: Float> WeakVar<E> {
    /// The `Var`, if its node is still alive.
    pub fn upgrade(&self) -> Option<Var<E>> {
        self.0.upgrade().map(|node| Var { node })
    }
}

impl<E: Float> Var<E> {
    fn leaf(value: Tensor<E>, requires_grad: bool) -> Self {
        let node: Arc<Node<E>> = Arc::new(Node {
            is_leaf: true,
            requires_grad: AtomicBool::new(requires_grad),
            value: RwLock::new(value),
            grad: Mutex::new(None),
            inputs: Mutex::new(SmallVec::new()),
            freed: AtomicBool::new(false),
            mark: AtomicU64::new(0),
            hooks: Mutex::new(Vec::new()),
            autocast: None,
            op: Leaf,
        });
        Var { node }
    }

    /// A leaf that requires grad: a trainable parameter or an input to differentiate by.
    pub fn param(value: Tensor<E>) -> Self {
        Self::leaf(value, true)
    }

    /// A leaf that does not require grad (data, targets, masks).
    pub fn constant(value: Tensor<E>) -> Self {
        Self::leaf(value, false)
    }

    /// A leaf with the given `requires_grad`.
    pub fn new(value: Tensor<E>, requires_grad: bool) -> Self {
        Self::leaf(value, requires_grad)
    }

    /// Records the result of an op: a graph node when gradient mode is on and some input
    /// requires grad, otherwise a constant (no graph allocation beyond the value's).
    ///
    /// This is how every op (in this crate or a user's) enters the graph.
    pub fn from_op<B: Backward<E>>(value: Tensor<E>, inputs: Inputs<E>, op: B) -> Self {
        if anomaly_enabled() {
            crate::mode::check_finite(&value, op.name(), "forward", &inputs);
        }
        if !is_grad_enabled() || !inputs.iter().any(|v| v.requires_grad()) {
            return Self::constant(value);
        }
        let node: Arc<Node<E>> = Arc::new(Node {
            is_leaf: false,
            requires_grad: AtomicBool::new(true),
            value: RwLock::new(value),
            grad: Mutex::new(None),
            inputs: Mutex::new(inputs),
            freed: AtomicBool::new(false),
            mark: AtomicU64::new(0),
            hooks: Mutex::new(Vec::new()),
            autocast: kiln_tensor::autocast_dtype(),
            op,
        });
        let out = Var { node };
        crate::trace::recorded(&out);
        out
    }

    /// The value (a cheap clone sharing storage).
    pub fn value(&self) -> Tensor<E> {
        self.node.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Calls `f` with a reference to the value, without cloning it.
    pub fn with_value<R>(&self, f: impl FnOnce(&Tensor<E>) -> R) -> R {
        f(&self.node.value.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes a leaf's value in place (what optimisers do). The update is not recorded.
    ///
    /// **Panics** if `self` is not a leaf.
    pub fn update_value(&self, f: impl FnOnce(&mut Tensor<E>)) {
        assert!(self.node.is_leaf, "update_value: only a leaf's value can be changed in place");
        f(&mut self.node.value.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces a leaf's value (shapes may differ, as in `param.data = t`).
    ///
    /// **Panics** if `self` is not a leaf.
    pub fn set_value(&self, value: Tensor<E>) {
        self.update_value(|v| *v = value)
    }

    /// The shape of the value.
    pub fn shape(&self) -> Shape {
        self.with_value(|v| v.shape().into())
    }
    /// The size of one dimension (negative counts from the end).
    pub fn size(&self, dim: isize) -> usize {
        self.with_value(|v| v.size(dim))
    }
    /// The number of dimensions.
    pub fn ndim(&self) -> usize {
        self.with_value(|v| v.ndim())
    }
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.with_value(|v| v.numel())
    }
    /// The single value of a one-element `Var`.
    pub fn item(&self) -> E {
        self.with_value(|v| v.item())
    }

    /// Whether gradients flow to this `Var`.
    pub fn requires_grad(&self) -> bool {
        self.node.requires_grad.load(Ordering::Relaxed)
    }

    /// Turns gradient tracking of a leaf on or off (freezing for fine-tuning), like
    /// `requires_grad_`.
    ///
    /// **Panics** when asked to turn off tracking of a non-leaf.
    pub fn set_requires_grad(&self, on: bool) {
        assert!(self.node.is_leaf || on, "set_requires_grad: only a leaf can stop requiring grad; use detach()");
        self.node.requires_grad.store(on, Ordering::Relaxed);
    }

    /// Whether this is a leaf (made by the user, not by an op).
    pub fn is_leaf(&self) -> bool {
        self.node.is_leaf
    }

    /// A constant sharing this value, cut from the graph (gradients stop here).
    #[must_use]
    pub fn detach(&self) -> Var<E> {
        Var::constant(self.value())
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor<E>> {
        self.node.grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets (or clears) the accumulated gradient.
    pub fn set_grad(&self, g: Option<Tensor<E>>) {
        *self.node.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }

    /// Clears the gradient (PyTorch's `zero_grad(set_to_none=True)`, its default).
    pub fn zero_grad(&self) {
        self.set_grad(None)
    }

    /// Calls `f` with the gradient tensor in place (gradient clipping), if there is one.
    pub fn update_grad(&self, f: impl FnOnce(&mut Tensor<E>)) {
        if let Some(g) = self.node.grad.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(g)
        }
    }

    /// The name of the op that made this `Var` (`"leaf"` for leaves).
    pub fn op_name(&self) -> &'static str {
        self.node.op.name()
    }

    /// Whether two `Var`s are the same node.
    pub fn same(&self, other: &Var<E>) -> bool {
        Arc::ptr_eq(&self.node, &other.node)
    }

    /// A weak reference (does not keep the graph alive).
    pub fn downgrade(&self) -> WeakVar<E> {
        WeakVar(Arc::downgrade(&self.node))
    }

    /// Back-propagates from this one-element `Var` (seed 1), accumulating into leaves' grads
    /// and freeing the graph, like `loss.backward()`.
    ///
    /// **Panics** if the `Var` has more than one element, does not require grad, or its graph
    /// was already freed by an earlier backward.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let w = Var::param(Tensor::from_vec(vec![1.0f64, -2.0], &[2]));
    /// let x = Var::constant(Tensor::from_vec(vec![3.0, 4.0], &[2]));
    /// let loss = w.mul(&x).sum_all(); // w·x
    /// loss.backward();
    /// assert_eq!(w.grad().unwrap().to_vec(), vec![3.0, 4.0]); // d(w·x)/dw = x
    /// assert!(x.grad().is_none()); // constants get no gradient
    /// // gradients accumulate over backward calls until zero_grad, as in PyTorch
    /// w.mul(&x).sum_all().backward();
    /// assert_eq!(w.grad().unwrap().to_vec(), vec![6.0, 8.0]);
    /// w.zero_grad();
    /// assert!(w.grad().is_none());
    /// ```
    pub fn backward(&self) {
        assert_eq!(
            self.numel(),
            1,
            "backward: the output has shape {:?}; give a gradient with backward_with for non-scalar outputs",
            self.shape().as_slice()
        );
        let seed = self.with_value(|v| v.ones_like());
        self.backward_opts(&seed, false, false);
    }

    /// Back-propagates with an explicit output gradient (same shape as the value).
    pub fn backward_with(&self, grad: &Tensor<E>) {
        self.backward_opts(grad, false, false);
    }

    /// Back-propagates with an explicit gradient; `retain_graph` keeps the graph for another
    /// backward, `create_graph` records the backward itself (for higher-order gradients).
    pub fn backward_opts(&self, grad: &Tensor<E>, retain_graph: bool, create_graph: bool) {
        let shape = self.shape();
        assert!(
            grad.shape() == shape.as_slice(),
            "backward: gradient of shape {:?} for an output of shape {:?}",
            grad.shape(),
            shape.as_slice()
        );
        engine::run(
            std::slice::from_ref(self),
            vec![Var::constant(grad.clone())],
            retain_graph || create_graph,
            create_graph,
            None,
            false,
        );
    }
}

impl<E: Float> From<Tensor<E>> for Var<E> {
    /// A constant leaf.
    fn from(t: Tensor<E>) -> Self {
        Var::constant(t)
    }
}

impl<E: Float> std::fmt::Debug for Var<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({}", self.value())?;
        if self.requires_grad() {
            write!(f, ", grad_fn={}", self.op_name())?;
        }
        write!(f, ")")
    }
}
