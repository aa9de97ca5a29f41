//! Attacks on rtc while it seeds, with an honest leecher downloading beside
//! them.
//!
//! Each test starts `rtc seed T -o DIR --port P` (a subprocess, on
//! loopback) over an 8 MiB torrent with 256 KiB pieces, then:
//! 1. times an honest real leecher (libtorrent through `lt_peer.py`; aria2c
//!    as well in `silent_sockets_64`) downloading from rtc with no attack;
//! 2. starts the attack, written here as raw TCP / BitTorrent peers in
//!    threads of this process, and waits until it is in place (every
//!    attacker socket connected, or handshaken, or unchoked...);
//! 3. runs the same honest leecher again into a fresh directory;
//! 4. checks the downloaded bytes, and that the attacked time is within
//!    [`bound`] of the unattacked one. A leecher that does not finish is
//!    stopped at the bound plus [`LEECH_MARGIN`] and the test fails naming
//!    itself.
//!
//! Every test prints `MEASURE <test>: unattacked Xs attacked Ys` (and rtc's
//! CPU time in `mse_garbage_flood`) for the benchmarks doc. The tests take a
//! lock so they run one at a time: two attacks on a 2-core machine would
//! skew each other's timings.
//!
//! Attackers reconnect when rtc drops them (reconnects capped at
//! [`RECONNECTS_PER_SEC`] per attack), stop when the test ends (Drop) and in
//! any case after [`ATTACK_LIFETIME`]. Everything is on 127.0.0.1.

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The most an attack may slow the honest leecher down: its time under
/// attack must be at most this.
fn bound(unattacked: Duration) -> Duration {
    unattacked * 2 + Duration::from_secs(10)
}

/// How long past the bound an attacked leecher may run before it is stopped
/// (so that a slow finish is told apart from none).
const LEECH_MARGIN: Duration = Duration::from_secs(5);
/// Timeout for the unattacked runs (they take about 1-3 s; aria2c ~5 s).
const UNATTACKED_TIMEOUT: Duration = Duration::from_secs(40);
/// How long an attack may take to get in place.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// No attacker thread runs longer than this, whatever the test does.
const ATTACK_LIFETIME: Duration = Duration::from_secs(100);
/// Reconnects (after rtc closed a connection) per second, per attack; the
/// silent sockets open all their connections at this rate.
const RECONNECTS_PER_SEC: f64 = 50.0;
/// Torrent size: 32 pieces of 256 KiB and a 5-byte last one.
const LEN: usize = 8 * 1024 * 1024 + 5;
const PIECE_LOG2: u32 = 18;
const BLOCK: u32 = 16384;
/// Keep-alive interval of the idle attackers (rtc drops after 150 s).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(60);
/// How long rtc's CPU use under the MSE flood alone is measured.
const CPU_WINDOW: Duration = Duration::from_secs(3);
/// Requests a greedy reader keeps in flight (rtc allows 2048 queued).
const GREEDY_WINDOW: usize = 256;

// ---------------------------------------------------------------------------
// The tests

#[test]
fn silent_sockets_64() {
    silent_sockets("silent_sockets_64", 64, true, 201);
}

#[test]
fn silent_sockets_1000() {
    let want = 1000;
    // Our descriptors: the attack's sockets plus a margin for the test
    // itself (pipes to children, files, the other leecher...).
    let n = match open_files_limit() {
        Some(limit) if limit < want + 200 => {
            let n = limit.saturating_sub(200).max(64) as usize;
            eprintln!("silent_sockets_1000: open files limit {limit}: {n} sockets only");
            n
        }
        _ => want as usize,
    };
    silent_sockets("silent_sockets_1000", n, false, 202);
}

#[test]
fn idle_handshaken_peers_50() {
    const NAME: &str = "idle_handshaken_peers_50";
    let _serial = serial();
    let case = Case::start(NAME, 203, &["-v", "-v"], false);
    let base = case.lt_unattacked();
    let attack = Attack::start("idle", &case, 50, |ctx| raw_peer(ctx, Role::Idle));
    attack.wait(&case, "50 idle peers answered", |c| c.settled() >= 50);
    attack.settle("all 50 idle peers handshaken", |c| c.handshaken() >= 50);
    let attacked = case.lt("attacked", base);
    eprintln!("{NAME}: attack {}", attack.summary());
    case.verdict(NAME, base, attacked);
}

