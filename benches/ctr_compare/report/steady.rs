//! W6's section: one more pass over images already present, with the requests each tool made.

use std::fmt::Write as _;

use super::{cpu_medians, speedup, tools, Context};
use crate::results::{stats, WorkloadResult};
use crate::workload::WorkloadId;

/// Decimals of the time-over-prepull's column.
const DECIMALS: usize = 1;

pub fn write(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W6) else {
        return;
    };
    let _ = writeln!(
        md,
        "## W6: steady state ({} images already present)",
        r.workload.images.len()
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Requests are counted by the proxy for the timed pass only; a row lists each distinct mix of requests and how many runs made it. \
         Connections: the most client connections a run opened to the proxy, and the most requests it had in flight at once."
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| Mode | Tool | Median s | Min s | Max s | time / prepull's | Requests per pass | Connections opened / requests at once (max over runs) | CPU s client / containerd / registry+proxy / other |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|---:|---:|");
    for mode in &cx.modes {
        for tool in tools(r, *mode) {
            let Some(st) = stats(&r.walls(*mode, tool)) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
                mode.name(),
                tool.name(),
                st.median,
                st.min,
                st.max,
                speedup(r, *mode, tool, DECIMALS),
                r.request_mixes(*mode, tool),
                r.max_connections(*mode, tool)
                    .map(|(opened, at_once)| format!("{opened} / {at_once}"))
                    .unwrap_or_else(|| "n/a".into()),
                cpu_medians(r, *mode, tool),
            );
        }
    }
    let _ = writeln!(md);
}
