//! CIFAR-10, binary version: batch files of 3073-byte records, plain or gzip.

use std::path::{Path, PathBuf};

use kiln_tensor::Rng;

use super::{data_dir, Split};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::image::Image;
use crate::io::{is_gz, read_text, Source};

/// Bytes of one record: 1 label byte, then 1024 red, 1024 green, 1024 blue bytes (32x32 each).
const RECORD: u64 = 1 + 3 * 32 * 32;

/// The most records one gzip batch file may decompress to (upstream files hold 10,000).
const MAX_RECORDS: u64 = 1 << 18;

/// CIFAR-10 (Krizhevsky 2009): 32x32 colour images in 10 classes, from the binary version's batch
/// files.
///
/// [`Cifar10::new`] reads exactly the files the format names: `data_batch_1.bin` ...
/// `data_batch_5.bin` for training and `test_batch.bin` for test (each optionally `.gz`, in the
/// folder or its `cifar-10-batches-bin/` sub-folder), those of them that are present, in order;
/// other files (a `data_batch_1_copy.bin`) are never read. Files of other names (subsets, say)
/// load with [`Cifar10::from_files`]. Items are `(Image [3, 32, 32] in [0, 1], label 0..=9)`.
#[derive(Clone, Debug)]
pub struct Cifar10 {
    images: Vec<u8>,
    labels: Vec<u8>,
    files: Vec<PathBuf>,
    classes: Vec<String>,
}

impl Cifar10 {
    /// The class names, in label order.
    pub const CLASSES: [&'static str; 10] =
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

    /// Loads the batch files of `split` that the format names, found in `dir` (see the type's
    /// documentation), and the class names from `batches.meta.txt` beside them when present.
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] when none of the split's batch files is there (naming files of
    /// other names that start like one, which [`Cifar10::from_files`] reads); [`DataError::NotAFile`]
    /// for a folder in a batch file's place; and the errors of [`Cifar10::from_files`].
    pub fn new(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let names: Vec<String> = match split {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".to_string()],
            Split::Valid => {
                return Err(DataError::InvalidArgument("CIFAR-10 has no validation split; use random_split".into()))
            }
        };
        let folders = [dir.to_path_buf(), dir.join("cifar-10-batches-bin")];
        let mut files = Vec::new();
        for name in &names {
            // The first of name, name.gz, sub-folder/name, sub-folder/name.gz that exists.
            let candidates = folders.iter().flat_map(|f| [f.join(name), f.join(format!("{name}.gz"))]);
            for candidate in candidates {
                if candidate.is_dir() {
                    return Err(DataError::NotAFile {
                        path: candidate,
                        what: format!("the CIFAR-10 batch file {name}"),
                    });
                }
                if candidate.is_file() {
                    files.push(candidate);
                    break;
                }
            }
        }
        if files.is_empty() {
            let prefix = if split == Split::Train { "data_batch" } else { "test_batch" };
            let mut others: Vec<String> = folders
                .iter()
                .filter_map(|f| std::fs::read_dir(f).ok())
                .flat_map(|entries| entries.flatten())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect();
            others.sort();
            let what = if others.is_empty() {
                format!("CIFAR-10 {} batch files {}", split.name(), names.join(", "))
            } else {
                format!(
                    "CIFAR-10 {} batch files {}; found only {}, which Cifar10::new does not read by guess: load them with Cifar10::from_files",
                    split.name(),
                    names.join(", "),
                    others.join(", ")
                )
            };
            return Err(DataError::NotFound { path: dir.join(&names[0]), what });
        }
        let meta = dir.join("batches.meta.txt");
        Self::from_files(&files, meta.exists().then_some(meta.as_path()))
    }

