//! The safetensors reader under random and mutated bytes, as a proptest (the same checks as the
//! `cargo fuzz` target in `crates/kiln-nn/fuzz`, which needs nightly):
//! - it never panics: every input opens, or fails with a typed error;
//! - it never allocates more than a small multiple of the input (a thread-local allocation
//!   meter wraps the system allocator), however large the sizes a forged header claims;
//! - it agrees with the reference `safetensors` crate on which inputs are valid and on every
//!   tensor's dtype, shape and bytes, apart from two documented, stricter refusals (and the
//!   reference's own overflow panic on offsets near 2^64, which this found).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

use kiln_nn::serialize::Dtype;
use kiln_nn::{save_state_dict, Metadata, NnError, SafetensorsFile, StateDict};
use kiln_tensor::Tensor;
use proptest::prelude::*;

// ------------------------------------------------------------------ allocation meter

/// The system allocator, counting the live bytes of the current thread and their peak.
struct Meter;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping touches only
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns its result with the peak of the bytes it held live at once.
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

// ------------------------------------------------------------------ the property

/// What the reader made of some bytes: every tensor decoded the way kiln would.
fn read_all(bytes: &[u8]) -> Result<usize, NnError> {
    let f = SafetensorsFile::from_bytes(bytes.to_vec())?;
    let mut n = 0;
    for (key, info) in f.tensors() {
        let numel: usize = info.shape.iter().product();
        match f.tensor::<f64>(key) {
            Ok(t) => {
                assert!(info.dtype.is_float());
                assert_eq!(t.shape(), info.shape.as_slice());
                n += t.numel();
            }
            Err(NnError::WrongDtype { .. }) => assert!(!info.dtype.is_float()),
            Err(e) => panic!("decoding an opened file failed: {e}"),
        }
        match f.tensor_i64(key) {
            Ok((v, shape)) => assert_eq!((v.len(), shape), (numel, info.shape.clone())),
            Err(NnError::WrongDtype { .. }) => assert!(!info.dtype.is_integer()),
            Err(e) => panic!("decoding an opened file failed: {e}"),
        }
        let _ = f.state_tensor::<f32>(key);
        assert_eq!(f.raw_bytes(key).unwrap().len(), numel * info.dtype.size());
    }
    let _ = f.state_dict::<f32>();
    Ok(n)
}

/// The whole property for one input.
fn check(bytes: &[u8]) {
    // Decoding F16 into f64 quadruples the data, and the header's parse tree holds a few
    // words per JSON token; anything far beyond that means a size was taken on trust.
    let (ours, peak) = peak_bytes(|| read_all(bytes));
    let budget = 8 * bytes.len() + 64 * 1024;
    assert!(peak <= budget, "reading {} bytes held {peak} bytes at once (budget {budget})", bytes.len());

    // safetensors 0.4.5 overflows (a panic under debug assertions) on `data_offsets` near
    // 2^64; such an input counts as refused by the reference.
    let reference = std::panic::catch_unwind(|| safetensors::SafeTensors::deserialize(bytes))
        .unwrap_or(Err(safetensors::SafeTensorError::ValidationOverflow));
    match (&ours, &reference) {
        (Ok(_), Ok(st)) => {
            let f = SafetensorsFile::from_bytes(bytes.to_vec()).unwrap();
            assert_eq!(f.len(), st.len());
            for (key, view) in st.tensors() {
                let info = f.info(&key).unwrap_or_else(|| panic!("reference has `{key}`, kiln does not"));
                assert_eq!(info.dtype.as_str(), format!("{:?}", view.dtype()), "{key}");
                assert_eq!(info.shape, view.shape(), "{key}");
                assert_eq!(f.raw_bytes(&key).unwrap(), view.data(), "{key}");
            }
        }
        (Err(_), Err(_)) => {}
        // kiln is stricter in two documented ways: duplicate keys (the reference keeps the
        // last silently) and shapes whose non-zero sizes overflow (kiln's strides need them).
        (Err(NnError::BadHeader { message, .. }), Ok(_))
            if message == "duplicate key" || message.contains("too large") => {}
        (Err(e), Ok(_)) => panic!("kiln refuses what the reference accepts: {e}"),
        (Ok(_), Err(e)) => panic!("kiln accepts what the reference refuses: {e:?}"),
    }
}

