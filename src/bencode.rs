//! Bencode: strict decoding into borrowed values, and canonical encoding.
//!
//! Owns the wire grammar (integers, byte strings, lists, dictionaries), the
//! strictness rules applied to untrusted input, and the raw byte span of every
//! decoded dictionary value. The spans exist because `metainfo` must hash the
//! `info` dictionary exactly as it arrived: re-encoding would silently change
//! the info hash of torrents whose keys are not in canonical order.
//!
//! Does not own the meaning of any key: torrents, tracker replies and
//! extension messages interpret values in their own modules. Does no I/O.

use std::collections::HashSet;
use std::fmt;

/// Deepest nesting of lists and dictionaries accepted by the decoder. Real
/// torrents and tracker replies nest four or five levels; the bound keeps
/// hostile input from exhausting the stack of the recursive decoder.
pub const MAX_DEPTH: usize = 64;

/// Why a byte sequence is not exactly one well-formed bencoded value. Every
/// variant carries the byte offset in the input where the problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input ended inside a value, or a byte string's declared length
    /// runs past the end of the input.
    UnexpectedEof {
        /// Byte offset in the input.
        at: usize,
    },
    /// An integer (starting at `at`) is empty, has a leading zero, is `-0`,
    /// contains a non-digit, or does not fit an `i64`.
    InvalidInteger {
        /// Byte offset in the input.
        at: usize,
    },
    /// A byte string length prefix (starting at `at`) has a leading zero, a
    /// non-digit before `:`, or does not fit in 64 bits.
    InvalidLength {
        /// Byte offset in the input.
        at: usize,
    },
    /// A complete value ended at `at` but more input followed.
    TrailingBytes {
        /// Byte offset in the input.
        at: usize,
    },
    /// The container starting at `at` would nest deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Byte offset in the input.
        at: usize,
    },
    /// The dictionary key starting at `at` already occurred in its dictionary.
    DuplicateKey {
        /// Byte offset in the input.
        at: usize,
    },
    /// A byte that cannot start a value.
    UnexpectedByte {
        /// The byte.
        byte: u8,
        /// Its offset in the input.
        at: usize,
    },
    /// A dictionary key position holds something other than a byte string.
    KeyNotString {
        /// Byte offset in the input.
        at: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::UnexpectedEof { at } => {
                write!(f, "bencode: unexpected end of input at byte {at}")
            }
            Error::InvalidInteger { at } => write!(f, "bencode: invalid integer at byte {at}"),
            Error::InvalidLength { at } => {
                write!(f, "bencode: invalid byte string length at byte {at}")
            }
            Error::TrailingBytes { at } => {
                write!(f, "bencode: trailing bytes after the value at byte {at}")
            }
            Error::TooDeep { at } => write!(
                f,
                "bencode: nesting deeper than {MAX_DEPTH} levels at byte {at}"
            ),
            Error::DuplicateKey { at } => {
                write!(f, "bencode: duplicate dictionary key at byte {at}")
            }
            Error::UnexpectedByte { byte, at } => {
                if byte.is_ascii_graphic() {
                    write!(
                        f,
                        "bencode: unexpected byte '{}' (0x{byte:02x}) at byte {at}",
                        char::from(byte)
                    )
                } else {
                    write!(f, "bencode: unexpected byte 0x{byte:02x} at byte {at}")
                }
            }
            Error::KeyNotString { at } => {
                write!(
                    f,
                    "bencode: dictionary key is not a byte string at byte {at}"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// One bencoded value, borrowing its byte strings from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

impl<'a> Value<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(*b),
            _ => None,
        }
    }

    /// The byte string as text, or `None` if it is not a byte string or not
    /// valid UTF-8. Callers wanting lossy text use `as_bytes` themselves.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Human name of the variant, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "integer",
            Value::Bytes(_) => "byte string",
            Value::List(_) => "list",
            Value::Dict(_) => "dictionary",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry<'a> {
    key: &'a [u8],
    value: Value<'a>,
    /// The value's bytes exactly as decoded; `None` for entries built in code,
    /// which have no input to point into.
    raw: Option<&'a [u8]>,
}

