//! Stochastic weight averaging and EMA in the training loop: `SWALR` and `update_bn` against
//! PyTorch (`tests/fixtures/weight_averaging.json`, made by `make_weight_averaging.py`), and
//! the `SwaCallback` / `EmaCallback` against the averages computed by hand.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use kiln_autograd::Var;
use kiln_nn::{
    sequential, BatchNorm1d, BatchNormConfig, CrossEntropyLoss, Forward, Linear, LinearConfig, Module, ReLU,
    Sequential, StateDict,
};
use kiln_optim::lr_scheduler::{AnnealStrategy, ExponentialLR, LRScheduler, SWALR};
use kiln_optim::{Optimizer, ParamGroup, SGDConfig, SGD};
use kiln_tensor::Tensor;
use kiln_train::callbacks::LambdaCallback;
use kiln_train::{update_bn, update_bn_inputs, EmaCallback, SwaCallback, Trainer, Verbosity};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/weight_averaging.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn tensor_of(v: &Value) -> Tensor<f64> {
    let shape: Vec<usize> =
        v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().unwrap() as usize).collect();
    Tensor::from_vec(floats(&v["values"]), &shape)
}

fn state_of(v: &Value) -> StateDict<f64> {
    v.as_object().expect("state").iter().map(|(k, t)| (k.clone(), tensor_of(t))).collect()
}

#[test]
fn swalr_matches_pytorch() {
    let fx = fixture();
    let cases = fx["swalr"].as_array().expect("the fixture has no swalr cases");
    assert!(!cases.is_empty());
    for (ci, case) in cases.iter().enumerate() {
        let lrs = floats(&case["lrs"]);
        let groups: Vec<ParamGroup<f64, SGDConfig>> = lrs
            .iter()
            .map(|&lr| ParamGroup::new(vec![Var::param(Tensor::zeros(&[1]))], SGDConfig { lr, ..Default::default() }))
            .collect();
        let mut opt = SGD::from_groups(groups);
        let strategy = match case["strategy"].as_str().expect("strategy") {
            "cos" => AnnealStrategy::Cos,
            "linear" => AnnealStrategy::Linear,
            s => panic!("unknown strategy {s}"),
        };
        let swa_start = case["swa_start"].as_u64().map(|s| s as usize);
        let mut before = swa_start.map(|_| ExponentialLR::new(&mut opt, case["gamma"].as_f64().expect("gamma")));
        let anneal = case["anneal_epochs"].as_u64().expect("anneal_epochs") as usize;
        let mut sched = SWALR::new(&mut opt, &floats(&case["swa_lr"]), anneal, strategy);
        for (epoch, want) in case["epochs"].as_array().expect("epochs").iter().enumerate() {
            let got: Vec<f64> = opt.param_groups().iter().map(|g| g.config.lr).collect();
            for (g, w) in got.iter().zip(floats(want)) {
                assert!(
                    (g - w).abs() <= 1e-15 * w.abs().max(1.0),
                    "case {ci} epoch {epoch}: {got:?} vs PyTorch {want}"
                );
            }
            opt.step();
            match (&mut before, swa_start) {
                (Some(b), Some(s)) if epoch <= s => b.step(&mut opt),
                _ => sched.step(&mut opt),
            }
        }
    }
}

/// The stack the fixture lists, in f64.
fn build_stack(layers: &Value) -> Sequential<f64> {
    let mut seq = Sequential::new_generic();
    for l in layers.as_array().expect("layers") {
        let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("layer {l}: {k}")) as usize;
        match l["type"].as_str().expect("type") {
            "Linear" => seq.push(LinearConfig::new(n("in_features"), n("out_features")).build::<f64>().unwrap()),
            "BatchNorm1d" => {
                let momentum = l["momentum"].as_f64();
                let bn: BatchNorm1d<f64> =
                    BatchNormConfig { momentum, ..BatchNormConfig::new(n("num_features")) }.build().unwrap();
                seq.push(bn);
            }
            "ReLU" => seq.push(ReLU),
            t => panic!("unknown layer type {t}"),
        }
    }
    seq
}

