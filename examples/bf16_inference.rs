//! bfloat16 inference, PyTorch's `model.to(torch.bfloat16)`: train in `f32`, convert, and
//! measure what bfloat16 storage costs in accuracy, on the MNIST CNN of `cnn_mnist.rs` and
//! the IMDB LSTM of `imdb_lstm.rs` (read from `KILN_DATA_DIR/mnist` and `KILN_DATA_DIR/imdb`,
//! default `../shared/data`).
//!
//! ```text
//! MNIST  Conv2d -> ReLU -> MaxPool2d -> Conv2d -> ... -> Linear -> LogSoftmax   bf16_sequential
//! IMDB   Embedding(10000, 128) -> LSTM(128, 64) -> Linear(64, 1)                Bf16Embedding,
//!                                                                               Bf16LSTM, Bf16Linear
//! ```
//!
//! Weights, biases and every activation between layers are stored as bfloat16; products are
//! summed in `f32` by kiln's bfloat16 GEMM. One epoch of training for each model by default
//! (`KILN_EPOCHS` overrides); `KILN_TRAIN_SAMPLES` and `KILN_TEST_SAMPLES` cut the IMDB
//! reviews, as for `imdb_lstm`. Times are wall clock per image, the median of several runs.
//!
//!     cargo run --release --example bf16_inference
//!
//! Measured once, on the shared 2-core development machine (2 threads; its bfloat16 GEMM
//! kernel is the `Avx2` one, no bfloat16 arithmetic instructions), with the defaults: one
//! epoch of each model, all 10,000 MNIST and all 25,000 IMDB test samples, 236 s in all:
//!
//! | | f32 | bf16 | same prediction |
//! |---|---|---|---|
//! | MNIST CNN test accuracy | 98.51 % | 98.52 % | 99.99 % of images |
//! | IMDB LSTM test accuracy | 79.73 % | 79.74 % | 99.98 % of reviews |
//! | MNIST CNN parameters | 1647.0 KiB | 823.5 KiB | |
//! | IMDB LSTM parameters | 5194.3 KiB | 2597.1 KiB | |
//! | MNIST CNN, per image, batch 1 / 64 | 0.396 / 0.388 ms | 1.024 / 0.708 ms | |
//! | IMDB LSTM, per review, batch 1 / 64 | 0.699 / 0.557 ms | 4.667 / 2.520 ms | |
//!
//! The largest output differences were 0.318 (a log-probability of the CNN) and 0.693 (a
//! logit of the LSTM). bfloat16 halves the parameter bytes and keeps the accuracy; it is not
//! faster here: without `vdpbf16ps` the kernel widens bfloat16 to `f32` and gains nothing in
//! arithmetic (see `kiln_tensor::kernels::bf16_gemm`), and `Bf16LSTM` runs one GEMM (packing
//! `W_hh` again) and a scalar gate loop per step where kiln-nn's `f32` LSTM has a fused kernel.
// cnn_mnist.rs, imdb_lstm.rs and common.rs are included as modules by several binaries, on purpose.
#![allow(clippy::duplicate_mod)]

use std::time::Instant;

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Imdb, ImdbConfig, Mnist, Split};
use kiln::data::{DataError, DataLoader, Dataset, DatasetExt};
use kiln::metrics::Accuracy;
use kiln::nn::{BCEWithLogitsLoss, Forward, Module, NLLLoss};
use kiln::optim::lr_scheduler::StepLR;
use kiln::optim::{Adam, AdamConfig};
use kiln::quant::{bf16_sequential, Bf16Embedding, Bf16LSTM, Bf16Linear};
use kiln::tensor::kernels::bf16_gemm::Bf16Isa;
use kiln::tensor::Tensor;
use kiln::train::{SchedulerInterval, Trainer, Verbosity};

// The MNIST CNN of `cnn_mnist` (model and input normalisation).
#[path = "cnn_mnist.rs"]
#[allow(dead_code)]
mod cnn_mnist;
use cnn_mnist::{model, normalise};
// The IMDB model and its data encoding.
#[path = "imdb_lstm.rs"]
#[allow(dead_code)]
mod imdb_lstm;
use imdb_lstm::{encode, SentimentLstm, NUM_WORDS};
#[path = "common.rs"]
mod common;
use common::{data_folder, env_usize, first, OrStop};

