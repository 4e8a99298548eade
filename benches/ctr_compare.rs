//! `ctr_compare`: wall time, peak memory and CPU of `prepull pull` against containerd's own `ctr`,
//! each pulling the same images from a loopback docker-registry into a fresh containerd, plus the
//! machine's `dd … conv=fsync` floor for writing the same number of bytes.
//!
//! Run with `cargo bench --bench ctr_compare [-- --runs N --workloads w1,w3,w4 --modes fetch,pull]`.
//! Prints a markdown report to stdout and writes it to `benches/results/ctr_compare.md`; progress
//! goes to stderr.
//!
//! Workloads (pushed once into one registry kept for the whole run):
//! - W1: one image, 8 layers x 32 MiB;
//! - W3: one image, a single 512 MiB layer;
//! - W4: 100 images x 3 layers x 1 MiB.
//!
//! Two modes compare like with like:
//! - `fetch`: `prepull pull --no-unpack` against `ctr content fetch` (content store + image record);
//! - `pull`: `prepull pull` (which unpacks into CRI's snapshotter) against `ctr images pull` into
//!   the same snapshotter. W4 in this mode is the loop of 100 `ctr images pull`.
//!
//! A prepull without `--no-unpack` (before it learnt to unpack) only stores content, so then only
//! the `fetch` mode runs, against `ctr content fetch`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{self, StreamExt as _};
use rand::RngCore as _;
use support::{push_image, Containerd, ImageSpec, PushedImage, Registry};

const MIB: usize = 1 << 20;
/// GNU time; `-f %M` prints the child's peak RSS in KiB.
const GNU_TIME: &str = "/usr/bin/time";
/// W4 pushes this many images at once: enough to keep the registry busy, few enough not to drown
/// 2 cores in layer generation.
const PUSH_CONCURRENCY: usize = 8;
/// The fsync floor is a median too, so it needs a few samples even when `--runs` is 1 or 2.
const MIN_FLOOR_RUNS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WorkloadId {
    W1,
    W3,
    W4,
}

impl WorkloadId {
    const ALL: [WorkloadId; 3] = [WorkloadId::W1, WorkloadId::W3, WorkloadId::W4];

    fn parse(s: &str) -> anyhow::Result<WorkloadId> {
        match s.trim().to_ascii_lowercase().as_str() {
            "w1" => Ok(WorkloadId::W1),
            "w3" => Ok(WorkloadId::W3),
            "w4" => Ok(WorkloadId::W4),
            other => bail!("unknown workload {other:?} (known: w1, w3, w4)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            WorkloadId::W1 => "W1",
            WorkloadId::W3 => "W3",
            WorkloadId::W4 => "W4",
        }
    }

    fn description(self) -> &'static str {
        match self {
            WorkloadId::W1 => "1 image, 8 layers x 32 MiB",
            WorkloadId::W3 => "1 image, 1 layer x 512 MiB",
            WorkloadId::W4 => "100 images x 3 layers x 1 MiB",
        }
    }

    /// Big single-image workloads take long enough per run that 3 runs already say a lot on 2 cores.
    fn default_runs(self) -> usize {
        match self {
            WorkloadId::W1 => 5,
            WorkloadId::W3 | WorkloadId::W4 => 3,
        }
    }

    /// (number of images, layer sizes of each)
    fn shape(self) -> (usize, Vec<usize>) {
        match self {
            WorkloadId::W1 => (1, vec![32 * MIB; 8]),
            WorkloadId::W3 => (1, vec![512 * MIB]),
            WorkloadId::W4 => (100, vec![MIB; 3]),
        }
    }
}

struct Args {
    runs: Option<usize>,
    workloads: Vec<WorkloadId>,
    /// Longest wait for a quiet machine before each timed run; zero skips the check.
    quiet_wait: Duration,
    /// `None`: every mode this prepull supports.
    modes: Option<Vec<Mode>>,
}

