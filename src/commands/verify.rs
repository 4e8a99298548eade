//! `prepull verify` and `prepull repair`: check the node's image store, and mend what is broken.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::pull::{counted, cri_snapshotter, PullerArgs};
use super::{ContainerdArgs, Output};
use crate::deep::{self, RateLimiter};
use crate::deep_verify::{DeepReport, DeepVerifier};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::repair;
use crate::space::human_bytes;
use crate::store::{Ingest, Store, StoredImage};
use crate::verify::{
    group_records, hash_later, read_back, stale_ingests, CheckOptions, Checker, ImageCheck,
    LayerCheck,
};

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
        reported; the snapshot of every layer must exist in the snapshotter CRI uses. An image \
        whose content is whole but some of whose records (digest reference, ID) are missing, as \
        a pull stopped while writing them leaves it, is reported records-incomplete: `prepull \
        repair IMAGE` writes them without the network. Ingests idle for --stale-ingest-age are \
        reported as stale. Each sound image's own command \
        (Entrypoint and Cmd, searched in its PATH) must resolve in its unpacked layers to a \
        non-empty executable for its architecture, else it is reported cannot-start. Nothing is \
        changed: `prepull repair` mends what this finds. Exit status 0 when all is sound, 1 when \
        something is not.\n\n\
        With --deep, each image's unpacked snapshots (what pods run from) are also compared file \
        by file with the layers they were unpacked from: type, size, content, mode, owner, \
        symlink targets, hard links, devices, whiteouts; files added; snapshot directories gone \
        or emptied. It reads every layer once (hashed against its digest as it is compared, not \
        read back beforehand) and every file, so it takes time: --max-read-rate bounds the \
        disk reads. Each difference names the image, the layer (index and digest), \
        the path, and what was expected and found."
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    /// Check every image in the namespace (what no IMAGE means too).
    #[arg(long, conflicts_with = "images")]
    pub all: bool,

    /// Also compare each image's unpacked snapshots file by file with its layers.
    #[arg(long, conflicts_with = "no_snapshots")]
    pub deep: bool,

    /// Bytes read per second by the deep check, layers and snapshot files together (e.g.
    /// `64MiB`) [default: unlimited].
    #[arg(long, value_name = "BYTES", value_parser = parse_rate, requires = "deep")]
    pub max_read_rate: Option<NonZeroU64>,

    /// Layers the deep check compares at once.
    #[arg(long, value_name = "N", default_value = "2", value_parser = parse_concurrency, requires = "deep")]
    pub deep_concurrency: NonZeroUsize,

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
        Checks as `prepull verify` does, then: aborts stale ingests; writes the records of \
        records-incomplete images from their other records, without the network; removes blobs \
        that are corrupt, unreadable or malformed; pulls each damaged image again by its tag (or digest \
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
        Exit status 0 when everything checked is sound afterwards, 1 otherwise.\n\n\
        Snapshots (--deep): plain `repair` checks that each layer's snapshot exists, not what \
        is in it. With --deep it also runs `verify --deep` (reading every file of every \
        snapshot), and for each image with damaged snapshots removes its snapshot chain from \
        the lowest damaged layer up, together with the snapshots of other images built on the \
        removed ones, and unpacks them again from the blobs on the node, without the network; \
        then it checks those images again. A snapshot a container runs on (and every snapshot \
        below it) is never removed: that image is left as it is, and the report names the \
        containers and their pods; delete those pods, then run `prepull repair --deep` again."
)]
pub struct RepairArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    /// Repair every image in the namespace (what no IMAGE means too).
    #[arg(long, conflicts_with = "images")]
    pub all: bool,

    /// Also compare each image's unpacked snapshots file by file with its layers, and mend
    /// damaged ones from the local blobs (no network): the snapshot chain is removed from the
    /// lowest damaged layer up and unpacked again, unless a container runs on it.
    #[arg(long, conflicts_with = "no_unpack")]
    pub deep: bool,

    /// Bytes read per second by the deep check (e.g. `64MiB`) [default: unlimited].
    #[arg(long, value_name = "BYTES", value_parser = parse_rate, requires = "deep")]
    pub max_read_rate: Option<NonZeroU64>,

    /// Layers the deep check compares at once.
    #[arg(long, value_name = "N", default_value = "2", value_parser = parse_concurrency, requires = "deep")]
    pub deep_concurrency: NonZeroUsize,

    #[command(flatten)]
    pub puller: PullerArgs,
}

