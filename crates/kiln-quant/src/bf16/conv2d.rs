//! `Bf16Conv2d`: a 2-d convolution as bfloat16 im2col + the bfloat16 GEMM.

use std::cell::RefCell;
use std::fmt;

use half::bf16;

use kiln_autograd::Var;
use kiln_nn::{Conv2d, Forward, Module, TensorKind};
use kiln_tensor::kernels::bf16_gemm::gemm_bf16_slices;
use kiln_tensor::{Bf16Tensor, Tensor};

use super::{round, widen, BF16_BYTES};
use crate::codes::per_image;
use crate::conv::ConvGeometry;

/// A [`Conv2d`] in bfloat16 (`conv.to(torch.bfloat16)`): weight, bias, input and output stored
/// as bfloat16; each image (and group) is unrolled by a bfloat16 im2col and multiplied by the
/// weight with kiln's bfloat16 GEMM (`f32` sums), the bias added in `f32` and each output
/// rounded once. Every configuration of [`Conv2d`] is supported: stride, padding (explicit or
/// `'same'`), dilation, groups, with or without bias. Inference only.
///
/// # Shapes
/// - Input: `[N, in_channels, H, W]` or unbatched `[in_channels, H, W]`
/// - Output: `[N, out_channels, out_h, out_w]` (unbatched without `N`), as [`Conv2d`]
///
/// # Parameters
/// - `weight`: `[out_channels, in_channels / groups, kh, kw]`, rounded to bfloat16
/// - `bias`: `[out_channels]` (when the float layer has one), rounded likewise
///
/// ```
/// use kiln_nn::{Conv2d, Conv2dConfig, Forward, Padding};
/// use kiln_quant::Bf16Conv2d;
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let conv: Conv2d = Conv2dConfig { padding: Padding::Explicit([1, 1]), groups: 2, ..Conv2dConfig::new(4, 8, 3) }.build().unwrap();
/// let h = Bf16Conv2d::from_conv2d(&conv);
/// assert_eq!(h.param_bytes(), (8 * 2 * 3 * 3 + 8) * 2);
/// let x = Tensor::uniform(&[2, 4, 6, 6], 0.0, 1.0, &mut Rng::new(0));
/// let want = conv.forward(&Var::constant(x.clone())).value();
/// let got = h.forward_bf16(&x.to_bf16()).to_f32();
/// assert_eq!(got.shape(), &[2, 8, 6, 6]);
/// assert!(want.sub(&got).abs().max_all() < 0.01 * want.abs().max_all());
/// ```
#[derive(Clone, Debug)]
pub struct Bf16Conv2d {
    geometry: ConvGeometry,
    groups: usize,
    weight: Bf16Tensor,
    bias: Option<Bf16Tensor>,
}

