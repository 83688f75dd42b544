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

/// CIFAR-10 (Krizhevsky 2009): 32x32 colour images in 10 classes, from the binary version's batch
/// files.
///
/// The loader reads every batch file present for the split (`data_batch_*.bin` for training,
/// `test_batch*.bin` for test, each optionally `.gz`, in the folder or its
/// `cifar-10-batches-bin/` sub-folder), so a partial copy loads as what it is; [`Cifar10::len`]
/// says how many images were found. Items are `(Image [3, 32, 32] in [0, 1], label 0..=9)`.
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

    /// Loads every batch file of `split` found in `dir`.
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] when there is no batch file for the split; for a plain file whose
    /// size is not a whole number of records, a [`DataError::Format`] naming the record length and
    /// the size (checked before reading); for a gzip file, [`DataError::Truncated`] when the last
    /// record is short; [`DataError::Format`] for a label above 9 (with its offset).
    pub fn new(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let prefix = match split {
            Split::Train => "data_batch",
            Split::Test => "test_batch",
            Split::Valid => {
                return Err(DataError::InvalidArgument("CIFAR-10 has no validation split; use random_split".into()))
            }
        };
        let mut files = Vec::new();
        for folder in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(|e| DataError::io(&folder, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) && (name.ends_with(".bin") || name.ends_with(".bin.gz")) {
                    files.push(entry.path());
                }
            }
        }
        if files.is_empty() {
            return Err(DataError::NotFound {
                path: dir.join(format!("{prefix}*.bin")),
                what: format!("CIFAR-10 {} batch files", split.name()),
            });
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for file in &files {
            read_batch(file, &mut images, &mut labels)?;
        }
        let classes = match read_text(&dir.join("batches.meta.txt")) {
            Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
            Err(_) => Self::CLASSES.iter().map(|s| s.to_string()).collect(),
        };
        Ok(Cifar10 { images, labels, files, classes })
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

fn read_batch(path: &Path, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    parse_batch(Source::open(path)?, images, labels)
}

fn parse_batch(mut src: Source<'_>, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    let path = src.path.clone();
    let path = path.as_path();
    let bytes = if is_gz(path) {
        src.read_rest()?
    } else {
        let size = src.file_len;
        if size % RECORD != 0 {
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
    if len % RECORD != 0 {
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
        let test = Cifar10::new(&dir, Split::Test).unwrap();
        assert_eq!(test.len(), 20);
        assert_eq!(test.labels(), &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]);
        let train = Cifar10::new(&dir, Split::Train).unwrap();
        assert_eq!(train.len(), 4000);
        assert_eq!(&train.labels()[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
        let mut counts = [0usize; 10];
        train.labels().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]);
        assert_eq!(train.classes(), &Cifar10::CLASSES.map(String::from));
        eprintln!("CIFAR-10: {} train images from {:?}, {} test images", train.len(), train.files(), test.len());
    }
}
