//! The kiln models the round-trip tests export: every exportable layer, with non-default
//! options, in small shapes.

use kiln_nn::{
    AdaptiveAvgPool2d, AvgPool1dConfig, AvgPool2dConfig, BatchNorm1d, BatchNorm2d, BatchNormConfig, Conv1dConfig,
    Conv2dConfig, ConvTranspose2dConfig, Dropout, Dropout2d, Flatten, GeluApproximate, GroupNormConfig, Identity,
    Layer, LayerNormConfig, LeakyReLU, Linear, LogSoftmax, MaxPool1dConfig, MaxPool2dConfig, Padding, ReLU, Sequential,
    SiLU, Sigmoid, Softmax, Softplus, Tanh, Unflatten, ELU, GELU,
};
use kiln_nn::{TransformerActivation, TransformerEncoder, TransformerEncoderLayerConfig};
use kiln_tensor::{Rng, Tensor};

/// Gives every batch-norm layer non-trivial running statistics, so the export of eval-mode
/// normalisation is really exercised.
pub fn randomise_buffers(model: &dyn Layer<f32>, rng: &mut Rng) {
    for (name, b) in model.named_buffers() {
        if name.ends_with("running_mean") {
            b.set_value(Tensor::randn(&b.shape(), rng).mul_scalar(0.3));
        } else if name.ends_with("running_var") {
            b.set_value(Tensor::rand(&b.shape(), rng).add_scalar(0.5));
        }
    }
    for (name, p) in model.named_parameters() {
        if name.ends_with("weight") && p.ndim() == 1 {
            p.set_value(Tensor::rand(&p.shape(), rng).add_scalar(0.5));
        }
    }
}

/// `(name, model, example input shape at batch 1)`.
pub fn models() -> Vec<(&'static str, Sequential, Vec<usize>)> {
    let mut out: Vec<(&'static str, Sequential, Vec<usize>)> = Vec::new();
    out.push((
        "mlp",
        Sequential::new()
            .add(Linear::new(6, 16))
            .add(ReLU)
            .add(Dropout::new(0.3))
            .add(Linear::new(16, 4))
            .add(LogSoftmax::new(1)),
        vec![1, 6],
    ));
    out.push((
        "linear_3d",
        Sequential::new()
            .add(Linear::new(5, 8))
            .add(GELU::new(GeluApproximate::None))
            .add(kiln_nn::LinearConfig { bias: false, ..kiln_nn::LinearConfig::new(8, 3) }.build().unwrap())
            .add(Softmax::new(-1)),
        vec![1, 4, 5],
    ));
    let bn: BatchNorm2d = BatchNormConfig::new(4).build().unwrap();
    out.push((
        "mnist_cnn",
        Sequential::new()
            .add(Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(1, 4, 3) }.build().unwrap())
            .add(bn)
            .add(ReLU)
            .add(MaxPool2dConfig::new(2).build().unwrap())
            .add(Conv2dConfig { stride: [2, 2], ..Conv2dConfig::new(4, 8, 3) }.build().unwrap())
            .add(ReLU)
            .add(Dropout2d::new(0.2))
            .add(Flatten::new(1, -1))
            .add(Linear::new(8 * 2 * 2, 10)),
        vec![1, 1, 12, 12],
    ));
    out.push((
        "conv2d_options",
        Sequential::new()
            .add(
                Conv2dConfig { padding: Padding::Same, dilation: [2, 1], groups: 2, ..Conv2dConfig::new(4, 6, 3) }
                    .build()
                    .unwrap(),
            )
            .add(LeakyReLU::new(0.1))
            .add(
                AvgPool2dConfig {
                    padding: [1, 1],
                    stride: Some([2, 2]),
                    count_include_pad: false,
                    ..AvgPool2dConfig::new(3)
                }
                .build()
                .unwrap(),
            )
            .add(ELU::new(0.7))
            .add(
                MaxPool2dConfig { padding: [1, 0], stride: Some([1, 2]), dilation: [1, 2], ..MaxPool2dConfig::new(2) }
                    .build()
                    .unwrap(),
            )
            .add(AdaptiveAvgPool2d::new([1, 1]))
            .add(Flatten::new(1, -1)),
        vec![1, 4, 11, 10],
    ));
    out.push((
        "adaptive_pool",
        Sequential::new()
            .add(
                Conv2dConfig { stride: [1, 2], padding: Padding::Explicit([0, 1]), ..Conv2dConfig::new(2, 3, 2) }
                    .build()
                    .unwrap(),
            )
            .add(AdaptiveAvgPool2d::new([3, 2]))
            .add(Flatten::new(0, -1)),
        vec![1, 2, 7, 7],
    ));
    let bn1: BatchNorm1d = BatchNormConfig::new(6).build().unwrap();
    out.push((
        "conv1d",
        Sequential::new()
            .add(
                Conv1dConfig {
                    stride: 2,
                    padding: Padding::Explicit(2),
                    dilation: 2,
                    groups: 3,
                    ..Conv1dConfig::new(3, 6, 3)
                }
                .build()
                .unwrap(),
            )
            .add(bn1)
            .add(Tanh)
            .add(MaxPool1dConfig { padding: 1, ..MaxPool1dConfig::new(3) }.build().unwrap())
            .add(Sigmoid)
            .add(AvgPool1dConfig { stride: Some(1), ..AvgPool1dConfig::new(2) }.build().unwrap())
            .add(SiLU)
            .add(Softplus::new(2.0, 1.0))
            .add(Flatten::new(1, 2)),
        vec![1, 3, 17],
    ));
    out.push((
        "decoder",
        Sequential::new()
            .add(Unflatten::new(1, &[4, 2, 2]))
            .add(
                ConvTranspose2dConfig {
                    stride: [2, 2],
                    padding: [1, 1],
                    output_padding: [1, 0],
                    ..ConvTranspose2dConfig::new(4, 4, 3)
                }
                .build()
                .unwrap(),
            )
            .add(GroupNormConfig::new(2, 4).build().unwrap())
            .add(GELU::new(GeluApproximate::Tanh))
            .add(LayerNormConfig::new(&[4, 3]).build().unwrap())
            .add(Identity),
        vec![1, 16],
    ));
    out.push((
        "transformer_encoder",
        Sequential::new().add(TransformerEncoder::new(
            TransformerEncoderLayerConfig { dim_feedforward: 12, ..TransformerEncoderLayerConfig::new(8, 2) }
                .build()
                .unwrap(),
            2,
            Some(LayerNormConfig::new(&[8]).build().unwrap()),
        )),
        vec![5, 1, 8],
    ));
    out
}