#[test]
fn idle_interested_peers_10() {
    const NAME: &str = "idle_interested_peers_10";
    let _serial = serial();
    let case = Case::start(NAME, 204, &["-v", "-v"], false);
    let base = case.lt_unattacked();
    let attack = Attack::start("interested", &case, 10, |ctx| {
        raw_peer(ctx, Role::Interested)
    });
    attack.wait(&case, "10 interested peers answered", |c| c.settled() >= 10);
    attack.settle("all 10 interested peers handshaken", |c| {
        c.handshaken() >= 10 && c.interested.load(Ordering::SeqCst) >= 10
    });
    // rtc's choker reacts to a newly interested peer within about a second:
    // give it the chance to hand its slots to the attackers (an rtc that
    // unchokes none of them is not an error).
    attack.settle("rtc to unchoke an idle interested peer", |c| {
        c.unchoked.load(Ordering::SeqCst) >= 1
    });
    let attacked = case.lt("attacked", base);
    eprintln!("{NAME}: attack {}", attack.summary());
    case.verdict(NAME, base, attacked);
}

#[test]
fn greedy_and_stuck_readers_10() {
    const NAME: &str = "greedy_and_stuck_readers_10";
    let _serial = serial();
    let case = Case::start(NAME, 205, &["-v", "-v"], false);
    let base = case.lt_unattacked();
    let greedy = Attack::start("greedy", &case, 10, |ctx| raw_peer(ctx, Role::Greedy));
    let stuck = Attack::start("stuck", &case, 10, |ctx| raw_peer(ctx, Role::Stuck));
    greedy.wait(&case, "10 greedy readers answered", |c| c.settled() >= 10);
    stuck.wait(&case, "10 stuck readers answered", |c| c.settled() >= 10);
    greedy.settle("all 10 greedy readers handshaken", |c| c.handshaken() >= 10);
    stuck.settle("all 10 stuck readers handshaken", |c| c.handshaken() >= 10);
    // The attack is in place once the greedy readers are being served.
    greedy.settle("rtc to serve a greedy reader", |c| {
        c.bytes.load(Ordering::SeqCst) >= 4 * 1024 * 1024
    });
    let attacked = case.lt("attacked", base);
    eprintln!("{NAME}: greedy {}", greedy.summary());
    eprintln!("{NAME}: stuck {}", stuck.summary());
    case.verdict(NAME, base, attacked);
}

#[test]
fn mse_garbage_flood() {
    const NAME: &str = "mse_garbage_flood";
    let _serial = serial();
    // -v only: at debug level rtc would log every refused opening, and the
    // logging would count in its CPU time.
    let case = Case::start(NAME, 206, &["-v"], false);
    let cpu0 = case.rtc.cpu_seconds();
    let t0 = Instant::now();
    let base = case.lt_unattacked();
    let base_cpu = case.rtc.cpu_seconds() - cpu0;
    let base_wall = t0.elapsed().as_secs_f64();
    let attack = Attack::start("mse", &case, 8, mse_flooder);
    // Answered (or refused: an rtc may close on such openings at once).
    attack.wait(&case, "100 garbage openings over", |c| {
        c.rounds.load(Ordering::SeqCst) + c.closed_by_rtc.load(Ordering::SeqCst) >= 100
    });
    // rtc's cost per opening, with nothing else going on: a fixed window
    // (a measurement, not a wait for anything).
    let (cpu, wall, rounds) = attack.cpu_over(&case, || thread::sleep(CPU_WINDOW));
    eprintln!(
        "MEASURE {NAME}: rtc CPU under the flood alone {cpu:.2}s in {wall:.2}s ({:.0}%), \
         {rounds} garbage openings answered ({:.0}/s, {:.2} ms CPU each)",
        100.0 * cpu / wall,
        rounds as f64 / wall,
        1000.0 * cpu / (rounds.max(1) as f64),
    );
    // And with the honest leecher downloading beside it.
    let mut attacked = Err(String::new());
    let (cpu, wall, rounds) = attack.cpu_over(&case, || attacked = case.lt("attacked", base));
    eprintln!("{NAME}: attack {}", attack.summary());
    eprintln!(
        "MEASURE {NAME}: rtc CPU unattacked download {base_cpu:.2}s in {base_wall:.2}s \
         ({:.0}%), download under the flood {cpu:.2}s in {wall:.2}s ({:.0}%, \
         {rounds} garbage openings, {:.0}/s)",
        100.0 * base_cpu / base_wall,
        100.0 * cpu / wall,
        rounds as f64 / wall,
    );
    case.verdict(NAME, base, attacked);
}

