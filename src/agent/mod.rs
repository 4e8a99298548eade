//! The node agent: keeps every image of the prepull list warm in containerd.
//!
//! A pass pulls each listed image (a warm image costs one `HEAD` and no download), pins the
//! records of pinned entries, and releases the pins prepull set for images that left the list or
//! whose tag moved on. Passes run after a delay within the splay (so a thousand nodes started
//! together do not hit the registry together: at the node's slot, from a hash of its name, or
//! random without one; see [`schedule`]), then every interval (plus the wait for the slot), and
//! soon after the list file changes. The status file tells what is warm, what is not, and why:
//! each image's outcome as soon as its pull in a pass ends (a registry holding one image back
//! does not hold back the others' news), the pins and the pass's own figures when it ends.

pub mod deep;
pub mod http;
pub mod list;
pub mod metrics;
pub mod pin_budget;
pub mod pins;
pub mod schedule;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use list::{Entry, List, ListError};
pub use pins::PinOwner;
pub use status::{ImageState, ImageStatus, Status};

use crate::metrics::{metrics, RepairResult};
use crate::pull::{PullError, PullReport, Puller};
use crate::repair::{self, Protection};
use crate::rootfs::Startable;
use crate::store::{Lease, Store, StoreError};
use crate::watch::Fingerprint;
use pins::Pins;
use schedule::{Schedule, Slot, Wake};
use status::{timestamp, Outcome};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The prepull list file.
    pub list: PathBuf,
    /// Whose pins this agent sets and releases (see [`pins`]).
    pub pin_owner: PinOwner,
    /// Time between passes.
    pub interval: Duration,
    /// Up to this much delay before the first pass, after a list change, and added to each
    /// interval: the wait for the node's slot when it has a name, else random.
    pub splay: Duration,
    /// The node's name (`spec.nodeName`), which gives its passes a fixed slot in the splay
    /// window; `None`: random waits.
    pub node_name: Option<String>,
    /// How often the list file is checked for changes.
    pub watch_every: Duration,
    /// Where the status is written (JSON), if anywhere.
    pub status_file: Option<PathBuf>,
    /// Images pulled at once (their blobs share the puller's download limit).
    pub images_at_once: usize,
    /// How often listed images are read back and hashed before a pass, so corrupt or lost
    /// content is removed and fetched again by the pass; `None` never.
    pub verify_every: Option<Duration>,
    /// How long a pass under way may take to finish once a stop is requested.
    pub grace: Duration,
    /// When listed images' snapshots are compared file by file with their layers (and mended);
    /// `None` never.
    pub deep: Option<deep::DeepSchedule>,
    /// How long a pass waits for one image's pull. An image still pulling then fails this
    /// pass (the others go on, and the status is written); the bytes it stored stay in
    /// containerd, and the next pass resumes from them, so a large image on a slow link
    /// completes over several passes while one slow registry never holds a pass hostage.
    pub max_pull_time: Duration,
    /// How much of containerd's filesystem pinned images may take (see [`pin_budget`]).
    pub pin_budget: pin_budget::PinBudgetConfig,
}

/// The agent.
pub struct Agent {
    puller: Arc<Puller>,
    store: Store,
    options: AgentOptions,
    list: Option<List>,
    list_seen: Fingerprint,
    status: Status,
    published: tokio::sync::watch::Sender<Status>,
    last_verify: Option<Instant>,
    /// The lease holding damaged images while a pass mends them.
    protection: Option<Protection>,
    /// The deep check's findings not yet reported by a pass (see [`deep::DeepTask`]).
    deep_found: Arc<std::sync::Mutex<Damage>>,
    /// The listed images' names, for the deep check's task.
    deep_names: tokio::sync::watch::Sender<Vec<String>>,
    /// Whether the deep check runs as its own task (else before each pass).
    deep_task: bool,
    /// Held while snapshots are written: by a pass's pulls, and by the deep check's mending.
    snapshots: Arc<tokio::sync::Mutex<()>>,
}

/// Locks a map shared with the deep check's task; a panic while holding it cannot leave it
/// inconsistent (whole inserts and drains), so a poisoned lock is used as it is.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long the start checks' lease outlives an agent that dies while they run.
const START_CHECK_LEASE: Duration = Duration::from_secs(600);

