//! `QuantConv2d`: a 2-d convolution as int8 im2col + the int8 GEMM.

use std::fmt;

use kiln_autograd::Var;
use kiln_nn::{Conv2d, Conv2dConfig, Forward, Module, Padding, TensorKind};
use kiln_tensor::Tensor;

use crate::codes::{per_image, Act, Codes};
use crate::error::QuantError;
use crate::gemm::{gemm_requant, gemm_requant_codes, PackedB};
use crate::linear::{as_rows, zero_byte, ActQuant, QuantWeights};
use crate::observer::{quantize_weight_per_channel, QParams};

/// The geometry of a 2-d convolution with explicit (possibly asymmetric) padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zeros before the first row and column, `[top, left]`.
    pub padding_before: [usize; 2],
    /// Zeros after the last row and column, `[bottom, right]` (differs from `padding_before`
    /// only for `padding='same'` with an even dilated kernel).
    pub padding_after: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
}

impl ConvGeometry {
    /// The geometry of a kiln-nn convolution's configuration (`padding='same'` split as
    /// PyTorch splits it: the odd zero after). `groups` is not part of it.
    #[must_use]
    pub fn of(c: &Conv2dConfig) -> Self {
        let (before, after) = match c.padding {
            Padding::Valid => ([0, 0], [0, 0]),
            Padding::Explicit(p) => (p, p),
            Padding::Same => {
                let total = |a: usize| c.dilation[a] * (c.kernel_size[a] - 1);
                ([total(0) / 2, total(1) / 2], [total(0) - total(0) / 2, total(1) - total(1) / 2])
            }
        };
        ConvGeometry {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel_size: c.kernel_size,
            stride: c.stride,
            padding_before: before,
            padding_after: after,
            dilation: c.dilation,
        }
    }

    /// `[out_h, out_w]` for an `[h, w]` input, `None` if the kernel does not fit.
    #[must_use]
    pub fn out_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let f = |a: usize, n: usize| {
            let padded = n + self.padding_before[a] + self.padding_after[a];
            let span = self.dilation[a] * (self.kernel_size[a] - 1) + 1;
            (padded >= span).then(|| (padded - span) / self.stride[a] + 1)
        };
        Some([f(0, h)?, f(1, w)?])
    }

    /// Elements of one im2col row: `in_channels · kh · kw`.
    #[must_use]
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_size[0] * self.kernel_size[1]
    }
}

