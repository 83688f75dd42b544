//! `PReLU`'s export (`PRelu`, the slopes reshaped to broadcast over the channel axis) run by
//! ONNX Runtime at the exported batch size and a larger one, and imported back into kiln.

mod support;

use kiln_nn::{Conv2dConfig, Forward, Linear, Module, PReLU, Sequential};
use kiln_onnx::{export, import, ExportOptions};
use kiln_tensor::{Rng, Tensor};
use support::{assert_close, run_ort, temp_dir, Case};

#[test]
fn prelu_matches_onnx_runtime() {
    let dir = temp_dir("prelu");
    let mut rng = Rng::new(5);
    let per_channel = PReLU::new(3);
    per_channel.weight.set_value(Tensor::from_vec(vec![0.1, -0.4, 0.7], &[3]));
    let models: Vec<(&str, Sequential, Vec<usize>)> = vec![
        ("shared_slope", Sequential::new().add(Linear::new(4, 6)).add(PReLU::new(1)), vec![2, 4]),
        (
            "per_channel",
            Sequential::new().add(Conv2dConfig::new(2, 3, 3).build::<f32>().unwrap()).add(per_channel),
            vec![1, 2, 5, 5],
        ),
    ];
    let (mut cases, mut expected) = (Vec::new(), Vec::new());
    for (name, mut model, shape) in models {
        model.eval();
        let x = Tensor::randn(&shape, &mut rng);
        let path = dir.join(format!("{name}.onnx"));
        let y = export(&model, &x, &path, ExportOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(y.to_vec(), model.forward(&kiln_autograd::Var::constant(x.clone())).value().to_vec());
        // a larger batch than the one exported at
        let mut big = shape.clone();
        big[0] = 5;
        let xb = Tensor::randn(&big, &mut rng);
        let yb = model.forward(&kiln_autograd::Var::constant(xb.clone())).value();
        // kiln's import runs PRelu too, the slopes a trainable parameter under their key
        let back = import(&path).unwrap_or_else(|e| panic!("{name}: import: {e}"));
        assert!(back.state_dict().keys().any(|k| k.ends_with("weight") && k.starts_with('1')), "{name}");
        let again = back.forward(&kiln_autograd::Var::constant(xb.clone())).value();
        assert_close(&format!("{name} import"), &again, &yb, 1e-6);
        cases.push(Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 });
        cases.push(Case { model: path, inputs: vec![("input".into(), xb, false)], outputs: 1 });
        expected.push((name, y));
        expected.push((name, yb));
    }
    let Some(results) = run_ort(&dir, &cases) else { return };
    for (res, (name, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_close(name, &got[0], &y, 1e-6);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
