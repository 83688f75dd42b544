//! Reading safetensors: the header is parsed and every offset checked when the file is
//! opened; tensors are decoded from the memory map on demand.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use half::bf16;
use kiln_tensor::{Bf16Tensor, Float, Tensor};
use memmap2::Mmap;
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::Deserialize;

use super::dtype::{bf16_to_f32, f16_to_f32, Dtype};
use super::keymap::{KeyMap, KeyMapReport};
use super::writer::RawTensor;
use super::{io_error, is_integer_buffer, load_checked, Metadata};
use crate::error::NnError;
use crate::module::{Module, StateDict};

/// Where one tensor lives in a safetensors file, as its header declares it (checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The element type.
    pub dtype: Dtype,
    /// The dimension sizes, row-major.
    pub shape: Vec<usize>,
    /// `[begin, end)` of its bytes, relative to the start of the data section.
    pub data_offsets: (usize, usize),
}

/// The bytes of a file: memory-mapped from disk, or owned (for bytes already in memory).
pub(crate) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open safetensors file whose header has been checked: every tensor's dtype, shape and
/// `data_offsets` are consistent, inside the file, and the tensors tile the data section
/// without overlaps or holes, so that decoding a tensor cannot fail for lack of bytes and
/// never allocates more than the file holds.
///
/// [`open`](SafetensorsFile::open) memory-maps the file, so decoding a tensor copies its
/// bytes once, from the page cache into the tensor; nothing is read into an intermediate
/// buffer.
///
/// ```
/// use kiln_nn::{save_state_dict, SafetensorsFile, StateDict};
/// use kiln_tensor::Tensor;
/// let dir = std::env::temp_dir().join(format!("kiln-doc-open-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("t.safetensors");
/// let mut sd: StateDict = StateDict::new();
/// sd.insert("w".into(), Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]));
/// save_state_dict(&sd, &path, &Default::default()).unwrap();
///
/// let file = SafetensorsFile::open(&path).unwrap();
/// assert_eq!(file.info("w").unwrap().shape, [2, 2]);
/// assert_eq!(file.metadata()["kiln_version"], env!("CARGO_PKG_VERSION"));
/// let w: Tensor<f64> = file.tensor("w").unwrap(); // f32 in the file, f64 here
/// assert_eq!(w.to_vec(), [1.0, 2.0, 3.0, 4.0]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: Metadata,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("tensors", &self.tensors)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and memory-maps `path`, and checks its header.
    ///
    /// The map is read-only; as with any memory map, the file must not be truncated by
    /// another process while it is open (kiln's own saves never do that: they write a new
    /// file and rename it over the old one, which leaves the mapped one intact).
    ///
    /// # Errors
    /// [`NnError::Io`] when the file cannot be opened or mapped, and every header error of
    /// [`from_bytes`](SafetensorsFile::from_bytes), naming `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NnError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_error(path, "open", &e))?;
        let len = file.metadata().map_err(|e| io_error(path, "stat", &e))?.len();
        if len < 8 {
            return Err(NnError::FileTooShort { path: path.to_path_buf(), len });
        }
        // SAFETY: the map is only read, through `&[u8]`. memmap2 cannot stop another process
        // from truncating or rewriting the file while it is mapped; kiln's writers never do
        // (they rename a new file over the old one), and the documentation of `open` says so.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, "memory-map", &e))?;
        Self::parse(path.to_path_buf(), Bytes::Mapped(map))
    }

    /// Checks the header of a safetensors file already in memory (named `<memory>` in errors).
    ///
    /// # Errors
    /// [`NnError::FileTooShort`], [`NnError::HeaderLength`], [`NnError::HeaderNotJson`],
    /// [`NnError::BadHeader`] (missing or mistyped field, unknown dtype, begin > end, duplicate
    /// key, shape too large), [`NnError::OffsetsOutOfRange`], [`NnError::SizeMismatch`],
    /// [`NnError::OffsetsOverlap`], [`NnError::DataGap`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, NnError> {
        Self::parse(PathBuf::from("<memory>"), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, NnError> {
        let (data_start, tensors, metadata) = parse_header(&path, &bytes)?;
        Ok(SafetensorsFile { path, bytes, data_start, tensors, metadata })
    }

    /// The path it was opened from (`<memory>` for [`from_bytes`](SafetensorsFile::from_bytes)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` map (empty when the file has none).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// Every tensor's name and header entry, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The header entry of one tensor.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    fn entry(&self, key: &str) -> Result<&TensorInfo, NnError> {
        self.tensors.get(key).ok_or_else(|| NnError::NoSuchTensor { path: self.path.clone(), key: key.to_string() })
    }

    /// The raw little-endian bytes of a tensor.
    ///
    /// # Errors
    /// [`NnError::NoSuchTensor`].
    pub fn raw_bytes(&self, key: &str) -> Result<&[u8], NnError> {
        let info = self.entry(key)?;
        Ok(&self.bytes[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1])
    }

    /// A float tensor, converted to `E` (`F16`/`BF16`/`F32` exactly, `F64` to `f32` with
    /// rounding).
    ///
    /// # Errors
    /// [`NnError::NoSuchTensor`]; [`NnError::WrongDtype`] for an integer, boolean or 8-bit
    /// float dtype.
    pub fn tensor<E: Float>(&self, key: &str) -> Result<Tensor<E>, NnError> {
        let info = self.entry(key)?;
        if !info.dtype.is_float() {
            return Err(self.wrong_dtype(key, info.dtype, "a float dtype (F16, BF16, F32 or F64)"));
        }
        Ok(Tensor::from_vec(decode_float(info.dtype, self.raw_bytes(key)?), &info.shape))
    }

    /// A tensor's dtype, shape and bytes as they are in the file, whatever the dtype (the
    /// counterpart of [`save_raw`](super::save_raw)).
    ///
    /// # Errors
    /// [`NnError::NoSuchTensor`].
    pub fn raw_tensor(&self, key: &str) -> Result<RawTensor, NnError> {
        let info = self.entry(key)?;
        Ok(RawTensor { dtype: info.dtype, shape: info.shape.clone(), data: self.raw_bytes(key)?.to_vec() })
    }

    /// A float tensor as bfloat16 storage: `BF16` data bit for bit (never widened to `f32` on
    /// the way), `F16`/`F32`/`F64` rounded to nearest, ties to even.
    ///
    /// # Errors
    /// [`NnError::NoSuchTensor`]; [`NnError::WrongDtype`] for an integer, boolean or 8-bit
    /// float dtype.
    pub fn tensor_bf16(&self, key: &str) -> Result<Bf16Tensor, NnError> {
        let info = self.entry(key)?;
        let b = self.raw_bytes(key)?;
        let data: Vec<bf16> = match info.dtype {
            Dtype::BF16 => b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes(le(c)))).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| bf16::from_f32(f16_to_f32(u16::from_le_bytes(le(c))))).collect(),
            Dtype::F32 => b.chunks_exact(4).map(|c| bf16::from_f32(f32::from_le_bytes(le(c)))).collect(),
            Dtype::F64 => b.chunks_exact(8).map(|c| bf16::from_f64(f64::from_le_bytes(le(c)))).collect(),
            other => return Err(self.wrong_dtype(key, other, "a float dtype (F16, BF16, F32 or F64)")),
        };
        Ok(Bf16Tensor::from_vec(data, &info.shape))
    }

    /// An integer (or boolean) tensor as `i64`s with its shape: class labels, token ids,
    /// lengths.
    ///
    /// # Errors
    /// [`NnError::NoSuchTensor`]; [`NnError::WrongDtype`] for a float or `U64` dtype.
    pub fn tensor_i64(&self, key: &str) -> Result<(Vec<i64>, Vec<usize>), NnError> {
        let info = self.entry(key)?;
        if !info.dtype.is_integer() {
            return Err(self.wrong_dtype(
                key,
                info.dtype,
                "an integer dtype (BOOL, U8, I8, I16, U16, I32, U32 or I64)",
            ));
        }
        Ok((decode_int(info.dtype, self.raw_bytes(key)?), info.shape.clone()))
    }

    /// A parameter or buffer for a model of element type `E`: float data as
    /// [`tensor`](SafetensorsFile::tensor) reads it, and integer data only for the buffers
    /// PyTorch keeps as integers (`num_batches_tracked`), which kiln keeps as floats.
    ///
    /// # Errors
    /// [`NnError::NoSuchTensor`]; [`NnError::WrongDtype`] for non-float data under any other key.
    pub fn state_tensor<E: Float>(&self, key: &str) -> Result<Tensor<E>, NnError> {
        let info = self.entry(key)?;
        if info.dtype.is_integer() && is_integer_buffer(key) {
            let v = decode_int(info.dtype, self.raw_bytes(key)?);
            return Ok(Tensor::from_vec(v.into_iter().map(|x| E::from_f64(x as f64)).collect(), &info.shape));
        }
        if !info.dtype.is_float() {
            return Err(self.wrong_dtype(key, info.dtype, "a float dtype (F16, BF16, F32 or F64)"));
        }
        self.tensor(key)
    }

    /// Every tensor as a [`StateDict`] of `E` (integer data only for `num_batches_tracked`,
    /// as in [`state_tensor`](SafetensorsFile::state_tensor)).
    ///
    /// # Errors
    /// [`NnError::WrongDtype`] naming the first key (in sorted order) that is not float data.
    pub fn state_dict<E: Float>(&self) -> Result<StateDict<E>, NnError> {
        self.tensors.keys().map(|k| Ok((k.clone(), self.state_tensor(k)?))).collect()
    }

    /// What loading this file into `model` through `map` would match, without loading
    /// anything (a dry run of [`load_into`](SafetensorsFile::load_into)).
    ///
    /// # Errors
    /// [`NnError::KeyCollision`] when `map` sends two keys of the file to one key.
    pub fn check<E: Float>(&self, model: &dyn Module<E>, map: &KeyMap) -> Result<KeyMapReport, NnError> {
        map.report(model, self.tensors.iter().map(|(k, i)| (k.as_str(), i.shape.as_slice())))
    }

    /// Loads the file's tensors into `model`, each under the key `map` gives it.
    ///
    /// Everything is checked first (keys, shapes, dtypes), then the tensors the model needs
    /// are decoded into a complete [`StateDict`], and only then is the model written: a failed
    /// load leaves the model as it was. Keys the model does not have are not decoded, so a
    /// non-strict load ignores, say, an integer `position_ids` buffer of a foreign model.
    ///
    /// # Errors
    /// [`NnError::KeyCollision`]; [`NnError::ShapeMismatch`] for the first model key (in the
    /// model's order) whose tensor has another shape; when `strict`, [`NnError::KeyMismatch`]
    /// if the model misses a key or the file has one the model lacks; [`NnError::WrongDtype`]
    /// for a matched tensor that is not float data.
    pub fn load_into<E: Float>(
        &self,
        model: &mut dyn Module<E>,
        map: &KeyMap,
        strict: bool,
    ) -> Result<KeyMapReport, NnError> {
        let shapes = self.tensors.iter().map(|(k, i)| (k.as_str(), i.shape.as_slice()));
        load_checked(&self.path, model, map, strict, shapes, |key| self.state_tensor::<E>(key))
    }

    fn wrong_dtype(&self, key: &str, found: Dtype, expected: &str) -> NnError {
        NnError::WrongDtype {
            path: self.path.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

// --------------------------------------------------------------------------------- header

/// One tensor entry as written in the header, before checking.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

#[derive(Default)]
struct RawHeader {
    tensors: Vec<(String, RawEntry)>,
    metadata: Option<Metadata>,
}

/// Parses the header object, remembering the key being read so that an error can name it.
struct HeaderSeed<'a> {
    current: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawHeader, A::Error> {
        let mut out = RawHeader::default();
        let mut seen_metadata = false;
        while let Some(key) = m.next_key::<String>()? {
            *self.current = Some(key.clone());
            if key == "__metadata__" {
                if seen_metadata {
                    return Err(A::Error::custom("duplicate key"));
                }
                seen_metadata = true;
                // `null` is accepted as no metadata, as the reference reader does.
                out.metadata = m.next_value::<Option<Metadata>>()?;
            } else {
                out.tensors.push((key, m.next_value()?));
            }
        }
        *self.current = None;
        Ok(out)
    }
}

type Parsed = (usize, BTreeMap<String, TensorInfo>, Metadata);

/// Checks a whole file: header length, JSON, each entry, and that the tensors tile the data
/// section. Returns the data section's start, the entries and the metadata.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Parsed, NnError> {
    let p = || path.to_path_buf();
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(NnError::FileTooShort { path: p(), len: file_len });
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > file_len - 8 {
        return Err(NnError::HeaderLength { path: p(), header_len, file_len });
    }
    // Both fit in usize: they are at most the length of a slice.
    let data_start = 8 + header_len as usize;
    let data_len = file_len - 8 - header_len;
    let header = &bytes[8..data_start];

    let mut current = None;
    let mut de = serde_json::Deserializer::from_slice(header);
    let parsed = HeaderSeed { current: &mut current }.deserialize(&mut de).and_then(|h| de.end().map(|()| h));
    let raw = parsed.map_err(|e| match (e.classify(), current) {
        (serde_json::error::Category::Data, Some(key)) => NnError::BadHeader { path: p(), key, message: e.to_string() },
        _ => NnError::HeaderNotJson { path: p(), message: e.to_string() },
    })?;

    let mut tensors = BTreeMap::new();
    for (key, e) in raw.tensors {
        let bad = |message: String| NnError::BadHeader { path: p(), key: key.clone(), message };
        let dtype = Dtype::from_name(&e.dtype).ok_or_else(|| bad(format!("unknown dtype `{}`", e.dtype)))?;
        let [begin, end] = e.data_offsets;
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}) begin after they end")));
        }
        if end > data_len {
            return Err(NnError::OffsetsOutOfRange { path: p(), key, begin, end, data_len });
        }
        let needed = e.shape.iter().try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d));
        if needed != Some(end - begin) {
            return Err(NnError::SizeMismatch {
                path: p(),
                key,
                dtype: e.dtype,
                shape: e.shape,
                expected: needed,
                found: end - begin,
            });
        }
        // A dimension can still be huge when another is zero; kiln's strides multiply the
        // non-zero sizes, so their product has to fit an isize.
        let strided = e.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)));
        if strided.is_none_or(|n| n > isize::MAX as u64) {
            return Err(bad(format!("shape {:?} is too large", e.shape)));
        }
        let info = TensorInfo {
            dtype,
            shape: e.shape.iter().map(|&d| d as usize).collect(),
            data_offsets: (begin as usize, end as usize),
        };
        if tensors.insert(key.clone(), info).is_some() {
            return Err(bad("duplicate key".to_string()));
        }
    }

    // The tensors must tile the data section: no overlaps, no holes, nothing after the last.
    let mut spans: Vec<(usize, usize, &str)> =
        tensors.iter().map(|(k, i)| (i.data_offsets.0, i.data_offsets.1, k.as_str())).collect();
    spans.sort_unstable();
    let mut at = 0usize;
    let mut previous: Option<(usize, usize, &str)> = None;
    for &(begin, end, key) in &spans {
        if begin < at {
            let (ob, oe, other) = previous.expect("`at` > 0 only after a tensor");
            return Err(NnError::OffsetsOverlap {
                path: p(),
                key: key.to_string(),
                begin: begin as u64,
                end: end as u64,
                other: other.to_string(),
                other_begin: ob as u64,
                other_end: oe as u64,
            });
        }
        if begin > at {
            return Err(NnError::DataGap { path: p(), begin: at as u64, end: begin as u64 });
        }
        at = end;
        previous = Some((begin, end, key));
    }
    if (at as u64) < data_len {
        return Err(NnError::DataGap { path: p(), begin: at as u64, end: data_len });
    }
    Ok((data_start, tensors, raw.metadata.unwrap_or_default()))
}

