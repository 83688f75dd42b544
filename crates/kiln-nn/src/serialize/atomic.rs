//! Atomic file replacement: write a temporary file in the target's folder, fsync it, rename it
//! over the target, fsync the folder. A reader sees the old file or the new one, never a part.

use std::io::{self, Write};
use std::path::Path;

use crate::error::NnError;

/// Replaces `path` atomically with what `body` writes, through kiln's one atomic writer,
/// [`kiln_tensor::fs::write_atomic`]: a temporary file beside the target, fsynced, given the
/// target's permission bits and renamed over it (through a symbolic link, the file it points
/// to), the folder fsynced; on failure the temporary is removed and the target untouched;
/// temporaries of killed writers of the same target are removed by the next save.
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
    kiln_tensor::fs::write_atomic(path, body).map_err(|e| NnError::Io {
        path: e.path,
        action: e.action,
        kind: e.source.kind(),
        message: e.source.to_string(),
    })
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
