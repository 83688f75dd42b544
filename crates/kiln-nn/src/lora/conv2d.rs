//! [`LoraConv2d`]: a [`Conv2d`] with a LoRA adapter, as PEFT's `lora.Conv2d`.

use std::fmt;

use kiln_autograd::Var;
use kiln_tensor::Float;

use super::{answer_walk, freeze, set_merged, AdapterInit, LoraAdapter, LoraConfig};
use crate::module::{visit_param, Forward, Module, TensorKind};
use crate::{Conv2d, Conv2dConfig};

/// A [`Conv2d`] with an optional LoRA adapter, like PEFT's `lora.Conv2d`:
/// `y = conv(x; W, b) + (α / r) · conv₁ₓ₁(conv(dropout(x); A); B)`, with `W` and `b` frozen.
///
/// `A` is a convolution from `in_channels` to `r` channels with the base layer's kernel size,
/// stride, padding and dilation (no bias), `B` a 1×1 convolution from `r` to `out_channels`
/// (no bias), so the update of the weight is `(α / r) · B A` over the flattened kernel, which is
/// what [`merge`](LoraConv2d::merge) folds in. Without an adapter it is the wrapped layer (same
/// forward, same keys). Base layers with `groups > 1` take no adapter (PEFT cannot merge them
/// either).
///
/// # Shapes
/// As [`Conv2d`].
///
/// # Parameters
/// - `weight`, `bias`: the base layer's, frozen when an adapter is attached
/// - `lora_A.weight`: `[r, in_channels, kH, kW]`, U(-1/√fan_in, 1/√fan_in) with
///   `fan_in = in_channels · kH · kW` (`kaiming_uniform_` with a = √5, as PEFT)
/// - `lora_B.weight`: `[out_channels, r, 1, 1]`, zeros
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::lora::{LoraConfig, LoraConv2d};
/// use kiln_nn::{Conv2d, Forward, Module};
/// use kiln_tensor::Tensor;
/// let base: Conv2d = Conv2d::new(3, 8, 3);
/// let x = Var::constant(Tensor::ones(&[1, 3, 6, 6]));
/// let before = base.forward(&x).value();
/// let mut layer = LoraConv2d::new(base);
/// layer.attach(&LoraConfig { r: 2, alpha: 4.0, ..Default::default() });
/// assert_eq!(layer.forward(&x).value(), before); // B = 0: the base layer's output
/// let keys: Vec<String> = layer.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect();
/// assert_eq!(keys, ["lora_A.weight", "lora_B.weight"]);
/// assert_eq!(layer.num_trainable_parameters(), 2 * 3 * 3 * 3 + 8 * 2);
/// ```
pub struct LoraConv2d<E: Float = f32> {
    /// The wrapped layer.
    pub base: Conv2d<E>,
    /// The adapter, once attached (`lora_a` `[r, in, kH, kW]`, `lora_b` `[out, r, 1, 1]`).
    pub adapter: Option<LoraAdapter<E>>,
    merged: bool,
    training: bool,
}

impl<E: Float> LoraConv2d<E> {
    /// Wraps `base`, without an adapter (so far the same layer), in training mode.
    pub fn new(base: Conv2d<E>) -> Self {
        LoraConv2d { base, adapter: None, merged: false, training: true }
    }

    /// Gives the layer a fresh adapter of rank `config.r` (replacing any other, after taking
    /// a merged one out of the weight) and freezes the base weight and bias.
    ///
    /// **Panics** on an invalid config (see [`LoraConfig::check`]) or a base layer with
    /// `groups > 1`.
    pub fn attach(&mut self, config: &LoraConfig) {
        let groups = self.base.config.groups;
        assert!(groups == 1, "LoraConv2d: a Conv2d with groups={groups} takes no LoRA adapter");
        let c = &self.base.config;
        let [kh, kw] = c.kernel_size;
        let (a_shape, b_shape) = ([config.r, c.in_channels, kh, kw], [c.out_channels, config.r, 1, 1]);
        let adapter = LoraAdapter::fresh(&a_shape, &b_shape, config, AdapterInit::KaimingA);
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

    /// Folds the update into the base weight, `W ← W + (α / r) B A`. Nothing happens when
    /// already merged.
    ///
    /// **Panics** without an adapter.
    pub fn merge(&mut self) {
        set_merged(self.adapter.as_ref(), &self.base.weight, false, &mut self.merged, true, "LoraConv2d::merge");
    }

    /// Takes the update out of the base weight again, `W ← W - (α / r) B A`. Nothing happens
    /// when not merged.
    ///
    /// **Panics** without an adapter.
    pub fn unmerge(&mut self) {
        set_merged(self.adapter.as_ref(), &self.base.weight, false, &mut self.merged, false, "LoraConv2d::unmerge");
    }
}

impl<E: Float> Forward<E> for LoraConv2d<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let y = self.base.forward(x);
        let Some(a) = self.adapter.as_ref().filter(|_| !self.merged) else { return y };
        let h = a.dropped(x, self.training);
        let c = &self.base.config;
        let r = a.lora_a.shape()[0];
        // A: the base layer's geometry into r channels; B: 1x1 into out_channels
        let conv_a = Conv2d {
            config: Conv2dConfig { out_channels: r, bias: false, ..c.clone() },
            weight: a.lora_a.clone(),
            bias: None,
        };
        let conv_b = Conv2d {
            config: Conv2dConfig { bias: false, ..Conv2dConfig::new(r, c.out_channels, 1) },
            weight: a.lora_b.clone(),
            bias: None,
        };
        y.add(&conv_b.forward(&conv_a.forward(&h)).mul_scalar(E::from_f64(a.scaling)))
    }
}

