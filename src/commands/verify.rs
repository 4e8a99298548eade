//! `prepull verify` and `prepull repair`: check the node's image store, and mend what is broken.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::pull::{counted, cri_snapshotter, PullerArgs};
use super::{ContainerdArgs, Output};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::repair;
use crate::space::human_bytes;
use crate::store::{Ingest, Store, StoredImage};
use crate::verify::{group_records, stale_ingests, CheckOptions, Checker, ImageCheck};

/// What both commands check.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Images to check (as pulled: `name[:tag]`, `name@sha256:…`) [default: every image in the
    /// namespace].
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,

    /// Check layers by presence and size only, without reading them back (documents and
    /// configs are always hashed).
    #[arg(long)]
    pub quick: bool,

    /// An ingest (an unfinished write) idle this long is stale: the pull that started it is
    /// not coming back.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub stale_ingest_age: Duration,

    /// Result format on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Arguments of `prepull verify`.
#[derive(Debug, Args)]
#[command(
    about = "Check the node's images: every blob read back and hashed, every layer's snapshot present",
    long_about = "Check the node's images: every blob read back and hashed, every layer's snapshot \
        present, and no unfinished write left behind.\n\n\
        Each image (its tag, digest and ID records together) is checked once: its index and \
        manifests, config and layers are read back from containerd and hashed against their \
        digests; blobs containerd lists but cannot read, and blobs missing altogether, are \
        reported; the snapshot of every layer must exist in the snapshotter CRI uses. Ingests \
        idle for --stale-ingest-age are reported as stale. Nothing is changed: `prepull repair` \
        mends what this finds. Exit status 0 when all is sound, 1 when something is not."
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    #[command(flatten)]
    pub containerd: ContainerdArgs,

    /// Snapshotter whose snapshots are checked [default: the one CRI uses].
    #[arg(long, value_name = "NAME", conflicts_with = "no_snapshots")]
    pub snapshotter: Option<String>,

    /// Do not check snapshots (for content pulled with --no-unpack).
    #[arg(long)]
    pub no_snapshots: bool,
}

/// Arguments of `prepull repair`.
#[derive(Debug, Args)]
#[command(
    about = "Mend the node's images: remove what is corrupt and pull it again",
    long_about = "Mend the node's images: remove what is corrupt and pull it again.\n\n\
        Checks as `prepull verify` does, then: aborts stale ingests; removes blobs that are \
        corrupt, unreadable or malformed; pulls each damaged image again by its tag (or digest \
        reference, or the repository it came from), which fetches only what is missing and \
        unpacks missing snapshots; and checks again. An IMAGE with no record on the node is \
        pulled, restoring its records. Pins and other labels on the records are kept. The lease \
        that holds the rest of the damaged images meanwhile is deleted when the repair ends, \
        whether it succeeded or not.\n\n\
        Other namespaces: containerd keeps one file per blob for all namespaces, so a bad blob \
        another namespace also holds (e.g. an image pulled with `ctr -n default` or nerdctl) \
        cannot be mended from this one. Repair never removes another namespace's content: it \
        leaves that image unmended and names the namespace, the image there and the command \
        that lets go of the blob (`ctr -n NS content rm DIGEST`); then run the repair again. \
        Exit status 0 when everything checked is sound afterwards, 1 otherwise."
)]
pub struct RepairArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    #[command(flatten)]
    pub puller: PullerArgs,
}

