//! Pulling one image: from a reference to verified content and image records in containerd.
//!
//! Order matters for safety: blobs first (each verified before commit), then the manifest and
//! index carrying GC references to them, then the image records, all under one lease. A pull
//! that fails at any point leaves no image record and no unverified byte committed.
//!
//! One file per step: [`warm`] (the shortcut for an image the node already holds), [`resolve`]
//! (top document, platform, child manifest), [`space`] (claiming free space), [`fetch`] (blob
//! writes, ingest-lock waits, attempts), [`unpack`] (layers into snapshots as they arrive),
//! [`commit`] (documents with GC labels, image records), [`lease`] (the pull's lease, and those
//! dead runs left behind) and [`error`]; [`progress`] is what a display reads while a pull runs.
//!
//! containerd restarting mid-pull does not fail it: the pull waits for containerd to answer
//! again (see [`crate::retry`] for how long) and goes on from what containerd holds.

mod commit;
mod error;
mod fetch;
pub mod lease;
mod progress;
mod resolve;
mod space;
mod transfer;
mod unpack;
mod warm;

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::digest::Digest;
use crate::image::labels;
use crate::metrics::{metrics, PullResult};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::Store;

pub use error::PullError;
use fetch::Counters;
pub use progress::{PullProgress, Stage};
use resolve::{Resolution, Resolved};
pub use transfer::{transfer_record, TRANSFER_RECORDS};
pub use unpack::{unpack_local, UnpackError};
pub use warm::OnNode;

/// How pulls behave.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The platform to pick from multi-platform images.
    pub platform: Platform,
    /// Blobs downloaded at once, across all images of the run.
    pub max_concurrent_downloads: NonZeroUsize,
    /// How long containerd keeps a crashed pull's content before collecting it.
    pub lease_expiry: Duration,
    /// The snapshotter to unpack into, or `None` to store content only.
    pub unpack: Option<String>,
    /// Label image records `io.cri-containerd.pinned=pinned`, so kubelet image GC keeps them.
    pub pin: bool,
    /// Refuse images that would leave less free space than this on containerd's filesystem.
    pub space: Option<crate::space::SpaceCheck>,
    /// How long a pull waits for containerd to answer again when it stops answering mid-pull
    /// (it restarts); zero fails the pull at once.
    pub containerd_wait: Duration,
    /// Who fetches the layers: prepull, or containerd's transfer service (see [`transfer`]).
    pub fetcher: Fetcher,
}

/// Who fetches an image's layers into containerd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fetcher {
    /// prepull streams each layer into containerd's content store and has it unpacked.
    #[default]
    Prepull,
    /// containerd's transfer service (containerd 2.x) fetches and unpacks the layers
    /// prepull resolved, with prepull's credentials, mirrors and checks; prepull flushes them
    /// once per image. Falls back to prepull's fetch where containerd cannot.
    Containerd,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            max_concurrent_downloads: NonZeroUsize::MIN.saturating_add(7),
            lease_expiry: Duration::from_secs(24 * 3600),
            unpack: Some("overlayfs".to_string()),
            pin: false,
            space: None,
            containerd_wait: crate::retry::CONTAINERD_RESTART_WAIT,
            fetcher: Fetcher::default(),
        }
    }
}

