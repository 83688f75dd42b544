//! Bad input from files: every case is a typed error whose message names the file (and the
//! offset where there is one). The exact messages are pinned here.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_data::datasets::{read_idx, Cifar10, ImdbReviews, Mnist, PennTreebank, Split};
use kiln_data::DataError;

/// A fresh empty folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-data-bad-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend([0u8; 3072]);
    r
}

fn message(r: Result<impl std::fmt::Debug, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn mnist_with_a_zero_image_dimension_is_refused() {
    let dir = TempDir::new("mnist-zero");
    let images = dir.write("train-images-idx3-ubyte", &idx(&[2, 0, 28], &[]));
    let labels = dir.write("train-labels-idx1-ubyte", &idx(&[2], &[1, 2]));
    assert_eq!(
        message(Mnist::from_files(&images, &labels, 10)),
        format!("{}: at byte offset 8: expected a non-zero rows, found 0 (dimensions [2, 0, 28])", d(&images))
    );
    let images = dir.write("train-images-idx3-ubyte", &idx(&[0, 28, 28], &[]));
    let labels = dir.write("train-labels-idx1-ubyte", &idx(&[0], &[]));
    assert_eq!(
        message(Mnist::new(&dir.0, Split::Train)),
        format!("{}: at byte offset 4: expected a non-zero image count, found 0 (dimensions [0, 28, 28])", d(&images))
    );
    let _ = labels;
}

#[test]
fn a_folder_where_a_file_should_be_is_named_as_such() {
    let dir = TempDir::new("folder");
    std::fs::create_dir_all(dir.0.join("train-images-idx3-ubyte")).unwrap();
    assert_eq!(
        message(Mnist::new(&dir.0, Split::Train)),
        format!("{}: is a folder, expected a file (IDX images)", d(&dir.0.join("train-images-idx3-ubyte")))
    );
    assert_eq!(
        message(read_idx(&dir.0.join("train-images-idx3-ubyte"), 3)),
        format!("{}: is a folder, expected a file (a data file)", d(&dir.0.join("train-images-idx3-ubyte")))
    );
    std::fs::create_dir_all(dir.0.join("data_batch_1.bin")).unwrap();
    assert_eq!(
        message(Cifar10::new(&dir.0, Split::Train)),
        format!(
            "{}: is a folder, expected a file (the CIFAR-10 batch file data_batch_1.bin)",
            d(&dir.0.join("data_batch_1.bin"))
        )
    );
}

#[test]
fn cifar_meta_with_fewer_than_ten_names_or_bad_utf8_is_refused() {
    let dir = TempDir::new("cifar-meta");
    dir.write("data_batch_1.bin", &record(9));
    let meta = dir.write("batches.meta.txt", b"airplane\nautomobile\nbird\n\n");
    assert_eq!(
        message(Cifar10::new(&dir.0, Split::Train)),
        format!(
            "{}: at byte offset 26: expected 10 class names, one per line (labels go up to 9), found 3 name(s): [\"airplane\", \"automobile\", \"bird\"]",
            d(&meta)
        )
    );
    let meta =
        dir.write("batches.meta.txt", b"airplane\nautomobile\nbi\xffrd\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n");
    assert_eq!(
        message(Cifar10::new(&dir.0, Split::Train)),
        format!("{}: at byte offset 22: expected UTF-8 text, found an invalid byte sequence", d(&meta))
    );
    dir.write("batches.meta.txt", b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n");
    assert_eq!(Cifar10::new(&dir.0, Split::Train).unwrap().classes()[9], "truck");
}

#[test]
fn cifar_empty_batch_and_stray_files() {
    let dir = TempDir::new("cifar-files");
    let empty = dir.write("data_batch_1.bin", b"");
    assert_eq!(
        message(Cifar10::new(&dir.0, Split::Train)),
        format!("{}: at byte offset 0: expected at least one 3073-byte record, found an empty file", d(&empty))
    );
    let empty_gz = dir.write("test_batch.bin.gz", &gzip(b""));
    assert_eq!(
        message(Cifar10::new(&dir.0, Split::Test)),
        format!("{}: at byte offset 0: expected at least one 3073-byte record, found an empty file", d(&empty_gz))
    );
    // Only the names the format gives are read: a copy beside them is not appended.
    dir.write("data_batch_1.bin", &[record(1), record(2)].concat());
    dir.write("data_batch_1_copy.bin", &record(7));
    dir.write("data_batch_3.bin", &record(3));
    let train = Cifar10::new(&dir.0, Split::Train).unwrap();
    assert_eq!(train.labels(), &[1, 2, 3]);
    assert_eq!(train.files(), &[dir.0.join("data_batch_1.bin"), dir.0.join("data_batch_3.bin")]);
    // A folder of subsets only: not read by guess, and the error says how to read them.
    let subsets = TempDir::new("cifar-subsets");
    subsets.write("data_batch_1_first4000.bin", &record(5));
    assert_eq!(
        message(Cifar10::new(&subsets.0, Split::Train)),
        format!(
            "{}: not found (CIFAR-10 train batch files data_batch_1.bin, data_batch_2.bin, data_batch_3.bin, data_batch_4.bin, data_batch_5.bin; found only data_batch_1_first4000.bin, which Cifar10::new does not read by guess: load them with Cifar10::from_files)",
            d(&subsets.0.join("data_batch_1.bin"))
        )
    );
    let subset = Cifar10::from_files(&[subsets.0.join("data_batch_1_first4000.bin")], None).unwrap();
    assert_eq!(subset.labels(), &[5]);
}

#[test]
fn a_gzip_with_a_corrupted_byte_is_reported_corrupt() {
    let dir = TempDir::new("gz-corrupt");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut gz = gzip(&idx(&[20_000], &data));
    let mid = gz.len() / 2;
    gz[mid] ^= 0x55;
    let path = dir.write("train-labels-idx1-ubyte.gz", &gz);
    let err = read_idx(&path, 1).unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: corrupt gzip stream after ", d(&path))), "{text}");
    // The checksum at the end catches any damage the deflate decoder does not.
    let mut gz = gzip(&idx(&[4], &[1, 2, 3, 4]));
    let n = gz.len();
    gz[n - 6] ^= 1; // the stored CRC-32
    let path = dir.write("t10k-labels-idx1-ubyte.gz", &gz);
    let err = read_idx(&path, 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: corrupt gzip stream after 12 bytes of decompressed data: corrupt gzip stream does not have a matching checksum", d(&path))
    );
}

#[test]
fn a_truncated_tsv_gz_is_reported_truncated_without_invented_counts() {
    let dir = TempDir::new("tsv-trunc");
    let text: String = (0..200).map(|i| format!("{}\treview number {i} was fine\n", i % 2)).collect();
    let gz = gzip(text.as_bytes());
    let path = dir.write("imdb_train.tsv.gz", &gz[..gz.len() / 2]);
    let err = ImdbReviews::from_tsv(&path).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
    assert!(
        text.starts_with(&format!("{}: corrupt gzip stream after ", d(&path)))
            && text.ends_with(
                " bytes of decompressed data: the stream ends before its end marker (the file is truncated)"
            ),
        "{text}"
    );
}

#[test]
fn an_empty_ptb_train_file_is_blamed_on_itself() {
    let dir = TempDir::new("ptb-empty");
    let train = dir.write("ptb.train.txt", b"");
    dir.write("ptb.valid.txt", b"a b c\n");
    dir.write("ptb.test.txt", b"a b\n");
    assert_eq!(
        message(PennTreebank::new(&dir.0)),
        format!(
            "{}: at byte offset 0: expected Penn Treebank text (words separated by spaces), found an empty file",
            d(&train)
        )
    );
}

#[test]
fn a_forged_idx_header_fails_before_decompressing() {
    let dir = TempDir::new("idx-forged");
    // 2^31 pixels announced (2^15 images of 256 x 256) in a 2.2 MB gzip, which deflate's
    // 1032:1 bound would allow to hold them: refused from the header, before decompressing.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..2_200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let gz = gzip(&idx(&[1 << 15, 256, 256], &noise));
    assert!(gz.len() as u64 * 1032 > 1 << 31);
    let path = dir.write("train-images-idx3-ubyte.gz", &gz);
    let before = std::time::Instant::now();
    assert_eq!(
        message(read_idx(&path, 3)),
        format!(
            "{}: at byte offset 4: expected dimensions of at most 1073741824 bytes of data (1 GiB), found [32768, 256, 256], 2147483648 bytes",
            d(&path)
        )
    );
    assert!(before.elapsed().as_secs() < 5);
}
