//! Writing PyTorch checkpoints that `torch.load(path, weights_only=True)` reads: the zip
//! format `torch.save` writes today.
//!
//! The archive (records in the folder `archive/`, every member stored and its data 64-byte
//! aligned, as PyTorch's writer does, so `torch.load(mmap=True)` maps them in place):
//! - `archive/data.pkl`: a protocol-2 pickle of an `OrderedDict` mapping each key to
//!   `torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`,
//!   where `storage` is the persistent id
//!   `('storage', torch.FloatStorage, '<n>', 'cpu', numel)` (the storage class names the
//!   dtype);
//! - `archive/byteorder`: `little`;
//! - `archive/data/<n>`: storage `n`, the tensor's elements row-major, little-endian;
//! - `archive/version`: `3`.
//!
//! Only the globals of [`ALLOWED_GLOBALS`](super::ALLOWED_GLOBALS) appear, so kiln's own
//! reader ([`PtFile`](super::PtFile)) and PyTorch's `weights_only` unpickler both accept it.
//! Each tensor gets its own storage (no sharing between keys).

use std::io::{self, Write};
use std::path::Path;

use kiln_pickle::zip_writer::ZipWriter;
use kiln_pickle::{dumps, Term};
use kiln_tensor::{Float, Tensor};

use super::dtype::Dtype;
use super::{is_integer_buffer, write_atomic};
use crate::error::NnError;
use crate::module::{Module, StateDict};

pub use super::writer::RawTensor;

/// The folder the records sit in (what `torch.save` uses).
const PREFIX: &str = "archive";

/// The alignment of storage records in PyTorch's zip writer.
const ALIGNMENT: u64 = 64;

/// The dtypes a checkpoint can hold, each with PyTorch's storage class.
pub const PT_DTYPES: &[(Dtype, &str)] = &[
    (Dtype::F32, "FloatStorage"),
    (Dtype::F64, "DoubleStorage"),
    (Dtype::F16, "HalfStorage"),
    (Dtype::BF16, "BFloat16Storage"),
    (Dtype::I64, "LongStorage"),
    (Dtype::I32, "IntStorage"),
    (Dtype::I16, "ShortStorage"),
    (Dtype::I8, "CharStorage"),
    (Dtype::U8, "ByteStorage"),
    (Dtype::Bool, "BoolStorage"),
];