/// Unrolls one channels-last `[H, W, C]` image of quantised bytes into `[out_h · out_w,
/// kh · kw · C]` rows (one row per output pixel, taps in `(i, j, c)` order: each tap is a
/// whole pixel, `C` contiguous bytes), writing `pad` where a tap falls in the padding (the
/// code of 0.0, so padding stays zero after dequantisation).
///
/// **Panics** if `x` or `col` do not have the sizes the geometry gives.
pub fn im2col_nhwc(x: &[u8], h: usize, w: usize, g: &ConvGeometry, pad: u8, out_hw: [usize; 2], col: &mut [u8]) {
    let [kh, kw] = g.kernel_size;
    let c = g.in_channels;
    let k = g.patch_len();
    let [oh, ow] = out_hw;
    assert_eq!(x.len(), h * w * c, "im2col_nhwc: image of {} bytes, expected [{h}, {w}, {c}]", x.len());
    assert_eq!(col.len(), oh * ow * k, "im2col_nhwc: buffer of {} bytes, expected [{}, {k}]", col.len(), oh * ow);
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [ph, pw] = g.padding_before;
    for oy in 0..oh {
        let y0 = (oy * sh) as isize - ph as isize;
        for ox in 0..ow {
            let x0 = (ox * sw) as isize - pw as isize;
            let row = &mut col[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
            for i in 0..kh {
                let iy = y0 + (i * dh) as isize;
                let taps = &mut row[i * kw * c..(i + 1) * kw * c];
                if iy < 0 || iy >= h as isize {
                    taps.fill(pad);
                    continue;
                }
                let line = &x[iy as usize * w * c..(iy as usize + 1) * w * c];
                if dw == 1 && x0 >= 0 && x0 as usize + kw <= w {
                    // the whole kernel row inside the image: one contiguous run of kw pixels
                    taps.copy_from_slice(&line[x0 as usize * c..(x0 as usize + kw) * c]);
                    continue;
                }
                for (j, tap) in taps.chunks_exact_mut(c).enumerate() {
                    let ix = x0 + (j * dw) as isize;
                    if ix < 0 || ix >= w as isize {
                        tap.fill(pad);
                    } else {
                        tap.copy_from_slice(&line[ix as usize * c..(ix as usize + 1) * c]);
                    }
                }
            }
        }
    }
}

/// `[O, C, kh, kw]` codes reordered to `[O, kh, kw, C]`, the tap order of [`im2col_nhwc`].
fn channels_last(codes: &[i8], g: &ConvGeometry) -> Vec<i8> {
    let (c, taps) = (g.in_channels, g.kernel_size[0] * g.kernel_size[1]);
    let mut out = vec![0i8; codes.len()];
    for (src, dst) in codes.chunks_exact(c * taps).zip(out.chunks_exact_mut(c * taps)) {
        for ch in 0..c {
            for t in 0..taps {
                dst[t * c + ch] = src[ch * taps + t];
            }
        }
    }
    out
}

/// A quantised [`Conv2d`]: the input quantised per tensor, unrolled by a byte im2col, and
/// multiplied by the int8 weights (per-output-channel symmetric) with the exact int8 GEMM;
/// requantisation to `f32` and the bias are fused into the GEMM's output loop, which writes
/// NCHW directly. Stride, padding (including `'same'`) and dilation are supported;
/// `groups` must be 1 (conversion returns [`QuantError::Unsupported`] otherwise).
/// Inference only.
///
/// # Shapes
/// - Input: `[N, in_channels, H, W]` or unbatched `[in_channels, H, W]`
/// - Output: `[N, out_channels, out_h, out_w]` (unbatched without `N`), as [`Conv2d`]
///
/// ```
/// use kiln_nn::{Conv2d, Conv2dConfig, Forward, Padding};
/// use kiln_quant::{ActQuant, QuantConv2d, QuantDtype};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let conv: Conv2d = Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(3, 8, 3) }.build().unwrap();
/// let q = QuantConv2d::from_conv2d(&conv, ActQuant::Dynamic(QuantDtype::UInt8)).unwrap();
/// let x = Var::constant(Tensor::uniform(&[2, 3, 10, 10], 0.0, 1.0, &mut Rng::new(0)));
/// let (want, got) = (conv.forward(&x).value(), q.forward(&x).value());
/// assert_eq!(got.shape(), &[2, 8, 10, 10]);
/// assert!(want.sub(&got).abs().max_all() < 0.02 * want.abs().max_all());
/// ```
#[derive(Clone, Debug)]
pub struct QuantConv2d {
    geometry: ConvGeometry,
    /// `[O, C, kh, kw]` codes, as PyTorch lays out the weight (what files store).
    codes: Vec<i8>,
    /// The same codes in `[O, kh, kw, C]` order, packed for the GEMM over channels-last patches.
    pub(crate) weights: QuantWeights,
    /// How the input is quantised.
    pub act: ActQuant,
}

impl QuantConv2d {
    /// Quantises a float convolution's weights.
    ///
    /// # Errors
    /// [`QuantError::Unsupported`] (with index 0) when the layer has `groups > 1`.
    pub fn from_conv2d(layer: &Conv2d, act: ActQuant) -> Result<Self, QuantError> {
        let c = &layer.config;
        if c.groups != 1 {
            return Err(QuantError::Unsupported {
                index: 0,
                layer: layer.to_string(),
                reason: format!("QuantConv2d supports groups = 1 only, got groups = {}", c.groups),
            });
        }
        let geometry = ConvGeometry::of(c);
        let bias = layer.bias.as_ref().map(|b| b.value().to_vec());
        Ok(Self::from_weight(geometry, &layer.weight.value(), bias, act))
    }

    /// Quantises an `[out_channels, in_channels, kh, kw]` weight for `geometry`.
    ///
    /// **Panics** if the weight's shape does not match the geometry.
    #[must_use]
    pub fn from_weight(geometry: ConvGeometry, weight: &Tensor<f32>, bias: Option<Vec<f32>>, act: ActQuant) -> Self {
        let g = &geometry;
        let want = [g.out_channels, g.in_channels, g.kernel_size[0], g.kernel_size[1]];
        assert_eq!(weight.shape(), &want, "QuantConv2d: weight shape does not match {geometry:?}");
        let w = weight.contiguous();
        let (codes, scales) =
            quantize_weight_per_channel(w.as_slice().expect("contiguous"), g.out_channels, g.patch_len());
        Self::from_parts(geometry, codes, scales, bias, act)
    }

    /// A layer from `[O, C, kh, kw]` int8 codes, per-channel scales and bias (as read from a file).
    pub(crate) fn from_parts(
        geometry: ConvGeometry,
        codes: Vec<i8>,
        scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: ActQuant,
    ) -> Self {
        let packed = PackedB::pack(&channels_last(&codes, &geometry), geometry.out_channels, geometry.patch_len());
        QuantConv2d { geometry, codes, weights: QuantWeights { packed, scales, bias }, act }
    }

    /// The geometry.
    #[must_use]
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    /// The int8 weight codes, `[out_channels, in_channels, kh, kw]` row-major.
    #[must_use]
    pub fn weight_codes(&self) -> &[i8] {
        &self.codes
    }

    /// The scale of each output channel's weights.
    #[must_use]
    pub fn weight_scales(&self) -> &[f32] {
        &self.weights.scales
    }

    /// The bias, if any.
    #[must_use]
    pub fn bias(&self) -> Option<&[f32]> {
        self.weights.bias.as_deref()
    }

    /// Applies the convolution to a tensor.
    ///
    /// **Panics** if `x` is not `[N, in_channels, H, W]` / `[in_channels, H, W]` or is smaller
    /// than the dilated kernel after padding.
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> Tensor<f32> {
        let unbatched = match x.shape() {
            [_, _, _, _] => false,
            [_, _, _] => true,
            _ => panic!("QuantConv2d: input must be [N, C, H, W] or [C, H, W], got {:?}", x.shape()),
        };
        let batched = if unbatched { x.unsqueeze(0) } else { x.clone() };
        let c = batched.shape()[1];
        let g = &self.geometry;
        assert_eq!(c, g.in_channels, "QuantConv2d: input {:?} has {c} channels, expected {}", x.shape(), g.in_channels);
        let q = match self.act {
            ActQuant::Static(q) => q,
            ActQuant::Dynamic(_) => self.act.params_for(batched.contiguous().as_slice().expect("contiguous")),
        };
        let y = match self.forward_codes(&Codes::from_nchw(&batched, q), None) {
            Act::F32(y) => y,
            Act::Codes(_) => unreachable!("no output parameters given"),
        };
        if unbatched {
            y.squeeze_dim(0)
        } else {
            y
        }
    }

    /// Applies the convolution to channels-last codes (`x.q` is the input's quantisation):
    /// `f32` NCHW values out, or with `out = Some((q, relu))` channels-last codes quantised
    /// with `q` (after a `ReLU` when `relu`).
    ///
    /// **Panics** if `x` does not hold `[N, in_channels, H, W]` channels-last, or is smaller
    /// than the dilated kernel after padding.
    pub(crate) fn forward_codes(&self, x: &Codes, out: Option<(QParams, bool)>) -> Act {
        let g = &self.geometry;
        assert!(x.nhwc, "QuantConv2d: codes must be channels-last");
        let [n, c, h, w] = x.dims4();
        assert_eq!(c, g.in_channels, "QuantConv2d: input {:?} has {c} channels, expected {}", x.shape, g.in_channels);
        let [oh, ow] = g.out_size(h, w).unwrap_or_else(|| {
            panic!("QuantConv2d: input {:?} is smaller than the kernel {:?} after padding", x.shape, g.kernel_size)
        });
        let (o, p, k) = (g.out_channels, oh * ow, g.patch_len());
        let (xq, q) = (&x.data, &x.q);
        let pad = zero_byte(q);
        // one product per image on each thread; a single image may split its product instead
        let may_split = n == 1;
        let req = self.weights.requant(q);
        let unroll = |img: &[u8], f: &mut dyn FnMut(&[u8])| {
            COL.with(|col| {
                let mut col = col.borrow_mut();
                col.resize(p * k, 0);
                im2col_nhwc(img, h, w, g, pad, [oh, ow], &mut col);
                f(&col);
            })
        };
        match out {
            None => {
                let mut y = vec![0f32; n * o * p];
                per_image(n, xq, &mut y, |img, dst| {
                    unroll(img, &mut |col| {
                        // [pixels, channels] written as [channels, pixels]
                        gemm_requant(p, as_rows(col, q.dtype), k, &self.weights.packed, &req, dst, 1, p, may_split)
                    })
                });
                Act::F32(Tensor::from_vec(y, &[n, o, oh, ow]))
            }
            Some((out_q, relu)) => {
                let mut y = vec![0u8; n * p * o];
                per_image(n, xq, &mut y, |img, dst| {
                    unroll(img, &mut |col| {
                        let rows = as_rows(col, q.dtype);
                        gemm_requant_codes(p, rows, k, &self.weights.packed, &req, &out_q, relu, dst, o, may_split)
                    })
                });
                Act::Codes(Codes { data: y, shape: vec![n, o, oh, ow], nhwc: true, q: out_q })
            }
        }
    }

    /// The input's quantisation parameters, when static.
    #[must_use]
    pub fn input_qparams(&self) -> Option<QParams> {
        match self.act {
            ActQuant::Static(q) => Some(q),
            ActQuant::Dynamic(_) => None,
        }
    }
}

thread_local! {
    /// Each thread's im2col buffer, reused from image to image and call to call.
    static COL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Forward<f32> for QuantConv2d {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v)))
    }
}

