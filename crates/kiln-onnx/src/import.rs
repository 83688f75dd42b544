//! Import of ONNX files as a trainable kiln model ([`OnnxModel`]).
//!
//! The graph is run node by node with kiln's autograd ops, so gradients reach the
//! initializers, which become parameters under their ONNX names. Integer values (shapes,
//! indices, axes: what `Shape`/`Gather`/`Unsqueeze`/`Concat` chains compute for dynamic
//! shapes) are computed eagerly and never differentiated.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kiln_autograd::Var;
use kiln_nn::{Forward, Module, TensorKind};
use kiln_tensor::Tensor;
use prost::Message;

use crate::error::OnnxError;
use crate::proto::{data_type, AttributeProto, ModelProto, NodeProto, TensorProto};

/// The `ai.onnx` opsets import handles.
pub const IMPORT_OPSETS: std::ops::RangeInclusive<i64> = 11..=21;

/// Every op type import runs.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "GRU",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "Greater",
    "Identity",
    "InstanceNormalization",
    "LSTM",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "RNN",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Slice",
    "Softmax",
    "Softplus",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// A value while the graph runs.
#[derive(Clone)]
pub(crate) enum Val {
    /// A float tensor in the autograd graph.
    F(Var<f32>),
    /// An integer tensor (shape data), with its shape.
    I(Vec<i64>, Vec<usize>),
    /// A boolean tensor, as 0/1 floats.
    B(Tensor<f32>),
}

/// One node, with its attributes by name.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: HashMap<String, AttributeProto>,
}

/// An imported ONNX model: a kiln [`Module`] (its parameters are the float initializers, keyed
/// by their ONNX names; `BatchNormalization`'s running statistics are buffers) and a
/// [`Forward`] for single-input graphs. [`OnnxModel::run`] runs graphs with several inputs or
/// outputs. Gradients flow to every parameter, so an imported model can be fine-tuned.
pub struct OnnxModel {
    source: String,
    opset: i64,
    nodes: Vec<Node>,
    /// The nodes as read, for re-export.
    pub(crate) protos: Vec<NodeProto>,
    pub(crate) tensors: Vec<(String, Var<f32>, TensorKind)>,
    pub(crate) int_consts: Vec<(String, Vec<i64>, Vec<usize>)>,
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    training: bool,
}

fn invalid(source: &str, what: impl Into<String>) -> OnnxError {
    OnnxError::Invalid { path: source.to_string(), what: what.into() }
}

/// The elements of `t` as f32 or i64, after checking that its data holds exactly
/// `prod(dims)` elements (so a forged size never allocates more than the file holds).
pub(crate) enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

pub(crate) fn tensor_data(source: &str, t: &TensorProto) -> Result<(Data, Vec<usize>), OnnxError> {
    let what = |w: String| invalid(source, format!("tensor {:?}: {w}", t.name));
    if !t.external_data.is_empty() || t.data_location == 1 {
        return Err(what("external data is not supported".into()));
    }
    let mut shape = Vec::with_capacity(t.dims.len().min(64));
    let mut numel: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| what(format!("negative dimension in {:?}", t.dims)))?;
        numel = numel.checked_mul(d).ok_or_else(|| what(format!("dimensions {:?} overflow", t.dims)))?;
        shape.push(d);
    }
    let elem = match t.data_type {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::INT64 | data_type::DOUBLE => 8,
        data_type::BOOL => 1,
        other => return Err(what(format!("data type {other} is not supported (FLOAT, DOUBLE, INT32, INT64, BOOL)"))),
    };
    let typed_len = match t.data_type {
        data_type::FLOAT => t.float_data.len(),
        data_type::INT32 | data_type::BOOL => t.int32_data.len(),
        data_type::INT64 => t.int64_data.len(),
        _ => t.double_data.len(),
    };
    let have = if t.raw_data.is_empty() { typed_len } else { t.raw_data.len() / elem };
    if (!t.raw_data.is_empty() && !t.raw_data.len().is_multiple_of(elem)) || have != numel {
        return Err(what(format!(
            "dims {:?} need {numel} elements, the data holds {} bytes raw and {typed_len} typed",
            t.dims,
            t.raw_data.len()
        )));
    }
    let raw = &t.raw_data;
    let data = match t.data_type {
        data_type::FLOAT if raw.is_empty() => Data::F(t.float_data.clone()),
        data_type::FLOAT => {
            Data::F(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        data_type::DOUBLE if raw.is_empty() => Data::F(t.double_data.iter().map(|&v| v as f32).collect()),
        data_type::DOUBLE => {
            Data::F(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect())
        }
        data_type::INT64 if raw.is_empty() => Data::I(t.int64_data.clone()),
        data_type::INT64 => {
            Data::I(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        }
        data_type::INT32 if raw.is_empty() => Data::I(t.int32_data.iter().map(|&v| v as i64).collect()),
        data_type::INT32 => {
            Data::I(raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect())
        }
        _ if raw.is_empty() => Data::I(t.int32_data.iter().map(|&v| (v != 0) as i64).collect()),
        _ => Data::I(raw.iter().map(|&v| (v != 0) as i64).collect()),
    };
    Ok((data, shape))
}

/// Reads the ONNX file `path` as a trainable kiln model, like loading a `torch.onnx.export`
/// output into PyTorch modules: float initializers become parameters under their ONNX names
/// (`fc1.weight`, or kiln's `0.weight`), in graph order.
///
/// ```
/// use kiln_nn::{Forward, Linear, Module, ReLU, Sequential};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let model: Sequential = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 2));
/// let path = std::env::temp_dir().join(format!("kiln_onnx_import_doc_{}.onnx", std::process::id()));
/// let y = kiln_onnx::export(&model, &Tensor::ones(&[1, 4]), &path, Default::default()).unwrap();
/// let imported = kiln_onnx::import(&path).unwrap();
/// let names: Vec<String> = imported.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
/// let y2 = imported.forward(&Var::constant(Tensor::ones(&[1, 4]))).value();
/// assert_eq!(y2.to_vec(), y.to_vec());
/// # std::fs::remove_file(&path).unwrap();
/// ```
///
/// # Errors
/// [`OnnxError::Io`] when the file cannot be read, [`OnnxError::Decode`] for bytes that are
/// not an ONNX protobuf, [`OnnxError::Invalid`] for an inconsistent graph or tensor,
/// [`OnnxError::UnsupportedOp`] / [`OnnxError::UnsupportedOpset`] naming what kiln cannot run.
pub fn import(path: impl AsRef<Path>) -> Result<OnnxModel, OnnxError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.to_path_buf(), source })?;
    import_bytes(&bytes, &path.display().to_string())
}

