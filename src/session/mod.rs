//! The public, blocking API: a [`Session`] holds what torrents share (one
//! listening port, one hashing pool, one budget of peer connections and
//! open files) and [`Session::add`] starts a download in it, returning a
//! [`Download`] handle to read progress and events, pause, resume, cancel
//! and wait. [`Download::start`] is the one-torrent shortcut over a private
//! session. No async runtime: every thread is a plain OS thread, and
//! every one of them has ended when `wait`, `shutdown` or `drop` returns.
//!
//! This file owns the API types and the lifetimes of the threads behind
//! them; the per-torrent session thread is `coordinator`, the shared
//! resources `core`, the options `options`, the error `error`.

pub(crate) mod addrbook;
mod admission;
mod choker;
mod coordinator;
mod core;
mod error;
mod fetch;
mod listener;
mod metadata;
mod options;
mod picker;
mod pieces;
mod rate;
mod slots;

pub(crate) use error::clone_io;
pub use error::Error;
pub use options::{AddOptions, SeedUntil, SessionOptions};

use crate::magnet::Magnet;
use crate::metainfo::Torrent;
use crate::types::InfoHash;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a download starts from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Source {
    /// A torrent file's contents.
    Torrent(Torrent),
    /// A magnet link: the torrent's metadata is fetched from peers first
    /// (BEP 9) and checked against its info hash.
    Magnet(Magnet),
}

impl Source {
    /// The info hash of the torrent it names.
    pub fn info_hash(&self) -> InfoHash {
        match self {
            Source::Torrent(t) => t.info_hash(),
            Source::Magnet(m) => m.info_hash(),
        }
    }
}

impl From<Torrent> for Source {
    fn from(t: Torrent) -> Source {
        Source::Torrent(t)
    }
}

impl From<Magnet> for Source {
    fn from(m: Magnet) -> Source {
        Source::Magnet(m)
    }
}

/// A magnet's download: the info dict from the output directory's marker
/// if an earlier run left it there, else from peers; then the download
/// proper, from the addresses the metadata phase learned.
fn from_magnet(
    m: &Magnet,
    mut options: AddOptions,
    ctx: coordinator::Context,
) -> Result<Summary, Error> {
    let options_sane = coordinator::sane(options.clone());
    let info_hash = m.info_hash();
    let mut peers: Vec<(SocketAddr, addrbook::Origin)> = options_sane
        .peers
        .iter()
        .map(|&a| (a, addrbook::Origin::Manual))
        .collect();
    for p in m.peers() {
        use std::net::ToSocketAddrs;
        match p.to_socket_addrs() {
            Ok(addrs) => peers.extend(addrs.map(|a| (a, addrbook::Origin::Magnet))),
            Err(e) => log::info!("magnet peer {}: {e}", crate::text::Escaped(p)),
        }
    }
    let marker = crate::storage::Marker::for_hash(&options.output_dir, &info_hash);
    let mut banned = Vec::new();
    let info = match marker.info(&info_hash) {
        Some(info) => {
            log::info!("metadata from the unfinished download's marker");
            info
        }
        None => {
            let fetched = fetch::fetch(info_hash, m.trackers(), &peers, &options_sane, &ctx)?;
            peers = fetched.peers;
            banned = fetched.banned;
            options.paused = fetched.paused;
            fetched.info
        }
    };
    let torrent = Torrent::from_info(&info, m.trackers()).map_err(Error::Metadata)?;
    log::info!(
        "metadata: {} ({} bytes, {} pieces)",
        crate::text::Escaped(torrent.name()),
        torrent.total_length(),
        torrent.piece_count()
    );
    let _ = ctx.events.try_send(Event::Metadata {
        name: torrent.name().to_string(),
        total_bytes: torrent.total_length(),
    });
    options.peers.clear(); // all in `peers`, with their origins
    options.files = options.files.with_default(m.select_only());
    if options.metadata_only {
        let total_bytes = torrent.total_length();
        let _ = ctx.shared.torrent.set(Arc::new(torrent));
        return Ok(Summary {
            total_bytes,
            downloaded_bytes: 0,
            uploaded_bytes: 0,
            elapsed: Duration::ZERO,
            peer_sources: PeerSources::default(),
        });
    }
    let mut c = coordinator::Coordinator::new(torrent, options, ctx)?;
    c.add_peers(peers, &banned);
    c.run()
}

