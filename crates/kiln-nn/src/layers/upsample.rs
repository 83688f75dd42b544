//! `Upsample` and [`interpolate`]: resizing the spatial dims by nearest-neighbour or
//! (bi)linear interpolation, like `torch.nn.Upsample` / `torch.nn.functional.interpolate`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::{Float, Tensor};
use serde_json::{json, Map, Value};

use crate::error::NnError;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// How [`interpolate`] computes an output value from the input's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterpolateMode {
    /// The nearest input position below (`'nearest'`: index `floor(out · scale)`), 3-d or 4-d input.
    Nearest,
    /// Linear interpolation along the one spatial axis of a 3-d input (`'linear'`).
    Linear,
    /// Linear interpolation along height and width of a 4-d input (`'bilinear'`).
    Bilinear,
}

impl InterpolateMode {
    /// PyTorch's name of the mode.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            InterpolateMode::Nearest => "nearest",
            InterpolateMode::Linear => "linear",
            InterpolateMode::Bilinear => "bilinear",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [InterpolateMode::Nearest, InterpolateMode::Linear, InterpolateMode::Bilinear]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// The input rank the mode takes (`None`: 3 or 4).
    fn rank(self) -> Option<usize> {
        match self {
            InterpolateMode::Nearest => None,
            InterpolateMode::Linear => Some(3),
            InterpolateMode::Bilinear => Some(4),
        }
    }
}

/// The output size of [`interpolate`]: given directly, or as factors of the input's size
/// (`out = floor(in · factor)`). One value applies to every spatial axis.
#[derive(Clone, Debug, PartialEq)]
pub enum Resize {
    /// The output's spatial size (`size=`).
    Size(Vec<usize>),
    /// Factors of the input's spatial size (`scale_factor=`).
    ScaleFactor(Vec<f64>),
}

/// The options of [`interpolate`] besides the size, with PyTorch's defaults (`'nearest'`, no
/// `align_corners`, the given scale factor used for the coordinates).
#[derive(Clone, Debug, PartialEq)]
pub struct InterpolateOptions {
    /// The interpolation.
    pub mode: InterpolateMode,
    /// For the linear modes: `Some(true)` maps the corner pixels' centres onto each other,
    /// `src = dst · (in - 1) / (out - 1)`; `None` or `Some(false)` maps the corners
    /// themselves, `src = (dst + ½) · scale - ½`. Must be `None` for `Nearest`.
    pub align_corners: Option<bool>,
    /// With a scale factor: compute the coordinates from the sizes (`in / out`) instead of
    /// from `1 / scale_factor`.
    pub recompute_scale_factor: bool,
}

impl Default for InterpolateOptions {
    fn default() -> Self {
        InterpolateOptions { mode: InterpolateMode::Nearest, align_corners: None, recompute_scale_factor: false }
    }
}

impl InterpolateOptions {
    /// Refuses options PyTorch refuses (`align_corners` with `'nearest'`).
    fn check(&self) -> Result<(), String> {
        if self.mode == InterpolateMode::Nearest && self.align_corners.is_some() {
            return Err("align_corners option can only be set with the interpolating modes: linear | bilinear".into());
        }
        Ok(())
    }
}

fn check_resize(resize: &Resize) -> Result<(), String> {
    match resize {
        Resize::Size(s) if s.is_empty() || s.contains(&0) => Err(format!("size must be > 0, got {s:?}")),
        Resize::ScaleFactor(f) if f.is_empty() || f.iter().any(|v| !(v.is_finite() && *v > 0.0)) => {
            Err(format!("scale_factor must be finite and > 0, got {f:?}"))
        }
        _ => Ok(()),
    }
}

