//! Gradient mode (`no_grad`) and anomaly detection.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_tensor::{Float, Tensor};

use crate::var::Var;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    /// The op whose backward is running on this thread, for anomaly reports.
    static IN_BACKWARD: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs `f` as the backward of `op` (anomaly reports then name `op` and the backward phase).
pub(crate) fn in_backward_of<R>(op: &'static str, f: impl FnOnce() -> R) -> R {
    let prev = IN_BACKWARD.with(|c| c.replace(Some(op)));
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_BACKWARD.with(|c| c.set(self.0));
        }
    }
    let _r = Restore(prev);
    f()
}
static ANOMALY: AtomicBool = AtomicBool::new(false);

/// Whether operations on this thread record a graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous gradient mode when dropped. Made by [`NoGradGuard::new`] and
/// [`set_grad_enabled`].
#[must_use = "the mode is restored when the guard drops"]
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    /// Turns recording off on this thread until the guard drops (`torch.no_grad()`).
    pub fn new() -> Self {
        set_grad_enabled(false)
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Sets gradient mode on this thread; the returned guard restores the previous mode.
pub fn set_grad_enabled(on: bool) -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(on));
    NoGradGuard { prev }
}

/// Runs `f` with recording off: its operations build no graph (inference, updates).
///
/// ```
/// use kiln_autograd::{no_grad, Var};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::<f32>::ones(&[2]));
/// let y = no_grad(|| w.mul_scalar(2.0));
/// assert!(!y.requires_grad());
/// ```
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = set_grad_enabled(false);
    f()
}

/// Turns anomaly detection on or off (process-wide). When on, the first NaN or Inf an op
/// produces in forward or backward panics with the op's name and the shapes involved.
pub fn set_detect_anomaly(on: bool) {
    ANOMALY.store(on, Ordering::Relaxed);
}

/// Whether anomaly detection is on.
pub fn anomaly_enabled() -> bool {
    ANOMALY.load(Ordering::Relaxed)
}

/// Runs `f` with anomaly detection on, restoring the previous setting after.
pub fn detect_anomaly<R>(f: impl FnOnce() -> R) -> R {
    let prev = ANOMALY.swap(true, Ordering::Relaxed);
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ANOMALY.store(self.0, Ordering::Relaxed);
        }
    }
    let _r = Restore(prev);
    f()
}

pub(crate) fn check_finite<E: Float>(t: &Tensor<E>, op: &str, phase: &str, inputs: &[Var<E>]) {
    if t.to_vec().iter().any(|x| !x.is_finite()) {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|v| v.shape().to_vec()).collect();
        if let Some(outer) = IN_BACKWARD.with(|c| c.get()) {
            panic!(
                "detect_anomaly: {outer} produced NaN or Inf in backward (in its `{op}` step, output shape {:?}, input shapes {shapes:?})",
                t.shape()
            );
        }
        panic!(
            "detect_anomaly: {op} produced NaN or Inf in {phase} (output shape {:?}, input shapes {shapes:?})",
            t.shape()
        );
    }
}
