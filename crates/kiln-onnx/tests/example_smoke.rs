//! `examples/export_onnx.rs` on a slice of MNIST: the exported CNN, run by ONNX Runtime on
//! the test images, classifies every one as kiln does. Skipped when MNIST is not found;
//! without onnxruntime it skips, and fails under `CI=true`.

#[path = "../../../examples/export_onnx.rs"]
#[allow(dead_code)]
mod export_onnx;

#[test]
fn exported_mnist_cnn_agrees_with_onnx_runtime() {
    let opts = export_onnx::Opts::smoke();
    let r = match export_onnx::run(&opts) {
        Ok(r) => r,
        Err(e @ kiln::data::DataError::NotFound { .. }) => {
            eprintln!("skipped export_onnx: {e} (set KILN_DATA_DIR to the shared data folder)");
            return;
        }
        Err(e) => panic!("export_onnx: {e}"),
    };
    std::fs::remove_file(&opts.output).unwrap();
    match &r.onnxruntime {
        Ok(c) => {
            assert_eq!(c.agree, r.test_images, "{r:?}");
            assert_eq!(c.correct, r.kiln_correct, "{r:?}");
        }
        Err(why) => {
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true and ONNX Runtime did not run: {why}");
            eprintln!("skipped the ONNX Runtime check: {why}");
        }
    }
}
