//! `summary` of the MNIST CNN of `examples/cnn_mnist.rs`, as a `Sequential` and as a
//! `#[derive(Module)]` struct, against torchinfo's figures (`fixtures/summary_torchinfo.json`,
//! written by `fixtures/summary_torchinfo.py`).

use std::fmt;

use kiln_nn::{
    summary, Conv2d, Conv2dConfig, Dropout, Flatten, Forward, Layer, Linear, LogSoftmax, MaxPool2d, ModelSummary,
    Module, Padding, ReLU, Sequential, Var,
};
use serde_json::Value;

fn conv3x3(in_channels: usize, out_channels: usize) -> Conv2d {
    Conv2dConfig { padding: Padding::Explicit([1, 1]), ..Conv2dConfig::new(in_channels, out_channels, 3) }
        .build()
        .expect("valid sizes")
}

/// The network of `examples/cnn_mnist.rs`.
fn cnn() -> Sequential {
    Sequential::new()
        .add(conv3x3(1, 32))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv3x3(32, 64))
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Dropout::new(0.25))
        .add(Flatten::default())
        .add(Linear::new(64 * 7 * 7, 128))
        .add(ReLU)
        .add(Dropout::new(0.5))
        .add(Linear::new(128, 10))
        .add(LogSoftmax { dim: 1 })
}

#[test]
fn mnist_cnn_matches_torchinfo() {
    let model = cnn();
    let s = summary(&model, &[1, 1, 28, 28]);
    // torchinfo 1.8.0 with torch, same architecture (nn.Sequential(Conv2d(1,32,3,padding=1), ReLU,
    // MaxPool2d(2), Conv2d(32,64,3,padding=1), ReLU, MaxPool2d(2), Dropout, Flatten,
    // Linear(3136,128), ReLU, Dropout, Linear(128,10), LogSoftmax)),
    // torchinfo.summary(m, input_size=(1, 1, 28, 28)): total_params 421642, total_mult_adds 4278922.
    assert_eq!(s.total_params(), 421_642);
    assert_eq!(s.trainable_params, 421_642);
    assert_eq!(s.frozen_params, 0);
    assert_eq!(s.mult_adds, 4_278_922);
    let shapes: Vec<Vec<usize>> = s.layers.iter().map(|l| l.output_shape.clone()).collect();
    assert_eq!(shapes[0], vec![1, 32, 28, 28]);
    assert_eq!(shapes[2], vec![1, 32, 14, 14]);
    assert_eq!(shapes[5], vec![1, 64, 7, 7]);
    assert_eq!(shapes[7], vec![1, 3136]);
    assert_eq!(shapes[12], vec![1, 10]);
    let params: Vec<usize> = s.layers.iter().map(|l| l.params).collect();
    assert_eq!(params, vec![320, 0, 0, 18_496, 0, 0, 0, 0, 401_536, 0, 0, 1_290, 0]);
    assert_eq!(s.layers[0].kind, "Conv2d");
    assert_eq!(s.param_bytes, 421_642 * 4);
    // freezing a layer moves its parameters to the frozen count
    for p in model[0].parameters() {
        p.set_requires_grad(false);
    }
    let frozen = summary(&model, &[2, 1, 28, 28]);
    assert_eq!((frozen.trainable_params, frozen.frozen_params), (421_642 - 320, 320));
    assert_eq!(frozen.mult_adds, 2 * 4_278_922);
    let text = frozen.to_string();
    assert!(text.contains("Total params: 421642") && text.contains("Conv2d (0)"), "{text}");
    println!("{}", s);
}

/// The same network as a struct with its own `forward`, the convolutional part in a nested
/// struct, applying its layers with `call` so that summary sees them.
#[derive(Module)]
struct Features {
    conv1: Conv2d,
    act1: ReLU,
    pool1: MaxPool2d,
    conv2: Conv2d,
    act2: ReLU,
    pool2: MaxPool2d,
}

impl Forward for Features {
    fn forward(&self, x: &Var) -> Var {
        let x = self.pool1.call(&self.act1.call(&self.conv1.call(x)));
        self.pool2.call(&self.act2.call(&self.conv2.call(&x)))
    }
}

#[derive(Module)]
struct Net {
    features: Features,
    drop1: Dropout,
    flatten: Flatten,
    fc1: Linear,
    act: ReLU,
    drop2: Dropout,
    fc2: Linear,
    out: LogSoftmax,
}

impl Forward for Net {
    fn forward(&self, x: &Var) -> Var {
        let x = self.flatten.call(&self.drop1.call(&self.features.call(x)));
        let x = self.drop2.call(&self.act.call(&self.fc1.call(&x)));
        self.out.call(&self.fc2.call(&x))
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features()")
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Net()")
    }
}

