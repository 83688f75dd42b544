//! Matrix products: `matmul` with all of PyTorch's cases, and `linear` (`x W^T + b`), the
//! hot path of `Linear` layers.
//!
//! Both backwards are matrix products again, written with [`Var::matmul`] on transposed views
//! (never copies), so second derivatives come for free.

use kiln_tensor::{Float, Tensor};
use smallvec::smallvec;

use super::OpFn;
use crate::var::{Grads, Inputs, Var};

/// `v` reshaped to `shape`, without recording a node when it already has that shape.
fn reshape_to<E: Float>(v: Var<E>, shape: &[usize]) -> Var<E> {
    if v.shape().as_slice() == shape {
        v
    } else {
        v.reshape(shape)
    }
}

impl<E: Float> Var<E> {
    /// Matrix product with PyTorch's rules (`torch.matmul`): 1-D · 1-D is a dot product (a 0-d
    /// result); 2-D · 2-D is a matrix product; a 1-D left operand is a row vector and a 1-D
    /// right operand a column vector, that dimension being removed from the result; beyond
    /// two dimensions the leading (batch) dimensions broadcast.
    ///
    /// Operands are read through their strides: a transposed or sliced operand is not copied.
    ///
    /// **Panics** with both shapes if the inner dimensions differ, the batch dimensions do not
    /// broadcast, or an operand is 0-d.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let a = Var::param(Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[2, 2]));
    /// let x = Var::param(Tensor::from_vec(vec![1.0f64, -1.0], &[2]));
    /// let y = a.matmul(&x); // [1 - 2, 3 - 4]
    /// assert_eq!(y.value().to_vec(), vec![-1.0, -1.0]);
    /// y.sum_all().backward();
    /// assert_eq!(a.grad().unwrap().to_vec(), vec![1.0, -1.0, 1.0, -1.0]); // outer(1, x)
    /// assert_eq!(x.grad().unwrap().to_vec(), vec![4.0, 6.0]); // column sums of a
    /// ```
    // d (A B)/dA = G B^T, d (A B)/dB = A^T G (1-D operands promoted to matrices, broadcast
    // batch dims summed back)
    #[must_use]
    pub fn matmul(&self, other: &Var<E>) -> Var<E> {
        let value = self.with_value(|a| other.with_value(|b| a.matmul(b)));
        Var::from_op(value, smallvec![self.clone(), other.clone()], OpFn { name: "matmul", f: matmul_backward::<E> })
    }

    /// `self W^T + b`, as `torch.nn.functional.linear`: `self` is `[*, in_features]` (or
    /// `[in_features]`), `weight` is `[out_features, in_features]`, `bias` is
    /// `[out_features]`; the result is `[*, out_features]`.
    ///
    /// One recorded op. The weight is used through its transposed view, leading dimensions of a
    /// contiguous input are folded into one matrix product, and the weight gradient is a single
    /// `G^T X` product over all the leading dimensions.
    ///
    /// **Panics** if `weight` is not 2-D, `in_features` differ, or `bias` is not `[out_features]`.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::Tensor;
    /// let x = Var::constant(Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]));
    /// let w = Var::param(Tensor::from_vec(vec![1.0f64, 0.0, -1.0], &[1, 3]));
    /// let b = Var::param(Tensor::from_vec(vec![0.5f64], &[1]));
    /// let y = x.linear(&w, Some(&b));
    /// assert_eq!(y.value().to_vec(), vec![-1.5, -1.5]);
    /// y.sum_all().backward();
    /// assert_eq!(w.grad().unwrap().to_vec(), vec![5.0, 7.0, 9.0]);
    /// assert_eq!(b.grad().unwrap().to_vec(), vec![2.0]);
    /// ```
    // d (x W^T + b)/dx = G W, d/dW = G^T x (over all leading dims), d/db = sum of G over them
    #[must_use]
    pub fn linear(&self, weight: &Var<E>, bias: Option<&Var<E>>) -> Var<E> {
        let (xs, ws) = (self.shape(), weight.shape());
        assert!(ws.len() == 2, "linear: weight must be [out_features, in_features], got {:?}", ws.as_slice());
        assert!(
            !xs.is_empty() && xs[xs.len() - 1] == ws[1],
            "linear: input {:?} and weight {:?}: in_features {} and {} differ",
            xs.as_slice(),
            ws.as_slice(),
            xs.last().copied().unwrap_or(0),
            ws[1]
        );
        if let Some(b) = bias {
            let bs = b.shape();
            assert!(
                bs.as_slice() == [ws[0]],
                "linear: bias must be [out_features] = [{}], got {:?}",
                ws[0],
                bs.as_slice()
            );
        }
        let value = self.with_value(|x| {
            weight.with_value(|w| {
                let mut y = linear_value(x, &w.t());
                if let Some(b) = bias {
                    b.with_value(|b| y.add_(b));
                }
                y
            })
        });
        let mut inputs: Inputs<E> = smallvec![self.clone(), weight.clone()];
        if let Some(b) = bias {
            inputs.push(b.clone());
        }
        Var::from_op(value, inputs, OpFn { name: "linear", f: linear_backward::<E> })
    }
}