// ------------------------------------------------------------------ inputs

/// Valid files to mutate: kiln's own (F32, F64 and an I64 counter) and the reference's
/// (every integer and half dtype, empty tensors, metadata).
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-st-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seed.safetensors");
        let mut out = Vec::new();
        let mut sd: StateDict<f32> = StateDict::new();
        sd.insert("0.weight".into(), Tensor::from_vec((0..12).map(|i| i as f32 * 0.5).collect(), &[3, 4]));
        sd.insert("0.bias".into(), Tensor::from_vec(vec![1.0, -1.0, 0.0], &[3]));
        sd.insert("1.num_batches_tracked".into(), Tensor::scalar(4.0));
        save_state_dict(&sd, &path, &Metadata::new()).unwrap();
        out.push(std::fs::read(&path).unwrap());
        let mut sd64: StateDict<f64> = StateDict::new();
        sd64.insert("x".into(), Tensor::from_vec(vec![0.25; 6], &[2, 1, 3]));
        sd64.insert("empty".into(), Tensor::zeros(&[0, 5]));
        save_state_dict(&sd64, &path, &Metadata::new()).unwrap();
        out.push(std::fs::read(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();

        use safetensors::tensor::TensorView;
        use safetensors::Dtype as D;
        let data: Vec<u8> = (0u8..=255).collect();
        let views = vec![
            ("b", TensorView::new(D::BOOL, vec![3], &data[..3]).unwrap()),
            ("u8", TensorView::new(D::U8, vec![2, 2], &data[..4]).unwrap()),
            ("i16", TensorView::new(D::I16, vec![3], &data[..6]).unwrap()),
            ("h", TensorView::new(D::F16, vec![2, 2], &data[8..16]).unwrap()),
            ("bf", TensorView::new(D::BF16, vec![4], &data[16..24]).unwrap()),
            ("i32", TensorView::new(D::I32, vec![2], &data[24..32]).unwrap()),
            ("u64", TensorView::new(D::U64, vec![1], &data[32..40]).unwrap()),
            ("f8", TensorView::new(D::F8_E4M3, vec![2], &data[40..42]).unwrap()),
            ("nothing", TensorView::new(D::F32, vec![0], &data[..0]).unwrap()),
        ];
        let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
        out.push(safetensors::serialize(views, &Some(meta)).unwrap());
        out
    })
}

/// One edit of a seed file. The `Header*` and `Data*` edits keep the header length in step
/// with the edited header, so that they reach the JSON and offset checks rather than stopping
/// at the length check.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite one byte anywhere.
    Set(usize, u8),
    /// Flip one bit anywhere.
    Flip(usize, u8),
    /// Cut the file.
    Truncate(usize),
    /// Replace the header length.
    HeaderLen(u64),
    /// Overwrite one header byte.
    HeaderSet(usize, u8),
    /// Replace an ASCII digit of the header (shapes and offsets) with another.
    HeaderDigit(usize, u8),
    /// Insert bytes into the header (a digit makes a number larger).
    HeaderInsert(usize, Vec<u8>),
    /// Delete up to 8 header bytes.
    HeaderDelete(usize, usize),
    /// Cut the data section.
    DataTruncate(usize),
    /// Insert bytes into the data section.
    DataInsert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let insert = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        prop::collection::vec(b'0'..=b'9', 1..4),
        prop::sample::select(vec![
            b",".to_vec(),
            b"[".to_vec(),
            b"]".to_vec(),
            b"\"".to_vec(),
            b"-".to_vec(),
            b" ".to_vec()
        ]),
    ];
    prop_oneof![
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop_oneof![any::<u64>(), 0u64..512].prop_map(Mutation::HeaderLen),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::HeaderSet(i, b)),
        3 => (any::<usize>(), b'0'..=b'9').prop_map(|(i, d)| Mutation::HeaderDigit(i, d)),
        2 => (any::<usize>(), insert).prop_map(|(i, v)| Mutation::HeaderInsert(i, v)),
        1 => (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::HeaderDelete(i, n)),
        1 => any::<usize>().prop_map(Mutation::DataTruncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::DataInsert(i, v)),
    ]
}

