//! The summary table: every workload, mode and tool, with each peer's time over prepull's, the ratio to the
//! fsync floor, memory, CPU by process and disturbed runs.

use std::fmt::Write as _;

use super::{cpu_medians, opt_mib, speedup, tools, Context};
use crate::results::{mbps, stats, WorkloadResult};
use crate::sample::Mode;

pub fn write(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let _ = writeln!(md, "## Summary");
    let _ = writeln!(md);
    let _ = writeln!(md, "| Workload | MiB | Mode | Tool | Runs | Median s | Min s | Max s | MB/s | time / prepull's | x floor | Peak RSS MiB (median) | containerd peak RSS MiB (median) | CPU s client / containerd / registry / other (medians) | Disturbed runs |");
    let _ = writeln!(
        md,
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        for mode in &cx.modes {
            rows(md, r, *mode);
        }
    }
    let _ = writeln!(md);
}

/// One workload's rows in one mode: prepull's, then each peer's with its time over prepull's.
fn rows(md: &mut String, r: &WorkloadResult, mode: Mode) {
    let w = &r.workload;
    let floor = r.floor_median();
    for tool in tools(r, mode) {
        let Some(s) = stats(&r.walls(mode, tool)) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} ({}) | {:.1} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            w.id.name(),
            w.id.description(),
            w.mib(),
            mode.name(),
            tool.name(),
            r.walls(mode, tool).len(),
            s.median,
            s.min,
            s.max,
            if w.id.warm() { "-".to_string() } else { format!("{:.0}", mbps(w.bytes, s.median)) },
            speedup(r, mode, tool, 2),
            floor.map(|f| format!("{:.1}", s.median / f)).unwrap_or_else(|| "n/a".into()),
            opt_mib(r.rss_median_mib(mode, tool, false)),
            opt_mib(r.rss_median_mib(mode, tool, true)),
            cpu_medians(r, mode, tool),
            r.disturbed(mode, tool),
        );
    }
}
