//! `Conv3d`: `y = b + W ⋆ x` over three spatial axes (depth, height, width).

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Conv2dParams, Float, PadMode, Tensor};
use serde_json::{json, Map, Value};

use super::conv::{check_conv, padding_arg, padding_json, repr_tail, same_pads, Padding};
use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// Configuration of a [`Conv3d`] layer (PyTorch's defaults: stride 1, no padding, dilation 1,
/// one group, with bias). Triples are `[depth, height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv3dConfig {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels produced by the convolution.
    pub out_channels: usize,
    /// Size of the kernel.
    pub kernel_size: [usize; 3],
    /// Step between neighbouring windows.
    pub stride: [usize; 3],
    /// Zero padding of the input.
    pub padding: Padding<[usize; 3]>,
    /// Spacing between kernel taps.
    pub dilation: [usize; 3],
    /// Blocked connections from input to output channels; divides both channel counts.
    pub groups: usize,
    /// Whether to learn an additive bias.
    pub bias: bool,
}

impl Conv3dConfig {
    /// A configuration with a cubic kernel and PyTorch's defaults for everything else.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv3dConfig {
            in_channels,
            out_channels,
            kernel_size: [kernel_size; 3],
            stride: [1; 3],
            padding: Padding::Valid,
            dilation: [1; 3],
            groups: 1,
            bias: true,
        }
    }

    /// Builds the layer, initialised from the process-wide generator.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size, a stride, a dilation or `groups` is zero, `groups`
    /// does not divide both channel counts, or `'same'` padding is asked for with a stride > 1.
    pub fn build<E: Float>(&self) -> Result<Conv3d<E>, NnError> {
        let dims = [self.in_channels, self.out_channels, self.groups];
        check_conv("Conv3d", dims, self.kernel_size, self.stride, self.dilation, self.padding == Padding::Same)?;
        let [kd, kh, kw] = self.kernel_size;
        let weight = Var::param(Tensor::zeros(&[self.out_channels, self.in_channels / self.groups, kd, kh, kw]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = Conv3d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
    }
}

/// A 3-d convolution (cross-correlation) over `[N, C_in, D, H, W]`, like `torch.nn.Conv3d`:
/// `out[n, o] = bias[o] + Σ_{c in o's group} weight[o, c] ⋆ x[n, c]`.
///
/// The forward gathers, for every output depth, the `kD` input depth slices it reads and runs
/// one 2-d convolution over them (depth taps folded into the channels), so the work is the
/// 2-d convolution's GEMM; the backward is that of the gathering and the 2-d convolution.
///
/// # Shapes
/// - Input: `[N, in_channels, D_in, H_in, W_in]` or unbatched `[in_channels, D_in, H_in, W_in]`
/// - Output: `[N, out_channels, D_out, H_out, W_out]`, on each axis
///   `out = floor((in + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1`
///   (`out = in` for [`Padding::Same`])
///
/// # Parameters
/// - `weight`: `[out_channels, in_channels / groups, kD, kH, kW]`, U(-1/√fan_in, 1/√fan_in)
///   with `fan_in = in_channels / groups · kD · kH · kW` (`kaiming_uniform_` with a = √5)
/// - `bias`: `[out_channels]`, U(-1/√fan_in, 1/√fan_in)
///
/// **Panics** in `forward` when the input is not `[N, in_channels, D, H, W]` /
/// `[in_channels, D, H, W]` or is smaller than the (dilated) kernel after padding.
///
/// ```
/// use kiln_nn::{Conv3d, Conv3dConfig, Forward, Padding};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let conv: Conv3d = Conv3dConfig { stride: [1, 2, 2], padding: Padding::Explicit([1, 1, 1]), ..Conv3dConfig::new(2, 4, 3) }
///     .build()
///     .unwrap();
/// let y = conv.forward(&Var::constant(Tensor::zeros(&[1, 2, 5, 8, 8])));
/// assert_eq!(y.shape().as_slice(), &[1, 4, 5, 4, 4]);
/// assert_eq!(
///     conv.to_string(),
///     "Conv3d(2, 4, kernel_size=(3, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)) [220 parameters]"
/// );
/// ```
pub struct Conv3d<E: Float = f32> {
    /// The configuration it was built with.
    pub config: Conv3dConfig,
    /// `[out_channels, in_channels / groups, kD, kH, kW]`.
    pub weight: Var<E>,
    /// `[out_channels]`, when configured.
    pub bias: Option<Var<E>>,
}

impl Conv3d<f32> {
    /// A layer with a cubic kernel and PyTorch's defaults (stride 1, no padding, bias),
    /// initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`Conv3dConfig::build`] for a `Result`).
    ///
    /// In `f32`; any element type through [`Conv3d::new_generic`].
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self::new_generic(in_channels, out_channels, kernel_size)
    }
}

