//! Shape ops: reshape, expand, permute/transpose, narrow/slice/select, squeeze/unsqueeze,
//! flip, flatten, contiguous. All are views in the forward pass (except where the strides
//! force a copy); their backward moves the gradient back to the input's layout.
//!
//! The backward of narrow/slice/select scatters the gradient into zeros of the input's shape
//! with [`Var::index_add`] (whose own backward is `index_select`, i.e. the slice again), so
//! second derivatives flow through them too.

use kiln_tensor::{Float, Tensor};

use super::unary_op;
use crate::trace::{int, signed};
use crate::var::Var;

/// Normalises a possibly negative dimension against `ndim`, panicking with the op's name and
/// the shape.
pub(crate) fn dim_of(d: isize, ndim: usize, op: &str, shape: &[usize]) -> usize {
    let n = ndim as isize;
    let r = if d < 0 { d + n } else { d };
    assert!(r >= 0 && r < n, "{op}: dim {d} out of range for a tensor of shape {shape:?}");
    r as usize
}

/// The gradient `g` of a selection along `dim` written back into zeros of `shape`:
/// `out.index_select(dim, index) = g`, everything else 0 (repeated indices accumulate).
pub(crate) fn scatter_into_zeros<E: Float>(g: &Var<E>, shape: &[usize], dim: usize, index: &[usize]) -> Var<E> {
    Var::constant(Tensor::zeros(shape)).index_add(dim as isize, index, g)
}

/// The backward of `slice`: `g` written into zeros of `shape` at `start..end` (step `step`) of
/// dimension `d`; its own backward slices again.
// d slice_scatter(0, g)/dg = slice
fn slice_into_zeros<E: Float>(g: &Var<E>, shape: &[usize], d: usize, start: usize, end: usize, step: usize) -> Var<E> {
    let dim = d as isize;
    unary_op(
        g,
        "slice_backward",
        |g| Tensor::zeros(shape).slice_scatter(g, dim, start, end, step),
        move |_, _, gg| gg.slice(dim, start, end, step),
    )
}

impl<E: Float> Var<E> {
    /// The same elements with a new shape (a view when possible), like `torch.reshape`.
    // d reshape(x)/dx: reshape the gradient back
    #[must_use]
    pub fn reshape(&self, shape: &[usize]) -> Var<E> {
        unary_op(self, "reshape", |x| x.reshape(shape), |x, _, g| g.reshape(&x.shape()))
    }

    /// Broadcasts to `shape` without copying, like `expand`.
    // d expand(x)/dx: sum the gradient back to x's shape
    #[must_use]
    pub fn expand(&self, shape: &[usize]) -> Var<E> {
        unary_op(self, "expand", |x| x.expand(shape), |x, _, g| g.sum_to(&x.shape()))
    }

    /// Same as [`expand`](Var::expand), NumPy's name.
    #[must_use]
    pub fn broadcast_to(&self, shape: &[usize]) -> Var<E> {
        self.expand(shape)
    }

