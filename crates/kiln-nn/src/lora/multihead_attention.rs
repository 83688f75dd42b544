//! [`LoraMultiheadAttention`]: a [`MultiheadAttention`] whose input and output projections
//! carry LoRA adapters, as PEFT's `lora.MultiheadAttention`.

use std::fmt;
use std::sync::Mutex;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::{walk_action, walk_target_action, Action, AdapterInit, LoraAdapter, LoraConfig};
use crate::init;
use crate::module::{visit_param, Module, TensorKind};
use crate::{AttnMask, MultiheadAttention};

/// A [`MultiheadAttention`] with optional LoRA adapters on its packed input projection and its
/// output projection, like PEFT's `lora.MultiheadAttention`:
/// `W_in ← W_in + (α / r) B_in A_in` (`[3E, E]`) and `W_out ← W_out + (α / r) B_out A_out`
/// (`[E, E]`), both frozen bases.
///
/// As in PEFT, the attention runs with the adapted weights (`W + (α / r) B A` as an expression,
/// so gradients reach `A` and `B`); the LoRA dropout is not used on this path. Without an
/// adapter it is the wrapped layer (same forward, same keys). Declare a field as
/// `LoraMultiheadAttention` instead of `MultiheadAttention` to let [`inject`](super::inject)
/// reach it, with a target naming the attention module (`self_attn`).
///
/// # Parameters
/// - the base layer's `in_proj_weight`, `in_proj_bias`, `out_proj.weight`, `out_proj.bias`,
///   frozen when adapters are attached
/// - `lora_A.weight`: `[r, E]`, `lora_B.weight`: `[3E, r]` (the input projection)
/// - `out_proj.lora_A.weight`: `[r, E]`, `out_proj.lora_B.weight`: `[E, r]`
///
/// `A`s are U(-1/√E, 1/√E) (`kaiming_uniform_` with a = √5), `B`s zeros.
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::lora::{LoraConfig, LoraMultiheadAttention};
/// use kiln_nn::{Module, MultiheadAttentionConfig};
/// use kiln_tensor::Tensor;
/// let base = MultiheadAttentionConfig::new(8, 2).build::<f64>().unwrap();
/// let x = Var::constant(Tensor::ones(&[3, 1, 8]));
/// let (before, _) = base.forward(&x, &x, &x, None, false, None, true);
/// let mut mha = LoraMultiheadAttention::new(base);
/// mha.attach(&LoraConfig { r: 2, ..Default::default() });
/// let (after, _) = mha.forward(&x, &x, &x, None, false, None, true);
/// assert_eq!(after.value(), before.value()); // B = 0
/// assert_eq!(mha.num_trainable_parameters(), (2 * 8 + 24 * 2) + (2 * 8 + 8 * 2));
/// ```
pub struct LoraMultiheadAttention<E: Float = f32> {
    /// The wrapped layer.
    pub base: MultiheadAttention<E>,
    /// The adapter of the packed input projection (`lora_a` `[r, E]`, `lora_b` `[3E, r]`).
    pub in_proj_lora: Option<LoraAdapter<E>>,
    /// The adapter of the output projection (`lora_a` `[r, E]`, `lora_b` `[E, r]`). The two
    /// fields end in `_lora` so that `self_attn.out_proj` still reads the base layer's
    /// projection through `Deref`.
    pub out_proj_lora: Option<LoraAdapter<E>>,
    /// A layer of the same configuration whose weights are replaced by the adapted expressions
    /// for each call (its own parameters are never used).
    runner: Option<Mutex<MultiheadAttention<E>>>,
    merged: bool,
}

impl<E: Float> LoraMultiheadAttention<E> {
    /// Wraps `base`, without adapters (so far the same layer).
    pub fn new(base: MultiheadAttention<E>) -> Self {
        LoraMultiheadAttention { base, in_proj_lora: None, out_proj_lora: None, runner: None, merged: false }
    }

