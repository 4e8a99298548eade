//! Pulling from registries that want credentials: Basic (htpasswd) and token auth (a real token
//! server whose JWTs the real registry verifies), credentials from Docker config files and
//! mounted secrets, tried in keyring order until one works, tokens renewed mid-pull, and no
//! secret in any output even at trace level.

use testbench as support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use support::run::assert_success;
use support::{
    push_image_with, text, Action, Containerd, ImageSpec, KubeletVolume, PostSupport, Prepull,
    Proxy, Registry, RegistryOptions, RequestKind, Shape, TokenServer, TokenServerOptions,
};

const KIB: usize = 1024;
const MIB: usize = 1 << 20;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes a Docker config.json with `auths` entries `(key, entry JSON)`.
fn auth_file(dir: &Path, name: &str, entries: &[(&str, serde_json::Value)]) -> PathBuf {
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
    path
}

fn basic(user: &str, password: &str) -> serde_json::Value {
    serde_json::json!({ "auth": b64(&format!("{user}:{password}")) })
}

/// `prepull pull` of `image` from `host` without the node's credentials, with `extra` arguments.
async fn prepull(containerd: &Containerd, host: &str, extra: &[&str], image: &str) -> Output {
    Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .arg("--no-node-credentials")
        .args(extra)
        .arg(image)
        .output()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_registry_with_auth_file_and_clear_errors_without() {
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "alice-pw"))
    );
    let host = registry.host();
    let image = push_image_with(
        &registry.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[16 * KIB]),
    )
    .await;
    let reference = format!("{host}/team/app:v1");
    let dir = tempfile::tempdir().unwrap();

    // No credentials: the keyring missed, and the message says for what.
    let out = prepull(&containerd, &host, &[], &reference).await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("Basic credentials and none matched") && t.contains(&format!("{host}/team/app")),
        "{t}"
    );

    // A key without the port can never match: the error says so.
    let no_port = auth_file(
        dir.path(),
        "no-port.json",
        &[("127.0.0.1", basic("alice", "alice-pw"))],
    );
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", no_port.to_str().unwrap()],
        &reference,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("\"127.0.0.1\" has no port") && t.contains("ports must match exactly"),
        "{t}"
    );

    // A wrong password: the error names the registry and the file and key it came from.
    let wrong = auth_file(dir.path(), "wrong.json", &[(&host, basic("alice", "nope"))]);
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", wrong.to_str().unwrap()],
        &reference,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains(&host) && t.contains("wrong.json") && t.contains(&format!("auths[\"{host}\"]")),
        "{t}"
    );
    assert!(!t.contains("nope"), "no secret in errors: {t}");

    // The right one, from a mounted secret directory (kubernetes.io/dockerconfigjson).
    let secret = dir.path().join("pull-secret");
    std::fs::create_dir(&secret).unwrap();
    let json = serde_json::json!({"auths": {host.clone(): basic("alice", "alice-pw")}}).to_string();
    std::fs::write(secret.join(".dockerconfigjson"), json).unwrap();
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", secret.to_str().unwrap()],
        &reference,
    )
    .await;
    assert_success(&out);
    support::cri::wait_for_image(containerd.socket(), &reference, Duration::from_secs(20)).await;
    assert!(text(&out).contains(&image.manifest.digest));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_of_two_matching_credentials_is_used_when_the_first_fails() {
    let server = TokenServer::start(
        TokenServerOptions::default()
            .user("alice", "alice-pw")
            .user("bob", "bob-pw")
            .allow_pull("bob", "team/*")
            .anonymous(false),
    )
    .await;
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().token(server.registry_auth()))
    );
    let host = registry.host();
    push_image_with(
        &registry.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[16 * KIB, 8 * KIB]),
    )
    .await;
    let reference = format!("{host}/team/app:v1");
    let dir = tempfile::tempdir().unwrap();
    // Both keys match the image; the more specific (longer) key is tried first, as the kubelet
    // does: alice with a wrong password, then alice (who may not pull team/*), then bob.
    let first = auth_file(
        dir.path(),
        "pod-secret.json",
        &[
            (&format!("{host}/team"), basic("alice", "bad-pw")),
            (&host, basic("alice", "alice-pw")),
        ],
    );
    let second = auth_file(dir.path(), "node.json", &[(&host, basic("bob", "bob-pw"))]);
    let out = prepull(
        &containerd,
        &host,
        &[
            "--auth-file",
            first.to_str().unwrap(),
            "--auth-file",
            second.to_str().unwrap(),
            "--log-level",
            "warn",
        ],
        &reference,
    )
    .await;
    assert_success(&out);
    let requests = server.requests();
    let users: Vec<Option<String>> = requests.iter().map(|r| r.user.clone()).collect();
    assert!(
        users.contains(&Some("bob".into())),
        "bob's credential was used: {}",
        server.describe_requests()
    );
    assert!(
        server.count(RequestKind::GetBasic) >= 3,
        "three credentials were tried: {}",
        server.describe_requests()
    );
    // Once bob worked, every later request went straight to bob's token.
    let after_bob = requests
        .iter()
        .skip_while(|r| r.user.as_deref() != Some("bob"))
        .skip(1);
    assert!(
        after_bob.clone().all(|r| r.user.as_deref() == Some("bob")),
        "{}",
        server.describe_requests()
    );

    // Everyone fails: one error lists what each source got, by file and key.
    let only_bad = auth_file(dir.path(), "bad.json", &[(&host, basic("alice", "bad-pw"))]);
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", only_bad.to_str().unwrap()],
        &reference,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("bad.json") && t.contains("refused the credentials"),
        "{t}"
    );
    assert!(!t.contains("bad-pw"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_tokens_are_exchanged_with_a_post_and_registry_tokens_sent_as_is() {
    let server = TokenServer::start(
        TokenServerOptions::default()
            .user("carol", "carol-pw")
            .allow_pull("carol", "team/*")
            .anonymous(false),
    )
    .await;
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().token(server.registry_auth()))
    );
    let host = registry.host();
    push_image_with(
        &registry.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    let refresh = server.issue_refresh_token("carol");
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(
        dir.path(),
        "config.json",
        &[(
            &host,
            serde_json::json!({"username": "<token>", "identitytoken": refresh}),
        )],
    );
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", file.to_str().unwrap()],
        &format!("{host}/team/app:v1"),
    )
    .await;
    assert_success(&out);
    assert!(
        server.count(RequestKind::PostRefresh) >= 1,
        "{}",
        server.describe_requests()
    );
    assert_eq!(server.count(RequestKind::GetBasic), 0);

    // A token endpoint without OAuth2 POST (GCR answers 404): the identity token goes in a GET
    // as the Basic password instead.
    server.configure(|o| o.post = PostSupport::NotFound);
    server.clear_requests();
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", file.to_str().unwrap()],
        &format!("{host}/team/app:v1"),
    )
    .await;
    assert_success(&out);
    assert!(
        server.count(RequestKind::Other) >= 1 && server.count_ok(RequestKind::GetRefresh) >= 1,
        "a refused POST, then a GET with the identity token: {}",
        server.describe_requests()
    );
    assert!(!text(&out).contains(&refresh));

    // A registry token goes to the registry itself, no token server involved.
    server.clear_requests();
    let token = server.minter().push_token("team/app");
    let file = auth_file(
        dir.path(),
        "rt.json",
        &[(&host, serde_json::json!({"registrytoken": token}))],
    );
    let out = prepull(
        &containerd,
        &host,
        &["--auth-file", file.to_str().unwrap()],
        &format!("{host}/team/app:v1"),
    )
    .await;
    assert_success(&out);
    assert!(
        server.requests().is_empty(),
        "{}",
        server.describe_requests()
    );
    assert!(!text(&out).contains(&token));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_expires_mid_pull_is_renewed_and_the_layer_resumes() {
    let server = TokenServer::start(
        TokenServerOptions::default()
            .allow_anonymous_pull("slow/*")
            .lifetime(Duration::from_secs(1)),
    )
    .await;
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().token(server.registry_auth()))
    );
    let image = push_image_with(
        &registry.push_target(),
        "slow/app",
        "v1",
        &ImageSpec::new(&[3 * MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    // The first download of the layer crawls past the token's lifetime and then breaks, so the
    // resumed request must carry a renewed token.
    let once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (digest, flag) = (layer.digest.clone(), once.clone());
    proxy.set_hook(move |req| {
        if req.path.ends_with(&digest) && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Action::Shape(Shape {
                bytes_per_sec: Some(MIB as u64),
                cut_after: Some(2_200_000),
            })
        } else {
            Action::Forward
        }
    });
    let out = prepull(
        &containerd,
        &host,
        &["--output", "json"],
        &format!("{host}/slow/app:v1"),
    )
    .await;
    assert_success(&out);
    let recs = proxy.records();
    let layer_gets: Vec<_> = recs
        .iter()
        .filter(|r| r.path.ends_with(&layer.digest))
        .collect();
    assert!(
        layer_gets.iter().any(|r| r.status == 401),
        "the expired token was refused: {recs:?}"
    );
    assert!(
        server.count(RequestKind::GetAnonymous) >= 2,
        "a new token was fetched: {}",
        server.describe_requests()
    );
    let fetched: u64 = layer_gets.iter().map(|r| r.response_body_bytes).sum();
    assert!(
        fetched <= layer.size + MIB as u64,
        "resumed, not restarted: {fetched} for {}",
        layer.size
    );
    containerd.assert_image_complete(&format!("{host}/slow/app:v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_any_output_even_at_trace_level() {
    let server = TokenServer::start(
        TokenServerOptions::default()
            .user("dave", "dave-s3cret-pw")
            .allow_pull("dave", "team/*")
            .anonymous(false),
    )
    .await;
    let (containerd, token_registry, basic_registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().token(server.registry_auth())),
        Registry::start_with(RegistryOptions::default().htpasswd_user("erin", "erin-s3cret-pw")),
    );
    let (th, bh) = (token_registry.host(), basic_registry.host());
    push_image_with(
        &token_registry.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    push_image_with(
        &basic_registry.push_target(),
        "team/other",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = auth_file(
        dir.path(),
        "config.json",
        &[
            (&th, basic("dave", "dave-s3cret-pw")),
            (&bh, basic("erin", "erin-s3cret-pw")),
        ],
    );
    let out = Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&th)
        .plain_http(&bh)
        .arg("--no-node-credentials")
        .arg("--auth-file")
        .arg(&file)
        .args(["--log-level", "trace"])
        .arg(format!("{th}/team/app:v1"))
        .arg(format!("{bh}/team/other:v1"))
        .output()
        .await;
    assert_success(&out);
    let all = text(&out);
    assert!(
        all.len() > 10_000,
        "trace logging is really on ({} bytes)",
        all.len()
    );
    for secret in [
        "dave-s3cret-pw".to_string(),
        "erin-s3cret-pw".to_string(),
        b64("dave:dave-s3cret-pw"),
        b64("erin:erin-s3cret-pw"),
        "eyJ".to_string(), // every JWT the token server mints starts so
    ] {
        assert!(!all.contains(&secret), "{secret:?} leaked into the output");
    }
}

/// Writes an executable credential-provider plugin speaking the exec API: it records each
/// request it gets and answers with `response` (a real process, as the kubelet would run).
fn plugin(bin_dir: &Path, name: &str, response: &serde_json::Value) -> PathBuf {
    let log = bin_dir.join(format!("{name}.requests"));
    let script = format!(
        "#!/bin/sh\ncat >> '{log}'\necho >> '{log}'\ncat <<'JSON'\n{response}\nJSON\n",
        log = log.display()
    );
    let path = bin_dir.join(name);
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

fn requests(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("the plugin got JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_credential_provider_plugins_supply_credentials_with_their_cache() {
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("robot", "robot-pw"))
    );
    let host = registry.host();
    for repo in ["team/a", "team/b", "team/c", "team/d"] {
        push_image_with(
            &registry.push_target(),
            repo,
            "v1",
            &ImageSpec::new(&[8 * KIB]),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let answer = |duration: &str| {
        serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "cacheDuration": duration,
            "auth": { host.clone(): { "username": "robot", "password": "robot-pw" } }
        })
    };
    let cached_log = plugin(&bin, "cached-provider", &answer("1h"));
    let uncached_log = plugin(&bin, "uncached-provider", &answer("0s"));
    let never_log = plugin(&bin, "other-provider", &answer("1h"));
    let config = dir.path().join("credential-provider.yaml");
    let write_config = |provider: &str| {
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n\
                 - name: {provider}\n  matchImages: [\"{host}\"]\n  defaultCacheDuration: 10m\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n\
                 - name: other-provider\n  matchImages: [\"*.dkr.ecr.*.amazonaws.com\"]\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
            ),
        )
        .unwrap();
    };
    let images = [format!("{host}/team/a:v1"), format!("{host}/team/b:v1")];
    let run = |provider: &'static str, images: &[String]| {
        write_config(provider);
        Prepull::new("pull")
            .containerd(&containerd)
            .plain_http(&host)
            .arg("--no-node-credentials")
            .arg("--image-credential-provider-config")
            .arg(&config)
            .arg("--image-credential-provider-bin-dir")
            .arg(&bin)
            .args(images)
            .output()
    };

    // Cached per registry: one run of the plugin serves both images and every request.
    let out = run("cached-provider", &images).await;
    assert_success(&out);
    let got = requests(&cached_log);
    assert_eq!(got.len(), 1, "one plugin run for the registry: {got:?}");
    assert_eq!(got[0]["kind"], "CredentialProviderRequest");
    assert_eq!(got[0]["apiVersion"], "credentialprovider.kubelet.k8s.io/v1");
    assert!(
        got[0]["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{host}/team/")),
        "{}",
        got[0]
    );
    assert!(
        requests(&never_log).is_empty(),
        "a provider whose matchImages exclude the image never runs"
    );

    // cacheDuration 0s: asked again for every pull, once (not for each of the requests a pull
    // of an image not on the node makes).
    let fresh = [format!("{host}/team/c:v1"), format!("{host}/team/d:v1")];
    let out = run("uncached-provider", &fresh).await;
    assert_success(&out);
    assert_eq!(
        requests(&uncached_log).len(),
        fresh.len(),
        "no caching with 0s, one run per pull: {:?}",
        requests(&uncached_log)
    );
    assert!(requests(&never_log).is_empty());
    assert!(!text(&out).contains("robot-pw"));

    // A plugin that hangs is killed at the timeout, and the error says which plugin and why.
    let pid_file = dir.path().join("stuck.pid");
    let stuck = bin.join("stuck-provider");
    std::fs::write(
        &stuck,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho $$ > '{}'\nexec sleep 600\n",
            pid_file.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stuck, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    write_config("stuck-provider");
    let started = std::time::Instant::now();
    let out = Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .args([
            "--no-node-credentials",
            "--image-credential-provider-timeout",
            "1s",
        ])
        .arg("--image-credential-provider-config")
        .arg(&config)
        .arg("--image-credential-provider-bin-dir")
        .arg(&bin)
        .arg(&images[0])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("credential provider stuck-provider failed: timed out after 1s"),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the one-minute default was overridden: {:?}",
        started.elapsed()
    );
    let pid = std::fs::read_to_string(&pid_file).expect("the plugin ran");
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the stuck plugin (pid {}) was killed",
        pid.trim()
    );
}

