//! Faults a node lives through, against a real containerd and a real registry: containerd
//! killed mid-pull and brought back as systemd would, prepull killed with `kill -9`, a disk that
//! fills, records half written, and what the agent's status says after it was killed mid-pass.

use testbench as support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use prepull::pull::lease;
use prepull::store::Store;
use serde_json::Value;
use support::disk::{fill_until, free_bytes, used_bytes};
use support::process::Deadline;
use support::{
    push_image, text, Action, Containerd, ContainerdOptions, ImageSpec, Prepull, Proxy, Registry,
    Shape,
};

const MIB: usize = 1 << 20;

/// How long systemd's containerd unit waits before starting it again after a crash.
const RESTART_SEC: Duration = Duration::from_secs(5);

async fn store(containerd: &Containerd) -> Store {
    Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect to containerd")
}

/// `prepull pull --output json IMAGE` from `host`, not yet run.
fn pull(containerd: &Containerd, host: &str, image: &str) -> Prepull {
    Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .args(["--no-node-credentials", "--output", "json", image])
}

/// A proxy in front of `registry` that serves the blob `digest` at `bytes_per_sec`.
async fn slow_proxy(registry: &Registry, digest: &str, bytes_per_sec: u64) -> Proxy {
    let proxy = Proxy::start(&registry.host()).await;
    let slow = digest.to_string();
    proxy.set_hook(move |req| {
        if req.path.ends_with(&slow) {
            Action::Shape(Shape {
                bytes_per_sec: Some(bytes_per_sec),
                cut_after: None,
            })
        } else {
            Action::Forward
        }
    });
    proxy
}

/// Waits until the ingest of layer `digest` holds at least `bytes`.
async fn wait_for_ingest(containerd: &Containerd, digest: &str, bytes: u64) {
    let store = store(containerd).await;
    let deadline = Deadline::after(Duration::from_secs(60));
    loop {
        let offset = store
            .ingest_offset(&format!("layer-{digest}"))
            .await
            .expect("Content.Status");
        if offset.is_some_and(|o| o >= bytes) {
            return;
        }
        assert!(
            !deadline.expired(),
            "the ingest of {digest} never reached {bytes} bytes"
        );
        deadline.tick().await;
    }
}

