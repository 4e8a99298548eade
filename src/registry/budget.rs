//! A registry's request budget, as it announces it: `ratelimit-limit: 100;w=21600` and
//! `ratelimit-remaining: 76;w=21600` (Docker Hub's pull quota, counted per IP or account over a
//! rolling window; every manifest `GET` counts, `HEAD`s and blobs do not).
//!
//! A node's budget is shared with the kubelet's own pulls (of images no list names), and those
//! are the ones a pod waits for. So when what a host has left falls to the reserve kept for them
//! (`--registry-budget-reserve`, a share of the announced limit or a number of requests),
//! prepull stops fetching manifests from that host: the image waits for a later pass, reported
//! as `rate-limited` with the figures. `HEAD` checks of the images the node holds go on (they are
//! free, and each answer says the budget again), as does a pull already past its manifests. What
//! a host said is forgotten after its window (an hour when it names none), so a stale low figure
//! never holds a registry closed.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use super::lock;
use crate::metrics::metrics;

/// How long a figure without a window (`;w=`) is believed.
const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// What is kept of a registry's announced budget for others (the kubelet's own pulls).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetReserve {
    /// A share of the announced limit, in percent.
    Percent(f64),
    /// A number of requests.
    Requests(u64),
}

impl Default for BudgetReserve {
    fn default() -> Self {
        BudgetReserve::Percent(20.0)
    }
}

impl BudgetReserve {
    /// Requests kept of a budget of `limit`; `None` when a share is asked and no limit is known.
    fn requests(self, limit: Option<u64>) -> Option<u64> {
        match self {
            BudgetReserve::Requests(n) => Some(n),
            BudgetReserve::Percent(p) => limit.map(|l| (l as f64 * p / 100.0).ceil() as u64),
        }
    }

    /// Whether nothing is kept: the budget is spent down to what the registry allows.
    fn is_off(self) -> bool {
        matches!(self, BudgetReserve::Requests(0)) || self == BudgetReserve::Percent(0.0)
    }
}

impl fmt::Display for BudgetReserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetReserve::Percent(p) => write!(f, "{p}%"),
            BudgetReserve::Requests(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for BudgetReserve {
    type Err = String;

    /// `20%` of the announced limit, or a number of requests (`10`); `0` keeps nothing.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if (0.0..=100.0).contains(&v) => Ok(BudgetReserve::Percent(v)),
                _ => Err(format!("{s:?}: a share must be from 0% to 100%")),
            },
            None => s.parse::<u64>().map(BudgetReserve::Requests).map_err(|_| {
                format!("{s:?}: give a share of the limit (20%) or a number of requests (10)")
            }),
        }
    }
}

/// What a host last said of its budget.
#[derive(Clone, Copy, Debug)]
struct Announced {
    limit: Option<u64>,
    remaining: u64,
    window: Option<Duration>,
    at: Instant,
}

/// A host whose budget is down to the reserve: what it said, and what is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Low {
    /// Requests left, as last announced.
    pub remaining: u64,
    /// The budget per window, when announced.
    pub limit: Option<u64>,
    /// The window, when announced.
    pub window: Option<Duration>,
    /// How long ago it was said.
    pub age: Duration,
    /// Requests kept for others.
    pub kept: u64,
}

impl fmt::Display for Low {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests left", self.remaining)?;
        if let Some(limit) = self.limit {
            write!(f, " of {limit}")?;
        }
        if let Some(w) = self.window {
            write!(f, " per {}", humantime::format_duration(w))?;
        }
        write!(
            f,
            " (ratelimit-remaining, {}s ago), within the {} kept for the kubelet's own pulls",
            self.age.as_secs(),
            self.kept
        )
    }
}

/// The budgets hosts announced, and the reserve kept of each.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    reserve: BudgetReserve,
    seen: Mutex<HashMap<String, Announced>>,
}

impl Budgets {
    pub(super) fn new(reserve: BudgetReserve) -> Budgets {
        Budgets {
            reserve,
            seen: Mutex::default(),
        }
    }

    /// Notes what `host`'s answer says of its budget, if anything.
    pub(super) fn note(&self, host: &str, headers: &HeaderMap) {
        let Some((remaining, remaining_window)) = header(headers, "ratelimit-remaining") else {
            return;
        };
        let limit = header(headers, "ratelimit-limit");
        let announced = Announced {
            limit: limit.map(|(l, _)| l),
            remaining,
            window: remaining_window.or(limit.and_then(|(_, w)| w)),
            at: Instant::now(),
        };
        lock(&self.seen).insert(host.to_string(), announced);
        metrics().rate_limit(host, remaining, announced.limit);
        tracing::debug!(host, remaining, limit = announced.limit, "registry budget");
    }

    /// The last `ratelimit-remaining` `host` sent, while it is believed.
    pub(super) fn remaining(&self, host: &str) -> Option<u64> {
        self.current(host).map(|a| a.remaining)
    }

