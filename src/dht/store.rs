//! What the node keeps for others and how much it answers: announce
//! tokens that rotate every 5 minutes, the bounded store of peers others
//! announced, and the per-address and overall answer budgets that keep a
//! query flood from turning rtc into an amplifier. Pure: time comes in as
//! an argument.

use crate::types::InfoHash;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A token is valid for the secret it was made with and the one after.
pub(crate) const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);
/// Torrents we store peers for at most.
pub(crate) const MAX_TORRENTS: usize = 2000;
/// Peers stored per torrent at most.
pub(crate) const MAX_PEERS: usize = 100;
/// Peers handed out in one `get_peers` answer: 16 × 8 bytes keeps the
/// answer near the size of an 8-node answer.
pub(crate) const MAX_VALUES_OUT: usize = 16;
/// An announce is forgotten after this long (announcers renew every 15
/// minutes or so).
const PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// Tokens for `announce_peer`: a hash of a secret and the querier's
/// address, so only a node that asked `get_peers` from that address can
/// announce, and nothing per querier is stored.
pub(crate) struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated: Instant,
}

impl Tokens {
    pub(crate) fn new(secret: [u8; 16], now: Instant) -> Tokens {
        Tokens {
            current: secret,
            previous: secret,
            rotated: now,
        }
    }

    /// Replaces the secret when 5 minutes have passed; `fresh` is the new
    /// secret's entropy (none: keep the current one).
    pub(crate) fn rotate(&mut self, now: Instant, fresh: impl FnOnce() -> Option<[u8; 16]>) {
        if now.saturating_duration_since(self.rotated) >= TOKEN_ROTATION {
            if let Some(new) = fresh() {
                self.previous = self.current;
                self.current = new;
                self.rotated = now;
            }
        }
    }

    fn make_with(secret: &[u8; 16], ip: IpAddr) -> [u8; 8] {
        let d = match ip {
            IpAddr::V4(v4) => crate::hash::sha1_parts(&[secret, &v4.octets()]),
            IpAddr::V6(v6) => crate::hash::sha1_parts(&[secret, &v6.octets()]),
        };
        let mut t = [0u8; 8];
        t.copy_from_slice(&d[..8]);
        t
    }

    pub(crate) fn make(&self, ip: IpAddr) -> [u8; 8] {
        Tokens::make_with(&self.current, ip)
    }

    pub(crate) fn check(&self, ip: IpAddr, token: &[u8]) -> bool {
        token == Tokens::make_with(&self.current, ip)
            || token == Tokens::make_with(&self.previous, ip)
    }
}

/// Peers others announced, by torrent. Bounded in torrents and in peers
/// per torrent; expired entries go at `prune`.
#[derive(Default)]
pub(crate) struct PeerStore {
    torrents: HashMap<InfoHash, Vec<(SocketAddr, Instant)>>,
}

impl PeerStore {
    /// Stores (or renews) `peer` for `info_hash`. Returns false when the
    /// store is full (a new torrent beyond `MAX_TORRENTS`; a torrent's
    /// oldest peer makes room for a new one).
    pub(crate) fn announce(&mut self, info_hash: InfoHash, peer: SocketAddr, now: Instant) -> bool {
        if !self.torrents.contains_key(&info_hash) && self.torrents.len() >= MAX_TORRENTS {
            return false;
        }
        let peers = self.torrents.entry(info_hash).or_default();
        if let Some(p) = peers.iter_mut().find(|(a, _)| *a == peer) {
            p.1 = now;
            return true;
        }
        if peers.len() >= MAX_PEERS {
            let oldest = (0..peers.len())
                .min_by_key(|&i| peers[i].1)
                .expect("a full list is not empty");
            peers.swap_remove(oldest);
        }
        peers.push((peer, now));
        true
    }

