//! Fetching a torrent's info dictionary from several peers (BEP 9, for
//! magnet links), as pure state: which 16 KiB piece to ask which peer for,
//! assembling the pieces, checking the whole against the info hash, and
//! telling the caller which peers to drop or ban. Trusts no peer: the only
//! bytes it ever returns are ones whose SHA-1 is the info hash.
//!
//! Owns no sockets, channels or clocks (the caller passes `Instant`s) and
//! no wire format (`peer::extension` decodes the messages). Bounded: one
//! buffer of the adopted size (at most `MAX_METADATA_SIZE`), per-piece
//! bookkeeping, and at most `MAX_PEERS` peers with a few bits per piece.
//!
//! How the caller drives it: for each peer whose extension handshake
//! offers `ut_metadata` with a `metadata_size`, [`MetadataFetch::peer_size`];
//! then, whenever something changed (a handshake, data, a reject, a tick),
//! [`MetadataFetch::next_request`] for each peer until it returns `None`,
//! sending each piece as a `ut_metadata` request. Each data or reject
//! message goes to [`MetadataFetch::on_data`] / [`MetadataFetch::on_reject`],
//! and a closed connection to [`MetadataFetch::peer_gone`]. A verdict means
//! close that connection (and ban its address when `Fault::ban` says so);
//! the peer is already forgotten here. A verdict may name a peer that has
//! gone since: ban its address if the caller still knows it.
//!
//! Finding a liar: sizes are claims until the info hash confirms one. The
//! first plausible size is adopted and fetched; peers claiming another size
//! are kept but not asked, and are banned once the adopted size is
//! confirmed (or it is dropped for theirs if every peer claiming it turns
//! out to lie or leaves). When the assembled bytes fail the hash check and
//! one peer supplied all of them, that peer is banned. When several did,
//! the hash of each piece and its supplier are remembered, the pieces are
//! discarded, and each next attempt takes every piece from a single peer,
//! peers in turn: an attempt that fails convicts its one supplier, and the
//! first that succeeds convicts every peer whose earlier piece differs from
//! the verified bytes. No peer is banned for another's lie. (A peer that
//! rejected a piece cannot supply an attempt alone; with no other peer,
//! attempts mix again and a success still convicts from the remembered
//! hashes.) The check is one SHA-1 over the assembled bytes, two after a
//! failed attempt: at most about 60 MiB hashed on the caller's thread.

use crate::peer::extension::{
    metadata_piece_count, metadata_piece_len, MAX_METADATA_SIZE, METADATA_PIECE_LEN,
};
use crate::peer::ConnId;
use crate::types::InfoHash;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Requests one peer may have outstanding. Measured on a 1.3 MB info
/// dict (80 pieces) from one libtorrent seeder (scripts/magnet-bench):
/// with 2, 1.2-3.5 s (a round trip per pair); with 16, about 1 s, as
/// libtorrent queues what is beyond its send buffer and serves it on a
/// one-second tick; with 4, 0.07-0.11 s, as fast as a libtorrent leecher.
pub(crate) const MAX_OUTSTANDING: u32 = 4;
/// A request unanswered this long is offered to other peers. Short: a
/// metadata piece is one 16 KiB message (answered within milliseconds
/// on loopback and within a second or two across the internet), and a
/// small info dict is a single piece that peers which take requests and
/// never answer would otherwise hold for this long each.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Rejects a peer may send before sending any data; at this many it is
/// banned. BEP 9 allows rejects, but a peer that rejects everything while
/// claiming the metadata only takes up a slot.
pub(crate) const MAX_REJECTS: u32 = 8;
/// Peers tracked; more are not asked (and cost nothing).
pub(crate) const MAX_PEERS: usize = 200;

/// What a peer did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Claimed a metadata size of 0 or above `MAX_METADATA_SIZE`.
    ImplausibleSize { size: u32 },
    /// Claimed one size, then another.
    ChangedSize { was: u32, now: u32 },
    /// Claimed a size other than the one the info hash confirmed.
    WrongSize { claimed: u32, actual: u32 },
    /// Sent data whose `total_size` is not the size it claimed.
    DataSize { claimed: u32, sent: u32 },
    /// Sent a piece past the end, or of the wrong length.
    BadPiece { piece: u32, len: usize },
    /// Supplied bytes that differ from the ones the info hash confirms.
    BadData,
    /// Rejected `MAX_REJECTS` requests without ever sending data.
    Rejects { count: u32 },
    /// Rejected every piece: it has nothing for us, but broke no rule.
    NothingToGive,
}

impl Fault {
    /// Whether the address should be banned, not only disconnected.
    pub(crate) fn ban(self) -> bool {
        !matches!(self, Fault::NothingToGive)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::ImplausibleSize { size } => write!(
                f,
                "metadata: claimed size {size} is not in 1..={MAX_METADATA_SIZE}"
            ),
            Fault::ChangedSize { was, now } => {
                write!(f, "metadata: claimed size {was}, then {now}")
            }
            Fault::WrongSize { claimed, actual } => write!(
                f,
                "metadata: claimed size {claimed}, the info hash confirms {actual}"
            ),
            Fault::DataSize { claimed, sent } => write!(
                f,
                "metadata: claimed size {claimed}, sent data for size {sent}"
            ),
            Fault::BadPiece { piece, len } => {
                write!(f, "metadata: piece {piece} with {len} bytes does not fit")
            }
            Fault::BadData => f.write_str("metadata: sent bytes that fail the info hash"),
            Fault::Rejects { count } => {
                write!(f, "metadata: rejected {count} requests and sent nothing")
            }
            Fault::NothingToGive => f.write_str("metadata: rejected every piece"),
        }
    }
}

