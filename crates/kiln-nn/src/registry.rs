//! The layer registry: how a layer tells the crates around it what it is.
//!
//! A layer declares, in its own file, how it is **described** (PyTorch's class name and
//! constructor keyword arguments, as JSON) and **rebuilt** from that description, by
//! implementing [`LayerSpec`], and registers itself with one line,
//! [`register_layer!`](crate::register_layer). Nothing else names it: the JSON architecture
//! reader ([`sequential_from_json`](crate::serialize::sequential_from_json)), kiln-quant's
//! model files and kiln-onnx's exporter find it here, by name or by type.
//!
//! A description is `{"layer": "<PyTorch class name>", "args": {<keyword arguments>}}`, the
//! format [`sequential_from_json`](crate::serialize::sequential_from_json) reads.
//!
//! ```
//! use kiln_nn::registry;
//! use kiln_nn::{Layer, Linear, Sequential};
//! let model: Sequential = Sequential::new().add(Linear::new(4, 3));
//! let d = registry::describe(&model[0]).unwrap();
//! assert_eq!(d.to_string(), r#"{"args":{"bias":true,"in_features":4,"out_features":3},"layer":"Linear"}"#);
//! let back: Box<dyn Layer<f64>> = registry::build(&d).unwrap();
//! assert_eq!(back.to_string(), model[0].to_string());
//! ```
//!
//! Registrations are collected at program start by the [`inventory`] crate (from every crate
//! linked in, so a crate above kiln-nn can register layers of its own).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use kiln_tensor::Float;

use crate::error::NnError;
use crate::module::Layer;

#[doc(hidden)]
pub use inventory;

/// A layer that can be described by PyTorch's class name and constructor arguments and
/// rebuilt from them: implemented in the layer's own file, registered there with
/// [`register_layer!`](crate::register_layer).
///
/// `config` and `from_config` are each other's inverse: a layer rebuilt from its
/// description displays as the original does (its parameters are drawn afresh: load the
/// weights afterwards, by `state_dict` key).
///
/// ```
/// use kiln_nn::registry::{Args, LayerSpec};
/// use kiln_nn::LeakyReLU;
/// let l = LeakyReLU::new(0.2);
/// assert_eq!(<LeakyReLU as LayerSpec>::TYPE_NAME, "LeakyReLU");
/// let mut args = Args::new("doc", l.config());
/// let back = LeakyReLU::from_config(&mut args).unwrap();
/// args.finish().unwrap();
/// assert_eq!(back.negative_slope, 0.2);
/// ```
pub trait LayerSpec: Sized + 'static {
    /// PyTorch's class name (`"Linear"`), the `"layer"` of the description.
    const TYPE_NAME: &'static str;
    /// The arguments of a small instance (a JSON object), for the registry's own tests:
    /// every registered layer is built from them, described and rebuilt.
    const EXAMPLE: &'static str;

    /// The constructor arguments under PyTorch's keyword names, every one written out.
    fn config(&self) -> Map<String, Value>;

    /// Builds the layer from `args`, taking each argument it reads (absent ones take
    /// PyTorch's defaults); the caller refuses whatever is left.
    ///
    /// # Errors
    /// [`NnError::Config`] for a missing, mistyped or unsupported argument, or a
    /// configuration the layer refuses.
    fn from_config(args: &mut Args) -> Result<Self, NnError>;
}

/// One registered layer type: its name, example arguments, and how to describe and build it
/// for `f32` and `f64` (what [`register_layer!`](crate::register_layer) submits).
pub struct Registration {
    /// PyTorch's class name.
    pub name: &'static str,
    /// [`LayerSpec::EXAMPLE`].
    pub example: &'static str,
    type_ids: [fn() -> TypeId; 2],
    describe: [DescribeFn; 2],
    build: [BuildFn; 2],
}

type DescribeFn = fn(&dyn Any) -> Option<Map<String, Value>>;
type BuildFn = fn(&mut Args) -> Result<Box<dyn Any>, NnError>;

fn describe_as<T: LayerSpec>(layer: &dyn Any) -> Option<Map<String, Value>> {
    layer.downcast_ref::<T>().map(T::config)
}

fn build_as<E: Float, T: LayerSpec + Layer<E>>(args: &mut Args) -> Result<Box<dyn Any>, NnError> {
    let layer: Box<dyn Layer<E>> = Box::new(T::from_config(args)?);
    Ok(Box::new(layer))
}