/// A dictionary in input order. Keys are unique. Order is kept (not sorted)
/// because real torrents carry unsorted keys and we only ever look keys up;
/// the encoder sorts when it writes.
#[derive(Debug, Clone, Default)]
pub struct Dict<'a> {
    entries: Vec<Entry<'a>>,
}

impl<'a> Dict<'a> {
    pub fn new() -> Dict<'a> {
        Dict::default()
    }

    #[cfg(test)]
    /// Builds a dictionary for encoding. A key given more than once keeps its
    /// last value, as map insertion would. Constructed entries have no raw
    /// span: `get_raw` returns `None` for them.
    pub fn from_entries(entries: Vec<(&'a [u8], Value<'a>)>) -> Dict<'a> {
        let mut dict = Dict::new();
        for (key, value) in entries {
            dict.insert(key, value);
        }
        dict
    }

    /// Sets `key` to `value`, returning the previous value if there was one.
    /// The entry has no raw span afterwards.
    pub fn insert(&mut self, key: &'a [u8], value: Value<'a>) -> Option<Value<'a>> {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == key) {
            entry.raw = None;
            return Some(std::mem::replace(&mut entry.value, value));
        }
        self.entries.push(Entry {
            key,
            value,
            raw: None,
        });
        None
    }

    #[cfg(test)]
    pub fn remove(&mut self, key: &[u8]) -> Option<Value<'a>> {
        let pos = self.entries.iter().position(|e| e.key == key)?;
        Some(self.entries.remove(pos).value)
    }

    /// Linear lookup: the dictionaries we meet hold a handful of keys, and a
    /// scan beats building an index for each one.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// The bytes of `key`'s value exactly as they appeared in the decoded
    /// input. `None` if the key is absent or the entry was built in code
    /// (`from_entries`, `insert`) rather than decoded.
    pub fn get_raw(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .and_then(|e| e.raw)
    }

    #[cfg(test)]
    /// Entries in input (or insertion) order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &Value<'a>)> + '_ {
        self.entries.iter().map(|e| (e.key, &e.value))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Equality is over keys and values in order; raw spans are ignored so that a
/// decoded dictionary equals the same dictionary built in code.
impl PartialEq for Dict<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.key == b.key && a.value == b.value)
    }
}

impl Eq for Dict<'_> {}

/// Decodes `input`, which must hold exactly one value and nothing after it.
pub fn decode(input: &[u8]) -> Result<Value<'_>, Error> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(Error::TrailingBytes { at: used });
    }
    Ok(value)
}

/// Decodes one value from the start of `input` and returns it with the number
/// of bytes it occupied. Whatever follows is left alone: BEP 9 metadata
/// messages append raw piece data after a bencoded dictionary.
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), Error> {
    let mut parser = Parser { input, pos: 0 };
    let value = parser.value(0)?;
    Ok((value, parser.pos))
}

