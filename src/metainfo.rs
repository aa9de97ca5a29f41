//! Metainfo: turning the bytes of a `.torrent` file into a valid `Torrent`.
//!
//! Owns the BEP 3 metainfo schema (plus BEP 12 tracker tiers and BEP 27's
//! `private` flag), every validation rule a torrent must pass, the info hash,
//! and the relative file paths data will be written to. A `Torrent` can only
//! be built by `Torrent::from_bytes`, so holding one means holding a torrent
//! whose paths are safe to join under a download directory and whose piece
//! hashes match its size.
//!
//! Does not own the bencode grammar (`bencode`), piece/block/file arithmetic
//! (`geometry`, whose `Layout` this module builds), or the filesystem:
//! `storage` decides where the relative paths end up.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bencode::{self, Dict, Value};
use crate::geometry::Layout;
use crate::types::{InfoHash, PieceIndex};

/// Largest accepted `piece length`: 64 MiB. Every piece in flight is
/// assembled in memory before it is hashed, so the piece length multiplies
/// directly into memory use; torrent creators stop at 16-32 MiB, and anything
/// beyond 64 MiB is either broken or an attempt to exhaust our memory.
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;

/// Largest accepted total size: 2^50 bytes (1 PiB). No real torrent is that
/// large; the cap keeps all offset arithmetic far from overflow and refuses
/// torrents that would make storage preallocate absurd files.
pub const MAX_TOTAL_LENGTH: u64 = 1 << 50;

/// Why bytes are not an acceptable torrent. Field names are dotted paths into
/// the metainfo, with list indices, e.g. `info.files[3].length`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetainfoError {
    /// The bytes are not exactly one bencoded value.
    Bencode(bencode::Error),
    /// A required key is absent (its path, e.g. `info.name`).
    MissingField(String),
    /// A key holds the wrong kind of value.
    WrongType {
        /// Its path.
        field: String,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// `info.piece length` is not in `1..=MAX_PIECE_LENGTH`.
    InvalidPieceLength(i64),
    /// `info.pieces` has this many bytes, which is not a whole number of
    /// SHA-1 hashes.
    PiecesNotMultipleOf20(usize),
    /// The data needs `expected` pieces but `info.pieces` holds `found` hashes.
    PieceCountMismatch {
        /// Pieces the lengths need.
        expected: u64,
        /// Hashes present.
        found: u64,
    },
    /// A length is negative.
    NegativeLength {
        /// Its path.
        field: String,
    },
    /// A length, the total, or the piece count exceeds its limit.
    TooLarge {
        /// Its path.
        field: String,
        /// Its value.
        value: u64,
        /// rtc's limit.
        max: u64,
    },
    /// A name or path component that could escape the download directory or
    /// cannot be a file name. Rejected, never rewritten: a silently renamed
    /// file would not be where the user or other clients expect it.
    UnsafePath {
        /// The path as the torrent spells it (lossy UTF-8).
        path: String,
        /// What makes it unsafe.
        reason: &'static str,
    },
    /// Two files share one path.
    DuplicatePath(String),
    /// `file` is a file, but `other` needs it to be a directory.
    PathConflict {
        /// The file.
        file: String,
        /// The path that needs it to be a directory.
        other: String,
    },
    /// `info.files` is an empty list.
    NoFiles,
    /// `info` has both `length` (single-file) and `files` (multi-file).
    BothLengthAndFiles,
    /// The torrent's total length is 0: there is nothing to download, and a
    /// zero-piece torrent is a degenerate case for every consumer (bitfields,
    /// progress ratios), so it is rejected rather than special-cased.
    EmptyTorrent,
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetainfoError::Bencode(e) => write!(f, "metainfo: {e}"),
            MetainfoError::MissingField(field) => {
                write!(f, "metainfo: missing field '{field}'")
            }
            MetainfoError::WrongType {
                field,
                expected,
                found,
            } => write!(
                f,
                "metainfo: field '{field}' has the wrong type: expected {expected}, found {found}"
            ),
            MetainfoError::InvalidPieceLength(n) => write!(
                f,
                "metainfo: piece length {n} is outside 1..={MAX_PIECE_LENGTH}"
            ),
            MetainfoError::PiecesNotMultipleOf20(len) => write!(
                f,
                "metainfo: 'info.pieces' is {len} bytes, not a multiple of 20"
            ),
            MetainfoError::PieceCountMismatch { expected, found } => write!(
                f,
                "metainfo: 'info.pieces' holds {found} hashes but the data needs {expected} pieces"
            ),
            MetainfoError::NegativeLength { field } => {
                write!(f, "metainfo: field '{field}' is negative")
            }
            MetainfoError::TooLarge { field, value, max } => {
                write!(f, "metainfo: {field} {value} exceeds the limit of {max}")
            }
            MetainfoError::UnsafePath { path, reason } => {
                write!(
                    f,
                    "metainfo: unsafe path '{}': {reason}",
                    path.escape_debug()
                )
            }
            MetainfoError::DuplicatePath(path) => {
                write!(f, "metainfo: duplicate file path '{path}'")
            }
            MetainfoError::PathConflict { file, other } => write!(
                f,
                "metainfo: file path '{file}' is also a directory of '{other}'"
            ),
            MetainfoError::NoFiles => f.write_str("metainfo: 'info.files' is empty"),
            MetainfoError::BothLengthAndFiles => {
                f.write_str("metainfo: 'info' has both 'length' and 'files'")
            }
            MetainfoError::EmptyTorrent => {
                f.write_str("metainfo: torrent holds no data (total length 0)")
            }
        }
    }
}

// The bencode error is also part of the Display text, so that the CLI's
// one line says everything; `source()` gives it to programs as a value.
impl std::error::Error for MetainfoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetainfoError::Bencode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<bencode::Error> for MetainfoError {
    fn from(e: bencode::Error) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// One file of the torrent, in the order of the torrent's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    path: PathBuf,
    length: u64,
    offset: u64,
}

