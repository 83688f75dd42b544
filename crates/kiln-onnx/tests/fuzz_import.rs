//! The reader on untrusted bytes: random bytes and mutations of real models (PyTorch's and
//! kiln's) either import or give a typed error, never a panic; an imported mutant that runs
//! either computes or fails with a typed error or a named shape panic, never an allocation the
//! file could not back.

use std::path::Path;

use kiln_onnx::{import_bytes, proto::ModelProto};
use proptest::prelude::*;
use prost::Message;

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = import_bytes(&bytes, "random");
    }

    #[test]
    fn mutated_models_never_panic_on_import(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = fixture_bytes(["mlp.onnx", "mnist_cnn.onnx", "lstm_classifier.onnx"][which]);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = import_bytes(&bytes, "mutant");
    }

    #[test]
    fn forged_dims_are_rejected_without_allocating(
        dims in proptest::collection::vec(0i64..i64::MAX, 1..5),
        which in 0usize..8,
    ) {
        let mut proto = ModelProto::decode(&*fixture_bytes("mlp.onnx")).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let i = which % graph.initializer.len();
        let real: i64 = graph.initializer[i].dims.iter().product();
        let numel = dims.iter().try_fold(1i64, |a, &b| a.checked_mul(b));
        prop_assume!(numel != Some(real));
        graph.initializer[i].dims = dims;
        let name = graph.initializer[i].name.clone();
        let err = import_bytes(&proto.encode_to_vec(), "forged").err().expect("a forged size is an error");
        prop_assert!(err.to_string().contains(&name), "{}", err);
    }
}
