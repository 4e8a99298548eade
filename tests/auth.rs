//! Proves the bench's authentication and TLS infrastructure against the real docker-registry,
//! without prepull: htpasswd (Basic) registries, token (Bearer) registries backed by the bench's
//! token server, and TLS registries with a test CA. If these pass, a failing prepull auth test is
//! prepull's fault, not the bench's.

use testbench as support;

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::Value;
use support::auth::{
    parse_challenges, parse_scope, registry_deadline, token_claims, Access, Challenge,
    RefreshTokens, TokenFields, TokenMinter, REGISTRY_LEEWAY,
};
use support::{
    push_image_with, Containerd, ImageSpec, PostSupport, PushedImage, Registry, RegistryOptions,
    RequestKind, TestCa, TokenServer, TokenServerOptions,
};

const KIB: usize = 1024;
const MANIFEST_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn small_image() -> ImageSpec {
    ImageSpec::new(&[4 * KIB])
}

/// Credentials for one request to the registry.
enum Cred<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

/// `GET /v2/<repo>/manifests/<tag>` (or `/v2/` when `repo` is empty).
async fn registry_get(
    registry: &Registry,
    repo: &str,
    tag: &str,
    cred: Cred<'_>,
) -> reqwest::Response {
    let url = if repo.is_empty() {
        format!("{}/v2/", registry.url())
    } else {
        format!("{}/v2/{repo}/manifests/{tag}", registry.url())
    };
    let mut req = registry.client().get(&url).header(ACCEPT, MANIFEST_ACCEPT);
    req = match cred {
        Cred::None => req,
        Cred::Basic(u, p) => req.basic_auth(u, Some(p)),
        Cred::Bearer(t) => req.bearer_auth(t),
    };
    req.send().await.unwrap_or_else(|e| {
        panic!(
            "GET {url}: {e}\n--- registry log ---\n{}",
            registry.log_tail(20)
        )
    })
}

/// Panics with the body and the registry's log tail unless `resp` has status `want`.
async fn expect_status(
    resp: reqwest::Response,
    want: StatusCode,
    registry: &Registry,
    what: &str,
) -> reqwest::Response {
    if resp.status() == want {
        return resp;
    }
    let status = resp.status();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap_or_default();
    panic!(
        "{what}: expected {want}, got {status}\nheaders: {headers}\nbody: {body}\n--- registry log ---\n{}",
        registry.log_tail(20)
    );
}

/// The single challenge of a 401.
fn challenge(resp: &reqwest::Response) -> Challenge {
    let values: Vec<&str> = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().expect("ASCII WWW-Authenticate"))
        .collect();
    let mut all: Vec<Challenge> = values.iter().flat_map(|v| parse_challenges(v)).collect();
    assert_eq!(all.len(), 1, "expected one challenge, got {values:?}");
    all.remove(0)
}

