//! f32 against int8 inference on the MNIST CNN of `examples/cnn_mnist.rs`
//! (Conv2d(1,32,3,p1)-ReLU-MaxPool2-Conv2d(32,64,3,p1)-ReLU-MaxPool2-Flatten-Linear(3136,128)-ReLU-Linear(128,10)),
//! randomly initialised, at batch 1 and 64; and the int8 GEMM of its big Linear per kernel.
//!
//!     cargo bench -p kiln-quant --bench quant

// criterion_group! writes undocumented functions.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

use kiln_autograd::{no_grad, Var};
use kiln_nn::{Conv2dConfig, Flatten, Forward, Linear, MaxPool2d, Module, Padding, ReLU, Sequential};
use kiln_quant::gemm::{gemm_u8i8, Isa, PackedB};
use kiln_quant::{quantize_sequential, QuantConfig};
use kiln_tensor::{Rng, Tensor};

fn mnist_cnn() -> Sequential {
    let conv = |i, o| {
        Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(i, o, 3) }.build::<f32>().unwrap()
    };
    Sequential::new()
        .add(conv(1, 32))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv(32, 64))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(64 * 7 * 7, 128))
        .add(ReLU)
        .add(Linear::new(128, 10))
}

fn models(c: &mut Criterion) {
    kiln_nn::init::manual_seed(0);
    let model = mnist_cnn();
    let mut rng = Rng::new(1);
    let calibration: Vec<Tensor> = (0..4).map(|_| Tensor::uniform(&[64, 1, 28, 28], 0.0, 1.0, &mut rng)).collect();
    // quantize_sequential takes the model by value: quantise a copy with the same weights
    let mut copy = mnist_cnn();
    copy.load_state_dict(&model.state_dict(), true).unwrap();
    let int8 = quantize_sequential(copy, &calibration, QuantConfig::default()).unwrap();
    let mut g = c.benchmark_group("mnist_cnn");
    for batch in [1usize, 64] {
        let x = Tensor::uniform(&[batch, 1, 28, 28], 0.0, 1.0, &mut rng);
        g.bench_with_input(BenchmarkId::new("f32", batch), &x, |b, x| {
            b.iter(|| no_grad(|| black_box(model.forward(&Var::constant(x.clone())).value())))
        });
        g.bench_with_input(BenchmarkId::new("int8", batch), &x, |b, x| b.iter(|| black_box(int8.forward_tensor(x))));
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    let (m, k, n) = (64, 3136, 128);
    let mut rng = Rng::new(2);
    let a: Vec<u8> = (0..m * k).map(|_| rng.below(256) as u8).collect();
    let w: Vec<i8> = (0..n * k).map(|_| rng.below(256) as u8 as i8).collect();
    let mut g = c.benchmark_group("gemm_64x3136x128");
    for isa in Isa::available() {
        let packed = PackedB::pack_for(isa, &w, n, k);
        let mut out = vec![0i32; m * n];
        g.bench_function(format!("{isa:?}"), |b| b.iter(|| gemm_u8i8(m, black_box(&a), k, &packed, &mut out, n)));
    }
    let af: Tensor = Tensor::uniform(&[m, k], -1.0, 1.0, &mut rng);
    let wf: Tensor = Tensor::uniform(&[k, n], -1.0, 1.0, &mut rng);
    g.bench_function("f32 matmul", |b| b.iter(|| black_box(af.matmul(&wf))));
    g.finish();
}

criterion_group!(benches, models, gemm);
criterion_main!(benches);
