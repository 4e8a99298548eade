//! The clients as the timed runs invoke them: `prepull pull` once with every image, `ctr` once
//! per image, each under `perf record` when profiling; CRI `PullImage` (the kubelet's pull) from
//! this process over containerd's socket, one image at a time or four at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use prepull::cri::v1::{ImageSpec, PullImageRequest};
use prepull::cri::ImageServiceClient;

use super::Bench;
use crate::command::{timed, ChildRun};
use crate::sample::{Mode, Tool};
use crate::support::Containerd;
use crate::workload::Workload;

impl Bench {
    /// Runs `tool`'s client once: its result and, for prepull, the bytes it says it fetched.
    pub(super) async fn run_tool(
        &self,
        c: &Containerd,
        w: &Workload,
        mode: Mode,
        tool: Tool,
    ) -> anyhow::Result<(ChildRun, Option<u64>)> {
        match tool {
            Tool::Prepull | Tool::PrepullContainerd => self
                .run_prepull(c, w, mode, tool == Tool::PrepullContainerd)
                .await
                .map(|(r, b)| (r, Some(b))),
            Tool::Ctr => self.run_ctr(c, w, mode).await.map(|r| (r, None)),
            Tool::Cri | Tool::Cri4 | Tool::CriSync => {
                let parallel = tool.cri_parallel().unwrap_or(1);
                run_cri(c, w, parallel).await.map(|r| (r, None))
            }
        }
    }

    /// Runs a client, under `perf record` when profiling.
    async fn timed_client(&self, program: &Path, args: Vec<String>) -> anyhow::Result<ChildRun> {
        let is_prepull = program == self.prepull;
        match self
            .profiler
            .as_ref()
            .and_then(|p| p.wrap(program, &args, is_prepull))
        {
            Some((perf, wrapped)) => timed(&perf, &wrapped, self.gnu_time).await,
            None => timed(program, &args, self.gnu_time).await,
        }
    }

    async fn run_prepull(
        &self,
        c: &Containerd,
        w: &Workload,
        mode: Mode,
        containerd_fetches: bool,
    ) -> anyhow::Result<(ChildRun, u64)> {
        let mut args: Vec<String> = vec![
            "pull".into(),
            "--containerd".into(),
            c.socket().display().to_string(),
            "--plain-http".into(),
            w.host.clone(),
            "--output".into(),
            "json".into(),
        ];
        match mode {
            Mode::Fetch if self.prepull_unpacks => args.push("--no-unpack".into()),
            Mode::Fetch => {}
            // Named explicitly so both tools surely unpack into the same snapshotter.
            Mode::Pull => args.extend(["--snapshotter".into(), c.snapshotter().to_string()]),
        }
        if containerd_fetches {
            args.extend(["--fetcher".into(), "containerd".into()]);
        }
        args.extend(w.images.iter().cloned());
        let run = self.timed_client(&self.prepull, args).await?;
        // Exit 0 already means every image was pulled; the JSON lines double-check that and say
        // how many bytes prepull moved.
        let mut fetched = 0;
        let mut pulled = 0;
        for line in run.stdout.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("prepull printed a non-JSON line: {line:?}"))?;
            if v["status"] != "pulled" {
                bail!("prepull exited 0 but reported {line}");
            }
            // The mode must have done what it says: unpacked in `pull`, not in `fetch`.
            let snapshotter = v.get("snapshotter").and_then(|s| s.as_str());
            let want = (mode == Mode::Pull).then(|| c.snapshotter());
            if snapshotter != want {
                bail!("prepull in mode {} reported snapshotter {snapshotter:?}, expected {want:?}: {line}", mode.name());
            }
            pulled += 1;
            fetched += v["bytes_fetched"]
                .as_u64()
                .with_context(|| format!("no bytes_fetched in {line}"))?;
        }
        if pulled != w.images.len() {
            bail!(
                "prepull reported {pulled} pulled images, expected {}:\n{}",
                w.images.len(),
                run.stdout
            );
        }
        Ok((run, fetched))
    }

    /// W1/W3: one `ctr content fetch` or `ctr images pull`; W4: one per image, in a loop (total
    /// wall time, max RSS, summed CPU).
    async fn run_ctr(&self, c: &Containerd, w: &Workload, mode: Mode) -> anyhow::Result<ChildRun> {
        // The ctr of the same containerd release as the daemon.
        let ctr = c.install().ctr();
        let mut total = ChildRun {
            wall: Duration::ZERO,
            rss_kib: None,
            cpu_secs: None,
            stdout: String::new(),
        };
        let started = Instant::now();
        for image in &w.images {
            let mut args: Vec<String> = vec![
                "--address".into(),
                c.socket().display().to_string(),
                "-n".into(),
                "k8s.io".into(),
            ];
            match mode {
                Mode::Fetch => args.extend(["content".into(), "fetch".into()]),
                Mode::Pull => args.extend([
                    "images".into(),
                    "pull".into(),
                    "--snapshotter".into(),
                    c.snapshotter().to_string(),
                ]),
            }
            args.extend(["--plain-http".into(), image.clone()]);
            let run = self.timed_client(&ctr, args).await?;
            total.rss_kib = match (total.rss_kib, run.rss_kib) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            total.cpu_secs = match (total.cpu_secs, run.cpu_secs) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        // The loop's own wall time, so the gaps between invocations count like a shell loop's.
        total.wall = started.elapsed();
        Ok(total)
    }
}

/// CRI `PullImage` for every image of `w`, `parallel` at a time, as the kubelet asks it: from
/// this process, so there is no client process to measure: no client RSS, and client CPU 0 (the
/// calls' own CPU counts as "other"). containerd does the work, measured as for the other tools.
async fn run_cri(c: &Containerd, w: &Workload, parallel: usize) -> anyhow::Result<ChildRun> {
    let channel = prepull::cri::connect(c.socket())
        .await
        .with_context(|| format!("cannot connect to CRI at {}", c.socket().display()))?;
    let started = Instant::now();
    let pulls = futures_util::stream::iter(w.images.iter().map(|image| {
        let mut client = ImageServiceClient::new(channel.clone());
        async move {
            let request = PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match tokio::time::timeout(CRI_PULL_TIMEOUT, client.pull_image(request)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => bail!("CRI PullImage {image} failed: {status}"),
                Err(_) => bail!("CRI PullImage {image} took over {CRI_PULL_TIMEOUT:?}"),
            }
        }
    }))
    .buffer_unordered(parallel);
    let results: Vec<anyhow::Result<()>> = pulls.collect().await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(ChildRun {
        wall: started.elapsed(),
        rss_kib: None,
        cpu_secs: Some(0.0),
        stdout: String::new(),
    })
}

/// Bounds one CRI pull, so a wedged containerd fails the run instead of hanging the bench.
const CRI_PULL_TIMEOUT: Duration = Duration::from_secs(600);
