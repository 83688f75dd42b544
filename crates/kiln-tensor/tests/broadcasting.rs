//! Elementwise ops checked against naive loops over row-major data: every binary op under
//! NumPy/PyTorch broadcasting, the scalar and `std::ops` forms, the in-place forms with a
//! broadcast right-hand side, the unary functions against their scalar formulas, `where_` and
//! `masked_fill`, in f32 and f64, on contiguous and non-contiguous (permuted, sliced with a step,
//! flipped, expanded, selected) inputs, and the shape-error messages.

use kiln_tensor::{DType, Float, Tensor};
use proptest::prelude::*;

mod common;
use common::*;

/// The thread count is global: tests that set it hold this lock, so that a check meant to run
/// at one thread does.
static THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

// ------------------------------------------------------------------------------------ helpers

/// Relative tolerance for results that are one rounding away from the f64 reference.
fn tol<E: Float>() -> f64 {
    match E::DTYPE {
        DType::F32 => 1e-6,
        DType::F64 => 1e-15,
        DType::BF16 => unreachable!("Float is f32 or f64"),
    }
}

/// Tolerance for transcendental functions (several roundings, library differences).
fn ftol<E: Float>() -> f64 {
    match E::DTYPE {
        DType::F32 => 1e-5,
        DType::F64 => 1e-12,
        DType::BF16 => unreachable!("Float is f32 or f64"),
    }
}

/// The shape NumPy broadcasting gives, computed directly.
fn bshape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let nd = a.len().max(b.len());
    (0..nd)
        .map(|i| {
            let da = if i + a.len() >= nd { a[i + a.len() - nd] } else { 1 };
            let db = if i + b.len() >= nd { b[i + b.len() - nd] } else { 1 };
            if da == 1 {
                db
            } else {
                da
            }
        })
        .collect()
}

/// The flat position in an operand of shape `shape` that output index `idx` reads.
fn bpos(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let j: Vec<usize> = shape.iter().enumerate().map(|(d, &s)| if s == 1 { 0 } else { idx[lead + d] }).collect();
    ravel(&j, shape)
}

/// An operand shape that broadcasts to `out`: some leading dims dropped, some dims set to 1.
fn operand_shape(out: &[usize], g: &mut Gen) -> Vec<usize> {
    let lead = if g.below(3) == 0 { g.below(out.len() + 1) } else { 0 };
    out[lead..].iter().map(|&d| if g.below(3) == 0 { 1 } else { d }).collect()
}

/// Elementwise reference of a broadcasting binary op.
fn ref_binary(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize], f: &dyn Fn(f64, f64) -> f64) -> (Vec<usize>, Vec<f64>) {
    let out = bshape(sa, sb);
    let n: usize = out.iter().product();
    let v = (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            f(a[bpos(&idx, sa)], b[bpos(&idx, sb)])
        })
        .collect();
    (out, v)
}

fn smooth(lo: f64, hi: f64) -> impl Fn(&mut Gen) -> f64 {
    move |g: &mut Gen| g.uniform(lo, hi)
}

/// Small integers: ties, zeros and exact comparisons happen often.
fn discrete(g: &mut Gen) -> f64 {
    g.below(5) as f64 - 2.0
}

fn mask(c: bool) -> f64 {
    if c {
        1.0
    } else {
        0.0
    }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a < b {
        a
    } else {
        b
    }
}

// ---------------------------------------------------------------------------- binary ops

type BinFn<E> = fn(&Tensor<E>, &Tensor<E>) -> Tensor<E>;
type ScalarFn<E> = fn(&Tensor<E>, E) -> Tensor<E>;

/// name, tensor form, scalar form, reference.
#[allow(clippy::type_complexity)]
fn binary_table<E: Float>() -> Vec<(&'static str, BinFn<E>, ScalarFn<E>, fn(f64, f64) -> f64)> {
    vec![
        ("add", Tensor::add, Tensor::add_scalar, |a, b| a + b),
        ("sub", Tensor::sub, Tensor::sub_scalar, |a, b| a - b),
        ("mul", Tensor::mul, Tensor::mul_scalar, |a, b| a * b),
        ("div", Tensor::div, Tensor::div_scalar, |a, b| a / b),
        ("pow", Tensor::pow, Tensor::pow_scalar, f64::powf),
        ("maximum", Tensor::maximum, Tensor::maximum_scalar, nan_max),
        ("minimum", Tensor::minimum, Tensor::minimum_scalar, nan_min),
        ("eq", Tensor::eq, Tensor::eq_scalar, |a, b| mask(a == b)),
        ("ne", Tensor::ne, Tensor::ne_scalar, |a, b| mask(a != b)),
        ("lt", Tensor::lt, Tensor::lt_scalar, |a, b| mask(a < b)),
        ("le", Tensor::le, Tensor::le_scalar, |a, b| mask(a <= b)),
        ("gt", Tensor::gt, Tensor::gt_scalar, |a, b| mask(a > b)),
        ("ge", Tensor::ge, Tensor::ge_scalar, |a, b| mask(a >= b)),
    ]
}

