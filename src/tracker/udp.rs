//! UDP tracker protocol (BEP 15) as pure code: connect, announce and scrape
//! requests and their responses, byte for byte. Owns no socket; the
//! exchange with retransmission lives in `tracker::udp_client`.

use super::http::{compact_v4, compact_v6, AnnounceEvent, AnnounceRequest, AnnounceResponse};
use std::fmt;
use std::time::Duration;

/// The fixed `protocol_id` of a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
const CONNECT: u32 = 0;
const ANNOUNCE: u32 = 1;
const SCRAPE: u32 = 2;
const ERROR: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The tracker answered with an error message (action 3).
    Failure(String),
    TooShort {
        len: usize,
    },
    WrongAction {
        expected: u32,
        found: u32,
    },
    WrongTransaction,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Failure(m) => write!(f, "tracker refused: {m}"),
            Error::TooShort { len } => write!(f, "udp tracker answer of {len} bytes is too short"),
            Error::WrongAction { expected, found } => {
                write!(
                    f,
                    "udp tracker answered action {found}, expected {expected}"
                )
            }
            Error::WrongTransaction => f.write_str("udp tracker answer has another transaction id"),
        }
    }
}

impl std::error::Error for Error {}

pub fn connect_request(transaction: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    b[8..12].copy_from_slice(&CONNECT.to_be_bytes());
    b[12..].copy_from_slice(&transaction.to_be_bytes());
    b
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks action and transaction id; an error packet becomes `Failure`.
fn header(packet: &[u8], action: u32, transaction: u32, min: usize) -> Result<(), Error> {
    if packet.len() < 8 {
        return Err(Error::TooShort { len: packet.len() });
    }
    if be32(&packet[4..8]) != transaction {
        return Err(Error::WrongTransaction);
    }
    let found = be32(&packet[..4]);
    if found == ERROR {
        return Err(Error::Failure(
            String::from_utf8_lossy(&packet[8..]).into_owned(),
        ));
    }
    if found != action {
        return Err(Error::WrongAction {
            expected: action,
            found,
        });
    }
    if packet.len() < min {
        return Err(Error::TooShort { len: packet.len() });
    }
    Ok(())
}

/// Returns the connection id.
pub fn parse_connect(packet: &[u8], transaction: u32) -> Result<u64, Error> {
    header(packet, CONNECT, transaction, 16)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&packet[8..16]);
    Ok(u64::from_be_bytes(id))
}

pub fn announce_request(
    connection: u64,
    transaction: u32,
    req: &AnnounceRequest,
    key: u32,
) -> [u8; 98] {
    let mut b = [0u8; 98];
    b[..8].copy_from_slice(&connection.to_be_bytes());
    b[8..12].copy_from_slice(&ANNOUNCE.to_be_bytes());
    b[12..16].copy_from_slice(&transaction.to_be_bytes());
    b[16..36].copy_from_slice(&req.info_hash.0);
    b[36..56].copy_from_slice(&req.peer_id.0);
    b[56..64].copy_from_slice(&req.downloaded.to_be_bytes());
    b[64..72].copy_from_slice(&req.left.to_be_bytes());
    b[72..80].copy_from_slice(&req.uploaded.to_be_bytes());
    let event: u32 = match req.event {
        None => 0,
        Some(AnnounceEvent::Completed) => 1,
        Some(AnnounceEvent::Started) => 2,
        Some(AnnounceEvent::Stopped) => 3,
    };
    b[80..84].copy_from_slice(&event.to_be_bytes());
    // 84..88: IP address, 0 = the sender's.
    b[88..92].copy_from_slice(&key.to_be_bytes());
    b[92..96].copy_from_slice(&(req.numwant as i32).to_be_bytes());
    b[96..98].copy_from_slice(&req.port.to_be_bytes());
    b
}

/// Parses an announce answer. Peers are 6-byte IPv4 entries, or 18-byte
/// IPv6 entries when the exchange ran over IPv6 (BEP 15's rule).
pub fn parse_announce(
    packet: &[u8],
    transaction: u32,
    ipv6: bool,
) -> Result<AnnounceResponse, Error> {
    header(packet, ANNOUNCE, transaction, 20)?;
    let interval = be32(&packet[8..12]).clamp(10, 3600);
    let incomplete = be32(&packet[12..16]);
    let complete = be32(&packet[16..20]);
    let body = &packet[20..];
    let peers = if ipv6 {
        body.chunks_exact(18).map(compact_v6).collect()
    } else {
        body.chunks_exact(6).map(compact_v4).collect::<Vec<_>>()
    };
    Ok(AnnounceResponse {
        interval: Duration::from_secs(interval as u64),
        min_interval: None,
        peers: peers.into_iter().filter(|a| a.port() != 0).collect(),
        complete: Some(complete as u64),
        incomplete: Some(incomplete as u64),
        warning: None,
    })
}

