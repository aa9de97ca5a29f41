//! One iterative lookup (BEP 5 `find_node` / `get_peers`): the candidates
//! ordered by distance to the target, which to query next (a few in
//! flight), and when it has converged (the k closest nodes that are still
//! alive have all answered). Pure; the node sends what `next` returns and
//! reports answers and timeouts back.

use super::id::NodeId;
use super::table::K;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Queries in flight at once.
pub(crate) const ALPHA: usize = 4;
/// A query unanswered this long no longer holds its slot (another node is
/// asked), though a late answer is still used until `TIMEOUT`.
const SLOW: Duration = Duration::from_millis(1000);
/// Candidates kept; the farthest unqueried ones are dropped beyond this.
const MAX_CANDIDATES: usize = 64;
/// Queries one lookup may send at most, however the answers lead it on.
pub(crate) const MAX_QUERIES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    New,
    Asked(Instant),
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// Unknown for a bootstrap address until it answers; such candidates
    /// sort last.
    id: Option<NodeId>,
    addr: SocketAddr,
    state: State,
    token: Option<Vec<u8>>,
}

pub(crate) struct Lookup {
    target: NodeId,
    cands: Vec<Candidate>,
    queries: usize,
}

impl Lookup {
    pub(crate) fn new(target: NodeId) -> Lookup {
        Lookup {
            target,
            cands: Vec::new(),
            queries: 0,
        }
    }

    pub(crate) fn target(&self) -> NodeId {
        self.target
    }

    fn key(&self, c: &Candidate) -> [u8; 21] {
        let mut k = [0xff; 21];
        if let Some(id) = c.id {
            k[0] = 0;
            k[1..].copy_from_slice(&id.distance(&self.target));
        }
        k
    }

    /// Adds a candidate, unless its IP address is a candidate already:
    /// one per host, so a host answering from many ports with ids ever
    /// closer to the target cannot crowd out everyone else (an eclipse).
    /// The list stays sorted and bounded.
    pub(crate) fn add(&mut self, id: Option<NodeId>, addr: SocketAddr) {
        if self.cands.iter().any(|c| c.addr.ip() == addr.ip()) {
            return;
        }
        let c = Candidate {
            id,
            addr,
            state: State::New,
            token: None,
        };
        let key = self.key(&c);
        let pos = self.cands.partition_point(|x| self.key(x) <= key);
        self.cands.insert(pos, c);
        if self.cands.len() > MAX_CANDIDATES {
            // Drop the farthest one that has not been asked; those asked
            // stay so their answers are recognised.
            if let Some(i) = self.cands.iter().rposition(|c| c.state == State::New) {
                self.cands.remove(i);
            }
        }
    }

    /// The first `K` candidates that have not failed.
    fn live(&self) -> impl Iterator<Item = &Candidate> {
        self.cands
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(K)
    }

    /// Addresses to query now, marked asked.
    pub(crate) fn next(&mut self, now: Instant) -> Vec<SocketAddr> {
        let busy = |c: &Candidate| matches!(c.state, State::Asked(t) if now.saturating_duration_since(t) < SLOW);
        let mut in_flight = self.cands.iter().filter(|c| busy(c)).count();
        let mut out = Vec::new();
        while in_flight < ALPHA && self.queries < MAX_QUERIES {
            let pick = self
                .cands
                .iter()
                .filter(|c| c.state != State::Failed)
                .take(K)
                .position(|c| c.state == State::New);
            let Some(skip) = pick else { break };
            // `position` counted live candidates; map back to the index.
            let idx = self
                .cands
                .iter()
                .enumerate()
                .filter(|(_, c)| c.state != State::Failed)
                .nth(skip)
                .map(|(i, _)| i)
                .expect("position within live candidates");
            self.cands[idx].state = State::Asked(now);
            self.queries += 1;
            in_flight += 1;
            out.push(self.cands[idx].addr);
        }
        out
    }

    /// `addr` answered as `id`, naming `nodes` and handing a `token`.
    /// Returns whether the answer belonged to this lookup.
    pub(crate) fn answered(
        &mut self,
        addr: SocketAddr,
        id: NodeId,
        token: Option<Vec<u8>>,
        nodes: impl IntoIterator<Item = (NodeId, SocketAddr)>,
    ) -> bool {
        let Some(i) = self.cands.iter().position(|c| c.addr == addr) else {
            return false;
        };
        if !matches!(self.cands[i].state, State::Asked(_)) {
            return false;
        }
        let mut c = self.cands.remove(i);
        c.state = State::Answered;
        c.id = Some(id);
        c.token = token;
        let key = self.key(&c);
        let pos = self.cands.partition_point(|x| self.key(x) <= key);
        self.cands.insert(pos, c);
        for (nid, naddr) in nodes {
            self.add(Some(nid), naddr);
        }
        true
    }