impl<E: Float> Conv3d<E> {
    /// [`Conv3d::new`] in any element type: `Conv3d::<f64>::new_generic(..)`.
    ///
    /// **Panics** as [`Conv3d::new`] does.
    pub fn new_generic(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv3dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Re-draws the parameters with PyTorch's default init.
    pub fn reset_parameters(&self) {
        init::with_rng(|rng| init::default_weight_bias(&self.weight, self.bias.as_ref(), rng));
    }

    fn forward_batched(&self, x: &Var<E>) -> Var<E> {
        let c = &self.config;
        let shape = x.shape();
        let (n, ci) = (shape[0], shape[1]);
        // (before, after) zeros on depth, height and width
        let pads: [(usize, usize); 3] = std::array::from_fn(|k| match c.padding {
            Padding::Valid => (0, 0),
            Padding::Explicit(p) => (p[k], p[k]),
            Padding::Same => same_pads(c.kernel_size[k], c.dilation[k]),
        });
        // depth fully and the odd extra of height/width explicitly; the rest in the 2-d kernel
        let [pad_d, pad_h, pad_w] = pads;
        let explicit = [(0, pad_w.1 - pad_w.0), (0, pad_h.1 - pad_h.0), pad_d];
        let x = if explicit.iter().all(|&(a, b)| a == 0 && b == 0) {
            x.clone()
        } else {
            x.pad(&explicit, PadMode::Constant(0.0))
        };
        let xs = x.shape();
        let (d_in, h, w) = (xs[2], xs[3], xs[4]);
        let [kd, kh, kw] = c.kernel_size;
        let (sd, dd) = (c.stride[0], c.dilation[0]);
        let span = dd * (kd - 1) + 1;
        assert!(
            d_in >= span,
            "Conv3d: input {:?} padded to depth {d_in} is smaller than the dilated kernel depth {span}",
            shape.as_slice()
        );
        let d_out = (d_in - span) / sd + 1;
        // [N, kD, C, D_out, H, W]: the depth slices each kernel tap reads
        let taps: Vec<Var<E>> = (0..kd).map(|t| x.slice(2, t * dd, t * dd + (d_out - 1) * sd + 1, sd)).collect();
        let g = c.groups;
        let cg = ci / g;
        let stacked = Var::stack(&taps, 1)
            .reshape(&[n, kd, g, cg, d_out, h, w])
            .permute(&[0, 4, 2, 1, 3, 5, 6])
            .reshape(&[n * d_out, g * kd * cg, h, w]);
        let o = c.out_channels;
        let weight = self.weight.permute(&[0, 2, 1, 3, 4]).reshape(&[o, kd * cg, kh, kw]);
        let p = Conv2dParams {
            stride: [c.stride[1], c.stride[2]],
            padding: [pad_h.0, pad_w.0],
            dilation: [c.dilation[1], c.dilation[2]],
            groups: g,
        };
        let y = stacked.conv2d(&weight, self.bias.as_ref(), &p);
        let (ho, wo) = (y.shape()[2], y.shape()[3]);
        y.reshape(&[n, d_out, o, ho, wo]).permute(&[0, 2, 1, 3, 4])
    }
}

impl<E: Float> Forward<E> for Conv3d<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let shape = x.shape();
        let ci = self.config.in_channels;
        let ok = match shape.len() {
            4 => shape[0] == ci,
            5 => shape[1] == ci,
            _ => false,
        };
        assert!(ok, "Conv3d: expected input [N, {ci}, D, H, W] or [{ci}, D, H, W], got {:?}", shape.as_slice());
        if shape.len() == 4 {
            self.forward_batched(&x.unsqueeze(0)).squeeze_dim(0)
        } else {
            self.forward_batched(x)
        }
    }
}