thread_local! {
    /// Each thread's im2col and `f32` accumulator buffers, reused from image to image.
    static BUFFERS: RefCell<(Vec<bf16>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Bf16Conv2d {
    /// Rounds a float convolution's weight and bias to bfloat16, keeping its configuration.
    #[must_use]
    pub fn from_conv2d(layer: &Conv2d) -> Self {
        let bias = layer.bias.as_ref().map(Var::value);
        Self::from_weight(ConvGeometry::of(&layer.config), layer.config.groups, &layer.weight.value(), bias.as_ref())
    }

    /// Rounds an `[out_channels, in_channels / groups, kh, kw]` weight (and an optional
    /// `[out_channels]` bias) for `geometry` and `groups`.
    ///
    /// **Panics** if `groups` is zero or does not divide both channel counts, or the weight's or
    /// bias's shape does not match.
    #[must_use]
    pub fn from_weight(
        geometry: ConvGeometry,
        groups: usize,
        weight: &Tensor<f32>,
        bias: Option<&Tensor<f32>>,
    ) -> Self {
        let g = &geometry;
        assert!(
            groups > 0 && g.in_channels.is_multiple_of(groups) && g.out_channels.is_multiple_of(groups),
            "Bf16Conv2d: groups = {groups} must divide in_channels = {} and out_channels = {}",
            g.in_channels,
            g.out_channels
        );
        let want = [g.out_channels, g.in_channels / groups, g.kernel_size[0], g.kernel_size[1]];
        assert_eq!(weight.shape(), &want, "Bf16Conv2d: weight shape does not match {geometry:?}, groups = {groups}");
        if let Some(b) = bias {
            assert!(b.shape() == [g.out_channels], "Bf16Conv2d: bias {:?} for {} outputs", b.shape(), g.out_channels);
        }
        Bf16Conv2d { geometry, groups, weight: weight.to_bf16(), bias: bias.map(Tensor::to_bf16) }
    }

    /// The geometry (channels, kernel, stride, padding, dilation).
    #[must_use]
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    /// The number of groups.
    #[must_use]
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The weight, `[out_channels, in_channels / groups, kh, kw]`.
    #[must_use]
    pub fn weight(&self) -> &Bf16Tensor {
        &self.weight
    }

    /// The bias, if any.
    #[must_use]
    pub fn bias(&self) -> Option<&Bf16Tensor> {
        self.bias.as_ref()
    }

    /// Bytes of the weight and bias (2 per value).
    #[must_use]
    pub fn param_bytes(&self) -> usize {
        BF16_BYTES * (self.weight.numel() + self.bias.as_ref().map_or(0, Bf16Tensor::numel))
    }

    /// Applies the convolution to bfloat16 activations.
    ///
    /// **Panics** if `x` is not `[N, in_channels, H, W]` / `[in_channels, H, W]` or is smaller
    /// than the dilated kernel after padding.
    #[must_use]
    pub fn forward_bf16(&self, x: &Bf16Tensor) -> Bf16Tensor {
        let g = &self.geometry;
        let [n, c, h, w] = match *x.shape() {
            [n, c, h, w] => [n, c, h, w],
            [c, h, w] => [1, c, h, w],
            _ => panic!("Bf16Conv2d: input must be [N, C, H, W] or [C, H, W], got {:?}", x.shape()),
        };
        assert_eq!(c, g.in_channels, "Bf16Conv2d: input {:?} has {c} channels, expected {}", x.shape(), g.in_channels);
        let [oh, ow] = g.out_size(h, w).unwrap_or_else(|| {
            panic!("Bf16Conv2d: input {:?} is smaller than the kernel {:?} after padding", x.shape(), g.kernel_size)
        });
        let (o, p) = (g.out_channels, oh * ow);
        let (cg, og) = (c / self.groups, o / self.groups);
        let k = cg * g.kernel_size[0] * g.kernel_size[1];
        let bias = self.bias.as_ref().map(|b| b.as_slice().iter().map(|&v| widen(v)).collect::<Vec<f32>>());
        let mut y = vec![bf16::ZERO; n * o * p];
        per_image(n, x.as_slice(), &mut y, |img, dst| {
            BUFFERS.with(|buffers| {
                let (col, acc) = &mut *buffers.borrow_mut();
                col.resize(k * p, bf16::ZERO);
                acc.resize(og * p, 0.0);
                for grp in 0..self.groups {
                    im2col(&img[grp * cg * h * w..(grp + 1) * cg * h * w], cg, [h, w], g, [oh, ow], col);
                    let wg = &self.weight.as_slice()[grp * og * k..(grp + 1) * og * k];
                    gemm_bf16_slices(og, k, p, 1.0, wg, false, col.as_slice(), false, 0.0, acc);
                    for (oc, (out, sums)) in
                        dst[grp * og * p..(grp + 1) * og * p].chunks_exact_mut(p).zip(acc.chunks_exact(p)).enumerate()
                    {
                        let b = bias.as_ref().map_or(0.0, |b| b[grp * og + oc]);
                        out.iter_mut().zip(sums).for_each(|(o, &s)| *o = round(s + b));
                    }
                }
            })
        });
        let shape: &[usize] = if x.shape().len() == 3 { &[o, oh, ow] } else { &[n, o, oh, ow] };
        Bf16Tensor::from_vec(y, shape)
    }

    /// [`forward_bf16`](Self::forward_bf16) on an `f32` tensor: the input is rounded to
    /// bfloat16, the bfloat16 output widened back (exactly).
    ///
    /// **Panics** as [`forward_bf16`](Self::forward_bf16).
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> Tensor<f32> {
        self.forward_bf16(&x.to_bf16()).to_f32()
    }
}

/// Unrolls one group's channels `x` (`[c, h, w]`) into `col` (`[c · kh · kw, oh · ow]`): row
/// `(ci, i, j)` holds the value each output pixel reads through that tap, or zero where the tap
/// falls in the padding (the weight's `[c, kh, kw]` order, so the product is `W · col`).
fn im2col(x: &[bf16], c: usize, [h, w]: [usize; 2], g: &ConvGeometry, [oh, ow]: [usize; 2], col: &mut [bf16]) {
    let [kh, kw] = g.kernel_size;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.padding_before;
    let p = oh * ow;
    for ci in 0..c {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut col[((ci * kh + i) * kw + j) * p..((ci * kh + i) * kw + j + 1) * p];
                for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                    let iy = (oy * sh + i * dh) as isize - ph as isize;
                    if iy < 0 || iy >= h as isize {
                        dst.fill(bf16::ZERO);
                        continue;
                    }
                    let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * sw + j * dw) as isize - pw as isize;
                        *d = if ix < 0 || ix >= w as isize { bf16::ZERO } else { line[ix as usize] };
                    }
                }
            }
        }
    }
}

impl Forward<f32> for Bf16Conv2d {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v)))
    }
}

/// No `f32` parameters or buffers: the bfloat16 weights are not variables.
impl Module<f32> for Bf16Conv2d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for Bf16Conv2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        write!(
            f,
            "Bf16Conv2d({}, {}, kernel_size=({}, {}), stride=({}, {}), padding=({}, {}), dilation=({}, {}), groups={}, bias={}) [{} bytes]",
            g.in_channels,
            g.out_channels,
            g.kernel_size[0],
            g.kernel_size[1],
            g.stride[0],
            g.stride[1],
            g.padding_before[0],
            g.padding_before[1],
            g.dilation[0],
            g.dilation[1],
            self.groups,
            self.bias.is_some(),
            self.param_bytes()
        )
    }
}
