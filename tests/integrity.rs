//! Faults inflicted for real on the real binary: kill -9 at several points
//! and restart, Ctrl-C, corrupted data on disk, and a user's file in the
//! way. Every run ends in a byte-compare (or an untouched user file).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

const LEN: usize = 8 * 1024 * 1024 + 4321;
const BOUND: Duration = Duration::from_secs(120);

struct Setup {
    dir: TempDir,
    torrent: PathBuf,
    hash: String,
    tracker: Tracker,
    _seed: Peer,
}

/// An 8 MiB file behind a libtorrent seeder capped at 4 MB/s, so a
/// download takes about two seconds and can be interrupted mid-way.
fn setup(seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/data.bin");
    random_file(&content, LEN, seed);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = dir.path().join("t.torrent");
    mktorrent(&content, &torrent, Some(&tracker.announce_url()), 16);
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    let seed = Peer::libtorrent_seed_with(
        &torrent,
        &dir.path().join("seed"),
        free_port(),
        "127.0.0.1",
        &["--upload-limit", "4000000"],
    );
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));
    Setup {
        dir,
        torrent,
        hash,
        tracker,
        _seed: seed,
    }
}

impl Setup {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn original(&self) -> PathBuf {
        self.dir.path().join("seed/data.bin")
    }
    fn spawn_rtc(&self) -> Child {
        rtc_cmd()
            .args(["-v", "-o"])
            .arg(self.out())
            .arg(&self.torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    fn run_rtc(&self) -> std::process::Output {
        self.run_rtc_with(&[])
    }
    fn run_rtc_with(&self, extra: &[&str]) -> std::process::Output {
        run_bounded(
            rtc_cmd()
                .args(["-v", "-o"])
                .arg(self.out())
                .args(extra)
                .arg(&self.torrent),
            BOUND,
        )
    }
    /// Pieces `rtc verify` finds complete on disk right now.
    fn verified_pieces(&self) -> u32 {
        let out = run_bounded(
            rtc_cmd()
                .arg("verify")
                .arg(&self.torrent)
                .arg("-o")
                .arg(self.out()),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (_, rest) = text.split_once(": ").expect("verify summary line");
        rest.split('/').next().unwrap().parse().unwrap()
    }
}

fn kill9(child: &mut Child) {
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
}

/// 8 MiB / 64 KiB pieces.
const PIECES: u32 = (LEN as u32).div_ceil(1 << 16);

#[test]
fn kill_9_at_several_points_then_resume() {
    let s = setup(61);
    let marker = s.out().join(format!(".rtc-{}", s.hash));
    // Kill right after start, then at ~25% and ~70% of the pieces.
    for (round, at_least) in [(0, 0), (1, PIECES / 4), (2, PIECES * 7 / 10)] {
        let mut child = s.spawn_rtc();
        wait_for(BOUND, "rtc to reach the kill point", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("rtc ended before round {round}'s kill point: {st}");
            }
            marker.exists() && (at_least == 0 || s.verified_pieces() >= at_least)
        });
        kill9(&mut child);
        let have = s.verified_pieces();
        assert!(have >= at_least, "round {round}: {have} < {at_least}");
        assert!(have < PIECES, "round {round}: already complete");
    }
    let before = s.verified_pieces();
    let out = s.run_rtc();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    if before > 0 {
        assert!(
            err.contains(&format!("resume: {before} of {PIECES} pieces")),
            "resumed from verified data: {err}"
        );
    }
    assert_same_bytes(&s.original(), &s.out().join("data.bin"));
    assert!(!marker.exists(), "marker removed when complete");
}

#[test]
fn corrupted_data_on_disk_is_fetched_again() {
    let s = setup(62);
    let out = s.run_rtc();
    assert!(out.status.success());
    // Flip bytes in three places (first piece, middle, last block).
    let file = s.out().join("data.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    for at in [10, LEN / 2, LEN - 3] {
        bytes[at] ^= 0xff;
    }
    std::fs::write(&file, &bytes).unwrap();
    // The marker is gone (download completed), so this is now the user's
    // file: rtc must refuse to touch it...
    let out = s.run_rtc();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(
        err.contains("--repair"),
        "the message names the way out: {err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "user file untouched");
    // With --repair, exactly the three bad pieces are fetched again.
    assert_three_refetched(&s.run_rtc_with(&["--repair"]));
    assert_same_bytes(&s.original(), &file);
    std::fs::write(&file, &bytes).unwrap();
    // ...unless it is rtc's own partial download (the marker is back, as
    // after a crash): then exactly the bad pieces are fetched again.
    std::fs::write(s.out().join(format!(".rtc-{}", s.hash)), b"").unwrap();
    assert_eq!(s.verified_pieces(), PIECES - 3);
    assert_three_refetched(&s.run_rtc());
    assert_same_bytes(&s.original(), &file);
}

/// The run succeeded after resuming from all but three pieces.
fn assert_three_refetched(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("resume: {} of {PIECES}", PIECES - 3)),
        "{err}"
    );
}

#[test]
fn a_users_file_in_the_way_is_never_overwritten() {
    let s = setup(63);
    std::fs::create_dir_all(s.out()).unwrap();
    let file = s.out().join("data.bin");
    std::fs::write(&file, b"my precious notes").unwrap();
    let out = s.run_rtc();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("rtc:")).count(), 1);
    assert!(err.contains("data.bin already exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"my precious notes");
    // --repair only rewrites files of the torrent's size: not this one.
    let out = s.run_rtc_with(&["--repair"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left alone"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"my precious notes");
}

#[test]
fn sigint_stops_cleanly_and_announces_stopped() {
    let s = setup(64);
    let mut child = s.spawn_rtc();
    wait_for(BOUND, "a few pieces on disk", || s.verified_pieces() >= 4);
    wait_for(Duration::from_secs(10), "the tracker to count rtc", || {
        s.tracker.leechers(&s.hash) >= 1
    });
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "rtc did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(130));
    // opentracker forgets a peer that announced `stopped`.
    assert_eq!(s.tracker.leechers(&s.hash), 0, "stopped announce");
    let have = s.verified_pieces();
    assert!((4..PIECES).contains(&have));
    let out = s.run_rtc();
    assert!(out.status.success());
    assert_same_bytes(&s.original(), &s.out().join("data.bin"));
}
