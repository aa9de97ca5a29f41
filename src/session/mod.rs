//! The public, blocking download API: [`Download::start`] spawns the session
//! thread and returns a handle to read progress, cancel, and wait for the
//! result. No async runtime: every thread is a plain OS thread.
//! The coordinator itself (piece states, peers, pipeline) is in
//! `coordinator`; this file owns only the API types and their errors.

mod addrbook;
mod admission;
mod choker;
mod coordinator;
mod listener;
mod picker;
mod pieces;
mod slots;

use crate::metainfo::Torrent;
use crate::peer::conn::Limits;
use crate::types::{EntropyError, PeerId};
use crossbeam_channel::{Receiver, Sender};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a download runs. `Options::new(dir)` gives rtc's defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Files are created under this directory (never outside it).
    pub output_dir: PathBuf,
    /// Most peer connections at once.
    pub max_peers: usize,
    /// Peers to connect to in addition to what trackers return.
    pub peers: Vec<SocketAddr>,
    /// Port to listen on for incoming peers (a free one if it is taken);
    /// the port actually bound is announced to trackers.
    pub port: u16,
    /// Accept incoming connections at all.
    pub listen: bool,
    /// What to do once every piece is verified.
    pub seed: SeedUntil,
    /// Give up when no peer has been connected for this long.
    pub no_peer_timeout: Duration,
    /// Bound on one tracker announce.
    pub announce_timeout: Duration,
    /// Per-connection timeouts and pipeline depth.
    pub limits: Limits,
    /// Our peer id; a fresh random one by default.
    pub peer_id: PeerId,
    /// Let rtc rewrite pieces that fail verification in existing files
    /// that it did not create but that have the torrent's file sizes (a
    /// finished download whose data later rotted). Off by default: such
    /// files are the user's and are never written.
    pub repair: bool,
}

impl Options {
    /// Fails only if the operating system gives no random bytes for the
    /// peer id.
    pub fn new(output_dir: impl Into<PathBuf>) -> Result<Options, EntropyError> {
        Ok(Options {
            output_dir: output_dir.into(),
            max_peers: 50,
            peers: Vec::new(),
            port: 6881,
            listen: true,
            seed: SeedUntil::Never,
            no_peer_timeout: Duration::from_secs(60),
            announce_timeout: crate::tracker::ANNOUNCE_TIMEOUT,
            limits: Limits::default(),
            peer_id: PeerId::generate()?,
            repair: false,
        })
    }
}

/// When a download that completed stops serving others.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SeedUntil {
    /// Finish as soon as the last piece is verified (the CLI's default).
    Never,
    /// Keep seeding until cancelled (Ctrl-C); cancelling then is success.
    Stopped,
    /// Until uploaded bytes reach this multiple of the torrent's size.
    Ratio(f64),
    /// For this long after completion.
    Time(Duration),
}

