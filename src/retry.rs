//! How often and how patiently prepull tries again: one backoff type and the policy of every
//! retrying loop, so the whole retry budget can be read in one place.
//!
//! Three loops retry, nested on purpose:
//! - [`REQUEST`]: one registry request until it gets an answer worth keeping (a connection that
//!   failed before any answer, a `5xx`, a `429`). It never sees a body.
//! - [`BLOB`]: one blob until containerd commits it (a stream that broke mid-body, bad bytes,
//!   containerd restarting). Every blob attempt resumes from the bytes containerd already holds,
//!   and each opens the blob with a fresh [`REQUEST`] loop. Only attempts in a row that moved the
//!   ingest less than [`BLOB_PROGRESS`] count against the bound: one that brought more was
//!   progress, so a link that keeps breaking mid-layer still completes the layer.
//! - [`INGEST_LOCK`]: waiting for another writer of the same blob (containerd's ref lock), which
//!   is no failure: it is bounded by time ([`INGEST_LOCK_PATIENCE`]), not by attempts.
//!
//! Around them all, a pull outlives containerd restarting: when containerd stops answering, the
//! pull waits for it to answer again, up to [`CONTAINERD_RESTART_WAIT`] (`--containerd-restart-wait`)
//! each time, at most [`CONTAINERD_RESTARTS`] times in a row without progress between them, then
//! goes on where containerd's content stands: committed blobs and snapshots are kept, downloads
//! resume from their ingests' offsets, and an interrupted unpack starts that layer again.
//! containerd's systemd unit restarts it 5 s after a crash (`RestartSec=5`), and it takes a few
//! seconds to start: 30 s covers that with room.
//!
//! The bound per blob that follows, and is meant: a registry that keeps answering `503` (or
//! breaking connections before 64 KiB) gets `BLOB.attempts × REQUEST.attempts` = 5 × 4 = 20
//! `GET`s for one blob in a row without progress, with at most
//! `BLOB.attempts × REQUEST.worst_case_wait() + BLOB.worst_case_wait()` = 5 × 3.5 s + 3 s = 20.5 s
//! of backoff between them. A registry that asks for more with `Retry-After` is waited for up to
//! [`MAX_RETRY_AFTER`] per request retry, so at most 5 × 3 × 60 s + 3 s ≈ 15 min per blob. A
//! mirror with a fallback behind it is tried once per blob attempt ([`Backoff::once`]), so a dead
//! mirror adds 5 attempts per blob, not 20. containerd's own resolver tries a request 5 times
//! (500 ms to 5 s) and does not retry a broken body: prepull is as patient before the answer and
//! more patient after it, because a resumed blob loses nothing.

use std::time::Duration;

/// Exponential backoff with jitter: the wait after failed attempt `n` is drawn from up to
/// `first × 2ⁿ⁻¹`, capped at `max`; at most `attempts` attempts are made in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub first: Duration,
    /// The largest ceiling; doubling stops here.
    pub max: Duration,
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
}

/// A registry request: 4 attempts, 500 ms doubling to 5 s (containerd's resolver: 500 ms to 5 s).
pub const REQUEST: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(5),
    attempts: 4,
};

/// The longest `Retry-After` honoured per request retry: a registry's request to wait longer is
/// capped, so one busy registry cannot hold a pull (and its download slot) for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// One blob into containerd: 5 attempts in a row without progress (see [`BLOB_PROGRESS`]),
/// 200 ms doubling to 5 s. Each attempt resumes, so the first waits are short.
pub const BLOB: Backoff = Backoff {
    first: Duration::from_millis(200),
    max: Duration::from_secs(5),
    attempts: 5,
};

/// How much further an attempt must have got a blob's ingest for it to count as progress rather
/// than a failure: the next attempt, resuming from there, starts a fresh count of [`BLOB`]'s
/// attempts. A link that keeps breaking mid-layer then still brings the layer in, while a host
/// that keeps failing before this much is given up on: a blob of N bytes gets at most
/// 5 × (N / 64 KiB + 1) attempts. 64 KiB is what `--min-progress` asks of a request by default.
/// An attempt that starts the blob over (a kept blob, a host that ignores `Range`) is no
/// progress, however far it got.
pub const BLOB_PROGRESS: u64 = 64 << 10;

/// Waiting for another writer of the same blob: 50 ms doubling to 2 s, so a short CRI write is
/// noticed at once, and a long one is polled every 2 s or less. Not bounded by attempts: see
/// [`INGEST_LOCK_PATIENCE`].
pub const INGEST_LOCK: Backoff = Backoff {
    first: Duration::from_millis(50),
    max: Duration::from_secs(2),
    attempts: u32::MAX,
};