const USAGE: &str = "usage: cargo bench --bench ctr_compare -- [--runs N] [--workloads w1,w3,w4] [--modes fetch,pull] [--quiet-wait SECS]\n\
    --runs N          runs per tool, mode and workload (default: W1 5, W3 3, W4 3)\n\
    --workloads LIST  which workloads to run (default: w1,w3,w4)\n\
    --modes LIST      fetch: prepull --no-unpack vs ctr content fetch; pull: prepull vs ctr images pull (default: both, when prepull unpacks)\n\
    --quiet-wait SECS before each run, wait up to SECS for other work on the machine to stop (default 120; 0: do not wait)";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: None,
        workloads: WorkloadId::ALL.to_vec(),
        quiet_wait: Duration::from_secs(120),
        modes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
        };
        match key.as_str() {
            // cargo passes --bench to every harness = false bench.
            "--bench" => {}
            "--runs" => {
                let v = value("--runs")?;
                let n: usize = v
                    .parse()
                    .with_context(|| format!("--runs {v:?} is not a number"))?;
                if n == 0 {
                    bail!("--runs must be at least 1");
                }
                args.runs = Some(n);
            }
            "--workloads" => {
                let v = value("--workloads")?;
                let mut seen = HashSet::new();
                args.workloads = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(WorkloadId::parse)
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter()
                    .filter(|w| seen.insert(*w))
                    .collect();
                if args.workloads.is_empty() {
                    bail!("--workloads names no workload\n{USAGE}");
                }
            }
            "--modes" => {
                let v = value("--modes")?;
                let mut seen = HashSet::new();
                let modes: Vec<Mode> = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(Mode::parse)
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter()
                    .filter(|m| seen.insert(*m))
                    .collect();
                if modes.is_empty() {
                    bail!("--modes names no mode\n{USAGE}");
                }
                args.modes = Some(modes);
            }
            "--quiet-wait" => {
                let v = value("--quiet-wait")?;
                let secs: u64 = v
                    .parse()
                    .with_context(|| format!("--quiet-wait {v:?} is not a number of seconds"))?;
                args.quiet_wait = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// One workload as pushed: references to pull and every blob that must end up in containerd.
struct Workload {
    id: WorkloadId,
    runs: usize,
    images: Vec<String>,
    /// Manifests, configs and layers of all images.
    digests: Vec<String>,
    /// Sum of the sizes of `digests`: what either tool has to fetch and store.
    bytes: u64,
    /// The manifests' share of `bytes`; prepull's `bytes_fetched` leaves manifests out.
    manifest_bytes: u64,
    /// Layers over all images: the snapshots an unpack must leave behind (all layers differ).
    layers: usize,
}

impl Workload {
    fn from_pushed(
        id: WorkloadId,
        runs: usize,
        host: &str,
        pushed: Vec<(String, PushedImage)>,
    ) -> Self {
        let mut digests = Vec::new();
        let mut bytes = 0;
        let mut manifest_bytes = 0;
        let mut layers = 0;
        let mut images = Vec::new();
        for (repo_tag, image) in pushed {
            images.push(format!("{host}/{repo_tag}"));
            manifest_bytes += image.manifest.size;
            layers += image.layers.len();
            for blob in std::iter::once(&image.manifest)
                .chain(std::iter::once(&image.config))
                .chain(image.layers.iter())
            {
                digests.push(blob.digest.clone());
                bytes += blob.size;
            }
        }
        Workload {
            id,
            runs,
            images,
            digests,
            bytes,
            manifest_bytes,
            layers,
        }
    }

    fn mib(&self) -> f64 {
        self.bytes as f64 / MIB as f64
    }
}

async fn push_workload(registry: &Registry, id: WorkloadId, runs: usize) -> Workload {
    let (count, layers) = id.shape();
    let host = registry.host();
    let started = Instant::now();
    // gzip level 0: the layers are random bytes anyway, and storing is much faster than deflating.
    let spec = ImageSpec::new(&layers).gzip_level(0);
    let repo_tags: Vec<(String, String)> = (0..count)
        .map(|i| {
            let repo = if count == 1 {
                format!("bench/{}", id.name().to_lowercase())
            } else {
                format!("bench/{}-{i:03}", id.name().to_lowercase())
            };
            (repo, "v1".to_string())
        })
        .collect();
    let pushed: Vec<(String, PushedImage)> = stream::iter(repo_tags)
        .map(|(repo, tag)| {
            let host = host.clone();
            let spec = spec.clone();
            async move {
                let image = push_image(&host, &repo, &tag, &spec).await;
                (format!("{repo}:{tag}"), image)
            }
        })
        // `buffered` keeps the images in order, so W4's invocations are the same every run.
        .buffered(PUSH_CONCURRENCY)
        .collect()
        .await;
    let w = Workload::from_pushed(id, runs, &host, pushed);
    eprintln!(
        "[{}] pushed {} image(s), {} blobs, {:.1} MiB in {:.1} s",
        id.name(),
        w.images.len(),
        w.digests.len(),
        w.mib(),
        started.elapsed().as_secs_f64()
    );
    w
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Prepull,
    Ctr,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Prepull => "prepull",
            Tool::Ctr => "ctr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    /// Content store only.
    Fetch,
    /// Content store and unpacked snapshots.
    Pull,
}

impl Mode {
    fn parse(s: &str) -> anyhow::Result<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fetch" => Ok(Mode::Fetch),
            "pull" => Ok(Mode::Pull),
            other => bail!("unknown mode {other:?} (known: fetch, pull)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Fetch => "fetch",
            Mode::Pull => "pull",
        }
    }

    /// The command each tool runs in this mode, for the report.
    fn command(self, tool: Tool, prepull_unpacks: bool) -> &'static str {
        match (self, tool) {
            (Mode::Fetch, Tool::Prepull) if prepull_unpacks => "prepull pull --no-unpack",
            (Mode::Fetch, Tool::Prepull) => "prepull pull",
            (Mode::Pull, Tool::Prepull) => "prepull pull --snapshotter S",
            (Mode::Fetch, Tool::Ctr) => "ctr content fetch",
            (Mode::Pull, Tool::Ctr) => "ctr images pull --snapshotter S",
        }
    }
}

