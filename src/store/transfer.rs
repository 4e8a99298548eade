//! containerd's transfer service (containerd 2.x; prepull does not use 1.7's): containerd
//! fetching an image's blobs itself and unpacking them as they arrive, instead of prepull
//! streaming every byte through `Content.Write`.
//!
//! What prepull hands over is narrow: the image by digest (so containerd fetches exactly what
//! prepull resolved and checked), the hosts directory prepull reads its mirrors from, the
//! scheme of a plain-HTTP registry, and, over a stream containerd calls back on, one answer per
//! host for credentials, decided by prepull before the transfer starts (see
//! [`TransferAuth`]). containerd verifies every blob's digest as it commits it and every
//! layer's diff ID as it unpacks it.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::to_any;
use containerd_client::types::transfer::{
    AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, RegistryResolver,
    UnpackConfiguration,
};
use containerd_client::types::Platform as PbPlatform;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Lease, Opened, Store, StoreError};
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::platform::Platform;

/// A layer of nothing: an empty tar archive (its two end-of-archive blocks).
const EMPTY_LAYER: [u8; 1024] = [0; 1024];
const EMPTY_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// What containerd is given for one host when it asks: the secret kinds its resolver takes.
#[derive(Clone, PartialEq, Eq)]
pub enum TransferAuth {
    /// A username and password, exchanged by containerd at the host's token realm or sent as
    /// Basic.
    Credentials {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (a Docker config's `identitytoken`).
    Refresh(String),
}

impl std::fmt::Debug for TransferAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferAuth::Credentials { username, .. } => {
                write!(f, "Credentials({username}:***)")
            }
            TransferAuth::Refresh(_) => f.write_str("Refresh(***)"),
        }
    }
}

/// One image for containerd to fetch and unpack.
#[derive(Debug)]
pub struct TransferPull<'a> {
    /// `registry/repository@sha256:…`: the platform manifest, by digest.
    pub reference: &'a str,
    /// containerd's hosts directory (`certs.d`), as containerd sees it.
    pub hosts_dir: Option<&'a Path>,
    /// `http` for a registry spoken to over plain HTTP without a `hosts.toml` saying so.
    pub default_scheme: Option<&'a str>,
    /// The platform to unpack for.
    pub platform: &'a Platform,
    /// The snapshotter to unpack into, or `None` to fetch only (a containerd whose transfer
    /// service is not configured to unpack into the snapshotter refuses to unpack at all).
    pub snapshotter: Option<&'a str>,
    /// The image record containerd writes when it is done (see [`crate::pull`] on why it is
    /// not one CRI finds pods' images by).
    pub record: &'a str,
    /// Per host (`host[:port]`, as containerd names it), what to answer when containerd asks
    /// for credentials; hosts not in it get no credentials.
    pub auth: HashMap<String, TransferAuth>,
}

impl Store {
    /// Has containerd fetch `pull.reference` and unpack it, under `lease` (which holds what it
    /// writes, content and snapshots, until the caller's records root them). Fails with
    /// [`StoreError::Unsupported`] when containerd has no transfer service (1.6).
    pub async fn transfer_pull(
        &self,
        lease: &Lease,
        pull: TransferPull<'_>,
    ) -> Result<(), StoreError> {
        let what = pull.reference.to_string();
        let fail = |status: tonic::Status| match status.code() {
            tonic::Code::Unimplemented => StoreError::Unsupported {
                op: "Transfer.Transfer",
                what: what.clone(),
                message: status.message().to_string(),
            },
            _ => StoreError::rpc("Transfer.Transfer", &what, status),
        };
        let auth_stream = if pull.auth.is_empty() {
            None
        } else {
            Some(
                self.answer_credentials(lease, pull.auth.clone())
                    .await
                    .map_err(&fail)?,
            )
        };
        let resolver = RegistryResolver {
            auth_stream: auth_stream
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default(),
            host_dir: pull
                .hosts_dir
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
            default_scheme: pull.default_scheme.unwrap_or_default().to_string(),
            ..RegistryResolver::default()
        };
        let platform = PbPlatform {
            os: pull.platform.os().to_string(),
            architecture: pull.platform.architecture().to_string(),
            variant: pull.platform.variant().unwrap_or_default().to_string(),
            os_version: String::new(),
        };
        let request = TransferRequest {
            source: Some(to_any(&OciRegistry {
                reference: pull.reference.to_string(),
                resolver: Some(resolver),
            })),
            destination: Some(to_any(&ImageStore {
                name: pull.record.to_string(),
                platforms: vec![platform.clone()],
                unpacks: pull
                    .snapshotter
                    .map(|snapshotter| UnpackConfiguration {
                        platform: Some(platform),
                        snapshotter: snapshotter.to_string(),
                    })
                    .into_iter()
                    .collect(),
                ..ImageStore::default()
            })),
            options: Some(TransferOptions::default()),
        };
        let mut client = TransferClient::new(self.channel.clone());
        let result = client.transfer(self.request(request, Some(lease))).await;
        if let Some(stream) = auth_stream {
            stream.answering.abort();
        }
        result.map(drop).map_err(fail)
    }

