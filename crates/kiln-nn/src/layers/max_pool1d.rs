//! `MaxPool1d`: the maximum of each window over one axis.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;
use serde_json::{json, Map, Value};

use super::pool::{check_window, show1};
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of a [`MaxPool1d`] layer (PyTorch's defaults: stride = kernel_size, no
/// padding, dilation 1, floor mode).
#[derive(Clone, Debug, PartialEq)]
pub struct MaxPool1dConfig {
    /// Window length.
    pub kernel_size: usize,
    /// Step between windows; `None` means `kernel_size`.
    pub stride: Option<usize>,
    /// Implicit `-inf` padding on both ends (at most `kernel_size / 2`).
    pub padding: usize,
    /// Spacing between window taps.
    pub dilation: usize,
    /// Ceiling instead of floor in the output length (a last partial window is kept when it
    /// starts inside the input or its left padding).
    pub ceil_mode: bool,
}

impl MaxPool1dConfig {
    /// PyTorch's defaults for a window of `kernel_size`.
    pub fn new(kernel_size: usize) -> Self {
        MaxPool1dConfig { kernel_size, stride: None, padding: 0, dilation: 1, ceil_mode: false }
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`NnError::Config`] when the kernel size, stride or dilation is zero, or the padding
    /// exceeds half the kernel size.
    pub fn build(&self) -> Result<MaxPool1d, NnError> {
        let k = self.kernel_size;
        let s = self.stride.unwrap_or(k);
        check_window("MaxPool1d", [1, k], [1, s], [0, self.padding], [1, self.dilation], show1)?;
        Ok(MaxPool1d { config: self.clone() })
    }
}

/// 1-d max pooling, like `torch.nn.MaxPool1d`:
/// `out[n, c, l] = max_{k < kernel_size} x[n, c, stride l + dilation k - padding]`.
///
/// # Shapes
/// - Input: `[N, C, L_in]` or unbatched `[C, L_in]`
/// - Output: `[N, C, L_out]`, with
///   `L_out = floor((L_in + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1`
///   (ceiling with `ceil_mode`)
///
/// # Parameters
/// None. The gradient goes to each window's (first) maximum.
///
/// **Panics** in `forward` when the input is not 3-d or 2-d or is too short for one window.
///
/// ```
/// use kiln_nn::{Forward, MaxPool1d};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let pool = MaxPool1d::new(2);
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![1.0, 3.0, 2.0, 0.0, 5.0], &[1, 1, 5]));
/// assert_eq!(pool.forward(&x).value().to_vec(), vec![3.0, 2.0]);
/// assert_eq!(pool.to_string(), "MaxPool1d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=false)");
/// ```
#[derive(Clone, Debug)]
pub struct MaxPool1d {
    /// The configuration it was built with.
    pub config: MaxPool1dConfig,
}

impl MaxPool1d {
    /// A pool with stride `kernel_size` and no padding.
    ///
    /// **Panics** if `kernel_size` is zero (use [`MaxPool1dConfig::build`] for a `Result`).
    pub fn new(kernel_size: usize) -> Self {
        MaxPool1dConfig::new(kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    super::pool::pool_setters! { MaxPool1d;
        /// Sets the step between windows
        stride: usize => stride = Some(stride);
        /// Sets the implicit `-inf` padding on both ends
        padding: usize => padding = padding;
        /// Sets the spacing between window taps
        dilation: usize => dilation = dilation;
        /// Sets ceiling (`true`) or floor (`false`) in the output length
        ceil_mode: bool => ceil_mode = ceil_mode;
    }
}

impl<E: Float> Forward<E> for MaxPool1d {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        x.max_pool1d(c.kernel_size, c.stride.unwrap_or(c.kernel_size), c.padding, c.dilation, c.ceil_mode)
    }
}

impl<E: Float> Module<E> for MaxPool1d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for MaxPool1d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "MaxPool1d(kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={})",
            c.kernel_size,
            c.stride.unwrap_or(c.kernel_size),
            c.padding,
            c.dilation,
            c.ceil_mode
        )
    }
}

impl LayerSpec for MaxPool1d {
    const TYPE_NAME: &'static str = "MaxPool1d";
    const EXAMPLE: &'static str = r#"{"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": true}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"kernel_size": c.kernel_size, "stride": c.stride.unwrap_or(c.kernel_size),
            "padding": c.padding, "dilation": c.dilation, "ceil_mode": c.ceil_mode}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.no_indices()?;
        let k = a.usize("kernel_size", None)?;
        MaxPool1dConfig {
            stride: Some(a.usize("stride", Some(k))?),
            padding: a.usize("padding", Some(0))?,
            dilation: a.usize("dilation", Some(1))?,
            ceil_mode: a.bool("ceil_mode", false)?,
            ..MaxPool1dConfig::new(k)
        }
        .build()
    }
}

crate::register_layer!(MaxPool1d);

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
        let built = MaxPool1d::new(3).stride(2).padding(1).dilation(2).ceil_mode(true);
        let cfg =
            MaxPool1dConfig { stride: Some(2), padding: 1, dilation: 2, ceil_mode: true, ..MaxPool1dConfig::new(3) };
        assert_eq!(built.config, cfg.build().unwrap().config);
        assert_eq!(built.to_string(), cfg.build().unwrap().to_string());
    }

    #[test]
    #[should_panic(expected = "MaxPool1d: stride must be > 0, got 0")]
    fn builder_setter_panics_with_the_config_message() {
        let _ = MaxPool1d::new(3).stride(0);
    }

    #[test]
    fn output_shape_and_errors() {
        let y = Forward::<f64>::forward(&MaxPool1d::new(3), &Var::constant(Tensor::zeros(&[2, 4, 10])));
        assert_eq!(y.shape().as_slice(), &[2, 4, 3]);
        assert_eq!(
            MaxPool1dConfig::new(0).build().unwrap_err().to_string(),
            "MaxPool1d: kernel_size must be > 0, got 0"
        );
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let l = MaxPool1dConfig { dilation: 2, ceil_mode: true, ..MaxPool1dConfig::new(2) }.build().unwrap();
        let r = gradcheck(|v| l.forward(&v[0]), &[t(&[2, 1, 7], 1)], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{l}: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // a 1x1 conv in front of the pool learns y = pool(2 x + 0.5)
        crate::init::manual_seed(9);
        let x1 = Var::constant(t(&[2, 1, 9], 22));
        let conv = Conv1dConfig::new(1, 1, 1).build::<f64>().unwrap();
        conv.weight.set_value(Tensor::full(&[1, 1, 1], 0.5));
        let pool = MaxPool1d::new(3);
        let y = pool.forward(&x1.mul_scalar(2.0).add_scalar(0.5)).detach();
        let loss = descend(&conv.parameters(), 0.5, 300, || {
            let d = pool.forward(&conv.forward(&x1)).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-8, "{pool}: {loss}");
    }
}
