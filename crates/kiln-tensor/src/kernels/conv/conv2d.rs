//! 2-d convolution (PyTorch's `conv2d`) and its gradients, through the GEMM lowering.

use super::geometry::{check_bias, check_len, check_out_shape, conv_geom};
use super::im2col::{backward_input_impl, backward_weight_impl, channel_sums, forward_impl};
use super::Conv2dParams;
use crate::element::Float;

/// `conv2d`: `out[n, o] = bias[o] + sum over the group's input channels c of
/// cross-correlate(input[n, c], weight[o, c])`, with zero padding, stride and dilation.
///
/// `input` is `[N, C, H, W]`, `weight` is `[O, C / groups, kh, kw]`, `bias` has `O` elements.
/// Returns the output and its shape `[N, O, out_h, out_w]` (see
/// [`conv2d_out_size`](super::conv2d_out_size)).
///
/// **Panics** if the channel counts do not match (`conv2d: input [2, 3, 8, 8] has 3 channels
/// but weight [4, 2, 3, 3] expects 2 x groups 1`), `groups` does not divide the output channels,
/// the input is smaller than the kernel, a slice's length differs from its shape, or a
/// stride, dilation or `groups` is 0.
///
/// ```
/// use kiln_tensor::kernels::conv::{conv2d_forward, Conv2dParams};
/// // one 3x3 image, one 2x2 kernel of ones: every output is a 2x2 window sum
/// let x: Vec<f64> = (0..9).map(f64::from).collect();
/// let (y, shape) = conv2d_forward(&x, [1, 1, 3, 3], &[1.0; 4], [1, 1, 2, 2], None, &Conv2dParams::default());
/// assert_eq!(shape, [1, 1, 2, 2]);
/// assert_eq!(y, vec![8.0, 12.0, 20.0, 24.0]);
/// ```
#[must_use]
pub fn conv2d_forward<E: Float>(
    input: &[E],
    in_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    bias: Option<&[E]>,
    p: &Conv2dParams,
) -> (Vec<E>, [usize; 4]) {
    let op = "conv2d";
    let (g, out_shape) = conv_geom(op, in_shape, w_shape, p);
    check_len(op, "input", input, &in_shape);
    check_len(op, "weight", weight, &w_shape);
    if let Some(b) = bias {
        check_bias(op, b, w_shape[0], &w_shape);
    }
    (forward_impl(input, weight, bias, in_shape[0], &g), out_shape)
}

/// Gradient of [`conv2d_forward`] with respect to its input: the transposed convolution of
/// `grad_out` (col2im of `weight^T · grad_out`).
///
/// `grad_out` has the forward output's shape `out_shape`; returns a buffer of `in_shape`.
///
/// **Panics** if the shapes do not fit together (as in [`conv2d_forward`]), `out_shape` is not
/// the output shape of `in_shape` under `w_shape` and `p`, or a slice's length differs from its
/// shape.
#[must_use]
pub fn conv2d_backward_input<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    in_shape: [usize; 4],
    p: &Conv2dParams,
) -> Vec<E> {
    let op = "conv2d_backward_input";
    let (g, expect) = conv_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "weight", weight, &w_shape);
    backward_input_impl(grad_out, weight, in_shape[0], &g)
}

/// Gradient of [`conv2d_forward`] with respect to its weight: for each group,
/// `grad_out · im2col(input)^T` summed over the batch.
///
/// Returns a buffer of `w_shape`.
///
/// **Panics** if the shapes do not fit together (as in [`conv2d_forward`]), `out_shape` is not
/// the output shape of `in_shape` under `w_shape` and `p`, or a slice's length differs from its
/// shape.
#[must_use]
pub fn conv2d_backward_weight<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    input: &[E],
    in_shape: [usize; 4],
    w_shape: [usize; 4],
    p: &Conv2dParams,
) -> Vec<E> {
    let op = "conv2d_backward_weight";
    let (g, expect) = conv_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "input", input, &in_shape);
    backward_weight_impl(grad_out, input, in_shape[0], &g)
}

/// Gradient of [`conv2d_forward`] (or [`conv_transpose2d_forward`](super::conv_transpose2d_forward))
/// with respect to its bias: `grad_out` summed over the batch and both spatial axes, one value
/// per output channel.
///
/// **Panics** if `grad_out` does not hold `out_shape`'s element count.
#[must_use]
pub fn conv2d_backward_bias<E: Float>(grad_out: &[E], out_shape: [usize; 4]) -> Vec<E> {
    check_len("conv2d_backward_bias", "grad_out", grad_out, &out_shape);
    channel_sums(grad_out, out_shape[0], out_shape[1], out_shape[2] * out_shape[3])
}

#[cfg(test)]
mod tests {
    use crate::kernels::conv::reference::*;
    use crate::kernels::conv::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn conv2d_matches_direct_loops(c in case(), with_bias: bool) {
            let mut rng = crate::Rng::new(c.seed);
            let x = rand_vec(&mut rng, c.x.iter().product());
            let w = rand_vec(&mut rng, c.w.iter().product());
            let b = rand_vec(&mut rng, c.w[0]);
            let (y, ys) = conv2d_forward(&x, c.x, &w, c.w, with_bias.then_some(&b[..]), &c.p);
            let [oh, ow] = conv2d_out_size([c.x[2], c.x[3]], [c.w[2], c.w[3]], &c.p);
            prop_assert_eq!(ys, [c.x[0], c.w[0], oh, ow]);
            let mut want = ref_conv(&x, c.x, &w, c.w, ys, &c.p);
            if with_bias {
                for (i, v) in want.iter_mut().enumerate() {
                    *v += b[(i / (oh * ow)) % c.w[0]];
                }
            }
            assert_close(&y, &want, 1e-12, "conv2d");
        }

