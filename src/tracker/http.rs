//! HTTP tracker protocol (BEP 3, BEP 23 compact peers, BEP 7 `peers6`) as pure
//! code: builds announce and scrape URLs and parses bencoded responses. Owns
//! no sockets; `tracker` (`announce_http`, `scrape`) does the requests.

use crate::bencode::{self, Value};
use crate::types::{InfoHash, PeerId};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceEvent {
    Started,
    Completed,
    Stopped,
}

impl AnnounceEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceEvent::Started => "started",
            AnnounceEvent::Completed => "completed",
            AnnounceEvent::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Option<AnnounceEvent>,
    pub numwant: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub interval: Duration,
    pub min_interval: Option<Duration>,
    pub peers: Vec<SocketAddr>,
    pub complete: Option<u64>,
    pub incomplete: Option<u64>,
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The tracker refused: its `failure reason`, verbatim.
    Failure(String),
    Bencode(bencode::Error),
    NotADict,
    /// A field had the wrong type or an impossible value.
    BadField(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Failure(r) => write!(f, "tracker refused: {r}"),
            Error::Bencode(e) => write!(f, "tracker response is not bencode: {e}"),
            Error::NotADict => f.write_str("tracker response is not a dictionary"),
            Error::BadField(name) => write!(f, "tracker response has a malformed `{name}`"),
        }
    }
}

impl std::error::Error for Error {}

/// Bytes that go into a query string as `%XX`: everything but RFC 3986's
/// unreserved characters (letters, digits, `-`, `.`, `_`, `~`; the crate
/// always encodes bytes above 0x7f).
const QUERY_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes every byte that is not unreserved (RFC 3986), byte by
/// byte with uppercase hex, as trackers expect for the raw 20-byte info hash
/// and peer id (BEP 3). Trackers compare the decoded bytes, so encoding an
/// unreserved byte would be harmless, but leaving any other byte raw is not.
pub fn percent_encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, QUERY_ESCAPED).to_string()
}

/// The full announce URL for `base` (which may already carry a query string,
/// e.g. a passkey).
pub fn announce_url(base: &str, req: &AnnounceRequest) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{base}{sep}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}",
        percent_encode(&req.info_hash.0),
        percent_encode(&req.peer_id.0),
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        req.numwant,
    );
    if let Some(ev) = req.event {
        url.push_str("&event=");
        url.push_str(ev.as_str());
    }
    url
}

/// Tracker intervals are clamped: a zero or negative interval would make us
/// hammer the tracker, and a huge one would never refresh the swarm.
const MIN_INTERVAL: u64 = 10;
const MAX_INTERVAL: u64 = 3600;
const DEFAULT_INTERVAL: u64 = 1800;

pub fn parse_response(body: &[u8]) -> Result<AnnounceResponse, Error> {
    let value = bencode::decode(body).map_err(Error::Bencode)?;
    let dict = value.as_dict().ok_or(Error::NotADict)?;
    if let Some(reason) = dict.get(b"failure reason") {
        let text = reason
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or(Error::BadField("failure reason"))?;
        return Err(Error::Failure(text));
    }
    let secs = |key: &'static str| -> Result<Option<Duration>, Error> {
        match dict.get(key.as_bytes()) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_int().ok_or(Error::BadField(key))?;
                let n = (n.max(0) as u64).clamp(MIN_INTERVAL, MAX_INTERVAL);
                Ok(Some(Duration::from_secs(n)))
            }
        }
    };
    let count = |key: &'static str| {
        dict.get(key.as_bytes())
            .and_then(|v| v.as_int())
            .map(|n| n.max(0) as u64)
    };
    let mut peers = Vec::new();
    match dict.get(b"peers") {
        None => {}
        Some(Value::Bytes(b)) => {
            if b.len() % 6 != 0 {
                return Err(Error::BadField("peers"));
            }
            peers.extend(b.chunks_exact(6).map(compact_v4));
        }
        Some(Value::List(list)) => {
            for entry in list {
                if let Some(addr) = dict_peer(entry) {
                    peers.push(addr);
                }
            }
        }
        Some(_) => return Err(Error::BadField("peers")),
    }
    match dict.get(b"peers6") {
        None => {}
        Some(Value::Bytes(b)) if b.len() % 18 == 0 => {
            peers.extend(b.chunks_exact(18).map(compact_v6));
        }
        Some(_) => return Err(Error::BadField("peers6")),
    }
    peers.retain(|a| a.port() != 0);
    Ok(AnnounceResponse {
        interval: secs("interval")?.unwrap_or(Duration::from_secs(DEFAULT_INTERVAL)),
        min_interval: secs("min interval")?,
        peers,
        complete: count("complete"),
        incomplete: count("incomplete"),
        warning: dict
            .get(b"warning message")
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned()),
    })
}

