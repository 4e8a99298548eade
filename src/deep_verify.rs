//! The deep check run against containerd: for each unpacked image, the layer directories found
//! through read-only views of its snapshots, the layer blobs read from the content store, and
//! [`crate::deep`] comparing the two.
//!
//! Directories are never guessed: a view of the image's top snapshot (and, for `native`, of each
//! snapshot below it) is made under a lease, its mounts name the directories, and the views are
//! removed when the check ends, however it ends; the lease expires should the process die first.
//!
//! Asked to ([`DeepVerifier::check_and_hash`]), it also hashes each layer blob as it streams by,
//! so that `verify --deep` reads every layer once, not once to hash it and again to compare it.

use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::deep::{self, Context, DeepError, Finding, LayerId, MergedTree};
use crate::digest::{Digest, Hasher};
use crate::image;
use crate::oci::Descriptor;
use crate::store::{Lease, SnapshotView, Store, StoreError, Stored, ViewDirs};

/// How long the views' lease outlives a check that dies without removing them.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// Chunks of a blob read ahead of the comparison, at most (containerd sends 1 MiB chunks).
const READ_AHEAD: usize = 4;

/// An image's manifest whose layers are unpacked: what the deep check compares.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// The platform manifest.
    pub manifest: Digest,
    /// Its layers, base first.
    pub layers: Vec<Descriptor>,
    /// Their diff IDs, from the config.
    pub diff_ids: Vec<Digest>,
    /// How its process runs, from the config (for the start check), when it says.
    pub process: Option<crate::oci::ImageConfig>,
    /// The architecture its config names.
    pub architecture: Option<String>,
}

/// Why an image's snapshots could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum DeepVerifyError {
    /// containerd failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer could not be read as one.
    #[error(transparent)]
    Deep(#[from] DeepError),
    /// The view's directories do not match the image's layers.
    #[error("the {snapshotter} view of snapshot {chain_id} shows {dirs} directories for an image of {layers} layers")]
    Layout {
        /// The snapshotter.
        snapshotter: String,
        /// The top snapshot.
        chain_id: Digest,
        /// Directories the mounts named.
        dirs: usize,
        /// Layers of the image.
        layers: usize,
    },
    /// The comparison's thread ended abnormally.
    #[error("the comparison of layer {index} stopped abnormally: {why}")]
    Task {
        /// The layer.
        index: usize,
        /// What the runtime said.
        why: String,
    },
}

impl DeepVerifyError {
    /// Whether the check was cancelled rather than failed.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, DeepVerifyError::Deep(DeepError::Cancelled))
    }
}

/// What comparing one image's snapshots with its layers found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeepReport {
    /// Layers compared.
    pub layers: usize,
    /// Differences, at most [`deep::MAX_FINDINGS`] per layer (overlayfs) or image (native).
    pub findings: Vec<Finding>,
    /// Differences found beyond those kept.
    pub findings_omitted: usize,
    /// The layer blobs read to their end and hashed as they streamed by, when asked
    /// ([`DeepVerifier::check_and_hash`]).
    #[serde(skip)]
    pub blobs: Vec<(Digest, Stored)>,
}

impl DeepReport {
    /// Whether the snapshots match their layers.
    pub fn is_sound(&self) -> bool {
        self.findings.is_empty() && self.findings_omitted == 0
    }

    /// Adds what `other` found (another platform manifest of the same image).
    pub fn absorb(&mut self, other: DeepReport) {
        self.layers += other.layers;
        self.findings.extend(other.findings);
        self.findings_omitted += other.findings_omitted;
        self.blobs.extend(other.blobs);
    }

    /// The lowest layer with a finding: every snapshot from its chain ID up must be unpacked
    /// again.
    pub fn lowest_damaged(&self) -> Option<&LayerId> {
        self.findings
            .iter()
            .map(|f| &f.layer)
            .min_by_key(|l| l.index)
    }
}

/// Runs deep checks on one containerd: one lease for every view it makes.
pub struct DeepVerifier<'a> {
    store: &'a Store,
    snapshotter: String,
    concurrency: NonZeroUsize,
    ctx: Context,
    lease: Lease,
}

