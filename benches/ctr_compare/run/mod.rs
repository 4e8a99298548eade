//! One timed run of one tool, a [`Sample`]: a fresh containerd, the untimed first pass where the
//! workload is about the steady state (W6), a quiet machine, CPU counters and profiles around the
//! client, and the checks afterwards.

mod clients;
pub mod profiler;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use crate::command::sync;
use crate::proc::{
    all_proc_cpu, cpu_secs, find_pid, machine_busy_secs, peak_rss_kib, top_others, wait_for_quiet,
    ProcCpu,
};
use crate::sample::{Cpu, Mode, Requests, Sample, Tool};
use crate::support::{Containerd, ContainerdOptions};
use crate::verify::verify_run;
use crate::workload::{Via, Workload};
use profiler::{Attached, Profiler};

/// What every timed run shares: the prepull under test, the registry's pid, the quiet wait and
/// the profiler.
pub struct Bench {
    pub prepull: PathBuf,
    /// Whether this prepull build unpacks by default (it has `--no-unpack`).
    pub prepull_unpacks: bool,
    pub gnu_time: bool,
    pub registry_pid: Option<u32>,
    pub quiet_wait: Duration,
    pub profiler: Option<Profiler>,
}

/// The processes a run's CPU is counted for, besides the client.
struct Pids {
    containerd: Option<u32>,
    registry: Option<u32>,
    /// This process, when it serves the run too: the recording proxy (W6) or the TUN forwarder
    /// (W5).
    proxy: Option<u32>,
}

/// CPU seconds used so far, read just before the timed part.
struct CpuBefore {
    containerd: Option<f64>,
    registry: Option<f64>,
    machine_busy: Option<f64>,
    proxy: Option<f64>,
}

impl CpuBefore {
    fn read(pids: &Pids) -> CpuBefore {
        CpuBefore {
            containerd: pids.containerd.and_then(cpu_secs),
            registry: pids.registry.and_then(cpu_secs),
            machine_busy: machine_busy_secs(),
            proxy: pids.proxy.and_then(cpu_secs),
        }
    }

    /// The CPU used since [`CpuBefore::read`] by the client (from GNU time), containerd and the
    /// registry, and as "other" the rest of the machine's busy CPU, with the processes behind it
    /// (those not in `procs_before` started during the run).
    fn since(&self, pids: &Pids, procs_before: &ProcCpu, client: Option<f64>) -> (Cpu, String) {
        let delta = |before: Option<f64>, pid: Option<u32>| Some(pid.and_then(cpu_secs)? - before?);
        let busy = machine_busy_secs()
            .zip(self.machine_busy)
            .map(|(after, before)| after - before);
        let top_others = top_others(
            procs_before,
            &all_proc_cpu(),
            &[pids.containerd, pids.registry, Some(std::process::id())],
            3,
        );
        let registry = match pids.proxy {
            Some(pid) => delta(self.registry, pids.registry)
                .zip(delta(self.proxy, Some(pid)))
                .map(|(r, p)| r + p),
            None => delta(self.registry, pids.registry),
        };
        let mut cpu = Cpu {
            client,
            containerd: delta(self.containerd, pids.containerd),
            registry,
            other: None,
        };
        cpu.other = (|| Some((busy? - cpu.client? - cpu.containerd? - cpu.registry?).max(0.0)))();
        (cpu, top_others)
    }
}

