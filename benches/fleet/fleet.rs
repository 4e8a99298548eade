//! N nodes started as a fleet: their containerds, their agents launched together, and the watch
//! over every agent's status file and `/warmz` until the fleet reaches a goal (warm, or
//! following a moved tag), with when each node started and ended its pass and got warm.

use std::time::{Duration, Instant};

use crate::node::{AgentConfig, Node};
use crate::owners::Owners;

/// containerds started at once while the fleet comes up (each is a burst of CPU).
const STARTING_AT_ONCE: usize = 4;

/// How often the status files are read.
const STATUS_POLL: Duration = Duration::from_millis(100);

/// How often `/warmz` is asked, per node, once its status says the goal is reached.
const WARMZ_POLL: Duration = Duration::from_millis(250);

pub struct Fleet {
    pub nodes: Vec<Node>,
}

/// What the watch saw of one node, as times since the watch's origin.
#[derive(Clone, Debug, Default)]
pub struct NodeTimes {
    pub name: String,
    /// When its status file first showed the awaited pass under way (a pass shorter than the
    /// poll may be missed: `None`).
    pub pass_started: Option<Duration>,
    /// When its status file first showed the goal reached (the pass ended).
    pub goal: Option<Duration>,
    /// When `/warmz` first answered 200 after that.
    pub warm: Option<Duration>,
    /// `/warmz`'s last answer: code and first line.
    pub warmz: String,
    /// The status's `slot_seconds`, when the node has a slot.
    pub slot: Option<f64>,
    /// How long its agent's last pass took, per its status.
    pub pass_seconds: Option<f64>,
    /// Each listed image's state (and failure kind) when the watch ended, and the pass under
    /// way then, if one was.
    pub states: String,
    /// The failure kinds of the listed images when the watch ended (`rate-limited`, …).
    pub failures: Vec<String>,
}

/// Memory of the fleet's processes, summed over nodes (KiB).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub containerd_rss: u64,
    pub containerd_peak: u64,
    pub agent_rss: u64,
    pub agent_peak: u64,
    /// The largest single agent's peak.
    pub agent_peak_max: u64,
    /// The largest single containerd's peak.
    pub containerd_peak_max: u64,
}

impl Fleet {
    /// Starts `n` nodes named `node-01`…, their containerds a few at a time.
    pub async fn start(n: usize) -> Fleet {
        let mut nodes = Vec::with_capacity(n);
        let names: Vec<String> = (1..=n).map(|i| format!("node-{i:02}")).collect();
        for chunk in names.chunks(STARTING_AT_ONCE) {
            let started =
                futures_util::future::join_all(chunk.iter().cloned().map(Node::start)).await;
            nodes.extend(started);
        }
        Fleet { nodes }
    }

    /// Starts every node's agent, back to back; returns the instant the first was started.
    pub fn launch(&mut self, config: &AgentConfig, owners: &Owners) -> anyhow::Result<Instant> {
        let origin = Instant::now();
        for node in &mut self.nodes {
            node.spawn_agent(config, owners)?;
        }
        Ok(origin)
    }

