//! MNIST and Fashion-MNIST: IDX files, plain or gzip.

use std::path::Path;

use kiln_tensor::Rng;

use super::{data_dir, Split};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::image::Image;
use crate::io::{find_file, Source};

/// An IDX array of unsigned bytes: its dimensions and row-major data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// The dimensions from the header.
    pub dims: Vec<usize>,
    /// `product(dims)` bytes.
    pub data: Vec<u8>,
}

/// The largest IDX payload read: 1 GiB. The largest public IDX sets (EMNIST by class, 0.55 GB)
/// fit; a header claiming more is refused before anything is decompressed or allocated, so a
/// small gzip of zeros with a forged header cannot fill memory.
const MAX_IDX_BYTES: u64 = 1 << 30;

/// IDX type code of unsigned bytes (the only type MNIST uses).
const IDX_UBYTE: u8 = 0x08;

/// Reads an IDX file of unsigned bytes with `ndim` dimensions (`.gz` or plain).
///
/// The header is checked before any data is allocated: the magic number
/// (`0x0000_08NN`, `NN = ndim`), and the element count against what the file can hold.
///
/// # Errors
///
/// [`DataError::BadMagic`] for another magic number, [`DataError::Truncated`] when the file holds
/// fewer bytes than the header promises, [`DataError::Format`] for trailing data or a bad gzip
/// stream, [`DataError::Io`] when the file cannot be read.
pub fn read_idx(path: &Path, ndim: u8) -> Result<Idx> {
    parse_idx(Source::open(path)?, ndim)
}

/// [`read_idx`] on bytes already in memory: `name` is the file name used in errors and decides
/// gzip as the path does for [`read_idx`] (a name ending in `.gz` is decompressed). The checks and
/// errors are those of [`read_idx`]; nothing larger than `bytes` could hold is allocated.
///
/// ```
/// use kiln_data::datasets::read_idx_bytes;
/// let file = [0, 0, 8, 1, 0, 0, 0, 2, 7, 3];
/// let idx = read_idx_bytes("labels".as_ref(), &file, 1)?;
/// assert_eq!((idx.dims, idx.data), (vec![2], vec![7, 3]));
/// assert!(read_idx_bytes("labels".as_ref(), &file[..9], 1).is_err());
/// # Ok::<(), kiln_data::DataError>(())
/// ```
///
/// # Errors
///
/// As [`read_idx`] (without the I/O errors).
pub fn read_idx_bytes(name: &Path, bytes: &[u8], ndim: u8) -> Result<Idx> {
    parse_idx(Source::from_bytes(name, bytes), ndim)
}

fn parse_idx(mut src: Source<'_>, ndim: u8) -> Result<Idx> {
    let path = src.path.clone();
    let path = path.as_path();
    let header = src.read_header(4)?;
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let expected = u32::from_be_bytes([0, 0, IDX_UBYTE, ndim]);
    if magic != expected {
        return Err(DataError::BadMagic { path: path.to_path_buf(), expected, found: magic });
    }
    let raw = src.read_header(4 * ndim as usize)?;
    let dims: Vec<usize> = raw.chunks(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::format(path, 4, "dimensions whose product fits in 64 bits", format!("{dims:?}")))?;
    // A count the file cannot hold at all is reported as truncation (read_payload, before any
    // allocation); one it could hold only as a zip bomb is refused here.
    if count > MAX_IDX_BYTES && src.pos.saturating_add(count) <= src.max_len {
        return Err(DataError::format(
            path,
            4,
            format!("dimensions of at most {MAX_IDX_BYTES} bytes of data (1 GiB)"),
            format!("{dims:?}, {count} bytes"),
        ));
    }
    let data = src.read_payload(count)?;
    src.expect_end()?;
    Ok(Idx { dims, data })
}

