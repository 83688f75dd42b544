//! Quantisation parameters and the observers that choose them, after `torch.ao.quantization`.
//!
//! An observer watches the values a tensor takes on calibration batches and turns what it
//! saw into a per-tensor [`QParams`] (scale and zero point) with PyTorch's formulas
//! (`torch/ao/quantization/observer.py`, `_calculate_qparams`):
//!
//! ```text
//! min_neg = min(min, 0),  max_pos = max(max, 0)          # the range always holds 0
//! affine:    scale = (max_pos - min_neg) / (qmax - qmin)
//!            zero_point = clamp(qmin - round(min_neg / scale), qmin, qmax)
//! symmetric: scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2)
//!            zero_point = 0 (qint8) or 128 (quint8)
//! scale = max(scale, f32::EPSILON)
//! ```
//!
//! and values are quantised as `q = clamp(round(x / scale) + zero_point, qmin, qmax)` with
//! round half to even (`torch.quantize_per_tensor`), dequantised as `(q - zero_point) · scale`.

use serde::{Deserialize, Serialize};

/// The integer type activations are quantised to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum QuantDtype {
    /// `torch.quint8`: codes `0..=255` (PyTorch's default for activations).
    #[default]
    UInt8,
    /// `torch.qint8`: codes `-128..=127`.
    Int8,
}

impl QuantDtype {
    /// `(quant_min, quant_max)`.
    #[must_use]
    pub fn range(self) -> (i32, i32) {
        match self {
            QuantDtype::UInt8 => (0, 255),
            QuantDtype::Int8 => (-128, 127),
        }
    }

    /// The name used in model files (`"uint8"`, `"int8"`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            QuantDtype::UInt8 => "uint8",
            QuantDtype::Int8 => "int8",
        }
    }
}

/// Per-tensor affine quantisation parameters: `x ≈ (q - zero_point) · scale`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// The step between neighbouring codes, > 0.
    pub scale: f32,
    /// The code of the real value 0.
    pub zero_point: i32,
    /// The code type.
    pub dtype: QuantDtype,
}

impl QParams {
    /// PyTorch's affine parameters for the range `[min, max]` (extended to include 0).
    ///
    /// ```
    /// use kiln_quant::{QParams, QuantDtype};
    /// let q = QParams::affine(-1.0, 3.0, QuantDtype::UInt8);
    /// assert_eq!(q.scale, 4.0 / 255.0);
    /// assert_eq!(q.zero_point, 64); // round(1 / (4 / 255)) = round(63.75)
    /// ```
    #[must_use]
    pub fn affine(min: f32, max: f32, dtype: QuantDtype) -> Self {
        let (qmin, qmax) = dtype.range();
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = ((hi - lo) / (qmax - qmin) as f32).max(f32::EPSILON);
        let zero_point = (qmin - (lo / scale).round_ties_even() as i32).clamp(qmin, qmax);
        QParams { scale, zero_point, dtype }
    }

    /// PyTorch's symmetric parameters for the range `[min, max]`: zero point 0 for `Int8`,
    /// 128 for `UInt8`.
    #[must_use]
    pub fn symmetric(min: f32, max: f32, dtype: QuantDtype) -> Self {
        let (qmin, qmax) = dtype.range();
        let amax = (-min.min(0.0)).max(max.max(0.0));
        let scale = (amax / ((qmax - qmin) as f32 / 2.0)).max(f32::EPSILON);
        let zero_point = if dtype == QuantDtype::UInt8 { 128 } else { 0 };
        QParams { scale, zero_point, dtype }
    }

    /// The code of `x`: `clamp(round(x / scale) + zero_point, qmin, qmax)`.
    #[inline]
    #[must_use]
    pub fn quantize(&self, x: f32) -> i32 {
        let (qmin, qmax) = self.dtype.range();
        // Clamping in f32 first keeps NaN and huge values from wrapping.
        let q = round_half_even(x / self.scale) + self.zero_point as f32;
        q.clamp(qmin as f32, qmax as f32) as i32
    }