/// The input positions and weights one output axis reads: `out[i] = Σ w[k][i] in[idx[k][i]]`.
fn axis_taps(
    mode: InterpolateMode,
    align_corners: bool,
    inp: usize,
    out: usize,
    factor: Option<f64>,
) -> Vec<(Vec<usize>, Vec<f64>)> {
    match mode {
        InterpolateMode::Nearest => {
            // PyTorch's nearest_idx: identity, halving, or floor(dst * scale) in float32
            let idx = if out == inp {
                (0..out).collect()
            } else if out == 2 * inp {
                (0..out).map(|i| i >> 1).collect()
            } else {
                let scale = factor.map_or(inp as f32 / out as f32, |f| (1.0 / f) as f32);
                (0..out).map(|i| ((i as f32 * scale).floor() as usize).min(inp - 1)).collect()
            };
            vec![(idx, vec![1.0; out])]
        }
        InterpolateMode::Linear | InterpolateMode::Bilinear => {
            // PyTorch's area_pixel_compute_scale / area_pixel_compute_source_index
            let scale = if align_corners {
                if out > 1 {
                    (inp as f64 - 1.0) / (out as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                factor.map_or(inp as f64 / out as f64, |f| 1.0 / f)
            };
            let (mut i0, mut i1, mut w0, mut w1) = (vec![], vec![], vec![], vec![]);
            for dst in 0..out {
                let src = if align_corners { scale * dst as f64 } else { (scale * (dst as f64 + 0.5) - 0.5).max(0.0) };
                let lo = (src.floor() as usize).min(inp - 1);
                let lambda = (src - lo as f64).clamp(0.0, 1.0);
                i0.push(lo);
                i1.push(if lo < inp - 1 { lo + 1 } else { lo });
                w0.push(1.0 - lambda);
                w1.push(lambda);
            }
            vec![(i0, w0), (i1, w1)]
        }
    }
}

/// Resizes the spatial dims of `x` (`[N, C, L]` or `[N, C, H, W]`), like
/// `torch.nn.functional.interpolate(x, size | scale_factor, mode, align_corners)`.
///
/// Nearest: `out[i] = in[min(floor(i · s), in - 1)]` with `s = 1 / scale_factor` (or
/// `in / out`). Linear and bilinear: each axis in turn, `out[i] = (1 - λ) in[i₀] + λ in[i₀ + 1]`
/// at the source coordinate `src = (i + ½) s - ½` (clamped at 0), or `src = i (in - 1) / (out - 1)`
/// with `align_corners`, `i₀ = floor(src)`, `λ = src - i₀`. Built from `index_select`, so the
/// backward adds each output gradient back onto the input positions it read.
///
/// # Shapes
/// - Input: `[N, C, L]` (nearest, linear) or `[N, C, H, W]` (nearest, bilinear)
/// - Output: `[N, C, L_out]` / `[N, C, H_out, W_out]`, `size`, or `floor(in · scale_factor)`
///
/// **Panics** when the input's rank does not fit the mode, when `size` / `scale_factor` has
/// neither one value nor one per spatial axis or holds a zero, or when `align_corners` is given
/// with nearest.
///
/// ```
/// use kiln_nn::functional::{interpolate, InterpolateMode, InterpolateOptions, Resize};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let x = Var::constant(Tensor::<f64>::from_vec(vec![0.0, 1.0, 2.0, 3.0], &[1, 1, 2, 2]));
/// let opts = InterpolateOptions { mode: InterpolateMode::Bilinear, align_corners: Some(true), ..Default::default() };
/// let y = interpolate(&x, &Resize::Size(vec![3, 3]), &opts);
/// assert_eq!(y.value().to_vec(), vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
/// let near = interpolate(&x, &Resize::ScaleFactor(vec![2.0]), &InterpolateOptions::default());
/// assert_eq!(near.shape().as_slice(), &[1, 1, 4, 4]);
/// ```
#[must_use]
pub fn interpolate<E: Float>(x: &Var<E>, resize: &Resize, options: &InterpolateOptions) -> Var<E> {
    let shape = x.shape();
    if let Err(e) = options.check().and_then(|()| check_resize(resize)) {
        panic!("interpolate: {e}");
    }
    let rank_ok = match options.mode.rank() {
        Some(r) => shape.len() == r,
        None => matches!(shape.len(), 3 | 4),
    };
    assert!(
        rank_ok,
        "interpolate: mode '{}' expects a {} input, got {:?}",
        options.mode.name(),
        options.mode.rank().map_or("3-d or 4-d".to_string(), |r| format!("{r}-d")),
        shape.as_slice()
    );
    let spatial = shape.len() - 2;
    let per_axis = |n: usize, what: &str| {
        assert!(
            n == 1 || n == spatial,
            "interpolate: {what} needs 1 or {spatial} values for input {:?}, got {n}",
            shape.as_slice()
        );
    };
    let (out, factors): (Vec<usize>, Vec<Option<f64>>) = match resize {
        Resize::Size(s) => {
            per_axis(s.len(), "size");
            ((0..spatial).map(|k| s[k.min(s.len() - 1)]).collect(), vec![None; spatial])
        }
        Resize::ScaleFactor(f) => {
            per_axis(f.len(), "scale_factor");
            let f: Vec<f64> = (0..spatial).map(|k| f[k.min(f.len() - 1)]).collect();
            let out: Vec<usize> = (0..spatial).map(|k| (shape[k + 2] as f64 * f[k]).floor() as usize).collect();
            assert!(
                !out.contains(&0),
                "interpolate: scale_factor {f:?} gives an empty output for input {:?}",
                shape.as_slice()
            );
            let given = !options.recompute_scale_factor;
            (out, f.into_iter().map(|v| given.then_some(v)).collect())
        }
    };
    let align = options.align_corners.unwrap_or(false);
    let mut y = x.clone();
    for k in 0..spatial {
        let axis = k + 2;
        let (inp, o) = (shape[axis], out[k]);
        let taps = axis_taps(options.mode, align, inp, o, factors[k]);
        if options.mode == InterpolateMode::Nearest && o == inp {
            continue;
        }
        let mut wshape = vec![1; shape.len()];
        wshape[axis] = o;
        let mut acc: Option<Var<E>> = None;
        for (idx, w) in taps {
            let picked = y.index_select(axis as isize, &idx);
            let term = if options.mode == InterpolateMode::Nearest {
                picked
            } else {
                let w = Tensor::from_vec(w.into_iter().map(E::from_f64).collect(), &wshape);
                picked.mul(&Var::constant(w))
            };
            acc = Some(match acc {
                Some(a) => a.add(&term),
                None => term,
            });
        }
        y = acc.expect("at least one tap");
    }
    y
}

/// Configuration of an [`Upsample`] layer: PyTorch's `nn.Upsample` arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct UpsampleConfig {
    /// The output size or the scale factor.
    pub resize: Resize,
    /// The mode, `align_corners` and `recompute_scale_factor`.
    pub options: InterpolateOptions,
}

impl UpsampleConfig {
    /// Nearest-neighbour resizing by `resize`.
    pub fn new(resize: Resize) -> Self {
        UpsampleConfig { resize, options: InterpolateOptions::default() }
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`NnError::Config`] when a size is zero, a scale factor is not finite and positive, or
    /// `align_corners` is given with `'nearest'`.
    pub fn build(&self) -> Result<Upsample, NnError> {
        check_resize(&self.resize)
            .and_then(|()| self.options.check())
            .map_err(|e| NnError::Config(format!("Upsample: {e}")))?;
        Ok(Upsample { config: self.clone() })
    }
}

/// Resizes the spatial dims of its input, like `torch.nn.Upsample`: [`interpolate`] with the
/// layer's size or scale factor, mode and `align_corners`.
///
/// # Shapes
/// - Input: `[N, C, L]` (nearest, linear) or `[N, C, H, W]` (nearest, bilinear)
/// - Output: `[N, C, L_out]` / `[N, C, H_out, W_out]`
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` as [`interpolate`] does.
///
/// ```
/// use kiln_nn::functional::{InterpolateMode, Resize};
/// use kiln_nn::{Forward, Upsample, UpsampleConfig};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let mut cfg = UpsampleConfig::new(Resize::ScaleFactor(vec![2.0]));
/// cfg.options.mode = InterpolateMode::Bilinear;
/// let up = cfg.build().unwrap();
/// let x = Var::constant(Tensor::<f32>::from_vec(vec![0.0, 4.0], &[1, 1, 1, 2]));
/// assert_eq!(up.forward(&x).value().to_vec(), vec![0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]);
/// assert_eq!(up.to_string(), "Upsample(scale_factor=2.0, mode='bilinear')");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Upsample {
    /// The configuration it was built with.
    pub config: UpsampleConfig,
}

