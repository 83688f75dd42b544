//! Word attributions of an LSTM sentiment classifier on IMDB: trains Embedding(10000, 32) →
//! LSTM(32 → 32) → last hidden state → Linear(32, 1) on the 25,000 training reviews (cut to
//! their last 200 words, padded at the front) for three epochs, then explains the positive-class logit
//! of a short positive and a short negative test review three ways:
//!
//! - Kernel SHAP over the words (a hidden word becomes the out-of-vocabulary token; the start
//!   mark stays), values adding up to `f(review) − f(all words hidden)`;
//! - LIME over the same segments;
//! - Integrated Gradients in embedding space, from the embeddings of the review with every word
//!   hidden (SHAP's baseline), summed over each word's embedding dimensions.
//!
//! Reads `KILN_DATA_DIR/imdb` (default `../shared/data/imdb`: the TSV files and Keras'
//! `imdb_word_index.json`). `KILN_TRAIN_SAMPLES` and `KILN_EPOCHS` change the training run.
//!
//!     cargo run --release --example explain_imdb

use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Imdb, ImdbConfig, Split, WordIndex};
use kiln::data::text::{pad_sequences, Side};
use kiln::explain::{
    integrated_gradients, kernel_shap, lime, KernelShapConfig, LimeConfig, Segmented, Segments, TokenScores,
};
use kiln::nn::{BCEWithLogitsLoss, Embedding, Forward, Linear, Module, LSTM};
use kiln::optim::{Adam, AdamConfig, Optimizer};
use kiln::tensor::{Indices, Rng, Tensor};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize};

const VOCAB: usize = 10_000;
const MAXLEN: usize = 200;
/// Keras' IMDB conventions: 0 pads, 1 starts a review, 2 is an out-of-vocabulary word.
const PAD: usize = 0;
const START: usize = 1;
const OOV: usize = 2;

struct Classifier {
    embedding: Embedding,
    lstm: LSTM,
    fc: Linear,
}

impl Classifier {
    fn new() -> Self {
        Classifier {
            embedding: Embedding::new(VOCAB, 32),
            lstm: LSTM::new(32, 32).batch_first(true),
            fc: Linear::new(32, 1),
        }
    }

    fn parameters(&self) -> Vec<Var> {
        let mut p = self.embedding.parameters();
        p.extend(self.lstm.parameters());
        p.extend(self.fc.parameters());
        p
    }

    /// Embedded reviews `[N, L, 32]` → positive-class logits `[N, 1]`.
    fn classify_embeddings(&self, e: &Var) -> Var {
        let (_, (h_n, _)) = self.lstm.forward(e);
        self.fc.forward(&h_n.select(0, 0))
    }
}

impl Forward for Classifier {
    /// Word ids `[N, L]` (as floats) → logits `[N, 1]`.
    fn forward(&self, ids: &Var) -> Var {
        self.classify_embeddings(&self.embedding.forward(ids))
    }
}

