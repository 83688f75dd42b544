//! bfloat16 storage: [`Bf16Tensor`], a row-major tensor of `half::bf16` values (half the bytes
//! of `f32`) with casts to and from `Tensor<f32>` and a bfloat16 matrix product.
//!
//! `bf16` is not a [`Float`](crate::Float) (its arithmetic would round after every operation,
//! and ndarray's scalar traits cannot be implemented for it), so a `Bf16Tensor` is storage:
//! values are computed in `f32` lanes ([`Bf16Tensor::map`], [`Bf16Tensor::to_f32`]) and matrix
//! products read the bfloat16 values directly ([`Bf16Tensor::matmul`]).

use half::bf16;

use crate::element::DType;
use crate::kernels::bf16_gemm::{bf16_bits_to_f32, f32_to_bf16_bits, gemm_bf16, Bf16Operand};
use crate::kernels::gemm::MatRef;
use crate::tensor::{Shape, Tensor};

/// A contiguous row-major tensor of bfloat16 values (`tensor.to(torch.bfloat16)`).
///
/// ```
/// use kiln_tensor::{Bf16Tensor, DType, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 0.1, -2.5, 1e-3], &[2, 2]);
/// let h = Bf16Tensor::from_f32(&x);
/// assert_eq!(h.dtype(), DType::BF16);
/// assert_eq!(h.to_f32().to_vec(), vec![1.0, 0.10009765625, -2.5, 0.00099945068359375]);
/// // products read the bf16 values and sum in f32
/// let y = h.matmul(&Bf16Tensor::from_f32(&Tensor::eye(2)));
/// assert_eq!(y.to_vec(), h.to_f32().to_vec());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Bf16Tensor {
    data: Vec<bf16>,
    shape: Shape,
}

impl Bf16Tensor {
    /// A tensor owning `data`, read row-major into `shape`.
    ///
    /// **Panics** if `data.len()` differs from the shape's element count.
    #[must_use]
    pub fn from_vec(data: Vec<bf16>, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            data.len(),
            "Bf16Tensor::from_vec: shape {shape:?} holds {n} elements but the data has {}",
            data.len()
        );
        Bf16Tensor { data, shape: shape.into() }
    }

    /// Rounds every element of an `f32` tensor to bfloat16 (to nearest, ties to even).
    #[must_use]
    pub fn from_f32(t: &Tensor<f32>) -> Self {
        let c = t.contiguous();
        let s = c.as_slice().expect("contiguous");
        let data = s.iter().map(|&x| bf16::from_bits(f32_to_bf16_bits(x))).collect();
        Bf16Tensor { data, shape: t.shape().into() }
    }

    /// The values as an `f32` tensor (exact: every bfloat16 is an `f32`).
    #[must_use]
    pub fn to_f32(&self) -> Tensor<f32> {
        Tensor::from_vec(self.data.iter().map(|h| bf16_bits_to_f32(h.to_bits())).collect(), &self.shape)
    }

    /// The shape.
    #[must_use]
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    #[must_use]
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Always [`DType::BF16`].
    #[must_use]
    pub fn dtype(&self) -> DType {
        DType::BF16
    }

    /// The values, row-major.
    #[must_use]
    pub fn as_slice(&self) -> &[bf16] {
        &self.data
    }

    /// The values, row-major, by value.
    #[must_use]
    pub fn into_vec(self) -> Vec<bf16> {
        self.data
    }

    /// The same values with a new shape.
    ///
    /// **Panics** if the element counts differ.
    #[must_use]
    pub fn reshape(&self, shape: &[usize]) -> Self {
        Self::from_vec(self.data.clone(), shape)
    }

    /// `f` applied to every value in `f32`, the result rounded back to bfloat16 (how PyTorch's
    /// CPU kernels compute elementwise ops on bfloat16).
    #[must_use]
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        let data =
            self.data.iter().map(|h| bf16::from_bits(f32_to_bf16_bits(f(bf16_bits_to_f32(h.to_bits()))))).collect();
        Bf16Tensor { data, shape: self.shape.clone() }
    }

    /// The matrix product of two 2-D tensors with `f32` sums, as an `f32` tensor (what
    /// `torch.matmul` computes on bfloat16 before rounding its result).
    ///
    /// **Panics** naming both shapes if an operand is not 2-D or the inner dimensions differ.
    #[must_use]
    pub fn matmul(&self, other: &Bf16Tensor) -> Tensor<f32> {
        product(&self.data, &self.shape, &other.data, &other.shape, false)
    }
}

