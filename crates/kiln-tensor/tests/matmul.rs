//! `matmul` checked against a naive triple loop, with PyTorch's rules: 1-D·1-D, 2-D·1-D,
//! 1-D·2-D, 2-D·2-D, batched with broadcast batch dims (`[2, 1, 3, 4] x [5, 4, 2]`), 1-D with
//! batched; operands transposed, sliced with a step, flipped (negative strides), expanded (zero
//! strides) and selected; f32 and f64; at 1 and 2 threads (small products and ones large enough
//! to split across the pool); and the shape-error messages.

use std::sync::Mutex;

use kiln_tensor::{DType, Float, Tensor};
use proptest::prelude::*;

mod common;
use common::*;

// ------------------------------------------------------------------------------------ helpers

/// The thread count is global: tests that set it run one at a time, so that a product meant to
/// run on two threads does.
static THREADS: Mutex<()> = Mutex::new(());

fn with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    kiln_tensor::set_num_threads(n);
    f()
}

fn eps<E: Float>() -> f64 {
    match E::DTYPE {
        DType::F32 => f32::EPSILON as f64,
        DType::F64 => f64::EPSILON,
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

/// The index into an operand of batch shape `shape` that batch index `idx` reads.
fn bidx(idx: &[usize], shape: &[usize]) -> Vec<usize> {
    let lead = idx.len() - shape.len();
    shape.iter().enumerate().map(|(d, &s)| if s == 1 { 0 } else { idx[lead + d] }).collect()
}

/// PyTorch's matmul as loops: the result's shape, its values, and for each value the sum of
/// `|a * b|` over its products (which bounds the rounding error).
fn naive_matmul(va: &[f64], sa: &[usize], vb: &[f64], sb: &[usize]) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let (a1, b1) = (sa.len() == 1, sb.len() == 1);
    let (m, k) = if a1 { (1, sa[0]) } else { (sa[sa.len() - 2], sa[sa.len() - 1]) };
    let n = if b1 { 1 } else { sb[sb.len() - 1] };
    let kb = if b1 { sb[0] } else { sb[sb.len() - 2] };
    assert_eq!(k, kb, "test bug: inner dims");
    let ba: &[usize] = if a1 { &[] } else { &sa[..sa.len() - 2] };
    let bb: &[usize] = if b1 { &[] } else { &sb[..sb.len() - 2] };
    let batch = bshape(ba, bb);
    let nb: usize = batch.iter().product();
    let at = |bi: &[usize], i: usize, p: usize| -> f64 {
        if a1 {
            va[p]
        } else {
            let mut idx = bidx(bi, ba);
            idx.extend([i, p]);
            va[ravel(&idx, sa)]
        }
    };
    let bt = |bi: &[usize], p: usize, j: usize| -> f64 {
        if b1 {
            vb[p]
        } else {
            let mut idx = bidx(bi, bb);
            idx.extend([p, j]);
            vb[ravel(&idx, sb)]
        }
    };
    let (mut vals, mut mags) = (vec![], vec![]);
    for b in 0..nb {
        let bi = unravel(b, &batch);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut g) = (0.0, 0.0);
                for p in 0..k {
                    let x = at(&bi, i, p) * bt(&bi, p, j);
                    s += x;
                    g += x.abs();
                }
                vals.push(s);
                mags.push(g);
            }
        }
    }
    let mut shape = batch;
    if !a1 {
        shape.push(m);
    }
    if !b1 {
        shape.push(n);
    }
    (shape, vals, mags)
}

fn check_product<E: Float>(
    a: &Tensor<E>,
    va: &[f64],
    b: &Tensor<E>,
    vb: &[f64],
    what: &str,
) -> Result<(), TestCaseError> {
    let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
    let (shape, want, mags) = naive_matmul(va, &sa, vb, &sb);
    let k = if sa.len() == 1 { sa[0] } else { sa[sa.len() - 1] } as f64;
    for threads in [1, 2] {
        let got = with_threads(threads, || a.matmul(b));
        let what = format!(
            "{what}: {sa:?} (strides {:?}) x {sb:?} (strides {:?}), {:?}, {threads} threads",
            a.strides(),
            b.strides(),
            E::DTYPE
        );
        prop_assert_eq!(got.shape(), shape.as_slice(), "{}: shape", what);
        let g = vals(&got);
        for (i, ((&x, &w), &mag)) in g.iter().zip(&want).zip(&mags).enumerate() {
            let atol = 2.0 * (k + 1.0) * eps::<E>() * mag;
            prop_assert!(
                close(x, w, 0.0, atol),
                "{}: element {} (index {:?}) is {}, want {}",
                what,
                i,
                unravel(i, &shape),
                x,
                w
            );
        }
    }
    // the operands are only read
    check(a, &sa, va, 0.0, 0.0, "lhs after matmul")?;
    check(b, &sb, vb, 0.0, 0.0, "rhs after matmul")
}