/// `silent_sockets_64` and `silent_sockets_1000`.
fn silent_sockets(name: &'static str, n: usize, with_aria2: bool, seed: u64) {
    let _serial = serial();
    let case = Case::start(name, seed, &["-v", "-v"], with_aria2);
    // Unattacked: libtorrent (and aria2c) at the same time, as under attack.
    let aria_base = with_aria2.then(|| case.aria2_in_thread("unattacked", UNATTACKED_TIMEOUT));
    let base = case.lt_unattacked();
    let aria_base = aria_base.map(|h| {
        h.join()
            .expect("aria2c thread")
            .unwrap_or_else(|e| panic!("{name}: aria2c failed with no attack: {e}"))
    });

    // A few threads, each watching its share of the sockets.
    let threads = n.div_ceil(250).max(2);
    let shares: Vec<usize> = (0..threads)
        .map(|i| n / threads + usize::from(i < n % threads))
        .collect();
    let attack = Attack::start_each("silent", &case, &shares, silent_sweeper);
    // Every socket connected once; with more than rtc reads at once (64
    // pending handshakes), enough to fill that and have as many closed
    // (connecting all 1000 at the capped rate would take 20 s).
    let enough = n.min(128);
    attack.wait(&case, &format!("{enough} silent sockets connected"), |c| {
        c.connects.load(Ordering::SeqCst) >= enough
    });
    eprintln!("{name}: attack in place: {}", attack.summary());

    let aria = with_aria2.then(|| {
        let base = aria_base.unwrap();
        (
            base,
            case.aria2_in_thread("attacked", bound(base) + LEECH_MARGIN),
        )
    });
    let attacked = case.lt("attacked", base);
    let aria = aria.map(|(b, h)| (b, h.join().expect("aria2c thread")));
    eprintln!("{name}: attack {}", attack.summary());
    match aria {
        Some((aria_base, aria_attacked)) => {
            let lt = case.judge(&format!("{name}[libtorrent]"), base, attacked);
            let ar = case.judge(&format!("{name}[aria2c]"), aria_base, aria_attacked);
            let failures: Vec<String> = [lt, ar].into_iter().filter_map(Result::err).collect();
            assert!(failures.is_empty(), "{}", failures.join("\n"));
        }
        None => case.verdict(name, base, attacked),
    }
}

// ---------------------------------------------------------------------------
// rtc, the torrent and the honest leechers

/// Serialises the tests of this file (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `rtc seed` as a subprocess, killed on Drop (with its log tail printed if
/// the test is failing, and the whole log copied into `$ATTACK_LOG_DIR` if
/// that is set).
struct Rtc {
    child: Child,
    port: u16,
    log: PathBuf,
    test: &'static str,
}

