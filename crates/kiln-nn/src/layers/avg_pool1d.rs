//! `AvgPool1d`: the mean of each window over one axis.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;
use serde_json::{json, Map, Value};

use super::pool::{check_window, show1};
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of an [`AvgPool1d`] layer (PyTorch's defaults: stride = kernel_size, no
/// padding, floor mode, padding counted in the divisor).
#[derive(Clone, Debug, PartialEq)]
pub struct AvgPool1dConfig {
    /// Window length.
    pub kernel_size: usize,
    /// Step between windows; `None` means `kernel_size`.
    pub stride: Option<usize>,
    /// Implicit zero padding on both ends (at most `kernel_size / 2`).
    pub padding: usize,
    /// Ceiling instead of floor in the output length.
    pub ceil_mode: bool,
    /// Whether the zero padding counts in each window's divisor.
    pub count_include_pad: bool,
}

impl AvgPool1dConfig {
    /// PyTorch's defaults for a window of `kernel_size`.
    pub fn new(kernel_size: usize) -> Self {
        AvgPool1dConfig { kernel_size, stride: None, padding: 0, ceil_mode: false, count_include_pad: true }
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`NnError::Config`] when the kernel size or stride is zero, or the padding exceeds half
    /// the kernel size.
    pub fn build(&self) -> Result<AvgPool1d, NnError> {
        let k = self.kernel_size;
        check_window("AvgPool1d", [1, k], [1, self.stride.unwrap_or(k)], [0, self.padding], [1, 1], show1)?;
        Ok(AvgPool1d { config: self.clone() })
    }
}

/// 1-d average pooling, like `torch.nn.AvgPool1d`:
/// `out[n, c, l] = (1 / count) Σ_{k < kernel_size} x[n, c, stride l + k - padding]`, the
/// padding being zeros; `count` is `kernel_size` with `count_include_pad`, else the number of
/// taps inside the input (in ceil mode, taps past the right padding never count).
///
/// # Shapes
/// - Input: `[N, C, L_in]` or unbatched `[C, L_in]`
/// - Output: `[N, C, L_out]`, with `L_out = floor((L_in + 2 padding - kernel_size) / stride) + 1`
///   (ceiling with `ceil_mode`)
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` when the input is not 3-d or 2-d or is too short for one window.
///
/// ```
/// use kiln_nn::{AvgPool1d, AvgPool1dConfig, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![1.0, 3.0, 2.0, 6.0], &[1, 1, 4]));
/// let pool = AvgPool1dConfig { stride: Some(1), padding: 1, count_include_pad: false, ..AvgPool1dConfig::new(2) }
///     .build()
///     .unwrap();
/// assert_eq!(pool.forward(&x).value().to_vec(), vec![1.0, 2.0, 2.5, 4.0, 6.0]);
/// assert_eq!(
///     pool.to_string(),
///     "AvgPool1d(kernel_size=2, stride=1, padding=1, ceil_mode=false, count_include_pad=false)"
/// );
/// ```
#[derive(Clone, Debug)]
pub struct AvgPool1d {
    /// The configuration it was built with.
    pub config: AvgPool1dConfig,
}

impl AvgPool1d {
    /// A pool with stride `kernel_size` and no padding.
    ///
    /// **Panics** if `kernel_size` is zero (use [`AvgPool1dConfig::build`] for a `Result`).
    pub fn new(kernel_size: usize) -> Self {
        AvgPool1dConfig::new(kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    super::pool::pool_setters! { AvgPool1d;
        /// Sets the step between windows
        stride: usize => stride = Some(stride);
        /// Sets the implicit zero padding on both ends
        padding: usize => padding = padding;
        /// Sets ceiling (`true`) or floor (`false`) in the output length
        ceil_mode: bool => ceil_mode = ceil_mode;
        /// Sets whether the zero padding counts in each window's divisor
        count_include_pad: bool => count_include_pad = count_include_pad;
    }
}

impl<E: Float> Forward<E> for AvgPool1d {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        x.avg_pool1d(c.kernel_size, c.stride.unwrap_or(c.kernel_size), c.padding, c.ceil_mode, c.count_include_pad)
    }
}

impl<E: Float> Module<E> for AvgPool1d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for AvgPool1d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "AvgPool1d(kernel_size={}, stride={}, padding={}, ceil_mode={}, count_include_pad={})",
            c.kernel_size,
            c.stride.unwrap_or(c.kernel_size),
            c.padding,
            c.ceil_mode,
            c.count_include_pad
        )
    }
}

