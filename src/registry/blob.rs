//! Blobs as verified streams: a `Range` request resumes where containerd's ingest stands, a
//! registry that ignores it is verified from the start, and a foreign layer's `urls` are tried
//! (without credentials) before the registry.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{HeaderMap, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};

use super::body::Watched;
use super::request::{Need, Op};
use super::{RegistryClient, RegistryError};
use crate::digest::Verifier;
use crate::oci::Descriptor;
use crate::reference::Reference;

/// A blob body that yields verified chunks: the stream ends with an error instead of its last
/// item if the bytes do not match the descriptor's size (and, with [`BlobCheck::Digest`], its
/// digest), so a consumer that commits only after a clean end never commits bad bytes.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

/// What a [`BlobStream`] checks as the bytes pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCheck {
    /// Exact size and digest.
    Digest,
    /// Exact size only: for bytes written into a store that refuses to commit them under any
    /// other digest (containerd's `Content.Write` commit with the expected digest), where
    /// hashing here would only hash every byte twice. The consumer turns the store's refusal
    /// into [`RegistryError::Corrupt`] naming [`OpenedBlob::host`].
    SizeOnly,
}

/// An opened blob: its body, the offset it really starts at, and the host serving it (the
/// registry, or a foreign layer URL's host).
pub struct OpenedBlob {
    /// The body, checked as [`BlobCheck`] says.
    pub body: BlobStream,
    /// Where the body starts: the offset asked for, or 0 when the server ignored `Range`.
    pub start: u64,
    /// Who serves the bytes, as [`RegistryError::Corrupt`] names it.
    pub host: String,
}

impl RegistryClient {
    /// Opens a blob for streaming from byte `offset` (0 for all of it). Chunks are checked
    /// against `descriptor` as they pass, as `check` says. The stream really starts at
    /// [`OpenedBlob::start`]: a registry that ignores `Range` answers `200` with the whole blob,
    /// and the stream then starts at 0 and is checked in full.
    ///
    /// A descriptor with `urls` (a foreign or non-distributable layer) is fetched from those
    /// URLs first, in order and without credentials, as containerd does; the registry is asked
    /// only when none of them serves it.
    pub async fn blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        offset: u64,
        check: BlobCheck,
    ) -> Result<OpenedBlob, RegistryError> {
        let resume = offset > 0 && offset < descriptor.size;
        let range = |h: &mut HeaderMap| {
            if resume {
                if let Ok(v) = format!("bytes={offset}-").parse() {
                    h.insert(RANGE, v);
                }
            }
        };
        for url in &descriptor.urls {
            match self.foreign_blob(url, descriptor, &range).await {
                Ok(response) => {
                    let host = response.url().host_str().unwrap_or_default().to_string();
                    return Ok(verified_stream(
                        response,
                        Served {
                            descriptor,
                            offset,
                            check,
                            host,
                            repository: reference.repository().to_string(),
                            action: format!("GET foreign blob {}", descriptor.digest),
                        },
                        self.options.min_progress,
                    ));
                }
                Err(why) => tracing::warn!(
                    blob = %descriptor.digest,
                    url = %redacted(url),
                    why,
                    "foreign layer URL did not serve the blob; trying the next source"
                ),
            }
        }
        let action = format!("GET blob {}", descriptor.digest);
        let suffix = format!("blobs/{}", descriptor.digest);
        let response = self
            .send(
                reference,
                Op::new(Method::GET, &action, &suffix, Need::Pull),
                range,
            )
            .await?;
        Ok(verified_stream(
            response,
            Served {
                descriptor,
                offset,
                check,
                host: reference.registry().to_string(),
                repository: reference.repository().to_string(),
                action,
            },
            self.options.min_progress,
        ))
    }

    /// One attempt at a foreign layer URL: plain GET, no `Authorization`, the node's default
    /// TLS roots. Only `http` and `https` URLs are tried.
    async fn foreign_blob(
        &self,
        url: &str,
        descriptor: &Descriptor,
        range: &impl Fn(&mut HeaderMap),
    ) -> Result<reqwest::Response, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not http or https", parsed.scheme()));
        }
        let mut headers = HeaderMap::new();
        range(&mut headers);
        let window = self.options.min_progress.window;
        let response = tokio::time::timeout(window, self.http.get(parsed).headers(headers).send())
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(window)))?
            .map_err(|e| format!("{}", e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        if let Some(length) = response.content_length() {
            if status == StatusCode::OK && length != descriptor.size {
                return Err(format!(
                    "serves {length} bytes, the descriptor says {}",
                    descriptor.size
                ));
            }
        }
        Ok(response)
    }
}

/// One blob response: what was asked for (the descriptor, from which offset, checked how) and
/// who serves it.
struct Served<'a> {
    descriptor: &'a Descriptor,
    offset: u64,
    check: BlobCheck,
    host: String,
    repository: String,
    action: String,
}

/// The stream of a blob response, checked against its descriptor, starting at the offset asked
/// for when the server honoured the `Range`, else at 0.
fn verified_stream(
    response: reqwest::Response,
    served: Served<'_>,
    progress: super::MinProgress,
) -> OpenedBlob {
    let Served {
        descriptor,
        offset,
        check,
        host,
        repository,
        action,
    } = served;
    let ranged = offset > 0
        && offset < descriptor.size
        && response.status() == StatusCode::PARTIAL_CONTENT
        && response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
    let (verifier, start) = match (ranged, check) {
        (true, _) => (
            Verifier::resumed(&descriptor.digest, descriptor.size, offset),
            offset,
        ),
        (false, BlobCheck::SizeOnly) => {
            (Verifier::size_only(&descriptor.digest, descriptor.size), 0)
        }
        (false, BlobCheck::Digest) => (Verifier::new(&descriptor.digest, descriptor.size), 0),
    };
    let inner = Box::pin(Watched::new(response, progress, &host, &action));
    let body = Box::pin(VerifiedBody {
        inner,
        verifier: Some(verifier),
        what: format!("blob {}", descriptor.digest),
        registry: host.clone(),
        repository,
    });
    OpenedBlob { body, start, host }
}

/// A URL fit for a log line: scheme, host and path, without the query string, which may carry
/// a signature or a token.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "(unparsable URL)".to_string(),
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

/// A blob body checked chunk by chunk; see [`BlobStream`].
struct VerifiedBody {
    inner: Pin<Box<Watched>>,
    /// `None` once the stream has ended (cleanly or not).
    verifier: Option<Verifier>,
    registry: String,
    repository: String,
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
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => match this.verifier.take().map(Verifier::finish) {
                Some(Err(e)) => Poll::Ready(Some(Err(this.fail(e)))),
                _ => Poll::Ready(None),
            },
        }
    }
}
