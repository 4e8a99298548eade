//! Unpacking: turning an image's layer blobs into the snapshot chain a container starts from.
//!
//! Per layer, as containerd's own unpacker does: `Snapshots.Prepare` on the parent chain,
//! `Diff.Apply` of the layer blob, check the resulting diff ID against the config,
//! `Snapshots.Commit` under the layer's chain ID. Snapshots that exist are skipped, so a warm
//! node does no work. The pull runs this per layer as soon as the layer's blob, and every blob
//! below it, is committed, while later layers are still downloading.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::try_join_all;
use tokio::sync::{oneshot, Semaphore};

use super::fetch::{Counters, Fetch};
use super::resolve::{check_config, Resolved};
use super::{PullError, Puller};
use crate::digest::Digest;
use crate::image::{self, labels};
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use crate::space::{human_bytes, SpaceCheck};
use crate::store::{Lease, Store, StoreError};

/// Layers of one image downloading at once (within the run's `--max-concurrent-downloads`),
/// lowest first: what containerd's CRI pull does (its `max_concurrent_downloads` is 3). More
/// share the bandwidth so that all of them finish late, together, and unpacking (one layer after
/// another, each on its parent) cannot start before; other images use the remaining slots.
pub(super) const LAYERS_IN_FLIGHT: usize = 3;

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
    /// The layer unpacked to so much more than estimated that containerd's filesystem fell
    /// below the free-space reserve: the unpack was stopped and its snapshot removed.
    #[error(
        "layer {layer} ({} compressed) unpacks to far more than estimated: containerd's \
         filesystem ({}) fell to {} free while it was unpacked, below the {} it must keep \
         (--min-free-space {}); the unpack was stopped and what it wrote removed. Free space on \
         the node, or lower --min-free-space",
        human_bytes(*compressed), space.path.display(), human_bytes(*free),
        human_bytes(*reserve), space.reserve
    )]
    Expanded {
        /// The layer blob.
        layer: Digest,
        /// Its compressed size.
        compressed: u64,
        /// The filesystem watched, and its reserve.
        space: SpaceCheck,
        /// Free bytes when the unpack was stopped.
        free: u64,
        /// Bytes that must stay free.
        reserve: u64,
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

/// One layer to unpack: on top of `parent` (the previous layer's chain ID) as snapshot `chain`.
pub(super) struct LayerUnpack<'a> {
    pub(super) store: &'a Store,
    pub(super) lease: &'a Lease,
    pub(super) snapshotter: &'a str,
    pub(super) layer: &'a Descriptor,
    pub(super) diff_id: &'a Digest,
    pub(super) parent: Option<&'a Digest>,
    pub(super) chain: &'a Digest,
    /// The free-space reserve watched while the layer is applied: a layer can unpack to a
    /// thousand times its compressed size (a file of zeros), far past the estimate the space
    /// claimed for it (see [`crate::space`]).
    pub(super) space: Option<&'a SpaceCheck>,
}

