//! Every way a torrent offers peers: UDP trackers (BEP 15), announce-list
//! tiers (BEP 12) with dead first tiers, HTTP redirects, HTTPS certificate
//! checks, IPv6 peers (BEP 7) and `--peer` without any tracker. Trackers are
//! a real opentracker (HTTP and UDP on one port); seeders real libtorrent.

mod common;

use common::bencode::{decode, encode, Value};
use common::fake_http::{Answer, FakeTracker};
use common::*;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(60);

fn content(dir: &Path, seed: u64) -> PathBuf {
    let p = dir.join("seed/p.bin");
    random_file(&p, 3 * 1024 * 1024 + 17, seed);
    p
}

/// mktorrent with each inner slice one tier (`-a a,b -a c`).
fn make(dir: &Path, content: &Path, tiers: &[&[&str]]) -> PathBuf {
    let out = dir.join("t.torrent");
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new("mktorrent");
    for tier in tiers {
        cmd.arg("-a").arg(tier.join(","));
    }
    cmd.args(["-l", "16", "-o"]).arg(&out).arg(content);
    let o = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn rtc(torrent: &Path, out_dir: &Path, extra: &[&str]) -> Output {
    run_bounded(
        rtc_cmd()
            .args(["-v", "--tracker-timeout", "2", "-o"])
            .arg(out_dir)
            .args(extra)
            .arg(torrent),
        BOUND,
    )
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rtc failed ({}):\n{err}", out.status);
    err
}

fn udp_url(t: &Tracker) -> String {
    format!("udp://127.0.0.1:{}/announce", t.port)
}

#[test]
fn udp_only_torrent() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 101);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = make(dir.path(), &data, &[&[&udp_url(&tracker)]]);
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    let _seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));
    let out = dir.path().join("out");
    ok(&rtc(&torrent, &out, &[]));
    assert_same_bytes(&data, &out.join("p.bin"));
    // The same tracker scraped over UDP counts the seeder.
    let o = run_bounded(rtc_cmd().args(["info", "--scrape"]).arg(&torrent), BOUND);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("1 seeders"), "{text}");
    // rtc announced `completed` when its last piece verified.
    assert!(text.contains("1 completed"), "{text}");
}

#[test]
fn udp_tracker_that_does_not_serve_the_torrent() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 102);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent = make(dir.path(), &data, &[&[&udp_url(&tracker)]]);
    // Not whitelisted: opentracker answers a UDP announce with a bare
    // 8-byte header (no peers, no error text).
    let o = rtc(&torrent, &dir.path().join("out"), &[]);
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("udp://127.0.0.1") && last.contains("too short"),
        "{err}"
    );
}

#[test]
fn dead_first_tier_then_working_second_tier() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 103);
    let tracker = Tracker::start::<&str>(&[]);
    // Tier 1: an HTTP port nobody listens on (refused), a UDP socket that
    // swallows everything (black hole) and an HTTP tracker that hangs.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hang = FakeTracker::start(Answer::Hang);
    let refused = format!("http://127.0.0.1:{}/announce", free_port());
    let black = format!("udp://{}/announce", hole.local_addr().unwrap());
    let good = tracker.announce_url();
    let torrent = make(
        dir.path(),
        &data,
        &[&[&refused, &black, &hang.url], &[&good]],
    );
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    let _seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    let out = dir.path().join("out");
    let started = Instant::now();
    ok(&rtc(&torrent, &out, &[]));
    // Tier 1 takes about 4 s to fail (two dead trackers at 2 s each), but
    // tier 2 is asked after 1 s beside it: the download is done in about
    // 1 s, and the round still in progress is aborted at the end.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_same_bytes(&data, &out.join("p.bin"));
}

