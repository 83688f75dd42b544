//! The library behind the `kiln` command: model files of three formats read into one form
//! ([`Weights`]), written as safetensors with their dtypes, listed and compared.
//!
//! Formats, recognised by their first bytes (not by their extension):
//! - safetensors;
//! - PyTorch checkpoints (`torch.save`'s `.pt` / `.pth`, zip or legacy format), read with
//!   the allow-list of `torch.load(weights_only=True)`: a pickle that names code is refused;
//! - kiln training checkpoints (`KILNCKPT`, as `kiln_train::checkpoint::save_checkpoint`
//!   writes them);
//! - ONNX models (recognised by their `.onnx` extension: protobuf has no magic number), whose
//!   initializers are the tensors, with the graph's opsets, producer, inputs, outputs and
//!   node counts ([`OnnxInfo`]).
//!
//! Files are written as safetensors or, for an output ending in `.pt` / `.pth`, as a PyTorch
//! checkpoint `torch.load(weights_only=True)` reads ([`Weights::write_pt`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_nn::serialize::{save_pt_tensors, Dtype, PtFile, PtValue, RawTensor, SafetensorsFile};
use kiln_onnx::proto::{tensor_shape_proto::dimension, type_proto, ModelProto, TensorProto, ValueInfoProto};
use prost::Message;
use serde_json::{json, Value};

/// What the `kiln` command reports as a failure (exit code 1): one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A model file that cannot be read (its own error names it).
    #[error("{0}")]
    Nn(#[from] kiln_nn::NnError),
    /// A kiln checkpoint that cannot be read (its own error names it).
    #[error("{0}")]
    Train(Box<kiln_train::TrainError>),
    /// A file that cannot be opened.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },
    /// A file that is not a valid ONNX model, or holds an initializer kiln cannot read.
    #[error("{}: {message}", path.display())]
    Onnx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A request the file cannot satisfy (`--key` naming nothing, a tensor that cannot go to
    /// safetensors).
    #[error("{}: {message}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl From<kiln_train::TrainError> for CliError {
    fn from(e: kiln_train::TrainError) -> Self {
        CliError::Train(Box::new(e))
    }
}

/// The format of a model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// safetensors.
    Safetensors,
    /// A PyTorch checkpoint, zip format.
    PytorchZip,
    /// A PyTorch checkpoint, legacy format.
    PytorchLegacy,
    /// A kiln training checkpoint.
    KilnCheckpoint,
    /// An ONNX model.
    Onnx,
}

impl Format {
    /// The name shown by `kiln inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::PytorchZip => "pytorch (zip)",
            Format::PytorchLegacy => "pytorch (legacy)",
            Format::KilnCheckpoint => "kiln checkpoint",
            Format::Onnx => "onnx",
        }
    }
}

/// One tensor of a file, as contiguous little-endian bytes of its dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its key (`0.weight`; `optimizer.state.0.exp_avg` for a whole PyTorch checkpoint).
    pub key: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements, row-major, little-endian.
    pub bytes: Vec<u8>,
}

impl Entry {
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A model file read into one form: its tensors in the file's order, and its other values.
#[derive(Clone, Debug)]
pub struct Weights {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The tensors.
    pub tensors: Vec<Entry>,
    /// Everything else, as text: safetensors' `__metadata__`, a checkpoint's non-tensor values
    /// by dotted path (`epoch`, `optimizer.param_groups.0.lr`), a kiln checkpoint's epoch,
    /// optimiser and history.
    pub metadata: BTreeMap<String, String>,
    /// For an ONNX model: its graph's description.
    pub onnx: Option<OnnxInfo>,
}

fn io(path: &Path, e: &std::io::Error) -> CliError {
    CliError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// The format of the file at `path`, from its first bytes (ONNX: from its `.onnx` extension).
///
/// # Errors
/// [`CliError::Io`] when it cannot be read.
pub fn detect(path: &Path) -> Result<Format, CliError> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head)).map_err(|e| io(path, &e))?;
    let onnx_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    Ok(if head.starts_with(b"KILNCKPT") {
        Format::KilnCheckpoint
    } else if kiln_nn::serialize::looks_like_pytorch(&head) && head.get(8) != Some(&b'{') {
        if head.starts_with(b"PK") {
            Format::PytorchZip
        } else {
            Format::PytorchLegacy
        }
    } else if onnx_name {
        Format::Onnx
    } else {
        Format::Safetensors
    })
}