impl Upsample {
    /// Nearest-neighbour upsampling by `scale_factor` on every spatial axis
    /// (`nn.Upsample(scale_factor=2)`).
    ///
    /// **Panics** if `scale_factor` is not finite and positive.
    #[must_use]
    pub fn new(scale_factor: f64) -> Self {
        UpsampleConfig::new(Resize::ScaleFactor(vec![scale_factor])).build().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<E: Float> Forward<E> for Upsample {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        interpolate(x, &self.config.resize, &self.config.options)
    }
}

impl<E: Float> Module<E> for Upsample {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}
}

/// One value as PyTorch prints it, several as a tuple.
fn tuple<T: fmt::Debug>(v: &[T]) -> String {
    match v {
        [one] => format!("{one:?}"),
        _ => format!("({})", v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", ")),
    }
}

impl fmt::Display for Upsample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        match &c.resize {
            Resize::Size(s) => write!(f, "Upsample(size={}", tuple(s))?,
            Resize::ScaleFactor(s) => write!(f, "Upsample(scale_factor={}", tuple(s))?,
        }
        write!(f, ", mode='{}'", c.options.mode.name())?;
        if let Some(a) = c.options.align_corners {
            write!(f, ", align_corners={a}")?;
        }
        write!(f, ")")
    }
}

