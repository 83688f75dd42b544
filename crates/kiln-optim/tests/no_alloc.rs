//! No optimiser step after a parameter's first allocates: counted with a global allocator that
//! tallies the allocations of the current thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kiln_autograd::Var;
use kiln_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, RMSprop, RMSpropConfig, SGDConfig, SGD,
};
use kiln_tensor::Tensor;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

/// Steps `opt` twice (the first makes the state), then counts the allocations of three more.
fn steady_state_allocations<O: Optimizer<f32>>(mut opt: O, params: &[Var<f32>]) -> usize {
    for p in params {
        p.set_grad(Some(Tensor::from_vec((0..p.numel()).map(|i| (i as f32).sin()).collect(), p.shape().as_slice())));
    }
    opt.step();
    opt.step();
    allocations(|| {
        for _ in 0..3 {
            opt.step();
        }
    })
}

#[test]
fn steps_after_the_first_allocate_nothing() {
    // the counter sees allocations, and the first Adam step (making the state) allocates
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
    let p = vec![Var::param(Tensor::<f32>::ones(&[4]))];
    p[0].set_grad(Some(Tensor::ones(&[4])));
    let mut adam = Adam::new(p.clone(), AdamConfig::default());
    assert!(allocations(|| adam.step()) >= 2);

    let params = || vec![Var::param(Tensor::<f32>::ones(&[64, 32])), Var::param(Tensor::<f32>::zeros(&[32]))];
    let cases: Vec<(&str, usize)> = vec![
        ("SGD", {
            let p = params();
            steady_state_allocations(SGD::new(p.clone(), SGDConfig { lr: 0.1, ..Default::default() }), &p)
        }),
        ("SGD momentum nesterov wd", {
            let p = params();
            let c = SGDConfig { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1e-4, ..Default::default() };
            steady_state_allocations(SGD::new(p.clone(), c), &p)
        }),
        ("Adam amsgrad", {
            let p = params();
            steady_state_allocations(Adam::new(p.clone(), AdamConfig { amsgrad: true, ..Default::default() }), &p)
        }),
        ("AdamW", {
            let p = params();
            steady_state_allocations(AdamW::new(p.clone(), AdamWConfig::default()), &p)
        }),
        ("RMSprop centered momentum", {
            let p = params();
            let c = RMSpropConfig { centered: true, momentum: 0.9, ..Default::default() };
            steady_state_allocations(RMSprop::new(p.clone(), c), &p)
        }),
        ("Adagrad", {
            let p = params();
            steady_state_allocations(Adagrad::new(p.clone(), AdagradConfig::default()), &p)
        }),
    ];
    for (name, n) in cases {
        assert_eq!(n, 0, "{name}: {n} allocations in 3 steps after the first");
    }
}
