//! Transfer rates over a sliding window: the session thread records its
//! running totals once a tick and reads bytes per second back. Pure: the
//! caller passes the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Totals (down, up) sampled over the last `window`.
pub(crate) struct Rates {
    window: Duration,
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Rates {
    pub(crate) fn new(window: Duration) -> Rates {
        Rates {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records running totals at `now`; returns (down, up) bytes per
    /// second over the window (0 until two samples span some time).
    /// Samples older than the window are dropped, so the cost per call is
    /// constant (one sample per tick).
    pub(crate) fn record(&mut self, now: Instant, down: u64, up: u64) -> (u64, u64) {
        self.samples.push_back((now, down, up));
        while self
            .samples
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
        let (Some(&(t0, d0, u0)), Some(&(t1, d1, u1))) =
            (self.samples.front(), self.samples.back())
        else {
            return (0, 0);
        };
        let dt = t1.duration_since(t0).as_secs_f64();
        let per_sec = |n: u64| if dt > 0.0 { (n as f64 / dt) as u64 } else { 0 };
        (
            per_sec(d1.saturating_sub(d0)),
            per_sec(u1.saturating_sub(u0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_reads_its_rate() {
        let mut r = Rates::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let mut last = (0, 0);
        for i in 0..100u64 {
            let t = t0 + Duration::from_millis(100 * i);
            last = r.record(t, i * 100_000, i * 10_000);
        }
        // 100 kB per 100 ms = 1 MB/s down, 100 kB/s up.
        assert_eq!(last, (1_000_000, 100_000));
        // Only the window's samples are kept.
        assert!(r.samples.len() <= 52);
    }

    #[test]
    fn no_span_no_rate_and_a_stall_decays_to_zero() {
        let mut r = Rates::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(r.record(t0, 1000, 0), (0, 0));
        r.record(t0 + Duration::from_secs(1), 2000, 0);
        // Nothing more arrives: after the window, the rate is zero.
        let later = r.record(t0 + Duration::from_secs(10), 2000, 0);
        assert_eq!(later, (0, 0));
    }
}
