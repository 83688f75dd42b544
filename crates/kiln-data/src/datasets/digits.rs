//! The 8x8 handwritten digits (UCI optical digits, test part), compiled into the crate.

use std::path::Path;

use kiln_tensor::Rng;

use super::csv::{CsvDataset, CsvOptions};
use crate::dataset::Dataset;
use crate::image::Image;

/// `digits.csv.gz` from scikit-learn 1.9.1 (`sklearn/datasets/data/`), embedded: 57,523 bytes.
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998), as
/// scikit-learn's `load_digits`: 1797 samples of 64 features (an 8x8 image, row-major, counts 0 to
/// 16) and a digit label 0-9. Compiled into the crate: no file and no network needed.
///
/// Items are `(features: Vec<f32> of 64 values in 0..=16, label)`, as `load_digits().data`.
/// Licence: CC BY 4.0 (UCI Machine Learning Repository).
///
/// ```
/// use kiln_data::datasets::Digits;
/// use kiln_data::Dataset;
/// let digits = Digits::load();
/// let (x, y) = digits.get(0);
/// assert_eq!((x.len(), y), (64, 0));
/// ```
#[derive(Clone, Debug)]
pub struct Digits {
    table: CsvDataset<usize>,
}

impl Digits {
    /// Number of samples.
    pub const LEN: usize = 1797;

    /// Decompresses and parses the embedded table (a few milliseconds).
    ///
    /// **Panics** never for the embedded file (its parse is checked by the tests).
    #[must_use]
    pub fn load() -> Self {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut text)
            .expect("the embedded digits.csv.gz is valid gzip");
        let options = CsvOptions { has_header: false, ..Default::default() };
        let table = CsvDataset::parse(Path::new("<embedded digits.csv.gz>"), &text, &options)
            .expect("the embedded digits.csv.gz parses");
        Digits { table }
    }

    /// All features, `[1797, 64]` row-major.
    pub fn features(&self) -> &[f32] {
        self.table.features()
    }

    /// All labels.
    pub fn targets(&self) -> &[usize] {
        self.table.targets()
    }

    /// Sample `index` as a `[1, 8, 8]` image scaled to `[0, 1]` (divided by 16).
    ///
    /// **Panics** if `index >= len()`.
    #[must_use]
    pub fn image(&self, index: usize) -> Image {
        Image::new(self.table.row(index).iter().map(|v| v / 16.0).collect(), 1, 8, 8)
    }
}

impl Dataset for Digits {
    type Item = (Vec<f32>, usize);
    fn len(&self) -> usize {
        self.table.len()
    }
    fn get_with_rng(&self, index: usize, rng: &mut Rng) -> (Vec<f32>, usize) {
        self.table.get_with_rng(index, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_match_the_published_counts() {
        let d = Digits::load();
        assert_eq!(d.len(), Digits::LEN);
        assert_eq!(d.features().len(), 1797 * 64);
        assert!(d.features().iter().all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0));
        let mut counts = [0usize; 10];
        d.targets().iter().for_each(|&y| counts[y] += 1);
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        assert_eq!(&d.features()[..8], &[0., 0., 5., 13., 9., 1., 0., 0.]);
        assert_eq!(d.image(0).shape(), [1, 8, 8]);
    }
}
