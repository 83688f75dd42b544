//! `.npy` parser (`read_npy`), numeric and pickled object arrays. Inputs starting with `P` are
//! instead a bare pickle behind a fixed object-array header whose shape is the second byte, so
//! that mutations reach the pickle reader without having to keep a header consistent.
#![no_main]

use kiln_data::npy::{read_npy, NpyData};
use libfuzzer_sys::fuzz_target;

fn object_npy(count: u8, pickle: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '|O', 'fortran_order': False, 'shape': ({count},), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((header.len() as u16).to_le_bytes());
    v.extend(header.bytes());
    v.extend(pickle);
    v
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let file = match data {
        [b'P', count, pickle @ ..] => {
            owned = object_npy(*count, pickle);
            &owned[..]
        }
        _ => data,
    };
    if let Ok(a) = read_npy("f.npy".as_ref(), file) {
        let count: usize = a.shape.iter().product();
        assert_eq!(a.data.len(), count);
        if let NpyData::Sequences(items) = &a.data {
            let total: usize = items.iter().map(Vec::len).sum();
            assert!(total <= file.len());
        }
    }
});