impl FileEntry {
    /// Relative path under the download directory: the torrent name for a
    /// single-file torrent, `name/dir/.../file` for a multi-file one. Every
    /// component has been checked to be a plain file name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Byte offset of this file in the torrent's concatenated data.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Entries of a `nodes` key kept at most.
const MAX_DHT_NODES: usize = 64;

/// BEP 5 `nodes`: `[["host", port], ...]`. Lenient (a bad entry is
/// skipped, never fatal) and bounded; hosts are plain printable names.
fn dht_nodes(root: &Dict<'_>) -> Vec<String> {
    let Some(list) = root.get(b"nodes").and_then(Value::as_list) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|entry| {
            let pair = entry.as_list()?;
            let host = pair.first()?.as_str()?;
            let port = u16::try_from(pair.get(1)?.as_int()?).ok()?;
            let plain = |c: char| c.is_ascii_alphanumeric() || ".-:_".contains(c);
            if port == 0 || host.is_empty() || host.len() > 253 || !host.chars().all(plain) {
                return None;
            }
            Some(if host.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            })
        })
        .take(MAX_DHT_NODES)
        .collect()
}

/// A validated torrent. Fields are private so that nothing but `from_bytes`
/// can create one.
#[derive(Clone)]
pub struct Torrent {
    info_hash: InfoHash,
    /// Shared: a torrent of 262,144 pieces carries 5 MiB of hashes, and
    /// clones (the session's, the handle's) must not copy them.
    info_bytes: Arc<[u8]>,
    name: String,
    piece_length: u32,
    /// Where `pieces` (the concatenated SHA-1s) starts in `info_bytes`:
    /// hashes are read from there, not kept twice.
    pieces_at: usize,
    files: Vec<FileEntry>,
    layout: Layout,
    multi_file: bool,
    announce: Option<String>,
    announce_list: Vec<Vec<String>>,
    private: bool,
    /// BEP 5 `nodes`: DHT nodes of a trackerless torrent, as `HOST:PORT`.
    nodes: Vec<String>,
    comment: Option<String>,
    created_by: Option<String>,
    creation_date: Option<i64>,
}

/// Short on purpose: the piece hashes and info bytes run to megabytes.
impl fmt::Debug for Torrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Torrent")
            .field("name", &self.name)
            .field("info_hash", &self.info_hash)
            .field("total_length", &self.total_length())
            .field("piece_length", &self.piece_length)
            .field("piece_count", &self.piece_count())
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

/// A file as read from `info`, before offsets are assigned.
struct RawFile {
    /// Path components below the torrent name; empty for single-file torrents.
    components: Vec<String>,
    length: u64,
}

impl Torrent {
    /// Parses and validates a `.torrent` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Torrent, MetainfoError> {
        let root = bencode::decode(bytes)?;
        let root = expect_dict(&root, "torrent")?;

        let announce = match root.get(b"announce") {
            None => None,
            Some(v) => Some(lossy(expect_bytes(v, "announce")?)),
        }
        // Trackerless torrents often carry `announce: ""`; it names no tracker.
        .filter(|url| !url.is_empty());
        let announce_list = announce_tiers(root.get(b"announce-list"));

        let info = expect_dict(required(root, b"info", "info")?, "info")?;
        // The info hash is over the bytes exactly as they arrived. Decoded
        // dictionaries always carry raw spans, so this cannot be `None`.
        let info_raw = root
            .get_raw(b"info")
            .ok_or_else(|| MetainfoError::MissingField("info".into()))?;

