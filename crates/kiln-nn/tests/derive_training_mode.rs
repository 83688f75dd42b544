//! `train()`/`eval()` through `#[derive(Module)]` structs: `is_training()` answers for the
//! whole struct at every level, whatever the order of its fields (a `Conv2d`, which has no
//! mode of its own, used to decide the answer when it came first).

use kiln_nn::{BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Dropout, Linear, LinearConfig, Module};

/// A conv block whose first field is a layer without a mode.
#[derive(Module)]
struct Block {
    conv: Conv2d,
    bn: BatchNorm2d,
    drop: Dropout,
}

/// Nested derived structs, a `Vec` of them, and a head whose first field has no mode either.
#[derive(Module)]
struct Net {
    stem: Conv2d,
    blocks: Vec<Block>,
    head: Head,
}

#[derive(Module)]
struct Head {
    fc: Linear,
    drop: Dropout,
}

fn block() -> Block {
    Block {
        conv: Conv2dConfig::new(2, 2, 3).build().unwrap(),
        bn: BatchNormConfig::new(2).build().unwrap(),
        drop: Dropout::new(0.5),
    }
}

fn net() -> Net {
    Net {
        stem: Conv2dConfig::new(1, 2, 3).build().unwrap(),
        blocks: vec![block(), block()],
        head: Head { fc: LinearConfig::new(2, 3).build().unwrap(), drop: Dropout::new(0.1) },
    }
}

/// Every level's mode, outermost first.
fn modes(n: &Net) -> Vec<bool> {
    let mut v = vec![n.is_training(), n.head.is_training(), n.head.drop.is_training()];
    for b in &n.blocks {
        v.extend([b.is_training(), Module::<f32>::is_training(&b.bn), b.drop.is_training()]);
    }
    v
}

#[test]
fn eval_reaches_every_level_and_is_reported_by_each() {
    let mut n = net();
    assert_eq!(modes(&n), vec![true; 9]);
    n.eval();
    assert_eq!(modes(&n), vec![false; 9], "after eval()");
    n.train();
    assert_eq!(modes(&n), vec![true; 9], "after train()");
    // eval() on one block only: that block reports it, and so does the net containing it
    n.blocks[1].eval();
    assert!(!n.blocks[1].is_training() && n.blocks[0].is_training());
    assert!(!n.is_training(), "a sub-module in evaluation mode makes the whole net not training");
}

#[test]
fn a_struct_whose_first_field_is_a_conv_reports_eval() {
    let mut b = block();
    b.eval();
    assert!(!b.is_training());
    b.train();
    assert!(b.is_training());
}
