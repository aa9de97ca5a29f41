//! The listener thread, one per `Session`: accepts connections peers open
//! to us, reads and checks their handshake (on a short-lived thread each,
//! so a slow peer cannot hold up `accept`), and hands good ones, through
//! the [`Router`], to the session thread of the torrent they asked for as
//! `peer::Event::Incoming`. That thread decides whether to keep them (peer
//! cap, bans) and starts their connection thread.

use super::admission::MseBudget;
use crate::peer::accept::accept_handshake;
use crate::peer::{self, Incoming};
use crate::types::InfoHash;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Which torrent's session thread gets a peer that asks for an info hash.
/// Shared by `Session::add` (adds), each session thread (removes its own
/// when it ends) and the handshake threads (read). An `RwLock` because
/// reads (one per incoming handshake) far outnumber changes (one per
/// torrent added or ended) and every hold is a map operation (DESIGN.md).
#[derive(Clone, Default)]
pub(crate) struct Router(Arc<RwLock<HashMap<InfoHash, Sender<peer::Event>>>>);

impl Router {
    /// Routes `info_hash` to `to`; false if it is already routed.
    pub(crate) fn add(&self, info_hash: InfoHash, to: Sender<peer::Event>) -> bool {
        let Ok(mut map) = self.0.write() else {
            return false;
        };
        if map.contains_key(&info_hash) {
            return false;
        }
        map.insert(info_hash, to);
        true
    }

    pub(crate) fn remove(&self, info_hash: &InfoHash) {
        if let Ok(mut map) = self.0.write() {
            map.remove(info_hash);
        }
    }

    fn torrents(&self) -> Vec<InfoHash> {
        self.0
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    fn route(&self, info_hash: &InfoHash) -> Option<Sender<peer::Event>> {
        self.0.read().ok()?.get(info_hash).cloned()
    }
}

/// How often a blocked `accept` looks at its stop channel.
const POLL: Duration = Duration::from_millis(10);

/// At most this many incoming handshakes are read at once. When a new
/// connection arrives at the cap, the oldest pending one is closed: a
/// flood of silent sockets can only ever delay a real peer by the time it
/// takes to send its 68 bytes, never lock it out.
const MAX_PENDING: usize = 64;
/// Once half the pending slots are taken, a handshake gets this long
/// instead of the full handshake timeout.
const PRESSURE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshake threads alive at once, counting closed ones that have not
/// ended yet; connections beyond that are closed on accept.
const MAX_THREADS: usize = 2 * MAX_PENDING;

/// The sockets we accept on: `[::]` and/or `0.0.0.0`, all on one port.
pub struct Listeners(Vec<TcpListener>);

impl Listeners {
    /// The port every socket is bound to.
    pub fn port(&self) -> u16 {
        self.0
            .first()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port())
    }
}

/// Binds `port` (or any free port if it is taken) for IPv6 and IPv4.
///
/// `[::]` first: on Linux's default (`bindv6only=0`) it is dual-stack and
/// the IPv4 bind on the same port then fails with "in use", which is
/// expected. Where `[::]` is IPv6-only, the IPv4 bind succeeds and both are
/// kept. Without IPv6 at all, IPv4 alone.
pub fn bind(port: u16) -> io::Result<Listeners> {
    let six = match TcpListener::bind(("::", port)) {
        Ok(l) => Some(l),
        Err(e) if port != 0 && e.kind() == io::ErrorKind::AddrInUse => {
            log::info!("port {port} unavailable ({e}); listening on a free port");
            TcpListener::bind(("::", 0)).ok()
        }
        Err(e) => {
            log::debug!("no IPv6 listener: {e}");
            None
        }
    };
    let Some(six) = six else {
        return match TcpListener::bind(("0.0.0.0", port)) {
            Ok(l) => Ok(Listeners(vec![l])),
            Err(e) if port != 0 => {
                log::info!("port {port} unavailable ({e}); listening on a free port");
                Ok(Listeners(vec![TcpListener::bind(("0.0.0.0", 0))?]))
            }
            Err(e) => Err(e),
        };
    };
    let port = six.local_addr()?.port();
    let mut all = vec![six];
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(four) => all.push(four),
        // Expected when `[::]` is dual-stack (it holds the IPv4 port too).
        Err(e) => log::debug!("IPv4 listener on {port}: {e} (dual-stack [::] covers it)"),
    }
    Ok(Listeners(all))
}

/// A handshake being read on its own thread.
struct Pending {
    since: Instant,
    ip: IpAddr,
    /// A second handle on the socket, to close it from here.
    stream: TcpStream,
    /// `PENDING`, then `HANDED` (the handshake thread passed the socket to
    /// the session) or `CLOSED` (the listener shut it), whichever comes
    /// first, then `ENDED` when the thread ends. Compare-and-swap, so a
    /// socket handed to the session is never shut from here.
    state: Arc<AtomicU8>,
    /// Joined once `ENDED` (at once, then), and when the listener stops.
    thread: std::thread::JoinHandle<()>,
}

const PENDING: u8 = 0;
const HANDED: u8 = 1;
const CLOSED: u8 = 2;
const ENDED: u8 = 3;

