//! Weight averaging: an exponential moving average of the parameters (torch-ema, timm's
//! `ModelEmaV2`) and stochastic weight averaging's running mean
//! (`torch.optim.swa_utils.AveragedModel`).

use kiln_nn::{Module, StateDict};
use kiln_tensor::Float;

fn snapshot<E: Float>(named: Vec<(String, kiln_autograd::Var<E>)>) -> StateDict<E> {
    named.into_iter().map(|(k, v)| (k, v.value().contiguous())).collect()
}

fn write_into<E: Float>(model: &dyn Module<E>, params: &StateDict<E>, buffers: &StateDict<E>) {
    for (k, v) in model.named_parameters() {
        if let Some(t) = params.get(&k) {
            v.set_value(t.clone());
        }
    }
    for (k, v) in model.named_buffers() {
        if let Some(t) = buffers.get(&k) {
            v.set_value(t.clone());
        }
    }
}

fn check_same_keys<E: Float>(what: &str, held: &StateDict<E>, model: &[(String, kiln_autograd::Var<E>)]) {
    for (k, v) in model {
        let h = held
            .get(k)
            .unwrap_or_else(|| panic!("{what}: the model has parameter {k:?} that was not there at construction"));
        assert!(
            h.shape() == v.shape().as_slice(),
            "{what}: parameter {k:?} has shape {:?}, the average has {:?}",
            v.shape(),
            h.shape()
        );
    }
}

/// An exponential moving average of a model's parameters, as torch-ema's
/// `ExponentialMovingAverage` and timm's `ModelEmaV2` keep it:
///
/// ```text
/// shadow <- model's parameters (at construction)
/// update t = 1, 2, ...:  d_t = min(decay, (1 + t) / (10 + t))  if warm-up, else decay
///                        shadow <- shadow + (1 - d_t) (param - shadow)
///                        buffers <- model's buffers (copied, not averaged)
/// ```
///
/// Evaluate with the averaged weights by [`copy_to`](Self::copy_to) (after saving the live
/// ones with `state_dict`, as torch-ema's `store`/`restore` do).
///
/// **Panics** in [`new`](Self::new) if `decay` is outside `[0, 1]`.
///
/// ```
/// use kiln_nn::{Linear, Module};
/// use kiln_train::ExponentialMovingAverage;
/// let model: Linear<f64> = Linear::new_generic(2, 1);
/// let mut ema = ExponentialMovingAverage::new(&model, 0.9);
/// let w0 = model.parameters()[0].value();
/// model.parameters()[0].set_value(w0.add_scalar(1.0)); // a training step moves the weight by 1
/// ema.update(&model);
/// let avg = &ema.state_dict()["weight"];
/// for (a, w) in avg.to_vec().iter().zip(w0.to_vec()) {
///     assert!((a - (w + 0.1)).abs() < 1e-12); // moved a tenth of the way
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ExponentialMovingAverage<E: Float = f32> {
    decay: f64,
    warmup: bool,
    num_updates: u64,
    shadow: StateDict<E>,
    buffers: StateDict<E>,
}

impl<E: Float> ExponentialMovingAverage<E> {
    /// Starts the average at the model's current parameters and buffers, without warm-up.
    pub fn new(model: &dyn Module<E>, decay: f64) -> Self {
        assert!((0.0..=1.0).contains(&decay), "ExponentialMovingAverage: decay must be in [0, 1], got {decay}");
        ExponentialMovingAverage {
            decay,
            warmup: false,
            num_updates: 0,
            shadow: snapshot(model.named_parameters()),
            buffers: snapshot(model.named_buffers()),
        }
    }

    /// Turns torch-ema's warm-up on or off: update `t` uses `min(decay, (1 + t) / (10 + t))`.
    #[must_use]
    pub fn with_warmup(mut self, on: bool) -> Self {
        self.warmup = on;
        self
    }

    /// The decay update number `t` (counted from 1) uses.
    pub fn decay_at(&self, t: u64) -> f64 {
        if self.warmup {
            self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
        } else {
            self.decay
        }
    }

