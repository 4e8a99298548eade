//! Pulling one image: from a reference to verified content and image records in containerd.
//!
//! Order matters for safety: blobs first (each verified before commit), then the manifest and
//! index carrying GC references to them, then the image records, all under one lease. A pull
//! that fails at any point leaves no image record and no unverified byte committed.
//!
//! One file per step: [`warm`] (the shortcut for an image the node already holds), [`resolve`]
//! (top document, platform, child manifest), [`space`] (claiming free space), [`fetch`] (blob
//! writes, ingest-lock waits, attempts), [`unpack`] (layers into snapshots as they arrive),
//! [`commit`] (documents with GC labels, image records) and [`error`]; [`progress`] is what a
//! display reads while a pull runs.

mod commit;
mod error;
mod fetch;
mod progress;
mod resolve;
mod space;
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
}

impl Puller {
    /// A puller sharing one registry client and one download limit across its pulls.
    pub fn new(registry: Arc<RegistryClient>, store: Store, options: PullOptions) -> Puller {
        let downloads = Arc::new(Semaphore::new(options.max_concurrent_downloads.get()));
        Puller {
            registry,
            store,
            options,
            downloads,
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
        self.pull_with(reference, true, Arc::default()).await
    }

    /// [`Puller::pull`], telling `progress` how far it has got as it goes.
    pub async fn pull_reporting(
        &self,
        reference: &Reference,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        self.pull_with(reference, true, progress).await
    }

    /// Pulls one image checking every blob's presence and every layer's snapshot, even when
    /// its records say it is warm: for mending an image whose content was found damaged.
    pub async fn pull_thoroughly(&self, reference: &Reference) -> Result<PullReport, PullError> {
        self.pull_with(reference, false, Arc::default()).await
    }

    /// [`Puller::pull_thoroughly`], telling `progress` how far it has got as it goes.
    pub async fn pull_thoroughly_reporting(
        &self,
        reference: &Reference,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        self.pull_with(reference, false, progress).await
    }

    /// The complete image the node holds under `reference`, found without the network: the
    /// records CRI knows it by, its documents and (when unpacking) its top layer's snapshot.
    /// `None` when any of it is missing or unreadable.
    pub async fn on_node(&self, reference: &Reference) -> Option<PullReport> {
        self.on_node_check().find(reference).await
    }

    /// [`Puller::pull_with`], counted in [`crate::metrics`] by how it ended.
    async fn pull_with(
        &self,
        reference: &Reference,
        shortcut: bool,
        progress: Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        let result = self.pull_uncounted(reference, shortcut, &progress).await;
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

    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference))]
    async fn pull_uncounted(
        &self,
        reference: &Reference,
        shortcut: bool,
        progress: &Arc<PullProgress>,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        // Credentials are looked up once per host for the whole pull, not per request.
        let _credentials = self.registry.begin_pull(reference);
        let image = match self.resolve(reference, shortcut, started).await? {
            Resolution::Warm(report) => return Ok(report),
            Resolution::Pull(image) => image,
        };
        // Held until the pull is done, so concurrent pulls do not count the same free space.
        let _space = self.claim_space(reference, &image.manifest).await?;
        let store_err = PullError::store(reference);
        let lease = self
            .store
            .create_lease("pull", self.options.lease_expiry)
            .await
            .map_err(&store_err)?;
        progress.begin(image.manifest.content_size());
        let counters = Counters {
            progress: progress.clone(),
            ..Counters::default()
        };
        let source = labels::distribution_source(reference);
        self.fetch_and_unpack(reference, &image, &lease, &source, &counters)
            .await?;
        self.commit_documents(reference, &image, &lease, &source)
            .await?;
        let names = self.write_records(reference, &image).await?;
        self.store.delete_lease(lease).await.map_err(&store_err)?;

        let report = self.report(reference, &image, names, &counters, started);
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
        PullReport {
            reference: reference.clone(),
            digest: image.top.digest.clone(),
            config: image.manifest.config.digest.clone(),
            platform: image.platform.clone(),
            names,
            layers: image.manifest.layers.len(),
            size: image.manifest.content_size(),
            snapshotter: self.options.unpack.clone(),
            blobs_fetched: counters.fetched.load(Ordering::Relaxed),
            blobs_present: counters.present.load(Ordering::Relaxed),
            bytes_fetched: counters.bytes.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        }
    }
}