    /// The real value of code `q`: `(q - zero_point) · scale`.
    #[inline]
    #[must_use]
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }

    /// Quantises a slice to `u8` codes (`UInt8`).
    ///
    /// **Panics** if the dtype is not `UInt8`.
    pub fn quantize_u8(&self, x: &[f32], out: &mut Vec<u8>) {
        assert_eq!(self.dtype, QuantDtype::UInt8, "quantize_u8: parameters are for {:?}", self.dtype);
        out.clear();
        out.extend(x.iter().map(|&v| self.quantize(v) as u8));
    }

    /// Quantises a slice to `i8` codes (`Int8`).
    ///
    /// **Panics** if the dtype is not `Int8`.
    pub fn quantize_i8(&self, x: &[f32], out: &mut Vec<i8>) {
        assert_eq!(self.dtype, QuantDtype::Int8, "quantize_i8: parameters are for {:?}", self.dtype);
        out.clear();
        out.extend(x.iter().map(|&v| self.quantize(v) as i8));
    }
}

/// `x.round_ties_even()`, bit for bit (also for `±0`, infinities and NaN up to the sign of a
/// zero), computed as `(x ± 2²³) ∓ 2²³` in the default round-to-nearest-even mode: a few
/// instructions that vectorise, where `round_ties_even` without SSE4.1 calls `rintf` for every
/// value (which made quantising a conv's output cost more than its GEMM). From `2²³` on every
/// `f32` is an integer already.
#[inline(always)]
#[must_use]
pub fn round_half_even(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    if x.abs() < TWO_23 {
        let c = TWO_23.copysign(x);
        (x + c) - c
    } else {
        x
    }
}

/// `(min, max)` of a slice, ignoring NaN; `None` when it has no number.
#[must_use]
pub fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    (lo <= hi).then_some((lo, hi))
}

/// Something that watches activations during calibration and proposes their [`QParams`].
pub trait Observer: Send {
    /// Records a batch of values.
    fn observe(&mut self, x: &[f32]);

    /// The range `[min, max]` the parameters will cover, `None` before any finite value.
    fn range(&self) -> Option<(f32, f32)>;

    /// The affine parameters for what was observed (PyTorch's formula, see the module doc);
    /// `scale = 1, zero_point = 0` (PyTorch's answer) before anything was observed.
    fn qparams(&self, dtype: QuantDtype) -> QParams {
        match self.range() {
            Some((lo, hi)) => QParams::affine(lo, hi, dtype),
            None => QParams { scale: 1.0, zero_point: 0, dtype },
        }
    }
}

/// The running minimum and maximum, like `torch.ao.quantization.MinMaxObserver`.
///
/// ```
/// use kiln_quant::{MinMaxObserver, Observer, QuantDtype};
/// let mut obs = MinMaxObserver::default();
/// obs.observe(&[0.5, 2.0]);
/// obs.observe(&[-0.5, 1.0]);
/// assert_eq!(obs.range(), Some((-0.5, 2.0)));
/// let q = obs.qparams(QuantDtype::UInt8);
/// assert_eq!((q.scale, q.zero_point), (2.5 / 255.0, 51));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MinMaxObserver {
    range: Option<(f32, f32)>,
}