impl<E: Float> Module<E> for Conv3d<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        visit_param(prefix, "weight", &self.weight, f);
        if let Some(b) = &self.bias {
            visit_param(prefix, "bias", b, f);
        }
    }
}

/// `(d, h, w)` as PyTorch prints a triple.
fn tuple3(p: [usize; 3]) -> String {
    format!("({}, {}, {})", p[0], p[1], p[2])
}

impl<E: Float> fmt::Display for Conv3d<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let padding = match c.padding {
            Padding::Valid | Padding::Explicit([0, 0, 0]) => None,
            Padding::Explicit(p) => Some(tuple3(p)),
            Padding::Same => Some("same".into()),
        };
        let dilation = (c.dilation != [1; 3]).then(|| tuple3(c.dilation));
        write!(
            f,
            "Conv3d({}, {}, kernel_size={}, stride={}{}) [{} parameters]",
            c.in_channels,
            c.out_channels,
            tuple3(c.kernel_size),
            tuple3(c.stride),
            repr_tail(padding, dilation, c.groups, c.bias),
            self.num_parameters()
        )
    }
}

/// An int (all three axes) or a list of three ints.
fn as_triple(a: &Args, name: &str, v: &Value) -> Result<[usize; 3], NnError> {
    match v {
        Value::Array(x) if x.len() == 3 => {
            Ok([a.as_usize(name, &x[0])?, a.as_usize(name, &x[1])?, a.as_usize(name, &x[2])?])
        }
        Value::Array(_) => Err(a.err(&format!("{name} must be an integer or 3 integers, got {v}"))),
        _ => Ok([a.as_usize(name, v)?; 3]),
    }
}

fn triple(a: &mut Args, name: &str, default: Option<[usize; 3]>) -> Result<[usize; 3], NnError> {
    match (a.take(name), default) {
        (Some(v), _) => as_triple(a, name, &v),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(a.err(&format!("{name} is required"))),
    }
}

impl<E: Float> LayerSpec for Conv3d<E> {
    const TYPE_NAME: &'static str = "Conv3d";
    const EXAMPLE: &'static str =
        r#"{"in_channels": 2, "out_channels": 4, "kernel_size": [3, 2, 1], "padding": "same", "bias": false}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        object(json!({"in_channels": c.in_channels, "out_channels": c.out_channels, "kernel_size": c.kernel_size,
            "stride": c.stride, "padding": padding_json(&c.padding), "dilation": c.dilation, "groups": c.groups,
            "bias": c.bias}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.zeros_padding_mode()?;
        let (i, o) = (a.usize("in_channels", None)?, a.usize("out_channels", None)?);
        let padding = padding_arg(a, as_triple)?;
        Conv3dConfig {
            kernel_size: triple(a, "kernel_size", None)?,
            stride: triple(a, "stride", Some([1; 3]))?,
            dilation: triple(a, "dilation", Some([1; 3]))?,
            groups: a.usize("groups", Some(1))?,
            bias: a.bool("bias", true)?,
            padding,
            ..Conv3dConfig::new(i, o, 1)
        }
        .build()
    }
}