/// A 200 with the pushed manifest's bytes and digest.
async fn assert_manifest(resp: reqwest::Response, image: &PushedImage, registry: &Registry) {
    let resp = expect_status(resp, StatusCode::OK, registry, "GET manifest").await;
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.expect("manifest body");
    assert_eq!(
        digest.as_deref(),
        Some(image.manifest.digest.as_str()),
        "Docker-Content-Digest"
    );
    assert_eq!(&body[..], &image.manifest_bytes[..], "manifest bytes");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// `GET realm?service=…&scope=…` with optional Basic credentials; returns (status, JSON body).
async fn token_get(
    server: &TokenServer,
    basic: Option<(&str, &str)>,
    scopes: &[&str],
    extra: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut query: Vec<(&str, &str)> = vec![("service", server.service())];
    query.extend(scopes.iter().map(|s| ("scope", *s)));
    query.extend_from_slice(extra);
    let mut req = http().get(server.realm()).query(&query);
    if let Some((u, p)) = basic {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.expect("GET the token realm");
    let status = resp.status();
    (status, json_body(resp).await)
}

/// `POST realm` with a form; returns (status, JSON body or Null).
async fn token_post(server: &TokenServer, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = http()
        .post(server.realm())
        .form(form)
        .send()
        .await
        .expect("POST the token realm");
    let status = resp.status();
    (status, json_body(resp).await)
}

/// The body as JSON, or `Null` when it is not JSON.
async fn json_body(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn access_token(body: &Value) -> &str {
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {body}"))
}

/// A token server (alice may pull `team/*`, anyone may pull `public/*`) and a registry using it.
async fn token_bench(opts: TokenServerOptions) -> (TokenServer, Registry) {
    let server = TokenServer::start(opts).await;
    let registry =
        Registry::start_with(RegistryOptions::default().token(server.registry_auth())).await;
    (server, registry)
}

fn team_policy() -> TokenServerOptions {
    TokenServerOptions::default()
        .user("alice", "alice-pw")
        .user("bob", "bob-pw")
        .allow_pull("alice", "team/*")
        .allow_anonymous_pull("public/*")
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_challenges_basic_and_accepts_only_the_right_password() {
    let registry =
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "s3cret")).await;
    assert!(registry.security_config().contains("htpasswd"));

    let resp = expect_status(
        registry_get(&registry, "", "", Cred::None).await,
        StatusCode::UNAUTHORIZED,
        &registry,
        "anonymous /v2/",
    )
    .await;
    let c = challenge(&resp);
    assert_eq!(c.scheme, "basic", "{c:?}");
    assert_eq!(c.param("realm"), Some("prepull-test-registry"));

    let wrong = registry_get(&registry, "", "", Cred::Basic("alice", "nope")).await;
    expect_status(wrong, StatusCode::UNAUTHORIZED, &registry, "wrong password").await;
    let unknown = registry_get(&registry, "", "", Cred::Basic("mallory", "s3cret")).await;
    expect_status(unknown, StatusCode::UNAUTHORIZED, &registry, "unknown user").await;
    let right = registry_get(&registry, "", "", Cred::Basic("alice", "s3cret")).await;
    expect_status(right, StatusCode::OK, &registry, "right password").await;

    // The bench pushes with the first htpasswd user; reading back needs the same credentials.
    let image = push_image_with(&registry.push_target(), "team/app", "v1", &small_image()).await;
    let anonymous = registry_get(&registry, "team/app", "v1", Cred::None).await;
    expect_status(
        anonymous,
        StatusCode::UNAUTHORIZED,
        &registry,
        "anonymous manifest",
    )
    .await;
    assert_manifest(
        registry_get(&registry, "team/app", "v1", Cred::Basic("alice", "s3cret")).await,
        &image,
        &registry,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_registry_challenges_with_realm_service_and_scope() {
    let (server, registry) = token_bench(team_policy()).await;
    push_image_with(&registry.push_target(), "team/app", "v1", &small_image()).await;
    assert_eq!(
        server.requests().len(),
        0,
        "the bench's push must not touch the token server:\n{}",
        server.describe_requests()
    );

    let resp = expect_status(
        registry_get(&registry, "", "", Cred::None).await,
        StatusCode::UNAUTHORIZED,
        &registry,
        "anonymous /v2/",
    )
    .await;
    let c = challenge(&resp);
    assert_eq!(c.scheme, "bearer", "{c:?}");
    assert_eq!(c.param("realm"), Some(server.realm().as_str()));
    assert_eq!(c.param("service"), Some(server.service()));
    assert_eq!(c.param("scope"), None, "/v2/ asks for no scope: {c:?}");

    let resp = registry_get(&registry, "team/app", "v1", Cred::None).await;
    let resp = expect_status(
        resp,
        StatusCode::UNAUTHORIZED,
        &registry,
        "anonymous manifest",
    )
    .await;
    let c = challenge(&resp);
    assert_eq!(c.scheme, "bearer");
    assert_eq!(c.param("realm"), Some(server.realm().as_str()));
    assert_eq!(c.param("service"), Some(server.service()));
    assert_eq!(c.param("scope"), Some("repository:team/app:pull"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_from_get_opens_the_manifest_for_users_and_anonymous() {
    let (server, registry) = token_bench(team_policy()).await;
    let (target, spec) = (registry.push_target(), small_image());
    let (team, public) = tokio::join!(
        push_image_with(&target, "team/app", "v1", &spec),
        push_image_with(&target, "public/base", "v1", &spec),
    );

    // Follow the challenge as a client would: realm, service and scope from the 401.
    let resp = registry_get(&registry, "team/app", "v1", Cred::None).await;
    let c = challenge(&resp);
    let scope = c.param("scope").expect("scope in the challenge");
    let (status, body) = token_get(&server, Some(("alice", "alice-pw")), &[scope], &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{body}\n{}",
        server.describe_requests()
    );
    let token = access_token(&body);
    assert_eq!(
        body["token"].as_str(),
        Some(token),
        "token and access_token agree"
    );
    assert_eq!(body["expires_in"], 300);
    let issued_at = body["issued_at"].as_str().expect("issued_at");
    humantime::parse_rfc3339(issued_at).unwrap_or_else(|e| panic!("issued_at {issued_at:?}: {e}"));
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token unless asked: {body}"
    );

    let claims = token_claims(token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], server.service());
    assert_eq!(claims["iss"], server.issuer());
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    );
    assert_manifest(
        registry_get(&registry, "team/app", "v1", Cred::Bearer(token)).await,
        &team,
        &registry,
    )
    .await;

    // Anonymous: a token for the public repository works, one for the team repository grants nothing.
    let (status, body) = token_get(
        &server,
        None,
        &["repository:public/base:pull", "repository:team/app:pull"],
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let anon = access_token(&body);
    assert_eq!(
        token_claims(anon)["access"],
        serde_json::json!([{"type": "repository", "name": "public/base", "actions": ["pull"]}])
    );
    assert_manifest(
        registry_get(&registry, "public/base", "v1", Cred::Bearer(anon)).await,
        &public,
        &registry,
    )
    .await;
    let denied = registry_get(&registry, "team/app", "v1", Cred::Bearer(anon)).await;
    let denied = expect_status(
        denied,
        StatusCode::UNAUTHORIZED,
        &registry,
        "anonymous token on a private repo",
    )
    .await;
    assert_eq!(
        challenge(&denied).param("error"),
        Some("insufficient_scope")
    );

    assert_eq!(
        server.count_ok(RequestKind::GetBasic),
        1,
        "{}",
        server.describe_requests()
    );
    assert_eq!(server.count_ok(RequestKind::GetAnonymous), 1);
    assert_eq!(
        server.scopes_requested(),
        [
            "repository:team/app:pull",
            "repository:public/base:pull",
            "repository:team/app:pull"
        ]
    );
    // Docker's GET variant of a refresh token: offline_token=true with a client_id.
    let (status, body) = token_get(
        &server,
        Some(("alice", "alice-pw")),
        &[scope],
        &[("offline_token", "true"), ("client_id", "bench")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_from_post_password_and_refresh_grants() {
    let (server, registry) = token_bench(team_policy()).await;
    let image = push_image_with(&registry.push_target(), "team/app", "v1", &small_image()).await;
    let scope = "repository:team/app:pull";
    let service = server.service().to_string();
    let base = [
        ("service", service.as_str()),
        ("client_id", "prepull-test"),
        ("scope", scope),
    ];

    let mut form = base.to_vec();
    form.extend([
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alice-pw"),
        ("access_type", "offline"),
    ]);
    let (status, body) = token_post(&server, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_manifest(
        registry_get(
            &registry,
            "team/app",
            "v1",
            Cred::Bearer(access_token(&body)),
        )
        .await,
        &image,
        &registry,
    )
    .await;
    let refresh = body["refresh_token"]
        .as_str()
        .expect("access_type=offline yields a refresh token")
        .to_string();

    let mut form = base.to_vec();
    form.extend([
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ]);
    let (status, body) = token_post(&server, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.get("refresh_token").is_none(),
        "the refresh grant keeps its token: {body}"
    );
    assert_eq!(token_claims(access_token(&body))["sub"], "alice");
    assert_manifest(
        registry_get(
            &registry,
            "team/app",
            "v1",
            Cred::Bearer(access_token(&body)),
        )
        .await,
        &image,
        &registry,
    )
    .await;

    // An identity token handed out by the test (as docker login would store one) works too.
    let identity = server.issue_refresh_token("alice");
    let mut form = base.to_vec();
    form.extend([
        ("grant_type", "refresh_token"),
        ("refresh_token", identity.as_str()),
    ]);
    assert_eq!(token_post(&server, &form).await.0, StatusCode::OK);

    // Failures: wrong password, unknown refresh token, no client_id, unknown grant, wrong service.
    let mut form = base.to_vec();
    form.extend([
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wrong"),
    ]);
    assert_eq!(token_post(&server, &form).await.0, StatusCode::UNAUTHORIZED);
    let mut form = base.to_vec();
    form.extend([
        ("grant_type", "refresh_token"),
        ("refresh_token", "rt-bogus"),
    ]);
    assert_eq!(token_post(&server, &form).await.0, StatusCode::UNAUTHORIZED);
    let no_client = [
        ("service", service.as_str()),
        ("scope", scope),
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alice-pw"),
    ];
    assert_eq!(
        token_post(&server, &no_client).await.0,
        StatusCode::BAD_REQUEST
    );
    let mut form = base.to_vec();
    form.push(("grant_type", "client_credentials"));
    let (status, body) = token_post(&server, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    let wrong_service = [
        ("service", "elsewhere"),
        ("client_id", "x"),
        ("scope", scope),
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alice-pw"),
    ];
    assert_eq!(
        token_post(&server, &wrong_service).await.0,
        StatusCode::BAD_REQUEST
    );

    assert_eq!(
        server.count_ok(RequestKind::PostPassword),
        1,
        "{}",
        server.describe_requests()
    );
    assert_eq!(server.count(RequestKind::PostPassword), 4);
    assert_eq!(server.count_ok(RequestKind::PostRefresh), 2);
    assert_eq!(server.count(RequestKind::PostRefresh), 3);
    assert_eq!(server.count(RequestKind::Other), 1, "the unknown grant");
    let first = &server.requests()[0];
    assert_eq!(
        (first.client_id.as_deref(), first.user.as_deref()),
        (Some("prepull-test"), Some("alice"))
    );
    assert!(first.refresh_token_issued);
    // Nothing secret is recorded.
    let recorded = format!("{:?}", server.requests());
    for secret in ["alice-pw", refresh.as_str(), identity.as_str()] {
        assert!(
            !recorded.contains(secret),
            "a secret leaked into the records"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_for_another_repository_or_user_without_rights_is_denied() {
    let (server, registry) = token_bench(team_policy().allow_pull("alice", "shared/one")).await;
    let target = registry.push_target();
    push_image_with(&target, "team/app", "v1", &small_image()).await;

    // A valid token, but for another repository.
    let (status, body) = token_get(
        &server,
        Some(("alice", "alice-pw")),
        &["repository:shared/one:pull"],
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let resp = registry_get(
        &registry,
        "team/app",
        "v1",
        Cred::Bearer(access_token(&body)),
    )
    .await;
    let resp = expect_status(
        resp,
        StatusCode::UNAUTHORIZED,
        &registry,
        "token for another repo",
    )
    .await;
    let c = challenge(&resp);
    assert_eq!(c.param("error"), Some("insufficient_scope"), "{c:?}");
    assert_eq!(c.param("scope"), Some("repository:team/app:pull"));

    // Bob authenticates fine but has no rule: the token server grants nothing (200, empty access).
    let (status, body) = token_get(
        &server,
        Some(("bob", "bob-pw")),
        &["repository:team/app:pull"],
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        token_claims(access_token(&body))["access"],
        serde_json::json!([])
    );
    let resp = registry_get(
        &registry,
        "team/app",
        "v1",
        Cred::Bearer(access_token(&body)),
    )
    .await;
    expect_status(
        resp,
        StatusCode::UNAUTHORIZED,
        &registry,
        "bob's empty token",
    )
    .await;

    // Asking for push where only pull is allowed yields pull only.
    let (_, body) = token_get(
        &server,
        Some(("alice", "alice-pw")),
        &["repository:team/app:pull,push"],
        &[],
    )
    .await;
    assert_eq!(
        token_claims(access_token(&body))["access"][0]["actions"],
        serde_json::json!(["pull"])
    );

    // A token signed by a key the registry does not trust.
    let stranger = TokenMinter::new(server.issuer(), server.service(), REGISTRY_LEEWAY);
    let forged = stranger.mint(
        "alice",
        &[Access::new("team/app", &["pull"])],
        Duration::from_secs(60),
    );
    let resp = registry_get(&registry, "team/app", "v1", Cred::Bearer(&forged.token)).await;
    let resp = expect_status(
        resp,
        StatusCode::UNAUTHORIZED,
        &registry,
        "untrusted signing key",
    )
    .await;
    assert_eq!(challenge(&resp).param("error"), Some("invalid_token"));
}

/// The realm itself, without a registry: credentials, anonymous access, POST switched off,
/// response field variants.
#[tokio::test(flavor = "multi_thread")]
async fn realm_checks_credentials_and_can_refuse_post_like_gcr() {
    let server =
        TokenServer::start(team_policy().anonymous(false).post(PostSupport::NotFound)).await;
    let scope = "repository:team/app:pull";

    let (status, _) = token_get(&server, Some(("alice", "wrong")), &[scope], &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = token_get(&server, None, &[scope], &[]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "anonymous tokens are switched off"
    );
    let (status, _) = token_get(&server, Some(("alice", "alice-pw")), &[scope], &[]).await;
    assert_eq!(status, StatusCode::OK);
    let missing_service = http()
        .get(server.realm())
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing_service.status(), StatusCode::BAD_REQUEST);

    let service = server.service().to_string();
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alice-pw"),
        ("service", service.as_str()),
        ("client_id", "x"),
        ("scope", scope),
    ];
    assert_eq!(
        token_post(&server, &form).await.0,
        StatusCode::NOT_FOUND,
        "GCR-like realm"
    );
    server.configure(|o| o.post = PostSupport::MethodNotAllowed);
    let resp = http()
        .post(server.realm())
        .form(&form)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    server.configure(|o| o.post = PostSupport::Supported);
    assert_eq!(token_post(&server, &form).await.0, StatusCode::OK);

    assert_eq!(
        server.count(RequestKind::Other),
        2,
        "the refused POSTs:\n{}",
        server.describe_requests()
    );
    assert_eq!(server.count(RequestKind::GetBasic), 3);
    assert_eq!(server.count(RequestKind::GetAnonymous), 1);

    server.configure(|o| {
        o.fields = TokenFields::TokenOnly;
        o.refresh_tokens = RefreshTokens::Always;
    });
    let (_, body) = token_get(&server, Some(("alice", "alice-pw")), &[scope], &[]).await;
    assert!(
        body.get("access_token").is_none() && body["token"].is_string(),
        "{body}"
    );
    assert!(body["refresh_token"].is_string(), "{body}");
    server.configure(|o| o.fields = TokenFields::AccessTokenOnly);
    let (_, body) = token_get(&server, Some(("alice", "alice-pw")), &[scope], &[]).await;
    assert!(
        body.get("token").is_none() && body["access_token"].is_string(),
        "{body}"
    );

    let c = parse_challenges(
        r#"Bearer realm="http://a/token",service="reg",scope="repository:x:pull,push", Basic realm="q\"x""#,
    );
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].param("scope"), Some("repository:x:pull,push"));
    assert_eq!(c[1].param("realm"), Some("q\"x"));
    assert_eq!(
        parse_scope("repository:127.0.0.1:5000/a:pull"),
        Some(("repository", "127.0.0.1:5000/a", "pull"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_rejected_once_its_lifetime_is_over() {
    let (server, registry) = token_bench(team_policy().lifetime(Duration::from_secs(1))).await;
    let image = push_image_with(&registry.push_target(), "team/app", "v1", &small_image()).await;

    let (status, body) = token_get(
        &server,
        Some(("alice", "alice-pw")),
        &["repository:team/app:pull"],
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expires_in"], 1);
    let token = access_token(&body).to_string();
    assert_manifest(
        registry_get(&registry, "team/app", "v1", Cred::Bearer(&token)).await,
        &image,
        &registry,
    )
    .await;

    // The registry accepts a token while now <= exp + leeway (whole seconds): wait for that instant.
    let deadline = registry_deadline(&token);
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= Duration::from_secs(2),
        "a 1 s token must expire within 2 s, not {left:?}"
    );
    tokio::time::sleep(left + Duration::from_millis(50)).await;

    let resp = registry_get(&registry, "team/app", "v1", Cred::Bearer(&token)).await;
    let resp = expect_status(resp, StatusCode::UNAUTHORIZED, &registry, "expired token").await;
    assert_eq!(challenge(&resp).param("error"), Some("invalid_token"));
    assert!(
        registry.log_tail(50).contains("token not to be used after"),
        "the registry should reject it for expiry\n{}",
        registry.log_tail(20)
    );
}

/// Why the token server moves `exp` back: docker-registry 2.8 honours `exp` only 60 s late.
#[tokio::test(flavor = "multi_thread")]
async fn registry_accepts_tokens_until_60s_past_exp() {
    let (server, registry) = token_bench(team_policy()).await;
    let image = push_image_with(&registry.push_target(), "team/app", "v1", &small_image()).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let access = [Access::new("team/app", &["pull"])];
    let leeway = REGISTRY_LEEWAY.as_secs() as i64;

    let late = server
        .minter()
        .mint_with_exp("alice", &access, now - leeway + 30);
    assert_manifest(
        registry_get(&registry, "team/app", "v1", Cred::Bearer(&late)).await,
        &image,
        &registry,
    )
    .await;
    let too_late = server
        .minter()
        .mint_with_exp("alice", &access, now - leeway - 2);
    let resp = registry_get(&registry, "team/app", "v1", Cred::Bearer(&too_late)).await;
    expect_status(
        resp,
        StatusCode::UNAUTHORIZED,
        &registry,
        "token past exp + leeway",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_is_trusted_only_through_the_test_ca() {
    let ca = TestCa::new();
    let registry = Registry::start_with(RegistryOptions::default().tls(&ca)).await;
    assert_eq!(registry.scheme(), "https");
    let image = push_image_with(&registry.push_target(), "team/app", "v1", &small_image()).await;

    let trusted = ca.client();
    for host in [
        format!("127.0.0.1:{}", registry.port()),
        format!("localhost:{}", registry.port()),
    ] {
        let url = format!("https://{host}/v2/team/app/manifests/v1");
        let resp = trusted
            .get(&url)
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {}", prepull::error_chain(&e)));
        assert_manifest(resp, &image, &registry).await;
    }

    // Without the CA (system roots only), and with another test CA: certificate errors.
    let other = TestCa::new();
    for (name, client) in [("system roots", http()), ("another CA", other.client())] {
        let err = client
            .get(format!("{}/v2/", registry.url()))
            .send()
            .await
            .expect_err(name);
        let chain = prepull::error_chain(&err);
        assert!(
            chain.contains("UnknownIssuer") || chain.contains("unknown issuer"),
            "{name}: expected an unknown-issuer certificate error, got: {chain}"
        );
    }
    // Plain HTTP to the TLS port is refused by the registry (Go answers 400).
    let plain = http()
        .get(format!("http://{}/v2/", registry.host()))
        .send()
        .await
        .expect("plain HTTP");
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
}

/// containerd's own client (`ctr content fetch`) against each kind of registry: Basic over HTTP,
/// the token flow with POST password and refresh grants and the GET fallback when POST is refused,
/// and TLS with the test CA. This is the interoperability proof for the token server.
#[tokio::test(flavor = "multi_thread")]
async fn ctr_fetches_from_basic_token_and_tls_registries() {
    let ca = TestCa::new();
    let server = TokenServer::start(team_policy()).await;
    let (containerd, basic, token, tls) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "s3cret")),
        Registry::start_with(RegistryOptions::default().token(server.registry_auth())),
        Registry::start_with(
            RegistryOptions::default()
                .tls(&ca)
                .token(server.registry_auth())
        ),
    );
    let spec = small_image();
    let targets = [basic.push_target(), token.push_target(), tls.push_target()];
    let (a, b, c) = tokio::join!(
        push_image_with(&targets[0], "team/app", "v1", &spec),
        push_image_with(&targets[1], "team/app", "v1", &spec),
        push_image_with(&targets[2], "team/app", "v1", &spec),
    );
    let fetch = |args: Vec<String>| {
        let mut all = vec![
            "-n".to_string(),
            "k8s.io".into(),
            "content".into(),
            "fetch".into(),
        ];
        all.extend(args);
        // ctr blocks; the token server runs on this runtime, so give the worker back meanwhile.
        tokio::task::block_in_place(|| {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            containerd.ctr_ok(&args)
        })
    };
    let has = |digest: &str| {
        containerd
            .ctr_ok(&["-n", "k8s.io", "content", "ls", "-q"])
            .lines()
            .any(|l| l == digest)
    };

    fetch(vec![
        "--plain-http".into(),
        "--user".into(),
        "alice:s3cret".into(),
        format!("{}/team/app:v1", basic.host()),
    ]);
    assert!(has(&a.layers[0].digest), "layer fetched over Basic auth");

    let started = Instant::now();
    fetch(vec![
        "--plain-http".into(),
        "--user".into(),
        "alice:alice-pw".into(),
        format!("{}/team/app:v1", token.host()),
    ]);
    assert!(has(&b.layers[0].digest), "layer fetched with a token");
    assert!(
        server.count_ok(RequestKind::PostPassword) >= 1,
        "containerd POSTs the password grant:\n{}",
        server.describe_requests()
    );
    let post = server
        .requests()
        .into_iter()
        .find(|r| r.kind == RequestKind::PostPassword)
        .expect("a password grant");
    assert_eq!(post.scopes, ["repository:team/app:pull"]);
    assert_eq!(post.client_id.as_deref(), Some("containerd-client"));

    // A refresh token alone (ctr --refresh): the refresh grant.
    let refresh = server.issue_refresh_token("alice");
    server.clear_requests();
    fetch(vec![
        "--plain-http".into(),
        "--refresh".into(),
        refresh,
        format!("{}/team/app:v1", token.host()),
    ]);
    assert!(
        server.count_ok(RequestKind::PostRefresh) >= 1,
        "{}",
        server.describe_requests()
    );

    // POST refused like GCR: containerd falls back to GET with Basic.
    server.configure(|o| o.post = PostSupport::NotFound);
    server.clear_requests();
    fetch(vec![
        "--plain-http".into(),
        "--user".into(),
        "alice:alice-pw".into(),
        format!("{}/team/app:v1", token.host()),
    ]);
    assert_eq!(
        server.count(RequestKind::Other),
        1,
        "one refused POST:\n{}",
        server.describe_requests()
    );
    assert!(
        server.count_ok(RequestKind::GetBasic) >= 1,
        "{}",
        server.describe_requests()
    );
    server.configure(|o| o.post = PostSupport::Supported);

    // containerd 1.6 talks plain HTTP to 127.0.0.1 unless a hosts.toml says otherwise.
    let hosts_dir = tempfile::tempdir().expect("hosts dir");
    tls.write_hosts_toml(hosts_dir.path());
    fetch(vec![
        "--hosts-dir".into(),
        hosts_dir.path().display().to_string(),
        "--user".into(),
        "alice:alice-pw".into(),
        format!("{}/team/app:v1", tls.host()),
    ]);
    assert!(
        has(&c.layers[0].digest),
        "layer fetched over TLS with a token"
    );
    eprintln!("ctr fetches took {:?}", started.elapsed());
}
