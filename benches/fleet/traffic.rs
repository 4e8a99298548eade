//! What a counting proxy saw, reduced to what the report shows: requests by method and kind of
//! path, bytes, requests over time (per 100 ms and per second), per source, the first request
//! of each source, and how often each blob was fetched and how many of those fetches overlapped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testbench::Record;

/// What a request asked for, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `/v2/`: the API check.
    Base,
    Manifest,
    Blob,
    /// A token endpoint.
    Token,
    Other,
}

impl Kind {
    pub fn of(path: &str) -> Kind {
        let path = path.split('?').next().unwrap_or(path);
        if path == "/v2/" || path == "/v2" {
            Kind::Base
        } else if path.contains("/manifests/") {
            Kind::Manifest
        } else if path.contains("/blobs/") {
            Kind::Blob
        } else if path.contains("token") {
            Kind::Token
        } else {
            Kind::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Base => "/v2/",
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Token => "token",
            Kind::Other => "other",
        }
    }
}

/// Requests and response body bytes, by method and kind.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub by: BTreeMap<(String, Kind), (u64, u64)>,
    /// Requests answered with a status of 400 or more, by status.
    pub errors: BTreeMap<u16, u64>,
}

impl Tally {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Tally {
        let mut t = Tally::default();
        for r in records {
            let e =
                t.by.entry((r.method.clone(), Kind::of(&r.path)))
                    .or_default();
            e.0 += 1;
            e.1 += r.response_body_bytes;
            if r.status >= 400 {
                *t.errors.entry(r.status).or_default() += 1;
            }
        }
        t
    }

    pub fn requests(&self) -> u64 {
        self.by.values().map(|(n, _)| n).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.by.values().map(|(_, b)| b).sum()
    }

    pub fn count(&self, method: &str, kind: Option<Kind>) -> u64 {
        self.by
            .iter()
            .filter(|((m, k), _)| m == method && kind.is_none_or(|want| *k == want))
            .map(|(_, (n, _))| n)
            .sum()
    }

    /// `3 HEAD manifest, 12 GET blob, …` in a fixed order.
    pub fn summary(&self) -> String {
        if self.by.is_empty() {
            return "none".into();
        }
        self.by
            .iter()
            .map(|((m, k), (n, _))| format!("{n} {m} {}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Requests beginning in each `bucket` from `origin`, over `span`.
pub fn series(records: &[Record], origin: Instant, bucket: Duration, span: Duration) -> Vec<u64> {
    let n = (span.as_nanos() / bucket.as_nanos()).max(1) as usize;
    let mut out = vec![0u64; n];
    for r in records {
        let Some(since) = r.at.checked_duration_since(origin) else {
            continue;
        };
        let i = (since.as_nanos() / bucket.as_nanos()) as usize;
        if i < n {
            out[i] += 1;
        }
    }
    out
}

/// The most requests that began within any window of `window` (a sliding window over the
/// requests' start times), and where it began (since `origin`).
pub fn peak_in_window(records: &[Record], origin: Instant, window: Duration) -> (u64, Duration) {
    let mut starts: Vec<Instant> = records.iter().map(|r| r.at).collect();
    starts.sort();
    let (mut best, mut at, mut lo) = (0u64, Duration::ZERO, 0usize);
    for hi in 0..starts.len() {
        while starts[hi].duration_since(starts[lo]) >= window {
            lo += 1;
        }
        let n = (hi - lo + 1) as u64;
        if n > best {
            best = n;
            at = starts[lo].saturating_duration_since(origin);
        }
    }
    (best, at)
}

/// A sparkline of `values`, one character per value, scaled to the largest.
pub fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| match v {
            0 => ' ',
            v => BARS[((v * 8).div_ceil(max.max(1)) as usize).clamp(1, 8) - 1],
        })
        .collect()
}

/// Records grouped by source.
pub fn by_source(records: &[Record]) -> BTreeMap<String, Vec<Record>> {
    let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in records {
        out.entry(r.source.clone().unwrap_or_else(|| "unknown".into()))
            .or_default()
            .push(r.clone());
    }
    out
}

/// When each source's first request began, since `origin`.
pub fn first_requests(records: &[Record], origin: Instant) -> BTreeMap<String, Duration> {
    let mut out: BTreeMap<String, Duration> = BTreeMap::new();
    for r in records {
        let source = r.source.clone().unwrap_or_else(|| "unknown".into());
        let at = r.at.saturating_duration_since(origin);
        let e = out.entry(source).or_insert(at);
        *e = (*e).min(at);
    }
    out
}

/// How evenly `offsets` fill `[0, window)`: the Kolmogorov-Smirnov distance of their empirical
/// distribution from the uniform one (0 for a perfectly even spread; for n random points it is
/// about 0.87 / sqrt(n) on average).
pub fn ks_distance(offsets: &[Duration], window: Duration) -> f64 {
    let mut x: Vec<f64> = offsets
        .iter()
        .map(|d| (d.as_secs_f64() / window.as_secs_f64()).clamp(0.0, 1.0))
        .collect();
    x.sort_by(f64::total_cmp);
    let n = x.len() as f64;
    x.iter()
        .enumerate()
        .map(|(i, &v)| (v - i as f64 / n).abs().max(((i + 1) as f64 / n - v).abs()))
        .fold(0.0, f64::max)
}

/// The largest and smallest gap between consecutive offsets.
pub fn gaps(offsets: &[Duration]) -> Option<(Duration, Duration)> {
    let mut x = offsets.to_vec();
    x.sort();
    let gaps: Vec<Duration> = x.windows(2).map(|w| w[1] - w[0]).collect();
    Some((*gaps.iter().min()?, *gaps.iter().max()?))
}

/// Per blob digest fetched with GET: how many GETs, how many bytes, and the most of them in
/// flight at once (from their arrival to the end of their body).
pub fn blob_fetches(records: &[Record]) -> BTreeMap<String, (u64, u64, usize)> {
    let mut spans: BTreeMap<String, Vec<(Instant, Instant, u64)>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.method == "GET" && Kind::of(&r.path) == Kind::Blob)
    {
        let path = r.path.split('?').next().unwrap_or(&r.path);
        let digest = path.rsplit('/').next().unwrap_or(path).to_string();
        spans.entry(digest).or_default().push((
            r.at,
            r.ended.unwrap_or(r.at),
            r.response_body_bytes,
        ));
    }
    spans
        .into_iter()
        .map(|(digest, list)| {
            let overlap = list
                .iter()
                .map(|(start, _, _)| {
                    list.iter()
                        .filter(|(s, e, _)| s <= start && start <= e)
                        .count()
                })
                .max()
                .unwrap_or(0);
            let bytes = list.iter().map(|(_, _, b)| b).sum();
            (digest, (list.len() as u64, bytes, overlap))
        })
        .collect()
}