    /// A query to `addr` went unanswered.
    pub(crate) fn failed(&mut self, addr: SocketAddr) {
        if let Some(c) = self.cands.iter_mut().find(|c| c.addr == addr) {
            if matches!(c.state, State::Asked(_)) {
                c.state = State::Failed;
            }
        }
    }

    /// Converged: nothing is in flight and the k closest live candidates
    /// have all answered (or no query may be sent any more).
    pub(crate) fn done(&self) -> bool {
        let waiting = self
            .cands
            .iter()
            .any(|c| matches!(c.state, State::Asked(_)));
        if waiting {
            return false;
        }
        self.queries >= MAX_QUERIES || self.live().all(|c| c.state == State::Answered)
    }

    /// Whether any node has answered.
    pub(crate) fn answered_any(&self) -> bool {
        self.cands.iter().any(|c| c.state == State::Answered)
    }

    /// The k closest nodes that answered with a token: where to announce.
    pub(crate) fn announce_to(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.cands
            .iter()
            .filter(|c| c.state == State::Answered)
            .filter_map(|c| c.token.clone().map(|t| (c.addr, t)))
            .take(K)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 6881))
    }

    #[test]
    fn one_candidate_per_host() {
        let now = Instant::now();
        let mut l = Lookup::new(id(0));
        l.add(None, a(200));
        let entry = l.next(now)[0];
        // The entry names 8 of its own ports, each closer, and one other
        // host: the other host is asked, the ports are not.
        let mut named: Vec<_> = (1..=8)
            .map(|i| (id(i), SocketAddr::new(entry.ip(), 7000 + u16::from(i))))
            .collect();
        named.push((id(50), a(9)));
        l.answered(entry, id(100), None, named);
        assert_eq!(l.next(now), vec![a(9)]);
    }

    fn id(b: u8) -> NodeId {
        let mut x = [0u8; 20];
        x[0] = b;
        NodeId(x)
    }

    #[test]
    fn converges_on_the_closest_answering_nodes() {
        let now = Instant::now();
        let mut l = Lookup::new(id(0));
        // A bootstrap address with no id, and far nodes.
        l.add(None, a(200));
        let first = l.next(now);
        assert_eq!(first, vec![a(200)]);
        assert!(!l.done());
        // It answers with 12 nodes at distances 1..=12 (id(i) is distance i).
        let named: Vec<_> = (1..=12).map(|i| (id(i), a(i))).collect();
        assert!(l.answered(a(200), id(250), Some(b"t".to_vec()), named));
        let q = l.next(now);
        assert_eq!(
            q,
            vec![a(1), a(2), a(3), a(4)],
            "closest first, ALPHA at once"
        );
        // 1 and 2 answer; 3 and 4 time out.
        l.answered(a(1), id(1), Some(b"t1".to_vec()), vec![]);
        l.answered(a(2), id(2), None, vec![]);
        l.failed(a(3));
        l.failed(a(4));
        let mut rounds = 0;
        while !l.done() {
            for addr in l.next(now) {
                let n = addr
                    .ip()
                    .to_string()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                l.answered(addr, id(n), Some(vec![n]), vec![]);
            }
            rounds += 1;
            assert!(rounds < 10);
        }
        // The 8 closest live: 1, 2, 5..=10; all answered; announce to the
        // ones with tokens.
        let to: Vec<SocketAddr> = l.announce_to().into_iter().map(|(a, _)| a).collect();
        assert_eq!(to, vec![a(1), a(5), a(6), a(7), a(8), a(9), a(10), a(200)]);
        // A stranger's answer is not ours.
        assert!(!l.answered(a(99), id(99), None, vec![]));
    }

    #[test]
    fn slow_queries_free_their_slot_and_the_list_is_bounded() {
        let now = Instant::now();
        let mut l = Lookup::new(id(0));
        for i in 1..=100 {
            l.add(Some(id(i)), a(i));
        }
        assert_eq!(l.cands.len(), MAX_CANDIDATES);
        let mut asked = l.next(now);
        assert_eq!(asked.len(), ALPHA);
        assert!(l.next(now).is_empty());
        // A second later the slow ones no longer block.
        let more = l.next(now + SLOW);
        assert_eq!(more.len(), ALPHA);
        asked.extend(more);
        for addr in asked {
            l.failed(addr);
        }
        // Bounded queries in total.
        let mut t = now;
        for _ in 0..100 {
            t += SLOW;
            for addr in l.next(t) {
                l.failed(addr);
            }
        }
        assert!(l.queries <= MAX_QUERIES);
        assert!(l.done());
    }
}
