//! Atomic file replacement: write a temporary file in the target's folder, fsync it, rename it
//! over the target, fsync the folder. A reader sees the old file or the new one, never a part.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::io_error;
use crate::error::NnError;

/// Distinguishes the temporary files of concurrent saves within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` atomically with what `body` writes.
///
/// `body` writes into a temporary file `.NAME.PID.N.tmp` beside `path` (same folder, so the
/// rename cannot cross file systems); the file is flushed and fsynced, renamed over `path`,
/// and the folder is fsynced so that the rename itself survives a crash (best effort: some
/// file systems cannot sync a folder). If anything fails before the rename, the temporary
/// file is removed and `path` is untouched: the previous file, if any, stays as it was.
///
/// Model files and training checkpoints both save through this.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("kiln-doc-atomic-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("notes.txt");
/// kiln_nn::serialize::write_atomic(&path, |w| w.write_all(b"first")).unwrap();
/// let failed = kiln_nn::serialize::write_atomic(&path, |w| {
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
/// [`NnError::Io`] naming `path` and the step that failed (creating, writing, syncing or
/// renaming the temporary file), with the error `body` returned when it was `body` that failed.
pub fn write_atomic(
    path: impl AsRef<Path>,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), NnError> {
    let path = path.as_ref();
    let name = path.file_name().ok_or_else(|| NnError::Io {
        path: path.to_path_buf(),
        action: "save".into(),
        kind: io::ErrorKind::InvalidInput,
        message: "the path does not name a file".into(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id()));
    let tmp_name = tmp.file_name().unwrap_or_default().to_string_lossy().into_owned();

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_error(path, &format!("create temporary file {tmp_name}"), &e))?;
    let written = (|| -> Result<(), (&'static str, io::Error)> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        body(&mut w).map_err(|e| ("write", e))?;
        let file = w.into_inner().map_err(|e| ("write", e.into_error()))?;
        file.sync_all().map_err(|e| ("fsync", e))?;
        Ok(())
    })();
    if let Err((step, e)) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(path, &format!("{step} temporary file {tmp_name}"), &e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(path, &format!("rename temporary file {tmp_name} over the target"), &e));
    }
    // Best effort: the rename is done; syncing the folder makes it durable where supported.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A writer that fails once `limit` bytes have gone through: the test double for a disk that
/// fills up (or a process that dies) in the middle of a save.
#[cfg(test)]
pub(crate) struct FailAfter<W> {
    pub(crate) inner: W,
    pub(crate) limit: usize,
}

#[cfg(test)]
impl<W: Write> Write for FailAfter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.limit == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected failure: no space left"));
        }
        let n = buf.len().min(self.limit);
        let n = self.inner.write(&buf[..n])?;
        self.limit -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
