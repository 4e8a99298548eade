//! Pulling one image: from a reference to verified content and image records in containerd.
//!
//! Order matters for safety: blobs first (each verified before commit), then the manifest and
//! index carrying GC references to them, then the image records, all under one lease. A pull
//! that fails at any point leaves no image record and no unverified byte committed.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{future::try_join_all, StreamExt};
use tokio::sync::{oneshot, Semaphore};

use crate::digest::Digest;
use crate::image::{self, labels, names};
use crate::kind::ErrorKind;
use crate::oci::{self, Descriptor, Document};
use crate::platform::Platform;
use crate::reference::{Reference, Target};
use crate::registry::{FetchedManifest, RegistryClient, RegistryError};
use crate::store::{ref_key, ImageRecord, Lease, Opened, Store, StoreError, StoredImage};
use crate::unpack;

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

/// Why an image could not be pulled. Every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry failed or served bad content.
    #[error("cannot pull {image}")]
    Registry {
        /// The image as requested.
        image: String,
        /// What the registry did.
        #[source]
        source: RegistryError,
    },
    /// containerd failed.
    #[error("cannot pull {image}: containerd failed")]
    Store {
        /// The image as requested.
        image: String,
        /// What containerd did.
        #[source]
        source: StoreError,
    },
    /// The index has nothing for the requested platform.
    #[error("cannot pull {image}: no manifest for platform {platform} (the image has: {available}); choose one with --platform")]
    NoPlatform {
        /// The image as requested.
        image: String,
        /// The platform asked for.
        platform: Platform,
        /// What the index offers.
        available: String,
    },
    /// A layer could not be unpacked.
    #[error("cannot pull {image}")]
    Unpack {
        /// The image as requested.
        image: String,
        /// What went wrong.
        #[source]
        source: crate::unpack::UnpackError,
    },
    /// Pulling would leave containerd's filesystem with less free space than the reserve.
    #[error("cannot pull {image}: {source}")]
    DiskSpace {
        /// The image as requested.
        image: String,
        /// How much was needed and free.
        #[source]
        source: crate::space::SpaceError,
    },
    /// The image's own documents contradict each other.
    #[error("cannot pull {image}: {problem}")]
    Malformed {
        /// The image as requested.
        image: String,
        /// What is inconsistent.
        problem: String,
    },
}

/// Attempts per blob before the pull fails.
const BLOB_ATTEMPTS: u32 = 5;
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Waiting for another writer of the same blob (containerd's ref lock), whether the lock is met
/// when the ingest opens or mid-stream: it may be a CRI pull of a large layer, so the wait is
/// long, but bounded.
struct BusyWait {
    delay: Duration,
    give_up: Instant,
}

impl BusyWait {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const PATIENCE: Duration = Duration::from_secs(30 * 60);

    fn new() -> BusyWait {
        BusyWait {
            delay: Self::FIRST,
            give_up: Instant::now() + Self::PATIENCE,
        }
    }

    /// Backs off before trying again; `false` once waiting longer is pointless.
    async fn wait(&mut self, blob: &Digest) -> bool {
        if Instant::now() >= self.give_up {
            return false;
        }
        tracing::debug!(%blob, "ingest locked by another writer; waiting");
        tokio::time::sleep(jitter(self.delay)).await;
        self.delay = (self.delay * 2).min(Self::MAX);
        true
    }
}

/// Full jitter: a random delay up to `d`, so many nodes retrying at once spread out.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>().max(0.1))
}

