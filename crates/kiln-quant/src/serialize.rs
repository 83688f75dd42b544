//! Quantised model files: safetensors with the int8 weights as `I8` tensors, scales, biases
//! and zero points as `F32`/`I32` tensors, float layers' parameters as `F32`, and the layer
//! list as JSON in the `__metadata__` map.
//!
//! For layer `i`:
//!
//! | tensor                  | dtype | shape                         |
//! |-------------------------|-------|-------------------------------|
//! | `i.weight`              | I8    | `[out, in]` / `[out, in, kh, kw]` |
//! | `i.weight_scale`        | F32   | `[out]`                       |
//! | `i.bias` (if any)       | F32   | `[out]`                       |
//! | `i.input_scale` (static)| F32   | `[1]`                         |
//! | `i.input_zero_point` (static) | I32 | `[1]`                   |
//! | `i.<key>` (float layer) | F32   | the parameter's               |
//!
//! `__metadata__` holds `format: kiln-quant`, `kiln_quant_version`, and `layers`: a JSON list
//! with one object per layer (`{"kind": "QuantLinear", "in_features", "out_features",
//! "bias", "activation": {"mode": "static" | "dynamic", "dtype": "uint8" | "int8"}}`,
//! `{"kind": "QuantConv2d", ...geometry}`, or `{"kind": "Float", "spec": {"layer", "args"}}`
//! in [`kiln_nn::serialize::sequential_from_json`]'s format). Weights are stored unpacked and
//! packed again for the reading machine's kernel.
//!
//! A float layer's `spec` is the description the layer declares itself in the
//! [kiln-nn layer registry](kiln_nn::registry) ([`float_spec`]), so a file can hold every
//! registered layer type (`Linear`, `Conv1d`, `Conv2d`, `ConvTranspose2d`, the pools,
//! `BatchNorm1d`/`2d`, `LayerNorm`, `GroupNorm`, `Dropout`, `Dropout2d`, `Flatten`, `Identity`,
//! the activations, ...: [`kiln_nn::registry::registrations`]). A model with any other float
//! layer (a layer of your own, a nested `Sequential`, an `LSTM`) runs, but
//! [`QuantSequential::save`] refuses it with [`QuantError::Unsupported`] naming the layer. Before writing, each spec is rebuilt and
//! checked to give a layer that displays as the original does.
//!
//! A [`QuantLSTM`] (not a `Sequential` layer: it returns its states too) has a file of its own,
//! [`QuantLSTM::save`] / [`QuantLSTM::load`], with PyTorch's parameter names (see
//! [`LSTM_FORMAT`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use kiln_nn::serialize::{Dtype, RawTensor, SafetensorsFile};
use kiln_nn::{LSTMConfig, Layer, StateDict};
use kiln_tensor::Tensor;

use crate::conv::{ConvGeometry, QuantConv2d};
use crate::error::QuantError;
use crate::linear::{ActQuant, QuantLinear, QuantWeights};
use crate::lstm::QuantLSTM;
use crate::observer::{QParams, QuantDtype};
use crate::sequential::{FloatLayer, QuantLayer, QuantSequential};

/// The value of `format` in the metadata.
pub const FORMAT: &str = "kiln-quant";

fn act_json(act: &ActQuant) -> Value {
    match act {
        ActQuant::Static(q) => json!({"mode": "static", "dtype": q.dtype.name()}),
        ActQuant::Dynamic(d) => json!({"mode": "dynamic", "dtype": d.name()}),
    }
}

/// A float layer's description in [`kiln_nn::serialize::sequential_from_json`]'s format,
/// `{"layer": <PyTorch class>, "args": {...}}`, as the layer declares it itself through the
/// [kiln-nn layer registry](kiln_nn::registry); `None` for a layer type that is not
/// registered there.
///
/// ```
/// use kiln_nn::{Layer, MaxPool2d, Sequential};
/// let seq: Sequential = Sequential::new().add(MaxPool2d::new(2));
/// let spec = kiln_quant::serialize::float_spec(&seq[0]).unwrap();
/// assert_eq!(spec["layer"], "MaxPool2d");
/// assert_eq!(spec["args"]["kernel_size"], serde_json::json!([2, 2]));
/// ```
#[must_use]
pub fn float_spec(layer: &dyn Layer<f32>) -> Option<Value> {
    kiln_nn::registry::describe(layer)
}