impl Observer for MinMaxObserver {
    fn observe(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = min_max(x) {
            self.range = Some(match self.range {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
    }

    fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
}

/// The `100 - p` and `p` percentiles of everything observed (e.g. `p = 99.99`), which
/// ignores rare outliers that would otherwise stretch the scale (TensorRT's and
/// `pytorch-quantization`'s "percentile" calibration).
///
/// The values are kept as a histogram of `bins` equal bins, the way
/// `torch.ao.quantization.HistogramObserver` keeps its statistics: when a batch falls outside
/// the current range, the range is widened by a power of two and the old counts are merged
/// into the wider bins. Percentiles are therefore exact to one bin width (interpolated
/// linearly within the bin).
///
/// ```
/// use kiln_quant::{Observer, PercentileObserver};
/// let mut obs = PercentileObserver::new(99.0);
/// let mut x: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
/// x.push(1000.0); // one outlier
/// obs.observe(&x);
/// let (lo, hi) = obs.range().unwrap();
/// // about 0.99, to a bin of the histogram (1000 / 2048 wide here): the outlier is ignored
/// assert!(lo.abs() < 0.02 && hi < 1.5, "{lo} {hi}");
/// ```
#[derive(Clone, Debug)]
pub struct PercentileObserver {
    percentile: f64,
    counts: Vec<u64>,
    /// The histogram covers `[lo, lo + width · bins)`.
    lo: f32,
    width: f32,
    total: u64,
    min_max: MinMaxObserver,
}

impl PercentileObserver {
    /// The default number of bins.
    pub const BINS: usize = 2048;

    /// An observer of the `100 - percentile` and `percentile` percentiles, with 2048 bins.
    ///
    /// **Panics** unless `50 < percentile <= 100`.
    #[must_use]
    pub fn new(percentile: f64) -> Self {
        Self::with_bins(percentile, Self::BINS)
    }

    /// The same with `bins` bins.
    ///
    /// **Panics** unless `50 < percentile <= 100` and `bins >= 16`.
    #[must_use]
    pub fn with_bins(percentile: f64, bins: usize) -> Self {
        assert!(
            percentile > 50.0 && percentile <= 100.0,
            "PercentileObserver: percentile must be in (50, 100], got {percentile}"
        );
        assert!(bins >= 16, "PercentileObserver: bins must be >= 16, got {bins}");
        PercentileObserver {
            percentile,
            counts: vec![0; bins],
            lo: 0.0,
            width: 0.0,
            total: 0,
            min_max: MinMaxObserver::default(),
        }
    }

    fn bin(&self, v: f32) -> usize {
        (((v - self.lo) / self.width) as usize).min(self.counts.len() - 1)
    }

    /// Widens the histogram until it covers `[lo, hi]`, merging old bins.
    fn cover(&mut self, lo: f32, hi: f32) {
        let bins = self.counts.len();
        if self.width == 0.0 {
            let span = (hi - lo).max(f32::MIN_POSITIVE * bins as f32).max(lo.abs().max(hi.abs()) * 1e-6);
            self.lo = lo;
            self.width = span / (bins as f32 - 1.0);
            return;
        }
        while lo < self.lo || hi >= self.lo + self.width * bins as f32 {
            // Double the width, keeping the edge on the side that does not need to move.
            let grow_down = lo < self.lo;
            let mut merged = vec![0u64; bins];
            let new_lo = if grow_down { self.lo - self.width * bins as f32 } else { self.lo };
            let new_width = self.width * 2.0;
            for (i, &c) in self.counts.iter().enumerate() {
                if c > 0 {
                    let centre = self.lo + (i as f32 + 0.5) * self.width;
                    let j = (((centre - new_lo) / new_width) as usize).min(bins - 1);
                    merged[j] += c;
                }
            }
            self.counts = merged;
            self.lo = new_lo;
            self.width = new_width;
        }
    }

    /// The value below which a fraction `f` of the observed values lie (linear within a bin).
    fn quantile(&self, f: f64) -> f32 {
        let target = f * self.total as f64;
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            let next = seen + c as f64;
            if next >= target && c > 0 {
                let within = ((target - seen) / c as f64).clamp(0.0, 1.0) as f32;
                return self.lo + (i as f32 + within) * self.width;
            }
            seen = next;
        }
        self.lo + self.width * self.counts.len() as f32
    }
}

impl Observer for PercentileObserver {
    fn observe(&mut self, x: &[f32]) {
        let Some((lo, hi)) = min_max(x) else { return };
        self.min_max.observe(x);
        self.cover(lo, hi);
        for &v in x {
            if !v.is_nan() {
                let b = self.bin(v);
                self.counts[b] += 1;
                self.total += 1;
            }
        }
    }

    fn range(&self) -> Option<(f32, f32)> {
        let (min, max) = self.min_max.range()?;
        let p = self.percentile / 100.0;
        // Never beyond what was seen (the histogram's edges can be wider).
        let lo = self.quantile(1.0 - p).clamp(min, max);
        let hi = self.quantile(p).clamp(min, max);
        Some((lo, hi))
    }
}

/// Which observer calibrates activations in [`crate::quantize_sequential`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ObserverKind {
    /// [`MinMaxObserver`]: the whole observed range.
    MinMax,
    /// [`PercentileObserver`] with this percentile (e.g. `99.99`).
    Percentile(f64),
}

impl ObserverKind {
    /// A fresh observer of this kind.
    #[must_use]
    pub fn build(self) -> Box<dyn Observer> {
        match self {
            ObserverKind::MinMax => Box::new(MinMaxObserver::default()),
            ObserverKind::Percentile(p) => Box::new(PercentileObserver::new(p)),
        }
    }
}

/// Per-output-channel symmetric `qint8` quantisation of a weight `[n, k]` (row `c` is output
/// channel `c`), like `PerChannelMinMaxObserver(qscheme=torch.per_channel_symmetric)`:
/// `scale[c] = max|w[c, :]| / 127.5`, codes `clamp(round(w / scale), -128, 127)`.
///
/// Returns `(codes, scales)`.
#[must_use]
pub fn quantize_weight_per_channel(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), n * k, "quantize_weight_per_channel: {} values for [{n}, {k}]", w.len());
    let mut codes = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(n);
    for row in w.chunks(k.max(1)).take(n) {
        let (lo, hi) = min_max(row).unwrap_or((0.0, 0.0));
        let q = QParams::symmetric(lo, hi, QuantDtype::Int8);
        scales.push(q.scale);
        codes.extend(row.iter().map(|&v| q.quantize(v) as i8));
    }
    if k == 0 {
        scales.resize(n, f32::EPSILON);
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_rounding_is_round_ties_even() {
        let mut specials = vec![0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 8_388_607.5, -8_388_607.5, 4_194_304.5];
        specials.extend([8_388_608.0, 16_777_217.0, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY, f32::MAX]);
        specials.extend([f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 1e-45, 0.49999997, -0.49999997]);
        let mut rng = kiln_tensor::Rng::new(3);
        for _ in 0..200_000 {
            // values spread over every exponent around the rounding boundary
            let bits = rng.below(1 << 31) as u32 | if rng.below(2) == 0 { 0 } else { 1 << 31 };
            specials.push(f32::from_bits(bits));
            specials.push((rng.below(1 << 24) as f32 - 8_388_608.0) / 2.0);
        }
        for x in specials {
            let (want, got) = (x.round_ties_even(), round_half_even(x));
            if x.is_nan() {
                assert!(got.is_nan());
            } else if want == 0.0 {
                assert_eq!(got, 0.0, "{x:e}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{x:e}: {got} vs {want}");
            }
        }
    }
    use kiln_tensor::{Rng, Tensor};

    #[test]
    fn affine_matches_pytorch_formulas() {
        // torch: MinMaxObserver()(torch.tensor([-1., 3.])).calculate_qparams() -> (0.015686, 64)
        let q = QParams::affine(-1.0, 3.0, QuantDtype::UInt8);
        assert_eq!((q.scale, q.zero_point), (4.0 / 255.0, 64));
        // a positive-only range is extended to 0: zero point 0
        let q = QParams::affine(0.5, 2.0, QuantDtype::UInt8);
        assert_eq!((q.scale, q.zero_point), (2.0 / 255.0, 0));
        // a negative-only range: zero point at the top
        let q = QParams::affine(-2.0, -1.0, QuantDtype::UInt8);
        assert_eq!((q.scale, q.zero_point), (2.0 / 255.0, 255));
        // qint8: zero_point = -128 - round(min / scale)
        let q = QParams::affine(-1.0, 3.0, QuantDtype::Int8);
        assert_eq!((q.scale, q.zero_point), (4.0 / 255.0, -64));
        // all zeros: scale eps
        let q = QParams::affine(0.0, 0.0, QuantDtype::UInt8);
        assert_eq!((q.scale, q.zero_point), (f32::EPSILON, 0));
        // symmetric qint8 divides by 127.5
        let q = QParams::symmetric(-0.5, 2.55, QuantDtype::Int8);
        assert_eq!((q.scale, q.zero_point), (2.55 / 127.5, 0));
        assert_eq!(QParams::symmetric(-1.0, 1.0, QuantDtype::UInt8).zero_point, 128);
    }

    #[test]
    fn quantize_rounds_half_to_even_and_clamps() {
        let q = QParams { scale: 1.0, zero_point: 10, dtype: QuantDtype::UInt8 };
        assert_eq!(q.quantize(2.5), 12);
        assert_eq!(q.quantize(3.5), 14);
        assert_eq!(q.quantize(-100.0), 0);
        assert_eq!(q.quantize(1e9), 255);
        assert_eq!(q.quantize(f32::NAN), 0);
        assert_eq!(q.dequantize(12), 2.0);
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let x: Tensor<f32> = Tensor::uniform(&[4000], -3.0, 5.0, &mut Rng::new(1));
        let x = x.to_vec();
        for dtype in [QuantDtype::UInt8, QuantDtype::Int8] {
            let mut obs = MinMaxObserver::default();
            obs.observe(&x);
            let q = obs.qparams(dtype);
            for &v in &x {
                let err = (q.dequantize(q.quantize(v)) - v).abs();
                assert!(err <= q.scale / 2.0 + 1e-6, "{dtype:?}: {v} off by {err}, scale {}", q.scale);
            }
        }
        // per-channel weights, including a channel of zeros
        let mut w: Vec<f32> = Tensor::<f32>::uniform(&[3, 50], -0.3, 0.2, &mut Rng::new(2)).to_vec();
        w[100..150].iter_mut().for_each(|v| *v = 0.0);
        let (codes, scales) = quantize_weight_per_channel(&w, 3, 50);
        for c in 0..3 {
            for i in 0..50 {
                let err = (codes[c * 50 + i] as f32 * scales[c] - w[c * 50 + i]).abs();
                assert!(err <= scales[c] / 2.0 + 1e-7, "channel {c}: {err} vs scale {}", scales[c]);
            }
        }
        assert_eq!(scales[2], f32::EPSILON);
    }

    #[test]
    fn minmax_observer_by_hand() {
        let mut obs = MinMaxObserver::default();
        assert_eq!(obs.range(), None);
        assert_eq!(obs.qparams(QuantDtype::UInt8), QParams { scale: 1.0, zero_point: 0, dtype: QuantDtype::UInt8 });
        obs.observe(&[1.0, f32::NAN, 4.0]);
        obs.observe(&[]);
        obs.observe(&[2.0, 3.0]);
        assert_eq!(obs.range(), Some((1.0, 4.0)));
        // torch: min extended to 0 -> scale 4/255, zero point 0
        assert_eq!(obs.qparams(QuantDtype::UInt8), QParams::affine(0.0, 4.0, QuantDtype::UInt8));
        obs.observe(&[-6.0]);
        let q = obs.qparams(QuantDtype::UInt8);
        assert_eq!(q.scale, 10.0 / 255.0);
        assert_eq!(q.zero_point, 153); // round(6 / (10 / 255)) = round(153.0)
    }

    #[test]
    fn percentile_observer_by_hand() {
        // 0, 1, ..., 9999 in two batches and two far outliers: the 99.9th percentile is
        // about 9990 and the 0.1th about 10, within a bin of the widened histogram.
        let mut obs = PercentileObserver::new(99.9);
        let a: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        let b: Vec<f32> = (5000..10000).map(|i| i as f32).collect();
        obs.observe(&a);
        obs.observe(&b);
        let (lo, hi) = obs.range().unwrap();
        let bin = 10000.0 / 2047.0 * 2.0;
        assert!((lo - 10.0).abs() <= bin && (hi - 9990.0).abs() <= bin, "{lo} {hi}");
        obs.observe(&[1e6, -1e6]);
        let (lo2, hi2) = obs.range().unwrap();
        // two values out of 10002 do not move the 0.1 % tails by more than the (now coarse) bin
        let coarse = 2e6 / 2048.0 * 2.0;
        assert!((lo2 - 10.0).abs() <= coarse && (hi2 - 9990.0).abs() <= coarse, "{lo2} {hi2}");
        // the min-max observer would take the outliers
        let mut mm = MinMaxObserver::default();
        mm.observe(&[1e6, -1e6, 3.0]);
        assert_eq!(mm.range(), Some((-1e6, 1e6)));
        // percentile 100 is the whole range
        let mut all = PercentileObserver::new(100.0);
        all.observe(&[-1.0, 0.0, 2.0]);
        assert_eq!(all.range(), Some((-1.0, 2.0)));
    }
}
