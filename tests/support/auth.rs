//! A token server for the distribution token-auth flow, in-process on a free loopback port
//! (hyper 1, plain HTTP), minting ES256 JWTs that a real docker-registry configured with
//! [`TokenServer::registry_auth`] accepts.
//!
//! - `GET /token?service=S&scope=repository:NAME:pull[,push]&scope=…` with an optional
//!   `Authorization: Basic` (anonymous allowed or not; the password may be a refresh token, as
//!   ACR allows), optional `offline_token=true&client_id=…` for a refresh token, as Docker does.
//! - `POST /token` (form): `grant_type=password&username&password` or
//!   `grant_type=refresh_token&refresh_token=…`, plus `service`, `client_id`, `scope` (space
//!   joined) and optional `access_type=offline`, as containerd does. It can be switched off
//!   (404 like GCR, 405) to exercise a client's GET fallback.
//! - Answers `{"token","access_token","expires_in","issued_at","refresh_token"?}`.
//!
//! Access is what the [`Rule`]s grant: requested actions the rules do not allow are silently
//! dropped, as real token servers do, so the registry answers `insufficient_scope` later.
//! Unknown users, wrong passwords and unknown refresh tokens get 401. Every request is recorded
//! (kind, user name, scopes, status) without passwords or tokens, for assertions; nothing here
//! prints secrets.
//!
//! docker-registry 2.8 accepts a token for 60 s past its `exp` (clock-skew leeway), which would
//! make short-lived tokens useless in tests, so by default the `exp` claim is moved back by that
//! leeway: the registry then rejects a token exactly when `expires_in` says it expires (see
//! [`registry_deadline`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How long past `exp` docker-registry 2.8 still accepts a token (`token.Leeway`).
pub const REGISTRY_LEEWAY: Duration = Duration::from_secs(60);

/// The path the token endpoint answers on.
pub const TOKEN_PATH: &str = "/token";

/// How the server answers `POST /token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostSupport {
    /// OAuth2 password and refresh-token grants.
    Supported,
    /// 404, like GCR's realm, which only does GET.
    NotFound,
    /// 405 with `Allow: GET`.
    MethodNotAllowed,
}

/// Which token fields a successful response carries (clients should prefer `access_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFields {
    Both,
    TokenOnly,
    AccessTokenOnly,
}

/// When a password grant (or an authenticated GET) also returns a `refresh_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshTokens {
    Never,
    /// When asked: `access_type=offline` (POST) or `offline_token=true` (GET), as Docker Hub does.
    Offline,
    /// On every password grant and authenticated GET.
    Always,
}

/// Grants `actions` on repositories matching `repo` to `user` (`None`: everyone, anonymous
/// included). `repo` is an exact name, `*`, or a prefix ending in `*` (`team/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub repo: String,
    pub user: Option<String>,
    pub actions: Vec<String>,
}

impl Rule {
    fn matches(&self, repo: &str, user: Option<&str>) -> bool {
        let who = match &self.user {
            None => true,
            Some(u) => Some(u.as_str()) == user,
        };
        let name = match self.repo.strip_suffix('*') {
            Some(prefix) => repo.starts_with(prefix),
            None => repo == self.repo,
        };
        who && name
    }
}

#[derive(Clone)]
pub struct TokenServerOptions {
    /// The registry's `auth.token.service`; the JWT's `aud`. Requests must name it.
    pub service: String,
    /// The registry's `auth.token.issuer`; the JWT's `iss`.
    pub issuer: String,
    /// `expires_in`, whole seconds (at least 1). The registry rejects the token once it is over.
    pub lifetime: Duration,
    /// Users and their passwords.
    pub users: Vec<(String, String)>,
    pub rules: Vec<Rule>,
    /// Whether a request without credentials gets a token at all (with only what rules for
    /// `user: None` grant) or a 401.
    pub anonymous: bool,
    pub post: PostSupport,
    pub fields: TokenFields,
    pub refresh_tokens: RefreshTokens,
    /// Subtracted from `exp` to cancel the registry's leeway; zero for plain `exp = iat + lifetime`.
    pub registry_leeway: Duration,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        TokenServerOptions {
            service: "prepull-test-registry".into(),
            issuer: "prepull-test-token-server".into(),
            lifetime: Duration::from_secs(300),
            users: Vec::new(),
            rules: Vec::new(),
            anonymous: true,
            post: PostSupport::Supported,
            fields: TokenFields::Both,
            refresh_tokens: RefreshTokens::Offline,
            registry_leeway: REGISTRY_LEEWAY,
        }
    }
}

