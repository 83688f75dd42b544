//! [`Distiller`]: knowledge distillation of a trained teacher into a student, with the
//! softened-output loss of Hinton et al. (2015) and optional feature terms on named
//! intermediate outputs (FitNets' hints, Romero et al. 2015), trained by [`Trainer`].

use kiln_autograd::{no_grad, Var};
use kiln_data::Batch;
use kiln_nn::functional::{mse_loss, Reduction};
use kiln_nn::{distillation_loss, CrossEntropyLoss, Forward, Linear, Module, Sequential};
use kiln_optim::{LrGroups, Optimizer};
use kiln_tensor::{Float, Indices, Tensor};

use crate::error::TrainError;
use crate::history::History;
use crate::source::BatchSource;
use crate::trainer::Trainer;

/// A model that can return named intermediate outputs along with its output, in one forward
/// pass (what torchvision's `create_feature_extractor` gives a PyTorch model).
///
/// [`Sequential`] names each layer's output by its index (`"3"`, the prefix of that layer's
/// parameter keys). A model of its own writes `impl Features for MyNet {}` when it has no
/// outputs to name, or overrides [`forward_features`](Features::forward_features).
pub trait Features<E: Float = f32>: Forward<E> {
    /// The output of `forward(x)` and the intermediate outputs called `names`, in that order.
    ///
    /// **Panics** if a name is unknown (the default names nothing).
    fn forward_features(&self, x: &Var<E>, names: &[&str]) -> (Var<E>, Vec<Var<E>>) {
        assert!(
            names.is_empty(),
            "forward_features: this model names no intermediate outputs (asked for {names:?}); implement Features::forward_features"
        );
        (self.forward(x), Vec::new())
    }
}

impl<E: Float> Features<E> for Sequential<E> {
    /// Names are layer indices: `"3"` is the output of layer 3.
    ///
    /// **Panics** if a name is not the index of a layer.
    fn forward_features(&self, x: &Var<E>, names: &[&str]) -> (Var<E>, Vec<Var<E>>) {
        let len = self.len();
        let wanted: Vec<usize> = names
            .iter()
            .map(|n| {
                n.parse::<usize>().ok().filter(|&i| i < len).unwrap_or_else(|| {
                    panic!("Sequential: no layer named {n:?} (feature names are layer indices 0..{len})")
                })
            })
            .collect();
        let mut features: Vec<Option<Var<E>>> = vec![None; names.len()];
        let mut y = x.clone();
        for (i, layer) in self.iter().enumerate() {
            y = layer.forward(&y);
            for (slot, _) in features.iter_mut().zip(&wanted).filter(|(_, &w)| w == i) {
                *slot = Some(y.clone());
            }
        }
        (y, features.into_iter().map(|f| f.expect("every index is below len")).collect())
    }
}

/// A feature-distillation term: the mean squared error between a student's and a teacher's
/// intermediate outputs, the student's optionally through a learnt projection.
struct FeatureTerm {
    teacher: String,
    student: String,
    weight: f64,
    projection: Option<Linear>,
}

impl FeatureTerm {
    /// `weight * mse(projection(student), teacher)`, both flattened to `[N, features]`.
    fn loss(&self, student: &Var<f32>, teacher: &Var<f32>) -> Var<f32> {
        let flat = |v: &Var<f32>| {
            let shape = v.shape();
            let n = shape.first().copied().unwrap_or(1);
            v.reshape(&[n, v.numel() / n.max(1)])
        };
        let s = flat(student);
        let s = match &self.projection {
            Some(p) => p.forward(&s),
            None => s,
        };
        let t = flat(teacher);
        assert!(
            s.shape() == t.shape(),
            "Distiller: feature teacher {:?} / student {:?}: the student's features {:?}{} and the teacher's {:?} differ{}",
            self.teacher,
            self.student,
            s.shape().as_slice(),
            if self.projection.is_some() { " (projected)" } else { "" },
            t.shape().as_slice(),
            if self.projection.is_some() { "" } else { "; use feature_projected to learn a projection" }
        );
        mse_loss(&s, &t, Reduction::Mean).mul_scalar(self.weight as f32)
    }
}

