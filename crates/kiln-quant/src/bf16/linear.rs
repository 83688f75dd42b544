//! `Bf16Linear`: `y = bf16(x Wᵀ + b)` with bfloat16 weights, `f32` sums.

use std::fmt;

use half::bf16;

use kiln_autograd::Var;
use kiln_nn::{Forward, Linear, Module, TensorKind};
use kiln_tensor::kernels::bf16_gemm::gemm_bf16_slices;
use kiln_tensor::{Bf16Tensor, Tensor};

use super::{round, widen, BF16_BYTES};

/// A [`Linear`] in bfloat16 (`linear.to(torch.bfloat16)`): `y = x Wᵀ + b` with `W`, `b`, the
/// input and the output stored as bfloat16; the products are summed in `f32` by kiln's
/// bfloat16 GEMM, the bias is added in `f32` and the sum is rounded once (to nearest even).
/// Inference only.
///
/// # Shapes
/// - Input: `[*, in_features]`
/// - Output: `[*, out_features]`
///
/// # Parameters
/// - `weight`: `[out_features, in_features]`, the float layer's weight rounded to bfloat16
/// - `bias`: `[out_features]` (when the float layer has one), rounded likewise
///
/// ```
/// use kiln_nn::{Forward, Linear};
/// use kiln_quant::Bf16Linear;
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let fc: Linear = Linear::new(64, 8);
/// let h = Bf16Linear::from_linear(&fc);
/// assert_eq!(h.param_bytes(), (64 * 8 + 8) * 2); // half of f32's
/// let x = Tensor::uniform(&[4, 64], -1.0, 1.0, &mut Rng::new(0));
/// let want = fc.forward(&Var::constant(x.clone())).value();
/// let got = h.forward_bf16(&x.to_bf16()).to_f32();
/// assert_eq!(got.shape(), &[4, 8]);
/// // each product of two rounded values is off by at most 2^-7 of itself (|x| <= 1,
/// // |w| <= 1/8: Σ|x||w| <= 8), the output by one more rounding, 2^-8 of itself
/// let bound = 2f32.powi(-7) * 8.0 * 1.01 + 2f32.powi(-8) * (want.abs().max_all() + 0.1);
/// assert!(want.sub(&got).abs().max_all() < bound);
/// ```
#[derive(Clone, Debug)]
pub struct Bf16Linear {
    weight: Bf16Tensor,
    bias: Option<Bf16Tensor>,
}

impl Bf16Linear {
    /// Rounds a float layer's weight and bias to bfloat16.
    #[must_use]
    pub fn from_linear(layer: &Linear) -> Self {
        Self::from_weight(&layer.weight.value(), layer.bias.as_ref().map(Var::value).as_ref())
    }

    /// Rounds an `[out_features, in_features]` weight and an optional `[out_features]` bias.
    ///
    /// **Panics** if `weight` is not 2-d or the bias is not `[out_features]`.
    #[must_use]
    pub fn from_weight(weight: &Tensor<f32>, bias: Option<&Tensor<f32>>) -> Self {
        assert_eq!(
            weight.ndim(),
            2,
            "Bf16Linear: weight must be [out_features, in_features], got {:?}",
            weight.shape()
        );
        if let Some(b) = bias {
            assert!(
                b.shape() == [weight.shape()[0]],
                "Bf16Linear: bias {:?} does not match weight {:?}",
                b.shape(),
                weight.shape()
            );
        }
        Bf16Linear { weight: weight.to_bf16(), bias: bias.map(Tensor::to_bf16) }
    }

    /// Size of each input sample.
    #[must_use]
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Size of each output sample.
    #[must_use]
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// The weight, `[out_features, in_features]`.
    #[must_use]
    pub fn weight(&self) -> &Bf16Tensor {
        &self.weight
    }

    /// The bias, if any.
    #[must_use]
    pub fn bias(&self) -> Option<&Bf16Tensor> {
        self.bias.as_ref()
    }

    /// Bytes of the weight and bias (2 per value).
    #[must_use]
    pub fn param_bytes(&self) -> usize {
        BF16_BYTES * (self.weight.numel() + self.bias.as_ref().map_or(0, Bf16Tensor::numel))
    }

    /// Applies the layer to bfloat16 activations.
    ///
    /// **Panics** if the last dimension of `x` is not `in_features`.
    #[must_use]
    pub fn forward_bf16(&self, x: &Bf16Tensor) -> Bf16Tensor {
        let shape = x.shape();
        assert!(
            shape.last() == Some(&self.in_features()),
            "Bf16Linear: input {shape:?} does not end in in_features = {} (weight {:?})",
            self.in_features(),
            self.weight.shape()
        );
        let m = x.numel() / self.in_features();
        let mut acc = vec![0f32; m * self.out_features()];
        self.product_rows(x.as_slice(), m, 0.0, &mut acc);
        let out: Vec<bf16> = match &self.bias_f32() {
            Some(b) => {
                acc.chunks_exact(b.len()).flat_map(|row| row.iter().zip(b).map(|(&y, &b)| round(y + b))).collect()
            }
            None => acc.iter().map(|&y| round(y)).collect(),
        };
        let mut out_shape = shape.to_vec();
        *out_shape.last_mut().expect("not empty") = self.out_features();
        Bf16Tensor::from_vec(out, &out_shape)
    }

    /// `acc = beta · acc + x Wᵀ` on `m` rows of `in_features` bfloat16 values, in `f32`,
    /// without the bias.
    pub(crate) fn product_rows(&self, x: &[bf16], m: usize, beta: f32, acc: &mut [f32]) {
        let (k, n) = (self.in_features(), self.out_features());
        gemm_bf16_slices(m, k, n, 1.0, x, false, self.weight.as_slice(), true, beta, acc);
    }

    /// The bias in `f32` (exact), if any.
    pub(crate) fn bias_f32(&self) -> Option<Vec<f32>> {
        self.bias.as_ref().map(|b| b.as_slice().iter().map(|&v| widen(v)).collect())
    }

    /// [`forward_bf16`](Self::forward_bf16) on an `f32` tensor: the input is rounded to
    /// bfloat16, the bfloat16 output widened back (exactly).
    ///
    /// **Panics** as [`forward_bf16`](Self::forward_bf16).
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> Tensor<f32> {
        self.forward_bf16(&x.to_bf16()).to_f32()
    }
}

impl Forward<f32> for Bf16Linear {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v)))
    }
}

/// No `f32` parameters or buffers: the bfloat16 weights are not variables.
impl Module<f32> for Bf16Linear {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for Bf16Linear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Bf16Linear(in_features={}, out_features={}, bias={}) [{} bytes]",
            self.in_features(),
            self.out_features(),
            self.bias.is_some(),
            self.param_bytes()
        )
    }
}
