//! Helpers every recipe in `examples/` shares: where a data set is, environment overrides, and
//! taking the first images of a set. Each recipe includes this file with
//! `#[path = "common.rs"] mod common;` (the path is relative to `examples/`, so the same line
//! works when the smoke test includes a recipe as a module).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln::data::{Dataset, DatasetExt, Subset};

/// `KILN_DATA_DIR/<name>` (see `kiln::data::data_dir`), or the shared data folder beside the
/// repository when that is where the set is.
pub fn data_folder(name: &str) -> PathBuf {
    let dir = kiln::data::data_dir().join(name);
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(name);
    if dir.is_dir() || !shared.is_dir() {
        dir
    } else {
        shared
    }
}

/// An environment variable read as a count (`KILN_EPOCHS=3`), `None` when unset or not a number.
pub fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok()?.parse().ok()
}

/// The first `n` items of `ds` (all of them when `None`).
pub fn first<D: Dataset>(ds: D, n: Option<usize>) -> Subset<D> {
    let n = n.unwrap_or(usize::MAX).min(ds.len());
    ds.subset((0..n).collect())
}
