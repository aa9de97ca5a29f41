//! Hostile peers: a small misbehaving BitTorrent peer written here (a real
//! TCP server on 127.0.0.1) joins a swarm whose honest member is a real
//! libtorrent seeder. For each misbehaviour the download must still
//! complete byte-for-byte, the hostile peer must be dropped for the right
//! reason, and a peer that broke the protocol or sent bad data must never
//! be connected to again.

mod common;

use common::*;
use rtc::{AddOptions, Download, Event, Limits, RecvError, Torrent};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Misbehaviour {
    /// Answers every request with random bytes (hash failures).
    WrongData,
    /// Sends a block of a piece nobody asked it for.
    Unrequested,
    /// Announces a piece index past the end.
    OutOfRangeHave,
    /// Answers with a block at a misaligned offset.
    BadOffset,
    /// Answers with a block one byte short.
    BadLength,
    /// Sends a bitfield one byte too long.
    BadBitfield,
    /// Sends a 4 GiB length prefix.
    GiantLength,
    /// Answers the handshake with garbage.
    GarbageHandshake,
    /// Answers with a handshake for another torrent.
    WrongInfoHash,
    /// Unchokes, then sends its answer at one byte per second.
    Trickle,
    /// Accepts the connection and never says anything.
    Mute,
    /// Chokes and unchokes us over and over (each unchoke would make rtc
    /// re-request its whole pipeline).
    ChokeFlap,
}

struct Hostile {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Ctx {
    how: Misbehaviour,
    info_hash: [u8; 20],
    pieces: u32,
    piece_len: u32,
    total: u64,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    fn start(how: Misbehaviour, t: &Torrent) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            how,
            info_hash: t.info_hash().0,
            pieces: t.piece_count(),
            piece_len: t.piece_length(),
            total: t.total_length(),
            stop: Arc::clone(&stop),
        });
        let conns = Arc::clone(&connections);
        thread::spawn(move || {
            // Bounded: the accept loop ends with the test (stop) or after 2 min.
            let end = Instant::now() + Duration::from_secs(120);
            while !ctx.stop.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) => {
                        conns.fetch_add(1, Ordering::SeqCst);
                        let ctx = Arc::clone(&ctx);
                        thread::spawn(move || {
                            let _ = serve(s, &ctx);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Hostile {
            addr,
            connections,
            stop,
        }
    }
}

fn frame(id: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(body);
    v
}

fn piece_msg(index: u32, offset: u32, data: &[u8]) -> Vec<u8> {
    let mut body = index.to_be_bytes().to_vec();
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(data);
    frame(7, &body)
}

fn serve(mut s: TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut hs = [0u8; 68];
    read_full(&mut s, &mut hs, ctx)?;
    let mut reply = [0u8; 68];
    reply[0] = 19;
    reply[1..20].copy_from_slice(b"BitTorrent protocol");
    reply[28..48].copy_from_slice(&ctx.info_hash);
    reply[48..68].copy_from_slice(b"-XX0001-hostile-peer");
    match ctx.how {
        Misbehaviour::Mute => return idle(&mut s, ctx),
        Misbehaviour::GarbageHandshake => {
            s.write_all(&[0x5a; 68])?;
            return idle(&mut s, ctx);
        }
        Misbehaviour::WrongInfoHash => {
            reply[28..48].copy_from_slice(&[0xee; 20]);
            s.write_all(&reply)?;
            return idle(&mut s, ctx);
        }
        _ => s.write_all(&reply)?,
    }
    let mut bits = vec![0xffu8; ctx.pieces.div_ceil(8) as usize];
    let spare = bits.len() as u32 * 8 - ctx.pieces;
    *bits.last_mut().unwrap() &= 0xffu8 << spare;
    if ctx.how == Misbehaviour::BadBitfield {
        bits.push(0xff);
    }
    if ctx.how == Misbehaviour::Unrequested {
        // Claim everything but the last piece, so rtc never asks this peer
        // for it (its picker only assigns pieces a peer has).
        let last = ctx.pieces - 1;
        bits[(last / 8) as usize] &= !(0x80u8 >> (last % 8));
    }
    s.write_all(&frame(5, &bits))?;
    match ctx.how {
        Misbehaviour::GiantLength => {
            s.write_all(&[0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0, 0])?;
            return idle(&mut s, ctx);
        }
        Misbehaviour::OutOfRangeHave => {
            s.write_all(&frame(4, &(ctx.pieces + 5).to_be_bytes()))?;
        }
        Misbehaviour::ChokeFlap => {
            let mut flap = frame(1, &[]);
            flap.extend_from_slice(&frame(0, &[]));
            for _ in 0..1000 {
                s.write_all(&flap)?;
            }
            return idle(&mut s, ctx);
        }
        _ => {}
    }
    s.write_all(&frame(1, &[]))?; // unchoke
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if ctx.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            let msg: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
            if msg.first() == Some(&6) && msg.len() == 13 {
                let be =
                    |i: usize| u32::from_be_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
                answer(&mut s, ctx, be(1), be(5), be(9))?;
            }
        }
    }
}

