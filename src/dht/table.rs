//! The routing table of BEP 5: k = 8 nodes per bucket, buckets split only
//! around our own id, good / questionable / bad by the BEP's 15-minute
//! rule, a small replacement cache per bucket, and the buckets and nodes
//! that maintenance should refresh or ping. Pure: time comes in as an
//! argument, nothing is sent from here (that is `node`).
//!
//! Only nodes that answered one of our queries enter the table; a node
//! that merely queried us is never added (anyone can send a query from
//! any number of ports), though a known node that queries us stays good.
//! One node per IP address (libtorrent's default too): a host answering
//! from many ports cannot fill the table.

use super::id::NodeId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Nodes per bucket (BEP 5's k).
pub(crate) const K: usize = 8;
/// A node that answered (or queried us, having answered before) within
/// this long is good (BEP 5).
pub(crate) const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Unanswered queries in a row that make a node bad.
const MAX_FAILS: u8 = 2;
/// A bucket untouched this long is refreshed by a lookup inside it.
pub(crate) const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);
/// Least time between two pings of the same questionable node.
const PING_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Good,
    Questionable,
    Bad,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    last_response: Instant,
    last_query: Option<Instant>,
    fails: u8,
    pinged: Option<Instant>,
}

impl Node {
    fn new(id: NodeId, addr: SocketAddr, now: Instant) -> Node {
        Node {
            id,
            addr,
            last_response: now,
            last_query: None,
            fails: 0,
            pinged: None,
        }
    }

    pub(crate) fn status(&self, now: Instant) -> Status {
        if self.fails >= MAX_FAILS {
            return Status::Bad;
        }
        let recent = |t: Instant| now.saturating_duration_since(t) < GOOD_FOR;
        if recent(self.last_response) || self.last_query.is_some_and(recent) {
            Status::Good
        } else {
            Status::Questionable
        }
    }
}

struct Bucket {
    nodes: Vec<Node>,
    /// Nodes that answered while the bucket was full: they take the place
    /// of nodes that go bad. Newest last; at most `K`.
    spares: Vec<Node>,
    changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            nodes: Vec::new(),
            spares: Vec::new(),
            changed: now,
        }
    }
}

pub(crate) struct Table {
    own: NodeId,
    /// Bucket `i` < last holds ids sharing exactly `i` leading bits with
    /// ours; the last holds every id sharing at least `len - 1`.
    buckets: Vec<Bucket>,
}

/// What maintenance asks the node to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Chore {
    /// Ping a questionable node to learn whether it is still there.
    Ping(NodeId, SocketAddr),
    /// Look up a random id in a stale bucket (its shared-prefix length).
    Refresh(usize),
}

impl Table {
    pub(crate) fn new(own: NodeId, now: Instant) -> Table {
        Table {
            own,
            buckets: vec![Bucket::new(now)],
        }
    }