/// What to run: the full recipe, or a slice of it for the smoke test.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Use the first this many MNIST training images (`None`: all 60,000).
    pub mnist_train_samples: Option<usize>,
    /// Use the first this many MNIST test images (`None`: all 10,000).
    pub mnist_test_samples: Option<usize>,
    /// Use the first this many IMDB training reviews (`None`: all 25,000).
    pub imdb_train_samples: Option<usize>,
    /// Use this many IMDB test reviews (`None`: all 25,000).
    pub imdb_test_samples: Option<usize>,
    /// Words kept per review.
    pub maxlen: usize,
    /// Training epochs of each model.
    pub epochs: usize,
    /// Timed runs per measurement (the median is reported).
    pub timing_runs: usize,
    /// Print progress.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS`, `KILN_TRAIN_SAMPLES`, `KILN_TEST_SAMPLES`).
    pub fn full() -> Self {
        Opts {
            mnist_train_samples: None,
            mnist_test_samples: None,
            imdb_train_samples: env_usize("KILN_TRAIN_SAMPLES"),
            imdb_test_samples: env_usize("KILN_TEST_SAMPLES"),
            maxlen: 200,
            epochs: env_usize("KILN_EPOCHS").unwrap_or(1),
            timing_runs: 7,
            verbose: true,
        }
    }

    /// A few hundred images and short reviews, one epoch, silent.
    pub fn smoke() -> Self {
        Opts {
            mnist_train_samples: Some(256),
            mnist_test_samples: Some(128),
            imdb_train_samples: Some(256),
            imdb_test_samples: Some(128),
            maxlen: 40,
            epochs: 1,
            timing_runs: 1,
            verbose: false,
        }
    }
}

/// `f32` against bfloat16 figures of one model.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Test accuracy of the `f32` model.
    pub f32_accuracy: f64,
    /// Test accuracy of the bfloat16 model.
    pub bf16_accuracy: f64,
    /// Share of test samples on which both predict the same class.
    pub agreement: f64,
    /// Largest absolute difference of the outputs (log-probabilities or logits).
    pub max_output_difference: f32,
    /// Bytes of the parameters: `[f32, bf16]`.
    pub param_bytes: [usize; 2],
    /// Milliseconds per sample at batch 1 and at batch 64: `[[f32, bf16]; 2]`.
    pub ms_per_sample: [[f64; 2]; 2],
    /// Test samples.
    pub test_samples: usize,
}

/// The figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// The MNIST CNN.
    pub cnn: Comparison,
    /// The IMDB LSTM.
    pub lstm: Comparison,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
}

/// The median wall time of `runs` calls of `f`, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Milliseconds per sample of `forward` at batch 1 (over 16 samples) and at batch 64.
fn per_sample(runs: usize, inputs: &Tensor, forward: &dyn Fn(&Tensor) -> Tensor) -> [f64; 2] {
    let inputs = if inputs.shape()[0] >= 64 { inputs.clone() } else { Tensor::cat(&vec![inputs.clone(); 64], 0) };
    let singles: Vec<Tensor> = (0..16).map(|i| inputs.narrow(0, i, 1).contiguous()).collect();
    let b1 = median_ms(runs, || singles.iter().for_each(|x| drop(forward(x)))) / 16.0;
    let batch = inputs.narrow(0, 0, 64).contiguous();
    let b64 = median_ms(runs, || drop(forward(&batch))) / 64.0;
    [b1, b64]
}

/// Accuracy of both models, agreement and largest output difference over `batches`;
/// `predict` turns outputs into classes.
fn compare<'a>(
    batches: impl Iterator<Item = (Tensor, Vec<usize>)>,
    f32_forward: &dyn Fn(&Tensor) -> Tensor,
    bf16_forward: &dyn Fn(&Tensor) -> Tensor,
    predict: &'a dyn Fn(&Tensor) -> Vec<usize>,
) -> (f64, f64, f64, f32, usize) {
    let (mut right32, mut right16, mut same, mut n, mut diff) = (0, 0, 0, 0, 0f32);
    for (x, labels) in batches {
        let (a, b) = (f32_forward(&x), bf16_forward(&x));
        diff = diff.max(a.sub(&b).abs().max_all());
        let (pa, pb) = (predict(&a), predict(&b));
        for ((p, q), y) in pa.iter().zip(&pb).zip(&labels) {
            right32 += usize::from(p == y);
            right16 += usize::from(q == y);
            same += usize::from(p == q);
        }
        n += labels.len();
    }
    let share = |k: usize| k as f64 / n.max(1) as f64;
    (share(right32), share(right16), share(same), diff, n)
}

