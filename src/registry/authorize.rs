//! How a request earns the registry's consent: which credential it carries, what a `401` or `403`
//! answer means, and when to give up.
//!
//! [`Authorizer`] keeps what outlives one request: how each host wants to be asked (learned from
//! its first `401`), bearer tokens, and which credential worked for a repository. [`AuthAttempt`]
//! is one request's way through the candidates: unlike containerd's authorizer, which has one
//! credential per host, prepull tries every matching credential in the kubelet's order and stops
//! at the first the registry accepts, so the attempt is a value with named transitions:
//! - [`AuthAttempt::on_unauthorized`]: the first `401` teaches the scheme and the request is sent
//!   again; a token that stopped working mid-pull is renewed once; else this candidate is refused;
//! - [`AuthAttempt::on_forbidden`]: ECR's `403 … expired` renews the token once; else refused;
//! - [`AuthAttempt::on_token_error`]: the token endpoint refused the candidate;
//! - [`AuthAttempt::next_candidate`]: the next credential, or [`Step::GiveUp`] when none is left,
//!   and [`AuthAttempt::refused`] then lists what each one was told.
//!
//! The request side (`request.rs`) sends, and hands each answer to these transitions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};

use super::pull_scope::{PullCredentials, PullScope};
use super::token::{Realm, TokenCache};
use super::{challenge, lock, Endpoint, RegistryError};
use crate::credentials::{Credential, CredentialSource, Secret};
use crate::reference::Reference;

/// How a registry wants requests authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scheme {
    /// Tokens from this realm.
    Bearer(Realm),
    /// Username and password with every request.
    Basic,
}

/// What the registry's answer asks the request to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Send again with the same credential, first dropping the token minted for it from `stale`
    /// when there is one (it expired).
    Again {
        /// The realm whose cached token the registry refused.
        stale: Option<Realm>,
    },
    /// Send with the next credential.
    Next,
    /// Every credential was refused: the request fails with [`AuthAttempt::refused`].
    GiveUp,
}

/// Where one request goes and what it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AuthTarget {
    /// The host spoken to (the registry or a mirror): schemes, tokens and the credential that
    /// worked belong to it.
    pub host: String,
    /// `scheme://host[:port]` of the host spoken to: whether it was configured as plain HTTP
    /// decides where its credentials may go.
    pub origin: String,
    /// The image's registry, for the error.
    pub registry: String,
    /// The repository.
    pub repository: String,
    /// The name credentials are looked up under: the image's `registry/repository`, or
    /// `mirror/repository` (a mirror gets only credentials configured for the mirror itself).
    pub lookup: String,
}

impl AuthTarget {
    /// The target of a request for `reference` to `endpoint`.
    pub fn new(endpoint: &Endpoint, reference: &Reference) -> AuthTarget {
        let repository = reference.repository();
        AuthTarget {
            host: endpoint.host.clone(),
            origin: endpoint.origin.clone(),
            registry: reference.registry().to_string(),
            repository: repository.to_string(),
            lookup: if endpoint.mirror {
                format!("{}/{repository}", endpoint.host)
            } else {
                reference.name()
            },
        }
    }

    /// The token scope every request of a pull needs.
    pub fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
    }

    /// The image's name, as credentials are matched against it.
    fn image(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// What a `401` said: the scheme it offers and whether the token lacked the scope asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Challenged {
    /// Bearer with a realm if offered, else Basic if offered.
    pub offered: Option<Scheme>,
    /// `error="insufficient_scope"`: a fresh token did not grant pull.
    pub insufficient: bool,
}