        let piece_length = parse_piece_length(info)?;
        let pieces = expect_bytes(required(info, b"pieces", "info.pieces")?, "info.pieces")?;
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20(pieces.len()));
        }
        let name = parse_name(info)?;
        let (multi_file, raw_files) = parse_files(info, &name)?;
        if multi_file {
            check_distinct(&name, &raw_files)?;
        }

        let mut total: u64 = 0;
        for file in &raw_files {
            total = total
                .checked_add(file.length)
                .filter(|t| *t <= MAX_TOTAL_LENGTH)
                .ok_or_else(|| MetainfoError::TooLarge {
                    field: "total length".into(),
                    value: total.saturating_add(file.length),
                    max: MAX_TOTAL_LENGTH,
                })?;
        }
        if total == 0 {
            return Err(MetainfoError::EmptyTorrent);
        }
        let expected = total.div_ceil(u64::from(piece_length));
        let found = u64::try_from(pieces.len() / 20).unwrap_or(u64::MAX);
        if expected != found {
            return Err(MetainfoError::PieceCountMismatch { expected, found });
        }

        let lengths: Vec<u64> = raw_files.iter().map(|f| f.length).collect();
        let layout =
            Layout::new(piece_length, &lengths).ok_or_else(|| MetainfoError::TooLarge {
                field: "piece count".into(),
                value: expected,
                max: u64::from(u32::MAX),
            })?;
        // `pieces` borrows from the info dict's bytes; its offset there is
        // the distance between the two (checked, so a decoder change that
        // broke the borrow would be an error, not a wrong hash).
        let pieces_at = (pieces.as_ptr() as usize)
            .checked_sub(info_raw.as_ptr() as usize)
            .filter(|&at| info_raw.get(at..at + pieces.len()) == Some(pieces))
            .ok_or_else(|| MetainfoError::MissingField("info.pieces".into()))?;

        let files = raw_files
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let mut path = PathBuf::from(&name);
                path.extend(&raw.components);
                FileEntry {
                    path,
                    length: raw.length,
                    offset: layout.file_offset(i),
                }
            })
            .collect();

        let info_hash = InfoHash(crate::hash::sha1(info_raw));
        Ok(Torrent {
            info_hash,
            info_bytes: Arc::from(info_raw),
            name,
            piece_length,
            pieces_at,
            files,
            layout,
            multi_file,
            announce,
            announce_list,
            private: info.get(b"private").and_then(Value::as_int) == Some(1),
            nodes: dht_nodes(root),
            comment: optional_text(root, b"comment"),
            created_by: optional_text(root, b"created by"),
            creation_date: root.get(b"creation date").and_then(Value::as_int),
        })
    }

    /// SHA-1 of the `info` dictionary's bytes as they appeared in the file.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// A torrent from an info dictionary fetched from peers (a magnet's
    /// metadata) and the magnet's trackers, each its own tier (BEP 12):
    /// validated exactly as a `.torrent` file is, with the info dict kept
    /// byte for byte, so its info hash is the SHA-1 of `info`.
    pub fn from_info(info: &[u8], trackers: &[String]) -> Result<Torrent, MetainfoError> {
        Torrent::from_bytes(&torrent_file(info, trackers))
    }

    /// This torrent as a `.torrent` file: its trackers (`announce` and
    /// `announce-list`) and its info dict byte for byte (so the info hash
    /// is unchanged). What `--save-torrent` writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let trackers: Vec<String> = self.trackers().into_iter().flatten().collect();
        torrent_file(&self.info_bytes, &trackers)
    }

    /// The bencoded `info` dictionary exactly as it arrived (what BEP 9
    /// serves to peers fetching metadata).
    pub fn info_bytes(&self) -> &[u8] {
        &self.info_bytes
    }

    /// The torrent's name: the file name of a single-file torrent, the top
    /// directory of a multi-file one. Always a safe single path component.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes per piece (the last piece may be shorter).
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// Pieces in the torrent.
    pub fn piece_count(&self) -> u32 {
        self.layout.piece_count()
    }

    /// Expected SHA-1 of `piece`, or `None` if out of range.
    pub(crate) fn piece_hash(&self, piece: PieceIndex) -> Option<&[u8; 20]> {
        if piece.0 >= self.piece_count() {
            return None;
        }
        let at = self.pieces_at + 20 * piece.as_usize();
        self.info_bytes.get(at..at + 20)?.try_into().ok()
    }

    /// The info dict's bytes, shared rather than copied.
    pub(crate) fn info_shared(&self) -> Arc<[u8]> {
        Arc::clone(&self.info_bytes)
    }

    /// Bytes of all files together.
    pub fn total_length(&self) -> u64 {
        self.layout.total_length()
    }

    /// Files in data order, including zero-length ones; index `i` here is file
    /// `i` of `layout()` and `FileSpan::file`.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// True when `info` used `files` (even with a single entry), so data
    /// lives under a directory named `name()`.
    pub fn is_multi_file(&self) -> bool {
        self.multi_file
    }

    /// The `announce` URL; `None` if absent or empty.
    pub fn announce(&self) -> Option<&str> {
        self.announce.as_deref()
    }

    /// Tracker tiers per BEP 12: `announce-list` when it names at least one
    /// tracker, else `[[announce]]`, else empty (trackerless).
    pub fn trackers(&self) -> Vec<Vec<String>> {
        if !self.announce_list.is_empty() {
            return self.announce_list.clone();
        }
        match &self.announce {
            Some(url) => vec![vec![url.clone()]],
            None => Vec::new(),
        }
    }

    /// BEP 27: when set, peers come only from the trackers (no DHT/PEX).
    pub fn private(&self) -> bool {
        self.private
    }

    /// BEP 5: the DHT nodes a trackerless torrent names (its `nodes` key),
    /// as `HOST:PORT` (`[v6]:PORT`); malformed entries are skipped.
    pub fn dht_nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The `comment` key, if any.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// The `created by` key, if any.
    pub fn created_by(&self) -> Option<&str> {
        self.created_by.as_deref()
    }

    /// Seconds since the Unix epoch, as the creator wrote it.
    pub fn creation_date(&self) -> Option<i64> {
        self.creation_date
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wrong_type(field: &str, expected: &'static str, found: &Value<'_>) -> MetainfoError {
    MetainfoError::WrongType {
        field: field.into(),
        expected,
        found: found.type_name(),
    }
}

fn required<'d, 'a>(
    dict: &'d Dict<'a>,
    key: &[u8],
    field: &str,
) -> Result<&'d Value<'a>, MetainfoError> {
    dict.get(key)
        .ok_or_else(|| MetainfoError::MissingField(field.into()))
}

fn expect_dict<'d, 'a>(value: &'d Value<'a>, field: &str) -> Result<&'d Dict<'a>, MetainfoError> {
    value
        .as_dict()
        .ok_or_else(|| wrong_type(field, "dictionary", value))
}

fn expect_list<'d, 'a>(
    value: &'d Value<'a>,
    field: &str,
) -> Result<&'d [Value<'a>], MetainfoError> {
    value
        .as_list()
        .ok_or_else(|| wrong_type(field, "list", value))
}

fn expect_bytes<'a>(value: &Value<'a>, field: &str) -> Result<&'a [u8], MetainfoError> {
    value
        .as_bytes()
        .ok_or_else(|| wrong_type(field, "byte string", value))
}

fn expect_int(value: &Value<'_>, field: &str) -> Result<i64, MetainfoError> {
    value
        .as_int()
        .ok_or_else(|| wrong_type(field, "integer", value))
}

/// Informational text fields are not worth rejecting a torrent over: a
/// missing, mistyped or non-UTF-8 comment is shown lossily or not at all.
fn optional_text(dict: &Dict<'_>, key: &[u8]) -> Option<String> {
    dict.get(key).and_then(Value::as_bytes).map(lossy)
}

/// BEP 12 tiers. Many torrents in the wild carry malformed lists, and a bad
/// backup tracker list should not make a torrent unusable, so anything that
/// is not a URL is skipped rather than rejected. A bare string where a tier
/// belongs is taken as a one-tracker tier.
/// `d[8:announce<first>13:announce-list<one tier per tracker>]4:info<info>e`,
/// keys in bencode's sorted order, `info` copied as it is.
fn torrent_file(info: &[u8], trackers: &[String]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(s.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(s);
    }
    let mut out = Vec::with_capacity(info.len() + 64 + trackers.len() * 64);
    out.push(b'd');
    if let Some(first) = trackers.first() {
        string(&mut out, b"announce");
        string(&mut out, first.as_bytes());
        string(&mut out, b"announce-list");
        out.push(b'l');
        for t in trackers {
            out.push(b'l');
            string(&mut out, t.as_bytes());
            out.push(b'e');
        }
        out.push(b'e');
    }
    string(&mut out, b"info");
    out.extend_from_slice(info);
    out.push(b'e');
    out
}

