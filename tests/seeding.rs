//! rtc as a seeder: aria2c, libtorrent and rtc itself download from it; it
//! serves aria2c while downloading from libtorrent; torrents from
//! `rtc create` load in libtorrent and aria2c; a peer that requests garbage
//! is dropped while honest leechers finish; a flood of silent connections
//! cannot create unbounded threads; rtc serves over IPv6 too. All bytes compared.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(90);

/// A running `rtc` (seeding or downloading-then-seeding), stopped with
/// SIGINT; `stop` returns its stderr.
struct Rtc {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Rtc {
    fn start(args: &[&str], torrent: &Path, log_dir: &Path) -> Rtc {
        let port = free_port();
        let log = log_dir.join(format!("rtc-{port}.log"));
        let child = rtc_cmd()
            .args(["-v", "--port", &port.to_string()])
            .args(args)
            .arg(torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut r = Rtc { child, port, log };
        let addr = r.addr();
        // Listening, and past the check of the data on disk (the port
        // opens before it; a Ctrl-C during the check is a cancel).
        wait_for(Duration::from_secs(30), "rtc to listen", || {
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!(
                    "rtc exited early ({st}): {}",
                    std::fs::read_to_string(&r.log).unwrap_or_default()
                );
            }
            port_accepts(addr) && r.log().contains("resume: ")
        });
        r
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, then the exit status must be success (stopping a seed).
    fn stop(mut self) -> String {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "rtc did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log();
        assert!(st.success(), "rtc seed exit {st}: {log}");
        log
    }
}

impl Drop for Rtc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- rtc log (tail) ---\n{}", file_tail(&self.log, 60));
        }
    }
}

/// Bytes rtc's summary line says it uploaded.
fn uploaded(log: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(" uploaded in "))
        .expect("summary line");
    let before = line.split(" uploaded in ").next().unwrap();
    let amount = before.rsplit(", ").next().unwrap();
    let mut it = amount.split_whitespace();
    let n: f64 = it.next().unwrap().parse().unwrap();
    let unit = match it.next().unwrap() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => panic!("unit {u}"),
    };
    n * unit
}

struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    torrent: PathBuf,
    hash: String,
    tracker: Tracker,
}

fn setup(len: usize, seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed/s.bin");
    random_file(&data, len, seed);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = dir.path().join("t.torrent");
    mktorrent(&data, &torrent, Some(&tracker.announce_url()), 16);
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    Setup {
        dir,
        data,
        torrent,
        hash,
        tracker,
    }
}

