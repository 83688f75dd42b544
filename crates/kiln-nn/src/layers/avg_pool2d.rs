//! `AvgPool2d`: the mean of each window over two axes.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;
use serde_json::{json, Map, Value};

use super::pool::{check_window, show2, tuple2};
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of an [`AvgPool2d`] layer (PyTorch's defaults: stride = kernel_size, no
/// padding, floor mode, padding counted in the divisor, no divisor override). Pairs are
/// `[height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AvgPool2dConfig {
    /// Window size.
    pub kernel_size: [usize; 2],
    /// Step between windows; `None` means `kernel_size`.
    pub stride: Option<[usize; 2]>,
    /// Implicit zero padding on both sides (at most `kernel_size / 2`).
    pub padding: [usize; 2],
    /// Ceiling instead of floor in the output size.
    pub ceil_mode: bool,
    /// Whether the zero padding counts in each window's divisor.
    pub count_include_pad: bool,
    /// A fixed divisor for every window instead of its size.
    pub divisor_override: Option<usize>,
}

impl AvgPool2dConfig {
    /// PyTorch's defaults for a square window of `kernel_size`.
    pub fn new(kernel_size: usize) -> Self {
        AvgPool2dConfig {
            kernel_size: [kernel_size, kernel_size],
            stride: None,
            padding: [0, 0],
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`NnError::Config`] when a kernel size, a stride or `divisor_override` is zero, or a
    /// padding exceeds half its kernel size.
    pub fn build(&self) -> Result<AvgPool2d, NnError> {
        let s = self.stride.unwrap_or(self.kernel_size);
        check_window("AvgPool2d", self.kernel_size, s, self.padding, [1, 1], show2)?;
        if self.divisor_override == Some(0) {
            return Err(NnError::Config("AvgPool2d: divisor_override must be > 0, got 0".into()));
        }
        Ok(AvgPool2d { config: self.clone() })
    }
}

/// 2-d average pooling, like `torch.nn.AvgPool2d`:
/// `out[n, c, i, j] = (1 / count) Σ_{a, b} x[n, c, s_h i + a - p_h, s_w j + b - p_w]`, the
/// padding being zeros; `count` is `divisor_override` when set, else `kH kW` with
/// `count_include_pad`, else the number of taps inside the input.
///
/// # Shapes
/// - Input: `[N, C, H_in, W_in]` or unbatched `[C, H_in, W_in]`
/// - Output: `[N, C, H_out, W_out]`, on each axis
///   `out = floor((in + 2 padding - kernel_size) / stride) + 1` (ceiling with `ceil_mode`)
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` when the input is not 4-d or 3-d or is too small for one window.
///
/// ```
/// use kiln_nn::{AvgPool2d, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let pool = AvgPool2d::new(2);
/// let x = Var::constant(Tensor::<f32>::arange(0.0, 16.0, 1.0).reshape(&[1, 1, 4, 4]));
/// assert_eq!(pool.forward(&x).value().to_vec(), vec![2.5, 4.5, 10.5, 12.5]);
/// assert_eq!(
///     pool.to_string(),
///     "AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=false, count_include_pad=true)"
/// );
/// ```
#[derive(Clone, Debug)]
pub struct AvgPool2d {
    /// The configuration it was built with.
    pub config: AvgPool2dConfig,
}

impl AvgPool2d {
    /// A pool with a square window, stride `kernel_size` and no padding.
    ///
    /// **Panics** if `kernel_size` is zero (use [`AvgPool2dConfig::build`] for a `Result`).
    pub fn new(kernel_size: usize) -> Self {
        AvgPool2dConfig::new(kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    super::pool::pool_setters! { AvgPool2d;
        /// Sets the step between windows on both axes
        stride: usize => stride = Some([stride, stride]);
        /// Sets the implicit zero padding on both sides of both axes
        padding: usize => padding = [padding, padding];
        /// Sets ceiling (`true`) or floor (`false`) in the output size
        ceil_mode: bool => ceil_mode = ceil_mode;
        /// Sets whether the zero padding counts in each window's divisor
        count_include_pad: bool => count_include_pad = count_include_pad;
    }
}

impl<E: Float> Forward<E> for AvgPool2d {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        x.avg_pool2d(
            c.kernel_size,
            c.stride.unwrap_or(c.kernel_size),
            c.padding,
            c.ceil_mode,
            c.count_include_pad,
            c.divisor_override,
        )
    }
}

impl<E: Float> Module<E> for AvgPool2d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for AvgPool2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "AvgPool2d(kernel_size={}, stride={}, padding={}, ceil_mode={}, count_include_pad={}",
            tuple2(c.kernel_size),
            tuple2(c.stride.unwrap_or(c.kernel_size)),
            tuple2(c.padding),
            c.ceil_mode,
            c.count_include_pad
        )?;
        if let Some(d) = c.divisor_override {
            write!(f, ", divisor_override={d}")?;
        }
        write!(f, ")")
    }
}

