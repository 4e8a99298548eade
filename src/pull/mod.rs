//! Pulling one image: from a reference to verified content and image records in containerd.
//!
//! Order matters for safety: blobs first (each verified before commit), then the manifest and
//! index carrying GC references to them, then the image records, all under one lease. A pull
//! that fails at any point leaves no image record and no unverified byte committed.
//!
//! One file per step: [`warm`] (the shortcut for an image the node already holds), [`resolve`]
//! (top document, platform, child manifest), [`space`] (claiming free space), [`fetch`] (blob
//! writes, ingest-lock waits, attempts), [`unpack`] (layers into snapshots as they arrive),
//! [`commit`] (documents with GC labels, image records) and [`error`].

mod commit;
mod error;
mod fetch;
mod resolve;
mod space;
mod unpack;
mod warm;

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::sync::{oneshot, Semaphore};

use crate::digest::Digest;
use crate::image::{labels, names};
use crate::oci::Document;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::{ImageRecord, Store};

pub use error::PullError;
use fetch::Counters;
pub use unpack::UnpackError;

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

    /// Pulls one image. An image whose records already say it is complete costs a `HEAD` and a
    /// few reads of small documents.
    pub async fn pull(&self, reference: &Reference) -> Result<PullReport, PullError> {
        self.pull_with(reference, true).await
    }

    /// Pulls one image checking every blob's presence and every layer's snapshot, even when
    /// its records say it is warm: for mending an image whose content was found damaged.
    pub async fn pull_thoroughly(&self, reference: &Reference) -> Result<PullReport, PullError> {
        self.pull_with(reference, false).await
    }

    /// The complete image the node holds under `reference`, found without the network: the
    /// records CRI knows it by, its documents and (when unpacking) its top layer's snapshot.
    /// `None` when any of it is missing or unreadable.
    pub async fn on_node(&self, reference: &Reference) -> Option<PullReport> {
        let record = self.store.image(&reference.to_string()).await.ok()??;
        let top = record.target?.digest;
        self.already_warm(reference, &top, Instant::now()).await
    }

    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference))]
    async fn pull_with(
        &self,
        reference: &Reference,
        shortcut: bool,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        // Credentials are looked up once per host for the whole pull, not per request.
        let _credentials = self.registry.begin_pull(reference);
        let image = reference.to_string();
        let reg_err = |source| PullError::Registry {
            image: image.clone(),
            source,
        };
        let store_err = |source| PullError::Store {
            image: image.clone(),
            source,
        };

        // A tag costs one HEAD; documents containerd already holds are read from it, so a warm
        // node re-checking its images makes no GET at all.
        let top = match self.registry.resolve(reference).await.map_err(reg_err)? {
            Some(digest) => {
                if shortcut {
                    if let Some(report) = self.already_warm(reference, &digest, started).await {
                        return Ok(report);
                    }
                }
                self.document(reference, &digest).await?
            }
            None => self.registry.manifest(reference).await.map_err(reg_err)?,
        };
        tracing::debug!(digest = %top.digest, media_type = top.media_type(), "resolved");
        let (manifest_fetched, chosen_index, platform) = match &top.document {
            Document::Manifest(..) => (top.clone(), None, self.options.platform.clone()),
            Document::Index(index, _) => {
                let (i, platform) = self.choose(&image, index)?;
                let child = &index.manifests[i];
                let fetched = self.document(reference, &child.digest).await?;
                (fetched, Some(i), platform)
            }
        };
        let Document::Manifest(manifest, _) = &manifest_fetched.document else {
            return Err(PullError::Malformed {
                image,
                problem: format!(
                    "index {} points at another index {}; nested indexes are not supported",
                    top.digest, manifest_fetched.digest
                ),
            });
        };

        // Held until the pull is done, so concurrent pulls do not count the same free space.
        let _space = match &self.options.space {
            Some(check) => Some(self.claim_space(check, reference, manifest).await?),
            None => None,
        };

        let lease = self
            .store
            .create_lease("pull", self.options.lease_expiry)
            .await
            .map_err(store_err)?;
        let counters = Counters::default();
        let source_label = labels::distribution_source(reference);

        // Config and layers, concurrently; each verified before it is committed.
        // Config and layers download concurrently, each verified before it is committed;
        // layer i unpacks as soon as it and the layers below it are committed, while later
        // layers are still downloading.
        let (config_tx, config_rx) = oneshot::channel();
        let (layer_txs, layer_rxs): (Vec<_>, Vec<_>) = manifest
            .layers
            .iter()
            .map(|_| oneshot::channel::<()>())
            .unzip();
        let fetch_config = async {
            let bytes = self
                .fetch_config(
                    reference,
                    &manifest.config,
                    &lease,
                    &source_label,
                    &counters,
                )
                .await?;
            let _ = config_tx.send(bytes);
            Ok::<_, PullError>(())
        };
        let fetch_layers = try_join_all(manifest.layers.iter().zip(layer_txs).map(
            |(layer, done)| async {
                self.fetch_blob(reference, layer, &lease, &source_label, &counters)
                    .await?;
                let _ = done.send(());
                Ok::<_, PullError>(())
            },
        ));
        let unpack = self.unpack(
            &image,
            &manifest_fetched.digest,
            manifest,
            &lease,
            config_rx,
            layer_rxs,
        );
        tokio::try_join!(fetch_config, fetch_layers, unpack)?;

        // Parents after children, each with GC references to what it needs.
        let manifest_labels = labels::manifest_refs(&source_label, manifest);
        self.put_document(&lease, &manifest_fetched, manifest_labels)
            .await
            .map_err(store_err)?;
        if let Some(i) = chosen_index {
            let index_labels = labels::index_refs(&source_label, i, &manifest_fetched.digest);
            self.put_document(&lease, &top, index_labels)
                .await
                .map_err(store_err)?;
        }

        // Image records last: they make the image visible to CRI and root it for GC.
        let names = names::record_names(reference, &top.digest, &manifest.config.digest);
        let record_labels = labels::record_labels(self.options.pin);
        for name in &names {
            self.store
                .put_image(&ImageRecord {
                    name: name.clone(),
                    target: top.descriptor(),
                    labels: record_labels.clone(),
                })
                .await
                .map_err(store_err)?;
        }
        self.store.delete_lease(lease).await.map_err(store_err)?;

        let report = PullReport {
            reference: reference.clone(),
            digest: top.digest.clone(),
            config: manifest.config.digest.clone(),
            platform,
            names,
            layers: manifest.layers.len(),
            snapshotter: self.options.unpack.clone(),
            blobs_fetched: counters.fetched.load(Ordering::Relaxed),
            blobs_present: counters.present.load(Ordering::Relaxed),
            bytes_fetched: counters.bytes.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        };
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
}
