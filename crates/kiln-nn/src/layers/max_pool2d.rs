//! `MaxPool2d`: the maximum of each window over two axes.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;
use serde_json::{json, Map, Value};

use super::pool::{check_window, show2, tuple2};
use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of a [`MaxPool2d`] layer (PyTorch's defaults: stride = kernel_size, no
/// padding, dilation 1, floor mode). Pairs are `[height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MaxPool2dConfig {
    /// Window size.
    pub kernel_size: [usize; 2],
    /// Step between windows; `None` means `kernel_size`.
    pub stride: Option<[usize; 2]>,
    /// Implicit `-inf` padding on both sides (at most `kernel_size / 2`).
    pub padding: [usize; 2],
    /// Spacing between window taps.
    pub dilation: [usize; 2],
    /// Ceiling instead of floor in the output size (a last partial window is kept when it
    /// starts inside the input or its top/left padding).
    pub ceil_mode: bool,
}

impl MaxPool2dConfig {
    /// PyTorch's defaults for a square window of `kernel_size`.
    pub fn new(kernel_size: usize) -> Self {
        MaxPool2dConfig {
            kernel_size: [kernel_size, kernel_size],
            stride: None,
            padding: [0, 0],
            dilation: [1, 1],
            ceil_mode: false,
        }
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`NnError::Config`] when a kernel size, stride or dilation is zero, or a padding
    /// exceeds half its kernel size.
    pub fn build(&self) -> Result<MaxPool2d, NnError> {
        let s = self.stride.unwrap_or(self.kernel_size);
        check_window("MaxPool2d", self.kernel_size, s, self.padding, self.dilation, show2)?;
        Ok(MaxPool2d { config: self.clone() })
    }
}

/// 2-d max pooling, like `torch.nn.MaxPool2d`:
/// `out[n, c, i, j] = max_{a, b} x[n, c, s_h i + d_h a - p_h, s_w j + d_w b - p_w]`, the
/// padding being `-inf` (never selected).
///
/// # Shapes
/// - Input: `[N, C, H_in, W_in]` or unbatched `[C, H_in, W_in]`
/// - Output: `[N, C, H_out, W_out]`, on each axis
///   `out = floor((in + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1`
///   (ceiling with `ceil_mode`)
///
/// # Parameters
/// None. The gradient goes to each window's (first) maximum.
///
/// **Panics** in `forward` when the input is not 4-d or 3-d or is too small for one window.
///
/// ```
/// use kiln_nn::{Forward, MaxPool2d};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let pool = MaxPool2d::new(2);
/// let x = Var::constant(Tensor::<f32>::arange(0.0, 16.0, 1.0).reshape(&[1, 1, 4, 4]));
/// assert_eq!(pool.forward(&x).value().to_vec(), vec![5.0, 7.0, 13.0, 15.0]);
/// assert_eq!(
///     pool.to_string(),
///     "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=false)"
/// );
/// ```
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    /// The configuration it was built with.
    pub config: MaxPool2dConfig,
}

impl MaxPool2d {
    /// A pool with a square window, stride `kernel_size` and no padding.
    ///
    /// **Panics** if `kernel_size` is zero (use [`MaxPool2dConfig::build`] for a `Result`).
    pub fn new(kernel_size: usize) -> Self {
        MaxPool2dConfig::new(kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    super::pool::pool_setters! { MaxPool2d;
        /// Sets the step between windows on both axes
        stride: usize => stride = Some([stride, stride]);
        /// Sets the implicit `-inf` padding on both sides of both axes
        padding: usize => padding = [padding, padding];
        /// Sets the spacing between window taps on both axes
        dilation: usize => dilation = [dilation, dilation];
        /// Sets ceiling (`true`) or floor (`false`) in the output size
        ceil_mode: bool => ceil_mode = ceil_mode;
    }
}

impl<E: Float> Forward<E> for MaxPool2d {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        x.max_pool2d(c.kernel_size, c.stride.unwrap_or(c.kernel_size), c.padding, c.dilation, c.ceil_mode)
    }
}

impl<E: Float> Module<E> for MaxPool2d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

impl fmt::Display for MaxPool2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "MaxPool2d(kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={})",
            tuple2(c.kernel_size),
            tuple2(c.stride.unwrap_or(c.kernel_size)),
            tuple2(c.padding),
            tuple2(c.dilation),
            c.ceil_mode
        )
    }
}

impl LayerSpec for MaxPool2d {
    const TYPE_NAME: &'static str = "MaxPool2d";
    const EXAMPLE: &'static str = r#"{"kernel_size": [3, 2], "stride": 1, "padding": [1, 0]}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"kernel_size": c.kernel_size, "stride": c.stride.unwrap_or(c.kernel_size),
            "padding": c.padding, "dilation": c.dilation, "ceil_mode": c.ceil_mode}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.no_indices()?;
        let k = a.pair("kernel_size", None)?;
        MaxPool2dConfig {
            kernel_size: k,
            stride: Some(a.pair("stride", Some(k))?),
            padding: a.pair("padding", Some([0, 0]))?,
            dilation: a.pair("dilation", Some([1, 1]))?,
            ceil_mode: a.bool("ceil_mode", false)?,
        }
        .build()
    }
}

