//! A word-level language model on the Penn Treebank (Mikolov's version: 929k training, 73k
//! validation and 82k test words, vocabulary 10,000; read from `KILN_DATA_DIR/ptb`, default
//! `../shared/data/ptb`): a 2-layer LSTM trained with truncated back-propagation through time,
//! in the "small" configuration of Zaremba et al. (2014), with their full softmax output or,
//! faster, an adaptive softmax (Grave et al. 2017, PyTorch's `AdaptiveLogSoftmaxWithLoss`).
//!
//! ```text
//! ids [20, 20] -> Embedding(10000, 200) -> LSTM(200, 200, num_layers=2)
//!              -> softmax: Linear(200, 10000)                       (KILN_PTB_SOFTMAX=full, default)
//!              -> adaptive softmax: head Linear(200, 2000 + 1) over the 2,000 most frequent
//!                 words and one "rare word" class; tail Linear(200, 50) -> Linear(50, 8000)
//!                 over the other 8,000, scored only for the positions whose target is rare
//!                                                                   (KILN_PTB_SOFTMAX=adaptive)
//! ```
//!
//! The adaptive softmax gives every word an exact probability, `p(w) = p_head(w)` for a frequent
//! word and `p_head(rare) * p_tail(w)` for a rare one, so the perplexity is that of a full
//! softmax model; it spends a quarter of the full softmax's work (the 2,000 most frequent words
//! cover 87 % of the training text), but its narrow tail generalises worse: in the small
//! configuration its best validation perplexity was 132.95 (epoch 5, rising after), against
//! the paper's 120.7 with the full softmax. The training text is cut into 20 parallel streams read
//! `bptt` words at a time; the LSTM's state is carried from window to window and detached
//! (truncated BPTT). Perplexity is `exp` of the mean negative log-likelihood per word over the
//! whole validation or test text; the weights tested are those of the epoch with the best
//! validation perplexity.
//!
//! `KILN_PTB_CONFIG` picks Zaremba's configuration (another value is refused, naming it):
//!
//! - `small` (default): 200 units, no dropout, windows of 20 words, weights U(-0.1, 0.1),
//!   SGD lr 1 for 4 epochs then halved after every epoch, 13 epochs, gradient norm clipped to 5.
//!   The paper reaches 114.5 test perplexity; this recipe reached 112.24 (validation 117.30 at
//!   epoch 13), in 4,280 s on the 2-core development machine with other runs beside it.
//! - `medium`: 650 units, dropout 0.5 on the embedding's output, between the layers and on the
//!   top layer's output, windows of 35 words, weights U(-0.05, 0.05), lr 1 for 6 epochs then
//!   divided by 1.2 after every epoch, 39 epochs. The paper reaches 82.7.
//!
//! Zaremba et al. sum the loss over a window's steps; this recipe averages it over the window's
//! words, so their lr 1 and clip 5 are lr `bptt` and clip `5 / bptt` here (the same steps).
//! `KILN_PTB_SOFTMAX` picks the output layer (`full`, the default, or `adaptive`; another value
//! is refused). `KILN_EPOCHS` overrides the epochs (the schedule stays: a shorter run stops early in it),
//! `KILN_TRAIN_WORDS` trains on the first words only, `KILN_TRANSFORMER_EPOCHS` (default 3, 0
//! skips it) sets the causal Transformer's epochs after the LSTM.
//!
//!     cargo run --release --example ptb_language_model
//!     KILN_PTB_CONFIG=medium KILN_TRANSFORMER_EPOCHS=0 cargo run --release --example ptb_language_model
//!
//! `KILN_AUTOCAST=bf16` runs it under `autocast(DType::BF16, ..)` (matrix products in bfloat16
//! with f32 sums, parameters and gradients f32); another value is refused. One epoch of the
//! small configuration (`KILN_EPOCHS=1 KILN_TRANSFORMER_EPOCHS=0`, 2026-12-07): test
//! perplexity 182.30 in f32 (275 s), 183.55 under bf16 autocast (562 s on this AVX2 CPU's
//! bfloat16 path), 0.7 % apart.

