//! From the top document to the manifest this node pulls: documents read from containerd when it
//! holds them, else from the registry; the platform chosen from an index; the config checked
//! against the manifest.

use std::time::Instant;

use bytes::Bytes;

use super::{PullError, PullReport, Puller};
use crate::digest::Digest;
use crate::image;
use crate::oci::{self, Document};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::FetchedManifest;

/// How resolving a reference ended. One is made per pull and moved once: its size costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Resolution {
    /// The node already holds the image, complete: nothing to pull.
    Warm(PullReport),
    /// The documents to pull.
    Pull(Resolved),
}

/// The documents a pull works from.
pub(super) struct Resolved {
    /// The top document the reference names (an index or a manifest).
    pub top: FetchedManifest,
    /// The manifest chosen for this node (the top document itself when it is a manifest).
    pub chosen: FetchedManifest,
    /// The chosen manifest, parsed.
    pub manifest: oci::Manifest,
    /// The chosen manifest's position in the index, when the top document is one.
    pub position: Option<usize>,
    /// The platform the manifest is for.
    pub platform: Platform,
}

impl Puller {
    /// Resolves `reference` to its top document and the manifest for this node. A tag costs one
    /// HEAD; documents containerd already holds are read from it, so a warm node re-checking its
    /// images makes no GET at all. With `shortcut`, an image the node holds whole ends here.
    /// With `expect`, the top document's digest or the chosen manifest's must be it.
    pub(super) async fn resolve(
        &self,
        reference: &Reference,
        expect: Option<&Digest>,
        shortcut: bool,
        started: Instant,
    ) -> Result<Resolution, PullError> {
        let registry_err = PullError::registry(reference);
        let top = match self
            .registry
            .resolve(reference)
            .await
            .map_err(&registry_err)?
        {
            Some(digest) => {
                // An image expected by its platform manifest's digest is checked below, on
                // the documents.
                if shortcut && expect.is_none_or(|e| e == &digest) {
                    if let Some(report) = self.already_warm(reference, &digest, started).await {
                        return Ok(Resolution::Warm(report));
                    }
                }
                self.document(reference, &digest).await?
            }
            None => self
                .registry
                .manifest(reference)
                .await
                .map_err(&registry_err)?,
        };
        tracing::debug!(digest = %top.digest, media_type = top.media_type(), "resolved");
        let resolved = self.manifest_of(reference, top).await?;
        match expect {
            Some(e) if e != &resolved.top.digest && e != &resolved.chosen.digest => {
                Err(PullError::UnexpectedDigest {
                    image: reference.to_string(),
                    expected: e.clone(),
                    got: resolved.top.digest.clone(),
                    manifest: resolved
                        .position
                        .is_some()
                        .then(|| resolved.chosen.digest.clone()),
                })
            }
            _ => Ok(Resolution::Pull(resolved)),
        }
    }

    /// The manifest of `top` for this node: `top` itself, or the index entry for the platform.
    async fn manifest_of(
        &self,
        reference: &Reference,
        top: FetchedManifest,
    ) -> Result<Resolved, PullError> {
        let (chosen, position, platform) = match &top.document {
            Document::Manifest(..) => (top.clone(), None, self.options.platform.clone()),
            Document::Index(index, _) => {
                let (i, platform) = self.choose(&reference.to_string(), index)?;
                let child = self.document(reference, &index.manifests[i].digest).await?;
                (child, Some(i), platform)
            }
        };
        let Document::Manifest(manifest, _) = &chosen.document else {
            return Err(PullError::Malformed {
                image: reference.to_string(),
                problem: format!(
                    "index {} points at another index {}; nested indexes are not supported",
                    top.digest, chosen.digest
                ),
            });
        };
        Ok(Resolved {
            manifest: manifest.clone(),
            top,
            chosen,
            position,
            platform,
        })
    }

    /// A manifest or index by digest: from containerd when it has it (verified again, since
    /// local bytes can rot), else from the registry.
    pub(super) async fn document(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<FetchedManifest, PullError> {
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
            .map_err(PullError::registry(reference))
    }

    pub(super) fn choose(
        &self,
        image: &str,
        index: &oci::Index,
    ) -> Result<(usize, Platform), PullError> {
        if image::only_nested_indexes(index) {
            return Err(PullError::Malformed {
                image: image.to_string(),
                problem: "its index lists only other indexes (nested indexes), which prepull \
                          does not pull, as containerd's CRI does not; point the image at an \
                          index of image manifests or at one manifest"
                    .to_string(),
            });
        }
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
