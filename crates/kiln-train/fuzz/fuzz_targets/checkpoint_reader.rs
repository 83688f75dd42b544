//! Any bytes given to the checkpoint reader decode or fail with a typed error: never a panic,
//! never an allocation sized by a forged header.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln_train::checkpoint::decode_checkpoint(std::path::Path::new("fuzz.ckpt"), data);
});
