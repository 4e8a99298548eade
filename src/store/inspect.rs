//! Reading containerd's state back to check it: blobs hashed as stored, ingests in progress,
//! what image records reach a blob, and removals for what cannot be trusted.

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::{
    DeleteContentRequest, DeleteImageRequest, ListNamespacesRequest, ListStatusesRequest,
    ReadContentRequest,
};

use super::{Store, StoreError};
use crate::digest::{Digest, Hasher};
use crate::image::labels::{self, GcRef};

/// What reading a blob back found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// containerd has no record of it.
    Absent,
    /// Recorded, but its bytes cannot be read (the file is gone from disk).
    Unreadable(String),
    /// Read in full: what the bytes hash to, and how many there were.
    Read {
        /// The digest of the bytes read, in the algorithm of the digest asked for.
        digest: Digest,
        /// Bytes read.
        size: u64,
    },
}

/// A committed blob read back in the chunks containerd sends (1 MiB at most each), so that a
/// reader holds no more than one at a time.
pub struct BlobChunks {
    stream: tonic::Streaming<containerd_client::services::v1::ReadContentResponse>,
    what: String,
}

impl BlobChunks {
    /// The next chunk; `None` at the end of the blob.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.stream.message().await {
            Ok(chunk) => Ok(chunk.map(|c| c.data)),
            Err(s) => Err(StoreError::rpc("Content.Read", &self.what, s)),
        }
    }
}

/// An ingest (an unfinished write) in the content store.
#[derive(Clone, Debug)]
pub struct Ingest {
    /// Its ref, e.g. `layer-sha256:…`.
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The blob's expected size, when the writer that opened the ingest gave one: containerd
    /// records a total only then (a writer may stream a blob of unknown length), and reports
    /// 0 otherwise.
    pub total: Option<u64>,
    /// Seconds since it was last written to, if containerd says.
    pub idle: Option<std::time::Duration>,
}

