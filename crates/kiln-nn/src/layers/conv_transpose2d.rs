//! `ConvTranspose2d`: the adjoint of a `Conv2d` in its input, plus a bias (upsampling).

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{ConvTranspose2dParams, Float, Tensor};
use serde_json::{json, Map, Value};

use super::conv::{check_conv, repr_tail, tuple2};
use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of a [`ConvTranspose2d`] layer (PyTorch's defaults: stride 1, no padding, no
/// output padding, dilation 1, one group, with bias). Pairs are `[height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTranspose2dConfig {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels produced by the transposed convolution.
    pub out_channels: usize,
    /// Size of the kernel.
    pub kernel_size: [usize; 2],
    /// Stride of the convolution this one transposes (the upsampling factor).
    pub stride: [usize; 2],
    /// Padding of the convolution this one transposes: removes `dilation (k - 1) - padding`
    /// from each border of the full output.
    pub padding: [usize; 2],
    /// Extra rows/columns added to the bottom/right of the output; smaller than the stride
    /// or the dilation of its axis.
    pub output_padding: [usize; 2],
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Blocked connections from input to output channels; divides both channel counts.
    pub groups: usize,
    /// Whether to learn an additive bias.
    pub bias: bool,
}

impl ConvTranspose2dConfig {
    /// A configuration with a square kernel and PyTorch's defaults for everything else.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        ConvTranspose2dConfig {
            in_channels,
            out_channels,
            kernel_size: [kernel_size, kernel_size],
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size, a stride, a dilation or `groups` is zero, `groups`
    /// does not divide both channel counts, or an `output_padding` is not smaller than the
    /// stride or the dilation of its axis.
    pub fn build<E: Float>(&self) -> Result<ConvTranspose2d<E>, NnError> {
        self.check()?;
        let [kh, kw] = self.kernel_size;
        let weight = Var::param(Tensor::zeros(&[self.in_channels, self.out_channels / self.groups, kh, kw]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = ConvTranspose2d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
    }

    /// The checks of [`ConvTranspose2dConfig::build`], also run by the layer's builder setters.
    fn check(&self) -> Result<(), NnError> {
        let l = "ConvTranspose2d";
        check_conv(
            l,
            [self.in_channels, self.out_channels, self.groups],
            self.kernel_size,
            self.stride,
            self.dilation,
            false,
        )?;
        for a in 0..2 {
            if self.output_padding[a] >= self.stride[a] && self.output_padding[a] >= self.dilation[a] {
                return Err(NnError::Config(format!(
                    "{l}: output_padding must be smaller than either stride or dilation, got output_padding={:?}, \
                     stride={:?}, dilation={:?}",
                    self.output_padding, self.stride, self.dilation
                )));
            }
        }
        Ok(())
    }
}

/// A 2-d transposed convolution, like `torch.nn.ConvTranspose2d`: the gradient of a
/// [`Conv2d`] with respect to its input, plus a bias — each input pixel scatters
/// `x[n, c, i, j] · weight[c]` into a `stride`-spaced window of the output. Used to upsample.
///
/// # Shapes
/// - Input: `[N, in_channels, H_in, W_in]` or unbatched `[in_channels, H_in, W_in]`
/// - Output: `[N, out_channels, H_out, W_out]`, on each axis
///   `out = (in - 1) stride - 2 padding + dilation (kernel_size - 1) + output_padding + 1`
///
/// # Parameters
/// - `weight`: `[in_channels, out_channels / groups, kH, kW]`, U(-1/√fan_in, 1/√fan_in) with
///   PyTorch's `fan_in` of that shape, `out_channels / groups * kH * kW`
///   (`kaiming_uniform_` with a = √5)
/// - `bias`: `[out_channels]`, U(-1/√fan_in, 1/√fan_in)
///
/// **Panics** in `forward` when the input is not `[N, in_channels, H, W]` /
/// `[in_channels, H, W]`.
///
/// ```
/// use kiln_nn::{ConvTranspose2d, ConvTranspose2dConfig, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let up: ConvTranspose2d = ConvTranspose2dConfig {
///     stride: [2, 2],
///     padding: [1, 1],
///     output_padding: [1, 1],
///     ..ConvTranspose2dConfig::new(16, 8, 3)
/// }
/// .build()
/// .unwrap();
/// let y = up.forward(&Var::constant(Tensor::zeros(&[2, 16, 7, 7])));
/// assert_eq!(y.shape().as_slice(), &[2, 8, 14, 14]);
/// assert_eq!(
///     up.to_string(),
///     "ConvTranspose2d(16, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1)) \
///      [1160 parameters]"
/// );
/// ```
pub struct ConvTranspose2d<E: Float = f32> {
    /// The configuration it was built with.
    pub config: ConvTranspose2dConfig,
    /// `[in_channels, out_channels / groups, kH, kW]`.
    pub weight: Var<E>,
    /// `[out_channels]`, when configured.
    pub bias: Option<Var<E>>,
}

impl ConvTranspose2d<f32> {
    /// A layer with a square kernel and PyTorch's defaults (stride 1, no padding, bias),
    /// initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`ConvTranspose2dConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`ConvTranspose2d::new_generic`].
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self::new_generic(in_channels, out_channels, kernel_size)
    }
}

impl<E: Float> ConvTranspose2d<E> {
    /// [`ConvTranspose2d::new`] in any element type: `ConvTranspose2d::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`ConvTranspose2d::new`] does.
    pub fn new_generic(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        ConvTranspose2dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets the stride on both axes, keeping the parameters (a builder:
    /// `ConvTranspose2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`ConvTranspose2dConfig::build`] rejects.
    #[must_use]
    pub fn stride(self, stride: usize) -> Self {
        self.with_config(|c| c.stride = [stride, stride])
    }

    /// Sets the padding on both axes, keeping the parameters (a builder:
    /// `ConvTranspose2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`ConvTranspose2dConfig::build`] rejects.
    #[must_use]
    pub fn padding(self, padding: usize) -> Self {
        self.with_config(|c| c.padding = [padding, padding])
    }

    /// Sets the output padding on both axes, keeping the parameters (a builder:
    /// `ConvTranspose2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`ConvTranspose2dConfig::build`] rejects.
    #[must_use]
    pub fn output_padding(self, output_padding: usize) -> Self {
        self.with_config(|c| c.output_padding = [output_padding, output_padding])
    }

    /// Sets the dilation on both axes, keeping the parameters (a builder:
    /// `ConvTranspose2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`ConvTranspose2dConfig::build`] rejects.
    #[must_use]
    pub fn dilation(self, dilation: usize) -> Self {
        self.with_config(|c| c.dilation = [dilation, dilation])
    }

    /// The layer with its configuration changed by `f`, checked as [`ConvTranspose2dConfig::build`]
    /// checks it.
    fn with_config(mut self, f: impl FnOnce(&mut ConvTranspose2dConfig)) -> Self {
        f(&mut self.config);
        self.config.check().unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Re-draws the parameters with PyTorch's default init.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::default_weight_bias(&self.weight, self.bias.as_ref(), rng));
    }
}

impl<E: Float> Forward<E> for ConvTranspose2d<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let p = ConvTranspose2dParams {
            stride: c.stride,
            padding: c.padding,
            output_padding: c.output_padding,
            dilation: c.dilation,
            groups: c.groups,
        };
        x.conv_transpose2d(&self.weight, self.bias.as_ref(), &p)
    }
}

impl<E: Float> Module<E> for ConvTranspose2d<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

impl<E: Float> fmt::Display for ConvTranspose2d<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut tail = String::new();
        if c.padding != [0, 0] {
            tail += &format!(", padding={}", tuple2(c.padding));
        }
        if c.output_padding != [0, 0] {
            tail += &format!(", output_padding={}", tuple2(c.output_padding));
        }
        let dilation = (c.dilation != [1, 1]).then(|| tuple2(c.dilation));
        write!(
            f,
            "ConvTranspose2d({}, {}, kernel_size={}, stride={}{}{}) [{} parameters]",
            c.in_channels,
            c.out_channels,
            tuple2(c.kernel_size),
            tuple2(c.stride),
            tail,
            repr_tail(None, dilation, c.groups, c.bias),
            self.num_parameters()
        )
    }
}

