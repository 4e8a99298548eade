//! `--fetcher containerd`: containerd fetches and unpacks the layers itself (its transfer
//! service, used on containerd 2.x), which spares every byte the trip through `Content.Write`.
//!
//! prepull keeps what it guarantees:
//! - **What is fetched**: prepull resolves the tag, checks `expect:`, fetches and verifies the
//!   manifest and config and commits them; containerd is asked for the platform manifest *by
//!   digest* and finds both documents present, so it only fetches the layers, and verifies each
//!   against its digest as it commits it and each layer's diff ID as it unpacks it.
//! - **Where credentials go**: containerd reads the same hosts directory (mirrors, CAs) and is
//!   given, per host, only the credential prepull itself would send there, and only once prepull
//!   has seen how that host authorizes and that its token realm may have it (see
//!   [`crate::registry::RegistryClient::hand_over`]).
//! - **Durability**: containerd does not flush what it unpacks. Before any record CRI finds the
//!   image by exists, prepull flushes the snapshotter's filesystem once for the whole image
//!   ([`crate::store::Store::sync_snapshotter`]). Until then, a marker lease names the snapshots
//!   the transfer creates: a run after a power cut (another boot) removes those snapshots before
//!   anything trusts them (see [`super::lease::sweep_unflushed`]).
//! - **Free space**: watched while containerd unpacks, as for prepull's own unpack: the transfer
//!   is cancelled below the reserve.
//!
//! containerd's transfer service writes an image record of its own when it is done; it is given
//! a name no pod can use (under `prepull.invalid/`, a reserved domain), deleted once prepull's
//! records exist. Any failure of the transfer (a registry's refusal, a containerd without the
//! service, a host it cannot reach) hands the image to prepull's own fetch, which goes on from
//! what containerd holds and reports the failure with its kind.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::fetch::{Counters, Fetch};
use super::resolve::{check_config, Resolved};
use super::unpack::{below_reserve, LayerUnpack};
use super::{lease, PullError, Puller};
use crate::image::{self, labels};
use crate::oci::Descriptor;
use crate::reference::Reference;
use crate::store::{ref_key, Lease, StoreError, TransferPull};

/// The image record containerd's transfer writes for `reference` at `digest`: under a reserved
/// domain (RFC 2606), so no pod's image is ever it.
pub fn transfer_record(reference: &Reference, digest: &crate::digest::Digest) -> String {
    format!("{TRANSFER_RECORDS}{}@{digest}", reference.name())
}

/// Where the transfer's own records are named.
pub const TRANSFER_RECORDS: &str = "prepull.invalid/transfer/";

/// Deletes the records containerd's transfer wrote for runs that stopped before deleting them
/// (killed between the transfer and their own records). Safe beside a transfer under way: its
/// content is held by its pull's lease, not by the record.
pub(super) async fn delete_transfer_records(store: &crate::store::Store) -> Result<(), StoreError> {
    for image in store.images().await? {
        if image.name.starts_with(TRANSFER_RECORDS) {
            tracing::info!(
                record = image.name,
                "deleting a transfer record a stopped run left"
            );
            store.delete_image(&image.name).await?;
        }
    }
    Ok(())
}

/// Why a transfer stopped short.
enum Stopped {
    /// containerd failed it.
    Store(StoreError),
    /// It was cancelled: containerd's fetch brought less than `--min-progress` in a window.
    Stalled(crate::registry::MinProgress),
    /// It was cancelled: containerd's filesystem fell below the free-space reserve.
    Space {
        space: crate::space::SpaceCheck,
        free: u64,
        reserve: u64,
    },
}