        #[test]
        fn conv2d_backward_matches_direct_adjoint(c in case()) {
            let mut rng = crate::Rng::new(c.seed);
            let x = rand_vec(&mut rng, c.x.iter().product());
            let w = rand_vec(&mut rng, c.w.iter().product());
            let ys = conv2d_out_shape(c.x, c.w, &c.p);
            let gy = rand_vec(&mut rng, ys.iter().product());

            let gx = conv2d_backward_input(&gy, ys, &w, c.w, c.x, &c.p);
            assert_close(&gx, &ref_conv_bwd_input(&gy, c.x, &w, c.w, ys, &c.p), 1e-12, "grad input");
            // <gy, conv(x)> = <conv_backward_input(gy), x>
            let (y, _) = conv2d_forward(&x, c.x, &w, c.w, None, &c.p);
            prop_assert!((dot(&gy, &y) - dot(&gx, &x)).abs() < 1e-10);

            let gw = conv2d_backward_weight(&gy, ys, &x, c.x, c.w, &c.p);
            assert_close(&gw, &ref_conv_bwd_weight(&gy, &x, c.x, c.w, ys, &c.p), 1e-12, "grad weight");

            let gb = conv2d_backward_bias(&gy, ys);
            let plane = ys[2] * ys[3];
            for (o, g) in gb.iter().enumerate() {
                let want: f64 = (0..ys[0]).map(|b| gy[(b * ys[1] + o) * plane..][..plane].iter().sum::<f64>()).sum();
                prop_assert!((g - want).abs() < 1e-12);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn conv2d_weight_gradient_matches_finite_differences(c in case()) {
            let mut rng = crate::Rng::new(c.seed);
            let x = rand_vec(&mut rng, c.x.iter().product());
            let mut w = rand_vec(&mut rng, c.w.iter().product());
            let ys = conv2d_out_shape(c.x, c.w, &c.p);
            let gy = rand_vec(&mut rng, ys.iter().product());
            let gw = conv2d_backward_weight(&gy, ys, &x, c.x, c.w, &c.p);
            let loss = |w: &[f64]| dot(&gy, &conv2d_forward(&x, c.x, w, c.w, None, &c.p).0);
            let h = 1e-6;
            for i in 0..w.len() {
                let w0 = w[i];
                w[i] = w0 + h;
                let up = loss(&w);
                w[i] = w0 - h;
                let down = loss(&w);
                w[i] = w0;
                let fd = (up - down) / (2.0 * h);
                prop_assert!((fd - gw[i]).abs() < 1e-6 * (1.0 + fd.abs()), "w[{}]: fd {} analytic {}", i, fd, gw[i]);
            }
        }
    }

    #[test]
    fn f32_conv_matches_f64() {
        let (xs, ws) = ([2, 4, 7, 6], [6, 2, 3, 2]);
        let p = Conv2dParams { stride: [2, 1], padding: [1, 2], dilation: [1, 2], groups: 2 };
        let mut rng = crate::Rng::new(5);
        let x = rand_vec(&mut rng, xs.iter().product());
        let w = rand_vec(&mut rng, ws.iter().product());
        let b = rand_vec(&mut rng, ws[0]);
        let (y64, ys) = conv2d_forward(&x, xs, &w, ws, Some(&b), &p);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (y32, ys32) = conv2d_forward(&f(&x), xs, &f(&w), ws, Some(&f(&b)), &p);
        assert_eq!(ys, ys32);
        for (a, b) in y32.iter().zip(&y64) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
        let gy = rand_vec(&mut rng, ys.iter().product());
        let gx64 = conv2d_backward_input(&gy, ys, &w, ws, xs, &p);
        let gx32 = conv2d_backward_input(&f(&gy), ys, &f(&w), ws, xs, &p);
        let gw64 = conv2d_backward_weight(&gy, ys, &x, xs, ws, &p);
        let gw32 = conv2d_backward_weight(&f(&gy), ys, &f(&x), xs, ws, &p);
        for (a, b) in gx32.iter().zip(&gx64).chain(gw32.iter().zip(&gw64)) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    #[should_panic(expected = "conv2d: input [2, 3, 8, 8] has 3 channels but weight [4, 2, 3, 3] expects 2 x groups 1")]
    fn channel_mismatch_names_both_shapes() {
        let _ = conv2d_forward(&[0.0f64; 384], [2, 3, 8, 8], &[0.0; 72], [4, 2, 3, 3], None, &Conv2dParams::default());
    }

    #[test]
    #[should_panic(
        expected = "conv2d: input [1, 1, 2, 2] padded by [0, 0] is smaller than kernel [3, 3] dilated by [1, 1]"
    )]
    fn too_small_input_panics() {
        let _ = conv2d_forward(&[0.0f64; 4], [1, 1, 2, 2], &[0.0; 9], [1, 1, 3, 3], None, &Conv2dParams::default());
    }

    #[test]
    #[should_panic(expected = "conv2d: weight [3, 2, 1, 1] has 3 output channels, not divisible by groups 2")]
    fn groups_must_divide_output_channels() {
        let p = Conv2dParams { groups: 2, ..Default::default() };
        let _ = conv2d_forward(&[0.0f64; 4], [1, 4, 1, 1], &[0.0; 6], [3, 2, 1, 1], None, &p);
    }

    #[test]
    #[should_panic(expected = "conv2d_backward_input: grad_out [1, 1, 3, 3] is not the output shape [1, 1, 2, 2]")]
    fn backward_checks_the_output_shape() {
        let _ = conv2d_backward_input(
            &[0.0f64; 9],
            [1, 1, 3, 3],
            &[0.0; 4],
            [1, 1, 2, 2],
            [1, 1, 3, 3],
            &Conv2dParams::default(),
        );
    }
}
