//! Sentiment of IMDB movie reviews with an LSTM, after Keras' `imdb_lstm` example: the 25,000
//! labelled training reviews and the 25,000 test reviews of aclImdb (read from
//! `KILN_DATA_DIR/imdb`, default `../shared/data/imdb`), encoded as Keras' `imdb.load_data`
//! does with its word index (the 10,000 most frequent words; 1 marks the start, 2 a rarer word,
//! 0 is padding).
//!
//! ```text
//! ids [N, 200] -> Embedding(10000, 128) -> Dropout(0.2)
//!              -> LSTM(128, 64, recurrent_dropout=0.2)  (last hidden state)
//!              -> Linear(64, 1)                          BCEWithLogitsLoss
//! ```
//!
//! Each review is cut or padded to 200 words as Keras' `pad_sequences` does by default (the
//! last 200 words are kept, zeros are put in front). Keras' `LSTM(dropout=0.2)` drops LSTM
//! inputs, hence the `Dropout` on the embeddings; `recurrent_dropout` drops the hidden state fed
//! back, with one mask per sequence. Adam (lr 1e-3) on shuffled batches of 32, gradients
//! clipped to norm 5.
//!
//!     cargo run --release --example imdb_lstm

use std::time::Instant;

use kiln::autograd::Var;
use kiln::data::datasets::{Imdb, ImdbConfig, Split};
use kiln::data::{DataError, DataLoader, Dataset, VecDataset};
use kiln::metrics::Accuracy;
use kiln::nn::{BCEWithLogitsLoss, Dropout, Embedding, EmbeddingConfig, Forward, Linear, Module, LSTM};
use kiln::optim::{Adam, AdamConfig};
use kiln::train::{Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, OrStop};

/// Vocabulary size (Keras' `num_words`).
pub const NUM_WORDS: usize = 10_000;

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Use the first this many training reviews (they alternate positive and negative; `None`:
    /// all 25,000).
    pub train_samples: Option<usize>,
    /// Use this many test reviews (`None`: all 25,000).
    pub test_samples: Option<usize>,
    /// Words kept per review.
    pub maxlen: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Print one line per epoch (or a progress bar on a terminal).
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts {
            train_samples: env_usize("KILN_TRAIN_SAMPLES"),
            test_samples: env_usize("KILN_TEST_SAMPLES"),
            maxlen: 200,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(6),
            verbose: true,
        }
    }

    /// A few hundred short reviews, one epoch, silent.
    pub fn smoke() -> Self {
        Opts { train_samples: Some(256), test_samples: Some(128), maxlen: 40, epochs: 1, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Accuracy on the test reviews used.
    pub test_accuracy: f64,
    /// Mean binary cross-entropy on them.
    pub test_loss: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of loading and training, seconds.
    pub seconds: f64,
}

// ANCHOR: model
/// The model of the module doc.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct SentimentLstm {
    /// Word vectors; id 0 (padding) stays zero.
    pub embedding: Embedding,
    /// Dropout on the LSTM's inputs.
    pub dropout: Dropout,
    /// One layer, batch first.
    pub lstm: LSTM,
    /// The last hidden state to one logit.
    pub fc: Linear,
}

impl SentimentLstm {
    /// A freshly initialised model.
    pub fn new() -> Self {
        let embedding: Embedding = EmbeddingConfig { padding_idx: Some(0), ..EmbeddingConfig::new(NUM_WORDS, 128) }
            .build()
            .expect("valid sizes");
        // Keras' `Embedding` starts from U(-0.05, 0.05), PyTorch's from N(0, 1); the small start
        // learns faster here. The padding row stays zero.
        kiln::nn::init::with_rng(|rng| kiln::nn::init::uniform_(&embedding.weight, -0.05, 0.05, rng));
        embedding.weight.update_value(|w| {
            let mut v = w.to_vec();
            v[..128].fill(0.0);
            *w = kiln::tensor::Tensor::from_vec(v, &[NUM_WORDS, 128]);
        });
        SentimentLstm {
            embedding,
            dropout: Dropout::new(0.2),
            lstm: LSTM::new(128, 64).batch_first(true).recurrent_dropout(0.2),
            fc: Linear::new(64, 1),
        }
    }
}

impl Default for SentimentLstm {
    fn default() -> Self {
        Self::new()
    }
}

impl Forward<f32> for SentimentLstm {
    /// Word ids `[N, T]` (as floats) to logits `[N, 1]`.
    fn forward(&self, ids: &Var<f32>) -> Var<f32> {
        let words = self.dropout.forward(&self.embedding.forward(ids));
        let (_, (h_n, _)) = self.lstm.forward(&words);
        self.fc.forward(&h_n.select(0, 0))
    }
}
// ANCHOR_END: model

/// Keras' `pad_sequences(maxlen)` with its defaults: keep the last `maxlen` ids, pad in front.
fn pad(seq: &[usize], maxlen: usize) -> Vec<f32> {
    let kept = &seq[seq.len().saturating_sub(maxlen)..];
    let mut out = vec![0.0f32; maxlen - kept.len()];
    out.extend(kept.iter().map(|&w| w as f32));
    out
}

/// `n` reviews (all when `None`), alternating positive and negative as the files do, padded.
pub fn encode(imdb: &Imdb, n: Option<usize>, maxlen: usize) -> VecDataset<(Vec<f32>, f32)> {
    let n = n.unwrap_or(usize::MAX).min(imdb.len());
    (0..n).map(|i| (pad(&imdb.sequences()[i], maxlen), imdb.labels()[i] as f32)).collect()
}

/// Trains and evaluates; `Err` when the IMDB files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("imdb");
    let config = ImdbConfig { num_words: Some(NUM_WORDS), ..Default::default() };
    let train = encode(&Imdb::new(&dir, Split::Train, &config)?, opts.train_samples, opts.maxlen);
    let test = encode(&Imdb::new(&dir, Split::Test, &config)?, opts.test_samples, opts.maxlen);
    if opts.verbose {
        println!("IMDB: {} training and {} test reviews, {} words each", train.len(), test.len(), opts.maxlen);
    }
    let train = DataLoader::new(train, 32).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);

    let mut model = SentimentLstm::new();
    if opts.verbose {
        println!("{}\n{}\n{}", model.embedding, model.lstm, model.fc);
    }
    // ANCHOR: train
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    // A logit >= 0 predicts a positive review.
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::binary().with_threshold(0.0))
        .clip_grad_norm(5.0)
        .verbosity(if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent });
    let loss = BCEWithLogitsLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test)).or_stop();
    // ANCHOR_END: train
    let eval = trainer.evaluate(&mut model, &loss, &test).or_stop();
    Ok(Report {
        test_accuracy: eval["accuracy"],
        test_loss: eval["loss"],
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "LSTM on IMDB: test accuracy {:.2}% (loss {:.4}) after {} epochs, {:.1} s",
            100.0 * r.test_accuracy,
            r.test_loss,
            r.epochs,
            r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read IMDB ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
