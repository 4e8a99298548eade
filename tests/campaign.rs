//! Fault campaigns against a real containerd and a real registry: loops of faults, each drawn
//! from one seeded plan (`PREPULL_CAMPAIGN_SEED` replays it), with the outcome checked at the
//! end and the campaign's figures printed (run with `--nocapture` to see them).
//!
//! - `kill -9` of `prepull pull` at random moments of a large pull, again and again;
//! - containerd killed and brought back mid-download and mid-unpack under one pull;
//! - connections cut at random offsets;
//! - the disk filling up mid-pull;
//! - the agent's list turned to garbage, emptied, deleted and grown to 10,000 images, and its
//!   pull secret rotated while it pulls.

use testbench as support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prepull::pull::lease;
use prepull::store::{SnapshotKind, Store, StoreError};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;
use support::campaign::{mib, Campaign};
use support::disk::{fill_until, free_bytes, used_bytes};
use support::process::Deadline;
use support::{
    push_image, push_image_with, text, Action, Containerd, ContainerdOptions, ImageSpec,
    KubeletVolume, Prepull, Proxy, PushedImage, Registry, RegistryOptions, Shape,
};

const MIB: usize = 1 << 20;

/// How often a campaign looks at what containerd holds while it waits for its next fault.
const POLL: Duration = Duration::from_millis(25);

async fn store(containerd: &Containerd) -> Store {
    Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect to containerd")
}

/// `prepull pull --output json IMAGE` from `host`, not yet run.
fn pull(containerd: &Containerd, host: &str, image: &str) -> Prepull {
    Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .args(["--no-node-credentials", "--output", "json", image])
}

