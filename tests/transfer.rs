//! `--fetcher containerd` against a real containerd and a real registry: containerd's transfer
//! service fetches and unpacks the layers with the credentials prepull hands it, the image lands
//! as complete as with prepull's own fetch, and snapshots a power cut may have emptied are
//! unpacked again. On containerd 1.x prepull fetches itself.

use testbench as support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use prepull::digest::Digest;
use prepull::store::Store;
use serde_json::Value;
use support::run::assert_success;
use support::{
    push_image, push_image_with, Action, Containerd, ImageSpec, Prepull, Proxy, Registry,
    RegistryOptions,
};

const KIB: usize = 1024;
const CRI_WAIT: Duration = Duration::from_secs(20);

async fn store(containerd: &Containerd) -> Store {
    Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect to containerd")
}

/// Whether prepull has this containerd fetch (2.x; 1.6 has no transfer service, and 1.7's
/// lacks what prepull needs).
fn has_transfer(containerd: &Containerd) -> bool {
    containerd.series().major >= 2
}

/// Whether a request came from containerd (its `User-Agent`).
fn from_containerd(req: &support::proxy::RequestInfo) -> bool {
    req.headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("containerd"))
}

async fn pull(containerd: &Containerd, host: &str, extra: &[&str], image: &str) -> Value {
    let out = Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .args(["--output", "json", "--fetcher", "containerd"])
        .args(extra)
        .arg(image)
        .output()
        .await;
    assert_success(&out);
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.lines().next().expect("one result")).expect("JSON result")
}

fn chain(diff_ids: &[String]) -> Vec<Digest> {
    let ids: Vec<Digest> = diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    prepull::image::chain_ids(&ids)
}

fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    let json = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(&path, json.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_fetches_the_layers_with_the_matched_credentials_and_the_image_lands_complete() {
    let (containerd, registry) = tokio::join!(
        Containerd::start(),
        Registry::start_with(RegistryOptions::default().htpasswd_user("alice", "alice-pw"))
    );
    let image = push_image_with(
        &registry.push_target(),
        "team/app",
        "v1",
        &ImageSpec::new(&[256 * KIB, 128 * KIB, 64 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    // Where containerd can fetch, only it may fetch layers: prepull's fetch of one is refused,
    // so the pull succeeds only if containerd fetched them all, with the credentials.
    let layers: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    let containerd_fetches = has_transfer(&containerd);
    let layer_gets = Arc::new(Mutex::new(0usize));
    let counted = layer_gets.clone();
    proxy.set_hook(move |req| {
        let layer = req.method == "GET" && layers.iter().any(|l| req.path.ends_with(l.as_str()));
        if layer && from_containerd(req) {
            *counted.lock().unwrap() += 1;
        }
        if layer && containerd_fetches && !from_containerd(req) {
            Action::Respond {
                status: 403,
                body: b"only containerd fetches layers here".to_vec(),
            }
        } else {
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_file(dir.path(), &host, "alice", "alice-pw");
    let reference = format!("{host}/team/app:v1");

    let r = pull(
        &containerd,
        &host,
        &["--no-node-credentials", "--auth-file", &auth],
        &reference,
    )
    .await;
    assert_eq!(r["status"], "pulled", "{r}");
    assert_eq!(r["digest"], image.manifest.digest.as_str());
    assert_eq!(r["blobs_fetched"], 4, "3 layers + config: {r}");

    // containerd asked for each layer (anonymously first: the registry challenged it) on 2.x;
    // not at all on 1.x.
    let by_containerd = *layer_gets.lock().unwrap();
    if containerd_fetches {
        assert!(
            by_containerd >= 3,
            "{by_containerd} layer GETs by containerd"
        );
    } else {
        assert_eq!(by_containerd, 0);
    }

    // Unpacked, labelled and recorded as with prepull's own fetch.
    let store = store(&containerd).await;
    let chain = chain(&image.diff_ids);
    for (i, id) in chain.iter().enumerate() {
        assert!(
            store
                .snapshot_exists(containerd.snapshotter(), &id.to_string())
                .await
                .unwrap(),
            "snapshot {i} {id}"
        );
    }
    let config = store
        .info(&image.config.digest.parse().unwrap())
        .await
        .unwrap()
        .expect("config committed");
    assert_eq!(
        config.labels.get(&format!(
            "containerd.io/gc.ref.snapshot.{}",
            containerd.snapshotter()
        )),
        Some(&chain.last().unwrap().to_string())
    );
    let names: Vec<String> = store
        .images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(names.contains(&reference), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(prepull::pull::TRANSFER_RECORDS)),
        "containerd's own record of the transfer is gone: {names:?}"
    );
    let leases = containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]);
    assert!(
        !leases.contains("prepull-"),
        "no lease or marker left: {leases}"
    );
    let status = support::cri::wait_for_image(containerd.socket(), &reference, CRI_WAIT).await;
    assert_eq!(status.id, image.config.digest);
    containerd.assert_image_complete(&reference);

    let verify = Prepull::new("verify")
        .containerd(&containerd)
        .args(["--deep", &reference])
        .output()
        .await;
    assert_success(&verify);

    // Warm: one HEAD, no GET, whoever would fetch.
    proxy.clear();
    let again = pull(
        &containerd,
        &host,
        &["--no-node-credentials", "--auth-file", &auth],
        &reference,
    )
    .await;
    assert_eq!(again["blobs_fetched"], 0, "{again}");
    let gets = proxy
        .records()
        .into_iter()
        .filter(|r| r.method == "GET" && !r.path.ends_with("/v2/"))
        .count();
    assert_eq!(gets, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_containerd_cannot_fetch_is_fetched_by_prepull() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "team/app",
        "v1",
        &ImageSpec::new(&[64 * KIB, 32 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    // containerd gets a 500 for the top layer every time; prepull's own fetch gets it.
    let top = image.layers[1].digest.clone();
    let failing = top.clone();
    proxy.set_hook(move |req| {
        if req.path.ends_with(&failing) && from_containerd(req) {
            Action::Respond {
                status: 500,
                body: b"broken".to_vec(),
            }
        } else {
            Action::Forward
        }
    });
    let reference = format!("{host}/team/app:v1");
    let r = pull(&containerd, &host, &["--no-node-credentials"], &reference).await;
    assert_eq!(r["status"], "pulled", "{r}");
    // prepull fetched the layer containerd could not.
    let by_prepull = proxy
        .records()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&top) && r.status == 200)
        .count();
    assert_eq!(by_prepull, 1);
    containerd.assert_image_complete(&reference);
    let names: Vec<String> = store(&containerd)
        .await
        .images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(prepull::pull::TRANSFER_RECORDS)),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_unpacked_before_a_power_cut_and_never_flushed_are_unpacked_again() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let first = push_image(
        &host,
        "team/first",
        "v1",
        &ImageSpec::new(&[32 * KIB, 16 * KIB]),
    )
    .await;
    push_image(&host, "team/second", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let reference = format!("{host}/team/first:v1");
    pull(&containerd, &host, &["--no-node-credentials"], &reference).await;
    let chain = chain(&first.diff_ids);
    let snapshotter = containerd.snapshotter().to_string();
    let store = store(&containerd).await;

    // What a run that unpacked the top layer and lost power before flushing left: a marker
    // naming it, from another boot.
    let labels = HashMap::from([
        ("prepull.io/unflushed".to_string(), snapshotter.clone()),
        ("prepull.io/unflushed-image".to_string(), reference.clone()),
        (
            "prepull.io/unflushed-chain.0".to_string(),
            chain[1].to_string(),
        ),
        (
            "prepull.io/boot".to_string(),
            "0b5e55ed-0000-4000-8000-000000000000".to_string(),
        ),
        (
            "prepull.io/pid-namespace".to_string(),
            "pid:[4026531836]".to_string(),
        ),
        ("prepull.io/pid".to_string(), "4242".to_string()),
        ("prepull.io/process-started".to_string(), "1000".to_string()),
    ]);
    store
        .create_labelled_lease("unflushed", Duration::from_secs(3600), labels)
        .await
        .unwrap();
    // One marker of a live process of this boot: left alone.
    let live = store
        .create_labelled_lease(
            "unflushed",
            Duration::from_secs(3600),
            HashMap::from([
                ("prepull.io/unflushed".to_string(), snapshotter.clone()),
                (
                    "prepull.io/unflushed-chain.0".to_string(),
                    chain[0].to_string(),
                ),
                ("prepull.io/boot".to_string(), boot_id()),
                ("prepull.io/pid-namespace".to_string(), pid_namespace()),
                ("prepull.io/pid".to_string(), std::process::id().to_string()),
                ("prepull.io/process-started".to_string(), process_started()),
            ]),
        )
        .await
        .unwrap();

    // A record a transfer wrote for a run killed before deleting it.
    let leftover = format!("{}leftover/app:v1", prepull::pull::TRANSFER_RECORDS);
    containerd.ctr_ok(&["-n", "k8s.io", "images", "tag", &reference, &leftover]);

    // The next run that unpacks anything removes the top snapshot first...
    pull(
        &containerd,
        &host,
        &["--no-node-credentials"],
        &format!("{host}/team/second:v1"),
    )
    .await;
    assert!(
        !store
            .snapshot_exists(&snapshotter, &chain[1].to_string())
            .await
            .unwrap(),
        "the unflushed snapshot was removed"
    );
    // (The layer below it, flushed, is left to containerd's garbage collection, which takes it
    // once nothing above it remains.) The live process's marker stays.
    let leases = containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]);
    assert!(leases.contains(live.id()), "{leases}");
    assert_eq!(leases.matches("prepull-unflushed").count(), 1, "{leases}");

    assert!(
        store.image(&leftover).await.unwrap().is_none(),
        "the stopped run's transfer record is deleted"
    );

    // ...and the image is unpacked again, not trusted as it was.
    let again = pull(&containerd, &host, &["--no-node-credentials"], &reference).await;
    assert_eq!(again["status"], "pulled", "{again}");
    assert!(store
        .snapshot_exists(&snapshotter, &chain[1].to_string())
        .await
        .unwrap());
    containerd.assert_image_complete(&reference);
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn process_started() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().to_string()
}

/// containerd's HTTP client drops the `Authorization` header on a redirect to another host name
/// (Go's rule), so a registry's token does not follow a blob to its storage host. (It keeps it
/// for the same host name on another port: prepull's own fetch does not; see docs/security.md.)
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_redirected_to_a_storage_host_gets_no_registry_token_from_containerd() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "redirect/app",
        "v1",
        &ImageSpec::new(&[64 * KIB]),
    )
    .await;
    let layer = image.layers[0].digest.clone();
    let storage = Proxy::start(&registry.host()).await;
    let storage_agents = Arc::new(Mutex::new(Vec::new()));
    let seen = storage_agents.clone();
    storage.set_hook(move |req| {
        seen.lock().unwrap().push(from_containerd(req));
        Action::Forward
    });
    let front = Proxy::start(&registry.host()).await;
    let host = front.host();
    let realm = format!("{}/token", front.url());
    // Another host name for the same loopback address.
    let storage_url = storage.url().replace("127.0.0.1", "localhost");
    front.set_hook(move |req| {
        if req.path.starts_with("/token") {
            return Action::RespondWith {
                status: 200,
                headers: vec![],
                body: br#"{"token":"registry-token"}"#.to_vec(),
            };
        }
        let authorized = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some("Bearer registry-token");
        if !authorized {
            return Action::RespondWith {
                status: 401,
                headers: vec![(
                    "www-authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="s""#),
                )],
                body: vec![],
            };
        }
        if req.path.ends_with(&layer) {
            return Action::RespondWith {
                status: 307,
                headers: vec![(
                    "location".into(),
                    format!("{storage_url}{}?X-Amz-Signature=presigned", req.path),
                )],
                body: vec![],
            };
        }
        Action::Forward
    });
    let reference = format!("{host}/redirect/app:v1");
    let r = pull(&containerd, &host, &["--no-node-credentials"], &reference).await;
    assert_eq!(r["status"], "pulled", "{r}");
    let at_storage = storage.records();
    assert_eq!(at_storage.len(), 1, "{at_storage:?}");
    assert!(at_storage[0].path.contains(&image.layers[0].digest));
    assert_eq!(
        at_storage[0].authorization, None,
        "the token stayed with the registry"
    );
    assert_eq!(
        *storage_agents.lock().unwrap(),
        vec![has_transfer(&containerd)],
        "fetched by containerd where it fetches"
    );
    assert_eq!(at_storage[0].response_body_bytes, image.layers[0].size);
    containerd.assert_image_complete(&reference);
}

/// containerd's fetch has no least-progress bound of its own: a registry trickling a layer to it
/// would hold the pull forever. prepull cancels a transfer that brings less than
/// `--min-progress` in a window and fetches the layers itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_trickled_to_containerd_is_given_up_on_and_fetched_by_prepull() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "slow/app",
        "v1",
        &ImageSpec::new(&[512 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let layer = image.layers[0].digest.clone();
    let trickled = Arc::new(Mutex::new(0usize));
    let seen = trickled.clone();
    proxy.set_hook(move |req| {
        if req.path.ends_with(&layer) && from_containerd(req) {
            *seen.lock().unwrap() += 1;
            Action::Shape(support::Shape {
                bytes_per_sec: Some(1024),
                cut_after: None,
            })
        } else {
            Action::Forward
        }
    });
    let reference = format!("{host}/slow/app:v1");
    let started = std::time::Instant::now();
    let r = pull(
        &containerd,
        &host,
        &["--no-node-credentials", "--min-progress", "64KiB/2s"],
        &reference,
    )
    .await;
    assert_eq!(r["status"], "pulled", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "given up on within a few windows: {:?}",
        started.elapsed()
    );
    let by_containerd = *trickled.lock().unwrap();
    assert_eq!(
        by_containerd > 0,
        has_transfer(&containerd),
        "{by_containerd}"
    );
    let fetched_whole = proxy
        .records()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&image.layers[0].digest))
        .any(|r| {
            r.status / 100 == 2 && r.range_start() + r.response_body_bytes == image.layers[0].size
        });
    assert!(
        fetched_whole,
        "prepull fetched the layer: {:?}",
        proxy.records()
    );
    containerd.assert_image_complete(&reference);
}