impl Weights {
    /// Reads every tensor of the file at `path`. For a PyTorch checkpoint, `key` chooses the
    /// subtree whose tensors are taken (`Some("")`: all of them, keyed by dotted path;
    /// `None`: the weights, as [`PtFile::state_dict_path`] finds them).
    ///
    /// # Errors
    /// The reader's error, naming the file; [`CliError::Unsupported`] when `key` names nothing.
    pub fn read(path: &Path, key: Option<&str>) -> Result<Self, CliError> {
        let format = detect(path)?;
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::new();
        let mut onnx = None;
        match format {
            Format::Onnx => {
                let bytes = std::fs::read(path).map_err(|e| io(path, &e))?;
                let model = ModelProto::decode(bytes.as_slice()).map_err(|e| CliError::Onnx {
                    path: path.to_path_buf(),
                    message: format!("not an ONNX model (protobuf decoding failed: {e})"),
                })?;
                let graph = model.graph.clone().unwrap_or_default();
                for init in &graph.initializer {
                    tensors.push(onnx_entry(path, init)?);
                }
                onnx = Some(OnnxInfo::new(&model));
                metadata = model.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
            }
            Format::Safetensors => {
                let f = SafetensorsFile::open(path)?;
                metadata = f.metadata().clone();
                let mut infos: Vec<_> = f.tensors().iter().collect();
                infos.sort_by_key(|(_, i)| i.data_offsets.0);
                for (k, i) in infos {
                    let bytes = f.raw_bytes(k)?.to_vec();
                    tensors.push(Entry { key: k.clone(), dtype: i.dtype, shape: i.shape.clone(), bytes });
                }
            }
            Format::PytorchZip | Format::PytorchLegacy => {
                let f = PtFile::open(path)?;
                let at = key.unwrap_or_else(|| f.state_dict_path());
                let sub = f.get(at).ok_or_else(|| CliError::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("no value at key path `{at}`"),
                })?;
                for (k, t) in sub.tensors() {
                    tensors.push(Entry {
                        key: k,
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        bytes: f.contiguous_bytes(t),
                    });
                }
                collect_values(f.root(), String::new(), &mut metadata);
                if !at.is_empty() {
                    metadata.insert("weights at".into(), at.to_string());
                }
            }
            Format::KilnCheckpoint => {
                let c = kiln_train::checkpoint::load_checkpoint(path)?;
                metadata.insert("epoch".into(), c.epoch.to_string());
                if let Some(o) = &c.optimizer {
                    metadata.insert("optimizer".into(), o.name.clone());
                }
                metadata.insert("scheduler".into(), c.scheduler.is_some().to_string());
                metadata.insert("history epochs".into(), c.history.epochs.len().to_string());
                if let Some(last) = c.history.epochs.last() {
                    for (k, v) in last.iter() {
                        metadata.insert(format!("last epoch {k}"), format!("{v}"));
                    }
                }
                for (k, t) in &c.model {
                    let bytes = t.to_vec().iter().flat_map(|x| x.to_le_bytes()).collect();
                    tensors.push(Entry { key: k.clone(), dtype: Dtype::F32, shape: t.shape().to_vec(), bytes });
                }
            }
        }
        Ok(Weights { path: path.to_path_buf(), format, tensors, metadata, onnx })
    }

    /// The number of elements of the float tensors (the parameter count, buffers included).
    pub fn parameter_count(&self) -> usize {
        self.tensors.iter().filter(|e| e.dtype.is_float()).map(Entry::numel).sum()
    }

    /// The listing `kiln inspect` prints.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}: {}, {} tensors", self.path.display(), self.format.name(), self.tensors.len());
        if let Some(info) = &self.onnx {
            s.push_str(&info.listing());
        }
        for (k, v) in &self.metadata {
            let _ = writeln!(s, "  {k} = {v}");
        }
        let width = self.tensors.iter().map(|e| e.key.len()).max().unwrap_or(0);
        for e in &self.tensors {
            let _ = writeln!(s, "  {:width$}  {:<4}  {:?}", e.key, e.dtype.as_str(), e.shape);
        }
        let bytes: usize = self.tensors.iter().map(|e| e.bytes.len()).sum();
        let _ = write!(s, "parameters: {} ({} bytes of tensor data)", self.parameter_count(), bytes);
        s
    }

    /// What `kiln inspect --json` prints.
    pub fn to_json(&self) -> Value {
        let mut j = json!({
            "file": self.path.display().to_string(),
            "format": self.format.name(),
            "metadata": self.metadata,
            "tensors": self.tensors.iter().map(|e| json!({
                "key": e.key, "dtype": e.dtype.as_str(), "shape": e.shape, "numel": e.numel(),
            })).collect::<Vec<_>>(),
            "parameters": self.parameter_count(),
            "bytes": self.tensors.iter().map(|e| e.bytes.len()).sum::<usize>(),
        });
        if let Some(info) = &self.onnx {
            j["onnx"] = info.to_json();
        }
        j
    }

    /// Writes the tensors to a PyTorch checkpoint (an `OrderedDict` of tensors, with their
    /// dtypes, in the file's order) that `torch.load(out, weights_only=True)` reads,
    /// atomically (see [`write_file_atomic`]).
    ///
    /// # Errors
    /// [`CliError::Nn`] for a dtype PyTorch has no storage type for (`U16`, `U32`, `U64`, the
    /// 8-bit floats), a repeated key, or a file that cannot be written (the previous file, if
    /// any, is intact).
    pub fn write_pt(&self, out: &Path) -> Result<(), CliError> {
        let tensors: Vec<(String, RawTensor)> = self
            .tensors
            .iter()
            .map(|e| (e.key.clone(), RawTensor { dtype: e.dtype, shape: e.shape.clone(), data: e.bytes.clone() }))
            .collect();
        Ok(save_pt_tensors(&tensors, out)?)
    }

    /// Writes the tensors to `out`: a PyTorch checkpoint when its name ends in `.pt` or
    /// `.pth` ([`write_pt`](Weights::write_pt)), else safetensors
    /// ([`write_safetensors`](Weights::write_safetensors)); returns the format written.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn write(&self, out: &Path) -> Result<&'static str, CliError> {
        if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("pt") || e.eq_ignore_ascii_case("pth")) {
            self.write_pt(out)?;
            Ok("pytorch")
        } else {
            self.write_safetensors(out)?;
            Ok("safetensors")
        }
    }

    /// Writes the tensors to a safetensors file with their dtypes, atomically (see
    /// [`write_file_atomic`]); `format: pt` and `converted_from` go into the metadata.
    ///
    /// # Errors
    /// [`CliError::Nn`] when the file cannot be written (the previous file, if any, is intact).
    pub fn write_safetensors(&self, out: &Path) -> Result<(), CliError> {
        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), "pt".into());
        meta.insert("converted_from".into(), self.format.name().into());
        if self.format == Format::Safetensors {
            for (k, v) in &self.metadata {
                meta.insert(k.clone(), v.clone().into());
            }
        }
        header.insert("__metadata__".into(), Value::Object(meta));
        let mut at = 0usize;
        for e in &self.tensors {
            if e.key == "__metadata__" || header.contains_key(&e.key) {
                return Err(CliError::Unsupported {
                    path: self.path.clone(),
                    message: format!("tensor key `{}` cannot be written to safetensors (reserved or repeated)", e.key),
                });
            }
            header.insert(
                e.key.clone(),
                json!({"dtype": e.dtype.as_str(), "shape": e.shape, "data_offsets": [at, at + e.bytes.len()]}),
            );
            at += e.bytes.len();
        }
        let mut head = Value::Object(header).to_string().into_bytes();
        // Pad with spaces so that the data starts 8-byte aligned, as the reference writer does.
        while !(8 + head.len()).is_multiple_of(8) {
            head.push(b' ');
        }
        write_file_atomic(out, |w| {
            w.write_all(&(head.len() as u64).to_le_bytes())?;
            w.write_all(&head)?;
            for e in &self.tensors {
                w.write_all(&e.bytes)?;
            }
            Ok(())
        })
    }
}