/// How long another writer of the same blob is waited for: it may be the kubelet pulling a large
/// layer over a slow link, so long, but bounded, so a writer that died holding the lock does not
/// stall the pull forever.
pub const INGEST_LOCK_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// How long a pull waits for containerd to answer again after it stopped answering (the
/// default of `--containerd-restart-wait`).
pub const CONTAINERD_RESTART_WAIT: Duration = Duration::from_secs(30);

/// How many times in a row one pull waits for containerd to come back without moving on in
/// between (a blob committed, a layer unpacked, or [`BLOB_PROGRESS`] more bytes downloaded): a
/// containerd that keeps going away before the pull gets anywhere fails the pull rather than
/// holding it forever, while a long pull outlives any number of restarts it makes progress
/// between.
pub const CONTAINERD_RESTARTS: u32 = 5;

/// How often a pull asks whether containerd is back.
pub const CONTAINERD_POLL: Duration = Duration::from_millis(250);

impl Backoff {
    /// This policy with a single attempt: for a host with a fallback behind it, which fails fast
    /// so the next host is tried.
    pub const fn once(self) -> Backoff {
        Backoff {
            attempts: 1,
            ..self
        }
    }

    /// The ceilings of the waits between attempts, in order (`attempts - 1` of them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        let mut ceiling = self.first;
        (1..self.attempts).map(move |_| {
            let this = ceiling;
            ceiling = (ceiling * 2).min(self.max);
            this
        })
    }

    /// The longest the waits between attempts can add up to (jitter only shortens them).
    pub fn worst_case_wait(&self) -> Duration {
        self.delays().sum()
    }

    /// The attempts of one retrying operation, from the first.
    pub fn start(self) -> Attempts {
        Attempts {
            policy: self,
            made: 1,
            ceiling: self.first,
        }
    }
}

/// The attempts of one operation under a [`Backoff`].
#[derive(Clone, Debug)]
pub struct Attempts {
    policy: Backoff,
    /// Attempts made so far, the one under way included.
    made: u32,
    /// The ceiling of the next wait.
    ceiling: Duration,
}

impl Attempts {
    /// The attempt under way, counted from 1.
    pub fn number(&self) -> u32 {
        self.made
    }

    /// Whether the attempt under way is the last one allowed.
    pub fn is_last(&self) -> bool {
        self.made >= self.policy.attempts
    }

    /// After a failed attempt: how long to wait before the next one (jittered), or `None` when
    /// the attempt that failed was the last.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.is_last() {
            return None;
        }
        let wait = jitter(self.ceiling);
        self.made += 1;
        self.ceiling = (self.ceiling * 2).min(self.policy.max);
        Some(wait)
    }
}

/// Full jitter: a random delay up to `d`, so many nodes retrying at once spread out. Floored at a
/// tenth of `d`, so a retry never fires at once.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>().max(0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_between_the_attempts_allowed() {
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(
            REQUEST.delays().map(ms).collect::<Vec<_>>(),
            [500, 1000, 2000]
        );
        assert_eq!(
            BLOB.delays().map(ms).collect::<Vec<_>>(),
            [200, 400, 800, 1600]
        );
        let capped = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(3),
            attempts: 5,
        };
        assert_eq!(
            capped.delays().map(ms).collect::<Vec<_>>(),
            [1000, 2000, 3000, 3000]
        );
        assert_eq!(REQUEST.once().delays().count(), 0);
        assert_eq!(
            INGEST_LOCK.delays().nth(10).map(ms),
            Some(2000),
            "the lock wait polls every 2 s at most"
        );
    }

    #[test]
    fn the_bound_per_blob_is_the_one_documented() {
        assert_eq!(REQUEST.worst_case_wait(), Duration::from_millis(3500));
        assert_eq!(BLOB.worst_case_wait(), Duration::from_millis(3000));
        assert_eq!(BLOB.attempts * REQUEST.attempts, 20);
        assert_eq!(
            REQUEST.worst_case_wait() * BLOB.attempts + BLOB.worst_case_wait(),
            Duration::from_millis(20_500)
        );
    }

    #[test]
    fn attempts_stop_at_the_last_and_each_wait_is_jittered_within_its_ceiling() {
        let mut attempts = REQUEST.start();
        let mut waits = Vec::new();
        while let Some(wait) = attempts.next_delay() {
            waits.push(wait);
        }
        assert_eq!(attempts.number(), 4);
        assert!(attempts.is_last());
        assert_eq!(waits.len(), 3);
        for (wait, ceiling) in waits.iter().zip(REQUEST.delays()) {
            assert!(
                *wait >= ceiling / 10 && *wait <= ceiling,
                "{wait:?} outside {ceiling:?}"
            );
        }
        let mut once = REQUEST.once().start();
        assert!(once.is_last());
        assert_eq!(once.next_delay(), None);
    }
}
