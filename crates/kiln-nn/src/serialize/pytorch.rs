//! Reading PyTorch checkpoints (`torch.save` files, `.pt` / `.pth`) without running them.
//!
//! Both formats `torch.save` writes are read:
//! - the zip format (the default since PyTorch 1.6): a stored zip archive whose records sit
//!   in one folder (`archive/`, or the file's stem: taken from the first record, never
//!   assumed): `data.pkl`, the pickled object, and `data/<key>`, each storage's raw
//!   little-endian bytes;
//! - the legacy format (`_use_new_zipfile_serialization=False`): five pickles back to back
//!   (magic number, protocol version, system info, the object, the list of storage keys),
//!   then each storage as an `i64` element count followed by its bytes.
//!
//! The pickle runs on kiln-pickle's machine, which executes nothing, with the allow-list of
//! `torch.load(weights_only=True)`: a global outside [`ALLOWED_GLOBALS`] (`os.system`,
//! `builtins.eval`, anything in `builtins`) is refused with [`NnError::ForbiddenGlobal`]
//! when the pickle names it, and the whole file is refused.
//!
//! Tensors keep PyTorch's layout: a storage, an offset and strides counted in elements, so
//! views (`x[2:]`, `x.t()`, `x[1:3, 2:5]`) and tensors sharing one storage read what PyTorch
//! reads. Reading a tensor copies its elements, in row-major order, out of the file's bytes
//! (memory-mapped for [`PtFile::open`]); two names of one tensor object (the pickle refers
//! back to it) have the same [`PtTensor::id`].
//!
//! Bounds: every storage is checked against the bytes the file holds when it is opened, and
//! every tensor against its storage (offset and strides inside it, no more elements than
//! it has), so that reading one cannot allocate more than its storage; the value tree built
//! from the pickle is limited to a few times the pickle's size, so references back to shared
//! values cannot amplify it; and a full read ([`PtFile::state_dict`], [`PtFile::load_into`])
//! refuses tensors totalling more than [`MAX_EXPANSION`] times the file's size.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use kiln_pickle::{Object, Options, Pickle, PickleError, Value};
use kiln_tensor::{Float, Tensor};
use memmap2::Mmap;

use super::dtype::Dtype;
use super::keymap::{KeyMap, KeyMapReport};
use super::reader::{decode_float, decode_int, Bytes};
use super::{io_error, is_integer_buffer, load_checked};
use crate::error::NnError;
use crate::module::{Module, StateDict};

/// The globals a checkpoint's pickle may name: what `torch.load(weights_only=True)` allows
/// for plain tensors and containers. Anything else is refused.
pub const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    "_codecs.encode",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.float16",
    "torch.bfloat16",
    "torch.float32",
    "torch.float64",
    "torch.int64",
    "torch.int32",
    "torch.int16",
    "torch.int8",
    "torch.uint8",
    "torch.bool",
];

/// A full read may produce at most this many times the file's size in tensor bytes (views
/// of one storage are each copied out; see the [module docs](self)).
pub const MAX_EXPANSION: u64 = 8;

/// How deep containers may nest (deeper is refused rather than risking the stack).
const MAX_DEPTH: usize = 256;

fn allowed(module: &str, name: &str) -> bool {
    ALLOWED_GLOBALS.iter().any(|g| g.strip_prefix(module).and_then(|r| r.strip_prefix('.')) == Some(name))
}

fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::Bool,
        _ => return None,
    })
}

/// A value of a checkpoint: Python's containers and scalars, and tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum PtValue {
    /// `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// An `int` beyond 64 bits, as its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A `float`.
    Float(f64),
    /// A `str` (and `torch.float32`-style dtype names, as `"torch.float32"`).
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<PtValue>),
    /// A `tuple` (and `torch.Size`).
    Tuple(Vec<PtValue>),
    /// A `dict` or `OrderedDict`, in order.
    Dict(Vec<(PtValue, PtValue)>),
    /// A tensor or parameter.
    Tensor(PtTensor),
}

