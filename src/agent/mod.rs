//! The node agent: keeps every image of the prepull list warm in containerd.
//!
//! A pass pulls each listed image (a warm image costs one `HEAD` and no download), pins the
//! records of pinned entries, and releases the pins prepull set for images that left the list or
//! whose tag moved on. Passes run after a random delay (the splay, so a thousand nodes started
//! together do not hit the registry together), then every interval (plus a random part of the
//! splay), and soon after the list file changes. After each pass the status file tells what is
//! warm, what is not, and why.

pub mod list;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

pub use list::{Entry, List, ListError};

use crate::pull::{PullError, PullReport, Puller};
use crate::store::{labels, Store, StoreError};
use crate::watch::Fingerprint;

/// Set on the records prepull pinned, to the list entry they were pinned for; only pins carrying
/// it are ever released (CRI pins its sandbox image itself, and operators may pin by hand).
pub const PINNED_FOR: &str = "prepull.io/pinned-for";

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The prepull list file.
    pub list: PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// Up to this much random delay before the first pass, after a list change, and added to
    /// each interval.
    pub splay: Duration,
    /// How often the list file is checked for changes.
    pub watch_every: Duration,
    /// Where the status is written after each pass (JSON), if anywhere.
    pub status_file: Option<PathBuf>,
    /// Images pulled at once (their blobs share the puller's download limit).
    pub images_at_once: usize,
    /// How often listed images are read back and hashed before a pass, so corrupt or lost
    /// content is removed and fetched again by the pass; `None` never.
    pub verify_every: Option<Duration>,
}

/// What one pass found for one image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageStatus {
    /// The list entry, normalized.
    pub image: String,
    /// `warm` or `failed`.
    pub state: &'static str,
    /// Whether the entry asks for a pin.
    pub pin: bool,
    /// The digest the image resolved to (when warm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes downloaded in this pass.
    pub bytes_fetched: u64,
    /// What the last check of the stored image found wrong (mended by this pass if it is warm).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<String>,
    /// A short failure kind (`unauthorized`, `not-found`, `rate-limited`, `tls`, `network`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::ErrorKind>,
    /// The whole error, naming registry, repository and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The status file's content.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The list file.
    pub list: String,
    /// Why the list on disk is not the one in use, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_error: Option<String>,
    /// When the last pass finished (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<String>,
    /// How long it took.
    pub last_pass_seconds: f64,
    /// Passes so far.
    pub passes: u64,
    /// Images warm after the last pass.
    pub warm: usize,
    /// Images that failed in the last pass.
    pub failed: usize,
    /// Pins released in the last pass (images that left the list or moved on).
    pub released: usize,
    /// When listed images were last read back and hashed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<String>,
    /// Per image, in list order.
    pub images: Vec<ImageStatus>,
}

/// The agent.
pub struct Agent {
    puller: Arc<Puller>,
    store: Store,
    options: AgentOptions,
    list: Option<List>,
    list_seen: Fingerprint,
    status: Status,
    last_verify: Option<Instant>,
}

impl Agent {
    /// An agent pulling with `puller` into `store` (the same containerd and namespace).
    pub fn new(puller: Puller, store: Store, options: AgentOptions) -> Agent {
        let status = Status {
            list: options.list.display().to_string(),
            ..Status::default()
        };
        Agent {
            puller: Arc::new(puller),
            store,
            options,
            list: None,
            list_seen: Fingerprint::default(),
            status,
            last_verify: None,
        }
    }

