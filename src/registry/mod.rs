//! The registry adapter: the OCI distribution API over HTTP, with token auth and verified
//! streaming of manifests and blobs.
//!
//! One [`RegistryClient`] serves every registry of a run: it keeps one connection pool per host
//! (HTTP/2 where the registry offers it) and one token cache. This file is its face: resolve a
//! tag, fetch a manifest, open a blob. Behind it, one file per concern:
//! - `request`: sending over a registry's endpoints (mirrors first), with retries and
//!   `Retry-After`, and error statuses explained;
//! - `authorize`: which credential a request carries and what a `401`/`403` means, one request's
//!   way through the candidates being an [`authorize::AuthAttempt`]; `token` and [`challenge`]:
//!   bearer tokens and `WWW-Authenticate` parsing; `pull_scope`: credentials looked up once per
//!   pull;
//! - `blob`: verified blob streams, `Range` resume and foreign layer URLs;
//! - `hosts`: containerd's `hosts.toml` (mirrors, capabilities, per-host settings);
//!   `unreachable`: mirrors skipped while they do not answer;
//! - `tls`: TLS settings and files, and what a TLS failure means and how to fix it;
//! - `error`: [`RegistryError`], its kinds and whether to retry.
//!
//! How often anything is tried again is [`crate::retry`]'s to say.

mod authorize;
mod blob;
pub mod challenge;
mod error;
mod hosts;
mod pull_scope;
mod request;
mod tls;
mod token;
mod unreachable;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;

pub use blob::BlobStream;
pub use error::RegistryError;
pub use hosts::{Endpoint, Hosts, HostsError};
pub use pull_scope::PullScope;
pub use tls::Tls;
pub use token::Realm;

use crate::credentials::CredentialSource;
use crate::digest::Digest;
use crate::oci::{self, Descriptor, Document};
use crate::reference::{Reference, Target};
use request::{client_builder, network, Need, Op};

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where each registry is reached: mirrors, plain HTTP, TLS settings.
    pub hosts: Hosts,
    /// Idle connections kept per host.
    pub pool_per_host: Option<usize>,
}

/// A client for every registry of a run.
pub struct RegistryClient {
    http: reqwest::Client,
    /// Clients for endpoints with their own TLS settings or `dial_timeout`, built on first use.
    endpoint_clients: Mutex<HashMap<(Tls, Option<Duration>), reqwest::Client>>,
    options: Options,
    /// Schemes, tokens and credentials: what authorizing requests remembers.
    auth: authorize::Authorizer,
    /// Last `ratelimit-remaining` per registry.
    rate_limits: Mutex<HashMap<String, u64>>,
    /// Mirrors that did not answer lately, skipped while their back-off runs.
    unreachable: unreachable::Unreachable,
}

/// A manifest or index as served, verified against the digest it was asked for (or, for a tag,
/// against `Docker-Content-Digest` when the registry sent one).
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The exact bytes, which containerd stores as they are.
    pub bytes: Bytes,
    /// The parsed document.
    pub document: Document,
}

impl FetchedManifest {
    /// The media type the document declares.
    pub fn media_type(&self) -> &str {
        match &self.document {
            Document::Index(_, m) | Document::Manifest(_, m) => m,
        }
    }

    /// A descriptor for this document.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type().to_string(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        }
    }
}

