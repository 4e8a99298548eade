//! The warm shortcut: an image whose records, documents and snapshots the node already holds is
//! reported without a write, and without the network beyond the tag's `HEAD`.

use std::time::Instant;

use super::{PullReport, Puller};
use crate::digest::Digest;
use crate::image::{labels, names};
use crate::platform::Platform;
use crate::reference::{Reference, Target};
use crate::store::{ImageRecord, Store, StoreError};

/// What "the node holds this image, complete" means, found without the network: the records CRI
/// names the image by point at one top document with the labels a pull writes, the documents
/// and config are readable and verified, and (when unpacking) the top layer's snapshot exists.
/// Records are written last by a pull and root all of its content for containerd's GC, so their
/// presence means the content is there; `prepull verify` is what reads it all back.
pub struct OnNode<'a> {
    /// containerd, in the namespace CRI uses.
    pub store: &'a Store,
    /// The platform whose manifest the node runs.
    pub platform: &'a Platform,
    /// The snapshotter layers must be unpacked in, if any.
    pub snapshotter: Option<&'a str>,
    /// Whether the records must carry the CRI pin too.
    pub pinned: bool,
}

impl OnNode<'_> {
    /// The complete image the node holds under `reference`, if any.
    pub async fn find(&self, reference: &Reference) -> Option<PullReport> {
        let record = self.store.image(&reference.to_string()).await.ok()??;
        let top = record.target?.digest;
        self.at(reference, &top, Instant::now()).await
    }

    /// Writes the records of the image `reference` names that are missing (a pull stopped
    /// while writing them), each pointing where the record of `reference` points and labelled
    /// as it is, without the network. Nothing is written unless that record is there, marks an
    /// image CRI manages, and the documents it points at are readable. Returns the names written.
    pub async fn mend_records(&self, reference: &Reference) -> Result<Vec<String>, StoreError> {
        // Only images CRI manages have (and need) all three records.
        let Some(record) = self
            .store
            .image(&reference.to_string())
            .await?
            .filter(|r| r.labels.contains_key(labels::CRI_MANAGED))
        else {
            return Ok(Vec::new());
        };
        let Some(target) = record.target else {
            return Ok(Vec::new());
        };
        let Ok(chosen) = self.store.manifest_for(&target.digest, self.platform).await else {
            return Ok(Vec::new());
        };
        let config = &chosen.manifest.config.digest;
        let mut written = Vec::new();
        for name in names::record_names(reference, &target.digest, config) {
            if self.store.image(&name).await?.is_some() {
                continue;
            }
            let missing = ImageRecord {
                name,
                target: target.clone(),
                labels: record.labels.clone(),
            };
            self.store.put_image(&missing).await?;
            written.push(missing.name);
        }
        Ok(written)
    }

    /// The image `reference` names at `top`, if the node holds it complete.
    async fn at(
        &self,
        reference: &Reference,
        top: &Digest,
        started: Instant,
    ) -> Option<PullReport> {
        let records_ok = |names: Vec<String>| async move {
            for name in names {
                let record = self.store.image(&name).await.ok()?;
                if !record.is_some_and(|r| {
                    r.target.as_ref().is_some_and(|t| &t.digest == top)
                        && labels::has_record_labels(&r.labels, self.pinned)
                }) {
                    return None;
                }
            }
            Some(())
        };
        // The tag and digest records first: they need no document read.
        let mut by_reference = vec![names::digest_name(reference, top)];
        if let Target::Tag(_) = reference.target() {
            by_reference.insert(0, reference.to_string());
        }
        records_ok(by_reference).await?;
        // The config names the ID record and the layers' chain.
        let chosen = self.store.manifest_for(top, self.platform).await.ok()?;
        let manifest = &chosen.manifest;
        records_ok(vec![manifest.config.digest.to_string()]).await?;
        if let Some(snapshotter) = self.snapshotter {
            let chain = self.store.chain_ids(&chosen.digest, manifest).await.ok()?;
            if let Some(chain_top) = chain.last().map(Digest::to_string) {
                let exists = self.store.snapshot_exists(snapshotter, &chain_top);
                if !exists.await.ok()? {
                    return None;
                }
            }
        }
        Some(PullReport {
            reference: reference.clone(),
            digest: top.clone(),
            config: manifest.config.digest.clone(),
            platform: chosen.platform.clone(),
            names: names::record_names(reference, top, &manifest.config.digest),
            layers: manifest.layers.len(),
            size: manifest.content_size(),
            snapshotter: self.snapshotter.map(str::to_string),
            blobs_fetched: 0,
            blobs_present: manifest.layers.len() + 1,
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        })
    }
}

impl Puller {
    /// What this puller holds for an image on the node.
    pub(super) fn on_node_check(&self) -> OnNode<'_> {
        OnNode {
            store: &self.store,
            platform: &self.options.platform,
            snapshotter: self.options.unpack.as_deref(),
            pinned: self.options.pin,
        }
    }

    /// The steady state, cheaply: when the node already holds the image `reference` resolved
    /// to (`top`) with the labels this pull would write, it is warm and nothing is written.
    /// `None` means "do the full pull", including on any error here.
    pub(super) async fn already_warm(
        &self,
        reference: &Reference,
        top: &Digest,
        started: Instant,
    ) -> Option<PullReport> {
        let warm = self.on_node_check().at(reference, top, started).await;
        if warm.is_some() {
            tracing::debug!(digest = %top, "already warm");
        }
        warm
    }
}