fn announce_tiers(value: Option<&Value<'_>>) -> Vec<Vec<String>> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(tiers) = value.as_list() else {
        log::debug!(
            "ignoring announce-list: expected list, found {}",
            value.type_name()
        );
        return Vec::new();
    };
    let url = |v: &Value<'_>| v.as_bytes().filter(|b| !b.is_empty()).map(lossy);
    tiers
        .iter()
        .map(|tier| match tier {
            Value::List(urls) => urls.iter().filter_map(url).collect(),
            other => url(other).into_iter().collect(),
        })
        .filter(|tier: &Vec<String>| !tier.is_empty())
        .collect()
}

fn parse_piece_length(info: &Dict<'_>) -> Result<u32, MetainfoError> {
    let field = "info.piece length";
    let n = expect_int(required(info, b"piece length", field)?, field)?;
    u32::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n <= MAX_PIECE_LENGTH)
        .ok_or(MetainfoError::InvalidPieceLength(n))
}

/// A non-negative length within `MAX_TOTAL_LENGTH`.
fn parse_length(value: &Value<'_>, field: &str) -> Result<u64, MetainfoError> {
    let n = expect_int(value, field)?;
    let n = u64::try_from(n).map_err(|_| MetainfoError::NegativeLength {
        field: field.into(),
    })?;
    if n > MAX_TOTAL_LENGTH {
        return Err(MetainfoError::TooLarge {
            field: field.into(),
            value: n,
            max: MAX_TOTAL_LENGTH,
        });
    }
    Ok(n)
}

/// Looks up `key.utf-8` in preference to `key`: some creators put a legacy
/// encoding in `key` and the real UTF-8 name in the `.utf-8` variant.
fn utf8_preferred<'d, 'a>(
    dict: &'d Dict<'a>,
    key: &str,
    utf8_key: &str,
    field_prefix: &str,
) -> Result<(&'d Value<'a>, String), MetainfoError> {
    if let Some(v) = dict.get(utf8_key.as_bytes()) {
        return Ok((v, format!("{field_prefix}{utf8_key}")));
    }
    let field = format!("{field_prefix}{key}");
    let v = required(dict, key.as_bytes(), &field)?;
    Ok((v, field))
}

fn parse_name(info: &Dict<'_>) -> Result<String, MetainfoError> {
    let (value, field) = utf8_preferred(info, "name", "name.utf-8", "info.")?;
    let name = lossy(expect_bytes(value, &field)?);
    check_component(&name).map_err(|reason| MetainfoError::UnsafePath {
        path: name.clone(),
        reason,
    })?;
    Ok(name)
}

/// Returns whether the torrent is multi-file, and its files in data order.
fn parse_files(info: &Dict<'_>, name: &str) -> Result<(bool, Vec<RawFile>), MetainfoError> {
    match (info.get(b"length"), info.get(b"files")) {
        (Some(_), Some(_)) => Err(MetainfoError::BothLengthAndFiles),
        (None, None) => Err(MetainfoError::MissingField(
            "info.length or info.files".into(),
        )),
        (Some(length), None) => {
            let length = parse_length(length, "info.length")?;
            let file = RawFile {
                components: Vec::new(),
                length,
            };
            Ok((false, vec![file]))
        }
        (None, Some(files)) => {
            let entries = expect_list(files, "info.files")?;
            if entries.is_empty() {
                return Err(MetainfoError::NoFiles);
            }
            let files = entries
                .iter()
                .enumerate()
                .map(|(i, entry)| parse_file(entry, i, name))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((true, files))
        }
    }
}

fn parse_file(entry: &Value<'_>, i: usize, name: &str) -> Result<RawFile, MetainfoError> {
    let prefix = format!("info.files[{i}]");
    let dict = expect_dict(entry, &prefix)?;
    let length_field = format!("{prefix}.length");
    let length = parse_length(required(dict, b"length", &length_field)?, &length_field)?;
    let (path, field) = utf8_preferred(dict, "path", "path.utf-8", &format!("{prefix}."))?;
    let components = expect_list(path, &field)?
        .iter()
        .enumerate()
        .map(|(j, c)| expect_bytes(c, &format!("{field}[{j}]")).map(lossy))
        .collect::<Result<Vec<_>, _>>()?;
    if components.is_empty() {
        return Err(MetainfoError::UnsafePath {
            path: format!("{name}/"),
            reason: "file path has no components",
        });
    }
    for component in &components {
        check_component(component).map_err(|reason| MetainfoError::UnsafePath {
            path: display_path(name, &components),
            reason,
        })?;
    }
    Ok(RawFile { components, length })
}

/// A path component must be a plain file name on every platform we might
/// write to: anything else could climb out of, or jump past, the download
/// directory once joined onto it.
pub(crate) fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty path component");
    }
    if c == "." {
        return Err("'.' path component");
    }
    if c == ".." {
        return Err("'..' path component");
    }
    if c.contains('/') {
        return Err("'/' inside a path component");
    }
    if c.contains('\\') {
        return Err("'\\' inside a path component");
    }
    if c.contains('\0') {
        return Err("NUL inside a path component");
    }
    // `C:` or `C:name` is drive-relative on Windows: joining it replaces the
    // download directory's drive.
    if let [letter, b':', ..] = c.as_bytes() {
        if letter.is_ascii_alphabetic() {
            return Err("windows drive prefix");
        }
    }
    Ok(())
}

fn display_path(name: &str, components: &[String]) -> String {
    let mut path = name.to_string();
    for c in components {
        path.push('/');
        path.push_str(c);
    }
    path
}

