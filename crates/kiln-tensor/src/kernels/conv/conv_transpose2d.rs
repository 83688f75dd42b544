//! 2-d transposed convolution (PyTorch's `conv_transpose2d`): the input gradient of the
//! convolution it transposes, run forward; its gradients are that convolution's forward and
//! weight gradient.

use super::geometry::{check_bias, check_len, check_out_shape, transpose_geom};
use super::im2col::{add_bias, backward_input_impl, backward_weight_impl, forward_impl};
use super::ConvTranspose2dParams;
use crate::element::Float;

/// `conv_transpose2d`: the gradient of a `conv2d` with respect to its input, applied to `input`,
/// plus `bias` — PyTorch's `ConvTranspose2d` ("fractionally strided convolution").
///
/// `input` is `[N, C, H, W]`, `weight` is `[C, O / groups, kh, kw]`, `bias` has `O` elements.
/// Returns the output and its shape `[N, O, out_h, out_w]` where
/// `out = (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`.
///
/// **Panics** if the channel counts do not match (`conv_transpose2d: input [1, 3, 4, 4] has 3
/// channels but weight [4, 2, 3, 3] expects 4`), `groups` does not divide the input channels, an
/// `output_padding` is not smaller than its stride or dilation, the output would be empty, a
/// slice's length differs from its shape, or a stride, dilation or `groups` is 0.
#[must_use]
pub fn conv_transpose2d_forward<E: Float>(
    input: &[E],
    in_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    bias: Option<&[E]>,
    p: &ConvTranspose2dParams,
) -> (Vec<E>, [usize; 4]) {
    let op = "conv_transpose2d";
    let (g, out_shape) = transpose_geom(op, in_shape, w_shape, p);
    check_len(op, "input", input, &in_shape);
    check_len(op, "weight", weight, &w_shape);
    if let Some(b) = bias {
        check_bias(op, b, out_shape[1], &w_shape);
    }
    // The transposed convolution's input plays the convolution's output gradient.
    let mut out = backward_input_impl(input, weight, in_shape[0], &g);
    if let Some(b) = bias {
        add_bias(&mut out, b, g.in_plane());
    }
    (out, out_shape)
}

/// Gradient of [`conv_transpose2d_forward`] with respect to its input: the ordinary `conv2d` of
/// `grad_out` with the same weight (read as `[C, O / groups, kh, kw]` = a conv2d weight from O
/// to C channels).
///
/// Returns a buffer of `in_shape`.
///
/// **Panics** if the shapes do not fit together (as in [`conv_transpose2d_forward`]),
/// `out_shape` is not the output shape of `in_shape` under `w_shape` and `p`, or a slice's length
/// differs from its shape.
#[must_use]
pub fn conv_transpose2d_backward_input<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    weight: &[E],
    w_shape: [usize; 4],
    in_shape: [usize; 4],
    p: &ConvTranspose2dParams,
) -> Vec<E> {
    let op = "conv_transpose2d_backward_input";
    let (g, expect) = transpose_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "weight", weight, &w_shape);
    forward_impl(grad_out, weight, None, in_shape[0], &g)
}

/// Gradient of [`conv_transpose2d_forward`] with respect to its weight: the `conv2d` weight
/// gradient with the roles of input and output gradient exchanged.
///
/// Returns a buffer of `w_shape`. The bias gradient is [`conv2d_backward_bias`](super::conv2d_backward_bias) of `grad_out`.
///
/// **Panics** if the shapes do not fit together (as in [`conv_transpose2d_forward`]),
/// `out_shape` is not the output shape of `in_shape` under `w_shape` and `p`, or a slice's length
/// differs from its shape.
#[must_use]
pub fn conv_transpose2d_backward_weight<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 4],
    input: &[E],
    in_shape: [usize; 4],
    w_shape: [usize; 4],
    p: &ConvTranspose2dParams,
) -> Vec<E> {
    let op = "conv_transpose2d_backward_weight";
    let (g, expect) = transpose_geom(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "input", input, &in_shape);
    backward_weight_impl(input, grad_out, in_shape[0], &g)
}

#[cfg(test)]
mod tests {
    use crate::kernels::conv::reference::*;
    use crate::kernels::conv::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn conv_transpose2d_is_the_adjoint_of_conv2d(c in case(), op in [0usize..3, 0usize..3], with_bias: bool) {
            // A transposed convolution maps the conv's output shape back to its input shape;
            // `output_padding` (kept below stride or dilation) picks a larger one.
            let tp = ConvTranspose2dParams {
                stride: c.p.stride,
                padding: c.p.padding,
                output_padding: [0, 1].map(|a| op[a] % c.p.stride[a].max(c.p.dilation[a])),
                dilation: c.p.dilation,
                groups: c.p.groups,
            };
            let ys = conv2d_out_shape(c.x, c.w, &c.p);
            // The conv drops the (x + 2p - span) % stride rows its last window cannot reach.
            let want_hw = [0, 1].map(|a| {
                let span = c.p.dilation[a] * (c.w[2 + a] - 1) + 1;
                let rem = (c.x[2 + a] + 2 * c.p.padding[a] - span) % c.p.stride[a];
                (c.x[2 + a] + tp.output_padding[a]) as isize - rem as isize
            });
            prop_assume!(want_hw[0] > 0 && want_hw[1] > 0);
            // Input of the transposed conv: [n, conv out channels, oh, ow]; weight as is.
            let t_in = ys;
            let t_out = conv_transpose2d_out_shape(t_in, c.w, &tp);
            prop_assert_eq!(t_out, [c.x[0], c.x[1], want_hw[0] as usize, want_hw[1] as usize]);
            let mut rng = crate::Rng::new(c.seed);
            let t = rand_vec(&mut rng, t_in.iter().product());
            let w = rand_vec(&mut rng, c.w.iter().product());
            let b = rand_vec(&mut rng, t_out[1]);
            let (z, zs) = conv_transpose2d_forward(&t, t_in, &w, c.w, with_bias.then_some(&b[..]), &tp);
            prop_assert_eq!(zs, t_out);
            let mut want = ref_conv_bwd_input(&t, t_out, &w, c.w, t_in, &c.p);
            if with_bias {
                let plane = t_out[2] * t_out[3];
                for (i, v) in want.iter_mut().enumerate() {
                    *v += b[(i / plane) % t_out[1]];
                }
            }
            assert_close(&z, &want, 1e-12, "conv_transpose2d");

            let gz = rand_vec(&mut rng, t_out.iter().product());
            let gt = conv_transpose2d_backward_input(&gz, t_out, &w, c.w, t_in, &tp);
            assert_close(&gt, &ref_conv(&gz, t_out, &w, c.w, t_in, &c.p), 1e-12, "conv_transpose2d grad input");
            let gw = conv_transpose2d_backward_weight(&gz, t_out, &t, t_in, c.w, &tp);
            assert_close(&gw, &ref_conv_bwd_weight(&t, &gz, t_out, c.w, t_in, &c.p), 1e-12, "conv_transpose2d grad weight");
        }
    }

    #[test]
    #[should_panic(
        expected = "conv_transpose2d: output_padding [2, 0] must be smaller than either stride [2, 2] or dilation [1, 1]"
    )]
    fn transpose_output_padding_is_bounded() {
        let tp = ConvTranspose2dParams { stride: [2, 2], output_padding: [2, 0], ..Default::default() };
        let _ = conv_transpose2d_forward(&[0.0f64; 4], [1, 1, 2, 2], &[0.0; 9], [1, 1, 3, 3], None, &tp);
    }
}
