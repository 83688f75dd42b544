//! The backward of an op runs in the autocast mode its forward was recorded in (PyTorch's
//! rule): the gradient products of a bfloat16 product are bfloat16 too, wherever `backward`
//! is called; and `f64` (gradcheck's type) is never affected.

use kiln_autograd::{autocast, gradcheck, is_autocast_enabled, Var};
use kiln_tensor::{DType, Tensor};

/// 1 + 2^-9 is not a bfloat16: it rounds to 1 (ties to even) in a bfloat16 product.
const NOT_BF16: f32 = 1.0 + 1.0 / 512.0;

/// `x·w` with x = [[1, 1]] and w = [[1 + 2^-9], [1]]: dL/dx = wᵀ.
fn grad_of_x(forward_in_bf16: bool, backward_in_bf16: bool) -> Vec<f32> {
    let x = Var::param(Tensor::from_vec(vec![1.0f32, 1.0], &[1, 2]));
    let w = Var::constant(Tensor::from_vec(vec![NOT_BF16, 1.0], &[2, 1]));
    let y = if forward_in_bf16 { autocast(DType::BF16, || x.matmul(&w)) } else { x.matmul(&w) };
    if backward_in_bf16 {
        autocast(DType::BF16, || y.sum_all().backward());
    } else {
        y.sum_all().backward();
    }
    x.grad().expect("x requires grad").to_vec()
}

#[test]
fn backward_follows_the_mode_of_the_forward() {
    assert_eq!(grad_of_x(false, false), vec![NOT_BF16, 1.0]);
    // recorded under autocast: the gradient product rounds w, even outside the scope
    assert_eq!(grad_of_x(true, false), vec![1.0, 1.0]);
    // recorded in f32: an autocast scope around backward changes nothing
    assert_eq!(grad_of_x(false, true), vec![NOT_BF16, 1.0]);
    assert!(!is_autocast_enabled());
}

#[test]
fn gradcheck_in_f64_is_unaffected_by_autocast() {
    let x = Tensor::from_vec(vec![0.3f64, -1.2, 0.7, 2.0, 0.1, -0.4], &[2, 3]);
    let w = Tensor::from_vec(vec![0.5f64, -0.25, 1.5, 0.75, -1.0, 0.2], &[3, 2]);
    let report = autocast(DType::BF16, || {
        gradcheck(|v: &[Var<f64>]| v[0].matmul(&v[1]).tanh().sum_all(), &[x, w], 1e-6, 1e-8, 1e-6)
    });
    assert!(report.is_ok(), "{report:?}");
}