use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{PennTreebank, Split, TokenStreams};
use kiln::data::DataError;
use kiln::nn::{
    causal_mask, Dropout, Embedding, Forward, LayerNorm, LearnedPositionalEmbedding, LearnedPositionalEmbeddingConfig,
    Linear, LinearConfig, Module, TransformerEncoder, TransformerEncoderLayer, LSTM,
};
use kiln::optim::{clip_grad_norm_, Adam, AdamConfig, LrGroups, Optimizer, SGDConfig, SGD};
use kiln::tensor::{Indices, Tensor};

#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize};

/// Which of Zaremba et al.'s (2014) LSTM configurations the recipe trains (`KILN_PTB_CONFIG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtbConfig {
    /// Non-regularised, 200 units, windows of 20 words, 13 epochs, the learning rate halved
    /// after each epoch from the fifth on (the paper: 114.5 test perplexity).
    Small,
    /// 650 units, dropout 0.5 on the non-recurrent connections, windows of 35 words, 39 epochs,
    /// the learning rate divided by 1.2 after each epoch from the seventh on (the paper: 82.7).
    Medium,
}

impl PtbConfig {
    /// `KILN_PTB_CONFIG`: `small` (also when unset or empty) or `medium`, in any case.
    ///
    /// # Errors
    /// [`DataError::Env`] naming the variable and its value when it is anything else.
    pub fn from_env() -> Result<Self, DataError> {
        let key = "KILN_PTB_CONFIG";
        let value = std::env::var_os(key).map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "small" => Ok(PtbConfig::Small),
            "medium" => Ok(PtbConfig::Medium),
            _ => Err(DataError::Env { key: key.into(), value, expected: "`small` or `medium`".into() }),
        }
    }
}

/// `KILN_PTB_SOFTMAX`: `full` (also when unset or empty: a cutoff of `usize::MAX`) or
/// `adaptive` (the 2,000 most frequent words in the head), in any case.
///
/// # Errors
/// [`DataError::Env`] naming the variable and its value when it is anything else.
pub fn softmax_cutoff_from_env() -> Result<usize, DataError> {
    let key = "KILN_PTB_SOFTMAX";
    let value = std::env::var_os(key).map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "full" => Ok(usize::MAX),
        "adaptive" => Ok(2000),
        _ => Err(DataError::Env { key: key.into(), value, expected: "`full` or `adaptive`".into() }),
    }
}

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Train on the first this many words of the training text (`None`: all).
    pub train_words: Option<usize>,
    /// Evaluate on the first this many words of the validation and test texts (`None`: all).
    pub eval_words: Option<usize>,
    /// The LSTM's configuration (its name; the fields below hold its values).
    pub config: PtbConfig,
    /// Embedding and hidden size.
    pub hidden: usize,
    /// Dropout on the embedding's output, between the LSTM layers and on the top layer's
    /// output (0: none).
    pub dropout: f64,
    /// Words per training window (truncated BPTT length).
    pub bptt: usize,
    /// Every weight is drawn from U(-init_range, init_range).
    pub init_range: f64,
    /// SGD's learning rate on the loss averaged over the words of a window. Zaremba et al.
    /// sum the loss over the window's steps, so their lr 1 is `bptt` here, and their gradient
    /// norm clip 5 is `5 / bptt`.
    pub lr: f64,
    /// Gradient norm clip (on the averaged loss).
    pub clip: f64,
    /// Words in the adaptive softmax's head; the vocabulary size or more gives a full softmax
    /// (`usize::MAX`, Zaremba et al.'s output layer).
    pub cutoff: usize,
    /// Training epochs of the LSTM.
    pub epochs: usize,
    /// Epochs at the full learning rate; after each later epoch it is divided by `decay`.
    pub decay_after: usize,
    /// The learning rate's divisor per epoch after `decay_after`.
    pub decay: f64,
    /// Model size of the Transformer.
    pub d_model: usize,
    /// Training epochs of the Transformer (0: skip it).
    pub transformer_epochs: usize,
    /// Print progress.
    pub verbose: bool,
}

