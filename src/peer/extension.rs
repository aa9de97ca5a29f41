//! BEP 10 extension protocol payloads as pure encode/decode: the reserved
//! bit that announces it, the extension handshake (`ExtHandshake`), BEP 9
//! metadata messages (`MetadataMsg`) and BEP 11 peer exchange (`Pex`).
//! Owns the meaning of extended payloads and the limits on what a peer may
//! claim in them (metadata size, client name, address counts).
//!
//! Does not own framing (`peer::message` frames id 20 as
//! `Message::Extended`), does no I/O, and keeps no per-connection state:
//! the peer's extension ids are just the `ExtHandshake` it sent (we send to
//! *its* ids; it sends to *ours*, `UT_METADATA_ID` and `UT_PEX_ID`), and
//! fetching metadata from several peers is `session::metadata`.

use super::upload;
use crate::bencode::{self, Dict, Value};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// BEP 10: the extension protocol is announced by bit 20 from the right of
/// the handshake's reserved bytes, that is `reserved[5] & 0x10`.
pub(crate) const EXTENSION_BIT: u8 = 0x10;
const EXTENSION_BYTE: usize = 5;

/// Sets the extension protocol bit in a handshake's reserved bytes
/// (`message::Handshake::reserved`).
pub(crate) fn set_extension_bit(reserved: &mut [u8; 8]) {
    reserved[EXTENSION_BYTE] |= EXTENSION_BIT;
}

/// Whether a handshake's reserved bytes announce the extension protocol.
pub(crate) fn has_extension_bit(reserved: &[u8; 8]) -> bool {
    reserved[EXTENSION_BYTE] & EXTENSION_BIT != 0
}

/// Extended id 0 is the extension handshake, in both directions.
pub(crate) const HANDSHAKE_ID: u8 = 0;
/// The extended ids we assign in our handshake: a peer sends its
/// `ut_metadata` messages to us with id 1 and its `ut_pex` ones with id 2.
pub(crate) const UT_METADATA_ID: u8 = 1;
pub(crate) const UT_PEX_ID: u8 = 2;

/// What an extended message *sent to us* is, by the id we assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExtKind {
    Handshake,
    Metadata,
    Pex,
}

impl ExtKind {
    /// `None` for an id we never assigned: BEP 10 leaves such a message
    /// meaningless, and callers ignore it.
    pub(crate) fn of(id: u8) -> Option<ExtKind> {
        match id {
            HANDSHAKE_ID => Some(ExtKind::Handshake),
            UT_METADATA_ID => Some(ExtKind::Metadata),
            UT_PEX_ID => Some(ExtKind::Pex),
            _ => None,
        }
    }
}

/// BEP 9 cuts the info dictionary into pieces of 16 KiB, the last shorter.
/// (Equal to `geometry::BLOCK_LEN` but fixed by BEP 9, not by our choice.)
pub(crate) const METADATA_PIECE_LEN: u32 = 16 * 1024;

/// Largest info dictionary we fetch or serve: libtorrent's default
/// `max_metadata_size`, `3 * 1024 * 10240` bytes = 31,457,280 (30 MiB), in
/// its `src/settings_pack.cpp`. qBittorrent and Deluge, being libtorrent,
/// cannot fetch a bigger one by magnet either, so nothing real is lost;
/// and it bounds what assembling one costs us (one buffer of this size).
pub(crate) const MAX_METADATA_SIZE: u32 = 3 * 10 * 1024 * 1024;

/// Pieces of the largest info dictionary (1920).
pub(crate) const MAX_METADATA_PIECES: u32 = MAX_METADATA_SIZE.div_ceil(METADATA_PIECE_LEN);

// A full data message (piece, header, ids) fits the extended frame bound.
const _: () = assert!(METADATA_PIECE_LEN + 128 <= super::message::MAX_EXTENDED_FRAME);

/// Number of pieces of an info dictionary of `size` bytes.
pub(crate) fn metadata_piece_count(size: u32) -> u32 {
    size.div_ceil(METADATA_PIECE_LEN)
}

/// Length of piece `piece` of an info dictionary of `size` bytes; `None`
/// past the end.
pub(crate) fn metadata_piece_len(size: u32, piece: u32) -> Option<u32> {
    let start = u64::from(piece) * u64::from(METADATA_PIECE_LEN);
    let left = u64::from(size).checked_sub(start).filter(|&l| l > 0)?;
    Some(left.min(u64::from(METADATA_PIECE_LEN)) as u32)
}

/// Longest client name (`v`) kept; the rest is cut off. Callers print it
/// with `text::Escaped`, as it is the peer's text.
pub(crate) const MAX_CLIENT_LEN: usize = 64;

/// Addresses taken from one PEX message, per direction (`added` and
/// `added6` together, `dropped` and `dropped6` together); the rest are
/// ignored. BEP 11 asks senders for at most 50 per direction except in the
/// first message, which may list every peer the sender has.
pub(crate) const MAX_PEX_PEERS: usize = 200;

/// Addresses we put in one PEX message per direction (BEP 11).
pub(crate) const MAX_PEX_SEND: usize = 50;

/// BEP 11 `added.f` flags.
#[cfg(test)]
pub(crate) const PEX_PREFERS_ENCRYPTION: u8 = 0x01;
pub(crate) const PEX_SEED: u8 = 0x02;
pub(crate) const PEX_REACHABLE: u8 = 0x10;

