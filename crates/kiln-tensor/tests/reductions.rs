//! Reductions checked against naive loops over row-major data: `sum mean var std max min
//! logsumexp norm` over every subset of axes (empty = all, negative aliases, any order) with and
//! without `keepdim`; `argmax argmin max_dim` (first occurrence on ties); `softmax` and
//! `log_softmax` along every dim (sums to one, stable at large values); in f32 and f64, on
//! contiguous and non-contiguous (permuted, sliced with a step, flipped, expanded) inputs of one
//! to four dims, size-1 and size-0 dims included.

use kiln_tensor::{DType, Float, Norm, Tensor};
use proptest::prelude::*;

mod common;
use common::*;

/// The thread count is global: tests that set it hold this lock, so that a check meant to run
/// at one thread does.
static THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

// ------------------------------------------------------------------------------------ helpers

/// Unit roundoff of the element type.
fn eps<E: Float>() -> f64 {
    match E::DTYPE {
        DType::F32 => f32::EPSILON as f64,
        DType::F64 => f64::EPSILON,
        DType::BF16 => unreachable!("Float is f32 or f64"),
    }
}

/// Every subset of `0..nd`, as sorted lists.
fn subsets(nd: usize) -> Vec<Vec<usize>> {
    (0..1usize << nd).map(|m| (0..nd).filter(|d| m >> d & 1 == 1).collect()).collect()
}

/// The lanes of a reduction over `axes` (already expanded: never empty unless `shape` is 0-d):
/// one list per kept position in row-major order, each in row-major order of the reduced
/// coordinates.
fn lanes(v: &[f64], shape: &[usize], axes: &[usize]) -> Vec<Vec<f64>> {
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&d| shape[d]).collect();
    let mut out = vec![vec![]; kept_shape.iter().product()];
    for (i, &x) in v.iter().enumerate() {
        let idx = unravel(i, shape);
        let k: Vec<usize> = kept.iter().map(|&d| idx[d]).collect();
        out[ravel(&k, &kept_shape)].push(x);
    }
    out
}

fn reduced_shape(shape: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    let mut s = vec![];
    for (d, &n) in shape.iter().enumerate() {
        if !axes.contains(&d) {
            s.push(n);
        } else if keepdim {
            s.push(1);
        }
    }
    s
}

/// Checks values with a tolerance per element.
fn check_each<E: Float>(
    got: &Tensor<E>,
    shape: &[usize],
    want: &[(f64, f64)],
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), shape, "{}: shape", what);
    let g = vals(got);
    prop_assert_eq!(g.len(), want.len(), "{}: element count", what);
    for (i, (&x, &(w, atol))) in g.iter().zip(want).enumerate() {
        prop_assert!(close(x, w, 0.0, atol), "{}: element {} is {}, want {} (tolerance {:e})", what, i, x, w, atol);
    }
    Ok(())
}

fn ref_var(l: &[f64], correction: usize) -> f64 {
    let n = l.len();
    if n <= correction {
        return f64::NAN;
    }
    let mean = l.iter().sum::<f64>() / n as f64;
    l.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - correction) as f64
}