/// A peer to disconnect, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) peer: ConnId,
    pub(crate) fault: Fault,
}

/// What became of a data message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Stored, or ignored (unasked, a duplicate, from an earlier attempt).
    Progress,
    /// Peers to disconnect; the fetch goes on with the others.
    Verdicts(Vec<Verdict>),
    /// The info dictionary, its SHA-1 equal to the info hash, and the
    /// peers this proved to have lied.
    Complete {
        info: Vec<u8>,
        verdicts: Vec<Verdict>,
    },
}

/// A set of piece indices, one bit each.
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u32) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }

    fn get(&self, i: u32) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }

    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Missing,
    Requested { peer: ConnId, at: Instant },
    Have { from: ConnId },
}

#[derive(Debug)]
struct Peer {
    /// The size it claimed.
    size: u32,
    /// Arrival order (earlier peers are adopted from and go solo first).
    arrived: u64,
    /// Pieces in `Requested { peer: this }`.
    outstanding: u32,
    /// Pieces asked of it in the current attempt (data for others is
    /// ignored). Empty while its size is not the adopted one.
    asked: Bits,
    /// Pieces it rejected (kept across attempts).
    rejected: Bits,
    /// A request to it timed out and it has not answered anything since:
    /// it is asked for nothing while others can be.
    stalled: bool,
    rejects: u32,
    /// Data messages it sent that were stored.
    data: u32,
    /// Already had its turn as the single supplier of an attempt.
    solo_tried: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every peer with the adopted size is asked.
    Mixed,
    /// After a failed check with several suppliers: each attempt takes all
    /// its pieces from `current` alone.
    Solo { current: Option<ConnId> },
}

/// The state of fetching one info dictionary.
pub(crate) struct MetadataFetch {
    info_hash: InfoHash,
    peers: HashMap<ConnId, Peer>,
    arrivals: u64,
    /// The size being fetched; after completion, the verified size.
    size: Option<u32>,
    slots: Vec<Slot>,
    have: u32,
    /// The adopted size once data arrives; empty before.
    buf: Vec<u8>,
    /// No request was made before this (a lower bound), so expiry scans
    /// only when one may be due.
    earliest: Option<Instant>,
    mode: Mode,
    /// Supplier and SHA-1 of each piece of the failed mixed attempt, to
    /// convict liars once the true bytes are known (`None` once its
    /// supplier is convicted anyway).
    suspects: Vec<Option<(ConnId, [u8; 20])>>,
    done: bool,
}

fn sha1(bytes: &[u8]) -> [u8; 20] {
    crate::hash::sha1(bytes)
}

/// Piece `i` of the assembled bytes.
fn piece_of(buf: &[u8], i: usize) -> &[u8] {
    let start = i * METADATA_PIECE_LEN as usize;
    &buf[start..(start + METADATA_PIECE_LEN as usize).min(buf.len())]
}

impl MetadataFetch {
    pub(crate) fn new(info_hash: InfoHash) -> MetadataFetch {
        MetadataFetch {
            info_hash,
            peers: HashMap::new(),
            arrivals: 0,
            size: None,
            slots: Vec::new(),
            have: 0,
            buf: Vec::new(),
            earliest: None,
            mode: Mode::Mixed,
            suspects: Vec::new(),
            done: false,
        }
    }

    /// The size being fetched (after completion: the verified size).
    pub(crate) fn size(&self) -> Option<u32> {
        self.size
    }

    /// Pieces in hand and pieces in all, for progress reports.
    pub(crate) fn progress(&self) -> (u32, u32) {
        (self.have, self.slots.len() as u32)
    }

    #[cfg(test)]
    pub(crate) fn is_complete(&self) -> bool {
        self.done
    }

    /// A peer's claimed metadata size (its extension handshake's
    /// `metadata_size`; call again if a later handshake repeats it). The
    /// first plausible size is adopted. `Some` when the peer is to be
    /// dropped: an implausible size, or a size other than the one it
    /// claimed before, or (once complete) than the verified one.
    pub(crate) fn peer_size(&mut self, peer: ConnId, size: u32) -> Option<Verdict> {
        if size == 0 || size > MAX_METADATA_SIZE {
            return Some(self.convict(peer, Fault::ImplausibleSize { size }));
        }
        if self.done {
            let actual = self.size.unwrap_or(size);
            return (size != actual).then_some(Verdict {
                peer,
                fault: Fault::WrongSize {
                    claimed: size,
                    actual,
                },
            });
        }
        if let Some(p) = self.peers.get(&peer) {
            if p.size == size {
                return None;
            }
            let was = p.size;
            return Some(self.convict(peer, Fault::ChangedSize { was, now: size }));
        }
        if self.peers.len() >= MAX_PEERS {
            return None;
        }
        let n = if self.size == Some(size) {
            self.slots.len() as u32
        } else {
            0
        };
        self.peers.insert(
            peer,
            Peer {
                size,
                arrived: self.arrivals,
                outstanding: 0,
                asked: Bits::new(n),
                rejected: Bits::new(n),
                stalled: false,
                rejects: 0,
                data: 0,
                solo_tried: false,
            },
        );
        self.arrivals += 1;
        if self.size.is_none() {
            self.adopt(size);
        } else {
            self.check_adopted();
        }
        None
    }

