//! The registry adapter: the OCI distribution API over HTTP, with token auth and verified
//! streaming of manifests and blobs.
//!
//! One [`RegistryClient`] serves every registry of a run: it keeps one connection pool per host
//! (HTTP/2 where the registry offers it) and one token cache.

mod blob;
pub mod challenge;
mod error;
mod hosts;
mod pull_scope;
mod tls;
mod token;
mod unreachable;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};

pub use blob::BlobStream;
pub use error::RegistryError;
pub use hosts::{Endpoint, Hosts, HostsError};
pub use pull_scope::PullScope;
pub use tls::Tls;
pub use token::Realm;

use crate::credentials::{Credential, CredentialSource, Secret};
use crate::digest::Digest;
use crate::oci::{self, Descriptor, Document};
use crate::reference::{Reference, Target};
use crate::retry::{self, Backoff};

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
    tokens: token::TokenCache,
    credentials: Arc<dyn CredentialSource>,
    /// How each registry authorizes, learned from its first `401`.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// The [`Credential::id`] that worked last, per (registry, repository).
    working: Mutex<HashMap<(String, String), u64>>,
    /// The credentials' [`CredentialSource::generation`] the caches were filled under.
    generation: std::sync::atomic::AtomicU64,
    /// Last `ratelimit-remaining` per registry.
    rate_limits: Mutex<HashMap<String, u64>>,
    /// Mirrors that did not answer lately, skipped while their back-off runs.
    unreachable: unreachable::Unreachable,
    /// Credentials found for the pulls under way.
    pulls: Arc<pull_scope::PullCredentials>,
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
            tokens: token::TokenCache::default(),
            credentials,
            schemes: Mutex::default(),
            working: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            rate_limits: Mutex::default(),
            unreachable: unreachable::Unreachable::default(),
            pulls: Arc::default(),
        })
    }

    /// Starts a pull of `reference`: until the scope is dropped, the credentials for each host
    /// are looked up once (a credential-provider plugin runs once per host and pull, however many
    /// requests the pull makes), as containerd and the kubelet look them up per pull.
    pub fn begin_pull(&self, reference: &Reference) -> PullScope {
        self.pulls.begin(reference.name())
    }

    /// The endpoints that may serve `need` for the reference's registry, mirrors first.
    fn endpoints(&self, reference: &Reference, need: Need) -> Result<Vec<Endpoint>, RegistryError> {
        let all = self
            .options
            .hosts
            .endpoints(reference.registry())
            .map_err(|source| RegistryError::Hosts {
                registry: reference.registry().to_string(),
                source,
            })?;
        let usable: Vec<Endpoint> = all
            .into_iter()
            .filter(|e| match need {
                Need::Resolve => e.resolve,
                Need::Pull => e.pull,
            })
            .collect();
        if usable.is_empty() {
            return Err(RegistryError::Hosts {
                registry: reference.registry().to_string(),
                source: HostsError::Invalid {
                    path: self.options.hosts.dir.clone().unwrap_or_default(),
                    message: format!("no host has the {need:?} capability"),
                },
            });
        }
        Ok(usable)
    }

    /// The HTTP client for an endpoint's TLS settings and connect timeout.
    fn client_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, RegistryError> {
        if endpoint.tls == Tls::default() && endpoint.dial_timeout.is_none() {
            return Ok(self.http.clone());
        }
        let key = (endpoint.tls.clone(), endpoint.dial_timeout);
        if let Some(c) = lock(&self.endpoint_clients).get(&key) {
            return Ok(c.clone());
        }
        let mut builder = endpoint.tls.configure(client_builder(&self.options))?;
        if let Some(timeout) = endpoint.dial_timeout {
            builder = builder.connect_timeout(timeout);
        }
        let client = builder.build().map_err(RegistryError::Client)?;
        lock(&self.endpoint_clients).insert(key, client.clone());
        Ok(client)
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
                Need::Resolve,
                &action,
                Method::HEAD,
                &suffix,
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
            .send(reference, need, &action, Method::GET, &suffix, |h| {
                h.insert(ACCEPT, HeaderValue::from_static(oci::MANIFEST_ACCEPT));
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

    /// Sends a request authorized for the repository's pull scope.
    ///
    /// The registry's scheme (Bearer realm or Basic) is learned from its first `401` and
    /// remembered. Matching credentials are tried in keyring order (anonymous when none match)
    /// until one is accepted, and the one that worked is used first from then on. A token that
    /// stops working mid-pull (expired, or ECR's `403 … expired`) is renewed once.
    async fn send(
        &self,
        reference: &Reference,
        need: Need,
        action: &str,
        method: Method,
        suffix: &str,
        headers: impl Fn(&mut HeaderMap),
    ) -> Result<reqwest::Response, RegistryError> {
        let endpoints = self.endpoints(reference, need)?;
        let last = endpoints.len() - 1;
        for (k, endpoint) in endpoints.iter().enumerate() {
            // A host with another behind it fails fast, and one that did not answer lately is
            // skipped, so a dead mirror costs one attempt per back-off, not a timeout per request.
            let fallback = k < last;
            if fallback {
                if let Some(left) = self
                    .unreachable
                    .skipped_for(&endpoint.origin, Instant::now())
                {
                    tracing::debug!(
                        mirror = %endpoint.host,
                        retry_in_s = left.as_secs(),
                        "mirror did not answer lately; skipped"
                    );
                    continue;
                }
            }
            let url = endpoint.url(reference.registry(), reference.repository(), suffix);
            let action = if endpoint.mirror {
                format!("{action} via mirror {}", endpoint.host)
            } else {
                action.to_string()
            };
            let request = Request {
                action: &action,
                method: method.clone(),
                url: &url,
                policy: if fallback {
                    retry::REQUEST.once()
                } else {
                    retry::REQUEST
                },
            };
            let result = self.send_to(endpoint, reference, request, &headers).await;
            if fallback {
                match &result {
                    Ok(_) => self.unreachable.answered(&endpoint.origin),
                    Err(e) if e.is_transport() => {
                        let backoff = self.unreachable.failed(&endpoint.origin, Instant::now());
                        tracing::warn!(
                            mirror = %endpoint.host,
                            error = %crate::error_chain(e),
                            skipped_for_s = backoff.as_secs(),
                            "mirror did not answer; trying the next host, and skipping this one \
                             for a while"
                        );
                        continue;
                    }
                    Err(e) => {
                        self.unreachable.answered(&endpoint.origin);
                        tracing::warn!(
                            mirror = %endpoint.host,
                            error = %crate::error_chain(e),
                            "mirror failed; trying the next host"
                        );
                        continue;
                    }
                }
            }
            return result;
        }
        unreachable!("the last endpoint returns")
    }

    /// [`RegistryClient::send`] to one endpoint.
    async fn send_to(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        request: Request<'_>,
        headers: &impl Fn(&mut HeaderMap),
    ) -> Result<reqwest::Response, RegistryError> {
        let Request {
            action,
            method,
            url,
            policy,
        } = request;
        // Schemes, tokens and the credential that worked belong to the host actually spoken to;
        // a mirror gets only credentials configured for the mirror itself.
        let registry = endpoint.host.as_str();
        let repository = reference.repository();
        let scope = format!("repository:{repository}:pull");
        let lookup = if endpoint.mirror {
            format!("{}/{repository}", endpoint.host)
        } else {
            reference.name()
        };
        let http = self.client_for(endpoint)?;
        let found = self
            .pulls
            .get(&reference.name(), &lookup, || {
                self.credentials.lookup(&lookup)
            })
            .await;
        self.forget_old_credentials();
        let candidates: Vec<Option<Arc<Credential>>> = if found.is_empty() {
            vec![None]
        } else {
            found.into_iter().map(Some).collect()
        };
        let sticky_key = (registry.to_string(), repository.to_string());
        let worked = lock(&self.working).get(&sticky_key).copied();
        let mut i = candidates
            .iter()
            .position(|c| c.as_deref().map(Credential::id) == worked)
            .unwrap_or(0);
        let mut tried: Vec<String> = Vec::new();
        let mut renewed = false;
        let mut learned = false;
        loop {
            let candidate = candidates[i].as_deref();
            let who = candidate.map_or_else(|| "anonymous".to_string(), |c| c.source.clone());
            let scheme = lock(&self.schemes).get(registry).cloned();
            let authorization = match self
                .authorization(&http, registry, &scope, scheme.as_ref(), candidate)
                .await
            {
                Ok(a) => a,
                Err(e @ RegistryError::Token { .. }) => {
                    tried.push(format!("{who}: {e}"));
                    if i + 1 < candidates.len() {
                        i += 1;
                        renewed = false;
                        continue;
                    }
                    return Err(unauthorized(reference, &tried));
                }
                Err(e) => return Err(e),
            };
            let sent_auth = authorization.is_some();
            let sent = self
                .send_with_retries(registry, action, policy, || {
                    let mut h = HeaderMap::new();
                    headers(&mut h);
                    for (name, value) in &endpoint.headers {
                        if let (Ok(n), Ok(v)) = (
                            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::from_str(value),
                        ) {
                            h.append(n, v);
                        }
                    }
                    if let Some(a) = &authorization {
                        h.insert(AUTHORIZATION, a.clone());
                    }
                    http.request(method.clone(), url).headers(h)
                })
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    let hosts = &self.options.hosts;
                    return Err(tls::explain_transport_error(
                        hosts,
                        reference.registry(),
                        endpoint,
                        e,
                    )
                    .await);
                }
            };
            let status = response.status();
            if status.is_success() {
                if let Some(c) = candidate {
                    lock(&self.working).insert(sticky_key, c.id());
                }
                return Ok(response);
            }
            match status {
                StatusCode::UNAUTHORIZED => {
                    let challenges = challenge::parse(
                        response
                            .headers()
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|v| v.to_str().ok()),
                    );
                    let offered = challenges
                        .iter()
                        .find_map(Realm::from_challenge)
                        .map(Scheme::Bearer)
                        .or_else(|| {
                            challenges
                                .iter()
                                .any(|c| c.scheme == "basic")
                                .then_some(Scheme::Basic)
                        });
                    let insufficient = challenges
                        .iter()
                        .any(|c| c.param("error") == Some("insufficient_scope"));
                    if let Some(offered) = &offered {
                        if scheme.as_ref() != Some(offered) {
                            lock(&self.schemes).insert(registry.to_string(), offered.clone());
                        }
                    }
                    match (&offered, candidate) {
                        // First contact: now we know how this registry wants to be asked.
                        (Some(_), _) if !sent_auth && !learned && (candidate.is_some() || matches!(offered, Some(Scheme::Bearer(_)))) => {
                            learned = true;
                            continue;
                        }
                        // A token that worked may have expired mid-pull: renew it once.
                        (Some(Scheme::Bearer(realm)), _) if sent_auth && !renewed && !insufficient => {
                            self.tokens.invalidate(realm, &scope, candidate).await;
                            renewed = true;
                            continue;
                        }
                        (None, _) => tried.push(format!("{who}: HTTP 401 without a usable challenge")),
                        (Some(Scheme::Basic), None) => {
                            let misses = self.credentials.near_misses(&lookup);
                            tried.push(format!(
                                "{who}: the registry asks for Basic credentials and none matched {}{}",
                                reference.name(),
                                if misses.is_empty() { String::new() } else { format!(" ({})", misses.join("; ")) }
                            ))
                        }
                        _ if insufficient && candidate.is_none() => {
                            let misses = self.credentials.near_misses(&lookup);
                            tried.push(format!(
                                "{who}: HTTP 401 insufficient_scope (the repository does not exist, or it needs credentials and none matched {}{})",
                                reference.name(),
                                if misses.is_empty() { String::new() } else { format!(": {}", misses.join("; ")) }
                            ))
                        }
                        _ if insufficient => tried.push(format!(
                            "{who}: HTTP 401 insufficient_scope (the repository does not exist, or these credentials may not pull it)"
                        )),
                        _ => tried.push(format!("{who}: HTTP 401")),
                    }
                }
                StatusCode::FORBIDDEN => {
                    let error = status_error(reference, action, response).await;
                    let expired = error.to_string().to_ascii_lowercase().contains("expired");
                    if expired && !renewed {
                        if let Some(Scheme::Bearer(realm)) = &scheme {
                            self.tokens.invalidate(realm, &scope, candidate).await;
                        }
                        renewed = true;
                        continue;
                    }
                    let RegistryError::Unauthorized { detail, .. } = error else {
                        return Err(error);
                    };
                    tried.push(format!("{who}: {detail}"));
                }
                _ => {
                    let e = status_error(reference, action, response).await;
                    let hosts = &self.options.hosts;
                    return Err(tls::explain_status(
                        hosts,
                        reference.registry(),
                        endpoint,
                        e,
                    ));
                }
            }
            if i + 1 < candidates.len() {
                i += 1;
                renewed = false;
                continue;
            }
            return Err(unauthorized(reference, &tried));
        }
    }

    /// After the credentials were reloaded, tokens minted from the old ones and the memory of
    /// which one worked are dropped.
    fn forget_old_credentials(&self) {
        use std::sync::atomic::Ordering;
        let now = self.credentials.generation();
        if self.generation.swap(now, Ordering::AcqRel) != now {
            self.tokens.clear();
            lock(&self.working).clear();
            tracing::debug!(
                generation = now,
                "credentials reloaded; cached tokens dropped"
            );
        }
    }

    /// The `Authorization` header for a request, if the scheme and the credential call for one.
    async fn authorization(
        &self,
        http: &reqwest::Client,
        registry: &str,
        scope: &str,
        scheme: Option<&Scheme>,
        credential: Option<&Credential>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let value = match (credential.map(|c| &c.secret), scheme) {
            (Some(Secret::RegistryToken(t)), _) => Some(format!("Bearer {t}")),
            (_, None) => None,
            (Some(Secret::Basic { username, password }), Some(Scheme::Basic)) => {
                let pair = format!("{username}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (_, Some(Scheme::Basic)) => None,
            (_, Some(Scheme::Bearer(realm))) => Some(
                self.tokens
                    .token(http, registry, realm, scope, credential)
                    .await?
                    .header(),
            ),
        };
        value
            .map(|v| {
                let mut v = HeaderValue::from_str(&v).map_err(|_| RegistryError::Token {
                    registry: registry.to_string(),
                    realm: String::new(),
                    detail: "the credential is not a valid header value".into(),
                })?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
    }

    /// Sends under `policy`: connection failures, `5xx` and `429` are retried with jittered
    /// exponential backoff (honouring `Retry-After`). The last answer is returned as it is.
    async fn send_with_retries(
        &self,
        registry: &str,
        action: &str,
        policy: Backoff,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut attempts = policy.start();
        loop {
            let sent = build().send().await;
            let transient = match &sent {
                Ok(r) => {
                    self.note_rate_limit(registry, r.headers());
                    r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error()
                }
                // An untrusted certificate, a plain-HTTP peer or a refused client certificate
                // fails the same way again: no retry.
                Err(e) => {
                    (e.is_connect() || e.is_timeout() || e.is_request())
                        && tls::tls_failure(e).is_none()
                }
            };
            let attempt = attempts.number();
            let Some(delay) = attempts.next_delay().filter(|_| transient) else {
                return sent.map_err(|e| network(registry, action, e));
            };
            match sent {
                Ok(r) => {
                    let wait = retry_after(r.headers()).unwrap_or(delay);
                    tracing::warn!(
                        registry,
                        action,
                        status = r.status().as_u16(),
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "registry busy; retrying"
                    );
                    tokio::time::sleep(wait.min(retry::MAX_RETRY_AFTER)).await;
                }
                Err(e) => {
                    tracing::warn!(registry, action, attempt, error = %e.without_url(), "request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn note_rate_limit(&self, registry: &str, headers: &HeaderMap) {
        let remaining = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = remaining {
            lock(&self.rate_limits).insert(registry.to_string(), n);
            tracing::debug!(registry, remaining = n, "registry rate limit");
        }
    }

    /// The last `ratelimit-remaining` a registry reported (Docker Hub's pull quota).
    pub fn rate_limit_remaining(&self, registry: &str) -> Option<u64> {
        lock(&self.rate_limits).get(registry).copied()
    }
}

/// One request to one endpoint.
struct Request<'a> {
    /// What is being done, for messages: "GET manifest latest via mirror m:5000".
    action: &'a str,
    method: Method,
    url: &'a str,
    /// How a failed send is retried ([`Backoff::once`]: fail fast, another host is next).
    policy: Backoff,
}

/// What a request needs an endpoint to be allowed to do.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// Turn a tag into a digest.
    Resolve,
    /// Serve content by digest.
    Pull,
}

/// How a registry wants requests authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scheme {
    Bearer(Realm),
    Basic,
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn unauthorized(reference: &Reference, tried: &[String]) -> RegistryError {
    RegistryError::Unauthorized {
        registry: reference.registry().to_string(),
        repository: reference.repository().to_string(),
        detail: format!("tried {}", tried.join("; ")),
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
    let (code, message) = match first {
        Some(e) => (e.code, e.message),
        // A short plain-text body is the server's explanation (Go's TLS server answers plain
        // HTTP so); longer ones are pages not worth a log line.
        None => (
            None,
            std::str::from_utf8(&body)
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 200 && !t.contains('<'))
                .map(str::to_string),
        ),
    };
    if status == 401 || status == 403 {
        return RegistryError::Unauthorized {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            detail: format!(
                "HTTP {status}{}{}",
                code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(),
                message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        };
    }
    let advice = match (status, code.as_deref()) {
        (429, _) => Some(
            "rate limited even after waiting as asked; authenticate with a pull secret or node \
             credentials (higher quota), or pull through a mirror",
        ),
        (404, Some("MANIFEST_UNKNOWN")) => {
            Some("the tag or digest does not exist in this repository; check the image's tag")
        }
        (404, Some("NAME_UNKNOWN")) => Some(
            "the repository does not exist on this registry; check the image name and registry",
        ),
        (404, Some("BLOB_UNKNOWN")) => Some(
            "the registry lacks a blob its manifest references; the image must be pushed again",
        ),
        _ => None,
    };
    let message = match (message, advice) {
        (Some(m), Some(a)) => Some(format!("{m}: {a}")),
        (m, a) => m.or(a.map(str::to_string)),
    };
    RegistryError::Status {
        registry: reference.registry().to_string(),
        repository: reference.repository().to_string(),
        action: action.to_string(),
        status,
        code,
        message,
    }
}

/// Locks one of the client's maps. A panic while holding one cannot leave it inconsistent (single
/// inserts and removals), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The settings every registry connection shares.
fn client_builder(options: &Options) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("prepull/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(options.pool_per_host.unwrap_or(32))
        .http2_adaptive_window(true)
        // Blob redirects (to S3, a CDN) are followed afresh on every request, so presigned
        // URLs are never reused; reqwest drops `Authorization` when the host changes, and
        // a downgrade from HTTPS to plain HTTP is refused.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                attempt.error("refusing a redirect from HTTPS to plain HTTP")
            } else if attempt.previous().len() > 10 {
                attempt.error("more than 10 redirects")
            } else {
                attempt.follow()
            }
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_http_date() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
