//! Copying operations: joining, splitting, indexing, padding, repeating.

use crate::element::Float;
use crate::tensor::{normalize_dim, Indices, Shape, Tensor};

/// How [`Tensor::pad`] fills the new border.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    /// A constant value (PyTorch's `mode='constant'`).
    Constant(f64),
    /// Mirror without repeating the edge (`mode='reflect'`: `[1 2 3]` padded by 2 gives
    /// `[3 2 1 2 3 2 1]`).
    Reflect,
    /// Repeat the edge value (`mode='replicate'`).
    Replicate,
}

/// Splits a tensor into `outer x len x inner` for an operation along `dim`.
fn outer_inner(shape: &[usize], d: usize) -> (usize, usize, usize) {
    (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product())
}

impl<E: Float> Tensor<E> {
    /// Joins tensors along an existing dimension, like `torch.cat`.
    ///
    /// **Panics** if the list is empty or the shapes differ outside `dim`.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let a = Tensor::<f32>::ones(&[2, 1]);
    /// let b = Tensor::<f32>::zeros(&[2, 2]);
    /// assert_eq!(Tensor::cat(&[a, b], 1).to_vec(), vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    /// ```
    pub fn cat(tensors: &[Tensor<E>], dim: isize) -> Tensor<E> {
        assert!(!tensors.is_empty(), "cat: expects at least one tensor");
        let first = &tensors[0];
        let d = first.dim(dim, "cat");
        let mut total = 0;
        for t in tensors {
            let ok = t.ndim() == first.ndim()
                && t.shape.iter().zip(&first.shape).enumerate().all(|(i, (a, b))| i == d || a == b);
            assert!(ok, "cat: shapes {:?} and {:?} differ outside dim {d}", first.shape(), t.shape());
            total += t.shape[d];
        }
        let mut shape: Shape = first.shape.clone();
        shape[d] = total;
        let (outer, _, inner) = outer_inner(&shape, d);
        let mut out = crate::alloc::take(shape.iter().product());
        let parts: Vec<Tensor<E>> = tensors.iter().map(|t| t.contiguous()).collect();
        for o in 0..outer {
            for t in &parts {
                let block = t.shape[d] * inner;
                out.extend_from_slice(&t.as_slice().expect("contiguous")[o * block..(o + 1) * block]);
            }
        }
        Tensor::from_vec(out, &shape)
    }

    /// Joins equally shaped tensors along a new dimension, like `torch.stack`.
    ///
    /// **Panics** if the list is empty or the shapes differ.
    pub fn stack(tensors: &[Tensor<E>], dim: isize) -> Tensor<E> {
        assert!(!tensors.is_empty(), "stack: expects at least one tensor");
        let first = &tensors[0];
        for t in tensors {
            assert!(t.shape == first.shape, "stack: shapes {:?} and {:?} differ", first.shape(), t.shape());
        }
        let d = normalize_dim(dim, first.ndim() + 1, "stack", first.shape());
        let parts: Vec<Tensor<E>> = tensors.iter().map(|t| t.unsqueeze(d as isize)).collect();
        Tensor::cat(&parts, d as isize)
    }

    /// Splits into views of `size` along `dim` (the last one may be smaller), like
    /// `torch.split(x, size, dim)`.
    ///
    /// **Panics** if `size == 0`.
    pub fn split(&self, size: usize, dim: isize) -> Vec<Tensor<E>> {
        assert!(size > 0, "split: size must be > 0");
        let d = self.dim(dim, "split");
        let n = self.shape[d];
        (0..n).step_by(size).map(|s| self.narrow(d as isize, s, size.min(n - s))).collect()
    }

