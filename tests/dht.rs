//! The DHT (BEP 5) against real libtorrent nodes on loopback: rtc finds a
//! seeder from a magnet with neither `tr` nor `x.pe`, is found as a seeder
//! by a libtorrent leecher, joins through a trackerless torrent's `nodes`,
//! bootstraps a second run from its saved table, never uses the DHT for a
//! private torrent, and stays bounded under hostile KRPC.

mod common;

use common::bencode::{decode, encode, Value};
use common::*;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(90);

struct Swarm {
    dir: tempfile::TempDir,
    torrent: PathBuf,
    content: PathBuf,
    hash: String,
}

impl Swarm {
    /// A trackerless torrent of `len` random bytes.
    fn new(len: usize, seed: u64) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("seed/dht.bin");
        random_file(&content, len, seed);
        let torrent = dir.path().join("dht.torrent");
        mktorrent(&content, &torrent, None, 16);
        let hash = info_hash_of(&torrent);
        Swarm {
            dir,
            torrent,
            content,
            hash,
        }
    }

    fn magnet(&self) -> String {
        format!("magnet:?xt=urn:btih:{}", self.hash)
    }

    fn seed_dir(&self) -> String {
        self.dir.path().join("seed").display().to_string()
    }

    /// libtorrent nodes on 127.0.0.1, session 0 seeding the torrent.
    fn lt_seeding(&self, nodes: usize, bootstrap: Option<SocketAddr>) -> LtDht {
        self.lt_seeding_with(nodes, bootstrap, &[])
    }

    fn lt_seeding_with(
        &self,
        nodes: usize,
        bootstrap: Option<SocketAddr>,
        extra: &[&str],
    ) -> LtDht {
        let n = nodes.to_string();
        let torrent = self.torrent.display().to_string();
        let seed_dir = self.seed_dir();
        let b = bootstrap.map(|b| b.to_string());
        let mut args = vec!["--nodes", &n, "--seed", &torrent, "--data", &seed_dir];
        if let Some(b) = &b {
            args.extend(["--bootstrap", b]);
        }
        args.extend(extra);
        LtDht::start(&args)
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

fn ok(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {}\n{stderr}", out.status);
    stderr
}

#[test]
fn a_magnet_with_no_tracker_and_no_peer_downloads_through_the_dht() {
    let s = Swarm::new(3 << 20, 1201);
    let lt = s.lt_seeding(5, None);
    let t = Instant::now();
    let out = run_bounded(
        rtc_with_dht(&[lt.node(1)], &s.cache())
            .args(["-v", "--port", &free_port().to_string(), "-o"])
            .arg(s.out("out"))
            .arg(s.magnet()),
        BOUND,
    );
    let stderr = ok(&out, "rtc from the DHT");
    assert_same_bytes(&s.content, &s.out("out/dht.bin"));
    assert!(stderr.contains("from the DHT"), "peer sources:\n{stderr}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn a_libtorrent_leecher_finds_rtc_seeding_through_the_dht() {
    let s = Swarm::new(2 << 20, 1202);
    // A DHT of four libtorrent nodes that have nothing.
    let lt = LtDht::start(&["--nodes", "4"]);
    let port = free_port();
    let log = s.out("seed.log");
    let _seed = Killed(
        rtc_with_dht(&[lt.node(0)], &s.cache())
            .args(["-v", "seed", "--port", &port.to_string(), "-o"])
            .arg(s.dir.path().join("seed"))
            .arg(&s.torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(30), "rtc to seed", || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("seeding"))
    });
    // The leecher knows one node and the magnet, nothing else.
    let out = s.out("lt-out");
    let bootstrap = lt.node(0).to_string();
    let magnet = s.magnet();
    let outs = out.display().to_string();
    let mut leech = LtDht::start(&[
        "--nodes",
        "1",
        "--bootstrap",
        &bootstrap,
        "--leech",
        &magnet,
        "--out",
        &outs,
        "--timeout",
        "60",
    ]);
    let secs = leech.wait_line("finished ", Duration::from_secs(70));
    assert_same_bytes(&s.content, &out.join("dht.bin"));
    // Only rtc has the data: the bytes prove the leecher found it.
    eprintln!("libtorrent finished in {secs} s");
}

/// A child process killed (by PID) when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_trackerless_torrent_joins_through_its_nodes_key() {
    let s = Swarm::new(1 << 20, 1203);
    let lt = s.lt_seeding(5, None);
    // The torrent names one live node; the only bootstrap given is dead.
    let bytes = fs::read(&s.torrent).unwrap();
    let mut root = decode(&bytes).unwrap().as_dict().unwrap().clone();
    let port = i64::from(lt.node(2).port());
    let host = lt.node(2).ip().to_string();
    root.insert(
        b"nodes",
        Value::List(vec![Value::List(vec![
            Value::Bytes(host.as_bytes()),
            Value::Int(port),
        ])]),
    );
    let with_nodes = s.out("nodes.torrent");
    fs::write(&with_nodes, encode(&Value::Dict(root))).unwrap();
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let out = run_bounded(
        rtc_with_dht(&[dead], &s.cache())
            .args(["-v", "--port", &free_port().to_string(), "-o"])
            .arg(s.out("out"))
            .arg(&with_nodes),
        BOUND,
    );
    let stderr = ok(&out, "rtc through the torrent's nodes");
    assert_same_bytes(&s.content, &s.out("out/dht.bin"));
    assert!(stderr.contains("from the DHT"), "{stderr}");
}

