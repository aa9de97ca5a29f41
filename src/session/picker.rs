//! Which queued piece a peer should fetch next: rarest first, random among
//! equals, random for the first few pieces of a fresh download. Pure: it
//! owns piece availability (how many connected peers have each piece) and
//! the set of queued pieces, ordered by availability; it does not know
//! about peers, in-flight pieces or endgame (that is `pieces`).
//!
//! Layout (the technique mature clients use): `order` holds every queued
//! piece, grouped into buckets by availability, lowest first; `starts[b]`
//! is where bucket `b` begins. A piece changing availability moves one
//! bucket by a single swap with that bucket's edge, so a `have` costs O(1);
//! queueing or unqueueing a piece costs O(BUCKETS).
//!
//! Picking for a peer scans the buckets from the rarest, starting at a
//! random offset in each, for a piece the peer has. The scan is bounded
//! (`SCAN_BUDGET` probes); when it runs out, the picker walks the peer's
//! bitfield ANDed with the queued set, a word at a time, so the cost of
//! one pick is bounded by what that peer can supply (its pieces) rather
//! than by the number of queued pieces.

use crate::peer::message::Bitfield;
use crate::types::{PieceIndex, Rng};

/// Availability at or above this many peers shares the last bucket: past
/// that, "rarer" no longer matters.
const BUCKETS: usize = 64;
/// Bucket probes before falling back to walking the peer's bitfield.
const SCAN_BUDGET: usize = 256;
/// Random probes into the queued set for a random pick.
const RANDOM_PROBES: usize = 64;
const NOT_QUEUED: u32 = u32::MAX;

pub(crate) struct Picker {
    avail: Vec<u32>,
    /// Position of each piece in `order`, or `NOT_QUEUED`.
    pos: Vec<u32>,
    order: Vec<u32>,
    /// `starts[b]..starts[b + 1]` is bucket `b` of `order`; the last entry is
    /// `order.len()`.
    starts: [u32; BUCKETS + 1],
    /// Queued pieces as a bitfield in wire order, to AND with a peer's.
    queued: Vec<u8>,
    rng: Rng,
}

fn bucket(avail: u32) -> usize {
    (avail as usize).min(BUCKETS - 1)
}

impl Picker {
    /// A picker for `pieces` pieces, none queued, none available.
    pub(crate) fn new(pieces: u32, rng: Rng) -> Picker {
        Picker {
            avail: vec![0; pieces as usize],
            pos: vec![NOT_QUEUED; pieces as usize],
            order: Vec::new(),
            starts: [0; BUCKETS + 1],
            queued: vec![0; pieces.div_ceil(8) as usize],
            rng,
        }
    }

