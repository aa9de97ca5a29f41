//! Piece states and who holds what, as pure code: the session thread calls
//! it, it does no I/O and knows nothing of channels or sockets.
//!
//! `Queued` (in the picker) → `InFlight` (assigned to one or more peers) →
//! `Verifying` → `Writing` → `Done`. A peer is assigned a piece with
//! [`Pieces::assign`] and lets go of it exactly once, through
//! [`Pieces::release`] (abandoned, or the peer left) or
//! [`Pieces::completed`] (it sent the piece). Each peer's assignments are a
//! set, so a release that crosses another (a piece sent just as the peer
//! exits) is counted once. A piece nobody holds any more goes back to
//! `Queued`; a piece is `Done` only after its hash matched and the write
//! succeeded; a hash failure puts it back (never loses it).
//!
//! Endgame: once nothing is queued, a hungry peer may duplicate any
//! in-flight piece it has (at most `MAX_HOLDERS` copies, or any number once
//! the piece has been in flight for `STALE`, so peers that hold pieces and
//! never finish them cannot block it), preferring the pieces with the
//! fewest holders that have been in flight longest; the first copy to
//! arrive wins and the others are cancelled.

use super::picker::Picker;
use crate::peer::message::Bitfield;
use crate::types::{PieceIndex, Rng};
use std::time::{Duration, Instant};

/// Copies of one piece in flight at once in endgame.
pub(crate) const MAX_HOLDERS: u8 = 3;
/// In flight this long: copies are no longer limited to `MAX_HOLDERS`
/// (each peer still takes at most one copy, so copies stay bounded by the
/// peers connected).
const STALE: Duration = Duration::from_secs(30);
/// A fresh download picks its first pieces at random rather than rarest.
const RANDOM_FIRST: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Queued,
    InFlight,
    Verifying,
    Writing,
    Done,
    /// Not wanted (only bytes of unselected files) and not on disk: never
    /// queued, never counted.
    Skipped,
}

struct Piece {
    state: State,
    holders: u8,
    /// Holders that had delivered a piece when they were given this one:
    /// only they count towards `MAX_HOLDERS`, so peers that claim pieces
    /// and never send cannot use up a piece's copies.
    strong: u8,
    /// When it last went in flight, in ms after `Pieces::epoch` (endgame
    /// prefers the oldest): 4 bytes, not an `Instant`'s 16, keep a piece
    /// at 12 bytes (3 MiB for 262,144 pieces).
    since: u32,
    /// Index in `Pieces::in_flight` while `InFlight`.
    slot: u32,
}

/// What a peer could be given next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// A queued piece, now in flight with this peer as its only holder.
    Fresh(PieceIndex),
    /// Endgame: a copy of a piece other peers are already fetching.
    Duplicate(PieceIndex),
}

impl Pick {
    pub(crate) fn piece(self) -> PieceIndex {
        match self {
            Pick::Fresh(p) | Pick::Duplicate(p) => p,
        }
    }
}

pub(crate) struct Pieces {
    pieces: Vec<Piece>,
    picker: Picker,
    /// Pieces in `InFlight`, for endgame (bounded by peers × their quota).
    in_flight: Vec<PieceIndex>,
    /// Wanted pieces that are done.
    done: u32,
    /// Pieces wanted (holding bytes of a selected file).
    want: u32,
    /// Time zero of `Piece::since`.
    epoch: Instant,
    /// Bumped whenever a piece goes (back) into the queue.
    version: u64,
}

impl Pieces {
    /// Every piece of `have` is `Done`, every other one of `wanted`
    /// `Queued`, the rest `Skipped`. The download is complete when every
    /// wanted piece is done.
    pub(crate) fn new(have: &Bitfield, wanted: &Bitfield, rng: Rng) -> Pieces {
        let n = have.len();
        let mut picker = Picker::new(n, rng);
        let (mut done, mut want) = (0, 0);
        let pieces = (0..n)
            .map(|i| {
                let p = PieceIndex(i);
                let state = if have.has(p) {
                    State::Done
                } else if wanted.has(p) {
                    picker.queue(p);
                    State::Queued
                } else {
                    State::Skipped
                };
                if wanted.has(p) {
                    want += 1;
                    done += u32::from(state == State::Done);
                }
                Piece {
                    state,
                    holders: 0,
                    strong: 0,
                    since: 0,
                    slot: 0,
                }
            })
            .collect();
        Pieces {
            pieces,
            picker,
            in_flight: Vec::new(),
            done,
            want,
            epoch: Instant::now(),
            version: 0,
        }
    }

