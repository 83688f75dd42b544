//! A minimal zip reader for `.npz` archives and PyTorch's zip checkpoints: the end-of-central-directory record (plain or zip64),
//! the central directory, stored (method 0) and deflated (method 8) members, zip64 sizes and
//! offsets, and the CRC-32 of each member.
//!
//! Everything is read from a byte slice and checked against its length before it is used, so a
//! forged size or offset is a typed error, never an out-of-bounds read or a large allocation:
//! a stored member is a slice of bytes that are there, and a deflated member's declared size must
//! be one its compressed bytes can expand to (deflate cannot expand more than about 1032:1), and
//! the output buffer grows only with the bytes the decoder really produces.
//!
//! Not supported (each a typed error): encryption, compression methods other than stored and
//! deflate, archives split over several disks.

use std::borrow::Cow;
use std::io::Read;

use crate::error::{PickleError, Result};

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
/// Upper bound of deflate's expansion (a 258-byte match costs at least 2 bits, plus block
/// overhead); a declared size above `compressed * MAX_DEFLATE_RATIO + 64` cannot be genuine.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// One member of the archive, from the central directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    /// The member's name (UTF-8; other bytes replaced).
    pub name: String,
    /// 0 stored, 8 deflate.
    pub method: u16,
    flags: u16,
    crc32: u32,
    compressed_size: u64,
    /// Its size after decompression.
    pub uncompressed_size: u64,
    /// Offset of the member's local header in the archive.
    local_offset: u64,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let b = data.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn truncated(expected: u64, found: usize) -> PickleError {
    PickleError::Truncated { expected, found: found as u64 }
}

/// Where the central directory is and how many entries it declares.
struct Directory {
    offset: u64,
    size: u64,
    entries: u64,
    /// The central directory must end before this offset (the zip64 or plain end record).
    limit: u64,
}

fn find_directory(data: &[u8]) -> Result<Directory> {
    if data.len() < EOCD_LEN {
        // Not even an end record: a zip archive (even an empty one) has at least 22 bytes.
        let found = data.get(..4).map_or(0, |b| {
            let mut a = [0u8; 4];
            a[..b.len()].copy_from_slice(b);
            u32::from_le_bytes(a)
        });
        if data.len() >= 4 && found != EOCD_SIG && found != LOCAL_SIG {
            return Err(PickleError::BadMagic { expected: LOCAL_SIG, found });
        }
        return Err(truncated(EOCD_LEN as u64, data.len()));
    }
    // The end record is the last 22 bytes plus a comment of up to 65535 bytes: search backwards
    // for its signature where the comment length it declares fits the archive.
    let lowest = data.len().saturating_sub(EOCD_LEN + u16::MAX as usize);
    let mut eocd = None;
    for at in (lowest..=data.len() - EOCD_LEN).rev() {
        if u32_at(data, at) == Some(EOCD_SIG) {
            let comment = u16_at(data, at + 20).unwrap_or(0) as usize;
            if at + EOCD_LEN + comment <= data.len() {
                eocd = Some(at);
                break;
            }
        }
    }
    let Some(at) = eocd else {
        return Err(PickleError::format(
            data.len() as u64,
            "a zip end-of-central-directory record (signature PK\\x05\\x06) in the last 64 KiB",
            "none: not a zip archive, or a truncated one",
        ));
    };
    let disk = u16_at(data, at + 4).unwrap_or(0);
    let cd_disk = u16_at(data, at + 6).unwrap_or(0);
    if disk != 0 || cd_disk != 0 {
        return Err(PickleError::format(
            at as u64 + 4,
            "a single-disk zip archive",
            format!("disk {disk}, central directory on disk {cd_disk}"),
        ));
    }
    let entries = u16_at(data, at + 10).unwrap_or(0);
    let size = u32_at(data, at + 12).unwrap_or(0);
    let offset = u32_at(data, at + 16).unwrap_or(0);
    let zip64 = entries == u16::MAX || size == u32::MAX || offset == u32::MAX;
    // A zip64 end record is announced by a 20-byte locator just before the plain one.
    let locator = at.checked_sub(20).filter(|&l| u32_at(data, l) == Some(EOCD64_LOCATOR_SIG));
    match locator {
        Some(l) => {
            let rec = u64_at(data, l + 8).unwrap_or(u64::MAX);
            let rec_at = usize::try_from(rec)
                .ok()
                .filter(|&r| r.checked_add(56).is_some_and(|end| end <= l))
                .ok_or_else(|| {
                    PickleError::format(
                        l as u64 + 8,
                        "the offset of the zip64 end record, before its locator",
                        rec.to_string(),
                    )
                })?;
            if u32_at(data, rec_at) != Some(EOCD64_SIG) {
                return Err(PickleError::format(
                    rec,
                    "a zip64 end-of-central-directory record (signature PK\\x06\\x06)",
                    format!("{:#010x}", u32_at(data, rec_at).unwrap_or(0)),
                ));
            }
            Ok(Directory {
                entries: u64_at(data, rec_at + 32).unwrap_or(0),
                size: u64_at(data, rec_at + 40).unwrap_or(0),
                offset: u64_at(data, rec_at + 48).unwrap_or(0),
                limit: rec,
            })
        }
        None if zip64 => Err(PickleError::format(
            at as u64,
            "a zip64 end-record locator before an end record with 0xFFFF/0xFFFFFFFF fields",
            "none",
        )),
        None => Ok(Directory { entries: entries as u64, size: size as u64, offset: offset as u64, limit: at as u64 }),
    }
}