#[test]
fn update_bn_matches_pytorch() {
    let fx = fixture();
    let case = &fx["update_bn"];
    let mut model = build_stack(&case["layers"]);
    let mut before = state_of(&case["before"]);
    // PyTorch keeps num_batches_tracked as an integer, left out of "before": take the model's
    for (k, v) in model.state_dict() {
        before.entry(k).or_insert(v);
    }
    model.load_state_dict(&before, true).unwrap();
    model.eval();
    let inputs: Vec<Tensor<f64>> = case["inputs"].as_array().expect("inputs").iter().map(tensor_of).collect();
    update_bn_inputs(inputs, &mut model);
    let got = model.state_dict();
    for (k, want) in state_of(&case["after"]) {
        let g = &got[&k];
        assert_eq!(g.shape(), want.shape(), "{k}");
        for (a, b) in g.to_vec().iter().zip(want.to_vec()) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{k}: {a} vs PyTorch {b}");
        }
    }
    for (k, n) in case["num_batches_tracked"].as_object().expect("num_batches_tracked") {
        assert_eq!(got[k].item(), n.as_f64().unwrap(), "{k}");
    }
    let momenta: Vec<Option<f64>> =
        model.iter().filter_map(|l| l.downcast_ref::<BatchNorm1d<f64>>()).map(|bn| bn.config.momentum).collect();
    let want: Vec<Option<f64>> =
        case["momenta_after"].as_array().expect("momenta_after").iter().map(Value::as_f64).collect();
    assert_eq!(momenta, want);
    assert_eq!(model.is_training(), case["training_after"].as_bool().unwrap());
}

#[test]
fn update_bn_reaches_nested_sequentials_and_skips_models_without_batch_norm() {
    let inner: Sequential<f64> = sequential![BatchNormConfig::new(2).build::<f64, 1>().unwrap()];
    let mut model: Sequential<f64> = sequential![LinearConfig::new(2, 2).build::<f64>().unwrap(), inner];
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 5.0], &[2, 2]);
    update_bn_inputs(vec![x.clone()], &mut model);
    let sd = model.state_dict();
    assert_eq!(sd["1.0.num_batches_tracked"].item(), 1.0);
    // the batch's own mean, as momentum None gives for one batch
    let h = model[0].forward(&Var::constant(x.clone())).value();
    let mean = h.mean(&[0], false).to_vec();
    for (a, b) in sd["1.0.running_mean"].to_vec().iter().zip(mean) {
        assert!((a - b).abs() < 1e-12);
    }
    let mut plain: Sequential<f64> = sequential![LinearConfig::new(2, 2).build::<f64>().unwrap()];
    let w = plain.state_dict();
    update_bn_inputs(vec![x], &mut plain);
    assert_eq!(plain.state_dict(), w);
}

/// A derived struct holding a batch norm: out of update_bn's reach, which says so.
#[derive(kiln_nn::Module)]
struct Block {
    fc: Linear,
    bn: BatchNorm1d,
}
impl Forward for Block {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        self.bn.forward(&self.fc.forward(x))
    }
}

#[test]
#[should_panic(expected = "update_bn: cannot reach the batch-norm layer(s) [\"bn\"]")]
fn update_bn_refuses_layers_it_cannot_reach() {
    let mut m = Block { fc: Linear::new(2, 2), bn: BatchNorm1d::new(2) };
    update_bn_inputs(vec![Tensor::<f32>::ones(&[2, 2])], &mut m);
}

fn bn_net(seed: u64) -> Sequential<f32> {
    let _g = common::rng_lock();
    kiln_nn::init::manual_seed(seed);
    sequential![Linear::new(2, 8), BatchNorm1d::new(8), ReLU, Linear::new(8, 2)]
}

