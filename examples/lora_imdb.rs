//! LoRA against full fine-tuning, on IMDB: a small causal Transformer is pre-trained as a
//! language model on the text of the 25,000 training reviews (no labels), then fine-tuned to
//! classify sentiment twice from the same pre-trained weights: once with every weight trained
//! (full fine-tuning), once with the pre-trained weights frozen and rank-8 LoRA adapters
//! (Hu et al. 2021) on every projection of the Transformer layers. Both are tested on the 25,000
//! test reviews (read from `KILN_DATA_DIR/imdb`, default `../shared/data/imdb`).
//!
//! ```text
//! backbone:   ids [N, 128] -> Embedding(10000, 128) * sqrt(128) + learned positions
//!             -> 2 pre-norm TransformerEncoderLayers (4 heads, feed-forward 512, GELU,
//!                dropout 0.1) under a causal mask -> LayerNorm
//! pre-train:  every position -> Linear(128, 2001): the next word among the 2,000 most
//!             frequent ids, or one "rarer word" class; cross-entropy, Adam 1e-3
//! classify:   the last word's features (it has read the whole review) -> Linear(128, 1),
//!             BCEWithLogitsLoss
//! ```
//!
//! Reviews are encoded as Keras' `imdb.load_data(num_words=10000)` does (1 starts a review,
//! 2 is a rarer word, 0 pads). Pre-training reads the training reviews end to end as one text in
//! 32 parallel streams, 128 words at a time. For classification each review keeps its last 128
//! words, padded *after* the text, so that under the causal mask no word ever attends to padding;
//! the classifier reads the features of the last word.
//!
//! The two fine-tunings differ only in what trains (and its learning rate):
//!
//! - **full**: every backbone weight and the new head, Adam lr 2e-4;
//! - **LoRA**: `lora::inject` with r = 8, alpha = 16 on `self_attn` (the packed q/k/v
//!   projection and `out_proj`) and `linear1`/`linear2` of both layers, which freezes everything
//!   else; the new head is then unfrozen (PEFT's `modules_to_save`). Adam lr 1e-3.
//!
//! Both run the same epochs on the same shuffled batches of 32, gradient norm clipped to 1. The
//! recipe prints each one's trainable parameters, test accuracy and training time, the size of
//! the files each needs to ship the fine-tuned model (the full model, or the adapter alone in
//! PEFT's safetensors keys), and the LoRA model's accuracy again after `lora::merge` folded the
//! adapters into the weights.
//!
//!     cargo run --release --example lora_imdb
//!
//! Measured on the 2-core development machine (one thread each, a language-model run beside
//! it): pre-training 1,457 windows in 1,368 s to a next-word cross-entropy of 4.245 nats on
//! test reviews' text; then
//!
//! | fine-tuning | trainable parameters | test accuracy | 2 epochs | file to ship |
//! |---|---:|---:|---:|---:|
//! | full | 1,693,313 (100 %) | 86.77 % | 870 s | 6,617.6 KiB |
//! | LoRA r = 8 | 32,897 (1.9 %) | 78.51 % | 794 s | 130.5 KiB |
//!
//! and 78.51 % again after `lora::merge`. LoRA trains 51x fewer parameters and ships a file 51x
//! smaller, but here it trails full fine-tuning by 8 points: this backbone is small and
//! pre-trained for one epoch only, so the features a low-rank update can reach are weaker than
//! those of the large pre-trained models LoRA was made for (where it matches full fine-tuning).
//! It is 9 % faster per epoch, not more: the frozen weights still carry the activations'
//! gradients back through every layer.
//!
//! `KILN_EPOCHS` sets the fine-tuning epochs (default 2), `KILN_PRETRAIN_WORDS` the words of
//! pre-training text (default: all of them, 5,967,841: one epoch), `KILN_TRAIN_SAMPLES` and
//! `KILN_TEST_SAMPLES` the reviews used.

