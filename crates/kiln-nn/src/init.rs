//! Parameter initialisation with PyTorch's formulas (`torch.nn.init`), and the generator that
//! layer constructors draw from.
//!
//! Layers initialise themselves from the generator seeded by [`manual_seed`] (like
//! `torch.manual_seed`); the functions here take an explicit [`Rng`].
//!
//! [`manual_seed`] gives the calling thread its own generator, and also reseeds the default
//! generator that threads which never called it share. So a program (or a test) that seeds and
//! then builds its model on one thread gets the same weights whatever other threads build at
//! the same time, and a model built on a worker thread after the main thread seeded still
//! draws from seeded values.

use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};

use kiln_autograd::Var;
use kiln_tensor::{Float, Rng, Tensor};

/// The default generator of threads that never called [`manual_seed`].
fn shared() -> &'static Mutex<Rng> {
    static G: OnceLock<Mutex<Rng>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(Rng::new(0)))
}

thread_local! {
    /// This thread's own generator, from its first [`manual_seed`] on.
    static LOCAL: RefCell<Option<Rng>> = const { RefCell::new(None) };
}

/// Seeds the generator layer constructors use, like `torch.manual_seed`: the same seed gives
/// the same initial weights.
///
/// The calling thread draws from its own generator from now on, which no other thread
/// advances; threads that never called `manual_seed` share a default generator, which this
/// reseeds too.
///
/// ```
/// use kiln_nn::{init, Linear};
/// init::manual_seed(7);
/// let a: Linear = Linear::new(3, 2);
/// init::manual_seed(7);
/// let b: Linear = Linear::new(3, 2);
/// assert_eq!(a.weight.value().to_vec(), b.weight.value().to_vec());
/// ```
pub fn manual_seed(seed: u64) {
    LOCAL.with(|l| *l.borrow_mut() = Some(Rng::new(seed)));
    *shared().lock().unwrap_or_else(|e| e.into_inner()) = Rng::new(seed);
}

/// Runs `f` with the generator layer constructors draw from: this thread's own after it
/// called [`manual_seed`], else the shared default.
pub fn with_rng<R>(f: impl FnOnce(&mut Rng) -> R) -> R {
    LOCAL
        .with(|l| match l.borrow_mut().as_mut() {
            Some(rng) => Ok(f(rng)),
            None => Err(f),
        })
        .unwrap_or_else(|f| f(&mut shared().lock().unwrap_or_else(|e| e.into_inner())))
}

/// Runs `f` with `rng` as this thread's generator: every layer constructor and init function
/// that `f` runs through [`with_rng`] draws from `rng`, which is left advanced by those draws.
/// This thread's previous generator (or the shared default) is restored afterwards, unchanged,
/// also when `f` panics. Calls nest.
///
/// This is how a constructor takes an explicit generator: wrap it.
///
/// ```
/// use kiln_nn::{init, Linear};
/// use kiln_tensor::Rng;
/// let mut rng = Rng::new(7);
/// let a: Linear = init::with_generator(&mut rng, || Linear::new(3, 2));
/// init::manual_seed(7);
/// let b: Linear = Linear::new(3, 2);
/// assert_eq!(a.weight.value().to_vec(), b.weight.value().to_vec());
/// assert_ne!(rng, Rng::new(7)); // advanced by the draws
/// ```
pub fn with_generator<R>(rng: &mut Rng, f: impl FnOnce() -> R) -> R {
    /// Puts the previous generator back and the used one into `rng`, on return or unwind.
    struct Restore<'a> {
        rng: &'a mut Rng,
        previous: Option<Rng>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let used = LOCAL.with(|l| std::mem::replace(&mut *l.borrow_mut(), self.previous.take()));
            if let Some(used) = used {
                *self.rng = used;
            }
        }
    }
    let previous = LOCAL.with(|l| l.borrow_mut().replace(rng.clone()));
    let _restore = Restore { rng, previous };
    f()
}

