//! Copying ops checked against naive loops over row-major data: `cat stack split split_sizes
//! chunk index_select gather scatter_add index_add pad (constant, reflect, replicate) repeat
//! one_hot`, in f32 and f64, on contiguous and non-contiguous (permuted, sliced with a step,
//! flipped, expanded, selected) inputs, size-1 and size-0 dims included; and their error
//! messages.

use kiln_tensor::{Float, Indices, PadMode, Tensor};
use proptest::prelude::*;

mod common;
use common::*;

// ------------------------------------------------------------------------------------ helpers

fn smooth(g: &mut Gen) -> f64 {
    g.uniform(-5.0, 5.0)
}

/// Values of a row-major `shape` given by `f(index)`.
fn tabulate(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n).map(|i| f(&unravel(i, shape))).collect()
}

fn check_cat_stack<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let nd = shape.len();
    let d = g.below(nd);
    let count = 1 + g.below(3);
    // each part has its own size along d (zero included)
    let mut parts = vec![];
    for _ in 0..count {
        let mut s = shape.to_vec();
        s[d] = g.below(4);
        let depth = if s[d] == 0 { 0 } else { 3 };
        let (t, v) = build::<E>(&s, depth, g, &smooth);
        parts.push((t, v, s));
    }
    let total: usize = parts.iter().map(|p| p.2[d]).sum();
    let mut out_shape = shape.to_vec();
    out_shape[d] = total;
    let want = tabulate(&out_shape, |idx| {
        let mut k = idx[d];
        for (_, v, s) in &parts {
            if k < s[d] {
                let mut j = idx.to_vec();
                j[d] = k;
                return v[ravel(&j, s)];
            }
            k -= s[d];
        }
        unreachable!()
    });
    let ts: Vec<Tensor<E>> = parts.iter().map(|p| p.0.clone()).collect();
    let dim = any_sign(d, nd, g);
    let sizes: Vec<usize> = parts.iter().map(|p| p.2[d]).collect();
    check(
        &Tensor::cat(&ts, dim),
        &out_shape,
        &want,
        0.0,
        0.0,
        &format!("cat along {dim} of parts {sizes:?} x {shape:?}"),
    )?;

    // stack: equal shapes, new dim anywhere in 0..=nd
    let (a, va) = build::<E>(shape, 3, g, &smooth);
    let (b, vb) = build::<E>(shape, 3, g, &smooth);
    let k = g.below(nd + 1);
    let kd = any_sign(k, nd + 1, g);
    let mut st_shape = shape.to_vec();
    st_shape.insert(k, 3);
    let want = tabulate(&st_shape, |idx| {
        let mut j = idx.to_vec();
        let which = j.remove(k);
        [&va, &vb, &va][which][ravel(&j, shape)]
    });
    check(&Tensor::stack(&[a.clone(), b, a], kd), &st_shape, &want, 0.0, 0.0, &format!("stack at {kd} of {shape:?}"))
}

fn check_split_chunk<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let nd = shape.len();
    let d = g.below(nd);
    let n = shape[d];
    let (x, v) = build::<E>(shape, 3, g, &smooth);
    let dim = any_sign(d, nd, g);
    let piece = |start: usize, len: usize| -> (Vec<usize>, Vec<f64>) {
        let mut s = shape.to_vec();
        s[d] = len;
        let w = tabulate(&s, |idx| {
            let mut j = idx.to_vec();
            j[d] += start;
            v[ravel(&j, shape)]
        });
        (s, w)
    };
    // split(size): pieces of `size`, the last smaller
    let size = 1 + g.below(n + 1);
    let parts = x.split(size, dim);
    prop_assert_eq!(parts.len(), n.div_ceil(size), "split({}) of {} along {}", size, n, dim);
    for (i, p) in parts.iter().enumerate() {
        let (s, w) = piece(i * size, size.min(n - i * size));
        check(p, &s, &w, 0.0, 0.0, &format!("split({size}, {dim}) part {i} of {shape:?}"))?;
        prop_assert!(p.shares_storage(&x), "split returns views");
    }
    // split_sizes
    let mut sizes = vec![];
    let mut left = n;
    while left > 0 {
        let s = g.below(left + 1);
        sizes.push(s);
        left -= s;
    }
    sizes.push(0);
    let parts = x.split_sizes(&sizes, dim);
    prop_assert_eq!(parts.len(), sizes.len());
    let mut start = 0;
    for (i, (p, &s)) in parts.iter().zip(&sizes).enumerate() {
        let (sh, w) = piece(start, s);
        check(p, &sh, &w, 0.0, 0.0, &format!("split_sizes({sizes:?}, {dim}) part {i} of {shape:?}"))?;
        start += s;
    }
    // chunk(c): torch's rule, pieces of ceil(n / c)
    let c = 1 + g.below(n + 1);
    let parts = x.chunk(c, dim);
    let each = n.div_ceil(c);
    prop_assert_eq!(parts.len(), n.div_ceil(each), "chunk({}) of {}", c, n);
    for (i, p) in parts.iter().enumerate() {
        let (s, w) = piece(i * each, each.min(n - i * each));
        check(p, &s, &w, 0.0, 0.0, &format!("chunk({c}, {dim}) part {i} of {shape:?}"))?;
    }
    // cat undoes split
    let back = Tensor::cat(&x.split(size, dim), dim);
    check(&back, shape, &v, 0.0, 0.0, "cat(split(x))")
}

