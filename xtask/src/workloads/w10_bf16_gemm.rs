//! W10: C = A·B with A and B bfloat16 n×n (drawn from N(0, 1) in f32, A then B, one generator
//! across n = 512, 1024, 2048, rounded to nearest even), f32 sums, C rounded to a new bfloat16
//! n×n tensor once per element. Figure: 2n³ / median s / 1e9 GFLOP/s. The kernel is the one
//! `Bf16Isa::detect` picks (printed once: `vdpbf16ps` needs AVX-512 BF16).

use kiln_tensor::kernels::bf16_gemm::Bf16Isa;
use kiln_tensor::{Rng, Tensor};

use crate::bench::{Figure, Timer};

pub fn run(timer: &Timer) -> Vec<Figure> {
    eprintln!("W10: bf16 GEMM kernel {:?} (available: {:?})", Bf16Isa::detect(), Bf16Isa::available());
    let mut rng = Rng::new(10);
    [512usize, 1024, 2048]
        .into_iter()
        .map(|n| {
            let a = Tensor::<f32>::randn(&[n, n], &mut rng).to_bf16();
            let b = Tensor::<f32>::randn(&[n, n], &mut rng).to_bf16();
            let (t, reps) = timer.median(|| {
                std::hint::black_box(a.matmul(&b).to_bf16());
            });
            Figure { variant: format!("n={n}"), value: 2.0 * (n as f64).powi(3) / t / 1e9, unit: "GFLOP/s", reps }
        })
        .collect()
}