use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Imdb, ImdbConfig, Split, TokenStreams};
use kiln::data::{DataError, DataLoader, Dataset, VecDataset};
use kiln::metrics::Accuracy;
use kiln::nn::lora::{self, LoraConfig};
use kiln::nn::{
    causal_mask, BCEWithLogitsLoss, Embedding, Forward, LayerNorm, LearnedPositionalEmbedding,
    LearnedPositionalEmbeddingConfig, Linear, Module, StateDict, TransformerActivation, TransformerEncoder,
    TransformerEncoderLayer,
};
use kiln::optim::{clip_grad_norm_, Adam, AdamConfig, Optimizer};
use kiln::tensor::Indices;
use kiln::train::{Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, OrStop};

/// Vocabulary size (Keras' `num_words`).
pub const NUM_WORDS: usize = 10_000;

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Use the first this many training reviews for fine-tuning (`None`: all 25,000).
    pub train_samples: Option<usize>,
    /// Use the first this many test reviews (`None`: all 25,000).
    pub test_samples: Option<usize>,
    /// Pre-train on the first this many words of the training text (`None`: all).
    pub pretrain_words: Option<usize>,
    /// Words per review and per pre-training window.
    pub maxlen: usize,
    /// Model width.
    pub d_model: usize,
    /// The language model's output: the ids below this, and one class for all the others.
    pub lm_words: usize,
    /// Fine-tuning epochs (the same for both).
    pub epochs: usize,
    /// The LoRA rank.
    pub rank: usize,
    /// Print progress.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented.
    pub fn full() -> Self {
        Opts {
            train_samples: env_usize("KILN_TRAIN_SAMPLES"),
            test_samples: env_usize("KILN_TEST_SAMPLES"),
            pretrain_words: env_usize("KILN_PRETRAIN_WORDS"),
            maxlen: 128,
            d_model: 128,
            lm_words: 2000,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(2),
            rank: 8,
            verbose: true,
        }
    }

    /// A few hundred short reviews and a narrow model, silent.
    pub fn smoke() -> Self {
        Opts {
            train_samples: Some(128),
            test_samples: Some(64),
            pretrain_words: Some(4096),
            maxlen: 32,
            d_model: 32,
            lm_words: 200,
            epochs: 1,
            rank: 4,
            verbose: false,
        }
    }
}

/// One fine-tuning's figures.
#[derive(Clone, Debug)]
pub struct Finetuned {
    /// Parameters that trained (elements).
    pub trainable: usize,
    /// Parameters of the model (elements; for LoRA, the adapters included).
    pub total: usize,
    /// Accuracy on the test reviews used.
    pub test_accuracy: f64,
    /// Training time, seconds.
    pub seconds: f64,
    /// Bytes of the file that ships the fine-tuned weights: the whole model's safetensors, or
    /// the adapters and the head alone.
    pub file_bytes: u64,
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// The language model's cross-entropy per word (nats, over `lm_words + 1` classes) on the
    /// test text after pre-training.
    pub pretrain_loss: f64,
    /// Pre-training time, seconds.
    pub pretrain_seconds: f64,
    /// Every weight fine-tuned.
    pub full: Finetuned,
    /// LoRA adapters and the head fine-tuned.
    pub lora: Finetuned,
    /// The LoRA model's test accuracy after `lora::merge`.
    pub lora_merged_accuracy: f64,
}

// ANCHOR: model
/// The causal Transformer both stages share.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct Backbone {
    /// Word vectors.
    pub embedding: Embedding,
    /// Position vectors, batch first.
    pub position: LearnedPositionalEmbedding,
    /// Two pre-norm layers and a final LayerNorm.
    pub encoder: TransformerEncoder,
}

impl Backbone {
    /// A fresh backbone of width `d_model` for windows up to `maxlen` words.
    pub fn new(d_model: usize, maxlen: usize) -> Self {
        let layer = TransformerEncoderLayer::new(d_model, 4)
            .dim_feedforward(4 * d_model)
            .dropout(0.1)
            .activation(TransformerActivation::Gelu)
            .batch_first(true)
            .norm_first(true);
        let embedding = Embedding::new(NUM_WORDS, d_model);
        kiln::nn::init::with_rng(|rng| kiln::nn::init::normal_(&embedding.weight, 0.0, 0.02, rng));
        Backbone {
            embedding,
            position: LearnedPositionalEmbeddingConfig {
                batch_first: true,
                ..LearnedPositionalEmbeddingConfig::new(maxlen, d_model)
            }
            .build()
            .expect("valid sizes"),
            encoder: TransformerEncoder::new(layer, 2, Some(LayerNorm::new(&[d_model]))),
        }
    }

