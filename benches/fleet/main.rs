//! `fleet`: what a fleet of nodes started together sends its registry, simulated on one
//! machine. Each node is its own containerd (root, state, socket) and its own `prepull agent`
//! (`--node-name node-NN`, status file, HTTP port), all keeping the same list warm; the one
//! upstream docker-registry sits behind a counting proxy that names the node behind every
//! connection.
//!
//! Run with `cargo bench --bench fleet [-- --nodes 20 --splay 10 --runs 1a,1b,2,3,4,4s]`. Prints a
//! markdown report and writes it to `benches/results/fleet.md`; progress goes to stderr.
//!
//! The runs (see [`runs`]):
//! - 1a: every agent started at once with `--splay`, no node name: random waits;
//! - 1b: the same with `NODE_NAME` set: each node's slot from its name;
//! - 2: through a pull-through cache (a second docker-registry in proxy mode, a mirror in each
//!   node's `hosts.toml`): one node alone first, then the fleet, each with a fresh cache;
//! - 3: with 1b's fleet warm, the app's tag moved upstream and the list edited;
//! - 4: a registry with a per-node budget of manifest GETs (Docker Hub's rule), once per budget;
//! - 4s: the same with one budget for the whole fleet (nodes behind one NAT), with the splay and
//!   without it.
//!
//! Where to start: [`main`] reads as the bench's steps; a fleet and its watch are [`fleet`]; the
//! numbers come from the proxies' records through [`traffic`]; [`report`] writes the tables.

use testbench as support;

mod args;
mod fleet;
mod node;
mod owners;
mod report;
mod runs;
mod traffic;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use args::RunId;
use owners::Owners;
use report::{Context, Results};
use runs::{Bench, BudgetScope};
use workload::{image_bytes, Cache, Images, Upstream, APP_LAYERS, TOOL_LAYERS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args::parse_args()?;
    let load_before = load_average();
    eprintln!("load average: {load_before}");
    for tool in ["docker-registry", "containerd"] {
        if !in_path(tool) {
            bail!("`{tool}` is not in PATH: run scripts/setup.sh (see benches/README.md)");
        }
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_prepull"));
    let install = support::containerd::locate(&support::ContainerdOptions::default());
    let snapshotter = support::containerd::snapshotter_from_env();

    let owners = Owners::default();
    let upstream = Upstream::start(&owners).await;
    let images = Images::push(&upstream).await;
    let image_note = format!(
        "`fleet/app:v1` ({} layers, {:.1} MiB) and `fleet/tool:v1` ({} layers, {:.1} MiB), \
         random (incompressible) layers, gzip",
        APP_LAYERS.len(),
        image_bytes(&images.app) as f64 / (1u64 << 20) as f64,
        TOOL_LAYERS.len(),
        image_bytes(&images.tool) as f64 / (1u64 << 20) as f64,
    );
    let list_dir = support::process::tempdir("bench-fleet-list-");
    let mut bench = Bench::new(
        binary,
        args.warm_timeout,
        owners.clone(),
        upstream,
        images,
        list_dir.path().join("list"),
    );
    let n = args.nodes;
    let timeout = args.warm_timeout;
    let splay = args.splay;
    let mut results = Results::default();

    let rounds = args.rounds;
    let round_label = |label: &str, round: usize| match rounds {
        1 => label.to_string(),
        _ => format!("{label} (round {round})"),
    };
    if args.runs.contains(&RunId::Random) {
        for round in 1..=rounds {
            let label = round_label("1a: random splay", round);
            let (run, mut fleet) = bench
                .fleet_run(&label, n, false, splay, None, timeout, false)
                .await?;
            fleet.stop_agents(&owners).await;
            results.random.push(run);
        }
    }
    if args.runs.contains(&RunId::Named) {
        for round in 1..=rounds {
            let label = round_label("1b: slots from node names", round);
            let (run, mut fleet) = bench
                .fleet_run(&label, n, true, splay, None, timeout, false)
                .await?;
            results.named.push(run);
            // The tag moves under the last round's fleet, warm.
            if round == rounds && args.runs.contains(&RunId::Moved) {
                results.moved = Some(bench.moved_run(&mut fleet).await);
            }
            fleet.stop_agents(&owners).await;
        }
    }
    if args.runs.contains(&RunId::NoSplay) {
        let label = "1c: no splay";
        let (run, mut fleet) = bench
            .fleet_run(label, n, true, Duration::ZERO, None, timeout, false)
            .await?;
        fleet.stop_agents(&owners).await;
        results.no_splay = Some(run);
    }
    if args.runs.contains(&RunId::Cache) {
        let mut parts = vec![("2: one node through the cache".to_string(), 1, splay)];
        for round in 1..=rounds {
            parts.push((
                round_label("2: the fleet through the cache", round),
                n,
                splay,
            ));
        }
        for round in 1..=rounds {
            let label = round_label("2: the fleet through the cache, no splay", round);
            parts.push((label, n, Duration::ZERO));
        }
        for (label, nodes, splay) in parts {
            let cache = Cache::start(&bench.upstream, &owners).await;
            let (run, mut fleet) = bench
                .fleet_run(&label, nodes, true, splay, Some(&cache), timeout, false)
                .await?;
            fleet.stop_agents(&owners).await;
            if let Some(pid) = cache.registry.pid() {
                owners.remove(pid);
            }
            match (nodes, splay.is_zero()) {
                (1, _) => results.cache_one = Some(run),
                (_, false) => results.cache_fleet.push(run),
                (_, true) => results.cache_burst.push(run),
            }
        }
    }
    // The shared budget also without a splay: every node's figures as stale as they get.
    let shared_splays = if splay.is_zero() {
        vec![splay]
    } else {
        vec![splay, Duration::ZERO]
    };
    let budgets = [
        (
            RunId::Budget,
            BudgetScope::PerNode,
            &args.budgets,
            vec![splay],
        ),
        (
            RunId::SharedBudget,
            BudgetScope::Shared,
            &args.shared_budgets,
            shared_splays,
        ),
    ];
    for (id, scope, list, splays) in budgets {
        if !args.runs.contains(&id) {
            continue;
        }
        for splay in splays {
            for &budget in list {
                let run = bench.budget_run(n, budget, scope, splay).await?;
                results.budget.push(run);
            }
        }
    }

    let cx = Context {
        command: format!(
            "cargo bench --bench fleet -- {}",
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        ),
        git: git_state(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory: mem_total(),
        load_before,
        containerd: install.version.clone(),
        snapshotter,
        nodes: n,
        splay: args.splay,
        images: image_note,
    };
    let md = report::report(&cx, &results);
    println!("{md}");
    let out = args
        .report
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/fleet.md"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, md).with_context(|| format!("write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    Ok(())
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// The sources' commit, and whether what the binary is built from has uncommitted changes.
fn git_state() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = run(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
    ]);
    if dirty.is_empty() {
        format!("git {head}")
    } else {
        format!("git {head} (sources modified)")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
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