impl PtValue {
    /// The text of a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PtValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of an `Int`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PtValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A `Float` (or an `Int`) as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PtValue::Float(f) => Some(*f),
            PtValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The tensor of a `Tensor`.
    pub fn as_tensor(&self) -> Option<&PtTensor> {
        match self {
            PtValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The value under `key` of a dict (string keys, or integer keys written in decimal), or
    /// at index `key` of a list or tuple.
    pub fn child(&self, key: &str) -> Option<&PtValue> {
        match self {
            PtValue::Dict(d) => d.iter().rev().find(|(k, _)| key_text(k).as_deref() == Some(key)).map(|(_, v)| v),
            PtValue::List(l) | PtValue::Tuple(l) => l.get(key.parse::<usize>().ok()?),
            _ => None,
        }
    }

    /// The value at a dotted path (`"optimizer.param_groups.0.lr"`). A dict key may hold dots
    /// itself (`"model.0.weight"` finds `"0.weight"` inside `"model"`): at each dict, the
    /// longest run of components that is one of its keys is taken.
    ///
    /// `""` is the value itself.
    pub fn get(&self, path: &str) -> Option<&PtValue> {
        if path.is_empty() {
            return Some(self);
        }
        let parts: Vec<&str> = path.split('.').collect();
        let mut at = self;
        let mut i = 0;
        while i < parts.len() {
            let mut found = None;
            for j in (i + 1..=parts.len()).rev() {
                if let Some(v) = at.child(&parts[i..j].join(".")) {
                    found = Some((v, j));
                    break;
                }
            }
            let (v, j) = found?;
            at = v;
            i = j;
        }
        Some(at)
    }

    /// Every tensor under this value with its dotted key (`"model.0.weight"`,
    /// `"optimizer.state.0.exp_avg"`), in the order they appear.
    pub fn tensors(&self) -> Vec<(String, &PtTensor)> {
        let mut out = Vec::new();
        collect_tensors(self, String::new(), &mut out);
        out
    }

    /// A short description for listings: `OrderedDict of 9`, `3`, `"text"`.
    pub fn describe(&self) -> String {
        match self {
            PtValue::None => "None".into(),
            PtValue::Bool(b) => if *b { "True" } else { "False" }.into(),
            PtValue::Int(i) => i.to_string(),
            PtValue::BigInt(b) => format!("a {}-byte integer", b.len()),
            PtValue::Float(f) => format!("{f:?}"),
            PtValue::Str(s) => format!("{s:?}"),
            PtValue::Bytes(b) => format!("{} bytes", b.len()),
            PtValue::List(l) => format!("list of {}", l.len()),
            PtValue::Tuple(t) => format!("tuple of {}", t.len()),
            PtValue::Dict(d) => format!("dict of {}", d.len()),
            PtValue::Tensor(t) => t.to_string(),
        }
    }
}

/// A dict key as path text: strings as they are, integers in decimal, others `None`.
fn key_text(k: &PtValue) -> Option<String> {
    match k {
        PtValue::Str(s) => Some(s.clone()),
        PtValue::Int(i) => Some(i.to_string()),
        PtValue::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
        _ => None,
    }
}

fn collect_tensors<'a>(v: &'a PtValue, prefix: String, out: &mut Vec<(String, &'a PtTensor)>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        PtValue::Tensor(t) => out.push((prefix, t)),
        PtValue::Dict(d) => {
            for (k, v) in d {
                if let Some(k) = key_text(k) {
                    collect_tensors(v, join(&k), out);
                }
            }
        }
        PtValue::List(l) | PtValue::Tuple(l) => {
            for (i, v) in l.iter().enumerate() {
                collect_tensors(v, join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// A tensor of a checkpoint: where its elements are, as PyTorch records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtTensor {
    /// The element type (from the storage's class, `torch.FloatStorage` → `F32`).
    pub dtype: Dtype,
    /// The dimension sizes (`[]` for a 0-d tensor).
    pub shape: Vec<usize>,
    /// The strides, in elements.
    pub stride: Vec<usize>,
    /// The offset of element `[0, ..., 0]` in the storage, in elements.
    pub storage_offset: usize,
    /// The storage's index in [`PtFile::storages`]; tensors that share one share memory in
    /// PyTorch.
    pub storage: usize,
    /// Whether it was saved as a parameter requiring gradients.
    pub requires_grad: bool,
    /// Identifies the tensor object: two names with the same id are one tensor in PyTorch.
    pub id: usize,
}

impl PtTensor {
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the elements lie row-major without gaps from the offset on.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }
}

impl fmt::Display for PtTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.dtype, self.shape)
    }
}

/// One storage of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtStorage {
    /// Its key in the file (`"0"`, or a memory address in the legacy format).
    pub key: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its number of elements.
    pub numel: usize,
    data: StorageData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum StorageData {
    /// Bytes `[begin, end)` of the file.
    Range(usize, usize),
    /// Bytes decompressed from a deflated zip record.
    Owned(Vec<u8>),
}

/// Which of `torch.save`'s formats a file is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtFormat {
    /// The zip format, with the folder its records sit in (`"cnn_state_dict/"`).
    Zip {
        /// The records' folder, with its trailing `/`.
        prefix: String,
    },
    /// The legacy format (`_use_new_zipfile_serialization=False`), with its protocol version.
    Legacy {
        /// `torch.save`'s protocol version (1001).
        protocol_version: i64,
    },
}

