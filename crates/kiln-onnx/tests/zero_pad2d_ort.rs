//! `ZeroPad2d`'s export (`Pad`) run by ONNX Runtime, alone and between convolutions, batched
//! and unbatched.

mod support;

use kiln_nn::{Conv2dConfig, Forward, Module, ReLU, Sequential, ZeroPad2d};
use kiln_onnx::{export, ExportOptions};
use kiln_tensor::{Rng, Tensor};
use support::{assert_close, run_ort, temp_dir, Case};

#[test]
fn zero_pad2d_matches_onnx_runtime() {
    let dir = temp_dir("zero_pad2d");
    let mut rng = Rng::new(3);
    let models: Vec<(&str, Sequential, Vec<usize>, bool)> = vec![
        ("alone", Sequential::new().add(ZeroPad2d::with_sides([1, 0, 2, 3])), vec![1, 2, 3, 4], true),
        (
            "between_convs",
            Sequential::new()
                .add(ZeroPad2d::new(1))
                .add(Conv2dConfig::new(2, 3, 3).build::<f32>().unwrap())
                .add(ReLU)
                .add(ZeroPad2d::with_sides([0, 2, 1, 0])),
            vec![1, 2, 5, 5],
            true,
        ),
        ("unbatched", Sequential::new().add(ZeroPad2d::with_sides([2, 1, 0, 1])), vec![3, 2, 2], false),
    ];
    let (mut cases, mut expected) = (Vec::new(), Vec::new());
    for (name, mut model, shape, dynamic_batch) in models {
        model.eval();
        let x = Tensor::randn(&shape, &mut rng);
        let path = dir.join(format!("{name}.onnx"));
        let options = ExportOptions { dynamic_batch, ..ExportOptions::default() };
        let y = export(&model, &x, &path, options).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(y.to_vec(), model.forward(&kiln_autograd::Var::constant(x.clone())).value().to_vec());
        cases.push(Case { model: path, inputs: vec![("input".into(), x, false)], outputs: 1 });
        expected.push((name, y));
    }
    let Some(results) = run_ort(&dir, &cases) else { return };
    for (res, (name, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_close(name, &got[0], &y, 1e-6);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
