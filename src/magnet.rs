//! Magnet links: turning a `magnet:?` URI (BEP 9, plus BEP 53's `so`) into
//! a bounded, validated `Magnet`, writing one back as a URI, and making one
//! from a `Torrent`.
//!
//! Owns the URI's grammar as rtc reads it: which parameters count (`xt`,
//! `dn`, `tr`, `x.pe`, `so`; every other one is ignored), strict
//! percent-decoding, the v1 info hash in hex or base32, the shape of peer
//! addresses and select-only ranges, and the bounds (`Magnet::MAX_LEN`,
//! `Magnet::MAX_TRACKERS`, `Magnet::MAX_PEERS`). Parsing is linear in the
//! length of the input. A `Magnet` can only be built by `Magnet::parse` or
//! `Magnet::from_torrent`, so holding one means holding a v1 hash and
//! values within those bounds.
//!
//! Pure: no I/O. Does not own fetching the metadata the link points to
//! (BEP 9's `ut_metadata` exchange), resolving peer host names (the CLI
//! does that like `--peer`), checking tracker URLs (`tracker::http`, when it
//! announces), or what `so` selects (file indices mean nothing until the
//! metadata has arrived).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::metainfo::Torrent;
use crate::text::Escaped;
use crate::types::InfoHash;

/// What `to_uri` leaves unescaped in a value: RFC 3986's unreserved
/// characters. Everything else, including `+`, `&`, `=`, `:` and `/`, is
/// percent-encoded (UTF-8).
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Offending text longer than this many characters is cut short (with
/// `...`) in an error, so that one error stays one readable line.
const EXCERPT_CHARS: usize = 60;

/// A parsed magnet link: the v1 info hash and the hints that help find the
/// torrent's metadata and peers.
///
/// Fields are read through accessors; a `Magnet` comes only from
/// [`Magnet::parse`] (or `str::parse`) and [`Magnet::from_torrent`], so it
/// always holds a v1 info hash, at most [`Magnet::MAX_TRACKERS`] distinct
/// non-empty trackers and at most [`Magnet::MAX_PEERS`] distinct
/// well-shaped peer addresses. [`Magnet::to_uri`] (also its `Display`)
/// writes a link that `parse` reads back to an equal `Magnet`, as long as
/// that link is at most [`Magnet::MAX_LEN`] bytes (always so for one made
/// by `from_torrent`).
///
/// ```
/// let m = rtc::Magnet::parse(
///     "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a\
///      &dn=Some%20Linux&tr=udp%3A%2F%2Ftracker.example%3A6969",
/// )?;
/// assert_eq!(m.info_hash().hex(), "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
/// assert_eq!(m.name(), Some("Some Linux"));
/// assert_eq!(m.trackers(), ["udp://tracker.example:6969"]);
/// # Ok::<(), rtc::MagnetError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    info_hash: InfoHash,
    name: Option<String>,
    trackers: Vec<String>,
    peers: Vec<String>,
    select_only: Option<Vec<(u32, u32)>>,
}

impl Magnet {
    /// Longest accepted link: 64 KiB. Real links are well under 4 KiB.
    pub const MAX_LEN: usize = 64 * 1024;
    /// Most trackers kept. Further distinct `tr` values are ignored, not an
    /// error: links carrying a pasted list of ~100 public trackers are
    /// common, and the first ones are the link author's preference.
    pub const MAX_TRACKERS: usize = 100;
    /// Most peer addresses kept. Further distinct `x.pe` values are
    /// checked, then ignored, like trackers.
    pub const MAX_PEERS: usize = 100;

