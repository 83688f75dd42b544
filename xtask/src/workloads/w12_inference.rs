//! W12: W3's CNN (W3's seed, untrained) in eval mode, inference without gradient tracking at
//! batch 1 and 64: kiln f32 eager, and kiln-quant int8 (static, per-channel int8 weights,
//! calibrated with min-max observers on the 64 calibration samples fed one at a time).
//! Figure: median milliseconds per batch.

use kiln_autograd::{no_grad, Var};
use kiln_nn::{Forward, Module, Sequential};
use kiln_quant::{quantize_sequential, QuantConfig};
use kiln_tensor::{Rng, Tensor};

use crate::bench::{Figure, Timer};

fn model() -> Sequential {
    kiln_nn::init::manual_seed(3);
    let mut m = super::w3_cnn::network();
    m.eval();
    m
}

pub fn run(timer: &Timer) -> Vec<Figure> {
    let mut rng = Rng::new(3);
    let x1 = Tensor::<f32>::randn(&[1, 1, 28, 28], &mut rng);
    let x64 = Tensor::<f32>::randn(&[64, 1, 28, 28], &mut rng);
    let calibration: Vec<Tensor<f32>> = (0..64).map(|_| Tensor::randn(&[1, 1, 28, 28], &mut rng)).collect();
    let m = model();
    let mut out = Vec::new();
    for (batch, x) in [(1, &x1), (64, &x64)] {
        let v = Var::constant(x.clone());
        let (t, reps) = timer.median(|| {
            std::hint::black_box(no_grad(|| m.forward(&v)));
        });
        out.push(Figure { variant: format!("batch={batch},f32"), value: t * 1e3, unit: "ms/batch", reps });
    }
    match quantize_sequential(model(), &calibration, QuantConfig::default()) {
        Ok(q) => {
            for (batch, x) in [(1, &x1), (64, &x64)] {
                let (t, reps) = timer.median(|| {
                    std::hint::black_box(q.forward_tensor(x));
                });
                out.push(Figure { variant: format!("batch={batch},int8"), value: t * 1e3, unit: "ms/batch", reps });
            }
        }
        Err(e) => eprintln!("W12: int8 records left out: quantisation failed: {e}"),
    }
    out
}
