//! `Conv1d`: `y = b + W ⋆ x` over one spatial axis.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Conv1dParams, Float, PadMode, Tensor};
use serde_json::{json, Map, Value};

use super::conv::{check_conv, padding_arg, padding_json, repr_tail, same_pads, Padding};
use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of a [`Conv1d`] layer (PyTorch's defaults: stride 1, no padding, dilation 1,
/// one group, with bias).
#[derive(Clone, Debug, PartialEq)]
pub struct Conv1dConfig {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels produced by the convolution.
    pub out_channels: usize,
    /// Length of the kernel.
    pub kernel_size: usize,
    /// Step between neighbouring windows.
    pub stride: usize,
    /// Zero padding of the input.
    pub padding: Padding<usize>,
    /// Spacing between kernel taps.
    pub dilation: usize,
    /// Blocked connections from input to output channels; divides both channel counts.
    pub groups: usize,
    /// Whether to learn an additive bias.
    pub bias: bool,
}

impl Conv1dConfig {
    /// A configuration with PyTorch's defaults for everything but the sizes.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv1dConfig {
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            padding: Padding::Valid,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size, the stride, the dilation or `groups` is zero, `groups`
    /// does not divide both channel counts, or `'same'` padding is asked for with stride > 1.
    pub fn build<E: Float>(&self) -> Result<Conv1d<E>, NnError> {
        self.check()?;
        let weight = Var::param(Tensor::zeros(&[self.out_channels, self.in_channels / self.groups, self.kernel_size]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = Conv1d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
    }

    /// The checks of [`Conv1dConfig::build`], also run by the layer's builder setters.
    fn check(&self) -> Result<(), NnError> {
        let dims = [self.in_channels, self.out_channels, self.groups];
        let same = self.padding == Padding::Same;
        check_conv("Conv1d", dims, [self.kernel_size], [self.stride], [self.dilation], same)
    }
}

/// A 1-d convolution (cross-correlation) over `[N, C_in, L]`, like `torch.nn.Conv1d`:
/// `out[n, o] = bias[o] + Σ_{c in o's group} weight[o, c] ⋆ x[n, c]`.
///
/// # Shapes
/// - Input: `[N, in_channels, L_in]` or unbatched `[in_channels, L_in]`
/// - Output: `[N, out_channels, L_out]`, with
///   `L_out = floor((L_in + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1`
///   (`L_out = L_in` for [`Padding::Same`])
///
/// # Parameters
/// - `weight`: `[out_channels, in_channels / groups, kernel_size]`, U(-1/√fan_in, 1/√fan_in)
///   with `fan_in = in_channels / groups * kernel_size` (`kaiming_uniform_` with a = √5)
/// - `bias`: `[out_channels]`, U(-1/√fan_in, 1/√fan_in)
///
/// **Panics** in `forward` when the input is not `[N, in_channels, L]` / `[in_channels, L]`
/// or is shorter than the (dilated) kernel after padding.
///
/// ```
/// use kiln_nn::{Conv1d, Conv1dConfig, Forward, Padding};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let conv: Conv1d = Conv1dConfig { stride: 2, padding: Padding::Explicit(1), ..Conv1dConfig::new(3, 4, 3) }
///     .build()
///     .unwrap();
/// let y = conv.forward(&Var::constant(Tensor::zeros(&[2, 3, 11])));
/// assert_eq!(y.shape().as_slice(), &[2, 4, 6]);
/// assert_eq!(conv.to_string(), "Conv1d(3, 4, kernel_size=3, stride=2, padding=1) [40 parameters]");
/// ```
pub struct Conv1d<E: Float = f32> {
    /// The configuration it was built with.
    pub config: Conv1dConfig,
    /// `[out_channels, in_channels / groups, kernel_size]`.
    pub weight: Var<E>,
    /// `[out_channels]`, when configured.
    pub bias: Option<Var<E>>,
}

impl Conv1d<f32> {
    /// A layer with PyTorch's defaults (stride 1, no padding, bias), initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`Conv1dConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`Conv1d::new_generic`].
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self::new_generic(in_channels, out_channels, kernel_size)
    }
}

impl<E: Float> Conv1d<E> {
    /// [`Conv1d::new`] in any element type: `Conv1d::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`Conv1d::new`] does.
    pub fn new_generic(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv1dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets the stride, keeping the parameters (a builder:
    /// `Conv1d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`Conv1dConfig::build`] rejects.
    #[must_use]
    pub fn stride(self, stride: usize) -> Self {
        self.with_config(|c| c.stride = stride)
    }

    /// Sets the padding (`1` or `Padding::Same`), keeping the parameters (a builder:
    /// `Conv1d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`Conv1dConfig::build`] rejects.
    #[must_use]
    pub fn padding(self, padding: impl Into<Padding<usize>>) -> Self {
        self.with_config(|c| c.padding = padding.into())
    }

    /// Sets the dilation, keeping the parameters (a builder:
    /// `Conv1d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`Conv1dConfig::build`] rejects.
    #[must_use]
    pub fn dilation(self, dilation: usize) -> Self {
        self.with_config(|c| c.dilation = dilation)
    }

    /// The layer with its configuration changed by `f`, checked as [`Conv1dConfig::build`]
    /// checks it.
    fn with_config(mut self, f: impl FnOnce(&mut Conv1dConfig)) -> Self {
        f(&mut self.config);
        self.config.check().unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Re-draws the parameters with PyTorch's default init.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::default_weight_bias(&self.weight, self.bias.as_ref(), rng));
    }
}

impl<E: Float> Forward<E> for Conv1d<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let (x, padding) = match c.padding {
            Padding::Valid => (x.clone(), 0),
            Padding::Explicit(p) => (x.clone(), p),
            Padding::Same => {
                let (before, after) = same_pads(c.kernel_size, c.dilation);
                if before == after {
                    (x.clone(), before)
                } else {
                    (x.pad(&[(0, after - before)], PadMode::Constant(0.0)), before)
                }
            }
        };
        let p = Conv1dParams { stride: c.stride, padding, dilation: c.dilation, groups: c.groups };
        x.conv1d(&self.weight, self.bias.as_ref(), &p)
    }
}

impl<E: Float> Module<E> for Conv1d<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

impl<E: Float> fmt::Display for Conv1d<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let padding = match c.padding {
            Padding::Valid | Padding::Explicit(0) => None,
            Padding::Explicit(p) => Some(p.to_string()),
            Padding::Same => Some("same".into()),
        };
        let dilation = (c.dilation != 1).then(|| c.dilation.to_string());
        write!(
            f,
            "Conv1d({}, {}, kernel_size={}, stride={}{}) [{} parameters]",
            c.in_channels,
            c.out_channels,
            c.kernel_size,
            c.stride,
            repr_tail(padding, dilation, c.groups, c.bias),
            self.num_parameters()
        )
    }
}