/// Knowledge distillation: trains a student to match a frozen teacher's softened outputs (and,
/// optionally, its intermediate outputs) as well as the hard labels.
///
/// The loss of a batch is [`distillation_loss`]`(student, teacher, targets, temperature, alpha)`
/// (`alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, targets)`) plus, for each
/// feature term, `weight * mse(projection(student feature), teacher feature)` with both
/// features flattened to `[N, features]`. The teacher runs in evaluation mode and without a
/// graph, so it gets no gradient and its dropout is off. Training is [`Trainer::fit_with`]:
/// the trainer's epochs, metrics (on the student's output), validation, schedulers,
/// callbacks (given the student), clipping and accumulation all apply.
///
/// Optimise [`parameters`](Distiller::parameters): the student's and those of the feature
/// projections.
///
/// ```
/// use kiln_data::{Batch, Targets};
/// use kiln_nn::{Linear, ReLU, Sequential};
/// use kiln_optim::{Adam, AdamConfig};
/// use kiln_tensor::{Rng, Tensor};
/// use kiln_train::{Distiller, Trainer, Verbosity};
/// kiln_nn::init::manual_seed(0);
/// // in practice a trained teacher
/// let teacher: Sequential = Sequential::new().add(Linear::new(4, 16)).add(ReLU).add(Linear::new(16, 3));
/// let student: Sequential = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 3));
/// // soft targets at T = 4 weighted 0.9, and the hidden activations (layer 1 of each) through a
/// // learnt 8 -> 16 projection, weighted 0.5
/// let mut distiller = Distiller::new(teacher, student, 4.0, 0.9).feature_projected("1", "1", 0.5, Linear::new(8, 16));
/// let mut opt = Adam::new(distiller.parameters(), AdamConfig { lr: 1e-2, ..Default::default() });
/// let x: Tensor<f32> = Tensor::randn(&[32, 4], &mut Rng::new(0));
/// let data = vec![Batch { inputs: x, targets: Targets::from((0..32usize).map(|i| i % 3).collect::<Vec<_>>()) }];
/// let history = distiller.fit(&mut Trainer::new(30).verbosity(Verbosity::Silent), &mut opt, &data, None).unwrap();
/// let loss = history.get("loss");
/// assert!(loss[29] < loss[0]);
/// let student: Sequential = distiller.into_student();
/// ```
pub struct Distiller<T, S> {
    teacher: T,
    student: S,
    temperature: f64,
    alpha: f64,
    features: Vec<FeatureTerm>,
}

impl<T, S> Distiller<T, S>
where
    T: Module<f32> + Features<f32>,
    S: Module<f32> + Features<f32>,
{
    /// Distils `teacher` into `student` at `temperature`, the soft term weighted `alpha` and
    /// the hard-label cross-entropy `1 - alpha`.
    ///
    /// **Panics** if `temperature` is not finite and positive or `alpha` is outside `[0, 1]`.
    pub fn new(teacher: T, student: S, temperature: f64, alpha: f64) -> Self {
        assert!(
            temperature.is_finite() && temperature > 0.0,
            "Distiller: temperature must be finite and > 0, got {temperature}"
        );
        assert!((0.0..=1.0).contains(&alpha), "Distiller: alpha must be in [0, 1], got {alpha}");
        Distiller { teacher, student, temperature, alpha, features: Vec::new() }
    }

    /// Adds a feature term: `weight * mse(student feature, teacher feature)` between the
    /// intermediate outputs named `student` and `teacher` (see [`Features`]), which must have
    /// the same number of features per sample.
    ///
    /// **Panics** if `weight` is negative or not finite.
    #[must_use]
    pub fn feature(self, teacher: &str, student: &str, weight: f64) -> Self {
        self.add_feature(teacher, student, weight, None)
    }

    /// Adds a feature term whose student features pass through `projection` first (FitNets'
    /// regressor): `Linear::new(student_features, teacher_features)`, for features of
    /// different widths. Its parameters are among [`parameters`](Distiller::parameters).
    ///
    /// **Panics** if `weight` is negative or not finite.
    #[must_use]
    pub fn feature_projected(self, teacher: &str, student: &str, weight: f64, projection: Linear) -> Self {
        self.add_feature(teacher, student, weight, Some(projection))
    }

    fn add_feature(mut self, teacher: &str, student: &str, weight: f64, projection: Option<Linear>) -> Self {
        assert!(weight.is_finite() && weight >= 0.0, "Distiller: feature weight must be finite and >= 0, got {weight}");
        self.features.push(FeatureTerm { teacher: teacher.into(), student: student.into(), weight, projection });
        self
    }

    /// The temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The weight of the soft term.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The teacher.
    pub fn teacher(&self) -> &T {
        &self.teacher
    }

    /// The student.
    pub fn student(&self) -> &S {
        &self.student
    }

    /// The student, mutably (to evaluate it with a [`Trainer`], say).
    pub fn student_mut(&mut self) -> &mut S {
        &mut self.student
    }

    /// The trained student.
    pub fn into_student(self) -> S {
        self.student
    }

    /// What to optimise: the student's parameters, then those of the feature projections.
    pub fn parameters(&self) -> Vec<Var<f32>> {
        let mut p = self.student.parameters();
        for term in &self.features {
            p.extend(term.projection.iter().flat_map(|l| l.parameters()));
        }
        p
    }

    /// The student's output on `inputs` and the distillation loss against `targets` (the
    /// teacher as it is: call `eval` on it first, as [`fit`](Distiller::fit) does).
    ///
    /// **Panics** as [`distillation_loss`] does, or if a feature name is unknown or the
    /// features' widths differ.
    pub fn loss(&self, inputs: &Tensor<f32>, targets: &Indices) -> (Var<f32>, Var<f32>) {
        step(&self.teacher, &self.student, self.temperature, self.alpha, &self.features, inputs, targets)
    }

    /// Trains the student on `train` with `trainer` (its epochs, metrics, verbosity, ...),
    /// the teacher in evaluation mode, and returns the per-epoch figures: `loss` is the
    /// distillation loss, `val_loss` the student's cross-entropy on `val`. The student is left
    /// in evaluation mode.
    ///
    /// # Errors
    /// As [`Trainer::fit`]: a non-finite loss or an empty data source.
    ///
    /// **Panics** if a batch's targets are not class indices, and as [`loss`](Distiller::loss).
    pub fn fit<O>(
        &mut self,
        trainer: &mut Trainer,
        optimizer: &mut O,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
    ) -> Result<History, TrainError>
    where
        O: Optimizer<f32> + LrGroups,
    {
        let Distiller { teacher, student, temperature, alpha, features } = self;
        teacher.eval();
        let (teacher, temperature, alpha, features) = (&*teacher, *temperature, *alpha, &*features);
        let mut train_step = |student: &S, batch: &Batch| {
            step(teacher, student, temperature, alpha, features, &batch.inputs, batch.targets.class_indices())
        };
        trainer.fit_with(student, optimizer, &mut train_step, &CrossEntropyLoss::default(), train, val)
    }
}

