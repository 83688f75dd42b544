//! Tracing export: a model whose `forward` is arbitrary Rust over kiln ops, exported by
//! recording the ops of one forward pass on the example input, as `torch.onnx.export` traces.
//!
//! [`export_traced`] runs the forward under [`kiln_autograd::trace`] with the input and every
//! parameter requiring grad, so that each op applied to them is a node of the autograd graph,
//! and walks that graph from the output back to the input and the parameters. Parameters and
//! buffers become initializers under their `state_dict` keys; other constants become anonymous
//! initializers (values computed from constants only are folded, as in a trace). Each recorded
//! op is converted by the function registered for its name in [`traced_ops`](super::traced_ops);
//! an op without one is [`OnnxError::Traced`] naming it.
//!
//! With `dynamic_batch`, the forward is traced a second time at twice the batch (the example
//! stacked on itself): the axes whose sizes differ between the two traces depend on the batch,
//! and shape constants (a `Reshape`'s target, an `Expand`'s) copy or infer them instead of
//! baking in the example's size. A forward whose ops differ between the two batch sizes, or a
//! constant whose shape depends on the batch, cannot be exported with a dynamic batch.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use kiln_autograd::{Trace, TraceOp, Var};
use kiln_nn::{Module, TensorKind};
use kiln_tensor::Tensor;
use prost::Message;

use super::{check_names, finish_model, ExportOptions, Exporter};
use crate::error::OnnxError;
use crate::proto::ModelProto;

/// A value of the traced graph: its ONNX name, its shape at the example's batch and, with
/// a dynamic batch, at twice that batch.
#[derive(Clone, Debug)]
pub struct TracedValue {
    /// The ONNX value name.
    pub name: String,
    /// The shape on the example input.
    pub shape: Vec<usize>,
    /// The shape on the doubled batch (`None` without a dynamic batch).
    pub shape2: Option<Vec<usize>>,
}

impl TracedValue {
    /// Whether axis `d` depends on the batch size.
    #[must_use]
    pub fn is_dynamic(&self, d: usize) -> bool {
        self.shape2.as_ref().is_some_and(|s| s[d] != self.shape[d])
    }
    /// The rank.
    #[must_use]
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
}

/// One recorded op to convert.
pub struct TracedNode<'a> {
    /// The op's name (`Var::op_name`).
    pub op: &'static str,
    /// Its recorded attributes (on the example input).
    pub attrs: Option<&'a TraceOp>,
    /// Its recorded attributes in the doubled-batch trace.
    pub attrs2: Option<&'a TraceOp>,
    /// Its inputs, in order.
    pub inputs: Vec<TracedValue>,
    /// Its output (the name is not yet given).
    pub output: TracedValue,
    /// The graph input: its name and value on the example (and the doubled batch).
    pub graph_input: (&'a str, &'a Tensor<f32>, Option<&'a Tensor<f32>>),
}

impl TracedNode<'_> {
    /// [`OnnxError::Traced`] for this op.
    pub fn error(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Traced { op: self.op.to_string(), reason: reason.into() }
    }
    /// The recorded attributes, or an error saying the op recorded none.
    ///
    /// # Errors
    /// [`OnnxError::Traced`] when the op recorded no attributes.
    pub fn attrs(&self) -> Result<&TraceOp, OnnxError> {
        self.attrs.ok_or_else(|| self.error("the op recorded no attributes for tracing"))
    }
    /// The integer attribute `name`.
    ///
    /// # Errors
    /// [`OnnxError::Traced`] when it is missing.
    pub fn int(&self, name: &str) -> Result<i64, OnnxError> {
        self.attrs()?.int(name).ok_or_else(|| self.error(format!("attribute {name:?} missing")))
    }
    /// The integers attribute `name`.
    ///
    /// # Errors
    /// [`OnnxError::Traced`] when it is missing.
    pub fn ints(&self, name: &str) -> Result<Vec<i64>, OnnxError> {
        self.attrs()?.ints(name).map(<[i64]>::to_vec).ok_or_else(|| self.error(format!("attribute {name:?} missing")))
    }
    /// The number attribute `name`.
    ///
    /// # Errors
    /// [`OnnxError::Traced`] when it is missing.
    pub fn float(&self, name: &str) -> Result<f64, OnnxError> {
        self.attrs()?.float(name).ok_or_else(|| self.error(format!("attribute {name:?} missing")))
    }
    /// Input `i`'s name.
    #[must_use]
    pub fn input(&self, i: usize) -> &str {
        &self.inputs[i].name
    }
}

