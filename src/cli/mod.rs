//! The `rtc` command (built with the default `cli` feature): parses flags
//! (pico-args), calls the library, prints progress and maps errors to the
//! documented exit codes. Owns no download logic. It lives in the library
//! crate, hidden from its documentation, so that it can use the modules
//! the library keeps to itself (`create`, `verify`, `tracker`'s scrape);
//! `src/main.rs` only calls [`main`].

use crate::session::{
    AddOptions, Download, Error as SessionError, SeedUntil, SessionOptions, Source,
};
use crate::text::{escaped_path, Escaped};
use crate::{DhtOptions, Magnet, Torrent};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit codes (also in README.md).
mod events;
mod json;
mod many;

mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const BAD_TORRENT: u8 = 3;
    pub const NO_PEERS: u8 = 4;
    pub const IO: u8 = 5;
    pub const INCOMPLETE: u8 = 6;
    pub const CANCELLED: u8 = 130;
}

/// `println!` that ends rtc quietly (exit 0) when the reader of stdout has
/// gone (`rtc info T | head`), instead of panicking on the broken pipe;
/// any other failure (a full disk) is exit code 5 once the command ends.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            json::write_failed(&e);
        }
    }};
}

const HELP: &str = "\
rtc - download a torrent, verifying every byte

USAGE:
    rtc [OPTIONS] <FILE.torrent | MAGNET | ->   download (- reads a torrent or a magnet
                                         link from stdin)
    rtc [OPTIONS] A.torrent B.torrent MAGNET...  download them together (one port,
                                         one peer budget); exit code: the worst one
    rtc [OPTIONS] -i LIST                the same for a list, one per line (- for stdin)
    rtc info [--scrape] <FILE.torrent | MAGNET | ->   print what a torrent contains
                                         (--scrape: ask each tracker for swarm counts)
    rtc verify <FILE.torrent | -> [-o DIR]   check data on disk, piece by piece
    rtc seed <FILE.torrent | -> [-o DIR]     verify the data in DIR and seed it (until Ctrl-C);
                                         pieces missing there are fetched first
    rtc create PATH -o OUT.torrent [--tracker URL]... [--piece-length N] [--private] [--comment TEXT]
    rtc magnet <FILE.torrent | ->            print the torrent's magnet link

OPTIONS:
    -o, --output DIR       directory to download into (default: .)
        --max-peers N      most peer connections at once (default: 50)
        --max-open-files N data files held open at once (default: 64)
        --save-torrent PATH  write the torrent (a magnet's, once its metadata
                           arrives) to PATH as a .torrent file
        --peer HOST:PORT   also connect to this peer (repeatable)
        --port N           port to accept peers on, announced to trackers
                           (default: 6881; a free port if it is taken); the
                           DHT node uses the same number over UDP
        --dht-bootstrap HOST:PORT  join the DHT through this node (repeatable;
                           default: the public routers, e.g.
                           router.bittorrent.com:6881)
        --no-dht           no DHT (BEP 5); private torrents never use it.
                           The DHT's nodes are saved between runs in
                           $XDG_CACHE_HOME/rtc/dht.dat (else ~/.cache/rtc/)
        --seed             keep seeding after the download, until Ctrl-C
        --seed-ratio R     ... until R x the size (of the selected files) is uploaded
        --seed-time D      ... for D (e.g. 90s, 30m, 2h; 0: stop at completion)
        --timeout SECS     give up when no peer is connected for SECS (default: 60)
        --tracker-timeout SECS  bound on one tracker request (default: 15)
        --pipeline N       16 KiB requests in flight per peer (default: 128)
        --max-download-rate R  most bytes/s received, all peers together
                           (e.g. 500K, 2M, 1.5MiB; K = 1024)
        --max-upload-rate R    most bytes/s sent, all peers together
        --files LIST       download only these files, by index as `rtc info`
                           lists them: 0,3-5 (repeatable)
        --include GLOB     ... and the files whose path matches GLOB (`*`, `?`,
                           `[a-z]`; `*` also matches `/`; repeatable)
        --exclude GLOB     leave out the files whose path matches (repeatable).
                           Default: every file, or a magnet's so= list.
                           `rtc verify` takes the same flags
        --repair           rewrite pieces that fail verification in existing
                           files of the torrent's size that rtc did not create
        --json             NDJSON events on stdout, one object per line
                           (schema: md/json.md); human text stays on stderr
    -q, --quiet            print nothing but errors
    -v, --verbose          log more (-v info, -vv debug); RUST_LOG also works
    -h, --help             print this help
    -V, --version          print the version

EXIT CODES:
    0 done, every piece verified   2 usage error       3 invalid torrent or magnet link
    4 no peers / tracker failure   5 I/O error         1 internal error
    6 verify: data incomplete      130 cancelled (Ctrl-C stopping a seed exits 0)