    /// Runs passes until `passes` have run (`None`: forever).
    pub async fn run(&mut self, passes: Option<u64>) {
        self.reload_list();
        let mut next = Instant::now() + random_up_to(self.options.splay);
        if !self.options.splay.is_zero() {
            tracing::info!(
                delay_ms = (next - Instant::now()).as_millis() as u64,
                "first pass after the splay delay"
            );
        }
        loop {
            // Wait for the next pass, noticing list changes meanwhile.
            while Instant::now() < next {
                let nap = self
                    .options
                    .watch_every
                    .min(next.saturating_duration_since(Instant::now()));
                tokio::time::sleep(nap).await;
                if self.list_changed() && self.reload_list() {
                    let soon = Instant::now() + random_up_to(self.options.splay);
                    next = next.min(soon);
                }
            }
            if self.list_changed() {
                self.reload_list();
            }
            self.pass().await;
            if passes.is_some_and(|n| self.status.passes >= n) {
                return;
            }
            next = Instant::now() + self.options.interval + random_up_to(self.options.splay);
        }
    }

    /// The status after the last pass.
    pub fn status(&self) -> &Status {
        &self.status
    }

    fn list_changed(&self) -> bool {
        Fingerprint::of(std::slice::from_ref(&self.options.list)) != self.list_seen
    }

    /// Reads the list file; `true` when it is now in use. A list that cannot be used leaves
    /// the previous one in force (nothing is unpinned or dropped because of a typo).
    fn reload_list(&mut self) -> bool {
        self.list_seen = Fingerprint::of(std::slice::from_ref(&self.options.list));
        match List::load(&self.options.list) {
            Ok(list) => {
                tracing::info!(
                    list = %self.options.list.display(),
                    images = list.entries.len(),
                    "prepull list loaded"
                );
                self.list = Some(list);
                self.status.list_error = None;
                true
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                tracing::error!(
                    error = %message,
                    keeping = self.list.as_ref().map(|l| l.entries.len()),
                    "the prepull list cannot be used; the previous one stays in force"
                );
                self.status.list_error = Some(message);
                self.write_status();
                false
            }
        }
    }

