//! The layers, one file each. Registering a layer is one `mod` line and one `pub use` line.

mod activation;
mod attention;
mod batchnorm;
mod containers;
mod conv;
mod dropout;
mod embedding;
mod flatten;
mod gru;
mod linear;
mod lstm;
mod norm;
mod pool;
mod positional;
mod recurrence;
mod recurrent;
mod recurrent_cell;
mod rnn;
mod transformer;
mod transformer_decoder;
mod transformer_decoder_layer;
mod transformer_encoder;
mod transformer_encoder_layer;

pub use activation::{GeluApproximate, LeakyReLU, LogSoftmax, ReLU, SiLU, Sigmoid, Softmax, Softplus, Tanh, ELU, GELU};
pub use attention::{
    causal_mask, scaled_dot_product_attention, AttnMask, MultiheadAttention, MultiheadAttentionConfig,
};
pub use batchnorm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormConfig};
pub use containers::{Identity, ModuleList, Sequential};
pub use conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Padding};
pub use dropout::{Dropout, Dropout2d};
pub use embedding::{Embedding, EmbeddingConfig};
pub use flatten::{Flatten, Unflatten};
pub use gru::{GRUConfig, GRU};
pub use linear::{Linear, LinearConfig};
pub use lstm::{LSTMConfig, LSTM};
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
pub use pool::{
    AdaptiveAvgPool2d, AvgPool1d, AvgPool1dConfig, AvgPool2d, AvgPool2dConfig, MaxPool1d, MaxPool1dConfig, MaxPool2d,
    MaxPool2dConfig,
};
pub use positional::{
    sinusoidal_encoding, LearnedPositionalEmbedding, LearnedPositionalEmbeddingConfig, SinusoidalPositionalEncoding,
    SinusoidalPositionalEncodingConfig,
};
pub use recurrent::{last_valid_output, HiddenStateOnly, RNNWeights, Recurrent, RecurrentConfig};
pub use recurrent_cell::{
    CellConfig, GRUCell, GRUCellConfig, LSTMCell, LSTMCellConfig, RNNCell, RNNCellConfig, RecurrentCell,
};
pub use rnn::{RNNConfig, RNNNonlinearity, RNN};
pub use transformer::{Transformer, TransformerActivation, TransformerConfig, TransformerMasks};
pub use transformer_decoder::TransformerDecoder;
pub use transformer_decoder_layer::{TransformerDecoderLayer, TransformerDecoderLayerConfig};
pub use transformer_encoder::TransformerEncoder;
pub use transformer_encoder_layer::{TransformerEncoderLayer, TransformerEncoderLayerConfig};
