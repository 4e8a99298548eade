//! Leases: keep everything a pull writes alive until the image record roots it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, ListRequest, Resource,
};

use super::{Store, StoreError};
use crate::image::labels;

/// A containerd lease held by a pull.
#[derive(Clone, Debug)]
pub struct Lease {
    id: String,
}

impl Lease {
    /// The lease ID sent in the `containerd-lease` header.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A lease as containerd lists it.
#[derive(Clone, Debug)]
pub struct ListedLease {
    /// The lease.
    pub lease: Lease,
    /// Its labels (`containerd.io/gc.expire` among them).
    pub labels: HashMap<String, String>,
}

impl Store {
    /// Creates a lease that containerd drops by itself after `expire`, so a crashed pull never
    /// pins content forever.
    pub async fn create_lease(&self, purpose: &str, expire: Duration) -> Result<Lease, StoreError> {
        self.create_labelled_lease(purpose, expire, HashMap::new())
            .await
    }

    /// [`Store::create_lease`] with the labels `with` besides its expiry: who holds it, and for what.
    pub async fn create_labelled_lease(
        &self,
        purpose: &str,
        expire: Duration,
        mut with: HashMap<String, String>,
    ) -> Result<Lease, StoreError> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id = format!("prepull-{purpose}-{nanos:x}-{:08x}", rand::random::<u32>());
        let expiry = humantime::format_rfc3339_seconds(SystemTime::now() + expire).to_string();
        let mut client = LeasesClient::new(self.channel.clone());
        with.insert(labels::GC_EXPIRE.to_string(), expiry);
        let request = CreateRequest {
            id: id.clone(),
            labels: with,
        };
        client
            .create(self.request(request, None))
            .await
            .map_err(|status| StoreError::rpc("Leases.Create", &id, status))?;
        Ok(Lease { id })
    }

    /// Deletes a lease; what it protected is then kept only by references from image records.
    pub async fn delete_lease(&self, lease: Lease) -> Result<(), StoreError> {
        self.delete_lease_with(lease, false).await
    }

    /// Deletes a lease and waits for containerd's garbage collection to run, so the disk space
    /// only it held is free when this returns.
    pub async fn delete_lease_collecting(&self, lease: Lease) -> Result<(), StoreError> {
        self.delete_lease_with(lease, true).await
    }

    /// The leases in the namespace that carry `label`, whatever its value.
    pub async fn leases_with_label(&self, label: &str) -> Result<Vec<ListedLease>, StoreError> {
        let mut client = LeasesClient::new(self.channel.clone());
        let request = ListRequest {
            filters: vec![format!("labels.\"{label}\"")],
        };
        let listed = client
            .list(self.request(request, None))
            .await
            .map_err(|s| StoreError::rpc("Leases.List", label, s))?;
        Ok(listed
            .into_inner()
            .leases
            .into_iter()
            .map(|l| ListedLease {
                lease: Lease { id: l.id },
                labels: l.labels,
            })
            .collect())
    }

    /// Adds a resource to a lease: `("content", digest)` or
    /// (`"snapshots/<snapshotter>"`, key).
    pub async fn lease_resource(
        &self,
        lease: &Lease,
        kind: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let mut client = LeasesClient::new(self.channel.clone());
        client
            .add_resource(self.request(
                AddResourceRequest {
                    id: lease.id.clone(),
                    resource: Some(Resource {
                        id: id.to_string(),
                        r#type: kind.to_string(),
                    }),
                },
                None,
            ))
            .await
            .map_err(|s| StoreError::rpc("Leases.AddResource", id, s))?;
        Ok(())
    }

    /// Runs containerd's garbage collection to completion (by deleting a fresh lease with
    /// `sync`), so files of deleted blobs are really gone before the same digest is written
    /// again: containerd reuses a blob file that is still on disk.
    pub async fn collect_garbage(&self) -> Result<(), StoreError> {
        let lease = self
            .create_lease("collect-garbage", std::time::Duration::from_secs(60))
            .await?;
        self.delete_lease_with(lease, true).await
    }

    async fn delete_lease_with(&self, lease: Lease, sync: bool) -> Result<(), StoreError> {
        let mut client = LeasesClient::new(self.channel.clone());
        let request = DeleteRequest {
            id: lease.id.clone(),
            sync,
        };
        match client.delete(self.request(request, None)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(StoreError::rpc("Leases.Delete", lease.id, status)),
        }
    }
}
