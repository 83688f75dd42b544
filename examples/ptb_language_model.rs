//! A word-level language model on the Penn Treebank (Mikolov's version: 929k training, 73k
//! validation and 82k test words, vocabulary 10,000; read from `KILN_DATA_DIR/ptb`, default
//! `../shared/data/ptb`): a 2-layer LSTM trained with truncated back-propagation through time,
//! in the "small" configuration of Zaremba et al. (2014), with an adaptive softmax output
//! (Grave et al. 2017, PyTorch's `AdaptiveLogSoftmaxWithLoss`).
//!
//! ```text
//! ids [20, 20] -> Embedding(10000, 200) -> LSTM(200, 200, num_layers=2)
//!              -> adaptive softmax: head Linear(200, 2000 + 1) over the 2,000 most frequent
//!                 words and one "rare word" class; tail Linear(200, 50) -> Linear(50, 8000)
//!                 over the other 8,000, scored only for the positions whose target is rare
//! ```
//!
//! The adaptive softmax gives every word an exact probability, `p(w) = p_head(w)` for a frequent
//! word and `p_head(rare) * p_tail(w)` for a rare one, so the perplexity is that of a full
//! softmax model; it spends a quarter of the full softmax's work (the 2,000 most frequent words
//! cover 87 % of the training text), which is what makes two epochs fit in minutes on two
//! cores. The training text is cut into 20 parallel streams read 20 words at a time; the LSTM's
//! state is carried from window to window and detached (truncated BPTT). SGD with lr 1, gradient
//! norm clipped to 5, weights U(-0.1, 0.1), no dropout, as Zaremba's small model. Perplexity is
//! `exp` of the mean negative log-likelihood per word over the whole validation or test text.
//!
//!     cargo run --release --example ptb_language_model

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{PennTreebank, Split, TokenStreams};
use kiln::data::DataError;
use kiln::nn::{Embedding, Forward, LSTMConfig, Linear, LinearConfig, Module, LSTM};
use kiln::optim::{clip_grad_norm_, LrGroups, Optimizer, SGDConfig, SGD};
use kiln::tensor::Indices;

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Train on the first this many words of the training text (`None`: all).
    pub train_words: Option<usize>,
    /// Evaluate on the first this many words of the validation and test texts (`None`: all).
    pub eval_words: Option<usize>,
    /// Embedding and hidden size.
    pub hidden: usize,
    /// Words in the adaptive softmax's head.
    pub cutoff: usize,
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
            cutoff: 2000,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(3),
            verbose: true,
        }
    }

    /// A few thousand words, a small model, one epoch, silent.
    pub fn smoke() -> Self {
        Opts { train_words: Some(4_000), eval_words: Some(1_000), hidden: 32, cutoff: 500, epochs: 1, verbose: false }
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

/// Adaptive softmax with two clusters (Grave et al. 2017): the `cutoff` most frequent words and
/// a rare-word class in the head, the rest in a tail behind a 4x narrower projection. Words are
/// numbered by frequency rank (0 = most frequent).
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct AdaptiveSoftmax {
    /// `hidden -> cutoff + 1`: the frequent words, then the rare-word class.
    pub head: Linear,
    /// `hidden -> hidden / 4`, without bias.
    pub tail_proj: Linear,
    /// `hidden / 4 -> vocab - cutoff`: the rare words.
    pub tail: Linear,
    cutoff: usize,
}

impl AdaptiveSoftmax {
    /// An output layer over `vocab` words from `hidden` features.
    pub fn new(hidden: usize, vocab: usize, cutoff: usize) -> Self {
        let narrow = (hidden / 4).max(1);
        AdaptiveSoftmax {
            head: Linear::new(hidden, cutoff + 1),
            tail_proj: LinearConfig { bias: false, ..LinearConfig::new(hidden, narrow) }.build().expect("valid sizes"),
            tail: Linear::new(narrow, vocab - cutoff),
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
        if !rare.is_empty() {
            let tail_targets: Vec<usize> = rare.iter().map(|&i| ranks[i] - self.cutoff).collect();
            let projected = self.tail_proj.forward(&hidden.index_select(0, &rare));
            let tail = self.tail.forward(&projected).log_softmax(1);
            log_p = log_p.add(&tail.gather(1, &Indices::new(tail_targets, &[rare.len(), 1])).sum_all());
        }
        log_p.neg()
    }
}

/// The 2-layer LSTM language model of the module doc.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct LanguageModel {
    /// Word vectors.
    pub embedding: Embedding,
    /// Two layers, batch first.
    pub lstm: LSTM,
    /// The output distribution.
    pub output: AdaptiveSoftmax,
}

/// The LSTM's `(h, c)` between windows.
pub type State = (Var<f32>, Var<f32>);

impl LanguageModel {
    /// A model over `vocab` words with `hidden` units per layer, every weight drawn from
    /// U(-0.1, 0.1) as in Zaremba et al.
    pub fn new(vocab: usize, hidden: usize, cutoff: usize) -> Self {
        let model = LanguageModel {
            embedding: Embedding::new(vocab, hidden),
            lstm: LSTMConfig { num_layers: 2, batch_first: true, ..LSTMConfig::new(hidden, hidden) }.build().expect("valid sizes"),
            output: AdaptiveSoftmax::new(hidden, vocab, cutoff),
        };
        kiln::nn::init::with_rng(|rng| {
            for p in model.parameters() {
                kiln::nn::init::uniform_(&p, -0.1, 0.1, rng);
            }
        });
        model
    }

    /// Word ids `[B, T]` from `state` to the top layer's outputs `[B * T, hidden]` and the state
    /// after them.
    pub fn forward_state(&self, ids: &Indices, state: Option<&State>) -> (Var<f32>, State) {
        let words = self.embedding.forward_ids(ids);
        let (out, (h, c)) = self.lstm.forward_with(&words, state.map(|(h, c)| (h, c)), None);
        let shape = out.shape();
        (out.reshape(&[shape[0] * shape[1], shape[2]]), (h, c))
    }
}

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

/// `exp` of the mean negative log-likelihood per word of `model` over `streams`.
fn perplexity(model: &mut LanguageModel, streams: &TokenStreams, rank: &[usize]) -> f64 {
    model.eval();
    let (mut nll, mut words) = (0.0f64, 0usize);
    no_grad(|| {
        let mut state: Option<State> = None;
        for (x, y) in streams.bptt_batches(35) {
            let len = x.len() / streams.batch_size();
            let (hidden, next) = model.forward_state(&Indices::new(x, &[streams.batch_size(), len]), state.as_ref());
            let ranks: Vec<usize> = y.iter().map(|&w| rank[w]).collect();
            nll += f64::from(model.output.nll_sum(&hidden, &ranks).item());
            words += ranks.len();
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
    let (batch_size, bptt) = (20, 20);
    let rank = frequency_ranks(ptb.tokens(Split::Train), vocab);
    let train = streams(ptb.tokens(Split::Train), opts.train_words, batch_size);
    let valid = streams(ptb.tokens(Split::Valid), opts.eval_words, 10);
    let test = streams(ptb.tokens(Split::Test), opts.eval_words, 10);
    let mut model = LanguageModel::new(vocab, opts.hidden, opts.cutoff);
    if opts.verbose {
        let covered = ptb.tokens(Split::Train).iter().filter(|&&w| rank[w] < opts.cutoff).count();
        println!(
            "Penn Treebank: {} training words in {batch_size} streams, vocabulary {vocab} ({:.1} % of the words among the {} in the head); {} ({} parameters in all)",
            train.batch_size() * train.steps(),
            100.0 * covered as f64 / ptb.tokens(Split::Train).len() as f64,
            opts.cutoff,
            model.lstm,
            model.num_parameters()
        );
    }
    let params = model.parameters();
    let mut opt = SGD::new(params.clone(), SGDConfig { lr: 20.0, ..Default::default() });
    let mut valid_perplexity = f64::NAN;
    let windows = train.num_windows(bptt);
    for epoch in 0..opts.epochs {
        let epoch_started = Instant::now();
        if epoch + 1 == opts.epochs && epoch > 0 {
            // Anneal for the last epoch.
            opt.set_group_lr(0, 5.0);
        }
        let mut state: Option<State> = None;
        let (mut nll_sum, mut seen) = (0.0f64, 0usize);
        for (i, (x, y)) in train.bptt_batches(bptt).enumerate() {
            let len = x.len() / batch_size;
            let (hidden, (h, c)) = model.forward_state(&Indices::new(x, &[batch_size, len]), state.as_ref());
            let ranks: Vec<usize> = y.iter().map(|&w| rank[w]).collect();
            let loss = model.output.nll_sum(&hidden, &ranks).div_scalar(ranks.len() as f32);
            loss.backward();
            clip_grad_norm_(&params, 0.25, 2.0);
            opt.step();
            opt.zero_grad();
            state = Some((h.detach(), c.detach()));
            nll_sum += f64::from(loss.item()) * ranks.len() as f64;
            seen += ranks.len();
            if opts.verbose && (i + 1) % 500 == 0 {
                eprintln!(
                    "epoch {} window {}/{windows}: training perplexity {:.1} ({:.0} ms per window)",
                    epoch + 1,
                    i + 1,
                    (nll_sum / seen as f64).exp(),
                    1e3 * epoch_started.elapsed().as_secs_f64() / (i + 1) as f64
                );
            }
        }
        valid_perplexity = perplexity(&mut model, &valid, &rank);
        if opts.verbose {
            println!(
                "epoch {}/{}: training perplexity {:.2}, validation perplexity {valid_perplexity:.2}, {:.1} s",
                epoch + 1,
                opts.epochs,
                (nll_sum / seen.max(1) as f64).exp(),
                epoch_started.elapsed().as_secs_f64()
            );
        }
    }
    let test_perplexity = perplexity(&mut model, &test, &rank);
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
