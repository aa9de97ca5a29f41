//! How a [`Session`](crate::Session) and each download in it run: the
//! option structs, their defaults and builder methods. Plain data; nothing
//! here starts a thread or touches the network.

use crate::dht::DhtOptions;
use crate::peer::conn::Limits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the torrents of one [`Session`](crate::Session) share.
/// `SessionOptions::default()` gives rtc's defaults.
///
/// ```
/// let opts = rtc::SessionOptions::default()
///     .port(0)                // any free port
///     .max_connections(100)   // peer threads across all torrents
///     .max_open_files(32);
/// assert_eq!(opts.max_connections, 100);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Port to listen on for incoming peers, for every torrent of the
    /// session (a free one if it is taken; 0 for any). The port actually
    /// bound is announced to trackers.
    pub port: u16,
    /// Accept incoming connections at all.
    pub listen: bool,
    /// Most peer connections (one thread each) across all torrents.
    pub max_connections: usize,
    /// Threads that verify SHA-1 of pieces, shared by all torrents; by
    /// default one per core.
    pub hash_threads: usize,
    /// Data files held open at once across all torrents (least recently
    /// used closed first), so torrents of any number of files stay under
    /// the process's `ulimit -n`.
    pub max_open_files: usize,
    /// Bound on reading the opening of a peer that connected to us.
    pub handshake_timeout: Duration,
    /// The session's DHT node (on by default, joining the public DHT
    /// through [`DEFAULT_BOOTSTRAP`](crate::DEFAULT_BOOTSTRAP); nothing
    /// saved unless [`DhtOptions::state_file`] is set).
    pub dht: DhtOptions,
    /// Most bytes per second received from peers, all torrents together;
    /// `None` (the default) is no limit. Connections that would exceed it
    /// wait (they block; nothing spins) and TCP slows the senders.
    pub max_download_rate: Option<u64>,
    /// Most bytes per second sent to peers, all torrents together; `None`
    /// (the default) is no limit.
    pub max_upload_rate: Option<u64>,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            port: 6881,
            listen: true,
            max_connections: 200,
            hash_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_open_files: 64,
            handshake_timeout: Limits::default().handshake,
            dht: DhtOptions::default(),
            max_download_rate: None,
            max_upload_rate: None,
        }
    }
}

impl SessionOptions {
    /// Sets [`port`](Self::port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Sets [`listen`](Self::listen).
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }
    /// Sets [`max_connections`](Self::max_connections) (at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
    /// Sets [`hash_threads`](Self::hash_threads) (at least 1).
    pub fn hash_threads(mut self, n: usize) -> Self {
        self.hash_threads = n.max(1);
        self
    }
    /// Sets [`dht`](Self::dht).
    pub fn dht(mut self, dht: DhtOptions) -> Self {
        self.dht = dht;
        self
    }
    /// Turns the DHT off ([`DhtOptions::off`]).
    pub fn no_dht(mut self) -> Self {
        self.dht = DhtOptions::off();
        self
    }
    /// Sets [`max_download_rate`](Self::max_download_rate) in bytes per
    /// second (at least 1).
    pub fn max_download_rate(mut self, bytes_per_sec: u64) -> Self {
        self.max_download_rate = Some(bytes_per_sec.max(1));
        self
    }
    /// Sets [`max_upload_rate`](Self::max_upload_rate) in bytes per second
    /// (at least 1).
    pub fn max_upload_rate(mut self, bytes_per_sec: u64) -> Self {
        self.max_upload_rate = Some(bytes_per_sec.max(1));
        self
    }
    /// Sets [`max_open_files`](Self::max_open_files) (at least 1).
    pub fn max_open_files(mut self, n: usize) -> Self {
        self.max_open_files = n.max(1);
        self
    }
}

