//! Optimiser state in a file of its own (`opt.save` / `opt.load`): training resumed from a
//! model file and an optimiser file matches an uninterrupted run bit for bit; bad files are
//! typed errors naming the file and the field, and leave the optimiser as it was.
//!
//! Written with `kiln_nn::` and `kiln_optim::` paths only: a project that depends on these two
//! crates has everything the README's training loop needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_nn::serialize::{save_raw, RawTensor, SafetensorsFile};
use kiln_nn::{load, no_grad, save, CrossEntropyLoss, Forward, Indices, Linear, Module, ReLU, Sequential, Tensor, Var};
use kiln_optim::lr_scheduler::{LRScheduler, StepLR};
use kiln_optim::{Adam, AdamConfig, OptimError, Optimizer, SGDConfig, SGD};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-optim-file-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model(seed: u64) -> Sequential {
    kiln_nn::init::manual_seed(seed);
    Sequential::new().add(Linear::new(6, 8)).add(ReLU).add(Linear::new(8, 3))
}

/// Batch `i` of a fixed stream: inputs and class targets.
fn batch(i: usize) -> (Tensor, Indices) {
    let x = Tensor::from_vec((0..24).map(|j| ((i * 31 + j * 7) % 17) as f32 / 8.0 - 1.0).collect(), &[4, 6]);
    (x, Indices::from_vec((0..4).map(|j| (i + j) % 3).collect()))
}

/// The README's loop: forward, loss, backward, step, zero_grad.
fn train<O: Optimizer<f32>>(model: &Sequential, opt: &mut O, steps: std::ops::Range<usize>) {
    for i in steps {
        let (x, y) = batch(i);
        let loss = CrossEntropyLoss::default().forward(&model.forward(&Var::constant(x)), &y);
        loss.backward();
        opt.step();
        opt.zero_grad();
    }
}