    /// The number of updates so far.
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// Moves the average towards the model's parameters and copies its buffers.
    ///
    /// **Panics** if the model's parameters are not those it was built with (names and shapes).
    pub fn update(&mut self, model: &dyn Module<E>) {
        self.num_updates += 1;
        let w = E::from_f64(1.0 - self.decay_at(self.num_updates));
        let params = model.named_parameters();
        check_same_keys("ExponentialMovingAverage::update", &self.shadow, &params);
        for (k, v) in params {
            let s = self.shadow.get_mut(&k).expect("checked");
            // torch.lerp: s + w (p - s)
            *s = v.with_value(|p| s.add(&p.sub(s).mul_scalar(w)));
        }
        self.buffers = snapshot(model.named_buffers());
    }

    /// The averaged parameters and the copied buffers, by `state_dict` key.
    pub fn state_dict(&self) -> StateDict<E> {
        self.shadow.iter().chain(&self.buffers).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Writes the averaged parameters and buffers into `model` (matching keys).
    pub fn copy_to(&self, model: &dyn Module<E>) {
        write_into(model, &self.shadow, &self.buffers);
    }
}

/// Stochastic weight averaging's running mean of the parameters, as
/// `torch.optim.swa_utils.AveragedModel(model)` with its default average:
///
/// ```text
/// update n = 0:  avg <- param
/// update n > 0:  avg <- avg + (param - avg) / (n + 1)
/// ```
///
/// Buffers are not averaged (`use_buffers=False`): they are copied from the model at
/// construction and at each update; recompute BatchNorm statistics for the averaged weights
/// before evaluating.
///
/// ```
/// use kiln_nn::{Linear, Module};
/// use kiln_train::AveragedModel;
/// let model: Linear<f64> = Linear::new_generic(2, 1);
/// let mut swa = AveragedModel::new(&model);
/// let b = &model.parameters()[1];
/// for v in [1.0, 2.0, 6.0] {
///     b.set_value(kiln_tensor::Tensor::from_vec(vec![v], &[1]));
///     swa.update_parameters(&model);
/// }
/// assert_eq!(swa.state_dict()["bias"].to_vec(), vec![3.0]);
/// assert_eq!(swa.n_averaged(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct AveragedModel<E: Float = f32> {
    n_averaged: u64,
    averaged: StateDict<E>,
    buffers: StateDict<E>,
}

impl<E: Float> AveragedModel<E> {
    /// Holds a copy of the model's parameters and buffers; nothing is averaged yet.
    pub fn new(model: &dyn Module<E>) -> Self {
        AveragedModel {
            n_averaged: 0,
            averaged: snapshot(model.named_parameters()),
            buffers: snapshot(model.named_buffers()),
        }
    }

    /// How many models have been averaged.
    pub fn n_averaged(&self) -> u64 {
        self.n_averaged
    }

    /// Adds the model's current parameters to the running mean.
    ///
    /// **Panics** if the model's parameters are not those it was built with.
    pub fn update_parameters(&mut self, model: &dyn Module<E>) {
        let params = model.named_parameters();
        check_same_keys("AveragedModel::update_parameters", &self.averaged, &params);
        let n = self.n_averaged;
        for (k, v) in params {
            let a = self.averaged.get_mut(&k).expect("checked");
            *a = if n == 0 {
                v.value().contiguous()
            } else {
                let inv = E::from_f64(1.0 / (n as f64 + 1.0));
                v.with_value(|p| a.add(&p.sub(a).mul_scalar(inv)))
            };
        }
        self.buffers = snapshot(model.named_buffers());
        self.n_averaged += 1;
    }

