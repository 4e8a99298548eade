//! `prepull pull` end to end against a real containerd and a real registry: what lands in
//! containerd, what CRI (the kubelet's view) reports, and what never lands when bytes are bad.

use testbench as support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use prepull::digest::Digest;
use prepull::store::Store;
use serde_json::Value;
use support::run::assert_success;
use support::{
    push_image, push_index, tag_image, Containerd, ImageSpec, MediaFamily, Platform, Prepull,
    Proxy, Registry,
};

const CRI_WAIT: Duration = Duration::from_secs(20);
const KIB: usize = 1024;

/// Runs `prepull pull --output json` for `images` from `host` and returns one JSON result per image.
async fn pull_json(
    containerd: &Containerd,
    host: &str,
    extra: &[&str],
    images: &[&str],
) -> (Output, Vec<Value>) {
    let out = Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .args(["--output", "json"])
        .args(extra)
        .args(images)
        .output()
        .await;
    let results = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    (out, results)
}

async fn store(containerd: &Containerd) -> Store {
    Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect to containerd")
}

fn digest(s: &str) -> Digest {
    s.parse().expect("digest")
}

async fn has_blob(store: &Store, d: &str) -> bool {
    store
        .info(&digest(d))
        .await
        .expect("Content.Info")
        .is_some()
}

async fn has_record(containerd: &Containerd, name: &str) -> bool {
    store(containerd)
        .await
        .image(name)
        .await
        .expect("Images.Get")
        .is_some()
}

