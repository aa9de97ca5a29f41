//! The address book: every peer address the session knows and what it
//! knows of it (candidate, live, waiting out a backoff, banned). Pure and
//! bounded: a tracker, PEX or DHT reply costs O(1) per address, candidates
//! are capped (the oldest untried go first), failed and departed addresses
//! are forgotten, and bans are capped too, so nothing grows over a long
//! seed. It does not connect to anything; the session asks it what to dial.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Candidates (untried or waiting to retry) kept at most.
pub(crate) const MAX_CANDIDATES: usize = 2000;
/// Banned addresses remembered at most (the oldest ban is forgotten first).
pub(crate) const MAX_BANS: usize = 4096;
/// Connection attempts to one address before it is forgotten.
const MAX_FAILURES: u8 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// In `ready`, to be dialled in turn.
    Ready,
    /// Waiting out a backoff (in `waiting`).
    Waiting,
    /// A connection to it exists (or is being made).
    Live,
}

struct Entry {
    status: Status,
    /// Where we first heard of it.
    origin: Origin,
    failures: u8,
    /// Bumped whenever the entry is queued, so stale queue items are
    /// recognised and skipped.
    generation: u32,
}

/// Where an address came from (the first source that named it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    /// A tracker's announce reply.
    Tracker,
    /// Another peer, by peer exchange (BEP 11).
    Pex,
    /// Given by the user (`--peer`, `AddOptions::peers`).
    Manual,
    /// A magnet link's `x.pe`.
    Magnet,
    /// A DHT lookup (BEP 5).
    Dht,
}

/// How a connection to an address ended, as far as the book cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It connected and then left, or it was ours to close: may come back
    /// through a tracker; forget it for now.
    Forget,
    /// It could not be reached or timed out: retry after a backoff, a few
    /// times.
    Retry,
    /// We closed it for a reason of ours, not the peer's (the download
    /// was paused): ready to dial again at once, no failure counted.
    Again,
}

#[derive(Default)]
pub(crate) struct AddressBook {
    entries: HashMap<SocketAddr, Entry>,
    ready: VecDeque<(SocketAddr, u32)>,
    waiting: BinaryHeap<Reverse<(Instant, SocketAddr, u32)>>,
    /// Ready + Waiting entries.
    candidates: usize,
    /// Ready entries.
    ready_now: usize,
    banned: HashSet<SocketAddr>,
    ban_order: VecDeque<SocketAddr>,
}