/// A traced op's conversion: adds the ONNX nodes computing it and returns the output's name
/// (an input's name when the op is the identity in ONNX).
pub type TracedConverter = fn(ex: &mut Exporter, node: &TracedNode<'_>) -> Result<String, OnnxError>;

/// Restores the parameters' `requires_grad` flags when the trace ends (or panics).
struct RestoreGrad(Vec<(Var<f32>, bool)>);
impl Drop for RestoreGrad {
    fn drop(&mut self) {
        for (v, on) in &self.0 {
            v.set_requires_grad(*on);
        }
    }
}

/// One traced forward pass: its output and the recorded attributes.
fn run_trace(
    forward: &dyn Fn(&Var<f32>) -> Var<f32>,
    input: &Var<f32>,
    batch: usize,
) -> Result<(Var<f32>, Trace), OnnxError> {
    let (out, rec) = kiln_autograd::trace(|| std::panic::catch_unwind(AssertUnwindSafe(|| forward(input))));
    match out {
        Ok(y) => Ok((y, rec)),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(OnnxError::Traced {
                op: "forward".into(),
                reason: format!("the forward pass panicked at batch {batch}: {msg}"),
            })
        }
    }
}

/// The ONNX model traced from `forward` on `example_input` (see [`export_traced`]), in
/// memory, with kiln's output on the example input.
///
/// # Errors
/// As [`export_traced`], except for writing.
pub fn trace_model<M: Module<f32> + ?Sized>(
    model: &M,
    forward: impl Fn(&Var<f32>) -> Var<f32>,
    example_input: &Tensor<f32>,
    options: &ExportOptions,
) -> Result<(ModelProto, Tensor<f32>), OnnxError> {
    let (input_name, output_name) = check_names(options, example_input)?;
    // The model's tensors by node, with their state_dict keys; every parameter requires grad
    // while tracing (a frozen one too), so that the ops applied to it are recorded.
    let mut named: HashMap<usize, String> = HashMap::new();
    let mut flags = Vec::new();
    model.visit("", &mut |key, v, kind| {
        named.entry(v.id()).or_insert_with(|| key.to_string());
        if matches!(kind, TensorKind::Parameter) {
            flags.push((v.clone(), v.requires_grad()));
        }
    });
    let restore = RestoreGrad(flags);
    for (v, _) in &restore.0 {
        v.set_requires_grad(true);
    }
    let example = example_input.contiguous();
    let x = Var::param(example.clone());
    let (y, rec) = run_trace(&forward, &x, example.shape().first().copied().unwrap_or(1))?;
    let second = if options.dynamic_batch {
        let x2 = Tensor::cat(&[example.clone(), example.clone()], 0);
        let v2 = Var::param(x2.clone());
        let (y2, rec2) = run_trace(&forward, &v2, x2.shape()[0])?;
        Some((x2, v2, y2, rec2))
    } else {
        None
    };
    drop(restore);

    let mut ex = Exporter::new(options.opset, vec![]);
    ex.names.insert(input_name.clone());
    ex.names.insert(output_name.clone());
    let mut walk = Walk {
        ex: &mut ex,
        named: &named,
        x: &x,
        x2: second.as_ref().map(|s| &s.1),
        rec: &rec,
        rec2: second.as_ref().map(|s| &s.3),
        input_name: &input_name,
        example: &example,
        example2: second.as_ref().map(|s| &s.0),
        done: HashMap::new(),
    };
    let out = walk.value(&y, second.as_ref().map(|s| &s.2))?;
    let y_value = y.value();
    let dynamic: Vec<bool> = (0..out.ndim()).map(|d| out.is_dynamic(d)).collect();
    let model =
        finish_model(ex, options, &input_name, &output_name, &out.name, example.shape(), y_value.shape(), &dynamic);
    Ok((model, y_value))
}