/// `64MiB`, `1GB`, `1048576`: bytes per second, as other sizes are written.
pub(super) fn parse_rate(s: &str) -> Result<NonZeroU64, String> {
    match s.parse::<crate::space::Reserve>()? {
        crate::space::Reserve::Bytes(b) => NonZeroU64::new(b)
            .ok_or_else(|| format!("{s:?}: a read rate must be more than 0 bytes per second")),
        crate::space::Reserve::Percent(_) => Err(format!(
            "{s:?}: a read rate is bytes per second, like 64MiB"
        )),
    }
}

fn parse_concurrency(s: &str) -> Result<NonZeroUsize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=16) => NonZeroUsize::new(n).ok_or_else(|| "at least 1".to_string()),
        _ => Err(format!("{s:?}: expected a number from 1 to 16")),
    }
}

/// What the deep check did for one image.
pub(super) enum DeepOutcome {
    /// Not asked for.
    NotRun,
    /// Not run: why.
    Skipped(String),
    /// Compared.
    Checked(DeepReport),
    /// Could not compare: why.
    Failed(String),
}

impl DeepOutcome {
    pub(super) fn is_bad(&self) -> bool {
        match self {
            DeepOutcome::NotRun | DeepOutcome::Skipped(_) => false,
            DeepOutcome::Checked(r) => !r.is_sound(),
            DeepOutcome::Failed(_) => true,
        }
    }

    pub(super) fn json(&self) -> serde_json::Value {
        match self {
            DeepOutcome::NotRun => {
                serde_json::json!({ "checked": false, "reason": "not asked for (--deep)" })
            }
            DeepOutcome::Skipped(why) => serde_json::json!({ "checked": false, "reason": why }),
            DeepOutcome::Checked(report) => serde_json::json!({
                "checked": true,
                "sound": report.is_sound(),
                "layers": report.layers,
                "findings": report.findings,
                "findings_omitted": report.findings_omitted,
                "lowest_damaged_layer": report.lowest_damaged(),
            }),
            DeepOutcome::Failed(why) => serde_json::json!({ "checked": false, "error": why }),
        }
    }
}

