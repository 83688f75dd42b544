//! Model files: reading and writing [safetensors](https://github.com/huggingface/safetensors)
//! with PyTorch's `state_dict` key names and layouts, so that weights move between kiln and
//! PyTorch (`safetensors.torch.save_file(model.state_dict(), ...)` /
//! `model.load_state_dict(safetensors.torch.load_file(...))`) by name.
//!
//! - [`save`] / [`load`]: a model's parameters and buffers to and from a file; [`save_as`]
//!   writes them as `BF16` or `F16` (half the size), and [`load`] reads every float dtype.
//! - [`save_state_dict`] / [`load_state_dict_file`]: the same for a raw [`StateDict`].
//! - [`save_raw`] with [`RawTensor`]s: tensors already encoded (integer, quantised, bfloat16
//!   data), read back with [`SafetensorsFile::raw_tensor`].
//! - [`load_mapped`] with a [`KeyMap`]: a foreign state dict whose keys need renaming, with a
//!   [`KeyMapReport`] of what matched.
//! - [`SafetensorsFile`]: an open, checked, memory-mapped file, to inspect or read tensors
//!   one by one (integer ones too, such as labels).
//! - [`PtFile`]: a PyTorch checkpoint (`torch.save`'s `.pt` / `.pth`, zip or legacy format)
//!   read without running its pickle: an allow-list of globals as
//!   `torch.load(weights_only=True)` has; [`load`] and [`load_mapped`] take these files too.
//! - [`sequential_from_json`]: a `torch.nn.Sequential` described in JSON, built from kiln
//!   layers with the same keys, ready for its PyTorch weights.
//!
//! # The format
//! An 8-byte little-endian header length `N`, `N` bytes of JSON mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (plus an optional `__metadata__` map of
//! strings), then the data section: every tensor's elements, row-major, little-endian, with
//! no holes. kiln writes its element type (`F32` or `F64`) or the one [`save_as`] asks for
//! (`BF16`, `F16`), and `I64` for the counts PyTorch keeps as integers (BatchNorm's
//! `num_batches_tracked`); it reads `F16`, `BF16`, `F32` and
//! `F64` into either element type (converting when they differ). Its metadata always holds
//! `kiln_version` and, unless given, `format: pt` (what `transformers` looks for).
//!
//! # Safety of reading
//! A file is checked completely when opened: header length against the file, the JSON, each
//! entry's dtype and shape against its `data_offsets`, and that the tensors tile the data
//! section. A forged header therefore cannot make the reader allocate more than the file
//! holds (tensors are sized by their checked byte ranges; parsing the header allocates in
//! proportion to the header), and every error names the file and the key.
//!
//! # Safety of writing
//! Every save goes through [`write_atomic`]: a temporary file in the same folder, fsynced and
//! renamed over the target, so a failed save leaves the previous file intact.
//!
//! # One implementation
//! This module is kiln's one safetensors reader and writer: kiln-quant's model files and
//! kiln-optim's state files go through it too. The reference `safetensors` crate is the
//! independent oracle of its tests (both read each other's files), rather than its engine,
//! because this reader names the key and the reason of every refusal (the crate reports
//! `TensorInvalidInfo` or `InvalidHeaderDeserialization` without either, and keeps the last
//! of two entries with the same key), and this writer streams into [`write_atomic`] where the
//! crate builds the whole file in memory or writes it in place.

mod architecture;
mod atomic;
mod dtype;
mod keymap;
mod pt_writer;
mod pytorch;
mod reader;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;

use kiln_tensor::Float;

pub use architecture::sequential_from_json;
pub use atomic::write_atomic;
pub use dtype::Dtype;
pub use keymap::{KeyMap, KeyMapReport};
pub use pt_writer::{pt_bytes, save_pt, save_pt_state_dict, save_pt_tensors, PT_DTYPES};
pub use pytorch::{looks_like_pytorch, PtFile, PtFormat, PtStorage, PtTensor, PtValue, ALLOWED_GLOBALS, MAX_EXPANSION};
pub use reader::{SafetensorsFile, TensorInfo};
pub use writer::RawTensor;

use crate::error::NnError;
use crate::module::{LoadReport, Module, StateDict};

/// The `__metadata__` map of a safetensors file: free-form string pairs.
pub type Metadata = BTreeMap<String, String>;

