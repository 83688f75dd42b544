//! The pickle machine: a closed set of opcodes run over inert values.
//!
//! A `GLOBAL` is a name (checked against the caller's allow-list when it is met), a `REDUCE` or
//! `NEWOBJ` a record of "call this with these arguments" that is never called, a `BUILD` the
//! state attached to such a record, a persistent id (`BINPERSID`) a record for the caller to
//! resolve. Nothing is imported, called or looked up.

use std::collections::HashMap;

use crate::error::{PickleError, Result};

/// A value of the pickle: scalars inline, compound values by their index in
/// [`Pickle::objects`], so a value shared through the memo (`BINGET`) is the same index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A compound value: an index into [`Pickle::objects`].
    Obj(usize),
}

/// A compound value of the pickle.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A `str`.
    Text(String),
    /// A `bytes` (or a protocol-0/Python 2 `str`).
    Bytes(Vec<u8>),
    /// An integer beyond 64 bits: its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict`, in insertion order (keys may repeat; the last one wins in Python).
    Dict(Vec<(Value, Value)>),
    /// A global name (`GLOBAL` / `STACK_GLOBAL`), never imported.
    Global {
        /// The module (`collections`).
        module: String,
        /// The name in the module (`OrderedDict`).
        name: String,
    },
    /// `func(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ), never called; `state`
    /// from a later BUILD.
    Call {
        /// What would be called.
        func: Value,
        /// The arguments (a tuple).
        args: Value,
        /// The BUILD state, if any.
        state: Option<Value>,
        /// Pairs set on the result by `SETITEM(S)` (an `OrderedDict` is `REDUCE` then `SETITEMS`).
        items: Vec<(Value, Value)>,
        /// Values appended to the result by `APPEND(S)`.
        appended: Vec<Value>,
    },
    /// A persistent id (`BINPERSID` / `PERSID`), for the caller to resolve.
    PersistentId(Value),
}

/// Which globals a pickle may name: `fn(module, name) -> allowed`.
pub type AllowGlobal = fn(&str, &str) -> bool;

/// How to read a pickle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The allow-list: a `GLOBAL` naming anything else is refused with
    /// [`PickleError::ForbiddenGlobal`] when it is met. `None` accepts every name (as inert
    /// data: nothing is ever imported or called either way).
    pub allow_global: Option<AllowGlobal>,
    /// Whether bytes may follow `STOP` (several pickles back to back, as in PyTorch's legacy
    /// format); otherwise they are an error.
    pub trailing_data: bool,
}

/// A parsed pickle: the value tree, in an arena, and where it ended.
#[derive(Clone, Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    root: Value,
    len: usize,
}

/// Runs the pickle `data` to its `STOP` and returns what it built.
///
/// ```
/// use kiln_pickle::{parse, Object, Options, Value};
/// // pickle.dumps({"a": [1, 2.5]}, protocol=2)
/// let p = parse(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00es.", &Options::default()).unwrap();
/// let dict = p.dict(p.root()).unwrap();
/// assert_eq!(p.text(dict[0].0), Some("a"));
/// assert_eq!(p.list(dict[0].1), Some(&[Value::Int(1), Value::Float(2.5)][..]));
///
/// // With an allow-list, `os.system` is refused where it is named.
/// let allow = Options { allow_global: Some(|m, _| m == "collections"), ..Options::default() };
/// let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
/// let err = parse(evil, &allow).unwrap_err();
/// assert_eq!(err.to_string(), "at byte 2: global os.system is not allowed");
/// ```
///
/// # Errors
/// [`PickleError::Truncated`] when the data ends before `STOP` or a length runs past the end;
/// [`PickleError::Format`] for an unsupported opcode, a stack or memo misuse, bad UTF-8, or
/// (unless [`Options::trailing_data`]) bytes after `STOP`; [`PickleError::ForbiddenGlobal`].
///
/// # Bounds
/// Every value is built from bytes that are in the input (lengths are checked against what is
/// left before anything is copied); the arena, the memo and the stacks grow by at most one
/// entry per opcode; nothing recurses, so deep nesting cannot overflow the stack. Values
/// shared through the memo are shared, not copied: a caller that expands the tree must bound
/// what it builds (see [`Pickle::len`]).
pub fn parse(data: &[u8], options: &Options) -> Result<Pickle> {
    let mut m = Machine {
        data,
        pos: 0,
        allow_global: options.allow_global,
        trailing_data: options.trailing_data,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objs: Vec::new(),
    };
    let root = m.run()?;
    Ok(Pickle { objects: m.objs, root, len: m.pos })
}

