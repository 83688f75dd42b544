//! Property-based fuzzing of the binary parsers on stable Rust (the `cargo fuzz` targets in
//! `fuzz/` do the same with coverage guidance on nightly): random bytes and mutated valid files
//! fed to the IDX, CIFAR-10, `.npy` (numeric and pickled) and `.npz` / `imdb.npz` readers. Each
//! must return `Ok` or a typed `DataError`, never panic, and never make an allocation larger than
//! a small multiple of its input (checked by a tracking allocator).
//!
//! `PROPTEST_CASES=20000 cargo test -p kiln-data --test fuzz_parsers --release` for a long run.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use common::{cifar_record, gzip, idx, imdb_npz, npy, npy_i64, npy_object, pickle_object_array, zip};
use kiln_data::datasets::{read_idx_bytes, Cifar10, Imdb, ImdbConfig, Split};
use kiln_data::npy::{read_npy, NpyData, Npz};
use kiln_data::Dataset;
use proptest::prelude::*;

/// Records, per thread, the largest single allocation or reallocation requested.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest allocation it made.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// The largest allocation allowed for an input of `len` bytes: a small multiple of the input
/// (pickle values take up to ~100 bytes of bookkeeping per input byte) plus slack, or deflate's
/// expansion bound for compressed inputs.
fn bound(len: usize, compressed: bool) -> usize {
    let factor = if compressed { 2 * 1032 } else { 256 };
    len * factor + (1 << 20)
}

/// A mutation of a valid file.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Overwrite a 4- or 8-byte field, little- or big-endian, with an interesting value.
    Field(usize, u8, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0u64),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(0xffff_ffff),
        Just(1 << 32),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        any::<u64>(),
    ];
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, x)| Mutation::Set(p, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), 0u8..4, interesting).prop_map(|(p, k, v)| Mutation::Field(p, k, v)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        let at = |p: usize| if len == 0 { 0 } else { p % len };
        match m {
            Mutation::Flip(p, x) if len > 0 => bytes[at(*p)] ^= x,
            Mutation::Set(p, x) if len > 0 => bytes[at(*p)] = *x,
            Mutation::Truncate(p) => bytes.truncate(p % (len + 1)),
            Mutation::Insert(p, b) => {
                let p = p % (len + 1);
                bytes.splice(p..p, b.iter().copied());
            }
            Mutation::Delete(p, n) if len > 0 => {
                let p = at(*p);
                bytes.drain(p..(p + n).min(len));
            }
            Mutation::Field(p, kind, v) => {
                let width = if kind & 1 == 0 { 4 } else { 8 };
                if len >= width {
                    let p = p % (len - width + 1);
                    let field = if kind & 2 == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                    let field = if kind & 2 == 0 { field[..width].to_vec() } else { field[8 - width..].to_vec() };
                    bytes[p..p + width].copy_from_slice(&field);
                }
            }
            _ => {}
        }
    }
    bytes
}

// ---- seeds ----

fn idx_seeds() -> Vec<(u8, Vec<u8>)> {
    vec![
        (1, idx(&[3], &[7, 2, 1])),
        (3, idx(&[2, 3, 2], &(0..12).collect::<Vec<u8>>())),
        (2, idx(&[2, 2], &[1, 2, 3, 4])),
    ]
}

fn cifar_seeds() -> Vec<Vec<u8>> {
    vec![cifar_record(3, 10), [cifar_record(0, 0), cifar_record(9, 255)].concat()]
}

fn npy_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![
        npy_i64(&[1, 0, 1, -5]),
        npy("<i4", &[2, 2], &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]),
        npy(">u2", &[3], &[0, 1, 1, 0, 255, 255]),
        npy("|b1", &[2], &[0, 1]),
        npy("<f8", &[1], &1.5f64.to_le_bytes()),
        npy_object(&[vec![1, 14, 22], vec![], vec![1 << 40, -3]]),
    ];
    // The members NumPy wrote.
    for f in fixtures() {
        let npz = Npz::from_bytes("f.npz", f).unwrap();
        for name in npz.names() {
            v.push(npz.member(name).unwrap());
        }
    }
    v
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "npz"))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn npz_seeds() -> Vec<Vec<u8>> {
    let train = vec![vec![1, 14, 22, 16], vec![5, 25, 100], vec![12]];
    let mut v = vec![
        imdb_npz(&train, &[1, 0, 1], &[vec![7, 8]], &[0], false),
        imdb_npz(&train, &[1, 0, 1], &[vec![7, 8]], &[0], true),
        zip(&[("x_train.npy", npy_object(&train))], false),
    ];
    v.extend(fixtures());
    v
}