fn ref_logsumexp(l: &[f64]) -> f64 {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    if m.is_infinite() {
        return m;
    }
    m + l.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn max_abs(l: &[f64]) -> f64 {
    l.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// A reduction: its name, the kiln call, and the reference with its tolerance for a lane.
struct Reduction<E: Float> {
    name: &'static str,
    kiln: fn(&Tensor<E>, &[isize], bool) -> Tensor<E>,
    want: fn(&[f64], f64) -> (f64, f64),
}

fn reductions<E: Float>() -> Vec<Reduction<E>> {
    // tolerances: n * eps times the lane's scale bounds the rounding of any summation order
    fn r<E: Float>(
        name: &'static str,
        kiln: fn(&Tensor<E>, &[isize], bool) -> Tensor<E>,
        want: fn(&[f64], f64) -> (f64, f64),
    ) -> Reduction<E> {
        Reduction { name, kiln, want }
    }
    vec![
        r(
            "sum",
            |t, a, k| t.sum(a, k),
            |l, e| (l.iter().sum(), 2.0 * e * l.len() as f64 * l.iter().map(|x| x.abs()).sum::<f64>()),
        ),
        r(
            "mean",
            |t, a, k| t.mean(a, k),
            |l, e| {
                let n = l.len() as f64;
                (l.iter().sum::<f64>() / n, 2.0 * e * (n + 1.0) * max_abs(l))
            },
        ),
        r("var(0)", |t, a, k| t.var(a, 0, k), |l, e| (ref_var(l, 0), 8.0 * e * l.len() as f64 * max_abs(l).powi(2))),
        r("var(1)", |t, a, k| t.var(a, 1, k), |l, e| (ref_var(l, 1), 8.0 * e * l.len() as f64 * max_abs(l).powi(2))),
        r(
            "std(0)",
            |t, a, k| t.std(a, 0, k),
            |l, e| (ref_var(l, 0).sqrt(), (8.0 * e * l.len() as f64).sqrt() * max_abs(l)),
        ),
        r(
            "std(1)",
            |t, a, k| t.std(a, 1, k),
            |l, e| (ref_var(l, 1).sqrt(), (8.0 * e * l.len() as f64).sqrt() * max_abs(l)),
        ),
        r("max", |t, a, k| t.max(a, k), |l, _| (l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x)), 0.0)),
        r("min", |t, a, k| t.min(a, k), |l, _| (l.iter().fold(f64::INFINITY, |m, &x| m.min(x)), 0.0)),
        r(
            "logsumexp",
            |t, a, k| t.logsumexp(a, k),
            |l, e| {
                let w = ref_logsumexp(l);
                (w, 4.0 * e * (l.len() as f64 + w.abs()))
            },
        ),
        r(
            "norm(1)",
            |t, a, k| t.norm(Norm::P(1.0), a, k),
            |l, e| {
                let w: f64 = l.iter().map(|x| x.abs()).sum();
                (w, 2.0 * e * l.len() as f64 * w)
            },
        ),
        r(
            "norm(2)",
            |t, a, k| t.norm(Norm::P(2.0), a, k),
            |l, e| {
                let w = l.iter().map(|x| x * x).sum::<f64>().sqrt();
                (w, 4.0 * e * l.len() as f64 * w)
            },
        ),
        r(
            "norm(3)",
            |t, a, k| t.norm(Norm::P(3.0), a, k),
            |l, e| {
                let w = l.iter().map(|x| x.abs().powi(3)).sum::<f64>().powf(1.0 / 3.0);
                (w, 8.0 * e * l.len() as f64 * w)
            },
        ),
        r("norm(inf)", |t, a, k| t.norm(Norm::Inf, a, k), |l, _| (max_abs(l), 0.0)),
    ]
}

fn discrete(g: &mut Gen) -> f64 {
    g.below(5) as f64 - 2.0
}

fn check_reductions<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let use_discrete = g.below(3) == 0;
    let sm = |g: &mut Gen| g.uniform(-2.0, 2.0);
    let draw: Draw = if use_discrete { &discrete } else { &sm };
    let (x, v) = build::<E>(shape, 3, g, draw);
    let nd = shape.len();
    for subset in subsets(nd) {
        // the list kiln gets: any order, either sign; the empty list (and the full one) mean all
        let mut order = subset.clone();
        let p = g.perm(order.len());
        order = p.iter().map(|&i| order[i]).collect();
        let axes: Vec<isize> = order.iter().map(|&d| any_sign(d, nd, g)).collect();
        let effective: Vec<usize> = if subset.is_empty() { (0..nd).collect() } else { subset.clone() };
        let ls = lanes(&v, shape, &effective);
        for keepdim in [false, true] {
            let out_shape = reduced_shape(shape, &effective, keepdim);
            for red in reductions::<E>() {
                let what = format!(
                    "{} over {axes:?} keepdim {keepdim} of {shape:?} (strides {:?}, {:?})",
                    red.name,
                    x.strides(),
                    E::DTYPE
                );
                let want: Vec<(f64, f64)> = ls
                    .iter()
                    .map(|l| {
                        let (w, atol) = (red.want)(l, eps::<E>());
                        (w, atol + 2.0 * eps::<E>() * w.abs())
                    })
                    .collect();
                check_each(&(red.kiln)(&x, &axes, keepdim), &out_shape, &want, &what)?;
            }
        }
    }
    check(&x, shape, &v, 0.0, 0.0, "input after the reductions")
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn reductions_over_every_axis_set_match_loops(shape in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        check_reductions::<f64>(&shape, seed)?;
        check_reductions::<f32>(&shape, seed)?;
    }
}