/// MNIST (LeCun et al. 1998): 28x28 grey handwritten digits, 60,000 training and 10,000 test
/// images, read from the four IDX files (`train-images-idx3-ubyte[.gz]`, ...).
///
/// Items are `(Image [1, 28, 28] with values in [0, 1], label 0..=9)`.
///
/// ```no_run
/// use kiln_data::datasets::{Mnist, Split};
/// use kiln_data::Dataset;
/// let test = Mnist::new(kiln_data::data_dir().join("mnist"), Split::Test)?;
/// assert_eq!(test.len(), 10_000);
/// # Ok::<(), kiln_data::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Mnist {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl Mnist {
    /// The class names (the digits).
    pub const CLASSES: [&'static str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

    /// Loads `split` from the folder `dir` holding the IDX files (gzip or not).
    ///
    /// ```
    /// use kiln_data::datasets::{Mnist, Split};
    /// use kiln_data::{DataError, Dataset};
    /// // Two 28x28 test images in MNIST's IDX format: a big-endian header (magic 0x0803 for
    /// // unsigned bytes in 3 dimensions, then the sizes) and the pixels, 0..=255.
    /// let dir = std::env::temp_dir().join(format!("kiln-doc-mnist-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    /// images.extend((0..2 * 784).map(|i| (i % 256) as u8));
    /// std::fs::write(dir.join("t10k-images-idx3-ubyte"), &images).unwrap();
    /// std::fs::write(dir.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 2, 7, 3]).unwrap();
    ///
    /// let test = Mnist::new(&dir, Split::Test).unwrap();
    /// assert_eq!(test.len(), 2);
    /// let (image, label) = test.get(1);
    /// assert_eq!((image.shape(), label), ([1, 28, 28], 3));
    /// assert_eq!((image.data[0] * 255.0).round(), 16.0); // byte 784 of the pixels: 784 % 256
    ///
    /// // A label above 9 is a typed error naming the file.
    /// std::fs::write(dir.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 2, 7, 12]).unwrap();
    /// let err = Mnist::new(&dir, Split::Test).unwrap_err();
    /// assert!(matches!(err, DataError::Format { .. }), "{err}");
    /// assert!(err.to_string().contains("t10k-labels-idx1-ubyte"), "{err}");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] when a file is missing, the errors of [`read_idx`], a
    /// [`DataError::CountMismatch`] when the image and label files disagree, and a
    /// [`DataError::Format`] for a label above 9.
    pub fn new(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        Self::load_idx(dir.as_ref(), split, 10)
    }

    /// Loads `split` from `data_dir()/mnist`.
    ///
    /// # Errors
    ///
    /// As [`Mnist::new`].
    pub fn from_data_dir(split: Split) -> Result<Self> {
        Self::new(data_dir().join("mnist"), split)
    }

    pub(crate) fn load_idx(dir: &Path, split: Split, classes: u8) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
            Split::Valid => {
                return Err(DataError::InvalidArgument("MNIST has no validation split; use random_split".into()))
            }
        };
        let images_path = find_file(
            dir,
            &[&format!("{prefix}-images-idx3-ubyte"), &format!("{prefix}-images.idx3-ubyte")],
            "IDX images",
        )?;
        let labels_path = find_file(
            dir,
            &[&format!("{prefix}-labels-idx1-ubyte"), &format!("{prefix}-labels.idx1-ubyte")],
            "IDX labels",
        )?;
        Self::from_files(&images_path, &labels_path, classes)
    }

    /// Loads an image IDX file and a label IDX file.
    ///
    /// # Errors
    ///
    /// As [`Mnist::new`].
    pub fn from_files(images_path: &Path, labels_path: &Path, classes: u8) -> Result<Self> {
        let images = read_idx(images_path, 3)?;
        let labels = read_idx(labels_path, 1)?;
        let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
        for (i, (d, name)) in [(n, "image count"), (rows, "rows"), (cols, "columns")].into_iter().enumerate() {
            if d == 0 {
                return Err(DataError::format(
                    images_path,
                    4 + 4 * i as u64,
                    format!("a non-zero {name}"),
                    format!("0 (dimensions {:?})", images.dims),
                ));
            }
        }
        if labels.dims[0] != n {
            return Err(DataError::CountMismatch {
                what: "items".into(),
                left_path: images_path.to_path_buf(),
                left: n as u64,
                right_path: labels_path.to_path_buf(),
                right: labels.dims[0] as u64,
            });
        }
        if let Some(i) = labels.data.iter().position(|&l| l >= classes) {
            return Err(DataError::format(
                labels_path,
                8 + i as u64,
                format!("a label in 0..{classes}"),
                labels.data[i].to_string(),
            ));
        }
        Ok(Mnist { images: images.data, labels: labels.data, rows, cols })
    }

    /// All pixels, `len() * rows * cols` bytes, image after image.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// `(rows, cols)` of each image (28 x 28).
    pub fn image_size(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The pixels of image `index`.
    ///
    /// **Panics** if `index >= len()`.
    pub fn image_bytes(&self, index: usize) -> &[u8] {
        let per = self.rows * self.cols;
        &self.images[index * per..(index + 1) * per]
    }
}

impl Dataset for Mnist {
    type Item = (Image, usize);
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Image, usize) {
        assert!(index < self.len(), "Mnist: index {index} out of range for {} samples", self.len());
        (Image::from_u8(self.image_bytes(index), 1, self.rows, self.cols), self.labels[index] as usize)
    }
}

/// Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of clothing in 10 classes, in MNIST's
/// IDX format and file names. Items as [`Mnist`].
#[derive(Clone, Debug)]
pub struct FashionMnist {
    inner: Mnist,
}