// ---- checks ----

fn check_idx(ndim: u8, gz: bool, file: &[u8]) -> Result<(), TestCaseError> {
    let name = if gz { "f.idx.gz" } else { "f.idx" };
    let (res, largest) = measured(|| read_idx_bytes(name.as_ref(), file, ndim));
    prop_assert!(largest <= bound(file.len(), gz), "allocated {largest} for {} bytes", file.len());
    if let Ok(idx) = res {
        let count: u64 = idx.dims.iter().map(|&d| d as u64).product();
        prop_assert_eq!(idx.data.len() as u64, count);
    }
    Ok(())
}

fn check_cifar(gz: bool, file: &[u8]) -> Result<(), TestCaseError> {
    let name = if gz { "data_batch_1.bin.gz" } else { "data_batch_1.bin" };
    let (res, largest) = measured(|| Cifar10::from_batch_bytes(name.as_ref(), file));
    prop_assert!(largest <= bound(file.len(), gz), "allocated {largest} for {} bytes", file.len());
    if let Ok(b) = res {
        prop_assert!(b.labels().iter().all(|&l| l < 10));
        if !b.is_empty() {
            prop_assert_eq!(b.get(b.len() - 1).0.shape(), [3, 32, 32]);
        }
    }
    Ok(())
}

fn check_npy(file: &[u8]) -> Result<(), TestCaseError> {
    let (res, largest) = measured(|| read_npy("f.npy".as_ref(), file));
    prop_assert!(largest <= bound(file.len(), false), "allocated {largest} for {} bytes", file.len());
    if let Ok(a) = res {
        prop_assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
        if let NpyData::Sequences(items) = &a.data {
            prop_assert!(items.iter().map(Vec::len).sum::<usize>() <= file.len());
        }
    }
    Ok(())
}

fn check_npz(file: &[u8], sel: u8) -> Result<(), TestCaseError> {
    let config = ImdbConfig {
        num_words: (sel & 1 != 0).then_some(50),
        skip_top: (sel >> 1 & 3) as usize,
        maxlen: (sel & 8 != 0).then_some(4),
        start_char: (sel & 16 != 0).then_some(1),
        oov_char: (sel & 32 != 0).then_some(2),
        index_from: (sel >> 6) as usize,
    };
    let (res, largest) = measured(|| {
        let npz = Npz::from_bytes("imdb.npz", file.to_vec())?;
        for name in npz.names() {
            let _ = npz.array(name);
        }
        let train = Imdb::from_npz_archive(&npz, Split::Train, &config);
        let test = Imdb::from_npz_archive(&npz, Split::Test, &config);
        Ok::<_, kiln_data::DataError>((train, test))
    });
    // Members may be deflated.
    prop_assert!(largest <= bound(file.len(), true), "allocated {largest} for {} bytes", file.len());
    if let Ok((train, test)) = res {
        for ds in [train, test].into_iter().flatten() {
            prop_assert_eq!(ds.sequences().len(), ds.labels().len());
            prop_assert!(ds.labels().iter().all(|&l| l <= 1));
        }
    }
    Ok(())
}

fn pick<T: Clone>(seeds: &[T], i: usize) -> T {
    seeds[i % seeds.len()].clone()
}

