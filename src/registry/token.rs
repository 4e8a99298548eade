//! Bearer tokens: fetching them from a challenge's realm and caching them per scope.
//!
//! Concurrent requests that need the same token wait for one fetch (single flight); tokens are
//! refreshed once 90% of their lifetime has passed. Token values never appear in Debug output.
//! A password or refresh token goes to a realm only where [`Realm::refuses_secrets`] allows:
//! over HTTPS, or over plain HTTP to a plain-HTTP registry's own host.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::body::read_capped;
use super::challenge::Challenge;
use super::{lock, MinProgress, RegistryError};
use crate::credentials::{Credential, Secret};

/// A bearer token; its value is never printed.
#[derive(Clone)]
pub struct Token {
    value: String,
    refresh_at: Instant,
}

impl Token {
    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.value)
    }

    fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Where tokens for a registry come from, learned from its first `401`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Realm {
    /// The token endpoint URL.
    pub realm: String,
    /// The `service` parameter, if the registry named one.
    pub service: Option<String>,
}

impl Realm {
    /// The realm of a Bearer challenge, if it is one.
    pub fn from_challenge(c: &Challenge) -> Option<Realm> {
        (c.scheme == "bearer").then_some(())?;
        Some(Realm {
            realm: c.param("realm")?.to_string(),
            service: c.param("service").map(str::to_string),
        })
    }
}

