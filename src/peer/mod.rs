//! Peers: the wire codec (`message`, pure), the two halves of a
//! connection as pure state (`download`: what to request and assembling
//! pieces; `upload`: serving requests), the MSE maths (`mse`, pure), and
//! the threads that own sockets (`conn`, one per connection; `accept`,
//! reading an incoming opening). This file holds the vocabulary the
//! session and a connection thread use to talk: [`Command`] in, [`Event`]
//! and [`CompletedPiece`] out.

pub mod accept;
pub mod conn;
pub(crate) mod download;
pub(crate) mod extension;
pub mod message;
pub(crate) mod meta_conn;
pub mod mse;
pub mod upload;

use crate::types::{PeerId, PieceIndex};
use message::Bitfield;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// These pieces are verified and on disk: tell the peer, never fetch
    /// them. Sent in one batch per session tick (repeats are ignored), so
    /// a fast download does not cost one message and one write per piece
    /// per peer.
    Have(Arc<[PieceIndex]>),
    /// This piece, which this connection is fetching a copy of (endgame),
    /// is verified and on disk: cancel the copy (sent at once).
    Done(PieceIndex),
    /// The choker picked this peer: let it download from us.
    Unchoke,
    /// The choker dropped this peer: stop serving it.
    Choke,
    /// Our view of the swarm for peer exchange (BEP 11), sent to the
    /// peer if it speaks `ut_pex` (the session sends it once a minute).
    Pex(Arc<extension::Pex>),
    /// Close the connection and end the thread.
    Shutdown,
}

/// Events from a connection thread to the session. Every piece the session
/// put on the connection's work channel is answered by exactly one
/// `CompletedPiece` or `Abandoned`, or the connection's `Exited`; the
/// session keeps each connection's assignments as a set, so it always knows
/// who holds what.
#[derive(Debug)]
pub enum Event {
    /// From the listener: a peer connected to us and sent a good handshake.
    Incoming(Box<Incoming>),
    Connected {
        id: ConnId,
        #[allow(dead_code)] // for peer lists (PEX, events) to come
        peer_id: PeerId,
    },
    /// The peer's first bitfield (later ones arrive as `Have` for the
    /// pieces they add).
    Bitfield { id: ConnId, bits: Bitfield },
    /// Addresses the peer told us of by peer exchange (BEP 11), at most
    /// `extension::MAX_PEX_PEERS` a message and one message a minute.
    Pex { id: ConnId, added: Vec<SocketAddr> },
    /// The peer has a piece it did not have before (repeats are not sent).
    Have { id: ConnId, piece: PieceIndex },
    /// The peer choked (`true`) or unchoked (`false`) us.
    Choked { id: ConnId, choked: bool },
    /// About once a second, and at once on an interest change: bytes of
    /// piece data moved since the last report, interest both ways, and
    /// requests received, for the choker, slots and tracker counters.
    Stats {
        id: ConnId,
        downloaded: u64,
        uploaded: u64,
        peer_interested: bool,
        am_interested: bool,
        requests: u32,
    },
    /// A piece from the work channel that this connection will not fetch:
    /// we have it already, another copy won (endgame), the peer lacks it,
    /// or the peer choked us for too long.
    Abandoned { id: ConnId, piece: PieceIndex },
    Exited {
        id: ConnId,
        addr: SocketAddr,
        /// `None` for a clean shutdown.
        error: Option<conn::Error>,
        /// Whether the peer ever completed the handshake.
        connected: bool,
    },
}

/// All blocks of one piece, assembled but not yet verified.
#[derive(Debug)]
pub struct CompletedPiece {
    pub from: ConnId,
    pub piece: PieceIndex,
    pub data: Vec<u8>,
}

/// A second handle on a connection's socket, so the session can close it
/// from outside: a thread blocked in `read` or `write` (a peer that stopped
/// reading can hold a write for the whole write timeout) returns at once.
/// The connection thread attaches its socket as soon as it has one. A
/// Mutex per connection: two users, each holding it for one call
/// (DESIGN.md).
#[derive(Clone, Default)]
pub(crate) struct Closer(Arc<Mutex<CloserState>>);

#[derive(Default)]
struct CloserState {
    stream: Option<TcpStream>,
    closed: bool,
}

impl Closer {
    /// Keeps a handle on `stream`; false if `close` was already called
    /// (the caller should then stop).
    pub(crate) fn attach(&self, stream: &TcpStream) -> bool {
        let Ok(mut s) = self.0.lock() else {
            return false;
        };
        if s.closed {
            let _ = stream.shutdown(Shutdown::Both);
            return false;
        }
        s.stream = stream.try_clone().ok();
        true
    }

    /// Shuts the socket down (now, or as soon as it is attached).
    pub(crate) fn close(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.closed = true;
            if let Some(stream) = s.stream.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}