impl Registration {
    /// The registration of a layer whose `f32` form is `F` and `f64` form is `D` (the same
    /// type for a layer without parameters, like `ReLU`).
    #[must_use]
    pub const fn new<F, D>() -> Self
    where
        F: LayerSpec + Layer<f32>,
        D: LayerSpec + Layer<f64>,
    {
        Registration {
            name: F::TYPE_NAME,
            example: F::EXAMPLE,
            type_ids: [TypeId::of::<F> as fn() -> TypeId, TypeId::of::<D> as fn() -> TypeId],
            describe: [describe_as::<F> as DescribeFn, describe_as::<D> as DescribeFn],
            build: [build_as::<f32, F> as BuildFn, build_as::<f64, D> as BuildFn],
        }
    }

    /// Builds the layer for element type `E` from `args` (see [`LayerSpec::from_config`]).
    ///
    /// # Errors
    /// As [`LayerSpec::from_config`]; [`NnError::Config`] for an element type other than
    /// `f32` and `f64`.
    pub fn build<E: Float>(&self, args: &mut Args) -> Result<Box<dyn Layer<E>>, NnError> {
        let which = if TypeId::of::<E>() == TypeId::of::<f32>() {
            0
        } else if TypeId::of::<E>() == TypeId::of::<f64>() {
            1
        } else {
            return Err(args.err("layers are built for f32 and f64 only"));
        };
        let any = (self.build[which])(args)?;
        Ok(*any.downcast::<Box<dyn Layer<E>>>().unwrap_or_else(|_| unreachable!("built for {}", self.name)))
    }

    /// The layer built from its [`example`](Registration::example) arguments (for the tests of
    /// crates that convert layers: every registered type, one instance each).
    ///
    /// # Errors
    /// As [`build`](Registration::build), for an example that does not build.
    pub fn build_example<E: Float>(&self) -> Result<Box<dyn Layer<E>>, NnError> {
        let map = match serde_json::from_str(self.example) {
            Ok(Value::Object(m)) => m,
            _ => return Err(NnError::Config(format!("{}: EXAMPLE is not a JSON object: {}", self.name, self.example))),
        };
        let mut args = Args::new(&format!("{} example", self.name), map);
        let layer = self.build::<E>(&mut args)?;
        args.finish()?;
        Ok(layer)
    }

    /// Whether `type_id` is this layer's (for either element type).
    #[must_use]
    pub fn is_type(&self, type_id: TypeId) -> bool {
        self.type_ids.iter().any(|t| t() == type_id)
    }
}

inventory::collect!(Registration);

/// Registers a layer that implements [`LayerSpec`](crate::registry::LayerSpec), in the
/// layer's own file: `register_layer!(ReLU);` for a layer without an element type,
/// `register_layer!(Linear<E>);` for one generic over it (registered for `f32` and `f64`),
/// `register_layer!(BatchNorm<E, 2>);` with further generic arguments.
#[macro_export]
macro_rules! register_layer {
    ($name:ident < E $(, $arg:tt)* >) => {
        $crate::registry::inventory::submit! {
            $crate::registry::Registration::new::<$name<f32 $(, $arg)*>, $name<f64 $(, $arg)*>>()
        }
    };
    ($t:ty) => {
        $crate::registry::inventory::submit! { $crate::registry::Registration::new::<$t, $t>() }
    };
}

fn by_name() -> &'static HashMap<&'static str, &'static Registration> {
    static INDEX: OnceLock<HashMap<&'static str, &'static Registration>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut m = HashMap::new();
        for r in inventory::iter::<Registration> {
            if let Some(old) = m.insert(r.name, r) {
                // two layers claiming one name: a programming error the registry test catches
                panic!("kiln_nn::registry: two layer types are registered as {:?}", old.name);
            }
        }
        m
    })
}

/// Every registered layer type, sorted by name.
#[must_use]
pub fn registrations() -> Vec<&'static Registration> {
    let mut v: Vec<_> = by_name().values().copied().collect();
    v.sort_by_key(|r| r.name);
    v
}

/// The registration named `name` (PyTorch's class name), if any.
#[must_use]
pub fn lookup(name: &str) -> Option<&'static Registration> {
    by_name().get(name).copied()
}

/// `layer` itself when it is a box holding a layer (`Sequential::push` of a boxed layer),
/// looked through as often as needed.
fn unbox<E: Float>(mut layer: &dyn Layer<E>) -> &dyn Layer<E> {
    while let Some(inner) = layer.as_any().downcast_ref::<Box<dyn Layer<E>>>() {
        layer = &**inner;
    }
    layer
}

