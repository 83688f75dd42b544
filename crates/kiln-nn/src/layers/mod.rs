//! The layers, one file each. Registering a layer is one `mod` line and one `pub use` line.

mod activation;
mod containers;
mod flatten;
mod linear;

pub use activation::{GeluApproximate, LeakyReLU, LogSoftmax, ReLU, SiLU, Sigmoid, Softmax, Softplus, Tanh, ELU, GELU};
pub use containers::{Identity, ModuleList, Sequential};
pub use flatten::{Flatten, Unflatten};
pub use linear::{Linear, LinearConfig};