/// One timed run of one tool.
#[derive(Clone, Debug)]
struct Sample {
    run: usize,
    mode: Mode,
    tool: Tool,
    wall: Duration,
    /// Peak RSS of the client process (max over W4's ctr loop), in KiB.
    rss_kib: Option<u64>,
    /// containerd's own peak RSS (VmHWM, since its start just before the run), in KiB. Both tools
    /// stream every byte through containerd's Content.Write, so its memory counts too.
    containerd_rss_kib: Option<u64>,
    /// What prepull said it fetched (sum of `bytes_fetched` over its JSON lines).
    reported_bytes: Option<u64>,
    /// How long the run waited for a quiet machine, and the busy share it started with.
    waited: Duration,
    busy_share: Option<f64>,
    /// See [`top_others`].
    top_others: String,
    /// CPU seconds (user + system) during the timed part: the client (sum over W4's ctr loop),
    /// containerd and the registry. On 2 cores these say where the wall time goes.
    cpu: Cpu,
}

#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    client: Option<f64>,
    containerd: Option<f64>,
    registry: Option<f64>,
    /// Busy CPU of the whole machine minus the three above: kernel threads (writeback) and
    /// anything else running meanwhile, e.g. other people's builds and tests on a shared box.
    other: Option<f64>,
}