// ------------------------------------------------------------------------ arg reductions

fn check_arg<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    // few distinct values, so that ties (and the first-occurrence rule) are common
    let draw = |g: &mut Gen| {
        if g.coin() {
            g.below(3) as f64
        } else {
            g.uniform(-1.0, 1.0)
        }
    };
    let (x, v) = build::<E>(shape, 3, g, &draw);
    let nd = shape.len();
    for d in 0..nd {
        let ls = lanes(&v, shape, &[d]);
        let first = |better: fn(f64, f64) -> bool| -> Vec<usize> {
            ls.iter().map(|l| (1..l.len()).fold(0, |b, i| if better(l[i], l[b]) { i } else { b })).collect()
        };
        let (imax, imin) = (first(|a, b| a > b), first(|a, b| a < b));
        for keepdim in [false, true] {
            let dim = any_sign(d, nd, g);
            let out_shape = reduced_shape(shape, &[d], keepdim);
            let what = format!("dim {dim} keepdim {keepdim} of {shape:?} (strides {:?}, {:?})", x.strides(), E::DTYPE);
            let am = x.argmax(dim, keepdim);
            prop_assert_eq!(am.shape(), out_shape.as_slice(), "argmax {}", what);
            prop_assert_eq!(am.as_slice(), imax.as_slice(), "argmax {} on lanes {:?}", what, ls);
            let an = x.argmin(dim, keepdim);
            prop_assert_eq!(an.shape(), out_shape.as_slice(), "argmin {}", what);
            prop_assert_eq!(an.as_slice(), imin.as_slice(), "argmin {} on lanes {:?}", what, ls);
            let (mv, mi) = x.max_dim(dim, keepdim);
            prop_assert_eq!(mi.as_slice(), imax.as_slice(), "max_dim indices {}", what);
            prop_assert_eq!(mi.shape(), out_shape.as_slice(), "max_dim indices {}", what);
            let want: Vec<f64> = ls.iter().zip(&imax).map(|(l, &i)| l[i]).collect();
            check(&mv, &out_shape, &want, 0.0, 0.0, &format!("max_dim values {what}"))?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn argmax_argmin_max_dim_pick_the_first_extreme(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        check_arg::<f64>(&shape, seed)?;
        check_arg::<f32>(&shape, seed)?;
    }
}

// ------------------------------------------------------------------------ softmax

fn ref_softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Scatters per-lane results (lanes along `d`, in `lanes` order) back to row-major order.
fn unlane(per_lane: &[Vec<f64>], shape: &[usize], d: usize) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let kept_shape: Vec<usize> = (0..shape.len()).filter(|&k| k != d).map(|k| shape[k]).collect();
    (0..n)
        .map(|i| {
            let idx = unravel(i, shape);
            let k: Vec<usize> = (0..shape.len()).filter(|&j| j != d).map(|j| idx[j]).collect();
            per_lane[ravel(&k, &kept_shape)][idx[d]]
        })
        .collect()
}