/// The registration of `layer`'s type, if it is a registered one.
#[must_use]
pub fn registration_of<E: Float>(layer: &dyn Layer<E>) -> Option<&'static Registration> {
    let id = unbox(layer).as_any().type_id();
    by_name().values().copied().find(|r| r.is_type(id))
}

/// `layer`'s description `{"layer": <name>, "args": {...}}`, or `None` when its type is not
/// registered (a layer of your own, a `Sequential`, an `LSTM`).
#[must_use]
pub fn describe<E: Float>(layer: &dyn Layer<E>) -> Option<Value> {
    let layer = unbox(layer);
    let r = registration_of(layer)?;
    let args = r.describe.iter().find_map(|d| d(layer.as_any()))?;
    Some(json!({"layer": r.name, "args": Value::Object(args)}))
}

/// Builds a layer from its description (`{"layer": ..., "args": {...}}`, `args` optional).
///
/// # Errors
/// [`NnError::Config`] for a description that is not such an object, an unknown layer, an
/// unsupported argument, or what [`LayerSpec::from_config`] refuses.
pub fn build<E: Float>(description: &Value) -> Result<Box<dyn Layer<E>>, NnError> {
    build_at("registry::build", description)
}

/// [`build`] with errors prefixed by `what`, to which the layer's name is added.
fn build_at<E: Float>(what: &str, description: &Value) -> Result<Box<dyn Layer<E>>, NnError> {
    let name = description
        .get("layer")
        .and_then(Value::as_str)
        .ok_or_else(|| NnError::Config(format!("{what}: no \"layer\" name in {description}")))?;
    let map = match description.get("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(NnError::Config(format!("{what} ({name}): args must be an object, got {other}"))),
    };
    let mut args = Args::new(&format!("{what} ({name})"), map);
    let layer = build_named(name, &mut args)?;
    args.finish()?;
    Ok(layer)
}

/// Builds the layer registered as `name` from `args` (the caller checks that nothing is left
/// with [`Args::finish`]).
///
/// # Errors
/// [`NnError::Config`] for an unknown layer or what [`LayerSpec::from_config`] refuses.
pub fn build_named<E: Float>(name: &str, args: &mut Args) -> Result<Box<dyn Layer<E>>, NnError> {
    let r = lookup(name).ok_or_else(|| args.err(&format!("layer {name} is not supported")))?;
    r.build::<E>(args)
}

/// A layer's keyword arguments, taken one by one by [`LayerSpec::from_config`]; what is left
/// at the end is unsupported ([`finish`](Args::finish)). Errors name the layer and the
/// argument.
pub struct Args {
    what: String,
    map: Map<String, Value>,
}

impl Args {
    /// The arguments `map`, errors prefixed with `what` (where they come from).
    #[must_use]
    pub fn new(what: &str, map: Map<String, Value>) -> Self {
        Args { what: what.to_string(), map }
    }

    /// A configuration error about these arguments.
    #[must_use]
    pub fn err(&self, msg: &str) -> NnError {
        NnError::Config(format!("{}: {msg}", self.what))
    }

