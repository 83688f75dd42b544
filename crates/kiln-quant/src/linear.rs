//! `QuantLinear`: `y = dequant(quant(x) · W_q ᵀ) + b` with int8 weights.

use std::fmt;

use rayon::prelude::*;

use kiln_autograd::Var;
use kiln_nn::{Forward, Linear, Module, TensorKind};
use kiln_tensor::Tensor;

use crate::codes::{Act, Codes};
use crate::gemm::{gemm_requant, gemm_requant_codes, PackedB, QuantizedRows, Requant};
use crate::observer::{min_max, quantize_weight_per_channel, QParams, QuantDtype};

/// How a quantised layer quantises its input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActQuant {
    /// Fixed parameters found by calibration (static post-training quantisation).
    Static(QParams),
    /// Parameters computed from each input's own min and max (per batch, per call), like
    /// `torch.ao.quantization.quantize_dynamic`.
    Dynamic(QuantDtype),
}

impl ActQuant {
    /// The parameters for input `x`.
    #[must_use]
    pub fn params_for(&self, x: &[f32]) -> QParams {
        match *self {
            ActQuant::Static(q) => q,
            ActQuant::Dynamic(dtype) => {
                let (lo, hi) = min_max(x).unwrap_or((0.0, 0.0));
                QParams::affine(lo, hi, dtype)
            }
        }
    }

    /// The code type.
    #[must_use]
    pub fn dtype(&self) -> QuantDtype {
        match *self {
            ActQuant::Static(q) => q.dtype,
            ActQuant::Dynamic(d) => d,
        }
    }

    pub(crate) fn describe(&self) -> String {
        let torch_name = |d: QuantDtype| if d == QuantDtype::UInt8 { "quint8" } else { "qint8" };
        match self {
            ActQuant::Static(q) => {
                format!("activation={} static scale={:e} zero_point={}", torch_name(q.dtype), q.scale, q.zero_point)
            }
            ActQuant::Dynamic(d) => format!("activation={} dynamic", torch_name(*d)),
        }
    }
}

/// The code of the real value 0 as the byte the kernels read (`i8` codes as their bits).
pub(crate) fn zero_byte(q: &QParams) -> u8 {
    q.zero_point as u8
}

/// Quantises `x` to bytes (`u8` codes, or the bits of `i8` codes), in parallel when large.
pub(crate) fn quantize_bytes(x: &[f32], q: &QParams, out: &mut Vec<u8>) {
    out.clear();
    out.resize(x.len(), 0);
    let run = |src: &[f32], dst: &mut [u8]| {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = q.quantize(v) as u8;
        }
    };
    let min = kiln_tensor::parallel::elementwise_min();
    if x.len() < 2 * min || kiln_tensor::get_num_threads() == 1 {
        run(x, out);
    } else {
        kiln_tensor::parallel::install(|_| {
            x.par_chunks(min).zip(out.par_chunks_mut(min)).for_each(|(s, d)| run(s, d));
        });
    }
}

/// The bytes of [`quantize_bytes`] as GEMM rows of their dtype.
pub(crate) fn as_rows(bytes: &[u8], dtype: QuantDtype) -> QuantizedRows<'_> {
    match dtype {
        QuantDtype::UInt8 => QuantizedRows::U8(bytes),
        // SAFETY: i8 and u8 have the same layout.
        QuantDtype::Int8 => {
            QuantizedRows::I8(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const i8, bytes.len()) })
        }
    }
}

/// The per-channel int8 weights of a quantised layer, packed for the GEMM, with their scales
/// and the `f32` bias.
#[derive(Clone, Debug)]
pub(crate) struct QuantWeights {
    pub(crate) packed: PackedB,
    pub(crate) scales: Vec<f32>,
    pub(crate) bias: Option<Vec<f32>>,
}

impl QuantWeights {
    /// Quantises a `[n, k]` weight per output channel.
    pub(crate) fn from_f32(w: &[f32], n: usize, k: usize, bias: Option<Vec<f32>>) -> Self {
        let (codes, scales) = quantize_weight_per_channel(w, n, k);
        QuantWeights { packed: PackedB::pack(&codes, n, k), scales, bias }
    }

    /// How the GEMM turns sums over inputs quantised with `q` into `f32` outputs.
    pub(crate) fn requant(&self, q: &QParams) -> Requant<'_> {
        Requant { a_scale: q.scale, a_zero_point: q.zero_point, w_scales: &self.scales, bias: self.bias.as_deref() }
    }
}