proptest! {
    // Cases from PROPTEST_CASES (default 256); failures are reported, not persisted to files.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idx_random_bytes(ndim in 1u8..=4, gz in any::<bool>(),
                        file in prop::collection::vec(any::<u8>(), 0..256)) {
        check_idx(ndim, gz, &file)?;
    }

    #[test]
    fn idx_mutated(i in any::<usize>(), gz in any::<bool>(),
                   muts in prop::collection::vec(mutation(), 1..5)) {
        let (ndim, file) = pick(&idx_seeds(), i);
        let file = if gz { gzip(&apply(file, &muts)) } else { apply(file, &muts) };
        check_idx(ndim, gz, &file)?;
        if gz {
            // Mutating the compressed stream itself.
            let (_, plain) = pick(&idx_seeds(), i);
            check_idx(ndim, true, &apply(gzip(&plain), &muts))?;
        }
    }

    #[test]
    fn cifar_random_bytes(gz in any::<bool>(), file in prop::collection::vec(any::<u8>(), 0..4096)) {
        check_cifar(gz, &file)?;
    }

    #[test]
    fn cifar_mutated(i in any::<usize>(), gz in any::<bool>(),
                     muts in prop::collection::vec(mutation(), 1..5)) {
        let file = apply(pick(&cifar_seeds(), i), &muts);
        check_cifar(false, &file)?;
        if gz {
            check_cifar(true, &gzip(&file))?;
            check_cifar(true, &apply(gzip(&pick(&cifar_seeds(), i)), &muts))?;
        }
    }

    #[test]
    fn npy_random_bytes(file in prop::collection::vec(any::<u8>(), 0..512)) {
        check_npy(&file)?;
        // Random bytes after a valid magic and version, so the header parser is reached.
        let mut framed = b"\x93NUMPY\x01\x00".to_vec();
        framed.extend((file.len() as u16).to_le_bytes());
        framed.extend(&file);
        check_npy(&framed)?;
    }

    #[test]
    fn npy_mutated(i in any::<usize>(), muts in prop::collection::vec(mutation(), 1..5)) {
        check_npy(&apply(pick(&npy_seeds(), i), &muts))?;
    }

    #[test]
    fn pickle_mutated(i in any::<usize>(), muts in prop::collection::vec(mutation(), 1..5)) {
        // Mutate only the pickle, behind an intact header, so mutations land in the pickle reader.
        let seqs = [vec![vec![1, 14, 300, 70000, 1 << 40]], vec![vec![], vec![-1, 2]],
                    vec![vec![5; 40], vec![6; 3], vec![7]]];
        let s = &seqs[i % seqs.len()];
        let pickle = apply(pickle_object_array(s), &muts);
        check_npy(&npy("|O", &[s.len()], &pickle))?;
    }

    #[test]
    fn pickle_random_opcodes(ops in prop::collection::vec(
        prop_oneof![
            prop::sample::select(b"().0128NIJKMGXCUBT)t]laeds}ucRbpqrgjh\x80\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x93\x94\x95\x81".to_vec()),
            any::<u8>(),
        ], 0..200), count in 0usize..4) {
        check_npy(&npy("|O", &[count], &ops))?;
    }

    #[test]
    fn npz_random_bytes(sel in any::<u8>(), file in prop::collection::vec(any::<u8>(), 0..512)) {
        check_npz(&file, sel)?;
        // Random bytes in front of a valid end record, so the directory parser is reached.
        let mut framed = file.clone();
        framed.extend(b"PK\x05\x06\0\0\0\0\x01\0\x01\0");
        framed.extend(46u32.to_le_bytes());
        framed.extend((file.len().saturating_sub(46) as u32).to_le_bytes());
        framed.extend([0, 0]);
        check_npz(&framed, sel)?;
    }

    #[test]
    fn npz_mutated(i in any::<usize>(), sel in any::<u8>(),
                   muts in prop::collection::vec(mutation(), 1..5)) {
        check_npz(&apply(pick(&npz_seeds(), i), &muts), sel)?;
    }

    #[test]
    fn npz_mutated_member(i in any::<usize>(), sel in any::<u8>(), deflate in any::<bool>(),
                          muts in prop::collection::vec(mutation(), 1..5)) {
        // Rebuild a consistent archive around a mutated member (CRC and sizes right), so the
        // mutation reaches the .npy and pickle readers through the IMDB loader.
        let members = ["x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy"];
        let train = vec![vec![1, 14, 22, 16], vec![5, 25, 100], vec![12]];
        let mut bytes = [
            npy_object(&train),
            npy_i64(&[1, 0, 1]),
            npy_object(&[vec![7, 8]]),
            npy_i64(&[0]),
        ];
        let k = i % 4;
        bytes[k] = apply(bytes[k].clone(), &muts);
        let parts: Vec<(&str, Vec<u8>)> = members.iter().copied().zip(bytes).collect();
        check_npz(&zip(&parts, deflate), sel)?;
    }
}

#[test]
fn seeds_are_valid() {
    for (ndim, f) in idx_seeds() {
        read_idx_bytes("f".as_ref(), &f, ndim).unwrap();
    }
    for f in cifar_seeds() {
        Cifar10::from_batch_bytes("f.bin".as_ref(), &f).unwrap();
    }
    for f in npy_seeds() {
        read_npy("f.npy".as_ref(), &f).unwrap();
    }
    for f in npz_seeds() {
        let npz = Npz::from_bytes("f.npz", f).unwrap();
        for name in npz.names() {
            npz.array(name).unwrap();
        }
    }
    // The tracking allocator sees a forged count: the IDX header's 4 billion bytes are refused
    // without an allocation of that size.
    let forged = idx(&[u32::MAX], &[0; 8]);
    let (res, largest) = measured(|| read_idx_bytes("f".as_ref(), &forged, 1));
    assert!(res.is_err() && largest < 1 << 20, "{largest}");
}
