//! NumPy's `.npy` arrays and `.npz` archives, read without Python.
//!
//! - [`read_npy`] parses one `.npy` file (format versions 1.0, 2.0 and 3.0): the header dict
//!   (`descr`, `fortran_order`, `shape`; Python 2's `25000L` integers too) and the data for the
//!   dtypes `b1`, `i1`, `i2`, `i4`, `i8`, `u1`, `u2`, `u4`, `u8`, `f4`, `f8` in either byte order,
//!   and for object arrays (`|O`) whose items are lists of integers (what Keras' `imdb.npz` and
//!   `reuters.npz` hold) through a small non-executing pickle reader: see [`NpyData::Sequences`]
//!   for exactly what is accepted.
//! - [`Npz`] reads a `.npz` (a zip archive of `.npy` members, stored or deflated, zip64 or not, as
//!   `np.savez` and `np.savez_compressed` write it), with a hand-written zip reader that checks
//!   every size, offset and CRC-32.
//!
//! Every failure is a typed [`DataError`] naming the file, and for a member the archive and the
//! member as `archive.npz[member.npy]`: [`DataError::MissingMember`] for a member that is not
//! there, [`DataError::Format`] for a bad magic string, header, dtype or pickle (with the byte
//! offset in the member), [`DataError::Truncated`] when the data is shorter than the header's shape.
//! A forged header never makes the reader allocate more than the bytes present could hold.
//!
//! ```
//! use kiln_data::npy::{read_npy, NpyData};
//! let mut file = b"\x93NUMPY\x01\x00".to_vec();
//! let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
//! file.extend((header.len() as u16 + 1).to_le_bytes());
//! file.extend(header.bytes());
//! file.push(b'\n');
//! for v in [7i32, -1, 300] {
//!     file.extend(v.to_le_bytes());
//! }
//! let a = read_npy("a.npy".as_ref(), &file)?;
//! assert_eq!((a.shape.as_slice(), &a.data), (&[3][..], &NpyData::Int(vec![7, -1, 300])));
//! assert!(read_npy("a.npy".as_ref(), &file[..file.len() - 1]).is_err());
//! # Ok::<(), kiln_data::DataError>(())
//! ```

mod pickle;
mod zip;

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The elements of an array, widened to 64 bits, in the order they are stored (row-major unless
/// [`NpyArray::fortran_order`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NpyData {
    /// `b1`.
    Bool(Vec<bool>),
    /// `i1`, `i2`, `i4`, `i8`.
    Int(Vec<i64>),
    /// `u1`, `u2`, `u4`, `u8`.
    UInt(Vec<u64>),
    /// `f4`, `f8`.
    Float(Vec<f64>),
    /// An object array (`|O`) whose items are Python lists (or tuples) of integers that fit in
    /// 64 bits, e.g. Keras' `x_train` of word-id lists. Read from the pickle that `numpy.save`
    /// writes (`_reconstruct(ndarray, ...)` with a `(version, shape, dtype('O8'), is_fortran,
    /// [items])` state, pickle protocols 2 to 5, from Python 2 or 3 and numpy 1 or 2), or from a
    /// pickled plain `list` of such lists. Nothing in the pickle is executed; other object items
    /// (strings, floats, nested arrays, custom classes) are a [`DataError::Format`].
    Sequences(Vec<Vec<i64>>),
}

impl NpyData {
    /// Number of elements (items for [`NpyData::Sequences`]).
    pub fn len(&self) -> usize {
        match self {
            NpyData::Bool(v) => v.len(),
            NpyData::Int(v) => v.len(),
            NpyData::UInt(v) => v.len(),
            NpyData::Float(v) => v.len(),
            NpyData::Sequences(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The dtype string from the header, e.g. `"<i8"` or `"|O"`.
    pub descr: String,
    /// The shape from the header.
    pub shape: Vec<usize>,
    /// Whether the data is stored column-major.
    pub fortran_order: bool,
    /// Byte offset of the data (after the header) in the file.
    pub data_offset: u64,
    /// The elements.
    pub data: NpyData,
}

impl NpyArray {
    /// The elements as `i64` when the dtype is boolean or integer (and every `u64` fits);
    /// `None` for floats, object arrays and `u64` values above `i64::MAX`.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            NpyData::Bool(v) => Some(v.iter().map(|&b| b as i64).collect()),
            NpyData::Int(v) => Some(v.clone()),
            NpyData::UInt(v) => v.iter().map(|&u| i64::try_from(u).ok()).collect(),
            NpyData::Float(_) | NpyData::Sequences(_) => None,
        }
    }
}

/// The path used in errors for `member` of the archive `archive`: `archive[member]`.
pub fn member_path(archive: &Path, member: &str) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(format!("[{member}]"));
    PathBuf::from(s)
}