impl<'a> DeepVerifier<'a> {
    /// Takes the lease the views are made under.
    pub async fn new(
        store: &'a Store,
        snapshotter: &str,
        concurrency: NonZeroUsize,
        ctx: Context,
    ) -> Result<DeepVerifier<'a>, StoreError> {
        let lease = store.create_lease("deep-verify", LEASE_EXPIRY).await?;
        Ok(DeepVerifier {
            store,
            snapshotter: snapshotter.to_string(),
            concurrency,
            ctx,
            lease,
        })
    }

    /// Deletes the lease (the views are gone already).
    pub async fn close(self) {
        if let Err(e) = self.store.delete_lease(self.lease).await {
            tracing::warn!(error = %e, "cannot delete the deep check's lease; it expires by itself");
        }
    }

    /// Compares the snapshots of `image` with its layers.
    pub async fn check(&self, image: &Unpacked) -> Result<DeepReport, DeepVerifyError> {
        self.check_hashing(image, false).await
    }

    /// Compares the snapshots of `image` with its layers, and hashes each layer blob as it
    /// reads it ([`DeepReport::blobs`]). A check that fails may leave blobs unread.
    pub async fn check_and_hash(&self, image: &Unpacked) -> Result<DeepReport, DeepVerifyError> {
        self.check_hashing(image, true).await
    }

    async fn check_hashing(
        &self,
        image: &Unpacked,
        hash: bool,
    ) -> Result<DeepReport, DeepVerifyError> {
        let chain = image::chain_ids(&image.diff_ids);
        let Some(top) = chain.last() else {
            return Ok(DeepReport::default());
        };
        let layers: Vec<LayerId> = image
            .layers
            .iter()
            .zip(&chain)
            .enumerate()
            .map(|(index, (d, c))| LayerId {
                index,
                digest: d.digest.clone(),
                chain_id: c.clone(),
            })
            .collect();
        let mut views = Vec::new();
        let result = self
            .check_with_views(image, top, &layers, hash, &mut views)
            .await;
        for view in views {
            if let Err(e) = self.store.release_view(view).await {
                tracing::warn!(error = %e, "cannot remove a deep check view; its lease removes it");
            }
        }
        result
    }

    async fn check_with_views(
        &self,
        image: &Unpacked,
        top: &Digest,
        layers: &[LayerId],
        hash: bool,
        views: &mut Vec<SnapshotView>,
    ) -> Result<DeepReport, DeepVerifyError> {
        let view = self.view(top, views).await?;
        match view {
            ViewDirs::Layers(dirs) if dirs.len() == layers.len() => {
                self.per_layer(image, layers, dirs, hash).await
            }
            ViewDirs::Bind(dir) if layers.len() == 1 => {
                self.per_layer(image, layers, vec![dir], hash).await
            }
            ViewDirs::Bind(top_dir) => {
                let mut below = Vec::new();
                for layer in &layers[..layers.len() - 1] {
                    match self.view(&layer.chain_id, views).await? {
                        ViewDirs::Bind(dir) => below.push(dir),
                        ViewDirs::Layers(dirs) => {
                            return Err(self.layout_error(&layer.chain_id, dirs.len(), 1))
                        }
                    }
                }
                self.merged(image, layers, below, top_dir, hash).await
            }
            ViewDirs::Layers(dirs) => Err(self.layout_error(top, dirs.len(), layers.len())),
        }
    }

    async fn view(
        &self,
        chain_id: &Digest,
        views: &mut Vec<SnapshotView>,
    ) -> Result<ViewDirs, StoreError> {
        let view = self
            .store
            .view_snapshot(&self.lease, &self.snapshotter, &chain_id.to_string())
            .await?;
        let dirs = view.dirs.clone();
        views.push(view);
        Ok(dirs)
    }

    fn layout_error(&self, chain_id: &Digest, dirs: usize, layers: usize) -> DeepVerifyError {
        DeepVerifyError::Layout {
            snapshotter: self.snapshotter.clone(),
            chain_id: chain_id.clone(),
            dirs,
            layers,
        }
    }

    /// Each layer against its own directory, a few layers at a time.
    async fn per_layer(
        &self,
        image: &Unpacked,
        layers: &[LayerId],
        dirs: Vec<PathBuf>,
        hash: bool,
    ) -> Result<DeepReport, DeepVerifyError> {
        // Collected first: a lazy iterator's closure held across the awaits below would keep
        // this future from being sendable to a task of its own (the agent's deep check).
        let jobs: Vec<_> = layers
            .iter()
            .zip(dirs)
            .map(|(layer, dir)| {
                let layer = layer.clone();
                let diff_id = image.diff_ids[layer.index].clone();
                let ctx = self.ctx.clone();
                let mut blob = BlobReader::open(self.store, &layer.digest, &ctx, hash);
                async move {
                    let index = layer.index;
                    let (found, read) = tokio::task::spawn_blocking(move || {
                        let found = deep::check_layer(&layer, &diff_id, &mut blob, &dir, &ctx);
                        (found, blob.finish(&ctx).map(|read| (layer.digest, read)))
                    })
                    .await
                    .map_err(|e| DeepVerifyError::Task {
                        index,
                        why: e.to_string(),
                    })?;
                    Ok::<_, DeepVerifyError>((found?, read))
                }
            })
            .collect();
        let results: Vec<_> = stream::iter(jobs)
            .buffered(self.concurrency.get())
            .collect()
            .await;
        let mut report = DeepReport::default();
        for result in results {
            let (findings, read) = result?;
            let (findings, omitted) = findings.into_parts();
            report.layers += 1;
            report.findings.extend(findings);
            report.findings_omitted += omitted;
            report.blobs.extend(read);
        }
        Ok(report)
    }

    /// The top snapshot against every layer merged, and the snapshots below for presence.
    async fn merged(
        &self,
        image: &Unpacked,
        layers: &[LayerId],
        below: Vec<PathBuf>,
        top: PathBuf,
        hash: bool,
    ) -> Result<DeepReport, DeepVerifyError> {
        let ctx = self.ctx.clone();
        let layers = layers.to_vec();
        let diff_ids = image.diff_ids.clone();
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        let count = layers.len();
        let (findings, omitted, blobs) = tokio::task::spawn_blocking(move || {
            let _runtime = handle.enter();
            let mut tree = MergedTree::new(&top);
            let mut findings = deep::Findings::new(ctx.max_findings);
            let mut blobs = Vec::new();
            for (layer, diff_id) in layers.iter().zip(&diff_ids) {
                let mut blob = BlobReader::open(&store, &layer.digest, &ctx, hash);
                let applied = tree.apply(layer, diff_id, &mut blob, &ctx);
                blobs.extend(blob.finish(&ctx).map(|read| (layer.digest.clone(), read)));
                applied?;
                if let Some(dir) = below.get(layer.index) {
                    let (found, _) = deep::check_present(layer, dir, !tree.is_empty()).into_parts();
                    for f in found {
                        findings.push(0, f);
                    }
                }
            }
            let (top_findings, omitted) = deep::check_merged(&mut tree, &ctx)?.into_parts();
            let (mut all, mut more) = findings.into_parts();
            all.extend(top_findings);
            more += omitted;
            Ok::<_, DeepError>((all, more, blobs))
        })
        .await
        .map_err(|e| DeepVerifyError::Task {
            index: count.saturating_sub(1),
            why: e.to_string(),
        })??;
        Ok(DeepReport {
            layers: count,
            findings,
            findings_omitted: omitted,
            blobs,
        })
    }
}

