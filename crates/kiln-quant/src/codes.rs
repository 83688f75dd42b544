//! Activations kept as codes between quantised layers.
//!
//! In a [`QuantSequential`](crate::QuantSequential) a quantised layer whose output reaches the
//! next quantised layer through nothing but `ReLU`, `MaxPool2d`, `Dropout` and `Flatten`
//! writes that next layer's input codes directly (requantising its `i32` sums with the next
//! layer's parameters), and those layers run on the codes: a `ReLU` raises codes below the
//! zero point to it, a max-pool takes the largest code of each window, dropout (evaluation)
//! does nothing and a flatten reorders. Quantisation is monotone and maps 0 to the zero
//! point, so each step gives exactly the codes that running it in `f32` and quantising
//! afterwards would give. Feature maps are stored channels-last (`NHWC`), where a conv's
//! im2col copies whole pixels and a pool compares whole pixels.

use rayon::prelude::*;

use kiln_nn::MaxPool2dConfig;
use kiln_tensor::kernels::pool::pool_out_len;
use kiln_tensor::Tensor;

use crate::linear::quantize_bytes;
use crate::observer::{QParams, QuantDtype};

/// Quantised activations: `data` holds the codes (`u8`, or the bits of `i8` codes) of a
/// tensor of logical shape `shape` (PyTorch's order, `[N, C, H, W]` or `[N, F]`), stored
/// channels-last when `nhwc`.
#[derive(Clone, Debug)]
pub(crate) struct Codes {
    pub(crate) data: Vec<u8>,
    pub(crate) shape: Vec<usize>,
    pub(crate) nhwc: bool,
    pub(crate) q: QParams,
}

/// Runs `f(image, input, output)` for each of `n` images, in parallel on kiln's pool when
/// there are several images and threads.
pub(crate) fn per_image<I: Sync, O: Send>(n: usize, input: &[I], output: &mut [O], f: impl Fn(&[I], &mut [O]) + Sync) {
    if n == 0 {
        return;
    }
    let (ilen, olen) = (input.len() / n, output.len() / n);
    if n == 1 || kiln_tensor::get_num_threads() == 1 {
        input.chunks(ilen.max(1)).zip(output.chunks_mut(olen.max(1))).for_each(|(i, o)| f(i, o));
    } else {
        kiln_tensor::parallel::install(|_| {
            input.par_chunks(ilen.max(1)).zip(output.par_chunks_mut(olen.max(1))).for_each(|(i, o)| f(i, o));
        });
    }
}

impl Codes {
    /// Quantises an `[N, C, H, W]` tensor with `q` into channels-last codes.
    pub(crate) fn from_nchw(x: &Tensor<f32>, q: QParams) -> Codes {
        let &[n, c, h, w] = x.shape() else { panic!("Codes::from_nchw: expected [N, C, H, W], got {:?}", x.shape()) };
        let mut data = Vec::new();
        if c == 1 {
            let x = x.contiguous();
            quantize_bytes(x.as_slice().expect("contiguous"), &q, &mut data);
        } else {
            let x = x.permute(&[0, 2, 3, 1]).contiguous();
            quantize_bytes(x.as_slice().expect("contiguous"), &q, &mut data);
        }
        Codes { data, shape: vec![n, c, h, w], nhwc: true, q }
    }

    /// Quantises a tensor of any shape with `q`, in its own (row-major) order.
    pub(crate) fn from_tensor(x: &Tensor<f32>, q: QParams) -> Codes {
        let x = x.contiguous();
        let mut data = Vec::new();
        quantize_bytes(x.as_slice().expect("contiguous"), &q, &mut data);
        Codes { data, shape: x.shape().to_vec(), nhwc: false, q }
    }

    /// The dequantised values, in PyTorch's layout.
    pub(crate) fn to_tensor(&self) -> Tensor<f32> {
        let q = self.q;
        let values: Vec<f32> = match q.dtype {
            QuantDtype::UInt8 => self.data.iter().map(|&b| q.dequantize(i32::from(b))).collect(),
            QuantDtype::Int8 => self.data.iter().map(|&b| q.dequantize(i32::from(b as i8))).collect(),
        };
        if self.nhwc {
            let [n, c, h, w] = self.dims4();
            Tensor::from_vec(values, &[n, h, w, c]).permute(&[0, 3, 1, 2]).contiguous()
        } else {
            Tensor::from_vec(values, &self.shape)
        }
    }

