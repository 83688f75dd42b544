//! The PyTorch checkpoint reader on forged input: mutated pickles (re-zipped with a correct
//! CRC, so that the mutations reach the unpickler), mutated legacy files, random bytes. Every
//! input opens or fails with a typed error, never panics, and an opened file reads every
//! tensor with the size its shape declares, within what the file holds.
//!
//! The same property runs under `cargo fuzz` (`crates/kiln-nn/fuzz`, target `pt`).

use std::path::PathBuf;

use kiln_nn::{NnError, PtFile};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden/pt")).join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("PyTorch checkpoint fixture {}: {e}", p.display()))
}

/// A stored zip of `records`, as `torch.save` writes one (without its 64-byte alignment).
fn zip_stored(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in records {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let mut local = Vec::new();
        local.extend(0x0403_4b50u32.to_le_bytes());
        local.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        local.extend(crc.to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((name.len() as u16).to_le_bytes());
        local.extend(0u16.to_le_bytes());
        local.extend(name.as_bytes());
        out.extend(&local);
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(crc.to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((records.len() as u16).to_le_bytes());
    out.extend((records.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// The records of a zip fixture.
fn records(name: &str) -> Vec<(String, Vec<u8>)> {
    let bytes = fixture(name);
    let entries = kiln_pickle::zip::read_directory(&bytes).unwrap();
    entries.iter().map(|e| (e.name.clone(), kiln_pickle::zip::extract(&bytes, e).unwrap())).collect()
}

/// Opens `bytes`; when that works, reads everything, checking sizes.
fn exercise(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let len = bytes.len();
    let Ok(ckpt) = PtFile::from_bytes(bytes) else { return Ok(()) };
    for (key, t) in ckpt.root().tensors() {
        let data = ckpt.contiguous_bytes(t);
        prop_assert_eq!(data.len(), t.numel() * t.dtype.size(), "{}", key);
        prop_assert!(data.len() <= len.max(8) * 2, "{} bytes from a file of {}", data.len(), len);
        if t.dtype.is_float() {
            prop_assert_eq!(ckpt.tensor::<f32>(&key, t).unwrap().numel(), t.numel());
        } else {
            prop_assert_eq!(ckpt.tensor_i64(&key, t).unwrap().len(), t.numel());
        }
    }
    match ckpt.state_dict::<f32>() {
        Ok(_) | Err(NnError::WrongDtype { .. } | NnError::Checkpoint { .. }) => {}
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
    }
    Ok(())
}

fn mutate(mut data: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(at, b) in edits {
        if !data.is_empty() {
            let n = data.len();
            data[at % n] = b;
        }
    }
    if let Some(c) = cut {
        data.truncate(c % (data.len() + 1));
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Mutations of `data.pkl` of every zip fixture, re-zipped with a correct CRC.
    #[test]
    fn mutated_pickles(file in prop::sample::select(vec!["cnn_state_dict.pt", "checkpoint_dict.pt", "views.pt", "dtypes.pt"]),
                       edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                       cut in prop::option::weighted(0.2, any::<usize>())) {
        let mut recs = records(file);
        let pkl = recs.iter_mut().find(|(n, _)| n.ends_with("/data.pkl")).unwrap();
        pkl.1 = mutate(std::mem::take(&mut pkl.1), &edits, cut);
        exercise(zip_stored(&recs))?;
    }

    /// Mutations anywhere in a legacy file (no CRC: every byte reaches the reader).
    #[test]
    fn mutated_legacy(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                      cut in prop::option::weighted(0.2, any::<usize>())) {
        exercise(mutate(fixture("legacy_format.pt"), &edits, cut))?;
    }

    /// Mutations of the zip container itself.
    #[test]
    fn mutated_zip(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        exercise(mutate(fixture("views.pt"), &edits, None))?;
    }

    /// Random bytes behind either format's opening.
    #[test]
    fn random_bytes(head in prop::sample::select(vec![&b"PK\x03\x04"[..], &b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"[..], &b""[..]]),
                    tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = head.to_vec();
        bytes.extend(tail);
        exercise(bytes)?;
    }
}

/// Replaces `from` by `to` (same length or not) in the `data.pkl` of `file` and re-zips.
fn forged(file: &str, from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut recs = records(file);
    let pkl = recs.iter_mut().find(|(n, _)| n.ends_with("/data.pkl")).unwrap();
    let at = pkl.1.windows(from.len()).position(|w| w == from).expect("pattern in the pickle");
    pkl.1.splice(at..at + from.len(), to.iter().copied());
    zip_stored(&recs)
}

fn checkpoint_message(bytes: Vec<u8>) -> String {
    match PtFile::from_bytes(bytes) {
        Err(NnError::Checkpoint { message, .. }) => message,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn forged_sizes_are_refused_before_allocating() {
    // views.pt: the storage's numel 24 (BININT1 0x18 after the 'cpu' location) claimed as 2^31 - 1.
    let msg = checkpoint_message(forged(
        "views.pt",
        b"X\x03\x00\x00\x00cpuq\x06K\x18",
        b"X\x03\x00\x00\x00cpuq\x06J\xff\xff\xff\x7f",
    ));
    assert!(msg.contains("needs Some(8589934588) bytes, the record holds 96"), "{msg}");
    // A shape of 2^31 - 1 elements over the 24-element storage: refused, nothing allocated.
    let msg = checkpoint_message(forged("views.pt", b"K\x04K\x06\x86", b"J\xff\xff\xff\x7fK\x01\x86"));
    assert!(msg.contains("does not fit in storage `0` of 24 elements"), "{msg}");
}

#[test]
fn shared_values_cannot_amplify_the_tree() {
    // A list of one big string referenced 10 000 times through the memo:
    // ['xxx...'] then 10 000 x (BINGET 1, APPEND), as a zip's data.pkl.
    let mut pkl = b"\x80\x02]q\x00X\x00\x10\x00\x00".to_vec();
    pkl.extend(std::iter::repeat_n(b'x', 4096));
    pkl.extend(b"q\x01a");
    for _ in 0..10_000 {
        pkl.extend(b"h\x01a");
    }
    pkl.push(b'.');
    let zip = zip_stored(&[("a/data.pkl".into(), pkl)]);
    let msg = checkpoint_message(zip);
    assert!(msg.contains("expand to more than 4 times"), "{msg}");
}
