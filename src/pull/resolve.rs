//! From the top document to the manifest this node pulls: documents read from containerd when it
//! holds them, else from the registry; the platform chosen from an index; the config checked
//! against the manifest.

use bytes::Bytes;

use super::{PullError, Puller};
use crate::digest::Digest;
use crate::image;
use crate::oci::{self, Document};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::FetchedManifest;

impl Puller {
    /// A manifest or index by digest: from containerd when it has it (verified again, since
    /// local bytes can rot), else from the registry.
    pub(super) async fn document(
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

    pub(super) fn choose(
        &self,
        image: &str,
        index: &oci::Index,
    ) -> Result<(usize, Platform), PullError> {
        image::choose_manifest(index, &self.options.platform).map_err(|e| PullError::NoPlatform {
            image: image.to_string(),
            platform: e.platform,
            available: e.available,
        })
    }
}

/// The config must list one diff ID per layer, or the image cannot be unpacked or run.
/// Returns the diff IDs (empty when the config was not at hand).
pub(super) fn check_config(
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