impl TokenServerOptions {
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// Grants `actions` on `repo` (pattern) to `user` (`None`: everyone, anonymous included).
    pub fn allow(mut self, user: Option<&str>, repo: &str, actions: &[&str]) -> Self {
        self.rules.push(Rule {
            repo: repo.into(),
            user: user.map(Into::into),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        });
        self
    }

    pub fn allow_anonymous_pull(self, repo: &str) -> Self {
        self.allow(None, repo, &["pull"])
    }

    pub fn allow_pull(self, user: &str, repo: &str) -> Self {
        self.allow(Some(user), repo, &["pull"])
    }

    pub fn allow_push(self, user: &str, repo: &str) -> Self {
        self.allow(Some(user), repo, &["pull", "push"])
    }

    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub fn anonymous(mut self, allowed: bool) -> Self {
        self.anonymous = allowed;
        self
    }

    pub fn post(mut self, post: PostSupport) -> Self {
        self.post = post;
        self
    }

    pub fn fields(mut self, fields: TokenFields) -> Self {
        self.fields = fields;
        self
    }

    pub fn refresh_tokens(mut self, policy: RefreshTokens) -> Self {
        self.refresh_tokens = policy;
        self
    }
}

/// Passwords stay out of Debug output.
impl std::fmt::Debug for TokenServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServerOptions")
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("lifetime", &self.lifetime)
            .field(
                "users",
                &self
                    .users
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("rules", &self.rules)
            .field("anonymous", &self.anonymous)
            .field("post", &self.post)
            .field("fields", &self.fields)
            .field("refresh_tokens", &self.refresh_tokens)
            .field("registry_leeway", &self.registry_leeway)
            .finish()
    }
}

/// What a docker-registry needs for `auth.token` (see `RegistryOptions::token`), plus a minter so
/// the bench can push without going through (and being counted by) the token server.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM with the token signing certificate.
    pub rootcertbundle: PathBuf,
    pub minter: TokenMinter,
}

/// One repository's granted actions in a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    pub fn new(name: &str, actions: &[&str]) -> Access {
        Access {
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// Signs registry tokens: ES256 with the key of a self-signed P-256 certificate that the registry
/// trusts through `rootcertbundle`, carried in the JWT header's `x5c`.
#[derive(Clone)]
pub struct TokenMinter(Arc<MinterInner>);

struct MinterInner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// Standard (not URL-safe) base64 of the signing certificate's DER, as `x5c` requires.
    x5c: String,
    cert_pem: String,
    issuer: String,
    service: String,
    leeway: Duration,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter")
            .field("issuer", &self.0.issuer)
            .field("service", &self.0.service)
            .finish_non_exhaustive()
    }
}

/// A freshly minted token.
#[derive(Clone)]
pub struct Minted {
    pub token: String,
    pub issued_at: SystemTime,
    /// When the registry starts rejecting it (whole second, at least `lifetime` from now).
    pub deadline: SystemTime,
}

impl TokenMinter {
    /// A fresh signing key and self-signed certificate. `leeway` is subtracted from `exp` (see
    /// [`REGISTRY_LEEWAY`]).
    pub fn new(issuer: &str, service: &str, leeway: Duration) -> TokenMinter {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate the token signing key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("signing cert params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{issuer} signing key"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params
            .self_signed(&key)
            .expect("self-sign the token certificate");
        let rng = SystemRandom::new();
        let ring_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.serialized_der(), &rng)
                .expect("load the token signing key into ring");
        TokenMinter(Arc::new(MinterInner {
            key: ring_key,
            rng,
            x5c: STANDARD.encode(cert.der()),
            cert_pem: cert.pem(),
            issuer: issuer.into(),
            service: service.into(),
            leeway,
        }))
    }

    /// The signing certificate, PEM (what goes into the registry's `rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    /// A token for `subject` (empty: anonymous) valid for `lifetime` as the registry sees it.
    pub fn mint(&self, subject: &str, access: &[Access], lifetime: Duration) -> Minted {
        let now = SystemTime::now();
        let now_secs = now.duration_since(UNIX_EPOCH).expect("clock after 1970");
        // Round the deadline up so the token lives at least `lifetime`, never less.
        let deadline = (now_secs + lifetime).as_secs_f64().ceil() as i64;
        let exp = deadline - self.0.leeway.as_secs() as i64;
        Minted {
            token: self.mint_with_exp(subject, access, exp),
            issued_at: now,
            deadline: UNIX_EPOCH + Duration::from_secs(deadline as u64),
        }
    }

