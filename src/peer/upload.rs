//! The serving half of a connection: which of the peer's requests we will
//! answer and in what order. Owns the choke state towards the peer, its
//! request queue and the bytes sent. Reads verified pieces through
//! `Storage` (positional reads), never anything unverified: a request for a
//! piece that is not in our bitfield ends the connection.

use super::message;
use crate::geometry::Layout;
use crate::peer::message::Bitfield;
use crate::storage::{self, Storage};
use crate::types::Block;
use std::collections::{HashSet, VecDeque};

/// Requests one peer may have queued with us; more is a flood.
pub const MAX_QUEUED: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the torrent, or longer than `geometry::BLOCK_LEN`.
    OutOfRange,
    /// For a piece we do not have (and never advertised).
    NotHave,
    /// More than `MAX_QUEUED` requests outstanding.
    Flood,
}

pub struct Upload {
    /// We start choking every peer; the session's choker decides.
    pub am_choking: bool,
    pub peer_interested: bool,
    /// Requests in arrival order. A cancelled request stays here until it
    /// comes up and is skipped: `queued` says what is live, so a cancel is
    /// O(1) however long the queue (a cancel flood must not cost O(queue)
    /// each).
    queue: VecDeque<Block>,
    queued: HashSet<Block>,
    /// Bytes of piece data sent since the last `take_uploaded`.
    uploaded: u64,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            am_choking: true,
            peer_interested: false,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            uploaded: 0,
        }
    }
}

impl Upload {
    /// Queues a request, or says why the peer must be dropped. Requests from
    /// a peer we choke are ignored: they may have crossed our choke.
    pub fn on_request(
        &mut self,
        b: Block,
        layout: &Layout,
        ours: &Bitfield,
    ) -> Result<(), Refusal> {
        if !layout.is_valid_block(&b) {
            return Err(Refusal::OutOfRange);
        }
        if !ours.has(b.piece) {
            return Err(Refusal::NotHave);
        }
        if self.am_choking {
            return Ok(());
        }
        if self.queued.contains(&b) {
            return Ok(()); // already queued: once is enough
        }
        if self.queued.len() >= MAX_QUEUED {
            return Err(Refusal::Flood);
        }
        self.queued.insert(b);
        self.queue.push_back(b);
        if self.queue.len() > 2 * MAX_QUEUED {
            // Mostly cancelled entries: keep each live request once, in order.
            let mut live = self.queued.clone();
            self.queue.retain(|q| live.remove(q));
        }
        Ok(())
    }

    pub fn on_cancel(&mut self, b: Block) {
        self.queued.remove(&b);
    }

    /// Choking drops every queued request (BEP 3).
    pub fn choke(&mut self) {
        self.am_choking = true;
        self.queue.clear();
        self.queued.clear();
    }

    pub fn has_work(&self) -> bool {
        !self.am_choking && !self.queued.is_empty()
    }

    pub fn take_uploaded(&mut self) -> u64 {
        std::mem::take(&mut self.uploaded)
    }

    /// Appends `piece` messages for queued requests to `out`, reading the
    /// data straight into it, until about `budget` bytes are queued.
    pub fn serve(
        &mut self,
        storage: &Storage,
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<(), storage::Error> {
        let mut sent = 0;
        while sent < budget {
            let Some(b) = self.queue.pop_front() else {
                break;
            };
            if !self.queued.remove(&b) {
                continue; // cancelled
            }
            let start = out.len();
            message::encode(
                &message::Message::Piece {
                    piece: b.piece,
                    offset: b.offset,
                    data: &[],
                },
                out,
            );
            // Fix the length prefix for the data we append below.
            let len = 9 + b.length;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            let data_at = out.len();
            out.resize(data_at + b.length as usize, 0);
            storage.read_block(b, &mut out[data_at..])?;
            sent += b.length as usize;
            self.uploaded += b.length as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BLOCK_LEN;
    use crate::types::PieceIndex;

    fn block(piece: u32, offset: u32, length: u32) -> Block {
        Block {
            piece: PieceIndex(piece),
            offset,
            length,
        }
    }

    #[test]
    fn requests_are_checked_before_queueing() {
        let layout = Layout::new(32768, &[40000]).unwrap();
        let mut ours = Bitfield::new(2);
        ours.set(PieceIndex(0));
        let mut up = Upload::default();
        // Choked: valid requests are ignored, invalid ones still refused.
        assert_eq!(up.on_request(block(0, 0, 16384), &layout, &ours), Ok(()));
        assert!(!up.has_work());
        assert_eq!(
            up.on_request(block(1, 0, 7232), &layout, &ours),
            Err(Refusal::NotHave)
        );
        up.am_choking = false;
        assert_eq!(
            up.on_request(block(0, 0, 32768), &layout, &ours),
            Err(Refusal::OutOfRange),
            "over 16 KiB"
        );
        assert_eq!(
            up.on_request(block(0, 100, BLOCK_LEN + 1), &layout, &ours),
            Err(Refusal::OutOfRange),
            "one byte over the limit"
        );
        assert_eq!(
            up.on_request(block(0, 30000, 16384), &layout, &ours),
            Err(Refusal::OutOfRange),
            "past the piece end"
        );
        assert_eq!(
            up.on_request(block(5, 0, 16384), &layout, &ours),
            Err(Refusal::OutOfRange)
        );
        assert_eq!(
            up.on_request(block(0, 16384, 16384), &layout, &ours),
            Ok(())
        );
        assert!(up.has_work());
        up.on_cancel(block(0, 16384, 16384));
        assert!(!up.has_work());
        // Cancels cost O(1) and the queue stays bounded however many
        // request/cancel rounds a peer plays.
        for _ in 0..10 * MAX_QUEUED {
            up.on_request(block(0, 0, 16384), &layout, &ours).unwrap();
            up.on_cancel(block(0, 0, 16384));
        }
        assert!(!up.has_work());
        assert!(up.queue.len() <= 2 * MAX_QUEUED + 1);
        // A repeated request is queued once.
        up.on_request(block(0, 0, 16384), &layout, &ours).unwrap();
        up.on_request(block(0, 0, 16384), &layout, &ours).unwrap();
        assert_eq!(up.queued.len(), 1);
        up.on_request(block(0, 0, 100), &layout, &ours).unwrap();
        up.choke();
        assert!(!up.has_work());
    }
}
