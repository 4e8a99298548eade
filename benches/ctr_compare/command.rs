//! Running other programs: a client timed under GNU time, setup commands that must succeed,
//! cleanup commands that may fail, a command's output for the report, PATH lookups and `sync`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// GNU time; `-f %M` prints the child's peak RSS in KiB.
pub const GNU_TIME: &str = "/usr/bin/time";

/// Runs `program args` and fails with its stderr unless it succeeds.
pub fn run_checked(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a cleanup command, ignoring failure (the thing may already be gone).
pub fn run_quiet(program: &str, args: &[&str]) {
    let _ = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Result of one child process.
pub struct ChildRun {
    pub wall: Duration,
    pub rss_kib: Option<u64>,
    /// User + system CPU seconds of the child, from GNU time.
    pub cpu_secs: Option<f64>,
    pub stdout: String,
}

/// Runs `program args`, through GNU time when available, and times it with a monotonic clock.
/// A non-zero exit is an error carrying the command's stderr.
pub async fn timed(program: &Path, args: &[String], gnu_time: bool) -> anyhow::Result<ChildRun> {
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

/// The last `lines` lines of `s`, for error messages.
pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Flushes every dirty page of the machine to disk.
pub fn sync() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("warning: sync failed: {e}");
    }
}

/// Output of a command for the report header; the error text when it cannot run.
pub fn command_line(program: &str, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!(
            "({program} failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("({program}: {e})"),
    }
}

/// Where `name` is in PATH, if it is.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