fn aria2_leech(torrent: &Path, out: &Path) {
    let o = run_bounded(&mut aria2_leech_command(torrent, out), BOUND);
    assert!(
        o.status.success(),
        "aria2c: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

impl Setup {
    fn seed_dir(&self) -> PathBuf {
        self.dir.path().join("seed")
    }
    /// Another rtc downloads from `peer` only; its bytes must match.
    fn rtc_leech(&self, peer: SocketAddr) {
        let out = self.dir.path().join("rtc2");
        let o = run_bounded(
            rtc_cmd()
                .args(["--port", &free_port().to_string(), "-o"])
                .arg(&out)
                .args(["--peer", &peer.to_string()])
                .arg(&self.torrent),
            BOUND,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same_bytes(&self.data, &out.join("s.bin"));
    }
    /// `rtc seed` over the original data.
    fn rtc_seed(&self) -> Rtc {
        Rtc::start(
            &["seed", "-o", self.seed_dir().to_str().unwrap()],
            &self.torrent,
            self.dir.path(),
        )
    }
}

const MIB6: usize = 6 * 1024 * 1024 + 5;

#[test]
fn aria2_downloads_from_rtc() {
    let s = setup(MIB6, 111);
    let rtc = s.rtc_seed();
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(15));
    let out = s.dir.path().join("aria");
    aria2_leech(&s.torrent, &out);
    assert_same_bytes(&s.data, &out.join("s.bin"));
    let log = rtc.stop();
    assert!(uploaded(&log) >= 0.99 * MIB6 as f64, "{log}");
    // aria2c opens with an MSE handshake by default; rtc answers it rather
    // than making aria2c reconnect in plaintext.
    assert!(
        log.contains("encrypted handshake, plaintext selected"),
        "{log}"
    );
}

#[test]
fn libtorrent_downloads_from_rtc_over_encrypted_connections() {
    let s = setup(MIB6, 120);
    let rtc = s.rtc_seed();
    // MSE offering plaintext or RC4 (rtc picks plaintext), then RC4
    // required: every byte of that connection is encrypted both ways.
    for (mode, seen) in [("mse", "plaintext"), ("rc4", "RC4")] {
        let out = s.dir.path().join(format!("lt-{mode}"));
        lt_leech_with(
            &s.torrent,
            &out,
            free_port(),
            &[rtc.addr()],
            BOUND,
            &["--encryption", mode],
        );
        assert_same_bytes(&s.data, &out.join("s.bin"));
        let log = rtc.log();
        assert!(
            log.contains(&format!("encrypted handshake, {seen} selected")),
            "{mode}: {log}"
        );
    }
    let log = rtc.stop();
    assert!(uploaded(&log) >= 1.98 * MIB6 as f64, "{log}");
}

#[test]
fn libtorrent_downloads_from_rtc() {
    let s = setup(MIB6, 112);
    let rtc = s.rtc_seed();
    let out = s.dir.path().join("lt");
    lt_leech(&s.torrent, &out, free_port(), &[rtc.addr()], BOUND);
    assert_same_bytes(&s.data, &out.join("s.bin"));
    let log = rtc.stop();
    assert!(uploaded(&log) >= 0.99 * MIB6 as f64, "{log}");
}

#[test]
fn libtorrent_downloads_from_rtc_over_ipv6() {
    let s = setup(MIB6, 119);
    let rtc = s.rtc_seed();
    let six: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, rtc.port).into();
    let out = s.dir.path().join("lt6");
    lt_leech(&s.torrent, &out, free_port(), &[six], BOUND);
    assert_same_bytes(&s.data, &out.join("s.bin"));
    let log = rtc.stop();
    assert!(uploaded(&log) >= 0.99 * MIB6 as f64, "{log}");
    assert!(log.contains("[::1]:"), "no IPv6 peer in the log: {log}");
}

#[test]
fn rtc_downloads_from_rtc() {
    let s = setup(MIB6, 113);
    let seeder = s.rtc_seed();
    s.rtc_leech(seeder.addr());
    seeder.stop();
}

#[test]
fn serves_aria2_while_downloading_from_libtorrent() {
    let s = setup(8 * 1024 * 1024, 114);
    // libtorrent capped at 2 MB/s: rtc is still downloading when aria2c
    // arrives, and has pieces aria2c wants.
    let _lt = Peer::libtorrent_seed_with(
        &s.torrent,
        &s.seed_dir(),
        free_port(),
        "127.0.0.1",
        &["--upload-limit", "2000000"],
    );
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(10));
    let out = s.dir.path().join("rtc");
    let rtc = Rtc::start(
        &["--seed", "-o", out.to_str().unwrap()],
        &s.torrent,
        s.dir.path(),
    );
    let aria_out = s.dir.path().join("aria");
    aria2_leech(&s.torrent, &aria_out);
    assert_same_bytes(&s.data, &aria_out.join("s.bin"));
    wait_for(BOUND, "rtc to complete", || {
        rtc.log().contains("complete; seeding")
    });
    let log = rtc.stop();
    assert_same_bytes(&s.data, &out.join("s.bin"));
    assert!(uploaded(&log) > 0.0, "rtc served aria2c nothing: {log}");
}

#[test]
fn a_torrent_from_rtc_create_loads_in_libtorrent_and_aria2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("seed/made");
    random_file(&root.join("a.bin"), 2 * 1024 * 1024 + 3, 115);
    random_file(&root.join("sub/b.bin"), 700_001, 116);
    random_file(&root.join("sub/empty"), 0, 0);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = dir.path().join("made.torrent");
    let o = run_bounded(
        rtc_cmd()
            .arg("create")
            .arg(&root)
            .arg("-o")
            .arg(&torrent)
            .args([
                "--tracker",
                &tracker.announce_url(),
                "--comment",
                "made by rtc",
            ]),
        BOUND,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same info hash as an independent parser computes...
    let hash = info_hash_of(&torrent);
    let info = run_bounded(rtc_cmd().arg("info").arg(&torrent), BOUND);
    assert!(String::from_utf8_lossy(&info.stdout).contains(&hash));
    tracker.allow(&hash);
    // ...and libtorrent and aria2c both verify the original data against
    // it (each refuses to seed otherwise).
    let _lt = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    let _aria = Peer::aria2_seed(&torrent, &dir.path().join("seed"), free_port());
    // libtorrent downloads it from rtc.
    let rtc = Rtc::start(
        &["seed", "-o", dir.path().join("seed").to_str().unwrap()],
        &torrent,
        dir.path(),
    );
    let out = dir.path().join("lt");
    lt_leech(&torrent, &out, free_port(), &[rtc.addr()], BOUND);
    assert_same_tree(&dir.path().join("seed"), &out);
    rtc.stop();
}