/// The init generator's state before and after a layer's constructor drew its parameters.
///
/// A layer keeps it (not a parameter) so that a builder setter that changes parameter shapes
/// (`LSTM::new(8, 16).num_layers(2)`) can draw them again from the same starting state, giving
/// what the configuration's `build` would have given after the same [`manual_seed`].
#[derive(Clone, Debug)]
pub(crate) struct Drawn {
    before: Rng,
    after: Rng,
}

impl Drawn {
    /// The current state of this thread's generator, before a constructor draws.
    pub(crate) fn start() -> Self {
        let now = with_rng(|g| g.clone());
        Drawn { before: now.clone(), after: now }
    }

    /// Records the generator's state after the constructor drew.
    pub(crate) fn finish(&mut self) {
        self.after = with_rng(|g| g.clone());
    }

    /// Runs the constructor `f` from the recorded starting state instead, through
    /// [`with_generator`]. When this thread's generator is still where the first constructor
    /// left it (nothing drew since, as in a builder chain), it moves on to where `f` leaves the
    /// generator, so that what is built next draws what it would after `f` alone; otherwise it
    /// is left alone.
    pub(crate) fn redo<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut g = self.before.clone();
        let r = with_generator(&mut g, f);
        with_rng(|current| {
            if *current == self.after {
                *current = g;
            }
        });
        r
    }
}

/// Non-linearities for [`calculate_gain`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlinearity {
    /// Linear / identity / conv: gain 1.
    Linear,
    /// Sigmoid: gain 1.
    Sigmoid,
    /// Tanh: gain 5/3.
    Tanh,
    /// ReLU: gain sqrt(2).
    Relu,
    /// Leaky ReLU with the given negative slope: gain sqrt(2 / (1 + slope^2)).
    LeakyRelu(f64),
    /// SELU: gain 3/4.
    Selu,
}

/// The recommended gain for a non-linearity, like `torch.nn.init.calculate_gain`.
pub fn calculate_gain(nl: Nonlinearity) -> f64 {
    match nl {
        Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu(s) => (2.0 / (1.0 + s * s)).sqrt(),
        Nonlinearity::Selu => 0.75,
    }
}

/// `(fan_in, fan_out)` of a weight shape as PyTorch computes them: dims 1 and 0 times the
/// receptive field (the product of the remaining dims).
///
/// **Panics** for fewer than 2 dimensions.
pub fn fan_in_and_fan_out(shape: &[usize]) -> (usize, usize) {
    assert!(shape.len() >= 2, "fan_in_and_fan_out: needs at least 2 dims, got {shape:?}");
    let rf: usize = shape[2..].iter().product();
    (shape[1] * rf, shape[0] * rf)
}

/// Which fan kaiming init scales by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// Preserve the forward pass's variance (PyTorch's default).
    FanIn,
    /// Preserve the backward pass's variance.
    FanOut,
}

fn set<E: Float>(p: &Var<E>, t: Tensor<E>) {
    p.update_value(|v| *v = t);
}