    /// Loads the given batch files (any names: subsets, copies), in the order given, and the
    /// class names from `meta` (a `batches.meta.txt`), or [`Cifar10::CLASSES`] without one.
    ///
    /// ```no_run
    /// use kiln_data::datasets::Cifar10;
    /// let dir = kiln_data::data_dir().join("cifar10");
    /// let train = Cifar10::from_files(&[dir.join("data_batch_1_first4000.bin")], Some(&dir.join("batches.meta.txt")))?;
    /// # Ok::<(), kiln_data::DataError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// For a plain file whose size is not a whole number of records, a [`DataError::Format`]
    /// naming the record length and the size (checked before reading), and for an empty file one
    /// saying so; for a gzip file, [`DataError::Truncated`] when the last record is short and
    /// [`DataError::Corrupt`] for a damaged stream; [`DataError::Format`] for a label above 9
    /// (with its offset); for `meta`, [`DataError::Format`] when it is not UTF-8 or has fewer
    /// than 10 class names.
    pub fn from_files<P: AsRef<Path>>(files: &[P], meta: Option<&Path>) -> Result<Self> {
        if files.is_empty() {
            return Err(DataError::InvalidArgument("Cifar10::from_files: no batch file given".into()));
        }
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for file in files {
            read_batch(file.as_ref(), &mut images, &mut labels)?;
        }
        let classes = match meta {
            Some(meta) => read_meta(meta)?,
            None => Self::CLASSES.iter().map(|s| s.to_string()).collect(),
        };
        Ok(Cifar10 { images, labels, files: files.iter().map(|f| f.as_ref().to_path_buf()).collect(), classes })
    }

    /// Loads `split` from `data_dir()/cifar10`.
    ///
    /// # Errors
    ///
    /// As [`Cifar10::new`].
    pub fn from_data_dir(split: Split) -> Result<Self> {
        Self::new(data_dir().join("cifar10"), split)
    }

    /// One batch file's bytes already in memory, as a data set: `name` is the file name used in
    /// errors and decides gzip as a path does (a name ending in `.gz` is decompressed). The checks
    /// and errors are those of [`Cifar10::new`] for one file; nothing larger than `bytes` could
    /// hold is allocated. [`Cifar10::files`] is `[name]`.
    ///
    /// ```
    /// use kiln_data::datasets::Cifar10;
    /// use kiln_data::Dataset;
    /// let mut record = vec![7u8];
    /// record.extend([0u8; 3072]);
    /// let one = Cifar10::from_batch_bytes("data_batch_1.bin".as_ref(), &record)?;
    /// assert_eq!((one.len(), one.labels()), (1, &[7u8][..]));
    /// assert!(Cifar10::from_batch_bytes("x.bin".as_ref(), &record[..100]).is_err());
    /// # Ok::<(), kiln_data::DataError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Cifar10::new`] (without the I/O errors and [`DataError::NotFound`]).
    pub fn from_batch_bytes(name: &Path, bytes: &[u8]) -> Result<Self> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        parse_batch(Source::from_bytes(name, bytes), &mut images, &mut labels)?;
        Ok(Cifar10 {
            images,
            labels,
            files: vec![name.to_path_buf()],
            classes: Self::CLASSES.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// The batch files that were read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The class names (from `batches.meta.txt` when present, skipping empty lines).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The 3072 CHW bytes of image `index`.
    ///
    /// **Panics** if `index >= len()`.
    pub fn image_bytes(&self, index: usize) -> &[u8] {
        &self.images[index * 3072..(index + 1) * 3072]
    }
}

/// The class names of a `batches.meta.txt`: UTF-8, one per line, empty lines skipped, at
/// least 10 (labels go up to 9).
fn read_meta(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let classes: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if classes.len() < 10 {
        return Err(DataError::format(
            path,
            text.len() as u64,
            "10 class names, one per line (labels go up to 9)",
            format!("{} name(s): {classes:?}", classes.len()),
        ));
    }
    Ok(classes)
}

fn read_batch(path: &Path, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    parse_batch(Source::open(path)?, images, labels)
}

fn parse_batch(mut src: Source<'_>, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    let path = src.path.clone();
    let path = path.as_path();
    let bytes = if is_gz(path) {
        // A batch file holds 10,000 records upstream; allow subsets and larger custom batches up
        // to 2^18 records (805 MB), and never decompress past that.
        src.read_rest_bounded(MAX_RECORDS * RECORD, "CIFAR-10 batch")?
    } else {
        let size = src.file_len;
        if !size.is_multiple_of(RECORD) {
            return Err(DataError::format(
                path,
                size - size % RECORD,
                format!("a whole number of {RECORD}-byte records"),
                format!("{size} bytes ({} records and {} bytes over)", size / RECORD, size % RECORD),
            ));
        }
        src.read_payload(size)?
    };
    let len = bytes.len() as u64;
    if len == 0 {
        return Err(DataError::format(path, 0, format!("at least one {RECORD}-byte record"), "an empty file"));
    }
    if !len.is_multiple_of(RECORD) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: len.div_ceil(RECORD) * RECORD,
            found: len,
        });
    }
    for (k, record) in bytes.chunks_exact(RECORD as usize).enumerate() {
        if record[0] > 9 {
            return Err(DataError::format(path, k as u64 * RECORD, "a label in 0..10", record[0].to_string()));
        }
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    Ok(())
}