#[test]
fn a_second_run_bootstraps_from_the_saved_table_without_the_bootstrap_node() {
    let s = Swarm::new(1 << 20, 1204);
    // The swarm, then a door node that joined it (as a router knows the
    // DHT): rtc's first run comes in through the door only.
    let lt = s.lt_seeding(4, None);
    let swarm_node = lt.node(1).to_string();
    let mut door = LtDht::start(&["--nodes", "1", "--bootstrap", &swarm_node]);
    let door_addr = door.node(0);
    let first = run_bounded(
        rtc_with_dht(&[door_addr], &s.cache())
            .args(["-v", "--port", &free_port().to_string(), "-o"])
            .arg(s.out("one"))
            .arg(s.magnet()),
        BOUND,
    );
    ok(&first, "first run");
    assert_same_bytes(&s.content, &s.out("one/dht.bin"));
    // The state file holds our id and compact nodes (26 bytes each), among
    // them the seeding swarm's.
    let state = fs::read(s.cache().join("rtc/dht.dat")).expect("state file saved");
    let saved = decode(&state).expect("bencoded state");
    let saved = saved.as_dict().unwrap();
    let Some(Value::Bytes(nodes)) = saved.get(b"nodes") else {
        panic!("no nodes in {state:?}")
    };
    assert!(
        nodes.len() >= 26 && nodes.len() % 26 == 0,
        "{}",
        nodes.len()
    );
    let saved_nodes: Vec<SocketAddr> = nodes
        .chunks(26)
        .map(|c| {
            let ip = [c[20], c[21], c[22], c[23]];
            SocketAddr::from((ip, u16::from_be_bytes([c[24], c[25]])))
        })
        .collect();
    assert!(
        lt.nodes.iter().any(|n| saved_nodes.contains(n)),
        "saved {saved_nodes:?}, swarm {:?}",
        lt.nodes
    );
    // The door closes; the second run is told only of it.
    door.stop();
    let second = run_bounded(
        rtc_with_dht(&[door_addr], &s.cache())
            .args(["-v", "--port", &free_port().to_string(), "-o"])
            .arg(s.out("two"))
            .arg(s.magnet()),
        BOUND,
    );
    let stderr = ok(&second, "second run");
    assert_same_bytes(&s.content, &s.out("two/dht.bin"));
    assert!(stderr.contains("nodes from the state file"), "{stderr}");
    // A corrupt state file is a warning, never fatal.
    fs::write(s.cache().join("rtc/dht.dat"), b"d4:spam4:eggse").unwrap();
    let third = run_bounded(
        rtc_with_dht(&[lt.node(0)], &s.cache())
            .args(["-v", "--port", &free_port().to_string(), "-o"])
            .arg(s.out("three"))
            .arg(s.magnet()),
        BOUND,
    );
    let stderr = ok(&third, "third run");
    assert!(stderr.contains("ignoring state file"), "{stderr}");
    assert_same_bytes(&s.content, &s.out("three/dht.bin"));
}

