//! KRPC, the DHT's message format (BEP 5, with BEP 32's `nodes6` and
//! `want`), as pure encode/decode over rtc's bencode. Owns the limits on
//! what a packet may carry (transaction id, token, node and value counts);
//! does not own what a message means to the node (that is `node`), and
//! does no I/O.

use super::id::NodeId;
use crate::bencode::{self, Dict, Value};
use crate::peer::extension::{canonical, compact_v4, compact_v6};
use crate::tracker::http;
use crate::types::InfoHash;
use std::fmt;
use std::net::SocketAddr;

/// Largest datagram we read or answer; anything longer is dropped
/// unread (real KRPC packets stay under 1,500 bytes).
pub(crate) const MAX_PACKET: usize = 2048;
/// Longest transaction id we echo back (libtorrent sends 2 bytes).
const MAX_TID: usize = 16;
/// Longest token we keep (ours are 8 bytes; libtorrent's 4).
const MAX_TOKEN: usize = 64;
/// `values` entries kept from one response (a 2 KiB packet holds ~250).
pub(crate) const MAX_VALUES: usize = 256;
/// Nodes kept from one `nodes` or `nodes6` list.
pub(crate) const MAX_NODES: usize = 64;
const NODE4: usize = 26;
const NODE6: usize = 38;

/// A node as a compact `nodes` entry names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeAddr {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
}

/// Which address families a querier wants nodes of (BEP 32). Neither
/// set means "the family I wrote from".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) v4: bool,
    pub(crate) v6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Query {
    Ping,
    FindNode {
        target: NodeId,
    },
    GetPeers {
        info_hash: InfoHash,
    },
    AnnouncePeer {
        info_hash: InfoHash,
        port: u16,
        /// Use the packet's source port instead of `port` (BEP 5).
        implied_port: bool,
        token: Vec<u8>,
    },
    /// A method we do not implement (answered with error 204).
    Unknown(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) id: NodeId,
    pub(crate) nodes: Vec<NodeAddr>,
    pub(crate) nodes6: Vec<NodeAddr>,
    pub(crate) values: Vec<SocketAddr>,
    pub(crate) token: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    Query {
        id: NodeId,
        query: Query,
        want: Want,
    },
    Response(Response),
    Error {
        code: i64,
        message: String,
    },
}

/// One KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) tid: Vec<u8>,
    pub(crate) body: Body,
    /// BEP 43: the sender is read-only (it queries but never answers), so
    /// it must not enter a routing table.
    pub(crate) read_only: bool,
}

/// Why a datagram is not a KRPC message we can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Error {
    TooLong(usize),
    Bencode(bencode::Error),
    /// A key is missing or of the wrong type or size.
    Field(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLong(n) => write!(f, "krpc: packet of {n} bytes is too long"),
            Error::Bencode(e) => write!(f, "krpc: {e}"),
            Error::Field(k) => write!(f, "krpc: missing or malformed `{k}`"),
        }
    }
}

impl std::error::Error for Error {}

fn id20(v: Option<&Value<'_>>, key: &'static str) -> Result<[u8; 20], Error> {
    v.and_then(Value::as_bytes)
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .ok_or(Error::Field(key))
}

/// Compact nodes: whole entries only, at most `max`, port 0 and
/// unspecified addresses dropped.
pub(crate) fn parse_nodes_upto(b: &[u8], v6: bool, max: usize) -> Vec<NodeAddr> {
    let size = if v6 { NODE6 } else { NODE4 };
    b.chunks_exact(size)
        .take(max)
        .filter_map(|c| {
            let mut id = [0u8; 20];
            id.copy_from_slice(&c[..20]);
            let addr = if v6 {
                http::compact_v6(&c[20..])
            } else {
                http::compact_v4(&c[20..])
            };
            let addr = canonical(addr);
            (addr.port() != 0 && !addr.ip().is_unspecified()).then_some(NodeAddr {
                id: NodeId(id),
                addr,
            })
        })
        .collect()
}

/// The compact `nodes` and `nodes6` strings of a response.
pub(crate) fn compact_nodes(r: &Response) -> (Vec<u8>, Vec<u8>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    put_nodes(&mut v4, &r.nodes, false);
    put_nodes(&mut v6, &r.nodes6, true);
    (v4, v6)
}

