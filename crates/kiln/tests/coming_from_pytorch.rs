//! The kiln forms of everyday PyTorch idioms, one test each: the book's "Coming from PyTorch"
//! page includes these snippets (between the `ANCHOR` comment lines), so every form it shows
//! is compiled and run by `cargo test -p kiln --test coming_from_pytorch`.

use std::path::PathBuf;

use kiln::prelude::*;

/// A fresh file path in the system's temporary folder, unique to this process and `name`.
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kiln-coming-from-pytorch-{}-{name}", std::process::id()))
}

/// Two small layers with dropout between them, written as a struct.
// ANCHOR: model_definition
// class Net(nn.Module):
//     def __init__(self):
//         super().__init__()
//         self.fc1 = nn.Linear(4, 8); self.dropout = nn.Dropout(0.5); self.fc2 = nn.Linear(8, 3)
//     def forward(self, x):
//         return self.fc2(self.dropout(F.relu(self.fc1(x))))
#[derive(kiln::nn::Module)]
#[module(crate = "kiln::nn")]
struct Net {
    fc1: Linear,
    dropout: kiln::nn::Dropout,
    fc2: Linear,
}

impl Net {
    fn new() -> Self {
        Net { fc1: Linear::new(4, 8), dropout: kiln::nn::Dropout::new(0.5), fc2: Linear::new(8, 3) }
    }
}

impl Forward for Net {
    fn forward(&self, x: &Var) -> Var {
        self.fc2.forward(&self.dropout.forward(&self.fc1.forward(x).relu()))
    }
}
// ANCHOR_END: model_definition

#[test]
fn model_definition() {
    let net = Net::new();
    // ANCHOR: sequential
    // nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    let seq: Sequential = Sequential::new().add(Linear::new(4, 8)).add(ReLU).add(Linear::new(8, 3));
    // ANCHOR_END: sequential
    let names: Vec<String> = net.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    assert_eq!(net.num_parameters(), seq.num_parameters());
    assert_eq!(seq.named_parameters()[2].0, "2.weight");
}

#[test]
fn call() {
    let model = Net::new();
    // ANCHOR: call
    // y = model(x)
    let x = Var::constant(Tensor::ones(&[2, 4]));
    let y = model.forward(&x);
    // ANCHOR_END: call
    assert_eq!(y.shape().to_vec(), vec![2, 3]);
}

#[test]
fn zero_grad_backward_step() {
    kiln::nn::init::manual_seed(0);
    let model = Net::new();
    let x = Var::constant(Tensor::randn(&[16, 4], &mut Rng::new(1)));
    let y = Indices::from_vec((0..16).map(|i| i % 3).collect());
    let criterion = CrossEntropyLoss::default();
    let first = criterion.forward(&model.forward(&x), &y).item();
    // ANCHOR: step
    // optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    let mut optimizer = SGD::new(model.parameters(), SGDConfig { lr: 0.1, momentum: 0.9, ..Default::default() });
    for _ in 0..50 {
        optimizer.zero_grad();
        let loss = criterion.forward(&model.forward(&x), &y);
        loss.backward();
        optimizer.step();
    }
    // ANCHOR_END: step
    let last = criterion.forward(&model.forward(&x), &y).item();
    assert!(last < first, "the loss went down: {first} -> {last}");
}

#[test]
fn no_grad_scope() {
    let model = Net::new();
    let x = Var::constant(Tensor::ones(&[2, 4]));
    // ANCHOR: no_grad
    // with torch.no_grad(): y = model(x)
    let y = no_grad(|| model.forward(&x));
    // ANCHOR_END: no_grad
    assert!(!y.requires_grad());
    assert!(model.forward(&x).requires_grad());
}

#[test]
fn train_and_eval() {
    let mut model = Net::new();
    let x = Var::constant(Tensor::ones(&[64, 4]));
    // ANCHOR: train_eval
    // model.eval() ... model.train()
    model.eval();
    let a = model.forward(&x).value().to_vec();
    let b = model.forward(&x).value().to_vec();
    assert_eq!(a, b, "dropout is off in eval mode");
    model.train();
    assert!(model.is_training());
    // ANCHOR_END: train_eval
    let c = model.forward(&x).value().to_vec();
    assert_ne!(a, c, "dropout is on again in training mode");
}