/// `x · wt` for `x` of shape `[*, in]`: a contiguous `x` with several leading dimensions is
/// folded into one `[rows, in]` matrix, so that one large product runs instead of many small
/// ones.
fn linear_value<E: Float>(x: &Tensor<E>, wt: &Tensor<E>) -> Tensor<E> {
    let nd = x.ndim();
    if nd > 2 && x.is_contiguous() {
        let (k, n) = (x.shape()[nd - 1], wt.shape()[1]);
        let mut out: Vec<usize> = x.shape()[..nd - 1].to_vec();
        let rows: usize = out.iter().product();
        out.push(n);
        x.reshape(&[rows, k]).matmul(wt).reshape(&out)
    } else {
        x.matmul(wt)
    }
}

fn matmul_backward<E: Float>(g: &Var<E>, i: &[Var<E>], _: &Var<E>) -> Grads<E> {
    let (a, b) = (&i[0], &i[1]);
    let (sa, sb) = (a.shape(), b.shape());
    let (na, nb) = (sa.len(), sb.len());
    // Promote 1-D operands to matrices, and the gradient to the matching [.., m, n].
    let a2 = if na == 1 { a.unsqueeze(0) } else { a.clone() };
    let b2 = if nb == 1 { b.unsqueeze(-1) } else { b.clone() };
    let mut g2 = if nb == 1 { g.unsqueeze(-1) } else { g.clone() };
    if na == 1 {
        g2 = g2.unsqueeze(-2);
    }
    let ga = a.requires_grad().then(|| {
        let d = g2.matmul(&b2.transpose(-1, -2)).sum_to(&a2.shape());
        reshape_to(d, &sa)
    });
    let gb = b.requires_grad().then(|| {
        let d = if nb <= 2 && na > 2 {
            // B has no batch dims: fold A's into its rows, one [k, rows] x [rows, n] product.
            let (k, n) = (sa[na - 1], g2.size(-1));
            let rows: usize = sa[..na - 1].iter().product();
            a2.reshape(&[rows, k]).t().matmul(&g2.reshape(&[rows, n]))
        } else {
            a2.transpose(-1, -2).matmul(&g2).sum_to(&b2.shape())
        };
        reshape_to(d, &sb)
    });
    smallvec![ga, gb]
}