impl Opts {
    /// Zaremba et al.'s configuration `config`, on the whole text, with the Transformer's 3
    /// epochs after it.
    pub fn recipe(config: PtbConfig) -> Self {
        let (hidden, dropout, bptt, init_range, epochs, decay_after, decay) = match config {
            PtbConfig::Small => (200, 0.0, 20, 0.1, 13, 4, 2.0),
            PtbConfig::Medium => (650, 0.5, 35, 0.05, 39, 6, 1.2),
        };
        Opts {
            train_words: None,
            eval_words: None,
            config,
            hidden,
            dropout,
            bptt,
            init_range,
            lr: bptt as f64,
            clip: 5.0 / bptt as f64,
            cutoff: usize::MAX,
            epochs,
            decay_after,
            decay,
            d_model: 128,
            transformer_epochs: 3,
            verbose: true,
        }
    }

    /// The recipe as documented: `KILN_PTB_CONFIG=small|medium` picks the LSTM's configuration
    /// (default `small`); `KILN_EPOCHS`, `KILN_TRANSFORMER_EPOCHS` and `KILN_TRAIN_WORDS`
    /// override the epochs and the training words.
    ///
    /// # Errors
    /// [`DataError::Env`] naming the variable when one of them holds a value it must not.
    pub fn full() -> Result<Self, DataError> {
        let mut opts = Opts::recipe(PtbConfig::from_env()?);
        opts.cutoff = softmax_cutoff_from_env()?;
        opts.train_words = env_usize("KILN_TRAIN_WORDS");
        opts.epochs = env_usize("KILN_EPOCHS").unwrap_or(opts.epochs);
        opts.transformer_epochs = env_usize("KILN_TRANSFORMER_EPOCHS").unwrap_or(opts.transformer_epochs);
        Ok(opts)
    }

    /// A few thousand words, a small model with dropout, two epochs (the second decayed),
    /// silent.
    pub fn smoke() -> Self {
        Opts {
            train_words: Some(4_000),
            eval_words: Some(1_000),
            hidden: 32,
            dropout: 0.2,
            cutoff: 500,
            epochs: 2,
            decay_after: 1,
            d_model: 32,
            transformer_epochs: 1,
            verbose: false,
            ..Opts::recipe(PtbConfig::Small)
        }
    }

    /// The learning rate of epoch `epoch` (0-based): `lr` for the first `decay_after` epochs,
    /// then divided by `decay` once per further epoch.
    pub fn epoch_lr(&self, epoch: usize) -> f64 {
        let decays = (epoch + 1).saturating_sub(self.decay_after);
        self.lr / self.decay.powi(i32::try_from(decays).unwrap_or(i32::MAX))
    }
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// The LSTM's perplexity on the test text used.
    pub test_perplexity: f64,
    /// The LSTM's best perplexity on the validation text used (the weights tested are those
    /// of that epoch).
    pub valid_perplexity: f64,
    /// Epochs the LSTM trained.
    pub epochs: usize,
    /// The epoch (1-based) whose weights were tested: the one with the best validation
    /// perplexity.
    pub best_epoch: usize,
    /// Wall time of each LSTM epoch (training and validation), seconds.
    pub epoch_seconds: Vec<f64>,
    /// The Transformer's test perplexity (`NaN` when it was skipped).
    pub transformer_test_perplexity: f64,
    /// The Transformer's validation perplexity after its last epoch.
    pub transformer_valid_perplexity: f64,
    /// Wall time of loading, training and evaluating, seconds.
    pub seconds: f64,
}

/// Adaptive softmax with two clusters (Grave et al. 2017): the `cutoff` most frequent words and
/// a rare-word class in the head, the rest in a tail behind a 4x narrower projection; with a
/// cutoff of the vocabulary size or more, a plain (full) softmax over every word. Words are
/// numbered by frequency rank (0 = most frequent).
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct AdaptiveSoftmax {
    /// `hidden -> cutoff + 1`: the frequent words, then the rare-word class (`hidden -> vocab`
    /// for a full softmax).
    pub head: Linear,
    /// `hidden -> hidden / 4`, without bias (none for a full softmax).
    pub tail_proj: Option<Linear>,
    /// `hidden / 4 -> vocab - cutoff`: the rare words (none for a full softmax).
    pub tail: Option<Linear>,
    cutoff: usize,
}