fn net() -> Net {
    Net {
        features: Features {
            conv1: conv3x3(1, 32),
            act1: ReLU,
            pool1: MaxPool2d::new(2),
            conv2: conv3x3(32, 64),
            act2: ReLU,
            pool2: MaxPool2d::new(2),
        },
        drop1: Dropout::new(0.25),
        flatten: Flatten::default(),
        fc1: Linear::new(64 * 7 * 7, 128),
        act: ReLU,
        drop2: Dropout::new(0.5),
        fc2: Linear::new(128, 10),
        out: LogSoftmax { dim: 1 },
    }
}

fn torchinfo_cases() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/summary_torchinfo.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    v["cases"].as_array().expect("cases").clone()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer") as usize).collect()
}

/// The leaf rows (the layers torchinfo counts) of a summary.
fn leaves(s: &ModelSummary) -> Vec<(String, Vec<usize>, usize, u64)> {
    let l = &s.layers;
    (0..l.len())
        .filter(|&i| l.get(i + 1).is_none_or(|n| n.depth <= l[i].depth))
        .map(|i| (l[i].kind.clone(), l[i].output_shape.clone(), l[i].params, l[i].mult_adds))
        .collect()
}

#[test]
fn a_derived_model_summarises_as_its_sequential_twin_and_as_torchinfo() {
    let (seq, derived) = (cnn(), net());
    for case in torchinfo_cases() {
        let shape = usizes(&case["input_shape"]);
        let a = summary(&seq, &shape);
        let b = summary(&derived, &shape);
        for s in [&a, &b] {
            assert_eq!(s.total_params() as u64, case["total_params"].as_u64().unwrap());
            assert_eq!(s.trainable_params as u64, case["trainable_params"].as_u64().unwrap());
            assert_eq!(s.mult_adds, case["total_mult_adds"].as_u64().unwrap(), "{s}");
            assert!(s.unhooked.is_empty());
        }
        // torchinfo's rows (all leaves for nn.Sequential) are the leaves of both tables
        let expected: Vec<(String, Vec<usize>, usize, u64)> = case["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let kind = l["kind"].as_str().unwrap().to_string();
                (
                    kind,
                    usizes(&l["output_shape"]),
                    l["params"].as_u64().unwrap() as usize,
                    l["mult_adds"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(leaves(&a), expected);
        assert_eq!(leaves(&b), expected);
        // the struct's table nests the features under their container, named by key
        let features = &b.layers[0];
        assert_eq!((features.kind.as_str(), features.name.as_str(), features.depth), ("Features", "features", 0));
        assert_eq!(features.params, 320 + 18_496);
        assert_eq!(features.mult_adds, b.layers[1..7].iter().map(|l| l.mult_adds).sum::<u64>());
        assert_eq!((b.layers[1].name.as_str(), b.layers[1].depth), ("features.conv1", 1));
        assert_eq!(b.layers[9].name, "fc1");
        assert_eq!(a.param_bytes, b.param_bytes);
        assert_eq!(a.activation_bytes, b.activation_bytes);
        let text = b.to_string();
        assert!(text.contains("  Conv2d (features.conv1)") && text.contains("Features (features)"), "{text}");
    }
}

/// A struct whose `forward` applies its layers with a bare `forward`: one row, reported.
#[derive(Module)]
struct Opaque {
    fc: Linear,
}

impl Forward for Opaque {
    fn forward(&self, x: &Var) -> Var {
        self.fc.forward(x)
    }
}

impl fmt::Display for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opaque()")
    }
}

#[test]
fn sub_modules_applied_without_call_are_reported() {
    let model: Sequential = Sequential::new().add(Opaque { fc: Linear::new(4, 3) }).add(ReLU);
    let s = summary(&model, &[2, 4]);
    assert_eq!(s.layers.len(), 2);
    assert_eq!(s.total_params(), 15);
    assert_eq!(s.unhooked, ["0"]);
    assert_eq!(s.mult_adds, 0);
    assert!(s.to_string().contains("Not broken down"), "{s}");
}

#[test]
fn a_single_layer_is_its_own_row() {
    let fc: Linear = Linear::new(4, 3);
    let s = summary(&fc, &[2, 4]);
    assert_eq!(s.layers.len(), 1);
    assert_eq!((s.layers[0].kind.as_str(), s.layers[0].name.as_str()), ("Linear", ""));
    assert_eq!(s.mult_adds, 2 * 15);
}
