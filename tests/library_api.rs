//! The library used the way a program without an async runtime would: start
//! a download from a plain thread, read progress and events while it runs,
//! wait for the result; and cancel one from another thread.

mod common;

use common::*;
use rtc::{AddOptions, CancelHandle, Download, Error, Event, Session, Torrent};
use std::time::{Duration, Instant};

#[test]
fn download_from_a_plain_thread_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/lib.bin");
    random_file(&content, 4 * 1024 * 1024 + 99, 51);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent_path = dir.path().join("t.torrent");
    mktorrent(&content, &torrent_path, Some(&tracker.announce_url()), 16);
    let hash = info_hash_of(&torrent_path);
    tracker.allow(&hash);
    let _seed = Peer::libtorrent_seed(
        &torrent_path,
        &dir.path().join("seed"),
        free_port(),
        "127.0.0.1",
    );
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));

    let torrent = Torrent::from_bytes(&std::fs::read(&torrent_path).unwrap()).unwrap();
    assert_eq!(
        torrent.info_hash().hex(),
        hash,
        "same info hash as an independent parser"
    );
    let out = dir.path().join("out");
    let worker = std::thread::spawn(move || {
        let dl = Download::start_with(
            torrent,
            AddOptions::new(&out),
            rtc::SessionOptions::default().no_dht(),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pieces_seen = 0;
        let mut finished = false;
        let mut ended = None;
        let mut last = dl.progress();
        // The iterator ends after `Ended`, which carries the result.
        for ev in dl.events() {
            assert!(Instant::now() < deadline, "download did not end");
            assert!(ended.is_none(), "nothing after Ended");
            match ev {
                Event::PieceDone { progress, .. } => {
                    pieces_seen += 1;
                    assert!(progress.verified_bytes <= progress.total_bytes);
                }
                Event::Finished => finished = true,
                Event::Ended(result) => ended = Some(result),
                _ => {}
            }
            let p = dl.progress();
            assert!(
                p.verified_bytes >= last.verified_bytes,
                "progress never goes back"
            );
            last = p;
        }
        let p = dl.progress();
        let from_event = ended.expect("Ended event").expect("download succeeds");
        let summary = dl.wait().expect("download succeeds");
        assert_eq!(summary, from_event, "the event carries wait()'s result");
        (summary, p, pieces_seen, finished)
    });
    let (summary, progress, pieces_seen, finished) = worker.join().unwrap();
    assert_eq!(summary.total_bytes, 4 * 1024 * 1024 + 99);
    assert_eq!(summary.downloaded_bytes, summary.total_bytes);
    assert_eq!(progress.verified_bytes, progress.total_bytes);
    assert_eq!(progress.pieces_done, progress.pieces_total);
    assert_eq!(
        pieces_seen, progress.pieces_total,
        "one PieceDone per piece"
    );
    assert!(finished, "Finished event");
    assert_same_bytes(&content, &dir.path().join("out/lib.bin"));
}

#[test]
fn cancel_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/c.bin");
    random_file(&content, 100_000, 52);
    let torrent_path = dir.path().join("t.torrent");
    mktorrent(&content, &torrent_path, None, 15);
    let torrent = Torrent::from_bytes(&std::fs::read(&torrent_path).unwrap()).unwrap();
    // A peer that never answers: the download can only end by cancel.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = AddOptions::new(dir.path().join("out")).peer(silent.local_addr().unwrap());
    let dl = Download::start_with(torrent, opts, rtc::SessionOptions::default().no_dht()).unwrap();
    let cancel = dl.cancel_handle();
    let started = Instant::now();
    std::thread::spawn(move || cancel.cancel());
    match dl.wait() {
        Err(Error::Cancelled) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel is prompt"
    );
}

#[test]
fn complete_data_finishes_without_any_peer() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/done.bin");
    random_file(&content, 300_000, 53);
    let torrent_path = dir.path().join("t.torrent");
    // The tracker URL is dead: finishing proves nothing was contacted.
    let url = format!("http://127.0.0.1:{}/announce", free_port());
    mktorrent(&content, &torrent_path, Some(&url), 15);
    let torrent = Torrent::from_bytes(&std::fs::read(&torrent_path).unwrap()).unwrap();
    let summary = Download::start_with(
        torrent,
        AddOptions::new(dir.path().join("seed")),
        rtc::SessionOptions::default().no_dht(),
    )
    .unwrap()
    .wait()
    .expect("already complete");
    assert_eq!(summary.downloaded_bytes, 0);
    assert_eq!(summary.total_bytes, 300_000);
}

#[test]
fn download_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Download>();
    assert_send_sync::<CancelHandle>();
    assert_send_sync::<Session>();
    assert_send_sync::<rtc::Events>();
}

