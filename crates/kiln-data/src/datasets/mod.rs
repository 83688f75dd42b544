//! Loaders for real data sets, one file each.
//!
//! Each loader reads and checks its files when it is built and returns a typed
//! [`crate::DataError`] for anything wrong with them; after that, `get` does not fail (except
//! [`ImageFolder`], which decodes lazily). File layouts and sources are those of the shared data
//! folder's README (the upstream layouts), and [`crate::download`] fetches them.

use std::path::PathBuf;

mod cifar10;
mod csv;
mod digits;
#[cfg(feature = "image")]
mod image_folder;
mod imdb;
mod mnist;
mod ptb;

pub use cifar10::Cifar10;
pub use csv::{CsvDataset, CsvOptions, CsvTarget, TargetColumn};
pub use digits::Digits;
#[cfg(feature = "image")]
pub use image_folder::ImageFolder;
pub use imdb::{Imdb, ImdbConfig, ImdbReviews, WordIndex};
pub use mnist::{read_idx, read_idx_bytes, FashionMnist, Idx, Mnist};
pub use ptb::{PennTreebank, TokenStreams};

/// Which part of a data set to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training part.
    Train,
    /// The validation part (Penn Treebank only).
    Valid,
    /// The test part.
    Test,
}

impl Split {
    /// `"train"`, `"valid"` or `"test"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// The root folder of the data sets: `$KILN_DATA_DIR` when set (and not empty), else
/// `$HOME/.cache/kiln/data` (where [`crate::download::download_dataset`] writes by default), else
/// `./data`. Each set lives in a sub-folder: `mnist/`, `fashion-mnist/`, `cifar10/`, `imdb/`,
/// `ptb/`.
#[must_use]
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("kiln").join("data"),
        None => PathBuf::from("data"),
    }
}