/// `A·B` (`Bᵀ` when `trans_b`, B then stored `[n, k]`) for 2-D row-major operands of any
/// bfloat16 operand type, `f32` result.
fn product<A: Bf16Operand, B: Bf16Operand>(a: &[A], sa: &[usize], b: &[B], sb: &[usize], trans_b: bool) -> Tensor<f32> {
    assert!(sa.len() == 2 && sb.len() == 2, "matmul (bf16): {sa:?} x {sb:?}: both operands must be 2-D");
    let (m, k) = (sa[0], sa[1]);
    let (k2, n) = if trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
    assert!(k == k2, "matmul (bf16): {sa:?} x {sb:?}: inner dimensions {k} and {k2} differ");
    let mut out = vec![0.0f32; m * n];
    let br = if trans_b {
        MatRef { ptr: b.as_ptr(), rs: 1, cs: k as isize }
    } else {
        MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 }
    };
    // SAFETY: the slices hold the matrices (shapes checked against their lengths by the
    // constructors); `out` is a distinct buffer of m x n.
    unsafe {
        gemm_bf16(
            m,
            k,
            n,
            1.0,
            MatRef { ptr: a.as_ptr(), rs: k as isize, cs: 1 },
            br,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        )
    };
    Tensor::from_vec(out, &[m, n])
}

impl Tensor<f32> {
    /// Rounds to a bfloat16 tensor (`tensor.to(torch.bfloat16)`); see [`Bf16Tensor::from_f32`].
    #[must_use]
    pub fn to_bf16(&self) -> Bf16Tensor {
        Bf16Tensor::from_f32(self)
    }

    /// `self · wᵀ` for `self` `[.., k]` (any leading dimensions) and a bfloat16 weight `w`
    /// `[n, k]` (PyTorch's `Linear` layout): the activations are rounded to bfloat16 as they are
    /// packed, the sums are `f32`. The product of bfloat16 inference.
    ///
    /// **Panics** naming both shapes if `w` is not 2-D or the inner dimensions differ.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3]);
    /// let w = Tensor::from_vec(vec![1.0f32, 0.0, -1.0, 0.5, 0.5, 0.5], &[2, 3]).to_bf16();
    /// assert_eq!(x.matmul_t_bf16(&w).to_vec(), vec![-2.0, 3.0]);
    /// ```
    #[must_use]
    pub fn matmul_t_bf16(&self, w: &Bf16Tensor) -> Tensor<f32> {
        let sx = self.shape();
        assert!(!sx.is_empty(), "matmul_t_bf16: {sx:?} x {:?}ᵀ: the input needs at least one dimension", w.shape());
        let k = sx[sx.len() - 1];
        let rows = self.numel() / k.max(1);
        let c = self.contiguous();
        let x = c.as_slice().expect("contiguous");
        let y = product(x, &[rows, k], &w.data, &w.shape, true);
        let mut shape: Shape = sx.into();
        let last = shape.len() - 1;
        shape[last] = y.shape()[1];
        y.reshape(&shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    #[test]
    fn casts_round_trip_and_round_to_nearest_even() {
        let mut rng = Rng::new(0);
        let x: Tensor = Tensor::randn(&[5, 7], &mut rng);
        let h = x.to_bf16();
        assert_eq!(h.shape(), &[5, 7]);
        for (a, b) in x.to_vec().iter().zip(h.as_slice()) {
            assert_eq!(b.to_bits(), bf16::from_f32(*a).to_bits());
        }
        // bf16 -> f32 -> bf16 is the identity
        assert_eq!(Bf16Tensor::from_f32(&h.to_f32()), h);
        // a transposed view is cast in its logical order
        assert_eq!(x.t().to_bf16().to_f32(), h.to_f32().t().contiguous());
    }

    #[test]
    fn matmul_is_the_f32_product_of_the_rounded_values() {
        let mut rng = Rng::new(1);
        let a: Tensor = Tensor::randn(&[6, 9], &mut rng);
        let b: Tensor = Tensor::randn(&[9, 4], &mut rng);
        let (ha, hb) = (a.to_bf16(), b.to_bf16());
        let want = ha.to_f32().matmul(&hb.to_f32());
        for (g, w) in ha.matmul(&hb).to_vec().iter().zip(want.to_vec()) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        // x · wᵀ with leading dimensions
        let x: Tensor = Tensor::randn(&[2, 3, 9], &mut rng);
        let w = b.t().contiguous().to_bf16();
        let y = x.matmul_t_bf16(&w);
        assert_eq!(y.shape(), &[2, 3, 4]);
        let want = x.to_bf16().to_f32().matmul(&w.to_f32().t());
        for (g, w) in y.to_vec().iter().zip(want.to_vec()) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    #[should_panic(expected = "matmul (bf16): [2, 3] x [4, 2]: inner dimensions 3 and 4 differ")]
    fn mismatched_product_names_shapes() {
        let _ = Tensor::<f32>::zeros(&[2, 3]).to_bf16().matmul(&Tensor::<f32>::zeros(&[4, 2]).to_bf16());
    }

    #[test]
    fn map_computes_in_f32_and_rounds() {
        let h = Tensor::from_vec(vec![1.0f32, 4.0], &[2]).to_bf16();
        assert_eq!(
            h.map(|x| x.sqrt() / 3.0).to_f32().to_vec(),
            vec![bf16::from_f32(1.0 / 3.0).to_f32(), bf16::from_f32(2.0 / 3.0).to_f32()]
        );
    }
}
