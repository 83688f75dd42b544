//! 1-d convolution (PyTorch's `conv1d`): a 2-d convolution over a height-1 input, with checks
//! and messages that name the 1-d shapes.

use super::conv2d::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward};
use super::geometry::{check_bias, check_len, check_out_shape};
use super::im2col::channel_sums;
use super::{conv_out_len, Conv1dParams};
use crate::element::Float;

/// `conv1d`: [`conv2d_forward`] over a height-1 input.
///
/// `input` is `[N, C, L]`, `weight` is `[O, C / groups, k]`; returns the output and its shape
/// `[N, O, out_l]`.
///
/// **Panics** as [`conv2d_forward`] does, naming `conv1d` and the 3-d shapes.
#[must_use]
pub fn conv1d_forward<E: Float>(
    input: &[E],
    in_shape: [usize; 3],
    weight: &[E],
    w_shape: [usize; 3],
    bias: Option<&[E]>,
    p: &Conv1dParams,
) -> (Vec<E>, [usize; 3]) {
    let op = "conv1d";
    let out_shape = conv1d_shape_check(op, in_shape, w_shape, p);
    check_len(op, "input", input, &in_shape);
    check_len(op, "weight", weight, &w_shape);
    if let Some(b) = bias {
        check_bias(op, b, w_shape[0], &w_shape);
    }
    let (out, _) = conv2d_forward(input, lift(in_shape), weight, lift(w_shape), bias, &p.to_2d());
    (out, out_shape)
}

/// Gradient of [`conv1d_forward`] with respect to its input; returns a buffer of `in_shape`.
///
/// **Panics** as [`conv2d_backward_input`] does.
#[must_use]
pub fn conv1d_backward_input<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 3],
    weight: &[E],
    w_shape: [usize; 3],
    in_shape: [usize; 3],
    p: &Conv1dParams,
) -> Vec<E> {
    let op = "conv1d_backward_input";
    let expect = conv1d_shape_check(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "weight", weight, &w_shape);
    conv2d_backward_input(grad_out, lift(out_shape), weight, lift(w_shape), lift(in_shape), &p.to_2d())
}

/// Gradient of [`conv1d_forward`] with respect to its weight; returns a buffer of `w_shape`.
///
/// **Panics** as [`conv2d_backward_weight`] does.
#[must_use]
pub fn conv1d_backward_weight<E: Float>(
    grad_out: &[E],
    out_shape: [usize; 3],
    input: &[E],
    in_shape: [usize; 3],
    w_shape: [usize; 3],
    p: &Conv1dParams,
) -> Vec<E> {
    let op = "conv1d_backward_weight";
    let expect = conv1d_shape_check(op, in_shape, w_shape, p);
    check_out_shape(op, out_shape, expect, in_shape, w_shape);
    check_len(op, "grad_out", grad_out, &out_shape);
    check_len(op, "input", input, &in_shape);
    conv2d_backward_weight(grad_out, lift(out_shape), input, lift(in_shape), lift(w_shape), &p.to_2d())
}

/// Gradient of [`conv1d_forward`] with respect to its bias: `grad_out` summed over the batch
/// and the length axis.
///
/// **Panics** if `grad_out` does not hold `out_shape`'s element count.
#[must_use]
pub fn conv1d_backward_bias<E: Float>(grad_out: &[E], out_shape: [usize; 3]) -> Vec<E> {
    check_len("conv1d_backward_bias", "grad_out", grad_out, &out_shape);
    channel_sums(grad_out, out_shape[0], out_shape[1], out_shape[2])
}

fn lift(s: [usize; 3]) -> [usize; 4] {
    [s[0], s[1], 1, s[2]]
}