/// No parameters or buffers: the int8 weights are not `f32` variables.
impl Module<f32> for QuantConv2d {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for QuantConv2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        let pad = if g.padding_before == g.padding_after {
            format!("({}, {})", g.padding_before[0], g.padding_before[1])
        } else {
            format!("(before {:?}, after {:?})", g.padding_before, g.padding_after)
        };
        write!(
            f,
            "QuantConv2d({}, {}, kernel_size=({}, {}), stride=({}, {}), padding={pad}, dilation=({}, {}), bias={}, \
             weight=qint8 per-channel, {})",
            g.in_channels,
            g.out_channels,
            g.kernel_size[0],
            g.kernel_size[1],
            g.stride[0],
            g.stride[1],
            g.dilation[0],
            g.dilation[1],
            self.weights.bias.is_some(),
            self.act.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::{MinMaxObserver, Observer, QuantDtype};
    use kiln_nn::Conv2dConfig;
    use kiln_tensor::Rng;

    fn rel_err(want: &Tensor<f32>, got: &Tensor<f32>) -> f32 {
        let d = want.sub(got);
        (d.mul(&d).sum_all().item() / want.mul(want).sum_all().item()).sqrt()
    }

    #[test]
    fn close_to_the_float_conv_on_every_geometry() {
        let mut rng = Rng::new(8);
        let configs = [
            Conv2dConfig::new(3, 5, 3),
            Conv2dConfig { stride: [2, 1], padding: Padding::Explicit([1, 2]), ..Conv2dConfig::new(3, 5, 3) },
            Conv2dConfig { dilation: [2, 2], padding: Padding::Explicit([2, 2]), ..Conv2dConfig::new(3, 4, 3) },
            Conv2dConfig {
                kernel_size: [2, 4],
                dilation: [1, 2],
                padding: Padding::Same,
                ..Conv2dConfig::new(3, 6, 1)
            },
            Conv2dConfig { bias: false, stride: [3, 3], ..Conv2dConfig::new(3, 2, 1) },
        ];
        for cfg in configs {
            let conv: Conv2d = cfg.build().unwrap();
            let x: Tensor<f32> = Tensor::uniform(&[2, 3, 9, 8], -1.0, 1.0, &mut rng);
            let want = conv.forward(&Var::constant(x.clone())).value();
            let mut obs = MinMaxObserver::default();
            obs.observe(x.as_slice().unwrap());
            for act in [ActQuant::Static(obs.qparams(QuantDtype::UInt8)), ActQuant::Dynamic(QuantDtype::Int8)] {
                let q = QuantConv2d::from_conv2d(&conv, act).unwrap();
                let got = q.forward_tensor(&x);
                assert_eq!(got.shape(), want.shape(), "{cfg:?}");
                let e = rel_err(&want, &got);
                assert!(e < 0.02, "{cfg:?} {act:?}: relative error {e}");
            }
            // unbatched
            let q = QuantConv2d::from_conv2d(&conv, ActQuant::Dynamic(QuantDtype::UInt8)).unwrap();
            let one = q.forward_tensor(&x.select(0, 0).contiguous());
            assert_eq!(one.shape(), &want.shape()[1..]);
        }
    }

    #[test]
    fn im2col_matches_a_tap_by_tap_reference() {
        let mut rng = Rng::new(10);
        for (kernel_size, stride, before, dilation) in [
            ([3, 3], [1, 1], [1, 1], [1, 1]),
            ([2, 4], [2, 3], [0, 2], [2, 1]),
            ([5, 1], [1, 2], [3, 0], [1, 3]),
            ([3, 2], [1, 1], [0, 0], [1, 1]),
        ] {
            let g = ConvGeometry {
                in_channels: 3,
                out_channels: 1,
                kernel_size,
                stride,
                padding_before: before,
                padding_after: [before[0] + 1, before[1]],
                dilation,
            };
            let (h, w) = (7, 6);
            // channels-last image
            let x: Vec<u8> = (0..3 * h * w).map(|_| rng.below(256) as u8).collect();
            let [oh, ow] = g.out_size(h, w).unwrap();
            let mut col = vec![0u8; oh * ow * g.patch_len()];
            im2col_nhwc(&x, h, w, &g, 77, [oh, ow], &mut col);
            let mut want = Vec::new();
            for oy in 0..oh {
                for ox in 0..ow {
                    for i in 0..kernel_size[0] {
                        for j in 0..kernel_size[1] {
                            for c in 0..3 {
                                let iy = (oy * stride[0] + i * dilation[0]) as isize - before[0] as isize;
                                let ix = (ox * stride[1] + j * dilation[1]) as isize - before[1] as isize;
                                let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                                want.push(if inside { x[(iy as usize * w + ix as usize) * 3 + c] } else { 77 });
                            }
                        }
                    }
                }
            }
            assert_eq!(col, want, "{g:?}");
        }
    }

    #[test]
    fn codes_out_equal_float_out_quantised() {
        // The output written as the next layer's codes (with and without the ReLU) is exactly
        // the f32 output quantised.
        let conv: Conv2d =
            Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(3, 5, 3) }.build().unwrap();
        let x: Tensor<f32> = Tensor::uniform(&[3, 3, 6, 7], -1.0, 1.0, &mut Rng::new(11));
        for dtype in [QuantDtype::UInt8, QuantDtype::Int8] {
            let q = QuantConv2d::from_conv2d(&conv, ActQuant::Static(QParams::affine(-1.0, 1.0, dtype))).unwrap();
            let codes = Codes::from_nchw(&x, q.input_qparams().unwrap());
            let Act::F32(y) = q.forward_codes(&codes, None) else { panic!("f32 asked") };
            assert_eq!(y.to_vec(), q.forward_tensor(&x).to_vec());
            let out_q = QParams::affine(-0.7, 0.9, dtype);
            for relu in [false, true] {
                let Act::Codes(c) = q.forward_codes(&codes, Some((out_q, relu))) else { panic!("codes asked") };
                let want = if relu { y.relu() } else { y.clone() };
                let want: Vec<i32> = want.to_vec().iter().map(|&v| out_q.quantize(v)).collect();
                let got: Vec<i32> = c.to_tensor().to_vec().iter().map(|&v| out_q.quantize(v)).collect();
                assert_eq!(got, want, "{dtype:?} relu {relu}");
            }
        }
    }

