//! # kiln-data
//!
//! Data for kiln: the [`Dataset`] trait and its combinators ([`Subset`], [`ConcatDataset`],
//! [`random_split`], [`MapDataset`]), the [`DataLoader`] (seeded shuffling, worker threads with
//! bounded prefetch, collation into [`Batch`] tensors), loaders for real data sets in
//! [`datasets`] (MNIST, Fashion-MNIST, CIFAR-10, IMDB, Penn Treebank, image folders, CSV tables,
//! and the embedded 8x8 [`datasets::Digits`]), seeded [`transforms`], [`text`] utilities,
//! model-selection [`split`]s, verified [`download`]s, and NumPy `.npy`/`.npz` reading in [`npy`].
//!
//! Everything read from outside returns a typed [`DataError`] that names the file, the place in
//! it, and what was expected and found.
//!
//! ```
//! use kiln_data::datasets::Digits;
//! use kiln_data::{Batch, DataLoader, Dataset};
//! let digits = Digits::load();
//! assert_eq!(digits.len(), 1797);
//! let loader = DataLoader::new(digits, 64).shuffle(true).seed(0);
//! let batch: Batch = loader.iter().next().unwrap();
//! assert_eq!(batch.inputs.shape(), &[64, 64]);
//! assert!(batch.targets.classes().iter().all(|&c| c < 10));
//! ```

pub mod batch;
pub mod dataloader;
pub mod dataset;
pub mod datasets;
pub mod download;
pub mod env;
pub mod error;
pub mod image;
mod io;
pub mod npy;
pub mod split;
pub mod text;
pub mod transforms;

pub use batch::{Batch, CollateInput, CollateTarget, DefaultCollate, Targets, TensorDataset};
pub use dataloader::{Collate, DataLoader, DataLoaderIter, VecCollate};
pub use dataset::{
    random_split, random_split_fractions, sample_rng, ConcatDataset, Dataset, DatasetExt, MapDataset, MapInput, Subset,
    VecDataset,
};
pub use datasets::data_dir;
pub use error::{DataError, Result};
pub use image::Image;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
