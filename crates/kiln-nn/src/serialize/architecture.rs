//! A `torch.nn.Sequential` described in JSON, built from kiln layers with the same
//! `state_dict` keys, so that its PyTorch weights load by name.

use serde_json::{Map, Value};

use kiln_tensor::Float;

use crate::error::NnError;
use crate::layers::{
    AdaptiveAvgPool2d, AvgPool1dConfig, AvgPool2dConfig, BatchNormConfig, Conv1dConfig, Conv2dConfig,
    ConvTranspose2dConfig, Dropout, Dropout2d, Flatten, GeluApproximate, GroupNormConfig, Identity, LayerNormConfig,
    LeakyReLU, LinearConfig, LogSoftmax, MaxPool1dConfig, MaxPool2dConfig, Padding, ReLU, Sequential, SiLU, Sigmoid,
    Softmax, Softplus, Tanh, ELU, GELU,
};

/// Builds a [`Sequential`] from a JSON description of a `torch.nn.Sequential`: a list of
/// `{"layer": "<PyTorch class name>", "args": {<constructor keyword arguments>}}`, or an object
/// holding that list under `"architecture"`. Layer `i` gets the keys `i.weight`, `i.bias`, ...,
/// as in PyTorch, so the model's weights then load with [`load`](super::load).
///
/// Such a description comes from PyTorch in a line or two, e.g.
/// `[{"layer": type(m).__name__, "args": {...}} for m in model]` with the arguments the model
/// was built with. Arguments left out take PyTorch's defaults.
///
/// Supported: `Linear`, `Conv1d`, `Conv2d` (`padding` an int, a pair, `"same"` or `"valid"`),
/// `ConvTranspose2d`, `MaxPool1d`, `MaxPool2d`, `AvgPool1d`, `AvgPool2d`,
/// `AdaptiveAvgPool2d`, `BatchNorm1d`, `BatchNorm2d`, `LayerNorm`, `GroupNorm`, `Dropout`,
/// `Dropout2d`, `Flatten`, `Identity`, `ReLU`, `LeakyReLU`, `ELU`, `GELU`, `SiLU`, `Sigmoid`,
/// `Tanh`, `Softplus`, `Softmax`, `LogSoftmax`. Layers are initialised as `new` would; load
/// the weights afterwards.
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
    let mut model = Sequential::new();
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
        let mut a = Args { what: format!("sequential_from_json: layer {i} ({name})"), map };
        model = add_layer(model, name, &mut a)?;
        a.finish()?;
    }
    Ok(model)
}

