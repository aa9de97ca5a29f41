//! `--json`: one JSON object per line on stdout (NDJSON), the schema in
//! md/json.md. Owns the line format (every object carries `"v": 1` and
//! `"event"`), how torrents, files and paths are written, and the rule
//! that stdout holds nothing else. Does not decide when events happen: the
//! commands in `cli` do.

use crate::{InfoHash, PeerSources, Progress, Summary, Torrent};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The schema's version, in every line.
pub(super) const VERSION: u64 = 1;

static ON: OnceLock<bool> = OnceLock::new();
/// Set when stdout's reader went away: nothing more is written, and the
/// download goes on to its own exit code.
static GONE: AtomicBool = AtomicBool::new(false);
/// Why writing failed, when it was not the reader going away (a full
/// disk): `cli::main` turns it into exit code 5 once the work is done.
static FAILED: OnceLock<String> = OnceLock::new();

/// The torrent a single-torrent command works on, once it is read: its
/// `error` line carries the info hash like every other line.
static SUBJECT: OnceLock<InfoHash> = OnceLock::new();

/// Sets the torrent of this run (see `SUBJECT`).
pub(super) fn set_subject(ih: InfoHash) {
    let _ = SUBJECT.set(ih);
}

/// The `error` line: the exit code, the message, and the info hash when
/// one torrent's command failed after it was read.
pub(super) fn error(code: u8, message: &str) {
    let mut line = json!({ "code": code, "message": message });
    if let Some(ih) = SUBJECT.get() {
        line["info_hash"] = ih.to_string().into();
    }
    emit("error", line);
}

/// The stdout write error that was not a closed pipe, if one happened.
pub(super) fn write_error() -> Option<&'static str> {
    FAILED.get().map(String::as_str)
}

/// Records a failed write to stdout (see [`write_error`]).
pub(super) fn write_failed(e: &std::io::Error) {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        let _ = FAILED.set(e.to_string());
    }
}

/// Turns JSON output on for the rest of the process (set once, by `run`).
pub(super) fn enable(on: bool) {
    let _ = ON.set(on);
}

/// Whether `--json` was given.
pub(super) fn on() -> bool {
    ON.get().copied().unwrap_or(false)
}

/// Writes one event line; `fields` must be an object (or null). When the
/// reader has gone away (`| head -3`), lines are dropped from then on; the
/// download itself goes on, and its exit code still tells the outcome.
pub(super) fn emit(event: &str, fields: Value) {
    write_line(event, fields, None);
}

/// [`emit`] of a line that also has a `files` array (see [`files`]),
/// written item by item: a torrent of 100,000 files never becomes one
/// tree of values (several hundred bytes a file) before it is text.
pub(super) fn emit_with_files(event: &str, fields: Value, mut files: impl Iterator<Item = Value>) {
    write_line(event, fields, Some(&mut files));
}

fn write_line(event: &str, fields: Value, files: Option<&mut dyn Iterator<Item = Value>>) {
    if GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut line = Map::new();
    line.insert("v".into(), VERSION.into());
    line.insert("event".into(), event.into());
    if let Value::Object(rest) = fields {
        line.extend(rest);
    }
    let mut text = Value::Object(line).to_string();
    if let Some(files) = files {
        // The object is never empty ("v" and "event"): its closing brace
        // comes off, the array and the brace go on.
        text.pop();
        text.push_str(",\"files\":[");
        for (n, file) in files.enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(&file.to_string());
        }
        text.push_str("]}");
    }
    text.push('\n');
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        write_failed(&e);
        GONE.store(true, Ordering::Relaxed);
    }
}

/// A path on this machine: a string when it is UTF-8; otherwise an
/// object `{"lossy": ..., "hex": ...}` holding the raw bytes in hex, so
/// nothing is lost (md/json.md, "Paths").
pub(super) fn path(p: &Path) -> Value {
    match p.to_str() {
        Some(s) => s.into(),
        None => {
            use std::os::unix::ffi::OsStrExt;
            let hex: String = p
                .as_os_str()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            json!({ "lossy": p.to_string_lossy(), "hex": hex })
        }
    }
}

