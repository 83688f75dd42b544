//! Dropout: `Dropout` (elements) and `Dropout2d` (whole channels), `y = x · m / (1 - p)` with
//! `m ~ Bernoulli(1 - p)` while training, the identity in eval mode: one implementation,
//! [`DropoutLayer`], whose [`DropoutKind`] says what a mask entry covers.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;

use kiln_autograd::Var;
use kiln_tensor::{Float, Rng};
use serde_json::{json, Map, Value};

use crate::error::NnError;
use crate::init;
use crate::module::{Forward, Module, TensorKind};
use crate::registry::{object, Args, LayerSpec};

/// What one draw of a [`DropoutLayer`]'s mask covers: a single element ([`DropElements`],
/// `Dropout`) or a whole channel ([`DropChannels`], `Dropout2d`).
pub trait DropoutKind: Send + Sync + 'static {
    /// PyTorch's class name.
    const NAME: &'static str;

    /// Inverted dropout of `x` with probability `p` while `training`, the identity otherwise.
    fn apply<E: Float>(x: &Var<E>, p: f64, training: bool, rng: &mut Rng) -> Var<E>;
}

/// Each element is dropped on its own ([`Dropout`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DropElements;

impl DropoutKind for DropElements {
    const NAME: &'static str = "Dropout";

    fn apply<E: Float>(x: &Var<E>, p: f64, training: bool, rng: &mut Rng) -> Var<E> {
        x.dropout(p, training, rng)
    }
}

/// Each channel `x[n, c]` is dropped as a whole ([`Dropout2d`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DropChannels;

impl DropoutKind for DropChannels {
    const NAME: &'static str = "Dropout2d";

    fn apply<E: Float>(x: &Var<E>, p: f64, training: bool, rng: &mut Rng) -> Var<E> {
        x.dropout2d(p, training, rng)
    }
}

/// A generator of the layer's own, forked from the process-wide one: two dropout layers draw
/// different masks, and [`init::manual_seed`] before building makes the masks reproducible.
fn forked_rng() -> Mutex<Rng> {
    Mutex::new(init::with_rng(|r| r.fork()))
}

/// Inverted dropout (Srivastava et al., 2014), the implementation of [`Dropout`] and
/// [`Dropout2d`]: while training, each mask entry (an element or a channel, as `K` says) is
/// zeroed with probability `p` and the rest is scaled by `1 / (1 - p)`, so the expected
/// output is the input; in eval mode the layer is the identity.
///
/// Each layer draws its masks from its own generator, forked from the process-wide one when
/// the layer is built (seed with [`init::manual_seed`] first for reproducible masks).
pub struct DropoutLayer<K: DropoutKind> {
    /// Probability of zeroing a mask entry.
    pub p: f64,
    training: bool,
    rng: Mutex<Rng>,
    kind: PhantomData<K>,
}

/// Inverted dropout, like `torch.nn.Dropout` (Srivastava et al., 2014): while training, each
/// element is zeroed with probability `p` and the others are scaled by `1 / (1 - p)`, so the
/// expected output is the input; in eval mode the layer is the identity.
///
/// Each layer draws its masks from its own generator, forked from the process-wide one when
/// the layer is built (seed with [`init::manual_seed`] first for reproducible masks).
///
/// # Shapes
/// - Input: any
/// - Output: the input's shape
///
/// # Parameters
/// None.
///
/// ```
/// use kiln_nn::{Dropout, Forward, Module};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let mut drop = Dropout::new(0.5);
/// let x = Var::constant(Tensor::<f32>::ones(&[1000]));
/// let y = drop.forward(&x).value().to_vec();
/// assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
/// assert!(y.iter().filter(|&&v| v == 0.0).count() > 400); // about half are dropped
/// drop.eval();
/// assert_eq!(drop.forward(&x).value().to_vec(), vec![1.0; 1000]);
/// assert_eq!(drop.to_string(), "Dropout(p=0.5)");
/// ```
pub type Dropout = DropoutLayer<DropElements>;