fn check_select_gather<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let nd = shape.len();
    let d = g.below(nd);
    let dim = any_sign(d, nd, g);
    let (x, v) = build::<E>(shape, 3, g, &smooth);
    // index_select, repeats and an empty list allowed
    let index: Vec<usize> = (0..g.below(5)).map(|_| g.below(shape[d])).collect();
    let mut s = shape.to_vec();
    s[d] = index.len();
    let want = tabulate(&s, |idx| {
        let mut j = idx.to_vec();
        j[d] = index[idx[d]];
        v[ravel(&j, shape)]
    });
    check(&x.index_select(dim, &index), &s, &want, 0.0, 0.0, &format!("index_select({dim}, {index:?}) of {shape:?}"))?;
    // gather: index sizes <= the tensor's outside dim, any size along it
    let ishape: Vec<usize> = (0..nd).map(|k| if k == d { 1 + g.below(4) } else { 1 + g.below(shape[k]) }).collect();
    let n: usize = ishape.iter().product();
    let ix: Vec<usize> = (0..n).map(|_| g.below(shape[d])).collect();
    let index = Indices::new(ix.clone(), &ishape);
    let want = tabulate(&ishape, |idx| {
        let mut j = idx.to_vec();
        j[d] = ix[ravel(idx, &ishape)];
        v[ravel(&j, shape)]
    });
    check(&x.gather(dim, &index), &ishape, &want, 0.0, 0.0, &format!("gather({dim}, {ishape:?}) of {shape:?}"))?;
    // scatter_add: src at least as large as the index; repeated targets accumulate
    let sshape: Vec<usize> = ishape.iter().map(|&i| i + g.below(2)).collect();
    let (src, vs) = build::<E>(&sshape, 3, g, &smooth);
    let mut want = v.clone();
    for (k, &t) in ix.iter().enumerate() {
        let idx = unravel(k, &ishape);
        let mut j = idx.clone();
        j[d] = t;
        let at = ravel(&j, shape);
        want[at] = rd::<E>(want[at] + vs[ravel(&idx, &sshape)]);
    }
    check(
        &x.scatter_add(dim, &index, &src),
        shape,
        &want,
        0.0,
        0.0,
        &format!("scatter_add({dim}, {ishape:?}, src {sshape:?}) into {shape:?}"),
    )?;
    // index_add: rows of src added at index along dim, repeats accumulate
    let index: Vec<usize> = (0..1 + g.below(4)).map(|_| g.below(shape[d])).collect();
    let mut s = shape.to_vec();
    s[d] = index.len();
    let (src, vs) = build::<E>(&s, 3, g, &smooth);
    let mut want = v.clone();
    for k in 0..vs.len() {
        let idx = unravel(k, &s);
        let mut j = idx.clone();
        j[d] = index[idx[d]];
        let at = ravel(&j, shape);
        want[at] = rd::<E>(want[at] + vs[k]);
    }
    check(
        &x.index_add(dim, &index, &src),
        shape,
        &want,
        0.0,
        0.0,
        &format!("index_add({dim}, {index:?}) into {shape:?}"),
    )?;
    // slice_scatter: the slice start..end:step of dim replaced by src, the rest copied
    let start = g.below(shape[d]);
    let end = start + 1 + g.below(shape[d] - start + 1);
    let step = 1 + g.below(3);
    let picked: Vec<usize> = (start..end.min(shape[d])).step_by(step).collect();
    let mut s = shape.to_vec();
    s[d] = picked.len();
    let (src, vs) = build::<E>(&s, 3, g, &smooth);
    let mut want = v.clone();
    for k in 0..vs.len() {
        let idx = unravel(k, &s);
        let mut j = idx.clone();
        j[d] = picked[idx[d]];
        want[ravel(&j, shape)] = vs[k];
    }
    check(
        &x.clone().slice_scatter(&src, dim, start, end, step),
        shape,
        &want,
        0.0,
        0.0,
        &format!("slice_scatter({dim}, {start}..{end}:{step}) into {shape:?}"),
    )?;
    check(&x, shape, &v, 0.0, 0.0, "input after the copying ops")
}

