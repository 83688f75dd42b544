//! Any bytes given to the safetensors reader open or fail with a typed error; an opened file
//! decodes every tensor, in every way kiln reads them, without a panic and with the sizes its
//! header declares.

#![no_main]

use kiln_nn::{NnError, SafetensorsFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec()) else { return };
    for (key, info) in file.tensors() {
        let numel: usize = info.shape.iter().product();
        assert_eq!(file.raw_bytes(key).unwrap().len(), numel * info.dtype.size());
        match file.tensor::<f32>(key) {
            Ok(t) => assert_eq!(t.shape(), info.shape.as_slice()),
            Err(NnError::WrongDtype { .. }) => assert!(!info.dtype.is_float()),
            Err(e) => panic!("decoding an opened file failed: {e}"),
        }
        match file.tensor::<f64>(key) {
            Ok(t) => assert_eq!(t.numel(), numel),
            Err(NnError::WrongDtype { .. }) => assert!(!info.dtype.is_float()),
            Err(e) => panic!("decoding an opened file failed: {e}"),
        }
        match file.tensor_i64(key) {
            Ok((v, _)) => assert_eq!(v.len(), numel),
            Err(NnError::WrongDtype { .. }) => assert!(!info.dtype.is_integer()),
            Err(e) => panic!("decoding an opened file failed: {e}"),
        }
    }
    let _ = file.state_dict::<f32>();
});
