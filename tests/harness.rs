//! The swarm set-up the other integration tests rely on, proven with
//! third-party programs only (no rtc): opentracker in whitelist mode, a
//! seeder (libtorrent or aria2c) found through it, and a libtorrent
//! downloader whose bytes must equal the original.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tempfile::TempDir;

const LEN: usize = 3 << 20;
const BOUND: Duration = Duration::from_secs(60);

/// A 3 MiB file in `<tmp>/seed/`, a tracker, and a torrent (2^18-byte
/// pieces) announcing to it whose hash the tracker then allows.
fn swarm_fixture(seed: u64) -> (TempDir, PathBuf, String, Tracker) {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("seed/payload.bin");
    random_file(&payload, LEN, seed);
    // The torrent needs the tracker's port, so the hash is allowed after.
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = dir.path().join("payload.torrent");
    mktorrent(&payload, &torrent, Some(&tracker.announce_url()), 18);
    let hash = info_hash_of(&torrent);
    assert_eq!(tracker.authorized(&"0".repeat(40)), Some(false));
    tracker.allow(&hash);
    (dir, torrent, hash, tracker)
}

#[test]
fn libtorrent_seeds_libtorrent_through_opentracker() {
    let (dir, torrent, hash, tracker) = swarm_fixture(1);
    let data_parent = dir.path().join("seed");
    let seeder = Peer::libtorrent_seed(&torrent, &data_parent, free_port(), "127.0.0.1");
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));

    let out = dir.path().join("out");
    let took = lt_leech(&torrent, &out, free_port(), &[], BOUND);
    eprintln!("libtorrent -> libtorrent via tracker: {took:?}");
    assert_same_tree(&data_parent, &out);

    // Drop stops the processes by PID.
    let pids = [seeder.pid(), tracker.pid()];
    drop(seeder);
    drop(tracker);
    assert!(pids.iter().all(|&p| !process_exists(p)));
}

#[test]
fn aria2_seeds_libtorrent_through_opentracker() {
    let (dir, torrent, hash, tracker) = swarm_fixture(2);
    let data_parent = dir.path().join("seed");
    let _seeder = Peer::aria2_seed(&torrent, &data_parent, free_port());
    // aria2c announces about a second after it starts listening.
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(15));

    let out = dir.path().join("out");
    let took = lt_leech(&torrent, &out, free_port(), &[], BOUND);
    eprintln!("aria2c -> libtorrent via tracker: {took:?}");
    assert_same_tree(&data_parent, &out);
}

/// Trackerless, multi-file with zero-length files, libtorrent seeding on
/// [::1] and taking an incoming connection from a peer that was told its
/// address directly.
#[test]
fn libtorrent_seeds_trackerless_multi_file_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("seed/tree");
    random_file(&tree.join("a.bin"), 100_000, 3);
    random_file(&tree.join("sub/b.bin"), 70_000, 4);
    random_file(&tree.join("sub/empty"), 0, 0);
    random_file(&tree.join("zero"), 0, 0);
    let torrent = dir.path().join("tree.torrent");
    mktorrent(&tree, &torrent, None, 15);

    let seeder = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "::1");
    let out = dir.path().join("out");
    lt_leech(&torrent, &out, free_port(), &[seeder.addr()], BOUND);
    assert_same_tree(&dir.path().join("seed"), &out);
}

/// The helpers' own logic, without other processes.
#[test]
fn helpers_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a/x.bin");
    let b = dir.path().join("b/x.bin");
    random_file(&a, 100_001, 7);
    random_file(&b, 100_001, 7);
    assert_same_bytes(&a, &b);
    random_file(&b, 100_001, 8);
    assert!(compare_files(&a, &b)
        .unwrap_err()
        .contains("differ at offset"));
    random_file(&b, 100_000, 7);
    assert!(compare_files(&a, &b)
        .unwrap_err()
        .contains("lengths differ"));

    let tree = dir.path().join("tree");
    let copy = dir.path().join("copy/tree");
    for root in [&tree, &copy] {
        random_file(&root.join("sub/one.bin"), 40_000, 1);
        random_file(&root.join("empty"), 0, 1);
        random_file(&root.join("sub/deeper/empty2"), 0, 1);
    }
    assert_same_tree(&tree, &copy);
    std::fs::remove_file(copy.join("empty")).unwrap();
    assert!(compare_trees(&tree, &copy).unwrap_err().contains("missing"));

    // mktorrent without -a writes a trackerless torrent; the info hash does
    // not depend on the announce URL or the creation date.
    let t = dir.path().join("tree.torrent");
    mktorrent(&tree, &t, None, 15);
    let raw = std::fs::read(&t).unwrap();
    assert!(!raw.windows(10).any(|w| w == b"8:announce"));
    let hash = info_hash_of(&t);
    assert_eq!(hash.len(), 40);
    let t2 = dir.path().join("tree2.torrent");
    mktorrent(&tree, &t2, Some("http://127.0.0.1:1/announce"), 15);
    assert_eq!(info_hash_of(&t2), hash);

    let p = free_port();
    assert_ne!(free_port(), p);
}
