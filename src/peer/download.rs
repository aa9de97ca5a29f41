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

/// What the download half wants next (see [`Fetcher::next`]).
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

/// What became of an arriving block (see [`Fetcher::on_block`]).
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

pub(crate) struct Fetcher {
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

impl Fetcher {
    /// Keeps `depth` requests in flight once unchoked.
    pub(crate) fn new(layout: &Layout, depth: usize) -> Fetcher {
        Fetcher {
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
    /// `buf` (empty, with room for the piece) receives its bytes.
    pub(crate) fn start(&mut self, piece: PieceIndex, layout: &Layout, buf: Vec<u8>) {
        debug_assert!(!self.holds(piece), "piece {piece:?} started twice");
        let blocks = layout.block_count(piece) as usize;
        debug_assert!(blocks > 0, "piece {piece:?} is not in the torrent");
        self.active.push(Active {
            piece,
            // Filled as blocks arrive, not zeroed first: blocks come in
            // order from nearly every peer, and each is then one append.
            data: buf,
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
        // Blocks are aligned, so the filled length is always a block
        // boundary: a block lies wholly before it (a gap being filled) or
        // at or after it (zeros stand in for any gap left behind).
        if start < a.data.len() {
            a.data[start..start + data.len()].copy_from_slice(data);
        } else {
            a.data.resize(start, 0);
            a.data.extend_from_slice(data);
        }
        if a.received < a.blocks.len() {
            return Ok(Received::Stored);
        }
        let whole = self.active.remove(ai).data;
        debug_assert_eq!(whole.len() as u64, layout.piece_len(piece) as u64);
        Ok(Received::Complete(whole))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};

    fn p(i: u32) -> PieceIndex {
        PieceIndex(i)
    }

    /// The byte at `at` in `piece`: distinct enough across a torrent that a
    /// block copied to the wrong place shows.
    fn byte(layout: &Layout, piece: PieceIndex, at: u32) -> u8 {
        ((layout.piece_offset(piece) + u64::from(at)) % 251) as u8
    }

    fn payload(layout: &Layout, b: Block) -> Vec<u8> {
        (b.offset..b.offset + b.length)
            .map(|at| byte(layout, b.piece, at))
            .collect()
    }

    fn whole(layout: &Layout, piece: PieceIndex) -> Vec<u8> {
        (0..layout.piece_len(piece))
            .map(|at| byte(layout, piece, at))
            .collect()
    }

    /// What `conn` does: request until told to wait, starting pieces from
    /// `work` when asked.
    fn fill(d: &mut Fetcher, layout: &Layout, work: &mut VecDeque<PieceIndex>) -> Vec<Block> {
        let mut sent = Vec::new();
        loop {
            match d.next(layout) {
                Next::Request(b) => sent.push(b),
                Next::Piece => match work.pop_front() {
                    Some(piece) => d.start(piece, layout, Vec::new()),
                    None => break,
                },
                Next::Wait => break,
            }
        }
        sent
    }

    fn deliver(d: &mut Fetcher, layout: &Layout, b: Block) -> Result<Received, BlockError> {
        d.on_block(b.piece, b.offset, &payload(layout, b), layout)
    }

    #[test]
    fn pipeline_never_exceeds_its_depth() {
        // 4 blocks a piece, the last piece 1.5 blocks.
        let layout = Layout::new(65_536, &[9 * 65_536 + 24_576]).unwrap();
        let depth = 6;
        let mut d = Fetcher::new(&layout, depth);
        let mut work: VecDeque<PieceIndex> = (0..layout.piece_count()).map(p).collect();
        assert_eq!(fill(&mut d, &layout, &mut work), [], "choked: nothing");
        d.unchoke();
        let mut wire: VecDeque<Block> = VecDeque::new();
        let mut requested = HashMap::new();
        let mut completed = Vec::new();
        for round in 0.. {
            for b in fill(&mut d, &layout, &mut work) {
                *requested.entry(b).or_insert(0) += 1;
                wire.push_back(b);
            }
            assert!(d.in_flight() <= depth);
            assert_eq!(d.in_flight(), wire.len());
            assert!(d.active.len() <= d.max_active);
            // Answer one or two blocks a round, so refills come in all sizes.
            for _ in 0..1 + round % 2 {
                let Some(b) = wire.pop_front() else { break };
                if let Received::Complete(data) = deliver(&mut d, &layout, b).unwrap() {
                    assert_eq!(data, whole(&layout, b.piece));
                    completed.push(b.piece);
                }
            }
            if wire.is_empty() && work.is_empty() && !d.holds_any() {
                break;
            }
        }
        assert_eq!(completed, (0..10).map(p).collect::<Vec<_>>());
        assert!(requested.values().all(|&n| n == 1));
        let blocks: u32 = (0..10).map(|i| layout.block_count(p(i))).sum();
        assert_eq!(requested.len(), blocks as usize);
        assert_eq!(d.take_downloaded(), layout.total_length());
        assert_eq!(d.take_downloaded(), 0);
    }

    #[test]
    fn every_requested_block_is_received_or_dropped_once() {
        let layout = Layout::new(65_536, &[2 * 65_536]).unwrap();
        let mut d = Fetcher::new(&layout, 5);
        let mut work: VecDeque<PieceIndex> = [p(0), p(1)].into();
        d.unchoke();
        let first = fill(&mut d, &layout, &mut work);
        assert_eq!(first.len(), 5);
        let mut stored: HashMap<Block, u32> = HashMap::new();
        let mut take = |d: &mut Fetcher, b: Block| match deliver(d, &layout, b).unwrap() {
            Received::Ignored => {}
            Received::Stored | Received::Complete(_) => *stored.entry(b).or_insert(0) += 1,
        };
        take(&mut d, first[0]);
        assert_eq!(d.in_flight(), 4);
        d.choke();
        assert_eq!(d.in_flight(), 0, "a choke drops every request");
        // One dropped request was already on the wire: still welcome, and
        // nothing goes below zero.
        take(&mut d, first[1]);
        assert_eq!(d.in_flight(), 0);
        d.unchoke();
        let again = fill(&mut d, &layout, &mut work);
        assert_eq!(&again[..3], &first[2..], "the dropped ones first");
        assert!(!again.contains(&first[1]), "received: not asked again");
        assert_eq!(d.in_flight(), 5);
        // The copy asked for before the choke arrives, then the one asked
        // for after it: stored once.
        take(&mut d, first[2]);
        take(&mut d, first[2]);
        assert_eq!(d.in_flight(), 4);
        let mut pending: Vec<Block> = again[1..].to_vec();
        while let Some(b) = pending.pop() {
            take(&mut d, b);
            pending.extend(fill(&mut d, &layout, &mut work));
        }
        assert_eq!(d.in_flight(), 0);
        assert!(!d.holds_any());
        let all: Vec<Block> = layout.blocks(p(0)).chain(layout.blocks(p(1))).collect();
        assert_eq!(stored.len(), all.len());
        assert!(all.iter().all(|b| stored[b] == 1));
    }

    #[test]
    fn stray_blocks_are_refused_and_leave_the_buffer_alone() {
        let layout = Layout::new(65_536, &[3 * 65_536]).unwrap();
        let mut d = Fetcher::new(&layout, 2);
        let mut work: VecDeque<PieceIndex> = [p(1)].into();
        d.unchoke();
        let sent = fill(&mut d, &layout, &mut work);
        assert_eq!(sent, [layout.block(p(1), 0), layout.block(p(1), 1)]);
        let junk = vec![0xee; 16_384 + 1];
        let mut stray =
            |piece, offset, len: usize| d.on_block(p(piece), offset, &junk[..len], &layout);
        // A piece we do not hold, a block not yet asked for.
        assert_eq!(stray(0, 0, 16_384), Err(BlockError::Unrequested));
        assert_eq!(stray(1, 32_768, 16_384), Err(BlockError::Unrequested));
        // Short, long, misaligned, past the end.
        assert_eq!(stray(1, 0, 16_383), Err(BlockError::OutOfRange));
        assert_eq!(stray(1, 0, 16_385), Err(BlockError::OutOfRange));
        assert_eq!(stray(1, 1, 16_384), Err(BlockError::OutOfRange));
        assert_eq!(stray(1, 65_536, 16_384), Err(BlockError::OutOfRange));
        assert_eq!(stray(1, 0, 0), Err(BlockError::OutOfRange));
        assert_eq!(d.in_flight(), 2, "refusals answer nothing");
        assert_eq!(deliver(&mut d, &layout, sent[0]), Ok(Received::Stored));
        // A repeat with other bytes is ignored, not copied.
        assert_eq!(
            d.on_block(p(1), 0, &junk[..16_384], &layout),
            Ok(Received::Ignored)
        );
        let mut rest = vec![sent[1]];
        while let Some(b) = rest.pop() {
            match deliver(&mut d, &layout, b).unwrap() {
                Received::Complete(data) => assert_eq!(data, whole(&layout, p(1))),
                _ => rest.extend(fill(&mut d, &layout, &mut work)),
            }
        }
        assert!(!d.holds_any());
        assert_eq!(d.take_downloaded(), 65_536, "refused bytes do not count");
    }

    #[test]
    fn completed_pieces_hold_every_block_at_its_offset() {
        // Pieces of 40,000 bytes: two full blocks and one of 7,232; the
        // last piece is 20,000 bytes: one full block and one of 3,616.
        let layout = Layout::new(40_000, &[100_000]).unwrap();
        let mut d = Fetcher::new(&layout, 16);
        let mut work: VecDeque<PieceIndex> = (0..3).map(p).collect();
        d.unchoke();
        let sent = fill(&mut d, &layout, &mut work);
        let lengths: Vec<u32> = sent.iter().map(|b| b.length).collect();
        assert_eq!(
            lengths,
            [16_384, 16_384, 7_232, 16_384, 16_384, 7_232, 16_384, 3_616]
        );
        // Last block first: each lands at its own offset whatever the order.
        let mut done = HashMap::new();
        for &b in sent.iter().rev() {
            if let Received::Complete(data) = deliver(&mut d, &layout, b).unwrap() {
                done.insert(b.piece, data);
            }
        }
        for i in 0..3 {
            assert_eq!(done[&p(i)].len(), layout.piece_len(p(i)) as usize);
            assert_eq!(done[&p(i)], whole(&layout, p(i)));
        }
    }

    #[test]
    fn choke_drops_requests_and_unchoke_asks_again() {
        let layout = Layout::new(65_536, &[4 * 65_536]).unwrap();
        let mut d = Fetcher::new(&layout, 6);
        let mut work: VecDeque<PieceIndex> = (0..4).map(p).collect();
        d.unchoke();
        let sent = fill(&mut d, &layout, &mut work);
        assert_eq!(sent.len(), 6);
        assert_eq!(deliver(&mut d, &layout, sent[0]), Ok(Received::Stored));
        d.choke();
        assert!(d.is_choked());
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.next(&layout), Next::Wait, "no requests while choked");
        d.unchoke();
        let again = fill(&mut d, &layout, &mut work);
        // The five dropped, in order, then one more to fill the pipeline.
        assert_eq!(&again[..5], &sent[1..]);
        assert_eq!(again.len(), 6);
        assert_eq!(again[5], layout.block(p(1), 2));
        assert_eq!(d.in_flight(), 6);
    }

    #[test]
    fn done_cancels_the_outstanding_requests_of_its_piece() {
        let layout = Layout::new(65_536, &[4 * 65_536]).unwrap();
        let mut d = Fetcher::new(&layout, 6);
        let mut work: VecDeque<PieceIndex> = (0..4).map(p).collect();
        d.unchoke();
        let sent = fill(&mut d, &layout, &mut work);
        assert_eq!(deliver(&mut d, &layout, sent[0]), Ok(Received::Stored));
        // Piece 0: block 0 in, blocks 1-3 requested. Piece 1: blocks 0-1.
        let cancels = d.cancel(p(0), &layout).unwrap();
        assert_eq!(cancels, &sent[1..4]);
        assert_eq!(d.in_flight(), 2);
        assert!(!d.holds(p(0)));
        assert_eq!(d.cancel(p(0), &layout), None, "once");
        // The piece's blocks are never asked for again.
        let more = fill(&mut d, &layout, &mut work);
        assert!(more.iter().all(|b| b.piece != p(0)));
        // Up to three cancelled requests may cross our cancels; a fourth
        // block is one nobody asked for.
        for &b in &sent[1..4] {
            assert_eq!(deliver(&mut d, &layout, b), Ok(Received::Ignored));
        }
        assert_eq!(
            deliver(&mut d, &layout, sent[1]),
            Err(BlockError::Unrequested)
        );
        // Requests a choke dropped need no cancel, but may still arrive.
        d.choke();
        assert_eq!(d.cancel(p(1), &layout), Some(vec![]));
        assert_eq!(
            deliver(&mut d, &layout, layout.block(p(1), 0)),
            Ok(Received::Ignored)
        );
    }

    #[test]
    fn abandoning_returns_every_piece_held() {
        let layout = Layout::new(65_536, &[4 * 65_536]).unwrap();
        let mut d = Fetcher::new(&layout, 6);
        let mut work: VecDeque<PieceIndex> = [p(3), p(1), p(2)].into();
        d.unchoke();
        let sent = fill(&mut d, &layout, &mut work);
        assert_eq!(sent.len(), 6);
        d.choke();
        assert_eq!(d.abandon_all(), [p(3), p(1)]);
        assert!(!d.holds_any());
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.abandon_all(), []);
        // What was on the wire is tolerated, once.
        for &b in &sent {
            assert_eq!(deliver(&mut d, &layout, b), Ok(Received::Ignored));
        }
        assert_eq!(
            deliver(&mut d, &layout, sent[0]),
            Err(BlockError::Unrequested)
        );
        d.unchoke();
        assert_eq!(d.next(&layout), Next::Piece, "ready for new work");
    }
}
