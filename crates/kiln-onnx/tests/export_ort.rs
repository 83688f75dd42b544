//! Export round trips checked by a runtime kiln did not write: every model below is exported
//! at batch 1 with a dynamic batch axis, checked by `onnx.checker.check_model(full_check=True)`,
//! then run by ONNX Runtime at batch 1 and a larger batch on the same inputs as kiln.

mod support;

use kiln_nn::{Forward, Module};
use kiln_onnx::{export, ExportOptions};
use kiln_tensor::Rng;
use support::models::{all_models, randomise_buffers};
use support::{assert_close, run_ort, temp_dir, Case};

#[test]
fn exported_models_match_onnx_runtime_at_batch_1_and_larger_batches() {
    let dir = temp_dir("export_ort");
    let mut rng = Rng::new(7);
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (name, mut model, shape, make) in all_models() {
        randomise_buffers(&model, &mut rng);
        model.eval();
        let path = dir.join(format!("{name}.onnx"));
        let example = make(&shape, &mut rng);
        let y1 = export(&model, &example, &path, ExportOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_close(
            &format!("{name}: export's output is kiln's"),
            &y1,
            &model.forward(&kiln_autograd::Var::constant(example.clone())).value(),
            0.0,
        );
        for batch in [1usize, 9] {
            let mut s = shape.clone();
            s[0] = batch;
            let x = if batch == 1 { example.clone() } else { make(&s, &mut rng) };
            let y = kiln_autograd::no_grad(|| model.forward(&kiln_autograd::Var::constant(x.clone())).value());
            cases.push(Case { model: path.clone(), inputs: vec![("input".into(), x, false)], outputs: 1 });
            expected.push((format!("{name} at batch {batch}"), y));
        }
    }
    let Some(results) = run_ort(&dir, &cases) else { return };
    for (res, (what, y)) in results.into_iter().zip(expected) {
        let got = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(&what, &got[0], &y, 1e-5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