/// An operand shape whose batch dims broadcast to `batch` (leading dims dropped, some set to 1).
fn batch_of(batch: &[usize], g: &mut Gen) -> Vec<usize> {
    let lead = if g.coin() { g.below(batch.len() + 1) } else { 0 };
    batch[lead..].iter().map(|&d| if g.below(3) == 0 { 1 } else { d }).collect()
}

fn check_random<E: Float>(
    batch: &[usize],
    m: usize,
    k: usize,
    n: usize,
    a1: bool,
    b1: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let sa = if a1 { vec![k] } else { [batch_of(batch, g), vec![m, k]].concat() };
    let sb = if b1 { vec![k] } else { [batch_of(batch, g), vec![k, n]].concat() };
    let draw = |g: &mut Gen| g.uniform(-1.0, 1.0);
    let (a, va) = build::<E>(&sa, 3, g, &draw);
    let (b, vb) = build::<E>(&sb, 3, g, &draw);
    check_product(&a, &va, &b, &vb, "random layouts")
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn matmul_matches_the_triple_loop(
        batch in prop::collection::vec(1usize..=3, 0..=3),
        m in 1usize..=5, k in 1usize..=5, n in 1usize..=5,
        a1 in prop::bool::weighted(0.2), b1 in prop::bool::weighted(0.2),
        seed: u64,
    ) {
        let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
        check_random::<f64>(&batch, m, k, n, a1, b1, seed)?;
        check_random::<f32>(&batch, m, k, n, a1, b1, seed)?;
    }

    /// With the GEMM threshold at one multiply-add, small products take the parallel paths
    /// (batches across the pool, and the row/column split of one product).
    #[test]
    fn matmul_parallel_paths_match_the_triple_loop(
        batch in prop::collection::vec(1usize..=3, 0..=3),
        m in 1usize..=40, k in 1usize..=6, n in 1usize..=40,
        a1 in prop::bool::weighted(0.1), b1 in prop::bool::weighted(0.1),
        seed: u64,
    ) {
        let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
        kiln_tensor::parallel::with_gemm_threshold(1, || -> Result<(), TestCaseError> {
            check_random::<f64>(&batch[batch.len().min(1)..], m, k, n, a1, b1, seed)?;
            check_random::<f32>(&batch, m.min(8), k, n.min(8), a1, b1, seed)
        })?;
    }
}

fn run_cases<E: Float>() {
    // each of PyTorch's matmul cases, with many layouts of each operand
    let cases: &[(&[usize], &[usize], &[usize])] = &[
        (&[3], &[3], &[]),                          // dot
        (&[2, 3], &[3], &[2]),                      // matrix · vector
        (&[3], &[3, 4], &[4]),                      // vector · matrix
        (&[2, 3], &[3, 4], &[2, 4]),                // matrix · matrix
        (&[2, 1, 3, 4], &[5, 4, 2], &[2, 5, 3, 2]), // broadcast batch dims
        (&[3], &[2, 3, 4], &[2, 4]),                // vector · batched
        (&[2, 3, 4], &[4], &[2, 3]),                // batched · vector
        (&[2, 3, 4], &[4, 5], &[2, 3, 5]),          // batched · matrix
        (&[3, 4], &[2, 4, 5], &[2, 3, 5]),          // matrix · batched
        (&[1, 3, 4], &[6, 4, 1], &[6, 3, 1]),       // size-1 batch against 6, n = 1
        (&[1, 4], &[4, 1], &[1, 1]),                // outer sizes 1
        (&[4, 1], &[1, 5], &[4, 5]),                // k = 1
    ];
    let draw = |g: &mut Gen| g.uniform(-1.0, 1.0);
    for &(sa, sb, want) in cases {
        for seed in 0..24 {
            let g = &mut Gen(seed);
            let (a, va) = build::<E>(sa, if seed == 0 { 0 } else { 3 }, g, &draw);
            let (b, vb) = build::<E>(sb, if seed == 0 { 0 } else { 3 }, g, &draw);
            assert_eq!(a.matmul(&b).shape(), want, "{sa:?} x {sb:?}");
            if let Err(e) = check_product(&a, &va, &b, &vb, "PyTorch case") {
                panic!("{e}");
            }
        }
    }
}

