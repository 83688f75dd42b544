//! The library behind the `kiln` command: model files of three formats read into one form
//! ([`Weights`]), written as safetensors with their dtypes, listed and compared.
//!
//! Formats, recognised by their first bytes (not by their extension):
//! - safetensors;
//! - PyTorch checkpoints (`torch.save`'s `.pt` / `.pth`, zip or legacy format), read with
//!   the allow-list of `torch.load(weights_only=True)`: a pickle that names code is refused;
//! - kiln training checkpoints (`KILNCKPT`, as `kiln_train::checkpoint::save_checkpoint`
//!   writes them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_nn::serialize::{Dtype, PtFile, PtValue, SafetensorsFile};
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
}

impl Format {
    /// The name shown by `kiln inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::PytorchZip => "pytorch (zip)",
            Format::PytorchLegacy => "pytorch (legacy)",
            Format::KilnCheckpoint => "kiln checkpoint",
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
}

fn io(path: &Path, e: &std::io::Error) -> CliError {
    CliError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// The format of the file at `path`, from its first bytes.
///
/// # Errors
/// [`CliError::Io`] when it cannot be read.
pub fn detect(path: &Path) -> Result<Format, CliError> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head)).map_err(|e| io(path, &e))?;
    Ok(if head.starts_with(b"KILNCKPT") {
        Format::KilnCheckpoint
    } else if kiln_nn::serialize::looks_like_pytorch(&head) && head.get(8) != Some(&b'{') {
        if head.starts_with(b"PK") {
            Format::PytorchZip
        } else {
            Format::PytorchLegacy
        }
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
        match format {
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
        Ok(Weights { path: path.to_path_buf(), format, tensors, metadata })
    }

    /// The number of elements of the float tensors (the parameter count, buffers included).
    pub fn parameter_count(&self) -> usize {
        self.tensors.iter().filter(|e| e.dtype.is_float()).map(Entry::numel).sum()
    }

    /// The listing `kiln inspect` prints.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}: {}, {} tensors", self.path.display(), self.format.name(), self.tensors.len());
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
        json!({
            "file": self.path.display().to_string(),
            "format": self.format.name(),
            "metadata": self.metadata,
            "tensors": self.tensors.iter().map(|e| json!({
                "key": e.key, "dtype": e.dtype.as_str(), "shape": e.shape, "numel": e.numel(),
            })).collect::<Vec<_>>(),
            "parameters": self.parameter_count(),
            "bytes": self.tensors.iter().map(|e| e.bytes.len()).sum::<usize>(),
        })
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
        while (8 + head.len()) % 8 != 0 {
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

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