/// Exports the function `forward` (a model's forward written as arbitrary Rust over kiln
/// ops) to the ONNX file `path`, by tracing one forward pass on `example_input`, like
/// `torch.onnx.export(model, example_input, path)` of a scripted-by-tracing module. `model`
/// supplies the parameter and buffer names (`state_dict` keys, for the initializers); pass an
/// empty `Sequential` for a function without one. Call `model.eval()` first: ops are
/// recorded as they run (a training-mode dropout is not exportable). With
/// `options.dynamic_batch` (the default) the first axis of the input is the symbolic
/// `"batch"`, and the forward is traced a second time at twice the batch to tell which sizes
/// depend on it. `options.converters` is not used (there are no layers to convert). Returns
/// kiln's output on `example_input`; the file is written atomically.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::{Forward, Linear, Module, Sequential};
/// use kiln_onnx::{export_traced, ExportOptions};
/// use kiln_tensor::Tensor;
/// let model: Sequential = Sequential::new().add(Linear::new(4, 4));
/// // a residual block written by hand: y = softmax(x + lin(x))
/// let forward = |x: &Var| x.add(&model.forward(x)).softmax(-1);
/// let path = std::env::temp_dir().join(format!("kiln_onnx_traced_doc_{}.onnx", std::process::id()));
/// let y = export_traced(&model, forward, &Tensor::ones(&[1, 4]), &path, ExportOptions::default()).unwrap();
/// assert_eq!(y.shape(), &[1, 4]);
/// let back = kiln_onnx::import(&path).unwrap();
/// let names: Vec<String> = back.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["0.weight", "0.bias"]);
/// # std::fs::remove_file(&path).unwrap();
/// ```
///
/// # Errors
/// [`OnnxError::Traced`] naming an op that cannot be exported (or the forward's panic, or a
/// batch-dependent constant), [`OnnxError::Options`] for an unsupported opset or names,
/// [`OnnxError::Save`] when writing fails.
pub fn export_traced<M: Module<f32> + ?Sized>(
    model: &M,
    forward: impl Fn(&Var<f32>) -> Var<f32>,
    example_input: &Tensor<f32>,
    path: impl AsRef<Path>,
    options: ExportOptions,
) -> Result<Tensor<f32>, OnnxError> {
    let (proto, y) = trace_model(model, forward, example_input, &options)?;
    let bytes = proto.encode_to_vec();
    kiln_nn::serialize::write_atomic(path, |w| w.write_all(&bytes))?;
    Ok(y)
}

/// The graph walk: converts each node once, inputs first.
struct Walk<'a> {
    ex: &'a mut Exporter,
    named: &'a HashMap<usize, String>,
    x: &'a Var<f32>,
    x2: Option<&'a Var<f32>>,
    rec: &'a Trace,
    rec2: Option<&'a Trace>,
    input_name: &'a str,
    example: &'a Tensor<f32>,
    example2: Option<&'a Tensor<f32>>,
    done: HashMap<usize, TracedValue>,
}