/// Piece buffers the writer keeps for peer threads to reuse (see
/// `buffers`): with 1 MiB pieces, 4 MiB at most.
const SPARE_BUFFERS: usize = 4;

/// Events a download buffers for a reader that is behind; beyond this,
/// new events are dropped (never memory), except [`Event::Ended`].
const EVENT_BUFFER: usize = 1024;

/// The sending end of a download's events: at most [`EVENT_BUFFER`] wait
/// for the reader, and beyond that new ones are dropped. An unbounded
/// channel with that check rather than a bounded one: a bounded channel
/// allocates and touches all its slots up front (about 150 KB a download,
/// 620 MB for a list of 5,000 torrents); this one grows with what waits.
#[derive(Clone, Debug)]
pub(crate) struct EventSender(Sender<Event>);

impl EventSender {
    /// Queues `ev` unless the reader is [`EVENT_BUFFER`] events behind;
    /// whether it was queued.
    pub(crate) fn try_send(&self, ev: Event) -> bool {
        self.0.len() < EVENT_BUFFER && self.0.send(ev).is_ok()
    }

    /// Queues the last event ([`Event::Ended`]) however far behind the
    /// reader is.
    fn send_last(&self, ev: Event) {
        let _ = self.0.send(ev);
    }
}

/// A snapshot of a running download.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// The torrent's size in bytes.
    pub total_bytes: u64,
    /// Bytes of pieces verified and written.
    pub verified_bytes: u64,
    /// Pieces verified and written.
    pub pieces_done: u32,
    /// Pieces in the torrent.
    pub pieces_total: u32,
    /// Peers connected now.
    pub peers: u32,
    /// Verified bytes per second over the last few seconds.
    pub rate: u64,
    /// Piece bytes sent to peers so far.
    pub uploaded_bytes: u64,
    /// Piece bytes sent to peers per second, recently.
    pub upload_rate: u64,
    /// Since the download was added; once it ended well, the time it
    /// ran ([`Summary::elapsed`]).
    pub elapsed: Duration,
    /// Whether the download is paused.
    pub paused: bool,
    /// For a magnet whose metadata is being fetched (`total_bytes` is 0
    /// until it arrives): bytes of the info dict received so far.
    pub metadata_bytes: u64,
    /// Size of the info dict, once a peer has said (0 before).
    pub metadata_size: u64,
    /// Bytes of the pieces the download must have: those holding bytes
    /// of a selected file ([`AddOptions::files`]). `total_bytes` when
    /// every file is selected.
    pub wanted_bytes: u64,
    /// Of `wanted_bytes`, those verified and written.
    pub wanted_verified_bytes: u64,
}

impl Progress {
    /// Verified share of what the download wants (every piece, or those
    /// of the selected files), from 0.0 to 1.0.
    pub fn fraction(&self) -> f64 {
        if self.wanted_bytes == 0 {
            1.0
        } else {
            self.wanted_verified_bytes as f64 / self.wanted_bytes as f64
        }
    }
}

/// Things that happen during a download, read from [`Events`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// Existing data was verified: this many pieces were already complete.
    Checked {
        /// Pieces found complete on disk.
        pieces_ok: u32,
        /// Pieces in the torrent.
        pieces_total: u32,
    },
    /// The session accepts peers of this download on this port.
    Listening(u16),
    /// A peer completed its handshake.
    PeerConnected(SocketAddr),
    /// A connection ended.
    PeerDropped {
        /// The peer.
        addr: SocketAddr,
        /// Why, as a line of text (escaped where it quotes the peer).
        reason: String,
    },
    /// A piece was verified and written.
    PieceDone {
        /// Its index.
        piece: u32,
        /// The download's progress right after.
        progress: Progress,
    },
    /// A round of announces to every tracker failed (the download goes on
    /// while other sources may yield peers).
    TrackerError(String),
    /// Paused by [`Download::pause`]: no connections until resumed.
    Paused,
    /// Resumed by [`Download::resume`].
    Resumed,
    /// Every piece is verified; seeding (if asked for) goes on.
    Finished,
    /// A magnet's metadata arrived and was verified: the torrent is known
    /// ([`Download::torrent`]).
    Metadata {
        /// The torrent's name (escape it before printing).
        name: String,
        /// Its size in bytes.
        total_bytes: u64,
    },
    /// The download has ended, every thread of it has ended and every file
    /// and socket is closed: its result, the same as
    /// [`Download::wait`]'s. Always the last event, and never dropped.
    Ended(Result<Summary, Error>),
}

