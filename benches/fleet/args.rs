//! The bench's command line (after `cargo bench --bench fleet --`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

/// One of the bench's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunId {
    /// The fleet started together, random splay, straight to the registry.
    Random,
    /// The same with each node's slot from its name.
    Named,
    /// The same with no splay at all: the reference.
    NoSplay,
    /// One node, then the fleet, through a pull-through cache.
    Cache,
    /// A tag moved while the fleet is warm.
    Moved,
    /// A registry with a pull budget per client, as Docker Hub has.
    Budget,
    /// The same with one budget for the whole fleet: nodes behind one NAT, one source address.
    SharedBudget,
}

impl RunId {
    pub const ALL: [RunId; 7] = [
        RunId::Random,
        RunId::Named,
        RunId::NoSplay,
        RunId::Cache,
        RunId::Moved,
        RunId::Budget,
        RunId::SharedBudget,
    ];

    pub fn parse(text: &str) -> anyhow::Result<RunId> {
        Ok(match text.trim() {
            "1a" => RunId::Random,
            "1b" => RunId::Named,
            "1c" => RunId::NoSplay,
            "2" => RunId::Cache,
            "3" => RunId::Moved,
            "4" => RunId::Budget,
            "4s" => RunId::SharedBudget,
            other => bail!("unknown run {other:?}: use 1a, 1b, 1c, 2, 3, 4, 4s"),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Args {
    /// Nodes in the fleet.
    pub nodes: usize,
    /// The agents' `--splay`.
    pub splay: Duration,
    /// Which runs, in the bench's order.
    pub runs: Vec<RunId>,
    /// Rounds of runs 1a, 1b and of the fleet parts of 2 (their figures vary from start to
    /// start).
    pub rounds: usize,
    /// Manifest GETs each node may make in run 4 before the registry answers 429; one fleet
    /// per budget.
    pub budgets: Vec<u32>,
    /// Manifest GETs the whole fleet may make in run 4s (one budget, as for nodes behind one
    /// NAT); one fleet per budget.
    pub shared_budgets: Vec<u32>,
    /// How long a fleet may take to get warm before the run is reported as not converged.
    pub warm_timeout: Duration,
    /// Where the report goes (default `benches/results/fleet.md`).
    pub report: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo bench --bench fleet -- [--nodes N] [--splay SECS] [--runs 1a,1b,1c,2,3,4,4s] [--rounds 3] [--budgets 2,1] [--shared-budgets 60,30] [--warm-timeout SECS] [--report FILE]\n\
    --nodes N           nodes (each its own containerd and agent) (default 20)\n\
    --splay SECS        the agents' --splay (default 10)\n\
    --runs LIST         1a: random splay; 1b: splay from node names; 1c: no splay; 2: through a pull-through cache;\n\
                        3: a tag moved while warm (needs 1b); 4: a per-client GET budget; 4s: one GET budget for the fleet\n\
                        (default: all)\n\
    --rounds N          rounds of 1a, 1b and the fleet parts of 2 (default 3)\n\
    --budgets LIST      run 4 once per budget: manifest GETs per node before its registry answers 429 (default 2,1)\n\
    --shared-budgets LIST run 4s once per budget: manifest GETs of all nodes together before 429 (default 60,30)\n\
    --warm-timeout SECS how long a fleet may take to get warm (default 300)\n\
    --report FILE       write the report there instead of benches/results/fleet.md";

pub fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: 20,
        splay: Duration::from_secs(10),
        runs: RunId::ALL.to_vec(),
        rounds: 3,
        budgets: vec![2, 1],
        shared_budgets: vec![60, 30],
        warm_timeout: Duration::from_secs(300),
        report: None,
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
        let number = |name: &str, v: String| -> anyhow::Result<u64> {
            v.parse()
                .with_context(|| format!("{name} {v:?} is not a whole number"))
        };
        let budgets = |name: &str, v: String| -> anyhow::Result<Vec<u32>> {
            v.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|b| number(name, b.trim().to_string()).map(|n| n as u32))
                .collect()
        };
        match key.as_str() {
            // cargo passes --bench to every harness = false bench.
            "--bench" => {}
            "--nodes" => {
                args.nodes = number("--nodes", value("--nodes")?)? as usize;
                if args.nodes == 0 {
                    bail!("--nodes must be at least 1");
                }
            }
            "--splay" => args.splay = Duration::from_secs(number("--splay", value("--splay")?)?),
            "--rounds" => {
                args.rounds = number("--rounds", value("--rounds")?)? as usize;
                if args.rounds == 0 {
                    bail!("--rounds must be at least 1");
                }
            }
            "--budgets" => args.budgets = budgets("--budgets", value("--budgets")?)?,
            "--shared-budgets" => {
                args.shared_budgets = budgets("--shared-budgets", value("--shared-budgets")?)?
            }
            "--warm-timeout" => {
                args.warm_timeout =
                    Duration::from_secs(number("--warm-timeout", value("--warm-timeout")?)?)
            }
            "--runs" => {
                let mut runs = value("--runs")?
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(RunId::parse)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                runs.sort();
                runs.dedup();
                if runs.is_empty() {
                    bail!("--runs names no run\n{USAGE}");
                }
                if runs.contains(&RunId::Moved) && !runs.contains(&RunId::Named) {
                    bail!("run 3 moves a tag under the warm fleet of run 1b: add 1b to --runs");
                }
                args.runs = runs;
            }
            "--report" => args.report = Some(PathBuf::from(value("--report")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}