#[test]
fn every_pytorch_matmul_case_on_strided_operands() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    run_cases::<f64>();
    run_cases::<f32>();
}

fn run_named_layouts<E: Float>() {
    // the layouts layers produce: x · W^T with W [out, in]; a sliced-with-step operand; a
    // flipped one; an expanded (stride 0) batch; a select of a batch
    let mut g = Gen(3);
    let mut r = |n: usize| -> Vec<f64> { (0..n).map(|_| rd::<E>(g.uniform(-1.0, 1.0))).collect() };
    let t = |v: &[f64], s: &[usize]| Tensor::<E>::from_vec(v.iter().map(|&x| E::from_f64(x)).collect(), s);
    let (vx, vw) = (r(4 * 6), r(5 * 6));
    let (x, w) = (t(&vx, &[4, 6]), t(&vw, &[5, 6]));
    let wt = w.t();
    let vwt: Vec<f64> = (0..30).map(|i| vw[(i % 5) * 6 + i / 5]).collect();
    assert!(!wt.is_contiguous());
    let must = |r: Result<(), TestCaseError>| {
        if let Err(e) = r {
            panic!("{e}")
        }
    };
    must(check_product(&x, &vx, &wt, &vwt, "x · W^T"));
    // every other column of a [4, 12] matrix as the [4, 6] lhs (row stride 12, column stride 2)
    let vbig = r(4 * 12);
    let xs = t(&vbig, &[4, 12]).slice(1, 0, 12, 2);
    let vxs: Vec<f64> = (0..24).map(|i| vbig[(i / 6) * 12 + (i % 6) * 2]).collect();
    must(check_product(&xs, &vxs, &wt, &vwt, "column slice with step 2 · W^T"));
    // rows 1, 4 of a [7, 6] as lhs, flipped along both dims (negative strides)
    let v7 = r(7 * 6);
    let xf = t(&v7, &[7, 6]).slice(0, 1, 7, 3).flip(&[0, 1]);
    let vxf: Vec<f64> = (0..12).map(|i| v7[[4, 1][i / 6] * 6 + (5 - i % 6)]).collect();
    must(check_product(&xf, &vxf, &wt, &vwt, "flipped, stepped lhs"));
    // one [6, 5] matrix expanded over a batch of 3 as the rhs
    let (va, vb) = (r(3 * 2 * 6), r(6 * 5));
    let a = t(&va, &[3, 2, 6]);
    let be = t(&vb, &[6, 5]).expand(&[3, 6, 5]);
    let vbe: Vec<f64> = (0..90).map(|i| vb[i % 30]).collect();
    must(check_product(&a, &va, &be, &vbe, "expanded batch rhs"));
    // a batch-transposed lhs: [2, 3, 6] read from a [6, 3, 2] buffer
    let vp = r(36);
    let ap = t(&vp, &[6, 3, 2]).permute(&[2, 1, 0]);
    let vap: Vec<f64> = (0..36)
        .map(|i| {
            let idx = unravel(i, &[2, 3, 6]);
            vp[ravel(&[idx[2], idx[1], idx[0]], &[6, 3, 2])]
        })
        .collect();
    must(check_product(&ap, &vap, &t(&vb, &[6, 5]), &vb, "permuted batched lhs"));
    // 1-D operands that are strided: a column of a matrix, and a reversed row
    let col = t(&v7, &[7, 6]).select(1, 2).narrow(0, 1, 6);
    let vcol: Vec<f64> = (1..7).map(|i| v7[i * 6 + 2]).collect();
    must(check_product(&x, &vx, &col, &vcol, "matrix · strided column"));
    let row = t(&v7, &[7, 6]).select(0, 3).flip(&[0]);
    let vrow: Vec<f64> = (0..6).map(|j| v7[3 * 6 + 5 - j]).collect();
    must(check_product(&row, &vrow, &col, &vcol, "dot of a reversed row and a column"));
}

#[test]
fn transposed_sliced_flipped_expanded_operands() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    run_named_layouts::<f64>();
    run_named_layouts::<f32>();
}

