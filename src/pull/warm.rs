//! The warm shortcut: an image whose records, documents and snapshots the node already holds is
//! reported without a write, and without the network beyond the tag's `HEAD`.

use std::time::Instant;

use super::{PullReport, Puller};
use crate::digest::Digest;
use crate::image::{self, labels, names};
use crate::oci::{self, Document};
use crate::reference::{Reference, Target};
use crate::store::StoredImage;

impl Puller {
    /// The steady state, cheaply: when every record CRI names the image by already points at
    /// `top` with the labels this pull would write, and (when unpacking) the top layer's
    /// snapshot exists, the image is warm and nothing is written. Records are written last by
    /// a pull and root all of its content for containerd's GC, so their presence means the
    /// content is there; `prepull verify` is what reads it all back. `None` means "do the full
    /// pull", including on any error here.
    pub(super) async fn already_warm(
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
}