/// Runs `prepull verify`; `stop` interrupts it (the deep check stops at its next read and
/// removes its views first).
pub async fn run_verify(args: VerifyArgs, stop: CancellationToken) -> anyhow::Result<ExitCode> {
    let interrupted = || {
        eprintln!("interrupted");
        Ok(ExitCode::from(130))
    };
    let wanted = parse_images(&args.check.images)?;
    let (store, snapshotter, mut checks, missing, stale) = tokio::select! {
        r = check_phase(&args, &wanted) => r?,
        () = stop.cancelled() => return interrupted(),
    };
    let deep = match (&snapshotter, args.deep) {
        (Some(snapshotter), true) => {
            let Some(outcomes) = deep_all(
                &store,
                snapshotter,
                args.deep_concurrency,
                args.max_read_rate,
                &mut checks,
                &stop,
                args.check.output,
            )
            .await?
            else {
                return interrupted();
            };
            outcomes
        }
        _ => checks.iter().map(|_| DeepOutcome::NotRun).collect(),
    };
    let start = match &snapshotter {
        Some(snapshotter) => start_all(&store, snapshotter, &checks).await,
        None => checks.iter().map(|_| StartOutcome::NotChecked).collect(),
    };
    let mut bad = 0;
    for ((check, deep), start) in checks.iter().zip(&deep).zip(&start) {
        let status = match (check.problems.is_empty() && !deep.is_bad(), start) {
            (true, StartOutcome::Cannot(_)) => "cannot-start",
            (true, _) => "ok",
            (false, _) if check.records_incomplete() && !deep.is_bad() => RECORDS_INCOMPLETE,
            (false, _) => "damaged",
        };
        if status != "ok" {
            bad += 1;
        }
        print_check_deep(check, status, deep, start, args.check.output);
        if let (RECORDS_INCOMPLETE, Output::Text) = (status, args.check.output) {
            let name = &check.names[0];
            println!(
                "{status} {name}: records incomplete (a pull was stopped while writing them; its \
                 content is whole): run `prepull repair {name}`, which writes them without the \
                 network, or `prepull pull {name}`"
            );
        }
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
        if !args.deep {
            println!(
                "deep check not run: snapshots were not compared file by file with their layers (prepull verify --deep)"
            );
        }
    }
    Ok(if bad == 0 && stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The status of an image whose content is whole but some of whose records are missing.
const RECORDS_INCOMPLETE: &str = "records-incomplete";

/// Whether an image's own command starts from its unpacked layers.
pub(super) enum StartOutcome {
    /// Not checked (no snapshots asked for, no unpacked manifest, or no command in the config).
    NotChecked,
    /// It starts: the file `execve` gets.
    Starts(String),
    /// It does not: why.
    Cannot(crate::rootfs::Finding),
    /// The check could not be made: why.
    Failed(String),
}

impl StartOutcome {
    fn json(&self) -> serde_json::Value {
        match self {
            StartOutcome::NotChecked => serde_json::json!({ "checked": false }),
            StartOutcome::Starts(path) => {
                serde_json::json!({ "checked": true, "starts": true, "path": path })
            }
            StartOutcome::Cannot(finding) => serde_json::json!({
                "checked": true,
                "starts": false,
                "kind": finding.kind(),
                "why": finding.to_string(),
            }),
            StartOutcome::Failed(why) => serde_json::json!({ "checked": false, "error": why }),
        }
    }
}

/// The start check of every image without other problems: its first unpacked manifest's
/// command resolved in its layers (see [`crate::start_check`]).
async fn start_all(store: &Store, snapshotter: &str, checks: &[ImageCheck]) -> Vec<StartOutcome> {
    let lease = match store
        .create_lease("start-check", std::time::Duration::from_secs(600))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            let why = crate::error_chain(&e);
            return checks
                .iter()
                .map(|_| StartOutcome::Failed(why.clone()))
                .collect();
        }
    };
    let mut outcomes = Vec::with_capacity(checks.len());
    for check in checks {
        let Some(unpacked) = check.unpacked.first().filter(|_| check.problems.is_empty()) else {
            outcomes.push(StartOutcome::NotChecked);
            continue;
        };
        outcomes.push(
            match crate::start_check::check(store, &lease, snapshotter, unpacked).await {
                Ok(None) => StartOutcome::NotChecked,
                Ok(Some(crate::rootfs::Startable::Yes { path })) => StartOutcome::Starts(path),
                Ok(Some(crate::rootfs::Startable::No(finding))) => StartOutcome::Cannot(finding),
                Err(e) => StartOutcome::Failed(crate::error_chain(&e)),
            },
        );
    }
    if let Err(e) = store.delete_lease(lease).await {
        tracing::warn!(error = %e, "cannot delete the start check's lease; it expires by itself");
    }
    outcomes
}

