//! `prepull agent` against a real containerd and registry: the list is mounted the way
//! Kubernetes mounts a ConfigMap (a `..data` symlink swapped on every update), the agent runs as
//! a process, and everything is checked through containerd's own records.

use testbench as support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use prepull::agent::PinOwner;
use prepull::store::Store;
use support::{push_image, Containerd, ImageSpec, KubeletVolume, Prepull, Registry};

const KIB: usize = 1024;
const PINNED: &str = "io.cri-containerd.pinned";
const LIST: &str = "list.yaml";

/// The label carrying the pins of the agent whose list is `list` (no --pin-owner given).
fn owner_label(list: &Path) -> String {
    format!("prepull.io/pinned-by.{}", PinOwner::for_list(list))
}

/// The ConfigMap volume holding the agent's `list.yaml`, under `root`.
fn list_volume(root: &Path, text: &str) -> KubeletVolume {
    KubeletVolume::new(root.join("prepull-list"), &[(LIST, text)])
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
    let what = format!("pass {passes}");
    wait_for_status(path, agent, &what, |s| {
        s["passes"].as_u64().unwrap_or(0) >= passes
    })
    .await
}

/// Waits (up to 90 s) until the status file says `what` (`done`).
async fn wait_for_status(
    path: &Path,
    agent: &mut tokio::process::Child,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = status(path);
        if done(&s) {
            return s;
        }
        let log = || std::fs::read_to_string(path.with_file_name("agent.log")).unwrap_or_default();
        if let Ok(Some(code)) = agent.try_wait() {
            panic!("the agent exited with {code} before {what}:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within 90 s; status: {s:#}\n{}",
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
    let agent = Prepull::new("agent")
        .containerd(containerd)
        .plain_http(host)
        .arg("--no-node-credentials")
        .args(["--splay", "0s", "--interval", "1h", "--log-level", "info"])
        .args(extra)
        .args((!extra.iter().any(|a| a.starts_with("--listen"))).then_some("--no-listen"))
        .arg("--list")
        .arg(list)
        .arg("--status-file")
        .arg(&status_file)
        .command()
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent");
    (agent, status_file)
}

/// Bit rot: flips one bit of a blob in containerd's content store, behind containerd's back.
fn rot(containerd: &Containerd, digest: &str) {
    let path = containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
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
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();

    // Pinned by hand beforehand: not the agent's to release.
    Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .args(["--no-node-credentials", "--pin", &other_ref])
        .success()
        .await;

    let root = tempfile::tempdir().unwrap();
    let mut list = list_volume(
        root.path(),
        &format!("images:\n  - {app_ref}\n  - image: {batch_ref}\n    pin: false\n"),
    );
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &[]);
    let pinned_for = owner_label(&list.file(LIST));

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
        assert_eq!(l.get(&pinned_for), Some(&app_ref), "{name}: {l:?}");
    }
    assert!(!labels(&store, &batch_ref).await.contains_key(PINNED));
    containerd.assert_image_complete(&app_ref);

    // The list changes: app leaves, other (pinned by hand) joins. The change alone triggers a pass.
    list.update(&[(
        LIST,
        &format!("images:\n  - {batch_ref}\n  - {other_ref}\n"),
    )]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    assert_eq!(s["warm"], 2, "{s:#}");
    assert_eq!(s["released"], 3, "the three records of app: {s:#}");
    for name in &app_names {
        let l = labels(&store, name).await;
        assert!(
            !l.contains_key(PINNED) && !l.contains_key(&pinned_for),
            "{name}: {l:?}"
        );
    }
    let l = labels(&store, &other_ref).await;
    assert_eq!(l.get(PINNED).map(String::as_str), Some("pinned"));
    assert!(
        !l.contains_key(&pinned_for),
        "a pin set by someone else stays theirs: {l:?}"
    );
    let l = labels(&store, &batch_ref).await;
    assert_eq!(
        l.get(&pinned_for),
        Some(&batch_ref),
        "batch is pinned now (the default)"
    );

    // A broken edit is reported and changes nothing; the last good list stays in force.
    list.update(&[(LIST, "images:\n  - image: [oops\n")]);
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
    let old_digest = old_batch.target.unwrap().digest.to_string();
    list.update(&[(
        LIST,
        &format!("images:\n  - {batch_ref}\n  - {other_ref}\n# moved\n"),
    )]);
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

    // SIGTERM stops an idle agent at once, and that is a clean exit.
    let pid = agent.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(10), agent.wait_with_output())
        .await
        .expect("the agent stops on SIGTERM")
        .unwrap();
    let log = std::fs::read_to_string(root.path().join("agent.log")).unwrap();
    assert_eq!(out.status.code(), Some(0), "{log}");
    // Its log went to a file: plain text, no terminal colour codes.
    assert!(log.contains("pass done") && !log.contains('\x1b'), "{log}");
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
            Prepull::new("agent")
                .args(["--once", "--containerd", &socket])
                .plain_http(&host)
                .arg("--no-node-credentials")
                .arg("--list")
                .arg(&list)
                .arg("--status-file")
                .arg(&status_file)
                .output()
                .await
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

/// An agent keeping one two-layer image warm, with `--verify-every EVERY`, after its first pass.
struct WarmApp {
    containerd: Containerd,
    _registry: Registry,
    app: support::PushedImage,
    app_ref: String,
    root: tempfile::TempDir,
    list: KubeletVolume,
    agent: tokio::process::Child,
    status_file: PathBuf,
    first: serde_json::Value,
    /// Where its endpoints are.
    addr: String,
}

impl WarmApp {
    async fn start(every: &str) -> WarmApp {
        let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
        let host = registry.host();
        let layers = ImageSpec::new(&[40 * KIB, 20 * KIB]);
        let app = push_image(&host, "team/app", "v1", &layers).await;
        let app_ref = format!("{host}/team/app:v1");
        let root = tempfile::tempdir().unwrap();
        let list = list_volume(root.path(), &format!("images:\n  - {app_ref}\n"));
        let args = ["--verify-every", every, "--listen=127.0.0.1:0"];
        let (mut agent, status_file) =
            spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &args);
        let addr = listen_address(&status_file, &mut agent).await;
        let first = wait_for_pass(&status_file, 1, &mut agent).await;
        assert_eq!(first["warm"], 1, "{first:#}");
        WarmApp {
            containerd,
            _registry: registry,
            app,
            app_ref,
            root,
            list,
            agent,
            status_file,
            first,
            addr,
        }
    }
}

