//! `--max-download-rate` and `--max-upload-rate` against real peers: one
//! budget for all of rtc's connections, measured from outside over more
//! than 10 s and within 10 % of the limit. Two fast libtorrent seeders
//! feed a limited download (a per-connection budget would double the
//! rate); a low limit holds on small pieces; two libtorrent leechers
//! share a limited seed.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
const BOUND: Duration = Duration::from_secs(60);

fn within_10_percent(bytes: usize, secs: f64, limit: f64, what: &str) {
    let rate = bytes as f64 / secs;
    assert!(
        secs >= 10.0 && (rate - limit).abs() <= 0.1 * limit,
        "{what}: {bytes} bytes in {secs:.2} s = {:.3} MiB/s against a limit of {:.3} MiB/s",
        rate / MIB as f64,
        limit / MIB as f64
    );
    eprintln!(
        "{what}: {:.3} MiB/s over {secs:.2} s (limit {:.3})",
        rate / MIB as f64,
        limit / MIB as f64
    );
}

/// `len` random bytes in pieces of 2^`piece_log2`, and their torrent.
fn torrent_of(
    dir: &Path,
    len: usize,
    seed: u64,
    piece_log2: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("seed/r.bin");
    random_file(&data, len, seed);
    let torrent = dir.join("r.torrent");
    mktorrent(&data, &torrent, None, piece_log2);
    (data, torrent)
}

/// `rtc --max-download-rate RATE` of `torrent` from `seeders` into
/// `out`, which must succeed; its wall time in seconds.
fn limited_download(torrent: &Path, seeders: &[&Peer], out: &Path, rate: &str) -> f64 {
    let mut cmd = rtc_cmd();
    cmd.args(["-q", "--max-download-rate", rate, "--port"])
        .arg(free_port().to_string());
    for s in seeders {
        cmd.args(["--peer", &s.addr().to_string()]);
    }
    cmd.arg("-o").arg(out).arg(torrent);
    let t = Instant::now();
    let o = run_bounded(&mut cmd, BOUND);
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    secs
}

#[test]
fn a_download_limit_holds_across_two_fast_seeders() {
    let dir = tempfile::tempdir().unwrap();
    let len = 12 * MIB;
    let (data, torrent) = torrent_of(dir.path(), len, 41, 18);
    let seed_dir = dir.path().join("seed");
    let a = Peer::libtorrent_seed(&torrent, &seed_dir, free_port(), "127.0.0.1");
    let b = Peer::libtorrent_seed(&torrent, &seed_dir, free_port(), "127.0.0.1");
    let out = dir.path().join("out");
    let secs = limited_download(&torrent, &[&a, &b], &out, "1M");
    assert_same_bytes(&data, &out.join("r.bin"));
    within_10_percent(len, secs, MIB as f64, "download, 2 seeders");
}

/// A low limit on a torrent of 16 KiB pieces (made by `rtc create`:
/// mktorrent's smallest is 32 KiB): each read completes a piece, whose
/// `have` reaches every connection as a command, and a command must not
/// cut the limit's wait short (it did: 16 KiB/s measured 66 KiB/s).
#[test]
fn a_low_download_limit_holds_with_small_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let len = 176 * 1024;
    let data = dir.path().join("seed/r.bin");
    random_file(&data, len, 43);
    let torrent = dir.path().join("r.torrent");
    let made = run_bounded(
        rtc_cmd()
            .args(["create", "-q", "--piece-length", "16384"])
            .arg(&data)
            .arg("-o")
            .arg(&torrent),
        BOUND,
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let seeder =
        Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    let out = dir.path().join("out");
    let secs = limited_download(&torrent, &[&seeder], &out, "16K");
    assert_same_bytes(&data, &out.join("r.bin"));
    within_10_percent(len, secs, 16.0 * 1024.0, "download, 16 KiB pieces");
}

/// `rtc seed` of `torrent`'s data, up once its port accepts and its check
/// of the data is done.
fn rtc_seed(torrent: &Path, seed_dir: &Path, log: &Path, port: u16, rate: &str) -> Child {
    let mut child = rtc_cmd()
        .args(["seed", "-v", "--max-upload-rate", rate, "--port"])
        .arg(port.to_string())
        .arg("-o")
        .arg(seed_dir)
        .arg(torrent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "rtc seed to listen", || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("rtc seed exited ({st}): {}", file_tail(log, 40));
        }
        port_accepts(([127, 0, 0, 1], port).into())
            && std::fs::read_to_string(log).is_ok_and(|l| l.contains("resume: "))
    });
    child
}

#[test]
fn an_upload_limit_holds_across_two_leechers() {
    let dir = tempfile::tempdir().unwrap();
    let len = 6 * MIB;
    let (data, torrent) = torrent_of(dir.path(), len, 42, 18);
    let port = free_port();
    let log = dir.path().join("rtc.log");
    let mut seed = rtc_seed(&torrent, &dir.path().join("seed"), &log, port, "1M");
    let addr = ([127, 0, 0, 1], port).into();
    let t = Instant::now();
    let leechers: Vec<_> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("lt{i}"));
            let torrent = torrent.clone();
            std::thread::spawn(move || {
                lt_leech(&torrent, &out, free_port(), &[addr], BOUND);
                out
            })
        })
        .collect();
    let outs: Vec<_> = leechers.into_iter().map(|h| h.join().unwrap()).collect();
    let secs = t.elapsed().as_secs_f64();
    let _ = seed.kill();
    let _ = seed.wait();
    for out in outs {
        assert_same_bytes(&data, &out.join("r.bin"));
    }
    // Both leechers together: 12 MiB through one 1 MiB/s budget. The
    // time includes starting two Python processes (about 0.3 s).
    within_10_percent(2 * len, secs, MIB as f64, "upload, 2 leechers");
}