";

struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Runs the `rtc` command with the process's arguments; its exit code.
pub fn main() -> ExitCode {
    // Stdout that could not be written is an I/O error, unless the run
    // ended with a worse code already (several torrents: the worst wins).
    let result = match (run(), json::write_error()) {
        (result, None) => result,
        (Ok(()), Some(e)) => Err(Failure::new(
            exit::IO,
            format!("cannot write to stdout: {e}"),
        )),
        (Err(f), Some(e)) => Err(Failure::new(
            f.code.max(exit::IO),
            format!("{}; cannot write to stdout: {e}", f.message),
        )),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            // Messages escape what came from outside already; this is the
            // last guard that nothing drives the terminal.
            let line: String = f
                .message
                .chars()
                .flat_map(|c| {
                    let esc = c.is_control().then(|| c.escape_default().to_string());
                    esc.unwrap_or_else(|| c.to_string())
                        .chars()
                        .collect::<Vec<_>>()
                })
                .collect();
            eprintln!("rtc: {line}");
            if json::on() {
                json::error(f.code, &line);
            }
            ExitCode::from(f.code)
        }
    }
}

fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure::new(exit::USAGE, format!("{msg} (see rtc --help)"))
}

fn run() -> Result<(), Failure> {
    // pico-args has no short-flag clusters; `-vv` means `-v -v`.
    let argv = std::env::args_os().skip(1).flat_map(|a| {
        let s = a.to_string_lossy();
        let n = s.len().saturating_sub(1);
        if n > 1 && s.starts_with('-') && s[1..].bytes().all(|b| b == b'v') {
            vec![std::ffi::OsString::from("-v"); n]
        } else {
            vec![a]
        }
    });
    let mut args = pico_args::Arguments::from_vec(argv.collect());
    if args.contains(["-h", "--help"]) {
        outln!("{}", HELP.trim_end());
        return Ok(());
    }
    if args.contains(["-V", "--version"]) {
        outln!("rtc {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let quiet = args.contains(["-q", "--quiet"]);
    json::enable(args.contains("--json"));
    let scrape = args.contains("--scrape");
    let mut verbosity = 0;
    while args.contains(["-v", "--verbose"]) {
        verbosity += 1;
    }
    // Paths are taken as the OS gives them: a name that is not UTF-8 is
    // still a name.
    let path = |s: &std::ffi::OsStr| Ok::<PathBuf, &str>(PathBuf::from(s));
    let output: Option<PathBuf> = args
        .opt_value_from_os_str(["-o", "--output"], path)
        .map_err(usage)?;
    let max_peers: Option<usize> = args.opt_value_from_str("--max-peers").map_err(usage)?;
    let max_open_files: Option<usize> =
        args.opt_value_from_str("--max-open-files").map_err(usage)?;
    let port: Option<u16> = args.opt_value_from_str("--port").map_err(usage)?;
    let timeout: Option<u64> = args.opt_value_from_str("--timeout").map_err(usage)?;
    let tracker_timeout: Option<u64> = args
        .opt_value_from_str("--tracker-timeout")
        .map_err(usage)?;
    let peers: Vec<String> = args.values_from_str("--peer").map_err(usage)?;
    let pipeline: Option<usize> = args.opt_value_from_str("--pipeline").map_err(usage)?;
    let seed_flag = args.contains("--seed");
    let seed_ratio: Option<f64> = args.opt_value_from_str("--seed-ratio").map_err(usage)?;
    let seed_time: Option<String> = args.opt_value_from_str("--seed-time").map_err(usage)?;
    let trackers: Vec<String> = args.values_from_str("--tracker").map_err(usage)?;
    let piece_length: Option<u32> = args.opt_value_from_str("--piece-length").map_err(usage)?;
    let private = args.contains("--private");
    let repair = args.contains("--repair");
    let comment: Option<String> = args.opt_value_from_str("--comment").map_err(usage)?;
    let save_torrent: Option<PathBuf> = args
        .opt_value_from_os_str("--save-torrent", path)
        .map_err(usage)?;
    let no_dht = args.contains("--no-dht");
    let dht_bootstrap: Vec<String> = args.values_from_str("--dht-bootstrap").map_err(usage)?;
    let input_list: Option<PathBuf> = args
        .opt_value_from_os_str(["-i", "--input"], path)
        .map_err(usage)?;
    let file_lists: Vec<String> = args.values_from_str("--files").map_err(usage)?;
    let includes: Vec<String> = args.values_from_str("--include").map_err(usage)?;
    let excludes: Vec<String> = args.values_from_str("--exclude").map_err(usage)?;
    let mut selection = crate::FileSelection::all();
    let bad = |flag: &str, e: crate::SelectError| usage(format!("{flag}: {e}"));
    for list in &file_lists {
        selection = selection.files(list).map_err(|e| bad("--files", e))?;
    }
    for g in &includes {
        selection = selection.include(g).map_err(|e| bad("--include", e))?;
    }
    for g in &excludes {
        selection = selection.exclude(g).map_err(|e| bad("--exclude", e))?;
    }
    let rate = |flag: &'static str, v: Option<String>| -> Result<Option<u64>, Failure> {
        v.map(|t| {
            crate::throttle::parse_rate(&t).ok_or_else(|| {
                usage(format!(
                    "{flag} {}: expected bytes per second, e.g. 500K, 2M, 1.5MiB",
                    crate::text::Escaped(&t)
                ))
            })
        })
        .transpose()
    };
    let max_down = rate(
        "--max-download-rate",
        args.opt_value_from_str("--max-download-rate")
            .map_err(usage)?,
    )?;
    let max_up = rate(
        "--max-upload-rate",
        args.opt_value_from_str("--max-upload-rate")
            .map_err(usage)?,
    )?;

    init_logging(quiet, verbosity);

    let rest: Vec<std::ffi::OsString> = args.finish();
    let lossy: Vec<String> = rest
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if let Some(flag) = lossy.iter().find(|a| a.starts_with('-') && a.len() > 1) {
        // pico-args takes the first of a flag; a second is left over.
        let name = flag.split_once('=').map_or(flag.as_str(), |(n, _)| n);
        if is_documented_flag(name) {
            return Err(usage(format!("{name} given more than once")));
        }
        return Err(usage(format!("unknown option {}", Escaped(flag))));
    }
    const ONE_ONLY: [&str; 4] = ["info", "verify", "create", "magnet"];
    let first = lossy.first().map_or("", String::as_str);
    let (command, mut sources): (&str, Vec<std::ffi::OsString>) = match rest.as_slice() {
        [_, src] if ONE_ONLY.contains(&first) => (first, vec![src.clone()]),
        [_] if ONE_ONLY.contains(&first) => {
            let what = match first {
                "create" => "a file or directory",
                "info" => "a torrent file, a magnet link or - (stdin)",
                _ => "a torrent file or - (stdin)",
            };
            return Err(usage(format!("{first} needs {what}")));
        }
        [_, ..] if ONE_ONLY.contains(&first) => {
            return Err(usage(format!(
                "unexpected arguments: {}",
                Escaped(&lossy.join(" "))
            )))
        }
        [_, srcs @ ..] if first == "seed" => ("seed", srcs.to_vec()),
        srcs => ("download", srcs.to_vec()),
    };
    // Stdin can be read once: by the list, or by one entry (checked
    // before the list is read, and again with what it listed).
    let list_on_stdin = input_list.as_ref().is_some_and(|l| l.as_os_str() == "-");
    let stdin_once = |sources: &[std::ffi::OsString]| {
        let uses = sources.iter().filter(|s| *s == "-").count() + usize::from(list_on_stdin);
        if uses > 1 {
            return Err(usage("- (stdin) can be given once"));
        }
        Ok(())
    };
    stdin_once(&sources)?;
    if let Some(list) = &input_list {
        sources.extend(many::read_list(list.as_os_str())?);
        stdin_once(&sources)?;
    }
    let source = match sources.as_slice() {
        [] => return Err(usage("missing torrent file")),
        [one] if input_list.is_none() => one.clone(),
        _ => std::ffi::OsString::new(), // several: see `many` below
    };

    if command == "create" {
        let out = output.ok_or_else(|| usage("create needs -o OUT.torrent"))?;
        let opts = crate::create::CreateOptions {
            trackers,
            piece_length,
            private,
            comment,
        };
        return create(Path::new(&source), &out, &opts, quiet);
    }
    let out_dir = output.unwrap_or_else(|| PathBuf::from("."));
    let mut opts = AddOptions::new(&out_dir).files(selection);
    let mut session = SessionOptions::default();
    if let Some(n) = max_open_files {
        if n == 0 {
            return Err(usage("--max-open-files must be at least 1"));
        }
        session.max_open_files = n;
    }
    if let Some(n) = max_peers {
        if n == 0 {
            return Err(usage("--max-peers must be at least 1"));
        }
        opts.max_peers = n;
    }
    if let Some(p) = port {
        session.port = p;
    }
    session.max_download_rate = max_down;
    session.max_upload_rate = max_up;
    if no_dht {
        session.dht = DhtOptions::off();
    } else {
        if !dht_bootstrap.is_empty() {
            for b in &dht_bootstrap {
                if !valid_host_port(b) {
                    return Err(usage(format!(
                        "--dht-bootstrap {}: expected HOST:PORT",
                        crate::text::Escaped(b)
                    )));
                }
            }
            session.dht.bootstrap = dht_bootstrap;
        }
        session.dht.state_file = dht_state_file();
    }
    if let Some(n) = pipeline {
        if !(1..=1024).contains(&n) {
            return Err(usage("--pipeline must be 1..=1024"));
        }
        opts.limits.pipeline = n;
    }
    opts.repair = repair;
    opts.seed = match (seed_ratio, seed_time) {
        (Some(_), Some(_)) => return Err(usage("give --seed-ratio or --seed-time, not both")),
        (Some(r), None) if r.is_finite() && r > 0.0 => SeedUntil::Ratio(r),
        (Some(_), None) => return Err(usage("--seed-ratio must be a positive number")),
        (None, Some(t)) => {
            let d = parse_duration(&t)
                .ok_or_else(|| usage(format!("--seed-time {t}: expected e.g. 90, 90s, 30m, 2h")))?;
            // `--seed-time 0`: stop at completion, as scripts expect.
            if d.is_zero() {
                SeedUntil::Never
            } else {
                SeedUntil::Time(d)
            }
        }
        (None, None) if seed_flag || command == "seed" => SeedUntil::Stopped,
        (None, None) => SeedUntil::Never,
    };
    if let Some(t) = tracker_timeout {
        if t == 0 {
            return Err(usage("--tracker-timeout must be at least 1"));
        }
        opts.announce_timeout = Duration::from_secs(t);
    }
    if let Some(t) = timeout {
        // 0 would give up before the first connection could finish.
        if t == 0 {
            return Err(usage("--timeout must be at least 1"));
        }
        opts.no_peer_timeout = Duration::from_secs(t);
    }
    for p in peers {
        use std::net::ToSocketAddrs;
        // Port 0 is no peer's (as in a magnet's x.pe).
        if !valid_host_port(&p) {
            return Err(usage(format!("--peer {}: not HOST:PORT", Escaped(&p))));
        }
        let addrs = p
            .to_socket_addrs()
            .map_err(|e| usage(format!("--peer {}: {e}", Escaped(&p))))?;
        opts.peers.extend(addrs);
    }
    if source.is_empty() {
        if save_torrent.is_some() {
            return Err(usage(
                "--save-torrent names one torrent's file; give one torrent",
            ));
        }
        return many::download_many(sources, opts, session, quiet);
    }
    let source = load_source(&source)?;
    json::set_subject(source.info_hash());
    if command == "magnet" {
        // A magnet names its torrent already: printed back normalised.
        let link = match &source {
            Source::Magnet(m) => m.to_uri(),
            Source::Torrent(t) => Magnet::from_torrent(t).to_uri(),
        };
        if json::on() {
            json::emit("magnet", serde_json::json!({ "uri": link }));
        } else {
            outln!("{link}");
        }
        return Ok(());
    }
    if command == "info" || command == "verify" {
        // A magnet's `so=` is its default selection, for `verify` too.
        let selection = match &source {
            Source::Magnet(m) => opts.files.clone().with_default(m.select_only()),
            Source::Torrent(_) => opts.files.clone(),
        };
        let torrent = match source {
            Source::Torrent(t) => t,
            Source::Magnet(m) => fetch_metadata(m, opts.clone(), session, quiet)?,
        };
        return if command == "info" {
            let timeout =
                tracker_timeout.map_or(crate::tracker::ANNOUNCE_TIMEOUT, Duration::from_secs);
            if json::on() {
                let mut line = json::torrent(&torrent);
                if scrape {
                    line["scrape"] = scrape_all(&torrent, timeout)
                        .into_iter()
                        .map(|(url, r)| match r {
                            Ok((seeders, completed, leechers)) => serde_json::json!({
                                "tracker": url, "seeders": seeders,
                                "leechers": leechers, "completed": completed,
                            }),
                            Err(e) => serde_json::json!({ "tracker": url, "error": e }),
                        })
                        .collect();
                }
                json::emit_with_files("info", line, json::files(&torrent));
                return Ok(());
            }
            print_info(&torrent);
            if scrape {
                print_scrape(&torrent, timeout);
            }
            Ok(())
        } else {
            verify(&torrent, &out_dir, &selection)
        };
    }
    let save = match save_torrent {
        Some(path) if path.exists() => {
            return Err(Failure::new(
                exit::IO,
                format!("{} exists; not overwriting it", escaped_path(&path)),
            ))
        }
        other => other,
    };
    download(source, opts, session, save.as_deref(), quiet)
}

fn init_logging(quiet: bool, verbosity: u32) {
    let default = match (quiet, verbosity) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    env_logger::Builder::from_env(env)
        .format_target(false)
        .init();
}

/// Reads a .torrent from a path or, for `-`, from stdin. Torrent files are
/// small; anything over 64 MiB is refused before it is all read. An
/// argument beginning `magnet:`, or stdin holding one (surrounding
/// whitespace ignored), is a magnet link instead (see `from_magnet`).
/// Up to `max + 1` bytes of the file `path`, or of stdin for `-` (one
/// byte more than allowed, so the caller can tell "too big"); and the name
/// to print for it.
fn read_bounded(path: &std::ffi::OsStr, max: u64) -> (String, std::io::Result<Vec<u8>>) {
    let mut bytes = Vec::new();
    let read = if path == "-" {
        std::io::stdin()
            .lock()
            .take(max + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
    };
    let name = if path == "-" {
        "<stdin>".to_string()
    } else {
        escaped_path(Path::new(path))
    };
    (name, read.map(|_| bytes))
}

fn load_source(source: &std::ffi::OsStr) -> Result<Source, Failure> {
    const MAX: u64 = 64 * 1024 * 1024;
    if let Some(link) = source.to_str().filter(|s| crate::magnet::is_magnet(s)) {
        return Ok(Source::Magnet(parse_magnet("", link)?));
    }
    let (name, read) = read_bounded(source, MAX);
    let bytes = read.map_err(|e| Failure::new(exit::IO, format!("cannot read {name}: {e}")))?;
    if bytes.len() as u64 > MAX {
        return Err(Failure::new(
            exit::BAD_TORRENT,
            format!("{name}: invalid torrent: larger than 64 MiB"),
        ));
    }
    let text = bytes.trim_ascii();
    if source == "-"
        && text
            .get(..7)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"magnet:"))
    {
        let text = std::str::from_utf8(text).map_err(|_| {
            Failure::new(exit::BAD_TORRENT, "<stdin>: invalid magnet link: not UTF-8")
        })?;
        return Ok(Source::Magnet(parse_magnet("<stdin>: ", text)?));
    }
    Torrent::from_bytes(&bytes)
        .map(Source::Torrent)
        .map_err(|e| Failure::new(exit::BAD_TORRENT, format!("{name}: invalid torrent: {e}")))
}

