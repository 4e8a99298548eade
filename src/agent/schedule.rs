//! When the agent's passes run: after a splay at start, then every interval plus a part of the
//! splay, and within the splay of a list change, so a thousand nodes started (or handed a new
//! list) together do not hit a registry together.
//!
//! Without a node name each wait is random, drawn anew every time. With one (`--node-name`, the
//! DaemonSet's `spec.nodeName`) the node has a **slot**: a fixed point of the splay window taken
//! from a SHA-256 of its name, and its passes start when the wall clock (Unix time modulo the
//! splay) reaches that point. A fleet started together then spreads over the window as random
//! waits would (names hash uniformly: N nodes are N uniform points, not an even grid, so a burst
//! as large as random waits give remains possible), but each node keeps its place relative to
//! the others at every interval, and a restarted agent comes back to the same place. Each wait adds a small random jitter (at
//! most [`JITTER_SHARE`] of the splay, wrapped inside the window): two clusters whose nodes
//! share names (`worker-1`) and a registry would otherwise arrive in the same instant.

use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most a named node's wait is moved at random, as a share of the splay.
pub const JITTER_SHARE: f64 = 0.01;

/// A node's place in the splay window, from its name.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    node: String,
    fraction: f64,
}

impl Slot {
    /// The slot of the node called `name`: the first 53 bits of SHA-256 of the name, as a
    /// fraction of the window in `[0, 1)`. Stable across releases and machines.
    pub fn for_node(name: &str) -> Slot {
        let hash = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        let bits = u64::from_be_bytes(first) >> 11;
        Slot {
            node: name.to_string(),
            fraction: bits as f64 / (1u64 << 53) as f64,
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where in the window the node's passes start, as a fraction of it, in `[0, 1)`.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Where in a window of `splay` the node's passes start.
    pub fn offset(&self, splay: Duration) -> Duration {
        splay.mul_f64(self.fraction)
    }
}

/// The time of the next pass.
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    splay: Duration,
    slot: Option<Slot>,
    /// The wall clock (since the Unix epoch) at `origin`: the slot follows the wall clock so
    /// that nodes line up with each other, read once so that it advances with the monotonic
    /// clock (and with tokio's paused clock in tests).
    wall_at_origin: Duration,
    origin: Instant,
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
    /// The first pass comes within `splay` from now: at the node's slot when it has one (see
    /// the module's documentation), else after a random part of it.
    pub fn new(interval: Duration, splay: Duration, slot: Option<Slot>) -> Schedule {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Schedule::with_wall_clock(interval, splay, slot, wall)
    }

    /// As [`Schedule::new`], with the wall clock now at `wall` since the Unix epoch.
    pub fn with_wall_clock(
        interval: Duration,
        splay: Duration,
        slot: Option<Slot>,
        wall: Duration,
    ) -> Schedule {
        let origin = Instant::now();
        let mut schedule = Schedule {
            interval,
            splay,
            slot,
            wall_at_origin: wall,
            origin,
            next: origin,
        };
        schedule.next = origin + schedule.wait_from(origin);
        schedule
    }

    /// When the next pass is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// The node's slot, if its name gave it one.
    pub fn slot(&self) -> Option<&Slot> {
        self.slot.as_ref()
    }

    /// A new list was taken: its pass comes within the splay (at the node's slot), unless one
    /// is due sooner.
    pub fn list_changed(&mut self) {
        let now = Instant::now();
        self.next = self.next.min(now + self.wait_from(now));
    }

    /// A pass ended: the next comes after the interval, plus up to the splay (the wait until
    /// the node's slot).
    pub fn pass_done(&mut self) {
        let earliest = Instant::now() + self.interval;
        self.next = earliest + self.wait_from(earliest);
    }

    /// How long from `at` until a pass may start: 0 without a splay; the time until the
    /// node's slot (jittered) comes round on the wall clock; else a random part of the splay.
    fn wait_from(&self, at: Instant) -> Duration {
        if self.splay.is_zero() {
            return Duration::ZERO;
        }
        let Some(slot) = &self.slot else {
            return random_up_to(self.splay);
        };
        let wall = self.wall_at_origin + at.saturating_duration_since(self.origin);
        let jitter = random_up_to(self.splay.mul_f64(JITTER_SHARE));
        until_slot(slot.offset(self.splay) + jitter, self.splay, wall)
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

/// How long from the wall time `wall` (since the Unix epoch) until the wall clock modulo `window`
/// reaches `phase` (itself taken modulo `window`): in `[0, window)`.
fn until_slot(phase: Duration, window: Duration, wall: Duration) -> Duration {
    let window_ns = window.as_nanos();
    if window_ns == 0 {
        return Duration::ZERO;
    }
    let phase_ns = phase.as_nanos() % window_ns;
    let into = wall.as_nanos() % window_ns;
    let wait = (phase_ns + window_ns - into) % window_ns;
    // Below `window`, itself a Duration.
    Duration::from_nanos(wait as u64)
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
        let mut s = Schedule::new(15 * MIN, 2 * MIN, None);
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
        let mut s = Schedule::new(15 * MIN, Duration::ZERO, None);
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
        let mut s = Schedule::new(15 * MIN, 10 * MIN, None);
        let due = s.next();
        s.list_changed();
        assert!(s.next() <= due);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_at_once() {
        let mut s = Schedule::new(15 * MIN, Duration::ZERO, None);
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

    /// The wall clock's phase in a window of `splay` at `at`, for a schedule made at `wall`
    /// (tokio's clock paused, so `origin` is the test's start).
    fn phase_at(at: Instant, origin: Instant, wall: Duration, splay: Duration) -> Duration {
        let wall = wall + (at - origin);
        Duration::from_nanos((wall.as_nanos() % splay.as_nanos()) as u64)
    }

    /// Whether `phase` is the slot's offset, or up to the jitter after it (wrapping round the
    /// window).
    fn at_slot(phase: Duration, slot: &Slot, splay: Duration) -> bool {
        let after = (phase.as_nanos() + splay.as_nanos() - slot.offset(splay).as_nanos())
            % splay.as_nanos();
        after <= splay.mul_f64(JITTER_SHARE).as_nanos()
    }

    #[test]
    fn a_name_has_the_same_slot_everywhere() {
        // SHA-256("node-01") begins 70997b5d616f4da4: its top 53 bits over 2^53.
        assert_eq!(Slot::for_node("node-01").fraction(), 0.43984194783973607);
        assert_eq!(
            Slot::for_node("ip-10-0-1-23.ec2.internal").fraction(),
            0.31633855933544386
        );
        assert_eq!(Slot::for_node("node-01"), Slot::for_node("node-01"));
        assert_eq!(
            Slot::for_node("node-01").offset(Duration::from_secs(100)),
            Duration::from_secs(100).mul_f64(0.43984194783973607)
        );
    }

    #[test]
    fn names_spread_evenly_over_the_window() {
        // 1000 node names as a cloud names them, into 10 buckets of the window: 100 each
        // expected, binomial standard deviation 9.5; 3.2 of them either way is the tolerance.
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let name = format!("ip-10-0-{}-{}.ec2.internal", i / 256, i % 256);
            let fraction = Slot::for_node(&name).fraction();
            assert!((0.0..1.0).contains(&fraction), "{name}: {fraction}");
            buckets[(fraction * 10.0) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((70..=130).contains(n), "bucket {i} holds {n}: {buckets:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_started_together_spreads_its_first_passes_over_the_splay() {
        let splay = 10 * MIN;
        // Any start time: the waits are the slots' distances from it, round the window.
        let wall = Duration::from_secs(1_767_225_600) + Duration::from_millis(123_456);
        let start = Instant::now();
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let slot = Slot::for_node(&format!("node-{i:04}"));
            let s = Schedule::with_wall_clock(15 * MIN, splay, Some(slot.clone()), wall);
            let wait = s.next() - start;
            assert!(wait < splay, "node-{i:04} waits {wait:?}");
            assert!(at_slot(
                phase_at(s.next(), start, wall, splay),
                &slot,
                splay
            ));
            buckets[(wait.as_secs_f64() / splay.as_secs_f64() * 10.0) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((70..=130).contains(n), "bucket {i} holds {n}: {buckets:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_named_node_keeps_its_slot_every_interval_and_after_a_restart() {
        let (interval, splay) = (15 * MIN, 2 * MIN);
        let slot = Slot::for_node("node-07");
        let wall = Duration::from_secs(1_767_225_600);
        let origin = Instant::now();
        let mut s = Schedule::with_wall_clock(interval, splay, Some(slot.clone()), wall);
        assert!(at_slot(
            phase_at(s.next(), origin, wall, splay),
            &slot,
            splay
        ));
        let stop = CancellationToken::new();
        // Passes of different lengths: each next pass is still at the slot, between the
        // interval and the interval plus the splay after the last one ended.
        for pass_length in [3u64, 47, 0, 118, 61] {
            until_due(&mut s, &stop, |_| {}).await;
            tokio::time::advance(Duration::from_secs(pass_length)).await;
            s.pass_done();
            let now = Instant::now();
            assert!(s.next() >= now + interval && s.next() < now + interval + splay);
            assert!(at_slot(
                phase_at(s.next(), origin, wall, splay),
                &slot,
                splay
            ));
        }
        // A list change brings the pass to the slot's next turn.
        s.list_changed();
        assert!(s.next() < Instant::now() + splay);
        assert!(at_slot(
            phase_at(s.next(), origin, wall, splay),
            &slot,
            splay
        ));
        // The agent restarted 7 minutes and 13 seconds later keeps the slot.
        let later = wall + Duration::from_secs(433);
        let restarted = Schedule::with_wall_clock(interval, splay, Some(slot.clone()), later);
        let now = Instant::now();
        assert!(restarted.next() < now + splay);
        assert!(at_slot(
            phase_at(restarted.next(), now, later, splay),
            &slot,
            splay
        ));
    }

    #[test]
    fn the_wait_until_a_slot_stays_within_the_window() {
        let window = Duration::from_secs(120);
        assert_eq!(
            until_slot(Duration::from_secs(30), window, Duration::from_secs(1200)),
            Duration::from_secs(30)
        );
        assert_eq!(
            until_slot(Duration::from_secs(30), window, Duration::from_secs(1230)),
            Duration::ZERO
        );
        assert_eq!(
            until_slot(Duration::from_secs(30), window, Duration::from_secs(1231)),
            Duration::from_secs(119)
        );
        // A jittered phase past the window's end wraps to its start.
        assert_eq!(
            until_slot(Duration::from_secs(121), window, Duration::from_secs(1200)),
            Duration::from_secs(1)
        );
        assert_eq!(
            until_slot(
                Duration::from_secs(5),
                Duration::ZERO,
                Duration::from_secs(7)
            ),
            Duration::ZERO
        );
    }
}