/// Fills with U(a, b).
pub fn uniform_<E: Float>(p: &Var<E>, a: f64, b: f64, rng: &mut Rng) {
    set(p, Tensor::uniform(&p.shape(), a, b, rng));
}
/// Fills with N(mean, std²).
pub fn normal_<E: Float>(p: &Var<E>, mean: f64, std: f64, rng: &mut Rng) {
    set(p, Tensor::normal(&p.shape(), mean, std, rng));
}
/// Fills with a constant.
pub fn constant_<E: Float>(p: &Var<E>, value: f64) {
    p.update_value(|v| v.fill_(E::from_f64(value)));
}
/// Fills with zeros.
pub fn zeros_<E: Float>(p: &Var<E>) {
    constant_(p, 0.0)
}
/// Fills with ones.
pub fn ones_<E: Float>(p: &Var<E>) {
    constant_(p, 1.0)
}
/// Glorot uniform: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform_<E: Float>(p: &Var<E>, gain: f64, rng: &mut Rng) {
    let (fi, fo) = fan_in_and_fan_out(&p.shape());
    let b = gain * (6.0 / (fi + fo) as f64).sqrt();
    uniform_(p, -b, b, rng)
}
/// Glorot normal: N(0, std²), std = gain * sqrt(2 / (fan_in + fan_out)).
pub fn xavier_normal_<E: Float>(p: &Var<E>, gain: f64, rng: &mut Rng) {
    let (fi, fo) = fan_in_and_fan_out(&p.shape());
    normal_(p, 0.0, gain * (2.0 / (fi + fo) as f64).sqrt(), rng)
}
/// He uniform: U(-b, b), b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity).
/// PyTorch's layers use `a = sqrt(5)` with leaky ReLU, giving b = 1/sqrt(fan_in).
pub fn kaiming_uniform_<E: Float>(p: &Var<E>, nl: Nonlinearity, mode: FanMode, rng: &mut Rng) {
    let (fi, fo) = fan_in_and_fan_out(&p.shape());
    let fan = if mode == FanMode::FanIn { fi } else { fo };
    let b = calculate_gain(nl) * (3.0 / fan as f64).sqrt();
    uniform_(p, -b, b, rng)
}
/// He normal: N(0, std²), std = gain / sqrt(fan).
pub fn kaiming_normal_<E: Float>(p: &Var<E>, nl: Nonlinearity, mode: FanMode, rng: &mut Rng) {
    let (fi, fo) = fan_in_and_fan_out(&p.shape());
    let fan = if mode == FanMode::FanIn { fi } else { fo };
    normal_(p, 0.0, calculate_gain(nl) / (fan as f64).sqrt(), rng)
}
/// A (semi-)orthogonal matrix (rows or columns orthonormal) times `gain`, from the QR
/// decomposition of a normal matrix with the sign correction of `torch.nn.init.orthogonal_`.
/// Dims beyond the first are flattened.
pub fn orthogonal_<E: Float>(p: &Var<E>, gain: f64, rng: &mut Rng) {
    let shape = p.shape();
    assert!(shape.len() >= 2, "orthogonal_: needs at least 2 dims, got {:?}", shape.as_slice());
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    // QR of the tall orientation by modified Gram-Schmidt.
    let (m, n) = if rows < cols { (cols, rows) } else { (rows, cols) };
    let a: Vec<f64> = (0..m * n).map(|_| rng.normal_f64()).collect();
    let mut q = a.clone(); // m x n, column j at q[i*n + j]
    for j in 0..n {
        for k in 0..j {
            let dot: f64 = (0..m).map(|i| q[i * n + j] * q[i * n + k]).sum();
            for i in 0..m {
                q[i * n + j] -= dot * q[i * n + k];
            }
        }
        let norm: f64 = (0..m).map(|i| q[i * n + j] * q[i * n + j]).sum::<f64>().sqrt();
        // r_jj = norm > 0; PyTorch multiplies by sign(diag(r)), which is +1 here
        for i in 0..m {
            q[i * n + j] /= norm;
        }
    }
    let mut out = vec![E::zero(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let v = if rows < cols { q[c * n + r] } else { q[r * n + c] };
            out[r * cols + c] = E::from_f64(gain * v);
        }
    }
    set(p, Tensor::from_vec(out, &shape));
}