/// Reads the central directory of the zip archive `data`.
///
/// # Errors
/// [`PickleError::Format`], [`PickleError::Truncated`] or [`PickleError::BadMagic`] (with the
/// byte offset) when there is no end record or the directory is inconsistent.
pub fn read_directory(data: &[u8]) -> Result<Vec<ZipEntry>> {
    let dir = find_directory(data)?;
    let end = dir.offset.saturating_add(dir.size);
    if end > dir.limit {
        return Err(PickleError::format(
            dir.offset,
            format!("a central directory that ends before its end record at offset {}", dir.limit),
            format!("{} bytes at offset {}", dir.size, dir.offset),
        ));
    }
    let (start, end) = (dir.offset as usize, end as usize);
    // Each entry takes at least 46 bytes, so the directory's size bounds the count.
    let mut entries = Vec::with_capacity(dir.entries.min((dir.size / CENTRAL_LEN as u64) + 1) as usize);
    let mut at = start;
    for k in 0..dir.entries {
        let bad = |offset: usize, expected: String, found: String| PickleError::format(offset as u64, expected, found);
        if at + CENTRAL_LEN > end {
            return Err(bad(
                at,
                format!("{} central-directory entries in {} bytes", dir.entries, dir.size),
                format!("room for {k}"),
            ));
        }
        let sig = u32_at(data, at).unwrap_or(0);
        if sig != CENTRAL_SIG {
            return Err(bad(at, "a central-directory entry (signature PK\\x01\\x02)".into(), format!("{sig:#010x}")));
        }
        let flags = u16_at(data, at + 8).unwrap_or(0);
        let method = u16_at(data, at + 10).unwrap_or(0);
        let crc32 = u32_at(data, at + 16).unwrap_or(0);
        let mut compressed_size = u32_at(data, at + 20).unwrap_or(0) as u64;
        let mut uncompressed_size = u32_at(data, at + 24).unwrap_or(0) as u64;
        let name_len = u16_at(data, at + 28).unwrap_or(0) as usize;
        let extra_len = u16_at(data, at + 30).unwrap_or(0) as usize;
        let comment_len = u16_at(data, at + 32).unwrap_or(0) as usize;
        let disk = u16_at(data, at + 34).unwrap_or(0);
        let mut local_offset = u32_at(data, at + 42).unwrap_or(0) as u64;
        let name_at = at + CENTRAL_LEN;
        let extra_at = name_at + name_len;
        let next = extra_at + extra_len + comment_len;
        if next > end {
            return Err(bad(
                at,
                "a central-directory entry inside the directory".into(),
                format!("{} bytes past its end", next - end),
            ));
        }
        let name = String::from_utf8_lossy(&data[name_at..extra_at]).into_owned();
        // Zip64 extra field (id 1): the 64-bit values of the fields that are 0xFFFFFFFF, in order.
        let need =
            [uncompressed_size == u32::MAX as u64, compressed_size == u32::MAX as u64, local_offset == u32::MAX as u64];
        if need.iter().any(|&n| n) {
            let extra = &data[extra_at..extra_at + extra_len];
            let mut field = None;
            let mut p = 0;
            while p + 4 <= extra.len() {
                let id = u16_at(extra, p).unwrap_or(0);
                let len = u16_at(extra, p + 2).unwrap_or(0) as usize;
                let body = extra.get(p + 4..p + 4 + len);
                if id == 1 {
                    field = body;
                    break;
                }
                p += 4 + len;
            }
            let mut values = field.unwrap_or(&[]).chunks_exact(8).map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_le_bytes(a)
            });
            for (slot, needed) in
                [&mut uncompressed_size, &mut compressed_size, &mut local_offset].into_iter().zip(need)
            {
                if needed {
                    *slot = values.next().ok_or_else(|| {
                        bad(
                            extra_at,
                            format!("a zip64 extra field with the 64-bit sizes of {name:?}"),
                            "none, or too short".into(),
                        )
                    })?;
                }
            }
        }
        if disk != 0 && disk != u16::MAX {
            return Err(bad(at + 34, "a member on disk 0".into(), format!("{name:?} on disk {disk}")));
        }
        entries.push(ZipEntry { name, method, flags, crc32, compressed_size, uncompressed_size, local_offset });
        at = next;
    }
    Ok(entries)
}