/// Recursive-descent decoder. Recursion depth is bounded by `MAX_DEPTH`, so
/// the stack cannot overflow however the input nests.
///
/// `pos` never exceeds `input.len()`, and `input.len()` never exceeds
/// `isize::MAX`, so the `pos + 1` steps below cannot overflow.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn eof(&self) -> Error {
        Error::UnexpectedEof { at: self.pos }
    }

    /// Parses one value; `depth` counts the containers enclosing it.
    fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        let at = self.pos;
        match self.peek() {
            None => Err(self.eof()),
            Some(b'i') => self.int().map(Value::Int),
            Some(b'0'..=b'9') => self.bytes().map(Value::Bytes),
            Some(b'l') if depth >= MAX_DEPTH => Err(Error::TooDeep { at }),
            Some(b'd') if depth >= MAX_DEPTH => Err(Error::TooDeep { at }),
            Some(b'l') => self.list(depth).map(Value::List),
            Some(b'd') => self.dict(depth).map(Value::Dict),
            Some(byte) => Err(Error::UnexpectedByte { byte, at }),
        }
    }

    /// `i<digits>e`, at the `i`.
    fn int(&mut self) -> Result<i64, Error> {
        let start = self.pos;
        let invalid = Error::InvalidInteger { at: start };
        self.pos += 1;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut n: i64 = 0;
        let mut digits = 0usize;
        let mut leading_zero = false;
        loop {
            match self.peek() {
                None => return Err(self.eof()),
                Some(b'e') => break,
                Some(d @ b'0'..=b'9') => {
                    if digits == 0 && d == b'0' {
                        leading_zero = true;
                    } else if leading_zero {
                        // `i03e`: canonical integers have no leading zeros,
                        // so two encodings of one number cannot exist.
                        return Err(invalid);
                    }
                    let d = i64::from(d - b'0');
                    // Accumulate negatives downwards so i64::MIN, whose
                    // magnitude does not fit an i64, still parses.
                    n = n
                        .checked_mul(10)
                        .and_then(|n| {
                            if negative {
                                n.checked_sub(d)
                            } else {
                                n.checked_add(d)
                            }
                        })
                        .ok_or(invalid)?;
                    digits = digits.saturating_add(1);
                    self.pos += 1;
                }
                Some(_) => return Err(invalid),
            }
        }
        // `ie`, `i-e` and `i-0e` are all rejected.
        if digits == 0 || (negative && leading_zero) {
            return Err(invalid);
        }
        self.pos += 1;
        Ok(n)
    }

    /// `<len>:<bytes>`, at the first digit.
    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let start = self.pos;
        let invalid = Error::InvalidLength { at: start };
        let mut len: u64 = 0;
        let mut digits = 0usize;
        loop {
            match self.peek() {
                None => return Err(self.eof()),
                Some(b':') => break,
                Some(d @ b'0'..=b'9') => {
                    if digits == 1 && len == 0 {
                        return Err(invalid);
                    }
                    len = len
                        .checked_mul(10)
                        .and_then(|l| l.checked_add(u64::from(d - b'0')))
                        .ok_or(invalid)?;
                    digits = digits.saturating_add(1);
                    self.pos += 1;
                }
                Some(_) => return Err(invalid),
            }
        }
        if digits == 0 {
            return Err(invalid);
        }
        self.pos += 1;
        // Compare the declared length with what is left before touching the
        // data, so a forged `4294967296:` costs nothing.
        let remaining = self.input.len().saturating_sub(self.pos);
        let len = match usize::try_from(len) {
            Ok(len) if len <= remaining => len,
            _ => {
                return Err(Error::UnexpectedEof {
                    at: self.input.len(),
                })
            }
        };
        let end = self.pos.checked_add(len).ok_or(invalid)?;
        let data = self.input.get(self.pos..end).ok_or(invalid)?;
        self.pos = end;
        Ok(data)
    }

    fn list(&mut self, depth: usize) -> Result<Vec<Value<'a>>, Error> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.eof()),
                Some(b'e') => {
                    self.pos += 1;
                    // A torrent of 20,000 files is 20,000 small lists and
                    // dicts: spare capacity was a third of the tree.
                    items.shrink_to_fit();
                    return Ok(items);
                }
                Some(_) => items.push(self.value(depth.saturating_add(1))?),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Dict<'a>, Error> {
        self.pos += 1;
        let mut entries: Vec<Entry<'a>> = Vec::new();
        // While keys arrive strictly increasing (the canonical case) a new key
        // greater than the last cannot be a duplicate. Once order breaks we
        // switch to a set, so unsorted dictionaries cost O(n), not O(n^2).
        let mut seen: Option<HashSet<&'a [u8]>> = None;
        loop {
            let at = self.pos;
            match self.peek() {
                None => return Err(self.eof()),
                Some(b'e') => {
                    self.pos += 1;
                    // As for lists.
                    entries.shrink_to_fit();
                    return Ok(Dict { entries });
                }
                Some(b'0'..=b'9') => {}
                Some(_) => return Err(Error::KeyNotString { at }),
            }
            let key = self.bytes()?;
            let in_order = entries.last().is_none_or(|last| last.key < key);
            if seen.is_none() && !in_order {
                seen = Some(entries.iter().map(|e| e.key).collect());
            }
            if let Some(set) = seen.as_mut() {
                if !set.insert(key) {
                    return Err(Error::DuplicateKey { at });
                }
            }
            let value_start = self.pos;
            let value = self.value(depth.saturating_add(1))?;
            let raw = self.input.get(value_start..self.pos);
            entries.push(Entry { key, value, raw });
        }
    }
}

