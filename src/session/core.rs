//! What the torrents of one session share, held by every download's
//! session thread through an `Arc`: the hashing pool, the writer thread's
//! inbox, the listener's routing table, the budget of peer connections,
//! the open-file cache and our peer id. Owns none of the threads that use it; `Session` starts and
//! stops them.

use super::listener::Router;
use crate::storage::{FileCache, WriteCmd};
use crate::types::PeerId;
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub(crate) struct Core {
    /// Verifies SHA-1 for every torrent; sized once.
    pub(crate) pool: rayon::ThreadPool,
    /// Incoming handshakes reach the right torrent through this.
    pub(crate) router: Router,
    /// The port the listener bound, if listening.
    pub(crate) port: Option<u16>,
    pub(crate) peer_id: PeerId,
    pub(crate) connections: Arc<Budget>,
    pub(crate) files: Arc<FileCache>,
    /// The session's single writer thread (bounded: a download blocks
    /// when the disk is 8 pieces behind).
    pub(crate) writer: Sender<WriteCmd>,
    /// The session's DHT node, shared by its public torrents.
    pub(crate) dht: Option<crate::dht::Dht>,
    /// Bytes of pieces assembled but not yet written, across downloads
    /// (each download adds and subtracts its own; see `PIPELINE_BYTES`).
    pub(crate) pipeline: AtomicU64,
    /// The session's download and upload rate limits, charged by every
    /// peer thread.
    pub(crate) throttle: Arc<crate::throttle::Throttle>,
    /// Spare piece buffers: the writer gives, peer threads take.
    pub(crate) buffers: crate::buffers::Buffers,
}

/// Bytes of pieces between "assembled" and "written" across the session's
/// downloads: a session of many busy downloads stays within this (plus at
/// most one piece each), not within N times a download's share.
pub(crate) const PIPELINE_BYTES: u64 = 16 * 1024 * 1024;

/// A count of things in use (peer threads) against a cap, shared by the
/// session threads of all torrents. Taking is a compare-and-swap; a
/// [`Permit`] gives its unit back when dropped, wherever that happens (the
/// peer thread holds it until it ends).
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// One unit, or `None` at the cap.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Permit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(Arc::clone(self)))
    }

    /// Units in use now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One unit of a [`Budget`], returned on drop.
pub(crate) struct Permit(Arc<Budget>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts threads of the hashing pool that have ended, so that shutting a
/// session down can wait for them: rayon ends a pool's threads after the
/// pool is dropped, without joining them.
#[derive(Default)]
pub(crate) struct Exits {
    ended: Mutex<usize>,
    cond: Condvar,
}

impl Exits {
    pub(crate) fn ended_one(&self) {
        if let Ok(mut n) = self.ended.lock() {
            *n += 1;
            self.cond.notify_all();
        }
    }

    /// Waits until `n` have ended, at most `timeout`; whether they did.
    pub(crate) fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut ended) = self.ended.lock() else {
            return false;
        };
        while *ended < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.cond.wait_timeout(ended, left) {
                Ok((g, _)) => ended = g,
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_never_hands_out_more_than_its_cap() {
        let b = Budget::new(2);
        let one = b.take().unwrap();
        let two = b.take().unwrap();
        assert!(b.take().is_none());
        assert_eq!(b.used(), 2);
        drop(one);
        let three = b.take().unwrap();
        assert!(b.take().is_none());
        drop((two, three));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_budget_holds_under_contention() {
        let b = Budget::new(5);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (b, peak) = (Arc::clone(&b), Arc::clone(&peak));
                s.spawn(move || {
                    for _ in 0..1000 {
                        if let Some(p) = b.take() {
                            peak.fetch_max(b.used(), Ordering::AcqRel);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Acquire) <= 5);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn exits_wait_is_bounded() {
        let e = Exits::default();
        e.ended_one();
        assert!(e.wait_for(1, Duration::from_millis(10)));
        assert!(!e.wait_for(2, Duration::from_millis(10)));
    }
}
