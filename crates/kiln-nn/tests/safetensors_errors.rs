//! Bad files: each is a typed error naming the file and the key, and nothing is half-loaded
//! into the model.

use std::path::{Path, PathBuf};

use kiln_nn::{
    load, load_mapped, load_state_dict_file, save, save_state_dict, BatchNorm1d, KeyMap, Linear, Metadata, Module,
    NnError, SafetensorsFile, Sequential, StateDict,
};
use kiln_tensor::Tensor;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-st-errors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A file from a header string and a data section.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn open(bytes: Vec<u8>) -> NnError {
    SafetensorsFile::from_bytes(bytes).expect_err("a bad file must not open")
}

/// Writes `bytes` to `name` in a fresh folder and opens it, checking that the error names it.
fn open_file(dir: &Path, name: &str, bytes: &[u8]) -> NnError {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = SafetensorsFile::open(&path).expect_err("a bad file must not open");
    assert!(err.to_string().contains(name), "the message must name the file: {err}");
    err
}

fn bits(m: &dyn Module<f32>) -> Vec<(String, Vec<u32>)> {
    m.state_dict().into_iter().map(|(k, t)| (k, t.to_vec().iter().map(|x| x.to_bits()).collect())).collect()
}

#[test]
fn truncated_before_the_header_length() {
    let dir = temp_dir("short");
    for len in [0usize, 1, 7] {
        let err = open_file(&dir, "short.safetensors", &vec![0u8; len][..]);
        assert!(matches!(err, NnError::FileTooShort { len: l, .. } if l == len as u64), "{err:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn header_length_beyond_the_file() {
    let mut b = raw("{}", b"");
    b[..8].copy_from_slice(&1000u64.to_le_bytes());
    let err = open(b);
    assert_eq!(err, NnError::HeaderLength { path: "<memory>".into(), header_len: 1000, file_len: 10 });
    // The largest possible claim is refused before anything is allocated for it.
    let mut b = raw("{}", b"");
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(open(b), NnError::HeaderLength { header_len: u64::MAX, .. }));
}

#[test]
fn header_not_json() {
    for header in ["not json", "[1, 2]", "{\"a\": {\"dtype\": \"F32\"", "{} trailing", "\"str\"", ""] {
        let err = open(raw(header, b""));
        assert!(matches!(err, NnError::HeaderNotJson { .. }), "{header:?}: {err:?}");
    }
    let mut b = raw("{\"a\":1}", b"");
    b[9] = 0xff; // invalid UTF-8
    assert!(matches!(open(b), NnError::HeaderNotJson { .. }));
}

#[test]
fn malformed_entries_name_their_key() {
    let cases = [
        (r#"{"w": {"shape": [1], "data_offsets": [0, 4]}}"#, "w", "missing field `dtype`"),
        (r#"{"w": {"dtype": "F13", "shape": [1], "data_offsets": [0, 4]}}"#, "w", "unknown dtype `F13`"),
        (r#"{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, "w", "invalid value"),
        (r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}"#, "w", "invalid length"),
        (r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}"#, "w", "begin after they end"),
        (r#"{"w": 5}"#, "w", "invalid type"),
        (r#"{"__metadata__": {"epoch": 3}}"#, "__metadata__", "invalid type"),
        (
            r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#,
            "w",
            "duplicate key",
        ),
        (r#"{"w": {"dtype": "F32", "shape": [0, 4611686018427387904, 4], "data_offsets": [0, 0]}}"#, "w", "too large"),
    ];
    for (header, key, msg) in cases {
        match open(raw(header, &[0; 4])) {
            NnError::BadHeader { key: k, message, .. } => {
                assert_eq!(k, key, "{header}");
                assert!(message.contains(msg), "{header}: {message:?} lacks {msg:?}");
            }
            other => panic!("{header}: expected BadHeader, got {other:?}"),
        }
    }
}

#[test]
fn truncated_data_names_the_tensor_that_runs_out() {
    let dir = temp_dir("truncated");
    let path = dir.join("model.safetensors");
    let m: Linear = Linear::new(8, 4);
    save(&m, &path, &Metadata::new()).unwrap();
    let full = std::fs::read(&path).unwrap();
    // `bias` (16 bytes) precedes `weight` (128 bytes) in the data section: both sort by name.
    let err = open_file(&dir, "cut.safetensors", &full[..full.len() - 10]);
    match err {
        NnError::OffsetsOutOfRange { key, begin, end, data_len, .. } => {
            assert_eq!((key.as_str(), begin, end, data_len), ("weight", 16, 144, 134));
        }
        other => panic!("expected OffsetsOutOfRange, got {other:?}"),
    }
    // Cut inside the header: the header length now runs past the end.
    let err = open_file(&dir, "cut.safetensors", &full[..40]);
    assert!(matches!(err, NnError::HeaderLength { file_len: 40, .. }), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn offsets_that_overlap_leave_holes_or_disagree_with_the_shape() {
    let overlap = r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}"#;
    assert_eq!(
        open(raw(overlap, &[0; 24])),
        NnError::OffsetsOverlap {
            path: "<memory>".into(),
            key: "b".into(),
            begin: 8,
            end: 24,
            other: "a".into(),
            other_begin: 0,
            other_end: 16
        }
    );
    let gap = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}"#;
    assert_eq!(open(raw(gap, &[0; 24])), NnError::DataGap { path: "<memory>".into(), begin: 8, end: 16 });
    let trailing = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#;
    assert_eq!(open(raw(trailing, &[0; 12])), NnError::DataGap { path: "<memory>".into(), begin: 8, end: 12 });
    let out = r#"{"a": {"dtype": "F32", "shape": [1073741824], "data_offsets": [0, 4294967296]}}"#;
    assert!(matches!(open(raw(out, &[0; 8])), NnError::OffsetsOutOfRange { end: 4294967296, data_len: 8, .. }));

    let short = r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#;
    assert!(matches!(open(raw(short, &[0; 8])), NnError::SizeMismatch { expected: Some(12), found: 8, .. }));
    let huge = r#"{"a": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 8]}}"#;
    let err = open(raw(huge, &[0; 8]));
    assert!(matches!(err, NnError::SizeMismatch { expected: None, .. }), "{err:?}");
    assert!(err.to_string().contains("more than 2^64"), "{err}");
}

#[test]
fn wrong_dtype_is_refused_and_counts_are_not() {
    // I64 where a float parameter is needed.
    let mut header = String::from(r#"{"weight": {"dtype": "I64", "shape": [2, 3], "data_offsets": [0, 48]}, "#);
    header.push_str(r#""bias": {"dtype": "F32", "shape": [2], "data_offsets": [48, 56]}}"#);
    let dir = temp_dir("dtype");
    let path = dir.join("ints.safetensors");
    std::fs::write(&path, raw(&header, &[0; 56])).unwrap();
    let mut m: Linear = Linear::new(3, 2);
    let before = bits(&m);
    let err = load(&mut m, &path, true).unwrap_err();
    assert!(matches!(&err, NnError::WrongDtype { key, found, .. } if key == "weight" && found == "I64"), "{err:?}");
    assert!(err.to_string().contains("ints.safetensors") && err.to_string().contains("`weight`"), "{err}");
    assert_eq!(bits(&m), before, "a failed load must leave the model as it was");
    assert!(matches!(load_state_dict_file::<f32>(&path), Err(NnError::WrongDtype { .. })));
    // Read as integers it is fine; a float read as integers is not.
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.tensor_i64("weight").unwrap(), (vec![0; 6], vec![2, 3]));
    assert!(matches!(f.tensor_i64("bias"), Err(NnError::WrongDtype { .. })));
    assert!(matches!(f.tensor::<f32>("nope"), Err(NnError::NoSuchTensor { .. })));

    // BatchNorm's num_batches_tracked is I64 in PyTorch's files and loads.
    let mut bn: BatchNorm1d = BatchNorm1d::new(2);
    let mut sd: StateDict = bn.state_dict();
    sd.insert("num_batches_tracked".into(), Tensor::scalar(41.0));
    save_state_dict(&sd, &path, &Metadata::new()).unwrap();
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.info("num_batches_tracked").unwrap().dtype, kiln_nn::serialize::Dtype::I64);
    load(&mut bn, &path, true).unwrap();
    assert_eq!(bn.num_batches_tracked.as_ref().unwrap().value().item(), 41.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shape_mismatch_and_strict_keys_load_nothing() {
    let dir = temp_dir("shape");
    let path = dir.join("m.safetensors");
    // A two-layer file whose second layer has the wrong shape for the model.
    let file_model = Sequential::<f32>::new().add(Linear::new(3, 4)).add(Linear::new(4, 2));
    save(&file_model, &path, &Metadata::new()).unwrap();
    let mut model = Sequential::<f32>::new().add(Linear::new(3, 4)).add(Linear::new(4, 5));
    let before = bits(&model);
    let err = load(&mut model, &path, false).unwrap_err();
    assert_eq!(
        err,
        NnError::ShapeMismatch { path: path.clone(), key: "1.weight".into(), model: vec![5, 4], file: vec![2, 4] }
    );
    assert!(err.to_string().contains("m.safetensors") && err.to_string().contains("`1.weight`"), "{err}");
    assert_eq!(bits(&model), before, "layer 0 fits but must not have been loaded");

    // Strict: an extra key in the file, and a key the model lacks.
    let mut small = Sequential::<f32>::new().add(Linear::new(3, 4));
    let before = bits(&small);
    let err = load(&mut small, &path, true).unwrap_err();
    assert_eq!(
        err,
        NnError::KeyMismatch {
            path: path.clone(),
            missing: vec![],
            unexpected: vec!["1.bias".into(), "1.weight".into()]
        }
    );
    assert_eq!(bits(&small), before);
    // Non-strict: loads what fits and says what it left.
    let report = load(&mut small, &path, false).unwrap();
    assert_eq!(report.loaded, ["0.weight", "0.bias"]);
    assert_eq!(report.unexpected, ["1.bias", "1.weight"]);
    assert_eq!(small.state_dict()["0.weight"].to_vec(), file_model.state_dict()["0.weight"].to_vec());

    let mut big = Sequential::<f32>::new().add(Linear::new(3, 4)).add(Linear::new(4, 2)).add(Linear::new(2, 2));
    let err = load(&mut big, &path, true).unwrap_err();
    assert!(matches!(&err, NnError::KeyMismatch { missing, .. } if missing == &["2.weight", "2.bias"]), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn key_collisions_are_errors() {
    let dir = temp_dir("collide");
    let path = dir.join("m.safetensors");
    let mut sd: StateDict = StateDict::new();
    sd.insert("module.weight".into(), Tensor::zeros(&[2, 3]));
    sd.insert("weight".into(), Tensor::zeros(&[2, 3]));
    save_state_dict(&sd, &path, &Metadata::new()).unwrap();
    let mut m: Linear = Linear::new(3, 2);
    let err = load_mapped(&mut m, &path, &KeyMap::new().strip_prefix("module."), false).unwrap_err();
    assert_eq!(
        err,
        NnError::KeyCollision { target: "weight".into(), first: "module.weight".into(), second: "weight".into() }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let mut m: Linear = Linear::new(3, 2);
    let err = load(&mut m, "/nonexistent/kiln/model.safetensors", true).unwrap_err();
    assert!(matches!(&err, NnError::Io { kind: std::io::ErrorKind::NotFound, .. }), "{err:?}");
    assert!(err.to_string().starts_with("/nonexistent/kiln/model.safetensors: open:"), "{err}");
}