/// What a fake bootstrap node on loopback saw: datagrams, and whether any
/// named `needle` (an info hash).
fn listen_for(
    sock: UdpSocket,
    needle: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u64, bool)> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::spawn(move || {
        let (mut n, mut seen) = (0, false);
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, _)) = sock.recv_from(&mut buf) {
                n += 1;
                seen |= buf[..len].windows(20).any(|w| w == needle.as_slice());
            }
        }
        (n, seen)
    })
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_private_torrent_never_asks_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("p.bin");
    random_file(&content, 100_000, 1205);
    for private in [false, true] {
        let torrent = dir.path().join(format!("p{private}.torrent"));
        let mut t = rtc_cmd();
        t.arg("create").arg(&content).arg("-o").arg(&torrent);
        if private {
            t.arg("--private");
        }
        ok(&run_bounded(&mut t, BOUND), "create");
        let needle = hex_bytes(&info_hash_of(&torrent));
        let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fake_addr = fake.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = listen_for(fake, needle, Arc::clone(&stop));
        let out = run_bounded(
            rtc_with_dht(&[fake_addr], &dir.path().join("cache"))
                .args(["--timeout", "3", "--port", &free_port().to_string(), "-o"])
                .arg(dir.path().join(format!("out{private}")))
                .arg(&torrent),
            BOUND,
        );
        stop.store(true, Ordering::Relaxed);
        let (packets, named) = seen.join().unwrap();
        assert_eq!(out.status.code(), Some(4), "no peers: {out:?}");
        // The node ran (it tried to join through the fake node) ...
        assert!(packets > 0, "private={private}: no DHT traffic at all");
        // ... and asked for peers of the public torrent only.
        assert_eq!(named, !private, "private={private}");
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs an rtc download from the DHT while sampling its peak RSS (KiB) and
/// thread count; returns the wall time, RSS and threads. `during` starts
/// (before rtc does) whatever runs alongside, aimed at rtc's port, and
/// returns how to stop it.
fn download_sampled(
    s: &Swarm,
    lt: &LtDht,
    name: &str,
    port: u16,
    during: impl FnOnce(u16) -> Box<dyn FnOnce()>,
) -> (Duration, u64, u64) {
    let log = s.out(&format!("{name}.log"));
    let end = during(port);
    let t = Instant::now();
    let mut child = rtc_with_dht(&[lt.node(0)], &s.cache())
        .args(["-v", "--port", &port.to_string(), "-o"])
        .arg(s.out(name))
        .arg(s.magnet())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut rss, mut threads) = (0, 0);
    let status = loop {
        rss = rss.max(status_field(pid, "VmRSS:"));
        threads = threads.max(status_field(pid, "Threads:"));
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: rtc did not finish:\n{}", file_tail(&log, 40));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let wall = t.elapsed();
    end();
    assert!(
        status.success(),
        "{name}: {status}\n{}",
        file_tail(&log, 40)
    );
    assert_same_bytes(&s.content, &s.out(&format!("{name}/dht.bin")));
    (wall, rss, threads)
}

#[test]
fn hostile_krpc_leaves_the_node_bounded_and_the_download_on_time() {
    // A seeder limited to 2 MiB/s: the download lasts about 3 s, all of
    // it (the DHT's bootstrap and lookup included) under the flood.
    let s = Swarm::new(6 << 20, 1206);
    let lt = s.lt_seeding_with(5, None, &["--upload-limit", "2097152"]);
    let (calm, calm_rss, calm_threads) =
        download_sampled(&s, &lt, "calm", free_port(), |_| Box::new(|| {}));

    let answers = Arc::new(AtomicU64::new(0));
    let biggest = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let flood_secs = Arc::new(AtomicU64::new(0));
    let b2 = Arc::clone(&biggest);
    let (a2, s2, st2, f2) = (
        Arc::clone(&answers),
        Arc::clone(&sent),
        Arc::clone(&stop),
        Arc::clone(&flood_secs),
    );
    let (attacked, rss, threads) =
        download_sampled(&s, &lt, "attacked", free_port(), move |port| {
            let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let handle = thread::spawn(move || flood(target, (&a2, &b2), &s2, &st2, &f2));
            Box::new(move || {
                stop.store(true, Ordering::Relaxed);
                handle.join().unwrap();
            })
        });
    let answers = answers.load(Ordering::Relaxed);
    let biggest = biggest.load(Ordering::Relaxed);
    let sent = sent.load(Ordering::Relaxed);
    let secs = flood_secs.load(Ordering::Relaxed) as f64 / 1000.0;
    eprintln!(
        "calm {calm:?} ({calm_rss} KiB, {calm_threads} threads); attacked {attacked:?} \
         ({rss} KiB, {threads} threads); flood: {sent} datagrams, {answers} answers \
         (largest {biggest} bytes) in {secs:.1} s"
    );
    assert!(sent > 1000, "the flood ran ({sent} datagrams)");
    // The honest download: near its calm time.
    assert!(
        attacked <= calm * 3 + Duration::from_secs(3),
        "attacked {attacked:?} vs calm {calm:?}"
    );
    // Memory and threads: what the flood could grow is bounded.
    assert!(
        rss <= calm_rss + 16 * 1024,
        "RSS {rss} KiB vs calm {calm_rss} KiB"
    );
    assert!(
        threads <= calm_threads + 2,
        "threads {threads} vs {calm_threads}"
    );
    // No amplification: the flood's queries are under 100 bytes;
    // no answer is much larger (8 nodes and a token at most).
    assert!(biggest <= 4 * 100, "an answer of {biggest} bytes");
    // Answers to one address (every flood port is 127.0.0.1): a burst of
    // 100, then 50 a second.
    let allowed = 100.0 + 50.0 * (secs + 1.0);
    assert!(
        (answers as f64) <= allowed,
        "{answers} answers in {secs:.1} s (at most {allowed})"
    );
}

/// Sends from 64 source ports until `stop`: valid queries (ping,
/// find_node, get_peers), malformed datagrams, responses to transactions
/// never sent (with a `nodes` string of 2,000 bytes) and datagrams too long
/// to be KRPC; counts what comes back.
fn flood(
    target: SocketAddr,
    (answers, biggest): (&AtomicU64, &AtomicU64),
    sent: &AtomicU64,
    stop: &AtomicBool,
    elapsed_ms: &AtomicU64,
) {
    let socks: Vec<UdpSocket> = (0..64)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let id = [b'x'; 20];
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let q = |body: &str| {
        let mut p = b"d1:ad2:id20:".to_vec();
        p.extend_from_slice(&id);
        p.extend_from_slice(body.as_bytes());
        p
    };
    packets.push(q("e1:q4:ping1:t2:aa1:y1:qe"));
    let mut fnode = q("6:target20:");
    fnode.extend_from_slice(&[7u8; 20]);
    fnode.extend_from_slice(b"e1:q9:find_node1:t2:ab1:y1:qe");
    packets.push(fnode);
    let mut gp = q("9:info_hash20:");
    gp.extend_from_slice(&[9u8; 20]);
    gp.extend_from_slice(b"e1:q9:get_peers1:t2:ac1:y1:qe");
    packets.push(gp);
    packets.push(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe".to_vec());
    packets.push(b"999999999:".to_vec());
    packets.push(b"llllllllllllllllllllllllllllllllllllllllllllllllllll".to_vec());
    packets.push(vec![0xff; 300]);
    let mut huge = b"d1:rd2:id20:".to_vec();
    huge.extend_from_slice(&id);
    huge.extend_from_slice(b"5:nodes2000:");
    huge.extend_from_slice(&[0x41; 2000]);
    huge.extend_from_slice(b"e1:t2:zz1:y1:re");
    packets.push(huge);
    packets.push(vec![b'd'; 60_000]);
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // About 20,000 datagrams a second across the ports.
        for s in &socks {
            if s.send_to(&packets[i % packets.len()], target).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                answers.fetch_add(1, Ordering::Relaxed);
                biggest.fetch_max(n as u64, Ordering::Relaxed);
            }
        }
        thread::sleep(Duration::from_millis(3));
    }
    // Late answers count too.
    thread::sleep(Duration::from_millis(100));
    for s in &socks {
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            answers.fetch_add(1, Ordering::Relaxed);
            biggest.fetch_max(n as u64, Ordering::Relaxed);
        }
    }
    elapsed_ms.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// rtc to rtc over IPv6 (BEP 32): three sessions on [::1], a plain node N,
