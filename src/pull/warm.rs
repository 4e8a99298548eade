//! The warm shortcut: an image whose records, documents and snapshots the node already holds is
//! reported without a write, and without the network beyond the tag's `HEAD`.

use std::time::Instant;

use super::{PullReport, Puller};
use crate::digest::Digest;
use crate::image::{labels, names};
use crate::reference::{Reference, Target};

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
        let records_ok = |names: Vec<String>| async move {
            for name in names {
                let record = self.store.image(&name).await.ok()?;
                if !record.is_some_and(|r| {
                    r.target.as_ref().is_some_and(|t| &t.digest == top)
                        && labels::has_record_labels(&r.labels, self.options.pin)
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
        let chosen = self
            .store
            .manifest_for(top, &self.options.platform)
            .await
            .ok()?;
        let manifest = &chosen.manifest;
        records_ok(vec![manifest.config.digest.to_string()]).await?;
        if let Some(snapshotter) = self.options.unpack.as_deref() {
            let chain = self.store.chain_ids(&chosen.digest, manifest).await.ok()?;
            if let Some(chain_top) = chain.last().map(Digest::to_string) {
                let exists = self.store.snapshot_exists(snapshotter, &chain_top);
                if !exists.await.ok()? {
                    return None;
                }
            }
        }
        tracing::debug!(digest = %top, "already warm");
        Some(PullReport {
            reference: reference.clone(),
            digest: top.clone(),
            config: manifest.config.digest.clone(),
            platform: chosen.platform.clone(),
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
