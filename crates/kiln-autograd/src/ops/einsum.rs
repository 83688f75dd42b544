//! Einstein summation on `Var`s (`torch.einsum`).
//!
//! The plan is kiln-tensor's [`einsum_with`]: diagonals, sums, permutes and batched matrix
//! products. Executed here with `Var` primitives, so the gradient of an einsum is the
//! composition of theirs (matmul's backward is again a matmul, a sum's backward an expand, a
//! permute's the inverse permute), and second derivatives come for free.

use kiln_tensor::{einsum_with, EinsumOperand, Float, Tensor};

use crate::var::Var;

impl<E: Float> EinsumOperand for Var<E> {
    type Elem = E;
    fn einsum_shape(&self) -> Vec<usize> {
        self.shape().to_vec()
    }
    fn einsum_permute(&self, dims: &[isize]) -> Self {
        self.permute(dims)
    }
    fn einsum_sum(&self, axes: &[isize]) -> Self {
        self.sum(axes, false)
    }
    fn einsum_reshape(&self, shape: &[usize]) -> Self {
        if self.shape().as_slice() == shape {
            self.clone()
        } else {
            self.reshape(shape)
        }
    }
    fn einsum_expand(&self, shape: &[usize]) -> Self {
        self.expand(shape)
    }
    fn einsum_matmul(&self, other: &Self) -> Self {
        self.matmul(other)
    }
    fn einsum_mul_constant(&self, mask: &Tensor<E>) -> Self {
        self.mul(&Var::constant(mask.clone()))
    }
}

impl<E: Float> Var<E> {
    /// Einstein summation, as `torch.einsum(equation, *operands)`: any equation made of
    /// diagonals (`ii->i`), sums, permutes and batched matrix products, with `...` broadcast
    /// dimensions and implicit output (no `->`). The products run on the GEMM kernel; the
    /// gradient is that of the composed primitives.
    ///
    /// **Panics** naming the equation and the operand shapes on a malformed equation or
    /// mismatched sizes.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let q = Var::param(Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[1, 2, 2]));
    /// let k = Var::param(Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 1.0], &[1, 2, 2]));
    /// let scores = Var::einsum("bld,bmd->blm", &[&q, &k]); // q k^T
    /// assert_eq!(scores.value().to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
    /// scores.sum_all().backward();
    /// assert_eq!(q.grad().unwrap().to_vec(), vec![1.0, 1.0, 1.0, 1.0]); // sums of k's rows
    /// ```
    #[must_use]
    pub fn einsum(equation: &str, operands: &[&Var<E>]) -> Var<E> {
        let ops: Vec<Var<E>> = operands.iter().map(|&v| v.clone()).collect();
        einsum_with(equation, &ops)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous};
    use crate::var::Var;
    use kiln_tensor::{Rng, Tensor};
    use proptest::prelude::*;

    /// Equations with a composed reference written with plain `Var` ops, and operand shapes
    /// built from the sizes `(a, b, c, d)`.
    #[allow(clippy::type_complexity)]
    fn case(n: u8, s: [usize; 4]) -> (&'static str, Vec<Vec<usize>>, fn(&[Var<f64>]) -> Var<f64>) {
        let [a, b, c, d] = s;
        match n % 10 {
            0 => ("ij,jk->ik", vec![vec![a, b], vec![b, c]], |v| v[0].matmul(&v[1])),
            1 => ("bij,bjk->bik", vec![vec![a, b, c], vec![a, c, d]], |v| v[0].matmul(&v[1])),
            2 => {
                ("bhld,bhmd->bhlm", vec![vec![a, b, c, d], vec![a, b, 2, d]], |v| v[0].matmul(&v[1].transpose(-1, -2)))
            }
            3 => ("i,i->", vec![vec![a], vec![a]], |v| v[0].mul(&v[1]).sum_all()),
            4 => ("ij->ji", vec![vec![a, b]], |v| v[0].t()),
            5 => ("ij,jk", vec![vec![a, b], vec![b, c]], |v| v[0].matmul(&v[1])),
            6 => ("i,j->ij", vec![vec![a], vec![b]], |v| v[0].unsqueeze(1).mul(&v[1].unsqueeze(0))),
            7 => ("...ij,...jk->...ik", vec![vec![a, 1, b, c], vec![d, c, 2]], |v| v[0].matmul(&v[1])),
            8 => ("abc,cd,de->bae", vec![vec![a, b, c], vec![c, d], vec![d, 2]], |v| {
                v[0].matmul(&v[1]).matmul(&v[2]).permute(&[1, 0, 2])
            }),
            _ => ("ii->i", vec![vec![a, a]], |v| {
                let n = v[0].size(0);
                v[0].mul(&Var::constant(Tensor::eye(n))).sum(&[1], false)
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn einsum_matches_composition_and_gradchecks(n: u8, a in 1usize..=3, b in 1usize..=3, c in 1usize..=3,
                                                     d in 1usize..=3, nc: bool, seed: u64) {
            let (eq, shapes, reference) = case(n, [a, b, c, d]);
            let mut rng = Rng::new(seed);
            let inputs: Vec<Tensor<f64>> = shapes
                .iter()
                .map(|s| {
                    let t = Tensor::uniform(s, -2.0, 2.0, &mut rng);
                    if nc { noncontiguous(&t) } else { t }
                })
                .collect();
            let vars: Vec<Var<f64>> = inputs.iter().map(|t| Var::constant(t.clone())).collect();
            let refs: Vec<&Var<f64>> = vars.iter().collect();
            let got = Var::einsum(eq, &refs).value();
            let want = reference(&vars).value();
            prop_assert_eq!(got.shape(), want.shape());
            for (x, y) in got.to_vec().iter().zip(want.to_vec()) {
                prop_assert!((x - y).abs() < 1e-12, "{}: {} vs {}", eq, x, y);
            }
            let f = |v: &[Var<f64>]| Var::einsum(eq, &v.iter().collect::<Vec<_>>());
            let r = check(f, &inputs);
            prop_assert!(r.is_ok(), "{} {:?}: {}", eq, shapes, r.unwrap_err());
            let r = check2(|v| f(v).tanh(), &inputs);
            prop_assert!(r.is_ok(), "{} {:?} (second order): {}", eq, shapes, r.unwrap_err());
        }
    }

    #[test]
    #[should_panic(expected = "einsum: equation \"bij,bjk->bik\" with operand shapes [[2, 2, 3], [2, 4, 5]]")]
    fn bad_sizes_panic_with_equation_and_shapes() {
        let a = Var::constant(Tensor::<f64>::zeros(&[2, 2, 3]));
        let b = Var::constant(Tensor::<f64>::zeros(&[2, 4, 5]));
        let _ = Var::einsum("bij,bjk->bik", &[&a, &b]);
    }
}
