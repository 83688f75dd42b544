//! A minimal, non-executing pickle reader for the object arrays that `numpy.save` writes for
//! arrays of Python lists (Keras' `imdb.npz`, `reuters.npz`).
//!
//! The reader runs the pickle machine over a closed set of opcodes and builds inert values: a
//! `GLOBAL` is a name, a `REDUCE` or `NEWOBJ` a record of "call this with these arguments" that is
//! never called. The result is accepted only when it has one of two shapes:
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// A value on the pickle machine's stack; compound values are indices into the arena.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

/// A compound value.
#[derive(Debug)]
enum Obj {
    Text(String),
    Bytes(Vec<u8>),
    List(Vec<Val>),
    Tuple(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global {
        module: String,
        name: String,
    },
    /// `func(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ), never called; `state` from BUILD.
    Call {
        func: Val,
        args: Val,
        state: Option<Val>,
    },
}

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

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Offset of `data[0]` in the file, for error offsets.
    base: u64,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<u64, Val>,
    objs: Vec<Obj>,
}

/// Parses the pickle `data` (found at byte `base` of the file `path`) as an object array.
pub(crate) fn read_object_array(path: &Path, base: u64, data: &[u8]) -> Result<ObjectArray> {
    let mut m = Machine {
        data,
        pos: 0,
        path,
        base,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objs: Vec::new(),
    };
    let root = m.run()?;
    m.interpret(root)
}

const NUMPY_MULTIARRAY: [&str; 2] = ["numpy.core.multiarray", "numpy._core.multiarray"];