impl Challenged {
    /// Reads the `WWW-Authenticate` headers of a `401`.
    pub fn from_headers(headers: &HeaderMap) -> Challenged {
        let challenges = challenge::parse(
            headers
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
        Challenged {
            offered,
            insufficient: challenges
                .iter()
                .any(|c| c.param("error") == Some("insufficient_scope")),
        }
    }
}

/// What the request under way carries.
#[derive(Clone, Debug, Default)]
struct Sent {
    /// The scheme known for the host when it was sent.
    scheme: Option<Scheme>,
    /// Whether it carried an `Authorization` header.
    authorized: bool,
}

/// One request's way through the matching credentials; see the module doc.
#[derive(Debug)]
pub(super) struct AuthAttempt {
    target: AuthTarget,
    /// Every matching credential in keyring order; one `None` (anonymous) when none matches.
    candidates: Vec<Option<Arc<Credential>>>,
    /// The candidate being tried.
    at: usize,
    sent: Sent,
    /// What each refused candidate was told, for the error once all are.
    tried: Vec<String>,
    /// The token of the current candidate was renewed already: a second refusal is final.
    renewed: bool,
    /// The scheme was learned from a `401` already: it is learned once per request.
    learned: bool,
}

impl AuthAttempt {
    /// An attempt with `found` credentials (anonymous when empty), starting at the one that
    /// `worked` last for this host and repository.
    pub fn new(target: AuthTarget, found: Vec<Arc<Credential>>, worked: Option<u64>) -> Self {
        let candidates: Vec<Option<Arc<Credential>>> = if found.is_empty() {
            vec![None]
        } else {
            found.into_iter().map(Some).collect()
        };
        let at = candidates
            .iter()
            .position(|c| c.as_deref().map(Credential::id) == worked)
            .unwrap_or(0);
        AuthAttempt {
            target,
            candidates,
            at,
            sent: Sent::default(),
            tried: Vec::new(),
            renewed: false,
            learned: false,
        }
    }

    /// Where the request goes.
    pub fn target(&self) -> &AuthTarget {
        &self.target
    }

    /// The credential being tried; `None`: anonymous.
    pub fn candidate(&self) -> Option<&Credential> {
        self.candidates.get(self.at).and_then(|c| c.as_deref())
    }

    /// Records what the next request carries: the scheme known for the host, and whether an
    /// `Authorization` header goes with it.
    pub fn sending(&mut self, scheme: Option<Scheme>, authorized: bool) {
        self.sent = Sent { scheme, authorized };
    }

    /// The token endpoint failed for this candidate: it is refused.
    pub fn on_token_error(&mut self, error: &RegistryError) -> Step {
        self.refuse(error.to_string())
    }

    /// The registry answered `401` with `answer`. `misses` says why configured credentials do
    /// not match a lookup name, for the message when the request went anonymous.
    pub fn on_unauthorized(
        &mut self,
        answer: &Challenged,
        misses: impl FnOnce(&str) -> Vec<String>,
    ) -> Step {
        if let Some(offered) = &answer.offered {
            // First contact: now we know how this host wants to be asked. Anonymous requests to
            // a Basic registry have nothing to add, so they learn and fail below.
            let worth_asking = self.candidate().is_some() || matches!(offered, Scheme::Bearer(_));
            if !self.sent.authorized && !self.learned && worth_asking {
                self.learned = true;
                return Step::Again { stale: None };
            }
            // A token that worked may have expired mid-pull: renew it once.
            if let Scheme::Bearer(realm) = offered {
                if self.sent.authorized && !self.renewed && !answer.insufficient {
                    self.renewed = true;
                    return Step::Again {
                        stale: Some(realm.clone()),
                    };
                }
            }
        }
        let why = self.why_unauthorized(answer, misses);
        self.refuse(why)
    }

    /// The registry answered `403` with `error` (from [`super::request::status_error`]). ECR says
    /// an expired token so: renewed once; any other `403` refuses this candidate.
    pub fn on_forbidden(&mut self, error: RegistryError) -> Result<Step, RegistryError> {
        let expired = error.to_string().to_ascii_lowercase().contains("expired");
        if expired && !self.renewed {
            self.renewed = true;
            let stale = match &self.sent.scheme {
                Some(Scheme::Bearer(realm)) => Some(realm.clone()),
                _ => None,
            };
            return Ok(Step::Again { stale });
        }
        let RegistryError::Unauthorized { detail, .. } = error else {
            return Err(error);
        };
        Ok(self.refuse(detail))
    }

    /// Moves on to the next credential; [`Step::GiveUp`] when this was the last.
    pub fn next_candidate(&mut self) -> Step {
        if self.at + 1 < self.candidates.len() {
            self.at += 1;
            self.renewed = false;
            Step::Next
        } else {
            Step::GiveUp
        }
    }