fn check_binary<E: Float>(out: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let use_discrete = g.coin();
    let sm = smooth(-2.0, 2.0);
    let draw: Draw = if use_discrete { &discrete } else { &sm };
    let (sa, sb) = (operand_shape(out, g), operand_shape(out, g));
    let (a, va) = build::<E>(&sa, 3, g, draw);
    let (b, vb) = build::<E>(&sb, 3, g, draw);
    for (name, op, _, f) in binary_table::<E>() {
        let what = format!("{name} {sa:?} x {sb:?} ({:?}, strides {:?} and {:?})", E::DTYPE, a.strides(), b.strides());
        let (shape, want) = ref_binary(&va, &sa, &vb, &sb, &|x, y| rd::<E>(f(x, y)));
        let rt = if name == "pow" { ftol::<E>() } else { tol::<E>() };
        check(&op(&a, &b), &shape, &want, rt, 0.0, &what)?;
        // the mirror image broadcasts the other way
        let (shape, want) = ref_binary(&vb, &sb, &va, &sa, &|x, y| rd::<E>(f(x, y)));
        check(&op(&b, &a), &shape, &want, rt, 0.0, &format!("{what}, operands swapped"))?;
    }
    // inputs are untouched
    check(&a, &sa, &va, 0.0, 0.0, "lhs after the ops")?;
    check(&b, &sb, &vb, 0.0, 0.0, "rhs after the ops")?;
    Ok(())
}

fn check_scalar_forms<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let use_discrete = g.coin();
    let sm = smooth(-2.0, 2.0);
    let draw: Draw = if use_discrete { &discrete } else { &sm };
    let (a, va) = build::<E>(shape, 3, g, draw);
    let s = rd::<E>(draw(g));
    for (name, _, op, f) in binary_table::<E>() {
        let what = format!("{name}_scalar({s}) on {shape:?} ({:?}, strides {:?})", E::DTYPE, a.strides());
        let want: Vec<f64> = va.iter().map(|&x| rd::<E>(f(x, s))).collect();
        let rt = if name == "pow" { ftol::<E>() } else { tol::<E>() };
        check(&op(&a, E::from_f64(s)), shape, &want, rt, 0.0, &what)?;
    }
    let want: Vec<f64> = va.iter().map(|&x| rd::<E>(s - x)).collect();
    check(&a.rsub_scalar(E::from_f64(s)), shape, &want, tol::<E>(), 0.0, "rsub_scalar")?;
    let want: Vec<f64> = va.iter().map(|&x| rd::<E>(s / x)).collect();
    check(&a.rdiv_scalar(E::from_f64(s)), shape, &want, tol::<E>(), 0.0, "rdiv_scalar")?;
    // a one-element tensor broadcasts like a scalar, on either side
    let st = Tensor::<E>::from_vec(vec![E::from_f64(s)], &[1]);
    let (bs, want) = ref_binary(&va, shape, &[s], &[1], &|x, y| rd::<E>(x - y));
    check(&a.sub(&st), &bs, &want, tol::<E>(), 0.0, "sub with a [1] tensor")?;
    let (bs, want) = ref_binary(&[s], &[1], &va, shape, &|x, y| rd::<E>(x - y));
    check(&st.sub(&a), &bs, &want, tol::<E>(), 0.0, "[1] tensor sub")?;
    let s0 = Tensor::<E>::scalar(E::from_f64(s));
    let (bs, want) = ref_binary(&[s], &[], &va, shape, &|x, y| rd::<E>(x / y));
    check(&s0.div(&a), &bs, &want, tol::<E>(), 0.0, "0-d tensor div")?;
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn binary_ops_broadcast_like_loops(out in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        check_binary::<f64>(&out, seed)?;
        check_binary::<f32>(&out, seed)?;
    }

    #[test]
    fn scalar_forms_match_loops(shape in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        check_scalar_forms::<f64>(&shape, seed)?;
        check_scalar_forms::<f32>(&shape, seed)?;
    }

    #[test]
    fn std_ops_match_loops(out in prop::collection::vec(1usize..=3, 0..=3), seed: u64) {
        let g = &mut Gen(seed);
        let sm = smooth(-2.0, 2.0);
        let (sa, sb) = (operand_shape(&out, g), operand_shape(&out, g));
        {
            let (a, va) = build::<f32>(&sa, 2, g, &sm);
            let (b, vb) = build::<f32>(&sb, 2, g, &sm);
            let r = |f: fn(f64, f64) -> f64| ref_binary(&va, &sa, &vb, &sb, &move |x, y| rd::<f32>(f(x, y)));
            let t = tol::<f32>();
            let (s, w) = r(|x, y| x + y);
            check(&(&a + &b), &s, &w, t, 0.0, "&a + &b")?;
            check(&(a.clone() + b.clone()), &s, &w, t, 0.0, "a + b")?;
            check(&(&a + b.clone()), &s, &w, t, 0.0, "&a + b")?;
            check(&(a.clone() + &b), &s, &w, t, 0.0, "a + &b")?;
            let (s, w) = r(|x, y| x - y);
            check(&(&a - &b), &s, &w, t, 0.0, "&a - &b")?;
            let (s, w) = r(|x, y| x * y);
            check(&(&a * &b), &s, &w, t, 0.0, "&a * &b")?;
            let (s, w) = r(|x, y| x / y);
            check(&(&a / &b), &s, &w, t, 0.0, "&a / &b")?;
            let w: Vec<f64> = va.iter().map(|&x| rd::<f32>(x * 3.0)).collect();
            check(&(&a * 3.0f32), &sa, &w, t, 0.0, "&a * 3")?;
            let w: Vec<f64> = va.iter().map(|&x| rd::<f32>(x - 0.5)).collect();
            check(&(a.clone() - 0.5f32), &sa, &w, t, 0.0, "a - 0.5")?;
            let w: Vec<f64> = va.iter().map(|&x| -x).collect();
            check(&(-&a), &sa, &w, 0.0, 0.0, "-&a")?;
            check(&(-a.clone()), &sa, &w, 0.0, 0.0, "-a")?;
        }
        {
            let (a, va) = build::<f64>(&sa, 2, g, &sm);
            let (b, vb) = build::<f64>(&sb, 2, g, &sm);
            let (s, w) = ref_binary(&va, &sa, &vb, &sb, &|x, y| x / y);
            check(&(&a / &b), &s, &w, 0.0, 0.0, "&a / &b (f64)")?;
            let (s, w) = ref_binary(&va, &sa, &vb, &sb, &|x, y| x - y);
            check(&(a.clone() - b.clone()), &s, &w, 0.0, 0.0, "a - b (f64)")?;
            let w: Vec<f64> = va.iter().map(|&x| x / 4.0 + 1.0).collect();
            check(&(&a / 4.0 + 1.0), &sa, &w, 0.0, 0.0, "&a / 4 + 1 (f64)")?;
        }
    }
}