/// The metadata key under which kiln records the version that wrote a file.
pub const KILN_VERSION_KEY: &str = "kiln_version";

/// The version of kiln written into every file.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The last key component of the buffers PyTorch stores as integers (and kiln as floats).
const INTEGER_BUFFERS: &[&str] = &["num_batches_tracked"];

/// Whether `key` names a buffer PyTorch keeps as integers.
pub(crate) fn is_integer_buffer(key: &str) -> bool {
    INTEGER_BUFFERS.contains(&key.rsplit('.').next().unwrap_or(key))
}

/// An [`NnError::Io`] for `path`.
pub(crate) fn io_error(path: &Path, action: &str, e: &std::io::Error) -> NnError {
    NnError::Io { path: path.to_path_buf(), action: action.to_string(), kind: e.kind(), message: e.to_string() }
}

/// Saves a model's parameters and buffers to a `.safetensors` file, under their PyTorch
/// `state_dict` keys, atomically.
///
/// `metadata` goes into the file's `__metadata__` map, together with `kiln_version` (which
/// kiln sets, overriding a value given here) and `format: pt` (unless given). The float
/// tensors are written in the model's element type (`F32` or `F64`); [`save_as`] writes
/// `BF16` or `F16` instead.
///
/// ```
/// use kiln_nn::{load, save, Linear, Module};
/// let dir = std::env::temp_dir().join(format!("kiln-doc-save-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("linear.safetensors");
///
/// let trained: Linear = Linear::new(3, 2);
/// save(&trained, &path, &Default::default()).unwrap();
///
/// let mut fresh: Linear = Linear::new(3, 2);
/// let report = load(&mut fresh, &path, true).unwrap();
/// assert_eq!(report.loaded, ["weight", "bias"]);
/// assert_eq!(fresh.weight.value().to_vec(), trained.weight.value().to_vec());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Errors
/// [`NnError::Io`] when the file cannot be written (the previous file, if any, is intact).
pub fn save<E: Float>(model: &dyn Module<E>, path: impl AsRef<Path>, metadata: &Metadata) -> Result<(), NnError> {
    save_state_dict(&model.state_dict(), path, metadata)
}

/// [`save`] with the float tensors written as `dtype`: `Dtype::BF16` or `Dtype::F16` halve the
/// file (`model.half()` / `model.bfloat16()` before `save_file` in PyTorch), `F32` or `F64`
/// widen or narrow it. Narrowing rounds to nearest, ties to even, as PyTorch does; counts
/// (`num_batches_tracked`) stay `I64`. [`load`] reads such a file back into a model of any
/// element type.
///
/// ```
/// use kiln_nn::serialize::{save_as, Dtype, SafetensorsFile};
/// use kiln_nn::{load, Linear, Module};
/// let dir = std::env::temp_dir().join(format!("kiln-doc-save-as-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("linear-bf16.safetensors");
///
/// let model: Linear = Linear::new(3, 2);
/// save_as(&model, &path, &Default::default(), Dtype::BF16).unwrap();
/// assert_eq!(SafetensorsFile::open(&path).unwrap().info("weight").unwrap().dtype, Dtype::BF16);
///
/// let mut back: Linear = Linear::new(3, 2);
/// load(&mut back, &path, true).unwrap();
/// for (a, b) in back.weight.value().to_vec().iter().zip(model.weight.value().to_vec()) {
///     assert!((a - b).abs() <= b.abs() / 256.0); // bfloat16 keeps 8 significant bits
/// }
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// **Panics** if `dtype` is not a float dtype (`F16`, `BF16`, `F32` or `F64`).
///
/// # Errors
/// [`NnError::Io`] when the file cannot be written (the previous file, if any, is intact).
pub fn save_as<E: Float>(
    model: &dyn Module<E>,
    path: impl AsRef<Path>,
    metadata: &Metadata,
    dtype: Dtype,
) -> Result<(), NnError> {
    save_state_dict_as(&model.state_dict(), path, metadata, dtype)
}

/// Saves a state dict to a `.safetensors` file, atomically (see [`save`] for the metadata).
///
/// # Errors
/// [`NnError::BadHeader`] for a key named `__metadata__`; [`NnError::Io`] when the file
/// cannot be written (the previous file, if any, is intact).
pub fn save_state_dict<E: Float>(
    state: &StateDict<E>,
    path: impl AsRef<Path>,
    metadata: &Metadata,
) -> Result<(), NnError> {
    save_state_dict_as(state, path, metadata, Dtype::of::<E>())
}