/// The header and data of a file whose header length fits, else `None`.
fn split(b: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let n = usize::try_from(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)).ok()?;
    let end = n.checked_add(8).filter(|&e| e <= b.len())?;
    Some((b[8..end].to_vec(), b[end..].to_vec()))
}

fn join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    b
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = b.len().max(1);
    let parts = split(&b);
    match (m, parts) {
        (Mutation::Set(i, v), _) if !b.is_empty() => b[i % n] = *v,
        (Mutation::Flip(i, bit), _) if !b.is_empty() => b[i % n] ^= 1 << bit,
        (Mutation::Truncate(i), _) => b.truncate(i % n),
        (Mutation::HeaderLen(len), _) if b.len() >= 8 => b[..8].copy_from_slice(&len.to_le_bytes()),
        (Mutation::HeaderSet(i, v), Some((mut h, d))) if !h.is_empty() => {
            let k = i % h.len();
            h[k] = *v;
            b = join(&h, &d);
        }
        (Mutation::HeaderDigit(i, digit), Some((mut h, d))) => {
            let digits: Vec<usize> = (0..h.len()).filter(|&j| h[j].is_ascii_digit()).collect();
            if !digits.is_empty() {
                h[digits[i % digits.len()]] = *digit;
            }
            b = join(&h, &d);
        }
        (Mutation::HeaderInsert(i, v), Some((mut h, d))) => {
            let at = i % (h.len() + 1);
            h.splice(at..at, v.iter().copied());
            b = join(&h, &d);
        }
        (Mutation::HeaderDelete(i, k), Some((mut h, d))) if !h.is_empty() => {
            let at = i % h.len();
            h.drain(at..(at + k).min(h.len()));
            b = join(&h, &d);
        }
        (Mutation::DataTruncate(i), Some((h, mut d))) => {
            d.truncate(i % (d.len() + 1));
            b = join(&h, &d);
        }
        (Mutation::DataInsert(i, v), Some((h, mut d))) => {
            let at = i % (d.len() + 1);
            d.splice(at..at, v.iter().copied());
            b = join(&h, &d);
        }
        _ => {}
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_plausible_header_length(body in prop::collection::vec(any::<u8>(), 0..256), extra in 0usize..32) {
        let len = body.len().saturating_sub(extra) as u64;
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        check(&bytes);
    }

    #[test]
    fn mutated_valid_files(seed in 0usize..3, edits in prop::collection::vec(mutation(), 1..4)) {
        let bytes = edits.iter().fold(seeds()[seed].clone(), apply);
        check(&bytes);
    }
}

#[test]
fn seeds_are_valid_and_agree_with_the_reference() {
    for s in seeds() {
        check(s);
        assert!(read_all(s).is_ok());
    }
    // The meter sees the reader's allocations (at least its copy of the input).
    let (_, peak) = peak_bytes(|| read_all(&seeds()[0]));
    assert!(peak >= seeds()[0].len(), "{peak}");
    let f = SafetensorsFile::from_bytes(seeds()[2].clone()).unwrap();
    assert_eq!(f.info("f8").unwrap().dtype, Dtype::F8E4M3);
    assert!(matches!(f.tensor::<f32>("f8"), Err(NnError::WrongDtype { .. })));
    assert!(matches!(f.tensor_i64("u64"), Err(NnError::WrongDtype { .. })));
    assert_eq!(f.tensor_i64("i16").unwrap().0, [0x0100, 0x0302, 0x0504]);
}

/// Forged headers that claim huge sizes are refused with little memory held.
#[test]
fn forged_sizes_allocate_nothing_large() {
    let forged = [
        r#"{"a": {"dtype": "F64", "shape": [536870912], "data_offsets": [0, 4294967296]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 8]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [0, 4611686018427387904], "data_offsets": [0, 0]}}"#,
        r#"{"a": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 18446744073709551615]}}"#,
        r#"{"a": {"dtype": "U8", "shape": [8], "data_offsets": [9223372036854775808, 9223372036854775816]}}"#,
    ];
    for header in forged {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 8]);
        let (r, peak) = peak_bytes(|| SafetensorsFile::from_bytes(bytes.clone()).map(|f| f.len()));
        assert!(r.is_err(), "{header}");
        assert!(peak < 16 * 1024, "{header}: held {peak} bytes");
        check(&bytes);
    }
}
