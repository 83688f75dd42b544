//! The object arrays that `numpy.save` writes for arrays of Python lists (Keras' `imdb.npz`,
//! `reuters.npz`), read through kiln-pickle's non-executing pickle machine.
//!
//! The machine ([`kiln_pickle::parse`]) builds inert values: a `GLOBAL` is a name, a `REDUCE` or
//! `NEWOBJ` a record of "call this with these arguments" that is never called. The result is
//! accepted only when it has one of two shapes:
//!
//! 1. what `numpy.save` writes for an object array: `numpy.core.multiarray._reconstruct` (or
//!    `numpy._core.multiarray._reconstruct`) applied to `(numpy.ndarray, ...)`, then `BUILD` with
//!    the state `(version, shape, dtype('O8'), is_fortran, [item, ...])` (the 4-tuple without
//!    `version` too);
//! 2. the plain form: a pickled `list` of items.
//!
//! Each item must be a list or tuple of Python integers (each fitting in 64 bits).
//!
//! Opcodes supported (protocols 0-5 as far as these go): `PROTO`, `FRAME`, `STOP`, `MARK`, `POP`,
//! `POP_MARK`, `DUP`, `NONE`, `NEWTRUE`, `NEWFALSE`, `INT`, `BININT`, `BININT1`, `BININT2`,
//! `LONG1`, `LONG4`, `BINFLOAT`, `BINUNICODE`, `SHORT_BINUNICODE`, `BINUNICODE8`,
//! `SHORT_BINBYTES`, `BINBYTES`, `BINBYTES8`, `SHORT_BINSTRING`, `BINSTRING`, `EMPTY_TUPLE`,
//! `TUPLE`, `TUPLE1`, `TUPLE2`, `TUPLE3`, `EMPTY_LIST`, `APPEND`, `APPENDS`, `LIST`,
//! `EMPTY_DICT`, `DICT`, `SETITEM`, `SETITEMS`, `GLOBAL`, `STACK_GLOBAL`, `REDUCE`, `BUILD`,
//! `NEWOBJ`, `PUT`, `BINPUT`, `LONG_BINPUT`, `MEMOIZE`, `GET`, `BINGET`, `LONG_BINGET`. That covers
//! what CPython 2.7 and 3.x write for these arrays with protocols 2 to 5 (numpy < 1.17 used
//! protocol 2, later 3, numpy 2 uses 4). Any other opcode is a typed error.
//!
//! Bounds: every value is built from bytes that are in the input (lengths are checked against
//! what is left before anything is copied), the memo and stacks grow by at most one entry per
//! opcode byte, values live in an arena (no recursion, so no stack overflow on deep nesting), and
//! the item lists copied out may not hold more integers in total than the pickle has bytes (a
//! genuine pickle needs at least two bytes per integer), so lists shared through the memo cannot
//! amplify a small file into a large allocation.

use std::path::{Path, PathBuf};

use kiln_pickle::{Object, Options, Pickle, PickleError, Value};

use crate::error::{DataError, Result};

/// What the pickle of an object array holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ObjectArray {
    /// The shape from the ndarray state, `None` for the plain list form.
    pub shape: Option<Vec<usize>>,
    /// The ndarray's `is_fortran` flag (false for the plain form).
    pub fortran_order: bool,
    /// The items, in the pickle's order.
    pub items: Vec<Vec<i64>>,
}

/// A kiln-pickle error inside the file `path`, whose pickle starts at byte `base`.
pub(crate) fn data_error(path: &Path, base: u64, e: PickleError) -> DataError {
    let path = path.to_path_buf();
    match e {
        PickleError::Truncated { expected, found } => {
            DataError::Truncated { path, expected: base.saturating_add(expected), found: base + found }
        }
        PickleError::Format { offset, expected, found } => DataError::format(path, base + offset, expected, found),
        PickleError::BadMagic { expected, found } => DataError::BadMagic { path, expected, found },
        PickleError::ForbiddenGlobal { offset, module, name } => {
            DataError::format(path, base + offset, "an allowed global", format!("{module}.{name}"))
        }
    }
}

struct Reader<'a> {
    p: Pickle,
    path: &'a Path,
    base: u64,
    len: usize,
}

/// Parses the pickle `data` (found at byte `base` of the file `path`) as an object array.
pub(crate) fn read_object_array(path: &Path, base: u64, data: &[u8]) -> Result<ObjectArray> {
    let p = kiln_pickle::parse(data, &Options::default()).map_err(|e| data_error(path, base, e))?;
    let root = p.root();
    Reader { p, path, base, len: data.len() }.interpret(root)
}