impl<E: Float> Module<E> for LoraConv2d<E> {
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

impl<E: Float> fmt::Display for LoraConv2d<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = self.base.to_string();
        // the base layer's description without its parameter count
        let base = base.rsplit_once(" [").map_or(base.as_str(), |(b, _)| b);
        write!(f, "LoraConv2d({base}")?;
        if let Some(a) = &self.adapter {
            a.describe(f, self.merged, true)?;
        }
        write!(f, ") [{} parameters]", self.num_parameters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init;
    use crate::lora::{self, inject, load_adapter, save_adapter};
    use crate::{sequential, Padding, ReLU, Sequential};
    use kiln_autograd::gradcheck;
    use kiln_tensor::Rng;
    use kiln_tensor::Tensor;
    use std::sync::Mutex;

    fn conv64(cfg: Conv2dConfig) -> Conv2d<f64> {
        cfg.build().unwrap()
    }

    /// An adapted layer with a non-zero B, so that the update shows.
    fn adapted(seed: u64, cfg: Conv2dConfig, r: usize) -> LoraConv2d<f64> {
        init::manual_seed(seed);
        let mut l = LoraConv2d::new(conv64(cfg));
        l.attach(&LoraConfig { r, alpha: 3.0, ..Default::default() });
        let b = &l.adapter.as_ref().unwrap().lora_b;
        b.set_value(Tensor::uniform(&b.shape(), -0.5, 0.5, &mut Rng::new(seed + 1)));
        l
    }

    #[test]
    fn peft_shapes_and_init() {
        init::manual_seed(0);
        let mut l = LoraConv2d::new(conv64(Conv2dConfig::new(4, 6, 3)));
        l.attach(&LoraConfig { r: 5, alpha: 10.0, ..Default::default() });
        let a = l.adapter.as_ref().unwrap();
        assert_eq!(a.lora_a.shape().as_slice(), &[5, 4, 3, 3]);
        assert_eq!(a.lora_b.shape().as_slice(), &[6, 5, 1, 1]);
        let bound = 1.0 / 6.0; // 1 / sqrt(4 * 3 * 3)
        let av = a.lora_a.value().to_vec();
        assert!(av.iter().all(|v| v.abs() <= bound) && av.iter().any(|v| v.abs() > 0.8 * bound));
        assert!(a.lora_b.value().to_vec().iter().all(|&v| v == 0.0));
        assert!(!l.base.weight.requires_grad());
        assert_eq!(
            l.to_string(),
            "LoraConv2d(Conv2d(4, 6, kernel_size=(3, 3), stride=(1, 1)), r=5, scaling=2, dropout=0, merged=false) [432 parameters]"
        );
    }

    #[test]
    fn merged_forward_equals_unmerged_forward() {
        for cfg in [
            Conv2dConfig {
                stride: [2, 1],
                padding: Padding::Explicit([1, 2]),
                dilation: [1, 2],
                ..Conv2dConfig::new(3, 4, 3)
            },
            Conv2dConfig { kernel_size: [2, 3], padding: Padding::Same, ..Conv2dConfig::new(2, 3, 1) },
        ] {
            let mut l = adapted(3, cfg, 2);
            let x = Var::constant(Tensor::uniform(&[2, l.base.config.in_channels, 7, 6], -1.0, 1.0, &mut Rng::new(9)));
            let w0 = l.base.weight.value();
            let unmerged = l.forward(&x).value();
            assert!(unmerged.sub(&l.base.forward(&x).value()).abs().max_all() > 1e-3);
            l.merge();
            let merged = l.forward(&x).value();
            assert!(merged.sub(&unmerged).abs().max_all() < 1e-12);
            l.unmerge();
            assert!(l.base.weight.value().sub(&w0).abs().max_all() < 1e-14);
            assert!(l.forward(&x).value().sub(&unmerged).abs().max_all() < 1e-14);
        }
    }

    #[test]
    fn gradients_reach_a_and_b_only_and_pass_gradcheck() {
        let l = adapted(4, Conv2dConfig { padding: Padding::Explicit([1, 0]), ..Conv2dConfig::new(2, 3, 2) }, 2);
        let x = Var::constant(Tensor::uniform(&[1, 2, 4, 3], -1.0, 1.0, &mut Rng::new(2)));
        l.forward(&x).square().sum_all().backward();
        let a = l.adapter.as_ref().unwrap();
        assert!(a.lora_a.grad().is_some() && a.lora_b.grad().is_some());
        assert!(l.base.weight.grad().is_none() && l.base.bias.as_ref().unwrap().grad().is_none());
        let report = gradcheck(
            |v| {
                let mut m = LoraConv2d::new(Conv2d {
                    config: l.base.config.clone(),
                    weight: l.base.weight.detach(),
                    bias: l.base.bias.as_ref().map(Var::detach),
                });
                m.adapter = Some(LoraAdapter {
                    lora_a: v[1].clone(),
                    lora_b: v[2].clone(),
                    scaling: 1.5,
                    dropout: 0.0,
                    rng: Mutex::new(Rng::new(0)),
                });
                m.forward(&v[0])
            },
            &[x.value(), a.lora_a.value(), a.lora_b.value()],
            1e-6,
            1e-7,
            1e-5,
        );
        assert!(report.is_ok(), "{}", report.unwrap_err());
    }

    #[test]
    fn inject_adapts_conv2d_in_a_sequential_and_saves_adapters_alone() {
        init::manual_seed(1);
        let mut model: Sequential<f64> = sequential![
            conv64(Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(2, 4, 3) }),
            ReLU,
            conv64(Conv2dConfig::new(4, 3, 1))
        ];
        let x = Var::constant(Tensor::uniform(&[2, 2, 5, 5], -1.0, 1.0, &mut Rng::new(4)));
        let before = model.forward(&x).value();
        let names = inject(
            &mut model,
            &LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["0".into(), "2".into()], ..Default::default() },
        )
        .unwrap();
        assert_eq!(names, ["0", "2"]);
        assert_eq!(model.forward(&x).value(), before);
        // only the adapters train: A [2, 2, 3, 3] + B [4, 2, 1, 1] and A [2, 4, 1, 1] + B [3, 2, 1, 1]
        assert_eq!(model.num_trainable_parameters(), 36 + 8 + 8 + 6);
        let trainable: Vec<String> =
            model.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect();
        assert_eq!(trainable, ["0.lora_A.weight", "0.lora_B.weight", "2.lora_A.weight", "2.lora_B.weight"]);
        // train B a little so the adapters matter, then merge == unmerged
        for (k, p) in model.named_parameters() {
            if k.ends_with("lora_B.weight") {
                p.set_value(Tensor::uniform(&p.shape(), -0.3, 0.3, &mut Rng::new(7)));
            }
        }
        let adapted = model.forward(&x).value();
        assert_eq!(lora::merge(&mut model), 2);
        assert!(model.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        assert_eq!(lora::unmerge(&mut model), 2);
        // the adapter file holds the four adapter tensors only, and loads into a fresh injection
        let dir = std::env::temp_dir().join(format!("kiln-lora-conv2d-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("adapter.safetensors");
        save_adapter(&model, &path).unwrap();
        let saved: crate::StateDict<f64> = crate::serialize::load_state_dict_file(&path).unwrap();
        assert_eq!(saved.keys().cloned().collect::<Vec<_>>(), trainable);
        let mut other: Sequential<f64> = sequential![
            conv64(Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(2, 4, 3) }),
            ReLU,
            conv64(Conv2dConfig::new(4, 3, 1))
        ];
        other
            .load_state_dict(&model.state_dict().into_iter().filter(|(k, _)| !k.contains("lora")).collect(), true)
            .unwrap();
        inject(
            &mut other,
            &LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["0".into(), "2".into()], ..Default::default() },
        )
        .unwrap();
        load_adapter(&other, &path).unwrap();
        assert!(other.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grouped_conv_is_refused_by_inject() {
        let mut model: Sequential<f64> = sequential![conv64(Conv2dConfig { groups: 2, ..Conv2dConfig::new(2, 2, 1) })];
        let e = inject(&mut model, &LoraConfig { target_modules: vec!["0".into()], ..Default::default() });
        assert!(e.err().unwrap().to_string().starts_with("lora::inject: cannot adapt [\"0\"]"));
    }
}
