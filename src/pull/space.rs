//! Claiming the free space an image needs before anything is written.

use super::{PullError, Puller};
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use crate::space::{Claim, SpaceCheck};

impl Puller {
    /// Claims the space an image needs, or refuses it when that would leave less than the
    /// reserve free. Cheap when space is plentiful (one `statvfs`, every blob counted as
    /// missing); only when it is tight are the blobs containerd already holds looked up and
    /// left out.
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
        for blob in blobs {
            let present = self
                .store
                .info(&blob.digest)
                .await
                .map_err(PullError::store(reference))?
                .is_some();
            if !present {
                missing.push(blob.size);
            }
        }
        check.claim(&missing, unpack).map_err(|source| {
            crate::metrics::metrics().space_refused();
            PullError::DiskSpace {
                image: reference.to_string(),
                source,
            }
        })
    }
}