fn linear_backward<E: Float>(g: &Var<E>, i: &[Var<E>], _: &Var<E>) -> Grads<E> {
    let (x, w) = (&i[0], &i[1]);
    let (in_f, out_f) = (w.size(1), w.size(0));
    let xs = x.shape();
    let rows: usize = xs[..xs.len() - 1].iter().product();
    let gx = x.requires_grad().then(|| {
        if g.ndim() > 2 && g.with_value(Tensor::is_contiguous) {
            // one [rows, out] x [out, in] product rather than one per leading index
            g.reshape(&[rows, out_f]).matmul(w).reshape(&xs)
        } else {
            g.matmul(w)
        }
    });
    let gw = w.requires_grad().then(|| {
        let g2 = reshape_to(g.clone(), &[rows, out_f]);
        let x2 = reshape_to(x.clone(), &[rows, in_f]);
        g2.t().matmul(&x2)
    });
    let mut out: Grads<E> = smallvec![gx, gw];
    if let Some(b) = i.get(2) {
        out.push(b.requires_grad().then(|| g.sum_to(&[out_f])));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, values};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }

    /// Shapes of a matmul's operands covering PyTorch's cases, chosen by `case`, with batch
    /// dims that broadcast (size 1 or missing on one side).
    fn matmul_shapes(case: u8, m: usize, k: usize, n: usize, b1: usize, b2: usize) -> (Vec<usize>, Vec<usize>) {
        match case % 10 {
            0 => (vec![k], vec![k]),
            1 => (vec![m, k], vec![k]),
            2 => (vec![k], vec![k, n]),
            3 => (vec![m, k], vec![k, n]),
            4 => (vec![b1, m, k], vec![k, n]),
            5 => (vec![m, k], vec![b2, k, n]),
            6 => (vec![b1, 1, m, k], vec![b2, k, n]),
            7 => (vec![k], vec![b1, b2, k, n]),
            8 => (vec![1, b2, m, k], vec![b1, 1, k, n]),
            _ => (vec![b1, b2, m, k], vec![k]),
        }
    }

    fn operands() -> impl Strategy<Value = (Tensor<f64>, Tensor<f64>)> {
        (any::<u8>(), 1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3, 1usize..=2).prop_flat_map(
            |(c, m, k, n, b1, b2)| {
                let (sa, sb) = matmul_shapes(c, m, k, n, b1, b2);
                (values(sa), values(sb))
            },
        )
    }

    /// `x` as a non-contiguous view with the same values: transposed storage, or a strided
    /// slice of a larger tensor.
    fn strided(x: &Tensor<f64>, how: u8) -> Tensor<f64> {
        match how % 3 {
            0 => x.clone(),
            1 => noncontiguous(x),
            _ => {
                // every other element of a twice-as-long last dim
                let nd = x.ndim();
                let mut big = x.shape().to_vec();
                big[nd - 1] *= 2;
                let z: Tensor<f64> = Tensor::zeros(&big);
                let mut v = z.to_vec();
                let xs = x.to_vec();
                for (j, xv) in xs.iter().enumerate() {
                    v[2 * j] = *xv;
                }
                Tensor::from_vec(v, &big).slice(-1, 0, big[nd - 1], 2)
            }
        }
    }

    #[test]
    fn all_pytorch_cases_have_the_right_shapes_and_values() {
        let a = Var::param(t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]));
        let v = Var::param(t(&[1.0, 0.0, -1.0], &[3]));
        let dot = v.matmul(&v);
        assert_eq!(dot.shape().as_slice(), &[] as &[usize]);
        assert_eq!(dot.item(), 2.0);
        assert_eq!(a.matmul(&v).value().to_vec(), vec![-2.0, -2.0]);
        let u = Var::constant(t(&[1.0, 1.0], &[2]));
        assert_eq!(u.matmul(&a).value().to_vec(), vec![5.0, 7.0, 9.0]);
        let batch = Var::constant(Tensor::ones(&[4, 1, 2, 2]));
        assert_eq!(batch.matmul(&a).shape().as_slice(), &[4, 1, 2, 3]);
        assert_eq!(Var::constant(Tensor::<f64>::ones(&[5, 3, 3])).matmul(&v).shape().as_slice(), &[5, 3]);
        // gradient of a dot product is the other vector (here both: 2v)
        dot.backward();
        assert_eq!(v.grad().unwrap().to_vec(), vec![2.0, 0.0, -2.0]);
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn matmul_mismatch_panics() {
        let _ = Var::param(Tensor::<f64>::ones(&[2, 3])).matmul(&Var::param(Tensor::ones(&[2, 3])));
    }

    #[test]
    fn linear_matches_matmul_on_batched_and_strided_inputs() {
        let x = Tensor::from_vec((0..24).map(|i| i as f64 * 0.1).collect(), &[2, 3, 4]);
        let w = Tensor::from_vec((0..20).map(|i| 1.0 - i as f64 * 0.05).collect(), &[5, 4]);
        let b = Tensor::from_vec(vec![0.1, 0.2, 0.3, 0.4, 0.5], &[5]);
        let (xv, wv, bv) = (Var::constant(x.clone()), Var::constant(w.clone()), Var::constant(b.clone()));
        let want = xv.matmul(&wv.t()).add(&bv).value();
        assert_eq!(xv.linear(&wv, Some(&bv)).value().to_vec(), want.to_vec());
        let xs = Var::constant(noncontiguous(&x));
        assert_eq!(xs.linear(&wv, Some(&bv)).value().to_vec(), want.to_vec());
        let x1 = Var::constant(x.select(0, 0).select(0, 1));
        assert_eq!(x1.linear(&wv, None).shape().as_slice(), &[5]);
    }

    #[test]
    #[should_panic(expected = "linear: input [2, 3] and weight [4, 2]: in_features 3 and 2 differ")]
    fn linear_mismatch_names_both_shapes() {
        let _ = Var::param(Tensor::<f64>::ones(&[2, 3])).linear(&Var::param(Tensor::ones(&[4, 2])), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn gradcheck_matmul((a, b) in operands(), ha: u8, hb: u8) {
            let (a, b) = (strided(&a, ha), strided(&b, hb));
            let r = check(|v| v[0].matmul(&v[1]), &[a.clone(), b.clone()]);
            prop_assert!(r.is_ok(), "{:?} x {:?}: {}", a.shape(), b.shape(), r.unwrap_err());
            let r = check2(|v| v[0].matmul(&v[1]), &[a.clone(), b.clone()]);
            prop_assert!(r.is_ok(), "{:?} x {:?} (second order): {}", a.shape(), b.shape(), r.unwrap_err());
        }

        #[test]
        fn gradcheck_matmul_transposed_operand(m in 1usize..=3, k in 1usize..=3, n in 1usize..=3, seed: u64) {
            // a^T · b with a stored as [k, m]: the left operand is a transposed view
            let mut rng = kiln_tensor::Rng::new(seed);
            let a: Tensor<f64> = Tensor::uniform(&[k, m], -2.0, 2.0, &mut rng);
            let b: Tensor<f64> = Tensor::uniform(&[k, n], -2.0, 2.0, &mut rng);
            let r = check(|v| v[0].t().matmul(&v[1]), &[a.clone(), b.clone()]);
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            let r = check2(|v| v[1].t().matmul(&v[0]).mul(&v[1].t().matmul(&v[0])), &[a, b]);
            prop_assert!(r.is_ok(), "(second order) {}", r.unwrap_err());
        }

        #[test]
        fn gradcheck_linear(lead in prop::collection::vec(1usize..=3, 0..=2), i in 1usize..=3, o in 1usize..=3,
                            bias: bool, nc: bool, seed: u64) {
            let mut rng = kiln_tensor::Rng::new(seed);
            let mut xs = lead.clone();
            xs.push(i);
            let x: Tensor<f64> = Tensor::uniform(&xs, -2.0, 2.0, &mut rng);
            let x = if nc { noncontiguous(&x) } else { x };
            let w: Tensor<f64> = Tensor::uniform(&[o, i], -2.0, 2.0, &mut rng);
            let b: Tensor<f64> = Tensor::uniform(&[o], -2.0, 2.0, &mut rng);
            let mut inputs = vec![x, w];
            if bias {
                inputs.push(b);
            }
            let f = |v: &[Var<f64>]| v[0].linear(&v[1], v.get(2));
            let r = check(f, &inputs);
            prop_assert!(r.is_ok(), "{:?}: {}", inputs[0].shape(), r.unwrap_err());
            // a nonlinearity after, so that the second derivative wrt x and w is not zero
            let r = check2(|v| f(v).tanh(), &inputs);
            prop_assert!(r.is_ok(), "{:?} (second order): {}", inputs[0].shape(), r.unwrap_err());
        }
    }
}
