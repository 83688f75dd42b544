//! # kiln-pickle
//!
//! Python pickles read without executing anything, and the zip archives that carry them.
//!
//! - [`parse`] runs the pickle machine over a closed set of opcodes (protocols 0 to 5 as far
//!   as data goes) and returns an inert [`Pickle`]: globals are names, calls are records that
//!   are never made. With [`Options::allow_global`] it refuses any global outside an
//!   allow-list the moment the pickle names it, which is what `torch.load(weights_only=True)`
//!   does; kiln-nn's PyTorch checkpoint reader builds on that.
//! - [`zip`] reads zip archives (stored and deflated members, zip64) from a byte slice, as
//!   numpy's `.npz` and PyTorch's `torch.save` write them.
//! - [`dumps`] writes a [`Term`] tree as a protocol-2 pickle, and
//!   [`zip_writer::ZipWriter`] writes stored, 64-byte-aligned zip archives: together what
//!   kiln-nn needs to write checkpoints `torch.load(weights_only=True)` reads.
//!
//! Both check every length and offset against the bytes that are there, so forged input is a
//! typed [`PickleError`] with a byte offset, never a panic or an allocation larger than the
//! input.
//!
//! ```
//! use kiln_pickle::{parse, Options, Value};
//! // pickle.dumps((1, None, True), protocol=2)
//! let p = parse(b"\x80\x02K\x01N\x88\x87q\x00.", &Options::default()).unwrap();
//! assert_eq!(p.tuple(p.root()), Some(&[Value::Int(1), Value::None, Value::Bool(true)][..]));
//! ```

mod error;
mod machine;
mod writer;
pub mod zip;
pub mod zip_writer;

pub use error::{PickleError, Result};
pub use machine::{parse, AllowGlobal, Object, Options, Pickle, Value};
pub use writer::{dumps, Term};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn allow_collections(m: &str, _: &str) -> bool {
        m == "collections"
    }

    #[test]
    fn allow_list_applies_to_both_global_opcodes() {
        let opts = Options { allow_global: Some(allow_collections), ..Options::default() };
        // GLOBAL 'collections OrderedDict' () REDUCE
        let ok = b"\x80\x02ccollections\nOrderedDict\n)R.";
        let p = parse(ok, &opts).unwrap();
        match p.object(p.root()) {
            Some(Object::Call { func, .. }) => assert!(p.global_is(*func, &["collections"], "OrderedDict")),
            other => panic!("{other:?}"),
        }
        // STACK_GLOBAL 'builtins' 'eval', refused at the opcode (offset of 0x93).
        let evil = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert_eq!(
            parse(evil, &opts).unwrap_err(),
            PickleError::ForbiddenGlobal { offset: 18, module: "builtins".into(), name: "eval".into() }
        );
        // Without an allow-list the same name is inert data.
        let p = parse(evil, &Options::default()).unwrap();
        assert_eq!(p.global(p.root()), Some(("builtins", "eval")));
    }

    #[test]
    fn persistent_ids_big_ints_and_trailing_data() {
        // ('storage', 5) BINPERSID, then a 10-byte LONG1 (PyTorch's legacy magic number).
        let mut data = b"\x80\x02X\x07\x00\x00\x00storageK\x05\x86Q.".to_vec();
        let p = parse(&data, &Options::default()).unwrap();
        let Some(Object::PersistentId(pid)) = p.object(p.root()) else { panic!() };
        assert_eq!(p.tuple(*pid).map(|t| t.len()), Some(2));
        let magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        data.extend_from_slice(magic);
        assert!(matches!(parse(&data, &Options::default()), Err(PickleError::Format { .. })));
        let first = parse(&data, &Options { trailing_data: true, ..Options::default() }).unwrap();
        let second = parse(&data[first.len()..], &Options::default()).unwrap();
        match second.object(second.root()) {
            Some(Object::BigInt(b)) => assert_eq!(b, &[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]),
            other => panic!("{other:?}"),
        }
        assert_eq!(second.describe(second.root()), "a 10-byte integer");
    }

    #[test]
    fn truncation_and_misuse_are_errors() {
        assert_eq!(
            parse(b"\x80\x02K", &Options::default()).unwrap_err(),
            PickleError::Truncated { expected: 4, found: 3 }
        );
        assert!(matches!(parse(b"0", &Options::default()), Err(PickleError::Format { offset: 0, .. })));
        assert!(matches!(parse(b"h\x05.", &Options::default()), Err(PickleError::Format { .. })));
        assert!(matches!(parse(b"i", &Options::default()), Err(PickleError::Format { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Random bytes (mostly opcodes) never panic, and what parses read no more than exists.
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(
            prop_oneof![
                Just(b'('), Just(b'K'), Just(b'X'), Just(b'q'), Just(b'h'), Just(b't'), Just(b'R'),
                Just(b'b'), Just(b'Q'), Just(b'.'), Just(b'}'), Just(b']'), Just(b'e'), Just(b'u'),
                Just(b'c'), Just(0x8a), Just(0x93), Just(b'\n'), any::<u8>()
            ], 0..200)) {
            let opts = Options { allow_global: Some(allow_collections), trailing_data: true };
            if let Ok(p) = parse(&data, &opts) {
                prop_assert!(p.len() <= data.len());
                prop_assert!(p.objects().len() <= data.len());
            }
            let _ = zip::read_directory(&data);
        }
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
