//! One workload's measurements, in the order that keeps them comparable: the emulated WAN (W5)
//! or the counting proxy (W6) put in front of the registry, the fsync floor, then rounds in which
//! prepull and its peers (ctr; in pull mode CRI PullImage) alternate (and the modes alternate
//! within each round), with a progress line per run.

use std::path::Path;
use std::time::Duration;

use crate::floor::{floor_mib, fsync_floor, wire_floor, MIN_FLOOR_RUNS};
use crate::report::{opt_kib, opt_secs};
use crate::results::{mbps, WorkloadResult};
use crate::run::Bench;
use crate::sample::{Mode, Sample, Tool};
use crate::support::{Proxy, Registry};
use crate::wan::{LinkSpec, Wan};
use crate::workload::{Via, Workload, WorkloadId};

/// Every run of `w` in every mode, with its floor; `floor` is the fsync floor's source file and
/// the dir it writes into.
pub async fn run_workload(
    bench: &Bench,
    registry: &Registry,
    mut w: Workload,
    modes: &[Mode],
    floor: (&Path, &Path),
) -> anyhow::Result<WorkloadResult> {
    serve(&mut w, registry).await?;
    let floor = measure_fsync_floor(&w, floor.0, floor.1)?;
    let mut samples = Vec::with_capacity(2 * modes.len() * w.runs);
    for run in 1..=w.runs {
        for mode in modes {
            for tool in Tool::compared(*mode, w.id == WorkloadId::W4) {
                let s = bench.sample(&w, *mode, tool, run).await?;
                log_sample(&w, run, &s);
                samples.push(s);
            }
        }
    }
    // Tear the WAN (or the proxy) down before the next workload.
    w.via = Via::Loopback;
    Ok(WorkloadResult {
        workload: w,
        samples,
        floor,
    })
}

/// Puts what the workload pulls through between the clients and the registry: W5's emulated WAN
/// (and measures its wire floor), W6's counting proxy; the others pull from the registry directly.
async fn serve(w: &mut Workload, registry: &Registry) -> anyhow::Result<()> {
    match w.id {
        WorkloadId::W5 => {
            let wan = Wan::start(registry.storage_dir(), LinkSpec::W5).await?;
            eprintln!(
                "[W5] registry at {} in network namespace {}: {}; measured HTTP round trip {:.1} ms",
                wan.host(),
                wan.netns,
                wan.link.describe(),
                wan.measured_rtt.unwrap_or_default().as_secs_f64() * 1e3
            );
            w.serve_via(Via::Wan(wan));
            let wire = wire_floor(w, MIN_FLOOR_RUNS).await?;
            eprintln!(
                "[W5] wire floor (all blobs at once, discarded): {}",
                wire.iter()
                    .map(|d| format!("{:.2}s", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if let Some(link) = w.link.as_mut() {
                link.wire = wire;
            }
        }
        WorkloadId::W6 => {
            let proxy = Proxy::start(&registry.host()).await;
            eprintln!("[W6] counting proxy at {}", proxy.host());
            w.serve_via(Via::Proxy(proxy));
        }
        WorkloadId::W1 | WorkloadId::W3 | WorkloadId::W4 => {}
    }
    Ok(())
}

/// The fsync floor for `w`'s bytes: `src` copied into `dst_dir` (containerd's filesystem).
fn measure_fsync_floor(w: &Workload, src: &Path, dst_dir: &Path) -> anyhow::Result<Vec<Duration>> {
    // W6 writes nothing in its timed pass: no floor to compare with.
    let floor_runs = if w.id.warm() {
        0
    } else {
        w.runs.max(MIN_FLOOR_RUNS)
    };
    let floor = fsync_floor(src, dst_dir, floor_mib(w), floor_runs)?;
    eprintln!(
        "[{}] fsync floor, {} MiB: {}",
        w.id.name(),
        floor_mib(w),
        floor
            .iter()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(floor)
}

/// The progress line of one run, and a note when prepull's byte count is not the workload's.
fn log_sample(w: &Workload, run: usize, s: &Sample) {
    eprintln!(
        "[{}] run {run}/{} {:<5} {:<7} {:>7.2} s  {:>6.0} MB/s  RSS {} KiB  containerd {} KiB  CPU s client/containerd/registry/other {}/{}/{}/{} (top other: {}){}",
        w.id.name(),
        w.runs,
        s.mode.name(),
        s.tool.name(),
        s.wall.as_secs_f64(),
        mbps(w.bytes, s.wall.as_secs_f64()),
        opt_kib(s.rss_kib),
        opt_kib(s.containerd_rss_kib),
        opt_secs(s.cpu.client),
        opt_secs(s.cpu.containerd),
        opt_secs(s.cpu.registry),
        opt_secs(s.cpu.other),
        s.top_others,
        s.requests
            .as_ref()
            .map(|r| format!("  requests: {}", r.describe()))
            .unwrap_or_default(),
    );
    if let Some(b) = s.reported_bytes {
        let expected = if w.id.warm() {
            0
        } else {
            w.bytes - w.manifest_bytes
        };
        if b != expected {
            eprintln!(
                "[{}] note: prepull reported {b} bytes fetched; expected {expected}",
                w.id.name(),
            );
        }
    }
}