/// The decompressed bytes of `entry`, checked against its size and CRC-32.
///
/// # Errors
/// [`PickleError::Format`] or [`PickleError::Truncated`] for a bad local header, an
/// unsupported compression method or encryption, a bad deflate stream, a size or CRC-32 that
/// does not match the central directory, or a member that runs past the end.
pub fn extract(data: &[u8], entry: &ZipEntry) -> Result<Vec<u8>> {
    member(data, entry).map(Cow::into_owned)
}

/// The bytes of `entry`, checked like [`extract`]: borrowed from `data` for a stored member
/// (no copy, so a memory-mapped archive stays mapped), decompressed for a deflated one.
///
/// # Errors
/// Those of [`extract`].
pub fn member<'a>(data: &'a [u8], entry: &ZipEntry) -> Result<Cow<'a, [u8]>> {
    let name = &entry.name;
    let at = usize::try_from(entry.local_offset).unwrap_or(usize::MAX);
    let header_end = (entry.local_offset).saturating_add(LOCAL_LEN as u64);
    if header_end > data.len() as u64 {
        return Err(truncated(header_end, data.len()));
    }
    let sig = u32_at(data, at).unwrap_or(0);
    if sig != LOCAL_SIG {
        return Err(PickleError::format(
            entry.local_offset,
            format!("the local header of {name:?} (signature PK\\x03\\x04)"),
            format!("{sig:#010x}"),
        ));
    }
    let name_len = u16_at(data, at + 26).unwrap_or(0) as u64;
    let extra_len = u16_at(data, at + 28).unwrap_or(0) as u64;
    let start = header_end + name_len + extra_len;
    let end = start.saturating_add(entry.compressed_size);
    if end > data.len() as u64 {
        return Err(truncated(end, data.len()));
    }
    let raw = &data[start as usize..end as usize];
    if entry.flags & 1 != 0 {
        return Err(PickleError::format(
            entry.local_offset + 6,
            format!("an unencrypted member {name:?}"),
            "an encrypted one",
        ));
    }
    let size = entry.uncompressed_size;
    let out = match entry.method {
        0 => {
            if size != entry.compressed_size {
                return Err(PickleError::format(
                    entry.local_offset,
                    format!("a stored member {name:?} whose sizes agree"),
                    format!("compressed {} bytes, uncompressed {size}", entry.compressed_size),
                ));
            }
            Cow::Borrowed(raw)
        }
        8 => {
            let most = entry.compressed_size.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(64);
            if size > most {
                return Err(PickleError::format(
                    entry.local_offset,
                    format!(
                        "an uncompressed size that {} deflated bytes can hold (at most {most})",
                        entry.compressed_size
                    ),
                    format!("{size} bytes for {name:?}"),
                ));
            }
            // Start small and grow with the bytes the decoder really produces.
            let mut out = Vec::with_capacity(size.min(raw.len() as u64 * 4 + 64) as usize);
            flate2::read::DeflateDecoder::new(raw).take(size + 1).read_to_end(&mut out).map_err(|e| {
                PickleError::format(start, format!("a valid deflate stream for {name:?}"), e.to_string())
            })?;
            if out.len() as u64 != size {
                return Err(PickleError::format(
                    start,
                    format!("{size} bytes of {name:?} (its central-directory size)"),
                    format!(
                        "{}{} bytes after decompression",
                        out.len(),
                        if out.len() as u64 > size { "+" } else { "" }
                    ),
                ));
            }
            Cow::Owned(out)
        }
        m => {
            return Err(PickleError::format(
                entry.local_offset + 8,
                format!("compression method 0 (stored) or 8 (deflate) for {name:?}"),
                format!("method {m}"),
            ))
        }
    };
    let crc = crc32fast::hash(&out);
    if crc != entry.crc32 {
        return Err(PickleError::format(
            start,
            format!("{name:?} with CRC-32 {:#010x}", entry.crc32),
            format!("CRC-32 {crc:#010x}"),
        ));
    }
    Ok(out)
}
