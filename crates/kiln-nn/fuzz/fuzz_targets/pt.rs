//! Any bytes given to the PyTorch checkpoint reader open or fail with a typed error; an opened
//! checkpoint reads every tensor, in every way kiln reads them, without a panic, with the size
//! its shape declares and never more than the file could hold.

#![no_main]

use kiln_nn::{NnError, PtFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ckpt) = PtFile::from_bytes(data.to_vec()) else { return };
    for (key, t) in ckpt.root().tensors() {
        let bytes = ckpt.contiguous_bytes(t);
        assert_eq!(bytes.len(), t.numel() * t.dtype.size());
        assert!(bytes.len() <= data.len().max(8) * 2);
        match ckpt.tensor::<f32>(&key, t) {
            Ok(x) => assert_eq!(x.numel(), t.numel()),
            Err(NnError::WrongDtype { .. }) => assert!(!t.dtype.is_float()),
            Err(e) => panic!("reading an opened checkpoint failed: {e}"),
        }
        match ckpt.tensor_i64(&key, t) {
            Ok(v) => assert_eq!(v.len(), t.numel()),
            Err(NnError::WrongDtype { .. }) => assert!(!t.dtype.is_integer()),
            Err(e) => panic!("reading an opened checkpoint failed: {e}"),
        }
    }
    let _ = ckpt.state_dict::<f32>();
});