impl Pending {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// Runs until `stop` is sent to or dropped; then closes every handshake
/// still being read and returns once their threads have ended.
pub fn spawn(
    listeners: Listeners,
    router: Router,
    handshake_timeout: Duration,
    stop: Receiver<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    for l in &listeners.0 {
        l.set_nonblocking(true)?;
    }
    std::thread::Builder::new()
        .name("rtc-listener".into())
        .spawn(move || {
            // Owned by this thread alone; each handshake thread shares only
            // its state flag with it (an atomic). The MSE budget is behind a
            // Mutex (DESIGN.md says why).
            let mut pending: VecDeque<Pending> = VecDeque::new();
            let budget = Arc::new(Mutex::new(MseBudget::new(Instant::now())));
            loop {
                match stop.try_recv() {
                    Ok(()) | Err(TryRecvError::Disconnected) => {
                        drain(&mut pending);
                        return;
                    }
                    Err(TryRecvError::Empty) => {}
                }
                let mut idle = true;
                for listener in &listeners.0 {
                    match listener.accept() {
                        Ok((stream, addr)) => {
                            idle = false;
                            // A dual-stack socket reports IPv4 peers as
                            // `::ffff:a.b.c.d`; bans and logs use the plain form.
                            let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                            make_room(&mut pending, addr);
                            if pending.len() >= MAX_THREADS {
                                log::debug!("incoming {addr}: too many handshakes; closed");
                                continue;
                            }
                            if let Some(p) =
                                handshake(stream, addr, &router, handshake_timeout, &budget)
                            {
                                pending.push_back(p);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => log::debug!("accept failed: {e}"),
                    }
                }
                expire(&mut pending, Instant::now());
                if idle {
                    std::thread::sleep(POLL);
                }
            }
        })
}

/// Closes every pending handshake and joins every handshake thread (each
/// ends at once: its socket is shut).
fn drain(pending: &mut VecDeque<Pending>) {
    for p in pending.iter() {
        close(p);
    }
    for p in pending.drain(..) {
        let _ = p.thread.join();
    }
}

/// Joins and forgets the handshake threads that have ended.
fn reap(pending: &mut VecDeque<Pending>) {
    let mut i = 0;
    while i < pending.len() {
        if pending[i].state() == ENDED {
            if let Some(p) = pending.remove(i) {
                let _ = p.thread.join();
            }
        } else {
            i += 1;
        }
    }
}

/// Forgets finished handshakes and, under pressure, closes the slow ones.
fn expire(pending: &mut VecDeque<Pending>, now: Instant) {
    // Ended ones are gone; closed (and handed) ones count until their
    // thread ends (MAX_THREADS).
    reap(pending);
    let open = pending.iter().filter(|p| p.state() == PENDING).count();
    if open >= MAX_PENDING / 2 {
        for p in pending.iter() {
            if now.duration_since(p.since) >= PRESSURE_TIMEOUT {
                close(p);
            }
        }
    }
}

/// At the cap, closes the oldest open handshake of the address with the
/// most open handshakes, to make room for `addr`: one flooding address
/// loses its own slots first.
fn make_room(pending: &mut VecDeque<Pending>, addr: SocketAddr) {
    reap(pending);
    let open: Vec<&Pending> = pending.iter().filter(|p| p.state() == PENDING).collect();
    if open.len() < MAX_PENDING {
        return;
    }
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    for p in &open {
        *per_ip.entry(p.ip).or_default() += 1;
    }
    let busiest = per_ip.into_iter().max_by_key(|&(_, n)| n).map(|(ip, _)| ip);
    // `open` is oldest first.
    if let Some(oldest) = open.iter().find(|p| Some(p.ip) == busiest) {
        log::debug!("incoming {addr}: handshake slots full; closed the oldest");
        close(oldest);
    }
}

/// Shuts a pending handshake's socket, unless its thread has just handed
/// it to the session.
fn close(p: &Pending) {
    let won = p
        .state
        .compare_exchange(PENDING, CLOSED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if won {
        // The handshake thread's blocked read then returns at once.
        let _ = p.stream.shutdown(Shutdown::Both);
    }
}

fn handshake(
    mut stream: TcpStream,
    addr: SocketAddr,
    router: &Router,
    timeout: Duration,
    budget: &Arc<Mutex<MseBudget>>,
) -> Option<Pending> {
    let router = router.clone();
    let handle = stream.try_clone().ok()?;
    let state = Arc::new(AtomicU8::new(PENDING));
    let flag = Arc::clone(&state);
    let budget = Arc::clone(budget);
    let spawned = std::thread::Builder::new()
        .name("rtc-accept".into())
        .spawn(move || {
            let _guard = Ended(Arc::clone(&flag));
            if stream.set_nonblocking(false).is_err() {
                return;
            }
            // Only an opening that is MSE spends from the budget.
            let allow_mse = || {
                budget
                    .lock()
                    .is_ok_and(|mut b| b.allow(addr.ip(), Instant::now()))
            };
            let torrents = router.torrents();
            match accept_handshake(&mut stream, &torrents, timeout, &allow_mse) {
                Ok(accepted) => {
                    if accepted.encrypted {
                        let how = if accepted.cipher.is_some() {
                            "RC4"
                        } else {
                            "plaintext"
                        };
                        log::info!("incoming {addr}: encrypted handshake, {how} selected");
                    }
                    // The torrent may have ended since: then the socket
                    // is simply closed.
                    let Some(events) = router.route(&accepted.handshake.info_hash) else {
                        return;
                    };
                    let handed = flag
                        .compare_exchange(PENDING, HANDED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    if !handed {
                        return; // the listener closed it meanwhile
                    }
                    let _ = events.send(peer::Event::Incoming(Box::new(Incoming {
                        stream,
                        addr,
                        accepted,
                    })));
                }
                Err(e) => log::debug!("incoming {addr}: {e}"),
            }
        });
    match spawned {
        Ok(thread) => Some(Pending {
            since: Instant::now(),
            ip: addr.ip(),
            stream: handle,
            state,
            thread,
        }),
        Err(e) => {
            log::warn!("cannot start a thread for incoming {addr}: {e}");
            None
        }
    }
}

/// Marks the handshake `ENDED` when its thread ends, however it ends.
struct Ended(Arc<AtomicU8>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.store(ENDED, Ordering::Release);
    }
}