/// The conventional scrape URL: the last path segment `announce` becomes
/// `scrape` (BEP 48); `None` when the tracker's URL does not allow it.
pub fn scrape_url(announce: &str, info_hash: &InfoHash) -> Option<String> {
    let (path, query) = match announce.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (announce, None),
    };
    let (dir, last) = path.rsplit_once('/')?;
    let rest = last.strip_prefix("announce")?;
    let mut url = format!("{dir}/scrape{rest}?");
    if let Some(q) = query {
        url.push_str(q);
        url.push('&');
    }
    url.push_str("info_hash=");
    url.push_str(&percent_encode(&info_hash.0));
    Some(url)
}

/// Seeders (`complete`), completed downloads (`downloaded`) and leechers
/// (`incomplete`) from a scrape answer, for `info_hash`.
pub fn parse_scrape(body: &[u8], info_hash: &InfoHash) -> Result<(u64, u64, u64), Error> {
    let value = bencode::decode(body).map_err(Error::Bencode)?;
    let dict = value.as_dict().ok_or(Error::NotADict)?;
    if let Some(reason) = dict.get(b"failure reason").and_then(|v| v.as_bytes()) {
        return Err(Error::Failure(String::from_utf8_lossy(reason).into_owned()));
    }
    let files = dict
        .get(b"files")
        .and_then(|v| v.as_dict())
        .ok_or(Error::BadField("files"))?;
    let Some(entry) = files.get(&info_hash.0).and_then(|v| v.as_dict()) else {
        return Ok((0, 0, 0));
    };
    let n = |k: &[u8]| {
        entry
            .get(k)
            .and_then(|v| v.as_int())
            .map_or(0, |n| n.max(0) as u64)
    };
    Ok((n(b"complete"), n(b"downloaded"), n(b"incomplete")))
}

/// One 6-byte BEP 23 entry: IPv4 address then port, both big-endian.
pub fn compact_v4(b: &[u8]) -> SocketAddr {
    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[4], b[5]]))
}

/// One 18-byte BEP 7 entry: IPv6 address then port.
pub fn compact_v6(b: &[u8]) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[..16]);
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::from(octets)),
        u16::from_be_bytes([b[16], b[17]]),
    )
}