    /// The argument, absent when missing or `null`.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    /// The argument as given, `null` included (`momentum=None`).
    pub fn take_raw(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    /// `v` as a non-negative integer.
    ///
    /// # Errors
    /// [`NnError::Config`] naming `name` when it is not one.
    pub fn as_usize(&self, name: &str, v: &Value) -> Result<usize, NnError> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.err(&format!("{name} must be a non-negative integer, got {v}")))
    }

    /// `v` as a number.
    ///
    /// # Errors
    /// [`NnError::Config`] naming `name` when it is not one.
    pub fn as_f64(&self, name: &str, v: &Value) -> Result<f64, NnError> {
        v.as_f64().ok_or_else(|| self.err(&format!("{name} must be a number, got {v}")))
    }

    /// `v`, an `int` or an `(int, int)`, as a pair.
    ///
    /// # Errors
    /// [`NnError::Config`] naming `name` when it is neither.
    pub fn as_pair(&self, name: &str, v: &Value) -> Result<[usize; 2], NnError> {
        match v {
            Value::Array(a) if a.len() == 2 => Ok([self.as_usize(name, &a[0])?, self.as_usize(name, &a[1])?]),
            Value::Array(_) => Err(self.err(&format!("{name} must be an integer or a pair, got {v}"))),
            _ => Ok([self.as_usize(name, v)?; 2]),
        }
    }

    /// A required (`default` `None`) or optional non-negative integer.
    ///
    /// # Errors
    /// [`NnError::Config`] when it is required and missing, or not such an integer.
    pub fn usize(&mut self, name: &str, default: Option<usize>) -> Result<usize, NnError> {
        match (self.take(name), default) {
            (Some(v), _) => self.as_usize(name, &v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(&format!("{name} is required"))),
        }
    }

    /// An optional non-negative integer that may be `null` (`None`).
    ///
    /// # Errors
    /// [`NnError::Config`] when it is not such an integer.
    pub fn opt_usize(&mut self, name: &str) -> Result<Option<usize>, NnError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => self.as_usize(name, &v).map(Some),
        }
    }

    /// A required or optional `int` / `(int, int)`.
    ///
    /// # Errors
    /// [`NnError::Config`] when it is required and missing, or not such a value.
    pub fn pair(&mut self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2], NnError> {
        match (self.take(name), default) {
            (Some(v), _) => self.as_pair(name, &v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(&format!("{name} is required"))),
        }
    }

    /// An optional integer (possibly negative, like a `dim`).
    ///
    /// # Errors
    /// [`NnError::Config`] when it is not an integer.
    pub fn isize(&mut self, name: &str, default: isize) -> Result<isize, NnError> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => {
                v.as_i64().map(|n| n as isize).ok_or_else(|| self.err(&format!("{name} must be an integer, got {v}")))
            }
        }
    }

    /// An optional number.
    ///
    /// # Errors
    /// [`NnError::Config`] when it is not a number.
    pub fn f64(&mut self, name: &str, default: f64) -> Result<f64, NnError> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => self.as_f64(name, &v),
        }
    }

    /// An optional boolean.
    ///
    /// # Errors
    /// [`NnError::Config`] when it is not `true` or `false`.
    pub fn bool(&mut self, name: &str, default: bool) -> Result<bool, NnError> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(&format!("{name} must be true or false, got {v}"))),
        }
    }

    /// Accepts `inplace`, which changes nothing kiln computes (it never writes into its input).
    ///
    /// # Errors
    /// [`NnError::Config`] when it is not a boolean.
    pub fn not_inplace(&mut self) -> Result<(), NnError> {
        self.bool("inplace", false).map(|_| ())
    }

    /// Accepts `padding_mode` when it is `"zeros"` (the only mode kiln's convolutions have).
    ///
    /// # Errors
    /// [`NnError::Config`] for any other mode.
    pub fn zeros_padding_mode(&mut self) -> Result<(), NnError> {
        match self.take("padding_mode") {
            None => Ok(()),
            Some(Value::String(s)) if s == "zeros" => Ok(()),
            Some(v) => Err(self.err(&format!("padding_mode {v} is not supported (only \"zeros\")"))),
        }
    }

    /// Refuses `return_indices=True` (a pool's second output has no place in a `Sequential`).
    ///
    /// # Errors
    /// [`NnError::Config`] when it is `true`.
    pub fn no_indices(&mut self) -> Result<(), NnError> {
        if self.bool("return_indices", false)? {
            return Err(self.err("return_indices=True is not supported"));
        }
        Ok(())
    }

    /// Checks that every argument was taken.
    ///
    /// # Errors
    /// [`NnError::Config`] listing the arguments left over.
    pub fn finish(self) -> Result<(), NnError> {
        if self.map.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = self.map.keys().map(String::as_str).collect();
        Err(self.err(&format!("unsupported argument(s) {keys:?}")))
    }
}