/// [`save_state_dict`] with the float tensors written as `dtype` (see [`save_as`]).
///
/// **Panics** if `dtype` is not a float dtype (`F16`, `BF16`, `F32` or `F64`).
///
/// # Errors
/// Those of [`save_state_dict`].
pub fn save_state_dict_as<E: Float>(
    state: &StateDict<E>,
    path: impl AsRef<Path>,
    metadata: &Metadata,
    dtype: Dtype,
) -> Result<(), NnError> {
    let path = path.as_ref();
    let metadata = with_kiln_metadata(metadata);
    let plan = writer::Plan::new(path, state, &metadata, dtype)?;
    write_atomic(path, |w| plan.write(w))
}

/// Saves tensors given as encoded bytes (integer, quantised or bfloat16 data: see
/// [`RawTensor`]) to a `.safetensors` file, atomically, with `metadata` completed as [`save`]
/// does. kiln-quant's model files and optimiser state files are written through this.
///
/// ```
/// use std::collections::BTreeMap;
/// use kiln_nn::serialize::{save_raw, Dtype, RawTensor, SafetensorsFile};
/// let dir = std::env::temp_dir().join(format!("kiln-doc-save-raw-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("labels.safetensors");
/// let mut tensors = BTreeMap::new();
/// tensors.insert("labels".to_string(), RawTensor::from_i64(&[3, 1, 4], &[3]));
/// save_raw(&path, &tensors, &Default::default()).unwrap();
///
/// let file = SafetensorsFile::open(&path).unwrap();
/// assert_eq!(file.tensor_i64("labels").unwrap(), (vec![3, 1, 4], vec![3]));
/// assert_eq!(file.raw_tensor("labels").unwrap(), tensors["labels"]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Errors
/// Those of [`save_state_dict`].
pub fn save_raw(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, RawTensor>,
    metadata: &Metadata,
) -> Result<(), NnError> {
    let path = path.as_ref();
    let metadata = with_kiln_metadata(metadata);
    let plan = writer::Plan::raw(path, tensors, &metadata)?;
    write_atomic(path, |w| plan.write(w))
}

/// `metadata` with `kiln_version` set and `format` defaulting to `pt`.
fn with_kiln_metadata(metadata: &Metadata) -> Metadata {
    let mut m = metadata.clone();
    m.insert(KILN_VERSION_KEY.to_string(), KILN_VERSION.to_string());
    m.entry("format".to_string()).or_insert_with(|| "pt".to_string());
    m
}

/// Loads a `.safetensors` file (or a PyTorch checkpoint, see [`PtFile`]) into a model, like
/// `model.load_state_dict(load_file(path), strict)`.
///
/// The file is memory-mapped and checked; the tensors the model needs are decoded (converted
/// to the model's element type when the file has another) into a complete state dict before
/// the model is touched, so a failed load leaves the model as it was. With `strict`, the
/// file's keys must be exactly the model's.
///
/// # Errors
/// Every error of [`SafetensorsFile::open`] (a truncated or malformed file),
/// [`NnError::ShapeMismatch`], [`NnError::WrongDtype`], and, when `strict`,
/// [`NnError::KeyMismatch`]; each names the file and the key.
pub fn load<E: Float>(model: &mut dyn Module<E>, path: impl AsRef<Path>, strict: bool) -> Result<LoadReport, NnError> {
    let r = load_mapped(model, path, &KeyMap::new(), strict)?;
    Ok(LoadReport {
        loaded: r.matched.into_iter().map(|(_, k)| k).collect(),
        missing: r.missing,
        unexpected: r.unexpected,
    })
}

