//! `AdaptiveAvgPool2d`: average pooling to a fixed output size.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;
use serde_json::{json, Map, Value};

use super::pool::tuple2;
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// 2-d adaptive average pooling to a fixed output size, like `torch.nn.AdaptiveAvgPool2d`:
/// `out[n, c, i, j]` is the mean of `x[n, c]` over rows
/// `[floor(i H_in / H_out), ceil((i + 1) H_in / H_out))` and the same columns rule (bins
/// overlap when the input size is not a multiple of the output size).
///
/// # Shapes
/// - Input: `[N, C, H_in, W_in]` or unbatched `[C, H_in, W_in]`
/// - Output: `[N, C, H_out, W_out]` = `output_size`
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` when the input is not 4-d or 3-d.
///
/// ```
/// use kiln_nn::{AdaptiveAvgPool2d, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let gap = AdaptiveAvgPool2d::new([1, 1]); // global average pooling
/// let x = Var::constant(Tensor::<f32>::arange(0.0, 24.0, 1.0).reshape(&[1, 2, 3, 4]));
/// assert_eq!(gap.forward(&x).value().to_vec(), vec![5.5, 17.5]);
/// assert_eq!(gap.to_string(), "AdaptiveAvgPool2d(output_size=(1, 1))");
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveAvgPool2d {
    /// `[H_out, W_out]`.
    pub output_size: [usize; 2],
}

impl AdaptiveAvgPool2d {
    /// A pool to `output_size = [H_out, W_out]`.
    ///
    /// **Panics** if a size is zero (use [`AdaptiveAvgPool2d::try_new`] for a `Result`).
    pub fn new(output_size: [usize; 2]) -> Self {
        Self::try_new(output_size).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A pool to `output_size = [H_out, W_out]`.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero.
    pub fn try_new(output_size: [usize; 2]) -> Result<Self, NnError> {
        if output_size.contains(&0) {
            return Err(NnError::Config(format!("AdaptiveAvgPool2d: output_size must be > 0, got {output_size:?}")));
        }
        Ok(AdaptiveAvgPool2d { output_size })
    }
}

impl<E: Float> Forward<E> for AdaptiveAvgPool2d {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        x.adaptive_avg_pool2d(self.output_size)
    }
}

impl<E: Float> Module<E> for AdaptiveAvgPool2d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for AdaptiveAvgPool2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdaptiveAvgPool2d(output_size={})", tuple2(self.output_size))
    }
}

impl LayerSpec for AdaptiveAvgPool2d {
    const TYPE_NAME: &'static str = "AdaptiveAvgPool2d";
    const EXAMPLE: &'static str = r#"{"output_size": [2, 3]}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"output_size": self.output_size}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        AdaptiveAvgPool2d::try_new(a.pair("output_size", None)?)
    }
}

crate::register_layer!(AdaptiveAvgPool2d);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::testing::{descend, pair, run_golden};
    use crate::layers::Conv2dConfig;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn output_shapes_and_errors() {
        let p = AdaptiveAvgPool2d::new([3, 2]);
        let shape = |s: &[usize]| Forward::<f64>::forward(&p, &Var::constant(Tensor::zeros(s))).shape().to_vec();
        assert_eq!(shape(&[2, 5, 7, 4]), [2, 5, 3, 2]);
        assert_eq!(shape(&[5, 7, 4]), [5, 3, 2]);
        assert_eq!(
            AdaptiveAvgPool2d::try_new([0, 2]).unwrap_err().to_string(),
            "AdaptiveAvgPool2d: output_size must be > 0, got [0, 2]"
        );
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let l = AdaptiveAvgPool2d::new([3, 2]);
        let r = gradcheck(|v| l.forward(&v[0]), &[t(&[1, 2, 5, 3], 4)], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{l}: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // a 1x1 conv in front of the pool learns y = pool(2 x + 0.5)
        crate::init::manual_seed(9);
        let pool = AdaptiveAvgPool2d::new([2, 3]);
        let x = Var::constant(t(&[3, 1, 6, 6], 21));
        let conv = Conv2dConfig::new(1, 1, 1).build::<f64>().unwrap();
        conv.weight.set_value(Tensor::full(&[1, 1, 1, 1], 0.5));
        let y = pool.forward(&x.mul_scalar(2.0).add_scalar(0.5)).detach();
        let loss = descend(&conv.parameters(), 0.5, 300, || {
            let d = pool.forward(&conv.forward(&x)).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-8, "{pool}: {loss}");
    }

    #[test]
    fn golden_adaptive_avg_pool2d() {
        for name in ["adaptive_avgpool2d_rect_in", "adaptive_avgpool2d_square_in"] {
            let Some(c) = golden::load(&format!("layers/{name}")) else { return };
            let module = c.json["module"].as_str().unwrap_or_default();
            assert!(module.ends_with("AdaptiveAvgPool2d"), "{name}: module {module}");
            let mut layer = AdaptiveAvgPool2d::new(pair(&c.json["constructor_kwargs"]["output_size"], [0, 0]));
            run_golden(&c, &mut layer);
        }
    }
}