impl Store {
    /// Reads a blob back in full and hashes it, without holding it in memory.
    pub async fn hash_blob(&self, digest: &Digest) -> Result<Stored, StoreError> {
        if self.info(digest).await?.is_none() {
            return Ok(Stored::Absent);
        }
        let what = digest.to_string();
        let mut client = ContentClient::new(self.channel.clone());
        let request = ReadContentRequest {
            digest: what.clone(),
            offset: 0,
            size: 0,
        };
        let mut stream = match client.read(self.request(request, None)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Ok(Stored::Unreadable(s.message().to_string()))
            }
            Err(s) => return Err(StoreError::rpc("Content.Read", &what, s)),
        };
        let mut hasher = Hasher::new(digest.algorithm());
        let mut size = 0u64;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    size += chunk.data.len() as u64;
                    hasher.update(&chunk.data);
                }
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::NotFound => {
                    return Ok(Stored::Unreadable(s.message().to_string()))
                }
                Err(s) => return Err(StoreError::rpc("Content.Read", &what, s)),
            }
        }
        Ok(Stored::Read {
            digest: hasher.finish(),
            size,
        })
    }

    /// Starts reading a committed blob back, chunk by chunk.
    pub async fn read_chunks(&self, digest: &Digest) -> Result<BlobChunks, StoreError> {
        let what = digest.to_string();
        let mut client = ContentClient::new(self.channel.clone());
        let request = ReadContentRequest {
            digest: what.clone(),
            offset: 0,
            size: 0,
        };
        let stream = client
            .read(self.request(request, None))
            .await
            .map_err(|s| StoreError::rpc("Content.Read", &what, s))?
            .into_inner();
        Ok(BlobChunks { stream, what })
    }

    /// Removes a blob's record and bytes (containerd checks nothing: callers decide).
    pub async fn delete_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        let mut client = ContentClient::new(self.channel.clone());
        match client
            .delete(self.request(
                DeleteContentRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(StoreError::rpc("Content.Delete", digest.to_string(), s)),
        }
    }

    /// Adds everything reachable from `root` through containerd's own GC references (children
    /// content and snapshots, read from labels, so even a corrupt document's children are found)
    /// to `lease`, except `exclude`. While the lease lives, removing a bad blob and collecting
    /// garbage takes nothing else of the image away.
    pub async fn protect(
        &self,
        lease: &super::Lease,
        root: &Digest,
        exclude: &[&Digest],
    ) -> Result<usize, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut queue = vec![root.clone()];
        let mut added = 0;
        while let Some(digest) = queue.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let Some(info) = self.info(&digest).await? else {
                continue;
            };
            if !exclude.contains(&&digest) {
                self.lease_resource(lease, "content", &digest.to_string())
                    .await?;
                added += 1;
            }
            for (key, value) in &info.labels {
                match labels::gc_ref(key, value) {
                    Some(GcRef::Snapshot { snapshotter, key }) => {
                        self.lease_resource(lease, &format!("snapshots/{snapshotter}"), key)
                            .await?;
                        added += 1;
                    }
                    Some(GcRef::Content(child)) => queue.push(child),
                    None => {}
                }
            }
        }
        Ok(added)
    }

    /// Every namespace in this containerd.
    pub async fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let mut client = NamespacesClient::new(self.channel.clone());
        let listed = client
            .list(tonic::Request::new(ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| StoreError::rpc("Namespaces.List", "namespaces", s))?;
        Ok(listed
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// The same containerd, seen from another namespace (a name containerd listed).
    pub fn in_namespace(&self, namespace: &str) -> Store {
        Store {
            namespace: namespace.to_string(),
            ..self.clone()
        }
    }

    /// The image records of this namespace whose content reaches `digest` through containerd's
    /// GC references (a layer is reached through its manifest, a manifest through its index).
    pub async fn images_reaching(&self, digest: &Digest) -> Result<Vec<String>, StoreError> {
        let mut verdicts: std::collections::HashMap<Digest, bool> = Default::default();
        let mut names = Vec::new();
        for image in self.images().await? {
            let Some(target) = image.target.as_ref().map(|t| t.digest.clone()) else {
                continue;
            };
            let reaches = match verdicts.get(&target) {
                Some(v) => *v,
                None => {
                    let v = self.reaches(&target, digest).await?;
                    verdicts.insert(target, v);
                    v
                }
            };
            if reaches {
                names.push(image.name);
            }
        }
        Ok(names)
    }

    async fn reaches(&self, root: &Digest, wanted: &Digest) -> Result<bool, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut queue = vec![root.clone()];
        while let Some(digest) = queue.pop() {
            if &digest == wanted {
                return Ok(true);
            }
            if !seen.insert(digest.clone()) {
                continue;
            }
            let Some(info) = self.info(&digest).await? else {
                continue;
            };
            queue.extend(
                info.labels
                    .iter()
                    .filter(|(k, _)| k.starts_with(labels::GC_REF_CONTENT))
                    .filter_map(|(_, v)| v.parse::<Digest>().ok()),
            );
        }
        Ok(false)
    }

    /// Every ingest in the namespace.
    pub async fn ingests(&self) -> Result<Vec<Ingest>, StoreError> {
        let mut client = ContentClient::new(self.channel.clone());
        let listed = client
            .list_statuses(self.request(ListStatusesRequest { filters: vec![] }, None))
            .await
            .map_err(|s| StoreError::rpc("Content.ListStatuses", "ingests", s))?;
        let now = std::time::SystemTime::now();
        Ok(listed
            .into_inner()
            .statuses
            .into_iter()
            .map(|s| Ingest {
                idle: s.updated_at.and_then(|t| {
                    let at = std::time::UNIX_EPOCH
                        + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
                    now.duration_since(at).ok()
                }),
                reference: s.r#ref,
                offset: s.offset.max(0) as u64,
                total: u64::try_from(s.total).ok().filter(|t| *t > 0),
            })
            .collect())
    }

    /// Removes an image record (its content stays until containerd's GC finds it unreferenced).
    pub async fn delete_image(&self, name: &str) -> Result<(), StoreError> {
        let mut client = ImagesClient::new(self.channel.clone());
        match client
            .delete(self.request(
                DeleteImageRequest {
                    name: name.to_string(),
                    sync: false,
                    target: None,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(StoreError::rpc("Images.Delete", name, s)),
        }
    }
}
