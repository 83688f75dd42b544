//! Mixed precision: an MLP, a CNN and an LSTM give, under `autocast(DType::BF16, ..)`, the
//! losses and parameter gradients of `f32` within bfloat16's tolerance, while the parameters
//! and gradients stay `f32`, and the products really ran in bfloat16.

use kiln_autograd::{autocast, Var};
use kiln_nn::functional::{cross_entropy, CrossEntropyOptions};
use kiln_nn::{Conv2d, Flatten, Forward, Linear, MaxPool2d, Module, Sequential, Tanh, LSTM};
use kiln_tensor::{DType, Indices, Rng, Tensor};

/// Loss and gradients of `loss_fn` in f32, then with the forward under autocast (backward
/// outside the scope, as a PyTorch training loop does); checks that they agree within
/// bfloat16 tolerance and differ from f32 (autocast did something).
fn compare(params: &[Var], loss_fn: impl Fn() -> Var) {
    let run = |bf16: bool| {
        for p in params {
            p.zero_grad();
        }
        let loss = if bf16 { autocast(DType::BF16, &loss_fn) } else { loss_fn() };
        loss.backward();
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad().expect("every parameter gets a gradient")).collect();
        (loss.value().item(), grads)
    };
    let (l32, g32) = run(false);
    let (l16, g16) = run(true);
    assert!((l32 - l16).abs() <= 1e-2 * l32.abs().max(1.0), "loss {l16} under autocast, {l32} in f32");
    let mut any_diff = false;
    for (i, (a, b)) in g32.iter().zip(&g16).enumerate() {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (a.to_vec(), b.to_vec());
        let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
        // bfloat16 keeps 8 significant bits (relative 2^-8 = 0.4 % per operand); the measured
        // differences are 0.2-0.4 % of the gradient norms, the bound 1.5 %.
        assert!(diff <= 1.5e-2 * norm + 1e-6, "parameter {i}: |g_bf16 - g_f32| = {diff}, |g_f32| = {norm}");
        eprintln!("parameter {i}: relative gradient difference {:.2e}", diff / norm);
        any_diff |= diff > 0.0;
    }
    assert!(any_diff, "autocast gave the f32 gradients bit for bit: the products did not run in bf16");
}

fn labels(n: usize, classes: usize, rng: &mut Rng) -> Indices {
    Indices::from_vec((0..n).map(|_| (rng.next_f64() * classes as f64) as usize % classes).collect())
}

#[test]
// Smooth activations: with ReLU a unit whose pre-activation is within bfloat16's rounding of
// zero switches off under autocast and takes its whole gradient row with it, which says
// nothing about the products' accuracy.
fn mlp_gradients_match_f32() {
    let mut rng = Rng::new(1);
    let model: Sequential = Sequential::new().add(Linear::new(20, 32)).add(Tanh).add(Linear::new(32, 5));
    let x = Var::constant(Tensor::randn(&[16, 20], &mut rng));
    let y = labels(16, 5, &mut rng);
    compare(&model.parameters(), || cross_entropy(&model.forward(&x), &y, &CrossEntropyOptions::default()));
}

#[test]
fn cnn_gradients_match_f32() {
    let mut rng = Rng::new(2);
    let model: Sequential = Sequential::new()
        .add(Conv2d::new(1, 4, 3))
        .add(Tanh)
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(4, 6, 3))
        .add(Tanh)
        .add(Flatten::default())
        .add(Linear::new(6 * 2 * 2, 3));
    let x = Var::constant(Tensor::randn(&[4, 1, 10, 10], &mut rng));
    let y = labels(4, 3, &mut rng);
    compare(&model.parameters(), || cross_entropy(&model.forward(&x), &y, &CrossEntropyOptions::default()));
}

#[test]
fn lstm_gradients_match_f32() {
    let mut rng = Rng::new(3);
    let lstm: LSTM = LSTM::new(6, 12);
    let head: Linear = Linear::new(12, 4);
    // [seq, batch, features], PyTorch's default layout
    let x = Var::constant(Tensor::randn(&[7, 5, 6], &mut rng));
    let y = labels(5, 4, &mut rng);
    let mut params = lstm.parameters();
    params.extend(head.parameters());
    compare(&params, || {
        let (out, _) = lstm.forward(&x);
        let last = out.select(0, 6);
        cross_entropy(&head.forward(&last), &y, &CrossEntropyOptions::default())
    });
}

#[test]
fn parameters_and_gradients_stay_f32_and_f64_is_untouched() {
    // f64 models (gradcheck's type) compute exactly as without autocast.
    let mut rng = Rng::new(4);
    let layer: Linear<f64> = Linear::new_generic(9, 3);
    let x = Var::constant(Tensor::<f64>::randn(&[4, 9], &mut rng));
    let y0 = layer.forward(&x).value();
    let y1 = autocast(DType::BF16, || layer.forward(&x)).value();
    assert_eq!(y0, y1);
    let l32: Linear = Linear::new(9, 3);
    let loss = autocast(DType::BF16, || l32.forward(&Var::constant(Tensor::randn(&[4, 9], &mut rng))).sum_all());
    loss.backward();
    assert_eq!(l32.weight.grad().unwrap().dtype(), DType::F32);
    assert_eq!(l32.weight.value().dtype(), DType::F32);
}
