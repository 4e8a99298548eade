//! Reaching registries the way the node's containerd does: TLS with a private CA from
//! `hosts.toml` or a Docker-style `certs.d` dir, and mirrors tried in order with fallback to the
//! upstream. Real registries behind recording proxies.

use testbench as support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use support::process::Deadline;
use support::{
    push_image, push_image_with, text, Containerd, DeadHost, ImageSpec, Prepull, Proxy, Registry,
    RegistryOptions, TcpRelay, TestCa,
};

const KIB: usize = 1024;

/// `prepull pull` on `containerd` with `args`, without the node's credentials.
async fn prepull(containerd: &Containerd, args: &[&str]) -> Output {
    Prepull::new("pull")
        .containerd(containerd)
        .arg("--no-node-credentials")
        .args(args)
        .output()
        .await
}

fn write(dir: &Path, host: &str, file: &str, content: &str) {
    let d = dir.join(host);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(file), content).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_with_a_private_ca_from_hosts_toml_or_a_certs_dir() {
    let ca = TestCa::new();
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().tls(&ca))
    );
    let host = registry.host();
    push_image_with(
        &registry.push_target(),
        "secure/app",
        "v1",
        &ImageSpec::new(&[16 * KIB]),
    )
    .await;
    let reference = format!("{host}/secure/app:v1");
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap();

    // Untrusted: an x509-style error that names the registry.
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains(&host) && (t.contains("UnknownIssuer") || t.contains("certificate")),
        "{t}"
    );

    // A Docker-style dir: <host>/ca.crt.
    write(certs.path(), &host, "ca.crt", ca.cert_pem());
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));

    // hosts.toml with the CA given by path, in containerd's `host_port_` directory form.
    std::fs::remove_dir_all(certs.path().join(&host)).unwrap();
    let dir_name = host.replace(':', "_") + "_";
    write(
        certs.path(),
        &dir_name,
        "hosts.toml",
        &format!(
            "server = \"https://{host}\"\nca = \"{}\"\n",
            ca.pem_path().display()
        ),
    );
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));
    support::cri::wait_for_image(containerd.socket(), &reference, Duration::from_secs(20)).await;

    // A key neither containerd nor prepull knows (a typo) is ignored as containerd ignores it,
    // and named in a warning; a known key with a value of the wrong type is an error.
    let hosts_toml = certs.path().join(&dir_name).join("hosts.toml");
    let with_ca = format!(
        "server = \"https://{host}\"\nca = \"{}\"\n",
        ca.pem_path().display()
    );
    std::fs::write(&hosts_toml, format!("{with_ca}sipk_verify = true\n")).unwrap();
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&hosts_toml.display().to_string()) && t.contains("sipk_verify"),
        "{t}"
    );
    std::fs::write(&hosts_toml, format!("{with_ca}skip_verify = \"yes\"\n")).unwrap();
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("hosts.toml") && t.contains("skip_verify"), "{t}");
}

