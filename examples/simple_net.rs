//! The classic first network: Linear(10, 5) -> ReLU -> Linear(5, 1), MSE loss, SGD — the
//! loop a PyTorch user writes, line by line.
//!
//!     cargo run --release --example simple_net

use kiln::autograd::Var;
use kiln::nn::{Forward, Linear, MSELoss, Module, ReLU, Sequential};
use kiln::optim::{Optimizer, SGDConfig, SGD};
use kiln::tensor::{Rng, Tensor};

fn main() {
    kiln::nn::init::manual_seed(0);
    let mut rng = Rng::new(0);
    // A target the network can represent: y = relu(x · a) - relu(x · b) for fixed a, b.
    let x: Tensor = Tensor::randn(&[64, 10], &mut rng);
    let a: Tensor = Tensor::randn(&[10, 1], &mut rng);
    let b: Tensor = Tensor::randn(&[10, 1], &mut rng);
    let y = x.matmul(&a).relu().sub(&x.matmul(&b).relu());
    let (x, y) = (Var::constant(x), Var::constant(y));

    // ANCHOR: training_loop
    let model = Sequential::new().add(Linear::new(10, 5)).add(ReLU).add(Linear::new(5, 1));
    println!("{model}");
    let criterion = MSELoss::new();
    let mut optimizer = SGD::new(model.parameters(), SGDConfig { lr: 0.01, momentum: 0.9, ..Default::default() });
    let first = criterion.forward(&model.forward(&x), &y).item();
    for epoch in 0..500 {
        optimizer.zero_grad();
        let output = model.forward(&x);
        let loss = criterion.forward(&output, &y);
        loss.backward();
        optimizer.step();
        if epoch % 100 == 0 {
            println!("epoch {epoch:>3}: loss {:.5}", loss.item());
        }
    }
    // ANCHOR_END: training_loop
    let last = criterion.forward(&model.forward(&x), &y).item();
    println!("loss {first:.4} -> {last:.4}");
}