#[derive(Debug)]
pub enum Error {
    /// Creating, reading or writing the output files failed.
    Storage(crate::storage::Error),
    /// Every tracker failed on the first announce and no other peer source
    /// exists, or a tracker refused the torrent.
    Tracker(crate::tracker::Error),
    /// No peer could be connected for `no_peer_timeout`.
    NoPeers {
        waited: Duration,
        last_tracker_error: Option<String>,
    },
    /// [`Download::cancel`] was called.
    Cancelled,
    /// A thread could not be started or died unexpectedly.
    Thread(String),
    /// The operating system gave no random bytes.
    Entropy(EntropyError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Storage(e) => write!(f, "storage: {e}"),
            Error::Tracker(e) => write!(f, "{e}"),
            Error::NoPeers {
                waited,
                last_tracker_error,
            } => {
                write!(f, "no peers: none connected for {}s", waited.as_secs())?;
                if let Some(t) = last_tracker_error {
                    write!(f, " (last tracker error: {t})")?;
                }
                Ok(())
            }
            Error::Cancelled => f.write_str("download cancelled"),
            Error::Thread(e) => write!(f, "internal error: {e}"),
            Error::Entropy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<EntropyError> for Error {
    fn from(e: EntropyError) -> Self {
        Error::Entropy(e)
    }
}

/// A snapshot of a running download.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub total_bytes: u64,
    /// Bytes of pieces verified and written.
    pub verified_bytes: u64,
    pub pieces_done: u32,
    pub pieces_total: u32,
    pub peers: u32,
    /// Verified bytes per second over the last few seconds.
    pub rate: u64,
    /// Piece bytes sent to peers so far, and per second recently.
    pub uploaded_bytes: u64,
    pub upload_rate: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn fraction(&self) -> f64 {
        if self.total_bytes == 0 {
            1.0
        } else {
            self.verified_bytes as f64 / self.total_bytes as f64
        }
    }
}

/// Things that happen during a download, for programs that want more than
/// polling [`Download::progress`]. The channel is bounded: a program that
/// never reads it loses events, never memory.
#[derive(Clone, Debug)]
pub enum Event {
    /// Existing data was verified: this many pieces were already complete.
    Checked {
        pieces_ok: u32,
        pieces_total: u32,
    },
    PeerConnected(SocketAddr),
    PeerDropped {
        addr: SocketAddr,
        reason: String,
    },
    Listening(u16),
    PieceDone {
        piece: u32,
        progress: Progress,
    },
    TrackerError(String),
    Finished,
}

/// The outcome of a download that completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub total_bytes: u64,
    /// Bytes fetched from peers in this run (without wasted duplicates).
    pub downloaded_bytes: u64,
    /// Piece bytes served to peers.
    pub uploaded_bytes: u64,
    pub elapsed: Duration,
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
}

impl Shared {
    fn snapshot(&self, total_bytes: u64, pieces_total: u32, elapsed: Duration) -> Progress {
        Progress {
            total_bytes,
            verified_bytes: self.verified_bytes.load(Ordering::Relaxed),
            pieces_done: self.pieces_done.load(Ordering::Relaxed),
            pieces_total,
            peers: self.peers.load(Ordering::Relaxed),
            rate: self.rate.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded.load(Ordering::Relaxed),
            upload_rate: self.upload_rate.load(Ordering::Relaxed),
            elapsed,
        }
    }
}

/// A running download. `Send + Sync`: progress can be read from any thread.
pub struct Download {
    thread: std::thread::JoinHandle<Result<Summary, Error>>,
    cancel: Sender<()>,
    events: Receiver<Event>,
    shared: Arc<Shared>,
    total_bytes: u64,
    pieces_total: u32,
    started: Instant,
}

/// Cancels a download from any thread; cloneable.
#[derive(Clone)]
pub struct CancelHandle(Sender<()>);

impl CancelHandle {
    pub fn cancel(&self) {
        let _ = self.0.try_send(());
    }
}

impl Download {
    /// Opens (creates and preallocates) the output files and starts the
    /// session thread. Storage errors are returned here, before any network
    /// activity.
    pub fn start(torrent: Torrent, options: Options) -> Result<Download, Error> {
        let (cancel_tx, cancel_rx) = crossbeam_channel::bounded(1);
        let (events_tx, events_rx) = crossbeam_channel::bounded(1024);
        let shared = Arc::new(Shared::default());
        let total_bytes = torrent.total_length();
        let pieces_total = torrent.piece_count();
        let session = coordinator::Coordinator::new(
            torrent,
            options,
            cancel_rx,
            events_tx,
            Arc::clone(&shared),
        )?;
        let thread = std::thread::Builder::new()
            .name("rtc-session".into())
            .spawn(move || session.run())
            .map_err(|e| Error::Thread(e.to_string()))?;
        Ok(Download {
            thread,
            cancel: cancel_tx,
            events: events_rx,
            shared,
            total_bytes,
            pieces_total,
            started: Instant::now(),
        })
    }

    pub fn progress(&self) -> Progress {
        self.shared
            .snapshot(self.total_bytes, self.pieces_total, self.started.elapsed())
    }

    /// Events as they happen (bounded; see [`Event`]).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    pub fn cancel(&self) {
        let _ = self.cancel.try_send(());
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.cancel.clone())
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Blocks until the download completes, fails or is cancelled.
    pub fn wait(self) -> Result<Summary, Error> {
        self.thread
            .join()
            .map_err(|_| Error::Thread("session thread panicked".into()))?
    }
}
