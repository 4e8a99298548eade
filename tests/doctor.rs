//! `prepull doctor` against real registries and a real containerd: each cause of an
//! `ErrImagePull` produced for real, and the report naming it in the step where it fails.

use testbench as support;

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;
use support::{
    push_image, push_image_with, push_index, Containerd, ImageSpec, MediaFamily, Platform, Prepull,
    Proxy, Registry, RegistryOptions, TestCa,
};

const KIB: usize = 1024;

/// A node: containerd, and a directory for credentials, hosts.toml and the kubelet's config.
struct Node {
    containerd: Containerd,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let node = Node {
            containerd: Containerd::start().await,
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            node.kubelet_config(),
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
        )
        .unwrap();
        node
    }

    fn kubelet_config(&self) -> PathBuf {
        self.dir.path().join("kubelet-config.yaml")
    }

    /// A file (or, with a `/`, a file in a secret directory) under the node's directory.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A Docker config keyed `key` with `user:password`.
    fn auth_file(&self, name: &str, key: &str, user: &str, password: &str) -> PathBuf {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.write(
            name,
            &format!(r#"{{"auths":{{"{key}":{{"auth":"{auth}"}}}}}}"#),
        )
    }

    /// Runs `prepull doctor IMAGE --output json` with `args`: the exit code and the report.
    async fn doctor(&self, image: &str, args: &[&str]) -> (i32, Value) {
        let out = Prepull::new("doctor")
            .arg(image)
            .containerd(&self.containerd)
            .arg("--no-node-credentials")
            .arg("--kubelet-config")
            .arg(self.kubelet_config())
            .args(["--output", "json"])
            .args(args)
            .output()
            .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not a JSON report ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }
}

/// The step named `name` of a report.
fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {report:#}"))
}

/// Asserts that the report fails (exit 1) at step `name` with `cause`, and that no step before
/// it failed; returns the step.
fn fails_at<'a>(code: i32, report: &'a Value, name: &str, cause: &str) -> &'a Value {
    let steps = report["steps"].as_array().unwrap();
    let first = steps
        .iter()
        .find(|s| s["status"] == "fail")
        .unwrap_or_else(|| panic!("no step fails: {report:#}"));
    assert_eq!(
        (first["step"].as_str(), first["cause"].as_str()),
        (Some(name), Some(cause)),
        "{report:#}"
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    first
}

fn text(v: &Value) -> String {
    v.to_string()
}