impl Bench {
    /// One run of one tool against a fresh containerd, verified afterwards (outside the timing).
    pub async fn sample(
        &self,
        w: &Workload,
        mode: Mode,
        tool: Tool,
        run: usize,
    ) -> anyhow::Result<Sample> {
        // CRI flushing each layer, as prepull does, is a setting of the daemon.
        let c = Containerd::start_with(ContainerdOptions {
            cri_sync_fs: tool == Tool::CriSync,
            ..ContainerdOptions::default()
        })
        .await;
        let failed = |e: anyhow::Error| {
            anyhow!(
                "[{}] run {run} {} {} failed: {e:#}\n--- tail of containerd log ---\n{}",
                w.id.name(),
                mode.name(),
                tool.name(),
                c.log_tail(30)
            )
        };
        let pids = Pids {
            containerd: find_pid("containerd", c.dir()),
            registry: w.own_registry_pid().or(self.registry_pid),
            // The recording proxy (W6) and W5's TUN forwarder run in this process: their CPU is
            // counted on the registry's side.
            proxy: matches!(w.via, Via::Proxy(_) | Via::Wan(_)).then(std::process::id),
        };
        if w.id.warm() {
            // The steady state: everything pulled once by the same tool, untimed.
            self.run_tool(&c, w, mode, tool)
                .await
                .map(drop)
                .map_err(|e| failed(e.context("first (untimed) pass")))?;
        }
        let (waited, busy_share) = self.wait_for_quiet().await;
        if let Via::Proxy(proxy) = &w.via {
            proxy.clear();
        }
        let cpu_before = CpuBefore::read(&pids);
        let attached = self.profile_start(w, mode, tool, run, &pids).await?;
        let procs_before = all_proc_cpu();
        let result = self.run_tool(&c, w, mode, tool).await;
        self.profile_stop(attached).await?;
        let (child, reported_bytes) = result.map_err(failed)?;
        let (requests, connections) = match &w.via {
            Via::Proxy(proxy) => (
                Some(Requests::of(&proxy.records())),
                Some(proxy.connections()),
            ),
            Via::Loopback | Via::Wan(_) => (None, None),
        };
        let (cpu, top_others) = cpu_before.since(&pids, &procs_before, child.cpu_secs);
        let containerd_rss_kib = pids.containerd.and_then(peak_rss_kib);
        verify_run(&c, w, mode).with_context(|| {
            format!(
                "[{}] run {run} {} {}",
                w.id.name(),
                mode.name(),
                tool.name()
            )
        })?;
        drop(c);
        // Flush what the dropped instance left dirty so the next run does not pay for it.
        sync();
        Ok(Sample {
            run,
            mode,
            tool,
            wall: child.wall,
            rss_kib: child.rss_kib,
            containerd_rss_kib,
            reported_bytes,
            waited,
            busy_share,
            top_others,
            requests,
            connections,
            cpu,
        })
    }

    /// How long the run waited for a quiet machine and the busy share it started with; no wait
    /// at all with `--quiet-wait 0`.
    async fn wait_for_quiet(&self) -> (Duration, Option<f64>) {
        if self.quiet_wait.is_zero() {
            (Duration::ZERO, None)
        } else {
            wait_for_quiet(self.quiet_wait).await
        }
    }

    /// With `--profile`: names the run's profiles and attaches `perf` to containerd and the
    /// registry (the client is wrapped when it starts).
    async fn profile_start(
        &self,
        w: &Workload,
        mode: Mode,
        tool: Tool,
        run: usize,
        pids: &Pids,
    ) -> anyhow::Result<Vec<Attached>> {
        let mut attached = Vec::new();
        if let Some(p) = &self.profiler {
            p.start_run(format!(
                "{}-{}-{}-run{run}",
                w.id.name().to_lowercase(),
                mode.name(),
                tool.name()
            ));
            for (pid, what) in [(pids.containerd, "containerd"), (pids.registry, "registry")] {
                if let Some(pid) = pid {
                    attached.push(p.attach(pid, what).await?);
                }
            }
        }
        Ok(attached)
    }

    /// Stops the `perf` attached by [`Bench::profile_start`] and ends the run's profiling.
    async fn profile_stop(&self, attached: Vec<Attached>) -> anyhow::Result<()> {
        for a in attached {
            let file = a.stop().await?;
            eprintln!("  profile: {}", file.display());
        }
        if let Some(p) = &self.profiler {
            p.end_run();
        }
        Ok(())
    }
}
