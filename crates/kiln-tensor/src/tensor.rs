//! The [`Tensor`] type: storage, shape, strides, creation and views.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use smallvec::SmallVec;

use crate::alloc::{self, Buffer};
use crate::element::{DType, Float};
use crate::rng::Rng;

/// A list of dimension sizes. Stored inline for up to six dimensions.
pub type Shape = SmallVec<[usize; 6]>;
/// A list of strides in elements (negative for flipped axes, zero for expanded ones).
pub type Strides = SmallVec<[isize; 6]>;

/// An n-dimensional array of `f32` (default) or `f64`.
///
/// Storage is shared: `clone` is an `Arc` bump, and views ([`permute`](Tensor::permute),
/// [`narrow`](Tensor::narrow), [`slice`](Tensor::slice), [`expand`](Tensor::expand),
/// [`flip`](Tensor::flip), ...) share it too. Operations that change values in place
/// ([`add_`](Tensor::add_), ...) copy the storage first when anyone else holds it (copy on
/// write), so a change is never visible through another tensor.
///
/// Binary operations broadcast as in NumPy and PyTorch; shape errors panic with the op and both
/// shapes. Dimensions are `isize` and may be negative (`-1` is the last), as in PyTorch.
///
/// ```
/// use kiln_tensor::Tensor;
/// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
/// let b = Tensor::from_vec(vec![10.0f32, 20.0, 30.0], &[3]);
/// let c = &a + &b; // broadcast [2, 3] + [3]
/// assert_eq!(c.to_vec(), vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
/// assert_eq!(c.t().shape(), &[3, 2]); // a view, no copy
/// assert_eq!(a.sum(&[1], false).to_vec(), vec![6.0, 15.0]);
/// ```
#[derive(Clone)]
pub struct Tensor<E: Float = f32> {
    pub(crate) storage: Arc<Buffer<E>>,
    pub(crate) shape: Shape,
    pub(crate) strides: Strides,
    pub(crate) offset: usize,
}

/// A tensor of indices (class labels, argmax results, gather/scatter positions, max-pool
/// positions): row-major `usize` data with a shape. The integer counterpart of [`Tensor`].
///
/// The fields are private so that the shape always describes the data: build with
/// [`Indices::new`] / [`Indices::from_vec`], read with [`Indices::as_slice`] and
/// [`Indices::shape`]. Deserialising checks the same invariant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "IndicesRepr")]
pub struct Indices {
    /// Row-major index values.
    pub(crate) data: Vec<usize>,
    /// The shape; its product equals `data.len()`.
    pub(crate) shape: Shape,
}

/// The serialised form of [`Indices`], checked on the way in.
#[derive(serde::Deserialize)]
struct IndicesRepr {
    data: Vec<usize>,
    shape: Shape,
}

impl TryFrom<IndicesRepr> for Indices {
    type Error = String;
    fn try_from(r: IndicesRepr) -> Result<Self, String> {
        let n: usize = r.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("Indices: shape overflows")?;
        if n != r.data.len() {
            return Err(format!(
                "Indices: shape {:?} holds {n} elements, data has {}",
                r.shape.as_slice(),
                r.data.len()
            ));
        }
        Ok(Indices { data: r.data, shape: r.shape })
    }
}

impl Indices {
    /// Indices from row-major data and a shape.
    ///
    /// **Panics** if the shape's element count differs from `data.len()`.
    pub fn new(data: Vec<usize>, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(n, data.len(), "Indices::new: shape {shape:?} holds {n} elements, data has {}", data.len());
        Indices { data, shape: shape.into() }
    }
    /// A 1-D index list.
    pub fn from_vec(data: Vec<usize>) -> Self {
        let n = data.len();
        Indices { data, shape: smallvec::smallvec![n] }
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The index values, row-major.
    ///
    /// ```
    /// let i = kiln_tensor::Indices::new(vec![2, 0, 1, 1], &[2, 2]);
    /// assert_eq!(i.as_slice(), &[2, 0, 1, 1]);
    /// assert_eq!(i.as_slice()[2], 1); // row 1, column 0
    /// ```
    pub fn as_slice(&self) -> &[usize] {
        &self.data
    }
    /// The index values, row-major, in a new `Vec`.
    #[must_use]
    pub fn to_vec(&self) -> Vec<usize> {
        self.data.clone()
    }
    /// The index values, row-major, without a copy.
    #[must_use]
    pub fn into_vec(self) -> Vec<usize> {
        self.data
    }
    /// Number of indices.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether there are no indices.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The indices as floats in a tensor of the same shape.
    #[must_use]
    pub fn to_tensor<E: Float>(&self) -> Tensor<E> {
        Tensor::from_vec(self.data.iter().map(|&i| E::from_usize(i)).collect(), &self.shape)
    }
}

/// Class labels as PyTorch holds them: row-major `i64` data with a shape (an int64 target
/// tensor). Unlike [`Indices`], values may be negative, so that the padding label `-100`
/// (PyTorch's default `ignore_index` of `CrossEntropyLoss` and `NLLLoss`) is written as in
/// PyTorch.
///
/// ```
/// use kiln_tensor::{Indices, Labels};
/// let padded = Labels::new(vec![3, 1, -100, -100], &[2, 2]);
/// assert_eq!(padded.shape(), &[2, 2]);
/// assert_eq!(Labels::from(&Indices::from_vec(vec![2, 0])).data, vec![2, 0]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Labels {
    /// Row-major label values.
    pub data: Vec<i64>,
    /// The shape; its product equals `data.len()`.
    pub shape: Shape,
}

