//! The layers, one file each. Registering a layer is one `mod` line and one `pub use` line.

mod activation;
mod containers;
mod flatten;
mod gru;
mod linear;
mod lstm;
mod rnn;
mod rnn_cells;
mod rnn_common;

pub use activation::{GeluApproximate, LeakyReLU, LogSoftmax, ReLU, SiLU, Sigmoid, Softmax, Softplus, Tanh, ELU, GELU};
pub use containers::{Identity, ModuleList, Sequential};
pub use flatten::{Flatten, Unflatten};
pub use gru::{GRUConfig, GRU};
pub use linear::{Linear, LinearConfig};
pub use lstm::{LSTMConfig, LSTM};
pub use rnn::{RNNConfig, RNNNonlinearity, RNN};
pub use rnn_cells::{GRUCell, GRUCellConfig, LSTMCell, LSTMCellConfig, RNNCell, RNNCellConfig};
pub use rnn_common::{last_valid_output, RNNWeights};
