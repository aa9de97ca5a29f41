//! Peers: the wire codec (`message`, pure) and the per-peer connection
//! thread (`conn`, blocking sockets). This file holds the vocabulary the
//! session and a connection thread use to talk: [`Command`] in, [`Event`]
//! and [`CompletedPiece`] out.

pub mod accept;
pub mod conn;
pub mod message;
pub mod mse;
pub mod upload;

use crate::types::{PeerId, PieceIndex};
use std::net::{SocketAddr, TcpStream};

/// A connection a peer opened to us, with its opening (plain or MSE
/// handshake) already read and checked by the listener.
#[derive(Debug)]
pub struct Incoming {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub accepted: accept::Accepted,
}

/// Session-unique number of one connection (a reconnect gets a new one).
pub type ConnId = u64;

/// Commands from the session to one connection thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// This piece is verified and on disk: stop fetching it (endgame
    /// duplicates are cancelled) and never take it from the queue again.
    Have(PieceIndex),
    /// The choker picked this peer: let it download from us.
    Unchoke,
    /// The choker dropped this peer: stop serving it.
    Choke,
    /// Close the connection and end the thread.
    Shutdown,
}

/// Events from a connection thread to the session. Every `Took` is answered
/// by exactly one `CompletedPiece`, `Abandoned`, or entry in
/// `Exited::abandoned`, so the session always knows who holds what.
#[derive(Debug)]
pub enum Event {
    /// From the listener: a peer connected to us and sent a good handshake.
    Incoming(Box<Incoming>),
    Connected {
        id: ConnId,
        peer_id: PeerId,
    },
    Took {
        id: ConnId,
        piece: PieceIndex,
    },
    /// About once a second: bytes of piece data moved since the last
    /// report, for the choker and the tracker's counters.
    Stats {
        id: ConnId,
        downloaded: u64,
        uploaded: u64,
        peer_interested: bool,
        peer_is_seed: bool,
    },
    Abandoned {
        id: ConnId,
        piece: PieceIndex,
    },
    Exited {
        id: ConnId,
        addr: SocketAddr,
        /// `None` for a clean shutdown.
        error: Option<conn::Error>,
        /// Whether the peer ever completed the handshake.
        connected: bool,
        abandoned: Vec<PieceIndex>,
    },
}

/// All blocks of one piece, assembled but not yet verified.
#[derive(Debug)]
pub struct CompletedPiece {
    pub from: ConnId,
    pub piece: PieceIndex,
    pub data: Vec<u8>,
}
