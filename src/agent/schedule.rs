//! When the agent's passes run: after a random splay at start, then every interval plus a random
//! part of the splay, and within the splay of a list change, so a thousand nodes started (or
//! handed a new list) together do not hit a registry together.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The time of the next pass.
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    splay: Duration,
    next: Instant,
}

/// What [`Schedule::tick`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The pass is due.
    Due,
    /// Time to look at the list file (it may bring the pass sooner: [`Schedule::list_changed`]).
    Check,
    /// A stop was requested.
    Stop,
}

impl Schedule {
    /// The first pass comes up to `splay` from now.
    pub fn new(interval: Duration, splay: Duration) -> Schedule {
        Schedule {
            interval,
            splay,
            next: Instant::now() + random_up_to(splay),
        }
    }

    /// When the next pass is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// A new list was taken: its pass comes within the splay, unless one is due sooner.
    pub fn list_changed(&mut self) {
        self.next = self.next.min(Instant::now() + random_up_to(self.splay));
    }

    /// A pass ended: the next comes after the interval, plus up to the splay.
    pub fn pass_done(&mut self) {
        self.next = Instant::now() + self.interval + random_up_to(self.splay);
    }

    /// Returns at once when the pass is due; otherwise sleeps until it is or until the next
    /// check of the list file, at most `watch_every`, ending early when `stop` is cancelled.
    pub async fn tick(&self, watch_every: Duration, stop: &CancellationToken) -> Wake {
        if stop.is_cancelled() {
            return Wake::Stop;
        }
        let now = Instant::now();
        if now >= self.next {
            return Wake::Due;
        }
        let nap = watch_every.min(self.next - now);
        tokio::select! {
            () = tokio::time::sleep(nap) => Wake::Check,
            () = stop.cancelled() => Wake::Stop,
        }
    }
}

/// A random duration in `[0, max)`.
fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    max.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const WATCH: Duration = Duration::from_secs(2);

    /// Ticks until the pass is due or a stop, calling `check` at each check of the list.
    async fn until_due(
        s: &mut Schedule,
        stop: &CancellationToken,
        mut check: impl FnMut(&mut Schedule),
    ) -> Wake {
        loop {
            match s.tick(WATCH, stop).await {
                Wake::Check => check(s),
                other => return other,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_come_after_the_splay_then_every_interval_plus_splay() {
        let start = Instant::now();
        let mut s = Schedule::new(15 * MIN, 2 * MIN);
        assert!(s.next() >= start && s.next() < start + 2 * MIN);
        let stop = CancellationToken::new();
        assert_eq!(until_due(&mut s, &stop, |_| {}).await, Wake::Due);
        assert!(Instant::now() >= s.next());
        s.pass_done();
        let now = Instant::now();
        assert!(s.next() >= now + 15 * MIN && s.next() < now + 17 * MIN);
        until_due(&mut s, &stop, |_| {}).await;
        assert!(Instant::now() >= now + 15 * MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_change_brings_the_pass_within_the_splay() {
        let mut s = Schedule::new(15 * MIN, Duration::ZERO);
        s.pass_done();
        let start = Instant::now();
        let stop = CancellationToken::new();
        // The list changes at the third check (6 s in).
        let mut checks = 0;
        let wake = until_due(&mut s, &stop, |schedule| {
            checks += 1;
            if checks == 3 {
                schedule.list_changed();
            }
        })
        .await;
        assert_eq!(wake, Wake::Due);
        assert_eq!(Instant::now() - start, 3 * WATCH);
        // A change never delays a pass that is due sooner.
        let mut s = Schedule::new(15 * MIN, 10 * MIN);
        let due = s.next();
        s.list_changed();
        assert!(s.next() <= due);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_at_once() {
        let mut s = Schedule::new(15 * MIN, Duration::ZERO);
        s.pass_done();
        let stop = CancellationToken::new();
        let start = Instant::now();
        let trigger = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            trigger.cancel();
        });
        assert_eq!(until_due(&mut s, &stop, |_| {}).await, Wake::Stop);
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }
}
