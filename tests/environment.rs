//! Environment faults, inflicted for real: a tracker that hangs, one that
//! answers garbage, a swarm with no peers, an output path that cannot be a
//! directory, and a full disk (a size-limited tmpfs). Each must end in one
//! clear line with its documented exit code, within a bounded time.

mod common;

use common::fake_http::{Answer, FakeTracker};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NO_PEERS: i32 = 4;
const IO: i32 = 5;

fn small_torrent(dir: &Path, announce: Option<&str>) -> PathBuf {
    let content = dir.join("seed/f.bin");
    random_file(&content, 200_000, 91);
    let torrent = dir.join("t.torrent");
    mktorrent(&content, &torrent, announce, 15);
    torrent
}

fn rtc(args: &[&str], torrent: &Path, bound: Duration) -> (Output, Duration) {
    let t = Instant::now();
    let out = run_bounded(rtc_cmd().args(args).arg(torrent), bound);
    (out, t.elapsed())
}

fn one_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    err
}

#[test]
fn tracker_that_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTracker::start(Answer::Hang);
    let torrent = small_torrent(dir.path(), Some(&fake.url));
    let out_dir = dir.path().join("out");
    let (out, took) = rtc(
        &["--tracker-timeout", "2", "-o", out_dir.to_str().unwrap()],
        &torrent,
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(NO_PEERS));
    let err = one_line(&out);
    assert!(
        err.contains("timeout") || err.contains("timed out"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
}

#[test]
fn tracker_that_answers_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTracker::start(Answer::Body(b"<html>Bad Gateway</html>"));
    let torrent = small_torrent(dir.path(), Some(&fake.url));
    let out_dir = dir.path().join("out");
    let (out, _) = rtc(
        &["-o", out_dir.to_str().unwrap()],
        &torrent,
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(NO_PEERS));
    assert!(one_line(&out).contains("not bencode"));
}

#[test]
fn no_peers_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = small_torrent(dir.path(), Some(&tracker.announce_url()));
    tracker.allow(&info_hash_of(&torrent));
    let out_dir = dir.path().join("out");
    let (out, took) = rtc(
        &["--timeout", "2", "-o", out_dir.to_str().unwrap()],
        &torrent,
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(NO_PEERS));
    assert!(one_line(&out).contains("no peers"));
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
}

#[test]
fn output_directory_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let torrent = small_torrent(dir.path(), None);
    // A regular file where the output directory should be. (Tests run as
    // root, where permission bits do not stop writes; a file does.)
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let out_dir = blocker.join("out");
    let (out, _) = rtc(
        &["--peer", "127.0.0.1:9", "-o", out_dir.to_str().unwrap()],
        &torrent,
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(IO));
    assert!(one_line(&out).contains("Not a directory"));
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");
}

/// A tmpfs of `size` mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("small"), "1m") else {
        eprintln!("SKIPPED disk_full: cannot mount a tmpfs (needs root)");
        return;
    };
    let content = dir.path().join("seed/big.bin");
    let len = 3 * 1024 * 1024;
    random_file(&content, len, 92);
    let torrent = dir.path().join("t.torrent");
    mktorrent(&content, &torrent, None, 16);
    let seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    let peer = format!("127.0.0.1:{}", seed.port());
    let (out, _) = rtc(
        &["--peer", &peer, "-o", disk.0.to_str().unwrap()],
        &torrent,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(IO));
    assert!(one_line(&out).contains("No space left on device"));
    // Only whole, verified pieces are on the small disk; resuming from a copy
    // of it on a big disk completes the download.
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for e in std::fs::read_dir(&disk.0).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), big.join(e.file_name())).unwrap();
    }
    drop(disk);
    let (out, _) = rtc(
        &["-v", "--peer", &peer, "-o", big.to_str().unwrap()],
        &torrent,
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resume: "), "resumed from what fitted: {err}");
    assert_same_bytes(&content, &big.join("big.bin"));
}