#[test]
fn pause_closes_every_connection_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/p.bin");
    random_file(&content, 6 * 1024 * 1024, 54);
    let torrent_path = dir.path().join("t.torrent");
    mktorrent(&content, &torrent_path, None, 16);
    // Slow enough that the download is still running when paused.
    let seed = Peer::libtorrent_seed_with(
        &torrent_path,
        &dir.path().join("seed"),
        free_port(),
        "127.0.0.1",
        &["--upload-limit", "1500000"],
    );
    let torrent = Torrent::from_bytes(&std::fs::read(&torrent_path).unwrap()).unwrap();
    let out = dir.path().join("out");
    let session = Session::new(rtc::SessionOptions::default().no_dht().port(0)).unwrap();
    let dl = session
        .add(torrent, AddOptions::new(&out).peer(seed.addr()))
        .unwrap();
    // Pause and resume at once, repeatedly: every closed peer must still
    // be dialled again (no race between the pause and its connections'
    // ends forgets an address).
    for _ in 0..5 {
        dl.pause();
        dl.resume();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let until = |what: &str, f: &dyn Fn() -> bool| {
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until("some progress", &|| dl.progress().pieces_done > 0);
    dl.pause();
    until("paused with no peer", &|| {
        let p = dl.progress();
        p.paused && p.peers == 0 && session.connections() == 0
    });
    // Pieces already verified when the connections closed are still
    // written; once that settles, nothing moves while paused.
    let mut before = dl.progress().verified_bytes;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = dl.progress().verified_bytes;
        if now == before {
            break;
        }
        before = now;
    }
    assert!(before < 6 * 1024 * 1024, "paused before the end");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        dl.progress().verified_bytes,
        before,
        "no progress while paused"
    );
    assert_eq!(session.connections(), 0);
    dl.resume();
    let summary = dl.wait().expect("finishes after resume");
    assert_eq!(summary.total_bytes, 6 * 1024 * 1024);
    assert_same_bytes(&content, &out.join("p.bin"));
    session.shutdown();
}

#[test]
fn adding_is_not_held_up_by_a_wait_on_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut torrents = Vec::new();
    for i in 0..2 {
        let content = dir.path().join(format!("seed/w{i}.bin"));
        random_file(&content, 100_000, 60 + i);
        let path = dir.path().join(format!("w{i}.torrent"));
        mktorrent(&content, &path, None, 15);
        torrents.push(Torrent::from_bytes(&std::fs::read(&path).unwrap()).unwrap());
    }
    let b = torrents.pop().unwrap();
    let a = torrents.pop().unwrap();
    let session = Session::new(rtc::SessionOptions::default().no_dht().port(0)).unwrap();
    let opts = AddOptions::new(dir.path().join("out")).peer(silent.local_addr().unwrap());
    let first = session.add(a, opts.clone()).unwrap();
    std::thread::scope(|s| {
        // Another thread waits on the first download (which cannot end by
        // itself: its only peer never answers).
        let waiter = s.spawn(|| first.wait());
        let t = Instant::now();
        let second = session.add(b, opts.clone()).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "add waited {:?} for another thread's wait",
            t.elapsed()
        );
        assert_eq!(session.torrents().len(), 2);
        second.cancel();
        assert!(matches!(second.wait(), Err(Error::Cancelled)));
        session.shutdown();
        assert!(matches!(waiter.join().unwrap(), Err(Error::Cancelled)));
    });
}

/// `AddOptions::files`: only the selected file is written; progress counts
/// the pieces it needs; a selection naming no file of the torrent ends the
/// download with `Error::Selection` before anything is created.
#[test]
fn a_file_selection_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/lib");
    random_file(&content.join("one.bin"), 200_000, 61);
    random_file(&content.join("two.bin"), 300_000, 62);
    let torrent_path = dir.path().join("t.torrent");
    mktorrent(&content, &torrent_path, None, 16);
    let seed = Peer::libtorrent_seed(
        &torrent_path,
        &dir.path().join("seed"),
        free_port(),
        "127.0.0.1",
    );
    let torrent = Torrent::from_bytes(&std::fs::read(&torrent_path).unwrap()).unwrap();
    let out = dir.path().join("out");
    let opts = AddOptions::new(&out)
        .peer(seed.addr())
        .files(rtc::FileSelection::all().include("*two*").unwrap());
    let dl = Download::start_with(
        torrent.clone(),
        opts,
        rtc::SessionOptions::default().no_dht(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dl.is_finished() {
        assert!(Instant::now() < deadline, "download did not end");
        let _ = dl.events().recv_timeout(Duration::from_millis(100));
    }
    assert_eq!(dl.selected_files(), Some(vec![1]));
    let p = dl.progress();
    let summary = dl.wait().expect("download succeeds");
    // two.bin is bytes 200,000..500,000: pieces 3-7 of 64 KiB, so bytes
    // 196,608..500,000 (the last piece is short).
    assert_eq!(p.wanted_bytes, 500_000 - 3 * 65_536);
    assert_eq!(p.wanted_verified_bytes, p.wanted_bytes);
    assert_eq!(p.fraction(), 1.0);
    assert_eq!(summary.downloaded_bytes, p.wanted_bytes);
    assert_same_bytes(&content.join("two.bin"), &out.join("lib/two.bin"));
    assert!(!out.join("lib/one.bin").exists());

    let out2 = dir.path().join("out2");
    let opts = AddOptions::new(&out2).files(rtc::FileSelection::all().file(2));
    let dl = Download::start_with(torrent, opts, rtc::SessionOptions::default().no_dht()).unwrap();
    match dl.wait() {
        Err(Error::Selection(e)) => {
            assert_eq!(e, rtc::SelectError::OutOfRange { index: 2, files: 2 })
        }
        other => panic!("expected a selection error, got {other:?}"),
    }
    assert!(!out2.exists());
}
