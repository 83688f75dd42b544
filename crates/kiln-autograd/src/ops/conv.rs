//! Convolutions: `conv1d`, `conv2d`, `conv_transpose2d`, with gradients for input, weight and
//! bias.
//!
//! A convolution `y = f(x, w)` is bilinear, so its two gradients are themselves bilinear and
//! each is the adjoint of `f` in one argument:
//!
//! - `input_grad(g, w)`, with `<u, input_grad(g, w)> = <f(u, w), g>`;
//! - `weight_grad(g, x)`, with `<u, weight_grad(g, x)> = <f(x, u), g>`.
//!
//! All three are recorded as `Var` ops backed by kiln-tensor's kernels, and each one's backward
//! is written with the other two, so gradients of gradients (double backward) flow through
//! every convolution:
//!
//! - `d f(x, w)`: `dx = input_grad(g, w)`, `dw = weight_grad(g, x)`;
//! - `d input_grad(g, w)` (cotangent `u`, shaped like `x`): `dg = f(u, w)`, `dw = weight_grad(g, u)`;
//! - `d weight_grad(g, x)` (cotangent `u`, shaped like `w`): `dg = f(x, u)`, `dx = input_grad(g, u)`.

use kiln_tensor::{Conv1dParams, Conv2dParams, ConvTranspose2dParams, Float, Shape, Tensor};
use smallvec::smallvec;

use super::OpFn;
use crate::trace::{int, ints};
use crate::var::{Grads, Inputs, Var};

/// Which convolution, with its hyper-parameters: the three kernels of each kind are chosen
/// here, so that the op and its two gradients are written once.
#[derive(Clone, Copy, Debug)]
enum Conv {
    D1(Conv1dParams),
    D2(Conv2dParams),
    T2(ConvTranspose2dParams),
}

impl Conv {
    fn names(self) -> [&'static str; 3] {
        match self {
            Conv::D1(_) => ["conv1d", "conv1d_backward_input", "conv1d_backward_weight"],
            Conv::D2(_) => ["conv2d", "conv2d_backward_input", "conv2d_backward_weight"],
            Conv::T2(_) => ["conv_transpose2d", "conv_transpose2d_backward_input", "conv_transpose2d_backward_weight"],
        }
    }

    fn forward<E: Float>(self, x: &Tensor<E>, w: &Tensor<E>, b: Option<&Tensor<E>>) -> Tensor<E> {
        match self {
            Conv::D1(p) => x.conv1d(w, b, &p),
            Conv::D2(p) => x.conv2d(w, b, &p),
            Conv::T2(p) => x.conv_transpose2d(w, b, &p),
        }
    }

    fn input_grad<E: Float>(self, g: &Tensor<E>, w: &Tensor<E>, x_shape: &[usize]) -> Tensor<E> {
        match self {
            Conv::D1(p) => g.conv1d_backward_input(w, x_shape, &p),
            Conv::D2(p) => g.conv2d_backward_input(w, x_shape, &p),
            Conv::T2(p) => g.conv_transpose2d_backward_input(w, x_shape, &p),
        }
    }

    fn weight_grad<E: Float>(self, g: &Tensor<E>, x: &Tensor<E>, w_shape: &[usize]) -> Tensor<E> {
        match self {
            Conv::D1(p) => g.conv1d_backward_weight(x, w_shape, &p),
            Conv::D2(p) => g.conv2d_backward_weight(x, w_shape, &p),
            Conv::T2(p) => g.conv_transpose2d_backward_weight(x, w_shape, &p),
        }
    }

    /// The axes of the output gradient a bias gradient sums over: all but the channel axis
    /// (which is 1 for a batched output, 0 for an unbatched one).
    fn bias_axes(self, out_ndim: usize) -> Vec<isize> {
        let batched = match self {
            Conv::D1(_) => out_ndim == 3,
            Conv::D2(_) | Conv::T2(_) => out_ndim == 4,
        };
        let channel = usize::from(batched);
        (0..out_ndim).filter(|&d| d != channel).map(|d| d as isize).collect()
    }
}