/// NumPy's limit on the number of dimensions.
const MAX_DIMS: usize = 64;
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A Python literal in the header.
#[derive(Clone, Debug, PartialEq)]
enum Lit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

/// A recursive-descent parser of the Python literals that `.npy` headers use.
struct LitParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > 16 {
            return Err("nesting deeper than 16".into());
        }
        self.ws();
        let Some(&c) = self.s.get(self.pos) else {
            return Err("the end of the header".into());
        };
        match c {
            b'{' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Ok(Lit::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    if !self.eat(b':') {
                        return Err(format!("no ':' at {}", self.pos));
                    }
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    if !self.eat(b',') {
                        if self.eat(b'}') {
                            return Ok(Lit::Dict(items));
                        }
                        return Err(format!("no ',' or '}}' at {}", self.pos));
                    }
                }
            }
            b'(' | b'[' => {
                let close = if c == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Ok(Lit::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        if self.eat(close) {
                            return Ok(Lit::Seq(items));
                        }
                        return Err(format!("no ',' or '{}' at {}", close as char, self.pos));
                    }
                }
            }
            b'\'' | b'"' => {
                self.pos += 1;
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos] != c {
                    if self.s[self.pos] == b'\\' {
                        return Err("an escape in a string".into());
                    }
                    self.pos += 1;
                }
                if self.pos == self.s.len() {
                    return Err("an unterminated string".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                self.pos += 1;
                Ok(Lit::Str(text))
            }
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                self.pos += 1;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                let n = text.parse::<i128>().map_err(|_| format!("the number {text:?}"))?;
                // Python 2 wrote long integers with an L suffix.
                if matches!(self.s.get(self.pos), Some(b'L' | b'l')) {
                    self.pos += 1;
                }
                Ok(Lit::Int(n))
            }
            _ => {
                for (word, lit) in [(&b"True"[..], Lit::Bool(true)), (b"False", Lit::Bool(false)), (b"None", Lit::None)]
                {
                    if self.s[self.pos..].starts_with(word) {
                        self.pos += word.len();
                        return Ok(lit);
                    }
                }
                Err(format!("{:?} at {}", c as char, self.pos))
            }
        }
    }
}

/// A dtype this reader handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    UInt,
    Float,
    Object,
}

fn parse_descr(descr: &str) -> Option<(Kind, usize, bool)> {
    // On bytes: the header is decoded lossily, so the text may hold multi-byte characters.
    let b = descr.as_bytes();
    let (big, rest) = match b.first()? {
        b'<' | b'|' => (false, &b[1..]),
        b'>' => (true, &b[1..]),
        b'=' => (cfg!(target_endian = "big"), &b[1..]),
        _ => (false, b),
    };
    let (&kind, size) = rest.split_first()?;
    if !size.iter().all(u8::is_ascii_digit) || size.len() > 2 {
        return None;
    }
    let size = size.iter().fold(0usize, |n, &d| n * 10 + (d - b'0') as usize);
    let kind = match (kind, size) {
        (b'b' | b'?', 1) => Kind::Bool,
        (b'i', 1 | 2 | 4 | 8) => Kind::Int,
        (b'u', 1 | 2 | 4 | 8) => Kind::UInt,
        (b'f', 4 | 8) => Kind::Float,
        (b'O', 0 | 4 | 8) => Kind::Object,
        _ => return None,
    };
    Some((kind, size, big))
}

fn describe_bytes(b: &[u8]) -> String {
    b.iter().map(|&c| if c.is_ascii_graphic() { (c as char).to_string() } else { format!("\\x{c:02x}") }).collect()
}

