//! Views checked against naive index maps over row-major data: random chains of `reshape view
//! permute transpose t narrow slice select squeeze squeeze_dim unsqueeze expand flip flatten
//! contiguous` compose correctly (`to_vec`, `get`, `view_nd` and the shape agree with the
//! reference after every step); views share storage, `reshape`/`view` are views exactly when the
//! strides allow it, `is_contiguous` agrees with the element offsets, and `contiguous` copies only
//! when it must; copy on write keeps clones, views and bases apart.

use kiln_tensor::{Float, Tensor};
use proptest::prelude::*;

mod common;
use common::*;

// ------------------------------------------------------------------------------------ helpers

/// The storage offset (relative to element 0) of every element in row-major order, from the
/// public shape and strides.
fn offsets<E: Float>(t: &Tensor<E>) -> Vec<isize> {
    let (shape, strides) = (t.shape(), t.strides());
    (0..t.numel()).map(|i| unravel(i, shape).iter().zip(strides).map(|(&i, &s)| i as isize * s).sum()).collect()
}

/// Whether the elements sit one after another in memory, in row-major order.
fn really_contiguous<E: Float>(t: &Tensor<E>) -> bool {
    offsets(t).iter().enumerate().all(|(i, &o)| o == i as isize)
}

/// Whether `t`'s elements, read row-major, can be addressed with some strides as `shape`
/// (that is, whether a copy-free view exists): derive each dim's stride from the offset of its
/// unit index, then check every element.
fn viewable<E: Float>(t: &Tensor<E>, shape: &[usize]) -> bool {
    let o = offsets(t);
    if o.is_empty() {
        return true;
    }
    let strides: Vec<isize> = (0..shape.len())
        .map(|d| {
            if shape[d] <= 1 {
                0
            } else {
                let mut e = vec![0; shape.len()];
                e[d] = 1;
                o[ravel(&e, shape)]
            }
        })
        .collect();
    o.iter()
        .enumerate()
        .all(|(i, &x)| unravel(i, shape).iter().zip(&strides).map(|(&i, &s)| i as isize * s).sum::<isize>() == x)
}

/// A logical tensor: row-major values and a shape.
#[derive(Clone, Debug)]
struct Naive {
    v: Vec<f64>,
    s: Vec<usize>,
}

impl Naive {
    fn numel(&self) -> usize {
        self.s.iter().product()
    }
    /// New shape `s`, element `i` read from `map(index of i)`.
    fn remap(&self, s: Vec<usize>, map: impl Fn(&[usize]) -> Vec<usize>) -> Naive {
        let n: usize = s.iter().product();
        let v = (0..n).map(|i| self.v[ravel(&map(&unravel(i, &s)), &self.s)]).collect();
        Naive { v, s }
    }
    fn permute(&self, p: &[usize]) -> Naive {
        let s = p.iter().map(|&d| self.s[d]).collect();
        self.remap(s, |idx| {
            let mut j = vec![0; p.len()];
            for k in 0..p.len() {
                j[p[k]] = idx[k];
            }
            j
        })
    }
    fn slice(&self, d: usize, start: usize, end: usize, step: usize) -> Naive {
        let end = end.min(self.s[d]);
        let mut s = self.s.clone();
        s[d] = (start..end).step_by(step).count();
        self.remap(s, |idx| {
            let mut j = idx.to_vec();
            j[d] = start + idx[d] * step;
            j
        })
    }
    fn select(&self, d: usize, i: usize) -> Naive {
        let mut s = self.s.clone();
        s.remove(d);
        self.remap(s, |idx| {
            let mut j = idx.to_vec();
            j.insert(d, i);
            j
        })
    }
    fn reshape(&self, s: &[usize]) -> Naive {
        Naive { v: self.v.clone(), s: s.to_vec() }
    }
    fn expand(&self, s: &[usize]) -> Naive {
        let lead = s.len() - self.s.len();
        let own = self.s.clone();
        self.remap(s.to_vec(), |idx| idx[lead..].iter().zip(&own).map(|(&i, &n)| if n == 1 { 0 } else { i }).collect())
    }
    fn flip(&self, dims: &[usize]) -> Naive {
        let s = self.s.clone();
        self.remap(s.clone(), |idx| {
            let mut j = idx.to_vec();
            for &d in dims {
                j[d] = s[d] - 1 - idx[d];
            }
            j
        })
    }
}