    /// Watches every node until its status satisfies `goal` and its `/warmz` answers 200 (or,
    /// with `settle_on_goal`, answers at all), or `timeout` after `origin`. `pass` is the number
    /// of the awaited pass (its start is noticed by `pass_under_way.number`).
    pub async fn watch(
        &mut self,
        origin: Instant,
        pass: u64,
        goal: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
        settle_on_goal: bool,
    ) -> Vec<NodeTimes> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let mut times: Vec<NodeTimes> = self
            .nodes
            .iter()
            .map(|n| NodeTimes {
                name: n.name.clone(),
                ..NodeTimes::default()
            })
            .collect();
        let mut last_warmz: Vec<Option<Instant>> = vec![None; self.nodes.len()];
        loop {
            let now = origin.elapsed();
            for (i, node) in self.nodes.iter_mut().enumerate() {
                let t = &mut times[i];
                if t.warm.is_some() {
                    continue;
                }
                if let Some(code) = node.agent_exited() {
                    t.warmz = format!("agent exited with {code}: {}", node.log_tail(3));
                    continue;
                }
                let status = node.status();
                let under_way = status["pass_under_way"]["number"].as_u64().unwrap_or(0);
                if t.pass_started.is_none() && under_way >= pass {
                    t.pass_started = Some(now);
                }
                t.slot = status["slot_seconds"].as_f64();
                if t.goal.is_none() && goal(&status) {
                    t.goal = Some(now);
                    t.pass_seconds = status["last_pass_seconds"].as_f64();
                }
                if t.goal.is_none() {
                    continue;
                }
                if last_warmz[i].is_some_and(|at| at.elapsed() < WARMZ_POLL) {
                    continue;
                }
                last_warmz[i] = Some(Instant::now());
                let Some(listen) = status["listen"].as_str() else {
                    continue;
                };
                match client.get(format!("http://{listen}/warmz")).send().await {
                    Ok(r) => {
                        let code = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        t.warmz = format!("{code} {}", body.lines().next().unwrap_or_default());
                        if code == 200 {
                            t.warm = Some(origin.elapsed());
                        }
                    }
                    Err(e) => t.warmz = format!("no answer: {e}"),
                }
            }
            let settled = times.iter().zip(self.nodes.iter_mut()).all(|(t, n)| {
                t.warm.is_some()
                    || n.agent_exited().is_some()
                    || (settle_on_goal && t.goal.is_some() && !t.warmz.is_empty())
            });
            if settled || origin.elapsed() > timeout {
                self.last_look(&mut times, &client).await;
                return times;
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// Records each node's image states and, for a node not warm, `/warmz`'s answer now.
    async fn last_look(&self, times: &mut [NodeTimes], client: &reqwest::Client) {
        for (node, t) in self.nodes.iter().zip(times.iter_mut()) {
            let status = node.status();
            let mut states: Vec<String> = status["images"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let name = i["image"].as_str().unwrap_or_default();
                    let short = name.rsplit('/').next().unwrap_or(name);
                    let state = i["state"].as_str().unwrap_or("?");
                    match i["kind"].as_str() {
                        Some(kind) => format!("{short} {state} ({kind})"),
                        None => format!("{short} {state}"),
                    }
                })
                .collect();
            if let Some(n) = status["pass_under_way"]["number"].as_u64() {
                states.push(format!("pass {n} under way"));
            }
            t.states = states.join(", ");
            t.failures = status["images"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["kind"].as_str().map(str::to_string))
                .collect();
            if t.warm.is_some() {
                continue;
            }
            let Some(listen) = status["listen"].as_str() else {
                continue;
            };
            if let Ok(r) = client.get(format!("http://{listen}/warmz")).send().await {
                let code = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                t.warmz = format!("{code} {}", body.lines().next().unwrap_or_default());
            }
        }
    }

    /// Memory of the nodes' containerds and agents now (RSS) and at their peaks (VmHWM).
    pub fn memory(&self) -> Memory {
        let mut m = Memory::default();
        for node in &self.nodes {
            if let Some((rss, peak)) = node.containerd.pid().and_then(rss_kib) {
                m.containerd_rss += rss;
                m.containerd_peak += peak;
                m.containerd_peak_max = m.containerd_peak_max.max(peak);
            }
            if let Some((rss, peak)) = node.agent_pid.and_then(rss_kib) {
                m.agent_rss += rss;
                m.agent_peak += peak;
                m.agent_peak_max = m.agent_peak_max.max(peak);
            }
        }
        m
    }

    /// Stops every agent; the containerds stop when the fleet is dropped.
    pub async fn stop_agents(&mut self, owners: &Owners) {
        for node in &mut self.nodes {
            node.stop_agent(owners).await;
        }
    }
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