    /// Parses a magnet link.
    ///
    /// * The scheme `magnet:` is matched without regard to case, and must
    ///   be followed by `?`. Parameters are separated by `&`; empty ones are
    ///   skipped; a parameter without `=` has an empty value. Parameter
    ///   names are matched exactly (BEP 9 spells them in lowercase);
    ///   unknown parameters are ignored without being read.
    /// * Values of known parameters are percent-decoded, and an invalid
    ///   escape (`%G1`, a truncated `%4`) is an error. `+` stands for
    ///   itself, not a space: a magnet link is a URI, not an HTML form.
    ///   Decoded `xt`, `tr`, `x.pe` and `so` must be UTF-8; `dn` is only a
    ///   display hint and is decoded lossily.
    /// * `xt`: at least one must be `urn:btih:` (prefix in any case)
    ///   followed by the 20-byte v1 info hash in 40 hex digits or 32
    ///   base32 characters (RFC 4648, no padding), either case. Other `xt`
    ///   values (e.g. a v2 `urn:btmh:`) are ignored. A malformed btih, or
    ///   two btih naming different hashes, is an error.
    /// * `dn`: the first non-empty one.
    /// * `tr`: every one, in order, empty ones and repeats dropped, the
    ///   first [`Magnet::MAX_TRACKERS`] kept.
    /// * `x.pe`: every one must be `host:port` or `[ipv6]:port` with port
    ///   1..=65535; in order, repeats dropped, the first
    ///   [`Magnet::MAX_PEERS`] kept.
    /// * `so` (BEP 53): the first one; comma-separated file indices and
    ///   inclusive ranges `a-b` with `a <= b`, kept as given.
    ///
    /// Links longer than [`Magnet::MAX_LEN`] bytes are refused before
    /// anything else is read, and so are links holding a raw control
    /// character (a newline joining two links, say: in a link they are
    /// percent-escaped).
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        if uri.len() > Magnet::MAX_LEN {
            return Err(MagnetError::TooLong { len: uri.len() });
        }
        if let Some(at) = uri.find(char::is_control) {
            return Err(MagnetError::ControlCharacter { at });
        }
        let query = strip_prefix_ci(uri, "magnet:?")
            .ok_or_else(|| MagnetError::NotMagnet { text: excerpt(uri) })?;
        let mut hash: Option<InfoHash> = None;
        let mut v2_only_hash = false;
        let mut name = None;
        let mut trackers = Vec::new();
        let mut seen_trackers = HashSet::new();
        let mut peers = Vec::new();
        let mut seen_peers = HashSet::new();
        let mut select_only = None;
        for pair in query.split('&') {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "xt" => {
                    let value = decode("xt", raw)?;
                    if let Some(text) = strip_prefix_ci(&value, "urn:btih:") {
                        let h = parse_hash(text)?;
                        match hash {
                            Some(first) if first != h => {
                                return Err(MagnetError::ConflictingHashes { first, second: h })
                            }
                            _ => hash = Some(h),
                        }
                    } else if strip_prefix_ci(&value, "urn:btmh:").is_some() {
                        v2_only_hash = true;
                    }
                }
                "dn" if name.is_none() => {
                    check_escapes("dn", raw)?;
                    let value = percent_decode_str(raw).decode_utf8_lossy();
                    if !value.is_empty() {
                        name = Some(value.into_owned());
                    }
                }
                "tr" => {
                    let value = decode("tr", raw)?;
                    if !value.is_empty()
                        && trackers.len() < Magnet::MAX_TRACKERS
                        && seen_trackers.insert(value.clone())
                    {
                        trackers.push(value);
                    }
                }
                "x.pe" => {
                    let value = decode("x.pe", raw)?;
                    if let Err(reason) = check_peer(&value) {
                        return Err(MagnetError::BadPeer {
                            peer: excerpt(&value),
                            reason,
                        });
                    }
                    if peers.len() < Magnet::MAX_PEERS && seen_peers.insert(value.clone()) {
                        peers.push(value);
                    }
                }
                "so" if select_only.is_none() => {
                    let value = decode("so", raw)?;
                    let ranges = crate::select::parse_ranges(&value).map_err(|reason| {
                        MagnetError::BadSelectOnly {
                            so: excerpt(&value),
                            reason,
                        }
                    })?;
                    select_only = Some(ranges);
                }
                _ => {}
            }
        }
        let info_hash = match hash {
            Some(h) => h,
            None if v2_only_hash => return Err(MagnetError::V2Only),
            None => return Err(MagnetError::NoInfoHash),
        };
        Ok(Magnet {
            info_hash,
            name,
            trackers,
            peers,
            select_only,
        })
    }

    /// The magnet link of a torrent: its info hash, its name as `dn`, and
    /// every tracker of every tier as `tr` (in tier order, repeats dropped,
    /// at most [`Magnet::MAX_TRACKERS`]); no peers, no `so`. The tiers are
    /// not kept: a link's trackers are each a tier of their own. A name or
    /// tracker that would take the link past [`Magnet::MAX_LEN`] is left
    /// out, so the link always parses back.
    pub fn from_torrent(torrent: &Torrent) -> Magnet {
        let mut magnet = Magnet {
            info_hash: torrent.info_hash(),
            name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
            select_only: None,
        };
        let mut len = magnet.to_uri().len();
        let name = torrent.name();
        let cost = "&dn=".len() + encoded_len(name);
        if !name.is_empty() && len + cost <= Magnet::MAX_LEN {
            magnet.name = Some(name.to_owned());
            len += cost;
        }
        for url in torrent.trackers().into_iter().flatten() {
            if magnet.trackers.len() == Magnet::MAX_TRACKERS {
                break;
            }
            let cost = "&tr=".len() + encoded_len(&url);
            if url.is_empty() || magnet.trackers.contains(&url) || len + cost > Magnet::MAX_LEN {
                continue;
            }
            len += cost;
            magnet.trackers.push(url);
        }
        magnet
    }

    /// The link as a URI: `magnet:?xt=urn:btih:` and the hash in lowercase
    /// hex, then `dn`, each `tr`, each `x.pe` and `so`, in that order. All
    /// but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) in
    /// `dn`, `tr` and `x.pe` values are percent-encoded as UTF-8.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }

    /// The v1 info hash (`xt=urn:btih:`).
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The display name (`dn`), decoded; only a hint until the metadata,
    /// which carries the real name, has arrived.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Tracker URLs (`tr`), decoded, in the link's order; each is a BEP 12
    /// tier of its own. Not checked to be URLs.
    pub fn trackers(&self) -> &[String] {
        &self.trackers
    }

    /// Peer addresses (`x.pe`) as `host:port` or `[ipv6]:port`, decoded.
    /// Their shape is checked; host names are not resolved.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// BEP 53's select-only list (`so`): inclusive ranges of file indices,
    /// `(4, 6)` for `4-6` and `(0, 0)` for `0`, in the link's order.
    pub fn select_only(&self) -> Option<&[(u32, u32)]> {
        self.select_only.as_deref()
    }
}

