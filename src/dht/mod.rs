//! The mainline DHT (BEP 5, with BEP 32 for IPv6): one node per
//! [`Session`](crate::Session), on its own thread and one UDP socket,
//! shared by the session's torrents. Owns the options ([`DhtOptions`]),
//! the handle the session keeps ([`Dht`]) and the registration through
//! which a download receives the peers its lookups find.
//!
//! Pure parts: `id` (XOR metric), `krpc` (messages), `table` (routing
//! table), `lookup` (one iterative lookup), `store` (tokens, announced
//! peers, answer budget), `state` (the saved table's format). Only `node`
//! touches the socket. Does not own peers' connections: found peers go to
//! the download's session thread like a tracker's.

pub(crate) mod id;
pub(crate) mod krpc;
mod lookup;
mod node;
mod state;
mod store;
mod table;

use crate::types::{EntropyError, InfoHash};
use crossbeam_channel::{Receiver, Sender};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The routers a node joins the public DHT through when none is given.
pub const DEFAULT_BOOTSTRAP: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// How a [`Session`](crate::Session) runs its DHT node.
/// `DhtOptions::default()` is on, joins through [`DEFAULT_BOOTSTRAP`],
/// and saves nothing.
///
/// ```
/// let dht = rtc::DhtOptions::default()
///     .bootstrap(["127.0.0.1:6881"])
///     .state_file("/tmp/rtc-dht.dat");
/// let opts = rtc::SessionOptions::default().dht(dht);
/// assert!(opts.dht.enabled);
/// assert!(!rtc::SessionOptions::default().no_dht().dht.enabled);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DhtOptions {
    /// Run a DHT node. Private torrents (BEP 27) never use it.
    pub enabled: bool,
    /// `HOST:PORT` of nodes to join through (names are resolved on a
    /// thread of their own, so a slow resolver delays nothing).
    pub bootstrap: Vec<String>,
    /// Where the good nodes of the routing table are saved at shutdown
    /// (and every 10 minutes) and read back at start, so the next run
    /// needs no router. A missing, corrupt or foreign file is ignored with
    /// a warning. `None`: nothing is saved.
    pub state_file: Option<PathBuf>,
}

impl Default for DhtOptions {
    fn default() -> DhtOptions {
        DhtOptions {
            enabled: true,
            bootstrap: DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect(),
            state_file: None,
        }
    }
}

impl DhtOptions {
    /// No DHT node.
    pub fn off() -> DhtOptions {
        DhtOptions {
            enabled: false,
            ..DhtOptions::default()
        }
    }
    /// Replaces [`bootstrap`](Self::bootstrap).
    pub fn bootstrap<S: Into<String>>(mut self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.bootstrap = nodes.into_iter().map(Into::into).collect();
        self
    }
    /// Sets [`state_file`](Self::state_file).
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }
}

/// What a session's DHT node knows now ([`Session::dht`](crate::Session::dht)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DhtStatus {
    /// The UDP port the node answers on.
    pub port: u16,
    /// Nodes in the routing tables (IPv4 and IPv6).
    pub nodes: usize,
    /// Peers other nodes announced to us, across torrents.
    pub stored_peers: usize,
}

/// Counters the node thread publishes.
#[derive(Default)]
pub(crate) struct Stats {
    nodes: AtomicUsize,
    stored: AtomicUsize,
}

/// What the node thread is told. Every variant but `Shutdown` comes
/// through a [`Dht`] or a [`Registration`].
pub(crate) enum Command {
    /// Find peers for `info_hash` now and every 15 minutes, sending them on
    /// `peers`; announce `port` (if any) to the closest nodes.
    Register {
        id: u64,
        info_hash: InfoHash,
        port: Option<u16>,
        peers: Sender<Vec<SocketAddr>>,
    },
    Unregister(u64),
    /// The download is short of peers: look again soon (at most every 10
    /// seconds).
    WantPeers(u64),
    /// Nodes to try (a torrent's `nodes`, resolved bootstrap names).
    AddNodes(Vec<SocketAddr>),
    /// Save the table (if there is a state file) and end the thread.
    Shutdown,
}

/// The session's handle on its DHT node. Clones share the node.
#[derive(Clone)]
pub(crate) struct Dht {
    tx: Sender<Command>,
    stats: Arc<Stats>,
    next_id: Arc<AtomicU64>,
    port: u16,
}