pub fn scrape_request(connection: u64, transaction: u32, info_hash: &[u8; 20]) -> [u8; 36] {
    let mut b = [0u8; 36];
    b[..8].copy_from_slice(&connection.to_be_bytes());
    b[8..12].copy_from_slice(&SCRAPE.to_be_bytes());
    b[12..16].copy_from_slice(&transaction.to_be_bytes());
    b[16..36].copy_from_slice(info_hash);
    b
}

/// Seeders, completed (downloads), leechers — for one info hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrape {
    pub seeders: u64,
    pub completed: u64,
    pub leechers: u64,
}

pub fn parse_scrape(packet: &[u8], transaction: u32) -> Result<Scrape, Error> {
    header(packet, SCRAPE, transaction, 20)?;
    Ok(Scrape {
        seeders: be32(&packet[8..12]) as u64,
        completed: be32(&packet[12..16]) as u64,
        leechers: be32(&packet[16..20]) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InfoHash, PeerId};

    #[test]
    fn connect_roundtrip() {
        let req = connect_request(0xdeadbeef);
        assert_eq!(
            req,
            [0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]
        );
        let mut resp = vec![0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        resp.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(parse_connect(&resp, 0xdeadbeef), Ok(42));
        assert_eq!(parse_connect(&resp, 1), Err(Error::WrongTransaction));
        assert_eq!(
            parse_connect(&resp[..12], 0xdeadbeef),
            Err(Error::TooShort { len: 12 })
        );
    }

    #[test]
    fn announce_layout() {
        let req = AnnounceRequest {
            info_hash: InfoHash([0xaa; 20]),
            peer_id: PeerId([0xbb; 20]),
            port: 6881,
            uploaded: 3,
            downloaded: 1,
            left: 2,
            event: Some(AnnounceEvent::Started),
            numwant: 50,
        };
        let b = announce_request(7, 9, &req, 11);
        assert_eq!(&b[..8], &7u64.to_be_bytes());
        assert_eq!(&b[8..12], &1u32.to_be_bytes());
        assert_eq!(&b[12..16], &9u32.to_be_bytes());
        assert_eq!(&b[16..36], &[0xaa; 20]);
        assert_eq!(&b[56..64], &1u64.to_be_bytes());
        assert_eq!(&b[64..72], &2u64.to_be_bytes());
        assert_eq!(&b[72..80], &3u64.to_be_bytes());
        assert_eq!(&b[80..84], &2u32.to_be_bytes(), "started = 2");
        assert_eq!(&b[88..92], &11u32.to_be_bytes());
        assert_eq!(&b[92..96], &50i32.to_be_bytes());
        assert_eq!(&b[96..98], &6881u16.to_be_bytes());
    }

    #[test]
    fn announce_response_v4_and_v6() {
        let mut p = vec![0, 0, 0, 1, 0, 0, 0, 5];
        p.extend_from_slice(&1800u32.to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&3u32.to_be_bytes());
        p.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1]);
        let r = parse_announce(&p, 5, false).unwrap();
        assert_eq!(r.interval, Duration::from_secs(1800));
        assert_eq!((r.incomplete, r.complete), (Some(2), Some(3)));
        assert_eq!(r.peers, vec!["127.0.0.1:6881".parse().unwrap()]);

        let mut p6 = p[..20].to_vec();
        let mut v6 = [0u8; 18];
        v6[15] = 1;
        v6[16..].copy_from_slice(&8080u16.to_be_bytes());
        p6.extend_from_slice(&v6);
        let r = parse_announce(&p6, 5, true).unwrap();
        assert_eq!(r.peers, vec!["[::1]:8080".parse().unwrap()]);
    }

    #[test]
    fn error_packets_and_wrong_actions() {
        let mut p = vec![0, 0, 0, 3, 0, 0, 0, 5];
        p.extend_from_slice(b"not authorized");
        assert_eq!(
            parse_announce(&p, 5, false),
            Err(Error::Failure("not authorized".into()))
        );
        let p = [0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_announce(&p, 5, false),
            Err(Error::WrongAction {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn scrape_roundtrip() {
        let b = scrape_request(1, 2, &[3; 20]);
        assert_eq!(&b[8..12], &2u32.to_be_bytes());
        let mut p = vec![0, 0, 0, 2, 0, 0, 0, 2];
        for n in [4u32, 5, 6] {
            p.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(
            parse_scrape(&p, 2),
            Ok(Scrape {
                seeders: 4,
                completed: 5,
                leechers: 6
            })
        );
    }
}
