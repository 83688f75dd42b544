//! Peak heap use of a training step with and without gradient checkpointing, measured with a
//! counting global allocator (this test binary only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_autograd::{checkpoint_sequential, SequentialLayer, Var};
use kiln_tensor::{Rng, Tensor};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes above the starting level at the peak of `f`.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - base
}

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