/// The outcome of a download that completed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// The torrent's size in bytes.
    pub total_bytes: u64,
    /// Bytes fetched from peers in this run (without wasted duplicates).
    pub downloaded_bytes: u64,
    /// Piece bytes served to peers.
    pub uploaded_bytes: u64,
    /// From adding the download to its end.
    pub elapsed: Duration,
    /// Peers that completed a handshake, by where rtc heard of them.
    pub peer_sources: PeerSources,
}

/// Connections that completed a handshake, counted by where rtc heard of
/// the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerSources {
    /// From a tracker's reply.
    pub tracker: u32,
    /// From another peer, by peer exchange (BEP 11).
    pub pex: u32,
    /// Given by the user (`--peer`, [`AddOptions::peers`]).
    pub manual: u32,
    /// From a magnet link's `x.pe`.
    pub magnet: u32,
    /// From the DHT (BEP 5).
    pub dht: u32,
    /// Peers that connected to us.
    pub incoming: u32,
}

impl PeerSources {
    fn count(&mut self, from: Option<addrbook::Origin>) {
        use addrbook::Origin;
        let n = match from {
            Some(Origin::Tracker) => &mut self.tracker,
            Some(Origin::Pex) => &mut self.pex,
            Some(Origin::Manual) => &mut self.manual,
            Some(Origin::Magnet) => &mut self.magnet,
            Some(Origin::Dht) => &mut self.dht,
            None => &mut self.incoming,
        };
        *n = n.saturating_add(1);
    }

    fn name(from: Option<addrbook::Origin>) -> &'static str {
        use addrbook::Origin;
        match from {
            Some(Origin::Tracker) => "from a tracker",
            Some(Origin::Pex) => "by PEX",
            Some(Origin::Manual) => "given",
            Some(Origin::Magnet) => "from the magnet link",
            Some(Origin::Dht) => "from the DHT",
            None => "incoming",
        }
    }
}

