//! `#[derive(Module)]` as a user crate sees it: key names, buffers, skipped fields, generic
//! and concrete structs, train/eval, state dicts and freezing.

use std::fmt;
use std::marker::PhantomData;

use kiln_autograd::Var;
use kiln_nn::{
    sequential, Forward, Layer, Linear, LinearConfig, Module, NnError, ReLU, Sequential, StateDict, TensorKind,
};
use kiln_tensor::{Float, Tensor};

/// Like PyTorch's `nn.TransformerEncoder`-ish nesting: a list of layers, an optional
/// projection, a buffer and hyper-parameters.
#[derive(Module)]
struct Encoder<E: Float = f32> {
    layers: Vec<Linear<E>>,
    proj: Option<Linear<E>>,
    #[module(buffer)]
    running_mean: Var<E>,
    act: ReLU,
    num_layers: usize,
    dropout: f64,
    training: bool,
}

impl<E: Float> Encoder<E> {
    fn new(dims: &[usize], proj: bool) -> Self {
        let last = *dims.last().unwrap();
        Encoder {
            layers: dims.windows(2).map(|w| Linear::new_generic(w[0], w[1])).collect(),
            proj: proj.then(|| Linear::new_generic(last, last)),
            running_mean: Var::constant(Tensor::zeros(&[last])),
            act: ReLU,
            num_layers: dims.len() - 1,
            dropout: 0.1,
            training: true,
        }
    }
}

impl<E: Float> Forward<E> for Encoder<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let mut h = x.clone();
        for l in &self.layers {
            h = self.act.forward(&l.forward(&h));
        }
        match &self.proj {
            Some(p) => p.forward(&h),
            None => h,
        }
    }
}

/// A config that is not a module: must be skipped.
#[derive(Clone, Debug)]
struct HeadConfig {
    classes: usize,
}

#[derive(Module)]
struct Classifier<E: Float = f32> {
    encoder: Encoder<E>,
    head: Linear<E>,
    temperature: Var<E>,
    extra_bias: Option<Var<E>>,
    #[module(skip)]
    config: HeadConfig,
    #[module(skip)]
    teacher: Linear<E>,
}

impl<E: Float> Classifier<E> {
    fn new() -> Self {
        Classifier {
            encoder: Encoder::new(&[4, 6, 5], true),
            head: Linear::new_generic(5, 3),
            temperature: Var::param(Tensor::ones(&[1])),
            extra_bias: None,
            config: HeadConfig { classes: 3 },
            teacher: Linear::new_generic(5, 3),
        }
    }
}

impl<E: Float> Forward<E> for Classifier<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let y = self.head.forward(&self.encoder.forward(x)).div(&self.temperature);
        match &self.extra_bias {
            Some(b) => y.add(b),
            None => y,
        }
    }
}

fn keys<E: Float>(m: &dyn Module<E>) -> Vec<String> {
    m.named_parameters().into_iter().map(|(k, _)| k).collect()
}

#[test]
fn nested_vec_option_keys_match_pytorch() {
    let m: Classifier = Classifier::new();
    assert_eq!(
        keys(&m),
        [
            "encoder.layers.0.weight",
            "encoder.layers.0.bias",
            "encoder.layers.1.weight",
            "encoder.layers.1.bias",
            "encoder.proj.weight",
            "encoder.proj.bias",
            "head.weight",
            "head.bias",
            "temperature",
        ]
    );
    // An absent optional parameter or sub-module has no key.
    let mut m2: Classifier = Classifier::new();
    m2.encoder.proj = None;
    m2.extra_bias = Some(Var::param(Tensor::zeros(&[3])));
    let k = keys(&m2);
    assert!(!k.iter().any(|k| k.starts_with("encoder.proj")));
    assert_eq!(k.last().unwrap(), "extra_bias");
    assert_eq!(m.config.classes, 3);
}

#[test]
fn buffers_are_saved_but_not_trained_and_skip_hides_fields() {
    let m: Classifier = Classifier::new();
    let buffers: Vec<String> = m.named_buffers().into_iter().map(|(k, _)| k).collect();
    assert_eq!(buffers, ["encoder.running_mean"]);
    let sd = m.state_dict();
    assert!(sd.contains_key("encoder.running_mean"));
    assert!(!keys(&m).contains(&"encoder.running_mean".to_string()));
    // The skipped `teacher` is neither a parameter nor in the state dict.
    assert!(!sd.keys().any(|k| k.starts_with("teacher")));
    assert_eq!(sd.len(), 10);
    assert_eq!(m.teacher.num_parameters(), 5 * 3 + 3);
    assert_eq!((m.encoder.num_layers, m.encoder.dropout), (2, 0.1));
    let mut kinds = Vec::new();
    m.visit("model.", &mut |k, _, kind| kinds.push((k.to_string(), kind)));
    assert_eq!(kinds[6], ("model.encoder.running_mean".to_string(), TensorKind::Buffer));
    assert_eq!(kinds[0], ("model.encoder.layers.0.weight".to_string(), TensorKind::Parameter));
}

