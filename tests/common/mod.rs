//! Helpers shared by the integration tests: a local opentracker, third-party
//! peers (libtorrent through `scripts/lt_peer.py`, aria2c), test data and
//! torrents, and file comparisons.
//!
//! Every process started here is owned by a value whose `Drop` kills it by
//! PID and reaps it, also when the test panics; while panicking, `Drop`
//! prints the tail of the process's log. Tests run in parallel threads, so
//! nothing here uses a fixed port or a shared directory.
//!
//! Only std, `tempfile` and `sha1_smol`: the helpers must not depend on the
//! crate under test (the info hash is computed independently).
#![allow(dead_code)]

pub mod bencode;
pub mod fake_http;

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a helper waits for a third-party process to come up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The interpreter that sees Debian's python3-libtorrent.
pub const PYTHON: &str = "/usr/bin/python3";

/// The `rtc` binary built for this test run.
pub fn rtc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rtc"))
}

/// The `rtc` command with the DHT off: a test stays on loopback (the DHT
/// would ask the public routers) unless it turns the DHT on itself with
/// `rtc_with_dht`.
pub fn rtc_cmd() -> Command {
    let mut c = Command::new(rtc_bin());
    c.arg("--no-dht");
    c
}

/// The `rtc` command with its DHT node joining through `bootstrap` (a
/// loopback node) and keeping its state file under `cache` (the user's
/// own cache is never touched).
pub fn rtc_with_dht(bootstrap: &[SocketAddr], cache: &Path) -> Command {
    let mut c = Command::new(rtc_bin());
    for b in bootstrap {
        c.arg("--dht-bootstrap").arg(b.to_string());
    }
    c.env("XDG_CACHE_HOME", cache);
    c
}

/// `scripts/lt_peer.py` in this checkout.
pub fn lt_peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lt_peer.py")
}

// ---------------------------------------------------------------------------
// Polling and ports

/// Polls `cond` every 20 ms until it is true; panics naming `what` after
/// `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True if something accepts a TCP connection at `addr` right now.
pub fn port_accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("random bytes from the operating system");
    u64::from_le_bytes(b)
}

/// Lowest port of the kernel's ephemeral range (outgoing connections).
fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// True if `port` can be bound right now for TCP and UDP on 127.0.0.1 and on
/// the wildcard addresses (aria2c listens on 0.0.0.0 and [::]).
fn port_is_free(port: u16) -> bool {
    // One at a time: a wildcard bind would collide with our own 127.0.0.1.
    TcpListener::bind(("127.0.0.1", port)).is_ok()
        && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        && TcpListener::bind(("0.0.0.0", port)).is_ok()
        && UdpSocket::bind(("0.0.0.0", port)).is_ok()
        && match TcpListener::bind(("::", port)) {
            Ok(_) => true,
            // No IPv6 on this machine: nothing to collide with there.
            Err(e) => e.kind() != io::ErrorKind::AddrInUse,
        }
}

/// A port that is free for both TCP and UDP (opentracker serves both on one
/// port), never handed out twice by this process.
///
/// Ports come from below the kernel's ephemeral range, so a port picked here
/// is not taken by some outgoing connection before the peer binds it, and
/// does not collide with other programs that bind port 0.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let high = ephemeral_low();
    let low: u16 = 10_000;
    for _ in 0..2000 {
        let port = if high > low + 1000 {
            low + (random_u64() % u64::from(high - low)) as u16
        } else {
            // Odd range set-up: let the kernel choose.
            match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(a) => a.port(),
                Err(_) => continue,
            }
        };
        let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) || !port_is_free(port) {
            continue;
        }
        given.insert(port);
        return port;
    }
    panic!("no free TCP+UDP port found");
}

// ---------------------------------------------------------------------------
// Logs of spawned processes

fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
}

/// The last `lines` lines of a text file (lossy UTF-8), or a note why not.
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// True while a process with this PID exists (zombies included).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills and reaps `child`; used by every Drop here.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill(); // SIGKILL to this PID only
    child.wait().ok()
}

fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().ok().flatten()
}

// ---------------------------------------------------------------------------
// Tracker