crate::register_layer!(MaxPool2d);

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

    fn shape_of(l: &MaxPool2d, input: &[usize]) -> Vec<usize> {
        Forward::<f64>::forward(l, &Var::constant(Tensor::zeros(input))).shape().to_vec()
    }

    #[test]
    fn builder_setters_match_the_config() {
        let built = MaxPool2d::new(3).stride(2).padding(1).dilation(2).ceil_mode(true);
        let cfg = MaxPool2dConfig {
            stride: Some([2, 2]),
            padding: [1, 1],
            dilation: [2, 2],
            ceil_mode: true,
            ..MaxPool2dConfig::new(3)
        };
        assert_eq!(built.config, cfg.build().unwrap().config);
        assert_eq!(shape_of(&built, &[1, 1, 8, 7]), shape_of(&cfg.build().unwrap(), &[1, 1, 8, 7]));
    }

    #[test]
    #[should_panic(
        expected = "MaxPool2d: padding must be at most half of kernel_size, got padding=[2, 2], kernel_size=[3, 3]"
    )]
    fn builder_setter_panics_with_the_config_message() {
        let _ = MaxPool2d::new(3).padding(2);
    }

    #[test]
    fn output_shapes() {
        assert_eq!(shape_of(&MaxPool2d::new(2), &[2, 3, 8, 7]), [2, 3, 4, 3]);
        assert_eq!(shape_of(&MaxPool2d::new(2), &[3, 8, 7]), [3, 4, 3]);
        let ceil = MaxPool2dConfig { ceil_mode: true, ..MaxPool2dConfig::new(2) }.build().unwrap();
        assert_eq!(shape_of(&ceil, &[1, 1, 8, 7]), [1, 1, 4, 4]);
        let dil =
            MaxPool2dConfig { dilation: [2, 1], stride: Some([1, 1]), ..MaxPool2dConfig::new(3) }.build().unwrap();
        assert_eq!(shape_of(&dil, &[1, 1, 8, 7]), [1, 1, 4, 5]);
    }

    #[test]
    fn padding_is_minus_infinity() {
        // an all-negative input never yields 0
        let neg = Var::constant(Tensor::<f64>::full(&[1, 1, 3, 3], -2.0));
        let m = MaxPool2dConfig { padding: [1, 1], ..MaxPool2dConfig::new(2) }.build().unwrap();
        assert_eq!(m.forward(&neg).value().to_vec(), vec![-2.0; 4]);
    }

    #[test]
    fn config_errors() {
        let e = MaxPool2dConfig { padding: [2, 1], ..MaxPool2dConfig::new(3) }.build().unwrap_err();
        assert_eq!(
            e.to_string(),
            "MaxPool2d: padding must be at most half of kernel_size, got padding=[2, 1], kernel_size=[3, 3]"
        );
    }

    #[test]
    fn display() {
        let m = MaxPool2dConfig { stride: Some([2, 1]), padding: [1, 1], ceil_mode: true, ..MaxPool2dConfig::new(3) }
            .build()
            .unwrap();
        assert_eq!(
            m.to_string(),
            "MaxPool2d(kernel_size=(3, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 1), ceil_mode=true)"
        );
        assert_eq!(<MaxPool2d as Module<f32>>::num_parameters(&m), 0);
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let l = MaxPool2dConfig { stride: Some([2, 1]), padding: [1, 1], ..MaxPool2dConfig::new(3) }.build().unwrap();
        let r = gradcheck(|v| l.forward(&v[0]), &[t(&[1, 2, 4, 5], 0)], 1e-6, 1e-7, 1e-5);
        assert!(r.is_ok(), "{l}: {}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        // a 1x1 conv in front of the pool learns y = pool(2 x + 0.5)
        crate::init::manual_seed(9);
        let pool = MaxPool2d::new(2);
        let x = Var::constant(t(&[3, 1, 6, 6], 21));
        let conv = Conv2dConfig::new(1, 1, 1).build::<f64>().unwrap();
        conv.weight.set_value(Tensor::full(&[1, 1, 1, 1], 0.5)); // stay on the increasing branch
        let y = pool.forward(&x.mul_scalar(2.0).add_scalar(0.5)).detach();
        let loss = descend(&conv.parameters(), 0.5, 300, || {
            let d = pool.forward(&conv.forward(&x)).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-8, "{pool}: {loss}");
    }

    #[test]
    fn golden_max_pool2d() {
        for name in ["maxpool2d_basic", "maxpool2d_strided_padded"] {
            let Some(c) = golden::load(&format!("layers/{name}")) else { return };
            let kw = &c.json["constructor_kwargs"];
            let module = c.json["module"].as_str().unwrap_or_default();
            assert!(module.ends_with("MaxPool2d"), "{name}: module {module}");
            let mut layer = MaxPool2dConfig {
                kernel_size: pair(&kw["kernel_size"], [0, 0]),
                stride: (!kw["stride"].is_null()).then(|| pair(&kw["stride"], [1, 1])),
                padding: pair(&kw["padding"], [0, 0]),
                dilation: pair(&kw["dilation"], [1, 1]),
                ceil_mode: kw["ceil_mode"].as_bool().unwrap_or(false),
            }
            .build()
            .unwrap();
            run_golden(&c, &mut layer);
        }
    }
}