    /// Gives both projections fresh adapters of rank `config.r` (replacing any others, after
    /// taking merged ones out of the weights) and freezes the base parameters (PEFT's
    /// `lora.MultiheadAttention`, what a target naming the attention module does).
    ///
    /// **Panics** on an invalid config (see [`LoraConfig::check`]).
    pub fn attach(&mut self, config: &LoraConfig) {
        self.prepare(config);
        let e = self.base.config.embed_dim;
        // PEFT: kaiming_uniform_(lora_A, a=sqrt(5)); lora_B zeros
        let kaiming = AdapterInit::KaimingA;
        let (r, e3) = (config.r, 3 * e);
        let (inp, out) = init::with_rng(|rng| {
            (
                LoraAdapter::new(&[r, e], &[e3, r], config, kaiming, rng),
                LoraAdapter::new(&[r, e], &[e, r], config, kaiming, rng),
            )
        });
        for (_, p) in self.base.named_parameters() {
            p.set_requires_grad(false);
        }
        self.in_proj_lora = Some(inp);
        self.out_proj_lora = Some(out);
    }

    /// Gives the output projection alone a fresh adapter of rank `config.r` (what a target
    /// naming `out_proj` does: PEFT's `lora.Linear` on the attention's `out_proj`) and freezes
    /// its weight and bias. An adapter of the input projection is kept.
    ///
    /// **Panics** on an invalid config (see [`LoraConfig::check`]).
    pub fn attach_out_proj(&mut self, config: &LoraConfig) {
        self.prepare(config);
        let e = self.base.config.embed_dim;
        let out = LoraAdapter::fresh(&[config.r, e], &[e, config.r], config, AdapterInit::KaimingA);
        for (_, p) in self.base.out_proj.named_parameters() {
            p.set_requires_grad(false);
        }
        self.out_proj_lora = Some(out);
    }

    /// Checks `config`, takes merged updates out of the weights and makes the runner.
    fn prepare(&mut self, config: &LoraConfig) {
        if let Err(e) = config.check() {
            panic!("{e}");
        }
        if self.merged {
            self.unmerge();
        }
        if self.runner.is_none() {
            let runner = self.base.config.build().unwrap_or_else(|err| panic!("{err}"));
            self.runner = Some(Mutex::new(runner));
        }
    }

    /// Whether an adapter is attached and not folded into the weights (so that the forward
    /// pass runs the low-rank paths; an exporter that reads the base weights alone must
    /// [`merge`](Self::merge) first).
    pub fn has_unmerged_adapter(&self) -> bool {
        (self.in_proj_lora.is_some() || self.out_proj_lora.is_some()) && !self.merged
    }

    /// Whether the updates are folded into the base weights.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// The attached adapters with the weight each one updates.
    fn adapted_weights(&self) -> Vec<(&Var<E>, &LoraAdapter<E>)> {
        let pairs =
            [(&self.base.in_proj_weight, &self.in_proj_lora), (&self.base.out_proj.weight, &self.out_proj_lora)];
        let present: Vec<_> = pairs.into_iter().filter_map(|(w, a)| Some((w, a.as_ref()?))).collect();
        assert!(!present.is_empty(), "LoraMultiheadAttention: the layer has no adapter");
        present
    }

    /// Folds the updates into the base weights. Nothing happens when already merged.
    ///
    /// **Panics** without adapters.
    pub fn merge(&mut self) {
        let pairs = self.adapted_weights();
        if !self.merged {
            for (w, a) in pairs {
                a.merge_into(w, false);
            }
            self.merged = true;
        }
    }

    /// Takes the updates out of the base weights again. Nothing happens when not merged.
    ///
    /// **Panics** without adapters.
    pub fn unmerge(&mut self) {
        let pairs = self.adapted_weights();
        if self.merged {
            for (w, a) in pairs {
                a.unmerge_from(w, false);
            }
            self.merged = false;
        }
    }