fn leases(containerd: &Containerd) -> String {
    containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"])
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_image_by_tag_lands_with_gc_labels_and_cri_sees_every_name() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(
        &host,
        "team/app",
        "v1",
        &ImageSpec::new(&[64 * KIB, 32 * KIB, 16 * KIB]),
    )
    .await;
    let reference = format!("{host}/team/app:v1");

    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    let r = &results[0];
    assert_eq!(r["status"], "pulled");
    assert_eq!(r["digest"], image.manifest.digest.as_str());
    assert_eq!(r["id"], image.config.digest.as_str());
    assert_eq!(r["layers"], 3);
    assert_eq!(r["blobs_fetched"], 4, "3 layers + config");
    let expected_bytes: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    assert_eq!(r["bytes_fetched"], expected_bytes);

    // Content and the GC references containerd's own pull writes.
    let store = store(&containerd).await;
    let manifest = store
        .info(&digest(&image.manifest.digest))
        .await
        .unwrap()
        .expect("manifest committed");
    assert_eq!(
        manifest.labels.get("containerd.io/gc.ref.content.config"),
        Some(&image.config.digest)
    );
    for (i, layer) in image.layers.iter().enumerate() {
        assert_eq!(
            manifest
                .labels
                .get(&format!("containerd.io/gc.ref.content.l.{i}")),
            Some(&layer.digest)
        );
        let info = store
            .info(&digest(&layer.digest))
            .await
            .unwrap()
            .expect("layer committed");
        assert_eq!(info.size as u64, layer.size);
        assert_eq!(
            info.labels
                .get(&format!("containerd.io/distribution.source.{host}"))
                .map(String::as_str),
            Some("team/app")
        );
    }
    assert!(has_blob(&store, &image.config.digest).await);

    // Unpacked into the snapshotter CRI uses (found by asking CRI), as containerd's unpacker does.
    assert_eq!(r["snapshotter"], containerd.snapshotter());
    let diff_ids: Vec<Digest> = image.diff_ids.iter().map(|d| digest(d)).collect();
    let chain = prepull::image::chain_ids(&diff_ids);
    for (i, id) in chain.iter().enumerate() {
        assert!(
            store
                .snapshot_exists(containerd.snapshotter(), &id.to_string())
                .await
                .unwrap(),
            "snapshot {i} {id}"
        );
        let layer = store
            .info(&digest(&image.layers[i].digest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            layer.labels.get("containerd.io/uncompressed"),
            Some(&image.diff_ids[i])
        );
    }
    let config = store
        .info(&digest(&image.config.digest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        config.labels.get(&format!(
            "containerd.io/gc.ref.snapshot.{}",
            containerd.snapshotter()
        )),
        Some(&chain.last().unwrap().to_string())
    );

    // Image records: tag, digest reference and ID, managed, pointing at the manifest.
    let digest_ref = format!("{host}/team/app@{}", image.manifest.digest);
    for name in [
        reference.as_str(),
        digest_ref.as_str(),
        image.config.digest.as_str(),
    ] {
        let record = store
            .image(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no image record {name}"));
        assert_eq!(
            record
                .labels
                .get("io.cri-containerd.image")
                .map(String::as_str),
            Some("managed")
        );
        assert_eq!(
            record.target.as_ref().unwrap().digest.to_string(),
            image.manifest.digest
        );
    }
    assert!(
        !leases(&containerd).contains("prepull-"),
        "the pull's lease is released"
    );

    // What the kubelet sees, under every name a pod spec could use.
    for name in [
        reference.as_str(),
        digest_ref.as_str(),
        image.config.digest.as_str(),
    ] {
        let status = support::cri::wait_for_image(containerd.socket(), name, CRI_WAIT).await;
        assert_eq!(status.id, image.config.digest, "{name}");
        assert!(
            status.repo_tags.contains(&reference),
            "{name}: {:?}",
            status.repo_tags
        );
        assert!(
            status.repo_digests.contains(&digest_ref),
            "{name}: {:?}",
            status.repo_digests
        );
    }
    // containerd's own tooling finds the image complete.
    containerd.assert_image_complete(&reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_media_types_by_digest_create_no_tag_record() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let spec = ImageSpec::new(&[48 * KIB, 8 * KIB]).family(MediaFamily::Docker);
    let image = push_image(&host, "legacy/app", "old", &spec).await;
    let by_digest = format!("{host}/legacy/app@{}", image.manifest.digest);

    let (out, results) = pull_json(&containerd, &host, &["--no-unpack"], &[&by_digest]).await;
    assert_success(&out);
    assert_eq!(results[0]["digest"], image.manifest.digest.as_str());
    assert!(results[0]["snapshotter"].is_null());
    let snapshots = containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        containerd.snapshotter(),
        "ls",
    ]);
    assert!(
        !snapshots.contains(&image.diff_ids[0]),
        "--no-unpack creates no snapshot: {snapshots}"
    );
    assert_eq!(
        results[0]["names"],
        serde_json::json!([by_digest, image.config.digest])
    );

    let store = store(&containerd).await;
    let record = store
        .image(&by_digest)
        .await
        .unwrap()
        .expect("digest record");
    assert_eq!(
        record.target.unwrap().media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(store
        .image(&format!("{host}/legacy/app:old"))
        .await
        .unwrap()
        .is_none());

    let status = support::cri::wait_for_image(containerd.socket(), &by_digest, CRI_WAIT).await;
    assert_eq!(status.id, image.config.digest);
    assert!(status.repo_tags.is_empty(), "{:?}", status.repo_tags);
    // A tag+digest reference is the digest reference, as the kubelet and containerd read it.
    let both = format!("{host}/legacy/app:old@{}", image.manifest.digest);
    let status = support::cri::wait_for_image(containerd.socket(), &both, CRI_WAIT).await;
    assert_eq!(status.id, image.config.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_arch_index_yields_the_node_platform_only() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let specs = [
        ImageSpec::new(&[20 * KIB, 4 * KIB]).platform(Platform::linux_arm64()),
        ImageSpec::new(&[24 * KIB, 8 * KIB]).platform(Platform::linux_amd64()),
    ];
    let index = push_index(&host, "multi/app", "v2", MediaFamily::Oci, &specs, true).await;
    let (arm64, amd64) = (&index.images[0], &index.images[1]);
    let reference = format!("{host}/multi/app:v2");

    // This bench runs on amd64; CRI only ever looks at the node's own platform.
    let (out, results) = pull_json(
        &containerd,
        &host,
        &["--platform", "linux/x86_64"],
        &[&reference],
    )
    .await;
    assert_success(&out);
    assert_eq!(results[0]["platform"], "linux/amd64");
    assert_eq!(results[0]["digest"], index.index.digest.as_str());
    assert_eq!(results[0]["id"], amd64.config.digest.as_str());

    let store = store(&containerd).await;
    for layer in &amd64.layers {
        assert!(
            has_blob(&store, &layer.digest).await,
            "amd64 layer {} fetched",
            layer.digest
        );
    }
    for layer in &arm64.layers {
        assert!(
            !has_blob(&store, &layer.digest).await,
            "arm64 layer {} not fetched",
            layer.digest
        );
    }
    let attestation = index.attestation.as_ref().expect("attestation pushed");
    assert!(
        !has_blob(&store, &attestation.digest).await,
        "attestation manifest skipped"
    );
    let idx = store
        .info(&digest(&index.index.digest))
        .await
        .unwrap()
        .expect("index committed");
    assert_eq!(
        idx.labels.get("containerd.io/gc.ref.content.m.1"),
        Some(&amd64.manifest.digest)
    );
    let record = store.image(&reference).await.unwrap().expect("tag record");
    assert_eq!(
        record.target.unwrap().digest.to_string(),
        index.index.digest,
        "records target the index"
    );

    let status = support::cri::wait_for_image(containerd.socket(), &reference, CRI_WAIT).await;
    assert_eq!(status.id, amd64.config.digest);

    // Another platform on request, from a Docker manifest list (content only: CRI on an amd64
    // node does not use arm64 images).
    let list = push_index(
        &host,
        "multi/list",
        "v1",
        MediaFamily::Docker,
        &specs,
        false,
    )
    .await;
    let list_ref = format!("{host}/multi/list:v1");
    let (out, results) = pull_json(
        &containerd,
        &host,
        &["--platform", "linux/arm64/v8"],
        &[&list_ref],
    )
    .await;
    assert_success(&out);
    assert_eq!(results[0]["platform"], "linux/arm64");
    assert_eq!(results[0]["id"], list.images[0].config.digest.as_str());
    for layer in &list.images[0].layers {
        assert!(
            has_blob(&store, &layer.digest).await,
            "arm64 layer {} fetched",
            layer.digest
        );
    }
    for layer in &list.images[1].layers {
        assert!(
            !has_blob(&store, &layer.digest).await,
            "amd64 layer {} not fetched",
            layer.digest
        );
    }
    let list_info = store
        .info(&digest(&list.index.digest))
        .await
        .unwrap()
        .expect("list committed");
    assert_eq!(
        list_info.labels.get("containerd.io/gc.ref.content.m.0"),
        Some(&list.images[0].manifest.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_platform_names_what_the_index_has() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let specs = [
        ImageSpec::new(&[4 * KIB]).platform(Platform::linux_amd64()),
        ImageSpec::new(&[4 * KIB]).platform(Platform::linux_arm64()),
    ];
    push_index(&host, "multi/app", "v1", MediaFamily::Oci, &specs, true).await;
    let reference = format!("{host}/multi/app:v1");
    let (out, results) = pull_json(
        &containerd,
        &host,
        &["--platform", "linux/s390x"],
        &[&reference],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let error = results[0]["error"].as_str().unwrap();
    assert!(error.contains(&reference), "{error}");
    assert!(error.contains("linux/s390x"), "{error}");
    assert!(error.contains("linux/amd64, linux/arm64"), "{error}");
    assert!(
        !error.contains("unknown"),
        "attestations are not platforms: {error}"
    );
    assert_eq!(results[0]["kind"], "no-platform");
    assert!(!has_record(&containerd, &reference).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_pull_downloads_no_blob_bytes() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "cache/app",
        "v1",
        &ImageSpec::new(&[256 * KIB, 128 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let reference = format!("{host}/cache/app:v1");

    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    let first = proxy.blob_bytes();
    let all: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    assert_eq!(first, all, "first pull fetches every blob once");

    proxy.clear();
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    assert_eq!(proxy.blob_bytes(), 0, "requests: {:?}", proxy.records());
    assert!(
        proxy.records().iter().all(|r| !r.path.contains("/blobs/")),
        "no blob requests at all: {:?}",
        proxy.records()
    );
    assert_eq!(results[0]["bytes_fetched"], 0);
    assert_eq!(results[0]["blobs_present"], 3);
    // Tag drift is checked with one HEAD (not counted by Docker Hub's quota); nothing is GET.
    let seen: Vec<(String, String)> = proxy
        .records()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![("HEAD".to_string(), "/v2/cache/app/manifests/v1".to_string())]
    );
    support::cri::wait_for_image(containerd.socket(), &reference, CRI_WAIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_images_layers_download_lowest_first_a_few_at_a_time() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "order/app",
        "v1",
        &ImageSpec::new(&[1024 * KIB; 6]).gzip_level(0),
    )
    .await;
    // Every blob paced, so that layers let go at once would all be in flight together.
    let proxy = Proxy::start(&registry.host()).await;
    proxy.set_hook(|req| {
        if req.path.contains("/blobs/") {
            support::Action::Shape(support::Shape {
                bytes_per_sec: Some(4 << 20),
                cut_after: None,
            })
        } else {
            support::Action::Forward
        }
    });
    let host = proxy.host();
    let reference = format!("{host}/order/app:v1");
    proxy.clear();
    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);

    // Three layers and the config at most, never all six layers (the downloads limit is 8).
    let seen = proxy.connections();
    assert!(seen.peak_requests <= 4, "{seen:?}: {:?}", proxy.records());
    let layer_gets: Vec<String> = proxy
        .records()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| r.path.rsplit('/').next().unwrap_or_default().to_string())
        .filter(|d| image.layers.iter().any(|l| &l.digest == d))
        .collect();
    let wanted: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        layer_gets[..3]
            .iter()
            .collect::<std::collections::HashSet<_>>(),
        wanted[..3].iter().collect::<std::collections::HashSet<_>>(),
        "the three lowest layers go first"
    );
    assert_eq!(layer_gets.len(), wanted.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn many_tags_share_a_bounded_set_of_connections_to_the_registry() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    const TAGS: usize = 24;
    const CAP: u64 = 3;
    let pushes = (0..TAGS).map(|i| {
        let host = registry.host();
        async move {
            push_image(
                &host,
                &format!("conn/app{i}"),
                "v1",
                &ImageSpec::new(&[16 * KIB, 8 * KIB]),
            )
            .await
        }
    });
    futures_util::future::join_all(pushes).await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let references: Vec<String> = (0..TAGS)
        .map(|i| format!("{host}/conn/app{i}:v1"))
        .collect();
    let images: Vec<&str> = references.iter().map(String::as_str).collect();
    let cap = CAP.to_string();
    let extra = ["--max-connections-per-registry", cap.as_str()];

    // A cold pull and a warm pass: each request waits for one of the registry's connections.
    for pass in ["cold", "warm"] {
        proxy.clear();
        let (out, results) = pull_json(&containerd, &host, &extra, &images).await;
        assert_success(&out);
        assert_eq!(results.len(), TAGS);
        let requests = proxy.records().len();
        let seen = proxy.connections();
        assert!(
            seen.peak_requests <= CAP,
            "{pass}: at most {CAP} requests at once: {seen:?} for {requests} requests"
        );
        // Each of the CAP slots holds one busy connection, and the pool keeps at most CAP idle
        // ones: a connection handed back while the next request starts may mean one more.
        assert!(
            seen.accepted <= 2 * CAP,
            "{pass}: connections are reused, not opened per request: {seen:?} for {requests} requests"
        );
        assert!(requests >= TAGS, "{pass}: {requests} requests");
    }
}

/// Flips one byte of a layer in the registry's own storage: the registry serves it as is.
fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open blob");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blob_is_never_committed_and_no_image_is_recorded() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(
        &host,
        "bad/app",
        "v1",
        &ImageSpec::new(&[32 * KIB, 200 * KIB]),
    )
    .await;
    let bad = &image.layers[1];
    flip_byte(&registry.blob_data_path(&bad.digest), bad.size / 2);
    let reference = format!("{host}/bad/app:v1");

    let out = Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .arg(&reference)
        .output()
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&reference), "names the image: {stderr}");
    assert!(
        stderr.contains(&format!("blob {}", bad.digest)),
        "names the blob: {stderr}"
    );
    assert!(
        stderr.contains(&format!("expected {}", bad.digest)) && stderr.contains("got sha256:"),
        "expected vs got: {stderr}"
    );

    let store = store(&containerd).await;
    assert!(
        !has_blob(&store, &bad.digest).await,
        "corrupt blob not committed"
    );
    assert!(
        !has_blob(&store, &image.manifest.digest).await,
        "manifest not committed before its blobs"
    );
    assert!(
        store.image(&reference).await.unwrap().is_none(),
        "no image record"
    );
    let active = containerd.ctr_ok(&["-n", "k8s.io", "content", "active"]);
    assert!(
        !active.contains(&bad.digest),
        "the bad ingest is aborted: {active}"
    );
    assert!(support::cri::image_status(containerd.socket(), &reference)
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_blob_is_never_committed() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(&host, "short/app", "v1", &ImageSpec::new(&[100 * KIB])).await;
    let layer = &image.layers[0];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(registry.blob_data_path(&layer.digest))
        .unwrap();
    file.set_len(layer.size - 1000).unwrap();
    let reference = format!("{host}/short/app:v1");

    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_eq!(out.status.code(), Some(1));
    let error = results[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&layer.digest)
            && error.contains(&format!("{} of {} bytes", layer.size - 1000, layer.size)),
        "{error}"
    );
    assert_eq!(results[0]["kind"], "corrupt");
    let store = store(&containerd).await;
    assert!(!has_blob(&store, &layer.digest).await);
    assert!(store.image(&reference).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn several_images_in_one_run_and_one_failure_does_not_stop_the_others() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let a = push_image(&host, "many/a", "v1", &ImageSpec::new(&[16 * KIB])).await;
    let b = push_image(&host, "many/b", "v1", &ImageSpec::new(&[16 * KIB])).await;
    let (ra, rb, missing) = (
        format!("{host}/many/a:v1"),
        format!("{host}/many/b:v1"),
        format!("{host}/many/none:v1"),
    );
    let (out, results) = pull_json(&containerd, &host, &[], &[&ra, &missing, &rb]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["id"], a.config.digest.as_str());
    assert_eq!(results[2]["id"], b.config.digest.as_str());
    assert_eq!(results[1]["kind"], "not-found");
    assert_eq!(results[1]["status"], "failed");
    assert_eq!(
        results[1]["image"], missing,
        "a failed image's object names it"
    );
    let error = results[1]["error"].as_str().unwrap();
    assert!(error.contains(&missing) && error.contains("404"), "{error}");
    assert!(
        error.contains("does not exist"),
        "says what is wrong: {error}"
    );

    // A tag missing from a repository that exists.
    let missing_tag = format!("{host}/many/a:v9");
    let (_, results) = pull_json(&containerd, &host, &[], &[&missing_tag]).await;
    let error = results[0]["error"].as_str().unwrap();
    assert_eq!(results[0]["kind"], "not-found");
    assert!(
        error.contains(&missing_tag) && error.contains("tag"),
        "names the tag: {error}"
    );
    assert_eq!(results[0]["image"], missing_tag);

    // The text summary's counts agree with their nouns.
    push_image(&host, "many/c", "v1", &ImageSpec::new(&[16 * KIB])).await;
    let rc = format!("{host}/many/c:v1");
    let out = Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .arg(&rc)
        .output()
        .await;
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "(linux/amd64, 1 layer unpacked into {}",
            containerd.snapshotter()
        )) && stdout.contains("fetched in 2 blobs"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_reported_before_touching_anything() {
    let out = Prepull::new("pull")
        .args([
            "--containerd",
            "/nonexistent/containerd.sock",
            "Bad/Repo:tag",
        ])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Bad/Repo:tag") && stderr.contains("lowercase"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("containerd.sock"),
        "reference checked first: {stderr}"
    );

    let out = Prepull::new("pull")
        .args(["--containerd", "/nonexistent/containerd.sock", "busybox"])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/containerd.sock") && stderr.contains("--containerd"),
        "{stderr}"
    );

    let out = Prepull::new("pull")
        .args(["--platform", "linux", "busybox"])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("os/arch"));
}

/// The registry behind a proxy that demands an anonymous bearer token, as public registries do:
/// a 401 with a `Bearer` challenge, a token endpoint, and every request checked for the token.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_bearer_token_challenge_is_answered() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "public/app",
        "v1",
        &ImageSpec::new(&[16 * KIB, 8 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let realm = format!("{}/token", proxy.url());
    proxy.set_hook(move |req| {
        if req.path.starts_with("/token") {
            return support::Action::RespondWith {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"token":"anon-token-1","access_token":"anon-token-1","expires_in":300}"#.to_vec(),
            };
        }
        let authorized = req.headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer anon-token-1");
        if authorized {
            return support::Action::Forward;
        }
        support::Action::RespondWith {
            status: 401,
            headers: vec![(
                "www-authenticate".into(),
                format!(r#"Bearer realm="{realm}",service="bench-registry",scope="repository:public/app:pull""#),
            )],
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        }
    });
    let reference = format!("{host}/public/app:v1");
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    assert_eq!(results[0]["id"], image.config.digest.as_str());

    let records = proxy.records();
    let tokens: Vec<_> = records
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "one token for the repository, shared by every request: {records:?}"
    );
    assert!(
        tokens[0]
            .path
            .contains("scope=repository%3Apublic%2Fapp%3Apull"),
        "{}",
        tokens[0].path
    );
    assert!(
        tokens[0].path.contains("service=bench-registry"),
        "{}",
        tokens[0].path
    );
    assert!(
        tokens[0].authorization.is_none(),
        "anonymous: no credentials sent to the realm"
    );
    let unauthorized = records.iter().filter(|r| r.status == 401).count();
    assert_eq!(
        unauthorized, 1,
        "the challenge is learned once: {records:?}"
    );
    for r in records.iter().filter(|r| r.path.contains("/blobs/")) {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer anon-token-1"),
            "{}",
            r.path
        );
        assert_eq!(r.status, 200);
    }
    support::cri::wait_for_image(containerd.socket(), &reference, CRI_WAIT).await;
}

