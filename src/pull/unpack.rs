//! Unpacking: turning an image's layer blobs into the snapshot chain a container starts from.
//!
//! Per layer, as containerd's own unpacker does: `Snapshots.Prepare` on the parent chain,
//! `Diff.Apply` of the layer blob, check the resulting diff ID against the config,
//! `Snapshots.Commit` under the layer's chain ID. Snapshots that exist are skipped, so a warm
//! node does no work. The pull runs this per layer as soon as the layer's blob, and every blob
//! below it, is committed, while later layers are still downloading.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::store::{Lease, Store, StoreError};

use futures_util::future::try_join_all;

use super::fetch::{Counters, Fetch};
use super::resolve::{check_config, Resolved};
use super::{PullError, Puller};
use crate::image::{self, labels};
use crate::oci;
use crate::reference::Reference;
use bytes::Bytes;
use tokio::sync::oneshot;

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
    let labels = HashMap::from([(labels::SNAPSHOT_REF.to_string(), chain.to_string())]);
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
                HashMap::from([(labels::UNCOMPRESSED.to_string(), diff_id.to_string())]),
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

impl Puller {
    /// Config and layers download concurrently, each verified before it is committed; layer i
    /// unpacks as soon as it and the layers below it are committed, while later layers are
    /// still downloading.
    pub(super) async fn fetch_and_unpack(
        &self,
        reference: &Reference,
        image: &Resolved,
        lease: &Lease,
        source: &HashMap<String, String>,
        counters: &Counters,
    ) -> Result<(), PullError> {
        let fetch = Fetch {
            reference,
            lease,
            labels: source,
            counters,
        };
        let manifest = &image.manifest;
        let name = reference.to_string();
        let (config_tx, config_rx) = oneshot::channel();
        let (layer_txs, layer_rxs): (Vec<_>, Vec<_>) = manifest
            .layers
            .iter()
            .map(|_| oneshot::channel::<()>())
            .unzip();
        let fetch_config = async {
            let bytes = self.fetch_config(&fetch, &manifest.config).await?;
            let _ = config_tx.send(bytes);
            Ok::<_, PullError>(())
        };
        let fetch_layers = try_join_all(manifest.layers.iter().zip(layer_txs).map(
            |(layer, done)| async {
                self.fetch_blob(&fetch, layer).await?;
                let _ = done.send(());
                Ok::<_, PullError>(())
            },
        ));
        let unpack = self.unpack(
            &name,
            &image.chosen.digest,
            manifest,
            lease,
            config_rx,
            layer_rxs,
        );
        tokio::try_join!(fetch_config, fetch_layers, unpack)?;
        Ok(())
    }

    /// Checks the config against the manifest and, unless content-only, unpacks each layer as
    /// its blob (and every blob below it) is committed.
    pub(super) async fn unpack(
        &self,
        image: &str,
        manifest_digest: &Digest,
        manifest: &oci::Manifest,
        lease: &Lease,
        config: oneshot::Receiver<Option<Bytes>>,
        layers: Vec<oneshot::Receiver<()>>,
    ) -> Result<(), PullError> {
        // A closed channel means that fetch failed; its own error is the one reported.
        let Ok(config_bytes) = config.await else {
            return Ok(());
        };
        let Some(snapshotter) = self.options.unpack.as_deref() else {
            return check_config(image, manifest_digest, manifest, config_bytes.as_deref())
                .map(drop);
        };
        let config_bytes = match config_bytes {
            Some(b) => b.to_vec(),
            None => self
                .store
                .read_blob(&manifest.config.digest, oci::MAX_CONFIG_BYTES)
                .await
                .map_err(|source| PullError::Store {
                    image: image.to_string(),
                    source,
                })?,
        };
        let diff_ids = check_config(image, manifest_digest, manifest, Some(&config_bytes))?;
        let chain = image::chain_ids(&diff_ids);
        let unpack_err = |source| PullError::Unpack {
            image: image.to_string(),
            source,
        };
        if let Some(top) = chain.last() {
            // A warm node: the whole chain is there, nothing to unpack.
            let exists = self
                .store
                .snapshot_exists(snapshotter, &top.to_string())
                .await
                .map_err(|source| PullError::Store {
                    image: image.to_string(),
                    source,
                })?;
            if exists {
                return Ok(());
            }
        }
        for (i, done) in layers.into_iter().enumerate() {
            if done.await.is_err() {
                return Ok(());
            }
            unpack_layer(
                &self.store,
                lease,
                snapshotter,
                &manifest.layers[i],
                &diff_ids[i],
                i.checked_sub(1).map(|p| &chain[p]),
                &chain[i],
            )
            .await
            .map_err(unpack_err)?;
        }
        if let Some(top) = chain.last() {
            self.store
                .set_labels(
                    &manifest.config.digest,
                    labels::snapshot_ref(snapshotter, top),
                )
                .await
                .map_err(|source| PullError::Store {
                    image: image.to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}