impl<E: Float> LayerSpec for Conv1d<E> {
    const TYPE_NAME: &'static str = "Conv1d";
    const EXAMPLE: &'static str =
        r#"{"in_channels": 4, "out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"in_channels": c.in_channels, "out_channels": c.out_channels, "kernel_size": c.kernel_size,
            "stride": c.stride, "padding": padding_json(&c.padding), "dilation": c.dilation, "groups": c.groups,
            "bias": c.bias}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.zeros_padding_mode()?;
        let (i, o, k) = (a.usize("in_channels", None)?, a.usize("out_channels", None)?, a.usize("kernel_size", None)?);
        let padding = padding_arg(a, Args::as_usize)?;
        Conv1dConfig {
            stride: a.usize("stride", Some(1))?,
            dilation: a.usize("dilation", Some(1))?,
            groups: a.usize("groups", Some(1))?,
            bias: a.bool("bias", true)?,
            padding,
            ..Conv1dConfig::new(i, o, k)
        }
        .build()
    }
}

crate::register_layer!(Conv1d<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::testing::{descend, int, run_golden};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn output_shapes() {
        let c1: Conv1d = Conv1dConfig { padding: Padding::Same, ..Conv1dConfig::new(2, 3, 4) }.build().unwrap();
        assert_eq!(c1.forward(&Var::constant(Tensor::ones(&[2, 2, 7]))).shape().as_slice(), &[2, 3, 7]);
        let c: Conv1d = Conv1dConfig::new(2, 3, 3).build().unwrap();
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[2, 6]))).shape().as_slice(), &[3, 4]);
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            Conv1dConfig { stride: 0, ..Conv1dConfig::new(1, 1, 1) }.build::<f32>().err().unwrap().to_string(),
            "Conv1d: stride must be > 0, got 0"
        );
        assert_eq!(
            Conv1dConfig { stride: 2, padding: Padding::Same, ..Conv1dConfig::new(1, 1, 3) }
                .build::<f32>()
                .err()
                .unwrap()
                .to_string(),
            "Conv1d: padding='same' needs stride 1, got stride 2"
        );
    }

    #[test]
    fn display_pins_parameter_counts() {
        let c1: Conv1d = Conv1dConfig::new(3, 4, 5).build().unwrap();
        assert_eq!(c1.to_string(), "Conv1d(3, 4, kernel_size=5, stride=1) [64 parameters]");
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        // strided and dilated
        let cfg1 = Conv1dConfig { stride: 2, dilation: 2, padding: Padding::Explicit(1), ..Conv1dConfig::new(2, 3, 2) };
        let m1: Conv1d<f64> = cfg1.build().unwrap();
        let r = gradcheck(
            |v| Conv1d { config: cfg1.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) }.forward(&v[0]),
            &[t(&[2, 2, 7], 2), m1.weight.value(), m1.bias.as_ref().unwrap().value()],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        crate::init::manual_seed(7);
        let c1: Conv1d<f64> = Conv1dConfig::new(1, 1, 2).build().unwrap();
        let x = Var::constant(t(&[3, 1, 6], 14));
        let y =
            Var::constant(x.value().narrow(2, 1, 5).mul_scalar(2.0).sub(&x.value().narrow(2, 0, 5)).add_scalar(0.5));
        let loss = descend(&c1.parameters(), 0.3, 400, || {
            let d = c1.forward(&x).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-6, "conv1d {loss}");
    }

    /// The case's layer from its constructor arguments (as PyTorch was given them).
    #[test]
    fn golden_conv1d() {
        let Some(c) = golden::load("layers/conv1d") else { return };
        let kw = &c.json["constructor_kwargs"];
        let padding = match &kw["padding"] {
            serde_json::Value::String(s) if s == "same" => Padding::Same,
            serde_json::Value::String(s) if s == "valid" => Padding::Valid,
            v => Padding::Explicit(int(v, 0)),
        };
        let mut l: Conv1d<f64> = Conv1dConfig {
            stride: int(&kw["stride"], 1),
            padding,
            dilation: int(&kw["dilation"], 1),
            groups: int(&kw["groups"], 1),
            bias: kw["bias"].as_bool().unwrap_or(true),
            ..Conv1dConfig::new(int(&kw["in_channels"], 0), int(&kw["out_channels"], 0), int(&kw["kernel_size"], 0))
        }
        .build()
        .unwrap();
        run_golden(&c, &mut l);
    }

    #[test]
    fn builder_setters_change_the_config_and_keep_the_parameters() {
        let c = Conv1d::new(1, 4, 3).padding(1).stride(2).dilation(1);
        assert_eq!(c.config, Conv1dConfig { padding: Padding::Explicit(1), stride: 2, ..Conv1dConfig::new(1, 4, 3) });
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[2, 1, 8]))).shape().as_slice(), &[2, 4, 4]);
        let err = std::panic::catch_unwind(|| Conv1d::new(2, 2, 3).stride(0)).err().unwrap();
        assert!(err.downcast_ref::<String>().unwrap().starts_with("Conv1d: stride"), "{err:?}");
    }
}
