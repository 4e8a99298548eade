//! `deploy/prepull.yaml` as shipped: its list parses, and the DaemonSet's own arguments run the
//! agent against a real containerd and registry, with every volume the manifest mounts laid out
//! the way the kubelet lays it out (the optional pull secret absent, as on a fresh cluster).

use testbench as support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml_ng::Value;
use support::{push_image, Containerd, ImageSpec, KubeletVolume, Registry};

fn manifests() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prepull.yaml"))
        .expect("read deploy/prepull.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("each document is YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("deploy/prepull.yaml has a {kind}"))
}

#[test]
fn the_shipped_list_is_valid() {
    let docs = manifests();
    let list = find(&docs, "ConfigMap")["data"]["list.yaml"]
        .as_str()
        .expect("the ConfigMap has list.yaml");
    let parsed = prepull::agent::List::parse(list).expect("the example list parses");
    assert!(!parsed.entries.is_empty());
}

/// The name of the node the tests play: what the downward API hands the agent as `NODE_NAME`.
const NODE: &str = "worker-a1.cluster.internal";

/// The container's environment as the kubelet resolves it on [`NODE`]. The manifest may set one
/// variable only, `NODE_NAME` from the downward API's `spec.nodeName`: anything else would be
/// something this test does not pass on.
fn resolved_env(container: &Value) -> Vec<(String, String)> {
    let env = container["env"]
        .as_sequence()
        .unwrap_or_else(|| panic!("the agent's container sets env: {:?}", container["env"]));
    assert_eq!(
        env.len(),
        1,
        "the agent's container sets only NODE_NAME: {env:?}"
    );
    assert_eq!(env[0]["name"], "NODE_NAME", "{env:?}");
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "NODE_NAME comes from the downward API: {env:?}"
    );
    assert!(env[0]["value"].is_null(), "{env:?}");
    vec![("NODE_NAME".to_string(), NODE.to_string())]
}