impl AddressBook {
    pub(crate) fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.banned.contains(addr)
    }

    /// Candidates known (ready to dial or waiting to retry).
    pub(crate) fn candidates(&self) -> usize {
        self.candidates
    }

    /// How many candidates may be dialled now. O(1) amortised.
    pub(crate) fn ready_count(&mut self, now: Instant) -> usize {
        self.promote(now);
        self.ready_now
    }

    fn is_current(&self, addr: &SocketAddr, generation: u32, status: Status) -> bool {
        self.entries
            .get(addr)
            .is_some_and(|e| e.generation == generation && e.status == status)
    }

    /// Adds a candidate (from a tracker, `--peer`, later PEX or the DHT).
    /// Known, live and banned addresses are ignored. At the cap, the oldest
    /// untried candidate is dropped to make room. O(1) amortised.
    pub(crate) fn add(&mut self, addr: SocketAddr, origin: Origin) -> bool {
        if self.banned.contains(&addr) || self.entries.contains_key(&addr) {
            return false;
        }
        if self.candidates >= MAX_CANDIDATES && !self.drop_oldest_ready() {
            return false;
        }
        self.entries.insert(
            addr,
            Entry {
                status: Status::Ready,
                origin,
                failures: 0,
                generation: 0,
            },
        );
        self.ready.push_back((addr, 0));
        self.candidates += 1;
        self.ready_now += 1;
        self.compact();
        true
    }

    fn drop_oldest_ready(&mut self) -> bool {
        while let Some((addr, generation)) = self.ready.pop_front() {
            if self.is_current(&addr, generation, Status::Ready) {
                self.entries.remove(&addr);
                self.candidates -= 1;
                self.ready_now -= 1;
                return true;
            }
        }
        false
    }

    /// Moves candidates whose backoff has ended to the ready queue.
    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((at, addr, generation))) = self.waiting.peek().copied() {
            if at > now {
                break;
            }
            self.waiting.pop();
            if let Some(e) = self.entries.get_mut(&addr) {
                if e.generation == generation && e.status == Status::Waiting {
                    e.status = Status::Ready;
                    e.generation = e.generation.wrapping_add(1);
                    self.ready.push_back((addr, e.generation));
                    self.ready_now += 1;
                }
            }
        }
    }

    /// The next address to dial, now marked live.
    pub(crate) fn next(&mut self, now: Instant) -> Option<SocketAddr> {
        self.promote(now);
        while let Some((addr, generation)) = self.ready.pop_front() {
            if self.is_current(&addr, generation, Status::Ready) {
                let e = self.entries.get_mut(&addr).expect("current entry");
                e.status = Status::Live;
                self.candidates -= 1;
                self.ready_now -= 1;
                return Some(addr);
            }
        }
        None
    }

    /// Where `addr` came from, while the book knows it.
    pub(crate) fn origin(&self, addr: &SocketAddr) -> Option<Origin> {
        self.entries.get(addr).map(|e| e.origin)
    }

    /// The peer at `addr` completed its handshake.
    pub(crate) fn connected(&mut self, addr: &SocketAddr) {
        if let Some(e) = self.entries.get_mut(addr) {
            e.failures = 0;
        }
    }

    /// A connection we dialled has ended (a ban is [`AddressBook::ban`]).
    pub(crate) fn closed(&mut self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        // Only a live entry is ours to change: the address may have been
        // banned and forgotten, or re-added, meanwhile.
        if self
            .entries
            .get(&addr)
            .is_none_or(|e| e.status != Status::Live)
        {
            return;
        }
        match outcome {
            Outcome::Forget => {
                self.entries.remove(&addr);
            }
            Outcome::Again => {
                let Some(e) = self.entries.get_mut(&addr) else {
                    return;
                };
                e.status = Status::Ready;
                e.generation = e.generation.wrapping_add(1);
                self.ready.push_back((addr, e.generation));
                self.candidates += 1;
                self.ready_now += 1;
                self.compact();
            }
            Outcome::Retry => {
                let Some(e) = self.entries.get_mut(&addr) else {
                    return;
                };
                e.failures += 1;
                if e.failures >= MAX_FAILURES || self.candidates >= MAX_CANDIDATES {
                    self.entries.remove(&addr);
                    return;
                }
                e.status = Status::Waiting;
                e.generation = e.generation.wrapping_add(1);
                let backoff = Duration::from_secs(2u64 << e.failures.min(6));
                self.waiting
                    .push(Reverse((now + backoff, addr, e.generation)));
                self.candidates += 1;
                self.compact();
            }
        }
    }

    /// Bans an address (also one we never dialled: an incoming peer).
    pub(crate) fn ban(&mut self, addr: SocketAddr) {
        if let Some(e) = self.entries.remove(&addr) {
            if e.status != Status::Live {
                self.candidates -= 1;
            }
            if e.status == Status::Ready {
                self.ready_now -= 1;
            }
        }
        if self.banned.insert(addr) {
            self.ban_order.push_back(addr);
            if self.ban_order.len() > MAX_BANS {
                if let Some(old) = self.ban_order.pop_front() {
                    self.banned.remove(&old);
                }
            }
        }
    }

    /// Drops stale queue items once they outnumber live ones, keeping both
    /// queues O(entries) and every operation O(1) amortised.
    fn compact(&mut self) {
        let limit = 2 * MAX_CANDIDATES + 64;
        if self.ready.len() > limit {
            let entries = &self.entries;
            self.ready.retain(|(a, g)| {
                entries
                    .get(a)
                    .is_some_and(|e| e.generation == *g && e.status == Status::Ready)
            });
        }
        if self.waiting.len() > limit {
            let entries = &self.entries;
            self.waiting.retain(|Reverse((_, a, g))| {
                entries
                    .get(a)
                    .is_some_and(|e| e.generation == *g && e.status == Status::Waiting)
            });
        }
    }

    /// Sizes of the internal tables, for tests of the bounds.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.entries.len(),
            self.ready.len(),
            self.waiting.len(),
            self.banned.len(),
        )
    }
}

