//! `prepull agent`: keep the images of a prepull list warm on this node.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use tokio_util::sync::CancellationToken;

use super::pull::PullerArgs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use crate::agent::http::{self, Endpoints};
use crate::agent::{Agent, AgentOptions, ImageState, List, PinOwner, Stopped};

/// The shortest time between passes: below it a node would keep its registries busy (each pass
/// asks every listed tag), and a list change is followed within --splay anyway.
const MIN_INTERVAL: Duration = Duration::from_secs(30);

/// Arguments of `prepull agent`.
#[derive(Debug, Args)]
#[command(
    about = "Keep the images of a prepull list warm on this node (the DaemonSet's mode)",
    long_about = "Keep the images of a prepull list warm on this node (the DaemonSet's mode).\n\n\
        Each pass pulls every listed image exactly as `prepull pull` does (a warm image costs one \
        HEAD request and no download), pins the records of pinned entries \
        (`io.cri-containerd.pinned`, so the kubelet's image GC leaves them alone), marks them as \
        its list's (`prepull.io/pinned-by.<owner>`, see --pin-owner), and releases them when an \
        image leaves the list or its tag moves on; pins set by anyone else, another list \
        included, are never released. A list with no images is refused unless it says \
        `images: []`. The first pass starts within --splay, later ones every --interval (plus \
        up to --splay), and a changed list file (a ConfigMap update swaps its `..data` symlink) \
        triggers a pass within --splay. With --node-name (the DaemonSet sets it from \
        spec.nodeName) the node has a slot in that window, from a SHA-256 of its name: its \
        passes start when the wall clock (Unix time modulo --splay) reaches it, so a fleet \
        spreads over the window as uniformly as random waits do, keeps its order every \
        interval, and a restarted agent keeps its slot; without a name each wait is random. A \
        list that cannot be \
        used is reported and the previous one stays in force. Credential files are followed the \
        same way.\n\n\
        List format (YAML):\n\n  \
        pin: true            # the default for every entry\n  \
        images:\n    \
        - registry.example.com/team/app:1.4\n    \
        - image: registry.example.com/team/batch:2.0\n      \
        pin: false\n    \
        - image: registry.example.com/team/api:3.1\n      \
        expect: sha256:…     # refused, and reported, if the tag resolves elsewhere",
    after_help = "Examples:\n  \
        prepull agent --list /etc/prepull/list.yaml --status-file /run/prepull/status.json\n  \
        prepull agent --once --list /etc/prepull/list.yaml   # one pass, e.g. at node bootstrap"
)]
pub struct AgentArgs {
    /// The prepull list (YAML, usually a mounted ConfigMap key); reloaded when it changes.
    #[arg(long, value_name = "FILE", default_value = "/etc/prepull/list.yaml")]
    pub list: PathBuf,

    /// Time between passes over the list (at least 30s).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_interval)]
    pub interval: Duration,

    /// The name this list's pins carry (`prepull.io/pinned-by.<NAME>`): an agent releases only
    /// pins of its own name, so two lists on one node (a bootstrap list and the DaemonSet's)
    /// never release each other's. Letters, digits, '.', '_', '-' [default: from the --list
    /// path, e.g. `etc-prepull-list.yaml`].
    #[arg(long, value_name = "NAME", value_parser = parse_owner)]
    pub pin_owner: Option<PinOwner>,

    /// Up to this much delay before the first pass, after a list change, and on top of each
    /// interval, so that many nodes do not hit a registry at the same moment: the wait for the
    /// node's slot with --node-name, else random.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub splay: Duration,

    /// This node's name (the DaemonSet sets NODE_NAME from spec.nodeName). It gives the node
    /// a fixed slot in the --splay window (a SHA-256 of the name, plus a jitter of at most 1% of
    /// the window), the same at every interval and after a restart; the status shows it
    /// (`node_name`, `slot_seconds`). Without it, each wait is random.
    #[arg(long, value_name = "NAME", env = "NODE_NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// Write the status here (JSON: what is warm, what is not, and why), each image's as soon
    /// as its pull in a pass ends.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,