    /// Whether `host`'s budget is down to the reserve, with the figures.
    pub(super) fn low(&self, host: &str) -> Option<Low> {
        if self.reserve.is_off() {
            return None;
        }
        let a = self.current(host)?;
        let kept = self.reserve.requests(a.limit)?;
        (a.remaining <= kept).then(|| Low {
            remaining: a.remaining,
            limit: a.limit,
            window: a.window,
            age: a.at.elapsed(),
            kept,
        })
    }

    /// The reserve, as configured.
    pub(super) fn reserve(&self) -> BudgetReserve {
        self.reserve
    }

    fn current(&self, host: &str) -> Option<Announced> {
        let a = *lock(&self.seen).get(host)?;
        (a.at.elapsed() < a.window.unwrap_or(DEFAULT_WINDOW)).then_some(a)
    }
}

/// Whether an answer says the budget is spent (`ratelimit-remaining: 0`) without saying when to
/// come back (no `Retry-After`, as Docker Hub's pull-limit `429`): not worth asking again within
/// the same pull (the budget returns as its window moves on, hours later). A `Retry-After` is the
/// registry's word that asking then is fine, and is honoured.
pub(super) fn spent(headers: &HeaderMap) -> bool {
    header(headers, "ratelimit-remaining").is_some_and(|(n, _)| n == 0)
        && !headers.contains_key(reqwest::header::RETRY_AFTER)
}

/// `name: N;w=SECONDS` (the window optional, other parameters ignored).
fn header(headers: &HeaderMap, name: &str) -> Option<(u64, Option<Duration>)> {
    let value = headers.get(name)?.to_str().ok()?;
    let mut parts = value.split(';');
    let n = parts.next()?.trim().parse::<u64>().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some((n, window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(limit: Option<&'static str>, remaining: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(l) = limit {
            h.insert("ratelimit-limit", HeaderValue::from_static(l));
        }
        h.insert("ratelimit-remaining", HeaderValue::from_static(remaining));
        h
    }

    #[test]
    fn docker_hubs_headers_are_read_with_their_window() {
        let budgets = Budgets::new(BudgetReserve::Percent(20.0));
        budgets.note("hub", &answer(Some("100;w=21600"), "21;w=21600"));
        assert_eq!(budgets.remaining("hub"), Some(21));
        assert_eq!(budgets.low("hub"), None, "21 left is above the 20 kept");
        budgets.note("hub", &answer(Some("100;w=21600"), "20;w=21600"));
        let low = budgets.low("hub").expect("20 left is the reserve");
        assert_eq!((low.remaining, low.limit, low.kept), (20, Some(100), 20));
        assert_eq!(low.window, Some(Duration::from_secs(21600)));
        assert!(
            low.to_string().contains("20 requests left of 100 per 6h"),
            "{low}"
        );
        assert_eq!(budgets.low("other"), None);
    }

    #[test]
    fn a_share_needs_a_limit_and_a_number_does_not() {
        let share = Budgets::new(BudgetReserve::Percent(20.0));
        share.note("r", &answer(None, "3"));
        assert_eq!(share.low("r"), None, "no limit announced: no share of it");
        let count = Budgets::new(BudgetReserve::Requests(5));
        count.note("r", &answer(None, "3"));
        assert_eq!(count.low("r").map(|l| l.kept), Some(5));
        let off = Budgets::new(BudgetReserve::Requests(0));
        off.note("r", &answer(Some("100"), "0"));
        assert_eq!(
            off.low("r"),
            None,
            "a reserve of 0 never holds a registry back"
        );
    }

    #[test]
    fn figures_are_forgotten_after_their_window() {
        let budgets = Budgets::new(BudgetReserve::Requests(5));
        budgets.note("r", &answer(Some("100;w=0"), "1;w=0"));
        assert_eq!(budgets.low("r"), None, "a window of 0 s is over at once");
    }

    #[test]
    fn only_a_remaining_of_zero_is_spent() {
        assert!(spent(&answer(Some("100;w=21600"), "0;w=21600")));
        let mut told_when = answer(Some("100;w=21600"), "0;w=21600");
        told_when.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("1"));
        assert!(!spent(&told_when));
        assert!(!spent(&answer(Some("100;w=21600"), "1;w=21600")));
        assert!(!spent(&HeaderMap::new()));
    }

    #[test]
    fn garbage_is_ignored_not_believed() {
        let budgets = Budgets::new(BudgetReserve::Requests(5));
        for bad in ["", "many", "-1", "1e9", ";w=10", "99999999999999999999999"] {
            let mut h = HeaderMap::new();
            h.insert("ratelimit-remaining", HeaderValue::from_str(bad).unwrap());
            budgets.note("r", &h);
            assert_eq!(budgets.remaining("r"), None, "{bad:?}");
        }
    }

    #[test]
    fn reserves_parse_as_a_share_or_a_count() {
        assert_eq!("20%".parse(), Ok(BudgetReserve::Percent(20.0)));
        assert_eq!("10".parse(), Ok(BudgetReserve::Requests(10)));
        assert!("120%".parse::<BudgetReserve>().is_err());
        assert!("lots".parse::<BudgetReserve>().is_err());
    }
}
