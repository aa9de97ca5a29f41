//! Magnet links end to end with real peers (BEP 9 `ut_metadata`, BEP 10,
//! BEP 11 `ut_pex`): rtc fetches the info dictionary from libtorrent and
//! aria2c, serves it to them, survives peers that lie about it, resumes
//! from its marker without asking peers again, and finds peers through
//! PEX (but not for private torrents). Every download is compared byte
//! for byte with the original.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(90);

/// 2^15-byte pieces and this many bytes: 1029 pieces, so the info
/// dictionary (about 20.6 KB) spans two 16 KiB metadata pieces.
const LEN: usize = 1029 * 32 * 1024 - 1234;

/// Random content at `dir/seed/NAME` and a v1 torrent of it (32 KiB pieces).
fn content(dir: &Path, name: &str, seed: u64, announce: Option<&str>) -> (PathBuf, PathBuf) {
    let data = dir.join("seed").join(name);
    random_file(&data, LEN, seed);
    let torrent = dir.join("t.torrent");
    mktorrent(&data, &torrent, announce, 15);
    (data, torrent)
}

/// `rtc magnet TORRENT`, the link it prints (one line).
fn magnet_of(torrent: &Path) -> String {
    let out = run_bounded(
        Command::new(rtc_bin()).arg("magnet").arg(torrent),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "rtc magnet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim_end().to_owned();
    assert!(link.starts_with("magnet:?xt=urn:btih:"), "{link}");
    link
}

/// A magnet with only the info hash and `x.pe` peers (no tracker, no name).
fn bare_magnet(hash: &str, peers: &[SocketAddr]) -> String {
    let mut link = format!("magnet:?xt=urn:btih:{hash}");
    for p in peers {
        link.push_str(&format!("&x.pe={p}"));
    }
    link
}

/// `rtc -v --port P -o OUT EXTRA... LINK`, bounded; returns its output and
/// wall time.
fn rtc_get(link: &str, out_dir: &Path, extra: &[&str], bound: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let out = run_bounded(
        Command::new(rtc_bin())
            .args(["-v", "--tracker-timeout", "2", "--port"])
            .arg(free_port().to_string())
            .arg("-o")
            .arg(out_dir)
            .args(extra)
            .arg(link),
        bound,
    );
    (out, start.elapsed())
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rtc failed ({}):\n{err}", out.status);
    err
}

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

// ---------------------------------------------------------------------------
// 1. libtorrent seeder, x.pe only; --save-torrent

#[test]
fn magnet_with_only_a_peer_downloads_from_libtorrent_and_saves_the_torrent() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (data, torrent) = content(dir.path(), "m1.bin", 1, None);
    let hash = info_hash_of(&torrent);
    let seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    let out = dir.path().join("out");
    let saved = dir.path().join("saved.torrent");
    let link = bare_magnet(&hash, &[seed.addr()]);
    let (o, took) = rtc_get(
        &link,
        &out,
        &["--save-torrent", saved.to_str().unwrap()],
        BOUND,
    );
    let log = ok(&o);
    assert!(log.contains("connected (metadata)"), "{log}");
    assert_same_bytes(&data, &out.join("m1.bin"));
    drop(seed);

    // The saved torrent has the same info hash, by rtc and by the helper.
    assert_eq!(info_hash_of(&saved), hash);
    let info = run_bounded(
        Command::new(rtc_bin()).arg("info").arg(&saved),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{text}");
    assert!(text.contains(&hash), "{text}");
    // libtorrent loads it and, over the downloaded copy, is a seed.
    let again = Peer::libtorrent_seed(&saved, &out, free_port(), "127.0.0.1");
    drop(again);
    eprintln!("rtc download {took:?}, test {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// 2. libtorrent seeder found through the magnet's tracker only

#[test]
fn magnet_from_rtc_magnet_downloads_through_its_tracker() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::start::<&str>(&[]);
    let (data, torrent) = content(dir.path(), "m2.bin", 2, Some(&tracker.announce_url()));
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    let _seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));
    let link = magnet_of(&torrent);
    assert!(link.contains("&tr=http%3A%2F%2F127.0.0.1%3A"), "{link}");
    assert!(!link.contains("x.pe"), "{link}");
    let out = dir.path().join("out");
    let (o, took) = rtc_get(&link, &out, &[], BOUND);
    ok(&o);
    assert_same_bytes(&data, &out.join("m2.bin"));
    eprintln!("rtc download {took:?}, test {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// 3. aria2c as the seeder

#[test]
fn magnet_downloads_from_an_aria2c_seeder() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (data, torrent) = content(dir.path(), "m3.bin", 3, None);
    let hash = info_hash_of(&torrent);
    let seed = Peer::aria2_seed(&torrent, &dir.path().join("seed"), free_port());
    let out = dir.path().join("out");
    let (o, took) = rtc_get(&bare_magnet(&hash, &[seed.addr()]), &out, &[], BOUND);
    let log = ok(&o);
    assert!(log.contains("connected (metadata)"), "{log}");
    assert_same_bytes(&data, &out.join("m3.bin"));
    eprintln!("rtc download {took:?}, test {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// 4. Leechers that have only the magnet fetch the metadata from rtc

/// A running rtc, killed by PID (and reaped) on drop; stderr in a file.
struct Rtc {
    child: Child,
    log: PathBuf,
    _logs: tempfile::TempDir,
}

impl Rtc {
    fn spawn(args: &[&str]) -> Rtc {
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("rtc.log");
        let child = Command::new(rtc_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run rtc");
        Rtc {
            child,
            log,
            _logs: logs,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rtc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- rtc log ---\n{}", self.log());
        }
    }
}

/// `rtc seed TORRENT -o DIR --port P`, returned once it accepts peers.
fn rtc_seed(torrent: &Path, dir: &Path, port: u16) -> Rtc {
    let mut rtc = Rtc::spawn(&[
        "-v",
        "seed",
        torrent.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
    ]);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while !port_accepts(local(port)) {
        if let Ok(Some(st)) = rtc.child.try_wait() {
            panic!("rtc seed exited ({st}):\n{}", rtc.log());
        }
        assert!(Instant::now() < deadline, "rtc seed not listening");
        thread::sleep(Duration::from_millis(20));
    }
    rtc
}

#[test]
fn libtorrent_with_only_the_magnet_fetches_metadata_from_rtc() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (data, torrent) = content(dir.path(), "m4.bin", 4, None);
    let hash = info_hash_of(&torrent);
    let port = free_port();
    let _rtc = rtc_seed(&torrent, &dir.path().join("seed"), port);
    let out = dir.path().join("out");
    let link = bare_magnet(&hash, &[]);
    let took = lt_leech(
        Path::new(&link),
        &out,
        free_port(),
        &[local(port)],
        Duration::from_secs(60),
    );
    assert_same_bytes(&data, &out.join("m4.bin"));
    eprintln!("libtorrent download {took:?}, test {:?}", t0.elapsed());
}

/// aria2c 1.36 ignores a magnet's `x.pe`, so it finds rtc through the
/// magnet's tracker.
#[test]
fn aria2c_with_only_the_magnet_fetches_metadata_from_rtc() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::start::<&str>(&[]);
    let (data, torrent) = content(dir.path(), "m4a.bin", 5, Some(&tracker.announce_url()));
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    let port = free_port();
    let _rtc = rtc_seed(&torrent, &dir.path().join("seed"), port);
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(20));
    let out = dir.path().join("out");
    let link = magnet_of(&torrent);
    let start = Instant::now();
    let o = run_bounded(
        &mut aria2_leech_command(Path::new(&link), &out),
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "aria2c failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_bytes(&data, &out.join("m4a.bin"));
    eprintln!(
        "aria2c download {:?}, test {:?}",
        start.elapsed(),
        t0.elapsed()
    );
}