/// What a successful pull did.
#[derive(Clone, Debug)]
pub struct PullReport {
    /// The normalized reference pulled.
    pub reference: Reference,
    /// The top-level digest (index or manifest) the reference resolved to.
    pub digest: Digest,
    /// The image ID CRI reports (`sha256:` of the config).
    pub config: Digest,
    /// The platform chosen (from the index, or the requested one for single-platform images).
    pub platform: Platform,
    /// Image record names written.
    pub names: Vec<String>,
    /// Layers in the image.
    pub layers: usize,
    /// Bytes of its content: the config and the layers, as stored (compressed).
    pub size: u64,
    /// The snapshotter the layers were unpacked into, if unpacking was asked for.
    pub snapshotter: Option<String>,
    /// Blobs downloaded.
    pub blobs_fetched: usize,
    /// Blobs already in containerd.
    pub blobs_present: usize,
    /// Bytes downloaded for blobs.
    pub bytes_fetched: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Pulls images into one containerd namespace.
pub struct Puller {
    registry: Arc<RegistryClient>,
    store: Store,
    options: PullOptions,
    downloads: Arc<Semaphore>,
    /// Transfers (`--fetcher containerd`) under way at once.
    transfers: Arc<Semaphore>,
    /// containerd answered that it has no transfer service: not asked again.
    transfer_unsupported: std::sync::atomic::AtomicBool,
    /// containerd's transfer service refused to unpack into the snapshotter: it only fetches.
    transfer_cannot_unpack: std::sync::atomic::AtomicBool,
    /// Whether this containerd's transfer service is one prepull uses (asked once).
    transfer_version_checked: tokio::sync::OnceCell<bool>,
    /// Unflushed snapshots of earlier boots were looked for (once per process: see
    /// [`lease::sweep_unflushed`]).
    swept: tokio::sync::OnceCell<()>,
}

impl Puller {
    /// A puller sharing one registry client and one download limit across its pulls.
    pub fn new(registry: Arc<RegistryClient>, store: Store, options: PullOptions) -> Puller {
        let downloads = Arc::new(Semaphore::new(options.max_concurrent_downloads.get()));
        let transfers = Arc::new(Semaphore::new(
            options
                .max_concurrent_downloads
                .get()
                .div_ceil(unpack::LAYERS_IN_FLIGHT),
        ));
        Puller {
            registry,
            store,
            options,
            downloads,
            transfers,
            transfer_unsupported: Default::default(),
            transfer_cannot_unpack: Default::default(),
            transfer_version_checked: tokio::sync::OnceCell::new(),
            swept: tokio::sync::OnceCell::new(),
        }
    }

    /// The snapshotter layers are unpacked into, if pulls unpack.
    pub fn snapshotter(&self) -> Option<&str> {
        self.options.unpack.as_deref()
    }

    /// The platform picked from multi-platform images.
    pub fn platform(&self) -> &Platform {
        &self.options.platform
    }

    /// The free-space check pulls make, if they make one (it knows containerd's filesystem).
    pub fn space(&self) -> Option<&crate::space::SpaceCheck> {
        self.options.space.as_ref()
    }

    /// Pulls one image. An image whose records already say it is complete costs a `HEAD` and a
    /// few reads of small documents.
    pub async fn pull(&self, reference: &Reference) -> Result<PullReport, PullError> {
        self.pull_with(reference, None, true, Arc::default()).await
    }

    /// [`Puller::pull`], telling `progress` how far it has got as it goes.
    pub async fn pull_reporting(
        &self,
        reference: &Reference,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        self.pull_with(reference, None, true, progress).await
    }

    /// Pulls one image checking every blob's presence and every layer's snapshot, even when
    /// its records say it is warm: for mending an image whose content was found damaged.
    pub async fn pull_thoroughly(&self, reference: &Reference) -> Result<PullReport, PullError> {
        self.pull_with(reference, None, false, Arc::default()).await
    }

    /// [`Puller::pull_thoroughly`], telling `progress` how far it has got as it goes.
    pub async fn pull_thoroughly_reporting(
        &self,
        reference: &Reference,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        self.pull_with(reference, None, false, progress).await
    }

    /// Pulls one image whose tag must resolve to `expect` (its top document's digest, or the
    /// node's platform manifest's): anything else is refused before a blob is fetched, and the
    /// node keeps what it holds. `thorough` as [`Puller::pull_thoroughly`].
    pub async fn pull_expecting(
        &self,
        reference: &Reference,
        expect: Option<&Digest>,
        thorough: bool,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        self.pull_with(reference, expect, !thorough, progress).await
    }

    /// The complete image the node holds under `reference`, found without the network: the
    /// records CRI knows it by, its documents and (when unpacking) its top layer's snapshot.
    /// `None` when any of it is missing or unreadable.
    pub async fn on_node(&self, reference: &Reference) -> Option<PullReport> {
        self.on_node_check().find(reference).await
    }

