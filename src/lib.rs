//! rtc: a BitTorrent client library with no async runtime.
//!
//! A blocking, thread-safe API: a [`Session`] holds what torrents share
//! (one listening port, one hashing pool, one budget of peer connections
//! and of open files), [`Session::add`] starts a download and returns a
//! [`Download`] handle (progress, [`Events`], pause, resume, cancel,
//! wait). [`Download::start`] is the one-torrent shortcut. Every thread
//! is a plain OS thread (one per peer connection); when `wait`,
//! [`Session::shutdown`] or a drop returns, every thread it owned has
//! ended and every file and socket is closed.
//!
//! ```no_run
//! use rtc::{AddOptions, Download, Event, Torrent};
//!
//! let torrent = Torrent::from_bytes(&std::fs::read("debian.torrent")?)?;
//! let download = Download::start(torrent, AddOptions::new("downloads"))?;
//! for event in download.events() {
//!     match event {
//!         Event::PieceDone { progress, .. } => {
//!             println!("{:.1}%", progress.fraction() * 100.0)
//!         }
//!         Event::Ended(result) => println!("ended: {result:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Module map (all private to the crate; DESIGN.md has the full table):
//! protocol modules (`bencode`, `metainfo`, `magnet`, `peer::message`,
//! `tracker::http`, `tracker::udp`, `peer::mse`) are pure: they turn bytes
//! into values and back. Sockets and files live only in `peer::conn`,
//! `peer::accept`, `tracker` and `storage`; `session` wires the threads.
#![forbid(unsafe_code)]
// The fuzzing feature re-exports internals that are not documented as API.
#![cfg_attr(not(feature = "fuzzing"), deny(missing_docs))]
// Without the CLI, what only the `rtc` command uses (`create`, bencode's
// encoder, parts of `verify`) is unused; the default build still checks
// for dead code.
#![cfg_attr(not(feature = "cli"), allow(dead_code))]

pub(crate) mod bencode;
pub(crate) mod buffers;
pub(crate) mod create;
pub(crate) mod dht;
pub(crate) mod geometry;
pub(crate) mod hash;
pub(crate) mod magnet;
pub(crate) mod metainfo;
pub(crate) mod peer;
pub(crate) mod select;
pub(crate) mod session;
pub(crate) mod storage;
pub(crate) mod text;
pub(crate) mod throttle;
pub(crate) mod tracker;
pub(crate) mod types;
pub(crate) mod verify;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;

/// The pure decoders the fuzz targets (`tests/fuzz`, `scripts/fuzz`) feed
/// arbitrary bytes: only with the `fuzzing` feature, and no part of the
/// API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing {
    pub use crate::bencode::{decode, encode};
    pub use crate::peer::message::{decode_frame, Bitfield, Handshake, Message, MAX_FRAME};
    pub use crate::tracker::http::parse_response;

    /// Feeds `data` to the BEP 10/9/11 payload decoders (extension
    /// handshake, metadata message, peer exchange) and checks that what
    /// decodes re-encodes consistently; panics on a violation.
    pub fn extension_payloads(data: &[u8]) {
        crate::peer::extension::fuzz(data)
    }

    /// Feeds `data` to the KRPC (DHT) decoder and checks that what decodes
    /// re-encodes to the same message; panics on a violation.
    pub fn krpc(data: &[u8]) {
        crate::dht::krpc::fuzz(data)
    }
}

pub use bencode::Error as BencodeError;
pub use dht::{DhtOptions, DhtStatus, DEFAULT_BOOTSTRAP};
pub use magnet::{Magnet, MagnetError};
pub use metainfo::{FileEntry, MetainfoError, Torrent};
pub use peer::conn::Limits;
pub use select::{FileSelection, SelectError};
pub use session::{
    AddOptions, CancelHandle, Download, Error, Event, Events, PeerSources, Progress, RecvError,
    SeedUntil, Session, SessionOptions, Source, Summary,
};
pub use storage::Error as StorageError;
pub use tracker::Error as TrackerError;
pub use types::{EntropyError, InfoHash, PeerId};

// README's library example is compiled with the doctests (`no_run`), so
// it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
