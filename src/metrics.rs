//! The process's Prometheus counters: what pulls, registry requests and the agent's checks did
//! since the process started.
//!
//! Events are counted where they happen (a registry answer in [`crate::registry`], a blob's
//! bytes in [`crate::pull`], a pass's verify in [`crate::agent`]) into one set of counters per
//! process, [`metrics`]. What is true *now* (images by state, free space, the list in force) is
//! not counted: the agent's endpoint reads it from its status on each scrape and hands it to
//! [`encode`] as a [`Collector`].
//!
//! Labels are bounded: registry hosts (those the list and `hosts.toml` name), methods, status
//! codes, error kinds and results. Never a tag, a blob, a message or a pod.

use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::kind::ErrorKind;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A pull's bounds in seconds: a warm check takes milliseconds, a large image over a slow link
/// tens of minutes.
const PULL_SECONDS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1200.0, 2400.0,
];

/// How a pull ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PullResult {
    /// Something was downloaded or unpacked.
    Pulled,
    /// The node had it all: nothing was downloaded.
    Warm,
    /// It failed.
    Failed,
}

impl PullResult {
    fn as_str(self) -> &'static str {
        match self {
            PullResult::Pulled => "pulled",
            PullResult::Warm => "warm",
            PullResult::Failed => "failed",
        }
    }
}

/// How the mending of an image found damaged ended, in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepairResult {
    /// The image is whole again.
    Mended,
    /// The node cannot mend it (its bad content is held elsewhere).
    Blocked,
    /// The pull that would mend it failed; the next pass tries again.
    Failed,
}