impl AdaptiveSoftmax {
    /// An output layer over `vocab` words from `hidden` features: adaptive with the `cutoff`
    /// most frequent words in the head, or a full softmax when `cutoff >= vocab`.
    pub fn new(hidden: usize, vocab: usize, cutoff: usize) -> Self {
        if cutoff >= vocab {
            return AdaptiveSoftmax { head: Linear::new(hidden, vocab), tail_proj: None, tail: None, cutoff: vocab };
        }
        let narrow = (hidden / 4).max(1);
        AdaptiveSoftmax {
            head: Linear::new(hidden, cutoff + 1),
            tail_proj: Some(
                LinearConfig { bias: false, ..LinearConfig::new(hidden, narrow) }.build().expect("valid sizes"),
            ),
            tail: Some(Linear::new(narrow, vocab - cutoff)),
            cutoff,
        }
    }

    /// `-sum log p(target)` over the rows of `hidden` `[N, hidden]`, targets given as
    /// frequency ranks.
    pub fn nll_sum(&self, hidden: &Var<f32>, ranks: &[usize]) -> Var<f32> {
        let n = ranks.len();
        let head_targets: Vec<usize> = ranks.iter().map(|&r| r.min(self.cutoff)).collect();
        let head = self.head.forward(hidden).log_softmax(1);
        let mut log_p = head.gather(1, &Indices::new(head_targets, &[n, 1])).sum_all();
        let rare: Vec<usize> = (0..n).filter(|&i| ranks[i] >= self.cutoff).collect();
        if let (false, Some(tail_proj), Some(tail)) = (rare.is_empty(), &self.tail_proj, &self.tail) {
            let tail_targets: Vec<usize> = rare.iter().map(|&i| ranks[i] - self.cutoff).collect();
            let projected = tail_proj.forward(&hidden.index_select(0, &rare));
            let tail = tail.forward(&projected).log_softmax(1);
            log_p = log_p.add(&tail.gather(1, &Indices::new(tail_targets, &[rare.len(), 1])).sum_all());
        }
        log_p.neg()
    }
}

// ANCHOR: lstm
/// The 2-layer LSTM language model of the module doc.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct LanguageModel {
    /// Word vectors.
    pub embedding: Embedding,
    /// Two layers, batch first (with dropout between them in the medium configuration).
    pub lstm: LSTM,
    /// Dropout on the embedding's and the top layer's outputs (p = 0: none).
    pub drop: Dropout,
    /// The output distribution.
    pub output: AdaptiveSoftmax,
}

/// The LSTM's `(h, c)` between windows.
pub type State = (Var<f32>, Var<f32>);

impl LanguageModel {
    /// A model over `vocab` words with `hidden` units per layer and dropout `dropout` on the
    /// non-recurrent connections (Zaremba et al.: 0 small, 0.5 medium), every weight drawn from
    /// U(-init_range, init_range) (0.1 small, 0.05 medium).
    pub fn new(vocab: usize, hidden: usize, cutoff: usize, dropout: f64, init_range: f64) -> Self {
        let model = LanguageModel {
            embedding: Embedding::new(vocab, hidden),
            lstm: LSTM::new(hidden, hidden).num_layers(2).batch_first(true).dropout(dropout),
            drop: Dropout::new(dropout),
            output: AdaptiveSoftmax::new(hidden, vocab, cutoff),
        };
        kiln::nn::init::with_rng(|rng| {
            for p in model.parameters() {
                kiln::nn::init::uniform_(&p, -init_range, init_range, rng);
            }
        });
        model
    }

    /// Word ids `[B, T]` from `state` to the top layer's outputs `[B * T, hidden]` and the state
    /// after them.
    pub fn forward_state(&self, ids: &Indices, state: Option<&State>) -> (Var<f32>, State) {
        let words = self.drop.forward(&self.embedding.forward_ids(ids));
        let (out, (h, c)) = self.lstm.forward_with(&words, state.map(|(h, c)| (h, c)), None);
        let out = self.drop.forward(&out);
        let shape = out.shape();
        (out.reshape(&[shape[0] * shape[1], shape[2]]), (h, c))
    }
}
// ANCHOR_END: lstm

/// What the training and evaluation loops need of a language model: the top layer's features
/// `[B * T, d]` for word ids `[B, T]` (from and to a carried state where the model has one),
/// and the output layer.
pub trait WordModel: Module<f32> {
    /// Features of `ids`, and the state to carry into the next window (`None`: stateless).
    fn features(&self, ids: &Indices, state: Option<&State>) -> (Var<f32>, Option<State>);
    /// The adaptive softmax over the vocabulary.
    fn output(&self) -> &AdaptiveSoftmax;
}