#[test]
fn a_peer_requesting_garbage_is_dropped_while_honest_ones_finish() {
    let s = setup(MIB6, 117);
    let rtc = s.rtc_seed();
    // A hostile leecher: handshake, interested, wait for unchoke, then ask
    // for a piece that does not exist.
    let mut bad = TcpStream::connect(rtc.addr()).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(&hex20(&s.hash));
    hs.extend_from_slice(b"-XX0001-garbage-peer");
    bad.write_all(&hs).unwrap();
    bad.write_all(&[0, 0, 0, 1, 2]).unwrap(); // interested
    let mut reply = [0u8; 68];
    bad.read_exact(&mut reply).unwrap();
    wait_for_unchoke(&mut bad);
    let mut req = vec![0, 0, 0, 13, 6];
    req.extend_from_slice(&999_999u32.to_be_bytes());
    req.extend_from_slice(&0u32.to_be_bytes());
    req.extend_from_slice(&16384u32.to_be_bytes());
    bad.write_all(&req).unwrap();
    // rtc closes the connection.
    let mut sink = [0u8; 65536];
    let t = Instant::now();
    loop {
        match bad.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(15), "not dropped"),
        }
    }
    // An honest leecher still gets everything.
    let out = s.dir.path().join("lt");
    lt_leech(&s.torrent, &out, free_port(), &[rtc.addr()], BOUND);
    assert_same_bytes(&s.data, &out.join("s.bin"));
    let log = rtc.stop();
    assert!(
        log.contains("requested a block outside the torrent"),
        "{log}"
    );
    // IPv4 peers on the dual-stack listener are logged (and banned) as
    // plain IPv4 addresses.
    assert!(log.contains("127.0.0.1:"), "{log}");
    assert!(!log.contains("::ffff:"), "{log}");
}

#[test]
fn a_flood_of_silent_connections_is_capped_and_honest_peers_still_finish() {
    let s = setup(MIB6, 118);
    let rtc = s.rtc_seed();
    // 100 connections that never handshake (under the kernel's accept
    // backlog of 128, so every connect completes).
    const FLOOD: usize = 100;
    let silent: Vec<TcpStream> = (0..FLOOD)
        .map(|_| {
            let c = TcpStream::connect(rtc.addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            c
        })
        .collect();
    // rtc reads at most 64 handshakes at once and closes the rest on accept.
    // Bounded well under the 10 s handshake timeout, so only the cap (not
    // the timeout) can close them in time.
    let mut closed = [false; FLOOD];
    wait_for(Duration::from_secs(5), "excess connections closed", || {
        for (c, done) in silent.iter().zip(closed.iter_mut()) {
            if !*done {
                let mut b = [0u8; 1];
                *done = matches!((&*c).read(&mut b), Ok(0));
            }
        }
        closed.iter().filter(|d| **d).count() >= FLOOD - 64
    });
    let threads = proc_threads(rtc.child.id());
    assert!(threads <= 64 + 24, "{threads} threads under the flood");
    // Once the flood goes away, an honest leecher gets everything.
    drop(silent);
    s.rtc_leech(rtc.addr());
    rtc.stop();
}

#[test]
fn a_garbage_opening_is_refused_as_a_failed_encrypted_handshake() {
    let s = setup(MIB6, 121);
    // -v -v: failed incoming handshakes are logged at debug level.
    let rtc = Rtc::start(
        &["-v", "seed", "-o", s.seed_dir().to_str().unwrap()],
        &s.torrent,
        s.dir.path(),
    );
    // Not a BitTorrent handshake, so rtc takes it for an MSE opening: it
    // answers with its key, finds no sync marker in the next 532 bytes and
    // closes the connection, well before the 10 s handshake timeout.
    let mut bad = TcpStream::connect(rtc.addr()).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    bad.write_all(&garbage).unwrap();
    let t = Instant::now();
    let mut got = 0;
    let mut sink = [0u8; 4096];
    loop {
        match bad.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("not closed: {e}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        got >= 96,
        "rtc's public key (96 bytes) comes first; got {got}"
    );
    wait_for(Duration::from_secs(5), "the refusal in the log", || {
        rtc.log()
            .contains("encrypted handshake: no sync marker within 512 bytes")
    });
    rtc.stop();
}

/// The `Threads:` line of /proc/PID/status.
fn proc_threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn hex20(h: &str) -> Vec<u8> {
    (0..20)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Reads messages until an unchoke (id 1) arrives.
fn wait_for_unchoke(s: &mut TcpStream) {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("message from rtc");
        let n = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n];
        s.read_exact(&mut body).unwrap();
        if body.first() == Some(&1) {
            return;
        }
    }
}