/// A `hosts.toml` as containerd 2.1 accepts it: `dial_timeout` (which prepull honours as the
/// connect timeout for that host) and keys neither knows (ignored, each named in one warning
/// however many requests read the file).
#[tokio::test(flavor = "multi_thread")]
async fn hosts_toml_keys_containerd_accepts_work_and_dial_timeout_bounds_connecting() {
    let (containerd, upstream, dead) = tokio::join!(
        Containerd::start(),
        Registry::start(),
        DeadHost::unanswered()
    );
    let up = upstream.host();
    push_image_with(
        &upstream.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[16 * KIB, 8 * KIB]),
    )
    .await;
    let certs = tempfile::tempdir().unwrap();
    // The mirror never completes a connection: only its dial_timeout keeps the pull short
    // (prepull's default connect timeout is 30 s).
    write(
        certs.path(),
        &up,
        "hosts.toml",
        &format!(
            "server = \"http://{up}\"\nfuture_option = true\n\n[host.\"http://{}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"500ms\"\n  \
             mirror_weight = 3\n",
            dead.host()
        ),
    );
    let image = format!("{up}/team/app:v1");
    let started = std::time::Instant::now();
    let out = prepull(
        &containerd,
        &["--hosts-dir", certs.path().to_str().unwrap(), &image],
    )
    .await;
    let elapsed = started.elapsed();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        elapsed < Duration::from_secs(25),
        "dial_timeout bounds each connect to the dead mirror: took {elapsed:?}\n{t}"
    );
    assert_pulled(&containerd, &image).await;
    let file = certs.path().join(&up).join("hosts.toml");
    for key in [
        "future_option",
        &format!("host.\"http://{}\".mirror_weight", dead.host()),
    ] {
        let warnings: Vec<&str> = t.lines().filter(|l| l.contains(key)).collect();
        assert_eq!(warnings.len(), 1, "one warning for {key}: {t}");
        assert!(
            warnings[0].contains(&file.display().to_string()),
            "{}",
            warnings[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_serve_first_and_the_upstream_takes_over_when_they_cannot() {
    let (containerd, upstream, mirror) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "alice-pw")),
        Registry::start()
    );
    let up = upstream.host();
    // The upstream has both images; the mirror (a pull-through cache) only the first.
    let spec = ImageSpec::new(&[32 * KIB]);
    push_image_with(&upstream.push_target(), "team/cached", "v1", &spec).await;
    push_image_with(
        &upstream.push_target(),
        "team/uncached",
        "v1",
        &ImageSpec::new(&[16 * KIB]),
    )
    .await;
    // The mirror holds its own copy of team/cached:v1 (other random bytes), so where the image
    // came from shows in its digest.
    let mirrored = push_image(&mirror.host(), "team/cached", "v1", &spec).await;
    let mirror_proxy = Proxy::start(&mirror.host()).await;
    let up_proxy = Proxy::start(&up).await;

    let certs = tempfile::tempdir().unwrap();
    write(
        certs.path(),
        &up,
        "hosts.toml",
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            up_proxy.host(),
            mirror_proxy.host()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("config.json");
    let token = base64::engine::general_purpose::STANDARD.encode("alice:alice-pw");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{up}":{{"auth":"{token}"}}}}}}"#),
    )
    .unwrap();
    let certs_dir = certs.path().to_str().unwrap();
    let auth_file = auth.to_str().unwrap();

    // Served by the mirror, which is asked with ?ns= and never gets the upstream's credentials.
    let image = format!("{up}/team/cached:v1");
    let out = prepull(
        &containerd,
        &[
            "--hosts-dir",
            certs_dir,
            "--auth-file",
            auth_file,
            "--output",
            "json",
            &image,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let at_mirror = mirror_proxy.records();
    assert!(
        at_mirror
            .iter()
            .all(|r| r.path.contains(&format!("ns={up}"))),
        "{at_mirror:?}"
    );
    assert!(
        at_mirror.iter().all(|r| r.authorization.is_none()),
        "no upstream credentials to the mirror"
    );
    assert!(mirror_proxy.blob_bytes() > 0);
    assert_eq!(
        up_proxy.blob_bytes(),
        0,
        "nothing fetched upstream: {:?}",
        up_proxy.records()
    );
    // The image is recorded under the name pods use, whichever host served it.
    assert_eq!(result["image"], image);
    support::cri::wait_for_image(containerd.socket(), &image, Duration::from_secs(20)).await;
    assert_eq!(
        result["digest"],
        mirrored.manifest.digest.as_str(),
        "the mirror's copy"
    );

    // The mirror lacks the image: the upstream (with credentials) serves it.
    let image = format!("{up}/team/uncached:v1");
    let out = prepull(
        &containerd,
        &["--hosts-dir", certs_dir, "--auth-file", auth_file, &image],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(up_proxy.blob_bytes() > 0);
    assert!(up_proxy.records().iter().any(|r| r
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic "))));

    // The mirror is down: the upstream serves again.
    drop(mirror_proxy);
    up_proxy.clear();
    push_image_with(
        &upstream.push_target(),
        "team/later",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    let image = format!("{up}/team/later:v1");
    let out = prepull(
        &containerd,
        &["--hosts-dir", certs_dir, "--auth-file", auth_file, &image],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        up_proxy.blob_bytes() > 0,
        "the upstream served it: {:?}",
        up_proxy.records()
    );
}

/// A registry that requires client certificates, with its own CA for clients, and one image
/// pushed per `tags` entry (through the bench's plain-HTTP push side).
async fn mutual_tls_registry(tags: &[&str]) -> (Containerd, Registry, TestCa, TestCa) {
    let (server_ca, client_ca) = (TestCa::new(), TestCa::new());
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(
            RegistryOptions::default()
                .tls(&server_ca)
                .require_client_cert(&client_ca)
        )
    );
    for tag in tags {
        push_image_with(
            &registry.push_target(),
            "mtls/app",
            tag,
            &ImageSpec::new(&[64 * KIB, 16 * KIB]),
        )
        .await;
    }
    (containerd, registry, server_ca, client_ca)
}

/// The image is complete in containerd (every blob, per `ctr images check`) and CRI sees it.
async fn assert_pulled(containerd: &Containerd, reference: &str) {
    containerd.assert_image_complete(reference);
    support::cri::wait_for_image(containerd.socket(), reference, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_the_client_certificate_from_hosts_toml() {
    let (containerd, registry, server_ca, client_ca) =
        mutual_tls_registry(&["pair", "combined", "list"]).await;
    let host = registry.host();
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap();
    let dir = certs.path().join(host.replace(':', "_") + "_");
    let client = client_ca.issue_client("node-1", &dir, "client.cert", "client.key");
    std::fs::write(dir.join("client.pem"), client.combined_pem()).unwrap();
    let hosts_toml = |client: &str| {
        format!(
            "server = \"https://{host}\"\nca = \"{}\"\nclient = {client}\n",
            server_ca.pem_path().display()
        )
    };

    // A [certificate, key] pair, relative to the hosts.toml's directory.
    std::fs::write(
        dir.join("hosts.toml"),
        hosts_toml(r#"[["client.cert", "client.key"]]"#),
    )
    .unwrap();
    let reference = format!("{host}/mtls/app:pair");
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_pulled(&containerd, &reference).await;

    // One file with the certificate and its key, by absolute path.
    std::fs::write(
        dir.join("hosts.toml"),
        hosts_toml(&format!("\"{}\"", dir.join("client.pem").display())),
    )
    .unwrap();
    let reference = format!("{host}/mtls/app:combined");
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_pulled(&containerd, &reference).await;

    // A list of such files (containerd presents the one that suits the server; prepull the
    // first), given in a [host] entry for the registry itself.
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n  client = [\"client.pem\"]\n",
            server_ca.pem_path().display()
        ),
    )
    .unwrap();
    let reference = format!("{host}/mtls/app:list");
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_pulled(&containerd, &reference).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_docker_style_client_cert_and_key() {
    let (containerd, registry, server_ca, client_ca) = mutual_tls_registry(&["v1"]).await;
    let host = registry.host();
    let certs = tempfile::tempdir().unwrap();
    // <host:port>/ca.crt + client.cert + client.key, as Docker lays them out.
    write(certs.path(), &host, "ca.crt", server_ca.cert_pem());
    client_ca.issue_client(
        "node-1",
        &certs.path().join(&host),
        "client.cert",
        "client.key",
    );
    let reference = format!("{host}/mtls/app:v1");
    let out = prepull(
        &containerd,
        &["--hosts-dir", certs.path().to_str().unwrap(), &reference],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_pulled(&containerd, &reference).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_without_an_accepted_client_certificate_fails_and_says_what_to_configure() {
    let (containerd, registry, server_ca, client_ca) = mutual_tls_registry(&["v1"]).await;
    let host = registry.host();
    let reference = format!("{host}/mtls/app:v1");
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap();
    let dir = certs.path().join(&host);
    write(certs.path(), &host, "ca.crt", server_ca.cert_pem());
    let no_key_material = |t: &str, keys: &[&support::tls::ClientCert]| {
        for k in keys {
            let body: Vec<&str> = k
                .key_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect();
            assert!(
                body.iter().all(|line| !t.contains(line)),
                "key material in the output: {t}"
            );
        }
    };

    // No client certificate: the registry and the fix are named: the files to write, where.
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    let hosts_toml = dir.join("hosts.toml").display().to_string();
    assert!(
        t.contains(&format!("registry {host}"))
            && t.contains("requires a TLS client certificate and none is configured for it")
            && t.contains(&format!(
                r#"configure one as client = [["client.cert", "client.key"]] in {hosts_toml}"#
            ))
            && t.contains(&format!(
                "or put a client.cert + client.key pair (any *.cert with its *.key) in {}",
                dir.display()
            )),
        "{t}"
    );
    // The registry logs the refused handshake on its own time (after sending the alert).
    let deadline = Deadline::after(Duration::from_secs(10));
    while !std::fs::read_to_string(registry.log_path())
        .unwrap()
        .contains("client didn't provide a certificate")
    {
        assert!(
            !deadline.expired(),
            "the registry saw no certificate:\n{}",
            registry.log_tail(20)
        );
        deadline.tick().await;
    }

    // A certificate from a CA the registry does not trust is refused, and said so.
    let stranger = TestCa::new().issue_client("node-1", &dir, "client.cert", "client.key");
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("registry {host}"))
            && t.contains(&format!(
                "refused the TLS client certificate {}",
                stranger.cert_path.display()
            ))
            && t.contains("not issued by a CA the registry trusts")
            && t.contains(&hosts_toml),
        "{t}"
    );
    no_key_material(&t, &[&stranger]);

    // containerd reads each path of a list as a certificate with its key, so a certificate and
    // a key given as two paths is a mistake: the file and the fix are named.
    std::fs::remove_dir_all(&dir).unwrap();
    let good = client_ca.issue_client("node-1", &dir, "client.cert", "client.key");
    write(
        certs.path(),
        &host,
        "hosts.toml",
        &format!(
            "server = \"https://{host}\"\nca = \"{}\"\nclient = [\"client.cert\", \"client.key\"]\n",
            server_ca.pem_path().display()
        ),
    );
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&good.cert_path.display().to_string())
            && t.contains("no PEM private key")
            && t.contains(r#"client = [[""#),
        "{t}"
    );
    no_key_material(&t, &[&good]);

    // The same files as a pair work.
    write(
        certs.path(),
        &host,
        "hosts.toml",
        &format!(
            "server = \"https://{host}\"\nca = \"{}\"\nclient = [[\"client.cert\", \"client.key\"]]\n",
            server_ca.pem_path().display()
        ),
    );
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_pulled(&containerd, &reference).await;
}

/// A mirror that does not answer is asked once, then skipped while the upstream serves every
/// image of the run: it costs neither a connect timeout nor retries per request.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_mirror_is_tried_once_and_skipped_while_the_upstream_serves() {
    const IMAGES: usize = 6;
    let (containerd, upstream, closing, unanswered) = tokio::join!(
        Containerd::start(),
        Registry::start(),
        DeadHost::closing(),
        DeadHost::unanswered()
    );
    let up = upstream.host();
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let repo = format!("team/app{i}");
        push_image_with(
            &upstream.push_target(),
            &repo,
            "v1",
            &ImageSpec::new(&[8 * KIB, 4 * KIB]),
        )
        .await;
        images.push(format!("{up}/{repo}:v1"));
    }
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap();
    let mirror_of = |mirror: &DeadHost, extra: &str| {
        write(
            certs.path(),
            &up,
            "hosts.toml",
            &format!(
                "server = \"http://{up}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \
                 \"resolve\"]\n{extra}",
                mirror.host()
            ),
        );
    };
    let pull = |images: Vec<String>| {
        let containerd = &containerd;
        async move {
            let mut args = vec!["--hosts-dir", certs_dir];
            args.extend(images.iter().map(String::as_str));
            let started = std::time::Instant::now();
            let out = prepull(containerd, &args).await;
            (out, started.elapsed())
        }
    };

    // A mirror that closes every connection: counted, it is asked at most once per image (the
    // images pull concurrently, so each may ask before the first failure is known), not once
    // per request and attempt.
    mirror_of(&closing, "");
    let (out, _) = pull(images[..3].to_vec()).await;
    assert!(out.status.success(), "{}", text(&out));
    for image in &images[..3] {
        assert_pulled(&containerd, image).await;
    }
    let asked = closing.accepted();
    assert!(
        (1..=3).contains(&asked),
        "the dead mirror was asked {asked} times for 3 images\n{}",
        text(&out)
    );

    // A mirror whose connects hang (dial_timeout 2s): the run is not one timeout per request.
    mirror_of(&unanswered, "  dial_timeout = \"2s\"\n");
    let (out, elapsed) = pull(images[3..].to_vec()).await;
    assert!(out.status.success(), "{}", text(&out));
    for image in &images[3..] {
        assert_pulled(&containerd, image).await;
    }
    assert!(
        elapsed < Duration::from_secs(15),
        "one 2 s timeout per image at most, then the upstream: took {elapsed:?}\n{}",
        text(&out)
    );
}

/// Runs `prepull pull --output json` and returns the failed image's kind and error text.
async fn failure(containerd: &Containerd, args: &[&str]) -> (String, String) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = prepull(containerd, &all).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (
        result["kind"].as_str().unwrap_or_default().to_string(),
        result["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// TLS that configuration must fix (an untrusted certificate, TLS to a plain-HTTP registry, plain
/// HTTP to a TLS one) is reported as `tls` with what to configure and where, and is tried once:
/// a relay in front of each registry counts the connections.
#[tokio::test(flavor = "multi_thread")]
async fn tls_mistakes_say_what_to_fix_and_are_not_retried() {
    let ca = TestCa::new();
    let (containerd, secure, plain) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().tls(&ca)),
        Registry::start()
    );
    let spec = ImageSpec::new(&[8 * KIB]);
    push_image_with(&secure.push_target(), "team/app", "v1", &spec).await;
    push_image_with(&plain.push_target(), "team/app", "v1", &spec).await;
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap();

    // The TLS registry, its CA configured nowhere: the CA file to write, where.
    let relay = TcpRelay::start(&secure.host()).await;
    let host = relay.host();
    let image = format!("{host}/team/app:v1");
    let (kind, error) = failure(&containerd, &["--hosts-dir", certs_dir, &image]).await;
    let dir = certs.path().join(host.replace(':', "_") + "_");
    assert_eq!(kind, "tls", "{error}");
    assert!(
        error.contains(&format!("registry {host}"))
            && error.contains("not signed by a CA prepull trusts (UnknownIssuer)")
            && error.contains(&format!(
                "put the CA certificate that signed it in {} (any *.crt file there), or write \
                 ca = \"<CA certificate file>\" in {}",
                dir.join("ca.crt").display(),
                dir.join("hosts.toml").display()
            )),
        "{error}"
    );
    assert_eq!(relay.connections(), 1, "tried once: {error}");
    // That fix works.
    write(
        certs.path(),
        &dir.to_string_lossy(),
        "ca.crt",
        ca.cert_pem(),
    );
    let out = prepull(&containerd, &["--hosts-dir", certs_dir, &image]).await;
    assert!(out.status.success(), "{}", text(&out));

    // The TLS registry spoken to in plain HTTP: it answers 400; speak HTTPS.
    let (kind, error) = failure(
        &containerd,
        &["--hosts-dir", certs_dir, "--plain-http", &host, &image],
    )
    .await;
    assert_eq!(kind, "tls", "{error}");
    assert!(
        error.contains("it speaks HTTPS and prepull spoke plain HTTP")
            && error.contains(&format!("do not pass --plain-http {host}")),
        "{error}"
    );

    // A plain-HTTP registry spoken to with TLS: pass --plain-http.
    let relay = TcpRelay::start(&plain.host()).await;
    let host = relay.host();
    let image = format!("{host}/team/app:v1");
    let (kind, error) = failure(&containerd, &["--hosts-dir", certs_dir, &image]).await;
    assert_eq!(kind, "tls", "{error}");
    assert!(
        error.contains(&format!("registry {host}"))
            && error.contains("it speaks plain HTTP and prepull spoke TLS")
            && error.contains(&format!("pass --plain-http {host}")),
        "{error}"
    );
    assert_eq!(relay.connections(), 1, "tried once: {error}");
    // Named with https:// in a hosts.toml: that line is the one to change.
    write(
        certs.path(),
        &host,
        "hosts.toml",
        &format!("server = \"https://{host}\"\n"),
    );
    let (kind, error) = failure(&containerd, &["--hosts-dir", certs_dir, &image]).await;
    assert_eq!(kind, "tls", "{error}");
    assert!(
        error.contains(&format!(
            "write http://{host} instead of https://{host} in {}",
            certs.path().join(&host).join("hosts.toml").display()
        )),
        "{error}"
    );
}
