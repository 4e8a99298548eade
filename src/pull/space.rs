//! Claiming the free space an image needs before anything is written.

use super::{PullError, Puller};
use crate::image::labels;
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use crate::space::{Claim, Need, SpaceCheck};

impl Puller {
    /// Claims the space an image needs, or refuses it when that would leave less than the
    /// reserve free. Cheap when space is plentiful (one `statvfs`, every blob counted as
    /// missing and unpacked); only when it is tight are the blobs containerd already holds looked
    /// up and left out, all but the unpacking still to do of layers never applied.
    /// `None` when no free-space check is asked for.
    pub(super) async fn claim_space(
        &self,
        reference: &Reference,
        manifest: &oci::Manifest,
    ) -> Result<Option<Claim>, PullError> {
        match &self.options.space {
            Some(check) => self.claim(check, reference, manifest).await.map(Some),
            None => Ok(None),
        }
    }

    async fn claim(
        &self,
        check: &SpaceCheck,
        reference: &Reference,
        manifest: &oci::Manifest,
    ) -> Result<Claim, PullError> {
        let unpack = self.options.unpack.is_some();
        let blobs: Vec<&Descriptor> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .collect();
        let worst: Vec<u64> = blobs.iter().map(|b| b.size).collect();
        if let Ok(claim) = check.claim(&worst, unpack) {
            return Ok(claim);
        }
        let mut missing = Vec::new();
        let mut unpack_present = 0u64;
        for (i, blob) in blobs.into_iter().enumerate() {
            let info = self
                .store
                .info(&blob.digest)
                .await
                .map_err(PullError::store(reference))?;
            match info {
                None => missing.push(blob.size),
                // A layer (the config comes first) held but never applied: its unpack is still
                // to be written (see `crate::space`).
                Some(info)
                    if unpack && i > 0 && !info.labels.contains_key(labels::UNCOMPRESSED) =>
                {
                    unpack_present = unpack_present.saturating_add(blob.size)
                }
                Some(_) => {}
            }
        }
        let mut need = Need::blobs(&missing, unpack);
        need.unpack_present(unpack_present);
        check.claim_need(need).map_err(|source| {
            crate::metrics::metrics().space_refused();
            PullError::DiskSpace {
                image: reference.to_string(),
                source,
            }
        })
    }
}