/// The IMDB model in bfloat16: the three layers converted one by one.
struct Bf16Sentiment {
    embedding: Bf16Embedding,
    lstm: Bf16LSTM,
    fc: Bf16Linear,
}

impl Bf16Sentiment {
    // ANCHOR: lstm
    fn new(m: &SentimentLstm) -> Self {
        Bf16Sentiment {
            embedding: Bf16Embedding::from_embedding(&m.embedding),
            lstm: Bf16LSTM::from_lstm(&m.lstm),
            fc: Bf16Linear::from_linear(&m.fc),
        }
    }

    /// Word ids `[N, T]` (as floats) to logits `[N, 1]`; bfloat16 from the embedding on.
    fn forward(&self, ids: &Tensor) -> Tensor {
        let words = self.embedding.forward_tensor(ids); // ids read exactly
        let (_, h_n, _) = self.lstm.forward_bf16(&words);
        let last = h_n.reshape(&h_n.shape()[1..]); // one layer, one direction: [N, 64]
        self.fc.forward_bf16(&last).to_f32()
    }
    // ANCHOR_END: lstm

    fn param_bytes(&self) -> usize {
        self.embedding.param_bytes() + self.lstm.param_bytes() + self.fc.param_bytes()
    }
}

/// Trains, converts, measures; `Err` when the MNIST or IMDB files cannot be read.
pub fn run(opts: &Opts) -> Result<Report, DataError> {
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let verbosity = if opts.verbose { Verbosity::ProgressBar } else { Verbosity::Silent };

    // 1. The MNIST CNN, trained briefly as in cnn_mnist.rs.
    let dir = data_folder("mnist");
    let train = first(Mnist::new(&dir, Split::Train)?, opts.mnist_train_samples).map_input(normalise);
    let test = first(Mnist::new(&dir, Split::Test)?, opts.mnist_test_samples).map_input(normalise);
    if opts.verbose {
        println!("MNIST: {} training and {} test images", train.len(), test.len());
    }
    let train = DataLoader::new(train, 64).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);
    let mut cnn = model();
    let mut opt = Adam::new(cnn.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let schedule = StepLR::new(&mut opt, 1, 0.7);
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .scheduler(schedule, SchedulerInterval::Epoch)
        .verbosity(verbosity);
    trainer.fit(&mut cnn, &mut opt, &NLLLoss::default(), &train, None).or_stop();
    cnn.eval();

    // ANCHOR: convert
    // 2. Convert a copy (`bf16_sequential` takes the model by value; the f32 one stays here).
    let mut copy = model();
    copy.load_state_dict(&cnn.state_dict(), true).or_stop();
    let half = bf16_sequential(copy);
    if opts.verbose {
        println!("{half}");
    }
    // ANCHOR_END: convert
    let f32_forward = |x: &Tensor| no_grad(|| cnn.forward(&Var::constant(x.clone())).value());
    let bf16_forward = |x: &Tensor| half.forward_tensor(x);
    let argmax = |y: &Tensor| y.argmax(1, false).as_slice().to_vec();
    let batches = test.iter().map(|b| (b.inputs, b.targets.classes().to_vec()));
    let (f32_accuracy, bf16_accuracy, agreement, max_output_difference, test_samples) =
        compare(batches, &f32_forward, &bf16_forward, &argmax);
    let images = test.iter().next().expect("a test batch").inputs;
    let [f1, f64_] = per_sample(opts.timing_runs, &images, &f32_forward);
    let [h1, h64] = per_sample(opts.timing_runs, &images, &bf16_forward);
    let cnn_report = Comparison {
        f32_accuracy,
        bf16_accuracy,
        agreement,
        max_output_difference,
        param_bytes: [4 * cnn.num_parameters(), half.param_bytes()],
        ms_per_sample: [[f1, h1], [f64_, h64]],
        test_samples,
    };

    // 3. The IMDB LSTM, trained as in imdb_lstm.rs.
    kiln::nn::init::manual_seed(0);
    let dir = data_folder("imdb");
    let config = ImdbConfig { num_words: Some(NUM_WORDS), ..Default::default() };
    let train = encode(&Imdb::new(&dir, Split::Train, &config)?, opts.imdb_train_samples, opts.maxlen);
    let test = encode(&Imdb::new(&dir, Split::Test, &config)?, opts.imdb_test_samples, opts.maxlen);
    if opts.verbose {
        println!("IMDB: {} training and {} test reviews, {} words each", train.len(), test.len(), opts.maxlen);
    }
    let train = DataLoader::new(train, 32).shuffle(true).seed(1);
    let test = DataLoader::new(test, 500);
    let mut lstm = SentimentLstm::new();
    let mut opt = Adam::new(lstm.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::binary().with_threshold(0.0))
        .clip_grad_norm(5.0)
        .verbosity(verbosity);
    trainer.fit(&mut lstm, &mut opt, &BCEWithLogitsLoss::default(), &train, None).or_stop();
    lstm.eval();
    let half = Bf16Sentiment::new(&lstm);
    let f32_forward = |x: &Tensor| no_grad(|| lstm.forward(&Var::constant(x.clone())).value());
    let bf16_forward = |x: &Tensor| half.forward(x);
    // a logit >= 0 predicts a positive review
    let positive = |y: &Tensor| y.to_vec().iter().map(|&v| usize::from(v >= 0.0)).collect();
    let batches = test.iter().map(|b| {
        let labels = b.targets.values().to_vec().iter().map(|&v| usize::from(v >= 0.5)).collect();
        (b.inputs, labels)
    });
    let (f32_accuracy, bf16_accuracy, agreement, max_output_difference, test_samples) =
        compare(batches, &f32_forward, &bf16_forward, &positive);
    let reviews = test.iter().next().expect("a test batch").inputs;
    let [f1, f64_] = per_sample(opts.timing_runs.min(3), &reviews, &f32_forward);
    let [h1, h64] = per_sample(opts.timing_runs.min(3), &reviews, &bf16_forward);
    let lstm_report = Comparison {
        f32_accuracy,
        bf16_accuracy,
        agreement,
        max_output_difference,
        param_bytes: [4 * lstm.num_parameters(), half.param_bytes()],
        ms_per_sample: [[f1, h1], [f64_, h64]],
        test_samples,
    };
    Ok(Report { cnn: cnn_report, lstm: lstm_report, seconds: started.elapsed().as_secs_f64() })
}