    /// The error once every candidate was refused, listing what each was told.
    pub fn refused(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.target.registry.clone(),
            repository: self.target.repository.clone(),
            detail: format!("tried {}", self.tried.join("; ")),
        }
    }

    /// Records why the current candidate was refused and moves on.
    fn refuse(&mut self, why: String) -> Step {
        let who = self
            .candidate()
            .map_or_else(|| "anonymous".to_string(), |c| c.source.clone());
        self.tried.push(format!("{who}: {why}"));
        self.next_candidate()
    }

    /// What a final `401` means, naming what to fix.
    fn why_unauthorized(
        &self,
        answer: &Challenged,
        misses: impl FnOnce(&str) -> Vec<String>,
    ) -> String {
        let image = self.target.image();
        let anonymous = self.candidate().is_none();
        match (&answer.offered, answer.insufficient) {
            (None, _) => "HTTP 401 without a usable challenge".to_string(),
            (Some(Scheme::Basic), _) if anonymous => {
                let misses = misses(&self.target.lookup);
                format!(
                    "the registry asks for Basic credentials and none matched {image}{}",
                    listed(" (", &misses, ")")
                )
            }
            (_, true) if anonymous => {
                let misses = misses(&self.target.lookup);
                format!(
                    "HTTP 401 insufficient_scope (the repository does not exist, or it needs \
                     credentials and none matched {image}{})",
                    listed(": ", &misses, "")
                )
            }
            (_, true) => "HTTP 401 insufficient_scope (the repository does not exist, or these \
                          credentials may not pull it)"
                .to_string(),
            _ => "HTTP 401".to_string(),
        }
    }
}

/// `items` joined with `; ` between `open` and `close`, or nothing when there are none.
fn listed(open: &str, items: &[String], close: &str) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{open}{}{close}", items.join("; "))
    }
}

/// What authorization remembers across requests; see the module doc.
pub(super) struct Authorizer {
    tokens: TokenCache,
    credentials: Arc<dyn CredentialSource>,
    /// How each host authorizes, learned from its first `401`.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// The [`Credential::id`] that worked last, per (host, repository).
    working: Mutex<HashMap<(String, String), u64>>,
    /// The credentials' [`CredentialSource::generation`] the caches were filled under.
    generation: AtomicU64,
    /// Credentials found for the pulls under way.
    pulls: Arc<PullCredentials>,
}

impl Authorizer {
    /// An authorizer drawing on `credentials`.
    pub fn new(credentials: Arc<dyn CredentialSource>, progress: super::MinProgress) -> Authorizer {
        Authorizer {
            tokens: TokenCache::new(progress),
            credentials,
            schemes: Mutex::default(),
            working: Mutex::default(),
            generation: AtomicU64::new(0),
            pulls: Arc::default(),
        }
    }

    /// See [`super::RegistryClient::begin_pull`].
    pub fn begin_pull(&self, reference: &Reference) -> PullScope {
        self.pulls.begin(reference.name())
    }

    /// Starts authorizing a request for `reference` to `endpoint`: its credentials (once per
    /// pull scope), starting with the one that worked last.
    pub async fn attempt(&self, endpoint: &Endpoint, reference: &Reference) -> AuthAttempt {
        let target = AuthTarget::new(endpoint, reference);
        let found = self
            .pulls
            .get(&reference.name(), &target.lookup, || {
                self.credentials.lookup(&target.lookup)
            })
            .await;
        self.forget_old_credentials();
        let worked = lock(&self.working)
            .get(&(target.host.clone(), target.repository.clone()))
            .copied();
        AuthAttempt::new(target, found, worked)
    }

    /// The `Authorization` header for the attempt's next request, if the host's scheme and the
    /// candidate call for one.
    pub async fn authorization(
        &self,
        http: &reqwest::Client,
        attempt: &mut AuthAttempt,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let target = attempt.target();
        let scheme = lock(&self.schemes).get(&target.host).cloned();
        let header = self
            .header(http, target, scheme.as_ref(), attempt.candidate())
            .await?;
        attempt.sending(scheme, header.is_some());
        Ok(header)
    }