/// The spec of float layer `i` for a file, checked by rebuilding it.
fn checked_spec(i: usize, f: &FloatLayer) -> Result<Value, QuantError> {
    let refuse = |reason: String| QuantError::Unsupported { index: i, layer: f.to_string(), reason };
    let spec = f.spec().ok_or_else(|| {
        refuse("cannot be saved: a model file holds only the kiln-nn layers `sequential_from_json` rebuilds".into())
    })?;
    let rebuilt = FloatLayer::from_spec(&spec).map_err(|e| refuse(format!("cannot be saved: {e}")))?;
    if rebuilt.to_string() != f.to_string() {
        return Err(refuse(format!("cannot be saved: its description {spec} would rebuild it as {rebuilt}")));
    }
    Ok(spec)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl QuantSequential {
    /// Writes the model to a safetensors file (see the [module doc](crate::serialize) for the
    /// layout), atomically: a temporary file in the same folder, fsynced, renamed over `path`.
    ///
    /// ```
    /// use kiln_nn::{Linear, ReLU, Sequential};
    /// use kiln_quant::{quantize_dynamic, QuantConfig, QuantSequential};
    /// use kiln_tensor::Tensor;
    /// let model: Sequential = Sequential::new().add(Linear::new(4, 3)).add(ReLU);
    /// let q = quantize_dynamic(model, QuantConfig::default()).unwrap();
    /// let path = std::env::temp_dir().join(format!("kiln-quant-doc-{}.safetensors", std::process::id()));
    /// q.save(&path).unwrap();
    /// let back = QuantSequential::load(&path).unwrap();
    /// let x = Tensor::ones(&[2, 4]);
    /// assert_eq!(back.forward_tensor(&x).to_vec(), q.forward_tensor(&x).to_vec());
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`QuantError::Unsupported`] naming the layer when a float layer is not one a file can
    /// describe (see the [module doc](crate::serialize)); [`QuantError::Io`] when the file
    /// cannot be written. Either way a previous file stays intact.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), QuantError> {
        let path = path.as_ref();
        let mut tensors: Vec<Entry> = Vec::new();
        let mut list = Vec::new();
        let quantised =
            |tensors: &mut Vec<Entry>, i: usize, shape: Vec<usize>, codes: &[i8], w: &QuantWeights, act: &ActQuant| {
                let codes: Vec<u8> = codes.iter().map(|&v| v as u8).collect();
                tensors.push((format!("{i}.weight"), Dtype::I8, shape, codes));
                tensors.push((format!("{i}.weight_scale"), Dtype::F32, vec![w.scales.len()], f32_bytes(&w.scales)));
                if let Some(b) = &w.bias {
                    tensors.push((format!("{i}.bias"), Dtype::F32, vec![b.len()], f32_bytes(b)));
                }
                if let ActQuant::Static(q) = act {
                    tensors.push((format!("{i}.input_scale"), Dtype::F32, vec![1], f32_bytes(&[q.scale])));
                    tensors.push((
                        format!("{i}.input_zero_point"),
                        Dtype::I32,
                        vec![1],
                        q.zero_point.to_le_bytes().to_vec(),
                    ));
                }
            };
        for (i, layer) in self.layers().iter().enumerate() {
            match layer {
                QuantLayer::Linear(l) => {
                    let (n, k) = (l.out_features(), l.in_features());
                    quantised(&mut tensors, i, vec![n, k], l.weight_codes(), &l.weights, &l.act);
                    list.push(json!({"kind": "QuantLinear", "in_features": k, "out_features": n,
                        "bias": l.bias().is_some(), "activation": act_json(&l.act)}));
                }
                QuantLayer::Conv2d(c) => {
                    let g = c.geometry();
                    let shape = vec![g.out_channels, g.in_channels, g.kernel_size[0], g.kernel_size[1]];
                    quantised(&mut tensors, i, shape, c.weight_codes(), &c.weights, &c.act);
                    list.push(
                        json!({"kind": "QuantConv2d", "in_channels": g.in_channels, "out_channels": g.out_channels,
                        "kernel_size": g.kernel_size, "stride": g.stride, "padding_before": g.padding_before,
                        "padding_after": g.padding_after, "dilation": g.dilation, "bias": c.bias().is_some(),
                        "activation": act_json(&c.act)}),
                    );
                }
                QuantLayer::Float(f) => {
                    for (key, t) in f.layer().state_dict() {
                        let t = t.contiguous();
                        tensors.push((
                            format!("{i}.{key}"),
                            Dtype::F32,
                            t.shape().to_vec(),
                            f32_bytes(t.as_slice().expect("contiguous")),
                        ));
                    }
                    list.push(json!({"kind": "Float", "spec": checked_spec(i, f)?}));
                }
            }
        }
        write_file(path, tensors, FORMAT, [("layers", Value::Array(list).to_string())])
    }

    /// Reads a model written by [`save`](QuantSequential::save), packing the weights for
    /// this machine's kernel.
    ///
    /// # Errors
    /// [`QuantError::Io`] when the file cannot be read; [`QuantError::Format`] when it is not
    /// a valid safetensors file (truncated, corrupt header); [`QuantError::Field`] naming the
    /// tensor or JSON field that is missing or has the wrong dtype, shape or value;
    /// [`QuantError::Layer`] when a float layer cannot be rebuilt. Never panics on bad input.
    pub fn load(path: impl AsRef<Path>) -> Result<QuantSequential, QuantError> {
        let path = path.as_ref();
        let (st, meta) = open(path, FORMAT)?;
        let r = Reader { path, st: &st };
        let list_text =
            meta.get("layers").ok_or_else(|| r.field("__metadata__.layers", "a JSON list of layers", "nothing"))?;
        let list: Value = serde_json::from_str(list_text)
            .map_err(|e| r.field("__metadata__.layers", "a JSON list of layers", &format!("invalid JSON ({e})")))?;
        let list =
            list.as_array().ok_or_else(|| r.field("__metadata__.layers", "a JSON list", "another JSON value"))?;
        let mut layers = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let kind = r.str(entry, i, "kind")?;
            layers.push(match kind {
                "QuantLinear" => {
                    let (k, n) = (r.usize(entry, i, "in_features")?, r.usize(entry, i, "out_features")?);
                    let (codes, scales, bias, act) = r.quantised(entry, i, &[n, k])?;
                    QuantLayer::Linear(QuantLinear::from_codes(&codes, scales, bias, n, k, act))
                }
                "QuantConv2d" => {
                    let g = ConvGeometry {
                        in_channels: r.usize(entry, i, "in_channels")?,
                        out_channels: r.usize(entry, i, "out_channels")?,
                        kernel_size: r.pair(entry, i, "kernel_size", true)?,
                        stride: r.pair(entry, i, "stride", true)?,
                        padding_before: r.pair(entry, i, "padding_before", false)?,
                        padding_after: r.pair(entry, i, "padding_after", false)?,
                        dilation: r.pair(entry, i, "dilation", true)?,
                    };
                    let shape = [g.out_channels, g.in_channels, g.kernel_size[0], g.kernel_size[1]];
                    let (codes, scales, bias, act) = r.quantised(entry, i, &shape)?;
                    QuantLayer::Conv2d(QuantConv2d::from_parts(g, codes, scales, bias, act))
                }
                "Float" => {
                    let spec = entry
                        .get("spec")
                        .cloned()
                        .ok_or_else(|| r.field(&format!("layers[{i}].spec"), "a layer description", "nothing"))?;
                    let mut f = FloatLayer::from_spec(&spec).map_err(|message| QuantError::Layer {
                        path: path.to_path_buf(),
                        index: i,
                        message,
                    })?;
                    let mut state = StateDict::new();
                    for (key, t) in f.layer().state_dict() {
                        state.insert(key.clone(), r.f32_tensor(&format!("{i}.{key}"), t.shape())?);
                    }
                    f.layer_mut().load_state_dict(&state, true).map_err(|e| QuantError::Layer {
                        path: path.to_path_buf(),
                        index: i,
                        message: e.to_string(),
                    })?;
                    QuantLayer::Float(f)
                }
                other => return Err(r.field(&format!("layers[{i}].kind"), "QuantLinear, QuantConv2d or Float", other)),
            });
        }
        Ok(QuantSequential::from_layers(layers))
    }
}

