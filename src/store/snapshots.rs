//! Snapshots and the diff service: the two halves of unpacking a layer into a snapshotter.

use std::collections::HashMap;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::types::{Descriptor as PbDescriptor, Mount};

use super::{Lease, Store, StoreError};
use crate::digest::Digest;
use crate::oci::Descriptor;

impl Store {
    /// Whether a committed (or active) snapshot named `key` exists in `snapshotter`.
    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match client.stat(self.request(request, None)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Stat",
                snapshot_what(snapshotter, key),
                s,
            )),
        }
    }

    /// Prepares an active snapshot `key` on top of `parent` (empty for a base layer) and returns
    /// the mounts to apply a layer into. `None` if a snapshot with that key exists already.
    pub async fn prepare_snapshot(
        &self,
        lease: &Lease,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Option<Vec<Mount>>, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        match client.prepare(self.request(request, Some(lease))).await {
            Ok(r) => Ok(Some(r.into_inner().mounts)),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(None),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Prepare",
                snapshot_what(snapshotter, key),
                s,
            )),
        }
    }

    /// Commits active snapshot `key` as `name`. `false` if `name` exists already (someone else
    /// unpacked the same layer meanwhile); the caller then removes `key`.
    pub async fn commit_snapshot(
        &self,
        lease: &Lease,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
        };
        match client.commit(self.request(request, Some(lease))).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Commit",
                snapshot_what(snapshotter, name),
                s,
            )),
        }
    }

    /// Removes a snapshot (an abandoned active one, typically).
    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<(), StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match client.remove(self.request(request, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Remove",
                snapshot_what(snapshotter, key),
                s,
            )),
        }
    }

    /// Applies a layer blob from the content store onto `mounts`; returns the digest of the
    /// uncompressed layer (its diff ID), as computed by containerd while applying.
    pub async fn apply_layer(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<Digest, StoreError> {
        let mut client = DiffClient::new(self.channel.clone());
        let request = ApplyRequest {
            diff: Some(PbDescriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.to_string(),
                size: layer.size as i64,
                annotations: HashMap::new(),
            }),
            mounts,
            payloads: HashMap::new(),
            // Flush before commit, so a power cut cannot leave empty files behind a committed
            // snapshot (containerd 1.7.14+ and 2.x; older versions ignore the field).
            sync_fs: true,
        };
        let what = format!("layer {}", layer.digest);
        let applied = client
            .apply(self.request(request, Some(lease)))
            .await
            .map_err(|s| StoreError::rpc("Diff.Apply", &what, s))?
            .into_inner()
            .applied
            .ok_or_else(|| {
                StoreError::rpc(
                    "Diff.Apply",
                    &what,
                    tonic::Status::internal("no applied descriptor"),
                )
            })?;
        applied.digest.parse().map_err(|e| {
            StoreError::rpc(
                "Diff.Apply",
                &what,
                tonic::Status::internal(format!("invalid diff ID: {e}")),
            )
        })
    }
}

fn snapshot_what(snapshotter: &str, key: &str) -> String {
    format!("{snapshotter} snapshot {key}")
}
