//! `prepull agent` against a real containerd and registry: the list is mounted the way
//! Kubernetes mounts a ConfigMap (a `..data` symlink swapped on every update), the agent runs as
//! a process, and everything is checked through containerd's own records.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use prepull::store::Store;
use support::{push_image, Containerd, ImageSpec, Registry};

const KIB: usize = 1024;
const PINNED: &str = "io.cri-containerd.pinned";
const PINNED_FOR: &str = "prepull.io/pinned-for";

/// A ConfigMap volume holding `list.yaml`, updated the way the kubelet updates it.
struct ListVolume {
    dir: PathBuf,
    version: u32,
}

impl ListVolume {
    fn new(root: &Path, text: &str) -> ListVolume {
        let dir = root.join("prepull-list");
        std::fs::create_dir(&dir).unwrap();
        let mut volume = ListVolume { dir, version: 0 };
        volume.update(text);
        std::os::unix::fs::symlink("..data/list.yaml", volume.file()).unwrap();
        volume
    }

    fn file(&self) -> PathBuf {
        self.dir.join("list.yaml")
    }

    fn update(&mut self, text: &str) {
        self.version += 1;
        let name = format!("..2026_11_22_12_00_{:02}.{}", self.version, self.version);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("list.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn status(path: &Path) -> serde_json::Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the status file reports at least `passes` passes.
async fn wait_for_pass(
    path: &Path,
    passes: u64,
    agent: &mut tokio::process::Child,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(path);
        if s["passes"].as_u64().unwrap_or(0) >= passes {
            return s;
        }
        let log = || std::fs::read_to_string(path.with_file_name("agent.log")).unwrap_or_default();
        if let Ok(Some(code)) = agent.try_wait() {
            panic!(
                "the agent exited with {code} before pass {passes}:\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no pass {passes} within 90 s; status: {s:#}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `prepull agent` on `list` for `containerd`, pulling from `host` over plain HTTP, with
/// no splay, an hour between passes, `extra` arguments, its status in `dir/status.json` and its
/// log in `dir/agent.log`.
fn spawn_agent(
    containerd: &Containerd,
    host: &str,
    list: &Path,
    dir: &Path,
    extra: &[&str],
) -> (tokio::process::Child, PathBuf) {
    let status_file = dir.join("status.json");
    let agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
        .arg("agent")
        .arg("--containerd")
        .arg(containerd.socket())
        .args(["--plain-http", host, "--no-node-credentials"])
        .args(["--splay", "0s", "--interval", "1h", "--log-level", "info"])
        .args(extra)
        .arg("--list")
        .arg(list)
        .arg("--status-file")
        .arg(&status_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent");
    (agent, status_file)
}

async fn labels(store: &Store, name: &str) -> std::collections::HashMap<String, String> {
    store
        .image(name)
        .await
        .expect("Images.Get")
        .unwrap_or_else(|| panic!("no image record {name}"))
        .labels
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_keeps_its_list_warm_pinned_and_releases_what_leaves() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let app = push_image(&host, "team/app", "v1", &ImageSpec::new(&[24 * KIB])).await;
    push_image(&host, "team/batch", "v1", &ImageSpec::new(&[16 * KIB])).await;
    push_image(&host, "team/other", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let (app_ref, batch_ref, other_ref) = (
        format!("{host}/team/app:v1"),
        format!("{host}/team/batch:v1"),
        format!("{host}/team/other:v1"),
    );
    let socket = containerd.socket().to_str().unwrap().to_string();
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();

    // Pinned by hand beforehand: not the agent's to release.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
        .args([
            "pull",
            "--containerd",
            &socket,
            "--plain-http",
            &host,
            "--no-node-credentials",
            "--pin",
            &other_ref,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let root = tempfile::tempdir().unwrap();
    let mut list = ListVolume::new(
        root.path(),
        &format!("images:\n  - {app_ref}\n  - image: {batch_ref}\n    pin: false\n"),
    );
    let (mut agent, status_file) = spawn_agent(&containerd, &host, &list.file(), root.path(), &[]);

    // Pass 1: both warm; app pinned and marked as the agent's pin, batch not pinned.
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 2, "{s:#}");
    assert_eq!(s["images"][0]["state"], "warm");
    assert_eq!(s["images"][0]["digest"], app.manifest.digest.as_str());
    let app_names = [
        app_ref.clone(),
        format!("{host}/team/app@{}", app.manifest.digest),
        app.config.digest.clone(),
    ];
    for name in &app_names {
        let l = labels(&store, name).await;
        assert_eq!(
            l.get(PINNED).map(String::as_str),
            Some("pinned"),
            "{name}: {l:?}"
        );
        assert_eq!(l.get(PINNED_FOR), Some(&app_ref), "{name}: {l:?}");
    }
    assert!(!labels(&store, &batch_ref).await.contains_key(PINNED));
    containerd.assert_image_complete(&app_ref);

    // The list changes: app leaves, other (pinned by hand) joins. The change alone triggers a pass.
    list.update(&format!("images:\n  - {batch_ref}\n  - {other_ref}\n"));
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    assert_eq!(s["warm"], 2, "{s:#}");
    assert_eq!(s["released"], 3, "the three records of app: {s:#}");
    for name in &app_names {
        let l = labels(&store, name).await;
        assert!(
            !l.contains_key(PINNED) && !l.contains_key(PINNED_FOR),
            "{name}: {l:?}"
        );
    }
    let l = labels(&store, &other_ref).await;
    assert_eq!(l.get(PINNED).map(String::as_str), Some("pinned"));
    assert!(
        !l.contains_key(PINNED_FOR),
        "a pin set by someone else stays theirs: {l:?}"
    );
    let l = labels(&store, &batch_ref).await;
    assert_eq!(
        l.get(PINNED_FOR),
        Some(&batch_ref),
        "batch is pinned now (the default)"
    );

    // A broken edit is reported and changes nothing; the last good list stays in force.
    list.update("images:\n  - image: [oops\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status(&status_file);
        if s["list_error"].is_string() {
            break s;
        }
        assert!(Instant::now() < deadline, "no list error reported: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        s["list_error"].as_str().unwrap().contains("list.yaml"),
        "the error names the file: {s:#}"
    );
    assert_eq!(
        labels(&store, &batch_ref)
            .await
            .get(PINNED)
            .map(String::as_str),
        Some("pinned")
    );

    // The tag moves: the new image is pinned, the old image's records are released.
    let moved = push_image(&host, "team/batch", "v1", &ImageSpec::new(&[12 * KIB])).await;
    let old_batch = store.image(&batch_ref).await.unwrap().unwrap();
    let old_digest = old_batch.target.unwrap().digest;
    list.update(&format!(
        "images:\n  - {batch_ref}\n  - {other_ref}\n# moved\n"
    ));
    let s = wait_for_pass(&status_file, 3, &mut agent).await;
    assert_eq!(s["list_error"], serde_json::Value::Null, "{s:#}");
    assert_eq!(
        s["images"][0]["digest"],
        moved.manifest.digest.as_str(),
        "{s:#}"
    );
    let l = labels(&store, &batch_ref).await;
    assert_eq!(l.get(PINNED).map(String::as_str), Some("pinned"));
    assert!(
        !labels(&store, &format!("{host}/team/batch@{old_digest}"))
            .await
            .contains_key(PINNED),
        "the old image is no longer pinned"
    );
    assert!(labels(
        &store,
        &format!("{host}/team/batch@{}", moved.manifest.digest)
    )
    .await
    .contains_key(PINNED));

    // SIGTERM ends the agent.
    let pid = agent.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(20), agent.wait_with_output())
        .await
        .expect("the agent stops on SIGTERM")
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_pass_reports_what_is_warm_and_why_the_rest_is_not() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    push_image(&host, "team/app", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let root = tempfile::tempdir().unwrap();
    let list = root.path().join("list.yaml");
    std::fs::write(
        &list,
        format!("pin: false\nimages:\n  - {host}/team/app:v1\n  - {host}/team/missing:v1\n"),
    )
    .unwrap();
    let status_file = root.path().join("status.json");
    let socket = containerd.socket().to_str().unwrap().to_string();
    let run = |list: &Path| {
        let list = list.to_path_buf();
        let (socket, host, status_file) = (socket.clone(), host.clone(), status_file.clone());
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
                .args([
                    "agent",
                    "--once",
                    "--containerd",
                    &socket,
                    "--plain-http",
                    &host,
                ])
                .arg("--no-node-credentials")
                .arg("--list")
                .arg(&list)
                .arg("--status-file")
                .arg(&status_file)
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(&list).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("warm {host}/team/app:v1 sha256:")),
        "{stdout}"
    );
    assert!(
        stderr.contains("team/missing") && stderr.contains("404"),
        "{stderr}"
    );
    let s = status(&status_file);
    assert_eq!(
        (s["warm"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s:#}"
    );
    assert_eq!(s["images"][1]["state"], "failed");
    assert_eq!(s["images"][1]["kind"], "not-found", "{s:#}");

    // A bad list is bad input: exit 2, naming the file and the entry.
    let bad = root.path().join("bad.yaml");
    std::fs::write(&bad, "images:\n  - ok:1\n  - \"Not An Image\"\n").unwrap();
    let out = run(&bad).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("images[1]"),
        "{stderr}"
    );
}

/// The agent reads its images back before a pass when a check is due: a layer whose bytes rotted
/// on disk is removed and fetched again by the pass, and the status says what was wrong.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_finds_and_mends_a_corrupt_layer() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let app = push_image(
        &host,
        "team/app",
        "v1",
        &ImageSpec::new(&[40 * KIB, 20 * KIB]),
    )
    .await;
    let app_ref = format!("{host}/team/app:v1");
    let root = tempfile::tempdir().unwrap();
    let mut list = ListVolume::new(root.path(), &format!("images:\n  - {app_ref}\n"));
    let (mut agent, status_file) = spawn_agent(
        &containerd,
        &host,
        &list.file(),
        root.path(),
        &["--verify-every", "1s"],
    );
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 1, "{s:#}");
    assert!(s["last_verify"].is_string(), "{s:#}");

    // Bit rot in layer 0.
    let layer = &app.layers[0];
    let path = containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(layer.digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    list.update(&format!("images:\n  - {app_ref}\n# touched\n"));
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    let image = &s["images"][0];
    assert_eq!(image["state"], "warm", "{s:#}");
    let damage = image["damage"][0].as_str().unwrap_or_default();
    assert!(
        damage.contains(&format!("layer 0 {} is corrupt", layer.digest)),
        "{s:#}"
    );
    assert_eq!(
        image["bytes_fetched"], layer.size,
        "only the bad layer was fetched: {s:#}"
    );
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    match store
        .hash_blob(&layer.digest.parse().unwrap())
        .await
        .unwrap()
    {
        prepull::store::Stored::Read { digest, .. } => assert_eq!(digest.to_string(), layer.digest),
        other => panic!("{other:?}"),
    }
}

/// An entry rewritten from a tag to the digest it points at, during a registry outage: a
/// digest entry whose content is on the node needs no registry at all, and the image's pins
/// stay (handed over to the new entry), since it is exactly in an outage that the kubelet must
/// not collect the image.
#[tokio::test(flavor = "multi_thread")]
async fn pins_are_handed_over_not_dropped_when_an_entry_is_rewritten_during_an_outage() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let proxy = support::Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let app = push_image(
        &registry.host(),
        "team/app",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    let by_tag = format!("{host}/team/app:v1");
    let by_digest = format!("{host}/team/app@{}", app.manifest.digest);
    let root = tempfile::tempdir().unwrap();
    let mut list = ListVolume::new(root.path(), &format!("images:\n  - {by_tag}\n"));
    let (mut agent, status_file) = spawn_agent(
        &containerd,
        &host,
        &list.file(),
        root.path(),
        &["--verify-every", "0s"],
    );
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 1, "{s:#}");

    proxy.set_hook(|_| support::Action::Respond {
        status: 503,
        body: b"down".to_vec(),
    });
    list.update(&format!("images:\n  - {by_digest}\n"));
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    assert_eq!(s["warm"], 1, "warm from the node's own content: {s:#}");
    assert_eq!(s["images"][0]["bytes_fetched"], 0, "{s:#}");
    assert_eq!(s["released"], 0, "{s:#}");
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    // Every record of the image, the old tag's included (it names the same image).
    for name in [&by_tag, &by_digest, &app.config.digest] {
        let l = labels(&store, name).await;
        assert_eq!(
            l.get(PINNED).map(String::as_str),
            Some("pinned"),
            "{name}: {l:?}"
        );
        assert_eq!(
            l.get(PINNED_FOR),
            Some(&by_digest),
            "handed over: {name}: {l:?}"
        );
    }
}