    /// Pulls every listed image, then sets and releases pins.
    pub async fn pass(&mut self) {
        let Some(list) = self.list.clone() else {
            tracing::warn!("no usable prepull list yet; nothing to do");
            return;
        };
        let started = Instant::now();
        let due = self
            .options
            .verify_every
            .is_some_and(|every| self.last_verify.is_none_or(|t| t.elapsed() >= every));
        let (damage, protection) = if due {
            self.last_verify = Some(Instant::now());
            self.status.last_verify =
                Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
            match self.verify_listed(&list).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot verify the stored images");
                    (HashMap::new(), None)
                }
            }
        } else {
            (HashMap::new(), None)
        };
        // Each pull is its own task, so one waiting on a slow credential plugin (which runs
        // outside the async workers) does not hold up the others.
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.options.images_at_once.max(1),
        ));
        let tasks: Vec<_> = list
            .entries
            .iter()
            .cloned()
            .map(|entry| {
                let (puller, limit) = (self.puller.clone(), limit.clone());
                // An image found damaged is pulled checking every blob, not just its records.
                let thorough = damage.contains_key(&entry.reference.to_string());
                tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let result = if thorough {
                        puller.pull_thoroughly(&entry.reference).await
                    } else {
                        puller.pull(&entry.reference).await
                    };
                    (entry, result)
                })
            })
            .collect();
        let mut results: Vec<(Entry, Result<PullReport, PullError>)> = Vec::new();
        for (task, entry) in tasks.into_iter().zip(&list.entries) {
            match task.await {
                Ok(r) => results.push(r),
                Err(e) => results.push((
                    entry.clone(),
                    Err(PullError::Malformed {
                        image: entry.reference.to_string(),
                        problem: format!("the pull stopped unexpectedly: {e}"),
                    }),
                )),
            }
        }

        let mut images = Vec::with_capacity(results.len());
        // Per entry: the digest it resolved to, or `None` when it failed (its pins stay).
        let mut resolved: HashMap<String, Option<String>> = HashMap::new();
        for (entry, result) in &results {
            let name = entry.reference.to_string();
            let damaged = damage.get(&name).cloned().unwrap_or_default();
            let status = match result {
                Ok(report) => {
                    let pinned = self.apply_pin(entry, report).await;
                    let digest = report.digest.to_string();
                    resolved.insert(name.clone(), Some(digest.clone()));
                    match pinned {
                        Ok(()) => ImageStatus {
                            image: name,
                            state: "warm",
                            pin: entry.pin,
                            digest: Some(digest),
                            bytes_fetched: report.bytes_fetched,
                            damage: damaged.clone(),
                            kind: None,
                            error: None,
                        },
                        Err(e) => ImageStatus {
                            image: name,
                            state: "failed",
                            pin: entry.pin,
                            digest: Some(digest),
                            bytes_fetched: report.bytes_fetched,
                            damage: damaged.clone(),
                            kind: Some(e.kind()),
                            error: Some(format!(
                                "pulled, but the pin could not be set: {}",
                                crate::error_chain(&e)
                            )),
                        },
                    }
                }
                Err(e) => {
                    resolved.insert(name.clone(), None);
                    ImageStatus {
                        image: name,
                        state: "failed",
                        pin: entry.pin,
                        digest: None,
                        bytes_fetched: 0,
                        damage: damaged.clone(),
                        kind: Some(e.kind()),
                        error: Some(crate::error_chain(e)),
                    }
                }
            };
            if let Some(error) = &status.error {
                tracing::warn!(image = %status.image, kind = status.kind.map(|k| k.as_str()), error, "image not warm");
            }
            images.push(status);
        }
        // The lease that held the damaged images' good parts while their bad blobs were
        // replaced: once they are warm again their records hold everything.
        if let Some(lease) = protection {
            let mended = images
                .iter()
                .filter(|i| !i.damage.is_empty())
                .all(|i| i.state == "warm");
            if mended {
                if let Err(e) = self.store.delete_lease(lease).await {
                    tracing::warn!(error = %e, "cannot delete the repair lease; it expires by itself");
                }
            }
        }
        let released = match self.release_pins(&list, &resolved).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot release pins");
                0
            }
        };

        let warm = images.iter().filter(|i| i.state == "warm").count();
        self.status.failed = images.len() - warm;
        self.status.warm = warm;
        self.status.released = released;
        self.status.images = images;
        self.status.passes += 1;
        self.status.last_pass_seconds = started.elapsed().as_secs_f64();
        self.status.last_pass =
            Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        tracing::info!(
            warm,
            failed = self.status.failed,
            released,
            seconds = self.status.last_pass_seconds,
            "pass done"
        );
        self.write_status();
    }

    /// Reads every listed image back and hashes it; blobs that are corrupt or unreadable are
    /// removed (and containerd's garbage collected), so the pass that follows fetches them
    /// again. Returns what was wrong, per entry.
    async fn verify_listed(
        &self,
        list: &List,
    ) -> Result<(HashMap<String, Vec<String>>, Option<crate::store::Lease>), StoreError> {
        use crate::verify::{group_records, CheckOptions, Checker};
        let checker = Checker::new(
            &self.store,
            CheckOptions {
                snapshotter: self.puller.snapshotter().map(str::to_string),
                hash_layers: true,
            },
        );
        let groups = group_records(self.store.images().await?);
        let mut damage = HashMap::new();
        let mut damaged = Vec::new();
        for entry in &list.entries {
            let name = entry.reference.to_string();
            let Some((target, records)) = groups
                .iter()
                .find(|(_, records)| records.iter().any(|r| r.name == name))
            else {
                continue;
            };
            let Ok(target) = target.parse() else { continue };
            let check = checker.check(&target, records).await?;
            if check.problems.is_empty() {
                continue;
            }
            let problems: Vec<String> = check.problems.iter().map(ToString::to_string).collect();
            tracing::warn!(image = %name, problems = %problems.join("; "), "stored image is damaged; fetching it again");
            damage.insert(name, problems);
            damaged.push(check);
        }
        // The lease holding the rest of the damaged images expires by itself; the pass that
        // follows makes them whole again, rooted by their records.
        let lease =
            crate::verify::discard_bad_blobs(&self.store, &damaged.iter().collect::<Vec<_>>())
                .await?;
        Ok((damage, lease))
    }

    /// Pins the records of a pinned entry that nobody pinned yet, marking them as prepull's;
    /// for an unpinned entry, removes pins prepull set on them.
    async fn apply_pin(&self, entry: &Entry, report: &PullReport) -> Result<(), StoreError> {
        let owner = entry.reference.to_string();
        for name in &report.names {
            let Some(record) = self.store.image(name).await? else {
                continue;
            };
            let pinned = record.labels.contains_key(labels::CRI_PINNED);
            let ours = record.labels.contains_key(PINNED_FOR);
            if entry.pin && !pinned {
                self.store
                    .update_image_labels(
                        name,
                        &[
                            (labels::CRI_PINNED, Some("pinned")),
                            (PINNED_FOR, Some(&owner)),
                        ],
                    )
                    .await?;
            } else if !entry.pin && ours && record.labels.get(PINNED_FOR) == Some(&owner) {
                self.store
                    .update_image_labels(name, &[(labels::CRI_PINNED, None), (PINNED_FOR, None)])
                    .await?;
            }
        }
        Ok(())
    }

    /// Releases pins prepull set for entries that left the list, or for an older digest of an
    /// entry that now resolves elsewhere. Pins of entries that failed this pass stay.
    async fn release_pins(
        &self,
        list: &List,
        resolved: &HashMap<String, Option<String>>,
    ) -> Result<usize, StoreError> {
        let listed: BTreeMap<String, bool> = list
            .entries
            .iter()
            .map(|e| (e.reference.to_string(), e.pin))
            .collect();
        // The image each pinned entry wants kept: what it resolved to in this pass, or, when
        // it failed (a registry outage), what its record points at now.
        let mut wanted: Vec<(String, String)> = Vec::new();
        for entry in list.entries.iter().filter(|e| e.pin) {
            let name = entry.reference.to_string();
            let digest = match resolved.get(&name) {
                Some(Some(d)) => Some(d.clone()),
                _ => self
                    .store
                    .image(&name)
                    .await?
                    .and_then(|r| r.target)
                    .map(|t| t.digest),
            };
            if let Some(d) = digest {
                wanted.push((name, d));
            }
        }
        let mut released = 0;
        for record in self.store.images_with_label(PINNED_FOR).await? {
            let owner = record.labels.get(PINNED_FOR).cloned().unwrap_or_default();
            let target = record.target.as_ref().map(|t| t.digest.as_str());
            let why = match (listed.get(&owner), resolved.get(&owner)) {
                (None, _) => "its image left the prepull list",
                (Some(false), _) => "its list entry is no longer pinned",
                // The entry's tag now points elsewhere: this record is the old image's.
                (Some(true), Some(Some(now))) if target != Some(now.as_str()) => {
                    "its tag moved to another image"
                }
                _ => continue,
            };
            // Another pinned entry wants the same image: the pin stays, and is now that
            // entry's to release.
            if let Some((heir, _)) = wanted.iter().find(|(_, d)| Some(d.as_str()) == target) {
                if heir != &owner {
                    self.store
                        .update_image_labels(&record.name, &[(PINNED_FOR, Some(heir))])
                        .await?;
                    tracing::info!(record = %record.name, from = %owner, to = %heir, "pin handed over");
                }
                continue;
            }
            self.store
                .update_image_labels(
                    &record.name,
                    &[(labels::CRI_PINNED, None), (PINNED_FOR, None)],
                )
                .await?;
            tracing::info!(record = %record.name, for_entry = %owner, why, "pin released");
            released += 1;
        }
        Ok(released)
    }

    fn write_status(&self) {
        let Some(path) = &self.options.status_file else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            let text = serde_json::to_vec_pretty(&self.status).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the status file");
        }
    }
}

/// A random duration in `[0, max)`.
fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    max.mul_f64(rand::random::<f64>())
}
