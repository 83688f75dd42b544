//! Convolutions: `Conv1d`, `Conv2d` (`y = b + W ⋆ x`) and `ConvTranspose2d` (its adjoint in
//! `x`).

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Conv1dParams, Conv2dParams, ConvTranspose2dParams, Float, PadMode, Tensor};

use crate::error::NnError;
use crate::init;
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

/// How a convolution pads its input, like PyTorch's `padding` argument: `P` is `usize` for
/// [`Conv1d`] and `[usize; 2]` (`[height, width]`) for [`Conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding<P = [usize; 2]> {
    /// No padding (`padding='valid'`, or `0`).
    Valid,
    /// This many zeros on both sides of each spatial axis (`padding=1`, `padding=(1, 2)`).
    Explicit(P),
    /// Pads so that the output has the input's size (`padding='same'`): each axis gets
    /// `dilation * (kernel - 1)` zeros in total, half of them before and the rest (one more
    /// when the total is odd) after, i.e. on the bottom/right. Needs stride 1.
    Same,
}

impl From<usize> for Padding<usize> {
    fn from(p: usize) -> Self {
        Padding::Explicit(p)
    }
}

impl From<usize> for Padding<[usize; 2]> {
    fn from(p: usize) -> Self {
        Padding::Explicit([p, p])
    }
}

impl From<[usize; 2]> for Padding<[usize; 2]> {
    fn from(p: [usize; 2]) -> Self {
        Padding::Explicit(p)
    }
}

/// `(before, after)` zeros on one axis for `'same'` padding: PyTorch pads
/// `total = dilation * (kernel - 1)`, putting the odd one after.
fn same_pads(kernel: usize, dilation: usize) -> (usize, usize) {
    let total = dilation * (kernel - 1);
    (total / 2, total - total / 2)
}

fn check_pos(layer: &str, what: &str, v: usize) -> Result<(), NnError> {
    if v == 0 {
        return Err(NnError::Config(format!("{layer}: {what} must be > 0, got 0")));
    }
    Ok(())
}

fn check_pos2(layer: &str, what: &str, v: [usize; 2]) -> Result<(), NnError> {
    if v.contains(&0) {
        return Err(NnError::Config(format!("{layer}: {what} must be > 0, got {v:?}")));
    }
    Ok(())
}

fn check_channels(layer: &str, in_channels: usize, out_channels: usize, groups: usize) -> Result<(), NnError> {
    check_pos(layer, "in_channels", in_channels)?;
    check_pos(layer, "out_channels", out_channels)?;
    check_pos(layer, "groups", groups)?;
    if in_channels % groups != 0 {
        return Err(NnError::Config(format!(
            "{layer}: in_channels must be divisible by groups, got in_channels={in_channels}, groups={groups}"
        )));
    }
    if out_channels % groups != 0 {
        return Err(NnError::Config(format!(
            "{layer}: out_channels must be divisible by groups, got out_channels={out_channels}, groups={groups}"
        )));
    }
    Ok(())
}

