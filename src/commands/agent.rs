//! `prepull agent`: keep the images of a prepull list warm on this node.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::pull::PullerArgs;
use crate::agent::{Agent, AgentOptions, List};

/// Arguments of `prepull agent`.
#[derive(Debug, Args)]
#[command(
    about = "Keep the images of a prepull list warm on this node (the DaemonSet's mode)",
    long_about = "Keep the images of a prepull list warm on this node (the DaemonSet's mode).\n\n\
        Each pass pulls every listed image exactly as `prepull pull` does (a warm image costs one \
        HEAD request and no download), pins the records of pinned entries \
        (`io.cri-containerd.pinned`, so the kubelet's image GC leaves them alone), and releases \
        the pins it set for images that left the list or whose tag moved on; pins set by anyone \
        else are never touched. The first pass starts after a random delay of up to --splay, \
        later ones every --interval (plus up to --splay), and a changed list file (a ConfigMap \
        update swaps its `..data` symlink) triggers a pass within --splay. A list that cannot be \
        used is reported and the previous one stays in force. Credential files are followed the \
        same way.\n\n\
        List format (YAML):\n\n  \
        pin: true            # the default for every entry\n  \
        images:\n    \
        - registry.example.com/team/app:1.4\n    \
        - image: registry.example.com/team/batch:2.0\n      \
        pin: false",
    after_help = "Examples:\n  \
        prepull agent --list /etc/prepull/list.yaml --status-file /run/prepull/status.json\n  \
        prepull agent --once --list /etc/prepull/list.yaml   # one pass, e.g. at node bootstrap"
)]
pub struct AgentArgs {
    /// The prepull list (YAML, usually a mounted ConfigMap key); reloaded when it changes.
    #[arg(long, value_name = "FILE", default_value = "/etc/prepull/list.yaml")]
    pub list: PathBuf,

    /// Time between passes over the list.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Up to this much random delay before the first pass, after a list change, and on top of
    /// each interval, so that many nodes do not hit a registry at the same moment.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub splay: Duration,

    /// Write the status after each pass here (JSON: what is warm, what is not, and why).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,

    /// Images pulled at the same time (their blobs share --max-concurrent-downloads).
    #[arg(long, value_name = "N", default_value = "4")]
    pub images_at_once: NonZeroUsize,

    /// Read every listed image back from containerd and hash it this often (before a pass), so
    /// a corrupt or lost blob is removed and fetched again; `0s` never.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub verify_every: Duration,

    /// Run one pass now (no splay) and exit: 0 when every image is warm, 1 otherwise.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub puller: PullerArgs,
}

/// Runs `prepull agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // A one-shot pass with an unusable list is bad input; the long-running agent instead waits
    // for the list to be fixed.
    if args.once {
        List::load(&args.list)?;
    }
    // A named credentials source that cannot be used (an optional secret not created yet) is
    // reported and picked up once it appears, instead of stopping the agent.
    let puller = args.puller.build_with(false, !args.once).await?;
    let store = args.puller.containerd.connect().await?;
    let mut agent = Agent::new(
        puller,
        store,
        AgentOptions {
            list: args.list.clone(),
            interval: args.interval,
            splay: if args.once {
                Duration::ZERO
            } else {
                args.splay
            },
            watch_every: Duration::from_secs(2),
            status_file: args.status_file.clone(),
            images_at_once: args.images_at_once.get(),
            verify_every: (!args.verify_every.is_zero()).then_some(args.verify_every),
        },
    );
    if !args.once {
        agent.run(None).await;
        return Ok(ExitCode::SUCCESS);
    }
    agent.run(Some(1)).await;
    let status = agent.status();
    for image in &status.images {
        match &image.error {
            None => println!(
                "warm {} {}{}",
                image.image,
                image.digest.as_deref().unwrap_or_default(),
                if image.pin { " (pinned)" } else { "" }
            ),
            Some(e) => eprintln!("error: {e}"),
        }
    }
    Ok(if status.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