/// A plugin that fails (no cloud metadata, an expired role) runs once per pull, not once per
/// request, and an image the registry serves anonymously is still pulled.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_credential_plugin_runs_once_per_pull() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let images: Vec<String> = ["team/a", "team/b"]
        .iter()
        .map(|repo| format!("{host}/{repo}:v1"))
        .collect();
    for repo in ["team/a", "team/b"] {
        push_image_with(
            &registry.push_target(),
            repo,
            "v1",
            &ImageSpec::new(&[8 * KIB, 4 * KIB]),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = bin.join("failing-provider.requests");
    let script = bin.join("failing-provider");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >> '{}'\necho >> '{}'\necho 'no instance metadata' >&2\nexit 1\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = dir.path().join("credential-provider.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n\
             - name: failing-provider\n  matchImages: [\"{host}\"]\n  defaultCacheDuration: 10m\n  \
             apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
        ),
    )
    .unwrap();
    let plugin_flags = [
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        bin.to_str().unwrap(),
    ];

    // One image: a HEAD, the manifest, the config and two layers, and one run of the plugin.
    let out = prepull(&containerd, &host, &plugin_flags, &images[0]).await;
    assert_success(&out);
    assert!(
        text(&out).contains("credential provider failed"),
        "{}",
        text(&out)
    );
    let runs = requests(&log);
    assert_eq!(runs.len(), 1, "one run for one pull: {runs:?}");
    assert_eq!(runs[0]["image"], format!("{host}/team/a"));
    containerd.assert_image_complete(&images[0]);

    // The next pull asks again (the failure is not cached), once.
    let out = prepull(&containerd, &host, &plugin_flags, &images[1]).await;
    assert_success(&out);
    assert_eq!(requests(&log).len(), 2, "{:?}", requests(&log));
    containerd.assert_image_complete(&images[1]);
}