#[test]
fn state_dict() {
    let model = Net::new();
    // ANCHOR: state_dict
    // sd = model.state_dict(); other.load_state_dict(sd, strict=True)
    let sd = model.state_dict();
    let mut other = Net::new();
    other.load_state_dict(&sd, true).expect("the same keys and shapes");
    // ANCHOR_END: state_dict
    assert!(sd.contains_key("fc1.weight") && sd.contains_key("fc2.bias"));
    assert_eq!(other.fc1.weight.value().to_vec(), model.fc1.weight.value().to_vec());
}

#[test]
fn data_loader() {
    kiln::nn::init::manual_seed(0);
    let model = Net::new();
    let criterion = CrossEntropyLoss::default();
    let mut optimizer = SGD::new(model.parameters(), SGDConfig { lr: 0.1, ..Default::default() });
    let mut sizes = Vec::new();
    // ANCHOR: dataloader
    // loader = DataLoader(dataset, batch_size=32, shuffle=True)
    // for x, y in loader: ...
    let dataset: kiln::data::VecDataset<(Vec<f32>, usize)> =
        (0..100).map(|i| (vec![i as f32 / 100.0; 4], i % 3)).collect();
    let loader = DataLoader::new(dataset, 32).shuffle(true).seed(1);
    for batch in &loader {
        sizes.push(batch.len());
        let x = Var::constant(batch.inputs);
        let y = Indices::from_vec(batch.targets.classes().to_vec());
        optimizer.zero_grad();
        let loss = criterion.forward(&model.forward(&x), &y);
        loss.backward();
        optimizer.step();
    }
    // ANCHOR_END: dataloader
    assert_eq!(sizes, [32, 32, 32, 4]);
}

#[test]
fn lr_scheduler() {
    let model = Net::new();
    // ANCHOR: scheduler
    // scheduler = StepLR(optimizer, step_size=10, gamma=0.5); scheduler.step() every epoch
    use kiln::optim::lr_scheduler::{LRScheduler, StepLR};
    let mut optimizer = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    let mut scheduler = StepLR::new(&mut optimizer, 10, 0.5);
    for _epoch in 0..20 {
        // ... one epoch of training ...
        scheduler.step(&mut optimizer);
    }
    // ANCHOR_END: scheduler
    assert!((optimizer.lr() - 2.5e-4).abs() < 1e-12, "{}", optimizer.lr());
}

#[test]
fn save_and_load() {
    let path = temp_path("model.safetensors");
    let model = Net::new();
    // ANCHOR: save_load
    // torch.save(model.state_dict(), path); model.load_state_dict(torch.load(path))
    kiln::nn::save(&model, &path, &Default::default()).expect("written");
    let mut fresh = Net::new();
    let report = kiln::nn::load(&mut fresh, &path, true).expect("read back");
    // ANCHOR_END: save_load
    assert_eq!(report.loaded.len(), 4);
    assert_eq!(fresh.fc2.weight.value().to_vec(), model.fc2.weight.value().to_vec());
    std::fs::remove_file(&path).ok();
}

#[test]
fn training_checkpoint() {
    let path = temp_path("checkpoint.kiln");
    let model = Net::new();
    let mut optimizer = Adam::new(model.parameters(), AdamConfig::default());
    let x = Var::constant(Tensor::ones(&[4, 4]));
    model.forward(&x).sum_all().backward();
    optimizer.step();
    // ANCHOR: checkpoint
    // torch.save({"epoch": 5, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    use kiln::train::{load_checkpoint, save_checkpoint, Checkpoint};
    save_checkpoint(&path, &Checkpoint::new(5, &model).with_optimizer(&optimizer)).expect("written");
    let mut resumed = Net::new();
    let mut resumed_optimizer = Adam::new(resumed.parameters(), AdamConfig::default());
    let checkpoint = load_checkpoint(&path).expect("read back");
    checkpoint.restore_model(&mut resumed).expect("the model's keys");
    checkpoint.restore_optimizer(&mut resumed_optimizer).expect("the optimiser's groups");
    // ANCHOR_END: checkpoint
    assert_eq!(checkpoint.epoch, 5);
    assert_eq!(resumed.fc1.weight.value().to_vec(), model.fc1.weight.value().to_vec());
    assert_eq!(resumed_optimizer.state_dict(), optimizer.state_dict());
    std::fs::remove_file(&path).ok();
}