#[test]
fn parameter_count() {
    let m: Classifier = Classifier::new();
    let expected = (4 * 6 + 6) + (6 * 5 + 5) + (5 * 5 + 5) + (5 * 3 + 3) + 1;
    assert_eq!(m.num_parameters(), expected);
    assert_eq!(m.parameters().len(), 9);
    assert_eq!(m.num_trainable_parameters(), expected);
}

#[test]
fn train_eval_propagates() {
    let mut m: Classifier = Classifier::new();
    assert!(m.is_training());
    m.eval();
    assert!(!m.encoder.training);
    assert!(!m.is_training(), "no own flag: reports its first sub-module's mode");
    m.train();
    assert!(m.encoder.training && m.is_training());
    // Through Vec and Option of derived modules.
    let mut v: Vec<Option<Encoder<f64>>> = vec![Some(Encoder::new(&[2, 2], false)), None];
    v.eval();
    assert!(!v[0].as_ref().unwrap().training);
}

#[test]
fn state_dict_round_trip() {
    kiln_nn::init::manual_seed(1);
    let a: Classifier<f64> = Classifier::new();
    let mut b: Classifier<f64> = Classifier::new();
    a.encoder.running_mean.set_value(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0], &[5]));
    let x = Var::constant(Tensor::from_vec((0..8).map(|i| i as f64 * 0.25 - 1.0).collect(), &[2, 4]));
    assert_ne!(a.forward(&x).value().to_vec(), b.forward(&x).value().to_vec());
    let report = b.load_state_dict(&a.state_dict(), true).unwrap();
    assert_eq!(report.loaded.len(), 10);
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(a.forward(&x).value().to_vec(), b.forward(&x).value().to_vec());
    assert_eq!(b.encoder.running_mean.value().to_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    // The loaded values are copies: changing `a` afterwards leaves `b` alone.
    a.head.weight.update_value(|w| w.fill_(0.0));
    assert_ne!(b.head.weight.value().to_vec(), a.head.weight.value().to_vec());
}

#[test]
fn load_state_dict_errors_list_every_problem_and_leave_the_model_untouched() {
    let a: Classifier = Classifier::new();
    let mut b: Classifier = Classifier::new();
    let before = b.state_dict();
    let mut sd: StateDict = a.state_dict();
    sd.remove("head.bias");
    sd.insert("head.scale".into(), Tensor::ones(&[3]));
    sd.insert("encoder.layers.1.weight".into(), Tensor::zeros(&[5, 7]));
    let err = b.load_state_dict(&sd, true).unwrap_err();
    assert_eq!(
        err,
        NnError::StateDict {
            missing: vec!["head.bias".into()],
            unexpected: vec!["head.scale".into()],
            mismatched: vec!["encoder.layers.1.weight: model [5, 6], state dict [5, 7]".into()],
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("head.bias") && msg.contains("head.scale") && msg.contains("encoder.layers.1.weight"),
        "{msg}"
    );
    // Nothing was written, not even the keys that matched.
    let after = b.state_dict();
    for (k, v) in &before {
        assert_eq!(v.to_vec(), after[k].to_vec(), "{k} changed by a failed load");
    }

    // Not strict: missing and unexpected keys are reported, a shape mismatch is still an error.
    sd.insert("encoder.layers.1.weight".into(), a.encoder.layers[1].weight.value());
    let report = b.load_state_dict(&sd, false).unwrap();
    assert_eq!((report.missing, report.unexpected), (vec!["head.bias".to_string()], vec!["head.scale".to_string()]));
    assert_eq!(b.head.weight.value().to_vec(), a.head.weight.value().to_vec());
    sd.insert("temperature".into(), Tensor::ones(&[2]));
    let mut c: Classifier = Classifier::new();
    let before = c.state_dict();
    assert!(
        matches!(c.load_state_dict(&sd, false), Err(NnError::StateDict { ref mismatched, .. }) if mismatched.len() == 1)
    );
    assert_eq!(c.head.weight.value().to_vec(), before["head.weight"].to_vec());
}

#[test]
fn freezing_by_prefix() {
    let m: Classifier<f64> = Classifier::new();
    assert_eq!(m.requires_grad_prefix("encoder.", false), 6);
    assert_eq!(m.num_trainable_parameters(), (5 * 3 + 3) + 1);
    let x = Var::constant(Tensor::ones(&[2, 4]));
    m.forward(&x).sum_all().backward();
    assert!(m.encoder.layers[0].weight.grad().is_none(), "frozen parameters get no gradient");
    assert!(m.head.weight.grad().is_some());
    assert_eq!(m.requires_grad_prefix("encoder.layers.1.", true), 2);
    m.requires_grad_(false);
    assert_eq!(m.num_trainable_parameters(), 0);
}

/// A concrete struct: `Module<f32>`.
#[derive(Module)]
struct Tiny {
    w: Var,
    b: Var<f32>,
}

/// `#[module(elem = "f64")]`, a tuple struct (positional keys) and a renamed field.
#[derive(Module)]
#[module(elem = "f64")]
struct Pair(Linear<f64>, #[module(rename = "in_proj_weight")] Var<f64>);

/// A struct generic over its sub-module type, with the element type named explicitly and the
/// `Float` bound in a where clause.
#[derive(Module)]
#[module(elem = "T")]
struct Residual<T, M>
where
    T: Float,
{
    inner: M,
    #[module(skip)]
    _t: PhantomData<T>,
}

impl<T: Float, M: Forward<T>> Forward<T> for Residual<T, M> {
    fn forward(&self, x: &Var<T>) -> Var<T> {
        self.inner.forward(x).add(x)
    }
}

impl<T: Float, M: Module<T>> fmt::Display for Residual<T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Residual [{} parameters]", self.num_parameters())
    }
}