#[test]
fn announce_list_without_announce() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 104);
    let tracker = Tracker::start::<&str>(&[]);
    let made = make(
        dir.path(),
        &data,
        &[&[&udp_url(&tracker)], &[&tracker.announce_url()]],
    );
    // Drop `announce`, keep `announce-list` (the info dict is untouched, so
    // the info hash is the same).
    let bytes = std::fs::read(&made).unwrap();
    let top = decode(&bytes).unwrap();
    let mut dict = top.as_dict().unwrap().clone();
    assert!(dict.remove(b"announce").is_some());
    assert!(dict.get(b"announce-list").is_some());
    let torrent = dir.path().join("list-only.torrent");
    std::fs::write(&torrent, encode(&Value::Dict(dict))).unwrap();
    let hash = info_hash_of(&torrent);
    assert_eq!(hash, info_hash_of(&made));
    tracker.allow(&hash);
    let _seed = Peer::libtorrent_seed(&made, &dir.path().join("seed"), free_port(), "127.0.0.1");
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));
    let out = dir.path().join("out");
    ok(&rtc(&torrent, &out, &[]));
    assert_same_bytes(&data, &out.join("p.bin"));
}

#[test]
fn http_redirect_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 105);
    let tracker = Tracker::start::<&str>(&[]);
    let redirect = FakeTracker::start(Answer::Redirect(tracker.announce_url()));
    let torrent = make(dir.path(), &data, &[&[&redirect.url]]);
    let hash = info_hash_of(&torrent);
    tracker.allow(&hash);
    // The seeder announces to the real tracker directly.
    std::fs::create_dir_all(dir.path().join("seedt")).unwrap();
    let seed_torrent = make(
        &dir.path().join("seedt"),
        &data,
        &[&[&tracker.announce_url()]],
    );
    assert_eq!(info_hash_of(&seed_torrent), hash);
    let _seed = Peer::libtorrent_seed(
        &seed_torrent,
        &dir.path().join("seed"),
        free_port(),
        "127.0.0.1",
    );
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));
    let out = dir.path().join("out");
    ok(&rtc(&torrent, &out, &[]));
    assert_same_bytes(&data, &out.join("p.bin"));
}

#[test]
fn https_tracker_with_an_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 106);
    // A real TLS server (python's ssl) with a self-signed certificate.
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let o = run_bounded(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(30),
    );
    assert!(o.status.success());
    let port = free_port();
    let script = format!(
        "import http.server,ssl\n\
         s=http.server.HTTPServer(('127.0.0.1',{port}),http.server.SimpleHTTPRequestHandler)\n\
         c=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain('{}','{}')\n\
         s.socket=c.wrap_socket(s.socket,server_side=True)\n\
         s.serve_forever()\n",
        cert.display(),
        key.display()
    );
    let mut server = Command::new(PYTHON).arg("-c").arg(script).spawn().unwrap();
    wait_for(Duration::from_secs(10), "TLS server", || {
        port_accepts(([127, 0, 0, 1], port).into())
    });
    let url = format!("https://127.0.0.1:{port}/announce");
    let torrent = make(dir.path(), &data, &[&[&url]]);
    let o = rtc(&torrent, &dir.path().join("out"), &[]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[test]
fn ipv6_seeder_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 107);
    let torrent = dir.path().join("t.torrent");
    mktorrent(&data, &torrent, None, 16);
    let seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "::1");
    let out = dir.path().join("out");
    let err = ok(&rtc(
        &torrent,
        &out,
        &["--peer", &format!("[::1]:{}", seed.port())],
    ));
    assert!(
        err.contains(&format!("peer [::1]:{} connected", seed.port())),
        "{err}"
    );
    assert_same_bytes(&data, &out.join("p.bin"));
}

#[test]
fn direct_peer_without_any_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(dir.path(), 108);
    let torrent = dir.path().join("t.torrent");
    mktorrent(&data, &torrent, None, 16);
    let seed = Peer::libtorrent_seed(&torrent, &dir.path().join("seed"), free_port(), "127.0.0.1");
    let out = dir.path().join("out");
    ok(&rtc(
        &torrent,
        &out,
        &["--peer", &format!("localhost:{}", seed.port())],
    ));
    assert_same_bytes(&data, &out.join("p.bin"));
}
