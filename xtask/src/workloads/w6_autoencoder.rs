//! W6: x[256, 784] in [0, 1) -> Linear(784,256) ReLU -> Linear(256,784) Sigmoid -> BCE
//! against x; Adam lr 1e-3. One training step per repetition.

use kiln_autograd::Var;
use kiln_nn::{BCELoss, Forward, Linear, Module, ReLU, Sequential, Sigmoid};
use kiln_optim::{Adam, AdamConfig, Optimizer};
use kiln_tensor::{Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    kiln_nn::init::manual_seed(6);
    let mut rng = Rng::new(6);
    let x = Var::constant(Tensor::<f32>::rand(&[256, 784], &mut rng));
    let m = Sequential::new().add(Linear::new(784, 256)).add(ReLU).add(Linear::new(256, 784)).add(Sigmoid);
    let mut opt = Adam::new(m.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let loss = BCELoss::default();
    let (t, reps) = timer.median(|| {
        opt.zero_grad();
        let l = loss.forward(&m.forward(&x), &x);
        l.backward();
        opt.step();
    });
    vec![Figure { variant: "batch=256".into(), value: t * 1e3, unit: "ms/step", reps }]
}
