//! Writing safetensors: the header is planned (and checked) before a byte is written, then the
//! tensors are streamed out in bounded chunks, never as one copy of the whole file.

use std::any::Any;
use std::io::{self, Write};
use std::path::Path;

use kiln_tensor::{Float, Tensor};

use super::dtype::Dtype;
use super::{is_integer_buffer, Metadata};
use crate::error::NnError;
use crate::module::StateDict;

/// The largest integer every `f64` below it represents exactly; counts beyond it are not
/// written as `I64`.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// How one tensor goes to disk.
enum Encoding {
    /// In the tensor's own float type.
    Float,
    /// As `I64`, PyTorch's type for counts (`num_batches_tracked`).
    Int,
}

/// A checked layout of a file: the header bytes (padded) and the tensors in data order.
pub(crate) struct Plan<'a, E: Float> {
    header: Vec<u8>,
    tensors: Vec<(&'a Tensor<E>, Encoding)>,
}

impl<'a, E: Float> Plan<'a, E> {
    /// Lays out `state` with `metadata` (which the caller has completed with `kiln_version`).
    ///
    /// Tensors are ordered by element size (largest first), then by key, as the reference
    /// writer does, so that every tensor starts aligned to its element size when the data
    /// section starts at a multiple of 8 (the header is padded with spaces to make it so).
    ///
    /// # Errors
    /// [`NnError::BadHeader`] for a tensor named `__metadata__`, which the format reserves.
    pub(crate) fn new(path: &Path, state: &'a StateDict<E>, metadata: &Metadata) -> Result<Self, NnError> {
        let mut entries: Vec<(&'a str, &'a Tensor<E>, Dtype, Encoding)> = Vec::with_capacity(state.len());
        for (key, t) in state {
            if key == "__metadata__" {
                return Err(NnError::BadHeader {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    message: "`__metadata__` is reserved by the safetensors format for the metadata map".into(),
                });
            }
            let (dtype, enc) = if is_integer_buffer(key) && holds_exact_integers(t) {
                (Dtype::I64, Encoding::Int)
            } else {
                (Dtype::of::<E>(), Encoding::Float)
            };
            entries.push((key, t, dtype, enc));
        }
        entries.sort_by(|a, b| b.2.size().cmp(&a.2.size()).then_with(|| a.0.cmp(b.0)));

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
        for (key, t, dtype, _) in &entries {
            let end = at + t.numel() * dtype.size();
            let shape: Vec<String> = t.shape().iter().map(usize::to_string).collect();
            json.push_str(&format!(
                ",{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{at},{end}]}}",
                quote(key),
                shape.join(",")
            ));
            at = end;
        }
        json.push('}');
        // Pad with spaces (JSON whitespace) so that the data section starts at a multiple of 8.
        while (8 + json.len()) % 8 != 0 {
            json.push(' ');
        }
        let mut header = Vec::with_capacity(8 + json.len());
        header.extend_from_slice(&(json.len() as u64).to_le_bytes());
        header.extend_from_slice(json.as_bytes());
        Ok(Plan { header, tensors: entries.into_iter().map(|(_, t, _, enc)| (t, enc)).collect() })
    }

    /// Writes the file to `w`, converting at most 64 KiB at a time.
    pub(crate) fn write<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.header)?;
        let mut buf = Vec::with_capacity(CHUNK * 8);
        for (t, enc) in &self.tensors {
            match enc {
                Encoding::Int => {
                    for chunk in t.to_vec().chunks(CHUNK) {
                        buf.clear();
                        for x in chunk {
                            buf.extend_from_slice(&(Float::to_f64(*x) as i64).to_le_bytes());
                        }
                        w.write_all(&buf)?;
                    }
                }
                Encoding::Float => write_floats(w, t, &mut buf)?,
            }
        }
        Ok(())
    }
}

/// Elements converted per `write_all`.
const CHUNK: usize = 8192;

/// Writes the elements of `t` in its own type, every bit kept (NaN payloads too: an `f32`
/// never passes through `f64` on the way).
fn write_floats<E: Float, W: Write + ?Sized>(w: &mut W, t: &Tensor<E>, buf: &mut Vec<u8>) -> io::Result<()> {
    let t = t.contiguous();
    if let Some(t32) = (&t as &dyn Any).downcast_ref::<Tensor<f32>>() {
        let s = t32.as_slice().expect("contiguous");
        for chunk in s.chunks(CHUNK) {
            buf.clear();
            chunk.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            w.write_all(buf)?;
        }
    } else {
        // f64, or any other float type, which is written as its f64 value (Dtype::of says F64).
        let s = t.as_slice().expect("contiguous");
        for chunk in s.chunks(CHUNK) {
            buf.clear();
            chunk.iter().for_each(|x| buf.extend_from_slice(&Float::to_f64(*x).to_le_bytes()));
            w.write_all(buf)?;
        }
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