impl std::fmt::Display for PeerSources {
    /// `2 from trackers, 1 by PEX`: the non-zero counts, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.tracker, "from trackers"),
            (self.pex, "by PEX"),
            (self.manual, "given"),
            (self.magnet, "from the magnet link"),
            (self.dht, "from the DHT"),
            (self.incoming, "incoming"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Counters the session thread publishes and any thread may read.
/// Atomics, not a Mutex: each has one writer (the session thread).
#[derive(Default)]
struct Shared {
    verified_bytes: AtomicU64,
    pieces_done: AtomicU32,
    peers: AtomicU32,
    rate: AtomicU64,
    uploaded: AtomicU64,
    upload_rate: AtomicU64,
    paused: AtomicBool,
    /// Known once the torrent is (from the start, or once a magnet's
    /// metadata arrived).
    total_bytes: AtomicU64,
    pieces_total: AtomicU32,
    /// A magnet's metadata phase: bytes of the info dict received so far,
    /// and its size once a peer said.
    metadata_bytes: AtomicU64,
    metadata_size: AtomicU64,
    /// Bytes of the wanted pieces, and of those verified (see
    /// [`Progress::wanted_bytes`]).
    wanted_bytes: AtomicU64,
    wanted_verified_bytes: AtomicU64,
    /// Which files are selected, set just before `torrent`.
    selected: OnceLock<Arc<[bool]>>,
    /// The torrent, once known.
    torrent: OnceLock<Arc<Torrent>>,
    /// Verified pieces, one bit each (bit `i % 64` of word `i / 64`), once
    /// the torrent is known: read by [`Download::file_progress`] without
    /// asking the session thread.
    have: OnceLock<Box<[AtomicU64]>>,
}

impl Shared {
    /// Sizes the piece bits for `pieces` pieces (once).
    fn init_have(&self, pieces: u32) {
        let _ = self.have.set(
            (0..pieces.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
    }

    /// Records `piece` as verified and written.
    fn set_have(&self, piece: u32) {
        if let Some(word) = self.have.get().and_then(|w| w.get(piece as usize / 64)) {
            word.fetch_or(1 << (piece % 64), Ordering::Relaxed);
        }
    }

    fn has(&self, piece: u32) -> bool {
        self.have
            .get()
            .and_then(|w| w.get(piece as usize / 64))
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (piece % 64)) != 0)
    }

    fn snapshot(&self, elapsed: Duration) -> Progress {
        let pieces_total = self.pieces_total.load(Ordering::Relaxed);
        Progress {
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            verified_bytes: self.verified_bytes.load(Ordering::Relaxed),
            pieces_done: self.pieces_done.load(Ordering::Relaxed),
            pieces_total,
            peers: self.peers.load(Ordering::Relaxed),
            rate: self.rate.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded.load(Ordering::Relaxed),
            upload_rate: self.upload_rate.load(Ordering::Relaxed),
            elapsed,
            paused: self.paused.load(Ordering::Relaxed),
            metadata_bytes: self.metadata_bytes.load(Ordering::Relaxed),
            metadata_size: self.metadata_size.load(Ordering::Relaxed),
            wanted_bytes: self.wanted_bytes.load(Ordering::Relaxed),
            wanted_verified_bytes: self.wanted_verified_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Commands to a download's session thread. A disconnected channel (every
/// handle gone) counts as `Cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Pause,
    Resume,
    Cancel,
}

/// One download as the session and its handle see it.
struct Entry {
    info_hash: InfoHash,
    /// Unbounded, so no pause, resume or cancel is ever lost; read by the
    /// session thread's event loop.
    control: Sender<Control>,
    /// Also set by a cancel, for the session thread's first check of the
    /// data on disk, which does not read `control`.
    cancelled: Arc<AtomicBool>,
    /// The session thread; taken by whoever joins it first.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set once the thread has been joined; other joiners wait for it.
    joined: Mutex<bool>,
    joined_cond: Condvar,
    /// Set by the session thread just before it ends.
    result: Arc<OnceLock<Result<Summary, Error>>>,
}

impl Entry {
    fn send(&self, c: Control) {
        if c == Control::Cancel {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        let _ = self.control.send(c);
    }

    /// Blocks until the session thread has ended; its result. No lock is
    /// held while joining, so `is_finished` and `Session::add` never wait
    /// for another thread's `wait`.
    fn join(&self) -> Result<Summary, Error> {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = handle {
            if t.join().is_err() {
                let _ = self
                    .result
                    .set(Err(Error::Thread("session thread panicked".into())));
            }
            if let Ok(mut j) = self.joined.lock() {
                *j = true;
                self.joined_cond.notify_all();
            }
        } else if let Ok(mut j) = self.joined.lock() {
            while !*j {
                match self.joined_cond.wait(j) {
                    Ok(g) => j = g,
                    Err(_) => break,
                }
            }
        }
        self.result
            .get()
            .cloned()
            .unwrap_or_else(|| Err(Error::Thread("session thread gave no result".into())))
    }

    /// The session thread has set its result (and is ending or ended).
    fn is_finished(&self) -> bool {
        self.result.get().is_some()
    }
}

/// Threads a session started that are not a download's.
struct SessionThreads {
    listener: Option<(Sender<()>, JoinHandle<()>)>,
    dht: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    pool_threads: usize,
    pool_exits: Arc<core::Exits>,
}

/// Many downloads sharing one listening port, one hashing pool, one budget
/// of peer connections and of open files. `Send + Sync`: add downloads
/// from any thread (share it by reference or in an `Arc`).
///
/// [`shutdown`](Session::shutdown), or dropping the session, cancels every
/// download in it and returns once every thread it started has ended.
///
/// ```no_run
/// use rtc::{AddOptions, Session, SessionOptions, Torrent};
///
/// let session = Session::new(SessionOptions::default())?;
/// let mut downloads = Vec::new();
/// for path in ["a.torrent", "b.torrent"] {
///     let torrent = Torrent::from_bytes(&std::fs::read(path)?)?;
///     downloads.push(session.add(torrent, AddOptions::new("downloads"))?);
/// }
/// for d in downloads {
///     let summary = d.wait()?;
///     println!("{} bytes in {:?}", summary.total_bytes, summary.elapsed);
/// }
/// session.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Session {
    core: Option<Arc<core::Core>>,
    threads: Mutex<SessionThreads>,
    downloads: Mutex<Vec<Arc<Entry>>>,
    port: Option<u16>,
}

impl Session {
    /// Starts a session: binds the listening port (unless
    /// [`listen`](SessionOptions::listen) is off) and the hashing pool.
    pub fn new(options: SessionOptions) -> Result<Session, Error> {
        let router = listener::Router::default();
        let mut listener = None;
        let mut port = None;
        if options.listen {
            let l = listener::bind(options.port).map_err(|source| Error::Listen {
                port: options.port,
                source,
            })?;
            port = Some(l.port());
            log::info!("listening on port {}", l.port());
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
            let handshake = options
                .handshake_timeout
                .clamp(Duration::from_millis(1), Duration::from_secs(365 * 86_400));
            let t = listener::spawn(l, router.clone(), handshake, stop_rx)
                .map_err(|e| Error::Thread(format!("cannot start the listener: {e}")))?;
            listener = Some((stop_tx, t));
        }
        let exits = Arc::new(core::Exits::default());
        let on_exit = Arc::clone(&exits);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.hash_threads.max(1))
            .thread_name(|i| format!("rtc-hash-{i}"))
            .exit_handler(move |_| on_exit.ended_one())
            .build()
            .map_err(|e| Error::Thread(e.to_string()))?;
        let peer_id = crate::types::PeerId::generate()?;
        // The DHT node answers on the peers' port number (over UDP), as
        // other clients do; a session that does not listen still looks up
        // peers, from the port it was given.
        let (dht, dht_thread) = if options.dht.enabled {
            match crate::dht::Dht::start(&options.dht, port.unwrap_or(options.port)) {
                Ok((d, t)) => (Some(d), Some(t)),
                Err(e) => {
                    log::warn!("{e}; running without the DHT");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let (write_tx, write_rx) = crossbeam_channel::bounded(8);
        let buffers = crate::buffers::Buffers::new(SPARE_BUFFERS);
        let writer = crate::storage::spawn_writer(write_rx, buffers.clone())
            .map_err(|e| Error::Thread(format!("cannot start the writer: {e}")))?;
        let core = core::Core {
            writer: write_tx,
            pool,
            router,
            port,
            peer_id,
            connections: core::Budget::new(options.max_connections.max(1)),
            files: crate::storage::FileCache::new(options.max_open_files),
            dht,
            pipeline: std::sync::atomic::AtomicU64::new(0),
            buffers,
            throttle: Arc::new(crate::throttle::Throttle::new(
                options.max_download_rate,
                options.max_upload_rate,
            )),
        };
        Ok(Session {
            core: Some(Arc::new(core)),
            threads: Mutex::new(SessionThreads {
                listener,
                dht: dht_thread,
                writer: Some(writer),
                pool_threads: options.hash_threads.max(1),
                pool_exits: exits,
            }),
            downloads: Mutex::new(Vec::new()),
            port,
        })
    }

    /// The port the session accepts peers on, if it listens.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The session's DHT node, if it runs ([`SessionOptions::dht`]).
    pub fn dht(&self) -> Option<crate::DhtStatus> {
        self.core.as_ref()?.dht.as_ref().map(|d| d.status())
    }

    /// Peer connections (threads) open now across all downloads.
    pub fn connections(&self) -> usize {
        self.core.as_ref().map_or(0, |c| c.connections.used())
    }

    /// Starts downloading (or seeding) a [`Torrent`] or a [`Magnet`] link
    /// under [`output_dir`](AddOptions::output_dir). Returns at once; a
    /// magnet's metadata is fetched from peers and the data already on
    /// disk is checked on the download's own thread, and their errors
    /// come back from [`Download::wait`] (and as the [`Event::Ended`]
    /// event). Fails only if the torrent is already in the session or its
    /// thread cannot start.
    pub fn add(&self, source: impl Into<Source>, options: AddOptions) -> Result<Download, Error> {
        let source = source.into();
        let core = self
            .core
            .as_ref()
            .ok_or_else(|| Error::Thread("session is shut down".into()))?;
        let info_hash = source.info_hash();
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let events_tx = EventSender(events_tx);
        let shared = Arc::new(Shared::default());
        shared.paused.store(options.paused, Ordering::Relaxed);
        let result: Arc<OnceLock<Result<Summary, Error>>> = Arc::new(OnceLock::new());
        let (peer_tx, peer_rx) = crossbeam_channel::unbounded();
        if !core.router.add(info_hash, peer_tx.clone()) {
            return Err(Error::AlreadyAdded(info_hash));
        }
        let ctx = coordinator::Context {
            core: Arc::clone(core),
            control: control_rx,
            cancelled: Arc::clone(&cancelled),
            events: events_tx.clone(),
            shared: Arc::clone(&shared),
            peer_tx,
            peer_rx,
            added: Instant::now(),
        };
        let slot = Arc::clone(&result);
        let router = core.router.clone();
        let spawned = std::thread::Builder::new()
            .name("rtc-session".into())
            .spawn(move || {
                let r = match source {
                    Source::Torrent(t) if options.metadata_only => {
                        let total_bytes = t.total_length();
                        let _ = ctx.shared.torrent.set(Arc::new(t));
                        Ok(Summary {
                            total_bytes,
                            downloaded_bytes: 0,
                            uploaded_bytes: 0,
                            elapsed: Duration::ZERO,
                            peer_sources: PeerSources::default(),
                        })
                    }
                    Source::Torrent(t) => {
                        coordinator::Coordinator::new(t, options, ctx).and_then(|c| c.run())
                    }
                    Source::Magnet(m) => from_magnet(&m, options, ctx),
                };
                router.remove(&info_hash);
                let _ = slot.set(r.clone());
                events_tx.send_last(Event::Ended(r));
                // Dropping the last sender now: a reader that sees the
                // channel end finds the result set.
                drop(events_tx);
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                core.router.remove(&info_hash);
                return Err(Error::Thread(format!("cannot start a session thread: {e}")));
            }
        };
        let entry = Arc::new(Entry {
            info_hash,
            control: control_tx,
            cancelled,
            thread: Mutex::new(Some(thread)),
            joined: Mutex::new(false),
            joined_cond: Condvar::new(),
            result: Arc::clone(&result),
        });
        if let Ok(mut list) = self.downloads.lock() {
            // Finished ones are joined here so the list stays as long as
            // the downloads that run.
            list.retain(|e| {
                if e.is_finished() {
                    let _ = e.join();
                    false
                } else {
                    true
                }
            });
            list.push(Arc::clone(&entry));
        }
        Ok(Download {
            entry,
            events: Events {
                rx: events_rx,
                result,
                ended: AtomicBool::new(false),
            },
            shared,
            started: Instant::now(),
            private: None,
            waited: false,
        })
    }

    /// Info hashes of the downloads running now.
    pub fn torrents(&self) -> Vec<InfoHash> {
        self.downloads.lock().map_or_else(
            |_| Vec::new(),
            |l| {
                l.iter()
                    .filter(|e| !e.is_finished())
                    .map(|e| e.info_hash)
                    .collect()
            },
        )
    }

    /// Cancels every download and returns once every thread the session
    /// started (downloads, peers, writers, trackers, listener, hashing
    /// pool) has ended and every file and socket is closed.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let entries: Vec<Arc<Entry>> = self
            .downloads
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        for e in &entries {
            e.send(Control::Cancel);
        }
        for e in &entries {
            let _ = e.join();
        }
        let Ok(mut threads) = self.threads.lock() else {
            return;
        };
        if let Some((stop, t)) = threads.listener.take() {
            drop(stop);
            let _ = t.join();
        }
        // The node saves its table (a small file) and ends within one poll.
        if let Some(t) = threads.dht.take() {
            if let Some(d) = self.core.as_ref().and_then(|c| c.dht.as_ref()) {
                d.shutdown();
            }
            let _ = t.join();
        }
        // Handles of downloads may outlive the session; they hold no Core
        // (their threads ended above), so this is the last reference and
        // the pool's threads end now.
        if let Some(core) = self.core.take() {
            let _ = core.writer.send(crate::storage::WriteCmd::Shutdown);
            drop(core);
            if let Some(w) = threads.writer.take() {
                let _ = w.join();
            }
            let n = threads.pool_threads;
            if !threads.pool_exits.wait_for(n, Duration::from_secs(5)) {
                log::warn!("hashing threads did not end within 5 s");
            }
        }
    }
}

impl Drop for Session {
    /// Same as [`Session::shutdown`].
    fn drop(&mut self) {
        self.stop();
    }
}

/// A download running in a [`Session`]. `Send + Sync`: progress can be
/// read from any thread.
///
/// Dropping it cancels the download and returns once its threads have
/// ended (so a [`CancelHandle`] never keeps a download running unseen);
/// [`wait`](Download::wait) for its result instead.
pub struct Download {
    entry: Arc<Entry>,
    events: Events,
    shared: Arc<Shared>,
    started: Instant,
    /// The session of [`Download::start`], shut down with the download.
    private: Option<Session>,
    waited: bool,
}

/// Cancels a download from any thread; cloneable. Holds only a weak
/// reference: it never keeps the download alive.
#[derive(Clone)]
pub struct CancelHandle(Weak<Entry>);

impl CancelHandle {
    /// Cancels the download (nothing if it has already ended).
    pub fn cancel(&self) {
        if let Some(e) = self.0.upgrade() {
            e.send(Control::Cancel);
        }
    }
}

impl Download {
    /// Downloads `torrent` in a private session with default
    /// [`SessionOptions`]: the one-torrent shortcut. The session ends with
    /// the download.
    ///
    /// ```no_run
    /// use rtc::{AddOptions, Download, Torrent};
    ///
    /// let torrent = Torrent::from_bytes(&std::fs::read("debian.torrent")?)?;
    /// let download = Download::start(torrent, AddOptions::new("downloads"))?;
    /// let summary = download.wait()?;
    /// println!("{} bytes", summary.total_bytes);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(source: impl Into<Source>, options: AddOptions) -> Result<Download, Error> {
        Self::start_with(source, options, SessionOptions::default())
    }

    /// [`Download::start`] with the private session's options.
    pub fn start_with(
        source: impl Into<Source>,
        options: AddOptions,
        session: SessionOptions,
    ) -> Result<Download, Error> {
        let session = Session::new(session)?;
        let mut d = session.add(source, options)?;
        d.private = Some(session);
        Ok(d)
    }

    /// The torrent's info hash.
    pub fn info_hash(&self) -> InfoHash {
        self.entry.info_hash
    }

    /// The torrent: from the start for a `.torrent`, once its metadata
    /// has been fetched and verified for a magnet link.
    pub fn torrent(&self) -> Option<Arc<Torrent>> {
        self.shared.torrent.get().cloned()
    }

    /// The index of each selected file ([`AddOptions::files`]), in order;
    /// `None` until the torrent is known.
    pub fn selected_files(&self) -> Option<Vec<usize>> {
        let flags = self.shared.selected.get()?;
        Some((0..flags.len()).filter(|&i| flags[i]).collect())
    }

    /// A snapshot of the download's progress.
    pub fn progress(&self) -> Progress {
        // Once ended, the time it ran: the same as its `Summary`'s.
        let elapsed = match self.entry.result.get() {
            Some(Ok(summary)) => summary.elapsed,
            _ => self.started.elapsed(),
        };
        self.shared.snapshot(elapsed)
    }

    /// Verified bytes of each file of the torrent, in the torrent's file
    /// order (a file is complete when its entry equals its length); empty
    /// until the torrent is known. Costs time linear in the piece count.
    pub fn file_progress(&self) -> Vec<u64> {
        let Some(t) = self.shared.torrent.get() else {
            return Vec::new();
        };
        let layout = t.layout();
        let mut bytes = vec![0u64; t.files().len()];
        for piece in 0..t.piece_count() {
            if self.shared.has(piece) {
                for span in layout.spans(crate::types::PieceIndex(piece)) {
                    bytes[span.file] += u64::from(span.len);
                }
            }
        }
        bytes
    }

    /// Events as they happen. The buffer is bounded: a program that never
    /// reads loses events, never memory; the last event,
    /// [`Event::Ended`], is never lost.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Closes every connection and stops announcing until
    /// [`resume`](Download::resume); verified data stays.
    pub fn pause(&self) {
        self.entry.send(Control::Pause);
    }

    /// Undoes [`pause`](Download::pause).
    pub fn resume(&self) {
        self.entry.send(Control::Resume);
    }

    /// Asks the download to stop; [`wait`](Download::wait) then returns
    /// [`Error::Cancelled`] (or success for a finished download that was
    /// seeding).
    pub fn cancel(&self) {
        self.entry.send(Control::Cancel);
    }

    /// A handle that cancels from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(Arc::downgrade(&self.entry))
    }

    /// Whether the download has ended (its result is ready).
    pub fn is_finished(&self) -> bool {
        self.entry.is_finished()
    }

    /// Blocks until the download completes, fails or is cancelled, and
    /// every thread, file and socket of it is closed.
    pub fn wait(mut self) -> Result<Summary, Error> {
        self.waited = true;
        let r = self.entry.join();
        if let Some(s) = self.private.take() {
            s.shutdown();
        }
        r
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.waited {
            self.entry.send(Control::Cancel);
            let _ = self.entry.join();
        }
        // A private session shuts down when dropped.
    }
}

/// The events of one download: `recv`, `try_recv`, `recv_timeout`, or
/// iterate (`for ev in download.events()`), which ends after
/// [`Event::Ended`].
pub struct Events {
    rx: Receiver<Event>,
    result: Arc<OnceLock<Result<Summary, Error>>>,
    /// `Ended` was handed out.
    ended: AtomicBool,
}

/// Why no event came from [`Events::try_recv`] or
/// [`Events::recv_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// None yet.
    Empty,
    /// The download ended and its last event was handed out.
    Ended,
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecvError::Empty => "no event yet",
            RecvError::Ended => "the download has ended",
        })
    }
}

