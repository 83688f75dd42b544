//! Keras' `imdb.npz` and NumPy's `.npy`/`.npz`: files written by NumPy itself (`tests/data/`,
//! made by `make_npz_fixtures.py`), archives written by the test, and forged ones.

mod common;

use std::path::{Path, PathBuf};

use common::{imdb_npz, npy, npy_i64, npy_object, zip, TempDir};
use kiln_data::datasets::{Imdb, ImdbConfig, Split};
use kiln_data::npy::{read_npy, NpyData, Npz};
use kiln_data::{DataError, Dataset};

const X_TRAIN: [&[i64]; 3] = [&[1, 14, 22, 16], &[5, 25, 100, 43, 838], &[12]];
const X_TEST: [&[i64]; 2] = [&[7, 8], &[1 << 33]];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn seqs(s: &[&[i64]]) -> Vec<Vec<i64>> {
    s.iter().map(|v| v.to_vec()).collect()
}

#[test]
fn numpy_written_archives_read_back() {
    for name in ["imdb_numpy2.npz", "imdb_compressed.npz", "imdb_protocol2.npz", "imdb_py2.npz"] {
        let npz = Npz::open(fixture(name)).unwrap();
        let mut names = npz.names();
        names.sort();
        assert_eq!(names, ["x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"], "{name}");
        let x = npz.array("x_train").unwrap();
        assert_eq!(x.descr, "|O", "{name}");
        assert_eq!(x.shape, [3], "{name}");
        assert_eq!(x.data, NpyData::Sequences(seqs(&X_TRAIN)), "{name}");
        let x = npz.array("x_test.npy").unwrap();
        assert_eq!(x.data, NpyData::Sequences(seqs(&X_TEST)), "{name}");
        let y = npz.array("y_train").unwrap();
        assert_eq!((y.descr.as_str(), y.to_i64()), ("<i8", Some(vec![1, 0, 1])));
    }
    // Equal-length reviews saved as a 2-D (Fortran-order) int32 matrix, uint8 labels.
    let m = Imdb::from_npz(fixture("imdb_matrix.npz"), Split::Train, &ImdbConfig::default()).unwrap();
    assert_eq!(m.sequences(), &[vec![1, 7, 8, 9], vec![1, 10, 11, 12]]);
    assert_eq!(m.labels(), &[0, 1]);
}

#[test]
fn imdb_from_npz_applies_keras_conventions() {
    let path = fixture("imdb_numpy2.npz");
    let all = Imdb::from_npz(&path, Split::Train, &ImdbConfig::default()).unwrap();
    // Keras: [start_char] + [w + index_from for w in x].
    assert_eq!(all.sequences(), &[vec![1, 4, 17, 25, 19], vec![1, 8, 28, 103, 46, 841], vec![1, 15]]);
    assert_eq!(all.labels(), &[1, 0, 1]);
    let (x, label) = all.get(1);
    assert_eq!((x.len(), label), (6, 0));
    let test = Imdb::from_npz(&path, Split::Test, &ImdbConfig::default()).unwrap();
    assert_eq!(test.sequences(), &[vec![1, 10, 11], vec![1, (1 << 33) + 3]]);
    // num_words and skip_top map to OOV; maxlen keeps len < maxlen (Keras' remove_long_seq).
    let cfg = ImdbConfig { num_words: Some(20), skip_top: 5, maxlen: Some(6), ..Default::default() };
    let limited = Imdb::from_npz(&path, Split::Train, &cfg).unwrap();
    assert_eq!(limited.sequences(), &[vec![2, 2, 17, 2, 19], vec![2, 15]]);
    assert_eq!(limited.labels(), &[1, 1]);
    // No start mark, no OOV, no shift: the ranks themselves, out-of-range ones dropped.
    let bare =
        ImdbConfig { start_char: None, oov_char: None, index_from: 0, num_words: Some(100), ..Default::default() };
    let raw = Imdb::from_npz(&path, Split::Train, &bare).unwrap();
    assert_eq!(raw.sequences(), &[vec![1, 14, 22, 16], vec![5, 25, 43], vec![12]]);
    // Every writer gives the same data set.
    for name in ["imdb_compressed.npz", "imdb_protocol2.npz", "imdb_py2.npz"] {
        let other = Imdb::from_npz(fixture(name), Split::Train, &cfg).unwrap();
        assert_eq!(other.sequences(), limited.sequences(), "{name}");
    }
    assert!(matches!(Imdb::from_npz(&path, Split::Valid, &cfg), Err(DataError::InvalidArgument(_))));
}