/// A layer blob from containerd's content store as a blocking reader: a task reads the gRPC
/// stream a few chunks ahead (hashing it, when asked); the comparison's thread reads from it.
struct BlobReader {
    chunks: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    /// Counts the bytes read, for a progress display.
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether the blob is hashed.
    hash: bool,
    /// What the blob hashed to, once the task read it to its end.
    hashed: Arc<OnceLock<Stored>>,
}

impl BlobReader {
    /// Starts reading `digest`, hashing it when `hash` (call within the runtime).
    fn open(store: &Store, digest: &Digest, ctx: &Context, hash: bool) -> BlobReader {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let (store, digest, cancel) = (store.clone(), digest.clone(), ctx.cancel.clone());
        let hashed = Arc::new(OnceLock::new());
        let done = hashed.clone();
        tokio::spawn(async move {
            let mut hasher = hash.then(|| (Hasher::new(digest.algorithm()), 0u64));
            let mut chunks = match store.read_chunks(&digest).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            };
            loop {
                let next = tokio::select! {
                    n = chunks.next() => n,
                    () = cancel.cancelled() => return,
                };
                let item = match next {
                    Ok(Some(chunk)) => {
                        if let Some((hasher, size)) = &mut hasher {
                            hasher.update(&chunk);
                            *size += chunk.len() as u64;
                        }
                        Ok(chunk)
                    }
                    Ok(None) => {
                        if let Some((hasher, size)) = hasher {
                            let _ = done.set(Stored::Read {
                                digest: hasher.finish(),
                                size,
                            });
                        }
                        return;
                    }
                    Err(e) => Err(io::Error::other(e)),
                };
                let failed = item.is_err();
                // The reader went away (the comparison ended early): stop reading.
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        BlobReader {
            chunks: rx,
            current: Vec::new(),
            at: 0,
            read: ctx.layer_bytes_read.clone(),
            hash,
            hashed,
        }
    }

    /// When hashing: reads what the comparison left of the blob (at the check's rate) and
    /// returns what the whole blob hashed to; `None` when reading it failed or was cancelled.
    fn finish(mut self, ctx: &Context) -> Option<Stored> {
        if !self.hash || ctx.cancel.is_cancelled() {
            return None;
        }
        loop {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => ctx.pace(chunk.len()),
                Some(Err(_)) => return None,
                None => return self.hashed.get().cloned(),
            }
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}