    /// Images pulled at the same time (their blobs share --max-concurrent-downloads).
    #[arg(long, value_name = "N", default_value = "4")]
    pub images_at_once: NonZeroUsize,

    /// Read every listed image back from containerd and hash it this often (before a pass), so
    /// a corrupt or lost blob is removed and fetched again; `0s` never.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub verify_every: Duration,

    /// Compare each listed image's unpacked files (what pods run from) with its layers this
    /// often, and always first after the node booted again (a power loss leaves files being
    /// unpacked empty). The check runs beside the passes (pulls never wait for it; `--once`
    /// checks before its pass); damaged snapshots are unpacked again from the local blobs and a
    /// pass soon reports them. When each image was last checked is kept on its image record.
    /// `0s` never.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub deep_verify_every: Duration,

    /// Bytes read per second by the deep check (layers and snapshot files together), so it does
    /// not compete with pods for the disk.
    #[arg(long, value_name = "BYTES", default_value = "32MiB", value_parser = super::verify::parse_rate)]
    pub deep_verify_rate: std::num::NonZeroU64,

    /// After SIGTERM, how long the pass under way may take to finish before it is abandoned
    /// (what it leaves is resumed by the next start). Keep it below the pod's
    /// terminationGracePeriodSeconds (30 s by default). A second signal stops at once.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,

    /// How long a pass waits for one image's pull. An image still pulling then fails this pass
    /// (the others go on and the status is written); what it stored stays in containerd and the
    /// next pass resumes from there, so a large image on a slow link completes over several
    /// passes, and one slow registry never holds a pass hostage. See also --min-progress.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_pull_time: Duration,

    /// How much of containerd's filesystem pinned images may take: `kubelet` (the kubelet's
    /// imageGCLowThresholdPercent from --kubelet-config, else its default 80%: its image GC
    /// frees down to that share and cannot remove pinned images) or a percentage. An image past
    /// it is kept unpinned, with the reason in its status; pinned images stay pinned.
    #[arg(long, value_name = "kubelet|PERCENT", default_value = "kubelet")]
    pub pin_budget: crate::agent::pin_budget::PinBudgetSetting,

    /// The kubelet's configuration file (its --config), for its image GC thresholds.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/kubelet/config.yaml"
    )]
    pub kubelet_config: PathBuf,

    /// Serve /livez, /readyz, /warmz, /status and /metrics here (HTTP). `/warmz` answers 200
    /// only when every listed image is warm: gate node readiness on it, not on `/readyz`. Port 0
    /// picks a free port; the status file's `listen` says which.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:9471",
        conflicts_with = "no_listen"
    )]
    pub listen: std::net::SocketAddr,

    /// Serve no HTTP endpoints.
    #[arg(long)]
    pub no_listen: bool,

    /// Run one pass now (no splay) and exit: 0 when every image is usable offline (warm, or
    /// stale: on the node but its registry could not be asked), 1 otherwise.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub puller: PullerArgs,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "{text} is too short: passes at least {} apart (a list change is followed within \
             --splay anyway)",
            humantime::format_duration(MIN_INTERVAL)
        ));
    }
    Ok(interval)
}

/// The longest node name Kubernetes accepts (a DNS subdomain).
const MAX_NODE_NAME: usize = 253;