// ---------------------------------------------------------------------------- in place

fn check_in_place<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let sm = smooth(-2.0, 2.0);
    let away_from_zero = |g: &mut Gen| {
        let m = g.uniform(0.5, 2.0);
        if g.coin() {
            m
        } else {
            -m
        }
    };
    let (base, vbase) = build::<E>(shape, 3, g, &sm);
    let sb = operand_shape(shape, g);
    let (b, vb) = build::<E>(&sb, 3, g, &sm);
    let s1 = operand_shape(shape, g);
    let (t1, v1) = build::<E>(&s1, 2, g, &sm);
    let s2 = operand_shape(shape, g);
    let (t2, v2) = build::<E>(&s2, 2, g, &away_from_zero);
    let alpha = rd::<E>(g.uniform(-2.0, 2.0));
    let beta = rd::<E>(g.uniform(-2.0, 2.0));
    let (ea, eb) = (E::from_f64(alpha), E::from_f64(beta));
    let n = vbase.len();
    let rhs = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        (0..n).map(|i| rd::<E>(f(vbase[i], vb[bpos(&unravel(i, shape), &sb)]))).collect()
    };
    // t1 * t2 and t1 / t2 as kiln forms them (rounded to E), broadcast to `shape`
    let prod = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let idx = unravel(i, shape);
                rd::<E>(f(v1[bpos(&idx, &s1)], v2[bpos(&idx, &s2)]))
            })
            .collect()
    };
    let p_mul = prod(&|x, y| x * y);
    let p_div = prod(&|x, y| x / y);
    let (lo, hi) = (g.uniform(-1.5, 0.0), g.uniform(0.0, 1.5));
    let bounds = [(Some(lo), Some(hi)), (Some(lo), None), (None, Some(hi)), (None, None)][g.below(4)];
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Box<dyn Fn(&mut Tensor<E>)>, Vec<f64>, f64)> = vec![
        ("add_", Box::new(|t| t.add_(&b)), rhs(&|x, y| x + y), tol::<E>()),
        ("sub_", Box::new(|t| t.sub_(&b)), rhs(&|x, y| x - y), tol::<E>()),
        ("mul_", Box::new(|t| t.mul_(&b)), rhs(&|x, y| x * y), tol::<E>()),
        ("axpy_", Box::new(|t| t.axpy_(ea, &b)), rhs(&|x, y| x + alpha * y), 4.0 * tol::<E>()),
        ("scale_add_", Box::new(|t| t.scale_add_(eb, ea, &b)), rhs(&|x, y| x * beta + alpha * y), 8.0 * tol::<E>()),
        (
            "addcmul_",
            Box::new(|t| t.addcmul_(ea, &t1, &t2)),
            (0..n).map(|i| rd::<E>(vbase[i] + alpha * p_mul[i])).collect(),
            8.0 * tol::<E>(),
        ),
        (
            "addcdiv_",
            Box::new(|t| t.addcdiv_(ea, &t1, &t2)),
            (0..n).map(|i| rd::<E>(vbase[i] + alpha * p_div[i])).collect(),
            8.0 * tol::<E>(),
        ),
        ("copy_", Box::new(|t| t.copy_(&b)), rhs(&|_, y| y), 0.0),
        ("fill_", Box::new(|t| t.fill_(ea)), vec![alpha; n], 0.0),
        ("zero_", Box::new(|t| t.zero_()), vec![0.0; n], 0.0),
        (
            "add_scalar_",
            Box::new(|t| t.add_scalar_(ea)),
            vbase.iter().map(|&x| rd::<E>(x + alpha)).collect(),
            tol::<E>(),
        ),
        (
            "mul_scalar_",
            Box::new(|t| t.mul_scalar_(ea)),
            vbase.iter().map(|&x| rd::<E>(x * alpha)).collect(),
            tol::<E>(),
        ),
        (
            "clamp_",
            Box::new(move |t| t.clamp_(bounds.0, bounds.1)),
            vbase
                .iter()
                .map(|&x| {
                    let x = bounds.0.map_or(x, |l| if x < rd::<E>(l) { rd::<E>(l) } else { x });
                    bounds.1.map_or(x, |h| if x > rd::<E>(h) { rd::<E>(h) } else { x })
                })
                .collect(),
            0.0,
        ),
    ];
    for (name, op, want, rt) in cases {
        let what = format!("{name} on {shape:?} (strides {:?}) with rhs {sb:?} ({:?})", base.strides(), E::DTYPE);
        let mut t = base.clone();
        op(&mut t);
        // compound updates round more than once; operands are at most ~8 in magnitude
        check(&t, shape, &want, rt, 8.0 * rt, &what)?;
        // copy on write: the tensor it was cloned from, and the operands, never change
        check(&base, shape, &vbase, 0.0, 0.0, &format!("{what}: the original"))?;
        check(&b, &sb, &vb, 0.0, 0.0, &format!("{what}: the rhs"))?;
    }
    // div_ with a divisor kept away from zero, broadcast from s2
    let mut t = base.clone();
    t.div_(&t2);
    let want: Vec<f64> = (0..n).map(|i| rd::<E>(vbase[i] / v2[bpos(&unravel(i, shape), &s2)])).collect();
    check(&t, shape, &want, tol::<E>(), 0.0, &format!("div_ on {shape:?} by {s2:?} ({:?})", E::DTYPE))?;
    check(&base, shape, &vbase, 0.0, 0.0, "div_: the original")?;
    // in place with the tensor itself (aliased storage) as the right-hand side
    let mut t = base.clone();
    let same = t.clone();
    t.add_(&same);
    let want: Vec<f64> = vbase.iter().map(|&x| rd::<E>(x + x)).collect();
    check(&t, shape, &want, tol::<E>(), 0.0, "x.add_(x)")?;
    check(&same, shape, &vbase, 0.0, 0.0, "x.add_(x): the rhs")?;
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn in_place_ops_with_broadcast_rhs_match_loops(shape in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        check_in_place::<f64>(&shape, seed)?;
        check_in_place::<f32>(&shape, seed)?;
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// With the fan-out threshold at one element, every op above takes its parallel path
    /// (ndarray's parallel Zip over strided, broadcast views; chunked slices; in place).
    #[test]
    fn parallel_paths_match_loops(out in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
        kiln_tensor::set_num_threads(2);
        kiln_tensor::parallel::with_elementwise_threshold(1, || -> Result<(), TestCaseError> {
            check_binary::<f64>(&out, seed)?;
            check_scalar_forms::<f32>(&out, seed)?;
            check_unary::<f32>(&out, seed)?;
            check_in_place::<f64>(&out, seed)?;
            check_where::<f32>(&out, seed)
        })?;
    }
}