/// The agent reads its images back before a pass when a check is due: a layer whose bytes rotted
/// on disk is removed and fetched again by the pass, and the status says what was wrong.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_finds_and_mends_a_corrupt_layer() {
    let WarmApp {
        containerd,
        _registry,
        app,
        app_ref,
        root: _root,
        mut list,
        mut agent,
        status_file,
        first: s,
        addr,
    } = WarmApp::start("1s").await;
    assert!(s["last_verify"].is_string(), "{s:#}");

    // Bit rot in layer 0.
    let layer = &app.layers[0];
    rot(&containerd, &layer.digest);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    list.update(&[(LIST, &format!("images:\n  - {app_ref}\n# touched\n"))]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    let image = &s["images"][0];
    assert_eq!(image["state"], "warm", "{s:#}");
    let damage = image["damage"]["problems"][0].as_str().unwrap_or_default();
    assert!(
        damage.contains(&format!("layer 0 {} is corrupt", layer.digest)),
        "{s:#}"
    );
    assert!(
        image["damage"]["mended"].is_string(),
        "mended, and says when: {s:#}"
    );
    let m = scrape(&addr).await;
    assert_eq!(
        m.value("prepull_verify_damage_total", &[("kind", "corrupt")]),
        1.0
    );
    assert_eq!(
        m.value("prepull_repairs_total", &[("result", "mended")]),
        1.0
    );
    let leases = containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]);
    assert!(
        !leases.contains("prepull-repair"),
        "the lease that protected the image while it was mended is gone: {leases}"
    );
    // The next pass (its verify finds nothing) keeps the record of the damage and its mending.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    list.update(&[(LIST, &format!("images:\n  - {app_ref}\n# again\n"))]);
    let later = wait_for_pass(&status_file, 3, &mut agent).await;
    assert_eq!(later["images"][0]["damage"], image["damage"], "{later:#}");
    assert_eq!(later["images"][0]["state"], "warm", "{later:#}");
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
    let mut list = list_volume(root.path(), &format!("images:\n  - {by_tag}\n"));
    let (mut agent, status_file) = spawn_agent(
        &containerd,
        &host,
        &list.file(LIST),
        root.path(),
        &["--verify-every", "0s"],
    );
    let pinned_for = owner_label(&list.file(LIST));
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 1, "{s:#}");

    proxy.set_hook(|_| support::Action::Respond {
        status: 503,
        body: b"down".to_vec(),
    });
    list.update(&[(LIST, &format!("images:\n  - {by_digest}\n"))]);
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
            l.get(&pinned_for),
            Some(&by_digest),
            "handed over: {name}: {l:?}"
        );
    }
}

/// Runs `prepull agent --once` on `list` and returns its output.
async fn agent_once(
    containerd: &Containerd,
    host: &str,
    list: &Path,
    extra: &[&str],
) -> std::process::Output {
    Prepull::new("agent")
        .args(["--once", "--no-node-credentials"])
        .plain_http(host)
        .containerd(containerd)
        .args(extra)
        .arg("--list")
        .arg(list)
        .output()
        .await
}

