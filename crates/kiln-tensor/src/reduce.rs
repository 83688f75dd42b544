//! Reductions over any set of axes, and softmax / log-softmax along one axis.
//!
//! An empty axis list reduces over every dimension (like `x.sum()`).

use rayon::prelude::*;

use crate::element::Float;
use crate::parallel;
use crate::tensor::{Indices, Shape, Tensor};

/// The norm `norm` computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// `sum |x|^p ^ (1/p)` for a finite `p > 0` (2.0 is the Euclidean norm).
    P(f64),
    /// `max |x|`.
    Inf,
}

impl<E: Float> Tensor<E> {
    /// Normalised, sorted, de-duplicated reduction axes (all axes when empty).
    fn reduction_axes(&self, axes: &[isize], op: &str) -> Vec<usize> {
        if axes.is_empty() {
            return (0..self.ndim()).collect();
        }
        let mut v: Vec<usize> = axes.iter().map(|&a| self.dim(a, op)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn reduced_shape(&self, axes: &[usize], keepdim: bool) -> Shape {
        let mut s = Shape::new();
        for (d, &n) in self.shape.iter().enumerate() {
            if axes.contains(&d) {
                if keepdim {
                    s.push(1);
                }
            } else {
                s.push(n);
            }
        }
        s
    }

    /// Reduces every lane (the elements sharing the kept coordinates) with `f`, which gets
    /// the lane as a contiguous slice. The generic engine behind the reductions.
    ///
    /// **Panics** on an axis out of range.
    pub fn reduce_lanes(&self, axes: &[isize], keepdim: bool, op: &str, f: impl Fn(&[E]) -> E + Sync + Send) -> Self {
        let axes = self.reduction_axes(axes, op);
        let out_shape = self.reduced_shape(&axes, keepdim);
        let kept: Vec<usize> = (0..self.ndim()).filter(|d| !axes.contains(d)).collect();
        let lane: usize = axes.iter().map(|&d| self.shape[d]).product();
        let order: Vec<isize> = kept.iter().chain(axes.iter()).map(|&d| d as isize).collect();
        let src = self.permute(&order).contiguous();
        let data = src.as_slice().expect("contiguous");
        let n_out: usize = kept.iter().map(|&d| self.shape[d]).product();
        let mut out = crate::alloc::take_filled(n_out, E::zero());
        if lane == 0 {
            let v = f(&[]);
            out.iter_mut().for_each(|o| *o = v);
        } else if data.len() >= parallel::elementwise_min() && n_out > 1 && parallel::get_num_threads() > 1 {
            parallel::install(|_| {
                out.par_iter_mut().zip(data.par_chunks(lane)).for_each(|(o, l)| *o = f(l));
            });
        } else {
            for (o, l) in out.iter_mut().zip(data.chunks(lane)) {
                *o = f(l);
            }
        }
        Tensor::from_vec(out, &out_shape)
    }

    /// Sum over `axes` (all when empty), keeping reduced dims as size 1 when `keepdim`.
    ///
    /// ```
    /// let x = kiln_tensor::Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
    /// assert_eq!(x.sum(&[0], false).to_vec(), vec![4.0, 6.0]);
    /// assert_eq!(x.sum(&[], true).shape(), &[1, 1]);
    /// ```
    #[must_use]
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Self {
        let ax = self.reduction_axes(axes, "sum");
        let out_shape = self.reduced_shape(&ax, keepdim);
        if ax.is_empty() || self.ndim() == 0 {
            return self.contiguous().reshape(&out_shape);
        }
        // Strided accumulation over the data in memory order: no transposed copy (a conv
        // bias gradient sums [N, C, H, W] over {0, 2, 3}).
        let x = self.contiguous();
        let data = x.as_slice().expect("contiguous");
        // Coalesce neighbouring dims that are all reduced or all kept.
        let mut dims: Vec<(usize, bool)> = Vec::new();
        for (d, &n) in self.shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let red = ax.contains(&d);
            match dims.last_mut() {
                Some((m, r)) if *r == red => *m *= n,
                _ => dims.push((n, red)),
            }
        }
        let n_out: usize = out_shape.iter().product();
        let mut out = crate::alloc::take_filled(n_out, E::zero());
        if data.is_empty() || n_out == 0 {
            return Tensor::from_vec(out, &out_shape);
        }
        if dims.is_empty() {
            out[0] = data[0];
            return Tensor::from_vec(out, &out_shape);
        }
        // Output stride of each coalesced dim (0 for reduced ones).
        let mut ostride = vec![0usize; dims.len()];
        let mut acc = 1;
        for i in (0..dims.len()).rev() {
            if !dims[i].1 {
                ostride[i] = acc;
                acc *= dims[i].0;
            }
        }
        if let [(rows, true), (cols, false)] = dims[..] {
            // Column sums of a [rows, cols] matrix (a bias gradient): split the columns across
            // the pool; each column keeps the serial order of its adds, so the result does not
            // depend on the thread count.
            if data.len() >= parallel::elementwise_min() && parallel::get_num_threads() > 1 && cols >= 32 {
                let block = cols.div_ceil(4 * parallel::get_num_threads()).max(16);
                parallel::install(|_| {
                    out.par_chunks_mut(block).enumerate().for_each(|(b, o)| {
                        let c0 = b * block;
                        for r in 0..rows {
                            let row = &data[r * cols + c0..r * cols + c0 + o.len()];
                            for (a, &v) in o.iter_mut().zip(row) {
                                *a += v;
                            }
                        }
                    })
                });
                return Tensor::from_vec(out, &out_shape);
            }
        }
        let (inner, inner_red) = *dims.last().expect("non-empty");
        let outer_dims = &dims[..dims.len() - 1];
        let mut idx = vec![0usize; outer_dims.len()];
        let mut o = 0usize;
        for run in data.chunks_exact(inner) {
            if inner_red {
                out[o] += run.iter().copied().sum::<E>();
            } else {
                for (a, &v) in out[o..o + inner].iter_mut().zip(run) {
                    *a += v;
                }
            }
            for k in (0..outer_dims.len()).rev() {
                idx[k] += 1;
                o += ostride[k];
                if idx[k] < outer_dims[k].0 {
                    break;
                }
                o -= ostride[k] * outer_dims[k].0;
                idx[k] = 0;
            }
        }
        Tensor::from_vec(out, &out_shape)
    }

    /// Sum of all elements as a 0-d tensor.
    #[must_use]
    pub fn sum_all(&self) -> Self {
        self.sum(&[], false)
    }

    /// Mean over `axes` (all when empty).
    #[must_use]
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Self {
        let ax = self.reduction_axes(axes, "mean");
        let count: usize = ax.iter().map(|&d| self.shape[d]).product();
        let s = self.sum(axes, keepdim);
        s.div_scalar(E::from_usize(count))
    }

    /// Variance over `axes` with Bessel's `correction` (1 = unbiased, PyTorch's default; 0 =
    /// population), computed in two passes for accuracy.
    #[must_use]
    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Self {
        self.var_named(axes, correction, keepdim, "var")
    }

    fn var_named(&self, axes: &[isize], correction: usize, keepdim: bool, op: &str) -> Self {
        self.reduce_lanes(axes, keepdim, op, move |l| {
            let n = l.len();
            if n == 0 {
                return E::nan();
            }
            let mean = l.iter().copied().sum::<E>() / E::from_usize(n);
            let ss: E = l.iter().map(|&x| (x - mean) * (x - mean)).sum();
            let denom = n as isize - correction as isize;
            if denom <= 0 {
                E::nan()
            } else {
                ss / E::from_usize(denom as usize)
            }
        })
    }

    /// Standard deviation over `axes` with Bessel's `correction`.
    #[must_use]
    pub fn std(&self, axes: &[isize], correction: usize, keepdim: bool) -> Self {
        self.var_named(axes, correction, keepdim, "std").sqrt()
    }

    /// Maximum over `axes` (NaN propagates).
    ///
    /// **Panics** when a reduced lane is empty.
    #[must_use]
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Self {
        self.reduce_lanes(axes, keepdim, "max", |l| {
            assert!(!l.is_empty(), "max: cannot reduce an empty dimension");
            l.iter().copied().fold(E::neg_infinity(), |m, x| {
                if x > m || x.is_nan() || m.is_nan() {
                    if m.is_nan() {
                        m
                    } else {
                        x
                    }
                } else {
                    m
                }
            })
        })
    }

    /// Minimum over `axes` (NaN propagates).
    ///
    /// **Panics** when a reduced lane is empty.
    #[must_use]
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Self {
        self.reduce_lanes(axes, keepdim, "min", |l| {
            assert!(!l.is_empty(), "min: cannot reduce an empty dimension");
            l.iter().copied().fold(E::infinity(), |m, x| {
                if x < m || x.is_nan() || m.is_nan() {
                    if m.is_nan() {
                        m
                    } else {
                        x
                    }
                } else {
                    m
                }
            })
        })
    }

    /// Largest element of the whole tensor.
    pub fn max_all(&self) -> E {
        self.max(&[], false).item()
    }
    /// Smallest element of the whole tensor.
    pub fn min_all(&self) -> E {
        self.min(&[], false).item()
    }

    /// Position of the first maximum along `dim` (a NaN counts as the maximum), like
    /// `torch.argmax`.
    #[must_use]
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Indices {
        self.max_dim(dim, keepdim).1
    }

    /// Position of the first minimum along `dim`, like `torch.argmin`.
    #[must_use]
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Indices {
        self.neg().max_dim(dim, keepdim).1
    }

    /// Maximum values along `dim` and their positions, like `torch.max(x, dim)`.
    ///
    /// **Panics** if the dimension is empty.
    pub fn max_dim(&self, dim: isize, keepdim: bool) -> (Tensor<E>, Indices) {
        let d = self.dim(dim, "max_dim");
        assert!(self.shape[d] > 0, "max_dim: dim {d} of shape {:?} is empty", self.shape);
        let lane = self.shape[d];
        let order: Vec<isize> =
            (0..self.ndim()).filter(|&i| i != d).chain(std::iter::once(d)).map(|i| i as isize).collect();
        let src = self.permute(&order).contiguous();
        let data = src.as_slice().expect("contiguous");
        let n_out = data.len() / lane;
        let mut vals = crate::alloc::take(n_out);
        let mut idx = Vec::with_capacity(n_out);
        for l in data.chunks(lane) {
            let (mut bi, mut bv) = (0, l[0]);
            for (i, &x) in l.iter().enumerate().skip(1) {
                if bv.is_nan() {
                    break;
                }
                if x > bv || x.is_nan() {
                    bi = i;
                    bv = x;
                }
            }
            vals.push(bv);
            idx.push(bi);
        }
        let shape = self.reduced_shape(&[d], keepdim);
        (Tensor::from_vec(vals, &shape), Indices::new(idx, &shape))
    }

    /// `log(sum(exp(x)))` over `axes`, computed stably (shifted by the maximum).
    #[must_use]
    pub fn logsumexp(&self, axes: &[isize], keepdim: bool) -> Self {
        self.reduce_lanes(axes, keepdim, "logsumexp", |l| {
            if l.iter().any(|x| x.is_nan()) {
                return E::nan();
            }
            let m = l.iter().copied().fold(E::neg_infinity(), E::max);
            if m == E::neg_infinity() {
                return m;
            }
            if m.is_infinite() {
                return m;
            }
            m + l.iter().map(|&x| (x - m).exp()).sum::<E>().ln()
        })
    }

    /// The vector norm over `axes` (all when empty), like `torch.linalg.vector_norm`.
    #[must_use]
    pub fn norm(&self, p: Norm, axes: &[isize], keepdim: bool) -> Self {
        match p {
            Norm::Inf => self.reduce_lanes(axes, keepdim, "norm", |l| {
                l.iter().fold(E::zero(), |m, &x| if m.is_nan() || x.is_nan() { E::nan() } else { m.max(x.abs()) })
            }),
            Norm::P(p) => {
                assert!(p > 0.0, "norm: p must be > 0, got {p}");
                let pe = E::from_f64(p);
                if p == 2.0 {
                    self.reduce_lanes(axes, keepdim, "norm", |l| l.iter().map(|&x| x * x).sum::<E>().sqrt())
                } else if p == 1.0 {
                    self.reduce_lanes(axes, keepdim, "norm", |l| l.iter().map(|&x| x.abs()).sum::<E>())
                } else {
                    self.reduce_lanes(axes, keepdim, "norm", move |l| {
                        l.iter().map(|&x| x.abs().powf(pe)).sum::<E>().powf(pe.recip())
                    })
                }
            }
        }
    }

    /// Applies `f` to every lane along `dim` (given and written as contiguous slices), keeping
    /// the shape. The engine behind softmax and log-softmax.
    #[must_use]
    pub fn map_lanes(&self, dim: isize, op: &str, f: impl Fn(&[E], &mut [E]) + Sync + Send) -> Self {
        let d = self.dim(dim, op);
        let nd = self.ndim();
        let lane = self.shape[d];
        let last = d == nd - 1;
        let src = if last { self.contiguous() } else { self.transpose(d as isize, -1).contiguous() };
        let data = src.as_slice().expect("contiguous");
        let par = data.len() >= parallel::elementwise_min() && parallel::get_num_threads() > 1;
        let out = parallel::filled(data.len(), lane, par, |i, o| f(&data[i * lane..(i + 1) * lane], o));
        let t = Tensor::from_vec(out, src.shape());
        if last {
            t
        } else {
            t.transpose(d as isize, -1).contiguous()
        }
    }

    /// Like [`map_lanes`](Tensor::map_lanes) over two tensors of one shape: `f(a_lane, b_lane,
    /// out_lane)` for every lane along `dim`.
    fn zip_lanes(
        &self,
        other: &Tensor<E>,
        dim: isize,
        op: &str,
        f: impl Fn(&[E], &[E], &mut [E]) + Sync + Send,
    ) -> Self {
        assert!(self.shape == other.shape, "{op}: shapes {:?} and {:?} differ", self.shape, other.shape);
        let d = self.dim(dim, op);
        let nd = self.ndim();
        let lane = self.shape[d];
        let last = d == nd - 1;
        let lanes_of = |t: &Tensor<E>| if last { t.contiguous() } else { t.transpose(d as isize, -1).contiguous() };
        let (a, b) = (lanes_of(self), lanes_of(other));
        let (av, bv) = (a.as_slice().expect("contiguous"), b.as_slice().expect("contiguous"));
        let par = av.len() >= parallel::elementwise_min() && parallel::get_num_threads() > 1;
        let out = parallel::filled(av.len(), lane, par, |i, o| {
            let r = i * lane..(i + 1) * lane;
            f(&av[r.clone()], &bv[r], o)
        });
        let t = Tensor::from_vec(out, a.shape());
        if last {
            t
        } else {
            t.transpose(d as isize, -1).contiguous()
        }
    }

    /// The gradient of `softmax` along `dim`, with `self` the softmax output `s` and `g` the
    /// output gradient: `s ⊙ (g − Σ g ⊙ s)`, in one pass per lane (what the composition of
    /// four ops computes).
    ///
    /// **Panics** if the shapes differ or `dim` is out of range.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let s = Tensor::from_vec(vec![0.25f64, 0.75], &[1, 2]);
    /// let g = Tensor::from_vec(vec![1.0, 0.0], &[1, 2]);
    /// assert_eq!(s.softmax_backward(&g, -1).to_vec(), vec![0.1875, -0.1875]);
    /// ```
    #[must_use]
    pub fn softmax_backward(&self, g: &Tensor<E>, dim: isize) -> Self {
        self.zip_lanes(g, dim, "softmax_backward", |s, g, o| {
            let dot = s.iter().zip(g).fold(E::zero(), |acc, (&s, &g)| acc + s * g);
            for ((o, &s), &g) in o.iter_mut().zip(s).zip(g) {
                *o = s * (g - dot);
            }
        })
    }

    /// The gradient of `log_softmax` along `dim`, with `self` its output `y` and `g` the output
    /// gradient: `g − exp(y) Σ g`, in one pass per lane.
    ///
    /// **Panics** if the shapes differ or `dim` is out of range.
    #[must_use]
    pub fn log_softmax_backward(&self, g: &Tensor<E>, dim: isize) -> Self {
        self.zip_lanes(g, dim, "log_softmax_backward", |y, g, o| {
            let sum = g.iter().copied().fold(E::zero(), |acc, g| acc + g);
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = g - y.exp() * sum;
            }
        })
    }

