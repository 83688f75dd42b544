//! Peak heap use of a training step with and without gradient checkpointing, measured with a
//! counting global allocator (this test binary only).

use std::sync::Arc;

use kiln_autograd::{checkpoint_sequential, SequentialLayer, Var};
use kiln_tensor::{Rng, Tensor};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::peak_of;

#[test]
fn checkpointing_lowers_the_peak_of_a_deep_mlp_step() {
    let (width, depth, batch) = (128, 16, 64);
    let mut rng = Rng::new(0);
    let params: Vec<(Var<f32>, Var<f32>)> = (0..depth)
        .map(|_| {
            (
                Var::param(Tensor::uniform(&[width, width], -0.1, 0.1, &mut rng)),
                Var::param(Tensor::uniform(&[width], -0.1, 0.1, &mut rng)),
            )
        })
        .collect();
    let layers: Vec<SequentialLayer<f32>> = params
        .iter()
        .map(|(w, b)| {
            let (w, b) = (w.clone(), b.clone());
            Arc::new(move |x: &Var<f32>, r: &mut Rng| x.linear(&w, Some(&b)).tanh().dropout(0.1, true, r))
                as SequentialLayer<f32>
        })
        .collect();
    let x = Var::constant(Tensor::uniform(&[batch, width], -1.0, 1.0, &mut rng));
    let step = |segments: Option<usize>| {
        let mut r = Rng::new(1);
        let y = match segments {
            None => layers.iter().fold(x.clone(), |h, l| l(&h, &mut r)),
            Some(s) => checkpoint_sequential(&layers, s, &x, &mut r),
        };
        y.sum_all().backward();
        for (w, b) in &params {
            w.zero_grad();
            b.zero_grad();
        }
    };
    step(None); // warm-up (lazy statics, thread pool)
    let plain = peak_of(|| step(None));
    let ckpt = peak_of(|| step(Some(4)));
    eprintln!(
        "peak heap above baseline, {depth}-layer MLP width {width} batch {batch} (f32): plain {plain} B, \
         checkpoint_sequential(4 segments) {ckpt} B"
    );
    assert!(ckpt < plain, "checkpointed peak {ckpt} B is not below the plain peak {plain} B");
}
