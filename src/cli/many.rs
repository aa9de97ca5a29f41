//! `rtc A.torrent B.torrent MAGNET...` and `rtc -i LIST`: several
//! downloads at once through one `Session` (one port, one peer budget, one
//! DHT node, one rate limit). Owns the loop over them and the rule for the
//! exit code: each failure is named on stderr (and, under `--json`, is an
//! `error` line with the torrent's `source`), and rtc exits with the worst
//! (highest) code among them after every other download has ended.

use super::{events, exit, json, load_source, session_failure, Failure};
use crate::session::{AddOptions, Download, SeedUntil, Session, SessionOptions};
use crate::text::Escaped;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Lines of a `-i` list, and its size, beyond which it is refused.
const MAX_LIST_LINES: usize = 10_000;
const MAX_LIST_BYTES: u64 = 16 * 1024 * 1024;

/// Reads `-i FILE` (`-` for stdin): one torrent path or magnet link per
/// line; blank lines and lines starting with `#` are skipped.
pub(super) fn read_list(file: &std::ffi::OsStr) -> Result<Vec<std::ffi::OsString>, Failure> {
    let (name, read) = super::read_bounded(file, MAX_LIST_BYTES);
    let bytes = read.map_err(|e| Failure::new(exit::IO, format!("cannot read {}: {e}", name)))?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(Failure::new(
            exit::USAGE,
            format!("{}: list larger than 16 MiB", name),
        ));
    }
    // Bytes, not text: a path that is not UTF-8 is still a path.
    use std::os::unix::ffi::OsStrExt;
    let lines: Vec<std::ffi::OsString> = bytes
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(|l| std::ffi::OsStr::from_bytes(l).to_os_string())
        .collect();
    if lines.len() > MAX_LIST_LINES {
        return Err(Failure::new(
            exit::USAGE,
            format!("{}: more than {MAX_LIST_LINES} torrents", name),
        ));
    }
    if lines.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            format!("{}: no torrents listed", name),
        ));
    }
    Ok(lines)
}

/// One download of the run.
struct Running {
    input: String,
    dl: Download,
    lines: Option<events::Lines>,
}

/// Reports one input's failure: on stderr (named) and as a JSON `error`
/// line; returns its code. `info_hash` only for a download that started
/// (its `start` line came first), so each torrent's lines still end with
/// `done`, `stopped` or `error`; an entry refused before it started (a
/// duplicate, say) is named by its `source` alone.
fn report(input: &str, info_hash: Option<crate::InfoHash>, f: &Failure, named: bool) -> u8 {
    if named {
        eprintln!("rtc: {}", f.message);
    } else {
        eprintln!("rtc: {}: {}", Escaped(input), f.message);
    }
    if json::on() {
        let mut line = serde_json::json!({
            "source": input,
            "code": f.code,
            "message": f.message,
        });
        if let Some(h) = info_hash {
            line["info_hash"] = h.to_string().into();
        }
        json::emit("error", line);
    }
    f.code
}

/// Downloads every input together; `Err` carries the worst exit code.
pub(super) fn download_many(
    inputs: Vec<std::ffi::OsString>,
    opts: AddOptions,
    session_opts: SessionOptions,
    quiet: bool,
) -> Result<(), Failure> {
    let seeding = opts.seed != SeedUntil::Never;
    let total = inputs.len();
    let mut worst = 0u8;
    let mut failed = 0usize;
    let session = Session::new(session_opts).map_err(session_failure)?;
    let mut running = Vec::new();
    for raw in inputs {
        let input = crate::text::escaped(&raw.to_string_lossy());
        let source = match load_source(&raw) {
            Ok(s) => s,
            Err(f) => {
                // Reading or parsing failures name the input already.
                worst = worst.max(report(&input, None, &f, true));
                failed += 1;
                continue;
            }
        };
        let known = match events::known(&source, &opts.files) {
            Ok(k) => k,
            Err(e) => {
                let f = Failure::new(super::exit::USAGE, e.to_string());
                worst = worst.max(report(&input, Some(source.info_hash()), &f, false));
                failed += 1;
                continue;
            }
        };
        match session.add(source, opts.clone()) {
            Ok(dl) => {
                let lines = json::on().then(|| events::Lines::new(&dl, known.as_ref(), seeding));
                running.push(Running { input, dl, lines });
            }
            Err(e) => {
                worst = worst.max(report(&input, None, &session_failure(e), false));
                failed += 1;
            }
        }
    }
    let cancels: Vec<_> = running.iter().map(|r| r.dl.cancel_handle()).collect();
    if let Err(e) = ctrlc::set_handler(move || cancels.iter().for_each(|c| c.cancel())) {
        log::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let show = !quiet && std::io::stderr().is_terminal();
    while running.iter().any(|r| !r.dl.is_finished()) {
        // One download's events wake the loop; the others are read on each
        // turn (at least every 100 ms).
        let mut woke = false;
        for r in &mut running {
            let first = if woke || r.dl.is_finished() {
                r.dl.events().try_recv().ok()
            } else {
                woke = true;
                r.dl.events().recv_timeout(Duration::from_millis(100)).ok()
            };
            match r.lines.as_mut() {
                Some(l) => l.pump(&r.dl, first),
                None => while r.dl.events().try_recv().is_ok() {},
            }
        }
        if show {
            draw(&running);
        }
    }
    if show {
        eprint!("\r\x1b[2K");
    }
    for mut r in running {
        let ih = r.dl.info_hash();
        let name =
            r.dl.torrent()
                .map_or_else(|| r.input.clone(), |t| crate::text::escaped(t.name()));
        let last = r.dl.file_progress();
        let end = r.dl.progress();
        let verified = super::verified_text(&end);
        match r.dl.wait() {
            Ok(summary) => {
                if let Some(l) = r.lines.as_mut() {
                    l.finish(ih, &last, &end, &summary);
                }
                if !quiet {
                    eprintln!(
                        "rtc: {name}: {verified} verified; {} downloaded, {} uploaded in {:.1}s",
                        super::human(summary.downloaded_bytes),
                        super::human(summary.uploaded_bytes),
                        summary.elapsed.as_secs_f64(),
                    );
                }
            }
            Err(e) => {
                worst = worst.max(report(&r.input, Some(ih), &session_failure(e), false));
                failed += 1;
            }
        }
    }
    session.shutdown();
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::new(
            worst,
            format!("{failed} of {total} torrents failed"),
        ))
    }
}

/// One status line for all downloads on a terminal.
fn draw(running: &[Running]) {
    let (mut done, mut total, mut rate, mut peers) = (0u64, 0u64, 0u64, 0u32);
    let mut finished = 0;
    for r in running {
        let p = r.dl.progress();
        done += p.wanted_verified_bytes;
        total += p.wanted_bytes;
        rate += p.rate;
        peers += p.peers;
        finished += usize::from(p.total_bytes > 0 && p.wanted_verified_bytes == p.wanted_bytes);
    }
    let pct = if total == 0 {
        0.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    eprint!(
        "\r\x1b[2K{} torrents ({finished} complete)  {pct:5.1}%  down {}/s  {peers} peers",
        running.len(),
        super::human(rate),
    );
    let _ = std::io::stderr().flush();
}