impl Labels {
    /// Labels from row-major data and a shape.
    ///
    /// **Panics** if the shape's element count differs from `data.len()`.
    pub fn new(data: Vec<i64>, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(n, data.len(), "Labels::new: shape {shape:?} holds {n} elements, data has {}", data.len());
        Labels { data, shape: shape.into() }
    }
    /// A 1-D label list.
    pub fn from_vec(data: Vec<i64>) -> Self {
        let n = data.len();
        Labels { data, shape: smallvec::smallvec![n] }
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of labels.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl From<&Indices> for Labels {
    /// The same classes as signed labels (an index above `i64::MAX` becomes `i64::MAX`, which
    /// no loss accepts as a class).
    fn from(i: &Indices) -> Self {
        Labels { data: i.data.iter().map(|&v| i64::try_from(v).unwrap_or(i64::MAX)).collect(), shape: i.shape.clone() }
    }
}

impl From<Indices> for Labels {
    fn from(i: Indices) -> Self {
        Labels::from(&i)
    }
}

/// Row-major (C-order) strides for a shape.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Strides {
    let mut strides: Strides = smallvec::smallvec![0; shape.len()];
    let mut s = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = s;
        s *= shape[i].max(1) as isize;
    }
    strides
}

impl<E: Float> Tensor<E> {
    // ------------------------------------------------------------------ construction

    pub(crate) fn from_parts(storage: Arc<Buffer<E>>, shape: Shape, strides: Strides, offset: usize) -> Self {
        Tensor { storage, shape, strides, offset }
    }

    /// A contiguous tensor owning `data`, read row-major into `shape`.
    ///
    /// **Panics** if `data.len()` differs from the shape's element count.
    ///
    /// ```
    /// let t = kiln_tensor::Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
    /// assert_eq!(t.get(&[1, 0]), 3.0);
    /// ```
    pub fn from_vec(data: Vec<E>, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(n, data.len(), "from_vec: shape {shape:?} holds {n} elements but the data has {}", data.len());
        crate::alloc::tune_from_env_once();
        Tensor {
            storage: Arc::new(Buffer::new(data)),
            shape: shape.into(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// A contiguous tensor copied from a slice.
    ///
    /// **Panics** if `data.len()` differs from the shape's element count.
    pub fn from_slice(data: &[E], shape: &[usize]) -> Self {
        Self::from_vec(alloc::take_copy(data), shape)
    }

    /// A 0-dimensional tensor holding one value.
    pub fn scalar(value: E) -> Self {
        Self::from_vec(vec![value], &[])
    }

    /// A tensor from an ndarray array (copied into row-major order when it is not already).
    pub fn from_ndarray(a: ArrayD<E>) -> Self {
        let shape: Shape = a.shape().into();
        let data = if a.is_standard_layout() {
            let (v, off) = a.into_raw_vec_and_offset();
            match off {
                Some(0) | None => v,
                Some(o) => v[o..].to_vec(),
            }
        } else {
            a.iter().copied().collect()
        };
        Self::from_vec(data, &shape)
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: E) -> Self {
        Self::from_vec(alloc::take_filled(shape.iter().product(), value), shape)
    }
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, E::zero())
    }
    /// A tensor of ones.
    pub fn ones(shape: &[usize]) -> Self {
        Self::full(shape, E::one())
    }
    /// Zeros with this tensor's shape.
    #[must_use]
    pub fn zeros_like(&self) -> Self {
        Self::zeros(&self.shape)
    }
    /// Ones with this tensor's shape.
    #[must_use]
    pub fn ones_like(&self) -> Self {
        Self::ones(&self.shape)
    }
    /// `value` with this tensor's shape.
    #[must_use]
    pub fn full_like(&self, value: E) -> Self {
        Self::full(&self.shape, value)
    }

    /// Values `start, start + step, ...` below `end` (1-D), like `torch.arange`.
    ///
    /// **Panics** if `step` is zero or has the wrong sign for the range.
    pub fn arange(start: f64, end: f64, step: f64) -> Self {
        assert!(step != 0.0, "arange: step must be non-zero");
        assert!((end - start) * step >= 0.0, "arange: step {step} cannot go from {start} to {end}");
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        Self::from_vec((0..n).map(|i| E::from_f64(start + i as f64 * step)).collect(), &[n])
    }

    /// `steps` evenly spaced values from `start` to `end` inclusive (1-D), like `torch.linspace`.
    pub fn linspace(start: f64, end: f64, steps: usize) -> Self {
        let data = match steps {
            0 => vec![],
            1 => vec![E::from_f64(start)],
            _ => {
                let d = (end - start) / (steps - 1) as f64;
                (0..steps)
                    .map(|i| if i == steps - 1 { E::from_f64(end) } else { E::from_f64(start + d * i as f64) })
                    .collect()
            }
        };
        Self::from_vec(data, &[steps])
    }

    /// The `n x n` identity matrix.
    pub fn eye(n: usize) -> Self {
        let mut v = vec![E::zero(); n * n];
        for i in 0..n {
            v[i * n + i] = E::one();
        }
        Self::from_vec(v, &[n, n])
    }

    /// Uniform in `[0, 1)`, like `torch.rand`.
    pub fn rand(shape: &[usize], rng: &mut Rng) -> Self {
        Self::uniform(shape, 0.0, 1.0, rng)
    }
    /// Standard normal, like `torch.randn`.
    pub fn randn(shape: &[usize], rng: &mut Rng) -> Self {
        Self::normal(shape, 0.0, 1.0, rng)
    }
    /// Uniform in `[low, high)`.
    pub fn uniform(shape: &[usize], low: f64, high: f64, rng: &mut Rng) -> Self {
        let n = shape.iter().product();
        Self::from_vec((0..n).map(|_| E::from_f64(low + (high - low) * rng.next_f64())).collect(), shape)
    }
    /// Normal with the given mean and standard deviation.
    pub fn normal(shape: &[usize], mean: f64, std: f64, rng: &mut Rng) -> Self {
        let n = shape.iter().product();
        Self::from_vec((0..n).map(|_| E::from_f64(mean + std * rng.normal_f64())).collect(), shape)
    }
    /// Independent Bernoulli draws (1 or 0) with success probability `p`, like
    /// `torch.empty(shape).bernoulli_(p)`.
    ///
    /// **Panics** if `p` is outside `[0, 1]`.
    pub fn bernoulli(shape: &[usize], p: f64, rng: &mut Rng) -> Self {
        assert!((0.0..=1.0).contains(&p), "bernoulli: p must be in [0, 1], got {p}");
        let n = shape.iter().product();
        Self::from_vec((0..n).map(|_| if rng.next_f64() < p { E::one() } else { E::zero() }).collect(), shape)
    }
    /// Bernoulli draws with per-element probabilities taken from `self`, like `torch.bernoulli`.
    #[must_use]
    pub fn bernoulli_like(&self, rng: &mut Rng) -> Self {
        let data =
            self.to_vec().into_iter().map(|p| if rng.next_f64() < p.to_f64() { E::one() } else { E::zero() }).collect();
        Self::from_vec(data, &self.shape)
    }

    // ------------------------------------------------------------------ inspection

    /// The dimension sizes.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The size of one dimension (negative counts from the end).
    pub fn size(&self, dim: isize) -> usize {
        self.shape[self.dim(dim, "size")]
    }
    /// The strides in elements.
    pub fn strides(&self) -> &[isize] {
        &self.strides
    }
    /// The number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        E::DTYPE
    }