    /// Writes the records of the image `reference` names that a pull stopped while writing
    /// them left missing, without the network (see [`OnNode::mend_records`]).
    pub async fn mend_records(
        &self,
        reference: &Reference,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        self.on_node_check().mend_records(reference).await
    }

    /// [`Puller::pull_with`], counted in [`crate::metrics`] by how it ended.
    async fn pull_with(
        &self,
        reference: &Reference,
        expect: Option<&Digest>,
        shortcut: bool,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        let result = self
            .pull_outliving_restarts(reference, expect, shortcut, &progress)
            .await;
        if let (Ok(report), Stage::Resolving) = (&result, progress.stage()) {
            // Found warm: all of it is on the node.
            progress.begin(report.size);
            progress.advance(report.size);
        }
        progress.finish();
        let (ended, kind) = match &result {
            Ok(r) if r.blobs_fetched == 0 && r.bytes_fetched == 0 => (PullResult::Warm, None),
            Ok(_) => (PullResult::Pulled, None),
            Err(e) => (PullResult::Failed, Some(e.kind())),
        };
        metrics().pull(ended, kind, started.elapsed().as_secs_f64());
        result
    }

    /// Pulls, waiting for containerd each time it stops answering and going on from where its
    /// content stands, under one lease throughout; then settles the lease (see [`lease`]).
    async fn pull_outliving_restarts(
        &self,
        reference: &Reference,
        expect: Option<&Digest>,
        shortcut: bool,
        progress: &Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        let counters = Counters {
            progress: progress.clone(),
            ..Counters::default()
        };
        let mut held = None;
        let mut restarts = crate::retry::CONTAINERD_RESTARTS;
        let mut stood = counters.milestones();
        let result = loop {
            match self
                .pull_uncounted(reference, expect, shortcut, &counters, &mut held, started)
                .await
            {
                Err(e) if e.kind() == crate::ErrorKind::ContainerdUnreachable => {
                    // Only restarts with no progress between them count: a long pull outlives
                    // any number of restarts as long as it moves on after each.
                    if counters.milestones() != stood {
                        stood = counters.milestones();
                        restarts = crate::retry::CONTAINERD_RESTARTS;
                    }
                    if restarts == 0 {
                        break Err(e);
                    }
                    restarts -= 1;
                    if !self.containerd_back(reference, &e).await {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        self.settle(reference, held, result).await
    }

    /// Waits up to [`PullOptions::containerd_wait`] for containerd to answer again after
    /// `error`; whether it did.
    async fn containerd_back(&self, reference: &Reference, error: &PullError) -> bool {
        let patience = self.options.containerd_wait;
        if patience.is_zero() {
            return false;
        }
        tracing::warn!(
            image = %reference,
            error = %crate::error_chain(error),
            wait_s = patience.as_secs(),
            "containerd stopped answering; waiting for it to come back"
        );
        let give_up = Instant::now() + patience;
        loop {
            if self.store.version().await.is_ok() {
                tracing::info!(image = %reference, "containerd answers again; going on from what it holds");
                return true;
            }
            if Instant::now() >= give_up {
                tracing::warn!(image = %reference, wait_s = patience.as_secs(), "containerd did not come back in time (--containerd-restart-wait)");
                return false;
            }
            tokio::time::sleep(crate::retry::CONTAINERD_POLL).await;
        }
    }

    /// Ends the pull's hold on its lease (see [`lease`] for what a failed run keeps): a
    /// completed image no longer needs it, nor the leases dead runs of it left behind; a run
    /// that failed for disk space gives back what it and those runs held.
    async fn settle(
        &self,
        reference: &Reference,
        held: Option<lease::HeldLease>,
        result: Result<PullReport, PullError>,
    ) -> Result<PullReport, PullError> {
        let give_back = match &result {
            Ok(_) => false,
            Err(e) if e.kind() == crate::ErrorKind::DiskSpace => true,
            // Kept for the next run to resume from; released by the run that completes it.
            Err(_) => return result,
        };
        if let Some(held) = held {
            let released = lease::release(&self.store, held, give_back).await;
            match (released, &result) {
                (Err(e), Ok(_)) => return Err(PullError::store(reference)(e)),
                (Err(e), Err(_)) => {
                    tracing::warn!(image = %reference, error = %e, "cannot release the failed pull's lease; it expires by itself")
                }
                (Ok(()), _) => {}
            }
        }
        match lease::release_left_behind(&self.store, reference).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(image = %reference, leases = n, "released leases earlier runs of the image left behind")
            }
            Err(e) => {
                tracing::warn!(image = %reference, error = %e, "cannot release leases earlier runs of the image left behind")
            }
        }
        if let (true, Some(snapshotter)) = (give_back, self.options.unpack.as_deref()) {
            if let Err(e) = lease::collect_snapshots(&self.store, snapshotter).await {
                tracing::warn!(image = %reference, error = %e, "cannot have containerd collect the partial unpack; its next garbage collection does");
            }
        }
        result
    }

    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference))]
    async fn pull_uncounted(
        &self,
        reference: &Reference,
        expect: Option<&Digest>,
        shortcut: bool,
        counters: &Counters,
        held: &mut Option<lease::HeldLease>,
        started: Instant,
    ) -> Result<PullReport, PullError> {
        // Credentials are looked up once per host for the whole pull, not per request.
        let _credentials = self.registry.begin_pull(reference);
        let image = match self.resolve(reference, expect, shortcut, started).await? {
            Resolution::Warm(report) => return Ok(report),
            Resolution::Pull(image) => image,
        };
        // Held until the pull is done, so concurrent pulls do not count the same free space.
        let _space = self.claim_space(reference, &image.manifest).await?;
        let held = match held {
            Some(h) => h,
            None => held.insert(
                lease::take(&self.store, reference, self.options.lease_expiry)
                    .await
                    .map_err(PullError::store(reference))?,
            ),
        };
        let lease = held.lease();
        if self.options.unpack.is_some() {
            self.swept
                .get_or_try_init(|| async {
                    lease::sweep_unflushed(&self.store).await?;
                    transfer::delete_transfer_records(&self.store).await
                })
                .await
                .map_err(PullError::store(reference))?;
        }
        counters.progress.begin(image.manifest.content_size());
        let source = labels::distribution_source(reference);
        let transferred = match self.options.fetcher {
            Fetcher::Containerd => {
                self.transfer_and_unpack(reference, &image, lease, &source, counters)
                    .await?
            }
            Fetcher::Prepull => false,
        };
        if !transferred {
            self.fetch_and_unpack(reference, &image, lease, &source, counters)
                .await?;
        }
        self.commit_documents(reference, &image, lease, &source)
            .await?;
        let names = self.write_records(reference, &image).await?;

        let report = self.report(reference, &image, names, counters, started);
        tracing::info!(
            digest = %report.digest,
            bytes_fetched = report.bytes_fetched,
            blobs_fetched = report.blobs_fetched,
            blobs_present = report.blobs_present,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "pulled"
        );
        Ok(report)
    }

    /// What the pull of `image` did.
    fn report(
        &self,
        reference: &Reference,
        image: &Resolved,
        names: Vec<String>,
        counters: &Counters,
        started: Instant,
    ) -> PullReport {
        let fetched = counters.fetched.load(Ordering::Relaxed);
        PullReport {
            reference: reference.clone(),
            digest: image.top.digest.clone(),
            config: image.manifest.config.digest.clone(),
            platform: image.platform.clone(),
            names,
            layers: image.manifest.layers.len(),
            size: image.manifest.content_size(),
            snapshotter: self.options.unpack.clone(),
            blobs_fetched: fetched,
            // A pull that went on after containerd restarted finds what it fetched before
            // present: counted once, as fetched.
            blobs_present: counters
                .present
                .load(Ordering::Relaxed)
                .min((image.manifest.layers.len() + 1).saturating_sub(fetched)),
            bytes_fetched: counters.bytes.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        }
    }
}
