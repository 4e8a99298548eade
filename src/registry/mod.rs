//! The registry adapter: the OCI distribution API over HTTP, with token auth and verified
//! streaming of manifests and blobs.
//!
//! One [`RegistryClient`] serves every registry of a run: it keeps one connection pool per host
//! (HTTP/2 where the registry offers it) and one token cache.

mod auth;
pub mod challenge;
mod error;

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};

pub use auth::Realm;
pub use error::RegistryError;

use crate::digest::{Digest, Verifier};
use crate::oci::{self, Descriptor, Document};
use crate::reference::{Reference, Target, DOCKER_HUB};

/// The API host behind `docker.io`.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Hosts (`host:port` as in image names) spoken to over plain HTTP instead of HTTPS.
    pub plain_http: HashSet<String>,
    /// Idle connections kept per host.
    pub pool_per_host: Option<usize>,
}

/// A client for every registry of a run.
pub struct RegistryClient {
    http: reqwest::Client,
    options: Options,
    tokens: auth::TokenCache,
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

/// A blob body that yields verified chunks: the stream ends with an error instead of its last
/// item if the bytes do not match the descriptor's size and digest, so a consumer that commits
/// only after a clean end never commits bad bytes.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

impl RegistryClient {
    /// A client with its own connection pool and token cache.
    pub fn new(options: Options) -> Result<RegistryClient, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("prepull/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(options.pool_per_host.unwrap_or(32))
            .http2_adaptive_window(true)
            .build()
            .map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            http,
            options,
            tokens: auth::TokenCache::default(),
        })
    }

    fn base_url(&self, registry: &str) -> String {
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let scheme = if self.options.plain_http.contains(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
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

    /// Fetches a child manifest by the digest its index names.
    pub async fn manifest_by_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<FetchedManifest, RegistryError> {
        self.manifest_at(reference, &digest.to_string(), &Target::Digest(digest.clone()))
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
        let url = format!(
            "{}/v2/{repository}/manifests/{tag_or_digest}",
            self.base_url(registry)
        );
        let action = format!("GET manifest {tag_or_digest}");
        let mut response = self
            .send(reference, &action, Method::GET, &url, |h| {
                h.insert(ACCEPT, oci::MANIFEST_ACCEPT.parse().expect("static header"));
            })
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
        while let Some(chunk) = response.chunk().await.map_err(|e| network(registry, &action, e))? {
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

    /// Opens a blob for streaming from byte `offset` (0 for all of it). Chunks are verified
    /// against `descriptor` as they pass. Returns the offset the stream really starts at: a
    /// registry that ignores `Range` answers `200` with the whole blob, and the stream then
    /// starts at 0 and is verified in full.
    pub async fn blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<(BlobStream, u64), RegistryError> {
        let registry = reference.registry().to_string();
        let repository = reference.repository().to_string();
        let url = format!(
            "{}/v2/{repository}/blobs/{}",
            self.base_url(&registry),
            descriptor.digest
        );
        let action = format!("GET blob {}", descriptor.digest);
        let resume = offset > 0 && offset < descriptor.size;
        let response = self
            .send(reference, &action, Method::GET, &url, |h| {
                if resume {
                    if let Ok(v) = format!("bytes={offset}-").parse() {
                        h.insert(RANGE, v);
                    }
                }
            })
            .await?;
        let ranged = resume
            && response.status() == StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
        let (verifier, start) = if ranged {
            (
                Verifier::resumed(&descriptor.digest, descriptor.size, offset),
                offset,
            )
        } else {
            (Verifier::new(&descriptor.digest, descriptor.size), 0)
        };
        let stream = Box::pin(VerifiedBody {
            inner: Box::pin(response.bytes_stream()),
            verifier: Some(verifier),
            what: format!("blob {}", descriptor.digest),
            registry,
            repository,
            action,
        });
        Ok((stream, start))
    }

    /// Sends a request with the token for the repository's pull scope, learning the realm from
    /// a `401` and retrying once with a fresh token.
    async fn send(
        &self,
        reference: &Reference,
        action: &str,
        method: Method,
        url: &str,
        headers: impl Fn(&mut HeaderMap),
    ) -> Result<reqwest::Response, RegistryError> {
        let registry = reference.registry();
        let scope = format!("repository:{}:pull", reference.repository());
        let mut realm = self.tokens.realm_of(registry);
        for attempt in 0..2 {
            let mut h = HeaderMap::new();
            headers(&mut h);
            if let Some(realm) = &realm {
                let token = self.tokens.token(&self.http, registry, realm, &scope).await?;
                h.insert(
                    AUTHORIZATION,
                    token.header().parse().map_err(|_| RegistryError::Token {
                        registry: registry.to_string(),
                        realm: realm.realm.clone(),
                        detail: "token is not a valid header value".into(),
                    })?,
                );
            }
            let response = self
                .http
                .request(method.clone(), url)
                .headers(h)
                .send()
                .await
                .map_err(|e| network(registry, action, e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenges = challenge::parse(
                    response
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                if let Some(r) = challenges.iter().find_map(Realm::from_challenge) {
                    if let Some(old) = &realm {
                        self.tokens.invalidate(old, &scope).await;
                    }
                    self.tokens.remember_realm(registry, r.clone());
                    realm = Some(r);
                    continue;
                }
                let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    repository: reference.repository().to_string(),
                    detail: if schemes.is_empty() {
                        "401 without a usable challenge".to_string()
                    } else {
                        format!("registry asks for {} credentials", schemes.join("/"))
                    },
                });
            }
            return Err(status_error(reference, action, response).await);
        }
        Err(RegistryError::Unauthorized {
            registry: registry.to_string(),
            repository: reference.repository().to_string(),
            detail: "registry refused a freshly issued token".to_string(),
        })
    }
}

fn network(registry: &str, action: &str, e: reqwest::Error) -> RegistryError {
    RegistryError::Network {
        registry: registry.to_string(),
        action: action.to_string(),
        // URLs of redirected blobs may carry signatures: keep them out of messages.
        source: e.without_url(),
    }
}

fn corrupt(
    registry: &str,
    repository: &str,
    what: &str,
    source: crate::digest::VerifyError,
) -> RegistryError {
    RegistryError::Corrupt {
        registry: registry.to_string(),
        repository: repository.to_string(),
        what: what.to_string(),
        source,
    }
}

async fn status_error(
    reference: &Reference,
    action: &str,
    response: reqwest::Response,
) -> RegistryError {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let status = response.status().as_u16();
    // Error bodies are small; cap what we read anyway.
    let body = response.bytes().await.unwrap_or_default();
    let first = serde_json::from_slice::<Errors>(&body[..body.len().min(64 << 10)])
        .ok()
        .and_then(|e| e.errors.into_iter().next());
    let (code, message) = first.map_or((None, None), |e| (e.code, e.message));
    if status == 401 || status == 403 {
        return RegistryError::Unauthorized {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            detail: format!(
                "HTTP {status}{}{}",
                code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(),
                message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
            ),
        };
    }
    RegistryError::Status {
        registry: reference.registry().to_string(),
        repository: reference.repository().to_string(),
        action: action.to_string(),
        status,
        code,
        message,
    }
}

/// A blob body checked chunk by chunk; see [`BlobStream`].
struct VerifiedBody {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// `None` once the stream has ended (cleanly or not).
    verifier: Option<Verifier>,
    registry: String,
    repository: String,
    action: String,
    what: String,
}

impl VerifiedBody {
    fn fail(&mut self, source: crate::digest::VerifyError) -> RegistryError {
        self.verifier = None;
        corrupt(&self.registry, &self.repository, &self.what, source)
    }
}

impl Stream for VerifiedBody {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        let Some(verifier) = this.verifier.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => match verifier.update(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(e) => Poll::Ready(Some(Err(this.fail(e)))),
            },
            Poll::Ready(Some(Err(e))) => {
                this.verifier = None;
                Poll::Ready(Some(Err(network(&this.registry, &this.action, e))))
            }
            Poll::Ready(None) => {
                let verifier = this.verifier.take().expect("checked above");
                match verifier.finish() {
                    Ok(()) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(this.fail(e)))),
                }
            }
        }
    }
}
