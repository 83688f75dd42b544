//! Hooks into the backward pass: a leaf's gradient is final
//! ([`Var::register_post_accumulate_grad_hook`]), and a backward pass ends ([`queue_callback`]).
//!
//! These are what gradient-synchronising wrappers (data-parallel training) need to start
//! communicating a gradient while the rest of backward still runs, and to wait for that
//! communication before the optimiser steps, as PyTorch's DistributedDataParallel does with
//! `register_post_accumulate_grad_hook` and `Variable._execution_engine.queue_callback`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_tensor::Float;

use crate::var::{Var, WeakVar};

/// A hook run with the leaf whose gradient was just accumulated.
pub(crate) type GradHook<E> = Arc<dyn Fn(&Var<E>) + Send + Sync>;

static NEXT_HOOK: AtomicU64 = AtomicU64::new(1);

type Callbacks = Vec<Box<dyn FnOnce()>>;

thread_local! {
    /// One frame of queued callbacks per backward pass running on this thread (a hook may
    /// itself run a backward, so passes nest).
    static CALLBACKS: RefCell<Vec<Callbacks>> = const { RefCell::new(Vec::new()) };
}

/// Removes a hook registered with [`Var::register_post_accumulate_grad_hook`] when asked
/// (like PyTorch's `RemovableHandle`). Dropping the handle keeps the hook.
pub struct HookHandle<E: Float = f32> {
    var: WeakVar<E>,
    id: u64,
}

impl<E: Float> HookHandle<E> {
    /// Unregisters the hook (nothing happens if the `Var` is gone).
    pub fn remove(self) {
        if let Some(v) = self.var.upgrade() {
            v.node.hooks.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _)| *id != self.id);
        }
    }
}

impl<E: Float> Var<E> {
    /// Registers `hook`, called with this leaf after every backward pass has accumulated the
    /// pass's gradient into [`grad`](Var::grad), that is as soon as the gradient is final for
    /// this pass (every op using the leaf has been back-propagated), while backward goes on with
    /// the rest of the graph. Like PyTorch's `register_post_accumulate_grad_hook`.
    ///
    /// The hook runs on the thread running backward, in registration order with the leaf's
    /// other hooks; it is not run by [`grad`](crate::grad), which does not accumulate.
    ///
    /// **Panics** if `self` is not a leaf.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let w = Var::param(Tensor::from_vec(vec![3.0f32], &[1]));
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let handle = w.register_post_accumulate_grad_hook(move |v| s.lock().unwrap().push(v.grad().unwrap().to_vec()));
    /// w.mul(&w).sum_all().backward(); // d w^2 = 2w = 6
    /// w.mul(&w).sum_all().backward(); // accumulated: 12
    /// assert_eq!(*seen.lock().unwrap(), vec![vec![6.0], vec![12.0]]);
    /// handle.remove();
    /// w.sum_all().backward();
    /// assert_eq!(seen.lock().unwrap().len(), 2);
    /// ```
    pub fn register_post_accumulate_grad_hook(&self, hook: impl Fn(&Var<E>) + Send + Sync + 'static) -> HookHandle<E> {
        assert!(
            self.node.is_leaf,
            "register_post_accumulate_grad_hook: only a leaf accumulates a gradient (this Var was made by `{}`)",
            self.op_name()
        );
        let id = NEXT_HOOK.fetch_add(1, Ordering::Relaxed);
        self.node.hooks.lock().unwrap_or_else(|e| e.into_inner()).push((id, Arc::new(hook)));
        HookHandle { var: self.downgrade(), id }
    }

    /// Runs this leaf's post-accumulate hooks (the lock is released first, so a hook may read
    /// or set the gradient).
    pub(crate) fn run_grad_hooks(&self) {
        let hooks: Vec<GradHook<E>> =
            self.node.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(_, h)| h.clone()).collect();
        for h in hooks {
            h(self);
        }
    }
}

/// Queues `callback` to run when the backward pass running on this thread ends (after every
/// gradient has been accumulated and every post-accumulate hook has run), like PyTorch's
/// `Variable._execution_engine.queue_callback`. Callbacks run in the order queued; one queued
/// by a callback runs in the same pass.
///
/// If the pass panics the queued callbacks are dropped without running.
///
/// **Panics** if no backward pass is running on this thread (call it from a hook).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use kiln_autograd::{queue_callback, Var};
/// use kiln_tensor::Tensor;
/// let w = Var::param(Tensor::from_vec(vec![1.0f32, 2.0], &[2]));
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let l = log.clone();
/// let _h = w.register_post_accumulate_grad_hook(move |_| {
///     l.lock().unwrap().push("hook");
///     let l = l.clone();
///     queue_callback(move || l.lock().unwrap().push("end of backward"));
/// });
/// w.sum_all().backward();
/// assert_eq!(*log.lock().unwrap(), ["hook", "end of backward"]);
/// ```
pub fn queue_callback(callback: impl FnOnce() + 'static) {
    CALLBACKS.with(|c| {
        let mut c = c.borrow_mut();
        let frame = c.last_mut().expect("queue_callback: no backward pass is running on this thread");
        frame.push(Box::new(callback));
    })
}

