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
    for volume in ["pull-secret", "status", "certs-d", "containerd-root"] {
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
