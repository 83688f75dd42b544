//! `PixelShuffle` and `PixelUnshuffle`: channels traded for spatial resolution and back.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;
use serde_json::{json, Map, Value};

use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// The flat batch size, the channels, height and width of a `[*, C, H, W]` input.
fn split_shape(op: &str, shape: &[usize]) -> (Vec<usize>, [usize; 3]) {
    assert!(shape.len() >= 3, "{op}: expected an input [*, C, H, W] of at least 3 dims, got {shape:?}");
    let n = shape.len();
    (shape[..n - 3].to_vec(), [shape[n - 3], shape[n - 2], shape[n - 1]])
}

/// Rearranges `[*, C·r², H, W]` into `[*, C, H·r, W·r]`, like `torch.nn.PixelShuffle`
/// (Shi et al., 2016, sub-pixel convolution):
/// `out[.., c, h·r + i, w·r + j] = x[.., c·r² + i·r + j, h, w]`.
///
/// # Shapes
/// - Input: `[*, C · upscale_factor², H, W]`
/// - Output: `[*, C, H · upscale_factor, W · upscale_factor]`
///
/// # Parameters
/// None. The backward is the inverse rearrangement ([`PixelUnshuffle`]).
///
/// **Panics** in `forward` when the input has fewer than 3 dims or its channels are not
/// divisible by `upscale_factor²`.
///
/// ```
/// use kiln_nn::{Forward, PixelShuffle};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let ps = PixelShuffle::new(2);
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 4, 1, 1]));
/// let y = ps.forward(&x);
/// assert_eq!(y.shape().as_slice(), &[1, 1, 2, 2]);
/// assert_eq!(y.value().to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(ps.to_string(), "PixelShuffle(upscale_factor=2)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelShuffle {
    /// `r`: the factor the height and width grow by.
    pub upscale_factor: usize,
}

impl PixelShuffle {
    /// A layer with factor `upscale_factor`.
    ///
    /// **Panics** if `upscale_factor` is zero.
    #[must_use]
    pub fn new(upscale_factor: usize) -> Self {
        assert!(upscale_factor > 0, "PixelShuffle: upscale_factor must be > 0, got 0");
        PixelShuffle { upscale_factor }
    }
}

impl<E: Float> Forward<E> for PixelShuffle {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let r = self.upscale_factor;
        let shape = x.shape();
        let (lead, [c, h, w]) = split_shape("PixelShuffle", &shape);
        assert!(
            c % (r * r) == 0,
            "PixelShuffle: input channels {c} of {:?} are not divisible by upscale_factor² = {}",
            shape.as_slice(),
            r * r
        );
        let b: usize = lead.iter().product();
        let oc = c / (r * r);
        let y = x.reshape(&[b, oc, r, r, h, w]).permute(&[0, 1, 4, 2, 5, 3]);
        let mut out = lead;
        out.extend([oc, h * r, w * r]);
        y.reshape(&out)
    }
}

impl<E: Float> Module<E> for PixelShuffle {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for PixelShuffle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PixelShuffle(upscale_factor={})", self.upscale_factor)
    }
}

impl LayerSpec for PixelShuffle {
    const TYPE_NAME: &'static str = "PixelShuffle";
    const EXAMPLE: &'static str = r#"{"upscale_factor": 3}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"upscale_factor": self.upscale_factor}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let r = a.usize("upscale_factor", None)?;
        if r == 0 {
            return Err(a.err("upscale_factor must be > 0, got 0"));
        }
        Ok(PixelShuffle { upscale_factor: r })
    }
}

crate::register_layer!(PixelShuffle);

/// Rearranges `[*, C, H·r, W·r]` into `[*, C·r², H, W]`, the inverse of [`PixelShuffle`],
/// like `torch.nn.PixelUnshuffle`: `out[.., c·r² + i·r + j, h, w] = x[.., c, h·r + i, w·r + j]`.
///
/// # Shapes
/// - Input: `[*, C, H · downscale_factor, W · downscale_factor]`
/// - Output: `[*, C · downscale_factor², H, W]`
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` when the input has fewer than 3 dims or its height or width is not
/// divisible by `downscale_factor`.
///
/// ```
/// use kiln_nn::{Forward, PixelShuffle, PixelUnshuffle};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let x = Var::constant(Tensor::<f32>::uniform(&[2, 3, 4, 6], -1.0, 1.0, &mut Rng::new(0)));
/// let down = PixelUnshuffle::new(2).forward(&x);
/// assert_eq!(down.shape().as_slice(), &[2, 12, 2, 3]);
/// assert_eq!(PixelShuffle::new(2).forward(&down).value(), x.value());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelUnshuffle {
    /// `r`: the factor the height and width shrink by.
    pub downscale_factor: usize,
}

impl PixelUnshuffle {
    /// A layer with factor `downscale_factor`.
    ///
    /// **Panics** if `downscale_factor` is zero.
    #[must_use]
    pub fn new(downscale_factor: usize) -> Self {
        assert!(downscale_factor > 0, "PixelUnshuffle: downscale_factor must be > 0, got 0");
        PixelUnshuffle { downscale_factor }
    }
}