    /// The piece to ask `peer` for next, if any: never more than
    /// `MAX_OUTSTANDING` at once, never a piece it rejected, and only
    /// pieces nobody is being asked for. Requests older than
    /// `REQUEST_TIMEOUT` are taken back first, so call this on every tick
    /// as well as after each message.
    pub(crate) fn next_request(&mut self, peer: ConnId, now: Instant) -> Option<u32> {
        if self.done {
            return None;
        }
        self.expire(now);
        let size = self.size?;
        let p = self.peers.get(&peer)?;
        if p.size != size || p.outstanding >= MAX_OUTSTANDING {
            return None;
        }
        if let Mode::Solo { .. } = self.mode {
            // `None`: no peer can supply every piece alone, and the mode
            // is mixed again.
            if self.solo_peer().is_some_and(|solo| solo != peer) {
                return None;
            }
        }
        // A stalled peer waits while others can be asked (the solo peer is
        // the only one that can be).
        let p = self.peers.get(&peer)?;
        if self.mode == Mode::Mixed
            && p.stalled
            && self
                .peers
                .iter()
                .any(|(&id, q)| id != peer && q.size == size && !q.stalled)
        {
            return None;
        }
        let p = self.peers.get_mut(&peer)?;
        let piece = (0..self.slots.len() as u32)
            .find(|&i| self.slots[i as usize] == Slot::Missing && !p.rejected.get(i))?;
        self.slots[piece as usize] = Slot::Requested { peer, at: now };
        p.outstanding += 1;
        p.asked.set(piece);
        self.earliest = Some(self.earliest.map_or(now, |e| e.min(now)));
        Some(piece)
    }

    /// A `ut_metadata` reject from `peer`. `Some` when the peer is to be
    /// dropped: `MAX_REJECTS` rejects without any data (banned), or every
    /// piece rejected (dropped only).
    pub(crate) fn on_reject(&mut self, peer: ConnId, piece: u32) -> Option<Verdict> {
        if self.done {
            return None;
        }
        let size = self.size?;
        let n = self.slots.len() as u32;
        let p = self.peers.get_mut(&peer)?;
        p.rejects = p.rejects.saturating_add(1);
        p.stalled = false;
        let (rejects, data) = (p.rejects, p.data);
        let mut ends_turn = false;
        if p.size == size && piece < n {
            p.rejected.set(piece);
            if let Slot::Requested { peer: q, .. } = self.slots[piece as usize] {
                if q == peer {
                    self.slots[piece as usize] = Slot::Missing;
                    p.outstanding -= 1;
                }
            }
            ends_turn = self.mode
                == (Mode::Solo {
                    current: Some(peer),
                });
        }
        let rejected_all = p.size == size && p.rejected.count() >= n;
        if data == 0 && rejects >= MAX_REJECTS {
            return Some(self.convict(peer, Fault::Rejects { count: rejects }));
        }
        if rejected_all {
            return Some(self.convict(peer, Fault::NothingToGive));
        }
        if ends_turn {
            self.end_turn();
        }
        None
    }

