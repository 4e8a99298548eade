//! The fsync floor table: `dd … conv=fsync` of each workload's bytes.

use std::fmt::Write as _;
use std::time::Duration;

use crate::floor::floor_mib;
use crate::results::{stats, WorkloadResult};
use crate::MIB;

pub fn write(md: &mut String, results: &[WorkloadResult]) {
    let _ = writeln!(
        md,
        "## fsync floor (`dd … conv=fsync` of the workload's bytes)"
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| Workload | MiB written | Runs | Median s | Min s | Max s | MB/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let w = &r.workload;
        let floor: Vec<f64> = r.floor.iter().map(Duration::as_secs_f64).collect();
        let Some(f) = stats(&floor) else { continue };
        let mib = floor_mib(w);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            w.id.name(),
            mib,
            floor.len(),
            f.median,
            f.min,
            f.max,
            (mib * MIB) as f64 / 1e6 / f.median,
        );
    }
    let _ = writeln!(md);
}
