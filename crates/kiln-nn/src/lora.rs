//! LoRA, low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
//! Models"), with Hugging Face PEFT's semantics and key names: a frozen `Linear` plus a
//! trainable low-rank update, `y = x Wᵀ + b + (α / r) · dropout(x) Aᵀ Bᵀ`.
//!
//! - [`LoraLinear`] wraps a [`Linear`]; [`LoraLinear::attach`] gives it an adapter,
//!   [`merge`](LoraLinear::merge) folds the update into the weight for inference and
//!   [`unmerge`](LoraLinear::unmerge) takes it out again. [`LoraEmbedding`] does the same for
//!   an [`Embedding`] (PEFT's `lora_embedding_A` / `lora_embedding_B`).
//! - [`inject`] adapts the layers of a model named by [`LoraConfig::target_modules`] and
//!   freezes everything else; [`merge`] / [`unmerge`] do the same for every adapter of a model.
//! - [`save_adapter`] / [`load_adapter`] write and read the adapter weights alone as
//!   safetensors, under PEFT's keys `<module>.lora_A.weight` and `<module>.lora_B.weight`.
//!
//! # Which layers `inject` reaches
//!
//! A model's layers are reached through the containers kiln knows by value and through the
//! one mutable walk every module has, [`Module::set_training`]:
//!
//! - a plain [`Linear`] or [`Embedding`] held in a [`Sequential`] (at any depth of nested
//!   `Sequential`s and [`ModuleList`]s of boxed layers) is replaced by a `LoraLinear` /
//!   `LoraEmbedding` wrapping it;
//! - in a struct of your own (`#[derive(Module)]`), declare the fields to adapt as
//!   `LoraLinear` instead of `Linear` (or `LoraEmbedding` instead of `Embedding`): a drop-in,
//!   with the same forward and the same `weight` / `bias` keys, so pre-trained weights load
//!   unchanged, and no adapter until `inject` gives it one. `inject` reaches it wherever it
//!   sits, through `set_training`.
//!
//! - the Transformer layers ([`TransformerEncoderLayer`](crate::TransformerEncoderLayer),
//!   [`TransformerDecoderLayer`](crate::TransformerDecoderLayer), so also the encoder, decoder and
//!   [`Transformer`](crate::Transformer) built of them) hold their attention blocks as
//!   [`LoraMultiheadAttention`] and their feed-forward layers as `LoraLinear`, so PEFT's target
//!   names reach them: `self_attn` / `multihead_attn` (the packed q/k/v projection and
//!   `out_proj`), `out_proj` alone, `linear1`, `linear2`.
//!
//! A target name that matches a layer `inject` cannot adapt (a plain `Linear` field, a
//! convolution with `groups > 1`) is an error naming it. A [`Conv2d`](crate::Conv2d) is adapted
//! the same way, by a [`LoraConv2d`] (PEFT's `lora.Conv2d`: `lora_A` a convolution into `r`
//! channels with the base kernel, `lora_B` a 1×1 convolution).
//!
//! ```
//! use kiln_nn::lora::{self, LoraConfig};
//! use kiln_nn::{sequential, Linear, Module, ReLU, Sequential};
//! let mut model: Sequential = sequential![Linear::new(16, 32), ReLU, Linear::new(32, 4)];
//! let config = LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["0".into()], ..Default::default() };
//! let adapted = lora::inject(&mut model, &config)?;
//! assert_eq!(adapted, ["0"]);
//! // only A (4 x 16) and B (32 x 4) train
//! assert_eq!(model.num_trainable_parameters(), 4 * 16 + 32 * 4);
//! let keys: Vec<String> = model.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect();
//! assert_eq!(keys, ["0.lora_A.weight", "0.lora_B.weight"]);
//! # Ok::<(), kiln_nn::NnError>(())
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use kiln_autograd::{no_grad, Var};
use kiln_tensor::{Float, Indices, Rng, Tensor};

use crate::error::NnError;
use crate::init::{self, FanMode, Nonlinearity};
use crate::module::{visit_param, Forward, Layer, Module, StateDict, TensorKind};
use crate::serialize::{load_state_dict_file, save_state_dict, Metadata};
use crate::{Embedding, Linear, ModuleList, Sequential};

mod conv2d;
mod multihead_attention;
#[cfg(test)]
mod transformer;
pub use conv2d::LoraConv2d;
pub use multihead_attention::LoraMultiheadAttention;

/// The prefix PEFT's `save_pretrained` puts before every key (`base_model.model.q.lora_A.weight`);
/// [`load_adapter`] accepts files with or without it.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The settings of [`inject`], as PEFT's `LoraConfig` names them.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// The rank of the update (PEFT's default 8).
    pub r: usize,
    /// The update is scaled by `alpha / r` (PEFT's `lora_alpha`, default 8).
    pub alpha: f64,
    /// Dropout on the input of the low-rank path while training (PEFT's `lora_dropout`,
    /// default 0).
    pub dropout: f64,
    /// The layers to adapt: a layer matches a name when its key prefix (`encoder.q`) equals
    /// it or ends with `.` and the name (`q`), as in PEFT.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 8.0, dropout: 0.0, target_modules: Vec::new() }
    }
}

