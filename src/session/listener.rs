//! The listener thread: accepts connections peers open to us, reads and
//! checks their handshake (on a short-lived thread each, so a slow peer
//! cannot hold up `accept`), and hands good ones to the session as
//! `peer::Event::Incoming`. The session decides whether to keep them (peer
//! cap, bans) and starts their connection thread.

use crate::peer::conn::accept_handshake;
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

/// Binds `port` on all IPv4 addresses, or any free port if it is taken.
pub fn bind(port: u16) -> io::Result<TcpListener> {
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => Ok(l),
        Err(e) if port != 0 => {
            log::info!("port {port} unavailable ({e}); listening on a free port");
            TcpListener::bind(("0.0.0.0", 0))
        }
        Err(e) => Err(e),
    }
}

/// Runs until `stop` is sent to or dropped.
pub fn spawn(
    listener: TcpListener,
    info_hash: InfoHash,
    handshake_timeout: Duration,
    events: Sender<peer::Event>,
    stop: Receiver<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
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
            match listener.accept() {
                Ok((stream, addr)) => {
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) => {
                    log::debug!("accept failed: {e}");
                    std::thread::sleep(POLL);
                }
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
                Ok(handshake) => {
                    let _ = events.send(peer::Event::Incoming(Incoming {
                        stream,
                        addr,
                        handshake,
                    }));
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