    /// A token whose `exp` claim is exactly `exp` (Unix seconds), with `iat = nbf = now`: for
    /// probing the registry's own expiry rules.
    pub fn mint_with_exp(&self, subject: &str, access: &[Access], exp: i64) -> String {
        let iat = unix_now();
        let header = json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [self.0.x5c],
        });
        let claims = json!({
            "iss": self.0.issuer,
            "sub": subject,
            // A string: docker-registry 2.8 decodes `aud` into a Go string, so an array fails.
            "aud": self.0.service,
            "exp": exp,
            "nbf": iat,
            "iat": iat,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "access": access.iter().map(|a| json!({
                "type": "repository",
                "name": a.name,
                "actions": a.actions,
            })).collect::<Vec<_>>(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // FIXED signing: JWS wants r||s (64 bytes), not the ASN.1 DER signature X.509 uses.
        let signature = self
            .0
            .key
            .sign(&self.0.rng, signing_input.as_bytes())
            .expect("sign the token");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// A pull+push token for `repo`, for the bench's pusher (5 minutes).
    pub fn push_token(&self, repo: &str) -> String {
        self.mint(
            "bench-pusher",
            &[Access::new(repo, &["pull", "push"])],
            Duration::from_secs(300),
        )
        .token
    }
}

/// The claims of a JWT, unverified (for assertions on what a server handed out).
pub fn token_claims(token: &str) -> Value {
    let claims = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT ({} chars)", token.len()));
    let bytes = URL_SAFE_NO_PAD
        .decode(claims)
        .expect("JWT claims are not base64url");
    serde_json::from_slice(&bytes).expect("JWT claims are not JSON")
}

/// When a registry with [`REGISTRY_LEEWAY`] starts rejecting `token`: it accepts it while
/// `now <= exp + leeway`, with `exp` in whole seconds.
pub fn registry_deadline(token: &str) -> SystemTime {
    let exp = token_claims(token)["exp"]
        .as_i64()
        .expect("JWT without a numeric exp");
    UNIX_EPOCH + Duration::from_secs((exp + REGISTRY_LEEWAY.as_secs() as i64) as u64)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// What a request to the token server tried to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    GetAnonymous,
    GetBasic,
    /// A GET with Basic credentials whose password is a refresh token.
    GetRefresh,
    PostPassword,
    PostRefresh,
    /// Anything else: another method or path, a POST with an unknown grant, a GET with another
    /// authorization scheme, a POST while POST is switched off.
    Other,
}

/// One request, as recorded (no passwords, no tokens).
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    pub kind: RequestKind,
    /// The user name the client presented (Basic, password grant) or the owner of a valid
    /// refresh token.
    pub user: Option<String>,
    pub service: Option<String>,
    pub client_id: Option<String>,
    /// Scopes as asked for, one entry per scope (POST's space-joined list split up).
    pub scopes: Vec<String>,
    /// Granted access, `repository:NAME:a,b` per repository.
    pub granted: Vec<String>,
    pub status: u16,
    pub refresh_token_issued: bool,
}

struct State {
    opts: RwLock<TokenServerOptions>,
    minter: TokenMinter,
    /// refresh token -> user
    refresh: Mutex<HashMap<String, String>>,
    log: Mutex<Vec<TokenRequest>>,
}

/// The running token server. Stopped on Drop.
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<State>,
    service: String,
    issuer: String,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl TokenServer {
    pub async fn start(opts: TokenServerOptions) -> TokenServer {
        assert!(
            opts.lifetime >= Duration::from_secs(1),
            "token lifetime must be at least 1 s (expires_in is in whole seconds)"
        );
        let minter = TokenMinter::new(&opts.issuer, &opts.service, opts.registry_leeway);
        let dir = tempfile::Builder::new()
            .prefix("bench-token-")
            .tempdir()
            .expect("create the token server's temp dir");
        let bundle = dir.path().join("token-signing.pem");
        std::fs::write(&bundle, minter.cert_pem()).expect("write the rootcertbundle");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the token server's loopback port");
        let addr = listener.local_addr().expect("token server address");
        let state = Arc::new(State {
            opts: RwLock::new(opts.clone()),
            minter,
            refresh: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        TokenServer {
            addr,
            state,
            service: opts.service,
            issuer: opts.issuer,
            bundle,
            _dir: dir,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The PEM file a registry must list as `rootcertbundle`.
    pub fn rootcertbundle(&self) -> &Path {
        &self.bundle
    }

    pub fn minter(&self) -> TokenMinter {
        self.state.minter.clone()
    }

    /// What `RegistryOptions::token` takes to delegate auth to this server.
    pub fn registry_auth(&self) -> TokenAuth {
        TokenAuth {
            realm: self.realm(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            rootcertbundle: self.bundle.clone(),
            minter: self.minter(),
        }
    }

    /// Changes the policy of a running server (lifetime, users, rules, POST support, …).
    /// `service`, `issuer` and `registry_leeway` are fixed at start and changes to them are ignored.
    pub fn configure(&self, change: impl FnOnce(&mut TokenServerOptions)) {
        let mut opts = self.state.opts.write().unwrap_or_else(|p| p.into_inner());
        change(&mut opts);
        assert!(
            opts.lifetime >= Duration::from_secs(1),
            "token lifetime must be at least 1 s"
        );
    }

    /// A refresh token for `user` (a docker `identitytoken`), accepted by the refresh grant.
    pub fn issue_refresh_token(&self, user: &str) -> String {
        let token = format!("rt-{}", hex::encode(rand::random::<[u8; 24]>()));
        self.state
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), user.to_string());
        token
    }

    /// Forgets every refresh token handed out so far.
    pub fn revoke_refresh_tokens(&self) {
        self.state
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests of `kind`, whatever their outcome.
    pub fn count(&self, kind: RequestKind) -> usize {
        self.requests().iter().filter(|r| r.kind == kind).count()
    }

    /// Requests of `kind` that got a token.
    pub fn count_ok(&self, kind: RequestKind) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.kind == kind && r.status == 200)
            .count()
    }

    /// Every scope asked for, in order, over all requests.
    pub fn scopes_requested(&self) -> Vec<String> {
        self.requests().into_iter().flat_map(|r| r.scopes).collect()
    }

    pub fn clear_requests(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// One line per request, for panic messages.
    pub fn describe_requests(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {:?} user={:?} scopes={:?} -> {} granted={:?}",
                    r.method, r.path, r.kind, r.user, r.scopes, r.status, r.granted
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so this ends them too.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // EMFILE and friends: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| serve(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow for the server's lifetime.
        while connections.try_join_next().is_some() {}
    }
}

/// Bodies are small forms; anything bigger is a client bug.
const MAX_BODY: usize = 64 * 1024;

async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &[],
                json!({"error": "invalid_request"}),
            ))
        }
    };
    let request = Asked {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        authorization: parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    };
    let (response, record) = handle(&state, &request);
    state
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(record);
    Ok(response)
}

