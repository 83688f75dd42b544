//! Writing zip archives as PyTorch's `torch.save` does: every member stored (not
//! compressed), its data starting at a multiple of an alignment (64 bytes in PyTorch, so that
//! `torch.load(mmap=True)` can map storages in place), reached by padding the local header's
//! extra field with PyTorch's own `FB` record (`"FB"`, the padding length as `u16`, then that
//! many `Z` bytes).
//!
//! Archives up to 4 GiB (no zip64); a larger one is an [`std::io::ErrorKind::InvalidInput`]
//! error before anything past the limit is written.

use std::io::{self, Write};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const LOCAL_LEN: u64 = 30;
/// Version 2.0 (stored members, no zip64).
const VERSION: u16 = 20;
/// MS-DOS date of 1980-01-01 (the earliest there is): archives are reproducible.
const DOS_DATE: u16 = (1 << 5) | 1;

/// One member already written: what its central directory record needs.
struct Written {
    name: String,
    crc32: u32,
    size: u32,
    offset: u32,
}

/// A zip archive being written to `W`: [`add`](ZipWriter::add) each member, then
/// [`finish`](ZipWriter::finish).
///
/// ```
/// use kiln_pickle::zip::{member, read_directory};
/// use kiln_pickle::zip_writer::ZipWriter;
/// let mut bytes = Vec::new();
/// let mut zip = ZipWriter::new(&mut bytes, 64);
/// zip.add("archive/version", b"3\n").unwrap();
/// zip.add("archive/data/0", &[1, 2, 3, 4]).unwrap();
/// zip.finish().unwrap();
///
/// let entries = read_directory(&bytes).unwrap();
/// assert_eq!(entries[1].name, "archive/data/0");
/// assert_eq!(&*member(&bytes, &entries[1]).unwrap(), &[1, 2, 3, 4]);
/// // The data of every member starts at a multiple of 64.
/// let at = bytes.windows(4).position(|w| w == [1, 2, 3, 4]).unwrap();
/// assert_eq!(at % 64, 0);
/// ```
pub struct ZipWriter<W: Write> {
    out: W,
    offset: u64,
    alignment: u64,
    written: Vec<Written>,
}

fn too_large(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("zip archive: {what} beyond 4 GiB needs zip64, which kiln does not write"),
    )
}

