//! Unpacking: turning an image's layer blobs into the snapshot chain a container starts from.
//!
//! Per layer, as containerd's own unpacker does: `Snapshots.Prepare` on the parent chain,
//! `Diff.Apply` of the layer blob, check the resulting diff ID against the config,
//! `Snapshots.Commit` under the layer's chain ID. Snapshots that exist are skipped, so a warm
//! node does no work.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::image::labels::{SNAPSHOT_REF, UNCOMPRESSED};
use crate::oci::Descriptor;
use crate::store::{Lease, Store, StoreError};

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The applied layer is not what the config says it is.
    #[error("layer {layer} unpacks to {got}, but the image config says {expected}")]
    DiffId {
        /// The layer blob.
        layer: Digest,
        /// The config's diff ID.
        expected: Digest,
        /// What containerd computed.
        got: Digest,
    },
    /// containerd failed.
    #[error("unpacking layer {layer} into snapshotter {snapshotter} failed")]
    Store {
        /// The layer blob.
        layer: Digest,
        /// The snapshotter.
        snapshotter: String,
        /// What containerd said.
        #[source]
        source: StoreError,
    },
}

/// Unpacks one layer on top of `parent` (the previous layer's chain ID) as snapshot `chain`.
pub async fn unpack_layer(
    store: &Store,
    lease: &Lease,
    snapshotter: &str,
    layer: &Descriptor,
    diff_id: &Digest,
    parent: Option<&Digest>,
    chain: &Digest,
) -> Result<(), UnpackError> {
    let fail = |source| UnpackError::Store {
        layer: layer.digest.clone(),
        snapshotter: snapshotter.to_string(),
        source,
    };
    // Leased before it is looked at: a snapshot nothing references any more (its child was
    // removed) may be garbage collected at any moment, and this pull is about to build on it.
    store
        .lease_resource(
            lease,
            &format!("snapshots/{snapshotter}"),
            &chain.to_string(),
        )
        .await
        .map_err(fail)?;
    if store
        .snapshot_exists(snapshotter, &chain.to_string())
        .await
        .map_err(fail)?
    {
        return Ok(());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let key = format!("extract-{nanos}-{:08x} {chain}", rand::random::<u32>());
    let labels = HashMap::from([(SNAPSHOT_REF.to_string(), chain.to_string())]);
    let parent = parent.map(Digest::to_string).unwrap_or_default();
    let Some(mounts) = store
        .prepare_snapshot(lease, snapshotter, &key, &parent, labels.clone())
        .await
        .map_err(fail)?
    else {
        return Ok(());
    };
    let result = async {
        let got = store
            .apply_layer(lease, layer, mounts)
            .await
            .map_err(fail)?;
        if &got != diff_id {
            return Err(UnpackError::DiffId {
                layer: layer.digest.clone(),
                expected: diff_id.clone(),
                got,
            });
        }
        let committed = store
            .commit_snapshot(lease, snapshotter, &chain.to_string(), &key, labels)
            .await
            .map_err(fail)?;
        if !committed {
            // Someone else committed the same chain meanwhile: theirs is as good as ours.
            store
                .remove_snapshot(snapshotter, &key)
                .await
                .map_err(fail)?;
        }
        store
            .set_labels(
                &layer.digest,
                HashMap::from([(UNCOMPRESSED.to_string(), diff_id.to_string())]),
            )
            .await
            .map_err(fail)
    }
    .await;
    if result.is_err() {
        if let Err(e) = store.remove_snapshot(snapshotter, &key).await {
            tracing::warn!(error = %e, key, "could not remove the abandoned snapshot");
        }
    }
    result
}