impl LoraConfig {
    /// `alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`NnError::Config`] when `r` is 0, `alpha` is not finite and positive, or `dropout`
    /// is outside `[0, 1)`.
    pub fn check(&self) -> Result<(), NnError> {
        if self.r == 0 {
            return Err(NnError::Config("LoraConfig: r must be > 0, got 0".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(NnError::Config(format!("LoraConfig: alpha must be finite and > 0, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(NnError::Config(format!("LoraConfig: dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }

    /// Whether the layer at key prefix `name` (`encoder.q`, no trailing dot) is a target.
    pub fn matches(&self, name: &str) -> bool {
        self.target_modules.iter().any(|t| name == t || name.ends_with(&format!(".{t}")))
    }
}

/// The low-rank update of a [`LoraLinear`].
pub struct LoraAdapter<E: Float = f32> {
    /// A, `[r, in_features]`, kaiming-uniform with `a = √5` (U(-1/√in_features, 1/√in_features)).
    pub lora_a: Var<E>,
    /// B, `[out_features, r]`, zeros (so the adapted layer starts as the base layer).
    pub lora_b: Var<E>,
    /// `alpha / r`.
    pub scaling: f64,
    /// Dropout probability on the input of the low-rank path.
    pub dropout: f64,
    rng: Mutex<Rng>,
}

/// How an adapter's two matrices start (PEFT's `reset_lora_parameters`).
#[derive(Clone, Copy, Debug)]
enum AdapterInit {
    /// `A` kaiming-uniform with a = √5, `B` zeros: PEFT's Linear, Conv2d and attention.
    KaimingA,
    /// `A` zeros, `B` N(0, 1): PEFT's Embedding (which has no dropout on this path).
    NormalB,
}

impl<E: Float> LoraAdapter<E> {
    /// A fresh adapter of `config`'s rank, scaling and dropout, `A` of shape `a_shape` and `B`
    /// of `b_shape`, drawn from `rng` (which then gives the adapter's dropout generator).
    fn new(a_shape: &[usize], b_shape: &[usize], config: &LoraConfig, how: AdapterInit, rng: &mut Rng) -> Self {
        let lora_a = Var::param(Tensor::zeros(a_shape));
        let lora_b = Var::param(Tensor::zeros(b_shape));
        let dropout = match how {
            AdapterInit::KaimingA => {
                init::kaiming_uniform_(&lora_a, Nonlinearity::LeakyRelu(5f64.sqrt()), FanMode::FanIn, rng);
                config.dropout
            }
            AdapterInit::NormalB => {
                init::normal_(&lora_b, 0.0, 1.0, rng);
                0.0
            }
        };
        LoraAdapter { lora_a, lora_b, scaling: config.scaling(), dropout, rng: Mutex::new(rng.fork()) }
    }

    /// [`new`](Self::new) from the process-wide generator, after checking `config`.
    ///
    /// **Panics** on an invalid config (see [`LoraConfig::check`]).
    fn fresh(a_shape: &[usize], b_shape: &[usize], config: &LoraConfig, how: AdapterInit) -> Self {
        if let Err(e) = config.check() {
            panic!("{e}");
        }
        init::with_rng(|rng| Self::new(a_shape, b_shape, config, how, rng))
    }

    /// The rank `r`.
    fn rank(&self) -> usize {
        self.lora_a.shape()[0]
    }

    /// `scaling · B A` in the layout of a weight of shape `w_shape`: `B` (`[out, r]`, or
    /// `[out, r, 1, 1]`) times `A` (`[r, in]`, or `[r, in, kH, kW]`) over their flattened
    /// kernels, transposed for an embedding table (`[num_embeddings, dim]`).
    fn delta_weight(&self, w_shape: &[usize], transpose: bool) -> Tensor<E> {
        let (a, b) = (self.lora_a.value(), self.lora_b.value());
        let r = self.rank();
        let (a_rest, b_rest) = (a.shape()[1..].iter().product(), b.shape().iter().product::<usize>() / r);
        let d = b.reshape(&[b_rest, r]).matmul(&a.reshape(&[r, a_rest])).mul_scalar(E::from_f64(self.scaling));
        let d = if transpose { d.t() } else { d };
        if d.shape() == w_shape {
            d
        } else {
            d.reshape(w_shape)
        }
    }

    /// `w + scaling · B A` as an expression, so that gradients reach `A` and `B` (for layers
    /// that run their base op with the adapted weight, as PEFT's `lora.MultiheadAttention`).
    fn adapt(&self, w: &Var<E>) -> Var<E> {
        w.add(&self.lora_b.matmul(&self.lora_a).mul_scalar(E::from_f64(self.scaling)))
    }

    /// `w ← w + scaling · B A` (in `w`'s layout, see [`delta_weight`](Self::delta_weight)),
    /// outside the graph.
    fn merge_into(&self, w: &Var<E>, transpose: bool) {
        let delta = self.delta_weight(&w.shape(), transpose);
        no_grad(|| w.update_value(|v| *v = v.add(&delta)));
    }

    /// `w ← w - scaling · B A`, undoing [`merge_into`](Self::merge_into).
    fn unmerge_from(&self, w: &Var<E>, transpose: bool) {
        let delta = self.delta_weight(&w.shape(), transpose);
        no_grad(|| w.update_value(|v| *v = v.sub(&delta)));
    }

    /// The input of the low-rank path: `x` after the adapter's dropout while training.
    fn dropped(&self, x: &Var<E>, training: bool) -> Var<E> {
        if self.dropout > 0.0 && training {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            x.dropout(self.dropout, true, &mut rng)
        } else {
            x.clone()
        }
    }

    /// `, r=…, scaling=…[, dropout=…], merged=…` for a layer's `Display`.
    fn describe(&self, f: &mut fmt::Formatter<'_>, merged: bool, with_dropout: bool) -> fmt::Result {
        write!(f, ", r={}, scaling={}", self.rank(), self.scaling)?;
        if with_dropout {
            write!(f, ", dropout={}", self.dropout)?;
        }
        write!(f, ", merged={merged}")
    }
}

/// Folds `adapter`'s update into `weight` (`merge`) or takes it out again (`!merge`), unless
/// `merged` says that is done already: the merge and unmerge of every single-weight LoRA layer.
///
/// **Panics**, naming `who`, without an adapter.
fn set_merged<E: Float>(
    adapter: Option<&LoraAdapter<E>>,
    weight: &Var<E>,
    transpose: bool,
    merged: &mut bool,
    merge: bool,
    who: &str,
) {
    let a = adapter.unwrap_or_else(|| panic!("{who}: the layer has no adapter"));
    if merge && !*merged {
        a.merge_into(weight, transpose);
    } else if !merge && *merged {
        a.unmerge_from(weight, transpose);
    }
    *merged = merge;
}

/// Freezes a base layer's weight and bias.
fn freeze<E: Float>(weight: &Var<E>, bias: Option<&Var<E>>) {
    weight.set_requires_grad(false);
    if let Some(b) = bias {
        b.set_requires_grad(false);
    }
}

/// Does what the running walk asks of `layer`, whose base weight is `weight`: the one answer
/// every LoRA layer's `set_training` gives.
fn answer_walk<E: Float, L>(
    layer: &mut L,
    weight: &Var<E>,
    has_adapter: bool,
    attach: fn(&mut L, &LoraConfig),
    merge: fn(&mut L),
    unmerge: fn(&mut L),
) {
    match walk_action(weight) {
        Some(Action::Attach(config)) => attach(layer, &config),
        Some(Action::Merge) if has_adapter => merge(layer),
        Some(Action::Unmerge) if has_adapter => unmerge(layer),
        _ => {}
    }
}

/// A [`Linear`] with an optional LoRA adapter, like PEFT's `lora.Linear`:
/// `y = x Wᵀ + b + (α / r) · dropout(x) Aᵀ Bᵀ`, with `W` and `b` frozen.
///
/// Without an adapter it is the wrapped layer (same forward, same keys). Its keys are the base
/// layer's `weight` and `bias` plus, with an adapter, `lora_A.weight` and `lora_B.weight`:
/// PEFT's names in its adapter files.
///
/// # Shapes
/// - Input: `[*, in_features]`
/// - Output: `[*, out_features]`
///
/// # Parameters
/// - `weight`, `bias`: the base layer's, frozen when an adapter is attached
/// - `lora_A.weight`: `[r, in_features]`, U(-1/√in_features, 1/√in_features)
///   (`kaiming_uniform_` with a = √5, as PEFT)
/// - `lora_B.weight`: `[out_features, r]`, zeros
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::lora::{LoraConfig, LoraLinear};
/// use kiln_nn::{Forward, Linear, Module};
/// use kiln_tensor::Tensor;
/// let base: Linear = Linear::new(6, 3);
/// let x = Var::constant(Tensor::ones(&[2, 6]));
/// let before = base.forward(&x).value();
/// let mut layer = LoraLinear::new(base);
/// layer.attach(&LoraConfig { r: 2, alpha: 4.0, ..Default::default() });
/// assert_eq!(layer.forward(&x).value(), before); // B = 0: the base layer's output
/// assert_eq!(layer.num_trainable_parameters(), 2 * 6 + 3 * 2);
/// assert_eq!(
///     layer.to_string(),
///     "LoraLinear(Linear(in_features=6, out_features=3, bias=true), r=2, scaling=2, dropout=0, merged=false) [39 parameters]"
/// );
/// ```
pub struct LoraLinear<E: Float = f32> {
    /// The wrapped layer.
    pub base: Linear<E>,
    /// The adapter, once attached.
    pub adapter: Option<LoraAdapter<E>>,
    merged: bool,
    training: bool,
}

impl<E: Float> LoraLinear<E> {
    /// Wraps `base`, without an adapter (so far the same layer), in training mode.
    pub fn new(base: Linear<E>) -> Self {
        LoraLinear { base, adapter: None, merged: false, training: true }
    }

    /// Gives the layer a fresh adapter of rank `config.r` (replacing any other, after taking
    /// a merged one out of the weight) and freezes the base weight and bias. `target_modules`
    /// is not used here.
    ///
    /// **Panics** on an invalid config (see [`LoraConfig::check`]).
    pub fn attach(&mut self, config: &LoraConfig) {
        let (inf, outf) = (self.base.config.in_features, self.base.config.out_features);
        let adapter = LoraAdapter::fresh(&[config.r, inf], &[outf, config.r], config, AdapterInit::KaimingA);
        if self.merged {
            self.unmerge();
        }
        freeze(&self.base.weight, self.base.bias.as_ref());
        self.adapter = Some(adapter);
    }

    /// Whether the update is folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// Whether an adapter is attached and not folded into the weight (so that the forward
    /// pass runs the low-rank path; an exporter that reads the base weight alone must
    /// [`merge`](Self::merge) first).
    pub fn has_unmerged_adapter(&self) -> bool {
        self.adapter.is_some() && !self.merged
    }

    /// Folds the update into the base weight, `W ← W + (α / r) B A`, so that the forward pass
    /// costs one matrix product (PEFT's `merge`). Nothing happens when already merged.
    ///
    /// **Panics** without an adapter.
    pub fn merge(&mut self) {
        set_merged(self.adapter.as_ref(), &self.base.weight, false, &mut self.merged, true, "LoraLinear::merge");
    }

    /// Takes the update out of the base weight again, `W ← W - (α / r) B A` (PEFT's
    /// `unmerge`). Nothing happens when not merged.
    ///
    /// **Panics** without an adapter.
    pub fn unmerge(&mut self) {
        set_merged(self.adapter.as_ref(), &self.base.weight, false, &mut self.merged, false, "LoraLinear::unmerge");
    }
}

/// The wrapped layer's fields and methods (`layer.linear1.weight`, `config`), as PEFT's
/// wrappers forward attribute reads to their `base_layer`.
impl<E: Float> std::ops::Deref for LoraLinear<E> {
    type Target = Linear<E>;

    fn deref(&self) -> &Linear<E> {
        &self.base
    }
}

impl<E: Float> Forward<E> for LoraLinear<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let y = self.base.forward(x);
        let Some(a) = self.adapter.as_ref().filter(|_| !self.merged) else { return y };
        let h = a.dropped(x, self.training);
        y.add(&h.linear(&a.lora_a, None).linear(&a.lora_b, None).mul_scalar(E::from_f64(a.scaling)))
    }
}

impl<E: Float> Module<E> for LoraLinear<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.base.visit(prefix, f);
        if let Some(a) = &self.adapter {
            visit_param(prefix, "lora_A.weight", &a.lora_a, f);
            visit_param(prefix, "lora_B.weight", &a.lora_b, f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
        let (weight, has) = (self.base.weight.clone(), self.adapter.is_some());
        answer_walk(self, &weight, has, Self::attach, Self::merge, Self::unmerge);
    }

    fn is_training(&self) -> bool {
        self.training
    }
}

impl<E: Float> fmt::Display for LoraLinear<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.base.config;
        write!(
            f,
            "LoraLinear(Linear(in_features={}, out_features={}, bias={})",
            c.in_features, c.out_features, c.bias
        )?;
        if let Some(a) = &self.adapter {
            a.describe(f, self.merged, true)?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

/// An [`Embedding`] with an optional LoRA adapter, like PEFT's `lora.Embedding`:
/// `y = W[ids] + (α / r) · Aᵀ[ids] Bᵀ`, with the table `W` frozen (no dropout on this path, as
/// in PEFT).
///
/// # Parameters
/// - `weight`: the base table, `[num_embeddings, embedding_dim]`, frozen with an adapter
/// - `lora_embedding_A`: `[r, num_embeddings]`, zeros (PEFT's init for embeddings)
/// - `lora_embedding_B`: `[embedding_dim, r]`, N(0, 1)
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::lora::{LoraConfig, LoraEmbedding};
/// use kiln_nn::{Embedding, Forward, Module};
/// use kiln_tensor::Tensor;
/// let mut emb = LoraEmbedding::new(Embedding::new(10, 4));
/// emb.attach(&LoraConfig { r: 2, ..Default::default() });
/// let keys: Vec<String> = emb.named_parameters().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["weight", "lora_embedding_A", "lora_embedding_B"]);
/// let y = emb.forward(&Var::constant(Tensor::from_vec(vec![1.0f32, 7.0], &[2])));
/// assert_eq!(y.shape().as_slice(), &[2, 4]);
/// ```
pub struct LoraEmbedding<E: Float = f32> {
    /// The wrapped layer.
    pub base: Embedding<E>,
    /// The adapter, once attached (`lora_a` is `lora_embedding_A`, `lora_b` is
    /// `lora_embedding_B`; `dropout` is not used).
    pub adapter: Option<LoraAdapter<E>>,
    merged: bool,
    training: bool,
}

impl<E: Float> LoraEmbedding<E> {
    /// Wraps `base`, without an adapter.
    pub fn new(base: Embedding<E>) -> Self {
        LoraEmbedding { base, adapter: None, merged: false, training: true }
    }

    /// Gives the layer a fresh adapter of rank `config.r` and freezes the table.
    ///
    /// **Panics** on an invalid config (see [`LoraConfig::check`]).
    pub fn attach(&mut self, config: &LoraConfig) {
        let (n, d) = (self.base.config.num_embeddings, self.base.config.embedding_dim);
        // PEFT: nn.init.zeros_(lora_embedding_A); nn.init.normal_(lora_embedding_B)
        let adapter = LoraAdapter::fresh(&[config.r, n], &[d, config.r], config, AdapterInit::NormalB);
        if self.merged {
            self.unmerge();
        }
        freeze(&self.base.weight, None);
        self.adapter = Some(adapter);
    }

    /// Whether the update is folded into the table.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// `W ← W + (α / r) (B A)ᵀ`. Nothing happens when already merged.
    ///
    /// **Panics** without an adapter.
    pub fn merge(&mut self) {
        set_merged(self.adapter.as_ref(), &self.base.weight, true, &mut self.merged, true, "LoraEmbedding::merge");
    }

    /// `W ← W - (α / r) (B A)ᵀ`. Nothing happens when not merged.
    ///
    /// **Panics** without an adapter.
    pub fn unmerge(&mut self) {
        set_merged(self.adapter.as_ref(), &self.base.weight, true, &mut self.merged, false, "LoraEmbedding::unmerge");
    }
}

impl<E: Float> Forward<E> for LoraEmbedding<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let y = self.base.forward(x);
        let Some(a) = self.adapter.as_ref().filter(|_| !self.merged) else { return y };
        // the ids again, as Embedding reads them (it checked them above)
        let ids: Vec<usize> =
            x.with_value(|v| v.to_vec().into_iter().map(|f| <E as Float>::to_f64(f) as usize).collect());
        let ids = Indices::new(ids, &x.shape());
        let after_a = Var::embedding(&a.lora_a.t().contiguous(), &ids, self.base.config.padding_idx);
        y.add(&after_a.linear(&a.lora_b, None).mul_scalar(E::from_f64(a.scaling)))
    }
}

impl<E: Float> Module<E> for LoraEmbedding<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.base.visit(prefix, f);
        if let Some(a) = &self.adapter {
            visit_param(prefix, "lora_embedding_A", &a.lora_a, f);
            visit_param(prefix, "lora_embedding_B", &a.lora_b, f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
        let (weight, has) = (self.base.weight.clone(), self.adapter.is_some());
        answer_walk(self, &weight, has, Self::attach, Self::merge, Self::unmerge);
    }

    fn is_training(&self) -> bool {
        self.training
    }
}

impl<E: Float> fmt::Display for LoraEmbedding<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.base.config;
        write!(f, "LoraEmbedding(Embedding({}, {})", c.num_embeddings, c.embedding_dim)?;
        if let Some(a) = &self.adapter {
            a.describe(f, self.merged, false)?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

// ------------------------------------------------------------------- reaching the layers

/// What the walk asks of the `LoraLinear`s it meets.
#[derive(Clone)]
enum Action {
    /// Only answer (to find out which targets are `LoraLinear`s).
    Probe,
    Attach(LoraConfig),
    Merge,
    Unmerge,
}

/// A walk over a model's `LoraLinear`s through [`Module::set_training`], the one call that
/// reaches every sub-module mutably (derived structs, containers, boxes). While `inject`,
/// `merge` or `unmerge` runs on this thread, each `LoraLinear` asks the walk, by the identity
/// of its base weight, what to do. Nothing is left behind after the call (a guard clears it,
/// also when a panic unwinds).
struct Walk<E: Float> {
    /// `(layer key prefix, base weight)` of the layers to act on.
    targets: Vec<(String, Var<E>)>,
    action: Action,
    /// The names of the layers that answered (empty names when `everyone`).
    reached: Vec<String>,
    /// Act on every `LoraLinear` met, not only the targets.
    everyone: bool,
}

impl<E: Float> Walk<E> {
    fn action(&mut self, weight: &Var<E>) -> Option<Action> {
        if self.everyone {
            self.reached.push(String::new());
            return Some(self.action.clone());
        }
        let (name, _) = self.targets.iter().find(|(_, w)| w.same(weight))?;
        self.reached.push(name.clone());
        Some(self.action.clone())
    }
}

thread_local! {
    static WALK: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// What the running walk (if any) asks of the layer whose base weight is `weight`.
fn walk_action<E: Float>(weight: &Var<E>) -> Option<Action> {
    WALK.with(|w| {
        let mut w = w.borrow_mut();
        let walk = w.as_mut()?.downcast_mut::<Walk<E>>()?;
        walk.action(weight)
    })
}

/// What the running walk asks of the layer whose weight is `weight` when that layer is one of
/// its targets (never in a walk over every layer): for a second weight a layer can adapt on
/// its own, such as an attention block's `out_proj`.
fn walk_target_action<E: Float>(weight: &Var<E>) -> Option<Action> {
    WALK.with(|w| {
        let mut w = w.borrow_mut();
        let walk = w.as_mut()?.downcast_mut::<Walk<E>>()?;
        if walk.everyone {
            return None;
        }
        walk.action(weight)
    })
}

/// Runs `walk` over `model`'s `LoraLinear`s and returns it.
fn run_walk<E: Float, M: Module<E> + ?Sized>(model: &mut M, walk: Walk<E>) -> Walk<E> {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            WALK.with(|w| w.borrow_mut().take());
        }
    }
    WALK.with(|w| {
        let mut w = w.borrow_mut();
        assert!(w.is_none(), "lora: inject, merge and unmerge cannot run inside one another");
        *w = Some(Box::new(walk));
    });
    let guard = Clear;
    let mode = model.is_training();
    model.set_training(mode);
    let walk = WALK.with(|w| w.borrow_mut().take()).expect("set above");
    drop(guard);
    *walk.downcast::<Walk<E>>().unwrap_or_else(|_| unreachable!("the walk put in is a Walk<E>"))
}

/// Replaces the target `Linear`s held by value in `Sequential`s and `ModuleList`s (at any
/// depth from `node`) by `LoraLinear`s wrapping them, without adapters.
fn wrap_linears<E: Float>(node: &mut dyn Any, prefix: &str, config: &LoraConfig) {
    if let Some(seq) = node.downcast_mut::<Sequential<E>>() {
        let training = Module::<E>::is_training(seq);
        let layers = std::mem::take(seq).into_layers();
        *seq = layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| wrap_boxed(layer, &format!("{prefix}{i}"), config))
            .collect();
        Module::<E>::set_training(seq, training);
    } else if let Some(list) = node.downcast_mut::<ModuleList<E>>() {
        for (i, layer) in list.iter_mut().enumerate() {
            let name = format!("{prefix}{i}");
            let placeholder: Box<dyn Layer<E>> = Box::new(Sequential::<E>::new_generic());
            let taken = std::mem::replace(layer, placeholder);
            *layer = wrap_boxed(taken, &name, config);
        }
    } else if let Some(layer) = node.downcast_mut::<Box<dyn Layer<E>>>() {
        wrap_linears::<E>((**layer).as_any_mut(), prefix, config);
    }
}

fn wrap_boxed<E: Float>(mut layer: Box<dyn Layer<E>>, name: &str, config: &LoraConfig) -> Box<dyn Layer<E>> {
    if config.matches(name) && layer.is::<Linear<E>>() {
        let training = layer.is_training();
        let linear = layer.downcast::<Linear<E>>().unwrap_or_else(|_| unreachable!("checked by `is`"));
        let mut wrapped = LoraLinear::new(*linear);
        wrapped.training = training;
        return Box::new(wrapped);
    }
    if config.matches(name) && layer.is::<Embedding<E>>() {
        let embedding = layer.downcast::<Embedding<E>>().unwrap_or_else(|_| unreachable!("checked by `is`"));
        return Box::new(LoraEmbedding::new(*embedding));
    }
    if config.matches(name) && layer.downcast_ref::<crate::Conv2d<E>>().is_some_and(|c| c.config.groups == 1) {
        let conv = layer.downcast::<crate::Conv2d<E>>().unwrap_or_else(|_| unreachable!("checked by `downcast_ref`"));
        return Box::new(LoraConv2d::new(*conv));
    }
    wrap_linears::<E>((*layer).as_any_mut(), &format!("{name}."), config);
    layer
}

/// Adapts the layers of `model` that `config.target_modules` names (see the [module
/// docs](self) for which layers it reaches), freezes every other parameter, and returns the
/// names of the adapted layers, in model order. A layer that has an adapter already gets a
/// fresh one. The mode of the model is kept (the walk calls `set_training` with the model's
/// own mode, so a sub-module left in another mode than the model takes the model's).
///
/// # Errors
/// [`NnError::Config`] when the config is invalid, when no layer matches a target, or when a
/// matching layer cannot be adapted (it is not a `Linear` in a `Sequential` nor a
/// `LoraLinear`), naming it; the model is unchanged then, except that plain `Linear`s of
/// `Sequential`s may have been wrapped (which changes nothing they compute).
pub fn inject<E: Float, M: Module<E> + 'static>(model: &mut M, config: &LoraConfig) -> Result<Vec<String>, NnError> {
    config.check()?;
    wrap_linears::<E>(&mut *model, "", config);
    // candidate layers: key prefixes owning a `weight`, in model order
    let targets: Vec<(String, Var<E>)> = model
        .named_parameters()
        .into_iter()
        .filter_map(|(k, v)| {
            // a layer owns a `weight`, an attention block an `in_proj_weight`
            let name = match k.as_str() {
                "weight" | "in_proj_weight" => Some(""),
                _ => k.strip_suffix(".weight").or_else(|| k.strip_suffix(".in_proj_weight")),
            }?;
            config.matches(name).then(|| (name.to_string(), v))
        })
        .collect();
    if targets.is_empty() {
        return Err(NnError::Config(format!(
            "lora::inject: no layer matches target_modules {:?}",
            config.target_modules
        )));
    }
    // what answers is a LoraLinear: find out first, so that an error changes nothing
    let probe =
        run_walk(model, Walk { targets: targets.clone(), action: Action::Probe, reached: vec![], everyone: false });
    let unreachable: Vec<&str> =
        targets.iter().map(|(n, _)| n.as_str()).filter(|n| !probe.reached.iter().any(|r| r == n)).collect();
    if !unreachable.is_empty() {
        return Err(NnError::Config(format!(
            "lora::inject: cannot adapt {unreachable:?}: only a Linear, an Embedding or a Conv2d (groups 1) in a \
             Sequential or ModuleList, a field declared as LoraLinear, LoraEmbedding, LoraConv2d or \
             LoraMultiheadAttention (or its out_proj), or a Transformer layer's self_attn, multihead_attn, \
             out_proj, linear1 or linear2, can take an adapter"
        )));
    }
    model.requires_grad_(false);
    let walk =
        run_walk(model, Walk { targets, action: Action::Attach(config.clone()), reached: vec![], everyone: false });
    // adapters of layers not targeted this time keep training, as PEFT's trainable adapters do
    for (k, p) in model.named_parameters() {
        if is_adapter_key(&k) {
            p.set_requires_grad(true);
        }
    }
    let mut names = walk.reached;
    names.sort_by_key(|n| model_position(model, n));
    Ok(names)
}

fn model_position<E: Float, M: Module<E>>(model: &M, name: &str) -> usize {
    let key = if name.is_empty() { "weight".to_string() } else { format!("{name}.weight") };
    let attention = if name.is_empty() { "in_proj_weight".to_string() } else { format!("{name}.in_proj_weight") };
    model.named_parameters().iter().position(|(k, _)| *k == key || *k == attention).unwrap_or(usize::MAX)
}

/// Merges every adapter of `model` into its base weight ([`LoraLinear::merge`]); returns how
/// many `LoraLinear`s the walk met (with or without an adapter).
pub fn merge<E: Float, M: Module<E> + ?Sized>(model: &mut M) -> usize {
    run_walk(model, Walk { targets: vec![], action: Action::Merge, reached: vec![], everyone: true }).reached.len()
}

/// Takes every merged adapter of `model` out of its base weight ([`LoraLinear::unmerge`]);
/// returns how many `LoraLinear`s the walk met.
pub fn unmerge<E: Float, M: Module<E> + ?Sized>(model: &mut M) -> usize {
    run_walk(model, Walk { targets: vec![], action: Action::Unmerge, reached: vec![], everyone: true }).reached.len()
}

/// Whether `key` names an adapter tensor (`…lora_A.weight`, `…lora_B.weight`,
/// `…lora_embedding_A`, `…lora_embedding_B`).
fn is_adapter_key(key: &str) -> bool {
    key.split('.').any(|s| matches!(s, "lora_A" | "lora_B" | "lora_embedding_A" | "lora_embedding_B"))
}

/// The adapter tensors of `model`, by PEFT's keys.
pub fn adapter_state_dict<E: Float>(model: &dyn Module<E>) -> StateDict<E> {
    model.named_parameters().into_iter().filter(|(k, _)| is_adapter_key(k)).map(|(k, v)| (k, v.value())).collect()
}

/// Saves the adapter weights of `model` alone to a safetensors file, atomically, under PEFT's
/// keys (`q.lora_A.weight`, `q.lora_B.weight`; PEFT's own files add [`PEFT_PREFIX`]).
///
/// # Errors
/// [`NnError::Config`] when the model has no adapter; [`NnError::Io`] when the file cannot be
/// written.
pub fn save_adapter<E: Float>(model: &dyn Module<E>, path: impl AsRef<Path>) -> Result<(), NnError> {
    let sd = adapter_state_dict(model);
    if sd.is_empty() {
        return Err(NnError::Config("lora::save_adapter: the model has no LoRA adapter".into()));
    }
    let mut metadata = Metadata::new();
    metadata.insert("format".into(), "pt".into());
    save_state_dict(&sd, path, &metadata)
}

/// Loads adapter weights saved by [`save_adapter`] (or by PEFT, whose keys start with
/// [`PEFT_PREFIX`]) into the adapters of `model`, which must have the same adapted layers and
/// ranks (run [`inject`] with the same config first). Every adapter tensor of the model must be
/// in the file and every tensor of the file must be an adapter tensor of the model.
///
/// # Errors
/// The file's errors ([`NnError::Io`], [`NnError::BadHeader`], ...); [`NnError::StateDict`]
/// listing missing, unexpected and mis-shaped keys (nothing is loaded then).
pub fn load_adapter<E: Float>(model: &dyn Module<E>, path: impl AsRef<Path>) -> Result<(), NnError> {
    let file: StateDict<E> = load_state_dict_file(path)?;
    let file: StateDict<E> =
        file.into_iter().map(|(k, v)| (k.strip_prefix(PEFT_PREFIX).map_or(k.clone(), str::to_string), v)).collect();
    let ours: BTreeMap<String, Var<E>> =
        model.named_parameters().into_iter().filter(|(k, _)| is_adapter_key(k)).collect();
    let missing: Vec<String> = ours.keys().filter(|k| !file.contains_key(*k)).cloned().collect();
    let unexpected: Vec<String> = file.keys().filter(|k| !ours.contains_key(*k)).cloned().collect();
    let mismatched: Vec<String> = ours
        .iter()
        .filter_map(|(k, v)| {
            let t = file.get(k)?;
            let shape = v.shape();
            (t.shape() != shape.as_slice()).then(|| format!("{k}: model {:?}, file {:?}", shape.as_slice(), t.shape()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        return Err(NnError::StateDict { missing, unexpected, mismatched });
    }
    for (k, v) in &ours {
        v.set_value(file[k].contiguous());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sequential, ReLU};
    use kiln_autograd::gradcheck;

    fn linear64(i: usize, o: usize) -> Linear<f64> {
        crate::LinearConfig::new(i, o).build().unwrap()
    }

    /// An adapter with a non-zero B, so that the update shows.
    fn adapted(seed: u64, r: usize, alpha: f64) -> LoraLinear<f64> {
        init::manual_seed(seed);
        let mut l = LoraLinear::new(linear64(5, 3));
        l.attach(&LoraConfig { r, alpha, ..Default::default() });
        let b = &l.adapter.as_ref().unwrap().lora_b;
        let mut rng = Rng::new(seed + 1);
        b.set_value(Tensor::uniform(&b.shape(), -0.5, 0.5, &mut rng));
        l
    }

    #[test]
    fn init_shapes_and_bounds_follow_peft() {
        init::manual_seed(0);
        let mut l = LoraLinear::new(linear64(100, 7));
        l.attach(&LoraConfig { r: 4, alpha: 16.0, ..Default::default() });
        let a = l.adapter.as_ref().unwrap();
        assert_eq!((a.lora_a.shape().as_slice(), a.lora_b.shape().as_slice()), (&[4, 100][..], &[7, 4][..]));
        assert_eq!(a.scaling, 4.0);
        let bound = 1.0 / 10.0; // 1 / sqrt(in_features)
        let av = a.lora_a.value().to_vec();
        assert!(av.iter().all(|v| v.abs() <= bound) && av.iter().any(|v| v.abs() > 0.8 * bound));
        assert!(a.lora_b.value().to_vec().iter().all(|&v| v == 0.0));
        assert!(!l.base.weight.requires_grad() && !l.base.bias.as_ref().unwrap().requires_grad());
        assert!(a.lora_a.requires_grad() && a.lora_b.requires_grad());
    }

    #[test]
    fn merged_forward_equals_unmerged_forward() {
        let mut l = adapted(3, 2, 6.0);
        let x = Var::constant(Tensor::uniform(&[4, 2, 5], -1.0, 1.0, &mut Rng::new(9)));
        let w0 = l.base.weight.value();
        let unmerged = l.forward(&x).value();
        // the update is really there
        assert!(unmerged.sub(&l.base.forward(&x).value()).abs().max_all() > 1e-3);
        l.merge();
        assert!(l.is_merged());
        let merged = l.forward(&x).value();
        assert!(merged.sub(&unmerged).abs().max_all() < 1e-13, "{merged:?} vs {unmerged:?}");
        l.merge(); // a second merge does nothing
        assert!(l.forward(&x).value().sub(&unmerged).abs().max_all() < 1e-13);
        l.unmerge();
        assert!(l.base.weight.value().sub(&w0).abs().max_all() < 1e-15);
        assert!(l.forward(&x).value().sub(&unmerged).abs().max_all() < 1e-15);
    }

    #[test]
    fn gradients_reach_a_and_b_only_and_pass_gradcheck() {
        let l = adapted(4, 3, 3.0);
        let x = Var::constant(Tensor::uniform(&[6, 5], -1.0, 1.0, &mut Rng::new(2)));
        l.forward(&x).powf(2.0).sum_all().backward();
        let a = l.adapter.as_ref().unwrap();
        assert!(a.lora_a.grad().is_some() && a.lora_b.grad().is_some());
        assert!(l.base.weight.grad().is_none() && l.base.bias.as_ref().unwrap().grad().is_none());
        // gradcheck over x, A and B through the layer's own forward
        let inputs = [x.value(), a.lora_a.value(), a.lora_b.value()];
        let report = gradcheck(
            |v| {
                let layer = LoraLinear {
                    base: Linear {
                        config: l.base.config.clone(),
                        weight: l.base.weight.clone(),
                        bias: l.base.bias.clone(),
                    },
                    adapter: Some(LoraAdapter {
                        lora_a: v[1].clone(),
                        lora_b: v[2].clone(),
                        scaling: a.scaling,
                        dropout: 0.0,
                        rng: Mutex::new(Rng::new(0)),
                    }),
                    merged: false,
                    training: true,
                };
                layer.forward(&v[0]).tanh()
            },
            &inputs,
            1e-6,
            1e-8,
            1e-6,
        );
        assert!(report.is_ok(), "{report:?}");
    }

    #[test]
    fn dropout_applies_to_the_low_rank_path_only_while_training() {
        init::manual_seed(1);
        let mut l = LoraLinear::new(linear64(50, 4));
        l.attach(&LoraConfig { r: 2, alpha: 2.0, dropout: 0.5, ..Default::default() });
        let b = &l.adapter.as_ref().unwrap().lora_b;
        b.set_value(Tensor::ones(&b.shape()));
        let x = Var::constant(Tensor::ones(&[3, 50]));
        let (y1, y2) = (l.forward(&x).value(), l.forward(&x).value());
        assert_ne!(y1, y2, "dropout masks differ between calls");
        Module::<f64>::eval(&mut l);
        let e1 = l.forward(&x).value();
        assert_eq!(e1, l.forward(&x).value());
        l.merge();
        assert!(l.forward(&x).value().sub(&e1).abs().max_all() < 1e-12);
    }

    #[test]
    fn inject_wraps_sequential_linears_and_freezes_the_rest() {
        init::manual_seed(5);
        let inner: Sequential<f64> = sequential![linear64(4, 4), ReLU];
        let mut model: Sequential<f64> = sequential![linear64(3, 4), ReLU, inner, linear64(4, 2)];
        let x = Var::constant(Tensor::uniform(&[2, 3], -1.0, 1.0, &mut Rng::new(3)));
        let before = model.forward(&x).value();
        let cfg = LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["0".into(), "3".into()], ..Default::default() };
        let names = inject(&mut model, &cfg).unwrap();
        // "0" matches the first layer and the nested "2.0"
        assert_eq!(names, ["0", "2.0", "3"]);
        assert!(model[0].is::<LoraLinear<f64>>() && model[3].is::<LoraLinear<f64>>());
        assert_eq!(model.forward(&x).value(), before, "B = 0: the output is unchanged");
        let trainable: Vec<String> =
            model.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect();
        assert_eq!(
            trainable,
            [
                "0.lora_A.weight",
                "0.lora_B.weight",
                "2.0.lora_A.weight",
                "2.0.lora_B.weight",
                "3.lora_A.weight",
                "3.lora_B.weight"
            ]
        );
        assert_eq!(merge(&mut model), 3);
        assert_eq!(unmerge(&mut model), 3);
        let err = inject(&mut model, &LoraConfig { target_modules: vec!["nothing".into()], ..Default::default() });
        assert!(matches!(err, Err(NnError::Config(m)) if m.contains("no layer matches")));
    }

    /// A struct of one's own: fields declared as LoraLinear are reached through set_training.
    #[derive(crate::Module)]
    #[module(elem = "f64")]
    struct Attention {
        q: LoraLinear<f64>,
        k: Linear<f64>,
        v: LoraLinear<f64>,
    }

    #[derive(crate::Module)]
    #[module(elem = "f64")]
    struct Net {
        attn: Attention,
        head: Sequential<f64>,
    }

    fn net() -> Net {
        init::manual_seed(8);
        Net {
            attn: Attention {
                q: LoraLinear::new(linear64(4, 4)),
                k: linear64(4, 4),
                v: LoraLinear::new(linear64(4, 4)),
            },
            head: sequential![linear64(4, 2)],
        }
    }

    #[test]
    fn inject_reaches_lora_fields_of_derived_structs() {
        let mut m = net();
        let names =
            inject(&mut m, &LoraConfig { r: 2, target_modules: vec!["q".into(), "v".into()], ..Default::default() })
                .unwrap();
        assert_eq!(names, ["attn.q", "attn.v"]);
        assert!(m.attn.q.adapter.is_some() && m.attn.v.adapter.is_some());
        assert_eq!(m.num_trainable_parameters(), 2 * (2 * 4 + 4 * 2));
        // a plain Linear field cannot take an adapter: said, and nothing changes
        let mut m = net();
        let err = inject(&mut m, &LoraConfig { target_modules: vec!["k".into(), "q".into()], ..Default::default() })
            .unwrap_err();
        assert!(err.to_string().contains("cannot adapt [\"attn.k\"]"), "{err}");
        assert!(m.attn.q.adapter.is_none());
        assert!(m.parameters().iter().all(|p| p.requires_grad()));
    }

    #[test]
    fn embedding_adapter_merges_and_trains_a_and_b_only() {
        init::manual_seed(2);
        let table = crate::EmbeddingConfig::new(7, 3).build::<f64>().unwrap();
        let mut model: Sequential<f64> = sequential![table, linear64(3, 2)];
        let names = inject(
            &mut model,
            &LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["0".into()], ..Default::default() },
        )
        .unwrap();
        assert_eq!(names, ["0"]);
        let emb = model[0].downcast_ref::<LoraEmbedding<f64>>().expect("wrapped");
        let a = emb.adapter.as_ref().unwrap();
        assert!(a.lora_a.value().to_vec().iter().all(|&v| v == 0.0));
        a.lora_a.set_value(Tensor::uniform(&a.lora_a.shape(), -1.0, 1.0, &mut Rng::new(1)));
        let x = Var::constant(Tensor::from_vec(vec![0.0, 3.0, 6.0, 3.0], &[2, 2]));
        let unmerged = model.forward(&x).value();
        model.forward(&x).sum_all().backward();
        let grads: Vec<String> =
            model.named_parameters().into_iter().filter(|(_, p)| p.grad().is_some()).map(|(k, _)| k).collect();
        assert_eq!(grads, ["0.lora_embedding_A", "0.lora_embedding_B"]);
        assert_eq!(merge(&mut model), 1);
        assert!(model.forward(&x).value().sub(&unmerged).abs().max_all() < 1e-13);
        unmerge(&mut model);
        assert!(model.forward(&x).value().sub(&unmerged).abs().max_all() < 1e-13);
        let keys: Vec<String> = adapter_state_dict(&model).into_keys().collect();
        assert_eq!(keys, ["0.lora_embedding_A", "0.lora_embedding_B"]);
    }

    #[test]
    fn adapter_round_trips_through_safetensors_with_peft_keys() {
        let dir = std::env::temp_dir().join(format!("kiln-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("adapter_model.safetensors");
        let cfg = LoraConfig { r: 2, target_modules: vec!["q".into(), "v".into()], ..Default::default() };
        let mut a = net();
        inject(&mut a, &cfg).unwrap();
        for (_, p) in a.named_parameters().into_iter().filter(|(k, _)| k.contains("lora_B")) {
            p.set_value(Tensor::uniform(&p.shape(), -1.0, 1.0, &mut Rng::new(4)));
        }
        save_adapter(&a, &path).unwrap();
        let keys: Vec<String> = load_state_dict_file::<f64>(&path).unwrap().into_keys().collect();
        assert_eq!(
            keys,
            ["attn.q.lora_A.weight", "attn.q.lora_B.weight", "attn.v.lora_A.weight", "attn.v.lora_B.weight"]
        );

        let mut b = net(); // same base weights (same seed), fresh adapters
        inject(&mut b, &cfg).unwrap();
        assert_ne!(adapter_state_dict(&b), adapter_state_dict(&a));
        load_adapter(&b, &path).unwrap();
        assert_eq!(adapter_state_dict(&b), adapter_state_dict(&a));
        let x = Var::constant(Tensor::ones(&[1, 4]));
        assert_eq!(b.attn.q.forward(&x).value(), a.attn.q.forward(&x).value());

        // PEFT's prefixed keys load too; a model without the adapters refuses the file
        let peft: StateDict<f64> =
            adapter_state_dict(&a).into_iter().map(|(k, v)| (format!("{PEFT_PREFIX}{k}"), v)).collect();
        let peft_path = dir.join("peft.safetensors");
        save_state_dict(&peft, &peft_path, &Metadata::new()).unwrap();
        load_adapter(&b, &peft_path).unwrap();
        let plain = net();
        let err = load_adapter(&plain, &path).unwrap_err();
        assert!(matches!(err, NnError::StateDict { ref unexpected, .. } if unexpected.len() == 4), "{err}");
        assert!(matches!(save_adapter(&plain, dir.join("x.safetensors")), Err(NnError::Config(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
