//! Fetching blobs: each streamed from the registry into a containerd ingest, verified before it
//! is committed, resumed from the ingest's offset after a failure, and retried a bounded number
//! of times in a row without progress; a blob another writer holds is waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{PullError, PullProgress, Puller};
use crate::digest::{Digest, VerifyError};
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use crate::registry::{BlobCheck, OpenedBlob, RegistryError};
use crate::retry;
use crate::store::{ref_key, ContentWriter, Lease, Opened, StoreError};

/// Waiting for another writer of the same blob (containerd's ref lock), whether the lock is met
/// when the ingest opens or mid-stream: it may be a CRI pull of a large layer, so the wait is
/// long, but bounded.
pub(super) struct BusyWait {
    attempts: retry::Attempts,
    give_up: Instant,
}

impl BusyWait {
    pub(super) fn new() -> BusyWait {
        BusyWait {
            attempts: retry::INGEST_LOCK.start(),
            give_up: Instant::now() + retry::INGEST_LOCK_PATIENCE,
        }
    }

    /// Backs off before trying again; `false` once waiting longer is pointless.
    pub(super) async fn wait(&mut self, blob: &Digest) -> bool {
        if Instant::now() >= self.give_up {
            return false;
        }
        let Some(delay) = self.attempts.next_delay() else {
            return false;
        };
        tracing::debug!(%blob, "ingest locked by another writer; waiting");
        tokio::time::sleep(delay).await;
        true
    }
}

/// What every blob write of one pull shares: the image, the lease that protects what is written
/// until the records root it, the labels each blob is committed with, and the counts reported.
pub(super) struct Fetch<'a> {
    pub(super) reference: &'a Reference,
    pub(super) lease: &'a Lease,
    pub(super) labels: &'a HashMap<String, String>,
    pub(super) counters: &'a Counters,
}

/// What a pull fetched, counted across its concurrent blob writes.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) fetched: AtomicUsize,
    pub(super) present: AtomicUsize,
    pub(super) bytes: AtomicU64,
    /// Layers this pull unpacked (not those it found unpacked).
    pub(super) unpacked: AtomicUsize,
    /// What a progress display reads.
    pub(super) progress: Arc<PullProgress>,
    /// With `--fetcher containerd`: what containerd's fetch had brought of each layer (bytes,
    /// committed) when the pull last looked.
    pub(super) transferred: std::sync::Mutex<HashMap<Digest, (u64, bool)>>,
}

impl Counters {
    /// Where the pull stands, coarsely: blobs committed, layers unpacked, and the bytes
    /// downloaded in steps of [`retry::BLOB_PROGRESS`]. It changes only when the pull moves on.
    pub(super) fn milestones(&self) -> (usize, usize, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.unpacked.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed) / retry::BLOB_PROGRESS,
        )
    }
}

impl Puller {
    /// Fetches the config into memory (it is small and needed to unpack), verified, and commits
    /// it. Returns `None` when containerd already had it.
    pub(super) async fn fetch_config(
        &self,
        fetch: &Fetch<'_>,
        config: &Descriptor,
    ) -> Result<Option<Bytes>, PullError> {
        if config.size > oci::MAX_CONFIG_BYTES {
            return Err(PullError::Malformed {
                image: fetch.reference.to_string(),
                problem: format!(
                    "config {} claims {} bytes, more than the {} allowed",
                    config.digest,
                    config.size,
                    oci::MAX_CONFIG_BYTES
                ),
            });
        }
        self.write_blob(fetch, config, true).await
    }

    /// Fetches a layer and commits it.
    pub(super) async fn fetch_blob(
        &self,
        fetch: &Fetch<'_>,
        blob: &Descriptor,
    ) -> Result<(), PullError> {
        self.write_blob(fetch, blob, false).await.map(drop)
    }