    /// A `ut_metadata` data message from `peer` (already checked by
    /// `MetadataMsg::decode` to be as long as its piece for its
    /// `total_size`; checked again here against the peer's claim).
    pub(crate) fn on_data(
        &mut self,
        peer: ConnId,
        piece: u32,
        total_size: u32,
        data: &[u8],
    ) -> Outcome {
        if self.done {
            return Outcome::Progress;
        }
        let Some(p) = self.peers.get(&peer) else {
            return Outcome::Progress;
        };
        if total_size != p.size {
            let claimed = p.size;
            let fault = Fault::DataSize {
                claimed,
                sent: total_size,
            };
            return Outcome::Verdicts(vec![self.convict(peer, fault)]);
        }
        let Some(size) = self.size.filter(|&s| s == p.size) else {
            // Not asked: its size is not the one being fetched.
            return Outcome::Progress;
        };
        if metadata_piece_len(size, piece) != Some(data.len() as u32) {
            let fault = Fault::BadPiece {
                piece,
                len: data.len(),
            };
            return Outcome::Verdicts(vec![self.convict(peer, fault)]);
        }
        if !p.asked.get(piece) {
            return Outcome::Progress;
        }
        match self.slots[piece as usize] {
            Slot::Have { .. } => return Outcome::Progress,
            Slot::Requested { peer: q, .. } => {
                if let Some(q) = self.peers.get_mut(&q) {
                    q.outstanding -= 1;
                }
            }
            Slot::Missing => {}
        }
        if self.buf.len() != size as usize {
            self.buf = vec![0; size as usize];
        }
        let start = (piece * METADATA_PIECE_LEN) as usize;
        self.buf[start..start + data.len()].copy_from_slice(data);
        self.slots[piece as usize] = Slot::Have { from: peer };
        self.have += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.data += 1;
            p.stalled = false;
        }
        if self.have < self.slots.len() as u32 {
            return Outcome::Progress;
        }
        self.verify()
    }

    /// The connection closed: its outstanding requests go to others. The
    /// pieces it supplied are kept (the hash check judges them).
    pub(crate) fn peer_gone(&mut self, peer: ConnId) {
        if self.peers.contains_key(&peer) {
            self.remove(peer);
        }
    }

    /// Every piece is in: checks the whole against the info hash.
    fn verify(&mut self) -> Outcome {
        let size = self.size.expect("pieces imply a size");
        if sha1(&self.buf) == self.info_hash.0 {
            let mut verdicts = Vec::new();
            let convicted = |peer, fault, verdicts: &mut Vec<Verdict>| {
                if !verdicts.iter().any(|v: &Verdict| v.peer == peer) {
                    verdicts.push(Verdict { peer, fault });
                }
            };
            for (i, suspect) in self.suspects.iter().enumerate() {
                let Some((from, hash)) = suspect else {
                    continue;
                };
                if sha1(piece_of(&self.buf, i)) != *hash {
                    convicted(*from, Fault::BadData, &mut verdicts);
                }
            }
            let mut wrong: Vec<(u64, ConnId, u32)> = self
                .peers
                .iter()
                .filter(|(_, p)| p.size != size)
                .map(|(&id, p)| (p.arrived, id, p.size))
                .collect();
            wrong.sort_unstable();
            for (_, peer, claimed) in wrong {
                let fault = Fault::WrongSize {
                    claimed,
                    actual: size,
                };
                convicted(peer, fault, &mut verdicts);
            }
            self.done = true;
            self.peers = HashMap::new();
            self.suspects = Vec::new();
            return Outcome::Complete {
                info: std::mem::take(&mut self.buf),
                verdicts,
            };
        }

        let mut suppliers: Vec<ConnId> = Vec::new();
        for slot in &self.slots {
            if let Slot::Have { from } = *slot {
                if !suppliers.contains(&from) {
                    suppliers.push(from);
                }
            }
        }
        let mut verdicts = Vec::new();
        if suppliers.len() == 1 || matches!(self.mode, Mode::Solo { .. }) {
            for peer in suppliers {
                verdicts.push(self.convict(peer, Fault::BadData));
            }
            // `convict` dropped their pieces; discard the rest of the attempt.
            self.reset_attempt();
        } else {
            self.suspects = self
                .slots
                .iter()
                .enumerate()
                .map(|(i, slot)| match *slot {
                    Slot::Have { from } => Some((from, sha1(piece_of(&self.buf, i)))),
                    _ => None,
                })
                .collect();
            self.mode = Mode::Solo { current: None };
            self.reset_attempt();
        }
        if verdicts.is_empty() {
            Outcome::Progress
        } else {
            Outcome::Verdicts(verdicts)
        }
    }

    /// Forgets `peer` for `fault` (and, when banned, the pieces it
    /// supplied in this attempt).
    fn convict(&mut self, peer: ConnId, fault: Fault) -> Verdict {
        if fault.ban() {
            for slot in &mut self.slots {
                if *slot == (Slot::Have { from: peer }) {
                    *slot = Slot::Missing;
                    self.have -= 1;
                }
            }
            for suspect in &mut self.suspects {
                if suspect.is_some_and(|(from, _)| from == peer) {
                    *suspect = None;
                }
            }
        }
        if self.peers.contains_key(&peer) {
            self.remove(peer);
        }
        Verdict { peer, fault }
    }

    fn remove(&mut self, peer: ConnId) {
        self.peers.remove(&peer);
        for slot in &mut self.slots {
            if matches!(*slot, Slot::Requested { peer: q, .. } if q == peer) {
                *slot = Slot::Missing;
            }
        }
        if self.mode
            == (Mode::Solo {
                current: Some(peer),
            })
        {
            self.mode = Mode::Solo { current: None };
            self.reset_attempt();
        }
        self.check_adopted();
    }

    /// Fetches `size` from scratch.
    fn adopt(&mut self, size: u32) {
        let n = metadata_piece_count(size);
        self.size = Some(size);
        self.slots = vec![Slot::Missing; n as usize];
        self.have = 0;
        self.buf = Vec::new();
        self.earliest = None;
        self.mode = Mode::Mixed;
        self.suspects = Vec::new();
        for p in self.peers.values_mut() {
            let m = if p.size == size { n } else { 0 };
            p.outstanding = 0;
            p.asked = Bits::new(m);
            p.rejected = Bits::new(m);
            p.stalled = false;
            p.solo_tried = false;
        }
    }

    /// When no peer claims the adopted size any more but some claim
    /// another, switches to the size of the earliest of them.
    fn check_adopted(&mut self) {
        let Some(size) = self.size else { return };
        if self.done || self.peers.values().any(|p| p.size == size) {
            return;
        }
        if let Some(next) = self
            .peers
            .values()
            .min_by_key(|p| p.arrived)
            .map(|p| p.size)
        {
            self.adopt(next);
        }
    }

    /// Discards this attempt's pieces and requests (same size).
    fn reset_attempt(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = Slot::Missing);
        self.have = 0;
        self.earliest = None;
        for p in self.peers.values_mut() {
            p.outstanding = 0;
            p.asked.clear();
        }
    }

    /// Ends the solo peer's turn: its pieces are discarded and the next
    /// peer goes.
    fn end_turn(&mut self) {
        if let Mode::Solo {
            current: Some(peer),
        } = self.mode
        {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.solo_tried = true;
            }
            self.mode = Mode::Solo { current: None };
            self.reset_attempt();
        }
    }

    /// The single supplier of this attempt, choosing the next one when
    /// there is none: by arrival among the peers able to supply every
    /// piece (they rejected none), those not yet tried first. With no such
    /// peer the mode goes back to mixed (the suspects are kept, so a mixed
    /// success still convicts) and this returns `None`.
    fn solo_peer(&mut self) -> Option<ConnId> {
        let Mode::Solo { current } = self.mode else {
            return None;
        };
        if current.is_some() {
            return current;
        }
        let size = self.size?;
        let able = |p: &Peer| p.size == size && p.rejected.count() == 0;
        let first = |peers: &HashMap<ConnId, Peer>, untried_only: bool| {
            peers
                .iter()
                .filter(|(_, p)| able(p) && !(untried_only && p.solo_tried))
                .min_by_key(|(_, p)| p.arrived)
                .map(|(&id, _)| id)
        };
        let next = match first(&self.peers, true) {
            Some(next) => next,
            None => {
                // Every able peer had a turn and is still here: go round
                // again.
                let Some(next) = first(&self.peers, false) else {
                    self.mode = Mode::Mixed;
                    return None;
                };
                self.peers.values_mut().for_each(|p| p.solo_tried = false);
                next
            }
        };
        self.mode = Mode::Solo {
            current: Some(next),
        };
        Some(next)
    }

    /// Takes back requests older than `REQUEST_TIMEOUT`. A solo peer that
    /// times out ends its turn.
    fn expire(&mut self, now: Instant) {
        match self.earliest {
            Some(e) if now.saturating_duration_since(e) >= REQUEST_TIMEOUT => {}
            _ => return,
        }
        self.earliest = None;
        let mut solo_timed_out = false;
        for slot in &mut self.slots {
            let Slot::Requested { peer, at } = *slot else {
                continue;
            };
            if now.saturating_duration_since(at) < REQUEST_TIMEOUT {
                self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
                continue;
            }
            *slot = Slot::Missing;
            if let Some(p) = self.peers.get_mut(&peer) {
                p.outstanding -= 1;
                p.stalled = true;
            }
            solo_timed_out |= self.mode
                == Mode::Solo {
                    current: Some(peer),
                };
        }
        if solo_timed_out {
            self.end_turn();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: usize = METADATA_PIECE_LEN as usize;

    /// A fake info dictionary of `len` bytes and its fetcher.
    fn setup(len: usize) -> (Vec<u8>, MetadataFetch) {
        let info: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let fetch = MetadataFetch::new(InfoHash(sha1(&info)));
        (info, fetch)
    }

    fn piece(info: &[u8], i: u32) -> &[u8] {
        let start = i as usize * PIECE;
        &info[start..(start + PIECE).min(info.len())]
    }

    fn forged(info: &[u8], i: u32) -> Vec<u8> {
        piece(info, i).iter().map(|b| b ^ 0xff).collect()
    }

    /// Asks `peer` for everything it may be asked and answers honestly
    /// (or with `lie` for the pieces it says), collecting the outcomes.
    fn serve(
        fetch: &mut MetadataFetch,
        info: &[u8],
        peer: ConnId,
        now: Instant,
        lie: &dyn Fn(u32) -> bool,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Some(i) = fetch.next_request(peer, now) {
            let data = if lie(i) {
                forged(info, i)
            } else {
                piece(info, i).to_vec()
            };
            let o = fetch.on_data(peer, i, info.len() as u32, &data);
            let end = !matches!(o, Outcome::Progress);
            out.push(o);
            if end {
                break;
            }
        }
        out
    }

    fn honest(_: u32) -> bool {
        false
    }

    fn completed(outcomes: &[Outcome]) -> Option<(&Vec<u8>, &Vec<Verdict>)> {
        outcomes.iter().find_map(|o| match o {
            Outcome::Complete { info, verdicts } => Some((info, verdicts)),
            _ => None,
        })
    }

    #[test]
    fn outstanding_requests_are_capped() {
        let n = MAX_OUTSTANDING + 4;
        let (info, mut f) = setup(n as usize * PIECE);
        let now = Instant::now();
        assert_eq!(f.peer_size(1, info.len() as u32), None);
        for i in 0..MAX_OUTSTANDING {
            assert_eq!(f.next_request(1, now), Some(i));
        }
        assert_eq!(f.next_request(1, now), None, "at most MAX_OUTSTANDING");
        assert_eq!(
            f.on_data(1, 0, info.len() as u32, piece(&info, 0)),
            Outcome::Progress
        );
        assert_eq!(f.next_request(1, now), Some(MAX_OUTSTANDING));
        assert_eq!(f.next_request(1, now), None);
    }

    #[test]
    fn one_honest_peer() {
        let (info, mut f) = setup(3 * PIECE + 100);
        let now = Instant::now();
        assert_eq!(f.peer_size(1, info.len() as u32), None);
        assert_eq!(f.size(), Some(info.len() as u32));
        assert_eq!(f.progress(), (0, 4));
        assert_eq!(f.next_request(1, now), Some(0));
        assert_eq!(f.next_request(1, now), Some(1));
        assert_eq!(
            f.on_data(1, 1, info.len() as u32, piece(&info, 1)),
            Outcome::Progress
        );
        assert_eq!(f.next_request(1, now), Some(2));
        assert_eq!(
            f.on_data(1, 0, info.len() as u32, piece(&info, 0)),
            Outcome::Progress
        );
        assert_eq!(
            f.on_data(1, 2, info.len() as u32, piece(&info, 2)),
            Outcome::Progress
        );
        assert_eq!(f.next_request(1, now), Some(3));
        assert_eq!(f.progress(), (3, 4));
        assert_eq!(
            f.on_data(1, 3, info.len() as u32, piece(&info, 3)),
            Outcome::Complete {
                info: info.clone(),
                verdicts: vec![]
            }
        );
        assert!(f.is_complete());
        assert_eq!(f.next_request(1, now), None);
        // Afterwards a peer claiming the right size is fine, another not.
        assert_eq!(f.peer_size(2, info.len() as u32), None);
        assert!(f.peer_size(3, 5).is_some_and(|v| v.fault.ban()));
    }

    #[test]
    fn a_single_small_piece() {
        let (info, mut f) = setup(10);
        let now = Instant::now();
        f.peer_size(1, 10);
        assert_eq!(f.next_request(1, now), Some(0));
        assert_eq!(f.next_request(1, now), None);
        assert!(matches!(
            f.on_data(1, 0, 10, &info),
            Outcome::Complete { .. }
        ));
    }

    #[test]
    fn two_peers_share_the_work() {
        let (info, mut f) = setup(6 * PIECE);
        let now = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        f.peer_size(2, size);
        let a = [f.next_request(1, now), f.next_request(1, now)];
        let b = [f.next_request(2, now), f.next_request(2, now)];
        assert_eq!(a, [Some(0), Some(1)]);
        assert_eq!(b, [Some(2), Some(3)]);
        for (peer, i) in [(1, 0), (2, 2), (1, 1), (2, 3)] {
            assert_eq!(f.on_data(peer, i, size, piece(&info, i)), Outcome::Progress);
        }
        assert_eq!(f.next_request(2, now), Some(4));
        assert_eq!(f.next_request(1, now), Some(5));
        assert_eq!(f.on_data(2, 4, size, piece(&info, 4)), Outcome::Progress);
        assert_eq!(
            f.on_data(1, 5, size, piece(&info, 5)),
            Outcome::Complete {
                info: info.clone(),
                verdicts: vec![]
            }
        );
    }

    #[test]
    fn a_lone_liar_is_banned_and_an_honest_peer_then_finishes() {
        let (info, mut f) = setup(2 * PIECE + 1);
        let now = Instant::now();
        let size = info.len() as u32;
        f.peer_size(66, size);
        f.peer_size(1, size);
        // The liar alone supplies everything.
        let _ = f.next_request(1, now); // honest peer holds piece 2...
        f.peer_gone(1); // ...and leaves, so the liar gets every piece.
        let out = serve(&mut f, &info, 66, now, &|i| i == 1);
        assert_eq!(
            out.last(),
            Some(&Outcome::Verdicts(vec![Verdict {
                peer: 66,
                fault: Fault::BadData
            }]))
        );
        f.peer_size(2, size);
        let out = serve(&mut f, &info, 2, now, &honest);
        assert_eq!(completed(&out), Some((&info, &vec![])));
    }

    #[test]
    fn one_liar_among_honest_peers_is_identified() {
        let (info, mut f) = setup(9 * PIECE + 5);
        let t = Instant::now();
        let size = info.len() as u32;
        for peer in [1, 2, 66, 3] {
            f.peer_size(peer, size);
        }
        // Round robin: everyone gets pieces; 66 forges all of its own.
        let mut done = None;
        let mut rounds = 0;
        while done.is_none() {
            rounds += 1;
            assert!(rounds < 100, "no progress");
            for peer in [1, 2, 66, 3] {
                let lie = |_: u32| peer == 66;
                if let Some(i) = f.next_request(peer, t) {
                    let data = if lie(i) {
                        forged(&info, i)
                    } else {
                        piece(&info, i).to_vec()
                    };
                    match f.on_data(peer, i, size, &data) {
                        Outcome::Progress => {}
                        Outcome::Verdicts(v) => panic!("no one is convicted early: {v:?}"),
                        Outcome::Complete { info, verdicts } => {
                            done = Some((info, verdicts));
                            break;
                        }
                    }
                }
            }
        }
        let (got, verdicts) = done.unwrap();
        assert_eq!(got, info);
        assert_eq!(
            verdicts,
            vec![Verdict {
                peer: 66,
                fault: Fault::BadData
            }]
        );
    }

    #[test]
    fn the_liar_is_found_even_when_it_goes_solo_first() {
        let (info, mut f) = setup(4 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(66, size);
        f.peer_size(1, size);
        // Mixed attempt: 66 lies about its pieces.
        let mut failed = false;
        for _ in 0..2 {
            for peer in [66, 1] {
                if let Some(i) = f.next_request(peer, t) {
                    let data = if peer == 66 {
                        forged(&info, i)
                    } else {
                        piece(&info, i).to_vec()
                    };
                    assert_eq!(f.on_data(peer, i, size, &data), Outcome::Progress);
                    failed |= f.progress().0 == 0;
                }
            }
        }
        assert!(failed, "the mixed attempt failed and was discarded");
        // Solo turns: 66 arrived first, so it goes first; peer 1 is not
        // asked meanwhile.
        assert_eq!(f.next_request(1, t), None);
        let out = serve(&mut f, &info, 66, t, &|_| true);
        assert_eq!(
            out.last(),
            Some(&Outcome::Verdicts(vec![Verdict {
                peer: 66,
                fault: Fault::BadData
            }]))
        );
        let out = serve(&mut f, &info, 1, t, &honest);
        assert_eq!(completed(&out), Some((&info, &vec![])));
    }

    #[test]
    fn a_liar_honest_when_alone_is_convicted_by_its_earlier_piece() {
        let (info, mut f) = setup(2 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        f.peer_size(66, size);
        let a = f.next_request(1, t).unwrap();
        let b = f.next_request(66, t).unwrap();
        assert_eq!(f.on_data(1, a, size, piece(&info, a)), Outcome::Progress);
        assert_eq!(f.on_data(66, b, size, &forged(&info, b)), Outcome::Progress);
        assert_eq!(f.progress().0, 0, "failed check discarded the pieces");
        // Peer 1 goes solo and the result convicts 66 for piece b.
        let out = serve(&mut f, &info, 1, t, &honest);
        assert_eq!(
            completed(&out),
            Some((
                &info,
                &vec![Verdict {
                    peer: 66,
                    fault: Fault::BadData
                }]
            ))
        );
    }

    /// Peers 66 (liar) and 1 and 2 (honest) each supply one of three
    /// pieces, so the check fails with three suppliers.
    fn failed_mixed_attempt() -> (Vec<u8>, MetadataFetch, Instant) {
        let (info, mut f) = setup(3 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        for peer in [66, 1, 2] {
            f.peer_size(peer, size);
        }
        for peer in [66, 1, 2] {
            let i = f.next_request(peer, t).unwrap();
            let data = if peer == 66 {
                forged(&info, i)
            } else {
                piece(&info, i).to_vec()
            };
            assert_eq!(f.on_data(peer, i, size, &data), Outcome::Progress);
        }
        assert_eq!(f.progress().0, 0);
        (info, f, t)
    }

    #[test]
    fn a_silent_solo_peer_loses_its_turn() {
        let (info, mut f, t) = failed_mixed_attempt();
        // 66 arrived first and takes its solo turn, then goes silent.
        assert!(f.next_request(66, t).is_some());
        assert_eq!(f.next_request(1, t), None);
        let late = t + REQUEST_TIMEOUT;
        let out = serve(&mut f, &info, 1, late, &honest);
        assert_eq!(
            completed(&out),
            Some((
                &info,
                &vec![Verdict {
                    peer: 66,
                    fault: Fault::BadData
                }]
            ))
        );
    }

    #[test]
    fn a_solo_peer_that_rejects_loses_its_turn() {
        let (info, mut f, t) = failed_mixed_attempt();
        let i = f.next_request(66, t).unwrap();
        assert_eq!(f.on_reject(66, i), None);
        assert_eq!(f.next_request(66, t), None, "its turn is over");
        let out = serve(&mut f, &info, 1, t, &honest);
        assert!(completed(&out).is_some_and(|(got, v)| *got == info && v[0].peer == 66));
    }

    #[test]
    fn without_a_peer_able_to_go_solo_the_fetch_mixes_again() {
        let (info, mut f) = setup(2 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        f.peer_size(66, size);
        // Peer 1 rejects piece 0, so it can never supply everything.
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.on_reject(1, 0), None);
        assert_eq!(f.next_request(1, t), Some(1));
        assert_eq!(f.next_request(66, t), Some(0));
        assert_eq!(f.on_data(66, 0, size, &forged(&info, 0)), Outcome::Progress);
        assert_eq!(f.on_data(1, 1, size, piece(&info, 1)), Outcome::Progress);
        assert_eq!(f.progress().0, 0, "failed with two suppliers");
        // 66 is the only peer able to go solo, and lies again.
        assert_eq!(f.next_request(1, t), None);
        let out = serve(&mut f, &info, 66, t, &|_| true);
        assert_eq!(
            out.last().map(|o| matches!(o, Outcome::Verdicts(_))),
            Some(true)
        );
        // Nobody left can go solo: mixed again. Peer 1 supplies what it
        // can, and a newcomer the rest.
        let mut out = serve(&mut f, &info, 1, t, &honest);
        assert_eq!(f.progress(), (1, 2));
        f.peer_size(2, size);
        out.extend(serve(&mut f, &info, 2, t, &honest));
        assert_eq!(completed(&out), Some((&info, &vec![])));
    }

    #[test]
    fn absurd_and_changing_sizes_are_banned() {
        let (info, mut f) = setup(100);
        for size in [0, MAX_METADATA_SIZE + 1, u32::MAX] {
            let v = f.peer_size(9, size).unwrap();
            assert_eq!(v.fault, Fault::ImplausibleSize { size });
            assert!(v.fault.ban());
        }
        assert_eq!(f.size(), None);
        assert_eq!(f.peer_size(1, 100), None);
        assert_eq!(f.peer_size(1, 100), None);
        assert_eq!(
            f.peer_size(1, 101).map(|v| v.fault),
            Some(Fault::ChangedSize { was: 100, now: 101 })
        );
        // Data stating another total size than claimed.
        f.peer_size(2, 100);
        let i = f.next_request(2, Instant::now()).unwrap();
        assert_eq!(
            f.on_data(2, i, 99, &info[..99]),
            Outcome::Verdicts(vec![Verdict {
                peer: 2,
                fault: Fault::DataSize {
                    claimed: 100,
                    sent: 99
                }
            }])
        );
        // A piece of the wrong length.
        f.peer_size(3, 100);
        let i = f.next_request(3, Instant::now()).unwrap();
        assert!(matches!(
            f.on_data(3, i, 100, &info[..50]),
            Outcome::Verdicts(v) if v[0].fault == Fault::BadPiece { piece: 0, len: 50 }
        ));
    }

    #[test]
    fn a_wrong_size_first_does_not_get_honest_peers_banned() {
        let (info, mut f) = setup(PIECE + 10);
        let t = Instant::now();
        let size = info.len() as u32;
        // The liar arrives first with a false size, which is adopted.
        f.peer_size(66, 5000);
        f.peer_size(1, size);
        f.peer_size(2, size);
        assert_eq!(f.size(), Some(5000));
        assert_eq!(f.next_request(1, t), None, "other sizes wait");
        let junk = vec![0u8; 5000];
        let i = f.next_request(66, t).unwrap();
        assert_eq!(
            f.on_data(66, i, 5000, &junk),
            Outcome::Verdicts(vec![Verdict {
                peer: 66,
                fault: Fault::BadData
            }])
        );
        // The honest size is adopted next, and fetched.
        assert_eq!(f.size(), Some(size));
        let mut out = serve(&mut f, &info, 1, t, &honest);
        out.extend(serve(&mut f, &info, 2, t, &honest));
        assert_eq!(completed(&out), Some((&info, &vec![])));
    }

    #[test]
    fn other_sizes_are_banned_once_the_true_one_is_confirmed() {
        let (info, mut f) = setup(PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        f.peer_size(66, 777);
        f.peer_size(67, 778);
        let out = serve(&mut f, &info, 1, t, &honest);
        let (_, verdicts) = completed(&out).unwrap();
        assert_eq!(
            verdicts,
            &vec![
                Verdict {
                    peer: 66,
                    fault: Fault::WrongSize {
                        claimed: 777,
                        actual: size
                    }
                },
                Verdict {
                    peer: 67,
                    fault: Fault::WrongSize {
                        claimed: 778,
                        actual: size
                    }
                },
            ]
        );
    }

    #[test]
    fn a_rejecting_peer_is_banned_after_the_threshold_while_others_finish() {
        let (info, mut f) = setup(20 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        f.peer_size(9, size);
        let mut verdict = None;
        let mut asked = Vec::new();
        while verdict.is_none() {
            let i = f.next_request(9, t).expect("still asked");
            // A rejected piece is not offered to the same peer again.
            assert!(!asked.contains(&i));
            asked.push(i);
            verdict = f.on_reject(9, i);
        }
        assert_eq!(asked.len() as u32, MAX_REJECTS);
        assert_eq!(
            verdict,
            Some(Verdict {
                peer: 9,
                fault: Fault::Rejects { count: MAX_REJECTS }
            })
        );
        assert_eq!(f.next_request(9, t), None, "forgotten");
        let out = serve(&mut f, &info, 1, t, &honest);
        assert_eq!(completed(&out), Some((&info, &vec![])));
    }

    #[test]
    fn a_peer_that_rejects_every_piece_is_dropped_not_banned() {
        let (_, mut f) = setup(2 * PIECE);
        let t = Instant::now();
        f.peer_size(9, 2 * PIECE as u32);
        let a = f.next_request(9, t).unwrap();
        let b = f.next_request(9, t).unwrap();
        assert_eq!(f.on_reject(9, a), None);
        let v = f.on_reject(9, b).unwrap();
        assert_eq!(v.fault, Fault::NothingToGive);
        assert!(!v.fault.ban());
    }

    #[test]
    fn endless_unasked_rejects_end_in_a_ban() {
        let (_, mut f) = setup(3 * PIECE);
        f.peer_size(9, 3 * PIECE as u32);
        let mut verdict = None;
        for _ in 0..MAX_REJECTS {
            verdict = f.on_reject(9, 1000);
        }
        assert!(verdict.is_some_and(|v| v.fault.ban()));
    }

    #[test]
    fn timed_out_requests_are_offered_to_others() {
        let (info, mut f) = setup(3 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.next_request(1, t), Some(1));
        f.peer_size(2, size);
        assert_eq!(f.next_request(2, t), Some(2));
        assert_eq!(f.next_request(2, t), None);
        // Not yet.
        let later = t + REQUEST_TIMEOUT - Duration::from_millis(1);
        assert_eq!(f.next_request(2, later), None);
        // Peer 1 never answers: its pieces go to peer 2, and the stalled
        // peer 1 is not asked while peer 2 can be.
        let late = t + REQUEST_TIMEOUT;
        assert_eq!(f.on_data(2, 2, size, piece(&info, 2)), Outcome::Progress);
        assert_eq!(f.next_request(1, late), None);
        assert_eq!(f.next_request(2, late), Some(0));
        assert_eq!(f.next_request(2, late), Some(1));
        // Peer 1's late answer still counts (it was asked) and frees
        // peer 2's request; peer 2's own copy is then ignored.
        assert_eq!(f.on_data(1, 0, size, piece(&info, 0)), Outcome::Progress);
        assert_eq!(f.on_data(2, 0, size, piece(&info, 0)), Outcome::Progress);
        assert!(matches!(
            f.on_data(2, 1, size, piece(&info, 1)),
            Outcome::Complete { .. }
        ));
    }

    #[test]
    fn a_peer_leaving_mid_way_releases_its_pieces() {
        let (info, mut f) = setup(4 * PIECE);
        let t = Instant::now();
        let size = info.len() as u32;
        f.peer_size(1, size);
        f.peer_size(2, size);
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.next_request(1, t), Some(1));
        assert_eq!(f.on_data(1, 0, size, piece(&info, 0)), Outcome::Progress);
        f.peer_gone(1);
        // Piece 1 is free again; piece 0 is kept.
        assert_eq!(f.progress(), (1, 4));
        let out = serve(&mut f, &info, 2, t, &honest);
        assert_eq!(completed(&out), Some((&info, &vec![])));
        // Data from a peer that has gone is ignored.
        assert_eq!(f.on_data(1, 1, size, piece(&info, 1)), Outcome::Progress);
    }

    #[test]
    fn unasked_data_is_ignored() {
        let (info, mut f) = setup(2 * PIECE);
        let size = info.len() as u32;
        f.peer_size(1, size);
        assert_eq!(f.on_data(1, 1, size, piece(&info, 1)), Outcome::Progress);
        assert_eq!(f.progress(), (0, 2));
        // From a peer that never said it has the metadata.
        assert_eq!(f.on_data(5, 0, size, piece(&info, 0)), Outcome::Progress);
        assert_eq!(f.progress(), (0, 2));
    }

    #[test]
    fn faults_read_as_lowercase_with_context() {
        assert_eq!(
            Fault::WrongSize {
                claimed: 5,
                actual: 7
            }
            .to_string(),
            "metadata: claimed size 5, the info hash confirms 7"
        );
        assert_eq!(
            Fault::ImplausibleSize { size: 0 }.to_string(),
            "metadata: claimed size 0 is not in 1..=31457280"
        );
        assert!(!Fault::NothingToGive.ban() && Fault::BadData.ban());
    }

    #[test]
    fn peers_beyond_the_cap_are_not_tracked() {
        let (_, mut f) = setup(PIECE);
        let t = Instant::now();
        for peer in 0..MAX_PEERS as u64 + 50 {
            assert_eq!(f.peer_size(peer, PIECE as u32), None);
        }
        assert_eq!(f.peers.len(), MAX_PEERS);
        assert_eq!(f.next_request(MAX_PEERS as u64 + 10, t), None);
        assert_eq!(f.next_request(0, t), Some(0));
    }
}
