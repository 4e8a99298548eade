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

/// Maps a path inside the container to where this test put it.
fn remap(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

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
        if flag == "--splay" {
            run_args.push("--splay=0s".into());
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

/// The DaemonSet's pod played on a real node, as close as this machine gets without a cluster:
/// the agent's own image (scripts/build-image.sh) pushed to a registry and pre-pulled with
/// prepull, then started through CRI with the DaemonSet's arguments, volume mounts (the list as
/// a ConfigMap volume, the optional pull secret absent, containerd's run directory and root,
/// certs.d) and security context (root without capabilities, a read-only root filesystem, no
/// privilege escalation). Inside it the agent warms its list against the node's containerd,
/// answers its probes, follows a list edit, and stops cleanly on SIGTERM. Two arguments differ
/// from the manifest: the port is one the system picks (the node's network is shared with the
/// rest of this machine) and the free-space reserve is 64 MiB (this machine's disk is not a
/// node's); the splay is 0 so the first pass starts at once.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemonset_pod_runs_from_its_image_with_its_own_spec() {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/image")
        .join(concat!("prepull-", env!("CARGO_PKG_VERSION"), ".oci.tar"));
    let docs = manifests();
    let pod_spec = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];
    let security = &container["securityContext"];

    // The registry holds the agent's image, a pause image and the listed images.
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
    let spec = ImageSpec::new(&[8 * 1024]);
    push_image(&host, "team/app", "v1", &spec).await;
    push_image(&host, "team/db", "v1", &spec).await;
    let (app, db) = (format!("{host}/team/app:v1"), format!("{host}/team/db:v1"));
    let containerd = Containerd::start_with(support::ContainerdOptions {
        sandbox_image: Some(pause.clone()),
        ..Default::default()
    })
    .await;
    // The node pre-pulls the agent's image (and its sandbox image) with prepull itself.
    for image in [&pause, &agent_image] {
        support::Prepull::new("pull")
            .containerd(&containerd)
            .plain_http(&host)
            .arg(image)
            .success()
            .await;
    }

    // The volumes, laid out as the kubelet lays them out. certs.d names the registry (plain
    // HTTP, on the node's loopback: reachable because the pod shares the node's network).
    let root = tempfile::tempdir().unwrap();
    let mut list = KubeletVolume::new(
        root.path().join("list"),
        &[("list.yaml", &format!("images:\n  - {app}\n"))],
    );
    let certs = root.path().join("certs.d");
    registry.write_hosts_toml(&certs);
    for dir in ["pull-secret", "status"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let host_path = |volume: &str| -> PathBuf {
        match volume {
            "containerd-run" => containerd.socket().parent().unwrap().to_path_buf(),
            "containerd-content" => containerd.root().join("io.containerd.content.v1.content"),
            "certs-d" => certs.clone(),
            "list" => list.dir().to_path_buf(),
            other => root.path().join(other),
        }
    };
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
    let spec = support::pod::ContainerSpec {
        name: "prepull".into(),
        image: agent_image.clone(),
        args,
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
    };
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
    let wait_for_warm = |warm: u64| {
        let status_file = status_file.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let status: serde_json::Value = std::fs::read(&status_file)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if status["warm"].as_u64() == Some(warm) {
                    return Ok(status);
                }
                if Instant::now() > deadline {
                    return Err(status);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let status = wait_for_warm(1).await.unwrap_or_else(|s| {
        panic!(
            "the agent in its pod did not warm the list: {s:#}\n{}",
            log()
        )
    });
    assert_eq!(status["images"][0]["image"], app.as_str());

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
    list.update(&[("list.yaml", &format!("images:\n  - {app}\n  - {db}\n"))]);
    wait_for_warm(2)
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
