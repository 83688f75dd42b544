//! # kiln
//!
//! The facade of the kiln deep-learning framework: it re-exports every kiln crate, so that one
//! dependency gives the whole stack, and `kiln::prelude::*` brings the everyday names into scope.
//!
//! ```
//! use kiln::prelude::*;
//! let x = Var::param(Tensor::from_vec(vec![1.0f32, 2.0], &[2]));
//! let y = x.mul(&x).sum_all();
//! y.backward();
//! assert_eq!(x.grad().unwrap().to_vec(), vec![2.0, 4.0]);
//! ```

/// This crate's README and the workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadmeDoctests;

pub use kiln_autograd as autograd;
pub use kiln_data as data;
pub use kiln_explain as explain;
pub use kiln_metrics as metrics;
pub use kiln_models as models;
pub use kiln_nn as nn;
pub use kiln_optim as optim;
pub use kiln_quant as quant;
pub use kiln_tensor as tensor;
pub use kiln_train as train;

/// The everyday names: `use kiln::prelude::*;` is the one import a training script needs for
/// the README's loop and the recipes in `examples/` (tensors and autograd, the common layers
/// and losses, optimisers and schedulers, data sets and loaders, metrics, the `Trainer`).
///
/// ```
/// use kiln::prelude::*;
/// let model: Sequential = Sequential::new()
///     .add(Conv2d::new(1, 4, 3))
///     .add(ReLU)
///     .add(MaxPool2d::new(2))
///     .add(Flatten::default())
///     .add(Linear::new(4 * 3 * 3, 10))
///     .add(LogSoftmax::new(1));
/// let mut opt = Adam::new(model.parameters(), AdamConfig::default());
/// let mut sched = StepLR::new(&mut opt, 1, 0.7);
/// let x = Var::constant(Tensor::ones(&[2, 1, 8, 8]));
/// let targets = Indices::from_vec(vec![3, 7]);
/// let log_probs = model.forward(&x);
/// let loss = NLLLoss::default().forward(&log_probs, &targets);
/// loss.backward();
/// opt.step();
/// sched.step(&mut opt);
/// let acc = no_grad(|| accuracy(&model.forward(&x).value(), &targets));
/// assert!((0.0..=1.0).contains(&acc));
/// ```
pub mod prelude {
    pub use kiln_autograd::{grad, no_grad, Var};
    pub use kiln_data::datasets::{Cifar10, Digits, FashionMnist, Mnist, Split};
    pub use kiln_data::{Batch, DataError, DataLoader, Dataset, DatasetExt, Image, Targets, TensorDataset};
    pub use kiln_metrics::{accuracy, Accuracy, Metric};
    pub use kiln_nn::{
        functional as F, BCELoss, BCEWithLogitsLoss, BatchNorm1d, BatchNorm2d, Conv2d, Conv2dConfig, CrossEntropyLoss,
        Dropout, Embedding, Flatten, Forward, Layer, Linear, LogSoftmax, MSELoss, MaxPool2d, Module, NLLLoss, Padding,
        ReLU, Sequential, Sigmoid, Tanh, LSTM,
    };
    pub use kiln_optim::lr_scheduler::{CosineAnnealingLR, LRScheduler, StepLR};
    pub use kiln_optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, SGDConfig, SGD};
    pub use kiln_tensor::{Float, Indices, Labels, Rng, Tensor};
    pub use kiln_train::{Distiller, History, SchedulerInterval, Trainer, Verbosity};
}