/// A boxed layer and a `Sequential` as fields, a `Vec<Var>` parameter list, and
/// `crate = ".."` pointing at kiln-nn by another path.
#[derive(Module)]
#[module(crate = "kiln_nn")]
struct Heads<E: Float = f32> {
    body: Sequential<E>,
    first: Box<dyn Layer<E>>,
    scales: Vec<Var<E>>,
    #[module(buffer)]
    mask: Option<Var<E>>,
}

#[test]
fn generic_concrete_tuple_and_renamed_structs() {
    let t = Tiny { w: Var::param(Tensor::ones(&[2])), b: Var::param(Tensor::zeros(&[1])) };
    assert_eq!(keys::<f32>(&t), ["w", "b"]);
    assert!(t.is_training(), "no flag and no sub-module: always training");

    let p = Pair(Linear::new_generic(2, 2), Var::param(Tensor::zeros(&[6, 2])));
    assert_eq!(keys::<f64>(&p), ["0.weight", "0.bias", "in_proj_weight"]);

    let r: Residual<f64, Linear<f64>> = Residual { inner: Linear::new_generic(3, 3), _t: PhantomData };
    assert_eq!(keys(&r), ["inner.weight", "inner.bias"]);
    let x = Var::constant(Tensor::ones(&[1, 3]));
    assert_eq!(r.forward(&x).shape().as_slice(), &[1, 3]);

    let h: Heads = Heads {
        body: sequential![Linear::new(2, 3), ReLU, Linear::new(3, 2)],
        first: Box::new(Linear::new(2, 1)),
        scales: vec![Var::param(Tensor::ones(&[1])), Var::param(Tensor::ones(&[2]))],
        mask: Some(Var::constant(Tensor::ones(&[2]))),
    };
    assert_eq!(
        keys(&h),
        [
            "body.0.weight",
            "body.0.bias",
            "body.2.weight",
            "body.2.bias",
            "first.weight",
            "first.bias",
            "scales.0",
            "scales.1"
        ]
    );
    assert_eq!(h.named_buffers()[0].0, "mask");
}

#[test]
fn derived_modules_nest_in_containers() {
    // A derived module that is Forward + Display is a Layer: it goes into a Sequential,
    // and its keys get the position prefix, as in PyTorch.
    let m: Sequential<f64> = Sequential::new_generic()
        .add(Residual { inner: Linear::<f64>::new_generic(2, 2), _t: PhantomData })
        .add(ReLU)
        .add(Residual {
            inner: sequential![LinearConfig { bias: false, ..LinearConfig::new(2, 2) }.build().unwrap()],
            _t: PhantomData,
        });
    assert_eq!(keys(&m), ["0.inner.weight", "0.inner.bias", "2.inner.0.weight"]);
    assert_eq!(m.forward(&Var::constant(Tensor::ones(&[4, 2]))).shape().as_slice(), &[4, 2]);
}

#[test]
fn a_derived_model_trains() {
    kiln_nn::init::manual_seed(5);
    let m: Classifier<f64> = Classifier::new();
    let x = Var::constant(Tensor::from_vec((0..12).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.4).collect(), &[3, 4]));
    let y = Var::constant(Tensor::from_vec(vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], &[3, 3]));
    let mut first = None;
    let mut loss = 0.0;
    for _ in 0..300 {
        m.zero_grad();
        let d = m.forward(&x).softmax(-1).sub(&y);
        let l = d.mul(&d).mean(&[], false);
        loss = l.item();
        first.get_or_insert(loss);
        l.backward();
        for p in m.parameters() {
            let g = p.grad().unwrap();
            p.update_value(|v| v.axpy_(-0.5, &g));
        }
    }
    assert!(loss < first.unwrap() * 0.1, "{first:?} -> {loss}");
}