#[test]
fn in_place_on_a_unique_contiguous_tensor_does_not_reallocate() {
    let mut a = Tensor::<f32>::from_vec((0..12).map(|i| i as f32).collect(), &[3, 4]);
    let b = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[4]);
    let p = a.as_slice().unwrap().as_ptr();
    a.add_(&b);
    a.axpy_(0.5, &b);
    a.scale_add_(0.9, 0.1, &b.unsqueeze(0));
    a.mul_scalar_(2.0);
    a.clamp_(Some(-100.0), Some(100.0));
    a.copy_(&b);
    assert_eq!(p, a.as_slice().unwrap().as_ptr(), "an in-place op on unshared storage reallocated");
    assert_eq!(a.to_vec(), [1.0, 2.0, 3.0, 4.0].repeat(3));
}

// ---------------------------------------------------------------------------- unary

fn erf(x: f64) -> f64 {
    // erf x = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)): all terms positive,
    // so it is accurate for every x (Abramowitz & Stegun 7.1.6).
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

type UnaryCase<E> = (String, Box<dyn Fn(&Tensor<E>) -> Tensor<E>>, Box<dyn Fn(f64) -> f64>);

fn unary_table<E: Float>(g: &mut Gen) -> Vec<UnaryCase<E>> {
    fn case<E: Float>(
        name: impl Into<String>,
        k: impl Fn(&Tensor<E>) -> Tensor<E> + 'static,
        f: impl Fn(f64) -> f64 + 'static,
    ) -> UnaryCase<E> {
        (name.into(), Box::new(k), Box::new(f))
    }
    let slope = [0.01, 0.2, 1.5][g.below(3)];
    let alpha = [1.0, 0.5, 2.0][g.below(3)];
    let (beta, threshold) = [(1.0, 20.0), (2.0, 5.0), (0.5, 1.0)][g.below(3)];
    let e = [2.0, 3.0, 0.5, -1.0, 1.5, 0.0][g.below(6)];
    let (lo, hi) = (rd::<E>(g.uniform(-3.0, 0.0)), rd::<E>(g.uniform(0.0, 3.0)));
    let bounds = [(Some(lo), Some(hi)), (Some(lo), None), (None, Some(hi))][g.below(3)];
    vec![
        case("neg", |t| t.neg(), |x| -x),
        case("exp", |t| t.exp(), f64::exp),
        case("expm1", |t| t.expm1(), f64::exp_m1),
        case("log", |t| t.log(), f64::ln),
        case("log1p", |t| t.log1p(), f64::ln_1p),
        case("sqrt", |t| t.sqrt(), f64::sqrt),
        case("rsqrt", |t| t.rsqrt(), |x| 1.0 / x.sqrt()),
        case("square", |t| t.square(), |x| x * x),
        case("reciprocal", |t| t.reciprocal(), |x| 1.0 / x),
        case("abs", |t| t.abs(), f64::abs),
        case(
            "sign",
            |t| t.sign(),
            |x| {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            },
        ),
        case("sin", |t| t.sin(), f64::sin),
        case("cos", |t| t.cos(), f64::cos),
        case("tanh", |t| t.tanh(), f64::tanh),
        case("sigmoid", |t| t.sigmoid(), sigmoid),
        case("relu", |t| t.relu(), |x| if x > 0.0 { x } else { 0.0 }),
        case(
            format!("leaky_relu({slope})"),
            move |t| t.leaky_relu(slope),
            move |x| if x > 0.0 { x } else { rd::<E>(slope) * x },
        ),
        case(format!("elu({alpha})"), move |t| t.elu(alpha), move |x| if x > 0.0 { x } else { alpha * x.exp_m1() }),
        case("gelu", |t| t.gelu(), |x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))),
        case(
            "gelu_tanh",
            |t| t.gelu_tanh(),
            |x| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
        ),
        case("silu", |t| t.silu(), |x| x * sigmoid(x)),
        case(
            format!("softplus({beta}, {threshold})"),
            move |t| t.softplus(beta, threshold),
            move |x| {
                if beta * x > threshold {
                    x
                } else {
                    (beta * x).exp().ln_1p() / beta
                }
            },
        ),
        case(
            format!("clamp{bounds:?}"),
            move |t| t.clamp(bounds.0, bounds.1),
            move |x| {
                let x = bounds.0.map_or(x, |l| x.max(l));
                bounds.1.map_or(x, |h| x.min(h))
            },
        ),
        case(format!("powf({e})"), move |t| t.powf(e), move |x| x.powf(e)),
    ]
}

