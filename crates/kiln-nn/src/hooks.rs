//! Forward hooks, like PyTorch's `register_forward_hook`: a function run with a module, its
//! input and its output each time the module is *called*.
//!
//! As in PyTorch, where `module(x)` runs the hooks and `module.forward(x)` does not, hooks run
//! when a layer is applied through [`Layer::call`] (what [`Sequential`](crate::Sequential) does
//! for its layers, and what a model's own `forward` writes for its sub-modules:
//! `self.conv1.call(&x)`), never through a bare [`Forward::forward`](crate::Forward::forward).
//!
//! - [`Layer::register_forward_hook`] (or [`register_forward_hook`] for a `dyn Layer`) hooks one module (identified by its address and type, so
//!   the module must not move while the hook is registered); the hook sees calls from every
//!   thread. Zero-sized layers (`ReLU`) have no storage of their own: two of one type held
//!   side by side in a struct may share an address, and then a hook on one runs for both.
//! - [`register_module_forward_hook`] hooks every module called on the current thread, like
//!   `torch.nn.modules.module.register_module_forward_hook` (what [`summary`](crate::summary)
//!   uses).
//!
//! Both return a [`ForwardHookHandle`] that removes the hook when dropped or
//! [`remove`](ForwardHookHandle::remove)d. With no hook registered anywhere, `call` costs one
//! relaxed atomic load on top of `forward`.
//!
//! Unlike PyTorch's, a hook observes and cannot replace the output.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::module::Layer;

/// One call of a module, as a forward hook sees it.
pub struct ForwardCall<'a, E: Float = f32> {
    /// The module called.
    pub module: &'a dyn Layer<E>,
    /// Its input.
    pub input: &'a Var<E>,
    /// Its output.
    pub output: &'a Var<E>,
    /// How many hooked calls (`Layer::call`) enclose this one on this thread (0 for the
    /// outermost).
    pub depth: usize,
    /// The position of this call's *start* among the hooked calls of this thread (calls
    /// numbered in the order they began, so a container comes before its layers, as in
    /// torchinfo's table; hooks themselves run when a call ends).
    pub order: u64,
}

/// A forward hook's function.
type HookFn<E> = Arc<dyn Fn(&ForwardCall<'_, E>) + Send + Sync>;

/// A module's identity: its address and concrete type.
type Key = (usize, TypeId);

/// Hooks registered anywhere (per-module and per-thread): `call`'s fast path reads only this.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// A registered hook: its id, its module (per-module hooks) and its `HookFn<E>` as `Any`.
type Registered = (u64, Key, Arc<dyn Any + Send + Sync>);
/// Per-module hooks.
static MODULE_HOOKS: RwLock<Vec<Registered>> = RwLock::new(Vec::new());

thread_local! {
    /// This thread's hooks on every module: (id, `HookFn<E>` as `Any`).
    static THREAD_HOOKS: RefCell<Vec<(u64, Arc<dyn Any + Send + Sync>)>> = const { RefCell::new(Vec::new()) };
    /// Hooked calls running on this thread.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Hooked calls begun on this thread.
    static ORDER: Cell<u64> = const { Cell::new(0) };
}

fn key<E: Float>(module: &dyn Layer<E>) -> Key {
    (module as *const dyn Layer<E> as *const () as usize, module.as_any().type_id())
}

/// Removes its forward hook when dropped or [`remove`](Self::remove)d, like PyTorch's
/// `RemovableHandle` (keep it alive as long as the hook should run). Not `Send`: a hook
/// registered for one thread is removed on that thread.
#[must_use = "the hook is removed when the handle drops"]
pub struct ForwardHookHandle {
    id: u64,
    thread: bool,
    _not_send: PhantomData<*const ()>,
}

impl ForwardHookHandle {
    fn new(thread: bool) -> Self {
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        ForwardHookHandle { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), thread, _not_send: PhantomData }
    }

    /// Removes the hook now (as dropping the handle does).
    pub fn remove(self) {}
}