impl Pickle {
    /// The value the pickle returns (what was on the stack at `STOP`).
    pub fn root(&self) -> Value {
        self.root
    }

    /// The bytes read, up to and including `STOP` (where a next pickle would start).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the pickle read no bytes (never true for a parsed pickle, which ends in `STOP`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every compound value, in the order they were built.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// The compound value `v` stands for, `None` for a scalar.
    pub fn object(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Obj(i) => self.objects.get(i),
            _ => None,
        }
    }

    /// `v` as text (a `str`, or a `bytes` read as Latin-1 would be by Python 2 pickles).
    pub fn text(&self, v: Value) -> Option<&str> {
        match self.object(v)? {
            Object::Text(s) => Some(s),
            Object::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// `v` as a tuple's items.
    pub fn tuple(&self, v: Value) -> Option<&[Value]> {
        match self.object(v)? {
            Object::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// `v` as a list's items.
    pub fn list(&self, v: Value) -> Option<&[Value]> {
        match self.object(v)? {
            Object::List(l) => Some(l),
            _ => None,
        }
    }

    /// `v` as a dict's pairs.
    pub fn dict(&self, v: Value) -> Option<&[(Value, Value)]> {
        match self.object(v)? {
            Object::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// `v` as a global's `(module, name)`.
    pub fn global(&self, v: Value) -> Option<(&str, &str)> {
        match self.object(v)? {
            Object::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// Whether `v` is the global `module.name` for one of `modules`.
    pub fn global_is(&self, v: Value, modules: &[&str], name: &str) -> bool {
        self.global(v).is_some_and(|(m, n)| n == name && modules.contains(&m))
    }

    /// A short description of `v` for error messages (`"a tuple of 3"`, `"os.system"`).
    pub fn describe(&self, v: Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => if b { "True" } else { "False" }.into(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{f:?}"),
            Value::Obj(i) => match &self.objects[i] {
                Object::Text(s) => format!("{:?}", s.chars().take(40).collect::<String>()),
                Object::Bytes(b) => format!("{} bytes", b.len()),
                Object::BigInt(b) => format!("a {}-byte integer", b.len()),
                Object::List(l) => format!("a list of {}", l.len()),
                Object::Tuple(t) => format!("a tuple of {}", t.len()),
                Object::Dict(d) => format!("a dict of {}", d.len()),
                Object::Global { module, name } => format!("{module}.{name}"),
                Object::Call { func, .. } => format!("a call of {}", self.describe(*func)),
                Object::PersistentId(_) => "a persistent id".into(),
            },
        }
    }
}

/// A little-endian two's-complement integer as an `i64`, `None` when it needs more bits.
fn int_from_le(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0 };
    let mut a = [fill; 8];
    let (low, high) = bytes.split_at(bytes.len().min(8));
    a[..low.len()].copy_from_slice(low);
    let v = i64::from_le_bytes(a);
    if high.iter().any(|&b| b != fill) || (v < 0) != negative {
        return None;
    }
    Some(v)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    allow_global: Option<AllowGlobal>,
    trailing_data: bool,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    objs: Vec<Object>,
}

impl Machine<'_> {
    fn err(&self, at: usize, expected: impl Into<String>, found: impl Into<String>) -> PickleError {
        PickleError::format(at as u64, expected, found)
    }

    fn check_global(&self, at: usize, module: &str, name: &str) -> Result<()> {
        match self.allow_global {
            Some(allow) if !allow(module, name) => Err(PickleError::ForbiddenGlobal {
                offset: at as u64,
                module: module.to_string(),
                name: name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn take(&mut self, n: u64) -> Result<&[u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(PickleError::Truncated {
                // Saturating: `n` is an untrusted 64-bit length (found by `cargo fuzz`).
                expected: (self.pos as u64).saturating_add(n),
                found: self.data.len() as u64,
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
            return Err(PickleError::Truncated { expected: self.data.len() as u64 + 1, found: self.data.len() as u64 });
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn alloc(&mut self, obj: Object) -> Value {
        self.objs.push(obj);
        Value::Obj(self.objs.len() - 1)
    }

    fn pop(&mut self, op_at: usize) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(op_at, "a value on the pickle stack", "an empty stack"));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self, op_at: usize) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(op_at, "a value on the pickle stack", "an empty stack"));
        }
        Ok(*self.stack.last().expect("checked"))
    }

    /// Pops everything down to the last MARK (and the mark).
    fn pop_mark(&mut self, op_at: usize) -> Result<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err(op_at, "a MARK before this opcode", "none"));
        };
        Ok(self.stack.split_off(mark))
    }

    fn text(&self, v: Value) -> Option<String> {
        match v {
            Value::Obj(i) => match &self.objs[i] {
                Object::Text(s) => Some(s.clone()),
                Object::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
                _ => None,
            },
            _ => None,
        }
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

    fn list_mut(&mut self, op_at: usize, v: Value) -> Result<&mut Vec<Value>> {
        match v {
            Value::Obj(i) if matches!(self.objs[i], Object::List(_) | Object::Call { .. }) => match &mut self.objs[i] {
                Object::List(l) | Object::Call { appended: l, .. } => Ok(l),
                _ => unreachable!(),
            },
            _ => Err(self.err(op_at, "a list to append to", "another value")),
        }
    }

    fn dict_mut(&mut self, op_at: usize, v: Value) -> Result<&mut Vec<(Value, Value)>> {
        match v {
            Value::Obj(i) if matches!(self.objs[i], Object::Dict(_) | Object::Call { .. }) => match &mut self.objs[i] {
                Object::Dict(d) | Object::Call { items: d, .. } => Ok(d),
                _ => unreachable!(),
            },
            _ => Err(self.err(op_at, "a dict to set an item in", "another value")),
        }
    }

    fn push_text(&mut self, at: usize, n: u64) -> Result<()> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ()).map(str::to_owned);
        let s = s.map_err(|()| self.err(at, "UTF-8 text", "invalid UTF-8"))?;
        let v = self.alloc(Object::Text(s));
        self.stack.push(v);
        Ok(())
    }

    fn push_bytes(&mut self, n: u64) -> Result<()> {
        let bytes = self.take(n)?.to_vec();
        let v = self.alloc(Object::Bytes(bytes));
        self.stack.push(v);
        Ok(())
    }

    /// Runs to STOP and returns the value left on the stack.
    fn run(&mut self) -> Result<Value> {
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
                    if !self.trailing_data && self.pos != self.data.len() {
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
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let line = self.line()?.to_vec();
                    let v = match line.as_slice() {
                        b"00" => Value::Bool(false),
                        b"01" => Value::Bool(true),
                        l => Value::Int(self.parse_decimal(at, l)?),
                    };
                    self.stack.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v as i64));
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
                    let v = match int_from_le(&bytes) {
                        Some(v) => Value::Int(v),
                        None => self.alloc(Object::BigInt(bytes)),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
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
                    let v = self.alloc(Object::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark(at)?;
                    let v = self.alloc(Object::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = vec![Value::None; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop(at)?;
                    }
                    let v = self.alloc(Object::Tuple(items));
                    self.stack.push(v);
                }
                b']' => {
                    let v = self.alloc(Object::List(Vec::new()));
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let v = self.alloc(Object::List(items));
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
                    let v = self.alloc(Object::Dict(Vec::new()));
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.err(at, "key/value pairs", "an odd number of values"));
                    }
                    let pairs = items.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                    let v = self.alloc(Object::Dict(pairs));
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
                    self.check_global(at, &module, &name)?;
                    let v = self.alloc(Object::Global { module, name });
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Some(module), Some(name)) = (self.text(module), self.text(name)) else {
                        return Err(self.err(at, "STACK_GLOBAL of two strings", "other values"));
                    };
                    self.check_global(at, &module, &name)?;
                    let v = self.alloc(Object::Global { module, name });
                    self.stack.push(v);
                }
                b'R' | 0x81 => {
                    // REDUCE: func(*args); NEWOBJ: cls.__new__(cls, *args). Recorded, not run.
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v =
                        self.alloc(Object::Call { func, args, state: None, items: Vec::new(), appended: Vec::new() });
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?;
                    match target {
                        Value::Obj(i) => match &mut self.objs[i] {
                            Object::Call { state: s, .. } => *s = Some(state),
                            _ => return Err(self.err(at, "BUILD on a reconstructed object", "another value")),
                        },
                        _ => return Err(self.err(at, "BUILD on a reconstructed object", "another value")),
                    }
                }
                b'Q' => {
                    // BINPERSID: the id is resolved by the caller (PyTorch's storages).
                    let pid = self.pop(at)?;
                    let v = self.alloc(Object::PersistentId(pid));
                    self.stack.push(v);
                }
                b'P' => {
                    let id = String::from_utf8_lossy(self.line()?).into_owned();
                    let pid = self.alloc(Object::Text(id));
                    let v = self.alloc(Object::PersistentId(pid));
                    self.stack.push(v);
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
                    return Err(self.err(
                        at,
                        "a pickle opcode this reader supports (no INST, OBJ, EXT or out-of-band buffers)",
                        shown,
                    ));
                }
            }
        }
    }
}