fn check_unary<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    // mostly smooth values in [-6, 6], with exact zeros and small integers mixed in
    let draw = |g: &mut Gen| match g.below(8) {
        0 => 0.0,
        1 => g.below(5) as f64 - 2.0,
        _ => g.uniform(-6.0, 6.0),
    };
    let (a, va) = build::<E>(shape, 3, g, &draw);
    for (name, k, f) in unary_table::<E>(g) {
        let what = format!("{name} on {shape:?} (strides {:?}, {:?})", a.strides(), E::DTYPE);
        let want: Vec<f64> = va.iter().map(|&x| f(x)).collect();
        check(&k(&a), shape, &want, ftol::<E>(), ftol::<E>(), &what)?;
    }
    check(&a, shape, &va, 0.0, 0.0, "input after the unary ops")
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn unary_functions_match_scalar_formulas(shape in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        check_unary::<f64>(&shape, seed)?;
        check_unary::<f32>(&shape, seed)?;
    }
}

fn check_extremes<E: Float>() {
    let x = Tensor::<E>::from_vec([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0].map(E::from_f64).to_vec(), &[7]);
    let finite = |t: Tensor<E>, name: &str| {
        let v = vals(&t);
        assert!(v.iter().all(|x| x.is_finite()), "{name} at extreme inputs ({:?}): {v:?}", E::DTYPE);
        v
    };
    let s = finite(x.sigmoid(), "sigmoid");
    assert_eq!(s[0], 0.0);
    assert_eq!(s[6], 1.0);
    assert!(s.windows(2).all(|w| w[0] <= w[1]), "sigmoid not monotone: {s:?}");
    let sp = finite(x.softplus(1.0, 20.0), "softplus");
    assert_eq!(sp[6], 1000.0);
    assert_eq!(sp[5], 100.0);
    assert!(sp[0] >= 0.0 && sp[0] < 1e-30, "softplus(-1000) = {}", sp[0]);
    assert!((sp[3] - std::f64::consts::LN_2).abs() < 1e-6);
    // beta large enough that beta * x overflows exp without the stable form
    let spb = finite(x.softplus(10.0, 1e9), "softplus(beta 10, no threshold)");
    assert!((spb[6] - 1000.0).abs() < 1e-3, "{spb:?}");
    assert!(spb[0] >= 0.0 && spb[0] < 1e-30, "{spb:?}");
    let si = finite(x.silu(), "silu");
    assert_eq!(si[6], 1000.0);
    assert!(si[0].abs() < 1e-30);
    let t = finite(x.tanh(), "tanh");
    assert_eq!((t[0], t[6]), (-1.0, 1.0));
    let g = finite(x.gelu(), "gelu");
    assert_eq!((g[0].abs(), g[6]), (0.0, 1000.0));
    let gt = finite(x.gelu_tanh(), "gelu_tanh");
    assert_eq!((gt[0].abs(), gt[6]), (0.0, 1000.0));
    let e = finite(x.elu(1.0), "elu");
    assert_eq!((e[0], e[6]), (-1.0, 1000.0));
}

