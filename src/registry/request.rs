//! Sending a request to a registry: over its endpoints (mirrors first, a dead one skipped for a
//! while), authorized by [`super::authorize`], retried under [`retry::REQUEST`] with
//! `Retry-After` honoured, and an error status turned into a [`RegistryError`] that says what to
//! do about it.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use super::body::read_capped;
use super::redirect;
use super::{
    lock, tls, Endpoint, HostsError, MinProgress, Options, RegistryClient, RegistryError, Tls,
};
use crate::metrics::metrics;
use crate::printable::printable;
use crate::reference::Reference;
use crate::retry::{self, Backoff};

/// What a request needs an endpoint to be allowed to do.
#[derive(Clone, Copy, Debug)]
pub(super) enum Need {
    /// Turn a tag into a digest.
    Resolve,
    /// Serve content by digest.
    Pull,
}

/// One request to one endpoint.
struct Request {
    /// What is being done, for messages: "GET manifest latest via mirror m:5000".
    action: String,
    method: Method,
    url: String,
    /// How a failed send is retried ([`Backoff::once`]: fail fast, another host is next).
    policy: Backoff,
    /// Whether registries count it against their request budget.
    counted: bool,
}

impl Request {
    /// `method` of `suffix` in the reference's repository at `endpoint`.
    fn to(endpoint: &Endpoint, reference: &Reference, what: &Op<'_>, policy: Backoff) -> Request {
        // What registries count against a budget: manifests fetched (see `budget`).
        let counted = what.method == Method::GET && what.suffix.starts_with("manifests/");
        let action = if endpoint.mirror {
            format!("{} via mirror {}", what.action, endpoint.host)
        } else {
            what.action.to_string()
        };
        Request {
            action,
            method: what.method.clone(),
            url: endpoint.url(reference.registry(), reference.repository(), what.suffix),
            policy,
            counted,
        }
    }
}

/// What [`RegistryClient::send`] is asked to do, whichever endpoint serves it.
pub(super) struct Op<'a> {
    /// What is being done, for messages: "GET manifest latest".
    pub action: &'a str,
    /// The HTTP method.
    pub method: Method,
    /// The path below the repository: `manifests/…`, `blobs/…`.
    pub suffix: &'a str,
    /// What the endpoint must be allowed to do.
    pub need: Need,
}

impl<'a> Op<'a> {
    /// `method` of `suffix` ("manifests/…", "blobs/…"), described as `action`, from an endpoint
    /// allowed to do what the request `need`s.
    pub fn new(method: Method, action: &'a str, suffix: &'a str, need: Need) -> Op<'a> {
        Op {
            action,
            method,
            suffix,
            need,
        }
    }
}

impl RegistryClient {
    /// Sends a request authorized for the repository's pull scope, to each endpoint in turn.
    ///
    /// A host with another behind it fails fast, and one that did not answer lately is skipped,
    /// so a dead mirror costs one attempt per back-off, not a timeout per request. The last host
    /// is tried under the full request policy, and its answer is the answer.
    pub(super) async fn send(
        &self,
        reference: &Reference,
        op: Op<'_>,
        headers: impl Fn(&mut HeaderMap),
    ) -> Result<reqwest::Response, RegistryError> {
        let (fallbacks, last) = self.endpoints(reference, op.need)?;
        for endpoint in &fallbacks {
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
            let request = Request::to(endpoint, reference, &op, retry::REQUEST.once());
            match self.send_to(endpoint, reference, request, &headers).await {
                Ok(response) => {
                    self.unreachable.answered(&endpoint.origin);
                    return Ok(response);
                }
                Err(e) => self.fallback_failed(endpoint, &e),
            }
        }
        let policy = self.options.request_policy.unwrap_or(retry::REQUEST);
        let request = Request::to(&last, reference, &op, policy);
        self.send_to(&last, reference, request, &headers).await
    }

    /// A host with a fallback failed: one that did not answer is skipped for a while.
    fn fallback_failed(&self, endpoint: &Endpoint, e: &RegistryError) {
        if e.is_transport() {
            let backoff = self.unreachable.failed(&endpoint.origin, Instant::now());
            tracing::warn!(
                mirror = %endpoint.host,
                error = %crate::error_chain(e),
                skipped_for_s = backoff.as_secs(),
                "mirror did not answer; trying the next host, and skipping this one for a while"
            );
        } else {
            self.unreachable.answered(&endpoint.origin);
            tracing::warn!(
                mirror = %endpoint.host,
                error = %crate::error_chain(e),
                "mirror failed; trying the next host"
            );
        }
    }

