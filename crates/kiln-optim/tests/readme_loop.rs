//! The top-level README's training loop, written against kiln-nn and kiln-optim alone: a
//! project depending on these two crates names every type and function the loop needs
//! (`Tensor`, `Var`, `Indices`, `no_grad` come re-exported from kiln-nn).

use kiln_nn::{no_grad, CrossEntropyLoss, Forward, Indices, Linear, Module, ReLU, Sequential, Tensor, Var};
use kiln_optim::{Adam, AdamConfig, Optimizer};

#[test]
fn the_readme_loop_compiles_and_learns_with_kiln_nn_and_kiln_optim_only() {
    kiln_nn::init::manual_seed(0);
    let model: Sequential = Sequential::new().add(Linear::new(64, 128)).add(ReLU).add(Linear::new(128, 10));
    let mut opt = Adam::new(model.parameters(), AdamConfig::default());
    let x = Var::constant(Tensor::ones(&[32, 64]));
    let targets = Indices::from_vec(vec![3; 32]);
    let mut losses = Vec::new();
    for _ in 0..5 {
        let loss = CrossEntropyLoss::default().forward(&model.forward(&x), &targets);
        losses.push(loss.item());
        loss.backward();
        opt.step();
        opt.zero_grad();
    }
    assert!(losses[4] < losses[0], "{losses:?}");
    let predicted = no_grad(|| model.forward(&x).value().argmax(1, false));
    assert_eq!(predicted, Indices::from_vec(vec![3; 32]));
}
