//! W7: 10,000 chained elementwise ops (5,000 iterations of `y = y * 1.0001 + 0.0001`) on a
//! one-element tensor with gradient tracking, then one backward. Figure: median repetition
//! time / 10,000 ops, in microseconds.

use kiln_autograd::Var;
use kiln_tensor::Tensor;

use crate::bench::{Figure, Timer};

const ITERS: usize = 5_000;

pub fn run(timer: &Timer) -> Vec<Figure> {
    let (t, reps) = timer.median(|| {
        let x = Var::param(Tensor::<f32>::from_vec(vec![1.0], &[1]));
        let mut y = x.clone();
        for _ in 0..ITERS {
            y = y.mul_scalar(1.0001).add_scalar(0.0001);
        }
        y.backward();
        std::hint::black_box(x.grad());
    });
    vec![Figure { variant: "ops=10000".into(), value: t / (2 * ITERS) as f64 * 1e6, unit: "us/op", reps }]
}