fn answer(s: &mut TcpStream, ctx: &Ctx, index: u32, offset: u32, len: u32) -> std::io::Result<()> {
    let junk = vec![0xa5u8; len as usize];
    match ctx.how {
        Misbehaviour::WrongData => s.write_all(&piece_msg(index, offset, &junk)),
        Misbehaviour::Unrequested => {
            // The last piece, which this peer's bitfield does not claim.
            let last = ctx.pieces - 1;
            let last_len = (ctx.total - last as u64 * ctx.piece_len as u64).min(16384) as usize;
            s.write_all(&piece_msg(last, 0, &vec![0; last_len]))?;
            idle(s, ctx)
        }
        Misbehaviour::BadOffset => s.write_all(&piece_msg(index, offset + 1, &junk)),
        Misbehaviour::BadLength => s.write_all(&piece_msg(index, offset, &junk[1..])),
        Misbehaviour::Trickle => {
            for b in piece_msg(index, offset, &junk) {
                s.write_all(&[b])?;
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(1) {
                    if ctx.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn read_full(s: &mut TcpStream, buf: &mut [u8], ctx: &Ctx) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        if ctx.stop.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keeps the connection open, reading and ignoring, until rtc closes it.
fn idle(s: &mut TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut sink = [0u8; 4096];
    while !ctx.stop.load(Ordering::SeqCst) {
        match s.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs one download with `how` in the swarm; returns why rtc dropped the
/// hostile peer and how often it connected to it.
fn run(how: Misbehaviour, seed: u64) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("seed/data.bin");
    random_file(&content, 8 * 1024 * 1024, seed);
    let tracker = Tracker::start::<&str>(&[]);
    let torrent_path = dir.path().join("t.torrent");
    mktorrent(&content, &torrent_path, Some(&tracker.announce_url()), 18);
    let hash = info_hash_of(&torrent_path);
    tracker.allow(&hash);
    // Capped so the download lasts long enough for the hostile peer to
    // take part.
    let _honest = Peer::libtorrent_seed_with(
        &torrent_path,
        &dir.path().join("seed"),
        free_port(),
        "127.0.0.1",
        &["--upload-limit", "4000000"],
    );
    tracker.wait_for_seeders(&hash, 1, Duration::from_secs(10));

    let torrent = Torrent::from_bytes(&std::fs::read(&torrent_path).unwrap()).unwrap();
    let hostile = Hostile::start(how, &torrent);
    let out: PathBuf = dir.path().join("out");
    let mut limits = Limits::default();
    limits.handshake = Duration::from_secs(2);
    limits.stall = Duration::from_secs(2);
    let opts = AddOptions::new(&out).peer(hostile.addr).limits(limits);
    let dl = Download::start_with(torrent, opts, rtc::SessionOptions::default().no_dht()).unwrap();
    let mut reason = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "{how:?}: download did not finish"
        );
        match dl.events().recv_timeout(Duration::from_millis(100)) {
            Ok(Event::PeerDropped { addr, reason: r })
                if addr == hostile.addr && reason.is_none() =>
            {
                reason = Some(r);
            }
            Ok(Event::Ended(_)) | Err(RecvError::Ended) => break,
            _ => {}
        }
    }
    dl.wait().unwrap_or_else(|e| panic!("{how:?}: {e}"));
    assert_same_bytes(&content, &out.join("data.bin"));
    let connections = hostile.connections.load(Ordering::SeqCst);
    (
        reason.unwrap_or_else(|| panic!("{how:?}: hostile peer was never dropped")),
        connections,
    )
}

/// Misbehaviours that are protocol violations or bad data: dropped with
/// `reason` and never connected to again.
fn expect_banned(how: Misbehaviour, seed: u64, reason: &str) {
    let (why, connections) = run(how, seed);
    assert!(
        why.contains(reason),
        "{how:?}: dropped for {why:?}, expected {reason:?}"
    );
    assert_eq!(connections, 1, "{how:?}: reconnected to a banned peer");
}

#[test]
fn choke_unchoke_flapping() {
    expect_banned(Misbehaviour::ChokeFlap, 79, "choked us more than");
}

#[test]
fn wrong_piece_data() {
    expect_banned(Misbehaviour::WrongData, 71, "failed the hash check");
}

#[test]
fn piece_it_was_not_asked_for() {
    expect_banned(Misbehaviour::Unrequested, 72, "never asked for");
}

#[test]
fn out_of_range_have() {
    expect_banned(Misbehaviour::OutOfRangeHave, 73, "does not exist");
}

#[test]
fn misaligned_block_offset() {
    expect_banned(Misbehaviour::BadOffset, 74, "out of range");
}

#[test]
fn short_block() {
    expect_banned(Misbehaviour::BadLength, 75, "out of range");
}

#[test]
fn bitfield_of_the_wrong_size() {
    expect_banned(Misbehaviour::BadBitfield, 76, "bitfield");
}

#[test]
fn giant_length_prefix() {
    expect_banned(Misbehaviour::GiantLength, 77, "exceeds the limit");
}

#[test]
fn garbage_instead_of_a_handshake() {
    expect_banned(
        Misbehaviour::GarbageHandshake,
        78,
        "not the BitTorrent protocol",
    );
}

#[test]
fn wrong_info_hash() {
    expect_banned(Misbehaviour::WrongInfoHash, 79, "different info hash");
}

#[test]
fn one_byte_per_second() {
    let (why, _) = run(Misbehaviour::Trickle, 80);
    assert!(why.contains("no block for"), "dropped for {why:?}");
}

#[test]
fn peer_that_never_answers() {
    let (why, _) = run(Misbehaviour::Mute, 81);
    assert!(
        why.contains("no handshake within 2s"),
        "dropped for {why:?}"
    );
}