/// [`import`] from bytes in memory; `source` names them in errors.
///
/// # Errors
/// As [`import`], without the I/O error.
pub fn import_bytes(bytes: &[u8], source: &str) -> Result<OnnxModel, OnnxError> {
    let model =
        ModelProto::decode(bytes).map_err(|e| OnnxError::Decode { path: source.into(), reason: e.to_string() })?;
    OnnxModel::from_proto(&model, source)
}

impl OnnxModel {
    /// Builds the model from a decoded [`ModelProto`].
    ///
    /// # Errors
    /// As [`import`].
    pub fn from_proto(model: &ModelProto, source: &str) -> Result<Self, OnnxError> {
        let mut opset = None;
        for o in &model.opset_import {
            if o.domain.is_empty() || o.domain == "ai.onnx" {
                opset = Some(o.version);
            }
        }
        let opset = opset.ok_or_else(|| invalid(source, "the model imports no ai.onnx opset"))?;
        if !IMPORT_OPSETS.contains(&opset) {
            return Err(OnnxError::UnsupportedOpset {
                path: source.into(),
                domain: "ai.onnx".into(),
                opset,
                supported: format!("{}..={}", IMPORT_OPSETS.start(), IMPORT_OPSETS.end()),
            });
        }
        let graph = model.graph.as_ref().ok_or_else(|| invalid(source, "the model has no graph"))?;
        // Initializers feeding BatchNormalization's statistics are buffers, not parameters.
        let mut stats = HashSet::new();
        for n in &graph.node {
            if n.op_type == "BatchNormalization" {
                stats.extend(n.input.iter().skip(3).take(2).cloned());
            }
        }
        let mut tensors = Vec::new();
        let mut int_consts = Vec::new();
        let mut known: HashSet<String> = HashSet::new();
        for t in &graph.initializer {
            if !known.insert(t.name.clone()) {
                return Err(invalid(source, format!("initializer {:?} is defined twice", t.name)));
            }
            match tensor_data(source, t)? {
                (Data::F(v), shape) => {
                    let value = Tensor::from_vec(v, &shape);
                    if stats.contains(&t.name) {
                        tensors.push((t.name.clone(), Var::constant(value), TensorKind::Buffer));
                    } else {
                        tensors.push((t.name.clone(), Var::param(value), TensorKind::Parameter));
                    }
                }
                (Data::I(v), shape) => {
                    int_consts.push((t.name.clone(), v, shape));
                }
            }
        }
        let inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).filter(|n| !known.contains(n)).collect();
        known.extend(inputs.iter().cloned());
        let mut nodes = Vec::with_capacity(graph.node.len());
        for (i, n) in graph.node.iter().enumerate() {
            let name = if n.name.is_empty() {
                n.output.first().cloned().unwrap_or_else(|| format!("#{i}"))
            } else {
                n.name.clone()
            };
            let unsupported = |reason: String| OnnxError::UnsupportedOp {
                path: source.into(),
                node: name.clone(),
                op_type: if n.domain.is_empty() { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) },
                opset,
                reason,
            };
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                return Err(unsupported("only the default ai.onnx domain is supported".into()));
            }
            if !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
                return Err(unsupported(format!("not in kiln's op set ({})", SUPPORTED_OPS.join(", "))));
            }
            for inp in &n.input {
                if !inp.is_empty() && !known.contains(inp) {
                    return Err(invalid(
                        source,
                        format!("node {name:?} ({}): input {inp:?} is not produced before it", n.op_type),
                    ));
                }
            }
            known.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
            nodes.push(Node {
                name,
                op: n.op_type.clone(),
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                attrs: attrs_of(n),
            });
        }
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        for o in &outputs {
            if !known.contains(o) {
                return Err(invalid(source, format!("graph output {o:?} is never produced")));
            }
        }
        if inputs.is_empty() || outputs.is_empty() {
            return Err(invalid(
                source,
                format!("the graph has {} inputs and {} outputs", inputs.len(), outputs.len()),
            ));
        }
        Ok(OnnxModel {
            source: source.into(),
            opset,
            nodes,
            protos: graph.node.clone(),
            tensors,
            int_consts,
            inputs,
            outputs,
            training: true,
        })
    }

    /// The graph's input names (initializers excluded).
    #[must_use]
    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// The graph's output names.
    #[must_use]
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The `ai.onnx` opset the file imports.
    #[must_use]
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The number of nodes.
    #[must_use]
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Runs the graph on `inputs` (in [`input_names`](Self::input_names) order) and returns the
    /// outputs in [`output_names`](Self::output_names) order. Integer inputs (token ids) are
    /// passed as floats holding integers.
    ///
    /// # Errors
    /// [`OnnxError::Run`] for a wrong number of inputs, and for a node whose inputs do not fit
    /// it (an integer where a float is needed, an attribute out of range), naming the node.
    pub fn run(&self, inputs: &[Var<f32>]) -> Result<Vec<Var<f32>>, OnnxError> {
        if inputs.len() != self.inputs.len() {
            return Err(OnnxError::Run(format!(
                "{}: the graph takes {} inputs {:?}, got {}",
                self.source,
                self.inputs.len(),
                self.inputs,
                inputs.len()
            )));
        }
        let mut env: HashMap<&str, Val> = HashMap::new();
        for (name, v, _) in &self.tensors {
            env.insert(name, Val::F(v.clone()));
        }
        for (name, v, s) in &self.int_consts {
            env.insert(name, Val::I(v.clone(), s.clone()));
        }
        for (name, x) in self.inputs.iter().zip(inputs) {
            env.insert(name, Val::F(x.clone()));
        }
        for node in &self.nodes {
            let args: Vec<Option<Val>> =
                node.inputs.iter().map(|i| if i.is_empty() { None } else { env.get(i.as_str()).cloned() }).collect();
            let outs = crate::ops::run_node(node_view(node), &args, self.opset)
                .map_err(|e| OnnxError::Run(format!("{}: node {:?} ({}): {e}", self.source, node.name, node.op)))?;
            for (name, v) in node.outputs.iter().zip(outs) {
                if !name.is_empty() {
                    env.insert(name, v);
                }
            }
        }
        self.outputs
            .iter()
            .map(|o| match env.get(o.as_str()) {
                Some(Val::F(v)) => Ok(v.clone()),
                Some(Val::I(v, s)) => Ok(Var::constant(Tensor::from_vec(v.iter().map(|&x| x as f32).collect(), s))),
                Some(Val::B(t)) => Ok(Var::constant(t.clone())),
                None => Err(OnnxError::Run(format!("{}: output {o:?} was not computed", self.source))),
            })
            .collect()
    }
}

