//! The command line: one module per subcommand, each composing the library's pieces.

pub mod agent;
pub mod check;
pub mod doctor;
pub mod progress;
pub mod pull;
mod repair_deep;
pub mod status;
pub mod unpin;
pub mod verify;

use clap::{Parser, Subcommand, ValueEnum};

/// Pre-pull container images into containerd, verified, so pods start without the network.
#[derive(Debug, Parser)]
#[command(name = "prepull", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing syntax, e.g. `info` or `prepull=debug`); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log format: `plain` for terminals, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Subcommands. Each one's help (its one-line `about` and its `long_about`) is on its
/// arguments' struct: a doc comment here would hide the `long_about` from `--help`.
#[derive(Debug, Subcommand)]
pub enum Command {
    Pull(Box<pull::PullArgs>),
    Unpin(unpin::UnpinArgs),
    Agent(Box<agent::AgentArgs>),
    Verify(verify::VerifyArgs),
    Repair(Box<verify::RepairArgs>),
    Status(status::StatusArgs),
    Check(check::CheckArgs),
    Doctor(Box<doctor::DoctorArgs>),
}

/// Which containerd to talk to; shared by every subcommand that touches the node's images.
#[derive(Debug, clap::Args)]
pub struct ContainerdArgs {
    /// containerd's gRPC socket.
    #[arg(
        long = "containerd",
        value_name = "SOCKET",
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub socket: std::path::PathBuf,

    /// containerd namespace; CRI and the kubelet use `k8s.io`.
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        env = "CONTAINERD_NAMESPACE",
        default_value = "k8s.io"
    )]
    pub namespace: String,
}

impl ContainerdArgs {
    /// Connects to containerd in the chosen namespace.
    pub async fn connect(&self) -> anyhow::Result<crate::store::Store> {
        use anyhow::Context as _;
        crate::store::Store::connect(&self.socket, &self.namespace)
            .await
            .with_context(|| format!("namespace {}", self.namespace))
    }
}

/// How results are printed on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per image.
    #[default]
    Text,
    /// One JSON object per image per line.
    Json,
}
