//! Attacks on `rtc` while it downloads. In every test an honest real
//! seeder (libtorrent, `scripts/lt_peer.py`) serves the torrent on
//! 127.0.0.1, and attackers written here (raw BitTorrent peers over TCP, or
//! a fake HTTP tracker) try to slow the download down or stop it.
//!
//! Each test runs the `rtc` binary twice, into fresh directories: once with
//! no attack, to measure how long the download takes on this machine, and
//! once with the attack in place. The attacked download must produce the
//! same bytes as the source and take at most [`bound`] (2 x unattacked +
//! 10 s); rtc is killed when the bound runs out, so a successful attack is
//! a prompt assertion failure that names the test, never a hang. Each test
//! prints `MEASURE <test>: unattacked X s attacked Y s` (and any other
//! figure it measures: peak RSS, CPU time) on stderr.
//!
//! rtc's peak RSS (`VmHWM`), CPU time (utime + stime) and bytes written
//! (`wchar`) are sampled from `/proc/<pid>` every 20 ms while it runs.
//!
//! Tests take a lock so that they run one at a time: they measure time and
//! CPU on a small machine, and two of them at once would skew each other.
//! Attacker threads check a stop flag at least every 200 ms and end with a
//! hard deadline; `Drop` stops and joins them.

mod common;

use common::fake_http::{Answer, FakeTracker};
use common::*;
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long an attacked download may take, given the unattacked one.
fn bound(unattacked: Duration) -> Duration {
    unattacked * 2 + Duration::from_secs(10)
}

/// An unattacked download that takes longer than this is a broken set-up,
/// not a measurement.
const BASELINE_LIMIT: Duration = Duration::from_secs(60);

/// Every attacker thread ends by itself after this long, whatever happens.
const ATTACKER_LIFETIME: Duration = Duration::from_secs(180);

/// One test at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Torrents

/// A source file and its single-file v1 torrent.
struct Setup {
    dir: TempDir,
    src: PathBuf,
    torrent: PathBuf,
    info_hash: [u8; 20],
    piece_len: u32,
    pieces: u32,
    total: u64,
}

impl Setup {
    /// `len` pseudo-random bytes in pieces of `piece_len` (16 KiB allowed:
    /// the torrent is written here, not by mktorrent).
    fn random(len: usize, piece_len: u32, seed: u64, announce: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("seed/data.bin");
        random_file(&src, len, seed);
        let data = fs::read(&src).unwrap();
        let hashes: Vec<u8> = data
            .chunks(piece_len as usize)
            .flat_map(|c| sha1_smol::Sha1::from(c).digest().bytes())
            .collect();
        Setup::finish(dir, src, len as u64, piece_len, &hashes, announce)
    }

    /// A sparse all-zero file of `len` bytes: every piece has the same hash,
    /// so the torrent is built without reading the data.
    fn zeros(len: u64, piece_len: u32) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("seed/zero.bin");
        fs::create_dir_all(src.parent().unwrap()).unwrap();
        File::create(&src).unwrap().set_len(len).unwrap();
        assert_eq!(len % piece_len as u64, 0);
        let one = sha1_smol::Sha1::from(vec![0u8; piece_len as usize])
            .digest()
            .bytes();
        let hashes = one.repeat((len / piece_len as u64) as usize);
        Setup::finish(dir, src, len, piece_len, &hashes, None)
    }

    fn finish(
        dir: TempDir,
        src: PathBuf,
        total: u64,
        piece_len: u32,
        hashes: &[u8],
        announce: Option<&str>,
    ) -> Setup {
        let torrent = dir.path().join("t.torrent");
        let name = src.file_name().unwrap().to_str().unwrap();
        fs::write(
            &torrent,
            torrent_bytes(name, total, piece_len, hashes, announce),
        )
        .unwrap();
        let hex = info_hash_of(&torrent);
        let mut info_hash = [0u8; 20];
        for (i, b) in info_hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        Setup {
            dir,
            src,
            torrent,
            info_hash,
            piece_len,
            pieces: (hashes.len() / 20) as u32,
            total,
        }
    }

    fn seed_dir(&self) -> PathBuf {
        self.dir.path().join("seed")
    }

    /// A fresh output directory for one run.
    fn out_dir(&self, label: &str) -> PathBuf {
        self.dir.path().join(format!("out-{label}"))
    }

    fn out_file(&self, label: &str) -> PathBuf {
        self.out_dir(label).join(self.src.file_name().unwrap())
    }

    /// The honest seeder: libtorrent on 127.0.0.1.
    fn seeder(&self, extra: &[&str]) -> Peer {
        Peer::libtorrent_seed_with(
            &self.torrent,
            &self.seed_dir(),
            free_port(),
            "127.0.0.1",
            extra,
        )
    }

    /// A full bitfield for this torrent.
    fn full_bitfield(&self) -> Vec<u8> {
        let mut bits = vec![0xffu8; self.pieces.div_ceil(8) as usize];
        let spare = bits.len() as u32 * 8 - self.pieces;
        *bits.last_mut().unwrap() &= 0xffu8 << spare;
        bits
    }
}