/// The callback frame of one backward pass: opened when the pass starts, its callbacks run
/// by [`finish`](PassCallbacks::finish), dropped unrun if the pass panics.
pub(crate) struct PassCallbacks {
    depth: usize,
}

impl PassCallbacks {
    pub(crate) fn open() -> Self {
        let depth = CALLBACKS.with(|c| {
            let mut c = c.borrow_mut();
            c.push(Vec::new());
            c.len()
        });
        PassCallbacks { depth }
    }

    /// Runs the pass's callbacks (and any they queue) in order.
    pub(crate) fn finish(self) {
        loop {
            let next = CALLBACKS.with(|c| {
                let mut c = c.borrow_mut();
                let frame = &mut c[self.depth - 1];
                if frame.is_empty() {
                    None
                } else {
                    Some(frame.remove(0))
                }
            });
            match next {
                Some(f) => f(),
                None => break,
            }
        }
        // `Drop` pops the frame.
    }
}

impl Drop for PassCallbacks {
    fn drop(&mut self) {
        CALLBACKS.with(|c| {
            let mut c = c.borrow_mut();
            c.truncate(self.depth - 1);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kiln_tensor::Tensor;

    use super::*;

    #[test]
    fn hook_sees_final_gradient_of_a_leaf_used_twice() {
        // y = w*a + w*b: the hook must run once, after both paths have been added.
        let w = Var::param(Tensor::from_vec(vec![1.0f64], &[1]));
        let a = Var::constant(Tensor::from_vec(vec![2.0f64], &[1]));
        let b = Var::constant(Tensor::from_vec(vec![5.0f64], &[1]));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let _h = w.register_post_accumulate_grad_hook(move |v| s.lock().unwrap().push(v.grad().unwrap().item()));
        w.mul(&a).add(&w.mul(&b)).sum_all().backward();
        assert_eq!(*seen.lock().unwrap(), vec![7.0]);
    }

    #[test]
    fn hooks_run_in_reverse_use_order_before_the_pass_ends() {
        // w1 is used first in forward, so its gradient is final last.
        let w1 = Var::param(Tensor::from_vec(vec![1.0f32], &[1]));
        let w2 = Var::param(Tensor::from_vec(vec![2.0f32], &[1]));
        let log = Arc::new(Mutex::new(Vec::new()));
        for (name, w) in [("w1", &w1), ("w2", &w2)] {
            let l = log.clone();
            let _ = w.register_post_accumulate_grad_hook(move |_| {
                l.lock().unwrap().push(name.to_string());
                let l2 = l.clone();
                queue_callback(move || l2.lock().unwrap().push(format!("end after {name}")));
            });
        }
        let h = w1.mul_scalar(3.0).exp().mul(&w2).sum_all();
        h.backward();
        assert_eq!(*log.lock().unwrap(), ["w2", "w1", "end after w2", "end after w1"]);
    }

    #[test]
    fn hooks_do_not_run_for_unreached_leaves_or_grad() {
        let used = Var::param(Tensor::from_vec(vec![1.0f32], &[1]));
        let unused = Var::param(Tensor::from_vec(vec![1.0f32], &[1]));
        let count = Arc::new(Mutex::new(0));
        let c = count.clone();
        let _h = unused.register_post_accumulate_grad_hook(move |_| *c.lock().unwrap() += 1);
        let c = count.clone();
        let _h2 = used.register_post_accumulate_grad_hook(move |_| *c.lock().unwrap() += 10);
        used.sum_all().backward();
        let _ = crate::grad(&[used.mul(&used).sum_all()], std::slice::from_ref(&used), None, false);
        assert_eq!(*count.lock().unwrap(), 10);
    }

    #[test]
    #[should_panic(expected = "no backward pass is running")]
    fn queue_callback_outside_backward_panics() {
        queue_callback(|| ());
    }

    #[test]
    fn a_panicking_pass_drops_its_frame() {
        let w = Var::param(Tensor::from_vec(vec![1.0f32], &[1]));
        let _h = w.register_post_accumulate_grad_hook(|_| panic!("hook fails"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.sum_all().backward()));
        assert!(r.is_err());
        assert!(CALLBACKS.with(|c| c.borrow().is_empty()));
    }

    #[test]
    #[should_panic(expected = "only a leaf")]
    fn hook_on_non_leaf_panics() {
        let w = Var::param(Tensor::from_vec(vec![1.0f32], &[1]));
        let _ = w.exp().register_post_accumulate_grad_hook(|_| ());
    }
}