/// opentracker on 127.0.0.1 (HTTP and UDP on one port) in whitelist mode.
///
/// Debian's opentracker chroots into its working directory and drops to
/// `nobody`, so the whitelist lives in a world-readable temp dir. It sets
/// SO_REUSEPORT: a second opentracker can bind the same port without error
/// and the kernel then splits requests between the two. `start` therefore
/// checks, with a private canary info hash, that every probe is answered by
/// its own process.
pub struct Tracker {
    pub port: u16,
    child: Child,
    dir: TempDir,
    log: PathBuf,
    state: Mutex<Whitelist>,
}

struct Whitelist {
    hashes: Vec<String>,
    canary: String,
}

const WHITELIST: &str = "whitelist";

fn check_hex40(h: &str) -> String {
    assert!(
        h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a 40-hex info hash: {h:?}"
    );
    h.to_ascii_lowercase()
}

fn random_hex40() -> String {
    (0..3)
        .map(|_| format!("{:016x}", random_u64()))
        .collect::<String>()[..40]
        .to_string()
}

fn percent_encode_hex(hex40: &str) -> String {
    hex40
        .as_bytes()
        .chunks(2)
        .map(|p| format!("%{}", std::str::from_utf8(p).unwrap()))
        .collect()
}

/// A bare HTTP/1.0 GET to 127.0.0.1:port; returns the body.
fn http_get(port: u16, path_and_query: &str) -> io::Result<Vec<u8>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(0);
    Ok(resp.split_off(split))
}

/// Reads `key` + `i<n>e` out of a bencoded reply (good enough for trackers).
fn bencode_int_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = body.get(at..)?.strip_prefix(b"i")?;
    let end = rest.iter().position(|&b| b == b'e')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

