//! The differentiable operations, one file per op family. Each file holds the user-facing
//! `Var` methods, their backward (opening with its math line) and their tests.

use kiln_tensor::{Float, Tensor};
use smallvec::smallvec;

use crate::engine::composed_vjp;
use crate::mode::is_grad_enabled;
use crate::var::{Backward, Grads, Inputs, Var};

pub mod arith;
pub mod attention;
pub mod conv;
pub mod dropout;
pub mod einsum;
pub mod index;
pub mod lstm;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod shape;
pub mod softmax;
pub mod unary;

/// A backward given as a closure: `f(grad, inputs, output)` returns one gradient per input.
/// The closure holds whatever the op saved besides its inputs.
pub struct OpFn<F> {
    /// The op's name.
    pub name: &'static str,
    /// The backward.
    pub f: F,
}

impl<E: Float, F> Backward<E> for OpFn<F>
where
    F: Fn(&Var<E>, &[Var<E>], &Var<E>) -> Grads<E> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, grad: &Var<E>, inputs: &[Var<E>], output: &Var<E>) -> Grads<E> {
        (self.f)(grad, inputs, output)
    }
}

/// Records a fused op: one node whose first-order backward is `kernel_backward` (written with
/// kiln-tensor's fused kernels, on values), and whose recorded backward (`create_graph`, for
/// second and higher orders) is the engine's differentiation of `composed`, the same function
/// written with primitive ops. A fused op thus has one backward of its own; the composition is
/// both its test oracle and its higher-order path (`composed` also serves the tests).
pub(crate) fn fused_op<E: Float>(
    name: &'static str,
    value: Tensor<E>,
    inputs: Inputs<E>,
    kernel_backward: impl Fn(&Var<E>, &[Var<E>], &Var<E>) -> Grads<E> + Send + Sync + 'static,
    composed: impl Fn(&[Var<E>]) -> Var<E> + Send + Sync + 'static,
) -> Var<E> {
    Var::from_op(
        value,
        inputs,
        OpFn {
            name,
            f: move |g: &Var<E>, i: &[Var<E>], out: &Var<E>| -> Grads<E> {
                if is_grad_enabled() {
                    composed_vjp(&composed, i, g)
                } else {
                    kernel_backward(g, i, out)
                }
            },
        },
    )
}

/// Records a one-input op: `forward` computes the value, `derivative(x, out, grad)` gives
/// the input's gradient (written with `Var` ops so that it is itself differentiable).
pub fn unary_op<E: Float>(
    x: &Var<E>,
    name: &'static str,
    forward: impl FnOnce(&Tensor<E>) -> Tensor<E>,
    derivative: impl Fn(&Var<E>, &Var<E>, &Var<E>) -> Var<E> + Send + Sync + 'static,
) -> Var<E> {
    let value = x.with_value(forward);
    Var::from_op(
        value,
        smallvec![x.clone()],
        OpFn {
            name,
            f: move |g: &Var<E>, i: &[Var<E>], out: &Var<E>| -> Grads<E> { smallvec![Some(derivative(&i[0], out, g))] },
        },
    )
}

/// Records a two-input broadcasting op. `da(a, b, out, grad)` and `db(...)` give the
/// gradients at the broadcast shape; they are summed back to each input's shape here.
pub fn binary_op<E: Float>(
    a: &Var<E>,
    b: &Var<E>,
    name: &'static str,
    forward: impl FnOnce(&Tensor<E>, &Tensor<E>) -> Tensor<E>,
    da: impl Fn(&Var<E>, &Var<E>, &Var<E>, &Var<E>) -> Var<E> + Send + Sync + 'static,
    db: impl Fn(&Var<E>, &Var<E>, &Var<E>, &Var<E>) -> Var<E> + Send + Sync + 'static,
) -> Var<E> {
    let value = a.with_value(|x| b.with_value(|y| forward(x, y)));
    Var::from_op(
        value,
        smallvec![a.clone(), b.clone()],
        OpFn {
            name,
            f: move |g: &Var<E>, i: &[Var<E>], out: &Var<E>| -> Grads<E> {
                let (a, b) = (&i[0], &i[1]);
                let ga = a.requires_grad().then(|| da(a, b, out, g).sum_to(&a.shape()));
                let gb = b.requires_grad().then(|| db(a, b, out, g).sum_to(&b.shape()));
                smallvec![ga, gb]
            },
        },
    )
}