/// One batch: the teacher's outputs without a graph, the student's with one, and the loss.
fn step<T: Features<f32>, S: Features<f32>>(
    teacher: &T,
    student: &S,
    temperature: f64,
    alpha: f64,
    features: &[FeatureTerm],
    inputs: &Tensor<f32>,
    targets: &Indices,
) -> (Var<f32>, Var<f32>) {
    let x = Var::constant(inputs.clone());
    let teacher_names: Vec<&str> = features.iter().map(|f| f.teacher.as_str()).collect();
    let student_names: Vec<&str> = features.iter().map(|f| f.student.as_str()).collect();
    let (t_out, t_features) = no_grad(|| teacher.forward_features(&x, &teacher_names));
    let (s_out, s_features) = student.forward_features(&x, &student_names);
    let mut loss = distillation_loss(&s_out, &t_out, targets, temperature, alpha);
    for ((term, s), t) in features.iter().zip(&s_features).zip(&t_features) {
        loss = loss.add(&term.loss(s, t));
    }
    (s_out, loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_batches;
    use crate::trainer::Verbosity;
    use kiln_data::Targets;
    use kiln_nn::{Dropout, ReLU};
    use kiln_optim::{Adam, AdamConfig, SGDConfig, SGD};
    use kiln_tensor::Rng;

    /// 64 points in 6 dimensions labelled by a fixed random linear map (3 classes).
    fn data() -> (Tensor<f32>, Vec<usize>) {
        let mut rng = Rng::new(3);
        let x: Tensor<f32> = Tensor::randn(&[64, 6], &mut rng);
        let w: Tensor<f32> = Tensor::randn(&[6, 3], &mut rng);
        let scores = x.matmul(&w).to_vec();
        let y = scores
            .chunks(3)
            .map(|r| (0..3).max_by(|&a, &b| r[a].partial_cmp(&r[b]).expect("finite")).expect("3 classes"))
            .collect();
        (x, y)
    }

    fn teacher() -> Sequential {
        Sequential::new().add(Linear::new(6, 16)).add(ReLU).add(Dropout::new(0.5)).add(Linear::new(16, 3))
    }

    fn student() -> Sequential {
        Sequential::new().add(Linear::new(6, 4)).add(ReLU).add(Linear::new(4, 3))
    }

    #[test]
    fn distill_lowers_the_kd_loss() {
        kiln_nn::init::manual_seed(0);
        let (x, y) = data();
        let targets = Indices::from_vec(y.clone());
        let mut teacher = teacher();
        // a teacher that knows something: a few full-batch steps on the labels
        let mut opt = Adam::new(teacher.parameters(), AdamConfig { lr: 1e-2, ..Default::default() });
        let batches = tensor_batches(&x, &Targets::from(y), 16);
        Trainer::new(20)
            .verbosity(Verbosity::Silent)
            .fit(&mut teacher, &mut opt, &CrossEntropyLoss::default(), &batches, None)
            .unwrap();
        let mut distiller = Distiller::new(teacher, student(), 3.0, 0.8);
        let before = no_grad(|| distiller.loss(&x, &targets).1.item());
        let mut opt = Adam::new(distiller.parameters(), AdamConfig { lr: 1e-2, ..Default::default() });
        let history = distiller
            .fit(&mut Trainer::new(10).verbosity(Verbosity::Silent), &mut opt, &batches, Some(&batches))
            .unwrap();
        assert!(!distiller.teacher().is_training(), "the teacher runs in eval mode");
        let after = no_grad(|| distiller.loss(&x, &targets).1.item());
        assert!(after < 0.8 * before, "KD loss {before} -> {after}");
        assert_eq!(history.len(), 10);
        assert!(history.get("val_loss").iter().all(|v| v.is_finite()));
    }

    #[test]
    fn distill_feature_gradient_reaches_the_student_only() {
        kiln_nn::init::manual_seed(1);
        let (x, y) = data();
        let targets = Indices::from_vec(y);
        // alpha = 1 and the feature term: every gradient comes from the teacher's outputs
        let mut distiller =
            Distiller::new(teacher(), student(), 2.0, 1.0).feature_projected("1", "1", 1.0, Linear::new(4, 16));
        distiller.teacher.eval();
        let (_, loss) = distiller.loss(&x, &targets);
        loss.backward();
        for (k, p) in distiller.teacher().named_parameters() {
            assert!(p.grad().is_none(), "teacher parameter {k} got a gradient");
        }
        for p in distiller.parameters() {
            let g = p.grad().expect("student and projection parameters get gradients");
            assert!(g.to_vec().iter().any(|v| *v != 0.0));
        }
        assert_eq!(distiller.parameters().len(), 4 + 2);
    }

    #[test]
    fn distill_feature_term_pulls_the_student_features_to_the_teacher() {
        kiln_nn::init::manual_seed(2);
        let (x, y) = data();
        let targets = Indices::from_vec(y);
        // widths agree (4 hidden units each): no projection
        let teacher = Sequential::new().add(Linear::new(6, 4)).add(ReLU).add(Linear::new(4, 3));
        let mut distiller = Distiller::new(teacher, student(), 1.0, 1.0).feature("0", "0", 10.0);
        let feature_gap = |d: &Distiller<Sequential, Sequential>| {
            no_grad(|| {
                let xv = Var::constant(x.clone());
                let s = d.student().forward_features(&xv, &["0"]).1.remove(0);
                let t = d.teacher().forward_features(&xv, &["0"]).1.remove(0);
                mse_loss(&s, &t, Reduction::Mean).item()
            })
        };
        let before = feature_gap(&distiller);
        let mut opt = SGD::new(distiller.parameters(), SGDConfig { lr: 0.05, ..Default::default() });
        let batches = tensor_batches(&x, &Targets::Classes(targets.clone()), 64);
        distiller.fit(&mut Trainer::new(20).verbosity(Verbosity::Silent), &mut opt, &batches, None).unwrap();
        let after = feature_gap(&distiller);
        assert!(after < 0.5 * before, "feature MSE {before} -> {after}");
    }

    #[test]
    fn distill_sequential_names_layer_outputs() {
        kiln_nn::init::manual_seed(0);
        let s = student();
        let x = Var::constant(Tensor::ones(&[2, 6]));
        let (out, f) = s.forward_features(&x, &["2", "0", "1"]);
        assert_eq!(f[0].value().to_vec(), out.value().to_vec());
        assert_eq!(f[1].shape().as_slice(), &[2, 4]);
        assert_eq!(f[2].value().to_vec(), f[1].relu().value().to_vec());
    }

    #[test]
    #[should_panic(expected = "Sequential: no layer named \"7\" (feature names are layer indices 0..3)")]
    fn distill_unknown_feature_name_panics() {
        let _ = student().forward_features(&Var::constant(Tensor::ones(&[2, 6])), &["7"]);
    }

    #[test]
    #[should_panic(expected = "use feature_projected to learn a projection")]
    fn distill_feature_width_mismatch_panics() {
        let d = Distiller::new(teacher(), student(), 2.0, 0.5).feature("1", "1", 1.0);
        let _ = d.loss(&Tensor::ones(&[2, 6]), &Indices::from_vec(vec![0, 1]));
    }

    #[test]
    #[should_panic(expected = "Distiller: temperature must be finite and > 0, got -1")]
    fn distill_rejects_negative_temperature() {
        let _ = Distiller::new(teacher(), student(), -1.0, 0.5);
    }

    #[test]
    #[should_panic(expected = "Distiller: alpha must be in [0, 1], got 1.1")]
    fn distill_rejects_alpha_above_one() {
        let _ = Distiller::new(teacher(), student(), 2.0, 1.1);
    }

    #[test]
    #[should_panic(expected = "Distiller: feature weight must be finite and >= 0, got NaN")]
    fn distill_rejects_nan_feature_weight() {
        let _ = Distiller::new(teacher(), student(), 2.0, 0.5).feature("1", "1", f64::NAN);
    }
}