/// a seeder A and a leecher B that know only N. A announces to N; B's
/// lookup gets A's IPv6 address from N's `values` and downloads.
#[test]
fn three_sessions_find_each_other_over_ipv6() {
    use rtc::{AddOptions, DhtOptions, Magnet, SeedUntil, Session, SessionOptions, Torrent};
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let s = Swarm::new(1 << 20, 1207);
    let dht = |boot: Option<u16>| {
        let b: Vec<String> = boot.map(|p| format!("[::1]:{p}")).into_iter().collect();
        SessionOptions::default()
            .port(free_port())
            .dht(DhtOptions::default().bootstrap(b))
    };
    let n = Session::new(dht(None)).unwrap();
    let n_port = n.dht().expect("N runs a DHT node").port;
    let a = Session::new(dht(Some(n_port))).unwrap();
    let torrent = Torrent::from_bytes(&fs::read(&s.torrent).unwrap()).unwrap();
    let _seed = a
        .add(
            torrent,
            AddOptions::new(s.dir.path().join("seed")).seed(SeedUntil::Stopped),
        )
        .unwrap();
    wait_for(Duration::from_secs(20), "A's announce stored at N", || {
        n.dht().unwrap().stored_peers >= 1
    });
    let b = Session::new(dht(Some(n_port))).unwrap();
    let magnet = Magnet::parse(&s.magnet()).unwrap();
    let summary = b
        .add(magnet, AddOptions::new(s.out("v6")))
        .unwrap()
        .wait()
        .expect("B downloads through the DHT");
    assert_same_bytes(&s.content, &s.out("v6/dht.bin"));
    assert!(summary.peer_sources.dht >= 1, "{:?}", summary.peer_sources);
    // B joined through N: N is in B's table.
    assert!(b.dht().unwrap().nodes >= 1);
}