/// Starts `prepull`, its output appended to `log`.
fn spawn_logged(prepull: Prepull, log: &Path) -> tokio::process::Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the runs' log");
    prepull
        .command()
        .stdout(file.try_clone().expect("clone the log's handle"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start prepull")
}

/// The last lines of a log, for assertion messages.
fn tail(log: &Path) -> String {
    support::process::log_tail(log, 30)
}

/// The first JSON line prepull printed.
fn json(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or("null");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// Leases a pull took (labelled with the image they were for).
async fn pull_leases(store: &Store) -> Vec<prepull::store::ListedLease> {
    store
        .leases_with_label(lease::IMAGE)
        .await
        .expect("Leases.List")
}

/// The bytes of an image's blobs (config and layers), what a pull downloads.
fn blob_bytes(image: &PushedImage) -> u64 {
    image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size
}

/// What containerd holds of one image while it is pulled, as containerd's API (and its content
/// directory, for committed blobs) shows it. The containerd holds nothing else.
struct Observer {
    store: Store,
    channel: tonic::transport::Channel,
    snapshotter: String,
    blobs_dir: PathBuf,
    layers: Vec<support::Blob>,
    /// The layers' snapshot names (chain IDs), lowest first.
    chain: Vec<String>,
}

/// One look at a pull under way.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Layer bytes in the content store: committed, or in an ingest.
    stored: u64,
    /// The image's layers unpacked (their snapshots committed).
    unpacked: usize,
    /// Unpacks opened and not committed (active `extract-` snapshots, dead runs' included).
    extracts: HashSet<String>,
    /// How far the unpack of the next layer has got, 0 to 1, in the unpacks opened since the
    /// look `since` (see [`Observer::look`]).
    unpacking: f64,
}

impl Observer {
    async fn new(containerd: &Containerd, image: &PushedImage) -> Observer {
        let diff_ids: Vec<prepull::digest::Digest> = image
            .diff_ids
            .iter()
            .map(|d| d.parse().expect("a diff ID"))
            .collect();
        Observer {
            store: store(containerd).await,
            channel: containerd.channel().await,
            snapshotter: containerd.snapshotter().to_string(),
            blobs_dir: containerd
                .root()
                .join("io.containerd.content.v1.content/blobs/sha256"),
            layers: image.layers.clone(),
            chain: prepull::image::chain_ids(&diff_ids)
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    fn total(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Looks at the pull; unpacks already open in `since` (those of dead runs) do not count as
    /// progress.
    async fn look(&self, since: Option<&Seen>) -> Result<Seen, StoreError> {
        let ingests = self.store.ingests().await?;
        let snapshots = self.store.snapshots(&self.snapshotter).await?;
        let mut seen = Seen {
            extracts: snapshots
                .iter()
                .filter(|s| s.kind == SnapshotKind::Active && s.name.starts_with("extract-"))
                .map(|s| s.name.clone())
                .collect(),
            unpacked: self
                .chain
                .iter()
                .filter(|c| {
                    snapshots
                        .iter()
                        .any(|s| &s.name == *c && s.kind == SnapshotKind::Committed)
                })
                .count(),
            ..Seen::default()
        };
        for layer in &self.layers {
            let hex = layer.digest.trim_start_matches("sha256:");
            seen.stored += if self.blobs_dir.join(hex).exists() {
                layer.size
            } else {
                let key = format!("layer-{}", layer.digest);
                ingests
                    .iter()
                    .find(|i| i.reference == key)
                    .map_or(0, |i| i.offset)
            };
        }
        // The next layer's unpack, opened since: its snapshot's key ends with its chain ID, and
        // the disk usage its snapshotter reports grows to the layer's size as it is applied
        // (native copies the parent before the snapshot is listed, and counts only what differs).
        if let (Some(since), Some(next)) = (since, self.chain.get(seen.unpacked)) {
            let expected = self.layers[seen.unpacked].size;
            for key in seen.extracts.difference(&since.extracts) {
                if key.ends_with(next.as_str()) {
                    let used = self.usage(key).await.unwrap_or(0);
                    seen.unpacking = seen
                        .unpacking
                        .max((used as f64 / expected.max(1) as f64).min(0.99));
                }
            }
        }
        Ok(seen)
    }

    /// The disk usage of snapshot `key`, as its snapshotter measures it.
    async fn usage(&self, key: &str) -> Option<u64> {
        use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
        use containerd_client::services::v1::snapshots::UsageRequest;
        let mut request = tonic::Request::new(UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        request
            .metadata_mut()
            .insert("containerd-namespace", "k8s.io".parse().ok()?);
        let usage = SnapshotsClient::new(self.channel.clone())
            .usage(request)
            .await
            .ok()?;
        u64::try_from(usage.into_inner().size).ok()
    }

    /// How far the pull is, 0 to 1: half for the bytes stored, half for the layers unpacked.
    fn fraction(&self, seen: &Seen) -> f64 {
        let stored = seen.stored as f64 / self.total().max(1) as f64;
        let unpacked = (seen.unpacked as f64 + seen.unpacking) / self.chain.len().max(1) as f64;
        (stored + unpacked) / 2.0
    }

    /// What a run was doing when it was seen `now`: `start` is what containerd held when it
    /// started, `before` the look before. Dead runs leave their ingests and unpacks behind, so
    /// only change counts: bytes coming in, an unpack this run opened.
    fn phase(start: &Seen, before: &Seen, now: &Seen, fraction: f64) -> &'static str {
        let downloading = now.stored > before.stored;
        let unpacking = now.extracts.difference(&start.extracts).next().is_some()
            || now.unpacked > before.unpacked;
        match (downloading, unpacking) {
            (true, true) => "downloading+unpacking",
            (true, false) => "downloading",
            (false, true) => "unpacking",
            (false, false) if fraction >= 1.0 => "writing records",
            (false, false) if now.stored == start.stored && now.unpacked == start.unpacked => {
                "starting"
            }
            (false, false) => "between",
        }
    }

    /// Asserts that containerd holds the complete image and nothing a dead run left: no pull
    /// lease, no ingest, only the image's own committed snapshots, and no content beyond its
    /// blobs (and its manifest).
    async fn assert_nothing_left(&self, containerd: &Containerd, image: &PushedImage, why: &str) {
        let leases = pull_leases(&self.store).await;
        assert!(leases.is_empty(), "leases left: {leases:?}; {why}");
        let ingests = self.store.ingests().await.expect("Content.ListStatuses");
        assert!(ingests.is_empty(), "ingests left: {ingests:?}; {why}");
        let snapshots = self
            .store
            .snapshots(&self.snapshotter)
            .await
            .expect("Snapshots.List");
        let mut names: Vec<&str> = snapshots.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        let mut chain: Vec<&str> = self.chain.iter().map(String::as_str).collect();
        chain.sort_unstable();
        assert_eq!(
            names, chain,
            "only the image's layers: {snapshots:?}; {why}"
        );
        assert!(
            snapshots.iter().all(|s| s.kind == SnapshotKind::Committed),
            "no partial unpack left: {snapshots:?}; {why}"
        );
        // containerd 1.7 and 2.x remove collected files just after the collection.
        let content = containerd.root().join("io.containerd.content.v1.content");
        let limit = blob_bytes(image) + image.manifest.size + MIB as u64;
        let deadline = Deadline::after(Duration::from_secs(20));
        loop {
            let used = used_bytes(&content);
            if used <= limit {
                break;
            }
            assert!(
                !deadline.expired(),
                "the content store holds {used} bytes for a {limit}-byte image; {why}"
            );
            deadline.tick().await;
        }
    }
}

/// When a run of the kill campaign is killed.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after it started: while it starts up, resolves, opens its first downloads.
    AfterStart(Duration),
    /// Once it has done this part of what was left when it started (see
    /// [`Observer::fraction`]).
    Into(f64),
}

/// The kill campaign's image: 1 GiB of random (incompressible) data in 8 layers, stored
/// uncompressed in gzip (level 0), so every byte crosses the wire as it is.
const KILL_LAYERS: [usize; 8] = [128 * MIB; 8];
/// How often prepull is killed before it is let finish.
const KILLS: usize = 20;
/// The registry's link, per request (3 layers download at once). Across a network a registry
/// delivers slower than containerd stores, so what a kill throws away is what was in flight. On
/// loopback at memory speed containerd's intake is the bottleneck instead, and the kernel's
/// receive buffers (autotuned up to `net.ipv4.tcp_rmem`'s maximum, often tens of MiB) fill with
/// bytes every kill loses: that would measure the kernel, not the resume.
const LINK: u64 = 24 * MIB as u64;

/// `kill -9` of `prepull pull` 20 times at random moments of a 1 GiB pull (some while it starts,
/// the rest at random points of the download, the unpack and the writing of the records), each
/// time started again; then it completes. The image verifies, the registry served under 1.2
/// times the image over all the runs (each run resumed from what containerd's ingests held), and
/// once the image is complete nothing of the dead runs is left: no lease, no ingest, no partial
/// snapshot, no stray content.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_pull_20_times_at_random_moments_then_it_completes() {
    let mut campaign = Campaign::start("kill -9 of prepull pull");
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "campaign/kill",
        "v1",
        &ImageSpec::new(&KILL_LAYERS).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    proxy.set_hook(|request| match request.path.contains("/blobs/") {
        true => Action::Shape(Shape {
            bytes_per_sec: Some(LINK),
            cut_after: None,
        }),
        false => Action::Forward,
    });
    let reference = format!("{}/campaign/kill:v1", proxy.host());
    let observer = Observer::new(&containerd, &image).await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("runs.log");
    let pulling = Instant::now();

    // Each kill's moment: a fifth while the run starts, the others a random part of the work
    // left, up to three times the even share (a kill mid-unpack throws that layer's unpack away,
    // so a run gets less far than its share), so the kills spread over the whole pull and the
    // last ones still find work under way.
    let plan: Vec<Moment> = (0..KILLS)
        .map(|k| {
            let rng = campaign.rng();
            match rng.random_bool(0.2) {
                true => Moment::AfterStart(Duration::from_millis(rng.random_range(0..300))),
                false => Moment::Into(rng.random::<f64>() * 3.0 / (KILLS - k + 1) as f64),
            }
        })
        .collect();
    let replay = campaign.replay();

    let mut phases: Vec<&str> = Vec::new();
    let mut at: Vec<String> = Vec::new();
    let mut lost: Vec<u64> = Vec::new();
    for (k, moment) in plan.iter().enumerate() {
        let start = observer.look(None).await.expect("look at the pull");
        let from = observer.fraction(&start);
        let gap = proxy.blob_bytes().saturating_sub(start.stored);
        // Past the last layer's unpack only the records are left: a run then lives a few tens
        // of milliseconds, and is killed as soon as it is seen to run.
        let target = match *moment {
            Moment::AfterStart(_) if from < 0.9 => None,
            Moment::AfterStart(_) => Some(from),
            Moment::Into(part) => Some((from + (1.0 - from) * part).max(from + 0.002).min(0.985)),
        };
        let started = Instant::now();
        let mut child = spawn_logged(pull(&containerd, &proxy.host(), &reference), &log);
        let deadline = Deadline::after(Duration::from_secs(120));
        let mut before = start.clone();
        loop {
            if let Some(status) = child.try_wait().expect("poll prepull") {
                panic!(
                    "run {k} ended ({status}) before its kill ({moment:?}, from {from:.3}); \
                     {replay}\n{}",
                    tail(&log)
                );
            }
            let seen = observer.look(Some(&start)).await.expect("look at the pull");
            let fraction = observer.fraction(&seen);
            let due = match (target, *moment) {
                (Some(target), _) => fraction >= target,
                (None, Moment::AfterStart(after)) => started.elapsed() >= after,
                (None, Moment::Into(_)) => unreachable!("every share of the work has a target"),
            };
            if due {
                child.start_kill().expect("kill -9 prepull");
                child.wait().await.expect("reap prepull");
                phases.push(Observer::phase(&start, &before, &seen, fraction));
                at.push(format!("{:.0}%", fraction * 100.0));
                let after = observer
                    .look(None)
                    .await
                    .expect("look at what the run left");
                lost.push(
                    proxy
                        .blob_bytes()
                        .saturating_sub(after.stored)
                        .saturating_sub(gap),
                );
                break;
            }
            assert!(
                !deadline.expired(),
                "run {k} never reached its kill ({moment:?}, from {from:.3}): {seen:?}; \
                 {replay}\n{}",
                tail(&log)
            );
            before = seen;
            tokio::time::sleep(POLL).await;
        }
    }

    let out = pull(&containerd, &proxy.host(), &reference).output().await;
    assert!(
        out.status.success(),
        "the run after {KILLS} kills completes: {}; {replay}",
        text(&out)
    );
    let last = json(&out);
    let took = pulling.elapsed();
    let verified = Prepull::new("verify")
        .containerd(&containerd)
        .arg(&reference)
        .output()
        .await;
    assert!(
        verified.status.success(),
        "the image verifies: {}; {replay}",
        text(&verified)
    );
    observer
        .assert_nothing_left(&containerd, &image, &replay)
        .await;
    let size = blob_bytes(&image);
    let fetched = proxy.blob_bytes();
    assert!(
        (fetched as f64) < 1.2 * size as f64,
        "the registry served {fetched} bytes over {} runs for a {size}-byte image; bytes lost \
         by each kill: {lost:?}; {replay}",
        KILLS + 1
    );

    let count = |phase: &str| phases.iter().filter(|p| **p == phase).count();
    campaign.figure(
        "image",
        format!("{} in {} layers", mib(size), image.layers.len()),
    );
    campaign.figure(
        "faults injected",
        format!("{KILLS} x kill -9 of prepull pull"),
    );
    campaign.figure(
        "killed while",
        [
            "starting",
            "downloading",
            "downloading+unpacking",
            "unpacking",
            "writing records",
            "between",
        ]
        .iter()
        .map(|p| format!("{p} {}", count(p)))
        .collect::<Vec<_>>()
        .join(", "),
    );
    campaign.figure("killed at", at.join(" "));
    campaign.figure(
        "runs survived",
        format!("{} ({KILLS} killed, the last completed)", KILLS + 1),
    );
    campaign.figure(
        "bytes fetched",
        format!(
            "{} ({:.3}x the image; the last run {})",
            mib(fetched),
            fetched as f64 / size as f64,
            mib(last["bytes_fetched"].as_u64().unwrap_or(0))
        ),
    );
    lost.sort_unstable();
    campaign.figure(
        "bytes refetched",
        format!(
            "{} (lost by a kill: median {}, most {})",
            mib(fetched.saturating_sub(size)),
            mib(lost[lost.len() / 2]),
            mib(lost.last().copied().unwrap_or(0))
        ),
    );
    campaign.figure("pulling took", format!("{:.1} s", took.as_secs_f64()));
    campaign.finish();
}

/// What containerd was doing when it was killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Under {
    Download,
    Unpack,
}

/// The containerd campaign's image: 256 MiB in 8 layers, over a link slow enough (4 MiB/s per
/// request) that the pull lasts through every crash.
const CRASH_LAYERS: [usize; 8] = [32 * MIB; 8];
const CRASH_LINK: u64 = 4 * MIB as u64;
/// How often containerd is killed under the one pull.
const CRASHES: usize = 10;
/// How long containerd stays away after each crash (as systemd's `RestartSec` would have it),
/// at most; in all, at most [`DOWN_IN_ALL`].
const DOWN_AT_MOST: Duration = Duration::from_secs(10);
const DOWN_IN_ALL: Duration = Duration::from_secs(60);

/// containerd killed (SIGKILL) 10 times under one `prepull pull --containerd-restart-wait 30s`,
/// each time at a random point of a download or of an unpack under way, and started again on
/// the same root 0 to 10 s later. That same run completes, the image verifies, and nothing of
/// the interrupted writes and unpacks is left.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_killed_10_times_under_one_pull_which_completes() {
    let mut campaign = Campaign::start("containerd killed under one pull");
    let (mut containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "campaign/crash",
        "v1",
        &ImageSpec::new(&CRASH_LAYERS).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    proxy.set_hook(|request| match request.path.contains("/blobs/") {
        true => Action::Shape(Shape {
            bytes_per_sec: Some(CRASH_LINK),
            cut_after: None,
        }),
        false => Action::Forward,
    });
    let reference = format!("{}/campaign/crash:v1", proxy.host());

    // Half the crashes under a download, half under an unpack, in a random order, each at a
    // random point of it.
    let rng = campaign.rng();
    let mut kinds: Vec<Under> = (0..CRASHES)
        .map(|k| match k % 2 {
            0 => Under::Download,
            _ => Under::Unpack,
        })
        .collect();
    kinds.shuffle(rng);
    let plan: Vec<(Under, f64)> = kinds
        .into_iter()
        .map(|under| (under, rng.random_range(0.05..0.9)))
        .collect();
    let mut downs: Vec<Duration> = (0..CRASHES)
        .map(|_| Duration::from_millis(rng.random_range(0..=DOWN_AT_MOST.as_millis() as u64)))
        .collect();
    let down: Duration = downs.iter().sum();
    if down > DOWN_IN_ALL {
        let scale = DOWN_IN_ALL.as_secs_f64() / down.as_secs_f64();
        downs.iter_mut().for_each(|d| *d = d.mul_f64(scale));
    }
    let replay = campaign.replay();

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("pull.log");
    let pulling = Instant::now();
    let mut child = spawn_logged(
        pull(&containerd, &proxy.host(), &reference).args(["--containerd-restart-wait", "30s"]),
        &log,
    );
    let mut crashed: Vec<(Under, String, Duration)> = Vec::new();
    // The unpacks open when containerd was killed: they stay, abandoned; the pull's own come
    // after them.
    let mut stale = Seen::default();
    for (k, ((wanted, part), down)) in plan.iter().zip(&downs).enumerate() {
        let observer = Observer::new(&containerd, &image).await;
        let total = observer.total();
        let since = observer.look(None).await.expect("look at the pull");
        // A download crash comes after a random share of what is left to download, at most
        // twice the even share, so that the last ones still find bytes to cut into.
        let bytes = since.stored
            + ((total - since.stored) as f64 * part * 2.0 / (CRASHES - k + 1) as f64) as u64;
        let deadline = Deadline::after(Duration::from_secs(120));
        let mut last = None;
        loop {
            if let Some(status) = child.try_wait().expect("poll prepull") {
                panic!(
                    "the pull ended ({status}) after {k} of {CRASHES} crashes, waiting for a \
                     crash under a {wanted:?} at {part:.2} (last seen {last:?}, stale {stale:?}); \
                     {replay}\n{}",
                    tail(&log)
                );
            }
            let seen = observer.look(Some(&stale)).await.expect("look at the pull");
            let under = match wanted {
                Under::Download if seen.stored < total => Under::Download,
                _ => Under::Unpack,
            };
            let due = match under {
                Under::Download => seen.stored >= bytes.max(since.stored + 1),
                Under::Unpack => seen.unpacking >= *part,
            };
            if due {
                crashed.push((
                    under,
                    format!("{:.0}%", observer.fraction(&seen) * 100.0),
                    *down,
                ));
                stale = seen;
                break;
            }
            assert!(
                !deadline.expired(),
                "crash {k} ({wanted:?} at {part:.2}) never came: {seen:?}; {replay}\n{}",
                tail(&log)
            );
            last = Some(seen);
            tokio::time::sleep(POLL).await;
        }
        drop(observer);
        containerd.kill();
        tokio::time::sleep(*down).await;
        containerd.start_again().await;
    }

    let out = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("the pull ends once containerd stays up")
        .expect("reap prepull");
    let took = pulling.elapsed();
    assert!(
        out.success(),
        "the one pull outlives {CRASHES} crashes ({out}); {replay}\n{}",
        tail(&log)
    );
    let result: Value = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert_eq!(result["status"], "pulled", "{result}; {replay}");
    let verified = Prepull::new("verify")
        .containerd(&containerd)
        .arg(&reference)
        .output()
        .await;
    assert!(
        verified.status.success(),
        "the image verifies: {}; {replay}",
        text(&verified)
    );
    let observer = Observer::new(&containerd, &image).await;
    observer
        .assert_nothing_left(&containerd, &image, &replay)
        .await;
    let size = blob_bytes(&image);
    let fetched = proxy.blob_bytes();
    // Each download goes on from its ingest once containerd is back; what was in flight at a
    // crash is fetched again, a few MiB, never a layer.
    assert!(
        (fetched as f64) < 1.5 * size as f64,
        "the registry served {fetched} bytes for a {size}-byte image; {replay}"
    );

    let count = |u: Under| crashed.iter().filter(|c| c.0 == u).count();
    let away: Duration = crashed.iter().map(|c| c.2).sum();
    campaign.figure(
        "image",
        format!("{} in {} layers", mib(size), image.layers.len()),
    );
    campaign.figure(
        "faults injected",
        format!(
            "{CRASHES} x containerd SIGKILL: mid-download {}, mid-unpack {}",
            count(Under::Download),
            count(Under::Unpack)
        ),
    );
    campaign.figure(
        "killed at",
        crashed
            .iter()
            .map(|c| {
                let under = match c.0 {
                    Under::Download => "download",
                    Under::Unpack => "unpack",
                };
                format!("{} {under} ({:.1} s away)", c.1, c.2.as_secs_f64())
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    campaign.figure(
        "containerd away",
        format!("{:.1} s in all", away.as_secs_f64()),
    );
    campaign.figure("runs survived", "1 (the one pull, through every crash)");
    campaign.figure(
        "bytes fetched",
        format!(
            "{} ({:.3}x the image; prepull counted {})",
            mib(fetched),
            fetched as f64 / size as f64,
            mib(result["bytes_fetched"].as_u64().unwrap_or(0))
        ),
    );
    campaign.figure("bytes refetched", mib(fetched.saturating_sub(size)));
    campaign.figure("pulling took", format!("{:.1} s", took.as_secs_f64()));
    campaign.finish();
}

/// The connection-reset campaign's image: 128 MiB in 8 layers.
const CUT_LAYERS: [usize; 8] = [16 * MIB; 8];
/// Connections cut in all, at random offsets of random layers.
const CUTS: usize = 50;

/// 50 connections cut at random offsets (the proxy hands over exactly N bytes of a layer, then
/// drops the connection) under one pull: it completes, the image verifies, and every resumed
/// request starts where the cut one broke, so not one byte is fetched twice (at most 1.5 times
/// the image could be tolerated; a resume that started over would cost a layer per cut).
#[tokio::test(flavor = "multi_thread")]
async fn fifty_connections_cut_at_random_offsets_under_one_pull() {
    let mut campaign = Campaign::start("connections cut at random offsets");
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "campaign/cuts",
        "v1",
        &ImageSpec::new(&CUT_LAYERS).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let reference = format!("{}/campaign/cuts:v1", proxy.host());

    // 50 distinct offsets over the layers' bytes laid end to end: a layer gets cuts in
    // proportion to its size, each strictly inside it.
    let starts: Vec<u64> = image
        .layers
        .iter()
        .scan(0, |at, l| {
            let start = *at;
            *at += l.size;
            Some(start)
        })
        .collect();
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let mut offsets = std::collections::BTreeSet::new();
    while offsets.len() < CUTS {
        let offset = campaign.rng().random_range(0..total);
        if !starts.contains(&offset) {
            offsets.insert(offset);
        }
    }
    let plan: std::collections::HashMap<String, Vec<u64>> = image
        .layers
        .iter()
        .zip(&starts)
        .map(|(layer, start)| {
            let cuts = offsets
                .range(start..&(start + layer.size))
                .map(|o| o - start);
            (layer.digest.clone(), cuts.collect())
        })
        .collect();
    let planned: usize = plan.values().map(Vec::len).sum();
    assert_eq!(planned, CUTS);
    let replay = campaign.replay();

    // Each GET of a layer (from the start, or resumed with a Range) is cut at the next planned
    // offset past where it starts.
    let pending = proxy.cut_blobs_at(plan.clone());

    let pulling = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        pull(&containerd, &proxy.host(), &reference).output(),
    )
    .await
    .expect("the pull ends");
    let took = pulling.elapsed();
    assert!(
        out.status.success(),
        "the pull outlives {planned} cuts: {}; {replay}",
        text(&out)
    );
    let left: usize = pending.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(left, 0, "every planned cut happened; {replay}");
    let verified = Prepull::new("verify")
        .containerd(&containerd)
        .arg(&reference)
        .output()
        .await;
    assert!(
        verified.status.success(),
        "the image verifies: {}; {replay}",
        text(&verified)
    );

    // Range resume: a layer's GETs start at 0, then exactly at each cut.
    let records = proxy.records();
    for layer in &image.layers {
        let starts: Vec<u64> = records
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
            .map(|r| r.range_start())
            .collect();
        let expected: Vec<u64> = std::iter::once(0)
            .chain(plan[&layer.digest].iter().copied())
            .collect();
        assert_eq!(
            starts, expected,
            "GETs of {} start at 0, then where each cut broke; {replay}",
            layer.digest
        );
    }
    let size = blob_bytes(&image);
    let fetched = proxy.blob_bytes();
    assert!(
        (fetched as f64) < 1.5 * size as f64,
        "{fetched} bytes fetched for a {size}-byte image; {replay}"
    );
    assert_eq!(
        fetched, size,
        "resumed at the byte where each cut broke, nothing is fetched twice; {replay}"
    );
    let result = json(&out);
    assert_eq!(result["bytes_fetched"], size, "{result}; {replay}");

    let most = plan.values().map(Vec::len).max().unwrap_or(0);
    campaign.figure(
        "image",
        format!("{} in {} layers", mib(size), image.layers.len()),
    );
    campaign.figure(
        "faults injected",
        format!("{planned} connection resets (up to {most} in one layer)"),
    );
    campaign.figure(
        "runs survived",
        format!(
            "1 pull, {} GETs of blobs",
            records
                .iter()
                .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
                .count()
        ),
    );
    campaign.figure(
        "bytes fetched",
        format!(
            "{} ({:.3}x the image)",
            mib(fetched),
            fetched as f64 / size as f64
        ),
    );
    campaign.figure(
        "bytes refetched",
        format!("{} bytes", fetched.saturating_sub(size)),
    );
    campaign.figure("pulling took", format!("{:.1} s", took.as_secs_f64()));
    campaign.finish();
}

/// The disk campaign's image: 32 MiB in 2 layers (64 MiB with its unpacked files on overlayfs,
/// more on native), on a containerd whose root is a 128 MiB tmpfs.
const DISK_LAYERS: [usize; 2] = [16 * MIB; 2];
const DISK: u64 = 128 * MIB as u64;
/// How often the disk fills up under a pull.
const FILLS: usize = 6;

/// The disk filling up under a pull, 6 times, each time with a random amount left free (from
/// almost nothing to just short of what the image needs, so it runs out while downloading or
/// while unpacking): the pull fails with an error of kind `disk-space` that says the filesystem
/// is full, no image record is left pointing at content that is not there, the failed pull's
/// lease is gone, and once space is given back (the filler deleted, or the filesystem grown) the
/// same pull succeeds and the image verifies.
#[tokio::test(flavor = "multi_thread")]
async fn the_disk_fills_up_under_a_pull_6_times_and_each_time_space_comes_back() {
    let mut campaign = Campaign::start("disk full under a pull");
    let (containerd, registry) = tokio::join!(
        Containerd::start_with(ContainerdOptions {
            root_tmpfs_bytes: Some(DISK),
            ..Default::default()
        }),
        Registry::start()
    );
    let image = push_image(
        &registry.host(),
        "campaign/full",
        "v1",
        &ImageSpec::new(&DISK_LAYERS).gzip_level(0),
    )
    .await;
    let host = registry.host();
    let reference = format!("{host}/campaign/full:v1");
    let names = [
        reference.clone(),
        format!("{host}/campaign/full@{}", image.manifest.digest),
        image.config.digest.clone(),
    ];
    let size = blob_bytes(&image);
    let store = store(&containerd).await;
    let root = containerd.root().to_path_buf();
    let filler = root.join("filler");
    let pull_all_the_way = || {
        pull(&containerd, &host, &reference)
            .arg("--containerd-root")
            .arg(&root)
            .args(["--min-free-space", "0"])
    };
    let remove_image = || async {
        for name in &names {
            store.delete_image(name).await.expect("Images.Delete");
        }
        store.collect_garbage().await.expect("collect garbage");
    };
    // What the image takes on this containerd, blobs and unpacked files: measured once.
    let free = free_bytes(&root);
    pull_all_the_way().success().await;
    let need = free - free_bytes(&root);
    remove_image().await;
    let replay = campaign.replay();

    let mut disk = DISK;
    let mut where_full: Vec<String> = Vec::new();
    let mut freed_by: Vec<&str> = Vec::new();
    for round in 0..FILLS {
        let leave = campaign
            .rng()
            .random_range(MIB as u64..need - 4 * MIB as u64);
        fill_until(&root, leave);
        let out = pull_all_the_way().output().await;
        let result = json(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "round {round}, {leave} bytes left free: {}; {replay}",
            text(&out)
        );
        assert_eq!(
            result["kind"], "disk-space",
            "round {round}: {result}; {replay}"
        );
        let error = result["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("filesystem is full") && error.contains(&reference),
            "the error says what is full and for which image: {error}; {replay}"
        );
        for name in &names {
            assert!(
                store.image(name).await.expect("Images.Get").is_none(),
                "round {round}: no record {name} for an image that is not there; {replay}"
            );
        }
        // No record of any image points at content that is missing.
        let check = containerd.ctr_ok(&["-n", "k8s.io", "images", "check"]);
        assert!(
            check.lines().skip(1).all(|l| l.contains("complete")),
            "round {round}: {check}; {replay}"
        );
        assert!(
            pull_leases(&store).await.is_empty(),
            "round {round}: the failed pull's lease is released; {replay}"
        );
        let fetched = result["bytes_fetched"].as_u64().unwrap_or(0);
        where_full.push(match fetched >= size {
            true => format!("{} free: unpacking", mib(leave)),
            false => format!("{} free: at {} downloaded", mib(leave), mib(fetched)),
        });

        // Space comes back: the filler goes, or the filesystem grows past it.
        if round % 2 == 0 {
            std::fs::remove_file(&filler).expect("delete the filler");
            freed_by.push("filler deleted");
        } else {
            disk += need + 16 * MIB as u64;
            let status = std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={disk}")])
                .arg(&root)
                .status()
                .expect("run mount");
            assert!(status.success(), "grow the tmpfs: {status}");
            freed_by.push("tmpfs grown");
        }
        let out = pull_all_the_way().output().await;
        assert!(
            out.status.success(),
            "round {round}: the pull succeeds once space is back: {}; {replay}",
            text(&out)
        );
        let verified = Prepull::new("verify")
            .containerd(&containerd)
            .arg(&reference)
            .output()
            .await;
        assert!(
            verified.status.success(),
            "round {round}: the image verifies: {}; {replay}",
            text(&verified)
        );
        // The next round starts without the image.
        remove_image().await;
        let _ = std::fs::remove_file(&filler);
    }

    campaign.figure(
        "image",
        format!(
            "{} in {} layers, {} on disk with its unpacked files, on a {} tmpfs",
            mib(size),
            image.layers.len(),
            mib(need),
            mib(DISK)
        ),
    );
    campaign.figure(
        "faults injected",
        format!("{FILLS} x disk full under a pull"),
    );
    campaign.figure("ran out with", where_full.join("; "));
    campaign.figure("space came back by", freed_by.join(", "));
    campaign.figure(
        "runs survived",
        format!("{FILLS} failed for disk space, {FILLS} succeeded after"),
    );
    campaign.finish();
}

/// `prepull agent` as a process, serving its endpoints on a port the system picks.
struct RunningAgent {
    child: tokio::process::Child,
    status_file: PathBuf,
    log: PathBuf,
    addr: String,
}

impl RunningAgent {
    /// Starts the agent on `list` against `containerd`, pulling from `host` over plain HTTP, with
    /// no splay, an hour between passes and `extra` arguments; its status and log go in `dir`.
    async fn start(
        containerd: &Containerd,
        host: &str,
        list: &Path,
        dir: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> RunningAgent {
        let status_file = dir.join("status.json");
        let log = dir.join("agent.log");
        let child = Prepull::new("agent")
            .containerd(containerd)
            .plain_http(host)
            .arg("--no-node-credentials")
            .args(["--splay", "0s", "--interval", "1h", "--log-level", "info"])
            .arg("--listen=127.0.0.1:0")
            .args(extra)
            .arg("--list")
            .arg(list)
            .arg("--status-file")
            .arg(&status_file)
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the agent's log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start the agent");
        let mut agent = RunningAgent {
            child,
            status_file,
            log,
            addr: String::new(),
        };
        let status = agent
            .wait_for("its listen address", Duration::from_secs(60), |s| {
                s["listen"].is_string()
            })
            .await;
        agent.addr = status["listen"].as_str().unwrap_or_default().to_string();
        agent
    }

    fn status(&self) -> Value {
        std::fs::read(&self.status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the status file satisfies `ok`, and returns it.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Deadline::after(timeout);
        loop {
            let status = self.status();
            if ok(&status) {
                return status;
            }
            if let Ok(Some(code)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({code}) before {what}:\n{}",
                    tail(&self.log)
                );
            }
            assert!(
                !deadline.expired(),
                "no {what} within {timeout:?}; status: {}\n{}",
                serde_json::to_string(&status["list_error"]).unwrap_or_default(),
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then the exit code (a stop between passes is clean: 0).
    async fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().expect("the agent runs") as i32;
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the agent stops on SIGTERM")
            .expect("reap the agent")
            .code()
    }
}

/// What the probes saw while a campaign ran: `/livez` and `/readyz` asked over and over.
#[derive(Debug, Default)]
struct Probes {
    answered: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// Asks the agent at `addr` for `/livez` and `/readyz`, one after the other, until `stop`;
/// an answer other than 200 within 5 s is a failure.
fn probe(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Probes> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let mut probes = Probes::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for path in ["/livez", "/readyz"] {
                let asked = Instant::now();
                match client.get(format!("http://{addr}{path}")).send().await {
                    Ok(r) if r.status() == 200 => probes.answered += 1,
                    Ok(r) => probes.failures.push(format!(
                        "{path}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default().trim()
                    )),
                    Err(e) => probes.failures.push(format!("{path}: {e}")),
                }
                probes.slowest = probes.slowest.max(asked.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        probes
    })
}

/// Writes `text` as the list, atomically (as a ConfigMap update lands).
fn write_list(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the list");
    std::fs::rename(&tmp, path).expect("put the list in place");
}

/// How many images the flooded list names.
const FLOOD: usize = 10_000;
/// How long the agent may take from the flooded list's change to the end of its pass over it
/// (about a minute on 2 cores: each image costs a HEAD answered 404 and a few containerd calls).
const FLOOD_PASS_AT_MOST: Duration = Duration::from_secs(300);

/// The agent's list abused while the agent runs: replaced by binary garbage, broken YAML, a
/// file over a ConfigMap's size, a nesting bomb, an empty file, deleted (in a random order),
/// then given 10,000 images nearly all of which the registry does not have, then restored. The
/// agent keeps answering `/livez` and `/readyz` throughout; each unusable list is reported in
/// the status naming the list file, and the good list stays in force; the 10,000-image pass ends
/// in bounded time with every missing image reported; the restored list is warmed.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_list_abused_while_it_runs() {
    let mut campaign = Campaign::start("the agent's list abused");
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    push_image(&host, "campaign/app", "v1", &ImageSpec::new(&[64 << 10])).await;
    push_image(&host, "campaign/web", "v1", &ImageSpec::new(&[64 << 10])).await;
    let (app, web) = (
        format!("{host}/campaign/app:v1"),
        format!("{host}/campaign/web:v1"),
    );
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    write_list(&list, format!("images:\n  - {app}\n").as_bytes());
    let mut agent = RunningAgent::start(&containerd, &host, &list, dir.path(), &[]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes = probe(agent.addr.clone(), stop.clone());
    agent
        .wait_for("pass 1", Duration::from_secs(60), |s| {
            s["passes"] == 1 && s["warm"] == 1
        })
        .await;
    let replay = campaign.replay();

    // Each abuse, and what the status must then say about the list file.
    let mut garbage = vec![0u8; 4096];
    campaign.rng().fill(&mut garbage[..]);
    garbage[0] = 0xff;
    let mut abuses: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("binary garbage", Some(garbage), "valid UTF-8"),
        (
            "broken YAML",
            Some(b"images:\n  - [unclosed\n  - {: }\n\t- tab".to_vec()),
            "not valid YAML",
        ),
        (
            "2 MiB",
            Some(b"# padding\n".repeat(200 << 10)),
            "larger than",
        ),
        (
            "a nesting bomb",
            Some(format!("images: {}", "[".repeat(100_000)).into_bytes()),
            "nested more than",
        ),
        ("emptied", Some(Vec::new()), "the list is empty"),
        ("deleted", None, "No such file"),
    ];
    abuses.shuffle(campaign.rng());
    let path = list.display().to_string();
    for (what, text, says) in &abuses {
        match text {
            Some(text) => write_list(&list, text),
            None => std::fs::remove_file(&list).expect("delete the list"),
        }
        let status = agent
            .wait_for(
                &format!("the list {what} reported"),
                Duration::from_secs(30),
                |s| {
                    s["list_error"]
                        .as_str()
                        .is_some_and(|e| e.contains(says) && e.contains(&path))
                },
            )
            .await;
        assert_eq!(
            status["images"][0]["image"],
            app.as_str(),
            "{what}: the good list stays in force; {replay}"
        );
        assert_eq!(
            status["images"].as_array().map(Vec::len),
            Some(1),
            "{replay}"
        );
    }

    // 10,000 images: the one on the node, and 9,999 the registry has never heard of.
    let mut flood = format!("images:\n  - {app}\n");
    for i in 1..FLOOD {
        flood.push_str(&format!("  - {host}/flood/img-{i:05}:v1\n"));
    }
    let flooded = Instant::now();
    write_list(&list, flood.as_bytes());
    let status = agent
        .wait_for("the pass over 10,000 images", FLOOD_PASS_AT_MOST, |s| {
            s["passes"] == 2
        })
        .await;
    let flood_took = flooded.elapsed();
    assert_eq!(status["list_error"], Value::Null, "{replay}");
    assert_eq!(status["warm"], 1, "{replay}");
    assert_eq!(status["failed"], FLOOD - 1, "{replay}");
    let images = status["images"].as_array().cloned().unwrap_or_default();
    let kinds: std::collections::BTreeMap<String, usize> =
        images.iter().fold(Default::default(), |mut kinds, i| {
            if let Some(kind) = i["kind"].as_str() {
                *kinds.entry(kind.to_string()).or_default() += 1;
            }
            kinds
        });
    let listed = images.len();
    let reported = listed + status["images_omitted"].as_u64().unwrap_or(0) as usize;
    assert_eq!(reported, FLOOD, "every image is accounted for; {replay}");
    let flood_pass = status_seconds(&status);

    // The list restored, with one more image: the agent warms it.
    write_list(&list, format!("images:\n  - {app}\n  - {web}\n").as_bytes());
    let status = agent
        .wait_for("the restored list warm", Duration::from_secs(120), |s| {
            s["passes"] == 3 && s["warm"] == 2 && s["list_error"].is_null()
        })
        .await;
    assert_eq!(
        status["images"].as_array().map(Vec::len),
        Some(2),
        "{replay}"
    );
    containerd.assert_image_complete(&web);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = probes.await.expect("the probes ran");
    assert!(
        probes.failures.is_empty() && probes.answered > 0,
        "the agent answers its probes throughout: {probes:?}; {replay}"
    );
    assert_eq!(agent.stop().await, Some(0), "a clean stop; {replay}");

    campaign.figure(
        "faults injected",
        format!(
            "list {}; then {FLOOD} images ({} unknown to the registry)",
            abuses.iter().map(|a| a.0).collect::<Vec<_>>().join(", "),
            FLOOD - 1
        ),
    );
    campaign.figure(
        "probes",
        format!(
            "{} answered 200, {} failed, slowest {} ms",
            probes.answered,
            probes.failures.len(),
            probes.slowest.as_millis()
        ),
    );
    campaign.figure(
        "10,000-image pass",
        format!(
            "{:.1} s from the list's change to the pass done ({:.1} s the pass); {} failed, \
             the status file lists {listed} (the rest counted, not listed), by kind {kinds:?}",
            flood_took.as_secs_f64(),
            flood_pass,
            FLOOD - 1
        ),
    );
    campaign.figure("runs survived", "1 agent, 3 passes, stopped cleanly");
    campaign.finish();
}

fn status_seconds(status: &Value) -> f64 {
    status["last_pass_seconds"].as_f64().unwrap_or(0.0)
}

/// The secret campaign's image: 4 layers of 4 MiB over a link of 1 MiB/s per request, so that
/// a pass is still pulling when the secret is rotated.
const SECRET_LAYERS: [usize; 4] = [4 * MIB; 4];
const SECRET_LINK: u64 = MIB as u64;

/// An htpasswd file holding `user` with `password` only (bcrypt, as docker-registry reads it),
/// put in place atomically: the registry reads it again when it changes.
fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let hash = bcrypt::hash(password, 4).expect("bcrypt a password");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{user}:{hash}\n")).expect("write htpasswd");
    std::fs::rename(&tmp, path).expect("put htpasswd in place");
}

/// A `.dockerconfigjson` for `host` with `user`:`password`.
fn docker_config(host: &str, user: &str, password: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({ "auths": { host: { "auth": auth } } }).to_string()
}

/// The pull secret rotated while the agent pulls with it: mid-download, the registry's htpasswd
/// drops the old password for a new one and the mounted secret (swapped as the kubelet swaps a
/// Secret volume) gets the new one. The pass under way reports what became of the image, the
/// next pass pulls with the new secret, and no request after the rotation is let in with the
/// old password.
#[tokio::test(flavor = "multi_thread")]
async fn the_pull_secret_rotated_while_the_agent_pulls() {
    let mut campaign = Campaign::start("the pull secret rotated mid-pass");
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("puller", "old-secret"))
    );
    let image = push_image_with(
        &registry.push_target(),
        "campaign/private",
        "v1",
        &ImageSpec::new(&SECRET_LAYERS).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    proxy.set_hook(|request| match request.path.contains("/blobs/") {
        true => Action::Shape(Shape {
            bytes_per_sec: Some(SECRET_LINK),
            cut_after: None,
        }),
        false => Action::Forward,
    });
    let host = proxy.host();
    let reference = format!("{host}/campaign/private:v1");
    let dir = tempfile::tempdir().unwrap();
    let mut secret = KubeletVolume::new(
        dir.path().join("pull-secret"),
        &[(
            ".dockerconfigjson",
            &docker_config(&host, "puller", "old-secret"),
        )],
    );
    let list = dir.path().join("list.yaml");
    write_list(&list, format!("images:\n  - {reference}\n").as_bytes());
    let auth_file = secret.dir().to_path_buf();
    let mut agent = RunningAgent::start(
        &containerd,
        &host,
        &list,
        dir.path(),
        &["--auth-file".as_ref(), auth_file.as_os_str()],
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes = probe(agent.addr.clone(), stop.clone());
    let replay = campaign.replay();

    // Rotated once the pass has a random part of the image in.
    let size = blob_bytes(&image);
    let at = (size as f64 * campaign.rng().random_range(0.1..0.7)) as u64;
    let deadline = Deadline::after(Duration::from_secs(60));
    while proxy.blob_bytes() < at {
        assert!(
            !deadline.expired(),
            "the pass never got {at} bytes in; {replay}\n{}",
            tail(&agent.log)
        );
        tokio::time::sleep(POLL).await;
    }
    let rotated_after = proxy.records().len();
    let rotated_at = proxy.blob_bytes();
    write_htpasswd(&registry.dir().join("htpasswd"), "puller", "new-secret");
    secret.update(&[(
        ".dockerconfigjson",
        &docker_config(&host, "puller", "new-secret"),
    )]);

    let first = agent
        .wait_for("pass 1", Duration::from_secs(120), |s| s["passes"] == 1)
        .await;
    let reported = &first["images"][0];
    match reported["state"].as_str() {
        Some("warm") => {}
        Some("failed") => {
            assert_eq!(reported["kind"], "unauthorized", "{reported}; {replay}");
            let error = reported["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(&host) && error.contains("campaign/private"),
                "the failure names the registry and the repository: {error}; {replay}"
            );
        }
        _ => panic!(
            "pass 1 reports the image warm or failed for its credentials: {reported}; {replay}"
        ),
    }

    // The next pass (a list edit starts it) pulls with the new secret.
    write_list(
        &list,
        format!("images:\n  - {reference}\n# the next pass\n").as_bytes(),
    );
    let second = agent
        .wait_for("pass 2", Duration::from_secs(120), |s| s["passes"] == 2)
        .await;
    assert_eq!(
        second["images"][0]["state"], "warm",
        "{}; {replay}",
        second["images"][0]
    );
    containerd.assert_image_complete(&reference);
    let verified = Prepull::new("verify")
        .containerd(&containerd)
        .arg(&reference)
        .output()
        .await;
    assert!(
        verified.status.success(),
        "the image verifies: {}; {replay}",
        text(&verified)
    );

    // After the rotation: the old password is refused every time it is tried, the new one
    // lets the pulls in.
    use base64::Engine as _;
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("puller:{password}"))
        )
    };
    let after: Vec<support::Record> = proxy.records().split_off(rotated_after);
    let with = |password: &str| -> Vec<&support::Record> {
        after
            .iter()
            .filter(|r| r.authorization.as_deref() == Some(basic(password).as_str()))
            .collect()
    };
    let old = with("old-secret");
    let new = with("new-secret");
    assert!(
        old.iter().all(|r| r.status == 401),
        "no request with the old password is let in after the rotation: {old:?}; {replay}"
    );
    assert!(
        new.iter().any(|r| r.status == 200 || r.status == 206),
        "the new password pulls: {new:?}; {replay}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = probes.await.expect("the probes ran");
    assert!(
        probes.failures.is_empty(),
        "the agent answers its probes throughout: {probes:?}; {replay}"
    );
    assert_eq!(agent.stop().await, Some(0), "a clean stop; {replay}");

    campaign.figure(
        "image",
        format!("{} in {} layers", mib(size), image.layers.len()),
    );
    campaign.figure(
        "faults injected",
        format!(
            "pull secret and htpasswd rotated at {} of {} into the pass",
            mib(rotated_at),
            mib(size)
        ),
    );
    campaign.figure(
        "pass 1 reported",
        match reported["state"].as_str() {
            Some("failed") => format!(
                "failed, {}: {}",
                reported["kind"].as_str().unwrap_or_default(),
                reported["error"].as_str().unwrap_or_default()
            ),
            other => other.unwrap_or_default().to_string(),
        },
    );
    campaign.figure(
        "after the rotation",
        format!(
            "{} requests with the old password (all 401), {} with the new one",
            old.len(),
            new.len()
        ),
    );
    campaign.figure(
        "bytes fetched",
        format!(
            "{} ({:.3}x the image)",
            mib(proxy.blob_bytes()),
            proxy.blob_bytes() as f64 / size as f64
        ),
    );
    campaign.figure("runs survived", "1 agent, 2 passes, stopped cleanly");
    campaign.finish();
}