    /// Reorders the dimensions (a view), like `torch.permute`.
    ///
    /// **Panics** if `dims` is not a permutation of the dimensions.
    // d permute(x, p)/dx: permute the gradient by the inverse permutation
    #[must_use]
    pub fn permute(&self, dims: &[isize]) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dims", signed(dims))]);
        let dims_v = dims.to_vec();
        unary_op(
            self,
            "permute",
            |x| x.permute(dims),
            move |x, _, g| {
                let (nd, shape) = (x.ndim(), x.shape());
                let mut inverse = vec![0isize; nd];
                for (i, &d) in dims_v.iter().enumerate() {
                    inverse[dim_of(d, nd, "permute", &shape)] = i as isize;
                }
                g.permute(&inverse)
            },
        )
    }

    /// Swaps two dimensions (a view), like `torch.transpose`.
    // d transpose(x)/dx: transpose the gradient back
    #[must_use]
    pub fn transpose(&self, d0: isize, d1: isize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim0", int(d0 as i64)), ("dim1", int(d1 as i64))]);
        unary_op(self, "transpose", |x| x.transpose(d0, d1), move |_, _, g| g.transpose(d0, d1))
    }

    /// The transpose of a matrix (a view); 0-D and 1-D `Var`s are returned as they are, like
    /// `torch.Tensor.t`.
    ///
    /// **Panics** for more than two dimensions.
    // d t(x)/dx: transpose the gradient back
    #[must_use]
    pub fn t(&self) -> Var<E> {
        unary_op(self, "t", |x| x.t(), |_, _, g| g.t())
    }

    /// `length` elements of dimension `dim` starting at `start` (a view), like `torch.narrow`.
    ///
    /// **Panics** if `start + length` exceeds the dimension.
    #[must_use]
    pub fn narrow(&self, dim: isize, start: usize, length: usize) -> Var<E> {
        let shape = self.shape();
        let d = dim_of(dim, shape.len(), "narrow", &shape);
        assert!(
            start + length <= shape[d],
            "narrow: start {start} + length {length} exceeds dim {d} of shape {:?}",
            shape.as_slice()
        );
        self.slice(dim, start, start + length, 1)
    }

    /// Elements `start..end` with `step` along `dim` (a view), like `x[..., start:end:step]`.
    /// `end` is clamped to the dimension's size.
    ///
    /// **Panics** if `step == 0` or `start > end` after clamping.
    // d slice(x)/dx: the gradient scattered into zeros of x's shape at the sliced positions
    #[must_use]
    pub fn slice(&self, dim: isize, start: usize, end: usize, step: usize) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("dim", int(dim as i64)),
                ("start", int(start as i64)),
                ("end", int(end as i64)),
                ("step", int(step as i64)),
            ]
        });
        unary_op(
            self,
            "slice",
            |x| x.slice(dim, start, end, step),
            move |x, _, g| {
                let shape = x.shape();
                let d = dim_of(dim, shape.len(), "slice", &shape);
                slice_into_zeros(g, &shape, d, start, end, step)
            },
        )
    }

    /// The sub-tensor at `index` of dimension `dim`, with that dimension removed (a view),
    /// like `x.select(dim, index)` / `x[index]`.
    ///
    /// **Panics** if `index` is out of range.
    // d select(x)/dx: the gradient, given back its dim, scattered into zeros at `index`
    #[must_use]
    pub fn select(&self, dim: isize, index: usize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64)), ("index", int(index as i64))]);
        unary_op(
            self,
            "select",
            |x| x.select(dim, index),
            move |x, _, g| {
                let shape = x.shape();
                let d = dim_of(dim, shape.len(), "select", &shape);
                slice_into_zeros(&g.unsqueeze(d as isize), &shape, d, index, index + 1, 1)
            },
        )
    }

    /// Removes every dimension of size 1 (a view), like `torch.squeeze(x)`.
    // d squeeze(x)/dx: reshape the gradient back
    #[must_use]
    pub fn squeeze(&self) -> Var<E> {
        unary_op(self, "squeeze", |x| x.squeeze(), |x, _, g| g.reshape(&x.shape()))
    }

    /// Removes dimension `dim` if its size is 1 (a view), like `torch.squeeze(x, dim)`.
    // d squeeze(x, d)/dx: reshape the gradient back
    #[must_use]
    pub fn squeeze_dim(&self, dim: isize) -> Var<E> {
        unary_op(self, "squeeze_dim", |x| x.squeeze_dim(dim), |x, _, g| g.reshape(&x.shape()))
    }

    /// Inserts a dimension of size 1 at `dim` (a view); `dim` may be `ndim` (or -1 for the
    /// end), like `torch.unsqueeze`.
    // d unsqueeze(x)/dx: reshape the gradient back
    #[must_use]
    pub fn unsqueeze(&self, dim: isize) -> Var<E> {
        unary_op(self, "unsqueeze", |x| x.unsqueeze(dim), |x, _, g| g.reshape(&x.shape()))
    }

    /// Reverses the order of elements along `dims` (a view), like `torch.flip`.
    // d flip(x)/dx: flip the gradient back
    #[must_use]
    pub fn flip(&self, dims: &[isize]) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dims", signed(dims))]);
        let dims_v = dims.to_vec();
        unary_op(self, "flip", |x| x.flip(dims), move |_, _, g| g.flip(&dims_v))
    }

    /// Flattens dimensions `start..=end` into one, like `torch.flatten(x, start, end)`.
    // d flatten(x)/dx: reshape the gradient back
    #[must_use]
    pub fn flatten(&self, start: isize, end: isize) -> Var<E> {
        unary_op(self, "flatten", |x| x.flatten(start, end), |x, _, g| g.reshape(&x.shape()))
    }

    /// The same values laid out row-major (shares the storage when already contiguous).
    // d contiguous(x)/dx = 1
    #[must_use]
    pub fn contiguous(&self) -> Var<E> {
        unary_op(self, "contiguous", |x| x.contiguous(), |_, _, g| g.clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, tensor_strategy};
    use crate::var::Var;
    use kiln_tensor::Tensor;
    use proptest::prelude::*;

    type F = Box<dyn Fn(&Var<f64>) -> Var<f64>>;

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }

    fn r(n: usize, s: &[usize]) -> Tensor<f64> {
        Tensor::from_vec((0..n).map(|i| i as f64).collect(), s)
    }

    /// Shape ops, each given a dimension (and other choices) drawn from `bits`, for an input
    /// of `shape`.
    fn shape_ops(shape: &[usize], bits: u64) -> Vec<(String, F)> {
        let nd = shape.len();
        let d = (bits % nd as u64) as usize;
        let d2 = ((bits >> 8) % nd as u64) as usize;
        let n = shape[d];
        let start = ((bits >> 16) % n as u64) as usize;
        let len = 1 + ((bits >> 24) % (n - start) as u64) as usize;
        let step = 1 + ((bits >> 32) % 3) as usize;
        let (di, d2i) = (d as isize, d2 as isize - nd as isize); // a negative dim too
        let mut perm: Vec<isize> = (0..nd as isize).collect();
        perm.rotate_left(d);
        let mut big = vec![2usize];
        big.extend_from_slice(shape);
        let mut ops: Vec<(String, F)> = vec![
            ("reshape".to_string(), Box::new(move |v: &Var<f64>| v.reshape(&[v.numel()]))),
            (format!("expand {big:?}"), Box::new(move |v: &Var<f64>| v.expand(&big))),
            (format!("permute {perm:?}"), Box::new(move |v: &Var<f64>| v.permute(&perm))),
            (format!("transpose {di} {d2i}"), Box::new(move |v: &Var<f64>| v.transpose(di, d2i))),
            (format!("narrow {d} {start} {len}"), Box::new(move |v: &Var<f64>| v.narrow(di, start, len))),
            (
                format!("slice {d} {start}..{} step {step}", start + len),
                Box::new(move |v: &Var<f64>| v.slice(di, start, start + len, step)),
            ),
            (
                format!("slice {d} {start}.. step {step}"),
                Box::new(move |v: &Var<f64>| v.slice(di, start, usize::MAX, step)),
            ),
            (format!("select {d2i} {}", start.min(shape[d2] - 1)), {
                let i = start.min(shape[d2] - 1);
                Box::new(move |v: &Var<f64>| v.select(d2i, i))
            }),
            ("squeeze".to_string(), Box::new(|v: &Var<f64>| v.squeeze())),
            (format!("squeeze_dim {di}"), Box::new(move |v: &Var<f64>| v.squeeze_dim(di))),
            (format!("unsqueeze {di}"), Box::new(move |v: &Var<f64>| v.unsqueeze(di))),
            ("unsqueeze -1".to_string(), Box::new(|v: &Var<f64>| v.unsqueeze(-1))),
            (format!("flip [{di}, {d2i}]"), Box::new(move |v: &Var<f64>| v.flip(&[di, d2i]))),
            (format!("flatten {d2} .."), Box::new(move |v: &Var<f64>| v.flatten(d2 as isize, -1))),
            ("contiguous".to_string(), Box::new(|v: &Var<f64>| v.contiguous())),
        ];
        if nd <= 2 {
            ops.push(("t".to_string(), Box::new(|v: &Var<f64>| v.t())));
        }
        ops
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20))]
        #[test]
        fn gradcheck_shape_ops(x in tensor_strategy(), bits: u64, nc: bool) {
            let x = if nc { noncontiguous(&x) } else { x };
            for (name, f) in shape_ops(x.shape(), bits) {
                let r = check(|v| f(&v[0]), std::slice::from_ref(&x));
                prop_assert!(r.is_ok(), "{name} on {:?}: {}", x.shape(), r.unwrap_err());
                // a nonlinear function in front, so that second derivatives are not all zero
                let r = check2(|v| f(&v[0].mul(&v[0])), std::slice::from_ref(&x));
                prop_assert!(r.is_ok(), "{name} (second order) on {:?}: {}", x.shape(), r.unwrap_err());
            }
        }
    }

    #[test]
    fn slice_gradient_lands_on_the_sliced_positions() {
        let x = Var::param(r(10, &[2, 5]));
        let y = x.slice(1, 1, 5, 2); // columns 1 and 3
        assert_eq!(y.value().to_vec(), vec![1.0, 3.0, 6.0, 8.0]);
        y.backward_with(&t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    }

    #[test]
    fn select_and_narrow_values_and_grads() {
        let x = Var::param(r(6, &[3, 2]));
        let s = x.select(0, 1);
        assert_eq!(s.shape().as_slice(), &[2]);
        assert_eq!(s.value().to_vec(), vec![2.0, 3.0]);
        let n = x.narrow(-1, 1, 1);
        assert_eq!(n.value().to_vec(), vec![1.0, 3.0, 5.0]);
        s.sum_all().add(&n.sum_all().mul_scalar(10.0)).backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 10.0, 1.0, 11.0, 0.0, 10.0]);
    }

    #[test]
    fn permute_transpose_flip_values() {
        let x = Var::param(r(6, &[1, 2, 3]));
        let p = x.permute(&[2, 0, 1]);
        assert_eq!(p.shape().as_slice(), &[3, 1, 2]);
        assert_eq!(p.contiguous().value().to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(x.squeeze().t().value().to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(x.flip(&[-1]).value().to_vec(), vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        assert_eq!(x.flatten(0, 1).shape().as_slice(), &[2, 3]);
        assert_eq!(x.unsqueeze(1).shape().as_slice(), &[1, 1, 2, 3]);
        // the gradient of a permuted weighting comes back in x's layout
        let w = Var::constant(r(6, &[3, 1, 2]));
        p.mul(&w).sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    }

    #[test]
    #[should_panic(expected = "narrow: start 2 + length 2 exceeds dim 1 of shape [2, 3]")]
    fn narrow_out_of_range_panics() {
        let _ = Var::param(r(6, &[2, 3])).narrow(1, 2, 2);
    }

    #[test]
    #[should_panic(expected = "permute")]
    fn permute_bad_dims_panics() {
        let _ = Var::param(r(6, &[2, 3])).permute(&[0, 0]);
    }
}
