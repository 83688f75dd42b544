//! Renaming the keys of a foreign state dict to a kiln model's keys, and a report of what
//! matched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use kiln_tensor::Float;

use crate::error::NnError;
use crate::module::{Module, StateDict};

/// A caller-supplied renaming: the new key, or `None` to leave the key out.
type KeyFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// One renaming step.
#[derive(Clone)]
enum Rule {
    StripPrefix(String),
    AddPrefix(String),
    Replace(String, String),
    Rename(String, String),
    SkipPrefix(String),
    With(KeyFn),
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::StripPrefix(p) => write!(f, "strip_prefix({p:?})"),
            Rule::AddPrefix(p) => write!(f, "add_prefix({p:?})"),
            Rule::Replace(a, b) => write!(f, "replace({a:?}, {b:?})"),
            Rule::Rename(a, b) => write!(f, "rename({a:?}, {b:?})"),
            Rule::SkipPrefix(p) => write!(f, "skip_prefix({p:?})"),
            Rule::With(_) => f.write_str("map_with(..)"),
        }
    }
}

/// Rules that turn the keys of a state dict saved by another program into the keys of a kiln
/// model: applied to each key in the order they were added, without regular expressions.
///
/// Typical foreign keys: `module.` in front of everything (a model saved from
/// `nn.DataParallel`), a wrapper's prefix (`model.`, `backbone.`), a renamed sub-module
/// (`fc.` for what kiln calls `classifier.`), a head to leave out when fine-tuning.
///
/// ```
/// use kiln_nn::KeyMap;
/// let map = KeyMap::new()
///     .strip_prefix("module.")        // saved from nn.DataParallel
///     .skip_prefix("head.")           // a classifier head we replace
///     .replace(".fc.", ".linear.")    // every occurrence, anywhere in the key
///     .rename("embed.weight", "tok_emb.weight");
/// assert_eq!(map.map_key("module.block.fc.weight").as_deref(), Some("block.linear.weight"));
/// assert_eq!(map.map_key("module.head.bias"), None);
/// assert_eq!(map.map_key("module.embed.weight").as_deref(), Some("tok_emb.weight"));
/// assert_eq!(map.map_key("other.weight").as_deref(), Some("other.weight"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct KeyMap {
    rules: Vec<Rule>,
}

impl KeyMap {
    /// The identity map.
    pub fn new() -> Self {
        KeyMap::default()
    }