fn print(name: &str, unit: &str, c: &Comparison) {
    println!("{name}, f32 against bfloat16 ({} test {unit}s):", c.test_samples);
    println!(
        "  test accuracy     f32 {:.2}%   bf16 {:.2}%   ({:+.2} points)",
        100.0 * c.f32_accuracy,
        100.0 * c.bf16_accuracy,
        100.0 * (c.bf16_accuracy - c.f32_accuracy)
    );
    println!(
        "  same prediction   {:.2}% of {unit}s; largest output difference {:.4}",
        100.0 * c.agreement,
        c.max_output_difference
    );
    let [f, h] = c.param_bytes;
    println!(
        "  parameters        f32 {:.1} KiB   bf16 {:.1} KiB   ({:.2}x smaller)",
        f as f64 / 1024.0,
        h as f64 / 1024.0,
        f as f64 / h as f64
    );
    for (batch, [f, h]) in [("batch 1 ", c.ms_per_sample[0]), ("batch 64", c.ms_per_sample[1])] {
        println!("  {batch} per {unit}  f32 {f:.3} ms   bf16 {h:.3} ms   ({:.2}x)", f / h);
    }
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => {
            println!(
                "measured on this machine: {} threads, bf16 GEMM kernel {:?}",
                kiln::tensor::get_num_threads(),
                Bf16Isa::detect()
            );
            print("CNN on MNIST", "image", &r.cnn);
            print("LSTM on IMDB", "review", &r.lstm);
            println!("  total {:.1} s", r.seconds);
        }
        Err(e) => {
            eprintln!("cannot read the data ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    }
}
