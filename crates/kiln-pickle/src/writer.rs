//! Writing pickles: a value tree ([`Term`]) serialised with protocol 2, the protocol
//! `torch.save` uses, with only the opcodes the tree needs.
//!
//! The writer emits no memo (`BINPUT`/`BINGET`): every term is written where it stands, so a
//! term used twice is two objects in Python. Globals are written with `GLOBAL` (protocol 2
//! has no `STACK_GLOBAL`).

/// A value to pickle.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int`.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` (written as `_codecs.encode(text, 'latin1')`, as Python's protocol 2 does).
    Bytes(Vec<u8>),
    /// A `tuple`.
    Tuple(Vec<Term>),
    /// A `list`.
    List(Vec<Term>),
    /// A `dict`, in order.
    Dict(Vec<(Term, Term)>),
    /// A global name, `module.name` (`GLOBAL`).
    Global {
        /// The module (`collections`).
        module: String,
        /// The name in it (`OrderedDict`).
        name: String,
    },
    /// `func(*args)` (`REDUCE`), then `items` set on the result (`SETITEMS`), as an
    /// `OrderedDict` is pickled.
    Call {
        /// What is called (usually a [`Term::Global`]).
        func: Box<Term>,
        /// The positional arguments.
        args: Vec<Term>,
        /// Pairs set on the result with `SETITEMS`.
        items: Vec<(Term, Term)>,
    },
    /// A persistent id (`BINPERSID`): the unpickler's `persistent_load` resolves it.
    PersistentId(Box<Term>),
}

impl Term {
    /// A `str` term.
    pub fn str(s: impl Into<String>) -> Term {
        Term::Str(s.into())
    }

    /// A global term `module.name`.
    pub fn global(module: impl Into<String>, name: impl Into<String>) -> Term {
        Term::Global { module: module.into(), name: name.into() }
    }

    /// `func(*args)`.
    pub fn call(func: Term, args: Vec<Term>) -> Term {
        Term::Call { func: Box::new(func), args, items: Vec::new() }
    }
}

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const EMPTY_LIST: u8 = b']';
const APPENDS: u8 = b'e';
const EMPTY_DICT: u8 = b'}';
const SETITEMS: u8 = b'u';
const GLOBAL: u8 = b'c';
const REDUCE: u8 = b'R';
const BINPERSID: u8 = b'Q';

