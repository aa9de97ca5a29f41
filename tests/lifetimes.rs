//! Lifetimes an embedder relies on: `wait()`, `cancel()`, dropping a
//! `Download` and `Session::shutdown()` each return within 2 s even when
//! a peer accepts the connection and never says a word and every tracker
//! (HTTP and UDP) hangs, and afterwards this process has exactly the
//! threads and open files it had before. The silent peer and the hanging
//! trackers run in a child process, so that /proc/self counts rtc alone.
//! One test function: a test binary of its own, run sequentially, so the
//! counts are not disturbed by other tests' threads.

mod common;

use common::*;
use rtc::{AddOptions, Download, Error, Session, SessionOptions, Torrent};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every operation under test returns within this.
const PROMPT: Duration = Duration::from_secs(2);

/// A TCP peer that accepts and never speaks, an HTTP tracker that accepts
/// and never answers, and a UDP tracker that never answers. Prints its
/// ports, then one line per connection or datagram.
const SILENT: &str = r#"
import socket, select, sys
peer = socket.socket(); peer.bind(("127.0.0.1", 0)); peer.listen(64)
http = socket.socket(); http.bind(("127.0.0.1", 0)); http.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
print("PORTS", peer.getsockname()[1], http.getsockname()[1], udp.getsockname()[1], flush=True)
held = []
while True:
    ready, _, _ = select.select([peer, http, udp], [], [], 1.0)
    for s in ready:
        if s is udp:
            s.recvfrom(2048); print("UDP", flush=True)
        else:
            c, _ = s.accept(); held.append(c)
            print("PEER" if s is peer else "HTTP", flush=True)
"#;

struct Silent {
    child: Child,
    lines: mpsc::Receiver<String>,
    peer: u16,
    http: u16,
    udp: u16,
}

impl Silent {
    fn start() -> Silent {
        let mut child = Command::new(PYTHON)
            .args(["-c", SILENT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).expect("ports");
        let p: Vec<u16> = first
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        Silent {
            child,
            lines,
            peer: p[0],
            http: p[1],
            udp: p[2],
        }
    }

    /// Forgets what earlier downloads did.
    fn reset(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Waits until rtc has reached each of `what` ("PEER", "HTTP", "UDP"):
    /// every thread under test is then blocked on a socket.
    fn await_contact(&self, what: &[&str]) {
        let mut missing: Vec<&str> = what.to_vec();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => missing.retain(|m| *m != l),
                Err(_) => panic!("rtc did not reach {missing:?}"),
            }
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn threads() -> usize {
    count("/proc/self/task")
}

fn fds() -> usize {
    count("/proc/self/fd")
}

/// Threads and fds return to `base` (they end within a moment of the
/// call returning at most; here they must already have).
fn assert_back_to(base: (usize, usize), what: &str) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while (threads(), fds()) != base && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let task_names = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (threads(), fds()),
        base,
        "{what}: threads/fds left behind; threads now: {:?}",
        task_names()
    );
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    assert!(
        t.elapsed() < PROMPT,
        "{what} took {:?} (bound {PROMPT:?})",
        t.elapsed()
    );
    r
}

#[test]
fn wait_cancel_drop_and_shutdown_are_prompt_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/l.bin");
    random_file(&content, 300_000, 71);
    let other = dir.path().join("seed/m.bin");
    random_file(&other, 300_000, 72);
    let silent = Silent::start();
    // One torrent whose tracker is the hanging HTTP one, one whose tracker
    // is the silent UDP one (tiers are asked in turn, so one each).
    let http_torrent = dir.path().join("http.torrent");
    let udp_torrent = dir.path().join("udp.torrent");
    let http = format!("http://127.0.0.1:{}/announce", silent.http);
    let udp = format!("udp://127.0.0.1:{}", silent.udp);
    mktorrent(&content, &http_torrent, Some(&http), 15);
    mktorrent(&other, &udp_torrent, Some(&udp), 15);
    let load = |p: &std::path::Path| Torrent::from_bytes(&std::fs::read(p).unwrap()).unwrap();
    let (with_http, with_udp) = (&["PEER", "HTTP"][..], &["PEER", "UDP"][..]);
    let peer = ([127, 0, 0, 1], silent.peer).into();
    let opts = |name: &str| {
        AddOptions::new(dir.path().join(name))
            .peer(peer)
            .announce_timeout(Duration::from_secs(30))
    };
    let session_opts = || SessionOptions::default().no_dht().port(0).hash_threads(1);

    let base = (threads(), fds());

    // cancel(), then wait(): Cancelled, promptly.
    silent.reset();
    let dl = Download::start_with(load(&http_torrent), opts("a"), session_opts()).unwrap();
    silent.await_contact(with_http);
    let r = timed("cancel + wait", || {
        dl.cancel();
        dl.wait()
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_back_to(base, "cancel");

    // Dropping the handle cancels and returns once everything ended.
    silent.reset();
    let dl = Download::start_with(load(&udp_torrent), opts("b"), session_opts()).unwrap();
    silent.await_contact(with_udp);
    let cancel = dl.cancel_handle();
    timed("drop", || drop(dl));
    cancel.cancel(); // a no-op once the download is gone
    assert_back_to(base, "drop");

    // wait() on a download that fails by itself (nobody connects for 1 s).
    silent.reset();
    let quick = opts("c").no_peer_timeout(Duration::from_secs(1));
    let dl = Download::start_with(load(&http_torrent), quick, session_opts()).unwrap();
    silent.await_contact(with_http);
    let started = Instant::now();
    let r = dl.wait();
    assert!(matches!(r, Err(Error::NoPeers { .. })), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1) + PROMPT,
        "wait took {:?}",
        started.elapsed()
    );
    assert_back_to(base, "wait");

    // Dropped during the first check of data already on disk (512 MiB of
    // zeros, one hashing thread: more than a second of work): the check
    // stops, the drop returns at once.
    let big_dir = dir.path().join("big");
    std::fs::create_dir_all(&big_dir).unwrap();
    let big = big_dir.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let big_torrent = dir.path().join("big.torrent");
    mktorrent(&big, &big_torrent, None, 20);
    let dl = Download::start_with(
        load(&big_torrent),
        AddOptions::new(&big_dir).repair(true),
        session_opts(),
    )
    .unwrap();
    let t = Instant::now();
    drop(dl);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "drop during the check took {:?}",
        t.elapsed()
    );
    assert_back_to(base, "drop during the check");

    // Session::shutdown() with two downloads in it, handles still held.
    silent.reset();
    let session = Session::new(session_opts()).unwrap();
    let one = session.add(load(&http_torrent), opts("d")).unwrap();
    silent.await_contact(with_http);
    let two = session.add(load(&udp_torrent), opts("e")).unwrap();
    silent.await_contact(with_udp);
    timed("shutdown", || session.shutdown());
    assert!(matches!(one.wait(), Err(Error::Cancelled)));
    assert!(matches!(two.wait(), Err(Error::Cancelled)));
    assert_back_to(base, "shutdown");
}