    #[test]
    fn padding_dequantises_to_zero() {
        // An input of zeros quantised with a nonzero zero point: the output is the bias alone,
        // also where taps fall into the padding.
        let conv: Conv2d =
            Conv2dConfig { padding: Padding::Explicit([2, 2]), ..Conv2dConfig::new(2, 3, 3) }.build().unwrap();
        let q =
            QuantConv2d::from_conv2d(&conv, ActQuant::Static(QParams::affine(-1.0, 3.0, QuantDtype::UInt8))).unwrap();
        let y = q.forward_tensor(&Tensor::zeros(&[1, 2, 4, 4]));
        let b = conv.bias.as_ref().unwrap().value().to_vec();
        for (i, v) in y.to_vec().iter().enumerate() {
            assert!((v - b[i / 36]).abs() < 1e-6, "{i}: {v}");
        }
    }

    #[test]
    fn groups_are_refused_with_a_typed_error() {
        let conv: Conv2d = Conv2dConfig { groups: 2, ..Conv2dConfig::new(4, 4, 3) }.build().unwrap();
        let e = QuantConv2d::from_conv2d(&conv, ActQuant::Dynamic(QuantDtype::UInt8)).unwrap_err();
        assert!(matches!(e, QuantError::Unsupported { .. }));
        assert!(e.to_string().contains("groups = 1 only, got groups = 2"), "{e}");
    }

    #[test]
    fn large_batch_runs_in_parallel_identically() {
        let conv: Conv2d =
            Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(2, 4, 3) }.build().unwrap();
        let x: Tensor<f32> = Tensor::uniform(&[3, 2, 6, 6], -1.0, 1.0, &mut Rng::new(9));
        let q =
            QuantConv2d::from_conv2d(&conv, ActQuant::Static(QParams::affine(-1.0, 1.0, QuantDtype::UInt8))).unwrap();
        let all = q.forward_tensor(&x);
        for i in 0..3 {
            let one = q.forward_tensor(&x.narrow(0, i, 1).contiguous());
            assert_eq!(one.to_vec(), all.narrow(0, i, 1).contiguous().to_vec());
        }
    }
}