/// An entry node that answers from 40 ports of one address, each answer
/// naming 8 of its own ports with ids ever closer to the target (never a
/// peer), plus one honest libtorrent node far from it: a host trying to
/// eclipse the lookup. rtc, given only this entry, still finds the seeder,
/// because a lookup keeps one candidate per host.
#[test]
fn a_host_answering_from_many_ports_cannot_eclipse_a_lookup() {
    let s = Swarm::new(1 << 20, 1208);
    let lt = s.lt_seeding(5, None);
    let honest = lt.node(3);
    let socks: Vec<UdpSocket> = (0..40)
        .map(|_| {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.set_nonblocking(true).unwrap();
            u
        })
        .collect();
    let ports: Vec<u16> = socks
        .iter()
        .map(|u| u.local_addr().unwrap().port())
        .collect();
    let entry = socks[0].local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let answered = Arc::new(AtomicU64::new(0));
    let answered2 = Arc::clone(&answered);
    let liar = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut closer = 0u8;
        while !stop2.load(Ordering::Relaxed) {
            let mut idle = true;
            for (i, u) in socks.iter().enumerate() {
                let Ok((n, from)) = u.recv_from(&mut buf) else {
                    continue;
                };
                idle = false;
                let Some(Value::Dict(q)) = decode(&buf[..n]) else {
                    continue;
                };
                let (Some(Value::Bytes(tid)), Some(Value::Dict(a))) = (q.get(b"t"), q.get(b"a"))
                else {
                    continue;
                };
                let target = match (a.get(b"target"), a.get(b"info_hash")) {
                    (Some(Value::Bytes(t)), _) | (None, Some(Value::Bytes(t))) => t.to_vec(),
                    _ => vec![0; 20],
                };
                let mut nodes = Vec::new();
                for k in 0..8 {
                    closer = closer.wrapping_add(1);
                    let mut id = target.clone();
                    id[19] ^= closer | 1;
                    nodes.extend_from_slice(&id);
                    nodes.extend_from_slice(&[127, 0, 0, 1]);
                    nodes.extend_from_slice(&ports[(i + k + 1) % ports.len()].to_be_bytes());
                }
                nodes.extend_from_slice(&[0xee; 20]);
                let SocketAddr::V4(h) = honest else {
                    unreachable!()
                };
                nodes.extend_from_slice(&h.ip().octets());
                nodes.extend_from_slice(&h.port().to_be_bytes());
                let mut own = target.clone();
                own[19] ^= 0x80;
                let mut r = common::bencode::Dict::new();
                r.insert(b"id", Value::Bytes(&own));
                r.insert(b"nodes", Value::Bytes(&nodes));
                r.insert(b"token", Value::Bytes(b"tk"));
                let mut m = common::bencode::Dict::new();
                m.insert(b"t", Value::Bytes(tid));
                m.insert(b"y", Value::Bytes(b"r"));
                m.insert(b"r", Value::Dict(r));
                let _ = u.send_to(&encode(&Value::Dict(m)), from);
                answered2.fetch_add(1, Ordering::Relaxed);
            }
            if idle {
                thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let t = Instant::now();
    let out = run_bounded(
        rtc_with_dht(&[entry], &s.cache())
            .args([
                "-v",
                "--timeout",
                "30",
                "--port",
                &free_port().to_string(),
                "-o",
            ])
            .arg(s.out("out"))
            .arg(s.magnet()),
        BOUND,
    );
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    liar.join().unwrap();
    let stderr = ok(&out, "rtc through a hostile entry node");
    assert_same_bytes(&s.content, &s.out("out/dht.bin"));
    assert!(answered.load(Ordering::Relaxed) > 0, "the liar was asked");
    assert!(stderr.contains("from the DHT"), "{stderr}");
    // Calm, this takes a fraction of a second.
    assert!(took < Duration::from_secs(10), "{took:?}");
}
