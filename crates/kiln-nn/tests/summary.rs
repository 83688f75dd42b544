//! `summary` of the MNIST CNN of `examples/cnn_mnist.rs`, against torchinfo's figures.

use kiln_nn::{
    summary, Conv2d, Conv2dConfig, Dropout, Flatten, Linear, LogSoftmax, MaxPool2d, Padding, ReLU, Sequential,
};

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
