//! Export of kiln layers to an ONNX graph.
//!
//! Each layer type has one conversion function, in the file of this folder named after its
//! family (`linear.rs`, `conv.rs`, ...), with the signature [`Converter`], and registered in
//! that same file by one line, `register_export!(Linear => linear)`. [`Exporter::convert`]
//! finds a layer's conversion by the layer's type in that registry (no central list): a new
//! layer's export is one function and one line beside it. A test checks that every layer type
//! of the [kiln-nn layer registry](kiln_nn::registry) has one.
//!
//! The exporter runs the model's own `forward` on the example input, layer by layer, so each
//! conversion sees the value entering its layer (for the spatial sizes an adaptive pool needs)
//! and the exported graph can be checked against kiln's outputs.

/// Registers conversions of this folder: `register_export!(Linear => linear);` (the layer's
/// `f32` type and its [`Converter`]), in the file of the conversion.
macro_rules! register_export {
    ($($t:ty => $f:path),* $(,)?) => {$(
        kiln_nn::registry::inventory::submit! { $crate::export::ExportRegistration::new::<$t>($f) }
    )*};
}

mod activation;
mod container;
mod conv;
mod conv3d;
mod embedding;
mod linear;
mod norm;
mod onnx_model;
mod pool;
pub mod recurrent;
mod resample;
mod rms_instance_norm;
mod shape;
mod traced;
mod traced_ops;
mod transformer;

pub use traced::{export_traced, trace_model, TracedConverter, TracedNode, TracedValue};
pub use traced_ops::traced_ops;

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use kiln_autograd::Var;
use kiln_nn::Layer;
use kiln_tensor::Tensor;
use prost::Message;

use crate::error::OnnxError;
use crate::proto::{
    data_type, tensor_shape_proto, type_proto, AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The opsets export can write (Softmax's per-axis semantics need 13; LayerNormalization 17).
pub const EXPORT_OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// What [`export`] writes, like `torch.onnx.export`'s arguments.
#[derive(Clone)]
pub struct ExportOptions {
    /// The `ai.onnx` opset version, in [`EXPORT_OPSETS`] (default 17).
    pub opset: i64,
    /// Whether the first axis of the input and output is the symbolic `"batch"` (export at
    /// batch 1, run at any batch), like `dynamic_axes={"input": {0: "batch"}}`. Default true.
    pub dynamic_batch: bool,
    /// The graph input's name (empty: `["input"]`).
    pub input_names: Vec<String>,
    /// The graph output's name (empty: `["output"]`).
    pub output_names: Vec<String>,
    /// Conversions for the caller's own layer types (a `#[derive(Module)]` struct that is
    /// also `Forward`), asked before the built-in ones ([`builtin_converter`]). A conversion usually calls
    /// [`Exporter::convert`] on the struct's fields and joins the results with
    /// [`Exporter::node`].
    pub converters: Vec<Converter>,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("opset", &self.opset)
            .field("dynamic_batch", &self.dynamic_batch)
            .field("input_names", &self.input_names)
            .field("output_names", &self.output_names)
            .field("converters", &self.converters.len())
            .finish()
    }
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { opset: 17, dynamic_batch: true, input_names: vec![], output_names: vec![], converters: vec![] }
    }
}

/// A value flowing through the graph being built: its ONNX name and the example value kiln
/// computed for it.
#[derive(Clone)]
pub struct Value {
    /// The ONNX value name.
    pub name: String,
    /// kiln's value on the example input.
    pub example: Tensor<f32>,
}

/// A conversion: `Some(result)` when `layer` is this converter's type (the name of the output
/// value, or why it cannot be exported), `None` to let the next converter try.
pub type Converter =
    fn(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>>;

/// A built-in conversion: the layer type it converts and how, submitted by the file of the
/// conversion with `register_export!`.
pub struct ExportRegistration {
    type_id: fn() -> TypeId,
    type_name: fn() -> &'static str,
    convert: Converter,
}

impl ExportRegistration {
    /// The conversion of layers of type `T`.
    #[must_use]
    pub const fn new<T: 'static>(convert: Converter) -> Self {
        ExportRegistration { type_id: TypeId::of::<T>, type_name: std::any::type_name::<T>, convert }
    }
}

kiln_nn::registry::inventory::collect!(ExportRegistration);

fn registry() -> &'static HashMap<TypeId, Converter> {
    static INDEX: OnceLock<HashMap<TypeId, Converter>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut m = HashMap::new();
        for r in kiln_nn::registry::inventory::iter::<ExportRegistration> {
            if m.insert((r.type_id)(), r.convert).is_some() {
                panic!("kiln_onnx::export: two conversions are registered for {}", (r.type_name)());
            }
        }
        m
    })
}