impl<W: Write> ZipWriter<W> {
    /// An archive written to `out`, member data aligned to `alignment` bytes (1: none;
    /// PyTorch uses 64).
    ///
    /// # Panics
    /// When `alignment` is 0 or above 65535 (the padding must fit the `u16` of the extra
    /// field): a programming error.
    pub fn new(out: W, alignment: u64) -> Self {
        assert!((1..=0xffff).contains(&alignment), "ZipWriter: alignment must be in 1..=65535, got {alignment}");
        ZipWriter { out, offset: 0, alignment, written: Vec::new() }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes one stored member named `name` holding `data`.
    ///
    /// # Errors
    /// The writer's I/O error; [`io::ErrorKind::InvalidInput`] when the archive would exceed
    /// 4 GiB or `name` 65535 bytes.
    pub fn add(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let name_len = u16::try_from(name.len()).map_err(|_| too_large("a member name"))?;
        let offset = u32::try_from(self.offset).map_err(|_| too_large("a member offset"))?;
        let size = u32::try_from(data.len()).ok().filter(|&s| s != u32::MAX).ok_or_else(|| too_large("a member"))?;
        // PyTorch's padding: data starts after the local header, the name and a 4-byte "FB"
        // field header, plus enough `Z`s to reach the alignment.
        let start = self.offset + LOCAL_LEN + u64::from(name_len) + 4;
        let pad = (self.alignment - start % self.alignment) % self.alignment;
        let extra_len = if self.alignment > 1 { pad + 4 } else { 0 };
        if self.offset + LOCAL_LEN + u64::from(name_len) + extra_len + u64::from(size) >= u64::from(u32::MAX) {
            return Err(too_large("the archive"));
        }
        let crc32 = crc32fast::hash(data);
        let mut header = Vec::with_capacity(LOCAL_LEN as usize + name.len() + extra_len as usize);
        header.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        for v in [VERSION, 0, 0, 0, DOS_DATE] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc32, size, size] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.extend_from_slice(&name_len.to_le_bytes());
        header.extend_from_slice(&(extra_len as u16).to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        if extra_len > 0 {
            header.extend_from_slice(b"FB");
            header.extend_from_slice(&(pad as u16).to_le_bytes());
            header.resize(header.len() + pad as usize, b'Z');
        }
        self.put(&header)?;
        debug_assert_eq!(self.offset % self.alignment, 0);
        self.put(data)?;
        self.written.push(Written { name: name.to_string(), crc32, size, offset });
        Ok(())
    }

    /// Writes the central directory and the end record, and returns the writer.
    ///
    /// # Errors
    /// The writer's I/O error; [`io::ErrorKind::InvalidInput`] beyond 4 GiB or 65535 members.
    pub fn finish(mut self) -> io::Result<W> {
        let cd_offset = u32::try_from(self.offset).map_err(|_| too_large("the central directory"))?;
        let count = u16::try_from(self.written.len()).map_err(|_| too_large("more than 65535 members"))?;
        let mut cd = Vec::new();
        for w in &self.written {
            cd.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            for v in [VERSION, VERSION, 0, 0, 0, DOS_DATE] {
                cd.extend_from_slice(&v.to_le_bytes());
            }
            for v in [w.crc32, w.size, w.size] {
                cd.extend_from_slice(&v.to_le_bytes());
            }
            // name length, extra length, comment length, disk, internal attributes
            for v in [w.name.len() as u16, 0, 0, 0, 0] {
                cd.extend_from_slice(&v.to_le_bytes());
            }
            cd.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            cd.extend_from_slice(&w.offset.to_le_bytes());
            cd.extend_from_slice(w.name.as_bytes());
        }
        let cd_size = u32::try_from(cd.len()).map_err(|_| too_large("the central directory"))?;
        if u64::from(cd_offset) + u64::from(cd_size) + 22 >= u64::from(u32::MAX) {
            return Err(too_large("the archive"));
        }
        cd.extend_from_slice(&EOCD_SIG.to_le_bytes());
        for v in [0u16, 0, count, count] {
            cd.extend_from_slice(&v.to_le_bytes());
        }
        cd.extend_from_slice(&cd_size.to_le_bytes());
        cd.extend_from_slice(&cd_offset.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        self.put(&cd)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zip::{member, read_directory};

    #[test]
    fn members_read_back_aligned_with_any_name_length() {
        let mut bytes = Vec::new();
        let mut zip = ZipWriter::new(&mut bytes, 64);
        let members: Vec<(String, Vec<u8>)> =
            (0..20).map(|i| ("n".repeat(i * 7 + 1), (0..i * 13).map(|b| b as u8).collect())).collect();
        for (name, data) in &members {
            zip.add(name, data).unwrap();
        }
        zip.finish().unwrap();
        let entries = read_directory(&bytes).unwrap();
        assert_eq!(entries.len(), members.len());
        for (e, (name, data)) in entries.iter().zip(&members) {
            assert_eq!(&e.name, name);
            assert_eq!(e.method, 0);
            assert_eq!(&*member(&bytes, e).unwrap(), &data[..]);
        }
        // Every local header's data offset is a multiple of 64.
        let mut at = 0;
        while at + 4 <= bytes.len() && bytes[at..at + 4] == LOCAL_SIG.to_le_bytes() {
            let n = u16::from_le_bytes([bytes[at + 26], bytes[at + 27]]) as usize;
            let x = u16::from_le_bytes([bytes[at + 28], bytes[at + 29]]) as usize;
            let size = u32::from_le_bytes(bytes[at + 18..at + 22].try_into().unwrap()) as usize;
            let data = at + 30 + n + x;
            assert_eq!(data % 64, 0, "member at {at}");
            assert_eq!(&bytes[at + 30 + n..at + 32 + n], b"FB");
            at = data + size;
        }
        assert_eq!(bytes[at..at + 4], CENTRAL_SIG.to_le_bytes());
    }

    #[test]
    fn no_alignment_means_no_extra_field() {
        let mut bytes = Vec::new();
        let mut zip = ZipWriter::new(&mut bytes, 1);
        zip.add("a", b"xyz").unwrap();
        zip.finish().unwrap();
        assert_eq!(&bytes[30..34], b"axyz");
        assert_eq!(&*member(&bytes, &read_directory(&bytes).unwrap()[0]).unwrap(), b"xyz");
    }

    #[test]
    fn empty_archive_is_valid() {
        let bytes = ZipWriter::new(Vec::new(), 64).finish().unwrap();
        assert_eq!(bytes.len(), 22);
        assert!(read_directory(&bytes).unwrap().is_empty());
    }
}
