//! IDX parser (`read_idx_bytes`): the first byte picks the dimension count (1-4) and whether the
//! rest is read as gzip; the rest is the file.
#![no_main]

use kiln_data::datasets::read_idx_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let ndim = sel % 4 + 1;
    let gz = sel & 0x80 != 0;
    let name = if gz { "images.idx.gz" } else { "images.idx" };
    if let Ok(idx) = read_idx_bytes(name.as_ref(), file, ndim) {
        assert_eq!(idx.dims.len(), ndim as usize);
        let count: u64 = idx.dims.iter().map(|&d| d as u64).product();
        assert_eq!(idx.data.len() as u64, count);
        let bound = if gz {
            file.len() as u64 * 1032
        } else {
            file.len() as u64
        };
        assert!(count <= bound);
    }
});
