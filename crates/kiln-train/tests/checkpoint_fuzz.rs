//! The checkpoint reader on random and mutated bytes (the stable-toolchain twin of the
//! cargo-fuzz target in `fuzz/`): every input decodes or gives a typed error, never a panic.

use std::path::Path;

use kiln_nn::{Linear, Module};
use kiln_train::checkpoint::{decode_checkpoint, encode_checkpoint, Checkpoint};
use proptest::prelude::*;

fn valid() -> Vec<u8> {
    let model: Linear = Linear::new(3, 2);
    encode_checkpoint(Path::new("valid.ckpt"), &Checkpoint::new(2, &model)).expect("encodes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_checkpoint(Path::new("random.ckpt"), &bytes);
    }

    #[test]
    fn mutated_checkpoints_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut b = valid();
        for (i, v) in flips {
            let n = b.len();
            b[i % n] ^= v | 1;
        }
        let n = b.len();
        b.truncate(cut % (n + 1));
        let _ = decode_checkpoint(Path::new("mutated.ckpt"), &b);
    }
}

#[test]
fn the_valid_checkpoint_decodes() {
    let b = valid();
    let c = decode_checkpoint(Path::new("valid.ckpt"), &b).expect("decodes");
    assert_eq!(c.epoch, 2);
    let _ = Linear::<f32>::new(3, 2).num_parameters();
}
