//! Direct-loop references for the convolution kernels' tests, straight from the definitions.

use proptest::prelude::*;

use super::Conv2dParams;

pub(super) fn rand_vec(rng: &mut crate::Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
}

pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(super) fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: got {a}, want {b}");
    }
}

/// Calls `visit(x_index, w_index, y_index)` for every product term of the convolution
/// `y[b, o, oy, ox] += x[b, c, iy, ix] * w[o, c % cg, ki, kj]`, straight from the definition on
/// the `torch.nn.Conv2d` page. The forward, input-gradient and weight-gradient references
/// are all this one sum read in different directions.
pub(super) fn conv_terms(
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    p: &Conv2dParams,
    mut visit: impl FnMut(usize, usize, usize),
) {
    let (ocg, cg) = (w[0] / p.groups, w[1]);
    for b in 0..x[0] {
        for o in 0..w[0] {
            let grp = o / ocg;
            for c in 0..cg {
                let ci = grp * cg + c;
                for ki in 0..w[2] {
                    for kj in 0..w[3] {
                        for oy in 0..y[2] {
                            for ox in 0..y[3] {
                                let iy = (oy * p.stride[0] + ki * p.dilation[0]) as isize - p.padding[0] as isize;
                                let ix = (ox * p.stride[1] + kj * p.dilation[1]) as isize - p.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= x[2] as isize || ix >= x[3] as isize {
                                    continue;
                                }
                                let xi = ((b * x[1] + ci) * x[2] + iy as usize) * x[3] + ix as usize;
                                let wi = ((o * cg + c) * w[2] + ki) * w[3] + kj;
                                let yi = ((b * y[1] + o) * y[2] + oy) * y[3] + ox;
                                visit(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Direct-loop forward, input gradient and weight gradient of `conv2d` on explicit shapes
/// (`y` may be taller or wider than the formula gives, as a transposed convolution needs).
pub(super) fn ref_conv(
    xs: &[f64],
    x: [usize; 4],
    ws: &[f64],
    w: [usize; 4],
    y: [usize; 4],
    p: &Conv2dParams,
) -> Vec<f64> {
    let mut out = vec![0.0; y.iter().product()];
    conv_terms(x, w, y, p, |xi, wi, yi| out[yi] += xs[xi] * ws[wi]);
    out
}
pub(super) fn ref_conv_bwd_input(
    gy: &[f64],
    x: [usize; 4],
    ws: &[f64],
    w: [usize; 4],
    y: [usize; 4],
    p: &Conv2dParams,
) -> Vec<f64> {
    let mut gx = vec![0.0; x.iter().product()];
    conv_terms(x, w, y, p, |xi, wi, yi| gx[xi] += gy[yi] * ws[wi]);
    gx
}
pub(super) fn ref_conv_bwd_weight(
    gy: &[f64],
    xs: &[f64],
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    p: &Conv2dParams,
) -> Vec<f64> {
    let mut gw = vec![0.0; w.iter().product()];
    conv_terms(x, w, y, p, |xi, wi, yi| gw[wi] += gy[yi] * xs[xi]);
    gw
}

/// A random convolution problem whose output is at least 1x1.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) x: [usize; 4],
    pub(super) w: [usize; 4],
    pub(super) p: Conv2dParams,
    pub(super) seed: u64,
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..3, 1usize..3, 1usize..3, 1usize..4),
        ([1usize..4, 1usize..4], [1usize..3, 1usize..3], [0usize..3, 0usize..3], [1usize..3, 1usize..3]),
        ([0usize..5, 0usize..5], 0u64..1 << 20),
    )
        .prop_map(|((n, groups, cg, ocg), (k, s, pad, d), (extra, seed))| {
            let size = |a: usize| (d[a] * (k[a] - 1) + 1).saturating_sub(2 * pad[a]).max(1) + extra[a];
            Case {
                x: [n, groups * cg, size(0), size(1)],
                w: [groups * ocg, cg, k[0], k[1]],
                p: Conv2dParams { stride: s, padding: pad, dilation: d, groups },
                seed,
            }
        })
}