/// The `format` in the metadata of a [`QuantLSTM`] file.
pub const LSTM_FORMAT: &str = "kiln-quant-lstm";

/// `l{layer}` or `l{layer}_reverse`, PyTorch's suffix for a layer and direction.
fn lstm_suffix(layer: usize, reverse: bool) -> String {
    format!("l{layer}{}", if reverse { "_reverse" } else { "" })
}

/// Quantised LSTM files: safetensors with, for each layer `k` and direction (suffix `lk` or
/// `lk_reverse`, as PyTorch names them), `weight_ih_lk` and `weight_hh_lk` as `I8` codes
/// (`[4·hidden, input]`, `[4·hidden, hidden]`), their per-row scales `weight_ih_lk_scale` and
/// `weight_hh_lk_scale` (`F32`, `[4·hidden]`) and, with a bias, `bias_lk` (`F32`,
/// `bias_ih + bias_hh`); the metadata holds `format: kiln-quant-lstm` and `config`, a JSON
/// object (`input_size`, `hidden_size`, `num_layers`, `bias`, `batch_first`, `bidirectional`,
/// `dtype`).
impl QuantLSTM {
    /// Writes the layer to `path` (atomically: a failed write leaves a previous file intact).
    ///
    /// ```
    /// use kiln_nn::{LSTMConfig, LSTM};
    /// use kiln_quant::{QuantDtype, QuantLSTM};
    /// use kiln_tensor::{Rng, Tensor};
    /// let lstm: LSTM = LSTMConfig { num_layers: 2, bidirectional: true, ..LSTMConfig::new(3, 4) }.build().unwrap();
    /// let q = QuantLSTM::dynamic(&lstm, QuantDtype::UInt8);
    /// let path = std::env::temp_dir().join(format!("kiln-quant-lstm-doc-{}.safetensors", std::process::id()));
    /// q.save(&path).unwrap();
    /// let back = QuantLSTM::load(&path).unwrap();
    /// let x = Tensor::uniform(&[5, 2, 3], -1.0, 1.0, &mut Rng::new(0));
    /// assert_eq!(back.forward_tensor(&x).0.to_vec(), q.forward_tensor(&x).0.to_vec());
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`QuantError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), QuantError> {
        let c = self.config();
        let nd = if c.bidirectional { 2 } else { 1 };
        let mut tensors: Vec<Entry> = Vec::new();
        for (i, (ih, hh)) in self.cells().enumerate() {
            let sfx = lstm_suffix(i / nd, i % nd == 1);
            for (name, l) in [("weight_ih", ih), ("weight_hh", hh)] {
                let codes = l.weight_codes().iter().map(|&v| v as u8).collect();
                tensors.push((format!("{name}_{sfx}"), Dtype::I8, vec![l.out_features(), l.in_features()], codes));
                let scales = l.weight_scales();
                tensors.push((format!("{name}_{sfx}_scale"), Dtype::F32, vec![scales.len()], f32_bytes(scales)));
            }
            if let Some(b) = ih.bias() {
                tensors.push((format!("bias_{sfx}"), Dtype::F32, vec![b.len()], f32_bytes(b)));
            }
        }
        let config = json!({"input_size": c.input_size, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
            "bias": c.bias, "batch_first": c.batch_first, "bidirectional": c.bidirectional,
            "dtype": self.dtype().name()});
        write_file(path.as_ref(), tensors, LSTM_FORMAT, [("config", config.to_string())])
    }

    /// Reads a layer written by [`save`](QuantLSTM::save), packing the weights for this
    /// machine's kernel.
    ///
    /// # Errors
    /// [`QuantError::Io`] when the file cannot be read; [`QuantError::Format`] when it is not
    /// a valid safetensors file; [`QuantError::Field`] naming the tensor or `config` field
    /// that is missing or has the wrong dtype, shape or value. Never panics on bad input.
    pub fn load(path: impl AsRef<Path>) -> Result<QuantLSTM, QuantError> {
        let path = path.as_ref();
        let (st, meta) = open(path, LSTM_FORMAT)?;
        let r = Reader { path, st: &st };
        let text = meta.get("config").ok_or_else(|| r.field("__metadata__.config", "a JSON object", "nothing"))?;
        let cfg: Value = serde_json::from_str(text)
            .map_err(|e| r.field("__metadata__.config", "a JSON object", &format!("invalid JSON ({e})")))?;
        let size = |key: &str| r.positive(&cfg, "config", key);
        let flag = |key: &str| {
            cfg.get(key)
                .and_then(Value::as_bool)
                .ok_or_else(|| r.field(&format!("config.{key}"), "true or false", &show(cfg.get(key))))
        };
        let mut config = LSTMConfig::new(size("input_size")?, size("hidden_size")?);
        config.num_layers = size("num_layers")?;
        config.bias = flag("bias")?;
        config.batch_first = flag("batch_first")?;
        config.bidirectional = flag("bidirectional")?;
        let dtype = match cfg.get("dtype").and_then(Value::as_str) {
            Some("uint8") => QuantDtype::UInt8,
            Some("int8") => QuantDtype::Int8,
            _ => return Err(r.field("config.dtype", "\"uint8\" or \"int8\"", &show(cfg.get("dtype")))),
        };
        let (hidden, nd) = (config.hidden_size, if config.bidirectional { 2 } else { 1 });
        let rows = 4 * hidden;
        if rows > crate::gemm::MAX_K || config.num_layers > 1024 {
            return Err(r.field("config", "a hidden size up to 16384 and at most 1024 layers", &cfg.to_string()));
        }
        let act = ActQuant::Dynamic(dtype);
        let mut cells = Vec::with_capacity(config.num_layers * nd);
        for layer in 0..config.num_layers {
            let input = if layer == 0 { config.input_size } else { nd * hidden };
            for d in 0..nd {
                let sfx = lstm_suffix(layer, d == 1);
                let bias = if config.bias { Some(r.f32s(&format!("bias_{sfx}"), &[rows])?) } else { None };
                let proj = |name: &str, k: usize, bias: Option<Vec<f32>>| -> Result<QuantLinear, QuantError> {
                    let key = format!("{name}_{sfx}");
                    let codes: Vec<i8> = r.tensor(&key, Dtype::I8, &[rows, k])?.iter().map(|&b| b as i8).collect();
                    let scales = r.scales(&format!("{key}_scale"), rows)?;
                    Ok(QuantLinear::from_codes(&codes, scales, bias, rows, k, act))
                };
                let ih = proj("weight_ih", input, bias)?;
                let hh = proj("weight_hh", hidden, None)?;
                cells.push((ih, hh));
            }
        }
        Ok(QuantLSTM::from_parts(config, cells))
    }
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes `tensors` as a safetensors file with `format`, the crate version and `extra` in its
/// metadata, through kiln-nn's writer: atomically (a failed write leaves a previous file intact).
fn write_file<const N: usize>(
    path: &Path,
    tensors: Vec<Entry>,
    format: &str,
    extra: [(&str, String); N],
) -> Result<(), QuantError> {
    let metadata: BTreeMap<String, String> =
        [("format".to_string(), format.to_string()), ("kiln_quant_version".to_string(), VERSION.to_string())]
            .into_iter()
            .chain(extra.into_iter().map(|(k, v)| (k.to_string(), v)))
            .collect();
    let tensors: BTreeMap<String, RawTensor> =
        tensors.into_iter().map(|(name, dtype, shape, data)| (name, RawTensor::new(dtype, shape, data))).collect();
    kiln_nn::serialize::save_raw(path, &tensors, &metadata).map_err(|e| QuantError::Io {
        path: path.to_path_buf(),
        action: "write".into(),
        message: e.to_string(),
    })
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Opens and checks a safetensors file (kiln-nn's reader) and its metadata, checking that it is
/// of `format`.
fn open(path: &Path, format: &str) -> Result<(SafetensorsFile, BTreeMap<String, String>), QuantError> {
    let st = SafetensorsFile::open(path).map_err(|e| match e {
        kiln_nn::NnError::Io { action, message, .. } => QuantError::Io { path: path.to_path_buf(), action, message },
        other => QuantError::Format { path: path.to_path_buf(), message: other.to_string() },
    })?;
    let meta = st.metadata().clone();
    let found = meta.get("format").map(String::as_str).unwrap_or("nothing");
    if found != format {
        return Err(QuantError::Field {
            path: path.to_path_buf(),
            field: "__metadata__.format".into(),
            expected: format!("\"{format}\""),
            found: found.into(),
        });
    }
    Ok((st, meta))
}

struct Reader<'a> {
    path: &'a Path,
    st: &'a SafetensorsFile,
}

impl Reader<'_> {
    fn field(&self, field: &str, expected: &str, found: &str) -> QuantError {
        QuantError::Field {
            path: self.path.to_path_buf(),
            field: field.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn str<'v>(&self, entry: &'v Value, i: usize, key: &str) -> Result<&'v str, QuantError> {
        entry
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.field(&format!("layers[{i}].{key}"), "a string", &show(entry.get(key))))
    }

    fn usize(&self, entry: &Value, i: usize, key: &str) -> Result<usize, QuantError> {
        self.positive(entry, &format!("layers[{i}]"), key)
    }

    /// `entry[key]`, an integer in `1..=MAX_K`; errors name the field `{at}.{key}`.
    fn positive(&self, entry: &Value, at: &str, key: &str) -> Result<usize, QuantError> {
        entry
            .get(key)
            .and_then(Value::as_u64)
            .filter(|&n| n > 0 && n <= crate::gemm::MAX_K as u64)
            .map(|n| n as usize)
            .ok_or_else(|| {
                self.field(
                    &format!("{at}.{key}"),
                    &format!("an integer in 1..={}", crate::gemm::MAX_K),
                    &show(entry.get(key)),
                )
            })
    }

    /// `n` positive finite weight scales.
    fn scales(&self, name: &str, n: usize) -> Result<Vec<f32>, QuantError> {
        let scales = self.f32s(name, &[n])?;
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(self.field(name, "positive finite scales", &bad.to_string()));
        }
        Ok(scales)
    }

    fn pair(&self, entry: &Value, i: usize, key: &str, positive: bool) -> Result<[usize; 2], QuantError> {
        let v = entry.get(key).and_then(Value::as_array);
        let ok = |x: &Value| x.as_u64().filter(|&n| n < 1 << 16 && (!positive || n > 0)).map(|n| n as usize);
        match v.map(|a| a.iter().map(ok).collect::<Option<Vec<_>>>()) {
            Some(Some(p)) if p.len() == 2 => Ok([p[0], p[1]]),
            _ => Err(self.field(
                &format!("layers[{i}].{key}"),
                if positive { "two positive integers" } else { "two integers" },
                &show(entry.get(key)),
            )),
        }
    }

    fn tensor(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8], QuantError> {
        let info =
            self.st.info(name).ok_or_else(|| self.field(name, &format!("a {dtype:?} tensor {shape:?}"), "nothing"))?;
        if info.dtype != dtype || info.shape != shape {
            return Err(self.field(
                name,
                &format!("a {dtype:?} tensor {shape:?}"),
                &format!("a {:?} tensor {:?}", info.dtype, info.shape),
            ));
        }
        self.st.raw_bytes(name).map_err(|e| self.field(name, &format!("a {dtype:?} tensor {shape:?}"), &e.to_string()))
    }

    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, QuantError> {
        let t = self.tensor(name, Dtype::F32, shape)?;
        Ok(t.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor<f32>, QuantError> {
        Ok(Tensor::from_vec(self.f32s(name, shape)?, shape))
    }

    /// The int8 codes, weight scales, bias and input quantisation of quantised layer `i`.
    fn quantised(&self, entry: &Value, i: usize, shape: &[usize]) -> Result<QuantisedParts, QuantError> {
        let n = shape[0];
        let k: usize = shape[1..].iter().product();
        if k > crate::gemm::MAX_K {
            return Err(self.field(
                &format!("layers[{i}]"),
                &format!("at most {} inputs per output", crate::gemm::MAX_K),
                &k.to_string(),
            ));
        }
        let codes: Vec<i8> = self.tensor(&format!("{i}.weight"), Dtype::I8, shape)?.iter().map(|&b| b as i8).collect();
        let scales = self.scales(&format!("{i}.weight_scale"), n)?;
        let has_bias = entry
            .get("bias")
            .and_then(Value::as_bool)
            .ok_or_else(|| self.field(&format!("layers[{i}].bias"), "true or false", &show(entry.get("bias"))))?;
        let bias = if has_bias { Some(self.f32s(&format!("{i}.bias"), &[n])?) } else { None };
        let act = entry
            .get("activation")
            .ok_or_else(|| self.field(&format!("layers[{i}].activation"), "an object", "nothing"))?;
        let dtype = match act.get("dtype").and_then(Value::as_str) {
            Some("uint8") => QuantDtype::UInt8,
            Some("int8") => QuantDtype::Int8,
            other => {
                return Err(self.field(
                    &format!("layers[{i}].activation.dtype"),
                    "\"uint8\" or \"int8\"",
                    &show(other.map(|s| Value::String(s.into())).as_ref()),
                ))
            }
        };
        let act = match act.get("mode").and_then(Value::as_str) {
            Some("dynamic") => ActQuant::Dynamic(dtype),
            Some("static") => {
                let scale = self.f32s(&format!("{i}.input_scale"), &[1])?[0];
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(self.field(&format!("{i}.input_scale"), "a positive finite scale", &scale.to_string()));
                }
                let zp_t = self.tensor(&format!("{i}.input_zero_point"), Dtype::I32, &[1])?;
                let d = zp_t;
                let zero_point = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                let (lo, hi) = dtype.range();
                if !(lo..=hi).contains(&zero_point) {
                    return Err(self.field(
                        &format!("{i}.input_zero_point"),
                        &format!("a zero point in {lo}..={hi}"),
                        &zero_point.to_string(),
                    ));
                }
                ActQuant::Static(QParams { scale, zero_point, dtype })
            }
            other => {
                return Err(self.field(
                    &format!("layers[{i}].activation.mode"),
                    "\"static\" or \"dynamic\"",
                    &show(other.map(|s| Value::String(s.into())).as_ref()),
                ))
            }
        };
        Ok((codes, scales, bias, act))
    }
}

/// `(codes, weight scales, bias, input quantisation)` of a quantised layer read from a file.
type QuantisedParts = (Vec<i8>, Vec<f32>, Option<Vec<f32>>, ActQuant);

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quantize_sequential, QuantConfig};
    use kiln_nn::{BatchNorm2d, Conv2dConfig, Flatten, Forward, Linear, MaxPool2d, Module, Padding, ReLU, Sequential};
    use kiln_tensor::Rng;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-quant-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn model_f32() -> Sequential {
        Sequential::new()
            .add(Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(2, 4, 2) }.build::<f32>().unwrap())
            .add(BatchNorm2d::new(4))
            .add(ReLU)
            .add(MaxPool2d::new(2))
            .add(Flatten::default())
            .add(Linear::new(4 * 3 * 3, 5))
    }

    fn quantised() -> QuantSequential {
        let mut rng = Rng::new(5);
        let batches: Vec<Tensor<f32>> = (0..2).map(|_| Tensor::uniform(&[4, 2, 6, 6], -1.0, 1.0, &mut rng)).collect();
        quantize_sequential(model_f32(), &batches, QuantConfig::default()).unwrap()
    }

    #[test]
    fn round_trip_gives_identical_outputs() {
        let q = quantised();
        let path = temp("round_trip.safetensors");
        q.save(&path).unwrap();
        let back = QuantSequential::load(&path).unwrap();
        assert_eq!(back.to_string(), q.to_string());
        let x = Tensor::uniform(&[3, 2, 6, 6], -1.0, 1.0, &mut Rng::new(6));
        assert_eq!(back.forward_tensor(&x).to_vec(), q.forward_tensor(&x).to_vec());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn every_float_layer_kind_is_described_and_read_back() {
        use kiln_nn::{
            AvgPool2dConfig, BatchNorm1d, Conv1dConfig, Dropout, Dropout2d, GeluApproximate, GroupNorm, Identity,
            LayerNorm, LeakyReLU, LogSoftmax, MaxPool2dConfig, SiLU, Sigmoid, Softmax, Softplus, Tanh, ELU, GELU,
        };
        // Conv2d stays f32 under dynamic quantisation; non-default arguments everywhere
        let model: Sequential = Sequential::new()
            .add(
                Conv2dConfig { stride: [2, 1], dilation: [1, 2], bias: false, ..Conv2dConfig::new(2, 4, 3) }
                    .build::<f32>()
                    .unwrap(),
            )
            .add(BatchNorm2d::new(4))
            .add(GroupNorm::new(2, 4))
            .add(LeakyReLU::new(0.2))
            .add(Dropout2d::new(0.1))
            .add(
                AvgPool2dConfig { padding: [1, 1], count_include_pad: false, ..AvgPool2dConfig::new(2) }
                    .build()
                    .unwrap(),
            )
            .add(MaxPool2dConfig { stride: Some([1, 1]), ..MaxPool2dConfig::new(1) }.build().unwrap())
            .add(GELU::new(GeluApproximate::Tanh))
            .add(Flatten::new(2, -1))
            .add(Conv1dConfig { padding: Padding::Same, ..Conv1dConfig::new(4, 3, 3) }.build::<f32>().unwrap())
            .add(ELU::new(0.5))
            .add(SiLU)
            .add(Identity)
            .add(Softplus::new(2.0, 10.0))
            .add(Sigmoid)
            .add(Tanh)
            .add(LayerNorm::new(&[3, 6]))
            .add(Flatten::default())
            .add(BatchNorm1d::new(18))
            .add(Dropout::new(0.3))
            .add(Linear::new(18, 6))
            .add(Softmax::new(1))
            .add(LogSoftmax::new(-1));
        let q = kiln_quant_dynamic(model);
        let path = temp("kinds.safetensors");
        q.save(&path).unwrap();
        let back = QuantSequential::load(&path).unwrap();
        assert_eq!(back.to_string(), q.to_string());
        let x = Tensor::uniform(&[3, 2, 8, 8], -1.0, 1.0, &mut Rng::new(7));
        assert_eq!(back.forward_tensor(&x).to_vec(), q.forward_tensor(&x).to_vec());
        std::fs::remove_file(&path).unwrap();
    }

    /// The tensors and metadata of a file's bytes, to write it again with changes.
    fn parts(bytes: &[u8]) -> (BTreeMap<String, RawTensor>, BTreeMap<String, String>) {
        let st = SafetensorsFile::from_bytes(bytes.to_vec()).unwrap();
        let tensors = st.keys().map(|k| (k.to_string(), st.raw_tensor(k).unwrap())).collect();
        (tensors, st.metadata().clone())
    }

    fn kiln_quant_dynamic(model: Sequential) -> QuantSequential {
        let mut m = model;
        // give BatchNorm some running statistics to carry
        m.train();
        let _ = m.forward(&kiln_autograd::Var::constant(Tensor::uniform(&[5, 2, 8, 8], 0.0, 2.0, &mut Rng::new(8))));
        crate::quantize_dynamic(m, QuantConfig::default()).unwrap()
    }

    #[test]
    fn truncated_and_corrupt_files_give_errors() {
        let q = quantised();
        let path = temp("corrupt.safetensors");
        q.save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 5, 8, 100, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            match QuantSequential::load(&path) {
                Err(e @ QuantError::Format { .. }) => assert!(e.to_string().contains("corrupt.safetensors"), "{e}"),
                Err(e) => panic!("cut {cut}: unexpected {e}"),
                Ok(_) => panic!("cut {cut}: loaded a truncated file"),
            }
        }
        // garbage in the header
        let mut bad = good.clone();
        bad[10] = b'!';
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(QuantSequential::load(&path), Err(QuantError::Format { .. })));
        // a valid file whose layer list disagrees with its tensors: the field is named
        let (tensors, mut md) = parts(&good);
        let layers = md["layers"].replace("\"in_features\":36", "\"in_features\":37");
        md.insert("layers".into(), layers);
        kiln_nn::serialize::save_raw(&path, &tensors, &md).unwrap();
        match QuantSequential::load(&path) {
            Err(QuantError::Field { field, expected, found, .. }) => {
                assert_eq!(field, "5.weight");
                assert_eq!((expected.as_str(), found.as_str()), ("a I8 tensor [5, 37]", "a I8 tensor [5, 36]"));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        md.insert("format".into(), "pt".into());
        kiln_nn::serialize::save_raw(&path, &tensors, &md).unwrap();
        let e = QuantSequential::load(&path).err().unwrap();
        assert!(e.to_string().ends_with("field `__metadata__.format`: expected \"kiln-quant\", found pt"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(QuantSequential::load(&path), Err(QuantError::Io { .. })));
    }

    #[test]
    fn lstm_files_round_trip_and_refuse_bad_input() {
        use kiln_nn::LSTM;
        let mut rng = kiln_tensor::Rng::new(31);
        let configs = [
            LSTMConfig::new(3, 4),
            LSTMConfig { num_layers: 2, bidirectional: true, batch_first: true, ..LSTMConfig::new(3, 5) },
            LSTMConfig { bias: false, ..LSTMConfig::new(2, 3) },
        ];
        let path = temp("lstm.safetensors");
        for (config, dtype) in configs.iter().zip([QuantDtype::UInt8, QuantDtype::Int8, QuantDtype::UInt8]) {
            let lstm: LSTM = config.clone().build().unwrap();
            let q = QuantLSTM::dynamic(&lstm, dtype);
            q.save(&path).unwrap();
            let back = QuantLSTM::load(&path).unwrap();
            assert_eq!(back.to_string(), q.to_string());
            let x = Tensor::uniform(&[4, 2, config.input_size], -1.0, 1.0, &mut rng);
            let ((a, ha, ca), (b, hb, cb)) = (q.forward_tensor(&x), back.forward_tensor(&x));
            assert_eq!((a.to_vec(), ha.to_vec(), ca.to_vec()), (b.to_vec(), hb.to_vec(), cb.to_vec()), "{config:?}");
        }
        // the two-layer bidirectional file: truncated, wrong tensor shape, bad config, other format
        let lstm: LSTM = configs[1].clone().build().unwrap();
        QuantLSTM::dynamic(&lstm, QuantDtype::UInt8).save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 7, good.len() / 3, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(matches!(QuantLSTM::load(&path), Err(QuantError::Format { .. })), "cut {cut}");
        }
        let (tensors, md) = parts(&good);
        let rewrite = |key: &str, from: &str, to: &str| {
            let mut md = md.clone();
            let v = md[key].replace(from, to);
            assert_ne!(v, md[key], "{from} not in {key}");
            md.insert(key.into(), v);
            kiln_nn::serialize::save_raw(&path, &tensors, &md).unwrap();
            QuantLSTM::load(&path).expect_err("loaded a bad file").to_string()
        };
        let e = rewrite("config", "\"hidden_size\":5", "\"hidden_size\":6");
        assert!(e.contains("field `bias_l0`: expected a F32 tensor [24], found a F32 tensor [20]"), "{e}");
        let e = rewrite("config", "\"num_layers\":2", "\"num_layers\":3");
        assert!(e.contains("field `bias_l2`: expected a F32 tensor [20], found nothing"), "{e}");
        let e = rewrite("config", "\"num_layers\":2", "\"num_layers\":0");
        assert!(e.contains("field `config.num_layers`: expected an integer in 1..=65536, found 0"), "{e}");
        let e = rewrite("config", "\"dtype\":\"uint8\"", "\"dtype\":\"f16\"");
        assert!(e.contains("field `config.dtype`"), "{e}");
        let e = rewrite("format", "kiln-quant-lstm", "kiln-quant");
        assert!(e.ends_with("field `__metadata__.format`: expected \"kiln-quant-lstm\", found kiln-quant"), "{e}");
        // a QuantSequential file is not an LSTM file, and the other way round
        quantised().save(&path).unwrap();
        assert!(matches!(QuantLSTM::load(&path), Err(QuantError::Field { .. })));
        std::fs::write(&path, &good).unwrap();
        assert!(matches!(QuantSequential::load(&path), Err(QuantError::Field { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
