//! W2: x[128, 784] -> Linear(784,256) ReLU -> Linear(256,128) ReLU -> Linear(128,10) ->
//! cross-entropy; SGD lr 0.1 momentum 0.9. One training step (zero_grad, forward, loss,
//! backward, update) per repetition, the same batch each time.

use kiln_autograd::Var;
use kiln_nn::{CrossEntropyLoss, Forward, Linear, Module, ReLU, Sequential};
use kiln_optim::{Optimizer, SGDConfig, SGD};
use kiln_tensor::{Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};

/// W2's model (also W9's).
pub fn model() -> Sequential<f32> {
    Sequential::new()
        .add(Linear::new(784, 256))
        .add(ReLU)
        .add(Linear::new(256, 128))
        .add(ReLU)
        .add(Linear::new(128, 10))
}

/// W2's optimiser.
pub fn optimizer(m: &Sequential<f32>) -> SGD<f32> {
    SGD::new(m.parameters(), SGDConfig { lr: 0.1, momentum: 0.9, ..Default::default() })
}

/// One training step.
pub fn step(m: &Sequential<f32>, opt: &mut SGD<f32>, loss: &CrossEntropyLoss<f32>, x: &Var<f32>, y: &Indices) {
    opt.zero_grad();
    let l = loss.forward(&m.forward(x), y);
    l.backward();
    opt.step();
}

pub fn run(timer: &Timer) -> Vec<Figure> {
    kiln_nn::init::manual_seed(2);
    let mut rng = Rng::new(2);
    let x = Var::constant(Tensor::<f32>::randn(&[128, 784], &mut rng));
    let y = Indices::from_vec((0..128).map(|_| rng.below(10) as usize).collect());
    let m = model();
    let mut opt = optimizer(&m);
    let loss = CrossEntropyLoss::default();
    let (t, reps) = timer.median(|| step(&m, &mut opt, &loss, &x, &y));
    vec![Figure { variant: "batch=128".into(), value: t * 1e3, unit: "ms/step", reps }]
}
