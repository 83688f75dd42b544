//! Tracing: the ops of one forward pass, with the attributes an exporter needs.
//!
//! [`trace`] runs a closure with gradient recording on and a recorder open on this thread.
//! Every recorded op is a graph node anyway ([`Var::recorded_inputs`] walks it); ops whose
//! meaning depends on more than their inputs (a softmax's `dim`, a slice's bounds, a
//! convolution's stride) also leave their attributes in the recorder ([`Trace::op`]), by one
//! line at the top of the op (`let _trace = trace::attrs(|| ...)`), which the node
//! [`Var::from_op`] records next takes. Outside [`trace`] these cost a thread-local check.
//! kiln-onnx's `export_traced` turns a trace into an ONNX graph, as `torch.onnx.export` does.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use kiln_tensor::{Float, Indices, Tensor};

use crate::var::Var;

/// One attribute of a traced op.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceAttr {
    /// An integer (a dimension, a count, a flag as 0/1).
    Int(i64),
    /// Integers (axes, sizes, a permutation).
    Ints(Vec<i64>),
    /// A number (a scalar operand, an epsilon).
    Float(f64),
    /// A constant tensor the op holds besides its inputs (ids, masks), row-major.
    Tensor {
        /// Its shape.
        shape: Vec<usize>,
        /// Its values.
        data: Vec<f64>,
    },
}

/// The attributes one traced op recorded, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceOp {
    /// `(name, value)` pairs, in the order the op gave them.
    pub attrs: Vec<(&'static str, TraceAttr)>,
}

impl TraceOp {
    /// The attribute `name`, if recorded.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&TraceAttr> {
        self.attrs.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
    }
    /// The integer attribute `name`.
    #[must_use]
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            TraceAttr::Int(v) => Some(*v),
            _ => None,
        }
    }
    /// The integers attribute `name`.
    #[must_use]
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.get(name)? {
            TraceAttr::Ints(v) => Some(v),
            _ => None,
        }
    }
    /// The number attribute `name`.
    #[must_use]
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            TraceAttr::Float(v) => Some(*v),
            _ => None,
        }
    }
}

/// An integers attribute from sizes.
pub(crate) fn ints(v: &[usize]) -> TraceAttr {
    TraceAttr::Ints(v.iter().map(|&d| d as i64).collect())
}

/// A tensor attribute holding indices.
pub(crate) fn indices(ids: &Indices) -> TraceAttr {
    TraceAttr::Tensor { shape: ids.shape().to_vec(), data: ids.as_slice().iter().map(|&i| i as f64).collect() }
}

#[derive(Default)]
struct Recorder {
    ops: HashMap<usize, TraceOp>,
    pending: Option<TraceOp>,
    /// The traced nodes, kept alive so that no other node reuses their address meanwhile.
    keep: Vec<Box<dyn Any>>,
}

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// What [`trace`] recorded: the attributes of each traced op, by node.
pub struct Trace {
    ops: HashMap<usize, TraceOp>,
    _keep: Vec<Box<dyn Any>>,
}

impl Trace {
    /// The attributes recorded by the op that made `v` (`None` for a leaf, or for an op that
    /// records none).
    #[must_use]
    pub fn op<E: Float>(&self, v: &Var<E>) -> Option<&TraceOp> {
        self.ops.get(&v.id())
    }
    /// How many ops recorded attributes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether no op recorded attributes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Runs `f` with gradient recording on and the op recorder open on this thread, and returns
/// its result with what the ops recorded. Only ops applied to `Var`s that require grad are
/// recorded (others are constants, as in any forward pass).
///
/// ```
/// use kiln_autograd::{trace, TraceAttr, Var};
/// use kiln_tensor::Tensor;
/// let x = Var::param(Tensor::<f32>::ones(&[2, 3]));
/// let (y, rec) = trace(|| x.softmax(-1));
/// assert_eq!(y.op_name(), "softmax");
/// assert_eq!(rec.op(&y).unwrap().get("dim"), Some(&TraceAttr::Int(-1)));
/// assert!(y.recorded_inputs()[0].same(&x));
/// ```
pub fn trace<R>(f: impl FnOnce() -> R) -> (R, Trace) {
    struct Restore(Option<Recorder>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            RECORDER.with(|r| *r.borrow_mut() = prev);
        }
    }
    let prev = RECORDER.with(|r| r.borrow_mut().replace(Recorder::default()));
    let restore = Restore(prev);
    let out = {
        let _grad = crate::mode::set_grad_enabled(true);
        f()
    };
    let rec = RECORDER.with(|r| r.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (out, Trace { ops: rec.ops, _keep: rec.keep })
}

/// While alive, the attributes of the op being recorded on this thread: the next node
/// [`Var::from_op`] records takes them (see [`attrs`]).
pub(crate) struct PendingAttrs(());

impl Drop for PendingAttrs {
    fn drop(&mut self) {
        RECORDER.with(|r| {
            if let Some(rec) = r.borrow_mut().as_mut() {
                rec.pending = None;
            }
        });
    }
}

/// Gives the attributes of the op about to be recorded, when a [`trace`] is open (`attrs`
/// is not called otherwise). An op with attributes calls it in its first line, as
/// `let _trace = trace::attrs(|| vec![("dim", int(dim as i64))]);`, before any other op.
pub(crate) fn attrs(attrs: impl FnOnce() -> Vec<(&'static str, TraceAttr)>) -> PendingAttrs {
    RECORDER.with(|r| {
        if let Some(rec) = r.borrow_mut().as_mut() {
            rec.pending = Some(TraceOp { attrs: attrs() });
        }
    });
    PendingAttrs(())
}

/// Called by [`Var::from_op`] for each node it records: files the pending attributes (if
/// any) under the node, when a [`trace`] is open.
pub(crate) fn recorded<E: Float>(out: &Var<E>) {
    RECORDER.with(|r| {
        if let Some(rec) = r.borrow_mut().as_mut() {
            if let Some(op) = rec.pending.take() {
                rec.ops.insert(out.id(), op);
            }
            rec.keep.push(Box::new(out.clone()));
        }
    });
}

impl<E: Float> Var<E> {
    /// The inputs the op that made `self` recorded, in order (empty for a leaf, and after a
    /// backward freed the graph).
    #[must_use]
    pub fn recorded_inputs(&self) -> Vec<Var<E>> {
        self.node.inputs.lock().unwrap_or_else(|e| e.into_inner()).to_vec()
    }

    /// An identity of the node, equal for clones of the same `Var` (as [`Var::same`]), for
    /// maps keyed by node while the node is alive.
    #[must_use]
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.node) as *const () as usize
    }
}

/// A tensor attribute holding a constant tensor's values (a mask).
pub(crate) fn tensor<E: Float>(t: &Tensor<E>) -> TraceAttr {
    TraceAttr::Tensor { shape: t.shape().to_vec(), data: t.to_vec().into_iter().map(|v| v.to_f64()).collect() }
}

/// An integer attribute.
pub(crate) fn int(v: i64) -> TraceAttr {
    TraceAttr::Int(v)
}

/// A number attribute.
pub(crate) fn float(v: f64) -> TraceAttr {
    TraceAttr::Float(v)
}

/// An integers attribute from signed dimensions.
pub(crate) fn signed(v: &[isize]) -> TraceAttr {
    TraceAttr::Ints(v.iter().map(|&d| d as i64).collect())
}
