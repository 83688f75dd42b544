//! Pooling: `MaxPool1d`, `MaxPool2d`, `AvgPool1d`, `AvgPool2d` (each window reduced to its
//! maximum or mean) and `AdaptiveAvgPool2d` (a fixed output size).

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};
use serde_json::{json, Map, Value};

fn tuple2(p: [usize; 2]) -> String {
    format!("({}, {})", p[0], p[1])
}

/// Checks the window settings shared by every pool (as pairs; 1-d pools pass `[1, k]` etc.
/// and `show` picks what their messages print).
fn check_window(
    layer: &str,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    show: fn([usize; 2]) -> String,
) -> Result<(), NnError> {
    for (what, v) in [("kernel_size", kernel), ("stride", stride), ("dilation", dilation)] {
        if v.contains(&0) {
            return Err(NnError::Config(format!("{layer}: {what} must be > 0, got {}", show(v))));
        }
    }
    // PyTorch's pool shape check: pad <= kernel / 2, whatever the dilation
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(NnError::Config(format!(
            "{layer}: padding must be at most half of kernel_size, got padding={}, kernel_size={}",
            show(padding),
            show(kernel)
        )));
    }
    Ok(())
}

fn show1(v: [usize; 2]) -> String {
    v[1].to_string()
}

fn show2(v: [usize; 2]) -> String {
    format!("{v:?}")
}

// ---------------------------------------------------------------------------------------------
// MaxPool1d

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

// ---------------------------------------------------------------------------------------------
// MaxPool2d

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

// ---------------------------------------------------------------------------------------------
// AvgPool1d

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

// ---------------------------------------------------------------------------------------------
// AvgPool2d

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