/// Loads a `.safetensors` file into a model after renaming its keys with `map` (see
/// [`KeyMap`]), returning what matched. `strict` applies to the renamed keys: keys the map
/// skips are never unexpected.
///
/// A PyTorch checkpoint (a file that starts like one: see [`looks_like_pytorch`]) is read
/// with [`PtFile`] instead, and its weights ([`PtFile::state_dict_path`]: the saved
/// `state_dict()`, or the `model` / `state_dict` entry of a checkpoint dict) are loaded.
///
/// ```
/// use kiln_nn::{load_mapped, save_state_dict, KeyMap, Linear, Module};
/// let dir = std::env::temp_dir().join(format!("kiln-doc-mapped-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("dp.safetensors");
/// // A file saved from nn.DataParallel: every key starts with `module.`.
/// let src: Linear = Linear::new(3, 2);
/// let sd = src.state_dict().into_iter().map(|(k, t)| (format!("module.{k}"), t)).collect();
/// save_state_dict(&sd, &path, &Default::default()).unwrap();
///
/// let mut model: Linear = Linear::new(3, 2);
/// let report = load_mapped(&mut model, &path, &KeyMap::new().strip_prefix("module."), true).unwrap();
/// assert_eq!(report.to_string(), "matched 2, missing 0, unexpected 0, skipped 0, shape mismatches 0");
/// assert_eq!(model.weight.value().to_vec(), src.weight.value().to_vec());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Errors
/// Those of [`load`], and [`NnError::KeyCollision`] when two keys map to one; for a
/// PyTorch checkpoint those of [`PtFile::open`] ([`NnError::ForbiddenGlobal`] for a pickle
/// that names code).
pub fn load_mapped<E: Float>(
    model: &mut dyn Module<E>,
    path: impl AsRef<Path>,
    map: &KeyMap,
    strict: bool,
) -> Result<KeyMapReport, NnError> {
    let path = path.as_ref();
    if is_pytorch_file(path)? {
        return PtFile::open(path)?.load_into(model, map, strict);
    }
    SafetensorsFile::open(path)?.load_into(model, map, strict)
}

/// Whether the file at `path` is a PyTorch checkpoint rather than safetensors: it starts
/// like one and its ninth byte is not the `{` of a safetensors header.
pub(crate) fn is_pytorch_file(path: &Path) -> Result<bool, NnError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| io_error(path, "open", &e))?;
    Ok(looks_like_pytorch(&head) && head.get(8) != Some(&b'{'))
}

/// The common part of loading a file into a model: map the file's keys, check them and the
/// shapes against the model, decode every matched tensor, and only then write the model, so
/// that a failed load leaves it as it was.
pub(crate) fn load_checked<'a, E: Float>(
    path: &Path,
    model: &mut dyn Module<E>,
    map: &KeyMap,
    strict: bool,
    shapes: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    mut decode: impl FnMut(&str) -> Result<kiln_tensor::Tensor<E>, NnError>,
) -> Result<KeyMapReport, NnError> {
    let report = map.report(model, shapes)?;
    if let Some((key, model_shape, file_shape)) = report.mismatched.first() {
        return Err(NnError::ShapeMismatch {
            path: path.to_path_buf(),
            key: key.clone(),
            model: model_shape.clone(),
            file: file_shape.clone(),
        });
    }
    if strict && (!report.missing.is_empty() || !report.unexpected.is_empty()) {
        return Err(NnError::KeyMismatch {
            path: path.to_path_buf(),
            missing: report.missing.clone(),
            unexpected: report.unexpected.clone(),
        });
    }
    let mut sd = StateDict::new();
    for (source, target) in &report.matched {
        sd.insert(target.clone(), decode(source)?);
    }
    // Keys and shapes were checked above, so this cannot fail; a non-strict call keeps it
    // from objecting to the missing keys a non-strict load allows.
    model.load_state_dict(&sd, false)?;
    Ok(report)
}

/// Reads every tensor of a `.safetensors` file into a state dict of `E`.
///
/// Float data of any float dtype is converted to `E`; integer data is accepted only for the
/// buffers PyTorch keeps as integers (`num_batches_tracked`). To read integer tensors such as
/// labels, use [`SafetensorsFile::tensor_i64`].
///
/// # Errors
/// Every error of [`SafetensorsFile::open`]; [`NnError::WrongDtype`] for non-float data.
pub fn load_state_dict_file<E: Float>(path: impl AsRef<Path>) -> Result<StateDict<E>, NnError> {
    SafetensorsFile::open(path)?.state_dict()
}

#[cfg(test)]
mod tests {
    use super::atomic::FailAfter;
    use super::*;
    use kiln_tensor::Tensor;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-serialize-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn state(seed: f32, n: usize) -> StateDict<f32> {
        let mut sd = StateDict::new();
        sd.insert("a.weight".into(), Tensor::from_vec((0..n * 3).map(|i| seed + i as f32).collect(), &[n, 3]));
        sd.insert("a.bias".into(), Tensor::from_vec((0..n).map(|i| -seed * i as f32).collect(), &[n]));
        sd.insert("bn.num_batches_tracked".into(), Tensor::scalar(seed.round()));
        sd
    }

