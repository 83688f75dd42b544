//! W11: W3's and W5's training steps (the same data, models, seeds, loss and Adam) with the
//! forward and the loss under `autocast(DType::BF16, ..)`, backward and the update outside it
//! (PyTorch's AMP recipe); parameters, gradients and Adam's state stay f32. The products of
//! the backward pass run in bfloat16 too (each op's backward runs in the mode its forward was
//! recorded in, as in PyTorch).
//!
//! The models are built exactly as in `w3_cnn.rs` and `w5_transformer.rs`.

use kiln_autograd::{autocast, Var};
use kiln_nn::{
    CrossEntropyLoss, Forward, Linear, Module, TransformerEncoder, TransformerEncoderLayer,
    TransformerEncoderLayerConfig,
};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{DType, Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    vec![cnn(timer), transformer(timer)]
}

fn cnn(timer: &Timer) -> Figure {
    kiln_nn::init::manual_seed(3);
    let mut rng = Rng::new(3);
    let x = Var::constant(Tensor::<f32>::randn(&[64, 1, 28, 28], &mut rng));
    let y = Indices::from_vec((0..64).map(|_| rng.below(10) as usize).collect());
    let m = super::w3_cnn::network();
    let mut opt = Adam::new(m.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let loss = CrossEntropyLoss::default();
    let (t, reps) = timer.median(|| {
        opt.zero_grad();
        let l = autocast(DType::BF16, || loss.forward(&m.forward(&x), &y));
        l.backward();
        opt.step();
    });
    Figure { variant: "batch=64,autocast-bf16".into(), value: t * 1e3, unit: "ms/step", reps }
}

fn transformer(timer: &Timer) -> Figure {
    kiln_nn::init::manual_seed(5);
    let mut rng = Rng::new(5);
    let x = Var::constant(Tensor::<f32>::randn(&[16, 128, 256], &mut rng));
    let y = Indices::from_vec((0..16).map(|_| rng.below(10) as usize).collect());
    let cfg = TransformerEncoderLayerConfig {
        dim_feedforward: 1024,
        dropout: 0.0,
        batch_first: true,
        ..TransformerEncoderLayerConfig::new(256, 8)
    };
    let layer: TransformerEncoderLayer = cfg.build().expect("valid config");
    let enc = TransformerEncoder::new(layer, 2, None);
    let head: Linear = Linear::new(256, 10);
    let mut params = enc.parameters();
    params.extend(head.parameters());
    let mut opt = Adam::new(params, AdamConfig { lr: 1e-3, ..Default::default() });
    let loss = CrossEntropyLoss::default();
    let (t, reps) = timer.median(|| {
        opt.zero_grad();
        let l = autocast(DType::BF16, || {
            let h = enc.forward(&x).mean(&[1], false);
            loss.forward(&head.forward(&h), &y)
        });
        l.backward();
        opt.step();
    });
    Figure { variant: "batch=16,seq=128,d=256,autocast-bf16".into(), value: t * 1e3, unit: "ms/step", reps }
}
