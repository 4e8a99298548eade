//! Hosts that could not be reached lately, skipped for a while.
//!
//! A dead mirror costs a connect timeout (or a refused connection) on every request. Every host
//! but the last of a registry has a fallback, so once one fails to answer it is skipped for a
//! back-off that starts at [`FIRST_BACKOFF`] and doubles while it keeps failing, up to
//! [`MAX_BACKOFF`]; an answer (any HTTP status) forgets it. The memory lives as long as the
//! registry client, so the agent's later passes skip the dead mirror too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a host that just failed is skipped.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// The longest a failing host is skipped before it is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Copy, Debug)]
struct Down {
    /// Skipped until then.
    until: Instant,
    /// The back-off that set `until`; the next failure doubles it.
    backoff: Duration,
}

/// Hosts (by origin, `https://mirror:5000`) in back-off.
#[derive(Debug, Default)]
pub struct Unreachable {
    hosts: Mutex<HashMap<String, Down>>,
}

impl Unreachable {
    /// How much longer `origin` is skipped; `None` if it may be tried.
    pub fn skipped_for(&self, origin: &str, now: Instant) -> Option<Duration> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let down = hosts.get(origin)?;
        (down.until > now).then(|| down.until - now)
    }

    /// `origin` failed to answer: skip it for the next back-off, which is returned.
    pub fn failed(&self, origin: &str, now: Instant) -> Duration {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let backoff = match hosts.get(origin) {
            // Requests that were under way when it failed: the back-off already runs.
            Some(d) if d.until > now => return d.backoff,
            // Failed again after its back-off ran out: twice as long.
            Some(d) => (d.backoff * 2).min(MAX_BACKOFF),
            None => FIRST_BACKOFF,
        };
        hosts.insert(
            origin.to_string(),
            Down {
                until: now + backoff,
                backoff,
            },
        );
        backoff
    }

    /// `origin` answered: it is tried normally again.
    pub fn answered(&self, origin: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.remove(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_while_failing_is_capped_and_resets_on_an_answer() {
        let u = Unreachable::default();
        let t0 = Instant::now();
        let m = "https://mirror:5000";
        assert_eq!(u.skipped_for(m, t0), None);
        assert_eq!(u.failed(m, t0), FIRST_BACKOFF);
        assert_eq!(u.skipped_for(m, t0), Some(FIRST_BACKOFF));
        assert_eq!(u.skipped_for("https://other", t0), None);
        // Requests in flight when it failed do not lengthen the back-off.
        assert_eq!(u.failed(m, t0 + Duration::from_secs(1)), FIRST_BACKOFF);
        // Tried again once the back-off ran out, and failing again: twice as long, then capped.
        let mut t = t0 + FIRST_BACKOFF;
        assert_eq!(u.skipped_for(m, t), None);
        let mut expected = FIRST_BACKOFF;
        for _ in 0..6 {
            expected = (expected * 2).min(MAX_BACKOFF);
            assert_eq!(u.failed(m, t), expected);
            t += expected;
        }
        assert_eq!(expected, MAX_BACKOFF);
        u.answered(m);
        assert_eq!(u.skipped_for(m, t0), None);
        assert_eq!(u.failed(m, t), FIRST_BACKOFF);
    }
}