/// A quantised [`Linear`]: `y = x Wᵀ + b` with `W` in int8 (per-output-channel symmetric
/// scales), `x` quantised per tensor (statically from calibration, or dynamically per call),
/// an exact int8 GEMM and the requantisation to `f32` (with the bias) fused into its output
/// loop. Inference only: the output carries no gradient.
///
/// # Shapes
/// - Input: `[*, in_features]`
/// - Output: `[*, out_features]`
///
/// ```
/// use kiln_nn::{Forward, Linear};
/// use kiln_quant::{ActQuant, QuantDtype, QuantLinear};
/// use kiln_autograd::Var;
/// use kiln_tensor::{Rng, Tensor};
/// let fc: Linear = Linear::new(64, 8);
/// let q = QuantLinear::from_linear(&fc, ActQuant::Dynamic(QuantDtype::UInt8));
/// let x = Var::constant(Tensor::uniform(&[4, 64], -1.0, 1.0, &mut Rng::new(0)));
/// let (want, got) = (fc.forward(&x).value(), q.forward(&x).value());
/// assert_eq!(got.shape(), &[4, 8]);
/// let err = want.sub(&got).abs().max_all();
/// assert!(err < 0.02 * want.abs().max_all(), "{err}");
/// ```
#[derive(Clone, Debug)]
pub struct QuantLinear {
    in_features: usize,
    out_features: usize,
    pub(crate) weights: QuantWeights,
    /// How the input is quantised.
    pub act: ActQuant,
}

impl QuantLinear {
    /// Quantises a float layer's weights; `act` says how inputs will be quantised.
    #[must_use]
    pub fn from_linear(layer: &Linear, act: ActQuant) -> Self {
        let bias = layer.bias.as_ref().map(|b| b.value().to_vec());
        Self::from_weight(&layer.weight.value(), bias, act)
    }

    /// Quantises a `[out_features, in_features]` weight and an optional bias.
    ///
    /// **Panics** if `weight` is not 2-d, the bias length differs from `out_features`, or
    /// `in_features` exceeds [`crate::gemm::MAX_K`].
    #[must_use]
    pub fn from_weight(weight: &Tensor<f32>, bias: Option<Vec<f32>>, act: ActQuant) -> Self {
        assert_eq!(
            weight.ndim(),
            2,
            "QuantLinear: weight must be [out_features, in_features], got {:?}",
            weight.shape()
        );
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        if let Some(b) = &bias {
            assert_eq!(b.len(), n, "QuantLinear: bias has {} values for {n} outputs", b.len());
        }
        let w = weight.contiguous();
        let weights = QuantWeights::from_f32(w.as_slice().expect("contiguous"), n, k, bias);
        QuantLinear { in_features: k, out_features: n, weights, act }
    }