/// An open PyTorch checkpoint: its object, with tensors as [`PtTensor`]s, and its storages,
/// all checked.
///
/// ```no_run
/// use kiln_nn::serialize::PtFile;
/// let ckpt = PtFile::open("checkpoint.pt").unwrap();
/// let lr = ckpt.get("optimizer.param_groups.0.lr").and_then(|v| v.as_f64());
/// let weights = ckpt.state_dict::<f32>().unwrap(); // "model" of {"model": ..., "epoch": ...}
/// ```
pub struct PtFile {
    path: PathBuf,
    bytes: Bytes,
    format: PtFormat,
    storages: Vec<PtStorage>,
    root: PtValue,
}

impl fmt::Debug for PtFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PtFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("storages", &self.storages.len())
            .field("root", &self.root.describe())
            .finish()
    }
}

/// Whether `bytes` start like a file `torch.save` writes (a zip local header, or the legacy
/// format's pickled magic number).
pub fn looks_like_pytorch(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(LEGACY_MAGIC_PICKLE)
}

/// `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)` without its `STOP`.
const LEGACY_MAGIC_PICKLE: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

impl PtFile {
    /// Opens and memory-maps `path` and reads it completely: the pickle, every storage
    /// (checked against the file), every tensor (checked against its storage).
    ///
    /// # Errors
    /// [`NnError::Io`] when it cannot be read; those of [`from_bytes`](PtFile::from_bytes),
    /// naming `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NnError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_error(path, "open", &e))?;
        let len = file.metadata().map_err(|e| io_error(path, "stat", &e))?.len();
        let bytes = if len == 0 {
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: read-only map, read through `&[u8]`; as for safetensors files, the file
            // must not be truncated by another process while it is open.
            Bytes::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, "memory-map", &e))?)
        };
        Self::parse(path.to_path_buf(), bytes)
    }

    /// Reads a checkpoint already in memory (named `<memory>` in errors).
    ///
    /// # Errors
    /// [`NnError::ForbiddenGlobal`] for a pickle naming a global outside [`ALLOWED_GLOBALS`];
    /// [`NnError::Checkpoint`] for anything else that is wrong (not a zip or legacy file, a
    /// malformed pickle or zip, a missing or short storage record, a tensor outside its
    /// storage, a call the reader does not know), with the record and byte offset.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, NnError> {
        Self::parse(PathBuf::from("<memory>"), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, NnError> {
        let (format, storages, root) = if bytes.starts_with(b"PK\x03\x04") {
            read_zip(&path, &bytes)?
        } else if bytes.starts_with(LEGACY_MAGIC_PICKLE) {
            read_legacy(&path, &bytes)?
        } else {
            let found = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
            return Err(checkpoint(
                &path,
                "",
                format!(
                    "not a PyTorch checkpoint: expected a zip archive (PK\\x03\\x04) or the legacy \
                     format's magic number, found bytes {found}"
                ),
            ));
        };
        Ok(PtFile { path, bytes, format, storages, root })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which of `torch.save`'s formats it is in.
    pub fn format(&self) -> &PtFormat {
        &self.format
    }

    /// The object that was saved.
    pub fn root(&self) -> &PtValue {
        &self.root
    }

    /// The storages, in the order the pickle first names them.
    pub fn storages(&self) -> &[PtStorage] {
        &self.storages
    }

    /// The value at a dotted path of the saved object (see [`PtValue::get`]).
    pub fn get(&self, path: &str) -> Option<&PtValue> {
        self.root.get(path)
    }

    /// Where the model's weights are: the saved object itself when tensors sit directly in
    /// it (a `state_dict()`), else the first of `state_dict`, `model_state_dict`, `model`,
    /// `module`, `net` that does (the usual checkpoint layouts), else the whole object.
    pub fn state_dict_path(&self) -> &'static str {
        let direct =
            |v: &PtValue| matches!(v, PtValue::Dict(d) if d.iter().any(|(_, v)| matches!(v, PtValue::Tensor(_))));
        if direct(&self.root) {
            return "";
        }
        for key in ["state_dict", "model_state_dict", "model", "module", "net"] {
            if self.root.child(key).is_some_and(direct) {
                return key;
            }
        }
        ""
    }

    /// The tensors of the weights (see [`state_dict_path`](PtFile::state_dict_path)), keyed
    /// relative to it: `0.weight`, not `model.0.weight`.
    pub fn state_dict_tensors(&self) -> Vec<(String, &PtTensor)> {
        self.tensors_at(self.state_dict_path()).unwrap_or_default()
    }

    /// The tensors under the dotted path `at`, keyed relative to it; `None` when there is
    /// nothing at `at`.
    pub fn tensors_at(&self, at: &str) -> Option<Vec<(String, &PtTensor)>> {
        Some(self.get(at)?.tensors())
    }

    fn storage_bytes(&self, storage: usize) -> &[u8] {
        match &self.storages[storage].data {
            StorageData::Range(b, e) => &self.bytes[*b..*e],
            StorageData::Owned(v) => v,
        }
    }

    /// A tensor's elements as contiguous little-endian bytes of its dtype, row-major (what a
    /// safetensors file holds).
    pub fn contiguous_bytes(&self, t: &PtTensor) -> Vec<u8> {
        let data = self.storage_bytes(t.storage);
        let size = t.dtype.size();
        let numel = t.numel();
        if numel == 0 {
            return Vec::new();
        }
        if t.is_contiguous() {
            return data[t.storage_offset * size..(t.storage_offset + numel) * size].to_vec();
        }
        let mut out = Vec::with_capacity(numel * size);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let at = t.storage_offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&data[at * size..(at + 1) * size]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    }

    /// A float tensor, converted to `E`, as a contiguous copy.
    ///
    /// # Errors
    /// [`NnError::WrongDtype`] for integer or boolean data (`key` names it in the message).
    pub fn tensor<E: Float>(&self, key: &str, t: &PtTensor) -> Result<Tensor<E>, NnError> {
        if !t.dtype.is_float() {
            return Err(self.wrong_dtype(key, t.dtype, "a float dtype (F16, BF16, F32 or F64)"));
        }
        Ok(Tensor::from_vec(decode_float(t.dtype, &self.contiguous_bytes(t)), &t.shape))
    }

    /// An integer or boolean tensor as `i64`s, row-major.
    ///
    /// # Errors
    /// [`NnError::WrongDtype`] for float data.
    pub fn tensor_i64(&self, key: &str, t: &PtTensor) -> Result<Vec<i64>, NnError> {
        if !t.dtype.is_integer() {
            return Err(self.wrong_dtype(key, t.dtype, "an integer or boolean dtype"));
        }
        Ok(decode_int(t.dtype, &self.contiguous_bytes(t)))
    }

    /// A parameter or buffer for a model of `E`: float data, or integer data for the buffers
    /// PyTorch keeps as integers (`num_batches_tracked`).
    fn state_tensor<E: Float>(&self, key: &str, t: &PtTensor) -> Result<Tensor<E>, NnError> {
        if t.dtype.is_integer() && is_integer_buffer(key) {
            let v = self.tensor_i64(key, t)?;
            return Ok(Tensor::from_vec(v.into_iter().map(|x| E::from_f64(x as f64)).collect(), &t.shape));
        }
        self.tensor(key, t)
    }

    /// Refuses reading `tensors` when their copies would exceed [`MAX_EXPANSION`] times the
    /// file (each distinct tensor object counted once).
    fn check_expansion(&self, tensors: &[(String, &PtTensor)]) -> Result<(), NnError> {
        let mut seen = std::collections::HashSet::new();
        let total: u64 =
            tensors.iter().filter(|(_, t)| seen.insert(t.id)).map(|(_, t)| (t.numel() * t.dtype.size()) as u64).sum();
        let limit = (self.bytes.len() as u64).saturating_mul(MAX_EXPANSION);
        if total > limit {
            return Err(checkpoint(
                &self.path,
                "",
                format!(
                    "its tensors would take {total} bytes, more than {MAX_EXPANSION} times the file's {} \
                     (views of shared storages are copied when read)",
                    self.bytes.len()
                ),
            ));
        }
        Ok(())
    }

    /// The weights (see [`state_dict_path`](PtFile::state_dict_path)) as a [`StateDict`] of `E`.
    ///
    /// # Errors
    /// [`NnError::WrongDtype`] naming the first tensor that is not float data (other than
    /// `num_batches_tracked`); [`NnError::Checkpoint`] when the copies would be too large.
    pub fn state_dict<E: Float>(&self) -> Result<StateDict<E>, NnError> {
        let tensors = self.state_dict_tensors();
        self.check_expansion(&tensors)?;
        tensors.iter().map(|(k, t)| Ok((k.clone(), self.state_tensor(k, t)?))).collect()
    }

    /// Loads the weights (see [`state_dict_path`](PtFile::state_dict_path)) into `model`, each
    /// under the key `map` gives it, like [`SafetensorsFile::load_into`](super::SafetensorsFile::load_into):
    /// everything is checked and decoded before the model is touched, so a failed load leaves
    /// it as it was.
    ///
    /// # Errors
    /// [`NnError::KeyCollision`], [`NnError::ShapeMismatch`], [`NnError::KeyMismatch`] (when
    /// `strict`), [`NnError::WrongDtype`], [`NnError::Checkpoint`] (copies too large).
    pub fn load_into<E: Float>(
        &self,
        model: &mut dyn Module<E>,
        map: &KeyMap,
        strict: bool,
    ) -> Result<KeyMapReport, NnError> {
        let tensors = self.state_dict_tensors();
        self.check_expansion(&tensors)?;
        let by_key: HashMap<&str, &PtTensor> = tensors.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        let shapes = tensors.iter().map(|(k, t)| (k.as_str(), t.shape.as_slice()));
        load_checked(&self.path, model, map, strict, shapes, |key| self.state_tensor(key, by_key[key]))
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

/// An [`NnError::Checkpoint`].
fn checkpoint(path: &Path, record: &str, message: impl Into<String>) -> NnError {
    NnError::Checkpoint { path: path.to_path_buf(), record: record.to_string(), message: message.into() }
}

/// A kiln-pickle error in `record` of `path`, whose bytes start at `base` of the file.
fn pickle_error(path: &Path, record: &str, base: u64, e: PickleError) -> NnError {
    match e {
        PickleError::ForbiddenGlobal { module, name, offset } => NnError::ForbiddenGlobal {
            path: path.to_path_buf(),
            record: record.to_string(),
            global: format!("{module}.{name}"),
            offset: base + offset,
        },
        PickleError::Truncated { expected, found } => checkpoint(
            path,
            record,
            format!("truncated: expected {} bytes, found {}", base.saturating_add(expected), base + found),
        ),
        PickleError::Format { offset, expected, found } => {
            checkpoint(path, record, format!("at byte {}: expected {expected}, found {found}", base + offset))
        }
        PickleError::BadMagic { expected, found } => {
            checkpoint(path, record, format!("expected magic number {expected:#010x}, found {found:#010x}"))
        }
    }
}

fn weights_only() -> Options {
    Options { allow_global: Some(allowed), trailing_data: false }
}

type Read = (PtFormat, Vec<PtStorage>, PtValue);

fn read_zip(path: &Path, bytes: &[u8]) -> Result<Read, NnError> {
    let entries = kiln_pickle::zip::read_directory(bytes).map_err(|e| pickle_error(path, "", 0, e))?;
    let first = entries.first().ok_or_else(|| checkpoint(path, "", "an empty zip archive"))?;
    let prefix = match first.name.find('/') {
        Some(i) => first.name[..=i].to_string(),
        None => return Err(checkpoint(path, &first.name, "expected records inside one folder (archive/data.pkl)")),
    };
    let record = |name: &str| entries.iter().find(|e| e.name.strip_prefix(&prefix) == Some(name));
    let pkl_name = format!("{prefix}data.pkl");
    let pkl = record("data.pkl").ok_or_else(|| checkpoint(path, &pkl_name, "no such record in the archive"))?;
    if let Some(order) = record("byteorder") {
        let b = kiln_pickle::zip::member(bytes, order).map_err(|e| pickle_error(path, &order.name, 0, e))?;
        if &*b != b"little" {
            return Err(checkpoint(
                path,
                &order.name,
                format!("expected byte order `little`, found `{}`", String::from_utf8_lossy(&b)),
            ));
        }
    }
    let data = kiln_pickle::zip::member(bytes, pkl).map_err(|e| pickle_error(path, &pkl_name, 0, e))?;
    let pickle = kiln_pickle::parse(&data, &weights_only()).map_err(|e| pickle_error(path, &pkl_name, 0, e))?;
    let mut storages = Vec::new();
    let resolve = |key: &str, dtype: Dtype, numel: usize| -> Result<StorageData, NnError> {
        let name = format!("{prefix}data/{key}");
        let entry = record(&format!("data/{key}"))
            .ok_or_else(|| checkpoint(path, &name, "no such record for a storage the pickle names"))?;
        let need = numel.checked_mul(dtype.size());
        if need != Some(entry.uncompressed_size as usize) || entry.uncompressed_size > bytes.len() as u64 * 1032 {
            return Err(checkpoint(
                path,
                &name,
                format!(
                    "a storage of {numel} {dtype} needs {need:?} bytes, the record holds {}",
                    entry.uncompressed_size
                ),
            ));
        }
        let m = kiln_pickle::zip::member(bytes, entry).map_err(|e| pickle_error(path, &name, 0, e))?;
        Ok(match m {
            std::borrow::Cow::Borrowed(s) => {
                let begin = s.as_ptr() as usize - bytes.as_ptr() as usize;
                StorageData::Range(begin, begin + s.len())
            }
            std::borrow::Cow::Owned(v) => StorageData::Owned(v),
        })
    };
    let root = Builder::new(path, &pkl_name, &pickle, &mut storages, resolve).build()?;
    Ok((PtFormat::Zip { prefix }, storages, root))
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Read, NnError> {
    let mut at = 0usize;
    let mut next = |what: &str, opts: Options| -> Result<(Pickle, u64), NnError> {
        let base = at as u64;
        let p = kiln_pickle::parse(&bytes[at..], &Options { trailing_data: true, ..opts })
            .map_err(|e| pickle_error(path, what, base, e))?;
        at += p.len();
        Ok((p, base))
    };
    let inert = Options { allow_global: Some(|_, _| false), trailing_data: true };
    next("magic number", inert)?;
    let (proto, _) = next("protocol version", inert)?;
    let protocol_version = match proto.root() {
        Value::Int(v) => v,
        other => {
            return Err(checkpoint(
                path,
                "protocol version",
                format!("expected an integer, found {}", proto.describe(other)),
            ))
        }
    };
    if protocol_version != 1001 {
        return Err(checkpoint(path, "protocol version", format!("expected 1001, found {protocol_version}")));
    }
    let (sys_info, _) = next("sys_info", inert)?;
    if let Some(d) = sys_info.dict(sys_info.root()) {
        for (k, v) in d {
            if sys_info.text(*k) == Some("little_endian") && *v != Value::Bool(true) {
                return Err(checkpoint(path, "sys_info", "a big-endian checkpoint (little_endian is False)"));
            }
        }
    }
    let (object, object_base) = next("data.pkl", weights_only())?;
    let (keys, keys_base) = next("storage keys", inert)?;
    let key_list: Vec<String> = keys
        .list(keys.root())
        .and_then(|l| l.iter().map(|&k| keys.text(k).map(str::to_owned)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| {
            checkpoint(
                path,
                "storage keys",
                format!("at byte {keys_base}: expected a list of strings, found {}", keys.describe(keys.root())),
            )
        })?;

    // Each storage: an i64 element count, then its bytes; the pickle gives its dtype.
    let mut storages: Vec<PtStorage> = Vec::new();
    let mut declared: HashMap<String, (Dtype, usize)> = HashMap::new();
    {
        let resolve = |key: &str, dtype: Dtype, numel: usize| -> Result<StorageData, NnError> {
            declared.insert(key.to_string(), (dtype, numel));
            // The bytes are located below, once the key list is known.
            Ok(StorageData::Range(0, 0))
        };
        let _ = object_base;
        let root = Builder::new(path, "data.pkl", &object, &mut storages, resolve).build()?;
        let mut pos = at;
        let mut ranges: HashMap<String, (usize, usize)> = HashMap::new();
        for key in &key_list {
            let record = format!("storage {key}");
            let count_bytes = bytes.get(pos..pos + 8).ok_or_else(|| {
                checkpoint(
                    path,
                    &record,
                    format!("truncated: expected an element count at byte {pos}, file ends at {}", bytes.len()),
                )
            })?;
            let count = i64::from_le_bytes(count_bytes.try_into().expect("8 bytes"));
            let (dtype, numel) = *declared
                .get(key)
                .ok_or_else(|| checkpoint(path, &record, "listed in the storage keys but used by no tensor"))?;
            if usize::try_from(count).ok() != Some(numel) {
                return Err(checkpoint(
                    path,
                    &record,
                    format!("at byte {pos}: expected {numel} elements (the pickle's), found {count}"),
                ));
            }
            let len = numel.checked_mul(dtype.size()).filter(|&n| n <= bytes.len() - (pos + 8)).ok_or_else(|| {
                checkpoint(
                    path,
                    &record,
                    format!(
                        "truncated: {numel} {dtype} from byte {} run past the end of the file ({} bytes)",
                        pos + 8,
                        bytes.len()
                    ),
                )
            })?;
            ranges.insert(key.clone(), (pos + 8, pos + 8 + len));
            pos += 8 + len;
        }
        if pos != bytes.len() {
            return Err(checkpoint(
                path,
                "",
                format!("at byte {pos}: {} bytes after the last storage", bytes.len() - pos),
            ));
        }
        for s in &mut storages {
            let (b, e) = *ranges.get(&s.key).ok_or_else(|| {
                checkpoint(path, &format!("storage {}", s.key), "used by a tensor but missing from the storage keys")
            })?;
            s.data = StorageData::Range(b, e);
        }
        Ok((PtFormat::Legacy { protocol_version }, storages, root))
    }
}

/// Turns the pickle's value graph into a [`PtValue`] tree, resolving storages and checking
/// every tensor against its storage.
struct Builder<'a, F> {
    path: &'a Path,
    record: &'a str,
    p: &'a Pickle,
    storages: &'a mut Vec<PtStorage>,
    by_key: HashMap<String, usize>,
    resolve: F,
    /// What is left of the size budget of the tree (nodes, shape entries, text bytes).
    budget: usize,
}

impl<'a, F: FnMut(&str, Dtype, usize) -> Result<StorageData, NnError>> Builder<'a, F> {
    fn new(path: &'a Path, record: &'a str, p: &'a Pickle, storages: &'a mut Vec<PtStorage>, resolve: F) -> Self {
        Builder { path, record, p, storages, by_key: HashMap::new(), resolve, budget: 4 * p.len() + 4096 }
    }

    fn err(&self, message: impl Into<String>) -> NnError {
        checkpoint(self.path, self.record, message)
    }

    fn build(mut self) -> Result<PtValue, NnError> {
        let root = self.p.root();
        self.value(root, 0)
    }

    fn spend(&mut self, n: usize) -> Result<(), NnError> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            self.err("values shared through the pickle's memo expand to more than 4 times the pickle's size")
        })?;
        Ok(())
    }

    fn value(&mut self, v: Value, depth: usize) -> Result<PtValue, NnError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        self.spend(1)?;
        let p = self.p;
        Ok(match v {
            Value::None => PtValue::None,
            Value::Bool(b) => PtValue::Bool(b),
            Value::Int(i) => PtValue::Int(i),
            Value::Float(f) => PtValue::Float(f),
            Value::Obj(i) => match &p.objects()[i] {
                Object::Text(s) => {
                    self.spend(s.len())?;
                    PtValue::Str(s.clone())
                }
                Object::Bytes(b) => {
                    self.spend(b.len())?;
                    PtValue::Bytes(b.clone())
                }
                Object::BigInt(b) => PtValue::BigInt(b.clone()),
                Object::List(l) => PtValue::List(self.values(l, depth)?),
                Object::Tuple(t) => PtValue::Tuple(self.values(t, depth)?),
                Object::Dict(d) => PtValue::Dict(self.pairs(d, depth)?),
                Object::Global { module, name } if module == "torch" => PtValue::Str(format!("torch.{name}")),
                Object::Global { module, name } => {
                    return Err(self.err(format!("expected a value, found the global {module}.{name} by itself")))
                }
                Object::PersistentId(_) => return Err(self.err("expected a value, found a storage outside a tensor")),
                Object::Call { func, args, state: _, items, appended } => {
                    let (module, name) = p.global(*func).ok_or_else(|| {
                        self.err(format!("expected a call of a global, found a call of {}", p.describe(*func)))
                    })?;
                    let args = p.tuple(*args).ok_or_else(|| {
                        self.err(format!("expected an argument tuple for {module}.{name}, found {}", p.describe(*args)))
                    })?;
                    if !appended.is_empty() {
                        return Err(self.err(format!("APPEND on the result of {module}.{name}")));
                    }
                    match (module, name) {
                        ("collections", "OrderedDict") => {
                            // `OrderedDict()` filled by SETITEMS; BUILD's `_metadata` is dropped.
                            let mut pairs = match args.first() {
                                None => Vec::new(),
                                Some(&a) => match p.list(a) {
                                    Some([]) => Vec::new(),
                                    _ => return Err(self.err(format!("an OrderedDict built from {}", p.describe(a)))),
                                },
                            };
                            pairs.extend(self.pairs(items, depth)?);
                            PtValue::Dict(pairs)
                        }
                        ("torch", "Size") => match args.first().and_then(|&a| p.tuple(a)) {
                            Some(t) => PtValue::Tuple(self.values(t, depth)?),
                            None => return Err(self.err("torch.Size of something other than a tuple")),
                        },
                        ("_codecs", "encode") => {
                            // How protocol 2 writes `bytes`: encode(text, 'latin1').
                            let (Some(&t), Some(&enc)) = (args.first(), args.get(1)) else {
                                return Err(self.err("_codecs.encode needs (text, encoding)"));
                            };
                            match (p.text(t), p.text(enc)) {
                                (Some(s), Some("latin1" | "latin-1")) => {
                                    let b: Option<Vec<u8>> =
                                        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                                    let b = b.ok_or_else(|| self.err("_codecs.encode: text outside latin-1"))?;
                                    self.spend(b.len())?;
                                    PtValue::Bytes(b)
                                }
                                _ => return Err(self.err("_codecs.encode: expected (text, 'latin1')")),
                            }
                        }
                        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                            PtValue::Tensor(self.tensor(i, args, name == "_rebuild_tensor_v2")?)
                        }
                        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                            let inner = args.first().copied().unwrap_or(Value::None);
                            let mut t = match self.value(inner, depth + 1)? {
                                PtValue::Tensor(t) => t,
                                other => return Err(self.err(format!("a parameter of {}", other.describe()))),
                            };
                            t.requires_grad = matches!(args.get(1), Some(Value::Bool(true)));
                            t.id = i;
                            PtValue::Tensor(t)
                        }
                        _ => {
                            return Err(
                                self.err(format!("a call of {module}.{name}, which the reader does not rebuild"))
                            )
                        }
                    }
                }
            },
        })
    }

    fn values(&mut self, items: &[Value], depth: usize) -> Result<Vec<PtValue>, NnError> {
        items.iter().map(|&v| self.value(v, depth + 1)).collect()
    }

    fn pairs(&mut self, items: &[(Value, Value)], depth: usize) -> Result<Vec<(PtValue, PtValue)>, NnError> {
        items.iter().map(|&(k, v)| Ok((self.value(k, depth + 1)?, self.value(v, depth + 1)?))).collect()
    }

    fn usizes(&self, v: Value, what: &str) -> Result<Vec<usize>, NnError> {
        let items = self.p.tuple(v).or_else(|| self.p.list(v)).ok_or_else(|| {
            self.err(format!("expected a tuple for the tensor's {what}, found {}", self.p.describe(v)))
        })?;
        items
            .iter()
            .map(|&d| match d {
                Value::Int(n) if n >= 0 => Ok(n as usize),
                other => {
                    Err(self.err(format!("expected a non-negative {what} entry, found {}", self.p.describe(other))))
                }
            })
            .collect()
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    fn tensor(&mut self, id: usize, args: &[Value], v2: bool) -> Result<PtTensor, NnError> {
        let p = self.p;
        let n = if v2 { 6 } else { 4 };
        if args.len() < n {
            return Err(self.err(format!("expected {n} arguments to rebuild a tensor, found {}", args.len())));
        }
        let storage = self.storage(args[0])?;
        let storage_offset = match args[1] {
            Value::Int(o) if o >= 0 => o as usize,
            other => return Err(self.err(format!("expected a storage offset, found {}", p.describe(other)))),
        };
        let shape = self.usizes(args[2], "size")?;
        let stride = self.usizes(args[3], "stride")?;
        self.spend(shape.len() + stride.len())?;
        let requires_grad = v2 && args[4] == Value::Bool(true);
        if shape.len() != stride.len() {
            return Err(self.err(format!("a tensor of size {shape:?} with stride {stride:?}")));
        }
        let s = &self.storages[storage];
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let last = shape
            .iter()
            .zip(&stride)
            .try_fold(storage_offset, |a, (&d, &st)| a.checked_add(d.saturating_sub(1).checked_mul(st)?));
        let fits = match (numel, last) {
            (Some(0), _) => storage_offset <= s.numel,
            (Some(n), Some(last)) => n <= s.numel && last < s.numel,
            _ => false,
        };
        if !fits {
            return Err(self.err(format!(
                "a tensor of size {shape:?}, stride {stride:?}, offset {storage_offset} does not fit in storage `{}` \
                 of {} elements (or has more elements than it)",
                s.key, s.numel
            )));
        }
        Ok(PtTensor { dtype: s.dtype, shape, stride, storage_offset, storage, requires_grad, id })
    }

    /// `('storage', torch.XxxStorage, key, location, numel[, view_metadata])`.
    fn storage(&mut self, v: Value) -> Result<usize, NnError> {
        let p = self.p;
        let pid = match p.object(v) {
            Some(Object::PersistentId(pid)) => *pid,
            _ => return Err(self.err(format!("expected a storage (persistent id), found {}", p.describe(v)))),
        };
        let t = p.tuple(pid).filter(|t| t.len() >= 5 && p.text(t[0]) == Some("storage")).ok_or_else(|| {
            self.err(format!(
                "expected a persistent id ('storage', type, key, location, numel), found {}",
                p.describe(pid)
            ))
        })?;
        let dtype =
            p.global(t[1]).filter(|(m, _)| *m == "torch").and_then(|(_, n)| storage_dtype(n)).ok_or_else(|| {
                self.err(format!("expected a storage type such as torch.FloatStorage, found {}", p.describe(t[1])))
            })?;
        let key =
            p.text(t[2]).ok_or_else(|| self.err(format!("expected a storage key, found {}", p.describe(t[2]))))?;
        let numel = match t[4] {
            Value::Int(n) if n >= 0 => n as usize,
            other => return Err(self.err(format!("expected a storage size, found {}", p.describe(other)))),
        };
        if let Some(&i) = self.by_key.get(key) {
            let s = &self.storages[i];
            if s.dtype != dtype || s.numel != numel {
                return Err(
                    self.err(format!("storage `{key}` named as {dtype} x {numel} after {} x {}", s.dtype, s.numel))
                );
            }
            return Ok(i);
        }
        let data = (self.resolve)(key, dtype, numel)?;
        self.storages.push(PtStorage { key: key.to_string(), dtype, numel, data });
        self.by_key.insert(key.to_string(), self.storages.len() - 1);
        Ok(self.storages.len() - 1)
    }
}