/// Maps a path inside the container to where this test put it.
fn remap(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The splay the manifest's agent runs with here (the first pass comes within it).
const SPLAY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn the_daemonset_arguments_run_the_agent() {
    let docs = manifests();
    let daemonset = find(&docs, "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect();
    assert_eq!(args[0], "agent");
    let mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|(n, _)| n == volume)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("volume {volume} is mounted"))
    };

    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(&host, "team/app", "v1", &ImageSpec::new(&[8 * 1024])).await;
    let root = tempfile::tempdir().unwrap();
    // The ConfigMap volume, the empty optional secret, the status emptyDir, certs.d.
    KubeletVolume::new(
        remap(root.path(), &mount_of("list")),
        &[("list.yaml", &format!("images:\n  - {host}/team/app:v1\n"))],
    );
    for volume in ["pull-secret", "status", "certs-d"] {
        std::fs::create_dir_all(remap(root.path(), &mount_of(volume))).unwrap();
    }
    let run_mount = mount_of("containerd-run");

    // The manifest's arguments, with in-container paths mapped to this test's directories.
    let mut run_args: Vec<String> = Vec::new();
    let mut status_file = None;
    let mut listen = false;
    for arg in &args {
        let Some((flag, value)) = arg.split_once('=') else {
            run_args.push(arg.clone());
            continue;
        };
        let value = if flag == "--containerd" {
            assert!(
                Path::new(value).starts_with(&run_mount),
                "the socket {value} is inside the mounted {run_mount}"
            );
            containerd.socket().to_str().unwrap().to_string()
        } else if value.starts_with('/') {
            remap(root.path(), value).to_str().unwrap().to_string()
        } else {
            value.to_string()
        };
        if flag == "--status-file" {
            status_file = Some(PathBuf::from(&value));
        }
        if flag == "--listen" {
            // A port the system picks; the status says which.
            listen = true;
            run_args.push("--listen=127.0.0.1:0".to_string());
            continue;
        }
        // A short splay: the first pass comes within it, at the node's slot.
        if flag == "--splay" {
            run_args.push(format!("--splay={}s", SPLAY.as_secs()));
            continue;
        }
        // The test's containerd lives on this machine's disk, however full it is.
        if flag == "--min-free-space" {
            run_args.push("--min-free-space=64MiB".into());
            continue;
        }
        run_args.push(format!("{flag}={value}"));
    }
    run_args.push(format!("--plain-http={host}"));
    let status_file = status_file.expect("the DaemonSet writes a status file");
    let mut agent = support::run::command()
        .args(&run_args)
        .envs(resolved_env(container))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.path().join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent");
    let log = || std::fs::read_to_string(root.path().join("agent.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let status: serde_json::Value = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if status["passes"].as_u64().unwrap_or(0) >= 1 {
            break status;
        }
        if let Ok(Some(code)) = agent.try_wait() {
            panic!(
                "the agent exited with {code} (args {run_args:?}):\n{}",
                log()
            );
        }
        assert!(Instant::now() < deadline, "no pass within 90 s:\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["warm"], 1, "{status:#}\n{}", log());
    assert_eq!(
        status["images"][0]["digest"],
        image.manifest.digest.as_str()
    );
    // The node's name reached the agent, and set its slot in the splay window.
    assert_eq!(status["node_name"], NODE, "{status:#}");
    let slot = prepull::agent::schedule::Slot::for_node(NODE).offset(SPLAY);
    let shown = status["slot_seconds"]
        .as_f64()
        .expect("the status shows the slot");
    assert!(
        (shown - slot.as_secs_f64()).abs() < 0.001,
        "slot {shown} s, expected {slot:?}"
    );
    // JSON logs, as configured, and the missing optional secret was reported, not fatal.
    let first = log().lines().next().unwrap_or_default().to_string();
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_ok(),
        "log lines are JSON: {first}"
    );
    assert!(log().contains("pull-secret"), "{}", log());

    // The probes the manifest declares answer, on the port it names, and the node is warm.
    assert!(listen, "the DaemonSet serves its endpoints");
    let listen = status["listen"].as_str().expect("the status says where");
    let mut paths: Vec<String> = ["livenessProbe", "readinessProbe"]
        .iter()
        .map(|probe| {
            let get = &container[*probe]["httpGet"];
            assert_eq!(get["port"], "http", "{probe} uses the named port");
            get["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(container["ports"][0]["containerPort"], 9471);
    paths.push("/warmz".into());
    for path in paths {
        let response = reqwest::get(format!("http://{listen}{path}"))
            .await
            .unwrap();
        let code = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(code, 200, "{path}: {body}\n{}", log());
    }
}

/// A node ready for the DaemonSet's pod: a plain-HTTP registry holding the agent's image
/// (scripts/build-image.sh) and a sandbox image, and a containerd that pre-pulled both with
/// prepull itself.
struct Node {
    registry: Registry,
    containerd: Containerd,
    agent_image: String,
}

impl Node {
    async fn start() -> Node {
        let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/image")
            .join(concat!("prepull-", env!("CARGO_PKG_VERSION"), ".oci.tar"));
        assert!(
            archive.exists(),
            "{} is missing: run scripts/build-image.sh first",
            archive.display()
        );
        let registry = Registry::start().await;
        let host = registry.host();
        let layer = tokio::task::spawn_blocking(support::busybox::busybox_layer)
            .await
            .unwrap();
        let pause = format!("{host}/node/pause:1");
        support::busybox::push_runnable(
            &host,
            "node/pause",
            "1",
            &[&layer],
            &["/bin/busybox", "sleep", "3600"],
        )
        .await;
        let agent_image = format!("{host}/prepull:test");
        support::oci_archive::push_oci_archive(&host, "prepull", "test", &archive).await;
        let containerd = Containerd::start_with(support::ContainerdOptions {
            sandbox_image: Some(pause.clone()),
            ..Default::default()
        })
        .await;
        for image in [&pause, &agent_image] {
            support::Prepull::new("pull")
                .containerd(&containerd)
                .plain_http(&host)
                .arg(image)
                .success()
                .await;
        }
        Node {
            registry,
            containerd,
            agent_image,
        }
    }
}

/// The container the kubelet creates from `container` (the DaemonSet's, as YAML) running
/// `image`: its arguments, its volume mounts (each volume's host path from `host_path`) and its
/// security context. Two arguments differ from the manifest: the port is one the system picks
/// (the node's network is shared with the rest of this machine) and the free-space reserve is
/// 64 MiB (this machine's disk is not a node's); the splay is 0 so the first pass starts at once.
/// Its environment is the manifest's, resolved on [`NODE`].
fn container_spec(
    container: &Value,
    image: &str,
    host_path: impl Fn(&str) -> PathBuf,
) -> support::pod::ContainerSpec {
    let security = &container["securityContext"];
    let mounts = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let read_only = m["readOnly"].as_bool().unwrap_or(false);
            (
                host_path(name),
                m["mountPath"].as_str().unwrap().to_string(),
                read_only,
            )
        })
        .collect();
    let args = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .map(|a| match a.split_once('=').map(|(flag, _)| flag) {
            Some("--listen") => "--listen=127.0.0.1:0".to_string(),
            Some("--splay") => "--splay=0s".to_string(),
            Some("--min-free-space") => "--min-free-space=64MiB".to_string(),
            _ => a,
        })
        .collect();
    support::pod::ContainerSpec {
        name: "prepull".into(),
        image: image.into(),
        args,
        envs: resolved_env(container),
        mounts,
        run_as_user: security["runAsUser"].as_i64(),
        read_only_root: security["readOnlyRootFilesystem"].as_bool() == Some(true),
        drop_all_capabilities: security["capabilities"]["drop"][0].as_str() == Some("ALL"),
        no_new_privileges: security["allowPrivilegeEscalation"].as_bool() == Some(false),
        seccomp_runtime_default: security["seccompProfile"]["type"].as_str()
            == Some("RuntimeDefault"),
        cpu_limit_millis: container["resources"]["limits"]["cpu"]
            .as_str()
            .and_then(|c| c.strip_suffix('m'))
            .and_then(|m| m.parse().ok()),
    }
}

/// Polls the agent's status file until `done` holds, for up to 90 s; the last status either way.
async fn wait_for_status(
    status_file: &Path,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status: serde_json::Value = std::fs::read(status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The DaemonSet's pod played on a real node, as close as this machine gets without a cluster:
/// the agent's own image (scripts/build-image.sh) pushed to a registry and pre-pulled with
/// prepull, then started through CRI with the DaemonSet's arguments, volume mounts (the list as
/// a ConfigMap volume, the optional pull secret absent, containerd's run directory and root,
/// certs.d) and security context (root without capabilities, a read-only root filesystem, no
/// privilege escalation). Inside it the agent warms its list against the node's containerd
/// (one image only through a mirror on the node's loopback, which the pod reaches because it
/// shares the node's network: why the DaemonSet sets `hostNetwork`), answers its probes,
/// follows a list edit, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemonset_pod_runs_from_its_image_with_its_own_spec() {
    let docs = manifests();
    let pod_spec = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];

    // The registry holds the agent's image, a pause image and the listed images.
    let Node {
        registry,
        containerd,
        agent_image,
    } = Node::start().await;
    let host = registry.host();
    let spec = ImageSpec::new(&[8 * 1024]);
    push_image(&host, "team/app", "v1", &spec).await;
    push_image(&host, "team/db", "v1", &spec).await;
    let (app, db) = (format!("{host}/team/app:v1"), format!("{host}/team/db:v1"));
    // An image whose registry the node reaches only through a mirror on its own loopback (as
    // a node-local P2P mirror such as Spegel serves it): `.invalid` never resolves.
    let mirrored = "upstream.invalid/team/app:v1".to_string();

    // The volumes, laid out as the kubelet lays them out. certs.d names the registry (plain
    // HTTP, on the node's loopback: reachable because the pod shares the node's network) and
    // the loopback mirror of upstream.invalid.
    let root = tempfile::tempdir().unwrap();
    let mut list = KubeletVolume::new(
        root.path().join("list"),
        &[(
            "list.yaml",
            &format!("images:\n  - {app}\n  - {mirrored}\n"),
        )],
    );
    let certs = root.path().join("certs.d");
    registry.write_hosts_toml(&certs);
    std::fs::create_dir_all(certs.join("upstream.invalid")).unwrap();
    std::fs::write(
        certs.join("upstream.invalid/hosts.toml"),
        format!(
            "server = \"https://upstream.invalid\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    for dir in ["pull-secret", "status"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let spec = container_spec(container, &agent_image, |volume| match volume {
        "containerd-run" => containerd.socket().parent().unwrap().to_path_buf(),
        "containerd-content" => containerd.root().join("io.containerd.content.v1.content"),
        "certs-d" => certs.clone(),
        "list" => list.dir().to_path_buf(),
        other => root.path().join(other),
    });
    assert!(
        spec.read_only_root
            && spec.drop_all_capabilities
            && spec.no_new_privileges
            && spec.seccomp_runtime_default
            && spec.cpu_limit_millis.is_some(),
        "the DaemonSet's container is locked down: {spec:?}"
    );
    // Its containerd mounts are read-only, and containerd's root is not mounted whole.
    for (_, path, read_only) in &spec.mounts {
        if path.starts_with("/run/containerd") || path.starts_with("/var/lib/containerd") {
            assert!(read_only, "{path} is mounted read-only");
        }
        assert_ne!(
            path, "/var/lib/containerd",
            "containerd's whole root is not mounted"
        );
    }

    let logs = tempfile::tempdir().unwrap();
    let mut pod = support::pod::Pod::run(&containerd, "prepull", logs.path()).await;
    let id = pod.create_with(&spec).await.expect("CreateContainer");
    pod.start(&id).await.expect("StartContainer");
    let log_file = pod.log("prepull");
    let log = || support::process::log_tail(&log_file, 30);
    let status_file = root.path().join("status/status.json");
    let warm = |n: u64| move |s: &serde_json::Value| s["warm"].as_u64() == Some(n);
    let status = wait_for_status(&status_file, warm(2))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "the agent in its pod did not warm the list (the second image only through the mirror on the node's loopback): {s:#}\n{}",
                log()
            )
        });
    assert_eq!(status["images"][0]["image"], app.as_str());
    assert_eq!(status["images"][1]["image"], mirrored.as_str());
    assert_eq!(
        status["node_name"], NODE,
        "the pod's NODE_NAME reached the agent"
    );
    assert!(
        support::cri::image_status(containerd.socket(), &mirrored)
            .await
            .is_some(),
        "CRI knows the mirrored image by its upstream name"
    );

    // Its probes answer from inside the pod, on the node's network.
    let listen = status["listen"]
        .as_str()
        .expect("the status says where it listens");
    for path in ["/livez", "/readyz", "/warmz"] {
        let response = reqwest::get(format!("http://{listen}{path}"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}\n{}", log());
    }

    // A list edit reaches the pod through the ConfigMap volume's symlink swap.
    list.update(&[(
        "list.yaml",
        &format!("images:\n  - {app}\n  - {mirrored}\n  - {db}\n"),
    )]);
    wait_for_status(&status_file, warm(3))
        .await
        .unwrap_or_else(|s| panic!("the agent did not follow the list edit: {s:#}\n{}", log()));
    let store = prepull::store::Store::connect(containerd.socket(), "k8s.io")
        .await
        .unwrap();
    let record = store.image(&db).await.unwrap().expect("db's record");
    assert_eq!(
        record
            .labels
            .get("io.cri-containerd.pinned")
            .map(String::as_str),
        Some("pinned")
    );

    // SIGTERM, as the kubelet stops the pod: a clean exit within the grace period.
    pod.stop(&id, 30).await;
    let stopped = pod.status(&id).await;
    assert_eq!(stopped.exit_code, 0, "{stopped:?}\n{}", log());
    pod.remove().await;
}

