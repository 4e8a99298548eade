//! `ctr_compare`: wall time, peak memory and CPU of `prepull pull` against containerd's own `ctr`,
//! each pulling the same images from a loopback docker-registry into a fresh containerd, plus the
//! machine's `dd … conv=fsync` floor for writing the same number of bytes.
//!
//! Run with `cargo bench --bench ctr_compare [-- --runs N --workloads w1,w5,w6 --modes fetch,pull]`.
//! Prints a markdown report to stdout and writes it to `benches/results/ctr_compare.md`; progress
//! goes to stderr.
//!
//! Workloads (pushed once into one registry kept for the whole run):
//! - W1: one image, 8 layers x 32 MiB;
//! - W3: one image, a single 512 MiB layer;
//! - W4: 100 images x 3 layers x 1 MiB;
//! - W5: W1 through an emulated WAN: the registry (serving the same storage) in its own network
//!   namespace behind a veth pair with `tc netem` delay and rate on both ends (see [`wan::Wan`]);
//! - W6: steady state: 200 small images already pulled by the same tool into the same containerd,
//!   then one more pass over all 200 tags, through a recording proxy that counts every request.
//!
//! Two modes compare like with like:
//! - `fetch`: `prepull pull --no-unpack` against `ctr content fetch` (content store + image record);
//! - `pull`: `prepull pull` (which unpacks into CRI's snapshotter) against `ctr images pull` into
//!   the same snapshotter. W4 in this mode is a loop of 100 `ctr images pull`.
//!
//! A prepull without `--no-unpack` (before it learnt to unpack) only stores content, so then only
//! the `fetch` mode runs, against `ctr content fetch`.
//!
//! Where to start: [`main`] reads as the bench's steps. One timed run is [`run::Bench::sample`];
//! the order of the runs within a workload is [`rounds`]; the report's sections are under
//! [`report`].

use testbench as support;

mod args;
mod command;
mod floor;
mod prepull;
mod proc;
mod report;
mod results;
mod rounds;
mod run;
mod sample;
mod verify;
mod wan;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use support::{Containerd, Registry};

use args::Args;
use command::{find_in_path, GNU_TIME};
use proc::{find_pid, load_average};
use report::Context;
use run::profiler::Profiler;
use run::Bench;
use sample::Mode;
use workload::{push_workload, Workload};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args::parse_args()?;
    let load_before = load_average();
    eprintln!("load average: {load_before}");
    let (prepull, binary_note) = prepull::prepull_binary()?;
    // Taken now: others may commit while a long run goes on.
    let (git_head, dirty) = prepull::git_state();
    require_tools()?;
    let gnu_time = has_gnu_time();
    let unpacks = prepull::prepull_unpacks(&prepull)?;
    let modes = choose_modes(&args, &prepull, unpacks)?;

    let registry = Registry::start().await;
    let bench = start_bench(&args, &registry, prepull, unpacks, gnu_time)?;

    // Push everything first, so the registry's storage is complete (and equally warm in the page
    // cache) before any timed run.
    let mut workloads = Vec::new();
    for id in &args.workloads {
        let runs = args.runs.unwrap_or(id.default_runs());
        workloads.push(push_workload(&registry, *id, runs).await);
    }

    // One containerd root hosts the floor's destination file: the same filesystem the runs write
    // to. It also tells the report which containerd and ctr the runs use.
    let floor_src = floor_source_for(&workloads)?;
    let floor_host = Containerd::start().await;
    let cx = Context {
        load_before,
        git_head,
        dirty,
        binary_note,
        containerd_version: floor_host.install().version.clone(),
        ctr: floor_host.install().ctr(),
        snapshotter: floor_host.snapshotter().to_string(),
        modes: modes.clone(),
    };

    let mut results = Vec::new();
    for w in workloads {
        let floor = (floor_src.path(), floor_host.root());
        results.push(rounds::run_workload(&bench, &registry, w, &modes, floor).await?);
    }
    drop(floor_host);
    drop(floor_src);

    let md = report::report(&results, &bench, &cx);
    println!("{md}");
    write_report(&args, &md)?;
    drop(registry);
    Ok(())
}

/// Fails unless the programs every workload needs are in PATH.
fn require_tools() -> anyhow::Result<()> {
    for tool in ["docker-registry", "dd", "sync"] {
        if find_in_path(tool).is_none() {
            bail!("`{tool}` is not in PATH; install docker-registry and coreutils (see /work/shared/notes/test-bench.md)");
        }
    }
    Ok(())
}

/// Whether GNU time is there to measure the clients' peak RSS and CPU; the bench times the runs
/// without it.
fn has_gnu_time() -> bool {
    let gnu_time = Path::new(GNU_TIME).is_file();
    if !gnu_time {
        eprintln!(
            "WARNING: {GNU_TIME} (GNU time) is missing, so peak RSS and client CPU will not be \
             measured; install it with `apt-get install -y time`. Timing continues without it."
        );
    }
    gnu_time
}

/// `--modes`, or every mode this prepull supports; `pull` needs a prepull that unpacks.
fn choose_modes(args: &Args, prepull: &Path, unpacks: bool) -> anyhow::Result<Vec<Mode>> {
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
    Ok(modes)
}

/// The [`Bench`] for these flags, with the pid of the bench registry (found through its dir).
fn start_bench(
    args: &Args,
    registry: &Registry,
    prepull: PathBuf,
    unpacks: bool,
    gnu_time: bool,
) -> anyhow::Result<Bench> {
    let registry_dir = registry
        .storage_dir()
        .parent()
        .context("registry storage has no parent dir")?
        .to_path_buf();
    let bench = Bench {
        prepull,
        prepull_unpacks: unpacks,
        gnu_time,
        registry_pid: find_pid("docker-registry", &registry_dir),
        quiet_wait: args.quiet_wait,
        profiler: args.profile.clone().map(Profiler::new).transpose()?,
    };
    if bench.registry_pid.is_none() {
        eprintln!("warning: cannot find the registry's pid; its CPU time will not be reported");
    }
    Ok(bench)
}

/// The random bytes the fsync floor copies: as many as the largest workload that writes any.
fn floor_source_for(workloads: &[Workload]) -> anyhow::Result<tempfile::NamedTempFile> {
    let max_mib = workloads
        .iter()
        .filter(|w| !w.id.warm())
        .map(floor::floor_mib)
        .max()
        .unwrap_or(0);
    eprintln!("generating {max_mib} MiB of random bytes for the fsync floor's source");
    floor::floor_source(max_mib)
}

/// Writes the report to `--report FILE`, else beside `--profile DIR`'s profiles, else to
/// `benches/results/ctr_compare.md`.
fn write_report(args: &Args, md: &str) -> anyhow::Result<()> {
    // Profiled runs carry perf's overhead: their figures stay beside the profiles.
    let out = match (&args.report, &args.profile) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.join("ctr_compare.md"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches")
            .join("results")
            .join("ctr_compare.md"),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, md).with_context(|| format!("write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    Ok(())
}