/// A blob redirected to another host (as ECR does to S3) is fetched there without the
/// registry's `Authorization` header, which S3 would reject and which must not leak.
#[tokio::test(flavor = "multi_thread")]
async fn redirected_blobs_never_carry_the_registry_token_to_another_host() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "redirect/app",
        "v1",
        &ImageSpec::new(&[64 * KIB]),
    )
    .await;
    let layer = image.layers[0].digest.clone();
    let storage = Proxy::start(&registry.host()).await; // the "S3" host
    let front = Proxy::start(&registry.host()).await;
    let host = front.host();
    let realm = format!("{}/token", front.url());
    let storage_url = storage.url();
    front.set_hook(move |req| {
        if req.path.starts_with("/token") {
            return support::Action::RespondWith {
                status: 200,
                headers: vec![],
                body: br#"{"token":"registry-token"}"#.to_vec(),
            };
        }
        if req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some("Bearer registry-token")
        {
            return support::Action::RespondWith {
                status: 401,
                headers: vec![(
                    "www-authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="s""#),
                )],
                body: vec![],
            };
        }
        if req.path.ends_with(&layer) {
            return support::Action::RespondWith {
                status: 307,
                headers: vec![(
                    "location".into(),
                    format!("{storage_url}{}?X-Amz-Signature=presigned", req.path),
                )],
                body: vec![],
            };
        }
        support::Action::Forward
    });
    let reference = format!("{host}/redirect/app:v1");
    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    let at_storage = storage.records();
    assert_eq!(at_storage.len(), 1, "{at_storage:?}");
    assert!(at_storage[0].path.contains(&image.layers[0].digest));
    assert_eq!(
        at_storage[0].authorization, None,
        "the token stayed with the registry"
    );
    assert_eq!(at_storage[0].response_body_bytes, image.layers[0].size);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("X-Amz-Signature"),
        "presigned URLs stay out of messages: {stderr}"
    );
}

