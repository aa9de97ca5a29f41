//! End-to-end downloads by the real `rtc` binary from real third-party
//! seeders (libtorrent, aria2c) found through a real opentracker on
//! 127.0.0.1. Every test byte-compares the result with the original.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

const BOUND: Duration = Duration::from_secs(120);

/// A seed directory holding the content, a torrent announcing to a fresh
/// opentracker that allows it.
struct Swarm {
    dir: TempDir,
    torrent: PathBuf,
    hash: String,
    tracker: Tracker,
}

impl Swarm {
    /// `make` fills `<tmp>/seed/` and returns the content path (the file or
    /// top directory the torrent describes).
    fn new(piece_log2: u32, make: impl FnOnce(&Path) -> PathBuf) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let content = make(&dir.path().join("seed"));
        let tracker = Tracker::start::<&str>(&[]);
        let torrent = dir.path().join("t.torrent");
        mktorrent(
            &content,
            &torrent,
            Some(&tracker.announce_url()),
            piece_log2,
        );
        let hash = info_hash_of(&torrent);
        tracker.allow(&hash);
        Swarm {
            dir,
            torrent,
            hash,
            tracker,
        }
    }

    fn seed_dir(&self) -> PathBuf {
        self.dir.path().join("seed")
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn libtorrent(&self) -> Peer {
        Peer::libtorrent_seed(&self.torrent, &self.seed_dir(), free_port(), "127.0.0.1")
    }

    fn aria2(&self) -> Peer {
        Peer::aria2_seed(&self.torrent, &self.seed_dir(), free_port())
    }

    fn rtc(&self, extra: &[&str]) -> Output {
        let out = run_bounded(
            rtc_cmd()
                .arg("-v")
                .arg("-o")
                .arg(self.out_dir())
                .args(extra)
                .arg(&self.torrent),
            BOUND,
        );
        assert_success(&out);
        out
    }
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "rtc failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn single_file(seed_dir: &Path, len: usize, seed: u64) -> PathBuf {
    let p = seed_dir.join("single.bin");
    random_file(&p, len, seed);
    p
}

/// 256 KiB pieces and a length that is not a multiple of the piece length
/// (nor of the 16 KiB block): the last piece and last block are short.
const ODD_LEN: usize = 5 * 1024 * 1024 + 12_345;

#[test]
fn single_file_from_libtorrent() {
    let s = Swarm::new(18, |d| single_file(d, ODD_LEN, 11));
    let _seed = s.libtorrent();
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(10));
    let out = s.rtc(&[]);
    assert_same_tree(&s.seed_dir(), &s.out_dir());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("verified"), "summary line: {err}");
}

#[test]
fn single_file_from_aria2() {
    let s = Swarm::new(18, |d| single_file(d, ODD_LEN, 12));
    let _seed = s.aria2();
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(15));
    s.rtc(&[]);
    assert_same_tree(&s.seed_dir(), &s.out_dir());
}

/// Nested directories, an empty file, files smaller than a block, and 32 KiB
/// pieces, so that several pieces span several files.
fn multi_file_tree(seed_dir: &Path) -> PathBuf {
    let root = seed_dir.join("tree");
    random_file(&root.join("a/b/c/deep.bin"), 300_000, 21);
    random_file(&root.join("a/tiny1"), 10, 22);
    random_file(&root.join("a/empty"), 0, 0);
    random_file(&root.join("a/tiny2"), 5_000, 23);
    random_file(&root.join("b.bin"), 70_001, 24);
    random_file(&root.join("c/small"), 16_383, 25);
    random_file(&root.join("c/d/e"), 1, 26);
    random_file(&root.join("z.bin"), 200_000, 27);
    root
}