/// A bencoded single-file v1 torrent.
fn torrent_bytes(
    name: &str,
    length: u64,
    piece_len: u32,
    hashes: &[u8],
    announce: Option<&str>,
) -> Vec<u8> {
    let mut t = b"d".to_vec();
    if let Some(url) = announce {
        t.extend_from_slice(format!("8:announce{}:{url}", url.len()).as_bytes());
    }
    t.extend_from_slice(
        format!(
            "4:infod6:lengthi{length}e4:name{}:{name}12:piece lengthi{piece_len}e6:pieces{}:",
            name.len(),
            hashes.len()
        )
        .as_bytes(),
    );
    t.extend_from_slice(hashes);
    t.extend_from_slice(b"ee");
    t
}

/// How many pieces of `out` equal the source's (progress of a run that
/// was stopped).
fn pieces_on_disk(src: &Path, out: &Path, piece_len: u32) -> usize {
    let (Ok(mut a), Ok(mut b)) = (File::open(src), File::open(out)) else {
        return 0;
    };
    let mut x = vec![0u8; piece_len as usize];
    let mut y = vec![0u8; piece_len as usize];
    let mut same = 0;
    loop {
        let n = read_up_to(&mut a, &mut x);
        if n == 0 || read_up_to(&mut b, &mut y) != n {
            return same;
        }
        if x[..n] == y[..n] {
            same += 1;
        }
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

// ---------------------------------------------------------------------------
// rtc as a subprocess, watched through /proc

/// What `/proc/<pid>` said last.
#[derive(Clone, Copy, Default)]
struct Sample {
    cpu: Duration,
    peak_rss_kib: u64,
    wchar: u64,
}

/// How one run of rtc went.
struct Run {
    /// `None`: still running at the limit, and killed.
    status: Option<ExitStatus>,
    elapsed: Duration,
    last: Sample,
    log: String,
}

impl Run {
    fn finished_ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn log_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn how(&self) -> String {
        match self.status {
            None => format!("still running after {:.1}s, killed", secs(self.elapsed)),
            Some(s) => format!("exited ({s}) after {:.1}s", secs(self.elapsed)),
        }
    }
}

/// A running `rtc -v`; killed (by PID) on Drop.
struct Rtc {
    child: Child,
    started: Instant,
    log: PathBuf,
    last: Sample,
}

/// USER_HZ: the unit of utime and stime in /proc/<pid>/stat (100 on every
/// Linux architecture this runs on).
const CLOCK_TICKS: u64 = 100;

impl Rtc {
    /// Downloads `s`'s torrent into a fresh `out-<label>` directory.
    fn start(s: &Setup, label: &str, extra: &[String]) -> Rtc {
        let out = s.out_dir(label);
        let _ = fs::remove_dir_all(&out);
        let log = s.dir.path().join(format!("rtc-{label}.log"));
        let child = rtc_cmd()
            .arg("-v")
            .arg("-o")
            .arg(&out)
            .args(["--port", &free_port().to_string(), "--timeout", "30"])
            .args(extra)
            .arg(&s.torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run rtc: {e}"));
        Rtc {
            child,
            started: Instant::now(),
            log,
            last: Sample::default(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The port rtc listens on (from its `listening on port N` log line).
    fn listen_port(&self) -> u16 {
        let mut port = None;
        wait_for(Duration::from_secs(10), "rtc to listen", || {
            port = self
                .log_text()
                .lines()
                .find_map(|l| l.split("listening on port ").nth(1)?.trim().parse().ok());
            port.is_some()
        });
        port.unwrap()
    }

    /// Reads /proc/<pid>; returns true once the process has exited (a
    /// zombie: its CPU times are final, its memory is gone).
    fn sample(&mut self) -> bool {
        let pid = self.pid();
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return true;
        };
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let zombie = rest.first() == Some(&"Z");
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| rest.get(i)?.parse::<u64>().ok())
            .sum();
        if ticks > 0 {
            self.last.cpu = Duration::from_millis(ticks * 1000 / CLOCK_TICKS);
        }
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = proc_field(&status, "VmHWM:") {
                self.last.peak_rss_kib = self.last.peak_rss_kib.max(kib);
            }
        }
        if let Ok(io) = fs::read_to_string(format!("/proc/{pid}/io")) {
            if let Some(w) = proc_field(&io, "wchar:") {
                self.last.wchar = self.last.wchar.max(w);
            }
        }
        zombie
    }

    /// Waits for rtc to exit, or kills it once `limit` has passed since it
    /// started.
    fn finish(mut self, limit: Duration) -> Run {
        let deadline = self.started + limit;
        let status = loop {
            let zombie = self.sample();
            if zombie || Instant::now() >= deadline {
                if let Ok(Some(st)) = self.child.try_wait() {
                    break Some(st);
                }
                if Instant::now() >= deadline {
                    break None;
                }
            }
            thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed().min(limit);
        let _ = self.child.kill();
        let _ = self.child.wait();
        Run {
            status,
            elapsed,
            last: self.last,
            log: self.log_text(),
        }
    }
}

impl Drop for Rtc {
    fn drop(&mut self) {
        let _ = self.child.kill(); // this PID only
        let _ = self.child.wait();
    }
}

/// CPU time (utime + stime, all threads) of a process so far.
fn proc_cpu(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| rest.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 1000 / CLOCK_TICKS)
}

/// The number after `key` in a /proc text file (`VmHWM:  1234 kB`).
fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn peer_args(peers: &[SocketAddr]) -> Vec<String> {
    peers
        .iter()
        .flat_map(|p| ["--peer".to_string(), p.to_string()])
        .collect()
}

/// Panics unless the unattacked run completed with the right bytes.
fn expect_baseline(test: &str, s: &Setup, run: &Run) {
    assert!(
        run.finished_ok(),
        "{test}: the UNATTACKED download failed ({}): the set-up is broken\n{}",
        run.how(),
        run.log_tail(30)
    );
    assert_same_bytes(&s.src, &s.out_file("unattacked"));
}

/// Prints the MEASURE line, then checks that the attacked run completed
/// within `bound(unattacked)` with the right bytes.
fn judge(test: &str, s: &Setup, base: &Run, attacked: &Run) {
    let limit = bound(base.elapsed);
    eprintln!(
        "MEASURE {test}: unattacked {:.2}s attacked {:.2}s{}",
        secs(base.elapsed),
        secs(attacked.elapsed),
        if attacked.status.is_none() {
            " (unfinished, killed at the bound)"
        } else {
            ""
        }
    );
    if let Ok(dir) = std::env::var("ATTACK_LOG_DIR") {
        // Keep the full rtc log for a look after the test.
        let _ = fs::write(Path::new(&dir).join(format!("{test}.log")), &attacked.log);
    }
    if !attacked.finished_ok() {
        let done = pieces_on_disk(&s.src, &s.out_file("attacked"), s.piece_len);
        panic!(
            "{test}: the attacked download did not complete within {:.1}s \
             (2 x unattacked {:.2}s + 10s): rtc {}; {done} of {} pieces on disk\n\
             --- rtc log (tail) ---\n{}",
            secs(limit),
            secs(base.elapsed),
            attacked.how(),
            s.pieces,
            attacked.log_tail(40)
        );
    }
    assert_same_bytes(&s.src, &s.out_file("attacked"));
    assert!(
        attacked.elapsed <= limit,
        "{test}: attacked download took {:.2}s, more than {:.2}s",
        secs(attacked.elapsed),
        secs(limit)
    );
}

// ---------------------------------------------------------------------------
// Raw attacker peers

/// Stop flag plus a hard deadline, shared by all threads of one crew.
#[derive(Clone)]
struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Instant,
}

impl Stop {
    fn now(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }
}

/// What an attacker does once the handshakes are exchanged.
type Behaviour = Arc<dyn Fn(&mut Wire, &Stop) -> io::Result<()> + Send + Sync>;

/// Counters over all connections of a crew.
#[derive(Default)]
struct Counters {
    /// Connections open now, past the handshake.
    held: AtomicUsize,
    /// The most connections open at once.
    max_held: AtomicUsize,
    /// Handshakes completed, ever.
    handshakes: AtomicUsize,
    /// Outgoing attempts rtc closed without a handshake (slot refused).
    refused: AtomicUsize,
    /// Blocks served.
    blocks: AtomicU64,
    /// Messages sent by flooders.
    flood_msgs: AtomicU64,
}

impl Counters {
    fn hold(&self) {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_held.fetch_max(now, Ordering::SeqCst);
    }
}

/// A group of attacker threads; Drop stops and joins every one of them.
struct Crew {
    stop: Stop,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    info_hash: [u8; 20],
    stats: Arc<Counters>,
}

impl Crew {
    fn new(info_hash: [u8; 20]) -> Crew {
        Crew {
            stop: Stop {
                flag: Arc::new(AtomicBool::new(false)),
                deadline: Instant::now() + ATTACKER_LIFETIME,
            },
            threads: Arc::new(Mutex::new(Vec::new())),
            info_hash,
            stats: Arc::new(Counters::default()),
        }
    }

    fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let h = thread::spawn(f);
        self.threads.lock().unwrap().push(h);
    }

    /// `n` listeners on 127.0.0.1 that rtc connects to; each accepted
    /// connection gets `behaviour(i)` where `i` is its listener's index.
    fn listen(
        &self,
        n: usize,
        behaviour: impl Fn(usize) -> Behaviour + Send + 'static,
    ) -> Vec<SocketAddr> {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let stop = self.stop.clone();
        let threads = Arc::clone(&self.threads);
        let stats = Arc::clone(&self.stats);
        let info_hash = self.info_hash;
        self.spawn(move || {
            while !stop.now() {
                let mut idle = true;
                for (i, l) in listeners.iter().enumerate() {
                    let Ok((s, _)) = l.accept() else { continue };
                    idle = false;
                    let (stop, stats, b) = (stop.clone(), Arc::clone(&stats), behaviour(i));
                    let h = thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        if let Ok(mut w) = Wire::handshake(s, &info_hash, &stop) {
                            stats.handshakes.fetch_add(1, Ordering::SeqCst);
                            stats.hold();
                            let _ = b(&mut w, &stop);
                            stats.held.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                    threads.lock().unwrap().push(h);
                }
                if idle {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        });
        addrs
    }

    /// `n` threads that connect to rtc at `target`, handshake and run
    /// `behaviour`; whenever rtc closes a connection (or refuses it), the
    /// thread connects again a second later. `settled` counts threads whose
    /// first attempt has ended one way or the other.
    fn connect(&self, n: usize, target: SocketAddr, behaviour: Behaviour) -> Arc<AtomicUsize> {
        let settled = Arc::new(AtomicUsize::new(0));
        for _ in 0..n {
            let (stop, stats, b) = (
                self.stop.clone(),
                Arc::clone(&self.stats),
                Arc::clone(&behaviour),
            );
            let settled = Arc::clone(&settled);
            let info_hash = self.info_hash;
            self.spawn(move || {
                let mut first = true;
                while !stop.now() {
                    let attempt = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                        .and_then(|s| Wire::handshake(s, &info_hash, &stop));
                    match attempt {
                        Ok(mut w) => {
                            stats.handshakes.fetch_add(1, Ordering::SeqCst);
                            stats.hold();
                            if first {
                                settled.fetch_add(1, Ordering::SeqCst);
                                first = false;
                            }
                            let _ = b(&mut w, &stop);
                            stats.held.fetch_sub(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            stats.refused.fetch_add(1, Ordering::SeqCst);
                            if first {
                                settled.fetch_add(1, Ordering::SeqCst);
                                first = false;
                            }
                        }
                    }
                    pause(&stop, Duration::from_secs(1));
                }
            });
        }
        settled
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.stop.flag.store(true, Ordering::SeqCst);
        // The accept loop may add connection threads until it is joined.
        loop {
            let batch = std::mem::take(&mut *self.threads.lock().unwrap());
            if batch.is_empty() {
                break;
            }
            for h in batch {
                let _ = h.join();
            }
        }
    }
}

/// Sleeps `d` in short steps, returning early on stop.
fn pause(stop: &Stop, d: Duration) {
    let end = Instant::now() + d;
    while !stop.now() && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
}

/// One attacker connection: the socket and the bytes read but not parsed.
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

/// How long one blocking socket call may take before the stop flag is
/// looked at again.
const STEP: Duration = Duration::from_millis(200);

impl Wire {
    /// Sends our handshake and reads rtc's (either side may speak first:
    /// rtc answers an incoming connection only after reading ours, and
    /// sends its own first on connections it opens).
    fn handshake(s: TcpStream, info_hash: &[u8; 20], stop: &Stop) -> io::Result<Wire> {
        s.set_write_timeout(Some(STEP))?;
        s.set_nodelay(true)?;
        let mut w = Wire { s, buf: Vec::new() };
        let mut hs = [0u8; 68];
        hs[0] = 19;
        hs[1..20].copy_from_slice(b"BitTorrent protocol");
        hs[28..48].copy_from_slice(info_hash);
        hs[48..56].copy_from_slice(b"-XX0001-");
        hs[56..68].copy_from_slice(&random_bytes::<12>());
        w.send(&hs, stop)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.buf.len() < 68 {
            if stop.now() || Instant::now() > deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            w.fill(STEP)?;
        }
        if w.buf[0] != 19 || &w.buf[1..20] != b"BitTorrent protocol" {
            return Err(io::ErrorKind::InvalidData.into());
        }
        w.buf.drain(..68);
        Ok(w)
    }

    /// Writes all of `bytes`, looking at the stop flag while the peer is
    /// not reading.
    fn send(&mut self, bytes: &[u8], stop: &Stop) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            if stop.now() {
                return Err(io::ErrorKind::Interrupted.into());
            }
            match self.s.write(&bytes[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One read of at most `wait`; Err on EOF.
    fn fill(&mut self, wait: Duration) -> io::Result<()> {
        self.s
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if is_timeout(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads for at most `wait` and returns the whole messages received
    /// (id and payload; keep-alives left out).
    fn recv(&mut self, wait: Duration) -> io::Result<Vec<Vec<u8>>> {
        self.fill(wait)?;
        let mut msgs = Vec::new();
        while self.buf.len() >= 4 {
            let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
            if len > 4 * 1024 * 1024 {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if self.buf.len() < 4 + len {
                break;
            }
            let msg: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
            if !msg.is_empty() {
                msgs.push(msg);
            }
        }
        Ok(msgs)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("random bytes from the operating system");
    out
}

fn frame(id: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(body);
    v
}

const UNCHOKE: u8 = 1;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;
const CANCEL: u8 = 8;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// Handshake, then silence: reads and ignores everything, sends a
/// keep-alive every 60 s (so no idle timeout ever fires).
fn idle() -> Behaviour {
    Arc::new(|w: &mut Wire, stop: &Stop| {
        let mut last = Instant::now();
        while !stop.now() {
            w.recv(STEP)?;
            if last.elapsed() >= Duration::from_secs(60) {
                w.send(&[0, 0, 0, 0], stop)?;
                last = Instant::now();
            }
        }
        Ok(())
    })
}

/// Where served blocks come from.
#[derive(Clone)]
enum Data {
    /// The torrent is all zeros.
    Zeros,
    /// The whole source file.
    Bytes(Arc<Vec<u8>>),
}

/// A seeder-like attacker: sends `bitfield`, unchokes, queues requests for
/// pieces it claims and answers them with correct data, one block per
/// `pace` (the first at once).
/// A `serve` pace that means "never answer".
const SILENT: Duration = Duration::from_secs(3600);

fn serve(
    bitfield: Vec<u8>,
    pace: Duration,
    data: Data,
    piece_len: u32,
    total: u64,
    stats: Arc<Counters>,
) -> Behaviour {
    Arc::new(move |w: &mut Wire, stop: &Stop| {
        let claims = |i: u32| {
            bitfield
                .get(i as usize / 8)
                .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
        };
        w.send(&frame(BITFIELD, &bitfield), stop)?;
        w.send(&frame(UNCHOKE, &[]), stop)?;
        let mut queue: VecDeque<(u32, u32, u32)> = VecDeque::new();
        // The first block goes at once, unless the pace is `SILENT` or
        // more: then the peer never answers within a test.
        let mut last_sent: Option<Instant> = (pace >= SILENT).then(Instant::now);
        while !stop.now() {
            let due = last_sent.map_or(Duration::ZERO, |t| pace.saturating_sub(t.elapsed()));
            let wait = if queue.is_empty() {
                STEP
            } else {
                due.min(STEP)
            };
            for m in w.recv(wait)? {
                match (m[0], m.len()) {
                    (REQUEST, 13) => {
                        let r = (be32(&m[1..]), be32(&m[5..]), be32(&m[9..]));
                        if claims(r.0) {
                            queue.push_back(r);
                        }
                    }
                    (CANCEL, 13) => {
                        let r = (be32(&m[1..]), be32(&m[5..]), be32(&m[9..]));
                        queue.retain(|q| *q != r);
                    }
                    _ => {}
                }
            }
            if queue.is_empty() || last_sent.is_some_and(|t| t.elapsed() < pace) {
                continue;
            }
            let (index, begin, len) = queue.pop_front().unwrap();
            let at = index as u64 * piece_len as u64 + begin as u64;
            if len > 16 * 1024 || at + len as u64 > total {
                continue;
            }
            let mut body = index.to_be_bytes().to_vec();
            body.extend_from_slice(&begin.to_be_bytes());
            match &data {
                Data::Zeros => body.resize(8 + len as usize, 0),
                Data::Bytes(b) => {
                    body.extend_from_slice(&b[at as usize..(at + len as u64) as usize])
                }
            }
            w.send(&frame(PIECE, &body), stop)?;
            last_sent = Some(Instant::now());
            stats.blocks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })
}

/// Sends full bitfields back to back, as fast as rtc reads them; never
/// unchokes, never serves. Counts messages in `sent`.
fn flood_bitfields(bitfield: Vec<u8>, sent: Arc<Counters>) -> Behaviour {
    Arc::new(move |w: &mut Wire, stop: &Stop| {
        let one = frame(BITFIELD, &bitfield);
        let per_batch = (256 * 1024 / one.len()).max(1);
        let batch = one.repeat(per_batch);
        // rtc says little (interested, haves); a second thread drains it,
        // so the flood never waits on a read (socket read timeouts are
        // rounded up to the kernel's jiffies: several ms).
        let mut rd = w.s.try_clone()?;
        let st = stop.clone();
        let drain = thread::spawn(move || {
            let _ = rd.set_read_timeout(Some(STEP));
            let mut sink = [0u8; 4096];
            while !st.now() {
                match rd.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        });
        let mut result = Ok(());
        while !stop.now() && result.is_ok() {
            result = w.send(&batch, stop);
            sent.flood_msgs
                .fetch_add(per_batch as u64, Ordering::Relaxed);
        }
        let _ = w.s.shutdown(std::net::Shutdown::Both);
        let _ = drain.join();
        result
    })
}

/// A bitfield claiming about `percent`% of `pieces`, from `seed`.
fn random_claims(pieces: u32, percent: u32, seed: u64) -> Vec<u8> {
    let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..pieces {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 100 < percent as u64 {
            bits[i as usize / 8] |= 0x80 >> (i % 8);
        }
    }
    bits
}

// ---------------------------------------------------------------------------
// The attacks

const MIB: usize = 1024 * 1024;

/// Peers in the huge tracker reply: 349,525 x 6 bytes = 2 MiB of compact
/// peers.
const HUGE_PEERS: usize = 349_525;

/// A compact (BEP 23) announce reply.
fn compact_reply(peers: &[SocketAddrV4]) -> Vec<u8> {
    let mut body = format!("d8:intervali1800e5:peers{}:", peers.len() * 6).into_bytes();
    for p in peers {
        body.extend_from_slice(&p.ip().octets());
        body.extend_from_slice(&p.port().to_be_bytes());
    }
    body.push(b'e');
    body
}

/// A tracker answers with 349,525 compact peers (2 MiB): distinct loopback
/// addresses 127.a.b.c on a port where nothing listens (each connect is
/// refused at once), with the honest seeder 10 entries from the end. rtc
/// must still find the seeder and finish in time; its peak RSS is reported.
#[test]
fn huge_tracker_reply() {
    const TEST: &str = "huge_tracker_reply";
    let _serial = serial();
    // What the tracker answers; set below once the seeder's port is known.
    let reply = Arc::new(Mutex::new(compact_reply(&[])));
    let r = Arc::clone(&reply);
    let tracker = FakeTracker::start_for(
        Answer::Dynamic(Box::new(move |_req| r.lock().unwrap().clone())),
        Duration::from_secs(150),
    );
    let s = Setup::random(16 * MIB, 256 * 1024, 101, Some(&tracker.url));
    let seeder = s.seeder(&[]);
    let SocketAddr::V4(v4) = seeder.addr() else {
        unreachable!("the seeder listens on 127.0.0.1")
    };
    *reply.lock().unwrap() = compact_reply(&[v4]);
    let base = Rtc::start(&s, "unattacked", &[]).finish(BASELINE_LIMIT);
    expect_baseline(TEST, &s, &base);

    // Nothing listens on this port (on any loopback address).
    let dead_port = free_port();
    assert!(!port_accepts(SocketAddr::from(([127, 1, 0, 0], dead_port))));
    let mut peers: Vec<SocketAddrV4> = (0..HUGE_PEERS as u32 - 1)
        .map(|i| {
            let [_, a, b, c] = (i + 65536).to_be_bytes();
            SocketAddrV4::new(Ipv4Addr::new(127, a, b, c), dead_port)
        })
        .collect();
    peers.insert(HUGE_PEERS - 10, v4);
    let huge = compact_reply(&peers);
    let huge_len = huge.len();
    *reply.lock().unwrap() = huge;
    let attacked = Rtc::start(&s, "attacked", &[]).finish(bound(base.elapsed));
    eprintln!(
        "MEASURE {TEST}: peak RSS unattacked {:.1} MiB attacked {:.1} MiB; reply {} bytes",
        base.last.peak_rss_kib as f64 / 1024.0,
        attacked.last.peak_rss_kib as f64 / 1024.0,
        huge_len
    );
    judge(TEST, &s, &base, &attacked);
    drop(tracker);
}

/// 50 attackers accept rtc's connections, answer with a correct handshake
/// and then say nothing (a keep-alive every 60 s). rtc is given them first
/// and the honest seeder last, with `--max-peers 50`: idle peers must not
/// keep it from ever trying the seeder.
#[test]
fn idle_peers_hold_outbound_slots() {
    const TEST: &str = "idle_peers_hold_outbound_slots";
    let _serial = serial();
    let s = Setup::random(16 * MIB, 256 * 1024, 102, None);
    let seeder = s.seeder(&[]);
    let max = ["--max-peers".to_string(), "50".to_string()];

    let mut args = max.to_vec();
    args.extend(peer_args(&[seeder.addr()]));
    let base = Rtc::start(&s, "unattacked", &args).finish(BASELINE_LIMIT);
    expect_baseline(TEST, &s, &base);

    let crew = Crew::new(s.info_hash);
    let mut peers = crew.listen(50, |_| idle());
    peers.push(seeder.addr());
    let mut args = max.to_vec();
    args.extend(peer_args(&peers));
    let attacked = Rtc::start(&s, "attacked", &args).finish(bound(base.elapsed));
    eprintln!(
        "MEASURE {TEST}: {} attacker connections handshaken, at most {} open at once",
        crew.stats.handshakes.load(Ordering::SeqCst),
        crew.stats.max_held.load(Ordering::SeqCst)
    );
    judge(TEST, &s, &base, &attacked);
}

/// rtc downloads from a seeder it cannot reach at first: `--peer` names a
/// port where libtorrent starts only once rtc is running (rtc retries
/// failed peers with backoff). Meanwhile 60 attacker connections come IN
/// to rtc's port, handshake and sit idle, reconnecting a second after rtc
/// closes one. Incoming peers must not take every slot: rtc must still
/// reach the seeder. The unattacked run starts the seeder the same way.
#[test]
fn idle_peers_flood_inbound_while_leeching() {
    const TEST: &str = "idle_peers_flood_inbound_while_leeching";
    const ATTACKERS: usize = 60;
    let _serial = serial();
    let s = Setup::random(16 * MIB, 256 * 1024, 103, None);
    let run = |label: &str, attack: bool, limit: Duration| {
        let seed_port = free_port();
        let target: SocketAddr = ([127, 0, 0, 1], seed_port).into();
        let rtc = Rtc::start(&s, label, &peer_args(&[target]));
        let port = rtc.listen_port();
        let crew = Crew::new(s.info_hash);
        if attack {
            let settled = crew.connect(ATTACKERS, ([127, 0, 0, 1], port).into(), idle());
            wait_for(
                Duration::from_secs(15),
                "every attacker's first connection to be answered or refused",
                || settled.load(Ordering::SeqCst) == ATTACKERS,
            );
            eprintln!(
                "MEASURE {TEST}: {} attackers hold a connection, {} refused, before the seeder starts",
                crew.stats.held.load(Ordering::SeqCst),
                crew.stats.refused.load(Ordering::SeqCst)
            );
        }
        let _seeder = Peer::libtorrent_seed(&s.torrent, &s.seed_dir(), seed_port, "127.0.0.1");
        let r = rtc.finish(limit);
        if attack {
            eprintln!(
                "MEASURE {TEST}: {} attacker handshakes in all, {} refused",
                crew.stats.handshakes.load(Ordering::SeqCst),
                crew.stats.refused.load(Ordering::SeqCst)
            );
        }
        r
    };
    let base = run("unattacked", false, BASELINE_LIMIT);
    expect_baseline(TEST, &s, &base);
    let attacked = run("attacked", true, bound(base.elapsed));
    judge(TEST, &s, &base, &attacked);
}

/// 20 attackers send a full bitfield, unchoke, and answer requests with one
/// correct 16 KiB block every 25 s (under rtc's 30 s stall limit, so they
/// are never dropped as stalled, and never fail a hash check). Beside them
/// the honest seeder. Torrent: 16 MiB in 16 KiB pieces (1,024 pieces, one
/// block each). rtc must not leave the last pieces with the trickling peers.
#[test]
fn trickle_peers_at_the_end() {
    let s = Setup::random(16 * MIB, 16 * 1024, 104, None);
    claimers_beside_a_seeder("trickle_peers_at_the_end", &s, &[], Duration::from_secs(25));
}

/// 20 attackers send a full bitfield, unchoke, and never send a block:
/// they take their first pieces and hold them. In endgame the seeder
/// copies and completes those, which leaves the claimers hungry: they must
/// not then fill every remaining piece's copies (only peers that have
/// delivered get copies), or the seeder waits 30 s for the copy limit to
/// lift.
#[test]
fn silent_claimers_at_the_end() {
    // 32 MiB in 1 MiB pieces from a seeder capped at 8 MB/s: about 4 s,
    // long enough for the claimers' pieces to be copied and completed by
    // the seeder, which leaves the claimers hungry in endgame.
    let s = Setup::random(32 * MIB, 1 << 20, 105, None);
    claimers_beside_a_seeder(
        "silent_claimers_at_the_end",
        &s,
        &["--upload-limit", "8000000"],
        SILENT,
    );
}

/// rtc downloads `s` from a libtorrent seeder (`seeder_args`), alone and
/// then beside 20 attackers that claim every piece, unchoke, and answer
/// one block per `pace`.
fn claimers_beside_a_seeder(test: &str, s: &Setup, seeder_args: &[&str], pace: Duration) {
    let _serial = serial();
    let seeder = s.seeder(seeder_args);
    let base = Rtc::start(s, "unattacked", &peer_args(&[seeder.addr()])).finish(BASELINE_LIMIT);
    expect_baseline(test, s, &base);

    let crew = Crew::new(s.info_hash);
    let data = Data::Bytes(Arc::new(fs::read(&s.src).unwrap()));
    let (bits, pl, total) = (s.full_bitfield(), s.piece_len, s.total);
    let stats = Arc::clone(&crew.stats);
    let mut peers = crew.listen(20, move |_| {
        serve(
            bits.clone(),
            pace,
            data.clone(),
            pl,
            total,
            Arc::clone(&stats),
        )
    });
    peers.push(seeder.addr());
    let attacked = Rtc::start(s, "attacked", &peer_args(&peers)).finish(bound(base.elapsed));
    eprintln!(
        "MEASURE {test}: {} claimer connections, {} blocks served by them",
        crew.stats.handshakes.load(Ordering::SeqCst),
        crew.stats.blocks.load(Ordering::Relaxed)
    );
    judge(test, s, &base, &attacked);
}

/// An attacker sends full bitfields back to back, as fast as rtc reads
/// them, and never unchokes; the honest seeder beside it. rtc must finish
/// in time; its CPU time with and without the flood is reported.
/// Torrent: 16 MiB in 16 KiB pieces (a 128-byte bitfield per message). The
/// seeder is held to 4 MB/s so that the download, and the flood, last a
/// few seconds (unlimited, it is over in a tenth of a second).
#[test]
fn bitfield_flood() {
    const TEST: &str = "bitfield_flood";
    let _serial = serial();
    let s = Setup::random(16 * MIB, 16 * 1024, 105, None);
    let seeder = s.seeder(&["--upload-limit", "4000000"]);
    let base = Rtc::start(&s, "unattacked", &peer_args(&[seeder.addr()])).finish(BASELINE_LIMIT);
    expect_baseline(TEST, &s, &base);

    let crew = Crew::new(s.info_hash);
    let (bits, stats) = (s.full_bitfield(), Arc::clone(&crew.stats));
    let flooder = crew.listen(1, move |_| {
        flood_bitfields(bits.clone(), Arc::clone(&stats))
    });
    let attacked = Rtc::start(&s, "attacked", &peer_args(&[flooder[0], seeder.addr()]))
        .finish(bound(base.elapsed));
    eprintln!(
        "MEASURE {TEST}: rtc CPU unattacked {:.2}s attacked {:.2}s; {} bitfields sent",
        secs(base.last.cpu),
        secs(attacked.last.cpu),
        crew.stats.flood_msgs.load(Ordering::Relaxed)
    );
    drop(crew);
    judge(TEST, &s, &base, &attacked);
}

/// Window of each run of `partial_peers_many_pieces`.
const WINDOW: Duration = Duration::from_secs(12);
/// rtc's CPU per downloaded GiB with the partial attackers, at most this
/// many times its CPU per GiB without them. Measured on 2 cores with the
/// same code (issue 9's, 9a4bde1) on different runs: 9.0 -> 14.7 and
/// 7.7 -> 17.6 CPU-s per GiB, ratios of 1.6 to 2.3 (later code: 2.1-2.3):
/// a bound of 2 sat inside that noise. What the attack must not do is make
/// the cost grow without bound; the per-pick walk of the peer's bitfield
/// that dominates it (`picker::for_each_set`, 11% of rtc's CPU under
/// perf) is issue 13's to cut.
const CPU_FACTOR: f64 = 3.0;
const GIB: f64 = (1u64 << 30) as f64;

/// 50 attackers each claim a random ~1% of a torrent of 262,144 pieces
/// (bitfield), unchoke, and serve what they claim correctly but slowly
/// (one 16 KiB block per 20 ms each, rounded up by the kernel's timer to
/// roughly 30 MiB/s together); the honest seeder beside them, first in
/// rtc's peer list, with `--max-peers 60` so that every peer gets a slot
/// (slots are `idle_peers_hold_outbound_slots`' subject).
///
/// Why serve, and slowly: every block an attacker delivers completes a
/// piece (one block per piece) and makes rtc pick a new piece for that
/// peer from a 1% bitfield, about 2,000 picks a second over 262,144
/// pieces, which is what this test is about, while every completed piece
/// is announced (`have`) to 50 peers that lack it. Silent attackers would
/// only hold their first pieces until rtc's stall timeout, and fast ones
/// would just be more seeders.
///
/// Feasibility: 262,144 pieces of 16 KiB (libtorrent's minimum) is 4 GiB.
/// The file is sparse and all zero, so every piece hash is the same and
/// the torrent is written here without hashing; libtorrent seeds it in
/// seed mode (`lt_peer.py --seed-mode`: no 9 s check, each piece hashed
/// when first sent), and the attackers serve zeros. A full unattacked
/// download takes about 70 s on a 2-core machine, too long to run twice,
/// so each run lasts a fixed `WINDOW` and rtc is then killed:
/// - the rate (bytes rtc wrote, `wchar`) gives a projected time for the
///   whole torrent, held to the usual `bound`;
/// - rtc's CPU time per GiB written is held to `CPU_FACTOR` x its
///   unattacked figure. CPU per second per attacker is reported too, but
///   not asserted: on two cores rtc is CPU-bound in both runs, so its CPU
///   per second hardly changes while its throughput falls.
///
/// A fresh seeder serves each run, so the attacked run gets no pieces that
/// libtorrent already verified in seed mode.
#[test]
fn partial_peers_many_pieces() {
    const TEST: &str = "partial_peers_many_pieces";
    const ATTACKERS: usize = 50;
    let _serial = serial();
    let s = Setup::zeros(4 << 30, 16 * 1024);
    assert_eq!(s.pieces, 262_144);
    let window = |label: &str, attackers: &[SocketAddr], seeder: &Peer| {
        // The seeder first, and room for everyone: this test is about piece
        // selection, not connection slots.
        let mut peers = vec![seeder.addr()];
        peers.extend_from_slice(attackers);
        let mut args = vec!["--max-peers".to_string(), "60".to_string()];
        args.extend(peer_args(&peers));
        let r = Rtc::start(&s, label, &args).finish(WINDOW);
        let _ = fs::remove_dir_all(s.out_dir(label)); // up to a few GiB
        assert!(
            r.status.is_none_or(|st| st.success()),
            "{TEST}: rtc failed during the {label} window ({})\n{}",
            r.how(),
            r.log_tail(30)
        );
        r
    };
    let (base, base_seeder_cpu) = {
        let seeder = s.seeder(&["--seed-mode"]);
        let before = proc_cpu(seeder.pid());
        let r = window("unattacked", &[], &seeder);
        (r, proc_cpu(seeder.pid()) - before)
    };
    let crew = Crew::new(s.info_hash);
    let (pieces, pl, total) = (s.pieces, s.piece_len, s.total);
    let stats = Arc::clone(&crew.stats);
    let attackers = crew.listen(ATTACKERS, move |i| {
        serve(
            random_claims(pieces, 1, 1000 + i as u64),
            Duration::from_millis(20),
            Data::Zeros,
            pl,
            total,
            Arc::clone(&stats),
        )
    });
    let (attacked, seeder_cpu, attackers_cpu) = {
        let seeder = s.seeder(&["--seed-mode"]);
        let before = (proc_cpu(seeder.pid()), proc_cpu(std::process::id()));
        let r = window("attacked", &attackers, &seeder);
        let seeder_cpu = proc_cpu(seeder.pid()) - before.0;
        // This test process is mostly the attackers while rtc runs.
        (r, seeder_cpu, proc_cpu(std::process::id()) - before.1)
    };
    let served = crew.stats.blocks.load(Ordering::Relaxed);
    drop(crew);

    let rate = |r: &Run| r.last.wchar as f64 / secs(r.elapsed);
    let projected = |r: &Run| {
        if r.finished_ok() {
            r.elapsed
        } else {
            Duration::from_secs_f64(total as f64 / rate(r).max(1.0))
        }
    };
    let cores = |r: &Run| secs(r.last.cpu) / secs(r.elapsed);
    let per_gib = |r: &Run| secs(r.last.cpu) / (r.last.wchar.max(1) as f64 / GIB);
    let (tb, ta) = (projected(&base), projected(&attacked));
    eprintln!(
        "MEASURE {TEST}: unattacked {:.2}s attacked {:.2}s (projected from {:.0}s windows: \
         {:.1} vs {:.1} MiB/s)",
        secs(tb),
        secs(ta),
        secs(WINDOW),
        rate(&base) / MIB as f64,
        rate(&attacked) / MIB as f64
    );
    eprintln!(
        "MEASURE {TEST}: rtc CPU {:.2} vs {:.2} cores ({:+.4} cores per attacker), \
         {:.1} vs {:.1} CPU-s per GiB ({:+.2} CPU-s per GiB per attacker)",
        cores(&base),
        cores(&attacked),
        (cores(&attacked) - cores(&base)) / ATTACKERS as f64,
        per_gib(&base),
        per_gib(&attacked),
        (per_gib(&attacked) - per_gib(&base)) / ATTACKERS as f64,
    );
    eprintln!(
        "MEASURE {TEST}: seeder CPU {:.2}s vs {:.2}s; attackers (this process) {:.2}s, \
         {} blocks served by them",
        secs(base_seeder_cpu),
        secs(seeder_cpu),
        secs(attackers_cpu),
        served
    );
    assert!(
        ta <= bound(tb),
        "{TEST}: with {ATTACKERS} partial peers rtc would take {:.1}s for the torrent, \
         more than {:.1}s (2 x unattacked {:.1}s + 10s)\n--- rtc log (tail) ---\n{}",
        secs(ta),
        secs(bound(tb)),
        secs(tb),
        attacked.log_tail(20)
    );
    assert!(
        per_gib(&attacked) <= CPU_FACTOR * per_gib(&base),
        "{TEST}: with {ATTACKERS} partial peers rtc spends {:.1} CPU-s per GiB, more than \
         {CPU_FACTOR} x the {:.1} it spends without them",
        per_gib(&attacked),
        per_gib(&base)
    );
}