/// The files of `t`, with their index (what `--files` takes), path
/// inside the torrent and length, for [`emit_with_files`].
pub(super) fn files(t: &Torrent) -> impl Iterator<Item = Value> + '_ {
    t.files()
        .iter()
        .enumerate()
        .map(|(i, f)| json!({ "index": i, "path": path(f.path()), "length": f.length() }))
}

/// What `start` and `rtc info` say about a torrent, but its files (see
/// [`files`]).
pub(super) fn torrent(t: &Torrent) -> Value {
    json!({
        "info_hash": t.info_hash().to_string(),
        "name": t.name(),
        "size": t.total_length(),
        "piece_length": t.piece_length(),
        "pieces": t.piece_count(),
        "private": t.private(),
        "trackers": t.trackers(),
        "comment": t.comment(),
    })
}

/// A `progress` line's fields.
pub(super) fn progress(ih: InfoHash, p: &Progress) -> Value {
    let left = p.wanted_bytes.saturating_sub(p.wanted_verified_bytes);
    let eta = if p.total_bytes == 0 {
        Value::Null
    } else if left == 0 {
        0.into()
    } else {
        left.checked_div(p.rate).map_or(Value::Null, Value::from)
    };
    json!({
        "info_hash": ih.to_string(),
        "verified_bytes": p.verified_bytes,
        "total_bytes": p.total_bytes,
        "wanted_bytes": p.wanted_bytes,
        "wanted_verified_bytes": p.wanted_verified_bytes,
        "pieces_done": p.pieces_done,
        "pieces_total": p.pieces_total,
        "download_rate": p.rate,
        "uploaded_bytes": p.uploaded_bytes,
        "upload_rate": p.upload_rate,
        "peers": p.peers,
        "eta_secs": eta,
        "elapsed_secs": p.elapsed.as_secs_f64(),
        "metadata_bytes": p.metadata_bytes,
    })
}

fn sources(s: &PeerSources) -> Value {
    json!({
        "tracker": s.tracker,
        "dht": s.dht,
        "pex": s.pex,
        "magnet": s.magnet,
        "manual": s.manual,
        "incoming": s.incoming,
    })
}

/// The fields of `done` (not seeding) and `stopped` (after seeding).
pub(super) fn summary(ih: InfoHash, s: &Summary) -> Value {
    json!({
        "info_hash": ih.to_string(),
        "total_bytes": s.total_bytes,
        "downloaded_bytes": s.downloaded_bytes,
        "uploaded_bytes": s.uploaded_bytes,
        "elapsed_secs": s.elapsed.as_secs_f64(),
        "peer_sources": sources(&s.peer_sources),
    })
}

/// Runs of consecutive piece indices for which `f` holds, as `[first,
/// last]` pairs (inclusive): a torrent of a million pieces missing a few
/// ranges is a short line.
pub(super) fn ranges(n: u32, f: impl Fn(u32) -> bool) -> Value {
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..n {
        match (f(i), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(json!([s, i - 1]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(json!([s, n - 1]));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_runs() {
        let set = [1u32, 2, 3, 7, 9, 10];
        assert_eq!(
            ranges(11, |i| set.contains(&i)),
            json!([[1, 3], [7, 7], [9, 10]])
        );
        assert_eq!(ranges(3, |_| true), json!([[0, 2]]));
        assert_eq!(ranges(3, |_| false), json!([]));
        assert_eq!(ranges(0, |_| true), json!([]));
    }

    #[test]
    fn paths_that_are_not_utf8_keep_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(path(Path::new("a/b.bin")), json!("a/b.bin"));
        let raw = Path::new(std::ffi::OsStr::from_bytes(b"x\xffy"));
        assert_eq!(path(raw), json!({ "lossy": "x\u{fffd}y", "hex": "78ff79" }));
    }
}