impl std::error::Error for RecvError {}

impl Events {
    /// The next event, blocking; `None` once [`Event::Ended`] was handed out.
    pub fn recv(&self) -> Option<Event> {
        match self.rx.recv() {
            Ok(ev) => self.seen(ev),
            Err(_) => self.closing(),
        }
    }

    /// The next event if there is one now.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        match self.rx.try_recv() {
            Ok(ev) => self.seen(ev).ok_or(RecvError::Ended),
            Err(TryRecvError::Empty) => Err(RecvError::Empty),
            Err(TryRecvError::Disconnected) => self.closing().ok_or(RecvError::Ended),
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => self.seen(ev).ok_or(RecvError::Ended),
            Err(RecvTimeoutError::Timeout) => Err(RecvError::Empty),
            Err(RecvTimeoutError::Disconnected) => self.closing().ok_or(RecvError::Ended),
        }
    }

    /// Blocking iterator over the events, ending after [`Event::Ended`].
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.recv())
    }

    fn seen(&self, ev: Event) -> Option<Event> {
        if matches!(ev, Event::Ended(_)) {
            if self.ended.swap(true, Ordering::AcqRel) {
                return None;
            }
        } else if self.ended.load(Ordering::Acquire) {
            return None;
        }
        Some(ev)
    }

    /// The channel ended: `Ended` from the result if the buffer had no
    /// room for it.
    fn closing(&self) -> Option<Event> {
        if self.ended.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.result.get().cloned().map(Event::Ended)
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = Event;
    type IntoIter = Box<dyn Iterator<Item = Event> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