    /// Opens the stream containerd asks for credentials on, and answers each request from
    /// `auth` until the stream closes.
    async fn answer_credentials(
        &self,
        lease: &Lease,
        auth: HashMap<String, TransferAuth>,
    ) -> Result<AuthStream, tonic::Status> {
        let id = format!("prepull-credentials-{:016x}", rand::random::<u64>());
        let (tx, rx) = mpsc::channel(4);
        let init = to_any(&StreamInit { id: id.clone() });
        tx.send(init)
            .await
            .map_err(|_| tonic::Status::internal("credential stream closed"))?;
        let mut client = StreamingClient::new(self.channel.clone());
        let mut inbound = client
            .stream(self.request(ReceiverStream::new(rx), Some(lease)))
            .await?
            .into_inner();
        // containerd acknowledges once the stream is registered under its ID.
        inbound.message().await?;
        let answering = tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Ok(asked) = AuthRequest::decode(message.value.as_slice()) else {
                    tracing::warn!(
                        type_url = message.type_url,
                        "containerd sent something else than a credential request"
                    );
                    break;
                };
                let answer = auth_response(auth.get(&asked.host));
                tracing::debug!(
                    host = asked.host,
                    credentials = answer.auth_type != AuthType::None as i32,
                    "containerd asked for credentials"
                );
                if tx.send(to_any(&answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(AuthStream { id, answering })
    }
}

impl Store {
    /// Flushes `snapshotter`'s filesystem to disk (`syncfs`), through containerd, which alone
    /// can see that filesystem: an empty layer is applied with `sync_fs` to a throwaway
    /// snapshot, whose filesystem is the one every snapshot of `snapshotter` is on.
    /// containerd before 1.7.14 ignores `sync_fs`: there this only costs a few calls.
    pub async fn sync_snapshotter(
        &self,
        lease: &Lease,
        snapshotter: &str,
    ) -> Result<(), StoreError> {
        let layer = Descriptor {
            media_type: EMPTY_LAYER_MEDIA_TYPE.to_string(),
            digest: Digest::sha256(&EMPTY_LAYER),
            size: EMPTY_LAYER.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        };
        // A ref of its own: concurrent pulls each write the empty layer (the first commit wins,
        // the others find it present) instead of waiting on one ref's lock.
        let key = format!("prepull-empty-layer-{:016x}", rand::random::<u64>());
        if let Opened::Writer(mut w) = self
            .open_writer(lease, &key, &layer.digest, layer.size)
            .await?
        {
            w.restart();
            w.write(&EMPTY_LAYER).await?;
            match w.commit(HashMap::new()).await {
                // Another pull committed it meanwhile.
                Err(StoreError::Rpc { status, .. })
                    if status.code() == tonic::Code::AlreadyExists => {}
                other => other?,
            }
        }
        let key = format!("prepull-sync-{:016x}", rand::random::<u64>());
        let Some(mounts) = self
            .prepare_snapshot(lease, snapshotter, &key, "", HashMap::new())
            .await?
        else {
            return Ok(());
        };
        let applied = self.apply_layer(lease, &layer, mounts).await;
        let removed = self.remove_snapshot(snapshotter, &key).await;
        applied.and(removed).map(drop)
    }
}

/// The credential stream of one transfer: its ID, and the task answering on it.
struct AuthStream {
    id: String,
    answering: tokio::task::JoinHandle<()>,
}

/// The answer for a host: its credentials, or none (containerd then goes on anonymously).
fn auth_response(auth: Option<&TransferAuth>) -> AuthResponse {
    match auth {
        Some(TransferAuth::Credentials { username, password }) => AuthResponse {
            auth_type: AuthType::Credentials as i32,
            username: username.clone(),
            secret: password.clone(),
            ..AuthResponse::default()
        },
        Some(TransferAuth::Refresh(token)) => AuthResponse {
            auth_type: AuthType::Refresh as i32,
            secret: token.clone(),
            ..AuthResponse::default()
        },
        None => AuthResponse::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let creds = TransferAuth::Credentials {
            username: "robot".into(),
            password: "hunter2".into(),
        };
        let refresh = TransferAuth::Refresh("refresh-secret".into());
        let shown = format!("{creds:?} {refresh:?}");
        assert!(shown.contains("robot"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("refresh-secret"),
            "{shown}"
        );
    }

    #[test]
    fn hosts_without_credentials_get_an_empty_answer() {
        assert_eq!(auth_response(None).auth_type, AuthType::None as i32);
        let refresh = auth_response(Some(&TransferAuth::Refresh("t".into())));
        assert_eq!(refresh.auth_type, AuthType::Refresh as i32);
        assert_eq!(refresh.secret, "t");
    }
}
