//! Extending kiln from your own crate: a new differentiable op (`softsign`), a new layer with a
//! parameter (`ScaledSoftsign`) and a new optimiser (`Signum`), each written in this file
//! against kiln's public traits and checked (a finite-difference gradcheck, a state-dict round
//! trip), then used together to train an MLP on the 8x8 handwritten digits embedded in
//! kiln-data (1,797 real samples, no download).
//!
//! ```text
//! Linear(64, 64) -> ScaledSoftsign(64) -> Linear(64, 10)      cross-entropy, Signum
//! ```
//!
//!     cargo run --release --example extending_kiln
//!
//! The book's chapter "Extending kiln" walks through this file beside the in-tree versions
//! (an op file of kiln-autograd, a layer file of kiln-nn, an optimiser file of kiln-optim).

use std::fmt;
use std::time::Instant;

use kiln::autograd::{gradcheck, unary_op, Var};
use kiln::data::datasets::Digits;
use kiln::data::{random_split, DataLoader, Dataset, DatasetExt};
use kiln::metrics::Accuracy;
use kiln::nn::{CrossEntropyLoss, Forward, Linear, Module, Sequential};
use kiln::optim::{MissingKey, Optimizer, ParamState, RuleOptimizer, SGDConfig, UpdateRule};
use kiln::tensor::{Float, Tensor};
use kiln::train::{Trainer, Verbosity};

#[path = "common.rs"]
mod common;
use common::env_usize;

// ANCHOR: op
/// `softsign(x) = x / (1 + |x|)`, like `torch.nn.functional.softsign`.
// d softsign(x)/dx = 1 / (1 + |x|)^2
pub fn softsign<E: Float>(x: &Var<E>) -> Var<E> {
    unary_op(
        x,
        "softsign",
        |t: &Tensor<E>| t.map(|v| v / (E::one() + v.abs())),
        // Written with `Var` ops, so that the gradient is itself differentiable.
        |x, _out, g| {
            let d = x.abs().add_scalar(E::one());
            g.div(&d.mul(&d))
        },
    )
}
// ANCHOR_END: op

// ANCHOR: layer
/// `y = softsign(x) * gain`, with one learnable gain per feature (starting at 1).
///
/// # Shapes
/// Input `[N, *, features]`, output the same.
///
/// # Parameters
/// `gain`: `[features]`, ones.
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
pub struct ScaledSoftsign {
    /// The per-feature gain (a `Var` field is a parameter, named `gain` in the state dict).
    pub gain: Var<f32>,
}

impl ScaledSoftsign {
    /// A layer over `features` features.
    ///
    /// **Panics** if `features` is 0.
    pub fn new(features: usize) -> Self {
        assert!(features > 0, "ScaledSoftsign: features must be > 0, got 0");
        ScaledSoftsign { gain: Var::param(Tensor::ones(&[features])) }
    }
}

impl Forward<f32> for ScaledSoftsign {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        softsign(x).mul(&self.gain)
    }
}

impl fmt::Display for ScaledSoftsign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScaledSoftsign(features={})", self.gain.shape()[0])
    }
}
// ANCHOR_END: layer

// ANCHOR: optimizer
/// The update rule of Signum (Bernstein et al. 2018, "signSGD: Compressed Optimisation for
/// Non-Convex Problems"): SGD that steps by the sign of the momentum.
///
/// ```text
/// input: γ (lr), β (momentum), λ (weight decay), θ₀ (params)
/// initialize: m₀ ← 0
/// for t = 1 to ... do
///     g_t ← ∇_θ f_t(θ_{t-1}) + λ θ_{t-1}
///     m_t ← β m_{t-1} + (1 - β) g_t
///     θ_t ← θ_{t-1} - γ sign(m_t)
/// return θ_t
/// ```
///
/// It takes SGD's hyper-parameters (`lr`, `momentum`, `weight_decay`; the others are not
/// used), so it needs no configuration type of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct SignumRule;

/// Signum: kiln's generic optimiser driven by [`SignumRule`] (parameter groups, `zero_grad`,
/// state dicts and learning-rate schedulers come with it).
pub type Signum = RuleOptimizer<f32, SignumRule>;

impl<E: Float> UpdateRule<E> for SignumRule {
    const NAME: &'static str = "Signum";
    type Config = SGDConfig;
    /// The momentum buffer m.
    type State = Tensor<E>;

    fn init_state(_: &SGDConfig, param: &Tensor<E>) -> Tensor<E> {
        Tensor::zeros(param.shape())
    }

    fn update(c: &SGDConfig, param: &mut Tensor<E>, grad: &Tensor<E>, m: &mut Tensor<E>) {
        let (lr, beta, wd) = (E::from_f64(c.lr), E::from_f64(c.momentum), E::from_f64(c.weight_decay));
        let grad = grad.contiguous();
        let g = grad.as_slice().expect("a contiguous tensor");
        for ((p, m), &g) in param.as_mut_slice().iter_mut().zip(m.as_mut_slice()).zip(g) {
            *m = beta * *m + (E::one() - beta) * (g + wd * *p);
            let sign = if *m > E::zero() {
                E::one()
            } else if *m < E::zero() {
                -E::one()
            } else {
                E::zero()
            };
            *p -= lr * sign;
        }
    }