#[test]
fn unary_functions_are_stable_at_large_magnitudes() {
    check_extremes::<f32>();
    check_extremes::<f64>();
}

/// PyTorch propagates NaN through every activation (`torch.relu(nan)` is nan; only `sign`
/// maps it to 0).
fn nan_swallowers<E: Float>() -> Vec<String> {
    let x = Tensor::<E>::from_vec(vec![E::nan(), E::one()], &[2]);
    let mut bad = vec![];
    for seed in 0..16 {
        let mut g = Gen(seed);
        for (name, k, _) in unary_table::<E>(&mut g) {
            if name == "sign" || name.starts_with("powf(0)") {
                continue;
            }
            let y = vals(&k(&x));
            let entry = format!("{name}(NaN) = {} ({:?})", y[0], E::DTYPE);
            if !y[0].is_nan() && !bad.contains(&entry) {
                bad.push(entry);
            }
        }
    }
    bad
}

#[test]
fn unary_functions_propagate_nan() {
    let mut bad = nan_swallowers::<f32>();
    bad.extend(nan_swallowers::<f64>());
    assert!(bad.is_empty(), "PyTorch gives NaN for these: {bad:?}");
}

#[test]
fn clamp_with_min_above_max_gives_max_like_pytorch() {
    // torch.clamp: "If min is greater than max, sets all elements in input to the value of max."
    let x = Tensor::<f64>::from_vec(vec![-5.0, 0.0, 5.0], &[3]);
    assert_eq!(x.clamp(Some(1.0), Some(-1.0)).to_vec(), vec![-1.0, -1.0, -1.0]);
    let mut y = x.clone();
    y.clamp_(Some(1.0), Some(-1.0));
    assert_eq!(y.to_vec(), vec![-1.0, -1.0, -1.0]);
}

#[test]
fn maximum_and_minimum_propagate_nan() {
    let a = Tensor::<f64>::from_vec(vec![f64::NAN, 1.0, 2.0], &[3]);
    let b = Tensor::<f64>::from_vec(vec![0.0, f64::NAN, 1.0], &[3]);
    for t in [a.maximum(&b), a.minimum(&b)] {
        let v = t.to_vec();
        assert!(v[0].is_nan() && v[1].is_nan(), "{v:?}");
    }
    assert_eq!(a.maximum(&b).to_vec()[2], 2.0);
    assert_eq!(a.minimum(&b).to_vec()[2], 1.0);
    assert!(a.maximum_scalar(0.0).to_vec()[0].is_nan());
}

// ---------------------------------------------------------------------------- where / masked_fill

