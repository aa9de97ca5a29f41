//! Rate limits (`--max-download-rate`, `--max-upload-rate`): one budget
//! per direction shared by every peer thread of a session. [`Bucket`] is
//! the pure token bucket (the caller passes the clock); [`Throttle`] holds
//! one per direction behind a mutex, and a thread that charges it learns
//! how long to wait, then blocks for that long itself (no busy-waiting,
//! and the lock is never held while waiting). Does not read, write or
//! sleep: the connection does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least burst a bucket allows: one block, so a limit below 16 KiB/s still
/// moves whole blocks.
const MIN_BURST: u64 = 16 * 1024;

/// A token bucket: `rate` bytes a second, at most `burst` saved up. It
/// starts empty (no opening burst, which would skew a measured rate) and
/// goes into debt when charged more than it holds; the debt is the wait.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens held; negative while in debt.
    level: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket of `rate` bytes per second (at least 1), saving up at most
    /// a tenth of a second's worth (at least one block).
    pub(crate) fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1);
        Bucket {
            rate: rate as f64,
            burst: (rate / 10).max(MIN_BURST) as f64,
            level: 0.0,
            last: now,
        }
    }

    /// Takes `n` bytes at `now`; returns how long the caller must wait
    /// before moving more (zero while the bucket is not in debt).
    pub(crate) fn charge(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        self.level -= n as f64;
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }

    /// Most bytes worth moving in one go: about a twentieth of a second's
    /// worth, between one block and 256 KiB, so one read never buys a long
    /// wait.
    pub(crate) fn chunk(&self) -> usize {
        ((self.rate / 20.0) as usize).clamp(MIN_BURST as usize, 256 * 1024)
    }
}

/// The session's limits, one optional bucket per direction. Shared by
/// every peer thread through an `Arc` (a `Mutex` each: charging is a few
/// arithmetic operations, see md/DESIGN.md).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    down: Option<Mutex<Bucket>>,
    up: Option<Mutex<Bucket>>,
}

impl Throttle {
    /// Limits in bytes per second; `None` is unlimited.
    pub(crate) fn new(down: Option<u64>, up: Option<u64>) -> Throttle {
        let now = Instant::now();
        Throttle {
            down: down.map(|r| Mutex::new(Bucket::new(r, now))),
            up: up.map(|r| Mutex::new(Bucket::new(r, now))),
        }
    }

    /// `n` bytes were received; how long to wait before reading more.
    pub(crate) fn received(&self, n: usize) -> Duration {
        charge(&self.down, n)
    }

    /// `n` bytes are about to be sent; how long to wait first.
    pub(crate) fn sending(&self, n: usize) -> Duration {
        charge(&self.up, n)
    }

    /// Most bytes to read at once (`None`: no download limit).
    pub(crate) fn read_chunk(&self) -> Option<usize> {
        chunk(&self.down)
    }

    /// Most piece bytes to queue for sending at once (`None`: no upload
    /// limit).
    pub(crate) fn send_chunk(&self) -> Option<usize> {
        chunk(&self.up)
    }
}

fn charge(bucket: &Option<Mutex<Bucket>>, n: usize) -> Duration {
    match bucket {
        None => Duration::ZERO,
        // A poisoned lock only means another thread panicked mid-charge;
        // the bucket's numbers are still usable.
        Some(b) => b
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .charge(n as u64, Instant::now()),
    }
}

fn chunk(bucket: &Option<Mutex<Bucket>>) -> Option<usize> {
    bucket
        .as_ref()
        .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).chunk())
}

/// Parses a rate such as `500K`, `2M`, `1.5MiB` or `800000` into bytes per
/// second. Suffixes (any case) are binary multiples, as in aria2c and
/// curl: `K`, `KB`, `KiB` = 1024; `M`, `MB`, `MiB` = 1024²; `G`, `GB`,
/// `GiB` = 1024³; none or `B` = bytes. Zero and negatives are refused.
pub fn parse_rate(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let value: f64 = number.parse().ok()?;
    let unit: f64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = (value * unit).round();
    // `u64::MAX as f64` rounds up to 2^64, which does not fit: strictly
    // below it.
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_suffixes() {
        assert_eq!(parse_rate("500K"), Some(512_000));
        assert_eq!(parse_rate("2M"), Some(2 * 1024 * 1024));
        assert_eq!(parse_rate("1.5MiB"), Some(1_572_864));
        assert_eq!(parse_rate("1.5mb"), Some(1_572_864));
        assert_eq!(parse_rate("800000"), Some(800_000));
        assert_eq!(parse_rate("10 KiB"), Some(10_240));
        assert_eq!(parse_rate("1G"), Some(1 << 30));
        assert_eq!(parse_rate("16G"), Some(16 << 30));
        for bad in [
            "",
            "0",
            "0K",
            "-1M",
            "1.5.5M",
            "2X",
            "M",
            "1e9",
            "nan",
            "18446744073709551616",
            "17179869184G",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bucket_starts_empty_and_its_debt_is_the_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        // 500 KB at once: half a second of debt.
        let wait = b.charge(500_000, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Half a second later the debt is paid: the next charge waits
        // only for itself.
        let wait = b.charge(100_000, t0 + Duration::from_millis(500));
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn idle_time_saves_at_most_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        // An hour idle saves a tenth of a second, not an hour.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.charge(100_000, later), Duration::ZERO);
        assert!(b.charge(1, later) > Duration::ZERO);
        // A slow limit still lets one block through without waiting.
        let mut slow = Bucket::new(1000, t0);
        assert_eq!(
            slow.charge(16 * 1024, t0 + Duration::from_secs(60)),
            Duration::ZERO
        );
    }

    #[test]
    fn over_any_span_the_bytes_moved_match_the_rate() {
        // Threads that charge and then wait the answer move, together,
        // rate x time (plus one burst), however they interleave.
        let t0 = Instant::now();
        let mut b = Bucket::new(1024 * 1024, t0);
        let mut clock = [t0; 3];
        let mut moved = 0u64;
        let end = t0 + Duration::from_secs(10);
        let mut turn = 0;
        loop {
            let i = turn % 3;
            turn += 1;
            if clock[i] >= end {
                if clock.iter().all(|&c| c >= end) {
                    break;
                }
                continue;
            }
            let n = 16 * 1024 * (1 + i as u64);
            let wait = b.charge(n, clock[i]);
            moved += n;
            clock[i] += wait + Duration::from_micros(50);
        }
        let rate = moved as f64 / 10.0;
        let want = 1024.0 * 1024.0;
        assert!((rate - want).abs() / want < 0.02, "{rate} B/s");
    }

    #[test]
    fn chunks_stay_between_a_block_and_256_kib() {
        let t0 = Instant::now();
        assert_eq!(Bucket::new(1000, t0).chunk(), 16 * 1024);
        assert_eq!(Bucket::new(1024 * 1024, t0).chunk(), 52_428);
        assert_eq!(Bucket::new(1 << 30, t0).chunk(), 256 * 1024);
        let none = Throttle::default();
        assert_eq!(none.read_chunk(), None);
        assert_eq!(none.received(1 << 20), Duration::ZERO);
    }
}