/// Rejects two files with one path, and a file whose path another file needs
/// as a directory (`a` and `a/b`): either would make two files share storage.
/// Sorting makes both checks adjacent-pair comparisons: if `a` is a proper
/// prefix of `b`, every path sorting between them also starts with `a`, so
/// `a`'s successor does.
fn check_distinct(name: &str, files: &[RawFile]) -> Result<(), MetainfoError> {
    let mut paths: Vec<&[String]> = files.iter().map(|f| f.components.as_slice()).collect();
    paths.sort_unstable();
    for pair in paths.windows(2) {
        if let [a, b] = pair {
            if a == b {
                return Err(MetainfoError::DuplicatePath(display_path(name, a)));
            }
            if b.starts_with(a) {
                return Err(MetainfoError::PathConflict {
                    file: display_path(name, a),
                    other: display_path(name, b),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::encode;

    const PL: u32 = 16384;

    fn hashes(count: u64) -> Vec<u8> {
        (0..count * 20).map(|i| (i % 251) as u8).collect()
    }

    fn hashes_for(total: u64) -> Vec<u8> {
        hashes(total.div_ceil(u64::from(PL)))
    }

    fn dict<'a>(entries: Vec<(&'a str, Value<'a>)>) -> Dict<'a> {
        Dict::from_entries(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes(), v))
                .collect(),
        )
    }

    fn text(s: &str) -> Value<'_> {
        Value::Bytes(s.as_bytes())
    }

    fn file<'a>(length: i64, path: &[&'a str]) -> Value<'a> {
        let path = path.iter().map(|c| text(c)).collect();
        Value::Dict(dict(vec![
            ("length", Value::Int(length)),
            ("path", Value::List(path)),
        ]))
    }

    fn single_info<'a>(name: &'a str, length: i64, pieces: &'a [u8]) -> Dict<'a> {
        dict(vec![
            ("name", text(name)),
            ("length", Value::Int(length)),
            ("piece length", Value::Int(i64::from(PL))),
            ("pieces", Value::Bytes(pieces)),
        ])
    }

    fn multi_info<'a>(name: &'a str, files: Vec<Value<'a>>, pieces: &'a [u8]) -> Dict<'a> {
        dict(vec![
            ("name", text(name)),
            ("files", Value::List(files)),
            ("piece length", Value::Int(i64::from(PL))),
            ("pieces", Value::Bytes(pieces)),
        ])
    }

    /// Encodes a torrent with `info` and the given top-level keys.
    fn torrent<'a>(info: Dict<'a>, top: Vec<(&'a str, Value<'a>)>) -> Vec<u8> {
        let mut root = dict(top);
        root.insert(b"info", Value::Dict(info));
        encode(&Value::Dict(root))
    }

    fn parse(info: Dict<'_>) -> Result<Torrent, MetainfoError> {
        Torrent::from_bytes(&torrent(info, vec![("announce", text("http://t/a"))]))
    }

    fn reject(info: Dict<'_>) -> MetainfoError {
        parse(info).expect_err("torrent should be rejected")
    }

    fn unsafe_reason(err: MetainfoError) -> &'static str {
        match err {
            MetainfoError::UnsafePath { reason, .. } => reason,
            other => panic!("expected UnsafePath, got {other:?}"),
        }
    }

    fn field(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn single_file_torrent() {
        let pieces = hashes_for(40_000);
        let bytes = torrent(
            single_info("file.bin", 40_000, &pieces),
            vec![
                ("announce", text("http://tracker/announce")),
                ("comment", Value::Bytes(b"caf\xe9")),
                ("created by", text("rtc test")),
                ("creation date", Value::Int(1_700_000_000)),
            ],
        );
        let t = Torrent::from_bytes(&bytes).expect("valid");
        assert_eq!(t.name(), "file.bin");
        assert!(!t.is_multi_file());
        assert_eq!(t.total_length(), 40_000);
        assert_eq!(t.piece_length(), PL);
        assert_eq!(t.piece_count(), 3);
        assert_eq!(
            t.piece_hash(PieceIndex(0)).map(|h| &h[..]),
            Some(&pieces[..20])
        );
        assert_eq!(
            t.piece_hash(PieceIndex(2)).map(|h| &h[..]),
            Some(&pieces[40..60])
        );
        assert_eq!(t.piece_hash(PieceIndex(3)), None);
        assert_eq!(t.files().len(), 1);
        assert_eq!(t.files()[0].path(), Path::new("file.bin"));
        assert_eq!(t.files()[0].length(), 40_000);
        assert_eq!(t.files()[0].offset(), 0);
        assert_eq!(t.layout().piece_len(PieceIndex(2)), 40_000 - 2 * PL);
        assert_eq!(t.announce(), Some("http://tracker/announce"));
        assert_eq!(t.trackers(), vec![vec![field("http://tracker/announce")]]);
        assert!(!t.private());
        assert_eq!(t.comment(), Some("caf\u{fffd}"));
        assert_eq!(t.created_by(), Some("rtc test"));
        assert_eq!(t.creation_date(), Some(1_700_000_000));
        let debug = format!("{t:?}");
        assert!(debug.contains("file.bin"), "{debug}");
    }

    #[test]
    fn info_hash_is_over_raw_bytes_even_when_unsorted() {
        // Keys out of canonical order: re-encoding would change the hash.
        let info: &[u8] =
            b"d6:pieces20:AAAAAAAAAAAAAAAAAAAA4:name1:a12:piece lengthi16384e6:lengthi5ee";
        let bytes = [&b"d8:announce5:x:y/z4:info"[..], info, b"e"].concat();
        let t = Torrent::from_bytes(&bytes).expect("valid");
        assert_eq!(t.info_hash().0, crate::hash::sha1(info));
        assert_eq!(t.info_bytes(), info);
        let reencoded = encode(&bencode::decode(info).expect("decodes"));
        assert_ne!(reencoded, info);
        assert_ne!(t.info_hash().0, crate::hash::sha1(&reencoded));
    }

    #[test]
    fn info_hash_matches_known_value() {
        // Pinned so an accidental change to hashing (e.g. re-encoding) shows.
        let info: &[u8] =
            b"d6:lengthi1e4:name1:x12:piece lengthi1e6:pieces20:BBBBBBBBBBBBBBBBBBBBe";
        let bytes = [&b"d4:info"[..], info, b"e"].concat();
        let t = Torrent::from_bytes(&bytes).expect("valid");
        // Computed independently (Python hashlib) over the `info` bytes above.
        assert_eq!(
            t.info_hash().hex(),
            "ee091cbb46fdf62542e7abc4c1ef02414e5d81ac"
        );
        assert_eq!(t.trackers(), Vec::<Vec<String>>::new());
        assert_eq!(t.announce(), None);
    }

    #[test]
    fn multi_file_paths_and_offsets() {
        let pieces = hashes_for(20_010);
        let info = multi_info(
            "album",
            vec![
                file(10, &["a.txt"]),
                file(0, &["sub", "deep", "empty.bin"]),
                file(20_000, &["sub", "c"]),
            ],
            &pieces,
        );
        let t = parse(info).expect("valid");
        assert!(t.is_multi_file());
        assert_eq!(t.name(), "album");
        assert_eq!(t.total_length(), 20_010);
        assert_eq!(t.piece_count(), 2);
        let files: Vec<(&Path, u64, u64)> = t
            .files()
            .iter()
            .map(|f| (f.path(), f.length(), f.offset()))
            .collect();
        assert_eq!(
            files,
            [
                (Path::new("album/a.txt"), 10, 0),
                (Path::new("album/sub/deep/empty.bin"), 0, 10),
                (Path::new("album/sub/c"), 20_000, 10),
            ]
        );
        assert_eq!(t.layout().file_count(), 3);
        let spans: Vec<(usize, u32)> = t
            .layout()
            .spans(PieceIndex(0))
            .map(|s| (s.file, s.len))
            .collect();
        assert_eq!(spans, [(0, 10), (2, PL - 10)]);
    }

    #[test]
    fn single_entry_files_list_is_still_multi_file() {
        let pieces = hashes_for(5);
        let t = parse(multi_info("dir", vec![file(5, &["only"])], &pieces)).expect("valid");
        assert!(t.is_multi_file());
        assert_eq!(t.files()[0].path(), Path::new("dir/only"));
    }

    #[test]
    fn utf8_variants_are_preferred_and_bad_utf8_is_lossy() {
        let pieces = hashes_for(5);
        let mut info = multi_info("legacy", vec![], &pieces);
        info.insert(b"name.utf-8", text("ünïcode"));
        let mut entry = dict(vec![
            ("length", Value::Int(5)),
            ("path", Value::List(vec![text("legacy")])),
        ]);
        entry.insert(b"path.utf-8", Value::List(vec![Value::Bytes(b"f\xffile")]));
        info.insert(b"files", Value::List(vec![Value::Dict(entry)]));
        let t = parse(info).expect("valid");
        assert_eq!(t.name(), "ünïcode");
        assert_eq!(t.files()[0].path(), Path::new("ünïcode/f\u{fffd}ile"));

        let mut info = single_info("x", 5, &pieces);
        info.insert(b"name", Value::Bytes(b"caf\xe9.txt"));
        let t = parse(info).expect("valid");
        assert_eq!(t.name(), "caf\u{fffd}.txt");
    }

    #[test]
    fn announce_list_tiers() {
        let pieces = hashes_for(5);
        let tiers = Value::List(vec![
            Value::List(vec![text("http://a"), text("http://b")]),
            Value::List(vec![]),
            Value::List(vec![Value::Int(1), text(""), text("udp://c")]),
            Value::Int(7),
            text("http://bare"),
        ]);
        let bytes = torrent(
            single_info("x", 5, &pieces),
            vec![("announce", text("http://main")), ("announce-list", tiers)],
        );
        let t = Torrent::from_bytes(&bytes).expect("valid");
        assert_eq!(
            t.trackers(),
            vec![
                vec![field("http://a"), field("http://b")],
                vec![field("udp://c")],
                vec![field("http://bare")],
            ]
        );

        // An announce-list with no usable tracker falls back to `announce`.
        let bytes = torrent(
            single_info("x", 5, &pieces),
            vec![
                ("announce", text("http://main")),
                ("announce-list", Value::List(vec![Value::List(vec![])])),
            ],
        );
        let t = Torrent::from_bytes(&bytes).expect("valid");
        assert_eq!(t.trackers(), vec![vec![field("http://main")]]);

        // Wrong type: ignored. Empty announce: no tracker.
        let bytes = torrent(
            single_info("x", 5, &pieces),
            vec![("announce", text("")), ("announce-list", Value::Int(3))],
        );
        let t = Torrent::from_bytes(&bytes).expect("valid");
        assert_eq!(t.announce(), None);
        assert!(t.trackers().is_empty());
    }

    #[test]
    fn private_flag() {
        let pieces = hashes_for(5);
        for (value, expected) in [
            (Value::Int(1), true),
            (Value::Int(0), false),
            (text("1"), false),
        ] {
            let mut info = single_info("x", 5, &pieces);
            info.insert(b"private", value);
            assert_eq!(parse(info).expect("valid").private(), expected);
        }
    }

    #[test]
    fn rejects_malformed_bencode() {
        let pieces = hashes_for(5);
        let bytes = torrent(single_info("x", 5, &pieces), vec![]);
        let truncated = &bytes[..bytes.len() - 1];
        assert_eq!(
            Torrent::from_bytes(truncated).expect_err("truncated"),
            MetainfoError::Bencode(bencode::Error::UnexpectedEof {
                at: truncated.len()
            })
        );
        let mut trailing = bytes.clone();
        trailing.push(b'x');
        assert!(matches!(
            Torrent::from_bytes(&trailing),
            Err(MetainfoError::Bencode(bencode::Error::TrailingBytes { .. }))
        ));
        assert!(matches!(
            Torrent::from_bytes(b""),
            Err(MetainfoError::Bencode(_))
        ));
    }

    #[test]
    fn rejects_wrong_shapes() {
        assert_eq!(
            Torrent::from_bytes(b"le").expect_err("list"),
            MetainfoError::WrongType {
                field: field("torrent"),
                expected: "dictionary",
                found: "list"
            }
        );
        assert_eq!(
            Torrent::from_bytes(b"d8:announce1:xe").expect_err("no info"),
            MetainfoError::MissingField(field("info"))
        );
        assert_eq!(
            Torrent::from_bytes(b"d4:infoi1ee").expect_err("info int"),
            MetainfoError::WrongType {
                field: field("info"),
                expected: "dictionary",
                found: "integer"
            }
        );
        let pieces = hashes_for(5);
        let bytes = torrent(
            single_info("x", 5, &pieces),
            vec![("announce", Value::Int(1))],
        );
        assert_eq!(
            Torrent::from_bytes(&bytes).expect_err("announce int"),
            MetainfoError::WrongType {
                field: field("announce"),
                expected: "byte string",
                found: "integer"
            }
        );

        let mut info = single_info("x", 5, &pieces);
        info.insert(b"piece length", text("16384"));
        assert_eq!(
            reject(info),
            MetainfoError::WrongType {
                field: field("info.piece length"),
                expected: "integer",
                found: "byte string"
            }
        );
        let mut info = single_info("x", 5, &pieces);
        info.insert(b"pieces", Value::List(vec![]));
        assert!(matches!(reject(info), MetainfoError::WrongType { .. }));
        let mut info = single_info("x", 5, &pieces);
        info.insert(b"length", text("5"));
        assert!(matches!(reject(info), MetainfoError::WrongType { .. }));
        let mut info = single_info("x", 5, &pieces);
        info.insert(b"name", Value::Int(5));
        assert!(matches!(reject(info), MetainfoError::WrongType { .. }));
        let info = multi_info("d", vec![text("not a dict")], &pieces);
        assert_eq!(
            reject(info),
            MetainfoError::WrongType {
                field: field("info.files[0]"),
                expected: "dictionary",
                found: "byte string"
            }
        );
        let bad_path = Value::Dict(dict(vec![
            ("length", Value::Int(5)),
            ("path", Value::List(vec![text("ok"), Value::Int(3)])),
        ]));
        assert_eq!(
            reject(multi_info("d", vec![bad_path], &pieces)),
            MetainfoError::WrongType {
                field: field("info.files[0].path[1]"),
                expected: "byte string",
                found: "integer"
            }
        );
    }

    #[test]
    fn rejects_missing_fields() {
        let pieces = hashes_for(5);
        for (key, name) in [
            ("piece length", "info.piece length"),
            ("pieces", "info.pieces"),
            ("name", "info.name"),
        ] {
            let mut info = single_info("x", 5, &pieces);
            info.remove(key.as_bytes());
            assert_eq!(reject(info), MetainfoError::MissingField(field(name)));
        }
        let mut info = single_info("x", 5, &pieces);
        info.remove(b"length");
        assert_eq!(
            reject(info),
            MetainfoError::MissingField(field("info.length or info.files"))
        );
        let no_length = Value::Dict(dict(vec![("path", Value::List(vec![text("a")]))]));
        assert_eq!(
            reject(multi_info("d", vec![no_length], &pieces)),
            MetainfoError::MissingField(field("info.files[0].length"))
        );
        let no_path = Value::Dict(dict(vec![("length", Value::Int(5))]));
        assert_eq!(
            reject(multi_info("d", vec![file(1, &["a"]), no_path], &pieces)),
            MetainfoError::MissingField(field("info.files[1].path"))
        );
    }

    #[test]
    fn rejects_bad_piece_lengths() {
        let pieces = hashes_for(5);
        for n in [0, -1, i64::from(MAX_PIECE_LENGTH) + 1, i64::MAX] {
            let mut info = single_info("x", 5, &pieces);
            info.insert(b"piece length", Value::Int(n));
            assert_eq!(reject(info), MetainfoError::InvalidPieceLength(n));
        }
        let mut info = single_info("x", 5, &pieces);
        info.insert(b"piece length", Value::Int(i64::from(MAX_PIECE_LENGTH)));
        assert_eq!(
            parse(info).expect("64 MiB is allowed").piece_length(),
            MAX_PIECE_LENGTH
        );
    }

    #[test]
    fn rejects_bad_piece_hashes() {
        for len in [19, 21, 41] {
            let pieces = vec![0u8; len];
            assert_eq!(
                reject(single_info("x", 5, &pieces)),
                MetainfoError::PiecesNotMultipleOf20(len)
            );
        }
        let two = hashes(2);
        assert_eq!(
            reject(single_info("x", 40_000, &two)),
            MetainfoError::PieceCountMismatch {
                expected: 3,
                found: 2
            }
        );
        let four = hashes(4);
        assert_eq!(
            reject(single_info("x", 40_000, &four)),
            MetainfoError::PieceCountMismatch {
                expected: 3,
                found: 4
            }
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        let pieces = hashes_for(5);
        assert_eq!(
            reject(single_info("x", -5, &pieces)),
            MetainfoError::NegativeLength {
                field: field("info.length")
            }
        );
        assert_eq!(
            reject(multi_info(
                "d",
                vec![file(5, &["a"]), file(-1, &["b"])],
                &pieces
            )),
            MetainfoError::NegativeLength {
                field: field("info.files[1].length")
            }
        );
        let too_big = i64::try_from(MAX_TOTAL_LENGTH).expect("fits") + 1;
        assert!(matches!(
            reject(single_info("x", too_big, &pieces)),
            MetainfoError::TooLarge { field, .. } if field == "info.length"
        ));
        let half = i64::try_from(MAX_TOTAL_LENGTH / 2).expect("fits");
        assert!(matches!(
            reject(multi_info("d", vec![file(half, &["a"]), file(half + 1, &["b"])], &pieces)),
            MetainfoError::TooLarge { field, .. } if field == "total length"
        ));
        let empty: Vec<u8> = Vec::new();
        assert_eq!(
            reject(single_info("x", 0, &empty)),
            MetainfoError::EmptyTorrent
        );
        assert_eq!(
            reject(multi_info(
                "d",
                vec![file(0, &["a"]), file(0, &["b"])],
                &empty
            )),
            MetainfoError::EmptyTorrent
        );
    }

    #[test]
    fn rejects_length_and_files_together_or_no_files() {
        let pieces = hashes_for(5);
        let mut info = single_info("x", 5, &pieces);
        info.insert(b"files", Value::List(vec![file(5, &["a"])]));
        assert_eq!(reject(info), MetainfoError::BothLengthAndFiles);
        assert_eq!(
            reject(multi_info("d", vec![], &pieces)),
            MetainfoError::NoFiles
        );
    }

    #[test]
    fn rejects_unsafe_names() {
        let pieces = hashes_for(5);
        let cases: &[(&str, &str)] = &[
            ("..", "'..' path component"),
            (".", "'.' path component"),
            ("", "empty path component"),
            ("/etc/passwd", "'/' inside a path component"),
            ("a/b", "'/' inside a path component"),
            ("a\\b", "'\\' inside a path component"),
            ("nul\0byte", "NUL inside a path component"),
            ("C:", "windows drive prefix"),
            ("c:evil", "windows drive prefix"),
        ];
        for &(name, reason) in cases {
            assert_eq!(
                unsafe_reason(reject(single_info(name, 5, &pieces))),
                reason,
                "{name:?}"
            );
            assert_eq!(
                unsafe_reason(reject(multi_info(name, vec![file(5, &["f"])], &pieces))),
                reason,
                "{name:?}"
            );
        }
        // A colon elsewhere is not a drive prefix.
        assert!(parse(single_info("1:2", 5, &pieces)).is_ok());
    }

    #[test]
    fn rejects_unsafe_file_paths() {
        let pieces = hashes_for(5);
        let cases: &[(&[&str], &str)] = &[
            (&["..", "etc", "passwd"], "'..' path component"),
            (&["a", ".."], "'..' path component"),
            (&["a", ".", "b"], "'.' path component"),
            (&["", "etc", "passwd"], "empty path component"),
            (&["a", ""], "empty path component"),
            (&["/etc/passwd"], "'/' inside a path component"),
            (&["a/../../b"], "'/' inside a path component"),
            (&["a\\b"], "'\\' inside a path component"),
            (&["a\0"], "NUL inside a path component"),
            (&["C:", "x"], "windows drive prefix"),
            (&[], "file path has no components"),
        ];
        for &(path, reason) in cases {
            let err = reject(multi_info("d", vec![file(5, path)], &pieces));
            assert_eq!(unsafe_reason(err), reason, "{path:?}");
        }
        assert_eq!(
            reject(multi_info("d", vec![file(5, &["ok", ".."])], &pieces)),
            MetainfoError::UnsafePath {
                path: field("d/ok/.."),
                reason: "'..' path component"
            }
        );
    }

    #[test]
    fn rejects_duplicate_and_conflicting_paths() {
        let pieces = hashes_for(6);
        let files = vec![file(2, &["x", "a"]), file(2, &["y"]), file(2, &["x", "a"])];
        assert_eq!(
            reject(multi_info("d", files, &pieces)),
            MetainfoError::DuplicatePath(field("d/x/a"))
        );
        let files = vec![file(2, &["a", "b"]), file(2, &["a"]), file(2, &["a0"])];
        assert_eq!(
            reject(multi_info("d", files, &pieces)),
            MetainfoError::PathConflict {
                file: field("d/a"),
                other: field("d/a/b")
            }
        );
        // A sibling sorting between `a` and `a/b/c` must not hide the conflict.
        let files = vec![
            file(2, &["a", "b", "c"]),
            file(2, &["a"]),
            file(1, &["a", "a"]),
            file(1, &["b"]),
        ];
        assert!(matches!(
            reject(multi_info("d", files, &pieces)),
            MetainfoError::PathConflict { .. }
        ));
        // Case differs: distinct paths, accepted.
        let files = vec![file(3, &["A"]), file(3, &["a"])];
        assert!(parse(multi_info("d", files, &pieces)).is_ok());
        // Lossy conversion can merge two raw names; that is a duplicate too.
        let raw = |b: &'static [u8]| {
            Value::Dict(dict(vec![
                ("length", Value::Int(3)),
                ("path", Value::List(vec![Value::Bytes(b)])),
            ]))
        };
        assert_eq!(
            reject(multi_info("d", vec![raw(b"\xff"), raw(b"\xfe")], &pieces)),
            MetainfoError::DuplicatePath(field("d/\u{fffd}"))
        );
    }

    #[test]
    fn display_gives_context() {
        assert_eq!(
            MetainfoError::MissingField(field("info.piece length")).to_string(),
            "metainfo: missing field 'info.piece length'"
        );
        assert_eq!(
            MetainfoError::Bencode(bencode::Error::UnexpectedEof { at: 12 }).to_string(),
            "metainfo: bencode: unexpected end of input at byte 12"
        );
        assert_eq!(
            MetainfoError::WrongType {
                field: field("info.piece length"),
                expected: "integer",
                found: "byte string"
            }
            .to_string(),
            "metainfo: field 'info.piece length' has the wrong type: expected integer, found byte string"
        );
        assert_eq!(
            MetainfoError::UnsafePath {
                path: field("d/.."),
                reason: "'..' path component"
            }
            .to_string(),
            "metainfo: unsafe path 'd/..': '..' path component"
        );
    }

    #[test]
    fn from_info_keeps_the_info_dict_and_its_hash() {
        let info = b"d6:lengthi100e4:name1:a12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let trackers = vec!["http://t/a".to_string(), "udp://u:1".to_string()];
        let t = Torrent::from_info(info, &trackers).unwrap();
        assert_eq!(t.info_bytes(), &info[..]);
        assert_eq!(t.info_hash().0, crate::hash::sha1(&info[..]));
        assert_eq!(
            t.trackers(),
            vec![
                vec!["http://t/a".to_string()],
                vec!["udp://u:1".to_string()]
            ]
        );
        // And back: the file loads with the same hash and trackers.
        let again = Torrent::from_bytes(&t.to_bytes()).unwrap();
        assert_eq!(again.info_hash(), t.info_hash());
        assert_eq!(again.trackers(), t.trackers());
        // Without trackers: info only.
        let bare = Torrent::from_info(info, &[]).unwrap();
        assert!(bare.trackers().is_empty());
        // A hostile info dict is refused as from a file.
        assert!(Torrent::from_info(b"d4:name2:..e", &[]).is_err());
    }
}