#[test]
fn autocast_bf16() {
    let mut model = Net::new();
    model.eval(); // no dropout: the two runs must see the same network
    let x = Var::constant(Tensor::randn(&[8, 4], &mut Rng::new(2)));
    let full = no_grad(|| model.forward(&x)).value().to_vec();
    // ANCHOR: autocast
    // with torch.autocast("cpu", dtype=torch.bfloat16): y = model(x)
    use kiln::tensor::{autocast, DType};
    let y = autocast(DType::BF16, || model.forward(&x));
    // ANCHOR_END: autocast
    let half = y.value().to_vec();
    // bfloat16 keeps 8 bits of mantissa: the outputs agree to about 1 %.
    for (a, b) in half.iter().zip(&full) {
        assert!((a - b).abs() <= 0.02 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn threads() {
    // ANCHOR: threads
    // torch.set_num_threads(2)
    kiln::tensor::set_num_threads(2);
    // ANCHOR_END: threads
    assert_eq!(kiln::tensor::get_num_threads(), 2);
}

#[test]
fn early_stopping() {
    kiln::nn::init::manual_seed(0);
    // Random inputs with random labels: the training loss falls, the validation loss soon rises.
    let mut rng = Rng::new(3);
    let mut labels = |n: usize| {
        kiln::data::Targets::from((0..n).map(|_| (rng.next_f64() * 3.0) as usize % 3).collect::<Vec<usize>>())
    };
    let (y, val_y) = (labels(64), labels(64));
    let mut rng = Rng::new(4);
    let (x, val_x): (Tensor, Tensor) = (Tensor::randn(&[64, 4], &mut rng), Tensor::randn(&[64, 4], &mut rng));
    let (train, val) = (kiln::train::tensor_batches(&x, &y, 16), kiln::train::tensor_batches(&val_x, &val_y, 64));
    let mut model = Net::new();
    let mut optimizer = Adam::new(model.parameters(), AdamConfig { lr: 1e-2, ..Default::default() });
    // ANCHOR: early_stopping
    // Keras: model.fit(..., callbacks=[EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)])
    use kiln::train::callbacks::EarlyStopping;
    let mut trainer = Trainer::new(200)
        .callback(EarlyStopping::new("val_loss").patience(3).restore_best_weights(true))
        .verbosity(kiln::train::Verbosity::Silent);
    let history =
        trainer.fit(&mut model, &mut optimizer, &CrossEntropyLoss::default(), &train, Some(&val)).expect("trained");
    // ANCHOR_END: early_stopping
    assert!(history.epochs.len() < 200, "stopped early, after {} epochs", history.epochs.len());
}

#[test]
fn load_pytorch_checkpoint() {
    // A checkpoint dict written by real `torch.save` (see ../shared/golden/pt/README.md); the
    // fixture is required, as in kiln-nn's own tests.
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/pt/checkpoint_dict.pt"));
    assert!(path.is_file(), "the PyTorch checkpoint fixture is missing: {}", path.display());
    // ANCHOR: load_pt
    // ckpt = torch.load(path, weights_only=True); model.load_state_dict(ckpt["model"]); epoch = ckpt["epoch"]
    use kiln::nn::{BatchNorm2d, Conv2d, Flatten, MaxPool2d, PtFile};
    let mut model: Sequential = Sequential::new()
        .add(Conv2d::new(1, 4, 3))
        .add(BatchNorm2d::new(4))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(4 * 13 * 13, 10));
    // Read as torch.load(weights_only=True) reads: a pickle that names code is refused.
    let checkpoint = PtFile::open(&path).expect("a PyTorch checkpoint");
    let epoch = checkpoint.get("epoch").and_then(|v| v.as_i64());
    // `load` finds the weights in the checkpoint dict (its `model` entry), by state_dict key.
    let report = kiln::nn::load(&mut model, &path, true).expect("the model's keys and shapes");
    // ANCHOR_END: load_pt
    assert_eq!(epoch, Some(3));
    assert_eq!(report.loaded.len(), 9, "{report:?}");
}