// --------------------------------------------------------------------------------- decoding

/// `Vec<S>` as `Vec<E>` when they are the same type (checked by the caller), without a copy.
fn same_type<S: 'static, E: 'static>(v: Vec<S>) -> Vec<E> {
    *(Box::new(v) as Box<dyn Any>).downcast::<Vec<E>>().expect("caller checked the types are equal")
}

fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    c.try_into().expect("chunks_exact gives N bytes")
}

/// Decodes float data of a checked length. An `F32` file read as `f32` (and `F64` as `f64`)
/// keeps every bit, NaN payloads included.
pub(crate) fn decode_float<E: Float>(dtype: Dtype, b: &[u8]) -> Vec<E> {
    match dtype {
        Dtype::F32 if TypeId::of::<E>() == TypeId::of::<f32>() => {
            same_type(b.chunks_exact(4).map(|c| f32::from_le_bytes(le(c))).collect::<Vec<f32>>())
        }
        Dtype::F64 if TypeId::of::<E>() == TypeId::of::<f64>() => {
            same_type(b.chunks_exact(8).map(|c| f64::from_le_bytes(le(c))).collect::<Vec<f64>>())
        }
        Dtype::F32 => b.chunks_exact(4).map(|c| E::from_f64(f64::from(f32::from_le_bytes(le(c))))).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| E::from_f64(f64::from_le_bytes(le(c)))).collect(),
        Dtype::F16 => {
            b.chunks_exact(2).map(|c| E::from_f64(f64::from(f16_to_f32(u16::from_le_bytes(le(c)))))).collect()
        }
        Dtype::BF16 => {
            b.chunks_exact(2).map(|c| E::from_f64(f64::from(bf16_to_f32(u16::from_le_bytes(le(c)))))).collect()
        }
        other => unreachable!("decode_float: {other} is not a float dtype"),
    }
}

/// Decodes integer data of a checked length.
pub(crate) fn decode_int(dtype: Dtype, b: &[u8]) -> Vec<i64> {
    match dtype {
        Dtype::Bool | Dtype::U8 => b.iter().map(|&x| i64::from(x)).collect(),
        Dtype::I8 => b.iter().map(|&x| i64::from(x as i8)).collect(),
        Dtype::I16 => b.chunks_exact(2).map(|c| i64::from(i16::from_le_bytes(le(c)))).collect(),
        Dtype::U16 => b.chunks_exact(2).map(|c| i64::from(u16::from_le_bytes(le(c)))).collect(),
        Dtype::I32 => b.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(le(c)))).collect(),
        Dtype::U32 => b.chunks_exact(4).map(|c| i64::from(u32::from_le_bytes(le(c)))).collect(),
        Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(le(c))).collect(),
        other => unreachable!("decode_int: {other} is not an integer dtype"),
    }
}