/// Rate limits and outages: `429` with `Retry-After` and `503`s are waited out, then the pull
/// completes; a registry that keeps failing ends in an error that says so.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_503_storms_are_retried_then_reported() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "busy/app",
        "v1",
        &ImageSpec::new(&[32 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let (manifests, blobs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (m, b) = (manifests.clone(), blobs.clone());
    proxy.set_hook(move |req| {
        if req.path.contains("/manifests/") && m.fetch_add(1, Ordering::SeqCst) < 2 {
            return support::Action::RespondWith {
                status: 429,
                headers: vec![
                    ("retry-after".into(), "0".into()),
                    ("ratelimit-remaining".into(), "0;w=21600".into()),
                ],
                body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
            };
        }
        if req.path.contains("/blobs/") && b.fetch_add(1, Ordering::SeqCst) < 2 {
            return support::Action::Respond {
                status: 503,
                body: b"maintenance".to_vec(),
            };
        }
        support::Action::Forward
    });
    let reference = format!("{host}/busy/app:v1");
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    assert_eq!(results[0]["id"], image.config.digest.as_str());
    assert!(
        manifests.load(Ordering::SeqCst) >= 3,
        "two 429s then success"
    );
    assert!(
        blobs.load(Ordering::SeqCst) >= 4,
        "two 503s then both blobs"
    );

    // A registry that never recovers: the error names the registry, the status and the code.
    proxy.set_hook(|req| {
        if req.path.contains("/manifests/") {
            support::Action::RespondWith {
                status: 429,
                headers: vec![("retry-after".into(), "0".into())],
                body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit exceeded"}]}"#.to_vec(),
            }
        } else {
            support::Action::Forward
        }
    });
    push_image(
        &registry.host(),
        "busy/other",
        "v1",
        &ImageSpec::new(&[8 * KIB]),
    )
    .await;
    let reference = format!("{host}/busy/other:v1");
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_eq!(out.status.code(), Some(1));
    let error = results[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&host) && error.contains("429") && error.contains("rate limited"),
        "{error}"
    );
    assert_eq!(results[0]["kind"], "rate-limited");
    assert!(!has_record(&containerd, &reference).await);
}

/// ECR answers `403 … token has expired` instead of 401: the token is renewed once and the pull
/// goes on. A registry that refuses `HEAD` (405) is asked with `GET` instead.
#[tokio::test(flavor = "multi_thread")]
async fn expired_token_403_is_renewed_and_head_405_falls_back_to_get() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "ecr/app",
        "v1",
        &ImageSpec::new(&[16 * KIB, 16 * KIB]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let realm = format!("{}/token", proxy.url());
    let issued = Arc::new(AtomicUsize::new(0));
    let expired_once = Arc::new(AtomicUsize::new(0));
    let (issued_in_hook, expired_in_hook) = (issued.clone(), expired_once.clone());
    proxy.set_hook(move |req| {
        if req.path.starts_with("/token") {
            let n = issued_in_hook.fetch_add(1, Ordering::SeqCst) + 1;
            return support::Action::RespondWith {
                status: 200,
                headers: vec![],
                body: format!(r#"{{"token":"t{n}","expires_in":3600}}"#).into_bytes(),
            };
        }
        if req.method == "HEAD" {
            return support::Action::Respond { status: 405, body: vec![] };
        }
        let auth = req.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if !auth.starts_with("Bearer t") {
            return support::Action::RespondWith {
                status: 401,
                headers: vec![("www-authenticate".into(), format!(r#"Bearer realm="{realm}",service="ecr""#))],
                body: vec![],
            };
        }
        // The first token "expires" when the first blob is asked for, the ECR way.
        if auth == "Bearer t1" && req.path.contains("/blobs/") && expired_in_hook.fetch_add(1, Ordering::SeqCst) == 0 {
            return support::Action::RespondWith {
                status: 403,
                headers: vec![],
                body: br#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#.to_vec(),
            };
        }
        support::Action::Forward
    });
    let reference = format!("{host}/ecr/app:v1");
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    assert_eq!(results[0]["id"], image.config.digest.as_str());
    assert!(
        expired_once.load(Ordering::SeqCst) >= 1,
        "the 403 was served"
    );
    assert!(
        issued.load(Ordering::SeqCst) >= 2,
        "a second token was fetched after the 403"
    );
    let records = proxy.records();
    assert!(
        records
            .iter()
            .any(|r| r.method == "HEAD" && r.status == 405),
        "HEAD was tried"
    );
    assert!(
        records
            .iter()
            .any(|r| r.method == "GET" && r.path == "/v2/ecr/app/manifests/v1" && r.status == 200),
        "then GET by tag: {records:?}"
    );
    assert!(records.iter().any(|r| r.status == 403));
}

/// Foreign (non-distributable) layers: a layer whose descriptor lists `urls` is fetched from
/// them first, without the registry's credentials, and from the registry only when no URL
/// serves it.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_layers_come_from_their_urls_without_credentials() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "foreign/app",
        "plain",
        &ImageSpec::new(&[96 * KIB, 48 * KIB, 24 * KIB]).family(MediaFamily::Docker),
    )
    .await;
    let (served, fallback, spoiled) = (
        image.layers[0].clone(),
        image.layers[1].clone(),
        image.layers[2].clone(),
    );
    // A URL that answers with the right length of the wrong bytes.
    let bad_cdn = Proxy::start(&registry.host()).await;
    let size = spoiled.size as usize;
    bad_cdn.set_hook(move |_| support::Action::Respond {
        status: 200,
        body: vec![0x5a; size],
    });
    let spoiled_url = format!("{}/layers/{}", bad_cdn.url(), spoiled.digest);
    // The "CDN" the foreign URL points at: it asks for no credentials.
    let cdn = Proxy::start(&registry.host()).await;
    let served_url = format!(
        "{}/v2/foreign/app/blobs/{}?sig=abc",
        cdn.url(),
        served.digest
    );
    // Nothing listens on port 1: the registry has to serve this one.
    let dead_url = format!("http://127.0.0.1:1/layers/{}", fallback.digest);
    let mut manifest: Value = serde_json::from_slice(&image.manifest_bytes).unwrap();
    let foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    manifest["layers"][0]["mediaType"] = foreign.into();
    manifest["layers"][0]["urls"] = serde_json::json!([served_url]);
    manifest["layers"][1]["mediaType"] = foreign.into();
    manifest["layers"][1]["urls"] = serde_json::json!([dead_url]);
    manifest["layers"][2]["mediaType"] = foreign.into();
    manifest["layers"][2]["urls"] = serde_json::json!([spoiled_url]);
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let put = registry
        .client()
        .put(format!("{}/v2/foreign/app/manifests/v1", registry.url()))
        .header("content-type", image.manifest.media_type.as_str())
        .body(manifest_bytes)
        .send()
        .await
        .expect("PUT the manifest with foreign layers");
    assert!(
        put.status().is_success(),
        "the registry refused the manifest: {} {}",
        put.status(),
        put.text().await.unwrap_or_default()
    );

    // The registry itself answers only with a token, like any private registry.
    let front = Proxy::start(&registry.host()).await;
    let realm = format!("{}/token", front.url());
    front.set_hook(move |req| {
        if req.path.starts_with("/token") {
            return support::Action::RespondWith {
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
        if authorized {
            support::Action::Forward
        } else {
            support::Action::RespondWith {
                status: 401,
                headers: vec![(
                    "www-authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="s""#),
                )],
                body: vec![],
            }
        }
    });
    let reference = format!("{}/foreign/app:v1", front.host());
    let (out, _) = pull_json(&containerd, &front.host(), &[], &[&reference]).await;
    assert_success(&out);
    containerd.assert_image_complete(&reference);

    let at_cdn = cdn.records();
    assert_eq!(at_cdn.len(), 1, "one GET at the foreign URL: {at_cdn:?}");
    assert!(at_cdn[0].path.contains(&served.digest));
    assert_eq!(
        at_cdn[0].authorization, None,
        "no credentials to a foreign URL"
    );
    assert_eq!(at_cdn[0].response_body_bytes, served.size);
    let blob_gets: Vec<String> = front
        .records()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/") && r.status == 200)
        .map(|r| r.path)
        .collect();
    assert!(
        blob_gets.iter().all(|p| !p.contains(&served.digest)),
        "the layer a foreign URL served was not fetched from the registry: {blob_gets:?}"
    );
    assert!(
        blob_gets.iter().any(|p| p.contains(&fallback.digest)),
        "the layer whose URL was dead came from the registry: {blob_gets:?}"
    );
    assert!(
        !bad_cdn.records().is_empty() && blob_gets.iter().any(|p| p.contains(&spoiled.digest)),
        "the layer whose URL served bad bytes came from the registry: {blob_gets:?}"
    );
    let store = store(&containerd).await;
    for layer in [&served, &fallback, &spoiled] {
        let info = store
            .info(&digest(&layer.digest))
            .await
            .expect("Content.Info")
            .unwrap_or_else(|| panic!("layer {} is in containerd", layer.digest));
        assert_eq!(info.size as u64, layer.size);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("sig=abc"),
        "URL queries stay out of logs: {stderr}"
    );
}

/// A warm image costs a HEAD and a few small reads; anything its records or snapshots lack
/// sends the pull down the full path, which puts it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pull_notices_a_lost_record_or_snapshot_and_restores_it() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(
        &host,
        "warm/app",
        "v1",
        &ImageSpec::new(&[16 * KIB, 8 * KIB]),
    )
    .await;
    let reference = format!("{host}/warm/app:v1");
    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    let store = store(&containerd).await;

    containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &image.config.digest]);
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    assert_eq!(results[0]["bytes_fetched"], 0);
    assert!(
        store.image(&image.config.digest).await.unwrap().is_some(),
        "the ID record is back"
    );

    let chain =
        prepull::image::chain_ids(&image.diff_ids.iter().map(|d| digest(d)).collect::<Vec<_>>());
    let top = chain.last().unwrap().to_string();
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        containerd.snapshotter(),
        "rm",
        &top,
    ]);
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
    assert_eq!(results[0]["bytes_fetched"], 0);
    assert!(
        store
            .snapshot_exists(containerd.snapshotter(), &top)
            .await
            .unwrap(),
        "the top layer is unpacked again"
    );
}