fn check_pad_repeat<E: Float>(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let nd = shape.len();
    let (x, v) = build::<E>(shape, 3, g, &smooth);
    let k = g.below(nd + 1);
    let mode = match g.below(3) {
        0 => PadMode::Constant(rd::<E>(g.uniform(-3.0, 3.0))),
        1 => PadMode::Reflect,
        _ => PadMode::Replicate,
    };
    // pairs for the last k dims, last dim first
    let pads: Vec<(usize, usize)> = (0..k)
        .map(|j| {
            let n = shape[nd - 1 - j];
            let most = if mode == PadMode::Reflect { n - 1 } else { 3 };
            (g.below(most + 1), g.below(most + 1))
        })
        .collect();
    let mut before = vec![0; nd];
    let mut after = vec![0; nd];
    for (j, &(b, a)) in pads.iter().enumerate() {
        before[nd - 1 - j] = b;
        after[nd - 1 - j] = a;
    }
    let out: Vec<usize> = (0..nd).map(|d| shape[d] + before[d] + after[d]).collect();
    let want = tabulate(&out, |idx| {
        let mut j = vec![0; nd];
        for d in 0..nd {
            let p = idx[d] as isize - before[d] as isize;
            let n = shape[d] as isize;
            j[d] = if (0..n).contains(&p) {
                p as usize
            } else {
                match mode {
                    PadMode::Constant(c) => return c,
                    // mirror about the edge element: index -1 reads 1, index n reads n - 2
                    PadMode::Reflect => (if p < 0 { -p } else { 2 * (n - 1) - p }) as usize,
                    PadMode::Replicate => p.clamp(0, n - 1) as usize,
                }
            };
        }
        v[ravel(&j, shape)]
    });
    check(&x.pad(&pads, mode), &out, &want, 0.0, 0.0, &format!("pad({pads:?}, {mode:?}) of {shape:?}"))?;
    // repeat, with extra leading repeats
    let lead = g.below(2);
    let reps: Vec<usize> = (0..nd + lead).map(|_| 1 + g.below(3)).collect();
    let src: Vec<usize> = [vec![1; lead], shape.to_vec()].concat();
    let out: Vec<usize> = reps.iter().zip(&src).map(|(r, s)| r * s).collect();
    let want = tabulate(&out, |idx| {
        let j: Vec<usize> = idx[lead..].iter().zip(shape).map(|(&i, &s)| i % s).collect();
        v[ravel(&j, shape)]
    });
    check(&x.repeat(&reps), &out, &want, 0.0, 0.0, &format!("repeat({reps:?}) of {shape:?}"))
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn cat_and_stack_match_loops(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        check_cat_stack::<f64>(&shape, seed)?;
        check_cat_stack::<f32>(&shape, seed)?;
    }

    #[test]
    fn split_and_chunk_give_the_right_views(shape in prop::collection::vec(1usize..=5, 1..=3), seed: u64) {
        check_split_chunk::<f64>(&shape, seed)?;
        check_split_chunk::<f32>(&shape, seed)?;
    }

    #[test]
    fn index_select_gather_scatter_add_index_add_slice_scatter_match_loops(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        check_select_gather::<f64>(&shape, seed)?;
        check_select_gather::<f32>(&shape, seed)?;
    }

    #[test]
    fn pad_and_repeat_match_loops(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        check_pad_repeat::<f64>(&shape, seed)?;
        check_pad_repeat::<f32>(&shape, seed)?;
    }

    #[test]
    fn one_hot_matches_loops(ishape in prop::collection::vec(1usize..=4, 0..=3), classes in 1usize..=6, seed: u64) {
        let g = &mut Gen(seed);
        let n: usize = ishape.iter().product();
        let ix: Vec<usize> = (0..n).map(|_| g.below(classes)).collect();
        let out: Vec<usize> = [ishape.clone(), vec![classes]].concat();
        let want = tabulate(&out, |idx| if ix[ravel(&idx[..ishape.len()], &ishape)] == idx[ishape.len()] { 1.0 } else { 0.0 });
        let t: Tensor<f32> = Tensor::one_hot(&Indices::new(ix, &ishape), classes);
        check(&t, &out, &want, 0.0, 0.0, "one_hot")?;
    }
}