/// `layer` itself when it is a box holding a layer (`Sequential::push` of a boxed layer).
fn unbox(mut layer: &dyn Layer<f32>) -> &dyn Layer<f32> {
    while let Some(inner) = layer.as_any().downcast_ref::<Box<dyn Layer<f32>>>() {
        layer = &**inner;
    }
    layer
}

/// The built-in conversion registered for `layer`'s type, if any.
#[must_use]
pub fn builtin_converter(layer: &dyn Layer<f32>) -> Option<Converter> {
    registry().get(&unbox(layer).as_any().type_id()).copied()
}

/// Builds one ONNX graph: nodes, initializers, unique value names.
pub struct Exporter {
    /// The opset being written.
    pub opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
    counter: usize,
    extra: Vec<Converter>,
    /// The example output a container converter computed itself (see [`Exporter::convert`]).
    pub last_example: Option<Tensor<f32>>,
}

impl Exporter {
    fn new(opset: i64, extra: Vec<Converter>) -> Self {
        Exporter {
            opset,
            nodes: vec![],
            initializers: vec![],
            names: HashSet::new(),
            counter: 0,
            extra,
            last_example: None,
        }
    }

    /// A fresh value name starting with `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("/{hint}_{}", self.counter);
            if self.names.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Adds an f32 initializer named `name` (a state-dict key) and returns its name.
    pub fn initializer(&mut self, name: &str, t: &Tensor<f32>) -> String {
        let name = if self.names.insert(name.to_string()) { name.to_string() } else { self.fresh(name) };
        let raw: Vec<u8> = t.to_vec().iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: t.shape().iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// An f32 initializer with a fresh name starting with `hint` (a constant of a traced graph).
    pub fn const_tensor(&mut self, hint: &str, t: &Tensor<f32>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: t.shape().iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            raw_data: t.to_vec().iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// The parameter `var` as an initializer named `name`.
    pub fn param(&mut self, name: &str, var: &Var<f32>) -> String {
        self.initializer(name, &var.value())
    }

    /// An int64 initializer (shapes, axes) with a fresh name.
    pub fn const_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.names.insert(name.clone());
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// An int64 initializer named `name` (or a fresh variant of it) with dims `dims`.
    pub fn initializer_i64(&mut self, name: &str, values: &[i64], dims: &[usize]) -> String {
        let name = if self.names.insert(name.to_string()) { name.to_string() } else { self.fresh(name) };
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT64,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Appends a node as given (inputs and outputs already named).
    pub fn push_node(&mut self, node: NodeProto) {
        self.nodes.push(node);
    }

    /// A scalar f32 initializer with a fresh name.
    pub fn const_f32(&mut self, hint: &str, value: f32) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![],
            data_type: data_type::FLOAT,
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        });
        name
    }

    /// Adds a node with one output and returns the output's name. An empty input name is an
    /// omitted optional input.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, attrs, 1).pop().expect("one output")
    }

    /// Adds a node with `outputs` outputs and returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, outputs: usize) -> Vec<String> {
        let outs: Vec<String> = (0..outputs).map(|_| self.fresh(&format!("{op}_output"))).collect();
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            name,
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outs
    }

    /// Converts `layer` (keyed `prefix` in the model, `""` or ending in `.`) applied to `x`,
    /// through the first matching entry of [`ExportOptions::converters`], then the conversion
    /// registered for its type ([`builtin_converter`]).
    ///
    /// # Errors
    /// [`OnnxError::UnsupportedLayer`] when no converter knows the layer or its options.
    pub fn convert(&mut self, layer: &dyn Layer<f32>, prefix: &str, x: &Value) -> Result<Value, OnnxError> {
        let layer = unbox(layer);
        let extra = self.extra.clone();
        for conv in extra.iter().chain(builtin_converter(layer).as_ref()) {
            if let Some(res) = conv(layer, self, prefix, x) {
                let name = res?;
                // A container's converter ran its layers one by one and leaves the output value
                // here; for a leaf layer, kiln's own forward gives it.
                let example = match self.last_example.take() {
                    Some(e) => e,
                    None => kiln_autograd::no_grad(|| layer.forward(&Var::constant(x.example.clone())).value()),
                };
                return Ok(Value { name, example });
            }
        }
        Err(unsupported(layer, prefix, "no ONNX conversion is registered for this layer type"))
    }
}