/// Why an extended payload is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtError {
    /// Not bencode (or trailing bytes after a handshake or PEX dictionary).
    Bencode(bencode::Error),
    /// The payload is bencode but not a dictionary.
    NotDict,
    /// A key we interpret holds the wrong type of value.
    WrongType {
        key: &'static str,
        found: &'static str,
    },
    /// A required key is absent.
    Missing { key: &'static str },
    /// An integer outside what the key allows.
    OutOfRange { key: &'static str, value: i64 },
    /// A metadata piece index past the end of the info dictionary.
    PieceOutOfRange { piece: u32, pieces: u32 },
    /// A metadata data message whose data is not the length its piece has.
    BadPieceLength { piece: u32, len: usize, want: u32 },
    /// Bytes after the dictionary of a metadata request or reject.
    TrailingBytes { len: usize },
    /// A compact address list whose length is not a multiple of the
    /// address size (6 for IPv4, 18 for IPv6).
    BadAddressList { key: &'static str, len: usize },
}

impl fmt::Display for ExtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtError::Bencode(e) => write!(f, "extension message: {e}"),
            ExtError::NotDict => f.write_str("extension message: payload is not a dictionary"),
            ExtError::WrongType { key, found } => {
                write!(f, "extension message: `{key}` is a {found}")
            }
            ExtError::Missing { key } => write!(f, "extension message: `{key}` is missing"),
            ExtError::OutOfRange { key, value } => {
                write!(f, "extension message: `{key}` {value} is out of range")
            }
            ExtError::PieceOutOfRange { piece, pieces } => write!(
                f,
                "ut_metadata: piece {piece} is past the end ({pieces} pieces)"
            ),
            ExtError::BadPieceLength { piece, len, want } => write!(
                f,
                "ut_metadata: piece {piece} carries {len} bytes instead of {want}"
            ),
            ExtError::TrailingBytes { len } => {
                write!(f, "ut_metadata: {len} bytes after a request or reject")
            }
            ExtError::BadAddressList { key, len } => write!(
                f,
                "ut_pex: `{key}` is {len} bytes, not a whole number of addresses"
            ),
        }
    }
}

impl std::error::Error for ExtError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExtError::Bencode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<bencode::Error> for ExtError {
    fn from(e: bencode::Error) -> ExtError {
        ExtError::Bencode(e)
    }
}

fn as_dict<'v, 'a>(v: &'v Value<'a>) -> Result<&'v Dict<'a>, ExtError> {
    v.as_dict().ok_or(ExtError::NotDict)
}

/// The integer at `key`, if present, within `lo..=hi`.
fn int_in(dict: &Dict<'_>, key: &'static str, lo: i64, hi: i64) -> Result<Option<i64>, ExtError> {
    match dict.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Int(n)) if (lo..=hi).contains(n) => Ok(Some(*n)),
        Some(Value::Int(n)) => Err(ExtError::OutOfRange { key, value: *n }),
        Some(other) => Err(ExtError::WrongType {
            key,
            found: other.type_name(),
        }),
    }
}

fn bytes_at<'a>(dict: &Dict<'a>, key: &'static str) -> Result<Option<&'a [u8]>, ExtError> {
    match dict.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b)),
        Some(other) => Err(ExtError::WrongType {
            key,
            found: other.type_name(),
        }),
    }
}

/// A BEP 10 extension handshake: what the peer supports (its ids for the
/// extensions we use; `None` when absent or disabled with id 0) and the
/// other keys we use. Unknown keys and unknown extensions are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExtHandshake {
    /// The id to send `ut_metadata` messages to this peer with.
    pub(crate) ut_metadata: Option<u8>,
    /// The id to send `ut_pex` messages to this peer with.
    pub(crate) ut_pex: Option<u8>,
    /// BEP 9 `metadata_size`: 1..=`MAX_METADATA_SIZE`.
    pub(crate) metadata_size: Option<u32>,
    /// `v`: the peer's client name, lossy UTF-8, at most `MAX_CLIENT_LEN`
    /// bytes. The peer's text: print it escaped.
    pub(crate) client: Option<String>,
    /// `p`: the port the peer listens on (1..=65535).
    pub(crate) listen_port: Option<u16>,
    /// `reqq`: how many requests the peer queues without dropping.
    pub(crate) reqq: Option<u32>,
    /// `yourip`: our address as the peer sees it.
    pub(crate) yourip: Option<IpAddr>,
}

impl ExtHandshake {
    /// The handshake we send: both extensions at our ids, our metadata size
    /// once we have the info dictionary, our listening port, and the
    /// peer's address as we see it.
    pub(crate) fn ours(
        metadata_size: Option<u32>,
        listen_port: Option<u16>,
        yourip: Option<IpAddr>,
    ) -> ExtHandshake {
        ExtHandshake {
            ut_metadata: Some(UT_METADATA_ID),
            ut_pex: Some(UT_PEX_ID),
            metadata_size,
            client: Some(format!("rtc {}", env!("CARGO_PKG_VERSION"))),
            listen_port,
            // Half of what counts as a flood, so that requests crossing
            // cancels in flight never reach it.
            reqq: Some(upload::MAX_QUEUED as u32 / 2),
            yourip,
        }
    }