/// Channel dropout, like `torch.nn.Dropout2d` (Tompson et al., 2015): while training, each
/// whole channel `x[n, c]` is zeroed with probability `p` and the others are scaled by
/// `1 / (1 - p)`; in eval mode the layer is the identity. Adjacent pixels of a feature map are
/// strongly correlated, so dropping single elements regularises convolutions little.
///
/// Each layer draws its masks from its own generator, forked from the process-wide one when
/// the layer is built.
///
/// # Shapes
/// - Input: `[N, C, H, W]` (or `[N, C, L]`, as PyTorch treats a 3-d input)
/// - Output: the input's shape
///
/// # Parameters
/// None.
///
/// **Panics** in `forward` when the input is neither 4-d nor 3-d.
///
/// ```
/// use kiln_nn::{Dropout2d, Forward};
/// use kiln_autograd::Var;
/// use kiln_tensor::Tensor;
/// let drop = Dropout2d::new(0.5);
/// let y = drop.forward(&Var::constant(Tensor::<f32>::ones(&[4, 16, 3, 3]))).value();
/// for n in 0..4 {
///     for c in 0..16 {
///         let plane = y.select(0, n).select(0, c).to_vec();
///         assert!(plane.iter().all(|&v| v == plane[0]) && (plane[0] == 0.0 || plane[0] == 2.0));
///     }
/// }
/// assert_eq!(drop.to_string(), "Dropout2d(p=0.5)");
/// ```
pub type Dropout2d = DropoutLayer<DropChannels>;

impl<K: DropoutKind> DropoutLayer<K> {
    /// A dropout layer in training mode.
    ///
    /// **Panics** if `p` is outside `[0, 1]` (use [`try_new`](Self::try_new) for a `Result`).
    pub fn new(p: f64) -> Self {
        Self::try_new(p).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A dropout layer in training mode.
    ///
    /// # Errors
    /// [`NnError::Config`] when `p` is outside `[0, 1]`.
    pub fn try_new(p: f64) -> Result<Self, NnError> {
        if !(0.0..=1.0).contains(&p) {
            return Err(NnError::Config(format!("{}: p must be in [0, 1], got {p}", K::NAME)));
        }
        Ok(DropoutLayer { p, training: true, rng: forked_rng(), kind: PhantomData })
    }

    /// Training mode: drop at random (the same as [`Module::train`], callable without naming
    /// the element type).
    pub fn train(&mut self) {
        self.training = true;
    }

    /// Evaluation mode: the identity (the same as [`Module::eval`]).
    pub fn eval(&mut self) {
        self.training = false;
    }

    /// Whether the layer is in training mode.
    #[must_use]
    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl<E: Float, K: DropoutKind> Forward<E> for DropoutLayer<K> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        K::apply(x, self.p, self.training, &mut rng)
    }
}

impl<E: Float, K: DropoutKind> Module<E> for DropoutLayer<K> {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Var<E>, TensorKind)) {}

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn is_training(&self) -> bool {
        self.training
    }
}

impl<K: DropoutKind> fmt::Display for DropoutLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(p={:?})", K::NAME, self.p)
    }
}

impl<K: DropoutKind> LayerSpec for DropoutLayer<K> {
    const TYPE_NAME: &'static str = K::NAME;
    const EXAMPLE: &'static str = r#"{"p": 0.25}"#;

    fn config(&self) -> Map<String, Value> {
        object(json!({"p": self.p}))
    }

    fn from_config(a: &mut Args) -> Result<Self, NnError> {
        a.not_inplace()?;
        Self::try_new(a.f64("p", 0.5)?)
    }
}