/// The one place the command writes files: kiln's atomic writer (temporary file in the same
/// folder, fsync, rename over the target, fsync the folder).
///
/// # Errors
/// [`CliError::Nn`] naming the file and the step that failed.
pub fn write_file_atomic(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), CliError> {
    Ok(kiln_nn::serialize::write_atomic(path, body)?)
}

fn collect_values(v: &PtValue, prefix: String, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        PtValue::Tensor(_) => {}
        PtValue::Dict(d) => {
            for (k, v) in d {
                let k = match k {
                    PtValue::Str(s) => s.clone(),
                    other => other.describe(),
                };
                collect_values(v, join(&k), out);
            }
        }
        PtValue::List(l) | PtValue::Tuple(l) => {
            for (i, v) in l.iter().enumerate() {
                collect_values(v, join(&i.to_string()), out);
            }
        }
        other if !prefix.is_empty() => {
            out.insert(prefix, other.describe());
        }
        _ => {}
    }
}

/// The comparison of one tensor present in both files.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDiff {
    /// The key.
    pub key: String,
    /// Dtypes in A and B.
    pub dtypes: (Dtype, Dtype),
    /// Shapes in A and B.
    pub shapes: (Vec<usize>, Vec<usize>),
    /// `max |a - b|` (`None` when the shapes differ).
    pub max_abs: Option<f64>,
    /// `max |a - b| / |b|` over elements where they differ (`inf` where `b` is 0).
    pub max_rel: Option<f64>,
    /// Whether every element is within `atol + rtol * |b|` (and the shapes agree).
    pub within: bool,
}