impl<E: Float> LayerSpec for ConvTranspose2d<E> {
    const TYPE_NAME: &'static str = "ConvTranspose2d";
    const EXAMPLE: &'static str =
        r#"{"in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"in_channels": c.in_channels, "out_channels": c.out_channels,
            "kernel_size": c.kernel_size, "stride": c.stride, "padding": c.padding,
            "output_padding": c.output_padding, "dilation": c.dilation, "groups": c.groups, "bias": c.bias}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.zeros_padding_mode()?;
        let (i, o) = (a.usize("in_channels", None)?, a.usize("out_channels", None)?);
        ConvTranspose2dConfig {
            kernel_size: a.pair("kernel_size", None)?,
            stride: a.pair("stride", Some([1, 1]))?,
            padding: a.pair("padding", Some([0, 0]))?,
            output_padding: a.pair("output_padding", Some([0, 0]))?,
            dilation: a.pair("dilation", Some([1, 1]))?,
            groups: a.usize("groups", Some(1))?,
            bias: a.bool("bias", true)?,
            ..ConvTranspose2dConfig::new(i, o, 1)
        }
        .build()
    }
}

crate::register_layer!(ConvTranspose2d<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::layers::testing::{descend, int, pair, run_golden};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn output_shapes() {
        let tc: ConvTranspose2d =
            ConvTranspose2dConfig { stride: [2, 3], ..ConvTranspose2dConfig::new(2, 4, 3) }.build().unwrap();
        // (in - 1) stride + k: (4 - 1) 2 + 3 = 9, (5 - 1) 3 + 3 = 15
        assert_eq!(tc.forward(&Var::constant(Tensor::ones(&[1, 2, 4, 5]))).shape().as_slice(), &[1, 4, 9, 15]);
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            ConvTranspose2dConfig { output_padding: [1, 1], ..ConvTranspose2dConfig::new(2, 2, 3) }
                .build::<f32>()
                .err()
                .unwrap()
                .to_string(),
            "ConvTranspose2d: output_padding must be smaller than either stride or dilation, got \
             output_padding=[1, 1], stride=[1, 1], dilation=[1, 1]"
        );
    }

    #[test]
    fn display_pins_parameter_counts() {
        let t: ConvTranspose2d = ConvTranspose2dConfig::new(3, 4, 3).build().unwrap();
        assert_eq!(t.to_string(), "ConvTranspose2d(3, 4, kernel_size=(3, 3), stride=(1, 1)) [112 parameters]");
        assert_eq!(t.named_parameters().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["weight", "bias"]);
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        // with output padding
        let cfgt = ConvTranspose2dConfig {
            stride: [2, 2],
            padding: [1, 0],
            output_padding: [1, 1],
            ..ConvTranspose2dConfig::new(2, 3, 2)
        };
        let mt: ConvTranspose2d<f64> = cfgt.build().unwrap();
        let r = gradcheck(
            |v| ConvTranspose2d { config: cfgt.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) }.forward(&v[0]),
            &[t(&[1, 2, 3, 2], 3), mt.weight.value(), mt.bias.as_ref().unwrap().value()],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        crate::init::manual_seed(7);
        // a transposed conv learns another one's upsampling
        let cfg = ConvTranspose2dConfig { stride: [2, 2], padding: [1, 1], ..ConvTranspose2dConfig::new(2, 1, 3) };
        let (truth, up): (ConvTranspose2d<f64>, ConvTranspose2d<f64>) = (cfg.build().unwrap(), cfg.build().unwrap());
        let x = Var::constant(t(&[3, 2, 3, 3], 12));
        let y = truth.forward(&x).detach();
        let loss = descend(&up.parameters(), 0.8, 400, || {
            let d = up.forward(&x).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-4, "conv_transpose2d {loss}");
    }

    /// The case's layer from its constructor arguments (as PyTorch was given them).
    #[test]
    fn golden_conv_transpose2d() {
        let Some(c) = golden::load("layers/conv_transpose2d") else { return };
        let kw = &c.json["constructor_kwargs"];
        let mut l: ConvTranspose2d<f64> = ConvTranspose2dConfig {
            kernel_size: pair(&kw["kernel_size"], [0, 0]),
            stride: pair(&kw["stride"], [1, 1]),
            padding: pair(&kw["padding"], [0, 0]),
            output_padding: pair(&kw["output_padding"], [0, 0]),
            dilation: pair(&kw["dilation"], [1, 1]),
            groups: int(&kw["groups"], 1),
            bias: kw["bias"].as_bool().unwrap_or(true),
            ..ConvTranspose2dConfig::new(int(&kw["in_channels"], 0), int(&kw["out_channels"], 0), 1)
        }
        .build()
        .unwrap();
        run_golden(&c, &mut l);
    }

    #[test]
    fn builder_setters_change_the_config_and_keep_the_parameters() {
        let c = ConvTranspose2d::new(4, 2, 3).stride(2).padding(1).output_padding(1);
        let want = ConvTranspose2dConfig {
            stride: [2, 2],
            padding: [1, 1],
            output_padding: [1, 1],
            ..ConvTranspose2dConfig::new(4, 2, 3)
        };
        assert_eq!(c.config, want);
        // (H - 1) * 2 - 2 + 3 + 1 = 2H
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[1, 4, 5, 5]))).shape().as_slice(), &[1, 2, 10, 10]);
        assert!(std::panic::catch_unwind(|| ConvTranspose2d::new(4, 2, 3).output_padding(1)).is_err());
    }
}
