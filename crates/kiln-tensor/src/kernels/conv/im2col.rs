//! The lowering of a convolution to GEMM that conv2d, its transpose and conv1d share: im2col
//! (each output position's receptive field unrolled into a column), col2im (its adjoint), and
//! the forward, input-gradient and weight-gradient products over a batch.

use std::any::TypeId;

use rayon::prelude::*;

use super::geometry::Geom;
use crate::alloc::{self, Buffer};
use crate::element::Float;
use crate::kernels::gemm::gemm_slices;
use crate::parallel;

/// Output positions `o` in `[lo, hi)` of an axis of length `out_len` whose input position
/// `o * stride + offset` falls inside `[0, in_len)`.
#[inline]
fn valid_range(out_len: usize, stride: usize, offset: isize, in_len: usize) -> (usize, usize) {
    let lo = if offset >= 0 { 0 } else { offset.unsigned_abs().div_ceil(stride) };
    let hi = if offset >= in_len as isize { 0 } else { ((in_len as isize - offset) as usize).div_ceil(stride) };
    let lo = lo.min(out_len);
    (lo, hi.min(out_len).max(lo))
}

/// Unrolls one group's input `x` (`[c, h, w]`) into `col` (`[c * kh * kw, oh * ow]`): row
/// `(ci, ki, kj)` holds the input value each output position reads through that tap, or 0 where
/// the tap falls in the padding.
fn im2col<E: Float>(x: &[E], g: &Geom, col: &mut [E]) {
    let (ohw, hw) = (g.out_plane(), g.in_plane());
    let mut rows = col.chunks_exact_mut(ohw.max(1));
    for ci in 0..g.c {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            let off_y = (ki * g.dil[0]) as isize - g.pad[0] as isize;
            let (ylo, yhi) = valid_range(g.oh, g.stride[0], off_y, g.h);
            for kj in 0..g.kw {
                let off_x = (kj * g.dil[1]) as isize - g.pad[1] as isize;
                let (xlo, xhi) = valid_range(g.ow, g.stride[1], off_x, g.w);
                let row = rows.next().expect("im2col: col buffer too short");
                row[..ylo * g.ow].fill(E::zero());
                row[yhi * g.ow..].fill(E::zero());
                for oy in ylo..yhi {
                    let iy = ((oy * g.stride[0]) as isize + off_y) as usize;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    dst[..xlo].fill(E::zero());
                    dst[xhi..].fill(E::zero());
                    if xlo == xhi {
                        continue;
                    }
                    let ix0 = ((xlo * g.stride[1]) as isize + off_x) as usize;
                    if g.stride[1] == 1 {
                        dst[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                    } else {
                        for (d, s) in dst[xlo..xhi].iter_mut().zip(src[ix0..].iter().step_by(g.stride[1])) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each entry of `col` to the input position it was read from.
fn col2im<E: Float>(col: &[E], g: &Geom, x: &mut [E]) {
    let (ohw, hw) = (g.out_plane(), g.in_plane());
    let mut rows = col.chunks_exact(ohw.max(1));
    for ci in 0..g.c {
        let plane = &mut x[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            let off_y = (ki * g.dil[0]) as isize - g.pad[0] as isize;
            let (ylo, yhi) = valid_range(g.oh, g.stride[0], off_y, g.h);
            for kj in 0..g.kw {
                let off_x = (kj * g.dil[1]) as isize - g.pad[1] as isize;
                let (xlo, xhi) = valid_range(g.ow, g.stride[1], off_x, g.w);
                let row = rows.next().expect("col2im: col buffer too short");
                for oy in ylo..yhi {
                    let iy = ((oy * g.stride[0]) as isize + off_y) as usize;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let src = &row[oy * g.ow + xlo..oy * g.ow + xhi];
                    if src.is_empty() {
                        continue;
                    }
                    let ix0 = ((xlo * g.stride[1]) as isize + off_x) as usize;
                    if g.stride[1] == 1 {
                        for (d, s) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in dst[ix0..].iter_mut().step_by(g.stride[1]).zip(src) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `C = alpha * op(A) · op(B) + beta * C`, either on the calling thread only (inside a
/// region that is already parallel over samples) or through [`gemm_slices`], which may split it.
fn matmul<E: Float>(
    serial: bool,
    m: usize,
    k: usize,
    n: usize,
    a: &[E],
    trans_a: bool,
    b: &[E],
    trans_b: bool,
    beta: E,
    c: &mut [E],
) {
    if !serial {
        gemm_slices(m, k, n, E::one(), a, trans_a, b, trans_b, beta, c);
        return;
    }
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "conv: GEMM operand too short");
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the lengths are checked above, the strides describe row-major (or transposed)
    // matrices within them, and `c` is an exclusive borrow distinct from `a` and `b`.
    unsafe {
        E::gemm_raw(m, k, n, E::one(), a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1)
    }
}

/// Runs `f(sample, chunk, col_buffer, serial)` over the `n` samples whose results are the
/// consecutive `chunk`-element pieces of `out`: in parallel on kiln's pool (each task with its own
/// im2col buffer of `col_len`) when there are several samples and `flops` is large enough.
fn for_each_sample<E: Float>(
    out: &mut [E],
    chunk: usize,
    n: usize,
    flops: usize,
    col_len: usize,
    f: impl Fn(usize, &mut [E], &mut Vec<E>, bool) + Sync + Send,
) {
    if out.is_empty() || chunk == 0 {
        return;
    }
    let serial_loop = |out: &mut [E]| {
        let mut col = Buffer::new(alloc::take_filled(col_len, E::zero()));
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, &mut col, false);
        }
    };
    if n < 2 || flops < parallel::gemm_min_flops() || parallel::get_num_threads() == 1 {
        serial_loop(out);
        return;
    }
    parallel::install(|threads| {
        if threads < 2 {
            serial_loop(out);
        } else {
            out.par_chunks_mut(chunk).enumerate().for_each_init(
                || Buffer::new(alloc::take_filled(col_len, E::zero())),
                |col, (i, o)| f(i, o, col, true),
            );
        }
    });
}

/// Convolution forward plus `bias` (one per output channel), for the geometry `g` (output
/// `[n, groups * oc, oh, ow]`): through the direct AVX2 kernel where it applies (`f32`, unit
/// stride, outside autocast, `KILN_CONV` not `im2col`), else im2col + GEMM.
pub(super) fn forward_impl<E: Float>(x: &[E], wt: &[E], bias: Option<&[E]>, n: usize, g: &Geom) -> Vec<E> {
    if let Some(out) = forward_direct(x, wt, bias, n, g) {
        return out;
    }
    let mut out = forward_im2col(x, wt, n, g);
    if let Some(b) = bias {
        add_bias(&mut out, b, g.out_plane());
    }
    out
}

/// How `f32` convolutions with unit stride run, from the environment variable `KILN_CONV`
/// (read once per process): `auto` (the default: the direct kernel where the CPU has AVX2 and
/// FMA) or `im2col` (always im2col + GEMM, for comparison). Other values panic, naming the
/// variable: a setting the user made is not ignored.
fn direct_enabled() -> bool {
    static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("KILN_CONV") {
        Err(std::env::VarError::NotPresent) => true,
        Ok(v) if matches!(v.trim().to_ascii_lowercase().as_str(), "" | "auto") => true,
        Ok(v) if v.trim().eq_ignore_ascii_case("im2col") => false,
        Ok(v) => panic!("KILN_CONV={v:?}: expected auto or im2col (or leave it unset)"),
        Err(std::env::VarError::NotUnicode(v)) => {
            panic!("KILN_CONV={v:?}: expected auto or im2col (or leave it unset)")
        }
    })
}

/// The direct kernel's result when it applies to `E` and `g` (see [`forward_impl`]).
fn forward_direct<E: Float>(x: &[E], wt: &[E], bias: Option<&[E]>, n: usize, g: &Geom) -> Option<Vec<E>> {
    if TypeId::of::<E>() != TypeId::of::<f32>()
        || crate::autocast::bf16_gemm()
        || !super::direct_avx2::applies(g)
        || !direct_enabled()
    {
        return None;
    }
    let f = |s: &[E]| {
        // SAFETY: E is f32 (checked above): same size, alignment and bit validity.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) }
    };
    let len = n * g.out_sample();
    let mut out: Vec<f32> = alloc::take(len);
    super::direct_avx2::forward(f(x), f(wt), bias.map(f), false, n, g, &mut out.spare_capacity_mut()[..len]);
    // SAFETY: `forward` wrote all `len` elements.
    unsafe { out.set_len(len) };
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: E is f32; the allocation is handed over unchanged (pointer, length, capacity).
    Some(unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<E>(), out.len(), out.capacity()) })
}

/// Convolution forward without bias through im2col + GEMM.
fn forward_im2col<E: Float>(x: &[E], wt: &[E], n: usize, g: &Geom) -> Vec<E> {
    let (k, ohw, cg_len, og_len, wg_len) =
        (g.k(), g.out_plane(), g.c * g.in_plane(), g.oc * g.out_plane(), g.oc * g.k());
    let mut out = alloc::take_filled(n * g.out_sample(), E::zero());
    for_each_sample(&mut out, g.out_sample(), n, g.flops(n), g.col_len(), |i, out, col, serial| {
        let xs = &x[i * g.in_sample()..(i + 1) * g.in_sample()];
        for grp in 0..g.groups {
            let xg = &xs[grp * cg_len..(grp + 1) * cg_len];
            let wg = &wt[grp * wg_len..(grp + 1) * wg_len];
            let og = &mut out[grp * og_len..(grp + 1) * og_len];
            let colm: &[E] = if g.pointwise() {
                xg
            } else {
                im2col(xg, g, col);
                col
            };
            // out_g [oc, ohw] = W_g [oc, k] · col [k, ohw]
            matmul(serial, g.oc, k, ohw, wg, false, colm, false, E::zero(), og);
        }
    });
    out
}

/// Input gradient for the geometry `g`: `gy` is `[n, groups * oc, oh, ow]`, the result
/// `[n, groups * c, h, w]`.
pub(super) fn backward_input_impl<E: Float>(gy: &[E], wt: &[E], n: usize, g: &Geom) -> Vec<E> {
    let (k, ohw, cg_len, og_len, wg_len) =
        (g.k(), g.out_plane(), g.c * g.in_plane(), g.oc * g.out_plane(), g.oc * g.k());
    let mut gx = alloc::take_filled(n * g.in_sample(), E::zero());
    for_each_sample(&mut gx, g.in_sample(), n, g.flops(n), g.col_len(), |i, gx, col, serial| {
        let gys = &gy[i * g.out_sample()..(i + 1) * g.out_sample()];
        for grp in 0..g.groups {
            let gyg = &gys[grp * og_len..(grp + 1) * og_len];
            let wg = &wt[grp * wg_len..(grp + 1) * wg_len];
            let gxg = &mut gx[grp * cg_len..(grp + 1) * cg_len];
            // col [k, ohw] = W_g^T [k, oc] · gy_g [oc, ohw]
            if g.pointwise() {
                matmul(serial, k, g.oc, ohw, wg, true, gyg, false, E::zero(), gxg);
            } else {
                matmul(serial, k, g.oc, ohw, wg, true, gyg, false, E::zero(), col);
                col2im(col, g, gxg);
            }
        }
    });
    gx
}

/// Weight gradient for the geometry `g`: `sum over samples of gy_g · im2col(x_g)^T`, returned
/// as `[groups * oc, c, kh, kw]`.
pub(super) fn backward_weight_impl<E: Float>(gy: &[E], x: &[E], n: usize, g: &Geom) -> Vec<E> {
    let (k, ohw, cg_len, og_len, wg_len) =
        (g.k(), g.out_plane(), g.c * g.in_plane(), g.oc * g.out_plane(), g.oc * g.k());
    let w_len = g.groups * wg_len;
    // Accumulates sample i into `gw` (beta = 1).
    let sample = |i: usize, gw: &mut [E], col: &mut Vec<E>, serial: bool| {
        let xs = &x[i * g.in_sample()..(i + 1) * g.in_sample()];
        let gys = &gy[i * g.out_sample()..(i + 1) * g.out_sample()];
        for grp in 0..g.groups {
            let xg = &xs[grp * cg_len..(grp + 1) * cg_len];
            let gyg = &gys[grp * og_len..(grp + 1) * og_len];
            let gwg = &mut gw[grp * wg_len..(grp + 1) * wg_len];
            let colm: &[E] = if g.pointwise() {
                xg
            } else {
                im2col(xg, g, col);
                col
            };
            // gW_g [oc, k] += gy_g [oc, ohw] · col^T [ohw, k]
            matmul(serial, g.oc, ohw, k, gyg, false, colm, true, E::one(), gwg);
        }
    };
    let serial_all = || {
        let mut gw = alloc::take_filled(w_len, E::zero());
        let mut col = Buffer::new(alloc::take_filled(g.col_len(), E::zero()));
        for i in 0..n {
            sample(i, &mut gw, &mut col, false);
        }
        gw
    };
    if n < 2 || w_len == 0 || g.flops(n) < parallel::gemm_min_flops() || parallel::get_num_threads() == 1 {
        return serial_all();
    }
    parallel::install(|threads| {
        if threads < 2 {
            return serial_all();
        }
        // One partial sum per thread's run of samples, then a sum of the partials.
        (0..n)
            .into_par_iter()
            .with_min_len(n.div_ceil(threads))
            .fold(
                || (alloc::take_filled(w_len, E::zero()), Buffer::new(alloc::take_filled(g.col_len(), E::zero()))),
                |(mut gw, mut col), i| {
                    sample(i, &mut gw, &mut col, true);
                    (gw, col)
                },
            )
            .map(|(gw, _)| gw)
            .reduce_with(|mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += *y;
                }
                alloc::recycle(b);
                a
            })
            .unwrap_or_else(|| alloc::take_filled(w_len, E::zero()))
    })
}

/// Adds `bias[c]` to every element of each `[plane]`-sized channel block of `out`.
pub(super) fn add_bias<E: Float>(out: &mut [E], bias: &[E], plane: usize) {
    if plane == 0 || bias.is_empty() {
        return;
    }
    for (i, block) in out.chunks_exact_mut(plane).enumerate() {
        let b = bias[i % bias.len()];
        for v in block {
            *v += b;
        }
    }
}

/// Sums `[n, c, plane]` over the first and last axes.
pub(super) fn channel_sums<E: Float>(x: &[E], n: usize, c: usize, plane: usize) -> Vec<E> {
    let mut sums = alloc::take_filled(c, E::zero());
    for i in 0..n {
        for (ch, s) in sums.iter_mut().enumerate() {
            let start = (i * c + ch) * plane;
            *s += x[start..start + plane].iter().copied().sum::<E>();
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use crate::kernels::conv::reference::*;
    use crate::kernels::conv::*;

    #[test]
    fn large_batch_takes_the_parallel_path_and_agrees() {
        // 4 x 8 x 72 x 256 multiply-adds > 2^18, so the batch is split when threads > 1.
        let (xs, ws) = ([4, 8, 16, 16], [8, 4, 3, 3]);
        let p = Conv2dParams { padding: [1, 1], groups: 2, ..Default::default() };
        let mut rng = crate::Rng::new(7);
        let x = rand_vec(&mut rng, xs.iter().product());
        let w = rand_vec(&mut rng, ws.iter().product());
        let ys = conv2d_out_shape(xs, ws, &p);
        let gy = rand_vec(&mut rng, ys.iter().product());
        let want_y = ref_conv(&x, xs, &w, ws, ys, &p);
        let want_gx = ref_conv_bwd_input(&gy, xs, &w, ws, ys, &p);
        let want_gw = ref_conv_bwd_weight(&gy, &x, xs, ws, ys, &p);
        for threads in [1, 2] {
            crate::set_num_threads(threads);
            assert_close(&conv2d_forward(&x, xs, &w, ws, None, &p).0, &want_y, 1e-12, "forward");
            assert_close(&conv2d_backward_input(&gy, ys, &w, ws, xs, &p), &want_gx, 1e-12, "grad input");
            assert_close(&conv2d_backward_weight(&gy, ys, &x, xs, ws, &p), &want_gw, 1e-12, "grad weight");
        }
    }

    #[test]
    fn taps_that_never_reach_the_input_read_zeros() {
        // 1x1 input, taps at x = -2, 0, 2: only the middle one reads the input, and the first
        // and last rows of im2col are all padding.
        let (xs, ws) = ([1, 1, 1, 1], [1, 1, 1, 3]);
        let p = Conv2dParams { padding: [0, 2], dilation: [1, 2], ..Default::default() };
        let (x, w) = ([3.0], [1.0, 10.0, 100.0]);
        let (y, ys) = conv2d_forward(&x, xs, &w, ws, None, &p);
        assert_eq!((y, ys), (vec![30.0], [1, 1, 1, 1]));
        assert_eq!(conv2d_backward_input(&[2.0], ys, &w, ws, xs, &p), vec![20.0]);
        assert_eq!(conv2d_backward_weight(&[2.0], ys, &x, xs, ws, &p), vec![0.0, 6.0, 0.0]);
    }

    #[test]
    fn pointwise_conv_skips_im2col_and_agrees() {
        let (xs, ws) = ([2, 4, 3, 5], [6, 2, 1, 1]);
        let p = Conv2dParams { groups: 2, ..Default::default() };
        let mut rng = crate::Rng::new(11);
        let x = rand_vec(&mut rng, xs.iter().product());
        let w = rand_vec(&mut rng, ws.iter().product());
        let (y, ys) = conv2d_forward(&x, xs, &w, ws, None, &p);
        assert_close(&y, &ref_conv(&x, xs, &w, ws, ys, &p), 1e-12, "forward");
        let gy = rand_vec(&mut rng, ys.iter().product());
        assert_close(
            &conv2d_backward_input(&gy, ys, &w, ws, xs, &p),
            &ref_conv_bwd_input(&gy, xs, &w, ws, ys, &p),
            1e-12,
            "grad input",
        );
        assert_close(
            &conv2d_backward_weight(&gy, ys, &x, xs, ws, &p),
            &ref_conv_bwd_weight(&gy, &x, xs, ws, ys, &p),
            1e-12,
            "grad weight",
        );
    }
}