fn attrs_of(n: &NodeProto) -> HashMap<String, AttributeProto> {
    n.attribute.iter().map(|a| (a.name.clone(), a.clone())).collect()
}

fn node_view(n: &Node) -> crate::ops::NodeView<'_> {
    crate::ops::NodeView { op: &n.op, attrs: &n.attrs }
}

impl Module<f32> for OnnxModel {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f32>, TensorKind)) {
        for (name, v, kind) in &self.tensors {
            f(&format!("{prefix}{name}"), v, *kind);
        }
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn is_training(&self) -> bool {
        self.training
    }
}

impl Forward<f32> for OnnxModel {
    /// Runs a one-input graph and returns its first output.
    ///
    /// **Panics** when the graph takes several inputs or a node cannot run on `x` (the
    /// message names the node); use [`OnnxModel::run`] for a `Result`.
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        match self.run(std::slice::from_ref(x)) {
            Ok(mut outs) => outs.swap_remove(0),
            Err(e) => panic!("{e}"),
        }
    }
}

impl std::fmt::Display for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OnnxModel(source={}, opset={}, nodes={}, inputs={:?}, outputs={:?}) [{} parameters]",
            self.source,
            self.opset,
            self.nodes.len(),
            self.inputs,
            self.outputs,
            self.num_parameters()
        )
    }
}