fn main() {
    let dir = data_folder("imdb");
    let config = ImdbConfig { num_words: Some(VOCAB), ..Default::default() };
    let loaded = Imdb::new(&dir, Split::Train, &config)
        .and_then(|train| Ok((train, Imdb::new(&dir, Split::Test, &config)?)))
        .and_then(|sets| Ok((sets, WordIndex::load(dir.join("imdb_word_index.json"))?)));
    let ((train, test), index) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot read IMDB ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    };
    let words = index.reverse();
    let vocab = |id: usize| match id {
        PAD => "<pad>".to_string(),
        START => "<start>".to_string(),
        OOV => "<unk>".to_string(),
        _ => words.get(id - 3).cloned().unwrap_or_else(|| format!("#{id}")),
    };

    // Train.
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let model = Classifier::new();
    let n_train = env_usize("KILN_TRAIN_SAMPLES").unwrap_or(25_000);
    let epochs = env_usize("KILN_EPOCHS").unwrap_or(3);
    let mut rng = Rng::new(1);
    let chosen: Vec<usize> = rng.permutation(train.labels().len()).into_iter().take(n_train).collect();
    let seqs: Vec<Vec<usize>> = chosen.iter().map(|&i| train.sequences()[i].clone()).collect();
    let padded = pad_sequences(&seqs, Some(MAXLEN), Side::Pre, Side::Pre, PAD);
    let labels: Vec<f32> = chosen.iter().map(|&i| train.labels()[i] as f32).collect();
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 3e-3, ..Default::default() });
    let loss_fn = BCEWithLogitsLoss::default();
    for epoch in 0..epochs {
        let order = rng.permutation(padded.len());
        let (mut total, mut correct) = (0.0, 0);
        for batch in order.chunks(64) {
            let ids =
                Indices::new(batch.iter().flat_map(|&i| padded[i].iter().copied()).collect(), &[batch.len(), MAXLEN]);
            let y: Vec<f32> = batch.iter().map(|&i| labels[i]).collect();
            opt.zero_grad();
            let logits = model.classify_embeddings(&model.embedding.forward_ids(&ids)).reshape(&[batch.len()]);
            let loss = loss_fn.forward(&logits, &Var::constant(Tensor::from_vec(y.clone(), &[batch.len()])));
            loss.backward();
            kiln::optim::clip_grad_norm_(&model.parameters(), 5.0, 2.0);
            opt.step();
            total += f64::from(loss.item()) * batch.len() as f64;
            correct += logits.value().to_vec().iter().zip(&y).filter(|(l, y)| (**l > 0.0) == (**y > 0.5)).count();
        }
        println!(
            "epoch {}: training loss {:.4}, accuracy {:.2}% ({:.0} s)",
            epoch + 1,
            total / padded.len() as f64,
            100.0 * correct as f64 / padded.len() as f64,
            started.elapsed().as_secs_f64()
        );
    }

    // Test accuracy on 2,000 test reviews.
    let n_test = 2000.min(test.labels().len());
    let test_idx: Vec<usize> = Rng::new(2).permutation(test.labels().len()).into_iter().take(n_test).collect();
    let test_seqs: Vec<Vec<usize>> = test_idx.iter().map(|&i| test.sequences()[i].clone()).collect();
    let test_padded = pad_sequences(&test_seqs, Some(MAXLEN), Side::Pre, Side::Pre, PAD);
    let mut correct = 0;
    no_grad(|| {
        for chunk in (0..n_test).collect::<Vec<_>>().chunks(250) {
            let ids = Indices::new(
                chunk.iter().flat_map(|&k| test_padded[k].iter().copied()).collect(),
                &[chunk.len(), MAXLEN],
            );
            let logits = model.classify_embeddings(&model.embedding.forward_ids(&ids)).value().to_vec();
            correct +=
                chunk.iter().zip(logits).filter(|(&k, l)| (*l > 0.0) == (test.labels()[test_idx[k]] == 1)).count();
        }
    });
    println!(
        "LSTM trained on {n_train} reviews for {epochs} epochs in {:.0} s: test accuracy {:.2}% on {n_test} reviews",
        started.elapsed().as_secs_f64(),
        100.0 * correct as f64 / n_test as f64
    );

    // Explain a short positive and a short negative review the model gets right.
    let logit = |ids: &[usize]| {
        no_grad(|| {
            model.forward(&Var::constant(Tensor::from_vec(ids.iter().map(|&i| i as f32).collect(), &[1, ids.len()])))
        })
        .item()
    };
    for (label, name) in [(1, "positive"), (0, "negative")] {
        let Some(i) = (0..test.labels().len()).find(|&i| {
            let s = &test.sequences()[i];
            test.labels()[i] == label && (20..=45).contains(&s.len()) && (logit(s) > 0.0) == (label == 1)
        }) else {
            println!("\nno short {name} review classified correctly");
            continue;
        };
        let ids = test.sequences()[i].clone();
        println!("\n{name} test review #{i} ({} words), logit {:+.3}:", ids.len() - 1, logit(&ids));
        let started = Instant::now();

        // ANCHOR: shap
        // One segment per word; the start mark is never hidden.
        let mut k = 0;
        let labels: Vec<Option<usize>> = ids
            .iter()
            .map(|&id| {
                (id != START).then(|| {
                    k += 1;
                    k - 1
                })
            })
            .collect();
        let x = Tensor::from_vec(ids.iter().map(|&i| i as f32).collect(), &[ids.len()]);
        let input = Segmented::new(&x, Segments::from_labels(labels), &x.full_like(OOV as f32));
        let shap = kernel_shap(&model, &input, 0, &KernelShapConfig::default());
        let shap_scores = TokenScores::from_segments(&input, &shap.values, vocab);
        println!(
            "Kernel SHAP ({} coalitions): values sum {:+.4} = f(x) {:+.4} - f(all <unk>) {:+.4}",
            shap.n_coalitions,
            shap.sum(),
            shap.prediction,
            shap.expected_value
        );
        print!("{shap_scores}");
        // ANCHOR_END: shap
        println!("inline: {}", shap_scores.inline());

        let lime_exp = lime(&model, &input, 0, &LimeConfig { n_samples: 2000, ..Default::default() });
        let lime_scores = TokenScores::from_segments(&input, &lime_exp.values, vocab);
        println!("LIME (R² {:.3}), top words: {}", lime_exp.score, top(&lime_scores));
        println!("SHAP, top words:              {}", top(&shap_scores));

        // Integrated Gradients over the embeddings, one score per word, from the embeddings of
        // the review with every word hidden (the same baseline as SHAP's).
        let embed = |ids: Vec<usize>| {
            let n = ids.len();
            no_grad(|| model.embedding.forward_ids(&Indices::new(ids, &[1, n]))).value().reshape(&[n, 32])
        };
        let hidden: Vec<usize> = ids.iter().map(|&id| if id == START { START } else { OOV }).collect();
        let from_emb = |e: &Var| model.classify_embeddings(e);
        let ig = integrated_gradients(&from_emb, &embed(ids.clone()), 0, &embed(hidden), 64);
        let per_word = ig.attributions.sum(&[1], false).to_vec();
        let ig_scores =
            TokenScores::new(ids.iter().zip(per_word).skip(1).map(|(&id, s)| (vocab(id), f64::from(s))).collect());
        println!(
            "Integrated Gradients on the embeddings (completeness error {:.2e}), top words: {}",
            ig.error,
            top(&ig_scores)
        );
        println!("three methods in {:.2} s", started.elapsed().as_secs_f64());
    }
}

/// The five words with the largest scores, signed.
fn top(scores: &TokenScores) -> String {
    scores.top(5).iter().map(|(w, s)| format!("{w} ({s:+.3})")).collect::<Vec<_>>().join(", ")
}