    /// Hands a `401`'s headers to the attempt, remembering the scheme the host offered.
    pub fn on_unauthorized(&self, attempt: &mut AuthAttempt, headers: &HeaderMap) -> Step {
        let answer = Challenged::from_headers(headers);
        if let Some(offered) = &answer.offered {
            lock(&self.schemes).insert(attempt.target().host.clone(), offered.clone());
        }
        attempt.on_unauthorized(&answer, |lookup| self.credentials.near_misses(lookup))
    }

    /// Carries out `step`: drops a stale token before sending again, and ends the attempt with
    /// its error when every credential was refused.
    pub async fn settle(&self, attempt: &AuthAttempt, step: Step) -> Result<(), RegistryError> {
        match step {
            Step::Again { stale: Some(realm) } => {
                let scope = attempt.target().scope();
                self.tokens
                    .invalidate(&realm, &scope, attempt.candidate())
                    .await;
                Ok(())
            }
            Step::Again { stale: None } | Step::Next => Ok(()),
            Step::GiveUp => Err(attempt.refused()),
        }
    }

    /// A token from `realm` asked for without credentials, for a redirect target (see
    /// `redirect`): no credential of any registry goes to a realm a redirect target names.
    pub async fn anonymous_token(
        &self,
        http: &reqwest::Client,
        host: &str,
        realm: &Realm,
        scope: &str,
    ) -> Result<super::token::Token, RegistryError> {
        self.tokens.token(http, host, realm, scope, None).await
    }

    /// What containerd's own fetch of `reference` from `endpoint` may be given (see
    /// [`crate::store::TransferAuth`]): the credential prepull would send there first, only once
    /// prepull itself has seen how the host authorizes, and never a secret the host's token
    /// realm may not have (the rule [`Realm::refuses_secrets`] applies to prepull's own
    /// requests). A registry token (sent as it is) cannot be handed over: containerd then goes
    /// on without credentials.
    pub async fn hand_over(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
    ) -> Option<crate::store::TransferAuth> {
        use crate::store::TransferAuth;
        let attempt = self.attempt(endpoint, reference).await;
        let target = attempt.target();
        let secret = &attempt.candidate()?.secret;
        let scheme = lock(&self.schemes).get(&target.host).cloned()?;
        if let Scheme::Bearer(realm) = &scheme {
            if let Some(problem) = realm.refuses_secrets(&target.host, &target.origin) {
                tracing::warn!(
                    host = target.host,
                    realm = realm.realm,
                    problem,
                    "credentials not handed to containerd: its token realm may not have them"
                );
                return None;
            }
        }
        match (secret, scheme) {
            (Secret::Basic { username, password }, _) => Some(TransferAuth::Credentials {
                username: username.clone(),
                password: password.clone(),
            }),
            (Secret::IdentityToken { token, .. }, Scheme::Bearer(_)) => {
                Some(TransferAuth::Refresh(token.clone()))
            }
            _ => None,
        }
    }

    /// The registry accepted the attempt's credential: it is tried first from now on.
    pub fn accepted(&self, attempt: &AuthAttempt) {
        if let Some(c) = attempt.candidate() {
            let target = attempt.target();
            lock(&self.working).insert((target.host.clone(), target.repository.clone()), c.id());
        }
    }