    fn index(&self, id: &NodeId) -> usize {
        self.own.common_prefix(id).min(self.buckets.len() - 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    fn find_addr(&mut self, addr: &SocketAddr) -> Option<&mut Node> {
        self.buckets
            .iter_mut()
            .flat_map(|b| b.nodes.iter_mut().chain(b.spares.iter_mut()))
            .find(|n| n.addr == *addr)
    }

    /// `id` at `addr` answered a query of ours.
    pub(crate) fn responded(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        if id == self.own {
            return;
        }
        if let Some(n) = self.find_addr(&addr) {
            // An address keeps the id it first answered with; a node that
            // changes ids is not trusted with a second place.
            if n.id == id {
                n.last_response = now;
                n.fails = 0;
                n.pinged = None;
                let i = self.index(&id);
                self.buckets[i].changed = now;
            }
            return;
        }
        let ip = addr.ip();
        if self
            .buckets
            .iter()
            .flat_map(|b| b.nodes.iter().chain(&b.spares))
            .any(|n| n.addr.ip() == ip)
        {
            return; // that host has its place already
        }
        loop {
            let i = self.index(&id);
            let last = i == self.buckets.len() - 1;
            let bucket = &mut self.buckets[i];
            if bucket.nodes.iter().any(|n| n.id == id) {
                return; // the same id from a second address: keep the first
            }
            if bucket.nodes.len() < K {
                bucket.nodes.push(Node::new(id, addr, now));
                bucket.changed = now;
                return;
            }
            if let Some(bad) = bucket
                .nodes
                .iter_mut()
                .find(|n| n.status(now) == Status::Bad)
            {
                *bad = Node::new(id, addr, now);
                bucket.changed = now;
                return;
            }
            if last && self.buckets.len() < 160 {
                self.split(now);
                continue;
            }
            let bucket = &mut self.buckets[i];
            if bucket.spares.iter().any(|n| n.id == id) {
                return;
            }
            if bucket.spares.len() >= K {
                bucket.spares.remove(0);
            }
            bucket.spares.push(Node::new(id, addr, now));
            return;
        }
    }

    /// Splits the last bucket: those of its nodes that share one more bit
    /// with us move to a new last bucket.
    fn split(&mut self, now: Instant) {
        let depth = self.buckets.len();
        let own = self.own;
        let old = self.buckets.last_mut().expect("at least one bucket");
        let (deeper, stay): (Vec<Node>, Vec<Node>) = std::mem::take(&mut old.nodes)
            .into_iter()
            .partition(|n| own.common_prefix(&n.id) >= depth);
        let (deeper_spares, stay_spares): (Vec<Node>, Vec<Node>) = std::mem::take(&mut old.spares)
            .into_iter()
            .partition(|n| own.common_prefix(&n.id) >= depth);
        old.nodes = stay;
        old.spares = stay_spares;
        let mut b = Bucket::new(now);
        b.nodes = deeper;
        b.spares = deeper_spares;
        self.buckets.push(b);
    }

    /// A node in the table queried us: it stays good (BEP 5).
    pub(crate) fn queried_by(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        if let Some(n) = self.find_addr(&addr) {
            if n.id == id {
                n.last_query = Some(now);
            }
        }
    }

    /// A query to `addr` went unanswered. A node that turns bad gives its
    /// place to the newest spare of its bucket.
    pub(crate) fn failed(&mut self, addr: SocketAddr, now: Instant) {
        for b in &mut self.buckets {
            if let Some(pos) = b.spares.iter().position(|n| n.addr == addr) {
                b.spares.remove(pos);
                return;
            }
            if let Some(pos) = b.nodes.iter().position(|n| n.addr == addr) {
                let n = &mut b.nodes[pos];
                n.fails = n.fails.saturating_add(1);
                if n.status(now) == Status::Bad {
                    if let Some(spare) = b.spares.pop() {
                        b.nodes[pos] = spare;
                        b.changed = now;
                    } else {
                        b.nodes.remove(pos);
                    }
                }
                return;
            }
        }
    }

    /// Up to `n` non-bad nodes closest to `target`, closest first.
    pub(crate) fn closest(
        &self,
        target: &NodeId,
        n: usize,
        now: Instant,
    ) -> Vec<(NodeId, SocketAddr)> {
        let mut all: Vec<&Node> = self
            .buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|n| n.status(now) != Status::Bad)
            .collect();
        all.sort_by_key(|node| node.id.distance(target));
        all.into_iter().take(n).map(|n| (n.id, n.addr)).collect()
    }

    /// Good nodes, for the state file.
    pub(crate) fn good(&self, now: Instant) -> Vec<(NodeId, SocketAddr)> {
        self.buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|n| n.status(now) == Status::Good)
            .map(|n| (n.id, n.addr))
            .collect()
    }

    /// What keeps the table fresh: pings for questionable nodes (at most
    /// `max_pings`, each node at most once a minute) and a refresh for
    /// every bucket unchanged for 15 minutes.
    pub(crate) fn chores(&mut self, now: Instant, max_pings: usize) -> Vec<Chore> {
        let mut out = Vec::new();
        let mut pings = 0;
        for (i, b) in self.buckets.iter_mut().enumerate() {
            for n in &mut b.nodes {
                if pings < max_pings
                    && n.status(now) == Status::Questionable
                    && n.pinged
                        .is_none_or(|t| now.saturating_duration_since(t) >= PING_EVERY)
                {
                    n.pinged = Some(now);
                    pings += 1;
                    out.push(Chore::Ping(n.id, n.addr));
                }
            }
            if now.saturating_duration_since(b.changed) >= REFRESH_AFTER {
                b.changed = now;
                out.push(Chore::Refresh(i));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Rng;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6881))
    }

