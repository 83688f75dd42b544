//! A `torch.nn.Sequential` described in JSON, built from kiln layers with the same
//! `state_dict` keys, so that its PyTorch weights load by name.

use serde_json::{Map, Value};

use kiln_tensor::Float;

use crate::error::NnError;
use crate::layers::Sequential;
use crate::module::Layer;
use crate::registry::{self, Args};

/// Builds a [`Sequential`] from a JSON description of a `torch.nn.Sequential`: a list of
/// `{"layer": "<PyTorch class name>", "args": {<constructor keyword arguments>}}`, or an object
/// holding that list under `"architecture"`. Layer `i` gets the keys `i.weight`, `i.bias`, ...,
/// as in PyTorch, so the model's weights then load with [`load`](super::load).
///
/// Such a description comes from PyTorch in a line or two, e.g.
/// `[{"layer": type(m).__name__, "args": {...}} for m in model]` with the arguments the model
/// was built with. Arguments left out take PyTorch's defaults.
///
/// Supported: every layer type in the [layer registry](crate::registry) (`Linear`, `Conv1d`,
/// `Conv2d` (`padding` an int, a pair, `"same"` or `"valid"`), `ConvTranspose2d`, the pools,
/// `BatchNorm1d`/`2d`, `LayerNorm`, `GroupNorm`, `Dropout`, `Dropout2d`, `Flatten`,
/// `Identity`, the activations, ...: see [`registry::registrations`]). Layers are initialised
/// as `new` would; load the weights afterwards.
///
/// ```
/// use kiln_nn::serialize::sequential_from_json;
/// use kiln_nn::{Module, Sequential};
/// let model: Sequential = sequential_from_json(r#"[
///     {"layer": "Conv2d", "args": {"in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1}},
///     {"layer": "ReLU", "args": {}},
///     {"layer": "MaxPool2d", "args": {"kernel_size": 2}},
///     {"layer": "Flatten", "args": {"start_dim": 1}},
///     {"layer": "Linear", "args": {"in_features": 196, "out_features": 10}}
/// ]"#).unwrap();
/// let keys: Vec<String> = model.state_dict().into_keys().collect();
/// assert_eq!(keys, ["0.bias", "0.weight", "4.bias", "4.weight"]);
/// ```
///
/// # Errors
/// [`NnError::Config`] naming the layer's position and class for malformed JSON, an unknown
/// layer, a missing, mistyped or unsupported argument (`padding_mode='reflect'`), or a
/// configuration the layer itself refuses.
pub fn sequential_from_json<E: Float>(json: &str) -> Result<Sequential<E>, NnError> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| NnError::Config(format!("sequential_from_json: not JSON: {e}")))?;
    let list = match &root {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("architecture") {
            Some(Value::Array(a)) => a,
            _ => return Err(NnError::Config("sequential_from_json: no \"architecture\" list in the object".into())),
        },
        _ => return Err(NnError::Config("sequential_from_json: expected a list of layers".into())),
    };
    let mut layers: Vec<Box<dyn Layer<E>>> = Vec::with_capacity(list.len());
    for (i, spec) in list.iter().enumerate() {
        let name = spec
            .get("layer")
            .and_then(Value::as_str)
            .ok_or_else(|| NnError::Config(format!("sequential_from_json: layer {i}: no \"layer\" name in {spec}")))?;
        let map = match spec.get("args") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(NnError::Config(format!(
                    "sequential_from_json: layer {i} ({name}): args must be an object, got {other}"
                )))
            }
        };
        let mut a = Args::new(&format!("sequential_from_json: layer {i} ({name})"), map);
        layers.push(registry::build_named(name, &mut a)?);
        a.finish()?;
    }
    Ok(layers.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::Module;

    fn keys(m: &Sequential) -> Vec<String> {
        m.state_dict().into_keys().collect()
    }

    #[test]
    fn builds_pytorch_keys_and_reads_the_golden_object_form() {
        let m: Sequential = sequential_from_json(
            r#"{"architecture": [
                {"layer": "Conv2d", "args": {"in_channels": 1, "out_channels": 2, "kernel_size": [3, 3], "padding": "same", "bias": false}},
                {"layer": "BatchNorm2d", "args": {"num_features": 2, "momentum": null}},
                {"layer": "GELU", "args": {"approximate": "tanh"}},
                {"layer": "AdaptiveAvgPool2d", "args": {"output_size": 1}},
                {"layer": "Flatten"},
                {"layer": "LayerNorm", "args": {"normalized_shape": 2}},
                {"layer": "Dropout", "args": {"p": 0.1, "inplace": false}},
                {"layer": "Linear", "args": {"in_features": 2, "out_features": 3}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            keys(&m),
            [
                "0.weight",
                "1.bias",
                "1.num_batches_tracked",
                "1.running_mean",
                "1.running_var",
                "1.weight",
                "5.bias",
                "5.weight",
                "7.bias",
                "7.weight"
            ]
        );
    }

    #[test]
    fn errors_name_the_layer_and_the_argument() {
        let cases = [
            (r#"[{"layer": "Linear", "args": {"in_features": 2}}]"#, "layer 0 (Linear): out_features is required"),
            (
                r#"[{"layer": "ReLU"}, {"layer": "Bilinear", "args": {}}]"#,
                "layer 1 (Bilinear): layer Bilinear is not supported",
            ),
            (
                r#"[{"layer": "Conv2d", "args": {"in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding_mode": "reflect"}}]"#,
                "padding_mode \"reflect\" is not supported",
            ),
            (
                r#"[{"layer": "Linear", "args": {"in_features": 2, "out_features": 2, "device": "cuda"}}]"#,
                "unsupported argument(s) [\"device\"]",
            ),
            (
                r#"[{"layer": "Linear", "args": {"in_features": -2, "out_features": 2}}]"#,
                "in_features must be a non-negative integer, got -2",
            ),
            (
                r#"[{"layer": "Linear", "args": {"in_features": 0, "out_features": 2}}]"#,
                "Linear: in_features must be > 0",
            ),
            (r#"{"layers": []}"#, "no \"architecture\" list"),
            ("[1, 2", "not JSON"),
        ];
        for (json, want) in cases {
            match sequential_from_json::<f32>(json) {
                Err(NnError::Config(msg)) => assert!(msg.contains(want), "{json}: {msg:?} lacks {want:?}"),
                Err(e) => panic!("{json}: expected Config, got {e:?}"),
                Ok(_) => panic!("{json}: built"),
            }
        }
    }
}
