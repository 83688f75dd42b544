//! W3: x[64,1,28,28] -> Conv2d(1,32,3) ReLU -> Conv2d(32,64,3) ReLU -> MaxPool2d(2) ->
//! flatten(9216) -> Linear(9216,128) ReLU -> Linear(128,10) -> cross-entropy; Adam lr 1e-3.

use kiln_autograd::Var;
use kiln_nn::{Conv2d, CrossEntropyLoss, Flatten, Forward, Linear, MaxPool2d, Module, ReLU, Sequential};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{Indices, Rng, Tensor};

use crate::bench::{Figure, Timer};

/// W3's network (workloads.md): conv 1->32, conv 32->64, max-pool 2, linear 9216->128->10,
/// ReLU between; W11, W12 and W13 run the same one.
pub fn network() -> Sequential<f32> {
    Sequential::new()
        .add(Conv2d::new(1, 32, 3))
        .add(ReLU)
        .add(Conv2d::new(32, 64, 3))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(9216, 128))
        .add(ReLU)
        .add(Linear::new(128, 10))
}

pub fn run(timer: &Timer) -> Vec<Figure> {
    kiln_nn::init::manual_seed(3);
    let mut rng = Rng::new(3);
    let x = Var::constant(Tensor::<f32>::randn(&[64, 1, 28, 28], &mut rng));
    let y = Indices::from_vec((0..64).map(|_| rng.below(10) as usize).collect());
    let m = network();
    let mut opt = Adam::new(m.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let loss = CrossEntropyLoss::default();
    let (t, reps) = timer.median(|| {
        opt.zero_grad();
        let l = loss.forward(&m.forward(&x), &y);
        l.backward();
        opt.step();
    });
    vec![Figure { variant: "batch=64".into(), value: t * 1e3, unit: "ms/step", reps }]
}