/// PyTorch's `extra_repr` tail shared by the convolutions: non-default settings only.
fn repr_tail(padding: Option<String>, dilation: Option<String>, groups: usize, bias: bool) -> String {
    let mut s = String::new();
    if let Some(p) = padding {
        s += &format!(", padding={p}");
    }
    if let Some(d) = dilation {
        s += &format!(", dilation={d}");
    }
    if groups != 1 {
        s += &format!(", groups={groups}");
    }
    if !bias {
        s += ", bias=false";
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Conv1d

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
        let l = "Conv1d";
        check_channels(l, self.in_channels, self.out_channels, self.groups)?;
        check_pos(l, "kernel_size", self.kernel_size)?;
        check_pos(l, "stride", self.stride)?;
        check_pos(l, "dilation", self.dilation)?;
        if self.padding == Padding::Same && self.stride != 1 {
            return Err(NnError::Config(format!("{l}: padding='same' needs stride 1, got stride {}", self.stride)));
        }
        let weight = Var::param(Tensor::zeros(&[self.out_channels, self.in_channels / self.groups, self.kernel_size]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = Conv1d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
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

impl<E: Float> Conv1d<E> {
    /// A layer with PyTorch's defaults (stride 1, no padding, bias), initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`Conv1dConfig::build`] for a `Result`).
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv1dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
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

// ---------------------------------------------------------------------------------------------
// Conv2d

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
        let l = "Conv2d";
        check_channels(l, self.in_channels, self.out_channels, self.groups)?;
        check_pos2(l, "kernel_size", self.kernel_size)?;
        check_pos2(l, "stride", self.stride)?;
        check_pos2(l, "dilation", self.dilation)?;
        if self.padding == Padding::Same && self.stride != [1, 1] {
            return Err(NnError::Config(format!("{l}: padding='same' needs stride 1, got stride {:?}", self.stride)));
        }
        let [kh, kw] = self.kernel_size;
        let weight = Var::param(Tensor::zeros(&[self.out_channels, self.in_channels / self.groups, kh, kw]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = Conv2d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
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

impl<E: Float> Conv2d<E> {
    /// A layer with a square kernel and PyTorch's defaults (stride 1, no padding, bias),
    /// initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`Conv2dConfig::build`] for a `Result`).
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv2dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
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

fn tuple2(p: [usize; 2]) -> String {
    format!("({}, {})", p[0], p[1])
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

// ---------------------------------------------------------------------------------------------
// ConvTranspose2d

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
        let l = "ConvTranspose2d";
        check_channels(l, self.in_channels, self.out_channels, self.groups)?;
        check_pos2(l, "kernel_size", self.kernel_size)?;
        check_pos2(l, "stride", self.stride)?;
        check_pos2(l, "dilation", self.dilation)?;
        for a in 0..2 {
            if self.output_padding[a] >= self.stride[a] && self.output_padding[a] >= self.dilation[a] {
                return Err(NnError::Config(format!(
                    "{l}: output_padding must be smaller than either stride or dilation, got output_padding={:?}, \
                     stride={:?}, dilation={:?}",
                    self.output_padding, self.stride, self.dilation
                )));
            }
        }
        let [kh, kw] = self.kernel_size;
        let weight = Var::param(Tensor::zeros(&[self.in_channels, self.out_channels / self.groups, kh, kw]));
        let bias = self.bias.then(|| Var::param(Tensor::zeros(&[self.out_channels])));
        let c = ConvTranspose2d { config: self.clone(), weight, bias };
        c.reset_parameters();
        Ok(c)
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

impl<E: Float> ConvTranspose2d<E> {
    /// A layer with a square kernel and PyTorch's defaults (stride 1, no padding, bias),
    /// initialised like PyTorch's.
    ///
    /// **Panics** if a size is zero (use [`ConvTranspose2dConfig::build`] for a `Result`).
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        ConvTranspose2dConfig::new(in_channels, out_channels, kernel_size).build().unwrap_or_else(|e| panic!("{e}"))
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

/// Test support shared by the layer files of this folder: reading golden constructor
/// arguments, running a golden layer case, and a tiny gradient-descent loop.
#[cfg(test)]
pub(crate) mod testing {
    use kiln_autograd::Var;
    use kiln_tensor::Tensor;
    use serde_json::Value;

    use crate::golden::{self, Case};
    use crate::module::{Layer, StateDict};

    /// A constructor argument that PyTorch accepts as `int` or `(int, int)`, as a pair.
    pub(crate) fn pair(v: &Value, default: [usize; 2]) -> [usize; 2] {
        match v {
            Value::Null => default,
            Value::Number(n) => {
                let n = n.as_u64().expect("non-negative int") as usize;
                [n, n]
            }
            Value::Array(a) => [a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize],
            other => panic!("expected int or pair, got {other}"),
        }
    }

    /// An integer constructor argument (or its first element when given as a list).
    pub(crate) fn int(v: &Value, default: usize) -> usize {
        match v {
            Value::Null => default,
            Value::Number(n) => n.as_u64().expect("non-negative int") as usize,
            Value::Array(a) => a[0].as_u64().unwrap() as usize,
            other => panic!("expected int, got {other}"),
        }
    }

    /// Runs a golden layer case on `layer` (already built from the case's constructor
    /// arguments): loads `param.*` (parameters and buffers), switches to the case's mode,
    /// applies the layer to `input.x`, back-propagates `upstream.output` and compares the
    /// output, `grad_input.x`, every `grad_param.*` and every `buffer_after.*`.
    pub(crate) fn run_golden(c: &Case, layer: &mut dyn Layer<f64>) {
        let mut sd = StateDict::new();
        for (k, t) in &c.tensors {
            if let Some(key) = k.strip_prefix("param.") {
                sd.insert(key.to_string(), t.clone());
            }
        }
        layer.load_state_dict(&sd, true).unwrap();
        layer.set_training(c.json["mode"].as_str() != Some("eval"));
        let x = Var::param(c.t("input.x"));
        let y = layer.forward(&x);
        let tol = c.tol("float64");
        let case = c.json["case"].as_str().unwrap_or("?");
        golden::assert_close(&format!("{case} output"), &y.value(), &c.t("output.output"), tol);
        y.backward_with(&c.t("upstream.output"));
        golden::assert_close(&format!("{case} grad x"), &x.grad().unwrap(), &c.t("grad_input.x"), tol);
        let params = layer.named_parameters();
        let expected = c.tensors.keys().filter(|k| k.starts_with("grad_param.")).count();
        assert_eq!(params.len(), expected, "{case}: parameter count");
        for (k, p) in params {
            let g = p.grad().unwrap_or_else(|| Tensor::zeros(&p.shape()));
            golden::assert_close(&format!("{case} grad {k}"), &g, &c.t(&format!("grad_param.{k}")), tol);
        }
        for (k, b) in layer.named_buffers() {
            golden::assert_close(&format!("{case} buffer {k}"), &b.value(), &c.t(&format!("buffer_after.{k}")), tol);
        }
    }

    /// Checks a freshly built module's parameters against an `init/` case: every documented
    /// key is one of the module's parameters and follows PyTorch's documented distribution
    /// (see [`Case::check_init`]), and the module has no undocumented parameter.
    pub(crate) fn check_init(c: &Case, m: &dyn crate::module::Module<f64>) {
        let params = m.named_parameters();
        let documented = c.field("documented").as_object().expect("documented is an object");
        for (k, _) in &params {
            assert!(documented.contains_key(k), "{}: parameter {k} is not documented", c.json_path.display());
        }
        for key in documented.keys() {
            let (_, p) = params
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("{}: the module has no parameter {key}", c.json_path.display()));
            c.check_init(key, &p.shape(), &p.value().to_vec());
        }
    }

    /// Plain gradient descent on `loss()` for `steps` steps; returns the last loss.
    pub(crate) fn descend(params: &[Var<f64>], lr: f64, steps: usize, loss: impl Fn() -> Var<f64>) -> f64 {
        let mut last = f64::MAX;
        for _ in 0..steps {
            for p in params {
                p.zero_grad();
            }
            let l = loss();
            last = l.item();
            l.backward();
            for p in params {
                if let Some(g) = p.grad() {
                    p.update_value(|v| v.axpy_(-lr, &g));
                }
            }
        }
        last
    }
}

/// `padding` as PyTorch writes it: `"valid"`, `"same"`, or the explicit amount.
fn padding_json<P: serde::Serialize>(p: &Padding<P>) -> Value {
    match p {
        Padding::Valid => json!("valid"),
        Padding::Same => json!("same"),
        Padding::Explicit(p) => json!(p),
    }
}

/// `padding` read the way PyTorch takes it (`"valid"`, `"same"`, or an amount read by `amount`).
fn padding_arg<P>(a: &mut Args, amount: fn(&Args, &str, &Value) -> Result<P, NnError>) -> Result<Padding<P>, NnError> {
    Ok(match a.take("padding") {
        None => Padding::Valid,
        Some(Value::String(s)) if s == "same" => Padding::Same,
        Some(Value::String(s)) if s == "valid" => Padding::Valid,
        Some(v) => Padding::Explicit(amount(a, "padding", &v)?),
    })
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
    use super::testing::{check_init, descend, int, pair, run_golden};
    use super::*;
    use crate::golden::{self, Case};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    #[test]
    fn output_shapes() {
        let c: Conv2d = Conv2d::new(3, 5, 3);
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
        let c1: Conv1d = Conv1dConfig { padding: Padding::Same, ..Conv1dConfig::new(2, 3, 4) }.build().unwrap();
        assert_eq!(c1.forward(&Var::constant(Tensor::ones(&[2, 2, 7]))).shape().as_slice(), &[2, 3, 7]);
        let tc: ConvTranspose2d =
            ConvTranspose2dConfig { stride: [2, 3], ..ConvTranspose2dConfig::new(2, 4, 3) }.build().unwrap();
        // (in - 1) stride + k: (4 - 1) 2 + 3 = 9, (5 - 1) 3 + 3 = 15
        assert_eq!(tc.forward(&Var::constant(Tensor::ones(&[1, 2, 4, 5]))).shape().as_slice(), &[1, 4, 9, 15]);
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
        assert_eq!(
            Conv1dConfig { stride: 0, ..Conv1dConfig::new(1, 1, 1) }.build::<f32>().err().unwrap().to_string(),
            "Conv1d: stride must be > 0, got 0"
        );
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
        let c1: Conv1d = Conv1d::new(3, 4, 5);
        assert_eq!(c1.to_string(), "Conv1d(3, 4, kernel_size=5, stride=1) [64 parameters]");
        let t: ConvTranspose2d = ConvTranspose2d::new(3, 4, 3);
        assert_eq!(t.to_string(), "ConvTranspose2d(3, 4, kernel_size=(3, 3), stride=(1, 1)) [112 parameters]");
        assert_eq!(t.named_parameters().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["weight", "bias"]);
    }

    #[test]
    fn init_bounds_match_pytorch() {
        // kaiming_uniform_(a = sqrt 5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise
        let c: Conv2d<f64> = Conv2d::new(32, 64, 3);
        let bound = 1.0 / ((32 * 9) as f64).sqrt();
        let (w, b) = (c.weight.value(), c.bias.as_ref().unwrap().value());
        assert!(w.abs().max_all() <= bound && w.abs().max_all() > 0.99 * bound);
        assert!(b.abs().max_all() <= bound);
        let Some(c) = golden::load("init/conv2d") else { return };
        check_init(&c, &conv2d_from(&c));
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        let check = |f: &dyn Fn(&[Var<f64>]) -> Var<f64>, inputs: &[Tensor<f64>]| {
            let r = gradcheck(f, inputs, 1e-6, 1e-7, 1e-5);
            assert!(r.is_ok(), "{}", r.unwrap_err());
        };
        // Conv2d, 'same' with an even kernel (asymmetric pad), two groups
        let cfg = Conv2dConfig { kernel_size: [2, 3], padding: Padding::Same, groups: 2, ..Conv2dConfig::new(2, 4, 1) };
        let m: Conv2d<f64> = cfg.build().unwrap();
        check(
            &|v| Conv2d { config: cfg.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) }.forward(&v[0]),
            &[t(&[1, 2, 3, 4], 1), m.weight.value(), m.bias.as_ref().unwrap().value()],
        );
        // Conv1d, strided and dilated
        let cfg1 = Conv1dConfig { stride: 2, dilation: 2, padding: Padding::Explicit(1), ..Conv1dConfig::new(2, 3, 2) };
        let m1: Conv1d<f64> = cfg1.build().unwrap();
        check(
            &|v| Conv1d { config: cfg1.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) }.forward(&v[0]),
            &[t(&[2, 2, 7], 2), m1.weight.value(), m1.bias.as_ref().unwrap().value()],
        );
        // ConvTranspose2d with output padding
        let cfgt = ConvTranspose2dConfig {
            stride: [2, 2],
            padding: [1, 0],
            output_padding: [1, 1],
            ..ConvTranspose2dConfig::new(2, 3, 2)
        };
        let mt: ConvTranspose2d<f64> = cfgt.build().unwrap();
        check(
            &|v| {
                ConvTranspose2d { config: cfgt.clone(), weight: v[1].clone(), bias: Some(v[2].clone()) }.forward(&v[0])
            },
            &[t(&[1, 2, 3, 2], 3), mt.weight.value(), mt.bias.as_ref().unwrap().value()],
        );
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
        let c1: Conv1d<f64> = Conv1d::new(1, 1, 2);
        let x = Var::constant(t(&[3, 1, 6], 14));
        let y =
            Var::constant(x.value().narrow(2, 1, 5).mul_scalar(2.0).sub(&x.value().narrow(2, 0, 5)).add_scalar(0.5));
        let loss = descend(&c1.parameters(), 0.3, 400, || {
            let d = c1.forward(&x).sub(&y);
            d.mul(&d).mean(&[], false)
        });
        assert!(loss < 1e-6, "conv1d {loss}");
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

    /// Builds the case's layer from its constructor arguments (as PyTorch was given them).
    fn golden_case(name: &str) {
        let Some(c) = golden::load(name) else { return };
        let kw = &c.json["constructor_kwargs"];
        let (i, o) = (int(&kw["in_channels"], 0), int(&kw["out_channels"], 0));
        let groups = int(&kw["groups"], 1);
        let bias = kw["bias"].as_bool().unwrap_or(true);
        let module = c.json["module"].as_str().unwrap_or_default();
        if module.ends_with("ConvTranspose2d") {
            let mut l: ConvTranspose2d<f64> = ConvTranspose2dConfig {
                kernel_size: pair(&kw["kernel_size"], [0, 0]),
                stride: pair(&kw["stride"], [1, 1]),
                padding: pair(&kw["padding"], [0, 0]),
                output_padding: pair(&kw["output_padding"], [0, 0]),
                dilation: pair(&kw["dilation"], [1, 1]),
                groups,
                bias,
                ..ConvTranspose2dConfig::new(i, o, 1)
            }
            .build()
            .unwrap();
            run_golden(&c, &mut l);
        } else if module.ends_with("Conv1d") {
            let padding = match &kw["padding"] {
                serde_json::Value::String(s) if s == "same" => Padding::Same,
                serde_json::Value::String(s) if s == "valid" => Padding::Valid,
                v => Padding::Explicit(int(v, 0)),
            };
            let mut l: Conv1d<f64> = Conv1dConfig {
                stride: int(&kw["stride"], 1),
                padding,
                dilation: int(&kw["dilation"], 1),
                groups,
                bias,
                ..Conv1dConfig::new(i, o, int(&kw["kernel_size"], 0))
            }
            .build()
            .unwrap();
            run_golden(&c, &mut l);
        } else {
            assert!(module.ends_with("Conv2d"), "{name}: module {module}");
            run_golden(&c, &mut conv2d_from(&c));
        }
    }

    #[test]
    fn golden_conv() {
        for name in ["conv1d", "conv2d_basic", "conv2d_same", "conv2d_strided_dilated_grouped", "conv_transpose2d"] {
            golden_case(&format!("layers/{name}"));
        }
    }
}