    /// Normalises a possibly negative dimension for an op, panicking with the op's name.
    pub(crate) fn dim(&self, d: isize, op: &str) -> usize {
        normalize_dim(d, self.ndim(), op, &self.shape)
    }

    /// Whether the elements are laid out row-major without gaps starting at the offset.
    pub fn is_contiguous(&self) -> bool {
        if self.numel() == 0 {
            return true;
        }
        let mut expect = 1isize;
        for i in (0..self.ndim()).rev() {
            if self.shape[i] == 1 {
                continue;
            }
            if self.strides[i] != expect {
                return false;
            }
            expect *= self.shape[i] as isize;
        }
        true
    }

    /// Whether two tensors share the same storage buffer.
    pub fn shares_storage(&self, other: &Tensor<E>) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The elements as a row-major slice, when the tensor is contiguous.
    pub fn as_slice(&self) -> Option<&[E]> {
        if self.is_contiguous() {
            Some(&self.storage[self.offset..self.offset + self.numel()])
        } else {
            None
        }
    }

    /// The elements as a mutable row-major slice, copying the storage first if it is shared or
    /// the tensor is not contiguous (copy on write).
    pub fn as_mut_slice(&mut self) -> &mut [E] {
        let n = self.numel();
        let whole = self.offset == 0 && self.storage.len() == n;
        if !(self.is_contiguous() && whole && Arc::get_mut(&mut self.storage).is_some()) {
            *self = Self::from_vec(self.to_vec(), &self.shape.clone());
        }
        let v = Arc::get_mut(&mut self.storage).expect("unique after copy");
        &mut v[..]
    }

    /// Consumes the tensor, returning its row-major elements (no copy when the storage is
    /// unshared and exactly this tensor).
    pub fn into_vec(self) -> Vec<E> {
        if self.is_contiguous() && self.offset == 0 && self.storage.len() == self.numel() {
            match Arc::try_unwrap(self.storage) {
                Ok(v) => v.into_vec(),
                Err(arc) => alloc::take_copy(&arc),
            }
        } else {
            self.to_vec()
        }
    }

    /// The elements in row-major order, copied.
    pub fn to_vec(&self) -> Vec<E> {
        if let Some(s) = self.as_slice() {
            return alloc::take_copy(s);
        }
        let mut out = alloc::take(self.numel());
        self.for_each_offset(|o| out.push(self.storage[o]));
        out
    }

    /// The single value of a one-element tensor, like `.item()`.
    ///
    /// **Panics** if the tensor does not have exactly one element.
    pub fn item(&self) -> E {
        assert_eq!(self.numel(), 1, "item: tensor of shape {:?} has {} elements, not one", self.shape, self.numel());
        self.storage[self.offset]
    }