impl LayerUnpack<'_> {
    fn fail(&self) -> impl Fn(StoreError) -> UnpackError + '_ {
        |source| UnpackError::Store {
            layer: self.layer.digest.clone(),
            snapshotter: self.snapshotter.to_string(),
            source,
        }
    }

    /// Unpacks the layer, unless its snapshot exists; whether it unpacked it.
    pub(super) async fn run(&self) -> Result<bool, UnpackError> {
        let (store, snapshotter, chain) = (self.store, self.snapshotter, self.chain.to_string());
        // Leased before it is looked at: a snapshot nothing references any more (its child was
        // removed) may be garbage collected at any moment, and this pull is about to build on it.
        store
            .lease_resource(self.lease, &format!("snapshots/{snapshotter}"), &chain)
            .await
            .map_err(self.fail())?;
        if store
            .snapshot_exists(snapshotter, &chain)
            .await
            .map_err(self.fail())?
        {
            return Ok(false);
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = format!("extract-{nanos}-{:08x} {chain}", rand::random::<u32>());
        let labels = HashMap::from([(labels::SNAPSHOT_REF.to_string(), chain)]);
        let parent = self.parent.map(Digest::to_string).unwrap_or_default();
        let Some(mounts) = store
            .prepare_snapshot(self.lease, snapshotter, &key, &parent, labels.clone())
            .await
            .map_err(self.fail())?
        else {
            return Ok(false);
        };
        let result = async {
            let apply = store.apply_layer(self.lease, self.layer, mounts);
            let got = match self.space {
                // Dropping the apply cancels the call: containerd stops writing.
                Some(space) => tokio::select! {
                    got = apply => got,
                    (free, reserve) = below_reserve(space) => {
                        return Err(UnpackError::Expanded {
                            layer: self.layer.digest.clone(),
                            compressed: self.layer.size,
                            space: space.clone(),
                            free,
                            reserve,
                        })
                    }
                },
                None => apply.await,
            }
            .map_err(self.fail())?;
            self.commit(&key, got, labels).await
        }
        .await;
        if result.is_err() {
            if let Err(e) = store.remove_snapshot(snapshotter, &key).await {
                tracing::warn!(error = %e, key, "could not remove the abandoned snapshot");
            }
        }
        result.map(|()| true)
    }

    /// Commits the applied snapshot `key` under the chain ID, once its diff ID is the config's.
    async fn commit(
        &self,
        key: &str,
        got: Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), UnpackError> {
        if &got != self.diff_id {
            return Err(UnpackError::DiffId {
                layer: self.layer.digest.clone(),
                expected: self.diff_id.clone(),
                got,
            });
        }
        let (store, snapshotter) = (self.store, self.snapshotter);
        let committed = store
            .commit_snapshot(
                self.lease,
                snapshotter,
                &self.chain.to_string(),
                key,
                labels,
            )
            .await
            .map_err(self.fail())?;
        if !committed {
            // Someone else committed the same chain meanwhile: theirs is as good as ours.
            store
                .remove_snapshot(snapshotter, key)
                .await
                .map_err(self.fail())?;
        }
        store
            .set_labels(
                &self.layer.digest,
                HashMap::from([(labels::UNCOMPRESSED.to_string(), self.diff_id.to_string())]),
            )
            .await
            .map_err(self.fail())
    }
}

/// Returns once containerd's filesystem has less free than `space`'s reserve: the free bytes and
/// the reserve. Looks more often the nearer free space is to the reserve (as often as a fast disk
/// could cross what is left), so a layer is stopped soon after it crosses. Never returns when
/// the filesystem cannot be inspected.
pub(super) async fn below_reserve(space: &SpaceCheck) -> (u64, u64) {
    /// A write rate no node disk beats: what is left of the margin is looked at before a disk
    /// this fast could have filled it.
    const FASTEST_WRITE: u64 = 4 << 30;
    loop {
        let Ok((free, total)) = space.usage() else {
            return std::future::pending().await;
        };
        let reserve = space.reserve.bytes(total);
        if free < reserve {
            return (free, reserve);
        }
        let margin = free - reserve;
        let wait = std::time::Duration::from_secs_f64(margin as f64 / FASTEST_WRITE as f64);
        tokio::time::sleep(wait.clamp(
            std::time::Duration::from_millis(2),
            std::time::Duration::from_millis(500),
        ))
        .await;
    }
}