/// Parses a `.npy` file held in `bytes`; `path` names it in errors.
///
/// # Errors
///
/// [`DataError::Format`] for a wrong magic string (offset 0), an unknown format version, a header
/// that is not the dict `{'descr': ..., 'fortran_order': ..., 'shape': ...}`, an unsupported
/// dtype (named in the error), a bad pickle in an object array, or bytes after the data;
/// [`DataError::Truncated`] when the file is shorter than its header or than the data its shape
/// and dtype need (checked before anything is allocated).
pub fn read_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let trunc = |expected: u64| DataError::Truncated { path: path.to_path_buf(), expected, found: bytes.len() as u64 };
    let head = &bytes[..bytes.len().min(6)];
    if head != &MAGIC[..head.len()] {
        return Err(DataError::format(path, 0, "the .npy magic string \\x93NUMPY", describe_bytes(head)));
    }
    if bytes.len() < 10 {
        return Err(trunc(10));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => return Err(DataError::format(path, 6, "format version 1.0, 2.0 or 3.0", format!("{major}.{minor}"))),
    };
    let start = 8 + len_bytes;
    if bytes.len() < start {
        return Err(trunc(start as u64));
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as u64
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as u64
    };
    let data_offset = start as u64 + header_len;
    if data_offset > bytes.len() as u64 {
        return Err(trunc(data_offset));
    }
    let header = &bytes[start..data_offset as usize];
    let bad_header = |found: String| {
        DataError::format(path, start as u64, "a header dict {'descr': ..., 'fortran_order': ..., 'shape': ...}", found)
    };
    if utf8 && std::str::from_utf8(header).is_err() {
        return Err(bad_header("invalid UTF-8 in a version 3 header".into()));
    }
    let mut parser = LitParser { s: header, pos: 0 };
    let dict = parser.value(0).map_err(bad_header)?;
    parser.ws();
    if parser.pos != header.len() {
        return Err(bad_header(format!("text after the dict at header byte {}", parser.pos)));
    }
    let Lit::Dict(items) = dict else {
        return Err(bad_header(format!("{dict:?}")));
    };
    let get = |key: &str| items.iter().find(|(k, _)| matches!(k, Lit::Str(s) if s == key)).map(|(_, v)| v);
    let keys: Vec<&Lit> = items.iter().map(|(k, _)| k).collect();
    let (Some(descr), Some(fortran), Some(shape)) = (get("descr"), get("fortran_order"), get("shape")) else {
        return Err(bad_header(format!("the keys {keys:?}")));
    };
    if items.len() != 3 {
        return Err(bad_header(format!("the keys {keys:?}")));
    }
    let descr = match descr {
        Lit::Str(s) => s.clone(),
        other => {
            return Err(DataError::format(
                path,
                start as u64,
                "a simple dtype string (structured dtypes are not supported)",
                format!("{other:?}"),
            ))
        }
    };
    let Some((kind, size, big)) = parse_descr(&descr) else {
        return Err(DataError::format(
            path,
            start as u64,
            "a supported dtype: b1, i1, i2, i4, i8, u1, u2, u4, u8, f4, f8 (either byte order) or |O",
            format!("{descr:?}"),
        ));
    };
    let fortran_order = match fortran {
        Lit::Bool(b) => *b,
        other => return Err(bad_header(format!("fortran_order {other:?}"))),
    };
    let shape: Vec<usize> = match shape {
        Lit::Seq(dims) if dims.len() <= MAX_DIMS => dims
            .iter()
            .map(|d| match d {
                Lit::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad_header(format!("the shape {dims:?}")))?,
        other => return Err(bad_header(format!("the shape {other:?}"))),
    };
    let count = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad_header(format!("a shape {shape:?} whose size overflows 64 bits")))?;
    let body = &bytes[data_offset as usize..];
    if kind == Kind::Object {
        let arr = pickle::read_object_array(path, data_offset, body)?;
        if let Some(ps) = &arr.shape {
            if ps != &shape {
                return Err(DataError::format(
                    path,
                    data_offset,
                    format!("the pickled array's shape to be the header's {shape:?}"),
                    format!("{ps:?}"),
                ));
            }
        } else if arr.items.len() as u64 != count {
            return Err(DataError::format(
                path,
                data_offset,
                format!("{count} items (the header's shape {shape:?})"),
                format!("a list of {}", arr.items.len()),
            ));
        }
        return Ok(NpyArray { descr, shape, fortran_order, data_offset, data: NpyData::Sequences(arr.items) });
    }
    let need = count
        .checked_mul(size as u64)
        .ok_or_else(|| bad_header(format!("a shape {shape:?} whose size overflows 64 bits")))?;
    if need > body.len() as u64 {
        return Err(trunc(data_offset.saturating_add(need)));
    }
    if need < body.len() as u64 {
        return Err(DataError::format(
            path,
            data_offset + need,
            "the end of the file after the array data",
            format!("{} more bytes", body.len() as u64 - need),
        ));
    }
    // `need == body.len()`: everything below is bounded by the bytes present.
    let word = |c: &[u8]| -> u64 {
        let mut a = [0u8; 8];
        if big {
            a[8 - c.len()..].copy_from_slice(c);
            u64::from_be_bytes(a)
        } else {
            a[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(a)
        }
    };
    let chunks = body.chunks_exact(size.max(1));
    let data = match kind {
        Kind::Bool => NpyData::Bool(body.iter().map(|&b| b != 0).collect()),
        Kind::UInt => NpyData::UInt(chunks.map(word).collect()),
        Kind::Int => NpyData::Int(
            chunks
                .map(|c| {
                    let shift = 64 - 8 * c.len() as u32;
                    ((word(c) << shift) as i64) >> shift
                })
                .collect(),
        ),
        Kind::Float => NpyData::Float(
            chunks
                .map(|c| if size == 4 { f32::from_bits(word(c) as u32) as f64 } else { f64::from_bits(word(c)) })
                .collect(),
        ),
        Kind::Object => unreachable!("handled above"),
    };
    Ok(NpyArray { descr, shape, fortran_order, data_offset, data })
}