/// A request, reduced to what the token endpoint looks at.
struct Asked {
    method: Method,
    path: String,
    query: String,
    authorization: Option<String>,
    body: Bytes,
}

/// Who is asking.
enum Principal {
    Anonymous,
    User(String),
}

fn handle(state: &State, req: &Asked) -> (Response<Full<Bytes>>, TokenRequest) {
    let opts = state.opts.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut rec = TokenRequest {
        method: req.method.to_string(),
        path: req.path.clone(),
        kind: RequestKind::Other,
        user: None,
        service: None,
        client_id: None,
        scopes: Vec::new(),
        granted: Vec::new(),
        status: 0,
        refresh_token_issued: false,
    };
    let (status, headers, body) = answer(state, &opts, req, &mut rec);
    rec.status = status.as_u16();
    (reply(status, &headers, body), rec)
}

type Answer = (StatusCode, Vec<(&'static str, String)>, Value);

fn error(status: StatusCode, code: &str, description: &str) -> Answer {
    (
        status,
        Vec::new(),
        json!({ "error": code, "error_description": description }),
    )
}

fn unauthorized(description: &str) -> Answer {
    (
        StatusCode::UNAUTHORIZED,
        vec![(
            "WWW-Authenticate",
            r#"Basic realm="prepull-test-token-server""#.to_string(),
        )],
        json!({ "error": "unauthorized", "error_description": description }),
    )
}

fn answer(state: &State, opts: &TokenServerOptions, req: &Asked, rec: &mut TokenRequest) -> Answer {
    if req.path != TOKEN_PATH {
        return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    }
    // Parameters, who asks, and whether they may have a refresh token.
    let (params, principal, wants_refresh) = match req.method {
        Method::GET => {
            let params = form_pairs(req.query.as_bytes());
            let principal = match &req.authorization {
                None => {
                    rec.kind = RequestKind::GetAnonymous;
                    Principal::Anonymous
                }
                Some(value) => match parse_basic(value) {
                    Some((user, password)) if password_ok(opts, &user, &password) => {
                        rec.kind = RequestKind::GetBasic;
                        rec.user = Some(user.clone());
                        Principal::User(user)
                    }
                    Some((user, password)) => {
                        // A refresh token as the password, as ACR takes it and containerd
                        // sends it when POST is not offered.
                        let owner = state
                            .refresh
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&password)
                            .cloned();
                        match owner {
                            Some(owner) => {
                                rec.kind = RequestKind::GetRefresh;
                                rec.user = Some(owner.clone());
                                Principal::User(owner)
                            }
                            None => {
                                rec.kind = RequestKind::GetBasic;
                                rec.user = Some(user);
                                collect_params(&params, rec);
                                return unauthorized("incorrect username or password");
                            }
                        }
                    }
                    None => {
                        collect_params(&params, rec);
                        return unauthorized("unsupported authorization scheme");
                    }
                },
            };
            let wants = first(&params, "offline_token").as_deref() == Some("true");
            (params, principal, wants)
        }
        Method::POST => {
            match opts.post {
                PostSupport::Supported => {}
                PostSupport::NotFound => {
                    return (
                        StatusCode::NOT_FOUND,
                        Vec::new(),
                        json!("404 page not found"),
                    )
                }
                PostSupport::MethodNotAllowed => {
                    return (
                        StatusCode::METHOD_NOT_ALLOWED,
                        vec![("Allow", "GET".to_string())],
                        json!({ "error": "method not allowed" }),
                    )
                }
            }
            let params = form_pairs(&req.body);
            let principal = match first(&params, "grant_type").as_deref() {
                Some("password") => {
                    rec.kind = RequestKind::PostPassword;
                    let user = first(&params, "username").unwrap_or_default();
                    let password = first(&params, "password").unwrap_or_default();
                    rec.user = Some(user.clone());
                    if !password_ok(opts, &user, &password) {
                        collect_params(&params, rec);
                        return unauthorized("incorrect username or password");
                    }
                    Principal::User(user)
                }
                Some("refresh_token") => {
                    rec.kind = RequestKind::PostRefresh;
                    let token = first(&params, "refresh_token").unwrap_or_default();
                    let owner = state
                        .refresh
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&token)
                        .cloned();
                    match owner {
                        Some(user) => {
                            rec.user = Some(user.clone());
                            Principal::User(user)
                        }
                        None => {
                            collect_params(&params, rec);
                            return unauthorized("invalid refresh token");
                        }
                    }
                }
                _ => {
                    collect_params(&params, rec);
                    return error(
                        StatusCode::BAD_REQUEST,
                        "unsupported_grant_type",
                        "grant_type must be password or refresh_token",
                    );
                }
            };
            let wants = rec.kind == RequestKind::PostPassword
                && first(&params, "access_type").as_deref() == Some("offline");
            (params, principal, wants)
        }
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                vec![("Allow", "GET, POST".to_string())],
                json!({ "error": "method not allowed" }),
            )
        }
    };
    collect_params(&params, rec);

    // OAuth2 requires a client id on POST (distribution's reference server enforces it); Docker's
    // GET sends one only with offline_token.
    if req.method == Method::POST && rec.client_id.as_deref().unwrap_or("").is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing client_id",
        );
    }
    match rec.service.as_deref() {
        Some(s) if s == opts.service => {}
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unknown service",
            )
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing service",
            )
        }
    }
    let user = match &principal {
        Principal::Anonymous if !opts.anonymous => {
            return unauthorized("authentication required");
        }
        Principal::Anonymous => None,
        Principal::User(u) => Some(u.as_str()),
    };

    let access = grant(opts, user, &rec.scopes);
    rec.granted = access
        .iter()
        .map(|a| format!("repository:{}:{}", a.name, a.actions.join(",")))
        .collect();
    let minted = state
        .minter
        .mint(user.unwrap_or(""), &access, whole_seconds(opts.lifetime));
    let mut body = json!({
        "expires_in": whole_seconds(opts.lifetime).as_secs(),
        "issued_at": humantime::format_rfc3339_seconds(minted.issued_at).to_string(),
    });
    match opts.fields {
        TokenFields::Both => {
            body["token"] = json!(minted.token);
            body["access_token"] = json!(minted.token);
        }
        TokenFields::TokenOnly => body["token"] = json!(minted.token),
        TokenFields::AccessTokenOnly => body["access_token"] = json!(minted.token),
    }
    let issue_refresh = match (opts.refresh_tokens, user) {
        (_, None) => false,
        (RefreshTokens::Never, _) => false,
        (RefreshTokens::Offline, _) => wants_refresh,
        // The refresh grant keeps its own token.
        (RefreshTokens::Always, _) => rec.kind != RequestKind::PostRefresh,
    };
    if let (true, Some(user)) = (issue_refresh, user) {
        let token = format!("rt-{}", hex::encode(rand::random::<[u8; 24]>()));
        state
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), user.to_string());
        body["refresh_token"] = json!(token);
        rec.refresh_token_issued = true;
    }
    (StatusCode::OK, Vec::new(), body)
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

