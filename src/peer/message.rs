//! Peer wire protocol (BEP 3) as pure encode/decode: the handshake and the
//! length-prefixed messages, including the frame of BEP 10's extended
//! message (whose payloads `peer::extension` owns). Owns framing and the
//! limits on what a peer may claim; does no I/O (the connection thread in
//! `peer::conn` feeds it bytes).

use crate::geometry::BLOCK_LEN;
use crate::types::{Block, InfoHash, PeerId, PieceIndex};
use std::fmt;

pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
pub const HANDSHAKE_LEN: usize = 68;

/// Largest frame accepted from a peer, checked against the length prefix
/// before anything is buffered. A piece message carries at most one block
/// of `geometry::BLOCK_LEN` (all we ever request; see there why 16 KiB)
/// plus 9 bytes of header; every other BEP 3 message is shorter, and so
/// must be any message of an extension we did not announce (BEP 10
/// extended messages have their own bound, `MAX_EXTENDED_FRAME`). A
/// bitfield for the largest torrent we accept
/// (2^50 bytes / 16 KiB pieces = 2^36 pieces) would be larger, but such a
/// torrent is refused by `metainfo` long before a peer could send one, so
/// bitfields are bounded by `max_frame_for(pieces)` instead.
pub const MAX_FRAME: u32 = BLOCK_LEN + 9;

/// Largest BEP 10 extended message (id 20) accepted. A BEP 9 metadata
/// `data` message carries a whole 16 KiB metadata piece after its message
/// id, extended id and a bencoded header of about 60 bytes
/// (`d8:msg_typei1e5:piecei1919e10:total_sizei31457280ee`), so it cannot fit
/// in `MAX_FRAME`. The 1 KiB of room above the piece holds that header with
/// plenty to spare, and every extension handshake and PEX message seen in
/// practice is far smaller than the whole bound. Only extended messages get
/// this allowance: every other message except a bitfield must still fit
/// `MAX_FRAME` (checked once the id is known).
pub const MAX_EXTENDED_FRAME: u32 = 16 * 1024 + 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    BadProtocol,
    WrongInfoHash,
    FrameTooLarge { len: u32, max: u32 },
    BadLength { id: u8, len: u32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadProtocol => f.write_str("handshake: not the BitTorrent protocol"),
            Error::WrongInfoHash => f.write_str("handshake: peer serves a different info hash"),
            Error::FrameTooLarge { len, max } => {
                write!(f, "message length {len} exceeds the limit of {max} bytes")
            }
            Error::BadLength { id, len } => {
                write!(f, "message id {id} has an impossible length {len}")
            }
        }
    }
}

impl std::error::Error for Error {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

impl Handshake {
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Handshake {
        Handshake {
            reserved: [0; 8],
            info_hash,
            peer_id,
        }
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id.0);
        out
    }

    /// Parses a handshake and checks it is for `expected` (when given).
    pub fn decode(
        bytes: &[u8; HANDSHAKE_LEN],
        expected: Option<InfoHash>,
    ) -> Result<Handshake, Error> {
        if bytes[0] != 19 || &bytes[1..20] != PROTOCOL {
            return Err(Error::BadProtocol);
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&bytes[20..28]);
        let mut ih = [0u8; 20];
        ih.copy_from_slice(&bytes[28..48]);
        let mut id = [0u8; 20];
        id.copy_from_slice(&bytes[48..68]);
        let info_hash = InfoHash(ih);
        if expected.is_some_and(|e| e != info_hash) {
            return Err(Error::WrongInfoHash);
        }
        Ok(Handshake {
            reserved,
            info_hash,
            peer_id: PeerId(id),
        })
    }
}

/// A decoded message. `Piece` borrows its data from the receive buffer so the
/// connection can copy it straight into the piece being assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(PieceIndex),
    Bitfield(&'a [u8]),
    Request(Block),
    Piece {
        piece: PieceIndex,
        offset: u32,
        data: &'a [u8],
    },
    Cancel(Block),
    /// BEP 5 DHT port; parsed so that DHT-capable peers are not dropped.
    Port(u16),
    /// BEP 10 extended message: the extended message id (0 is the extension
    /// handshake; others are ids the receiver assigned in its handshake)
    /// and the payload after it, borrowed from the receive buffer.
    /// `peer::extension` gives the payload its meaning.
    Extended {
        id: u8,
        payload: &'a [u8],
    },
    /// Any other message id we do not act on (BEP 6 fast, ...), kept so that
    /// a peer using extensions we did not announce is tolerated.
    Other {
        id: u8,
    },
}