fn add_layer<E: Float>(model: Sequential<E>, name: &str, a: &mut Args) -> Result<Sequential<E>, NnError> {
    Ok(match name {
        "Linear" => {
            let (i, o) = (a.usize("in_features", None)?, a.usize("out_features", None)?);
            model.add(LinearConfig { bias: a.bool("bias", true)?, ..LinearConfig::new(i, o) }.build::<E>()?)
        }
        "Conv1d" => {
            a.zeros_padding_mode()?;
            let (i, o, k) =
                (a.usize("in_channels", None)?, a.usize("out_channels", None)?, a.usize("kernel_size", None)?);
            let padding = match a.take("padding") {
                None => Padding::Valid,
                Some(Value::String(s)) if s == "same" => Padding::Same,
                Some(Value::String(s)) if s == "valid" => Padding::Valid,
                Some(v) => Padding::Explicit(a.as_usize("padding", &v)?),
            };
            let c = Conv1dConfig {
                stride: a.usize("stride", Some(1))?,
                dilation: a.usize("dilation", Some(1))?,
                groups: a.usize("groups", Some(1))?,
                bias: a.bool("bias", true)?,
                padding,
                ..Conv1dConfig::new(i, o, k)
            };
            model.add(c.build::<E>()?)
        }
        "Conv2d" => {
            a.zeros_padding_mode()?;
            let (i, o) = (a.usize("in_channels", None)?, a.usize("out_channels", None)?);
            let padding = match a.take("padding") {
                None => Padding::Valid,
                Some(Value::String(s)) if s == "same" => Padding::Same,
                Some(Value::String(s)) if s == "valid" => Padding::Valid,
                Some(v) => Padding::Explicit(a.as_pair("padding", &v)?),
            };
            let c = Conv2dConfig {
                kernel_size: a.pair("kernel_size", None)?,
                stride: a.pair("stride", Some([1, 1]))?,
                dilation: a.pair("dilation", Some([1, 1]))?,
                groups: a.usize("groups", Some(1))?,
                bias: a.bool("bias", true)?,
                padding,
                ..Conv2dConfig::new(i, o, 1)
            };
            model.add(c.build::<E>()?)
        }
        "ConvTranspose2d" => {
            a.zeros_padding_mode()?;
            let (i, o) = (a.usize("in_channels", None)?, a.usize("out_channels", None)?);
            let c = ConvTranspose2dConfig {
                kernel_size: a.pair("kernel_size", None)?,
                stride: a.pair("stride", Some([1, 1]))?,
                padding: a.pair("padding", Some([0, 0]))?,
                output_padding: a.pair("output_padding", Some([0, 0]))?,
                dilation: a.pair("dilation", Some([1, 1]))?,
                groups: a.usize("groups", Some(1))?,
                bias: a.bool("bias", true)?,
                ..ConvTranspose2dConfig::new(i, o, 1)
            };
            model.add(c.build::<E>()?)
        }
        "MaxPool1d" => {
            a.no_indices()?;
            let k = a.usize("kernel_size", None)?;
            let c = MaxPool1dConfig {
                stride: Some(a.usize("stride", Some(k))?),
                padding: a.usize("padding", Some(0))?,
                dilation: a.usize("dilation", Some(1))?,
                ceil_mode: a.bool("ceil_mode", false)?,
                ..MaxPool1dConfig::new(k)
            };
            model.add(c.build()?)
        }
        "MaxPool2d" => {
            a.no_indices()?;
            let k = a.pair("kernel_size", None)?;
            let c = MaxPool2dConfig {
                kernel_size: k,
                stride: Some(a.pair("stride", Some(k))?),
                padding: a.pair("padding", Some([0, 0]))?,
                dilation: a.pair("dilation", Some([1, 1]))?,
                ceil_mode: a.bool("ceil_mode", false)?,
            };
            model.add(c.build()?)
        }
        "AvgPool1d" => {
            let k = a.usize("kernel_size", None)?;
            let c = AvgPool1dConfig {
                stride: Some(a.usize("stride", Some(k))?),
                padding: a.usize("padding", Some(0))?,
                ceil_mode: a.bool("ceil_mode", false)?,
                count_include_pad: a.bool("count_include_pad", true)?,
                ..AvgPool1dConfig::new(k)
            };
            model.add(c.build()?)
        }
        "AvgPool2d" => {
            let k = a.pair("kernel_size", None)?;
            let divisor_override = match a.take("divisor_override") {
                None => None,
                Some(v) => Some(a.as_usize("divisor_override", &v)?),
            };
            let c = AvgPool2dConfig {
                kernel_size: k,
                stride: Some(a.pair("stride", Some(k))?),
                padding: a.pair("padding", Some([0, 0]))?,
                ceil_mode: a.bool("ceil_mode", false)?,
                count_include_pad: a.bool("count_include_pad", true)?,
                divisor_override,
            };
            model.add(c.build()?)
        }
        "AdaptiveAvgPool2d" => model.add(AdaptiveAvgPool2d::try_new(a.pair("output_size", None)?)?),
        "BatchNorm1d" | "BatchNorm2d" => {
            let momentum = match a.map.remove("momentum") {
                None => Some(0.1),
                Some(Value::Null) => None,
                Some(v) => Some(a.as_f64("momentum", &v)?),
            };
            let c = BatchNormConfig {
                eps: a.f64("eps", 1e-5)?,
                momentum,
                affine: a.bool("affine", true)?,
                track_running_stats: a.bool("track_running_stats", true)?,
                ..BatchNormConfig::new(a.usize("num_features", None)?)
            };
            if name == "BatchNorm1d" {
                model.add(c.build::<E, 1>()?)
            } else {
                model.add(c.build::<E, 2>()?)
            }
        }
        "LayerNorm" => {
            let shape = match a.take("normalized_shape") {
                Some(Value::Array(v)) => {
                    v.iter().map(|d| a.as_usize("normalized_shape", d)).collect::<Result<Vec<_>, _>>()?
                }
                Some(v) => vec![a.as_usize("normalized_shape", &v)?],
                None => return Err(a.err("normalized_shape is required")),
            };
            let c = LayerNormConfig {
                eps: a.f64("eps", 1e-5)?,
                elementwise_affine: a.bool("elementwise_affine", true)?,
                bias: a.bool("bias", true)?,
                ..LayerNormConfig::new(&shape)
            };
            model.add(c.build::<E>()?)
        }
        "GroupNorm" => {
            let (g, c) = (a.usize("num_groups", None)?, a.usize("num_channels", None)?);
            let c = GroupNormConfig {
                eps: a.f64("eps", 1e-5)?,
                affine: a.bool("affine", true)?,
                ..GroupNormConfig::new(g, c)
            };
            model.add(c.build::<E>()?)
        }
        "Dropout" => {
            a.not_inplace()?;
            model.add(Dropout::try_new(a.f64("p", 0.5)?)?)
        }
        "Dropout2d" => {
            a.not_inplace()?;
            model.add(Dropout2d::try_new(a.f64("p", 0.5)?)?)
        }
        "Flatten" => model.add(Flatten::new(a.isize("start_dim", 1)?, a.isize("end_dim", -1)?)),
        "Identity" => model.add(Identity),
        "ReLU" => {
            a.not_inplace()?;
            model.add(ReLU)
        }
        "LeakyReLU" => {
            a.not_inplace()?;
            model.add(LeakyReLU::new(a.f64("negative_slope", 0.01)?))
        }
        "ELU" => {
            a.not_inplace()?;
            model.add(ELU::new(a.f64("alpha", 1.0)?))
        }
        "GELU" => {
            let approximate = match a.take("approximate") {
                None => GeluApproximate::None,
                Some(Value::String(s)) if s == "none" => GeluApproximate::None,
                Some(Value::String(s)) if s == "tanh" => GeluApproximate::Tanh,
                Some(v) => return Err(a.err(&format!("approximate must be \"none\" or \"tanh\", got {v}"))),
            };
            model.add(GELU::new(approximate))
        }
        "SiLU" => {
            a.not_inplace()?;
            model.add(SiLU)
        }
        "Sigmoid" => model.add(Sigmoid),
        "Tanh" => model.add(Tanh),
        "Softplus" => model.add(Softplus::new(a.f64("beta", 1.0)?, a.f64("threshold", 20.0)?)),
        "Softmax" => model.add(Softmax::new(a.isize("dim", -1)?)),
        "LogSoftmax" => model.add(LogSoftmax::new(a.isize("dim", -1)?)),
        other => return Err(a.err(&format!("layer {other} is not supported"))),
    })
}