/// A non-compact peer entry `{ip, port[, peer id]}`; entries we cannot use
/// (hostnames, bad ports) are skipped rather than failing the announce.
fn dict_peer(v: &Value<'_>) -> Option<SocketAddr> {
    let d = v.as_dict()?;
    let ip: IpAddr = d.get(b"ip")?.as_str()?.parse().ok()?;
    let port = u16::try_from(d.get(b"port")?.as_int()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash([0x12; 20]),
            peer_id: PeerId(*b"-RT0100-abcdefghijkl"),
            port: 6881,
            uploaded: 0,
            downloaded: 10,
            left: 20,
            event: Some(AnnounceEvent::Started),
            numwant: 50,
        }
    }

    #[test]
    fn url_encodes_bytes_one_by_one() {
        let url = announce_url("http://t/announce", &req());
        assert_eq!(
            url,
            format!(
                "http://t/announce?info_hash={}&peer_id=-RT0100-abcdefghijkl&port=6881&uploaded=0&downloaded=10&left=20&compact=1&numwant=50&event=started",
                "%12".repeat(20)
            )
        );
        let url = announce_url("http://t/a?passkey=x", &req());
        assert!(url.starts_with("http://t/a?passkey=x&info_hash="));
        assert_eq!(percent_encode(&[0x00, b'a', 0xff, b'~']), "%00a%FF~");
    }

    #[test]
    fn a_hash_with_every_byte_class_is_encoded_exactly() {
        // Controls, space, reserved and other punctuation, unreserved
        // punctuation, digits, letters, DEL and bytes above 0x7f.
        let mut r = req();
        r.info_hash = InfoHash([
            0x00, 0x1f, b' ', b'%', b'&', b'+', b'-', b'.', b'0', b'9', b'=', b'A', b'Z', b'_',
            b'a', b'z', b'~', 0x7f, 0x80, 0xff,
        ]);
        let url = announce_url("http://t/announce", &r);
        assert!(url.starts_with(
            "http://t/announce?info_hash=%00%1F%20%25%26%2B-.09%3DAZ_az~%7F%80%FF&peer_id="
        ));
        for b in 0..=255u8 {
            let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
            let want = if unreserved {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            };
            assert_eq!(percent_encode(&[b]), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn compact_peers_and_intervals() {
        let body = b"d8:completei3e10:incompletei1e8:intervali900e12:min intervali60e5:peers12:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x00\x50e";
        let r = parse_response(body).unwrap();
        assert_eq!(r.interval, Duration::from_secs(900));
        assert_eq!(r.min_interval, Some(Duration::from_secs(60)));
        assert_eq!(
            r.peers,
            vec![
                "127.0.0.1:6881".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap()
            ]
        );
        assert_eq!((r.complete, r.incomplete), (Some(3), Some(1)));
    }

    #[test]
    fn dictionary_peers_and_peers6() {
        let mut body = b"d8:intervali5e5:peersld2:ip9:127.0.0.17:peer id20:aaaaaaaaaaaaaaaaaaaa4:porti7000eed2:ip8:hostname4:porti1eee6:peers618:".to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90]);
        body.push(b'e');
        let r = parse_response(&body).unwrap();
        assert_eq!(r.interval, Duration::from_secs(MIN_INTERVAL), "clamped");
        assert_eq!(
            r.peers,
            vec![
                "127.0.0.1:7000".parse().unwrap(),
                "[::1]:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn scrape_urls_and_answers() {
        let ih = InfoHash([0x41; 20]);
        assert_eq!(
            scrape_url("http://t:1/announce", &ih).unwrap(),
            format!("http://t:1/scrape?info_hash={}", "A".repeat(20))
        );
        assert_eq!(
            scrape_url("http://t/x/announce.php?pk=1", &ih).unwrap(),
            format!("http://t/x/scrape.php?pk=1&info_hash={}", "A".repeat(20))
        );
        assert_eq!(scrape_url("http://t/a", &ih), None);
        let mut body = b"d5:filesd20:".to_vec();
        body.extend_from_slice(&[0x41; 20]);
        body.extend_from_slice(b"d8:completei2e10:downloadedi5e10:incompletei1eeee");
        assert_eq!(parse_scrape(&body, &ih), Ok((2, 5, 1)));
        assert_eq!(parse_scrape(b"d5:filesdee", &ih), Ok((0, 0, 0)));
    }

    #[test]
    fn failure_reason_is_its_own_error() {
        let body = b"d14:failure reason37:Requested download is not authorized.e";
        assert_eq!(
            parse_response(body),
            Err(Error::Failure(
                "Requested download is not authorized.".into()
            ))
        );
    }

    #[test]
    fn malformed_responses() {
        assert!(matches!(parse_response(b"<html>"), Err(Error::Bencode(_))));
        assert_eq!(parse_response(b"le"), Err(Error::NotADict));
        assert_eq!(
            parse_response(b"d5:peers5:abcdee"),
            Err(Error::BadField("peers"))
        );
        assert_eq!(
            parse_response(b"d8:interval3:abce"),
            Err(Error::BadField("interval"))
        );
    }
}