fn check_softmax<E: Float>(shape: &[usize], seed: u64, shift: f64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let spread = [1.0, 5.0, 30.0][g.below(3)];
    let draw = move |g: &mut Gen| shift + g.uniform(-spread, spread);
    let (x, v) = build::<E>(shape, 3, g, &draw);
    let nd = shape.len();
    let (rt, at) = match E::DTYPE {
        DType::F32 => (2e-5, 1e-6),
        DType::F64 => (1e-12, 1e-15),
        DType::BF16 => unreachable!("Float is f32 or f64"),
    };
    for d in 0..nd {
        let dim = any_sign(d, nd, g);
        let ls = lanes(&v, shape, &[d]);
        let sm: Vec<Vec<f64>> = ls.iter().map(|l| ref_softmax(l)).collect();
        let what =
            format!("along {dim} of {shape:?} (values {shift} ± {spread}, strides {:?}, {:?})", x.strides(), E::DTYPE);
        let s = x.softmax(dim);
        check(&s, shape, &unlane(&sm, shape, d), rt, at, &format!("softmax {what}"))?;
        // every lane sums to one
        let sums = lanes(&vals(&s), shape, &[d]);
        for l in &sums {
            let t: f64 = l.iter().sum();
            prop_assert!((t - 1.0).abs() < 4.0 * l.len() as f64 * eps::<E>(), "softmax {}: a lane sums to {}", what, t);
        }
        let lsm: Vec<Vec<f64>> = ls
            .iter()
            .map(|l| {
                let lse = ref_logsumexp(l);
                l.iter().map(|x| x - lse).collect()
            })
            .collect();
        let want = unlane(&lsm, shape, d);
        // x - logsumexp(x): the absolute error scales with the magnitude of x
        let scale = 1.0 + v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        check(
            &x.log_softmax(dim),
            shape,
            &want,
            rt,
            8.0 * eps::<E>() * scale * shape[d] as f64,
            &format!("log_softmax {what}"),
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn softmax_and_log_softmax_along_every_dim_match_loops(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        check_softmax::<f64>(&shape, seed, 0.0)?;
        check_softmax::<f32>(&shape, seed, 0.0)?;
    }

    #[test]
    fn softmax_is_stable_at_large_values(shape in prop::collection::vec(1usize..=4, 1..=3), seed: u64, big in prop::sample::select(vec![1000.0, -1000.0, 1e5])) {
        check_softmax::<f64>(&shape, seed, big)?;
        check_softmax::<f32>(&shape, seed, big)?;
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// With the fan-out threshold at one element, reductions and softmax take their parallel
    /// paths on every input.
    #[test]
    fn parallel_paths_match_loops(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
        kiln_tensor::set_num_threads(2);
        kiln_tensor::parallel::with_elementwise_threshold(1, || -> Result<(), TestCaseError> {
            check_reductions::<f64>(&shape, seed)?;
            check_arg::<f32>(&shape, seed)?;
            check_softmax::<f32>(&shape, seed, 0.0)?;
            check_softmax::<f64>(&shape, seed, 1000.0)
        })?;
    }
}

fn check_large_lse<E: Float>() {
    let x = Tensor::<E>::from_vec([1000.0, 1000.0, -1000.0, 999.0].map(E::from_f64).to_vec(), &[2, 2]);
    let l = vals(&x.logsumexp(&[1], false));
    assert!((l[0] - (1000.0 + 2f64.ln())).abs() < 1e-3, "{l:?}");
    assert!((l[1] - 999.0).abs() < 1e-3, "{l:?}");
    let s = vals(&x.softmax(1));
    assert!(s.iter().all(|v| v.is_finite()), "{s:?}");
    assert_eq!((s[0], s[1], s[2], s[3]), (0.5, 0.5, 0.0, 1.0));
    let ls = vals(&x.log_softmax(-1));
    assert!(ls.iter().all(|v| v.is_finite()), "{ls:?}");
    assert!((ls[2] + 1999.0).abs() < 1e-3, "{ls:?}");
    // -inf entries (masked attention) get probability 0; a lane that is all -inf sums to nothing
    let m = Tensor::<E>::from_vec([0.0, f64::NEG_INFINITY, 1.0, 1.0].map(E::from_f64).to_vec(), &[2, 2]);
    assert_eq!(vals(&m.softmax(1)), vec![1.0, 0.0, 0.5, 0.5]);
    let ninf = Tensor::<E>::full(&[3], E::neg_infinity());
    assert_eq!(ninf.logsumexp(&[], false).item().to_f64(), f64::NEG_INFINITY);
}

#[test]
fn logsumexp_and_softmax_at_extreme_values() {
    check_large_lse::<f32>();
    check_large_lse::<f64>();
}

// ------------------------------------------------------------------------ NaN, sizes, errors

#[test]
fn nan_propagates_through_reductions_like_pytorch() {
    // torch: max/min/amax/logsumexp/norm of a lane holding NaN are NaN; argmax/argmin point at
    // the (first) NaN
    let x = Tensor::<f64>::from_vec(vec![1.0, f64::NAN, 3.0, 2.0, 5.0, 4.0], &[2, 3]);
    let mut bad = vec![];
    for red in reductions::<f64>() {
        let r = (red.kiln)(&x, &[1], false).to_vec();
        if !r[0].is_nan() || r[1].is_nan() {
            bad.push(format!("{}: {r:?}", red.name));
        }
    }
    assert_eq!(x.argmax(1, false).as_slice(), vec![1, 1]);
    assert_eq!(x.argmin(1, false).as_slice(), vec![1, 0]);
    assert!(x.max_dim(1, false).0.to_vec()[0].is_nan());
    assert!(x.softmax(1).to_vec()[..3].iter().all(|v| v.is_nan()));
    // NaN beside infinities: PyTorch's logsumexp takes amax first, which is NaN
    let y = Tensor::<f64>::from_vec(vec![f64::NAN, f64::INFINITY, f64::NAN, f64::NEG_INFINITY], &[2, 2]);
    let r = y.logsumexp(&[1], false).to_vec();
    if !(r[0].is_nan() && r[1].is_nan()) {
        bad.push(format!("logsumexp([NaN, inf]), logsumexp([NaN, -inf]): {r:?}"));
    }
    assert!(bad.is_empty(), "these do not propagate NaN: {bad:?}");
}

#[test]
fn zero_size_reductions_follow_pytorch() {
    let x = Tensor::<f64>::zeros(&[2, 0]);
    let mut bad = vec![];
    let mut expect = |what: &str,
                      f: Box<dyn Fn() -> (Vec<usize>, Vec<f64>) + std::panic::RefUnwindSafe>,
                      shape: &[usize],
                      v: &[f64]| {
        match std::panic::catch_unwind(&f) {
            Ok((s, got)) => {
                let same = got.len() == v.len() && got.iter().zip(v).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                if s != shape || !same {
                    bad.push(format!("{what}: got {s:?} {got:?}, want {shape:?} {v:?}"));
                }
            }
            Err(_) => bad.push(format!("{what}: panicked, want {shape:?} {v:?}")),
        }
    };
    let tv = |t: Tensor<f64>| (t.shape().to_vec(), t.to_vec());
    let x1 = x.clone();
    expect("sum([2, 0], [0])", Box::new(move || tv(x1.sum(&[0], false))), &[0], &[]);
    let x1 = x.clone();
    expect("sum([2, 0], [1])", Box::new(move || tv(x1.sum(&[1], false))), &[2], &[0.0, 0.0]);
    let x1 = x.clone();
    expect("sum([2, 0], all)", Box::new(move || tv(x1.sum(&[], false))), &[], &[0.0]);
    let x1 = x.clone();
    expect("sum([2, 0], [0], keepdim)", Box::new(move || tv(x1.sum(&[0], true))), &[1, 0], &[]);
    let x1 = x.clone();
    expect("mean([2, 0], [1])", Box::new(move || tv(x1.mean(&[1], false))), &[2], &[f64::NAN, f64::NAN]);
    let x1 = x.clone();
    expect("max([2, 0], [0])", Box::new(move || tv(x1.max(&[0], false))), &[0], &[]);
    let x1 = x.clone();
    expect("logsumexp([2, 0], [1])", Box::new(move || tv(x1.logsumexp(&[1], false))), &[2], &[f64::NEG_INFINITY; 2]);
    let x1 = x.clone();
    expect("norm([2, 0])", Box::new(move || tv(x1.norm(Norm::P(2.0), &[], false))), &[], &[0.0]);
    let x1 = x.clone();
    expect("softmax([2, 0], 0)", Box::new(move || tv(x1.softmax(0))), &[2, 0], &[]);
    let x1 = x.clone();
    expect(
        "argmax([2, 0], 0)",
        Box::new(move || {
            let i = x1.argmax(0, false);
            (i.shape().to_vec(), vec![])
        }),
        &[0],
        &[],
    );
    assert!(bad.is_empty(), "{bad:#?}");
    // reducing an empty lane with max has no answer: a panic naming the op
    let msg = panic_message(|| {
        let _ = Tensor::<f64>::zeros(&[2, 0]).max(&[1], false);
    })
    .expect("max over an empty dim must panic");
    assert!(msg.contains("max"), "{msg}");
}

#[test]
fn reductions_of_a_0d_tensor() {
    let s = Tensor::<f64>::scalar(-2.5);
    assert_eq!(s.sum(&[], false).item(), -2.5);
    assert_eq!(s.sum(&[], true).shape(), &[] as &[usize]);
    assert_eq!(s.mean(&[], false).item(), -2.5);
    assert_eq!(s.max(&[], false).item(), -2.5);
    assert_eq!(s.norm(Norm::P(1.0), &[], false).item(), 2.5);
    assert_eq!(s.logsumexp(&[], false).item(), -2.5);
    assert!(s.var(&[], 1, false).item().is_nan());
    assert_eq!(s.var(&[], 0, false).item(), 0.0);
}

#[test]
fn axis_out_of_range_panics_with_the_op_and_shape() {
    let x = Tensor::<f32>::zeros(&[2, 3]);
    let mut bad = vec![];
    for red in reductions::<f32>() {
        for axes in [&[2isize][..], &[-3][..], &[0, 5][..]] {
            let msg = panic_message(|| {
                let _ = (red.kiln)(&x, axes, false);
            })
            .unwrap_or_else(|| panic!("{} over {axes:?} of [2, 3] did not panic", red.name));
            let op = red.name.split('(').next().unwrap();
            if !(msg.starts_with(&format!("{op}:")) && msg.contains("[2, 3]")) {
                bad.push(format!("{} over {axes:?}: {msg:?}", red.name));
            }
        }
    }
    assert!(bad.is_empty(), "messages that do not name the op and shape: {bad:#?}");
    for (name, f) in [
        ("argmax", Box::new(|| drop(x.argmax(2, false))) as Box<dyn Fn() + std::panic::RefUnwindSafe>),
        ("softmax", Box::new(|| drop(x.softmax(-3)))),
        ("log_softmax", Box::new(|| drop(x.log_softmax(2)))),
    ] {
        let msg = panic_message(&*f).unwrap_or_else(|| panic!("{name} did not panic"));
        assert!(msg.contains("[2, 3]"), "{name}: {msg:?}");
    }
}

#[test]
fn large_reductions_take_the_parallel_paths_and_agree_with_loops() {
    // split across threads, at 1 and 2 threads
    let shape = [36usize, 30, 31];
    let mut g = Gen(5);
    let v: Vec<f64> = (0..shape.iter().product::<usize>()).map(|_| g.uniform(-1.0, 1.0)).collect();
    let base = Tensor::<f64>::from_vec(v.clone(), &shape);
    let flipped = Tensor::<f64>::from_vec(v.clone(), &shape).flip(&[1]);
    let vf: Vec<f64> = (0..v.len())
        .map(|i| {
            let mut idx = unravel(i, &shape);
            idx[1] = shape[1] - 1 - idx[1];
            v[ravel(&idx, &shape)]
        })
        .collect();
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    // the split is forced (these sizes are below the default threshold)
    kiln_tensor::parallel::with_elementwise_threshold(1 << 12, || {
        for threads in [1, 2] {
            kiln_tensor::set_num_threads(threads);
            for (t, vv) in [(&base, &v), (&flipped, &vf)] {
                for axes in [vec![0usize], vec![1], vec![2], vec![0, 2]] {
                    let ax: Vec<isize> = axes.iter().map(|&d| d as isize).collect();
                    let ls = lanes(vv, &shape, &axes);
                    let s = t.sum(&ax, false).to_vec();
                    let m = t.max(&ax, false).to_vec();
                    for (k, l) in ls.iter().enumerate() {
                        assert!((s[k] - l.iter().sum::<f64>()).abs() < 1e-10, "sum over {axes:?} at {threads} threads");
                        assert_eq!(m[k], l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)));
                    }
                }
                let sm = t.softmax(1);
                let ls = lanes(&sm.to_vec(), &shape, &[1]);
                let lx = lanes(vv, &shape, &[1]);
                for (l, x) in ls.iter().zip(&lx) {
                    let r = ref_softmax(x);
                    assert!(l.iter().zip(&r).all(|(a, b)| (a - b).abs() < 1e-14), "softmax at {threads} threads");
                }
            }
        }
    });
}
