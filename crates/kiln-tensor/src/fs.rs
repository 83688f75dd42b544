//! Atomic file replacement, the one writer every kiln crate saves through (model files,
//! checkpoints, heat maps, downloads, converted weights).
//!
//! [`write_atomic`] writes a temporary file in the target's folder, fsyncs it, gives it the
//! target's permission bits, renames it over the target and fsyncs the folder: a reader sees
//! the old file or the new one, never a part, and a failed or killed save never destroys the
//! previous file.
//!
//! Temporaries are named `.NAME.PID.N.kiln-tmp` and, on Unix, hold an exclusive advisory lock
//! (`flock`) for as long as their writer lives. A writer killed with `kill -9` leaves its
//! temporary behind, but the kernel drops its lock; the next save of the same target removes
//! every temporary of that target whose lock it can take, and never one a live writer holds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of concurrent saves within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Suffix of every temporary file [`write_atomic`] creates.
pub const TEMP_SUFFIX: &str = ".kiln-tmp";

/// Why an atomic save failed: the target, the step and the underlying I/O error.
///
/// Each crate wraps it into its own error type (`NnError::Io`, `TrainError::Io`, ...).
#[derive(Debug)]
pub struct AtomicWriteError {
    /// The file that was to be written (after following symbolic links).
    pub path: PathBuf,
    /// The step that failed, e.g. `create temporary file .m.safetensors.77.0.kiln-tmp`.
    pub action: String,
    /// The error of that step (for the body's own failure, the error the body returned).
    pub source: io::Error,
}

impl std::fmt::Display for AtomicWriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.action, self.source)
    }
}

impl std::error::Error for AtomicWriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Replaces `path` atomically with what `body` writes.
///
/// - `body` writes into a new temporary file beside the target (same folder, so the rename
///   cannot cross file systems), through a buffered writer;
/// - the temporary is flushed and fsynced, given the permission bits of the file it replaces
///   (a new file keeps the process's default), and renamed over the target; then the folder
///   is fsynced so that the rename survives a crash (best effort: not every file system can);
/// - if `path` is a symbolic link, the file it points to is replaced and the link stays, as
///   `std::fs::write` does;
/// - if anything fails before the rename, the temporary is removed and the target is
///   untouched;
/// - stale temporaries of the same target left by killed writers are removed first (see the
///   module documentation); those of live writers are left alone.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("kiln-doc-atomic-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("notes.txt");
/// kiln_tensor::fs::write_atomic(&path, |w| w.write_all(b"first")).unwrap();
/// let failed = kiln_tensor::fs::write_atomic(&path, |w| {
///     w.write_all(b"sec")?;
///     Err(std::io::Error::other("disk full"))
/// });
/// assert!(failed.is_err());
/// assert_eq!(std::fs::read(&path).unwrap(), b"first"); // the previous file is intact
/// assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1); // and no temporary file is left
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Errors
/// [`AtomicWriteError`] naming the target and the step that failed (resolving a link,
/// creating, writing, syncing or renaming the temporary), with the error `body` returned
/// when it was `body` that failed.
pub fn write_atomic(
    path: impl AsRef<Path>,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), AtomicWriteError> {
    let path = resolve_links(path.as_ref())?;
    let path = path.as_path();
    let err = |action: String, source: io::Error| AtomicWriteError { path: path.to_path_buf(), action, source };
    let name = path
        .file_name()
        .ok_or_else(|| {
            err("save".into(), io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"))
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(meta) = fs::metadata(path) {
        if meta.is_dir() {
            return Err(err("save".into(), io::Error::new(io::ErrorKind::IsADirectory, "the path is a folder")));
        }
    }
    remove_stale_temporaries(&dir, &name);

    let (tmp, file) = create_locked_temporary(&dir, &name).map_err(|(action, e)| err(action, e))?;
    let tmp_name = tmp.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let written = (|| -> Result<File, (&'static str, io::Error)> {
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        body(&mut w).map_err(|e| ("write", e))?;
        w.flush().map_err(|e| ("write", e))?;
        drop(w);
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions()).map_err(|e| ("set the permissions of", e))?;
        }
        file.sync_all().map_err(|e| ("fsync", e))?;
        Ok(file)
    })();
    let file = match written {
        Ok(file) => file,
        Err((step, e)) => {
            let _ = fs::remove_file(&tmp);
            return Err(err(format!("{step} temporary file {tmp_name}"), e));
        }
    };
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(err(format!("rename temporary file {tmp_name} over the target"), e));
    }
    // The lock goes with the file; the name it guarded no longer exists.
    drop(file);
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Follows `path` through symbolic links to the file a write should replace (which need not
/// exist yet: a dangling link names the file to create).
fn resolve_links(path: &Path) -> Result<PathBuf, AtomicWriteError> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current).map_err(|source| AtomicWriteError {
                    path: current.clone(),
                    action: "read the symbolic link".into(),
                    source,
                })?;
                current = if target.is_absolute() {
                    target
                } else {
                    current.parent().map(|p| p.join(&target)).unwrap_or(target)
                };
            }
            _ => return Ok(current),
        }
    }
    Err(AtomicWriteError {
        path: path.to_path_buf(),
        action: "follow symbolic links".into(),
        source: io::Error::other("more than 40 levels of symbolic links"),
    })
}

/// The temporary-file name prefix of `name`'s saves: `.NAME.`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.")
}