/// Pickles `term` with protocol 2 (what `pickle.dumps(value, protocol=2)` would accept back
/// as the same value).
///
/// ```
/// use kiln_pickle::{dumps, parse, Options, Term, Value};
/// let bytes = dumps(&Term::Tuple(vec![Term::Int(1), Term::None, Term::Bool(true)]));
/// assert_eq!(bytes, b"\x80\x02K\x01N\x88\x87.");
/// let p = parse(&bytes, &Options::default()).unwrap();
/// assert_eq!(p.tuple(p.root()), Some(&[Value::Int(1), Value::None, Value::Bool(true)][..]));
/// ```
///
/// # Panics
/// When a [`Term::Global`] names a module or name containing a newline (which `GLOBAL`
/// cannot encode): a programming error, not input.
pub fn dumps(term: &Term) -> Vec<u8> {
    let mut out = vec![PROTO, 2];
    write_term(&mut out, term);
    out.push(STOP);
    out
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(BINUNICODE);
    out.extend_from_slice(&u32::try_from(s.len()).expect("pickle: str longer than 4 GiB").to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if (0..0x100).contains(&i) {
        out.extend_from_slice(&[BININT1, i as u8]);
    } else if (0..0x1_0000).contains(&i) {
        out.push(BININT2);
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if let Ok(v) = i32::try_from(i) {
        out.push(BININT);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        // LONG1: the shortest little-endian two's-complement encoding.
        let bytes = i.to_le_bytes();
        let mut n = 8;
        while n > 1 {
            let (last, prev) = (bytes[n - 1], bytes[n - 2]);
            if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[LONG1, n as u8]);
        out.extend_from_slice(&bytes[..n]);
    }
}

fn write_items(out: &mut Vec<u8>, items: &[(Term, Term)]) {
    // Python batches SETITEMS by 1000; one batch per call is equally valid.
    if items.is_empty() {
        return;
    }
    out.push(MARK);
    for (k, v) in items {
        write_term(out, k);
        write_term(out, v);
    }
    out.push(SETITEMS);
}

fn write_tuple(out: &mut Vec<u8>, items: &[Term]) {
    match items.len() {
        0 => out.push(EMPTY_TUPLE),
        1..=3 => {
            items.iter().for_each(|t| write_term(out, t));
            out.push([TUPLE1, TUPLE2, TUPLE3][items.len() - 1]);
        }
        _ => {
            out.push(MARK);
            items.iter().for_each(|t| write_term(out, t));
            out.push(TUPLE);
        }
    }
}

fn write_term(out: &mut Vec<u8>, term: &Term) {
    match term {
        Term::None => out.push(NONE),
        Term::Bool(b) => out.push(if *b { NEWTRUE } else { NEWFALSE }),
        Term::Int(i) => write_int(out, *i),
        Term::Float(f) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Term::Str(s) => write_str(out, s),
        Term::Bytes(b) => {
            // Protocol 2 has no bytes opcode: Python writes _codecs.encode(latin-1 text, 'latin1').
            let text: String = b.iter().map(|&c| char::from(c)).collect();
            let call = Term::call(Term::global("_codecs", "encode"), vec![Term::Str(text), Term::str("latin1")]);
            write_term(out, &call);
        }
        Term::Tuple(items) => write_tuple(out, items),
        Term::List(items) => {
            out.push(EMPTY_LIST);
            if !items.is_empty() {
                out.push(MARK);
                items.iter().for_each(|t| write_term(out, t));
                out.push(APPENDS);
            }
        }
        Term::Dict(items) => {
            out.push(EMPTY_DICT);
            write_items(out, items);
        }
        Term::Global { module, name } => {
            assert!(
                !module.contains('\n') && !name.contains('\n'),
                "pickle: GLOBAL cannot encode a newline in {module:?}.{name:?}"
            );
            out.push(GLOBAL);
            out.extend_from_slice(module.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
        }
        Term::Call { func, args, items } => {
            write_term(out, func);
            write_tuple(out, args);
            out.push(REDUCE);
            write_items(out, items);
        }
        Term::PersistentId(pid) => {
            write_term(out, pid);
            out.push(BINPERSID);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Object, Options, Value};

    #[test]
    fn ints_use_the_shortest_opcode_and_read_back() {
        for (i, expected) in [
            (0i64, &b"K\x00"[..]),
            (255, b"K\xff"),
            (256, b"M\x00\x01"),
            (65535, b"M\xff\xff"),
            (65536, b"J\x00\x00\x01\x00"),
            (-1, b"J\xff\xff\xff\xff"),
            (i64::from(i32::MAX) + 1, b"\x8a\x05\x00\x00\x00\x80\x00"),
            (i64::MIN, b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80"),
            (-(1i64 << 40), b"\x8a\x06\x00\x00\x00\x00\x00\xff"),
        ] {
            let bytes = dumps(&Term::Int(i));
            assert_eq!(&bytes[2..bytes.len() - 1], expected, "{i}");
            let p = parse(&bytes, &Options::default()).unwrap();
            match (p.root(), p.object(p.root())) {
                (Value::Int(v), _) => assert_eq!(v, i),
                (_, Some(Object::BigInt(b))) => {
                    let mut a = [if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                    a[..b.len()].copy_from_slice(b);
                    assert_eq!(i64::from_le_bytes(a), i);
                }
                other => panic!("{i}: {other:?}"),
            }
        }
    }

    #[test]
    fn containers_calls_and_persistent_ids_read_back() {
        let od = Term::Call {
            func: Box::new(Term::global("collections", "OrderedDict")),
            args: vec![],
            items: vec![(Term::str("w"), Term::PersistentId(Box::new(Term::Tuple(vec![Term::str("storage")]))))],
        };
        let term = Term::Tuple(vec![
            od,
            Term::List(vec![Term::Float(2.5), Term::None]),
            Term::Dict(vec![(Term::str("k"), Term::Bool(false))]),
            Term::Tuple(vec![Term::Int(1), Term::Int(2), Term::Int(3), Term::Int(4)]),
            Term::Bytes(vec![0, 200, 255]),
        ]);
        let bytes = dumps(&term);
        let allow = Options {
            allow_global: Some(|m, n| (m, n) == ("collections", "OrderedDict") || m == "_codecs"),
            ..Options::default()
        };
        let p = parse(&bytes, &allow).unwrap();
        let top = p.tuple(p.root()).unwrap();
        assert_eq!(top.len(), 5);
        let Some(Object::Call { func, args, items, .. }) = p.object(top[0]) else { panic!() };
        assert!(p.global_is(*func, &["collections"], "OrderedDict"));
        assert_eq!(p.tuple(*args), Some(&[][..]));
        assert_eq!(p.text(items[0].0), Some("w"));
        let Some(Object::PersistentId(pid)) = p.object(items[0].1) else { panic!() };
        assert_eq!(p.tuple(*pid).map(|t| p.text(t[0])), Some(Some("storage")));
        assert_eq!(p.list(top[1]), Some(&[Value::Float(2.5), Value::None][..]));
        assert_eq!(p.dict(top[2]).map(|d| (p.text(d[0].0), d[0].1)), Some((Some("k"), Value::Bool(false))));
        assert_eq!(p.tuple(top[3]), Some(&[Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(4)][..]));
        let Some(Object::Call { func, args, .. }) = p.object(top[4]) else { panic!() };
        assert!(p.global_is(*func, &["_codecs"], "encode"));
        assert_eq!(
            p.tuple(*args).map(|a| p.text(a[0]).map(|s| s.chars().map(|c| c as u32).collect::<Vec<_>>())),
            Some(Some(vec![0, 200, 255]))
        );
    }

    #[test]
    fn empty_containers() {
        let bytes = dumps(&Term::Tuple(vec![Term::List(vec![]), Term::Dict(vec![]), Term::Tuple(vec![])]));
        assert_eq!(bytes, b"\x80\x02]})\x87.");
    }

    #[test]
    #[should_panic(expected = "GLOBAL cannot encode a newline")]
    fn newline_in_global_is_a_programming_error() {
        let _ = dumps(&Term::global("os\nx", "y"));
    }
}