    /// After the credentials were reloaded, tokens minted from the old ones and the memory of
    /// which one worked are dropped.
    fn forget_old_credentials(&self) {
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

    /// The header value `credential` calls for under `scheme`; secrets are marked sensitive.
    async fn header(
        &self,
        http: &reqwest::Client,
        target: &AuthTarget,
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
            (secret, Some(Scheme::Bearer(realm))) => {
                // Checked here, before any token request: the realm is the registry's word, and
                // a secret must not follow it where the registry's configuration does not allow.
                let sends_secret = matches!(
                    secret,
                    Some(Secret::Basic { .. } | Secret::IdentityToken { .. })
                );
                if let Some(problem) = realm
                    .refuses_secrets(&target.host, &target.origin)
                    .filter(|_| sends_secret)
                {
                    return Err(RegistryError::InsecureRealm {
                        registry: target.host.clone(),
                        realm: realm.realm.clone(),
                        problem,
                    });
                }
                Some(
                    self.tokens
                        .token(http, &target.host, realm, &target.scope(), credential)
                        .await?
                        .header(),
                )
            }
        };
        value
            .map(|v| {
                let mut v = HeaderValue::from_str(&v).map_err(|_| RegistryError::Token {
                    registry: target.host.clone(),
                    realm: String::new(),
                    detail: "the credential is not a valid header value".into(),
                })?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> AuthTarget {
        AuthTarget {
            host: "reg.example".into(),
            origin: "https://reg.example".into(),
            registry: "reg.example".into(),
            repository: "team/app".into(),
            lookup: "reg.example/team/app".into(),
        }
    }

    fn basic(source: &str) -> Arc<Credential> {
        Arc::new(Credential {
            source: source.into(),
            secret: Secret::Basic {
                username: "u".into(),
                password: format!("p-{source}"),
            },
        })
    }

    fn realm() -> Realm {
        Realm {
            realm: "https://auth.example/token".into(),
            service: Some("reg.example".into()),
        }
    }

    fn bearer() -> Challenged {
        Challenged {
            offered: Some(Scheme::Bearer(realm())),
            insufficient: false,
        }
    }

    fn insufficient() -> Challenged {
        Challenged {
            insufficient: true,
            ..bearer()
        }
    }

    fn basic_challenge() -> Challenged {
        Challenged {
            offered: Some(Scheme::Basic),
            insufficient: false,
        }
    }

    fn no_misses(_: &str) -> Vec<String> {
        Vec::new()
    }

    fn detail(e: RegistryError) -> String {
        match e {
            RegistryError::Unauthorized { detail, .. } => detail,
            other => panic!("not Unauthorized: {other}"),
        }
    }

    #[test]
    fn the_first_401_teaches_the_scheme_and_the_request_goes_again_once() {
        let mut a = AuthAttempt::new(target(), Vec::new(), None);
        assert!(a.candidate().is_none(), "no credential: anonymous");
        a.sending(None, false);
        assert_eq!(
            a.on_unauthorized(&bearer(), no_misses),
            Step::Again { stale: None }
        );
        // The anonymous token lacks the scope: the repository is missing or needs credentials.
        a.sending(Some(Scheme::Bearer(realm())), true);
        let step = a.on_unauthorized(&insufficient(), |lookup| {
            assert_eq!(lookup, "reg.example/team/app");
            vec!["auths[\"reg.example:5000\"]: the port differs".into()]
        });
        assert_eq!(step, Step::GiveUp);
        assert_eq!(
            detail(a.refused()),
            "tried anonymous: HTTP 401 insufficient_scope (the repository does not exist, or it \
             needs credentials and none matched reg.example/team/app: auths[\"reg.example:5000\"]: \
             the port differs)"
        );
    }

    #[test]
    fn an_anonymous_request_to_a_basic_registry_fails_at_once_naming_the_near_misses() {
        let mut a = AuthAttempt::new(target(), Vec::new(), None);
        a.sending(None, false);
        let step = a.on_unauthorized(&basic_challenge(), |_| vec!["a".into(), "b".into()]);
        assert_eq!(step, Step::GiveUp);
        assert_eq!(
            detail(a.refused()),
            "tried anonymous: the registry asks for Basic credentials and none matched \
             reg.example/team/app (a; b)"
        );
        let mut none = AuthAttempt::new(target(), Vec::new(), None);
        none.sending(None, false);
        none.on_unauthorized(&basic_challenge(), no_misses);
        assert!(detail(none.refused()).ends_with("none matched reg.example/team/app"));
    }

    #[test]
    fn the_scheme_is_learned_once_per_request() {
        let mut a = AuthAttempt::new(target(), vec![basic("first")], None);
        a.sending(None, false);
        assert_eq!(
            a.on_unauthorized(&basic_challenge(), no_misses),
            Step::Again { stale: None }
        );
        // Still nothing to send (say, an identity token for a Basic registry): refused, not
        // another round.
        a.sending(Some(Scheme::Basic), false);
        assert_eq!(
            a.on_unauthorized(&basic_challenge(), no_misses),
            Step::GiveUp
        );
        assert_eq!(detail(a.refused()), "tried first: HTTP 401");
    }

    #[test]
    fn a_token_refused_mid_pull_is_renewed_once_per_credential() {
        let mut a = AuthAttempt::new(target(), vec![basic("first"), basic("second")], None);
        a.sending(Some(Scheme::Bearer(realm())), true);
        assert_eq!(
            a.on_unauthorized(&bearer(), no_misses),
            Step::Again {
                stale: Some(realm())
            }
        );
        assert_eq!(a.on_unauthorized(&bearer(), no_misses), Step::Next);
        assert_eq!(a.candidate().map(|c| c.source.as_str()), Some("second"));
        // The next credential gets its own renewal.
        assert_eq!(
            a.on_unauthorized(&bearer(), no_misses),
            Step::Again {
                stale: Some(realm())
            }
        );
        assert_eq!(a.on_unauthorized(&insufficient(), no_misses), Step::GiveUp);
        assert_eq!(
            detail(a.refused()),
            "tried first: HTTP 401; second: HTTP 401 insufficient_scope (the repository does not \
             exist, or these credentials may not pull it)"
        );
    }

    #[test]
    fn a_401_without_a_usable_challenge_refuses_the_credential() {
        let mut a = AuthAttempt::new(target(), vec![basic("only")], None);
        a.sending(None, false);
        assert_eq!(
            a.on_unauthorized(&Challenged::default(), no_misses),
            Step::GiveUp
        );
        assert_eq!(
            detail(a.refused()),
            "tried only: HTTP 401 without a usable challenge"
        );
    }

    #[test]
    fn the_credential_that_worked_last_is_tried_first() {
        let (first, second) = (basic("first"), basic("second"));
        let a = AuthAttempt::new(target(), vec![first, second.clone()], Some(second.id()));
        assert_eq!(a.candidate().map(|c| c.source.as_str()), Some("second"));
        let gone = AuthAttempt::new(target(), vec![basic("first")], Some(second.id()));
        assert_eq!(gone.candidate().map(|c| c.source.as_str()), Some("first"));
    }

    #[test]
    fn an_expired_403_renews_the_token_once_and_other_403s_refuse() {
        let forbidden = |message: &str| RegistryError::Unauthorized {
            registry: "reg.example".into(),
            repository: "team/app".into(),
            detail: format!("HTTP 403 DENIED: {message}"),
        };
        let mut a = AuthAttempt::new(target(), vec![basic("ecr"), basic("other")], None);
        a.sending(Some(Scheme::Bearer(realm())), true);
        let step = a.on_forbidden(forbidden("Your authorization token has expired"));
        assert_eq!(
            step.ok(),
            Some(Step::Again {
                stale: Some(realm())
            })
        );
        let step = a.on_forbidden(forbidden("Your authorization token has expired"));
        assert_eq!(step.ok(), Some(Step::Next));
        // Without a bearer scheme there is no token to drop, but the request goes again once.
        a.sending(Some(Scheme::Basic), true);
        let step = a.on_forbidden(forbidden("token expired"));
        assert_eq!(step.ok(), Some(Step::Again { stale: None }));
        assert_eq!(a.on_forbidden(forbidden("no")).ok(), Some(Step::GiveUp));
        assert_eq!(
            detail(a.refused()),
            "tried ecr: HTTP 403 DENIED: Your authorization token has expired; other: HTTP 403 \
             DENIED: no"
        );
        // Anything but a refusal is the request's error as it is.
        let other = RegistryError::Status {
            registry: "reg.example".into(),
            repository: "team/app".into(),
            action: "GET blob".into(),
            status: 500,
            code: None,
            message: None,
        };
        assert!(matches!(
            a.on_forbidden(other),
            Err(RegistryError::Status { status: 500, .. })
        ));
    }

    #[test]
    fn a_token_endpoint_failure_moves_to_the_next_credential() {
        let mut a = AuthAttempt::new(target(), vec![basic("first"), basic("second")], None);
        let refused = RegistryError::Token {
            registry: "reg.example".into(),
            realm: "https://auth.example/token".into(),
            detail: "HTTP 401: the token server refused the credentials".into(),
        };
        assert_eq!(a.on_token_error(&refused), Step::Next);
        assert_eq!(a.on_token_error(&refused), Step::GiveUp);
        let detail = detail(a.refused());
        assert!(
            detail.starts_with("tried first: registry reg.example: token request to")
                && detail.contains("; second: registry reg.example"),
            "{detail}"
        );
        assert!(!detail.contains("p-first"), "no secret in errors: {detail}");
    }

    #[test]
    fn a_401_offers_bearer_before_basic_and_says_when_the_scope_was_short() {
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.example/token",service="reg.example",error="insufficient_scope""#,
            ),
        );
        assert_eq!(Challenged::from_headers(&h), insufficient());
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert_eq!(Challenged::from_headers(&h), basic_challenge());
        assert_eq!(
            Challenged::from_headers(&HeaderMap::new()),
            Challenged::default()
        );
    }

    /// A realm on a closed loopback port: a token request to it fails at once.
    fn closed_http_realm() -> Scheme {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Scheme::Bearer(Realm {
            realm: format!("http://127.0.0.1:{port}/token"),
            service: None,
        })
    }

    #[tokio::test]
    async fn no_secret_goes_to_a_plain_http_realm_for_an_https_registry_but_anonymous_requests_do()
    {
        let auth = Authorizer::new(
            Arc::new(crate::credentials::Keyring::new()),
            Default::default(),
        );
        let http = reqwest::Client::new();
        let scheme = closed_http_realm();
        let identity = Credential {
            source: "identity".into(),
            secret: Secret::IdentityToken {
                username: "<token>".into(),
                token: "a-refresh-token".into(),
            },
        };
        for credential in [&*basic("password"), &identity] {
            let e = auth
                .header(&http, &target(), Some(&scheme), Some(credential))
                .await
                .expect_err("refused");
            assert!(
                matches!(e, RegistryError::InsecureRealm { .. }),
                "{}: {e}",
                credential.source
            );
            assert_eq!(e.kind(), crate::kind::ErrorKind::Config);
            let text = e.to_string();
            assert!(
                text.starts_with("registry reg.example: credentials not sent to the token realm http://127.0.0.1:")
                    && text.contains("auth.token.realm")
                    && !text.contains("p-password")
                    && !text.contains("a-refresh-token"),
                "{text}"
            );
        }
        // Without a secret the realm is asked (and here does not answer).
        let e = auth
            .header(&http, &target(), Some(&scheme), None)
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, RegistryError::Token { .. }), "{e}");
        // A registry configured as plain HTTP on the realm's host may send its secrets there.
        let plain = AuthTarget {
            host: "127.0.0.1:5000".into(),
            origin: "http://127.0.0.1:5000".into(),
            ..target()
        };
        let e = auth
            .header(&http, &plain, Some(&scheme), Some(&basic("password")))
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, RegistryError::Token { .. }), "{e}");
    }

    #[test]
    fn a_mirror_is_asked_with_its_own_credentials() {
        let endpoint = Endpoint {
            origin: "https://mirror.example:5000".into(),
            api_path: "/v2".into(),
            host: "mirror.example:5000".into(),
            mirror: true,
            resolve: true,
            pull: true,
            tls: Default::default(),
            headers: Vec::new(),
            dial_timeout: None,
            named_in: None,
        };
        let reference: Reference = "reg.example/team/app:1".parse().expect("a reference");
        let t = AuthTarget::new(&endpoint, &reference);
        assert_eq!(t.host, "mirror.example:5000");
        assert_eq!(t.lookup, "mirror.example:5000/team/app");
        assert_eq!(t.registry, "reg.example");
        assert_eq!(t.scope(), "repository:team/app:pull");
        let upstream = Endpoint {
            mirror: false,
            ..endpoint
        };
        assert_eq!(
            AuthTarget::new(&upstream, &reference).lookup,
            "reg.example/team/app"
        );
    }
}
