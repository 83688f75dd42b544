//! `Conv2d`: `y = b + W ⋆ x` over two spatial axes.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Conv2dParams, Float, PadMode, Tensor};
use serde_json::{json, Map, Value};

use super::conv::{check_conv, padding_arg, padding_json, repr_tail, same_pads, tuple2, Padding};
use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of a [`Conv2d`] layer (PyTorch's defaults: stride 1, no padding, dilation 1,
/// one group, with bias). Pairs are `[height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dConfig {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels produced by the convolution.
    pub out_channels: usize,
    /// Size of the kernel.
    pub kernel_size: [usize; 2],
    /// Step between neighbouring windows.
    pub stride: [usize; 2],
    /// Zero padding of the input.
    pub padding: Padding,
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Blocked connections from input to output channels; divides both channel counts.
    pub groups: usize,
    /// Whether to learn an additive bias.
    pub bias: bool,
}

impl Conv2dConfig {
    /// A configuration with a square kernel and PyTorch's defaults for everything else.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size: [kernel_size, kernel_size],
            stride: [1, 1],
            padding: Padding::Valid,
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size, a stride, a dilation or `groups` is zero, `groups`
    /// does not divide both channel counts, or `'same'` padding is asked for with a stride > 1.
    pub fn build<E: Float>(&self) -> Result<Conv2d<E>, NnError> {
        self.check()?;
        let [kh, kw] = self.kernel_size;
        let weight = Var::param(Tensor::zeros(&[self.out_channels, self.in_channels / self.groups, kh, kw]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = Conv2d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
    }

    /// The checks of [`Conv2dConfig::build`], also run by the layer's builder setters.
    fn check(&self) -> Result<(), NnError> {
        let dims = [self.in_channels, self.out_channels, self.groups];
        let same = self.padding == Padding::Same;
        check_conv("Conv2d", dims, self.kernel_size, self.stride, self.dilation, same)
    }
}

/// A 2-d convolution (cross-correlation) over `[N, C_in, H, W]`, like `torch.nn.Conv2d`:
/// `out[n, o] = bias[o] + Σ_{c in o's group} weight[o, c] ⋆ x[n, c]`.
///
/// # Shapes
/// - Input: `[N, in_channels, H_in, W_in]` or unbatched `[in_channels, H_in, W_in]`
/// - Output: `[N, out_channels, H_out, W_out]`, on each axis
///   `out = floor((in + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1`
///   (`out = in` for [`Padding::Same`])
///
/// # Parameters
/// - `weight`: `[out_channels, in_channels / groups, kH, kW]`, U(-1/√fan_in, 1/√fan_in) with
///   `fan_in = in_channels / groups * kH * kW` (`kaiming_uniform_` with a = √5)
/// - `bias`: `[out_channels]`, U(-1/√fan_in, 1/√fan_in)
///
/// **Panics** in `forward` when the input is not `[N, in_channels, H, W]` /
/// `[in_channels, H, W]` or is smaller than the (dilated) kernel after padding.
///
/// ```
/// use kiln_nn::{Conv2d, Conv2dConfig, Forward, Padding};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let conv: Conv2d = Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(3, 16, 3) }.build().unwrap();
/// let y = conv.forward(&Var::constant(Tensor::zeros(&[8, 3, 28, 28])));
/// assert_eq!(y.shape().as_slice(), &[8, 16, 28, 28]);
/// assert_eq!(
///     conv.to_string(),
///     "Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=same) [448 parameters]"
/// );
/// ```
pub struct Conv2d<E: Float = f32> {
    /// The configuration it was built with.
    pub config: Conv2dConfig,
    /// `[out_channels, in_channels / groups, kH, kW]`.
    pub weight: Var<E>,
    /// `[out_channels]`, when configured.
    pub bias: Option<Var<E>>,
}

impl Conv2d<f32> {
    /// A layer with a square kernel and PyTorch's defaults (stride 1, no padding, bias),
    /// initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`Conv2dConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`Conv2d::new_generic`].
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self::new_generic(in_channels, out_channels, kernel_size)
    }
}

impl<E: Float> Conv2d<E> {
    /// [`Conv2d::new`] in any element type: `Conv2d::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`Conv2d::new`] does.
    pub fn new_generic(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv2dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets the stride on both axes, keeping the parameters (a builder:
    /// `Conv2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`Conv2dConfig::build`] rejects.
    #[must_use]
    pub fn stride(self, stride: usize) -> Self {
        self.with_config(|c| c.stride = [stride, stride])
    }

    /// Sets the padding (`1`, `[1, 2]` or `Padding::Same`), keeping the parameters (a builder:
    /// `Conv2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`Conv2dConfig::build`] rejects.
    #[must_use]
    pub fn padding(self, padding: impl Into<Padding>) -> Self {
        self.with_config(|c| c.padding = padding.into())
    }

    /// Sets the dilation on both axes, keeping the parameters (a builder:
    /// `Conv2d::new(1, 32, 3).padding(1).stride(2)`).
    ///
    /// **Panics** on a combination [`Conv2dConfig::build`] rejects.
    #[must_use]
    pub fn dilation(self, dilation: usize) -> Self {
        self.with_config(|c| c.dilation = [dilation, dilation])
    }

    /// The layer with its configuration changed by `f`, checked as [`Conv2dConfig::build`]
    /// checks it.
    fn with_config(mut self, f: impl FnOnce(&mut Conv2dConfig)) -> Self {
        f(&mut self.config);
        self.config.check().unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Re-draws the parameters with PyTorch's default init.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::default_weight_bias(&self.weight, self.bias.as_ref(), rng));
    }
}

impl<E: Float> Forward<E> for Conv2d<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let (x, padding) = match c.padding {
            Padding::Valid => (x.clone(), [0, 0]),
            Padding::Explicit(p) => (x.clone(), p),
            Padding::Same => {
                let (bh, ah) = same_pads(c.kernel_size[0], c.dilation[0]);
                let (bw, aw) = same_pads(c.kernel_size[1], c.dilation[1]);
                // symmetric part through the kernel's padding, the odd extra as an explicit pad
                let x = if ah == bh && aw == bw {
                    x.clone()
                } else {
                    x.pad(&[(0, aw - bw), (0, ah - bh)], PadMode::Constant(0.0))
                };
                (x, [bh, bw])
            }
        };
        let p = Conv2dParams { stride: c.stride, padding, dilation: c.dilation, groups: c.groups };
        x.conv2d(&self.weight, self.bias.as_ref(), &p)
    }
}

impl<E: Float> Module<E> for Conv2d<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

impl<E: Float> fmt::Display for Conv2d<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let padding = match c.padding {
            Padding::Valid | Padding::Explicit([0, 0]) => None,
            Padding::Explicit(p) => Some(tuple2(p)),
            Padding::Same => Some("same".into()),
        };
        let dilation = (c.dilation != [1, 1]).then(|| tuple2(c.dilation));
        write!(
            f,
            "Conv2d({}, {}, kernel_size={}, stride={}{}) [{} parameters]",
            c.in_channels,
            c.out_channels,
            tuple2(c.kernel_size),
            tuple2(c.stride),
            repr_tail(padding, dilation, c.groups, c.bias),
            self.num_parameters()
        )
    }
}

