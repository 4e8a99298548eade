//! What the runs add up to: each workload's samples and floor, and the figures the report takes
//! from them (medians, throughput, ratios, W5's share of the link, W6's request mixes).

use std::time::Duration;

use crate::proc::cores;
use crate::sample::{Cpu, Mode, Requests, Sample, Tool};
use crate::workload::Workload;

#[derive(Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn stats(values: &[f64]) -> Option<Stats> {
    Some(Stats {
        median: median(values)?,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// `bytes` over `secs` in MB/s (10^6 bytes per second).
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// One workload's runs and its fsync floor.
pub struct WorkloadResult {
    pub workload: Workload,
    pub samples: Vec<Sample>,
    pub floor: Vec<Duration>,
}

impl WorkloadResult {
    pub fn of(&self, mode: Mode, tool: Tool) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.mode == mode && s.tool == tool)
    }

    pub fn walls(&self, mode: Mode, tool: Tool) -> Vec<f64> {
        self.of(mode, tool).map(|s| s.wall.as_secs_f64()).collect()
    }

    pub fn rss_median_mib(&self, mode: Mode, tool: Tool, containerd: bool) -> Option<f64> {
        let v: Vec<f64> = self
            .of(mode, tool)
            .filter_map(|s| {
                if containerd {
                    s.containerd_rss_kib
                } else {
                    s.rss_kib
                }
            })
            .map(|k| k as f64 / 1024.0)
            .collect();
        median(&v)
    }

    pub fn disturbed(&self, mode: Mode, tool: Tool) -> String {
        let runs: Vec<&Sample> = self.of(mode, tool).collect();
        let bad = runs.iter().filter(|s| s.disturbed(cores())).count();
        format!("{bad}/{}", runs.len())
    }

    pub fn cpu_median(&self, mode: Mode, tool: Tool, pick: fn(&Cpu) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.of(mode, tool).filter_map(|s| pick(&s.cpu)).collect();
        median(&v)
    }

    pub fn floor_median(&self) -> Option<f64> {
        median(
            &self
                .floor
                .iter()
                .map(Duration::as_secs_f64)
                .collect::<Vec<_>>(),
        )
    }

    pub fn median_wall(&self, mode: Mode, tool: Tool) -> Option<f64> {
        median(&self.walls(mode, tool))
    }

    /// Median throughput over W5's link as a share of the link's rate.
    pub fn link_share(&self, mode: Mode, tool: Tool) -> Option<f64> {
        let link = self.workload.link.as_ref()?.spec;
        let secs = self.median_wall(mode, tool)?;
        Some(mbps(self.workload.bytes, secs) / link.mbytes_per_sec())
    }

    /// The distinct request mixes of a tool's timed passes, e.g. `200 HEAD manifest (3 runs)`.
    pub fn request_mixes(&self, mode: Mode, tool: Tool) -> String {
        let mut mixes: Vec<(Requests, usize)> = Vec::new();
        for s in self.of(mode, tool) {
            let Some(r) = &s.requests else { continue };
            match mixes.iter_mut().find(|(m, _)| m == r) {
                Some((_, n)) => *n += 1,
                None => mixes.push((r.clone(), 1)),
            }
        }
        if mixes.is_empty() {
            return "n/a".into();
        }
        mixes
            .iter()
            .map(|(m, n)| {
                format!(
                    "{} ({n} run{})",
                    m.describe(),
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The most connections any run of `tool` opened to the registry, and the most requests
    /// any had in flight at once (W6, behind the proxy).
    pub fn max_connections(&self, mode: Mode, tool: Tool) -> Option<(u64, u64)> {
        self.of(mode, tool)
            .filter_map(|s| s.connections)
            .map(|c| (c.accepted, c.peak_requests))
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
    }
}
