//! rtc: a BitTorrent client library with no async runtime.
//!
//! Owns the public API (re-exports) and the module map. Protocol modules
//! (`bencode`, `metainfo`, `peer::message`, `peer::mse`, `tracker::http`,
//! `tracker::udp`) are pure: they turn bytes into values and back. Sockets
//! live only in `peer::conn`, `peer::accept`, `session::listener` and
//! `tracker`, files only in `storage`; `session` wires the threads.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod create;
pub mod geometry;
pub mod metainfo;
pub mod types;

pub use metainfo::{MetainfoError, Torrent};
pub use types::{Block, InfoHash, PeerId, PieceIndex};
pub mod peer;
pub mod session;
pub mod storage;
pub mod text;
pub mod tracker;
pub mod verify;

pub use session::{Download, Options};