impl Tracker {
    /// Starts opentracker serving exactly `info_hashes` (40 hex each) and
    /// returns once it answers on its port with this whitelist.
    pub fn start<S: AsRef<str>>(info_hashes: &[S]) -> Tracker {
        let hashes: Vec<String> = info_hashes
            .iter()
            .map(|h| check_hex40(h.as_ref()))
            .collect();
        let mut last_err = String::new();
        for _attempt in 0..5 {
            match Tracker::try_start(hashes.clone()) {
                Ok(t) => return t,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start opentracker: {last_err}");
    }

    fn try_start(hashes: Vec<String>) -> Result<Tracker, String> {
        let dir = tempfile::Builder::new()
            .prefix("rtc-tracker-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // opentracker runs as nobody inside this dir.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let log = dir.path().join("opentracker.log");
        let port = free_port();
        let state = Whitelist {
            hashes,
            canary: random_hex40(),
        };
        write_whitelist(dir.path(), &state);
        let child = Command::new("opentracker")
            .args(["-i", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-P", &port.to_string()])
            .arg("-d")
            .arg(dir.path())
            .args(["-w", WHITELIST])
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .map_err(|e| format!("cannot run opentracker (scripts/install-deps): {e}"))?;
        let mut t = Tracker {
            port,
            child,
            dir,
            log,
            state: Mutex::new(state),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !port_accepts(addr) {
            if let Some(st) = exited(&mut t.child) {
                return Err(format!("opentracker exited: {st}\n{}", t.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("opentracker not listening on {port}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The whitelist is loaded by a thread of its own, after the port
        // opens: wait until the canary is accepted ...
        let canary = t.state.lock().unwrap().canary.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.authorized(&canary) != Some(true) {
            if Instant::now() > deadline {
                return Err(format!(
                    "opentracker never loaded its whitelist\n{}",
                    t.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
        // ... then make sure no other opentracker shares the port: each new
        // connection is routed to one of the listeners at random.
        for _ in 0..12 {
            if t.authorized(&canary) != Some(true) {
                return Err(format!("another opentracker shares port {port}"));
            }
        }
        Ok(t)
    }

    /// Whether this tracker accepts announces for `info_hash_hex`; `None`
    /// when it does not answer. The probe registers a peer at 127.0.0.1:1
    /// on that hash (with numwant=0): do not use it on a hash a test
    /// downloads, or clients are told about that dead peer.
    pub fn authorized(&self, info_hash_hex: &str) -> Option<bool> {
        let q = format!(
            "/announce?info_hash={}&peer_id=-HARNESS-probe000000&port=1\
             &uploaded=0&downloaded=0&left=0&compact=1&numwant=0",
            percent_encode_hex(info_hash_hex)
        );
        let body = http_get(self.port, &q).ok()?;
        if body.is_empty() {
            return None;
        }
        Some(!body.windows(14).any(|w| w == b"failure reason"))
    }

    /// `http://127.0.0.1:PORT/announce`
    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// `udp://127.0.0.1:PORT`
    pub fn udp_url(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }

    /// Adds an info hash to the whitelist, reloads it (SIGHUP) and returns
    /// once the tracker serves it.
    pub fn allow(&self, info_hash_hex: &str) {
        let h = check_hex40(info_hash_hex);
        let canary = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.hashes.contains(&h) {
                st.hashes.push(h);
            }
            // A new canary tells when the reload has happened.
            st.canary = random_hex40();
            write_whitelist(self.dir.path(), &st);
            st.canary.clone()
        };
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not SIGHUP opentracker");
        wait_for(
            Duration::from_secs(10),
            "opentracker to reload its whitelist",
            || self.authorized(&canary) == Some(true),
        );
    }

    /// Seeders ("complete") the tracker counts for an info hash (scrape).
    pub fn seeders(&self, info_hash_hex: &str) -> u64 {
        self.scrape(info_hash_hex, b"8:complete")
    }

    /// Leechers ("incomplete") the tracker counts for an info hash (scrape).
    pub fn leechers(&self, info_hash_hex: &str) -> u64 {
        self.scrape(info_hash_hex, b"10:incomplete")
    }

    fn scrape(&self, info_hash_hex: &str, key: &[u8]) -> u64 {
        let q = format!("/scrape?info_hash={}", percent_encode_hex(info_hash_hex));
        http_get(self.port, &q)
            .ok()
            .and_then(|body| bencode_int_after(&body, key))
            .unwrap_or(0)
    }

    /// Waits until the tracker lists at least `n` seeders of the hash.
    pub fn wait_for_seeders(&self, info_hash_hex: &str, n: u64, timeout: Duration) {
        wait_for(timeout, &format!("{n} seeder(s) at the tracker"), || {
            self.seeders(info_hash_hex) >= n
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of opentracker's stdout/stderr.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, 40)
    }
}

fn write_whitelist(dir: &Path, st: &Whitelist) {
    // A comment line keeps the file non-empty (opentracker cannot map an
    // empty file); it ignores lines that do not start with 40 hex digits.
    let mut text = String::from("# rtc test tracker\n");
    for h in st.hashes.iter().chain(std::iter::once(&st.canary)) {
        text.push_str(h);
        text.push('\n');
    }
    // Written aside and renamed: a reload never sees half a file.
    let tmp = dir.join("whitelist.tmp");
    fs::write(&tmp, text).expect("write whitelist");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod whitelist");
    fs::rename(&tmp, dir.join(WHITELIST)).expect("rename whitelist");
}

impl Drop for Tracker {
    fn drop(&mut self) {
        stop(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "--- opentracker on port {} (log tail) ---\n{}",
                self.port,
                self.log_tail()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Third-party peers

/// A running third-party peer (libtorrent or aria2c), killed on Drop.
/// A constructor that fails panics; the log tail then comes from Drop.
pub struct Peer {
    kind: &'static str,
    port: u16,
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _logs: TempDir,
}

impl Peer {
    /// libtorrent seeding `torrent` from `data_parent` (the directory that
    /// holds the torrent's file or top directory), listening on `bind:port`
    /// (`bind` is `127.0.0.1` or `::1`). Returns once it has checked the
    /// data and, if the torrent names a tracker, had a first tracker reply
    /// (about 0.2 s for a few MiB).
    pub fn libtorrent_seed(torrent: &Path, data_parent: &Path, port: u16, bind: &str) -> Peer {
        Self::libtorrent_seed_with(torrent, data_parent, port, bind, &[])
    }

    /// As `libtorrent_seed`, with extra `lt_peer.py seed` arguments (e.g.
    /// `--upload-limit BYTES` for a deliberately slow seeder).
    pub fn libtorrent_seed_with(
        torrent: &Path,
        data_parent: &Path,
        port: u16,
        bind: &str,
        extra: &[&str],
    ) -> Peer {
        let logs = log_dir("rtc-lt-seed-");
        let log = logs.path().join("lt_peer.log");
        let mut child = Command::new(PYTHON)
            .arg(lt_peer_script())
            .arg("seed")
            .arg(torrent)
            .arg(data_parent)
            .args(["--port", &port.to_string(), "--bind", bind])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON} lt_peer.py: {e}"));
        let lines = pipe_stdout(&mut child, &log);
        let ip: std::net::IpAddr = bind
            .parse()
            .unwrap_or_else(|_| panic!("bind wants an IP address, got {bind:?}"));
        let mut peer = Peer {
            kind: "libtorrent seeder",
            port,
            addr: SocketAddr::new(ip, port),
            child,
            log,
            _logs: logs,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => match line.strip_prefix("READY ") {
                    Some(p) if p.trim().parse::<u16>().ok() == Some(port) => return peer,
                    Some(p) => panic!("lt_peer.py reported port {p:?}, asked for {port}"),
                    None => {}
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // stdout closed: the process is ending; let try_wait see it.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(20))
                }
            }
            if let Some(st) = exited(&mut peer.child) {
                panic!("lt_peer.py seed exited ({st})");
            }
            if Instant::now() > deadline {
                panic!("lt_peer.py seed not READY within {STARTUP_TIMEOUT:?}");
            }
        }
    }

    /// aria2c seeding `torrent` from `data_parent`, listening on `port`
    /// (all addresses). Returns once it has verified the data and its port
    /// accepts connections. It announces about a second later; wait with
    /// `Tracker::wait_for_seeders` before starting a download that relies
    /// on the tracker. It exits by itself if this test process dies.
    pub fn aria2_seed(torrent: &Path, data_parent: &Path, port: u16) -> Peer {
        let logs = log_dir("rtc-aria2-seed-");
        let log = logs.path().join("aria2c.log");
        let aria_log = logs.path().join("aria2c-internal.log");
        let child = Command::new("aria2c")
            .args([
                "-V",
                "--check-integrity=true",
                "--bt-seed-unverified=false",
                "--seed-ratio=0.0",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--bt-tracker-connect-timeout=5",
                "--bt-tracker-timeout=5",
                "--bt-max-peers=0",
                "--quiet=true",
                "--summary-interval=0",
                "--log-level=notice",
            ])
            .arg(format!("--dir={}", data_parent.display()))
            .arg(format!("--listen-port={port}"))
            .arg(format!("--log={}", aria_log.display()))
            .arg(format!("--stop-with-process={}", std::process::id()))
            .arg(torrent)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run aria2c (scripts/install-deps): {e}"));
        let mut peer = Peer {
            kind: "aria2c seeder",
            port,
            addr: ([127, 0, 0, 1], port).into(),
            child,
            log: aria_log,
            _logs: logs,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let text = fs::read_to_string(&peer.log).unwrap_or_default();
            if text.contains("Checksum error detected") {
                panic!(
                    "aria2c found the data under {} incomplete",
                    data_parent.display()
                );
            }
            if text.contains("Verification finished successfully") && port_accepts(addr) {
                return peer;
            }
            if let Some(st) = exited(&mut peer.child) {
                panic!("aria2c exited ({st})\n{}", file_tail(&log, 20));
            }
            if Instant::now() > deadline {
                panic!("aria2c not seeding within {STARTUP_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where to connect to it (`--peer` for rtc): 127.0.0.1 or [::1].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the peer's log.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, 40)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        stop(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "--- {} on port {} (log tail) ---\n{}",
                self.kind,
                self.port,
                self.log_tail()
            );
        }
    }
}

/// Copies a piped child's stdout into `log` on a thread, handing every
/// line over as well.
fn pipe_stdout(child: &mut Child, log: &Path) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    let mut copy = log_file(log);
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(copy, "{line}");
            // Nobody listening any more: keep copying, so the child never
            // blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    rx
}

fn log_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir for logs")
}

/// Runs `scripts/lt_peer.py leech` to completion: downloads `torrent` into
/// `out_dir` from its trackers and `peers`, listening on 127.0.0.1:`port`
/// (on [::1] if every peer given is IPv6).
/// Returns the time libtorrent reported; panics with its output on failure
/// or after `timeout`.
pub fn lt_leech(
    torrent: &Path,
    out_dir: &Path,
    port: u16,
    peers: &[SocketAddr],
    timeout: Duration,
) -> Duration {
    lt_leech_with(torrent, out_dir, port, peers, timeout, &[])
}

/// [`lt_leech`] with extra `lt_peer.py leech` arguments (`--encryption`).
pub fn lt_leech_with(
    torrent: &Path,
    out_dir: &Path,
    port: u16,
    peers: &[SocketAddr],
    timeout: Duration,
    extra: &[&str],
) -> Duration {
    try_lt_leech_with(torrent, out_dir, port, peers, timeout, extra)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`lt_leech_with`], returning a failure or timeout as an `Err` with
/// libtorrent's output instead of panicking.
pub fn try_lt_leech_with(
    torrent: &Path,
    out_dir: &Path,
    port: u16,
    peers: &[SocketAddr],
    timeout: Duration,
    extra: &[&str],
) -> Result<Duration, String> {
    // A leecher bound to 127.0.0.1 still dials [::1]; only an all-IPv6
    // peer list gets an IPv6 listening address.
    let v6_only = !peers.is_empty() && peers.iter().all(|p| p.is_ipv6());
    let bind = if v6_only { "::1" } else { "127.0.0.1" };
    let mut cmd = Command::new(PYTHON);
    cmd.arg(lt_peer_script())
        .arg("leech")
        .arg(torrent)
        .arg(out_dir)
        .args(["--port", &port.to_string(), "--bind", bind])
        .args(["--timeout", &timeout.as_secs_f64().to_string()])
        .args(extra);
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    // lt_peer.py enforces the timeout itself; the margin covers start-up.
    let out = run_bounded(&mut cmd, timeout + Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .and_then(|s| s.trim().parse::<f64>().ok());
    match secs {
        Some(s) if out.status.success() => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "lt_peer.py leech failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// aria2c leeching `torrent` into `out` (peers from the torrent's
/// trackers), quiet, no DHT/LPD/PEX, ending with this test process; add
/// arguments, then run it with [`run_bounded`].
pub fn aria2_leech_command(torrent: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("aria2c");
    cmd.arg("--seed-time=0")
        .arg(format!("--dir={}", out.display()))
        .arg(format!("--listen-port={}", free_port()))
        .args([
            "--enable-dht=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            &format!("--stop-with-process={}", std::process::id()),
        ])
        .arg(torrent);
    cmd
}

/// Runs `cmd` with stdout and stderr captured; kills it (by PID) and panics
/// with what it printed if it has not exited after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err_t = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = exited(&mut child) {
            break st;
        }
        if Instant::now() > deadline {
            stop(&mut child);
            let out = out_t.join().unwrap_or_default();
            let err = err_t.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Test data and torrents

/// Writes `len` deterministic pseudo-random bytes (xorshift64*, from `seed`)
/// to `path`, creating parent directories.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dir");
    }
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    // Never zero, and different seeds give unrelated streams.
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        f.write_all(&buf[..n]).expect("write random file");
        left -= n;
    }
}

/// A torrent of a directory `dir` of random files, in a temporary
/// directory: the content at `<tmp>/seed/dir` (what a seeder's data parent
/// `<tmp>/seed` holds), the torrent at `<tmp>/d.torrent`.
pub struct DirTorrent {
    pub dir: tempfile::TempDir,
    pub torrent: PathBuf,
    pub content: PathBuf,
}

impl DirTorrent {
    /// `files`: (path under `dir`, length, seed of its random bytes);
    /// pieces of 2^`piece_len_log2` bytes.
    pub fn new(files: &[(&str, usize, u64)], announce: Option<&str>, piece_len_log2: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("seed/dir");
        for &(name, len, seed) in files {
            random_file(&content.join(name), len, seed);
        }
        let torrent = dir.path().join("d.torrent");
        mktorrent(&content, &torrent, announce, piece_len_log2);
        DirTorrent {
            dir,
            torrent,
            content,
        }
    }

    /// A libtorrent seeder of it on 127.0.0.1.
    pub fn lt_seeder(&self) -> Peer {
        Peer::libtorrent_seed(
            &self.torrent,
            &self.dir.path().join("seed"),
            free_port(),
            "127.0.0.1",
        )
    }
}

/// Makes a v1 torrent of `content_path` (a file or a directory) with
/// 2^`piece_len_log2`-byte pieces (mktorrent accepts 15..=28). With no
/// `announce`, mktorrent writes a trackerless torrent (no `announce` key).
/// Replaces `out_torrent` if it exists (mktorrent itself refuses to).
pub fn mktorrent(
    content_path: &Path,
    out_torrent: &Path,
    announce: Option<&str>,
    piece_len_log2: u32,
) {
    assert!(
        (15..=28).contains(&piece_len_log2),
        "mktorrent only makes pieces of 2^15..2^28 bytes, not 2^{piece_len_log2}"
    );
    let _ = fs::remove_file(out_torrent);
    let mut cmd = Command::new("mktorrent");
    if let Some(url) = announce {
        cmd.args(["-a", url]);
    }
    cmd.args(["-l", &piece_len_log2.to_string()])
        .arg("-o")
        .arg(out_torrent)
        .arg(content_path);
    let out = run_bounded(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "mktorrent failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The v1 info hash (40 lowercase hex) of a .torrent: SHA-1 of the raw
/// bytes of the top-level `info` value, found with a tiny bencode skipper
/// (independent of the crate under test).
pub fn info_hash_of(torrent_path: &Path) -> String {
    let data =
        fs::read(torrent_path).unwrap_or_else(|e| panic!("read {}: {e}", torrent_path.display()));
    let (start, end) = info_span(&data)
        .unwrap_or_else(|| panic!("{}: no info dictionary found", torrent_path.display()));
    sha1_smol::Sha1::from(&data[start..end])
        .digest()
        .to_string()
}

/// The byte range of the top-level `info` value.
fn info_span(data: &[u8]) -> Option<(usize, usize)> {
    if data.first() != Some(&b'd') {
        return None;
    }
    let mut pos = 1;
    while *data.get(pos)? != b'e' {
        let key_start = pos;
        pos = bencode_skip(data, pos)?;
        let key = &data[key_start..pos];
        let value_start = pos;
        pos = bencode_skip(data, pos)?;
        if key == b"4:info" {
            return Some((value_start, pos));
        }
    }
    None
}

/// The position just after the bencoded value starting at `pos`.
fn bencode_skip(data: &[u8], mut pos: usize) -> Option<usize> {
    match *data.get(pos)? {
        b'i' => {
            let end = pos + data.get(pos..)?.iter().position(|&b| b == b'e')?;
            Some(end + 1)
        }
        b'l' | b'd' => {
            pos += 1;
            while *data.get(pos)? != b'e' {
                pos = bencode_skip(data, pos)?;
            }
            Some(pos + 1)
        }
        b'0'..=b'9' => {
            let colon = pos + data.get(pos..)?.iter().position(|&b| b == b':')?;
            let len: usize = std::str::from_utf8(&data[pos..colon]).ok()?.parse().ok()?;
            let end = colon.checked_add(1)?.checked_add(len)?;
            (end <= data.len()).then_some(end)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Comparisons

/// Panics unless the two files have the same length and bytes; names the
/// first differing offset.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    if let Err(e) = compare_files(a, b) {
        panic!("{e}");
    }
}

/// `Ok` if both files have the same length and bytes, else what differs
/// (length, or the first differing offset). Streams in 1 MiB chunks.
pub fn compare_files(a: &Path, b: &Path) -> Result<(), String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let la = fa.metadata().map(|m| m.len()).unwrap_or(0);
    let lb = fb.metadata().map(|m| m.len()).unwrap_or(0);
    if la != lb {
        return Err(format!(
            "lengths differ: {} has {la} bytes, {} has {lb}",
            a.display(),
            b.display()
        ));
    }
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Err(format!(
                "{} and {} differ at offset {} ({:#04x} vs {:#04x})",
                a.display(),
                b.display(),
                offset + i as u64,
                ba[i],
                bb[i]
            ));
        }
        if na != nb {
            return Err(format!(
                "{} and {} changed length while read",
                a.display(),
                b.display()
            ));
        }
        if n == 0 {
            return Ok(());
        }
        offset += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Relative paths of all files (not directories) under `root`.
pub fn list_files(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Panics unless `actual_dir` holds exactly the files of `expected_dir`
/// (recursively, zero-length files included) with the same bytes.
pub fn assert_same_tree(expected_dir: &Path, actual_dir: &Path) {
    if let Err(e) = compare_trees(expected_dir, actual_dir) {
        panic!("{e}");
    }
}

/// `Ok` if `actual_dir` holds exactly the files of `expected_dir`
/// (recursively, zero-length files included) with the same bytes; else the
/// missing and unexpected files, or the first file that differs.
/// Directories themselves are not compared (torrents cannot hold empty ones).
pub fn compare_trees(expected_dir: &Path, actual_dir: &Path) -> Result<(), String> {
    let want = list_files(expected_dir);
    let got = list_files(actual_dir);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!(
            "{} vs {}: missing {missing:?}, unexpected {extra:?}",
            expected_dir.display(),
            actual_dir.display()
        ));
    }
    for rel in &want {
        compare_files(&expected_dir.join(rel), &actual_dir.join(rel))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A loopback DHT of libtorrent sessions

/// `scripts/lt_dht.py`: libtorrent sessions forming a DHT, each on its own
/// loopback address (see the script for its options). Killed by PID on
/// drop.
pub struct LtDht {
    child: Child,
    /// The sessions' ports (TCP and UDP alike).
    pub ports: Vec<u16>,
    /// The sessions' addresses (127.A.B.i:port).
    pub nodes: Vec<SocketAddr>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    _logs: TempDir,
}

impl LtDht {
    /// Starts `lt_dht.py ARGS` and returns once it printed `ready` (every
    /// routing table has a node; a `--seed` is seeding).
    pub fn start(args: &[&str]) -> LtDht {
        let logs = log_dir("rtc-lt-dht-");
        let log = logs.path().join("lt_dht.log");
        let mut child = Command::new(PYTHON)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lt_dht.py"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON} lt_dht.py: {e}"));
        let lines = pipe_stdout(&mut child, &log);
        let mut dht = LtDht {
            child,
            ports: Vec::new(),
            nodes: Vec::new(),
            lines,
            log,
            _logs: logs,
        };
        let ports = dht.wait_line("ports ", STARTUP_TIMEOUT);
        dht.ports = ports
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        let nodes = dht.wait_line("nodes ", STARTUP_TIMEOUT);
        dht.nodes = nodes
            .split_whitespace()
            .map(|a| a.parse().expect("IP:PORT"))
            .collect();
        dht.wait_line("ready", STARTUP_TIMEOUT);
        dht
    }

    /// Session `i`'s DHT node.
    pub fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i]
    }

    /// The rest of the first stdout line starting with `prefix`; panics
    /// with the log after `timeout` or if the script ends first.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(20))
                }
            }
            if let Some(st) = exited(&mut self.child) {
                panic!(
                    "lt_dht.py exited ({st}) before {prefix:?}:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "lt_dht.py: no {prefix:?} within {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the script (by PID) and reaps it: its nodes are gone.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    pub fn log_tail(&self) -> String {
        file_tail(&self.log, 60)
    }
}

impl Drop for LtDht {
    fn drop(&mut self) {
        stop(&mut self.child);
        if thread::panicking() {
            eprintln!("--- lt_dht.py (log tail) ---\n{}", self.log_tail());
        }
    }
}