impl Drop for ForwardHookHandle {
    fn drop(&mut self) {
        let id = self.id;
        if self.thread {
            // `try_with`: at thread exit the list may be gone already, and the hook with it.
            let _ = THREAD_HOOKS.try_with(|h| h.borrow_mut().retain(|(i, _)| *i != id));
        } else {
            MODULE_HOOKS.write().unwrap_or_else(|e| e.into_inner()).retain(|(i, _, _)| *i != id);
        }
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registers `hook` on `module`, [`Layer::register_forward_hook`] for any layer, a
/// `dyn Layer` included (`register_forward_hook(&model[2], hook)`).
pub fn register_forward_hook<E: Float, L: Layer<E> + ?Sized>(
    module: &L,
    hook: impl Fn(&ForwardCall<'_, E>) + Send + Sync + 'static,
) -> ForwardHookHandle {
    let module = module.as_layer();
    let handle = ForwardHookHandle::new(false);
    let f: HookFn<E> = Arc::new(hook);
    MODULE_HOOKS.write().unwrap_or_else(|e| e.into_inner()).push((handle.id, key(module), Arc::new(f)));
    handle
}

/// Registers `hook`, run after every module called through [`Layer::call`] on this thread,
/// like PyTorch's global `register_module_forward_hook` (limited to the thread, so that models
/// run by other threads, such as tests running side by side, are not seen).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use kiln_nn::{register_module_forward_hook, sequential, Forward, Layer, Linear, ReLU, Sequential, Tensor, Var};
/// let model: Sequential = sequential![Linear::new(4, 8), ReLU, Linear::new(8, 2)];
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let handle = register_module_forward_hook(move |c: &kiln_nn::ForwardCall<'_, f32>| {
///     s.lock().unwrap().push((c.module.to_string(), c.output.shape().to_vec(), c.depth))
/// });
/// model.call(&Var::constant(Tensor::ones(&[3, 4])));
/// drop(handle);
/// model.call(&Var::constant(Tensor::ones(&[3, 4]))); // no longer seen
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen.len(), 4); // three layers, then the Sequential itself
/// assert_eq!(seen[1], ("ReLU()".to_string(), vec![3, 8], 1));
/// assert_eq!(seen[3].1, vec![3, 2]);
/// assert_eq!(seen[3].2, 0);
/// ```
pub fn register_module_forward_hook<E: Float>(
    hook: impl Fn(&ForwardCall<'_, E>) + Send + Sync + 'static,
) -> ForwardHookHandle {
    let handle = ForwardHookHandle::new(true);
    let f: HookFn<E> = Arc::new(hook);
    THREAD_HOOKS.with(|h| h.borrow_mut().push((handle.id, Arc::new(f))));
    handle
}

/// Applies `module` to `x` and runs the hooks (see [`Layer::call`]).
pub(crate) fn call<E: Float>(module: &dyn Layer<E>, x: &Var<E>) -> Var<E> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return module.forward(x);
    }
    let depth = DEPTH.with(|d| d.replace(d.get() + 1));
    let order = ORDER.with(|o| o.replace(o.get() + 1));
    struct Leave(usize);
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(self.0));
        }
    }
    let leave = Leave(depth);
    let y = module.forward(x);
    drop(leave);
    let call = ForwardCall { module, input: x, output: &y, depth, order };
    // Hooks are cloned out of the lists before running, so that a hook may call modules and
    // register or remove hooks itself.
    let k = key(module);
    let on_module: Vec<HookFn<E>> = MODULE_HOOKS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, mk, _)| *mk == k)
        .filter_map(|(_, _, f)| f.downcast_ref::<HookFn<E>>().cloned())
        .collect();
    let on_thread: Vec<HookFn<E>> =
        THREAD_HOOKS.with(|h| h.borrow().iter().filter_map(|(_, f)| f.downcast_ref::<HookFn<E>>().cloned()).collect());
    for f in on_module.iter().chain(&on_thread) {
        f(&call);
    }
    y
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kiln_tensor::Tensor;

    use super::*;
    use crate::{sequential, Forward, Linear, ReLU, Sequential};

    #[test]
    fn a_module_hook_sees_its_module_only_until_removed() {
        let model: Sequential = sequential![Linear::new(4, 8), ReLU, Linear::new(8, 2)];
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let handle = register_forward_hook(&model[2], move |c| {
            s.lock().unwrap().push((c.input.shape().to_vec(), c.output.shape().to_vec(), c.module.num_parameters()))
        });
        let x = Var::constant(Tensor::ones(&[5, 4]));
        let y = model.call(&x);
        assert_eq!(*seen.lock().unwrap(), vec![(vec![5, 8], vec![5, 2], 18)]);
        // the hook observes: the output is the plain forward's (Sequential's forward applies
        // its layers with `call`, so the hook runs again)
        assert_eq!(y.value().to_vec(), model.forward(&x).value().to_vec());
        assert_eq!(seen.lock().unwrap().len(), 2);
        // a bare `forward` of the layer runs no hooks, as in PyTorch
        model[2].forward(&Var::constant(Tensor::ones(&[1, 8])));
        assert_eq!(seen.lock().unwrap().len(), 2);
        handle.remove();
        model.call(&x);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn depth_and_order_follow_the_nesting() {
        let model: Sequential = sequential![Linear::new(2, 3), sequential![ReLU, Linear::new(3, 1)]];
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let _h = register_module_forward_hook(move |c: &ForwardCall<'_, f32>| {
            s.lock().unwrap().push((c.module.to_string().split('(').next().unwrap().to_string(), c.depth, c.order))
        });
        model.call(&Var::constant(Tensor::ones(&[1, 2])));
        let mut seen = seen.lock().unwrap().clone();
        // hooks run as calls end; sorted by start they read as torchinfo's table
        let first = seen.iter().map(|r| r.2).min().unwrap();
        seen.sort_by_key(|r| r.2);
        let rows: Vec<(&str, usize, u64)> = seen.iter().map(|(k, d, o)| (k.as_str(), *d, o - first)).collect();
        assert_eq!(
            rows,
            [("Sequential", 0, 0), ("Linear", 1, 1), ("Sequential", 1, 2), ("ReLU", 2, 3), ("Linear", 2, 4)]
        );
    }

    #[test]
    fn a_panicking_forward_leaves_the_depth_as_it_was() {
        let _h = register_module_forward_hook(|_: &ForwardCall<'_, f32>| {});
        let fc: Linear = Linear::new(3, 2);
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fc.call(&Var::constant(Tensor::ones(&[1, 5])))));
        assert!(r.is_err());
        assert_eq!(DEPTH.with(Cell::get), 0);
    }
}