fn run_large<E: Float>() {
    // big enough for the pool: batches in parallel, a 2-D product split by rows, and a wide
    // short one split by columns; operands strided
    let mut g = Gen(9);
    let mut r = |n: usize| -> Vec<f64> { (0..n).map(|_| rd::<E>(g.uniform(-1.0, 1.0))).collect() };
    let t = |v: &[f64], s: &[usize]| Tensor::<E>::from_vec(v.iter().map(|&x| E::from_f64(x)).collect(), s);
    let must = |r: Result<(), TestCaseError>| {
        if let Err(e) = r {
            panic!("{e}")
        }
    };
    // [4, 64, 48] (a transposed buffer) x [48, 80]
    let va = r(4 * 48 * 64);
    let a = t(&va, &[4, 48, 64]).transpose(1, 2);
    let vat: Vec<f64> = (0..4 * 64 * 48)
        .map(|i| {
            let idx = unravel(i, &[4, 64, 48]);
            va[ravel(&[idx[0], idx[2], idx[1]], &[4, 48, 64])]
        })
        .collect();
    let vb = r(48 * 80);
    must(check_product(&a, &vat, &t(&vb, &[48, 80]), &vb, "batched, large"));
    // [130, 70] rows of a stepped buffer x [70, 90] transposed
    let vl = r(260 * 70);
    let l = t(&vl, &[260, 70]).slice(0, 1, 260, 2);
    let vls: Vec<f64> = (0..130 * 70).map(|i| vl[(1 + 2 * (i / 70)) * 70 + i % 70]).collect();
    let vr = r(90 * 70);
    let rt = t(&vr, &[90, 70]).t();
    let vrt: Vec<f64> = (0..70 * 90).map(|i| vr[(i % 90) * 70 + i / 90]).collect();
    must(check_product(&l, &vls, &rt, &vrt, "2-D, large, split by rows"));
    // [4, 64] x [64, 2000]: wide and short
    let (vw1, vw2) = (r(4 * 64), r(64 * 2000));
    must(check_product(&t(&vw1, &[4, 64]), &vw1, &t(&vw2, &[64, 2000]), &vw2, "wide, split by columns"));
}

#[test]
fn large_products_agree_at_one_and_two_threads() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    run_large::<f64>();
    run_large::<f32>();
}

#[test]
fn zero_size_products() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let z = |s: &[usize]| Tensor::<f64>::ones(s);
    // k = 0 gives zeros, like PyTorch
    let p = z(&[2, 0]).matmul(&z(&[0, 3]));
    assert_eq!(p.shape(), &[2, 3]);
    assert_eq!(p.to_vec(), vec![0.0; 6]);
    let d = z(&[0]).matmul(&z(&[0]));
    assert_eq!((d.shape(), d.item()), (&[] as &[usize], 0.0));
    assert_eq!(z(&[0, 3]).matmul(&z(&[3, 4])).shape(), &[0, 4]);
    assert_eq!(z(&[2, 3]).matmul(&z(&[3, 0])).shape(), &[2, 0]);
    assert_eq!(z(&[0, 2, 3]).matmul(&z(&[3, 4])).shape(), &[0, 2, 4]);
    let q = z(&[5, 2, 0]).matmul(&z(&[0, 3]));
    assert_eq!(q.to_vec(), vec![0.0; 30]);
}

#[test]
fn inner_dimension_mismatch_message_is_exact() {
    let msg = panic_message(|| {
        let _ = Tensor::<f32>::zeros(&[32, 784]).matmul(&Tensor::zeros(&[128, 10]));
    })
    .expect("matmul [32, 784] x [128, 10] must panic");
    assert_eq!(msg, "matmul: [32, 784] x [128, 10]: inner dimensions 784 and 128 differ");
    let msg = panic_message(|| {
        let _ = Tensor::<f64>::zeros(&[3]).matmul(&Tensor::zeros(&[4]));
    })
    .unwrap();
    assert_eq!(msg, "matmul: [3] x [4]: inner dimensions 3 and 4 differ");
    let msg = panic_message(|| {
        let _ = Tensor::<f64>::zeros(&[2, 3, 4]).matmul(&Tensor::zeros(&[5]));
    })
    .unwrap();
    assert_eq!(msg, "matmul: [2, 3, 4] x [5]: inner dimensions 4 and 5 differ");
    let msg = panic_message(|| {
        let _ = Tensor::<f64>::scalar(1.0).matmul(&Tensor::zeros(&[3]));
    })
    .unwrap();
    assert!(msg.starts_with("matmul: [] x [3]"), "{msg}");
}

#[test]
fn batch_mismatch_message_names_matmul_and_both_shapes() {
    // STYLE: shape errors name the op and both (operand) shapes
    let msg = panic_message(|| {
        let _ = Tensor::<f32>::zeros(&[2, 3, 4]).matmul(&Tensor::zeros(&[3, 4, 5]));
    })
    .expect("batch dims 2 and 3 must not broadcast");
    assert!(
        msg.starts_with("matmul") && msg.contains("[2, 3, 4]") && msg.contains("[3, 4, 5]"),
        "message {msg:?} does not name both operand shapes"
    );
}