#[test]
fn imdb_new_reads_the_npz_when_no_text_is_there() {
    let dir = TempDir::new("imdb-npz");
    std::fs::copy(fixture("imdb_compressed.npz"), dir.0.join("imdb.npz")).unwrap();
    let ds = Imdb::new(&dir.0, Split::Test, &ImdbConfig::default()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.labels(), &[0, 1]);
    // Without the npz: the text loader's NotFound, as before.
    std::fs::remove_file(dir.0.join("imdb.npz")).unwrap();
    assert!(matches!(Imdb::new(&dir.0, Split::Test, &ImdbConfig::default()), Err(DataError::NotFound { .. })));
}

#[test]
fn missing_member_names_archive_and_member() {
    let path = fixture("imdb_missing_member.npz");
    // The training split is complete.
    assert_eq!(Imdb::from_npz(&path, Split::Train, &ImdbConfig::default()).unwrap().len(), 3);
    let err = Imdb::from_npz(&path, Split::Test, &ImdbConfig::default()).unwrap_err();
    match &err {
        DataError::MissingMember { path: p, member, members } => {
            assert_eq!(p, &path);
            assert_eq!(member, "y_test.npy");
            assert!(members.contains("x_test.npy"), "{members}");
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("imdb_missing_member.npz") && msg.contains("y_test.npy"), "{msg}");
    let npz = Npz::open(&path).unwrap();
    assert!(matches!(
        npz.member("nothing"),
        Err(DataError::MissingMember { member, .. }) if member == "nothing.npy"
    ));
}

fn load(bytes: Vec<u8>, split: Split) -> Result<Imdb, DataError> {
    let npz = Npz::from_bytes("imdb.npz", bytes)?;
    Imdb::from_npz_archive(&npz, split, &ImdbConfig::default())
}

fn member_err(err: DataError) -> (PathBuf, String) {
    match err {
        DataError::Format { path, found, .. } => (path, found),
        DataError::Truncated { path, .. } => (path, "truncated".into()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rust_written_archives_stored_and_deflated() {
    let train = seqs(&X_TRAIN);
    for deflate in [false, true] {
        let bytes = imdb_npz(&train, &[1, 0, 1], &[vec![3]], &[0], deflate);
        let ds = load(bytes, Split::Train).unwrap();
        assert_eq!(ds.sequences()[2], vec![1, 15]);
    }
}

#[test]
fn forged_members_are_typed_errors_naming_archive_and_member() {
    let train = seqs(&X_TRAIN);
    let good_x = npy_object(&train);
    let with_x_train = |x: Vec<u8>, y: Vec<u8>| {
        zip(
            &[("x_train.npy", x), ("y_train.npy", y), ("x_test.npy", npy_object(&[])), ("y_test.npy", npy_i64(&[]))],
            false,
        )
    };
    let y = npy_i64(&[1, 0, 1]);
    let x_member = PathBuf::from("imdb.npz[x_train.npy]");
    let y_member = PathBuf::from("imdb.npz[y_train.npy]");

    // Bad magic in a member.
    let mut bad = good_x.clone();
    bad[1] = b'X';
    match load(with_x_train(bad, y.clone()), Split::Train).unwrap_err() {
        DataError::Format { path, offset: 0, .. } => assert_eq!(path, x_member),
        other => panic!("{other:?}"),
    }
    // Unsupported dtype, named in the error.
    let strings = npy("<U3", &[3], &[0; 36]);
    let (path, found) = member_err(load(with_x_train(strings, y.clone()), Split::Train).unwrap_err());
    assert_eq!((path, found.as_str()), (x_member.clone(), "\"<U3\""));
    // Truncated numeric data (labels cut short).
    let mut short = y.clone();
    short.truncate(short.len() - 3);
    match load(with_x_train(good_x.clone(), short), Split::Train).unwrap_err() {
        DataError::Truncated { path, expected, found } => {
            assert_eq!(path, y_member);
            assert_eq!((expected, found), (128 + 24, 128 + 21));
        }
        other => panic!("{other:?}"),
    }
    // A forged shape claiming 2^50 labels in a few bytes: rejected before allocating.
    let forged = npy("<i8", &[1 << 50], &[0; 24]);
    assert!(matches!(load(with_x_train(good_x.clone(), forged), Split::Train), Err(DataError::Truncated { .. })));
    // A forged pickle: cut in the middle.
    let mut cut = good_x.clone();
    cut.truncate(good_x.len() - 10);
    let (path, _) = member_err(load(with_x_train(cut, y.clone()), Split::Train).unwrap_err());
    assert_eq!(path, x_member);
    // Count mismatch between x and y.
    match load(with_x_train(good_x.clone(), npy_i64(&[1, 0])), Split::Train).unwrap_err() {
        DataError::CountMismatch { left, right, left_path, right_path, .. } => {
            assert_eq!((left, right), (3, 2));
            assert_eq!((left_path, right_path), (x_member.clone(), y_member.clone()));
        }
        other => panic!("{other:?}"),
    }
    // A label other than 0/1 and a negative word rank.
    let (path, found) = member_err(load(with_x_train(good_x.clone(), npy_i64(&[1, 2, 0])), Split::Train).unwrap_err());
    assert_eq!((path, found.as_str()), (y_member.clone(), "2 at index 1"));
    let negative = npy_object(&[vec![1], vec![4, -7], vec![]]);
    let (path, found) = member_err(load(with_x_train(negative, y.clone()), Split::Train).unwrap_err());
    assert_eq!(path, x_member);
    assert!(found.contains("-7 at review 1, position 1"), "{found}");
    // A forged 2-D shape with no data (2^40 reviews of 0 words): refused by the label count
    // before a row is built.
    let empty_rows = npy("<i8", &[1 << 40, 0], &[]);
    match load(with_x_train(empty_rows, y.clone()), Split::Train).unwrap_err() {
        DataError::CountMismatch { left, right, .. } => assert_eq!((left, right), (1 << 40, 3)),
        other => panic!("{other:?}"),
    }
    // Float reviews.
    let floats = npy("<f8", &[3, 1], &[0; 24]);
    let (path, _) = member_err(load(with_x_train(floats, y.clone()), Split::Train).unwrap_err());
    assert_eq!(path, x_member);
}

#[test]
fn forged_archives_are_typed_errors() {
    let good = imdb_npz(&seqs(&X_TRAIN), &[1, 0, 1], &[], &[], false);
    // Not a zip at all, and an empty file.
    assert!(matches!(
        Npz::from_bytes("a.npz", b"\x93NUMPY not a zip, but long enough to be one".to_vec()),
        Err(DataError::Format { .. })
    ));
    assert!(matches!(Npz::from_bytes("a.npz", Vec::new()), Err(DataError::Truncated { .. })));
    // Cut short: the end record is gone.
    assert!(matches!(Npz::from_bytes("a.npz", good[..good.len() - 30].to_vec()), Err(DataError::Format { .. })));
    // A flipped data byte: CRC-32 mismatch, named.
    let mut flipped = good.clone();
    let at = good.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + 20;
    flipped[at] ^= 0x20;
    let npz = Npz::from_bytes("a.npz", flipped).unwrap();
    match npz.member("x_train").unwrap_err() {
        DataError::Format { expected, .. } => assert!(expected.contains("CRC-32"), "{expected}"),
        other => panic!("{other:?}"),
    }
    // A central directory whose entry count is forged upwards.
    let mut forged = good.clone();
    let n = forged.len();
    forged[n - 12] = 0xff;
    forged[n - 11] = 0x7f;
    assert!(matches!(Npz::from_bytes("a.npz", forged), Err(DataError::Format { .. })));
    // A deflated member whose declared size is far above what its bytes can expand to.
    let deflated = zip(&[("y_train.npy", npy_i64(&[1; 8]))], true);
    let mut big = deflated.clone();
    let cd = deflated.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    big[cd + 24..cd + 28].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    let npz = Npz::from_bytes("b.npz", big).unwrap();
    match npz.member("y_train").unwrap_err() {
        DataError::Format { expected, .. } => assert!(expected.contains("can hold"), "{expected}"),
        other => panic!("{other:?}"),
    }
    // A member's local offset pointing past the end.
    let mut off = deflated.clone();
    off[cd + 42..cd + 46].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let npz = Npz::from_bytes("b.npz", off).unwrap();
    assert!(matches!(npz.member("y_train"), Err(DataError::Truncated { .. })));
}

#[test]
fn read_npy_on_a_numpy_member() {
    let npz = Npz::open(fixture("imdb_numpy2.npz")).unwrap();
    let bytes = npz.member("y_test").unwrap();
    let a = read_npy(Path::new("y_test.npy"), &bytes).unwrap();
    assert_eq!(a.data, NpyData::Int(vec![0, 1]));
    assert_eq!(a.data_offset, 128);
}