/// A random shape with `n` elements (the prime factors of `n` spread over up to 4 dims, with
/// some size-1 dims).
fn random_shape(n: usize, g: &mut Gen) -> Vec<usize> {
    let mut factors = vec![];
    let mut m = n;
    let mut p = 2;
    while m > 1 {
        while m.is_multiple_of(p) {
            factors.push(p);
            m /= p;
        }
        p += 1;
    }
    let nd = 1 + g.below(4);
    let mut s = vec![1; nd];
    for f in factors {
        s[g.below(nd)] *= f;
    }
    s
}

/// Applies one random view op to `t` and the reference, checking it as it goes. Returns the
/// op's description.
fn step<E: Float>(t: &mut Tensor<E>, r: &mut Naive, g: &mut Gen) -> Result<String, TestCaseError> {
    let nd = r.s.len();
    let before = t.clone();
    // whether the op must give a view of the same storage
    let mut must_share = true;
    let desc;
    match g.below(14) {
        0 if nd >= 1 => {
            let p = g.perm(nd);
            let dims: Vec<isize> = p.iter().map(|&d| any_sign(d, nd, g)).collect();
            *t = t.permute(&dims);
            *r = r.permute(&p);
            desc = format!("permute({dims:?})");
        }
        1 if nd >= 1 => {
            let (a, b) = (g.below(nd), g.below(nd));
            let mut p: Vec<usize> = (0..nd).collect();
            p.swap(a, b);
            let (da, db) = (any_sign(a, nd, g), any_sign(b, nd, g));
            *t = t.transpose(da, db);
            *r = r.permute(&p);
            desc = format!("transpose({da}, {db})");
        }
        2 if nd <= 2 => {
            *t = t.t();
            if nd == 2 {
                *r = r.permute(&[1, 0]);
            }
            desc = "t()".into();
        }
        3 if nd >= 1 => {
            let d = g.below(nd);
            let start = g.below(r.s[d]);
            let len = 1 + g.below(r.s[d] - start);
            let dd = any_sign(d, nd, g);
            *t = t.narrow(dd, start, len);
            *r = r.slice(d, start, start + len, 1);
            desc = format!("narrow({dd}, {start}, {len})");
        }
        4 if nd >= 1 => {
            let d = g.below(nd);
            let start = g.below(r.s[d]);
            let step = 1 + g.below(3);
            // end past the size is clamped, as in Python slicing
            let end = start + 1 + g.below(r.s[d] + 2 - start);
            let dd = any_sign(d, nd, g);
            *t = t.slice(dd, start, end, step);
            *r = r.slice(d, start, end, step);
            desc = format!("slice({dd}, {start}, {end}, {step})");
        }
        5 if nd >= 1 => {
            let d = g.below(nd);
            let i = g.below(r.s[d]);
            let dd = any_sign(d, nd, g);
            *t = t.select(dd, i);
            *r = r.select(d, i);
            desc = format!("select({dd}, {i})");
        }
        6 => {
            *t = t.squeeze();
            let s: Vec<usize> = r.s.iter().copied().filter(|&n| n != 1).collect();
            *r = r.reshape(&s);
            desc = "squeeze()".into();
        }
        7 if nd >= 1 => {
            let d = g.below(nd);
            let dd = any_sign(d, nd, g);
            *t = t.squeeze_dim(dd);
            if r.s[d] == 1 {
                let mut s = r.s.clone();
                s.remove(d);
                *r = r.reshape(&s);
            }
            desc = format!("squeeze_dim({dd})");
        }
        8 if nd < 5 => {
            let d = g.below(nd + 1);
            let dd = any_sign(d, nd + 1, g);
            *t = t.unsqueeze(dd);
            let mut s = r.s.clone();
            s.insert(d, 1);
            *r = r.reshape(&s);
            desc = format!("unsqueeze({dd})");
        }
        9 if nd < 5 => {
            let lead = if nd < 4 { g.below(2) } else { 0 };
            let mut s: Vec<usize> = (0..lead).map(|_| 1 + g.below(3)).collect();
            s.extend(r.s.iter().map(|&n| if n == 1 && g.coin() { 1 + g.below(3) } else { n }));
            *t = t.expand(&s);
            *r = r.expand(&s);
            desc = format!("expand({s:?})");
        }
        10 if nd >= 1 => {
            let dims: Vec<usize> = (0..nd).filter(|_| g.coin()).collect();
            let dd: Vec<isize> = dims.iter().map(|&d| any_sign(d, nd, g)).collect();
            *t = t.flip(&dd);
            *r = r.flip(&dims);
            desc = format!("flip({dd:?})");
        }
        11 if nd >= 1 => {
            let (a, b) = (g.below(nd), g.below(nd));
            let (s, e) = (a.min(b), a.max(b));
            let (ds, de) = (any_sign(s, nd, g), any_sign(e, nd, g));
            let mut shape: Vec<usize> = r.s[..s].to_vec();
            shape.push(r.s[s..=e].iter().product());
            shape.extend_from_slice(&r.s[e + 1..]);
            must_share = viewable(t, &shape);
            *t = t.flatten(ds, de);
            *r = r.reshape(&shape);
            desc = format!("flatten({ds}, {de})");
        }
        12 => {
            let shape = random_shape(r.numel(), g);
            let can = viewable(t, &shape);
            let what = format!("view/reshape {:?} (strides {:?}) as {shape:?}", t.shape(), t.strides());
            if g.coin() {
                let src = t.clone();
                let sh = shape.clone();
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || src.view(&sh))) {
                    Ok(v) => {
                        prop_assert!(can, "{}: kiln made a view the strides cannot express", what);
                        *t = v;
                    }
                    Err(_) => {
                        prop_assert!(!can, "{}: view panicked though the strides allow a view", what);
                        *t = t.reshape(&shape);
                    }
                }
                desc = format!("view({shape:?})");
            } else {
                *t = t.reshape(&shape);
                desc = format!("reshape({shape:?})");
            }
            must_share = can;
            *r = r.reshape(&shape);
        }
        _ => {
            must_share = t.is_contiguous();
            *t = t.contiguous();
            prop_assert!(t.is_contiguous(), "contiguous() gave strides {:?} for {:?}", t.strides(), t.shape());
            desc = "contiguous()".into();
        }
    }
    let what = format!("after {desc} of {:?} (strides {:?})", before.shape(), before.strides());
    prop_assert_eq!(t.shares_storage(&before), must_share, "{}: shares storage", what);
    check(t, &r.s, &r.v, 0.0, 0.0, &what)?;
    Ok(desc)
}