/// [`OnnxError::UnsupportedLayer`] for `layer` at `prefix`.
pub fn unsupported(layer: &dyn Layer<f32>, prefix: &str, reason: impl Into<String>) -> OnnxError {
    let text = layer.to_string();
    OnnxError::UnsupportedLayer {
        path: prefix.trim_end_matches('.').to_string(),
        layer: text.lines().next().unwrap_or_default().to_string(),
        reason: reason.into(),
    }
}

/// An `INT` attribute.
pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: Some(v), ..Default::default() }
}

/// An `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

/// A `FLOAT` attribute.
pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: Some(v), ..Default::default() }
}

/// A `FLOATS` attribute.
pub fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Floats as i32, floats: v.to_vec(), ..Default::default() }
}

/// A `STRING` attribute.
pub fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// A `STRINGS` attribute.
pub fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Strings as i32,
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize], dynamic: &[bool]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| tensor_shape_proto::Dimension {
            value: Some(if dynamic.get(i).copied().unwrap_or(false) {
                let name = if i == 0 { "batch".to_string() } else { format!("{name}_dim{i}") };
                tensor_shape_proto::dimension::Value::DimParam(name)
            } else {
                tensor_shape_proto::dimension::Value::DimValue(d as i64)
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Checks the opset and the names of `options`; returns the input and output names.
fn check_names(options: &ExportOptions, example_input: &Tensor<f32>) -> Result<(String, String), OnnxError> {
    if !EXPORT_OPSETS.contains(&options.opset) {
        return Err(OnnxError::Options(format!(
            "opset {} is not supported (supported: {}..={})",
            options.opset,
            EXPORT_OPSETS.start(),
            EXPORT_OPSETS.end()
        )));
    }
    if options.input_names.len() > 1 || options.output_names.len() > 1 {
        return Err(OnnxError::Options(format!(
            "a kiln layer has one input and one output; got input_names {:?}, output_names {:?}",
            options.input_names, options.output_names
        )));
    }
    if options.dynamic_batch && example_input.ndim() == 0 {
        return Err(OnnxError::Options("dynamic_batch needs an input with at least one axis".into()));
    }
    let input_name = options.input_names.first().cloned().unwrap_or_else(|| "input".into());
    let output_name = options.output_names.first().cloned().unwrap_or_else(|| "output".into());
    if input_name == output_name {
        return Err(OnnxError::Options(format!("input and output are both named {input_name:?}")));
    }
    Ok((input_name, output_name))
}

/// The model of the graph `ex` built, whose output value is `y_name`: the output gets the
/// asked-for name, and the input and output their shapes (`*_dynamic`: the symbolic axes).
#[allow(clippy::too_many_arguments)]
fn finish_model(
    mut ex: Exporter,
    options: &ExportOptions,
    input_name: &str,
    output_name: &str,
    y_name: &str,
    input_shape: &[usize],
    output_shape: &[usize],
    output_dynamic: &[bool],
) -> ModelProto {
    // The graph output gets the asked-for name: through an Identity when the output is the
    // input itself or an initializer, by renaming the producing node's output otherwise.
    match ex.nodes.iter_mut().rev().find(|n| n.output.iter().any(|o| o == y_name)) {
        Some(node) => {
            for o in node.output.iter_mut() {
                if *o == y_name {
                    *o = output_name.to_string();
                }
            }
            for n in ex.nodes.iter_mut() {
                for i in n.input.iter_mut() {
                    if *i == y_name {
                        *i = output_name.to_string();
                    }
                }
            }
        }
        None => {
            let name = ex.fresh("Identity");
            ex.nodes.push(NodeProto {
                name,
                op_type: "Identity".into(),
                input: vec![y_name.to_string()],
                output: vec![output_name.to_string()],
                ..Default::default()
            });
        }
    }
    let input_dynamic: Vec<bool> = (0..input_shape.len()).map(|i| i == 0 && options.dynamic_batch).collect();
    let graph = GraphProto {
        name: "kiln".into(),
        node: ex.nodes,
        initializer: ex.initializers,
        input: vec![value_info(input_name, input_shape, &input_dynamic)],
        output: vec![value_info(output_name, output_shape, output_dynamic)],
        ..Default::default()
    };
    ModelProto {
        ir_version: ir_version(options.opset),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: options.opset }],
        producer_name: "kiln".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// The ONNX model of `model` applied to `example_input` (see [`export`]), in memory, with
/// kiln's output on the example input.
///
/// # Errors
/// As [`export`], except for writing.
pub fn export_model(
    model: &dyn Layer<f32>,
    example_input: &Tensor<f32>,
    options: &ExportOptions,
) -> Result<(ModelProto, Tensor<f32>), OnnxError> {
    let (input_name, output_name) = check_names(options, example_input)?;
    let mut ex = Exporter::new(options.opset, options.converters.clone());
    ex.names.insert(input_name.clone());
    ex.names.insert(output_name.clone());
    let x = Value { name: input_name.clone(), example: example_input.contiguous() };
    let y = ex.convert(model, "", &x)?;
    let out_dynamic: Vec<bool> = (0..y.example.ndim()).map(|i| i == 0 && options.dynamic_batch).collect();
    let model = finish_model(
        ex,
        options,
        &input_name,
        &output_name,
        &y.name,
        example_input.shape(),
        y.example.shape(),
        &out_dynamic,
    );
    Ok((model, y.example))
}

/// The IR version that goes with an opset (<https://onnx.ai/onnx/repo-docs/Versioning.html>):
/// the oldest that the opset needs, so older runtimes still load the file.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=15 => 8,
        16..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Exports `model` (a kiln layer: a [`Sequential`](kiln_nn::Sequential) of kiln layers, or one
/// layer) to the ONNX file `path`, like `torch.onnx.export(model, example_input, path)`: the
/// layers are run once on `example_input` and each is written as the ONNX operators that
/// compute the same function in evaluation mode. Parameters become initializers named by their
/// `state_dict` keys (`0.weight`). The model must be in evaluation mode (`model.eval()`) when it
/// holds batch norm or dropout. Returns kiln's output on `example_input`. The file is written
/// atomically.
///
/// ```
/// use kiln_nn::{Linear, Module, ReLU, Sequential};
/// use kiln_onnx::{export, ExportOptions};
/// use kiln_tensor::Tensor;
/// let model: Sequential = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 2));
/// let path = std::env::temp_dir().join(format!("kiln_onnx_doc_{}.onnx", std::process::id()));
/// let y = export(&model, &Tensor::ones(&[1, 4]), &path, ExportOptions::default()).unwrap();
/// assert_eq!(y.shape(), &[1, 2]);
/// # std::fs::remove_file(&path).unwrap();
/// ```
///
/// # Errors
/// [`OnnxError::UnsupportedLayer`] naming a layer that cannot be exported,
/// [`OnnxError::Options`] for an unsupported opset or names, [`OnnxError::Save`] when writing
/// fails.
pub fn export(
    model: &dyn Layer<f32>,
    example_input: &Tensor<f32>,
    path: impl AsRef<Path>,
    options: ExportOptions,
) -> Result<Tensor<f32>, OnnxError> {
    let (proto, y) = export_model(model, example_input, &options)?;
    let bytes = proto.encode_to_vec();
    kiln_nn::serialize::write_atomic(path, |w| w.write_all(&bytes))?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layer type of kiln-nn's registry (built from its example arguments) has a
    /// registered conversion: a layer added without one fails here, not in a user's export.
    #[test]
    fn every_registered_kiln_nn_layer_has_a_conversion() {
        let mut missing = Vec::new();
        for r in kiln_nn::registry::registrations() {
            let layer: Box<dyn Layer<f32>> = r.build_example().unwrap();
            if builtin_converter(&*layer).is_none() {
                missing.push(r.name);
            }
        }
        assert!(missing.is_empty(), "no ONNX conversion registered for {missing:?}");
    }

    /// Every op type an exporter writes (the first argument of each `node(..)`, `node_n(..)`,
    /// `unary!`, `binary!`, `reduce..` and `along`/`conv` call in `src/export/`) is one import
    /// runs: a file kiln writes always comes back.
    #[test]
    fn import_runs_every_op_type_the_exporters_write() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/export");
        let patterns = [
            "node(\"",
            "node_n(\"",
            "unary!(\"",
            "binary!(\"",
            "reduce_op(ex, n, \"",
            "reduce(ex, \"",
            "along(ex, n, \"",
            "conv(ex, n, \"",
        ];
        let (mut seen, mut missing) = (std::collections::BTreeSet::new(), Vec::new());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for p in patterns {
                for (at, _) in text.match_indices(p) {
                    let rest = &text[at + p.len()..];
                    let op = &rest[..rest.find('"').unwrap()];
                    if seen.insert(op.to_string()) && !crate::SUPPORTED_OPS.contains(&op) {
                        missing.push(format!("{op} ({})", path.file_name().unwrap().to_string_lossy()));
                    }
                }
            }
        }
        assert!(seen.len() > 40, "the scan found only {seen:?}");
        assert!(missing.is_empty(), "written by export but not imported: {missing:?}");
    }
}
