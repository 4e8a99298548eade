//! The runs: a fleet started together (random splay, then slots from node names), the same
//! through a pull-through cache (one node alone first, then the fleet), a tag moved under the
//! warm fleet, and a registry with a pull budget, per client or one for the whole fleet. Each
//! returns what the proxies counted and what the watch saw; [`crate::report`] turns that into
//! tables.

use testbench as support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Action, KubeletVolume, Record};

use crate::fleet::{Fleet, Memory, NodeTimes};
use crate::node::{AgentConfig, BUDGET_RESERVE_PERCENT};
use crate::owners::Owners;
use crate::traffic::Kind;
use crate::workload::{write_hosts, Cache, Images, Upstream};

/// What one fleet start showed.
pub struct FleetRun {
    pub label: String,
    pub nodes: usize,
    pub named: bool,
    /// The agents' `--splay`.
    pub splay: Duration,
    /// When the first agent was started.
    pub origin: Instant,
    /// The same on the wall clock (since the Unix epoch): where the nodes' slots fall from it.
    pub wall_origin: Duration,
    /// Requests upstream (through its counting proxy) from `origin` on.
    pub upstream: Vec<Record>,
    /// Requests the nodes made to the pull-through cache, when there was one.
    pub cache: Option<Vec<Record>>,
    pub times: Vec<NodeTimes>,
    pub memory: Memory,
    /// Bytes of the listed images (manifests, configs, layers).
    pub image_bytes: u64,
}

impl FleetRun {
    /// When the last node got warm, if all did.
    pub fn all_warm(&self) -> Option<Duration> {
        self.times
            .iter()
            .map(|t| t.warm)
            .collect::<Option<Vec<_>>>()
            .and_then(|w| w.into_iter().max())
    }

    /// From `origin` to the last request's start or the last warm node, whichever is later.
    pub fn span(&self) -> Duration {
        let last_request = self
            .upstream
            .iter()
            .chain(self.cache.iter().flatten())
            .map(|r| r.at.saturating_duration_since(self.origin))
            .max()
            .unwrap_or_default();
        let last_warm = self.times.iter().filter_map(|t| t.warm).max();
        last_request.max(last_warm.unwrap_or_default())
    }
}

/// What the moved tag cost.
pub struct MovedRun {
    /// When the list edit was published.
    pub origin: Instant,
    pub upstream: Vec<Record>,
    pub times: Vec<NodeTimes>,
    /// Bytes of what is new in the moved image (manifest, config, top layer).
    pub new_bytes: u64,
    pub new_digest: String,
    pub nodes: usize,
}

/// Whose manifest GETs a pull budget counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetScope {
    /// Each node its own budget: each node its own source address.
    PerNode,
    /// One budget for the whole fleet: nodes behind one NAT, one source address.
    Shared,
}

/// What a fleet under a pull budget did.
pub struct BudgetRun {
    /// Manifest GETs each node (or, shared, the fleet) may make.
    pub budget: u32,
    pub scope: BudgetScope,
    pub cold: FleetRun,
    /// The pass after a list edit, when the fleet got warm: `(origin, requests, times)`.
    pub recheck: Option<(Instant, Vec<Record>, Vec<NodeTimes>)>,
    /// Requests refused with 429, per node.
    pub refused: HashMap<String, u64>,
    /// Manifest GETs answered over the whole run (the re-check included), per budget: per node,
    /// or one entry for the fleet.
    pub spent: HashMap<String, u32>,
}

impl BudgetRun {
    /// What each agent keeps of the budget for the kubelet's own pulls: it fetches no manifest
    /// once the announced remainder is down to this.
    pub fn kept(&self) -> u64 {
        (u64::from(self.budget) * BUDGET_RESERVE_PERCENT).div_ceil(100)
    }

    /// The lowest `ratelimit-remaining` any budget fell to.
    pub fn lowest_remaining(&self) -> u32 {
        let most = self.spent.values().copied().max().unwrap_or(0);
        self.budget.saturating_sub(most)
    }
}

/// Everything the runs share.
pub struct Bench {
    pub binary: PathBuf,
    pub warm_timeout: Duration,
    pub owners: Owners,
    pub upstream: Upstream,
    pub images: Images,
    /// The list every agent reads, laid out as a ConfigMap volume.
    pub list: KubeletVolume,
    /// List edits so far (each edit's text differs).
    edits: u32,
}

