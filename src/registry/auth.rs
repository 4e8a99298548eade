//! Bearer tokens: fetching them from a challenge's realm and caching them per scope.
//!
//! Concurrent requests that need the same token wait for one fetch (single flight); tokens are
//! refreshed once 90% of their lifetime has passed. Token values never appear in Debug output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::challenge::Challenge;
use super::RegistryError;
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
    slots: Mutex<HashMap<Key, Slot>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenCache {
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
        let token = fetch(http, registry, realm, scope, credential).await?;
        *guard = Some(token.clone());
        Ok(token)
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps cannot leave them inconsistent (single inserts).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn fetch(
    http: &reqwest::Client,
    registry: &str,
    realm: &Realm,
    scope: &str,
    credential: Option<&Credential>,
) -> Result<Token, RegistryError> {
    let fail = |detail: String| RegistryError::Token {
        registry: registry.to_string(),
        realm: realm.realm.clone(),
        detail,
    };
    let started = Instant::now();
    let request = match credential.map(|c| &c.secret) {
        // An OAuth2 refresh token can only be exchanged with a POST.
        Some(Secret::IdentityToken { token, .. }) => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", "prepull"),
                ("scope", scope),
            ];
            if let Some(service) = &realm.service {
                form.push(("service", service));
            }
            http.post(&realm.realm).form(&form)
        }
        other => {
            let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
            if let Some(service) = &realm.service {
                query.push(("service", service));
            }
            let mut request = http.get(&realm.realm).query(&query);
            if let Some(Secret::Basic { username, password }) = other {
                request = request
                    .query(&[("account", username.as_str())])
                    .basic_auth(username, Some(password));
            }
            request
        }
    };
    let response = request
        .send()
        .await
        .map_err(|e| fail(format!("{}", e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(match status.as_u16() {
            401 | 403 => format!(
                "HTTP {}: the token server refused the credentials",
                status.as_u16()
            ),
            code => format!("HTTP {code}"),
        }));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| fail(format!("{}", e.without_url())))?;
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| fail(format!("invalid token response: {e}")))?;
    let value = parsed
        .access_token
        .or(parsed.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| fail("token response has neither token nor access_token".into()))?;
    // The spec's default lifetime is 60 s, and shorter values are treated as 60 s.
    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).max(60));
    Ok(Token {
        value,
        refresh_at: started + lifetime.mul_f64(0.9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