impl Dataset for Cifar10 {
    type Item = (Image, usize);
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Image, usize) {
        assert!(index < self.len(), "Cifar10: index {index} out of range for {} samples", self.len());
        (Image::from_u8(self.image_bytes(index), 3, 32, 32), self.labels[index] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{gzip, real_data, TempDir};

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, 3072));
        r
    }

    #[test]
    fn reads_plain_and_gzip_batches_in_order() {
        let dir = TempDir::new("cifar");
        dir.write("data_batch_1.bin", &[record(3, 10), record(4, 20)].concat());
        dir.write("cifar-10-batches-bin/data_batch_2.bin.gz", &gzip(&record(9, 255)));
        dir.write("test_batch.bin", &record(0, 0));
        let train = Cifar10::new(&dir.0, Split::Train).unwrap();
        assert_eq!(train.len(), 3);
        assert_eq!(train.labels(), &[3, 4, 9]);
        let (img, label) = train.get(2);
        assert_eq!((img.shape(), label, img.data[0]), ([3, 32, 32], 9, 1.0));
        assert_eq!(Cifar10::new(&dir.0, Split::Test).unwrap().len(), 1);
        assert_eq!(train.classes()[9], "truck");
    }

    #[test]
    fn wrong_record_length_and_bad_label_are_typed_errors() {
        let dir = TempDir::new("cifar-bad");
        let mut short = record(1, 1);
        short.pop();
        dir.write("data_batch_1.bin", &[record(0, 0), short.clone()].concat());
        match Cifar10::new(&dir.0, Split::Train) {
            Err(DataError::Format { offset, expected, .. }) => {
                assert_eq!(offset, 3073);
                assert!(expected.contains("3073-byte records"));
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.0.join("data_batch_1.bin")).unwrap();
        dir.write("data_batch_1.bin.gz", &gzip(&short));
        assert!(matches!(Cifar10::new(&dir.0, Split::Train), Err(DataError::Truncated { found: 3072, .. })));
        dir.write("test_batch.bin", &[record(0, 0), record(12, 0)].concat());
        assert!(matches!(Cifar10::new(&dir.0, Split::Test), Err(DataError::Format { offset: 3073, .. })));
        assert!(matches!(Cifar10::new(dir.0.join("none"), Split::Test), Err(DataError::NotFound { .. })));
    }

    #[test]
    fn real_cifar10_subsets() {
        let Some(dir) = real_data("cifar10") else {
            return;
        };
        let meta = dir.join("batches.meta.txt");
        let test = Cifar10::from_files(&[dir.join("test_batch_first20.bin")], Some(&meta)).unwrap();
        assert_eq!(test.len(), 20);
        assert_eq!(test.labels(), &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]);
        let train = Cifar10::from_files(&[dir.join("data_batch_1_first4000.bin")], Some(&meta)).unwrap();
        assert_eq!(train.len(), 4000);
        assert_eq!(&train.labels()[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
        let mut counts = [0usize; 10];
        train.labels().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]);
        assert_eq!(train.classes(), &Cifar10::CLASSES.map(String::from));
        eprintln!("CIFAR-10: {} train images from {:?}, {} test images", train.len(), train.files(), test.len());
    }
}
