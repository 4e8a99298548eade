//! `prepull check`: is every image of a list on this node, ready to start a pod without the
//! network? One short line and an exit code, the contract node-problem-detector's custom plugins
//! use (0 ok, 1 problem, 2 unknown), so a node condition can say whether the node is warm.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::pull::cri_snapshotter;
use super::ContainerdArgs;
use crate::agent::List;
use crate::platform::Platform;
use crate::pull::OnNode;

/// How long the whole check may take (node-problem-detector runs plugins with a timeout too).
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How many missing images the line names before it says how many more.
const NAMED: usize = 3;

/// Arguments of `prepull check`.
#[derive(Debug, Args)]
#[command(
    about = "Say whether every image of a list is on this node, ready to start without the network",
    long_about = "Say whether every image of a list is on this node, ready to start a pod without \
        the network: for each image, the records CRI names it by, its documents and config, and \
        its top layer's snapshot in CRI's snapshotter are looked up in containerd. No registry \
        is asked and no credential is read.\n\n\
        Prints one line and exits 0 when every image is there, 1 when one is not (the line names \
        them), 2 when it cannot tell (the list or containerd is unusable): the contract of \
        node-problem-detector's custom plugin monitors.",
    after_help = "Example:\n  prepull check --list /etc/prepull/list/list.yaml"
)]
pub struct CheckArgs {
    /// The prepull list (YAML).
    #[arg(long, value_name = "FILE", default_value = "/etc/prepull/list.yaml")]
    pub list: PathBuf,

    #[command(flatten)]
    pub containerd: ContainerdArgs,

    /// Platform whose manifest the node runs [default: this node's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,

    /// Snapshotter whose snapshots must hold the layers [default: the one CRI uses].
    #[arg(long, value_name = "NAME", conflicts_with = "no_unpack")]
    pub snapshotter: Option<String>,

    /// Content only: do not require unpacked snapshots.
    #[arg(long)]
    pub no_unpack: bool,
}

/// Runs `prepull check`.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    const UNKNOWN: u8 = 2;
    let list = match List::load(&args.list) {
        Ok(list) => list,
        Err(e) => {
            println!("unknown: {}", crate::error_chain(&e));
            return Ok(ExitCode::from(UNKNOWN));
        }
    };
    let store = match args.containerd.connect().await {
        Ok(store) => store,
        Err(e) => {
            println!("unknown: {}", crate::error_chain(e.as_ref()));
            return Ok(ExitCode::from(UNKNOWN));
        }
    };
    let snapshotter = match (args.no_unpack, &args.snapshotter) {
        (true, _) => None,
        (false, Some(s)) => Some(s.clone()),
        (false, None) => Some(cri_snapshotter(&args.containerd.socket).await),
    };
    let platform = args.platform.clone().unwrap_or_else(Platform::host);
    let on_node = OnNode {
        store: &store,
        platform: &platform,
        snapshotter: snapshotter.as_deref(),
        pinned: false,
    };
    // containerd must answer, or "not on the node" could be a failure to ask.
    let answering = tokio::time::timeout(CHECK_TIMEOUT, store.version()).await;
    if !matches!(answering, Ok(Ok(_))) {
        println!(
            "unknown: containerd at {} does not answer",
            args.containerd.socket.display()
        );
        return Ok(ExitCode::from(UNKNOWN));
    }
    let look = async {
        let mut missing = Vec::new();
        for entry in &list.entries {
            if on_node.find(&entry.reference).await.is_none() {
                missing.push(entry.reference.to_string());
            }
        }
        missing
    };
    let Ok(missing) = tokio::time::timeout(CHECK_TIMEOUT, look).await else {
        println!(
            "unknown: containerd did not answer within {}s",
            CHECK_TIMEOUT.as_secs()
        );
        return Ok(ExitCode::from(UNKNOWN));
    };
    let total = list.entries.len();
    if missing.is_empty() {
        println!("ok: all {total} listed images are on the node");
        return Ok(ExitCode::SUCCESS);
    }
    let more = missing.len().saturating_sub(NAMED);
    let mut line = format!(
        "not warm: {} of {total} listed images are not on the node: {}",
        missing.len(),
        missing
            .iter()
            .take(NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if more > 0 {
        line.push_str(&format!(" and {more} more"));
    }
    println!("{line}");
    Ok(ExitCode::FAILURE)
}