    /// The bencoded payload (after the extended id) of this handshake.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut m = Dict::new();
        if let Some(id) = self.ut_metadata {
            m.insert(b"ut_metadata", Value::Int(i64::from(id)));
        }
        if let Some(id) = self.ut_pex {
            m.insert(b"ut_pex", Value::Int(i64::from(id)));
        }
        let ip = self.yourip.map(|ip| match ip.to_canonical() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        });
        let mut d = Dict::new();
        d.insert(b"m", Value::Dict(m));
        if let Some(n) = self.metadata_size {
            d.insert(b"metadata_size", Value::Int(i64::from(n)));
        }
        if let Some(v) = &self.client {
            d.insert(b"v", Value::Bytes(v.as_bytes()));
        }
        if let Some(p) = self.listen_port {
            d.insert(b"p", Value::Int(i64::from(p)));
        }
        if let Some(n) = self.reqq {
            d.insert(b"reqq", Value::Int(i64::from(n)));
        }
        if let Some(ip) = &ip {
            d.insert(b"yourip", Value::Bytes(ip));
        }
        bencode::encode(&Value::Dict(d))
    }

    /// Parses a handshake payload (the bytes after extended id 0).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn decode(payload: &[u8]) -> Result<ExtHandshake, ExtError> {
        let mut hs = ExtHandshake::default();
        hs.update(payload)?;
        Ok(hs)
    }

    /// Applies a later handshake from the same peer. BEP 10 makes `m`
    /// additive: an extension absent from the new `m` keeps its id, one
    /// given id 0 is disabled; other keys present replace earlier values.
    /// On an error `self` is left unchanged.
    pub(crate) fn update(&mut self, payload: &[u8]) -> Result<(), ExtError> {
        let value = bencode::decode(payload)?;
        let d = as_dict(&value)?;
        let mut next = self.clone();
        if let Some(m) = d.get(b"m") {
            let m = m.as_dict().ok_or(ExtError::WrongType {
                key: "m",
                found: m.type_name(),
            })?;
            // id 0 disables; anything else must fit the one-byte id.
            // A key of the wrong type or out of range is ignored, as
            // unknown keys are: one odd field must not cost a good peer.
            let id = |key| int_in(m, key, 0, 255).ok().flatten().map(|n| n as u8);
            if let Some(id) = id("ut_metadata") {
                next.ut_metadata = Some(id).filter(|&i| i != 0);
            }
            if let Some(id) = id("ut_pex") {
                next.ut_pex = Some(id).filter(|&i| i != 0);
            }
        }
        // Any size that fits is kept: whether it is plausible is for the
        // metadata fetch to judge (and to convict a peer for).
        if let Some(n) = int_in(d, "metadata_size", 1, i64::from(u32::MAX))
            .ok()
            .flatten()
        {
            next.metadata_size = u32::try_from(n).ok();
        }
        if let Some(v) = bytes_at(d, "v").ok().flatten() {
            next.client = Some(client_name(v));
        }
        if let Some(p) = int_in(d, "p", 1, 65535).ok().flatten() {
            next.listen_port = u16::try_from(p).ok();
        }
        if let Some(n) = int_in(d, "reqq", 0, i64::from(u32::MAX)).ok().flatten() {
            next.reqq = u32::try_from(n).ok();
        }
        if let Some(ip) = bytes_at(d, "yourip").ok().flatten() {
            match ip.len() {
                4 => {
                    let b = <[u8; 4]>::try_from(ip).expect("4 bytes");
                    next.yourip = Some(IpAddr::V4(Ipv4Addr::from(b)));
                }
                16 => {
                    let b = <[u8; 16]>::try_from(ip).expect("16 bytes");
                    next.yourip = Some(IpAddr::V6(Ipv6Addr::from(b)).to_canonical());
                }
                _ => {}
            }
        }
        *self = next;
        Ok(())
    }
}

/// At most `MAX_CLIENT_LEN` bytes of `v` as text: only that much is
/// looked at, invalid UTF-8 is replaced, and the result is cut back to the
/// bound at a character boundary (replacement characters are longer than
/// the bytes they replace).
fn client_name(v: &[u8]) -> String {
    let head = &v[..v.len().min(MAX_CLIENT_LEN)];
    let mut s = String::from_utf8_lossy(head).into_owned();
    let mut cut = s.len().min(MAX_CLIENT_LEN);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

/// A BEP 9 metadata message. `Data` borrows the piece from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetadataMsg<'a> {
    Request {
        piece: u32,
    },
    Data {
        piece: u32,
        total_size: u32,
        data: &'a [u8],
    },
    Reject {
        piece: u32,
    },
}

const MSG_REQUEST: i64 = 0;
const MSG_DATA: i64 = 1;
const MSG_REJECT: i64 = 2;

impl<'a> MetadataMsg<'a> {
    /// The payload (after the extended id): a bencoded dictionary, and for
    /// `Data` the piece's bytes right after it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut d = Dict::new();
        let (kind, piece) = match *self {
            MetadataMsg::Request { piece } => (MSG_REQUEST, piece),
            MetadataMsg::Data {
                piece, total_size, ..
            } => {
                d.insert(b"total_size", Value::Int(i64::from(total_size)));
                (MSG_DATA, piece)
            }
            MetadataMsg::Reject { piece } => (MSG_REJECT, piece),
        };
        d.insert(b"msg_type", Value::Int(kind));
        d.insert(b"piece", Value::Int(i64::from(piece)));
        let mut out = bencode::encode(&Value::Dict(d));
        if let MetadataMsg::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
        out
    }

    /// Parses a `ut_metadata` payload. `Ok(None)` for a `msg_type` BEP 9
    /// does not define, which BEP 9 says to ignore. A data message must
    /// carry exactly its piece's length (at most 16 KiB) for the
    /// `total_size` it states, which must be plausible; a request or reject
    /// must name a piece that the largest info dictionary we accept has.
    pub(crate) fn decode(payload: &'a [u8]) -> Result<Option<MetadataMsg<'a>>, ExtError> {
        let (value, used) = bencode::decode_prefix(payload)?;
        let d = as_dict(&value)?;
        let rest = &payload[used..];
        let kind = int_in(d, "msg_type", i64::MIN, i64::MAX)?
            .ok_or(ExtError::Missing { key: "msg_type" })?;
        if !(MSG_REQUEST..=MSG_REJECT).contains(&kind) {
            return Ok(None);
        }
        let piece = int_in(d, "piece", 0, i64::from(u32::MAX))?
            .ok_or(ExtError::Missing { key: "piece" })? as u32;
        if kind == MSG_DATA {
            let total = int_in(d, "total_size", i64::MIN, i64::MAX)?
                .ok_or(ExtError::Missing { key: "total_size" })?;
            if !(1..=i64::from(MAX_METADATA_SIZE)).contains(&total) {
                return Err(ExtError::OutOfRange {
                    key: "total_size",
                    value: total,
                });
            }
            let total_size = total as u32;
            let pieces = metadata_piece_count(total_size);
            let want = metadata_piece_len(total_size, piece)
                .ok_or(ExtError::PieceOutOfRange { piece, pieces })?;
            if rest.len() != want as usize {
                return Err(ExtError::BadPieceLength {
                    piece,
                    len: rest.len(),
                    want,
                });
            }
            return Ok(Some(MetadataMsg::Data {
                piece,
                total_size,
                data: rest,
            }));
        }
        if piece >= MAX_METADATA_PIECES {
            return Err(ExtError::PieceOutOfRange {
                piece,
                pieces: MAX_METADATA_PIECES,
            });
        }
        if !rest.is_empty() {
            return Err(ExtError::TrailingBytes { len: rest.len() });
        }
        Ok(Some(if kind == MSG_REQUEST {
            MetadataMsg::Request { piece }
        } else {
            MetadataMsg::Reject { piece }
        }))
    }
}