impl Walk<'_> {
    /// The ONNX value of `v` (paired with `v2`, the same value in the doubled-batch trace).
    fn value(&mut self, v: &Var<f32>, v2: Option<&Var<f32>>) -> Result<TracedValue, OnnxError> {
        // An explicit stack: (var, its pair, inputs pushed?) in post-order.
        let mut stack: Vec<(Var<f32>, Option<Var<f32>>, bool)> = vec![(v.clone(), v2.cloned(), false)];
        while let Some((a, b, expanded)) = stack.pop() {
            if self.done.contains_key(&a.id()) {
                continue;
            }
            let shape2 = b.as_ref().map(|b| b.shape().to_vec());
            if a.same(self.x) {
                let name = self.input_name.to_string();
                self.done.insert(a.id(), TracedValue { name, shape: a.shape().to_vec(), shape2 });
                continue;
            }
            if a.is_leaf() {
                let tv = self.leaf(&a, b.as_ref())?;
                self.done.insert(a.id(), tv);
                continue;
            }
            let ins = a.recorded_inputs();
            let ins2 = match &b {
                Some(b) => {
                    let i2 = b.recorded_inputs();
                    if b.op_name() != a.op_name() || i2.len() != ins.len() {
                        return Err(OnnxError::Traced {
                            op: a.op_name().into(),
                            reason: format!(
                                "the forward records other ops at twice the batch ({} with {} inputs where the example gives {} with {}): it cannot be exported with a dynamic batch (set dynamic_batch: false)",
                                b.op_name(),
                                i2.len(),
                                a.op_name(),
                                ins.len()
                            ),
                        });
                    }
                    i2.into_iter().map(Some).collect()
                }
                None => vec![None; ins.len()],
            };
            if !expanded {
                stack.push((a.clone(), b.clone(), true));
                for (i, i2) in ins.iter().zip(&ins2).rev() {
                    if !self.done.contains_key(&i.id()) {
                        stack.push((i.clone(), i2.clone(), false));
                    }
                }
                continue;
            }
            let inputs: Vec<TracedValue> = ins.iter().map(|i| self.done[&i.id()].clone()).collect();
            let op = a.op_name();
            let node = TracedNode {
                op,
                attrs: self.rec.op(&a),
                attrs2: match (self.rec2, &b) {
                    (Some(r), Some(b)) => r.op(b),
                    _ => None,
                },
                inputs,
                output: TracedValue { name: String::new(), shape: a.shape().to_vec(), shape2 },
                graph_input: (self.input_name, self.example, self.example2),
            };
            let convert = super::traced_ops::converter(op).ok_or_else(|| {
                node.error("no ONNX conversion is registered for this op (export it as layers with `export`, or write it with exportable ops)")
            })?;
            let name = convert(self.ex, &node)?;
            self.done.insert(a.id(), TracedValue { name, ..node.output });
        }
        Ok(self.done[&v.id()].clone())
    }

    /// A constant filled with one value whose shape follows the batch (zeros as an RNN's first
    /// state, `Tensor::zeros(&[n, h])`): the value `Expand`ed to a shape computed from the
    /// input's batch size, when each axis that differs between the traces is a whole multiple
    /// of the batch in both. `None` when `a` (the example trace's value) and `b` (the doubled
    /// batch's) are not such a pair.
    fn filled_by_batch(&mut self, a: &Tensor<f32>, b: &Tensor<f32>) -> Option<TracedValue> {
        let (n1, n2) = (*self.example.shape().first()?, *self.example2?.shape().first()?);
        let fill = *a.to_vec().first()?;
        let uniform = |t: &Tensor<f32>| t.to_vec().iter().all(|&v| v.to_bits() == fill.to_bits());
        if a.ndim() != b.ndim() || n1 == 0 || !uniform(a) || !uniform(b) {
            return None;
        }
        // per axis: a fixed size, or a multiple k of the batch
        let mut axes = Vec::with_capacity(a.ndim());
        for (&s1, &s2) in a.shape().iter().zip(b.shape()) {
            if s1 == s2 {
                axes.push((s1, None));
            } else if s1 % n1 == 0 && s1 / n1 * n2 == s2 {
                axes.push((s1, Some(s1 / n1)));
            } else {
                return None;
            }
        }
        let shape = self.ex.node("Shape", &[self.input_name], vec![]);
        let zero = self.ex.const_i64("batch_axis", &[0]);
        let batch = self.ex.node("Gather", &[&shape, &zero], vec![super::attr_i("axis", 0)]);
        let dims: Vec<String> = axes
            .iter()
            .map(|&(size, k)| match k {
                None => self.ex.const_i64("dim", &[size as i64]),
                Some(1) => batch.clone(),
                Some(k) => {
                    let k = self.ex.const_i64("batch_multiple", &[k as i64]);
                    self.ex.node("Mul", &[&batch, &k], vec![])
                }
            })
            .collect();
        let refs: Vec<&str> = dims.iter().map(String::as_str).collect();
        let target = self.ex.node("Concat", &refs, vec![super::attr_i("axis", 0)]);
        let value = self.ex.const_f32("fill", fill);
        let name = self.ex.node("Expand", &[&value, &target], vec![]);
        Some(TracedValue { name, shape: a.shape().to_vec(), shape2: Some(b.shape().to_vec()) })
    }

    /// A leaf other than the input: a named parameter or buffer, or a constant.
    fn leaf(&mut self, a: &Var<f32>, b: Option<&Var<f32>>) -> Result<TracedValue, OnnxError> {
        let value = a.value();
        let shape2 = match b {
            Some(b) if self.x2.is_some_and(|x2| b.same(x2)) => {
                return Err(OnnxError::Traced {
                    op: "leaf".into(),
                    reason: "a constant of the example trace is the input at twice the batch".into(),
                })
            }
            Some(b) => {
                let s2 = b.shape().to_vec();
                if s2 != value.shape() {
                    if let Some(tv) = self.filled_by_batch(&value, &b.value()) {
                        return Ok(tv);
                    }
                    return Err(OnnxError::Traced {
                        op: "constant".into(),
                        reason: format!(
                            "a constant of shape {:?} has shape {s2:?} at twice the batch: it is computed from the batch size outside kiln's ops, which a trace cannot follow; build it from the input with kiln ops, or export with dynamic_batch: false",
                            value.shape()
                        ),
                    });
                }
                Some(s2)
            }
            None => None,
        };
        let name = match self.named.get(&a.id()) {
            Some(key) => self.ex.initializer(key, &value),
            None => self.ex.const_tensor("const", &value),
        };
        Ok(TracedValue { name, shape: value.shape().to_vec(), shape2 })
    }
}
