//! W4: tokens[32, 200] in [0, 10000) -> Embedding(10000, 128) -> LSTM(128 -> 64, 1 layer,
//! batch-first) -> last hidden state -> Linear(64, 1) -> BCE-with-logits; Adam lr 1e-3.

use kiln_autograd::Var;
use kiln_nn::{BCEWithLogitsLoss, Embedding, Forward, LSTMConfig, Linear, Module, LSTM};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    kiln_nn::init::manual_seed(4);
    let mut rng = Rng::new(4);
    let ids = Indices::new((0..32 * 200).map(|_| rng.below(10_000) as usize).collect(), &[32, 200]);
    let y = Var::constant(Tensor::<f32>::from_vec((0..32).map(|_| rng.below(2) as f32).collect(), &[32]));
    let emb: Embedding = Embedding::new(10_000, 128);
    let lstm: LSTM = LSTMConfig { batch_first: true, ..LSTMConfig::new(128, 64) }.build().expect("valid config");
    let fc: Linear = Linear::new(64, 1);
    let mut params = emb.parameters();
    params.extend(lstm.parameters());
    params.extend(fc.parameters());
    let mut opt = Adam::new(params, AdamConfig { lr: 1e-3, ..Default::default() });
    let loss = BCEWithLogitsLoss::default();
    let (t, reps) = timer.median(|| {
        opt.zero_grad();
        let x = emb.forward_ids(&ids);
        let (_, (h_n, _)) = lstm.forward(&x);
        let logits = fc.forward(&h_n.select(0, 0)).reshape(&[32]);
        let l = loss.forward(&logits, &y);
        l.backward();
        opt.step();
    });
    vec![Figure { variant: "batch=32,seq=200".into(), value: t * 1e3, unit: "ms/step", reps }]
}