fn parse_magnet(prefix: &str, text: &str) -> Result<Magnet, Failure> {
    Magnet::parse(text).map_err(|e| {
        Failure::new(
            exit::BAD_TORRENT,
            format!("{prefix}invalid magnet link: {e}"),
        )
    })
}

/// A magnet's torrent, fetched from its peers and trackers (for `rtc
/// info` and `rtc verify`); nothing is written.
fn fetch_metadata(
    magnet: Magnet,
    opts: AddOptions,
    session: SessionOptions,
    quiet: bool,
) -> Result<Torrent, Failure> {
    let dl =
        Download::start_with(magnet, opts.metadata_only(true), session).map_err(session_failure)?;
    let cancel = dl.cancel_handle();
    if let Err(e) = ctrlc::set_handler(move || cancel.cancel()) {
        log::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let show = !quiet && std::io::stderr().is_terminal();
    while !dl.is_finished() {
        let _ = dl.events().recv_timeout(Duration::from_millis(200));
        while dl.events().try_recv().is_ok() {}
        if show {
            draw_metadata(&dl.progress());
        }
    }
    if show {
        eprint!("\r\x1b[2K");
    }
    let torrent = dl.torrent();
    dl.wait().map_err(session_failure)?;
    torrent
        .map(|t| (*t).clone())
        .ok_or_else(|| Failure::new(exit::INTERNAL, "metadata fetched but no torrent"))
}

fn draw_metadata(p: &crate::Progress) {
    let size = if p.metadata_size > 0 {
        human(p.metadata_size)
    } else {
        "?".into()
    };
    eprint!(
        "\r\x1b[2Kfetching metadata  {} of {}  {} peers",
        human(p.metadata_bytes),
        size,
        p.peers
    );
    let _ = std::io::stderr().flush();
}

fn print_info(t: &Torrent) {
    outln!("name:         {}", Escaped(t.name()));
    outln!("info hash:    {}", t.info_hash());
    outln!(
        "total size:   {} ({} bytes)",
        human(t.total_length()),
        t.total_length()
    );
    outln!(
        "pieces:       {} x {}",
        t.piece_count(),
        human(t.piece_length() as u64)
    );
    outln!("private:      {}", if t.private() { "yes" } else { "no" });
    if let Some(c) = t.comment() {
        outln!("comment:      {}", Escaped(c));
    }
    outln!("files:        {} (index, bytes, path)", t.files().len());
    for (i, f) in t.files().iter().enumerate() {
        outln!("  {i:>5}  {:>12}  {}", f.length(), escaped_path(f.path()));
    }
    let tiers = t.trackers();
    if tiers.is_empty() {
        outln!("trackers:     none");
    } else {
        outln!("trackers:");
        for (i, tier) in tiers.iter().enumerate() {
            for url in tier {
                outln!("  tier {i}: {}", Escaped(url));
            }
        }
    }
}

/// `rtc verify`: every piece of the torrent is checked; the files
/// `selection` leaves out are reported as skipped (their bytes in pieces
/// shared with selected files are read from the part file), and the exit
/// code says whether every selected file is complete.
fn verify(
    torrent: &Torrent,
    dir: &std::path::Path,
    selection: &crate::FileSelection,
) -> Result<(), Failure> {
    use crate::verify::FileStatus;
    let io = |e: crate::storage::Error| Failure::new(exit::IO, e.to_string());
    let selected = selection
        .resolve(torrent)
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let files = crate::storage::FileCache::new(crate::storage::MAX_OPEN_FILES);
    let storage =
        crate::storage::Storage::open_existing(dir, torrent, &selected, &files).map_err(io)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .map_err(|e| Failure::new(exit::INTERNAL, e.to_string()))?;
    let have = crate::verify::check(torrent, &storage, &pool, &|| false)
        .map_err(io)?
        .have;
    let layout = torrent.layout();
    // Bytes in the pieces of a set.
    let bytes_of = |set: &crate::peer::message::Bitfield| -> u64 {
        (0..set.len())
            .map(crate::types::PieceIndex)
            .filter(|&p| set.has(p))
            .map(|p| u64::from(layout.piece_len(p)))
            .sum()
    };
    let bytes = bytes_of(&have);
    let statuses = crate::verify::file_status(torrent, &storage, &have, &selected);
    let selected_count = selected.iter().filter(|&&s| s).count();
    let partial = selected_count < selected.len();
    let wanted = crate::select::wanted_pieces(layout, &selected);
    if json::on() {
        let files = torrent
            .files()
            .iter()
            .zip(&statuses)
            .enumerate()
            .map(|(i, (f, st))| {
                let (status, ok, of) = match *st {
                    FileStatus::Complete => {
                        let n = layout.pieces_of_file(i).len() as u32;
                        ("complete", n, n)
                    }
                    FileStatus::Missing => ("missing", 0, layout.pieces_of_file(i).len() as u32),
                    FileStatus::Skipped => ("skipped", 0, layout.pieces_of_file(i).len() as u32),
                    FileStatus::WrongSize { .. } => {
                        let n = layout.pieces_of_file(i).len() as u32;
                        ("wrong_size", 0, n)
                    }
                    FileStatus::Partial { pieces, of } => ("partial", pieces, of),
                };
                serde_json::json!({
                    "index": i, "path": json::path(f.path()), "length": f.length(),
                    "status": status, "pieces_ok": ok, "pieces": of,
                })
            });
        json::emit_with_files(
            "verify",
            serde_json::json!({
                "info_hash": torrent.info_hash().to_string(),
                "name": torrent.name(),
                "pieces_ok": have.count(),
                "pieces_total": have.len(),
                "verified_bytes": bytes,
                "total_bytes": torrent.total_length(),
                "missing": json::ranges(have.len(), |p| !have.has(crate::types::PieceIndex(p))),
            }),
            files,
        );
    } else {
        // With a selection only the selected files' pieces are checked:
        // the counts are of those.
        let (of, of_bytes) = if partial {
            (wanted.count(), bytes_of(&wanted))
        } else {
            (have.len(), torrent.total_length())
        };
        outln!(
            "{}: {}/{of} pieces{} verified ({} of {})",
            Escaped(torrent.name()),
            have.count(),
            if partial {
                " of the selected files"
            } else {
                ""
            },
            human(bytes),
            human(of_bytes)
        );
        for (f, st) in torrent.files().iter().zip(&statuses) {
            let st = match *st {
                FileStatus::Complete => "complete".to_string(),
                FileStatus::Missing => "missing".to_string(),
                FileStatus::Skipped => "skipped".to_string(),
                FileStatus::WrongSize { found } => format!("wrong size ({found} bytes)"),
                FileStatus::Partial { pieces, of } => format!("partial {pieces}/{of}"),
            };
            outln!("  {st:<16} {}", escaped_path(f.path()));
        }
    }
    let short = statuses
        .iter()
        .filter(|s| !matches!(s, FileStatus::Complete | FileStatus::Skipped))
        .count();
    if short == 0 {
        Ok(())
    } else {
        let missing = (0..wanted.len())
            .map(crate::types::PieceIndex)
            .filter(|&p| wanted.has(p) && !have.has(p))
            .count();
        Err(Failure::new(
            exit::INCOMPLETE,
            format!(
                "{}: incomplete, {short} of {selected_count} {}files not complete ({missing} of {} pieces{} missing or wrong)",
                Escaped(torrent.name()),
                if partial { "selected " } else { "" },
                wanted.count(),
                if partial { " of the selected files" } else { "" },
            ),
        ))
    }
}

/// Whether `name` (e.g. `--seed`) is one of the flags HELP documents.
fn is_documented_flag(name: &str) -> bool {
    HELP.match_indices(name).any(|(at, _)| {
        let before = HELP[..at].chars().next_back();
        let after = HELP[at + name.len()..].chars().next();
        matches!(before, Some(' ' | '['))
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// `HOST:PORT` (or `[v6]:PORT`) with a non-zero port.
fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// Where the DHT's routing table is kept between runs:
/// `$XDG_CACHE_HOME/rtc/dht.dat`, else `~/.cache/rtc/dht.dat`; none when
/// neither variable is set to an absolute path.
fn dht_state_file() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })?;
    Some(base.join("rtc").join("dht.dat"))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn create(
    path: &Path,
    out: &Path,
    opts: &crate::create::CreateOptions,
    quiet: bool,
) -> Result<(), Failure> {
    if out.exists() {
        return Err(Failure::new(
            exit::IO,
            format!("{} exists; not overwriting it", out.display()),
        ));
    }
    let pool = {
        // Two threads per core: a thread blocked on a page-cache read
        // leaves its core to the other (measured: 0.467 s against 0.490 s
        // for 1 GiB, median of 8; RAYON_NUM_THREADS still overrides).
        let b = rayon::ThreadPoolBuilder::new();
        if std::env::var_os("RAYON_NUM_THREADS").is_some() {
            b
        } else {
            b.num_threads(2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
        }
    }
    .build()
    .map_err(|e| Failure::new(exit::INTERNAL, e.to_string()))?;
    let (bytes, torrent) = crate::create::create(path, opts, &pool).map_err(|e| {
        let code = match e {
            crate::create::CreateError::BadPieceLength(_) => exit::USAGE,
            crate::create::CreateError::Invalid(_) => exit::INTERNAL,
            _ => exit::IO,
        };
        Failure::new(code, e.to_string())
    })?;
    write_new_file(out, &bytes)?;
    if json::on() {
        json::emit_with_files(
            "created",
            serde_json::json!({
                "path": json::path(out),
                "info_hash": torrent.info_hash().to_string(),
                "name": torrent.name(),
                "size": torrent.total_length(),
                "piece_length": torrent.piece_length(),
                "pieces": torrent.piece_count(),
            }),
            json::files(&torrent),
        );
    }
    if !quiet {
        eprintln!(
            "rtc: created {}: {} ({}, {} pieces of {}), info hash {}",
            escaped_path(out),
            Escaped(torrent.name()),
            human(torrent.total_length()),
            torrent.piece_count(),
            human(torrent.piece_length() as u64),
            torrent.info_hash()
        );
    }
    Ok(())
}

/// Each tracker's scrape: (seeders, completed, leechers) or the error.
type ScrapeResult = (String, Result<(u64, u64, u64), String>);

fn scrape_all(t: &Torrent, timeout: Duration) -> Vec<ScrapeResult> {
    let mut clients = crate::tracker::Clients::new();
    t.trackers()
        .iter()
        .flatten()
        .map(|url| {
            let r = crate::tracker::scrape(&mut clients, url, &t.info_hash(), timeout)
                .map_err(|e| e.to_string());
            (url.clone(), r)
        })
        .collect()
}

fn print_scrape(t: &Torrent, timeout: Duration) {
    outln!("scrape:");
    for (url, r) in scrape_all(t, timeout) {
        match r {
            Ok((seeders, completed, leechers)) => {
                outln!(
                    "  {}: {seeders} seeders, {leechers} leechers, {completed} completed",
                    Escaped(&url)
                )
            }
            Err(e) => outln!("  {}: error: {e}", Escaped(&url)),
        }
    }
}

fn download(
    source: Source,
    opts: AddOptions,
    session: SessionOptions,
    save: Option<&Path>,
    quiet: bool,
) -> Result<(), Failure> {
    let seeding = opts.seed != SeedUntil::Never;
    // Known now for a .torrent (the download's own copy appears only once
    // its thread runs); a magnet's comes with its metadata.
    let known = events::known(&source, &opts.files)
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let dl = Download::start_with(source, opts, session).map_err(session_failure)?;
    let mut saved = save.is_none();
    // Ctrl-C / SIGTERM cancel the download cleanly: peers are closed, queued
    // verified pieces are written, and the tracker hears `stopped`.
    let cancel = dl.cancel_handle();
    if let Err(e) = ctrlc::set_handler(move || cancel.cancel()) {
        log::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let mut lines = json::on().then(|| events::Lines::new(&dl, known.as_ref(), seeding));
    let show = !quiet && std::io::stderr().is_terminal();
    let mut drew = false;
    while !dl.is_finished() {
        // Wake on any event or every 200 ms to redraw; drain the rest so
        // the bounded channel never holds stale events.
        let first = dl.events().recv_timeout(Duration::from_millis(200)).ok();
        match lines.as_mut() {
            Some(l) => l.pump(&dl, first),
            None => while dl.events().try_recv().is_ok() {},
        }
        if !saved {
            if let (Some(t), Some(path)) = (dl.torrent(), save) {
                // As soon as the torrent is known (a magnet's metadata):
                // saved even if the download fails later.
                write_new_file(path, &t.to_bytes())?;
                saved = true;
            }
        }
        if show {
            draw_progress(&dl.progress());
            drew = true;
        }
    }
    if drew {
        eprint!("\r\x1b[2K");
    }
    let name = dl.torrent().map_or_else(
        || dl.info_hash().to_string(),
        |t| crate::text::escaped(t.name()),
    );
    let ih = dl.info_hash();
    let last = dl.file_progress();
    let end = dl.progress();
    let verified = verified_text(&end);
    if let Some(l) = lines.as_mut() {
        // Events of a download that ended before the loop read them.
        l.drain(&dl);
    }
    let summary = dl.wait().map_err(session_failure)?;
    if let Some(l) = lines.as_mut() {
        l.finish(ih, &last, &end, &summary);
    }
    if !quiet {
        let secs = summary.elapsed.as_secs_f64().max(0.001);
        eprintln!(
            "rtc: {name}: {verified} verified; {} downloaded, {} uploaded in {:.1}s ({}/s down); peers: {}",
            human(summary.downloaded_bytes),
            human(summary.uploaded_bytes),
            secs,
            human((summary.downloaded_bytes as f64 / secs) as u64),
            summary.peer_sources
        );
    }
    Ok(())
}

/// What a finished download verified: the torrent's size, or with a
/// partial file selection the selected pieces' bytes of it.
fn verified_text(p: &crate::Progress) -> String {
    if p.wanted_bytes < p.total_bytes {
        format!(
            "{} of {} (the selected files)",
            human(p.wanted_verified_bytes),
            human(p.total_bytes)
        )
    } else {
        human(p.total_bytes)
    }
}

fn draw_progress(p: &crate::Progress) {
    if p.total_bytes == 0 {
        draw_metadata(p);
        return;
    } else if p.wanted_verified_bytes == p.wanted_bytes {
        eprint!(
            "\r\x1b[2Kseeding  up {}/s  ratio {:.2}  {} peers",
            human(p.upload_rate),
            p.uploaded_bytes as f64 / p.total_bytes.max(1) as f64,
            p.peers
        );
    } else {
        let eta = (p.wanted_bytes - p.wanted_verified_bytes)
            .checked_div(p.rate)
            .map_or_else(|| "--:--".into(), |s| fmt_duration(Duration::from_secs(s)));
        eprint!(
            "\r\x1b[2K{:5.1}%  down {}/s  up {}/s  {} peers  ETA {}",
            p.fraction() * 100.0,
            human(p.rate),
            human(p.upload_rate),
            p.peers,
            eta
        );
    }
    let _ = std::io::stderr().flush();
}

/// Writes a new file (a torrent), never over an existing one and never
/// seen half-written: into a fresh hidden file beside it (`create_new`:
/// not through a planted link), then hard-linked to its name, which fails
/// rather than replace a file that appeared meanwhile.
fn write_new_file(out: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "exists; not overwriting it".to_string()
        } else {
            format!("cannot write it: {e}")
        };
        Failure::new(exit::IO, format!("{} {why}", escaped_path(out)))
    };
    if out.exists() {
        return Err(fail(std::io::ErrorKind::AlreadyExists.into()));
    }
    let name = out
        .file_name()
        .map_or_else(Default::default, |n| n.to_os_string());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".rtc-part-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, out));
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(fail)
}

fn session_failure(e: SessionError) -> Failure {
    let code = match &e {
        SessionError::Storage(_) | SessionError::Listen { .. } => exit::IO,
        SessionError::Tracker(_) | SessionError::NoPeers { .. } => exit::NO_PEERS,
        SessionError::Cancelled => exit::CANCELLED,
        SessionError::AlreadyAdded(_) | SessionError::Selection(_) => exit::USAGE,
        SessionError::Metadata(_) => exit::BAD_TORRENT,
        SessionError::Entropy(_) | SessionError::Thread(_) => exit::INTERNAL,
    };
    Failure::new(code, e.to_string())
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}