/// Another client (`ctr -n default`, nerdctl, moby, buildkit) already holds the blobs in its own
/// namespace. containerd shares them across namespaces, and two pulls of images sharing those
/// blobs contend for the same ingest refs; containerd 2.x reports that lock contention as
/// `Unknown` ("truncate failed: ref … locked"), 1.x as `Unavailable`. Either way it means "busy",
/// and the pulls wait their turn.
#[tokio::test(flavor = "multi_thread")]
async fn images_sharing_blobs_another_namespace_holds_pull_concurrently() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(
        &host,
        "shared/app",
        "v1",
        &ImageSpec::new(&[256 * KIB, 256 * KIB, 128 * KIB, 64 * KIB]),
    )
    .await;
    tag_image(&host, "shared/app", "v2", &image).await;
    let (a, b) = (
        format!("{host}/shared/app:v1"),
        format!("{host}/shared/app:v2"),
    );
    containerd.ctr_ok(&["-n", "default", "content", "fetch", "--plain-http", &a]);

    let (out, results) = pull_json(&containerd, &host, &[], &[&a, &b]).await;
    assert_success(&out);
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r["status"], "pulled", "{r}");
        assert_eq!(r["id"], image.config.digest.as_str());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("locked"),
        "contention is not an error: {stderr}"
    );
    let store = store(&containerd).await;
    for layer in &image.layers {
        assert!(has_blob(&store, &layer.digest).await, "{}", layer.digest);
    }
    containerd.assert_image_complete(&a);
    containerd.assert_image_complete(&b);
}