    /// The attention, with [`MultiheadAttention::forward`]'s arguments and results, through the
    /// adapted weights (or the base layer when merged or without adapters).
    #[allow(clippy::too_many_arguments)]
    #[must_use]
    pub fn forward(
        &self,
        query: &Var<E>,
        key: &Var<E>,
        value: &Var<E>,
        key_padding_mask: Option<&AttnMask<E>>,
        need_weights: bool,
        attn_mask: Option<&AttnMask<E>>,
        average_attn_weights: bool,
    ) -> (Var<E>, Option<Var<E>>) {
        let Some(runner) = self.runner.as_ref().filter(|_| self.has_unmerged_adapter()) else {
            return self.base.forward(
                query,
                key,
                value,
                key_padding_mask,
                need_weights,
                attn_mask,
                average_attn_weights,
            );
        };
        let adapted = |w: &Var<E>, a: &Option<LoraAdapter<E>>| a.as_ref().map_or_else(|| w.clone(), |a| a.adapt(w));
        let mut r = runner.lock().unwrap_or_else(|e| e.into_inner());
        r.in_proj_weight = adapted(&self.base.in_proj_weight, &self.in_proj_lora);
        r.in_proj_bias.clone_from(&self.base.in_proj_bias);
        r.out_proj.weight = adapted(&self.base.out_proj.weight, &self.out_proj_lora);
        r.out_proj.bias.clone_from(&self.base.out_proj.bias);
        r.set_training(self.base.is_training());
        r.forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights)
    }
}

/// The wrapped layer's fields and methods (`self_attn.in_proj_weight`, `config`), as PEFT's
/// wrappers forward attribute reads to their `base_layer`.
impl<E: Float> std::ops::Deref for LoraMultiheadAttention<E> {
    type Target = MultiheadAttention<E>;

    fn deref(&self) -> &MultiheadAttention<E> {
        &self.base
    }
}

