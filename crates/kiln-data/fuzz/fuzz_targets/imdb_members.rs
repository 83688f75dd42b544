//! The IMDB `.npz` loader on archives whose members are fuzzed but whose zip structure and CRCs
//! are right (mutating a member inside a real archive mostly breaks its CRC-32 instead).
//! Input: byte 0 the IMDB settings, bytes 1-6 the lengths (u16 LE) of the first three members,
//! the rest the members `x_train.npy`, `y_train.npy`, `x_test.npy`, `y_test.npy` in turn.
#![no_main]

use kiln_data::datasets::{Imdb, ImdbConfig, Split};
use kiln_data::npy::Npz;
use libfuzzer_sys::fuzz_target;

/// A stored zip archive of `members` with correct sizes and CRCs.
fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let mut fixed = Vec::new();
        fixed.extend(20u16.to_le_bytes());
        fixed.extend([0u8; 8]); // flags, method (stored), time, date
        fixed.extend(crc32fast::hash(data).to_le_bytes());
        fixed.extend((data.len() as u32).to_le_bytes());
        fixed.extend((data.len() as u32).to_le_bytes());
        fixed.extend((name.len() as u16).to_le_bytes());
        fixed.extend(0u16.to_le_bytes());
        let offset = out.len() as u32;
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(&fixed);
        out.extend(name.bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(&fixed);
        central.extend([0u8; 10]);
        central.extend(offset.to_le_bytes());
        central.extend(name.bytes());
    }
    let cd = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd.to_le_bytes());
    out.extend([0u8; 2]);
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let sel = data[0];
    let mut rest = &data[7..];
    let mut parts: Vec<&[u8]> = Vec::new();
    for k in 0..3 {
        let n = u16::from_le_bytes([data[1 + 2 * k], data[2 + 2 * k]]) as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        parts.push(a);
        rest = b;
    }
    parts.push(rest);
    let names = ["x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy"];
    let members: Vec<(&str, &[u8])> = names.into_iter().zip(parts).collect();
    let npz = Npz::from_bytes("imdb.npz", zip(&members)).expect("a well-formed archive");
    let config = ImdbConfig {
        num_words: (sel & 1 != 0).then_some(50),
        skip_top: (sel >> 1 & 3) as usize,
        maxlen: (sel & 8 != 0).then_some(4),
        start_char: (sel & 16 != 0).then_some(1),
        oov_char: (sel & 32 != 0).then_some(2),
        index_from: (sel >> 6) as usize,
    };
    for split in [Split::Train, Split::Test] {
        if let Ok(ds) = Imdb::from_npz_archive(&npz, split, &config) {
            assert_eq!(ds.sequences().len(), ds.labels().len());
            assert!(ds.labels().iter().all(|&l| l <= 1));
        }
    }
});
