//! Joining, splitting, indexing, masking, padding and repeating.
//!
//! The gradients of the gathering ops are scatters and vice versa: `index_select` <->
//! `index_add`, `gather` <-> `scatter_add`, `pad` <-> folding the border back. Each pair's
//! backward is the other op, recorded as a `Var` op, so second derivatives flow through.

use kiln_tensor::{Float, Indices, PadMode, Tensor};
use smallvec::smallvec;

use super::shape::{dim_of, scatter_into_zeros};
use super::{binary_op, unary_op, OpFn};
use crate::trace::{float, indices, int, ints, tensor};
use crate::var::{Grads, Inputs, Var};

impl<E: Float> Var<E> {
    /// Joins `Var`s along an existing dimension, like `torch.cat`.
    ///
    /// **Panics** if the list is empty or the shapes differ outside `dim`.
    // d cat(x_1..x_n)/dx_k: the k-th block of the gradient along `dim`
    #[must_use]
    pub fn cat(vars: &[Var<E>], dim: isize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64))]);
        assert!(!vars.is_empty(), "cat: expects at least one Var");
        let values: Vec<Tensor<E>> = vars.iter().map(Var::value).collect();
        let value = Tensor::cat(&values, dim);
        let d = dim_of(dim, value.ndim(), "cat", value.shape());
        let sizes: Vec<usize> = values.iter().map(|t| t.shape()[d]).collect();
        drop(values);
        let inputs: Inputs<E> = vars.iter().cloned().collect();
        Var::from_op(
            value,
            inputs,
            OpFn {
                name: "cat",
                f: move |g: &Var<E>, inputs: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    let mut start = 0;
                    inputs
                        .iter()
                        .zip(&sizes)
                        .map(|(x, &n)| {
                            start += n;
                            x.requires_grad().then(|| g.narrow(d as isize, start - n, n))
                        })
                        .collect()
                },
            },
        )
    }

    /// Joins equally shaped `Var`s along a new dimension `dim`, like `torch.stack`.
    ///
    /// **Panics** if the list is empty or the shapes differ.
    // d stack(x_1..x_n)/dx_k = the gradient selected at k along `dim`
    #[must_use]
    pub fn stack(vars: &[Var<E>], dim: isize) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64))]);
        assert!(!vars.is_empty(), "stack: expects at least one Var");
        let values: Vec<Tensor<E>> = vars.iter().map(Var::value).collect();
        let value = Tensor::stack(&values, dim);
        drop(values);
        let d = dim_of(dim, value.ndim(), "stack", value.shape()) as isize;
        let inputs: Inputs<E> = vars.iter().cloned().collect();
        Var::from_op(
            value,
            inputs,
            OpFn {
                name: "stack",
                f: move |g: &Var<E>, inputs: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    inputs.iter().enumerate().map(|(k, x)| x.requires_grad().then(|| g.select(d, k))).collect()
                },
            },
        )
    }

    /// Splits into pieces of `size` along `dim` (the last one may be smaller), like
    /// `torch.split(x, size, dim)`. Each piece is a [`narrow`](Var::narrow) of `self`.
    ///
    /// **Panics** if `size == 0`.
    #[must_use]
    pub fn split(&self, size: usize, dim: isize) -> Vec<Var<E>> {
        assert!(size > 0, "split: size must be > 0 (shape {:?})", self.shape().as_slice());
        let shape = self.shape();
        let d = dim_of(dim, shape.len(), "split", &shape);
        let n = shape[d];
        (0..n).step_by(size).map(|s| self.narrow(d as isize, s, size.min(n - s))).collect()
    }

    /// Splits into `chunks` pieces of (nearly) equal size along `dim`, like `torch.chunk`
    /// (fewer pieces when the dimension is short).
    ///
    /// **Panics** if `chunks == 0`.
    #[must_use]
    pub fn chunk(&self, chunks: usize, dim: isize) -> Vec<Var<E>> {
        assert!(chunks > 0, "chunk: chunks must be > 0 (shape {:?})", self.shape().as_slice());
        let shape = self.shape();
        let n = shape[dim_of(dim, shape.len(), "chunk", &shape)];
        self.split(n.div_ceil(chunks).max(1), dim)
    }

    /// The entries at `index` along `dim`, like `torch.index_select` (indices may repeat).
    ///
    /// **Panics** if an index is out of range.
    // d index_select(x)/dx: the gradient added back into zeros at `index` (index_add)
    #[must_use]
    pub fn index_select(&self, dim: isize, index: &[usize]) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64)), ("index", ints(index))]);
        let idx = index.to_vec();
        unary_op(
            self,
            "index_select",
            |x| x.index_select(dim, index),
            move |x, _, g| {
                let shape = x.shape();
                scatter_into_zeros(g, &shape, dim_of(dim, shape.len(), "index_select", &shape), &idx)
            },
        )
    }

    /// Adds the slices of `src` along `dim` into a copy of `self` at `index`
    /// (`out.select(dim, index[i]) += src.select(dim, i)`), like `torch.index_add`. Repeated
    /// indices accumulate.
    ///
    /// **Panics** on shape mismatches or an index out of range.
    // d index_add(x, src)/dx = 1, d index_add(x, src)/dsrc: the gradient's entries at `index`
    #[must_use]
    pub fn index_add(&self, dim: isize, index: &[usize], src: &Var<E>) -> Var<E> {
        let value = self.with_value(|x| src.with_value(|s| x.index_add(dim, index, s)));
        let idx = index.to_vec();
        Var::from_op(
            value,
            smallvec![self.clone(), src.clone()],
            OpFn {
                name: "index_add",
                f: move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    smallvec![
                        i[0].requires_grad().then(|| g.clone()),
                        i[1].requires_grad().then(|| g.index_select(dim, &idx))
                    ]
                },
            },
        )
    }

    /// An embedding lookup: row `ids[..]` of the 2-D `table` (`[num_embeddings, embedding_dim]`)
    /// for every id, giving shape `ids.shape + [embedding_dim]`, like `F.embedding(ids, table,
    /// padding_idx)`. The gradient is scattered into the table's rows (repeated ids
    /// accumulate); the `padding_idx` row gets no gradient.
    ///
    /// **Panics** if the table is not 2-D or an id (or `padding_idx`) is out of range.
    // d embedding(T, ids)/dT[r] = sum of the output gradients at the positions where ids = r (0 for r = padding_idx)
    #[must_use]
    pub fn embedding(table: &Var<E>, ids: &Indices, padding_idx: Option<usize>) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            vec![("ids", indices(ids)), ("padding_idx", int(padding_idx.map_or(-1, |p| p as i64)))]
        });
        let tshape = table.shape();
        assert!(
            tshape.len() == 2,
            "embedding: the table must be 2-D [num_embeddings, embedding_dim], got shape {:?}",
            tshape.as_slice()
        );
        let (rows, width) = (tshape[0], tshape[1]);
        if let Some(&bad) = ids.as_slice().iter().find(|&&i| i >= rows) {
            panic!("embedding: id {bad} out of range for a table of shape {:?}", tshape.as_slice());
        }
        if let Some(p) = padding_idx {
            assert!(p < rows, "embedding: padding_idx {p} out of range for a table of shape {:?}", tshape.as_slice());
        }
        let mut out_shape = ids.shape().to_vec();
        out_shape.push(width);
        let value = table.with_value(|t| t.index_select(0, ids.as_slice()).reshape(&out_shape));
        let ids = ids.clone();
        Var::from_op(
            value,
            smallvec![table.clone()],
            OpFn {
                name: "embedding",
                f: move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    let tshape = i[0].shape();
                    let n = ids.len();
                    let mut rows = g.reshape(&[n, tshape[1]]);
                    if let Some(p) = padding_idx {
                        let keep = Indices::new(ids.to_vec(), &[n, 1]).to_tensor::<E>().ne_scalar(E::from_usize(p));
                        rows = rows.mul(&Var::constant(keep));
                    }
                    smallvec![Some(scatter_into_zeros(&rows, &tshape, 0, ids.as_slice()))]
                },
            },
        )
    }

    /// `out[i][j] = self[index[i][j]][j]` for `dim = 0` (likewise for other dims), like
    /// `torch.gather`. `index` has as many dims as `self`, with sizes at most `self`'s outside
    /// `dim`; the output has `index`'s shape.
    ///
    /// **Panics** on a rank mismatch or an index out of range.
    // d gather(x)/dx: the gradient scatter-added into zeros at `index` (repeats accumulate)
    #[must_use]
    pub fn gather(&self, dim: isize, index: &Indices) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("dim", int(dim as i64)), ("index", indices(index))]);
        let idx = index.clone();
        unary_op(
            self,
            "gather",
            |x| x.gather(dim, index),
            move |x, _, g| Var::constant(Tensor::zeros(&x.shape())).scatter_add(dim, &idx, g),
        )
    }

    /// Adds `src` into a copy of `self` at the positions `index` gives along `dim`
    /// (`out[index[i][j]][j] += src[i][j]` for `dim = 0`), like `torch.scatter_add`. Repeated
    /// indices accumulate; `src` may be larger than `index` (the extra entries are unused and
    /// get a zero gradient).
    ///
    /// **Panics** on shape mismatches or an index out of range.
    // d scatter_add(x, src)/dx = 1, d scatter_add(x, src)/dsrc: the gradient gathered at `index`
    #[must_use]
    pub fn scatter_add(&self, dim: isize, index: &Indices, src: &Var<E>) -> Var<E> {
        let value = self.with_value(|x| src.with_value(|s| x.scatter_add(dim, index, s)));
        let idx = index.clone();
        Var::from_op(
            value,
            smallvec![self.clone(), src.clone()],
            OpFn {
                name: "scatter_add",
                f: move |g: &Var<E>, i: &[Var<E>], _: &Var<E>| -> Grads<E> {
                    let gsrc = i[1].requires_grad().then(|| {
                        let gathered = g.gather(dim, &idx);
                        // zeros for the entries of src beyond index's extent
                        let sshape = i[1].shape();
                        let pads: Vec<(usize, usize)> =
                            sshape.iter().zip(idx.shape()).rev().map(|(&s, &k)| (0, s - k)).collect();
                        if pads.iter().all(|&(_, a)| a == 0) {
                            gathered
                        } else {
                            gathered.pad(&pads, PadMode::Constant(0.0))
                        }
                    });
                    smallvec![i[0].requires_grad().then(|| g.clone()), gsrc]
                },
            },
        )
    }

    /// `value` where `mask` is nonzero, `self` elsewhere (the mask broadcasts to `self`'s
    /// shape), like `masked_fill`. The mask is data, not differentiated.
    ///
    /// **Panics** if the mask does not broadcast to `self`'s shape.
    // d masked_fill(x)/dx = [mask = 0]
    #[must_use]
    pub fn masked_fill(&self, mask: &Tensor<E>, value: E) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("mask", tensor(mask)), ("value", float(value.to_f64()))]);
        let m = mask.clone();
        unary_op(
            self,
            "masked_fill",
            |x| x.masked_fill(mask, value),
            move |_, _, g| g.mul(&Var::constant(m.eq_scalar(E::zero()))),
        )
    }

    /// `self` where `mask` is nonzero, `other` elsewhere, broadcasting all three, like
    /// `torch.where(mask, self, other)`. The mask is data, not differentiated.
    ///
    /// **Panics** if the shapes cannot be broadcast together.
    // d where(m, a, b)/da = [m != 0], d where(m, a, b)/db = [m = 0]
    #[must_use]
    pub fn where_(&self, mask: &Tensor<E>, other: &Var<E>) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("mask", tensor(mask))]);
        let (ma, mb) = (mask.clone(), mask.clone());
        binary_op(
            self,
            other,
            "where_",
            |a, b| a.where_(mask, b),
            move |_, _, _, g| g.mul(&Var::constant(ma.ne_scalar(E::zero()))),
            move |_, _, _, g| g.mul(&Var::constant(mb.eq_scalar(E::zero()))),
        )
    }

    /// Pads the last dimensions: `pads` lists `(before, after)` pairs starting from the LAST
    /// dimension, as in `F.pad`; `mode` is constant, reflect or replicate.
    ///
    /// **Panics** if more pairs than dims are given, or a reflect pad is not smaller than its
    /// dimension.
    // d pad(x)/dx: constant: the interior of the gradient; reflect/replicate: the interior
    // plus the border gradients added back onto the positions they copy
    #[must_use]
    pub fn pad(&self, pads: &[(usize, usize)], mode: PadMode) -> Var<E> {
        let _trace = crate::trace::attrs(|| {
            let (mode_id, value) = match mode {
                PadMode::Constant(v) => (0, v),
                PadMode::Reflect => (1, 0.0),
                PadMode::Replicate => (2, 0.0),
            };
            let flat: Vec<usize> = pads.iter().flat_map(|&(b, a)| [b, a]).collect();
            vec![("pads", ints(&flat)), ("mode", int(mode_id)), ("value", float(value))]
        });
        let pads_v = pads.to_vec();
        unary_op(
            self,
            "pad",
            |x| x.pad(pads, mode),
            move |x, _, g| {
                let shape = x.shape();
                let nd = shape.len();
                let mut g = g.clone();
                for (k, &(before, after)) in pads_v.iter().enumerate() {
                    if before == 0 && after == 0 {
                        continue;
                    }
                    let d = nd - 1 - k;
                    let n = shape[d];
                    g = match mode {
                        PadMode::Constant(_) => g.narrow(d as isize, before, n),
                        PadMode::Reflect | PadMode::Replicate => {
                            // the input position each output position along d copies
                            let source: Vec<usize> = (0..(before + n + after) as isize)
                                .map(|p| pad_source(p - before as isize, n as isize, mode))
                                .collect();
                            let mut to = g.shape();
                            to[d] = n;
                            scatter_into_zeros(&g, &to, d, &source)
                        }
                    };
                }
                g
            },
        )
    }

    /// Tiles `self` `repeats[d]` times along each dimension, like `torch.Tensor.repeat` (more
    /// repeats than dims add leading dimensions).
    ///
    /// **Panics** if fewer repeats than dims are given.
    // d repeat(x)/dx: the sum of the gradient's tiles
    #[must_use]
    pub fn repeat(&self, repeats: &[usize]) -> Var<E> {
        let _trace = crate::trace::attrs(|| vec![("repeats", ints(repeats))]);
        let reps = repeats.to_vec();
        unary_op(
            self,
            "repeat",
            |x| x.repeat(repeats),
            move |x, _, g| {
                let shape = x.shape();
                let lead = reps.len() - shape.len();
                // [r0, s0, r1, s1, ...]: sum over the r's
                let tiles: Vec<usize> = reps
                    .iter()
                    .enumerate()
                    .flat_map(|(d, &r)| [r, if d < lead { 1 } else { shape[d - lead] }])
                    .collect();
                let axes: Vec<isize> = (0..reps.len() as isize).map(|d| 2 * d).collect();
                if axes.is_empty() {
                    return g.clone();
                }
                g.reshape(&tiles).sum(&axes, false).reshape(&shape)
            },
        )
    }
}