impl Bench {
    pub fn new(
        binary: PathBuf,
        warm_timeout: Duration,
        owners: Owners,
        upstream: Upstream,
        images: Images,
        list_dir: PathBuf,
    ) -> Bench {
        let text = images.list(&upstream, "the fleet's list");
        let list = KubeletVolume::new(list_dir, &[("list.yaml", &text)]);
        Bench {
            binary,
            warm_timeout,
            owners,
            upstream,
            images,
            list,
            edits: 0,
        }
    }

    fn config(&self, named: bool, splay: Duration) -> AgentConfig {
        AgentConfig {
            binary: self.binary.clone(),
            list: self.list.file("list.yaml"),
            splay,
            named,
        }
    }

    /// Publishes the list again with a changed comment: every agent runs a pass within the
    /// splay.
    pub fn edit_list(&mut self) {
        self.edits += 1;
        let text = self
            .images
            .list(&self.upstream, &format!("edit {}", self.edits));
        self.list.update(&[("list.yaml", &text)]);
    }

    /// Starts `n` nodes (straight to the registry, or through `cache`), launches their agents
    /// together with `splay` and watches until all are warm (or the timeout; with
    /// `settle_on_goal`, until every first pass ended, warm or not). Returns the fleet still
    /// running, for runs that go on with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn fleet_run(
        &mut self,
        label: &str,
        n: usize,
        named: bool,
        splay: Duration,
        cache: Option<&Cache>,
        timeout: Duration,
        settle_on_goal: bool,
    ) -> anyhow::Result<(FleetRun, Fleet)> {
        eprintln!("[{label}] starting {n} containerds");
        let mut fleet = Fleet::start(n).await;
        let mirror = cache.map(|c| c.front.host());
        for node in &fleet.nodes {
            write_hosts(&node.certs_d(), &self.upstream.host(), mirror.as_deref())?;
        }
        // The containerds' start-up work is done before the agents start.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.upstream.proxy.clear();
        if let Some(cache) = cache {
            cache.front.clear();
        }
        eprintln!(
            "[{label}] launching {n} agents (--splay {}s{})",
            splay.as_secs(),
            if named { ", NODE_NAME set" } else { "" }
        );
        let wall_origin = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let origin = fleet.launch(&self.config(named, splay), &self.owners)?;
        let times = fleet
            .watch(
                origin,
                1,
                |s| s["passes"].as_u64().unwrap_or(0) >= 1,
                timeout,
                settle_on_goal,
            )
            .await;
        let memory = fleet.memory();
        report_progress(label, &times, origin);
        let since = |records: Vec<Record>| -> Vec<Record> {
            records.into_iter().filter(|r| r.at >= origin).collect()
        };
        let run = FleetRun {
            label: label.to_string(),
            nodes: n,
            named,
            splay,
            origin,
            wall_origin,
            upstream: since(self.upstream.proxy.records()),
            cache: cache.map(|c| since(c.front.records())),
            times,
            memory,
            image_bytes: self.images.bytes(),
        };
        Ok((run, fleet))
    }

    /// Moves the app's tag upstream while `fleet` is warm, and edits the list so every agent
    /// runs a pass; watches until every node holds the new digest and is warm.
    pub async fn moved_run(&mut self, fleet: &mut Fleet) -> MovedRun {
        let new_bytes = self.images.move_app_tag(&self.upstream).await;
        let new_digest = self.images.app.manifest.digest.clone();
        self.upstream.proxy.clear();
        let origin = Instant::now();
        self.edit_list();
        eprintln!("[3] tag moved to {new_digest}; list edited");
        let passes: Vec<u64> = fleet
            .nodes
            .iter()
            .map(|n| n.status()["passes"].as_u64().unwrap_or(0))
            .collect();
        let next = passes.iter().copied().max().unwrap_or(0) + 1;
        let want = new_digest.clone();
        let times = fleet
            .watch(
                origin,
                next,
                move |s| {
                    s["passes"].as_u64().unwrap_or(0) >= next
                        && s["images"][0]["digest"].as_str() == Some(want.as_str())
                },
                self.warm_timeout,
                false,
            )
            .await;
        report_progress("3", &times, origin);
        MovedRun {
            origin,
            upstream: self
                .upstream
                .proxy
                .records()
                .into_iter()
                .filter(|r| r.at >= origin)
                .collect(),
            times,
            new_bytes,
            new_digest,
            nodes: fleet.nodes.len(),
        }
    }

    /// A cold fleet started with `splay` against a registry that gives each client (or,
    /// `Shared`, the whole fleet) `budget` manifest GETs (Docker Hub counts those; HEADs and
    /// blobs are free), answering 429 with `Retry-After` beyond it; then, if the fleet got warm,
    /// a list edit's pass.
    pub async fn budget_run(
        &mut self,
        n: usize,
        budget: u32,
        scope: BudgetScope,
        splay: Duration,
    ) -> anyhow::Result<BudgetRun> {
        let spent: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let refused: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        {
            let (spent, refused) = (spent.clone(), refused.clone());
            self.upstream.proxy.set_hook(move |request| {
                let source = request.source.clone().unwrap_or_else(|| "unknown".into());
                let counted =
                    request.method == "GET" && Kind::of(&request.path) == Kind::Manifest;
                let account = match scope {
                    BudgetScope::PerNode => source.clone(),
                    BudgetScope::Shared => "fleet".to_string(),
                };
                let mut spent = spent.lock().unwrap_or_else(|p| p.into_inner());
                let used = spent.entry(account).or_default();
                let limit = format!("{budget};w=21600");
                if counted && *used >= budget {
                    *refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(source)
                        .or_default() += 1;
                    return Action::RespondWith {
                        status: 429,
                        headers: vec![
                            ("ratelimit-limit".into(), limit),
                            ("ratelimit-remaining".into(), "0;w=21600".into()),
                            ("retry-after".into(), "30".into()),
                            ("content-type".into(), "application/json".into()),
                        ],
                        body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#.to_vec(),
                    };
                }
                if counted {
                    *used += 1;
                }
                Action::ForwardWith {
                    headers: vec![
                        ("ratelimit-limit".into(), limit),
                        (
                            "ratelimit-remaining".into(),
                            format!("{};w=21600", budget - *used),
                        ),
                    ],
                }
            });
        }
        let label = match scope {
            BudgetScope::PerNode => format!("4 (budget {budget} per node"),
            BudgetScope::Shared => format!("4s (one budget of {budget} for the fleet"),
        };
        let label = if splay.is_zero() {
            format!("{label}, no splay)")
        } else {
            format!("{label})")
        };
        // Not converging is a possible outcome: each first pass is awaited (a refused request is
        // retried after its Retry-After, 3 times, so a pass may take a few minutes), warm or not.
        let timeout = self.warm_timeout.min(splay + Duration::from_secs(180));
        let result = self
            .fleet_run(&label, n, true, splay, None, timeout, true)
            .await;
        let (cold, mut fleet) = match result {
            Ok(r) => r,
            Err(e) => {
                self.upstream.proxy.clear_hook();
                return Err(e);
            }
        };
        let mut recheck = None;
        if cold.all_warm().is_some() {
            self.upstream.proxy.clear();
            let origin = Instant::now();
            self.edit_list();
            let times = fleet
                .watch(
                    origin,
                    2,
                    |s| s["passes"].as_u64().unwrap_or(0) >= 2,
                    timeout,
                    false,
                )
                .await;
            report_progress(&format!("{label} re-check"), &times, origin);
            let records = self
                .upstream
                .proxy
                .records()
                .into_iter()
                .filter(|r| r.at >= origin)
                .collect();
            recheck = Some((origin, records, times));
        }
        fleet.stop_agents(&self.owners).await;
        self.upstream.proxy.clear_hook();
        let refused = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let spent = spent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(BudgetRun {
            budget,
            scope,
            cold,
            recheck,
            refused,
            spent,
        })
    }
}

/// One progress line: how many nodes got warm, and by when.
fn report_progress(label: &str, times: &[NodeTimes], origin: Instant) {
    let warm = times.iter().filter(|t| t.warm.is_some()).count();
    let last = times.iter().filter_map(|t| t.warm).max();
    eprintln!(
        "[{label}] {warm} of {} nodes warm{} ({:.1} s after the start)",
        times.len(),
        last.map(|l| format!(", the last at {:.1} s", l.as_secs_f64()))
            .unwrap_or_default(),
        origin.elapsed().as_secs_f64()
    );
    for t in times.iter().filter(|t| t.warm.is_none()) {
        eprintln!("  {} not warm: {}", t.name, t.warmz);
    }
}
