//! The `.npz` side of kiln-pickle's zip reader ([`kiln_pickle::zip`]): its errors, which count
//! bytes from the start of the archive, named after the archive's path.

use std::path::Path;

use kiln_pickle::zip as kzip;
pub(crate) use kzip::ZipEntry;

use super::pickle::data_error;
use crate::error::Result;

/// Reads the central directory of the zip archive `data` (named `path` in errors).
pub(crate) fn read_directory(path: &Path, data: &[u8]) -> Result<Vec<ZipEntry>> {
    kzip::read_directory(data).map_err(|e| data_error(path, 0, e))
}

/// The decompressed bytes of `entry`, checked against its size and CRC-32.
pub(crate) fn extract(path: &Path, data: &[u8], entry: &ZipEntry) -> Result<Vec<u8>> {
    kzip::extract(data, entry).map_err(|e| data_error(path, 0, e))
}
