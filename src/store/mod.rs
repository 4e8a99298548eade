//! The containerd adapter: content, leases and image records over containerd's gRPC API.
//!
//! Every call carries the `containerd-namespace` header and, while a pull runs, the
//! `containerd-lease` header, so nothing written mid-pull can be garbage-collected before the
//! image record that roots it exists.

mod containers;
mod content;
mod error;
mod graph;
mod images;
mod inspect;
mod introspect;
mod leases;
mod snapshots;
mod transfer;

use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub use containers::ContainerRecord;
pub use content::{ref_key, ContentWriter, Opened, WRITE_CHUNK};
pub use error::StoreError;
pub use graph::{Chosen, GraphError};
pub use images::{ImageRecord, StoredImage};
pub use inspect::{BlobChunks, Ingest, Stored};
pub use leases::{Lease, ListedLease};
pub use snapshots::{view_dirs, SnapshotInfo, SnapshotKind, SnapshotView, ViewDirs};
pub use transfer::{TransferAuth, TransferPull};

/// A connection to one containerd namespace.
#[derive(Clone)]
pub struct Store {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Store {
    /// Connects to containerd's socket and checks that it answers.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Store, StoreError> {
        if namespace.is_empty()
            || !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(StoreError::InvalidNamespace(namespace.to_string()));
        }
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| StoreError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        let store = Store {
            channel,
            namespace: namespace.to_string(),
            socket: socket.to_path_buf(),
        };
        store.version().await?;
        Ok(store)
    }

    /// The namespace this store writes to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The socket this store talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, StoreError> {
        let mut client = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel.clone(),
        );
        let response = client
            .version(self.request((), None))
            .await
            .map_err(|status| {
                StoreError::rpc("Version", self.socket.display().to_string(), status)
            })?;
        Ok(response.into_inner().version)
    }

    /// Wraps a message with the namespace and optional lease headers.
    fn request<T>(&self, message: T, lease: Option<&Lease>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let md = request.metadata_mut();
        if let Ok(ns) = MetadataValue::try_from(self.namespace.as_str()) {
            md.insert("containerd-namespace", ns);
        }
        if let Some(lease) = lease {
            if let Ok(id) = MetadataValue::try_from(lease.id()) {
                md.insert("containerd-lease", id);
            }
        }
        request
    }
}
