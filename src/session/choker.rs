//! The choking algorithm (BEP 3's "tit-for-tat"), as pure code: given each
//! connected peer's interest, recent rate and unchoke history, which peers
//! may download from us. The session runs it every 10 s, within a second
//! of a peer becoming interested, and when a slot is taken back; it sends
//! the resulting `Choke`/`Unchoke` commands.
//!
//! It must not be farmable by peers that cost nothing to run:
//! * Regular slots go to the interested peers with the best rate (the rate
//!   they give us while we download; the rate at which they actually take
//!   our data while we seed). Ties, which is every peer when nothing moves,
//!   go to the peer unchoked least recently (never first), then at random,
//!   so the oldest connections cannot keep the slots by default.
//! * The optimistic slot rotates every 30 s among the other interested
//!   peers. A newcomer never unchoked goes first (the one that became
//!   interested most recently: an honest peer arriving among idle ones is
//!   served on arrival, not after a lottery), and may take the slot once
//!   its holder has had it for 5 s. Otherwise the peer that has waited
//!   longest since its last unchoke, newcomers counting three times.
//! * A peer that takes an unchoke and sends no request ([`wasted_unchoke`])
//!   is choked by the session and marked `penalized` for a while: it is
//!   not a candidate until then.

use crate::peer::ConnId;
use crate::types::Rng;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Regular unchoke slots (plus one optimistic).
pub(crate) const REGULAR_SLOTS: usize = 3;
pub(crate) const RECHOKE_EVERY: Duration = Duration::from_secs(10);
pub(crate) const OPTIMISTIC_EVERY: Duration = Duration::from_secs(30);
/// Connected for less than this: a newcomer, favoured for the optimistic slot.
pub(crate) const NEWCOMER: Duration = Duration::from_secs(60);
/// A newcomer never unchoked may take the optimistic slot once its holder
/// has had it this long.
pub(crate) const NEWCOMER_PREEMPT: Duration = Duration::from_secs(5);
/// An unchoked peer must send a request within this long.
pub(crate) const REQUEST_GRACE: Duration = Duration::from_secs(5);
/// How long a peer that wasted an unchoke is passed over.
pub(crate) const PENALTY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub id: ConnId,
    pub interested: bool,
    /// Bytes per second over the last period (see module doc for which way).
    pub rate: u64,
    /// When we last unchoked it; `None` if never.
    pub last_unchoked: Option<Instant>,
    pub newcomer: bool,
    /// Recently wasted an unchoke: not a candidate.
    pub penalized: bool,
    /// When it last became interested.
    pub interested_since: Option<Instant>,
}

/// True when a peer we unchoked at `unchoked_at` has sent no request since
/// (`last_request` before it) for `REQUEST_GRACE`.
pub(crate) fn wasted_unchoke(
    unchoked_at: Instant,
    last_request: Option<Instant>,
    now: Instant,
) -> bool {
    now.duration_since(unchoked_at) >= REQUEST_GRACE && last_request.is_none_or(|r| r < unchoked_at)
}

#[derive(Default)]
pub(crate) struct Choker {
    optimistic: Option<(ConnId, Instant)>,
}

impl Choker {
    /// Whether a newcomer that just became interested would get the
    /// optimistic slot now (so the session should rechoke at once).
    pub(crate) fn newcomer_may_preempt(&self, now: Instant) -> bool {
        self.optimistic
            .is_none_or(|(_, since)| now.duration_since(since) >= NEWCOMER_PREEMPT)
    }