impl<E: Float> LayerSpec for Conv2d<E> {
    const TYPE_NAME: &'static str = "Conv2d";
    const EXAMPLE: &'static str =
        r#"{"in_channels": 2, "out_channels": 4, "kernel_size": [3, 2], "padding": "same", "bias": false}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"in_channels": c.in_channels, "out_channels": c.out_channels, "kernel_size": c.kernel_size,
            "stride": c.stride, "padding": padding_json(&c.padding), "dilation": c.dilation, "groups": c.groups,
            "bias": c.bias}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.zeros_padding_mode()?;
        let (i, o) = (a.usize("in_channels", None)?, a.usize("out_channels", None)?);
        let padding = padding_arg(a, Args::as_pair)?;
        Conv2dConfig {
            kernel_size: a.pair("kernel_size", None)?,
            stride: a.pair("stride", Some([1, 1]))?,
            dilation: a.pair("dilation", Some([1, 1]))?,
            groups: a.usize("groups", Some(1))?,
            bias: a.bool("bias", true)?,
            padding,
            ..Conv2dConfig::new(i, o, 1)
        }
        .build()
    }
}

crate::register_layer!(Conv2d<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{self, Case};
    use crate::layers::testing::{check_init, descend, int, pair, run_golden};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn output_shapes() {
        let c: Conv2d = Conv2dConfig::new(3, 5, 3).build().unwrap();
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[2, 3, 7, 6]))).shape().as_slice(), &[2, 5, 5, 4]);
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[3, 7, 6]))).shape().as_slice(), &[5, 5, 4]);
        // 'same' with an even kernel and dilation: total 2*(4-1) = 6 rows, 3 + 3; 1*(2-1) = 1 col, 0 + 1
        let s: Conv2d = Conv2dConfig {
            kernel_size: [4, 2],
            dilation: [2, 1],
            padding: Padding::Same,
            ..Conv2dConfig::new(2, 3, 1)
        }
        .build()
        .unwrap();
        assert_eq!(s.forward(&Var::constant(Tensor::ones(&[1, 2, 9, 5]))).shape().as_slice(), &[1, 3, 9, 5]);
    }

    #[test]
    fn config_errors() {
        let e = |r: Result<Conv2d, NnError>| r.err().unwrap().to_string();
        assert_eq!(e(Conv2dConfig::new(3, 0, 3).build()), "Conv2d: out_channels must be > 0, got 0");
        assert_eq!(e(Conv2dConfig::new(3, 4, 0).build()), "Conv2d: kernel_size must be > 0, got [0, 0]");
        assert_eq!(
            e(Conv2dConfig { groups: 2, ..Conv2dConfig::new(3, 4, 3) }.build()),
            "Conv2d: in_channels must be divisible by groups, got in_channels=3, groups=2"
        );
        assert_eq!(
            e(Conv2dConfig { stride: [2, 1], padding: Padding::Same, ..Conv2dConfig::new(3, 4, 3) }.build()),
            "Conv2d: padding='same' needs stride 1, got stride [2, 1]"
        );
    }

    #[test]
    fn display_pins_parameter_counts() {
        let c: Conv2d = Conv2dConfig {
            stride: [2, 2],
            padding: Padding::Explicit([1, 1]),
            dilation: [2, 2],
            groups: 2,
            bias: false,
            ..Conv2dConfig::new(4, 6, 3)
        }
        .build()
        .unwrap();
        assert_eq!(
            c.to_string(),
            "Conv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), groups=2, \
             bias=false) [108 parameters]"
        );
    }

    #[test]
    fn init_bounds_match_pytorch() {
        // kaiming_uniform_(a = sqrt 5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise
        let c: Conv2d<f64> = Conv2dConfig::new(32, 64, 3).build().unwrap();
        let bound = 1.0 / ((32 * 9) as f64).sqrt();
        let (w, b) = (c.weight.value(), c.bias.as_ref().unwrap().value());
        assert!(w.abs().max_all() <= bound && w.abs().max_all() > 0.99 * bound);
        assert!(b.abs().max_all() <= bound);
        let Some(c) = golden::load("init/conv2d") else { return };
        check_init(&c, &conv2d_from(&c));
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        // 'same' with an even kernel (asymmetric pad), two groups
        let cfg = Conv2dConfig { kernel_size: [2, 3], padding: Padding::Same, groups: 2, ..Conv2dConfig::new(2, 4, 1) };
        let m: Conv2d<f64> = cfg.build().unwrap();
        let r = gradcheck(
            |v| Conv2d { config: cfg.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) }.forward(&v[0]),
            &[t(&[1, 2, 3, 4], 1), m.weight.value(), m.bias.as_ref().unwrap().value()],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn tiny_overfit() {
        crate::init::manual_seed(7);
        // a 'same' conv learns a fixed 3x3 filter from a handful of images
        let truth: Conv2d<f64> = Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(2, 2, 3) }.build().unwrap();
        let m: Conv2d<f64> = Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(2, 2, 3) }.build().unwrap();
        let x = Var::constant(t(&[4, 2, 5, 5], 11));
        let y = truth.forward(&x).detach();
        let loss = descend(&m.parameters(), 0.5, 400, || {
            let d = m.forward(&x).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-6, "conv2d {loss}");
    }

    /// A Conv2d from the case's constructor arguments (PyTorch's defaults where absent).
    fn conv2d_from(c: &Case) -> Conv2d<f64> {
        let kw = c.field("constructor_kwargs");
        let padding = match &kw["padding"] {
            serde_json::Value::String(s) if s == "same" => Padding::Same,
            serde_json::Value::String(s) if s == "valid" => Padding::Valid,
            v => Padding::Explicit(pair(v, [0, 0])),
        };
        Conv2dConfig {
            kernel_size: pair(&kw["kernel_size"], [0, 0]),
            stride: pair(&kw["stride"], [1, 1]),
            padding,
            dilation: pair(&kw["dilation"], [1, 1]),
            groups: int(&kw["groups"], 1),
            bias: kw["bias"].as_bool().unwrap_or(true),
            ..Conv2dConfig::new(
                c.usize("constructor_kwargs/in_channels"),
                c.usize("constructor_kwargs/out_channels"),
                1,
            )
        }
        .build()
        .unwrap()
    }

    #[test]
    fn golden_conv2d() {
        for name in ["conv2d_basic", "conv2d_same", "conv2d_strided_dilated_grouped"] {
            let Some(c) = golden::load(&format!("layers/{name}")) else { return };
            let module = c.json["module"].as_str().unwrap_or_default();
            assert!(module.ends_with("Conv2d"), "{name}: module {module}");
            run_golden(&c, &mut conv2d_from(&c));
        }
    }

    #[test]
    fn builder_setters_change_the_config_and_keep_the_parameters() {
        let c = Conv2d::new(1, 32, 3).padding(1).stride(2).dilation(1);
        assert_eq!(
            c.config,
            Conv2dConfig { padding: Padding::Explicit([1, 1]), stride: [2, 2], ..Conv2dConfig::new(1, 32, 3) }
        );
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[2, 1, 8, 8]))).shape().as_slice(), &[2, 32, 4, 4]);
        let same = Conv2d::new(2, 2, 3).padding(Padding::Same);
        assert_eq!(same.forward(&Var::constant(Tensor::ones(&[1, 2, 5, 5]))).shape().as_slice(), &[1, 2, 5, 5]);
        let err = std::panic::catch_unwind(|| Conv2d::new(2, 2, 3).padding(Padding::Same).stride(2)).err().unwrap();
        assert_eq!(err.downcast_ref::<String>().unwrap(), "Conv2d: padding='same' needs stride 1, got stride [2, 2]");
    }
}