/// A download's subscription to DHT lookups for its info hash; dropping
/// it stops them.
pub(crate) struct Registration {
    id: u64,
    tx: Sender<Command>,
    /// Peers the lookups find, a batch per answer.
    pub(crate) peers: Receiver<Vec<SocketAddr>>,
}

impl Registration {
    /// The download needs more peers.
    pub(crate) fn want_peers(&self) {
        let _ = self.tx.send(Command::WantPeers(self.id));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Unregister(self.id));
    }
}

/// Why the node could not start.
#[derive(Debug)]
pub(crate) enum Error {
    Bind(std::io::Error),
    Entropy(EntropyError),
    Thread(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Bind(e) => write!(f, "dht: cannot bind a UDP socket: {e}"),
            Error::Entropy(e) => write!(f, "dht: {e}"),
            Error::Thread(e) => write!(f, "dht: cannot start its thread: {e}"),
        }
    }
}

/// Binds the node's socket: dual-stack `[::]:port` where the machine has
/// IPv6, else `0.0.0.0:port`; another port if that one is taken.
fn bind(port: u16) -> Result<(UdpSocket, bool), Error> {
    let try_bind = |p: u16| {
        UdpSocket::bind(("::", p))
            .map(|s| (s, true))
            .or_else(|_| UdpSocket::bind(("0.0.0.0", p)).map(|s| (s, false)))
    };
    match try_bind(port) {
        Ok(s) => Ok(s),
        Err(e) if port != 0 => {
            log::warn!("dht: udp port {port}: {e}; using another");
            try_bind(0).map_err(Error::Bind)
        }
        Err(e) => Err(Error::Bind(e)),
    }
}

impl Dht {
    /// Starts the node thread on UDP `port` (the session's TCP port, so
    /// peers and nodes see one port).
    pub(crate) fn start(opts: &DhtOptions, port: u16) -> Result<(Dht, JoinHandle<()>), Error> {
        let (socket, v6) = bind(port)?;
        let port = socket.local_addr().map_err(Error::Bind)?.port();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(Stats::default());
        let node = node::Node::new(socket, v6, rx, Arc::clone(&stats), opts.state_file.clone())
            .map_err(Error::Entropy)?;
        let thread = std::thread::Builder::new()
            .name("rtc-dht".into())
            .spawn(move || node.run())
            .map_err(Error::Thread)?;
        let dht = Dht {
            tx,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
            port,
        };
        log::info!(
            "dht: node on udp port {port}{}",
            if v6 { " (IPv4 and IPv6)" } else { "" }
        );
        dht.add_nodes(opts.bootstrap.iter().map(String::as_str));
        Ok((dht, thread))
    }

    /// Nodes to join through, as `HOST:PORT`. Addresses go to the node at
    /// once; names are resolved on a detached thread (a DNS lookup cannot
    /// be interrupted, and holds nothing but a channel to the node).
    pub(crate) fn add_nodes<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let mut addrs = Vec::new();
        let mut names = Vec::new();
        for h in hosts {
            match h.parse::<SocketAddr>() {
                Ok(a) => addrs.push(a),
                Err(_) => names.push(h.to_string()),
            }
        }
        if !addrs.is_empty() {
            let _ = self.tx.send(Command::AddNodes(addrs));
        }
        if names.is_empty() {
            return;
        }
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("rtc-dht-resolve".into())
            .spawn(move || {
                for name in names {
                    match name.to_socket_addrs() {
                        Ok(found) => {
                            let _ = tx.send(Command::AddNodes(found.take(4).collect()));
                        }
                        Err(e) => {
                            log::debug!("dht: cannot resolve {}: {e}", crate::text::escaped(&name))
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("dht: cannot start a resolver thread: {e}");
        }
    }

    /// Subscribes `info_hash` to lookups (and announces of `port`).
    pub(crate) fn register(&self, info_hash: InfoHash, port: Option<u16>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (peers_tx, peers_rx) = crossbeam_channel::unbounded();
        let _ = self.tx.send(Command::Register {
            id,
            info_hash,
            port,
            peers: peers_tx,
        });
        Registration {
            id,
            tx: self.tx.clone(),
            peers: peers_rx,
        }
    }

    pub(crate) fn status(&self) -> DhtStatus {
        DhtStatus {
            port: self.port,
            nodes: self.stats.nodes.load(Ordering::Relaxed),
            stored_peers: self.stats.stored.load(Ordering::Relaxed),
        }
    }

    /// Tells the node to save and end; the caller joins its thread.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}
