//! Writing safetensors: the header is planned (and checked) before a byte is written, then the
//! tensors are streamed out in bounded chunks, never as one copy of the whole file.

use std::any::Any;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use half::{bf16, f16};
use kiln_tensor::{Float, Tensor};

use super::dtype::Dtype;
use super::{is_integer_buffer, Metadata};
use crate::error::NnError;
use crate::module::StateDict;

/// The largest integer every `f64` below it represents exactly; counts beyond it are not
/// written as `I64`.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// One tensor given as bytes already encoded in its dtype: data that is not a float parameter
/// (kiln-quant's `I8` codes and `I32` zero points, labels, an optimiser's `I64` step counts,
/// a [`Bf16Tensor`](kiln_tensor::Bf16Tensor)'s bits), written by [`save_raw`](super::save_raw)
/// and read back by [`SafetensorsFile::raw_tensor`](super::SafetensorsFile::raw_tensor).
///
/// ```
/// use kiln_nn::serialize::{Dtype, RawTensor};
/// let codes = RawTensor::new(Dtype::I8, vec![2, 2], vec![1, 255, 0, 127]);
/// assert_eq!(codes.shape, [2, 2]);
/// let steps = RawTensor::from_i64(&[3], &[]);
/// assert_eq!(steps.data, 3i64.to_le_bytes());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTensor {
    /// The element type the bytes are in.
    pub dtype: Dtype,
    /// The dimension sizes, row-major.
    pub shape: Vec<usize>,
    /// The elements, little-endian, row-major.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// A tensor of `dtype` and `shape` holding `data`.
    ///
    /// **Panics** if `data` does not hold exactly the shape's element count in `dtype`.
    #[must_use]
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(
            n * dtype.size(),
            data.len(),
            "RawTensor::new: {dtype} {shape:?} needs {} bytes, got {}",
            n * dtype.size(),
            data.len()
        );
        RawTensor { dtype, shape, data }
    }

    /// `F32` values.
    ///
    /// **Panics** if `values.len()` differs from the shape's element count.
    #[must_use]
    pub fn from_f32(values: &[f32], shape: &[usize]) -> Self {
        Self::new(Dtype::F32, shape.to_vec(), values.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// `I64` values.
    ///
    /// **Panics** if `values.len()` differs from the shape's element count.
    #[must_use]
    pub fn from_i64(values: &[i64], shape: &[usize]) -> Self {
        Self::new(Dtype::I64, shape.to_vec(), values.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// The bits of a bfloat16 tensor, as `BF16` (nothing widened or rounded).
    #[must_use]
    pub fn from_bf16(t: &kiln_tensor::Bf16Tensor) -> Self {
        Self::new(
            Dtype::BF16,
            t.shape().to_vec(),
            t.as_slice().iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        )
    }
}

/// How one tensor goes to disk.
enum Source<'a, E: Float> {
    /// Float values, converted to the entry's float dtype (rounded to nearest, ties to even,
    /// when it is narrower than `E`).
    Float(&'a Tensor<E>),
    /// Whole-number floats as `I64`, PyTorch's type for counts (`num_batches_tracked`).
    Int(&'a Tensor<E>),
    /// Bytes already encoded in the entry's dtype.
    Raw(&'a [u8]),
}

/// One tensor of a planned file.
struct Entry<'a, E: Float> {
    key: &'a str,
    dtype: Dtype,
    shape: Vec<usize>,
    source: Source<'a, E>,
}

/// A checked layout of a file: the header bytes (padded) and the tensors in data order.
pub(crate) struct Plan<'a, E: Float> {
    header: Vec<u8>,
    tensors: Vec<(Dtype, Source<'a, E>)>,
}

impl<'a, E: Float> Plan<'a, E> {
    /// Lays out `state` with `metadata` (which the caller has completed with `kiln_version`),
    /// its float tensors as `float_dtype` (`F16`, `BF16`, `F32` or `F64`).
    ///
    /// # Errors
    /// [`NnError::BadHeader`] for a tensor named `__metadata__`, which the format reserves.
    pub(crate) fn new(
        path: &Path,
        state: &'a StateDict<E>,
        metadata: &Metadata,
        float_dtype: Dtype,
    ) -> Result<Self, NnError> {
        assert!(float_dtype.is_float(), "save: {float_dtype} is not a float dtype (F16, BF16, F32 or F64)");
        let entries = state
            .iter()
            .map(|(key, t)| {
                let (dtype, source) = if is_integer_buffer(key) && holds_exact_integers(t) {
                    (Dtype::I64, Source::Int(t))
                } else {
                    (float_dtype, Source::Float(t))
                };
                Entry { key, dtype, shape: t.shape().to_vec(), source }
            })
            .collect();
        Self::lay_out(path, entries, metadata)
    }

    /// The tensors of a file as they come, neither ordered nor checked.
    fn lay_out(path: &Path, mut entries: Vec<Entry<'a, E>>, metadata: &Metadata) -> Result<Self, NnError> {
        if let Some(e) = entries.iter().find(|e| e.key == "__metadata__") {
            return Err(NnError::BadHeader {
                path: path.to_path_buf(),
                key: e.key.to_string(),
                message: "`__metadata__` is reserved by the safetensors format for the metadata map".into(),
            });
        }
        // By element size (largest first), then by key, as the reference writer does, so that
        // every tensor starts aligned to its element size when the data section starts at a
        // multiple of 8 (the header is padded with spaces to make it so).
        entries.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then_with(|| a.key.cmp(b.key)));

        let mut json = String::from("{\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&quote(k));
            json.push(':');
            json.push_str(&quote(v));
        }
        json.push('}');
        let mut at = 0usize;
        for e in &entries {
            let end = at + e.shape.iter().product::<usize>() * e.dtype.size();
            let shape: Vec<String> = e.shape.iter().map(usize::to_string).collect();
            json.push_str(&format!(
                ",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{at},{end}]}}",
                quote(e.key),
                e.dtype,
                shape.join(",")
            ));
            at = end;
        }
        json.push('}');
        while (8 + json.len()) % 8 != 0 {
            json.push(' ');
        }
        let mut header = Vec::with_capacity(8 + json.len());
        header.extend_from_slice(&(json.len() as u64).to_le_bytes());
        header.extend_from_slice(json.as_bytes());
        Ok(Plan { header, tensors: entries.into_iter().map(|e| (e.dtype, e.source)).collect() })
    }

    /// Writes the file to `w`, converting at most 64 KiB at a time.
    pub(crate) fn write<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.header)?;
        let mut buf = Vec::with_capacity(CHUNK * 8);
        for (dtype, source) in &self.tensors {
            match source {
                Source::Int(t) => {
                    for chunk in t.to_vec().chunks(CHUNK) {
                        buf.clear();
                        for x in chunk {
                            buf.extend_from_slice(&(Float::to_f64(*x) as i64).to_le_bytes());
                        }
                        w.write_all(&buf)?;
                    }
                }
                Source::Float(t) => write_floats(w, t, *dtype, &mut buf)?,
                Source::Raw(bytes) => w.write_all(bytes)?,
            }
        }
        Ok(())
    }
}

impl<'a> Plan<'a, f32> {
    /// Lays out tensors given as encoded bytes.
    pub(crate) fn raw(
        path: &Path,
        tensors: &'a BTreeMap<String, RawTensor>,
        metadata: &Metadata,
    ) -> Result<Self, NnError> {
        let entries = tensors
            .iter()
            .map(|(key, t)| Entry { key, dtype: t.dtype, shape: t.shape.clone(), source: Source::Raw(&t.data) })
            .collect();
        Self::lay_out(path, entries, metadata)
    }
}

/// Elements converted per `write_all`.
const CHUNK: usize = 8192;

/// Writes the elements of `t` as `dtype`. An `f32` tensor written as `F32` (and `f64` as
/// `F64`) keeps every bit, NaN payloads too: it never passes through another type on the way.
/// A narrower dtype rounds each element to nearest, ties to even (as PyTorch's `.half()` and
/// `.bfloat16()` do), directly from `E`'s value (no double rounding through `f32`).
fn write_floats<E: Float, W: Write + ?Sized>(
    w: &mut W,
    t: &Tensor<E>,
    dtype: Dtype,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let t = t.contiguous();
    if let Some(t32) = (&t as &dyn Any).downcast_ref::<Tensor<f32>>() {
        let s = t32.as_slice().expect("contiguous");
        return match dtype {
            Dtype::F32 => encode(w, s, buf, |x, b| b.extend(x.to_le_bytes())),
            Dtype::BF16 => encode(w, s, buf, |x, b| b.extend(bf16::from_f32(*x).to_le_bytes())),
            Dtype::F16 => encode(w, s, buf, |x, b| b.extend(f16::from_f32(*x).to_le_bytes())),
            _ => encode(w, s, buf, |x, b| b.extend(f64::from(*x).to_le_bytes())),
        };
    }
    // f64 (or any other element type, through its f64 value).
    let s = t.as_slice().expect("contiguous");
    match dtype {
        Dtype::F32 => encode(w, s, buf, |x, b| b.extend((Float::to_f64(*x) as f32).to_le_bytes())),
        Dtype::BF16 => encode(w, s, buf, |x, b| b.extend(bf16::from_f64(Float::to_f64(*x)).to_le_bytes())),
        Dtype::F16 => encode(w, s, buf, |x, b| b.extend(f16::from_f64(Float::to_f64(*x)).to_le_bytes())),
        _ => encode(w, s, buf, |x, b| b.extend(Float::to_f64(*x).to_le_bytes())),
    }
}

/// Writes `s` through `w`, [`CHUNK`] elements at a time, each appended to `buf` by `put`.
fn encode<T, W: Write + ?Sized>(
    w: &mut W,
    s: &[T],
    buf: &mut Vec<u8>,
    put: impl Fn(&T, &mut Vec<u8>),
) -> io::Result<()> {
    for chunk in s.chunks(CHUNK) {
        buf.clear();
        chunk.iter().for_each(|x| put(x, buf));
        w.write_all(buf)?;
    }
    Ok(())
}

/// Whether every element is a whole number that `I64` and back keeps bit for bit (so not
/// `-0.0`).
fn holds_exact_integers<E: Float>(t: &Tensor<E>) -> bool {
    t.to_vec().iter().all(|x| {
        let v = Float::to_f64(*x);
        v.fract() == 0.0 && v.abs() <= EXACT_INT && !(v == 0.0 && v.is_sign_negative())
    })
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}
