//! The downloading half of a connection: the pieces it is assembling, the
//! state of each of their blocks, how many requests are in flight, what to
//! request next, and whether an arriving block is one we asked for. Owns
//! the piece buffers until a piece is whole, then hands it on.
//!
//! Pure state, like `upload`: no socket, no channels, no clock. `conn`
//! takes pieces from the work channel, sends the requests and cancels this
//! returns, times stalls and chokes, and passes completed pieces to the
//! session. Nothing here verifies a piece: a whole piece is only unverified
//! bytes.

use crate::geometry::Layout;
use crate::types::{Block, PieceIndex};

/// Where one block of a piece being assembled stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    /// Not asked for yet.
    Needed,
    Requested,
    Received,
    /// Requested, then the peer choked us (which drops requests): we ask
    /// again after unchoke, but still accept the block if it was already on
    /// the wire.
    Dropped,
}

/// A piece this connection is assembling.
struct Active {
    piece: PieceIndex,
    data: Vec<u8>,
    blocks: Vec<BlockState>,
    /// No block before this index waits to be requested (a scan hint).
    next: usize,
    received: usize,
}

impl Active {
    /// Blocks asked for and not received: on the wire, or may be.
    fn unanswered(&self) -> usize {
        self.blocks
            .iter()
            .filter(|&&st| matches!(st, BlockState::Requested | BlockState::Dropped))
            .count()
    }
}

/// What the download half wants next (see [`Download::next`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send this request; it already counts as in flight.
    Request(Block),
    /// Room for more requests, and every held piece is fully requested:
    /// `start` another piece if the session assigned one.
    Piece,
    /// Choked, the pipeline full, or as many pieces held as it needs.
    Wait,
}

/// What became of an arriving block (see [`Download::on_block`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Stored; its piece still lacks blocks.
    Stored,
    /// Stored, and its piece is whole: every byte of it, not yet verified.
    Complete(Vec<u8>),
    /// A repeat of a block we have, or a late one of a piece we let go:
    /// dropped, and it does not count as progress.
    Ignored,
}

/// Why an arriving block is a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// For a piece we do not hold, or a block of it we never asked for.
    Unrequested,
    /// Not one of the piece's blocks: misaligned, past its end, or of the
    /// wrong length.
    OutOfRange,
}

pub(crate) struct Download {
    /// The peer chokes us: it has dropped our requests and takes no more.
    /// Peers start choking.
    choked: bool,
    /// In the order started: requests go to the oldest piece first, so
    /// pieces complete one after another rather than all at the end.
    active: Vec<Active>,
    /// Requests kept in flight.
    depth: usize,
    /// Pieces held at once: enough to keep `depth` requests in flight.
    max_active: usize,
    /// Blocks in state `Requested`, over all held pieces.
    in_flight: usize,
    /// Blocks of pieces we let go may still be on the wire; tolerate a
    /// bounded number of them rather than calling the peer hostile.
    late_blocks_allowed: usize,
    /// Bytes of piece data stored since the last `take_downloaded`.
    downloaded: u64,
}

impl Download {
    /// Keeps `depth` requests in flight once unchoked.
    pub(crate) fn new(layout: &Layout, depth: usize) -> Download {
        Download {
            choked: true,
            active: Vec::new(),
            depth,
            max_active: layout.pieces_for_pipeline(depth),
            in_flight: 0,
            late_blocks_allowed: 0,
            downloaded: 0,
        }
    }

    pub(crate) fn is_choked(&self) -> bool {
        self.choked
    }