impl fmt::Display for Magnet {
    /// Writes [`Magnet::to_uri`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "magnet:?xt=urn:btih:{}", self.info_hash.hex())?;
        if let Some(name) = &self.name {
            write!(f, "&dn={}", utf8_percent_encode(name, VALUE))?;
        }
        for url in &self.trackers {
            write!(f, "&tr={}", utf8_percent_encode(url, VALUE))?;
        }
        for peer in &self.peers {
            write!(f, "&x.pe={}", utf8_percent_encode(peer, VALUE))?;
        }
        if let Some(ranges) = &self.select_only {
            f.write_str("&so=")?;
            for (i, &(a, b)) in ranges.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                if a == b {
                    write!(f, "{a}")?;
                } else {
                    write!(f, "{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Magnet {
    type Err = MagnetError;

    /// [`Magnet::parse`].
    fn from_str(s: &str) -> Result<Magnet, MagnetError> {
        Magnet::parse(s)
    }
}

/// Why a string is not an acceptable magnet link. Offending text from the
/// link is kept decoded, cut to 60 characters, and printed escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MagnetError {
    /// The text does not begin with `magnet:?`.
    NotMagnet {
        /// The beginning of the text.
        text: String,
    },
    /// The link is longer than [`Magnet::MAX_LEN`].
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A raw control character (a newline, a tab) is in the link.
    ControlCharacter {
        /// Its byte offset in the link.
        at: usize,
    },
    /// No `xt` parameter holds a `urn:btih:` hash.
    NoInfoHash,
    /// The only hash is a BitTorrent v2 one (`urn:btmh:`); rtc speaks v1.
    V2Only,
    /// A `urn:btih:` hash is neither 40 nor 32 characters long.
    HashLength {
        /// The hash as given.
        hash: String,
        /// Its length in characters.
        len: usize,
    },
    /// A `urn:btih:` hash has a character outside its alphabet.
    HashAlphabet {
        /// The hash as given.
        hash: String,
        /// The alphabet its length calls for: `"hex"` (40 characters) or
        /// `"base32"` (32).
        encoding: &'static str,
    },
    /// Two `urn:btih:` hashes name different torrents.
    ConflictingHashes {
        /// The first hash.
        first: InfoHash,
        /// The other.
        second: InfoHash,
    },
    /// A `%` in a parameter's value is not followed by two hex digits.
    BadEscape {
        /// The parameter (`xt`, `dn`, `tr`, `x.pe` or `so`).
        param: &'static str,
        /// The escape: `%` and up to two characters after it.
        escape: String,
    },
    /// A parameter's value is not UTF-8 once percent-decoded.
    NotUtf8 {
        /// The parameter.
        param: &'static str,
    },
    /// An `x.pe` value is not `host:port` or `[ipv6]:port`.
    BadPeer {
        /// The value.
        peer: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `so` value is not a list of indices and ranges like `0,2,4-6`.
    BadSelectOnly {
        /// The value.
        so: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MagnetError::NotMagnet { text } => {
                write!(f, "'{}' does not begin with 'magnet:?'", Escaped(text))
            }
            MagnetError::ControlCharacter { at } => write!(
                f,
                "a raw control character at byte {at} (give one link per line; in a link, \
                 such characters are percent-escaped)"
            ),
            MagnetError::TooLong { len } => write!(
                f,
                "{len} bytes, over rtc's limit of {} for a magnet link",
                Magnet::MAX_LEN
            ),
            MagnetError::NoInfoHash => f.write_str("no info hash (no xt=urn:btih: parameter)"),
            MagnetError::V2Only => f.write_str(
                "only a BitTorrent v2 hash (urn:btmh:); \
                 rtc needs a v1 hash (xt=urn:btih:)",
            ),
            MagnetError::HashLength { hash, len } => write!(
                f,
                "info hash '{}' is {len} characters; expected 40 (hex) or 32 (base32)",
                Escaped(hash)
            ),
            MagnetError::HashAlphabet { hash, encoding } => {
                let alphabet = if *encoding == "hex" {
                    "0-9, a-f"
                } else {
                    "a-z, 2-7"
                };
                write!(
                    f,
                    "info hash '{}' is not valid {encoding} ({alphabet}, either case)",
                    Escaped(hash)
                )
            }
            MagnetError::ConflictingHashes { first, second } => {
                write!(f, "two different info hashes, {first} and {second}")
            }
            MagnetError::BadEscape { param, escape } => write!(
                f,
                "bad percent-escape '{}' in {param}: expected % and two hex digits",
                Escaped(escape)
            ),
            MagnetError::NotUtf8 { param } => {
                write!(f, "{param} is not UTF-8 once percent-decoded")
            }
            MagnetError::BadPeer { peer, reason } => write!(
                f,
                "bad peer address (x.pe) '{}': {reason}; expected host:port or [ipv6]:port",
                Escaped(peer)
            ),
            MagnetError::BadSelectOnly { so, reason } => write!(
                f,
                "bad file selection (so) '{}': {reason}; expected indices and ranges like 0,2,4-6",
                Escaped(so)
            ),
        }
    }
}

impl std::error::Error for MagnetError {}

/// True if `s` is meant as a magnet link (begins with `magnet:`, any case),
/// well-formed or not.
pub(crate) fn is_magnet(s: &str) -> bool {
    strip_prefix_ci(s, "magnet:").is_some()
}

/// `s` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// At most `EXCERPT_CHARS` characters of `s`, with `...` if cut.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

/// Fails on the first `%` that is not followed by two hex digits (the
/// `percent-encoding` decoder would pass it through unchanged).
fn check_escapes(param: &'static str, raw: &str) -> Result<(), MagnetError> {
    let b = raw.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%'
            && !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())
        {
            return Err(MagnetError::BadEscape {
                param,
                escape: raw[i..].chars().take(3).collect(),
            });
        }
    }
    Ok(())
}

