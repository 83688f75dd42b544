//! The exports of RMSNorm, PixelShuffle, PixelUnshuffle, InstanceNorm1d/2d, Upsample and Conv3d
//! run by ONNX Runtime and compared with kiln's own outputs, over opsets 17 and 18 (where
//! `ReduceMean` takes its axes as an input); each file is also imported back into kiln and gives
//! the same outputs.

mod support;

use kiln_nn::functional::{InterpolateMode, Resize};
use kiln_nn::{
    Conv2dConfig, Conv3dConfig, Forward, InstanceNorm1d, InstanceNorm2d, InstanceNormConfig, Module, Padding,
    PixelShuffle, PixelUnshuffle, RMSNormConfig, ReLU, Sequential, UpsampleConfig,
};
use kiln_onnx::{export, ExportOptions};
use kiln_tensor::{Rng, Tensor};
use support::models::randomise_buffers;
use support::{assert_close, run_ort, temp_dir, Case};

fn upsample(resize: Resize, mode: InterpolateMode, align_corners: Option<bool>) -> kiln_nn::Upsample {
    let mut c = UpsampleConfig::new(resize);
    c.options.mode = mode;
    c.options.align_corners = align_corners;
    c.build().unwrap()
}

#[test]
fn new_layers_match_onnx_runtime() {
    let dir = temp_dir("layers2");
    let mut rng = Rng::new(5);
    let tracked = |affine| InstanceNormConfig { affine, track_running_stats: true, ..InstanceNormConfig::new(3) };
    let models: Vec<(&str, Sequential, Vec<usize>)> = vec![
        (
            "rms_norm",
            Sequential::new().add(RMSNormConfig::new(&[4, 5]).build::<f32>().unwrap()).add(
                RMSNormConfig { eps: Some(1e-3), elementwise_affine: false, ..RMSNormConfig::new(&[5]) }
                    .build::<f32>()
                    .unwrap(),
            ),
            vec![2, 3, 4, 5],
        ),
        (
            "pixel_shuffle",
            Sequential::new()
                .add(Conv2dConfig { padding: Padding::Same, ..Conv2dConfig::new(2, 8, 3) }.build::<f32>().unwrap())
                .add(PixelShuffle::new(2))
                .add(ReLU)
                .add(PixelUnshuffle::new(2)),
            vec![2, 2, 3, 4],
        ),
        (
            "instance_norm2d",
            Sequential::new()
                .add(InstanceNorm2d::<f32>::new(3))
                .add(InstanceNormConfig { affine: true, ..InstanceNormConfig::new(3) }.build::<f32, 2>().unwrap())
                .add(tracked(true).build::<f32, 2>().unwrap()),
            vec![2, 3, 4, 5],
        ),
        (
            "instance_norm1d",
            Sequential::new().add(InstanceNorm1d::<f32>::new(3)).add(tracked(false).build::<f32, 1>().unwrap()),
            vec![2, 3, 6],
        ),
        (
            "upsample_nearest",
            Sequential::new()
                .add(upsample(Resize::ScaleFactor(vec![2.0]), InterpolateMode::Nearest, None))
                .add(upsample(Resize::Size(vec![5, 13]), InterpolateMode::Nearest, None)),
            vec![2, 2, 3, 4],
        ),
        (
            "upsample_bilinear",
            Sequential::new()
                .add(upsample(Resize::ScaleFactor(vec![2.0, 1.5]), InterpolateMode::Bilinear, Some(false)))
                .add(upsample(Resize::Size(vec![7, 5]), InterpolateMode::Bilinear, Some(true)))
                .add(upsample(Resize::Size(vec![4, 9]), InterpolateMode::Bilinear, None)),
            vec![2, 2, 3, 4],
        ),
        (
            "upsample_linear",
            Sequential::new()
                .add(upsample(Resize::ScaleFactor(vec![3.0]), InterpolateMode::Linear, Some(true)))
                .add(upsample(Resize::Size(vec![7]), InterpolateMode::Linear, Some(false))),
            vec![2, 3, 4],
        ),
        (
            "conv3d",
            Sequential::new()
                .add(
                    Conv3dConfig {
                        stride: [2, 1, 2],
                        padding: Padding::Explicit([1, 0, 1]),
                        dilation: [1, 2, 1],
                        groups: 2,
                        ..Conv3dConfig::new(2, 4, 2)
                    }
                    .build::<f32>()
                    .unwrap(),
                )
                .add(ReLU)
                .add(
                    Conv3dConfig { kernel_size: [2, 3, 2], padding: Padding::Same, ..Conv3dConfig::new(4, 3, 1) }
                        .build::<f32>()
                        .unwrap(),
                ),
            vec![2, 2, 5, 6, 5],
        ),
    ];
    let (mut cases, mut expected) = (Vec::new(), Vec::new());
    for (name, mut model, shape) in models {
        randomise_buffers(&model, &mut rng);
        model.eval();
        for opset in [17, 18] {
            let x = Tensor::randn(&shape, &mut rng);
            let path = dir.join(format!("{name}_{opset}.onnx"));
            let options = ExportOptions { opset, ..ExportOptions::default() };
            let y = export(&model, &x, &path, options).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ours = model.forward(&kiln_autograd::Var::constant(x.clone())).value();
            assert_eq!(y.to_vec(), ours.to_vec(), "{name}");
            // the file comes back into kiln (DepthToSpace, Resize, ... import) with the same outputs
            let back = kiln_onnx::import(&path).unwrap_or_else(|e| panic!("{name}: import: {e}"));
            let again = back.forward(&kiln_autograd::Var::constant(x.clone())).value();
            assert_close(&format!("{name} opset {opset} imported"), &again, &y, 1e-5);
            cases.push(Case { model: path, inputs: vec![("input".into(), x, false)], outputs: 1 });
            expected.push((format!("{name} opset {opset}"), y));
        }
    }
    let Some(results) = run_ort(&dir, &cases) else { return };
    for (res, (name, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_close(&name, &got[0], &y, 1e-5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