    /// Features `[B, T, d]` of word ids `[B, T]`, each position seeing itself and those before.
    pub fn features(&self, ids: &Indices) -> Var<f32> {
        let t = ids.shape()[1];
        let d = self.embedding.weight.shape()[1];
        let words = self.embedding.forward_ids(ids).mul_scalar((d as f32).sqrt());
        self.encoder.forward_with(&self.position.forward(&words), Some(&causal_mask(t)), None)
    }
}

/// Pre-training: the backbone and a next-word head.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct LanguageModel {
    /// The shared Transformer.
    pub backbone: Backbone,
    /// Features to `lm_words + 1` classes.
    pub lm_head: Linear,
}

/// Fine-tuning: the backbone and a sentiment head on the last word.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct Classifier {
    /// The shared Transformer (pre-trained weights loaded).
    pub backbone: Backbone,
    /// The last word's features to one logit (a positive review when >= 0).
    pub head: Linear,
}

impl Forward<f32> for Classifier {
    /// Word ids `[N, T]` (as floats, padding 0 after the text) to logits `[N, 1]`.
    fn forward(&self, ids: &Var<f32>) -> Var<f32> {
        let (n, t) = (ids.shape()[0], ids.shape()[1]);
        let ids: Vec<usize> = ids.with_value(|v| v.to_vec()).into_iter().map(|f| f as usize).collect();
        // the row of each review's last word in the flattened [N * T, d] features
        let last: Vec<usize> = ids
            .chunks(t)
            .enumerate()
            .map(|(i, row)| i * t + row.iter().take_while(|&&w| w != 0).count().max(1) - 1)
            .collect();
        let features = self.backbone.features(&Indices::new(ids, &[n, t]));
        let d = features.shape()[2];
        self.head.forward(&features.reshape(&[n * t, d]).index_select(0, &last))
    }
}
// ANCHOR_END: model

/// The language model's classes: an id below `lm_words`, or `lm_words` for any other.
fn lm_targets(next: &[usize], lm_words: usize) -> Indices {
    Indices::new(next.iter().map(|&w| w.min(lm_words)).collect(), &[next.len()])
}

/// Mean cross-entropy of the next word over every window of `streams`.
fn lm_loss(model: &LanguageModel, streams: &TokenStreams, opts: &Opts) -> f64 {
    let (mut sum, mut words) = (0.0f64, 0usize);
    no_grad(|| {
        for (x, y) in streams.bptt_batches(opts.maxlen) {
            let b = streams.batch_size();
            let t = x.len() / b;
            let h = model.backbone.features(&Indices::new(x, &[b, t])).reshape(&[b * t, opts.d_model]);
            let logits = model.lm_head.forward(&h);
            let loss =
                kiln::nn::functional::cross_entropy(&logits, &lm_targets(&y, opts.lm_words), &Default::default());
            sum += f64::from(loss.item()) * y.len() as f64;
            words += y.len();
        }
    });
    sum / words.max(1) as f64
}

/// The review's last `maxlen` ids, then zeros.
fn pad_after(seq: &[usize], maxlen: usize) -> Vec<f32> {
    let mut out: Vec<f32> = seq[seq.len().saturating_sub(maxlen)..].iter().map(|&w| w as f32).collect();
    out.resize(maxlen, 0.0);
    out
}

/// `n` reviews (all when `None`) as `(ids, label)`.
fn reviews(imdb: &Imdb, n: Option<usize>, maxlen: usize) -> VecDataset<(Vec<f32>, f32)> {
    let n = n.unwrap_or(usize::MAX).min(imdb.len());
    (0..n).map(|i| (pad_after(&imdb.sequences()[i], maxlen), imdb.labels()[i] as f32)).collect()
}