    /// Streams one blob from the registry into containerd. With `keep`, the bytes are also
    /// returned. Transient failures (a dropped connection, a registry 5xx or 429, containerd
    /// restarting, a resumed ingest containerd refuses at commit) are retried with backoff; each
    /// attempt resumes from the ingest's offset, which survives both our and containerd's
    /// restarts.
    async fn write_blob(
        &self,
        fetch: &Fetch<'_>,
        blob: &Descriptor,
        keep: bool,
    ) -> Result<Option<Bytes>, PullError> {
        let reference = fetch.reference;
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| PullError::Malformed {
                image: reference.to_string(),
                problem: "download limiter closed".into(),
            })?;
        let mut attempts = retry::BLOB.start();
        let mut source = std::borrow::Cow::Borrowed(blob);
        let mut busy = BusyWait::new();
        // The furthest an attempt found the ingest when it opened it.
        let mut furthest = 0;
        loop {
            let mut opened_at = 0;
            let attempt = self
                .write_blob_once(fetch, &source, keep, &mut opened_at)
                .await;
            // The attempt before this one moved the ingest on: it was progress, not a failure,
            // and the attempts are counted afresh (see `retry::BLOB_PROGRESS`).
            if opened_at >= furthest + retry::BLOB_PROGRESS {
                attempts = retry::BLOB.start();
            }
            furthest = furthest.max(opened_at);
            match attempt {
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
                }) if !attempts.is_last()
                    && !source.urls.is_empty()
                    && registry != reference.registry() =>
                {
                    tracing::warn!(blob = %blob.digest, host = %registry, "foreign layer URL served bad bytes; fetching from the registry");
                    let mut from_registry = blob.clone();
                    from_registry.urls.clear();
                    source = std::borrow::Cow::Owned(from_registry);
                    // The registry is asked at once: the URL failed, not the registry.
                    let _ = attempts.next_delay();
                }
                Err(e) if !attempts.is_last() && e.is_retryable() => {
                    tracing::warn!(
                        blob = %blob.digest,
                        attempt = attempts.number(),
                        error = %crate::error_chain(&e),
                        "blob failed; retrying from where containerd's ingest stands"
                    );
                    if let Some(delay) = attempts.next_delay() {
                        tokio::time::sleep(delay).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// One attempt: opens the blob's ingest (resuming what an earlier attempt left), streams the
    /// rest from the registry and commits it. `None` (or the bytes, with `keep`) when done.
    /// `opened_at` is set to where the attempt resumes the ingest from (0 when it starts over).
    async fn write_blob_once(
        &self,
        fetch: &Fetch<'_>,
        blob: &Descriptor,
        keep: bool,
        opened_at: &mut u64,
    ) -> Result<Option<Bytes>, PullError> {
        let store_err = PullError::store(fetch.reference);
        let key = ref_key(&blob.media_type, &blob.digest);
        let mut writer = match self
            .store
            .open_writer(fetch.lease, &key, &blob.digest, blob.size)
            .await
            .map_err(&store_err)?
        {
            Opened::Present => {
                fetch.counters.present.fetch_add(1, Ordering::Relaxed);
                fetch.counters.progress.advance(blob.size);
                return Ok(None);
            }
            Opened::Writer(w) => w,
        };
        // An ingest left by an interrupted pull resumes where its bytes stop. A kept blob is
        // wanted whole in memory, so it starts over.
        if keep {
            writer.restart();
        }
        *opened_at = writer.offset();
        // A kept blob is used from memory, so it is hashed here; the others are hashed once, by
        // containerd as it stores them (its commit refuses any other digest).
        let check = if keep {
            BlobCheck::Digest
        } else {
            BlobCheck::SizeOnly
        };
        let opened = match self
            .registry
            .blob(fetch.reference, blob, writer.offset(), check)
            .await
        {
            // The ingest holds as many bytes as the registry has (a blob served short, left
            // by another writer such as containerd's own fetch): nothing to resume, so the
            // blob is fetched whole, and its length judged as it streams.
            Err(RegistryError::Status { status: 416, .. }) if writer.offset() > 0 => {
                writer.restart();
                self.registry.blob(fetch.reference, blob, 0, check).await
            }
            other => other,
        }
        .map_err(PullError::registry(fetch.reference))?;
        if opened.start != writer.offset() {
            writer.restart();
            *opened_at = 0;
        }
        if opened.start > 0 {
            tracing::info!(blob = %blob.digest, offset = opened.start, "resuming download");
        }
        let kept = copy_body(fetch, blob, opened, writer, keep).await?;
        fetch.counters.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(kept.map(Bytes::from))
    }
}

/// Streams the opened blob into `writer` and commits it, keeping a copy in memory with `keep`.
/// A failed stream leaves the ingest for the next attempt, unless its bytes were bad: bad
/// bytes found by containerd at commit are the serving host's fault, reported as such.
async fn copy_body(
    fetch: &Fetch<'_>,
    blob: &Descriptor,
    opened: OpenedBlob,
    mut writer: Box<ContentWriter>,
    keep: bool,
) -> Result<Option<Vec<u8>>, PullError> {
    let OpenedBlob { mut body, host, .. } = opened;
    let store_err = PullError::store(fetch.reference);
    let mut kept = keep.then(|| Vec::with_capacity(blob.size as usize));
    let downloaded = crate::metrics::metrics().downloaded_from(fetch.reference.registry());
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
                return Err(PullError::registry(fetch.reference)(source));
            }
        };
        fetch
            .counters
            .bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        fetch.counters.progress.advance(chunk.len() as u64);
        fetch.counters.progress.downloaded(chunk.len() as u64);
        downloaded.inc_by(chunk.len() as u64);
        if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&chunk);
        }
        writer.write(&chunk).await.map_err(&store_err)?;
    }
    match writer.commit(fetch.labels.clone()).await {
        Ok(()) => Ok(kept),
        // containerd hashed the bytes and refused them (it aborted the ingest): the host sent
        // something else than the blob.
        Err(StoreError::Mismatch { message, .. }) => Err(PullError::registry(fetch.reference)(
            RegistryError::Corrupt {
                registry: host,
                repository: fetch.reference.repository().to_string(),
                what: format!("blob {}", blob.digest),
                source: VerifyError::refused_by_store(&blob.digest, &message),
            },
        )),
        Err(e) => Err(store_err(e)),
    }
}