impl PullError {
    /// Whether the same pull may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            PullError::Registry { source, .. } => source.is_retryable(),
            PullError::Store { source, .. } => source.is_retryable(),
            PullError::Unpack { source, .. } => match source {
                crate::unpack::UnpackError::Store { source, .. } => source.is_retryable(),
                crate::unpack::UnpackError::DiffId { .. } => false,
            },
            PullError::NoPlatform { .. }
            | PullError::Malformed { .. }
            | PullError::DiskSpace { .. } => false,
        }
    }

    /// The failure's kind, a bounded label for status, metrics and summaries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PullError::Registry { source, .. } => source.kind(),
            PullError::Store { source, .. } => source.kind(),
            PullError::NoPlatform { .. } => ErrorKind::NoPlatform,
            PullError::Unpack { source, .. } => match source {
                crate::unpack::UnpackError::DiffId { .. } => ErrorKind::Corrupt,
                crate::unpack::UnpackError::Store { source, .. } => source.kind(),
            },
            PullError::Malformed { .. } => ErrorKind::BadManifest,
            PullError::DiskSpace { .. } => ErrorKind::DiskSpace,
        }
    }
}

/// Pulls images into one containerd namespace.
pub struct Puller {
    registry: Arc<RegistryClient>,
    store: Store,
    options: PullOptions,
    downloads: Arc<Semaphore>,
}

#[derive(Default)]
struct Counters {
    fetched: AtomicUsize,
    present: AtomicUsize,
    bytes: AtomicU64,
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

    /// The steady state, cheaply: when every record CRI names the image by already points at
    /// `top` with the labels this pull would write, and (when unpacking) the top layer's
    /// snapshot exists, the image is warm and nothing is written. Records are written last by
    /// a pull and root all of its content for containerd's GC, so their presence means the
    /// content is there; `prepull verify` is what reads it all back. `None` means "do the full
    /// pull", including on any error here.
    async fn already_warm(
        &self,
        reference: &Reference,
        top: &Digest,
        started: Instant,
    ) -> Option<PullReport> {
        let record_ok = |record: Option<StoredImage>| {
            record.is_some_and(|r| {
                r.target.as_ref().is_some_and(|t| &t.digest == top)
                    && labels::has_record_labels(&r.labels, self.options.pin)
            })
        };
        let digest_name = names::digest_name(reference, top);
        if let Target::Tag(_) = reference.target() {
            if !record_ok(self.store.image(&reference.to_string()).await.ok()?) {
                return None;
            }
        }
        if !record_ok(self.store.image(&digest_name).await.ok()?) {
            return None;
        }
        // The config names the ID record and the layers' chain; documents are verified.
        let read = |digest: Digest, limit: u64| async move {
            let bytes = self.store.read_blob(&digest, limit).await.ok()?;
            (Digest::of(digest.algorithm(), &bytes) == digest).then_some(bytes)
        };
        let top_bytes = read(top.clone(), oci::MAX_MANIFEST_BYTES).await?;
        let (manifest, platform) = match Document::parse(&top_bytes, None).ok()? {
            Document::Manifest(m, _) => (m, self.options.platform.clone()),
            Document::Index(index, _) => {
                let (i, platform) = self.choose(&reference.to_string(), &index).ok()?;
                let child =
                    read(index.manifests[i].digest.clone(), oci::MAX_MANIFEST_BYTES).await?;
                match Document::parse(&child, None).ok()? {
                    Document::Manifest(m, _) => (m, platform),
                    Document::Index(..) => return None,
                }
            }
        };
        if !record_ok(
            self.store
                .image(&manifest.config.digest.to_string())
                .await
                .ok()?,
        ) {
            return None;
        }
        if let Some(snapshotter) = self.options.unpack.as_deref() {
            let config = read(manifest.config.digest.clone(), oci::MAX_CONFIG_BYTES).await?;
            let diff_ids = serde_json::from_slice::<oci::Config>(&config)
                .ok()?
                .rootfs
                .diff_ids;
            if let Some(chain_top) = image::chain_ids(&diff_ids).last() {
                if !self
                    .store
                    .snapshot_exists(snapshotter, &chain_top.to_string())
                    .await
                    .ok()?
                {
                    return None;
                }
            }
        }
        tracing::debug!(digest = %top, "already warm");
        Some(PullReport {
            reference: reference.clone(),
            digest: top.clone(),
            config: manifest.config.digest.clone(),
            platform,
            names: names::record_names(reference, top, &manifest.config.digest),
            layers: manifest.layers.len(),
            snapshotter: self.options.unpack.clone(),
            blobs_fetched: 0,
            blobs_present: manifest.layers.len() + 1,
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        })
    }