    /// The set of peers to unchoke now.
    pub(crate) fn decide(
        &mut self,
        peers: &[Candidate],
        now: Instant,
        rng: &mut Rng,
    ) -> HashSet<ConnId> {
        let mut eligible: Vec<(&Candidate, u64)> = peers
            .iter()
            .filter(|p| p.interested && !p.penalized)
            .map(|p| (p, rng.next_u64()))
            .collect();
        // Best rate first; then least recently unchoked (never first); then
        // the random key.
        eligible.sort_by(|(a, ka), (b, kb)| {
            b.rate
                .cmp(&a.rate)
                .then(a.last_unchoked.cmp(&b.last_unchoked))
                .then(ka.cmp(kb))
        });
        let mut unchoke: HashSet<ConnId> = eligible
            .iter()
            .take(REGULAR_SLOTS)
            .map(|(p, _)| p.id)
            .collect();
        let others: Vec<&Candidate> = eligible
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !unchoke.contains(&p.id))
            .collect();
        let newcomer_waiting = others
            .iter()
            .any(|p| p.newcomer && p.last_unchoked.is_none());
        let keep = self.optimistic.filter(|(id, since)| {
            let held = now.duration_since(*since);
            others.iter().any(|p| p.id == *id)
                && held < OPTIMISTIC_EVERY
                && !(newcomer_waiting && held >= NEWCOMER_PREEMPT)
        });
        self.optimistic = keep.or_else(|| {
            others
                .iter()
                .max_by_key(|p| {
                    let fresh = p.newcomer && p.last_unchoked.is_none();
                    let score = if fresh {
                        // Most recently interested first.
                        let age = p
                            .interested_since
                            .map_or(u64::MAX, |t| now.duration_since(t).as_millis() as u64);
                        u64::MAX - age
                    } else {
                        let waited = p
                            .last_unchoked
                            .map_or(3_600_000, |t| now.duration_since(t).as_millis() as u64);
                        waited * if p.newcomer { 3 } else { 1 }
                    };
                    (fresh, score, rng.next_u64())
                })
                .map(|p| (p.id, now))
        });
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
            last_unchoked: None,
            newcomer: false,
            penalized: false,
            interested_since: None,
        }
    }

    #[test]
    fn best_three_plus_one_optimistic() {
        let mut ch = Choker::default();
        let mut rng = Rng::new(1);
        let t0 = Instant::now();
        let peers = [
            c(1, true, 10),
            c(2, true, 50),
            c(3, false, 999),
            c(4, true, 30),
            c(5, true, 40),
            c(6, true, 0),
        ];
        let got = ch.decide(&peers, t0, &mut rng);
        assert_eq!(got.len(), 4);
        assert!([2, 5, 4].iter().all(|id| got.contains(id)));
        assert!(!got.contains(&3), "uninterested peers stay choked");
        let opt = *got.iter().find(|id| ![2, 5, 4].contains(*id)).unwrap();
        // Within 30 s the optimistic peer is kept.
        let got = ch.decide(&peers, t0 + Duration::from_secs(10), &mut rng);
        assert!(got.contains(&opt));
    }

    #[test]
    fn few_peers_are_all_unchoked() {
        let mut ch = Choker::default();
        let mut rng = Rng::new(2);
        let got = ch.decide(&[c(1, true, 0), c(2, true, 0)], Instant::now(), &mut rng);
        assert_eq!(got, HashSet::from([1, 2]));
        assert!(ch.decide(&[], Instant::now(), &mut rng).is_empty());
    }

    #[test]
    fn ties_go_to_the_least_recently_unchoked() {
        // Ten old peers all at rate 0, unchoked before; a newcomer that was
        // never unchoked gets a regular slot at once.
        let mut ch = Choker::default();
        let mut rng = Rng::new(3);
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(100);
        let mut peers: Vec<Candidate> = (1..=10)
            .map(|id| Candidate {
                last_unchoked: Some(t0 + Duration::from_secs(id)),
                ..c(id, true, 0)
            })
            .collect();
        peers.push(Candidate {
            newcomer: true,
            ..c(99, true, 0)
        });
        let got = ch.decide(&peers, now, &mut rng);
        assert!(got.contains(&99));
        assert!(got.contains(&1) && got.contains(&2), "{got:?}");
    }

    #[test]
    fn ties_rotate_instead_of_sticking_to_the_oldest() {
        let mut ch = Choker::default();
        let mut rng = Rng::new(4);
        let mut now = Instant::now();
        let mut peers: Vec<Candidate> = (1..=12).map(|id| c(id, true, 0)).collect();
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let got = ch.decide(&peers, now, &mut rng);
            for p in &mut peers {
                if got.contains(&p.id) {
                    p.last_unchoked = Some(now);
                }
            }
            seen.extend(got);
            now += RECHOKE_EVERY;
        }
        assert_eq!(seen.len(), 12, "every tied peer had a turn: {seen:?}");
    }

    #[test]
    fn penalized_peers_are_passed_over() {
        let mut ch = Choker::default();
        let mut rng = Rng::new(5);
        let peers = [
            Candidate {
                penalized: true,
                ..c(1, true, 1000)
            },
            c(2, true, 0),
        ];
        assert_eq!(
            ch.decide(&peers, Instant::now(), &mut rng),
            HashSet::from([2])
        );
    }

    #[test]
    fn a_waiting_newcomer_takes_the_optimistic_slot_soon() {
        let mut ch = Choker::default();
        let mut rng = Rng::new(6);
        let t0 = Instant::now();
        let mut peers: Vec<Candidate> = (1..=5).map(|id| c(id, true, 100 - id)).collect();
        let got = ch.decide(&peers, t0, &mut rng);
        assert!(got.contains(&4) || got.contains(&5));
        // Nine idle newcomers that became interested long ago, then an
        // honest one: it gets the slot, not a 1-in-10 lottery.
        for id in 20..29 {
            peers.push(Candidate {
                newcomer: true,
                interested_since: Some(t0),
                ..c(id, true, 0)
            });
        }
        peers.push(Candidate {
            newcomer: true,
            interested_since: Some(t0 + Duration::from_secs(4)),
            ..c(9, true, 0)
        });
        assert!(!ch.newcomer_may_preempt(t0 + Duration::from_secs(1)));
        assert!(ch.newcomer_may_preempt(t0 + NEWCOMER_PREEMPT));
        let got = ch.decide(&peers, t0 + NEWCOMER_PREEMPT, &mut rng);
        assert!(got.contains(&9), "{got:?}");
    }

    #[test]
    fn a_wasted_unchoke_is_recognised() {
        let t0 = Instant::now();
        let later = t0 + REQUEST_GRACE;
        assert!(wasted_unchoke(t0, None, later));
        assert!(!wasted_unchoke(t0, None, t0 + Duration::from_secs(1)));
        assert!(!wasted_unchoke(
            t0,
            Some(t0 + Duration::from_secs(1)),
            later
        ));
        assert!(wasted_unchoke(t0, Some(t0 - Duration::from_secs(1)), later));
    }
}
