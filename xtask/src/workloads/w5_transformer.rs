//! W5: x[16, 128, 256] -> 2 x TransformerEncoderLayer(d_model 256, 8 heads, ffn 1024, ReLU,
//! post-norm, dropout 0, batch-first) -> mean over seq -> Linear(256, 10) -> cross-entropy;
//! Adam lr 1e-3.

use kiln_autograd::Var;
use kiln_nn::{
    CrossEntropyLoss, Forward, Linear, Module, TransformerEncoder, TransformerEncoderLayer,
    TransformerEncoderLayerConfig,
};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
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
        let h = enc.forward(&x).mean(&[1], false);
        let l = loss.forward(&head.forward(&h), &y);
        l.backward();
        opt.step();
    });
    vec![Figure { variant: "batch=16,seq=128,d=256".into(), value: t * 1e3, unit: "ms/step", reps }]
}