fn check_inspection<E: Float>(t: &Tensor<E>, r: &Naive, g: &mut Gen, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.numel(), r.numel());
    prop_assert_eq!(t.ndim(), r.s.len());
    // is_contiguous and as_slice agree with the element offsets
    let contiguous = really_contiguous(t);
    prop_assert_eq!(t.is_contiguous(), contiguous, "{}: is_contiguous with strides {:?}", what, t.strides());
    match t.as_slice() {
        Some(s) => {
            prop_assert!(contiguous, "{}: as_slice of a strided tensor", what);
            prop_assert_eq!(s.iter().map(|&x| Float::to_f64(x)).collect::<Vec<_>>(), r.v.clone(), "{}: as_slice", what);
        }
        None => prop_assert!(!contiguous, "{}: no as_slice for a contiguous tensor", what),
    }
    // contiguous() copies exactly when the tensor is not contiguous
    let c = t.contiguous();
    prop_assert_eq!(c.shares_storage(t), contiguous, "{}: contiguous() shared storage", what);
    check(&c, &r.s, &r.v, 0.0, 0.0, &format!("{what}: contiguous()"))?;
    // get and view_nd read the same elements
    for _ in 0..4 {
        if r.numel() == 0 {
            break;
        }
        let i = g.below(r.numel());
        let idx = unravel(i, &r.s);
        prop_assert_eq!(t.get(&idx).to_f64(), r.v[i], "{}: get({:?})", what, idx);
    }
    let nd: Vec<f64> = t.view_nd().iter().map(|&x| Float::to_f64(x)).collect();
    prop_assert_eq!(nd, r.v.clone(), "{}: view_nd", what);
    Ok(())
}

