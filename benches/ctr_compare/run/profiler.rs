//! `--profile DIR`: `perf` profiles of the client, containerd and the registry during each
//! timed run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::command::find_in_path;

/// Records `perf` profiles during timed runs (`--profile DIR`): the client under
/// `perf record … -- CLIENT` (DWARF call graphs for prepull, whose release build has no frame
/// pointers; frame pointers for the Go programs), containerd and the registry with
/// `perf record -p PID` each, stopped with SIGINT after the run. Files are named
/// `<workload>-<mode>-<tool>-run<N>.<client|containerd|registry>[.<i>].data`.
pub struct Profiler {
    dir: PathBuf,
    /// `cycles` where the machine has hardware counters, else `cpu-clock`.
    event: String,
    /// The current timed run's file stem, set by [`Bench::sample`](super::Bench::sample); `None`
    /// between timed runs (W6's untimed first pass is not profiled).
    stem: std::sync::Mutex<Option<String>>,
    /// Numbers the client files of a run with several invocations (ctr loops).
    invocation: std::sync::atomic::AtomicUsize,
}

/// Sampling frequency of the profiles, in Hz: odd, so it does not beat with periodic work.
const PERF_FREQ: &str = "999";

impl Profiler {
    pub fn new(dir: PathBuf) -> anyhow::Result<Profiler> {
        if find_in_path("perf").is_none() {
            bail!("--profile needs `perf` (package linux-perf; scripts/setup.sh installs it)");
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Virtual machines often lack hardware counters: perf then says "<not supported>".
        let probe = std::process::Command::new("perf")
            .args(["stat", "-e", "cycles", "true"])
            .output()
            .context("run perf stat")?;
        let text = String::from_utf8_lossy(&probe.stderr);
        let event = if probe.status.success() && !text.contains("not supported") {
            "cycles"
        } else {
            "cpu-clock"
        };
        Ok(Profiler {
            dir,
            event: event.to_string(),
            stem: Default::default(),
            invocation: Default::default(),
        })
    }

    pub fn start_run(&self, stem: String) {
        *self.stem.lock().unwrap_or_else(|p| p.into_inner()) = Some(stem);
        self.invocation
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn end_run(&self) {
        *self.stem.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `DIR/<stem>.<what>.data`, or `None` outside a timed run.
    fn path(&self, what: &str) -> Option<PathBuf> {
        let stem = self
            .stem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(self.dir.join(format!("{stem}.{what}.data")))
    }

    /// `perf record … -o FILE -- program args…` as (program, args), or `None` outside a timed
    /// run.
    pub fn wrap(
        &self,
        program: &Path,
        args: &[String],
        dwarf: bool,
    ) -> Option<(PathBuf, Vec<String>)> {
        let i = self
            .invocation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = if i == 0 {
            self.path("client")?
        } else {
            self.path(&format!("client.{i}"))?
        };
        let mut wrapped: Vec<String> = vec![
            "record".into(),
            "-q".into(),
            "-e".into(),
            self.event.clone(),
            "-F".into(),
            PERF_FREQ.into(),
            "--call-graph".into(),
            if dwarf { "dwarf" } else { "fp" }.into(),
            "-o".into(),
            file.display().to_string(),
            "--".into(),
            program.display().to_string(),
        ];
        wrapped.extend(args.iter().cloned());
        Some((PathBuf::from("perf"), wrapped))
    }

    /// Starts `perf record -p PID` for a running daemon; [`Attached::stop`] ends it.
    pub async fn attach(&self, pid: u32, what: &str) -> anyhow::Result<Attached> {
        let file = self
            .path(what)
            .context("perf attached outside a timed run")?;
        let child = tokio::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                &self.event,
                "-F",
                PERF_FREQ,
                "--call-graph",
                "fp",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start perf record")?;
        // perf opens its events within milliseconds; this only keeps the client's first moments
        // from being missed (profiles are for shares, not for totals).
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Attached { child, file })
    }
}

/// A `perf record -p` in progress.
pub struct Attached {
    child: tokio::process::Child,
    file: PathBuf,
}

impl Attached {
    pub async fn stop(self) -> anyhow::Result<PathBuf> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        let out = self
            .child
            .wait_with_output()
            .await
            .context("wait for perf record")?;
        if !self.file.is_file() {
            bail!(
                "perf record wrote no {} ({}): {}",
                self.file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(self.file)
    }
}