impl Puller {
    /// Counts what containerd's fetch brought of `layers` since the pull last looked: bytes
    /// of their ingests (containerd's fetch writes them under the same refs as prepull's) and
    /// of layers committed since, which also count as fetched. The first look finds what is
    /// already there: committed layers count as present, partial ones as a start. So a pull
    /// that containerd restarts under sees it move on (see `super`'s restart rule).
    async fn observe_layers(
        &self,
        layers: &[Descriptor],
        counters: &Counters,
    ) -> Result<(), StoreError> {
        for layer in layers {
            let committed = self.store.info(&layer.digest).await?.is_some();
            let bytes = if committed {
                layer.size
            } else {
                self.store
                    .ingest_offset(&ref_key(&layer.media_type, &layer.digest))
                    .await?
                    .unwrap_or(0)
                    .min(layer.size)
            };
            let before = counters
                .transferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(layer.digest.clone(), (bytes, committed));
            match before {
                None => {
                    if committed {
                        counters.present.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.progress.advance(bytes);
                }
                Some((was, was_committed)) => {
                    let more = bytes.saturating_sub(was);
                    counters.bytes.fetch_add(more, Ordering::Relaxed);
                    counters.progress.downloaded(more);
                    counters.progress.advance(more);
                    if committed && !was_committed {
                        counters.fetched.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns once containerd's fetch of `layers` moved less than `progress` allows over a
    /// whole window: ingest bytes, committed layers and unpacked snapshots of `chain` all count.
    /// containerd's fetch has no such bound of its own, so a registry trickling bytes would hold
    /// it, and the pull, forever. Never returns while containerd cannot be asked (the transfer
    /// then fails by itself).
    async fn stalled(
        &self,
        layers: &[Descriptor],
        chain: &[crate::digest::Digest],
        snapshotter: &str,
        progress: crate::registry::MinProgress,
    ) {
        let mut last = None;
        loop {
            let now = self
                .transferred_so_far(layers, chain, snapshotter)
                .await
                .ok();
            if let (Some((bytes, unpacked)), Some((was_bytes, was_unpacked))) = (now, last) {
                if bytes < was_bytes + progress.bytes && unpacked == was_unpacked {
                    return;
                }
            }
            last = now.or(last);
            tokio::time::sleep(progress.window).await;
        }
    }

    /// Bytes containerd holds of `layers` (committed or in their ingests) and how many snapshots
    /// of `chain` exist.
    async fn transferred_so_far(
        &self,
        layers: &[Descriptor],
        chain: &[crate::digest::Digest],
        snapshotter: &str,
    ) -> Result<(u64, usize), StoreError> {
        let mut bytes = 0;
        for layer in layers {
            bytes += match self.store.info(&layer.digest).await? {
                Some(_) => layer.size,
                None => self
                    .store
                    .ingest_offset(&ref_key(&layer.media_type, &layer.digest))
                    .await?
                    .unwrap_or(0),
            };
        }
        let mut unpacked = 0;
        for c in chain {
            if self
                .store
                .snapshot_exists(snapshotter, &c.to_string())
                .await?
            {
                unpacked += 1;
            }
        }
        Ok((bytes, unpacked))
    }

    /// Whether containerd's transfer service is used: containerd 2.x has it as prepull needs
    /// it (1.7's leaves out, among others, the scheme of plain-HTTP registries); asked once.
    async fn transfer_usable(&self) -> bool {
        if self.transfer_unsupported.load(Ordering::Relaxed) {
            return false;
        }
        let usable = *self
            .transfer_version_checked
            .get_or_init(|| async {
                let version = self.store.version().await.unwrap_or_default();
                let major = version
                    .trim_start_matches('v')
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u32>().ok());
                let usable = major.is_some_and(|m| m >= 2);
                if !usable {
                    tracing::info!(containerd = version, "--fetcher containerd needs containerd 2.0 or later; prepull fetches layers itself");
                }
                usable
            })
            .await;
        usable
    }

    /// Has containerd fetch and unpack the layers of `image` (see the module doc). `true` when
    /// the image's layers are all committed, unpacked and durable; `false` when prepull's own
    /// fetch is to do it (the transfer is not for this image, or failed and said why in the
    /// log); a [`PullError`] that prepull's fetch could not do better on (free space, containerd
    /// gone) ends the attempt.
    pub(super) async fn transfer_and_unpack(
        &self,
        reference: &Reference,
        image: &Resolved,
        lease: &Lease,
        source: &HashMap<String, String>,
        counters: &Counters,
    ) -> Result<bool, PullError> {
        let Some(snapshotter) = self.options.unpack.as_deref() else {
            return Ok(false);
        };
        if !self.transfer_usable().await {
            return Ok(false);
        }
        let store_err = PullError::store(reference);
        let name = reference.to_string();
        let manifest = &image.manifest;
        let fetch = Fetch {
            reference,
            lease,
            labels: source,
            counters,
        };
        // The config, verified by prepull: the diff IDs come from it.
        let config = self.fetch_config(&fetch, &manifest.config).await?;
        let config = self.config_bytes(&name, manifest, config).await?;
        let diff_ids = check_config(&name, &image.chosen.digest, manifest, Some(&config))?;
        let chain = image::chain_ids(&diff_ids);
        let Some(top) = chain.last() else {
            return Ok(false);
        };
        let snapshots = format!("snapshots/{snapshotter}");
        self.store
            .lease_resource(lease, &snapshots, &top.to_string())
            .await
            .map_err(&store_err)?;
        if self
            .store
            .snapshot_exists(snapshotter, &top.to_string())
            .await
            .map_err(&store_err)?
        {
            return Ok(false);
        }
        // The manifest, committed now, so containerd finds it rather than fetching it again
        // (a manifest GET is what registries count as a pull).
        self.put_document(
            lease,
            &image.chosen,
            labels::manifest_refs(source, manifest),
        )
        .await
        .map_err(&store_err)?;
        self.observe_layers(&manifest.layers, counters)
            .await
            .map_err(&store_err)?;
        let mut missing = Vec::new();
        for c in &chain {
            if !self
                .store
                .snapshot_exists(snapshotter, &c.to_string())
                .await
                .map_err(&store_err)?
            {
                missing.push(c.clone());
            }
        }
        let marker = lease::mark_unflushed(&self.store, reference, snapshotter, &missing)
            .await
            .map_err(&store_err)?;
        let record = transfer_record(reference, &image.chosen.digest);
        let auth = self
            .registry
            .hand_over(reference)
            .await
            .map_err(PullError::registry(reference))?;
        let hosts = self.registry.hosts();
        let plain_http = hosts.plain_http.contains(reference.registry());
        let target = format!("{}@{}", reference.name(), image.chosen.digest);
        let pull = TransferPull {
            reference: &target,
            hosts_dir: hosts.dir.as_deref(),
            default_scheme: plain_http.then_some("http"),
            platform: &image.platform,
            snapshotter: (!self.transfer_cannot_unpack.load(Ordering::Relaxed))
                .then_some(snapshotter),
            record: &record,
            auth,
        };
        tracing::debug!(image = %reference, manifest = %image.chosen.digest, "containerd fetches the layers");
        // A few images at a time, each fetching a few layers at once (containerd's
        // `max_concurrent_downloads`, 3 by default): about --max-concurrent-downloads in all.
        let _turn = self
            .transfers
            .acquire()
            .await
            .map_err(|_| PullError::Malformed {
                image: name.clone(),
                problem: "transfer limiter closed".into(),
            })?;
        let transfer = async {
            let pull_again = TransferPull {
                snapshotter: None,
                auth: pull.auth.clone(),
                ..pull
            };
            match self.store.transfer_pull(lease, pull).await {
                // This containerd's transfer service unpacks into no snapshotter, or not
                // into this one (containerd 2.x with `native` and no `unpack_config`): it
                // fetches, and prepull unpacks (each layer flushed) below.
                Err(StoreError::Rpc { status, .. })
                    if status.code() == tonic::Code::InvalidArgument
                        && status.message().contains("unpack") =>
                {
                    self.transfer_cannot_unpack.store(true, Ordering::Relaxed);
                    tracing::info!(snapshotter, reason = status.message(), "containerd's transfer service does not unpack into this snapshotter; it fetches, prepull unpacks");
                    self.store.transfer_pull(lease, pull_again).await
                }
                other => other,
            }
        };
        let space = async {
            match self.options.space.as_ref() {
                Some(space) => {
                    let (free, reserve) = below_reserve(space).await;
                    Stopped::Space {
                        space: space.clone(),
                        free,
                        reserve,
                    }
                }
                None => std::future::pending().await,
            }
        };
        let progress = self.registry.min_progress();
        // Dropping the transfer cancels it: containerd stops fetching and unpacking.
        let transferred = tokio::select! {
            t = transfer => t.map_err(Stopped::Store),
            stopped = space => Err(stopped),
            () = self.stalled(&manifest.layers, &chain, snapshotter, progress) => {
                Err(Stopped::Stalled(progress))
            }
        };
        let failed = match transferred {
            Ok(()) => None,
            // containerd went away: the pull waits for it and tries again (see `super`); what
            // it fetched meanwhile is counted then.
            Err(Stopped::Store(e @ StoreError::Disconnected { .. })) => return Err(store_err(e)),
            Err(stopped) => Some(stopped),
        };
        self.observe_layers(&manifest.layers, counters)
            .await
            .map_err(&store_err)?;
        if let Some(stopped) = failed {
            let _ = self.store.delete_image(&record).await;
            // Layers it unpacked before it stopped are found, and built on, by the next fetch:
            // flushed first, as any unpacked layer is before it is trusted.
            match self.store.sync_snapshotter(lease, snapshotter).await {
                Ok(()) => lease::flushed(&self.store, marker).await,
                Err(sync) => {
                    tracing::warn!(image = %reference, error = %sync, "cannot flush what containerd unpacked; a run after a power cut removes it")
                }
            }
            let e = match stopped {
                Stopped::Space {
                    space,
                    free,
                    reserve,
                } => {
                    return Err(PullError::Unpack {
                        image: name,
                        source: super::UnpackError::Expanded {
                            layer: manifest.layers.last().map_or_else(
                                || manifest.config.digest.clone(),
                                |l| l.digest.clone(),
                            ),
                            compressed: manifest.layers.iter().map(|l| l.size).sum(),
                            space,
                            free,
                            reserve,
                        },
                    })
                }
                Stopped::Store(e @ StoreError::OutOfSpace { .. }) => return Err(store_err(e)),
                Stopped::Stalled(progress) => {
                    tracing::warn!(image = %reference, min_progress = %progress, "containerd's fetch brought less than --min-progress; prepull fetches the layers itself");
                    return Ok(false);
                }
                Stopped::Store(e) => e,
            };
            if matches!(e, StoreError::Unsupported { .. }) {
                self.transfer_unsupported.store(true, Ordering::Relaxed);
                tracing::info!(error = %e, "containerd has no transfer service; prepull fetches layers itself");
            } else {
                tracing::warn!(image = %reference, error = %crate::error_chain(&e), "containerd's fetch failed; prepull fetches the layers itself");
            }
            return Ok(false);
        }
        // What containerd did not unpack (a snapshotter its transfer service is not configured
        // to unpack into) is unpacked here, each layer flushed as prepull's own unpack does.
        for (i, (layer, diff_id)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
            let unpacked = LayerUnpack {
                store: &self.store,
                lease,
                snapshotter,
                layer,
                diff_id,
                parent: i.checked_sub(1).map(|p| &chain[p]),
                chain: &chain[i],
                space: self.options.space.as_ref(),
            }
            .run()
            .await
            .map_err(|source| PullError::Unpack {
                image: name.clone(),
                source,
            })?;
            if unpacked {
                counters.unpacked.fetch_add(1, Ordering::Relaxed);
            }
        }
        // One flush for every layer containerd unpacked, before any record CRI reads exists.
        self.store
            .sync_snapshotter(lease, snapshotter)
            .await
            .map_err(&store_err)?;
        lease::flushed(&self.store, marker).await;
        if let Err(e) = self.store.delete_image(&record).await {
            tracing::warn!(image = %reference, record, error = %e, "cannot delete the transfer's own image record");
        }
        // Where each layer came from, as prepull's own fetch labels what it commits (a later
        // pull of an image sharing the layer from elsewhere knows it may mount it from here).
        for layer in &manifest.layers {
            self.store
                .set_labels(&layer.digest, source.clone())
                .await
                .map_err(&store_err)?;
        }
        self.store
            .set_labels(
                &manifest.config.digest,
                labels::snapshot_ref(snapshotter, top),
            )
            .await
            .map_err(&store_err)?;
        Ok(true)
    }
}
