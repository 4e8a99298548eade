//! The content store: blob existence, labels, and streamed writes with containerd's ingest refs.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, StatusRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{Lease, Store, StoreError};
use crate::digest::Digest;

/// Bytes per `Content.Write` message. containerd rejects messages over 16 MiB and pays a little
/// per message; 512 KiB, with one message queued per blob, keeps eight concurrent blobs under
/// ctr's memory at the same speed (measured with `benches/ctr_compare`: 1 MiB with four queued
/// messages peaked at 98 MiB RSS on W1, this at 48 MiB).
pub const WRITE_CHUNK: usize = 512 << 10;

/// The most data [`ContentWriter::set_message_size`] puts in one message: containerd's gRPC server
/// refuses messages over 16 MiB, and a message carries a little more than its data.
const MAX_WRITE_CHUNK: usize = 15 << 20;

/// What opening a write found.
pub enum Opened {
    /// The blob is already committed: nothing to fetch.
    Present,
    /// An ingest is open; write from [`ContentWriter::offset`].
    Writer(Box<ContentWriter>),
}

/// An open `Content.Write` stream for one blob.
pub struct ContentWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    responses: Option<JoinHandle<Result<Option<WriteContentResponse>, tonic::Status>>>,
    reference: String,
    digest: Digest,
    size: u64,
    offset: u64,
    buffer: Vec<u8>,
    /// Data bytes per message, [`WRITE_CHUNK`] unless set otherwise.
    chunk: usize,
    store: Store,
}

impl Store {
    /// Whether a blob is committed in this namespace (metadata only: it does not prove the
    /// file is on disk; verification reads it).
    pub async fn info(&self, digest: &Digest) -> Result<Option<Info>, StoreError> {
        let mut client = ContentClient::new(self.channel.clone());
        match client
            .info(self.request(
                InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(StoreError::rpc("Content.Info", digest.to_string(), s)),
        }
    }

    /// Reads a whole committed blob into memory, refusing blobs larger than `limit` bytes.
    pub async fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let what = digest.to_string();
        let mut client = ContentClient::new(self.channel.clone());
        let request = ReadContentRequest {
            digest: what.clone(),
            offset: 0,
            size: 0,
        };
        let mut stream = client
            .read(self.request(request, None))
            .await
            .map_err(|s| StoreError::rpc("Content.Read", &what, s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| StoreError::rpc("Content.Read", &what, s))?
        {
            out.extend_from_slice(&chunk.data);
            if out.len() as u64 > limit {
                return Err(StoreError::rpc(
                    "Content.Read",
                    &what,
                    tonic::Status::out_of_range(format!("blob is larger than {limit} bytes")),
                ));
            }
        }
        Ok(out)
    }

    /// Sets labels on a committed blob, leaving its other labels alone.
    pub async fn set_labels(
        &self,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let mut client = ContentClient::new(self.channel.clone());
        let request = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        client
            .update(self.request(request, None))
            .await
            .map_err(|s| StoreError::rpc("Content.Update", digest.to_string(), s))?;
        Ok(())
    }

    /// Opens an ingest named `reference` (containerd's ref naming, e.g. `layer-sha256:…`, so a
    /// concurrent pull of the same blob by CRI shares it) for a blob of `size` bytes.
    pub async fn open_writer(
        &self,
        lease: &Lease,
        reference: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Opened, StoreError> {
        // One message in flight per blob: containerd's acknowledgements pace us anyway.
        let (tx, rx) = mpsc::channel(1);
        // The stream must carry its first message before `write` is awaited: tonic resolves
        // the call only once containerd has answered it.
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total: size as i64,
            expected: digest.to_string(),
            ..Default::default()
        };
        let op = "Content.Write";
        if tx.send(stat).await.is_err() {
            return Err(StoreError::rpc(
                op,
                reference,
                tonic::Status::internal("stream closed"),
            ));
        }
        let mut client = ContentClient::new(self.channel.clone());
        let mut responses = match client
            .write(self.request(ReceiverStream::new(rx), Some(lease)))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(Opened::Present),
            Err(s) => return Err(StoreError::rpc(op, reference, s)),
        };
        let status = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(StoreError::rpc(
                    op,
                    reference,
                    tonic::Status::internal("containerd closed the write stream"),
                ))
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(Opened::Present),
            Err(s) => return Err(StoreError::rpc(op, reference, s)),
        };
        let mut offset = u64::try_from(status.offset).unwrap_or(0);
        if offset > size {
            // A stale ingest longer than the blob can only be garbage: start over.
            offset = 0;
        }
        Ok(Opened::Writer(Box::new(ContentWriter {
            tx,
            responses: Some(tokio::spawn(drain(responses))),
            reference: reference.to_string(),
            digest: digest.clone(),
            size,
            offset,
            buffer: Vec::with_capacity(WRITE_CHUNK),
            chunk: WRITE_CHUNK,
            store: self.clone(),
        })))
    }

    /// How far an ingest (an unfinished write, e.g. of an interrupted pull) has come: bytes
    /// written so far, or `None` if there is no such ingest.
    pub async fn ingest_offset(&self, reference: &str) -> Result<Option<u64>, StoreError> {
        let mut client = ContentClient::new(self.channel.clone());
        let request = StatusRequest {
            r#ref: reference.to_string(),
        };
        match client.status(self.request(request, None)).await {
            Ok(r) => Ok(r
                .into_inner()
                .status
                .map(|s| u64::try_from(s.offset).unwrap_or(0))),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(StoreError::rpc("Content.Status", reference, s)),
        }
    }

    /// Drops an ingest's partial bytes.
    pub async fn abort(&self, reference: &str) -> Result<(), StoreError> {
        let mut client = ContentClient::new(self.channel.clone());
        match client
            .abort(self.request(
                AbortRequest {
                    r#ref: reference.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(StoreError::rpc("Content.Abort", reference, s)),
        }
    }
}

/// Reads containerd's per-message acknowledgements so its send window never fills, keeping the
/// last one (the commit's).
async fn drain(
    mut responses: Streaming<WriteContentResponse>,
) -> Result<Option<WriteContentResponse>, tonic::Status> {
    let mut last = None;
    while let Some(r) = responses.message().await? {
        last = Some(r);
    }
    Ok(last)
}

impl ContentWriter {
    /// Where the ingest stands: the first byte still to send.
    pub fn offset(&self) -> u64 {
        self.offset + self.buffer.len() as u64
    }

    /// Sets the data bytes per `Content.Write` message (clamped to 1 byte ..= 15 MiB, under
    /// containerd's 16 MiB message limit); bytes already queued go out with the next message.
    /// The default is [`WRITE_CHUNK`].
    pub fn set_message_size(&mut self, bytes: usize) {
        self.chunk = bytes.clamp(1, MAX_WRITE_CHUNK);
    }

    /// The data bytes per `Content.Write` message.
    pub fn message_size(&self) -> usize {
        self.chunk
    }

    /// Starts the ingest over from byte 0 (the next message truncates it).
    pub fn restart(&mut self) {
        self.offset = 0;
        self.buffer.clear();
    }

    /// Queues bytes; full chunks go to containerd as they fill.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            let room = self.chunk.saturating_sub(self.buffer.len());
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() >= self.chunk {
                self.flush(WriteAction::Write, HashMap::new()).await?;
            }
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        action: WriteAction,
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk));
        let len = data.len() as u64;
        let message = WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: self.size as i64,
            expected: self.digest.to_string(),
            offset: self.offset as i64,
            data,
            labels,
        };
        if self.tx.send(message).await.is_err() {
            // containerd ended the stream: its status says why.
            return Err(self.finish_responses().await.err().unwrap_or_else(|| {
                StoreError::rpc(
                    "Content.Write",
                    &self.reference,
                    tonic::Status::internal("containerd closed the write stream"),
                )
            }));
        }
        self.offset += len;
        Ok(())
    }

    async fn finish_responses(&mut self) -> Result<Option<WriteContentResponse>, StoreError> {
        let Some(handle) = self.responses.take() else {
            return Ok(None);
        };
        match handle.await {
            Ok(Ok(last)) => Ok(last),
            Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => Ok(None),
            Ok(Err(s)) => Err(StoreError::rpc("Content.Write", &self.reference, s)),
            Err(join) => Err(StoreError::rpc(
                "Content.Write",
                &self.reference,
                tonic::Status::internal(format!("response reader failed: {join}")),
            )),
        }
    }

    /// Sends the rest and commits with `labels`; containerd checks size and digest again. On a
    /// mismatch the ingest is aborted, so the bad bytes are never resumed.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), StoreError> {
        self.flush(WriteAction::Commit, labels).await?;
        // Closing our side ends the stream once containerd has answered the commit.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        match self.finish_responses().await {
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(e, StoreError::Mismatch { .. }) {
                    let _ = self.store.abort(&self.reference).await;
                }
                Err(e)
            }
        }
    }

    /// Stops writing but keeps what was sent in the ingest, so a later attempt resumes from
    /// [`ContentWriter::offset`].
    pub async fn suspend(mut self) -> Result<(), StoreError> {
        if !self.buffer.is_empty() {
            self.flush(WriteAction::Write, HashMap::new()).await?;
        }
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        self.finish_responses().await.map(drop)
    }

    /// Gives up on this blob and drops the ingest's bytes.
    pub async fn abort(mut self) -> Result<(), StoreError> {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(h) = self.responses.take() {
            // The stream ends without a commit; containerd keeps the ingest until Abort.
            let _ = h.await;
        }
        self.store.abort(&self.reference).await
    }
}

