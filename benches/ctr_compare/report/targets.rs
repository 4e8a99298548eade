//! The targets table: the performance targets this run can judge (pulls against CRI PullImage,
//! the kubelet's own pull; prepull's peak memory; W5's share of the link and speed-up over ctr;
//! W6's requests and time per pass), each with its figure and verdict.

use std::fmt::Write as _;
use std::time::Duration;

use super::Context;
use crate::results::WorkloadResult;
use crate::sample::{Mode, Requests, Tool};
use crate::workload::WorkloadId;

/// W5: prepull's throughput, as a share of the emulated link's rate, at least this.
const W5_LINK_SHARE_TARGET: f64 = 0.90;
/// W5: prepull at least this much faster than ctr.
const W5_SPEEDUP_TARGET: f64 = 1.5;
/// W6: one pass over all present images takes less than this.
const W6_TIME_TARGET: Duration = Duration::from_secs(1);

/// Against CRI PullImage in pull mode: `(workload, peer, least peer time over prepull's)`. Below
/// 1, prepull may be that much slower (W1: within 1.1x of CRI's time, W3: within 1.25x).
const CRI_TARGETS: [(WorkloadId, Tool, f64); 5] = [
    (WorkloadId::W1, Tool::Cri, 1.0 / 1.1),
    (WorkloadId::W3, Tool::Cri, 1.0 / 1.25),
    (WorkloadId::W4, Tool::Cri, 1.5),
    (WorkloadId::W4, Tool::Cri4, 1.0),
    (WorkloadId::W6, Tool::Cri, 5.0),
];

/// prepull's peak RSS in pull mode below this many MiB (median over the runs).
const RSS_TARGETS: [(WorkloadId, f64); 2] = [(WorkloadId::W1, 40.0), (WorkloadId::W3, 24.0)];

/// The verdict cell of a target's row.
fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// A target, its measured figure and whether it is met.
type Row = (String, String, bool);

/// The performance targets this run can judge, each with its measured figure.
pub fn write(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let mut rows = cri_rows(results);
    rows.extend(rss_rows(results));
    if let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W5) {
        rows.extend(w5_rows(r, cx));
    }
    if let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W6) {
        rows.extend(w6_rows(r, cx));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Targets");
    let _ = writeln!(md);
    let _ = writeln!(md, "| Target | Measured | |");
    let _ = writeln!(md, "|---|---|---|");
    for (target, measured, ok) in rows {
        let _ = writeln!(md, "| {target} | {measured} | {} |", met(ok));
    }
    let _ = writeln!(md);
}

/// Pull mode against CRI PullImage, per [`CRI_TARGETS`].
fn cri_rows(results: &[WorkloadResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (id, peer, least) in CRI_TARGETS {
        let Some(r) = results.iter().find(|r| r.workload.id == id) else {
            continue;
        };
        let (Some(c), Some(p)) = (
            r.median_wall(Mode::Pull, peer),
            r.median_wall(Mode::Pull, Tool::Prepull),
        ) else {
            continue;
        };
        let target = if least >= 1.0 {
            format!(
                "{} pull: prepull >= {least}x faster than {}",
                id.name(),
                peer.name()
            )
        } else {
            format!(
                "{} pull: prepull within {:.2}x of {}'s time",
                id.name(),
                1.0 / least,
                peer.name()
            )
        };
        rows.push((
            target,
            format!("{p:.2} s vs {c:.2} s: prepull takes {:.2}x its time", p / c),
            c / p >= least,
        ));
    }
    rows
}

/// prepull's peak RSS in pull mode, per [`RSS_TARGETS`].
fn rss_rows(results: &[WorkloadResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (id, below) in RSS_TARGETS {
        let Some(rss) = results
            .iter()
            .find(|r| r.workload.id == id)
            .and_then(|r| r.rss_median_mib(Mode::Pull, Tool::Prepull, false))
        else {
            continue;
        };
        rows.push((
            format!("{} pull: prepull's peak RSS < {below:.0} MiB", id.name()),
            format!("{rss:.1} MiB (median)"),
            rss < below,
        ));
    }
    rows
}

/// W5: prepull's share of the link, and its speed-up over ctr.
fn w5_rows(r: &WorkloadResult, cx: &Context) -> Vec<Row> {
    let mut rows = Vec::new();
    for mode in &cx.modes {
        if let Some(share) = r.link_share(*mode, Tool::Prepull) {
            rows.push((
                format!(
                    "W5 {}: prepull reaches >= {:.0}% of the link's bandwidth",
                    mode.name(),
                    W5_LINK_SHARE_TARGET * 100.0
                ),
                format!(
                    "{:.0}% ({:.0} of {:.0} MB/s)",
                    share * 100.0,
                    share
                        * r.workload
                            .link
                            .as_ref()
                            .map_or(0.0, |l| l.spec.mbytes_per_sec()),
                    r.workload
                        .link
                        .as_ref()
                        .map_or(0.0, |l| l.spec.mbytes_per_sec())
                ),
                share >= W5_LINK_SHARE_TARGET,
            ));
        }
        if let (Some(c), Some(p)) = (
            r.median_wall(*mode, Tool::Ctr),
            r.median_wall(*mode, Tool::Prepull),
        ) {
            rows.push((
                format!(
                    "W5 {}: prepull >= {W5_SPEEDUP_TARGET}x faster than ctr",
                    mode.name()
                ),
                format!("{:.2}x ({p:.2} s vs {c:.2} s)", c / p),
                c / p >= W5_SPEEDUP_TARGET,
            ));
        }
    }
    rows
}

/// W6: one request per tag and no more, and the time of a pass.
fn w6_rows(r: &WorkloadResult, cx: &Context) -> Vec<Row> {
    let mut rows = Vec::new();
    let tags = r.workload.images.len();
    for mode in &cx.modes {
        let passes: Vec<&Requests> = r
            .of(*mode, Tool::Prepull)
            .filter_map(|s| s.requests.as_ref())
            .collect();
        if !passes.is_empty() {
            let exact = passes
                .iter()
                .all(|q| q.count("HEAD") == tags && q.total() == tags);
            rows.push((
                format!(
                    "W6 {}: exactly one HEAD per tag ({tags}), no GET",
                    mode.name()
                ),
                r.request_mixes(*mode, Tool::Prepull),
                exact,
            ));
        }
        if let Some((opened, at_once)) = r.max_connections(*mode, Tool::Prepull) {
            let cap = prepull::registry::CONNECTIONS_PER_HOST.get() as u64;
            rows.push((
                format!(
                    "W6 {}: the {tags} tags over at most {cap} requests at once (prepull's default `--max-connections-per-registry`), connections reused",
                    mode.name()
                ),
                format!("{at_once} at once over {opened} connections (most of any run)"),
                at_once <= cap && opened <= 2 * cap,
            ));
        }
        if let Some(p) = r.median_wall(*mode, Tool::Prepull) {
            rows.push((
                format!(
                    "W6 {}: one pass over {tags} present images < {:.0} s",
                    mode.name(),
                    W6_TIME_TARGET.as_secs_f64()
                ),
                format!("{p:.2} s (median)"),
                p < W6_TIME_TARGET.as_secs_f64(),
            ));
        }
    }
    rows
}