/// A value checked for escapes, percent-decoded, and required to be UTF-8.
fn decode(param: &'static str, raw: &str) -> Result<String, MagnetError> {
    check_escapes(param, raw)?;
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| MagnetError::NotUtf8 { param })
}

/// Length of `s` once percent-encoded by `to_uri`.
fn encoded_len(s: &str) -> usize {
    utf8_percent_encode(s, VALUE).map(str::len).sum()
}

/// A btih hash: 40 hex digits or 32 base32 characters, either case.
fn parse_hash(text: &str) -> Result<InfoHash, MagnetError> {
    let alphabet = |encoding| MagnetError::HashAlphabet {
        hash: excerpt(text),
        encoding,
    };
    let encoding = match text.chars().count() {
        40 => "hex",
        32 => "base32",
        len => {
            return Err(MagnetError::HashLength {
                hash: excerpt(text),
                len,
            })
        }
    };
    if !text.is_ascii() {
        return Err(alphabet(encoding));
    }
    let mut out = [0u8; 20];
    if encoding == "hex" {
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
            let hi = hex_digit(pair[0]).ok_or_else(|| alphabet("hex"))?;
            let lo = hex_digit(pair[1]).ok_or_else(|| alphabet("hex"))?;
            *byte = (hi << 4) | lo;
        }
    } else {
        // 32 characters of 5 bits are exactly 160 bits: four groups of 8
        // characters, each 40 bits = 5 bytes.
        for (bytes, group) in out.chunks_mut(5).zip(text.as_bytes().chunks(8)) {
            let mut acc: u64 = 0;
            for &c in group {
                acc = (acc << 5) | u64::from(base32_digit(c).ok_or_else(|| alphabet("base32"))?);
            }
            bytes.copy_from_slice(&acc.to_be_bytes()[3..]);
        }
    }
    Ok(InfoHash(out))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 4648 base32: `A-Z` are 0-25, `2-7` are 26-31; lowercase accepted.
