//! W8: Conv2d(64, 64, 3, stride 1, padding 1, with bias) forward on x[32, 64, 56, 56], no
//! gradient tracking, a new output per call. Figure: 2·32·64·56·56·64·9 FLOP / median s.

use kiln_tensor::{Conv2dParams, Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    let mut rng = Rng::new(8);
    let x: Tensor<f32> = Tensor::randn(&[32, 64, 56, 56], &mut rng);
    // PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    let bound = 1.0 / ((64 * 9) as f64).sqrt();
    let w: Tensor<f32> = Tensor::uniform(&[64, 64, 3, 3], -bound, bound, &mut rng);
    let b: Tensor<f32> = Tensor::uniform(&[64], -bound, bound, &mut rng);
    let p = Conv2dParams { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 };
    let (t, reps) = timer.median(|| {
        std::hint::black_box(x.conv2d(&w, Some(&b), &p));
    });
    let flop = 2.0 * 32.0 * 64.0 * 56.0 * 56.0 * 64.0 * 9.0;
    vec![Figure { variant: "batch=32".into(), value: flop / t / 1e9, unit: "GFLOP/s", reps }]
}