impl LayerSpec for Upsample {
    const TYPE_NAME: &'static str = "Upsample";
    const EXAMPLE: &'static str = r#"{"size": [4, 6], "mode": "bilinear", "align_corners": true}"#;

    fn config(&self) -> Map<String, Value> {
        let c = &self.config;
        let (size, scale) = match &c.resize {
            Resize::Size(s) => (json!(s), Value::Null),
            Resize::ScaleFactor(f) => (Value::Null, json!(f)),
        };
        object(json!({"size": size, "scale_factor": scale, "mode": c.options.mode.name(),
            "align_corners": c.options.align_corners,
            "recompute_scale_factor": c.options.recompute_scale_factor}))
    }

    /// `size` (int or list) or `scale_factor` (number or list), exactly one; `mode`
    /// (`"nearest"`, `"linear"`, `"bilinear"`); `align_corners` and `recompute_scale_factor`
    /// (bool or null).
    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        let size = match a.take_raw("size") {
            None | Some(Value::Null) => None,
            Some(Value::Array(v)) => Some(v.iter().map(|d| a.as_usize("size", d)).collect::<Result<Vec<_>, _>>()?),
            Some(v) => Some(vec![a.as_usize("size", &v)?]),
        };
        let scale = match a.take_raw("scale_factor") {
            None | Some(Value::Null) => None,
            Some(Value::Array(v)) => {
                Some(v.iter().map(|d| a.as_f64("scale_factor", d)).collect::<Result<Vec<_>, _>>()?)
            }
            Some(v) => Some(vec![a.as_f64("scale_factor", &v)?]),
        };
        let resize = match (size, scale) {
            (Some(s), None) => Resize::Size(s),
            (None, Some(f)) => Resize::ScaleFactor(f),
            _ => return Err(a.err("exactly one of size and scale_factor must be given")),
        };
        let mode = match a.take("mode") {
            None => InterpolateMode::Nearest,
            Some(Value::String(s)) => InterpolateMode::from_name(&s)
                .ok_or_else(|| a.err(&format!("mode must be \"nearest\", \"linear\" or \"bilinear\", got \"{s}\"")))?,
            Some(v) => return Err(a.err(&format!("mode must be a string, got {v}"))),
        };
        let mut opt_bool = |name: &str| match a.take_raw(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(a.err(&format!("{name} must be true, false or null, got {v}"))),
        };
        let align_corners = opt_bool("align_corners")?;
        let recompute_scale_factor = opt_bool("recompute_scale_factor")?.unwrap_or(false);
        UpsampleConfig { resize, options: InterpolateOptions { mode, align_corners, recompute_scale_factor } }.build()
    }
}