/// Records `f(x, w) + b`.
// d f(x, w)/dx = input_grad(g, w), d/dw = weight_grad(g, x), d/db = sum of g over all but channels
fn conv_op<E: Float>(kind: Conv, x: &Var<E>, w: &Var<E>, b: Option<&Var<E>>) -> Var<E> {
    let value = x.with_value(|xv| {
        w.with_value(|wv| match b {
            Some(b) => b.with_value(|bv| kind.forward(xv, wv, Some(bv))),
            None => kind.forward(xv, wv, None),
        })
    });
    let mut inputs: Inputs<E> = smallvec![x.clone(), w.clone()];
    if let Some(b) = b {
        inputs.push(b.clone());
    }
    let f = move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
        let (x, w) = (&i[0], &i[1]);
        let gx = x.requires_grad().then(|| conv_input_grad(kind, g, w, x.shape()));
        let gw = w.requires_grad().then(|| conv_weight_grad(kind, g, x, w.shape()));
        let mut out: Grads<E> = smallvec![gx, gw];
        if let Some(b) = i.get(2) {
            out.push(b.requires_grad().then(|| g.sum(&kind.bias_axes(g.ndim()), false)));
        }
        out
    };
    Var::from_op(value, inputs, OpFn { name: kind.names()[0], f })
}

/// Records `input_grad(g, w)`, of shape `x_shape`.
// d input_grad(g, w)/dg = f(u, w), d/dw = weight_grad(g, u) (u: the cotangent, shaped like x)
fn conv_input_grad<E: Float>(kind: Conv, g: &Var<E>, w: &Var<E>, x_shape: Shape) -> Var<E> {
    let value = g.with_value(|gv| w.with_value(|wv| kind.input_grad(gv, wv, &x_shape)));
    let f = move |u: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
        let (g, w) = (&i[0], &i[1]);
        let gg = g.requires_grad().then(|| conv_op(kind, u, w, None));
        let gw = w.requires_grad().then(|| conv_weight_grad(kind, g, u, w.shape()));
        smallvec![gg, gw]
    };
    Var::from_op(value, smallvec![g.clone(), w.clone()], OpFn { name: kind.names()[1], f })
}

/// Records `weight_grad(g, x)`, of shape `w_shape`.
// d weight_grad(g, x)/dg = f(x, u), d/dx = input_grad(g, u) (u: the cotangent, shaped like w)
fn conv_weight_grad<E: Float>(kind: Conv, g: &Var<E>, x: &Var<E>, w_shape: Shape) -> Var<E> {
    let value = g.with_value(|gv| x.with_value(|xv| kind.weight_grad(gv, xv, &w_shape)));
    let f = move |u: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
        let (g, x) = (&i[0], &i[1]);
        let gg = g.requires_grad().then(|| conv_op(kind, x, u, None));
        let gx = x.requires_grad().then(|| conv_input_grad(kind, g, u, x.shape()));
        smallvec![gg, gx]
    };
    Var::from_op(value, smallvec![g.clone(), x.clone()], OpFn { name: kind.names()[2], f })
}

