//! Running the `prepull` binary under test: `Prepull::new("pull").containerd(&c).args([...])`,
//! then `.output()`, `.success()` (exit 0, or fail showing stdout and stderr) or `.code(n)`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use super::Containerd;

/// The `prepull` binary cargo built beside the running test (`target/<profile>/prepull`; a test
/// runs from `target/<profile>/deps/`), or `PREPULL_BIN` when set.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PREPULL_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test's own path");
        let profile = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("a test runs from target/<profile>/deps");
        let bin = profile.join("prepull");
        assert!(
            bin.is_file(),
            "no prepull binary at {} (cargo builds it for integration tests; set PREPULL_BIN)",
            bin.display()
        );
        bin
    })
}

/// A command on the binary under test, for runs that need more than [`Prepull`] (a spawned
/// long-running child, a pipe).
pub fn command() -> tokio::process::Command {
    tokio::process::Command::new(bin())
}

/// Standard output then standard error, as one string for assertion messages and searches.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails, showing both output streams, unless the run exited 0.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "prepull failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One run of the binary under test, built up argument by argument.
pub struct Prepull {
    command: tokio::process::Command,
    args: Vec<OsString>,
}

impl Prepull {
    /// `prepull <subcommand>`.
    pub fn new(subcommand: &str) -> Prepull {
        Prepull {
            command: command(),
            args: Vec::new(),
        }
        .arg(subcommand)
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Prepull {
        self.command.arg(arg.as_ref());
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I>(mut self, args: I) -> Prepull
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// `--containerd <socket>`.
    pub fn containerd(self, containerd: &Containerd) -> Prepull {
        self.arg("--containerd").arg(containerd.socket())
    }

    /// `--plain-http <host>`.
    pub fn plain_http(self, host: &str) -> Prepull {
        self.args(["--plain-http", host])
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Prepull {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Prepull {
        self.command.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Prepull {
        self.command.current_dir(dir);
        self
    }

    /// The command as built, to spawn or to adjust further.
    pub fn command(self) -> tokio::process::Command {
        self.command
    }

    /// Runs to completion and returns the exit status and both output streams.
    pub async fn output(mut self) -> Output {
        let args = std::mem::take(&mut self.args);
        self.command
            .output()
            .await
            .unwrap_or_else(|e| panic!("run prepull {args:?}: {e}"))
    }

    /// Runs to completion and fails, showing both output streams, unless it exited 0.
    pub async fn success(self) -> Output {
        self.code(0).await
    }

    /// Runs to completion and fails, showing both output streams, unless it exited with `code`.
    pub async fn code(self, code: i32) -> Output {
        let args = self.args.clone();
        let out = self.output().await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "prepull {args:?} failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Runs `prepull <args>` on a pseudo-terminal (160 columns), as a person at a terminal would:
/// its exit code and everything it drew (stdout and stderr together, escape codes included).
/// `script` (util-linux) provides the terminal. Arguments must not need shell quoting.
pub async fn on_terminal(args: &[&str]) -> (Option<i32>, String) {
    let command = format!(
        "stty cols 160 rows 40; {} {}",
        bin().display(),
        args.join(" ")
    );
    let out = tokio::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .await
        .expect("run script (util-linux)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
