//! LoRA inside the Transformer layers: `inject` reaches their attention blocks and
//! feed-forward layers by PEFT's target names (the layers hold them as
//! [`LoraMultiheadAttention`](super::LoraMultiheadAttention) and [`LoraLinear`](super::LoraLinear)).

use kiln_autograd::Var;
use kiln_tensor::{Rng, Tensor};

use super::{adapter_state_dict, inject, load_adapter, merge, save_adapter, unmerge, LoraConfig};
use crate::init;
use crate::{
    Forward, Module, TransformerDecoderLayer, TransformerDecoderLayerConfig, TransformerEncoder,
    TransformerEncoderLayerConfig,
};

fn rand(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::uniform(shape, -1.0, 1.0, &mut Rng::new(seed))
}

/// Moves every parameter off its init (zero biases, unit norms), so nothing passes by symmetry.
fn perturb(m: &dyn Module<f64>, seed: u64) {
    let mut rng = Rng::new(seed);
    for p in m.parameters() {
        let noise = Tensor::uniform(&p.shape(), -0.1, 0.1, &mut rng);
        p.update_value(|v| *v = v.add(&noise));
    }
}

fn enc_cfg(d: usize, h: usize, ff: usize) -> TransformerEncoderLayerConfig {
    TransformerEncoderLayerConfig {
        dim_feedforward: ff,
        dropout: 0.0,
        batch_first: true,
        ..TransformerEncoderLayerConfig::new(d, h)
    }
}

fn encoder(seed: u64) -> TransformerEncoder<f64> {
    init::manual_seed(seed);
    let enc = TransformerEncoder::new(enc_cfg(8, 2, 16).build().unwrap(), 2, None);
    perturb(&enc, seed + 1);
    enc
}

/// Gives every `lora_B` random values, so that the updates show.
fn randomise_b(m: &dyn Module<f64>, seed: u64) {
    let mut rng = Rng::new(seed);
    for (k, p) in m.named_parameters() {
        if k.ends_with("lora_B.weight") {
            p.set_value(Tensor::uniform(&p.shape(), -0.3, 0.3, &mut rng));
        }
    }
}

fn trainable(m: &dyn Module<f64>) -> Vec<String> {
    m.named_parameters().into_iter().filter(|(_, p)| p.requires_grad()).map(|(k, _)| k).collect()
}

