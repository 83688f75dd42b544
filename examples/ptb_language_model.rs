//! A word-level language model on the Penn Treebank (Mikolov's version: 929k training, 73k
//! validation and 82k test words, vocabulary 10,000; read from `KILN_DATA_DIR/ptb`, default
//! `../shared/data/ptb`), after PyTorch's `word_language_model` example: a 2-layer LSTM
//! trained with truncated back-propagation through time.
//!
//! ```text
//! ids [20, 35] -> Embedding(10000, 200) -> Dropout(0.2)
//!              -> LSTM(200, 200, num_layers=2, dropout=0.2) -> Dropout(0.2)
//!              -> Linear(200, 10000), its weight tied to the embedding's     cross-entropy
//! ```
//!
//! The training text is cut into 20 parallel streams read 35 words at a time; the LSTM's state
//! is carried from one window to the next and detached (truncated BPTT). Tying the output
//! layer to the embedding (Press & Wolf 2017; Inan et al. 2017) saves 2M parameters and lowers
//! the perplexity reached in a few epochs. Adam (lr 2e-3, halved after each epoch), gradient
//! norm clipped to 0.25 as in PyTorch's example. Perplexity is `exp` of the mean cross-entropy
//! per word over the whole validation or test text (in 10 streams).
//!
//!     cargo run --release --example ptb_language_model

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{PennTreebank, Split, TokenStreams};
use kiln::data::DataError;
use kiln::nn::functional::{cross_entropy, CrossEntropyOptions, Reduction};
use kiln::nn::{Dropout, Embedding, Forward, LSTMConfig, Module, LSTM};
use kiln::optim::{clip_grad_norm_, Adam, AdamConfig, LrGroups, Optimizer};
use kiln::tensor::{Indices, Tensor};

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Train on the first this many words of the training text (`None`: all).
    pub train_words: Option<usize>,
    /// Evaluate on the first this many words of the validation and test texts (`None`: all).
    pub eval_words: Option<usize>,
    /// Embedding and hidden size.
    pub hidden: usize,
    /// Dropout on the embeddings, between the LSTM layers and on the LSTM's output.
    pub dropout: f64,
    /// Training epochs.
    pub epochs: usize,
    /// Print progress.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts {
            train_words: env_usize("KILN_TRAIN_WORDS"),
            eval_words: None,
            hidden: 200,
            dropout: std::env::var("KILN_DROPOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(0.2),
            epochs: env_usize("KILN_EPOCHS").unwrap_or(2),
            verbose: true,
        }
    }

    /// A few thousand words, a small model, one epoch, silent.
    pub fn smoke() -> Self {
        Opts { train_words: Some(4_000), eval_words: Some(1_000), hidden: 32, dropout: 0.2, epochs: 1, verbose: false }
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Perplexity on the test text used.
    pub test_perplexity: f64,
    /// Perplexity on the validation text used, after the last epoch.
    pub valid_perplexity: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of loading, training and evaluating, seconds.
    pub seconds: f64,
}

/// The 2-layer LSTM language model of the module doc.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct LanguageModel {
    /// Word vectors, also the output layer's weight.
    pub embedding: Embedding,
    /// Dropout on the embeddings and on the LSTM's output.
    pub dropout: Dropout,
    /// Two layers, batch first.
    pub lstm: LSTM,
    /// The output layer's bias (its weight is the embedding table).
    pub decoder_bias: Var<f32>,
}

/// The LSTM's `(h, c)` between windows.
pub type State = (Var<f32>, Var<f32>);

impl LanguageModel {
    /// A model over `vocab` words with `hidden` units per layer.
    pub fn new(vocab: usize, hidden: usize, dropout: f64) -> Self {
        let embedding = Embedding::new(vocab, hidden);
        // PyTorch's example initialises the (tied) table with U(-0.1, 0.1).
        kiln::nn::init::with_rng(|rng| kiln::nn::init::uniform_(&embedding.weight, -0.1, 0.1, rng));
        LanguageModel {
            embedding,
            dropout: Dropout::new(dropout),
            lstm: LSTMConfig { num_layers: 2, dropout, batch_first: true, ..LSTMConfig::new(hidden, hidden) }
                .build()
                .expect("valid sizes"),
            decoder_bias: Var::param(Tensor::zeros(&[vocab])),
        }
    }

    /// Word ids `[B, T]` from `state` to logits `[B * T, vocab]` and the state after them.
    pub fn forward_state(&self, ids: &Indices, state: Option<&State>) -> (Var<f32>, State) {
        let words = self.dropout.forward(&self.embedding.forward_ids(ids));
        let (out, (h, c)) = self.lstm.forward_with(&words, state.map(|(h, c)| (h, c)), None);
        let hidden = self.dropout.forward(&out);
        let shape = hidden.shape();
        let flat = hidden.reshape(&[shape[0] * shape[1], shape[2]]);
        (flat.linear(&self.embedding.weight, Some(&self.decoder_bias)), (h, c))
    }
}