    /// Up to `MAX_VALUES_OUT` peers of `info_hash` (the newest), of the
    /// querier's address family.
    pub(crate) fn peers(&self, info_hash: &InfoHash, v6: bool, now: Instant) -> Vec<SocketAddr> {
        let Some(list) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        list.iter()
            .rev()
            .filter(|(a, t)| a.is_ipv6() == v6 && now.saturating_duration_since(*t) < PEER_TTL)
            .take(MAX_VALUES_OUT)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Forgets expired announces; linear in what is stored.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.torrents.retain(|_, peers| {
            peers.retain(|(_, t)| now.saturating_duration_since(*t) < PEER_TTL);
            !peers.is_empty()
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.torrents.values().map(Vec::len).sum()
    }
}

/// Answers per second: a token bucket per source address (at most
/// `MAX_SOURCES` tracked; when full, the table is cleared, which at worst
/// gives a flood one fresh burst) and one for all sources together.
pub(crate) struct AnswerBudget {
    per_source: HashMap<IpAddr, (f64, Instant)>,
    all: (f64, Instant),
}

/// Answers per second to one address, and the burst it may use.
const PER_SOURCE_RATE: f64 = 50.0;
const PER_SOURCE_BURST: f64 = 100.0;
/// Answers per second to everybody.
pub(crate) const ALL_RATE: f64 = 400.0;
const ALL_BURST: f64 = 400.0;
const MAX_SOURCES: usize = 4096;

impl AnswerBudget {
    pub(crate) fn new(now: Instant) -> AnswerBudget {
        AnswerBudget {
            per_source: HashMap::new(),
            all: (ALL_BURST, now),
        }
    }

    fn take(bucket: &mut (f64, Instant), rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(bucket.1).as_secs_f64();
        bucket.0 = (bucket.0 + dt * rate).min(burst);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a query from `ip` may be answered now (and spends it).
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_source.len() >= MAX_SOURCES && !self.per_source.contains_key(&ip) {
            self.per_source.clear();
        }
        let src = self.per_source.entry(ip).or_insert((PER_SOURCE_BURST, now));
        if !AnswerBudget::take(src, PER_SOURCE_RATE, PER_SOURCE_BURST, now) {
            return false;
        }
        AnswerBudget::take(&mut self.all, ALL_RATE, ALL_BURST, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_for_one_rotation_and_are_bound_to_the_address() {
        let now = Instant::now();
        let mut t = Tokens::new([1; 16], now);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let tok = t.make(ip);
        assert!(t.check(ip, &tok));
        assert!(!t.check(other, &tok));
        t.rotate(now + Duration::from_secs(10), || Some([2; 16]));
        assert!(t.check(ip, &tok), "no rotation before 5 minutes");
        t.rotate(now + TOKEN_ROTATION, || Some([2; 16]));
        assert!(t.check(ip, &tok), "the previous secret still counts");
        t.rotate(now + TOKEN_ROTATION * 2, || Some([3; 16]));
        assert!(!t.check(ip, &tok));
    }

    #[test]
    fn the_store_is_bounded_and_expires() {
        let now = Instant::now();
        let mut s = PeerStore::default();
        let h = InfoHash([7; 20]);
        for i in 0..(MAX_PEERS as u16 + 50) {
            assert!(s.announce(h, SocketAddr::from(([10, 0, 0, 1], 1000 + i)), now));
        }
        assert_eq!(s.len(), MAX_PEERS);
        assert_eq!(s.peers(&h, false, now).len(), MAX_VALUES_OUT);
        assert!(s.peers(&h, true, now).is_empty());
        for i in 0..MAX_TORRENTS as u32 + 10 {
            let mut ih = [0u8; 20];
            ih[..4].copy_from_slice(&i.to_be_bytes());
            ih[19] = 1;
            let ok = s.announce(InfoHash(ih), SocketAddr::from(([10, 0, 0, 2], 1)), now);
            assert_eq!(ok, i < MAX_TORRENTS as u32 - 1);
        }
        s.prune(now + PEER_TTL);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn answers_are_rate_limited_per_source_and_overall() {
        let now = Instant::now();
        let mut b = AnswerBudget::new(now);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let allowed = (0..1000).filter(|_| b.allow(ip, now)).count();
        assert_eq!(allowed, PER_SOURCE_BURST as usize);
        // Many sources: the overall budget holds.
        let mut b = AnswerBudget::new(now);
        let allowed = (0..10_000u32)
            .filter(|i| b.allow(IpAddr::from(i.to_be_bytes()), now))
            .count();
        assert_eq!(allowed, ALL_BURST as usize);
        // It refills with time.
        let later = now + Duration::from_secs(1);
        assert!(b.allow(ip, later));
    }
}
