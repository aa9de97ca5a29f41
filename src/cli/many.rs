//! `rtc A.torrent B.torrent MAGNET...` and `rtc -i LIST`: several
//! downloads at once through one `Session` (one port, one peer budget, one
//! DHT node, one rate limit). Owns the loop over them and the rule for the
//! exit code: each failure is named on stderr (and, under `--json`, is an
//! `error` line with the torrent's `source`), and rtc exits with the worst
//! (highest) code among them after every other download has ended.

use super::{events, exit, json, load_source, session_failure, Failure};
use crate::session::{AddOptions, Download, SeedUntil, Session, SessionOptions};
use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After Ctrl-C or SIGTERM, how long the handler waits for the loop to
/// take over before ending the process itself (the loop is blocked
/// reading an input, say a FIFO nobody writes).
const STOP_GRACE: Duration = Duration::from_secs(2);

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
    input: OsString,
    dl: Download,
    lines: Option<events::Lines>,
}

/// Reports one input's failure: on stderr (named by the input unless the
/// message does already) and as a JSON `error` line; returns its code.
/// `source` is the argument or list line as given (a path, losslessly:
/// md/json.md, "Paths"). `info_hash` only for a download that started
/// (its `start` line came first), so each torrent's lines still end with
/// `done`, `stopped` or `error`; an entry refused before it started (a
/// duplicate, a bad selection) is named by its `source` alone.
fn report(input: &OsStr, info_hash: Option<crate::InfoHash>, f: &Failure) -> u8 {
    let shown = crate::text::escaped(&input.to_string_lossy());
    if f.message.contains(&shown) {
        eprintln!("rtc: {}", f.message);
    } else {
        eprintln!("rtc: {}: {}", shown, f.message);
    }
    if json::on() {
        let mut line = serde_json::json!({
            "source": json::path(std::path::Path::new(input)),
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
    let stop = Stop::install();
    let mut running: Vec<Running> = Vec::new();
    // Every info hash of the run, not only the running ones: a torrent
    // listed twice is refused however soon its first copy finished.
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        if stop.asked() {
            break;
        }
        let source = match load_source(&input) {
            Ok(s) => s,
            Err(f) => {
                worst = worst.max(report(&input, None, &f));
                failed += 1;
                continue;
            }
        };
        let known = match events::known(&source, &opts.files) {
            Ok(k) => k,
            Err(e) => {
                let f = Failure::new(super::exit::USAGE, e.to_string());
                worst = worst.max(report(&input, None, &f));
                failed += 1;
                continue;
            }
        };
        if !seen.insert(source.info_hash()) {
            let f = session_failure(crate::Error::AlreadyAdded(source.info_hash()));
            worst = worst.max(report(&input, None, &f));
            failed += 1;
            continue;
        }
        match session.add(source, opts.clone()) {
            Ok(dl) => {
                let lines = json::on().then(|| events::Lines::new(&dl, known.as_ref(), seeding));
                running.push(Running { input, dl, lines });
            }
            Err(e) => {
                worst = worst.max(report(&input, None, &session_failure(e)));
                failed += 1;
            }
        }
    }
    // From here the loop looks at `stop` at least every 100 ms.
    stop.take_over();
    let show = !quiet && std::io::stderr().is_terminal();
    let mut cancelled = false;
    while running.iter().any(|r| !r.dl.is_finished()) {
        if stop.asked() && !cancelled {
            cancelled = true;
            running.iter().for_each(|r| r.dl.cancel_handle().cancel());
        }
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
        let name = r.dl.torrent().map_or_else(
            || crate::text::escaped(&r.input.to_string_lossy()),
            |t| crate::text::escaped(t.name()),
        );
        let last = r.dl.file_progress();
        let end = r.dl.progress();
        let verified = super::verified_text(&end);
        if let Some(l) = r.lines.as_mut() {
            // Events of a download that ended before the loop read them.
            l.drain(&r.dl);
        }
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
                worst = worst.max(report(&r.input, Some(ih), &session_failure(e)));
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

/// Ctrl-C and SIGTERM for a run of several torrents: the handler only
/// raises a flag, which the loop reads between inputs and on every turn
/// (and then cancels every download, so each ends cleanly with exit 130).
/// While inputs are still being read, one read may block (a FIFO nobody
/// writes): if the loop has not taken over `STOP_GRACE` after the signal,
/// the handler ends the process itself, with the `error` line and exit
/// 130; downloads started by then stop as a kill would stop them, their
/// verified data kept for the next run.
struct Stop {
    asked: Arc<AtomicBool>,
    loop_running: Arc<AtomicBool>,
}

impl Stop {
    fn install() -> Stop {
        let stop = Stop {
            asked: Arc::new(AtomicBool::new(false)),
            loop_running: Arc::new(AtomicBool::new(false)),
        };
        let (asked, loop_running) = (Arc::clone(&stop.asked), Arc::clone(&stop.loop_running));
        let handler = move || {
            asked.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + STOP_GRACE;
            while !loop_running.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !loop_running.load(Ordering::SeqCst) {
                let f = session_failure(crate::Error::Cancelled);
                eprintln!("rtc: {}", f.message);
                if json::on() {
                    json::error(f.code, &f.message);
                }
                std::process::exit(i32::from(f.code));
            }
        };
        if let Err(e) = ctrlc::set_handler(handler) {
            log::warn!("cannot install the Ctrl-C handler: {e}");
        }
        stop
    }

    fn asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// The download loop runs: it will see the flag.
    fn take_over(&self) {
        self.loop_running.store(true, Ordering::SeqCst);
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