impl LayerSpec for AvgPool2d {
    const TYPE_NAME: &'static str = "AvgPool2d";
    const EXAMPLE: &'static str = r#"{"kernel_size": 2, "padding": 1, "ceil_mode": true, "divisor_override": 3}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"kernel_size": c.kernel_size, "stride": c.stride.unwrap_or(c.kernel_size),
            "padding": c.padding, "ceil_mode": c.ceil_mode, "count_include_pad": c.count_include_pad,
            "divisor_override": c.divisor_override}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let k = a.pair("kernel_size", None)?;
        AvgPool2dConfig {
            kernel_size: k,
            stride: Some(a.pair("stride", Some(k))?),
            padding: a.pair("padding", Some([0, 0]))?,
            ceil_mode: a.bool("ceil_mode", false)?,
            count_include_pad: a.bool("count_include_pad", true)?,
            divisor_override: a.opt_usize("divisor_override")?,
        }
        .build()
    }
}

crate::register_layer!(AvgPool2d);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::testing::{descend, int, pair, run_golden};
    use crate::layers::Conv2dConfig;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn builder_setters_match_the_config() {
        let built = AvgPool2d::new(3).stride(2).padding(1).ceil_mode(true).count_include_pad(false);
        let cfg = AvgPool2dConfig {
            stride: Some([2, 2]),
            padding: [1, 1],
            ceil_mode: true,
            count_include_pad: false,
            ..AvgPool2dConfig::new(3)
        };
        assert_eq!(built.config, cfg.build().unwrap().config);
    }

    #[test]
    #[should_panic(expected = "AvgPool2d: padding must be at most half of kernel_size")]
    fn builder_setter_panics_with_the_config_message() {
        let _ = AvgPool2d::new(2).padding(2);
    }

    #[test]
    fn output_shapes_and_divisors() {
        let a2 = AvgPool2dConfig { stride: Some([2, 1]), padding: [1, 0], ..AvgPool2dConfig::new(3) }.build().unwrap();
        let y = Forward::<f64>::forward(&a2, &Var::constant(Tensor::zeros(&[1, 2, 9, 8])));
        assert_eq!(y.shape().as_slice(), &[1, 2, 5, 6]);
        let x2 = Var::constant(Tensor::<f64>::ones(&[1, 1, 2, 2]));
        let d = AvgPool2dConfig { divisor_override: Some(3), ..AvgPool2dConfig::new(2) }.build().unwrap();
        assert!((d.forward(&x2).item() - 4.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn config_errors_and_display() {
        assert_eq!(
            AvgPool2dConfig { divisor_override: Some(0), ..AvgPool2dConfig::new(2) }.build().unwrap_err().to_string(),
            "AvgPool2d: divisor_override must be > 0, got 0"
        );
        let a = AvgPool2dConfig { divisor_override: Some(5), ..AvgPool2dConfig::new(2) }.build().unwrap();
        assert_eq!(
            a.to_string(),
            "AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=false, count_include_pad=true, \
             divisor_override=5)"
        );
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let l = AvgPool2dConfig {
            padding: [1, 1],
            stride: Some([2, 2]),
            ceil_mode: true,
            count_include_pad: false,
            ..AvgPool2dConfig::new(3)
        }
        .build()
        .unwrap();
        let r = gradcheck(|v| l.forward(&v[0]), &[t(&[1, 2, 4, 5], 2)], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{l}: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // a 1x1 conv in front of the pool learns y = pool(2 x + 0.5)
        crate::init::manual_seed(9);
        let pool =
            AvgPool2dConfig { padding: [1, 1], count_include_pad: false, ..AvgPool2dConfig::new(3) }.build().unwrap();
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
    fn golden_avg_pool2d() {
        for name in ["avgpool2d_count_include_pad", "avgpool2d_exclude_pad"] {
            let Some(c) = golden::load(&format!("layers/{name}")) else { return };
            let kw = &c.json["constructor_kwargs"];
            let module = c.json["module"].as_str().unwrap_or_default();
            assert!(module.ends_with("AvgPool2d"), "{name}: module {module}");
            let mut layer = AvgPool2dConfig {
                kernel_size: pair(&kw["kernel_size"], [0, 0]),
                stride: (!kw["stride"].is_null()).then(|| pair(&kw["stride"], [1, 1])),
                padding: pair(&kw["padding"], [0, 0]),
                ceil_mode: kw["ceil_mode"].as_bool().unwrap_or(false),
                count_include_pad: kw["count_include_pad"].as_bool().unwrap_or(true),
                divisor_override: (!kw["divisor_override"].is_null()).then(|| int(&kw["divisor_override"], 1)),
            }
            .build()
            .unwrap();
            run_golden(&c, &mut layer);
        }
    }
}
