//! An image's graph read back from containerd's content store, every document checked against its
//! digest: the manifest a top document leads to for a platform, the manifests of an image the
//! store holds, and the chain IDs a manifest's config names. The steps themselves (platform
//! choice, diff IDs, chain IDs) are [`crate::image::graph`]'s.
//!
//! The warm check and `unpin` read the graph through here and stop at the first thing that is
//! not right. `verify` walks the same graph itself, because it must report every problem it
//! meets, part by part, where these reads give up at the first.

use super::{Store, StoreError};
use crate::digest::Digest;
use crate::image::{self, ConfigError, NoPlatform};
use crate::oci::{self, Document, Manifest};
use crate::platform::Platform;

/// Why a graph read stopped.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// containerd failed, or does not hold the part.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bytes containerd holds do not hash to their digest.
    #[error("{digest} does not match its content")]
    Corrupt {
        /// The blob read.
        digest: Digest,
    },
    /// The document is not a manifest or index prepull reads.
    #[error("{digest} is not a valid document: {reason}")]
    Malformed {
        /// The blob read.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// An index whose chosen entry is another index.
    #[error("index {index} points at another index {child}")]
    NestedIndex {
        /// The index.
        index: Digest,
        /// Its entry.
        child: Digest,
    },
    /// The index has nothing for the platform.
    #[error(transparent)]
    NoPlatform(#[from] NoPlatform),
    /// The config does not describe the manifest's layers.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The manifest an image's top document leads to for one platform.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// The manifest's digest (the top document's, when that is a manifest).
    pub digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The platform it is for: the index entry's, or the one asked for.
    pub platform: Platform,
}

impl Store {
    /// The manifest `top` leads to for `platform`: `top` itself, or its index's entry for it.
    pub async fn manifest_for(
        &self,
        top: &Digest,
        platform: &Platform,
    ) -> Result<Chosen, GraphError> {
        let index = match self.document(top, None).await? {
            Document::Manifest(manifest, _) => {
                return Ok(Chosen {
                    digest: top.clone(),
                    manifest,
                    platform: platform.clone(),
                })
            }
            Document::Index(index, _) => index,
        };
        let (i, platform) = image::choose_manifest(&index, platform)?;
        let child = &index.manifests[i].digest;
        match self.document(child, None).await? {
            Document::Manifest(manifest, _) => Ok(Chosen {
                digest: child.clone(),
                manifest,
                platform,
            }),
            Document::Index(..) => Err(GraphError::NestedIndex {
                index: top.clone(),
                child: child.clone(),
            }),
        }
    }

    /// The manifests of the image whose top document is `top` (of `media_type`, when known)
    /// that the store holds: `top` itself, or the entries of its index that can be read (the
    /// other platforms' were never pulled).
    pub async fn manifests_held(
        &self,
        top: &Digest,
        media_type: Option<&str>,
    ) -> Result<Vec<Manifest>, GraphError> {
        let index = match self.document(top, media_type).await? {
            Document::Manifest(manifest, _) => return Ok(vec![manifest]),
            Document::Index(index, _) => index,
        };
        let mut held = Vec::new();
        for entry in &index.manifests {
            if let Ok(Document::Manifest(manifest, _)) = self.document(&entry.digest, None).await {
                held.push(manifest);
            }
        }
        Ok(held)
    }

    /// The chain IDs of the layers of `manifest` (at `digest`), from its config in the store.
    pub async fn chain_ids(
        &self,
        digest: &Digest,
        manifest: &Manifest,
    ) -> Result<Vec<Digest>, GraphError> {
        let config = self
            .verified(&manifest.config.digest, oci::MAX_CONFIG_BYTES)
            .await?;
        let diff_ids = image::diff_ids(digest, manifest, &config)?;
        Ok(image::chain_ids(&diff_ids))
    }

    /// A manifest or index, verified and parsed.
    async fn document(
        &self,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Document, GraphError> {
        let bytes = self.verified(digest, oci::MAX_MANIFEST_BYTES).await?;
        Document::parse(&bytes, media_type).map_err(|e| GraphError::Malformed {
            digest: digest.clone(),
            reason: e.to_string(),
        })
    }

    /// A blob's bytes, checked against its digest: local bytes can rot.
    async fn verified(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, GraphError> {
        let bytes = self.read_blob(digest, limit).await?;
        if &Digest::of(digest.algorithm(), &bytes) != digest {
            return Err(GraphError::Corrupt {
                digest: digest.clone(),
            });
        }
        Ok(bytes)
    }
}
