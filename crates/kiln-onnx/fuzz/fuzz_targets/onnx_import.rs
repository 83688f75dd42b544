//! Any bytes given to the ONNX reader import or fail with a typed error: never a panic, and
//! never an allocation larger than the bytes could back (a forged tensor size is an error).

#![no_main]

use kiln_nn::Module;
use kiln_onnx::import_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = import_bytes(data, "fuzz") {
        // the initializers hold no more values than the file had bytes
        let values: usize = model.state_dict().values().map(|t| t.numel()).sum();
        assert!(values * 4 <= data.len() * 64 + 4096, "{values} values from {} bytes", data.len());
    }
});
