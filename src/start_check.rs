//! "Will a pod start from this image without the network?" for an image on the node: its
//! unpacked layers, found through a read-only view of its top snapshot, given to
//! [`crate::rootfs::check_start`] with the image's own command. Cheap (one view, a few `lstat`s
//! and a few hundred bytes read), so `verify` and every agent pass can afford it.

use crate::deep_verify::Unpacked;
use crate::image;
use crate::rootfs::{self, Startable};
use crate::store::{Lease, Store, StoreError, ViewDirs};

/// Why the check could not be made (nothing is concluded about the image).
#[derive(Debug, thiserror::Error)]
pub enum StartCheckError {
    /// containerd failed (the view could not be made).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The layer directories could not be read.
    #[error(transparent)]
    Read(#[from] rootfs::CheckError),
    /// The image's documents could not be read.
    #[error("cannot read the image's manifest for the start check: {0}")]
    Graph(String),
    /// Its config is not a valid image config.
    #[error("its config {digest} is not a valid image config: {why}")]
    Config {
        /// The config blob.
        digest: crate::digest::Digest,
        /// Why.
        why: String,
    },
    /// The check's thread ended abnormally.
    #[error("the start check stopped abnormally: {0}")]
    Task(String),
}

/// The unpacked image the node holds under the top document `top`, for `platform`: its
/// manifest's layers, and its config's diff IDs, process and architecture.
pub async fn unpacked(
    store: &Store,
    top: &crate::digest::Digest,
    platform: &crate::platform::Platform,
) -> Result<Unpacked, StartCheckError> {
    let chosen = store
        .manifest_for(top, platform)
        .await
        .map_err(|e| StartCheckError::Graph(crate::error_chain(&e)))?;
    let digest = &chosen.manifest.config.digest;
    let bytes = store
        .read_blob(digest, crate::oci::MAX_CONFIG_BYTES)
        .await?;
    let config: crate::oci::Config =
        serde_json::from_slice(&bytes).map_err(|e| StartCheckError::Config {
            digest: digest.clone(),
            why: e.to_string(),
        })?;
    Ok(Unpacked {
        manifest: chosen.digest,
        layers: chosen.manifest.layers,
        diff_ids: config.rootfs.diff_ids,
        process: config.config,
        architecture: config.architecture,
    })
}

/// Whether `image`'s own command starts from its unpacked layers in `snapshotter`. The view is
/// made under `lease` and removed before returning. `None` when the image names no command
/// (a pod running it gives its own, which is not checked here).
pub async fn check(
    store: &Store,
    lease: &Lease,
    snapshotter: &str,
    image: &Unpacked,
) -> Result<Option<Startable>, StartCheckError> {
    let Some(process) = image.process.clone().filter(|p| {
        p.entrypoint
            .iter()
            .chain(&p.cmd)
            .any(|argv| !argv.is_empty())
    }) else {
        return Ok(None);
    };
    let chain = image::chain_ids(&image.diff_ids);
    let Some(top) = chain.last() else {
        return Ok(None);
    };
    let view = store
        .view_snapshot(lease, snapshotter, &top.to_string())
        .await?;
    // Top layer first, as overlayfs stacks them.
    let layers = match &view.dirs {
        ViewDirs::Bind(dir) => vec![dir.clone()],
        ViewDirs::Layers(dirs) => dirs.iter().rev().cloned().collect(),
    };
    let arch = image
        .architecture
        .clone()
        .unwrap_or_else(|| crate::platform::Platform::host().architecture().to_string());
    let checked =
        tokio::task::spawn_blocking(move || rootfs::check_start(&layers, &process, &arch)).await;
    if let Err(e) = store.release_view(view).await {
        tracing::warn!(error = %e, "cannot remove the start check's view; its lease removes it");
    }
    match checked {
        Ok(result) => Ok(Some(result?)),
        Err(e) => Err(StartCheckError::Task(e.to_string())),
    }
}
