//! Standardising the trailing dimensions (the core of layer and group normalisation), forward
//! and backward, one pass per row.

use crate::element::Float;
use crate::parallel;
use crate::tensor::Tensor;

/// A new buffer of `n` elements written row by row (`f(r, row)`, rows of `lane` elements), in
/// parallel when the buffer is large.
fn rows_filled<E: Float>(n: usize, lane: usize, f: impl Fn(usize, &mut [E]) + Sync + Send) -> Vec<E> {
    if lane == 0 {
        return crate::alloc::take_filled(n, E::zero());
    }
    parallel::filled(n, lane, n >= parallel::elementwise_min() && parallel::get_num_threads() > 1, f)
}

impl<E: Float> Tensor<E> {
    /// Standardises over the last `ndim` dimensions: `x̂ = (x − mean) / √(var + eps)` with the
    /// biased variance, as layer normalisation does before its affine part. Returns `x̂` (the
    /// shape of `self`) and `1/√(var + eps)` per row (shape: the leading dimensions).
    ///
    /// **Panics** if `ndim` exceeds the tensor's rank.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f64, 3.0, 2.0, 6.0], &[2, 2]);
    /// let (y, rstd) = x.standardize_trailing(1, 0.0);
    /// assert_eq!(y.to_vec(), vec![-1.0, 1.0, -1.0, 1.0]);
    /// assert_eq!(rstd.to_vec(), vec![1.0, 0.5]);
    /// ```
    pub fn standardize_trailing(&self, ndim: usize, eps: f64) -> (Tensor<E>, Tensor<E>) {
        assert!(ndim <= self.ndim(), "standardize_trailing: {ndim} trailing dims of shape {:?}", self.shape());
        let lead = &self.shape()[..self.ndim() - ndim];
        let lane: usize = self.shape()[self.ndim() - ndim..].iter().product();
        let x = self.contiguous();
        let xv = x.as_slice().expect("contiguous");
        let rows = xv.len().checked_div(lane).unwrap_or_else(|| lead.iter().product());
        // rows are few next to elements: compute the statistics first, then normalise (in
        // parallel by the element count, not by the rows' count)
        let eps = E::from_f64(eps);
        let n = E::from_usize(lane.max(1));
        let par = xv.len() >= parallel::elementwise_min() && parallel::get_num_threads() > 1;
        let rstd = parallel::filled(rows, 1, par, |r, o| {
            let row = &xv[r * lane..(r + 1) * lane];
            let mean = row.iter().copied().fold(E::zero(), |a, v| a + v) / n;
            let var = row.iter().fold(E::zero(), |a, &v| a + (v - mean) * (v - mean)) / n;
            o[0] = (var + eps).sqrt().recip();
        });
        let y = rows_filled(xv.len(), lane, |r, o| {
            let row = &xv[r * lane..(r + 1) * lane];
            let mean = row.iter().copied().fold(E::zero(), |a, v| a + v) / n;
            let s = rstd[r];
            for (o, &v) in o.iter_mut().zip(row) {
                *o = (v - mean) * s;
            }
        });
        (Tensor::from_vec(y, self.shape()), Tensor::from_vec(rstd, lead))
    }

    /// The gradient of [`standardize_trailing`](Tensor::standardize_trailing), with `self` its
    /// output `x̂`, `rstd` its second output and `g` the gradient of `x̂`:
    /// `rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))` per row.
    ///
    /// **Panics** if the shapes do not fit.
    pub fn standardize_trailing_backward(&self, rstd: &Tensor<E>, g: &Tensor<E>) -> Tensor<E> {
        assert!(
            self.shape() == g.shape() && self.shape().starts_with(rstd.shape()),
            "standardize_trailing_backward: x̂ {:?}, rstd {:?} and gradient {:?} do not fit",
            self.shape(),
            rstd.shape(),
            g.shape()
        );
        let lane: usize = self.shape()[rstd.ndim()..].iter().product();
        let (xh, g, rs) = (self.contiguous(), g.contiguous(), rstd.contiguous());
        let (xv, gv, rv) =
            (xh.as_slice().expect("contiguous"), g.as_slice().expect("contiguous"), rs.as_slice().expect("contiguous"));
        let n = E::from_usize(lane.max(1));
        let out = rows_filled(xv.len(), lane, |r, o| {
            let (x, g) = (&xv[r * lane..(r + 1) * lane], &gv[r * lane..(r + 1) * lane]);
            let (mut sg, mut sgx) = (E::zero(), E::zero());
            for (&x, &g) in x.iter().zip(g) {
                sg += g;
                sgx += g * x;
            }
            let (mg, mgx, s) = (sg / n, sgx / n, rv[r]);
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = s * (g - mg - x * mgx);
            }
        });
        Tensor::from_vec(out, self.shape())
    }
}