    pub(crate) fn queued_count(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_queued(&self, p: PieceIndex) -> bool {
        self.pos[p.as_usize()] != NOT_QUEUED
    }

    /// Swaps the pieces at positions `a` and `b` of `order`.
    fn swap(&mut self, a: u32, b: u32) {
        if a == b {
            return;
        }
        self.order.swap(a as usize, b as usize);
        self.pos[self.order[a as usize] as usize] = a;
        self.pos[self.order[b as usize] as usize] = b;
    }

    /// Moves the queued piece `p` from bucket `k` to `k + 1`.
    fn up(&mut self, p: u32, k: usize) {
        let last = self.starts[k + 1] - 1;
        self.swap(self.pos[p as usize], last);
        self.starts[k + 1] -= 1;
    }

    /// Moves the queued piece `p` from bucket `k` to `k - 1`.
    fn down(&mut self, p: u32, k: usize) {
        let first = self.starts[k];
        self.swap(self.pos[p as usize], first);
        self.starts[k] += 1;
    }

    /// Puts `p` in the queue (no-op if it is there).
    pub(crate) fn queue(&mut self, p: PieceIndex) {
        let i = p.0;
        if self.is_queued(p) {
            return;
        }
        // Append as the last piece of the last bucket, then walk it down.
        let at = self.order.len() as u32;
        self.order.push(i);
        self.pos[i as usize] = at;
        self.starts[BUCKETS] += 1;
        let target = bucket(self.avail[i as usize]);
        for k in (target + 1..BUCKETS).rev() {
            self.down(i, k);
        }
        self.queued[(i / 8) as usize] |= 0x80 >> (i % 8);
    }

    /// Takes `p` out of the queue (no-op if it is not there).
    pub(crate) fn unqueue(&mut self, p: PieceIndex) {
        let i = p.0;
        if !self.is_queued(p) {
            return;
        }
        // Walk it up to the end of the last bucket, then drop it.
        for k in bucket(self.avail[i as usize])..BUCKETS - 1 {
            self.up(i, k);
        }
        let last = self.order.len() as u32 - 1;
        self.swap(self.pos[i as usize], last);
        self.order.pop();
        self.starts[BUCKETS] -= 1;
        self.pos[i as usize] = NOT_QUEUED;
        self.queued[(i / 8) as usize] &= !(0x80 >> (i % 8));
    }

    /// One more peer has `p`.
    pub(crate) fn add_holder(&mut self, p: PieceIndex) {
        let a = &mut self.avail[p.as_usize()];
        let from = bucket(*a);
        *a += 1;
        let to = bucket(*a);
        if self.is_queued(p) && to != from {
            self.up(p.0, from);
        }
    }

    /// One peer that had `p` is gone.
    pub(crate) fn remove_holder(&mut self, p: PieceIndex) {
        let a = &mut self.avail[p.as_usize()];
        if *a == 0 {
            return;
        }
        let from = bucket(*a);
        *a -= 1;
        let to = bucket(*a);
        if self.is_queued(p) && to != from {
            self.down(p.0, from);
        }
    }

    /// Every piece of `bits` gained (`add`) or lost a holder: a peer's
    /// bitfield arrived or the peer left. O(pieces it has).
    pub(crate) fn add_bitfield(&mut self, bits: &Bitfield, add: bool) {
        for_each_set(bits.as_bytes(), None, |p| {
            if add {
                self.add_holder(p);
            } else {
                self.remove_holder(p);
            }
        });
    }

    /// A queued piece `peer` has: a random one when `random` (the first few
    /// pieces of a fresh download, so peers do not all start alike and we
    /// soon have something to trade), else one of the rarest. Among the
    /// rarest, `next` (the piece after the one this peer got last) is
    /// preferred, so each peer fetches runs of adjacent pieces: sequential
    /// reads for the seeder and sequential writes for us. The piece stays
    /// queued; the caller unqueues what it assigns.
    pub(crate) fn pick(
        &mut self,
        peer: &Bitfield,
        random: bool,
        next: Option<PieceIndex>,
    ) -> Option<PieceIndex> {
        if self.order.is_empty() || peer.count() == 0 {
            return None;
        }
        let pick = self.pick_any(peer, random)?;
        Some(match next {
            Some(n)
                if !random
                    && n.0 < peer.len()
                    && self.is_queued(n)
                    && peer.has(n)
                    && bucket(self.avail[n.as_usize()]) <= bucket(self.avail[pick.as_usize()]) =>
            {
                n
            }
            _ => pick,
        })
    }

    fn pick_any(&mut self, peer: &Bitfield, random: bool) -> Option<PieceIndex> {
        if random {
            for _ in 0..RANDOM_PROBES {
                let p = PieceIndex(self.order[self.rng.below(self.order.len())]);
                if peer.has(p) {
                    return Some(p);
                }
            }
        }
        let mut budget = SCAN_BUDGET;
        // Bucket 0 holds pieces no connected peer has: `peer` cannot either.
        for k in 1..BUCKETS {
            let (lo, hi) = (self.starts[k] as usize, self.starts[k + 1] as usize);
            let n = hi - lo;
            if n == 0 {
                continue;
            }
            let start = self.rng.below(n);
            for j in 0..n.min(budget) {
                let p = PieceIndex(self.order[lo + (start + j) % n]);
                if peer.has(p) {
                    return Some(p);
                }
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                break;
            }
        }
        self.rarest_of(peer)
    }

    /// The rarest queued piece of `peer`, random among equals, found by
    /// walking its bitfield ANDed with the queued set.
    fn rarest_of(&mut self, peer: &Bitfield) -> Option<PieceIndex> {
        let mut best: Option<(usize, PieceIndex)> = None;
        let mut ties = 0u64;
        let avail = &self.avail;
        let rng = &mut self.rng;
        for_each_set(peer.as_bytes(), Some(&self.queued), |p| {
            let b = bucket(avail[p.as_usize()]);
            match best {
                Some((bb, _)) if bb < b => {}
                Some((bb, _)) if bb == b => {
                    // Reservoir sampling: each tie equally likely.
                    ties += 1;
                    if rng.next_u64() % ties == 0 {
                        best = Some((b, p));
                    }
                }
                _ => {
                    best = Some((b, p));
                    ties = 1;
                }
            }
        });
        best.map(|(_, p)| p)
    }
}

/// Calls `f` for every set bit of `a` (ANDed with `mask` if given), eight
/// bytes at a time so empty stretches cost little.
fn for_each_set(a: &[u8], mask: Option<&[u8]>, mut f: impl FnMut(PieceIndex)) {
    let word = |bytes: &[u8], i: usize| -> u64 {
        let mut w = [0u8; 8];
        let end = (i + 8).min(bytes.len());
        w[..end - i].copy_from_slice(&bytes[i..end]);
        u64::from_be_bytes(w)
    };
    for i in (0..a.len()).step_by(8) {
        let mut w = word(a, i);
        if let Some(m) = mask {
            w &= word(m, i);
        }
        while w != 0 {
            let bit = w.leading_zeros();
            f(PieceIndex(i as u32 * 8 + bit));
            w &= !(1u64 << (63 - bit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn full(n: u32) -> Bitfield {
        Bitfield::full(n)
    }

    fn of(n: u32, pieces: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in pieces {
            b.set(PieceIndex(i));
        }
        b
    }

    /// Every invariant of the layout: buckets in order, positions right,
    /// the queued bitfield matching.
    fn check(p: &Picker) {
        assert_eq!(p.starts[BUCKETS] as usize, p.order.len());
        for k in 0..BUCKETS {
            assert!(p.starts[k] <= p.starts[k + 1]);
            for at in p.starts[k]..p.starts[k + 1] {
                let piece = p.order[at as usize];
                assert_eq!(p.pos[piece as usize], at);
                assert_eq!(
                    bucket(p.avail[piece as usize]),
                    k,
                    "piece {piece} in bucket {k}"
                );
            }
        }
        assert_eq!(p.starts[0], 0);
        for i in 0..p.avail.len() as u32 {
            let q = p.queued[(i / 8) as usize] & (0x80 >> (i % 8)) != 0;
            assert_eq!(q, p.pos[i as usize] != NOT_QUEUED);
        }
    }

    #[test]
    fn layout_survives_random_operations() {
        let n = 300;
        let mut p = Picker::new(n, Rng::new(7));
        let mut r = Rng::new(99);
        for _ in 0..20_000 {
            let piece = PieceIndex(r.below(n as usize) as u32);
            match r.below(4) {
                0 => p.queue(piece),
                1 => p.unqueue(piece),
                2 => p.add_holder(piece),
                _ => p.remove_holder(piece),
            }
        }
        check(&p);
        for i in 0..n {
            p.add_holder(PieceIndex(i));
            p.queue(PieceIndex(i));
        }
        check(&p);
        assert_eq!(p.queued_count(), n as usize);
    }

    #[test]
    fn picks_the_rarest_piece_the_peer_has() {
        let n = 100;
        let mut p = Picker::new(n, Rng::new(1));
        for i in 0..n {
            p.queue(PieceIndex(i));
        }
        // Three seeds, and piece 42 also from a fourth peer; piece 7 only
        // from a partial peer: 7 is the rarest.
        for _ in 0..3 {
            p.add_bitfield(&full(n), true);
        }
        p.add_holder(PieceIndex(42));
        let seed = full(n);
        p.remove_holder(PieceIndex(7));
        p.remove_holder(PieceIndex(7));
        check(&p);
        assert_eq!(p.pick(&seed, false, None), Some(PieceIndex(7)));
        // A peer without 7 gets one of the 2-3 holder pieces, never 42.
        let partial = of(n, &[42, 50]);
        assert_eq!(p.pick(&partial, false, None), Some(PieceIndex(50)));
        // Nothing queued that the peer has.
        p.unqueue(PieceIndex(42));
        p.unqueue(PieceIndex(50));
        assert_eq!(p.pick(&partial, false, None), None);
        assert_eq!(p.pick(&Bitfield::new(n), false, None), None);
    }

    #[test]
    fn a_peer_continues_its_run_among_equals_but_not_over_rarer_pieces() {
        let n = 100;
        let mut p = Picker::new(n, Rng::new(8));
        for i in 0..n {
            p.queue(PieceIndex(i));
        }
        p.add_bitfield(&full(n), true);
        let seed = full(n);
        assert_eq!(
            p.pick(&seed, false, Some(PieceIndex(41))),
            Some(PieceIndex(41))
        );
        // A rarer piece wins over the run.
        p.add_holder(PieceIndex(41));
        assert_ne!(
            p.pick(&seed, false, Some(PieceIndex(41))),
            Some(PieceIndex(41))
        );
        // Past the end, or not queued: ignored.
        assert!(p.pick(&seed, false, Some(PieceIndex(n))).is_some());
        p.unqueue(PieceIndex(7));
        assert_ne!(
            p.pick(&seed, false, Some(PieceIndex(7))),
            Some(PieceIndex(7))
        );
    }

    #[test]
    fn ties_are_broken_at_random() {
        let n = 64;
        let mut p = Picker::new(n, Rng::new(3));
        for i in 0..n {
            p.queue(PieceIndex(i));
        }
        p.add_bitfield(&full(n), true);
        let seed = full(n);
        let picks: std::collections::HashSet<_> = (0..200)
            .filter_map(|_| p.pick(&seed, false, None))
            .collect();
        assert!(picks.len() > 20, "only {} distinct picks", picks.len());
        let randoms: std::collections::HashSet<_> =
            (0..200).filter_map(|_| p.pick(&seed, true, None)).collect();
        assert!(randoms.len() > 20);
    }

    #[test]
    fn fallback_finds_a_piece_deep_in_the_queue() {
        // 100,000 rare pieces the peer lacks, then its single piece among
        // the common ones: the bounded scan misses it, the bitfield walk
        // finds it.
        let n = 100_001;
        let mut p = Picker::new(n, Rng::new(5));
        for i in 0..n {
            p.queue(PieceIndex(i));
            p.add_holder(PieceIndex(i));
        }
        let only = PieceIndex(77_777);
        for _ in 0..5 {
            p.add_holder(only);
        }
        let peer = of(n, &[only.0]);
        assert_eq!(p.pick(&peer, false, None), Some(only));
        assert_eq!(p.pick(&peer, true, None), Some(only));
    }

    #[test]
    fn cost_is_bounded_on_a_huge_torrent() {
        // 262,144 pieces, 50 partial peers with 1% each, plus a seed: every
        // pick for every peer must stay cheap.
        let n = 262_144;
        let mut p = Picker::new(n, Rng::new(11));
        let mut r = Rng::new(12);
        for i in 0..n {
            p.queue(PieceIndex(i));
        }
        let peers: Vec<Bitfield> = (0..50)
            .map(|_| {
                let mut b = Bitfield::new(n);
                for _ in 0..n / 100 {
                    b.set(PieceIndex(r.below(n as usize) as u32));
                }
                b
            })
            .collect();
        let t = Instant::now();
        for b in &peers {
            p.add_bitfield(b, true);
        }
        p.add_bitfield(&full(n), true);
        let mut picked = 0;
        for round in 0..40 {
            for b in &peers {
                if let Some(piece) = p.pick(b, round < 2, None) {
                    p.unqueue(piece);
                    picked += 1;
                }
            }
        }
        let took = t.elapsed();
        assert_eq!(picked, 2000);
        assert!(took.as_millis() < 1500, "2,000 picks took {took:?}");
        check(&p);
    }
}