impl RawTensor {
    /// A float tensor's elements in its own precision (`F32` for `f32`, `F64` for every other
    /// element type, which `f64` holds exactly).
    pub fn from_tensor<E: Float>(t: &Tensor<E>) -> RawTensor {
        let v = t.to_vec();
        let (dtype, bytes) = if E::DTYPE == kiln_tensor::DType::F32 {
            (Dtype::F32, v.iter().flat_map(|x| (Float::to_f64(*x) as f32).to_le_bytes()).collect())
        } else {
            (Dtype::F64, v.iter().flat_map(|x| Float::to_f64(*x).to_le_bytes()).collect())
        };
        RawTensor { dtype, shape: t.shape().to_vec(), data: bytes }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn checkpoint_error(path: &Path, record: &str, message: String) -> NnError {
    NnError::Checkpoint { path: path.to_path_buf(), record: record.to_string(), message }
}

/// The bytes of a checkpoint holding `tensors` as an `OrderedDict`, in the given order (see
/// the [module docs](self) for the layout). `path` only names the file in errors.
///
/// # Errors
/// [`NnError::Checkpoint`] naming the key: a dtype PyTorch has no storage class for (`U16`,
/// `U32`, `U64`, the 8-bit floats), a byte count that is not `numel * dtype size`, or a key
/// given twice; a checkpoint beyond 4 GiB (kiln writes no zip64 yet).
pub fn pt_bytes(path: &Path, tensors: &[(String, RawTensor)]) -> Result<Vec<u8>, NnError> {
    let mut out = Vec::new();
    write_pt(path, tensors, &mut out)?;
    Ok(out)
}

fn plan(path: &Path, tensors: &[(String, RawTensor)]) -> Result<Vec<u8>, NnError> {
    let mut seen = std::collections::HashSet::new();
    let mut items = Vec::with_capacity(tensors.len());
    for (n, (key, t)) in tensors.iter().enumerate() {
        if !seen.insert(key.as_str()) {
            return Err(checkpoint_error(path, "", format!("tensor key `{key}` is given twice")));
        }
        let class = PT_DTYPES.iter().find(|(d, _)| *d == t.dtype).map(|(_, c)| *c).ok_or_else(|| {
            checkpoint_error(path, "", format!("tensor `{key}`: PyTorch has no storage type for dtype {}", t.dtype))
        })?;
        let numel = t.numel();
        if numel.checked_mul(t.dtype.size()) != Some(t.data.len()) {
            return Err(checkpoint_error(
                path,
                "",
                format!(
                    "tensor `{key}`: {} {:?} needs {numel} elements but {} bytes were given",
                    t.dtype,
                    t.shape,
                    t.data.len()
                ),
            ));
        }
        let int = |x: usize| Term::Int(i64::try_from(x).expect("sizes fit i64"));
        let mut stride = vec![0usize; t.shape.len()];
        let mut s = 1usize;
        for (d, &size) in t.shape.iter().enumerate().rev() {
            stride[d] = s;
            s *= size.max(1);
        }
        let storage = Term::PersistentId(Box::new(Term::Tuple(vec![
            Term::str("storage"),
            Term::global("torch", class),
            Term::Str(n.to_string()),
            Term::str("cpu"),
            int(numel),
        ])));
        let ordered_dict = || Term::call(Term::global("collections", "OrderedDict"), vec![]);
        let tensor = Term::call(
            Term::global("torch._utils", "_rebuild_tensor_v2"),
            vec![
                storage,
                Term::Int(0),
                Term::Tuple(t.shape.iter().map(|&d| int(d)).collect()),
                Term::Tuple(stride.into_iter().map(int).collect()),
                Term::Bool(false),
                ordered_dict(),
            ],
        );
        items.push((Term::Str(key.clone()), tensor));
    }
    let root = Term::Call { func: Box::new(Term::global("collections", "OrderedDict")), args: vec![], items };
    Ok(dumps(&root))
}

fn write_pt<W: Write>(path: &Path, tensors: &[(String, RawTensor)], out: W) -> Result<(), NnError> {
    let pickle = plan(path, tensors)?;
    let io_err = |e: io::Error| crate::serialize::io_error(path, "write", &e);
    write_records(&pickle, tensors, out).map_err(io_err)
}

fn write_records<W: Write>(pickle: &[u8], tensors: &[(String, RawTensor)], out: W) -> io::Result<()> {
    let mut zip = ZipWriter::new(out, ALIGNMENT);
    zip.add(&format!("{PREFIX}/data.pkl"), pickle)?;
    zip.add(&format!("{PREFIX}/byteorder"), b"little")?;
    for (n, (_, t)) in tensors.iter().enumerate() {
        zip.add(&format!("{PREFIX}/data/{n}"), &t.data)?;
    }
    zip.add(&format!("{PREFIX}/version"), b"3\n")?;
    zip.finish()?;
    Ok(())
}

/// Saves `tensors` to a PyTorch checkpoint at `path`, atomically, as an `OrderedDict` in the
/// given order: what `torch.load(path, weights_only=True)` returns.
///
/// # Errors
/// Those of [`pt_bytes`] (nothing is written then); [`NnError::Io`] when the file cannot be
/// written (the previous file, if any, is intact).
pub fn save_pt_tensors(tensors: &[(String, RawTensor)], path: impl AsRef<Path>) -> Result<(), NnError> {
    let path = path.as_ref();
    let pickle = plan(path, tensors)?;
    write_atomic(path, |w| write_records(&pickle, tensors, w))
}

/// Saves a state dict to a PyTorch checkpoint (see [`save_pt`]), atomically.
///
/// # Errors
/// [`NnError::Io`] when the file cannot be written (the previous file, if any, is intact).
pub fn save_pt_state_dict<E: Float>(state: &StateDict<E>, path: impl AsRef<Path>) -> Result<(), NnError> {
    let tensors: Vec<(String, RawTensor)> = state
        .iter()
        .map(|(k, t)| {
            let v = t.to_vec();
            let raw = if is_integer_buffer(k)
                && v.iter().all(|x| Float::to_f64(*x).fract() == 0.0 && Float::to_f64(*x).abs() < 9e15)
            {
                RawTensor {
                    dtype: Dtype::I64,
                    shape: t.shape().to_vec(),
                    data: v.iter().flat_map(|x| (Float::to_f64(*x) as i64).to_le_bytes()).collect(),
                }
            } else {
                RawTensor::from_tensor(t)
            };
            (k.clone(), raw)
        })
        .collect();
    save_pt_tensors(&tensors, path)
}

/// Saves a model's parameters and buffers to a PyTorch checkpoint (`.pt`), under their
/// `state_dict` keys, atomically: what `torch.save(model.state_dict(), path)` writes, and
/// what `model.load_state_dict(torch.load(path, weights_only=True))` loads. Floats keep
/// their precision (`f32` as `torch.float32`, `f64` as `torch.float64`); the counts PyTorch
/// keeps as integers (`num_batches_tracked`) are `torch.int64`.
///
/// ```
/// use kiln_nn::serialize::{save_pt, PtFile};
/// use kiln_nn::{load, Linear, Module};
/// let dir = std::env::temp_dir().join(format!("kiln-doc-save-pt-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("linear.pt");
///
/// let trained: Linear = Linear::new(3, 2);
/// save_pt(&trained, &path).unwrap();
/// assert_eq!(PtFile::open(&path).unwrap().state_dict_tensors().len(), 2);
///
/// let mut fresh: Linear = Linear::new(3, 2);
/// load(&mut fresh, &path, true).unwrap();
/// assert_eq!(fresh.weight.value().to_vec(), trained.weight.value().to_vec());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Errors
/// [`NnError::Io`] when the file cannot be written (the previous file, if any, is intact).
pub fn save_pt<E: Float>(model: &dyn Module<E>, path: impl AsRef<Path>) -> Result<(), NnError> {
    save_pt_state_dict(&model.state_dict(), path)
}

#[cfg(test)]
mod tests {
    use super::super::{PtFile, PtFormat};
    use super::*;

    fn raw(dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> RawTensor {
        RawTensor { dtype, shape: shape.to_vec(), data: bytes }
    }

    /// One tensor of every dtype PyTorch's `weights_only` loader takes, with awkward shapes.
    fn every_dtype() -> Vec<(String, RawTensor)> {
        vec![
            (
                "f32".into(),
                raw(
                    Dtype::F32,
                    &[2, 3],
                    [1.5f32, -2.0, 0.0, 3.25, 1e-8, -7.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            ),
            ("f64".into(), raw(Dtype::F64, &[3], [0.1f64, -1e300, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect())),
            ("f16".into(), raw(Dtype::F16, &[2], vec![0x00, 0x38, 0xff, 0x7b])), // 0.5, 65504
            ("bf16".into(), raw(Dtype::BF16, &[2, 1], vec![0x80, 0x3f, 0x49, 0xc0])), // 1, -3.140625
            ("i64".into(), raw(Dtype::I64, &[], (-(1i64 << 40)).to_le_bytes().to_vec())),
            ("i32".into(), raw(Dtype::I32, &[2], [7i32, -9].iter().flat_map(|x| x.to_le_bytes()).collect())),
            ("u8".into(), raw(Dtype::U8, &[1, 4], vec![0, 1, 128, 255])),
            ("bool".into(), raw(Dtype::Bool, &[3], vec![1, 0, 1])),
            ("empty".into(), raw(Dtype::F32, &[0, 3], vec![])),
        ]
    }

    #[test]
    fn kiln_reads_back_every_dtype() {
        let tensors = every_dtype();
        let bytes = pt_bytes(Path::new("x.pt"), &tensors).unwrap();
        let f = PtFile::from_bytes(bytes).unwrap();
        assert_eq!(f.format(), &PtFormat::Zip { prefix: "archive/".into() });
        assert_eq!(f.state_dict_path(), "");
        let read = f.state_dict_tensors();
        assert_eq!(
            read.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            tensors.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
        );
        for ((k, t), (_, want)) in read.iter().zip(&tensors) {
            assert_eq!(t.dtype, want.dtype, "{k}");
            assert_eq!(t.shape, want.shape, "{k}");
            assert!(t.is_contiguous(), "{k}");
            assert!(!t.requires_grad, "{k}");
            assert_eq!(f.contiguous_bytes(t), want.data, "{k}");
        }
        assert_eq!(f.tensor_i64("i64", read[4].1).unwrap(), [-(1i64 << 40)]);
        assert_eq!(f.tensor::<f32>("bf16", read[3].1).unwrap().to_vec(), [1.0, -3.140625]);
    }

    #[test]
    fn model_state_round_trips_with_integer_counts() {
        let dir = std::env::temp_dir().join(format!("kiln-pt-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.pt");
        let mut sd: StateDict<f64> = StateDict::new();
        sd.insert("0.weight".into(), Tensor::from_vec(vec![0.1, 0.2, -0.3, 4.0], &[2, 2]));
        sd.insert("1.num_batches_tracked".into(), Tensor::scalar(12.0));
        save_pt_state_dict(&sd, &path).unwrap();
        let f = PtFile::open(&path).unwrap();
        let read = f.state_dict_tensors();
        assert_eq!(read[0].1.dtype, Dtype::F64);
        assert_eq!(read[1].1.dtype, Dtype::I64);
        assert_eq!(f.state_dict::<f64>().unwrap(), sd);
        // Saving again replaces the file atomically, leaving no temporary behind.
        save_pt_state_dict(&sd, &path).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_refused_naming_the_key() {
        let p = Path::new("out.pt");
        let short = vec![("w".to_string(), raw(Dtype::F32, &[2, 2], vec![0; 12]))];
        let e = pt_bytes(p, &short).unwrap_err().to_string();
        assert!(e.contains("out.pt") && e.contains("`w`") && e.contains("12 bytes"), "{e}");
        let u16s = vec![("u".to_string(), raw(Dtype::U16, &[1], vec![0; 2]))];
        let e = pt_bytes(p, &u16s).unwrap_err().to_string();
        assert!(e.contains("`u`") && e.contains("no storage type for dtype U16"), "{e}");
        let twice =
            vec![("a".to_string(), raw(Dtype::U8, &[1], vec![1])), ("a".to_string(), raw(Dtype::U8, &[1], vec![2]))];
        assert!(pt_bytes(p, &twice).unwrap_err().to_string().contains("given twice"));
        // Nothing is written when the input is refused.
        let dir = std::env::temp_dir().join(format!("kiln-pt-writer-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(save_pt_tensors(&short, dir.join("x.pt")).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
