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

pub use kiln_autograd as autograd;
pub use kiln_data as data;
pub use kiln_explain as explain;
pub use kiln_metrics as metrics;
pub use kiln_nn as nn;
pub use kiln_optim as optim;
pub use kiln_quant as quant;
pub use kiln_tensor as tensor;
pub use kiln_train as train;

/// The everyday names: `use kiln::prelude::*;`.
pub mod prelude {
    pub use kiln_autograd::{grad, no_grad, Var};
    pub use kiln_data::{DataLoader, Dataset, DatasetExt};
    pub use kiln_metrics::Metric;
    pub use kiln_nn::{functional as F, CrossEntropyLoss, Forward, Layer, Linear, MSELoss, Module, ReLU, Sequential};
    pub use kiln_optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, SGDConfig, SGD};
    pub use kiln_tensor::{Float, Indices, Rng, Tensor};
    pub use kiln_train::{Distiller, History, Trainer};
}