impl LayerSpec for AvgPool1d {
    const TYPE_NAME: &'static str = "AvgPool1d";
    const EXAMPLE: &'static str = r#"{"kernel_size": 2, "stride": 1, "padding": 1, "count_include_pad": false}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"kernel_size": c.kernel_size, "stride": c.stride.unwrap_or(c.kernel_size),
            "padding": c.padding, "ceil_mode": c.ceil_mode, "count_include_pad": c.count_include_pad}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let k = a.usize("kernel_size", None)?;
        AvgPool1dConfig {
            stride: Some(a.usize("stride", Some(k))?),
            padding: a.usize("padding", Some(0))?,
            ceil_mode: a.bool("ceil_mode", false)?,
            count_include_pad: a.bool("count_include_pad", true)?,
            ..AvgPool1dConfig::new(k)
        }
        .build()
    }
}

crate::register_layer!(AvgPool1d);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::descend;
    use crate::layers::Conv1dConfig;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn builder_setters_match_the_config() {
        let built = AvgPool1d::new(3).stride(2).padding(1).ceil_mode(true).count_include_pad(false);
        let cfg = AvgPool1dConfig {
            stride: Some(2),
            padding: 1,
            ceil_mode: true,
            count_include_pad: false,
            ..AvgPool1dConfig::new(3)
        };
        assert_eq!(built.config, cfg.build().unwrap().config);
    }

    #[test]
    #[should_panic(expected = "AvgPool1d: stride must be > 0, got 0")]
    fn builder_setter_panics_with_the_config_message() {
        let _ = AvgPool1d::new(2).padding(1).stride(0);
    }

    #[test]
    fn output_shapes_values_and_errors() {
        let a1 = AvgPool1dConfig { ceil_mode: true, ..AvgPool1dConfig::new(3) }.build().unwrap();
        let y = Forward::<f64>::forward(&a1, &Var::constant(Tensor::zeros(&[2, 4, 10])));
        assert_eq!(y.shape().as_slice(), &[2, 4, 4]);
        // count_include_pad off in ceil mode: the last window [3, 5) holds one real tap
        let x = Var::constant(Tensor::<f64>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 4]));
        let p = AvgPool1dConfig { ceil_mode: true, stride: Some(3), ..AvgPool1dConfig::new(2) }.build().unwrap();
        assert_eq!(p.forward(&x).value().to_vec(), vec![1.5, 4.0]);
        assert_eq!(
            AvgPool1dConfig { stride: Some(0), ..AvgPool1dConfig::new(2) }.build().unwrap_err().to_string(),
            "AvgPool1d: stride must be > 0, got 0"
        );
        assert_eq!(
            AvgPool1d::new(3).to_string(),
            "AvgPool1d(kernel_size=3, stride=3, padding=0, ceil_mode=false, count_include_pad=true)"
        );
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let l = AvgPool1dConfig { padding: 1, stride: Some(2), ..AvgPool1dConfig::new(3) }.build().unwrap();
        let r = gradcheck(|v| l.forward(&v[0]), &[t(&[2, 1, 6], 3)], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{l}: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // a 1x1 conv in front of the pool learns y = pool(2 x + 0.5)
        crate::init::manual_seed(9);
        let x1 = Var::constant(t(&[2, 1, 9], 22));
        let conv = Conv1dConfig::new(1, 1, 1).build::<f64>().unwrap();
        conv.weight.set_value(Tensor::full(&[1, 1, 1], 0.5));
        let pool = AvgPool1d::new(2);
        let y = pool.forward(&x1.mul_scalar(2.0).add_scalar(0.5)).detach();
        let loss = descend(&conv.parameters(), 0.5, 300, || {
            let d = pool.forward(&conv.forward(&x1)).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-8, "{pool}: {loss}");
    }
}