impl<E: Float> Var<E> {
    /// 1-d convolution (cross-correlation) plus `bias`, as `torch.nn.functional.conv1d`.
    ///
    /// `self` is `[N, C, L]` (or unbatched `[C, L]`), `weight` is `[O, C / groups, k]`, `bias`
    /// is `[O]`; the result is `[N, O, out_l]` with
    /// `out_l = floor((L + 2 padding - dilation (k - 1) - 1) / stride) + 1`.
    ///
    /// **Panics** (from the kernel) with the shapes if the ranks or channel counts do not fit,
    /// `groups` does not divide the channels, or the padded input is shorter than the kernel.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::{Conv1dParams, Tensor};
    /// let x = Var::param(Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[1, 1, 4]));
    /// let w = Var::param(Tensor::from_vec(vec![1.0f64, -1.0], &[1, 1, 2]));
    /// let y = x.conv1d(&w, None, &Conv1dParams::default());
    /// assert_eq!(y.value().to_vec(), vec![-1.0, -1.0, -1.0]);
    /// y.sum_all().backward();
    /// assert_eq!(x.grad().unwrap().to_vec(), vec![1.0, 0.0, 0.0, -1.0]);
    /// assert_eq!(w.grad().unwrap().to_vec(), vec![6.0, 9.0]);
    /// ```
    #[must_use]
    pub fn conv1d(&self, weight: &Var<E>, bias: Option<&Var<E>>, p: &Conv1dParams) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("stride", ints(&[p.stride])),
                ("padding", ints(&[p.padding])),
                ("dilation", ints(&[p.dilation])),
                ("groups", int(p.groups as i64)),
            ]
        });
        conv_op(Conv::D1(*p), self, weight, bias)
    }

    /// 2-d convolution (cross-correlation) plus `bias`, as `torch.nn.functional.conv2d`.
    ///
    /// `self` is `[N, C, H, W]` (or unbatched `[C, H, W]`), `weight` is
    /// `[O, C / groups, kh, kw]`, `bias` is `[O]`; the result is `[N, O, out_h, out_w]` with
    /// `out = floor((in + 2 padding - dilation (k - 1) - 1) / stride) + 1` on each axis.
    ///
    /// The input and weight gradients are themselves differentiable ops (see the module
    /// documentation), so double backward works.
    ///
    /// **Panics** (from the kernel) with the shapes if the ranks or channel counts do not fit,
    /// `groups` does not divide the channels, or the padded input is smaller than the kernel.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::{Conv2dParams, Tensor};
    /// let x = Var::param(Tensor::<f64>::ones(&[2, 3, 5, 5]));
    /// let w = Var::param(Tensor::<f64>::ones(&[4, 3, 3, 3]));
    /// let b = Var::param(Tensor::<f64>::zeros(&[4]));
    /// let p = Conv2dParams { stride: [2, 2], padding: [1, 1], ..Default::default() };
    /// let y = x.conv2d(&w, Some(&b), &p);
    /// assert_eq!(y.shape().as_slice(), &[2, 4, 3, 3]);
    /// y.sum_all().backward();
    /// assert_eq!(b.grad().unwrap().to_vec(), vec![18.0; 4]); // N * out_h * out_w
    /// ```
    #[must_use]
    pub fn conv2d(&self, weight: &Var<E>, bias: Option<&Var<E>>, p: &Conv2dParams) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("stride", ints(&p.stride)),
                ("padding", ints(&p.padding)),
                ("dilation", ints(&p.dilation)),
                ("groups", int(p.groups as i64)),
            ]
        });
        conv_op(Conv::D2(*p), self, weight, bias)
    }

    /// 2-d transposed convolution plus `bias`, as `torch.nn.functional.conv_transpose2d`.
    ///
    /// `self` is `[N, C, H, W]` (or unbatched `[C, H, W]`), `weight` is
    /// `[C, O / groups, kh, kw]`, `bias` is `[O]`; the result is `[N, O, out_h, out_w]` with
    /// `out = (in - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1`.
    ///
    /// **Panics** (from the kernel) with the shapes if the ranks or channel counts do not fit,
    /// `groups` does not divide the channels, or an `output_padding` is too large.
    ///
    /// ```
    /// use kiln_autograd::Var;
    /// use kiln_tensor::{ConvTranspose2dParams, Tensor};
    /// let x = Var::param(Tensor::<f64>::ones(&[1, 2, 3, 3]));
    /// let w = Var::param(Tensor::<f64>::ones(&[2, 5, 3, 3]));
    /// let p = ConvTranspose2dParams { stride: [2, 2], padding: [1, 1], output_padding: [1, 1], ..Default::default() };
    /// let y = x.conv_transpose2d(&w, None, &p);
    /// assert_eq!(y.shape().as_slice(), &[1, 5, 6, 6]);
    /// ```
    #[must_use]
    pub fn conv_transpose2d(&self, weight: &Var<E>, bias: Option<&Var<E>>, p: &ConvTranspose2dParams) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![
                ("stride", ints(&p.stride)),
                ("padding", ints(&p.padding)),
                ("output_padding", ints(&p.output_padding)),
                ("dilation", ints(&p.dilation)),
                ("groups", int(p.groups as i64)),
            ]
        });
        conv_op(Conv::T2(*p), self, weight, bias)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous};
    use crate::var::Var;
    use kiln_tensor::{Conv1dParams, Conv2dParams, ConvTranspose2dParams, Rng, Tensor};
    use proptest::prelude::*;

    fn uniform(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, rng)
    }

    /// One random small convolution problem: input, weight and bias.
    #[derive(Debug, Clone)]
    struct Case {
        x: Tensor<f64>,
        w: Tensor<f64>,
        b: Tensor<f64>,
    }

    /// A case with channels as multiples of `groups` (at most 4); a transposed convolution's
    /// weight is `[C, O / groups, k..]`.
    fn case(
        seed: u64,
        n: usize,
        groups: usize,
        cpg_in: usize,
        cpg_out: usize,
        spatial: &[usize],
        kernel: &[usize],
        wshape_transposed: bool,
        unbatched: bool,
    ) -> Case {
        let mut rng = Rng::new(seed);
        let (ci, co) = (groups * cpg_in, groups * cpg_out);
        let mut xs = if unbatched { vec![ci] } else { vec![n, ci] };
        xs.extend_from_slice(spatial);
        let mut ws = if wshape_transposed { vec![ci, cpg_out] } else { vec![co, cpg_in] };
        ws.extend_from_slice(kernel);
        Case { x: uniform(&xs, &mut rng), w: uniform(&ws, &mut rng), b: uniform(&[co], &mut rng) }
    }

    fn run(
        case: &Case,
        nc: bool,
        f: impl Fn(&Var<f64>, &Var<f64>, Option<&Var<f64>>) -> Var<f64> + Copy,
        second: bool,
    ) -> Result<(), TestCaseError> {
        let x = if nc { noncontiguous(&case.x) } else { case.x.clone() };
        let inputs = [x, case.w.clone(), case.b.clone()];
        let r = check(|v| f(&v[0], &v[1], Some(&v[2])), &inputs);
        prop_assert!(r.is_ok(), "{case:?}: {}", r.unwrap_err());
        let r = check(|v| f(&v[0], &v[1], None), &inputs[..2]);
        prop_assert!(r.is_ok(), "{case:?} (no bias): {}", r.unwrap_err());
        if second {
            // second order: the bilinear cross terms, and through a nonlinearity after the conv
            let r = check2(|v| f(&v[0], &v[1], Some(&v[2])), &inputs);
            prop_assert!(r.is_ok(), "{case:?} (second order): {}", r.unwrap_err());
            let r = check2(|v| f(&v[0], &v[1], None).square(), &inputs[..2]);
            prop_assert!(r.is_ok(), "{case:?} (second order, squared): {}", r.unwrap_err());
        }
        Ok(())
    }

    /// `(stride, padding, dilation, kernel)` for one axis of length `len`, with the dilated
    /// kernel fitting the padded input.
    fn axis(len: usize, bits: u64) -> (usize, usize, usize, usize) {
        let stride = 1 + (bits & 1) as usize;
        let dil = 1 + (bits >> 1 & 1) as usize;
        let pad = (bits >> 2 & 1) as usize;
        let max_k = ((len + 2 * pad - 1) / dil + 1).min(3);
        let k = 1 + (bits >> 4) as usize % max_k;
        (stride, pad, dil, k)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gradcheck_conv2d(seed: u64, n in 1usize..=2, groups in 1usize..=2, cpi in 1usize..=2, cpo in 1usize..=2,
                            h in 1usize..=5, w in 1usize..=5, bh: u64, bw: u64, nc: bool, unbatched: bool) {
            let (sh, ph, dh, kh) = axis(h, bh);
            let (sw, pw, dw, kw) = axis(w, bw);
            let c = case(seed, n, groups, cpi, cpo, &[h, w], &[kh, kw], false, unbatched);
            let p = Conv2dParams { stride: [sh, sw], padding: [ph, pw], dilation: [dh, dw], groups };
            run(&c, nc, move |x, w, b| x.conv2d(w, b, &p), true)?;
        }

        #[test]
        fn gradcheck_conv1d(seed: u64, n in 1usize..=2, groups in 1usize..=2, cpi in 1usize..=2, cpo in 1usize..=2,
                            l in 1usize..=6, bits: u64, nc: bool, unbatched: bool) {
            let (s, pd, d, k) = axis(l, bits);
            let c = case(seed, n, groups, cpi, cpo, &[l], &[k], false, unbatched);
            let p = Conv1dParams { stride: s, padding: pd, dilation: d, groups };
            run(&c, nc, move |x, w, b| x.conv1d(w, b, &p), true)?;
        }

        #[test]
        fn gradcheck_conv_transpose2d(seed: u64, n in 1usize..=2, groups in 1usize..=2, cpi in 1usize..=2, cpo in 1usize..=2,
                                      h in 1usize..=4, w in 1usize..=4, bh: u64, bw: u64, op: bool, nc: bool, unbatched: bool) {
            let (sh, _, dh, kh) = axis(h, bh);
            let (sw, _, dw, kw) = axis(w, bw);
            // padding must leave a non-empty output: at most dilation (k - 1) / 2
            let (ph, pw) = ((bh >> 8 & 1) as usize * (dh * (kh - 1) / 2), (bw >> 8 & 1) as usize * (dw * (kw - 1) / 2));
            // output_padding must be smaller than the stride or the dilation
            let oph = usize::from(op && (sh > 1 || dh > 1));
            let opw = usize::from(op && (sw > 1 || dw > 1));
            let c = case(seed, n, groups, cpi, cpo, &[h, w], &[kh, kw], true, unbatched);
            let p = ConvTranspose2dParams { stride: [sh, sw], padding: [ph, pw], output_padding: [oph, opw], dilation: [dh, dw], groups };
            run(&c, nc, move |x, w, b| x.conv_transpose2d(w, b, &p), true)?;
        }
    }

    #[test]
    fn conv2d_matches_the_tensor_kernel_and_its_gradients() {
        let mut rng = Rng::new(7);
        let (x, w, b) = (uniform(&[2, 4, 6, 5], &mut rng), uniform(&[6, 2, 3, 2], &mut rng), uniform(&[6], &mut rng));
        let p = Conv2dParams { stride: [2, 1], padding: [1, 1], dilation: [1, 2], groups: 2 };
        let (xv, wv, bv) = (Var::param(x.clone()), Var::param(w.clone()), Var::param(b.clone()));
        let y = xv.conv2d(&wv, Some(&bv), &p);
        assert_eq!(y.value().to_vec(), x.conv2d(&w, Some(&b), &p).to_vec());
        let g = uniform(y.shape().as_slice(), &mut rng);
        y.backward_with(&g);
        assert_eq!(xv.grad().unwrap().to_vec(), g.conv2d_backward_input(&w, x.shape(), &p).to_vec());
        assert_eq!(wv.grad().unwrap().to_vec(), g.conv2d_backward_weight(&x, w.shape(), &p).to_vec());
        // the bias gradient is a Var sum, which adds in another order than the kernel
        let (got, want) = (bv.grad().unwrap().to_vec(), g.conv2d_backward_bias().to_vec());
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12), "{got:?} vs {want:?}");
    }

    #[test]
    fn double_backward_of_conv2d_reaches_the_weight() {
        // d/dw of |d y/dx|^2 is nonzero: the input gradient's own backward must reach w.
        let mut rng = Rng::new(8);
        let x = Var::param(uniform(&[1, 2, 4, 4], &mut rng));
        let w = Var::param(uniform(&[3, 2, 2, 2], &mut rng));
        let y = x.conv2d(&w, None, &Conv2dParams::default());
        let gx = crate::grad(&[y.square().sum_all()], std::slice::from_ref(&x), None, true)[0].clone().unwrap();
        let gw = crate::grad(&[gx.square().sum_all()], std::slice::from_ref(&w), None, false)[0].clone();
        assert!(gw.is_some_and(|g| g.value().abs().sum_all().item() > 0.0));
    }
}