#[test]
fn multi_file_from_two_seeders_at_once() {
    // A bigger tree, and libtorrent capped at 2 MiB/s: the download lasts
    // long enough for aria2c (which works in 1 s ticks) to take part, and
    // no single seeder can carry it alone quickly.
    let s = Swarm::new(15, |d| {
        let root = multi_file_tree(d);
        random_file(&root.join("big/one.bin"), 3 * 1024 * 1024, 28);
        random_file(&root.join("big/two.bin"), 2 * 1024 * 1024 + 3, 29);
        root
    });
    let lt = Peer::libtorrent_seed_with(
        &s.torrent,
        &s.seed_dir(),
        free_port(),
        "127.0.0.1",
        &["--upload-limit", "2000000"],
    );
    let aria = s.aria2();
    s.tracker
        .wait_for_seeders(&s.hash, 2, Duration::from_secs(15));
    let out = s.rtc(&[]);
    assert_same_tree(&s.seed_dir(), &s.out_dir());
    assert!(
        s.out_dir().join("tree/a/empty").is_file(),
        "empty file created"
    );
    // Both seeders were used as peers.
    let err = String::from_utf8_lossy(&out.stderr);
    for port in [lt.port(), aria.port()] {
        assert!(
            err.contains(&format!("peer 127.0.0.1:{port} connected")),
            "no connection to seeder on {port}:\n{err}"
        );
    }
}

#[test]
fn multi_file_from_libtorrent() {
    let s = Swarm::new(15, multi_file_tree);
    let _seed = s.libtorrent();
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(10));
    s.rtc(&["--max-peers", "4"]);
    assert_same_tree(&s.seed_dir(), &s.out_dir());
}

#[test]
fn torrent_on_stdin() {
    let s = Swarm::new(18, |d| single_file(d, 3 * 1024 * 1024 + 7, 31));
    let _seed = s.libtorrent();
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(10));
    let bytes = std::fs::read(&s.torrent).unwrap();
    let mut child = rtc_cmd()
        .arg("-o")
        .arg(s.out_dir())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let pid = child.id();
    // Bounded: the watchdog kills rtc if it has not finished in time.
    let watchdog = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + BOUND;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let _ = watchdog.join();
    assert_success(&out);
    assert_same_tree(&s.seed_dir(), &s.out_dir());
}

#[test]
fn dead_tracker_fails_fast_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let content = single_file(&dir.path().join("seed"), 100_000, 41);
    let torrent = dir.path().join("t.torrent");
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}/announce", free_port());
    mktorrent(&content, &torrent, Some(&url), 15);
    let out = run_bounded(
        rtc_cmd()
            .arg("-o")
            .arg(dir.path().join("out"))
            .arg(&torrent),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Connection refused"), "{err}");
}

#[test]
fn tracker_refusal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let content = single_file(&dir.path().join("seed"), 100_000, 42);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = dir.path().join("t.torrent");
    mktorrent(&content, &torrent, Some(&tracker.announce_url()), 15);
    // Not whitelisted: opentracker answers with a failure reason.
    let out = run_bounded(
        rtc_cmd()
            .arg("-o")
            .arg(dir.path().join("out"))
            .arg(&torrent),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authorized"), "{err}");
}

/// 20,000 small files (about 4 MiB, 32 KiB pieces, each piece spanning
/// about 160 files) downloaded by rtc running under `ulimit -n 256`: rtc
/// keeps at most a few dozen files open at once, not one per file.
#[test]
fn twenty_thousand_files_under_a_low_open_file_limit() {
    const FILES: usize = 20_000;
    let s = Swarm::new(15, |d| {
        let root = d.join("many");
        for dir in 0..20 {
            let sub = root.join(format!("d{dir:02}"));
            std::fs::create_dir_all(&sub).unwrap();
            for i in 0..FILES / 20 {
                let n = dir * 1000 + i;
                // 150-250 bytes of content that differs per file.
                let body: Vec<u8> = (0..150 + n % 101).map(|k| (n * 31 + k * 7) as u8).collect();
                std::fs::write(sub.join(format!("f{i:04}")), body).unwrap();
            }
        }
        root
    });
    let _seed = s.libtorrent();
    s.tracker
        .wait_for_seeders(&s.hash, 1, Duration::from_secs(60));
    let out = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
            .arg(rtc_bin())
            .args(["--no-dht", "-v", "--max-open-files", "32"])
            .arg("-o")
            .arg(s.out_dir())
            .arg(&s.torrent),
        BOUND,
    );
    assert_success(&out);
    assert_same_tree(&s.seed_dir(), &s.out_dir());
}