fn check_where<E: Float>(out: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let sm = smooth(-2.0, 2.0);
    let (sm_, sa, sb) = (operand_shape(out, g), operand_shape(out, g), operand_shape(out, g));
    let (m, vm) = build::<E>(&sm_, 3, g, &discrete);
    let (a, va) = build::<E>(&sa, 3, g, &sm);
    let (b, vb) = build::<E>(&sb, 3, g, &sm);
    let shape = bshape(&bshape(&sm_, &sa), &sb);
    let n: usize = shape.iter().product();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let idx = unravel(i, &shape);
            if vm[bpos(&idx, &sm_)] != 0.0 {
                va[bpos(&idx, &sa)]
            } else {
                vb[bpos(&idx, &sb)]
            }
        })
        .collect();
    check(&a.where_(&m, &b), &shape, &want, 0.0, 0.0, &format!("where_ mask {sm_:?} self {sa:?} other {sb:?}"))?;
    // masked_fill: the mask broadcasts to the tensor's shape
    let (x, vx) = build::<E>(out, 3, g, &sm);
    let sk = operand_shape(out, g);
    let (k, vk) = build::<E>(&sk, 3, g, &discrete);
    let value = rd::<E>(g.uniform(-9.0, 9.0));
    let n: usize = out.iter().product();
    let want: Vec<f64> = (0..n).map(|i| if vk[bpos(&unravel(i, out), &sk)] != 0.0 { value } else { vx[i] }).collect();
    check(&x.masked_fill(&k, E::from_f64(value)), out, &want, 0.0, 0.0, &format!("masked_fill {out:?} mask {sk:?}"))?;
    // comparison masks feed masked_fill, as attention masks do
    let want: Vec<f64> = vx.iter().map(|&v| if v > 0.5 { value } else { v }).collect();
    check(
        &x.masked_fill(&x.gt_scalar(E::from_f64(0.5)), E::from_f64(value)),
        out,
        &want,
        0.0,
        0.0,
        "masked_fill by gt mask",
    )?;
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn where_and_masked_fill_match_loops(out in prop::collection::vec(1usize..=4, 0..=4), seed: u64) {
        check_where::<f64>(&out, seed)?;
        check_where::<f32>(&out, seed)?;
    }
}

// ---------------------------------------------------------------------------- edges and errors

#[test]
fn zero_size_dims_broadcast() {
    let e = Tensor::<f64>::zeros(&[0, 3]);
    let r = Tensor::<f64>::ones(&[3]);
    assert_eq!(e.add(&r).shape(), &[0, 3]);
    assert_eq!(r.mul(&e).shape(), &[0, 3]);
    let c = Tensor::<f64>::ones(&[2, 1]);
    assert_eq!(c.add(&Tensor::zeros(&[2, 0])).shape(), &[2, 0]);
    assert_eq!(Tensor::<f32>::ones(&[1]).sub(&Tensor::zeros(&[0])).shape(), &[0]);
    assert_eq!(e.exp().shape(), &[0, 3]);
    let mut z = Tensor::<f64>::zeros(&[0, 3]);
    z.add_(&r);
    assert_eq!(z.shape(), &[0, 3]);
}

#[test]
fn large_inputs_take_the_parallel_paths_and_agree_with_loops() {
    // split across threads (forced), with broadcasting, a transposed
    // operand, contiguous same-shape operands and the in-place forms, at 1 and 2 threads
    let (sa, sb) = ([48usize, 1, 33], [1usize, 25, 33]);
    let mut g = Gen(7);
    let va: Vec<f64> = (0..48 * 33).map(|_| g.uniform(-1.0, 1.0)).collect();
    let vb: Vec<f64> = (0..25 * 33).map(|_| g.uniform(-1.0, 1.0)).collect();
    let a = Tensor::<f64>::from_vec(va.clone(), &sa);
    let b = Tensor::<f64>::from_vec(vb.clone(), &sb);
    let (shape, want) = ref_binary(&va, &sa, &vb, &sb, &|x, y| x * y + x);
    let full: Vec<f64> = (0..48 * 25 * 33).map(|_| g.uniform(-1.0, 1.0)).collect();
    let f = Tensor::<f64>::from_vec(full.clone(), &[48, 25, 33]);
    let ft = Tensor::<f64>::from_vec(full.clone(), &[33, 25, 48]).permute(&[2, 1, 0]);
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    // the split is forced (these sizes are below the default threshold)
    kiln_tensor::parallel::with_elementwise_threshold(1 << 12, || {
        for threads in [1, 2] {
            kiln_tensor::set_num_threads(threads);
            let got = a.mul(&b).add(&a);
            assert_eq!(got.shape(), shape.as_slice());
            assert_eq!(got.to_vec(), want, "broadcast mul/add at {threads} threads");
            let s = f.add(&f).to_vec();
            assert!(s.iter().zip(&full).all(|(x, y)| *x == y + y));
            let e = f.tanh().to_vec();
            assert!(e.iter().zip(&full).all(|(x, y)| *x == y.tanh()));
            let mut h = f.clone();
            h.add_(&b);
            let hv = h.to_vec();
            assert!(
                (0..full.len()).all(|i| hv[i] == full[i] + vb[bpos(&unravel(i, &[48, 25, 33]), &sb)]),
                "add_ with a broadcast rhs at {threads} threads"
            );
            let mut k = f.clone();
            k.mul_(&f);
            assert!(k.to_vec().iter().zip(&full).all(|(x, y)| *x == y * y), "mul_ by itself at {threads} threads");
            let tv = ft.sub(&f).to_vec();
            assert!((0..full.len()).all(|i| {
                let idx = unravel(i, &[48, 25, 33]);
                tv[i] == full[ravel(&[idx[2], idx[1], idx[0]], &[33, 25, 48])] - full[i]
            }));
        }
    });
}