fn collect_params(params: &[(String, String)], rec: &mut TokenRequest) {
    rec.service = first(params, "service");
    rec.client_id = first(params, "client_id");
    // GET repeats `scope`; POST joins scopes with spaces; some clients space-join in GET too.
    rec.scopes = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_string))
        .collect();
}

fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

fn first(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// `Basic base64(user:password)` (scheme case-insensitive).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn password_ok(opts: &TokenServerOptions, user: &str, password: &str) -> bool {
    opts.users.iter().any(|(u, p)| u == user && p == password)
}

/// What `user` gets of each requested scope: the requested actions the rules allow (`*` asks
/// for all of them). Non-repository scopes and repositories with nothing allowed are left out.
fn grant(opts: &TokenServerOptions, user: Option<&str>, scopes: &[String]) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for scope in scopes {
        let Some((kind, name, actions)) = parse_scope(scope) else {
            continue;
        };
        if kind != "repository" {
            continue;
        }
        let allowed: Vec<&str> = opts
            .rules
            .iter()
            .filter(|r| r.matches(name, user))
            .flat_map(|r| r.actions.iter().map(String::as_str))
            .collect();
        let mut granted: Vec<String> = Vec::new();
        for action in actions.split(',') {
            let wanted: Vec<&str> = if action == "*" {
                allowed.clone()
            } else {
                vec![action]
            };
            for a in wanted {
                if allowed.contains(&a) && !granted.iter().any(|g| g == a) {
                    granted.push(a.to_string());
                }
            }
        }
        if granted.is_empty() {
            continue;
        }
        match out.iter_mut().find(|a| a.name == name) {
            Some(existing) => {
                for a in granted {
                    if !existing.actions.contains(&a) {
                        existing.actions.push(a);
                    }
                }
            }
            None => out.push(Access {
                name: name.to_string(),
                actions: granted,
            }),
        }
    }
    out
}

/// `type:name:actions`, where the name may itself contain `:` (`host:5000/repo`): the type ends
/// at the first colon, the actions start after the last.
pub fn parse_scope(scope: &str) -> Option<(&str, &str, &str)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some((kind, name, actions))
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: Value) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, v);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("build a token server response")
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased: `basic`, `bearer`.
    pub scheme: String,
    /// Parameter names lower-cased; values unquoted and unescaped.
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value into its challenges (`Bearer realm="…",service="…"`,
/// possibly several, quoted strings with commas and backslash escapes). Enough for the bench's
/// assertions; not a full RFC 7235 parser (no token68).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        header[start..*i].to_string()
    };
    loop {
        skip(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        let mut j = i;
        while j < s.len() && s[j] == b' ' {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < s.len() && s[i] == b' ' {
                i += 1;
            }
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    let ch = header[i..].chars().next().expect("char boundary");
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote
                v
            } else {
                token(&mut i)
            };
            out.last_mut()
                .expect("a challenge")
                .params
                .insert(word.to_ascii_lowercase(), value);
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}
