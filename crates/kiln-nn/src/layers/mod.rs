//! The layers, one file each. Registering a layer is one `mod` line and one `pub use` line.

mod activation;
mod adaptive_avg_pool2d;
mod attention;
mod avg_pool1d;
mod avg_pool2d;
mod batchnorm;
mod channel_norm;
mod containers;
mod conv;
mod conv1d;
mod conv2d;
mod conv3d;
mod conv_transpose2d;
mod dropout;
mod embedding;
mod flatten;
mod gru;
mod instance_norm;
#[cfg(test)]
pub(crate) mod layers2_golden;
mod linear;
mod lstm;
mod max_pool1d;
mod max_pool2d;
mod norm;
mod pixel_shuffle;
mod pool;
mod positional;
mod prelu;
mod recurrence;
mod recurrent;
mod recurrent_cell;
mod rms_norm;
mod rnn;
#[cfg(test)]
pub(crate) mod testing;
mod transformer;
mod transformer_decoder;
mod transformer_decoder_layer;
mod transformer_encoder;
mod transformer_encoder_layer;
pub(crate) mod upsample;
mod zero_pad2d;

pub use activation::{GeluApproximate, LeakyReLU, LogSoftmax, ReLU, SiLU, Sigmoid, Softmax, Softplus, Tanh, ELU, GELU};
pub use adaptive_avg_pool2d::AdaptiveAvgPool2d;
pub use attention::{
    causal_mask, scaled_dot_product_attention, AttnMask, MultiheadAttention, MultiheadAttentionConfig,
};
pub use avg_pool1d::{AvgPool1d, AvgPool1dConfig};
pub use avg_pool2d::{AvgPool2d, AvgPool2dConfig};
pub use batchnorm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormConfig};
pub use channel_norm::{channel_norm_output, update_batch_norm_stats, visit_channel_norm};
pub use containers::{Identity, ModuleList, Sequential};
pub use conv::Padding;
pub use conv1d::{Conv1d, Conv1dConfig};
pub use conv2d::{Conv2d, Conv2dConfig};
pub use conv3d::{Conv3d, Conv3dConfig};
pub use conv_transpose2d::{ConvTranspose2d, ConvTranspose2dConfig};
pub use dropout::{DropChannels, DropElements, Dropout, Dropout2d, DropoutKind, DropoutLayer};
pub use embedding::{Embedding, EmbeddingConfig};
pub use flatten::{Flatten, Unflatten};
pub use gru::{GRUConfig, GRU};
pub use instance_norm::{InstanceNorm, InstanceNorm1d, InstanceNorm2d, InstanceNormConfig};
pub use linear::{Linear, LinearConfig};
pub use lstm::{LSTMConfig, LSTM};
pub use max_pool1d::{MaxPool1d, MaxPool1dConfig};
pub use max_pool2d::{MaxPool2d, MaxPool2dConfig};
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
pub use pixel_shuffle::{PixelShuffle, PixelUnshuffle};
pub use positional::{
    sinusoidal_encoding, LearnedPositionalEmbedding, LearnedPositionalEmbeddingConfig, SinusoidalPositionalEncoding,
    SinusoidalPositionalEncodingConfig,
};
pub use prelu::PReLU;
pub use recurrent::{last_valid_output, HiddenStateOnly, RNNWeights, Recurrent, RecurrentConfig};
pub use recurrent_cell::{
    CellConfig, GRUCell, GRUCellConfig, LSTMCell, LSTMCellConfig, RNNCell, RNNCellConfig, RecurrentCell,
};
pub use rms_norm::{RMSNorm, RMSNormConfig};
pub use rnn::{RNNConfig, RNNNonlinearity, RNN};
pub use transformer::{Transformer, TransformerActivation, TransformerConfig, TransformerMasks};
pub use transformer_decoder::TransformerDecoder;
pub use transformer_decoder_layer::{TransformerDecoderLayer, TransformerDecoderLayerConfig};
pub use transformer_encoder::TransformerEncoder;
pub use transformer_encoder_layer::{TransformerEncoderLayer, TransformerEncoderLayerConfig};
pub use upsample::{Upsample, UpsampleConfig};
pub use zero_pad2d::ZeroPad2d;