// ---------------------------------------------------------------------------------------------
// AdaptiveAvgPool2d

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
    use super::super::conv::testing::{descend, int, pair, run_golden};
    use super::*;
    use crate::golden;
    use crate::layers::{Conv2d, Conv2dConfig};
    use crate::module::Layer;
    use kiln_autograd::gradcheck;
    use kiln_tensor::{Rng, Tensor};

    fn t(shape: &[usize], seed: u64) -> Tensor<f64> {
        Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
    }

    fn shape_of<L: Forward<f64>>(l: &L, input: &[usize]) -> Vec<usize> {
        l.forward(&Var::constant(Tensor::zeros(input))).shape().to_vec()
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
        assert_eq!(shape_of(&MaxPool1d::new(3), &[2, 4, 10]), [2, 4, 3]);
        let a1 = AvgPool1dConfig { ceil_mode: true, ..AvgPool1dConfig::new(3) }.build().unwrap();
        assert_eq!(shape_of(&a1, &[2, 4, 10]), [2, 4, 4]);
        let a2 = AvgPool2dConfig { stride: Some([2, 1]), padding: [1, 0], ..AvgPool2dConfig::new(3) }.build().unwrap();
        assert_eq!(shape_of(&a2, &[1, 2, 9, 8]), [1, 2, 5, 6]);
        assert_eq!(shape_of(&AdaptiveAvgPool2d::new([3, 2]), &[2, 5, 7, 4]), [2, 5, 3, 2]);
        assert_eq!(shape_of(&AdaptiveAvgPool2d::new([3, 2]), &[5, 7, 4]), [5, 3, 2]);
    }

    #[test]
    fn values_and_divisors() {
        // count_include_pad off in ceil mode: the last window [3, 5) holds one real tap
        let x = Var::constant(Tensor::<f64>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 4]));
        let p = AvgPool1dConfig { ceil_mode: true, stride: Some(3), ..AvgPool1dConfig::new(2) }.build().unwrap();
        assert_eq!(p.forward(&x).value().to_vec(), vec![1.5, 4.0]);
        let x2 = Var::constant(Tensor::<f64>::ones(&[1, 1, 2, 2]));
        let d = AvgPool2dConfig { divisor_override: Some(3), ..AvgPool2dConfig::new(2) }.build().unwrap();
        assert!((d.forward(&x2).item() - 4.0 / 3.0).abs() < 1e-15);
        // max pool padding is -inf: an all-negative input never yields 0
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
        assert_eq!(
            MaxPool1dConfig::new(0).build().unwrap_err().to_string(),
            "MaxPool1d: kernel_size must be > 0, got 0"
        );
        assert_eq!(
            AvgPool1dConfig { stride: Some(0), ..AvgPool1dConfig::new(2) }.build().unwrap_err().to_string(),
            "AvgPool1d: stride must be > 0, got 0"
        );
        assert_eq!(
            AvgPool2dConfig { divisor_override: Some(0), ..AvgPool2dConfig::new(2) }.build().unwrap_err().to_string(),
            "AvgPool2d: divisor_override must be > 0, got 0"
        );
        assert_eq!(
            AdaptiveAvgPool2d::try_new([0, 2]).unwrap_err().to_string(),
            "AdaptiveAvgPool2d: output_size must be > 0, got [0, 2]"
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
        let a = AvgPool2dConfig { divisor_override: Some(5), ..AvgPool2dConfig::new(2) }.build().unwrap();
        assert_eq!(
            a.to_string(),
            "AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=false, count_include_pad=true, \
             divisor_override=5)"
        );
        assert_eq!(
            AvgPool1d::new(3).to_string(),
            "AvgPool1d(kernel_size=3, stride=3, padding=0, ceil_mode=false, count_include_pad=true)"
        );
        assert_eq!(<MaxPool2d as Module<f32>>::num_parameters(&m), 0);
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let layers: Vec<(Box<dyn Layer<f64>>, Vec<usize>)> = vec![
            (
                Box::new(
                    MaxPool2dConfig { stride: Some([2, 1]), padding: [1, 1], ..MaxPool2dConfig::new(3) }
                        .build()
                        .unwrap(),
                ),
                vec![1, 2, 4, 5],
            ),
            (
                Box::new(MaxPool1dConfig { dilation: 2, ceil_mode: true, ..MaxPool1dConfig::new(2) }.build().unwrap()),
                vec![2, 1, 7],
            ),
            (
                Box::new(
                    AvgPool2dConfig {
                        padding: [1, 1],
                        stride: Some([2, 2]),
                        ceil_mode: true,
                        count_include_pad: false,
                        ..AvgPool2dConfig::new(3)
                    }
                    .build()
                    .unwrap(),
                ),
                vec![1, 2, 4, 5],
            ),
            (
                Box::new(AvgPool1dConfig { padding: 1, stride: Some(2), ..AvgPool1dConfig::new(3) }.build().unwrap()),
                vec![2, 1, 6],
            ),
            (Box::new(AdaptiveAvgPool2d::new([3, 2])), vec![1, 2, 5, 3]),
        ];
        for (i, (l, shape)) in layers.iter().enumerate() {
            let r = gradcheck(|v| l.forward(&v[0]), &[t(shape, i as u64)], 1e-6, 1e-7, 1e-5);
            assert!(r.is_ok(), "{l}: {}", r.unwrap_err());
        }
    }

    #[test]
    fn tiny_overfit() {
        // a 1x1 conv in front of each pool learns y = pool(2 x + 0.5)
        crate::init::manual_seed(9);
        let pools: Vec<Box<dyn Layer<f64>>> = vec![
            Box::new(MaxPool2d::new(2)),
            Box::new(
                AvgPool2dConfig { padding: [1, 1], count_include_pad: false, ..AvgPool2dConfig::new(3) }
                    .build()
                    .unwrap(),
            ),
            Box::new(AdaptiveAvgPool2d::new([2, 3])),
        ];
        let x = Var::constant(t(&[3, 1, 6, 6], 21));
        for pool in &pools {
            let conv: Conv2d<f64> = Conv2dConfig::new(1, 1, 1).build().unwrap();
            conv.weight.set_value(Tensor::full(&[1, 1, 1, 1], 0.5)); // stay on the increasing branch for max
            let y = pool.forward(&x.mul_scalar(2.0).add_scalar(0.5)).detach();
            let loss = descend(&conv.parameters(), 0.5, 300, || {
                let d = pool.forward(&conv.forward(&x)).sub(&y);
                d.mul(&d).mean(&[], false)
            });
            assert!(loss < 1e-8, "{pool}: {loss}");
        }
        let x1 = Var::constant(t(&[2, 1, 9], 22));
        let conv = crate::layers::Conv1d::<f64>::new(1, 1, 1);
        conv.weight.set_value(Tensor::full(&[1, 1, 1], 0.5));
        for pool in [Box::new(MaxPool1d::new(3)) as Box<dyn Layer<f64>>, Box::new(AvgPool1d::new(2))] {
            let y = pool.forward(&x1.mul_scalar(2.0).add_scalar(0.5)).detach();
            let loss = descend(&conv.parameters(), 0.5, 300, || {
                let d = pool.forward(&conv.forward(&x1)).sub(&y);
                d.mul(&d).mean(&[], false)
            });
            assert!(loss < 1e-8, "{pool}: {loss}");
        }
    }

    fn golden_case(name: &str) {
        let Some(c) = golden::load(name) else { return };
        let kw = &c.json["constructor_kwargs"];
        let module = c.json["module"].as_str().unwrap_or_default();
        let stride = (!kw["stride"].is_null()).then(|| pair(&kw["stride"], [1, 1]));
        let ceil_mode = kw["ceil_mode"].as_bool().unwrap_or(false);
        let mut layer: Box<dyn Layer<f64>> = if module.ends_with("AdaptiveAvgPool2d") {
            Box::new(AdaptiveAvgPool2d::new(pair(&kw["output_size"], [0, 0])))
        } else if module.ends_with("MaxPool2d") {
            Box::new(
                MaxPool2dConfig {
                    kernel_size: pair(&kw["kernel_size"], [0, 0]),
                    stride,
                    padding: pair(&kw["padding"], [0, 0]),
                    dilation: pair(&kw["dilation"], [1, 1]),
                    ceil_mode,
                }
                .build()
                .unwrap(),
            )
        } else {
            assert!(module.ends_with("AvgPool2d"), "{name}: module {module}");
            let divisor_override = (!kw["divisor_override"].is_null()).then(|| int(&kw["divisor_override"], 1));
            Box::new(
                AvgPool2dConfig {
                    kernel_size: pair(&kw["kernel_size"], [0, 0]),
                    stride,
                    padding: pair(&kw["padding"], [0, 0]),
                    ceil_mode,
                    count_include_pad: kw["count_include_pad"].as_bool().unwrap_or(true),
                    divisor_override,
                }
                .build()
                .unwrap(),
            )
        };
        run_golden(&c, &mut layer);
    }

    #[test]
    fn golden_pools() {
        for name in [
            "maxpool2d_basic",
            "maxpool2d_strided_padded",
            "avgpool2d_count_include_pad",
            "avgpool2d_exclude_pad",
            "adaptive_avgpool2d_rect_in",
            "adaptive_avgpool2d_square_in",
        ] {
            golden_case(&format!("layers/{name}"));
        }
    }
}