/// What `kiln diff` finds.
#[derive(Clone, Debug, PartialEq)]
pub struct Diff {
    /// Keys only A has.
    pub only_a: Vec<String>,
    /// Keys only B has.
    pub only_b: Vec<String>,
    /// Every key both have, in A's order.
    pub tensors: Vec<TensorDiff>,
}

impl Diff {
    /// Compares the tensors of `a` and `b` with tolerances `atol`, `rtol` (both 0: exact).
    pub fn new(a: &Weights, b: &Weights, atol: f64, rtol: f64) -> Self {
        let bmap: BTreeMap<&str, &Entry> = b.tensors.iter().map(|e| (e.key.as_str(), e)).collect();
        let amap: BTreeMap<&str, &Entry> = a.tensors.iter().map(|e| (e.key.as_str(), e)).collect();
        let only_a = a.tensors.iter().filter(|e| !bmap.contains_key(e.key.as_str())).map(|e| e.key.clone()).collect();
        let only_b = b.tensors.iter().filter(|e| !amap.contains_key(e.key.as_str())).map(|e| e.key.clone()).collect();
        let mut tensors = Vec::new();
        for ea in &a.tensors {
            let Some(eb) = bmap.get(ea.key.as_str()) else { continue };
            let mut d = TensorDiff {
                key: ea.key.clone(),
                dtypes: (ea.dtype, eb.dtype),
                shapes: (ea.shape.clone(), eb.shape.clone()),
                max_abs: None,
                max_rel: None,
                within: false,
            };
            if ea.shape == eb.shape {
                let (va, vb) = (ea.dtype.to_f64(&ea.bytes), eb.dtype.to_f64(&eb.bytes));
                let (mut abs, mut rel, mut within) = (0.0f64, 0.0f64, true);
                for (&x, &y) in va.iter().zip(&vb) {
                    let same = x == y || (x.is_nan() && y.is_nan());
                    let diff = if same { 0.0 } else { (x - y).abs() };
                    abs = abs.max(if diff.is_nan() { f64::INFINITY } else { diff });
                    if !same {
                        rel = rel.max(if y == 0.0 { f64::INFINITY } else { diff / y.abs() });
                        within &= diff <= atol + rtol * y.abs();
                    }
                }
                d.max_abs = Some(abs);
                d.max_rel = Some(rel);
                d.within = within;
            }
            tensors.push(d);
        }
        Diff { only_a, only_b, tensors }
    }

    /// Whether the files hold the same keys and shapes, every tensor within tolerance.
    pub fn is_same(&self) -> bool {
        self.only_a.is_empty() && self.only_b.is_empty() && self.tensors.iter().all(|t| t.within)
    }