fn base32_digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// Checks the shape of an `x.pe` address; why it is wrong otherwise.
fn check_peer(peer: &str) -> Result<(), &'static str> {
    let (host, port) = peer.rsplit_once(':').ok_or("no :port")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(1..) => {}
        _ => return Err("the port is not in 1..=65535"),
    }
    if let Some(inside) = host.strip_prefix('[') {
        let inside = inside.strip_suffix(']').ok_or("'[' without ']'")?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address inside [ ]")?;
        return Ok(());
    }
    if host.is_empty() {
        return Err("the host is empty");
    }
    if host.contains(':') {
        return Err("an IPv6 address must be written in [ ]");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "[]/@?#\\".contains(c))
    {
        return Err("the host has a character no host name has");
    }
    Ok(())
}

/// BEP 53's `so`: `0,2,4-6` as `[(0, 0), (2, 2), (4, 6)]`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Rng;
    use std::time::{Duration, Instant};

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    /// `HEX` in base32, computed independently (Python's
    /// `base64.b32encode`).
    const BASE32: &str = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";

    fn hash() -> InfoHash {
        InfoHash([
            0xc1, 0x2f, 0xe1, 0xc0, 0x6b, 0xba, 0x25, 0x4a, 0x9d, 0xc9, 0xf5, 0x19, 0xb3, 0x35,
            0xaa, 0x7c, 0x13, 0x67, 0xa8, 0x8a,
        ])
    }

    fn err(uri: &str) -> MagnetError {
        Magnet::parse(uri).expect_err(uri)
    }

    /// The corpus's name for each kind of error (tests/corpus/magnets).
    fn kind(e: &MagnetError) -> &'static str {
        match e {
            MagnetError::NotMagnet { .. } => "not-magnet",
            MagnetError::TooLong { .. } => "too-long",
            MagnetError::ControlCharacter { .. } => "control",
            MagnetError::NoInfoHash => "no-hash",
            MagnetError::V2Only => "v2-only",
            MagnetError::HashLength { .. } => "hash-length",
            MagnetError::HashAlphabet { .. } => "hash-alphabet",
            MagnetError::ConflictingHashes { .. } => "two-hashes",
            MagnetError::BadEscape { .. } => "escape",
            MagnetError::NotUtf8 { .. } => "utf8",
            MagnetError::BadPeer { .. } => "peer",
            MagnetError::BadSelectOnly { .. } => "so",
        }
    }

    #[test]
    fn hex_link_parses_exactly() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Debian+12%20%C3%A9&tr=http%3A%2F%2Ft.example%2Fa%3Fk%3D1\
             &tr=udp://u.example:6969&tr=http%3A%2F%2Ft.example%2Fa%3Fk%3D1&tr=\
             &x.pe=10.0.0.1:6881&x.pe=%5B::1%5D:51413&x.pe=peer.example:1&so=0,2,4-6\
             &ws=http://ignored&xl=123&&unknown"
        ))
        .unwrap();
        assert_eq!(m.info_hash(), hash());
        assert_eq!(m.name(), Some("Debian+12 é"), "+ is literal");
        assert_eq!(
            m.trackers(),
            ["http://t.example/a?k=1", "udp://u.example:6969"]
        );
        assert_eq!(
            m.peers(),
            ["10.0.0.1:6881", "[::1]:51413", "peer.example:1"]
        );
        assert_eq!(m.select_only(), Some(&[(0, 0), (2, 2), (4, 6)][..]));
    }

    #[test]
    fn base32_and_uppercase_hex_give_the_same_hash() {
        for xt in [
            BASE32.to_owned(),
            BASE32.to_lowercase(),
            HEX.to_uppercase(),
            format!("{}{}", &HEX[..20], HEX[20..].to_uppercase()),
        ] {
            let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{xt}")).unwrap();
            assert_eq!(m.info_hash(), hash(), "{xt}");
            assert_eq!(m.name(), None);
            assert!(m.trackers().is_empty() && m.peers().is_empty());
            assert_eq!(m.select_only(), None);
        }
        let all_zero = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", "A".repeat(32))).unwrap();
        assert_eq!(all_zero.info_hash(), InfoHash([0; 20]));
        let all_ones = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", "7".repeat(32))).unwrap();
        assert_eq!(all_ones.info_hash(), InfoHash([0xff; 20]));
    }

    #[test]
    fn scheme_and_urn_prefixes_ignore_case_and_extra_xt_are_allowed() {
        let m = Magnet::parse(&format!(
            "MAGNET:?xt=urn:btmh:1220{}&xt=URN:BTIH:{HEX}&xt=urn:sha1:abc&xt=urn%3Abtih%3A{BASE32}",
            "0".repeat(64)
        ))
        .unwrap();
        assert_eq!(m.info_hash(), hash());
        assert!(is_magnet("Magnet:whatever") && !is_magnet("magnet") && !is_magnet("http:"));
    }

    #[test]
    fn first_dn_and_so_win_and_bounds_keep_the_first_hundred() {
        let mut uri = format!("magnet:?xt=urn:btih:{HEX}&dn=one&dn=%ZZ&so=1&so=bad");
        for i in 0..150 {
            uri += &format!(
                "&tr=http://t{i}.example/&x.pe=10.0.0.{}:{}",
                i % 250,
                1000 + i
            );
        }
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.name(), Some("one"));
        assert_eq!(m.select_only(), Some(&[(1, 1)][..]));
        assert_eq!(m.trackers().len(), Magnet::MAX_TRACKERS);
        assert_eq!(m.trackers()[99], "http://t99.example/");
        assert_eq!(m.peers().len(), Magnet::MAX_PEERS);
        assert_eq!(m.peers()[0], "10.0.0.0:1000");
        // Peers past the cap are still checked.
        uri += "&x.pe=nope";
        assert!(matches!(err(&uri), MagnetError::BadPeer { .. }));
    }

    #[test]
    fn each_error_has_its_variant_and_one_line() {
        let h = format!("xt=urn:btih:{HEX}");
        let cases: Vec<(String, &str, &str)> = vec![
            (
                "http://x".into(),
                "not-magnet",
                "does not begin with 'magnet:?'",
            ),
            (
                format!("magnet:{h}"),
                "not-magnet",
                "'magnet:xt=urn:btih:c12f",
            ),
            (
                format!("magnet:?{h}&dn={}", "a".repeat(Magnet::MAX_LEN)),
                "too-long",
                "over rtc's limit of 65536",
            ),
            (
                "magnet:?dn=x&tr=http://t/".into(),
                "no-hash",
                "no info hash",
            ),
            (
                "magnet:?xt=urn:btmh:1220ab".into(),
                "v2-only",
                "needs a v1 hash",
            ),
            (
                "magnet:?xt=urn:btih:abc".into(),
                "hash-length",
                "'abc' is 3 characters; expected 40 (hex) or 32 (base32)",
            ),
            (
                format!("magnet:?xt=urn:btih:{}g", &HEX[..39]),
                "hash-alphabet",
                "is not valid hex",
            ),
            (
                format!("magnet:?xt=urn:btih:{}1", &BASE32[..31]),
                "hash-alphabet",
                "is not valid base32",
            ),
            (
                format!("magnet:?{h}&xt=urn:btih:{}", "0".repeat(40)),
                "two-hashes",
                "two different info hashes",
            ),
            (format!("magnet:?{h}&dn=%G1"), "escape", "'%G1' in dn"),
            (format!("magnet:?{h}&tr=http://x%4"), "escape", "'%4' in tr"),
            ("magnet:?xt=urn:btih:%".into(), "escape", "'%' in xt"),
            (format!("magnet:?{h}&tr=%FF"), "utf8", "tr is not UTF-8"),
            (format!("magnet:?{h}&x.pe=host"), "peer", "no :port"),
            (
                format!("magnet:?{h}&x.pe=host:0"),
                "peer",
                "not in 1..=65535",
            ),
            (
                format!("magnet:?{h}&x.pe=host:65536"),
                "peer",
                "not in 1..=65535",
            ),
            (format!("magnet:?{h}&x.pe=host:+1"), "peer", "not a number"),
            (format!("magnet:?{h}&x.pe=:80"), "peer", "host is empty"),
            (
                format!("magnet:?{h}&x.pe=::1:80"),
                "peer",
                "must be written in [ ]",
            ),
            (
                format!("magnet:?{h}&x.pe=[::1:80"),
                "peer",
                "'[' without ']'",
            ),
            (format!("magnet:?{h}&x.pe=[nope]:80"), "peer", "not an IPv6"),
            (format!("magnet:?{h}&so="), "so", "it is empty"),
            (format!("magnet:?{h}&so=1,,2"), "so", "not a number"),
            (format!("magnet:?{h}&so=6-4"), "so", "ends before it starts"),
            (format!("magnet:?{h}&so=4294967296"), "so", "too large"),
        ];
        for (uri, want_kind, needle) in cases {
            let e = err(&uri);
            let msg = e.to_string();
            assert_eq!(kind(&e), want_kind, "{uri}: {msg}");
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
            assert!(!msg.contains('\n') && msg.len() < 300, "{msg}");
            let first = msg.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{msg}");
        }
    }

    #[test]
    fn offending_text_is_escaped_and_cut_short() {
        // Raw control characters are refused before anything is quoted.
        let e = err("magnet:?xt=urn:btih:\u{1b}[31m\n");
        assert_eq!(e, MagnetError::ControlCharacter { at: 20 });
        assert!(!e.to_string().chars().any(char::is_control));
        let msg = err(&format!("magnet:?xt=urn:btih:{}", "x".repeat(5000))).to_string();
        assert!(msg.contains(&format!("'{}...'", "x".repeat(60))), "{msg}");
        assert!(msg.contains("5000 characters"), "{msg}");
        let msg = err(&format!("magnet:?xt=urn:btih:{HEX}&x.pe=%1B%5B2J:1%0A")).to_string();
        assert!(msg.contains("'\\u{1b}[2J:1\\n'"), "{msg}");
    }

    #[test]
    fn the_corpus_names_the_right_kind() {
        let corpus = include_str!("../tests/corpus/magnets/bad.txt");
        let mut n = 0;
        for line in corpus
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (want, uri) = line.split_once('\t').expect("kind<TAB>magnet");
            assert_eq!(kind(&err(uri)), want, "{uri}");
            n += 1;
        }
        assert!(n >= 30, "corpus has {n} lines");
    }

    fn sample_torrent(announce: &str, list: &str) -> Torrent {
        let mut b = Vec::new();
        b.extend_from_slice(format!("d8:announce{}:{announce}", announce.len()).as_bytes());
        b.extend_from_slice(list.as_bytes());
        b.extend_from_slice(
            b"4:infod6:lengthi5e4:name9:a b&c+d=e12:piece lengthi16384e6:pieces20:",
        );
        b.extend_from_slice(&[7u8; 20]);
        b.extend_from_slice(b"ee");
        Torrent::from_bytes(&b).unwrap()
    }

    #[test]
    fn from_torrent_takes_hash_name_and_every_tracker_once() {
        let t = sample_torrent(
            "http://a/ann",
            "13:announce-listll12:http://a/ann14:udp://b:1/?x=yel12:http://a/ann8:http://cee",
        );
        let m = Magnet::from_torrent(&t);
        assert_eq!(m.info_hash(), t.info_hash());
        assert_eq!(m.name(), Some("a b&c+d=e"));
        assert_eq!(m.trackers(), ["http://a/ann", "udp://b:1/?x=y", "http://c"]);
        assert!(m.peers().is_empty() && m.select_only().is_none());
        let uri = m.to_uri();
        assert_eq!(
            uri,
            format!(
                "magnet:?xt=urn:btih:{}&dn=a%20b%26c%2Bd%3De&tr=http%3A%2F%2Fa%2Fann\
                 &tr=udp%3A%2F%2Fb%3A1%2F%3Fx%3Dy&tr=http%3A%2F%2Fc",
                t.info_hash().hex()
            )
        );
        assert_eq!(m.to_string(), uri);
        assert_eq!(Magnet::parse(&uri).unwrap(), m);
        assert_eq!(uri.parse::<Magnet>().unwrap(), m);
    }

    #[test]
    fn from_torrent_stays_within_the_length_limit() {
        let long = format!("http://t/{}", "/".repeat(20_000));
        let list = format!(
            "13:announce-listl{}e",
            (0..5)
                .map(|i| format!("l{}:{long}{i}e", long.len() + 1))
                .collect::<String>()
        );
        let m = Magnet::from_torrent(&sample_torrent("http://a/", &list));
        // Each long tracker costs ~60 KB encoded: only the first fits.
        assert_eq!(m.trackers().len(), 1, "{:?}", m.trackers().len());
        assert!(m.to_uri().len() <= Magnet::MAX_LEN);
        assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
    }

    /// Random text from pieces that make up magnet links, plus arbitrary
    /// characters, so that random inputs reach every branch.
    fn random_text(rng: &mut Rng, max_pieces: usize) -> String {
        const PIECES: &[&str] = &[
            "magnet:?",
            "xt=",
            "urn:btih:",
            "urn:btmh:",
            "dn=",
            "tr=",
            "x.pe=",
            "so=",
            "&",
            "=",
            "%",
            "%4",
            "%41",
            "%C3%A9",
            "%FF",
            "+",
            ":",
            "[",
            "]",
            "::1",
            ",",
            "-",
            "0",
            "7",
            "65535",
            "99999",
            "c12fe1c06bba254a9dc9f519b335aa7c1367a88a",
            BASE32,
            "é",
            "\u{1b}",
            " ",
            "\n",
            "\u{202e}",
        ];
        let mut s = String::new();
        for _ in 0..rng.below(max_pieces) {
            if rng.below(4) == 0 {
                s.push(char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'));
            } else {
                s += PIECES[rng.below(PIECES.len())];
            }
        }
        s
    }

    #[test]
    fn random_text_never_panics_and_what_parses_round_trips() {
        let mut rng = Rng::new(0x6d61676e6574);
        let mut parsed = 0;
        for i in 0..5000 {
            let mut s = random_text(&mut rng, 40);
            match i % 3 {
                0 => s = format!("magnet:?{s}"),
                1 => s = format!("magnet:?xt=urn:btih:{HEX}&{s}"),
                _ => {}
            }
            match Magnet::parse(&s) {
                Ok(m) => {
                    parsed += 1;
                    assert_eq!(Magnet::parse(&m.to_uri()).as_ref(), Ok(&m), "{s:?}");
                }
                Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
            }
        }
        assert!(parsed > 300, "only {parsed} random links parsed");
    }

    #[test]
    fn random_valid_magnets_round_trip() {
        let mut rng = Rng::new(42);
        for _ in 0..3000 {
            let mut h = [0u8; 20];
            for b in &mut h {
                *b = rng.next_u64() as u8;
            }
            let name = (rng.below(3) > 0)
                .then(|| random_text(&mut rng, 6))
                .filter(|n| !n.is_empty());
            let mut trackers = Vec::new();
            for _ in 0..rng.below(5) {
                let t = format!(
                    "{}/{}",
                    ["http://t", "udp://u:1"][rng.below(2)],
                    random_text(&mut rng, 4)
                );
                if !trackers.contains(&t) {
                    trackers.push(t);
                }
            }
            let mut peers = Vec::new();
            for _ in 0..rng.below(4) {
                let port = 1 + rng.below(65535);
                let p = match rng.below(3) {
                    0 => format!("10.0.{}.{}:{port}", rng.below(256), rng.below(256)),
                    1 => format!("[2001:db8::{:x}]:{port}", rng.below(65536)),
                    _ => format!("host-{}.example:{port}", rng.below(1000)),
                };
                if !peers.contains(&p) {
                    peers.push(p);
                }
            }
            let select_only = (rng.below(2) == 0).then(|| {
                (0..1 + rng.below(4))
                    .map(|_| {
                        let a = rng.below(1000) as u32;
                        (a, a + [0, 0, 5][rng.below(3)])
                    })
                    .collect()
            });
            let m = Magnet {
                info_hash: InfoHash(h),
                name,
                trackers,
                peers,
                select_only,
            };
            let uri = m.to_uri();
            assert!(uri.is_ascii(), "{uri}");
            assert_eq!(Magnet::parse(&uri).as_ref(), Ok(&m), "{uri}");
        }
    }

    #[test]
    fn adversarial_inputs_take_linear_time() {
        let fill = |head: &str, unit: &str| {
            let mut s = head.to_owned();
            while s.len() + unit.len() <= Magnet::MAX_LEN {
                s += unit;
            }
            s
        };
        let h = format!("magnet:?xt=urn:btih:{HEX}");
        let inputs = [
            fill("magnet:?", "%"),
            fill("magnet:?", "&"),
            fill("magnet:?", "="),
            fill(&format!("{h}&dn="), "%%"),
            fill(&format!("{h}&dn="), "%41"),
            fill(&format!("{h}&tr="), "%41"),
            fill(&h, "&tr=a"),
            fill(&h, "&tr=http://t.example/"),
            fill(&h, "&x.pe=1.2.3.4:5"),
            fill(&h, "&x.pe=[::1]:5"),
            fill(&h, &format!("&xt=urn:btih:{HEX}")),
            fill(&format!("{h}&so=0"), ",1-2"),
            fill("magnet:?xt=urn:btih:", "a"),
        ];
        for input in &inputs {
            assert!(input.len() <= Magnet::MAX_LEN);
            let start = Instant::now();
            let _ = Magnet::parse(input);
            let took = start.elapsed();
            assert!(
                took < Duration::from_millis(250),
                "{took:?} for {}...",
                &input[..40]
            );
        }
        let start = Instant::now();
        assert!(matches!(
            err(&"%".repeat(100 * Magnet::MAX_LEN)),
            MagnetError::TooLong { .. }
        ));
        assert!(start.elapsed() < Duration::from_millis(250));
    }
}
