//! The listener thread: accepts connections peers open to us, reads and
//! checks their handshake (on a short-lived thread each, so a slow peer
//! cannot hold up `accept`), and hands good ones to the session as
//! `peer::Event::Incoming`. The session decides whether to keep them (peer
//! cap, bans) and starts their connection thread.

use crate::peer::accept::accept_handshake;
use crate::peer::{self, Incoming};
use crate::types::InfoHash;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a blocked `accept` looks at its stop channel.
const POLL: Duration = Duration::from_millis(50);

/// At most this many incoming handshakes are read at once; further
/// connections are closed on accept. Without a cap, a flood of silent
/// connections would each hold a thread for the handshake timeout.
const MAX_PENDING: usize = 64;

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

/// Runs until `stop` is sent to or dropped.
pub fn spawn(
    listeners: Listeners,
    info_hash: InfoHash,
    handshake_timeout: Duration,
    events: Sender<peer::Event>,
    stop: Receiver<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    for l in &listeners.0 {
        l.set_nonblocking(true)?;
    }
    // Shared only with the short-lived handshake threads, as a counter; an
    // atomic, not a Mutex (DESIGN.md, "Seeding", Listener).
    let pending = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("rtc-listener".into())
        .spawn(move || loop {
            match stop.try_recv() {
                Ok(()) | Err(TryRecvError::Disconnected) => return,
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
                        if pending.load(Ordering::Acquire) >= MAX_PENDING {
                            log::debug!("incoming {addr}: too many pending handshakes; closed");
                            continue;
                        }
                        handshake(
                            stream,
                            addr,
                            info_hash,
                            handshake_timeout,
                            &events,
                            &pending,
                        )
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => log::debug!("accept failed: {e}"),
                }
            }
            if idle {
                std::thread::sleep(POLL);
            }
        })
}

fn handshake(
    mut stream: std::net::TcpStream,
    addr: SocketAddr,
    info_hash: InfoHash,
    timeout: Duration,
    events: &Sender<peer::Event>,
    pending: &Arc<AtomicUsize>,
) {
    let events = events.clone();
    pending.fetch_add(1, Ordering::AcqRel);
    let counter = Arc::clone(pending);
    let spawned = std::thread::Builder::new()
        .name(format!("rtc-accept-{addr}"))
        .spawn(move || {
            let _guard = Pending(counter);
            if stream.set_nonblocking(false).is_err() {
                return;
            }
            match accept_handshake(&mut stream, info_hash, timeout) {
                Ok(accepted) => {
                    if accepted.encrypted {
                        let how = if accepted.cipher.is_some() {
                            "RC4"
                        } else {
                            "plaintext"
                        };
                        log::info!("incoming {addr}: encrypted handshake, {how} selected");
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
    if let Err(e) = spawned {
        // The closure (and its guard) never ran, so undo the count here.
        pending.fetch_sub(1, Ordering::AcqRel);
        log::warn!("cannot start a thread for incoming {addr}: {e}");
    }
}

/// Decrements the pending-handshake count when a handshake thread ends,
/// however it ends.
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