    /// Claims the space an image needs, or refuses it when that would leave less than the
    /// reserve free. Cheap when space is plentiful (one `statvfs`, every blob counted as
    /// missing); only when it is tight are the blobs containerd already holds looked up and
    /// left out.
    async fn claim_space(
        &self,
        check: &crate::space::SpaceCheck,
        reference: &Reference,
        manifest: &oci::Manifest,
    ) -> Result<crate::space::Claim, PullError> {
        let unpack = self.options.unpack.is_some();
        let blobs: Vec<&Descriptor> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .collect();
        let worst: Vec<u64> = blobs.iter().map(|b| b.size).collect();
        if let Ok(claim) = check.claim(&worst, unpack) {
            return Ok(claim);
        }
        let mut missing = Vec::new();
        for blob in blobs {
            let present = self
                .store
                .info(&blob.digest)
                .await
                .map_err(|source| PullError::Store {
                    image: reference.to_string(),
                    source,
                })?
                .is_some();
            if !present {
                missing.push(blob.size);
            }
        }
        check
            .claim(&missing, unpack)
            .map_err(|source| PullError::DiskSpace {
                image: reference.to_string(),
                source,
            })
    }

    /// A manifest or index by digest: from containerd when it has it (verified again, since
    /// local bytes can rot), else from the registry.
    async fn document(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<FetchedManifest, PullError> {
        let image = reference.to_string();
        let local = match self.store.info(digest).await {
            Ok(Some(_)) => self
                .store
                .read_blob(digest, oci::MAX_MANIFEST_BYTES)
                .await
                .ok(),
            _ => None,
        };
        if let Some(bytes) = local.filter(|b| &Digest::of(digest.algorithm(), b) == digest) {
            if let Ok(document) = Document::parse(&bytes, None) {
                return Ok(FetchedManifest {
                    digest: digest.clone(),
                    bytes: Bytes::from(bytes),
                    document,
                });
            }
        }
        self.registry
            .manifest_by_digest(reference, digest)
            .await
            .map_err(|source| PullError::Registry { image, source })
    }

    /// Checks the config against the manifest and, unless content-only, unpacks each layer as
    /// its blob (and every blob below it) is committed.
    async fn unpack(
        &self,
        image: &str,
        manifest_digest: &Digest,
        manifest: &oci::Manifest,
        lease: &Lease,
        config: oneshot::Receiver<Option<Bytes>>,
        layers: Vec<oneshot::Receiver<()>>,
    ) -> Result<(), PullError> {
        // A closed channel means that fetch failed; its own error is the one reported.
        let Ok(config_bytes) = config.await else {
            return Ok(());
        };
        let Some(snapshotter) = self.options.unpack.as_deref() else {
            return check_config(image, manifest_digest, manifest, config_bytes.as_deref())
                .map(drop);
        };
        let config_bytes = match config_bytes {
            Some(b) => b.to_vec(),
            None => self
                .store
                .read_blob(&manifest.config.digest, oci::MAX_CONFIG_BYTES)
                .await
                .map_err(|source| PullError::Store {
                    image: image.to_string(),
                    source,
                })?,
        };
        let diff_ids = check_config(image, manifest_digest, manifest, Some(&config_bytes))?;
        let chain = image::chain_ids(&diff_ids);
        let unpack_err = |source| PullError::Unpack {
            image: image.to_string(),
            source,
        };
        if let Some(top) = chain.last() {
            // A warm node: the whole chain is there, nothing to unpack.
            let exists = self
                .store
                .snapshot_exists(snapshotter, &top.to_string())
                .await
                .map_err(|source| PullError::Store {
                    image: image.to_string(),
                    source,
                })?;
            if exists {
                return Ok(());
            }
        }
        for (i, done) in layers.into_iter().enumerate() {
            if done.await.is_err() {
                return Ok(());
            }
            unpack::unpack_layer(
                &self.store,
                lease,
                snapshotter,
                &manifest.layers[i],
                &diff_ids[i],
                i.checked_sub(1).map(|p| &chain[p]),
                &chain[i],
            )
            .await
            .map_err(unpack_err)?;
        }
        if let Some(top) = chain.last() {
            self.store
                .set_labels(
                    &manifest.config.digest,
                    labels::snapshot_ref(snapshotter, top),
                )
                .await
                .map_err(|source| PullError::Store {
                    image: image.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    fn choose(&self, image: &str, index: &oci::Index) -> Result<(usize, Platform), PullError> {
        image::choose_manifest(index, &self.options.platform).map_err(|e| PullError::NoPlatform {
            image: image.to_string(),
            platform: e.platform,
            available: e.available,
        })
    }

    /// Fetches the config into memory (it is small and needed to unpack), verified, and commits
    /// it. Returns `None` when containerd already had it.
    async fn fetch_config(
        &self,
        reference: &Reference,
        config: &Descriptor,
        lease: &Lease,
        labels: &HashMap<String, String>,
        counters: &Counters,
    ) -> Result<Option<Bytes>, PullError> {
        let image = reference.to_string();
        if config.size > oci::MAX_CONFIG_BYTES {
            return Err(PullError::Malformed {
                image,
                problem: format!(
                    "config {} claims {} bytes, more than the {} allowed",
                    config.digest,
                    config.size,
                    oci::MAX_CONFIG_BYTES
                ),
            });
        }
        self.write_blob(reference, config, lease, labels.clone(), counters, true)
            .await
    }

    async fn fetch_blob(
        &self,
        reference: &Reference,
        blob: &Descriptor,
        lease: &Lease,
        labels: &HashMap<String, String>,
        counters: &Counters,
    ) -> Result<(), PullError> {
        self.write_blob(reference, blob, lease, labels.clone(), counters, false)
            .await
            .map(drop)
    }

    /// Streams one blob from the registry into containerd. With `keep`, the bytes are also
    /// returned. Transient failures (a dropped connection, a registry 5xx or 429, containerd
    /// restarting, a resumed ingest containerd refuses at commit) are retried with backoff; each
    /// attempt resumes from the ingest's offset, which survives both our and containerd's
    /// restarts.
    async fn write_blob(
        &self,
        reference: &Reference,
        blob: &Descriptor,
        lease: &Lease,
        labels: HashMap<String, String>,
        counters: &Counters,
        keep: bool,
    ) -> Result<Option<Bytes>, PullError> {
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| PullError::Malformed {
                image: reference.to_string(),
                problem: "download limiter closed".into(),
            })?;
        let mut delay = RETRY_FIRST;
        let mut source = std::borrow::Cow::Borrowed(blob);
        let mut busy = BusyWait::new();
        let mut attempt = 1;
        loop {
            match self
                .write_blob_once(reference, &source, lease, labels.clone(), counters, keep)
                .await
            {
                // Another writer took the ingest mid-stream (e.g. a concurrent pull of a blob
                // another namespace already holds): not a failure of this attempt. Its writer
                // finishes, and the blob is then simply present.
                Err(PullError::Store {
                    source: StoreError::Busy { .. },
                    ..
                }) if busy.wait(&blob.digest).await => {}
                // A foreign URL that served bad bytes is not asked again: the registry is.
                Err(PullError::Registry {
                    source: RegistryError::Corrupt { registry, .. },
                    ..
                }) if attempt < BLOB_ATTEMPTS
                    && !source.urls.is_empty()
                    && registry != reference.registry() =>
                {
                    tracing::warn!(blob = %blob.digest, host = %registry, "foreign layer URL served bad bytes; fetching from the registry");
                    let mut from_registry = blob.clone();
                    from_registry.urls.clear();
                    source = std::borrow::Cow::Owned(from_registry);
                    attempt += 1;
                }
                Err(e) if attempt < BLOB_ATTEMPTS && e.is_retryable() => {
                    tracing::warn!(
                        blob = %blob.digest,
                        attempt,
                        error = %crate::error_chain(&e),
                        "blob failed; retrying from where containerd's ingest stands"
                    );
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn write_blob_once(
        &self,
        reference: &Reference,
        blob: &Descriptor,
        lease: &Lease,
        labels: HashMap<String, String>,
        counters: &Counters,
        keep: bool,
    ) -> Result<Option<Bytes>, PullError> {
        let image = reference.to_string();
        let store_err = |source| PullError::Store {
            image: image.clone(),
            source,
        };
        let key = ref_key(&blob.media_type, &blob.digest);
        let mut writer = match self
            .store
            .open_writer(lease, &key, &blob.digest, blob.size)
            .await
            .map_err(store_err)?
        {
            Opened::Present => {
                counters.present.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            Opened::Writer(w) => w,
        };
        // An ingest left by an interrupted pull resumes where its bytes stop. A kept blob is
        // wanted whole in memory, so it starts over.
        if keep {
            writer.restart();
        }
        let (mut body, start) = self
            .registry
            .blob(reference, blob, writer.offset())
            .await
            .map_err(|source| PullError::Registry {
                image: image.clone(),
                source,
            })?;
        if start != writer.offset() {
            writer.restart();
        }
        if start > 0 {
            tracing::info!(blob = %blob.digest, offset = start, "resuming download");
        }
        let mut kept = keep.then(|| Vec::with_capacity(blob.size as usize));
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(source) => {
                    // Bad bytes must never be resumed; a broken connection's good prefix is
                    // kept in the ingest for the next attempt.
                    let ended = if matches!(source, RegistryError::Corrupt { .. }) {
                        writer.abort().await
                    } else {
                        writer.suspend().await
                    };
                    if let Err(e) = ended {
                        tracing::warn!(error = %e, blob = %blob.digest, "could not close the ingest");
                    }
                    return Err(PullError::Registry { image, source });
                }
            };
            counters
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&chunk);
            }
            writer.write(&chunk).await.map_err(store_err)?;
        }
        writer.commit(labels).await.map_err(store_err)?;
        counters.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(kept.map(Bytes::from))
    }

    /// Commits a manifest or index from memory with its labels; if containerd has it already,
    /// makes sure the labels are there.
    async fn put_document(
        &self,
        lease: &Lease,
        doc: &FetchedManifest,
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut busy = BusyWait::new();
        loop {
            match self.put_document_once(lease, doc, labels.clone()).await {
                // Another writer holds the ref (a concurrent pull of an image sharing this
                // document): once it is done, the document is present.
                Err(StoreError::Busy { .. }) if busy.wait(&doc.digest).await => {}
                other => return other,
            }
        }
    }

    async fn put_document_once(
        &self,
        lease: &Lease,
        doc: &FetchedManifest,
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let key = ref_key(doc.media_type(), &doc.digest);
        let size = doc.bytes.len() as u64;
        match self
            .store
            .open_writer(lease, &key, &doc.digest, size)
            .await?
        {
            Opened::Present => self.store.set_labels(&doc.digest, labels).await,
            Opened::Writer(mut w) => {
                w.restart();
                w.write(&doc.bytes).await?;
                w.commit(labels).await
            }
        }
    }
}

/// The config must list one diff ID per layer, or the image cannot be unpacked or run.
/// Returns the diff IDs (empty when the config was not at hand).
fn check_config(
    image: &str,
    manifest_digest: &Digest,
    manifest: &oci::Manifest,
    config: Option<&[u8]>,
) -> Result<Vec<Digest>, PullError> {
    let Some(bytes) = config else {
        return Ok(Vec::new());
    };
    image::diff_ids(manifest_digest, manifest, bytes).map_err(|e| PullError::Malformed {
        image: image.to_string(),
        problem: e.to_string(),
    })
}
