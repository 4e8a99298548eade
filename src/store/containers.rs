//! containerd's container records: which snapshot each container runs on, so that nothing a
//! container uses is removed from under it.

use std::collections::HashMap;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::ListContainersRequest;

use super::{Store, StoreError};

/// A container record: its ID, the snapshot its root filesystem is, and its labels (CRI puts
/// the pod's name and namespace there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container's ID (CRI's container or sandbox ID).
    pub id: String,
    /// The snapshotter holding its snapshot.
    pub snapshotter: String,
    /// Its snapshot's key (empty: it has none).
    pub snapshot_key: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

impl Store {
    /// Every container record in the namespace.
    pub async fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let mut client = ContainersClient::new(self.channel.clone());
        let listed = client
            .list(self.request(ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(|s| StoreError::rpc("Containers.List", self.namespace.clone(), s))?;
        Ok(listed
            .into_inner()
            .containers
            .into_iter()
            .map(|c| ContainerRecord {
                id: c.id,
                snapshotter: c.snapshotter,
                snapshot_key: c.snapshot_key,
                labels: c.labels,
            })
            .collect())
    }
}