    /// `now` as ms after `epoch` (saturating: 49 days).
    fn ms(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u32::MAX)
    }

    #[cfg(test)]
    pub(crate) fn state(&self, p: PieceIndex) -> State {
        self.pieces[p.as_usize()].state
    }

    pub(crate) fn holders(&self, p: PieceIndex) -> u8 {
        self.pieces[p.as_usize()].holders
    }

    pub(crate) fn is_queued(&self, p: PieceIndex) -> bool {
        self.picker.is_queued(p)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.done == self.want
    }

    /// Nothing is queued: every missing piece is in flight or being
    /// verified or written.
    pub(crate) fn in_endgame(&self) -> bool {
        self.picker.queued_count() == 0
    }

    #[cfg(test)]
    pub(crate) fn queued_count(&self) -> usize {
        self.picker.queued_count()
    }

    /// Availability bookkeeping: a peer's bitfield arrived or it left.
    pub(crate) fn peer_bitfield(&mut self, bits: &Bitfield, arrived: bool) {
        self.picker.add_bitfield(bits, arrived);
    }

    /// A peer announced `p`. Returns whether `p` is queued (worth waking a
    /// hungry peer for).
    pub(crate) fn peer_have(&mut self, p: PieceIndex) -> bool {
        self.picker.add_holder(p);
        self.picker.is_queued(p)
    }

    /// The next piece for a peer that has `bits` and already holds
    /// `holding`, or `None` if there is nothing it can do now.
    /// `proven`: the peer has delivered a piece. An unproven peer gets an
    /// endgame copy only while it holds nothing (one at a time), and its
    /// holds do not count towards a piece's `MAX_HOLDERS`: peers that claim
    /// every piece and send nothing cannot block the copies, and a new
    /// honest peer can still start.
    pub(crate) fn assign(
        &mut self,
        bits: &Bitfield,
        holding: &[PieceIndex],
        proven: bool,
        now: Instant,
    ) -> Option<Pick> {
        let random = self.done < RANDOM_FIRST;
        // Continue the run after the peer's latest piece (see `Picker::pick`).
        let next = holding.last().map(|p| PieceIndex(p.0.saturating_add(1)));
        if let Some(p) = self.picker.pick(bits, random, next) {
            self.picker.unqueue(p);
            let since = self.ms(now);
            let piece = &mut self.pieces[p.as_usize()];
            debug_assert_eq!(piece.state, State::Queued);
            piece.state = State::InFlight;
            piece.holders = 1;
            piece.strong = u8::from(proven);
            piece.since = since;
            piece.slot = self.in_flight.len() as u32;
            self.in_flight.push(p);
            return Some(Pick::Fresh(p));
        }
        if !self.in_endgame() || (!proven && !holding.is_empty()) {
            return None;
        }
        let best = self
            .in_flight
            .iter()
            .copied()
            .filter(|&p| {
                let piece = &self.pieces[p.as_usize()];
                // A piece in flight for long may be held by peers that
                // only pretend to work on it: then any peer may copy it.
                let stale = self.ms(now).saturating_sub(piece.since) as u128 >= STALE.as_millis();
                (piece.strong < MAX_HOLDERS || stale) && bits.has(p) && !holding.contains(&p)
            })
            .min_by_key(|&p| {
                let piece = &self.pieces[p.as_usize()];
                (piece.strong, piece.holders, piece.since)
            })?;
        let piece = &mut self.pieces[best.as_usize()];
        piece.holders = piece.holders.saturating_add(1);
        piece.strong += u8::from(proven);
        Some(Pick::Duplicate(best))
    }

    fn leave_in_flight(&mut self, p: PieceIndex) {
        let slot = self.pieces[p.as_usize()].slot as usize;
        self.in_flight.swap_remove(slot);
        if let Some(&moved) = self.in_flight.get(slot) {
            self.pieces[moved.as_usize()].slot = slot as u32;
        }
    }

    /// Changes whenever a piece goes back to the queue: a peer that found
    /// nothing to do at one version finds nothing new at the same version
    /// (until its own pieces or endgame change).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn requeue(&mut self, p: PieceIndex) {
        self.version += 1;
        let piece = &mut self.pieces[p.as_usize()];
        piece.state = State::Queued;
        piece.since = 0;
        self.picker.queue(p);
    }

    /// One holder (`strong`: one that was proven when assigned) let go of
    /// `p` without sending it. Returns true if the piece went back to the
    /// queue.
    pub(crate) fn release(&mut self, p: PieceIndex, strong: bool) -> bool {
        let piece = &mut self.pieces[p.as_usize()];
        piece.holders = piece.holders.saturating_sub(1);
        piece.strong = piece.strong.saturating_sub(u8::from(strong));
        if piece.holders == 0 && piece.state == State::InFlight {
            self.leave_in_flight(p);
            self.requeue(p);
            return true;
        }
        false
    }

    /// A peer sent all of `p`. `holder`: `Some(strong)` if it was still
    /// assigned it, `None` if it had been released already (a piece that
    /// arrives just after its sender left still counts). Returns true if
    /// it should be verified, false if another copy is already being
    /// verified or is done.
    pub(crate) fn completed(&mut self, p: PieceIndex, holder: Option<bool>) -> bool {
        let piece = &mut self.pieces[p.as_usize()];
        if let Some(strong) = holder {
            piece.holders = piece.holders.saturating_sub(1);
            piece.strong = piece.strong.saturating_sub(u8::from(strong));
        }
        match piece.state {
            State::Verifying | State::Writing | State::Done | State::Skipped => false,
            State::Queued => {
                self.picker.unqueue(p);
                self.pieces[p.as_usize()].state = State::Verifying;
                true
            }
            State::InFlight => {
                self.leave_in_flight(p);
                self.pieces[p.as_usize()].state = State::Verifying;
                true
            }
        }
    }

    /// The hash check of `p` finished. A failure puts it back in flight if
    /// other peers still fetch it, else back in the queue.
    pub(crate) fn hashed(&mut self, p: PieceIndex, ok: bool, now: Instant) {
        let since = self.ms(now);
        let piece = &mut self.pieces[p.as_usize()];
        debug_assert_eq!(piece.state, State::Verifying);
        if ok {
            piece.state = State::Writing;
        } else if piece.holders > 0 {
            piece.state = State::InFlight;
            piece.since = since;
            piece.slot = self.in_flight.len() as u32;
            self.in_flight.push(p);
        } else {
            self.requeue(p);
        }
    }

    /// The verified bytes of `p` are on disk.
    pub(crate) fn written(&mut self, p: PieceIndex) {
        let piece = &mut self.pieces[p.as_usize()];
        debug_assert_eq!(piece.state, State::Writing);
        piece.state = State::Done;
        self.done += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(n: u32) -> Bitfield {
        Bitfield::full(n)
    }

    fn fresh(n: u32) -> (Pieces, Bitfield) {
        let mut ps = Pieces::new(&Bitfield::new(n), &full(n), Rng::new(1));
        let seed = full(n);
        ps.peer_bitfield(&seed, true);
        (ps, seed)
    }

    #[test]
    fn pieces_not_wanted_are_never_assigned_nor_awaited() {
        // Pieces 0 and 2 wanted, 1 already here, 3 neither.
        let mut wanted = Bitfield::new(4);
        wanted.set(PieceIndex(0));
        wanted.set(PieceIndex(2));
        let mut have = Bitfield::new(4);
        have.set(PieceIndex(1));
        let mut ps = Pieces::new(&have, &wanted, Rng::new(3));
        assert_eq!(ps.state(PieceIndex(3)), State::Skipped);
        assert_eq!(ps.state(PieceIndex(1)), State::Done);
        let seed = full(4);
        ps.peer_bitfield(&seed, true);
        let now = Instant::now();
        let mut got = Vec::new();
        while let Some(pick) = ps.assign(&seed, &got, true, now) {
            got.push(pick.piece());
        }
        got.sort();
        assert_eq!(got, [PieceIndex(0), PieceIndex(2)]);
        // An unrequested copy of a skipped piece is not verified.
        assert!(!ps.completed(PieceIndex(3), None));
        for p in got {
            assert!(ps.completed(p, Some(true)));
            ps.hashed(p, true, now);
            assert!(!ps.is_complete());
            ps.written(p);
        }
        assert!(ps.is_complete());
    }

    #[test]
    fn a_piece_is_done_only_after_hash_and_write() {
        let (mut ps, seed) = fresh(1);
        let now = Instant::now();
        let Some(Pick::Fresh(p)) = ps.assign(&seed, &[], true, now) else {
            panic!("nothing assigned")
        };
        assert_eq!(ps.state(p), State::InFlight);
        assert!(ps.completed(p, Some(true)));
        assert_eq!(ps.state(p), State::Verifying);
        ps.hashed(p, true, now);
        assert_eq!(ps.state(p), State::Writing);
        assert!(!ps.is_complete());
        ps.written(p);
        assert!(ps.is_complete());
    }

    #[test]
    fn a_hash_failure_never_loses_the_piece() {
        let (mut ps, seed) = fresh(1);
        let now = Instant::now();
        let p = ps.assign(&seed, &[], true, now).unwrap().piece();
        ps.completed(p, Some(true));
        ps.hashed(p, false, now);
        assert_eq!(ps.state(p), State::Queued);
        // With another holder still fetching it, it stays in flight.
        let p = ps.assign(&seed, &[], true, now).unwrap().piece();
        let dup = ps.assign(&seed, &[], true, now).unwrap();
        assert_eq!(dup, Pick::Duplicate(p));
        ps.completed(p, Some(true));
        ps.hashed(p, false, now);
        assert_eq!(ps.state(p), State::InFlight);
        assert_eq!(ps.holders(p), 1);
        // The last holder leaves: queued again.
        assert!(ps.release(p, true));
        assert_eq!(ps.state(p), State::Queued);
    }

    #[test]
    fn releases_requeue_only_when_the_last_holder_goes() {
        let (mut ps, seed) = fresh(2);
        let now = Instant::now();
        let a = ps.assign(&seed, &[], true, now).unwrap().piece();
        let b = ps.assign(&seed, &[], true, now).unwrap().piece();
        assert_ne!(a, b);
        assert!(ps.in_endgame());
        let d = ps.assign(&seed, &[a], true, now).unwrap();
        assert_eq!(d, Pick::Duplicate(b));
        assert!(!ps.release(b, true));
        assert_eq!(ps.state(b), State::InFlight);
        assert!(ps.release(b, true));
        assert_eq!(ps.state(b), State::Queued);
        assert!(!ps.in_endgame());
    }

    #[test]
    fn endgame_duplicates_are_bounded_and_spread() {
        let (mut ps, seed) = fresh(2);
        let now = Instant::now();
        let a = ps.assign(&seed, &[], true, now).unwrap().piece();
        let later = now + std::time::Duration::from_secs(1);
        let b = ps.assign(&seed, &[], true, later).unwrap().piece();
        // Fewest holders first, then the oldest: a, then b, then a ...
        let picks: Vec<_> = (0..4)
            .map(|_| ps.assign(&seed, &[], true, later).map(Pick::piece))
            .collect();
        assert_eq!(picks, vec![Some(a), Some(b), Some(a), Some(b)]);
        assert_eq!(ps.holders(a), MAX_HOLDERS);
        assert_eq!(ps.assign(&seed, &[], true, later), None);
        // Thirty seconds on, a piece still in flight may be copied by any
        // other peer: holders that only pretend cannot block it.
        let stale = now + STALE;
        assert_eq!(ps.assign(&seed, &[], true, stale), Some(Pick::Duplicate(a)));
        // First copy wins; the late copies are not verified again.
        assert!(ps.completed(a, Some(true)));
        assert!(!ps.completed(a, Some(true)));
        assert_eq!(ps.holders(a), 2);
    }

    #[test]
    fn peers_that_never_deliver_cannot_use_up_the_copies() {
        let (mut ps, seed) = fresh(1);
        let now = Instant::now();
        // Unproven claimers: the first gets the piece; each other one, a
        // copy only while it holds nothing.
        let p = ps.assign(&seed, &[], false, now).unwrap().piece();
        for _ in 0..10 {
            assert_eq!(ps.assign(&seed, &[], false, now), Some(Pick::Duplicate(p)));
        }
        assert_eq!(ps.assign(&seed, &[p], false, now), None, "one at a time");
        // Eleven weak holders, yet a proven peer still gets its copies.
        assert_eq!(ps.holders(p), 11);
        for _ in 0..MAX_HOLDERS {
            assert_eq!(ps.assign(&seed, &[], true, now), Some(Pick::Duplicate(p)));
        }
        assert_eq!(ps.assign(&seed, &[], true, now), None);
        // Weak and strong releases are counted apart.
        assert!(!ps.release(p, false));
        assert_eq!(ps.assign(&seed, &[], true, now), None);
        assert!(!ps.release(p, true));
        assert_eq!(ps.assign(&seed, &[], true, now), Some(Pick::Duplicate(p)));
    }

    #[test]
    fn a_peer_without_the_pieces_gets_nothing() {
        let (mut ps, _) = fresh(8);
        let none = Bitfield::new(8);
        assert_eq!(ps.assign(&none, &[], true, Instant::now()), None);
    }

    #[test]
    fn a_late_piece_from_a_released_peer_still_counts() {
        let (mut ps, seed) = fresh(1);
        let now = Instant::now();
        let p = ps.assign(&seed, &[], true, now).unwrap().piece();
        // The peer exited (released) before its piece was read.
        assert!(ps.release(p, true));
        assert!(ps.completed(p, None));
        assert_eq!(ps.state(p), State::Verifying);
        assert_eq!(ps.queued_count(), 0);
    }

    /// Random operations as the session would make them: every assignment
    /// is let go of exactly once (release or completed), and the holder
    /// counts always equal the assignments outstanding.
    #[test]
    fn holder_counts_match_assignments_under_random_play() {
        let n = 40;
        let (mut ps, seed) = fresh(n);
        let mut r = Rng::new(42);
        let now = Instant::now();
        let mut held: Vec<Vec<PieceIndex>> = vec![Vec::new(); 5];
        let mut verifying: Vec<PieceIndex> = Vec::new();
        for _ in 0..20_000 {
            let peer = r.below(held.len());
            match r.below(5) {
                0 | 1 => {
                    if let Some(pick) = ps.assign(&seed, &held[peer], true, now) {
                        held[peer].push(pick.piece());
                    }
                }
                2 if !held[peer].is_empty() => {
                    let at = r.below(held[peer].len());
                    let p = held[peer].swap_remove(at);
                    ps.release(p, true);
                }
                3 if !held[peer].is_empty() => {
                    let at = r.below(held[peer].len());
                    let p = held[peer].swap_remove(at);
                    if ps.completed(p, Some(true)) {
                        verifying.push(p);
                    }
                }
                _ if !verifying.is_empty() => {
                    let at = r.below(verifying.len());
                    let p = verifying.swap_remove(at);
                    let ok = r.below(3) > 0;
                    ps.hashed(p, ok, now);
                    if ok {
                        ps.written(p);
                    }
                }
                _ => {}
            }
            for i in 0..n {
                let p = PieceIndex(i);
                let count = held.iter().filter(|h| h.contains(&p)).count();
                assert_eq!(ps.holders(p) as usize, count, "piece {i}");
                match ps.state(p) {
                    State::InFlight => assert!(count > 0),
                    State::Queued => assert_eq!(count, 0),
                    _ => {}
                }
            }
        }
        // Drain: everything ends Done.
        for h in &mut held {
            for p in h.drain(..) {
                ps.release(p, true);
            }
        }
        for p in verifying.drain(..) {
            ps.hashed(p, true, now);
            ps.written(p);
        }
        while !ps.is_complete() {
            let p = ps.assign(&seed, &[], true, now).unwrap().piece();
            assert!(ps.completed(p, Some(true)));
            ps.hashed(p, true, now);
            ps.written(p);
        }
    }
}