    /// The element at a multi-index.
    ///
    /// **Panics** if the index has the wrong length or is out of range.
    pub fn get(&self, index: &[usize]) -> E {
        self.storage[self.offset_of(index)]
    }

    pub(crate) fn offset_of(&self, index: &[usize]) -> usize {
        assert_eq!(index.len(), self.ndim(), "get: index {index:?} for a tensor of shape {:?}", self.shape);
        let mut o = self.offset as isize;
        for (d, (&i, &n)) in index.iter().zip(&self.shape).enumerate() {
            assert!(i < n, "get: index {index:?} out of range for shape {:?}", self.shape);
            o += i as isize * self.strides[d];
        }
        o as usize
    }

    /// Calls `f` with the storage offset of every element, in row-major order.
    pub(crate) fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        let nd = self.ndim();
        if self.numel() == 0 {
            return;
        }
        if nd == 0 {
            f(self.offset);
            return;
        }
        let last = nd - 1;
        let (n_last, s_last) = (self.shape[last], self.strides[last]);
        let mut idx: Shape = smallvec::smallvec![0; nd];
        let mut base = self.offset as isize;
        loop {
            let mut o = base;
            for _ in 0..n_last {
                f(o as usize);
                o += s_last;
            }
            // advance the outer index
            let mut d = last;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                base += self.strides[d];
                if idx[d] < self.shape[d] {
                    break;
                }
                base -= self.strides[d] * self.shape[d] as isize;
                idx[d] = 0;
            }
        }
    }

    /// A read-only ndarray view of the elements (no copy).
    pub fn view_nd(&self) -> ArrayViewD<'_, E> {
        // ndarray wants non-negative strides with the pointer at the first element in memory;
        // flipped axes are built with positive strides and then inverted.
        let mut ptr_off = self.offset as isize;
        let mut strides: SmallVec<[usize; 6]> = SmallVec::new();
        let mut flipped: SmallVec<[usize; 6]> = SmallVec::new();
        for (d, (&n, &s)) in self.shape.iter().zip(&self.strides).enumerate() {
            if s < 0 {
                if n > 0 {
                    ptr_off += s * (n as isize - 1);
                }
                strides.push((-s) as usize);
                flipped.push(d);
            } else {
                strides.push(s as usize);
            }
        }
        if self.numel() == 0 {
            return ArrayViewD::from_shape(IxDyn(&self.shape), &[]).expect("empty view");
        }
        // SAFETY: every element the view addresses lies inside `storage` (the tensor's
        // invariant), and the view borrows `self`, so the storage outlives it.
        let mut v = unsafe {
            ArrayViewD::from_shape_ptr(
                IxDyn(&self.shape).strides(IxDyn(&strides)),
                self.storage.as_ptr().offset(ptr_off),
            )
        };
        for d in flipped {
            v.invert_axis(ndarray::Axis(d));
        }
        v
    }

    /// The elements as an owned ndarray array.
    pub fn to_ndarray(&self) -> ArrayD<E> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.to_vec()).expect("shape matches")
    }

    /// A contiguous tensor with the same elements: `self` (shared) when already contiguous,
    /// else a row-major copy.
    #[must_use]
    pub fn contiguous(&self) -> Self {
        if self.is_contiguous() {
            self.clone()
        } else {
            Self::from_vec(self.to_vec(), &self.shape)
        }
    }

    /// Casts to another element type (a copy), like `.to(torch.float64)`.
    #[must_use]
    pub fn cast<F: Float>(&self) -> Tensor<F> {
        let src = self.contiguous();
        let s = src.as_slice().expect("contiguous");
        Tensor::from_vec(alloc::take_collect(s.len(), s.iter().map(|&x| F::from_f64(x.to_f64()))), &self.shape)
    }

    // ------------------------------------------------------------------ views

    /// The same elements with a new shape. A view when the strides allow it (always for a
    /// contiguous tensor), otherwise a copy, like `torch.reshape`.
    ///
    /// **Panics** if the element counts differ.
    #[must_use]
    pub fn reshape(&self, shape: &[usize]) -> Self {
        self.check_numel(shape, "reshape");
        match self.view_strides(shape) {
            Some(strides) => Self::from_parts(self.storage.clone(), shape.into(), strides, self.offset),
            None => Self::from_vec(self.to_vec(), shape),
        }
    }

    /// The same elements with a new shape, never copying, like `torch.Tensor.view`.
    ///
    /// **Panics** if the element counts differ or the strides do not allow a view
    /// (call [`contiguous`](Tensor::contiguous) or use [`reshape`](Tensor::reshape)).
    #[must_use]
    pub fn view(&self, shape: &[usize]) -> Self {
        self.check_numel(shape, "view");
        let strides = self.view_strides(shape).unwrap_or_else(|| {
            panic!(
                "view: shape {:?} with strides {:?} cannot be viewed as {shape:?}; use reshape or contiguous",
                self.shape, self.strides
            )
        });
        Self::from_parts(self.storage.clone(), shape.into(), strides, self.offset)
    }

    fn check_numel(&self, shape: &[usize], op: &str) {
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            self.numel(),
            "{op}: cannot reshape {:?} ({} elements) into {shape:?} ({n} elements)",
            self.shape,
            self.numel()
        );
    }

    /// Strides that view the current elements with `new_shape`, if any (PyTorch's
    /// `computeStride`: each run of merged old dimensions must be contiguous within itself).
    fn view_strides(&self, new_shape: &[usize]) -> Option<Strides> {
        if self.is_contiguous() {
            return Some(contiguous_strides(new_shape));
        }
        if self.numel() == 0 {
            return Some(contiguous_strides(new_shape));
        }
        let old_shape = &self.shape;
        let old_strides = &self.strides;
        let mut new_strides: Strides = smallvec::smallvec![0; new_shape.len()];
        let mut view_d = new_shape.len() as isize - 1;
        let mut chunk_base_stride = *old_strides.last().unwrap_or(&1);
        let mut tensor_numel = 1usize;
        let mut view_numel = 1usize;
        for tensor_d in (0..old_shape.len()).rev() {
            tensor_numel *= old_shape[tensor_d];
            if tensor_d == 0
                || (old_shape[tensor_d - 1] != 1
                    && old_strides[tensor_d - 1] != tensor_numel as isize * chunk_base_stride)
            {
                while view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d as usize] == 1) {
                    new_strides[view_d as usize] = view_numel as isize * chunk_base_stride;
                    view_numel *= new_shape[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if tensor_d > 0 {
                    chunk_base_stride = old_strides[tensor_d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        if view_d != -1 {
            return None;
        }
        Some(new_strides)
    }

    /// Flattens dimensions `start..=end` into one, like `torch.flatten(x, start, end)`.
    #[must_use]
    pub fn flatten(&self, start: isize, end: isize) -> Self {
        if self.ndim() == 0 {
            return self.reshape(&[1]);
        }
        let s = self.dim(start, "flatten");
        let e = self.dim(end, "flatten");
        assert!(s <= e, "flatten: start dim {start} after end dim {end} for shape {:?}", self.shape);
        let mut shape: Shape = self.shape[..s].into();
        shape.push(self.shape[s..=e].iter().product());
        shape.extend_from_slice(&self.shape[e + 1..]);
        self.reshape(&shape)
    }

    /// Reorders the dimensions (a view), like `torch.permute`.
    ///
    /// **Panics** if `dims` is not a permutation of the dimensions.
    #[must_use]
    pub fn permute(&self, dims: &[isize]) -> Self {
        let nd = self.ndim();
        assert_eq!(dims.len(), nd, "permute: {dims:?} does not list the {nd} dims of shape {:?}", self.shape);
        let mut seen = [false; 64];
        let mut shape = Shape::new();
        let mut strides = Strides::new();
        for &d in dims {
            let d = self.dim(d, "permute");
            assert!(!seen[d], "permute: dim {d} repeated in {dims:?}");
            seen[d] = true;
            shape.push(self.shape[d]);
            strides.push(self.strides[d]);
        }
        Self::from_parts(self.storage.clone(), shape, strides, self.offset)
    }

    /// Swaps two dimensions (a view), like `torch.transpose`.
    #[must_use]
    pub fn transpose(&self, d0: isize, d1: isize) -> Self {
        let (a, b) = (self.dim(d0, "transpose"), self.dim(d1, "transpose"));
        let mut t = self.clone();
        t.shape.swap(a, b);
        t.strides.swap(a, b);
        t
    }

    /// The transpose of a matrix (a view); 0-D and 1-D tensors are returned as they are,
    /// like `torch.Tensor.t`.
    ///
    /// **Panics** for more than two dimensions.
    #[must_use]
    pub fn t(&self) -> Self {
        assert!(self.ndim() <= 2, "t: expects at most 2 dims, got shape {:?}; use transpose", self.shape);
        if self.ndim() < 2 {
            self.clone()
        } else {
            self.transpose(0, 1)
        }
    }

    /// `length` elements of dimension `dim` starting at `start` (a view), like `torch.narrow`.
    #[must_use]
    ///
    /// **Panics** if `start + length` exceeds the dimension.
    pub fn narrow(&self, dim: isize, start: usize, length: usize) -> Self {
        let n = self.size(dim);
        assert!(
            start + length <= n,
            "narrow: start ({start}) + length ({length}) exceeds dimension {dim} of size {n} in shape {:?}",
            self.shape
        );
        self.slice(dim, start, start + length, 1)
    }

    /// Elements `start..end` with `step` along `dim` (a view), like `x[..., start:end:step]`.
    /// `end` is clamped to the dimension's size.
    ///
    /// **Panics** if `step == 0` or `start > end` after clamping.
    #[must_use]
    pub fn slice(&self, dim: isize, start: usize, end: usize, step: usize) -> Self {
        let d = self.dim(dim, "slice");
        assert!(step > 0, "slice: step must be > 0");
        let n = self.shape[d];
        let end = end.min(n);
        assert!(start <= end, "slice: range {start}..{end} out of bounds for dim {d} of shape {:?}", self.shape);
        let len = (end - start).div_ceil(step);
        let mut t = self.clone();
        if len > 0 {
            t.offset = (self.offset as isize + start as isize * self.strides[d]) as usize;
        }
        t.shape[d] = len;
        t.strides[d] = self.strides[d] * step as isize;
        t
    }

    /// The sub-tensor at `index` of dimension `dim`, with that dimension removed (a view),
    /// like `x.select(dim, index)` / `x[index]`.
    #[must_use]
    pub fn select(&self, dim: isize, index: usize) -> Self {
        let d = self.dim(dim, "select");
        assert!(index < self.shape[d], "select: index {index} out of range for dim {d} of shape {:?}", self.shape);
        let mut t = self.narrow(dim, index, 1);
        t.shape.remove(d);
        t.strides.remove(d);
        t
    }

    /// Removes every dimension of size 1 (a view).
    #[must_use]
    pub fn squeeze(&self) -> Self {
        let mut t = self.clone();
        let (mut shape, mut strides) = (Shape::new(), Strides::new());
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            if n != 1 {
                shape.push(n);
                strides.push(s);
            }
        }
        t.shape = shape;
        t.strides = strides;
        t
    }

    /// Removes dimension `dim` if its size is 1 (a view), like `torch.squeeze(x, dim)`.
    #[must_use]
    pub fn squeeze_dim(&self, dim: isize) -> Self {
        let d = self.dim(dim, "squeeze");
        let mut t = self.clone();
        if self.shape[d] == 1 {
            t.shape.remove(d);
            t.strides.remove(d);
        }
        t
    }

    /// Inserts a dimension of size 1 at `dim` (a view); `dim` may be `ndim` (or -1 for the end).
    #[must_use]
    pub fn unsqueeze(&self, dim: isize) -> Self {
        let d = normalize_dim(dim, self.ndim() + 1, "unsqueeze", &self.shape);
        let mut t = self.clone();
        let stride = if d < self.ndim() { self.strides[d] * self.shape[d] as isize } else { 1 };
        t.shape.insert(d, 1);
        t.strides.insert(d, stride);
        t
    }

    /// Broadcasts to a larger shape without copying (stride 0 on new or size-1 dimensions),
    /// like `torch.Tensor.expand`.
    ///
    /// **Panics** if the shapes are not broadcast-compatible.
    #[must_use]
    pub fn expand(&self, shape: &[usize]) -> Self {
        let nd = shape.len();
        assert!(nd >= self.ndim(), "expand: cannot expand shape {:?} to fewer dims {shape:?}", self.shape);
        let lead = nd - self.ndim();
        let mut strides: Strides = smallvec::smallvec![0; nd];
        for i in 0..self.ndim() {
            let (have, want) = (self.shape[i], shape[lead + i]);
            if have == want {
                strides[lead + i] = self.strides[i];
            } else {
                assert!(
                    have == 1,
                    "expand: shape {:?} cannot be broadcast to {shape:?} (dim {i}: {have} vs {want})",
                    self.shape
                );
            }
        }
        Self::from_parts(self.storage.clone(), shape.into(), strides, self.offset)
    }

    /// Same as [`expand`](Tensor::expand), NumPy's name.
    #[must_use]
    pub fn broadcast_to(&self, shape: &[usize]) -> Self {
        self.expand(shape)
    }

    /// Reverses the order of elements along the given dimensions (a view with negative
    /// strides; PyTorch copies here, kiln does not need to).
    #[must_use]
    pub fn flip(&self, dims: &[isize]) -> Self {
        let mut t = self.clone();
        for &d in dims {
            let d = self.dim(d, "flip");
            let n = t.shape[d];
            if n > 1 {
                t.offset = (t.offset as isize + (n as isize - 1) * t.strides[d]) as usize;
            }
            t.strides[d] = -t.strides[d];
        }
        t
    }
}

/// Normalises a possibly negative dimension against `ndim`, panicking with the op's name.
pub(crate) fn normalize_dim(d: isize, ndim: usize, op: &str, shape: &[usize]) -> usize {
    let n = ndim as isize;
    let r = if d < 0 { d + n } else { d };
    assert!(r >= 0 && r < n, "{op}: dim {d} out of range for a tensor of shape {shape:?}");
    r as usize
}

impl<E: Float> std::fmt::Debug for Tensor<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl<E: Float> std::fmt::Display for Tensor<E> {
    /// PyTorch's layout: `tensor([[1.0000, 2.0000], ...], shape=[2, 2])`, summarised with
    /// `...` beyond 1000 elements (three items at each edge).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let summarize = self.numel() > 1000;
        let prec = f.precision().unwrap_or(4);
        let mut out = String::from("tensor(");
        fn rec<E: Float>(
            t: &Tensor<E>,
            d: usize,
            idx: &mut Vec<usize>,
            out: &mut String,
            sum: bool,
            prec: usize,
            indent: usize,
        ) {
            if d == t.ndim() {
                let v = t.get(idx);
                out.push_str(&format!("{:.*}", prec, v));
                return;
            }
            out.push('[');
            let n = t.shape[d];
            let show: Vec<Option<usize>> = if sum && n > 6 {
                (0..3).map(Some).chain(std::iter::once(None)).chain((n - 3..n).map(Some)).collect()
            } else {
                (0..n).map(Some).collect()
            };
            for (k, i) in show.iter().enumerate() {
                if k > 0 {
                    if d + 1 == t.ndim() {
                        out.push_str(", ");
                    } else {
                        out.push_str(",\n");
                        out.push_str(&" ".repeat(indent + d + 1));
                    }
                }
                match i {
                    Some(i) => {
                        idx.push(*i);
                        rec(t, d + 1, idx, out, sum, prec, indent);
                        idx.pop();
                    }
                    None => out.push_str("..."),
                }
            }
            out.push(']');
        }
        if self.ndim() == 0 {
            out.push_str(&format!("{:.*}", prec, self.item()));
        } else {
            rec(self, 0, &mut vec![], &mut out, summarize, prec, 7);
        }
        out.push_str(&format!(", shape={:?}", self.shape.as_slice()));
        if E::DTYPE == DType::F64 {
            out.push_str(", dtype=f64");
        }
        out.push(')');
        f.write_str(&out)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TensorRepr<E> {
    shape: Vec<usize>,
    data: Vec<E>,
}

impl<E: Float> serde::Serialize for Tensor<E> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TensorRepr { shape: self.shape.to_vec(), data: self.to_vec() }.serialize(s)
    }
}

impl<'de, E: Float> serde::Deserialize<'de> for Tensor<E> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = TensorRepr::<E>::deserialize(d)?;
        // checked: a forged shape must not overflow into a small count
        let n = r.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(|| {
            serde::de::Error::custom(format!("tensor: shape {:?} has more elements than memory can hold", r.shape))
        })?;
        if n != r.data.len() {
            return Err(serde::de::Error::custom(format!(
                "tensor: shape {:?} holds {n} elements but the data has {}",
                r.shape,
                r.data.len()
            )));
        }
        Ok(Tensor::from_vec(r.data, &r.shape))
    }
}