/// Runs `prepull repair`; `stop` interrupts its deep check (--deep).
pub async fn run_repair(args: RepairArgs, stop: CancellationToken) -> anyhow::Result<ExitCode> {
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
            snapshotter: snapshotter.clone(),
            layers: layer_check(args.check.quick),
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
    // With --deep, sound images are reported once their snapshots are compared too.
    for check in checks
        .iter()
        .filter(|c| c.problems.is_empty() && !args.deep)
    {
        print_check(check, "ok", output);
    }
    let mut failed = 0;
    let mut outcome = Ok(());
    for step in repair::plan(checks, missing, &shared) {
        // Mended without the network where it can be: records a stopped pull did not write are
        // written from the others; snapshots missing while every blob is sound are unpacked
        // from the blobs.
        if let Some(before) = &step.before {
            let offline = match &snapshotter {
                _ if before.records_incomplete() => repair::mend_records(&store, before).await? > 0,
                Some(snapshotter) => repair::unpack_missing(&store, snapshotter, before).await?,
                None => false,
            };
            let after = match offline {
                true => Some(
                    checker
                        .check(&before.target, &store_records(&store, before).await?)
                        .await?,
                ),
                false => None,
            };
            if after.is_some_and(|a| a.problems.is_empty()) {
                print_outcome(&step.shown, "repaired", Some(before), None, output);
                continue;
            }
        }
        let result = match &step.action {
            Ok(name) => {
                // On a terminal, the pull that mends it shows its progress.
                let shown: Vec<Reference> = Reference::parse(name).into_iter().collect();
                let (display, mut progress) = super::progress::Pulls::start(&shown, output);
                let progress = progress.pop().unwrap_or_default();
                let mended = repair::mend(&store, &puller, &checker, name, progress).await;
                if let Some(display) = display {
                    display.finish(&[!matches!(mended, Ok(Ok(())))]);
                }
                match mended {
                    Ok(result) => result,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
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
    if let (true, Some(snapshotter)) = (args.deep, &snapshotter) {
        let deep = super::repair_deep::DeepRepair {
            store: &store,
            checker: &checker,
            snapshotter,
            concurrency: args.deep_concurrency,
            rate: args.max_read_rate,
            output,
        };
        match deep.run(&wanted, &stop).await? {
            Some(bad) => failed += bad,
            None => {
                eprintln!("interrupted");
                return Ok(ExitCode::from(130));
            }
        }
    } else if let (Output::Text, Some(_)) = (output, &snapshotter) {
        println!(
            "deep check not run: snapshots were not compared file by file with their layers (prepull repair --deep)"
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The records of the image `check` checked, read again.
async fn store_records(store: &Store, check: &ImageCheck) -> anyhow::Result<Vec<StoredImage>> {
    let mut records = Vec::new();
    for name in &check.names {
        if let Some(r) = store.image(name).await? {
            records.push(r);
        }
    }
    Ok(records)
}

/// The deep check of every checked image, in order; images with other problems are skipped
/// (their blobs or snapshots are what to mend first).
///
/// Layers whose hash the check left for later ([`LayerCheck::Later`]) are hashed by the deep
/// check as it reads them; those it does not read (an image it skips, a platform not unpacked)
/// are hashed here first, so that the problems they show still come first.
/// `None` when interrupted.
pub(super) async fn deep_all(
    store: &Store,
    snapshotter: &str,
    concurrency: NonZeroUsize,
    rate: Option<NonZeroU64>,
    checks: &mut [ImageCheck],
    stop: &CancellationToken,
    output: Output,
) -> anyhow::Result<Option<Vec<DeepOutcome>>> {
    for check in checks.iter_mut() {
        hash_unread(store, check).await;
    }
    let mut ctx = deep::Context::new(stop.child_token());
    ctx.limiter = rate.map(|r| Arc::new(RateLimiter::new(r)));
    let total: u64 = checks
        .iter()
        .filter(|c| c.problems.is_empty())
        .flat_map(|c| &c.unpacked)
        .flat_map(|u| &u.layers)
        .map(|l| l.size)
        .sum();
    let display = super::progress::Reading::start(
        "deep check: layers read",
        total,
        ctx.layer_bytes_read.clone(),
        output,
    );
    let verifier = DeepVerifier::new(store, snapshotter, concurrency, ctx).await?;
    let mut outcomes = Vec::with_capacity(checks.len());
    let mut interrupted = false;
    let problems_first =
        || DeepOutcome::Skipped("the problems above come first: prepull repair mends them".into());
    for check in checks.iter_mut() {
        if !check.problems.is_empty() {
            outcomes.push(problems_first());
            continue;
        }
        if check.unpacked.is_empty() {
            outcomes.push(DeepOutcome::Skipped("no unpacked image manifest".into()));
            continue;
        }
        let hash = !check.unhashed.is_empty();
        let mut report = DeepReport::default();
        let mut failed = None;
        for unpacked in &check.unpacked {
            let result = if hash {
                verifier.check_and_hash(unpacked).await
            } else {
                verifier.check(unpacked).await
            };
            match result {
                Ok(r) => report.absorb(r),
                Err(e) if e.is_cancelled() => {
                    interrupted = true;
                    break;
                }
                Err(e) => {
                    failed = Some(crate::error_chain(&e));
                    break;
                }
            }
        }
        if interrupted {
            break;
        }
        if hash {
            // What the blobs hashed to as they were read; any left unread (the comparison
            // failed) are hashed now: a corrupt blob is the problem to report, not what it made
            // of the comparison.
            for (digest, stored) in std::mem::take(&mut report.blobs) {
                let (read, left) = std::mem::take(&mut check.unhashed)
                    .into_iter()
                    .partition::<Vec<_>, _>(|(_, d)| d.digest == digest);
                check.unhashed = left;
                for (what, descriptor) in read {
                    read_back(check, &what, &descriptor, Ok(stored.clone()));
                }
            }
            hash_later(store, check, |_| true).await;
            if !check.problems.is_empty() {
                outcomes.push(problems_first());
                continue;
            }
        }
        outcomes.push(match failed {
            Some(why) => DeepOutcome::Failed(why),
            None => DeepOutcome::Checked(report),
        });
    }
    verifier.close().await;
    if let Some(display) = display {
        display.finish();
    }
    if interrupted || stop.is_cancelled() {
        return Ok(None);
    }
    Ok(Some(outcomes))
}

/// Hashes the layers of `check` left for the deep check that it will not read: all of them
/// when it will not compare the image, else those of no unpacked platform.
async fn hash_unread(store: &Store, check: &mut ImageCheck) {
    if check.unhashed.is_empty() {
        return;
    }
    let compared: std::collections::HashSet<Digest> = if check.problems.is_empty() {
        check
            .unpacked
            .iter()
            .flat_map(|u| &u.layers)
            .map(|l| l.digest.clone())
            .collect()
    } else {
        Default::default()
    };
    hash_later(store, check, |d| !compared.contains(d)).await;
    if !check.problems.is_empty() {
        // The image will not be compared after all.
        hash_later(store, check, |_| true).await;
    }
}

type Checked = (
    Store,
    Option<String>,
    Vec<ImageCheck>,
    Vec<String>,
    Vec<Ingest>,
);

/// Everything `verify` checks without `--deep`.
async fn check_phase(args: &VerifyArgs, wanted: &[Reference]) -> anyhow::Result<Checked> {
    let store = args.containerd.connect().await?;
    let snapshotter = if args.no_snapshots {
        None
    } else {
        Some(match &args.snapshotter {
            Some(s) => s.clone(),
            None => cri_snapshotter(&args.containerd.socket).await,
        })
    };
    // The deep check reads every layer it compares: it hashes them then, not here first.
    let layers = match layer_check(args.check.quick) {
        LayerCheck::Hash if args.deep && snapshotter.is_some() => LayerCheck::Later,
        other => other,
    };
    let checker = Checker::new(
        &store,
        CheckOptions {
            snapshotter: snapshotter.clone(),
            layers,
        },
    );
    let (checks, missing) = check_all(&store, &checker, wanted).await?;
    let stale = stale_ingests(&store, args.check.stale_ingest_age).await?;
    Ok((store, snapshotter, checks, missing, stale))
}

/// Layers hashed, or with --quick checked for presence and size only.
fn layer_check(quick: bool) -> LayerCheck {
    if quick {
        LayerCheck::Size
    } else {
        LayerCheck::Hash
    }
}

fn parse_images(images: &[String]) -> anyhow::Result<Vec<Reference>> {
    Ok(images
        .iter()
        .map(|i| Reference::parse(i))
        .collect::<Result<_, _>>()?)
}

/// Checks every image (or the wanted ones); also returns wanted names with no record at all.
pub(super) async fn check_all(
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

pub(super) fn print_check_deep(
    check: &ImageCheck,
    status: &str,
    deep: &DeepOutcome,
    start: &StartOutcome,
    output: Output,
) {
    match output {
        Output::Text => {
            if let StartOutcome::Cannot(finding) = start {
                println!("{status} {}: {finding}", check.names[0]);
                if check.problems.is_empty() && !deep.is_bad() {
                    return;
                }
            }
            match deep {
                DeepOutcome::Checked(r) if r.is_sound() && check.problems.is_empty() => {
                    println!(
                        "{status} {} ({}, {} read; {} match their snapshots)",
                        check.names[0],
                        counted(check.blobs, "blob"),
                        human_bytes(check.bytes),
                        counted(r.layers, "layer")
                    );
                    return;
                }
                _ => {}
            }
            if !check.problems.is_empty() || !deep.is_bad() {
                print_check(check, status, output);
            }
            match deep {
                DeepOutcome::Checked(r) => {
                    for finding in &r.findings {
                        println!("{status} {}: {finding}", check.names[0]);
                    }
                    if r.findings_omitted > 0 {
                        println!(
                            "{status} {}: {} more differences not listed",
                            check.names[0], r.findings_omitted
                        );
                    }
                    if let Some(layer) = r.lowest_damaged() {
                        println!(
                            "{status} {}: lowest damaged layer {} (snapshot {})",
                            check.names[0], layer.index, layer.chain_id
                        );
                    }
                }
                DeepOutcome::Failed(why) => {
                    println!(
                        "{status} {}: its snapshots could not be compared with its layers: {why}",
                        check.names[0]
                    )
                }
                DeepOutcome::Skipped(_) | DeepOutcome::NotRun => {}
            }
        }
        Output::Json => {
            let mut json = check_json(check, status, None);
            json["deep"] = deep.json();
            json["start"] = start.json();
            println!("{json}");
        }
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

pub(super) fn check_json(
    check: &ImageCheck,
    status: &str,
    error: Option<&str>,
) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn a_read_rate_is_a_size_per_second() {
        assert_eq!(parse_rate("64MiB").map(NonZeroU64::get), Ok(64 << 20));
        assert_eq!(parse_rate("1000").map(NonZeroU64::get), Ok(1000));
        assert!(parse_rate("0").unwrap_err().contains("more than 0"));
        assert!(parse_rate("10%").unwrap_err().contains("bytes per second"));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn deep_options_need_deep_and_all_excludes_images() {
        let parse = |args: &[&str]| {
            crate::commands::Cli::try_parse_from(["prepull", "verify"].iter().chain(args))
        };
        assert!(parse(&["--deep", "--all", "--max-read-rate", "64MiB"]).is_ok());
        assert!(parse(&["--max-read-rate", "64MiB"]).is_err());
        assert!(parse(&["--all", "nginx:1"]).is_err());
        assert!(parse(&["--deep", "--no-snapshots"]).is_err());
        assert!(parse(&["--deep", "--deep-concurrency", "17"]).is_err());
    }
}