/// Without flags, prepull finds credentials where the kubelet does: the kubelet's root dir
/// first, then `$HOME/.docker/config.json`; `--no-node-credentials` turns that off.
#[tokio::test(flavor = "multi_thread")]
async fn node_credential_files_are_found_where_the_kubelet_looks() {
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("node", "node-pw"))
    );
    let host = registry.host();
    push_image_with(
        &registry.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    let reference = format!("{host}/team/app:v1");
    let home = tempfile::tempdir().unwrap();
    let kubelet_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".docker")).unwrap();
    auth_file(
        &home.path().join(".docker"),
        "config.json",
        &[(&host, basic("node", "node-pw"))],
    );
    let run = |extra: Vec<String>| {
        Prepull::new("pull")
            .env("HOME", home.path())
            .current_dir(kubelet_root.path())
            .containerd(&containerd)
            .plain_http(&host)
            .arg("--kubelet-root-dir")
            .arg(kubelet_root.path())
            .args(extra)
            .arg(&reference)
            .output()
    };
    assert_success(&run(vec![]).await);
    let out = run(vec!["--no-node-credentials".into()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // The kubelet's root dir comes first: a wrong password there wins over $HOME's file (the
    // kubelet uses the first file it finds, not a merge).
    auth_file(
        kubelet_root.path(),
        "config.json",
        &[(&host, basic("node", "stale-pw"))],
    );
    let out = run(vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains(
            &kubelet_root
                .path()
                .join("config.json")
                .display()
                .to_string()
        ),
        "{t}"
    );
    assert!(!t.contains("stale-pw"), "{t}");
}

/// A long-running puller (the agent's situation): when Kubernetes swaps the mounted secret's
/// `..data` symlink, the next pull uses the new credentials, and the token minted from the old
/// ones (still valid at the registry) is not reused.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_pull_secret_is_used_by_the_next_pull_and_old_tokens_are_dropped() {
    use prepull::credentials::{CredentialConfig, Reloading};
    use prepull::pull::{PullOptions, Puller};
    use prepull::reference::Reference;
    use prepull::registry::{Hosts, Options, RegistryClient};
    use std::sync::Arc;

    let server = TokenServer::start(
        TokenServerOptions::default()
            .user("alice", "alice-pw")
            .user("bob", "bob-pw")
            .allow_pull("alice", "team/*")
            .allow_pull("bob", "team/*")
            .anonymous(false),
    )
    .await;
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().token(server.registry_auth()))
    );
    let host = registry.host();
    for tag in ["v1", "v2"] {
        push_image_with(
            &registry.push_target(),
            "team/app",
            tag,
            &ImageSpec::new(&[8 * KIB]),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("regcred");
    let config_for = |user: &str, password: &str| {
        serde_json::json!({ "auths": { host.clone(): basic(user, password) } }).to_string()
    };
    let mut volume = KubeletVolume::new(
        &secret,
        &[(".dockerconfigjson", &config_for("alice", "alice-pw"))],
    );

    let (sources, loaded) = Reloading::new(
        CredentialConfig {
            auth_files: vec![secret.clone()],
            ..Default::default()
        },
        Duration::ZERO,
    )
    .expect("load the mounted secret");
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let client = RegistryClient::new(
        Options {
            hosts: Hosts {
                dir: None,
                plain_http: [host.clone()].into_iter().collect(),
            },
            ..Default::default()
        },
        Arc::new(sources),
    )
    .unwrap();
    let store = prepull::store::Store::connect(containerd.socket(), "k8s.io")
        .await
        .unwrap();
    let puller = Puller::new(
        Arc::new(client),
        store,
        PullOptions {
            unpack: None,
            ..Default::default()
        },
    );
    let v1 = Reference::parse(&format!("{host}/team/app:v1")).unwrap();
    puller.pull(&v1).await.expect("pull with alice's secret");
    let users = |server: &TokenServer| -> Vec<String> {
        server
            .requests()
            .into_iter()
            .filter_map(|r| r.user)
            .collect()
    };
    assert!(
        users(&server).iter().all(|u| u == "alice") && !users(&server).is_empty(),
        "{}",
        server.describe_requests()
    );

    // The secret is rotated to bob; alice's token would still open the registry.
    server.clear_requests();
    volume.update(&[(".dockerconfigjson", &config_for("bob", "bob-pw"))]);
    let v2 = Reference::parse(&format!("{host}/team/app:v2")).unwrap();
    puller.pull(&v2).await.expect("pull with bob's secret");
    let after = users(&server);
    assert!(
        !after.is_empty() && after.iter().all(|u| u == "bob"),
        "a fresh token from bob's credentials, none from alice's: {}",
        server.describe_requests()
    );
    containerd.assert_image_complete(&v2.to_string());
}
