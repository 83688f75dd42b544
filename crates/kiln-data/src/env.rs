//! Settings read from environment variables, strictly: a variable that is set must hold what it
//! should, or the reader says which variable and which value are wrong. A typo such as
//! `KILN_EPOCHS=1O` must never silently run the default.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{DataError, Result};

/// The variable `key` as a whole number: `Ok(None)` when unset or empty.
///
/// ```
/// assert_eq!(kiln_data::env::usize_var("KILN_DOC_SURELY_UNSET").unwrap(), None);
/// ```
///
/// # Errors
/// [`DataError::Env`] naming the variable and its value when it is not a whole number.
pub fn usize_var(key: &str) -> Result<Option<usize>> {
    parse_usize(key, std::env::var_os(key))
}

/// The folder of data set `name` (`mnist`, `cifar10`, ...) under `KILN_DATA_DIR`, when that is
/// set: `Ok(None)` when it is unset or empty (the caller picks its default).
///
/// # Errors
/// [`DataError::Env`] when `KILN_DATA_DIR` is set but holds no folder `name`: a setting that
/// points at the wrong place is reported, never replaced by another folder.
pub fn dataset_dir_var(name: &str) -> Result<Option<PathBuf>> {
    dataset_dir(name, std::env::var_os("KILN_DATA_DIR"))
}

fn parse_usize(key: &str, value: Option<OsString>) -> Result<Option<usize>> {
    let Some(value) = value else { return Ok(None) };
    let text = value.to_string_lossy();
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| DataError::Env {
        key: key.to_string(),
        value: text.into_owned(),
        expected: "a whole number".into(),
    })
}

fn dataset_dir(name: &str, root: Option<OsString>) -> Result<Option<PathBuf>> {
    let Some(root) = root.filter(|r| !r.is_empty()) else { return Ok(None) };
    let dir = PathBuf::from(&root).join(name);
    if dir.is_dir() {
        Ok(Some(dir))
    } else {
        Err(DataError::Env {
            key: "KILN_DATA_DIR".into(),
            value: root.to_string_lossy().into_owned(),
            expected: format!("a folder holding {name}/ (there is no {})", dir.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_strictly() {
        assert_eq!(parse_usize("KILN_EPOCHS", None).unwrap(), None);
        assert_eq!(parse_usize("KILN_EPOCHS", Some("".into())).unwrap(), None);
        assert_eq!(parse_usize("KILN_EPOCHS", Some(" 3 ".into())).unwrap(), Some(3));
        let e = parse_usize("KILN_EPOCHS", Some("1O".into())).unwrap_err();
        assert_eq!(e.to_string(), "environment variable KILN_EPOCHS=\"1O\": expected a whole number");
        let e = parse_usize("KILN_TRAIN_SAMPLES", Some("-5".into())).unwrap_err();
        assert_eq!(e.to_string(), "environment variable KILN_TRAIN_SAMPLES=\"-5\": expected a whole number");
    }

    #[test]
    fn a_data_dir_without_the_set_is_an_error() {
        let root = std::env::temp_dir().join(format!("kiln-env-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("mnist")).unwrap();
        assert_eq!(dataset_dir("mnist", Some(root.clone().into())).unwrap(), Some(root.join("mnist")));
        assert_eq!(dataset_dir("mnist", None).unwrap(), None);
        let e = dataset_dir("cifar10", Some(root.clone().into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "environment variable KILN_DATA_DIR={:?}: expected a folder holding cifar10/ (there is no {})",
                root.display().to_string(),
                root.join("cifar10").display()
            )
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
