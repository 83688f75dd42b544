//! Helpers shared by kiln-tensor's integration tests: a SplitMix64 generator (the tests draw
//! their own numbers so that the references never depend on kiln), row-major index maps, random
//! contiguous and non-contiguous tensors with their reference values (`build`), tolerance
//! checks, and catching a panic's message.

#![allow(dead_code)]

use kiln_tensor::{Float, Tensor};
use proptest::prelude::*;

/// SplitMix64: the tests draw their own numbers so that the references never depend on kiln.
pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn perm(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// Row-major multi-index of flat position `i`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Flat row-major position of a multi-index.
pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// `d` written either as itself or as its negative alias (`d - ndim`).
pub fn any_sign(d: usize, ndim: usize, g: &mut Gen) -> isize {
    if g.coin() {
        d as isize - ndim as isize
    } else {
        d as isize
    }
}

/// `cases` proptest cases, or `PROPTEST_CASES` when set (for long stress runs).
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// `x` rounded to the element type.
pub fn rd<E: Float>(x: f64) -> f64 {
    E::from_f64(x).to_f64()
}

pub fn vals<E: Float>(t: &Tensor<E>) -> Vec<f64> {
    t.to_vec().into_iter().map(|x| x.to_f64()).collect()
}

pub type Draw<'a> = &'a dyn Fn(&mut Gen) -> f64;

/// A tensor of logical shape `shape` together with its row-major values (rounded to `E`),
/// reached through up to `depth` random view ops (permute, transpose, t, slice with a step,
/// narrow, flip, expand, select, unsqueeze, squeeze), so that it is usually not contiguous.
pub fn build<E: Float>(shape: &[usize], depth: usize, g: &mut Gen, draw: Draw) -> (Tensor<E>, Vec<f64>) {
    let nd = shape.len();
    let n: usize = shape.iter().product();
    let pick = if depth == 0 { 0 } else { g.below(8) };
    let gather = |v: &[f64], q: &[usize], map: &dyn Fn(&[usize]) -> Vec<usize>| -> Vec<f64> {
        (0..n).map(|i| v[ravel(&map(&unravel(i, shape)), q)]).collect()
    };
    match pick {
        // permute, transpose, t
        1 if nd >= 2 => {
            let (p, swap) = if g.coin() {
                (g.perm(nd), None)
            } else {
                let (a, b) = (g.below(nd), g.below(nd));
                let mut p: Vec<usize> = (0..nd).collect();
                p.swap(a, b);
                (p, Some((a, b)))
            };
            let mut q = vec![0; nd];
            for i in 0..nd {
                q[p[i]] = shape[i];
            }
            let (t, v) = build::<E>(&q, depth - 1, g, draw);
            let view = match swap {
                Some((a, b)) if nd == 2 && a != b && g.coin() => t.t(),
                Some((a, b)) => t.transpose(any_sign(a, nd, g), any_sign(b, nd, g)),
                None => t.permute(&p.iter().map(|&d| any_sign(d, nd, g)).collect::<Vec<_>>()),
            };
            let out = gather(&v, &q, &|idx| {
                let mut j = vec![0; nd];
                for k in 0..nd {
                    j[p[k]] = idx[k];
                }
                j
            });
            (view, out)
        }
        // slice with a step, or narrow
        2 if nd >= 1 => {
            let d = g.below(nd);
            let step = 1 + g.below(3);
            let start = g.below(3);
            let s = shape[d];
            let exact_end = if s == 0 { start } else { start + (s - 1) * step + 1 };
            let mut q = shape.to_vec();
            q[d] = exact_end + g.below(3);
            let (t, v) = build::<E>(&q, depth - 1, g, draw);
            let view = if step == 1 && g.coin() {
                t.narrow(any_sign(d, nd, g), start, s)
            } else {
                let end = if s == 0 { start } else { exact_end + g.below(step) };
                t.slice(any_sign(d, nd, g), start, end, step)
            };
            let out = gather(&v, &q, &|idx| {
                let mut j = idx.to_vec();
                j[d] = start + idx[d] * step;
                j
            });
            (view, out)
        }
        // flip some dims
        3 if nd >= 1 => {
            let dims: Vec<usize> = (0..nd).filter(|_| g.coin()).collect();
            let (t, v) = build::<E>(shape, depth - 1, g, draw);
            let view = t.flip(&dims.iter().map(|&d| any_sign(d, nd, g)).collect::<Vec<_>>());
            let out = gather(&v, shape, &|idx| {
                let mut j = idx.to_vec();
                for &d in &dims {
                    j[d] = shape[d] - 1 - idx[d];
                }
                j
            });
            (view, out)
        }
        // expand (size-1 dims and missing leading dims get stride 0)
        4 if nd >= 1 => {
            let lead = if g.coin() { g.below(nd + 1) } else { 0 };
            let q: Vec<usize> = shape[lead..].iter().map(|&s| if g.coin() { 1 } else { s }).collect();
            let (t, v) = build::<E>(&q, depth - 1, g, draw);
            let view = if g.coin() { t.expand(shape) } else { t.broadcast_to(shape) };
            let out =
                gather(&v, &q, &|idx| idx[lead..].iter().zip(&q).map(|(&i, &s)| if s == 1 { 0 } else { i }).collect());
            (view, out)
        }
        // select one index of an extra dim
        5 => {
            let d = g.below(nd + 1);
            let k = 1 + g.below(3);
            let at = g.below(k);
            let mut q = shape.to_vec();
            q.insert(d, k);
            let (t, v) = build::<E>(&q, depth - 1, g, draw);
            let view = t.select(any_sign(d, nd + 1, g), at);
            let out = gather(&v, &q, &|idx| {
                let mut j = idx.to_vec();
                j.insert(d, at);
                j
            });
            (view, out)
        }
        // unsqueeze (when the shape has a size-1 dim) or squeeze_dim of an extra size-1 dim
        6 => {
            let ones: Vec<usize> = (0..nd).filter(|&d| shape[d] == 1).collect();
            if !ones.is_empty() && g.coin() {
                let d = ones[g.below(ones.len())];
                let mut q = shape.to_vec();
                q.remove(d);
                let (t, v) = build::<E>(&q, depth - 1, g, draw);
                let view = t.unsqueeze(any_sign(d, nd, g));
                let out = gather(&v, &q, &|idx| {
                    let mut j = idx.to_vec();
                    j.remove(d);
                    j
                });
                (view, out)
            } else {
                let d = g.below(nd + 1);
                let mut q = shape.to_vec();
                q.insert(d, 1);
                let (t, v) = build::<E>(&q, depth - 1, g, draw);
                let view = t.squeeze_dim(any_sign(d, nd + 1, g));
                let out = gather(&v, &q, &|idx| {
                    let mut j = idx.to_vec();
                    j.insert(d, 0);
                    j
                });
                (view, out)
            }
        }
        _ => {
            let v: Vec<f64> = (0..n).map(|_| rd::<E>(draw(g))).collect();
            (Tensor::from_vec(v.iter().map(|&x| E::from_f64(x)).collect(), shape), v)
        }
    }
}

pub fn close(got: f64, want: f64, rtol: f64, atol: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= atol + rtol * want.abs()
}

/// Checks a kiln result's shape and values against a reference.
pub fn check<E: Float>(
    got: &Tensor<E>,
    shape: &[usize],
    want: &[f64],
    rtol: f64,
    atol: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), shape, "{}: shape", what);
    let g = vals(got);
    prop_assert_eq!(g.len(), want.len(), "{}: element count", what);
    for (i, (&x, &w)) in g.iter().zip(want).enumerate() {
        prop_assert!(
            close(x, w, rtol, atol),
            "{}: element {} (index {:?}) is {}, want {}",
            what,
            i,
            unravel(i, shape),
            x,
            w
        );
    }
    Ok(())
}

pub fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
    match std::panic::catch_unwind(f) {
        Ok(()) => None,
        Err(e) => Some(
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}