fn check_chain<E: Float>(shape: &[usize], seed: u64, steps: usize) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let draw = |g: &mut Gen| g.uniform(-10.0, 10.0);
    let (base, vbase) = build::<E>(shape, if g.coin() { 0 } else { 2 }, g, &draw);
    let (mut t, mut r) = (base.clone(), Naive { v: vbase.clone(), s: shape.to_vec() });
    let mut done = vec![];
    for _ in 0..steps {
        let desc = step(&mut t, &mut r, g).map_err(|e| TestCaseError::fail(format!("{e} (after {done:?})")))?;
        done.push(desc);
        check_inspection(&t, &r, g, &format!("{done:?} on {shape:?} ({:?})", E::DTYPE))?;
    }
    // the base never changed
    check(&base, shape, &vbase, 0.0, 0.0, "base after the chain")
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn view_chains_match_index_maps(shape in prop::collection::vec(1usize..=4, 0..=4), seed: u64, steps in 1usize..=6) {
        check_chain::<f64>(&shape, seed, steps)?;
        check_chain::<f32>(&shape, seed, steps)?;
    }
}

// ------------------------------------------------------------------------ copy on write

fn check_cow(shape: &[usize], seed: u64) -> Result<(), TestCaseError> {
    let g = &mut Gen(seed);
    let draw = |g: &mut Gen| g.uniform(-10.0, 10.0);
    let (base, vbase) = build::<f64>(shape, 0, g, &draw);
    let mut r = Naive { v: vbase.clone(), s: shape.to_vec() };
    let mut view = base.clone();
    for _ in 0..3 {
        step(&mut view, &mut r, g)?;
    }
    let (vview, sview) = (r.v.clone(), r.s.clone());
    let other = base.flip(&(0..shape.len() as isize).collect::<Vec<_>>());
    let vother: Vec<f64> = vals(&other);
    let which = g.below(7);
    let op = |t: &mut Tensor<f64>| -> Vec<f64> {
        let v = vals(t);
        match which {
            0 => {
                t.add_scalar_(1.0);
                v.iter().map(|x| x + 1.0).collect()
            }
            1 => {
                t.mul_scalar_(-2.0);
                v.iter().map(|x| x * -2.0).collect()
            }
            2 => {
                t.fill_(7.0);
                vec![7.0; v.len()]
            }
            3 => {
                t.clamp_(Some(-1.0), Some(1.0));
                v.iter().map(|x| x.clamp(-1.0, 1.0)).collect()
            }
            4 => {
                let ones = Tensor::<f64>::ones(t.shape());
                t.add_(&ones);
                v.iter().map(|x| x + 1.0).collect()
            }
            5 => {
                if let Some(x) = t.as_mut_slice().first_mut() {
                    *x = 99.0;
                }
                let mut w = v.clone();
                if let Some(x) = w.first_mut() {
                    *x = 99.0;
                }
                w
            }
            _ => {
                t.map_inplace(|x| x * x);
                v.iter().map(|x| x * x).collect()
            }
        }
    };
    // 1. on a clone of a view: the view, the base and another view keep their values
    let mut c = view.clone();
    let want = op(&mut c);
    check(&c, &sview, &want, 0.0, 0.0, "the changed clone")?;
    check(&view, &sview, &vview, 0.0, 0.0, "a view whose clone was changed")?;
    check(&base, shape, &vbase, 0.0, 0.0, "the base of a changed clone")?;
    // 2. on the view itself: the base and another view of it keep theirs
    let mut v2 = view.clone();
    drop(view);
    let want = op(&mut v2);
    check(&v2, &sview, &want, 0.0, 0.0, "the changed view")?;
    check(&base, shape, &vbase, 0.0, 0.0, "the base of a changed view")?;
    check(&other, shape, &vother, 0.0, 0.0, "a sibling view of a changed view")?;
    // 3. on the base: views taken before keep their values
    let mut b = base.clone();
    let want = op(&mut b);
    check(&b, shape, &want, 0.0, 0.0, "the changed base")?;
    check(&other, shape, &vother, 0.0, 0.0, "a view of a changed base")?;
    check(&base, shape, &vbase, 0.0, 0.0, "a clone of a changed base")?;
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn in_place_ops_never_leak_through_shared_storage(shape in prop::collection::vec(1usize..=4, 1..=4), seed: u64) {
        check_cow(&shape, seed)?;
    }
}