/// A `.npz` archive (what `np.savez` and `np.savez_compressed` write): a zip of `.npy` members.
///
/// The archive is held in memory; members are decompressed and parsed on demand by
/// [`Npz::array`]. See the [module docs](self) for what is supported.
#[derive(Clone, Debug)]
pub struct Npz {
    path: PathBuf,
    bytes: Vec<u8>,
    entries: Vec<zip::ZipEntry>,
}

impl Npz {
    /// Reads the archive at `path` and its central directory.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] when it cannot be read, and the errors of [`Npz::from_bytes`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// An archive held in `bytes` (`path` names it in errors).
    ///
    /// # Errors
    ///
    /// [`DataError::Format`] when there is no zip end record or the central directory is
    /// inconsistent (entries outside it, a bad signature, missing zip64 sizes), and
    /// [`DataError::Truncated`] or [`DataError::BadMagic`] for a file too short to be a zip.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let entries = zip::read_directory(&path, &bytes)?;
        Ok(Npz { path, bytes, entries })
    }

    /// The archive's path (as given).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The member names, in directory order (`"x_train.npy"`, ...).
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    fn entry(&self, name: &str) -> Result<&zip::ZipEntry> {
        let with_ext = format!("{name}.npy");
        self.entries
            .iter()
            .find(|e| e.name == name)
            .or_else(|| self.entries.iter().find(|e| e.name == with_ext))
            .ok_or_else(|| DataError::MissingMember {
                path: self.path.clone(),
                member: if name.ends_with(".npy") { name.to_string() } else { with_ext.clone() },
                members: self.names().join(", "),
            })
    }

    /// The decompressed bytes of member `name` (with or without `.npy`), size and CRC-32 checked.
    ///
    /// # Errors
    ///
    /// [`DataError::MissingMember`] when there is no such member; [`DataError::Format`] or
    /// [`DataError::Truncated`] (naming the archive and the byte offset in it) for a bad local
    /// header, an unsupported compression method or encryption, a bad deflate stream, a size or
    /// CRC-32 that does not match the central directory, or a member that runs past the end.
    pub fn member(&self, name: &str) -> Result<Vec<u8>> {
        let entry = self.entry(name)?;
        zip::extract(&self.path, &self.bytes, entry)
    }

    /// Member `name` (with or without `.npy`) parsed as an array; errors inside it name
    /// `archive.npz[member.npy]`.
    ///
    /// # Errors
    ///
    /// Those of [`Npz::member`] and [`read_npy`].
    pub fn array(&self, name: &str) -> Result<NpyArray> {
        let entry = self.entry(name)?;
        let bytes = zip::extract(&self.path, &self.bytes, entry)?;
        read_npy(&member_path(&self.path, &entry.name), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend([1, 0]);
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.bytes());
        v.extend(data);
        v
    }

    #[test]
    fn numeric_dtypes_and_byte_orders() {
        let p = Path::new("a.npy");
        let a = read_npy(p, &npy("{'descr': '>i2', 'fortran_order': True, 'shape': (2L, 1), }\n", &[0xff, 0xfe, 0, 5]))
            .unwrap();
        assert_eq!(a.data, NpyData::Int(vec![-2, 5]));
        assert_eq!((a.shape, a.fortran_order), (vec![2, 1], true));
        let a = read_npy(p, &npy("{\"descr\":\"|u1\",\"fortran_order\":False,\"shape\":(3,)}", &[1, 2, 255])).unwrap();
        assert_eq!(a.data, NpyData::UInt(vec![1, 2, 255]));
        let a =
            read_npy(p, &npy("{'descr': '<f4', 'fortran_order': False, 'shape': ()}", &1.5f32.to_le_bytes())).unwrap();
        assert_eq!((a.data, a.shape), (NpyData::Float(vec![1.5]), vec![]));
        let a = read_npy(p, &npy("{'descr': '|b1', 'fortran_order': False, 'shape': (2,)}", &[0, 1])).unwrap();
        assert_eq!(a.to_i64(), Some(vec![0, 1]));
        let a = read_npy(p, &npy("{'descr': '<i8', 'fortran_order': False, 'shape': (0, 5)}", &[])).unwrap();
        assert!(a.data.is_empty());
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let p = Path::new("a.npy");
        let err = |bytes: &[u8]| read_npy(p, bytes).unwrap_err();
        assert!(matches!(err(b"PK\x03\x04xxxxxxxxxx"), DataError::Format { offset: 0, .. }));
        assert!(matches!(err(b"\x93NUM"), DataError::Truncated { expected: 10, .. }));
        assert!(matches!(err(b"\x93NUMPY\x09\x00\x00\x00"), DataError::Format { offset: 6, .. }));
        // A header length beyond the file.
        assert!(matches!(err(b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}"), DataError::Truncated { .. }));
        // Unsupported dtype, named.
        match err(&npy("{'descr': '<U5', 'fortran_order': False, 'shape': (1,)}", &[0; 20])) {
            DataError::Format { found, offset: 10, .. } => assert_eq!(found, "\"<U5\""),
            other => panic!("{other:?}"),
        }
        // A non-ASCII byte in the dtype (found by tests/fuzz_parsers.rs: it used to panic on
        // slicing inside the replacement character).
        let mut h = npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,)}", &[0; 8]);
        h[21] = 0x80;
        assert!(matches!(read_npy(p, &h), Err(DataError::Format { .. })));
        assert!(matches!(
            err(&npy("{'descr': '\u{e9}O', 'fortran_order': False, 'shape': (1,)}", &[])),
            DataError::Format { .. }
        ));
        // Structured dtype.
        assert!(matches!(
            err(&npy("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,)}", &[0; 4])),
            DataError::Format { .. }
        ));
        // Missing key, extra key, bad shape, garbage.
        for h in [
            "{'descr': '<i4', 'shape': (1,)}",
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
            "{'descr': '<i4', 'fortran_order': False, 'shape': (-1,)}",
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1,)} junk",
            "((((((((((((((((((((((((((((((",
            "{'descr': '<i4', 'fortran_order': 0, 'shape': (1,)}",
        ] {
            assert!(matches!(err(&npy(h, &[0; 4])), DataError::Format { offset: 10, .. }), "{h}");
        }
        // A forged shape: 2^40 x 8 bytes claimed in a 4-byte body, rejected before allocating.
        match err(&npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776,)}", &[0; 4])) {
            DataError::Truncated { expected, found, .. } => {
                assert_eq!((expected, found), (77 + (1u64 << 43), 81));
            }
            other => panic!("{other:?}"),
        }
        // Size overflow and trailing data.
        assert!(matches!(
            err(&npy("{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", &[])),
            DataError::Format { .. }
        ));
        assert!(matches!(
            err(&npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1,)}", &[0; 5])),
            DataError::Format { .. }
        ));
    }

    #[test]
    fn member_paths_name_archive_and_member() {
        assert_eq!(member_path(Path::new("/d/imdb.npz"), "x_train.npy"), PathBuf::from("/d/imdb.npz[x_train.npy]"));
    }
}
