//! Behaviour of the backward engine: accumulation, retain_graph, detach, graph release,
//! higher order, no_grad, anomaly detection, threads.

use kiln_autograd::{detect_anomaly, grad, no_grad, set_grad_enabled, Var};
use kiln_tensor::{Rng, Tensor};

fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
    Tensor::from_slice(v, s)
}

#[test]
fn leaf_used_twice_accumulates_both_paths() {
    let x = Var::param(t(&[3.0], &[1]));
    // y = x*x + 2x -> dy/dx = 2x + 2 = 8
    let y = x.mul(&x).add(&x.mul_scalar(2.0)).sum_all();
    y.backward();
    assert_eq!(x.grad().unwrap().to_vec(), vec![8.0]);
}

#[test]
fn gradients_accumulate_across_backwards_until_zero_grad() {
    let x = Var::param(t(&[1.0, 2.0], &[2]));
    x.mul_scalar(3.0).sum_all().backward();
    x.mul_scalar(3.0).sum_all().backward();
    assert_eq!(x.grad().unwrap().to_vec(), vec![6.0, 6.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn retain_graph_allows_a_second_backward() {
    let x = Var::param(t(&[2.0], &[1]));
    let y = x.mul(&x).sum_all();
    y.backward_opts(&Tensor::scalar(1.0), true, false);
    y.backward();
    assert_eq!(x.grad().unwrap().to_vec(), vec![8.0]);
}

#[test]
#[should_panic(expected = "already freed by an earlier backward")]
fn second_backward_without_retain_panics() {
    let x = Var::param(t(&[2.0], &[1]));
    let y = x.mul(&x).sum_all();
    y.backward();
    y.backward();
}

#[test]
fn backward_through_detach_stops() {
    let x = Var::param(t(&[2.0], &[1]));
    let y = x.mul(&x);
    let z = y.detach().mul(&x).sum_all(); // d/dx of (const 4) * x = 4
    z.backward();
    assert_eq!(x.grad().unwrap().to_vec(), vec![4.0]);
}

#[test]
fn graph_is_freed_after_backward_and_on_drop() {
    let x = Var::param(t(&[1.0, 2.0], &[2]));
    let h = x.exp();
    let weak = h.downgrade();
    let y = h.mul_scalar(2.0).sum_all();
    drop(h);
    assert!(weak.upgrade().is_some(), "y's graph keeps h alive");
    y.backward();
    assert!(weak.upgrade().is_none(), "backward released the graph while y is still alive");
    // with retain_graph the graph stays until the output is dropped
    let h = x.exp();
    let weak = h.downgrade();
    let y = h.sum_all();
    drop(h);
    y.backward_opts(&Tensor::scalar(1.0), true, false);
    assert!(weak.upgrade().is_some());
    drop(y);
    assert!(weak.upgrade().is_none(), "no reference cycle keeps the graph alive");
}

#[test]
fn no_grad_records_nothing() {
    let w = Var::param(t(&[1.0], &[1]));
    let y = no_grad(|| w.mul_scalar(2.0).exp());
    assert!(!y.requires_grad());
    assert!(y.is_leaf());
    {
        let _g = set_grad_enabled(false);
        assert!(!w.add_scalar(1.0).requires_grad());
    }
    assert!(w.add_scalar(1.0).requires_grad());
}

#[test]
fn second_derivative_of_cube_is_6x() {
    for xv in [-1.5, 0.5, 2.0] {
        let x = Var::param(t(&[xv], &[1]));
        let y = x.mul(&x).mul(&x).sum_all();
        let dy = grad(std::slice::from_ref(&y), std::slice::from_ref(&x), None, true)[0].clone().unwrap();
        assert!((dy.item() - 3.0 * xv * xv).abs() < 1e-12);
        let d2 = grad(&[dy.sum_all()], std::slice::from_ref(&x), None, true)[0].clone().unwrap();
        assert!((d2.item() - 6.0 * xv).abs() < 1e-12);
        let d3 = grad(&[d2.sum_all()], &[x], None, false)[0].clone().unwrap();
        assert!((d3.item() - 6.0).abs() < 1e-12);
    }
}

/// Hessian-vector product of a small MLP loss against finite differences of its gradient.
#[test]
fn hessian_vector_product_of_mlp_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let x = Var::constant(Tensor::<f64>::randn(&[4, 3], &mut rng));
    let w2 = Var::constant(Tensor::<f64>::randn(&[5, 1], &mut rng));
    let w1_0 = Tensor::<f64>::randn(&[3, 5], &mut rng);
    let v = Tensor::<f64>::randn(&[3, 5], &mut rng);
    let loss = |w1: &Var<f64>| x.matmul_naive(w1).tanh().matmul_naive(&w2).square().mean(&[], false);
    let gradient = |w: &Tensor<f64>| -> Tensor<f64> {
        let p = Var::param(w.clone());
        grad(&[loss(&p)], &[p], None, false)[0].clone().unwrap().value()
    };
    // analytical Hv
    let w1 = Var::param(w1_0.clone());
    let g = grad(&[loss(&w1)], std::slice::from_ref(&w1), None, true)[0].clone().unwrap();
    let gv = g.mul(&Var::constant(v.clone())).sum_all();
    let hv = grad(&[gv], &[w1], None, false)[0].clone().unwrap().value();
    // numerical: (g(w + eps v) - g(w - eps v)) / 2 eps
    let eps = 1e-5;
    let num =
        gradient(&w1_0.add(&v.mul_scalar(eps))).sub(&gradient(&w1_0.sub(&v.mul_scalar(eps)))).div_scalar(2.0 * eps);
    for (a, b) in hv.to_vec().iter().zip(num.to_vec()) {
        assert!((a - b).abs() < 1e-6 * (1.0 + b.abs()), "Hv {a} vs finite difference {b}");
    }
}

/// A matrix product written with primitive ops, so this test does not depend on the matmul
/// op's file: [m, k] x [k, n] via broadcasting multiply and sum.
trait MatmulNaive {
    fn matmul_naive(&self, other: &Self) -> Self;
}
impl MatmulNaive for Var<f64> {
    fn matmul_naive(&self, other: &Self) -> Self {
        let (m, k) = (self.size(0), self.size(1));
        let n = other.size(1);
        let a = self.reshape(&[m, k, 1]);
        let b = other.reshape(&[1, k, n]);
        a.mul(&b).sum(&[1], false)
    }
}

#[test]
fn grad_of_unused_input_is_none() {
    let x = Var::param(t(&[1.0], &[1]));
    let z = Var::param(t(&[1.0], &[1]));
    let y = x.mul_scalar(2.0).sum_all();
    let g = grad(&[y], &[x.clone(), z.clone()], None, false);
    assert_eq!(g[0].as_ref().unwrap().item(), 2.0);
    assert!(g[1].is_none());
    assert!(x.grad().is_none(), "grad() leaves .grad untouched");
}

#[test]
#[should_panic(expected = "detect_anomaly: log produced NaN or Inf in forward")]
fn anomaly_detection_names_the_op() {
    detect_anomaly(|| {
        let x = Var::param(t(&[-1.0], &[1]));
        let _ = x.log();
    });
}

#[test]
#[should_panic(expected = "detect_anomaly: sqrt produced NaN or Inf in backward")]
fn anomaly_detection_in_backward() {
    detect_anomaly(|| {
        let x = Var::param(t(&[0.0], &[1]));
        x.sqrt().sum_all().backward();
    });
}

#[test]
fn var_is_send_and_sync_and_trains_on_another_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Var<f32>>();
    let w = Var::param(Tensor::<f64>::from_vec(vec![1.0], &[1]));
    let w2 = w.clone();
    std::thread::spawn(move || {
        w2.mul(&w2).sum_all().backward();
    })
    .join()
    .unwrap();
    assert_eq!(w.grad().unwrap().to_vec(), vec![2.0]);
}

#[test]
fn update_value_changes_a_leaf_in_place() {
    let w = Var::param(Tensor::<f32>::ones(&[3]));
    w.mul_scalar(2.0).sum_all().backward();
    let g = w.grad().unwrap();
    w.update_value(|v| v.axpy_(-0.5, &g));
    assert_eq!(w.value().to_vec(), vec![0.0, 0.0, 0.0]);
}