/// Fine-tunes `model` on `train` with the parameters that require grad, and tests it.
fn finetune(
    model: &mut Classifier,
    lr: f64,
    train: &DataLoader<VecDataset<(Vec<f32>, f32)>>,
    test: &DataLoader<VecDataset<(Vec<f32>, f32)>>,
    opts: &Opts,
) -> (f64, f64) {
    let trainable: Vec<Var<f32>> = model.parameters().into_iter().filter(|p| p.requires_grad()).collect();
    let mut opt = Adam::new(trainable, AdamConfig { lr, ..Default::default() });
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::binary().with_threshold(0.0))
        .clip_grad_norm(1.0)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = BCEWithLogitsLoss::default();
    let started = Instant::now();
    trainer.fit(model, &mut opt, &loss, train, None).or_stop();
    let seconds = started.elapsed().as_secs_f64();
    let accuracy = trainer.evaluate(model, &loss, test).or_stop()["accuracy"];
    (accuracy, seconds)
}

/// The size of `model`'s weights written by `save` to a scratch file.
fn file_size(save: impl FnOnce(&std::path::Path)) -> u64 {
    let path = std::env::temp_dir().join(format!("kiln_lora_imdb_{}.safetensors", std::process::id()));
    save(&path);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    std::fs::remove_file(&path).ok();
    bytes
}