crate::register_layer!(Upsample);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::layers2_golden::run_file;
    use crate::layers::testing::descend;
    use crate::Conv2dConfig;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;

    #[test]
    fn matches_pytorch() {
        assert!(run_file("upsample.json") >= 1);
    }

    #[test]
    fn output_shapes() {
        let x = Var::constant(Tensor::<f32>::zeros(&[2, 3, 5, 4]));
        let y = interpolate(&x, &Resize::ScaleFactor(vec![1.5, 0.5]), &InterpolateOptions::default());
        assert_eq!(y.shape().as_slice(), &[2, 3, 7, 2]);
        let opts = InterpolateOptions { mode: InterpolateMode::Linear, ..Default::default() };
        let y = interpolate(&Var::constant(Tensor::<f32>::zeros(&[1, 2, 3])), &Resize::Size(vec![8]), &opts);
        assert_eq!(y.shape().as_slice(), &[1, 2, 8]);
    }

    #[test]
    fn config_errors() {
        let e = |d: Value| crate::registry::build::<f32>(&d).err().unwrap().to_string();
        assert_eq!(
            e(json!({"layer": "Upsample", "args": {"size": 4, "scale_factor": 2.0}})),
            "registry::build (Upsample): exactly one of size and scale_factor must be given"
        );
        assert_eq!(
            e(json!({"layer": "Upsample", "args": {"size": 4, "align_corners": true}})),
            "Upsample: align_corners option can only be set with the interpolating modes: linear | bilinear"
        );
        assert_eq!(
            e(json!({"layer": "Upsample", "args": {"size": 4, "mode": "bicubic"}})),
            "registry::build (Upsample): mode must be \"nearest\", \"linear\" or \"bilinear\", got \"bicubic\""
        );
    }

    #[test]
    #[should_panic(expected = "interpolate: mode 'bilinear' expects a 4-d input, got [1, 2, 3]")]
    fn bilinear_needs_4d() {
        let opts = InterpolateOptions { mode: InterpolateMode::Bilinear, ..Default::default() };
        let _ = interpolate(&Var::constant(Tensor::<f32>::zeros(&[1, 2, 3])), &Resize::Size(vec![4]), &opts);
    }

    #[test]
    fn tiny_overfit() {
        // a conv after a bilinear upsampling learns to reproduce an upsampled target
        crate::init::manual_seed(3);
        let conv: crate::Conv2d<f64> =
            Conv2dConfig { padding: 1.into(), ..Conv2dConfig::new(1, 1, 3) }.build().unwrap();
        let truth: crate::Conv2d<f64> =
            Conv2dConfig { padding: 1.into(), ..Conv2dConfig::new(1, 1, 3) }.build().unwrap();
        let mut cfg = UpsampleConfig::new(Resize::ScaleFactor(vec![2.0]));
        cfg.options.mode = InterpolateMode::Bilinear;
        let up = cfg.build().unwrap();
        let x = Var::constant(Tensor::uniform(&[3, 1, 3, 3], -1.0, 1.0, &mut Rng::new(8)));
        let target = truth.forward(&up.forward(&x)).detach();
        let loss = descend(&conv.parameters(), 0.3, 500, || {
            conv.forward(&up.forward(&x)).sub(&target).square().mean(&[], false)
        });
        assert!(loss < 1e-4, "upsample {loss}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        #[test]
        fn gradcheck_random_shapes(h in 1usize..4, w in 1usize..4, oh in 1usize..6, ow in 1usize..6, mode in 0usize..3,
                                   align: bool, by_factor: bool, seed in 0u64..1000) {
            let mode = [InterpolateMode::Nearest, InterpolateMode::Linear, InterpolateMode::Bilinear][mode];
            let shape: Vec<usize> = if mode == InterpolateMode::Linear { vec![2, 1, w] } else { vec![1, 2, h, w] };
            let x = Tensor::uniform(&shape, -1.0, 1.0, &mut Rng::new(seed));
            let align_corners = (mode != InterpolateMode::Nearest).then_some(align);
            let opts = InterpolateOptions { mode, align_corners, ..Default::default() };
            let resize = if by_factor {
                Resize::ScaleFactor(vec![oh as f64 / 2.0 + 0.5])
            } else if mode == InterpolateMode::Linear {
                Resize::Size(vec![ow])
            } else {
                Resize::Size(vec![oh, ow])
            };
            let r = gradcheck(|v| interpolate(&v[0], &resize, &opts).tanh(), &[x], 1e-6, 1e-7, 1e-5);
            proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}
