//! File reading shared by the loaders: plain or gzip files, reads bounded by what the file can
//! hold, and errors that name the file and the offset.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};

/// Deflate cannot expand data by more than about 1032:1, so a `.gz` file of `n` bytes holds at most
/// this many bytes of payload; headers that claim more are rejected before anything is allocated.
const MAX_GZIP_RATIO: u64 = 1032;

/// An opened data file, decompressing when it is gzip.
pub(crate) struct Source<'a> {
    pub path: PathBuf,
    pub reader: Box<dyn Read + Send + 'a>,
    /// Upper bound of the (decompressed) payload.
    pub max_len: u64,
    /// Bytes consumed from `reader` so far.
    pub pos: u64,
    /// Size of the file on disk (compressed for gzip).
    pub file_len: u64,
}

pub(crate) fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

impl<'a> Source<'a> {
    /// Opens `path`; gzip when the name ends in `.gz`.
    pub fn open(path: &Path) -> Result<Source<'static>> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let meta = file.metadata().map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            return Err(DataError::NotAFile { path: path.to_path_buf(), what: "a data file".into() });
        }
        let len = meta.len();
        let (reader, max_len): (Box<dyn Read + Send>, u64) = if is_gz(path) {
            (Box::new(MultiGzDecoder::new(BufReader::new(file))), len.saturating_mul(MAX_GZIP_RATIO))
        } else {
            (Box::new(BufReader::new(file)), len)
        };
        Ok(Source { path: path.to_path_buf(), reader, max_len, pos: 0, file_len: len })
    }

    /// Reads `bytes` as if they were the file `path` (gzip when the name ends in `.gz`): the
    /// parsers' entry point for in-memory data and fuzzing.
    pub fn from_bytes(path: &Path, bytes: &'a [u8]) -> Source<'a> {
        let len = bytes.len() as u64;
        let (reader, max_len): (Box<dyn Read + Send + 'a>, u64) = if is_gz(path) {
            (Box::new(MultiGzDecoder::new(bytes)), len.saturating_mul(MAX_GZIP_RATIO))
        } else {
            (Box::new(bytes), len)
        };
        Source { path: path.to_path_buf(), reader, max_len, pos: 0, file_len: len }
    }

    fn map_read_error(&self, e: std::io::Error, found_end: u64) -> DataError {
        match e.kind() {
            // Only a decompressor fails this way (a plain file just ends): the stream is cut
            // short or damaged, which says nothing of how long the data should have been.
            ErrorKind::UnexpectedEof => DataError::Corrupt {
                path: self.path.clone(),
                offset: found_end,
                reason: "the stream ends before its end marker (the file is truncated)".into(),
            },
            ErrorKind::InvalidInput | ErrorKind::InvalidData => {
                DataError::Corrupt { path: self.path.clone(), offset: found_end, reason: e.to_string() }
            }
            _ => DataError::io(&self.path, e),
        }
    }

    /// Reads exactly `n` bytes (a header), or fails with [`DataError::Truncated`].
    pub fn read_header(&mut self, n: usize) -> Result<Vec<u8>> {
        self.read_payload(n as u64)
    }

    /// Reads exactly `n` bytes after checking that the file can hold them, without allocating more
    /// than the data actually delivered (so a forged count cannot make us allocate).
    pub fn read_payload(&mut self, n: u64) -> Result<Vec<u8>> {
        let end = self.pos.saturating_add(n);
        if end > self.max_len {
            return Err(DataError::Truncated { path: self.path.clone(), expected: end, found: self.max_len });
        }
        // Plain files: n is bounded by the file size (checked above). Gzip: start from a few times
        // the compressed size and let the buffer grow with the bytes that really arrive.
        let mut buf = Vec::with_capacity(n.min(self.file_len.saturating_mul(4)).min(1 << 30) as usize);
        let result = (&mut self.reader).take(n).read_to_end(&mut buf);
        let found = self.pos + buf.len() as u64;
        if let Err(e) = result {
            return Err(self.map_read_error(e, found));
        }
        if (buf.len() as u64) < n {
            return Err(DataError::Truncated { path: self.path.clone(), expected: end, found });
        }
        self.pos = end;
        Ok(buf)
    }

    /// Reads everything that is left (for text files; memory grows with the real data only).
    pub fn read_rest(&mut self) -> Result<Vec<u8>> {
        self.read_rest_bounded(self.max_len, "data")
    }

    /// Reads everything that is left, refusing to decompress more than `max` bytes in all (so
    /// that a small gzip of zeros cannot fill memory with data the caller cannot use).
    pub fn read_rest_bounded(&mut self, max: u64, what: &str) -> Result<Vec<u8>> {
        let limit = max.saturating_sub(self.pos);
        let mut buf = Vec::new();
        let result = (&mut self.reader).take(limit.saturating_add(1)).read_to_end(&mut buf);
        let found = self.pos + buf.len() as u64;
        if let Err(e) = result {
            return Err(self.map_read_error(e, found));
        }
        if buf.len() as u64 > limit {
            return Err(DataError::format(
                &self.path,
                max,
                format!("at most {max} bytes of {what}"),
                "more (the file decompresses past that)",
            ));
        }
        self.pos = found;
        Ok(buf)
    }

    /// Checks that the file ends here (which also verifies a gzip stream's CRC and length).
    pub fn expect_end(&mut self) -> Result<()> {
        let mut probe = [0u8; 1];
        loop {
            return match self.reader.read(&mut probe) {
                Ok(0) => Ok(()),
                Ok(_) => {
                    // More data where the format ends. For a gzip file, first find out whether the
                    // stream is intact: a corrupted byte often shows as extra output before the
                    // checksum at the stream's end fails.
                    if self.max_len != self.file_len {
                        let mut rest = (&mut self.reader).take(self.max_len.saturating_sub(self.pos));
                        if let Err(e) = std::io::copy(&mut rest, &mut std::io::sink()) {
                            return Err(self.map_read_error(e, self.pos));
                        }
                    }
                    Err(DataError::format(&self.path, self.pos, "the end of the data", "more data after it"))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => Err(self.map_read_error(e, self.pos)),
            };
        }
    }
}

/// Reads a whole (possibly gzip) file.
pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>> {
    Source::open(path)?.read_rest()
}

/// Reads a whole (possibly gzip) UTF-8 text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = read_all(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to() as u64;
        DataError::format(path, offset, "UTF-8 text", "an invalid byte sequence")
    })
}

