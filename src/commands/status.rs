//! `prepull status`: one node's view for a person: what the agent keeps warm, what not, and why.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use super::Output;

/// How long the agent's endpoint may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of a status read from an endpoint.
const MAX_STATUS: usize = 1 << 20;

/// The most characters of an error shown in the table (`--output json` has it whole).
const ERROR_COLUMN: usize = 80;

/// Arguments of `prepull status`.
#[derive(Debug, Args)]
#[command(
    about = "Show what the agent on this node keeps warm, what it does not, and why",
    long_about = "Show what the agent on this node keeps warm, what it does not, and why: one \
        line per listed image with its state (warm, stale, unchecked, missing, failed, \
        corrupt), the digest on the node, whether it is pinned, when it was last warm, and the \
        failure's kind and error. Reads the agent's /status endpoint (--from) or its status file \
        (--status-file). With --cri, also asks containerd's CRI plugin, as the kubelet does, \
        whether each image is present and pinned.",
    after_help = "Examples:\n  \
        prepull status\n  \
        kubectl -n prepull exec ds/prepull -- prepull status --status-file /run/prepull/status.json --cri"
)]
pub struct StatusArgs {
    /// The agent's status endpoint.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:9471/status"
    )]
    pub from: String,

    /// Read the agent's status file instead of its endpoint.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,

    /// Also ask CRI (on containerd's socket) whether each image is present and pinned.
    #[arg(long)]
    pub cri: bool,

    /// containerd's socket, for --cri.
    #[arg(
        long = "containerd",
        value_name = "SOCKET",
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub socket: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs `prepull status`: exit 0 when every listed image is usable offline, 1 when not, 2 when
/// the status cannot be read.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut status = read(&args).await?;
    if args.cri {
        add_cri_view(&mut status, &args.socket).await?;
    }
    let images = status["images"].as_array().cloned().unwrap_or_default();
    match args.output {
        Output::Json => println!("{status}"),
        Output::Text => print_table(&status, &images, args.cri),
    }
    let usable = |i: &Value| matches!(i["state"].as_str(), Some("warm" | "stale"));
    Ok(
        if images.iter().all(usable) && status["images_omitted"].is_null() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

async fn read(args: &StatusArgs) -> anyhow::Result<Value> {
    let bytes = match &args.status_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the status file {}", path.display()))?,
        None => {
            let fetch = async {
                let response = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()?
                    .get(&args.from)
                    .send()
                    .await?
                    .error_for_status()?;
                // The agent bounds its status; anything much bigger is not the agent.
                let mut body = Vec::new();
                let mut response = response;
                while let Some(chunk) = response.chunk().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_STATUS {
                        break;
                    }
                }
                Ok::<_, reqwest::Error>(body)
            };
            fetch
                .await
                .with_context(|| {
                    format!(
                    "cannot read the agent's status at {} (is the agent running with --listen? \
                     or use --status-file)",
                    args.from
                )
                })?
                .to_vec()
        }
    };
    serde_json::from_slice(&bytes).context("the status is not the agent's JSON")
}

/// Adds `cri: {present, pinned}` to each image, from CRI's ImageStatus.
async fn add_cri_view(status: &mut Value, socket: &std::path::Path) -> anyhow::Result<()> {
    let channel = crate::cri::connect(socket)
        .await
        .with_context(|| format!("cannot reach CRI at {}", socket.display()))?;
    let Some(images) = status["images"].as_array_mut() else {
        return Ok(());
    };
    for image in images {
        let name = image["image"].as_str().unwrap_or_default().to_string();
        let found = crate::cri::image_status(channel.clone(), &name)
            .await
            .with_context(|| format!("CRI ImageStatus {name}"))?;
        image["cri"] = serde_json::json!({
            "present": found.is_some(),
            "pinned": found.as_ref().is_some_and(|i| i.pinned),
        });
    }
    Ok(())
}

fn print_table(status: &Value, images: &[Value], cri: bool) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "list {}  passes {}  last pass {}  warm {} stale {} failed {} corrupt {} missing {}",
        text(&status["list"]),
        status["passes"],
        text(&status["last_pass"]),
        status["warm"],
        status["stale"],
        status["failed"],
        status["corrupt"],
        status["missing"],
    );
    if let Some(pass) = status["pass_under_way"].as_object() {
        let number = pass.get("number").unwrap_or(&Value::Null);
        let checked = images.iter().filter(|i| &i["pass"] == number).count();
        println!(
            "pass {number} under way since {} (written {}): {checked} of {} images checked by it \
             so far, the others as pass {} left them",
            pass.get("started").and_then(Value::as_str).unwrap_or("-"),
            text(&status["written"]),
            images.len(),
            status["passes"],
        );
    }
    if let Some(e) = status["list_error"].as_str() {
        println!("list error: {e}");
    }
    let mut rows = vec![vec![
        "STATE".to_string(),
        "IMAGE".into(),
        "DIGEST".into(),
        "PIN".into(),
        "LAST WARM".into(),
        "KIND".into(),
        "ERROR".into(),
    ]];
    if cri {
        rows[0].insert(4, "CRI".into());
    }
    for image in images {
        let digest = text(&image["digest"]);
        let short = digest.get(..19).unwrap_or(&digest).to_string();
        let error = text(&image["error"]);
        let error = match error.char_indices().nth(ERROR_COLUMN) {
            Some((end, _)) => format!("{}…", &error[..end]),
            None => error,
        };
        let mut row = vec![
            text(&image["state"]),
            text(&image["image"]),
            short,
            if image["pin"] == true { "yes" } else { "no" }.to_string(),
            text(&image["last_warm"]),
            text(&image["kind"]),
            error,
        ];
        if cri {
            let view = &image["cri"];
            let seen = match (view["present"] == true, view["pinned"] == true) {
                (true, true) => "present,pinned",
                (true, false) => "present",
                (false, _) => "absent",
            };
            row.insert(4, seen.to_string());
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, width))| match i + 1 == columns {
                true => cell.clone(),
                false => format!("{cell:width$}"),
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    if let Some(n) = status["images_omitted"].as_u64() {
        println!("({n} more images not shown: the status file was cut to its size bound)");
    }
}