const NUMPY_MULTIARRAY: [&str; 2] = ["numpy.core.multiarray", "numpy._core.multiarray"];

impl Reader<'_> {
    fn err(&self, at: usize, expected: impl Into<String>, found: impl Into<String>) -> DataError {
        DataError::format(PathBuf::from(self.path), self.base + at as u64, expected, found)
    }

    fn interpret(&self, root: Value) -> Result<ObjectArray> {
        let end = self.len;
        let shape_err = |what: &str, found: String| self.err(end, what.to_string(), found);
        let (shape, fortran_order, list) = match root {
            Value::Obj(i) => match &self.p.objects()[i] {
                Object::List(_) => (None, false, root),
                Object::Call { func, args, state, .. } => {
                    let expected = "numpy's ndarray pickle: _reconstruct(ndarray, ...) with a \
                                    (version, shape, dtype, is_fortran, list) state";
                    if !self.p.global_is(*func, &NUMPY_MULTIARRAY, "_reconstruct")
                        || !self
                            .p
                            .tuple(*args)
                            .and_then(|a| a.first())
                            .is_some_and(|&c| self.p.global_is(c, &["numpy"], "ndarray"))
                    {
                        return Err(shape_err(expected, self.p.describe(root)));
                    }
                    let Some(state) = state.and_then(|s| self.p.tuple(s)) else {
                        return Err(shape_err(expected, "no BUILD state".into()));
                    };
                    let state = match state.len() {
                        5 => &state[1..],
                        4 => state,
                        n => return Err(shape_err(expected, format!("a state of {n} values"))),
                    };
                    let shape = self
                        .p
                        .tuple(state[0])
                        .and_then(|t| {
                            t.iter()
                                .map(|&d| match d {
                                    Value::Int(n) => usize::try_from(n).ok(),
                                    _ => None,
                                })
                                .collect::<Option<Vec<usize>>>()
                        })
                        .ok_or_else(|| {
                            shape_err("a shape tuple of non-negative integers", self.p.describe(state[0]))
                        })?;
                    // dtype('O8', ...): the array must hold Python objects.
                    let descr = match state[1] {
                        Value::Obj(d) => match &self.p.objects()[d] {
                            Object::Call { func, args, .. } if self.p.global_is(*func, &["numpy"], "dtype") => self
                                .p
                                .tuple(*args)
                                .and_then(|a| a.first())
                                .and_then(|&s| self.p.text(s).map(str::to_owned)),
                            _ => None,
                        },
                        _ => None,
                    };
                    if !matches!(descr.as_deref(), Some("O" | "O4" | "O8")) {
                        return Err(shape_err(
                            "an object dtype (numpy.dtype('O8'))",
                            descr.unwrap_or_else(|| self.p.describe(state[1])),
                        ));
                    }
                    let fortran = match state[2] {
                        Value::Bool(b) => b,
                        Value::Int(n) => n != 0,
                        other => return Err(shape_err("a boolean is_fortran", self.p.describe(other))),
                    };
                    (Some(shape), fortran, state[3])
                }
                _ => return Err(shape_err("a pickled numpy object array or list", self.p.describe(root))),
            },
            other => return Err(shape_err("a pickled numpy object array or list", self.p.describe(other))),
        };
        let items = match list {
            Value::Obj(i) => match &self.p.objects()[i] {
                Object::List(l) => l,
                _ => return Err(shape_err("a list of the array's items", self.p.describe(list))),
            },
            other => return Err(shape_err("a list of the array's items", self.p.describe(other))),
        };
        if let Some(shape) = &shape {
            let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if count != Some(items.len()) {
                return Err(shape_err(&format!("{shape:?} items"), format!("{}", items.len())));
            }
        }
        // Every integer copied out must have cost the pickle at least one byte (two in fact),
        // so shared lists cannot amplify the input.
        let budget = self.len;
        let mut total = 0usize;
        let mut out = Vec::with_capacity(items.len());
        for (k, &item) in items.iter().enumerate() {
            let values: &[Value] = match item {
                Value::Obj(i) => match &self.p.objects()[i] {
                    Object::List(l) => l,
                    Object::Tuple(t) => t,
                    _ => &[],
                },
                _ => &[],
            };
            let is_seq =
                matches!(item, Value::Obj(i) if matches!(self.p.objects()[i], Object::List(_) | Object::Tuple(_)));
            if !is_seq {
                return Err(shape_err(&format!("item {k} to be a list of integers"), self.p.describe(item)));
            }
            total += values.len();
            if total > budget {
                return Err(shape_err(
                    &format!("at most {budget} integers in {budget} bytes of pickle"),
                    format!("more, through lists shared by item {k}"),
                ));
            }
            let seq = values
                .iter()
                .enumerate()
                .map(|(j, &v)| match v {
                    Value::Int(n) => Ok(n),
                    other => Err(shape_err(
                        &format!("integers in item {k}"),
                        format!("element {j}: {}", self.p.describe(other)),
                    )),
                })
                .collect::<Result<Vec<i64>>>()?;
            out.push(seq);
        }
        Ok(ObjectArray { shape, fortran_order, items: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<ObjectArray> {
        read_object_array(Path::new("t.npy"), 100, bytes)
    }

    /// `pickle.dumps(np.array([[1, 14, 2**40], [5, -6]], dtype=object), protocol=2)` from
    /// numpy 2.4 (with `_codecs.encode` for the bytes argument, as Python 3 writes protocol 2).
    const PROTOCOL2: &[u8] = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02c_codecs\nencode\nq\x03X\x01\x00\x00\x00bq\x04X\x06\x00\x00\x00latin1q\x05\x86q\x06Rq\x07\x87q\x08Rq\t(K\x01K\x02\x85q\ncnumpy\ndtype\nq\x0bX\x02\x00\x00\x00O8q\x0c\x89\x88\x87q\rRq\x0e(K\x03X\x01\x00\x00\x00|q\x0fNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tq\x10b\x89]q\x11(]q\x12(K\x01K\x0e\x8a\x06\x00\x00\x00\x00\x00\x01e]q\x13(K\x05J\xfa\xff\xff\xffeetq\x14b.";

    #[test]
    fn numpy_protocol2_object_array() {
        let a = read(PROTOCOL2).unwrap();
        assert_eq!(a.shape, Some(vec![2]));
        assert!(!a.fortran_order);
        assert_eq!(a.items, vec![vec![1, 14, 1 << 40], vec![5, -6]]);
    }

    #[test]
    fn plain_list_and_errors() {
        // protocol 4: [[1, 2], [300]]
        let plain = b"\x80\x04\x95\x0f\x00\x00\x00\x00\x00\x00\x00]\x94(]\x94(K\x01K\x02e]\x94M,\x01ae.";
        let a = read(plain).unwrap();
        assert_eq!((a.shape, a.items), (None, vec![vec![1, 2], vec![300]]));
        // Truncated: no STOP.
        assert!(matches!(read(&plain[..plain.len() - 1]), Err(DataError::Truncated { .. })));
        // An opcode outside the set (INST 'i'), with its offset.
        match read(b"\x80\x02i") {
            Err(DataError::Format { offset: 102, found, .. }) => assert!(found.contains("0x69")),
            other => panic!("{other:?}"),
        }
        // A string longer than the data left: truncated, nothing allocated.
        assert!(matches!(read(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"), Err(DataError::Truncated { .. })));
        // A BINUNICODE8 / BINBYTES8 length of 2^64 - 1: truncated, without overflowing the
        // offset arithmetic (a `cargo fuzz` finding).
        for op in [0x8d, 0x8e] {
            let mut p = vec![0x80, 4, op];
            p.extend(u64::MAX.to_le_bytes());
            match read(&p) {
                Err(DataError::Truncated { expected, found, .. }) => {
                    assert_eq!((expected, found), (u64::MAX, 111));
                }
                other => panic!("{other:?}"),
            }
        }
        // Not a list of integer lists.
        assert!(matches!(read(b"]K\x01a."), Err(DataError::Format { .. })));
        // A list shared a thousand times through the memo: more integers than bytes.
        let mut amp = b"](]q\x00(".to_vec();
        amp.extend(std::iter::repeat_n(*b"K\x07", 200).flatten());
        amp.push(b'e');
        amp.extend(std::iter::repeat_n(*b"h\x00", 1000).flatten());
        amp.extend(b"e.");
        match read(&amp) {
            Err(DataError::Format { found, .. }) => assert!(found.contains("shared"), "{found}"),
            other => panic!("{other:?}"),
        }
        // Integers beyond 64 bits.
        assert!(matches!(read(b"](]\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01aa."), Err(DataError::Format { .. })));
        // Stack underflow and a BUILD on a list.
        assert!(matches!(read(b"a"), Err(DataError::Format { .. })));
        assert!(matches!(read(b"]]b."), Err(DataError::Format { .. })));
    }
}