/// Pre-trains, fine-tunes both ways and tests; `Err` when the IMDB files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("imdb");
    let config = ImdbConfig { num_words: Some(NUM_WORDS), ..Default::default() };
    let train_imdb = Imdb::new(&dir, Split::Train, &config)?;
    let test_imdb = Imdb::new(&dir, Split::Test, &config)?;

    // ANCHOR: pretrain
    // Pre-training on the training reviews' text, end to end.
    let text: Vec<usize> = train_imdb.sequences().iter().flatten().copied().collect();
    let text = &text[..opts.pretrain_words.unwrap_or(usize::MAX).min(text.len())];
    let streams = TokenStreams::new(text, 32);
    let held_out: Vec<usize> =
        test_imdb.sequences().iter().take(opts.test_samples.unwrap_or(2000).min(2000)).flatten().copied().collect();
    let held_out = TokenStreams::new(&held_out, 32);
    let mut lm = LanguageModel {
        backbone: Backbone::new(opts.d_model, opts.maxlen),
        lm_head: Linear::new(opts.d_model, opts.lm_words + 1),
    };
    if opts.verbose {
        println!(
            "pre-training a causal Transformer ({} parameters) on {} words of the training reviews",
            lm.num_parameters(),
            text.len()
        );
    }
    let started = Instant::now();
    let params = lm.parameters();
    let mut opt = Adam::new(params.clone(), AdamConfig { lr: 1e-3, ..Default::default() });
    let windows = streams.num_windows(opts.maxlen);
    for (i, (x, y)) in streams.bptt_batches(opts.maxlen).enumerate() {
        let (b, t) = (streams.batch_size(), x.len() / streams.batch_size());
        let h = lm.backbone.features(&Indices::new(x, &[b, t])).reshape(&[b * t, opts.d_model]);
        let loss = kiln::nn::functional::cross_entropy(
            &lm.lm_head.forward(&h),
            &lm_targets(&y, opts.lm_words),
            &Default::default(),
        );
        loss.backward();
        clip_grad_norm_(&params, 1.0, 2.0);
        opt.step();
        opt.zero_grad();
        if opts.verbose && (i + 1) % 200 == 0 {
            eprintln!("window {}/{windows}: loss {:.3} ({:.0} s)", i + 1, loss.item(), started.elapsed().as_secs_f64());
        }
    }
    let pretrain_seconds = started.elapsed().as_secs_f64();
    lm.eval();
    let pretrain_loss = lm_loss(&lm, &held_out, opts);
    let pretrained: StateDict<f32> = lm.backbone.state_dict();
    // ANCHOR_END: pretrain
    if opts.verbose {
        println!(
            "pre-trained in {pretrain_seconds:.0} s: next-word cross-entropy {pretrain_loss:.3} nats on test reviews' text ({} classes)",
            opts.lm_words + 1
        );
    }

    let train = DataLoader::new(reviews(&train_imdb, opts.train_samples, opts.maxlen), 32).shuffle(true).seed(1);
    let test = DataLoader::new(reviews(&test_imdb, opts.test_samples, opts.maxlen), 250);
    // Both fine-tunings start from the same backbone and the same fresh head.
    let classifier = |seed: u64| {
        kiln::nn::init::manual_seed(seed);
        let mut model =
            Classifier { backbone: Backbone::new(opts.d_model, opts.maxlen), head: Linear::new(opts.d_model, 1) };
        model.backbone.load_state_dict(&pretrained, true).expect("the pre-trained backbone fits");
        model
    };

    // Full fine-tuning.
    let mut full_model = classifier(1);
    let (accuracy, seconds) = finetune(&mut full_model, 2e-4, &train, &test, opts);
    let full = Finetuned {
        trainable: full_model.num_trainable_parameters(),
        total: full_model.num_parameters(),
        test_accuracy: accuracy,
        seconds,
        file_bytes: file_size(|p| kiln::nn::serialize::save(&full_model, p, &Default::default()).or_stop()),
    };
    if opts.verbose {
        println!("full fine-tuning: test accuracy {:.2} %, {:.0} s", 100.0 * accuracy, seconds);
    }

    // ANCHOR: lora
    // LoRA: adapters on every projection of the Transformer layers, the rest frozen but the head.
    let mut lora_model = classifier(1);
    let config = LoraConfig {
        r: opts.rank,
        alpha: 2.0 * opts.rank as f64,
        dropout: 0.0,
        target_modules: vec!["self_attn".into(), "linear1".into(), "linear2".into()],
    };
    let adapted = lora::inject(&mut lora_model, &config).or_stop();
    lora_model.head.requires_grad_(true);
    // ANCHOR_END: lora
    if opts.verbose {
        println!("LoRA r = {} on {}", opts.rank, adapted.join(", "));
    }
    let (accuracy, seconds) = finetune(&mut lora_model, 1e-3, &train, &test, opts);
    // What ships: the adapters (PEFT's keys) and the new head.
    let file_bytes = file_size(|p| {
        let mut state = lora::adapter_state_dict(&lora_model);
        for (k, v) in lora_model.head.state_dict() {
            state.insert(format!("head.{k}"), v);
        }
        kiln::nn::serialize::save_state_dict(&state, p, &Default::default()).or_stop()
    });
    let lora = Finetuned {
        trainable: lora_model.num_trainable_parameters(),
        total: lora_model.num_parameters(),
        test_accuracy: accuracy,
        seconds,
        file_bytes,
    };
    lora::merge(&mut lora_model);
    let loss = BCEWithLogitsLoss::default();
    let merged = Trainer::new(1).metric("accuracy", || Accuracy::binary().with_threshold(0.0));
    let lora_merged_accuracy = merged.evaluate(&mut lora_model, &loss, &test).or_stop()["accuracy"];
    Ok(Report { pretrain_loss, pretrain_seconds, full, lora, lora_merged_accuracy })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => {
            println!("\n| fine-tuning | trainable parameters | test accuracy | training time | file to ship |");
            println!("|---|---:|---:|---:|---:|");
            for (name, f) in [("full", &r.full), ("LoRA r = 8", &r.lora)] {
                println!(
                    "| {name} | {} of {} ({:.1} %) | {:.2} % | {:.0} s | {:.1} KiB |",
                    f.trainable,
                    f.total,
                    100.0 * f.trainable as f64 / f.total as f64,
                    100.0 * f.test_accuracy,
                    f.seconds,
                    f.file_bytes as f64 / 1024.0
                );
            }
            println!("LoRA after merge: test accuracy {:.2} %", 100.0 * r.lora_merged_accuracy);
        }
        Err(e) => eprintln!("cannot read IMDB ({e}); set KILN_DATA_DIR to the shared data folder"),
    }
}