    /// `[N, C, H, W]`.
    pub(crate) fn dims4(&self) -> [usize; 4] {
        match self.shape[..] {
            [n, c, h, w] => [n, c, h, w],
            _ => panic!("codes of shape {:?} are not a batch of feature maps", self.shape),
        }
    }

    /// `ReLU` on codes: every code below the zero point (a negative value) becomes it.
    pub(crate) fn relu(&mut self) {
        let zp = self.q.zero_point;
        match self.q.dtype {
            QuantDtype::UInt8 => {
                let z = zp as u8;
                self.data.iter_mut().for_each(|b| *b = (*b).max(z));
            }
            QuantDtype::Int8 => {
                let z = zp as i8;
                self.data.iter_mut().for_each(|b| *b = (*b as i8).max(z) as u8);
            }
        }
    }

    /// `Flatten` (from dimension 1 to the end) on codes: channels-last maps are put back in
    /// PyTorch's `C, H, W` order, which is what the weights of a following `Linear` expect.
    pub(crate) fn flatten(self) -> Codes {
        let n = self.shape[0];
        let f = self.shape[1..].iter().product();
        if !self.nhwc {
            return Codes { shape: vec![n, f], ..self };
        }
        let [_, c, h, w] = self.dims4();
        let hw = h * w;
        let mut data = vec![0u8; self.data.len()];
        per_image(n, &self.data, &mut data, |src, dst| {
            for (p, pixel) in src.chunks_exact(c).enumerate() {
                for (ch, &v) in pixel.iter().enumerate() {
                    dst[ch * hw + p] = v;
                }
            }
        });
        Codes { data, shape: vec![n, f], nhwc: false, q: self.q }
    }

