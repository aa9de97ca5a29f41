//! rtc: a BitTorrent client library with no async runtime.
//!
//! Owns the public API (re-exports) and the module map. Protocol modules
//! (`bencode`, `metainfo`, `peer::message`, `tracker::http`) are pure: they
//! turn bytes into values and back. Sockets and files live only in
//! `peer::conn`, `tracker`, and `storage`; `session` wires the threads.
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