/// How one download runs. `AddOptions::new(dir)` gives rtc's defaults.
///
/// ```
/// use rtc::{AddOptions, SeedUntil};
/// use std::time::Duration;
///
/// let opts = AddOptions::new("downloads")
///     .max_peers(30)
///     .peer("127.0.0.1:6881".parse().unwrap())
///     .seed(SeedUntil::Time(Duration::from_secs(600)));
/// assert_eq!(opts.peers.len(), 1);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AddOptions {
    /// Files are created under this directory (never outside it).
    pub output_dir: PathBuf,
    /// Most peer connections of this download at once (the session's
    /// [`max_connections`](SessionOptions::max_connections) bounds all
    /// downloads together).
    pub max_peers: usize,
    /// Peers to connect to in addition to what trackers return.
    pub peers: Vec<SocketAddr>,
    /// What to do once every piece is verified.
    pub seed: SeedUntil,
    /// Give up when no peer has been connected for this long.
    pub no_peer_timeout: Duration,
    /// Bound on one tracker announce.
    pub announce_timeout: Duration,
    /// Per-connection timeouts and pipeline depth.
    pub limits: Limits,
    /// Let rtc rewrite pieces that fail verification in existing files
    /// that it did not create but that have the torrent's file sizes (a
    /// finished download whose data later rotted). Off by default: such
    /// files are the user's and are never written.
    pub repair: bool,
    /// Start paused: the data on disk is checked, then nothing connects
    /// until [`Download::resume`](crate::Download::resume).
    pub paused: bool,
    /// Only fetch a magnet's metadata: the download ends (successfully)
    /// once the torrent is known ([`Download::torrent`](crate::Download::torrent)),
    /// before any file is created.
    pub metadata_only: bool,
    /// Which files to download (every file by default; a magnet link's
    /// `so=` list when no rule is given). Files not selected are not
    /// created; the download completes when every selected file is
    /// verified.
    pub files: crate::FileSelection,
}

impl AddOptions {
    /// rtc's defaults, writing under `output_dir`.
    pub fn new(output_dir: impl Into<PathBuf>) -> AddOptions {
        AddOptions {
            output_dir: output_dir.into(),
            max_peers: 50,
            peers: Vec::new(),
            seed: SeedUntil::Never,
            no_peer_timeout: Duration::from_secs(60),
            announce_timeout: crate::tracker::ANNOUNCE_TIMEOUT,
            limits: Limits::default(),
            repair: false,
            paused: false,
            metadata_only: false,
            files: crate::FileSelection::all(),
        }
    }
    /// Sets [`max_peers`](Self::max_peers) (at least 1).
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n.max(1);
        self
    }
    /// Adds one peer to [`peers`](Self::peers).
    pub fn peer(mut self, addr: SocketAddr) -> Self {
        self.peers.push(addr);
        self
    }
    /// Sets [`seed`](Self::seed).
    pub fn seed(mut self, seed: SeedUntil) -> Self {
        self.seed = seed;
        self
    }
    /// Sets [`no_peer_timeout`](Self::no_peer_timeout).
    pub fn no_peer_timeout(mut self, d: Duration) -> Self {
        self.no_peer_timeout = d;
        self
    }
    /// Sets [`announce_timeout`](Self::announce_timeout).
    pub fn announce_timeout(mut self, d: Duration) -> Self {
        self.announce_timeout = d;
        self
    }
    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Sets [`repair`](Self::repair).
    pub fn repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }
    /// Sets [`files`](Self::files).
    pub fn files(mut self, selection: crate::FileSelection) -> Self {
        self.files = selection;
        self
    }
    /// Sets [`metadata_only`](Self::metadata_only).
    pub fn metadata_only(mut self, yes: bool) -> Self {
        self.metadata_only = yes;
        self
    }
    /// Sets [`paused`](Self::paused).
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }
}

/// When a download that completed stops serving others.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum SeedUntil {
    /// Finish as soon as the last piece is verified (the CLI's default).
    Never,
    /// Keep seeding until cancelled; cancelling then is success.
    Stopped,
    /// Until uploaded bytes reach this multiple of the torrent's size (of
    /// the selected files' pieces, with a partial selection).
    Ratio(f64),
    /// For this long after completion.
    Time(Duration),
}