impl<E: Float> Forward<E> for PixelUnshuffle {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let r = self.downscale_factor;
        let shape = x.shape();
        let (lead, [c, h, w]) = split_shape("PixelUnshuffle", &shape);
        assert!(
            h % r == 0 && w % r == 0,
            "PixelUnshuffle: input height {h} and width {w} of {:?} must be divisible by downscale_factor {r}",
            shape.as_slice()
        );
        let b: usize = lead.iter().product();
        let (oh, ow) = (h / r, w / r);
        let y = x.reshape(&[b, c, oh, r, ow, r]).permute(&[0, 1, 3, 5, 2, 4]);
        let mut out = lead;
        out.extend([c * r * r, oh, ow]);
        y.reshape(&out)
    }
}

impl<E: Float> Module<E> for PixelUnshuffle {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for PixelUnshuffle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PixelUnshuffle(downscale_factor={})", self.downscale_factor)
    }
}

impl LayerSpec for PixelUnshuffle {
    const TYPE_NAME: &'static str = "PixelUnshuffle";
    const EXAMPLE: &'static str = r#"{"downscale_factor": 2}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"downscale_factor": self.downscale_factor}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let r = a.usize("downscale_factor", None)?;
        if r == 0 {
            return Err(a.err("downscale_factor must be > 0, got 0"));
        }
        Ok(PixelUnshuffle { downscale_factor: r })
    }
}

crate::register_layer!(PixelUnshuffle);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::run_file;
    use crate::layers::testing::descend;
    use crate::Conv2dConfig;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    #[test]
    fn matches_pytorch() {
        assert!(run_file("pixel_shuffle.json") >= 1);
    }

    #[test]
    fn output_shapes_and_round_trip() {
        let x = Var::constant(Tensor::<f64>::uniform(&[2, 1, 18, 2, 3], -1.0, 1.0, &mut Rng::new(2)));
        let up = PixelShuffle::new(3).forward(&x);
        assert_eq!(up.shape().as_slice(), &[2, 1, 2, 6, 9]);
        let back = PixelUnshuffle::new(3).forward(&up);
        assert_eq!(back.value(), x.value());
        assert_eq!(PixelUnshuffle::new(3).to_string(), "PixelUnshuffle(downscale_factor=3)");
    }

    #[test]
    #[should_panic(
        expected = "PixelShuffle: input channels 6 of [1, 6, 2, 2] are not divisible by upscale_factor² = 4"
    )]
    fn indivisible_channels_panic() {
        let _ = PixelShuffle::new(2).forward(&Var::constant(Tensor::<f32>::zeros(&[1, 6, 2, 2])));
    }

    #[test]
    fn registry_refuses_zero() {
        let e = crate::registry::build::<f32>(&json!({"layer": "PixelShuffle", "args": {"upscale_factor": 0}}));
        assert_eq!(e.err().unwrap().to_string(), "registry::build (PixelShuffle): upscale_factor must be > 0, got 0");
    }

    #[test]
    fn tiny_overfit() {
        // a sub-pixel convolution learns to upsample a fixed pattern
        crate::init::manual_seed(5);
        let conv: crate::Conv2d<f64> =
            Conv2dConfig { padding: 1.into(), ..Conv2dConfig::new(1, 4, 3) }.build().unwrap();
        let x = Var::constant(Tensor::uniform(&[2, 1, 3, 3], -1.0, 1.0, &mut Rng::new(1)));
        let target = Var::constant(Tensor::uniform(&[2, 1, 6, 6], -0.5, 0.5, &mut Rng::new(2)));
        let ps = PixelShuffle::new(2);
        let first = ps.forward(&conv.forward(&x)).sub(&target).square().mean(&[], false).item();
        let loss = descend(&conv.parameters(), 0.3, 200, || {
            ps.forward(&conv.forward(&x)).sub(&target).square().mean(&[], false)
        });
        assert!(loss < 0.5 * first, "pixel_shuffle {first} -> {loss}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        #[test]
        fn gradcheck_random_shapes(b in 1usize..3, c in 1usize..3, r in 1usize..4, h in 1usize..3, w in 1usize..3,
                                   transposed: bool, seed in 0u64..1000) {
            let x = Tensor::uniform(&[b, c * r * r, h, w], -1.0, 1.0, &mut Rng::new(seed));
            // a non-contiguous input: the transpose of a [.., w, h] tensor
            let x = if transposed { x.transpose(-1, -2).contiguous() } else { x };
            let r1 = gradcheck(
                |v| {
                    let v = if transposed { v[0].transpose(-1, -2) } else { v[0].clone() };
                    PixelShuffle::new(r).forward(&v).tanh()
                },
                &[x],
                1e-6,
                1e-7,
                1e-5,
            );
            proptest::prop_assert!(r1.is_ok(), "{}", r1.unwrap_err());
            let y = Tensor::uniform(&[b, c, h * r, w * r], -1.0, 1.0, &mut Rng::new(seed + 1));
            let r2 = gradcheck(|v| PixelUnshuffle::new(r).forward(&v[0]).tanh(), &[y], 1e-6, 1e-7, 1e-5);
            proptest::prop_assert!(r2.is_ok(), "{}", r2.unwrap_err());
        }
    }
}