fn put_nodes(out: &mut Vec<u8>, nodes: &[NodeAddr], v6: bool) {
    for n in nodes {
        match (canonical(n.addr), v6) {
            (SocketAddr::V4(a), false) => {
                out.extend_from_slice(&n.id.0);
                out.extend_from_slice(&compact_v4(a));
            }
            (SocketAddr::V6(a), true) => {
                out.extend_from_slice(&n.id.0);
                out.extend_from_slice(&compact_v6(a));
            }
            _ => {}
        }
    }
}

fn compact_peer(a: SocketAddr) -> Vec<u8> {
    match canonical(a) {
        SocketAddr::V4(a) => compact_v4(a).to_vec(),
        SocketAddr::V6(a) => compact_v6(a).to_vec(),
    }
}

impl Msg {
    /// Decodes one datagram. Unknown keys are ignored (BEP 5 nodes add
    /// their own, like `v` and `ip`); sizes are checked before anything
    /// is kept, so a packet costs time linear in its length.
    pub(crate) fn decode(data: &[u8]) -> Result<Msg, Error> {
        if data.len() > MAX_PACKET {
            return Err(Error::TooLong(data.len()));
        }
        let v = bencode::decode(data).map_err(Error::Bencode)?;
        let d = v.as_dict().ok_or(Error::Field("message"))?;
        let tid = d
            .get(b"t")
            .and_then(Value::as_bytes)
            .filter(|t| t.len() <= MAX_TID)
            .ok_or(Error::Field("t"))?
            .to_vec();
        let read_only = d.get(b"ro").and_then(Value::as_int) == Some(1);
        let y = d
            .get(b"y")
            .and_then(Value::as_bytes)
            .ok_or(Error::Field("y"))?;
        let body = match y {
            b"q" => decode_query(d)?,
            b"r" => Body::Response(decode_response(
                d.get(b"r")
                    .and_then(Value::as_dict)
                    .ok_or(Error::Field("r"))?,
            )?),
            b"e" => {
                let l = d
                    .get(b"e")
                    .and_then(Value::as_list)
                    .ok_or(Error::Field("e"))?;
                let code = l.first().and_then(Value::as_int).unwrap_or(0);
                let message = l
                    .get(1)
                    .and_then(Value::as_bytes)
                    .map(|m| String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned())
                    .unwrap_or_default();
                Body::Error { code, message }
            }
            _ => return Err(Error::Field("y")),
        };
        Ok(Msg {
            tid,
            body,
            read_only,
        })
    }

    /// The canonical bencoding of the message.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Owned pieces the dictionary borrows from.
        let (nodes, nodes6) = match &self.body {
            Body::Response(r) => compact_nodes(r),
            _ => (Vec::new(), Vec::new()),
        };
        let values: Vec<Vec<u8>>;
        let mut top = Dict::new();
        top.insert(b"t", Value::Bytes(&self.tid));
        let method: &[u8];
        let mut inner = Dict::new();
        let mut want_list = Vec::new();
        match &self.body {
            Body::Query { id, query, want } => {
                top.insert(b"y", Value::Bytes(b"q"));
                inner.insert(b"id", Value::Bytes(&id.0));
                method = match query {
                    Query::Ping => b"ping",
                    Query::FindNode { target } => {
                        inner.insert(b"target", Value::Bytes(&target.0));
                        b"find_node"
                    }
                    Query::GetPeers { info_hash } => {
                        inner.insert(b"info_hash", Value::Bytes(&info_hash.0));
                        b"get_peers"
                    }
                    Query::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        inner.insert(b"info_hash", Value::Bytes(&info_hash.0));
                        inner.insert(b"port", Value::Int(i64::from(*port)));
                        inner.insert(b"token", Value::Bytes(token));
                        if *implied_port {
                            inner.insert(b"implied_port", Value::Int(1));
                        }
                        b"announce_peer"
                    }
                    Query::Unknown(m) => m.as_bytes(),
                };
                if want.v4 {
                    want_list.push(Value::Bytes(b"n4"));
                }
                if want.v6 {
                    want_list.push(Value::Bytes(b"n6"));
                }
                if !want_list.is_empty() {
                    inner.insert(b"want", Value::List(want_list));
                }
                top.insert(b"q", Value::Bytes(method));
                top.insert(b"a", Value::Dict(inner));
            }
            Body::Response(r) => {
                top.insert(b"y", Value::Bytes(b"r"));
                inner.insert(b"id", Value::Bytes(&r.id.0));
                if !r.nodes.is_empty() {
                    inner.insert(b"nodes", Value::Bytes(&nodes));
                }
                if !r.nodes6.is_empty() {
                    inner.insert(b"nodes6", Value::Bytes(&nodes6));
                }
                values = r.values.iter().map(|a| compact_peer(*a)).collect();
                if !values.is_empty() {
                    inner.insert(
                        b"values",
                        Value::List(values.iter().map(|v| Value::Bytes(v)).collect()),
                    );
                }
                if let Some(t) = &r.token {
                    inner.insert(b"token", Value::Bytes(t));
                }
                top.insert(b"r", Value::Dict(inner));
            }
            Body::Error { code, message } => {
                top.insert(b"y", Value::Bytes(b"e"));
                top.insert(
                    b"e",
                    Value::List(vec![Value::Int(*code), Value::Bytes(message.as_bytes())]),
                );
            }
        }
        if self.read_only {
            top.insert(b"ro", Value::Int(1));
        }
        bencode::encode(&Value::Dict(top))
    }
}