/// Runs `prepull verify`.
pub async fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let wanted = parse_images(&args.check.images)?;
    let store = args.containerd.connect().await?;
    let snapshotter = if args.no_snapshots {
        None
    } else {
        Some(match &args.snapshotter {
            Some(s) => s.clone(),
            None => cri_snapshotter(&args.containerd.socket).await,
        })
    };
    let checker = Checker::new(
        &store,
        CheckOptions {
            snapshotter,
            hash_layers: !args.check.quick,
        },
    );
    let (checks, missing) = check_all(&store, &checker, &wanted).await?;
    let stale = stale_ingests(&store, args.check.stale_ingest_age).await?;
    let mut bad = 0;
    for check in &checks {
        let status = if check.problems.is_empty() {
            "ok"
        } else {
            bad += 1;
            "damaged"
        };
        print_check(check, status, args.check.output);
    }
    for name in &missing {
        bad += 1;
        print_missing(name, args.check.output);
    }
    for ingest in &stale {
        print_ingest(ingest, "stale", args.check.output);
    }
    if let Output::Text = args.check.output {
        let n = checks.len() + missing.len();
        println!(
            "checked {}: {bad} damaged or missing, {}",
            counted(n, "image"),
            counted(stale.len(), "stale ingest")
        );
    }
    Ok(if bad == 0 && stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `prepull repair`.
pub async fn run_repair(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let wanted = parse_images(&args.check.images)?;
    let puller = args.puller.build(false).await?;
    let store = args.puller.containerd.connect().await?;
    let snapshotter = if args.puller.no_unpack {
        None
    } else {
        Some(match &args.puller.snapshotter {
            Some(s) => s.clone(),
            None => cri_snapshotter(&args.puller.containerd.socket).await,
        })
    };
    let checker = Checker::new(
        &store,
        CheckOptions {
            snapshotter,
            hash_layers: !args.check.quick,
        },
    );
    let output = args.check.output;

    for ingest in stale_ingests(&store, args.check.stale_ingest_age).await? {
        store.abort(&ingest.reference).await?;
        print_ingest(&ingest, "removed", output);
    }

    let (checks, missing) = check_all(&store, &checker, &wanted).await?;
    let damaged: Vec<&ImageCheck> = checks.iter().filter(|c| !c.problems.is_empty()).collect();
    let shared = repair::shared_bad_blobs(&store, &damaged).await?;
    let protection = repair::discard_bad_blobs(&store, &damaged).await?;
    for check in checks.iter().filter(|c| c.problems.is_empty()) {
        print_check(check, "ok", output);
    }
    let mut failed = 0;
    let mut outcome = Ok(());
    for step in repair::plan(checks, missing, &shared) {
        let result = match &step.action {
            Ok(name) => match repair::mend(&store, &puller, &checker, name).await {
                Ok(result) => result,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            },
            Err(why) => Err(why.clone()),
        };
        let (status, error) = match &result {
            Ok(()) => ("repaired", None),
            Err(e) => {
                failed += 1;
                ("failed", Some(e.as_str()))
            }
        };
        print_outcome(&step.shown, status, step.before.as_ref(), error, output);
    }
    protection.release(&store).await;
    outcome?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn parse_images(images: &[String]) -> anyhow::Result<Vec<Reference>> {
    Ok(images
        .iter()
        .map(|i| Reference::parse(i))
        .collect::<Result<_, _>>()?)
}

/// Checks every image (or the wanted ones); also returns wanted names with no record at all.
async fn check_all(
    store: &Store,
    checker: &Checker<'_>,
    wanted: &[Reference],
) -> anyhow::Result<(Vec<ImageCheck>, Vec<String>)> {
    let groups: BTreeMap<String, Vec<StoredImage>> = group_records(store.images().await?);
    let wanted_names: Vec<String> = wanted.iter().map(ToString::to_string).collect();
    let mut found = vec![false; wanted_names.len()];
    let mut checks = Vec::new();
    for (target, records) in &groups {
        if !wanted_names.is_empty() {
            let mut hit = false;
            for (i, w) in wanted_names.iter().enumerate() {
                if records.iter().any(|r| &r.name == w) {
                    found[i] = true;
                    hit = true;
                }
            }
            if !hit {
                continue;
            }
        }
        let Ok(target) = target.parse::<Digest>() else {
            continue;
        };
        checks.push(checker.check(&target, records).await?);
    }
    let missing = wanted_names
        .into_iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(n, _)| n)
        .collect();
    Ok((checks, missing))
}

fn print_check(check: &ImageCheck, status: &str, output: Output) {
    match output {
        Output::Text if check.problems.is_empty() => println!(
            "{status} {} ({}, {} read)",
            check.names[0],
            counted(check.blobs, "blob"),
            human_bytes(check.bytes)
        ),
        Output::Text => {
            let problems: Vec<String> = check.problems.iter().map(ToString::to_string).collect();
            println!("{status} {}: {}", check.names[0], problems.join("; "));
        }
        Output::Json => println!("{}", check_json(check, status, None)),
    }
}

/// `was` is what the image's check found before the repair; `None` for an image that had no
/// records at all.
fn print_outcome(
    name: &str,
    status: &str,
    was: Option<&ImageCheck>,
    error: Option<&str>,
    output: Output,
) {
    let problems: Vec<String> = was
        .map(|w| w.problems.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    match output {
        Output::Text => match error {
            None if problems.is_empty() => println!("{status} {name} (its records were missing)"),
            None => println!("{status} {name} (was: {})", problems.join("; ")),
            Some(e) => eprintln!("error: could not repair {name}: {e}"),
        },
        Output::Json => {
            let mut json = match was {
                Some(w) => check_json(w, status, error),
                None => serde_json::json!({
                    "names": [name],
                    "status": status,
                    "problems": problems,
                    "error": error,
                }),
            };
            json["image"] = name.into();
            println!("{json}");
        }
    }
}

fn print_missing(name: &str, output: Output) {
    match output {
        Output::Text => println!("missing {name}: no image record on this node"),
        Output::Json => println!(
            "{}",
            serde_json::json!({ "image": name, "status": "missing", "problems": ["no image record on this node"] })
        ),
    }
}

fn print_ingest(ingest: &Ingest, status: &str, output: Output) {
    let idle = ingest
        .idle
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "?".into());
    match output {
        Output::Text => println!(
            "{status} ingest {}: {}, idle {idle}",
            ingest.reference,
            ingest_progress(ingest)
        ),
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "ingest": ingest.reference,
                "status": status,
                "offset": ingest.offset,
                "total": ingest.total,
                "idle_seconds": ingest.idle.map(|d| d.as_secs()),
            })
        ),
    }
}

/// "1.5 MiB of 4 MiB written", or "1.5 MiB written, size unknown" when the writer gave
/// containerd no expected size.
fn ingest_progress(ingest: &Ingest) -> String {
    match ingest.total {
        Some(total) => format!(
            "{} of {} written",
            human_bytes(ingest.offset),
            human_bytes(total)
        ),
        None => format!("{} written, size unknown", human_bytes(ingest.offset)),
    }
}

fn check_json(check: &ImageCheck, status: &str, error: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "image": check.names[0],
        "names": check.names,
        "target": check.target.to_string(),
        "status": status,
        "problems": check.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "blobs_read": check.blobs,
        "bytes_read": check.bytes,
        "error": error,
    })
}