    fn save_state(m: &Tensor<E>) -> ParamState<E> {
        ParamState::new(None).with("momentum_buffer", m)
    }

    fn load_state(_: &SGDConfig, state: &mut ParamState<E>) -> Result<Tensor<E>, MissingKey> {
        state.take("momentum_buffer")
    }
}
// ANCHOR_END: optimizer

/// What to run: the full recipe, or a shorter one for the tests.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Training epochs.
    pub epochs: usize,
    /// Print one line per epoch.
    pub verbose: bool,
}

impl Opts {
    /// The recipe as documented (`KILN_EPOCHS` overrides the epochs).
    pub fn full() -> Self {
        Opts { epochs: env_usize("KILN_EPOCHS").unwrap_or(30), verbose: true }
    }

    /// A few epochs, silent.
    pub fn smoke() -> Self {
        Opts { epochs: 5, verbose: false }
    }
}

/// The checks and the figures reached.
#[derive(Clone, Debug)]
pub struct Report {
    /// Input elements whose `softsign` gradient matched finite differences.
    pub gradcheck_checked: usize,
    /// Largest |analytical - numerical| gradient difference.
    pub gradcheck_max_error: f64,
    /// Whether a fresh `Signum` loaded from the trained one's state dict has the same state.
    pub state_dict_round_trip: bool,
    /// Largest change of a `ScaledSoftsign` gain during training (0 would mean no gradient).
    pub gain_change: f32,
    /// Accuracy on the held-out fifth of the digits.
    pub test_accuracy: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Checks the op, trains the network with the new layer and optimiser, and checks the
/// optimiser's state dict.
///
/// # Errors
/// The gradient check's, the trainer's or the state dict's error.
pub fn run(opts: &Opts) -> Result<Report, Box<dyn std::error::Error>> {
    let started = Instant::now();

    // ANCHOR: check
    // The op's gradient against central finite differences, in f64.
    let x = Tensor::from_vec(vec![-2.0f64, -0.3, 0.0, 0.4, 1.5, 3.0], &[2, 3]);
    let check = gradcheck(|v| softsign(&v[0]), &[x], 1e-6, 1e-6, 1e-5)?;
    // ANCHOR_END: check

    kiln::nn::init::manual_seed(0);
    let digits = Digits::load()
        .map_input(|x: Vec<f32>, _: &mut kiln::tensor::Rng| x.into_iter().map(|v| v / 16.0).collect::<Vec<f32>>());
    let n = digits.len();
    let mut parts = random_split(digits, &[n - n / 5, n / 5], 42).into_iter();
    let (train, test) = (parts.next().expect("two parts"), parts.next().expect("two parts"));
    let train = DataLoader::new(train, 32).shuffle(true).seed(1);
    let test = DataLoader::new(test, 256);

    // ANCHOR: train
    let mut model: Sequential =
        Sequential::new().add(Linear::new(64, 64)).add(ScaledSoftsign::new(64)).add(Linear::new(64, 10));
    let mut opt = Signum::new(model.parameters(), SGDConfig { lr: 1e-3, momentum: 0.9, ..Default::default() });
    let mut trainer = Trainer::new(opts.epochs)
        .metric("accuracy", || Accuracy::multiclass(10))
        .verbosity(if opts.verbose { Verbosity::Epochs } else { Verbosity::Silent });
    let loss = CrossEntropyLoss::default();
    trainer.fit(&mut model, &mut opt, &loss, &train, Some(&test))?;
    let test_accuracy = trainer.evaluate(&mut model, &loss, &test)?["accuracy"];
    // ANCHOR_END: train
    if opts.verbose {
        println!("{model}");
    }

    // The gains moved (gradients reached the new layer's parameter).
    let gain = model.named_parameters().into_iter().find(|(k, _)| k == "1.gain").expect("the layer's gain").1;
    let gain_change = gain.value().to_vec().iter().map(|g| (g - 1.0).abs()).fold(0.0f32, f32::max);

    // The optimiser's state survives a state-dict round trip.
    let saved = opt.state_dict();
    let mut fresh = Signum::new(model.parameters(), SGDConfig { lr: 1e-3, momentum: 0.9, ..Default::default() });
    fresh.load_state_dict(&saved)?;
    let state_dict_round_trip = fresh.state_dict() == saved;

    Ok(Report {
        gradcheck_checked: check.checked,
        gradcheck_max_error: check.max_abs_error,
        state_dict_round_trip,
        gain_change,
        test_accuracy,
        epochs: opts.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() {
    match run(&Opts::full()) {
        Ok(r) => println!(
            "softsign gradcheck: {} elements, max error {:.1e}; Signum state dict round trip: {}; \
             largest gain change {:.3}; held-out accuracy {:.2}% after {} epochs, {:.1} s",
            r.gradcheck_checked,
            r.gradcheck_max_error,
            r.state_dict_round_trip,
            r.gain_change,
            100.0 * r.test_accuracy,
            r.epochs,
            r.seconds
        ),
        Err(e) => {
            eprintln!("extending_kiln: {e}");
            std::process::exit(1);
        }
    }
}