/// The least time between two writes of the status while a pass's pulls end: at most four a
/// second, however many end at once (checking a warm image takes one request).
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The lease the start checks' read-only views are made under during one pass: made for the
/// first check, replaced once half its life is gone (a pass may outlast it), deleted when the
/// pass's pulls end.
#[derive(Default)]
struct StartLease(Option<(Lease, Instant)>);

impl StartLease {
    /// The lease, made or replaced as needed.
    async fn get(&mut self, store: &Store) -> Result<&Lease, StoreError> {
        let held = match self.0.take() {
            Some((lease, made)) if made.elapsed() < START_CHECK_LEASE / 2 => (lease, made),
            old => {
                StartLease(old).end(store).await;
                let lease = store.create_lease("start-check", START_CHECK_LEASE).await?;
                (lease, Instant::now())
            }
        };
        Ok(&self.0.insert(held).0)
    }

    /// Deletes the lease, if one was made.
    async fn end(self, store: &Store) {
        let Some((lease, _)) = self.0 else {
            return;
        };
        if let Err(e) = store.delete_lease(lease).await {
            tracing::warn!(error = %crate::error_chain(&e), "cannot delete the start check's lease; it expires by itself");
        }
    }
}

/// How one image's pull in a pass ended: its result, the complete image the node holds for it
/// when it failed, and the bytes it downloaded.
type Checked = (Result<PullReport, PullError>, Option<PullReport>, u64);

/// What the verify before a pass found wrong in one entry's image.
pub(crate) struct Found {
    /// One line per problem.
    pub(crate) problems: Vec<String>,
    /// Why it cannot be mended on this node (a bad blob another namespace holds), if so.
    pub(crate) blocked: Option<String>,
}

/// What the verify before a pass found, per entry.
type Damage = HashMap<String, Found>;

/// How [`Agent::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The passes asked for ran.
    Done,
    /// A stop was requested.
    Requested,
}

impl Agent {
    /// An agent pulling with `puller` into `store` (the same containerd and namespace).
    pub fn new(puller: Puller, store: Store, options: AgentOptions) -> Agent {
        let slot = options.node_name.as_deref().map(Slot::for_node);
        let status = Status {
            list: options.list.display().to_string(),
            pin_owner: options.pin_owner.to_string(),
            node_name: options.node_name.clone(),
            slot_seconds: slot
                .map(|s| (s.offset(options.splay).as_secs_f64() * 1000.0).round() / 1000.0),
            agent_started: Some(timestamp(SystemTime::now())),
            ..Status::default()
        };
        let (published, _) = tokio::sync::watch::channel(status.clone());
        Agent {
            puller: Arc::new(puller),
            store,
            options,
            list: None,
            list_seen: Fingerprint::default(),
            status,
            published,
            last_verify: None,
            protection: None,
            deep_found: Arc::default(),
            deep_names: tokio::sync::watch::channel(Vec::new()).0,
            deep_task: false,
            snapshots: Arc::default(),
        }
    }

    /// Starts the deep check as a task of its own, when one is asked for and images are
    /// unpacked; it ends when the returned token is cancelled.
    fn spawn_deep_check(&mut self) -> Option<CancellationToken> {
        let (Some(schedule), Some(snapshotter)) = (self.options.deep, self.puller.snapshotter())
        else {
            return None;
        };
        let task = deep::DeepTask {
            store: self.store.clone(),
            snapshotter: snapshotter.to_string(),
            schedule,
            names: self.deep_names.subscribe(),
            found: self.deep_found.clone(),
            snapshots: self.snapshots.clone(),
        };
        let stop = CancellationToken::new();
        tokio::spawn(task.run(stop.clone()));
        self.deep_task = true;
        Some(stop)
    }

