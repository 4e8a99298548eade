//! What the bench reads from /proc: the pids of its own containerd and registry, their CPU and
//! peak memory, the whole machine's busy CPU and load, and the wait for a quiet machine before
//! each timed run.

use std::path::Path;
use std::time::{Duration, Instant};

/// The processes (other than the client, containerd and the registry) that used the most CPU
/// during a run, e.g. `rustc 7.9, jbd2/vda-8 0.2`: says whether "other" was our own kernel
/// writeback or someone else's work.
pub fn top_others(before: &ProcCpu, after: &ProcCpu, exclude: &[Option<u32>], n: usize) -> String {
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

/// Every pid in /proc (none when it cannot be read).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
}

/// pid -> (command name, CPU seconds so far) for every process.
pub type ProcCpu = std::collections::HashMap<u32, (String, f64)>;

pub fn all_proc_cpu() -> ProcCpu {
    let mut out = ProcCpu::new();
    for pid in pids() {
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

/// The pid of the `program` process whose command line names a file under `dir` (its config): how
/// the bench tells its own containerd and registry apart from any other.
pub fn find_pid(program: &str, dir: &Path) -> Option<u32> {
    let dir = dir.to_string_lossy().to_string();
    for pid in pids() {
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
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds a process has used so far (its threads included).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields after its closing parenthesis, where
    // field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks()?)
}

/// Busy (not idle, not iowait) CPU seconds of the whole machine since boot, from /proc/stat.
pub fn machine_busy_secs() -> Option<f64> {
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
pub const QUIET_SHARE: f64 = 0.10;
pub const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// Waits (at most `max_wait`) until the machine is quiet, because on a shared box someone else's
/// build running during one tool's run and not the other's would decide the comparison. Returns
/// how long it waited and the last busy share seen.
pub async fn wait_for_quiet(max_wait: Duration) -> (Duration, Option<f64>) {
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

/// The 1, 5 and 15 minute load averages, for the report and the progress lines.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The cores this process may use: the machine's CPU capacity per second of wall time.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// MemTotal from /proc/meminfo, e.g. `7.8 GiB`, for the report header.
pub fn mem_total() -> String {
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
