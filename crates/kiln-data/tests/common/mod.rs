//! Writers of small IDX, CIFAR, `.npy` and `.npz` files for the tests, in the formats NumPy and
//! Keras write (the `.npz` fixtures in `tests/data/` come from NumPy itself).

#![allow(dead_code)]

use std::io::Write;

/// An IDX file of unsigned bytes.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// One CIFAR-10 record: a label and 3072 pixel bytes.
pub fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A version 1.0 `.npy` file with the header padded as NumPy pads it.
pub fn npy(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((header.len() as u16).to_le_bytes());
    v.extend(header.bytes());
    v.extend(body);
    v
}

pub fn npy_i64(values: &[i64]) -> Vec<u8> {
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy("<i8", &[values.len()], &body)
}

fn short_text(out: &mut Vec<u8>, s: &str) {
    out.push(0x8c);
    out.push(s.len() as u8);
    out.extend(s.bytes());
}

fn int(out: &mut Vec<u8>, w: i64) {
    if (0..256).contains(&w) {
        out.extend([b'K', w as u8]);
    } else if (0..65536).contains(&w) {
        out.push(b'M');
        out.extend((w as u16).to_le_bytes());
    } else if i32::try_from(w).is_ok() {
        out.push(b'J');
        out.extend((w as i32).to_le_bytes());
    } else {
        out.extend([0x8a, 8]);
        out.extend(w.to_le_bytes());
    }
}

/// The pickle `numpy.save` writes (protocol 4, without frames or memo) for a 1-D object array of
/// integer lists.
pub fn pickle_object_array(seqs: &[Vec<i64>]) -> Vec<u8> {
    let mut p = vec![0x80, 4];
    short_text(&mut p, "numpy._core.multiarray");
    short_text(&mut p, "_reconstruct");
    p.push(0x93);
    short_text(&mut p, "numpy");
    short_text(&mut p, "ndarray");
    p.extend([0x93, b'K', 0, 0x85, b'C', 1, b'b', 0x87, b'R', b'(', b'K', 1]);
    int(&mut p, seqs.len() as i64);
    p.push(0x85);
    short_text(&mut p, "numpy");
    short_text(&mut p, "dtype");
    p.push(0x93);
    short_text(&mut p, "O8");
    p.extend([0x89, 0x88, 0x87, b'R', b'(', b'K', 3]);
    short_text(&mut p, "|");
    p.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb\x89](");
    for s in seqs {
        p.extend(b"](");
        for &w in s {
            int(&mut p, w);
        }
        p.push(b'e');
    }
    p.extend(b"etb.");
    p
}

pub fn npy_object(seqs: &[Vec<i64>]) -> Vec<u8> {
    npy("|O", &[seqs.len()], &pickle_object_array(seqs))
}

/// A zip archive of `members`, stored or deflated, with a plain (non-zip64) directory.
pub fn zip(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let crc = crc32fast::hash(data);
        let (method, body) = if deflate {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).unwrap();
            (8u16, enc.finish().unwrap())
        } else {
            (0u16, data.clone())
        };
        let offset = out.len() as u32;
        let fixed = |sig: u32| {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(method.to_le_bytes());
            h.extend([0u8; 4]); // time, date
            h.extend(crc.to_le_bytes());
            h.extend((body.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            h
        };
        out.extend(fixed(0x0403_4b50));
        out.extend(name.bytes());
        out.extend(&body);
        let mut c = 0x0201_4b50u32.to_le_bytes().to_vec();
        c.extend(20u16.to_le_bytes()); // version made by
        c.extend(&fixed(0)[4..]);
        c.extend([0u8; 10]); // comment length, disk, internal and external attributes
        c.extend(offset.to_le_bytes());
        c.extend(name.bytes());
        central.extend(c);
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// An `imdb.npz` as Keras ships it: object arrays of word ranks and `<i8` labels.
pub fn imdb_npz(train: &[Vec<i64>], y_train: &[i64], test: &[Vec<i64>], y_test: &[i64], deflate: bool) -> Vec<u8> {
    zip(
        &[
            ("x_train.npy", npy_object(train)),
            ("y_train.npy", npy_i64(y_train)),
            ("x_test.npy", npy_object(test)),
            ("y_test.npy", npy_i64(y_test)),
        ],
        deflate,
    )
}

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-data-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