    /// Runs passes until `passes` have run (`None`: forever) or `stop` is cancelled. A stop
    /// while waiting ends at once; a pass under way gets [`AgentOptions::grace`] to finish (what
    /// it leaves undone is resumed by the next agent: leases expire, ingests resume).
    pub async fn run(&mut self, passes: Option<u64>, stop: &CancellationToken) -> Stopped {
        self.reload_list().await;
        // A one-shot agent checks before its pass; a lasting one beside its passes.
        let _deep = match passes {
            None => self.spawn_deep_check().map(CancellationToken::drop_guard),
            Some(_) => None,
        };
        let slot = self.options.node_name.as_deref().map(Slot::for_node);
        let mut schedule = Schedule::new(self.options.interval, self.options.splay, slot);
        if !self.options.splay.is_zero() {
            let delay_ms = schedule
                .next()
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            match schedule.slot() {
                Some(slot) => tracing::info!(
                    delay_ms,
                    node = slot.node(),
                    slot_ms = slot.offset(self.options.splay).as_millis() as u64,
                    "first pass at the node's slot in the splay window"
                ),
                None => tracing::info!(delay_ms, "first pass after a random splay delay"),
            }
        }
        loop {
            // Wait for the next pass, noticing list changes meanwhile.
            loop {
                match schedule.tick(self.options.watch_every, stop).await {
                    Wake::Due => break,
                    Wake::Stop => return Stopped::Requested,
                    Wake::Check => {
                        if self.list_changed() && self.reload_list().await {
                            schedule.list_changed();
                        }
                        // Damage the deep check found (and mended) is reported soon.
                        if !lock(&self.deep_found).is_empty() {
                            schedule.list_changed();
                        }
                    }
                }
            }
            if self.list_changed() {
                self.reload_list().await;
            }
            let grace = self.options.grace;
            let stopped = {
                let pass = self.pass();
                tokio::pin!(pass);
                tokio::select! {
                    () = &mut pass => None,
                    () = stop.cancelled() => {
                        tracing::info!(grace_ms = grace.as_millis() as u64, "stop requested; letting the pass finish");
                        let finished = tokio::time::timeout(grace, pass).await.is_ok();
                        if !finished {
                            tracing::warn!("the pass did not finish within the grace period; stopping it");
                        }
                        Some(finished)
                    }
                }
            };
            // A pass abandoned past its grace period leaves its repair lease: release it here,
            // rather than let it keep content for a week.
            if let Some(protection) = self.protection.take() {
                protection.release(&self.store).await;
            }
            match stopped {
                Some(true) if passes.is_some_and(|n| self.status.passes >= n) => {
                    return Stopped::Done
                }
                Some(_) => return Stopped::Requested,
                None => {}
            }
            if passes.is_some_and(|n| self.status.passes >= n) {
                return Stopped::Done;
            }
            schedule.pass_done();
        }
    }

    /// Records where the endpoints are served (the status says it: with `--listen` on port 0,
    /// the port the system chose).
    pub fn serving_at(&mut self, address: std::net::SocketAddr) {
        self.status.listen = Some(address.to_string());
        self.write_status();
    }

    /// The status as it stands (after the last pass, once its run has ended).
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The status as it is published after every change (for the HTTP endpoints).
    pub fn watch_status(&self) -> tokio::sync::watch::Receiver<Status> {
        self.published.subscribe()
    }

    /// The puller, shared (the endpoints look images up on the node with it).
    pub fn puller(&self) -> Arc<Puller> {
        self.puller.clone()
    }

    fn list_changed(&self) -> bool {
        Fingerprint::of(std::slice::from_ref(&self.options.list)) != self.list_seen
    }

