//! A small bencode encoder/decoder for tests that build or rewrite
//! torrents byte by byte (rtc's own codec is private to the crate; these
//! tests check rtc from outside, so they do not borrow it). Dictionaries
//! keep keys sorted, as bencode's canonical form requires.
#![allow(dead_code)]

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dict<'a>(BTreeMap<&'a [u8], Value<'a>>);

impl<'a> Dict<'a> {
    pub fn new() -> Dict<'a> {
        Dict::default()
    }
    pub fn insert(&mut self, key: &'a [u8], value: Value<'a>) {
        self.0.insert(key, value);
    }
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.0.get(key)
    }
    pub fn remove(&mut self, key: &[u8]) -> Option<Value<'a>> {
        self.0.remove(key)
    }
}

impl<'a> Value<'a> {
    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
}

pub fn encode(v: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    put(v, &mut out);
    out
}

fn put(v: &Value<'_>, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
        Value::Bytes(b) => {
            out.extend_from_slice(format!("{}:", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Value::List(l) => {
            out.push(b'l');
            l.iter().for_each(|x| put(x, out));
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, x) in &d.0 {
                put(&Value::Bytes(k), out);
                put(x, out);
            }
            out.push(b'e');
        }
    }
}

/// Decodes exactly one value; `None` for anything malformed.
pub fn decode(bytes: &[u8]) -> Option<Value<'_>> {
    let (v, rest) = take(bytes)?;
    rest.is_empty().then_some(v)
}

fn take(b: &[u8]) -> Option<(Value<'_>, &[u8])> {
    match *b.first()? {
        b'i' => {
            let end = b.iter().position(|&c| c == b'e')?;
            let n = std::str::from_utf8(&b[1..end]).ok()?.parse().ok()?;
            Some((Value::Int(n), &b[end + 1..]))
        }
        b'l' => {
            let mut rest = &b[1..];
            let mut items = Vec::new();
            while *rest.first()? != b'e' {
                let (v, r) = take(rest)?;
                items.push(v);
                rest = r;
            }
            Some((Value::List(items), &rest[1..]))
        }
        b'd' => {
            let mut rest = &b[1..];
            let mut d = Dict::new();
            while *rest.first()? != b'e' {
                let (Value::Bytes(k), r) = take(rest)? else {
                    return None;
                };
                let (v, r) = take(r)?;
                d.insert(k, v);
                rest = r;
            }
            Some((Value::Dict(d), &rest[1..]))
        }
        _ => {
            let colon = b.iter().position(|&c| c == b':')?;
            let len: usize = std::str::from_utf8(&b[..colon]).ok()?.parse().ok()?;
            let start = colon + 1;
            let data = b.get(start..start.checked_add(len)?)?;
            Some((Value::Bytes(data), &b[start + len..]))
        }
    }
}