impl<E: Float> Module<E> for LoraMultiheadAttention<E> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {
        self.base.visit(prefix, f);
        if let Some(a) = &self.in_proj_lora {
            visit_param(prefix, "lora_A.weight", &a.lora_a, f);
            visit_param(prefix, "lora_B.weight", &a.lora_b, f);
        }
        if let Some(a) = &self.out_proj_lora {
            visit_param(prefix, "out_proj.lora_A.weight", &a.lora_a, f);
            visit_param(prefix, "out_proj.lora_B.weight", &a.lora_b, f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.base.set_training(training);
        let has = self.in_proj_lora.is_some() || self.out_proj_lora.is_some();
        match walk_action(&self.base.in_proj_weight) {
            Some(Action::Attach(config)) => self.attach(&config),
            Some(Action::Merge) if has => self.merge(),
            Some(Action::Unmerge) if has => self.unmerge(),
            _ => {}
        }
        // a target naming `out_proj` itself (only inject's walks name one)
        if let Some(Action::Attach(config)) = walk_target_action(&self.base.out_proj.weight) {
            self.attach_out_proj(&config);
        }
    }

    fn is_training(&self) -> bool {
        self.base.is_training()
    }
}

impl<E: Float> fmt::Display for LoraMultiheadAttention<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.base.config;
        write!(f, "LoraMultiheadAttention(embed_dim={}, num_heads={}", c.embed_dim, c.num_heads)?;
        if let Some(a) = self.in_proj_lora.as_ref().or(self.out_proj_lora.as_ref()) {
            write!(f, ", r={}, scaling={}, merged={}", a.lora_a.shape()[0], a.scaling, self.merged)?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::{self, inject, load_adapter, save_adapter};
    use crate::{Forward, Linear, MultiheadAttentionConfig};
    use kiln_tensor::{Rng, Tensor};

    /// A model of one's own holding an attention block to adapt.
    #[derive(crate::Module)]
    #[module(elem = "f64")]
    struct Block {
        self_attn: LoraMultiheadAttention<f64>,
        head: Linear<f64>,
    }

    impl Block {
        fn new(seed: u64) -> Self {
            init::manual_seed(seed);
            let self_attn = LoraMultiheadAttention::new(MultiheadAttentionConfig::new(6, 2).build().unwrap());
            Block { self_attn, head: crate::LinearConfig::new(6, 2).build().unwrap() }
        }

        fn forward(&self, x: &Var<f64>) -> Var<f64> {
            self.head.forward(&self.self_attn.forward(x, x, x, None, false, None, true).0)
        }
    }

    fn randomise_b(m: &dyn Module<f64>, seed: u64) {
        for (k, p) in m.named_parameters() {
            if k.ends_with("lora_B.weight") {
                p.set_value(Tensor::uniform(&p.shape(), -0.4, 0.4, &mut Rng::new(seed)));
            }
        }
    }

    #[test]
    fn inject_merge_and_adapter_files() {
        let mut m = Block::new(1);
        let x = Var::constant(Tensor::uniform(&[4, 2, 6], -1.0, 1.0, &mut Rng::new(3)));
        let before = m.forward(&x).value();
        let cfg = LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["self_attn".into()], ..Default::default() };
        assert_eq!(inject(&mut m, &cfg).unwrap(), ["self_attn"]);
        assert_eq!(m.forward(&x).value(), before);
        let trainable: Vec<String> =
            m.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect();
        assert_eq!(
            trainable,
            [
                "self_attn.lora_A.weight",
                "self_attn.lora_B.weight",
                "self_attn.out_proj.lora_A.weight",
                "self_attn.out_proj.lora_B.weight"
            ]
        );
        // gradients reach the adapters only
        randomise_b(&m, 5);
        m.forward(&x).square().sum_all().backward();
        for (k, p) in m.named_parameters() {
            assert_eq!(p.grad().is_some(), k.contains("lora_"), "{k}");
        }
        // merged == unmerged
        let adapted = m.forward(&x).value();
        assert!(adapted.sub(&before).abs().max_all() > 1e-3);
        assert_eq!(lora::merge(&mut m), 1);
        assert!(m.self_attn.is_merged());
        assert!(m.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        assert_eq!(lora::unmerge(&mut m), 1);
        assert!(m.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        // the adapter alone round-trips into a fresh injection of the same base
        let dir = std::env::temp_dir().join(format!("kiln-lora-mha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("adapter.safetensors");
        save_adapter(&m, &path).unwrap();
        let saved: crate::StateDict<f64> = crate::serialize::load_state_dict_file(&path).unwrap();
        assert_eq!(saved.keys().cloned().collect::<Vec<_>>(), trainable);
        let mut other = Block::new(1);
        inject(&mut other, &cfg).unwrap();
        load_adapter(&other, &path).unwrap();
        assert!(other.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn out_proj_alone_takes_an_adapter_and_merges() {
        let mut m = Block::new(2);
        let x = Var::constant(Tensor::uniform(&[3, 2, 6], -1.0, 1.0, &mut Rng::new(4)));
        let cfg = LoraConfig { r: 3, alpha: 6.0, target_modules: vec!["out_proj".into()], ..Default::default() };
        assert_eq!(inject(&mut m, &cfg).unwrap(), ["self_attn.out_proj"]);
        assert!(m.self_attn.in_proj_lora.is_none() && m.self_attn.out_proj_lora.is_some());
        let trainable: Vec<String> =
            m.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect();
        assert_eq!(trainable, ["self_attn.out_proj.lora_A.weight", "self_attn.out_proj.lora_B.weight"]);
        randomise_b(&m, 7);
        let adapted = m.forward(&x).value();
        m.forward(&x).sum_all().backward();
        for (k, p) in m.named_parameters() {
            assert_eq!(p.grad().is_some(), k.contains("lora_"), "{k}");
        }
        assert_eq!(lora::merge(&mut m), 1);
        assert!(!m.self_attn.has_unmerged_adapter());
        assert!(m.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        lora::unmerge(&mut m);
        assert!(m.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        assert!(m.self_attn.to_string().contains("r=3, scaling=2"), "{}", m.self_attn);
    }
}