impl RegistryClient {
    /// A client with its own connection pool and token cache, authorizing with `credentials`.
    pub fn new(
        options: Options,
        credentials: Arc<dyn CredentialSource>,
    ) -> Result<RegistryClient, RegistryError> {
        let http = client_builder(&options)
            .build()
            .map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            http,
            endpoint_clients: Mutex::default(),
            options,
            auth: authorize::Authorizer::new(credentials),
            rate_limits: Mutex::default(),
            unreachable: unreachable::Unreachable::default(),
        })
    }

    /// Starts a pull of `reference`: until the scope is dropped, the credentials for each host
    /// are looked up once (a credential-provider plugin runs once per host and pull, however many
    /// requests the pull makes), as containerd and the kubelet look them up per pull.
    pub fn begin_pull(&self, reference: &Reference) -> PullScope {
        self.auth.begin_pull(reference)
    }

    /// Fetches the manifest or index `reference` points at, verified.
    pub async fn manifest(&self, reference: &Reference) -> Result<FetchedManifest, RegistryError> {
        let tag_or_digest = match reference.target() {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        };
        self.manifest_at(reference, &tag_or_digest, reference.target())
            .await
    }

    /// Resolves a tag to the digest of what it points at with a `HEAD` request, which Docker
    /// Hub does not count against its pull quota. `None` when the registry cannot say (no
    /// `Docker-Content-Digest`, or `HEAD` not allowed): the caller then GETs the tag.
    pub async fn resolve(&self, reference: &Reference) -> Result<Option<Digest>, RegistryError> {
        let Target::Tag(tag) = reference.target() else {
            return Ok(match reference.target() {
                Target::Digest(d) => Some(d.clone()),
                Target::Tag(_) => None,
            });
        };
        let action = format!("HEAD manifest {tag}");
        let suffix = format!("manifests/{tag}");
        match self
            .send(
                reference,
                Op {
                    action: &action,
                    method: Method::HEAD,
                    suffix: &suffix,
                    need: Need::Resolve,
                },
                |h| {
                    h.insert(ACCEPT, HeaderValue::from_static(oci::MANIFEST_ACCEPT));
                },
            )
            .await
        {
            Ok(response) => Ok(response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            // HEAD answers carry no error body: let a GET fetch the registry's explanation.
            Err(RegistryError::Status {
                status: 404 | 405 | 400 | 501,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fetches a child manifest by the digest its index names.
    pub async fn manifest_by_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<FetchedManifest, RegistryError> {
        self.manifest_at(
            reference,
            &digest.to_string(),
            &Target::Digest(digest.clone()),
        )
        .await
    }

    async fn manifest_at(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        target: &Target,
    ) -> Result<FetchedManifest, RegistryError> {
        let registry = reference.registry();
        let repository = reference.repository();
        let action = format!("GET manifest {tag_or_digest}");
        let suffix = format!("manifests/{tag_or_digest}");
        let need = match target {
            Target::Tag(_) => Need::Resolve,
            Target::Digest(_) => Need::Pull,
        };
        let mut response = self
            .send(
                reference,
                Op {
                    action: &action,
                    method: Method::GET,
                    suffix: &suffix,
                    need,
                },
                |h| {
                    h.insert(ACCEPT, HeaderValue::from_static(oci::MANIFEST_ACCEPT));
                },
            )
            .await?;

        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        let too_large = || RegistryError::TooLarge {
            registry: registry.to_string(),
            repository: repository.to_string(),
            reference: tag_or_digest.to_string(),
            limit: oci::MAX_MANIFEST_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > oci::MAX_MANIFEST_BYTES)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| network(registry, &action, e))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > oci::MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
        }

        let digest = match target {
            Target::Digest(want) => {
                let got = Digest::of(want.algorithm(), &body);
                if &got != want {
                    return Err(RegistryError::Corrupt {
                        registry: registry.to_string(),
                        repository: repository.to_string(),
                        what: format!("manifest {tag_or_digest}"),
                        source: crate::digest::VerifyError::Mismatch {
                            expected: want.clone(),
                            got,
                        },
                    });
                }
                got
            }
            Target::Tag(_) => {
                let header: Option<Digest> = header_digest.as_deref().and_then(|h| h.parse().ok());
                let computed = match &header {
                    Some(h) => Digest::of(h.algorithm(), &body),
                    None => Digest::sha256(&body),
                };
                if let Some(h) = header.filter(|h| h != &computed) {
                    return Err(RegistryError::DigestHeader {
                        registry: registry.to_string(),
                        repository: repository.to_string(),
                        reference: tag_or_digest.to_string(),
                        header: h.to_string(),
                        computed,
                    });
                }
                computed
            }
        };
        let document = Document::parse(&body, content_type.as_deref()).map_err(|source| {
            RegistryError::Document {
                registry: registry.to_string(),
                repository: repository.to_string(),
                reference: tag_or_digest.to_string(),
                source,
            }
        })?;
        Ok(FetchedManifest {
            digest,
            bytes: Bytes::from(body),
            document,
        })
    }
}

/// Locks one of the client's maps. A panic while holding one cannot leave it inconsistent (single
/// inserts and removals), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