    /// Removes `prefix` from keys that start with it (others pass unchanged).
    #[must_use]
    pub fn strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.rules.push(Rule::StripPrefix(prefix.into()));
        self
    }

    /// Puts `prefix` in front of every key.
    #[must_use]
    pub fn add_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.rules.push(Rule::AddPrefix(prefix.into()));
        self
    }

    /// Replaces every occurrence of `from` inside a key by `to` (`".fc." -> ".linear."`).
    ///
    /// **Panics** if `from` is empty.
    #[must_use]
    pub fn replace(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        let from = from.into();
        assert!(!from.is_empty(), "KeyMap::replace: `from` must not be empty");
        self.rules.push(Rule::Replace(from, to.into()));
        self
    }

    /// Renames one whole key (`"fc.weight" -> "classifier.weight"`).
    #[must_use]
    pub fn rename(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rules.push(Rule::Rename(from.into(), to.into()));
        self
    }

    /// Leaves out keys that start with `prefix` (as they are at this point of the rules);
    /// they are listed as `skipped` in the report, not as unexpected.
    #[must_use]
    pub fn skip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.rules.push(Rule::SkipPrefix(prefix.into()));
        self
    }

    /// Any other renaming: `f` returns the new key, or `None` to leave the key out.
    #[must_use]
    pub fn map_with(mut self, f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.rules.push(Rule::With(Arc::new(f)));
        self
    }

    /// The key `key` becomes, or `None` when a rule leaves it out.
    #[must_use]
    pub fn map_key(&self, key: &str) -> Option<String> {
        let mut k = key.to_string();
        for rule in &self.rules {
            k = match rule {
                Rule::StripPrefix(p) => k.strip_prefix(p.as_str()).map_or(k.clone(), str::to_string),
                Rule::AddPrefix(p) => format!("{p}{k}"),
                Rule::Replace(from, to) => k.replace(from.as_str(), to),
                Rule::Rename(from, to) => {
                    if &k == from {
                        to.clone()
                    } else {
                        k
                    }
                }
                Rule::SkipPrefix(p) => {
                    if k.starts_with(p.as_str()) {
                        return None;
                    }
                    k
                }
                Rule::With(f) => f(&k)?,
            };
        }
        Some(k)
    }

    /// Renames the keys of a state dict (leaving out the skipped ones).
    ///
    /// # Errors
    /// [`NnError::KeyCollision`] when two keys map to the same key.
    pub fn apply<E: Float>(&self, state: StateDict<E>) -> Result<StateDict<E>, NnError> {
        let mut out = StateDict::new();
        let mut from: BTreeMap<String, String> = BTreeMap::new();
        for (k, t) in state {
            if let Some(target) = self.map_key(&k) {
                if let Some(first) = from.get(&target) {
                    return Err(NnError::KeyCollision { target, first: first.clone(), second: k });
                }
                from.insert(target.clone(), k);
                out.insert(target, t);
            }
        }
        Ok(out)
    }

    /// Matches source keys (with their shapes) against `model`'s parameters and buffers
    /// through this map, loading nothing.
    ///
    /// # Errors
    /// [`NnError::KeyCollision`] when two source keys map to the same key.
    pub fn report<'a, E: Float>(
        &self,
        model: &dyn Module<E>,
        source: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<KeyMapReport, NnError> {
        let mut report = KeyMapReport::default();
        // target key -> (source key, source shape)
        let mut mapped: BTreeMap<String, (&'a str, &'a [usize])> = BTreeMap::new();
        for (k, shape) in source {
            match self.map_key(k) {
                None => report.skipped.push(k.to_string()),
                Some(target) => {
                    if let Some((first, _)) = mapped.get(&target) {
                        let (a, b) = if *first <= k { (*first, k) } else { (k, *first) };
                        return Err(NnError::KeyCollision { target, first: a.to_string(), second: b.to_string() });
                    }
                    mapped.insert(target, (k, shape));
                }
            }
        }
        let mut used = BTreeSet::new();
        model.visit("", &mut |key, var, _| match mapped.get(key) {
            None => report.missing.push(key.to_string()),
            Some((src, shape)) => {
                used.insert(key.to_string());
                let model_shape = var.shape().to_vec();
                if model_shape.as_slice() == *shape {
                    report.matched.push((src.to_string(), key.to_string()));
                } else {
                    report.mismatched.push((key.to_string(), model_shape, shape.to_vec()));
                }
            }
        });
        report.unexpected =
            mapped.iter().filter(|(target, _)| !used.contains(*target)).map(|(_, (src, _))| src.to_string()).collect();
        report.unexpected.sort();
        Ok(report)
    }
}

/// What a [`KeyMap`] matched between a source (a file, a state dict) and a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyMapReport {
    /// `(source key, model key)` of every tensor that fits, in the model's order.
    pub matched: Vec<(String, String)>,
    /// Model keys that no source key maps to.
    pub missing: Vec<String>,
    /// Source keys (as named in the source) whose mapped key the model lacks.
    pub unexpected: Vec<String>,
    /// Source keys a rule left out.
    pub skipped: Vec<String>,
    /// `(model key, model shape, source shape)` for keys found with another shape.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl KeyMapReport {
    /// Whether every model key was matched and every source key used or skipped.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for KeyMapReport {
    /// `matched 6, missing 0, unexpected 0, skipped 0, shape mismatches 0`, then one line per
    /// problem key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "matched {}, missing {}, unexpected {}, skipped {}, shape mismatches {}",
            self.matched.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.skipped.len(),
            self.mismatched.len()
        )?;
        for k in &self.missing {
            write!(f, "\n  missing: {k}")?;
        }
        for k in &self.unexpected {
            write!(f, "\n  unexpected: {k}")?;
        }
        for (k, m, s) in &self.mismatched {
            write!(f, "\n  shape: {k}: model {m:?}, source {s:?}")?;
        }
        Ok(())
    }
}