/// Checks a 1-d convolution's shapes with messages naming the 1-d op and shapes; returns the
/// output shape.
fn conv1d_shape_check(op: &str, x: [usize; 3], w: [usize; 3], p: &Conv1dParams) -> [usize; 3] {
    assert!(p.groups > 0, "{op}: groups must be > 0, got 0");
    assert!(p.stride > 0, "{op}: stride must be > 0, got 0");
    assert!(p.dilation > 0, "{op}: dilation must be > 0, got 0");
    assert!(w[2] > 0, "{op}: weight {w:?} has an empty kernel");
    assert!(
        x[1] == w[1] * p.groups,
        "{op}: input {x:?} has {} channels but weight {w:?} expects {} x groups {}",
        x[1],
        w[1],
        p.groups
    );
    assert!(
        w[0].is_multiple_of(p.groups),
        "{op}: weight {w:?} has {} output channels, not divisible by groups {}",
        w[0],
        p.groups
    );
    let l = conv_out_len(x[2], w[2], p.stride, p.padding, p.dilation).unwrap_or_else(|| {
        panic!("{op}: input {x:?} padded by {} is smaller than kernel {} dilated by {}", p.padding, w[2], p.dilation)
    });
    [x[0], w[0], l]
}

#[cfg(test)]
mod tests {
    use crate::kernels::conv::reference::*;
    use crate::kernels::conv::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn conv1d_matches_direct_loops(n in 1usize..3, groups in 1usize..3, cg in 1usize..3, ocg in 1usize..3,
                                       k in 1usize..4, s in 1usize..3, pad in 0usize..3, d in 1usize..3,
                                       extra in 0usize..6, seed in 0u64..1000) {
            let l = (d * (k - 1) + 1).saturating_sub(2 * pad).max(1) + extra;
            let (xs, ws) = ([n, groups * cg, l], [groups * ocg, cg, k]);
            let p = Conv1dParams { stride: s, padding: pad, dilation: d, groups };
            let mut rng = crate::Rng::new(seed);
            let x = rand_vec(&mut rng, xs.iter().product());
            let w = rand_vec(&mut rng, ws.iter().product());
            let b = rand_vec(&mut rng, ws[0]);
            let (y, ys) = conv1d_forward(&x, xs, &w, ws, Some(&b), &p);
            let ol = (l + 2 * pad - d * (k - 1) - 1) / s + 1;
            prop_assert_eq!(ys, [n, ws[0], ol]);
            for bi in 0..n {
                for o in 0..ws[0] {
                    for t in 0..ol {
                        let grp = o / ocg;
                        let mut want = b[o];
                        for c in 0..cg {
                            for j in 0..k {
                                let i = (t * s + j * d) as isize - pad as isize;
                                if i >= 0 && (i as usize) < l {
                                    want += x[(bi * xs[1] + grp * cg + c) * l + i as usize] * w[(o * cg + c) * k + j];
                                }
                            }
                        }
                        prop_assert!((y[(bi * ws[0] + o) * ol + t] - want).abs() < 1e-12);
                    }
                }
            }
            let gy = rand_vec(&mut rng, ys.iter().product());
            let gx = conv1d_backward_input(&gy, ys, &w, ws, xs, &p);
            let y0 = conv1d_forward(&x, xs, &w, ws, None, &p).0;
            prop_assert!((dot(&gy, &y0) - dot(&gx, &x)).abs() < 1e-10);
            let gw = conv1d_backward_weight(&gy, ys, &x, xs, ws, &p);
            prop_assert!((dot(&gy, &y0) - dot(&gw, &w)).abs() < 1e-10);
            let gb = conv1d_backward_bias(&gy, ys);
            prop_assert!((gb.iter().sum::<f64>() - gy.iter().sum::<f64>()).abs() < 1e-10);
        }
    }

    #[test]
    #[should_panic(expected = "conv1d: input [1, 2, 5] has 2 channels but weight [1, 3, 2] expects 3 x groups 1")]
    fn conv1d_names_the_1d_shapes() {
        let _ = conv1d_forward(&[0.0f64; 10], [1, 2, 5], &[0.0; 6], [1, 3, 2], None, &Conv1dParams::default());
    }
}