impl WordModel for LanguageModel {
    fn features(&self, ids: &Indices, state: Option<&State>) -> (Var<f32>, Option<State>) {
        let (h, s) = self.forward_state(ids, state);
        (h, Some(s))
    }
    fn output(&self) -> &AdaptiveSoftmax {
        &self.output
    }
}

// ANCHOR: transformer
/// A small causal Transformer language model: word embedding (scaled by √d) plus a learned
/// position embedding, two pre-norm `TransformerEncoderLayer`s (4 heads, feed-forward 4d,
/// GELU, dropout 0.1) under a causal mask, a final LayerNorm, and the same adaptive softmax.
/// It sees one window at a time (no state carried between windows).
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct TransformerLm {
    /// Word vectors.
    pub embedding: Embedding,
    /// Position vectors, batch first.
    pub position: LearnedPositionalEmbedding,
    /// The causal self-attention stack.
    pub encoder: TransformerEncoder,
    /// The output distribution.
    pub output: AdaptiveSoftmax,
}

impl TransformerLm {
    /// A model over `vocab` words of size `d_model`, for windows up to `max_len` words.
    pub fn new(vocab: usize, d_model: usize, cutoff: usize, max_len: usize) -> Self {
        let layer = TransformerEncoderLayer::new(d_model, 4)
            .dim_feedforward(4 * d_model)
            .dropout(0.1)
            .activation(kiln::nn::TransformerActivation::Gelu)
            .batch_first(true)
            .norm_first(true);
        let embedding = Embedding::new(vocab, d_model);
        kiln::nn::init::with_rng(|rng| kiln::nn::init::normal_(&embedding.weight, 0.0, 0.02, rng));
        TransformerLm {
            embedding,
            position: LearnedPositionalEmbeddingConfig {
                batch_first: true,
                ..LearnedPositionalEmbeddingConfig::new(max_len, d_model)
            }
            .build()
            .expect("valid sizes"),
            encoder: TransformerEncoder::new(layer, 2, Some(LayerNorm::new(&[d_model]))),
            output: AdaptiveSoftmax::new(d_model, vocab, cutoff),
        }
    }
}

impl WordModel for TransformerLm {
    fn features(&self, ids: &Indices, _state: Option<&State>) -> (Var<f32>, Option<State>) {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let d = self.embedding.weight.shape()[1];
        let words = self.embedding.forward_ids(ids).mul_scalar((d as f32).sqrt());
        let x = self.position.forward(&words);
        let y = self.encoder.forward_with(&x, Some(&causal_mask(t)), None);
        (y.reshape(&[b * t, d]), None)
    }
    fn output(&self) -> &AdaptiveSoftmax {
        &self.output
    }
}
// ANCHOR_END: transformer

/// Word id -> frequency rank in `tokens` (0 = most frequent; ties by id).
fn frequency_ranks(tokens: &[usize], vocab: usize) -> Vec<usize> {
    let mut counts = vec![0usize; vocab];
    for &t in tokens {
        counts[t] += 1;
    }
    let mut by_count: Vec<usize> = (0..vocab).collect();
    by_count.sort_by_key(|&w| (std::cmp::Reverse(counts[w]), w));
    let mut rank = vec![0; vocab];
    for (r, &w) in by_count.iter().enumerate() {
        rank[w] = r;
    }
    rank
}

/// `exp` of the mean negative log-likelihood per word of `model` over `streams`, read in
/// windows of `bptt` words.
fn perplexity<M: WordModel>(model: &mut M, streams: &TokenStreams, rank: &[usize], bptt: usize) -> f64 {
    model.eval();
    let (mut nll, mut words) = (0.0f64, 0usize);
    no_grad(|| {
        let mut state: Option<State> = None;
        for (x, y) in streams.bptt_batches(bptt) {
            let len = x.len() / streams.batch_size();
            let (hidden, next) = model.features(&Indices::new(x, &[streams.batch_size(), len]), state.as_ref());
            let ranks: Vec<usize> = y.iter().map(|&w| rank[w]).collect();
            nll += f64::from(model.output().nll_sum(&hidden, &ranks).item());
            words += ranks.len();
            state = next;
        }
    });
    model.train();
    (nll / words as f64).exp()
}

