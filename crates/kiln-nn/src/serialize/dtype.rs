//! The element types a safetensors file can declare, and their conversion to kiln's floats.

use std::fmt;

use kiln_tensor::Float;

/// An element type as written in a safetensors header (`"dtype": "F32"`).
///
/// kiln computes in `f32` or `f64`; it reads the float dtypes ([`F16`](Dtype::F16),
/// [`BF16`](Dtype::BF16), [`F32`](Dtype::F32), [`F64`](Dtype::F64)) into either, and the
/// integer ones only where the data is a count or a label
/// ([`SafetensorsFile::tensor_i64`](super::SafetensorsFile::tensor_i64), BatchNorm's
/// `num_batches_tracked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// Boolean, one byte per element (0 or 1).
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float with 5 exponent bits (`F8_E5M2`).
    F8E5M2,
    /// 8-bit float with 4 exponent bits (`F8_E4M3`).
    F8E4M3,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16 (the top half of an `f32`).
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer (PyTorch's `long`).
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every dtype, in the order above.
    pub const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name written in the header (`"F32"`, `"BOOL"`, `"F8_E4M3"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// The dtype a header name stands for, `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Whether kiln reads this dtype as float data (`F16`, `BF16`, `F32`, `F64`).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }

    /// Whether kiln reads this dtype as integer data (`BOOL`, `U8`..`I64`; not `U64`, whose
    /// values need not fit an `i64`).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::I16 | Dtype::U16 | Dtype::I32 | Dtype::U32 | Dtype::I64
        )
    }

    /// The dtype kiln writes for an element type.
    pub fn of<E: Float>() -> Dtype {
        match E::DTYPE {
            kiln_tensor::DType::F32 => Dtype::F32,
            kiln_tensor::DType::F64 => Dtype::F64,
            kiln_tensor::DType::BF16 => Dtype::BF16,
        }
    }
}

impl Dtype {
    /// Little-endian elements of this dtype as `f64`s (exact for every dtype but `I64`/`U64`
    /// beyond 2^53 and the 8-bit floats, which are decoded exactly too: every `F8` is an `f64`).
    /// Trailing bytes that do not fill an element are ignored.
    ///
    /// ```
    /// use kiln_nn::serialize::Dtype;
    /// assert_eq!(Dtype::BF16.to_f64(&[0x80, 0x3f, 0x49, 0xc0]), [1.0, -3.140625]);
    /// assert_eq!(Dtype::I32.to_f64(&(-7i32).to_le_bytes()), [-7.0]);
    /// ```
    #[must_use]
    pub fn to_f64(self, bytes: &[u8]) -> Vec<f64> {
        let n = self.size();
        bytes
            .chunks_exact(n)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..n].copy_from_slice(c);
                let u = u64::from_le_bytes(a);
                match self {
                    Dtype::Bool | Dtype::U8 | Dtype::U16 | Dtype::U32 => u as f64,
                    Dtype::U64 => u as f64,
                    Dtype::I8 => f64::from(c[0] as i8),
                    Dtype::I16 => f64::from(u as u16 as i16),
                    Dtype::I32 => f64::from(u as u32 as i32),
                    Dtype::I64 => u as i64 as f64,
                    Dtype::F16 => f64::from(f16_to_f32(u as u16)),
                    Dtype::BF16 => f64::from(bf16_to_f32(u as u16)),
                    Dtype::F32 => f64::from(f32::from_bits(u as u32)),
                    Dtype::F64 => f64::from_bits(u),
                    Dtype::F8E4M3 => f8_to_f64(c[0], 4, 7),
                    Dtype::F8E5M2 => f8_to_f64(c[0], 5, 15),
                }
            })
            .collect()
    }
}

/// An 8-bit float with `exp_bits` exponent bits and bias `bias` (E4M3: no infinities, 0x7f/0xff NaN).
fn f8_to_f64(b: u8, exp_bits: u32, bias: i32) -> f64 {
    let man_bits = 7 - exp_bits;
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> man_bits) & ((1 << exp_bits) - 1));
    let man = f64::from(b & ((1 << man_bits) - 1));
    let max_exp = (1 << exp_bits) - 1;
    if exp_bits == 4 && b & 0x7f == 0x7f {
        return f64::NAN;
    }
    if exp_bits == 5 && exp == max_exp {
        return if man == 0.0 { sign * f64::INFINITY } else { f64::NAN };
    }
    let scale = f64::from(1u32 << man_bits);
    if exp == 0 {
        sign * man / scale * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + man / scale) * 2f64.powi(exp - bias)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IEEE half → single, exactly (every half is an `f32`).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let mant = u32::from(h & 0x3ff);
    match exp {
        // Zero and subnormals: mant * 2^-24 (exact in f32).
        0 => sign * (mant as f32) * f32::from_bits(0x3380_0000),
        // Infinities and NaNs keep their payload in the top mantissa bits.
        0x1f => f32::from_bits((u32::from(h & 0x8000) << 16) | 0x7f80_0000 | (mant << 13)),
        // Normal: rebias the exponent from 15 to 127.
        _ => f32::from_bits((u32::from(h & 0x8000) << 16) | ((u32::from(exp) + 112) << 23) | (mant << 13)),
    }
}

/// bfloat16 → single, exactly (bf16 is the top half of an `f32`).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.as_str()), Some(d));
        }
        assert_eq!(Dtype::from_name("f32"), None);
        assert_eq!(Dtype::F64.size(), 8);
        assert_eq!(Dtype::BF16.size(), 2);
        assert_eq!(Dtype::of::<f32>(), Dtype::F32);
        assert_eq!(Dtype::of::<f64>(), Dtype::F64);
    }

    #[test]
    fn half_conversions_are_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc049), -3.140625);
    }
}