impl Rtc {
    fn seed(
        test: &'static str,
        torrent: &Path,
        data_parent: &Path,
        log_dir: &Path,
        log_flags: &[&str],
    ) -> Rtc {
        let port = free_port();
        let log = log_dir.join(format!("rtc-{port}.log"));
        let child = rtc_cmd()
            .arg("seed")
            .arg(torrent)
            .arg("-o")
            .arg(data_parent)
            .args(["--port", &port.to_string()])
            .args(log_flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("rtc log"))
            .spawn()
            .expect("run rtc");
        let mut rtc = Rtc {
            child,
            port,
            log,
            test,
        };
        let addr = rtc.addr();
        wait_for(Duration::from_secs(30), "rtc to listen", || {
            if let Ok(Some(st)) = rtc.child.try_wait() {
                panic!("rtc exited early ({st}): {}", rtc.log_text());
            }
            // Listening and past its check of the data on disk.
            port_accepts(addr) && rtc.log_text().contains("resume: ")
        });
        rtc
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// rtc's log from byte `from` on, each message with its addresses
    /// blanked out, most frequent first with its count: what rtc did
    /// during an attack, in a few lines.
    fn log_digest(&self, from: usize) -> String {
        let text = self.log_text();
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for line in text.get(from..).unwrap_or("").lines() {
            // "[2026-01-01T00:00:00Z INFO ] message"
            let msg = line.split_once("] ").map_or(line, |(_, m)| m);
            let msg: Vec<String> = msg
                .split(' ')
                .map(|w| {
                    let bare = w.trim_end_matches([':', ',', ';']);
                    if bare.parse::<SocketAddr>().is_ok() {
                        w.replace(bare, "<addr>")
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            *counts.entry(msg.join(" ")).or_default() += 1;
        }
        let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_count
            .iter()
            .take(12)
            .map(|(m, n)| format!("  {n:>6} x {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// User plus system CPU time rtc has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("rtc's /proc/PID/stat");
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')').expect("stat format").1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / clock_ticks()
    }
}

impl Drop for Rtc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // To read a whole log: ATTACK_LOG_DIR=/some/dir cargo test ...
        if let Some(dir) = std::env::var_os("ATTACK_LOG_DIR") {
            let _ = std::fs::copy(
                &self.log,
                Path::new(&dir).join(format!("{}-rtc.log", self.test)),
            );
        }
        if thread::panicking() {
            eprintln!(
                "--- rtc on port {} (log tail) ---\n{}",
                self.port,
                file_tail(&self.log, 40)
            );
        }
    }
}

/// `sysconf(_SC_CLK_TCK)`, through getconf (no libc in the dev-deps).
fn clock_ticks() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One test's data, torrents and rtc seeder. Fields drop in order: rtc
/// (whose Drop may print its log) before the directory holding the log.
struct Case {
    rtc: Rtc,
    _tracker: Option<Tracker>,
    name: &'static str,
    data: PathBuf,
    /// Trackerless: the libtorrent leecher is given rtc's address.
    lt_torrent: PathBuf,
    /// The torrent rtc seeds: the same info dictionary with an announce
    /// URL when there is a tracker (aria2c finds rtc there), else `lt_torrent`.
    rtc_torrent: PathBuf,
    info_hash: [u8; 20],
    /// Where rtc's log stood when the attack started.
    attack_log_from: std::cell::Cell<usize>,
    dir: tempfile::TempDir,
}

impl Case {
    /// Makes the data and torrent and starts `rtc seed` with `log_flags`.
    /// With `tracker`, rtc seeds a torrent that names a local opentracker
    /// (aria2c needs one to find rtc); otherwise the trackerless one, so
    /// that rtc's only peers are the test's.
    fn start(name: &'static str, seed: u64, log_flags: &[&str], tracker: bool) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("seed/s.bin");
        random_file(&data, LEN, seed);
        let lt_torrent = dir.path().join("lt.torrent");
        mktorrent(&data, &lt_torrent, None, PIECE_LOG2);
        let hash = info_hash_of(&lt_torrent);
        let tracker = tracker.then(|| Tracker::start(&[&hash]));
        let rtc_torrent = match &tracker {
            Some(t) => {
                let path = dir.path().join("tracker.torrent");
                mktorrent(&data, &path, Some(&t.announce_url()), PIECE_LOG2);
                assert_eq!(hash, info_hash_of(&path), "one torrent, two files");
                path
            }
            None => lt_torrent.clone(),
        };
        let rtc = Rtc::seed(
            name,
            &rtc_torrent,
            &dir.path().join("seed"),
            dir.path(),
            log_flags,
        );
        if let Some(t) = &tracker {
            t.wait_for_seeders(&hash, 1, Duration::from_secs(15));
        }
        let info_hash = (0..20)
            .map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap();
        Case {
            rtc,
            _tracker: tracker,
            name,
            data,
            lt_torrent,
            rtc_torrent,
            info_hash,
            attack_log_from: Default::default(),
            dir,
        }
    }

    /// The honest libtorrent leecher with no attack; it must succeed.
    fn lt_unattacked(&self) -> Duration {
        let t = self
            .lt_run("unattacked", UNATTACKED_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: libtorrent failed with no attack: {e}", self.name));
        eprintln!(
            "{}: unattacked libtorrent {:.2}s",
            self.name,
            t.as_secs_f64()
        );
        t
    }

    /// The honest libtorrent leecher under attack, given the bound plus a
    /// margin.
    fn lt(&self, tag: &str, unattacked: Duration) -> Result<Duration, String> {
        let timeout = bound(unattacked) + LEECH_MARGIN;
        self.lt_run(tag, timeout)
            .map_err(|e| format!("libtorrent did not finish within {timeout:.1?}: {e}"))
    }

    /// Downloads with libtorrent into `lt-<tag>` and checks the bytes.
    fn lt_run(&self, tag: &str, timeout: Duration) -> Result<Duration, String> {
        let out = self.dir.path().join(format!("lt-{tag}"));
        let t = try_lt_leech(&self.lt_torrent, &out, self.rtc.addr(), timeout)?;
        assert_same_bytes(&self.data, &out.join("s.bin"));
        Ok(t)
    }

    /// aria2c downloading into `aria-<tag>` on a thread of its own; the
    /// thread returns its wall time once the bytes are checked.
    fn aria2_in_thread(
        &self,
        tag: &str,
        timeout: Duration,
    ) -> JoinHandle<Result<Duration, String>> {
        let out = self.dir.path().join(format!("aria-{tag}"));
        let torrent = self.rtc_torrent.clone();
        let data = self.data.clone();
        thread::spawn(move || {
            let t = aria2_leech(&torrent, &out, timeout)?;
            compare_files(&data, &out.join("s.bin"))?;
            Ok(t)
        })
    }

    /// Prints the MEASURE line and what rtc logged during the attack; Err
    /// says how the honest leecher failed.
    fn judge(
        &self,
        label: &str,
        unattacked: Duration,
        attacked: Result<Duration, String>,
    ) -> Result<(), String> {
        eprintln!(
            "{label}: rtc's log during the attack:\n{}",
            self.rtc.log_digest(self.attack_log_from.get())
        );
        let b = bound(unattacked);
        match attacked {
            Ok(t) => {
                eprintln!(
                    "MEASURE {label}: unattacked {:.2}s attacked {:.2}s",
                    unattacked.as_secs_f64(),
                    t.as_secs_f64()
                );
                if t <= b {
                    Ok(())
                } else {
                    Err(format!(
                        "{label}: honest leecher took {:.2}s under attack, over the bound \
                         {:.2}s (unattacked {:.2}s)",
                        t.as_secs_f64(),
                        b.as_secs_f64(),
                        unattacked.as_secs_f64()
                    ))
                }
            }
            Err(e) => {
                eprintln!(
                    "MEASURE {label}: unattacked {:.2}s attacked TIMEOUT (stopped after {:.2}s)",
                    unattacked.as_secs_f64(),
                    (b + LEECH_MARGIN).as_secs_f64()
                );
                Err(format!(
                    "{label}: honest leecher did not finish under attack (bound {:.2}s, \
                     unattacked {:.2}s): {e}",
                    b.as_secs_f64(),
                    unattacked.as_secs_f64()
                ))
            }
        }
    }

    fn verdict(&self, label: &str, unattacked: Duration, attacked: Result<Duration, String>) {
        if let Err(e) = self.judge(label, unattacked, attacked) {
            panic!("{e}");
        }
    }
}

/// `common::try_lt_leech_with` from `peer` alone.
fn try_lt_leech(
    torrent: &Path,
    out_dir: &Path,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Duration, String> {
    try_lt_leech_with(torrent, out_dir, free_port(), &[peer], timeout, &[])
}

/// aria2c downloads `torrent` (it finds rtc through the tracker) and exits;
/// returns its wall time. It stops itself after `timeout`.
fn aria2_leech(torrent: &Path, out: &Path, timeout: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let o = run_bounded(
        aria2_leech_command(torrent, out).args([
            &format!("--stop={}", timeout.as_secs().max(1)),
            "--interface=127.0.0.1",
            "--enable-dht6=false",
        ]),
        timeout + Duration::from_secs(15),
    );
    let t = t0.elapsed();
    if o.status.success() && t <= timeout {
        Ok(t)
    } else {
        // Its progress lines repeat; the last few say where it got to.
        let stdout = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        Err(format!(
            "aria2c ({}, after {:.2}s, stops itself at {:.0?}): {}{}",
            o.status,
            t.as_secs_f64(),
            timeout,
            lines[lines.len().saturating_sub(8)..].join("\n"),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------
// Attacks: threads of raw peers, with shared counters

/// What the attackers of one attack have achieved so far.
#[derive(Default)]
struct Counters {
    /// TCP connects that succeeded.
    connects: AtomicUsize,
    failed_connects: AtomicUsize,
    /// Sockets open now.
    open: AtomicUsize,
    /// Connections rtc has closed (or reset).
    closed_by_rtc: AtomicUsize,
    /// Connections open now whose handshake rtc answered.
    handshaken: AtomicUsize,
    /// Times rtc answered a handshake.
    handshakes: AtomicUsize,
    /// Connections open now that told rtc they are interested.
    interested: AtomicUsize,
    /// Connections open now that rtc has unchoked.
    unchoked: AtomicUsize,
    /// Piece bytes received from rtc.
    bytes: AtomicU64,
    /// Requests sent.
    requests: AtomicU64,
    /// Completed rounds (MSE openings that rtc answered).
    rounds: AtomicUsize,
    /// Peers whose first handshake rtc has answered or refused.
    settled: AtomicUsize,
}

impl Counters {
    fn handshaken(&self) -> usize {
        self.handshaken.load(Ordering::SeqCst)
    }

    fn settled(&self) -> usize {
        self.settled.load(Ordering::SeqCst)
    }
}

/// Increments a gauge now and decrements it when dropped.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(a: &'a AtomicUsize) -> Gauge<'a> {
        a.fetch_add(1, Ordering::SeqCst);
        Gauge(a)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A token bucket for reconnects: `RECONNECTS_PER_SEC`, bursts of 5.
struct Limiter(Mutex<(f64, Instant)>);

impl Limiter {
    fn new() -> Limiter {
        Limiter(Mutex::new((5.0, Instant::now())))
    }

    fn try_take(&self) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let tokens = (g.0 + now.duration_since(g.1).as_secs_f64() * RECONNECTS_PER_SEC).min(5.0);
        *g = (tokens, now);
        if tokens >= 1.0 {
            g.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What every attacker thread gets.
#[derive(Clone)]
struct Ctx {
    addr: SocketAddr,
    info_hash: [u8; 20],
    stop: Arc<AtomicBool>,
    deadline: Instant,
    c: Arc<Counters>,
    limiter: Arc<Limiter>,
    /// Connections this thread is responsible for (silent sweepers).
    share: usize,
    /// Which thread of the attack this is.
    index: usize,
}

impl Ctx {
    fn live(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && Instant::now() < self.deadline
    }

    /// Sleeps about `d`, waking early when the attack stops.
    fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        while self.live() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// A TCP connection to rtc, counted.
    fn connect(&self) -> Option<TcpStream> {
        match TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)) {
            Ok(s) => {
                self.c.connects.fetch_add(1, Ordering::SeqCst);
                Some(s)
            }
            Err(_) => {
                self.c.failed_connects.fetch_add(1, Ordering::SeqCst);
                None
            }
        }
    }

    /// `connect`, once the reconnect rate allows (None when stopping).
    fn reconnect(&self) -> Option<TcpStream> {
        while self.live() {
            if self.limiter.try_take() {
                return self.connect();
            }
            thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// One attack: its threads, stopped and joined on Drop.
struct Attack {
    name: &'static str,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
    started: Instant,
    threads: Vec<JoinHandle<()>>,
}

impl Attack {
    /// `n` threads running `f`.
    fn start(name: &'static str, case: &Case, n: usize, f: fn(Ctx)) -> Attack {
        Attack::start_each(name, case, &vec![1; n], f)
    }

    /// One thread per entry of `shares`, each running `f` for that many
    /// connections.
    fn start_each(name: &'static str, case: &Case, shares: &[usize], f: fn(Ctx)) -> Attack {
        if case.attack_log_from.get() == 0 {
            case.attack_log_from.set(case.rtc.log_text().len());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let c = Arc::new(Counters::default());
        let limiter = Arc::new(Limiter::new());
        let started = Instant::now();
        let threads = shares
            .iter()
            .enumerate()
            .map(|(index, &share)| {
                let ctx = Ctx {
                    addr: case.rtc.addr(),
                    info_hash: case.info_hash,
                    stop: Arc::clone(&stop),
                    deadline: started + ATTACK_LIFETIME,
                    c: Arc::clone(&c),
                    limiter: Arc::clone(&limiter),
                    share,
                    index,
                };
                thread::Builder::new()
                    .name(format!("attack-{name}-{index}"))
                    .stack_size(256 * 1024)
                    .spawn(move || f(ctx))
                    .expect("attacker thread")
            })
            .collect();
        Attack {
            name,
            stop,
            c,
            started,
            threads,
        }
    }

    /// Waits until `cond` holds (the attack is in place); panics, naming
    /// the test and the attack's state, after `SETUP_TIMEOUT`.
    fn wait(&self, case: &Case, what: &str, cond: impl Fn(&Counters) -> bool) {
        let t = Instant::now();
        while !cond(&self.c) {
            assert!(
                t.elapsed() < SETUP_TIMEOUT,
                "{}: attack not in place after {SETUP_TIMEOUT:?}: waiting for {what}; {}",
                case.name,
                self.summary()
            );
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{}: {what} after {:.2}s",
            case.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs `f` and returns rtc's CPU seconds, the wall seconds and the
    /// rounds of this attack meanwhile.
    fn cpu_over(&self, case: &Case, f: impl FnOnce()) -> (f64, f64, usize) {
        let cpu0 = case.rtc.cpu_seconds();
        let rounds0 = self.c.rounds.load(Ordering::SeqCst);
        let t0 = Instant::now();
        f();
        (
            case.rtc.cpu_seconds() - cpu0,
            t0.elapsed().as_secs_f64(),
            self.c.rounds.load(Ordering::SeqCst) - rounds0,
        )
    }

    /// Like `wait`, but for something rtc may legitimately refuse: gives up
    /// after 5 s with a note instead of failing.
    fn settle(&self, what: &str, cond: impl Fn(&Counters) -> bool) {
        let t = Instant::now();
        while !cond(&self.c) {
            if t.elapsed() > Duration::from_secs(5) {
                eprintln!("{}: note: no {what} within 5 s", self.name);
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{}: {what} after {:.2}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn summary(&self) -> String {
        let c = &self.c;
        let l = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        format!(
            "{} after {:.1}s: {} connects ({} failed), {} open, {} closed by rtc, \
             {} handshakes answered, {} handshaken now, {} unchoked now, \
             {} requests, {:.1} MiB received, {} rounds",
            self.name,
            self.started.elapsed().as_secs_f64(),
            l(&c.connects),
            l(&c.failed_connects),
            l(&c.open),
            l(&c.closed_by_rtc),
            l(&c.handshakes),
            l(&c.handshaken),
            l(&c.unchoked),
            c.requests.load(Ordering::SeqCst),
            c.bytes.load(Ordering::SeqCst) as f64 / 1048576.0,
            l(&c.rounds),
        )
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// xorshift64*, seeded per thread.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// --- Silent sockets

/// Holds `ctx.share` connections that never send a byte, opening them at
/// the attack's connect rate; a connection rtc closes is opened again.
/// (Opening all at once would make rtc's handshake timeouts free every slot
/// at the same moment, and the honest peer would get in then, ten seconds
/// in, by luck of timing: a weaker attack.)
fn silent_sweeper(ctx: Ctx) {
    let mut slots: Vec<Option<TcpStream>> = (0..ctx.share).map(|_| None).collect();
    let mut sink = [0u8; 1024];
    while ctx.live() {
        let mut may_connect = true;
        for slot in slots.iter_mut() {
            match slot {
                Some(s) => {
                    let closed = match s.read(&mut sink) {
                        Ok(0) => true,
                        Ok(_) => false, // rtc said something: ignore it
                        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                    };
                    if closed {
                        *slot = None;
                        ctx.c.open.fetch_sub(1, Ordering::SeqCst);
                        ctx.c.closed_by_rtc.fetch_add(1, Ordering::SeqCst);
                    }
                }
                None if may_connect => {
                    may_connect = ctx.limiter.try_take();
                    if may_connect {
                        if let Some(s) = ctx.connect() {
                            if s.set_nonblocking(true).is_ok() {
                                *slot = Some(s);
                                ctx.c.open.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
                None => {}
            }
        }
        ctx.pause(Duration::from_millis(5));
    }
    let open = slots.iter().filter(|s| s.is_some()).count();
    ctx.c.open.fetch_sub(open, Ordering::SeqCst);
}

// --- MSE-looking garbage

/// Opens connections that send 96..=608 random bytes (the size of an MSE
/// opening: a 96-byte key and up to 512 bytes of padding), waits for rtc's
/// answer (its own key), closes, and again.
fn mse_flooder(ctx: Ctx) {
    let mut rng = Rng::new(ctx.index as u64);
    let mut sink = [0u8; 1024];
    while ctx.live() {
        let Some(mut s) = ctx.connect() else {
            ctx.pause(Duration::from_millis(10));
            continue;
        };
        let _open = Gauge::up(&ctx.c.open);
        let mut garbage = vec![0u8; 96 + (rng.next() % 513) as usize];
        rng.fill(&mut garbage);
        // Never the plain BitTorrent opening.
        garbage[0] = garbage[0].max(20);
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        if s.write_all(&garbage).is_err() {
            ctx.c.closed_by_rtc.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let mut got = 0;
        let t = Instant::now();
        while got < 96 && ctx.live() && t.elapsed() < Duration::from_secs(3) {
            match s.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        if got >= 96 {
            ctx.c.rounds.fetch_add(1, Ordering::SeqCst);
        } else {
            ctx.c.closed_by_rtc.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// --- BitTorrent peers

#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    /// Handshake, then nothing but a keep-alive every 60 s.
    Idle,
    /// Handshake and `interested`, then nothing (never a request).
    Interested,
    /// Handshake and `interested`; once unchoked, requests every block of
    /// the torrent over and over and reads as fast as it can.
    Greedy,
    /// Handshake (its answer is read, to know rtc took the connection),
    /// `interested`, then a stream of requests; never reads again.
    Stuck,
}

/// One attacking peer: connects, plays `role` until rtc drops it or the
/// attack stops, reconnects.
fn raw_peer(ctx: Ctx, role: Role) {
    let mut rng = Rng::new(1000 + ctx.index as u64);
    let mut next_block = (rng.next() % blocks_in_torrent() as u64) as usize;
    let mut first = true;
    // Until the first handshake is answered or refused.
    let mut first_try = true;
    while ctx.live() {
        let s = if first {
            ctx.connect()
        } else {
            ctx.reconnect()
        };
        first = false;
        if let Some(s) = s {
            let _open = Gauge::up(&ctx.c.open);
            if play(&ctx, s, role, &mut rng, &mut next_block, &mut first_try).is_err() {
                ctx.c.closed_by_rtc.fetch_add(1, Ordering::SeqCst);
            }
        } else {
            ctx.pause(Duration::from_millis(100));
        }
        if std::mem::take(&mut first_try) {
            ctx.c.settled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Returns Ok when the attack stops, Err when the connection ended.
fn play(
    ctx: &Ctx,
    mut s: TcpStream,
    role: Role,
    rng: &mut Rng,
    next_block: &mut usize,
    first_try: &mut bool,
) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    s.write_all(&handshake(&ctx.info_hash, rng))?;
    // rtc answers once its session has taken the peer.
    let mut reply = [0u8; 68];
    let mut got = 0;
    let t = Instant::now();
    while got < reply.len() {
        if !ctx.live() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(15) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match s.read(&mut reply[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if reply[..20] != *b"\x13BitTorrent protocol" || reply[28..48] != ctx.info_hash {
        return Err(io::ErrorKind::InvalidData.into());
    }
    ctx.c.handshakes.fetch_add(1, Ordering::SeqCst);
    let _handshaken = Gauge::up(&ctx.c.handshaken);
    if std::mem::take(first_try) {
        ctx.c.settled.fetch_add(1, Ordering::SeqCst);
    }
    let _interested = if role == Role::Idle {
        None
    } else {
        s.write_all(&frame(2, &[]))?;
        Some(Gauge::up(&ctx.c.interested))
    };
    if role == Role::Stuck {
        return stuck(ctx, s, next_block);
    }

    let mut rx: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut unchoked: Option<Gauge> = None;
    let mut outstanding = 0usize;
    let mut last_piece = Instant::now();
    let mut last_send = Instant::now();
    while ctx.live() {
        if role == Role::Greedy && unchoked.is_some() {
            if outstanding > 0 && last_piece.elapsed() > Duration::from_secs(3) {
                // Lost track (a choke crossed our requests): start over.
                outstanding = 0;
            }
            if outstanding < GREEDY_WINDOW {
                let mut out = Vec::new();
                while outstanding < GREEDY_WINDOW {
                    out.extend_from_slice(&request(*next_block));
                    *next_block = (*next_block + 1) % blocks_in_torrent();
                    outstanding += 1;
                    ctx.c.requests.fetch_add(1, Ordering::SeqCst);
                }
                s.write_all(&out)?;
                last_send = Instant::now();
            }
        }
        if last_send.elapsed() >= KEEPALIVE_EVERY {
            s.write_all(&[0, 0, 0, 0])?;
            last_send = Instant::now();
        }
        let n = match s.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        };
        rx.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while rx.len() - at >= 4 {
            let len = u32::from_be_bytes(rx[at..at + 4].try_into().unwrap()) as usize;
            if len > (1 << 20) {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if rx.len() - at < 4 + len {
                break;
            }
            match rx.get(at + 4) {
                Some(0) if len >= 1 => {
                    unchoked = None;
                    outstanding = 0;
                }
                Some(1) if len >= 1 && unchoked.is_none() => {
                    unchoked = Some(Gauge::up(&ctx.c.unchoked));
                    last_piece = Instant::now();
                }
                Some(7) if len >= 9 => {
                    ctx.c.bytes.fetch_add((len - 9) as u64, Ordering::SeqCst);
                    outstanding = outstanding.saturating_sub(1);
                    last_piece = Instant::now();
                }
                _ => {}
            }
            at += 4 + len;
        }
        rx.drain(..at);
    }
    Ok(())
}

/// The stuck reader: requests (32 every 250 ms, in case rtc has unchoked
/// it) and never reads. Ends when a write fails (rtc closed).
fn stuck(ctx: &Ctx, s: TcpStream, next_block: &mut usize) -> io::Result<()> {
    s.set_nonblocking(true)?;
    let mut out: Vec<u8> = Vec::new();
    while ctx.live() {
        // Bounded: once rtc stops reading, stop adding.
        if out.len() < 64 * 1024 {
            for _ in 0..32 {
                out.extend_from_slice(&request(*next_block));
                *next_block = (*next_block + 1) % blocks_in_torrent();
                ctx.c.requests.fetch_add(1, Ordering::SeqCst);
            }
        }
        while !out.is_empty() {
            match (&s).write(&out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        ctx.pause(Duration::from_millis(250));
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A BitTorrent handshake for `info_hash` with a fresh random peer id.
fn handshake(info_hash: &[u8; 20], rng: &mut Rng) -> Vec<u8> {
    let mut hs = Vec::with_capacity(68);
    hs.extend_from_slice(b"\x13BitTorrent protocol");
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(info_hash);
    hs.extend_from_slice(b"-AT0001-");
    for _ in 0..12 {
        hs.push(b'0' + (rng.next() % 10) as u8);
    }
    hs
}

fn frame(id: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(body);
    v
}

/// Blocks of the torrent, in order: `(piece, offset, length)`.
fn blocks_in_torrent() -> usize {
    let piece = 1usize << PIECE_LOG2;
    let full = LEN / piece;
    let last = LEN % piece;
    full * piece.div_ceil(BLOCK as usize) + last.div_ceil(BLOCK as usize)
}

/// The `request` message for block number `i` (see `blocks_in_torrent`).
fn request(i: usize) -> Vec<u8> {
    let piece_len = 1usize << PIECE_LOG2;
    let per_piece = piece_len / BLOCK as usize;
    let (piece, block) = (i / per_piece, i % per_piece);
    let offset = block * BLOCK as usize;
    let start = piece * piece_len + offset;
    let length = (LEN - start).min(BLOCK as usize);
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&(piece as u32).to_be_bytes());
    body.extend_from_slice(&(offset as u32).to_be_bytes());
    body.extend_from_slice(&(length as u32).to_be_bytes());
    frame(6, &body)
}