/// A BEP 11 peer exchange message: peers the sender connected to since its
/// last message (`added`, with one flags byte each in `added_flags`) and
/// peers it lost (`dropped`). IPv4 and IPv6 addresses travel in separate
/// keys and share these lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pex {
    pub(crate) added: Vec<SocketAddr>,
    /// Decoded: always as long as `added` (0 where the sender gave no
    /// flags). To encode: as long as `added` to send flags, else empty.
    pub(crate) added_flags: Vec<u8>,
    pub(crate) dropped: Vec<SocketAddr>,
}

const V4_LEN: usize = 6;
const V6_LEN: usize = 18;

impl Pex {
    /// The payload of a PEX message from our view: at most `MAX_PEX_SEND`
    /// added and `MAX_PEX_SEND` dropped addresses (the first ones; callers
    /// keep the rest for the next message). `added.f`/`added6.f` are sent
    /// when `added_flags` has one byte per added address. Empty lists are
    /// left out.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let added = &self.added[..self.added.len().min(MAX_PEX_SEND)];
        let dropped = &self.dropped[..self.dropped.len().min(MAX_PEX_SEND)];
        let flags = (self.added_flags.len() == self.added.len()).then_some(&self.added_flags);
        let (mut a4, mut f4, mut a6, mut f6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, addr) in added.iter().enumerate() {
            let flag = flags.map(|f| f[i]);
            match canonical(*addr) {
                SocketAddr::V4(a) => {
                    a4.extend_from_slice(&compact_v4(a));
                    f4.extend(flag);
                }
                SocketAddr::V6(a) => {
                    a6.extend_from_slice(&compact_v6(a));
                    f6.extend(flag);
                }
            }
        }
        let (mut d4, mut d6) = (Vec::new(), Vec::new());
        for addr in dropped {
            match canonical(*addr) {
                SocketAddr::V4(a) => d4.extend_from_slice(&compact_v4(a)),
                SocketAddr::V6(a) => d6.extend_from_slice(&compact_v6(a)),
            }
        }
        let mut d = Dict::new();
        for (key, bytes) in [
            (&b"added"[..], &a4),
            (&b"added.f"[..], &f4),
            (&b"added6"[..], &a6),
            (&b"added6.f"[..], &f6),
            (&b"dropped"[..], &d4),
            (&b"dropped6"[..], &d6),
        ] {
            if !bytes.is_empty() {
                d.insert(key, Value::Bytes(bytes));
            }
        }
        bencode::encode(&Value::Dict(d))
    }

    /// Parses a `ut_pex` payload. At most `MAX_PEX_PEERS` addresses are
    /// taken per direction, IPv4 first (the rest are ignored, and cost
    /// nothing); a list whose length is not a whole number of addresses is
    /// an error. Addresses with port 0 are skipped; IPv4-mapped IPv6
    /// addresses become IPv4. Flags are used when the list's `.f` key has
    /// exactly one byte per address, and are otherwise 0.
    pub(crate) fn decode(payload: &[u8]) -> Result<Pex, ExtError> {
        let value = bencode::decode(payload)?;
        let d = as_dict(&value)?;
        let (a4, a6) = (list(d, "added", V4_LEN)?, list(d, "added6", V6_LEN)?);
        let (d4, d6) = (list(d, "dropped", V4_LEN)?, list(d, "dropped6", V6_LEN)?);
        let (f4, f6) = (
            flags(d, "added.f", a4.len() / V4_LEN)?,
            flags(d, "added6.f", a6.len() / V6_LEN)?,
        );

        let mut pex = Pex::default();
        take(&mut pex.added, Some(&mut pex.added_flags), a4, f4, V4_LEN);
        take(&mut pex.added, Some(&mut pex.added_flags), a6, f6, V6_LEN);
        take(&mut pex.dropped, None, d4, &[], V4_LEN);
        take(&mut pex.dropped, None, d6, &[], V6_LEN);
        Ok(pex)
    }
}

