//! What a redirect target may ask for. A registry redirects blobs to another host (ECR to S3, a
//! CDN); that host is another party. reqwest already drops `Authorization` when a redirect
//! changes host; beyond that, a `401` from the target never reaches the registry's
//! authorization: the target's challenge would otherwise teach the registry's host a foreign
//! token realm, which would then get the registry's credentials and mint tokens sent back to
//! the registry. Credentials belong to the registry they were configured for. As containerd's
//! CRI does, a target asking for a bearer token gets one asked for anonymously from its realm,
//! and the redirected URL is asked once more with it; any other error status from the target
//! is the request's error, naming the target.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::challenge;
use super::request::error_body;
use super::token::Realm;
use super::{RegistryClient, RegistryError};
use crate::reference::Reference;

/// Whether `response` came from another origin than `url`, the one asked: the registry
/// redirected the request.
pub(super) fn redirected(url: &str, response: &reqwest::Response) -> bool {
    reqwest::Url::parse(url).map_or(true, |asked| asked.origin() != response.url().origin())
}

impl RegistryClient {
    /// The redirect target answered `response` with an error status: a bearer challenge is
    /// answered anonymously once; anything else is an error naming the target.
    pub(super) async fn redirect_failed(
        &self,
        http: &reqwest::Client,
        reference: &Reference,
        action: &str,
        headers: &impl Fn(&mut HeaderMap),
        response: reqwest::Response,
    ) -> Result<reqwest::Response, RegistryError> {
        let target = response.url().clone();
        let host = target_host(&target);
        let realm = (response.status() == StatusCode::UNAUTHORIZED)
            .then(|| {
                let challenges = challenge::parse(
                    response
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                challenges.iter().find_map(|c| {
                    let realm = Realm::from_challenge(c)?;
                    let scope = c.param("scope").map(str::to_string);
                    Some((realm, scope))
                })
            })
            .flatten();
        let Some((realm, scope)) = realm else {
            return Err(self.target_error(reference, action, &host, response).await);
        };
        tracing::debug!(
            registry = reference.registry(),
            target = %host,
            "redirect target asks for a token; asking its realm anonymously"
        );
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", reference.repository()));
        let token = self
            .auth
            .anonymous_token(http, &host, &realm, &scope)
            .await?;
        let mut h = HeaderMap::new();
        headers(&mut h);
        let mut value =
            HeaderValue::from_str(&token.header()).map_err(|_| RegistryError::Token {
                registry: host.clone(),
                realm: realm.realm.clone(),
                detail: "the token is not a valid header value".into(),
            })?;
        value.set_sensitive(true);
        h.insert(AUTHORIZATION, value);
        let retry = tokio::time::timeout(
            self.options.min_progress.window,
            http.get(target).headers(h).send(),
        )
        .await
        .map_err(|_| RegistryError::Stalled {
            registry: host.clone(),
            action: action.to_string(),
            received: 0,
            progress: self.options.min_progress,
        })?
        .map_err(|e| super::request::network(&host, action, e))?;
        if retry.status().is_success() {
            return Ok(retry);
        }
        Err(self.target_error(reference, action, &host, retry).await)
    }

    /// The error for the redirect target's answer: the target's status and words, never a
    /// refusal of the registry's credentials.
    async fn target_error(
        &self,
        reference: &Reference,
        action: &str,
        host: &str,
        response: reqwest::Response,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let progress = self.options.min_progress;
        let (code, message) = error_body(response, progress, host, action).await;
        RegistryError::Status {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            action: format!("{action} (redirected to {host})"),
            status,
            code,
            message,
        }
    }
}

/// `host[:port]` of a URL, for messages (never its path or query, which may carry a signature).
fn target_host(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "(no host)".to_string(),
    }
}
