//! The markdown report: printed, and written to `benches/results/ctr_compare.md` (or where
//! `--report`/`--profile` say). Each section is its own module, in the order they appear.

mod floor;
mod header;
mod raw;
mod steady;
mod summary;
mod targets;
mod wan;

use std::path::PathBuf;

use crate::results::WorkloadResult;
use crate::run::Bench;
use crate::sample::{Mode, Tool};

/// What the report says about the machine and the containerd the runs used.
pub struct Context {
    pub load_before: String,
    /// The commit the sources (and, under `cargo bench`, the prepull binary) were at when the
    /// bench started, and whether they had uncommitted changes.
    pub git_head: String,
    pub dirty: bool,
    pub binary_note: String,
    /// `containerd --version`'s version of the daemon the runs used, and its ctr.
    pub containerd_version: String,
    pub ctr: PathBuf,
    pub snapshotter: String,
    pub modes: Vec<Mode>,
}

/// The whole report, its sections in order.
pub fn report(results: &[WorkloadResult], bench: &Bench, cx: &Context) -> String {
    let mut md = String::new();
    header::write(&mut md, results, bench, cx);
    summary::write(&mut md, results, cx);
    wan::write(&mut md, results, cx);
    steady::write(&mut md, results, cx);
    targets::write(&mut md, results, cx);
    floor::write(&mut md, results);
    raw::write(&mut md, results);
    md
}

// Figures as the tables print them; `n/a` where nothing measured one (no GNU time, no pid).

pub fn opt_mib(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "n/a".into())
}

pub fn opt_secs(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into())
}

pub fn opt_kib(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into())
}

/// A tool's median CPU seconds in one cell: `client / containerd / registry / other`.
fn cpu_medians(r: &WorkloadResult, mode: Mode, tool: Tool) -> String {
    format!(
        "{} / {} / {} / {}",
        opt_secs(r.cpu_median(mode, tool, |c| c.client)),
        opt_secs(r.cpu_median(mode, tool, |c| c.containerd)),
        opt_secs(r.cpu_median(mode, tool, |c| c.registry)),
        opt_secs(r.cpu_median(mode, tool, |c| c.other)),
    )
}

/// A peer's median time over prepull's, in bold with `decimals` decimals (> 1: prepull is
/// faster); empty on prepull's own row.
fn speedup(r: &WorkloadResult, mode: Mode, tool: Tool, decimals: usize) -> String {
    if tool == Tool::Prepull {
        return String::new();
    }
    r.median_wall(mode, tool)
        .zip(r.median_wall(mode, Tool::Prepull))
        .map(|(c, p)| format!("**{:.*}**", decimals, c / p))
        .unwrap_or_else(|| "n/a".into())
}

/// The tools `r` has runs of in `mode`, prepull first.
fn tools(r: &WorkloadResult, mode: Mode) -> Vec<Tool> {
    Tool::compared(mode, true)
        .into_iter()
        .filter(|t| r.of(mode, *t).next().is_some())
        .collect()
}