    /// Reads the list file; `true` when it is now in use. A list that cannot be used leaves
    /// the previous one in force (nothing is unpinned or dropped because of a typo). Entries new
    /// to the status are looked up on the node (no network), so the status says at once which
    /// of them a pod could use.
    async fn reload_list(&mut self) -> bool {
        self.list_seen = Fingerprint::of(std::slice::from_ref(&self.options.list));
        match List::load_blocking(&self.options.list).await {
            Ok(list) => {
                tracing::info!(
                    list = %self.options.list.display(),
                    images = list.entries.len(),
                    "prepull list loaded"
                );
                let mut images = Vec::with_capacity(list.entries.len());
                for entry in &list.entries {
                    let name = entry.reference.to_string();
                    match self.status.image(&name) {
                        Some(known) => images.push(ImageStatus {
                            pin: entry.pin,
                            ..known.clone()
                        }),
                        None => {
                            // Records a pull was killed while writing are written first,
                            // from the ones that are there: cheap, and no network.
                            match self.puller.mend_records(&entry.reference).await {
                                Ok(written) if !written.is_empty() => {
                                    tracing::info!(image = %name, records = ?written, "wrote image records a stopped pull left missing")
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(image = %name, error = %crate::error_chain(&e), "cannot write the image's missing records")
                                }
                            }
                            let present = self.puller.on_node(&entry.reference).await;
                            images.push(ImageStatus::before_check(entry, present.as_ref()));
                        }
                    }
                }
                self.status.set_images(images);
                self.deep_names.send_replace(
                    list.entries
                        .iter()
                        .map(|e| e.reference.to_string())
                        .collect(),
                );
                self.list = Some(list);
                self.status.list_in_force = true;
                self.status.list_error = None;
                self.write_status();
                true
            }
            Err(e) => {
                metrics().list_error();
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

    /// One pass: reads listed images back when a verify is due, pulls every listed image
    /// (publishing each one's status as its pull ends), sets the pins of those it got, releases
    /// the pins the list no longer wants, and writes the status.
    pub async fn pass(&mut self) {
        let Some(list) = self.list.clone() else {
            tracing::warn!("no usable prepull list yet; nothing to do");
            return;
        };
        let started = Instant::now();
        let number = self.status.passes + 1;
        // Said in the file before anything else is done: an agent killed mid-pass leaves a
        // status that shows the previous pass's results as the previous pass's.
        self.status.pass_under_way = Some(status::PassUnderWay {
            number,
            started: timestamp(SystemTime::now()),
        });
        self.write_status();
        let (mut damage, verified) = self.verify_if_due(&list).await;
        self.deep_check_due(&list, &mut damage).await;
        // Damaged now, or still open from an earlier verify: pulled checking every blob (the
        // warm shortcut trusts records, and records survive a removed blob).
        let damaged: HashSet<String> = list
            .entries
            .iter()
            .map(|e| e.reference.to_string())
            .filter(|name| {
                damage.contains_key(name)
                    || self
                        .status
                        .image(name)
                        .is_some_and(ImageStatus::damage_open)
            })
            .collect();
        let results = {
            let _snapshots = self.snapshots.clone().lock_owned().await;
            let pulls = self.spawn_pulls(&list, &damaged);
            self.record_as_pulled(&list, pulls, damage, verified, number)
                .await
        };
        let pins = Pins::new(&self.store, &self.options.pin_owner);
        let mut images = self.status.images.clone();
        let (resolved, pin_budget) = self.pin(&pins, &list, &results, &mut images).await;
        self.status.pin_budget = pin_budget;
        // The mending pulls have ended: the lease holding the damaged images goes (see
        // `repair` for why one rule holds for every caller).
        if let Some(protection) = self.protection.take() {
            protection.release(&self.store).await;
        }
        let released = match pins.release(&list, &resolved).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot release pins");
                0
            }
        };

        count_repairs(&damaged, &images);
        self.status.set_images(images);
        self.status.released = released;
        self.status.passes += 1;
        self.status.pass_under_way = None;
        self.status.last_pass_seconds = started.elapsed().as_secs_f64();
        let now = SystemTime::now();
        self.status.last_pass = Some(timestamp(now));
        self.status.last_pass_unix = Some(unix_seconds(now));
        self.status.last_pass_at = Some(Instant::now());
        if self.status.images.iter().all(|i| i.state.usable()) {
            self.status.last_success = self.status.last_pass.clone();
            self.status.last_success_unix = self.status.last_pass_unix;
        }
        tracing::info!(
            warm = self.status.warm,
            stale = self.status.stale,
            failed = self.status.failed,
            corrupt = self.status.corrupt,
            released,
            seconds = self.status.last_pass_seconds,
            "pass done"
        );
        self.write_status();
    }

    /// When a verify is due, reads the listed images back (see [`Agent::verify_listed`]).
    /// `true` with it when the verify ran; the lease protecting what it removed is kept in
    /// `self.protection` until the pulls end (or the pass is abandoned: see [`Agent::run`]).
    async fn verify_if_due(&mut self, list: &List) -> (Damage, bool) {
        let due = self
            .options
            .verify_every
            .is_some_and(|every| self.last_verify.is_none_or(|t| t.elapsed() >= every));
        if !due {
            return (HashMap::new(), false);
        }
        self.last_verify = Some(Instant::now());
        self.status.last_verify = Some(timestamp(SystemTime::now()));
        match self.verify_listed(list).await {
            Ok((damage, protection)) => {
                self.protection = Some(protection);
                (damage, true)
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot verify the stored images");
                (HashMap::new(), false)
            }
        }
    }

    /// The deep check's findings for the listed images (see [`deep`]): what its task found since
    /// the last pass, or, for a one-shot agent, a check of the images that are due now. They
    /// join the verify's findings.
    async fn deep_check_due(&self, list: &List, damage: &mut Damage) {
        let names: Vec<String> = list
            .entries
            .iter()
            .map(|e| e.reference.to_string())
            .collect();
        let found = if self.deep_task {
            let mut found = lock(&self.deep_found);
            names
                .iter()
                .filter_map(|n| found.remove(n).map(|f| (n.clone(), f)))
                .collect()
        } else {
            let (Some(schedule), Some(snapshotter)) =
                (self.options.deep, self.puller.snapshotter())
            else {
                return;
            };
            let cancel = CancellationToken::new();
            match deep::check_due(
                &self.store,
                snapshotter,
                &names,
                schedule,
                &cancel,
                &self.snapshots,
            )
            .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot compare the listed images' snapshots with their layers");
                    return;
                }
            }
        };
        for (name, f) in found {
            damage.entry(name).or_insert(f);
        }
    }

    /// Starts the pull of every entry, `images_at_once` at a time; an entry in `damaged` is
    /// pulled checking every blob, not just its records. Each pull is its own task, so one
    /// waiting on a slow credential plugin (which runs outside the async workers) does not hold
    /// up the others; dropping the set (a stop past its grace period) aborts them. Each task
    /// ends with its entry's index and how its pull went.
    fn spawn_pulls(&self, list: &List, damaged: &HashSet<String>) -> JoinSet<(usize, Checked)> {
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.options.images_at_once.max(1),
        ));
        let mut tasks = JoinSet::new();
        for (i, entry) in list.entries.iter().cloned().enumerate() {
            let (puller, limit) = (self.puller.clone(), limit.clone());
            let thorough = damaged.contains(&entry.reference.to_string());
            let max_pull_time = self.options.max_pull_time;
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let progress = Arc::new(crate::pull::PullProgress::default());
                let pull = puller.pull_expecting(
                    &entry.reference,
                    entry.expect.as_ref(),
                    thorough,
                    progress.clone(),
                );
                let result = tokio::time::timeout(max_pull_time, pull)
                    .await
                    .unwrap_or_else(|_| {
                        Err(PullError::TooSlow {
                            image: entry.reference.to_string(),
                            after: max_pull_time,
                        })
                    });
                // What the node holds when the check failed: a present image is stale, not gone.
                let present = match &result {
                    Ok(_) => None,
                    Err(_) => puller.on_node(&entry.reference).await,
                };
                (i, (result, present, progress.fetched()))
            });
        }
        tasks
    }

    /// Records each entry's pull as it ends: its status (see [`Agent::judge`]) replaces the one
    /// before and is published, so an image pulled seconds ago shows warm while the pass waits
    /// for a slower one. Writes are coalesced to one per [`PUBLISH_EVERY`]. Returns how each
    /// entry's pull went; `None` for an entry whose task died (its status stays as it was).
    async fn record_as_pulled(
        &mut self,
        list: &List,
        mut pulls: JoinSet<(usize, Checked)>,
        mut damage: Damage,
        verified: bool,
        pass: u64,
    ) -> Vec<Option<Checked>> {
        let mut results: Vec<Option<Checked>> = list.entries.iter().map(|_| None).collect();
        let mut lease = StartLease::default();
        let mut next_write = Instant::now();
        let mut unwritten = false;
        loop {
            tokio::select! {
                joined = pulls.join_next() => match joined {
                    None => break,
                    Some(Ok((i, checked))) => {
                        let (Some(entry), Some(slot)) = (list.entries.get(i), results.get_mut(i))
                        else {
                            continue;
                        };
                        let found = damage.remove(&entry.reference.to_string());
                        let status = self
                            .judge(entry, &checked, found, verified, pass, &mut lease)
                            .await;
                        self.status.set_image(i, status);
                        *slot = Some(checked);
                        unwritten = true;
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "an image's pull task ended abnormally")
                    }
                },
                () = tokio::time::sleep_until(next_write), if unwritten => {}
            }
            if unwritten && Instant::now() >= next_write {
                self.write_status();
                unwritten = false;
                next_write = Instant::now() + PUBLISH_EVERY;
            }
        }
        lease.end(&self.store).await;
        results
    }

    /// An entry's status from how its pull in this pass ended, before its pins are set (see
    /// [`Agent::pin`]): `found` is the damage the verify before the pass found in it, if any.
    /// A usable image's start is checked at once, so it is never shown warm before that is
    /// known.
    async fn judge(
        &self,
        entry: &Entry,
        (result, present, fetched): &Checked,
        found: Option<Found>,
        verified: bool,
        pass: u64,
        lease: &mut StartLease,
    ) -> ImageStatus {
        let name = entry.reference.to_string();
        let (found, blocked, previous) = match found {
            Some(f) => (
                Some(f.problems),
                f.blocked,
                self.status.image(&name).cloned(),
            ),
            None => open_damage(self.status.image(&name), verified),
        };
        let outcome = match (&blocked, result) {
            (Some(reason), _) => Outcome::Unmendable {
                reason,
                present: result.as_ref().ok().or(present.as_ref()),
            },
            (None, Ok(report)) => Outcome::Warm(report),
            (None, Err(error)) => Outcome::Failed {
                error,
                present: present.as_ref(),
                fetched: *fetched,
            },
        };
        let now = SystemTime::now();
        let mut status = ImageStatus {
            pass: Some(pass),
            ..ImageStatus::after_pass(entry, previous.as_ref(), found, outcome, now)
        };
        if let Some(d) = status.damage.as_mut().filter(|d| d.mended.is_none()) {
            d.blocked = blocked;
        }
        if status.state.usable() {
            self.check_start(&mut status, lease).await;
        }
        if let Some(error) = &status.error {
            tracing::warn!(
                image = %status.image,
                state = status.state.as_str(),
                kind = status.kind.map(|k| k.as_str()),
                error,
                "image not warm"
            );
        }
        status
    }

    /// Pins what each entry holds, in list order (the pin budget goes to the entries listed
    /// first), and says in `images` (their statuses, in list order) which stay unpinned and
    /// why. Returns, per entry, the digest it resolved to, or `None` when it could not be
    /// checked (its pins stay), and the pin budget after.
    async fn pin(
        &self,
        pins: &Pins<'_>,
        list: &List,
        results: &[Option<Checked>],
        images: &mut [ImageStatus],
    ) -> (
        HashMap<String, Option<String>>,
        Option<pin_budget::PinBudget>,
    ) {
        let mut resolved = HashMap::new();
        let mut ledger = self.pin_ledger().await;
        for ((entry, result), status) in list.entries.iter().zip(results).zip(images) {
            let name = entry.reference.to_string();
            let digest = match result {
                Some((Ok(report), ..)) => Some(report.digest.to_string()),
                _ => None,
            };
            resolved.insert(name.clone(), digest);
            // A present image keeps (or gets) its pin even while its registry is away; one the
            // node cannot mend gets none.
            let held = match result {
                _ if status.unmendable() => None,
                Some((Ok(report), ..)) => Some(report),
                Some((Err(_), present, _)) => present.as_ref(),
                None => None,
            };
            let Some(held) = held else { continue };
            status.unpinned = admit(&mut ledger, entry, held).await.err();
            if let Some(why) = &status.unpinned {
                tracing::warn!(image = %name, reason = %why, "image kept unpinned");
            } else if let Err(e) = pins.apply(entry, &held.names).await {
                tracing::warn!(image = %name, error = %crate::error_chain(&e), "cannot pin the image on the node");
                if let Some((Ok(_), ..)) = result {
                    status.pin_failed(&e);
                }
            }
        }
        (resolved, ledger.map(|l| l.budget))
    }

    /// The pinned images' ledger for this pass, when containerd's filesystem can be measured
    /// (there is a free-space check) and containerd lists its images.
    async fn pin_ledger(&self) -> Option<pin_budget::Ledger<'_>> {
        let (_, total) = self.puller.space()?.usage().ok()?;
        let opened = pin_budget::Ledger::open(
            &self.store,
            self.puller.platform(),
            self.puller.snapshotter().is_some(),
            total,
            &self.options.pin_budget,
        )
        .await;
        match opened {
            Ok(ledger) => Some(ledger),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot measure the pinned images; pinning without the budget this pass");
                None
            }
        }
    }

    /// Reads every listed image back and hashes it; blobs that are corrupt or unreadable are
    /// removed (and containerd's garbage collected), so the pass that follows fetches them
    /// again. Returns what was wrong, per entry.
    async fn verify_listed(&self, list: &List) -> Result<(Damage, Protection), StoreError> {
        use crate::verify::{group_records, CheckOptions, Checker, LayerCheck};
        let checker = Checker::new(
            &self.store,
            CheckOptions {
                snapshotter: self.puller.snapshotter().map(str::to_string),
                layers: LayerCheck::Hash,
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
            for problem in &check.problems {
                metrics().damage_found(problem.kind());
            }
            let problems: Vec<String> = check.problems.iter().map(ToString::to_string).collect();
            tracing::warn!(image = %name, problems = %problems.join("; "), "stored image is damaged; fetching it again");
            // A bad blob another namespace also holds stays (its file is shared): this image
            // cannot be mended here, and the status must say so rather than call it warm.
            let shared = repair::shared_bad_blobs(&self.store, &[&check]).await?;
            let blocked = repair::blocked(&check, &shared);
            damage.insert(name, Found { problems, blocked });
            damaged.push(check);
        }
        // The pass that follows makes them whole again, rooted by their records.
        let protection =
            repair::discard_bad_blobs(&self.store, &damaged.iter().collect::<Vec<_>>()).await?;
        Ok((damage, protection))
    }

    /// Whether a pod starts from `image` (on the node): its own command resolved in its unpacked
    /// layers (see [`crate::start_check`]), in a read-only view made under `lease`. A check that
    /// cannot be made (containerd failed) leaves the image unmarked, and the log says why.
    async fn check_start(&self, image: &mut ImageStatus, lease: &mut StartLease) {
        let Some(snapshotter) = self.puller.snapshotter() else {
            return;
        };
        let Some(top) = image.digest.as_ref().and_then(|d| d.parse().ok()) else {
            return;
        };
        let checked = async {
            let lease = lease.get(&self.store).await?;
            let unpacked =
                crate::start_check::unpacked(&self.store, &top, self.puller.platform()).await?;
            crate::start_check::check(&self.store, lease, snapshotter, &unpacked).await
        };
        match checked.await {
            Ok(Some(Startable::No(finding))) => {
                tracing::warn!(image = %image.image, kind = finding.kind(), error = %finding, "a pod could not start from this image");
                image.start_kind = Some(finding.kind());
                image.start_error = Some(finding.to_string());
            }
            Ok(_) => {
                image.start_kind = None;
                image.start_error = None;
            }
            Err(e) => {
                tracing::warn!(image = %image.image, error = %crate::error_chain(&e), "cannot check whether the image starts");
            }
        }
    }

    /// Publishes the status to the endpoints and writes the status file, if there is one.
    fn write_status(&mut self) {
        self.status.written = Some(timestamp(SystemTime::now()));
        self.published.send_replace(self.status.clone());
        let Some(path) = &self.options.status_file else {
            return;
        };
        if let Err(e) = self.status.write_to(path) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the status file");
        }
    }
}

