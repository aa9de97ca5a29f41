//! Rationing the costly part of accepting peers, as pure code: the MSE key
//! exchange (two 768-bit modular exponentiations, about 0.5 ms) is granted
//! per source address from a token bucket, and from one global bucket, so
//! a flood of garbage openings cannot burn a core. Used by the listener
//! thread, which owns the only instance. Plain handshakes cost nothing and
//! are never rationed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Openings one address may start at once, and per second after that.
const PER_IP_BURST: f64 = 8.0;
const PER_IP_RATE: f64 = 2.0;
/// All addresses together: at most about a tenth of a core.
const GLOBAL_BURST: f64 = 64.0;
const GLOBAL_RATE: f64 = 200.0;
/// Addresses remembered; past this, full buckets (idle addresses) are
/// dropped first, then all.
const MAX_ADDRESSES: usize = 1024;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, burst: f64, rate: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }
}

pub(crate) struct MseBudget {
    per_ip: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl MseBudget {
    pub(crate) fn new(now: Instant) -> MseBudget {
        MseBudget {
            per_ip: HashMap::new(),
            global: Bucket::full(GLOBAL_BURST, now),
        }
    }

    /// Whether a connection from `ip` may run the MSE key exchange; takes a
    /// token from both buckets when it may.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.global.refill(GLOBAL_BURST, GLOBAL_RATE, now);
        if self.per_ip.len() >= MAX_ADDRESSES && !self.per_ip.contains_key(&ip) {
            self.per_ip.retain(|_, b| {
                b.refill(PER_IP_BURST, PER_IP_RATE, now);
                b.tokens < PER_IP_BURST
            });
            if self.per_ip.len() >= MAX_ADDRESSES {
                self.per_ip.clear();
            }
        }
        let b = self
            .per_ip
            .entry(ip)
            .or_insert_with(|| Bucket::full(PER_IP_BURST, now));
        b.refill(PER_IP_BURST, PER_IP_RATE, now);
        if b.tokens < 1.0 || self.global.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        self.global.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_address_gets_a_burst_then_a_trickle() {
        let t0 = Instant::now();
        let mut b = MseBudget::new(t0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let granted = (0..100).filter(|_| b.allow(ip, t0)).count();
        assert_eq!(granted, PER_IP_BURST as usize);
        assert!(!b.allow(ip, t0 + Duration::from_millis(100)));
        assert!(b.allow(ip, t0 + Duration::from_millis(600)));
        // Another address is not affected.
        assert!(b.allow([127, 0, 0, 2].into(), t0));
    }

    #[test]
    fn many_addresses_share_a_global_ceiling() {
        let t0 = Instant::now();
        let mut b = MseBudget::new(t0);
        let granted = (0..10_000u32)
            .filter(|&i| b.allow(IpAddr::from((0x7f00_0000 | i).to_be_bytes()), t0))
            .count();
        assert_eq!(granted, GLOBAL_BURST as usize);
        // A second later, about GLOBAL_RATE more.
        let later = t0 + Duration::from_secs(1);
        let more = (10_000..20_000u32)
            .filter(|&i| b.allow(IpAddr::from((0x7f00_0000 | i).to_be_bytes()), later))
            .count();
        assert_eq!(more, GLOBAL_BURST as usize);
        assert!(b.per_ip.len() <= MAX_ADDRESSES);
    }
}
