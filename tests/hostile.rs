//! Hostile registries, token realms and redirect targets against a real containerd (and a real
//! registry where one takes part): none of them can exhaust prepull's memory, freeze a pull or a
//! pass, take the registry's credentials, or write to the operator's terminal.

use testbench as support;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use support::proxy::Action;
use support::{
    push_image_with, Containerd, Hostile, ImageSpec, Prepull, Proxy, Registry, RegistryOptions,
    Reply,
};

const KIB: usize = 1024;
const MIB: u64 = 1 << 20;

/// Runs `prepull` to its end, or kills it after `limit` and fails naming what it printed.
async fn run_within(prepull: Prepull, limit: Duration) -> Output {
    let mut command = prepull.command();
    command.kill_on_drop(true);
    match tokio::time::timeout(limit, command.output()).await {
        Ok(out) => out.expect("run prepull"),
        Err(_) => panic!("prepull still running after {limit:?}"),
    }
}

fn pull(containerd: &Containerd, host: &str, image: &str) -> Prepull {
    Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .arg("--no-node-credentials")
        .arg(image)
}

/// A 401 Bearer challenge naming `realm`.
fn bearer_challenge(realm: &str) -> Reply {
    Reply::Full {
        status: 401,
        headers: vec![(
            "www-authenticate".into(),
            format!(r#"Bearer realm="{realm}",service="hostile""#),
        )],
        body: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_error_body_is_read_only_up_to_its_cap() {
    let containerd = Containerd::start().await;
    let hostile = Hostile::start(|_| Reply::Endless {
        status: 404,
        headers: vec![("content-type".into(), "application/json".into())],
        chunk: vec![b' '; 64 * KIB],
    })
    .await;
    let host = hostile.host();
    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/app:1")),
        Duration::from_secs(30),
    )
    .await;
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("HTTP 404"), "{text}");
    // The cap is 64 KiB; on top of it the server can only fill the connection's kernel
    // buffers (its send buffer and prepull's receive buffer, at most their autotuning maximums)
    // before prepull closes the connection. Unbounded reading ran to gigabytes.
    let bound = 64 * KIB as u64 + socket_buffers_max() + MIB;
    assert!(
        hostile.bytes_sent() < bound,
        "the server handed out {} bytes (bound {bound}) to {:?}",
        hostile.bytes_sent(),
        hostile.seen()
    );
}

/// The most a TCP connection's kernel buffers hold: the receive buffer's and the send buffer's
/// autotuning maximums (the third field of `tcp_rmem` and `tcp_wmem`).
fn socket_buffers_max() -> u64 {
    ["tcp_rmem", "tcp_wmem"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}"))
                .unwrap_or_else(|e| panic!("read /proc/sys/net/ipv4/{f}: {e}"));
            text.split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("/proc/sys/net/ipv4/{f} has no maximum: {text:?}"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_token_response_is_refused_at_its_cap() {
    let containerd = Containerd::start().await;
    let hostile = Arc::new(std::sync::OnceLock::<String>::new());
    let realm = hostile.clone();
    let server = Hostile::start(move |seen| {
        if seen.path.starts_with("/token") {
            // JSON that never ends and says how long it is nowhere.
            Reply::Endless {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                chunk: b"{\"token\":\""
                    .iter()
                    .copied()
                    .chain([b'a'; 8190])
                    .collect(),
            }
        } else {
            bearer_challenge(&format!("http://{}/token", realm.get().unwrap()))
        }
    })
    .await;
    hostile.set(server.host()).unwrap();
    let host = server.host();
    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/app:1")),
        Duration::from_secs(30),
    )
    .await;
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("too large for a token"), "{text}");
    assert!(
        server.bytes_sent() < 8 * MIB,
        "the token realm handed out {} bytes",
        server.bytes_sent()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_target_gets_no_credentials_and_its_realm_is_asked_anonymously() {
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "s3cret-pass"))
    );
    let image = push_image_with(
        &registry.push_target(),
        "team/app",
        "1",
        &ImageSpec::new(&[32 * KIB, 16 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;

    // The redirect target: challenges for a token from its own realm, then serves the blob
    // (read from the registry's storage) to whoever shows its token.
    let storage = registry.storage_dir().to_path_buf();
    let target_host = Arc::new(std::sync::OnceLock::<String>::new());
    let target_realm = target_host.clone();
    let target = Hostile::start(move |seen| {
        let realm = format!("http://{}/token", target_realm.get().unwrap());
        if seen.path.starts_with("/token") {
            return Reply::status(200, r#"{"token":"minted-by-the-target","expires_in":-1}"#);
        }
        if seen.authorization.as_deref() != Some("Bearer minted-by-the-target") {
            return bearer_challenge(&realm);
        }
        let digest = seen.path.trim_start_matches("/blob/");
        let (algo, hex) = digest.split_once(':').unwrap();
        let data = storage
            .join("docker/registry/v2/blobs")
            .join(algo)
            .join(&hex[..2])
            .join(hex)
            .join("data");
        Reply::status(200, std::fs::read(data).unwrap())
    })
    .await;
    target_host.set(target.host()).unwrap();
    let location = target.url();
    proxy.set_hook(move |request| match request.path.split_once("/blobs/") {
        Some((_, digest)) if request.method == "GET" => Action::RespondWith {
            status: 307,
            headers: vec![("location".into(), format!("{location}/blob/{digest}"))],
            body: Vec::new(),
        },
        _ => Action::Forward,
    });

    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("config.json");
    let pair = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pass");
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths":{{"{}":{{"auth":"{pair}"}}}}}}"#, proxy.host()),
    )
    .unwrap();
    let host = proxy.host();
    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/app:1"))
            .arg("--auth-file")
            .arg(&auth_file),
        Duration::from_secs(60),
    )
    .await;
    let text = support::text(&out);

    // The registry's credentials went to the registry only, and nothing the target minted
    // came back to it.
    let to_target = target.seen();
    assert!(
        to_target.iter().all(|s| s
            .authorization
            .as_deref()
            .is_none_or(|a| a == "Bearer minted-by-the-target")),
        "the target saw credentials: {to_target:#?}"
    );
    let token_requests: Vec<_> = to_target
        .iter()
        .filter(|s| s.path.starts_with("/token"))
        .collect();
    assert!(
        !token_requests.is_empty(),
        "the target's realm was asked: {to_target:#?}"
    );
    let to_registry = proxy.records();
    assert!(
        to_registry
            .iter()
            .all(|r| !r.authorization.as_deref().unwrap_or("").contains("minted")),
        "the target's token reached the registry: {to_registry:#?}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    containerd.assert_image_complete(&format!("{host}/team/app:1"));
    assert_eq!(image.layers.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registrys_words_are_printed_escaped() {
    let containerd = Containerd::start().await;
    let forged = "gone\u{1b}[2J\u{1b}[31m\nerror: forged line\r\u{7}";
    let body = serde_json::json!({
        "errors": [{"code": "MANIFEST_UNKNOWN\u{1b}[0m", "message": forged}]
    })
    .to_string();
    let hostile = Hostile::start(move |_| Reply::status(404, body.clone())).await;
    let host = hostile.host();
    for format in ["plain", "json"] {
        let out = run_within(
            pull(&containerd, &host, &format!("{host}/team/app:1")).args(["--log-format", format]),
            Duration::from_secs(30),
        )
        .await;
        let text = support::text(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("HTTP 404"), "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'),
            "{format}: control characters reached the output: {text:?}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("error: forged")),
            "{format}: a forged line: {text}"
        );
        assert!(
            text.contains("\\u{1b}[2J"),
            "{format}: shown escaped: {text}"
        );
    }
}

/// What the status file says of each image, by name.
fn status_images(path: &std::path::Path) -> Vec<serde_json::Value> {
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the status file")).expect("JSON");
    status["images"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn trickling_registries_cannot_hold_a_pass_hostage() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let upstream = registry.host();
    for repo in ["good/app", "trickle/one", "trickle/two"] {
        support::push_image(&upstream, repo, "1", &ImageSpec::new(&[16 * KIB])).await;
    }
    support::push_image(&upstream, "slow/blob", "1", &ImageSpec::new(&[1 << 20])).await;
    let proxy = Proxy::start(&upstream).await;
    proxy.set_hook(|request| {
        let get = request.method == "GET";
        if get && request.path.starts_with("/v2/trickle/") && request.path.contains("/manifests/") {
            // A byte a second: a 500-byte manifest would take minutes.
            Action::Shape(support::Shape {
                bytes_per_sec: Some(1),
                cut_after: None,
            })
        } else if get && request.path.starts_with("/v2/slow/") && request.path.contains("/blobs/") {
            // Above the minimum progress, but the 1 MiB layer would take minutes.
            Action::Shape(support::Shape {
                bytes_per_sec: Some(4 * 1024),
                cut_after: None,
            })
        } else {
            Action::Forward
        }
    });
    let host = proxy.host();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    std::fs::write(
        &list,
        format!(
            "pin: false\nimages:\n  - {host}/good/app:1\n  - {host}/trickle/one:1\n  - \
             {host}/trickle/two:1\n  - {host}/slow/blob:1\n"
        ),
    )
    .unwrap();
    let status_file = dir.path().join("status.json");
    let started = std::time::Instant::now();
    let out = run_within(
        Prepull::new("agent")
            .args(["--once", "--no-listen", "--no-node-credentials"])
            .containerd(&containerd)
            .plain_http(&host)
            .args(["--max-pull-time", "8s"])
            .env("PREPULL_MIN_PROGRESS", "1KiB/2s")
            .arg("--list")
            .arg(&list)
            .arg("--status-file")
            .arg(&status_file),
        Duration::from_secs(50),
    )
    .await;
    let took = started.elapsed();
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let images = status_images(&status_file);
    let by_name = |repo: &str| {
        images
            .iter()
            .find(|i| i["image"].as_str().is_some_and(|n| n.contains(repo)))
            .cloned()
            .unwrap_or_else(|| panic!("no {repo} in {images:#?}"))
    };
    assert_eq!(by_name("good/app")["state"], "warm", "{images:#?}");
    for repo in ["trickle/one", "trickle/two"] {
        let image = by_name(repo);
        assert_eq!(image["state"], "failed", "{image:#}");
        assert_eq!(image["kind"], "network", "{image:#}");
        assert!(
            image["error"]
                .as_str()
                .is_some_and(|e| e.contains("below the minimum")),
            "{image:#}"
        );
    }
    let slow = by_name("slow/blob");
    assert_eq!(slow["state"], "failed", "{slow:#}");
    assert!(
        slow["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-pull-time")),
        "{slow:#}"
    );
    assert!(took < Duration::from_secs(45), "the pass took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_manifest_media_type_is_refused_and_no_record_written() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let upstream = registry.host();
    let image = support::push_image(&upstream, "team/odd", "1", &ImageSpec::new(&[8 * KIB])).await;
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest_bytes).unwrap();
    manifest["mediaType"] = "application/vnd.example.thing.v1+json".into();
    let odd = serde_json::to_vec(&manifest).unwrap();
    let proxy = Proxy::start(&upstream).await;
    proxy.set_hook(move |request| {
        if !request.path.contains("/manifests/") {
            Action::Forward
        } else if request.method == "HEAD" {
            Action::Respond {
                status: 405,
                body: Vec::new(),
            }
        } else {
            Action::RespondWith {
                status: 200,
                headers: vec![(
                    "content-type".into(),
                    "application/vnd.example.thing.v1+json".into(),
                )],
                body: odd.clone(),
            }
        }
    });
    let host = proxy.host();
    let name = format!("{host}/team/odd:1");
    let out = run_within(
        pull(&containerd, &host, &name).args(["--no-unpack", "--output", "json"]),
        Duration::from_secs(30),
    )
    .await;
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("unsupported media type") && text.contains("bad-manifest"),
        "{text}"
    );
    let records = containerd.ctr_ok(&["-n", "k8s.io", "images", "ls", "-q"]);
    assert!(!records.contains("team/odd"), "records written: {records}");
}

/// A credential-provider plugin `script` (shell) configured for `*.example.com`.
fn plugin(dir: &std::path::Path, script: &str) -> prepull::credentials::Plugins {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join("hostile-plugin");
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - \
         name: hostile-plugin\n    matchImages: [\"*.example.com\"]\n    defaultCacheDuration: \
         1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
    )
    .unwrap();
    prepull::credentials::Plugins::load(&config, &bin).expect("plugin config")
}

const RESPONSE: &str = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","auth":{"reg.example.com":{"username":"u","password":"p"}}}"#;

#[test]
fn a_plugin_printing_more_than_a_pipe_holds_is_read_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB of diagnostics on stderr, then the response: a pipe holds 64 KiB.
    let plugins = plugin(
        dir.path(),
        &format!("cat >/dev/null\nhead -c 262144 /dev/zero | tr '\\0' x >&2\necho '{RESPONSE}'\n"),
    )
    .with_timeout(Duration::from_secs(20));
    let started = std::time::Instant::now();
    let found = plugins.lookup("reg.example.com/team/app");
    assert_eq!(
        found.len(),
        1,
        "{:?}",
        plugins.near_misses("reg.example.com/team/app")
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the plugin ran for {:?}",
        started.elapsed()
    );
}

#[test]
fn a_plugin_that_times_out_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let plugins = plugin(
        dir.path(),
        &format!("sleep 300 &\necho $! > {}\nwait\n", pid_file.display()),
    )
    .with_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    assert!(plugins.lookup("reg.example.com/team/app").is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let why = plugins.near_misses("reg.example.com/team/app").join("; ");
    assert!(why.contains("timed out"), "{why}");
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Killed: gone, or a zombie waiting for init to reap it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_string()));
        match state {
            None => break,
            Some(s) if s.starts_with('Z') => break,
            Some(s) => assert!(
                std::time::Instant::now() < deadline,
                "the plugin's child {child} still runs: {s}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_plugin_answering_an_out_of_range_cache_duration_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let response = RESPONSE.replace(
        r#""cacheKeyType""#,
        r#""cacheDuration":"99999999999999999999h","cacheKeyType""#,
    );
    let plugins = plugin(dir.path(), &format!("cat >/dev/null\necho '{response}'\n"))
        .with_timeout(Duration::from_secs(20));
    assert!(plugins.lookup("reg.example.com/team/app").is_empty());
    let why = plugins.near_misses("reg.example.com/team/app").join("; ");
    assert!(why.contains("invalid cacheDuration"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_pull_reports_the_bytes_it_fetched() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = support::push_image(&host, "team/app", "1", &ImageSpec::new(&[256 * KIB])).await;
    // The registry serves the layer with its last byte flipped: fetched whole, then refused.
    let layer = &image.layers[0];
    let path = registry.blob_data_path(&layer.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let name = format!("{host}/team/app:1");

    let out = run_within(
        pull(&containerd, &host, &name).args(["--output", "json"]),
        Duration::from_secs(60),
    )
    .await;
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON line");
    assert_eq!(line["kind"], "corrupt", "{line:#}");
    assert!(
        line["bytes_fetched"].as_u64() >= Some(layer.size),
        "{line:#}"
    );

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    std::fs::write(&list, format!("pin: false\nimages:\n  - {name}\n")).unwrap();
    let status_file = dir.path().join("status.json");
    let out = run_within(
        Prepull::new("agent")
            .args(["--once", "--no-listen", "--no-node-credentials"])
            .containerd(&containerd)
            .plain_http(&host)
            .arg("--list")
            .arg(&list)
            .arg("--status-file")
            .arg(&status_file),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let images = status_images(&status_file);
    assert_eq!(images[0]["state"], "failed", "{images:#?}");
    assert!(
        images[0]["bytes_fetched"].as_u64() >= Some(layer.size),
        "{images:#?}"
    );
}

/// `certs.d/<host>/ca.crt` for a registry served with `ca`'s certificate; the directory to pass
/// as `--hosts-dir`.
fn trusting(ca: &support::TestCa, host: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(host)).unwrap();
    std::fs::write(dir.path().join(host).join("ca.crt"), ca.cert_pem()).unwrap();
    dir
}

/// A docker config file `dir/name` holding `entry` for `host`.
fn auth_file(dir: &std::path::Path, name: &str, host: &str, entry: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!(r#"{{"auths":{{"{host}":{{{entry}}}}}}}"#)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_registry_naming_a_plain_http_realm_gets_no_credentials_sent_there() {
    use support::auth::{Access, TokenAuth};
    // The realm: plain HTTP on loopback, recording what it is sent; it mints anonymous pull
    // tokens the registry accepts.
    let server = support::TokenServer::start(support::TokenServerOptions::default()).await;
    let minter = server.minter();
    let realm = Hostile::start(move |_| {
        let minted = minter.mint(
            "",
            &[Access::new("team/app", &["pull"])],
            Duration::from_secs(300),
        );
        Reply::status(200, format!(r#"{{"token":"{}"}}"#, minted.token))
    })
    .await;
    let realm_url = format!("{}/token", realm.url());
    let ca = support::TestCa::new();
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().tls(&ca).token(TokenAuth {
            realm: realm_url.clone(),
            ..server.registry_auth()
        }))
    );
    push_image_with(
        &registry.push_target(),
        "team/app",
        "1",
        &ImageSpec::new(&[16 * KIB]),
    )
    .await;
    let host = registry.host();
    let hosts_dir = trusting(&ca, &host);
    let image = format!("{host}/team/app:1");
    let https_pull = || {
        Prepull::new("pull")
            .containerd(&containerd)
            .arg("--no-node-credentials")
            .arg("--hosts-dir")
            .arg(hosts_dir.path())
            .args(["--output", "json"])
    };

    let dir = tempfile::tempdir().unwrap();
    let pair = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pass");
    for (what, entry) in [
        ("a password", format!(r#""auth":"{pair}""#)),
        (
            "a refresh token",
            r#""username":"<token>","identitytoken":"s3cret-refresh""#.to_string(),
        ),
    ] {
        let file = auth_file(
            dir.path(),
            &format!("{}.json", what.replace(' ', "-")),
            &host,
            &entry,
        );
        let out = run_within(
            https_pull().arg("--auth-file").arg(&file).arg(&image),
            Duration::from_secs(60),
        )
        .await;
        let text = support::text(&out);
        let seen = realm.seen();
        assert!(
            seen.iter().all(|s| s.authorization.is_none()),
            "{what}: the plain-HTTP realm got credentials: {seen:#?}"
        );
        // Nor a refresh token in a POST body: the realm is not asked at all.
        assert!(
            seen.is_empty(),
            "{what}: the realm was asked with a secret: {seen:#?}"
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
                .unwrap_or_else(|e| panic!("{what}: one JSON line ({e}): {text}"));
        assert_eq!(line["kind"], "config", "{what}: {line:#}");
        let error = line["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!(
                "registry {host}: credentials not sent to the token realm {realm_url}"
            )) && error.contains("reached over HTTPS")
                && error.contains("as an https:// URL"),
            "{what}: {error}"
        );
        assert!(!text.contains("s3cret"), "{what}: a secret printed: {text}");
    }

    // Anonymous: no secret to lose, so the realm is asked, and the pull succeeds.
    let out = run_within(https_pull().arg(&image), Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    let seen = realm.seen();
    assert!(!seen.is_empty(), "the realm was asked anonymously");
    assert!(seen.iter().all(|s| s.authorization.is_none()), "{seen:#?}");
    containerd.assert_image_complete(&image);
}

/// The one JSON line `prepull pull --output json` printed for a failed image.
fn failed_line(out: &Output) -> serde_json::Value {
    let text = support::text(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("one JSON line ({e}): {text}"))
}

/// `HEAD` is not allowed (so the tag is fetched with a `GET`), anything else is `answer`'s.
fn no_head(
    answer: impl Fn(&support::Seen) -> Reply + Send + Sync + 'static,
) -> impl Fn(&support::Seen) -> Reply + Send + Sync + 'static {
    move |seen| {
        if seen.method == "HEAD" {
            Reply::status(405, "")
        } else {
            answer(seen)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_manifest_is_refused_at_4_mib() {
    let containerd = Containerd::start().await;
    let hostile = Hostile::start(no_head(|_| Reply::Endless {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        chunk: vec![b' '; 64 * KIB],
    }))
    .await;
    let host = hostile.host();
    let started = std::time::Instant::now();
    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/app:1")).args(["--output", "json"]),
        Duration::from_secs(30),
    )
    .await;
    let line = failed_line(&out);
    assert_eq!(line["kind"], "bad-manifest", "{line:#}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("is larger than 4194304 bytes")),
        "{line:#}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Read up to the cap, then the connection is closed: the server can hand out no more than
    // the cap and the connection's kernel buffers.
    let bound = 4 * MIB + socket_buffers_max() + MIB;
    assert!(
        hostile.bytes_sent() < bound,
        "the server handed out {} bytes (bound {bound})",
        hostile.bytes_sent()
    );
}

/// An OCI manifest with one layer and a config described as `config_size` bytes of `config`.
fn manifest_with_config(config: &str, config_size: u64) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": prepull::digest::Digest::sha256(b"a layer").to_string(),
            "size": 7,
        }],
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_over_16_mib_is_never_fetched_and_one_longer_than_described_is_cut_off() {
    let containerd = Containerd::start().await;
    let config = prepull::digest::Digest::sha256(b"{}").to_string();
    let huge = manifest_with_config(&config, (16 << 20) + 1);
    let small = manifest_with_config(&config, 1024);
    let layer = prepull::digest::Digest::sha256(b"a layer").to_string();
    let hostile = Hostile::start(no_head(move |seen| {
        let manifest = |body: &Vec<u8>| Reply::Full {
            status: 200,
            headers: vec![(
                "content-type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            body: body.clone(),
        };
        if seen.path.ends_with("/manifests/huge") {
            manifest(&huge)
        } else if seen.path.ends_with("/manifests/endless") {
            manifest(&small)
        } else if seen.path.ends_with(&layer) {
            Reply::status(200, "a layer")
        } else {
            // The config, endlessly.
            Reply::Endless {
                status: 200,
                headers: Vec::new(),
                chunk: vec![b' '; 64 * KIB],
            }
        }
    }))
    .await;
    let host = hostile.host();

    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/huge:huge")).args(["--output", "json"]),
        Duration::from_secs(30),
    )
    .await;
    let line = failed_line(&out);
    assert_eq!(line["kind"], "bad-manifest", "{line:#}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("claims 16777217 bytes, more than the 16777216 allowed")),
        "{line:#}"
    );
    let asked = hostile.seen();
    assert!(
        !asked.iter().any(|s| s.path.contains("/blobs/")),
        "a blob was asked for: {asked:#?}"
    );

    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/endless:endless"))
            .args(["--output", "json"]),
        Duration::from_secs(60),
    )
    .await;
    let line = failed_line(&out);
    assert_eq!(line["kind"], "corrupt", "{line:#}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("longer than the expected 1024 bytes")),
        "{line:#}"
    );
    // Each attempt reads one chunk past the size and closes its connection.
    let attempts = hostile
        .seen()
        .iter()
        .filter(|s| s.path.contains(&format!("/blobs/{config}")))
        .count() as u64;
    let bound = attempts * (socket_buffers_max() + MIB);
    assert!(
        attempts >= 1 && hostile.bytes_sent() < bound,
        "the server handed out {} bytes in {attempts} attempts (bound {bound})",
        hostile.bytes_sent()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_chain_longer_than_10_is_refused() {
    let containerd = Containerd::start().await;
    let hostile = Hostile::start(|seen| {
        // Every request is sent one hop further, forever.
        let next = match seen.path.strip_prefix("/hop/") {
            Some(n) => n.parse::<u64>().unwrap_or(0) + 1,
            None => 1,
        };
        Reply::Full {
            status: 307,
            headers: vec![("location".into(), format!("/hop/{next}"))],
            body: Vec::new(),
        }
    })
    .await;
    let host = hostile.host();
    let out = run_within(
        pull(&containerd, &host, &format!("{host}/team/app:1")),
        Duration::from_secs(30),
    )
    .await;
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("more than 10 redirects"), "{text}");
    let seen = hostile.seen();
    let chains = seen.iter().filter(|s| s.path.starts_with("/v2/")).count();
    let hops = seen.len() - chains;
    assert!(
        chains >= 1 && hops <= 10 * chains,
        "{hops} hops in {chains} chains"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_from_https_to_plain_http_is_refused() {
    let containerd = Containerd::start().await;
    let target = Hostile::start(|_| Reply::status(404, "")).await;
    let location = target.url();
    let ca = support::TestCa::new();
    let registry = Hostile::start_tls(&ca, move |seen| Reply::Full {
        status: 307,
        headers: vec![("location".into(), format!("{location}{}", seen.path))],
        body: Vec::new(),
    })
    .await;
    assert!(registry.url().starts_with("https://"));
    let host = registry.host();
    let hosts_dir = trusting(&ca, &host);
    let out = run_within(
        Prepull::new("pull")
            .containerd(&containerd)
            .arg("--no-node-credentials")
            .arg("--hosts-dir")
            .arg(hosts_dir.path())
            .arg(format!("{host}/team/app:1")),
        Duration::from_secs(30),
    )
    .await;
    let text = support::text(&out);
    let seen = target.seen();
    assert!(
        seen.is_empty(),
        "the plain-HTTP target was asked: {seen:#?}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("refusing a redirect from HTTPS to plain HTTP"),
        "{text}"
    );
    assert!(!registry.seen().is_empty(), "the registry was asked");
}

#[test]
fn a_plugin_printing_more_than_1_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of blanks before a valid response: JSON a reader without a cap would accept.
    let plugins = plugin(
        dir.path(),
        &format!("cat >/dev/null\nhead -c 2097152 /dev/zero | tr '\\0' ' '\necho '{RESPONSE}'\n"),
    )
    .with_timeout(Duration::from_secs(20));
    assert!(plugins.lookup("reg.example.com/team/app").is_empty());
    let why = plugins.near_misses("reg.example.com/team/app").join("; ");
    assert!(why.contains("printed more than 1048576 bytes"), "{why}");
    // The same response without the padding is taken.
    let plugins = plugin(dir.path(), &format!("cat >/dev/null\necho '{RESPONSE}'\n"))
        .with_timeout(Duration::from_secs(20));
    assert_eq!(plugins.lookup("reg.example.com/team/app").len(), 1);
}

/// What `GET /livez` on `addr` got: the status line, or `None` when the connection was closed
/// (or reset) without an answer.
async fn probe(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = b"GET /livez HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n";
    stream.write_all(request).await.ok()?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "{addr} neither answered nor closed in 5 s");
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_clients_cannot_keep_the_agents_endpoint_from_answering_others() {
    use tokio::io::AsyncWriteExt as _;
    let containerd = Containerd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    std::fs::write(&list, "images: []\n").unwrap();
    let status_file = dir.path().join("status.json");
    let mut command = Prepull::new("agent")
        .containerd(&containerd)
        .args(["--no-node-credentials", "--splay", "0s", "--interval", "1h"])
        .arg("--listen=127.0.0.1:0")
        .arg("--list")
        .arg(&list)
        .arg("--status-file")
        .arg(&status_file)
        .command();
    let mut agent = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let listen = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["listen"].as_str().map(str::to_string));
        if let Some(addr) = listen {
            break addr;
        }
        assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
        assert!(std::time::Instant::now() < deadline, "no listen address");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(probe(&addr).await.as_deref(), Some("HTTP/1.1 200 OK"));

    // As many clients as the endpoint serves at once, each sending a request head a byte at a
    // time, never finishing it.
    let started = std::time::Instant::now();
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
            .await
            .unwrap();
        slow.spawn(async move {
            while stream.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    // Every slot is taken: a newcomer is closed at once, unanswered.
    assert_eq!(probe(&addr).await, None, "the 65th connection was served");
    // Until the slow clients run out of time to send their heads (10 s).
    let answered = loop {
        if let Some(status) = probe(&addr).await {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the endpoint answered nobody for {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(answered, "HTTP/1.1 200 OK");
    slow.abort_all();
}
