//! One read rate shared by every reader of a deep check: layer blobs and snapshot files alike,
//! so a check on a busy node takes its time instead of the node's disk.

use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Idle time credited to the next reads, at most: a short burst after a pause, no more.
const BURST: Duration = Duration::from_millis(100);
/// A wait is cut into slices this long, so that a cancelled check stops within one.
const SLICE: Duration = Duration::from_millis(50);

/// A byte rate limit shared across threads; readers block in [`RateLimiter::take`].
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: NonZeroU64,
    /// When the bytes granted so far are paid for.
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter granting `bytes_per_second`.
    pub fn new(bytes_per_second: NonZeroU64) -> RateLimiter {
        RateLimiter {
            bytes_per_second,
            next: Mutex::new(None),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> NonZeroU64 {
        self.bytes_per_second
    }

    /// Accounts for `bytes` just read, blocking the calling thread for as long as the rate
    /// requires, or until `cancel` is cancelled.
    pub fn take(&self, bytes: usize, cancel: &CancellationToken) {
        let until = Instant::now() + self.reserve(bytes, Instant::now());
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || cancel.is_cancelled() {
                return;
            }
            std::thread::sleep(left.min(SLICE));
        }
    }

    /// Books `bytes` at `now`; returns how long the reader must wait.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second.get() as f64);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = next.map_or(earliest, |n| n.max(earliest));
        let paid = start + cost;
        *next = Some(paid);
        paid.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_share_the_rate_and_idle_time_buys_only_a_short_burst() {
        let limiter = RateLimiter::new(NonZeroU64::new(1 << 20).unwrap());
        let t0 = Instant::now() + Duration::from_secs(10);
        // The first 100 ms worth of bytes pass at once (the burst), the rest waits.
        assert_eq!(limiter.reserve(1 << 20, t0), Duration::from_millis(900));
        // A second reader at the same instant queues behind the first.
        assert_eq!(limiter.reserve(1 << 19, t0), Duration::from_millis(1400));
        // After a long pause only the burst is credited again.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(limiter.reserve(1 << 20, later), Duration::from_millis(900));
    }
}
