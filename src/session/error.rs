//! The error a download ends with ([`Error`]), its `Display` (one line,
//! lowercase, with context) and `source()`. Which exit code each maps to
//! is the CLI's business (`cli`), not this file's.

use crate::storage;
use crate::tracker;
use crate::types::InfoHash;
use std::fmt;
use std::io;
use std::time::Duration;

/// Why a download (or adding one to a session) failed.
///
/// `Clone`, so the result can be both returned by
/// [`Download::wait`](crate::Download::wait) and carried by the terminal
/// [`Event::Ended`](crate::Event::Ended).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Creating, reading or writing the output files failed, or existing
    /// files that are not rtc's would have been overwritten.
    Storage(storage::Error),
    /// Every tracker failed on the first announce and no other peer source
    /// exists, or a tracker refused the torrent.
    Tracker(tracker::Error),
    /// No peer could be connected for
    /// [`no_peer_timeout`](crate::AddOptions::no_peer_timeout).
    NoPeers {
        /// How long nobody was connected.
        waited: Duration,
        /// The last tracker failure seen, if any, as a line of text.
        last_tracker_error: Option<String>,
    },
    /// The download was cancelled ([`Download::cancel`](crate::Download::cancel),
    /// a dropped handle, or the session shutting down) before it completed.
    Cancelled,
    /// The session could not listen on its port.
    Listen {
        /// The port asked for.
        port: u16,
        /// Why binding failed.
        source: io::Error,
    },
    /// A torrent with this info hash is already in the session.
    AlreadyAdded(InfoHash),
    /// A magnet's metadata, verified against its info hash, is not a
    /// valid torrent (its creator made a bad one).
    Metadata(crate::metainfo::MetainfoError),
    /// The file selection ([`AddOptions::files`](crate::AddOptions::files))
    /// does not fit the torrent: an index past its last file, or nothing
    /// selected.
    Selection(crate::select::SelectError),
    /// The operating system refused entropy (for peer ids and keys).
    Entropy(crate::types::EntropyError),
    /// A thread could not be started or died unexpectedly (a bug, or the
    /// process is out of threads).
    Thread(String),
}

impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::Storage(e) => Error::Storage(e.clone()),
            Error::Tracker(e) => Error::Tracker(e.clone()),
            Error::NoPeers {
                waited,
                last_tracker_error,
            } => Error::NoPeers {
                waited: *waited,
                last_tracker_error: last_tracker_error.clone(),
            },
            Error::Cancelled => Error::Cancelled,
            Error::Listen { port, source } => Error::Listen {
                port: *port,
                source: clone_io(source),
            },
            Error::AlreadyAdded(h) => Error::AlreadyAdded(*h),
            Error::Metadata(e) => Error::Metadata(e.clone()),
            Error::Selection(e) => Error::Selection(e.clone()),
            Error::Entropy(e) => Error::Entropy(*e),
            Error::Thread(e) => Error::Thread(e.clone()),
        }
    }
}

/// A copy of an I/O error that keeps what matters: the OS error code when
/// there is one (so `raw_os_error` and the message survive), else its kind
/// and message.
pub(crate) fn clone_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl From<crate::types::EntropyError> for Error {
    fn from(e: crate::types::EntropyError) -> Self {
        Error::Entropy(e)
    }
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
            Error::Listen { port, source } => write!(f, "cannot listen on port {port}: {source}"),
            Error::AlreadyAdded(h) => write!(f, "torrent {} is already in this session", h.hex()),
            Error::Metadata(e) => write!(f, "the torrent's metadata from peers is invalid: {e}"),
            Error::Selection(e) => write!(f, "{e}"),
            Error::Entropy(e) => write!(f, "{e}"),
            Error::Thread(e) => write!(f, "internal error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Storage(e) => Some(e),
            Error::Tracker(e) => Some(e),
            Error::Listen { source, .. } => Some(source),
            Error::Entropy(e) => Some(e),
            Error::Metadata(e) => Some(e),
            Error::Selection(e) => Some(e),
            _ => None,
        }
    }
}
