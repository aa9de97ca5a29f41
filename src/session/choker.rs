//! The choking algorithm (BEP 3's "tit-for-tat"), as pure code: given each
//! connected peer's interest and recent rate, which peers may download from
//! us. The session runs it every 10 s and when a peer becomes interested;
//! it sends the resulting `Choke`/`Unchoke` commands.
//!
//! Regular slots go to the interested peers with the best rate (the rate
//! they give us while we download; the rate we give them while we seed, so
//! that fast downloaders finish and spread pieces). One more slot is the
//! optimistic unchoke, given to a random other interested peer and rotated
//! every 30 s, so newcomers get a chance to prove themselves.

use crate::peer::ConnId;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Regular unchoke slots (plus one optimistic).
pub const REGULAR_SLOTS: usize = 3;
pub const RECHOKE_EVERY: Duration = Duration::from_secs(10);
pub const OPTIMISTIC_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: ConnId,
    pub interested: bool,
    /// Bytes per second over the last period (see module doc for which way).
    pub rate: u64,
}

#[derive(Default)]
pub struct Choker {
    optimistic: Option<(ConnId, Instant)>,
}

impl Choker {
    /// The set of peers to unchoke now. `random(n)` picks an index below n.
    pub fn decide(
        &mut self,
        peers: &[Candidate],
        now: Instant,
        mut random: impl FnMut(usize) -> usize,
    ) -> HashSet<ConnId> {
        let mut interested: Vec<&Candidate> = peers.iter().filter(|p| p.interested).collect();
        // Best rate first; ties by id so the order is stable.
        interested.sort_by(|a, b| b.rate.cmp(&a.rate).then(a.id.cmp(&b.id)));
        let mut unchoke: HashSet<ConnId> = interested
            .iter()
            .take(REGULAR_SLOTS)
            .map(|p| p.id)
            .collect();
        let others: Vec<ConnId> = interested
            .iter()
            .map(|p| p.id)
            .filter(|id| !unchoke.contains(id))
            .collect();
        let keep = self.optimistic.filter(|(id, since)| {
            others.contains(id) && now.duration_since(*since) < OPTIMISTIC_EVERY
        });
        self.optimistic = match keep {
            Some(k) => Some(k),
            None if !others.is_empty() => Some((others[random(others.len())], now)),
            None => None,
        };
        if let Some((id, _)) = self.optimistic {
            unchoke.insert(id);
        }
        unchoke
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: ConnId, interested: bool, rate: u64) -> Candidate {
        Candidate {
            id,
            interested,
            rate,
        }
    }

    #[test]
    fn best_three_plus_one_optimistic() {
        let mut ch = Choker::default();
        let t0 = Instant::now();
        let peers = [
            c(1, true, 10),
            c(2, true, 50),
            c(3, false, 999),
            c(4, true, 30),
            c(5, true, 40),
            c(6, true, 0),
        ];
        // random(n) = 0 -> the first of the others (by rate order: 1, then 6).
        let got = ch.decide(&peers, t0, |_| 0);
        assert_eq!(got, HashSet::from([2, 5, 4, 1]));
        assert!(!got.contains(&3), "uninterested peers stay choked");
        // Within 30 s the optimistic peer is kept even if the pick differs.
        let got = ch.decide(&peers, t0 + Duration::from_secs(10), |n| n - 1);
        assert!(got.contains(&1));
        // After 30 s it rotates.
        let got = ch.decide(&peers, t0 + Duration::from_secs(31), |n| n - 1);
        assert_eq!(got, HashSet::from([2, 5, 4, 6]));
    }

    #[test]
    fn few_peers_are_all_unchoked() {
        let mut ch = Choker::default();
        let got = ch.decide(&[c(1, true, 0), c(2, true, 0)], Instant::now(), |_| 0);
        assert_eq!(got, HashSet::from([1, 2]));
        assert!(ch.decide(&[], Instant::now(), |_| 0).is_empty());
    }

    #[test]
    fn a_fast_optimistic_peer_is_promoted() {
        let mut ch = Choker::default();
        let t0 = Instant::now();
        let mut peers = vec![c(1, true, 9), c(2, true, 8), c(3, true, 7), c(4, true, 0)];
        assert!(ch.decide(&peers, t0, |_| 0).contains(&4));
        peers[3].rate = 100;
        peers[2].rate = 1;
        let got = ch.decide(&peers, t0 + Duration::from_secs(10), |_| 0);
        // 4 now holds a regular slot; 3 becomes the optimistic one.
        assert_eq!(got, HashSet::from([4, 1, 2, 3]));
    }
}