/// The input position (in `0..n`) that output position `p` (relative to the start of the
/// input, so negative inside the leading border) copies under a reflect or replicate pad.
fn pad_source(p: isize, n: isize, mode: PadMode) -> usize {
    let s = if (0..n).contains(&p) {
        p
    } else if mode == PadMode::Reflect {
        if p < 0 {
            -p
        } else {
            2 * (n - 1) - p
        }
    } else {
        p.clamp(0, n - 1)
    };
    s as usize
}

#[cfg(test)]
mod tests {
    use crate::testing::{check, check2, noncontiguous, tensor_strategy};
    use crate::var::Var;
    use kiln_tensor::{Indices, PadMode, Tensor};
    use proptest::prelude::*;

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }

    fn r(n: usize, s: &[usize]) -> Tensor<f64> {
        Tensor::from_vec((0..n).map(|i| i as f64).collect(), s)
    }

    /// A simple deterministic stream of numbers from proptest's seed.
    struct Draw(u64);
    impl Draw {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    fn ok(name: &str, r: Result<crate::GradcheckReport, crate::GradcheckError>) -> Result<(), TestCaseError> {
        prop_assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20))]
        #[test]
        fn gradcheck_cat_stack_split(x in tensor_strategy(), seed: u64, nc: bool) {
            let mut draw = Draw(seed);
            let x = if nc { noncontiguous(&x) } else { x };
            let nd = x.ndim();
            let d = draw.below(nd) as isize;
            // a second input with another size along d
            let mut s2 = x.shape().to_vec();
            s2[d as usize] = 1 + draw.below(3);
            let y = Tensor::from_vec((0..s2.iter().product()).map(|i| (i as f64 * 0.37).sin()).collect(), &s2);
            let inputs = [x.clone(), y];
            ok("cat", check(|v| Var::cat(&[v[0].clone(), v[1].clone(), v[0].clone()], d), &inputs))?;
            ok("cat (second order)", check2(|v| Var::cat(&[v[0].mul(&v[0]), v[1].clone()], d - nd as isize), &inputs))?;
            let sd = draw.below(nd + 1) as isize;
            let inp = std::slice::from_ref(&x);
            ok("stack", check(|v| Var::stack(&[v[0].clone(), v[0].mul(&v[0])], sd), inp))?;
            ok("stack (second order)", check2(|v| Var::stack(&[v[0].mul(&v[0]), v[0].clone()], sd), inp))?;
            let size = 1 + draw.below(x.shape()[d as usize]);
            // weight each piece differently, so that a mixed-up piece shows
            ok("split", check(|v| {
                let parts = v[0].split(size, d);
                let scaled: Vec<Var<f64>> = parts.iter().enumerate().map(|(k, p)| p.mul_scalar(k as f64 + 1.0)).collect();
                Var::cat(&scaled, d)
            }, inp))?;
            let chunks = 1 + draw.below(4);
            ok("chunk", check(|v| {
                let parts = v[0].chunk(chunks, d);
                let scaled: Vec<Var<f64>> = parts.iter().enumerate().map(|(k, p)| p.mul(p).mul_scalar(k as f64 + 1.0)).collect();
                Var::stack(&[Var::cat(&scaled, d)], 0)
            }, inp))?;
        }

        #[test]
        fn gradcheck_index_ops(x in tensor_strategy(), seed: u64, nc: bool) {
            let mut draw = Draw(seed);
            let x = if nc { noncontiguous(&x) } else { x };
            let shape = x.shape().to_vec();
            let nd = shape.len();
            let d = draw.below(nd);
            let n = shape[d];
            let inp = std::slice::from_ref(&x);
            // index_select with repeats
            let index: Vec<usize> = (0..1 + draw.below(5)).map(|_| draw.below(n)).collect();
            ok("index_select", check(|v| v[0].index_select(d as isize, &index), inp))?;
            ok("index_select (second order)", check2(|v| v[0].mul(&v[0]).index_select(d as isize, &index), inp))?;
            // index_add of a src with a differentiable self
            let mut ss = shape.clone();
            ss[d] = index.len();
            let src = Tensor::from_vec((0..ss.iter().product()).map(|i| (i as f64 * 0.71).cos()).collect(), &ss);
            let two = [x.clone(), src.clone()];
            ok("index_add", check(|v| v[0].index_add(d as isize, &index, &v[1]), &two))?;
            ok("index_add (second order)", check2(|v| v[0].index_add(d as isize, &index, &v[1].mul(&v[1])), &two))?;
            // gather with an index no larger than x outside d and any length along d
            let ishape: Vec<usize> = shape.iter().enumerate().map(|(k, &s)| if k == d { 1 + draw.below(4) } else { 1 + draw.below(s) }).collect();
            let gidx = Indices::new((0..ishape.iter().product::<usize>()).map(|_| draw.below(n)).collect(), &ishape);
            ok("gather", check(|v| v[0].gather(d as isize, &gidx), inp))?;
            ok("gather (second order)", check2(|v| v[0].mul(&v[0]).gather(d as isize, &gidx), inp))?;
            // scatter_add with a src larger than the index
            let sshape: Vec<usize> = ishape.iter().map(|&k| k + draw.below(2)).collect();
            let src2 = Tensor::from_vec((0..sshape.iter().product()).map(|i| (i as f64 * 0.53).sin()).collect(), &sshape);
            let two = [x.clone(), src2];
            ok("scatter_add", check(|v| v[0].scatter_add(d as isize, &gidx, &v[1]), &two))?;
            ok("scatter_add (second order)", check2(|v| v[0].mul(&v[0]).scatter_add(d as isize, &gidx, &v[1].mul(&v[1])), &two))?;
        }

        #[test]
        fn gradcheck_embedding(rows in 1usize..5, width in 1usize..4, seed: u64, padded: bool) {
            let mut draw = Draw(seed);
            let table = Tensor::from_vec((0..rows * width).map(|i| (i as f64 * 0.9).sin()).collect(), &[rows, width]);
            let ishape: Vec<usize> = (0..1 + draw.below(2)).map(|_| 1 + draw.below(3)).collect();
            let ids = Indices::new((0..ishape.iter().product::<usize>()).map(|_| draw.below(rows)).collect(), &ishape);
            let pad = padded.then(|| draw.below(rows));
            let inp = [table.clone()];
            // the padding row's gradient is 0 by definition, not a finite difference: check
            // against the table with that row cut off from the graph
            let f = |v: &[Var<f64>]| Var::embedding(&v[0], &ids, pad);
            if pad.is_none() {
                ok("embedding", check(f, &inp))?;
            }
            ok("embedding (second order)", check2(|v| Var::embedding(&v[0].mul(&v[0]), &ids, None), &inp))?;
            // with padding: the gradient equals the unpadded one with the padding row zeroed
            let (a, b) = (Var::param(table.clone()), Var::param(table.clone()));
            let w = Var::constant(Tensor::from_vec((0..ids.len() * width).map(|i| i as f64 + 1.0).collect(), &[ids.len() * width]));
            Var::embedding(&a, &ids, pad).reshape(&[ids.len() * width]).mul(&w).sum_all().backward();
            Var::embedding(&b, &ids, None).reshape(&[ids.len() * width]).mul(&w).sum_all().backward();
            let (ga, mut gb) = (a.grad().unwrap().to_vec(), b.grad().unwrap().to_vec());
            if let Some(p) = pad {
                gb[p * width..(p + 1) * width].iter_mut().for_each(|g| *g = 0.0);
            }
            prop_assert_eq!(ga, gb);
        }

        #[test]
        fn gradcheck_masks(x in tensor_strategy(), seed: u64, nc: bool) {
            let mut draw = Draw(seed);
            let x = if nc { noncontiguous(&x) } else { x };
            let shape = x.shape().to_vec();
            // a mask broadcast from size-1 dims and dropped leading dims
            let mshape: Vec<usize> = shape[draw.below(shape.len())..].iter().map(|&s| if draw.below(2) == 0 { 1 } else { s }).collect();
            let mask = Tensor::from_vec((0..mshape.iter().product()).map(|_| draw.below(2) as f64 * 3.0).collect(), &mshape);
            let inp = std::slice::from_ref(&x);
            ok("masked_fill", check(|v| v[0].masked_fill(&mask, 7.0), inp))?;
            ok("masked_fill (second order)", check2(|v| v[0].mul(&v[0]).masked_fill(&mask, 7.0), inp))?;
            // where_ with other broadcast too
            let oshape: Vec<usize> = shape.iter().map(|&s| if draw.below(2) == 0 { 1 } else { s }).collect();
            let other = Tensor::from_vec((0..oshape.iter().product()).map(|i| i as f64 - 1.5).collect(), &oshape);
            let two = [x.clone(), other];
            ok("where_", check(|v| v[0].where_(&mask, &v[1]), &two))?;
            ok("where_ (second order)", check2(|v| v[0].mul(&v[0]).where_(&mask, &v[1].mul(&v[1])), &two))?;
        }

        #[test]
        fn gradcheck_pad_repeat(x in tensor_strategy(), seed: u64, nc: bool) {
            let mut draw = Draw(seed);
            let x = if nc { noncontiguous(&x) } else { x };
            let shape = x.shape().to_vec();
            let nd = shape.len();
            let npairs = 1 + draw.below(nd);
            let inp = std::slice::from_ref(&x);
            for mode in [PadMode::Constant(0.5), PadMode::Reflect, PadMode::Replicate] {
                let pads: Vec<(usize, usize)> = (0..npairs)
                    .map(|k| {
                        let n = shape[nd - 1 - k];
                        // reflect pads stay below the dimension's size
                        let cap = if mode == PadMode::Reflect { n } else { 3 };
                        (draw.below(cap), draw.below(cap))
                    })
                    .collect();
                ok(&format!("pad {mode:?} {pads:?}"), check(|v| v[0].pad(&pads, mode), inp))?;
                ok(&format!("pad {mode:?} {pads:?} (second order)"), check2(|v| v[0].mul(&v[0]).pad(&pads, mode), inp))?;
            }
            let reps: Vec<usize> = (0..nd + draw.below(2)).map(|_| 1 + draw.below(3)).collect();
            ok(&format!("repeat {reps:?}"), check(|v| v[0].repeat(&reps), inp))?;
            ok(&format!("repeat {reps:?} (second order)"), check2(|v| v[0].mul(&v[0]).repeat(&reps), inp))?;
        }
    }

    #[test]
    fn cat_stack_split_values_and_grads() {
        let a = Var::param(r(4, &[2, 2]));
        let b = Var::param(t(&[10.0, 20.0], &[2, 1]));
        let c = Var::cat(&[a.clone(), b.clone()], 1);
        assert_eq!(c.value().to_vec(), vec![0.0, 1.0, 10.0, 2.0, 3.0, 20.0]);
        c.backward_with(&r(6, &[2, 3]));
        assert_eq!(a.grad().unwrap().to_vec(), vec![0.0, 1.0, 3.0, 4.0]);
        assert_eq!(b.grad().unwrap().to_vec(), vec![2.0, 5.0]);

        let s = Var::stack(&[a.clone(), a.mul_scalar(2.0)], -1);
        assert_eq!(s.shape().as_slice(), &[2, 2, 2]);
        assert_eq!(s.value().to_vec(), vec![0.0, 0.0, 1.0, 2.0, 2.0, 4.0, 3.0, 6.0]);

        let x = Var::param(r(5, &[5]));
        let parts = x.split(2, 0);
        assert_eq!(
            parts.iter().map(|p| p.value().to_vec()).collect::<Vec<_>>(),
            vec![vec![0.0, 1.0], vec![2.0, 3.0], vec![4.0]]
        );
        parts[2].mul_scalar(3.0).add(&parts[0].sum_all()).sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![1.0, 1.0, 0.0, 0.0, 3.0]);
        assert_eq!(Var::param(r(5, &[5])).chunk(2, 0).iter().map(Var::numel).collect::<Vec<_>>(), vec![3, 2]);
    }

    #[test]
    fn index_select_and_gather_accumulate_repeats() {
        let x = Var::param(r(6, &[3, 2]));
        let y = x.index_select(0, &[2, 0, 2]);
        assert_eq!(y.value().to_vec(), vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
        y.sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![1.0, 1.0, 0.0, 0.0, 2.0, 2.0]);

        let z = Var::param(r(6, &[2, 3]));
        let g = z.gather(1, &Indices::new(vec![2, 2, 0, 1], &[2, 2]));
        assert_eq!(g.value().to_vec(), vec![2.0, 2.0, 3.0, 4.0]);
        g.backward_with(&t(&[1.0, 10.0, 100.0, 1000.0], &[2, 2]));
        assert_eq!(z.grad().unwrap().to_vec(), vec![0.0, 0.0, 11.0, 100.0, 1000.0, 0.0]);

        let base = Var::param(Tensor::zeros(&[3]));
        let src = Var::param(t(&[1.0, 2.0, 3.0, 4.0], &[4]));
        let s = base.scatter_add(0, &Indices::from_vec(vec![1, 1, 0]), &src);
        assert_eq!(s.value().to_vec(), vec![3.0, 3.0, 0.0]);
        s.backward_with(&t(&[5.0, 6.0, 7.0], &[3]));
        assert_eq!(base.grad().unwrap().to_vec(), vec![5.0, 6.0, 7.0]);
        // the unused last entry of src gets 0
        assert_eq!(src.grad().unwrap().to_vec(), vec![6.0, 6.0, 5.0, 0.0]);
    }

    #[test]
    fn embedding_scatters_into_the_table() {
        let table = Var::param(r(8, &[4, 2]));
        let ids = Indices::new(vec![3, 0, 3, 1, 1, 1], &[2, 3]);
        let e = Var::embedding(&table, &ids, Some(1));
        assert_eq!(e.shape().as_slice(), &[2, 3, 2]);
        assert_eq!(e.value().to_vec()[..6], [6.0, 7.0, 0.0, 1.0, 6.0, 7.0]);
        // padding row 1 is still looked up, but gets no gradient
        assert_eq!(e.value().to_vec()[6..8], [2.0, 3.0]);
        e.sum_all().backward();
        assert_eq!(table.grad().unwrap().to_vec(), vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0]);
    }

    #[test]
    fn masks_route_the_gradient() {
        let x = Var::param(t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
        let mask = t(&[1.0, 0.0], &[2]);
        let m = x.masked_fill(&mask, -9.0);
        assert_eq!(m.value().to_vec(), vec![-9.0, 2.0, -9.0, 4.0]);
        m.sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 1.0, 0.0, 1.0]);

        let a = Var::param(t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
        let b = Var::param(t(&[-1.0], &[1]));
        let w = a.where_(&t(&[0.0, 1.0], &[2, 1]), &b);
        assert_eq!(w.value().to_vec(), vec![-1.0, -1.0, 3.0, 4.0]);
        w.sum_all().backward();
        assert_eq!(a.grad().unwrap().to_vec(), vec![0.0, 0.0, 1.0, 1.0]);
        assert_eq!(b.grad().unwrap().to_vec(), vec![2.0]);
    }

    #[test]
    fn pad_folds_the_border_back() {
        let g = t(&[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0], &[7]);
        // reflect [1 2 3] by 2: [3 2 1 2 3 2 1] -> positions [2 1 0 1 2 1 0]
        let x = Var::param(t(&[1.0, 2.0, 3.0], &[3]));
        let y = x.pad(&[(2, 2)], PadMode::Reflect);
        assert_eq!(y.value().to_vec(), vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
        y.backward_with(&g);
        assert_eq!(x.grad().unwrap().to_vec(), vec![1_000_100.0, 101_010.0, 10_001.0]);
        // replicate by (3, 1): [1 1 1 1 2 3 3] -> positions [0 0 0 0 1 2 2]
        let x = Var::param(t(&[1.0, 2.0, 3.0], &[3]));
        x.pad(&[(3, 1)], PadMode::Replicate).backward_with(&g);
        assert_eq!(x.grad().unwrap().to_vec(), vec![1111.0, 10000.0, 1_100_000.0]);
        // constant: the interior only
        let x = Var::param(t(&[1.0, 2.0], &[1, 2]));
        let y = x.pad(&[(1, 0), (1, 1)], PadMode::Constant(-1.0));
        assert_eq!(y.shape().as_slice(), &[3, 3]);
        y.backward_with(&r(9, &[3, 3]));
        assert_eq!(x.grad().unwrap().to_vec(), vec![4.0, 5.0]);
    }

    #[test]
    fn repeat_sums_the_tiles() {
        let x = Var::param(t(&[1.0, 2.0], &[2]));
        let y = x.repeat(&[2, 3]);
        assert_eq!(y.shape().as_slice(), &[2, 6]);
        y.backward_with(&r(12, &[2, 6]));
        // tiles of the flattened grad [[0..6], [6..12]] at columns (0,2,4) and (1,3,5)
        assert_eq!(
            x.grad().unwrap().to_vec(),
            vec![0.0 + 2.0 + 4.0 + 6.0 + 8.0 + 10.0, 1.0 + 3.0 + 5.0 + 7.0 + 9.0 + 11.0]
        );
    }

    #[test]
    #[should_panic(expected = "cat: shapes [2, 2] and [3, 1] differ outside dim 1")]
    fn cat_shape_mismatch_panics() {
        let _ = Var::cat(&[Var::param(r(4, &[2, 2])), Var::param(r(3, &[3, 1]))], 1);
    }

    #[test]
    #[should_panic(expected = "embedding: id 4 out of range for a table of shape [4, 2]")]
    fn embedding_id_out_of_range_panics() {
        let _ = Var::embedding(&Var::param(r(8, &[4, 2])), &Indices::from_vec(vec![0, 4]), None);
    }

    #[test]
    #[should_panic(expected = "embedding: the table must be 2-D")]
    fn embedding_needs_a_matrix() {
        let _ = Var::embedding(&Var::param(r(8, &[8])), &Indices::from_vec(vec![0]), None);
    }

    #[test]
    #[should_panic(expected = "index_select: index 3 out of range for dim 0 of shape [3, 2]")]
    fn index_select_out_of_range_panics() {
        let _ = Var::param(r(6, &[3, 2])).index_select(0, &[3]);
    }

    #[test]
    #[should_panic(expected = "pad: reflect padding (3, 0) must be smaller than dim 0 of shape [3]")]
    fn reflect_pad_too_wide_panics() {
        let _ = Var::param(r(3, &[3])).pad(&[(3, 0)], PadMode::Reflect);
    }

    #[test]
    #[should_panic(expected = "split: size must be > 0")]
    fn split_zero_panics() {
        let _ = Var::param(r(3, &[3])).split(0, 0);
    }
}