/// The first JSON line prepull printed.
fn json(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or("null");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

fn verify(containerd: &Containerd, image: &str) -> Prepull {
    Prepull::new("verify").containerd(containerd).arg(image)
}

/// What holds the space under containerd's `root`: bytes per directory, two levels down.
fn held_under(root: &std::path::Path) -> String {
    let out = std::process::Command::new("du")
        .args(["-B1", "--max-depth=3"])
        .arg(root)
        .output()
        .expect("run du");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A containerd whose root is a 64 MiB tmpfs, and a registry.
async fn on_a_small_disk() -> (Containerd, Registry) {
    tokio::join!(
        Containerd::start_with(ContainerdOptions {
            root_tmpfs_bytes: Some(64 * MIB as u64),
            ..Default::default()
        }),
        Registry::start()
    )
}

/// Starts `prepull`, its output piped.
fn spawn(prepull: Prepull) -> tokio::process::Child {
    prepull
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prepull")
}

/// Kills containerd, starts it again after systemd's delay on the same root and socket, and
/// waits for `child` to end.
async fn crash_containerd_under(
    containerd: &mut Containerd,
    child: tokio::process::Child,
) -> std::process::Output {
    containerd.kill();
    tokio::time::sleep(RESTART_SEC).await;
    containerd.start_again().await;
    child.wait_with_output().await.expect("prepull ends")
}

/// Leases a pull took (labelled with the image they were for).
async fn pull_leases(containerd: &Containerd) -> Vec<prepull::store::ListedLease> {
    store(containerd)
        .await
        .leases_with_label(lease::IMAGE)
        .await
        .expect("Leases.List")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_outlives_containerd_restarting_5_s_after_a_crash_mid_download() {
    let (mut containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "restart/app",
        "v1",
        &ImageSpec::new(&[24 * MIB, MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = slow_proxy(&registry, &layer.digest, 4 * MIB as u64).await;
    let reference = format!("{}/restart/app:v1", proxy.host());
    let child = spawn(pull(&containerd, &proxy.host(), &reference));
    wait_for_ingest(&containerd, &layer.digest, 8 * MIB as u64).await;

    let out = crash_containerd_under(&mut containerd, child).await;
    assert!(
        out.status.success(),
        "the pull goes on once containerd is back: {}",
        text(&out)
    );
    let fetched: u64 = proxy
        .records()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
        .map(|r| r.response_body_bytes)
        .sum();
    assert!(
        fetched < layer.size + 8 * MIB as u64,
        "resumed from the ingest: {fetched} bytes for a {}-byte layer",
        layer.size
    );
    verify(&containerd, &reference).success().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpack_interrupted_by_containerd_restarting_is_done_again() {
    let (mut containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    // Big layers that arrive fast: most of the pull is unpacking.
    push_image(
        &registry.host(),
        "restart/unpack",
        "v1",
        &ImageSpec::new(&[96 * MIB, 96 * MIB]).gzip_level(0),
    )
    .await;
    let reference = format!("{}/restart/unpack:v1", registry.host());
    let child = spawn(pull(&containerd, &registry.host(), &reference));
    // An unpack under way is an active `extract-…` snapshot.
    let store = store(&containerd).await;
    let deadline = Deadline::after(Duration::from_secs(60));
    loop {
        let snapshots = store
            .snapshots(containerd.snapshotter())
            .await
            .unwrap_or_default();
        if snapshots.iter().any(|s| {
            s.kind == prepull::store::SnapshotKind::Active && s.name.starts_with("extract-")
        }) {
            break;
        }
        assert!(!deadline.expired(), "no unpack was ever seen under way");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = crash_containerd_under(&mut containerd, child).await;
    assert!(
        out.status.success(),
        "the unpack is done again once containerd is back: {}",
        text(&out)
    );
    verify(&containerd, &reference).success().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_gives_up_when_containerd_stays_away_past_the_wait() {
    let (mut containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "restart/gone",
        "v1",
        &ImageSpec::new(&[16 * MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = slow_proxy(&registry, &layer.digest, 4 * MIB as u64).await;
    let reference = format!("{}/restart/gone:v1", proxy.host());
    let child = spawn(
        pull(&containerd, &proxy.host(), &reference).args(["--containerd-restart-wait", "2s"]),
    );
    wait_for_ingest(&containerd, &layer.digest, 4 * MIB as u64).await;
    containerd.kill();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the pull gives up within its wait")
        .expect("prepull ends");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        json(&out)["kind"],
        "containerd-unreachable",
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_pull_releases_what_a_killed_run_of_the_image_left_behind() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "killed/app",
        "v1",
        &ImageSpec::new(&[MIB, 16 * MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[1].clone();
    let proxy = slow_proxy(&registry, &layer.digest, 4 * MIB as u64).await;
    let reference = format!("{}/killed/app:v1", proxy.host());

    // A run of the same image in a live process (this one): never touched.
    let store = store(&containerd).await;
    let me = lease::Holder::current().expect("this process, as /proc describes it");
    let mut labels: HashMap<String, String> = me
        .labels()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    labels.insert(lease::IMAGE.into(), reference.clone());
    let live = store
        .create_labelled_lease("pull", Duration::from_secs(3600), labels)
        .await
        .unwrap();

    let mut killed = pull(&containerd, &proxy.host(), &reference)
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prepull");
    wait_for_ingest(&containerd, &layer.digest, 4 * MIB as u64).await;
    killed.start_kill().expect("kill -9 prepull");
    killed.wait().await.expect("reap prepull");
    let dead: Vec<String> = pull_leases(&containerd)
        .await
        .into_iter()
        .map(|l| l.lease.id().to_string())
        .filter(|id| id != live.id())
        .collect();
    assert_eq!(dead.len(), 1, "the killed run leaves its lease: {dead:?}");

    proxy.clear_hook();
    pull(&containerd, &proxy.host(), &reference).success().await;

    let left: Vec<String> = pull_leases(&containerd)
        .await
        .into_iter()
        .map(|l| l.lease.id().to_string())
        .collect();
    assert_eq!(
        left,
        [live.id().to_string()],
        "the killed run's lease is released, the live one's kept"
    );
    let active = containerd.ctr_ok(&["-n", "k8s.io", "content", "active"]);
    assert_eq!(active.lines().count(), 1, "no ingest left: {active}");
    let snapshots = store.snapshots(containerd.snapshotter()).await.unwrap();
    assert!(
        snapshots
            .iter()
            .all(|s| s.kind == prepull::store::SnapshotKind::Committed),
        "no partial unpack left: {snapshots:?}"
    );
    let content = used_bytes(&containerd.root().join("io.containerd.content.v1.content"));
    let image_bytes: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    assert!(
        content < image_bytes + MIB as u64,
        "the content store holds {content} bytes for a {image_bytes}-byte image"
    );
    verify(&containerd, &reference).success().await;
    store.delete_lease(live).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_that_fills_the_disk_says_so_counts_its_bytes_and_gives_the_space_back() {
    let (containerd, registry) = on_a_small_disk().await;
    // 40 MiB downloads, then unpacking another 40 MiB does not fit in 64 MiB.
    push_image(
        &registry.host(),
        "full/app",
        "v1",
        &ImageSpec::new(&[40 * MIB]).gzip_level(0),
    )
    .await;
    let reference = format!("{}/full/app:v1", registry.host());
    let free_before = free_bytes(containerd.root());
    let out = pull(&containerd, &registry.host(), &reference)
        .args(["--min-free-space", "0"])
        .output()
        .await;
    let result = json(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(result["kind"], "disk-space", "{result}");
    assert!(
        result["bytes_fetched"].as_u64().unwrap_or(0) >= 40 * MIB as u64,
        "what the failed pull downloaded is reported: {result}"
    );
    assert!(
        pull_leases(&containerd).await.is_empty(),
        "the failed pull's lease is released"
    );
    // containerd removes the files of what it collected just after the collection (1.7 and
    // 2.x in the background).
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        let free_after = free_bytes(containerd.root());
        if free_after + 2 * MIB as u64 >= free_before {
            break;
        }
        assert!(
            !deadline.expired(),
            "the space is given back: {free_after} bytes free after, {free_before} before; \
             held: {}\nsnapshots: {}",
            held_under(containerd.root()),
            containerd.ctr_ok(&["-n", "k8s.io", "snapshots", "ls"]),
        );
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn incomplete_records_are_reported_as_such_and_repaired_offline() {
    let (containerd, mut registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "records/app",
        "v1",
        &ImageSpec::new(&[MIB]),
    )
    .await;
    let reference = format!("{}/records/app:v1", registry.host());
    pull(&containerd, &registry.host(), &reference)
        .success()
        .await;
    let by_digest = format!("{}/records/app@{}", registry.host(), image.manifest.digest);
    containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &by_digest]);

    let out = verify(&containerd, &reference)
        .args(["--output", "json"])
        .code(1)
        .await;
    let result = json(&out);
    assert_eq!(result["status"], "records-incomplete", "{result}");
    assert!(
        result["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains(&by_digest)),
        "{result}"
    );
    let out = verify(&containerd, &reference).code(1).await;
    assert!(
        text(&out).contains("records incomplete")
            && text(&out).contains(&format!("prepull repair {reference}")),
        "{}",
        text(&out)
    );

    registry.stop();
    let out = Prepull::new("repair")
        .containerd(&containerd)
        .plain_http(&registry.host())
        .args(["--no-node-credentials", &reference])
        .success()
        .await;
    assert!(text(&out).contains("repaired"), "{}", text(&out));
    assert!(
        store(&containerd)
            .await
            .image(&by_digest)
            .await
            .unwrap()
            .is_some(),
        "the digest record is back"
    );
    verify(&containerd, &reference).success().await;

    // The agent writes them at start, from what is on the node, the registry still down.
    let id = image.config.digest.clone();
    containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &id]);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    write_list(&list, &[&reference]);
    Prepull::new("agent")
        .containerd(&containerd)
        .plain_http(&registry.host())
        .args(["--once", "--no-node-credentials", "--no-listen"])
        .arg("--list")
        .arg(&list)
        .output()
        .await;
    assert!(
        store(&containerd).await.image(&id).await.unwrap().is_some(),
        "the agent wrote the ID record"
    );
    verify(&containerd, &reference).success().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alias_made_with_ctr_images_tag_is_not_damage() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    push_image(&registry.host(), "alias/app", "v1", &ImageSpec::new(&[MIB])).await;
    let reference = format!("{}/alias/app:v1", registry.host());
    pull(&containerd, &registry.host(), &reference)
        .success()
        .await;
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "tag",
        &reference,
        "example.com/elsewhere/app:local",
    ]);
    let out = Prepull::new("verify")
        .containerd(&containerd)
        .output()
        .await;
    assert!(out.status.success(), "{}", text(&out));
}

/// Writes the agent's list atomically, as a ConfigMap update lands.
fn write_list(path: &std::path::Path, images: &[&str]) {
    let body: String = images.iter().map(|i| format!("  - {i}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("pin: false\nimages:\n{body}")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn read_status(path: &std::path::Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_of_an_agent_killed_mid_pass_says_which_pass_it_shows() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    push_image(
        &registry.host(),
        "status/fast",
        "v1",
        &ImageSpec::new(&[MIB]),
    )
    .await;
    let slow = push_image(
        &registry.host(),
        "status/slow",
        "v1",
        &ImageSpec::new(&[16 * MIB]).gzip_level(0),
    )
    .await;
    let proxy = slow_proxy(&registry, &slow.layers[0].digest, MIB as u64).await;
    let host = proxy.host();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.yaml");
    let status_file = dir.path().join("status.json");
    let fast = format!("{host}/status/fast:v1");
    write_list(&list, &[&fast]);
    let mut agent = Prepull::new("agent")
        .containerd(&containerd)
        .plain_http(&host)
        .args(["--no-node-credentials", "--no-listen", "--splay", "0s"])
        .args(["--interval", "1h"])
        .arg("--list")
        .arg(&list)
        .arg("--status-file")
        .arg(&status_file)
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent");
    let wait_for = |what: &'static str, ok: fn(&Value) -> bool| {
        let status_file = status_file.clone();
        async move {
            let deadline = Deadline::after(Duration::from_secs(60));
            loop {
                if let Some(s) = read_status(&status_file).filter(ok) {
                    return s;
                }
                assert!(!deadline.expired(), "the status never showed {what}");
                deadline.tick().await;
            }
        }
    };
    let first = wait_for("pass 1 done", |s| s["passes"] == 1).await;
    assert!(first["pass_under_way"].is_null(), "{first:#}");

    // The list changes: pass 2 starts, and stays on the slow image.
    write_list(&list, &[&fast, &format!("{host}/status/slow:v1")]);
    wait_for("pass 2 under way", |s| s["pass_under_way"]["number"] == 2).await;
    agent.start_kill().expect("kill -9 the agent");
    agent.wait().await.expect("reap the agent");

    let left = read_status(&status_file).expect("the status file is there");
    assert_eq!(left["passes"], 1, "{left:#}");
    assert_eq!(left["pass_under_way"]["number"], 2, "{left:#}");
    for field in ["written", "agent_started", "last_pass"] {
        assert!(left[field].is_string(), "{field} missing: {left:#}");
    }
    assert!(
        left["written"].as_str() >= left["pass_under_way"]["started"].as_str(),
        "{left:#}"
    );
    let out = Prepull::new("status")
        .arg("--status-file")
        .arg(&status_file)
        .output()
        .await;
    assert!(
        text(&out).contains("pass 2 under way since"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_on_the_node_but_not_unpacked_count_their_unpacking_against_the_reserve() {
    let (containerd, registry) = on_a_small_disk().await;
    push_image(
        &registry.host(),
        "unpack/app",
        "v1",
        &ImageSpec::new(&[10 * MIB, 10 * MIB]).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let reference = format!("{}/unpack/app:v1", proxy.host());
    let with_reserve = |extra: &[&str]| {
        pull(&containerd, &proxy.host(), &reference)
            .arg("--containerd-root")
            .arg(containerd.root())
            .args(["--min-free-space", "8MiB"])
            .args(extra)
    };
    with_reserve(&["--no-unpack"]).success().await;

    // 20 MiB free, 8 of them reserved: the 20 MiB the layers unpack to do not fit.
    fill_until(containerd.root(), 20 * MIB as u64);
    proxy.clear();
    let out = with_reserve(&[]).output().await;
    let result = json(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(result["kind"], "disk-space", "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("--min-free-space 8.0 MiB") && error.contains("unpacked estimated"),
        "refused by the reserve, before unpacking: {error}"
    );
    let snapshots = store(&containerd)
        .await
        .snapshots(containerd.snapshotter())
        .await
        .unwrap();
    assert!(snapshots.is_empty(), "nothing unpacked: {snapshots:?}");
    assert_eq!(proxy.blob_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_unpacking_far_beyond_its_size_is_stopped_at_the_reserve_and_given_back() {
    let (containerd, registry) = tokio::join!(
        Containerd::start_with(ContainerdOptions {
            root_tmpfs_bytes: Some(192 * MIB as u64),
            ..Default::default()
        }),
        Registry::start()
    );
    // A few hundred KiB of gzip that unpack to 256 MiB: past the whole filesystem, let alone
    // the twice-compressed estimate the space check claims for it.
    let bomb = support::busybox::FileLayer::zeros("data/zeros", 256 * MIB as u64);
    assert!(bomb.gzip.len() < MIB, "{} bytes", bomb.gzip.len());
    let image =
        support::busybox::push_runnable(&registry.host(), "bomb/app", "v1", &[&bomb], &["true"])
            .await;
    let reference = format!("{}/bomb/app:v1", registry.host());
    let root = containerd.root().to_path_buf();
    let reserve = 64 * MIB as u64;
    let free_before = free_bytes(&root);

    // Free space as the unpack goes, looked at far more often than the pull does.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (watching, root) = (watching.clone(), root.clone());
        std::thread::spawn(move || {
            let fs = prepull::space::SpaceCheck::new(root, prepull::space::Reserve::Bytes(0));
            let mut least = u64::MAX;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((free, _)) = fs.usage() {
                    least = least.min(free);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            least
        })
    };
    let out = pull(&containerd, &registry.host(), &reference)
        .arg("--containerd-root")
        .arg(&root)
        .args(["--min-free-space", "64MiB"])
        .output()
        .await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let least_free = sampler.join().expect("the sampler");

    let result = json(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(result["kind"], "disk-space", "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("unpacks to far more than estimated")
            && error.contains(&image.layers[0].digest)
            && error.contains("--min-free-space 64.0 MiB"),
        "the error names the layer and the reserve: {error}"
    );
    // Stopped soon after crossing the reserve, long before the filesystem filled.
    assert!(
        least_free > reserve / 2,
        "the unpack went on to {least_free} bytes free, the reserve being {reserve}"
    );
    let store = store(&containerd).await;
    assert!(
        store.image(&reference).await.unwrap().is_none(),
        "no record of the image"
    );
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        let snapshots = store.snapshots(containerd.snapshotter()).await.unwrap();
        let free_after = free_bytes(&root);
        if snapshots.is_empty() && free_after + 2 * MIB as u64 >= free_before {
            break;
        }
        assert!(
            !deadline.expired(),
            "what the unpack wrote is given back: {free_after} bytes free after, {free_before} \
             before; snapshots {snapshots:?}; held: {}",
            held_under(&root),
        );
        deadline.tick().await;
    }
}

/// A run killed after it committed an image's whole snapshot chain, but before it labelled the
/// config with the chain (the label that keeps the chain once the run's lease is gone), leaves
/// the chain held by its lease alone. The run that completes the image finds the chain there:
/// it must still hold and label it, or releasing the dead run's lease collects the layers the
/// image records it just wrote stand on.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_a_killed_run_unpacked_but_never_labelled_outlives_its_lease() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "killed/unlabelled",
        "v1",
        &ImageSpec::new(&[MIB, MIB, MIB]),
    )
    .await;
    let host = registry.host();
    let reference = format!("{host}/killed/unlabelled:v1");
    pull(&containerd, &host, &reference).success().await;

    // What the killed run leaves: everything under its lease (its process gone), the chain
    // committed, the config without the chain's label, no image records.
    let store = store(&containerd).await;
    let me = lease::Holder::current().expect("this process, as /proc describes it");
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let gone_pid = gone.id();
    gone.wait().expect("reap true");
    let mut labels: HashMap<String, String> = me
        .labels()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    labels.insert(lease::PID.into(), gone_pid.to_string());
    labels.insert(lease::IMAGE.into(), reference.clone());
    let dead = store
        .create_labelled_lease("pull", Duration::from_secs(3600), labels)
        .await
        .unwrap();
    let diff_ids: Vec<prepull::digest::Digest> =
        image.diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    let chain = prepull::image::chain_ids(&diff_ids);
    let snapshots = format!("snapshots/{}", containerd.snapshotter());
    for id in &chain {
        store
            .lease_resource(&dead, &snapshots, &id.to_string())
            .await
            .unwrap();
    }
    for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
        store
            .lease_resource(&dead, "content", &blob.digest)
            .await
            .unwrap();
    }
    let snapshot_label = format!(
        "{}{}",
        prepull::image::labels::GC_REF_SNAPSHOT,
        containerd.snapshotter()
    );
    store
        .set_labels(
            &image.config.digest.parse().unwrap(),
            HashMap::from([(snapshot_label, String::new())]),
        )
        .await
        .unwrap();
    for name in [
        reference.clone(),
        format!("{host}/killed/unlabelled@{}", image.manifest.digest),
        image.config.digest.clone(),
    ] {
        store.delete_image(&name).await.unwrap();
    }

    pull(&containerd, &host, &reference).success().await;
    assert!(
        pull_leases(&containerd).await.is_empty(),
        "the dead run's lease is released"
    );
    verify(&containerd, &reference).success().await;
}

/// A pull waits for containerd at most 5 times in a row without moving on in between; one that
/// moves on after each restart outlives more of them (here 6, each once the download went on
/// two mebibytes, each away longer than a blob's own retries wait).
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_that_moves_on_between_restarts_outlives_more_than_5() {
    let (mut containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "restart/often",
        "v1",
        &ImageSpec::new(&[24 * MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = slow_proxy(&registry, &layer.digest, 4 * MIB as u64).await;
    let reference = format!("{}/restart/often:v1", proxy.host());
    let child = spawn(pull(&containerd, &proxy.host(), &reference));
    let away = prepull::retry::BLOB.worst_case_wait() + Duration::from_millis(500);
    for restart in 1..=6 {
        wait_for_ingest(&containerd, &layer.digest, restart * 2 * MIB as u64).await;
        containerd.kill();
        tokio::time::sleep(away).await;
        containerd.start_again().await;
    }
    let out = child.wait_with_output().await.expect("prepull ends");
    assert!(
        out.status.success(),
        "the pull outlives 6 restarts: {}",
        text(&out)
    );
    verify(&containerd, &reference).success().await;
}