#[test]
fn inject_reaches_encoder_attention_and_feed_forward() {
    let mut enc = encoder(1);
    let x = Var::constant(rand(&[2, 5, 8], 3));
    let before = enc.forward(&x).value();
    let base_params = enc.num_parameters();
    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        target_modules: vec!["self_attn".into(), "linear1".into(), "linear2".into()],
        ..Default::default()
    };
    let names = inject(&mut enc, &cfg).unwrap();
    assert_eq!(
        names,
        [
            "layers.0.self_attn",
            "layers.0.linear1",
            "layers.0.linear2",
            "layers.1.self_attn",
            "layers.1.linear1",
            "layers.1.linear2"
        ]
    );
    // B = 0: the model computes what it did
    assert_eq!(enc.forward(&x).value(), before);
    // per layer: in_proj (2·8 + 24·2), out_proj (2·8 + 8·2), linear1 (2·8 + 16·2), linear2 (2·16 + 8·2)
    let per_layer = (16 + 48) + (16 + 16) + (16 + 32) + (32 + 16);
    assert_eq!(enc.num_trainable_parameters(), 2 * per_layer);
    assert_eq!(enc.num_parameters(), base_params + 2 * per_layer);
    let keys = trainable(&enc);
    assert_eq!(
        &keys[..8],
        [
            "layers.0.self_attn.lora_A.weight",
            "layers.0.self_attn.lora_B.weight",
            "layers.0.self_attn.out_proj.lora_A.weight",
            "layers.0.self_attn.out_proj.lora_B.weight",
            "layers.0.linear1.lora_A.weight",
            "layers.0.linear1.lora_B.weight",
            "layers.0.linear2.lora_A.weight",
            "layers.0.linear2.lora_B.weight"
        ]
    );
    assert_eq!(keys.len(), 16);

    // gradients reach the adapters only
    randomise_b(&enc, 5);
    let adapted = enc.forward(&x).value();
    assert!(adapted.sub(&before).abs().max_all() > 1e-3, "the updates show");
    enc.forward(&x).square().sum_all().backward();
    for (k, p) in enc.named_parameters() {
        assert_eq!(p.grad().is_some(), k.contains(".lora_"), "{k}");
    }

    // merged == unmerged, and unmerging restores the base weights
    let w0 = enc.layers[1].linear2.weight.value();
    assert_eq!(merge(&mut enc), 2 * 3, "three adapted blocks per layer");
    assert!(enc.layers[0].linear1.is_merged() && enc.layers[1].self_attn.is_merged());
    assert!(enc.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
    unmerge(&mut enc);
    assert!(enc.layers[1].linear2.weight.value().sub(&w0).abs().max_all() < 1e-14);
    assert!(enc.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);

    // the adapters alone round-trip, under PEFT's keys, into a fresh injection of the same base
    let dir = std::env::temp_dir().join(format!("kiln-lora-transformer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adapter_model.safetensors");
    save_adapter(&enc, &path).unwrap();
    let saved: Vec<String> = crate::serialize::load_state_dict_file::<f64>(&path).unwrap().into_keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(saved, sorted);
    let mut other = encoder(1);
    inject(&mut other, &cfg).unwrap();
    assert_ne!(adapter_state_dict(&other), adapter_state_dict(&enc));
    load_adapter(&other, &path).unwrap();
    assert!(other.forward(&x).value().sub(&adapted).abs().max_all() < 1e-12);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_proj_targets_both_attention_blocks_of_a_decoder_layer() {
    init::manual_seed(4);
    let mut layer: TransformerDecoderLayer<f64> = TransformerDecoderLayerConfig {
        dim_feedforward: 12,
        dropout: 0.0,
        batch_first: true,
        norm_first: true,
        ..TransformerDecoderLayerConfig::new(8, 2)
    }
    .build()
    .unwrap();
    perturb(&layer, 6);
    let (tgt, memory) = (Var::constant(rand(&[2, 3, 8], 1)), Var::constant(rand(&[2, 4, 8], 2)));
    let run = |l: &TransformerDecoderLayer<f64>| l.forward_with(&tgt, &memory, None, None, None, None).value();
    let cfg = LoraConfig {
        r: 4,
        alpha: 4.0,
        target_modules: vec!["out_proj".into(), "linear2".into()],
        ..Default::default()
    };
    let names = inject(&mut layer, &cfg).unwrap();
    assert_eq!(names, ["self_attn.out_proj", "multihead_attn.out_proj", "linear2"]);
    assert!(layer.self_attn.in_proj_lora.is_none() && layer.linear1.adapter.is_none());
    assert_eq!(
        trainable(&layer),
        [
            "self_attn.out_proj.lora_A.weight",
            "self_attn.out_proj.lora_B.weight",
            "multihead_attn.out_proj.lora_A.weight",
            "multihead_attn.out_proj.lora_B.weight",
            "linear2.lora_A.weight",
            "linear2.lora_B.weight"
        ]
    );
    randomise_b(&layer, 8);
    let adapted = run(&layer);
    assert_eq!(merge(&mut layer), 4, "the walk meets both attention blocks and both linears");
    assert!(run(&layer).sub(&adapted).abs().max_all() < 1e-12);
    unmerge(&mut layer);
    assert!(run(&layer).sub(&adapted).abs().max_all() < 1e-12);
}

#[test]
fn a_layer_without_adapters_keeps_pytorch_keys_and_fields() {
    let layer = enc_cfg(8, 2, 16).build::<f64>().unwrap();
    let keys: Vec<String> = layer.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys[..4],
        ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias"]
    );
    // the wrapped layers' fields read through
    assert_eq!(layer.linear1.config.out_features, 16);
    assert_eq!(layer.self_attn.config.num_heads, 2);
    assert!(!layer.self_attn.has_unmerged_adapter() && !layer.linear2.has_unmerged_adapter());
}