/// The processes (other than the client, containerd and the registry) that used the most CPU
/// during a run, e.g. `rustc 7.9, jbd2/vda-8 0.2`: says whether "other" was our own kernel
/// writeback or someone else's work.
fn top_others(before: &ProcCpu, after: &ProcCpu, exclude: &[Option<u32>], n: usize) -> String {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for (pid, (name, cpu)) in after {
        if exclude.contains(&Some(*pid)) {
            continue;
        }
        // Match by pid only: kernel workers rename themselves after the work they pick up
        // (`kworker/u8:2-writeback`, `…-ext4-rsv-conversion`). A process that started during
        // the run used all of its CPU in it.
        let start = before.get(pid).map_or(0.0, |(_, c)| *c);
        let used = cpu - start;
        if used > 0.0 {
            *by_name.entry(name.clone()).or_default() += used;
        }
    }
    let mut v: Vec<(String, f64)> = by_name.into_iter().filter(|(_, c)| *c >= 0.05).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(n);
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|(name, c)| format!("{name} {c:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// pid -> (command name, CPU seconds so far) for every process.
type ProcCpu = std::collections::HashMap<u32, (String, f64)>;

fn all_proc_cpu() -> ProcCpu {
    let mut out = ProcCpu::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        if let Some(cpu) = cpu_secs(pid) {
            out.insert(pid, (name, cpu));
        }
    }
    out
}

/// Result of one child process.
struct ChildRun {
    wall: Duration,
    rss_kib: Option<u64>,
    /// User + system CPU seconds of the child, from GNU time.
    cpu_secs: Option<f64>,
    stdout: String,
}

/// Runs `program args`, through GNU time when available, and times it with a monotonic clock.
/// A non-zero exit is an error carrying the command's stderr.
async fn timed(program: &Path, args: &[String], gnu_time: bool) -> anyhow::Result<ChildRun> {
    let rss_file =
        tempfile::NamedTempFile::new().context("create a temp file for GNU time's output")?;
    let mut cmd = if gnu_time {
        let mut c = tokio::process::Command::new(GNU_TIME);
        // -o keeps time's line out of the child's stderr, which we show verbatim on failure.
        c.arg("-f")
            .arg("%M %U %S")
            .arg("-o")
            .arg(rss_file.path())
            .arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE");
    let started = Instant::now();
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot start {}", program.display()))?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{} {}` failed with {}\n--- stderr ---\n{}\n--- stdout (tail) ---\n{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            tail(&String::from_utf8_lossy(&out.stdout), 20)
        );
    }
    let (rss_kib, cpu_secs) = if gnu_time {
        let text = std::fs::read_to_string(rss_file.path()).context("read GNU time's output")?;
        let (rss, cpu) = parse_gnu_time(&text)
            .with_context(|| format!("GNU time printed {text:?}, expected \"KiB user sys\""))?;
        (Some(rss), Some(cpu))
    } else {
        (None, None)
    };
    Ok(ChildRun {
        wall,
        rss_kib,
        cpu_secs,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// `%M %U %S` -> (peak RSS KiB, user + system seconds). On success the file holds just that line;
/// take the last non-empty line to be safe.
fn parse_gnu_time(text: &str) -> anyhow::Result<(u64, f64)> {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    let [rss, user, sys] = f[..] else {
        bail!("expected 3 fields, got {}", f.len());
    };
    Ok((rss.parse()?, user.parse::<f64>()? + sys.parse::<f64>()?))
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Bench {
    prepull: PathBuf,
    /// Whether this prepull build unpacks by default (it has `--no-unpack`).
    prepull_unpacks: bool,
    host: String,
    gnu_time: bool,
    registry_pid: Option<u32>,
    quiet_wait: Duration,
}

impl Bench {
    async fn run_prepull(
        &self,
        c: &Containerd,
        w: &Workload,
        mode: Mode,
    ) -> anyhow::Result<(ChildRun, u64)> {
        let mut args: Vec<String> = vec![
            "pull".into(),
            "--containerd".into(),
            c.socket().display().to_string(),
            "--plain-http".into(),
            self.host.clone(),
            "--output".into(),
            "json".into(),
        ];
        match mode {
            Mode::Fetch if self.prepull_unpacks => args.push("--no-unpack".into()),
            Mode::Fetch => {}
            // Named explicitly so both tools surely unpack into the same snapshotter.
            Mode::Pull => args.extend(["--snapshotter".into(), c.snapshotter().to_string()]),
        }
        args.extend(w.images.iter().cloned());
        let run = timed(&self.prepull, &args, self.gnu_time).await?;
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
            let run = timed(&ctr, &args, self.gnu_time).await?;
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

    /// One run of one tool against a fresh containerd, verified afterwards (outside the timing).
    async fn sample(
        &self,
        w: &Workload,
        mode: Mode,
        tool: Tool,
        run: usize,
    ) -> anyhow::Result<Sample> {
        let c = Containerd::start().await;
        let containerd_pid = find_pid("containerd", c.dir());
        let (waited, busy_share) = if self.quiet_wait.is_zero() {
            (Duration::ZERO, None)
        } else {
            wait_for_quiet(self.quiet_wait).await
        };
        let cpu_before = (
            containerd_pid.and_then(cpu_secs),
            self.registry_pid.and_then(cpu_secs),
            machine_busy_secs(),
        );
        let procs_before = all_proc_cpu();
        let result = match tool {
            Tool::Prepull => self
                .run_prepull(&c, w, mode)
                .await
                .map(|(r, b)| (r, Some(b))),
            Tool::Ctr => self.run_ctr(&c, w, mode).await.map(|r| (r, None)),
        };
        let (child, reported_bytes) = result.map_err(|e| {
            anyhow!(
                "[{}] run {run} {} {} failed: {e:#}\n--- tail of containerd log ---\n{}",
                w.id.name(),
                mode.name(),
                tool.name(),
                c.log_tail(30)
            )
        })?;
        let delta = |before: Option<f64>, pid: Option<u32>| Some(pid.and_then(cpu_secs)? - before?);
        let busy = machine_busy_secs()
            .zip(cpu_before.2)
            .map(|(after, before)| after - before);
        let top_others = top_others(
            &procs_before,
            &all_proc_cpu(),
            &[containerd_pid, self.registry_pid, Some(std::process::id())],
            3,
        );
        let mut cpu = Cpu {
            client: child.cpu_secs,
            containerd: delta(cpu_before.0, containerd_pid),
            registry: delta(cpu_before.1, self.registry_pid),
            other: None,
        };
        cpu.other = (|| Some((busy? - cpu.client? - cpu.containerd? - cpu.registry?).max(0.0)))();
        let containerd_rss_kib = containerd_pid.and_then(peak_rss_kib);
        let what = || {
            format!(
                "[{}] run {run} {} {}",
                w.id.name(),
                mode.name(),
                tool.name()
            )
        };
        verify_content(&c, w).with_context(what)?;
        if mode == Mode::Pull {
            verify_unpacked(&c, w).with_context(what)?;
        }
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
            cpu,
        })
    }
}

/// Every manifest, config and layer of the workload is committed in containerd's k8s.io namespace.
fn verify_content(c: &Containerd, w: &Workload) -> anyhow::Result<()> {
    let out = c.ctr(&["-n", "k8s.io", "content", "ls", "-q"]);
    if !out.status.success() {
        bail!(
            "ctr content ls failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let have: HashSet<&str> = listed.lines().map(str::trim).collect();
    let missing: Vec<&String> = w
        .digests
        .iter()
        .filter(|d| !have.contains(d.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} blobs missing from containerd after the run, e.g. {}",
            missing.len(),
            w.digests.len(),
            missing[0]
        );
    }
    Ok(())
}

/// At least one committed snapshot per layer in the snapshotter both tools unpack into.
fn verify_unpacked(c: &Containerd, w: &Workload) -> anyhow::Result<()> {
    let out = c.ctr(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        c.snapshotter(),
        "ls",
    ]);
    if !out.status.success() {
        bail!(
            "ctr snapshots ls failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Columns: KEY PARENT KIND; a base layer has no parent, so look at the last column.
    let committed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count();
    if committed < w.layers {
        bail!(
            "{committed} committed {} snapshots after the run, expected at least {} (one per layer)",
            c.snapshotter(),
            w.layers
        );
    }
    Ok(())
}

/// The pid of the `program` process whose command line names a file under `dir` (its config): how
/// the bench tells its own containerd and registry apart from any other.
fn find_pid(program: &str, dir: &Path) -> Option<u32> {
    let dir = dir.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ours = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some(program))
            && args
                .iter()
                .skip(1)
                .any(|a| a.starts_with(&format!("{dir}/")));
        if is_ours {
            return Some(pid);
        }
    }
    None
}

/// VmHWM (peak RSS since start) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds a process has used so far (its threads included).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields after its closing parenthesis, where
    // field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks()?)
}

/// Busy (not idle, not iowait) CPU seconds of the whole machine since boot, from /proc/stat.
fn machine_busy_secs() -> Option<f64> {
    machine_cpu_secs().map(|(busy, _)| busy)
}

/// (busy, total) CPU seconds of the whole machine since boot, summed over all cores.
fn machine_cpu_secs() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user/nice).
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0);
    let total = busy + f.get(3)? + f.get(4)?;
    let hz = clock_ticks()?;
    Some((busy as f64 / hz, total as f64 / hz))
}

