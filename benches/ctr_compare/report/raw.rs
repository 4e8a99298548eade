//! The raw runs: one table per workload with every run's figures, then its floor runs.

use std::fmt::Write as _;

use super::{opt_kib, opt_secs};
use crate::floor::floor_mib;
use crate::results::WorkloadResult;
use crate::sample::{Requests, Sample};

pub fn write(md: &mut String, results: &[WorkloadResult]) {
    let _ = writeln!(md, "## Raw runs");
    for r in results {
        workload(md, r);
    }
}

/// One workload's heading, a row per run and its fsync floor runs.
fn workload(md: &mut String, r: &WorkloadResult) {
    let w = &r.workload;
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "### {} ({}; {} image(s), {} blobs, {} bytes of which {} in manifests)",
        w.id.name(),
        w.id.description(),
        w.images.len(),
        w.digests.len(),
        w.bytes,
        w.manifest_bytes
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "| Run | Mode | Tool | Wall s | Peak RSS KiB | containerd peak RSS KiB | CPU s client | CPU s containerd | CPU s registry | CPU s other | Top other CPU s | Busy before % | Waited s | prepull bytes_fetched (configs + layers) | Registry requests |");
    let _ = writeln!(
        md,
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"
    );
    for s in &r.samples {
        run(md, s);
    }
    let floor: Vec<String> = r
        .floor
        .iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect();
    let _ = writeln!(md);
    if w.id.warm() {
        let _ = writeln!(
            md,
            "No fsync floor: the timed pass writes no blob (everything is already present)."
        );
    } else {
        let _ = writeln!(
            md,
            "fsync floor runs ({} MiB), s: {}",
            floor_mib(w),
            floor.join(", ")
        );
    }
}

/// One run's row.
fn run(md: &mut String, s: &Sample) {
    let _ = writeln!(
        md,
        "| {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
        s.run,
        s.mode.name(),
        s.tool.name(),
        s.wall.as_secs_f64(),
        opt_kib(s.rss_kib),
        opt_kib(s.containerd_rss_kib),
        opt_secs(s.cpu.client),
        opt_secs(s.cpu.containerd),
        opt_secs(s.cpu.registry),
        opt_secs(s.cpu.other),
        s.top_others,
        s.busy_share
            .map(|b| format!("{:.0}", b * 100.0))
            .unwrap_or_else(|| "n/a".into()),
        s.waited.as_secs_f64(),
        opt_kib(s.reported_bytes),
        s.requests
            .as_ref()
            .map(Requests::describe)
            .unwrap_or_else(|| "-".into()),
    );
}