    /// `MaxPool2d` on channels-last codes: the largest code of each window (padding never
    /// wins, a window over padding alone gives the lowest code, as `-inf` quantises to it).
    pub(crate) fn max_pool2d(&self, cfg: &MaxPool2dConfig) -> Codes {
        let [n, c, h, w] = self.dims4();
        let stride = cfg.stride.unwrap_or(cfg.kernel_size);
        let out = |a: usize, len: usize| {
            pool_out_len(len, cfg.kernel_size[a], stride[a], cfg.padding[a], cfg.dilation[a], cfg.ceil_mode)
                .unwrap_or_else(|| panic!("MaxPool2d: input {:?} gives an empty output", self.shape))
        };
        let (oh, ow) = (out(0, h), out(1, w));
        let mut data = vec![0u8; n * oh * ow * c];
        let signed = self.q.dtype == QuantDtype::Int8;
        // codes compared as unsigned bytes: flip the sign bit of i8 codes before and after
        let flip = if signed { 0x80u8 } else { 0 };
        let fast = cfg.kernel_size == [2, 2]
            && stride == [2, 2]
            && cfg.padding == [0, 0]
            && cfg.dilation == [1, 1]
            && 2 * oh <= h
            && 2 * ow <= w;
        per_image(n, &self.data, &mut data, |src, dst| {
            if fast && !signed {
                // non-overlapping 2x2 windows: four whole pixels per output pixel
                for oy in 0..oh {
                    let (r0, r1) = (&src[2 * oy * w * c..], &src[(2 * oy + 1) * w * c..]);
                    for ox in 0..ow {
                        let o = &mut dst[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                        let (a, b) = (&r0[2 * ox * c..(2 * ox + 2) * c], &r1[2 * ox * c..(2 * ox + 2) * c]);
                        for ch in 0..c {
                            o[ch] = a[ch].max(a[c + ch]).max(b[ch].max(b[c + ch]));
                        }
                    }
                }
                return;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = &mut dst[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                    o.fill(0);
                    for i in 0..cfg.kernel_size[0] {
                        let iy = (oy * stride[0] + i * cfg.dilation[0]) as isize - cfg.padding[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for j in 0..cfg.kernel_size[1] {
                            let ix = (ox * stride[1] + j * cfg.dilation[1]) as isize - cfg.padding[1] as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let p = (iy as usize * w + ix as usize) * c;
                            for (d, &s) in o.iter_mut().zip(&src[p..p + c]) {
                                *d = (*d).max(s ^ flip);
                            }
                        }
                    }
                    o.iter_mut().for_each(|d| *d ^= flip);
                }
            }
        });
        Codes { data, shape: vec![n, c, oh, ow], nhwc: true, q: self.q }
    }
}

/// What flows between the layers of a [`QuantSequential`](crate::QuantSequential).
pub(crate) enum Act {
    /// Values, in PyTorch's layout.
    F32(Tensor<f32>),
    /// Codes.
    Codes(Codes),
}

impl Act {
    /// The values (dequantised codes).
    pub(crate) fn into_tensor(self) -> Tensor<f32> {
        match self {
            Act::F32(t) => t,
            Act::Codes(c) => c.to_tensor(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tensor::Rng;

    fn codes_of(t: &Tensor<f32>, q: QParams) -> Vec<i32> {
        t.to_vec().iter().map(|&v| q.quantize(v)).collect()
    }

    fn as_ints(c: &Codes) -> Vec<i32> {
        let t = c.to_tensor();
        t.to_vec().iter().map(|&v| c.q.quantize(v)).collect()
    }

    #[test]
    fn relu_pool_and_flatten_on_codes_equal_float_then_quantise() {
        let mut rng = Rng::new(5);
        let configs = [
            MaxPool2dConfig::new(2),
            MaxPool2dConfig { stride: Some([1, 2]), padding: [1, 1], ..MaxPool2dConfig::new(3) },
            MaxPool2dConfig { dilation: [2, 1], ceil_mode: true, ..MaxPool2dConfig::new(2) },
            MaxPool2dConfig { kernel_size: [2, 3], stride: Some([2, 2]), ceil_mode: true, ..MaxPool2dConfig::new(1) },
        ];
        for dtype in [QuantDtype::UInt8, QuantDtype::Int8] {
            let q = QParams::affine(-1.5, 2.0, dtype);
            for cfg in &configs {
                let x: Tensor<f32> = Tensor::uniform(&[2, 3, 7, 6], -2.0, 2.5, &mut rng);
                let stride = cfg.stride.unwrap_or(cfg.kernel_size);
                let (pooled, _) =
                    x.relu().max_pool2d(cfg.kernel_size, stride, cfg.padding, cfg.dilation, cfg.ceil_mode);
                let mut c = Codes::from_nchw(&x, q);
                c.relu();
                let p = c.max_pool2d(cfg);
                assert_eq!(p.shape, pooled.shape(), "{cfg:?}");
                assert_eq!(as_ints(&p), codes_of(&pooled, q), "{dtype:?} {cfg:?}");
                let flat = p.flatten();
                assert_eq!(flat.shape, vec![2, pooled.shape()[1..].iter().product::<usize>()]);
                let want: Vec<i32> = codes_of(&pooled, q);
                let got: Vec<i32> = match dtype {
                    QuantDtype::UInt8 => flat.data.iter().map(|&b| i32::from(b)).collect(),
                    QuantDtype::Int8 => flat.data.iter().map(|&b| i32::from(b as i8)).collect(),
                };
                assert_eq!(got, want, "flatten puts channels first again");
            }
        }
    }

    #[test]
    fn round_trip_through_codes_is_quantise_dequantise() {
        let x: Tensor<f32> = Tensor::uniform(&[3, 4, 2, 5], -1.0, 1.0, &mut Rng::new(6));
        let q = QParams::affine(-1.0, 1.0, QuantDtype::UInt8);
        let back = Codes::from_nchw(&x, q).to_tensor();
        assert_eq!(back.shape(), x.shape());
        let want: Vec<f32> = x.to_vec().iter().map(|&v| q.dequantize(q.quantize(v))).collect();
        assert_eq!(back.to_vec(), want);
        let flat = Codes::from_tensor(&x.reshape(&[3, 40]), q);
        assert_eq!(flat.to_tensor().to_vec(), want);
    }
}