const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const NOT_INTERESTED: u8 = 3;
const HAVE: u8 = 4;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;
const CANCEL: u8 = 8;
const PORT: u8 = 9;
const EXTENDED: u8 = 20;

/// Upper bound on a frame from a peer of a torrent with `piece_count` pieces:
/// the largest of a piece message, an extended message (a BEP 9 metadata
/// piece, see `MAX_EXTENDED_FRAME`) and a full bitfield. The connection
/// sizes its receive buffer from this; `decode_frame` still holds each
/// message id to its own, smaller bound.
pub fn max_frame_for(piece_count: u32) -> u32 {
    let bitfield = piece_count.div_ceil(8).saturating_add(1);
    MAX_FRAME.max(MAX_EXTENDED_FRAME).max(bitfield)
}

/// The bound for a frame with message id `id` when the caller allows
/// `max_frame`: a bitfield may use all of it (its exact size is checked by
/// `Bitfield::from_wire`), an extended message up to `MAX_EXTENDED_FRAME`,
/// anything else up to `MAX_FRAME`.
fn limit_for(id: u8, max_frame: u32) -> u32 {
    match id {
        BITFIELD => max_frame,
        EXTENDED => max_frame.min(MAX_EXTENDED_FRAME),
        _ => max_frame.min(MAX_FRAME),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes one frame from the front of `buf`. Returns `Ok(None)` when more
/// bytes are needed, or the message and how many bytes it used. The length
/// prefix is checked against `max_frame` before the caller buffers the body,
/// so a hostile 4 GiB prefix is an error, never an allocation; once the id
/// byte has arrived the length is also held to that id's own bound (see
/// `limit_for`), still before the body is buffered.
pub fn decode_frame(buf: &[u8], max_frame: u32) -> Result<Option<(Message<'_>, usize)>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = be32(buf);
    if len > max_frame {
        return Err(Error::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if let Some(&id) = buf.get(4).filter(|_| len > 0) {
        let max = limit_for(id, max_frame);
        if len > max {
            return Err(Error::FrameTooLarge { len, max });
        }
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    let id = buf[4];
    let body = &buf[5..total];
    let fixed = |want: usize| {
        if body.len() == want {
            Ok(())
        } else {
            Err(Error::BadLength { id, len })
        }
    };
    let block = |body: &[u8]| Block {
        piece: PieceIndex(be32(&body[0..4])),
        offset: be32(&body[4..8]),
        length: be32(&body[8..12]),
    };
    let msg = match id {
        CHOKE => fixed(0).map(|_| Message::Choke)?,
        UNCHOKE => fixed(0).map(|_| Message::Unchoke)?,
        INTERESTED => fixed(0).map(|_| Message::Interested)?,
        NOT_INTERESTED => fixed(0).map(|_| Message::NotInterested)?,
        HAVE => fixed(4).map(|_| Message::Have(PieceIndex(be32(body))))?,
        BITFIELD => Message::Bitfield(body),
        REQUEST => fixed(12).map(|_| Message::Request(block(body)))?,
        CANCEL => fixed(12).map(|_| Message::Cancel(block(body)))?,
        PIECE => {
            if body.len() < 8 {
                return Err(Error::BadLength { id, len });
            }
            Message::Piece {
                piece: PieceIndex(be32(&body[0..4])),
                offset: be32(&body[4..8]),
                data: &body[8..],
            }
        }
        PORT => fixed(2).map(|_| Message::Port(u16::from_be_bytes([body[0], body[1]])))?,
        EXTENDED => match body.split_first() {
            Some((&ext, payload)) => Message::Extended { id: ext, payload },
            None => return Err(Error::BadLength { id, len }),
        },
        other => Message::Other { id: other },
    };
    Ok(Some((msg, total)))
}

/// Appends the wire form of `msg` to `out`.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) {
    let simple = |out: &mut Vec<u8>, id: u8| {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.push(id);
    };
    let block = |out: &mut Vec<u8>, id: u8, b: &Block| {
        out.extend_from_slice(&13u32.to_be_bytes());
        out.push(id);
        out.extend_from_slice(&b.piece.0.to_be_bytes());
        out.extend_from_slice(&b.offset.to_be_bytes());
        out.extend_from_slice(&b.length.to_be_bytes());
    };
    match msg {
        Message::KeepAlive => out.extend_from_slice(&0u32.to_be_bytes()),
        Message::Choke => simple(out, CHOKE),
        Message::Unchoke => simple(out, UNCHOKE),
        Message::Interested => simple(out, INTERESTED),
        Message::NotInterested => simple(out, NOT_INTERESTED),
        Message::Have(p) => {
            out.extend_from_slice(&5u32.to_be_bytes());
            out.push(HAVE);
            out.extend_from_slice(&p.0.to_be_bytes());
        }
        Message::Bitfield(bits) => {
            out.extend_from_slice(&(bits.len() as u32 + 1).to_be_bytes());
            out.push(BITFIELD);
            out.extend_from_slice(bits);
        }
        Message::Request(b) => block(out, REQUEST, b),
        Message::Cancel(b) => block(out, CANCEL, b),
        Message::Piece {
            piece,
            offset,
            data,
        } => {
            out.extend_from_slice(&(data.len() as u32 + 9).to_be_bytes());
            out.push(PIECE);
            out.extend_from_slice(&piece.0.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(data);
        }
        Message::Port(p) => {
            out.extend_from_slice(&3u32.to_be_bytes());
            out.push(PORT);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Message::Extended { id, payload } => {
            out.extend_from_slice(&(payload.len() as u32 + 2).to_be_bytes());
            out.push(EXTENDED);
            out.push(*id);
            out.extend_from_slice(payload);
        }
        Message::Other { id } => simple(out, *id),
    }
}

/// A peer's set of pieces, one bit per piece, high bit first (BEP 3 order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    /// Bits set, kept as bits change so `count` and `is_full` are O(1)
    /// (a connection asks on every loop turn).
    ones: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
            ones: 0,
        }
    }

    /// Every one of `len` pieces set (a seed's bitfield).
    #[cfg(test)]
    pub fn full(len: u32) -> Bitfield {
        let mut bits = vec![0xffu8; len.div_ceil(8) as usize];
        let spare = bits.len() as u32 * 8 - len;
        if let Some(last) = bits.last_mut() {
            *last &= 0xffu8.checked_shl(spare).unwrap_or(0);
        }
        Bitfield {
            bits,
            len,
            ones: len,
        }
    }

    /// Accepts a peer's bitfield only if it has exactly the right byte count
    /// and no bits set past the last piece (BEP 3 says spare bits are zero).
    pub fn from_wire(bytes: &[u8], len: u32) -> Option<Bitfield> {
        if bytes.len() != len.div_ceil(8) as usize {
            return None;
        }
        let spare = (bytes.len() as u64 * 8 - len as u64) as u32;
        if spare > 0 {
            let last = bytes[bytes.len() - 1];
            if last & ((1u8 << spare) - 1) != 0 {
                return None;
            }
        }
        Some(Bitfield {
            bits: bytes.to_vec(),
            len,
            ones: bytes.iter().map(|b| b.count_ones()).sum(),
        })
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn has(&self, p: PieceIndex) -> bool {
        p.0 < self.len && self.bits[(p.0 / 8) as usize] & (0x80 >> (p.0 % 8)) != 0
    }

    /// Sets bit `p`; returns false if it is out of range.
    pub fn set(&mut self, p: PieceIndex) -> bool {
        if p.0 >= self.len {
            return false;
        }
        let byte = &mut self.bits[(p.0 / 8) as usize];
        let mask = 0x80 >> (p.0 % 8);
        if *byte & mask == 0 {
            *byte |= mask;
            self.ones += 1;
        }
        true
    }

    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Sets every bit set in `other` (of the same length).
    pub fn union_with(&mut self, other: &Bitfield) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
        self.ones = self.bits.iter().map(|b| b.count_ones()).sum();
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message<'_>) {
        let mut out = Vec::new();
        encode(&m, &mut out);
        let (back, used) = decode_frame(&out, MAX_FRAME).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(used, out.len());
    }

    #[test]
    fn every_message_roundtrips() {
        let b = Block {
            piece: PieceIndex(7),
            offset: 16384,
            length: 16384,
        };
        roundtrip(Message::KeepAlive);
        roundtrip(Message::Choke);
        roundtrip(Message::Unchoke);
        roundtrip(Message::Interested);
        roundtrip(Message::NotInterested);
        roundtrip(Message::Have(PieceIndex(123456)));
        roundtrip(Message::Bitfield(&[0xff, 0x80]));
        roundtrip(Message::Request(b));
        roundtrip(Message::Cancel(b));
        roundtrip(Message::Piece {
            piece: PieceIndex(3),
            offset: 32768,
            data: &[1, 2, 3, 4, 5],
        });
        roundtrip(Message::Port(6881));
    }

    #[test]
    fn exact_wire_bytes() {
        let mut out = Vec::new();
        encode(&Message::Have(PieceIndex(1)), &mut out);
        assert_eq!(out, [0, 0, 0, 5, 4, 0, 0, 0, 1]);
        out.clear();
        encode(
            &Message::Request(Block {
                piece: PieceIndex(1),
                offset: 2,
                length: 3,
            }),
            &mut out,
        );
        assert_eq!(out, [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    }

    #[test]
    fn partial_frames_need_more() {
        let mut out = Vec::new();
        encode(&Message::Have(PieceIndex(9)), &mut out);
        for cut in 0..out.len() {
            assert_eq!(decode_frame(&out[..cut], MAX_FRAME), Ok(None));
        }
    }

    #[test]
    fn a_full_bitfield_has_every_piece_and_no_spare_bits() {
        for len in [0, 1, 7, 8, 9, 100] {
            let full = Bitfield::full(len);
            assert_eq!(full.count(), len);
            assert!(full.is_full());
            assert_eq!(Bitfield::from_wire(full.as_bytes(), len), Some(full));
        }
    }

    #[test]
    fn giant_length_prefix_is_an_error_not_an_allocation() {
        let buf = [0xff, 0xff, 0xff, 0xff, 7];
        assert_eq!(
            decode_frame(&buf, MAX_FRAME),
            Err(Error::FrameTooLarge {
                len: u32::MAX,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn wrong_fixed_lengths_are_rejected() {
        // have with 3 bytes of payload
        let buf = [0, 0, 0, 4, 4, 0, 0, 1];
        assert_eq!(
            decode_frame(&buf, MAX_FRAME),
            Err(Error::BadLength { id: 4, len: 4 })
        );
        // piece with a truncated header
        let buf = [0, 0, 0, 5, 7, 0, 0, 0, 1];
        assert!(matches!(
            decode_frame(&buf, MAX_FRAME),
            Err(Error::BadLength { id: 7, .. })
        ));
        // choke with a payload
        let buf = [0, 0, 0, 2, 0, 9];
        assert!(decode_frame(&buf, MAX_FRAME).is_err());
    }

    #[test]
    fn a_piece_frame_holds_one_block_at_most() {
        let mut out = Vec::new();
        let data = vec![7u8; BLOCK_LEN as usize];
        let piece = Message::Piece {
            piece: PieceIndex(1),
            offset: 0,
            data: &data,
        };
        encode(&piece, &mut out);
        assert_eq!(
            decode_frame(&out, MAX_FRAME).unwrap(),
            Some((piece, out.len()))
        );
        let mut over = ((BLOCK_LEN + 10).to_be_bytes()).to_vec();
        over.push(7);
        assert_eq!(
            decode_frame(&over, MAX_FRAME),
            Err(Error::FrameTooLarge {
                len: BLOCK_LEN + 10,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn unknown_ids_are_tolerated() {
        let buf = [0, 0, 0, 3, 99, 0, 1];
        assert_eq!(
            decode_frame(&buf, MAX_FRAME).unwrap(),
            Some((Message::Other { id: 99 }, 7))
        );
    }

    #[test]
    fn extended_messages_carry_their_id_and_payload() {
        let buf = [0, 0, 0, 4, 20, 3, b'd', b'e'];
        assert_eq!(
            decode_frame(&buf, MAX_FRAME).unwrap(),
            Some((
                Message::Extended {
                    id: 3,
                    payload: b"de"
                },
                8
            ))
        );
        roundtrip(Message::Extended {
            id: 0,
            payload: b"d1:md6:ut_pexi2eee",
        });
        roundtrip(Message::Extended {
            id: 7,
            payload: b"",
        });
        // Without the extended id byte the message is malformed.
        assert_eq!(
            decode_frame(&[0, 0, 0, 1, 20], MAX_FRAME),
            Err(Error::BadLength { id: 20, len: 1 })
        );
    }

    #[test]
    fn a_metadata_piece_fits_but_only_extended_messages_get_the_room() {
        let max = max_frame_for(1);
        assert_eq!(max, MAX_EXTENDED_FRAME);
        // The largest BEP 9 data message we could be sent: a full 16 KiB
        // piece after the biggest header (piece index and total size at
        // their limits).
        let mut payload = b"d8:msg_typei1e5:piecei1919e10:total_sizei31457280ee".to_vec();
        payload.extend_from_slice(&[0xab; 16 * 1024]);
        let msg = Message::Extended {
            id: 1,
            payload: &payload,
        };
        let mut out = Vec::new();
        encode(&msg, &mut out);
        assert_eq!(decode_frame(&out, max).unwrap(), Some((msg, out.len())));
        // One byte over the extended bound.
        let mut over = (MAX_EXTENDED_FRAME + 1).to_be_bytes().to_vec();
        over.push(20);
        assert_eq!(
            decode_frame(&over, max_frame_for(8 * 1024 * 1024)),
            Err(Error::FrameTooLarge {
                len: MAX_EXTENDED_FRAME + 1,
                max: MAX_EXTENDED_FRAME
            })
        );
        // A piece message may not use the extended room, and is refused as
        // soon as its id is seen, before the body is buffered.
        let mut piece = (MAX_FRAME + 1).to_be_bytes().to_vec();
        piece.push(7);
        assert_eq!(
            decode_frame(&piece, max),
            Err(Error::FrameTooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
        // Nor may an unknown message, even when a huge torrent's bitfield
        // makes the overall bound larger.
        let mut other = (MAX_FRAME + 1).to_be_bytes().to_vec();
        other.push(99);
        assert!(decode_frame(&other, max_frame_for(8 * 1024 * 1024)).is_err());
        // A bitfield still gets the whole bound.
        let bits = vec![0xffu8; 1024 * 1024];
        let mut out = Vec::new();
        encode(&Message::Bitfield(&bits), &mut out);
        assert!(decode_frame(&out, max_frame_for(8 * 1024 * 1024))
            .unwrap()
            .is_some());
    }

    #[test]
    fn handshake_roundtrip_and_checks() {
        let ih = InfoHash([7; 20]);
        let hs = Handshake::new(ih, PeerId([1; 20]));
        let bytes = hs.encode();
        assert_eq!(&bytes[1..20], PROTOCOL);
        assert_eq!(Handshake::decode(&bytes, Some(ih)), Ok(hs));
        assert_eq!(
            Handshake::decode(&bytes, Some(InfoHash([8; 20]))),
            Err(Error::WrongInfoHash)
        );
        let mut bad = bytes;
        bad[3] = b'x';
        assert_eq!(Handshake::decode(&bad, None), Err(Error::BadProtocol));
    }

    #[test]
    fn bitfield_checks_size_and_spare_bits() {
        assert!(Bitfield::from_wire(&[0xff, 0x80], 9).is_some());
        assert!(
            Bitfield::from_wire(&[0xff, 0xc0], 9).is_none(),
            "spare bit set"
        );
        assert!(Bitfield::from_wire(&[0xff], 9).is_none(), "too short");
        assert!(Bitfield::from_wire(&[0xff, 0, 0], 9).is_none(), "too long");
        let mut bf = Bitfield::new(10);
        assert!(bf.set(PieceIndex(9)));
        assert!(!bf.set(PieceIndex(10)));
        assert!(bf.has(PieceIndex(9)) && !bf.has(PieceIndex(0)));
        assert_eq!(bf.count(), 1);
        assert_eq!(bf.as_bytes(), &[0, 0x40]);
    }

    #[test]
    fn max_frame_grows_with_piece_count() {
        assert_eq!(max_frame_for(10), MAX_EXTENDED_FRAME);
        assert_eq!(max_frame_for(8 * 1024 * 1024), 1024 * 1024 + 1);
    }
}