    /// A save that fails after any number of bytes leaves the previous file exactly as it was
    /// and no temporary file behind; the same save without the failure succeeds.
    #[test]
    fn failed_save_leaves_previous_file_intact() {
        let dir = temp_dir("fail");
        let path = dir.join("model.safetensors");
        save_state_dict(&state(1.0, 4), &path, &Metadata::new()).unwrap();
        let before = std::fs::read(&path).unwrap();

        let new = state(2.0, 300);
        let meta = with_kiln_metadata(&Metadata::new());
        let plan = writer::Plan::new(&path, &new, &meta, Dtype::F32).unwrap();
        let mut full = Vec::new();
        plan.write(&mut full).unwrap();
        // Every failure point in the header and the first tensor, then coarser steps.
        let points: Vec<usize> = (0..200).chain((200..full.len()).step_by(97)).chain([full.len() - 1]).collect();
        for limit in points {
            let err = write_atomic(&path, |w| plan.write(&mut FailAfter { inner: w, limit })).unwrap_err();
            match &err {
                NnError::Io { path: p, kind, action, .. } => {
                    assert_eq!(p, &path);
                    assert_eq!(*kind, std::io::ErrorKind::StorageFull, "{err}");
                    assert!(action.starts_with("write temporary file .model.safetensors."), "{action}");
                }
                other => panic!("expected an I/O error, got {other:?}"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), before, "failure after {limit} bytes changed the file");
            let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["model.safetensors"], "failure after {limit} bytes left {names:?}");
        }
        // The whole file gets through a writer that allows exactly its length.
        write_atomic(&path, |w| plan.write(&mut FailAfter { inner: w, limit: full.len() })).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), full);
        assert_eq!(load_state_dict_file::<f32>(&path).unwrap(), new);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_into_missing_folder_is_an_io_error_naming_the_file() {
        let dir = temp_dir("missing");
        let path = dir.join("no/such/folder/m.safetensors");
        let err = save_state_dict(&state(1.0, 2), &path, &Metadata::new()).unwrap_err();
        assert!(
            matches!(&err, NnError::Io { path: p, kind: std::io::ErrorKind::NotFound, .. } if p == &path),
            "{err:?}"
        );
        assert!(err.to_string().contains("m.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reserved_key_is_refused_before_writing() {
        let dir = temp_dir("reserved");
        let path = dir.join("m.safetensors");
        let mut sd = state(1.0, 2);
        sd.insert("__metadata__".into(), Tensor::scalar(0.0));
        let err = save_state_dict(&sd, &path, &Metadata::new()).unwrap_err();
        assert!(matches!(err, NnError::BadHeader { ref key, .. } if key == "__metadata__"), "{err:?}");
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn header_is_padded_and_counts_are_i64() {
        let meta = with_kiln_metadata(&Metadata::new());
        let sd = state(3.0, 5);
        let plan = writer::Plan::new(Path::new("x"), &sd, &meta, Dtype::F32).unwrap();
        let mut bytes = Vec::new();
        plan.write(&mut bytes).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0);
        let f = SafetensorsFile::from_bytes(bytes).unwrap();
        assert_eq!(f.info("bn.num_batches_tracked").unwrap().dtype, Dtype::I64);
        assert_eq!(f.info("bn.num_batches_tracked").unwrap().data_offsets.0, 0, "8-byte tensors first");
        assert_eq!(f.tensor_i64("bn.num_batches_tracked").unwrap(), (vec![3], vec![]));
        assert_eq!(f.info("a.weight").unwrap().dtype, Dtype::F32);
        assert_eq!(f.metadata()["kiln_version"], KILN_VERSION);
        assert_eq!(f.metadata()["format"], "pt");
        assert_eq!(f.state_dict::<f32>().unwrap(), sd);
    }

    #[test]
    fn integer_buffer_names() {
        assert!(is_integer_buffer("num_batches_tracked"));
        assert!(is_integer_buffer("features.1.num_batches_tracked"));
        assert!(!is_integer_buffer("features.1.running_mean"));
        assert!(!is_integer_buffer("num_batches_tracked.weight"));
    }
}