#[test]
fn in_place_on_unshared_storage_stays_in_place() {
    let mut a = Tensor::<f32>::from_vec((0..6).map(|i| i as f32).collect(), &[2, 3]);
    let p = a.as_slice().unwrap().as_ptr();
    a.add_scalar_(1.0);
    a.as_mut_slice()[0] = -1.0;
    assert_eq!(p, a.as_slice().unwrap().as_ptr());
    // once the only other holder is gone, the storage is unique again
    let b = a.clone();
    drop(b);
    a.mul_scalar_(2.0);
    assert_eq!(p, a.as_slice().unwrap().as_ptr());
    assert_eq!(a.to_vec(), vec![-2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
    // into_vec of unique storage hands the buffer over
    let q = a.into_vec();
    assert_eq!(q.as_ptr(), p);
    // into_vec of a view gives its elements
    let x = Tensor::<f64>::from_vec((0..6).map(|i| i as f64).collect(), &[2, 3]);
    assert_eq!(x.t().into_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(x.to_vec(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

// ------------------------------------------------------------------------ edges and errors

#[test]
fn zero_size_tensors_are_contiguous_like_pytorch() {
    // torch.zeros(2, 0).is_contiguous() is True; kernels rely on contiguous().as_slice()
    let mut bad = vec![];
    for s in [&[2usize, 0][..], &[0][..], &[0, 3][..], &[3, 0, 2][..], &[1, 0][..]] {
        let z = Tensor::<f32>::zeros(s);
        if !z.is_contiguous() {
            bad.push(format!("zeros({s:?}).is_contiguous() is false (strides {:?})", z.strides()));
        }
        if z.contiguous().as_slice().is_none() {
            bad.push(format!("zeros({s:?}).contiguous().as_slice() is None"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn zero_size_views() {
    let z = Tensor::<f64>::zeros(&[3, 0, 2]);
    assert_eq!(z.permute(&[2, 0, 1]).shape(), &[2, 3, 0]);
    assert_eq!(z.reshape(&[0, 5]).shape(), &[0, 5]);
    assert_eq!(z.flatten(0, -1).shape(), &[0]);
    assert_eq!(z.transpose(0, 2).to_vec(), Vec::<f64>::new());
    let x = Tensor::<f64>::ones(&[4, 3]);
    let e = x.slice(0, 2, 2, 1);
    assert_eq!(e.shape(), &[0, 3]);
    assert_eq!(e.to_vec(), Vec::<f64>::new());
    assert_eq!(x.slice(0, 4, 10, 2).shape(), &[0, 3]);
}

#[test]
fn narrow_past_the_end_panics_like_pytorch() {
    // torch.narrow: "start (2) + length (5) exceeds dimension size (3)"; a silent clamp would
    // hand back fewer elements than asked for
    let x = Tensor::<f64>::zeros(&[3, 4]);
    let msg = panic_message(|| {
        let _ = x.narrow(0, 2, 5);
    });
    match msg {
        None => panic!("narrow(0, 2, 5) of [3, 4] returned shape {:?} instead of panicking", x.narrow(0, 2, 5).shape()),
        Some(m) => assert!(m.contains("narrow") && m.contains("[3, 4]"), "{m}"),
    }
}

#[test]
fn view_errors_name_the_op_and_shapes() {
    let x = Tensor::<f32>::zeros(&[3, 4]);
    let m = panic_message(|| {
        let _ = x.t().view(&[12]);
    })
    .unwrap();
    assert!(m.starts_with("view: shape [4, 3] with strides [1, 4] cannot be viewed as [12]"), "{m}");
    let m = panic_message(|| {
        let _ = x.reshape(&[5, 2]);
    })
    .unwrap();
    // (assert_eq! prefixes "assertion `left == right` failed: ", so match the op's own text)
    assert!(m.contains("reshape: cannot reshape [3, 4] (12 elements) into [5, 2] (10 elements)"), "{m}");
    let m = panic_message(|| {
        let _ = x.view(&[13]);
    })
    .unwrap();
    assert!(m.contains("view:") && m.contains("[3, 4]") && m.contains("[13]"), "{m}");
    let m = panic_message(|| {
        let _ = x.expand(&[2, 3, 5]);
    })
    .unwrap();
    assert!(m.starts_with("expand:") && m.contains("[3, 4]") && m.contains("[2, 3, 5]"), "{m}");
    let m = panic_message(|| {
        let _ = x.expand(&[4]);
    })
    .unwrap();
    assert!(m.starts_with("expand:") && m.contains("[3, 4]") && m.contains("[4]"), "{m}");
    let m = panic_message(|| {
        let _ = Tensor::<f32>::zeros(&[2, 3, 4]).t();
    })
    .unwrap();
    assert!(m.starts_with("t:") && m.contains("[2, 3, 4]"), "{m}");
    let m = panic_message(|| {
        let _ = x.permute(&[0, 0]);
    })
    .unwrap();
    assert!(m.starts_with("permute:"), "{m}");
    let m = panic_message(|| {
        let _ = x.permute(&[1]);
    })
    .unwrap();
    assert!(m.contains("permute:") && m.contains("[3, 4]"), "{m}");
    for (name, f) in [
        ("transpose", Box::new(|| drop(x.transpose(0, 2))) as Box<dyn Fn() + std::panic::RefUnwindSafe>),
        ("select", Box::new(|| drop(x.select(1, 4)))),
        ("select", Box::new(|| drop(x.select(-3, 0)))),
        ("slice", Box::new(|| drop(x.slice(0, 4, 5, 1)))),
        ("flip", Box::new(|| drop(x.flip(&[2])))),
        ("unsqueeze", Box::new(|| drop(x.unsqueeze(3)))),
        ("squeeze", Box::new(|| drop(x.squeeze_dim(-3)))),
        ("flatten", Box::new(|| drop(x.flatten(1, 0)))),
    ] {
        let m = panic_message(&*f).unwrap_or_else(|| panic!("{name} did not panic"));
        assert!(m.starts_with(&format!("{name}:")) && m.contains("[3, 4]"), "{name}: {m:?}");
    }
}

#[test]
fn views_of_0d_and_size_1_tensors() {
    let s = Tensor::<f64>::scalar(4.0);
    assert_eq!(s.t().item(), 4.0);
    assert_eq!(s.unsqueeze(0).shape(), &[1]);
    assert_eq!(s.unsqueeze(-1).shape(), &[1]);
    assert_eq!(s.reshape(&[1, 1]).shape(), &[1, 1]);
    assert_eq!(s.flatten(0, 0).shape(), &[1]);
    assert_eq!(s.expand(&[2, 3]).to_vec(), vec![4.0; 6]);
    assert_eq!(s.permute(&[]).item(), 4.0);
    let one = Tensor::<f64>::from_vec(vec![5.0], &[1, 1, 1]);
    assert_eq!(one.squeeze().shape(), &[] as &[usize]);
    assert_eq!(one.squeeze().item(), 5.0);
    assert!(one.permute(&[2, 0, 1]).is_contiguous());
    assert!(one.expand(&[1, 1, 1]).is_contiguous());
    assert!(!one.expand(&[1, 2, 1]).is_contiguous());
}