impl FashionMnist {
    /// The class names, in label order.
    pub const CLASSES: [&'static str; 10] =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// Loads `split` from the folder `dir` holding the IDX files.
    ///
    /// # Errors
    ///
    /// As [`Mnist::new`].
    pub fn new(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        Ok(FashionMnist { inner: Mnist::load_idx(dir.as_ref(), split, 10)? })
    }

    /// Loads `split` from `data_dir()/fashion-mnist`.
    ///
    /// # Errors
    ///
    /// As [`Mnist::new`].
    pub fn from_data_dir(split: Split) -> Result<Self> {
        Self::new(data_dir().join("fashion-mnist"), split)
    }

    /// The images and labels, with the accessors of [`Mnist`].
    pub fn as_mnist(&self) -> &Mnist {
        &self.inner
    }
}

impl Dataset for FashionMnist {
    type Item = (Image, usize);
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> (Image, usize) {
        self.inner.get_with_rng(index, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{gzip, real_data, TempDir};

    fn idx(ndim: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, ndim];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_plain_and_gzip_idx() {
        let dir = TempDir::new("idx");
        let pixels: Vec<u8> = (0..2 * 3 * 2).collect();
        dir.write("train-images-idx3-ubyte", &idx(3, &[2, 3, 2], &pixels));
        dir.write("train-labels-idx1-ubyte.gz", &gzip(&idx(1, &[2], &[7, 3])));
        let ds = Mnist::new(&dir.0, Split::Train).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.image_size(), (3, 2));
        let (img, label) = ds.get(1);
        assert_eq!((img.shape(), label), ([1, 3, 2], 3));
        assert_eq!(img.data[0], 6.0 / 255.0);
    }

    #[test]
    fn forged_idx_files_give_typed_errors() {
        let dir = TempDir::new("idx-bad");
        // Wrong magic (an IDX1 file where IDX3 is expected).
        let p = dir.write("a", &idx(1, &[2], &[1, 2]));
        match read_idx(&p, 3) {
            Err(DataError::BadMagic { expected: 0x0803, found: 0x0801, .. }) => {}
            other => panic!("{other:?}"),
        }
        // A header claiming 4 billion images, in a file of 20 bytes: rejected before allocating.
        let p = dir.write("b", &idx(3, &[u32::MAX, 28, 28], &[0; 4]));
        match read_idx(&p, 3) {
            Err(DataError::Truncated { expected, found, .. }) => {
                assert_eq!(expected, 16 + u32::MAX as u64 * 784);
                assert_eq!(found, 20);
            }
            other => panic!("{other:?}"),
        }
        // The same in a gzip file: bounded by the deflate ratio, still rejected up front.
        let p = dir.write("b.gz", &gzip(&idx(3, &[u32::MAX, 28, 28], &[0; 4])));
        assert!(matches!(read_idx(&p, 3), Err(DataError::Truncated { .. })));
        // A count slightly above the data: truncated with exact figures.
        let p = dir.write("c.gz", &gzip(&idx(1, &[5], &[1, 2, 3])));
        match read_idx(&p, 1) {
            Err(DataError::Truncated { expected: 13, found: 11, .. }) => {}
            other => panic!("{other:?}"),
        }
        // A truncated gzip stream.
        let full = gzip(&idx(1, &[1000], &[9; 1000]));
        let p = dir.write("d.gz", &full[..full.len() / 2]);
        let err = read_idx(&p, 1).unwrap_err();
        assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("d.gz"), "{err}");
        // Trailing bytes after the data.
        let p = dir.write("e", &idx(1, &[1], &[1, 2]));
        assert!(matches!(read_idx(&p, 1), Err(DataError::Format { offset: 9, .. })));
    }

    #[test]
    fn image_and_label_count_mismatch_and_bad_label() {
        let dir = TempDir::new("idx-mismatch");
        dir.write("t10k-images-idx3-ubyte", &idx(3, &[2, 1, 1], &[0, 0]));
        dir.write("t10k-labels-idx1-ubyte", &idx(1, &[3], &[0, 1, 2]));
        match Mnist::new(&dir.0, Split::Test) {
            Err(DataError::CountMismatch { left: 2, right: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        dir.write("t10k-labels-idx1-ubyte", &idx(1, &[2], &[0, 10]));
        match Mnist::new(&dir.0, Split::Test) {
            Err(DataError::Format { offset: 9, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(Mnist::new(dir.0.join("nowhere"), Split::Test), Err(DataError::NotFound { .. })));
    }

    #[test]
    fn real_mnist_test_split() {
        let Some(dir) = real_data("mnist") else {
            return;
        };
        let ds = Mnist::new(&dir, Split::Test).unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.image_size(), (28, 28));
        assert_eq!(&ds.labels()[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        let mut counts = [0usize; 10];
        ds.labels().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
        let (img, label) = ds.get(0);
        assert_eq!((img.shape(), label), ([1, 28, 28], 7));
        assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
        eprintln!("MNIST test: {} images", ds.len());
    }

    #[test]
    fn real_mnist_train_labels() {
        // Only the label file (the images are 47 MB decompressed; the test split covers them).
        let Some(dir) = real_data("mnist") else {
            return;
        };
        let labels = read_idx(&dir.join("train-labels-idx1-ubyte.gz"), 1).unwrap();
        assert_eq!(labels.dims, vec![60_000]);
        assert_eq!(&labels.data[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    }

    #[test]
    fn real_fashion_mnist_test_split() {
        let Some(dir) = real_data("fashion-mnist") else {
            return;
        };
        let ds = FashionMnist::new(&dir, Split::Test).unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(&ds.as_mnist().labels()[..10], &[9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
        let mut counts = [0usize; 10];
        ds.as_mnist().labels().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [1000; 10]);
        let train_labels = read_idx(&dir.join("train-labels-idx1-ubyte.gz"), 1).unwrap();
        assert_eq!(&train_labels.data[..10], &[9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    }
}