/// A typo in `--platform` is bad input (exit 2) naming the valid values, before anything is
/// fetched, not a "no manifest" failure for every image.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_platform_is_bad_input_naming_the_valid_values() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    push_image(&host, "plat/app", "v1", &ImageSpec::new(&[16 * KIB])).await;
    let reference = format!("{host}/plat/app:v1");
    for (platform, wrong, valid) in [
        ("linux/amd65", "\"amd65\"", "amd64"),
        ("linx/arm64", "\"linx\"", "linux"),
    ] {
        let (out, results) =
            pull_json(&containerd, &host, &["--platform", platform], &[&reference]).await;
        assert_eq!(out.status.code(), Some(2), "{platform}: {out:?}");
        assert!(results.is_empty(), "nothing was pulled: {results:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--platform") && stderr.contains(wrong) && stderr.contains(valid),
            "{stderr}"
        );
    }
    assert!(!has_record(&containerd, &reference).await);
}

/// On a terminal, `prepull pull` shows each image's bytes stored out of its size as it goes,
/// and how it ended; piped (as a script or a log collector reads it), only the results.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_sees_progress_and_a_pipe_sees_results_only() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let spec = ImageSpec::new(&[2048 * KIB, 512 * KIB]);
    let image = push_image(&host, "team/big", "v1", &spec).await;
    let reference = format!("{host}/team/big:v1");
    let missing = format!("{host}/team/none:v1");
    let size = image.config.size + image.layers.iter().map(|l| l.size).sum::<u64>();
    let total = indicatif::BinaryBytes(size).to_string();

    // A terminal.
    let socket = containerd.socket().display().to_string();
    let (code, screen) = support::run::on_terminal(&[
        "pull",
        "--containerd",
        &socket,
        "--plain-http",
        &host,
        &reference,
        &missing,
    ])
    .await;
    assert_eq!(code, Some(1), "one image fails: {screen}");
    let last_line = |image: &str| {
        screen
            .split(['\n', '\r'])
            .rfind(|l| l.contains(image) && (l.contains("done") || l.contains("failed")))
            .unwrap_or_else(|| panic!("no final line for {image}: {screen:?}"))
            .to_string()
    };
    let done = last_line(&reference);
    assert!(
        done.contains(&format!("{total}/{total}")) && done.contains("done"),
        "{done:?}"
    );
    assert!(last_line(&missing).contains("failed"), "{screen:?}");

    // A pipe: the same results, no progress.
    let out = Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .args([&reference, &missing])
        .output()
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(&total) && !stderr.contains("resolving"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&reference));
}

