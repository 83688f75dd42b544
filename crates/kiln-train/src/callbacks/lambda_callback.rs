//! [`LambdaCallback`]: a callback made of closures.

use kiln_nn::Module;

use super::{BatchContext, Callback, EpochContext};
use crate::history::History;

type TrainBeginFn = Box<dyn FnMut(&dyn Module<f32>)>;
type BatchEndFn = Box<dyn FnMut(&mut BatchContext<'_>)>;
type EpochEndFn = Box<dyn FnMut(&mut EpochContext<'_>)>;
type TrainEndFn = Box<dyn FnMut(&mut dyn Module<f32>, &History)>;

/// A callback built from closures, one per hook, like Keras' `LambdaCallback`; hooks left
/// unset do nothing.
///
/// The trainer owns its callbacks, so a closure that should hand something back shares it
/// through an `Rc<RefCell<_>>` (or an `Arc<Mutex<_>>`).
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use kiln_train::callbacks::LambdaCallback;
/// let losses = Rc::new(RefCell::new(Vec::new()));
/// let sink = Rc::clone(&losses);
/// let cb = LambdaCallback::new().on_epoch_end(move |ctx| sink.borrow_mut().push(ctx.logs["loss"]));
/// # let _ = cb;
/// ```
#[derive(Default)]
pub struct LambdaCallback {
    train_begin: Option<TrainBeginFn>,
    batch_end: Option<BatchEndFn>,
    epoch_end: Option<EpochEndFn>,
    train_end: Option<TrainEndFn>,
}

impl LambdaCallback {
    /// A callback with no hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` before the first epoch.
    #[must_use]
    pub fn on_train_begin(mut self, f: impl FnMut(&dyn Module<f32>) + 'static) -> Self {
        self.train_begin = Some(Box::new(f));
        self
    }

    /// Runs `f` after every batch's optimiser step.
    #[must_use]
    pub fn on_batch_end(mut self, f: impl FnMut(&mut BatchContext<'_>) + 'static) -> Self {
        self.batch_end = Some(Box::new(f));
        self
    }

    /// Runs `f` after every epoch (it may set `ctx.stop`).
    #[must_use]
    pub fn on_epoch_end(mut self, f: impl FnMut(&mut EpochContext<'_>) + 'static) -> Self {
        self.epoch_end = Some(Box::new(f));
        self
    }

    /// Runs `f` after the last epoch.
    #[must_use]
    pub fn on_train_end(mut self, f: impl FnMut(&mut dyn Module<f32>, &History) + 'static) -> Self {
        self.train_end = Some(Box::new(f));
        self
    }
}

impl Callback for LambdaCallback {
    fn on_train_begin(&mut self, model: &dyn Module<f32>) {
        if let Some(f) = &mut self.train_begin {
            f(model);
        }
    }

    fn on_batch_end(&mut self, ctx: &mut BatchContext<'_>) {
        if let Some(f) = &mut self.batch_end {
            f(ctx);
        }
    }

    fn on_epoch_end(&mut self, ctx: &mut EpochContext<'_>) {
        if let Some(f) = &mut self.epoch_end {
            f(ctx);
        }
    }

    fn on_train_end(&mut self, model: &mut dyn Module<f32>, history: &History) {
        if let Some(f) = &mut self.train_end {
            f(model, history);
        }
    }
}