#[test]
fn shape_mismatch_panics_name_the_op_and_both_shapes() {
    let a = Tensor::<f32>::zeros(&[2, 3]);
    let b = Tensor::<f32>::zeros(&[4]);
    for (name, op, _, _) in binary_table::<f32>() {
        let msg = panic_message(|| {
            let _ = op(&a, &b);
        })
        .unwrap_or_else(|| panic!("{name}: [2, 3] with [4] did not panic"));
        let want = format!("{name}: shapes [2, 3] and [4] cannot be broadcast");
        assert!(msg.contains(&want), "{name}: message {msg:?} does not contain {want:?}");
    }
    let msg = panic_message(|| {
        let _ = &a + &b;
    })
    .unwrap();
    assert!(msg.contains("add: shapes [2, 3] and [4] cannot be broadcast"), "{msg}");
    let msg = panic_message(|| {
        let _ = Tensor::<f64>::zeros(&[2, 3, 4]).sub(&Tensor::zeros(&[3, 2, 4]));
    })
    .unwrap();
    assert!(msg.contains("sub: shapes [2, 3, 4] and [3, 2, 4] cannot be broadcast"), "{msg}");
    // where_ and masked_fill
    let msg = panic_message(|| {
        let _ = a.where_(&Tensor::zeros(&[5]), &a);
    })
    .unwrap();
    assert!(msg.contains("where_") && msg.contains("[5]") && msg.contains("[2, 3]"), "{msg}");
    let msg = panic_message(|| {
        let _ = a.masked_fill(&b, 1.0);
    })
    .unwrap();
    assert!(msg.contains("masked_fill") && msg.contains("[4]") && msg.contains("[2, 3]"), "{msg}");
    let msg = panic_message(|| {
        let _ = Tensor::<f32>::zeros(&[3]).masked_fill(&Tensor::zeros(&[2, 3]), 1.0);
    })
    .unwrap();
    assert!(msg.contains("masked_fill") && msg.contains("[3]") && msg.contains("[2, 3]"), "{msg}");
    // in place: incompatible, and compatible but larger than self
    #[allow(clippy::type_complexity)]
    let in_place: Vec<(&str, Box<dyn Fn(&mut Tensor<f32>, &Tensor<f32>)>)> = vec![
        ("add_", Box::new(|t, o| t.add_(o))),
        ("sub_", Box::new(|t, o| t.sub_(o))),
        ("mul_", Box::new(|t, o| t.mul_(o))),
        ("div_", Box::new(|t, o| t.div_(o))),
        ("axpy_", Box::new(|t, o| t.axpy_(2.0, o))),
        ("scale_add_", Box::new(|t, o| t.scale_add_(0.9, 0.1, o))),
        ("copy_", Box::new(|t, o| t.copy_(o))),
        ("addcmul_", Box::new(|t, o| t.addcmul_(1.0, o, o))),
        ("addcdiv_", Box::new(|t, o| t.addcdiv_(1.0, o, o))),
    ];
    for (name, op) in &in_place {
        for (self_shape, rhs_shape) in [(&[2usize, 3][..], &[4usize][..]), (&[3][..], &[2, 3][..])] {
            let msg = panic_message(std::panic::AssertUnwindSafe(|| {
                let mut t = Tensor::<f32>::zeros(self_shape);
                op(&mut t, &Tensor::zeros(rhs_shape));
            }))
            .unwrap_or_else(|| panic!("{name}: {self_shape:?} with {rhs_shape:?} did not panic"));
            assert!(
                msg.contains(name)
                    && msg.contains(&format!("{self_shape:?}"))
                    && msg.contains(&format!("{rhs_shape:?}")),
                "{name}: message {msg:?} does not name the op and both shapes {self_shape:?} {rhs_shape:?}"
            );
        }
    }
}

#[test]
fn the_layout_builder_makes_non_contiguous_views_with_the_stated_values() {
    // guards the suite itself: most inputs above must be strided views, and `build`'s
    // reference values must be what kiln reads through the view
    let mut g = Gen(11);
    let mut strided = 0;
    for _ in 0..200 {
        let shape: Vec<usize> = (0..1 + g.below(4)).map(|_| 2 + g.below(3)).collect();
        let (t, v) = build::<f64>(&shape, 3, &mut g, &|g: &mut Gen| g.uniform(-1.0, 1.0));
        if !t.is_contiguous() {
            strided += 1;
        }
        assert_eq!(t.shape(), shape.as_slice());
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(t.get(&unravel(i, &shape)), x);
        }
    }
    assert!(strided > 80, "only {strided} of 200 inputs were strided views");
}