/// containerd's ingest ref for a blob of `media_type` (its `remotes.MakeRefKey`).
pub fn ref_key(media_type: &str, digest: &Digest) -> String {
    let prefix = match media_type {
        crate::oci::OCI_MANIFEST | crate::oci::DOCKER_MANIFEST => "manifest",
        crate::oci::OCI_INDEX | crate::oci::DOCKER_LIST => "index",
        m if m.contains(".layer.") || m.contains(".rootfs.") => "layer",
        m if m.contains(".config.") || m == "application/vnd.docker.container.image.v1+json" => {
            "config"
        }
        _ => "unknown",
    };
    format!("{prefix}-{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_keys_match_containerd() {
        let d = Digest::sha256(b"");
        assert_eq!(
            ref_key(crate::oci::OCI_MANIFEST, &d),
            format!("manifest-{d}")
        );
        assert_eq!(ref_key(crate::oci::DOCKER_LIST, &d), format!("index-{d}"));
        assert_eq!(
            ref_key("application/vnd.docker.image.rootfs.diff.tar.gzip", &d),
            format!("layer-{d}")
        );
        assert_eq!(
            ref_key("application/vnd.oci.image.layer.v1.tar+zstd", &d),
            format!("layer-{d}")
        );
        assert_eq!(
            ref_key("application/vnd.docker.container.image.v1+json", &d),
            format!("config-{d}")
        );
        assert_eq!(
            ref_key("application/vnd.oci.image.config.v1+json", &d),
            format!("config-{d}")
        );
        assert_eq!(ref_key("text/plain", &d), format!("unknown-{d}"));
    }
}