/// The compact address list at `key` (empty when absent), refused unless
/// it is a whole number of `width`-byte addresses.
fn list<'a>(d: &Dict<'a>, key: &'static str, width: usize) -> Result<&'a [u8], ExtError> {
    let bytes = bytes_at(d, key)?.unwrap_or_default();
    if bytes.len() % width != 0 {
        return Err(ExtError::BadAddressList {
            key,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// The flags at `key` if there is exactly one per address, else none.
fn flags<'a>(d: &Dict<'a>, key: &'static str, count: usize) -> Result<&'a [u8], ExtError> {
    let f = bytes_at(d, key)?.unwrap_or_default();
    Ok(if f.len() == count { f } else { &[] })
}

/// Appends the compact addresses of `list` (each `width` bytes) to `out`
/// until it holds `MAX_PEX_PEERS`, and their flags (from `flags`, one per
/// address, or 0) to `out_flags`. Looks at no more entries than it could
/// take, so a long list costs no more than a short one.
fn take(
    out: &mut Vec<SocketAddr>,
    mut out_flags: Option<&mut Vec<u8>>,
    list: &[u8],
    flags: &[u8],
    width: usize,
) {
    let room = MAX_PEX_PEERS.saturating_sub(out.len());
    for (i, entry) in list.chunks_exact(width).take(room).enumerate() {
        let addr = canonical(if width == V4_LEN {
            let ip: [u8; 4] = entry[..4].try_into().expect("4 bytes");
            SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([entry[4], entry[5]]))
        } else {
            let ip: [u8; 16] = entry[..16].try_into().expect("16 bytes");
            SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([entry[16], entry[17]]))
        });
        if addr.port() == 0 {
            continue;
        }
        out.push(addr);
        if let Some(f) = out_flags.as_deref_mut() {
            f.push(flags.get(i).copied().unwrap_or(0));
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

pub(crate) fn compact_v4(a: std::net::SocketAddrV4) -> [u8; V4_LEN] {
    let mut out = [0u8; V4_LEN];
    out[..4].copy_from_slice(&a.ip().octets());
    out[4..].copy_from_slice(&a.port().to_be_bytes());
    out
}

pub(crate) fn compact_v6(a: std::net::SocketAddrV6) -> [u8; V6_LEN] {
    let mut out = [0u8; V6_LEN];
    out[..16].copy_from_slice(&a.ip().octets());
    out[16..].copy_from_slice(&a.port().to_be_bytes());
    out
}

/// The fuzz target's body (`tests/fuzz`, through `crate::fuzzing`): every
/// decoder takes `data` without panicking, and what decodes re-encodes to
/// something that decodes to the same value, within the documented bounds.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(hs) = ExtHandshake::decode(data) {
        assert!(hs.client.as_ref().is_none_or(|v| v.len() <= MAX_CLIENT_LEN));
        assert!(hs
            .metadata_size
            .is_none_or(|n| (1..=MAX_METADATA_SIZE).contains(&n)));
        assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
    }
    if let Ok(Some(msg)) = MetadataMsg::decode(data) {
        if let MetadataMsg::Data { data, .. } = msg {
            assert!(data.len() <= METADATA_PIECE_LEN as usize);
        }
        assert_eq!(MetadataMsg::decode(&msg.encode()), Ok(Some(msg)));
    }
    if let Ok(pex) = Pex::decode(data) {
        assert!(pex.added.len() <= MAX_PEX_PEERS && pex.dropped.len() <= MAX_PEX_PEERS);
        assert_eq!(pex.added_flags.len(), pex.added.len());
        if pex.added.len() <= MAX_PEX_SEND && pex.dropped.len() <= MAX_PEX_SEND {
            // Encoding groups IPv4 before IPv6, so compare as sets.
            let sorted = |p: &Pex| {
                let mut added: Vec<_> = p.added.iter().zip(&p.added_flags).collect();
                added.sort();
                let mut dropped = p.dropped.clone();
                dropped.sort();
                (
                    added.into_iter().map(|(a, f)| (*a, *f)).collect::<Vec<_>>(),
                    dropped,
                )
            };
            let again = Pex::decode(&pex.encode()).expect("our encoding decodes");
            assert_eq!(sorted(&again), sorted(&pex));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn reserved_bit_is_byte_5_mask_0x10() {
        let mut r = [0u8; 8];
        assert!(!has_extension_bit(&r));
        set_extension_bit(&mut r);
        assert_eq!(r, [0, 0, 0, 0, 0, 0x10, 0, 0]);
        assert!(has_extension_bit(&r));
        // Other bits (DHT, fast) are left alone and do not count.
        let mut r = [0xff, 0xff, 0xff, 0xff, 0xff, 0xef, 0xff, 0xff];
        assert!(!has_extension_bit(&r));
        set_extension_bit(&mut r);
        assert_eq!(r, [0xff; 8]);
    }

    #[test]
    fn errors_read_as_lowercase_with_context() {
        assert_eq!(
            ExtHandshake::decode(b"li1ee").unwrap_err().to_string(),
            "extension message: payload is not a dictionary"
        );
        assert_eq!(
            Pex::decode(b"d5:added5:abcdee").unwrap_err().to_string(),
            "ut_pex: `added` is 5 bytes, not a whole number of addresses"
        );
        let e = ExtHandshake::decode(b"x").unwrap_err();
        assert!(e.to_string().starts_with("extension message: bencode: "));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn kinds_follow_our_ids() {
        assert_eq!(ExtKind::of(0), Some(ExtKind::Handshake));
        assert_eq!(ExtKind::of(UT_METADATA_ID), Some(ExtKind::Metadata));
        assert_eq!(ExtKind::of(UT_PEX_ID), Some(ExtKind::Pex));
        assert_eq!(ExtKind::of(3), None);
    }

    #[test]
    fn decodes_the_bep9_example_handshake() {
        let hs =
            ExtHandshake::decode(b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235ee")
                .unwrap();
        assert_eq!(
            hs,
            ExtHandshake {
                ut_metadata: Some(1),
                ut_pex: Some(2),
                metadata_size: Some(31235),
                ..ExtHandshake::default()
            }
        );
    }

    #[test]
    fn encodes_exact_bytes() {
        let hs = ExtHandshake {
            ut_metadata: Some(3),
            ut_pex: None,
            metadata_size: Some(31235),
            client: Some("rtc 0.1.0".into()),
            listen_port: Some(6881),
            reqq: Some(250),
            yourip: Some(IpAddr::from([10, 0, 0, 1])),
        };
        assert_eq!(
            hs.encode(),
            b"d1:md11:ut_metadatai3ee13:metadata_sizei31235e1:pi6881e4:reqqi250e\
              1:v9:rtc 0.1.06:yourip4:\x0a\x00\x00\x01e"
                .to_vec()
        );
        assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
    }

    #[test]
    fn handshake_roundtrips() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for hs in [
            ExtHandshake::default(),
            ExtHandshake::ours(None, Some(51413), Some(v6)),
            ExtHandshake::ours(Some(MAX_METADATA_SIZE), None, None),
        ] {
            assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
        }
        let ours = ExtHandshake::ours(Some(1), None, None);
        assert_eq!(ours.ut_metadata, Some(UT_METADATA_ID));
        assert_eq!(ours.ut_pex, Some(UT_PEX_ID));
    }

    #[test]
    fn unknown_extensions_and_keys_are_ignored_and_zero_disables() {
        let hs = ExtHandshake::decode(
            b"d1:md11:lt_donthavei7e10:share_modeli1ee11:ut_metadatai0e6:ut_pexi9ee\
              1:xd1:yi1ee12:complete_agoi-1ee",
        )
        .unwrap();
        assert_eq!(hs.ut_metadata, None);
        assert_eq!(hs.ut_pex, Some(9));
        assert_eq!(ExtHandshake::decode(b"de"), Ok(ExtHandshake::default()));
    }

    #[test]
    fn a_later_handshake_is_additive() {
        let mut hs = ExtHandshake::decode(b"d1:md11:ut_metadatai3e6:ut_pexi4ee1:pi99ee").unwrap();
        hs.update(b"d1:md6:ut_pexi0eee").unwrap();
        assert_eq!(hs.ut_metadata, Some(3));
        assert_eq!(hs.ut_pex, None);
        assert_eq!(hs.listen_port, Some(99));
        // An error leaves the earlier state whole.
        let before = hs.clone();
        assert!(hs.update(b"l6:ut_pexe").is_err());
        assert_eq!(hs, before);
    }

    #[test]
    fn odd_fields_are_ignored_and_garbage_refused() {
        // One odd field costs nothing but that field.
        for input in [
            &b"d1:md11:ut_metadata3:abcee"[..],
            b"d13:metadata_size5:31235e",
            b"d13:metadata_sizei0ee",
            b"d13:metadata_sizei-5ee",
            b"d1:vi7ee",
            b"d1:pi0ee",
            b"d4:reqqi-1ee",
            b"d6:yourip5:abcdee",
        ] {
            let hs = ExtHandshake::decode(input)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(input)));
            assert_eq!(
                hs,
                ExtHandshake::default(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        // A huge size is kept: the metadata fetch convicts whoever claims it.
        let hs = ExtHandshake::decode(b"d13:metadata_sizei2147483648ee").unwrap();
        assert_eq!(hs.metadata_size, Some(1 << 31));
        // Not a dictionary, or not bencode: refused.
        assert_eq!(ExtHandshake::decode(b"li1ee"), Err(ExtError::NotDict));
        assert_eq!(
            ExtHandshake::decode(b"d1:md11:ut_metadatai1eeee"),
            Err(ExtError::Bencode(bencode::Error::TrailingBytes { at: 24 }))
        );
        assert!(ExtHandshake::decode(b"d1:md11:ut_metadatai1ee").is_err());
        assert!(ExtHandshake::decode(b"").is_err());
    }

    #[test]
    fn client_name_is_bounded_and_lossy() {
        let long = format!("d1:v{}:{}e", 100_000, "x".repeat(100_000));
        let hs = ExtHandshake::decode(long.as_bytes()).unwrap();
        assert_eq!(hs.client.unwrap(), "x".repeat(MAX_CLIENT_LEN));
        // 64 invalid bytes become replacement characters, cut back to 64
        // bytes at a character boundary.
        let mut bad = b"d1:v64:".to_vec();
        bad.extend_from_slice(&[0xff; 64]);
        bad.push(b'e');
        let v = ExtHandshake::decode(&bad).unwrap().client.unwrap();
        assert!(v.len() <= MAX_CLIENT_LEN && v.chars().all(|c| c == '\u{fffd}'));
        assert_eq!(v.chars().count(), MAX_CLIENT_LEN / 3);
        // An escape sequence is kept as text; printing escapes it.
        let hs = ExtHandshake::decode(b"d1:v6:\x1b[31mXe").unwrap();
        assert_eq!(hs.client.as_deref(), Some("\u{1b}[31mX"));
        assert_eq!(
            crate::text::escaped(hs.client.as_deref().unwrap()),
            "\\u{1b}[31mX"
        );
    }

    #[test]
    fn yourip_takes_both_families() {
        let hs = ExtHandshake::decode(b"d6:yourip4:\x7f\x00\x00\x01e").unwrap();
        assert_eq!(hs.yourip, Some(IpAddr::from([127, 0, 0, 1])));
        let mut v6 = b"d6:yourip16:".to_vec();
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6.extend_from_slice(&[0; 11]);
        v6.push(1);
        v6.push(b'e');
        let hs = ExtHandshake::decode(&v6).unwrap();
        assert_eq!(hs.yourip, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn piece_geometry() {
        assert_eq!(MAX_METADATA_PIECES, 1920);
        assert_eq!(metadata_piece_count(1), 1);
        assert_eq!(metadata_piece_count(16384), 1);
        assert_eq!(metadata_piece_count(16385), 2);
        assert_eq!(metadata_piece_len(31235, 0), Some(16384));
        assert_eq!(metadata_piece_len(31235, 1), Some(31235 - 16384));
        assert_eq!(metadata_piece_len(31235, 2), None);
        assert_eq!(metadata_piece_len(16384, 1), None);
        assert_eq!(metadata_piece_len(u32::MAX, u32::MAX), None);
    }

    #[test]
    fn metadata_messages_roundtrip() {
        let data = vec![7u8; 31235 - 16384];
        for msg in [
            MetadataMsg::Request { piece: 0 },
            MetadataMsg::Reject { piece: 1919 },
            MetadataMsg::Data {
                piece: 1,
                total_size: 31235,
                data: &data,
            },
        ] {
            assert_eq!(MetadataMsg::decode(&msg.encode()), Ok(Some(msg)));
        }
        assert_eq!(
            MetadataMsg::Request { piece: 0 }.encode(),
            b"d8:msg_typei0e5:piecei0ee"
        );
        assert_eq!(
            MetadataMsg::Data {
                piece: 0,
                total_size: 3,
                data: b"abc"
            }
            .encode(),
            b"d8:msg_typei1e5:piecei0e10:total_sizei3eeabc"
        );
    }

    #[test]
    fn data_ends_where_the_dictionary_ends() {
        // The raw bytes may themselves look like bencode.
        let msg = MetadataMsg::decode(b"d8:msg_typei1e5:piecei0e10:total_sizei5eed1:ae").unwrap();
        assert_eq!(
            msg,
            Some(MetadataMsg::Data {
                piece: 0,
                total_size: 5,
                data: b"d1:ae"
            })
        );
    }

    #[test]
    fn unknown_metadata_types_are_ignored() {
        assert_eq!(MetadataMsg::decode(b"d8:msg_typei3e5:piecei0ee"), Ok(None));
        assert_eq!(MetadataMsg::decode(b"d8:msg_typei-1e5:piecei0ee"), Ok(None));
    }

    #[test]
    fn hostile_metadata_messages_are_refused() {
        let full = [0u8; 16384];
        let with = |head: &[u8], tail: &[u8]| [head, tail].concat();
        let cases: Vec<(Vec<u8>, ExtError)> = vec![
            // Truncated: the last piece of a 31235-byte dict is 14851 bytes.
            (
                with(
                    b"d8:msg_typei1e5:piecei1e10:total_sizei31235ee",
                    &full[..100],
                ),
                ExtError::BadPieceLength {
                    piece: 1,
                    len: 100,
                    want: 14851,
                },
            ),
            // Longer than 16 KiB.
            (
                with(
                    b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee",
                    &[0; 16385],
                ),
                ExtError::BadPieceLength {
                    piece: 0,
                    len: 16385,
                    want: 16384,
                },
            ),
            // A piece past total_size.
            (
                with(b"d8:msg_typei1e5:piecei2e10:total_sizei31235ee", &full),
                ExtError::PieceOutOfRange {
                    piece: 2,
                    pieces: 2,
                },
            ),
            (
                with(b"d8:msg_typei1e5:piecei0e10:total_sizei31457281ee", &full),
                ExtError::OutOfRange {
                    key: "total_size",
                    value: 31_457_281,
                },
            ),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei0ee".to_vec(),
                ExtError::OutOfRange {
                    key: "total_size",
                    value: 0,
                },
            ),
            (
                b"d8:msg_typei1e5:piecei0ee".to_vec(),
                ExtError::Missing { key: "total_size" },
            ),
            (
                b"d8:msg_typei0e5:piecei-1ee".to_vec(),
                ExtError::OutOfRange {
                    key: "piece",
                    value: -1,
                },
            ),
            (
                b"d8:msg_typei0e5:piecei1920ee".to_vec(),
                ExtError::PieceOutOfRange {
                    piece: 1920,
                    pieces: 1920,
                },
            ),
            (
                b"d8:msg_typei0e5:piece1:0e".to_vec(),
                ExtError::WrongType {
                    key: "piece",
                    found: "byte string",
                },
            ),
            (
                b"d5:piecei0ee".to_vec(),
                ExtError::Missing { key: "msg_type" },
            ),
            (
                b"d8:msg_typei2e5:piecei0eeXY".to_vec(),
                ExtError::TrailingBytes { len: 2 },
            ),
            (b"i1e".to_vec(), ExtError::NotDict),
        ];
        for (input, want) in cases {
            assert_eq!(
                MetadataMsg::decode(&input),
                Err(want),
                "{}",
                String::from_utf8_lossy(&input[..input.len().min(60)])
            );
        }
        assert!(MetadataMsg::decode(b"d8:msg_typei1e5:piecei0e10:total_sizei3e").is_err());
        assert!(MetadataMsg::decode(b"").is_err());
    }

    /// The fuzz target's checks hold on the inputs above (run with
    /// `--features fuzzing`).
    #[cfg(feature = "fuzzing")]
    #[test]
    fn fuzz_body_accepts_samples() {
        let ours = ExtHandshake::ours(Some(31235), Some(6881), None).encode();
        let pex = Pex {
            added: vec![v4("1.2.3.4:1"), v4("[::ffff:1.2.3.5]:2"), v4("[::2]:3")],
            added_flags: vec![1, 2, 3],
            dropped: vec![v4("[::1]:4")],
        }
        .encode();
        let mut bad_client = b"d1:v64:".to_vec();
        bad_client.extend_from_slice(&[0xff; 64]);
        bad_client.push(b'e');
        let mut mapped = b"d6:added618:".to_vec();
        mapped.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 0, 80]);
        mapped.push(b'e');
        let samples: &[&[u8]] = &[
            b"",
            b"de",
            b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235ee",
            &bad_client,
            b"d8:msg_typei1e5:piecei0e10:total_sizei5eed1:ae",
            b"d8:msg_typei0e5:piecei7ee",
            &mapped,
            &ours,
            &pex,
        ];
        for s in samples {
            fuzz(s);
        }
    }

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pex_roundtrips_both_families_with_flags() {
        let pex = Pex {
            added: vec![
                v4("1.2.3.4:6881"),
                v4("[2001:db8::7]:51413"),
                v4("5.6.7.8:1"),
            ],
            added_flags: vec![PEX_SEED, PEX_PREFERS_ENCRYPTION, PEX_REACHABLE],
            dropped: vec![v4("9.9.9.9:9"), v4("[::1]:80")],
        };
        let wire = pex.encode();
        let back = Pex::decode(&wire).unwrap();
        // IPv4 entries come first after a round trip.
        assert_eq!(
            back.added,
            vec![
                v4("1.2.3.4:6881"),
                v4("5.6.7.8:1"),
                v4("[2001:db8::7]:51413")
            ]
        );
        assert_eq!(
            back.added_flags,
            vec![PEX_SEED, PEX_REACHABLE, PEX_PREFERS_ENCRYPTION]
        );
        assert_eq!(back.dropped, pex.dropped);
        assert_eq!(
            Pex {
                added: vec![v4("1.2.3.4:258")],
                added_flags: vec![],
                dropped: vec![],
            }
            .encode(),
            b"d5:added6:\x01\x02\x03\x04\x01\x02e"
        );
        assert_eq!(Pex::default().encode(), b"de");
        assert_eq!(Pex::decode(b"de"), Ok(Pex::default()));
    }

    #[test]
    fn pex_sends_at_most_fifty_each_way() {
        let many: Vec<SocketAddr> = (1..=120u16)
            .map(|i| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], i)))
            .collect();
        let pex = Pex {
            added: many.clone(),
            added_flags: vec![1; many.len()],
            dropped: many.clone(),
        };
        let back = Pex::decode(&pex.encode()).unwrap();
        assert_eq!(back.added, many[..MAX_PEX_SEND]);
        assert_eq!(back.added_flags, vec![1; MAX_PEX_SEND]);
        assert_eq!(back.dropped, many[..MAX_PEX_SEND]);
    }

    #[test]
    fn pex_flags_that_do_not_match_are_zero_and_port_zero_is_skipped() {
        let mut p = b"d5:added12:".to_vec();
        p.extend_from_slice(&[1, 1, 1, 1, 0, 80, 2, 2, 2, 2, 0, 0]);
        p.extend_from_slice(b"7:added.f1:\x02e");
        let pex = Pex::decode(&p).unwrap();
        assert_eq!(pex.added, vec![v4("1.1.1.1:80")]);
        assert_eq!(pex.added_flags, vec![0]);
        // An IPv4-mapped IPv6 address is taken as IPv4.
        let mut p = b"d6:added618:".to_vec();
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 0, 80]);
        p.extend_from_slice(b"8:added6.f1:\x10e");
        let pex = Pex::decode(&p).unwrap();
        assert_eq!(pex.added, vec![v4("1.2.3.4:80")]);
        assert_eq!(pex.added_flags, vec![PEX_REACHABLE]);
    }

    #[test]
    fn hostile_pex_is_refused_or_capped() {
        assert_eq!(
            Pex::decode(b"d5:added5:abcdee"),
            Err(ExtError::BadAddressList {
                key: "added",
                len: 5
            })
        );
        assert_eq!(
            Pex::decode(b"d8:dropped67:abcdefge"),
            Err(ExtError::BadAddressList {
                key: "dropped6",
                len: 7
            })
        );
        assert_eq!(
            Pex::decode(b"d5:addedi6ee"),
            Err(ExtError::WrongType {
                key: "added",
                found: "integer"
            })
        );
        assert_eq!(Pex::decode(b"le"), Err(ExtError::NotDict));

        // 10,000 added IPv4 peers and as many IPv6: only the cap is taken,
        // and the cost does not grow with the list.
        let n = 10_000usize;
        let build = |n: usize| {
            let mut p = format!("d5:added{}:", n * 6).into_bytes();
            for i in 0..n {
                p.extend_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8, 0x1a, 0xe1]);
            }
            p.extend_from_slice(format!("7:added.f{n}:").as_bytes());
            p.extend(std::iter::repeat_n(PEX_SEED, n));
            p.extend_from_slice(format!("6:added6{}:", n * 18).as_bytes());
            p.extend(std::iter::repeat_n(0x20, n * 18));
            p.push(b'e');
            p
        };
        let payload = build(n);
        let start = Instant::now();
        let pex = Pex::decode(&payload).unwrap();
        let took = start.elapsed();
        assert_eq!(pex.added.len(), MAX_PEX_PEERS);
        assert_eq!(pex.added_flags, vec![PEX_SEED; MAX_PEX_PEERS]);
        assert!(pex.added.iter().all(|a| a.is_ipv4()));
        assert!(pex.dropped.is_empty());
        assert!(took.as_millis() < 500, "{took:?}");
    }
}