    /// Splits into views with the given sizes along `dim`, like `torch.split(x, [..], dim)`.
    ///
    /// **Panics** if the sizes do not add up to the dimension.
    pub fn split_sizes(&self, sizes: &[usize], dim: isize) -> Vec<Tensor<E>> {
        let d = self.dim(dim, "split");
        let total: usize = sizes.iter().sum();
        assert_eq!(total, self.shape[d], "split: sizes {sizes:?} do not add up to dim {d} of shape {:?}", self.shape);
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let v = self.narrow(d as isize, start, s);
                start += s;
                v
            })
            .collect()
    }

    /// Splits into `chunks` views of (nearly) equal size along `dim`, like `torch.chunk`.
    ///
    /// **Panics** if `chunks == 0`.
    pub fn chunk(&self, chunks: usize, dim: isize) -> Vec<Tensor<E>> {
        assert!(chunks > 0, "chunk: chunks must be > 0");
        let n = self.size(dim);
        self.split(n.div_ceil(chunks).max(1), dim)
    }

    /// The entries at `index` along `dim`, like `torch.index_select` (an embedding lookup is
    /// `table.index_select(0, ids)`).
    ///
    /// **Panics** if an index is out of range.
    #[must_use]
    pub fn index_select(&self, dim: isize, index: &[usize]) -> Tensor<E> {
        let d = self.dim(dim, "index_select");
        let src = self.contiguous();
        let s = src.as_slice().expect("contiguous");
        let (outer, n, inner) = outer_inner(&self.shape, d);
        let mut out = crate::alloc::take(outer * index.len() * inner);
        for o in 0..outer {
            for &i in index {
                assert!(i < n, "index_select: index {i} out of range for dim {d} of shape {:?}", self.shape);
                let start = (o * n + i) * inner;
                out.extend_from_slice(&s[start..start + inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape[d] = index.len();
        Tensor::from_vec(out, &shape)
    }

    /// `out[i][j][k] = self[index[i][j][k]][j][k]` (for `dim = 0`; likewise for other dims),
    /// like `torch.gather`. `index` has the same number of dims as `self`, and its sizes are
    /// at most `self`'s outside `dim`.
    ///
    /// **Panics** on a rank mismatch or an index out of range.
    ///
    /// ```
    /// use kiln_tensor::{Indices, Tensor};
    /// // pick one column per row: the scores of each sample's target class
    /// let scores = Tensor::from_vec(vec![0.1f32, 0.7, 0.2, 0.5, 0.3, 0.2], &[2, 3]);
    /// let targets = Indices::new(vec![1, 0], &[2, 1]);
    /// let picked = scores.gather(1, &targets);
    /// assert_eq!(picked.shape(), &[2, 1]);
    /// assert_eq!(picked.to_vec(), vec![0.7, 0.5]);
    /// // along dim 0: out[i][j] = self[index[i][j]][j]
    /// let rows = scores.gather(0, &Indices::new(vec![1, 0, 1], &[1, 3]));
    /// assert_eq!(rows.to_vec(), vec![0.5, 0.7, 0.2]);
    /// ```
    #[must_use]
    pub fn gather(&self, dim: isize, index: &Indices) -> Tensor<E> {
        let d = self.dim(dim, "gather");
        self.check_index_shape(index, d, "gather");
        let ishape = index.shape();
        let mut out = Vec::with_capacity(index.len());
        let mut pos = vec![0usize; ishape.len()];
        for &ix in &index.data {
            assert!(ix < self.shape[d], "gather: index {ix} out of range for dim {d} of shape {:?}", self.shape);
            let mut p = pos.clone();
            p[d] = ix;
            out.push(self.get(&p));
            advance(&mut pos, ishape);
        }
        Tensor::from_vec(out, ishape)
    }

    /// Adds `src` into a copy of `self` at positions given by `index` along `dim`
    /// (`out[index[i][j]][j] += src[i][j]` for `dim = 0`), like `torch.scatter_add`.
    /// Repeated indices accumulate.
    ///
    /// **Panics** on shape mismatches or an index out of range.
    #[must_use]
    pub fn scatter_add(&self, dim: isize, index: &Indices, src: &Tensor<E>) -> Tensor<E> {
        let d = self.dim(dim, "scatter_add");
        self.check_index_shape(index, d, "scatter_add");
        let ishape = index.shape();
        assert!(
            src.ndim() == ishape.len() && ishape.iter().zip(src.shape()).all(|(i, s)| i <= s),
            "scatter_add: index {ishape:?} does not fit src {:?}",
            src.shape()
        );
        let mut out = self.contiguous().to_vec();
        let strides = crate::tensor::contiguous_strides(&self.shape);
        let mut pos = vec![0usize; ishape.len()];
        for &ix in &index.data {
            assert!(ix < self.shape[d], "scatter_add: index {ix} out of range for dim {d} of shape {:?}", self.shape);
            let mut o = 0isize;
            for (k, &p) in pos.iter().enumerate() {
                o += strides[k] * if k == d { ix } else { p } as isize;
            }
            out[o as usize] += src.get(&pos);
            advance(&mut pos, ishape);
        }
        Tensor::from_vec(out, &self.shape)
    }

    /// Adds rows of `src` into a copy of `self` at `index` along `dim`
    /// (`out.index_select(dim, [index[i]]) += src.select(dim, i)`), like `torch.index_add`.
    /// The backward of [`index_select`](Tensor::index_select) and of embedding lookups.
    ///
    /// **Panics** on shape mismatches or an index out of range.
    #[must_use]
    pub fn index_add(&self, dim: isize, index: &[usize], src: &Tensor<E>) -> Tensor<E> {
        let d = self.dim(dim, "index_add");
        let mut want = self.shape.clone();
        want[d] = index.len();
        assert!(
            src.shape() == want.as_slice(),
            "index_add: src {:?} should be {:?} for {} indices into {:?}",
            src.shape(),
            want,
            index.len(),
            self.shape
        );
        let (outer, n, inner) = outer_inner(&self.shape, d);
        let mut out = self.contiguous().to_vec();
        let s = src.contiguous();
        let sv = s.as_slice().expect("contiguous");
        for o in 0..outer {
            for (j, &i) in index.iter().enumerate() {
                assert!(i < n, "index_add: index {i} out of range for dim {d} of shape {:?}", self.shape);
                let dst = (o * n + i) * inner;
                let from = (o * index.len() + j) * inner;
                for (a, &b) in out[dst..dst + inner].iter_mut().zip(&sv[from..from + inner]) {
                    *a += b;
                }
            }
        }
        Tensor::from_vec(out, &self.shape)
    }

    /// A copy of `self` with the elements `start..end` (step `step`) of dimension `dim` replaced
    /// by `src`, like `torch.slice_scatter`. `end` is clamped to the dimension's size. This is
    /// the backward of [`slice`](Tensor::slice) (with `self` zeros): one fill and one strided
    /// copy, and no copy of `self` when its storage is unshared.
    ///
    /// **Panics** if `step == 0`, `dim` is out of range, or `src` does not have the sliced
    /// shape.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::<f32>::zeros(&[2, 4]);
    /// let y = x.slice_scatter(&Tensor::ones(&[2, 2]), 1, 1, 4, 2);
    /// assert_eq!(y.to_vec(), vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    /// ```
    pub fn slice_scatter(self, src: &Tensor<E>, dim: isize, start: usize, end: usize, step: usize) -> Tensor<E> {
        let d = self.dim(dim, "slice_scatter");
        let view = self.slice(dim, start, end, step);
        assert!(
            src.shape() == view.shape(),
            "slice_scatter: src {:?} should be {:?} to fill dim {d} ({start}..{end}, step {step}) of {:?}",
            src.shape(),
            view.shape(),
            self.shape
        );
        drop(view);
        let shape = self.shape.clone();
        let mut out = self.into_vec();
        {
            let mut all = ndarray::ArrayViewMutD::from_shape(ndarray::IxDyn(&shape), &mut out).expect("row-major");
            let end = end.min(shape[d]);
            let mut part = all.slice_axis_mut(
                ndarray::Axis(d),
                ndarray::Slice::new(start as isize, Some(end as isize), step as isize),
            );
            part.assign(&src.view_nd());
        }
        Tensor::from_vec(out, &shape)
    }

    fn check_index_shape(&self, index: &Indices, d: usize, op: &str) {
        let ishape = index.shape();
        assert!(
            ishape.len() == self.ndim()
                && ishape.iter().zip(self.shape()).enumerate().all(|(k, (i, s))| k == d || i <= s),
            "{op}: index of shape {ishape:?} does not fit a tensor of shape {:?} along dim {d}",
            self.shape()
        );
    }

    /// Pads the last dimensions: `pads` lists `(before, after)` pairs starting from the LAST
    /// dimension, as in `torch.nn.functional.pad` (`[(left, right), (top, bottom)]`).
    ///
    /// **Panics** if more pairs than dims are given, or a reflect pad is not smaller than its
    /// dimension.
    #[must_use]
    pub fn pad(&self, pads: &[(usize, usize)], mode: PadMode) -> Tensor<E> {
        assert!(pads.len() <= self.ndim(), "pad: {} pad pairs for shape {:?}", pads.len(), self.shape);
        let nd = self.ndim();
        let mut before = vec![0usize; nd];
        let mut after = vec![0usize; nd];
        for (k, &(b, a)) in pads.iter().enumerate() {
            let d = nd - 1 - k;
            before[d] = b;
            after[d] = a;
            if mode == PadMode::Reflect {
                assert!(
                    b < self.shape[d] && a < self.shape[d],
                    "pad: reflect padding ({b}, {a}) must be smaller than dim {d} of shape {:?}",
                    self.shape
                );
            }
            if mode == PadMode::Replicate {
                assert!(self.shape[d] > 0, "pad: cannot replicate-pad empty dim {d} of shape {:?}", self.shape);
            }
        }
        let shape: Shape = (0..nd).map(|d| self.shape[d] + before[d] + after[d]).collect();
        let n: usize = shape.iter().product();
        let fill = match mode {
            PadMode::Constant(v) => E::from_f64(v),
            _ => E::zero(),
        };
        let mut out = crate::alloc::take_filled(n, fill);
        let mut pos = vec![0usize; nd];
        let mut src = vec![0usize; nd];
        for o in out.iter_mut() {
            let mut inside = true;
            for d in 0..nd {
                let p = pos[d] as isize - before[d] as isize;
                let len = self.shape[d] as isize;
                src[d] = if (0..len).contains(&p) {
                    p as usize
                } else {
                    match mode {
                        PadMode::Constant(_) => {
                            inside = false;
                            0
                        }
                        PadMode::Reflect => {
                            if p < 0 {
                                (-p) as usize
                            } else {
                                (2 * (len - 1) - p) as usize
                            }
                        }
                        PadMode::Replicate => p.clamp(0, len - 1) as usize,
                    }
                };
            }
            if inside {
                *o = self.get(&src);
            }
            advance(&mut pos, &shape);
        }
        Tensor::from_vec(out, &shape)
    }

    /// Tiles the tensor `repeats[d]` times along each dimension, like `torch.Tensor.repeat`
    /// (more repeats than dims add leading dimensions).
    ///
    /// **Panics** if fewer repeats than dims are given.
    #[must_use]
    pub fn repeat(&self, repeats: &[usize]) -> Tensor<E> {
        assert!(
            repeats.len() >= self.ndim(),
            "repeat: {} repeats for a tensor of shape {:?}",
            repeats.len(),
            self.shape
        );
        let lead = repeats.len() - self.ndim();
        let mut src_shape: Shape = smallvec::smallvec![1; lead];
        src_shape.extend_from_slice(&self.shape);
        let src = self.reshape(&src_shape);
        // expand each dim d of size s to [r, s] then merge
        let mut exp_shape = Shape::new();
        let mut view_shape = Shape::new();
        for (d, &r) in repeats.iter().enumerate() {
            exp_shape.push(r);
            exp_shape.push(src_shape[d]);
            view_shape.push(1);
            view_shape.push(src_shape[d]);
        }
        let out_shape: Shape = repeats.iter().zip(&src_shape).map(|(r, s)| r * s).collect();
        src.reshape(&view_shape).expand(&exp_shape).contiguous().reshape(&out_shape)
    }

    /// One-hot rows: shape `[*, num_classes]` with 1 at each class, like `F.one_hot`.
    ///
    /// **Panics** if a class is `>= num_classes`.
    pub fn one_hot(classes: &Indices, num_classes: usize) -> Tensor<E> {
        let mut out = crate::alloc::take_filled(classes.len() * num_classes, E::zero());
        for (i, &c) in classes.data.iter().enumerate() {
            assert!(c < num_classes, "one_hot: class {c} out of range for {num_classes} classes");
            out[i * num_classes + c] = E::one();
        }
        let mut shape = classes.shape.clone();
        shape.push(num_classes);
        Tensor::from_vec(out, &shape)
    }
}

/// Advances a row-major multi-index.
fn advance(pos: &mut [usize], shape: &[usize]) {
    for d in (0..pos.len()).rev() {
        pos[d] += 1;
        if pos[d] < shape[d] {
            return;
        }
        pos[d] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }
    fn r(n: usize, s: &[usize]) -> Tensor<f64> {
        Tensor::arange(0.0, n as f64, 1.0).reshape(s)
    }

    #[test]
    fn cat_stack_split_chunk() {
        let a = r(6, &[2, 3]);
        let b = r(4, &[2, 2]).add_scalar(10.0);
        let c = Tensor::cat(&[a.clone(), b.clone()], -1);
        assert_eq!(c.to_vec(), vec![0.0, 1.0, 2.0, 10.0, 11.0, 3.0, 4.0, 5.0, 12.0, 13.0]);
        let c0 = Tensor::cat(&[a.clone(), a.t().contiguous().reshape(&[2, 3])], 0);
        assert_eq!(c0.shape(), &[4, 3]);
        let s = Tensor::stack(&[a.clone(), a.clone()], 1);
        assert_eq!(s.shape(), &[2, 2, 3]);
        assert_eq!(s.select(1, 1).to_vec(), a.to_vec());
        let parts = c.split(2, 1);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].to_vec(), vec![2.0, 10.0, 5.0, 12.0]);
        assert_eq!(Tensor::cat(&parts, 1), c);
        let ch = r(7, &[7]).chunk(3, 0);
        assert_eq!(ch.iter().map(|x| x.numel()).collect::<Vec<_>>(), vec![3, 3, 1]);
        let ss = r(5, &[5]).split_sizes(&[2, 3], 0);
        assert_eq!(ss[1].to_vec(), vec![2.0, 3.0, 4.0]);
    }

    #[test]
    #[should_panic(expected = "cat: shapes [2, 3] and [3, 3] differ outside dim 1")]
    fn cat_checks_shapes() {
        let _ = Tensor::cat(&[r(6, &[2, 3]), r(9, &[3, 3])], 1);
    }

    #[test]
    fn index_select_gather_scatter() {
        let x = r(12, &[3, 4]);
        assert_eq!(
            x.index_select(0, &[2, 0, 2]).to_vec(),
            vec![8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]
        );
        assert_eq!(x.index_select(1, &[3]).to_vec(), vec![3.0, 7.0, 11.0]);
        assert_eq!(x.t().index_select(0, &[1]).to_vec(), vec![1.0, 5.0, 9.0]);
        let idx = Indices::new(vec![3, 0, 1, 1, 2, 2], &[3, 2]);
        assert_eq!(x.gather(1, &idx).to_vec(), vec![3.0, 0.0, 5.0, 5.0, 10.0, 10.0]);
        let z = Tensor::<f64>::zeros(&[3, 4]);
        let src = Tensor::ones(&[3, 2]);
        let sa = z.scatter_add(1, &idx, &src);
        assert_eq!(sa.to_vec(), vec![1.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        let ia = z.index_add(0, &[1, 1, 0], &Tensor::ones(&[3, 4]));
        assert_eq!(ia.sum(&[1], false).to_vec(), vec![4.0, 8.0, 0.0]);
        let oh: Tensor<f32> = Tensor::one_hot(&Indices::from_vec(vec![2, 0]), 3);
        assert_eq!(oh.to_vec(), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "index_select: index 3 out of range for dim 0 of shape [3, 4]")]
    fn index_select_range() {
        let _ = r(12, &[3, 4]).index_select(0, &[3]);
    }

    #[test]
    fn pad_modes_match_pytorch() {
        let x = t(&[1.0, 2.0, 3.0], &[1, 3]);
        assert_eq!(x.pad(&[(2, 2)], PadMode::Reflect).to_vec(), vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
        assert_eq!(x.pad(&[(2, 1)], PadMode::Replicate).to_vec(), vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
        let c = x.pad(&[(1, 0), (1, 1)], PadMode::Constant(-1.0));
        assert_eq!(c.shape(), &[3, 4]);
        assert_eq!(c.to_vec(), vec![-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 2.0, 3.0, -1.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn repeat_tiles() {
        let x = t(&[1.0, 2.0], &[2]);
        assert_eq!(x.repeat(&[2]).to_vec(), vec![1.0, 2.0, 1.0, 2.0]);
        let y = x.repeat(&[2, 2]);
        assert_eq!(y.shape(), &[2, 4]);
        assert_eq!(y.to_vec(), vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        let z = r(4, &[2, 2]).repeat(&[1, 2]);
        assert_eq!(z.to_vec(), vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }
}