/// A layer's keyword arguments, taken one by one; what is left at the end is unsupported.
struct Args {
    what: String,
    map: Map<String, Value>,
}

impl Args {
    fn err(&self, msg: &str) -> NnError {
        NnError::Config(format!("{}: {msg}", self.what))
    }

    /// The argument, absent when missing or `null`.
    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    fn as_usize(&self, name: &str, v: &Value) -> Result<usize, NnError> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.err(&format!("{name} must be a non-negative integer, got {v}")))
    }

    fn as_f64(&self, name: &str, v: &Value) -> Result<f64, NnError> {
        v.as_f64().ok_or_else(|| self.err(&format!("{name} must be a number, got {v}")))
    }

    /// An `int` or an `(int, int)`.
    fn as_pair(&self, name: &str, v: &Value) -> Result<[usize; 2], NnError> {
        match v {
            Value::Array(a) if a.len() == 2 => Ok([self.as_usize(name, &a[0])?, self.as_usize(name, &a[1])?]),
            Value::Array(_) => Err(self.err(&format!("{name} must be an integer or a pair, got {v}"))),
            _ => Ok([self.as_usize(name, v)?; 2]),
        }
    }

    /// A required (`default` `None`) or optional integer argument.
    fn usize(&mut self, name: &str, default: Option<usize>) -> Result<usize, NnError> {
        match (self.take(name), default) {
            (Some(v), _) => self.as_usize(name, &v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(&format!("{name} is required"))),
        }
    }

    fn pair(&mut self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2], NnError> {
        match (self.take(name), default) {
            (Some(v), _) => self.as_pair(name, &v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(&format!("{name} is required"))),
        }
    }

    fn isize(&mut self, name: &str, default: isize) -> Result<isize, NnError> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => {
                v.as_i64().map(|n| n as isize).ok_or_else(|| self.err(&format!("{name} must be an integer, got {v}")))
            }
        }
    }

    fn f64(&mut self, name: &str, default: f64) -> Result<f64, NnError> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => self.as_f64(name, &v),
        }
    }

    fn bool(&mut self, name: &str, default: bool) -> Result<bool, NnError> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(&format!("{name} must be true or false, got {v}"))),
        }
    }

    /// `inplace` changes nothing kiln computes (it never writes into its input).
    fn not_inplace(&mut self) -> Result<(), NnError> {
        self.bool("inplace", false).map(|_| ())
    }

    fn zeros_padding_mode(&mut self) -> Result<(), NnError> {
        match self.take("padding_mode") {
            None => Ok(()),
            Some(Value::String(s)) if s == "zeros" => Ok(()),
            Some(v) => Err(self.err(&format!("padding_mode {v} is not supported (only \"zeros\")"))),
        }
    }

    fn no_indices(&mut self) -> Result<(), NnError> {
        if self.bool("return_indices", false)? {
            return Err(self.err("return_indices=True is not supported"));
        }
        Ok(())
    }

    fn finish(self) -> Result<(), NnError> {
        if self.map.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = self.map.keys().map(String::as_str).collect();
        Err(self.err(&format!("unsupported argument(s) {keys:?}")))
    }
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