/// The machine counts as quiet when less than this share of all cores was busy over
/// [`QUIET_WINDOW`] (our idle containerd and registry included).
const QUIET_SHARE: f64 = 0.10;
const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// Waits (at most `max_wait`) until the machine is quiet, because on a shared box someone else's
/// build running during one tool's run and not the other's would decide the comparison. Returns
/// how long it waited and the last busy share seen.
async fn wait_for_quiet(max_wait: Duration) -> (Duration, Option<f64>) {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let Some(before) = machine_cpu_secs() else {
            return (started.elapsed(), None);
        };
        tokio::time::sleep(QUIET_WINDOW).await;
        let Some(after) = machine_cpu_secs() else {
            return (started.elapsed(), None);
        };
        let share = (after.0 - before.0) / (after.1 - before.1).max(1e-9);
        if share < QUIET_SHARE || started.elapsed() >= max_wait {
            if announced {
                eprintln!(
                    "  …waited {:.0} s, machine now {:.0}% busy{}",
                    started.elapsed().as_secs_f64(),
                    share * 100.0,
                    if share < QUIET_SHARE {
                        ""
                    } else {
                        " (gave up waiting; see \"other\" CPU)"
                    }
                );
            }
            return (started.elapsed(), Some(share));
        }
        if !announced {
            eprintln!(
                "  machine {:.0}% busy with other work; waiting up to {} s for it to go quiet",
                share * 100.0,
                max_wait.as_secs()
            );
            announced = true;
        }
    }
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn sync() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("warning: sync failed: {e}");
    }
}

/// A file of random bytes in memory (tmpfs when there is one, else the page cache) for dd to copy,
/// so the floor measures the destination disk, not a random number generator.
fn floor_source(mib: usize) -> anyhow::Result<tempfile::NamedTempFile> {
    let shm = Path::new("/dev/shm");
    let mut f = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("ctr-compare-src-")
            .tempfile_in(shm)
    } else {
        tempfile::NamedTempFile::new()
    }
    .context("create the floor's source file")?;
    let mut rng = rand::rng();
    let mut buf = vec![0u8; MIB];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf).context("write the floor's source file")?;
    }
    f.flush().context("flush the floor's source file")?;
    Ok(f)
}