/// A registry announcing a request budget (Docker Hub's `ratelimit-limit`/`ratelimit-remaining`)
/// down to the share kept for the kubelet's own pulls gets no manifest `GET` from prepull: the
/// image waits, reported `rate-limited` with the figures, while the free `HEAD` check of an
/// image the node holds goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_budget_down_to_the_reserve_gets_no_manifest_requests_but_head_checks_go_on() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let spec = ImageSpec::new(&[16 << 10]);
    let v1 = push_image(&registry.host(), "hub/app", "v1", &spec).await;
    let v2 = push_image(&registry.host(), "hub/app", "v2", &spec).await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    // Tag HEADs are answered here, with the budget the test says; everything else goes upstream.
    let announce = |remaining: u64| {
        let tags = [
            ("/v2/hub/app/manifests/v1", v1.manifest.clone()),
            ("/v2/hub/app/manifests/v2", v2.manifest.clone()),
        ];
        move |req: &support::proxy::RequestInfo| match tags.iter().find(|(p, _)| req.path == *p) {
            Some((_, manifest)) if req.method == "HEAD" => support::Action::RespondWith {
                status: 200,
                headers: vec![
                    ("docker-content-digest".into(), manifest.digest.clone()),
                    ("content-type".into(), manifest.media_type.clone()),
                    ("ratelimit-limit".into(), "100;w=21600".into()),
                    ("ratelimit-remaining".into(), format!("{remaining};w=21600")),
                ],
                body: Vec::new(),
            },
            _ => support::Action::Forward,
        }
    };
    let (v1_ref, v2_ref) = (format!("{host}/hub/app:v1"), format!("{host}/hub/app:v2"));
    let manifest_gets = |proxy: &Proxy| {
        proxy
            .records()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/manifests/"))
            .count()
    };

    proxy.set_hook(announce(80));
    let (out, _) = pull_json(&containerd, &host, &[], &[&v1_ref]).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));

    // 15 of 100 left, 20 kept: v2's manifest is not asked for.
    proxy.set_hook(announce(15));
    proxy.clear();
    let (out, results) = pull_json(&containerd, &host, &[], &[&v2_ref]).await;
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert_eq!(results[0]["kind"], "rate-limited", "{results:?}");
    let error = results[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("15 requests left of 100 per 6h")
            && error.contains("--registry-budget-reserve 20%"),
        "the error gives the figures and the flag: {error}"
    );
    assert_eq!(manifest_gets(&proxy), 0, "{:?}", proxy.records());
    assert!(!has_record(&containerd, &v2_ref).await);

    // The image the node holds is checked with a HEAD, which is free: still warm.
    let (out, results) = pull_json(&containerd, &host, &[], &[&v1_ref]).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    assert_eq!(results[0]["bytes_fetched"], 0, "{results:?}");

    // Keeping nothing spends the budget down to what the registry allows.
    let (out, _) = pull_json(
        &containerd,
        &host,
        &["--registry-budget-reserve", "0"],
        &[&v2_ref],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    assert!(manifest_gets(&proxy) > 0);
}