/// The first of `names` (each tried as given and with `.gz` appended) that exists in `dir`.
pub(crate) fn find_file(dir: &Path, names: &[&str], what: &str) -> Result<PathBuf> {
    for name in names {
        for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
            if candidate.is_dir() {
                return Err(DataError::NotAFile { path: candidate, what: what.to_string() });
            }
        }
    }
    Err(DataError::NotFound { path: dir.join(names[0]), what: format!("{what} (also tried .gz and {names:?})") })
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::io::Write;
    use std::path::PathBuf;

    /// A fresh empty folder under the target directory, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "kiln-data-test-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// The shared data folder for real-data tests, or `None` (with the reason printed).
    pub fn real_data(sub: &str) -> Option<PathBuf> {
        let root = std::env::var_os("KILN_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")));
        let dir = root.join(sub);
        if dir.is_dir() {
            Some(dir)
        } else {
            eprintln!("skipped: no real data at {} (set KILN_DATA_DIR)", dir.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::gzip;
    use super::*;

    #[test]
    fn bounded_reads_stop_at_the_bound() {
        let gz = gzip(&[0u8; 10_000]);
        let path = Path::new("zeros.bin.gz");
        let err = Source::from_bytes(path, &gz).read_rest_bounded(5_000, "test data").unwrap_err();
        assert_eq!(
            err.to_string(),
            "zeros.bin.gz: at byte offset 5000: expected at most 5000 bytes of test data, found more (the file decompresses past that)"
        );
        assert_eq!(Source::from_bytes(path, &gz).read_rest_bounded(10_000, "test data").unwrap().len(), 10_000);
    }
}