impl RepairResult {
    fn as_str(self) -> &'static str {
        match self {
            RepairResult::Mended => "mended",
            RepairResult::Blocked => "blocked",
            RepairResult::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    result: &'static str,
    /// The failure's kind; `none` when it did not fail.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabel {
    registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    method: String,
    /// The HTTP status, or `error` when no answer came (connection, TLS, timeout).
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The process's counters; see the module's documentation.
#[derive(Debug)]
pub struct Metrics {
    pulls: Family<PullLabels, Counter>,
    pull_seconds: Family<ResultLabel, Histogram, fn() -> Histogram>,
    downloaded: Family<RegistryLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    rate_limit: Family<RegistryLabel, Gauge>,
    rate_limit_limit: Family<RegistryLabel, Gauge>,
    budget_waits: Family<RegistryLabel, Counter>,
    space_refusals: Counter,
    list_errors: Counter,
    damage: Family<KindLabel, Counter>,
    repairs: Family<ResultLabel, Counter>,
}

fn pull_histogram() -> Histogram {
    Histogram::new(PULL_SECONDS)
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            pulls: Family::default(),
            pull_seconds: Family::new_with_constructor(pull_histogram),
            downloaded: Family::default(),
            requests: Family::default(),
            rate_limit: Family::default(),
            rate_limit_limit: Family::default(),
            budget_waits: Family::default(),
            space_refusals: Counter::default(),
            list_errors: Counter::default(),
            damage: Family::default(),
            repairs: Family::default(),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// A pull ended after `seconds`; `kind` is the failure's.
    pub fn pull(&self, result: PullResult, kind: Option<ErrorKind>, seconds: f64) {
        let labels = PullLabels {
            result: result.as_str(),
            kind: kind.map_or("none", ErrorKind::as_str),
        };
        self.pulls.get_or_create(&labels).inc();
        let result = ResultLabel {
            result: result.as_str(),
        };
        self.pull_seconds.get_or_create(&result).observe(seconds);
    }

    /// The counter of blob bytes from `registry`, to count a blob's chunks as they arrive with
    /// one atomic add each (the label is looked up once per blob, not per chunk).
    pub fn downloaded_from(&self, registry: &str) -> Counter {
        let labels = RegistryLabel {
            registry: registry.to_string(),
        };
        self.downloaded.get_or_create(&labels).clone()
    }

    /// `registry` answered a `method` request with `code` (`None`: no answer came).
    pub fn request(&self, registry: &str, method: &str, code: Option<u16>) {
        let labels = RequestLabels {
            registry: registry.to_string(),
            method: method.to_string(),
            code: code.map_or_else(|| "error".to_string(), |c| c.to_string()),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// `registry` said this many requests are left in its rate-limit window, of `limit`.
    pub fn rate_limit(&self, registry: &str, remaining: u64, limit: Option<u64>) {
        let labels = RegistryLabel {
            registry: registry.to_string(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.rate_limit.get_or_create(&labels).set(gauge(remaining));
        if let Some(limit) = limit {
            self.rate_limit_limit
                .get_or_create(&labels)
                .set(gauge(limit));
        }
    }

    /// A manifest was not fetched from `registry`: its budget is down to the reserve.
    pub fn budget_wait(&self, registry: &str) {
        let labels = RegistryLabel {
            registry: registry.to_string(),
        };
        self.budget_waits.get_or_create(&labels).inc();
    }

    /// A pull was refused because the image would not fit in the free space.
    pub fn space_refused(&self) {
        self.space_refusals.inc();
    }

    /// The list file could not be used.
    pub fn list_error(&self) {
        self.list_errors.inc();
    }

    /// A verify found a problem of `kind` in a listed image.
    pub fn damage_found(&self, kind: &'static str) {
        self.damage.get_or_create(&KindLabel { kind }).inc();
    }

    /// A pass tried to mend an image found damaged.
    pub fn repair(&self, result: RepairResult) {
        let labels = ResultLabel {
            result: result.as_str(),
        };
        self.repairs.get_or_create(&labels).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "prepull_pulls",
            "Image pulls by result (pulled, warm, failed) and failure kind",
            self.pulls.clone(),
        );
        registry.register(
            "prepull_pull_duration_seconds",
            "How long image pulls took, by result",
            self.pull_seconds.clone(),
        );
        registry.register(
            "prepull_downloaded_bytes",
            "Blob bytes downloaded, by the image's registry",
            self.downloaded.clone(),
        );
        registry.register(
            "prepull_registry_requests",
            "Requests to registry endpoints (mirrors included), by host, method and HTTP \
             status (error: no answer)",
            self.requests.clone(),
        );
        registry.register(
            "prepull_registry_rate_limit_remaining",
            "The last ratelimit-remaining a registry sent (pulls left in its window)",
            self.rate_limit.clone(),
        );
        registry.register(
            "prepull_registry_rate_limit_limit",
            "The last ratelimit-limit a registry sent (pulls allowed per window)",
            self.rate_limit_limit.clone(),
        );
        registry.register(
            "prepull_registry_budget_waits",
            "Manifests not fetched because the registry's announced budget was down to \
             --registry-budget-reserve (the image waits for a later pass)",
            self.budget_waits.clone(),
        );
        registry.register(
            "prepull_space_refusals",
            "Pulls refused because the image would leave less than --min-free-space free",
            self.space_refusals.clone(),
        );
        registry.register(
            "prepull_list_load_errors",
            "Times the prepull list file could not be used (the previous one stayed in force)",
            self.list_errors.clone(),
        );
        registry.register(
            "prepull_verify_damage",
            "Problems the periodic verify found in listed images, by kind",
            self.damage.clone(),
        );
        registry.register(
            "prepull_repairs",
            "Attempts to mend a listed image found damaged, by result",
            self.repairs.clone(),
        );
    }
}

/// The process's counters and what `now` reports, as OpenMetrics text.
pub fn encode(now: impl Collector) -> String {
    let mut registry = Registry::default();
    metrics().register(&mut registry);
    registry.register_collector(Box::new(now));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing;

    impl Collector for Nothing {
        fn encode(
            &self,
            _: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            Ok(())
        }
    }

    #[test]
    fn counters_carry_bounded_labels_and_base_units() {
        let m = metrics();
        m.pull(PullResult::Failed, Some(ErrorKind::Unauthorized), 0.3);
        m.request("registry.test.invalid", "GET", Some(429));
        m.request("registry.test.invalid", "HEAD", None);
        m.downloaded_from("registry.test.invalid").inc_by(1234);
        let text = encode(Nothing);
        assert!(text.contains(r#"prepull_pulls_total{result="failed",kind="unauthorized"}"#));
        assert!(text.contains(
            r#"prepull_registry_requests_total{registry="registry.test.invalid",method="GET",code="429"}"#
        ));
        assert!(text.contains(r#"method="HEAD",code="error"}"#));
        assert!(
            text.contains(r#"prepull_pull_duration_seconds_bucket{le="2400.0",result="failed"}"#)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