/// A `429` that says the budget is spent (`ratelimit-remaining: 0`) and not when to come back (no
/// `Retry-After`, as Docker Hub's) is not asked again within the pull: the image is reported
/// `rate-limited` at once, with one request spent, and a later run asks again.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_saying_the_budget_is_spent_is_not_retried_within_the_pull() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    push_image(
        &registry.host(),
        "hub/app",
        "v1",
        &ImageSpec::new(&[16 << 10]),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let spent = |remaining: &'static str, retry_after: Option<&'static str>| {
        move |req: &support::proxy::RequestInfo| {
            if req.path == "/v2/hub/app/manifests/v1" {
                let mut headers = vec![
                    ("ratelimit-limit".into(), "100;w=21600".into()),
                    ("ratelimit-remaining".into(), remaining.into()),
                ];
                headers.extend(retry_after.map(|r| ("retry-after".into(), r.into())));
                support::Action::RespondWith {
                    status: 429,
                    headers,
                    body: br#"{"errors":[{"code":"TOOMANYREQUESTS"}]}"#.to_vec(),
                }
            } else {
                support::Action::Forward
            }
        }
    };
    let reference = format!("{host}/hub/app:v1");
    let asked = |proxy: &Proxy| {
        proxy
            .records()
            .iter()
            .filter(|r| r.path == "/v2/hub/app/manifests/v1")
            .count()
    };

    proxy.set_hook(spent("0;w=21600", None));
    let (out, results) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert_eq!(results[0]["kind"], "rate-limited", "{results:?}");
    assert_eq!(asked(&proxy), 1, "asked once: {:?}", proxy.records());

    // A 429 with budget left (a burst limit), or one saying when to come back, is waited out and
    // asked again.
    proxy.clear();
    proxy.set_hook(spent("40;w=21600", Some("1")));
    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert!(asked(&proxy) > 1, "asked again: {:?}", proxy.records());
    proxy.clear();
    proxy.set_hook(spent("0;w=21600", Some("1")));
    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert!(asked(&proxy) > 1, "asked again: {:?}", proxy.records());

    proxy.clear_hook();
    let (out, _) = pull_json(&containerd, &host, &[], &[&reference]).await;
    assert_success(&out);
}