    /// The endpoints that may serve `need` for the reference's registry: those with a fallback
    /// behind them (mirrors, in order), and the last.
    fn endpoints(
        &self,
        reference: &Reference,
        need: Need,
    ) -> Result<(Vec<Endpoint>, Endpoint), RegistryError> {
        let hosts_error = |source| RegistryError::Hosts {
            registry: reference.registry().to_string(),
            source,
        };
        let all = self
            .options
            .hosts
            .endpoints(reference.registry())
            .map_err(hosts_error)?;
        let mut usable: Vec<Endpoint> = all
            .into_iter()
            .filter(|e| match need {
                Need::Resolve => e.resolve,
                Need::Pull => e.pull,
            })
            .collect();
        let Some(last) = usable.pop() else {
            return Err(hosts_error(HostsError::Invalid {
                path: self.options.hosts.dir.clone().unwrap_or_default(),
                message: format!("no host has the {need:?} capability"),
            }));
        };
        Ok((usable, last))
    }

    /// [`RegistryClient::send`] to one endpoint: the request goes out authorized, and each `401`
    /// or `403` moves the [`super::authorize::AuthAttempt`] on, until the registry accepts a
    /// credential or has refused them all.
    async fn send_to(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        request: Request,
        headers: &impl Fn(&mut HeaderMap),
    ) -> Result<reqwest::Response, RegistryError> {
        if request.counted {
            if let Some(low) = self.budgets.low(&endpoint.host) {
                metrics().budget_wait(&endpoint.host);
                return Err(RegistryError::BudgetLow {
                    registry: endpoint.host.clone(),
                    action: request.action,
                    low,
                    reserve: self.budgets.reserve(),
                });
            }
        }
        let http = self.client_for(endpoint)?;
        let mut attempt = self.auth.attempt(endpoint, reference).await;
        loop {
            let authorization = match self.auth.authorization(&http, &mut attempt).await {
                Ok(a) => a,
                Err(e @ RegistryError::Token { .. }) => {
                    let step = attempt.on_token_error(&e);
                    self.auth.settle(&attempt, step).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let response = self
                .send_authorized(&http, endpoint, reference, &request, headers, authorization)
                .await?;
            let progress = self.options.min_progress;
            if !response.status().is_success() && redirect::redirected(&request.url, &response) {
                return self
                    .redirect_failed(&http, reference, &request.action, headers, response)
                    .await;
            }
            let step = match response.status() {
                status if status.is_success() => {
                    self.auth.accepted(&attempt);
                    return Ok(response);
                }
                StatusCode::UNAUTHORIZED => {
                    self.auth.on_unauthorized(&mut attempt, response.headers())
                }
                StatusCode::FORBIDDEN => attempt.on_forbidden(
                    status_error(reference, &request.action, response, progress).await,
                )?,
                _ => {
                    let e = status_error(reference, &request.action, response, progress).await;
                    let hosts = &self.options.hosts;
                    return Err(tls::explain_status(
                        hosts,
                        reference.registry(),
                        endpoint,
                        e,
                    ));
                }
            };
            self.auth.settle(&attempt, step).await?;
        }
    }

    /// Sends `request` to `endpoint` with the endpoint's headers and `authorization`, retried
    /// under the request's policy; a transport failure is explained (TLS, client certificate).
    async fn send_authorized(
        &self,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        reference: &Reference,
        request: &Request,
        headers: &impl Fn(&mut HeaderMap),
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, RegistryError> {
        let registry = endpoint.host.as_str();
        let sent = self
            .send_with_retries(
                registry,
                &request.method,
                &request.action,
                request.policy,
                || {
                    let mut h = HeaderMap::new();
                    headers(&mut h);
                    for (name, value) in &endpoint.headers {
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::from_str(value),
                        ) {
                            h.append(n, v);
                        }
                    }
                    if let Some(a) = &authorization {
                        h.insert(AUTHORIZATION, a.clone());
                    }
                    http.request(request.method.clone(), &request.url)
                        .headers(h)
                },
            )
            .await;
        match sent {
            Ok(response) => Ok(response),
            Err(e) => {
                let hosts = &self.options.hosts;
                Err(tls::explain_transport_error(hosts, reference.registry(), endpoint, e).await)
            }
        }
    }

    /// Sends under `policy`: connection failures, `5xx` and `429` are retried with jittered
    /// exponential backoff (honouring `Retry-After`). The last answer is returned as it is.
    async fn send_with_retries(
        &self,
        registry: &str,
        method: &Method,
        action: &str,
        policy: Backoff,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut attempts = policy.start();
        let progress = self.options.min_progress;
        loop {
            let slot = self.connection_slot(registry).await;
            // The response head must come within one window (see `MinProgress`); a server that
            // trickles its headers is treated like one that does not answer.
            let Ok(mut sent) = tokio::time::timeout(progress.window, build().send()).await else {
                metrics().request(registry, method.as_str(), None);
                let attempt = attempts.number();
                let Some(delay) = attempts.next_delay() else {
                    return Err(RegistryError::Stalled {
                        registry: registry.to_string(),
                        action: action.to_string(),
                        received: 0,
                        progress,
                    });
                };
                tracing::warn!(
                    registry,
                    action,
                    attempt,
                    window_s = progress.window.as_secs(),
                    "no answer within the window; retrying"
                );
                // The slot is not held while backing off.
                drop(slot);
                tokio::time::sleep(delay).await;
                continue;
            };
            if let (Ok(response), Some(slot)) = (sent.as_mut(), slot) {
                response.extensions_mut().insert(slot);
            }
            let code = sent.as_ref().ok().map(|r| r.status().as_u16());
            metrics().request(registry, method.as_str(), code);
            let transient = match &sent {
                Ok(r) => {
                    self.budgets.note(registry, r.headers());
                    // A 429 that says the budget is spent is final for this pull: asking again
                    // within it would only be refused again (the next pass is asked, once the
                    // budget's window moves on).
                    (r.status() == StatusCode::TOO_MANY_REQUESTS
                        && !super::budget::spent(r.headers()))
                        || r.status().is_server_error()
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

    /// Asks `endpoint` for its API root once, without credentials, with its own TLS settings:
    /// the HTTP status it answers (`200`, or `401` with a challenge, for a registry), or why it
    /// did not answer (a TLS failure explained as for any request to it).
    pub async fn ping(&self, registry: &str, endpoint: &Endpoint) -> Result<u16, RegistryError> {
        let http = self.client_for(endpoint)?;
        let url = format!("{}{}/", endpoint.origin, endpoint.api_path);
        let action = format!("GET {}/", endpoint.api_path);
        match http.get(&url).timeout(Duration::from_secs(10)).send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => {
                let e = network(&endpoint.host, &action, e);
                Err(tls::explain_transport_error(&self.options.hosts, registry, endpoint, e).await)
            }
        }
    }

    /// The HTTP client for an endpoint's TLS settings and connect timeout.
    pub(super) fn client_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, RegistryError> {
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

pub(super) fn network(registry: &str, action: &str, e: reqwest::Error) -> RegistryError {
    RegistryError::Network {
        registry: registry.to_string(),
        action: action.to_string(),
        // URLs of redirected blobs may carry signatures: keep them out of messages.
        source: e.without_url(),
    }
}

/// The error for an answer with an error status: `401`/`403` as [`RegistryError::Unauthorized`],
/// any other as [`RegistryError::Status`] with the registry's code and message, and advice for the
/// statuses an operator can act on.
pub(super) async fn status_error(
    reference: &Reference,
    action: &str,
    response: reqwest::Response,
    progress: MinProgress,
) -> RegistryError {
    let status = response.status().as_u16();
    let (code, message) = error_body(response, progress, reference.registry(), action).await;
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
    let message = match (message, advice(status, code.as_deref())) {
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

/// The most of an error body read: what is beyond is not read at all.
const MAX_ERROR_BODY: usize = 64 << 10;

/// The first distribution error's code and message in an error body; a short plain-text body is
/// the message. At most [`MAX_ERROR_BODY`] bytes are read, under `progress`; what the server
/// says is kept [`printable`].
pub(super) async fn error_body(
    response: reqwest::Response,
    progress: MinProgress,
    registry: &str,
    action: &str,
) -> (Option<String>, Option<String>) {
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
    // A body that breaks off or trickles explains nothing: the status speaks alone.
    let body = match read_capped(response, MAX_ERROR_BODY, progress, registry, action).await {
        Ok(capped) => capped.bytes,
        Err(e) => {
            tracing::debug!(registry, action, error = %e, "error body not read");
            Vec::new()
        }
    };
    let first = serde_json::from_slice::<Errors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next());
    match first {
        Some(e) => (
            e.code.as_deref().map(printable),
            e.message.as_deref().map(printable),
        ),
        // A short plain-text body is the server's explanation (Go's TLS server answers plain
        // HTTP so); longer ones are pages not worth a log line.
        None => (
            None,
            std::str::from_utf8(&body)
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 200 && !t.contains('<'))
                .map(printable),
        ),
    }
}

/// What to do about an error status, where the status and code say.
fn advice(status: u16, code: Option<&str>) -> Option<&'static str> {
    match (status, code) {
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
    }
}

/// The settings every registry connection shares.
pub(super) fn client_builder(options: &Options) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("prepull/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // `MinProgress` judges each window first; a read that hangs on past two is a dead
        // connection whatever the windows say.
        .read_timeout(options.min_progress.window.saturating_mul(2))
        .pool_max_idle_per_host(options.connections_per_host.get())
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
