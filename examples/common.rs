//! Helpers every recipe in `examples/` shares: where a data set is, environment overrides, and
//! taking the first images of a set. Each recipe includes this file with
//! `#[path = "common.rs"] mod common;` (the path is relative to `examples/`, so the same line
//! works when the smoke test includes a recipe as a module).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln::data::{Dataset, DatasetExt, Subset};

/// The folder of data set `name`: `KILN_DATA_DIR/<name>` when `KILN_DATA_DIR` is set (and then
/// nowhere else: a setting that points at the wrong folder stops the program, naming it),
/// otherwise the default data folder (`kiln::data::data_dir`) or, when the set is not there, the
/// shared data folder beside the repository.
pub fn data_folder(name: &str) -> PathBuf {
    check_threads();
    match kiln::data::env::dataset_dir_var(name) {
        Ok(Some(dir)) => return dir,
        Ok(None) => {}
        Err(e) => stop(&e.to_string()),
    }
    let dir = kiln::data::data_dir().join(name);
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(name);
    if dir.is_dir() || !shared.is_dir() {
        dir
    } else {
        shared
    }
}

/// An environment variable read as a count (`KILN_EPOCHS=3`): `None` when unset or empty; a
/// value that is not a whole number stops the program with a message naming the variable and
/// the value (`KILN_EPOCHS=1O` must not silently run the default).
pub fn env_usize(key: &str) -> Option<usize> {
    check_threads();
    kiln::data::env::usize_var(key).unwrap_or_else(|e| stop(&e.to_string()))
}

/// Stops on a `KILN_NUM_THREADS` that is not a whole number >= 1 (kiln would panic at its first
/// parallel kernel; this says it up front).
fn check_threads() {
    if let Err(e) = kiln::tensor::parallel::threads_from_env() {
        stop(&e.to_string());
    }
    // A recipe is an application, so it may retune the process's allocator (kiln never does on
    // its own): malloc then keeps large freed tensor buffers for the next step instead of
    // returning them to the system, which makes the CNN, LSTM and Transformer steps 1.3x to 2.2x
    // faster on the 2-core machine (W3/W4/W5 with and without `KILN_TUNE_MALLOC=1`).
    kiln::tensor::alloc::tune_allocator();
}

/// Prints `message` and ends the program with exit code 2 (a usage error).
fn stop(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

/// The first `n` items of `ds` (all of them when `None`).
pub fn first<D: Dataset>(ds: D, n: Option<usize>) -> Subset<D> {
    let n = n.unwrap_or(usize::MAX).min(ds.len());
    ds.subset((0..n).collect())
}

/// `.or_stop()` on the result of a training or evaluation call: its value, or a stop with the
/// error's message (a run that diverged, `TrainError::NonFiniteLoss`, names the epoch and batch;
/// an empty data source says which).
pub trait OrStop<T> {
    /// The value, or a panic with the error's message.
    fn or_stop(self) -> T;
}

impl<T, E: std::fmt::Display> OrStop<T> for Result<T, E> {
    fn or_stop(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
}