fn decode_query(d: &Dict<'_>) -> Result<Body, Error> {
    let q = d
        .get(b"q")
        .and_then(Value::as_bytes)
        .ok_or(Error::Field("q"))?;
    let a = d
        .get(b"a")
        .and_then(Value::as_dict)
        .ok_or(Error::Field("a"))?;
    let id = NodeId(id20(a.get(b"id"), "id")?);
    let mut want = Want::default();
    if let Some(list) = a.get(b"want").and_then(Value::as_list) {
        for w in list.iter().take(8).filter_map(Value::as_bytes) {
            match w {
                b"n4" => want.v4 = true,
                b"n6" => want.v6 = true,
                _ => {}
            }
        }
    }
    let query = match q {
        b"ping" => Query::Ping,
        b"find_node" => Query::FindNode {
            target: NodeId(id20(a.get(b"target"), "target")?),
        },
        b"get_peers" => Query::GetPeers {
            info_hash: InfoHash(id20(a.get(b"info_hash"), "info_hash")?),
        },
        b"announce_peer" => {
            let port = a.get(b"port").and_then(Value::as_int).unwrap_or(0);
            let implied_port = a.get(b"implied_port").and_then(Value::as_int) == Some(1);
            let port = u16::try_from(port).map_err(|_| Error::Field("port"))?;
            if port == 0 && !implied_port {
                return Err(Error::Field("port"));
            }
            Query::AnnouncePeer {
                info_hash: InfoHash(id20(a.get(b"info_hash"), "info_hash")?),
                port,
                implied_port,
                token: a
                    .get(b"token")
                    .and_then(Value::as_bytes)
                    .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
                    .ok_or(Error::Field("token"))?
                    .to_vec(),
            }
        }
        other => Query::Unknown(String::from_utf8_lossy(&other[..other.len().min(32)]).into()),
    };
    Ok(Body::Query { id, query, want })
}

fn decode_response(r: &Dict<'_>) -> Result<Response, Error> {
    let id = NodeId(id20(r.get(b"id"), "id")?);
    let nodes = r
        .get(b"nodes")
        .and_then(Value::as_bytes)
        .map_or_else(Vec::new, |b| parse_nodes_upto(b, false, MAX_NODES));
    let nodes6 = r
        .get(b"nodes6")
        .and_then(Value::as_bytes)
        .map_or_else(Vec::new, |b| parse_nodes_upto(b, true, MAX_NODES));
    let mut values = Vec::new();
    if let Some(list) = r.get(b"values").and_then(Value::as_list) {
        for v in list.iter().filter_map(Value::as_bytes).take(MAX_VALUES) {
            let a = match v.len() {
                6 => http::compact_v4(v),
                18 => http::compact_v6(v),
                _ => continue,
            };
            let a = canonical(a);
            if a.port() != 0 && !a.ip().is_unspecified() {
                values.push(a);
            }
        }
    }
    let token = r
        .get(b"token")
        .and_then(Value::as_bytes)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        .map(<[u8]>::to_vec);
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
    })
}