/// deploy/ with `components` as `kubectl kustomize` renders it (kubectl from the virtualenv
/// scripts/setup.sh makes, as scripts/validate-deploy.sh runs it).
fn rendered(components: &[&str]) -> Vec<Value> {
    let tools = std::env::var("PREPULL_DEPLOY_TOOLS")
        .unwrap_or_else(|_| "/var/cache/prepull-test/deploy-tools".into());
    let kubectl = Path::new(&tools).join("bin/kubectl");
    assert!(
        kubectl.exists(),
        "{} is missing: run scripts/setup.sh",
        kubectl.display()
    );
    // kustomize takes relative paths only, so the kustomization lives inside the repository.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/deploy-test")
        .join(format!("{}-{}", components.join("+"), std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut kustomization = "resources: [../../../deploy]\n".to_string();
    if !components.is_empty() {
        kustomization.push_str("components:\n");
    }
    for component in components {
        kustomization.push_str(&format!("  - ../../../deploy/components/{component}\n"));
    }
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
    let output = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    serde_yaml_ng::Deserializer::from_slice(&output.stdout)
        .map(|d| Value::deserialize(d).expect("each document is YAML"))
        .collect()
}

/// A registry whose certificate is signed by a CA installed on the node only (in the node's CA
/// bundle, as update-ca-certificates puts it there; neither public nor in certs.d): the agent
/// in its pod trusts it through the node-ca-bundle component's mount of the node's
/// certificates, as containerd on that node does.
#[tokio::test(flavor = "multi_thread")]
async fn the_pod_trusts_a_registry_signed_by_a_ca_installed_on_the_node() {
    let docs = rendered(&["node-ca-bundle"]);
    let daemonset = find(&docs, "DaemonSet");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let node = Node::start().await;

    let ca = support::TestCa::new();
    let private = Registry::start_with(support::RegistryOptions::default().tls(&ca)).await;
    let pushed = support::image::push_image_with(
        &private.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[8 * 1024]),
    )
    .await;
    let app = format!("{}/team/app:v1", private.host());
    // Not trusted by the public roots: without the node's bundle, TLS to it fails.
    let public_only = reqwest::Client::builder().no_proxy().build().unwrap();
    let refused = public_only
        .get(format!("{}/v2/", private.url()))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "the registry's CA must not be publicly trusted: {refused:?}"
    );

    // The node: its CA bundle is the system's plus the private CA; certs.d names the registry
    // (HTTPS, no CA of its own).
    let root = tempfile::tempdir().unwrap();
    let node_certs = root.path().join("node-etc-ssl-certs");
    std::fs::create_dir_all(&node_certs).unwrap();
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    std::fs::write(
        node_certs.join("ca-certificates.crt"),
        format!("{system}{}", ca.cert_pem()),
    )
    .unwrap();
    let certs = root.path().join("certs.d");
    let hosts = certs.join(private.host());
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"{}\"\n", private.url()),
    )
    .unwrap();
    let list = KubeletVolume::new(
        root.path().join("list"),
        &[("list.yaml", &format!("images:\n  - {app}\n"))],
    );
    for dir in ["pull-secret", "status"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let containerd = &node.containerd;
    let spec = container_spec(container, &node.agent_image, |volume| match volume {
        "containerd-run" => containerd.socket().parent().unwrap().to_path_buf(),
        "containerd-content" => containerd.root().join("io.containerd.content.v1.content"),
        "certs-d" => certs.clone(),
        "list" => list.dir().to_path_buf(),
        "node-ca" => node_certs.clone(),
        other => root.path().join(other),
    });
    assert!(
        spec.mounts
            .iter()
            .any(|(host, _, read_only)| host == &node_certs && *read_only),
        "the component mounts the node's certificates read-only: {:?}",
        spec.mounts
    );

    let logs = tempfile::tempdir().unwrap();
    let mut pod = support::pod::Pod::run(containerd, "prepull-node-ca", logs.path()).await;
    let id = pod.create_with(&spec).await.expect("CreateContainer");
    pod.start(&id).await.expect("StartContainer");
    let log_file = pod.log("prepull");
    let log = || support::process::log_tail(&log_file, 30);
    let status = wait_for_status(&root.path().join("status/status.json"), |s| {
        s["passes"].as_u64().unwrap_or(0) >= 1
    })
    .await
    .unwrap_or_else(|s| panic!("no pass in the pod: {s:#}\n{}", log()));
    assert_eq!(
        status["warm"],
        1,
        "the registry signed by the node's CA works from the pod: {status:#}\n{}",
        log()
    );
    assert_eq!(
        status["images"][0]["digest"],
        pushed.manifest.digest.as_str()
    );
    pod.remove().await;
}
