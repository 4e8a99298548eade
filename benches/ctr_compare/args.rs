//! The command line: flags, their defaults and the usage text.

use std::collections::HashSet;
use std::hash::Hash;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use crate::sample::Mode;
use crate::workload::WorkloadId;

pub struct Args {
    pub runs: Option<usize>,
    pub workloads: Vec<WorkloadId>,
    /// Longest wait for a quiet machine before each timed run; zero skips the check.
    pub quiet_wait: Duration,
    /// Record `perf` profiles of every timed run into this dir (see
    /// [`Profiler`](crate::run::profiler::Profiler)).
    pub profile: Option<PathBuf>,
    /// Where the report goes instead of `benches/results/ctr_compare.md`.
    pub report: Option<PathBuf>,
    /// `None`: every mode this prepull supports.
    pub modes: Option<Vec<Mode>>,
}

const USAGE: &str = "usage: cargo bench --bench ctr_compare -- [--runs N] [--workloads w1,w3,w4,w5,w6] [--modes fetch,pull] [--quiet-wait SECS]\n\
    --runs N          runs per tool, mode and workload (default: W1 5, W3 3, W4 3, W5 5, W6 3)\n\
    --workloads LIST  which workloads to run (default: w1,w3,w4,w5,w6; w5 needs ip and tc)\n\
    --modes LIST      fetch: prepull --no-unpack vs ctr content fetch; pull: prepull vs ctr images pull (default: both, when prepull unpacks)\n\
    --quiet-wait SECS before each run, wait up to SECS for other work on the machine to stop (default 120; 0: do not wait)\n\
    --profile DIR     record perf profiles of the client, containerd and the registry during every timed run into DIR\n\
                      (the report then goes to DIR/ctr_compare.md, not benches/results; benches/profile.sh uses this)\n\
    --report FILE     write the report to FILE instead of benches/results/ctr_compare.md (e.g. for trial runs)";

pub fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: None,
        workloads: WorkloadId::ALL.to_vec(),
        quiet_wait: Duration::from_secs(120),
        profile: None,
        report: None,
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
                args.workloads = distinct(&value("--workloads")?, WorkloadId::parse)?;
                if args.workloads.is_empty() {
                    bail!("--workloads names no workload\n{USAGE}");
                }
            }
            "--modes" => {
                let modes = distinct(&value("--modes")?, Mode::parse)?;
                if modes.is_empty() {
                    bail!("--modes names no mode\n{USAGE}");
                }
                args.modes = Some(modes);
            }
            "--profile" => args.profile = Some(PathBuf::from(value("--profile")?)),
            "--report" => args.report = Some(PathBuf::from(value("--report")?)),
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

/// The comma-separated `list` parsed item by item, each item once, in the order first named.
fn distinct<T: Copy + Eq + Hash>(
    list: &str,
    parse: fn(&str) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut seen = HashSet::new();
    Ok(list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse)
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .filter(|x| seen.insert(*x))
        .collect())
}