crate::register_layer!(Dropout);
crate::register_layer!(Dropout2d);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::descend;
    use crate::layers::Linear;
    use kiln_autograd::gradcheck;
    use kiln_tensor::Tensor;
    use std::marker::PhantomData;

    #[test]
    fn shapes_modes_and_rates() {
        let mut d = Dropout::new(0.25);
        let x = Var::constant(Tensor::<f64>::ones(&[40, 50]));
        let y = d.forward(&x).value();
        assert_eq!(y.shape(), &[40, 50]);
        let dropped = y.to_vec().iter().filter(|&&v| v == 0.0).count() as f64 / 2000.0;
        assert!((dropped - 0.25).abs() < 0.04, "{dropped}");
        assert!(y.to_vec().iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-15));
        // masks differ from call to call
        assert_ne!(d.forward(&x).value().to_vec(), y.to_vec());
        assert!(d.is_training());
        d.eval();
        assert!(d.forward(&x).same(&x));
        let d2 = Dropout2d::new(0.5);
        assert_eq!(d2.forward(&Var::constant(Tensor::<f64>::ones(&[2, 3, 5]))).shape().as_slice(), &[2, 3, 5]);
        // p = 1 drops everything, p = 0 nothing
        assert_eq!(Dropout::new(1.0).forward(&x).value().sum_all().item(), 0.0);
        assert!(Dropout::new(0.0).forward(&x).same(&x));
    }

    /// A layer with a generator of its own seed (tests must not race on the global one).
    fn seeded(p: f64, seed: u64) -> Dropout {
        Dropout { p, training: true, rng: Mutex::new(Rng::new(seed)), kind: PhantomData }
    }

    #[test]
    fn layers_draw_their_own_masks() {
        let x = Var::constant(Tensor::<f64>::ones(&[64]));
        let (a, b) = (Dropout::new(0.5), Dropout::new(0.5));
        assert_ne!(a.forward(&x).value().to_vec(), b.forward(&x).value().to_vec(), "forked generators differ");
        // a generator replays its masks
        assert_eq!(seeded(0.5, 42).forward(&x).value().to_vec(), seeded(0.5, 42).forward(&x).value().to_vec());
    }

    #[test]
    fn containers_switch_the_mode() {
        let mut model: crate::Sequential<f64> =
            crate::Sequential::new_generic().add(Dropout::new(0.5)).add(Dropout2d::new(0.5));
        let x = Var::constant(Tensor::<f64>::ones(&[2, 3, 4, 4]));
        assert_ne!(model.forward(&x).value().to_vec(), x.value().to_vec());
        model.eval();
        assert!(model.iter().all(|l| !l.is_training()));
        assert!(model.forward(&x).same(&x));
    }

    #[test]
    fn config_errors_and_display() {
        assert_eq!(Dropout::try_new(1.5).err().unwrap().to_string(), "Dropout: p must be in [0, 1], got 1.5");
        assert_eq!(Dropout2d::try_new(-0.1).err().unwrap().to_string(), "Dropout2d: p must be in [0, 1], got -0.1");
        assert_eq!(Dropout::new(0.1).to_string(), "Dropout(p=0.1)");
        assert_eq!(Dropout2d::new(0.0).to_string(), "Dropout2d(p=0.0)");
        assert_eq!(<Dropout2d as Module<f32>>::num_parameters(&Dropout2d::new(0.2)), 0);
    }

    #[test]
    fn gradient_is_the_mask() {
        // the same seed replays the mask, so the layer is a fixed linear map for gradcheck
        for two_d in [false, true] {
            let shape = [2, 3, 2, 2];
            let x = Tensor::<f64>::uniform(&shape, -1.0, 1.0, &mut Rng::new(3));
            let r = gradcheck(
                |v| {
                    let rng = Mutex::new(Rng::new(5));
                    if two_d {
                        Dropout2d { p: 0.5, training: true, rng, kind: PhantomData }.forward(&v[0])
                    } else {
                        seeded(0.5, 5).forward(&v[0])
                    }
                },
                std::slice::from_ref(&x),
                1e-6,
                1e-7,
                1e-5,
            );
            assert!(r.is_ok(), "two_d={two_d}: {}", r.unwrap_err());
            // and the gradient of sum(y) is exactly the mask (0 or 2)
            let xv = Var::param(x);
            let y = seeded(0.5, 5).forward(&xv);
            y.sum_all().backward();
            let g = xv.grad().unwrap().to_vec();
            let kept: Vec<f64> = y.value().to_vec().iter().map(|&v| if v == 0.0 { 0.0 } else { 2.0 }).collect();
            assert_eq!(g, kept);
        }
    }

    #[test]
    fn tiny_overfit() {
        // Linear -> Dropout(p) trained on E[(m/(1-p) f - y)^2], whose minimiser is
        // f = (1 - p) y (E[s] / E[s^2] with s = m/(1-p)): the eval-mode fit shows it
        let l: Linear<f64> = crate::LinearConfig::new(2, 1).build().unwrap();
        let mut d = seeded(0.2, 11);
        let x = Var::constant(Tensor::from_vec(vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], &[4, 2]));
        let y = Var::constant(Tensor::from_vec(vec![3.0, -1.0, 2.0, 0.0], &[4, 1]));
        let params = l.parameters();
        let loss = || {
            let e = Forward::<f64>::forward(&d, &l.forward(&x)).sub(&y);
            e.mul(&e).mean(&[], false)
        };
        descend(&params, 0.02, 600, loss);
        d.eval();
        let f = l.forward(&x).value().to_vec();
        for (fi, yi) in f.iter().zip(y.value().to_vec()) {
            assert!((fi - 0.8 * yi).abs() < 0.05, "{f:?}");
        }
        // in eval mode the layer is the identity and the fit becomes exact
        let loss = descend(&params, 0.3, 300, || {
            let e = Forward::<f64>::forward(&d, &l.forward(&x)).sub(&y);
            e.mul(&e).mean(&[], false)
        });
        assert!(loss < 1e-8, "{loss}");
    }
}
