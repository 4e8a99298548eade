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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull images into containerd now, so CRI and the kubelet find them present.
    Pull(Box<pull::PullArgs>),
    /// Remove the pin from images, so kubelet image GC may reclaim them again.
    Unpin(unpin::UnpinArgs),
    /// Keep the images of a prepull list warm on this node (the DaemonSet's mode).
    Agent(Box<agent::AgentArgs>),
    /// Check the node's images: every blob read back and hashed, every layer's snapshot present.
    Verify(verify::VerifyArgs),
    /// Mend the node's images: remove what is corrupt and pull it again.
    Repair(Box<verify::RepairArgs>),
    /// Show what the agent on this node keeps warm, what it does not, and why.
    Status(status::StatusArgs),
    /// Say whether every image of a list is on this node, ready to start without the network.
    Check(check::CheckArgs),
    /// Explain an ErrImagePull / ImagePullBackOff: walk every step of one image's pull here.
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
