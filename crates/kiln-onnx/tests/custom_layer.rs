//! A `#[derive(Module)]` struct exported through a converter the user writes with the public
//! `Exporter` (its fields through the built-in converters, the residual join by hand), checked
//! by ONNX Runtime and by import.

mod support;

use std::fmt;

use kiln_autograd::Var;
use kiln_nn::{Forward, Layer, Linear, Module, ReLU, Sequential};
use kiln_onnx::export::{Exporter, Value};
use kiln_onnx::{export, import, ExportOptions, OnnxError};
use kiln_tensor::{Rng, Tensor};
use support::{assert_close, run_ort, temp_dir, Case};

/// `x + fc2(relu(fc1(x)))`.
#[derive(Module)]
struct Residual {
    fc1: Linear,
    fc2: Linear,
}

impl Forward for Residual {
    fn forward(&self, x: &Var<f32>) -> Var<f32> {
        x.add(&self.fc2.forward(&self.fc1.forward(x).relu()))
    }
}

impl fmt::Display for Residual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Residual({} -> {})", self.fc1, self.fc2)
    }
}

fn residual(layer: &dyn Layer<f32>, ex: &mut Exporter, prefix: &str, x: &Value) -> Option<Result<String, OnnxError>> {
    let r = layer.downcast_ref::<Residual>()?;
    let run = |ex: &mut Exporter| -> Result<String, OnnxError> {
        let h = ex.convert(&r.fc1, &format!("{prefix}fc1."), x)?;
        let h = ex.convert(&ReLU, prefix, &h)?;
        let y = ex.convert(&r.fc2, &format!("{prefix}fc2."), &h)?;
        Ok(ex.node("Add", &[&x.name, &y.name], vec![]))
    };
    Some(run(ex))
}

#[test]
fn a_derived_struct_exports_through_a_user_converter() {
    let dir = temp_dir("custom_layer");
    let model: Sequential =
        Sequential::new().add(Residual { fc1: Linear::new(6, 10), fc2: Linear::new(10, 6) }).add(Linear::new(6, 2));
    let mut rng = Rng::new(3);
    let path = dir.join("residual.onnx");
    let example = Tensor::randn(&[1, 6], &mut rng);
    // without the converter: a typed error naming the layer
    let err = export(&model, &example, &path, ExportOptions::default()).unwrap_err();
    assert!(matches!(&err, OnnxError::UnsupportedLayer { path, .. } if path == "0"), "{err}");
    let options = ExportOptions { converters: vec![residual], ..Default::default() };
    export(&model, &example, &path, options).unwrap();
    let x = Tensor::randn(&[5, 6], &mut rng);
    let want = kiln_autograd::no_grad(|| model.forward(&Var::constant(x.clone())).value());
    let back = import(&path).unwrap();
    let names: Vec<String> = back.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.fc1.weight", "0.fc1.bias", "0.fc2.weight", "0.fc2.bias", "1.weight", "1.bias"]);
    assert_close("import", &back.forward(&Var::constant(x.clone())).value(), &want, 1e-5);
    let cases = [Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 }];
    if let Some(res) = run_ort(&dir, &cases) {
        let got = res.into_iter().next().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_close("onnxruntime", &got[0], &want, 1e-5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