/// `dd if=SRC of=DST bs=1M count=MIB conv=fsync`, timed, `runs` times; DST is on containerd's
/// filesystem (inside a containerd root) and removed between runs.
fn fsync_floor(
    src: &Path,
    dst_dir: &Path,
    mib: usize,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let dst = dst_dir.join("floor.bin");
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let _ = std::fs::remove_file(&dst);
        sync();
        let started = Instant::now();
        let res = std::process::Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dst.display()))
            .arg("bs=1M")
            .arg(format!("count={mib}"))
            .arg("conv=fsync")
            .stdin(Stdio::null())
            .output()
            .context("run dd")?;
        let wall = started.elapsed();
        if !res.status.success() {
            bail!(
                "dd failed with {}: {}",
                res.status,
                String::from_utf8_lossy(&res.stderr)
            );
        }
        out.push(wall);
    }
    let _ = std::fs::remove_file(&dst);
    Ok(out)
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn median(values: &[f64]) -> Option<f64> {
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

fn stats(values: &[f64]) -> Option<Stats> {
    Some(Stats {
        median: median(values)?,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

struct WorkloadResult {
    workload: Workload,
    samples: Vec<Sample>,
    floor: Vec<Duration>,
}

/// A run counts as disturbed when CPU outside the three processes exceeds this share of the
/// machine's capacity during it.
const DISTURBED_SHARE: f64 = 0.10;

impl Sample {
    fn disturbed(&self, cores: f64) -> bool {
        self.cpu
            .other
            .is_some_and(|o| o > DISTURBED_SHARE * cores * self.wall.as_secs_f64())
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

impl WorkloadResult {
    fn of(&self, mode: Mode, tool: Tool) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.mode == mode && s.tool == tool)
    }

    fn walls(&self, mode: Mode, tool: Tool) -> Vec<f64> {
        self.of(mode, tool).map(|s| s.wall.as_secs_f64()).collect()
    }

    fn rss_median_mib(&self, mode: Mode, tool: Tool, containerd: bool) -> Option<f64> {
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

    fn disturbed(&self, mode: Mode, tool: Tool) -> String {
        let runs: Vec<&Sample> = self.of(mode, tool).collect();
        let bad = runs.iter().filter(|s| s.disturbed(cores())).count();
        format!("{bad}/{}", runs.len())
    }

    fn cpu_median(&self, mode: Mode, tool: Tool, pick: fn(&Cpu) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.of(mode, tool).filter_map(|s| pick(&s.cpu)).collect();
        median(&v)
    }

    fn floor_median(&self) -> Option<f64> {
        median(
            &self
                .floor
                .iter()
                .map(Duration::as_secs_f64)
                .collect::<Vec<_>>(),
        )
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn opt_mib(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "n/a".into())
}

fn opt_secs(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into())
}

fn opt_kib(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into())
}

/// Output of a command for the report header; the error text when it cannot run.
fn command_line(program: &str, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!(
            "({program} failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("({program}: {e})"),
    }
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "unknown".into())
}

/// What the report says about the machine and the containerd the runs used.
struct Context {
    load_before: String,
    binary_note: String,
    /// `containerd --version`'s version of the daemon the runs used, and its ctr.
    containerd_version: String,
    ctr: PathBuf,
    snapshotter: String,
    modes: Vec<Mode>,
}

fn report(results: &[WorkloadResult], bench: &Bench, cx: &Context) -> String {
    let mut md = String::new();
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let nproc = command_line("nproc", &[]);
    let git_head = command_line("git", &["-C", manifest_dir, "rev-parse", "--short", "HEAD"]);
    let dirty = command_line(
        "git",
        &[
            "-C",
            manifest_dir,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "proto",
        ],
    );
    let _ = writeln!(md, "# prepull vs ctr: pulling images into containerd");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Machine: `{}`, {} cores, {} RAM, containerd {} (`{}`), `{}`. Date: {}.",
        command_line("uname", &["-srm"]),
        nproc,
        mem_total(),
        cx.containerd_version,
        cx.ctr.display(),
        command_line(&cx.ctr.to_string_lossy(), &["--version"]),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Load average (1/5/15 min) before the bench: {}; after: {}.",
        cx.load_before,
        load_average()
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "prepull: `{}` (release build; git HEAD {}{}){}.",
        bench.prepull.display(),
        git_head,
        if dirty.is_empty() {
            ""
        } else {
            ", with uncommitted changes"
        },
        cx.binary_note
    );
    let _ = writeln!(md);
    if bench.prepull_unpacks {
        let _ = writeln!(
            md,
            "> **This prepull unpacks layers by default** (it has `--no-unpack`), so the bench compares like with like in two modes: \
             **fetch** = `prepull pull --no-unpack` vs `ctr content fetch` (content store + image record), and \
             **pull** = `prepull pull` vs `ctr images pull`, both unpacking into the `{}` snapshotter (CRI's in these containerds). \
             W4 in pull mode is the issue's loop of 100 `ctr images pull`.",
            cx.snapshotter
        );
    } else {
        let _ = writeln!(
            md,
            "> **prepull does not unpack layers yet** (no `--no-unpack` in its help), so every workload compares it against \
             `ctr content fetch` (fetch + verify into the content store + image record), not `ctr images pull`. \
             W4 is specified as a loop of 100 `ctr images pull`; here it is a loop of 100 `ctr content fetch` for the same reason."
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Setup: one docker-registry on loopback (plain HTTP), synthetic images with random layers (gzip level 0); \
         every run gets a fresh containerd (snapshotter `{}`, empty content store), started before and removed after the timed part, \
         and is checked afterwards (every blob in the content store; in pull mode, a committed snapshot per layer). \
         Runs alternate prepull, ctr, prepull, ctr, … (and the modes alternate within each round). Commands:",
        cx.snapshotter
    );
    let _ = writeln!(md);
    for mode in &cx.modes {
        let _ = writeln!(
            md,
            "- {}: `{} --containerd SOCK --plain-http HOST --output json IMAGE...` (all images in one invocation) vs \
             `ctr --address SOCK -n k8s.io {} --plain-http IMAGE` (one invocation per image, sequentially); both at their default download concurrency",
            mode.name(),
            mode.command(Tool::Prepull, bench.prepull_unpacks),
            mode.command(Tool::Ctr, bench.prepull_unpacks).trim_start_matches("ctr "),
        );
    }
    let _ = writeln!(
        md,
        "- floor: `dd if=SRC of=DST bs=1M count=MiB conv=fsync`, SRC a random file in tmpfs, DST inside a containerd root (same filesystem). \
         It writes the blob bytes once, with one fsync; the tools fsync each blob, and in pull mode also write every layer's files into a snapshot."
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Wall time is a monotonic clock around the child process (W4 ctr: around the whole loop). Peak RSS is GNU time's `%M` of the client (W4 ctr: the largest of the 100); \
         containerd RSS is its VmHWM after the run. MB/s = 10^6 bytes per second of the workload's bytes (manifests + configs + layers) at the median time. \
         CPU s is user + system time during the timed part: the client's from GNU time (W4 ctr: summed over the loop), containerd's and the registry's from /proc/PID/stat before and after; \
         \"other\" is the machine's busy CPU (/proc/stat) minus those three: kernel writeback, this bench's own process and whatever else ran meanwhile. \
         Before each timed run the bench waits (up to {wait} s) until less than {share:.0}% of the machine's CPU was busy over {window} s; \
         \"Busy before\" and \"Waited\" in the raw tables show how that went. \
         A run counts as *disturbed* when \"other\" CPU exceeded {disturbed:.0}% of the machine's capacity during it; \"Top other\" in the raw tables names the processes behind it. \
         With {cores} cores, a run cannot be faster than (client + containerd + registry CPU) / {cores}. \
         ctr/prepull > 1 means prepull is faster; x floor = median / the fsync floor's median.",
        cores = nproc,
        wait = bench.quiet_wait.as_secs(),
        share = QUIET_SHARE * 100.0,
        window = QUIET_WINDOW.as_secs(),
        disturbed = DISTURBED_SHARE * 100.0
    );
    if !bench.gnu_time {
        let _ = writeln!(md);
        let _ = writeln!(md, "**{GNU_TIME} was missing, so client peak RSS and CPU were not measured** (`apt-get install -y time`).");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Summary");
    let _ = writeln!(md);
    let _ = writeln!(md, "| Workload | MiB | Mode | Tool | Runs | Median s | Min s | Max s | MB/s | ctr/prepull | x floor | Peak RSS MiB (median) | containerd peak RSS MiB (median) | CPU s client / containerd / registry / other (medians) | Disturbed runs |");
    let _ = writeln!(
        md,
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let w = &r.workload;
        let floor = r.floor_median();
        for mode in &cx.modes {
            let mode = *mode;
            let p = stats(&r.walls(mode, Tool::Prepull));
            let c = stats(&r.walls(mode, Tool::Ctr));
            let ratio = match (p, c) {
                (Some(p), Some(c)) => format!("**{:.2}**", c.median / p.median),
                _ => "n/a".into(),
            };
            for (tool, s) in [(Tool::Prepull, p), (Tool::Ctr, c)] {
                let Some(s) = s else { continue };
                let _ = writeln!(
                    md,
                    "| {} ({}) | {:.1} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} | {} / {} / {} / {} | {} |",
                    w.id.name(),
                    w.id.description(),
                    w.mib(),
                    mode.name(),
                    tool.name(),
                    r.walls(mode, tool).len(),
                    s.median,
                    s.min,
                    s.max,
                    mbps(w.bytes, s.median),
                    if tool == Tool::Prepull { ratio.clone() } else { String::new() },
                    floor.map(|f| format!("{:.1}", s.median / f)).unwrap_or_else(|| "n/a".into()),
                    opt_mib(r.rss_median_mib(mode, tool, false)),
                    opt_mib(r.rss_median_mib(mode, tool, true)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.client)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.containerd)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.registry)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.other)),
                    r.disturbed(mode, tool),
                );
            }
        }
    }
    let _ = writeln!(md);
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
    let _ = writeln!(md, "## Raw runs");
    for r in results {
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
        let _ = writeln!(md, "| Run | Mode | Tool | Wall s | Peak RSS KiB | containerd peak RSS KiB | CPU s client | CPU s containerd | CPU s registry | CPU s other | Top other CPU s | Busy before % | Waited s | prepull bytes_fetched (configs + layers) |");
        let _ = writeln!(
            md,
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
        );
        for s in &r.samples {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
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
            );
        }
        let floor: Vec<String> = r
            .floor
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect();
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "fsync floor runs ({} MiB), s: {}",
            floor_mib(w),
            floor.join(", ")
        );
    }
    md
}