crate::register_layer!(Conv3d<E>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::run_file;
    use crate::layers::testing::descend;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn matches_pytorch() {
        assert!(run_file("conv3d.json") >= 1);
    }

    #[test]
    fn output_shapes() {
        let c: Conv3d = Conv3d::new(3, 5, 3);
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[2, 3, 4, 7, 6]))).shape().as_slice(), &[2, 5, 2, 5, 4]);
        assert_eq!(c.forward(&Var::constant(Tensor::ones(&[3, 3, 7, 6]))).shape().as_slice(), &[5, 1, 5, 4]);
        let s: Conv3d = Conv3dConfig {
            kernel_size: [2, 4, 3],
            dilation: [3, 2, 1],
            padding: Padding::Same,
            ..Conv3dConfig::new(2, 3, 1)
        }
        .build()
        .unwrap();
        assert_eq!(s.forward(&Var::constant(Tensor::ones(&[1, 2, 4, 9, 5]))).shape().as_slice(), &[1, 3, 4, 9, 5]);
    }

    #[test]
    fn config_errors_and_display() {
        let e = |r: Result<Conv3d, NnError>| r.err().unwrap().to_string();
        assert_eq!(e(Conv3dConfig::new(3, 4, 0).build()), "Conv3d: kernel_size must be > 0, got [0, 0, 0]");
        assert_eq!(
            e(Conv3dConfig { stride: [2, 1, 1], padding: Padding::Same, ..Conv3dConfig::new(3, 4, 3) }.build()),
            "Conv3d: padding='same' needs stride 1, got stride [2, 1, 1]"
        );
        let c: Conv3d =
            Conv3dConfig { groups: 2, bias: false, dilation: [1, 2, 1], ..Conv3dConfig::new(4, 6, 2) }.build().unwrap();
        assert_eq!(
            c.to_string(),
            "Conv3d(4, 6, kernel_size=(2, 2, 2), stride=(1, 1, 1), dilation=(1, 2, 1), groups=2, bias=false) [96 parameters]"
        );
    }

    #[test]
    #[should_panic(expected = "Conv3d: expected input [N, 2, D, H, W] or [2, D, H, W], got [1, 3, 4, 4, 4]")]
    fn wrong_channels_panic() {
        let _ = Conv3d::<f32>::new(2, 2, 1).forward(&Var::constant(Tensor::zeros(&[1, 3, 4, 4, 4])));
    }

    #[test]
    fn tiny_overfit() {
        crate::init::manual_seed(11);
        let cfg = Conv3dConfig { padding: Padding::Same, ..Conv3dConfig::new(2, 2, 3) };
        let (truth, m): (Conv3d<f64>, Conv3d<f64>) = (cfg.build().unwrap(), cfg.build().unwrap());
        let x = Var::constant(t(&[3, 2, 3, 4, 4], 12));
        let y = truth.forward(&x).detach();
        let loss = descend(&m.parameters(), 0.5, 400, || m.forward(&x).sub(&y).square().mean(&[], false));
        assert!(loss < 1e-6, "conv3d {loss}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10))]
        #[test]
        fn gradcheck_random_configs(kd in 1usize..3, kh in 1usize..3, sd in 1usize..3, sh in 1usize..3, pd in 0usize..2,
                                    dd in 1usize..3, groups in 1usize..3, bias: bool, same: bool, seed in 0u64..1000) {
            let (stride, padding) =
                if same { ([1, 1, 1], Padding::Same) } else { ([sd, sh, 1], Padding::Explicit([pd, 1 - pd, pd])) };
            let cfg = Conv3dConfig { kernel_size: [kd, kh, 2], stride, padding, dilation: [dd, 1, 2], groups, bias,
                                     ..Conv3dConfig::new(2, 2 * groups, 1) };
            let m: Conv3d<f64> = cfg.build().unwrap();
            let mut inputs = vec![t(&[1, 2, 4, 3, 4], seed), m.weight.value()];
            if let Some(b) = &m.bias {
                inputs.push(b.value());
            }
            let r = gradcheck(
                |v| Conv3d { config: cfg.clone(), weight: v[1].clone(), bias: v.get(2).cloned() }.forward(&v[0]),
                &inputs,
                1e-6,
                1e-7,
                1e-5,
            );
            proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}