    /// The report `kiln diff` prints.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let width = self.tensors.iter().map(|t| t.key.len()).max().unwrap_or(0);
        for t in &self.tensors {
            let mark = if t.within { " " } else { "!" };
            match (t.max_abs, t.max_rel) {
                (Some(a), Some(r)) => {
                    let _ = writeln!(s, "{mark} {:width$}  max abs {a:.3e}  max rel {r:.3e}", t.key);
                }
                _ => {
                    let _ = writeln!(s, "{mark} {:width$}  shape {:?} vs {:?}", t.key, t.shapes.0, t.shapes.1);
                }
            }
        }
        for k in &self.only_a {
            let _ = writeln!(s, "- {k}  only in A");
        }
        for k in &self.only_b {
            let _ = writeln!(s, "+ {k}  only in B");
        }
        let differ = self.tensors.iter().filter(|t| !t.within).count();
        let _ = write!(
            s,
            "{} common tensors, {differ} differ; {} only in A, {} only in B",
            self.tensors.len(),
            self.only_a.len(),
            self.only_b.len()
        );
        s
    }

    /// What `kiln diff --json` prints.
    pub fn to_json(&self) -> Value {
        let num = |x: Option<f64>| x.map_or(Value::Null, |v| if v.is_finite() { json!(v) } else { json!("inf") });
        json!({
            "same": self.is_same(),
            "only_a": self.only_a,
            "only_b": self.only_b,
            "tensors": self.tensors.iter().map(|t| json!({
                "key": t.key,
                "dtype": [t.dtypes.0.as_str(), t.dtypes.1.as_str()],
                "shape": [t.shapes.0, t.shapes.1],
                "max_abs": num(t.max_abs),
                "max_rel": num(t.max_rel),
                "within": t.within,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The name of an ONNX `TensorProto.DataType` (`float32`, `int64`), as PyTorch spells dtypes.
pub fn onnx_type_name(data_type: i32) -> String {
    match data_type {
        1 => "float32".into(),
        2 => "uint8".into(),
        3 => "int8".into(),
        4 => "uint16".into(),
        5 => "int16".into(),
        6 => "int32".into(),
        7 => "int64".into(),
        8 => "string".into(),
        9 => "bool".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        12 => "uint32".into(),
        13 => "uint64".into(),
        16 => "bfloat16".into(),
        other => format!("type {other}"),
    }
}

/// kiln's dtype for an ONNX element type, with the size of the elements that ONNX keeps in
/// `int32_data` when there is no `raw_data`.
fn onnx_dtype(data_type: i32) -> Option<Dtype> {
    Some(match data_type {
        1 => Dtype::F32,
        2 => Dtype::U8,
        3 => Dtype::I8,
        4 => Dtype::U16,
        5 => Dtype::I16,
        6 => Dtype::I32,
        7 => Dtype::I64,
        9 => Dtype::Bool,
        10 => Dtype::F16,
        11 => Dtype::F64,
        12 => Dtype::U32,
        13 => Dtype::U64,
        16 => Dtype::BF16,
        _ => return None,
    })
}

/// An initializer as an [`Entry`]: `raw_data`, or the typed field ONNX keeps it in.
fn onnx_entry(path: &Path, t: &TensorProto) -> Result<Entry, CliError> {
    let bad = |message: String| CliError::Onnx { path: path.to_path_buf(), message };
    let name = &t.name;
    let dtype = onnx_dtype(t.data_type).ok_or_else(|| {
        bad(format!("initializer `{name}`: element type {} is not supported", onnx_type_name(t.data_type)))
    })?;
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(bad(format!("initializer `{name}`: its data is in an external file, which kiln does not read")));
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("initializer `{name}`: negative dimension {d}"))))
        .collect::<Result<_, _>>()?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let bytes: Vec<u8> = if !t.raw_data.is_empty() {
        t.raw_data.clone()
    } else {
        match dtype {
            Dtype::F32 => t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F64 => t.double_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::I64 => t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::U32 | Dtype::U64 => {
                return Err(bad(format!("initializer `{name}`: {dtype} data outside raw_data is not supported")))
            }
            // int32_data holds one element per entry, in its low bytes (f16/bf16 as bits).
            _ => t.int32_data.iter().flat_map(|x| x.to_le_bytes()[..dtype.size()].to_vec()).collect(),
        }
    };
    if numel.and_then(|n| n.checked_mul(dtype.size())) != Some(bytes.len()) {
        return Err(bad(format!(
            "initializer `{name}`: {} {shape:?} needs {} bytes of data, it has {}",
            onnx_type_name(t.data_type),
            numel.map_or_else(|| "more than 2^64".to_string(), |n| (n * dtype.size()).to_string()),
            bytes.len()
        )));
    }
    Ok(Entry { key: name.clone(), dtype, shape, bytes })
}

/// A graph input or output: name, element type and dimensions (a fixed size, or the name of
/// a dynamic one such as `batch`; `?` when unnamed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxValue {
    /// The value's name.
    pub name: String,
    /// Its element type (`float32`).
    pub dtype: String,
    /// Its dimensions.
    pub dims: Vec<String>,
}

impl OnnxValue {
    fn new(v: &ValueInfoProto) -> Self {
        let (dtype, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => (
                onnx_type_name(t.elem_type),
                t.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match &d.value {
                                Some(dimension::Value::DimValue(n)) => n.to_string(),
                                Some(dimension::Value::DimParam(p)) if !p.is_empty() => p.clone(),
                                _ => "?".to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            None => ("unknown".to_string(), Vec::new()),
        };
        OnnxValue { name: v.name.clone(), dtype, dims }
    }
}

impl std::fmt::Display for OnnxValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} [{}]", self.name, self.dtype, self.dims.join(", "))
    }
}

/// What `kiln inspect` shows of an ONNX model besides its initializers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxInfo {
    /// `ir_version` of the model.
    pub ir_version: i64,
    /// The operator sets imported: (domain, `""` for the default `ai.onnx`; version).
    pub opsets: Vec<(String, i64)>,
    /// `producer_name` and `producer_version`, joined by a space.
    pub producer: String,
    /// The graph's inputs that are not initializers.
    pub inputs: Vec<OnnxValue>,
    /// The graph's outputs.
    pub outputs: Vec<OnnxValue>,
    /// The number of nodes of each op type (`Conv` → 2), by op type.
    pub ops: BTreeMap<String, usize>,
}