/// Whether this prepull unpacks by default: it then has `--no-unpack` to opt out.
fn prepull_unpacks(prepull: &Path) -> anyhow::Result<bool> {
    let out = std::process::Command::new(prepull)
        .args(["pull", "--help"])
        .output()
        .with_context(|| format!("run {} pull --help", prepull.display()))?;
    if !out.status.success() {
        bail!(
            "{} pull --help failed with {}: {}",
            prepull.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).contains("--no-unpack"))
}

fn floor_mib(w: &Workload) -> usize {
    (w.bytes as usize).div_ceil(MIB)
}

/// The release prepull binary; builds it through cargo when it is missing.
fn prepull_binary() -> anyhow::Result<(PathBuf, String)> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                manifest_dir.join(t)
            }
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let binary = target.join("release").join("prepull");
    if binary.is_file() {
        return Ok((binary, String::new()));
    }
    eprintln!(
        "{} is missing: running `cargo build --release --bin prepull` (a few minutes on 2 cores)",
        binary.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "prepull"])
        .current_dir(manifest_dir)
        .status()
        .context("run cargo build --release --bin prepull")?;
    if !status.success() || !binary.is_file() {
        bail!(
            "cargo build --release --bin prepull failed ({status}); {} still missing",
            binary.display()
        );
    }
    Ok((
        binary,
        "; built by this bench because it was missing".into(),
    ))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let load_before = load_average();
    eprintln!("load average: {load_before}");
    let (prepull, binary_note) = prepull_binary()?;
    for tool in ["docker-registry", "dd", "sync"] {
        if find_in_path(tool).is_none() {
            bail!("`{tool}` is not in PATH; install docker-registry and coreutils (see /work/shared/notes/test-bench.md)");
        }
    }
    let gnu_time = Path::new(GNU_TIME).is_file();
    if !gnu_time {
        eprintln!(
            "WARNING: {GNU_TIME} (GNU time) is missing, so peak RSS and client CPU will not be \
             measured; install it with `apt-get install -y time`. Timing continues without it."
        );
    }
    let unpacks = prepull_unpacks(&prepull)?;
    let modes = match &args.modes {
        Some(m) => m.clone(),
        None if unpacks => vec![Mode::Fetch, Mode::Pull],
        None => vec![Mode::Fetch],
    };
    if !unpacks && modes.contains(&Mode::Pull) {
        bail!(
            "--modes pull needs a prepull that unpacks; {} has no --no-unpack",
            prepull.display()
        );
    }
    eprintln!(
        "prepull binary: {} ({}); modes: {}",
        prepull.display(),
        if unpacks {
            "unpacks by default"
        } else {
            "does not unpack"
        },
        modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let registry = Registry::start().await;
    let registry_dir = registry
        .storage_dir()
        .parent()
        .context("registry storage has no parent dir")?
        .to_path_buf();
    let bench = Bench {
        prepull,
        prepull_unpacks: unpacks,
        host: registry.host(),
        gnu_time,
        registry_pid: find_pid("docker-registry", &registry_dir),
        quiet_wait: args.quiet_wait,
    };
    if bench.registry_pid.is_none() {
        eprintln!("warning: cannot find the registry's pid; its CPU time will not be reported");
    }

    // Push everything first, so the registry's storage is complete (and equally warm in the page
    // cache) before any timed run.
    let mut workloads = Vec::new();
    for id in &args.workloads {
        let runs = args.runs.unwrap_or(id.default_runs());
        workloads.push(push_workload(&registry, *id, runs).await);
    }

    // One containerd root hosts the floor's destination file: the same filesystem the runs write
    // to. It also tells the report which containerd and ctr the runs use.
    let max_mib = workloads.iter().map(floor_mib).max().unwrap_or(0);
    eprintln!("generating {max_mib} MiB of random bytes for the fsync floor's source");
    let floor_src = floor_source(max_mib)?;
    let floor_host = Containerd::start().await;
    let cx = Context {
        load_before,
        binary_note,
        containerd_version: floor_host.install().version.clone(),
        ctr: floor_host.install().ctr(),
        snapshotter: floor_host.snapshotter().to_string(),
        modes: modes.clone(),
    };

    let mut results = Vec::new();
    for w in workloads {
        let floor_runs = w.runs.max(MIN_FLOOR_RUNS);
        let floor = fsync_floor(
            floor_src.path(),
            floor_host.root(),
            floor_mib(&w),
            floor_runs,
        )?;
        eprintln!(
            "[{}] fsync floor, {} MiB: {}",
            w.id.name(),
            floor_mib(&w),
            floor
                .iter()
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut samples = Vec::with_capacity(2 * modes.len() * w.runs);
        for run in 1..=w.runs {
            for mode in &modes {
                for tool in [Tool::Prepull, Tool::Ctr] {
                    let s = bench.sample(&w, *mode, tool, run).await?;
                    eprintln!(
                        "[{}] run {run}/{} {:<5} {:<7} {:>7.2} s  {:>6.0} MB/s  RSS {} KiB  containerd {} KiB  CPU s client/containerd/registry/other {}/{}/{}/{} (top other: {})",
                        w.id.name(),
                        w.runs,
                        mode.name(),
                        tool.name(),
                        s.wall.as_secs_f64(),
                        mbps(w.bytes, s.wall.as_secs_f64()),
                        opt_kib(s.rss_kib),
                        opt_kib(s.containerd_rss_kib),
                        opt_secs(s.cpu.client),
                        opt_secs(s.cpu.containerd),
                        opt_secs(s.cpu.registry),
                        opt_secs(s.cpu.other),
                        s.top_others,
                    );
                    if let Some(b) = s.reported_bytes {
                        if b != w.bytes - w.manifest_bytes {
                            eprintln!(
                                "[{}] note: prepull reported {b} bytes fetched; configs + layers are {} bytes",
                                w.id.name(),
                                w.bytes - w.manifest_bytes
                            );
                        }
                    }
                    samples.push(s);
                }
            }
        }
        results.push(WorkloadResult {
            workload: w,
            samples,
            floor,
        });
    }
    drop(floor_host);
    drop(floor_src);

    let md = report(&results, &bench, &cx);
    println!("{md}");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join("results");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let out = out_dir.join("ctr_compare.md");
    std::fs::write(&out, &md).with_context(|| format!("write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    drop(registry);
    Ok(())
}