    /// The averaged parameters and the buffers, by `state_dict` key.
    pub fn state_dict(&self) -> StateDict<E> {
        self.averaged.iter().chain(&self.buffers).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Writes the averaged parameters and the buffers into `model` (matching keys).
    pub fn copy_to(&self, model: &dyn Module<E>) {
        write_into(model, &self.averaged, &self.buffers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_autograd::Var;
    use kiln_nn::TensorKind;
    use kiln_tensor::Tensor;

    /// Reads a float tensor `{shape, values}` object of a golden fixture.
    fn tensor_of(v: &serde_json::Value) -> Tensor<f64> {
        let shape: Vec<usize> =
            v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
        let values: Vec<f64> =
            v["values"].as_array().expect("values").iter().map(|x| x.as_f64().expect("number")).collect();
        Tensor::from_vec(values, &shape)
    }

    /// A model made of the fixture's tensors, by key (running statistics are buffers).
    struct Bag(Vec<(String, Var<f64>, TensorKind)>);

    impl Module<f64> for Bag {
        fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Var<f64>, TensorKind)) {
            for (k, v, kind) in &self.0 {
                f(&format!("{prefix}{k}"), v, *kind);
            }
        }
    }

    fn fixture() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/weight_averaging.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).expect("fixture JSON")
    }

    fn model_from(state: &serde_json::Value) -> Bag {
        Bag(state
            .as_object()
            .expect("state")
            .iter()
            .map(|(k, v)| {
                let kind = if k.contains("running_") { TensorKind::Buffer } else { TensorKind::Parameter };
                (k.clone(), Var::new(tensor_of(v), kind == TensorKind::Parameter), kind)
            })
            .collect())
    }

    fn load(model: &Bag, state: &serde_json::Value) {
        for (k, v, _) in &model.0 {
            v.set_value(tensor_of(&state[k.as_str()]));
        }
    }

    fn assert_matches(got: &StateDict<f64>, want: &serde_json::Value, what: &str) {
        for (k, w) in want.as_object().expect("expected") {
            let w = tensor_of(w);
            let g = got.get(k).unwrap_or_else(|| panic!("{what}: missing {k}"));
            assert_eq!(g.shape(), w.shape(), "{what} {k}");
            for (a, b) in g.to_vec().iter().zip(w.to_vec()) {
                assert!((a - b).abs() <= 1e-12, "{what} {k}: {a} vs PyTorch {b}");
            }
        }
    }

    #[test]
    fn ema_and_swa_match_pytorch() {
        let fx = fixture();
        let decay = fx["config"]["decay"].as_f64().expect("decay");
        let steps = fx["steps"].as_array().expect("steps");
        assert_eq!(steps.len() as u64, fx["config"]["steps"].as_u64().expect("steps"));
        let model = model_from(&fx["initial"]);
        let mut ema = ExponentialMovingAverage::new(&model, decay);
        let mut warm = ExponentialMovingAverage::new(&model, decay).with_warmup(true);
        let mut swa = AveragedModel::new(&model);
        for (t, step) in steps.iter().enumerate() {
            load(&model, &step["model"]);
            ema.update(&model);
            warm.update(&model);
            swa.update_parameters(&model);
            assert_matches(&ema.state_dict(), &step["ema"], &format!("ema step {}", t + 1));
            assert_matches(&warm.state_dict(), &step["ema_warmup"], &format!("ema warm-up step {}", t + 1));
            assert_matches(&ema.state_dict(), &step["buffers"], &format!("ema buffers step {}", t + 1));
            assert_matches(&swa.state_dict(), &step["swa"], &format!("swa step {}", t + 1));
        }
        assert_eq!(swa.n_averaged(), steps.len() as u64);
        // copy_to writes the averages into the model
        ema.copy_to(&model);
        let sd = model.state_dict();
        assert_matches(&sd, &steps.last().expect("a step")["ema"], "copy_to");
    }

    #[test]
    fn warmup_schedule() {
        let m = Bag(vec![("w".into(), Var::param(Tensor::zeros(&[1])), TensorKind::Parameter)]);
        let e = ExponentialMovingAverage::<f64>::new(&m, 0.999).with_warmup(true);
        assert_eq!(e.decay_at(1), 2.0 / 11.0);
        assert_eq!(e.decay_at(10_000), 0.999);
    }

    #[test]
    #[should_panic(expected = "ExponentialMovingAverage: decay must be in [0, 1], got 1.5")]
    fn bad_decay() {
        let m = Bag(vec![]);
        let _ = ExponentialMovingAverage::<f64>::new(&m, 1.5);
    }
}