/// `exp` of the mean cross-entropy per word of `model` over `streams`.
fn perplexity(model: &mut LanguageModel, streams: &TokenStreams, bptt: usize) -> f64 {
    model.eval();
    let (mut nll, mut words) = (0.0f64, 0usize);
    no_grad(|| {
        let mut state: Option<State> = None;
        for (x, y) in streams.bptt_batches(bptt) {
            let len = x.len() / streams.batch_size();
            let (logits, next) = model.forward_state(&Indices::new(x, &[streams.batch_size(), len]), state.as_ref());
            let opts = CrossEntropyOptions { reduction: Reduction::Sum, ..Default::default() };
            nll += f64::from(cross_entropy(&logits, &Indices::from_vec(y), &opts).item());
            words += streams.batch_size() * len;
            state = Some(next);
        }
    });
    model.train();
    (nll / words as f64).exp()
}

/// The first `n` tokens (all when `None`) in `batch_size` streams.
fn streams(tokens: &[usize], n: Option<usize>, batch_size: usize) -> TokenStreams {
    TokenStreams::new(&tokens[..n.unwrap_or(usize::MAX).min(tokens.len())], batch_size)
}

/// Trains and evaluates; `Err` when the Penn Treebank files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let ptb = PennTreebank::new(data_folder("ptb"))?;
    let vocab = ptb.vocab().len();
    let (batch_size, bptt) = (20, 35);
    let train = streams(ptb.tokens(Split::Train), opts.train_words, batch_size);
    let valid = streams(ptb.tokens(Split::Valid), opts.eval_words, 10);
    let test = streams(ptb.tokens(Split::Test), opts.eval_words, 10);
    let mut model = LanguageModel::new(vocab, opts.hidden, opts.dropout);
    if opts.verbose {
        println!(
            "Penn Treebank: {} training words in {batch_size} streams, vocabulary {vocab}; {} ({} parameters in all)",
            train.batch_size() * train.steps(),
            model.lstm,
            model.num_parameters()
        );
    }
    let params = model.parameters();
    let mut opt = Adam::new(params.clone(), AdamConfig { lr: 2e-3, ..Default::default() });
    let mut valid_perplexity = f64::NAN;
    let windows = train.num_windows(bptt);
    for epoch in 0..opts.epochs {
        let epoch_started = Instant::now();
        let mut state: Option<State> = None;
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        for (i, (x, y)) in train.bptt_batches(bptt).enumerate() {
            let len = x.len() / batch_size;
            let (logits, (h, c)) = model.forward_state(&Indices::new(x, &[batch_size, len]), state.as_ref());
            let loss = cross_entropy(&logits, &Indices::from_vec(y), &CrossEntropyOptions::default());
            loss.backward();
            clip_grad_norm_(&params, 0.25, 2.0);
            opt.step();
            opt.zero_grad();
            state = Some((h.detach(), c.detach()));
            loss_sum += f64::from(loss.item());
            seen += 1;
            if opts.verbose && (i + 1) % 200 == 0 {
                eprintln!(
                    "epoch {} window {}/{windows}: training perplexity {:.1} ({:.0} ms per window)",
                    epoch + 1,
                    i + 1,
                    (loss_sum / seen as f64).exp(),
                    1e3 * epoch_started.elapsed().as_secs_f64() / (i + 1) as f64
                );
                (loss_sum, seen) = (0.0, 0);
            }
        }
        valid_perplexity = perplexity(&mut model, &valid, bptt);
        if opts.verbose {
            println!(
                "epoch {}/{}: validation perplexity {valid_perplexity:.2}, lr {:.0e}, {:.1} s",
                epoch + 1,
                opts.epochs,
                opt.group_lr(0),
                epoch_started.elapsed().as_secs_f64()
            );
        }
        let lr = opt.group_lr(0);
        opt.set_group_lr(0, lr / 2.0);
    }
    let test_perplexity = perplexity(&mut model, &test, bptt);
    Ok(Report { test_perplexity, valid_perplexity, epochs: opts.epochs, seconds: started.elapsed().as_secs_f64() })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "2-layer LSTM language model on Penn Treebank: test perplexity {:.2} (validation {:.2}) after {} epochs, {:.1} s",
            r.test_perplexity, r.valid_perplexity, r.epochs, r.seconds
        ),
        Err(e) => {
            eprintln!("cannot read the Penn Treebank ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}

/// `KILN_DATA_DIR/<name>` (see `kiln::data::data_dir`), or the shared data folder beside the
/// repository when that is where the set is.
fn data_folder(name: &str) -> PathBuf {
    let dir = kiln::data::data_dir().join(name);
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(name);
    if dir.is_dir() || !shared.is_dir() {
        dir
    } else {
        shared
    }
}

fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok()?.parse().ok()
}