fn parse_node_name(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the node name is empty (is NODE_NAME set from spec.nodeName?)".into());
    }
    if text.len() > MAX_NODE_NAME {
        return Err(format!(
            "the node name is {} bytes long; Kubernetes node names have at most {MAX_NODE_NAME}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("the node name {text:?} holds control characters"));
    }
    Ok(text.to_string())
}

fn parse_owner(text: &str) -> Result<PinOwner, String> {
    PinOwner::new(text).map_err(|e| e.to_string())
}

/// Runs `prepull agent` until `stop` is cancelled (SIGTERM, SIGINT): a requested stop is a
/// clean exit.
pub async fn run(args: AgentArgs, stop: CancellationToken) -> anyhow::Result<ExitCode> {
    // A one-shot pass with an unusable list is bad input; the long-running agent instead waits
    // for the list to be fixed.
    if args.once {
        List::load(&args.list)?;
    }
    let mut agent = build(&args).await?;
    if args.once {
        return run_once(&mut agent, &stop).await;
    }
    let alive = Arc::new(AtomicBool::new(true));
    let server = match args.no_listen {
        true => None,
        false => {
            let (server, address) = serve(&args, &agent, alive.clone(), &stop).await?;
            agent.serving_at(address);
            Some(server)
        }
    };
    agent.run(None, &stop).await;
    alive.store(false, Ordering::Relaxed);
    stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The agent the arguments describe.
async fn build(args: &AgentArgs) -> anyhow::Result<Agent> {
    // A named credentials source that cannot be used (an optional secret not created yet) is
    // reported and picked up once it appears, instead of stopping the agent.
    let puller = args.puller.build_with(false, !args.once).await?;
    let store = args.puller.containerd.connect().await?;
    let pin_owner = args
        .pin_owner
        .clone()
        .unwrap_or_else(|| PinOwner::for_list(&args.list));
    tracing::info!(pin_owner = %pin_owner, "pins of this list carry prepull.io/pinned-by.{pin_owner}");
    let options = AgentOptions {
        list: args.list.clone(),
        pin_owner,
        interval: args.interval,
        splay: if args.once {
            Duration::ZERO
        } else {
            args.splay
        },
        node_name: args.node_name.clone(),
        watch_every: Duration::from_secs(2),
        status_file: args.status_file.clone(),
        images_at_once: args.images_at_once.get(),
        verify_every: (!args.verify_every.is_zero()).then_some(args.verify_every),
        deep: (!args.deep_verify_every.is_zero()).then_some(crate::agent::deep::DeepSchedule {
            every: args.deep_verify_every,
            rate: Some(args.deep_verify_rate),
        }),
        grace: args.stop_grace,
        max_pull_time: args.max_pull_time,
        pin_budget: crate::agent::pin_budget::PinBudgetConfig {
            kubelet_config: args.kubelet_config.clone(),
            percent: args.pin_budget.percent(),
        },
    };
    Ok(Agent::new(puller, store, options))
}

/// Starts serving the endpoints on --listen, until `stop`.
async fn serve(
    args: &AgentArgs,
    agent: &Agent,
    alive: Arc<AtomicBool>,
    stop: &CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let address = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%address, "serving /livez, /readyz, /warmz, /status, /metrics");
    let endpoints = Arc::new(Endpoints::new(
        agent.watch_status(),
        args.puller.containerd.connect().await?,
        agent.puller(),
        alive,
        2 * args.interval + args.splay,
    ));
    let server = tokio::spawn(http::serve(listener, endpoints, stop.clone()));
    Ok((server, address))
}

/// One pass now; a line per image: exit 0 when every image is usable offline, 1 otherwise.
async fn run_once(agent: &mut Agent, stop: &CancellationToken) -> anyhow::Result<ExitCode> {
    if agent.run(Some(1), stop).await == Stopped::Requested {
        eprintln!("interrupted before the pass finished");
        return Ok(ExitCode::from(130));
    }
    let status = agent.status();
    for image in &status.images {
        let digest = image.digest.as_deref().unwrap_or_default();
        let pinned = if image.pin { " (pinned)" } else { "" };
        match (image.state, &image.error) {
            (ImageState::Warm, None) => println!("warm {} {digest}{pinned}", image.image),
            (ImageState::Stale, Some(e)) => {
                println!("stale {} {digest}{pinned}", image.image);
                eprintln!(
                    "warning: {} is on the node but could not be re-checked: {e}",
                    image.image
                );
            }
            (state, Some(e)) => {
                println!("{} {}", state.as_str(), image.image);
                eprintln!("error: {e}");
            }
            (state, None) => println!("{} {} {digest}", state.as_str(), image.image),
        }
    }
    let usable = status.images.iter().all(|i| i.state.usable());
    Ok(if usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