impl Machine<'_> {
    fn err(&self, at: usize, expected: impl Into<String>, found: impl Into<String>) -> DataError {
        DataError::format(PathBuf::from(self.path), self.base + at as u64, expected, found)
    }

    fn take(&mut self, n: u64) -> Result<&[u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(DataError::Truncated {
                path: self.path.to_path_buf(),
                // Saturating: `n` is an untrusted 64-bit length (found by `cargo fuzz`).
                expected: (self.base + self.pos as u64).saturating_add(n),
                found: self.base + self.data.len() as u64,
            });
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    /// A `\n`-terminated line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> Result<&[u8]> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(DataError::Truncated {
                path: self.path.to_path_buf(),
                expected: self.base + self.data.len() as u64 + 1,
                found: self.base + self.data.len() as u64,
            });
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn alloc(&mut self, obj: Obj) -> Val {
        self.objs.push(obj);
        Val::Obj(self.objs.len() - 1)
    }

    fn pop(&mut self, op_at: usize) -> Result<Val> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(op_at, "a value on the pickle stack", "an empty stack"));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self, op_at: usize) -> Result<Val> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(op_at, "a value on the pickle stack", "an empty stack"));
        }
        Ok(*self.stack.last().expect("checked"))
    }

    /// Pops everything down to the last MARK (and the mark).
    fn pop_mark(&mut self, op_at: usize) -> Result<Vec<Val>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err(op_at, "a MARK before this opcode", "none"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn text(&self, v: Val) -> Option<String> {
        match v {
            Val::Obj(i) => match &self.objs[i] {
                Obj::Text(s) => Some(s.clone()),
                Obj::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
                _ => None,
            },
            _ => None,
        }
    }

    fn int_from_le(&self, at: usize, bytes: &[u8]) -> Result<i64> {
        if bytes.is_empty() {
            return Ok(0);
        }
        // Two's complement little-endian; must fit in 64 bits once sign extension is dropped.
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let fill = if negative { 0xff } else { 0 };
        let mut a = [fill; 8];
        let (low, high) = bytes.split_at(bytes.len().min(8));
        a[..low.len()].copy_from_slice(low);
        let v = i64::from_le_bytes(a);
        if high.iter().any(|&b| b != fill) || (v < 0) != negative {
            return Err(self.err(at, "an integer that fits in 64 bits", format!("a {}-byte integer", bytes.len())));
        }
        Ok(v)
    }

    fn parse_decimal(&self, at: usize, line: &[u8]) -> Result<i64> {
        let s = String::from_utf8_lossy(line);
        let t = s.trim_end_matches('L');
        t.parse::<i64>().map_err(|_| self.err(at, "a decimal integer", s.chars().take(40).collect::<String>()))
    }

    fn memo_put(&mut self, op_at: usize, key: u64) -> Result<()> {
        let v = self.top(op_at)?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, op_at: usize, key: u64) -> Result<()> {
        let Some(&v) = self.memo.get(&key) else {
            return Err(self.err(op_at, "a memo key stored earlier", format!("key {key}")));
        };
        self.stack.push(v);
        Ok(())
    }

    fn list_mut(&mut self, op_at: usize, v: Val) -> Result<&mut Vec<Val>> {
        match v {
            Val::Obj(i) if matches!(self.objs[i], Obj::List(_)) => match &mut self.objs[i] {
                Obj::List(l) => Ok(l),
                _ => unreachable!(),
            },
            _ => Err(self.err(op_at, "a list to append to", "another value")),
        }
    }

    fn dict_mut(&mut self, op_at: usize, v: Val) -> Result<&mut Vec<(Val, Val)>> {
        match v {
            Val::Obj(i) if matches!(self.objs[i], Obj::Dict(_)) => match &mut self.objs[i] {
                Obj::Dict(d) => Ok(d),
                _ => unreachable!(),
            },
            _ => Err(self.err(op_at, "a dict to set an item in", "another value")),
        }
    }

    fn push_text(&mut self, at: usize, n: u64) -> Result<()> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ()).map(str::to_owned);
        let s = s.map_err(|()| self.err(at, "UTF-8 text", "invalid UTF-8"))?;
        let v = self.alloc(Obj::Text(s));
        self.stack.push(v);
        Ok(())
    }

    fn push_bytes(&mut self, n: u64) -> Result<()> {
        let bytes = self.take(n)?.to_vec();
        let v = self.alloc(Obj::Bytes(bytes));
        self.stack.push(v);
        Ok(())
    }

    /// Runs to STOP and returns the value left on the stack.
    fn run(&mut self) -> Result<Val> {
        loop {
            let at = self.pos;
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    // PROTO
                    let p = self.take(1)?[0];
                    if p > 5 {
                        return Err(self.err(at, "pickle protocol 0 to 5", format!("protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.take(8)?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop(at)?;
                    if self.pos != self.data.len() {
                        return Err(self.err(
                            self.pos,
                            "the end of the pickle after STOP",
                            format!("{} more bytes", self.data.len() - self.pos),
                        ));
                    }
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let v = self.top(at)?;
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Val::None),
                0x88 => self.stack.push(Val::Bool(true)),
                0x89 => self.stack.push(Val::Bool(false)),
                b'I' => {
                    let line = self.line()?.to_vec();
                    let v = match line.as_slice() {
                        b"00" => Val::Bool(false),
                        b"01" => Val::Bool(true),
                        l => Val::Int(self.parse_decimal(at, l)?),
                    };
                    self.stack.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Val::Int(v as i64));
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.stack.push(Val::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Val::Int(v as i64));
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4
                    let n = if op == 0x8a {
                        self.take(1)?[0] as u64
                    } else {
                        let n = i32::from_le_bytes(self.le()?);
                        u64::try_from(n).map_err(|_| self.err(at, "a non-negative LONG4 length", n.to_string()))?
                    };
                    let bytes = self.take(n)?.to_vec();
                    let v = self.int_from_le(at, &bytes)?;
                    self.stack.push(Val::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Val::Float(v));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?);
                    self.push_text(at, n as u64)?;
                }
                0x8c => {
                    let n = self.take(1)?[0];
                    self.push_text(at, n as u64)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.push_text(at, n)?;
                }
                b'C' | b'U' => {
                    let n = self.take(1)?[0];
                    self.push_bytes(n as u64)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?);
                    self.push_bytes(n as u64)?;
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.le()?);
                    let n =
                        u64::try_from(n).map_err(|_| self.err(at, "a non-negative BINSTRING length", n.to_string()))?;
                    self.push_bytes(n)?;
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.push_bytes(n)?;
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark(at)?;
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = vec![Val::None; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop(at)?;
                    }
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let v = self.alloc(Obj::List(items));
                    self.stack.push(v);
                }
                b'a' => {
                    let item = self.pop(at)?;
                    let list = self.top(at)?;
                    self.list_mut(at, list)?.push(item);
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let list = self.top(at)?;
                    self.list_mut(at, list)?.extend(items);
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()));
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.err(at, "key/value pairs", "an odd number of values"));
                    }
                    let pairs = items.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                    let v = self.alloc(Obj::Dict(pairs));
                    self.stack.push(v);
                }
                b's' => {
                    let value = self.pop(at)?;
                    let key = self.pop(at)?;
                    let dict = self.top(at)?;
                    self.dict_mut(at, dict)?.push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.err(at, "key/value pairs", "an odd number of values"));
                    }
                    let dict = self.top(at)?;
                    let d = self.dict_mut(at, dict)?;
                    d.extend(items.chunks_exact(2).map(|p| (p[0], p[1])));
                }
                b'c' => {
                    let module = String::from_utf8_lossy(self.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.line()?).into_owned();
                    let v = self.alloc(Obj::Global { module, name });
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Some(module), Some(name)) = (self.text(module), self.text(name)) else {
                        return Err(self.err(at, "STACK_GLOBAL of two strings", "other values"));
                    };
                    let v = self.alloc(Obj::Global { module, name });
                    self.stack.push(v);
                }
                b'R' | 0x81 => {
                    // REDUCE: func(*args); NEWOBJ: cls.__new__(cls, *args). Recorded, not run.
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v = self.alloc(Obj::Call { func, args, state: None });
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?;
                    match target {
                        Val::Obj(i) => match &mut self.objs[i] {
                            Obj::Call { state: s, .. } => *s = Some(state),
                            _ => return Err(self.err(at, "BUILD on a reconstructed object", "another value")),
                        },
                        _ => return Err(self.err(at, "BUILD on a reconstructed object", "another value")),
                    }
                }
                b'p' => {
                    let line = self.line()?.to_vec();
                    let key = self.parse_decimal(at, &line)?;
                    self.memo_put(at, key as u64)?;
                }
                b'q' => {
                    let key = self.take(1)?[0] as u64;
                    self.memo_put(at, key)?;
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(at, key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(at, key)?;
                }
                b'g' => {
                    let line = self.line()?.to_vec();
                    let key = self.parse_decimal(at, &line)?;
                    self.memo_get(at, key as u64)?;
                }
                b'h' => {
                    let key = self.take(1)?[0] as u64;
                    self.memo_get(at, key)?;
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_get(at, key)?;
                }
                other => {
                    let shown = if other.is_ascii_graphic() {
                        format!("opcode {other:#04x} ({:?})", other as char)
                    } else {
                        format!("opcode {other:#04x}")
                    };
                    return Err(self.err(at, "a pickle opcode of a numpy object array of integer lists", shown));
                }
            }
        }
    }

    fn global_is(&self, v: Val, modules: &[&str], name: &str) -> bool {
        matches!(v, Val::Obj(i) if matches!(&self.objs[i],
            Obj::Global { module, name: n } if n == name && modules.contains(&module.as_str())))
    }

    fn tuple(&self, v: Val) -> Option<&[Val]> {
        match v {
            Val::Obj(i) => match &self.objs[i] {
                Obj::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn describe(&self, v: Val) -> String {
        match v {
            Val::None => "None".into(),
            Val::Bool(b) => b.to_string(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Obj(i) => match &self.objs[i] {
                Obj::Text(s) => format!("{:?}", s.chars().take(40).collect::<String>()),
                Obj::Bytes(b) => format!("{} bytes", b.len()),
                Obj::List(l) => format!("a list of {}", l.len()),
                Obj::Tuple(t) => format!("a tuple of {}", t.len()),
                Obj::Dict(d) => format!("a dict of {}", d.len()),
                Obj::Global { module, name } => format!("{module}.{name}"),
                Obj::Call { func, .. } => format!("a call of {}", self.describe_func(*func)),
            },
        }
    }

    fn describe_func(&self, v: Val) -> String {
        match v {
            Val::Obj(i) => match &self.objs[i] {
                Obj::Global { module, name } => format!("{module}.{name}"),
                _ => "an object".into(),
            },
            _ => "a value".into(),
        }
    }

    fn interpret(&self, root: Val) -> Result<ObjectArray> {
        let end = self.data.len();
        let shape_err = |what: &str, found: String| self.err(end, what.to_string(), found);
        let (shape, fortran_order, list) = match root {
            Val::Obj(i) => match &self.objs[i] {
                Obj::List(_) => (None, false, root),
                Obj::Call { func, args, state } => {
                    let expected = "numpy's ndarray pickle: _reconstruct(ndarray, ...) with a \
                                    (version, shape, dtype, is_fortran, list) state";
                    if !self.global_is(*func, &NUMPY_MULTIARRAY, "_reconstruct")
                        || !self
                            .tuple(*args)
                            .and_then(|a| a.first())
                            .is_some_and(|&c| self.global_is(c, &["numpy"], "ndarray"))
                    {
                        return Err(shape_err(expected, self.describe(root)));
                    }
                    let Some(state) = state.and_then(|s| self.tuple(s)) else {
                        return Err(shape_err(expected, "no BUILD state".into()));
                    };
                    let state = match state.len() {
                        5 => &state[1..],
                        4 => state,
                        n => return Err(shape_err(expected, format!("a state of {n} values"))),
                    };
                    let shape = self
                        .tuple(state[0])
                        .and_then(|t| {
                            t.iter()
                                .map(|&d| match d {
                                    Val::Int(n) => usize::try_from(n).ok(),
                                    _ => None,
                                })
                                .collect::<Option<Vec<usize>>>()
                        })
                        .ok_or_else(|| shape_err("a shape tuple of non-negative integers", self.describe(state[0])))?;
                    // dtype('O8', ...): the array must hold Python objects.
                    let descr = match state[1] {
                        Val::Obj(d) => match &self.objs[d] {
                            Obj::Call { func, args, .. } if self.global_is(*func, &["numpy"], "dtype") => {
                                self.tuple(*args).and_then(|a| a.first()).and_then(|&s| self.text(s))
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    if !matches!(descr.as_deref(), Some("O" | "O4" | "O8")) {
                        return Err(shape_err(
                            "an object dtype (numpy.dtype('O8'))",
                            descr.unwrap_or_else(|| self.describe(state[1])),
                        ));
                    }
                    let fortran = match state[2] {
                        Val::Bool(b) => b,
                        Val::Int(n) => n != 0,
                        other => return Err(shape_err("a boolean is_fortran", self.describe(other))),
                    };
                    (Some(shape), fortran, state[3])
                }
                _ => return Err(shape_err("a pickled numpy object array or list", self.describe(root))),
            },
            other => return Err(shape_err("a pickled numpy object array or list", self.describe(other))),
        };
        let items = match list {
            Val::Obj(i) => match &self.objs[i] {
                Obj::List(l) => l,
                _ => return Err(shape_err("a list of the array's items", self.describe(list))),
            },
            other => return Err(shape_err("a list of the array's items", self.describe(other))),
        };
        if let Some(shape) = &shape {
            let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if count != Some(items.len()) {
                return Err(shape_err(&format!("{shape:?} items"), format!("{}", items.len())));
            }
        }
        // Every integer copied out must have cost the pickle at least one byte (two in fact),
        // so shared lists cannot amplify the input.
        let budget = self.data.len();
        let mut total = 0usize;
        let mut out = Vec::with_capacity(items.len());
        for (k, &item) in items.iter().enumerate() {
            let values: &[Val] = match item {
                Val::Obj(i) => match &self.objs[i] {
                    Obj::List(l) => l,
                    Obj::Tuple(t) => t,
                    _ => &[],
                },
                _ => &[],
            };
            let is_seq = matches!(item, Val::Obj(i) if matches!(self.objs[i], Obj::List(_) | Obj::Tuple(_)));
            if !is_seq {
                return Err(shape_err(&format!("item {k} to be a list of integers"), self.describe(item)));
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
                    Val::Int(n) => Ok(n),
                    other => Err(shape_err(
                        &format!("integers in item {k}"),
                        format!("element {j}: {}", self.describe(other)),
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