/// PyTorch's default init of Linear and Conv weights: `kaiming_uniform_(a = sqrt 5)`, i.e.
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias gets the same bound.
pub fn default_weight_bias<E: Float>(weight: &Var<E>, bias: Option<&Var<E>>, rng: &mut Rng) {
    kaiming_uniform_(weight, Nonlinearity::LeakyRelu(5f64.sqrt()), FanMode::FanIn, rng);
    if let Some(b) = bias {
        let (fi, _) = fan_in_and_fan_out(&weight.shape());
        let bound = if fi > 0 { 1.0 / (fi as f64).sqrt() } else { 0.0 };
        uniform_(b, -bound, bound, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that seeds gets the same draws whatever other threads draw or seed meanwhile.
    #[test]
    fn seeded_draws_do_not_race_with_other_threads() {
        let draw = |seed: u64| {
            manual_seed(seed);
            (0..200).map(|_| with_rng(|r| r.next_f64())).collect::<Vec<_>>()
        };
        let alone = draw(11);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noise: Vec<_> = (0..3)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    if i == 0 {
                        manual_seed(99); // reseeds the shared default mid-way, too
                    }
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        with_rng(|r| r.next_f64());
                    }
                })
            })
            .collect();
        let together: Vec<Vec<f64>> =
            (0..4).map(|_| std::thread::spawn(move || draw(11))).map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.into_iter().for_each(|h| h.join().unwrap());
        assert!(together.iter().all(|t| *t == alone));
    }

    #[test]
    fn with_generator_leaves_the_thread_generator_and_advances_the_given_one() {
        manual_seed(21);
        let thread_before = with_rng(|g| g.clone());
        let mut rng = Rng::new(5);
        let mut expected = Rng::new(5);
        let drawn = with_generator(&mut rng, || with_rng(|g| (g.next_u64(), g.next_u64())));
        assert_eq!(drawn, (expected.next_u64(), expected.next_u64()));
        assert_eq!(rng, expected);
        assert_eq!(with_rng(|g| g.clone()), thread_before);
        // restored on panic too, with the draws made before it written back
        let mut rng = Rng::new(6);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_generator(&mut rng, || {
                with_rng(|g| g.next_u64());
                panic!("inside");
            })
        }));
        assert!(caught.is_err());
        let mut once = Rng::new(6);
        once.next_u64();
        assert_eq!(rng, once);
        assert_eq!(with_rng(|g| g.clone()), thread_before);
    }

    #[test]
    fn with_generator_on_a_thread_that_never_seeded_restores_the_shared_default() {
        std::thread::spawn(|| {
            let mut rng = Rng::new(3);
            with_generator(&mut rng, || with_rng(|g| g.next_u64()));
            assert!(LOCAL.with(|l| l.borrow().is_none()));
            assert_ne!(rng, Rng::new(3));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn gains_match_pytorch() {
        assert_eq!(calculate_gain(Nonlinearity::Tanh), 5.0 / 3.0);
        assert!((calculate_gain(Nonlinearity::LeakyRelu(5f64.sqrt())) - (1.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        let mut rng = Rng::new(1);
        for shape in [[3usize, 5], [5, 3], [4, 4]] {
            let p = Var::param(Tensor::<f64>::zeros(&shape));
            orthogonal_(&p, 1.0, &mut rng);
            let w = p.value();
            let g = if shape[0] <= shape[1] { w.matmul(&w.t()) } else { w.t().matmul(&w) };
            let k = shape[0].min(shape[1]);
            let eye = Tensor::<f64>::eye(k);
            for (a, b) in g.to_vec().iter().zip(eye.to_vec()) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn xavier_and_kaiming_bounds() {
        let mut rng = Rng::new(2);
        let p = Var::param(Tensor::<f64>::zeros(&[64, 32]));
        xavier_uniform_(&p, 1.0, &mut rng);
        let b = (6.0f64 / 96.0).sqrt();
        assert!(p.value().abs().max_all() <= b);
        assert!(p.value().abs().max_all() > 0.9 * b);
        kaiming_normal_(&p, Nonlinearity::Relu, FanMode::FanIn, &mut rng);
        let std = p.value().std(&[], 1, false).item();
        assert!((std - (2.0f64 / 32.0).sqrt()).abs() < 0.02, "{std}");
    }
}