    /// Requests sent and neither answered nor dropped.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn holds(&self, piece: PieceIndex) -> bool {
        self.active.iter().any(|a| a.piece == piece)
    }

    pub(crate) fn holds_any(&self) -> bool {
        !self.active.is_empty()
    }

    pub(crate) fn take_downloaded(&mut self) -> u64 {
        std::mem::take(&mut self.downloaded)
    }

    /// The next thing to do to keep `depth` requests in flight. Call until
    /// it says `Wait`, or `Piece` and no piece is to be had.
    pub(crate) fn next(&mut self, layout: &Layout) -> Next {
        if self.choked || self.in_flight >= self.depth {
            return Next::Wait;
        }
        let next = self.active.iter_mut().find_map(|a| {
            while a.next < a.blocks.len()
                && matches!(
                    a.blocks[a.next],
                    BlockState::Requested | BlockState::Received
                )
            {
                a.next += 1;
            }
            (a.next < a.blocks.len()).then_some(a)
        });
        if let Some(a) = next {
            a.blocks[a.next] = BlockState::Requested;
            self.in_flight += 1;
            return Next::Request(layout.block(a.piece, a.next as u32));
        }
        if self.active.len() >= self.max_active {
            return Next::Wait;
        }
        Next::Piece
    }

    /// Starts assembling `piece`: one the session assigned us, that the
    /// peer has and that we neither have nor hold (the caller checks).
    pub(crate) fn start(&mut self, piece: PieceIndex, layout: &Layout) {
        debug_assert!(!self.holds(piece), "piece {piece:?} started twice");
        let blocks = layout.block_count(piece) as usize;
        debug_assert!(blocks > 0, "piece {piece:?} is not in the torrent");
        self.active.push(Active {
            piece,
            data: vec![0; layout.piece_len(piece) as usize],
            blocks: vec![BlockState::Needed; blocks],
            next: 0,
            received: 0,
        });
    }

    /// A `piece` message arrived. A block we asked for is copied into its
    /// piece's buffer, once; anything else is ignored or refused, and
    /// never touches a buffer.
    pub(crate) fn on_block(
        &mut self,
        piece: PieceIndex,
        offset: u32,
        data: &[u8],
        layout: &Layout,
    ) -> Result<Received, BlockError> {
        let Some(ai) = self.active.iter().position(|a| a.piece == piece) else {
            if self.late_blocks_allowed > 0 {
                self.late_blocks_allowed -= 1;
                return Ok(Received::Ignored);
            }
            return Err(BlockError::Unrequested);
        };
        let index = u32::try_from(data.len()).ok().and_then(|length| {
            layout.block_index(&Block {
                piece,
                offset,
                length,
            })
        });
        let a = &mut self.active[ai];
        let Some(state) = index.and_then(|bi| a.blocks.get_mut(bi as usize)) else {
            return Err(BlockError::OutOfRange);
        };
        match *state {
            BlockState::Received => return Ok(Received::Ignored),
            BlockState::Requested => self.in_flight -= 1,
            BlockState::Dropped => {}
            BlockState::Needed => return Err(BlockError::Unrequested),
        }
        *state = BlockState::Received;
        a.received += 1;
        self.downloaded += data.len() as u64;
        let start = offset as usize;
        a.data[start..start + data.len()].copy_from_slice(data);
        if a.received < a.blocks.len() {
            return Ok(Received::Stored);
        }
        Ok(Received::Complete(self.active.remove(ai).data))
    }

    /// The peer choked us, and with that discarded our requests (BEP 3).
    /// They are asked for again after unchoke.
    pub(crate) fn choke(&mut self) {
        self.choked = true;
        for a in &mut self.active {
            for st in a.blocks.iter_mut() {
                if *st == BlockState::Requested {
                    *st = BlockState::Dropped;
                }
            }
            a.next = 0;
        }
        self.in_flight = 0;
    }

    pub(crate) fn unchoke(&mut self) {
        self.choked = false;
    }

    /// Stops assembling `piece` (another copy of it won). The requests to
    /// cancel, or `None` if we do not hold it.
    pub(crate) fn cancel(&mut self, piece: PieceIndex, layout: &Layout) -> Option<Vec<Block>> {
        let i = self.active.iter().position(|a| a.piece == piece)?;
        let a = self.active.remove(i);
        // Dropped by a choke, but possibly already on the wire.
        self.late_blocks_allowed += a.unanswered();
        let cancels: Vec<Block> = a
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, &st)| st == BlockState::Requested)
            .map(|(bi, _)| layout.block(piece, bi as u32))
            .collect();
        self.in_flight -= cancels.len();
        Some(cancels)
    }

    /// Lets go of every piece held, in the order started, without cancels:
    /// for a peer that chokes us, which has dropped our requests already.
    pub(crate) fn abandon_all(&mut self) -> Vec<PieceIndex> {
        let active = std::mem::take(&mut self.active);
        self.late_blocks_allowed += active.iter().map(Active::unanswered).sum::<usize>();
        self.in_flight = 0;
        active.into_iter().map(|a| a.piece).collect()
    }
}