    #[test]
    fn splits_only_around_own_id_and_keeps_k_per_bucket() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = Table::new(own, now);
        let mut rng = Rng::new(3);
        // 100 nodes in the far half (first bit differs from ours): one
        // bucket of K, the rest spares or dropped.
        for i in 0..100 {
            let id = own.random_in_bucket(0, &mut rng);
            t.responded(id, addr(i), now);
        }
        // and 3 near each depth 1..20
        for depth in 1..20 {
            for j in 0..3 {
                let id = own.random_in_bucket(depth, &mut rng);
                t.responded(id, addr(1000 + depth as u32 * 10 + j), now);
            }
        }
        assert_eq!(t.buckets[0].nodes.len(), K);
        assert_eq!(t.buckets[0].spares.len(), K);
        assert!(t.buckets.iter().all(|b| b.nodes.len() <= K));
        assert_eq!(t.len(), K + 19 * 3);
        // Closest first.
        let target = own;
        let c = t.closest(&target, 8, now);
        assert_eq!(c.len(), 8);
        for w in c.windows(2) {
            assert!(w[0].0.distance(&target) <= w[1].0.distance(&target));
        }
    }

    #[test]
    fn bad_nodes_give_way_to_spares_and_status_follows_the_clock() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = Table::new(own, now);
        let mut rng = Rng::new(9);
        let ids: Vec<NodeId> = (0..K + 1)
            .map(|_| own.random_in_bucket(0, &mut rng))
            .collect();
        // Fill the far bucket... but the first node splits nothing: the
        // last bucket splits while it holds our own prefix, so fill after
        // forcing depth with one near node.
        t.responded(own.random_in_bucket(5, &mut rng), addr(999), now);
        for (i, id) in ids.iter().enumerate() {
            t.responded(*id, addr(i as u32), now);
        }
        let far = t.index(&ids[0]);
        assert_eq!(t.buckets[far].nodes.len(), K);
        assert_eq!(t.buckets[far].spares.len(), 1);
        // Two unanswered queries: bad, replaced by the spare.
        t.failed(addr(0), now);
        assert_eq!(t.buckets[far].nodes[0].status(now), Status::Good);
        t.failed(addr(0), now);
        assert!(t.buckets[far].nodes.iter().any(|n| n.id == ids[K]));
        assert!(t.buckets[far].nodes.iter().all(|n| n.id != ids[0]));
        // After 15 minutes of silence, questionable; pinged once a minute.
        let later = now + GOOD_FOR + Duration::from_secs(1);
        assert_eq!(t.buckets[far].nodes[1].status(later), Status::Questionable);
        let chores = t.chores(later, 100);
        let pings = chores
            .iter()
            .filter(|c| matches!(c, Chore::Ping(..)))
            .count();
        assert_eq!(pings, t.len());
        assert!(chores.iter().any(|c| matches!(c, Chore::Refresh(_))));
        assert!(t
            .chores(later + Duration::from_secs(1), 100)
            .iter()
            .all(|c| !matches!(c, Chore::Ping(..))));
        // A node that queries us after having answered stays good.
        t.queried_by(ids[1], addr(1), later);
        assert_eq!(t.buckets[far].nodes[1].status(later), Status::Good);
        // An address cannot change its id, and a host with a place gets no
        // second one from another port.
        let other_port = SocketAddr::new(addr(3).ip(), 9999);
        t.responded(own.random_in_bucket(1, &mut rng), other_port, later);
        assert!(t
            .closest(&own, 200, later)
            .iter()
            .all(|(_, a)| *a != other_port));
        t.responded(NodeId([0xee; 20]), addr(2), later);
        assert!(t
            .closest(&NodeId([0xee; 20]), 100, later)
            .iter()
            .all(|(id, _)| id.0 != [0xee; 20]));
        // Our own id never enters.
        t.responded(own, addr(5000), later);
        assert!(t.closest(&own, 200, later).iter().all(|(id, _)| *id != own));
    }
}