/// Unpacks `layers` (base first, with their `diff_ids` from the config) into `snapshotter` from
/// the blobs the content store holds, without the network: each layer's snapshot is leased by
/// `lease` before it is looked at, and snapshots that exist are kept. What a repair runs once it
/// removed damaged snapshots; the blobs must be present (verified by the caller).
pub async fn unpack_local(
    store: &Store,
    lease: &Lease,
    snapshotter: &str,
    layers: &[Descriptor],
    diff_ids: &[Digest],
) -> Result<(), UnpackError> {
    let chain = image::chain_ids(diff_ids);
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        LayerUnpack {
            store,
            lease,
            snapshotter,
            layer,
            diff_id,
            parent: i.checked_sub(1).map(|p| &chain[p]),
            chain: &chain[i],
            // These layers were unpacked on this node before: their size is known not to
            // surprise, and a repair is not refused for the reserve.
            space: None,
        }
        .run()
        .await?;
    }
    Ok(())
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
        // Lowest layers first, a few at a time: layer 0 then completes early and unpacking runs
        // while the layers above it download, instead of every layer finishing together and
        // unpacking only after. The semaphore is fair and the futures ask for it in layer order.
        // Content only: nothing waits for the lowest layers, so all may go at once.
        let in_flight = match self.options.unpack {
            Some(_) => LAYERS_IN_FLIGHT,
            None => manifest.layers.len().max(1),
        };
        let in_flight = Semaphore::new(in_flight);
        let fetch_layers = try_join_all(manifest.layers.iter().zip(layer_txs).map(
            |(layer, done)| async {
                let _turn = in_flight.acquire().await;
                self.fetch_blob(&fetch, layer).await?;
                let _ = done.send(());
                Ok::<_, PullError>(())
            },
        ));
        let unpack = self.unpack(
            &name,
            &image.chosen.digest,
            manifest,
            &fetch,
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
        fetch: &Fetch<'_>,
        config: oneshot::Receiver<Option<Bytes>>,
        layers: Vec<oneshot::Receiver<()>>,
    ) -> Result<(), PullError> {
        let lease = fetch.lease;
        // A closed channel means that fetch failed; its own error is the one reported.
        let Ok(config_bytes) = config.await else {
            return Ok(());
        };
        let Some(snapshotter) = self.options.unpack.as_deref() else {
            return check_config(image, manifest_digest, manifest, config_bytes.as_deref())
                .map(drop);
        };
        let config_bytes = self.config_bytes(image, manifest, config_bytes).await?;
        let diff_ids = check_config(image, manifest_digest, manifest, Some(&config_bytes))?;
        let chain = image::chain_ids(&diff_ids);
        let Some(top) = chain.last() else {
            return Ok(());
        };
        let store_err = PullError::store(&image);
        let root = labels::snapshot_ref(snapshotter, top);
        // A warm node: the whole chain is there, nothing to unpack. The chain may be held by
        // nothing but the lease of a run that died before it labelled the config (releasing
        // that lease would collect it), so it is leased before it is looked at, as each layer
        // is, and the config is labelled with it all the same.
        self.store
            .lease_resource(lease, &format!("snapshots/{snapshotter}"), &top.to_string())
            .await
            .map_err(&store_err)?;
        let exists = self
            .store
            .snapshot_exists(snapshotter, &top.to_string())
            .await;
        if exists.map_err(&store_err)? {
            return self
                .store
                .set_labels(&manifest.config.digest, root)
                .await
                .map_err(&store_err);
        }
        for (i, done) in layers.into_iter().enumerate() {
            if done.await.is_err() {
                return Ok(());
            }
            let layer = LayerUnpack {
                store: &self.store,
                lease,
                snapshotter,
                layer: &manifest.layers[i],
                diff_id: &diff_ids[i],
                parent: i.checked_sub(1).map(|p| &chain[p]),
                chain: &chain[i],
                space: self.options.space.as_ref(),
            };
            let unpacked = layer.run().await.map_err(|source| PullError::Unpack {
                image: image.to_string(),
                source,
            })?;
            if unpacked {
                fetch.counters.unpacked.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.store
            .set_labels(&manifest.config.digest, root)
            .await
            .map_err(&store_err)
    }

    /// The config's bytes: as fetched, or read from containerd when it already had them.
    pub(super) async fn config_bytes(
        &self,
        image: &str,
        manifest: &oci::Manifest,
        fetched: Option<Bytes>,
    ) -> Result<Vec<u8>, PullError> {
        match fetched {
            Some(b) => Ok(b.to_vec()),
            None => self
                .store
                .read_blob(&manifest.config.digest, oci::MAX_CONFIG_BYTES)
                .await
                .map_err(PullError::store(&image)),
        }
    }
}