impl OnnxInfo {
    /// The description of `model`.
    pub fn new(model: &ModelProto) -> Self {
        let graph = model.graph.clone().unwrap_or_default();
        let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut ops = BTreeMap::new();
        for n in &graph.node {
            let op = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            *ops.entry(op).or_insert(0) += 1;
        }
        OnnxInfo {
            ir_version: model.ir_version,
            opsets: model.opset_import.iter().map(|o| (o.domain.clone(), o.version)).collect(),
            producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
            inputs: graph
                .input
                .iter()
                .filter(|v| !initializers.contains(v.name.as_str()))
                .map(OnnxValue::new)
                .collect(),
            outputs: graph.output.iter().map(OnnxValue::new).collect(),
            ops,
        }
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.ops.values().sum()
    }

    fn opset_text(&self) -> String {
        let list: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{} {v}", if d.is_empty() { "ai.onnx" } else { d.as_str() }))
            .collect();
        list.join(", ")
    }

    /// The lines `kiln inspect` prints (each indented, ending in a newline).
    pub fn listing(&self) -> String {
        let mut s = String::new();
        let producer = if self.producer.is_empty() { "unknown" } else { self.producer.as_str() };
        let _ = writeln!(s, "  opset {}, ir_version {}, producer {producer}", self.opset_text(), self.ir_version);
        for v in &self.inputs {
            let _ = writeln!(s, "  input   {v}");
        }
        for v in &self.outputs {
            let _ = writeln!(s, "  output  {v}");
        }
        let ops: Vec<String> = self.ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        let _ = writeln!(s, "  nodes   {}: {}", self.node_count(), ops.join(", "));
        s
    }

    /// The JSON `kiln inspect --json` puts under `onnx`.
    pub fn to_json(&self) -> Value {
        let value = |v: &OnnxValue| json!({"name": v.name, "dtype": v.dtype, "dims": v.dims});
        json!({
            "ir_version": self.ir_version,
            "opsets": self.opsets.iter().map(|(d, v)| json!({"domain": if d.is_empty() { "ai.onnx" } else { d }, "version": v})).collect::<Vec<_>>(),
            "producer": self.producer,
            "inputs": self.inputs.iter().map(value).collect::<Vec<_>>(),
            "outputs": self.outputs.iter().map(value).collect::<Vec<_>>(),
            "nodes": self.node_count(),
            "ops": self.ops,
        })
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
