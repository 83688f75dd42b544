//! CIFAR-10 batch parser (`Cifar10::from_batch_bytes`): the first byte's top bit picks gzip;
//! the rest is the batch file.
#![no_main]

use kiln_data::datasets::Cifar10;
use kiln_data::Dataset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let name = if sel & 0x80 != 0 {
        "data_batch_1.bin.gz"
    } else {
        "data_batch_1.bin"
    };
    if let Ok(batch) = Cifar10::from_batch_bytes(name.as_ref(), file) {
        assert!(batch.labels().iter().all(|&l| l < 10));
        if !batch.is_empty() {
            let (img, label) = batch.get(batch.len() - 1);
            assert_eq!(img.shape(), [3, 32, 32]);
            assert!(label < 10);
        }
    }
});
