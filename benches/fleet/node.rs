//! One node of the fleet: its own containerd (root, state, socket), its `certs.d`, and its own
//! `prepull agent` (status file, HTTP port, log), as the DaemonSet runs it on a real node.

use testbench as support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use support::Containerd;

use crate::owners::Owners;

/// The share of a registry's announced budget each agent keeps for the kubelet's own pulls
/// (`--registry-budget-reserve`, its default given explicitly): run 4 reports against it.
pub const BUDGET_RESERVE_PERCENT: u64 = 20;

/// How a node's agent is started.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The prepull binary.
    pub binary: PathBuf,
    /// The list file every node shares (a ConfigMap).
    pub list: PathBuf,
    pub splay: Duration,
    /// Whether the agent gets `--node-name` (the DaemonSet's NODE_NAME).
    pub named: bool,
}

pub struct Node {
    pub name: String,
    pub containerd: Containerd,
    dir: PathBuf,
    agent: Option<tokio::process::Child>,
    pub agent_pid: Option<u32>,
}

impl Node {
    /// Starts the node's containerd (the test bench's: the series `PREPULL_TEST_CONTAINERD`
    /// names, the snapshotter `PREPULL_TEST_SNAPSHOTTER` names) and lays out its directory.
    pub async fn start(name: String) -> Node {
        let containerd = Containerd::start().await;
        let dir = containerd.dir().join("node");
        std::fs::create_dir_all(dir.join("certs.d")).expect("create the node's certs.d");
        Node {
            name,
            containerd,
            dir,
            agent: None,
            agent_pid: None,
        }
    }

    /// The node's `certs.d` (`--hosts-dir`).
    pub fn certs_d(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    pub fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Starts `prepull agent` for this node: an hour between passes (the runs trigger passes by
    /// starting agents and editing the list), endpoints on a free loopback port.
    pub fn spawn_agent(&mut self, config: &AgentConfig, owners: &Owners) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(&config.binary);
        command
            .arg("agent")
            .arg("--containerd")
            .arg(self.containerd.socket())
            .arg("--containerd-root")
            .arg(self.containerd.root())
            .arg("--hosts-dir")
            .arg(self.certs_d())
            .arg("--list")
            .arg(&config.list)
            .arg("--status-file")
            .arg(self.status_file())
            .args(["--listen", "127.0.0.1:0", "--interval", "1h"])
            .arg(format!("--splay={}s", config.splay.as_secs_f64()))
            .arg(format!(
                "--registry-budget-reserve={BUDGET_RESERVE_PERCENT}%"
            ))
            .args(["--no-node-credentials", "--log-level", "info"])
            .env_remove("NODE_NAME");
        if config.named {
            command.env("NODE_NAME", &self.name);
        }
        let log = std::fs::File::create(self.log()).context("create the agent's log")?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", config.binary.display()))?;
        self.agent_pid = child.id();
        if let Some(pid) = self.agent_pid {
            owners.set(pid, &self.name);
        }
        self.agent = Some(child);
        Ok(())
    }

    /// The agent's status file, or `Null` while it has none.
    pub fn status(&self) -> serde_json::Value {
        read_json(&self.status_file())
    }

    /// Whether the agent is still running; its exit status when it ended.
    pub fn agent_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.agent
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops the agent (SIGKILL: what it leaves is of no interest to the bench).
    pub async fn stop_agent(&mut self, owners: &Owners) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill().await;
        }
        if let Some(pid) = self.agent_pid.take() {
            owners.remove(pid);
        }
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        support::process::log_tail(&self.log(), lines)
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}