    /// Rebuilds a layer from int8 codes (`[out_features, in_features]`), per-channel scales
    /// and bias, as read from a file.
    pub(crate) fn from_codes(
        codes: &[i8],
        scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        n: usize,
        k: usize,
        act: ActQuant,
    ) -> Self {
        QuantLinear {
            in_features: k,
            out_features: n,
            weights: QuantWeights { packed: PackedB::pack(codes, n, k), scales, bias },
            act,
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

    /// Size of each input sample.
    #[must_use]
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Size of each output sample.
    #[must_use]
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The int8 weight codes, `[out_features, in_features]` row-major.
    #[must_use]
    pub fn weight_codes(&self) -> &[i8] {
        self.weights.packed.weight()
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

    /// Applies the layer to a tensor.
    ///
    /// **Panics** if the last dimension of `x` is not `in_features`.
    #[must_use]
    pub fn forward_tensor(&self, x: &Tensor<f32>) -> Tensor<f32> {
        let shape = x.shape();
        assert!(
            shape.last() == Some(&self.in_features),
            "QuantLinear: input {shape:?} does not end in in_features = {}",
            self.in_features
        );
        let x = x.contiguous();
        let xs = x.as_slice().expect("contiguous");
        let m = xs.len() / self.in_features;
        let mut out = vec![0f32; m * self.out_features];
        self.apply_rows(xs, m, &mut out);
        let mut out_shape = shape.to_vec();
        *out_shape.last_mut().expect("not empty") = self.out_features;
        Tensor::from_vec(out, &out_shape)
    }

    /// `out = layer(x)` on `m` rows of `in_features` values.
    pub(crate) fn apply_rows(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let q = self.act.params_for(x);
        let mut xq = Vec::new();
        quantize_bytes(x, &q, &mut xq);
        self.apply_codes(m, &xq, &q, out);
    }

    /// `out = layer(x)` on `m` rows of `in_features` codes quantised with `q`.
    pub(crate) fn apply_codes(&self, m: usize, xq: &[u8], q: &QParams, out: &mut [f32]) {
        let (k, req) = (self.in_features, self.weights.requant(q));
        gemm_requant(m, as_rows(xq, q.dtype), k, &self.weights.packed, &req, out, self.out_features, 1, true);
    }

    /// The layer on codes (`x.q` is the input's quantisation; the last dimension holds the
    /// features): `f32` values out, or with `out = Some((q, relu))` codes quantised with `q`
    /// (after a `ReLU` when `relu`).
    ///
    /// **Panics** if the codes are channels-last feature maps or do not end in `in_features`.
    pub(crate) fn forward_codes(&self, x: &Codes, out: Option<(QParams, bool)>) -> Act {
        assert!(
            !x.nhwc && x.shape.last() == Some(&self.in_features),
            "QuantLinear: input {:?} does not end in in_features = {}",
            x.shape,
            self.in_features
        );
        let m = x.data.len() / self.in_features;
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("not empty") = self.out_features;
        match out {
            None => {
                let mut y = vec![0f32; m * self.out_features];
                self.apply_codes(m, &x.data, &x.q, &mut y);
                Act::F32(Tensor::from_vec(y, &shape))
            }
            Some((out_q, relu)) => {
                let (k, n, req) = (self.in_features, self.out_features, self.weights.requant(&x.q));
                let mut y = vec![0u8; m * n];
                let rows = as_rows(&x.data, x.q.dtype);
                gemm_requant_codes(m, rows, k, &self.weights.packed, &req, &out_q, relu, &mut y, n, true);
                Act::Codes(Codes { data: y, shape, nhwc: false, q: out_q })
            }
        }
    }
}

impl Forward<f32> for QuantLinear {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        Var::constant(x.with_value(|v| self.forward_tensor(v)))
    }
}

/// No parameters or buffers: the int8 weights are not `f32` variables (they are saved by
/// [`crate::QuantSequential::save`]).
impl Module<f32> for QuantLinear {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {}
    fn is_training(&self) -> bool {
        false
    }
}

impl fmt::Display for QuantLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QuantLinear(in_features={}, out_features={}, bias={}, weight=qint8 per-channel, {})",
            self.in_features,
            self.out_features,
            self.weights.bias.is_some(),
            self.act.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::{MinMaxObserver, Observer};
    use kiln_nn::LinearConfig;
    use kiln_tensor::Rng;

    fn rel_err(want: &Tensor<f32>, got: &Tensor<f32>) -> f32 {
        let d = want.sub(got);
        (d.mul(&d).sum_all().item() / want.mul(want).sum_all().item()).sqrt()
    }

    #[test]
    fn close_to_the_float_layer_static_and_dynamic() {
        let mut rng = Rng::new(3);
        let fc: Linear = LinearConfig::new(100, 30).build().unwrap();
        fc.weight.set_value(Tensor::uniform(&[30, 100], -0.1, 0.1, &mut rng));
        let x: Tensor<f32> = Tensor::uniform(&[7, 100], -1.0, 2.0, &mut rng);
        let want = fc.forward(&Var::constant(x.clone())).value();
        let mut obs = MinMaxObserver::default();
        obs.observe(x.as_slice().unwrap());
        for act in [
            ActQuant::Static(obs.qparams(QuantDtype::UInt8)),
            ActQuant::Static(obs.qparams(QuantDtype::Int8)),
            ActQuant::Dynamic(QuantDtype::UInt8),
            ActQuant::Dynamic(QuantDtype::Int8),
        ] {
            let q = QuantLinear::from_linear(&fc, act);
            let got = q.forward(&Var::constant(x.clone())).value();
            assert_eq!(got.shape(), &[7, 30]);
            let e = rel_err(&want, &got);
            assert!(e < 0.01, "{act:?}: relative error {e}");
        }
    }

    #[test]
    fn error_is_bounded_by_the_scales() {
        // |y - y_q| <= Σ_k |x_k| s_w/2 + |w_k| s_x/2 + s_x s_w/4 per output
        let mut rng = Rng::new(4);
        let fc: Linear = LinearConfig { bias: false, ..LinearConfig::new(40, 5) }.build().unwrap();
        let x: Tensor<f32> = Tensor::uniform(&[3, 40], -1.0, 1.0, &mut rng);
        let q = QuantLinear::from_linear(&fc, ActQuant::Dynamic(QuantDtype::UInt8));
        let got = q.forward_tensor(&x);
        let want = fc.forward(&Var::constant(x.clone())).value();
        let qa = q.act.params_for(x.as_slice().unwrap());
        let w = fc.weight.value();
        for i in 0..3 {
            for o in 0..5 {
                let sw = q.weight_scales()[o];
                let bound: f32 = (0..40)
                    .map(|k| {
                        x.get(&[i, k]).abs() * sw / 2.0 + w.get(&[o, k]).abs() * qa.scale / 2.0 + qa.scale * sw / 4.0
                    })
                    .sum();
                let err = (got.get(&[i, o]) - want.get(&[i, o])).abs();
                assert!(err <= bound * 1.001 + 1e-6, "{err} > {bound}");
            }
        }
    }

    #[test]
    fn batched_shapes_and_display() {
        let fc: Linear = Linear::new(6, 2);
        let q = QuantLinear::from_linear(&fc, ActQuant::Static(QParams::affine(-1.0, 1.0, QuantDtype::UInt8)));
        let y = q.forward(&Var::constant(Tensor::ones(&[2, 3, 6])));
        assert_eq!(y.shape().as_slice(), &[2, 3, 2]);
        assert_eq!(q.num_parameters(), 0);
        assert_eq!(
            q.to_string(),
            "QuantLinear(in_features=6, out_features=2, bias=true, weight=qint8 per-channel, \
             activation=quint8 static scale=7.843138e-3 zero_point=127)"
        );
        let d = QuantLinear::from_linear(&fc, ActQuant::Dynamic(QuantDtype::Int8));
        assert!(d.to_string().ends_with("activation=qint8 dynamic)"), "{d}");
    }
}