/// Whether an address that `from` (a peer by PEX, a DHT node in its
/// `values`) told us of is one to dial: never an unspecified, multicast or
/// broadcast address or port 0; a loopback one only from a loopback
/// source, a private or link-local one only from a source on such a
/// network (no stranger may make rtc probe its own host or LAN).
pub(crate) fn worth_dialling(a: &SocketAddr, from: &SocketAddr) -> bool {
    use std::net::IpAddr;
    fn local(ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                let s = v6.segments()[0];
                (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
            }
        }
    }
    let (ip, src) = (a.ip().to_canonical(), from.ip().to_canonical());
    if a.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return false;
        }
    }
    if ip.is_loopback() {
        return src.is_loopback();
    }
    if local(&ip) {
        return local(&src) || src.is_loopback();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn a(i: u32) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (i >> 16))),
            i as u16,
        )
    }

    #[test]
    fn candidates_are_deduplicated_and_dialled_once() {
        let mut b = AddressBook::default();
        let now = Instant::now();
        assert!(b.add(a(1), Origin::Tracker));
        assert!(!b.add(a(1), Origin::Tracker));
        assert!(b.add(a(2), Origin::Tracker));
        assert_eq!(b.next(now), Some(a(1)));
        // Live: a tracker listing it again changes nothing.
        assert!(!b.add(a(1), Origin::Tracker));
        assert_eq!(b.ready_count(now), 1);
        assert_eq!(b.next(now), Some(a(2)));
        assert_eq!(b.next(now), None);
        assert_eq!(b.candidates(), 0);
        assert_eq!(b.ready_count(now), 0);
    }

    #[test]
    fn closed_by_a_pause_is_ready_again_without_a_failure() {
        let mut b = AddressBook::default();
        let now = Instant::now();
        b.add(a(1), Origin::Tracker);
        for _ in 0..MAX_FAILURES + 2 {
            assert_eq!(b.next(now), Some(a(1)));
            b.closed(a(1), Outcome::Again, now);
            assert_eq!((b.candidates(), b.ready_count(now)), (1, 1));
        }
        // Still there, never counted as failing.
        assert_eq!(b.next(now), Some(a(1)));
        assert_eq!(b.candidates(), 0);
    }

    #[test]
    fn failures_back_off_then_are_forgotten() {
        let mut b = AddressBook::default();
        let t0 = Instant::now();
        b.add(a(1), Origin::Tracker);
        let mut t = t0;
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(b.next(t), Some(a(1)));
            b.closed(a(1), Outcome::Retry, t);
            assert_eq!(b.next(t), None, "retried before its backoff");
            t += Duration::from_secs(1000);
            assert_eq!(b.ready_count(t), 1);
        }
        assert_eq!(b.next(t), Some(a(1)));
        b.closed(a(1), Outcome::Retry, t);
        assert_eq!(b.next(t + Duration::from_secs(10_000)), None);
        assert_eq!(b.sizes().0, 0, "forgotten after {MAX_FAILURES} failures");
        // A tracker may bring it back later.
        assert!(b.add(a(1), Origin::Tracker));
    }

    #[test]
    fn bans_stick_and_are_bounded() {
        let mut b = AddressBook::default();
        let now = Instant::now();
        b.add(a(1), Origin::Tracker);
        assert_eq!(b.next(now), Some(a(1)));
        b.ban(a(1));
        assert!(b.is_banned(&a(1)));
        assert!(!b.add(a(1), Origin::Tracker));
        for i in 10..10 + MAX_BANS as u32 + 100 {
            b.ban(a(i));
        }
        assert_eq!(b.sizes().3, MAX_BANS);
        assert!(!b.is_banned(&a(1)), "the oldest ban is forgotten first");
    }

    #[test]
    fn departed_peers_are_forgotten() {
        let mut b = AddressBook::default();
        let now = Instant::now();
        b.add(a(1), Origin::Tracker);
        b.next(now);
        b.closed(a(1), Outcome::Forget, now);
        assert_eq!(b.sizes(), (0, 0, 0, 0));
    }

    #[test]
    fn the_cap_drops_the_oldest_untried() {
        let mut b = AddressBook::default();
        let now = Instant::now();
        for i in 0..MAX_CANDIDATES as u32 + 10 {
            b.add(a(i), Origin::Tracker);
        }
        assert_eq!(b.candidates(), MAX_CANDIDATES);
        // The first ten went; the newest are kept.
        assert_eq!(b.next(now), Some(a(10)));
    }

    #[test]
    fn a_million_candidates_cost_well_under_a_second() {
        let mut b = AddressBook::default();
        let now = Instant::now();
        let t = Instant::now();
        for i in 0..1_000_000 {
            b.add(a(i), Origin::Tracker);
            if i % 1000 == 0 {
                // Dial and fail a few, so every queue is exercised.
                if let Some(x) = b.next(now) {
                    b.closed(x, Outcome::Retry, now);
                }
            }
        }
        let took = t.elapsed();
        assert!(took < Duration::from_millis(900), "took {took:?}");
        let (entries, ready, waiting, _) = b.sizes();
        assert!(entries <= MAX_CANDIDATES, "{entries} entries");
        assert!(ready <= 2 * MAX_CANDIDATES + 65, "{ready} queued");
        assert!(waiting <= 2 * MAX_CANDIDATES + 65, "{waiting} waiting");
    }

    #[test]
    fn addresses_heard_of_are_filtered_by_what_they_point_at_and_who_said() {
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let public = sa("203.0.113.9:6881");
        let lan = sa("192.168.1.5:6881");
        let lo = sa("127.0.0.1:6881");
        // From a public peer: only public addresses.
        assert!(worth_dialling(&sa("198.51.100.1:51413"), &public));
        assert!(!worth_dialling(&sa("10.255.255.1:9"), &public));
        assert!(!worth_dialling(&sa("127.0.0.1:22"), &public));
        assert!(!worth_dialling(&sa("[fe80::1]:6881"), &public));
        // Never: unspecified, multicast, broadcast, port 0.
        for bad in [
            "0.0.0.0:43999",
            "[::]:1",
            "224.0.0.1:6881",
            "255.255.255.255:6881",
        ] {
            assert!(!worth_dialling(&sa(bad), &lo), "{bad}");
        }
        assert!(!worth_dialling(&sa("198.51.100.1:0"), &public));
        // A LAN peer may name LAN peers; a loopback peer, loopback ones.
        assert!(worth_dialling(&sa("192.168.1.7:6881"), &lan));
        assert!(!worth_dialling(&sa("127.0.0.1:6881"), &lan));
        assert!(worth_dialling(&sa("127.0.0.1:6882"), &lo));
        assert!(worth_dialling(&sa("[::ffff:127.0.0.1]:6882"), &lo));
    }
}