impl<E: Float> PartialEq for Tensor<E> {
    /// Equal shapes and equal elements.
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.to_vec() == other.to_vec()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn indices_deserialise_only_when_the_shape_describes_the_data() {
        let i = Indices::new(vec![2, 0, 1, 1], &[2, 2]);
        let text = serde_json::to_string(&i).unwrap();
        assert_eq!(serde_json::from_str::<Indices>(&text).unwrap(), i);
        let forged = r#"{"data":[1,2,3],"shape":[2,2]}"#;
        let err = serde_json::from_str::<Indices>(forged).unwrap_err().to_string();
        assert!(err.contains("shape [2, 2] holds 4 elements, data has 3"), "{err}");
        let overflow = format!(r#"{{"data":[],"shape":[{},{}]}}"#, usize::MAX, 2);
        assert!(serde_json::from_str::<Indices>(&overflow).unwrap_err().to_string().contains("overflows"));
    }

    /// Row-major multi-index of flat position `i`.
    pub(crate) fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
        idx
    }

    fn t(v: &[f64], s: &[usize]) -> Tensor<f64> {
        Tensor::from_slice(v, s)
    }

    #[test]
    fn creation() {
        assert_eq!(Tensor::<f32>::zeros(&[2, 3]).to_vec(), vec![0.0; 6]);
        assert_eq!(Tensor::<f64>::arange(0.0, 1.0, 0.25).to_vec(), vec![0.0, 0.25, 0.5, 0.75]);
        assert_eq!(Tensor::<f64>::linspace(0.0, 1.0, 5).to_vec(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(Tensor::<f64>::eye(2).to_vec(), vec![1.0, 0.0, 0.0, 1.0]);
        let mut r = Rng::new(5);
        let a: Tensor<f32> = Tensor::randn(&[3, 4], &mut r);
        let mut r2 = Rng::new(5);
        assert_eq!(a, Tensor::randn(&[3, 4], &mut r2));
        let u: Tensor<f64> = Tensor::uniform(&[1000], -2.0, 3.0, &mut r);
        assert!(u.min_all() >= -2.0 && u.max_all() < 3.0);
        let b: Tensor<f64> = Tensor::bernoulli(&[1000], 0.3, &mut r);
        let m = b.mean(&[], false).item();
        assert!((m - 0.3).abs() < 0.06, "{m}");
        assert_eq!(Tensor::<f64>::scalar(2.5).item(), 2.5);
        assert_eq!(Tensor::<f64>::full(&[2], 7.0).ones_like().to_vec(), vec![1.0, 1.0]);
    }

    #[test]
    #[should_panic(expected = "from_vec: shape [2, 3] holds 6 elements but the data has 5")]
    fn from_vec_checks_length() {
        let _ = Tensor::<f32>::from_vec(vec![0.0; 5], &[2, 3]);
    }

    #[test]
    fn views_share_storage_and_index_correctly() {
        let x = t(&(0..24).map(|i| i as f64).collect::<Vec<_>>(), &[2, 3, 4]);
        let p = x.permute(&[2, 0, 1]);
        assert!(p.shares_storage(&x));
        assert_eq!(p.shape(), &[4, 2, 3]);
        assert_eq!(p.get(&[3, 1, 2]), x.get(&[1, 2, 3]));
        let n = x.narrow(2, 1, 2);
        assert_eq!(n.shape(), &[2, 3, 2]);
        assert_eq!(n.get(&[1, 0, 1]), 14.0);
        let s = x.slice(2, 0, 4, 3);
        assert_eq!(s.to_vec(), vec![0.0, 3.0, 4.0, 7.0, 8.0, 11.0, 12.0, 15.0, 16.0, 19.0, 20.0, 23.0]);
        let f = x.flip(&[-1]);
        assert!(f.shares_storage(&x));
        assert_eq!(f.get(&[0, 0, 0]), 3.0);
        assert_eq!(f.flip(&[2]).to_vec(), x.to_vec());
        assert_eq!(x.flip(&[0, 2]).view_nd().iter().copied().collect::<Vec<_>>(), x.flip(&[0, 2]).to_vec());
        let u = x.unsqueeze(1);
        assert_eq!(u.shape(), &[2, 1, 3, 4]);
        assert_eq!(u.squeeze().shape(), &[2, 3, 4]);
        assert_eq!(x.unsqueeze(-1).shape(), &[2, 3, 4, 1]);
        let e = t(&[1.0, 2.0, 3.0], &[3, 1]).expand(&[2, 3, 4]);
        assert_eq!(e.strides(), &[0, 1, 0]);
        assert_eq!(e.get(&[1, 2, 3]), 3.0);
        assert_eq!(x.select(1, 2).to_vec(), vec![8.0, 9.0, 10.0, 11.0, 20.0, 21.0, 22.0, 23.0]);
        // reshape of a contiguous tensor is a view, of a transposed one a copy
        assert!(x.reshape(&[6, 4]).shares_storage(&x));
        let tr = x.transpose(0, 2);
        assert!(!tr.is_contiguous());
        let r = tr.reshape(&[24]);
        assert_eq!(r.get(&[1]), 12.0);
        // a view of merged dims that stay contiguous among themselves
        let v = x.narrow(0, 1, 1).view(&[12]);
        assert!(v.shares_storage(&x));
        assert_eq!(v.get(&[0]), 12.0);
        assert_eq!(x.flatten(1, 2).shape(), &[2, 12]);
        assert_eq!(x.contiguous().as_slice().unwrap().len(), 24);
        assert!(x.contiguous().shares_storage(&x));
    }

    #[test]
    #[should_panic(expected = "view: shape [4, 3] with strides [1, 4] cannot be viewed as [12]")]
    fn view_of_transposed_panics() {
        let x = t(&[0.0; 12], &[3, 4]).t();
        let _ = x.view(&[12]);
    }

    #[test]
    #[should_panic(expected = "expand: shape [2, 3] cannot be broadcast to [2, 4]")]
    fn expand_checks_shapes() {
        let _ = t(&[0.0; 6], &[2, 3]).expand(&[2, 4]);
    }

    #[test]
    fn copy_on_write_keeps_clones_apart() {
        let a = t(&[1.0, 2.0, 3.0], &[3]);
        let mut b = a.clone();
        b.add_scalar_(1.0);
        assert_eq!(a.to_vec(), vec![1.0, 2.0, 3.0]);
        assert_eq!(b.to_vec(), vec![2.0, 3.0, 4.0]);
        // unique storage is updated in place, no copy
        let p = b.storage.as_ptr();
        b.mul_scalar_(2.0);
        assert_eq!(p, b.storage.as_ptr());
        // in place through a view copies and leaves the base alone
        let mut v = a.narrow(0, 1, 2);
        v.fill_(0.0);
        assert_eq!(a.to_vec(), vec![1.0, 2.0, 3.0]);
        assert_eq!(v.to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn display_like_pytorch() {
        let x = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        assert_eq!(
            format!("{x}"),
            "tensor([[1.0000, 2.0000, 3.0000],\n        [4.0000, 5.0000, 6.0000]], shape=[2, 3])"
        );
        assert_eq!(format!("{}", Tensor::<f64>::scalar(1.5)), "tensor(1.5000, shape=[], dtype=f64)");
        let big = Tensor::<f32>::zeros(&[2000]);
        let s = format!("{big}");
        assert!(s.contains("..."), "{s}");
        assert!(s.len() < 100);
    }

    #[test]
    fn serde_round_trip() {
        let x = Tensor::<f64>::from_vec(vec![1.0, -2.5, 3.25, 4.0], &[2, 2]).t();
        let j = serde_json::to_string(&x).unwrap();
        let y: Tensor<f64> = serde_json::from_str(&j).unwrap();
        assert_eq!(x, y);
        let bytes = bincode::serde::encode_to_vec(&x, bincode::config::standard()).unwrap();
        let (z, _): (Tensor<f64>, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(x, z);
        let bad = r#"{"shape":[2,2],"data":[1.0]}"#;
        assert!(serde_json::from_str::<Tensor<f64>>(bad).is_err());
    }

    #[test]
    fn cast_between_precisions() {
        let x = Tensor::<f64>::from_vec(vec![1.5, 2.25], &[2]);
        let y: Tensor<f32> = x.cast();
        assert_eq!(y.to_vec(), vec![1.5f32, 2.25]);
        assert_eq!(y.cast::<f64>(), x);
    }

    #[test]
    fn to_vec_of_strided_views_matches_get() {
        let x = t(&(0..60).map(|i| i as f64).collect::<Vec<_>>(), &[3, 4, 5]);
        for v in [x.permute(&[1, 2, 0]), x.slice(1, 1, 4, 2).flip(&[0, 2]), x.transpose(0, 1).narrow(2, 2, 3)] {
            let flat = v.to_vec();
            for (i, &f) in flat.iter().enumerate() {
                assert_eq!(f, v.get(&unravel(i, v.shape())));
            }
            assert_eq!(v.view_nd().iter().copied().collect::<Vec<_>>(), flat);
        }
    }
}