    /// `exp(x) / sum(exp(x))` along `dim`, computed stably (shifted by the lane maximum).
    ///
    /// ```
    /// let x = kiln_tensor::Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[1, 3]);
    /// let s = x.softmax(-1);
    /// assert!((s.sum_all().item() - 1.0).abs() < 1e-12);
    /// ```
    #[must_use]
    pub fn softmax(&self, dim: isize) -> Self {
        self.map_lanes(dim, "softmax", |l, o| {
            let m = l.iter().copied().fold(E::neg_infinity(), E::max);
            let m = if m.is_finite() { m } else { E::zero() };
            let s = E::exp_shifted_sum(l, m, o);
            let inv = s.recip();
            o.iter_mut().for_each(|o| *o *= inv);
        })
    }

    /// `x - logsumexp(x)` along `dim`, computed stably.
    #[must_use]
    pub fn log_softmax(&self, dim: isize) -> Self {
        self.map_lanes(dim, "log_softmax", |l, o| {
            let m = l.iter().copied().fold(E::neg_infinity(), E::max);
            let m = if m.is_finite() { m } else { E::zero() };
            let lse = m + l.iter().map(|&x| (x - m).exp()).sum::<E>().ln();
            for (o, &x) in o.iter_mut().zip(l) {
                *o = x - lse;
            }
        })
    }
}