/// `value` as a JSON object (what [`LayerSpec::config`] returns), from a `json!({...})`.
///
/// **Panics** when `value` is not an object (a bug in the layer's `config`).
#[must_use]
pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        other => panic!("LayerSpec::config: expected a JSON object, got {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered layer: built from its example for f32 and f64, described, rebuilt
    /// from the description to a layer that displays the same and describes the same, with
    /// the same state-dict keys and shapes.
    #[test]
    fn every_registered_layer_round_trips() {
        let all = registrations();
        assert!(all.len() >= 27, "only {} layers registered", all.len());
        for r in all {
            let example: Value =
                serde_json::from_str(r.example).unwrap_or_else(|e| panic!("{}: EXAMPLE is not JSON: {e}", r.name));
            let d = json!({"layer": r.name, "args": example});
            let a: Box<dyn Layer<f32>> = build(&d).unwrap_or_else(|e| panic!("{}: example: {e}", r.name));
            let desc = describe(&*a).unwrap_or_else(|| panic!("{}: built but not described", r.name));
            assert_eq!(desc["layer"], r.name);
            let b: Box<dyn Layer<f32>> = build(&desc).unwrap_or_else(|e| panic!("{}: {desc}: {e}", r.name));
            assert_eq!(b.to_string(), a.to_string(), "{}", r.name);
            assert_eq!(describe(&*b).unwrap(), desc, "{}", r.name);
            let shapes = |m: &dyn Layer<f32>| -> Vec<(String, Vec<usize>)> {
                m.state_dict().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect()
            };
            assert_eq!(shapes(&*a), shapes(&*b), "{}", r.name);
            let c: Box<dyn Layer<f64>> = build(&desc).unwrap_or_else(|e| panic!("{}: f64: {e}", r.name));
            assert_eq!(describe(&*c).unwrap(), desc, "{} f64", r.name);
            assert_eq!(c.to_string(), a.to_string(), "{} f64", r.name);
        }
    }

    /// Names exported from `kiln_nn::layers` that are not layers a description can hold:
    /// configurations (`*Config`), helper types and functions, the layers whose description is
    /// not a flat argument list (containers, recurrent and attention stacks: they hold other
    /// layers or return more than one output), and the positional encodings, not described yet
    /// (`sequential_from_json` never read them).
    const NOT_DESCRIBED: &[&str] = &[
        "AttnMask",
        "BatchNorm",
        "DropChannels",
        "DropElements",
        "DropoutKind",
        "DropoutLayer",
        "GeluApproximate",
        "GRU",
        "GRUCell",
        "HiddenStateOnly",
        "InstanceNorm",
        "LearnedPositionalEmbedding",
        "LSTM",
        "LSTMCell",
        "ModuleList",
        "MultiheadAttention",
        "Padding",
        "Recurrent",
        "RecurrentCell",
        "RNN",
        "RNNCell",
        "RNNNonlinearity",
        "RNNWeights",
        "Sequential",
        "SinusoidalPositionalEncoding",
        "Transformer",
        "TransformerActivation",
        "TransformerDecoder",
        "TransformerDecoderLayer",
        "TransformerEncoder",
        "TransformerEncoderLayer",
        "TransformerMasks",
    ];

    /// A layer exported from `kiln_nn::layers` without a registration fails here (not in a
    /// user's program): the test reads the `pub use` lines of `layers/mod.rs`.
    #[test]
    fn every_exported_layer_is_registered() {
        let src = include_str!("layers/mod.rs");
        let mut names = Vec::new();
        let mut in_use = false;
        let mut text = String::new();
        for line in src.lines() {
            let line = line.trim();
            if line.starts_with("pub use ") {
                in_use = true;
            }
            if in_use {
                text.push_str(line);
                text.push(' ');
                if line.ends_with(';') {
                    in_use = false;
                    let inner = text.split_once("::").map(|(_, r)| r).unwrap_or_default();
                    let inner = inner.trim().trim_end_matches(';').trim_start_matches('{').trim_end_matches('}');
                    names.extend(inner.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
                    text.clear();
                }
            }
        }
        assert!(names.iter().any(|n| n == "Linear"), "parsed {names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(|c: char| c.is_ascii_uppercase()))
            .filter(|n| !n.ends_with("Config") && !NOT_DESCRIBED.contains(&n.as_str()))
            .filter(|n| lookup(n).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "exported from kiln_nn::layers but not registered: {missing:?} (implement LayerSpec and add \
             `register_layer!` in the layer's file, or list it in NOT_DESCRIBED with the reason)"
        );
    }

    #[test]
    fn errors_name_the_layer_and_the_argument() {
        let e = |d: Value| build::<f32>(&d).err().unwrap().to_string();
        assert_eq!(e(json!({"layer": "Nope"})), "registry::build (Nope): layer Nope is not supported");
        assert_eq!(e(json!({"args": {}})), "registry::build: no \"layer\" name in {\"args\":{}}");
        assert_eq!(
            e(json!({"layer": "ReLU", "args": {"x": 1}})),
            "registry::build (ReLU): unsupported argument(s) [\"x\"]"
        );
        assert!(describe::<f32>(&crate::Sequential::<f32>::new()).is_none());
    }
}