/// Creates `.NAME.PID.N.kiln-tmp` in `dir` and takes its lock. If a concurrent cleaner removed
/// the name between creation and locking (the only window in which it can), tries a new name.
fn create_locked_temporary(dir: &Path, name: &str) -> Result<(PathBuf, File), (String, io::Error)> {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{}{}.{n}{TEMP_SUFFIX}", temp_prefix(name), std::process::id()));
        let tmp_name = tmp.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| (format!("create temporary file {tmp_name}"), e))?;
        lock::exclusive(&file).map_err(|e| (format!("lock temporary file {tmp_name}"), e))?;
        if lock::same_file(&file, &tmp) {
            return Ok((tmp, file));
        }
    }
}

/// Removes the temporaries of `name` in `dir` whose writer is gone (their lock is free).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(rest) = file_name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(TEMP_SUFFIX)) else {
            continue;
        };
        // Only names this writer makes: PID.N with both numbers.
        let mut parts = rest.split('.');
        let well_formed = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(p), Some(c), None) if p.parse::<u32>().is_ok() && c.parse::<u64>().is_ok()
        );
        if !well_formed {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new().write(true).open(&path) else { continue };
        if lock::try_exclusive(&file) && lock::same_file(&file, &path) {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(unix)]
mod lock {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    /// Takes an exclusive advisory lock, waiting for none (the file is new and ours).
    pub(super) fn exclusive(file: &File) -> io::Result<()> {
        // SAFETY: flock on a valid, open file descriptor owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether the exclusive lock could be taken now (no live writer holds it).
    pub(super) fn try_exclusive(file: &File) -> bool {
        exclusive(file).is_ok()
    }

    /// Whether `path` still names the open `file` (same device and inode).
    pub(super) fn same_file(file: &File, path: &Path) -> bool {
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

#[cfg(not(unix))]
mod lock {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    /// Without advisory locks a temporary cannot be told from a live writer's: none is taken.
    pub(super) fn exclusive(_file: &File) -> io::Result<()> {
        Ok(())
    }

    /// Without advisory locks no temporary is ever judged stale.
    pub(super) fn try_exclusive(_file: &File) -> bool {
        false
    }

    /// The file was just created under this name.
    pub(super) fn same_file(_file: &File, path: &Path) -> bool {
        path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-fs-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_and_leaves_nothing_behind() {
        let dir = temp_dir("replace");
        let path = dir.join("m.bin");
        write_atomic(&path, |w| w.write_all(b"one")).unwrap();
        write_atomic(&path, |w| w.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(&dir), vec!["m.bin"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_body_keeps_the_previous_file() {
        let dir = temp_dir("fail");
        let path = dir.join("m.bin");
        write_atomic(&path, |w| w.write_all(b"good")).unwrap();
        let e = write_atomic(&path, |w| {
            w.write_all(&[7u8; 5 << 20])?;
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        })
        .unwrap_err();
        assert!(e.action.starts_with("write temporary file .m.bin."), "{}", e.action);
        assert_eq!(e.source.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs::read(&path).unwrap(), b"good");
        assert_eq!(names(&dir), vec!["m.bin"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_folder_in_the_way_is_an_error() {
        let dir = temp_dir("folder");
        fs::create_dir(dir.join("m.bin")).unwrap();
        let e = write_atomic(dir.join("m.bin"), |w| w.write_all(b"x")).unwrap_err();
        assert_eq!(e.to_string(), format!("{}: save: the path is a folder", dir.join("m.bin").display()));
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn keeps_the_permission_bits_of_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("perm");
        let path = dir.join("m.bin");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, |w| w.write_all(b"newer")).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn writes_through_a_symbolic_link_and_keeps_the_link() {
        let dir = temp_dir("link");
        fs::create_dir(dir.join("real")).unwrap();
        let target = dir.join("real").join("model.bin");
        fs::write(&target, b"old").unwrap();
        let link = dir.join("latest.bin");
        std::os::unix::fs::symlink("real/model.bin", &link).unwrap();
        write_atomic(&link, |w| w.write_all(b"new")).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(names(&dir), vec!["latest.bin", "real"]);
        assert_eq!(names(&dir.join("real")), vec!["model.bin"]);
        // A dangling link names the file to create, as std::fs::write does.
        let dangling = dir.join("next.bin");
        std::os::unix::fs::symlink("real/created.bin", &dangling).unwrap();
        write_atomic(&dangling, |w| w.write_all(b"made")).unwrap();
        assert_eq!(fs::read(dir.join("real").join("created.bin")).unwrap(), b"made");
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn stale_temporaries_go_and_live_ones_stay() {
        let dir = temp_dir("stale");
        let path = dir.join("m.bin");
        // A killed writer's temporary: nobody holds its lock.
        let stale = dir.join(".m.bin.4242.0.kiln-tmp");
        fs::write(&stale, vec![1u8; 1000]).unwrap();
        // A live writer's temporary: locked by an open file.
        let live = dir.join(".m.bin.4243.0.kiln-tmp");
        let live_file = OpenOptions::new().write(true).create_new(true).open(&live).unwrap();
        lock::exclusive(&live_file).unwrap();
        // Another target's temporary and an unrelated file are never touched.
        let other = dir.join(".other.bin.4242.0.kiln-tmp");
        fs::write(&other, b"x").unwrap();
        let unrelated = dir.join(".m.bin.notes.kiln-tmp");
        fs::write(&unrelated, b"x").unwrap();
        write_atomic(&path, |w| w.write_all(b"saved")).unwrap();
        assert!(!stale.exists(), "the stale temporary was not removed");
        assert!(live.exists(), "a live writer's temporary was removed");
        assert!(other.exists() && unrelated.exists());
        drop(live_file);
        write_atomic(&path, |w| w.write_all(b"again")).unwrap();
        assert!(!live.exists(), "once its writer is gone, the temporary goes at the next save");
        let _ = fs::remove_dir_all(&dir);
    }
}