/// Canonical bencode of `value`: dictionary keys in sorted byte order.
pub fn encode(value: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the canonical bencode of `value` to `out`.
pub fn encode_into(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Int(n) => {
            out.push(b'i');
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode_into(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(dict) => {
            // Keys are unique in every Dict, so sorting yields the one
            // canonical order.
            let mut entries: Vec<&Entry<'_>> = dict.entries.iter().collect();
            entries.sort_unstable_by(|a, b| a.key.cmp(b.key));
            out.push(b'd');
            for entry in entries {
                encode_bytes(entry.key, out);
                encode_into(&entry.value, out);
            }
            out.push(b'e');
        }
    }
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &[u8]) -> Error {
        match decode(input) {
            Ok(v) => panic!("{:?} decoded to {v:?}", String::from_utf8_lossy(input)),
            Err(e) => e,
        }
    }

    #[test]
    fn decodes_scalars() {
        assert_eq!(decode(b"i0e"), Ok(Value::Int(0)));
        assert_eq!(decode(b"i42e"), Ok(Value::Int(42)));
        assert_eq!(decode(b"i-7e"), Ok(Value::Int(-7)));
        assert_eq!(decode(b"i9223372036854775807e"), Ok(Value::Int(i64::MAX)));
        assert_eq!(decode(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
        assert_eq!(decode(b"0:"), Ok(Value::Bytes(b"")));
        assert_eq!(decode(b"4:spam"), Ok(Value::Bytes(b"spam")));
        assert_eq!(decode(b"le"), Ok(Value::List(vec![])));
        assert_eq!(decode(b"de"), Ok(Value::Dict(Dict::new())));
    }

    #[test]
    fn round_trips_canonical_input() {
        let cases: &[&[u8]] = &[
            b"i-12e",
            b"3:a:b",
            b"l4:spami3ee",
            b"d3:bar4:spam3:fooi42ee",
            b"d1:ald1:xi1eee1:bd0:0:ee",
            b"lllleeee",
        ];
        for &case in cases {
            let value = decode(case).expect("decodes");
            assert_eq!(encode(&value), case, "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn encoder_sorts_keys_and_decoder_keeps_input_order() {
        let value = decode(b"d1:bi2e1:ai1ee").expect("unsorted keys are accepted");
        let dict = value.as_dict().expect("dict");
        let keys: Vec<&[u8]> = dict.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"b", b"a"]);
        assert_eq!(encode(&value), b"d1:ai1e1:bi2ee");
    }

    #[test]
    fn constructed_dicts_encode_and_dedupe() {
        let dict = Dict::from_entries(vec![
            (b"z", Value::Int(1)),
            (b"a", Value::Bytes(b"x")),
            (b"z", Value::Int(2)),
        ]);
        assert_eq!(dict.len(), 2);
        assert_eq!(dict.get_raw(b"a"), None);
        let mut out = b"prefix".to_vec();
        encode_into(&Value::Dict(dict), &mut out);
        assert_eq!(out, b"prefixd1:a1:x1:zi2ee");
    }

    #[test]
    fn insert_and_remove() {
        let mut dict = Dict::new();
        assert!(dict.is_empty());
        assert_eq!(dict.insert(b"k", Value::Int(1)), None);
        assert_eq!(dict.insert(b"k", Value::Int(2)), Some(Value::Int(1)));
        assert_eq!(dict.get(b"k"), Some(&Value::Int(2)));
        assert_eq!(dict.remove(b"k"), Some(Value::Int(2)));
        assert_eq!(dict.remove(b"k"), None);
        assert!(dict.is_empty());
    }

    #[test]
    fn accessors_and_type_names() {
        let value = decode(b"d1:ii5e1:s2:hi1:nl2:\xff\xfee1:dd1:x0:ee").expect("decodes");
        let dict = value.as_dict().expect("dict");
        assert_eq!(dict.get(b"i").and_then(Value::as_int), Some(5));
        assert_eq!(dict.get(b"s").and_then(Value::as_str), Some("hi"));
        let list = dict.get(b"n").and_then(Value::as_list).expect("list");
        assert_eq!(list[0].as_bytes(), Some(&b"\xff\xfe"[..]));
        assert_eq!(list[0].as_str(), None);
        assert!(dict.get(b"d").and_then(Value::as_dict).is_some());
        assert_eq!(dict.get(b"missing"), None);
        assert_eq!(Value::Int(1).as_bytes(), None);
        assert_eq!(Value::Int(1).type_name(), "integer");
        assert_eq!(Value::Bytes(b"").type_name(), "byte string");
        assert_eq!(Value::List(vec![]).type_name(), "list");
        assert_eq!(Value::Dict(Dict::new()).type_name(), "dictionary");
    }

    #[test]
    fn raw_spans_are_exact_input_slices() {
        // Unsorted keys, an empty dict and a nested list: the raw span must
        // be these exact bytes, not a canonical re-encoding.
        let inner: &[u8] = b"d1:zi1e1:ad1:qlee1:m0:e";
        let input = [&b"d4:info"[..], inner, b"4:nexti9ee"].concat();
        let value = decode(&input).expect("decodes");
        let dict = value.as_dict().expect("dict");
        assert_eq!(dict.get_raw(b"info"), Some(inner));
        assert_eq!(dict.get_raw(b"next"), Some(&b"i9e"[..]));
        assert_ne!(encode(dict.get(b"info").expect("info")), inner);
        let nested = dict.get(b"info").and_then(Value::as_dict).expect("dict");
        assert_eq!(nested.get_raw(b"a"), Some(&b"d1:qlee"[..]));
        assert_eq!(nested.get_raw(b"m"), Some(&b"0:"[..]));
    }

    #[test]
    fn rejects_bad_integers() {
        assert_eq!(err(b"i03e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i00e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i-0e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i-03e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"ie"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i-e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i--1e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i1x2e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"i+1e"), Error::InvalidInteger { at: 0 });
        assert_eq!(err(b"li1ei 1ee"), Error::InvalidInteger { at: 4 });
        assert_eq!(
            err(b"i9223372036854775808e"),
            Error::InvalidInteger { at: 0 }
        );
        assert_eq!(
            err(b"i-9223372036854775809e"),
            Error::InvalidInteger { at: 0 }
        );
        assert_eq!(err(b"i12"), Error::UnexpectedEof { at: 3 });
        assert_eq!(err(b"i"), Error::UnexpectedEof { at: 1 });
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(err(b"03:abc"), Error::InvalidLength { at: 0 });
        assert_eq!(err(b"00:"), Error::InvalidLength { at: 0 });
        assert_eq!(err(b"3x:abc"), Error::InvalidLength { at: 0 });
        assert_eq!(err(b"5:abc"), Error::UnexpectedEof { at: 5 });
        assert_eq!(err(b"12"), Error::UnexpectedEof { at: 2 });
        assert_eq!(
            err(b"99999999999999999999999:"),
            Error::InvalidLength { at: 0 }
        );
    }

    #[test]
    fn huge_length_prefix_fails_before_allocating() {
        assert_eq!(err(b"4294967296:"), Error::UnexpectedEof { at: 11 });
        assert_eq!(
            err(b"18446744073709551615:ab"),
            Error::UnexpectedEof { at: 23 }
        );
    }

    #[test]
    fn rejects_structural_errors() {
        assert_eq!(err(b""), Error::UnexpectedEof { at: 0 });
        assert_eq!(err(b"l"), Error::UnexpectedEof { at: 1 });
        assert_eq!(err(b"d1:a"), Error::UnexpectedEof { at: 4 });
        assert_eq!(err(b"d1:ai1e"), Error::UnexpectedEof { at: 7 });
        assert_eq!(err(b"i1ei2e"), Error::TrailingBytes { at: 3 });
        assert_eq!(err(b"lee"), Error::TrailingBytes { at: 2 });
        assert_eq!(err(b"x"), Error::UnexpectedByte { byte: b'x', at: 0 });
        assert_eq!(err(b"le\n"), Error::TrailingBytes { at: 2 });
        assert_eq!(err(b"l-1e"), Error::UnexpectedByte { byte: b'-', at: 1 });
        assert_eq!(err(b"di1ei2ee"), Error::KeyNotString { at: 1 });
        assert_eq!(err(b"d1:ai1elee"), Error::KeyNotString { at: 7 });
        assert_eq!(err(b"d1:ai1e1:ai2ee"), Error::DuplicateKey { at: 7 });
        // Duplicate detected after the order has broken, not just adjacent.
        assert_eq!(
            err(b"d1:bi1e1:ai1e1:ci1e1:bi1ee"),
            Error::DuplicateKey { at: 19 }
        );
        assert_eq!(err(b"d1:ai1e1:bi1e1:ai1ee"), Error::DuplicateKey { at: 13 });
    }

    #[test]
    fn nesting_limit_is_exact() {
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(decode(&deep), Err(Error::TooDeep { at: MAX_DEPTH }));
        // Dictionaries count towards the same limit.
        let mut dicts = b"d1:a".repeat(MAX_DEPTH);
        dicts.extend_from_slice(b"i1e");
        dicts.extend_from_slice(&b"e".repeat(MAX_DEPTH));
        assert!(decode(&dicts).is_ok());
        let mut dicts = b"d1:a".repeat(MAX_DEPTH);
        dicts.extend_from_slice(b"dee");
        assert_eq!(decode(&dicts), Err(Error::TooDeep { at: MAX_DEPTH * 4 }));
    }

    #[test]
    fn deep_hostile_nesting_does_not_overflow_the_stack() {
        let input = vec![b'l'; 100_000];
        assert_eq!(decode(&input), Err(Error::TooDeep { at: MAX_DEPTH }));
    }

    #[test]
    fn decode_prefix_reports_consumed_bytes() {
        let (value, used) = decode_prefix(b"d1:ai1eeRAW PIECE DATA").expect("decodes");
        assert_eq!(used, 8);
        assert_eq!(
            value.as_dict().and_then(|d| d.get(b"a")),
            Some(&Value::Int(1))
        );
        assert_eq!(decode_prefix(b""), Err(Error::UnexpectedEof { at: 0 }));
    }

    #[test]
    fn display_is_lowercase_with_offsets() {
        assert_eq!(
            Error::UnexpectedEof { at: 12 }.to_string(),
            "bencode: unexpected end of input at byte 12"
        );
        assert_eq!(
            Error::UnexpectedByte { byte: b'x', at: 3 }.to_string(),
            "bencode: unexpected byte 'x' (0x78) at byte 3"
        );
        assert_eq!(
            Error::UnexpectedByte { byte: 0, at: 3 }.to_string(),
            "bencode: unexpected byte 0x00 at byte 3"
        );
        assert!(Error::TooDeep { at: 64 }.to_string().contains("64 levels"));
    }
}
