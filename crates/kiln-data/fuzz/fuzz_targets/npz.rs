//! `.npz` reader (`Npz::from_bytes`, every member through `Npz::array`) and the IMDB loader on it
//! (`Imdb::from_npz_archive`, both splits, with settings taken from the first byte).
#![no_main]

use kiln_data::datasets::{Imdb, ImdbConfig, Split};
use kiln_data::npy::Npz;
use kiln_data::Dataset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let Ok(npz) = Npz::from_bytes("imdb.npz", file.to_vec()) else {
        return;
    };
    for name in npz.names() {
        let _ = npz.array(name);
    }
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
            if let Some(n) = config.num_words {
                let oov = config.oov_char.unwrap_or(0);
                assert!(ds.sequences().iter().flatten().all(|&w| w < n || w == oov));
            }
            if !ds.is_empty() {
                let _ = ds.get(0);
            }
        }
    }
});
