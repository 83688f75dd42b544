//! Optimiser state files: [`Optimizer::save`](crate::Optimizer::save) /
//! [`Optimizer::load`](crate::Optimizer::load), PyTorch's
//! `torch.save(opt.state_dict(), path)` / `opt.load_state_dict(torch.load(path))`, as
//! safetensors through kiln-nn's one reader and atomic writer.
//!
//! The file holds, for each parameter id with state, its buffers as `state.{id}.{key}`
//! (`state.0.exp_avg`, `state.3.momentum_buffer`) in the optimiser's element type and its step
//! count as an `I64` scalar `state.{id}.step`; the `__metadata__` map holds `format:
//! kiln-optim`, `optimizer` (PyTorch's class name) and `param_groups` (the groups'
//! hyper-parameters, `initial_lr` and parameter ids as JSON, every `f64` written so that it
//! reads back bit for bit).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_nn::serialize::{save_raw, Dtype, RawTensor, SafetensorsFile};
use kiln_nn::NnError;
use kiln_tensor::{Float, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::OptimError;
use crate::optimizer::{GroupState, OptimizerStateDict, ParamState};

/// The value of `format` in an optimiser state file's metadata.
pub const FORMAT: &str = "kiln-optim";

/// Writes `sd` to `path` atomically (see the [module doc](self) for the layout).
pub(crate) fn save<E: Float, C: Serialize>(sd: &OptimizerStateDict<E, C>, path: &Path) -> Result<(), OptimError> {
    let mut tensors = BTreeMap::new();
    for (id, state) in &sd.state {
        if let Some(step) = state.step {
            let step = i64::try_from(step).map_err(|_| OptimError::File {
                path: path.to_path_buf(),
                message: format!("state of parameter {id}: step {step} does not fit an I64"),
            })?;
            tensors.insert(format!("state.{id}.step"), RawTensor::from_i64(&[step], &[]));
        }
        for (key, t) in &state.buffers {
            tensors.insert(format!("state.{id}.{key}"), raw(t));
        }
    }
    let groups = serde_json::to_string(&sd.param_groups)
        .map_err(|e| OptimError::File { path: path.to_path_buf(), message: format!("param_groups: {e}") })?;
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), FORMAT.to_string());
    metadata.insert("optimizer".to_string(), sd.optimizer.clone());
    metadata.insert("param_groups".to_string(), groups);
    save_raw(path, &tensors, &metadata).map_err(|e| file_error(path, e))
}

/// Reads a state dict written by [`save`], checking every field; the optimiser checks the
/// rest (kind, groups, shapes) when it loads the dict.
pub(crate) fn load<E: Float, C: DeserializeOwned>(path: &Path) -> Result<OptimizerStateDict<E, C>, OptimError> {
    let file = SafetensorsFile::open(path).map_err(|e| file_error(path, e))?;
    let field = |field: &str, expected: &str, found: String| OptimError::FileField {
        path: path.to_path_buf(),
        field: field.to_string(),
        expected: expected.to_string(),
        found,
    };
    let meta = file.metadata();
    let meta_str = |key: &str, expected: &str| {
        meta.get(key).ok_or_else(|| field(&format!("__metadata__.{key}"), expected, "nothing".into()))
    };
    let format = meta_str("format", &format!("\"{FORMAT}\""))?;
    if format != FORMAT {
        return Err(field("__metadata__.format", &format!("\"{FORMAT}\""), format!("\"{format}\"")));
    }
    let optimizer = meta_str("optimizer", "an optimizer name")?.clone();
    let param_groups: Vec<GroupState<C>> =
        serde_json::from_str(meta_str("param_groups", "a JSON list of parameter groups")?).map_err(|e| {
            field("__metadata__.param_groups", "a JSON list of this optimizer's parameter groups", e.to_string())
        })?;

    let mut state: BTreeMap<usize, ParamState<E>> = BTreeMap::new();
    for key in file.keys() {
        let bad = |found: String| field(key, "a tensor named state.{id}.{name}", found);
        let rest = key.strip_prefix("state.").ok_or_else(|| bad("another name".into()))?;
        let (id, name) = rest.split_once('.').ok_or_else(|| bad("no buffer name".into()))?;
        let id: usize = id.parse().map_err(|_| bad(format!("parameter id `{id}`")))?;
        let entry = state.entry(id).or_insert_with(|| ParamState::new(None));
        if name == "step" {
            let (values, shape) = file.tensor_i64(key).map_err(|e| file_error(path, e))?;
            match (values.as_slice(), shape.as_slice()) {
                ([step], []) if *step >= 0 => entry.step = Some(*step as u64),
                _ => return Err(field(key, "a non-negative I64 scalar", format!("{values:?} of shape {shape:?}"))),
            }
        } else {
            let t: Tensor<E> = file.tensor(key).map_err(|e| file_error(path, e))?;
            entry.buffers.insert(name.to_string(), t);
        }
    }
    Ok(OptimizerStateDict { optimizer, param_groups, state })
}

/// `t` in `E`'s dtype, every bit kept (NaN payloads too: nothing is converted).
fn raw<E: Float>(t: &Tensor<E>) -> RawTensor {
    let c = t.contiguous();
    if let Some(c32) = (&c as &dyn Any).downcast_ref::<Tensor<f32>>() {
        let s = c32.as_slice().expect("contiguous");
        return RawTensor::new(Dtype::F32, t.shape().to_vec(), s.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    // f64 (Float's other element type).
    let s = c.as_slice().expect("contiguous");
    RawTensor::new(Dtype::F64, t.shape().to_vec(), s.iter().flat_map(|x| Float::to_f64(*x).to_le_bytes()).collect())
}

/// An [`OptimError::File`] from kiln-nn's error, without repeating the path.
fn file_error(path: &Path, e: NnError) -> OptimError {
    let message = match e {
        NnError::Io { action, message, .. } => format!("{action}: {message}"),
        other => {
            let s = other.to_string();
            let prefix = format!("{}: ", path.display());
            s.strip_prefix(&prefix).map_or(s.clone(), str::to_string)
        }
    };
    OptimError::File { path: PathBuf::from(path), message }
}