/// One epoch of truncated BPTT over `train` in windows of `bptt` words (the state carried and
/// detached between windows); returns the training perplexity.
fn train_epoch<M: WordModel, O: Optimizer<f32>>(
    model: &M,
    opt: &mut O,
    train: &TokenStreams,
    rank: &[usize],
    bptt: usize,
    clip: f64,
    label: &str,
    verbose: bool,
) -> f64 {
    let started = Instant::now();
    let params = model.parameters();
    let batch_size = train.batch_size();
    let windows = train.num_windows(bptt);
    let mut state: Option<State> = None;
    let (mut nll_sum, mut seen) = (0.0f64, 0usize);
    // ANCHOR: bptt
    for (i, (x, y)) in train.bptt_batches(bptt).enumerate() {
        let len = x.len() / batch_size;
        let (hidden, next) = model.features(&Indices::new(x, &[batch_size, len]), state.as_ref());
        let ranks: Vec<usize> = y.iter().map(|&w| rank[w]).collect();
        let loss = model.output().nll_sum(&hidden, &ranks).div_scalar(ranks.len() as f32);
        loss.backward();
        clip_grad_norm_(&params, clip, 2.0);
        opt.step();
        opt.zero_grad();
        state = next.map(|(h, c)| (h.detach(), c.detach()));
        // ANCHOR_END: bptt
        nll_sum += f64::from(loss.item()) * ranks.len() as f64;
        seen += ranks.len();
        if verbose && (i + 1) % 500 == 0 {
            eprintln!(
                "{label} window {}/{windows}: training perplexity {:.1} ({:.0} ms per window)",
                i + 1,
                (nll_sum / seen as f64).exp(),
                1e3 * started.elapsed().as_secs_f64() / (i + 1) as f64
            );
        }
    }
    (nll_sum / seen.max(1) as f64).exp()
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
    let (batch_size, bptt) = (20, opts.bptt);
    let rank = frequency_ranks(ptb.tokens(Split::Train), vocab);
    let train = streams(ptb.tokens(Split::Train), opts.train_words, batch_size);
    let valid = streams(ptb.tokens(Split::Valid), opts.eval_words, 10);
    let test = streams(ptb.tokens(Split::Test), opts.eval_words, 10);
    let mut model = LanguageModel::new(vocab, opts.hidden, opts.cutoff, opts.dropout, opts.init_range);
    if opts.verbose {
        let covered = ptb.tokens(Split::Train).iter().filter(|&&w| rank[w] < opts.cutoff).count();
        let output = if opts.cutoff >= vocab {
            "full softmax".to_string()
        } else {
            format!(
                "adaptive softmax, {:.1} % of the words among the {} in the head",
                100.0 * covered as f64 / ptb.tokens(Split::Train).len() as f64,
                opts.cutoff
            )
        };
        println!(
            "Penn Treebank: {} training words in {batch_size} streams, vocabulary {vocab} ({output}); {:?} configuration: {}, dropout {}, windows of {bptt} words ({} parameters in all)",
            train.batch_size() * train.steps(),
            opts.config,
            model.lstm,
            opts.dropout,
            model.num_parameters()
        );
    }
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: opts.lr, ..Default::default() });
    // The weights of the epoch with the best validation perplexity, which are the ones tested.
    let (mut valid_perplexity, mut best_epoch, mut best_weights) = (f64::INFINITY, 0, Vec::new());
    let mut epoch_seconds = Vec::with_capacity(opts.epochs);
    for epoch in 0..opts.epochs {
        let epoch_started = Instant::now();
        let lr = opts.epoch_lr(epoch);
        opt.set_group_lr(0, lr);
        let label = format!("LSTM epoch {}", epoch + 1);
        let train_ppl = train_epoch(&model, &mut opt, &train, &rank, bptt, opts.clip, &label, opts.verbose);
        let epoch_valid = perplexity(&mut model, &valid, &rank, 35);
        if epoch_valid < valid_perplexity || best_epoch == 0 {
            valid_perplexity = epoch_valid;
            best_epoch = epoch + 1;
            best_weights = model.parameters().iter().map(|p| p.value().contiguous().to_vec()).collect();
        }
        epoch_seconds.push(epoch_started.elapsed().as_secs_f64());
        if opts.verbose {
            println!(
                "LSTM epoch {}/{} (lr {lr:.4}): training perplexity {train_ppl:.2}, validation perplexity {epoch_valid:.2}, {:.1} s ({:.1} s in all)",
                epoch + 1,
                opts.epochs,
                epoch_seconds[epoch],
                started.elapsed().as_secs_f64()
            );
        }
    }
    if best_epoch > 0 && best_epoch < opts.epochs {
        for (p, w) in model.parameters().iter().zip(best_weights) {
            p.set_value(Tensor::from_vec(w, &p.shape()));
        }
        if opts.verbose {
            println!("LSTM: testing the weights of epoch {best_epoch} (validation perplexity {valid_perplexity:.2})");
        }
    }
    let test_perplexity = perplexity(&mut model, &test, &rank, 35);
    if opts.verbose {
        println!("LSTM: test perplexity {test_perplexity:.2}");
    }

    // The causal Transformer, on windows of 35 words, Adam with the learning rate decayed
    // linearly to a tenth.
    let (mut transformer_valid_perplexity, mut transformer_test_perplexity) = (f64::NAN, f64::NAN);
    if opts.transformer_epochs > 0 {
        let context = 35;
        let mut lm = TransformerLm::new(vocab, opts.d_model, opts.cutoff, context);
        if opts.verbose {
            println!(
                "causal Transformer: d_model {}, 2 layers, 4 heads ({} parameters in all)",
                opts.d_model,
                lm.num_parameters()
            );
        }
        let lr = 1e-3;
        let mut opt = Adam::new(lm.parameters(), AdamConfig { lr, ..Default::default() });
        for epoch in 0..opts.transformer_epochs {
            let epoch_started = Instant::now();
            let done = epoch as f64 / opts.transformer_epochs as f64;
            opt.set_group_lr(0, lr * (1.0 - 0.9 * done));
            let label = format!("Transformer epoch {}", epoch + 1);
            let train_ppl = train_epoch(&lm, &mut opt, &train, &rank, context, 1.0, &label, opts.verbose);
            transformer_valid_perplexity = perplexity(&mut lm, &valid, &rank, context);
            if opts.verbose {
                println!(
                    "Transformer epoch {}/{}: training perplexity {train_ppl:.2}, validation perplexity {transformer_valid_perplexity:.2}, {:.1} s",
                    epoch + 1,
                    opts.transformer_epochs,
                    epoch_started.elapsed().as_secs_f64()
                );
            }
        }
        transformer_test_perplexity = perplexity(&mut lm, &test, &rank, context);
    }
    Ok(Report {
        test_perplexity,
        valid_perplexity,
        epochs: opts.epochs,
        best_epoch,
        epoch_seconds,
        transformer_test_perplexity,
        transformer_valid_perplexity,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    // KILN_AUTOCAST=bf16: train and evaluate with the matrix products in bfloat16 (f32 sums).
    let precision = kiln::tensor::autocast::autocast_from_env("KILN_AUTOCAST").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    if let Some(p) = precision {
        println!("autocast: matrix products in {p}");
    }
    let opts = Opts::full().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    match kiln::tensor::autocast(precision.unwrap_or(kiln::tensor::DType::F32), || run(&opts)) {
        Ok(r) => {
            // KILN_TRANSFORMER_EPOCHS=0 skips the Transformer: say so rather than print NaN
            let transformer = if r.transformer_test_perplexity.is_nan() {
                "causal Transformer not run".to_string()
            } else {
                format!(
                    "causal Transformer {:.2} (validation {:.2})",
                    r.transformer_test_perplexity, r.transformer_valid_perplexity
                )
            };
            println!(
                "Penn Treebank test perplexity: 2-layer LSTM {:.2} (validation {:.2}, epoch {} of {}, {:.1} s per epoch); {transformer}; {:.1} s",
                r.test_perplexity,
                r.valid_perplexity,
                r.best_epoch,
                r.epochs,
                r.epoch_seconds.iter().sum::<f64>() / r.epoch_seconds.len().max(1) as f64,
                r.seconds
            )
        }
        Err(e) => {
            eprintln!("cannot read the Penn Treebank ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
