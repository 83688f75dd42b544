//! W1: C = A·B for square n in {128, 256, 512, 1024, 2048}, A and B from N(0, 1), a new C per
//! repetition (`a.matmul(&b)`, as a user writes it). Figure: 2n³ / median s / 1e9 GFLOP/s.

use kiln_tensor::{Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    let mut rng = Rng::new(0);
    [128usize, 256, 512, 1024, 2048]
        .into_iter()
        .map(|n| {
            let a: Tensor<f32> = Tensor::randn(&[n, n], &mut rng);
            let b: Tensor<f32> = Tensor::randn(&[n, n], &mut rng);
            let (t, reps) = timer.median(|| {
                std::hint::black_box(a.matmul(&b));
            });
            Figure { variant: format!("n={n}"), value: 2.0 * (n as f64).powi(3) / t / 1e9, unit: "GFLOP/s", reps }
        })
        .collect()
}
