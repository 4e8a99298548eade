//! W5's section: the emulated link, its measured round trip and wire floor, and each tool's
//! throughput as a share of the link.

use std::fmt::Write as _;
use std::time::Duration;

use super::{cpu_medians, speedup, tools, Context};
use crate::results::{mbps, stats, WorkloadResult};
use crate::wan::LinkInfo;
use crate::workload::WorkloadId;

/// Decimals of the time-over-prepull's column.
const DECIMALS: usize = 2;

pub fn write(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W5) else {
        return;
    };
    let Some(info) = &r.workload.link else {
        return;
    };
    let _ = writeln!(md, "## W5: W1 over an emulated WAN");
    let _ = writeln!(md);
    link(md, r, info);
    let _ = writeln!(md);
    table(md, r, cx);
    let _ = writeln!(md);
}

/// The link, its measured round trip, and the floors it sets: at its rate, and on the wire.
fn link(md: &mut String, r: &WorkloadResult, info: &LinkInfo) {
    let (link, rtt) = (info.spec, info.measured_rtt);
    let _ = writeln!(
        md,
        "Link: {}; {}. Measured HTTP round trip before the runs: {}. \
         Link floor for the workload's {:.1} MB: {:.2} s at the link's rate; wire floor (every config and layer downloaded at once by a bare HTTP client in the bench, bytes discarded, before the runs): {}. \
         Share of link = the workload's bytes / median time / the link's rate.",
        link.describe(),
        info.emulation,
        rtt.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "n/a".into()),
        r.workload.bytes as f64 / 1e6,
        r.workload.bytes as f64 / 1e6 / link.mbytes_per_sec(),
        stats(&info.wire.iter().map(Duration::as_secs_f64).collect::<Vec<_>>())
            .map(|st| format!(
                "median {:.2} s ({:.0}% of the link), min {:.2} s, max {:.2} s",
                st.median,
                mbps(r.workload.bytes - r.workload.manifest_bytes, st.median) / link.mbytes_per_sec() * 100.0,
                st.min,
                st.max
            ))
            .unwrap_or_else(|| "n/a".into()),
    );
}

/// Each mode's and tool's times, throughput and share of the link.
fn table(md: &mut String, r: &WorkloadResult, cx: &Context) {
    let _ = writeln!(
        md,
        "| Mode | Tool | Median s | Min s | Max s | MB/s | Share of link | time / prepull's | CPU s client / containerd / registry / other |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for mode in &cx.modes {
        for tool in tools(r, *mode) {
            let Some(st) = stats(&r.walls(*mode, tool)) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} |",
                mode.name(),
                tool.name(),
                st.median,
                st.min,
                st.max,
                mbps(r.workload.bytes, st.median),
                r.link_share(*mode, tool)
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                speedup(r, *mode, tool, DECIMALS),
                cpu_medians(r, *mode, tool),
            );
        }
    }
}