fn bits(m: &Sequential) -> Vec<Vec<u32>> {
    m.parameters().iter().map(|p| p.value().to_vec().iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn adam_resumed_from_files_matches_an_uninterrupted_run_bit_for_bit() {
    let dir = temp_dir("adam");
    let config = AdamConfig { lr: 1e-2, weight_decay: 1e-3, amsgrad: true, ..Default::default() };

    let straight = model(1);
    let mut opt = Adam::new(straight.parameters(), config.clone());
    train(&straight, &mut opt, 0..7);

    let first = model(1);
    let mut opt = Adam::new(first.parameters(), config.clone());
    train(&first, &mut opt, 0..3);
    save(&first, dir.join("model.safetensors"), &Default::default()).unwrap();
    opt.save(dir.join("adam.safetensors")).unwrap();
    drop((first, opt));

    // A new process: other initial weights, a fresh optimiser, both loaded from their files.
    let mut resumed = model(99);
    let mut opt = Adam::new(resumed.parameters(), AdamConfig::default());
    load(&mut resumed, dir.join("model.safetensors"), true).unwrap();
    opt.load(dir.join("adam.safetensors")).unwrap();
    assert_eq!(opt.param_groups()[0].config, config, "hyper-parameters come from the file");
    train(&resumed, &mut opt, 3..7);

    assert_eq!(bits(&resumed), bits(&straight));
    let eval = |m: &Sequential| no_grad(|| m.forward(&Var::constant(batch(9).0)).value().to_vec());
    assert_eq!(eval(&resumed), eval(&straight));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sgd_with_momentum_and_a_scheduler_resumes_bit_for_bit() {
    let dir = temp_dir("sgd");
    let config = SGDConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..Default::default() };
    let run = |m: &Sequential, opt: &mut SGD<f32>, sched: &mut StepLR, steps: std::ops::Range<usize>| {
        for i in steps {
            train(m, opt, i..i + 1);
            sched.step(opt);
        }
    };

    let straight = model(2);
    let mut opt = SGD::new(straight.parameters(), config.clone());
    let mut sched = StepLR::new(&mut opt, 2, 0.5);
    run(&straight, &mut opt, &mut sched, 0..6);

    let first = model(2);
    let mut opt = SGD::new(first.parameters(), config.clone());
    let mut sched = StepLR::new(&mut opt, 2, 0.5);
    run(&first, &mut opt, &mut sched, 0..3);
    save(&first, dir.join("model.safetensors"), &Default::default()).unwrap();
    opt.save(dir.join("sgd.safetensors")).unwrap();
    let sched_state = sched.state_dict();

    let mut resumed = model(3);
    let mut opt = SGD::new(resumed.parameters(), config);
    let mut sched = StepLR::new(&mut opt, 2, 0.5);
    load(&mut resumed, dir.join("model.safetensors"), true).unwrap();
    opt.load(dir.join("sgd.safetensors")).unwrap();
    sched.load_state_dict(&sched_state).unwrap();
    run(&resumed, &mut opt, &mut sched, 3..6);
    assert_eq!(bits(&resumed), bits(&straight));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_file_holds_pytorch_keys_and_the_groups() {
    let dir = temp_dir("layout");
    let m = model(4);
    let mut opt = Adam::new(m.parameters(), AdamConfig::default());
    train(&m, &mut opt, 0..2);
    let path = dir.join("adam.safetensors");
    opt.save(&path).unwrap();
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.metadata()["format"], "kiln-optim");
    assert_eq!(f.metadata()["optimizer"], "Adam");
    assert!(f.metadata()["param_groups"].contains("\"lr\":0.001"), "{}", f.metadata()["param_groups"]);
    assert_eq!(f.tensor_i64("state.0.step").unwrap(), (vec![2], vec![]));
    assert_eq!(f.info("state.3.exp_avg_sq").unwrap().shape, [3]);
    assert_eq!(f.keys().count(), 4 * 3, "step, exp_avg, exp_avg_sq for each of 4 parameters");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_are_typed_errors_and_change_nothing() {
    let dir = temp_dir("bad");
    let m = model(5);
    let mut opt = Adam::new(m.parameters(), AdamConfig::default());
    train(&m, &mut opt, 0..2);
    let path = dir.join("adam.safetensors");
    opt.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let before = opt.state_dict();

    // Missing and truncated files.
    let err = opt.load(dir.join("none.safetensors")).unwrap_err();
    assert!(matches!(&err, OptimError::File { path: p, .. } if p.ends_with("none.safetensors")), "{err:?}");
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let err = opt.load(&path).unwrap_err();
    assert!(matches!(err, OptimError::File { .. }) && err.to_string().contains("adam.safetensors"), "{err}");

    // Fields: another format, JSON that is not this optimiser's groups, a bad tensor name.
    let rewrite = |edit: &dyn Fn(&mut kiln_nn::Metadata, &mut BTreeMap<String, RawTensor>)| {
        let f = SafetensorsFile::from_bytes(good.clone()).unwrap();
        let mut meta = f.metadata().clone();
        let mut tensors: BTreeMap<String, RawTensor> =
            f.keys().map(|k| (k.to_string(), f.raw_tensor(k).unwrap())).collect();
        edit(&mut meta, &mut tensors);
        save_raw(&path, &tensors, &meta).unwrap();
    };
    rewrite(&|meta, _| {
        meta.insert("format".into(), "pt".into());
    });
    let err = opt.load(&path).unwrap_err();
    assert!(matches!(&err, OptimError::FileField { field, .. } if field == "__metadata__.format"), "{err:?}");
    rewrite(&|meta, _| {
        meta.insert("param_groups".into(), "[{\"lr\": 1}]".into());
    });
    let err = opt.load(&path).unwrap_err();
    assert!(matches!(&err, OptimError::FileField { field, .. } if field == "__metadata__.param_groups"), "{err:?}");
    rewrite(&|_, tensors| {
        let t = tensors.remove("state.0.exp_avg").unwrap();
        tensors.insert("state.x.exp_avg".into(), t);
    });
    let err = opt.load(&path).unwrap_err();
    assert!(matches!(&err, OptimError::FileField { field, .. } if field == "state.x.exp_avg"), "{err:?}");
    // A well-formed file of another optimiser.
    let mut sgd = SGD::new(m.parameters(), SGDConfig { momentum: 0.9, ..Default::default() });
    train(&m, &mut sgd, 0..1);
    sgd.save(&path).unwrap();
    // (its groups are SGD's, which are not Adam's: the field is named before the kinds are compared)
    let err = opt.load(&path).unwrap_err();
    assert!(matches!(&err, OptimError::FileField { field, .. } if field == "__metadata__.param_groups"), "{err:?}");
    // A missing buffer: the optimiser names it.
    std::fs::write(&path, &good).unwrap();
    rewrite(&|_, tensors| {
        tensors.remove("state.1.exp_avg");
    });
    let err = opt.load(&path).unwrap_err();
    assert_eq!(err, OptimError::MissingState { id: 1, key: "exp_avg".into() });

    assert_eq!(opt.state_dict(), before, "a failed load changed the optimizer");
    std::fs::remove_dir_all(&dir).unwrap();
}