#[test]
fn swa_callback_averages_epochs_anneals_and_updates_bn() {
    let data = common::blob_batches(64, 3, 16);
    let mut model = bn_net(1);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.2, ..Default::default() });
    let epochs = 7;
    let swa_start = 3;
    // the parameters after each epoch, recorded before the SWA callback runs
    let seen: Rc<RefCell<Vec<StateDict<f32>>>> = Rc::default();
    let sink = Rc::clone(&seen);
    let params: Vec<(String, Var<f32>)> = model.named_parameters();
    let record = LambdaCallback::new().on_epoch_end(move |_| {
        sink.borrow_mut().push(params.iter().map(|(k, v)| (k.clone(), v.value())).collect());
    });
    let swa =
        SwaCallback::new(swa_start).swa_lr(&[0.05], 2, AnnealStrategy::Linear).update_bn(bn_net(99), data.clone());
    let history = Trainer::new(epochs)
        .verbosity(Verbosity::Silent)
        .scheduler(kiln_optim::lr_scheduler::StepLR::new(&mut opt, 1, 0.5), kiln_train::SchedulerInterval::Epoch)
        .callback(record)
        .callback(swa)
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, None)
        .unwrap();
    // StepLR halves the rate until SWA starts; SWALR anneals linearly from there to 0.05
    let lrs = history.get("lr");
    let start = 0.2 * 0.5f64.powi(swa_start as i32);
    let want = [0.2, 0.1, 0.05, start, (start + 0.05) / 2.0, 0.05, 0.05];
    for (e, (g, w)) in lrs.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-9, "epoch {e}: lr {g}, want {w}");
    }
    // the model holds the mean of the parameters after epochs swa_start..epochs
    let seen = seen.borrow();
    let avg = &seen[swa_start..];
    let sd = model.state_dict();
    for (k, _) in model.named_parameters() {
        let n = avg.len() as f32;
        let mean: Vec<f32> =
            (0..sd[&k].numel()).map(|i| avg.iter().map(|s| s[&k].to_vec()[i]).sum::<f32>() / n).collect();
        for (a, b) in sd[&k].to_vec().iter().zip(mean) {
            assert!((a - b).abs() < 1e-5, "{k}: {a} vs mean {b}");
        }
    }
    // and batch-norm statistics recomputed for those weights over the loader
    let mut reference = bn_net(5);
    let weights: StateDict<f32> = sd
        .iter()
        .filter(|(k, _)| !k.contains("running") && !k.contains("num_batches"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    reference.load_state_dict(&weights, false).unwrap();
    update_bn(&data, &mut reference);
    let r = reference.state_dict();
    assert_eq!(r["1.num_batches_tracked"].item(), data.len() as f32);
    assert!(common::bit_equal(&r, &sd), "update_bn at the end of training gives other statistics");
}

#[test]
fn ema_callback_follows_every_step_and_validates_with_the_average() {
    let data = common::blob_batches(48, 4, 16);
    let mut model = common::mlp(2);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.3, ..Default::default() });
    let decay = 0.8;
    // the parameters after every optimiser step, read through shared handles
    let params: Vec<(String, Var<f32>)> = model.named_parameters();
    let init: StateDict<f32> = model.state_dict();
    let steps: Rc<RefCell<Vec<StateDict<f32>>>> = Rc::default();
    let sink = Rc::clone(&steps);
    let record = LambdaCallback::new().on_batch_end(move |_| {
        sink.borrow_mut().push(params.iter().map(|(k, v)| (k.clone(), v.value())).collect());
    });
    let history = Trainer::new(3)
        .verbosity(Verbosity::Silent)
        .callback(record)
        .callback(EmaCallback::new(decay))
        .fit(&mut model, &mut opt, &CrossEntropyLoss::default(), &data, Some(&data))
        .unwrap();
    assert_eq!(steps.borrow().len(), 3 * data.len());
    // shadow <- shadow + (1 - decay)(param - shadow), in the callback's f32 arithmetic
    let mut shadow = init;
    for s in steps.borrow().iter() {
        for (k, t) in shadow.iter_mut() {
            *t = t.add(&s[k].sub(t).mul_scalar((1.0 - decay) as f32));
        }
    }
    let got = model.state_dict();
    assert!(common::max_abs_diff(&got, &shadow) < 1e-6, "the model does not hold the average at the end");
    // the last epoch was validated with the weights the model now holds
    let val = Trainer::new(1).evaluate(&mut model, &CrossEntropyLoss::default(), &data).unwrap()["loss"];
    assert_eq!(val, history.last().unwrap()["val_loss"]);
}