/// An empty ConfigMap value (a templating or `--from-file` accident) must not unpin the node:
/// a list with no images is refused like a broken one and the last good list stays in force,
/// unless it says `images: []`.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_without_images_is_refused_and_unpins_nothing_unless_it_says_so() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    push_image(&host, "team/app", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let app_ref = format!("{host}/team/app:v1");
    let root = tempfile::tempdir().unwrap();
    let mut list = list_volume(root.path(), &format!("images:\n  - {app_ref}\n"));
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &[]);
    let pinned_for = owner_label(&list.file(LIST));
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 1, "{s:#}");
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();

    for accident in [
        "",
        "# the list, to be filled in\n",
        "images:\n",
        "pin: true\n",
    ] {
        list.update(&[(LIST, accident)]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            let s = status(&status_file);
            if s["list_error"]
                .as_str()
                .is_some_and(|e| e.contains("images: []"))
            {
                break s;
            }
            assert!(Instant::now() < deadline, "{accident:?} not refused: {s:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(s["images"][0]["image"], app_ref.as_str(), "{s:#}");
        // Back to a good list between accidents, so each one is a change.
        list.update(&[(LIST, &format!("images:\n  - {app_ref}\n"))]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(&status_file)["list_error"].is_string() {
            assert!(Instant::now() < deadline, "good list not taken back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let l = labels(&store, &app_ref).await;
    assert_eq!(l.get(PINNED).map(String::as_str), Some("pinned"), "{l:?}");
    assert_eq!(l.get(&pinned_for), Some(&app_ref), "{l:?}");

    // Said on purpose: taken, and the pins go at the pass that follows.
    list.update(&[(LIST, "images: []\n")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status(&status_file);
        if s["images"] == serde_json::json!([]) && s["released"] == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "`images: []` not taken: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s["list_error"], serde_json::Value::Null, "{s:#}");
    let l = labels(&store, &app_ref).await;
    assert!(
        !l.contains_key(PINNED) && !l.contains_key(&pinned_for),
        "{l:?}"
    );
}

/// A bootstrap list run once and the DaemonSet's list on the same node: each agent releases only
/// the pins its own list set, an image both lists want stays pinned until both let it go, and
/// `prepull unpin` removes the ownership labels with the pin.
#[tokio::test(flavor = "multi_thread")]
async fn two_lists_on_one_node_never_release_each_others_pins() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    for repo in ["team/boot", "team/shared", "team/app"] {
        push_image(&host, repo, "v1", &ImageSpec::new(&[8 * KIB])).await;
    }
    let [boot, shared, app] =
        ["team/boot", "team/shared", "team/app"].map(|r| format!("{host}/{r}:v1"));
    let root = tempfile::tempdir().unwrap();
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();

    // Node bootstrap: one pass over its own list.
    let boot_list = root.path().join("boot.yaml");
    let bootstrap = |text: String| {
        std::fs::write(&boot_list, text).unwrap();
        async {
            let out = agent_once(
                &containerd,
                &host,
                &boot_list,
                &["--pin-owner", "bootstrap"],
            )
            .await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{stderr}");
        }
    };
    bootstrap(format!("images:\n  - {boot}\n  - {shared}\n")).await;
    let boot_label = "prepull.io/pinned-by.bootstrap";

    // The DaemonSet's agent, with another list (and the default owner, from its path).
    let mut list = list_volume(root.path(), &format!("images:\n  - {shared}\n  - {app}\n"));
    let ds_label = owner_label(&list.file(LIST));
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &[]);
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 2, "{s:#}");
    assert_eq!(s["released"], 0, "{s:#}");
    assert_eq!(
        s["pin_owner"],
        PinOwner::for_list(&list.file(LIST)).as_str()
    );
    let l = labels(&store, &boot).await;
    assert_eq!(
        l.get(PINNED).map(String::as_str),
        Some("pinned"),
        "bootstrap's pin stays: {l:?}"
    );
    assert_eq!(l.get(boot_label), Some(&boot), "{l:?}");
    assert!(!l.contains_key(&ds_label), "{l:?}");
    let l = labels(&store, &shared).await;
    assert!(
        l.contains_key(boot_label) && l.contains_key(&ds_label),
        "both own it: {l:?}"
    );

    // The DaemonSet's list drops the shared image: its share goes, bootstrap's pin stays.
    list.update(&[(LIST, &format!("images:\n  - {app}\n"))]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    assert_eq!(s["released"], 3, "{s:#}");
    let l = labels(&store, &shared).await;
    assert_eq!(l.get(PINNED).map(String::as_str), Some("pinned"), "{l:?}");
    assert!(
        l.contains_key(boot_label) && !l.contains_key(&ds_label),
        "{l:?}"
    );

    // Bootstrap's list, run again without the shared image: now the last owner lets it go.
    bootstrap(format!("images:\n  - {boot}\n")).await;
    let l = labels(&store, &shared).await;
    assert!(
        !l.contains_key(PINNED) && !l.contains_key(boot_label),
        "{l:?}"
    );
    assert!(
        labels(&store, &app).await.contains_key(PINNED),
        "the DaemonSet's own pin stays"
    );

    // `prepull unpin` takes the pin and every ownership label.
    Prepull::new("unpin")
        .containerd(&containerd)
        .arg(&boot)
        .success()
        .await;
    let l = labels(&store, &boot).await;
    assert!(
        !l.keys()
            .any(|k| k == PINNED || k.starts_with("prepull.io/pinned")),
        "{l:?}"
    );

    // An owner that cannot be a label is bad input.
    let out = agent_once(
        &containerd,
        &host,
        &boot_list,
        &["--pin-owner", "node/boot"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pin-owner"));
}

/// A containerd, and a registry behind a fault proxy holding a small `v1` of each repository.
async fn behind_a_proxy(
    repositories: &[&str],
) -> (
    Containerd,
    Registry,
    support::Proxy,
    Vec<support::PushedImage>,
) {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let proxy = support::Proxy::start(&registry.host()).await;
    let mut images = Vec::new();
    for repository in repositories {
        let spec = ImageSpec::new(&[8 * KIB]);
        images.push(push_image(&registry.host(), repository, "v1", &spec).await);
    }
    (containerd, registry, proxy, images)
}

/// "Could not re-check" is not "not warm": with the registry answering 503, an image on the node
/// is stale (usable, its digest kept, since when and why said), one that is not is failed, and a
/// one-shot pass over only present images succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn images_on_the_node_are_stale_not_failed_while_their_registry_is_down() {
    let (containerd, _registry, proxy, images) = behind_a_proxy(&["team/app", "team/new"]).await;
    let host = proxy.host();
    let app = &images[0];
    let (app_ref, new_ref) = (format!("{host}/team/app:v1"), format!("{host}/team/new:v1"));
    let root = tempfile::tempdir().unwrap();
    let mut list = list_volume(root.path(), &format!("images:\n  - {app_ref}\n"));
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &[]);
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["images"][0]["state"], "warm", "{s:#}");
    let last_warm = s["images"][0]["last_warm"].clone();
    assert!(last_warm.is_string(), "{s:#}");

    proxy.set_hook(|_| support::Action::Respond {
        status: 503,
        body: b"down for maintenance".to_vec(),
    });
    list.update(&[(LIST, &format!("images:\n  - {app_ref}\n  - {new_ref}\n"))]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    let (app_s, new_s) = (&s["images"][0], &s["images"][1]);
    assert_eq!(app_s["state"], "stale", "{s:#}");
    assert_eq!(app_s["digest"], app.manifest.digest.as_str(), "{s:#}");
    assert_eq!(app_s["kind"], "registry-unavailable", "{s:#}");
    assert!(app_s["error"].as_str().unwrap().contains("503"), "{s:#}");
    assert!(app_s["since"].is_string(), "{s:#}");
    assert_eq!(app_s["last_warm"], last_warm, "{s:#}");
    assert_eq!(new_s["state"], "failed", "{s:#}");
    assert!(new_s["digest"].is_null(), "{s:#}");
    assert_eq!(
        (
            s["warm"].as_u64(),
            s["stale"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );
    // Still down at the next pass: since when is kept.
    list.update(&[(
        LIST,
        &format!("images:\n  - {app_ref}\n  - {new_ref}\n# again\n"),
    )]);
    let s2 = wait_for_pass(&status_file, 3, &mut agent).await;
    assert_eq!(s2["images"][0]["since"], s["images"][0]["since"], "{s2:#}");
    // The stale image keeps its pin: in an outage the kubelet must not collect it.
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    assert!(labels(&store, &app_ref).await.contains_key(PINNED));

    // One pass at bootstrap with the registry down and the image already on the node: usable.
    let once_list = root.path().join("once.yaml");
    std::fs::write(&once_list, format!("images:\n  - {app_ref}\n")).unwrap();
    let out = agent_once(&containerd, &host, &once_list, &[]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("stale {app_ref} {}", app.manifest.digest)),
        "{stdout}"
    );
    assert!(stderr.contains("could not be re-checked"), "{stderr}");

    // Back up: warm again, nothing pending.
    proxy.clear_hook();
    list.update(&[(
        LIST,
        &format!("images:\n  - {app_ref}\n  - {new_ref}\n# up\n"),
    )]);
    let s = wait_for_pass(&status_file, 4, &mut agent).await;
    assert_eq!(
        (
            s["warm"].as_u64(),
            s["stale"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(2), Some(0), Some(0)),
        "{s:#}"
    );
    assert!(
        s["images"][0]["since"].is_null() && s["images"][0]["error"].is_null(),
        "{s:#}"
    );
}

/// Intervals that would hot-loop against the registries are refused before anything starts.
#[tokio::test(flavor = "multi_thread")]
async fn an_interval_below_the_floor_is_bad_input() {
    for interval in ["0s", "1s", "29s"] {
        let run = Prepull::new("agent")
            .args(["--interval", interval, "--list", "/nonexistent.yaml"])
            .command()
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("refused at once, not run")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{interval}: {stderr}");
        assert!(
            stderr.contains("--interval") && stderr.contains("at least 30s"),
            "{stderr}"
        );
    }
}

/// A layer that rotted on disk while another containerd namespace holds the same blob cannot be
/// mended here (the file is shared, and prepull leaves other namespaces' content alone): the
/// agent must say `corrupt`, naming the namespace and the fix, not call the image warm.
#[tokio::test(flavor = "multi_thread")]
async fn damage_the_node_cannot_mend_is_reported_corrupt_with_the_other_namespace() {
    let WarmApp {
        containerd,
        _registry,
        app,
        app_ref,
        root: _root,
        mut list,
        mut agent,
        status_file,
        first: _first,
        addr,
    } = WarmApp::start("8s").await;
    containerd.ctr_ok(&["-n", "default", "images", "pull", "--plain-http", &app_ref]);

    let layer = &app.layers[0];
    rot(&containerd, &layer.digest);
    tokio::time::sleep(Duration::from_millis(8100)).await;
    list.update(&[(LIST, &format!("images:\n  - {app_ref}\n# touched\n"))]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    let image = &s["images"][0];
    assert_eq!(image["state"], "corrupt", "{s:#}");
    assert_eq!(image["kind"], "corrupt", "{s:#}");
    let error = image["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("namespace default")
            && error.contains(&format!("ctr -n default content rm {}", layer.digest)),
        "{s:#}"
    );
    assert!(image["damage"]["mended"].is_null(), "{s:#}");
    assert_eq!(s["corrupt"], 1, "{s:#}");
    let m = scrape(&addr).await;
    assert_eq!(
        m.value("prepull_repairs_total", &[("result", "blocked")]),
        1.0
    );
    assert_eq!(m.value("prepull_images", &[("state", "corrupt")]), 1.0);
    let s2_verify = s["last_verify"].clone();
    // The next pass, before the next verify is due: still corrupt (the records and the bad blob
    // are still there; nothing mended it), and still saying why.
    list.update(&[(LIST, &format!("images:\n  - {app_ref}\n# again\n"))]);
    let s = wait_for_pass(&status_file, 3, &mut agent).await;
    assert!(
        s["last_verify"] == s2_verify,
        "no verify in this pass: {s:#}"
    );
    assert_eq!(s["images"][0]["state"], "corrupt", "{s:#}");
    assert!(
        s["images"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("namespace default")),
        "{s:#}"
    );
}

/// Runs `prepull status` with `args`.
async fn prepull_status(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Prepull::new("status").args(args).output().await
}

/// GETs `path` from the agent at `addr`: the status code and the body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Polls `path` until it answers `code`, returning the body.
async fn wait_for(addr: &str, path: &str, code: u16) -> String {
    wait_for_answer(addr, path, code, "").await
}

/// Polls `path` until it answers `code` with a body holding `text`, returning the body.
async fn wait_for_answer(addr: &str, path: &str, code: u16, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = get(addr, path).await;
        if got == code && body.contains(text) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got}, not {code} with {text:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An agent serving its endpoints on a port the system picked, keeping `app` and `db` warm from
/// a registry behind a fault proxy: by default one that refuses `db` (401, with a rate-limit
/// header) until told not to.
struct Serving {
    containerd: Containerd,
    _registry: Registry,
    proxy: support::Proxy,
    host: String,
    app: String,
    db: String,
    images: Vec<support::PushedImage>,
    _root: tempfile::TempDir,
    list: KubeletVolume,
    agent: tokio::process::Child,
    status_file: PathBuf,
    addr: String,
}

impl Serving {
    async fn start() -> Serving {
        Serving::start_with(|request| {
            if request.path.contains("team/db") {
                support::Action::RespondWith {
                    status: 401,
                    headers: vec![("RateLimit-Remaining".into(), "7;w=21600".into())],
                    body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
                }
            } else {
                support::Action::Forward
            }
        })
        .await
    }

    /// With `hook` deciding what the proxy does from the agent's first request.
    async fn start_with(
        hook: impl Fn(&support::proxy::RequestInfo) -> support::Action + Send + Sync + 'static,
    ) -> Serving {
        let (containerd, registry, proxy, images) = behind_a_proxy(&["team/app", "team/db"]).await;
        let host = proxy.host();
        let (app, db) = (format!("{host}/team/app:v1"), format!("{host}/team/db:v1"));
        proxy.set_hook(hook);
        let root = tempfile::tempdir().unwrap();
        let list = list_volume(root.path(), &format!("images:\n  - {app}\n  - {db}\n"));
        let (mut agent, status_file) = spawn_agent(
            &containerd,
            &host,
            &list.file(LIST),
            root.path(),
            &["--listen=127.0.0.1:0"],
        );
        let addr = listen_address(&status_file, &mut agent).await;
        Serving {
            containerd,
            _registry: registry,
            proxy,
            host,
            app,
            db,
            images,
            _root: root,
            list,
            agent,
            status_file,
            addr,
        }
    }
}

/// The endpoints: `/warmz` says 503 and why until every listed image is warm, then 200, and 503
/// again (naming the image) when an image is removed behind the agent's back; `/readyz` stays
/// 200 while a registry is down (one registry must not hold up a rollout); `/status` is the
/// status.
#[tokio::test(flavor = "multi_thread")]
async fn warmth_and_readiness_endpoints_tell_the_truth() {
    let Serving {
        containerd,
        proxy,
        app,
        db,
        mut list,
        mut agent,
        status_file,
        addr,
        _registry,
        _root,
        images: _,
        host: _,
    } = Serving::start().await;
    wait_for_pass(&status_file, 1, &mut agent).await;

    let why = wait_for(&addr, "/warmz", 503).await;
    assert!(
        why.contains(&format!("1 of 2 not warm: {db} (failed, unauthorized)")),
        "{why}"
    );
    assert_eq!(
        get(&addr, "/readyz").await.0,
        200,
        "a failing registry is not unreadiness"
    );
    assert_eq!(get(&addr, "/livez").await.0, 200);
    let (code, body) = get(&addr, "/status").await;
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(served["images"][1]["kind"], "unauthorized", "{served:#}");

    // A person's view of the same, from the status file: exit 1, the failure and why.
    let out = prepull_status(&["--status-file".as_ref(), status_file.as_os_str()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let db_row = stdout.lines().find(|l| l.contains(&db)).unwrap_or_default();
    assert!(
        db_row.starts_with("failed") && db_row.contains("unauthorized"),
        "{stdout}"
    );

    // The credentials are fixed: the next pass makes the node warm.
    proxy.set_hook(|_| support::Action::Forward);
    list.update(&[(LIST, &format!("images:\n  - {app}\n  - {db}\n# fixed\n"))]);
    wait_for_pass(&status_file, 2, &mut agent).await;
    let body = wait_for(&addr, "/warmz", 200).await;
    assert!(body.contains("all 2 listed images warm"), "{body}");
    // From the endpoint, with what CRI (the kubelet's view) says: present and pinned.
    let from = format!("http://{addr}/status");
    let out = prepull_status(&[
        "--from".as_ref(),
        from.as_ref(),
        "--cri".as_ref(),
        "--containerd".as_ref(),
        containerd.socket().as_os_str(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // containerd reports the pin through CRI from 1.6.22 / 1.7.3 (Debian's 1.6.20 predates it).
    let seen = match containerd.series() >= support::containerd::Series::V1_7 {
        true => "present,pinned",
        false => "present",
    };
    for image in [&app, &db] {
        let row = stdout
            .lines()
            .find(|l| l.contains(image.as_str()))
            .unwrap_or_default();
        assert!(
            row.starts_with("warm") && row.contains(&format!(" {seen} ")),
            "{stdout}"
        );
    }

    // Removed behind the agent's back (no pass in between): not warm any more, named.
    containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &app]);
    let why = wait_for(&addr, "/warmz", 503).await;
    assert!(
        why.contains(&format!("{app} (gone from the node)")),
        "{why}"
    );
    assert_eq!(get(&addr, "/readyz").await.0, 200);

    // The registry is down altogether: still ready; db stays warm (stale counts: it is usable).
    proxy.set_hook(|_| support::Action::Respond {
        status: 503,
        body: b"down".to_vec(),
    });
    list.update(&[(LIST, &format!("images:\n  - {db}\n"))]);
    wait_for_pass(&status_file, 3, &mut agent).await;
    let s = status(&status_file);
    assert_eq!(s["images"][0]["state"], "stale", "{s:#}");
    assert_eq!(
        wait_for(&addr, "/warmz", 200).await.trim(),
        "all 1 listed images warm"
    );
    assert_eq!(get(&addr, "/readyz").await.0, 200);
    assert_eq!(get(&addr, "/nope").await.0, 404);
}

/// Each image's outcome is published as its pull ends, not when the whole pass does: while the
/// registry answers one image's manifest with 429 and a long `Retry-After`, the other image is
/// already warm in the status file, in `/warmz` and in the metrics, the pass still under way;
/// the held-up image is reported once its own pull ends, with the pass.
#[tokio::test(flavor = "multi_thread")]
async fn each_image_is_reported_as_its_pull_ends_while_the_pass_goes_on() {
    // Every try at db's manifest waits 40 s: its pull holds the pass for two minutes.
    let Serving {
        proxy,
        app,
        db,
        mut agent,
        status_file,
        addr,
        containerd: _containerd,
        _registry,
        _root,
        list: _list,
        images: _,
        host: _,
    } = Serving::start_with(
        |request| match request.path.contains("/team/db/manifests/") {
            true => support::Action::RespondWith {
                status: 429,
                headers: vec![("Retry-After".into(), "40".into())],
                body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
            },
            false => support::Action::Forward,
        },
    )
    .await;

    let s = wait_for_status(&status_file, &mut agent, "app warm", |s| {
        s["images"][0]["state"] == "warm"
    })
    .await;
    assert_eq!(s["pass_under_way"]["number"], 1, "pass 1 goes on: {s:#}");
    assert_eq!(s["passes"], 0, "{s:#}");
    assert!(s["last_pass"].is_null(), "{s:#}");
    assert_eq!(s["images"][0]["pass"], 1, "app's state is pass 1's: {s:#}");
    assert!(s["images"][0]["digest"].is_string(), "{s:#}");
    assert_eq!(s["images"][1]["state"], "missing", "{s:#}");
    assert!(s["images"][1]["pass"].is_null(), "not checked yet: {s:#}");
    assert_eq!(
        (s["warm"].as_u64(), s["missing"].as_u64()),
        (Some(1), Some(1))
    );
    // The endpoints say the same while the pass goes on.
    let why = wait_for_answer(&addr, "/warmz", 503, "1 of 2 not warm").await;
    assert!(why.contains(&format!("{db} (missing)")), "{why}");
    assert!(!why.contains(&app), "{why}");
    let m = scrape(&addr).await;
    assert_eq!(m.value("prepull_passes_total", &[]), 0.0, "pass 1 goes on");
    assert_eq!(m.value("prepull_image_warm", &[("image", &app)]), 1.0);
    assert_eq!(m.value("prepull_image_warm", &[("image", &db)]), 0.0);
    assert_eq!(m.value("prepull_images", &[("state", "warm")]), 1.0);
    let out = prepull_status(&["--status-file".as_ref(), status_file.as_os_str()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pass 1 under way since")
            && stdout.contains("1 of 2 images checked by it so far"),
        "{stdout}"
    );
    let s = status(&status_file);
    assert_eq!(s["pass_under_way"]["number"], 1, "pass 1 goes on: {s:#}");

    // The registry lets db through: its next try ends the pass, both warm.
    proxy.clear_hook();
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert!(s["pass_under_way"].is_null(), "{s:#}");
    assert_eq!(s["warm"], 2, "{s:#}");
    assert_eq!(s["images"][1]["pass"], 1, "{s:#}");
    assert!(s["last_success"].is_string(), "{s:#}");
    let body = wait_for(&addr, "/warmz", 200).await;
    assert!(body.contains("all 2 listed images warm"), "{body}");
}

/// SIGTERM while a large image is downloading: the agent lets the pass run for --stop-grace,
/// then exits 0; a second signal stops it at once (130). Either way the next start resumes the
/// download from what containerd already holds, not from the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_pull_is_clean_and_the_next_start_resumes() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let proxy = support::Proxy::start(&registry.host()).await;
    let host = proxy.host();
    const LAYER: usize = 4 << 20;
    let app = push_image(
        &registry.host(),
        "team/big",
        "v1",
        &ImageSpec::new(&[LAYER]),
    )
    .await;
    let app_ref = format!("{host}/team/big:v1");
    // Slow enough that no pass finishes while the test signals.
    proxy.set_hook(|request| match request.path.contains("/blobs/") {
        true => support::Action::Shape(support::Shape {
            bytes_per_sec: Some(256 << 10),
            cut_after: None,
        }),
        false => support::Action::Forward,
    });
    let root = tempfile::tempdir().unwrap();
    let list = list_volume(root.path(), &format!("images:\n  - {app_ref}\n"));
    let layer_bytes = || {
        proxy
            .records()
            .iter()
            .filter(|r| r.path.contains(&app.layers[0].digest))
            .map(|r| r.response_body_bytes)
            .sum::<u64>()
    };
    let downloading = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while layer_bytes() < 256 << 10 {
            assert!(
                Instant::now() < deadline,
                "the layer never started downloading"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let term = |agent: &tokio::process::Child| unsafe {
        libc::kill(agent.id().unwrap() as i32, libc::SIGTERM);
    };

    // One signal: the pass gets its grace period, then a clean exit.
    let (mut agent, _) = spawn_agent(
        &containerd,
        &host,
        &list.file(LIST),
        root.path(),
        &["--stop-grace", "2s"],
    );
    downloading().await;
    let signalled = Instant::now();
    term(&agent);
    let code = tokio::time::timeout(Duration::from_secs(15), agent.wait())
        .await
        .expect("the agent stops within its grace period")
        .unwrap();
    let log = std::fs::read_to_string(root.path().join("agent.log")).unwrap();
    assert_eq!(code.code(), Some(0), "{log}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the pass had its grace period"
    );
    assert!(
        log.contains("did not finish within the grace period"),
        "{log}"
    );

    // Two signals: stops at once.
    let (mut agent, _) = spawn_agent(
        &containerd,
        &host,
        &list.file(LIST),
        root.path(),
        &["--stop-grace", "60s"],
    );
    let before = layer_bytes();
    while layer_bytes() < before + (128 << 10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    term(&agent);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.try_wait().unwrap().is_none(),
        "one signal: the pass goes on"
    );
    let signalled = Instant::now();
    term(&agent);
    let code = tokio::time::timeout(Duration::from_secs(5), agent.wait())
        .await
        .expect("a second signal stops the agent at once")
        .unwrap();
    assert_eq!(code.code(), Some(130));
    assert!(signalled.elapsed() < Duration::from_secs(5));

    // The next start, at full speed, fetches only what containerd does not hold yet.
    proxy.clear_hook();
    let fetched_before = layer_bytes();
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &[]);
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 1, "{s:#}");
    let fetched_now = layer_bytes() - fetched_before;
    assert!(
        fetched_now < LAYER as u64,
        "resumed: fetched {fetched_now} of {LAYER} bytes after two interrupted starts"
    );
    containerd.assert_image_complete(&app_ref);
}

/// `prepull check`, node-problem-detector's contract: 0 when every listed image is on the node
/// (no registry asked), 1 naming what is not, 2 when it cannot tell.
#[tokio::test(flavor = "multi_thread")]
async fn check_says_whether_the_node_is_warm_with_npd_exit_codes() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    for repo in ["team/app", "team/db"] {
        push_image(&host, repo, "v1", &ImageSpec::new(&[8 * KIB])).await;
    }
    let (app, db) = (format!("{host}/team/app:v1"), format!("{host}/team/db:v1"));
    let root = tempfile::tempdir().unwrap();
    let list = root.path().join("list.yaml");
    std::fs::write(&list, format!("images:\n  - {app}\n  - {db}\n")).unwrap();
    let check = |list: PathBuf, socket: PathBuf| async move {
        let out = support::Prepull::new("check")
            .arg("--list")
            .arg(list)
            .arg("--containerd")
            .arg(socket)
            .output()
            .await;
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let socket = containerd.socket().to_path_buf();

    let (code, line) = check(list.clone(), socket.clone()).await;
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!(
            "2 of 2 listed images are not on the node: {app}, {db}"
        )),
        "{line}"
    );

    let out = agent_once(&containerd, &host, &list, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    // The registry is gone: the check needs none.
    drop(registry);
    let (code, line) = check(list.clone(), socket.clone()).await;
    assert_eq!(
        (code, line.trim()),
        (Some(0), "ok: all 2 listed images are on the node")
    );

    // An image removed behind the agent's back: not ready to start, named.
    containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &db]);
    let (code, line) = check(list.clone(), socket.clone()).await;
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!("1 of 2 listed images are not on the node: {db}")),
        "{line}"
    );

    // Cannot tell: an unusable list, or no containerd.
    let bad = root.path().join("bad.yaml");
    std::fs::write(&bad, "images:\n").unwrap();
    let (code, line) = check(bad, socket).await;
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("unknown:") && line.contains("bad.yaml"),
        "{line}"
    );
    let (code, line) = check(list, root.path().join("no.sock")).await;
    assert_eq!(code, Some(2), "{line}");
}

/// Where the agent serves its endpoints: it listens on a port the system picks and says which
/// in its status.
async fn listen_address(status_file: &Path, agent: &mut tokio::process::Child) -> String {
    let s = wait_for_pass(status_file, 0, agent).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = s;
    while s["listen"].is_null() {
        assert!(Instant::now() < deadline, "no listen address: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status(status_file);
    }
    s["listen"].as_str().unwrap().to_string()
}

async fn scrape(addr: &str) -> support::Scrape {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    support::Scrape::parse(&response.text().await.unwrap())
}

/// `/metrics`, read by Prometheus's own parser: images by state before and after a pass, each
/// listed image's warmth and digest, a failure counted under its kind, bytes downloaded equal to
/// the image's size, registry requests by code and the rate-limit headroom, pins, free space,
/// and a list that cannot be used.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_tell_an_operator_what_the_node_holds_and_what_failed() {
    let Serving {
        proxy,
        host,
        app,
        db,
        images,
        mut list,
        mut agent,
        status_file,
        addr,
        _registry,
        _root,
        containerd: _containerd,
    } = Serving::start().await;
    let s = wait_for_pass(&status_file, 1, &mut agent).await;

    let m = scrape(&addr).await;
    let state = |m: &support::Scrape, state: &str| m.value("prepull_images", &[("state", state)]);
    assert_eq!((state(&m, "warm"), state(&m, "failed")), (1.0, 1.0));
    assert_eq!(state(&m, "missing"), 0.0);
    assert_eq!(m.value("prepull_image_warm", &[("image", &app)]), 1.0);
    assert_eq!(m.value("prepull_image_warm", &[("image", &db)]), 0.0);
    let digest = s["images"][0]["digest"].as_str().unwrap();
    assert_eq!(digest, images[0].manifest.digest);
    assert_eq!(
        m.value(
            "prepull_image_digest_info",
            &[("image", &app), ("digest", digest)]
        ),
        1.0
    );
    assert_eq!(m.get("prepull_image_digest_info", &[("image", &db)]), None);
    let failed = [("result", "failed"), ("kind", "unauthorized")];
    assert_eq!(m.value("prepull_pulls_total", &failed), 1.0);
    let pulled = [("result", "pulled"), ("kind", "none")];
    assert_eq!(m.value("prepull_pulls_total", &pulled), 1.0);
    let size = images[0].config.size + images[0].layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(
        m.value("prepull_downloaded_bytes_total", &[("registry", &host)]),
        size as f64,
        "bytes downloaded are the image's config and layers"
    );
    let refused = [("registry", host.as_str()), ("code", "401")];
    assert!(m.value("prepull_registry_requests_total", &refused) >= 1.0);
    let ok = [
        ("registry", host.as_str()),
        ("method", "HEAD"),
        ("code", "200"),
    ];
    assert!(m.value("prepull_registry_requests_total", &ok) >= 1.0);
    let headroom = [("registry", host.as_str())];
    assert_eq!(
        m.value("prepull_registry_rate_limit_remaining", &headroom),
        7.0
    );
    assert_eq!(m.value("prepull_pinned_images", &[]), 1.0);
    assert_eq!(m.value("prepull_pinned_bytes", &[]), size as f64);
    assert!(m.value("prepull_containerd_filesystem_size_bytes", &[]) > 0.0);
    assert!(m.value("prepull_containerd_filesystem_free_bytes", &[]) > 0.0);
    assert_eq!(m.value("prepull_passes_total", &[]), 1.0);
    assert_eq!(m.value("prepull_list_valid", &[]), 1.0);
    assert!(m.value("prepull_last_pass_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(m.get("prepull_last_success_timestamp_seconds", &[]), None);
    let histogram = [("result", "failed"), ("le", "+Inf")];
    assert_eq!(
        m.value("prepull_pull_duration_seconds_bucket", &histogram),
        1.0
    );
    assert_eq!(m.types["prepull_pulls"], "counter");
    assert_eq!(m.types["prepull_pull_duration_seconds"], "histogram");
    assert_eq!(m.types["prepull_build"], "info");
    // Every metric served is documented for operators.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/README.md"));
    let docs = docs.unwrap();
    for sample in &m.samples {
        let name = ["_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| sample.name.strip_suffix(suffix))
            .filter(|base| m.types.get(*base).is_some_and(|t| t == "histogram"))
            .unwrap_or(&sample.name);
        assert!(
            docs.contains(&format!("| `{name}` |")),
            "{name} is not in deploy/README.md's metrics table"
        );
    }

    // The credentials are fixed: after the next pass both are warm, the node last succeeded now.
    proxy.set_hook(|_| support::Action::Forward);
    list.update(&[(LIST, &format!("images:\n  - {app}\n  - {db}\n# fixed\n"))]);
    wait_for_pass(&status_file, 2, &mut agent).await;
    let m = scrape(&addr).await;
    assert_eq!((state(&m, "warm"), state(&m, "failed")), (2.0, 0.0));
    assert_eq!(m.value("prepull_image_warm", &[("image", &db)]), 1.0);
    assert_eq!(m.value("prepull_pulls_total", &pulled), 2.0);
    let warm = [("result", "warm"), ("kind", "none")];
    assert_eq!(m.value("prepull_pulls_total", &warm), 1.0, "app was warm");
    assert_eq!(m.value("prepull_pinned_images", &[]), 2.0);
    assert!(m.value("prepull_last_success_timestamp_seconds", &[]) > 1.7e9);

    // A list that cannot be used: counted, and the metric says the one in force is not the file.
    list.update(&[(LIST, "images:\n")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&status_file)["list_error"].is_null() {
        assert!(Instant::now() < deadline, "the bad list was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = scrape(&addr).await;
    assert_eq!(m.value("prepull_list_valid", &[]), 0.0);
    assert_eq!(m.value("prepull_list_load_errors_total", &[]), 1.0);
    assert_eq!(state(&m, "warm"), 2.0, "the last good list stays in force");
}

/// A runnable busybox image, `team/app:v1` on `host`, and its reference.
async fn runnable_app(host: &str) -> (support::PushedImage, String) {
    let layer = tokio::task::spawn_blocking(support::busybox::busybox_layer)
        .await
        .unwrap();
    let cmd = ["/bin/sh", "-c", "true"];
    let app = support::busybox::push_runnable(host, "team/app", "v1", &[&layer], &cmd).await;
    (app, format!("{host}/team/app:v1"))
}

/// A listed image whose binary was emptied on disk (as a power loss leaves a file being
/// unpacked): the next pass says a pod cannot start from it and why, and /warmz and
/// prepull_image_warm stop counting it as warm.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_whose_command_cannot_start_is_not_warm() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let (app, app_ref) = runnable_app(&host).await;
    let root = tempfile::tempdir().unwrap();
    let mut list = list_volume(root.path(), &format!("images:\n  - {app_ref}\n"));
    // No deep check: it would find the emptied file first and unpack it again.
    let args = ["--listen=127.0.0.1:0", "--deep-verify-every", "0s"];
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &args);
    let addr = listen_address(&status_file, &mut agent).await;
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 1, "{s:#}");
    assert!(s["images"][0]["start_error"].is_null(), "{s:#}");
    assert_eq!(get(&addr, "/warmz").await.0, 200);

    let dir = support::snapshots::top_layer_dir(&containerd, &app.diff_ids).await;
    std::fs::File::create(dir.join("bin/busybox")).unwrap();
    list.update(&[(LIST, &format!("images:\n  - {app_ref}\n# again\n"))]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    let image = &s["images"][0];
    assert_eq!(image["start_kind"], "empty", "{s:#}");
    assert!(
        image["start_error"].as_str().unwrap().contains("/bin/sh"),
        "{s:#}"
    );
    let why = wait_for(&addr, "/warmz", 503).await;
    assert!(
        why.contains(&format!("{app_ref} (cannot start: empty)")),
        "{why}"
    );
    let m = scrape(&addr).await;
    assert_eq!(m.value("prepull_image_warm", &[("image", &app_ref)]), 0.0);
}

/// The agent's scheduled deep check: a listed image's unpacked files are compared with its
/// layers (its record then says when, and in which boot), and a binary emptied on disk is found
/// and unpacked again from the local blobs by the next pass, the status saying what was found
/// and when it was mended.
#[tokio::test(flavor = "multi_thread")]
async fn the_deep_check_finds_and_mends_an_emptied_file() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let (app, app_ref) = runnable_app(&host).await;
    let root = tempfile::tempdir().unwrap();
    let list = list_volume(root.path(), &format!("images:\n  - {app_ref}\n"));
    let args = ["--deep-verify-every", "1s", "--listen=127.0.0.1:0"];
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &args);
    let addr = listen_address(&status_file, &mut agent).await;
    wait_for_pass(&status_file, 1, &mut agent).await;
    // The check runs beside the passes: once the image is on the node, it is checked and that
    // is recorded on its image record.
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let checked = labels(&store, &app_ref).await;
        if checked
            .get("prepull.io/deep-verified")
            .is_some_and(|v| v.starts_with(boot.trim()))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never deep-checked: {checked:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A power loss empties the binary pods run. The check finds it within its period, mends
    // it, and the pass it then asks for reports it, without a list change.
    let dir = support::snapshots::top_layer_dir(&containerd, &app.diff_ids).await;
    std::fs::File::create(dir.join("bin/busybox")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = status(&status_file);
        if s["images"][0]["damage"]["mended"].is_string() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the damage was never reported: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let image = &s["images"][0];
    assert_eq!(image["state"], "warm", "{s:#}");
    let problems = image["damage"]["problems"].to_string();
    assert!(problems.contains("bin/busybox"), "{s:#}");
    assert!(image["damage"]["mended"].is_string(), "{s:#}");
    assert!(image["start_error"].is_null(), "{s:#}");
    let dir = support::snapshots::top_layer_dir(&containerd, &app.diff_ids).await;
    let size = std::fs::metadata(dir.join("bin/busybox")).unwrap().len();
    assert_eq!(size, std::fs::metadata("/bin/busybox").unwrap().len());
    let m = scrape(&addr).await;
    let found: f64 = m
        .samples
        .iter()
        .filter(|s| {
            s.name == "prepull_verify_damage_total"
                && s.labels
                    .get("kind")
                    .is_some_and(|k| k.starts_with("snapshot_"))
        })
        .map(|s| s.value)
        .sum();
    assert!(found >= 1.0, "{:?}", m.samples);
}

/// `expect:` holds a tag to a digest: the index's or the node's platform manifest's is
/// accepted; a tag moved elsewhere is refused before a blob is fetched, reported as such, and
/// the node keeps the image it held (stale, pinned) until the list says otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_resolving_to_another_digest_than_expected_is_refused_and_the_node_keeps_its_image() {
    let (containerd, registry, proxy, images) = behind_a_proxy(&["team/app"]).await;
    let host = proxy.host();
    let app = &images[0];
    let index = support::push_index(
        &registry.host(),
        "team/multi",
        "v1",
        support::MediaFamily::Oci,
        &[
            ImageSpec::new(&[8 * KIB]).platform(support::busybox::node_platform()),
            ImageSpec::new(&[8 * KIB]).platform(support::Platform::linux_arm64()),
        ],
        false,
    )
    .await;
    let (app_ref, multi_ref) = (
        format!("{host}/team/app:v1"),
        format!("{host}/team/multi:v1"),
    );
    let list_text = |app_digest: &str| {
        format!(
            "images:\n  - image: {app_ref}\n    expect: {app_digest}\n  - image: {multi_ref}\n    \
             expect: {}\n",
            index.images[0].manifest.digest
        )
    };
    let root = tempfile::tempdir().unwrap();
    let mut list = list_volume(root.path(), &list_text(&app.manifest.digest));
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &[]);
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(
        (s["warm"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(0)),
        "the top digest and the platform manifest's both satisfy `expect:`: {s:#}"
    );

    // The tag moves upstream; the list still expects the old digest.
    let moved = push_image(
        &registry.host(),
        "team/app",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    proxy.clear();
    list.update(&[(
        LIST,
        &format!("{}# again\n", list_text(&app.manifest.digest)),
    )]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    let app_s = &s["images"][0];
    assert_eq!(app_s["state"], "stale", "{s:#}");
    assert_eq!(app_s["kind"], "unexpected-digest", "{s:#}");
    assert_eq!(app_s["digest"], app.manifest.digest.as_str(), "{s:#}");
    let error = app_s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&moved.manifest.digest)
            && error.contains(&format!("expects {}", app.manifest.digest)),
        "the error names both digests: {error}"
    );
    assert_eq!(proxy.blob_bytes(), 0, "no blob of the moved tag is fetched");
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let held = store
        .image(&app_ref)
        .await
        .unwrap()
        .expect("the record is kept");
    assert_eq!(
        held.target.map(|t| t.digest.to_string()),
        Some(app.manifest.digest.clone())
    );
    assert!(labels(&store, &app_ref).await.contains_key(PINNED));

    // The operator accepts the move: the node follows.
    list.update(&[(LIST, &list_text(&moved.manifest.digest))]);
    let s = wait_for_pass(&status_file, 3, &mut agent).await;
    assert_eq!(s["images"][0]["state"], "warm", "{s:#}");
    assert_eq!(s["images"][0]["digest"], moved.manifest.digest.as_str());
}

/// Pinned images are invisible to the kubelet's image GC, which frees down to its low threshold:
/// the agent pins only while the node's pinned images stay within that share of containerd's
/// filesystem (read from the kubelet's config), keeps the rest unpinned with the reason, and
/// exports the budget.
#[tokio::test(flavor = "multi_thread")]
async fn images_past_the_kubelets_gc_threshold_are_kept_unpinned_and_say_why() {
    const MIB: usize = 1 << 20;
    let (containerd, registry) = tokio::join!(
        Containerd::start_with(support::ContainerdOptions {
            root_tmpfs_bytes: Some(256 * MIB as u64),
            ..Default::default()
        }),
        Registry::start()
    );
    let host = registry.host();
    let mut refs = Vec::new();
    for app in ["a", "b", "c"] {
        let spec = ImageSpec::new(&[16 * MIB]).gzip_level(0);
        push_image(&host, &format!("big/{app}"), "v1", &spec).await;
        refs.push(format!("{host}/big/{app}:v1"));
    }
    let root = tempfile::tempdir().unwrap();
    // Half of 256 MiB: two images of 16 MiB (48 MiB each, unpacked at twice) fit, not a third.
    let kubelet_config = root.path().join("kubelet-config.yaml");
    std::fs::write(
        &kubelet_config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         imageGCHighThresholdPercent: 60\nimageGCLowThresholdPercent: 50\n",
    )
    .unwrap();
    let list = list_volume(
        root.path(),
        &format!(
            "images:\n{}",
            refs.iter()
                .map(|r| format!("  - {r}\n"))
                .collect::<String>()
        ),
    );
    let kubelet_config = kubelet_config.to_string_lossy().into_owned();
    let containerd_root = containerd.root().to_string_lossy().into_owned();
    let (mut agent, status_file) = spawn_agent(
        &containerd,
        &host,
        &list.file(LIST),
        root.path(),
        &[
            "--kubelet-config",
            &kubelet_config,
            "--containerd-root",
            &containerd_root,
            "--min-free-space",
            "8MiB",
            "--images-at-once",
            "1",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let s = wait_for_pass(&status_file, 1, &mut agent).await;
    assert_eq!(s["warm"], 3, "all three are on the node: {s:#}");
    let budget = &s["pin_budget"];
    assert_eq!(budget["percent"], 50, "{s:#}");
    assert!(
        budget["source"]
            .as_str()
            .is_some_and(|t| t.contains("imageGCLowThresholdPercent in")),
        "{s:#}"
    );
    let (limit, pinned) = (
        budget["budget_bytes"].as_u64().unwrap(),
        budget["pinned_bytes"].as_u64().unwrap(),
    );
    assert!(pinned <= limit && pinned >= 2 * 48 * MIB as u64, "{s:#}");

    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let mut pinned_images = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        if labels(&store, r).await.contains_key(PINNED) {
            pinned_images.push(i);
        }
    }
    assert_eq!(pinned_images, [0, 1], "the first two in list order: {s:#}");
    let why = s["images"][2]["unpinned"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("not pinned") && why.contains("imageGCLowThresholdPercent"),
        "{why}"
    );
    assert!(s["images"][0]["unpinned"].is_null(), "{s:#}");

    let addr = listen_address(&status_file, &mut agent).await;
    let m = scrape(&addr).await;
    assert_eq!(m.value("prepull_pin_budget_bytes", &[]), limit as f64);
    assert_eq!(m.value("prepull_pinned_node_bytes", &[]), pinned as f64);
    assert_eq!(m.value("prepull_images_unpinned_over_budget", &[]), 1.0);
}

/// The deep check reads at its own rate in a task of its own: a pass does not wait for it, so
/// a list change is followed while a slow check of a large image is still reading.
#[tokio::test(flavor = "multi_thread")]
async fn passes_do_not_wait_for_a_slow_deep_check() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    push_image(
        &host,
        "deep/big",
        "v1",
        &ImageSpec::new(&[8 << 20]).gzip_level(0),
    )
    .await;
    let small = format!("{host}/deep/small:v1");
    push_image(&host, "deep/small", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let big_ref = format!("{host}/deep/big:v1");
    let root = tempfile::tempdir().unwrap();
    let mut list = list_volume(root.path(), &format!("images:\n  - {big_ref}\n"));
    // 8 MiB of layer and as much of files at 256 KiB/s: a check of about a minute.
    let args = ["--deep-verify-every", "1s", "--deep-verify-rate", "256KiB"];
    let (mut agent, status_file) =
        spawn_agent(&containerd, &host, &list.file(LIST), root.path(), &args);
    wait_for_pass(&status_file, 1, &mut agent).await;
    // Give the check time to start on the big image.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let changed = Instant::now();
    list.update(&[(LIST, &format!("images:\n  - {big_ref}\n  - {small}\n"))]);
    let s = wait_for_pass(&status_file, 2, &mut agent).await;
    assert_eq!(s["warm"], 2, "{s:#}");
    assert!(
        changed.elapsed() < Duration::from_secs(20),
        "the pass waited {:?} for the deep check",
        changed.elapsed()
    );
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    assert!(
        !labels(&store, &big_ref)
            .await
            .contains_key("prepull.io/deep-verified"),
        "the check of the big image is still reading: the pass did not wait for it"
    );
}