/// Models whose input is token ids: `(name, model, shape at batch 1, vocabulary size)`.
pub fn id_models() -> Vec<(&'static str, Sequential, Vec<usize>, usize)> {
    vec![(
        "embedding_transformer",
        Sequential::new()
            .add(kiln_nn::Embedding::new(20, 8))
            .add(
                TransformerEncoderLayerConfig {
                    dim_feedforward: 16,
                    batch_first: true,
                    norm_first: true,
                    activation: TransformerActivation::Gelu,
                    ..TransformerEncoderLayerConfig::new(8, 4)
                }
                .build()
                .unwrap(),
            )
            .add(Linear::new(8, 3)),
        vec![1, 6],
        20,
    )]
}

/// Random ids below `vocab` as integer-valued floats.
pub fn random_ids(shape: &[usize], vocab: usize, rng: &mut Rng) -> Tensor<f32> {
    Tensor::rand(shape, rng).mul_scalar(vocab as f32).map(|v| v.floor().min(vocab as f32 - 1.0))
}

/// Draws an input of the given shape.
pub type InputMaker = Box<dyn Fn(&[usize], &mut Rng) -> Tensor<f32>>;

/// A named model, its input shape at batch 1 and its input maker.
pub type ModelCase = (&'static str, Sequential, Vec<usize>, InputMaker);

/// Every model with an example-input maker: `(name, model, shape at batch 1, input maker)`.
pub fn all_models() -> Vec<ModelCase> {
    let mut v: Vec<ModelCase> = models()
        .into_iter()
        .map(|(n, m, s)| (n, m, s, Box::new(|s: &[usize], r: &mut Rng| Tensor::randn(s, r)) as InputMaker))
        .collect();
    for (n, m, s, vocab) in id_models() {
        v.push((n, m, s, Box::new(move |s: &[usize], r: &mut Rng| random_ids(s, vocab, r))));
    }
    v
}