/// Counts, for each image the pass tried to mend, how that ended.
fn count_repairs(damaged: &HashSet<String>, images: &[ImageStatus]) {
    for image in images.iter().filter(|i| damaged.contains(&i.image)) {
        let result = match &image.damage {
            Some(d) if d.mended.is_some() => RepairResult::Mended,
            Some(d) if d.blocked.is_some() => RepairResult::Blocked,
            _ => RepairResult::Failed,
        };
        metrics().repair(result);
    }
}

/// Seconds since the Unix epoch.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// For an entry the verify did not find damaged this pass: whether damage found earlier still
/// stands (and why the node cannot mend it, if it cannot), with the previous status to build on.
/// A verify that ran and found the image sound closes any open damage: it is mended now.
fn open_damage(
    previous: Option<&ImageStatus>,
    verified: bool,
) -> (Option<Vec<String>>, Option<String>, Option<ImageStatus>) {
    let Some(previous) = previous else {
        return (None, None, None);
    };
    let mut previous = previous.clone();
    let open = previous.damage.as_mut().filter(|d| d.mended.is_none());
    match open {
        Some(d) if verified => {
            d.mended = Some(timestamp(SystemTime::now()));
            (None, None, Some(previous))
        }
        Some(d) => {
            let blocked = d.blocked.clone();
            (None, blocked, Some(previous))
        }
        None => (None, None, Some(previous)),
    }
}

/// Whether `entry`'s image (`report`) may be pinned within the pin budget: always for an entry
/// that is not pinned or without a budget.
async fn admit(
    ledger: &mut Option<pin_budget::Ledger<'_>>,
    entry: &list::Entry,
    report: &crate::pull::PullReport,
) -> Result<(), String> {
    match ledger {
        Some(ledger) if entry.pin => ledger.admit(report).await,
        _ => Ok(()),
    }
}