/// The fuzz target's body: whatever decodes re-encodes to bytes that
/// decode to the same message; panics on a violation.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(m) = Msg::decode(data) {
        let again = m.encode();
        let back = Msg::decode(&again).expect("re-encoded message decodes");
        assert_eq!(back, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    #[test]
    fn bep5_examples_decode() {
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let m = Msg::decode(ping).unwrap();
        assert_eq!(m.tid, b"aa");
        assert_eq!(
            m.body,
            Body::Query {
                id: NodeId(*b"abcdefghij0123456789"),
                query: Query::Ping,
                want: Want::default()
            }
        );
        assert_eq!(m.encode(), ping.to_vec());

        let ann = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
        let m = Msg::decode(ann).unwrap();
        match &m.body {
            Body::Query {
                query:
                    Query::AnnouncePeer {
                        port,
                        token,
                        implied_port,
                        ..
                    },
                ..
            } => {
                assert_eq!(*port, 6881);
                assert_eq!(token, b"aoeusnth");
                assert!(!implied_port);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.encode(), ann.to_vec());

        let values = b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re";
        let m = Msg::decode(values).unwrap();
        let Body::Response(r) = &m.body else { panic!() };
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.values[0].to_string(), "97.120.106.101:11893");
        assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));

        let err = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let m = Msg::decode(err).unwrap();
        assert_eq!(
            m.body,
            Body::Error {
                code: 201,
                message: "A Generic Error Ocurred".into()
            }
        );
    }

    #[test]
    fn responses_round_trip_with_both_families() {
        let m = Msg {
            tid: vec![1, 2],
            body: Body::Response(Response {
                id: id(1),
                nodes: vec![NodeAddr {
                    id: id(2),
                    addr: "10.1.2.3:6881".parse().unwrap(),
                }],
                nodes6: vec![NodeAddr {
                    id: id(3),
                    addr: "[2001:db8::1]:51413".parse().unwrap(),
                }],
                values: vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()],
                token: Some(b"tok".to_vec()),
            }),
            read_only: false,
        };
        assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        fuzz(&m.encode());
    }

    #[test]
    fn hostile_packets_are_rejected_or_bounded() {
        // Wrong-size ids, missing fields, oversized tids and tokens.
        for bad in [
            &b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"[..],
            b"d1:q4:ping1:t2:aa1:y1:qe",
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t17:aaaaaaaaaaaaaaaaa1:y1:qe",
            b"d1:t2:aa1:y1:xe",
            b"le",
            b"",
        ] {
            assert!(
                Msg::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A `nodes` string of 2,000 bytes keeps MAX_NODES whole entries;
        // a ragged tail is ignored.
        let mut nodes = vec![7u8; NODE4 * 76 + 5];
        nodes[20..26].copy_from_slice(&[1, 2, 3, 4, 0, 1]);
        let mut pkt = b"d1:rd2:id20:abcdefghij01234567895:nodes".to_vec();
        pkt.extend_from_slice(format!("{}:", nodes.len()).as_bytes());
        pkt.extend_from_slice(&nodes);
        pkt.extend_from_slice(b"e1:t2:aa1:y1:re");
        let m = Msg::decode(&pkt).unwrap();
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!(r.nodes.len(), MAX_NODES);
        // Too long to read at all.
        assert_eq!(
            Msg::decode(&vec![b'x'; MAX_PACKET + 1]),
            Err(Error::TooLong(MAX_PACKET + 1))
        );
        // An unknown method still parses, to be answered with 204.
        let m = Msg::decode(b"d1:ad2:id20:abcdefghij0123456789e1:q3:put1:t2:aa1:y1:qe").unwrap();
        assert!(matches!(
            m.body,
            Body::Query {
                query: Query::Unknown(_),
                ..
            }
        ));
        // announce_peer without a port or token is malformed.
        assert!(Msg::decode(b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe").is_err());
    }
}