/// A registry with Basic auth: the healthy image, then every credential mistake, a missing tag
/// and repository, damage on the node and a kubelet that verifies anyway.
#[tokio::test(flavor = "multi_thread")]
async fn credential_tag_node_and_kubelet_causes_are_named_where_they_fail() {
    let (node, registry) = tokio::join!(
        Node::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "s3cret"))
    );
    let host = registry.host();
    let spec = ImageSpec::new(&[16 * KIB, 8 * KIB]);
    let pushed = push_image_with(&registry.push_target(), "team/app", "v1", &spec).await;
    let image = format!("{host}/team/app:v1");
    let good = node.auth_file("good.json", &host, "alice", "s3cret");
    let good = good.to_str().unwrap();
    let plain = ["--plain-http", host.as_str()];
    let with = |auth: &str| -> Vec<String> {
        [&plain[..], &["--auth-file", auth]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>, image: String| {
        let node = &node;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.doctor(&image, &args).await
        }
    };

    // Not on the node yet: every step ok but the node's, which warns (a pod would pull).
    let (code, report) = run(with(good), image.clone()).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(step(&report, "node")["cause"], "not-on-node");
    let registry_step = step(&report, "registry");
    assert!(
        text(registry_step).contains("good.json") && !text(&report).contains("s3cret"),
        "names the credential by its file, never its secret: {report:#}"
    );

    // Pulled: healthy, every step ok.
    Prepull::new("pull")
        .containerd(&node.containerd)
        .args(with(good))
        .arg("--no-node-credentials")
        .arg(&image)
        .success()
        .await;
    let (code, report) = run(with(good), image.clone()).await;
    assert_eq!(code, 0, "{report:#}");
    for s in report["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "ok", "{report:#}");
    }

    // A wrong password: the registry step fails, naming the credential it tried.
    let wrong = node.auth_file("wrong.json", &host, "alice", "nope");
    let (code, report) = run(with(wrong.to_str().unwrap()), image.clone()).await;
    let failing = fails_at(code, &report, "registry", "unauthorized");
    assert!(text(failing).contains("wrong.json"), "{failing:#}");

    // A secret of type Opaque (its keys are username and password) mounted as a directory.
    node.write("opaque/username", "alice");
    node.write("opaque/password", "s3cret");
    let opaque = node.dir.path().join("opaque");
    let (code, report) = run(with(opaque.to_str().unwrap()), image.clone()).await;
    let failing = fails_at(code, &report, "credentials", "wrong-secret-type");
    assert!(
        text(failing).contains("kubernetes.io/dockerconfigjson"),
        "{failing:#}"
    );

    // A secret created without data.
    let empty = node.write("empty/.dockerconfigjson", "");
    let (code, report) = run(
        with(empty.parent().unwrap().to_str().unwrap()),
        image.clone(),
    )
    .await;
    fails_at(code, &report, "credentials", "empty-secret");

    // What `docker login` writes on a desktop: a credential store, no credentials.
    let desktop = node.write(
        "desktop.json",
        &format!(r#"{{"auths":{{"{host}":{{}}}},"credsStore":"desktop"}}"#),
    );
    let (code, report) = run(with(desktop.to_str().unwrap()), image.clone()).await;
    let failing = fails_at(code, &report, "credentials", "creds-store-only");
    assert!(text(failing).contains("credsStore: desktop"), "{failing:#}");

    // A credential keyed for another port: a near miss, then the registry refuses.
    let (bare_host, port) = host.rsplit_once(':').unwrap();
    let other_port = format!("{bare_host}:{}", port.parse::<u16>().unwrap() + 1);
    let misskeyed = node.auth_file("port.json", &other_port, "alice", "s3cret");
    let (code, report) = run(with(misskeyed.to_str().unwrap()), image.clone()).await;
    fails_at(code, &report, "registry", "unauthorized");
    let credentials = step(&report, "credentials");
    assert_eq!(credentials["cause"], "near-miss", "{report:#}");
    assert!(
        text(credentials).contains("ports must match"),
        "{credentials:#}"
    );

    // Docker Hub's key, for a private registry.
    let hub = node.auth_file("hub.json", "https://index.docker.io/v1/", "alice", "s3cret");
    let (code, report) = run(with(hub.to_str().unwrap()), image.clone()).await;
    fails_at(code, &report, "registry", "unauthorized");
    assert_eq!(step(&report, "credentials")["cause"], "docker-hub-key");

    // A tag that does not exist, and a repository that does not.
    let (code, report) = run(with(good), format!("{host}/team/app:v9")).await;
    fails_at(code, &report, "manifest", "tag-not-found");
    let (code, report) = run(with(good), format!("{host}/team/nothing:v1")).await;
    fails_at(code, &report, "manifest", "repository-not-found");

    // The kubelet verifies credentials for every image on the node.
    std::fs::write(
        node.kubelet_config(),
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         imagePullCredentialsVerificationPolicy: AlwaysVerify\n",
    )
    .unwrap();
    let (code, report) = run(with(good), image.clone()).await;
    fails_at(code, &report, "kubelet", "always-verify");
    std::fs::remove_file(node.kubelet_config()).unwrap();

    // Bit rot in a layer on the node: the node step fails and says how to mend it.
    let layer = &pushed.layers[0];
    let blob = node
        .containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(layer.digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let (code, report) = run(with(good), image.clone()).await;
    let failing = fails_at(code, &report, "node", "corrupt");
    assert!(
        text(failing).contains(&layer.digest) && text(failing).contains("prepull repair"),
        "{failing:#}"
    );
    assert_eq!(step(&report, "kubelet")["status"], "skipped");
}

/// Transport: a certificate from an unknown CA, TLS spoken to a plain-HTTP registry, a name that
/// does not resolve, a mirror that is down while its upstream works, and a registry that
/// rate-limits.
#[tokio::test(flavor = "multi_thread")]
async fn tls_dns_mirror_and_rate_limit_causes_are_named_where_they_fail() {
    let ca = TestCa::new();
    let (node, tls, plain) = tokio::join!(
        Node::start(),
        Registry::start_with(RegistryOptions::default().tls(&ca)),
        Registry::start()
    );
    let spec = ImageSpec::new(&[8 * KIB]);
    push_image_with(&tls.push_target(), "team/app", "v1", &spec).await;
    push_image(&plain.host(), "team/app", "v1", &spec).await;
    let certs = node.dir.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    let hosts_dir = ["--hosts-dir", certs.to_str().unwrap()];

    // The registry's CA is not trusted: the registry step fails with tls, saying where the CA goes.
    let image = format!("{}/team/app:v1", tls.host());
    let (code, report) = node.doctor(&image, &hosts_dir).await;
    let failing = fails_at(code, &report, "registry", "tls");
    assert!(text(failing).contains("certs.d"), "{failing:#}");
    // Plain HTTP spoken to it.
    let (code, report) = node.doctor(&image, &["--plain-http", &tls.host()]).await;
    let failing = fails_at(code, &report, "registry", "tls");
    assert!(text(failing).contains("speaks HTTPS"), "{failing:#}");
    // Trusted through hosts.toml: no step fails.
    tls.write_hosts_toml(&certs);
    let (code, report) = node.doctor(&image, &hosts_dir).await;
    assert_eq!(code, 0, "{report:#}");

    // TLS spoken to a registry that serves plain HTTP.
    let image = format!("{}/team/app:v1", plain.host());
    let (code, report) = node.doctor(&image, &hosts_dir).await;
    let failing = fails_at(code, &report, "registry", "tls");
    assert!(text(failing).contains("--plain-http"), "{failing:#}");

    // A name that does not resolve.
    let (code, report) = node
        .doctor("registry.prepull-test.invalid/team/app:v1", &hosts_dir)
        .await;
    fails_at(code, &report, "network", "dns");
    assert_eq!(step(&report, "registry")["status"], "skipped");

    // A mirror that is down (nothing listens on its port) while the upstream works: a warning.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = certs.join(plain.host());
    std::fs::create_dir_all(&dir).unwrap();
    let write_mirror = |mirror: &str| {
        let toml = format!(
            "server = \"http://{}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            plain.host()
        );
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    };
    write_mirror(&down.to_string());
    let (code, report) = node.doctor(&image, &hosts_dir).await;
    assert_eq!(code, 0, "{report:#}");
    let mirror = step(&report, "mirror");
    assert_eq!(
        (mirror["status"].as_str(), mirror["cause"].as_str()),
        (Some("warning"), Some("mirror-down")),
        "{report:#}"
    );
    assert_eq!(step(&report, "manifest")["status"], "ok");
    // A mirror that accepts connections and closes them without a word: asked, and named.
    let closing = support::DeadHost::closing().await;
    write_mirror(&closing.host());
    let (code, report) = node.doctor(&image, &hosts_dir).await;
    assert_eq!(code, 0, "{report:#}");
    let mirror = step(&report, "mirror");
    assert_eq!(mirror["cause"], "mirror-down", "{report:#}");
    assert!(closing.accepted() > 0, "the mirror was asked");
    // A working mirror (the registry behind a proxy, as a pull-through cache would be).
    let cache = Proxy::start(&plain.host()).await;
    write_mirror(&cache.host());
    let (code, report) = node.doctor(&image, &hosts_dir).await;
    assert_eq!(code, 0, "{report:#}");
    let mirror = step(&report, "mirror");
    assert!(
        mirror["status"] == "ok" && text(mirror).contains("answers /v2/ with HTTP 200"),
        "{report:#}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // 429 from the registry, with its headroom: rate-limited.
    let proxy = Proxy::start(&plain.host()).await;
    proxy.set_hook(|_| support::Action::RespondWith {
        status: 429,
        headers: vec![("RateLimit-Remaining".into(), "0;w=21600".into())],
        body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
    });
    let image = format!("{}/team/app:v1", proxy.host());
    let (code, report) = node.doctor(&image, &["--plain-http", &proxy.host()]).await;
    fails_at(code, &report, "registry", "rate-limited");
}

/// An index without the node's platform.
#[tokio::test(flavor = "multi_thread")]
async fn a_platform_missing_from_the_index_is_named_with_what_it_has() {
    let (node, registry) = tokio::join!(Node::start(), Registry::start());
    let host = registry.host();
    let specs = [
        ImageSpec::new(&[8 * KIB]).platform(Platform::linux_arm64()),
        ImageSpec::new(&[8 * KIB]).platform(Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        }),
    ];
    push_index(&host, "multi/app", "v1", MediaFamily::Oci, &specs, true).await;
    let image = format!("{host}/multi/app:v1");
    let (code, report) = node
        .doctor(
            &image,
            &["--plain-http", &host, "--platform", "linux/amd64"],
        )
        .await;
    let failing = fails_at(code, &report, "platform", "no-platform");
    assert!(
        text(failing).contains("linux/arm64") && text(failing).contains("linux/amd64"),
        "{failing:#}"
    );
}

/// A secret mounted with the wrong key, and an image on the node whose binary was emptied (a
/// power loss mid-unpack): each named where it fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_key_and_an_image_that_cannot_start_are_named() {
    let (node, registry) = tokio::join!(Node::start(), Registry::start());
    let host = registry.host();
    let layer = tokio::task::spawn_blocking(support::busybox::busybox_layer)
        .await
        .unwrap();
    let cmd = ["/bin/sh", "-c", "true"];
    let app = support::busybox::push_runnable(&host, "team/app", "v1", &[&layer], &cmd).await;
    let image = format!("{host}/team/app:v1");

    // A docker-registry secret mounted with `items` that renamed its key.
    let secret = node.write("wrong-key/config", r#"{"auths":{}}"#);
    let secret_dir = secret.parent().unwrap().to_str().unwrap().to_string();
    let (code, report) = node
        .doctor(&image, &["--plain-http", &host, "--auth-file", &secret_dir])
        .await;
    let failing = fails_at(code, &report, "credentials", "wrong-secret-type");
    assert!(text(failing).contains("it has: config"), "{failing:#}");

    Prepull::new("pull")
        .containerd(&node.containerd)
        .args(["--plain-http", &host, "--no-node-credentials", &image])
        .success()
        .await;
    let (code, report) = node.doctor(&image, &["--plain-http", &host]).await;
    assert_eq!(code, 0, "{report:#}");
    assert!(
        text(step(&report, "node")).contains("/bin/sh"),
        "{report:#}"
    );
    let dir = support::snapshots::top_layer_dir(&node.containerd, &app.diff_ids).await;
    std::fs::File::create(dir.join("bin/busybox")).unwrap();
    let (code, report) = node.doctor(&image, &["--plain-http", &host]).await;
    let failing = fails_at(code, &report, "node", "cannot-start");
    assert!(text(failing).contains("empty"), "{failing:#}");
}