impl Realm {
    /// Why a secret (a password or a refresh token) may not be sent to this realm on behalf of
    /// the host at `origin` (`https://reg.example:5000`, or `http://…` for a host configured as
    /// plain HTTP), naming what to fix; `None` when it may.
    ///
    /// Secrets go to a token realm over HTTPS only. A registry reached over HTTPS promised its
    /// credentials an encrypted path, and its challenge naming an `http://` realm would hand them
    /// to anyone on the way there (Docker and containerd do not check; a security review would
    /// ask them to). The one exception is a host configured as plain HTTP (`--plain-http`, or an
    /// `http://` server or host in `hosts.toml`): its credentials cross the network unencrypted
    /// to that host anyway, so a plain-HTTP realm on the same host (any port) exposes nothing
    /// more, while one on another host would carry them, unencrypted, to a party the
    /// configuration never named.
    ///
    /// Anonymous token requests carry no secret and are not checked: an eavesdropper learns a
    /// token anyone could have asked for.
    pub(super) fn refuses_secrets(&self, host: &str, origin: &str) -> Option<String> {
        let realm = reqwest::Url::parse(&self.realm).ok()?;
        // An https realm is fine; any other scheme than http fails when it is asked.
        if realm.scheme() != "http" {
            return None;
        }
        const FIX: &str = "configure the registry's token realm as an https:// URL \
                           (docker-registry: auth.token.realm)";
        let endpoint = reqwest::Url::parse(origin).ok();
        match endpoint.as_ref().filter(|e| e.scheme() == "http") {
            None => Some(format!(
                "{host} is reached over HTTPS and its challenge names a plain-HTTP realm, where \
                 the password or refresh token would cross the network unencrypted; {FIX}"
            )),
            Some(e) if e.host() == realm.host() => None,
            Some(e) => Some(format!(
                "{host} is configured as plain HTTP, which lets credentials go unencrypted to {} \
                 only, and the realm is on {}; {FIX}, or serve it on {}",
                e.host_str().unwrap_or_default(),
                realm.host_str().unwrap_or_default(),
                e.host_str().unwrap_or_default(),
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    realm: Realm,
    scope: String,
    /// [`Credential::id`], 0 for anonymous: tokens minted from other (or older) credentials
    /// are never reused.
    credential: u64,
}

impl Key {
    fn new(realm: &Realm, scope: &str, credential: Option<&Credential>) -> Key {
        Key {
            realm: realm.clone(),
            scope: scope.to_string(),
            credential: credential.map_or(0, Credential::id),
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Tokens per (realm, service, scope, credential).
#[derive(Default)]
pub struct TokenCache {
    /// The progress token endpoints must make, as registries must.
    progress: MinProgress,
    slots: Mutex<HashMap<Key, Slot>>,
    /// Token endpoints that answered an OAuth2 POST with 400, 401, 404 or 405 and then
    /// accepted a GET: they are asked with a GET from then on.
    get_only: Mutex<HashSet<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds; zero or negative (which containerd accepts) say no lifetime.
    #[serde(default)]
    expires_in: Option<i64>,
}

impl TokenCache {
    /// An empty cache whose token endpoints must make `progress`.
    pub fn new(progress: MinProgress) -> TokenCache {
        TokenCache {
            progress,
            ..TokenCache::default()
        }
    }

    /// A fresh token, from the cache or fetched once for all waiters.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        registry: &str,
        realm: &Realm,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<Token, RegistryError> {
        let slot = lock(&self.slots)
            .entry(Key::new(realm, scope, credential))
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref().filter(|t| t.fresh()) {
            return Ok(t.clone());
        }
        let token = self.fetch(http, registry, realm, scope, credential).await?;
        *guard = Some(token.clone());
        Ok(token)
    }

    /// Drops every token.
    pub fn clear(&self) {
        lock(&self.slots).clear();
    }

    /// Drops a token the registry refused, so the next request fetches a new one.
    pub async fn invalidate(&self, realm: &Realm, scope: &str, credential: Option<&Credential>) {
        let slot = lock(&self.slots)
            .get(&Key::new(realm, scope, credential))
            .cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }
}

impl TokenCache {
    /// Asks the realm for a token. An identity (OAuth2 refresh) token is exchanged with a POST,
    /// and when the endpoint does not take POSTs (GCR answers 404, Artifactory 401, ACR 400,
    /// others 405), with a GET carrying it as a Basic password, as containerd does. Passwords
    /// use a GET with Basic credentials, as the Docker CLI does; anonymous requests a plain GET.
    async fn fetch(
        &self,
        http: &reqwest::Client,
        registry: &str,
        realm: &Realm,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<Token, RegistryError> {
        let started = Instant::now();
        let secret = credential.map(|c| &c.secret);
        let post_first = matches!(secret, Some(Secret::IdentityToken { .. }))
            && !lock(&self.get_only).contains(&realm.realm);
        let answer = if post_first {
            let answer = post(http, registry, realm, scope, secret, self.progress).await?;
            match answer.status.as_u16() {
                400 | 401 | 404 | 405 => {
                    tracing::debug!(
                        realm = %realm.realm,
                        status = answer.status.as_u16(),
                        "token endpoint refused the OAuth2 POST; asking with a GET"
                    );
                    let retry = get(http, registry, realm, scope, secret, self.progress).await?;
                    if retry.status.is_success() {
                        lock(&self.get_only).insert(realm.realm.clone());
                    }
                    retry
                }
                _ => answer,
            }
        } else {
            get(http, registry, realm, scope, secret, self.progress).await?
        };
        answer.token(registry, realm, started)
    }
}

/// A token endpoint's answer, read whole (token responses are small).
struct Answer {
    status: reqwest::StatusCode,
    body: bytes::Bytes,
}

/// The most of a token response read; anything longer is not a token response.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

fn token_error(registry: &str, realm: &Realm, detail: String) -> RegistryError {
    RegistryError::Token {
        registry: registry.to_string(),
        realm: realm.realm.clone(),
        detail,
    }
}

async fn post(
    http: &reqwest::Client,
    registry: &str,
    realm: &Realm,
    scope: &str,
    secret: Option<&Secret>,
    progress: MinProgress,
) -> Result<Answer, RegistryError> {
    let token = match secret {
        Some(Secret::IdentityToken { token, .. }) => token.as_str(),
        _ => "",
    };
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", "prepull"),
        ("scope", scope),
    ];
    if let Some(service) = &realm.service {
        form.push(("service", service));
    }
    send(
        registry,
        realm,
        http.post(&realm.realm).form(&form),
        progress,
    )
    .await
}

async fn get(
    http: &reqwest::Client,
    registry: &str,
    realm: &Realm,
    scope: &str,
    secret: Option<&Secret>,
    progress: MinProgress,
) -> Result<Answer, RegistryError> {
    let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
    if let Some(service) = &realm.service {
        query.push(("service", service));
    }
    let mut request = http.get(&realm.realm).query(&query);
    match secret {
        Some(Secret::Basic { username, password }) => {
            request = request
                .query(&[("account", username.as_str())])
                .basic_auth(username, Some(password));
        }
        // The refresh token as the password; `<token>` is Docker's placeholder, not a user.
        Some(Secret::IdentityToken { username, token }) => {
            let user = if username == "<token>" { "" } else { username };
            request = request.basic_auth(user, Some(token));
        }
        Some(Secret::RegistryToken(_)) | None => {}
    }
    send(registry, realm, request, progress).await
}

/// Sends a token request and reads the answer: its head within one window, then at most
/// [`MAX_TOKEN_RESPONSE`] bytes of body under `progress`, read chunk by chunk (a body without
/// `Content-Length` is bounded as much as one with it).
async fn send(
    registry: &str,
    realm: &Realm,
    request: reqwest::RequestBuilder,
    progress: MinProgress,
) -> Result<Answer, RegistryError> {
    let response = tokio::time::timeout(progress.window, request.send())
        .await
        .map_err(|_| {
            token_error(
                registry,
                realm,
                format!(
                    "no answer within {}",
                    humantime::format_duration(progress.window)
                ),
            )
        })?
        .map_err(|e| token_error(registry, realm, format!("{}", e.without_url())))?;
    let status = response.status();
    let body = read_capped(response, MAX_TOKEN_RESPONSE, progress, registry, "token request")
        .await
        .map_err(|e| match e {
            RegistryError::Stalled { received, .. } => token_error(
                registry,
                realm,
                format!("HTTP {}: the response stalled ({received} bytes in the last window, below {progress})", status.as_u16()),
            ),
            other => token_error(registry, realm, crate::error_chain(&other)),
        })?;
    if body.truncated {
        return Err(token_error(
            registry,
            realm,
            format!(
                "HTTP {}: response larger than {MAX_TOKEN_RESPONSE} bytes, too large for a token",
                status.as_u16()
            ),
        ));
    }
    Ok(Answer {
        status,
        body: bytes::Bytes::from(body.bytes),
    })
}

/// A token server's successful answer with `body`, read as the token flow reads it: the
/// `Authorization` header value and how long the token is used before it is refreshed.
pub(crate) fn read_token_body(
    registry: &str,
    realm: &Realm,
    body: &[u8],
) -> Result<(String, Duration), RegistryError> {
    let started = Instant::now();
    let token = Answer {
        status: reqwest::StatusCode::OK,
        body: bytes::Bytes::copy_from_slice(body),
    }
    .token(registry, realm, started)?;
    Ok((token.header(), token.refresh_at.duration_since(started)))
}

impl Answer {
    fn token(
        self,
        registry: &str,
        realm: &Realm,
        started: Instant,
    ) -> Result<Token, RegistryError> {
        let fail = |detail: String| token_error(registry, realm, detail);
        if !self.status.is_success() {
            return Err(fail(match self.status.as_u16() {
                401 | 403 => format!(
                    "HTTP {}: the token server refused the credentials",
                    self.status.as_u16()
                ),
                code => format!("HTTP {code}"),
            }));
        }
        let parsed: TokenResponse = serde_json::from_slice(&self.body)
            .map_err(|e| fail(format!("invalid token response: {e}")))?;
        let value = parsed
            .access_token
            .or(parsed.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("token response has neither token nor access_token".into()))?;
        // The spec's default lifetime is 60 s, and shorter values are treated as 60 s.
        // Capped at a day: a token server's nonsense cannot overflow the clock.
        let expires_in = parsed
            .expires_in
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(60);
        let lifetime = Duration::from_secs(expires_in.clamp(60, 86_400));
        Ok(Token {
            value,
            refresh_at: started + lifetime.mul_f64(0.9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Result<Token, RegistryError> {
        let realm = Realm {
            realm: "https://auth.example/token".into(),
            service: None,
        };
        Answer {
            status: reqwest::StatusCode::OK,
            body: bytes::Bytes::from(body.to_string()),
        }
        .token("reg.example", &realm, Instant::now())
    }

    #[test]
    fn a_negative_or_zero_lifetime_is_no_lifetime_given() {
        let started = Instant::now();
        for body in [
            r#"{"token":"t","expires_in":-1}"#,
            r#"{"token":"t","expires_in":-9223372036854775808}"#,
            r#"{"token":"t","expires_in":0}"#,
            r#"{"token":"t"}"#,
        ] {
            let token = answer(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            // The default 60 s, refreshed at 90%.
            let left = token.refresh_at.duration_since(started);
            assert!(
                left >= Duration::from_secs(53) && left <= Duration::from_secs(55),
                "{body}: {left:?}"
            );
        }
        let long = answer(r#"{"access_token":"t","expires_in":3600}"#).unwrap();
        assert!(long.refresh_at.duration_since(started) >= Duration::from_secs(3200));
    }

    #[test]
    fn secrets_go_to_https_realms_and_to_plain_http_ones_only_on_a_plain_http_hosts_own_host() {
        let realm = |url: &str| Realm {
            realm: url.into(),
            service: None,
        };
        let refused = |url: &str, origin: &str| realm(url).refuses_secrets("reg:5000", origin);
        // HTTPS realms, wherever they are.
        for origin in ["https://reg:5000", "http://reg:5000"] {
            assert_eq!(refused("https://auth.example/token", origin), None);
            assert_eq!(refused("https://reg:5001/token", origin), None);
        }
        // A registry reached over HTTPS: no plain-HTTP realm, not even on its own host.
        for url in ["http://reg:5000/token", "HTTP://auth.example/token"] {
            let why = refused(url, "https://reg:5000").expect(url);
            assert!(
                why.starts_with("reg:5000 is reached over HTTPS") && why.contains("https://"),
                "{why}"
            );
        }
        // A registry configured as plain HTTP: its own host, on any port, and no other.
        assert_eq!(refused("http://reg:5000/token", "http://reg:5000"), None);
        assert_eq!(refused("http://REG:5001/token", "http://reg:5000"), None);
        assert_eq!(refused("http://[::1]:1/t", "http://[::1]:5000"), None);
        let why = refused("http://auth.example/token", "http://reg:5000").expect("another host");
        assert!(
            why.contains("unencrypted to reg only, and the realm is on auth.example")
                && why.contains("or serve it on reg"),
            "{why}"
        );
        assert!(refused("http://127.0.0.2/t", "http://127.0.0.1:5000").is_some());
    }

    #[test]
    fn token_debug_hides_value() {
        let t = Token {
            value: "s3cr3t".into(),
            refresh_at: Instant::now(),
        };
        assert_eq!(format!("{t:?}"), "Token(***)");
    }

    #[test]
    fn realm_only_from_bearer_with_realm() {
        let c = super::super::challenge::parse([r#"Bearer realm="https://a/t",service="s""#]);
        assert_eq!(
            Realm::from_challenge(&c[0]),
            Some(Realm {
                realm: "https://a/t".into(),
                service: Some("s".into())
            })
        );
        let basic = super::super::challenge::parse([r#"Basic realm="x""#]);
        assert_eq!(Realm::from_challenge(&basic[0]), None);
        let no_realm = super::super::challenge::parse(["Bearer service=x"]);
        assert_eq!(Realm::from_challenge(&no_realm[0]), None);
    }
}