#[test]
fn pad_reflect_matches_the_pytorch_example() {
    let x = Tensor::<f64>::from_vec(vec![1.0, 2.0, 3.0], &[1, 3]);
    assert_eq!(x.pad(&[(2, 2)], PadMode::Reflect).to_vec(), vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
    assert_eq!(x.pad(&[(2, 1)], PadMode::Replicate).to_vec(), vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
    assert_eq!(
        x.pad(&[(1, 0), (1, 0)], PadMode::Constant(-1.0)).to_vec(),
        vec![-1.0; 4].into_iter().chain([-1.0, 1.0, 2.0, 3.0]).collect::<Vec<_>>()
    );
}

#[test]
fn copying_ops_accept_size_0_parts_like_pytorch() {
    // torch.cat([zeros(2, 0), ones(2, 3)], 1) is ones(2, 3); index_select of an empty table
    // with no indices is empty; repeat by 0 gives an empty tensor
    let mut bad = vec![];
    let mut expect = |what: &str,
                      f: Box<dyn Fn() -> (Vec<usize>, Vec<f64>) + std::panic::RefUnwindSafe>,
                      shape: &[usize],
                      v: &[f64]| {
        match std::panic::catch_unwind(&f) {
            Ok((s, got)) => {
                if s != shape || got != v {
                    bad.push(format!("{what}: got {s:?} {got:?}, want {shape:?} {v:?}"));
                }
            }
            Err(_) => bad.push(format!("{what}: panicked")),
        }
    };
    let tv = |t: Tensor<f64>| (t.shape().to_vec(), t.to_vec());
    expect(
        "cat([zeros(2, 0), ones(2, 3)], 1)",
        Box::new(move || tv(Tensor::cat(&[Tensor::zeros(&[2, 0]), Tensor::ones(&[2, 3])], 1))),
        &[2, 3],
        &[1.0; 6],
    );
    expect(
        "cat([zeros(0, 3), ones(2, 3)], 0)",
        Box::new(move || tv(Tensor::cat(&[Tensor::zeros(&[0, 3]), Tensor::ones(&[2, 3])], 0))),
        &[2, 3],
        &[1.0; 6],
    );
    expect(
        "zeros(3, 0).index_select(0, [1, 2])",
        Box::new(move || tv(Tensor::zeros(&[3, 0]).index_select(0, &[1, 2]))),
        &[2, 0],
        &[],
    );
    expect(
        "ones(2, 3).index_select(1, [])",
        Box::new(move || tv(Tensor::ones(&[2, 3]).index_select(1, &[]))),
        &[2, 0],
        &[],
    );
    expect("ones(2, 3).repeat([0, 1])", Box::new(move || tv(Tensor::ones(&[2, 3]).repeat(&[0, 1]))), &[0, 3], &[]);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn copying_op_errors_name_the_op_and_shapes() {
    let a = Tensor::<f32>::zeros(&[2, 3]);
    let m = panic_message(|| drop(Tensor::cat(&[a.clone(), Tensor::zeros(&[3, 3])], 1))).unwrap();
    assert!(m.contains("cat:") && m.contains("[2, 3]") && m.contains("[3, 3]"), "{m}");
    let m = panic_message(|| drop(Tensor::cat(&[a.clone(), Tensor::zeros(&[2, 3, 1])], 0))).unwrap();
    assert!(m.contains("cat:") && m.contains("[2, 3]") && m.contains("[2, 3, 1]"), "{m}");
    let m = panic_message(|| drop(Tensor::stack(&[a.clone(), Tensor::zeros(&[3, 2])], 0))).unwrap();
    assert!(m.contains("stack:") && m.contains("[2, 3]") && m.contains("[3, 2]"), "{m}");
    let m = panic_message(|| drop(a.index_select(1, &[0, 3]))).unwrap();
    assert!(m.contains("index_select:") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(a.gather(0, &Indices::new(vec![2], &[1, 1])))).unwrap();
    assert!(m.contains("gather:") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(a.gather(0, &Indices::new(vec![0; 4], &[1, 4])))).unwrap();
    assert!(m.contains("gather:") && m.contains("[2, 3]") && m.contains("[1, 4]"), "{m}");
    let m = panic_message(|| drop(a.scatter_add(1, &Indices::new(vec![5], &[1, 1]), &Tensor::zeros(&[1, 1])))).unwrap();
    assert!(m.contains("scatter_add:") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(a.index_add(0, &[0], &Tensor::zeros(&[2, 3])))).unwrap();
    assert!(m.contains("index_add:") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(a.pad(&[(3, 0)], PadMode::Reflect))).unwrap();
    assert!(m.contains("pad:") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(a.split_sizes(&[1, 1], 1))).unwrap();
    assert!(m.contains("split") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(a.repeat(&[2]))).unwrap();
    assert!(m.contains("repeat:") && m.contains("[2, 3]"), "{m}");
    let m = panic_message(|| drop(Tensor::<f32>::one_hot(&Indices::from_vec(vec![4]), 3))).unwrap();
    assert!(m.contains("one_hot:"), "{m}");
}
